//! The reference frame parser: what the XDP program's parser must decide
//! for any frame, written on byte slices with no pointers. End-to-end tests
//! send thousands of mutated frames and require the kernel's counters to
//! match what this parser and [`crate::verdict::decide`] predict.

use crate::{
    flow::{Direction, FlowKey, Track, neighbor_is_valid},
    limits::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH},
    maps::PortKey,
    verdict::{IcmpKind, Packet, icmp_kind, icmp_packet},
    wire::*,
};

/// Parses `frame` (starting at the Ethernet header) arriving at the host.
pub fn parse(frame: &[u8]) -> Packet {
    parse_tracked(frame, Direction::Ingress).0
}

/// Parses `frame` crossing the interface `direction`: what the allowlist
/// decides on, and what it means for flow tracking.
pub fn parse_tracked(frame: &[u8], direction: Direction) -> (Packet, Track) {
    ethernet(frame, direction).unwrap_or((Packet::Malformed, Track::None))
}

/// `N` bytes at `at`, or `None` when the frame ends first.
fn bytes<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be16(pair: [u8; 2]) -> u16 {
    u16::from_be_bytes(pair)
}

/// What the transport layer needs of the IP header.
struct Ip {
    source: Source,
    destination: Source,
    hop_limit: u8,
}

fn untracked(packet: Packet) -> Option<(Packet, Track)> {
    Some((packet, Track::None))
}

fn ethernet(frame: &[u8], direction: Direction) -> Option<(Packet, Track)> {
    let mut ether_type = be16(bytes(frame, 12)?);
    let mut at = ETH_HEADER_LEN;
    let mut tags = 0;
    while is_vlan(ether_type) {
        if tags == MAX_VLAN_DEPTH {
            return untracked(Packet::Malformed);
        }
        let tag: [u8; 4] = bytes(frame, at)?;
        ether_type = be16([tag[2], tag[3]]);
        at += 4;
        tags += 1;
    }
    match ether_type {
        ETH_P_IP => ipv4(frame, at, direction),
        ETH_P_IPV6 => ipv6(frame, at, direction),
        ETH_P_ARP => {
            bytes::<ARP_BODY_LEN>(frame, at)?;
            untracked(Packet::Arp)
        }
        _ => untracked(Packet::NonIp),
    }
}

fn ipv4(frame: &[u8], at: usize, direction: Direction) -> Option<(Packet, Track)> {
    let header: [u8; IPV4_HEADER_LEN] = bytes(frame, at)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(be16([header[2], header[3]]));
    if header[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN || total_len < header_len {
        return untracked(Packet::Malformed);
    }
    let source = Source::V4([header[12], header[13], header[14], header[15]]);
    if be16([header[6], header[7]]) & IPV4_FRAGMENT_OFFSET_MASK != 0 {
        return untracked(Packet::LaterFragment { source });
    }
    let ip = Ip {
        source,
        destination: Source::V4([header[16], header[17], header[18], header[19]]),
        hop_limit: header[8],
    };
    transport(frame, at + header_len, header[9], &ip, direction)
}

fn ipv6(frame: &[u8], at: usize, direction: Direction) -> Option<(Packet, Track)> {
    let header: [u8; IPV6_HEADER_LEN] = bytes(frame, at)?;
    if header[0] >> 4 != 6 {
        return untracked(Packet::Malformed);
    }
    let mut source = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    let mut destination = [0u8; 16];
    destination.copy_from_slice(&header[24..40]);
    let ip = Ip {
        source: Source::V6(source),
        destination: Source::V6(destination),
        hop_limit: header[7],
    };
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
                    return untracked(Packet::LaterFragment { source: ip.source });
                }
                at += IPV6_FRAGMENT_HEADER_LEN;
                next_header = fragment[0];
            }
            _ => return transport(frame, at, next_header, &ip, direction),
        }
    }
    // Still an extension header after the deepest we walk: too deep.
    if is_ipv6_extension_header(next_header) {
        return untracked(Packet::Malformed);
    }
    transport(frame, at, next_header, &ip, direction)
}

fn transport(
    frame: &[u8],
    at: usize,
    ip_protocol: u8,
    ip: &Ip,
    direction: Direction,
) -> Option<(Packet, Track)> {
    let v6 = matches!(ip.source, Source::V6(_));
    let flow = |source_port, destination_port| {
        FlowKey::of(
            direction,
            ip_protocol,
            &ip.source,
            &ip.destination,
            source_port,
            destination_port,
        )
    };
    Some(match ip_protocol {
        protocol::TCP => {
            let tcp: [u8; TCP_HEADER_LEN] = bytes(frame, at)?;
            if tcp[12] >> 4 < 5 {
                return untracked(Packet::Malformed);
            }
            let flags = tcp[13];
            (
                Packet::Transport {
                    source: ip.source,
                    port: PortKey::new(protocol::TCP, be16([tcp[2], tcp[3]])),
                },
                Track::tcp(flow(be16([tcp[0], tcp[1]]), be16([tcp[2], tcp[3]])), flags),
            )
        }
        protocol::UDP => {
            let udp: [u8; UDP_HEADER_LEN] = bytes(frame, at)?;
            (
                Packet::Transport {
                    source: ip.source,
                    port: PortKey::new(protocol::UDP, be16([udp[2], udp[3]])),
                },
                Track::flow(flow(be16([udp[0], udp[1]]), be16([udp[2], udp[3]]))),
            )
        }
        protocol::ICMP | protocol::ICMPV6 if (ip_protocol == protocol::ICMPV6) == v6 => {
            let icmp: [u8; ICMP_HEADER_LEN] = bytes(frame, at)?;
            let packet = icmp_packet(v6, icmp[0], ip.source);
            let identifier = be16([icmp[4], icmp[5]]);
            let track = match (icmp_kind(v6, icmp[0]), direction) {
                (IcmpKind::EchoRequest, Direction::Egress) => Track::flow(flow(identifier, 0)),
                (IcmpKind::EchoReply, Direction::Ingress) => Track::flow(flow(0, identifier)),
                (IcmpKind::Error, _) => Track::Related {
                    quoted: quoted(frame, at + ICMP_HEADER_LEN, v6),
                },
                (IcmpKind::Neighbor, _) => match ip.source {
                    Source::V6(source) if !neighbor_is_valid(icmp[0], ip.hop_limit, &source) => {
                        Track::InvalidNeighbor
                    }
                    _ => Track::None,
                },
                _ => Track::None,
            };
            (packet, track)
        }
        _ => (Packet::Unexposed, Track::None),
    })
}

/// The flow of the packet an ICMP error quotes (a packet the host sent):
/// its IP header and the first bytes of its transport header.
fn quoted(frame: &[u8], at: usize, v6: bool) -> Option<FlowKey> {
    let (protocol, source, destination, at) = if v6 {
        let header: [u8; IPV6_HEADER_LEN] = bytes(frame, at)?;
        if header[0] >> 4 != 6 {
            return None;
        }
        let mut source = [0u8; 16];
        source.copy_from_slice(&header[8..24]);
        let mut destination = [0u8; 16];
        destination.copy_from_slice(&header[24..40]);
        (
            header[6],
            Source::V6(source),
            Source::V6(destination),
            at + IPV6_HEADER_LEN,
        )
    } else {
        let header: [u8; IPV4_HEADER_LEN] = bytes(frame, at)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        if header[0] >> 4 != 4
            || header_len < IPV4_HEADER_LEN
            || be16([header[6], header[7]]) & IPV4_FRAGMENT_OFFSET_MASK != 0
        {
            return None;
        }
        (
            header[9],
            Source::V4([header[12], header[13], header[14], header[15]]),
            Source::V4([header[16], header[17], header[18], header[19]]),
            at + header_len,
        )
    };
    let key = |source_port, destination_port| {
        FlowKey::of(
            Direction::Egress,
            protocol,
            &source,
            &destination,
            source_port,
            destination_port,
        )
    };
    match protocol {
        protocol::TCP | protocol::UDP => {
            let ports: [u8; QUOTED_PORTS_LEN] = bytes(frame, at)?;
            Some(key(be16([ports[0], ports[1]]), be16([ports[2], ports[3]])))
        }
        protocol::ICMP | protocol::ICMPV6 if (protocol == protocol::ICMPV6) == v6 => {
            let icmp: [u8; ICMP_HEADER_LEN] = bytes(frame, at)?;
            (icmp_kind(v6, icmp[0]) == IcmpKind::EchoRequest)
                .then(|| key(be16([icmp[4], icmp[5]]), 0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Ends;

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

    const HOST: [u8; 4] = [192, 0, 2, 1];
    const PEER: [u8; 4] = [198, 51, 100, 7];

    /// IPv4 TCP from `source`:`source_port` to `destination`:`port` with `flags`.
    fn tcp_flags(
        source: [u8; 4],
        source_port: u16,
        destination: [u8; 4],
        port: u16,
        flags: u8,
    ) -> [u8; 54] {
        let mut frame = [0u8; 54];
        frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&40u16.to_be_bytes());
        frame[22] = 64;
        frame[23] = protocol::TCP;
        frame[26..30].copy_from_slice(&source);
        frame[30..34].copy_from_slice(&destination);
        frame[34..36].copy_from_slice(&source_port.to_be_bytes());
        frame[36..38].copy_from_slice(&port.to_be_bytes());
        frame[46] = 0x50;
        frame[47] = flags;
        frame
    }

    #[test]
    fn a_reply_has_the_key_of_the_packet_that_went_out() {
        let out = tcp_flags(HOST, 40000, PEER, 443, TCP_SYN);
        let (_, outgoing) = parse_tracked(&out, Direction::Egress);
        let answer = tcp_flags(PEER, 443, HOST, 40000, TCP_SYN | TCP_ACK);
        let (_, reply) = parse_tracked(&answer, Direction::Ingress);
        let (
            Track::Flow {
                key: sent,
                opens: true,
                ..
            },
            Track::Flow {
                key: answered,
                opens: false,
                ends: Ends::NONE,
            },
        ) = (outgoing, reply)
        else {
            panic!("{outgoing:?} {reply:?}");
        };
        assert_eq!(sent, answered);
        let syn = tcp_flags(PEER, 443, HOST, 40000, TCP_SYN);
        let (_, syn) = parse_tracked(&syn, Direction::Ingress);
        assert!(
            matches!(syn, Track::Flow { opens: true, .. }),
            "a SYN from outside opens"
        );
        let fin = tcp_flags(PEER, 443, HOST, 40000, TCP_FIN | TCP_ACK);
        let (_, fin) = parse_tracked(&fin, Direction::Ingress);
        assert!(matches!(
            fin,
            Track::Flow {
                ends: Ends::FIN,
                ..
            }
        ));
    }

    #[test]
    fn an_icmp_error_names_the_flow_it_quotes() {
        // Destination unreachable from a router, quoting 192.0.2.1:5353 -> 198.51.100.7:53/udp.
        let mut frame = [0u8; 14 + 20 + 8 + 20 + 8];
        frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&64u16.to_be_bytes());
        frame[23] = protocol::ICMP;
        frame[26..30].copy_from_slice(&[203, 0, 113, 1]);
        frame[30..34].copy_from_slice(&[192, 0, 2, 1]);
        frame[34] = 3;
        let inner = 42;
        frame[inner] = 0x45;
        frame[inner + 9] = protocol::UDP;
        frame[inner + 12..inner + 16].copy_from_slice(&HOST);
        frame[inner + 16..inner + 20].copy_from_slice(&PEER);
        frame[inner + 20..inner + 22].copy_from_slice(&5353u16.to_be_bytes());
        frame[inner + 22..inner + 24].copy_from_slice(&53u16.to_be_bytes());
        let (packet, track) = parse_tracked(&frame, Direction::Ingress);
        assert_eq!(packet, Packet::IcmpError);
        let expected = FlowKey::of(
            Direction::Egress,
            protocol::UDP,
            &Source::V4(HOST),
            &Source::V4(PEER),
            5353,
            53,
        );
        assert_eq!(
            track,
            Track::Related {
                quoted: Some(expected)
            }
        );
        // Cut inside the quoted ports: still an error, quoting nothing known.
        let (packet, track) = parse_tracked(&frame[..inner + 21], Direction::Ingress);
        assert_eq!(
            (packet, track),
            (Packet::IcmpError, Track::Related { quoted: None })
        );
    }
}
