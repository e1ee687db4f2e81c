//! The audit record: one line of `audit.log`, and what `audit log --json`
//! prints. The daemon's `audit` module writes, bounds and reads them.

use serde::{Deserialize, Serialize};

use crate::entries::{Requester, Timestamp};

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Allow,
    Remove,
    Expire,
    Reload,
    /// A `reload --confirm` kept.
    Confirm,
    /// A `reload --confirm` undone because no `confirm` came in time.
    Rollback,
    /// A read-only command refused for lack of permission.
    Read,
    /// A feed's fetched list applied, or refused (the last good one stays).
    FeedUpdate,
    /// `feeds refresh`, refused for lack of permission.
    FeedsRefresh,
    /// How many more requests of one caller were denied and not recorded
    /// one by one (`suppressed`).
    DeniedRequests,
}

impl Action {
    /// The name in the log and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Allow => "allow",
            Action::Remove => "remove",
            Action::Expire => "expire",
            Action::Reload => "reload",
            Action::Confirm => "confirm",
            Action::Rollback => "rollback",
            Action::Read => "read",
            Action::FeedUpdate => "feed_update",
            Action::FeedsRefresh => "feeds_refresh",
            Action::DeniedRequests => "denied_requests",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The change is live and durable.
    Applied,
    /// Valid, but there was nothing to change.
    Unchanged,
    /// Invalid input or a failure; nothing was changed.
    Rejected,
    /// The requester may not do this; nothing was changed.
    Denied,
}

/// One line of `audit.log` (`firewall-ctl audit log --json` prints these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: Timestamp,
    pub action: Action,
    pub rule: Option<String>,
    /// The prefixes as given (a rejected attempt may hold invalid text);
    /// of a denied request, the first few.
    pub prefixes: Vec<String>,
    pub comment: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// From the socket's peer credentials; `null` for SIGHUP and expiry.
    pub user: Option<Requester>,
    pub outcome: Outcome,
    /// What changed, or why it was refused.
    pub detail: Option<String>,
    /// The feed of a `feed_update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    /// Of a denied request: how many prefixes it named, and the SHA-256 of
    /// them joined by newlines, when `prefixes` holds only the first few.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_sha256: Option<String>,
    /// The id the CLI gave the request (`audit log --request ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Of a `denied_requests` record: how many requests it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}
