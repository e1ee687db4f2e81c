//! `firewall-ctl`: the daemon that enforces a source allowlist for exposed
//! ports in XDP, and the CLI that talks to it.

mod api;
mod check;
mod config;
mod daemon;
mod datapath;
mod output;
mod policy;
mod system;

use std::{io::Write as _, path::PathBuf, process::ExitCode};

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
        CliCommand::Check { config } => print(cli.json, &check::report(config)?, output::check),
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
