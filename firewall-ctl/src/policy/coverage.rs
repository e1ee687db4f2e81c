//! `explain --feed NAME` and `explain --file PATH`: whether every address
//! of a list of ranges (what a vendor publishes, or what its support sent)
//! would be admitted on one port, which rule and entry admit each range,
//! and which parts are not admitted and why. Asked of the entries `list`
//! shows, with the decision function's rule: an address is admitted when a
//! rule exposing the port lists a prefix holding it, and credited to the
//! first such rule in config order, through its most specific entry.

use std::collections::BTreeMap;

use ipnet::{Ipv4Subnets, Ipv6Subnets};

use super::explain;
use crate::{
    api::{Admission, CoverageReport, EntryRef, RangeCoverage, mode_name},
    config::{Config, IpPrefix, PortRange, prefix::network_bits},
    entries::RuntimeEntries,
    feeds::FeedLists,
    text::escape_controls,
};

/// Ranges one request may check: what fits the control socket's request
/// size with IPv6 prefixes written out.
pub const MAX_RANGES: usize = 1_000;
/// Entries listed as admitting parts of one range, and parts of one range
/// listed as not admitted; the rest are counted.
pub const MAX_LISTED: usize = 8;

/// A prefix as its family, first address and length: the order entries
/// are searched in.
type Key = (bool, u128, u8);

fn key(prefix: &IpPrefix) -> Key {
    (prefix.is_v4(), prefix.bits().0, prefix.len())
}

/// The entries of the rules exposing one port, by prefix, each with the
/// config position of its rule.
struct Exposed {
    /// The rules exposing the port, in config order.
    rules: Vec<String>,
    entries: BTreeMap<Key, Vec<(usize, EntryRef)>>,
}

impl Exposed {
    fn new(config: &Config, runtime: &RuntimeEntries, feeds: &FeedLists, port: PortRange) -> Self {
        let rules: Vec<String> = explain::exposing_rules(config, port)
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut entries: BTreeMap<Key, Vec<(usize, EntryRef)>> = BTreeMap::new();
        for (index, rule) in rules.iter().enumerate() {
            for entry in explain::list(config, runtime, feeds, Some(rule.as_str())) {
                entries.entry(key(&entry.prefix)).or_default().push((
                    index,
                    EntryRef {
                        prefix: entry.prefix,
                        origin: entry.origin,
                    },
                ));
            }
        }
        Self { rules, entries }
    }

    /// The rule credited for every address of `range` and its most
    /// specific entry holding the whole range, if one does.
    fn holding(&self, range: &IpPrefix) -> Option<(usize, &EntryRef)> {
        let (v4, bits, len) = key(range);
        let width = if v4 { 32 } else { 128 };
        (0..=len)
            .filter_map(|shorter| {
                self.entries
                    .get(&(v4, network_bits(bits, shorter, width), shorter))
            })
            .flatten()
            .min_by(|(rule_a, a), (rule_b, b)| {
                rule_a
                    .cmp(rule_b)
                    .then(b.prefix.len().cmp(&a.prefix.len()))
                    .then(a.origin.cmp(&b.origin))
            })
            .map(|(rule, entry)| (*rule, entry))
    }

    /// The entries strictly inside `range`, by first address.
    fn inside<'a>(&'a self, range: &IpPrefix) -> impl Iterator<Item = (usize, &'a EntryRef)> + 'a {
        let (v4, first, len) = key(range);
        self.entries
            .range((v4, first, 0)..=(v4, range.last_bits(), u8::MAX))
            .filter(move |((_, _, entry_len), _)| *entry_len > len)
            .flat_map(|(_, listings)| listings.iter().map(|(rule, entry)| (*rule, entry)))
    }
}

/// The parts of `range` none of `admitted` (prefixes inside it, by first
/// address) holds, as prefixes.
fn gaps(range: &IpPrefix, admitted: &[&IpPrefix]) -> Vec<IpPrefix> {
    let mut gaps = Vec::new();
    let mut next = Some(range.bits().0);
    let mut add = |from: u128, to: u128| {
        gaps.extend(subnets(range.is_v4(), from, to));
    };
    for prefix in admitted {
        let Some(from) = next else { break };
        let start = prefix.bits().0;
        if start > from {
            add(from, start - 1);
        }
        let end = prefix.last_bits();
        if end >= from {
            next = end.checked_add(1).filter(|_| end < range.last_bits());
        }
    }
    if let Some(from) = next {
        add(from, range.last_bits());
    }
    gaps
}

/// The fewest prefixes of one family that make up `from..=to`.
fn subnets(v4: bool, from: u128, to: u128) -> Vec<IpPrefix> {
    if v4 {
        Ipv4Subnets::new((from as u32).into(), (to as u32).into(), 0)
            .map(|net| IpPrefix::V4 {
                address: net.network(),
                len: net.prefix_len(),
            })
            .collect()
    } else {
        Ipv6Subnets::new(from.into(), to.into(), 0)
            .map(|net| IpPrefix::V6 {
                address: net.network(),
                len: net.prefix_len(),
            })
            .collect()
    }
}

/// Whether every address of `ranges` would be admitted on `port` under the
/// entries of `config`, `runtime` and `feeds`; `feed` names the feed the
/// ranges are the list of, if any.
pub fn coverage(
    config: &Config,
    runtime: &RuntimeEntries,
    feeds: &FeedLists,
    ranges: &[IpPrefix],
    port: PortRange,
    feed: Option<&str>,
) -> CoverageReport {
    let exposed = Exposed::new(config, runtime, feeds, port);
    let ranges: Vec<RangeCoverage> = ranges
        .iter()
        .map(|range| range_coverage(&exposed, range, port))
        .collect();
    CoverageReport {
        port: port.to_string(),
        feed: feed.map(str::to_string),
        mode: mode_name(config.enforce),
        admitted: ranges.iter().filter(|range| range.admitted).count(),
        ranges,
    }
}

fn range_coverage(exposed: &Exposed, range: &IpPrefix, port: PortRange) -> RangeCoverage {
    let mut report = RangeCoverage {
        range: *range,
        admitted: true,
        rule: None,
        entry: None,
        parts: Vec::new(),
        more_parts: 0,
        not_admitted: Vec::new(),
        more_not_admitted: 0,
        why: None,
        fix: None,
    };
    if let Some((rule, entry)) = exposed.holding(range) {
        report.rule = Some(exposed.rules[rule].clone());
        report.entry = Some(entry.clone());
        return report;
    }
    let inside: Vec<(usize, &EntryRef)> = exposed.inside(range).collect();
    let prefixes: Vec<&IpPrefix> = inside.iter().map(|(_, entry)| &entry.prefix).collect();
    let not_admitted = gaps(range, &prefixes);
    let mut parts: Vec<Admission> = inside
        .iter()
        .map(|(rule, entry)| Admission {
            rule: exposed.rules[*rule].clone(),
            entry: (*entry).clone(),
        })
        .collect();
    parts.dedup_by(|a, b| a.entry.prefix == b.entry.prefix);
    report.more_parts = parts.len().saturating_sub(MAX_LISTED);
    parts.truncate(MAX_LISTED);
    report.parts = parts;
    if not_admitted.is_empty() {
        return report;
    }
    report.admitted = false;
    report.more_not_admitted = not_admitted.len().saturating_sub(MAX_LISTED);
    report.not_admitted = not_admitted.into_iter().take(MAX_LISTED).collect();
    match exposed.rules.first() {
        None => {
            report.why = Some(format!(
                "no rule exposes {port}; add it to the `ports` of the rule the vendor should reach"
            ));
        }
        Some(first) => {
            let rules: Vec<String> = exposed
                .rules
                .iter()
                .map(|rule| format!("`{}`", escape_controls(rule)))
                .collect();
            report.why = Some(format!(
                "not listed by {} (exposing {port})",
                rules.join(", ")
            ));
            let pieces: Vec<String> = report
                .not_admitted
                .iter()
                .map(ToString::to_string)
                .collect();
            report.fix = Some(format!(
                "firewall-ctl allow {} --rule {}",
                pieces.join(" "),
                escape_controls(first)
            ));
        }
    }
    report
}

/// Reads the ranges of `--file` (`lines` of its text, or the daemon's
/// request): one address or prefix a line; blank lines and `#` comments
/// skipped. An error names the line and says how to fix it.
pub fn parse_ranges<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    what: &str,
) -> Result<Vec<IpPrefix>, String> {
    let mut ranges = Vec::new();
    for (number, line) in lines.into_iter().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let range: IpPrefix = line
            .parse()
            .map_err(|err| format!("{what} line {}: {err}", number + 1))?;
        ranges.push(range);
    }
    if ranges.is_empty() {
        return Err(format!(
            "{what} lists no address or prefix; write one a line, e.g. `203.0.113.0/24`"
        ));
    }
    if ranges.len() > MAX_RANGES {
        return Err(format!(
            "{what} lists {} ranges; one check takes at most {MAX_RANGES}: split it",
            ranges.len()
        ));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse as parse_config;

    const CONFIG: &str = r#"
interfaces = ["lo"]

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/25", "203.0.113.128/26", "2001:db8:1::/48"]

[[rules]]
name = "office"
ports = ["tcp/443", "tcp/22"]
sources = ["198.51.100.0/24", "203.0.113.0/24"]
"#;

    fn check(ranges: &[&str], port: &str) -> CoverageReport {
        check_with(CONFIG, ranges, port)
    }

    fn check_with(config: &str, ranges: &[&str], port: &str) -> CoverageReport {
        let config = parse_config(config).unwrap();
        let ranges: Vec<IpPrefix> = ranges.iter().map(|text| text.parse().unwrap()).collect();
        coverage(
            &config,
            &RuntimeEntries::new(),
            &FeedLists::new(),
            &ranges,
            port.parse().unwrap(),
            None,
        )
    }

    fn texts(prefixes: &[IpPrefix]) -> Vec<String> {
        prefixes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_range_inside_an_entry_is_credited_to_the_first_rule_and_its_most_specific_entry() {
        let report = check(&["203.0.113.16/28", "198.51.100.7"], "tcp/443");
        assert_eq!(report.admitted, 2);
        let [vendor, office] = &report.ranges[..] else {
            panic!("{report:?}")
        };
        assert!(vendor.admitted && office.admitted);
        assert_eq!(vendor.rule.as_deref(), Some("vendor"));
        assert_eq!(
            vendor.entry.as_ref().unwrap().prefix.to_string(),
            "203.0.113.0/25"
        );
        assert_eq!(office.rule.as_deref(), Some("office"));
        assert!(vendor.not_admitted.is_empty() && vendor.why.is_none());
    }

    #[test]
    fn a_range_held_only_in_parts_names_the_parts_and_what_is_left() {
        // The vendor's /25 and /26 hold three quarters of 203.0.113.0/24;
        // on tcp/22 only the office exposes, and it holds none of the v6.
        let report = check(&["203.0.113.0/24"], "tcp/443");
        assert_eq!(report.admitted, 1, "the office's /24 holds it whole");
        let report = check(&["2001:db8::/47"], "tcp/443");
        let range = &report.ranges[0];
        assert!(!range.admitted);
        assert_eq!(
            range
                .parts
                .iter()
                .map(|part| (part.rule.as_str(), part.entry.prefix.to_string()))
                .collect::<Vec<_>>(),
            [("vendor", "2001:db8:1::/48".to_string())]
        );
        assert_eq!(texts(&range.not_admitted), ["2001:db8::/48"]);
        assert_eq!(
            range.why.as_deref(),
            Some("not listed by `vendor`, `office` (exposing tcp/443)")
        );
        assert_eq!(
            range.fix.as_deref(),
            Some("firewall-ctl allow 2001:db8::/48 --rule vendor")
        );
    }

    #[test]
    fn pieces_that_add_up_admit_the_whole_range() {
        let report = check(
            &["203.0.113.0/25", "203.0.113.128/26", "203.0.113.192/26"],
            "tcp/22",
        );
        assert_eq!(report.admitted, 3, "the office lists the /24");
        let report = check(&["203.0.113.128/25"], "tcp/443");
        assert!(report.ranges[0].admitted, "{report:?}");
        let without_office_24 = CONFIG.replace(
            "\"198.51.100.0/24\", \"203.0.113.0/24\"",
            "\"198.51.100.0/24\"",
        );
        let report = check_with(&without_office_24, &["203.0.113.0/24"], "tcp/443");
        let range = &report.ranges[0];
        assert!(!range.admitted);
        assert_eq!(range.parts.len(), 2);
        assert_eq!(texts(&range.not_admitted), ["203.0.113.192/26"]);
    }

    #[test]
    fn a_port_no_rule_exposes_admits_nothing_and_says_so() {
        let report = check(&["203.0.113.0/25"], "tcp/8443");
        assert_eq!(report.admitted, 0);
        let range = &report.ranges[0];
        assert_eq!(range.not_admitted, [range.range]);
        assert_eq!(
            range.why.as_deref(),
            Some(
                "no rule exposes tcp/8443; add it to the `ports` of the rule the vendor should reach"
            )
        );
        assert!(range.fix.is_none());
    }

    #[test]
    fn a_list_file_is_read_line_by_line_with_errors_naming_the_line() {
        let ranges = parse_ranges(
            "# from support\n203.0.113.7\n\n2001:db8::/32 # v6\n".lines(),
            "`f`",
        )
        .unwrap();
        assert_eq!(texts(&ranges), ["203.0.113.7/32", "2001:db8::/32"]);
        let err = parse_ranges("203.0.113.7\n203.0.113.5/24\n".lines(), "`f`").unwrap_err();
        assert!(
            err.starts_with("`f` line 2: `203.0.113.5/24` has host bits set"),
            "{err}"
        );
        assert!(
            parse_ranges("# nothing\n".lines(), "`f`")
                .unwrap_err()
                .contains("lists no address")
        );
        let long = "203.0.113.7\n".repeat(MAX_RANGES + 1);
        assert!(
            parse_ranges(long.lines(), "`f`")
                .unwrap_err()
                .contains("at most 1000")
        );
    }
}
