//! `reload` (and SIGHUP): a new config, checked, compiled and made live
//! at once or not at all, optionally to roll back unless confirmed; and
//! the interfaces it attaches to.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tracing::{error, info, warn};

use super::{Writer, describe};
use crate::{
    api::{
        self, Action, AuditRecord, CommandError, Outcome, ReloadReport, ReloadRequest, Response,
    },
    config::Config,
    daemon::{
        access::{self, Access},
        state::{PendingReload, STATE_VERSION},
    },
    datapath::{Attachment, Delta},
    entries::{Requester, Timestamp},
    feeds::FeedLists,
    policy::{self, CompiledPolicy, guard},
    text::escape_controls,
};

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

impl Writer {
    pub(super) fn reload(
        &mut self,
        request: ReloadRequest,
        requester: Option<Requester>,
    ) -> Response {
        info!(config = %self.setup.config_path.display(), by = %describe(requester.as_ref()), "reloading config");
        let mut record = AuditRecord::new(Action::Reload, requester, Outcome::Rejected);
        self.reloads.in_progress = true;
        self.publish();
        let result = self.try_reload(&request);
        self.reloads.in_progress = false;
        match result {
            Ok(mut report) => {
                self.reloads.count += 1;
                self.reloads.last_error = None;
                self.publish();
                info!(
                    mode = api::mode_name(self.live.config.enforce),
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
                self.reloads.rejected += 1;
                self.reloads.last_error = Some(error.message.clone());
                self.publish();
                record.detail = Some(error.message.clone());
                self.record(&record);
                error
                    .context("reload rejected, the running policy is unchanged")
                    .into()
            }
        }
    }

    pub(super) fn try_reload(
        &mut self,
        request: &ReloadRequest,
    ) -> Result<ReloadReport, CommandError> {
        if let Some(pending) = &self.reloads.pending {
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
            .setup
            .overrides
            .load(&self.setup.config_path)
            .map_err(|err| CommandError::invalid_input(err.to_string()))?;
        // Written to disk meanwhile, and then dropped.
        let staged = self.files.store.stage_running_config(text);
        let lists = self.feeds_for(&config.feeds);
        // The running policy is compiled from the running config, the
        // runtime entries and the feeds' lists, and only the config can
        // differ here: an unchanged one changes no policy, so nothing is
        // compiled, diffed or written.
        let policy = if config == *self.live.config {
            // Debug builds (the end-to-end tests) check the premise: the
            // running policy, kept up to date edit by edit, is what a full
            // compile gives.
            debug_assert!(
                policy::compile_with(&config, &self.live.runtime, &lists)
                    .is_ok_and(|compiled| compiled == *self.live.policy),
                "the running policy differs from a full compile of its config, entries and feeds"
            );
            None
        } else {
            Some(
                policy::compile_with(&config, &self.live.runtime, &lists).map_err(|err| {
                    CommandError::invalid_input(format!(
                        "config `{}`: {err}",
                        self.setup.config_path.display()
                    ))
                })?,
            )
        };
        if let Some(policy) = &policy
            && let Some(session) = request.ssh.filter(|_| !request.force)
            && let Some(cut) = guard::cuts(&self.live.policy, policy, &config, &session)
        {
            return Err(CommandError::conflict(cut));
        }
        if let Some(rollback_at) = rollback_at {
            let previous_text = self
                .files
                .store
                .running_config()
                .map_err(CommandError::internal)?;
            let pending = PendingReload {
                version: STATE_VERSION,
                rollback_at,
                previous_config: previous_text.clone(),
            };
            self.files
                .store
                .save_pending_reload(&pending)
                .map_err(|err| CommandError::internal(err.to_string()))?;
            self.reloads.pending = Some(Pending {
                rollback_at,
                previous: Config::clone(&self.live.config),
                previous_text,
            });
        }
        let applied = self.apply_config(config, policy, lists);
        if applied.is_err() && rollback_at.is_some() {
            self.reloads.pending = None;
            if let Err(err) = self.files.store.clear_pending_reload() {
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
    pub(super) fn apply_config(
        &mut self,
        config: Config,
        policy: Option<CompiledPolicy>,
        lists: FeedLists,
    ) -> Result<ReloadReport, CommandError> {
        let mut warnings = Vec::new();
        if config.socket != self.live.config.socket {
            warnings.push("a `socket` change takes effect when the daemon restarts".to_string());
        }
        if config.state_dir != self.live.config.state_dir
            || config.bpf_dir != self.live.config.bpf_dir
        {
            warnings.push(
                "`state_dir` and `bpf_dir` changes take effect when the daemon restarts"
                    .to_string(),
            );
        }
        if config.metrics.map(|metrics| metrics.listen)
            != self.live.config.metrics.map(|metrics| metrics.listen)
        {
            warnings.push(
                "a `metrics.listen` change takes effect when the daemon restarts".to_string(),
            );
        }
        if config.flows.max_flows != self.live.config.flows.max_flows {
            warnings.push(format!(
                "a `flows.max_flows` change takes effect when the daemon restarts (tracked flows are carried over); the table keeps {} entries until then",
                self.live.config.flows.max_flows
            ));
        }
        for warning in &warnings {
            warn!("{warning}");
        }
        let access = Access::of(&config);
        if access != Access::of(&self.live.config) {
            access::secure(&self.setup.socket, &access)
                .map_err(|err| CommandError::internal(format!("{err:#}")))?;
        }
        // New interfaces (or all, in a new mode) first: if one cannot be
        // attached, the reload is rejected before the policy changes.
        let attach: Vec<&String> = config
            .interfaces
            .iter()
            .filter(|name| {
                config.xdp_mode != self.live.config.xdp_mode
                    || !self.live.config.interfaces.contains(name)
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
            let changed = Delta::From(Arc::clone(&self.live.policy));
            match self.datapath.apply(policy, changed) {
                Ok(written) => changed_map_entries = written,
                Err(err) => {
                    self.detach_new(&attached);
                    if let Err(err) = self.datapath.set_tracking(&self.live.config) {
                        error!(error = %err, "restoring the flow tracking settings of the running config failed");
                    }
                    return Err(CommandError::internal(format!(
                        "applying the new policy failed: {err}"
                    )));
                }
            }
        }
        for name in &self.live.config.interfaces {
            if !config.interfaces.contains(name)
                && let Err(err) = self.datapath.detach(name)
            {
                warnings.push(format!("detaching from `{name}` failed: {err}"));
            }
        }
        self.live.applied_at = SystemTime::now();
        self.adopt_feeds(&config.feeds, lists);
        self.live.config = Arc::new(Config {
            // Where the daemon listens and keeps its files is fixed while it runs.
            socket: self.live.config.socket.clone(),
            state_dir: self.live.config.state_dir.clone(),
            bpf_dir: self.live.config.bpf_dir.clone(),
            ..config
        });
        if let Some(policy) = policy {
            self.live.policy = Arc::new(policy);
        }
        if !self.live.config.track_outbound {
            self.flows = None;
        }
        // Swept under the new timeouts at once.
        self.timers.next_flow_sweep = SystemTime::now();
        Ok(ReloadReport {
            rules: self.live.policy.rule_names.len(),
            prefixes_v4: self.live.policy.v4.len(),
            prefixes_v6: self.live.policy.v6.len(),
            ports: self.live.policy.ports.len(),
            changed_map_entries,
            rollback_at: None,
            warnings,
        })
    }

    /// Detaches interfaces a failed reload had just attached.
    pub(super) fn detach_new(&self, attached: &[Attachment]) {
        for attachment in attached.iter().filter(|attachment| !attachment.adopted) {
            if !self.live.config.interfaces.contains(&attachment.interface)
                && let Err(err) = self.datapath.detach(&attachment.interface)
            {
                error!(interface = attachment.interface, error = %err, "detaching after a rejected reload failed");
            }
        }
    }

    /// Attaches where the link watcher found the kernel not running our
    /// program (an interface deleted and created again).
    pub(super) fn reattach(&mut self, interfaces: Vec<String>) {
        for name in interfaces {
            if !self.live.config.interfaces.contains(&name) {
                continue;
            }
            match self.datapath.attach(&name, self.live.config.xdp_mode) {
                Ok(_) => info!(interface = name, "re-attached the XDP program"),
                Err(err) => {
                    error!(interface = name, error = %err, "re-attaching the XDP program failed; the interface stays unprotected")
                }
            }
            if self.live.config.track_outbound
                && let Err(err) = self.datapath.track_egress(&name)
            {
                error!(interface = name, error = %err, "re-attaching the flow tracking program failed; replies to the host's connections there are dropped");
            }
        }
    }
}
