//! The control protocol: one JSON request line, one JSON response line,
//! over the daemon's Unix socket. Field names are stable; `--json` output
//! of the CLI is exactly these reports.
//!
//! A leaf: it names the wire types and nothing of the daemon, the policy
//! or the data plane, which convert their state into these. The client
//! side (connecting, waiting, streaming) is [`crate::client`]'s.

mod audit;
mod reports;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::{audit::*, reports::*};

/// Bumped on incompatible changes; the daemon refuses other versions.
pub const PROTOCOL_VERSION: u32 = 3;

/// Longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long the CLI waits for an answer by default ([`Command::default_wait`]).
const WAIT: Duration = Duration::from_secs(60);
const LONG_WAIT: Duration = Duration::from_secs(600);

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
    /// `explain --feed` / `--file`: whether every address of `feed`'s list,
    /// or of `ranges` (addresses or prefixes), would be admitted on `port`
    /// (as the CLI took it).
    Coverage {
        port: String,
        feed: Option<String>,
        ranges: Vec<String>,
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
            Command::Coverage { feed: Some(_), .. } => "explain --feed",
            Command::Coverage { feed: None, .. } => "explain --file",
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
            Command::List { .. }
                | Command::Entries { .. }
                | Command::AuditLog { .. }
                | Command::Coverage { .. }
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
    Coverage(CoverageReport),
    AuditLog(AuditLogReport),
    Change(ChangeReport),
    Reload(ReloadReport),
    Confirm(ConfirmReport),
    Feeds(FeedsReport),
    Entries(EntriesReport),
    Blocked(BlockedReport),
    BlockedSource(BlockedSource),
    Error(CommandError),
}

impl From<CommandError> for Response {
    fn from(error: CommandError) -> Self {
        Response::Error(error)
    }
}

pub fn mode_name(enforce: bool) -> String {
    if enforce { "enforce" } else { "monitor" }.to_string()
}

/// What kind of failure an error answer reports: a stable name on the wire
/// (`--json` prints it), and the CLI's exit code. [`ErrorKind::summary`]
/// says what each means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidInput,
    PermissionDenied,
    Conflict,
    NotFound,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::InvalidInput,
        ErrorKind::PermissionDenied,
        ErrorKind::Conflict,
        ErrorKind::NotFound,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// What it means for the operator (the manual's and the README's words).
    pub const fn summary(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => {
                "The request, an argument or the config is malformed or not allowed as given: fix it and run it again. Nothing was changed."
            }
            ErrorKind::PermissionDenied => {
                "The caller may not do this (root, control_group or read_group). Nothing was changed."
            }
            ErrorKind::Conflict => {
                "Valid, but the daemon's state refuses it now: a reload waits for confirmation, the entry comes from the config file, the allowlist is full, or it would cut the caller's SSH session. Nothing was changed."
            }
            ErrorKind::NotFound => {
                "It names a rule, an entry or a feed that does not exist. Nothing was changed."
            }
            ErrorKind::Unavailable => {
                "The daemon cannot take it now (not running, busy, shutting down, or it could not start the change by its deadline): try again. Nothing was changed."
            }
            ErrorKind::Internal => {
                "The daemon or the host failed (a map or a file could not be written); the message says what was changed, if anything."
            }
        }
    }
}

/// An error answer: what kind of failure, and what happened and how to go
/// on, for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The same error with `context` before its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Self {
            message: format!("{context}: {}", self.message),
            ..self
        }
    }
}
