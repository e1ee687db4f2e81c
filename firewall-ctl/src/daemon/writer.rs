//! The one writer of policy state: runtime entries, the state file, the
//! data plane's maps and the audit log change only here, one request at a
//! time, on a thread of its own so the async side (socket, signals) never
//! waits on file or map I/O.
//!
//! Every change follows the same order: validate everything, update the
//! compiled policy, write the data plane's idle slot, make the state file
//! durable, switch the slot live, append to the audit log, answer. A
//! failure before the switch undoes the in-memory change and leaves the
//! live policy and the state file as they were.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use firewall_common::reasons::Reason;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{
    Job, PolicyStatus,
    audit::AuditLog,
    server::{self, Access},
    state::{PendingReload, STATE_VERSION, StateStore},
};
use crate::{
    api::{
        self, Action, AllowRequest, AuditRecord, ChangeReport, Command, CommandError,
        ConfirmReport, EntryChange, EntryChangeKind, ErrorKind, FlowTable, Outcome, ReloadReport,
        ReloadRequest, RemoveRequest, Response, RuleStats, SshSession, StatsReport, StatusReport,
    },
    config::{self, Config, IpPrefix, SourceError},
    datapath::{Attachment, Datapath, Delta},
    entries::{self, EntryKey, Requester, RuntimeEntries, RuntimeEntry, Timestamp},
    feeds::FeedLists,
    policy::{self, CompiledPolicy, PolicyDiff, explain, guard},
    text::escape_controls,
};

/// Longest `--comment`.
const MAX_COMMENT: usize = 1024;
/// How soon a failed expiry is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);
/// How often timed-out flows are deleted and the flow table counted.
pub const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long after a change the idle slot catches up with the live one.
const CATCH_UP_DELAY: Duration = Duration::from_millis(300);

/// Everything the writer owns.
pub struct Writer {
    pub config_path: PathBuf,
    pub overrides: super::Overrides,
    pub socket: PathBuf,
    /// The config, the runtime entries and the feeds' lists are shared
    /// with heavy reads ([`Job::Snapshot`]) and copied on write while one
    /// holds them.
    pub config: Arc<Config>,
    pub runtime: Arc<RuntimeEntries>,
    /// Each feed's last good list in force.
    pub feeds: Arc<FeedLists>,
    /// What else the writer knows of each feed.
    pub feed_meta: BTreeMap<String, super::feeds::FeedMeta>,
    pub feed_store: crate::feeds::store::FeedStore,
    /// The config's feeds, for the scheduler that fetches them.
    pub feed_configs: watch::Sender<Vec<config::Feed>>,
    /// Shared with the data plane while its idle slot still holds an
    /// older policy (see [`Delta::From`]).
    pub policy: Arc<CompiledPolicy>,
    pub datapath: Datapath,
    pub store: StateStore,
    pub audit: AuditLog,
    /// Where the status is published, once the server listens.
    pub status: Option<watch::Sender<Arc<PolicyStatus>>>,
    /// The kernel's id of this daemon's XDP program.
    pub program_id: u32,
    pub applied_at: SystemTime,
    pub reloads: u64,
    pub reloads_rejected: u64,
    pub last_reload_error: Option<String>,
    pub reload_in_progress: bool,
    /// A `reload --confirm` waiting for `confirm`.
    pub pending: Option<Pending>,
    /// Set after an expiry could not be applied: when to try again.
    pub expiry_retry_at: Option<SystemTime>,
    /// The flow table as of the last sweep; `None` when tracking is off.
    pub flows: Option<FlowTable>,
    /// When the flow table is swept next.
    pub next_flow_sweep: SystemTime,
    /// When feeds' ages are checked against their `max_age` next.
    pub next_staleness_check: SystemTime,
    /// When the idle policy slot is brought up to date with the live one,
    /// if a change left it behind: a moment after the change, so a burst
    /// of `allow`s is not slowed at each step, and the next change writes
    /// only its own keys.
    pub catch_up_at: Option<SystemTime>,
    /// Feeds found stale (and warned about) at the last check.
    pub warned_stale: BTreeSet<String>,
    /// The id of the request being handled, for its audit records.
    pub request_id: Option<String>,
}

/// A reload that rolls back unless confirmed.
pub struct Pending {
    pub rollback_at: Timestamp,
    /// The config before the reload, and its text.
    pub previous: Config,
    pub previous_text: String,
}

/// Longest `--confirm` window: long enough to test from outside, short
/// enough that a lost session gets its access back the same day.
const MAX_CONFIRM_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Parses `reload --confirm` (`90s`, `2m`) into the rollback time.
fn parse_confirm_window(text: &str) -> Result<Timestamp, CommandError> {
    match humantime::parse_duration(text) {
        Ok(window) if !window.is_zero() && window <= MAX_CONFIRM_WINDOW => {
            Ok(Timestamp(SystemTime::now() + window))
        }
        _ => Err(CommandError::invalid_input(format!(
            "`--confirm {}` is not a duration between 1s and 24h; write e.g. `--confirm 2m`",
            escape_controls(text)
        ))),
    }
}

/// When a change is saved, relative to going live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Saved before it goes live (`allow`, `remove`): what is acknowledged
    /// survives a crash, and a change that cannot be saved is not made.
    Required,
    /// Live first, then saved if the disk allows (expiry): an expired entry
    /// must stop admitting traffic even on a full disk, and one left in the
    /// file is dropped at the next start anyway.
    BestEffort,
}

/// One runtime entry to set (`Some`) or remove (`None`).
struct Edit {
    key: EntryKey,
    rule: usize,
    entry: Option<RuntimeEntry>,
}

/// A change that was applied, for the reply and the audit record.
struct Applied {
    changes: Vec<EntryChange>,
    warnings: Vec<String>,
}

impl Writer {
    /// The status the socket answers with, without asking this thread.
    pub fn snapshot(&self) -> PolicyStatus {
        PolicyStatus {
            report: StatusReport {
                pid: std::process::id(),
                daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                config: self.config_path.clone(),
                uptime_seconds: 0,
                mode: api::mode_name(self.policy.enforce),
                // Filled in by the server from the link watcher.
                interfaces: Vec::new(),
                rules: self.policy.rule_names.len(),
                prefixes_v4: self.policy.v4.len(),
                prefixes_v6: self.policy.v6.len(),
                ports: self.policy.ports.len(),
                policy_applied_at: self
                    .applied_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |age| age.as_secs()),
                reloads: self.reloads,
                reloads_rejected: self.reloads_rejected,
                last_reload_error: self.last_reload_error.clone(),
                reload_in_progress: self.reload_in_progress,
                state_dir: self.config.state_dir.clone(),
                bpf_dir: self.config.bpf_dir.clone(),
                runtime_entries: self.runtime.len(),
                next_expiry: entries::next_expiry(&self.runtime),
                rollback_at: self.pending.as_ref().map(|pending| pending.rollback_at),
                flows: self.flows,
                feeds_stale: self.stale_feeds(),
                feeds_failing: self
                    .feed_meta
                    .iter()
                    .filter(|(_, meta)| meta.last_error.is_some())
                    .map(|(name, _)| name.clone())
                    .collect(),
            },
            access: Access::of(&self.config),
            interfaces: self.config.interfaces.clone(),
            program_id: self.program_id,
            sample_rate: self.config.sample_rate,
        }
    }

    pub(super) fn publish(&self) {
        if let Some(status) = &self.status {
            status.send_replace(Arc::new(self.snapshot()));
        }
    }

    /// Serves jobs until the daemon drops the sending side; expires
    /// entries on time in between.
    pub fn run(mut self, jobs: mpsc::Receiver<Job>) {
        // So the first change writes only its diff.
        self.catch_up_idle_slot();
        loop {
            let wake = [
                entries::next_expiry(&self.runtime).map(|at| at.0),
                self.expiry_retry_at,
                self.pending.as_ref().map(|pending| pending.rollback_at.0),
                self.config.track_outbound.then_some(self.next_flow_sweep),
                (!self.config.feeds.is_empty()).then_some(self.next_staleness_check),
                self.catch_up_at,
                self.audit.next_summary_at(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = wake.map_or(Duration::from_secs(3600), |at| {
                at.duration_since(SystemTime::now()).unwrap_or_default()
            });
            match jobs.recv_timeout(timeout) {
                Ok(job) => {
                    self.handle(job);
                    // Not postponed by later jobs: frequent reads (metrics
                    // scrapes) must not keep the idle slot behind.
                    self.catch_up_at = match self.catch_up_at {
                        None if self.datapath.idle_lags() => {
                            Some(SystemTime::now() + CATCH_UP_DELAY)
                        }
                        scheduled => scheduled,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if self.catch_up_at.is_some_and(|at| at <= SystemTime::now()) {
                self.catch_up_idle_slot();
            }
            self.expire_due();
            self.roll_back_if_due();
            self.save_ledger_if_changed();
            if self.config.track_outbound && self.next_flow_sweep <= SystemTime::now() {
                self.sweep_flows();
            }
            if self.next_staleness_check <= SystemTime::now() {
                self.warn_about_stale_feeds();
            }
            if let Err(err) = self.audit.write_due_summaries() {
                error!(error = %err, "appending to the audit log failed");
            }
        }
    }

    /// Writes the live policy into the idle slot where it differs, and
    /// gives back the memory the last change needed.
    fn catch_up_idle_slot(&mut self) {
        self.catch_up_at = None;
        if !self.datapath.idle_lags() {
            return;
        }
        if let Err(err) = self.datapath.prepare_idle(&self.policy) {
            warn!(error = %err, "bringing the idle policy slot up to date failed; the next change will rewrite it whole");
        }
        self.save_ledger_if_changed();
        crate::system::return_free_memory();
    }

    /// Deletes timed-out flows and publishes the table's counts; warns
    /// when the table evicted flows since the last sweep.
    fn sweep_flows(&mut self) {
        self.next_flow_sweep = SystemTime::now() + FLOW_SWEEP_INTERVAL;
        match self.datapath.sweep_flows(false) {
            Ok(table) => {
                let evicted_before = self.flows.map_or(table.evicted, |before| before.evicted);
                if table.evicted > evicted_before {
                    warn!(
                        evicted = table.evicted - evicted_before,
                        max_flows = table.capacity,
                        "the flow table is full: the least recently used flows were evicted, and replies to them are dropped; raise `flows.max_flows`"
                    );
                }
                self.flows = Some(table);
                self.publish();
            }
            Err(err) => warn!(error = %err, "sweeping the flow table failed"),
        }
    }

    /// Saves the counter ledger if a write gave a slot other rules.
    fn save_ledger_if_changed(&mut self) {
        if let Some(ledger) = self.datapath.take_changed_ledger() {
            self.store.save_ledger(&ledger);
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Denied(record) => {
                if let Err(err) = self.audit.deny(&record) {
                    error!(error = %err, "appending to the audit log failed");
                }
            }
            Job::Snapshot(reply) => {
                let _ = reply.send(self.read_view());
            }
            Job::Reattach(interfaces) => self.reattach(interfaces),
            Job::Feed(job) => self.feed_fetched(job),
            Job::Metrics(reply) => {
                let _ = reply.send(self.metrics_snapshot());
            }
            Job::Ping(answer) => {
                let _ = answer.send(());
            }
            Job::Command {
                command,
                requester,
                reply,
                request_id,
                deadline,
            } => {
                self.request_id = request_id;
                let response = if let Some(deadline) = deadline.filter(|at| *at < SystemTime::now())
                {
                    self.too_late(&command, requester, deadline)
                } else {
                    self.answer(command, requester)
                };
                self.request_id = None;
                if let Some(reply) = reply {
                    let _ = reply.send(response);
                }
            }
        }
    }

    /// Refuses a request the writer could only take after its deadline:
    /// its client may have stopped waiting, and must never see a change
    /// it was told failed happen later. A change refused so is audited.
    fn too_late(
        &mut self,
        command: &Command,
        requester: Option<Requester>,
        deadline: SystemTime,
    ) -> Response {
        let action = match command {
            Command::Allow(_) => Some(Action::Allow),
            Command::Remove(_) => Some(Action::Remove),
            Command::Reload(_) => Some(Action::Reload),
            Command::Confirm => Some(Action::Confirm),
            _ => None,
        };
        let message = format!(
            "{}the daemon was busy until after this request's deadline ({}), so it was not started; try again",
            if action.is_some() {
                "nothing was changed: "
            } else {
                ""
            },
            Timestamp(deadline)
        );
        if let Some(action) = action {
            warn!(command = command.name(), user = %describe(requester.as_ref()), "a change waited past its deadline; refused");
            let mut record = AuditRecord::new(action, requester, Outcome::Rejected);
            if let Command::Allow(AllowRequest { rule, prefixes, .. })
            | Command::Remove(RemoveRequest { rule, prefixes, .. }) = command
            {
                record.rule = rule.clone();
                record.prefixes = prefixes.clone();
            }
            record.detail = Some(message.clone());
            self.record(&record);
        }
        CommandError::unavailable(message).into()
    }

    /// The state heavy reads are built from: shared pointers, no copy.
    fn read_view(&self) -> Result<super::reads::ReadView, CommandError> {
        Ok(super::reads::ReadView {
            config: Arc::clone(&self.config),
            runtime: Arc::clone(&self.runtime),
            feeds: Arc::clone(&self.feeds),
            usage: Some(self.datapath.usage_reader().map_err(|err| {
                CommandError::internal(format!("reading the entry counters failed: {err}"))
            })?),
        })
    }

    fn answer(&mut self, command: Command, requester: Option<Requester>) -> Response {
        match command {
            Command::Stats => match self.stats() {
                Ok(report) => Response::Stats(report),
                Err(err) => CommandError::internal(format!("{err:#}")).into(),
            },
            Command::Explain { source, port } => match explain::parse_query(&source, &port) {
                Ok((source, port)) => Response::Explain(explain::explain(
                    &self.config,
                    &self.runtime,
                    &self.feeds,
                    &self.policy,
                    source,
                    port,
                )),
                Err(message) => CommandError::invalid_input(message).into(),
            },
            Command::Allow(request) => self.allow(request, requester),
            Command::Remove(request) => self.remove(request, requester),
            Command::Reload(request) => self.reload(request, requester),
            Command::Confirm => self.confirm(requester),
            Command::Feeds => Response::Feeds(self.feeds_report()),
            // Answered by the server, from the published status or from a
            // snapshot (heavy reads).
            Command::Status
            | Command::List { .. }
            | Command::Entries { .. }
            | Command::AuditLog { .. }
            | Command::FeedsRefresh { .. }
            | Command::Blocked
            | Command::BlockedFollow => {
                CommandError::internal("answered by the server, not the writer").into()
            }
        }
    }

    /// Appends to the audit log; a failure is logged, never fatal.
    pub(super) fn record(&mut self, record: &AuditRecord) -> Option<String> {
        let with_id;
        let record = match &self.request_id {
            Some(id) if record.request_id.is_none() => {
                with_id = AuditRecord {
                    request_id: Some(id.clone()),
                    ..record.clone()
                };
                &with_id
            }
            _ => record,
        };
        match self.audit.append(record) {
            Ok(()) => None,
            Err(err) => {
                let message = format!("appending to the audit log failed: {err}");
                error!(error = %err, "appending to the audit log failed");
                Some(message)
            }
        }
    }

    fn rule_index(&self, name: &str) -> Result<usize, CommandError> {
        self.config
            .rule_index(name)
            .map_err(CommandError::not_found)
    }

    /// Answers a change and audits it, applied or refused.
    fn audited(
        &mut self,
        mut record: AuditRecord,
        result: Result<Applied, CommandError>,
    ) -> Response {
        match result {
            Ok(mut applied) => {
                let changed = applied.changes.iter().any(|change| {
                    matches!(
                        change.change,
                        EntryChangeKind::Added
                            | EntryChangeKind::Updated
                            | EntryChangeKind::Removed
                    )
                });
                record.outcome = if changed {
                    Outcome::Applied
                } else {
                    Outcome::Unchanged
                };
                record.detail = Some(
                    applied
                        .changes
                        .iter()
                        .map(|change| format!("{} {}", change.prefix, change.change.name()))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                if changed {
                    self.publish();
                    info!(action = ?record.action, rule = record.rule.as_deref().unwrap_or("-"), prefixes = ?record.prefixes, user = %describe(record.user.as_ref()), detail = record.detail.as_deref().unwrap_or_default(), "allowlist changed");
                }
                applied.warnings.extend(self.record(&record));
                Response::Change(ChangeReport {
                    changes: applied.changes,
                    warnings: applied.warnings,
                })
            }
            Err(error) => {
                warn!(action = ?record.action, user = %describe(record.user.as_ref()), error = %error, kind = error.kind.name(), "allowlist change refused");
                record.outcome = Outcome::Rejected;
                record.detail = Some(error.message.clone());
                self.record(&record);
                error.into()
            }
        }
    }

    fn allow(&mut self, request: AllowRequest, requester: Option<Requester>) -> Response {
        let mut record = AuditRecord::new(Action::Allow, requester.clone(), Outcome::Rejected);
        record.rule = request.rule.clone();
        record.prefixes = request.prefixes.clone();
        record.comment = request.comment.clone();
        let result = self.try_allow(&request, requester, &mut record);
        self.audited(record, result)
    }

    fn try_allow(
        &mut self,
        request: &AllowRequest,
        requester: Option<Requester>,
        record: &mut AuditRecord,
    ) -> Result<Applied, CommandError> {
        let added_by =
            requester.ok_or_else(|| CommandError::internal("`allow` needs a requester"))?;
        let rule = match &request.rule {
            Some(name) => self.rule_index(name)?,
            None => {
                let name = self
                    .config
                    .default_rule()
                    .map_err(CommandError::invalid_input)?
                    .name
                    .clone();
                self.rule_index(&name)?
            }
        };
        let rule_config = &self.config.rules[rule];
        let rule_name = rule_config.name.clone();
        record.rule = Some(rule_name.clone());
        if let Some(pending) = &self.pending
            && pending.previous.rule(&rule_name).is_none()
        {
            return Err(CommandError::conflict(format!(
                "rule `{rule_name}` comes with the reload that waits for confirmation until {}; run `firewall-ctl confirm` first, so a rollback cannot strand the entry",
                pending.rollback_at
            )));
        }
        if request.prefixes.is_empty() {
            return Err(CommandError::invalid_input(
                "give at least one prefix, e.g. `firewall-ctl allow 203.0.113.0/24`",
            ));
        }
        if let Some(comment) = &request.comment {
            if comment.chars().any(char::is_control) {
                return Err(CommandError::invalid_input(
                    "the comment contains control characters (a newline, an escape, ...); write it on one line of plain text",
                ));
            }
            if comment.len() > MAX_COMMENT {
                return Err(CommandError::invalid_input(format!(
                    "the comment is longer than {MAX_COMMENT} bytes; shorten it"
                )));
            }
        }
        let expires_at = request
            .expires
            .as_deref()
            .map(|text| entries::parse_expiry(text, SystemTime::now()))
            .transpose()
            .map_err(CommandError::invalid_input)?;
        record.expires_at = expires_at;
        let broad_allowed = request.force && rule_config.allow_any_source;
        let mut prefixes = Vec::new();
        let mut problems = Vec::new();
        for text in &request.prefixes {
            match config::parse_source(text, broad_allowed) {
                Ok(prefix) if !prefixes.contains(&prefix) => prefixes.push(prefix),
                Ok(_) => {}
                Err(err @ SourceError::Broad { .. }) => problems.push(CommandError::invalid_input(format!(
                    "{err}; {}",
                    if rule_config.allow_any_source {
                        "pass `--force` if that is intended".to_string()
                    } else {
                        format!(
                            "rule `{rule_name}` does not allow that: it needs `allow_any_source = true` in the config, and the command `--force`"
                        )
                    }
                ))),
                Err(err) => problems.push(CommandError::invalid_input(err.to_string())),
            }
        }
        refuse_if_any(problems)?;
        self.policy
            .check_room_for(&prefixes)
            .map_err(|err| CommandError::conflict(format!("{err}; nothing was changed")))?;
        let mut kinds = Vec::new();
        let mut edits = Vec::new();
        for prefix in prefixes {
            let key = (rule_name.clone(), prefix);
            let kind = if rule_config.lists(&prefix) {
                EntryChangeKind::InConfig
            } else if let Some(existing) = self.runtime.get(&key) {
                let updated = RuntimeEntry {
                    comment: request.comment.clone().or_else(|| existing.comment.clone()),
                    expires_at: expires_at.or(existing.expires_at),
                    ..existing.clone()
                };
                if updated == *existing {
                    EntryChangeKind::Unchanged
                } else {
                    edits.push(Edit {
                        key: key.clone(),
                        rule,
                        entry: Some(updated),
                    });
                    EntryChangeKind::Updated
                }
            } else {
                edits.push(Edit {
                    key: key.clone(),
                    rule,
                    entry: Some(RuntimeEntry {
                        rule: rule_name.clone(),
                        prefix,
                        comment: request.comment.clone(),
                        added_by: added_by.clone(),
                        added_at: Timestamp::now(),
                        expires_at,
                    }),
                });
                EntryChangeKind::Added
            };
            kinds.push((key, kind));
        }
        self.commit(edits, Durability::Required, None)?;
        let changes = kinds
            .into_iter()
            .map(|(key, change)| EntryChange {
                expires_at: self.runtime.get(&key).and_then(|entry| entry.expires_at),
                rule: key.0,
                prefix: key.1.to_string(),
                change,
            })
            .collect();
        Ok(Applied {
            changes,
            warnings: Vec::new(),
        })
    }

    fn remove(&mut self, request: RemoveRequest, requester: Option<Requester>) -> Response {
        let mut record = AuditRecord::new(Action::Remove, requester, Outcome::Rejected);
        record.rule = request.rule.clone();
        record.prefixes = request.prefixes.clone();
        let result = self.try_remove(&request, &mut record);
        self.audited(record, result)
    }

    fn try_remove(
        &mut self,
        request: &RemoveRequest,
        record: &mut AuditRecord,
    ) -> Result<Applied, CommandError> {
        if request.prefixes.is_empty() {
            return Err(CommandError::invalid_input(
                "give at least one prefix to remove",
            ));
        }
        if let Some(name) = &request.rule {
            self.rule_index(name)?;
        }
        let mut problems = Vec::new();
        let mut edits: Vec<Edit> = Vec::new();
        for text in &request.prefixes {
            let prefix: IpPrefix = match text.parse() {
                Ok(prefix) => prefix,
                Err(err) => {
                    problems.push(CommandError::invalid_input(err.to_string()));
                    continue;
                }
            };
            match self.runtime_rule_of(prefix, request.rule.as_deref()) {
                Ok(rule) => {
                    let key = (rule.clone(), prefix);
                    if !edits.iter().any(|edit| edit.key == key) {
                        edits.push(Edit {
                            key,
                            rule: self.rule_index(&rule)?,
                            entry: None,
                        });
                    }
                }
                Err(error) => problems.push(error),
            }
        }
        refuse_if_any(problems)?;
        let rules: BTreeSet<&str> = edits.iter().map(|edit| edit.key.0.as_str()).collect();
        if let [only] = rules.into_iter().collect::<Vec<_>>().as_slice() {
            record.rule = Some(only.to_string());
        }
        let changes = edits
            .iter()
            .map(|edit| EntryChange {
                rule: edit.key.0.clone(),
                prefix: edit.key.1.to_string(),
                change: EntryChangeKind::Removed,
                expires_at: None,
            })
            .collect();
        self.commit(
            edits,
            Durability::Required,
            request.ssh.filter(|_| !request.force),
        )?;
        Ok(Applied {
            changes,
            warnings: Vec::new(),
        })
    }

    /// The rule whose runtime entry `prefix` is (within `rule`, if given);
    /// the error explains a config entry, an ambiguity or an absence.
    fn runtime_rule_of(
        &self,
        prefix: IpPrefix,
        rule: Option<&str>,
    ) -> Result<String, CommandError> {
        let holders: Vec<&str> = self
            .runtime
            .keys()
            .filter(|(name, listed)| *listed == prefix && rule.is_none_or(|rule| rule == name))
            .map(|(name, _)| name.as_str())
            .collect();
        match holders.as_slice() {
            [only] => return Ok(only.to_string()),
            [] => {}
            several => {
                return Err(CommandError::invalid_input(format!(
                    "`{prefix}` was added to several rules ({}); pass `--rule NAME`",
                    several.join(", ")
                )));
            }
        }
        let in_config: Vec<&str> = self
            .config
            .rules
            .iter()
            .filter(|candidate| rule.is_none_or(|rule| rule == candidate.name))
            .filter(|candidate| candidate.lists(&prefix))
            .map(|candidate| candidate.name.as_str())
            .collect();
        Err(if in_config.is_empty() {
            CommandError::not_found(match rule {
                Some(rule) => format!(
                    "`{prefix}` is not in rule `{rule}`; `firewall-ctl list --rule {rule}` shows what is"
                ),
                None => {
                    format!("`{prefix}` is not in the allowlist; `firewall-ctl list` shows what is")
                }
            })
        } else {
            CommandError::conflict(format!(
                "`{prefix}` comes from the config file `{}` (rule {}), not from `firewall-ctl allow`; edit the file and run `firewall-ctl reload`",
                self.config_path.display(),
                in_config
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Whether rule `rule` lists `prefix` other than by a runtime entry: in
    /// the config, or through one of its feeds.
    fn listed_elsewhere(&self, rule: usize, prefix: &IpPrefix) -> bool {
        let rule = &self.config.rules[rule];
        rule.lists(prefix)
            || rule
                .feeds
                .iter()
                .any(|feed| self.feeds.get(feed).is_some_and(|list| list.lists(prefix)))
    }

    /// Applies `edits` to the runtime entries and the compiled policy,
    /// collecting changed map keys in `diff`; returns the edits that undo it.
    fn apply_edits(&mut self, edits: Vec<Edit>, diff: &mut PolicyDiff) -> Vec<Edit> {
        let mut undo = Vec::with_capacity(edits.len());
        let mut changes = Vec::new();
        for edit in edits {
            let in_config = self.listed_elsewhere(edit.rule, &edit.key.1);
            let previous = match edit.entry {
                Some(entry) => Arc::make_mut(&mut self.runtime).insert(edit.key.clone(), entry),
                None => Arc::make_mut(&mut self.runtime).remove(&edit.key),
            };
            let listed_before = in_config || previous.is_some();
            let listed_after = in_config || self.runtime.contains_key(&edit.key);
            if listed_before != listed_after {
                changes.push((edit.rule, edit.key.1, listed_after));
            }
            undo.push(Edit {
                key: edit.key,
                rule: edit.rule,
                entry: previous,
            });
        }
        Arc::make_mut(&mut self.policy).set_listed_many(&changes, diff);
        undo.reverse();
        undo
    }

    /// Makes `edits` live and durable, or changes nothing (see
    /// [`Durability`]). With `ssh`, refuses edits that would cut that session.
    fn commit(
        &mut self,
        edits: Vec<Edit>,
        durability: Durability,
        ssh: Option<SshSession>,
    ) -> Result<(), CommandError> {
        if edits.is_empty() {
            return Ok(());
        }
        let session_was_in = ssh.filter(|session| guard::admits(&self.policy, session));
        let mut diff = PolicyDiff::default();
        let undo = self.apply_edits(edits, &mut diff);
        if let Some(session) = session_was_in
            && !guard::admits(&self.policy, &session)
        {
            self.apply_edits(undo, &mut PolicyDiff::default());
            return Err(CommandError::conflict(guard::cut_message(
                &self.config,
                &session,
            )));
        }
        if let Err(err) = self.policy.check_entry_tables() {
            self.apply_edits(undo, &mut PolicyDiff::default());
            return Err(CommandError::conflict(format!(
                "{err}; nothing was changed"
            )));
        }
        let enforce_change = diff.len() > 0;
        let mut staged = if enforce_change {
            self.datapath
                .write_idle(&self.policy, Delta::Keys(diff))
                .map(drop)
                .map_err(|err| {
                    CommandError::internal(format!(
                        "writing the new policy into the data plane failed: {err}"
                    ))
                })
        } else {
            Ok(())
        };
        if durability == Durability::Required {
            staged = staged.and_then(|()| self.save());
        }
        if let Err(error) = staged {
            self.apply_edits(undo, &mut PolicyDiff::default());
            return Err(CommandError::new(
                error.kind,
                format!("{}; nothing was changed", error.message),
            ));
        }
        if enforce_change {
            if let Err(err) = self.datapath.switch(&self.policy) {
                self.apply_edits(undo, &mut PolicyDiff::default());
                let restored = match durability {
                    Durability::Required => self.save().err(),
                    Durability::BestEffort => None,
                };
                return Err(CommandError::internal(format!(
                    "switching the data plane to the new policy failed: {err}; nothing was changed{}",
                    restored.map_or(String::new(), |err| format!(
                        ", but restoring the state file failed too: {err}"
                    ))
                )));
            }
            self.applied_at = SystemTime::now();
        }
        if durability == Durability::BestEffort
            && let Err(message) = self.save()
        {
            error!(error = %message, "the change is live but could not be saved; the state file still has the old entries");
        }
        Ok(())
    }

    fn save(&self) -> Result<(), CommandError> {
        self.store
            .save(&self.runtime)
            .map_err(|err| CommandError::internal(err.to_string()))
    }

    /// Removes expired entries from the data plane, then from the state
    /// file: a full disk must not keep an expired entry admitting traffic.
    fn expire_due(&mut self) {
        let now = SystemTime::now();
        if self.expiry_retry_at.is_some_and(|at| at > now) {
            return;
        }
        let due = entries::expired(&self.runtime, now);
        if due.is_empty() {
            return;
        }
        let expired: Vec<RuntimeEntry> = due
            .iter()
            .filter_map(|key| self.runtime.get(key).cloned())
            .collect();
        let edits = due
            .into_iter()
            .filter_map(|key| {
                Some(Edit {
                    rule: self.config.rule(&key.0)?.0,
                    key,
                    entry: None,
                })
            })
            .collect();
        match self.commit(edits, Durability::BestEffort, None) {
            Ok(()) => {
                self.expiry_retry_at = None;
                self.publish();
                for entry in expired {
                    info!(rule = entry.rule, prefix = %entry.prefix, "runtime entry expired and was removed");
                    self.record(&AuditRecord::expiry(entry, "expired"));
                }
            }
            Err(error) => {
                error!(error = %error, "removing expired entries failed; trying again in 1 s");
                self.expiry_retry_at = Some(now + EXPIRY_RETRY);
            }
        }
    }

    fn reload(&mut self, request: ReloadRequest, requester: Option<Requester>) -> Response {
        info!(config = %self.config_path.display(), by = %describe(requester.as_ref()), "reloading config");
        let mut record = AuditRecord::new(Action::Reload, requester, Outcome::Rejected);
        self.reload_in_progress = true;
        self.publish();
        let result = self.try_reload(&request);
        self.reload_in_progress = false;
        match result {
            Ok(mut report) => {
                self.reloads += 1;
                self.last_reload_error = None;
                self.publish();
                info!(
                    mode = api::mode_name(self.config.enforce),
                    rules = report.rules,
                    prefixes_v4 = report.prefixes_v4,
                    prefixes_v6 = report.prefixes_v6,
                    ports = report.ports,
                    changed_map_entries = report.changed_map_entries,
                    "new policy applied"
                );
                crate::system::return_free_memory();
                record.outcome = Outcome::Applied;
                record.detail = Some(format!(
                    "{} rules, {} IPv4 and {} IPv6 prefixes, {} ports; {} map entries changed{}",
                    report.rules,
                    report.prefixes_v4,
                    report.prefixes_v6,
                    report.ports,
                    report.changed_map_entries,
                    report.rollback_at.map_or(String::new(), |at| format!(
                        "; rolls back at {at} unless confirmed"
                    ))
                ));
                report.warnings.extend(self.record(&record));
                Response::Reload(report)
            }
            Err(error) => {
                error!(error = %error, kind = error.kind.name(), "reload rejected; the running policy is unchanged");
                self.reloads_rejected += 1;
                self.last_reload_error = Some(error.message.clone());
                self.publish();
                record.detail = Some(error.message.clone());
                self.record(&record);
                error
                    .context("reload rejected, the running policy is unchanged")
                    .into()
            }
        }
    }

    fn try_reload(&mut self, request: &ReloadRequest) -> Result<ReloadReport, CommandError> {
        if let Some(pending) = &self.pending {
            return Err(CommandError::conflict(format!(
                "a reload waits for confirmation until {}; run `firewall-ctl confirm` to keep it, or let it roll back, then reload again",
                pending.rollback_at
            )));
        }
        let rollback_at = request
            .confirm
            .as_deref()
            .map(parse_confirm_window)
            .transpose()?;
        let (config, text) = self
            .overrides
            .load(&self.config_path)
            .map_err(|err| CommandError::invalid_input(err.to_string()))?;
        // Written to disk meanwhile, and then dropped.
        let staged = self.store.stage_running_config(text);
        let lists = self.feeds_for(&config.feeds);
        // The running policy is compiled from the running config, the
        // runtime entries and the feeds' lists, and only the config can
        // differ here: an unchanged one changes no policy, so nothing is
        // compiled, diffed or written.
        let policy = if config == *self.config {
            // Debug builds (the end-to-end tests) check the premise: the
            // running policy, kept up to date edit by edit, is what a full
            // compile gives.
            debug_assert!(
                policy::compile_with(&config, &self.runtime, &lists)
                    .is_ok_and(|compiled| compiled == *self.policy),
                "the running policy differs from a full compile of its config, entries and feeds"
            );
            None
        } else {
            Some(
                policy::compile_with(&config, &self.runtime, &lists).map_err(|err| {
                    CommandError::invalid_input(format!(
                        "config `{}`: {err}",
                        self.config_path.display()
                    ))
                })?,
            )
        };
        if let Some(policy) = &policy
            && let Some(session) = request.ssh.filter(|_| !request.force)
            && let Some(cut) = guard::cuts(&self.policy, policy, &config, &session)
        {
            return Err(CommandError::conflict(cut));
        }
        if let Some(rollback_at) = rollback_at {
            let previous_text = self
                .store
                .running_config()
                .map_err(CommandError::internal)?;
            let pending = PendingReload {
                version: STATE_VERSION,
                rollback_at,
                previous_config: previous_text.clone(),
            };
            self.store
                .save_pending_reload(&pending)
                .map_err(|err| CommandError::internal(err.to_string()))?;
            self.pending = Some(Pending {
                rollback_at,
                previous: Config::clone(&self.config),
                previous_text,
            });
        }
        let applied = self.apply_config(config, policy, lists);
        if applied.is_err() && rollback_at.is_some() {
            self.pending = None;
            if let Err(err) = self.store.clear_pending_reload() {
                error!(error = %err, "forgetting the pending reload failed");
            }
        }
        let mut report = applied?;
        staged.keep();
        report.rollback_at = rollback_at;
        Ok(report)
    }

    /// Makes `config` (compiled to `policy`, or `None` when it compiles to
    /// the running policy) live: interfaces, maps, and the config the
    /// writer checks requests against.
    fn apply_config(
        &mut self,
        config: Config,
        policy: Option<CompiledPolicy>,
        lists: FeedLists,
    ) -> Result<ReloadReport, CommandError> {
        let mut warnings = Vec::new();
        if config.socket != self.config.socket {
            warnings.push("a `socket` change takes effect when the daemon restarts".to_string());
        }
        if config.state_dir != self.config.state_dir || config.bpf_dir != self.config.bpf_dir {
            warnings.push(
                "`state_dir` and `bpf_dir` changes take effect when the daemon restarts"
                    .to_string(),
            );
        }
        if config.metrics.map(|metrics| metrics.listen)
            != self.config.metrics.map(|metrics| metrics.listen)
        {
            warnings.push(
                "a `metrics.listen` change takes effect when the daemon restarts".to_string(),
            );
        }
        if config.flows.max_flows != self.config.flows.max_flows {
            warnings.push(format!(
                "a `flows.max_flows` change takes effect when the daemon restarts (tracked flows are carried over); the table keeps {} entries until then",
                self.config.flows.max_flows
            ));
        }
        for warning in &warnings {
            warn!("{warning}");
        }
        let access = Access::of(&config);
        if access != Access::of(&self.config) {
            server::secure(&self.socket, &access)
                .map_err(|err| CommandError::internal(format!("{err:#}")))?;
        }
        // New interfaces (or all, in a new mode) first: if one cannot be
        // attached, the reload is rejected before the policy changes.
        let attach: Vec<&String> = config
            .interfaces
            .iter()
            .filter(|name| {
                config.xdp_mode != self.config.xdp_mode || !self.config.interfaces.contains(name)
            })
            .collect();
        let mut attached = Vec::new();
        for name in attach {
            match self.datapath.attach(name, config.xdp_mode) {
                Ok(attachment) => attached.push(attachment),
                Err(err) => {
                    self.detach_new(&attached);
                    return Err(CommandError::internal(format!(
                        "attaching to `{name}` failed: {err}"
                    )));
                }
            }
        }
        if let Err(err) = self.datapath.set_tracking(&config) {
            self.detach_new(&attached);
            return Err(CommandError::internal(format!("flow tracking: {err}")));
        }
        let mut changed_map_entries = 0;
        if let Some(policy) = &policy {
            let changed = Delta::From(Arc::clone(&self.policy));
            match self.datapath.apply(policy, changed) {
                Ok(written) => changed_map_entries = written,
                Err(err) => {
                    self.detach_new(&attached);
                    if let Err(err) = self.datapath.set_tracking(&self.config) {
                        error!(error = %err, "restoring the flow tracking settings of the running config failed");
                    }
                    return Err(CommandError::internal(format!(
                        "applying the new policy failed: {err}"
                    )));
                }
            }
        }
        for name in &self.config.interfaces {
            if !config.interfaces.contains(name)
                && let Err(err) = self.datapath.detach(name)
            {
                warnings.push(format!("detaching from `{name}` failed: {err}"));
            }
        }
        self.applied_at = SystemTime::now();
        self.adopt_feeds(&config.feeds, lists);
        self.config = Arc::new(Config {
            // Where the daemon listens and keeps its files is fixed while it runs.
            socket: self.config.socket.clone(),
            state_dir: self.config.state_dir.clone(),
            bpf_dir: self.config.bpf_dir.clone(),
            ..config
        });
        if let Some(policy) = policy {
            self.policy = Arc::new(policy);
        }
        if !self.config.track_outbound {
            self.flows = None;
        }
        // Swept under the new timeouts at once.
        self.next_flow_sweep = SystemTime::now();
        Ok(ReloadReport {
            rules: self.policy.rule_names.len(),
            prefixes_v4: self.policy.v4.len(),
            prefixes_v6: self.policy.v6.len(),
            ports: self.policy.ports.len(),
            changed_map_entries,
            rollback_at: None,
            warnings,
        })
    }

    fn confirm(&mut self, requester: Option<Requester>) -> Response {
        let mut record = AuditRecord::new(Action::Confirm, requester, Outcome::Rejected);
        let Some(pending) = self.pending.take() else {
            let message = "no reload is waiting for confirmation".to_string();
            record.detail = Some(message.clone());
            self.record(&record);
            return CommandError::conflict(message).into();
        };
        if let Err(err) = self.store.clear_pending_reload() {
            let message = format!(
                "{err}; the reload still rolls back at {}",
                pending.rollback_at
            );
            self.pending = Some(pending);
            record.detail = Some(message.clone());
            self.record(&record);
            return CommandError::internal(message).into();
        }
        info!(rollback_was_due = %pending.rollback_at, "reload confirmed; it stays");
        record.outcome = Outcome::Applied;
        record.detail = Some(format!(
            "the reload stays (rollback was due at {})",
            pending.rollback_at
        ));
        self.record(&record);
        self.publish();
        Response::Confirm(ConfirmReport {
            rollback_was_due: pending.rollback_at,
        })
    }

    /// Puts back the config a `reload --confirm` replaced, once its time is up.
    fn roll_back_if_due(&mut self) {
        let Some(pending) = self
            .pending
            .take_if(|pending| pending.rollback_at.0 <= SystemTime::now())
        else {
            return;
        };
        let mut record = AuditRecord::new(Action::Rollback, None, Outcome::Rejected);
        let lists = self.feeds_for(&pending.previous.feeds);
        let result = policy::compile_with(&pending.previous, &self.runtime, &lists)
            .map_err(|err| CommandError::internal(err.to_string()))
            .and_then(|policy| self.apply_config(pending.previous.clone(), Some(policy), lists));
        match result {
            Ok(report) => {
                self.store
                    .keep_running_config(pending.previous_text.clone());
                if let Err(err) = self.store.clear_pending_reload() {
                    error!(error = %err, "forgetting the pending reload failed; a restart would roll back again, to the same config");
                }
                warn!(
                    rules = report.rules,
                    "the reload was not confirmed in time: rolled back to the previous config (the config file still has the unconfirmed version)"
                );
                record.outcome = Outcome::Applied;
                record.detail = Some(format!(
                    "not confirmed by {}: the previous config is live again ({} rules); the config file still has the unconfirmed version",
                    pending.rollback_at, report.rules
                ));
            }
            Err(error) => {
                error!(error = %error, "rolling back the unconfirmed reload failed; trying again in 1 s");
                record.detail = Some(error.message);
                self.pending = Some(Pending {
                    rollback_at: Timestamp(SystemTime::now() + EXPIRY_RETRY),
                    ..pending
                });
            }
        }
        self.record(&record);
        self.publish();
    }

    /// Detaches interfaces a failed reload had just attached.
    fn detach_new(&self, attached: &[Attachment]) {
        for attachment in attached.iter().filter(|attachment| !attachment.adopted) {
            if !self.config.interfaces.contains(&attachment.interface)
                && let Err(err) = self.datapath.detach(&attachment.interface)
            {
                error!(interface = attachment.interface, error = %err, "detaching after a rejected reload failed");
            }
        }
    }

    /// Attaches where the link watcher found the kernel not running our
    /// program (an interface deleted and created again).
    fn reattach(&mut self, interfaces: Vec<String>) {
        for name in interfaces {
            if !self.config.interfaces.contains(&name) {
                continue;
            }
            match self.datapath.attach(&name, self.config.xdp_mode) {
                Ok(_) => info!(interface = name, "re-attached the XDP program"),
                Err(err) => {
                    error!(interface = name, error = %err, "re-attaching the XDP program failed; the interface stays unprotected")
                }
            }
            if self.config.track_outbound
                && let Err(err) = self.datapath.track_egress(&name)
            {
                error!(interface = name, error = %err, "re-attaching the flow tracking program failed; replies to the host's connections there are dropped");
            }
        }
    }

    /// What a metrics scrape reports: `stats`, feeds, entries by rule and
    /// origin, reloads.
    fn metrics_snapshot(&mut self) -> super::metrics::WriterSnapshot {
        let stats = self.stats()?;
        let mut entries = BTreeMap::new();
        for rule in &self.config.rules {
            entries.insert(
                (rule.name.clone(), "config".to_string()),
                rule.sources.len(),
            );
            for feed in &rule.feeds {
                let count = self.feeds.get(feed).map_or(0, |list| list.prefixes.len());
                entries.insert((rule.name.clone(), format!("feed:{feed}")), count);
            }
        }
        for entry in self.runtime.values() {
            *entries
                .entry((entry.rule.clone(), "cli".to_string()))
                .or_default() += 1;
        }
        let per_entry = self.config.metrics.is_some_and(|metrics| metrics.per_entry);
        let snapshot = super::metrics::Snapshot {
            stats,
            feeds: self.feeds_report(),
            entries,
            entry_usage: None,
            reloads: self.reloads,
            reloads_rejected: self.reloads_rejected,
        };
        let view = per_entry
            .then(|| self.read_view())
            .transpose()
            .map_err(anyhow::Error::new)?;
        Ok((snapshot, view))
    }

    fn stats(&mut self) -> anyhow::Result<StatsReport> {
        if self.config.track_outbound {
            self.sweep_flows();
        }
        let counters = self.datapath.counters()?;
        let mut report = StatsReport {
            mode: api::mode_name(self.policy.enforce),
            rules: counters
                .rules
                .into_iter()
                .map(|(name, counter)| RuleStats {
                    name,
                    packets: counter.packets,
                    bytes: counter.bytes,
                })
                .collect(),
            drops: Default::default(),
            drop_bytes: Default::default(),
            passed: Default::default(),
            passed_bytes: Default::default(),
            flows: self.flows,
        };
        for (reason, counter) in Reason::ALL.iter().zip(&counters.reasons) {
            let (packets, bytes) = if reason.is_drop() {
                (&mut report.drops, &mut report.drop_bytes)
            } else {
                (&mut report.passed, &mut report.passed_bytes)
            };
            packets.insert(reason.name().to_string(), counter.packets);
            bytes.insert(reason.name().to_string(), counter.bytes);
        }
        Ok(report)
    }
}

/// Who asked, for logs: a user, or the daemon itself (SIGHUP, expiry).
fn describe(requester: Option<&Requester>) -> String {
    requester.map_or_else(
        || "the daemon (signal or timer)".to_string(),
        ToString::to_string,
    )
}

/// Fails with every problem at once, so one multi-prefix call changes
/// nothing unless all of it is valid.
/// Of the kind all problems share; problems of several kinds are invalid
/// input as a whole.
fn refuse_if_any(mut problems: Vec<CommandError>) -> Result<(), CommandError> {
    let Some(first) = problems.first() else {
        return Ok(());
    };
    let kind = if problems.iter().all(|problem| problem.kind == first.kind) {
        first.kind
    } else {
        ErrorKind::InvalidInput
    };
    let mut seen = BTreeSet::new();
    problems.retain(|problem| seen.insert(problem.message.clone()));
    let messages: Vec<&str> = problems
        .iter()
        .map(|problem| problem.message.as_str())
        .collect();
    Err(CommandError::new(
        kind,
        format!("nothing was changed: {}", messages.join("; ")),
    ))
}
