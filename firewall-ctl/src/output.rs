//! Human-readable tables; `--json` output is the API reports themselves.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};

use firewall_common::reasons::Reason;

use crate::{
    api::{
        AuditLogReport, AuditRecord, BlockedReport, BlockedSource, ChangeReport, CoverageReport,
        EntriesReport, EntryRef, EntryStats, ExplainReport, FeedsReport, FlowTable, InterfaceState,
        ListReport, ReloadReport, StatsReport, StatusReport,
    },
    check::CheckReport,
    entries::Timestamp,
    text::{escape_controls, truncated},
};

/// Left-aligns the first column and right-aligns the rest (numbers).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    aligned_table(headers, rows, false)
}

/// Every column left-aligned: for text columns.
pub fn text_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    aligned_table(headers, rows, true)
}

/// Widest cell shown, in bytes of escaped text: text a client or a feed
/// chose is cut there, with a marker (`--json` has it whole).
const MAX_CELL_BYTES: usize = 300;

fn aligned_table(headers: &[&str], rows: &[Vec<String>], all_left: bool) -> String {
    // Cells hold operator input (comments, names): never let it drive the
    // terminal, nor make a row wider than a screen can scroll.
    let rows = rows.iter().map(|row| {
        row.iter()
            .map(|cell| truncated(&escape_controls(cell), MAX_CELL_BYTES).into_owned())
            .collect::<Vec<_>>()
    });
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied())
        .add_rows(rows);
    // Columns two spaces apart, none before the first.
    let last = headers.len().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if index == last { 0 } else { 2 }));
        if index > 0 && !all_left {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
        .lines()
        .map(|line| line.trim_end().to_string() + "\n")
        .collect()
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

pub fn status(report: &StatusReport) -> String {
    let interfaces: Vec<String> = report
        .interfaces
        .iter()
        .map(|interface| match interface.state {
            InterfaceState::Protected => {
                format!("{} ({})", interface.name, or_dash(interface.xdp_mode))
            }
            InterfaceState::Unprotected => {
                format!("{} (UNPROTECTED, re-attaching)", interface.name)
            }
            InterfaceState::Missing => {
                format!("{} (MISSING, attached when it appears)", interface.name)
            }
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "daemon      running, pid {}, up {}s, version {}",
        report.pid, report.uptime_seconds, report.daemon_version
    );
    let _ = writeln!(out, "config      {}", report.config.display());
    let _ = writeln!(out, "mode        {}", report.mode);
    let _ = writeln!(out, "interfaces  {}", interfaces.join(", "));
    let _ = writeln!(
        out,
        "policy      {} rules, {} IPv4 prefixes, {} IPv6 prefixes, {} ports; applied {}; {} reloads, {} rejected",
        report.rules,
        report.prefixes_v4,
        report.prefixes_v6,
        report.ports,
        unix_time(report.policy_applied_at),
        report.reloads,
        report.reloads_rejected
    );
    let _ = writeln!(
        out,
        "runtime     {} entries added with `allow`; next expiry {}; state in {}",
        report.runtime_entries,
        or_dash(report.next_expiry),
        report.state_dir.display()
    );
    let _ = writeln!(out, "flows       {}", flow_table(report.flows.as_ref()));
    if !report.feeds_stale.is_empty() || !report.feeds_failing.is_empty() {
        let _ = writeln!(
            out,
            "feeds       STALE: {}; FAILING: {} (`firewall-ctl feeds` says why)",
            or_dash_list(&report.feeds_stale),
            or_dash_list(&report.feeds_failing)
        );
    }
    if let Some(at) = report.rollback_at {
        let _ = writeln!(
            out,
            "pending     a reload rolls back at {at} unless `firewall-ctl confirm` comes first"
        );
    }
    if report.reload_in_progress {
        let _ = writeln!(
            out,
            "reload      in progress; the policy above stays live until it is applied"
        );
    }
    if let Some(error) = &report.last_reload_error {
        let _ = writeln!(
            out,
            "last reload REJECTED, running policy kept: {}",
            crate::text::escape_controls_in_lines(error)
        );
    }
    out
}

/// Names joined, or `-` for none.
fn or_dash_list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_string()
    } else {
        escape_controls(&names.join(", "))
    }
}

/// One line on the flow table: live flows by protocol, size, evictions.
fn flow_table(flows: Option<&FlowTable>) -> String {
    match flows {
        None => "not tracked (`track_outbound = false`)".to_string(),
        Some(flows) => format!(
            "{} tracked (tcp {}, udp {}, icmp {}) of {}; {} evicted",
            flows.tcp + flows.udp + flows.icmp,
            flows.tcp,
            flows.udp,
            flows.icmp,
            flows.capacity,
            flows.evicted
        ),
    }
}

pub fn change(report: &ChangeReport) -> String {
    let mut out = String::new();
    for change in &report.changes {
        let rule = escape_controls(&change.rule);
        let expiry = change
            .expires_at
            .map_or(String::new(), |at| format!(", expires {at}"));
        let _ = match change.change {
            crate::api::EntryChangeKind::Added => {
                writeln!(out, "added {} to rule `{rule}`{expiry}", change.prefix)
            }
            crate::api::EntryChangeKind::Updated => writeln!(
                out,
                "{} was already in rule `{rule}`; updated its comment or expiry{expiry}",
                change.prefix
            ),
            crate::api::EntryChangeKind::Unchanged => writeln!(
                out,
                "{} is already in rule `{rule}`; nothing changed{expiry}",
                change.prefix
            ),
            crate::api::EntryChangeKind::InConfig => writeln!(
                out,
                "{} is already in rule `{rule}` from the config file; nothing changed",
                change.prefix
            ),
            crate::api::EntryChangeKind::Removed => {
                writeln!(out, "removed {} from rule `{rule}`", change.prefix)
            }
        };
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {}", escape_controls(warning));
    }
    out
}

pub fn list(report: &ListReport) -> String {
    let rows: Vec<Vec<String>> = report
        .entries
        .iter()
        .map(|entry| {
            vec![
                entry.rule.clone(),
                entry.prefix.to_string(),
                entry.origin.to_string(),
                or_dash(entry.comment.as_ref()),
                or_dash(entry.added_by.as_ref()),
                or_dash(entry.added_at),
                or_dash(entry.expires_at),
            ]
        })
        .collect();
    text_table(
        &[
            "RULE", "PREFIX", "ORIGIN", "COMMENT", "ADDED BY", "ADDED AT", "EXPIRES",
        ],
        &rows,
    )
}

pub fn reload(report: &ReloadReport) -> String {
    let mut out = format!(
        "config reloaded: {} rules, {} IPv4 prefixes, {} IPv6 prefixes, {} ports; {} map entries changed\n",
        report.rules,
        report.prefixes_v4,
        report.prefixes_v6,
        report.ports,
        report.changed_map_entries
    );
    if let Some(at) = report.rollback_at {
        let _ = writeln!(
            out,
            "it rolls back to the previous config at {at} unless you run `firewall-ctl confirm` before"
        );
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {}", escape_controls(warning));
    }
    out
}

fn entry_ref(entry: &EntryRef) -> String {
    format!("{} ({})", entry.prefix, entry.origin)
}

/// `explain --feed` / `--file`: a row per range, then what to do about
/// each range not admitted.
pub fn coverage(report: &CoverageReport) -> String {
    let of = report.feed.as_ref().map_or("the list".to_string(), |feed| {
        format!("feed `{}`", escape_controls(feed))
    });
    let mut out = format!(
        "{of} on {}: {} of {} ranges admitted{}\n\n",
        report.port,
        report.admitted,
        report.ranges.len(),
        if report.mode == "monitor" {
            " (monitor mode: the rest would be dropped, and are passed and counted)"
        } else {
            ""
        }
    );
    let more = |count: usize| {
        if count > 0 {
            format!(" and {count} more")
        } else {
            String::new()
        }
    };
    let rows: Vec<Vec<String>> = report
        .ranges
        .iter()
        .map(|range| {
            let by = match (&range.rule, &range.entry) {
                (Some(rule), Some(entry)) => format!("rule `{rule}` through {}", entry_ref(entry)),
                _ => {
                    let parts: Vec<String> = range
                        .parts
                        .iter()
                        .map(|part| format!("`{}` {}", part.rule, entry_ref(&part.entry)))
                        .collect();
                    if parts.is_empty() {
                        "-".to_string()
                    } else {
                        format!("in parts: {}{}", parts.join(", "), more(range.more_parts))
                    }
                }
            };
            let not_admitted: Vec<String> =
                range.not_admitted.iter().map(ToString::to_string).collect();
            vec![
                range.range.to_string(),
                if range.admitted { "yes" } else { "no" }.to_string(),
                by,
                if not_admitted.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "{}{}",
                        not_admitted.join(", "),
                        more(range.more_not_admitted)
                    )
                },
            ]
        })
        .collect();
    out.push_str(&text_table(
        &["RANGE", "ADMITTED", "BY", "NOT ADMITTED"],
        &rows,
    ));
    if report.admitted < report.ranges.len() {
        out.push('\n');
    }
    for range in report.ranges.iter().filter(|range| !range.admitted) {
        let _ = writeln!(
            out,
            "{}: {}",
            range.range,
            escape_controls(range.why.as_deref().unwrap_or("not admitted"))
        );
        if let Some(fix) = &range.fix {
            let _ = writeln!(out, "  fix: {}", escape_controls(fix));
        }
    }
    out
}

pub fn explain(report: &ExplainReport) -> String {
    let mut out = explain_verdict(report);
    if !report.feeds_not_considered.is_empty() {
        let _ = writeln!(
            out,
            "note: feeds not considered: {}{}; `firewall-ctl explain` without `--config` asks the daemon, which has every list in force",
            report.feeds_not_considered.join(", "),
            report
                .feeds_note
                .as_deref()
                .map_or(String::new(), |why| format!(" ({why})"))
        );
    }
    out
}

fn explain_verdict(report: &ExplainReport) -> String {
    let mut out = String::new();
    let packet = format!("{} -> {}", report.source, report.port);
    if let (Some(rule), Some(entry)) = (&report.rule, &report.entry) {
        let _ = writeln!(
            out,
            "{packet}: PASS, allowed by rule `{}` through entry {}",
            escape_controls(rule),
            entry_ref(entry)
        );
        for other in report.admitted_by.iter().skip(1) {
            let _ = writeln!(
                out,
                "  also admitted by rule `{}` through {} (counted under `{}`, the first in config order)",
                escape_controls(&other.rule),
                entry_ref(&other.entry),
                escape_controls(rule)
            );
        }
        return out;
    }
    let action = if report.mode == "monitor" {
        "WOULD DROP (monitor mode: passed and counted)"
    } else {
        "DROP"
    };
    let _ = writeln!(out, "{packet}: {action}, reason {}", report.reason);
    if report.reason == "port_closed" {
        let _ = writeln!(out, "  no rule exposes {}", report.port);
    }
    for rule in &report.exposing_rules {
        let nearest: Vec<String> = rule.nearest.iter().map(entry_ref).collect();
        let _ = writeln!(
            out,
            "  rule `{}` exposes {} but does not list {}; nearest entries: {}",
            escape_controls(&rule.rule),
            report.port,
            report.source,
            if nearest.is_empty() {
                "none of this address family".to_string()
            } else {
                nearest.join(", ")
            }
        );
    }
    out
}

/// The name a unit enum variant has in JSON (`"allow"`, `"applied"`), so
/// tables and `--json` spell values the same.
fn json_name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn audit_log(report: &AuditLogReport) -> String {
    let rows: Vec<Vec<String>> = report
        .records
        .iter()
        .map(|record| {
            vec![
                record.time.to_string(),
                json_name(record.action),
                json_name(record.outcome),
                or_dash(record.user.as_ref()),
                or_dash(record.rule.as_ref()),
                prefixes_cell(record),
                or_dash(record.detail.as_ref()),
            ]
        })
        .collect();
    let mut out = text_table(
        &[
            "TIME", "ACTION", "OUTCOME", "USER", "RULE", "PREFIXES", "DETAIL",
        ],
        &rows,
    );
    if report.unreadable_lines > 0 {
        let _ = writeln!(
            out,
            "warning: {} unreadable line(s) skipped (torn by a crash?)",
            report.unreadable_lines
        );
    }
    out
}

/// The first few prefixes of a record, and how many more it has (all of
/// them with `--json`).
fn prefixes_cell(record: &AuditRecord) -> String {
    const SHOWN: usize = 5;
    if record.prefixes.is_empty() {
        return "-".to_string();
    }
    let total = record.prefix_count.unwrap_or(record.prefixes.len());
    let mut cell = record.prefixes[..record.prefixes.len().min(SHOWN)].join(",");
    let shown = record.prefixes.len().min(SHOWN);
    if total > shown {
        let _ = write!(cell, " (+{} more)", total - shown);
    }
    cell
}

pub fn confirm(report: &crate::api::ConfirmReport) -> String {
    format!(
        "confirmed: the reloaded config stays (it would have rolled back at {})\n",
        report.rollback_was_due
    )
}

pub fn detach(report: &crate::detach::DetachReport) -> String {
    let mut out = String::new();
    match (report.stopped_daemon_pid, &report.stopped_unit) {
        (Some(pid), Some(unit)) => {
            let _ = writeln!(
                out,
                "stopped the daemon (pid {pid}) with `systemctl stop {unit}`; it stays stopped until `systemctl start {unit}` or the next boot (`systemctl disable {unit}` keeps it off)"
            );
        }
        (Some(pid), None) => {
            let _ = writeln!(out, "stopped the daemon (pid {pid})");
        }
        _ => {}
    }
    for interface in &report.detached {
        let _ = writeln!(
            out,
            "detached the XDP program from {interface}: its traffic is no longer filtered"
        );
    }
    if report.removed_maps {
        let _ = writeln!(
            out,
            "removed the pinned maps in {}",
            report.bpf_dir.display()
        );
    }
    out
}

/// For humans: seconds since the Unix epoch as a UTC time.
pub fn unix_time(seconds: u64) -> Timestamp {
    Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

pub fn stats(report: &StatsReport) -> String {
    let rules: Vec<Vec<String>> = report
        .rules
        .iter()
        .map(|rule| {
            vec![
                rule.name.clone(),
                rule.packets.to_string(),
                rule.bytes.to_string(),
            ]
        })
        .collect();
    let by_reason = |drops: bool| -> Vec<Vec<String>> {
        let (packets, bytes) = if drops {
            (&report.drops, &report.drop_bytes)
        } else {
            (&report.passed, &report.passed_bytes)
        };
        Reason::ALL
            .iter()
            .filter(|reason| reason.is_drop() == drops)
            .map(|reason| {
                let name = reason.name();
                vec![
                    name.to_string(),
                    packets.get(name).copied().unwrap_or(0).to_string(),
                    bytes.get(name).copied().unwrap_or(0).to_string(),
                ]
            })
            .collect()
    };
    let drop_title = if report.mode == "monitor" {
        "WOULD DROP (monitor mode)"
    } else {
        "DROPPED"
    };
    format!(
        "mode: {}\nflows: {}\n\n{}\n{}\n{}",
        report.mode,
        flow_table(report.flows.as_ref()),
        table(&["RULE", "PACKETS", "BYTES"], &rules),
        table(&[drop_title, "PACKETS", "BYTES"], &by_reason(true)),
        table(&["PASSED", "PACKETS", "BYTES"], &by_reason(false)),
    )
}

/// The columns `stats --entries` and `audit report` share.
fn entry_row(entry: &EntryStats) -> Vec<String> {
    let (packets, bytes) = if entry.counted {
        (entry.packets.to_string(), entry.bytes.to_string())
    } else {
        ("not counted".to_string(), "-".to_string())
    };
    vec![
        entry.rule.clone(),
        entry.prefix.to_string(),
        crate::usage::origins(&entry.origins),
        packets,
        bytes,
        or_dash(entry.first_seen),
        or_dash(entry.last_seen),
    ]
}

const ENTRY_HEADERS: [&str; 7] = [
    "RULE",
    "PREFIX",
    "ORIGIN",
    "PACKETS",
    "BYTES",
    "FIRST SEEN",
    "LAST SEEN",
];

pub fn entries(report: &EntriesReport) -> String {
    let rows: Vec<Vec<String>> = report.entries.iter().map(entry_row).collect();
    format!(
        "counting since: {}\n\n{}",
        or_dash(report.counting_since),
        text_table(&ENTRY_HEADERS, &rows)
    )
}

pub fn audit_report(report: &crate::usage::AuditReport) -> String {
    let rows: Vec<Vec<String>> = report
        .entries
        .iter()
        .map(|entry| {
            let mut row = entry_row(&entry.stats);
            row.push(
                match (entry.never_hit, entry.stale) {
                    (true, _) => "STALE (never hit)",
                    (false, true) => "STALE",
                    _ => "",
                }
                .to_string(),
            );
            row
        })
        .collect();
    let mut headers = ENTRY_HEADERS.to_vec();
    headers.push("FLAG");
    format!(
        "Allowlist usage report\ngenerated:      {}\ncounting since: {}\nstale:          {} of {} entries ({})\n\n{}",
        report.generated_at,
        or_dash(report.counting_since),
        report.entries_stale,
        report.entries_total,
        report.stale_after.as_ref().map_or_else(
            || "never hit".to_string(),
            |after| format!("never hit, or not within {after}")
        ),
        text_table(&headers, &rows)
    )
}

fn blocked_row(source: &BlockedSource) -> Vec<String> {
    vec![
        or_dash(source.source),
        source.protocol.clone(),
        or_dash(source.port),
        source.reason.clone(),
        source.interface.clone(),
        source.samples.to_string(),
        source.last_seen.to_string(),
    ]
}

const BLOCKED_HEADERS: [&str; 7] = [
    "SOURCE",
    "PROTO",
    "PORT",
    "REASON",
    "INTERFACE",
    "SAMPLES",
    "LAST SEEN",
];

pub fn blocked(report: &BlockedReport) -> String {
    let top: Vec<Vec<String>> = report.top.iter().map(blocked_row).collect();
    let recent: Vec<Vec<String>> = report.recent.iter().map(blocked_row).collect();
    let rate = if report.sample_rate == 0 {
        "sampling is off (`[blocked] sample_rate = 0`)".to_string()
    } else {
        format!(
            "{} samples so far, at most {} per second per CPU (counts are samples; `stats` has exact drop totals)",
            report.samples, report.sample_rate
        )
    };
    format!(
        "{rate}\n\nTOP\n{}\nRECENT\n{}",
        text_table(&BLOCKED_HEADERS, &top),
        text_table(&BLOCKED_HEADERS, &recent)
    )
}

/// One line of `blocked --follow`.
pub fn blocked_line(source: &BlockedSource) -> String {
    format!(
        "{}  {} {} {}  {}  {}\n",
        source.last_seen,
        or_dash(source.source),
        source.protocol,
        or_dash(source.port),
        source.reason,
        escape_controls(&source.interface)
    )
}

pub fn feeds(report: &FeedsReport) -> String {
    let age = |seconds: Option<u64>| {
        seconds.map_or("-".to_string(), |seconds| {
            humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
        })
    };
    let rows: Vec<Vec<String>> = report
        .feeds
        .iter()
        .map(|feed| {
            let state = match (&feed.last_error, feed.stale) {
                (Some(_), _) => "FAILING",
                (None, true) => "STALE",
                (None, false) => "ok",
            };
            vec![
                feed.name.clone(),
                feed.format.clone(),
                feed.prefixes_v4.to_string(),
                feed.prefixes_v6.to_string(),
                age(feed.age_seconds),
                or_dash(feed.next_attempt),
                state.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["FEED", "FORMAT", "IPV4", "IPV6", "AGE", "NEXT", "STATE"],
        &rows,
    );
    for feed in &report.feeds {
        let _ = writeln!(out, "{}: {}", feed.name, escape_controls(&feed.source));
        if let Some(error) = &feed.last_error {
            let _ = writeln!(
                out,
                "  last attempt {} failed: {}; the last good list stays in force",
                or_dash(feed.last_attempt),
                escape_controls(error)
            );
        }
    }
    out
}

pub fn check(report: &CheckReport) -> String {
    let rows: Vec<Vec<String>> = report
        .rules
        .iter()
        .map(|rule| {
            vec![
                rule.name.clone(),
                rule.ports.join(","),
                rule.sources_v4.to_string(),
                rule.sources_v6.to_string(),
                if rule.feeds.is_empty() {
                    "-".to_string()
                } else {
                    rule.feeds.join(",")
                },
            ]
        })
        .collect();
    let warnings: String = report
        .warnings
        .iter()
        .map(|warning| format!("warning: {}\n", escape_controls(warning)))
        .collect();
    let flows = &report.flows;
    let tracking = if report.track_outbound {
        format!(
            "replies to the host's own flows pass: tcp {} (closing {}), udp {}, icmp {}; up to {} flows",
            flows.tcp_timeout,
            flows.tcp_close_timeout,
            flows.udp_timeout,
            flows.icmp_timeout,
            flows.max_flows
        )
    } else {
        "off (`track_outbound = false`)".to_string()
    };
    format!(
        "config `{}` is valid: {} mode, interfaces {}, xdp_mode {}\n\n{}\n{} rules, {} IPv4 prefixes, {} IPv6 prefixes, {} ports\nflow tracking: {tracking}\n{warnings}",
        report.config.display(),
        report.mode,
        report.interfaces.join(", "),
        report.xdp_mode,
        table(&["RULE", "PORTS", "IPV4", "IPV6", "FEEDS"], &rows),
        report.rules.len(),
        report.prefixes_v4,
        report.prefixes_v6,
        report.ports,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["jira-align".to_string(), "12".to_string()],
            vec!["ssh".to_string(), "3456".to_string()],
        ];
        assert_eq!(
            table(&["RULE", "PACKETS"], &rows),
            "RULE        PACKETS\njira-align       12\nssh            3456\n"
        );
    }

    /// Any width: `format!` takes at most 65,535, and panicked past it.
    #[test]
    fn cells_of_any_width_are_cut_with_a_marker() {
        let rows = vec![
            vec!["\u{1}".repeat(70_000), "1".to_string()],
            vec!["x".repeat(100_000), "2".to_string()],
        ];
        let out = text_table(&["A", "B"], &rows);
        for line in out.lines() {
            assert!(line.len() <= MAX_CELL_BYTES + 8, "{}", line.len());
        }
        assert!(out.contains(" more bytes)"), "{out}");
        assert!(!out.contains('\u{1}'));
    }
}
