//! The reports the daemon answers with: `--json` prints exactly these,
//! so their field names are stable.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::AuditRecord;
use crate::{
    config::IpPrefix,
    entries::{Origin, Requester, Timestamp},
};

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
    pub prefix: IpPrefix,
    /// Every origin listing it (`config`, `cli`, `feed:NAME`).
    pub origins: Vec<Origin>,
    /// Of a `cli` entry.
    pub comment: Option<String>,
    pub added_by: Option<Requester>,
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

/// One effective allowlist entry (`firewall-ctl list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedEntry {
    pub rule: String,
    pub prefix: IpPrefix,
    /// `config` or `cli`.
    pub origin: Origin,
    pub comment: Option<String>,
    /// Who added a `cli` entry; `null` for config entries.
    pub added_by: Option<Requester>,
    pub added_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

/// An entry as `explain` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    pub prefix: IpPrefix,
    pub origin: Origin,
}

/// A rule that admits the packet, and its most specific entry holding the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub rule: String,
    pub entry: EntryRef,
}

/// `explain --feed` / `explain --file`: whether every address of a list
/// of ranges would be admitted on one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageReport {
    /// `tcp/443` or `udp/4500`.
    pub port: String,
    /// The feed whose list was checked (`None`: a list the CLI sent).
    pub feed: Option<String>,
    /// `enforce`, or `monitor` (what is not admitted is only counted).
    pub mode: String,
    /// How many of `ranges` are admitted whole.
    pub admitted: usize,
    pub ranges: Vec<RangeCoverage>,
}

/// One range of a coverage check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeCoverage {
    pub range: IpPrefix,
    /// Every address of the range is admitted.
    pub admitted: bool,
    /// When one entry holds the whole range: the rule credited (the first
    /// admitting rule in config order) and its most specific entry.
    pub rule: Option<String>,
    pub entry: Option<EntryRef>,
    /// Otherwise: entries inside the range that admit parts of it (the
    /// first few, by address), and how many more there are.
    pub parts: Vec<Admission>,
    pub more_parts: usize,
    /// The parts of the range not admitted, as prefixes (the first few),
    /// and how many more there are.
    pub not_admitted: Vec<IpPrefix>,
    pub more_not_admitted: usize,
    /// Why those parts are not admitted, and the command that would admit
    /// them, if one would.
    pub why: Option<String>,
    pub fix: Option<String>,
}

/// A rule that exposes the port but does not list the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposingRule {
    pub rule: String,
    /// Up to `explain`'s `NEAREST` entries of the source's family that share the
    /// longest leading bits with it, nearest first.
    pub nearest: Vec<EntryRef>,
}

/// `firewall-ctl explain --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    pub source: IpAddr,
    /// `tcp/443` or `udp/4500`.
    pub port: String,
    /// `pass` or `drop`: what the policy decides.
    pub verdict: String,
    /// The counter the packet lands in: `allowed`, `not_allowlisted` or `port_closed`.
    pub reason: String,
    /// `enforce`, or `monitor` (a `drop` is only counted, and the packet passes).
    pub mode: String,
    /// The rule credited in `stats` (the first admitting rule in config order).
    pub rule: Option<String>,
    /// That rule's most specific entry holding the source.
    pub entry: Option<EntryRef>,
    /// Every rule that admits the packet, in config order.
    pub admitted_by: Vec<Admission>,
    /// For `not_allowlisted`: the rules exposing the port and what they
    /// list nearest to the source.
    pub exposing_rules: Vec<ExposingRule>,
    /// `explain --config`: the feeds whose lists the answer could not
    /// include, and why (the daemon's answer has every list in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds_not_considered: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feeds_note: Option<String>,
}

/// The XDP mode an interface actually runs in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Driver,
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        })
    }
}

/// Flows in the table, by protocol, and what the table has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTable {
    /// Live (not timed out) flows.
    pub tcp: u64,
    pub udp: u64,
    pub icmp: u64,
    /// Size of the table (`max_flows`).
    pub capacity: u32,
    /// Flows the egress program created, ever (with these maps).
    pub created: u64,
    /// Flows the table's LRU evicted to make room: created, minus swept
    /// (timed out, deleted by the daemon), minus live.
    pub evicted: u64,
}
