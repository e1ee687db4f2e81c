//! The transport header: destination port for TCP and UDP, type for ICMP.

use firewall_common::{
    maps::{PortKey, protocol},
    verdict::{Packet, Source, icmp_packet},
    wire::{ICMP_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN},
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

const _: () = assert!(core::mem::size_of::<TcpHdr>() == TCP_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<IcmpHdr>() == ICMP_HEADER_LEN);

#[inline(always)]
pub fn parse(cursor: &mut Cursor, ip_protocol: u8, source: Source) -> Option<Packet> {
    let v6 = matches!(source, Source::V6(_));
    let packet = match ip_protocol {
        protocol::TCP => {
            let tcp = cursor.peek::<TcpHdr>()?;
            if tcp.data_offset_flags[0] >> 4 < 5 {
                return Some(Packet::Malformed);
            }
            Packet::Transport {
                source,
                port: PortKey::new(protocol::TCP, u16::from_be_bytes(tcp.destination_port)),
            }
        }
        protocol::UDP => {
            let udp = cursor.peek::<UdpHdr>()?;
            Packet::Transport {
                source,
                port: PortKey::new(protocol::UDP, u16::from_be_bytes(udp.destination_port)),
            }
        }
        protocol::ICMP if !v6 => icmp_packet(false, cursor.peek::<IcmpHdr>()?.icmp_type, source),
        protocol::ICMPV6 if v6 => icmp_packet(true, cursor.peek::<IcmpHdr>()?.icmp_type, source),
        _ => Packet::Unexposed,
    };
    Some(packet)
}
