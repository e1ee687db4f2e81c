//! The manual: `firewall-ctl(1)` from the CLI's own definition with the
//! sections `--help` has no room for (exit status, signals, files,
//! environment), one page per command, and `firewall-ctl.toml(5)` made from
//! the README's config reference and feeds sections at build time, so the
//! two cannot drift apart.

use std::{io::Write as _, path::Path};

use clap_mangen::{Man, roff::Roff};

use crate::api::ErrorKind;

const README: &str = include_str!("../../README.md");

/// What `firewall-ctl` exits with; `main` uses the same numbers.
pub const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success; for explain, the packet passes."),
    (
        "1",
        "An error of the CLI itself (a file it reads, its output): the message on standard error says what and how to fix it.",
    ),
    ("2", "The command line could not be parsed."),
    (
        "3",
        "A change the daemon did not answer within the wait (--timeout): pending. The daemon refuses a change it could not start by half the wait and applies one it started; firewall-ctl audit log --request ID shows which.",
    ),
    (
        "4",
        "explain: the policy drops the packet; explain --feed or --file: some address would be dropped.",
    ),
];

/// The exit codes of the daemon's error answers, by kind (see
/// [`crate::client::exit_code`]): `5 (invalid_input)` and what it means.
pub fn error_exit_status() -> Vec<(String, &'static str)> {
    ErrorKind::ALL
        .into_iter()
        .map(|kind| {
            (
                format!("{} ({})", crate::client::exit_code(kind), kind.name()),
                kind.summary(),
            )
        })
        .collect()
}

const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGHUP",
        "The daemon reloads its config, like firewall-ctl reload (the result is logged and in status).",
    ),
    (
        "SIGTERM, SIGINT",
        "The daemon stops. The firewall stays attached and enforcing its last policy (it is pinned); firewall-ctl detach removes it.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "/etc/firewall-ctl/firewall.toml",
        "The config; see firewall-ctl.toml(5).",
    ),
    (
        "/run/firewall-ctl/ctl.sock",
        "The control socket (socket in the config).",
    ),
    (
        "/var/lib/firewall-ctl/",
        "The state directory (state_dir): allowlist.toml (runtime entries), audit.log and audit.log.1 to .4 (the audit trail), audit-denied.log (requests refused for lack of permission), running-config.toml (what reload --confirm rolls back to), pending-reload.toml, counters.json, feeds/NAME.json (each feed's last good list), lock.",
    ),
    (
        "/sys/fs/bpf/firewall-ctl/",
        "The pinned maps and links (bpf_dir): the firewall outlives its daemon.",
    ),
    (
        "/lib/systemd/system/firewall-ctl.service",
        "The systemd unit (Type=notify, with a watchdog).",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "RUST_LOG",
        "The daemon's log level and filters (default info).",
    ),
    (
        "HTTPS_PROXY, HTTP_PROXY, NO_PROXY",
        "Proxies for feed downloads.",
    ),
    (
        "SSH_CONNECTION",
        "The CLI's SSH session: remove and reload refuse to cut it without --force.",
    ),
    (
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd: the daemon says when it is ready and pings the watchdog.",
    ),
];

/// Adds a section of tagged paragraphs.
fn tagged_section<'a>(
    roff: &mut Roff,
    title: &str,
    items: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([clap_mangen::roff::bold(tag)]);
        roff.text([clap_mangen::roff::roman(text)]);
    }
}

/// `firewall-ctl(1)`: what clap knows, and the rest.
pub fn main_page(command: clap::Command) -> std::io::Result<Vec<u8>> {
    let command_has_subcommands = command.has_subcommands();
    let man = Man::new(command);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if command_has_subcommands {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::default();
    let by_kind = error_exit_status();
    tagged_section(
        &mut roff,
        "EXIT STATUS",
        EXIT_STATUS.iter().copied().chain(
            by_kind
                .iter()
                .map(|(code, summary)| (code.as_str(), *summary)),
        ),
    );
    tagged_section(&mut roff, "SIGNALS", SIGNALS.iter().copied());
    tagged_section(&mut roff, "FILES", FILES.iter().copied());
    tagged_section(&mut roff, "ENVIRONMENT", ENVIRONMENT.iter().copied());
    roff.control("SH", ["SEE ALSO"]);
    roff.text([clap_mangen::roff::roman(
        "firewall-ctl.toml(5), firewall-ctl-COMMAND(1) for each command, systemctl(1), journalctl(1)",
    )]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// The README's section that starts with `heading` (to the next `## `).
fn readme_section(heading: &str) -> &'static str {
    let start = README
        .find(heading)
        .unwrap_or_else(|| panic!("the README has no `{heading}`"));
    let body = &README[start + heading.len()..];
    &body[..body.find("\n## ").unwrap_or(body.len())]
}

/// `firewall-ctl.toml(5)`: the config reference and the feeds' keys.
pub fn config_page() -> Vec<u8> {
    let mut page = format!(
        ".TH FIREWALL-CTL.TOML 5 \"\" \"firewall-ctl {}\"\n.SH NAME\nfirewall-ctl.toml \\- the config of firewall-ctl\n.SH SYNOPSIS\n/etc/firewall-ctl/firewall.toml\n.SH DESCRIPTION\nThe daemon reads it at start and at every reload (\\fBfirewall-ctl reload\\fR, SIGHUP); \\fBfirewall-ctl check --config\\fR validates it without root. It is TOML.\n",
        env!("CARGO_PKG_VERSION")
    );
    page.push_str(".SH KEYS\n");
    page.push_str(&markdown_to_roff(readme_section("## Config reference")));
    page.push_str(".SH FEEDS\n");
    page.push_str(&markdown_to_roff(readme_section("## Vendor feeds")));
    page.push_str(".SH SEE ALSO\nfirewall-ctl(1)\n");
    page.into_bytes()
}

/// Writes `firewall-ctl.1`, a page per command and `firewall-ctl.toml.5`
/// into `dir`.
pub fn write_all(command: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command.clone(), dir)?;
    std::fs::write(dir.join("firewall-ctl.1"), main_page(command)?)?;
    std::fs::File::create(dir.join("firewall-ctl.toml.5"))?.write_all(&config_page())
}

/// Text for roff: escapes and the README's inline markup (`code`,
/// **bold**, [links](#anchor)) as bold text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix('`')
            && let Some(end) = after.find('`')
        {
            out.push_str(&format!("\\fB{}\\fR", escape(&after[..end])));
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix("**")
            && let Some(end) = after.find("**")
        {
            out.push_str(&format!("\\fB{}\\fR", inline(&after[..end])));
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[')
            && let Some(close) = after.find("](")
            && let Some(end) = after[close..].find(')')
        {
            out.push_str(&inline(&after[..close]));
            rest = &after[close + end + 1..];
        } else {
            out.push_str(&escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `text` safe in roff: backslashes and hyphens escaped, and a leading
/// dot or quote (a control line) guarded.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A line of roff text, guarded against starting a request.
fn text_line(line: &str) -> String {
    let line = inline(line.trim());
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}\n")
    } else {
        format!("{line}\n")
    }
}

/// The README's markdown (paragraphs, lists, tables, code blocks) as roff.
fn markdown_to_roff(markdown: &str) -> String {
    let mut out = String::new();
    let mut lines = markdown.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with("```") {
            out.push_str(".PP\n.nf\n");
            for code in lines.by_ref() {
                if code.trim_start().starts_with("```") {
                    break;
                }
                out.push_str(&format!("\\&{}\n", escape(code)));
            }
            out.push_str(".fi\n");
        } else if trimmed.starts_with('|') {
            // A table: the header and the rule are skipped; each row is a
            // tagged paragraph, its first cell the tag.
            let mut rows = vec![trimmed];
            while let Some(next) = lines.next_if(|next| next.trim().starts_with('|')) {
                rows.push(next.trim());
            }
            for row in rows.iter().skip(2) {
                let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
                out.push_str(".TP\n");
                out.push_str(&text_line(cells[0]));
                out.push_str(&text_line(&cells[1..].join("; ")));
            }
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            // Joined first: a link may span lines.
            let mut text = item.to_string();
            while let Some(next) =
                lines.next_if(|next| next.starts_with("  ") && !next.trim().is_empty())
            {
                text.push(' ');
                text.push_str(next.trim());
            }
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&text_line(&text));
        } else {
            let mut text = trimmed.to_string();
            while let Some(next) = lines.next_if(|next| {
                let next = next.trim();
                !next.is_empty()
                    && !next.starts_with('|')
                    && !next.starts_with("- ")
                    && !next.starts_with("```")
            }) {
                text.push(' ');
                text.push_str(next.trim());
            }
            out.push_str(".PP\n");
            out.push_str(&text_line(&text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_has_every_key_and_no_markdown() {
        let page = String::from_utf8(config_page()).unwrap();
        assert!(page.starts_with(".TH FIREWALL-CTL.TOML 5"), "{page}");
        for key in [
            "interfaces",
            "xdp_mode",
            "state_dir",
            "rules[].sources",
            "flows.max_flows",
            "metrics.listen",
            "blocked.sample_rate",
            "max_shrink",
        ] {
            assert!(
                page.contains(&escape(key)),
                "{key} is not in the config page"
            );
        }
        assert!(!page.contains("](#"), "a markdown link is left");
        // Code blocks keep their text as it is; nothing else may.
        let mut in_code = false;
        for line in page.lines() {
            match line {
                ".nf" => in_code = true,
                ".fi" => in_code = false,
                line if !in_code => assert!(!line.contains('`'), "a code span is left: {line}"),
                _ => {}
            }
        }
        assert!(
            page.lines().all(|line| !line.starts_with('\'')),
            "a line starts a request"
        );
    }

    #[test]
    fn markdown_becomes_roff() {
        let roff = markdown_to_roff(
            "Text with `code`, **bold** and a [link\nacross lines](#anchor).\n\n| key | values |\n|---|---|\n| `a` | one |\n\n- an item\n  that goes on\n\n```toml\nx = 1\n```\n",
        );
        assert_eq!(
            roff,
            ".PP\nText with \\fBcode\\fR, \\fBbold\\fR and a link across lines.\n.TP\n\\fBa\\fR\none\n.IP \\(bu 2\nan item that goes on\n.PP\n.nf\n\\&x = 1\n.fi\n"
        );
    }

    #[test]
    fn the_main_page_has_exit_status_signals_and_files() {
        let page = String::from_utf8(
            main_page(<crate::cli::Cli as clap::CommandFactory>::command()).unwrap(),
        )
        .unwrap();
        for section in ["EXIT STATUS", "SIGNALS", "FILES", "ENVIRONMENT", "SEE ALSO"] {
            assert!(
                page.contains(&format!(".SH \"{section}\""))
                    || page.contains(&format!(".SH {section}")),
                "{section}: {page}"
            );
        }
    }
}
