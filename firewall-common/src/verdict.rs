//! The decision: from a parsed packet and two policy lookups to a verdict.
//!
//! The XDP program parses headers into a [`Packet`], then calls [`decide`]
//! with a [`Policy`] backed by its maps. Tests call the same function with
//! the reference [`crate::model`] and with user space's compiled tables, so
//! the logic that ships is the logic that is tested.

use crate::{
    flow::{Ends, FlowKey, Track},
    maps::{PortKey, RuleSet, SourceValue, UNCOUNTED_ENTRY},
    reasons::Reason,
    wire::Source,
};

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

/// The lookups the policy answers; each is done at most once per packet.
pub trait Policy {
    /// Rules whose sources contain `source` (a longest-prefix match), and
    /// the entry the first of them credits.
    fn source_entry(&self, source: &Source) -> SourceValue;
    /// Rules that expose `port`.
    fn port_rules(&self, port: &PortKey) -> RuleSet;
    /// The entry of `rule` that credits `source`: its most specific prefix
    /// containing `source`. Asked only when the admitting rule is not the
    /// first of [`Policy::source_entry`]'s rules, which needs a second
    /// lookup; policies that do not count entries answer
    /// [`UNCOUNTED_ENTRY`].
    fn rule_entry(&self, _rule: u32, _source: &Source) -> u32 {
        UNCOUNTED_ENTRY
    }
}

/// A policy's source lookup reduced to the rules.
#[inline(always)]
pub fn source_rules<P: Policy + ?Sized>(policy: &P, source: &Source) -> RuleSet {
    policy.source_entry(source).rules
}

/// The outcome for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// For [`Reason::Allowed`]: the first rule in config order that admits
    /// the packet, which is the one credited in per-rule counters.
    pub rule: u32,
    /// For [`Reason::Allowed`]: the entry of `rule` credited, its most
    /// specific prefix containing the source.
    pub entry: u32,
}

impl Verdict {
    const fn of(reason: Reason) -> Self {
        Self {
            reason,
            rule: 0,
            entry: UNCOUNTED_ENTRY,
        }
    }
}

/// Decides one packet. Port before source: a closed port costs no source search.
///
/// `decide` and [`decide_tracked`] take the packet by value: behind a
/// reference the data plane would store the enum on its stack whole, bytes
/// of the variants not taken included, which LLVM may fill from any
/// register, a pointer included, and the verifier rejects that.
#[inline(always)]
pub fn decide<P: Policy + ?Sized>(packet: Packet, policy: &P) -> Verdict {
    match packet {
        Packet::Transport { source, port } => {
            let exposing = policy.port_rules(&port);
            if exposing == 0 {
                return Verdict::of(Reason::PortClosed);
            }
            let found = policy.source_entry(&source);
            let admitting = exposing & found.rules;
            if admitting == 0 {
                return Verdict::of(Reason::NotAllowlisted);
            }
            let rule = admitting.trailing_zeros();
            // Usually the admitting rule is the first one the source
            // lookup found, and its entry came with it.
            let entry = if rule == found.rules.trailing_zeros() {
                found.entry
            } else {
                policy.rule_entry(rule, &source)
            };
            Verdict {
                reason: Reason::Allowed,
                rule,
                entry,
            }
        }
        Packet::EchoRequest { source } => {
            if source_rules(policy, &source) == 0 {
                Verdict::of(Reason::NotAllowlisted)
            } else {
                Verdict::of(Reason::IcmpEcho)
            }
        }
        Packet::LaterFragment { source } => {
            if source_rules(policy, &source) == 0 {
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

/// The flow tracking side of the policy, for flow keys held as `K` (see
/// [`Track`]).
pub trait Flows<K = FlowKey> {
    /// Whether outbound flows are tracked; with tracking, ICMP errors must
    /// quote a tracked flow and neighbour discovery must be valid.
    fn tracking(&self) -> bool;
    /// Whether `key` is a live tracked flow. `seen`: a packet of the flow
    /// arrived (the data plane refreshes the flow and notes its FIN or
    /// RST); `None`: only a look, for the flow an ICMP error quotes.
    fn tracked(&self, key: &K, seen: Option<Ends>) -> bool;
}

/// Decides one arriving packet with flow tracking: the allowlist first
/// (allowed traffic costs no flow lookup), then, for what it would drop,
/// whether the packet answers a flow the host started. `track` is what the
/// packet means for flow tracking, asked only where that can change the
/// verdict.
#[inline(always)]
pub fn decide_tracked<K, P: Policy + Flows<K> + ?Sized>(
    packet: Packet,
    track: impl FnOnce() -> Track<K>,
    policy: &P,
) -> Verdict {
    let verdict = decide(packet, policy);
    if !matches!(
        verdict.reason,
        Reason::NotAllowlisted | Reason::PortClosed | Reason::IcmpError | Reason::Neighbor
    ) {
        return verdict;
    }
    match (verdict.reason, track()) {
        (
            Reason::NotAllowlisted | Reason::PortClosed,
            Track::Flow {
                key,
                opens: false,
                ends,
            },
        ) if policy.tracking() && policy.tracked(&key, Some(ends)) => {
            Verdict::of(Reason::ReturnTraffic)
        }
        (Reason::IcmpError, Track::Related { quoted }) if policy.tracking() => match quoted {
            Some(key) if policy.tracked(&key, None) => verdict,
            _ => Verdict::of(Reason::IcmpUnrelated),
        },
        (Reason::Neighbor, Track::InvalidNeighbor) if policy.tracking() => {
            Verdict::of(Reason::NeighborInvalid)
        }
        _ => verdict,
    }
}

/// What an ICMP (`v6 == false`) or ICMPv6 message type is, for the policy
/// and for flow tracking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    EchoRequest,
    EchoReply,
    /// Destination unreachable and time exceeded; ICMPv6 errors 1-4.
    Error,
    /// ICMPv6 neighbour discovery (133-137) and multicast listener
    /// discovery (130-132, 143).
    Neighbor,
    Other,
}

#[inline(always)]
pub const fn icmp_kind(v6: bool, icmp_type: u8) -> IcmpKind {
    if v6 {
        match icmp_type {
            1..=4 => IcmpKind::Error,
            128 => IcmpKind::EchoRequest,
            129 => IcmpKind::EchoReply,
            130..=137 | 143 => IcmpKind::Neighbor,
            _ => IcmpKind::Other,
        }
    } else {
        match icmp_type {
            3 | 11 => IcmpKind::Error,
            8 => IcmpKind::EchoRequest,
            0 => IcmpKind::EchoReply,
            _ => IcmpKind::Other,
        }
    }
}

/// How the ICMP (`v6 == false`) or ICMPv6 message `icmp_type` is treated.
/// Shared so the XDP program and the documentation cannot disagree.
#[inline(always)]
pub const fn icmp_packet(v6: bool, icmp_type: u8, source: Source) -> Packet {
    match icmp_kind(v6, icmp_type) {
        IcmpKind::Error => Packet::IcmpError,
        IcmpKind::EchoRequest => Packet::EchoRequest { source },
        IcmpKind::Neighbor => Packet::Neighbor,
        IcmpKind::EchoReply | IcmpKind::Other => Packet::Unexposed,
    }
}

/// A policy and a flow table seen as one, for [`decide_tracked`].
pub struct WithFlows<'a, P: ?Sized, F: ?Sized>(pub &'a P, pub &'a F);

impl<P: Policy + ?Sized, F: ?Sized> Policy for WithFlows<'_, P, F> {
    fn source_entry(&self, source: &Source) -> SourceValue {
        self.0.source_entry(source)
    }

    fn port_rules(&self, port: &PortKey) -> RuleSet {
        self.0.port_rules(port)
    }

    fn rule_entry(&self, rule: u32, source: &Source) -> u32 {
        self.0.rule_entry(rule, source)
    }
}

impl<K, P: ?Sized, F: Flows<K> + ?Sized> Flows<K> for WithFlows<'_, P, F> {
    fn tracking(&self) -> bool {
        self.1.tracking()
    }

    fn tracked(&self, key: &K, seen: Option<Ends>) -> bool {
        self.1.tracked(key, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flow::Direction, wire::protocol};

    /// Port 443 exposed to 203.0.113.0/24; one tracked flow; tracking on or off.
    struct Fixture {
        tracking: bool,
        live: FlowKey,
    }

    impl Policy for Fixture {
        fn source_entry(&self, source: &Source) -> SourceValue {
            SourceValue {
                rules: u64::from(matches!(source, Source::V4([203, 0, 113, _]))),
                ..SourceValue::default()
            }
        }

        fn port_rules(&self, port: &PortKey) -> RuleSet {
            u64::from(*port == PortKey::new(protocol::TCP, 443))
        }
    }

    impl Flows for Fixture {
        fn tracking(&self) -> bool {
            self.tracking
        }

        fn tracked(&self, key: &FlowKey, _: Option<Ends>) -> bool {
            *key == self.live
        }
    }

    const PEER: Source = Source::V4([198, 51, 100, 7]);
    const HOST: Source = Source::V4([192, 0, 2, 1]);

    fn reply(source_port: u16, opens: bool) -> (Packet, Track) {
        (
            Packet::Transport {
                source: PEER,
                port: PortKey::new(protocol::TCP, 40000),
            },
            Track::Flow {
                key: FlowKey::of(
                    Direction::Ingress,
                    protocol::TCP,
                    &PEER,
                    &HOST,
                    source_port,
                    40000,
                ),
                opens,
                ends: Ends::NONE,
            },
        )
    }

    fn fixture(tracking: bool) -> Fixture {
        Fixture {
            tracking,
            live: FlowKey::of(Direction::Egress, protocol::TCP, &HOST, &PEER, 40000, 443),
        }
    }

    #[test]
    fn replies_to_tracked_flows_pass_and_nothing_else_changes() {
        let on = fixture(true);
        let (packet, track) = reply(443, false);
        assert_eq!(
            decide_tracked(packet, || track, &on).reason,
            Reason::ReturnTraffic
        );
        // Wrong port pair, or a SYN from outside: no match.
        let (packet, track) = reply(444, false);
        assert_eq!(
            decide_tracked(packet, || track, &on).reason,
            Reason::PortClosed
        );
        let (packet, track) = reply(443, true);
        assert_eq!(
            decide_tracked(packet, || track, &on).reason,
            Reason::PortClosed
        );
        // Tracking off: as without it.
        let (packet, track) = reply(443, false);
        assert_eq!(
            decide_tracked(packet, || track, &fixture(false)).reason,
            Reason::PortClosed
        );
    }

    #[test]
    fn what_the_allowlist_passes_never_asks_for_its_flow() {
        let allowed = Packet::Transport {
            source: Source::V4([203, 0, 113, 5]),
            port: PortKey::new(protocol::TCP, 443),
        };
        let unasked = || -> Track { panic!("the flow of an allowed packet was asked for") };
        assert_eq!(
            decide_tracked(allowed, unasked, &fixture(true)).reason,
            Reason::Allowed
        );
    }

    #[test]
    fn with_tracking_icmp_errors_must_be_related_and_neighbors_valid() {
        let on = fixture(true);
        let related = Track::Related {
            quoted: Some(on.live),
        };
        assert_eq!(
            decide_tracked(Packet::IcmpError, || related, &on).reason,
            Reason::IcmpError
        );
        let unrelated = Track::Related { quoted: None };
        assert_eq!(
            decide_tracked(Packet::IcmpError, || unrelated, &on).reason,
            Reason::IcmpUnrelated
        );
        assert_eq!(
            decide_tracked(Packet::IcmpError, || unrelated, &fixture(false)).reason,
            Reason::IcmpError
        );
        assert_eq!(
            decide_tracked(Packet::Neighbor, || Track::<FlowKey>::InvalidNeighbor, &on).reason,
            Reason::NeighborInvalid
        );
        assert_eq!(
            decide_tracked(Packet::Neighbor, || Track::<FlowKey>::None, &on).reason,
            Reason::Neighbor
        );
    }
}
