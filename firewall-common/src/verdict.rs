//! The decision: from a parsed packet and two policy lookups to a verdict.
//!
//! The XDP program parses headers into a [`Packet`], then calls [`decide`]
//! with a [`Policy`] backed by its maps. Tests call the same function with
//! the reference [`crate::model`] and with user space's compiled tables, so
//! the logic that ships is the logic that is tested.

use crate::{
    maps::{PortKey, RuleSet},
    reasons::Reason,
};

/// A source address as it appears on the wire (network byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What the parser found, reduced to what the policy needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    /// TCP or UDP with a destination port.
    Transport {
        source: Source,
        port: PortKey,
    },
    /// ICMP or ICMPv6 echo request.
    EchoRequest {
        source: Source,
    },
    /// A fragment other than the first: it carries no ports.
    LaterFragment {
        source: Source,
    },
    /// Any other IP packet that is not always passed (other protocols, other
    /// ICMP types): no rule can expose it.
    Unexposed,
    Arp,
    Neighbor,
    IcmpError,
    Malformed,
    NonIp,
}

/// The two lookups the policy answers; each is done at most once per packet.
pub trait Policy {
    /// Rules whose sources contain `source` (a longest-prefix match).
    fn source_rules(&self, source: &Source) -> RuleSet;
    /// Rules that expose `port`.
    fn port_rules(&self, port: &PortKey) -> RuleSet;
}

/// The outcome for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// For [`Reason::Allowed`]: the first rule in config order that admits
    /// the packet, which is the one credited in per-rule counters.
    pub rule: u32,
}

impl Verdict {
    const fn of(reason: Reason) -> Self {
        Self { reason, rule: 0 }
    }
}

/// Decides one packet. Port before source: a closed port costs no LPM lookup.
#[inline(always)]
pub fn decide<P: Policy + ?Sized>(packet: &Packet, policy: &P) -> Verdict {
    match packet {
        Packet::Transport { source, port } => {
            let exposing = policy.port_rules(port);
            if exposing == 0 {
                return Verdict::of(Reason::PortClosed);
            }
            let admitting = exposing & policy.source_rules(source);
            if admitting == 0 {
                Verdict::of(Reason::NotAllowlisted)
            } else {
                Verdict {
                    reason: Reason::Allowed,
                    rule: admitting.trailing_zeros(),
                }
            }
        }
        Packet::EchoRequest { source } => {
            if policy.source_rules(source) == 0 {
                Verdict::of(Reason::NotAllowlisted)
            } else {
                Verdict::of(Reason::IcmpEcho)
            }
        }
        Packet::LaterFragment { source } => {
            if policy.source_rules(source) == 0 {
                Verdict::of(Reason::Fragment)
            } else {
                Verdict::of(Reason::FragmentAllowed)
            }
        }
        Packet::Unexposed => Verdict::of(Reason::PortClosed),
        Packet::Arp => Verdict::of(Reason::Arp),
        Packet::Neighbor => Verdict::of(Reason::Neighbor),
        Packet::IcmpError => Verdict::of(Reason::IcmpError),
        Packet::Malformed => Verdict::of(Reason::Malformed),
        Packet::NonIp => Verdict::of(Reason::NonIp),
    }
}

/// How the ICMP (`v6 == false`) or ICMPv6 message `icmp_type` is treated.
/// Shared so the XDP program and the documentation cannot disagree.
#[inline(always)]
pub const fn icmp_packet(v6: bool, icmp_type: u8, source: Source) -> Packet {
    if v6 {
        match icmp_type {
            1..=4 => Packet::IcmpError,
            128 => Packet::EchoRequest { source },
            130..=137 | 143 => Packet::Neighbor,
            _ => Packet::Unexposed,
        }
    } else {
        match icmp_type {
            3 | 11 => Packet::IcmpError,
            8 => Packet::EchoRequest { source },
            _ => Packet::Unexposed,
        }
    }
}
