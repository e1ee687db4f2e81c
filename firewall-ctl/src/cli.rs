//! The command line: what each command takes ([`Cli`]), running it
//! ([`run`]), and how its outcome ends the process ([`exit`]).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use serde::Serialize;

use crate::{
    api::{
        self, AllowRequest, Command, CommandError, ReloadRequest, RemoveRequest, Response,
        SshSession,
    },
    check, client,
    config::{self, DEFAULT_SOCKET},
    daemon, detach,
    entries::RuntimeEntries,
    manual, output, policy, system,
    text::escape_controls,
    usage,
};

#[derive(Parser)]
#[command(
    name = "firewall-ctl",
    version,
    about = "Allowlist exposed ports at the NIC with XDP",
    long_about = "Allowlist exposed ports at the NIC with XDP.\n\nThe daemon (`firewall-ctl daemon`) loads an XDP program that drops every packet not destined to an exposed port from a source allowlisted for that port. The other commands talk to it over its control socket."
)]
pub struct Cli {
    /// Control socket of the daemon [default: /run/firewall-ctl/ctl.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables (stable field names).
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the daemon's answer (`30s`, `5m`) [default: 60s; 10m for `reload` and `feeds refresh`]. The daemon must start a change within half of it or refuse it; a change not answered in time exits with code 3, pending (`audit log --request ID` tells its outcome).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_wait)]
    timeout: Option<std::time::Duration>,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Load and attach the XDP program and keep it in sync with the config and runtime entries (root).
    Daemon {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Where runtime entries and the audit log live [default: the config's `state_dir`].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Where maps and links are pinned [default: the config's `bpf_dir`].
        #[arg(long, value_name = "DIR")]
        bpf_dir: Option<PathBuf>,
    },
    /// Remove the firewall: stop the daemon if it runs, detach the program and unpin everything (root).
    Detach {
        /// Take `bpf_dir` and `socket` from this config [default: /sys/fs/bpf/firewall-ctl].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The pinned firewall to remove [default: the config's `bpf_dir`].
        #[arg(long, value_name = "DIR")]
        bpf_dir: Option<PathBuf>,
        /// Detach from this interface only; the maps stay.
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
    },
    /// Validate a config without root and summarise it.
    Check {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Interfaces, attach modes, enforce or monitor mode, policy size, uptime.
    Status,
    /// Packets and bytes per rule, per drop reason and per pass reason; with --entries, per allowlist entry.
    Stats {
        /// Per entry (rule + prefix): packets, bytes, first and last hit.
        #[arg(long)]
        entries: bool,
        /// Only the entries of this rule (with --entries).
        #[arg(long, value_name = "NAME", requires = "entries")]
        rule: Option<String>,
        /// Only the first N entries (by hits unless --sort says otherwise).
        #[arg(long, value_name = "N", requires = "entries")]
        top: Option<usize>,
        /// Order of the entries [default: config order].
        #[arg(long, value_enum, requires = "entries")]
        sort: Option<usage::EntrySort>,
    },
    /// Sources whose packets are being dropped, from rate-limited samples: top and recent, with port, protocol and reason.
    Blocked {
        /// Keep printing each blocked source as it is seen, until interrupted.
        #[arg(long)]
        follow: bool,
        /// How many top and recent sources to show.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
    },
    /// Add prefixes to a rule's allowlist at run time; returns once they are enforced.
    Allow {
        /// Prefixes or addresses, e.g. 203.0.113.0/24 2001:db8::/48 198.51.100.7.
        #[arg(required = true, value_name = "CIDR")]
        prefixes: Vec<String>,
        /// The rule to add to [default: the rule with `default = true`, or the only rule].
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Why the entry exists (ticket, vendor, person); shown by `list` and the audit log.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Remove the entry after a duration (`2h`, `3d`) or at a UTC time (`2026-11-27T18:00:00Z`).
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// Allow 0.0.0.0/0, ::/0 and prefixes shorter than /8 or /16 (the rule needs `allow_any_source = true`).
        #[arg(long)]
        force: bool,
    },
    /// Remove prefixes added with `allow` (config entries are changed in the config file).
    #[command(alias = "revoke")]
    Remove {
        #[arg(required = true, value_name = "CIDR")]
        prefixes: Vec<String>,
        /// The rule to remove from [default: the one rule that has the prefix].
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Remove even if it cuts this SSH session (`SSH_CONNECTION`).
        #[arg(long)]
        force: bool,
    },
    /// Every effective allowlist entry with its rule, origin, comment, author and expiry.
    List {
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
    },
    /// Reload the config like SIGHUP, and report whether it was applied (exit code 1 if rejected).
    Reload {
        /// Roll back to the previous config unless `firewall-ctl confirm` comes within this long (`2m`).
        #[arg(long, value_name = "DURATION")]
        confirm: Option<String>,
        /// Reload even if it cuts this SSH session (`SSH_CONNECTION`).
        #[arg(long)]
        force: bool,
    },
    /// Keep the config of a `reload --confirm` (stops its rollback).
    Confirm,
    /// Why a packet from SOURCE to PORT would pass or drop: the rule and entry, or the drop reason. With `--feed` or `--file`: whether every address of a list would be admitted on the port (exit code 4 if any would be dropped).
    Explain {
        /// The packet's source address.
        #[arg(required_unless_present_any = ["feed", "file"], conflicts_with_all = ["feed", "file"])]
        source: Option<String>,
        /// Destination port: `443` (TCP), `tcp/443` or `udp/4500`.
        #[arg(value_name = "[PROTO/]PORT", required_unless_present = "port_option")]
        port: Option<String>,
        /// The port, as an option (the form `--feed` and `--file` take).
        #[arg(
            long = "port",
            id = "port_option",
            value_name = "[PROTO/]PORT",
            conflicts_with = "port"
        )]
        port_option: Option<String>,
        /// Check every range of feed NAME's list in force: which rule and entry admit each, and what is not admitted and why.
        #[arg(long, value_name = "NAME", conflicts_with = "file")]
        feed: Option<String>,
        /// Check every address or prefix PATH lists (one a line, `#` comments; at most 1000), e.g. a list from the vendor's support.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Answer from this config file alone: no daemon, no root, no runtime entries.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Vendor IP feeds: where each comes from, its entries, last fetch, age and last error.
    Feeds {
        #[command(subcommand)]
        command: Option<FeedsCommand>,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script, e.g. `firewall-ctl completions bash > /etc/bash_completion.d/firewall-ctl`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `firewall-ctl man | man -l -`.
    Man {
        /// Write firewall-ctl.1, one page per command and firewall-ctl.toml.5 (the config) into DIR instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FeedsCommand {
    /// Fetch now (one feed, or every feed) and report the outcome; exit code 1 if one failed.
    Refresh {
        /// The feed [default: every feed].
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Every allowlist entry with its origin and use (packets, bytes, first and last hit) over the period the counters cover; unused entries flagged.
    Report {
        /// Also flag entries not hit within this long (`30d`); without it only never-hit entries are stale.
        #[arg(long, value_name = "DURATION")]
        stale: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
    /// Every change and refused attempt, oldest first.
    Log {
        /// Only records since a duration ago (`1h`, `7d`) or a UTC time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only the records of the request with this id (a pending change names it).
        #[arg(long, value_name = "ID")]
        request: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Csv,
}

/// The exit code of a change whose outcome is not known yet.
const EXIT_PENDING: u8 = 3;
/// The exit code of `explain` when the policy drops the packet, and of
/// `explain --feed`/`--file` when some address would be dropped.
const EXIT_WOULD_DROP: u8 = 4;

/// `explain`'s answer was a drop: exit with [`EXIT_WOULD_DROP`], the
/// answer itself already printed.
#[derive(Debug, thiserror::Error)]
#[error("the policy drops the packet")]
struct WouldDrop;

/// `Err(WouldDrop)` when `report` is a drop.
fn would_drop(report: &api::ExplainReport) -> anyhow::Result<()> {
    if report.verdict == "drop" {
        return Err(WouldDrop.into());
    }
    Ok(())
}

/// `explain SOURCE PORT --config PATH`: from the config and the feeds'
/// last good lists alone.
fn explain_offline(source: &str, port: &str, path: &Path, json: bool) -> anyhow::Result<()> {
    let (source, port) = policy::explain::parse_query(source, port).map_err(anyhow::Error::msg)?;
    let (config, feeds, policy) = daemon::load_policy_with_feeds(path)?;
    let mut report = policy::explain::explain(
        &config,
        &RuntimeEntries::new(),
        &feeds.lists,
        &policy,
        source,
        port,
    );
    report.feeds_not_considered = feeds.missing;
    report.feeds_note = feeds.why;
    print(json, &report, output::explain)?;
    would_drop(&report)
}

/// `explain --feed NAME` / `explain --file PATH`: asked of the daemon, or
/// with `config` of that config and the feeds' last good lists alone.
fn coverage(
    feed: Option<String>,
    file: Option<PathBuf>,
    port: String,
    config: Option<PathBuf>,
    json: bool,
    call: impl Fn(Command) -> anyhow::Result<Response>,
) -> anyhow::Result<()> {
    let ranges = match &file {
        Some(path) => {
            let what = format!("`{}`", path.display());
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the list {what}"))?;
            policy::coverage::parse_ranges(text.lines(), &what)
                .map_err(CommandError::invalid_input)?
        }
        None => Vec::new(),
    };
    let report = match config {
        Some(path) => {
            let port = policy::explain::parse_port(&port).map_err(CommandError::invalid_input)?;
            let (config, feeds, _) = daemon::load_policy_with_feeds(&path)?;
            let ranges = match &feed {
                Some(name) if config.feed(name).is_none() => {
                    return Err(CommandError::not_found(format!(
                        "no feed `{}` in `{}`; its [[feeds]] name them",
                        escape_controls(name),
                        path.display()
                    ))
                    .into());
                }
                Some(name) => feeds
                    .lists
                    .get(name)
                    .map(|list| list.prefixes.clone())
                    .with_context(|| {
                        format!(
                            "feed `{}` has no last good list under the config's state_dir{}",
                            escape_controls(name),
                            feeds
                                .why
                                .as_deref()
                                .map_or(String::new(), |why| format!(" ({why})"))
                        )
                    })?,
                None => ranges,
            };
            policy::coverage::coverage(
                &config,
                &RuntimeEntries::new(),
                &feeds.lists,
                &ranges,
                port,
                feed.as_deref(),
            )
        }
        None => {
            let ranges = ranges.iter().map(ToString::to_string).collect();
            match call(Command::Coverage { port, feed, ranges })? {
                Response::Coverage(report) => report,
                other => return unexpected(other),
            }
        }
    };
    print(json, &report, output::coverage)?;
    if report.admitted < report.ranges.len() {
        return Err(WouldDrop.into());
    }
    Ok(())
}

/// Reports the outcome of [`run`] as the exit code and, for an error, the
/// message on stderr (as JSON with `json`).
pub fn exit(outcome: anyhow::Result<()>, json: bool) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<WouldDrop>() => ExitCode::from(EXIT_WOULD_DROP),
        Err(err) => {
            let (kind, code) = if let Some(error) = err.downcast_ref::<CommandError>() {
                (error.kind.name(), client::exit_code(error.kind))
            } else if err.downcast_ref::<client::Pending>().is_some() {
                ("pending", EXIT_PENDING)
            } else {
                ("failed", 1)
            };
            // On stderr either way: stdout has only results (a `feeds
            // refresh` that failed has printed its report there).
            if json {
                let error =
                    serde_json::json!({"error": {"kind": kind, "message": format!("{err:#}")}});
                eprintln!("{error}");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// `--timeout`: a duration of at least a second.
fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(wait) if wait >= std::time::Duration::from_secs(1) => Ok(wait),
        _ => Err(format!(
            "`{text}` is not a duration of at least 1s; write e.g. `30s` or `5m`"
        )),
    }
}

/// Runs the command `cli` holds.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let call = |command| client::call(&socket, command, cli.timeout);
    let json = cli.json;
    match cli.command {
        CliCommand::Daemon {
            config,
            state_dir,
            bpf_dir,
        } => {
            init_logging();
            system::tune_allocator();
            let overrides = daemon::Overrides {
                socket: cli.socket,
                state_dir,
                bpf_dir,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(config, overrides))
        }
        CliCommand::Check { config } => print(json, &check::report(&config)?, output::check),
        CliCommand::Detach {
            config,
            bpf_dir,
            interface,
        } => {
            let (config_socket, config_bpf_dir) = match config.as_deref() {
                Some(path) => config::paths(path)?,
                None => (socket, PathBuf::from(config::DEFAULT_BPF_DIR)),
            };
            let bpf_dir = bpf_dir.unwrap_or(config_bpf_dir);
            let socket = cli.socket.unwrap_or(config_socket);
            system::check_privileges_for("detach")?;
            let report = detach::run(&socket, &bpf_dir, interface.as_deref())?;
            print(json, &report, output::detach)
        }
        CliCommand::Status => match call(Command::Status)? {
            Response::Status(report) => print(json, &report, output::status),
            other => unexpected(other),
        },
        CliCommand::Stats { entries: false, .. } => match call(Command::Stats)? {
            Response::Stats(report) => print(json, &report, output::stats),
            other => unexpected(other),
        },
        CliCommand::Stats {
            entries: true,
            rule,
            top,
            sort,
        } => match call(Command::Entries { rule })? {
            Response::Entries(mut report) => {
                usage::sort_and_top(&mut report, sort, top);
                print(json, &report, output::entries)
            }
            other => unexpected(other),
        },
        CliCommand::Blocked { follow: false, top } => match call(Command::Blocked)? {
            Response::Blocked(mut report) => {
                report.top.truncate(top);
                report.recent.truncate(top);
                print(json, &report, output::blocked)
            }
            other => unexpected(other),
        },
        CliCommand::Blocked { follow: true, .. } => {
            client::follow(&socket, Command::BlockedFollow, |response| match response {
                Response::BlockedSource(source) => {
                    let line = if json {
                        serde_json::to_string(&source)? + "\n"
                    } else {
                        output::blocked_line(&source)
                    };
                    write_stdout(line.as_bytes())
                }
                other => unexpected(other),
            })
        }
        CliCommand::Audit {
            command: AuditCommand::Report { stale, format },
        } => {
            let stale = stale
                .map(|text| {
                    humantime::parse_duration(&text).map_err(|err| {
                        anyhow::anyhow!(
                            "`--stale {text}` is not a duration ({err}); write e.g. `30d` or `12h`"
                        )
                    })
                })
                .transpose()?;
            match call(Command::Entries { rule: None })? {
                Response::Entries(report) => {
                    let report = usage::audit_report(report, stale);
                    match (format, json) {
                        (ReportFormat::Csv, _) => {
                            write_stdout(usage::audit_csv(&report)?.as_bytes())
                        }
                        (ReportFormat::Json, _) | (ReportFormat::Table, true) => {
                            print(true, &report, |_| String::new())
                        }
                        (ReportFormat::Table, false) => {
                            write_stdout(output::audit_report(&report).as_bytes())
                        }
                    }
                }
                other => unexpected(other),
            }
        }
        CliCommand::Allow {
            prefixes,
            rule,
            comment,
            expires,
            force,
        } => {
            let request = AllowRequest {
                prefixes,
                rule,
                comment,
                expires,
                force,
            };
            match call(Command::Allow(request))? {
                Response::Change(report) => print(json, &report, output::change),
                other => unexpected(other),
            }
        }
        CliCommand::Remove {
            prefixes,
            rule,
            force,
        } => {
            let request = RemoveRequest {
                prefixes,
                rule,
                ssh: SshSession::from_env(),
                force,
            };
            match call(Command::Remove(request))? {
                Response::Change(report) => print(json, &report, output::change),
                other => unexpected(other),
            }
        }
        CliCommand::List { rule } => match call(Command::List { rule })? {
            Response::List(report) => print(json, &report, output::list),
            other => unexpected(other),
        },
        CliCommand::Reload { confirm, force } => {
            let request = ReloadRequest {
                confirm,
                ssh: SshSession::from_env(),
                force,
            };
            match call(Command::Reload(request))? {
                Response::Reload(report) => print(json, &report, output::reload),
                other => unexpected(other),
            }
        }
        CliCommand::Feeds { command: None } => match call(Command::Feeds)? {
            Response::Feeds(report) => print(json, &report, output::feeds),
            other => unexpected(other),
        },
        CliCommand::Feeds {
            command: Some(FeedsCommand::Refresh { name }),
        } => match call(Command::FeedsRefresh { feed: name })? {
            Response::Feeds(report) => {
                print(json, &report, output::feeds)?;
                let failed: Vec<&str> = report
                    .feeds
                    .iter()
                    .filter(|feed| feed.last_error.is_some())
                    .map(|feed| feed.name.as_str())
                    .collect();
                if failed.is_empty() {
                    Ok(())
                } else {
                    anyhow::bail!(
                        "updating {} failed; the last good lists stay in force",
                        failed.join(", ")
                    )
                }
            }
            other => unexpected(other),
        },
        CliCommand::Confirm => match call(Command::Confirm)? {
            Response::Confirm(report) => print(json, &report, output::confirm),
            other => unexpected(other),
        },
        CliCommand::Explain {
            source,
            port,
            port_option,
            feed,
            file,
            config,
        } => {
            let port = port.or(port_option).unwrap_or_default();
            match (source, config) {
                (Some(source), Some(path)) => explain_offline(&source, &port, &path, json),
                (Some(source), None) => match call(Command::Explain { source, port })? {
                    Response::Explain(report) => {
                        print(json, &report, output::explain)?;
                        would_drop(&report)
                    }
                    other => unexpected(other),
                },
                (None, config) => coverage(feed, file, port, config, json, call),
            }
        }
        CliCommand::Audit {
            command: AuditCommand::Log { since, request },
        } => match call(Command::AuditLog { since, request })? {
            Response::AuditLog(report) => print(json, &report, output::audit_log),
            other => unexpected(other),
        },
        CliCommand::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "firewall-ctl", &mut out);
            write_stdout(&out)
        }
        CliCommand::Man { out_dir: None } => write_stdout(&manual::main_page(Cli::command())?),
        CliCommand::Man { out_dir: Some(dir) } => manual::write_all(Cli::command(), &dir)
            .with_context(|| format!("writing man pages into `{}`", dir.display())),
    }
}

/// The daemon's log: native journal entries, with their fields, when
/// stderr is the journal (under systemd), else text lines on stderr.
fn init_logging() {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if system::stderr_is_the_journal()
        && let Ok(journal) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(
                journal
                    .with_syslog_identifier("firewall-ctl".to_string())
                    // `INTERFACE`, `RULE`: the names operators filter on.
                    .with_field_prefix(None),
            )
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn unexpected(response: Response) -> anyhow::Result<()> {
    anyhow::bail!("the daemon answered with something else: {response:?}")
}

/// Prints `value` as JSON or through `human`.
fn print<T: Serialize>(json: bool, value: &T, human: impl Fn(&T) -> String) -> anyhow::Result<()> {
    let text = if json {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        text
    } else {
        human(value)
    };
    write_stdout(text.as_bytes())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().write_all(bytes) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_lists_the_exit_codes_main_uses() {
        let by_kind = manual::error_exit_status();
        let listed: Vec<&str> = manual::EXIT_STATUS
            .iter()
            .map(|(code, _)| *code)
            .chain(by_kind.iter().map(|(code, _)| code.as_str()))
            .collect();
        for code in [EXIT_PENDING, EXIT_WOULD_DROP] {
            assert!(listed.contains(&code.to_string().as_str()), "{code}");
        }
        assert_eq!(
            &listed[5..],
            [
                "5 (invalid_input)",
                "6 (permission_denied)",
                "7 (conflict)",
                "8 (not_found)",
                "9 (unavailable)",
                "10 (internal)"
            ]
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_pages_come_from_the_cli_definition() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "firewall-ctl",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        for command in ["allow", "remove", "list", "explain", "reload", "audit"] {
            assert!(
                bash.contains(command),
                "{command} missing from bash completions"
            );
        }
        assert!(bash.contains("--expires"));
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.starts_with(".ie"), "{}", &man[..40]);
        assert!(
            man.contains("firewall\\-ctl\\-allow"),
            "subcommands are listed"
        );
    }
}
