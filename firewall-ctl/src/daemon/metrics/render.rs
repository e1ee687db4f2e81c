//! The Prometheus text format of one scrape's [`Snapshot`].

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    api::{EntriesReport, FeedsReport, StatsReport},
    daemon::reads::ReadView,
};

/// What one scrape reports.
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

/// A label value, escaped as the text format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: its help, type and samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP firewall_ctl_{name} {help}");
        let _ = writeln!(self.out, "# TYPE firewall_ctl_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "firewall_ctl_{name} {value}");
        } else {
            let _ = writeln!(
                self.out,
                "firewall_ctl_{name}{{{}}} {value}",
                labels.join(",")
            );
        }
    }
}

/// The Prometheus text format of `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = Family { out: &mut out };
    let stats = &snapshot.stats;
    family.start("build_info", "gauge", "The running daemon's version.");
    family.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    family.start(
        "enforcing",
        "gauge",
        "1 in enforce mode, 0 in monitor mode.",
    );
    family.sample("enforcing", &[], u8::from(stats.mode == "enforce"));
    for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes")] {
        let name = format!("allowed_{unit}_total");
        family.start(
            &name,
            "counter",
            &format!("{help} allowed, by the rule credited."),
        );
        for rule in &stats.rules {
            let value = if unit == "packets" {
                rule.packets
            } else {
                rule.bytes
            };
            family.sample(&name, &[("rule", &rule.name)], value);
        }
    }
    for (verdict, packets, bytes) in [
        ("dropped", &stats.drops, &stats.drop_bytes),
        ("passed", &stats.passed, &stats.passed_bytes),
    ] {
        for (unit, counts) in [("packets", packets), ("bytes", bytes)] {
            let name = format!("{verdict}_{unit}_total");
            let what = if verdict == "dropped" {
                "dropped (in monitor mode: that would be dropped)"
            } else {
                "passed"
            };
            family.start(&name, "counter", &format!("{unit} {what}, by reason."));
            for (reason, value) in counts {
                family.sample(&name, &[("reason", reason)], value);
            }
        }
    }
    family.start(
        "entries",
        "gauge",
        "Allowlist entries, by rule and origin (config, cli, feed:NAME).",
    );
    for ((rule, origin), count) in &snapshot.entries {
        family.sample("entries", &[("rule", rule), ("origin", origin)], count);
    }
    if let Some(usage) = &snapshot.entry_usage {
        render_entries(&mut family, usage);
    }
    family.start(
        "reloads_total",
        "counter",
        "Config reloads applied since the daemon started.",
    );
    family.sample("reloads_total", &[], snapshot.reloads);
    family.start(
        "reloads_rejected_total",
        "counter",
        "Config reloads rejected since the daemon started.",
    );
    family.sample("reloads_rejected_total", &[], snapshot.reloads_rejected);
    if let Some(flows) = &stats.flows {
        family.start(
            "flows",
            "gauge",
            "Tracked flows of the host's own connections, by protocol.",
        );
        for (protocol, count) in [("tcp", flows.tcp), ("udp", flows.udp), ("icmp", flows.icmp)] {
            family.sample("flows", &[("protocol", protocol)], count);
        }
        family.start(
            "flow_table_capacity",
            "gauge",
            "Size of the flow table (max_flows).",
        );
        family.sample("flow_table_capacity", &[], flows.capacity);
        family.start(
            "flows_created_total",
            "counter",
            "Flows the egress program created.",
        );
        family.sample("flows_created_total", &[], flows.created);
        family.start(
            "flow_evictions_total",
            "counter",
            "Flows the full table evicted.",
        );
        family.sample("flow_evictions_total", &[], flows.evicted);
    }
    let feeds = &snapshot.feeds.feeds;
    if !feeds.is_empty() {
        family.start(
            "feed_prefixes",
            "gauge",
            "Prefixes of each feed's list in force, by family.",
        );
        for feed in feeds {
            family.sample(
                "feed_prefixes",
                &[("feed", &feed.name), ("family", "ipv4")],
                feed.prefixes_v4,
            );
            family.sample(
                "feed_prefixes",
                &[("feed", &feed.name), ("family", "ipv6")],
                feed.prefixes_v6,
            );
        }
        family.start(
            "feed_age_seconds",
            "gauge",
            "Age of each feed's data in force (absent: none yet).",
        );
        for feed in feeds {
            if let Some(age) = feed.age_seconds {
                family.sample("feed_age_seconds", &[("feed", &feed.name)], age);
            }
        }
        family.start(
            "feed_last_success_timestamp_seconds",
            "gauge",
            "When each feed last updated or confirmed its list (Unix time).",
        );
        for feed in feeds {
            if let Some(at) = feed.last_success {
                let seconds =
                    at.0.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |since| since.as_secs());
                family.sample(
                    "feed_last_success_timestamp_seconds",
                    &[("feed", &feed.name)],
                    seconds,
                );
            }
        }
        family.start(
            "feed_stale",
            "gauge",
            "1 when a feed's data is older than its max_age, or missing.",
        );
        for feed in feeds {
            family.sample("feed_stale", &[("feed", &feed.name)], u8::from(feed.stale));
        }
        family.start(
            "feed_failing",
            "gauge",
            "1 when a feed's last update failed.",
        );
        for feed in feeds {
            family.sample(
                "feed_failing",
                &[("feed", &feed.name)],
                u8::from(feed.last_error.is_some()),
            );
        }
    }
    out
}

/// Per-entry families (`per_entry = true`): one series per rule and prefix.
fn render_entries(family: &mut Family<'_>, usage: &EntriesReport) {
    let counted = || usage.entries.iter().filter(|entry| entry.counted);
    for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes")] {
        let name = format!("entry_{unit}_total");
        family.start(
            &name,
            "counter",
            &format!("{help} admitted, by the entry credited (the admitting rule's most specific prefix)."),
        );
        for entry in counted() {
            let prefix = entry.prefix.to_string();
            let value = if unit == "packets" {
                entry.packets
            } else {
                entry.bytes
            };
            family.sample(&name, &[("rule", &entry.rule), ("prefix", &prefix)], value);
        }
    }
    family.start(
        "entry_last_seen_timestamp_seconds",
        "gauge",
        "When each entry last admitted a packet (Unix time; absent: never).",
    );
    for entry in counted() {
        if let Some(last) = entry.last_seen {
            let prefix = entry.prefix.to_string();
            let seconds = last
                .0
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            family.sample(
                "entry_last_seen_timestamp_seconds",
                &[("rule", &entry.rule), ("prefix", &prefix)],
                seconds,
            );
        }
    }
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
    fn the_text_format_has_help_type_and_escaped_labels() {
        let text = render(&snapshot());
        assert!(text.contains(
            "# TYPE firewall_ctl_allowed_packets_total counter\nfirewall_ctl_allowed_packets_total{rule=\"vendor\"} 3\n"
        ));
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
        let text = render(&snapshot);
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.split_whitespace().next())
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
            assert!(
                exported.contains(name.as_str()),
                "the dashboard queries {name}"
            );
        }
    }
}
