//! Source prefixes as operators write them: `203.0.113.0/24`, `2001:db8::/32`,
//! or a bare address meaning one host.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

#[cfg(test)]
use firewall_common::{model, verdict::Source};

/// A validated network prefix: no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpPrefix {
    V4 { address: Ipv4Addr, len: u8 },
    V6 { address: Ipv6Addr, len: u8 },
}

/// Why a source string is not a usable prefix. Messages say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error(
        "`{0}` is not an IP address or CIDR prefix; write e.g. `203.0.113.0/24`, `2001:db8::/32` or `203.0.113.7`"
    )]
    Syntax(String),
    #[error("`{text}` has a prefix length above {max}; IPv4 allows /0 to /32, IPv6 /0 to /128")]
    LengthTooLong { text: String, max: u8 },
    #[error(
        "`{text}` has host bits set; write the network `{network}` (or `{address}` for that one host)"
    )]
    HostBits {
        text: String,
        network: IpPrefix,
        address: IpAddr,
    },
}

impl IpPrefix {
    pub fn len(&self) -> u8 {
        match self {
            IpPrefix::V4 { len, .. } | IpPrefix::V6 { len, .. } => *len,
        }
    }

    pub fn is_v4(&self) -> bool {
        matches!(self, IpPrefix::V4 { .. })
    }

    /// Matches every address of its family.
    pub fn is_any(&self) -> bool {
        self.len() == 0
    }

    /// The address as an integer (IPv4 in the low 32 bits) and the family
    /// width, the form the policy compiler sorts and compares.
    pub fn bits(&self) -> (u128, u8) {
        match self {
            IpPrefix::V4 { address, .. } => (u32::from(*address) as u128, 32),
            IpPrefix::V6 { address, .. } => (u128::from(*address), 128),
        }
    }

    /// The same prefix in the reference classifier's terms.
    #[cfg(test)]
    pub fn to_model(self) -> model::Prefix {
        match self {
            IpPrefix::V4 { address, len } => model::Prefix {
                address: Source::V4(address.octets()),
                len,
            },
            IpPrefix::V6 { address, len } => model::Prefix {
                address: Source::V6(address.octets()),
                len,
            },
        }
    }
}

/// `bits` with everything after the first `len` of `width` bits cleared.
pub fn network_bits(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let host_bits = u32::from(width - len);
    let mask = if host_bits >= 128 {
        0
    } else {
        (u128::MAX >> host_bits) << host_bits
    };
    bits & mask & (u128::MAX >> (128 - u32::from(width)))
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax(text.to_string());
        let (address_text, len_text) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let address: IpAddr = address_text.parse().map_err(|_| syntax())?;
        let max: u8 = if address.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => u16::from(max),
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse::<u16>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if len > u16::from(max) {
            return Err(PrefixError::LengthTooLong {
                text: text.to_string(),
                max,
            });
        }
        let len = len as u8;
        let network = match address {
            IpAddr::V4(v4) => IpPrefix::V4 {
                address: Ipv4Addr::from(network_bits(u32::from(v4) as u128, len, 32) as u32),
                len,
            },
            IpAddr::V6(v6) => IpPrefix::V6 {
                address: Ipv6Addr::from(network_bits(u128::from(v6), len, 128)),
                len,
            },
        };
        let network_address = match network {
            IpPrefix::V4 { address, .. } => IpAddr::V4(address),
            IpPrefix::V6 { address, .. } => IpAddr::V6(address),
        };
        if network_address != address {
            return Err(PrefixError::HostBits {
                text: text.to_string(),
                network,
                address,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpPrefix::V4 { address, len } => write!(f, "{address}/{len}"),
            IpPrefix::V6 { address, len } => write!(f, "{address}/{len}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixes_and_bare_addresses() {
        assert_eq!(
            "203.0.113.0/24".parse::<IpPrefix>().unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            "203.0.113.7".parse::<IpPrefix>().unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            "2001:db8::/32".parse::<IpPrefix>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!("2001:db8::1".parse::<IpPrefix>().unwrap().len(), 128);
        assert!("0.0.0.0/0".parse::<IpPrefix>().unwrap().is_any());
        assert!("::/0".parse::<IpPrefix>().unwrap().is_any());
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let err = "203.0.113.5/24".parse::<IpPrefix>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`203.0.113.5/24` has host bits set; write the network `203.0.113.0/24` (or `203.0.113.5` for that one host)"
        );
        let err = "2001:db8::1/32".parse::<IpPrefix>().unwrap_err();
        assert!(err.to_string().contains("`2001:db8::/32`"), "{err}");
    }

    #[test]
    fn rejects_garbage_and_long_lengths() {
        for bad in [
            "",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "203.0.113/24",
            "example.com",
            " 203.0.113.1",
        ] {
            assert!(
                matches!(bad.parse::<IpPrefix>(), Err(PrefixError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "203.0.113.0/33".parse::<IpPrefix>(),
            Err(PrefixError::LengthTooLong { max: 32, .. })
        ));
        assert!(matches!(
            "2001:db8::/129".parse::<IpPrefix>(),
            Err(PrefixError::LengthTooLong { max: 128, .. })
        ));
    }

    #[test]
    fn network_bits_masks_each_width() {
        assert_eq!(network_bits(0xcb00_7105, 24, 32), 0xcb00_7100);
        assert_eq!(network_bits(0xcb00_7105, 32, 32), 0xcb00_7105);
        assert_eq!(network_bits(u128::MAX, 128, 128), u128::MAX);
        assert_eq!(network_bits(u128::MAX, 1, 128), 1 << 127);
        assert_eq!(network_bits(u128::MAX, 0, 128), 0);
    }
}
