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

use crate::{
    daemon::audit::AuditRecord,
    datapath::{AttachMode, flows::FlowTable},
    entries::Timestamp,
    policy::explain::{ExplainReport, ListedEntry},
};

/// Bumped on incompatible changes; the daemon refuses other versions.
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long the CLI waits for an answer by default ([`Command::default_wait`]).
const WAIT: Duration = Duration::from_secs(60);
const LONG_WAIT: Duration = Duration::from_secs(600);
/// How long sending a request may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Status,
    Stats,
    List {
        rule: Option<String>,
    },
    /// `port` as the CLI took it (`443`, `tcp/443`, `udp/4500`).
    Explain {
        source: String,
        port: String,
    },
    /// `since` as the CLI took it (a duration back from now, or a UTC
    /// time); `request`: only the records of the request with this id.
    AuditLog {
        since: Option<String>,
        /// Not sent when absent: a daemon of the release before, which does
        /// not know it, still answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    Allow(AllowRequest),
    Remove(RemoveRequest),
    Reload(ReloadRequest),
    /// Keeps the policy of a `reload --confirm`.
    Confirm,
    Feeds,
    /// Fetches one feed (all with `None`) now.
    FeedsRefresh {
        feed: Option<String>,
    },
    /// What each allowlisted entry admitted (`stats --entries`, `audit report`).
    Entries {
        rule: Option<String>,
    },
    /// Top and recent blocked sources, from the drop samples.
    Blocked,
    /// Streams each new blocked source as one `Response::BlockedSource` line.
    BlockedFollow,
}

impl Command {
    /// The name operators type, for messages and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Stats => "stats",
            Command::List { .. } => "list",
            Command::Explain { .. } => "explain",
            Command::AuditLog { .. } => "audit log",
            Command::Allow(_) => "allow",
            Command::Remove(_) => "remove",
            Command::Reload(_) => "reload",
            Command::Confirm => "confirm",
            Command::Feeds => "feeds",
            Command::FeedsRefresh { .. } => "feeds refresh",
            Command::Entries { .. } => "stats --entries",
            Command::Blocked => "blocked",
            Command::BlockedFollow => "blocked --follow",
        }
    }

    /// Whether the answer is built or streamed from a large state (every
    /// entry, the whole audit trail): served a few at a time, beside the
    /// policy writer.
    pub fn is_heavy(&self) -> bool {
        matches!(
            self,
            Command::List { .. } | Command::Entries { .. } | Command::AuditLog { .. }
        )
    }

    /// How long the CLI waits for the answer by default: a reload or a
    /// fetch of every feed may take minutes at the largest sizes.
    pub fn default_wait(&self) -> Duration {
        match self {
            Command::Reload(_) | Command::FeedsRefresh { .. } => LONG_WAIT,
            _ => WAIT,
        }
    }

    /// Whether the policy writer makes the change, and so refuses it when
    /// it could not start it by the request's deadline (a `feeds refresh`
    /// goes to the fetcher, which applies what it brings whenever it comes).
    pub fn is_deadlined_change(&self) -> bool {
        self.is_change() && !matches!(self, Command::FeedsRefresh { .. })
    }

    /// Whether the command changes policy state (and so needs root or
    /// `control_group`, not just `read_group`).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Command::Allow(_)
                | Command::Remove(_)
                | Command::Reload(_)
                | Command::Confirm
                | Command::FeedsRefresh { .. }
        )
    }
}

/// Arguments are sent as typed, and validated by the daemon with the same
/// code as the config, so the audit log records refused input as given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRequest {
    pub prefixes: Vec<String>,
    pub rule: Option<String>,
    pub comment: Option<String>,
    pub expires: Option<String>,
    /// Required (with the rule's `allow_any_source`) for broad prefixes.
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    pub prefixes: Vec<String>,
    pub rule: Option<String>,
    /// The caller's SSH session, for the lockout guard.
    pub ssh: Option<SshSession>,
    /// Cut the caller's SSH session anyway.
    pub force: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Roll back unless `confirm` comes within this long (`2m`).
    pub confirm: Option<String>,
    /// The caller's SSH session, for the lockout guard.
    pub ssh: Option<SshSession>,
    /// Cut the caller's SSH session anyway.
    pub force: bool,
}

/// Where the CLI's own SSH session comes from and goes to, from
/// `SSH_CONNECTION` (`client_ip client_port server_ip server_port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSession {
    pub client: std::net::IpAddr,
    pub port: u16,
}

impl SshSession {
    /// The session this process runs in, if any.
    pub fn from_env() -> Option<Self> {
        Self::parse(&std::env::var("SSH_CONNECTION").ok()?)
    }

    pub fn parse(connection: &str) -> Option<Self> {
        let fields: Vec<&str> = connection.split_whitespace().collect();
        let [client, _, _, port] = fields.as_slice() else {
            return None;
        };
        Some(Self {
            client: client.parse().ok()?,
            port: port.parse().ok()?,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub command: Command,
    /// The client's id for the request, recorded with what it did
    /// (`audit log --request ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When the policy writer must have started the request by (Unix time
    /// in milliseconds), or refuse it: a change never happens after its
    /// client stopped waiting for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    Stats(StatsReport),
    List(ListReport),
    Explain(ExplainReport),
    AuditLog(AuditLogReport),
    Change(ChangeReport),
    Reload(ReloadReport),
    Confirm(ConfirmReport),
    Feeds(FeedsReport),
    Entries(EntriesReport),
    Blocked(BlockedReport),
    BlockedSource(BlockedSource),
    Error(String),
}

/// `firewall-ctl stats --entries --json`: what each allowlisted entry
/// (rule + prefix) admitted, credited to the most specific entry of the
/// admitting rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesReport {
    pub generated_at: Timestamp,
    /// Since when the oldest entry's counters count: the period covered.
    pub counting_since: Option<Timestamp>,
    pub entries: Vec<EntryStats>,
}

/// One entry's counters and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStats {
    pub rule: String,
    pub prefix: crate::config::IpPrefix,
    /// Every origin listing it (`config`, `cli`, `feed:NAME`).
    pub origins: Vec<crate::entries::Origin>,
    /// Of a `cli` entry.
    pub comment: Option<String>,
    pub added_by: Option<crate::entries::Requester>,
    pub added_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// `false` when the entry has no counter (the counters were full);
    /// its numbers are then zero and mean nothing.
    pub counted: bool,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// When this entry's counters started (it was listed, or the maps
    /// were created).
    pub counting_since: Option<Timestamp>,
}

/// `firewall-ctl blocked --json`: sources whose packets were dropped, from
/// rate-limited samples (counts are samples, not packets; `stats` has the
/// exact drop totals).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedReport {
    /// Samples received since the daemon started.
    pub samples: u64,
    /// Samples per second per CPU the kernel may send (0: sampling off).
    pub sample_rate: u32,
    /// By samples, most first.
    pub top: Vec<BlockedSource>,
    /// By last seen, latest first.
    pub recent: Vec<BlockedSource>,
}

/// One blocked source, port, protocol and reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedSource {
    /// `null` for packets without one (malformed, not IP).
    pub source: Option<std::net::IpAddr>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    pub port: Option<u16>,
    pub reason: String,
    pub interface: String,
    pub samples: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// `firewall-ctl feeds --json` and `feeds refresh --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedsReport {
    pub feeds: Vec<FeedStatus>,
}

/// One feed, as `firewall-ctl feeds` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStatus {
    pub name: String,
    /// The URL, `file://` path or DNS names.
    pub source: String,
    pub format: String,
    /// Prefixes of the last good list in force, by family (after merging).
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    /// When the list in force was last confirmed current.
    pub data_time: Option<Timestamp>,
    /// Seconds since `data_time`.
    pub age_seconds: Option<u64>,
    pub next_attempt: Option<Timestamp>,
    /// Why the last attempt failed; `null` after a success.
    pub last_error: Option<String>,
    /// Older than the feed's `max_age`, or never fetched.
    pub stale: bool,
}

/// `firewall-ctl confirm --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmReport {
    /// When the rollback would have happened.
    pub rollback_was_due: Timestamp,
}

/// `firewall-ctl list --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReport {
    pub entries: Vec<ListedEntry>,
}

/// `firewall-ctl audit log --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLogReport {
    /// Oldest first.
    pub records: Vec<AuditRecord>,
    /// Lines that could not be read (a line torn by a crash).
    pub unreadable_lines: usize,
}

/// What happened to one prefix of an `allow` or `remove`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryChangeKind {
    Added,
    /// Already there; its comment or expiry changed.
    Updated,
    /// Already there, exactly so.
    Unchanged,
    /// The rule already lists it in the config file.
    InConfig,
    Removed,
}

impl EntryChangeKind {
    /// The name in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            EntryChangeKind::Added => "added",
            EntryChangeKind::Updated => "updated",
            EntryChangeKind::Unchanged => "unchanged",
            EntryChangeKind::InConfig => "in_config",
            EntryChangeKind::Removed => "removed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryChange {
    pub rule: String,
    pub prefix: String,
    pub change: EntryChangeKind,
    pub expires_at: Option<Timestamp>,
}

/// `firewall-ctl allow --json` and `firewall-ctl remove --json`. Sent only
/// once the change is durable and the data plane enforces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReport {
    pub changes: Vec<EntryChange>,
    /// Something went wrong after the change was applied (e.g. the audit
    /// log could not be written).
    pub warnings: Vec<String>,
}

/// `firewall-ctl reload --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub rules: usize,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub ports: usize,
    /// Map entries written to switch to the new policy.
    pub changed_map_entries: usize,
    /// With `--confirm`: when the daemon rolls back unless confirmed.
    pub rollback_at: Option<Timestamp>,
    pub warnings: Vec<String>,
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
    /// A reload is being read, compiled or written right now; `status`
    /// answers meanwhile from the policy still live.
    pub reload_in_progress: bool,
    /// Where runtime entries and the audit log live.
    pub state_dir: PathBuf,
    /// Where the maps and links are pinned.
    pub bpf_dir: PathBuf,
    /// Entries added with `firewall-ctl allow` (included in the prefix counts).
    pub runtime_entries: usize,
    /// When the next runtime entry expires.
    pub next_expiry: Option<Timestamp>,
    /// A `reload --confirm` waiting for `firewall-ctl confirm`: when the
    /// daemon rolls back to the previous config.
    pub rollback_at: Option<Timestamp>,
    /// Tracked flows (`track_outbound`), as of the last sweep (every few
    /// seconds); `None` when tracking is off.
    #[serde(default)]
    pub flows: Option<FlowTable>,
    /// Feeds by name whose data is older than their `max_age` (or never
    /// fetched), and whose last update failed.
    #[serde(default)]
    pub feeds_stale: Vec<String>,
    #[serde(default)]
    pub feeds_failing: Vec<String>,
}

/// One configured interface, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// The mode the kernel runs an XDP program in there, if any.
    pub xdp_mode: Option<AttachMode>,
    pub state: InterfaceState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    /// The kernel runs this daemon's program on it.
    Protected,
    /// It exists but does not run this daemon's program (being re-attached).
    Unprotected,
    /// No such interface right now; attached again when it appears.
    Missing,
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
    /// Packets per pass reason (`allowed` is the sum over rules;
    /// `return_traffic` the replies to flows the host started).
    pub passed: BTreeMap<String, u64>,
    pub passed_bytes: BTreeMap<String, u64>,
    /// The flow table now, with its evictions; `None` when tracking is off.
    #[serde(default)]
    pub flows: Option<FlowTable>,
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

/// A change whose outcome the CLI does not know: the daemon did not answer
/// within the wait. It is either applied or refused, and audited under its
/// request id either way.
#[derive(Debug, thiserror::Error)]
#[error(
    "pending: the daemon did not answer `{command}` within {}; it refuses a change it could not start by {deadline}, and applies one it started: `firewall-ctl audit log --request {id}` shows which",
    humantime::format_duration(*wait)
)]
pub struct Pending {
    pub command: &'static str,
    pub id: String,
    pub wait: Duration,
    pub deadline: Timestamp,
}

/// A new request id: unique on this host for a long while (process id,
/// time, and a random hash seed).
fn new_request_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Sends one request to the daemon at `socket` and returns its answer,
/// waiting up to `wait` (the command's default without one). The daemon
/// must start the request within half of the wait or refuse it; a change
/// not answered within the whole wait is [`Pending`].
pub fn call(socket: &Path, command: Command, wait: Option<Duration>) -> anyhow::Result<Response> {
    let wait = wait.unwrap_or_else(|| command.default_wait());
    let name = command.name();
    let deadlined = command.is_deadlined_change();
    let id = new_request_id();
    let deadline = std::time::SystemTime::now() + wait / 2;
    let request = Request {
        version: PROTOCOL_VERSION,
        command,
        id: Some(id.clone()),
        deadline_ms: Some(
            deadline
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        ),
    };
    let mut answers = send(socket, &request, Some(wait))?;
    match next_response(&mut answers, socket) {
        Ok(Some(response)) => Ok(response),
        Ok(None) => bail!(
            "the daemon at `{}` closed the connection without answering",
            socket.display()
        ),
        Err(err) if timed_out(&err) && deadlined => Err(Pending {
            command: name,
            id,
            wait,
            deadline: Timestamp(deadline),
        }
        .into()),
        Err(err) if timed_out(&err) => bail!(
            "the daemon at `{}` did not answer `{name}` within {}; {}",
            socket.display(),
            humantime::format_duration(wait),
            if matches!(name, "feeds refresh") {
                "the fetch goes on, and `firewall-ctl feeds` shows how it ended"
            } else {
                "try again, or wait longer with `--timeout`"
            }
        ),
        Err(err) => Err(err),
    }
}

/// Whether reading an answer failed for want of one in time.
fn timed_out(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>().is_some_and(|err| {
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}

/// Sends a streaming request (`blocked --follow`) and hands each answer
/// line to `each` until the daemon closes the stream or `each` fails.
pub fn follow(
    socket: &Path,
    command: Command,
    mut each: impl FnMut(Response) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let request = Request {
        version: PROTOCOL_VERSION,
        command,
        id: None,
        deadline_ms: None,
    };
    let mut answers = send(socket, &request, None)?;
    while let Some(response) = next_response(&mut answers, socket)? {
        each(response)?;
    }
    Ok(())
}

/// Connects, sends `request`, and returns the stream to read answers
/// from; `read_timeout` bounds the wait for each answer (`None`: forever).
fn send(
    socket: &Path,
    request: &Request,
    read_timeout: Option<Duration>,
) -> anyhow::Result<BufReader<UnixStream>> {
    let mut stream = UnixStream::connect(socket).map_err(|err| {
        if err.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "permission denied on the control socket `{}`: run as root, or as a member of the config's `control_group` (changes) or `read_group` (status, stats, list, explain, audit log)",
                socket.display()
            )
        } else {
            anyhow::anyhow!(
                "no firewall-ctl daemon is listening on `{}` ({err}); start it with `firewall-ctl daemon --config /etc/firewall-ctl/firewall.toml`, or pass the daemon's `--socket PATH`",
                socket.display()
            )
        }
    })?;
    stream.set_read_timeout(read_timeout)?;
    stream.set_write_timeout(Some(SEND_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("sending to the daemon at `{}`", socket.display()))?;
    Ok(BufReader::new(stream))
}

/// The next answer line; `None` when the daemon closed the stream. An
/// error answer is an error.
fn next_response(
    answers: &mut BufReader<UnixStream>,
    socket: &Path,
) -> anyhow::Result<Option<Response>> {
    let mut answer = String::new();
    if let Err(err) = answers.read_line(&mut answer) {
        return Err(anyhow::Error::from(err).context(format!(
            "reading the daemon's answer from `{}`",
            socket.display()
        )));
    }
    if answer.is_empty() {
        return Ok(None);
    }
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon at `{}` sent an answer this CLI does not understand; are both the same version?", socket.display()))?;
    match response {
        Response::Error(message) => bail!("{}", crate::text::escape_controls_in_lines(&message)),
        response => Ok(Some(response)),
    }
}
