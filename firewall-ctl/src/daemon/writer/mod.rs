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
//!
//! The transaction is [`commit`]'s; each command parses and validates in a
//! file of its own and hands it its change: [`allow`], [`remove`],
//! [`reload`], [`confirm`] and rollback, [`expiry`], [`feeds`] updates,
//! [`flows`] sweeps, and [`status`] and stats, which change nothing.

mod allow;
mod commit;
mod confirm;
mod expiry;
mod feeds;
mod flows;
mod reload;
mod remove;
mod status;
#[cfg(test)]
pub(super) mod tests;

use self::flows::FLOW_SWEEP_INTERVAL;
pub use self::{reload::Pending, status::PolicyStatus};

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

use crate::{
    api::{
        Action, AllowRequest, AuditRecord, Command, CommandError, FlowTable, Outcome,
        RemoveRequest, Response,
    },
    config::{Config, Feed},
    daemon::{
        audit::AuditLog, metrics::render::WriterSnapshot, overrides::Overrides, reads::ReadView,
        state::StateStore,
    },
    datapath::DataPlane,
    entries::{self, Requester, RuntimeEntries, Timestamp},
    feeds::{FeedLists, FeedStates, schedule::FetchJob, store::FeedStore},
    policy::{CompiledPolicy, explain},
};

/// How soon a failed expiry or rollback is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// How long after a change the idle slot catches up with the live one.
const CATCH_UP_DELAY: Duration = Duration::from_millis(300);

/// Work for the writer.
pub enum Job {
    /// A command from the socket, or a reload from SIGHUP (no requester,
    /// no reply, no deadline). One not started by its `deadline` is refused.
    Command {
        command: Command,
        requester: Option<Requester>,
        reply: Option<oneshot::Sender<Response>>,
        /// The client's id for it, for the audit log.
        request_id: Option<String>,
        deadline: Option<SystemTime>,
    },
    /// A request the server denied for lack of permission, to audit.
    Denied(AuditRecord),
    /// The state heavy reads are built from, away from the writer.
    Snapshot(oneshot::Sender<Result<ReadView, CommandError>>),
    /// Interfaces the kernel does not run our program on: attach it.
    Reattach(Vec<String>),
    /// Answers when the writer is free: the service manager's watchdog.
    Ping(oneshot::Sender<()>),
    /// What a feed fetch brought, to apply.
    Feed(FetchJob),
    /// A snapshot for a metrics scrape.
    Metrics(oneshot::Sender<WriterSnapshot>),
}

/// What the daemon hands the writer at start-up: the state it loaded and
/// the data plane it made live.
pub struct Started {
    pub config_path: PathBuf,
    pub overrides: Overrides,
    /// The kernel's id of this daemon's XDP program.
    pub program_id: u32,
    pub config: Config,
    pub runtime: RuntimeEntries,
    /// Each feed's last good list, in force from the start, and its state
    /// (when it was fetched, and with what validator).
    pub feeds: FeedLists,
    pub feed_states: FeedStates,
    pub feed_store: FeedStore,
    /// Where the writer tells the feed scheduler the config's feeds.
    pub feed_configs: watch::Sender<Vec<Feed>>,
    pub policy: CompiledPolicy,
    pub datapath: Box<dyn DataPlane>,
    pub store: StateStore,
    pub audit: AuditLog,
    /// A `reload --confirm` the last daemon left waiting.
    pub pending: Option<Pending>,
    /// The flow table as the start found it; `None` when tracking is off.
    pub flows: Option<FlowTable>,
}

/// Everything the writer owns.
pub struct Writer {
    setup: Setup,
    live: Live,
    datapath: Box<dyn DataPlane>,
    files: Files,
    feed_book: FeedBook,
    reloads: Reloads,
    timers: Timers,
    /// The flow table as of the last sweep; `None` when tracking is off.
    flows: Option<FlowTable>,
    /// Where the status is published, once the server listens.
    status: Option<watch::Sender<Arc<PolicyStatus>>>,
    /// The id of the request being handled, for its audit records.
    request_id: Option<String>,
}

/// What the daemon was started with; fixed while it runs.
struct Setup {
    config_path: PathBuf,
    overrides: Overrides,
    socket: PathBuf,
    program_id: u32,
}

/// The policy in force and what it is compiled from. The config, the
/// runtime entries and the feeds' lists are shared with heavy reads
/// ([`Job::Snapshot`]) and copied on write while one holds them; the
/// policy is shared with the data plane while its idle slot still holds an
/// older one (see [`Delta::From`]).
struct Live {
    config: Arc<Config>,
    runtime: Arc<RuntimeEntries>,
    /// Each feed's last good list in force.
    feeds: Arc<FeedLists>,
    policy: Arc<CompiledPolicy>,
    /// When the data plane last switched to a new policy.
    applied_at: SystemTime,
}

/// Where changes are made durable and recorded.
struct Files {
    store: StateStore,
    audit: AuditLog,
    feed_store: FeedStore,
}

/// What the writer knows of each feed beside its list.
struct FeedBook {
    meta: FeedStates,
    /// The config's feeds, for the scheduler that fetches them.
    configs: watch::Sender<Vec<Feed>>,
    /// Feeds found stale (and warned about) at the last check.
    warned_stale: BTreeSet<String>,
}

/// Reloads since start, and the one waiting for confirmation.
#[derive(Default)]
struct Reloads {
    count: u64,
    rejected: u64,
    last_error: Option<String>,
    in_progress: bool,
    /// A `reload --confirm` waiting for `confirm`.
    pending: Option<Pending>,
}

/// When the writer has work of its own to do.
struct Timers {
    /// Set after an expiry could not be applied: when to try again.
    expiry_retry_at: Option<SystemTime>,
    next_flow_sweep: SystemTime,
    /// When feeds' ages are checked against their `max_age` next.
    next_staleness_check: SystemTime,
    /// When the idle policy slot is brought up to date with the live one,
    /// if a change left it behind: a moment after the change, so a burst
    /// of `allow`s is not slowed at each step, and the next change writes
    /// only its own keys.
    catch_up_at: Option<SystemTime>,
}

impl Writer {
    pub fn new(started: Started) -> Self {
        let now = SystemTime::now();
        Self {
            setup: Setup {
                config_path: started.config_path,
                overrides: started.overrides,
                socket: started.config.socket.clone(),
                program_id: started.program_id,
            },
            live: Live {
                config: Arc::new(started.config),
                runtime: Arc::new(started.runtime),
                feeds: Arc::new(started.feeds),
                policy: Arc::new(started.policy),
                applied_at: now,
            },
            datapath: started.datapath,
            files: Files {
                store: started.store,
                audit: started.audit,
                feed_store: started.feed_store,
            },
            feed_book: FeedBook {
                meta: started.feed_states,
                configs: started.feed_configs,
                warned_stale: BTreeSet::new(),
            },
            reloads: Reloads {
                pending: started.pending,
                ..Reloads::default()
            },
            timers: Timers {
                expiry_retry_at: None,
                next_flow_sweep: now + FLOW_SWEEP_INTERVAL,
                // First fetches get a minute before a feed without data counts.
                next_staleness_check: now + Duration::from_secs(60),
                catch_up_at: None,
            },
            flows: started.flows,
            status: None,
            request_id: None,
        }
    }

    /// Publishes the status to `sender` from now on, after every change.
    pub fn publish_to(&mut self, sender: watch::Sender<Arc<PolicyStatus>>) {
        self.status = Some(sender);
    }

    /// Serves jobs until the daemon drops the sending side; expires
    /// entries on time in between.
    pub fn run(mut self, jobs: mpsc::Receiver<Job>) {
        // So the first change writes only its diff.
        self.catch_up_idle_slot();
        loop {
            let wake = [
                entries::next_expiry(&self.live.runtime).map(|at| at.0),
                self.timers.expiry_retry_at,
                self.reloads
                    .pending
                    .as_ref()
                    .map(|pending| pending.rollback_at.0),
                self.live
                    .config
                    .track_outbound
                    .then_some(self.timers.next_flow_sweep),
                (!self.live.config.feeds.is_empty()).then_some(self.timers.next_staleness_check),
                self.timers.catch_up_at,
                self.files.audit.next_summary_at(),
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
                    self.timers.catch_up_at = match self.timers.catch_up_at {
                        None if self.datapath.idle_lags() => {
                            Some(SystemTime::now() + CATCH_UP_DELAY)
                        }
                        scheduled => scheduled,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if self
                .timers
                .catch_up_at
                .is_some_and(|at| at <= SystemTime::now())
            {
                self.catch_up_idle_slot();
            }
            self.expire_due();
            self.roll_back_if_due();
            self.save_ledger_if_changed();
            if self.live.config.track_outbound && self.timers.next_flow_sweep <= SystemTime::now() {
                self.sweep_flows();
            }
            if self.timers.next_staleness_check <= SystemTime::now() {
                self.warn_about_stale_feeds();
            }
            if let Err(err) = self.files.audit.write_due_summaries() {
                error!(error = %err, "appending to the audit log failed");
            }
        }
    }

    /// Writes the live policy into the idle slot where it differs, and
    /// gives back the memory the last change needed.
    fn catch_up_idle_slot(&mut self) {
        self.timers.catch_up_at = None;
        if !self.datapath.idle_lags() {
            return;
        }
        if let Err(err) = self.datapath.prepare_idle(&self.live.policy) {
            warn!(error = %err, "bringing the idle policy slot up to date failed; the next change will rewrite it whole");
        }
        self.save_ledger_if_changed();
        crate::system::return_free_memory();
    }

    /// Saves the counter ledger if a write gave a slot other rules.
    fn save_ledger_if_changed(&mut self) {
        if let Some(ledger) = self.datapath.take_changed_ledger() {
            self.files.store.save_ledger(&ledger);
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Denied(record) => {
                if let Err(err) = self.files.audit.deny(&record) {
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

    fn answer(&mut self, command: Command, requester: Option<Requester>) -> Response {
        match command {
            Command::Stats => match self.stats() {
                Ok(report) => Response::Stats(report),
                Err(err) => CommandError::internal(format!("{err:#}")).into(),
            },
            Command::Explain { source, port } => match explain::parse_query(&source, &port) {
                Ok((source, port)) => Response::Explain(explain::explain(
                    &self.live.config,
                    &self.live.runtime,
                    &self.live.feeds,
                    &self.live.policy,
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
            | Command::Coverage { .. }
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
        match self.files.audit.append(record) {
            Ok(()) => None,
            Err(err) => {
                let message = format!("appending to the audit log failed: {err}");
                error!(error = %err, "appending to the audit log failed");
                Some(message)
            }
        }
    }

    fn rule_index(&self, name: &str) -> Result<usize, CommandError> {
        self.live
            .config
            .rule_index(name)
            .map_err(CommandError::not_found)
    }
}

/// Who asked, for logs: a user, or the daemon itself (SIGHUP, expiry).
fn describe(requester: Option<&Requester>) -> String {
    requester.map_or_else(
        || "the daemon (signal or timer)".to_string(),
        ToString::to_string,
    )
}
