//! What each allowlisted entry admitted: the daemon joins the listed
//! entries with their counters ([`entries_report`]); the CLI sorts them
//! (`stats --entries`) or flags stale ones for an auditor (`audit report`).
//! Pure: no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    api::{EntriesReport, EntryStats, ListedEntry},
    datapath::EntryUsage,
    entries::{Origin, Timestamp},
};

/// One row per entry (rule + prefix), in the order of `listings` (each an
/// entry's listings by every origin, as `explain::listings` gives them),
/// with its counters from `usage`. `wall_clock` turns the kernel's
/// `CLOCK_MONOTONIC` nanoseconds into times. Rows come one at a time: a
/// report of half a million entries is written as it is made.
pub fn entry_rows(
    listings: impl IntoIterator<Item = Vec<ListedEntry>>,
    mut usage: Vec<EntryUsage>,
    wall_clock: impl Fn(u64) -> Timestamp,
) -> impl Iterator<Item = EntryStats> {
    // Sorted and searched, not hashed: at half a million entries a map
    // of them took 50-80 MB more.
    usage.sort_unstable_by(|one, other| one.entry.cmp(&other.entry));
    listings.into_iter().filter_map(move |listed| {
        let first = listed.first()?;
        let counter = usage
            .binary_search_by(|usage| {
                (usage.entry.rule.as_str(), usage.entry.prefix).cmp(&(&first.rule, first.prefix))
            })
            .ok()
            .and_then(|at| usage[at].counter);
        let seen = |ns: u64| (ns != 0).then(|| wall_clock(ns));
        let mut row = EntryStats {
            rule: first.rule.clone(),
            prefix: first.prefix,
            origins: Vec::with_capacity(listed.len()),
            comment: None,
            added_by: None,
            added_at: None,
            expires_at: None,
            counted: counter.is_some(),
            packets: counter.map_or(0, |counter| counter.packets),
            bytes: counter.map_or(0, |counter| counter.bytes),
            first_seen: counter.and_then(|counter| seen(counter.first_seen)),
            last_seen: counter.and_then(|counter| seen(counter.last_seen)),
            counting_since: counter.and_then(|counter| seen(counter.listed_at)),
        };
        for entry in listed {
            merge_origin(&mut row, entry);
        }
        Some(row)
    })
}

/// The report of `rows`, made at `generated_at`.
pub fn entries_report(
    rows: impl Iterator<Item = EntryStats>,
    generated_at: Timestamp,
) -> EntriesReport {
    let entries: Vec<EntryStats> = rows.collect();
    EntriesReport {
        generated_at,
        counting_since: entries.iter().filter_map(|row| row.counting_since).min(),
        entries,
    }
}

/// Adds `entry`'s origin (and, for a CLI entry, who added it and why) to `row`.
fn merge_origin(row: &mut EntryStats, entry: ListedEntry) {
    if entry.origin == Origin::Cli {
        row.comment = entry.comment;
        row.added_by = entry.added_by;
        row.added_at = entry.added_at;
        row.expires_at = entry.expires_at;
    }
    row.origins.push(entry.origin);
}

/// The order of `stats --entries --sort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EntrySort {
    /// Most packets first.
    Hits,
    /// Most recently used first; never used last.
    LastSeen,
}

/// Sorts `report`'s entries (stable: ties keep rule order) and keeps the
/// first `top`.
pub fn sort_and_top(report: &mut EntriesReport, sort: Option<EntrySort>, top: Option<usize>) {
    match sort.or(top.map(|_| EntrySort::Hits)) {
        Some(EntrySort::Hits) => report
            .entries
            .sort_by_key(|entry| std::cmp::Reverse(entry.packets)),
        Some(EntrySort::LastSeen) => report
            .entries
            .sort_by_key(|entry| std::cmp::Reverse(entry.last_seen)),
        None => {}
    }
    if let Some(top) = top {
        report.entries.truncate(top);
    }
}

/// `firewall-ctl audit report --format json`: every entry and its use over
/// the period the counters cover, stale entries flagged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub generated_at: Timestamp,
    /// Start of the period covered: the oldest entry's counters count since.
    pub counting_since: Option<Timestamp>,
    /// `--stale`: entries unused for this long are stale (`null`: only
    /// entries never used).
    pub stale_after: Option<String>,
    pub entries_total: usize,
    pub entries_stale: usize,
    pub entries: Vec<AuditEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(flatten)]
    pub stats: EntryStats,
    /// Counted, and no packet ever matched it.
    pub never_hit: bool,
    /// Never hit, or last hit before `generated_at - stale_after`.
    pub stale: bool,
}

/// Flags the entries of `report` that were never hit, or not within `stale`
/// (a window reaching before the Unix epoch flags only never-hit entries).
pub fn audit_report(report: EntriesReport, stale: Option<Duration>) -> AuditReport {
    let cutoff = stale.and_then(|window| report.generated_at.0.checked_sub(window));
    let entries: Vec<AuditEntry> = report
        .entries
        .into_iter()
        .map(|stats| {
            let never_hit = stats.counted && stats.packets == 0;
            let quiet = match (cutoff, stats.last_seen) {
                (Some(cutoff), Some(last)) => last.0 < cutoff,
                _ => false,
            };
            AuditEntry {
                never_hit,
                stale: never_hit || quiet,
                stats,
            }
        })
        .collect();
    AuditReport {
        generated_at: report.generated_at,
        counting_since: report.counting_since,
        stale_after: stale.map(|window| humantime::format_duration(window).to_string()),
        entries_total: entries.len(),
        entries_stale: entries.iter().filter(|entry| entry.stale).count(),
        entries,
    }
}

/// Column names of the CSV audit report.
pub const CSV_HEADERS: [&str; 15] = [
    "rule",
    "prefix",
    "origins",
    "comment",
    "added_by",
    "added_at",
    "expires_at",
    "counted",
    "packets",
    "bytes",
    "first_seen",
    "last_seen",
    "counting_since",
    "never_hit",
    "stale",
];

/// The audit report as CSV (RFC 4180), one row per entry; times are
/// RFC 3339 UTC, missing values empty, origins joined with `+`.
pub fn audit_csv(report: &AuditReport) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADERS)?;
    let text = |value: Option<String>| value.unwrap_or_default();
    for entry in &report.entries {
        let stats = &entry.stats;
        writer.write_record([
            stats.rule.clone(),
            stats.prefix.to_string(),
            origins(&stats.origins),
            text(stats.comment.clone()),
            text(stats.added_by.as_ref().map(ToString::to_string)),
            text(stats.added_at.map(|time| time.to_string())),
            text(stats.expires_at.map(|time| time.to_string())),
            stats.counted.to_string(),
            stats.packets.to_string(),
            stats.bytes.to_string(),
            text(stats.first_seen.map(|time| time.to_string())),
            text(stats.last_seen.map(|time| time.to_string())),
            text(stats.counting_since.map(|time| time.to_string())),
            entry.never_hit.to_string(),
            entry.stale.to_string(),
        ])?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|err| csv::Error::from(err.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Origins as one cell: `config+feed:aws`.
pub fn origins(origins: &[Origin]) -> String {
    origins
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use firewall_common::maps::EntryCounter;

    use super::*;
    use crate::datapath::entry_counters::EntryId;

    const SECOND: u64 = 1_000_000_000;

    fn at(seconds: u64) -> Timestamp {
        Timestamp(UNIX_EPOCH + Duration::from_secs(seconds))
    }

    fn listed(rule: &str, prefix: &str, origin: Origin) -> ListedEntry {
        ListedEntry {
            rule: rule.to_string(),
            prefix: prefix.parse().unwrap(),
            origin,
            comment: None,
            added_by: None,
            added_at: None,
            expires_at: None,
        }
    }

    fn used(rule: &str, prefix: &str, packets: u64, last: u64) -> EntryUsage {
        EntryUsage {
            entry: EntryId {
                rule: rule.to_string(),
                prefix: prefix.parse().unwrap(),
            },
            counter: Some(EntryCounter {
                packets,
                bytes: packets * 60,
                first_seen: if packets > 0 { SECOND } else { 0 },
                last_seen: last * SECOND,
                listed_at: SECOND / 2,
            }),
        }
    }

    /// Monotonic seconds map to Unix seconds 1000 later.
    fn report_of(listings: Vec<Vec<ListedEntry>>, usage: Vec<EntryUsage>) -> EntriesReport {
        entries_report(
            entry_rows(listings, usage, |ns| at(1000 + ns / SECOND)),
            at(2000),
        )
    }

    fn report() -> EntriesReport {
        report_of(
            vec![
                vec![
                    listed("vendor", "203.0.113.0/24", Origin::Config),
                    listed("vendor", "203.0.113.0/24", Origin::Feed("aws".into())),
                ],
                vec![listed(
                    "vendor",
                    "198.51.100.0/24",
                    Origin::Feed("aws".into()),
                )],
                vec![listed("office", "192.0.2.0/24", Origin::Cli)],
            ],
            vec![
                used("vendor", "203.0.113.0/24", 10, 50),
                used("vendor", "198.51.100.0/24", 0, 0),
                used("office", "192.0.2.0/24", 3, 900),
            ],
        )
    }

    #[test]
    fn one_row_per_entry_with_every_origin_and_its_counters() {
        let report = report();
        assert_eq!(report.entries.len(), 3);
        let vendor = &report.entries[0];
        assert_eq!(origins(&vendor.origins), "config+feed:aws");
        assert_eq!(
            (vendor.packets, vendor.bytes, vendor.last_seen),
            (10, 600, Some(at(1050)))
        );
        assert_eq!(report.entries[1].first_seen, None);
        assert_eq!(report.counting_since, Some(at(1000)));
    }

    #[test]
    fn the_same_prefix_in_two_rules_is_two_rows() {
        let report = report_of(
            vec![
                vec![listed("vendor", "203.0.113.0/24", Origin::Config)],
                vec![
                    listed("office", "203.0.113.0/24", Origin::Config),
                    listed("office", "203.0.113.0/24", Origin::Cli),
                ],
            ],
            vec![
                used("vendor", "203.0.113.0/24", 10, 50),
                used("office", "203.0.113.0/24", 3, 900),
            ],
        );
        let rows: Vec<(&str, String, u64)> = report
            .entries
            .iter()
            .map(|row| (row.rule.as_str(), origins(&row.origins), row.packets))
            .collect();
        assert_eq!(
            rows,
            [
                ("vendor", "config".to_string(), 10),
                ("office", "config+cli".to_string(), 3)
            ]
        );
    }

    #[test]
    fn sorting_by_hits_or_last_seen_and_top() {
        let mut by_hits = report();
        sort_and_top(&mut by_hits, None, Some(2));
        let prefixes: Vec<String> = by_hits
            .entries
            .iter()
            .map(|entry| entry.prefix.to_string())
            .collect();
        assert_eq!(prefixes, ["203.0.113.0/24", "192.0.2.0/24"]);
        let mut recent = report();
        sort_and_top(&mut recent, Some(EntrySort::LastSeen), None);
        assert_eq!(recent.entries[0].prefix.to_string(), "192.0.2.0/24");
        assert_eq!(recent.entries[2].prefix.to_string(), "198.51.100.0/24");
    }

    #[test]
    fn stale_entries_are_flagged_and_the_csv_parses() {
        // Generated at 2000: office was last hit at 1900, vendor at 1050.
        let audit = audit_report(report(), Some(Duration::from_secs(500)));
        let stale: Vec<(bool, bool)> = audit
            .entries
            .iter()
            .map(|entry| (entry.never_hit, entry.stale))
            .collect();
        assert_eq!(stale, [(false, true), (true, true), (false, false)]);
        assert_eq!(audit.entries_stale, 2);
        let never_only = audit_report(report(), None);
        assert_eq!(never_only.entries_stale, 1);

        let csv = audit_csv(&audit).unwrap();
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        assert_eq!(reader.headers().unwrap(), CSV_HEADERS.as_slice());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][2], "config+feed:aws");
        assert_eq!(&rows[0][8], "10");
        assert_eq!(&rows[1][10], "");
        assert_eq!(&rows[1][14], "true");
    }
}
