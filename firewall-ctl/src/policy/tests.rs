//! The compiled tables, looked up the way the kernel does (longest prefix
//! match, exact port), must give the same verdict as the reference
//! classifier for every packet we try.

use std::net::{Ipv4Addr, Ipv6Addr};

use firewall_common::{
    model::{self, ReferencePolicy, ReferenceRule},
    reasons::Reason,
    verdict::{Packet, decide},
    wire::{
        Source,
        protocol::{TCP, UDP},
    },
};

use super::*;
use crate::{
    config,
    entries::{RuntimeEntries, tests::runtime},
};

fn config(rules: &str) -> Config {
    config::tests::parse(&format!("interfaces = [\"eth0\"]\n{rules}")).unwrap()
}

fn compile(config: &Config) -> Result<CompiledPolicy, PolicyError> {
    super::compile(config, &RuntimeEntries::new())
}

/// Checks compiled tables against the reference for every given packet.
fn assert_matches_reference(config: &Config, packets: &[Packet]) {
    let compiled = compile(config).unwrap();
    let sources: Vec<Vec<model::Prefix>> = config
        .rules
        .iter()
        .map(|rule| {
            rule.sources
                .iter()
                .map(|prefix| prefix.to_model())
                .collect()
        })
        .collect();
    let ports: Vec<Vec<model::PortRange>> = config
        .rules
        .iter()
        .map(|rule| rule.ports.iter().map(|range| range.to_model()).collect())
        .collect();
    let rules: Vec<ReferenceRule<'_>> = sources
        .iter()
        .zip(&ports)
        .map(|(sources, ports)| ReferenceRule { sources, ports })
        .collect();
    let reference = ReferencePolicy(&rules);
    let attributed = Attributed {
        compiled: &compiled,
        config,
    };
    for packet in packets {
        assert_eq!(
            decide(*packet, &attributed),
            decide(*packet, &reference),
            "{packet:?}"
        );
    }
}

/// The compiled tables with the data plane's two entry lookups (source
/// trie node, entry trie), entries numbered as the reference numbers them.
struct Attributed<'a> {
    compiled: &'a CompiledPolicy,
    config: &'a Config,
}

impl Attributed<'_> {
    fn reference_entry(&self, rule: u32, key: Option<PrefixKey>, v4: bool) -> u32 {
        let position = key.and_then(|key| {
            self.config.rules[rule as usize]
                .sources
                .iter()
                .position(|prefix| prefix.is_v4() == v4 && key_of(&prefix) == key)
        });
        position.map_or(0, |position| model::reference_entry(rule, position))
    }

    fn source_entry_in<B: Bits>(&self, table: &PrefixTable<B>, bits: u128) -> SourceValue {
        let Some((key, node)) = table.longest_node(bits) else {
            return SourceValue::default();
        };
        let first = table.first_entry(key, node);
        SourceValue {
            rules: node.rules,
            entry: self.reference_entry(node.rules.trailing_zeros(), Some(first), B::WIDTH == 32),
            pad: 0,
        }
    }

    fn rule_entry_in<B: Bits>(&self, table: &PrefixTable<B>, bits: u128, rule: u32) -> u32 {
        self.reference_entry(rule, table.longest_listing(bits, rule), B::WIDTH == 32)
    }
}

impl Policy for Attributed<'_> {
    fn source_entry(&self, source: &Source) -> SourceValue {
        match source {
            Source::V4(octets) => self.source_entry_in(&self.compiled.v4, bits_v4(octets)),
            Source::V6(octets) => self.source_entry_in(&self.compiled.v6, bits_v6(octets)),
        }
    }

    fn port_rules(&self, port: &PortKey) -> RuleSet {
        self.compiled.port_rules(port)
    }

    fn rule_entry(&self, rule: u32, source: &Source) -> u32 {
        match source {
            Source::V4(octets) => self.rule_entry_in(&self.compiled.v4, bits_v4(octets), rule),
            Source::V6(octets) => self.rule_entry_in(&self.compiled.v6, bits_v6(octets), rule),
        }
    }
}

fn bits_v4(octets: &[u8; 4]) -> u128 {
    u32::from_be_bytes(*octets).into()
}

fn bits_v6(octets: &[u8; 16]) -> u128 {
    u128::from_be_bytes(*octets)
}

fn v4(text: &str) -> Source {
    Source::V4(text.parse::<Ipv4Addr>().unwrap().octets())
}

fn v6(text: &str) -> Source {
    Source::V6(text.parse::<Ipv6Addr>().unwrap().octets())
}

fn tcp(source: Source, port: u16) -> Packet {
    Packet::Transport {
        source,
        port: PortKey::new(TCP, port),
    }
}

const OVERLAP: &str = r#"
[[rules]]
name = "a"
ports = ["tcp/443"]
sources = ["203.0.113.0/24"]

[[rules]]
name = "b"
ports = ["tcp/22"]
sources = ["203.0.113.64/26"]
"#;

#[test]
fn overlap_example_from_the_issue() {
    let config = config(OVERLAP);
    let compiled = compile(&config).unwrap();
    assert_eq!(
        compiled.v4.entries().collect::<Vec<_>>(),
        [((0xcb00_7100, 24), 0b01), ((0xcb00_7140, 26), 0b11)]
    );
    let tables = &compiled;
    let inner = v4("203.0.113.70");
    let outer = v4("203.0.113.10");
    assert_eq!(decide(tcp(inner, 443), tables).reason, Reason::Allowed);
    assert_eq!(decide(tcp(inner, 22), tables).reason, Reason::Allowed);
    assert_eq!(decide(tcp(inner, 22), tables).rule, 1);
    assert_eq!(decide(tcp(outer, 443), tables).reason, Reason::Allowed);
    assert_eq!(
        decide(tcp(outer, 22), tables).reason,
        Reason::NotAllowlisted
    );
    assert_eq!(
        decide(tcp(v4("192.0.2.1"), 443), tables).reason,
        Reason::NotAllowlisted
    );
    assert_eq!(decide(tcp(outer, 80), tables).reason, Reason::PortClosed);
}

#[test]
fn nested_prefixes_siblings_and_families_match_the_reference() {
    let config = config(
        r#"
[[rules]]
name = "wide"
ports = ["tcp/443", "udp/4500"]
sources = ["198.51.100.0/24", "2001:db8::/32", "192.0.2.128/25"]

[[rules]]
name = "narrow"
ports = ["tcp/22", "tcp/443"]
sources = ["198.51.100.0/28", "198.51.100.16/28", "2001:db8:1::/48", "192.0.2.200"]

[[rules]]
name = "host"
ports = ["tcp/8000-8010"]
sources = ["198.51.100.5", "2001:db8:1::5", "203.0.113.0/24"]

[[rules]]
name = "sibling"
ports = ["udp/4500"]
sources = ["198.51.100.128/25", "2001:db8:2::/48"]
"#,
    );
    let addresses = [
        v4("198.51.100.5"),
        v4("198.51.100.6"),
        v4("198.51.100.17"),
        v4("198.51.100.40"),
        v4("198.51.100.200"),
        v4("192.0.2.1"),
        v4("192.0.2.130"),
        v4("192.0.2.200"),
        v4("203.0.113.9"),
        v6("2001:db8::1"),
        v6("2001:db8:1::5"),
        v6("2001:db8:1::6"),
        v6("2001:db8:2::1"),
        v6("2001:db9::1"),
    ];
    let mut packets = Vec::new();
    for source in addresses {
        for port in [22, 80, 443, 4500, 8000, 8005, 8010, 8011] {
            packets.push(tcp(source, port));
            packets.push(Packet::Transport {
                source,
                port: PortKey::new(UDP, port),
            });
        }
        packets.push(Packet::EchoRequest { source });
        packets.push(Packet::LaterFragment { source });
    }
    assert_matches_reference(&config, &packets);
}

#[test]
fn duplicate_prefixes_merge_their_rules() {
    let config = config(
        r#"
[[rules]]
name = "a"
ports = ["tcp/443"]
sources = ["203.0.113.0/24", "203.0.113.0/24"]

[[rules]]
name = "b"
ports = ["tcp/22"]
sources = ["203.0.113.0/24"]
"#,
    );
    let compiled = compile(&config).unwrap();
    assert_eq!(
        compiled.v4.entries().collect::<Vec<_>>(),
        [((0xcb00_7100, 24), 0b11)]
    );
}

#[test]
fn port_ranges_expand_and_merge() {
    let config = config(
        r#"
[[rules]]
name = "a"
ports = ["tcp/8000-8002", "udp/53"]
sources = ["192.0.2.1"]

[[rules]]
name = "b"
ports = ["tcp/8002"]
sources = ["192.0.2.2"]
"#,
    );
    let compiled = compile(&config).unwrap();
    assert_eq!(
        compiled.ports.into_iter().collect::<Vec<_>>(),
        [
            (PortKey::new(TCP, 8000), 0b01),
            (PortKey::new(TCP, 8001), 0b01),
            (PortKey::new(TCP, 8002), 0b11),
            (PortKey::new(UDP, 53), 0b01),
        ]
    );
}

#[test]
fn any_source_covers_the_whole_family_only() {
    let config = config(
        "[[rules]]\nname = \"open\"\nports = [\"443\"]\nsources = [\"0.0.0.0/0\"]\nallow_any_source = true\n",
    );
    let compiled = compile(&config).unwrap();
    let tables = &compiled;
    assert_eq!(
        decide(tcp(v4("192.0.2.1"), 443), tables).reason,
        Reason::Allowed
    );
    assert_eq!(
        decide(tcp(v6("2001:db8::1"), 443), tables).reason,
        Reason::NotAllowlisted
    );
}

#[test]
fn a_quarter_million_prefixes_fit_and_more_do_not() {
    let rules = |count: u32| {
        let sources: Vec<String> = (0..count)
            .map(|index| {
                format!(
                    "\"{}\"",
                    Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(index))
                )
            })
            .collect();
        format!(
            "[[rules]]\nname = \"big\"\nports = [\"443\"]\nsources = [{}]\n",
            sources.join(",")
        )
    };
    let fits = compile(&config(&rules(250_000))).unwrap();
    assert_eq!(fits.v6.len(), 250_000);
    let err = compile(&config(&rules(MAX_PREFIXES_PER_FAMILY + 1))).unwrap_err();
    assert!(
        err.to_string().contains("262145 distinct IPv6 prefixes"),
        "{err}"
    );
}

#[test]
fn runtime_entries_compile_as_if_the_config_listed_them() {
    let listed = config(
        "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", \"192.0.2.7\"]\n\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"198.51.100.0/24\", \"2001:db8::/48\"]\n",
    );
    let partial = config(
        "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\"]\n\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"198.51.100.0/24\"]\n",
    );
    let added = runtime(&[("a", "192.0.2.7"), ("b", "2001:db8::/48")]);
    let with_runtime = super::compile(&partial, &added).unwrap();
    assert_eq!(with_runtime, compile(&listed).unwrap());

    // The same, one edit at a time, reports the keys it changed.
    let mut incremental = compile(&partial).unwrap();
    let mut diff = PolicyDiff::default();
    incremental.set_listed(0, "192.0.2.7".parse().unwrap(), true, &mut diff);
    incremental.set_listed(1, "2001:db8::/48".parse().unwrap(), true, &mut diff);
    assert_eq!(incremental, with_runtime);
    assert_eq!(
        diff,
        PolicyDiff::between(&compile(&partial).unwrap(), &with_runtime)
    );
    // Two trie entries, and the two listings of the entry tables.
    assert_eq!(diff.len(), 4);
}

/// Past `REBUILD_ABOVE` changes the family is rebuilt: the same policy and
/// the same diff as one change at a time.
#[test]
fn many_changes_at_once_give_the_policy_and_diff_of_one_at_a_time() {
    let start = compile(&config(
        "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", \"198.51.100.0/25\"]\n\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"203.0.113.64/26\"]\n",
    ))
    .unwrap();
    let mut changes: Vec<(usize, IpPrefix, bool)> = (0..100)
        .map(|n| (n % 2, format!("192.0.2.{n}").parse().unwrap(), true))
        .collect();
    changes.push((0, "203.0.113.0/24".parse().unwrap(), false));
    changes.push((1, "198.51.100.0/25".parse().unwrap(), true));
    changes.push((0, "192.0.2.4".parse().unwrap(), false));
    changes.push((1, "2001:db8::/48".parse().unwrap(), true));
    let mut one_by_one = start.clone();
    let mut one_by_one_diff = PolicyDiff::default();
    for &(rule, prefix, listed) in &changes {
        one_by_one.set_listed(rule, prefix, listed, &mut one_by_one_diff);
    }
    let mut at_once = start.clone();
    let mut at_once_diff = PolicyDiff::default();
    at_once.set_listed_many(&changes, &mut at_once_diff);
    assert!(
        changes
            .iter()
            .filter(|(_, prefix, _)| prefix.is_v4())
            .count()
            > super::REBUILD_ABOVE
    );
    assert_eq!(at_once, one_by_one);
    // Exactly the keys that differ; one at a time also names the keys that
    // changed and changed back (192.0.2.4), which rewriting leaves as is.
    assert_eq!(at_once_diff, PolicyDiff::between(&start, &at_once));
    assert!(one_by_one_diff.v4.is_superset(&at_once_diff.v4));
    assert!(
        one_by_one_diff
            .v4_listings
            .is_superset(&at_once_diff.v4_listings)
    );
    assert_eq!(one_by_one_diff.v6, at_once_diff.v6);
}

#[test]
fn runtime_entries_that_no_longer_fit_are_named() {
    let config =
        config("[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\"]\n");
    let err = super::compile(
        &config,
        &runtime(&[("gone", "192.0.2.7"), ("a", "0.0.0.0/1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`192.0.2.7/32` is in rule `gone`, which the config no longer has"),
        "{err}"
    );
    assert!(
        err.contains("`0.0.0.0/1` is in rule `a`, which no longer has `allow_any_source = true`"),
        "{err}"
    );
    assert!(
        err.contains("firewall-ctl remove PREFIX --rule NAME"),
        "{err}"
    );
}

#[test]
fn diffs_list_changed_added_and_removed_keys() {
    let old = compile(&config(
        "[[rules]]\nname = \"a\"\nports = [\"443\", \"22\"]\nsources = [\"203.0.113.0/24\", \"192.0.2.1\"]\n",
    ))
    .unwrap();
    let new = compile(&config(
        "[[rules]]\nname = \"a\"\nports = [\"443\", \"udp/53\"]\nsources = [\"203.0.113.0/24\", \"192.0.2.2\"]\n",
    ))
    .unwrap();
    let diff = PolicyDiff::between(&old, &new);
    assert_eq!(diff.v4.len(), 2, "{diff:?}");
    assert_eq!(diff.ports.len(), 2, "{diff:?}");
    assert!(PolicyDiff::between(&new, &new).len() == 0);
}

#[test]
fn room_is_checked_before_anything_is_added() {
    let compiled = compile(&config(
        "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\"]\n",
    ))
    .unwrap();
    let prefixes: Vec<crate::config::IpPrefix> = (0..MAX_PREFIXES_PER_FAMILY)
        .map(|index| {
            format!("2001:db8::{:x}:{:x}", index >> 16, index & 0xffff)
                .parse()
                .unwrap()
        })
        .collect();
    assert!(compiled.check_room_for(&prefixes).is_ok());
    let mut one_more = prefixes;
    one_more.push("2001:db8:1::1".parse().unwrap());
    assert!(
        compiled
            .check_room_for(&one_more)
            .unwrap_err()
            .to_string()
            .contains("IPv6")
    );
    // An existing prefix takes no room.
    assert!(
        compiled
            .check_room_for(&["203.0.113.0/24".parse().unwrap()])
            .is_ok()
    );
}

#[test]
fn entry_tables_hold_only_rules_another_rule_comes_before() {
    let disjoint = compile(&config(
        "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", \"203.0.113.0/28\"]\n\
         [[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"198.51.100.0/24\"]\n",
    ))
    .unwrap();
    assert_eq!(
        (disjoint.v4.later_rules(), disjoint.v6.later_rules()),
        (0, 0)
    );
    // b's /26 lies in a's /24: a comes first there, so b needs its entries
    // found by a second lookup; a never does, and neither needs any for
    // IPv6.
    let nested = compile(&config(
        "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\"]\n\
         [[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"203.0.113.64/26\", \"198.51.100.0/24\", \"2001:db8::/32\"]\n",
    ))
    .unwrap();
    assert_eq!(
        (nested.v4.later_rules(), nested.v6.later_rules()),
        (0b10, 0)
    );
}

/// Three rules sharing one list need two entry-trie elements per prefix:
/// past the trie's capacity that is a clear error, before any map is touched.
#[test]
fn overlapping_rules_beyond_the_entry_tables_are_refused() {
    let shared: Vec<String> = (0..MAX_PREFIXES_PER_FAMILY / 2 + 1)
        .map(|n| format!("\"{}/32\"", Ipv4Addr::from(0x0a00_0000 + n)))
        .collect();
    let rules: String = ["a", "b", "c"]
        .iter()
        .map(|name| {
            format!(
                "[[rules]]\nname = \"{name}\"\nports = [\"443\"]\nsources = [{}]\n",
                shared.join(",")
            )
        })
        .collect();
    let config = config::tests::parse(&format!(
        "interfaces = [\"eth0\"]\n[[rules]]\nname = \"z\"\nports = [\"22\"]\nsources = [\"192.0.2.0/24\"]\n{rules}"
    ))
    .unwrap();
    let err = compile(&config).unwrap_err();
    assert_eq!(
        err,
        PolicyError::TooManyOverlaps {
            family: 4,
            count: 2 * shared.len(),
            max: MAX_PREFIXES_PER_FAMILY
        }
    );
    assert!(err.to_string().contains("merge those rules"), "{err}");
}

#[test]
fn rule_indexes_are_the_set_bits_in_order() {
    assert_eq!(rule_indexes(0).count(), 0);
    assert_eq!(
        rule_indexes(1 | 1 << 5 | 1 << 63).collect::<Vec<_>>(),
        [0, 5, 63]
    );
    assert_eq!(rule_indexes(RuleSet::MAX).count(), 64);
}
