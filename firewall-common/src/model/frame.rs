//! The reference frame parser: what the XDP program's parser must decide
//! for any frame, written on byte slices with no pointers. End-to-end tests
//! send thousands of mutated frames and require the kernel's counters to
//! match what this parser and [`crate::verdict::decide`] predict.

use crate::{
    limits::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH},
    maps::{PortKey, protocol},
    verdict::{Packet, Source, icmp_packet},
    wire::*,
};

/// Parses `frame` (starting at the Ethernet header).
pub fn parse(frame: &[u8]) -> Packet {
    ethernet(frame).unwrap_or(Packet::Malformed)
}

/// `N` bytes at `at`, or `None` when the frame ends first.
fn bytes<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be16(pair: [u8; 2]) -> u16 {
    u16::from_be_bytes(pair)
}

fn ethernet(frame: &[u8]) -> Option<Packet> {
    let mut ether_type = be16(bytes(frame, 12)?);
    let mut at = ETH_HEADER_LEN;
    let mut tags = 0;
    while is_vlan(ether_type) {
        if tags == MAX_VLAN_DEPTH {
            return Some(Packet::Malformed);
        }
        let tag: [u8; 4] = bytes(frame, at)?;
        ether_type = be16([tag[2], tag[3]]);
        at += 4;
        tags += 1;
    }
    Some(match ether_type {
        ETH_P_IP => return ipv4(frame, at),
        ETH_P_IPV6 => return ipv6(frame, at),
        ETH_P_ARP => {
            bytes::<ARP_BODY_LEN>(frame, at)?;
            Packet::Arp
        }
        _ => Packet::NonIp,
    })
}

fn ipv4(frame: &[u8], at: usize) -> Option<Packet> {
    let header: [u8; IPV4_HEADER_LEN] = bytes(frame, at)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(be16([header[2], header[3]]));
    if header[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN || total_len < header_len {
        return Some(Packet::Malformed);
    }
    let source = Source::V4([header[12], header[13], header[14], header[15]]);
    if be16([header[6], header[7]]) & IPV4_FRAGMENT_OFFSET_MASK != 0 {
        return Some(Packet::LaterFragment { source });
    }
    transport(frame, at + header_len, header[9], source)
}

fn ipv6(frame: &[u8], at: usize) -> Option<Packet> {
    let header: [u8; IPV6_HEADER_LEN] = bytes(frame, at)?;
    if header[0] >> 4 != 6 {
        return Some(Packet::Malformed);
    }
    let mut source = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    let source = Source::V6(source);
    let mut next_header = header[6];
    let mut at = at + IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                let [next, len] = bytes(frame, at)?;
                at += ipv6_options_header_len(len);
                next_header = next;
            }
            IPV6_AUTHENTICATION => {
                let [next, len] = bytes(frame, at)?;
                at += ipv6_authentication_header_len(len);
                next_header = next;
            }
            IPV6_FRAGMENT => {
                let fragment: [u8; IPV6_FRAGMENT_HEADER_LEN] = bytes(frame, at)?;
                if be16([fragment[2], fragment[3]]) >> 3 != 0 {
                    return Some(Packet::LaterFragment { source });
                }
                at += IPV6_FRAGMENT_HEADER_LEN;
                next_header = fragment[0];
            }
            _ => return transport(frame, at, next_header, source),
        }
    }
    // Still an extension header after the deepest we walk: too deep.
    if is_ipv6_extension_header(next_header) {
        return Some(Packet::Malformed);
    }
    transport(frame, at, next_header, source)
}

fn transport(frame: &[u8], at: usize, ip_protocol: u8, source: Source) -> Option<Packet> {
    let v6 = matches!(source, Source::V6(_));
    Some(match ip_protocol {
        protocol::TCP => {
            let tcp: [u8; TCP_HEADER_LEN] = bytes(frame, at)?;
            if tcp[12] >> 4 < 5 {
                return Some(Packet::Malformed);
            }
            Packet::Transport {
                source,
                port: PortKey::new(protocol::TCP, be16([tcp[2], tcp[3]])),
            }
        }
        protocol::UDP => {
            let udp: [u8; UDP_HEADER_LEN] = bytes(frame, at)?;
            Packet::Transport {
                source,
                port: PortKey::new(protocol::UDP, be16([udp[2], udp[3]])),
            }
        }
        protocol::ICMP if !v6 => {
            icmp_packet(false, bytes::<ICMP_HEADER_LEN>(frame, at)?[0], source)
        }
        protocol::ICMPV6 if v6 => {
            icmp_packet(true, bytes::<ICMP_HEADER_LEN>(frame, at)?[0], source)
        }
        _ => Packet::Unexposed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VENDOR: [u8; 4] = [203, 0, 113, 10];

    fn ipv4_tcp(options: usize, port: u16) -> [u8; 74] {
        let mut frame = [0u8; 74];
        frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        frame[14] = 0x45 + (options / 4) as u8;
        frame[16..18].copy_from_slice(&60u16.to_be_bytes());
        frame[23] = protocol::TCP;
        frame[26..30].copy_from_slice(&VENDOR);
        let tcp = 14 + 20 + options;
        frame[tcp + 2..tcp + 4].copy_from_slice(&port.to_be_bytes());
        frame[tcp + 12] = 0x50;
        frame
    }

    #[test]
    fn parses_ipv4_with_and_without_options() {
        let expected = Packet::Transport {
            source: Source::V4(VENDOR),
            port: PortKey::new(protocol::TCP, 443),
        };
        assert_eq!(parse(&ipv4_tcp(0, 443)), expected);
        assert_eq!(parse(&ipv4_tcp(20, 443)), expected);
        // Cut inside the TCP header after 20 bytes of options.
        assert_eq!(parse(&ipv4_tcp(20, 443)[..70]), Packet::Malformed);
    }

    #[test]
    fn short_or_inconsistent_headers_are_malformed() {
        assert_eq!(parse(&[0u8; 13]), Packet::Malformed);
        let mut frame = ipv4_tcp(0, 443);
        frame[14] = 0x44;
        assert_eq!(parse(&frame), Packet::Malformed);
        let mut tagged = [0u8; 18];
        tagged[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        tagged[16..18].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        assert_eq!(parse(&tagged), Packet::Malformed);
        let mut other = [0u8; 60];
        other[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        assert_eq!(parse(&other), Packet::NonIp);
    }

    #[test]
    fn later_fragments_carry_no_ports() {
        let mut frame = ipv4_tcp(0, 443);
        frame[20..22].copy_from_slice(&0x0064u16.to_be_bytes());
        assert_eq!(
            parse(&frame),
            Packet::LaterFragment {
                source: Source::V4(VENDOR)
            }
        );
    }
}
