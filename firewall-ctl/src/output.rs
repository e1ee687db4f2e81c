//! Human-readable tables; `--json` output is the API reports themselves.

use std::fmt::Write as _;

use firewall_common::reasons::Reason;

use crate::{
    api::{StatsReport, StatusReport},
    check::CheckReport,
};

/// Left-aligns the first column and right-aligns the rest (numbers).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(ToString::to_string).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if index == 0 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "  {cell:>width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn status(report: &StatusReport) -> String {
    let interfaces: Vec<String> = report
        .interfaces
        .iter()
        .map(|interface| format!("{} ({})", interface.name, interface.xdp_mode))
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
        "policy      {} rules, {} IPv4 prefixes, {} IPv6 prefixes, {} ports; applied at unix time {}; {} reloads, {} rejected",
        report.rules,
        report.prefixes_v4,
        report.prefixes_v6,
        report.ports,
        report.policy_applied_at,
        report.reloads,
        report.reloads_rejected
    );
    if let Some(error) = &report.last_reload_error {
        let _ = writeln!(out, "last reload REJECTED, running policy kept: {error}");
    }
    out
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
        "mode: {}\n\n{}\n{}\n{}",
        report.mode,
        table(&["RULE", "PACKETS", "BYTES"], &rules),
        table(&[drop_title, "PACKETS", "BYTES"], &by_reason(true)),
        table(&["PASSED", "PACKETS", "BYTES"], &by_reason(false)),
    )
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
            ]
        })
        .collect();
    let warning = if report.rules.is_empty() {
        "warning: no rules, every port is closed\n"
    } else {
        ""
    };
    format!(
        "config `{}` is valid: {} mode, interfaces {}, xdp_mode {}\n\n{}\n{} rules, {} IPv4 prefixes, {} IPv6 prefixes, {} ports\n{warning}",
        report.config.display(),
        report.mode,
        report.interfaces.join(", "),
        report.xdp_mode,
        table(&["RULE", "PORTS", "IPV4", "IPV6"], &rows),
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
}
