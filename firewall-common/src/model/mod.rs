//! The reference classifier: the policy as the operator wrote it, evaluated
//! rule by rule with no precomputation, and [`frame::parse`], a slice-based
//! parser with the XDP parser's semantics. Both are slow and plain; tests
//! compare the compiled maps and the XDP program against them.

pub mod frame;

use crate::{
    maps::{PortKey, RuleSet, SourceValue, UNCOUNTED_ENTRY},
    verdict::Policy,
    wire::Source,
};

/// An address prefix, address in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub address: Source,
    pub len: u8,
}

impl Prefix {
    /// Whether `source` lies inside this prefix (families never mix).
    pub fn contains(&self, source: &Source) -> bool {
        match (&self.address, source) {
            (Source::V4(net), Source::V4(addr)) => leading_bits_equal(net, addr, self.len),
            (Source::V6(net), Source::V6(addr)) => leading_bits_equal(net, addr, self.len),
            _ => false,
        }
    }
}

fn leading_bits_equal(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = bits as usize;
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// Inclusive destination port range for one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, key: &PortKey) -> bool {
        self.protocol == key.protocol && (self.first..=self.last).contains(&key.port)
    }
}

/// One rule as written: these sources may reach these ports.
#[derive(Clone, Copy, Debug)]
pub struct ReferenceRule<'a> {
    pub sources: &'a [Prefix],
    pub ports: &'a [PortRange],
}

/// Rules in config order; rule `i` is bit `i`.
pub struct ReferencePolicy<'a>(pub &'a [ReferenceRule<'a>]);

impl ReferencePolicy<'_> {
    fn rules_where(&self, matches: impl Fn(&ReferenceRule<'_>) -> bool) -> RuleSet {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, rule)| matches(rule))
            .fold(0, |set, (index, _)| set | (1 << index))
    }
}

/// The reference's entry numbers: 1 + (rule << 16 | position of the
/// prefix in the rule's sources).
pub const fn reference_entry(rule: u32, position: usize) -> u32 {
    1 + (rule << 16 | position as u32)
}

impl Policy for ReferencePolicy<'_> {
    fn source_entry(&self, source: &Source) -> SourceValue {
        let rules =
            self.rules_where(|rule| rule.sources.iter().any(|prefix| prefix.contains(source)));
        SourceValue {
            rules,
            entry: self.rule_entry(rules.trailing_zeros(), source),
            pad: 0,
        }
    }

    fn port_rules(&self, port: &PortKey) -> RuleSet {
        self.rules_where(|rule| rule.ports.iter().any(|range| range.contains(port)))
    }

    /// The longest of the rule's prefixes containing `source`.
    fn rule_entry(&self, rule: u32, source: &Source) -> u32 {
        self.0
            .get(rule as usize)
            .and_then(|found| {
                found
                    .sources
                    .iter()
                    .enumerate()
                    .filter(|(_, prefix)| prefix.contains(source))
                    .max_by_key(|(_, prefix)| prefix.len)
            })
            .map_or(UNCOUNTED_ENTRY, |(position, _)| {
                reference_entry(rule, position)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        reasons::Reason,
        verdict::{Packet, decide},
        wire::protocol::TCP,
    };

    const fn v4(a: u8, b: u8, c: u8, d: u8) -> Source {
        Source::V4([a, b, c, d])
    }

    fn tcp(source: Source, port: u16) -> Packet {
        Packet::Transport {
            source,
            port: PortKey::new(TCP, port),
        }
    }

    /// Traffic credits the most specific entry of the rule that admits it,
    /// also when the longest match overall belongs to another rule.
    #[test]
    fn the_admitting_rules_most_specific_entry_is_credited() {
        let prefix = |d, len| Prefix {
            address: v4(203, 0, 113, d),
            len,
        };
        let https = [PortRange {
            protocol: TCP,
            first: 443,
            last: 443,
        }];
        let ssh = [PortRange {
            protocol: TCP,
            first: 22,
            last: 22,
        }];
        let a_sources = [prefix(0, 24), prefix(0, 28)];
        let b_sources = [prefix(64, 26)];
        let rules = [
            ReferenceRule {
                sources: &a_sources,
                ports: &https,
            },
            ReferenceRule {
                sources: &b_sources,
                ports: &ssh,
            },
        ];
        let policy = ReferencePolicy(&rules);
        let credited = |d, port| {
            let verdict = decide(tcp(v4(203, 0, 113, d), port), &policy);
            (verdict.reason, verdict.rule, verdict.entry)
        };
        assert_eq!(
            credited(5, 443),
            (Reason::Allowed, 0, reference_entry(0, 1))
        );
        assert_eq!(
            credited(70, 443),
            (Reason::Allowed, 0, reference_entry(0, 0))
        );
        assert_eq!(
            credited(70, 22),
            (Reason::Allowed, 1, reference_entry(1, 0))
        );
        assert_eq!(credited(5, 22).0, Reason::NotAllowlisted);
    }

    /// The overlap example of the issue: A = 203.0.113.0/24 on tcp/443,
    /// B = 203.0.113.64/26 on tcp/22.
    #[test]
    fn overlapping_sources_with_different_ports() {
        let a_sources = [Prefix {
            address: v4(203, 0, 113, 0),
            len: 24,
        }];
        let b_sources = [Prefix {
            address: v4(203, 0, 113, 64),
            len: 26,
        }];
        let a_ports = [PortRange {
            protocol: TCP,
            first: 443,
            last: 443,
        }];
        let b_ports = [PortRange {
            protocol: TCP,
            first: 22,
            last: 22,
        }];
        let rules = [
            ReferenceRule {
                sources: &a_sources,
                ports: &a_ports,
            },
            ReferenceRule {
                sources: &b_sources,
                ports: &b_ports,
            },
        ];
        let policy = ReferencePolicy(&rules);
        let inner = v4(203, 0, 113, 70);
        let outer = v4(203, 0, 113, 10);
        assert_eq!(decide(tcp(inner, 443), &policy).reason, Reason::Allowed);
        assert_eq!(decide(tcp(inner, 443), &policy).rule, 0);
        assert_eq!(decide(tcp(inner, 22), &policy).rule, 1);
        assert_eq!(decide(tcp(outer, 443), &policy).reason, Reason::Allowed);
        assert_eq!(
            decide(tcp(outer, 22), &policy).reason,
            Reason::NotAllowlisted
        );
        assert_eq!(decide(tcp(outer, 80), &policy).reason, Reason::PortClosed);
        assert_eq!(
            decide(
                Packet::EchoRequest {
                    source: v4(192, 0, 2, 1)
                },
                &policy
            )
            .reason,
            Reason::NotAllowlisted
        );
        assert_eq!(
            decide(Packet::LaterFragment { source: outer }, &policy).reason,
            Reason::FragmentAllowed
        );
        assert_eq!(
            decide(
                Packet::LaterFragment {
                    source: v4(192, 0, 2, 1)
                },
                &policy
            )
            .reason,
            Reason::Fragment
        );
    }

    #[test]
    fn prefix_contains_respects_partial_bytes_and_families() {
        let net = Prefix {
            address: v4(203, 0, 113, 64),
            len: 26,
        };
        assert!(net.contains(&v4(203, 0, 113, 127)));
        assert!(!net.contains(&v4(203, 0, 113, 128)));
        assert!(!net.contains(&Source::V6([0; 16])));
        let everything = Prefix {
            address: v4(0, 0, 0, 0),
            len: 0,
        };
        assert!(everything.contains(&v4(192, 0, 2, 1)));
    }
}
