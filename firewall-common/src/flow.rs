//! Flows the host starts: the TC egress program records them, and the XDP
//! program lets their replies in (return traffic) and checks that ICMP
//! errors quote one of them.

use crate::wire::{Source, protocol};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// Writes `source` into `to` in place: an IPv4 address in the first 4
/// bytes, the rest zero. In place, because a 16-byte array built by value
/// costs the data plane up to 256 bytes of its 512-byte stack in spills.
#[inline(always)]
fn write_address(to: &mut [u8; 16], source: &Source) {
    match source {
        Source::V4(v4) => {
            *to = [0; 16];
            to[..4].copy_from_slice(v4);
        }
        Source::V6(v6) => *to = *v6,
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
        let mut key = Self {
            protocol: 0,
            family: 0,
            local_port: 0,
            remote_port: 0,
            pad: 0,
            local: [0; 16],
            remote: [0; 16],
        };
        key.set(
            direction,
            protocol,
            source,
            destination,
            source_port,
            destination_port,
        );
        key
    }

    /// Makes this the key [`FlowKey::of`] returns, in place (the data
    /// plane writes it into a map value, never onto its small stack).
    #[inline(always)]
    pub fn set(
        &mut self,
        direction: Direction,
        protocol: u8,
        source: &Source,
        destination: &Source,
        source_port: u16,
        destination_port: u16,
    ) {
        let (local, remote, local_port, remote_port) = match direction {
            Direction::Egress => (source, destination, source_port, destination_port),
            Direction::Ingress => (destination, source, destination_port, source_port),
        };
        self.protocol = protocol;
        self.family = if matches!(source, Source::V4(_)) {
            4
        } else {
            6
        };
        self.local_port = local_port;
        self.remote_port = remote_port;
        self.pad = 0;
        write_address(&mut self.local, local);
        write_address(&mut self.remote, remote);
    }
}

/// What a TCP segment says about the end of its connection: its FIN and
/// RST flags. One byte, as on the wire: the data plane copies it around,
/// and the BPF verifier rejects code that copies parts of it left unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ends(u8);

impl Ends {
    /// No FIN, no RST: every UDP and ICMP packet.
    pub const NONE: Self = Self(0);
    pub const FIN: Self = Self(crate::wire::TCP_FIN);
    pub const RST: Self = Self(crate::wire::TCP_RST);

    /// From the TCP header's flags byte.
    #[inline(always)]
    pub const fn of_tcp_flags(flags: u8) -> Self {
        Self(flags & (crate::wire::TCP_FIN | crate::wire::TCP_RST))
    }

    #[inline(always)]
    pub const fn fin(self) -> bool {
        self.0 & crate::wire::TCP_FIN != 0
    }

    #[inline(always)]
    pub const fn rst(self) -> bool {
        self.0 & crate::wire::TCP_RST != 0
    }
}

/// What the `FLOWS` map keeps per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns` of the last packet either way; once the flow is
    /// [closed](FlowState::closed), of the packet that closed it.
    pub last_seen_ns: u64,
    /// [`FlowState::FIN_SENT`], [`FlowState::FIN_RECEIVED`], [`FlowState::RESET`].
    pub ends: u32,
    pub pad: u32,
}

impl FlowState {
    /// The host sent a FIN: it sends no more, but may still receive.
    pub const FIN_SENT: u32 = 1 << 0;
    /// The peer sent a FIN: the host may still send.
    pub const FIN_RECEIVED: u32 = 1 << 1;
    pub const RESET: u32 = 1 << 2;

    /// A flow first seen at `now`, on a packet crossing `direction`.
    #[inline(always)]
    pub const fn new(now: u64, direction: Direction, ends: Ends) -> Self {
        let mut state = Self {
            last_seen_ns: now,
            ends: 0,
            pad: 0,
        };
        state.mark(direction, ends);
        state
    }

    /// Both sides sent a FIN, or either a RST: the close timeout runs.
    /// A half-closed connection (one FIN) still carries data the other way
    /// and keeps the idle timeout.
    #[inline(always)]
    pub const fn closed(&self) -> bool {
        self.ends & Self::RESET != 0
            || self.ends & (Self::FIN_SENT | Self::FIN_RECEIVED)
                == Self::FIN_SENT | Self::FIN_RECEIVED
    }

    /// Records a packet of the flow seen at `now` crossing `direction`.
    /// The close timer runs from the packet that closed the flow: later
    /// packets (retransmitted FINs, stray ACKs) do not extend it.
    #[inline(always)]
    pub const fn observe(&mut self, now: u64, direction: Direction, ends: Ends) {
        if !self.closed() {
            self.last_seen_ns = now;
            self.mark(direction, ends);
        }
    }

    #[inline(always)]
    const fn mark(&mut self, direction: Direction, ends: Ends) {
        if ends.fin() {
            self.ends |= match direction {
                Direction::Egress => Self::FIN_SENT,
                Direction::Ingress => Self::FIN_RECEIVED,
            };
        }
        if ends.rst() {
            self.ends |= Self::RESET;
        }
    }
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
    pub const fn timeout_ns(&self, protocol: u8, closed: bool) -> u64 {
        match protocol {
            protocol::TCP if closed => self.tcp_close_timeout_ns,
            protocol::TCP => self.tcp_timeout_ns,
            protocol::UDP => self.udp_timeout_ns,
            _ => self.icmp_timeout_ns,
        }
    }

    /// Whether the flow `state` of `protocol` has timed out at `now`.
    #[inline(always)]
    pub const fn expired(&self, protocol: u8, state: &FlowState, now: u64) -> bool {
        now.saturating_sub(state.last_seen_ns) > self.timeout_ns(protocol, state.closed())
    }
}

/// Indices of `FLOW_STATS` (per-CPU `u64`). With the flows in the table,
/// they tell how many the LRU evicted: created - swept - live.
pub mod flow_stats {
    /// Flows created by the egress program, per protocol.
    pub const CREATED_TCP: u32 = 0;
    pub const CREATED_UDP: u32 = 1;
    pub const CREATED_ICMP: u32 = 2;
    /// Expired flows user space deleted (written by user space only, on
    /// the first CPU's value), kept with the maps across daemon restarts.
    pub const SWEPT: u32 = 3;
    /// Entries of `FLOW_STATS`.
    pub const COUNT: u32 = 4;

    /// The index counting flows of `protocol`.
    #[inline(always)]
    pub const fn created(protocol: u8) -> u32 {
        match protocol {
            crate::wire::protocol::TCP => CREATED_TCP,
            crate::wire::protocol::UDP => CREATED_UDP,
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
        ends: Ends,
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

impl<K> Track<K> {
    /// A UDP datagram or ICMP echo of flow `key`.
    #[inline(always)]
    pub const fn flow(key: K) -> Self {
        Track::Flow {
            key,
            opens: false,
            ends: Ends::NONE,
        }
    }

    /// A TCP segment of flow `key` with header flags `flags`.
    #[inline(always)]
    pub const fn tcp(key: K, flags: u8) -> Self {
        use crate::wire::{TCP_ACK, TCP_SYN};
        Track::Flow {
            key,
            opens: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            ends: Ends::of_tcp_flags(flags),
        }
    }
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
    fn a_flow_closes_on_both_fins_or_a_reset_and_its_close_timer_is_not_extended() {
        let fin = Ends::FIN;
        let mut state = FlowState::new(1, Direction::Egress, fin);
        assert!(!state.closed(), "half-closed: the peer may still send");
        state.observe(2, Direction::Ingress, Ends::NONE);
        assert_eq!(state.last_seen_ns, 2);
        state.observe(3, Direction::Ingress, fin);
        assert!(state.closed());
        state.observe(9, Direction::Egress, Ends::NONE);
        assert_eq!(
            state.last_seen_ns, 3,
            "the close timer runs from the last FIN"
        );
        let reset = FlowState::new(1, Direction::Ingress, Ends::RST);
        assert!(reset.closed());
        assert_eq!(Ends::of_tcp_flags(0x11), fin);
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
        let seen_at_10 = FlowState::new(10, Direction::Egress, Ends::NONE);
        assert!(!config.expired(protocol::UDP, &seen_at_10, 13));
        assert!(config.expired(protocol::UDP, &seen_at_10, 14));
        // A clock that went "back" (a value written on another CPU) is fresh.
        assert!(!config.expired(protocol::UDP, &seen_at_10, 5));
    }
}
