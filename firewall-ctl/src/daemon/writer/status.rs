//! What the writer tells without changing anything: the status it
//! publishes, `stats`, metrics snapshots and the state heavy reads are
//! built from.

use std::{collections::BTreeMap, sync::Arc, time::UNIX_EPOCH};

use firewall_common::reasons::Reason;

use super::Writer;
use crate::daemon::{metrics, reads};
use crate::{
    api::{self, CommandError, RuleStats, StatsReport, StatusReport},
    daemon::access::Access,
    entries::{self},
};

/// What the writer publishes after every change, so the socket can answer
/// `status` (and check permissions) without waiting for it.
#[derive(Clone, Debug)]
pub struct PolicyStatus {
    /// `status` as of the last change; the server fills in the uptime and
    /// the interfaces (as the kernel reports them).
    pub report: StatusReport,
    pub access: Access,
    /// The interfaces the config names.
    pub interfaces: Vec<String>,
    /// The kernel's id of this daemon's XDP program.
    pub program_id: u32,
    /// Drop samples per second per CPU (`[blocked] sample_rate`).
    pub sample_rate: u32,
}

impl Writer {
    /// The status the socket answers with, without asking this thread.
    pub fn snapshot(&self) -> PolicyStatus {
        PolicyStatus {
            report: StatusReport {
                pid: std::process::id(),
                daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                config: self.setup.config_path.clone(),
                uptime_seconds: 0,
                mode: api::mode_name(self.live.policy.enforce),
                // Filled in by the server from the link watcher.
                interfaces: Vec::new(),
                rules: self.live.policy.rule_names.len(),
                prefixes_v4: self.live.policy.v4.len(),
                prefixes_v6: self.live.policy.v6.len(),
                ports: self.live.policy.ports.len(),
                policy_applied_at: self
                    .live
                    .applied_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |age| age.as_secs()),
                reloads: self.reloads.count,
                reloads_rejected: self.reloads.rejected,
                last_reload_error: self.reloads.last_error.clone(),
                reload_in_progress: self.reloads.in_progress,
                state_dir: self.live.config.state_dir.clone(),
                bpf_dir: self.live.config.bpf_dir.clone(),
                runtime_entries: self.live.runtime.len(),
                next_expiry: entries::next_expiry(&self.live.runtime),
                rollback_at: self
                    .reloads
                    .pending
                    .as_ref()
                    .map(|pending| pending.rollback_at),
                flows: self.flows,
                feeds_stale: self.stale_feeds(),
                feeds_failing: self
                    .feed_book
                    .meta
                    .iter()
                    .filter(|(_, meta)| meta.last_error.is_some())
                    .map(|(name, _)| name.clone())
                    .collect(),
            },
            access: Access::of(&self.live.config),
            interfaces: self.live.config.interfaces.clone(),
            program_id: self.setup.program_id,
            sample_rate: self.live.config.sample_rate,
        }
    }

    pub(super) fn publish(&self) {
        if let Some(status) = &self.status {
            status.send_replace(Arc::new(self.snapshot()));
        }
    }

    /// The state heavy reads are built from: shared pointers, no copy.
    pub(super) fn read_view(&self) -> Result<reads::ReadView, CommandError> {
        Ok(reads::ReadView {
            config: Arc::clone(&self.live.config),
            runtime: Arc::clone(&self.live.runtime),
            feeds: Arc::clone(&self.live.feeds),
            usage: Some(self.datapath.usage_reader().map_err(|err| {
                CommandError::internal(format!("reading the entry counters failed: {err}"))
            })?),
        })
    }

    /// What a metrics scrape reports: `stats`, feeds, entries by rule and
    /// origin, reloads.
    pub(super) fn metrics_snapshot(&mut self) -> metrics::render::WriterSnapshot {
        let stats = self.stats()?;
        let mut entries = BTreeMap::new();
        for rule in &self.live.config.rules {
            entries.insert(
                (rule.name.clone(), "config".to_string()),
                rule.sources.len(),
            );
            for feed in &rule.feeds {
                let count = self
                    .live
                    .feeds
                    .get(feed)
                    .map_or(0, |list| list.prefixes.len());
                entries.insert((rule.name.clone(), format!("feed:{feed}")), count);
            }
        }
        for entry in self.live.runtime.values() {
            *entries
                .entry((entry.rule.clone(), "cli".to_string()))
                .or_default() += 1;
        }
        let per_entry = self
            .live
            .config
            .metrics
            .is_some_and(|metrics| metrics.per_entry);
        let snapshot = metrics::render::Snapshot {
            stats,
            feeds: self.feeds_report(),
            entries,
            entry_usage: None,
            reloads: self.reloads.count,
            reloads_rejected: self.reloads.rejected,
        };
        let view = per_entry
            .then(|| self.read_view())
            .transpose()
            .map_err(anyhow::Error::new)?;
        Ok((snapshot, view))
    }

    pub(super) fn stats(&mut self) -> anyhow::Result<StatsReport> {
        if self.live.config.track_outbound {
            self.sweep_flows();
        }
        let counters = self.datapath.counters()?;
        let mut report = StatsReport {
            mode: api::mode_name(self.live.policy.enforce),
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
