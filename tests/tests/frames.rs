//! Crafted frames: every parser path, and counters equal to exactly what
//! was sent.

use std::net::{Ipv4Addr, Ipv6Addr};

use firewall_tests::{
    addr::*,
    config,
    daemon::{Daemon, Stats},
    frames::*,
    lab::Lab,
    lab_or_skip, root_or_skip,
    traffic::{PacketSocket, send_frames},
};

/// Sends `frames` from the peer and returns the stats before and after.
fn send(lab: &Lab, daemon: &Daemon, frames: Vec<Vec<u8>>) -> (Stats, Stats) {
    let before = daemon.stats();
    send_frames(&lab.peer, PEER_IF, frames);
    (before, daemon.settled_stats())
}

fn delta_rule(before: &Stats, after: &Stats, rule: &str) -> (u64, u64) {
    let (p0, b0) = before.rule(rule);
    let (p1, b1) = after.rule(rule);
    (p1 - p0, b1 - b0)
}

fn start(lab: &Lab, mode: &str) -> Daemon {
    Daemon::start(&lab.edge, &config(mode))
}

fn counters_equal_crafted_packets(mode: &str) {
    let lab = Lab::new();
    let daemon = start(&lab, mode);
    let mut frames = Vec::new();
    frames.extend((0..25).map(|_| tcp_v4(VENDOR_V4, 443))); // vendor, 54 bytes
    frames.extend((0..7).map(|_| tcp_v6(VENDOR_V6, 443))); // vendor, 74 bytes
    frames.extend((0..5).map(|_| tcp_v4(INNER_V4, 22))); // office-ssh
    frames.push(tcp_v4(INNER_V4, 443)); // both rules allow: counted once, under vendor
    frames.extend((0..3).map(|_| tcp_v4(STRANGER_V4, 443)));
    frames.extend((0..2).map(|_| tcp_v6(STRANGER_V6, 443)));
    frames.extend((0..4).map(|_| tcp_v4(VENDOR_V4, 80)));
    frames.push(ethernet(
        &[],
        ETH_IPV4,
        &ipv4(VENDOR_V4, UDP, &[], 0, &udp(4500, b"ike")),
    )); // vendor, 45 bytes
    frames.push(ethernet(
        &[],
        ETH_IPV4,
        &ipv4(VENDOR_V4, UDP, &[], 0, &udp(443, b"")),
    )); // udp/443 is not exposed
    let (before, after) = send(&lab, &daemon, frames);
    assert_eq!(
        delta_rule(&before, &after, "vendor"),
        (25 + 7 + 1 + 1, 25 * 54 + 7 * 74 + 54 + 45)
    );
    assert_eq!(delta_rule(&before, &after, "office-ssh"), (5, 5 * 54));
    assert_eq!(after.passed_since(&before, "allowed"), 39);
    after.assert_drops_since(&before, &[("not_allowlisted", 5), ("port_closed", 5)]);
    assert_eq!(
        after.drop_bytes("not_allowlisted") - before.drop_bytes("not_allowlisted"),
        3 * 54 + 2 * 74
    );
    assert_eq!(
        after.drop_bytes("port_closed") - before.drop_bytes("port_closed"),
        4 * 54 + 42
    );
}

#[test]
fn counters_equal_crafted_packets_in_driver_mode() {
    if root_or_skip("counters_equal_crafted_packets_in_driver_mode") {
        counters_equal_crafted_packets("driver");
    }
}

#[test]
fn counters_equal_crafted_packets_in_skb_mode() {
    if root_or_skip("counters_equal_crafted_packets_in_skb_mode") {
        counters_equal_crafted_packets("skb");
    }
}

/// Frames sent in batches (`sendmmsg`, past the qdisc, as the bench's
/// generator sends where live XDP frames are refused) are counted frame for
/// frame: a few thousand SYNs to a closed port from 256 sources, then as
/// many from the vendor to 443.
#[test]
fn frames_sent_in_batches_are_counted_frame_for_frame() {
    let lab = lab_or_skip!("frames_sent_in_batches_are_counted_frame_for_frame");
    let daemon = start(&lab, "driver");
    let closed: Vec<Vec<u8>> = (0..=255)
        .map(|host| tcp_v4(Ipv4Addr::new(203, 0, 113, host), 40000))
        .collect();
    let vendor = vec![tcp_v4(VENDOR_V4, 443)];
    let before = daemon.stats();
    let (closed_sent, vendor_sent) = lab.peer.run(move || {
        let socket = PacketSocket::open(PEER_IF);
        socket.bypass_qdisc().expect("PACKET_QDISC_BYPASS");
        let send = |frames: &[Vec<u8>]| {
            let (mut next, mut sent) = (0, 0);
            while sent < 4096 {
                sent += socket.send_batch(frames, &mut next).expect("sendmmsg");
            }
            sent as u64
        };
        (send(&closed), send(&vendor))
    });
    let after = daemon.settled_stats();
    after.assert_drops_since(&before, &[("port_closed", closed_sent)]);
    assert_eq!(
        delta_rule(&before, &after, "vendor"),
        (vendor_sent, vendor_sent * 54)
    );
}

fn tagged(tags: &[u16], source: Ipv4Addr, port: u16) -> Vec<u8> {
    ethernet(tags, ETH_IPV4, &ipv4(source, TCP, &[], 0, &tcp_syn(port)))
}

#[test]
fn vlan_tagged_frames_are_classified_by_their_inner_packet() {
    let lab = lab_or_skip!("vlan_tagged_frames_are_classified_by_their_inner_packet");
    let daemon = start(&lab, "driver");
    let frames = vec![
        tagged(&[TPID_8021Q], VENDOR_V4, 443),
        tagged(&[TPID_8021Q], VENDOR_V4, 443),
        tagged(&[TPID_8021AD, TPID_8021Q], VENDOR_V4, 443),
        ethernet(
            &[TPID_8021Q],
            ETH_IPV6,
            &ipv6(VENDOR_V6, &[], TCP, &tcp_syn(443)),
        ),
        tagged(&[TPID_8021Q], STRANGER_V4, 443),
        tagged(&[TPID_8021AD, TPID_8021Q], STRANGER_V4, 443),
        tagged(&[TPID_8021AD, TPID_8021Q], VENDOR_V4, 80),
        // A third tag is deeper than the parser goes.
        tagged(&[TPID_8021AD, TPID_8021Q, TPID_8021Q], VENDOR_V4, 443),
    ];
    let (before, after) = send(&lab, &daemon, frames);
    assert_eq!(
        delta_rule(&before, &after, "vendor"),
        (4, 58 + 58 + 62 + 78)
    );
    after.assert_drops_since(
        &before,
        &[("not_allowlisted", 2), ("port_closed", 1), ("malformed", 1)],
    );
}

#[test]
fn ipv4_options_are_skipped_to_find_the_port() {
    let lab = lab_or_skip!("ipv4_options_are_skipped_to_find_the_port");
    let daemon = start(&lab, "driver");
    let with_options = |source: Ipv4Addr, options: &[u8]| {
        ethernet(&[], ETH_IPV4, &ipv4(source, TCP, options, 0, &tcp_syn(443)))
    };
    // Options of 0x01 (NOP): read as TCP they would give port 257, closed.
    let router_alert = [0x94, 0x04, 0, 0];
    let frames = vec![
        with_options(VENDOR_V4, &router_alert),
        with_options(VENDOR_V4, &[1; 40]), // IHL 15, the maximum
        with_options(STRANGER_V4, &[1; 8]),
    ];
    let (before, after) = send(&lab, &daemon, frames);
    assert_eq!(delta_rule(&before, &after, "vendor"), (2, 58 + 94));
    after.assert_drops_since(&before, &[("not_allowlisted", 1)]);

    // Inconsistent headers: IHL below 5, total length below the header.
    let mut short_ihl = ipv4(VENDOR_V4, TCP, &[], 0, &tcp_syn(443));
    short_ihl[0] = 0x44;
    let mut short_total = ipv4(VENDOR_V4, TCP, &[], 0, &tcp_syn(443));
    short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    let mut wrong_version = ipv4(VENDOR_V4, TCP, &[], 0, &tcp_syn(443));
    wrong_version[0] = 0x65;
    let frames = [short_ihl, short_total, wrong_version]
        .iter()
        .map(|ip| ethernet(&[], ETH_IPV4, ip))
        .collect();
    let (before, after) = send(&lab, &daemon, frames);
    assert_eq!(delta_rule(&before, &after, "vendor"), (0, 0));
    after.assert_drops_since(&before, &[("malformed", 3)]);
}

fn v6_frame(source: Ipv6Addr, chain: &[Ext], protocol: u8, payload: &[u8]) -> Vec<u8> {
    ethernet(&[], ETH_IPV6, &ipv6(source, chain, protocol, payload))
}

#[test]
fn ipv6_extension_headers_are_walked_to_find_the_port() {
    let lab = lab_or_skip!("ipv6_extension_headers_are_walked_to_find_the_port");
    let daemon = start(&lab, "driver");
    let six = LONGEST_EXTENSION_CHAIN;
    let seven = [six.as_slice(), &[Ext::DestinationOptions { units: 0 }]].concat();
    let frames = vec![
        v6_frame(VENDOR_V6, &six, TCP, &tcp_syn(443)),
        v6_frame(
            VENDOR_V6,
            &[Ext::HopByHop { units: 2 }],
            UDP,
            &udp(4500, b"x"),
        ),
        v6_frame(STRANGER_V6, &six, TCP, &tcp_syn(443)),
        v6_frame(VENDOR_V6, &six, TCP, &tcp_syn(80)),
        // More than six extension headers: not parsed, malformed.
        v6_frame(VENDOR_V6, &seven, TCP, &tcp_syn(443)),
        // ESP hides the transport header: nothing can expose it.
        v6_frame(VENDOR_V6, &[Ext::HopByHop { units: 0 }], 50, &[0; 16]),
    ];
    let (before, after) = send(&lab, &daemon, frames);
    // 14 + 40 + (8 + 16 + 8 + 8 + 16 + 8) + 20 = 138; 14 + 40 + 24 + 9 = 87.
    assert_eq!(delta_rule(&before, &after, "vendor"), (2, 138 + 87));
    after.assert_drops_since(
        &before,
        &[("not_allowlisted", 1), ("port_closed", 2), ("malformed", 1)],
    );
}

#[test]
fn truncated_frames_are_dropped_as_malformed() {
    let lab = lab_or_skip!("truncated_frames_are_dropped_as_malformed");
    let daemon = start(&lab, "driver");
    let whole_v4 = tcp_v4(VENDOR_V4, 443);
    let whole_v6 = v6_frame(VENDOR_V6, &[Ext::HopByHop { units: 1 }], TCP, &tcp_syn(443));
    let whole_icmp = ethernet(&[], ETH_IPV4, &ipv4(VENDOR_V4, ICMP, &[], 0, &icmp(8)));
    let whole_udp = ethernet(
        &[],
        ETH_IPV4,
        &ipv4(VENDOR_V4, UDP, &[], 0, &udp(4500, b"")),
    );
    let frames = vec![
        whole_v4[..14].to_vec(),           // Ethernet only
        whole_v4[..14 + 19].to_vec(),      // IPv4 header cut
        whole_v4[..14 + 20 + 19].to_vec(), // TCP header cut
        ethernet(&[], ETH_IPV4, &ipv4(VENDOR_V4, TCP, &[1; 8], 0, &[])), // options but no TCP
        whole_v6[..14 + 39].to_vec(),      // IPv6 header cut
        whole_v6[..14 + 40 + 15].to_vec(), // extension header cut
        whole_v6[..14 + 40 + 16 + 10].to_vec(), // TCP after extension cut
        whole_udp[..14 + 20 + 7].to_vec(), // UDP header cut
        whole_icmp[..14 + 20 + 3].to_vec(), // ICMP header cut
        tagged(&[TPID_8021Q], VENDOR_V4, 443)[..16].to_vec(), // VLAN tag cut
        arp_request(VENDOR_V4)[..14 + 20].to_vec(), // ARP body cut
    ];
    let (before, after) = send(&lab, &daemon, frames);
    assert_eq!(delta_rule(&before, &after, "vendor"), (0, 0));
    after.assert_drops_since(&before, &[("malformed", 11)]);
}

#[test]
fn non_first_fragments_pass_only_from_allowlisted_sources() {
    let lab = lab_or_skip!("non_first_fragments_pass_only_from_allowlisted_sources");
    let daemon = start(&lab, "driver");
    let later_v4 = |source| ethernet(&[], ETH_IPV4, &ipv4(source, TCP, &[], 100, &[0; 16]));
    let later_v6 = |source| {
        v6_frame(
            source,
            &[Ext::Fragment {
                offset: 100,
                more: false,
            }],
            TCP,
            &[0; 16],
        )
    };
    let frames = vec![
        later_v4(VENDOR_V4),
        later_v4(OFFICE_V4),
        later_v6(VENDOR_V6),
        later_v4(STRANGER_V4),
        later_v6(STRANGER_V6),
        later_v6(STRANGER_V6),
        // A first fragment (more fragments, offset 0) has ports: normal rules.
        ethernet(
            &[],
            ETH_IPV4,
            &ipv4(VENDOR_V4, TCP, &[], 0x2000, &tcp_syn(443)),
        ),
        ethernet(
            &[],
            ETH_IPV4,
            &ipv4(STRANGER_V4, TCP, &[], 0x2000, &tcp_syn(443)),
        ),
    ];
    let (before, after) = send(&lab, &daemon, frames);
    assert_eq!(after.passed_since(&before, "fragment_allowed"), 3);
    assert_eq!(delta_rule(&before, &after, "vendor"), (1, 54));
    after.assert_drops_since(&before, &[("fragment", 3), ("not_allowlisted", 1)]);
}

#[test]
fn without_tracking_arp_neighbor_discovery_and_icmp_errors_always_pass_echo_only_when_allowlisted()
{
    let lab = lab_or_skip!(
        "without_tracking_arp_neighbor_discovery_and_icmp_errors_always_pass_echo_only_when_allowlisted"
    );
    let daemon = Daemon::start(
        &lab.edge,
        &config("driver").replace("xdp_mode", "track_outbound = false\nxdp_mode"),
    );
    assert_eq!(daemon.status()["flows"], serde_json::Value::Null);
    let frames = vec![
        arp_request(STRANGER_V4),
        icmp6(STRANGER_V6, 135),         // neighbour solicitation
        icmp6(STRANGER_V6, 136),         // neighbour advertisement
        icmp6(STRANGER_V6, 143),         // MLDv2 report
        icmp4(STRANGER_V4, 3),           // destination unreachable
        icmp4(STRANGER_V4, 11),          // time exceeded
        icmp6(STRANGER_V6, 2),           // packet too big
        icmp6(STRANGER_V6, 1),           // destination unreachable
        icmp4(VENDOR_V4, 8),             // echo request, allowlisted
        icmp6(VENDOR_V6, 128),           // echo request, allowlisted
        icmp4(STRANGER_V4, 8),           // echo request, stranger
        icmp6(STRANGER_V6, 128),         // echo request, stranger
        icmp4(VENDOR_V4, 13),            // timestamp: never exposed
        icmp6(VENDOR_V6, 129),           // echo reply: never exposed
        ethernet(&[], 0x88cc, &[0; 46]), // LLDP
        ethernet(&[], 0x8847, &[0; 46]), // MPLS
    ];
    let (before, after) = send(&lab, &daemon, frames);
    // The peer's own stack may add ARP and ND of its own, never fewer.
    assert!(after.passed_since(&before, "arp") >= 1);
    assert!(after.passed_since(&before, "neighbor") >= 3);
    assert_eq!(after.passed_since(&before, "icmp_error"), 4);
    assert_eq!(after.passed_since(&before, "icmp_echo"), 2);
    after.assert_drops_since(
        &before,
        &[("not_allowlisted", 2), ("port_closed", 2), ("non_ip", 2)],
    );
}

fn icmp4(source: Ipv4Addr, icmp_type: u8) -> Vec<u8> {
    ethernet(&[], ETH_IPV4, &ipv4(source, ICMP, &[], 0, &icmp(icmp_type)))
}

fn icmp6(source: Ipv6Addr, icmp_type: u8) -> Vec<u8> {
    v6_frame(source, &[], ICMPV6, &icmp(icmp_type))
}

/// An ICMPv6 message with hop limit `hop_limit`.
fn icmp6_hops(source: Ipv6Addr, icmp_type: u8, hop_limit: u8) -> Vec<u8> {
    let mut frame = icmp6(source, icmp_type);
    frame[14 + 7] = hop_limit;
    frame
}

#[test]
fn with_tracking_neighbor_discovery_must_be_on_link_and_icmp_errors_related() {
    let lab =
        lab_or_skip!("with_tracking_neighbor_discovery_must_be_on_link_and_icmp_errors_related");
    let daemon = start(&lab, "driver");
    let link_local: Ipv6Addr = "fe80::99".parse().unwrap();
    let frames = vec![
        icmp6_hops(STRANGER_V6, 135, 255), // neighbour solicitation, on-link
        icmp6_hops(STRANGER_V6, 136, 255), // neighbour advertisement, on-link
        icmp6_hops(link_local, 134, 255),  // router advertisement, on-link
        icmp6_hops(STRANGER_V6, 135, 64),  // solicitation routed from afar
        icmp6_hops(link_local, 134, 254),  // router advertisement routed from afar
        icmp6_hops(STRANGER_V6, 137, 1),   // redirect routed from afar
        icmp6_hops(link_local, 143, 1),    // MLDv2 report from a link-local source
        icmp6_hops(Ipv6Addr::UNSPECIFIED, 143, 1), // MLDv2 report during DAD
        icmp6_hops(STRANGER_V6, 143, 1),   // MLDv2 report from a global source
        icmp6_hops(STRANGER_V6, 130, 1),   // MLD query from a global source
        icmp4(STRANGER_V4, 3),             // destination unreachable, quoting nothing
        icmp4(STRANGER_V4, 11),            // time exceeded, quoting nothing
        icmp6(STRANGER_V6, 2),             // packet too big, quoting nothing
        icmp4(STRANGER_V4, 8),             // echo request, stranger
        icmp4(VENDOR_V4, 8),               // echo request, allowlisted
    ];
    let (before, after) = send(&lab, &daemon, frames);
    assert!(after.passed_since(&before, "neighbor") >= 5);
    assert_eq!(after.passed_since(&before, "icmp_error"), 0);
    assert_eq!(after.passed_since(&before, "icmp_echo"), 1);
    after.assert_drops_since(
        &before,
        &[
            ("neighbor_invalid", 5),
            ("icmp_unrelated", 3),
            ("not_allowlisted", 1),
        ],
    );
}
