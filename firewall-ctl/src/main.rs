//! `firewall-ctl`: the daemon that enforces a source allowlist for exposed
//! ports in XDP, and the CLI that talks to it.

mod api;
mod config;
mod daemon;
mod datapath;
mod output;
mod policy;
mod system;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    api::{Command, Response},
    config::DEFAULT_SOCKET,
};

#[derive(Parser)]
#[command(
    name = "firewall-ctl",
    version,
    about = "Allowlist exposed ports at the NIC with XDP"
)]
struct Cli {
    /// Control socket of the daemon [default: the config's `socket`, else /run/firewall-ctl/ctl.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Load and attach the XDP program and keep it in sync with the config (root).
    Daemon {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Validate a config without root and summarise it.
    Check {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Interfaces, attach modes, enforce or monitor mode, policy size, uptime.
    Status,
    /// Packets and bytes per rule, per drop reason and per pass reason.
    Stats,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let client_socket = || {
        cli.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    };
    match &cli.command {
        CliCommand::Daemon { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(config.clone(), cli.socket.clone()))
        }
        CliCommand::Check { config } => check(config, cli.json),
        CliCommand::Status => match api::call(&client_socket(), Command::Status)? {
            Response::Status(report) => print(cli.json, &report, output::status),
            other => unexpected(other),
        },
        CliCommand::Stats => match api::call(&client_socket(), Command::Stats)? {
            Response::Stats(report) => print(cli.json, &report, output::stats),
            other => unexpected(other),
        },
    }
}

fn unexpected(response: Response) -> anyhow::Result<()> {
    anyhow::bail!("the daemon answered with something else: {response:?}")
}

/// Prints `value` as JSON or through `human`; a closed pipe is not an error.
fn print<T: Serialize>(json: bool, value: &T, human: impl Fn(&T) -> String) -> anyhow::Result<()> {
    let text = if json {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        text
    } else {
        human(value)
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// `firewall-ctl check --json`.
#[derive(Serialize)]
struct CheckReport {
    config: PathBuf,
    valid: bool,
    interfaces: Vec<String>,
    xdp_mode: config::XdpModeSetting,
    mode: String,
    socket: PathBuf,
    rules: Vec<CheckedRule>,
    /// Distinct prefixes after merging duplicates: what the maps will hold.
    prefixes_v4: usize,
    prefixes_v6: usize,
    /// Distinct (protocol, port) pairs exposed.
    ports: usize,
}

#[derive(Serialize)]
struct CheckedRule {
    name: String,
    ports: Vec<String>,
    sources_v4: usize,
    sources_v6: usize,
    comment: Option<String>,
}

fn check(path: &Path, json: bool) -> anyhow::Result<()> {
    let (config, policy) = daemon::load_policy(path)?;
    let report = CheckReport {
        config: path.to_path_buf(),
        valid: true,
        interfaces: config.interfaces.clone(),
        xdp_mode: config.xdp_mode,
        mode: api::mode_name(config.enforce),
        socket: config.socket.clone(),
        rules: config
            .rules
            .iter()
            .map(|rule| CheckedRule {
                name: rule.name.clone(),
                ports: rule.ports.iter().map(ToString::to_string).collect(),
                sources_v4: rule.sources.iter().filter(|prefix| prefix.is_v4()).count(),
                sources_v6: rule.sources.iter().filter(|prefix| !prefix.is_v4()).count(),
                comment: rule.comment.clone(),
            })
            .collect(),
        prefixes_v4: policy.v4.len(),
        prefixes_v6: policy.v6.len(),
        ports: policy.port_count(),
    };
    print(json, &report, |report| {
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
            output::table(&["RULE", "PORTS", "IPV4", "IPV6"], &rows),
            report.rules.len(),
            report.prefixes_v4,
            report.prefixes_v6,
            report.ports,
        )
    })
}
