//! Flows the host starts: the TC egress program records them, and the XDP
//! program lets their replies in (return traffic) and checks that ICMP
//! errors quote one of them.

use crate::{maps::protocol, verdict::Source};

/// Which way a packet crosses the protected interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Arriving: seen by the XDP program.
    Ingress,
    /// Leaving: seen by the TC egress program.
    Egress,
}

/// A flow as the host sees it: its own address and port, the peer's. Both
/// directions of a flow have the same key: the key of the `FLOWS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// [`protocol::TCP`], [`protocol::UDP`], [`protocol::ICMP`] or [`protocol::ICMPV6`].
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// The host's port, or the ICMP echo identifier.
    pub local_port: u16,
    /// The peer's port; 0 for ICMP echo.
    pub remote_port: u16,
    /// Always zero, so keys hash the same on both sides.
    pub pad: u16,
    /// IPv4 addresses fill the first 4 bytes; the rest is zero.
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

#[inline(always)]
fn address(source: &Source) -> [u8; 16] {
    match source {
        Source::V4(v4) => [
            v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        Source::V6(v6) => *v6,
    }
}

impl FlowKey {
    /// The key of a packet from `source`:`source_port` to
    /// `destination`:`destination_port` crossing the interface `direction`.
    #[inline(always)]
    pub fn of(
        direction: Direction,
        protocol: u8,
        source: &Source,
        destination: &Source,
        source_port: u16,
        destination_port: u16,
    ) -> Self {
        let (local, remote, local_port, remote_port) = match direction {
            Direction::Egress => (source, destination, source_port, destination_port),
            Direction::Ingress => (destination, source, destination_port, source_port),
        };
        Self {
            protocol,
            family: if matches!(source, Source::V4(_)) {
                4
            } else {
                6
            },
            local_port,
            remote_port,
            pad: 0,
            local: address(local),
            remote: address(remote),
        }
    }
}

/// What the `FLOWS` map keeps per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns` of the last packet either way (of the FIN or RST
    /// once closing).
    pub last_seen_ns: u64,
    /// Non-zero once a FIN or RST was seen: the close timeout applies.
    pub closing: u32,
    pub pad: u32,
}

/// Flow tracking settings (`FLOW_CONFIG`, one entry), written by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowConfig {
    /// Non-zero: flows are tracked, and the ICMP error and neighbour
    /// discovery checks apply.
    pub enabled: u32,
    pub pad: u32,
    pub tcp_timeout_ns: u64,
    pub tcp_close_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub icmp_timeout_ns: u64,
}

impl FlowConfig {
    /// How long a flow lives without traffic.
    #[inline(always)]
    pub const fn timeout_ns(&self, protocol: u8, closing: bool) -> u64 {
        match protocol {
            protocol::TCP if closing => self.tcp_close_timeout_ns,
            protocol::TCP => self.tcp_timeout_ns,
            protocol::UDP => self.udp_timeout_ns,
            _ => self.icmp_timeout_ns,
        }
    }
}

/// Indices of `FLOW_STATS` (per-CPU `u64`): flows created, per protocol.
pub mod flow_stats {
    pub const CREATED_TCP: u32 = 0;
    pub const CREATED_UDP: u32 = 1;
    pub const CREATED_ICMP: u32 = 2;
    /// Entries of `FLOW_STATS`.
    pub const COUNT: u32 = 3;

    /// The index counting flows of `protocol`.
    #[inline(always)]
    pub const fn created(protocol: u8) -> u32 {
        match protocol {
            crate::maps::protocol::TCP => CREATED_TCP,
            crate::maps::protocol::UDP => CREATED_UDP,
            _ => CREATED_ICMP,
        }
    }
}

/// What a packet means for flow tracking, beside what the allowlist says.
/// `K` is where the flow key is: the key itself, or (in the data plane,
/// whose 512-byte stack cannot spare 40 bytes per copy) a marker for the
/// per-CPU scratch map the parser wrote it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track<K = FlowKey> {
    None,
    /// A packet of flow `key`: TCP, UDP, an ICMP echo request going out or
    /// an echo reply coming in.
    Flow {
        key: K,
        /// A TCP SYN without ACK: opens a connection, never a reply.
        opens: bool,
        /// A TCP FIN or RST: the connection is closing.
        closes: bool,
    },
    /// An ICMP error quoting a packet of flow `quoted`; `None` when the
    /// quoted headers cannot be read.
    Related {
        quoted: Option<K>,
    },
    /// Neighbour discovery with a hop limit other than 255 (RFC 4861), or
    /// MLD from a source neither link-local nor unspecified (RFC 2710, 3810).
    InvalidNeighbor,
}

/// Whether an ICMPv6 neighbour discovery or MLD message may be genuine:
/// ND (133-137) only with hop limit 255, so it cannot come from off-link;
/// MLD (130-132, 143) only from a link-local or the unspecified address.
#[inline(always)]
pub fn neighbor_is_valid(icmp_type: u8, hop_limit: u8, source: &[u8; 16]) -> bool {
    match icmp_type {
        133..=137 => hop_limit == 255,
        _ => {
            (source[0] == 0xfe && source[1] & 0xc0 == 0x80) || source.iter().all(|byte| *byte == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_of_a_flow_share_a_key() {
        let host = Source::V4([192, 0, 2, 1]);
        let peer = Source::V4([198, 51, 100, 7]);
        let out = FlowKey::of(Direction::Egress, protocol::TCP, &host, &peer, 40000, 443);
        let back = FlowKey::of(Direction::Ingress, protocol::TCP, &peer, &host, 443, 40000);
        assert_eq!(out, back);
        assert_eq!(out.local[..4], [192, 0, 2, 1]);
        assert_eq!(out.local_port, 40000);
        assert_eq!(out.family, 4);
        // The wrong port pair is another flow.
        let spoofed = FlowKey::of(Direction::Ingress, protocol::TCP, &peer, &host, 444, 40000);
        assert_ne!(out, spoofed);
    }

    #[test]
    fn neighbor_discovery_needs_hop_limit_255_and_mld_a_link_local_source() {
        let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let global = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(neighbor_is_valid(135, 255, &global));
        assert!(!neighbor_is_valid(134, 64, &link_local));
        assert!(neighbor_is_valid(143, 1, &link_local));
        assert!(neighbor_is_valid(143, 1, &[0; 16]));
        assert!(!neighbor_is_valid(131, 1, &global));
    }

    #[test]
    fn timeouts_by_protocol_and_state() {
        let config = FlowConfig {
            enabled: 1,
            pad: 0,
            tcp_timeout_ns: 1,
            tcp_close_timeout_ns: 2,
            udp_timeout_ns: 3,
            icmp_timeout_ns: 4,
        };
        assert_eq!(config.timeout_ns(protocol::TCP, false), 1);
        assert_eq!(config.timeout_ns(protocol::TCP, true), 2);
        assert_eq!(config.timeout_ns(protocol::UDP, false), 3);
        assert_eq!(config.timeout_ns(protocol::ICMPV6, false), 4);
    }
}
