//! Exposed ports as operators write them: `tcp/443`, `udp/4500`,
//! `tcp/8000-8080`, or a bare `443` meaning `tcp/443`.

use std::{fmt, str::FromStr};

use firewall_common::wire::protocol;

use crate::text::escape_controls;
#[cfg(test)]
use firewall_common::model;

/// An inclusive destination port range for TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error(
        "`{0}` is not a port; write `tcp/443`, `udp/4500`, `tcp/8000-8080` or a bare `443` (TCP)"
    )]
    Syntax(String),
    #[error("`{text}` names protocol `{protocol}`; only `tcp` and `udp` have ports")]
    Protocol { text: String, protocol: String },
    #[error("`{text}`: port {port} is out of range; ports go from 1 to 65535")]
    OutOfRange { text: String, port: String },
    #[error("`{text}`: the range is inverted; write `{protocol}/{last}-{first}`")]
    Inverted {
        text: String,
        protocol: &'static str,
        first: u16,
        last: u16,
    },
}

fn protocol_name(number: u8) -> &'static str {
    if number == protocol::UDP {
        "udp"
    } else {
        "tcp"
    }
}

impl PortRange {
    #[cfg(test)]
    pub fn to_model(self) -> model::PortRange {
        model::PortRange {
            protocol: self.protocol,
            first: self.first,
            last: self.last,
        }
    }
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (protocol_text, range_text) = text.split_once('/').unwrap_or(("tcp", text));
        let protocol = match protocol_text {
            "tcp" => protocol::TCP,
            "udp" => protocol::UDP,
            other if !other.is_empty() && other.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                return Err(PortError::Protocol {
                    text: escape_controls(text),
                    protocol: escape_controls(other),
                });
            }
            _ => return Err(PortError::Syntax(escape_controls(text))),
        };
        let (first_text, last_text) = range_text
            .split_once('-')
            .unwrap_or((range_text, range_text));
        let port = |port_text: &str| -> Result<u16, PortError> {
            if port_text.is_empty() || !port_text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PortError::Syntax(escape_controls(text)));
            }
            match port_text.parse::<u32>() {
                Ok(port @ 1..=65535) => Ok(port as u16),
                _ => Err(PortError::OutOfRange {
                    text: escape_controls(text),
                    port: escape_controls(port_text),
                }),
            }
        };
        let (first, last) = (port(first_text)?, port(last_text)?);
        if first > last {
            return Err(PortError::Inverted {
                text: escape_controls(text),
                protocol: protocol_name(protocol),
                first,
                last,
            });
        }
        Ok(PortRange {
            protocol,
            first,
            last,
        })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = protocol_name(self.protocol);
        if self.first == self.last {
            write!(f, "{name}/{}", self.first)
        } else {
            write!(f, "{name}/{}-{}", self.first, self.last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PortRange, PortError> {
        text.parse()
    }

    #[test]
    fn parses_every_written_form() {
        assert_eq!(
            parse("tcp/443").unwrap(),
            PortRange {
                protocol: protocol::TCP,
                first: 443,
                last: 443
            }
        );
        assert_eq!(parse("443").unwrap(), parse("tcp/443").unwrap());
        assert_eq!(parse("udp/4500").unwrap().protocol, protocol::UDP);
        let range = parse("tcp/8000-8080").unwrap();
        assert_eq!((range.first, range.last), (8000, 8080));
        assert_eq!(parse("udp/53").unwrap().to_string(), "udp/53");
        assert_eq!(range.to_string(), "tcp/8000-8080");
    }

    #[test]
    fn rejects_bad_ports_with_a_fix() {
        assert!(matches!(parse("tcp/0"), Err(PortError::OutOfRange { .. })));
        assert!(matches!(parse("65536"), Err(PortError::OutOfRange { .. })));
        assert!(matches!(
            parse("tcp/99999999999"),
            Err(PortError::OutOfRange { .. })
        ));
        assert_eq!(
            parse("tcp/8080-8000").unwrap_err().to_string(),
            "`tcp/8080-8000`: the range is inverted; write `tcp/8000-8080`"
        );
        assert!(matches!(parse("sctp/80"), Err(PortError::Protocol { .. })));
        for bad in ["", "tcp/", "tcp/-1", "tcp/80-", "https", "tcp/ 80", "/80"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
