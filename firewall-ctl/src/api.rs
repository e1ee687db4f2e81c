//! The control protocol: one JSON request line, one JSON response line,
//! over the daemon's Unix socket. Field names are stable; `--json` output
//! of the CLI is exactly these reports.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::datapath::AttachMode;

/// Bumped on incompatible changes; the daemon refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Status,
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub command: Command,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    Stats(StatsReport),
    Error(String),
}

/// `firewall-ctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub daemon_version: String,
    pub config: PathBuf,
    pub uptime_seconds: u64,
    /// `"enforce"` or `"monitor"`.
    pub mode: String,
    pub interfaces: Vec<InterfaceStatus>,
    pub rules: usize,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub ports: usize,
    /// Unix time the live policy was applied.
    pub policy_applied_at: u64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected reloads since start (the running policy was kept).
    pub reloads_rejected: u64,
    /// Why the last reload was rejected, if it was; cleared by a good one.
    pub last_reload_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// The mode actually in use.
    pub xdp_mode: AttachMode,
}

/// `firewall-ctl stats`. Counters run from daemon start; a rule keeps its
/// counts across reloads as long as its name stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// `"enforce"` or `"monitor"` (in monitor mode `drops` counts what
    /// would have been dropped).
    pub mode: String,
    pub rules: Vec<RuleStats>,
    /// Packets per drop reason.
    pub drops: BTreeMap<String, u64>,
    pub drop_bytes: BTreeMap<String, u64>,
    /// Packets per pass reason (`allowed` is the sum over rules).
    pub passed: BTreeMap<String, u64>,
    pub passed_bytes: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

pub fn mode_name(enforce: bool) -> String {
    if enforce { "enforce" } else { "monitor" }.to_string()
}

/// Sends one request to the daemon at `socket` and returns its answer.
pub fn call(socket: &Path, command: Command) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|err| {
        anyhow::anyhow!(
            "no firewall-ctl daemon is listening on `{}` ({err}); start it with `firewall-ctl daemon --config /etc/firewall-ctl/firewall.toml`, or pass the daemon's `--socket PATH`",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = serde_json::to_vec(&Request {
        version: PROTOCOL_VERSION,
        command,
    })?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("sending to the daemon at `{}`", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the daemon's answer from `{}`", socket.display()))?;
    if answer.is_empty() {
        bail!(
            "the daemon at `{}` closed the connection without answering",
            socket.display()
        );
    }
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon at `{}` sent an answer this CLI does not understand; are both the same version?", socket.display()))?;
    match response {
        Response::Error(message) => bail!("the daemon refused: {message}"),
        response => Ok(response),
    }
}
