//! The transport header: destination port for TCP and UDP, type for ICMP;
//! for flow tracking, the flow, and the flow an ICMP error quotes.

use firewall_common::{
    flow::{Direction, Track, neighbor_is_valid},
    maps::PortKey,
    verdict::{IcmpKind, Packet, icmp_kind, icmp_packet},
    wire::{
        ICMP_HEADER_LEN, IPV4_HEADER_LEN, QUOTED_PORTS_LEN, Source, TCP_HEADER_LEN, UDP_HEADER_LEN,
        protocol,
    },
};

use super::{
    FlowRef, Ip, Parsed,
    headers::{Ipv4Hdr, Ipv6Hdr},
    untracked,
};
use crate::cursor::Cursor;

#[derive(Clone, Copy)]
#[repr(C)]
struct TcpHdr {
    source_port: [u8; 2],
    destination_port: [u8; 2],
    sequence: [u8; 4],
    acknowledgement: [u8; 4],
    data_offset_flags: [u8; 2],
    window: [u8; 2],
    checksum: [u8; 2],
    urgent: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct UdpHdr {
    source_port: [u8; 2],
    destination_port: [u8; 2],
    len: [u8; 2],
    checksum: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct IcmpHdr {
    icmp_type: u8,
    code: u8,
    checksum: [u8; 2],
    rest: [u8; 4],
}

impl TcpHdr {
    /// Whether the data offset covers at least the fixed header.
    #[inline(always)]
    fn well_formed(&self) -> bool {
        self.data_offset_flags[0] >> 4 >= 5
    }

    #[inline(always)]
    fn flags(&self) -> u8 {
        self.data_offset_flags[1]
    }
}

const _: () = assert!(core::mem::size_of::<TcpHdr>() == TCP_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<IcmpHdr>() == ICMP_HEADER_LEN);

#[derive(Clone, Copy)]
#[repr(C)]
struct Ports {
    source: [u8; 2],
    destination: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<Ports>() == QUOTED_PORTS_LEN);

/// The flow of a packet carrying `protocol` between `source_port` and
/// `destination_port`, its IP header described by `ip`.
#[inline(always)]
fn flow(
    ip: &Ip,
    protocol: u8,
    source_port: u16,
    destination_port: u16,
    direction: Direction,
) -> FlowRef {
    FlowRef {
        header_at: ip.header_at as u16,
        v6: matches!(ip.source, Source::V6(_)),
        protocol,
        source_port,
        destination_port,
        direction,
    }
}

/// What the policy and flow tracking read of a TCP or UDP header.
#[derive(Clone, Copy)]
pub struct TransportHeader {
    protocol: u8,
    source_port: u16,
    destination_port: u16,
    /// The TCP flags; none for UDP.
    tcp_flags: u8,
}

impl TransportHeader {
    /// The well-formed TCP or UDP header at the cursor of a packet carrying
    /// `ip_protocol`; `None` for another protocol, a header cut short, or a
    /// TCP data offset inside the header.
    #[inline(always)]
    pub fn read(cursor: &Cursor, ip_protocol: u8) -> Option<Self> {
        let (source, destination, tcp_flags) = match ip_protocol {
            protocol::TCP => {
                let tcp = cursor.peek::<TcpHdr>()?;
                if !tcp.well_formed() {
                    return None;
                }
                (tcp.source_port, tcp.destination_port, tcp.flags())
            }
            protocol::UDP => {
                let udp = cursor.peek::<UdpHdr>()?;
                (udp.source_port, udp.destination_port, 0)
            }
            _ => return None,
        };
        Some(Self {
            protocol: ip_protocol,
            source_port: u16::from_be_bytes(source),
            destination_port: u16::from_be_bytes(destination),
            tcp_flags,
        })
    }

    /// The packet, from the source of `ip`.
    #[inline(always)]
    pub fn packet(&self, source: Source) -> Packet {
        Packet::Transport {
            source,
            port: PortKey::new(self.protocol, self.destination_port),
        }
    }

    /// Its flow, in the IP packet `ip`, crossing the interface `direction`.
    #[inline(always)]
    pub fn track(&self, ip: &Ip, direction: Direction) -> Track<FlowRef> {
        let flow = flow(
            ip,
            self.protocol,
            self.source_port,
            self.destination_port,
            direction,
        );
        if self.protocol == protocol::TCP {
            Track::tcp(flow, self.tcp_flags)
        } else {
            Track::flow(flow)
        }
    }
}

#[inline(always)]
pub fn parse(
    cursor: &mut Cursor,
    ip_protocol: u8,
    ip: &Ip,
    direction: Direction,
) -> Option<Parsed> {
    let v6 = matches!(ip.source, Source::V6(_));
    let echo_flow = |source_port, destination_port| {
        flow(ip, ip_protocol, source_port, destination_port, direction)
    };
    let parsed = match ip_protocol {
        protocol::TCP | protocol::UDP => {
            let Some(header) = TransportHeader::read(cursor, ip_protocol) else {
                return untracked(Packet::Malformed);
            };
            (
                header.packet(ip.source).into(),
                header.track(ip, direction).into(),
            )
        }
        protocol::ICMP | protocol::ICMPV6 if (ip_protocol == protocol::ICMPV6) == v6 => {
            let icmp = cursor.peek::<IcmpHdr>()?;
            let identifier = u16::from_be_bytes([icmp.rest[0], icmp.rest[1]]);
            let track = match (icmp_kind(v6, icmp.icmp_type), direction) {
                (IcmpKind::EchoRequest, Direction::Egress) => Track::flow(echo_flow(identifier, 0)),
                (IcmpKind::EchoReply, Direction::Ingress) => Track::flow(echo_flow(0, identifier)),
                (IcmpKind::Error, _) => {
                    cursor.skip(ICMP_HEADER_LEN);
                    Track::Related {
                        quoted: quoted(cursor, v6),
                    }
                }
                (IcmpKind::Neighbor, _) => match ip.source {
                    Source::V6(source)
                        if !neighbor_is_valid(icmp.icmp_type, ip.hop_limit, &source) =>
                    {
                        Track::InvalidNeighbor
                    }
                    _ => Track::None,
                },
                _ => Track::None,
            };
            (
                icmp_packet(v6, icmp.icmp_type, ip.source).into(),
                track.into(),
            )
        }
        _ => (Packet::Unexposed.into(), Track::None.into()),
    };
    Some(parsed)
}

/// The flow of the packet an ICMP error quotes (a packet the host sent):
/// its IP header and the first bytes of its transport header.
#[inline(always)]
fn quoted(cursor: &mut Cursor, v6: bool) -> Option<FlowRef> {
    let header_at = cursor.offset as u16;
    let protocol = if v6 {
        let header = cursor.read::<Ipv6Hdr>()?;
        if !header.well_formed() {
            return None;
        }
        header.next_header
    } else {
        let header = cursor.read::<Ipv4Hdr>()?;
        // As the reference parser reads a quoted header: its total length
        // is not checked.
        let header_len = header.header_len()?;
        if header.later_fragment() {
            return None;
        }
        cursor.skip(header_len - IPV4_HEADER_LEN);
        header.protocol
    };
    let key = |source_port, destination_port| {
        Some(FlowRef {
            header_at,
            v6,
            protocol,
            source_port,
            destination_port,
            direction: Direction::Egress,
        })
    };
    match protocol {
        protocol::TCP | protocol::UDP => {
            let ports = cursor.peek::<Ports>()?;
            key(
                u16::from_be_bytes(ports.source),
                u16::from_be_bytes(ports.destination),
            )
        }
        protocol::ICMP | protocol::ICMPV6 if (protocol == protocol::ICMPV6) == v6 => {
            let icmp = cursor.peek::<IcmpHdr>()?;
            if icmp_kind(v6, icmp.icmp_type) == IcmpKind::EchoRequest {
                key(u16::from_be_bytes([icmp.rest[0], icmp.rest[1]]), 0)
            } else {
                None
            }
        }
        _ => None,
    }
}
