//! The OpenMetrics text of one scrape's [`Snapshot`] (what Prometheus
//! scrapes), encoded by the `prometheus-client` crate: one collector that
//! writes the snapshot's values as constant metrics, so a scrape keeps no
//! state between scrapes and no counter of its own.

use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    api::{EntriesReport, FeedsReport, StatsReport},
    daemon::reads::ReadView,
};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one scrape reports.
#[derive(Debug)]
pub struct Snapshot {
    pub stats: StatsReport,
    pub feeds: FeedsReport,
    /// `(rule, origin) -> entries`, origin `config`, `cli` or `feed:NAME`.
    pub entries: BTreeMap<(String, String), usize>,
    /// Per-entry counters, with `per_entry = true` (built by the scrape
    /// from the writer's [`ReadView`], beside the writer).
    pub entry_usage: Option<EntriesReport>,
    pub reloads: u64,
    pub reloads_rejected: u64,
}

/// What the writer answers a scrape with: the snapshot, and with
/// `per_entry = true` the state to build the per-entry counters from.
pub type WriterSnapshot = anyhow::Result<(Snapshot, Option<ReadView>)>;

/// A sample's labels: name and value.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A counter sample (its name gets `_total`).
fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

/// A gauge sample.
fn gauge(value: impl TryInto<i64>) -> ConstGauge<i64> {
    ConstGauge::new(value.try_into().unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch of `at`.
fn unix_seconds(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Writes one metric family: its name (after the registry's prefix), help
/// and type, then a sample per label set.
fn family<'a, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("firewall_ctl");
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    // Writing into a `String` does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = &self.stats;
        let encoder = &mut encoder;
        family(
            encoder,
            "build_info",
            "The running daemon's version.",
            [(vec![("version", env!("CARGO_PKG_VERSION"))], gauge(1))],
        )?;
        family(
            encoder,
            "enforcing",
            "1 in enforce mode, 0 in monitor mode.",
            [(vec![], gauge(u8::from(stats.mode == "enforce")))],
        )?;
        for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes")] {
            family(
                encoder,
                &format!("allowed_{unit}"),
                &format!("{help} allowed, by the rule credited."),
                stats.rules.iter().map(|rule| {
                    let value = if unit == "packets" {
                        rule.packets
                    } else {
                        rule.bytes
                    };
                    (vec![("rule", rule.name.as_str())], counter(value))
                }),
            )?;
        }
        for (verdict, packets, bytes) in [
            ("dropped", &stats.drops, &stats.drop_bytes),
            ("passed", &stats.passed, &stats.passed_bytes),
        ] {
            let what = if verdict == "dropped" {
                "dropped (in monitor mode: that would be dropped)"
            } else {
                "passed"
            };
            for (unit, counts) in [("packets", packets), ("bytes", bytes)] {
                family(
                    encoder,
                    &format!("{verdict}_{unit}"),
                    &format!("{unit} {what}, by reason."),
                    counts.iter().map(|(reason, value)| {
                        (vec![("reason", reason.as_str())], counter(*value))
                    }),
                )?;
            }
        }
        family(
            encoder,
            "entries",
            "Allowlist entries, by rule and origin (config, cli, feed:NAME).",
            self.entries.iter().map(|((rule, origin), count)| {
                (
                    vec![("rule", rule.as_str()), ("origin", origin.as_str())],
                    gauge(*count),
                )
            }),
        )?;
        if let Some(usage) = &self.entry_usage {
            encode_entries(encoder, usage)?;
        }
        family(
            encoder,
            "reloads",
            "Config reloads applied since the daemon started.",
            [(vec![], counter(self.reloads))],
        )?;
        family(
            encoder,
            "reloads_rejected",
            "Config reloads rejected since the daemon started.",
            [(vec![], counter(self.reloads_rejected))],
        )?;
        if let Some(flows) = &stats.flows {
            family(
                encoder,
                "flows",
                "Tracked flows of the host's own connections, by protocol.",
                [("tcp", flows.tcp), ("udp", flows.udp), ("icmp", flows.icmp)]
                    .map(|(protocol, count)| (vec![("protocol", protocol)], gauge(count))),
            )?;
            family(
                encoder,
                "flow_table_capacity",
                "Size of the flow table (max_flows).",
                [(vec![], gauge(flows.capacity))],
            )?;
            family(
                encoder,
                "flows_created",
                "Flows the egress program created.",
                [(vec![], counter(flows.created))],
            )?;
            family(
                encoder,
                "flow_evictions",
                "Flows the full table evicted.",
                [(vec![], counter(flows.evicted))],
            )?;
        }
        encode_feeds(encoder, &self.feeds)
    }
}

/// The feeds' families, if the config has feeds.
fn encode_feeds(encoder: &mut DescriptorEncoder, feeds: &FeedsReport) -> fmt::Result {
    let feeds = &feeds.feeds;
    if feeds.is_empty() {
        return Ok(());
    }
    family(
        encoder,
        "feed_prefixes",
        "Prefixes of each feed's list in force, by family.",
        feeds.iter().flat_map(|feed| {
            [("ipv4", feed.prefixes_v4), ("ipv6", feed.prefixes_v6)].map(|(family, count)| {
                (
                    vec![("feed", feed.name.as_str()), ("family", family)],
                    gauge(count),
                )
            })
        }),
    )?;
    let each = |value: fn(&crate::api::FeedStatus) -> Option<i64>| {
        feeds
            .iter()
            .filter_map(move |feed| Some((vec![("feed", feed.name.as_str())], gauge(value(feed)?))))
    };
    family(
        encoder,
        "feed_age_seconds",
        "Age of each feed's data in force (absent: none yet).",
        each(|feed| feed.age_seconds.map(|age| age as i64)),
    )?;
    family(
        encoder,
        "feed_last_success_timestamp_seconds",
        "When each feed last updated or confirmed its list (Unix time).",
        each(|feed| feed.last_success.map(|at| unix_seconds(at.0) as i64)),
    )?;
    family(
        encoder,
        "feed_stale",
        "1 when a feed's data is older than its max_age, or missing.",
        each(|feed| Some(i64::from(feed.stale))),
    )?;
    family(
        encoder,
        "feed_failing",
        "1 when a feed's last update failed.",
        each(|feed| Some(i64::from(feed.last_error.is_some()))),
    )
}

/// Per-entry families (`per_entry = true`): one series per rule and prefix.
fn encode_entries(encoder: &mut DescriptorEncoder, usage: &EntriesReport) -> fmt::Result {
    let counted: Vec<_> = usage
        .entries
        .iter()
        .filter(|entry| entry.counted)
        .map(|entry| (entry, entry.prefix.to_string()))
        .collect();
    for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes")] {
        family(
            encoder,
            &format!("entry_{unit}"),
            &format!(
                "{help} admitted, by the entry credited (the admitting rule's most specific prefix)."
            ),
            counted.iter().map(|(entry, prefix)| {
                let value = if unit == "packets" {
                    entry.packets
                } else {
                    entry.bytes
                };
                (
                    vec![("rule", entry.rule.as_str()), ("prefix", prefix.as_str())],
                    counter(value),
                )
            }),
        )?;
    }
    family(
        encoder,
        "entry_last_seen_timestamp_seconds",
        "When each entry last admitted a packet (Unix time; absent: never).",
        counted.iter().filter_map(|(entry, prefix)| {
            let last = entry.last_seen?;
            Some((
                vec![("rule", entry.rule.as_str()), ("prefix", prefix.as_str())],
                gauge(unix_seconds(last.0)),
            ))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FeedStatus, RuleStats};

    fn snapshot() -> Snapshot {
        Snapshot {
            stats: StatsReport {
                mode: "monitor".to_string(),
                rules: vec![RuleStats {
                    name: "vendor".to_string(),
                    packets: 3,
                    bytes: 180,
                }],
                drops: [("port_closed".to_string(), 2)].into(),
                drop_bytes: [("port_closed".to_string(), 120)].into(),
                passed: BTreeMap::new(),
                passed_bytes: BTreeMap::new(),
                flows: None,
            },
            feeds: FeedsReport {
                feeds: vec![FeedStatus {
                    name: "a\"b".to_string(),
                    source: "https://x.example/".to_string(),
                    format: "plain".to_string(),
                    prefixes_v4: 1,
                    prefixes_v6: 0,
                    last_attempt: None,
                    last_success: None,
                    data_time: None,
                    age_seconds: None,
                    next_attempt: None,
                    last_error: Some("down".to_string()),
                    stale: true,
                }],
            },
            entries: [(("vendor".to_string(), "cli".to_string()), 4)].into(),
            entry_usage: None,
            reloads: 1,
            reloads_rejected: 0,
        }
    }

    #[test]
    fn the_text_is_openmetrics_with_help_type_and_escaped_labels() {
        let text = render(snapshot());
        assert!(
            text.contains(
                "# HELP firewall_ctl_allowed_packets Packets allowed, by the rule credited.\n\
             # TYPE firewall_ctl_allowed_packets counter\n\
             firewall_ctl_allowed_packets_total{rule=\"vendor\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert!(text.contains("firewall_ctl_reloads_total 1\n"));
        assert!(text.contains("firewall_ctl_build_info{version=\""));
        assert!(text.contains("firewall_ctl_dropped_bytes_total{reason=\"port_closed\"} 120\n"));
        assert!(text.contains("firewall_ctl_enforcing 0\n"));
        assert!(text.contains("firewall_ctl_entries{rule=\"vendor\",origin=\"cli\"} 4\n"));
        assert!(text.contains("firewall_ctl_feed_stale{feed=\"a\\\"b\"} 1\n"));
        assert!(text.contains("firewall_ctl_feed_failing{feed=\"a\\\"b\"} 1\n"));
        assert!(!text.contains("feed_age_seconds{"), "no age without data");
        assert!(!text.contains("flows{"), "no flow metrics without tracking");
    }

    /// Every metric the shipped Grafana dashboard queries is one the
    /// daemon exports (every family present: tracking on, a feed).
    #[test]
    fn the_grafana_dashboard_uses_exported_metrics_only() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/grafana-dashboard.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut snapshot = snapshot();
        snapshot.stats.flows = Some(crate::api::FlowTable::default());
        snapshot.feeds.feeds[0].age_seconds = Some(5);
        snapshot.feeds.feeds[0].last_success = Some(crate::entries::Timestamp::now());
        let text = render(snapshot);
        // A counter's samples are named after its family with `_total`.
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|line| {
                let mut family = line.strip_prefix("# TYPE ")?.split_whitespace();
                let name = family.next()?;
                Some(match family.next()? {
                    "counter" => format!("{name}_total"),
                    _ => name.to_string(),
                })
            })
            .collect();
        let mut used = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let mut rest = target["expr"].as_str().unwrap();
                while let Some(at) = rest.find("firewall_ctl_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    used.push(name);
                }
            }
        }
        assert!(used.len() > 10, "{used:?}");
        for name in &used {
            assert!(exported.contains(name), "the dashboard queries {name}");
        }
    }
}
