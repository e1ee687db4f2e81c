//! Differential test of the XDP parser: thousands of frames mutated from
//! valid ones (truncated, bytes overwritten), sent through the real data
//! plane with flow tracking on. The kernel's counters must equal, per
//! reason and per rule, what the reference parser
//! (`firewall_common::model::frame`) and `decide_tracked` predict for
//! exactly those frames, given the flows the edge sent first.

use std::collections::{BTreeMap, BTreeSet};

use firewall_common::{
    flow::{Direction, Ends, FlowKey, Track},
    maps::names,
    model::{PortRange, Prefix, ReferencePolicy, ReferenceRule, frame},
    reasons::Reason,
    verdict::{Flows, Verdict, WithFlows, decide_tracked},
    wire::{
        Source,
        protocol::{TCP as TCP_PROTOCOL, UDP as UDP_PROTOCOL},
    },
};
use firewall_tests::{
    addr::*,
    bpf, config,
    daemon::{Daemon, Stats},
    frames::*,
    lab::Lab,
    root_or_skip,
    traffic::send_frames,
};

/// Fixed, so a failure reproduces; `FIREWALL_TEST_SEED=<n>` explores others.
const SEED: u64 = 0x5eed_f00d_0000_0001;
const FRAMES: usize = 20_000;

fn seed() -> u64 {
    std::env::var("FIREWALL_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(SEED)
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Replies to flows the edge starts (see [`outgoing`]): a TCP ACK, a UDP
/// answer over IPv6, an echo reply, and a port unreachable error from a
/// router quoting the edge's UDP datagram.
fn replies() -> Vec<Vec<u8>> {
    let quoted_udp = ipv4_between(EDGE_V4, STRANGER_V4, UDP, &udp_from(40002, 53, b""));
    let mut unreachable = vec![3, 3, 0, 0, 0, 0, 0, 0];
    unreachable.extend_from_slice(&quoted_udp);
    vec![
        ethernet(
            &[],
            ETH_IPV4,
            &ipv4(STRANGER_V4, TCP, &[], 0, &tcp_segment(443, 40000, TCP_ACK)),
        ),
        ethernet(
            &[],
            ETH_IPV6,
            &ipv6(STRANGER_V6, &[], UDP, &udp_from(53, 40001, b"answer")),
        ),
        ethernet(&[], ETH_IPV4, &ipv4(STRANGER_V4, ICMP, &[], 0, &icmp(0))),
        ethernet(&[], ETH_IPV4, &ipv4(OFFICE_V4, ICMP, &[], 0, &unreachable)),
    ]
}

/// What the edge sends first, so the replies above answer tracked flows:
/// a SYN, a UDP query (IPv6 and IPv4) and an echo request.
fn outgoing() -> Vec<Vec<u8>> {
    let replies = replies();
    let mut syn = reversed(&replies[0]);
    syn[14 + 20 + 13] = TCP_SYN;
    let mut echo_request = reversed(&replies[2]);
    echo_request[14 + 20] = 8;
    let udp_v4 = ethernet(
        &[],
        ETH_IPV4,
        &ipv4(STRANGER_V4, UDP, &[], 0, &udp_from(53, 40002, b"")),
    );
    vec![syn, reversed(&replies[1]), echo_request, reversed(&udp_v4)]
}

/// The reference flow table: the flows of [`outgoing`].
struct ReferenceFlows(BTreeSet<FlowKey>);

impl Flows for ReferenceFlows {
    fn tracking(&self) -> bool {
        true
    }

    fn tracked(&self, key: &FlowKey, _: Option<Ends>) -> bool {
        self.0.contains(key)
    }
}

/// Valid frames covering every parser path.
fn templates() -> Vec<Vec<u8>> {
    let mut neighbor_solicitation =
        ethernet(&[], ETH_IPV6, &ipv6(STRANGER_V6, &[], ICMPV6, &icmp(135)));
    // Hop limit 255: on-link, as RFC 4861 requires.
    neighbor_solicitation[14 + 7] = 255;
    let mut templates = replies();
    templates.push(neighbor_solicitation);
    templates.extend([
        tcp_v4(VENDOR_V4, 443),
        tcp_v4(INNER_V4, 22),
        tcp_v6(VENDOR_V6, 443),
        ethernet(
            &[],
            ETH_IPV4,
            &ipv4(OFFICE_V4, TCP, &[1; 12], 0, &tcp_syn(22)),
        ),
        ethernet(
            &[],
            ETH_IPV4,
            &ipv4(VENDOR_V4, UDP, &[], 0, &udp(4500, b"payload")),
        ),
        ethernet(&[], ETH_IPV4, &ipv4(VENDOR_V4, ICMP, &[], 0, &icmp(8))),
        ethernet(
            &[],
            ETH_IPV4,
            &ipv4(VENDOR_V4, TCP, &[], 0x2000, &tcp_syn(443)),
        ),
        ethernet(&[], ETH_IPV4, &ipv4(VENDOR_V4, TCP, &[], 0x0040, &[0; 24])),
        ethernet(
            &[TPID_8021Q],
            ETH_IPV4,
            &ipv4(VENDOR_V4, TCP, &[], 0, &tcp_syn(443)),
        ),
        ethernet(
            &[TPID_8021AD, TPID_8021Q],
            ETH_IPV6,
            &ipv6(VENDOR_V6, &[], UDP, &udp(4500, b"x")),
        ),
        ethernet(
            &[],
            ETH_IPV6,
            &ipv6(VENDOR_V6, &LONGEST_EXTENSION_CHAIN, TCP, &tcp_syn(443)),
        ),
        ethernet(
            &[],
            ETH_IPV6,
            &ipv6(
                VENDOR_V6,
                &[Ext::Fragment {
                    offset: 9,
                    more: false,
                }],
                TCP,
                &[0; 16],
            ),
        ),
        ethernet(&[], ETH_IPV6, &ipv6(STRANGER_V6, &[], ICMPV6, &icmp(128))),
        ethernet(&[], ETH_IPV6, &ipv6(STRANGER_V6, &[], ICMPV6, &icmp(2))),
        ethernet(&[], ETH_IPV6, &ipv6(STRANGER_V6, &[], ICMPV6, &icmp(135))),
        arp_request(STRANGER_V4),
    ]);
    templates
}

/// Byte values that steer the parser: ethertypes, IP versions and header
/// lengths, next-header numbers, ports.
const INTERESTING: [u8; 20] = [
    0x00, 0xff, 0x08, 0x06, 0x81, 0x88, 0xa8, 0x86, 0xdd, 0x45, 0x4f, 0x60, 0x11, 0x2b, 0x2c, 0x33,
    0x3a, 0x3c, 0x01, 0xbb,
];

fn mutate(rng: &mut Rng, template: &[u8]) -> Vec<u8> {
    let mut frame = template.to_vec();
    let action = rng.below(4);
    if action & 1 == 1 {
        for _ in 0..1 + rng.below(4) {
            // Headers live in the first 100 bytes; MACs do not matter.
            let at = 12 + rng.below(frame.len().min(100) - 12);
            frame[at] = if rng.below(2) == 0 {
                rng.next() as u8
            } else {
                INTERESTING[rng.below(INTERESTING.len())]
            };
        }
    }
    if action & 2 == 2 {
        // AF_PACKET refuses frames shorter than an Ethernet header.
        frame.truncate(ETH_HEADER + rng.below(frame.len() - ETH_HEADER + 1));
    }
    frame
}

const ETH_HEADER: usize = 14;

fn v4(octets: [u8; 4], len: u8) -> Prefix {
    Prefix {
        address: Source::V4(octets),
        len,
    }
}

fn v6(address: std::net::Ipv6Addr, len: u8) -> Prefix {
    Prefix {
        address: Source::V6(address.octets()),
        len,
    }
}

/// The policy of `config()` and the flows of [`outgoing`], as the
/// reference sees them.
struct Reference {
    vendor_sources: [Prefix; 2],
    vendor_ports: [PortRange; 2],
    office_sources: [Prefix; 2],
    office_ports: [PortRange; 1],
    flows: ReferenceFlows,
}

/// Rule names of `config()`, in config order.
const RULE_NAMES: [&str; 2] = ["vendor", "office-ssh"];

impl Reference {
    fn new() -> Reference {
        let flows = ReferenceFlows(
            outgoing()
                .iter()
                .map(
                    |frame| match frame::parse_tracked(frame, Direction::Egress).1 {
                        Track::Flow { key, .. } => key,
                        other => panic!("an outgoing template is no flow: {other:?}"),
                    },
                )
                .collect(),
        );
        assert_eq!(flows.0.len(), 4);
        Reference {
            vendor_sources: [
                v4([203, 0, 113, 0], 24),
                v6("2001:db8:1::".parse().unwrap(), 48),
            ],
            vendor_ports: [
                PortRange {
                    protocol: TCP_PROTOCOL,
                    first: 443,
                    last: 443,
                },
                PortRange {
                    protocol: UDP_PROTOCOL,
                    first: 4500,
                    last: 4500,
                },
            ],
            office_sources: [v4([203, 0, 113, 64], 26), v4([198, 51, 100, 0], 24)],
            office_ports: [PortRange {
                protocol: TCP_PROTOCOL,
                first: 22,
                last: 22,
            }],
            flows,
        }
    }

    /// What the data plane must decide for `frame`, arriving.
    fn verdict(&self, frame: &[u8]) -> Verdict {
        let rules = [
            ReferenceRule {
                sources: &self.vendor_sources,
                ports: &self.vendor_ports,
            },
            ReferenceRule {
                sources: &self.office_sources,
                ports: &self.office_ports,
            },
        ];
        let policy = ReferencePolicy(&rules);
        let (packet, track) = frame::parse_tracked(frame, Direction::Ingress);
        decide_tracked(packet, || track, &WithFlows(&policy, &self.flows))
    }
}

/// The lab with the daemon of `config()` (flows that outlive the test),
/// after the edge sent [`outgoing`]: the stats then.
fn lab_with_flows() -> (Lab, Daemon, Stats) {
    let lab = Lab::new();
    let daemon = Daemon::start(
        &lab.edge,
        &format!(
            "{}\n[flows]\ntcp_close_timeout = \"1h\"\nudp_timeout = \"1h\"\nicmp_timeout = \"1h\"\n",
            config("driver")
        ),
    );
    send_frames(&lab.edge, EDGE_IF, outgoing());
    let before = daemon.settled_stats();
    assert_eq!(
        before.0["flows"],
        serde_json::json!({"tcp": 1, "udp": 2, "icmp": 1, "capacity": 65536, "created": 4, "evicted": 0}),
        "the edge's packets went out through the TC program"
    );
    (lab, daemon, before)
}

/// `count` frames mutated from the templates, from `seed`.
fn mutated_frames(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
    let templates = templates();
    let mut rng = Rng(seed);
    (0..count).map(move |_| {
        let template = &templates[rng.below(templates.len())];
        mutate(&mut rng, template)
    })
}

#[test]
fn kernel_counters_match_the_reference_parser_on_mutated_frames() {
    if !root_or_skip("kernel_counters_match_the_reference_parser_on_mutated_frames") {
        return;
    }
    let reference = Reference::new();
    let seed = seed();
    let frames: Vec<Vec<u8>> = mutated_frames(seed, FRAMES).collect();
    let mut expected_reasons: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut expected_rules: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for frame in &frames {
        let verdict = reference.verdict(frame);
        let bytes = frame.len() as u64;
        let tally = expected_reasons.entry(verdict.reason.name()).or_default();
        *tally = (tally.0 + 1, tally.1 + bytes);
        if verdict.reason == Reason::Allowed {
            let tally = expected_rules
                .entry(RULE_NAMES[verdict.rule as usize])
                .or_default();
            *tally = (tally.0 + 1, tally.1 + bytes);
        }
    }
    // The mutations must reach every verdict, or the test proves less.
    for reason in Reason::ALL {
        assert!(
            expected_reasons.contains_key(reason.name()),
            "no mutated frame is {reason:?}: {expected_reasons:?}"
        );
    }

    let (lab, daemon, before) = lab_with_flows();
    send_frames(&lab.peer, PEER_IF, frames);
    let after = daemon.settled_stats();
    let delta = |stats: &Stats, before: &Stats, reason: Reason| -> (u64, u64) {
        let (packets, bytes) = if reason.is_drop() {
            ("drops", "drop_bytes")
        } else {
            ("passed", "passed_bytes")
        };
        let get = |stats: &Stats, key: &str| stats.0[key][reason.name()].as_u64().unwrap();
        (
            get(stats, packets) - get(before, packets),
            get(stats, bytes) - get(before, bytes),
        )
    };
    for reason in Reason::ALL {
        let expected = expected_reasons
            .get(reason.name())
            .copied()
            .unwrap_or_default();
        let actual = delta(&after, &before, reason);
        if matches!(reason, Reason::Arp | Reason::Neighbor) {
            // The lab's own stacks add ARP and neighbour discovery; never fewer.
            assert!(
                actual.0 >= expected.0,
                "{reason:?}: kernel {actual:?}, reference {expected:?} (seed {seed})"
            );
        } else {
            assert_eq!(
                actual, expected,
                "{reason:?}: kernel (packets, bytes) vs reference (seed {seed})"
            );
        }
    }
    for name in RULE_NAMES {
        let (packets, bytes) = after.rule(name);
        let (packets_before, bytes_before) = before.rule(name);
        let expected = expected_rules.get(name).copied().unwrap_or_default();
        assert_eq!(
            (packets - packets_before, bytes - bytes_before),
            expected,
            "rule {name} (seed {seed})"
        );
    }
}

/// Frames of the frame-by-frame test: a million, in seconds.
const TEST_RUN_FRAMES: usize = 1_000_000;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A million mutated frames through the real program with its live maps
/// (`BPF_PROG_TEST_RUN`), one at a time: for each, the program's action
/// and the counter it lands in must be the reference's.
#[test]
fn every_frame_through_the_real_program_matches_the_reference() {
    if !root_or_skip("every_frame_through_the_real_program_matches_the_reference") {
        return;
    }
    let reference = Reference::new();
    let (_lab, daemon, _) = lab_with_flows();
    let program =
        bpf::program_of_link(&daemon.bpf_dir.join("links").join(EDGE_IF).join("driver")).unwrap();
    let maps = daemon
        .bpf_dir
        .join(format!("maps-v{}", firewall_common::maps::LAYOUT_VERSION));
    let mut reasons = bpf::PerCpuCounters::open(&maps.join(names::REASON_STATS)).unwrap();
    let seed = seed();
    let mut reached = BTreeSet::new();
    for (index, frame) in mutated_frames(seed ^ 0x7e57, TEST_RUN_FRAMES).enumerate() {
        let verdict = reference.verdict(&frame);
        let counter = verdict.reason as u32;
        let before = reasons.get(counter).unwrap();
        let (_, action) = bpf::test_run(&program, &frame, 1).unwrap();
        let after = reasons.get(counter).unwrap();
        let expected_action = if verdict.reason.is_drop() {
            XDP_DROP
        } else {
            XDP_PASS
        };
        let counted = (after.0 - before.0, after.1 - before.1);
        // The lab's own stacks may add ARP and neighbour discovery meanwhile.
        let counted_right = if matches!(verdict.reason, Reason::Arp | Reason::Neighbor) {
            counted.0 >= 1
        } else {
            counted == (1, frame.len() as u64)
        };
        assert!(
            action == expected_action && counted_right,
            "frame {index} (seed {seed}): the reference says {verdict:?} (action {expected_action}); the kernel returned {action} and counted {counted:?} under {:?}\nframe: {}",
            verdict.reason,
            hex(&frame)
        );
        reached.insert(verdict.reason);
    }
    assert_eq!(reached.len(), Reason::ALL.len(), "{reached:?}");
}
