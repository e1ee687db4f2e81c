//! A small frame builder for crafted packets: VLAN tags, IPv4 options and
//! fragments, IPv6 extension headers, truncations. Frames go from the peer
//! to the edge (`PEER_MAC` -> `EDGE_MAC`, destination `EDGE_V4`/`EDGE_V6`).
//! Transport checksums are left zero: the XDP program does not read them,
//! and the edge's stack then discards the packet silently, so nothing is
//! answered and counters see exactly what was sent.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::addr::{EDGE_MAC, EDGE_V4, EDGE_V6, PEER_MAC};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// Ethernet header, then one 4-byte tag per `tags` entry (outermost first).
pub fn ethernet(tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&EDGE_MAC);
    frame.extend_from_slice(&PEER_MAC);
    for (index, tpid) in tags.iter().enumerate() {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(100 + index as u16).to_be_bytes()); // VLAN id
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// IPv4 to the edge. `fragment` is the raw flags + offset field (0x2000 =
/// more fragments, low 13 bits = offset in 8-byte units).
pub fn ipv4(
    source: Ipv4Addr,
    protocol: u8,
    options: &[u8],
    fragment: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options are padded to 4 bytes");
    let header_len = 20 + options.len();
    let mut packet = vec![0x40 | (header_len / 4) as u8, 0];
    packet.extend_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34]);
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.extend_from_slice(&[64, protocol, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&EDGE_V4.octets());
    packet.extend_from_slice(options);
    let checksum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `units` x 8 bytes after the first 8.
    HopByHop {
        units: u8,
    },
    DestinationOptions {
        units: u8,
    },
    /// Routing header (type 0 segments-left 0 is ignored by receivers).
    Routing {
        units: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header with a 4-byte ICV (payload length 2 -> 16 bytes).
    Authentication,
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::Authentication => 51,
            Ext::DestinationOptions { .. } => 60,
        }
    }

    fn bytes(self, next_header: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { units }
            | Ext::DestinationOptions { units }
            | Ext::Routing { units } => {
                let mut header = vec![0u8; 8 * (usize::from(units) + 1)];
                header[0] = next_header;
                header[1] = units;
                if let Ext::HopByHop { .. } | Ext::DestinationOptions { .. } = self {
                    // PadN option filling the rest.
                    header[2] = 1;
                    header[3] = (header.len() - 4) as u8;
                }
                header
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                let mut header = vec![next_header, 0];
                header.extend_from_slice(&field.to_be_bytes());
                header.extend_from_slice(&[0, 0, 0x56, 0x78]);
                header
            }
            Ext::Authentication => {
                let mut header = vec![next_header, 2, 0, 0];
                header.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
                header
            }
        }
    }
}

/// The longest chain the parser walks: six headers, every kind.
pub const LONGEST_EXTENSION_CHAIN: [Ext; 6] = [
    Ext::HopByHop { units: 0 },
    Ext::DestinationOptions { units: 1 },
    Ext::Routing { units: 0 },
    Ext::Fragment {
        offset: 0,
        more: true,
    },
    Ext::Authentication,
    Ext::DestinationOptions { units: 0 },
];

/// IPv6 to the edge, through `chain` (outermost first), then `payload` of
/// protocol `protocol`.
pub fn ipv6(source: Ipv6Addr, chain: &[Ext], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    let mut next = protocol;
    for ext in chain.iter().rev() {
        let mut header = ext.bytes(next);
        header.extend_from_slice(&body);
        body = header;
        next = ext.number();
    }
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next, 64]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&EDGE_V6.octets());
    packet.extend_from_slice(&body);
    packet
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP SYN to `port`, 20 bytes, no options.
pub fn tcp_syn(port: u16) -> Vec<u8> {
    tcp_segment(50000, port, TCP_SYN)
}

/// A TCP header from `source_port` to `port` with `flags`, 20 bytes.
pub fn tcp_segment(source_port: u16, port: u16, flags: u8) -> Vec<u8> {
    let mut header = source_port.to_be_bytes().to_vec();
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    header
}

/// Offsets in an untagged frame.
const IPV4_AT: usize = 14;
const IPV6_AT: usize = 14;

/// The frame the edge would send for the flow that `frame` (an untagged
/// IPv4 or IPv6 frame to the edge, without extension headers) answers:
/// addresses and ports swapped, sent to a MAC address no host in the lab
/// has, so nothing answers it.
pub fn reversed(frame: &[u8]) -> Vec<u8> {
    const NOBODY: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&NOBODY);
    out[6..12].copy_from_slice(&EDGE_MAC);
    let (source, destination, transport, protocol) =
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETH_IPV4 => (
                IPV4_AT + 12..IPV4_AT + 16,
                IPV4_AT + 16..IPV4_AT + 20,
                IPV4_AT + usize::from(frame[IPV4_AT] & 0x0f) * 4,
                frame[IPV4_AT + 9],
            ),
            ETH_IPV6 => (
                IPV6_AT + 8..IPV6_AT + 24,
                IPV6_AT + 24..IPV6_AT + 40,
                IPV6_AT + 40,
                frame[IPV6_AT + 6],
            ),
            other => panic!("reversed: ethertype {other:#x}"),
        };
    out[source.clone()].copy_from_slice(&frame[destination.clone()]);
    out[destination].copy_from_slice(&frame[source]);
    if protocol == TCP || protocol == UDP {
        out[transport..transport + 2].copy_from_slice(&frame[transport + 2..transport + 4]);
        out[transport + 2..transport + 4].copy_from_slice(&frame[transport..transport + 2]);
    }
    out
}

/// IPv4 from `source` to `destination` (no options, not fragmented).
pub fn ipv4_between(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = ipv4(source, protocol, &[], 0, payload);
    packet[16..20].copy_from_slice(&destination.octets());
    packet[10..12].copy_from_slice(&[0, 0]);
    let checksum = internet_checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet
}

pub fn udp(port: u16, payload: &[u8]) -> Vec<u8> {
    udp_from(50000, port, payload)
}

pub fn udp_from(source_port: u16, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = source_port.to_be_bytes().to_vec();
    datagram.extend_from_slice(&port.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// An ICMP or ICMPv6 message of `icmp_type`, code 0, 8 bytes.
pub fn icmp(icmp_type: u8) -> Vec<u8> {
    vec![icmp_type, 0, 0, 0, 0, 1, 0, 1]
}

/// TCP SYN frame from `source` to the edge's `port`.
pub fn tcp_v4(source: Ipv4Addr, port: u16) -> Vec<u8> {
    ethernet(&[], ETH_IPV4, &ipv4(source, TCP, &[], 0, &tcp_syn(port)))
}

pub fn tcp_v6(source: Ipv6Addr, port: u16) -> Vec<u8> {
    ethernet(&[], ETH_IPV6, &ipv6(source, &[], TCP, &tcp_syn(port)))
}

/// An ARP request from the peer for the edge's address.
pub fn arp_request(sender: Ipv4Addr) -> Vec<u8> {
    let mut body = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    body.extend_from_slice(&PEER_MAC);
    body.extend_from_slice(&sender.octets());
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&EDGE_V4.octets());
    let mut frame = ethernet(&[], ETH_ARP, &body);
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let packet = ipv4(
            Ipv4Addr::new(192, 0, 2, 9),
            TCP,
            &[1, 1, 1, 0],
            0,
            &tcp_syn(443),
        );
        assert_eq!(internet_checksum(&packet[..24]), 0);
        assert_eq!(packet[0], 0x46);
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let chain = [
            Ext::HopByHop { units: 0 },
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ];
        let packet = ipv6(Ipv6Addr::LOCALHOST, &chain, TCP, &tcp_syn(443));
        assert_eq!(packet[6], 0); // IPv6 -> hop-by-hop
        assert_eq!(packet[40], 44); // hop-by-hop -> fragment
        assert_eq!(packet[48], TCP); // fragment -> TCP
        assert_eq!(u16::from_be_bytes([packet[56 + 2], packet[56 + 3]]), 443);
    }
}
