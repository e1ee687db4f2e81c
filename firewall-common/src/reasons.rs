//! Why a packet was passed or dropped. One enumeration shared by the XDP
//! program (as the index into `REASON_STATS`), the CLI and the JSON output:
//! add a variant at the end and to [`Reason::ALL`], never renumber.

/// The reason recorded for every packet the XDP program sees.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Admitted by a rule (per-rule counters say which).
    Allowed = 0,
    /// ARP, always passed so neighbours can resolve the host.
    Arp = 1,
    /// ICMPv6 neighbour discovery (133-137) and multicast listener
    /// discovery (130-132, 143), always passed: IPv6 breaks without them.
    Neighbor = 2,
    /// ICMP destination unreachable / time exceeded, ICMPv6 errors (1-4),
    /// always passed so path MTU discovery keeps working.
    IcmpError = 3,
    /// ICMP or ICMPv6 echo request from a source some rule allowlists.
    IcmpEcho = 4,
    /// A non-first fragment from a source some rule allowlists.
    FragmentAllowed = 5,
    /// Drop: the protocol and port are exposed, but not to this source.
    NotAllowlisted = 6,
    /// Drop: no rule exposes this protocol and port.
    PortClosed = 7,
    /// Drop: truncated or inconsistent headers.
    Malformed = 8,
    /// Drop: an ethertype other than IPv4, IPv6 and ARP.
    NonIp = 9,
    /// Drop: a non-first fragment from a source no rule allowlists.
    Fragment = 10,
    /// A reply to a flow the host started (flow tracking).
    ReturnTraffic = 11,
    /// Drop, with flow tracking: an ICMP error that quotes no tracked flow.
    IcmpUnrelated = 12,
    /// Drop, with flow tracking: neighbour discovery with a hop limit other
    /// than 255, or MLD from a source neither link-local nor unspecified.
    NeighborInvalid = 13,
}

/// Number of [`Reason`] variants: the size of `REASON_STATS`.
pub const REASON_COUNT: u32 = 14;

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Allowed,
        Reason::Arp,
        Reason::Neighbor,
        Reason::IcmpError,
        Reason::IcmpEcho,
        Reason::FragmentAllowed,
        Reason::NotAllowlisted,
        Reason::PortClosed,
        Reason::Malformed,
        Reason::NonIp,
        Reason::Fragment,
        Reason::ReturnTraffic,
        Reason::IcmpUnrelated,
        Reason::NeighborInvalid,
    ];

    /// Whether the verdict is a drop (in monitor mode: would be a drop).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::NotAllowlisted
                | Reason::PortClosed
                | Reason::Malformed
                | Reason::NonIp
                | Reason::Fragment
                | Reason::IcmpUnrelated
                | Reason::NeighborInvalid
        )
    }

    /// The stable name used in tables, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Arp => "arp",
            Reason::Neighbor => "neighbor",
            Reason::IcmpError => "icmp_error",
            Reason::IcmpEcho => "icmp_echo",
            Reason::FragmentAllowed => "fragment_allowed",
            Reason::NotAllowlisted => "not_allowlisted",
            Reason::PortClosed => "port_closed",
            Reason::Malformed => "malformed",
            Reason::NonIp => "non_ip",
            Reason::Fragment => "fragment",
            Reason::ReturnTraffic => "return_traffic",
            Reason::IcmpUnrelated => "icmp_unrelated",
            Reason::NeighborInvalid => "neighbor_invalid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_own_index() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
        }
    }

    #[test]
    fn exactly_the_drop_reasons_are_drops() {
        let drops: [&str; 7] = [
            "not_allowlisted",
            "port_closed",
            "malformed",
            "non_ip",
            "fragment",
            "icmp_unrelated",
            "neighbor_invalid",
        ];
        for reason in Reason::ALL {
            assert_eq!(
                reason.is_drop(),
                drops.contains(&reason.name()),
                "{reason:?}"
            );
        }
    }
}
