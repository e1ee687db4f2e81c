//! Runtime entries removed when their `--expires` time comes.

use std::time::SystemTime;

use tracing::{error, info};

use super::{
    EXPIRY_RETRY, Writer,
    commit::{Durability, Edit},
};
use crate::{
    api::AuditRecord,
    entries::{self, RuntimeEntry},
};

impl Writer {
    /// Removes expired entries from the data plane, then from the state
    /// file: a full disk must not keep an expired entry admitting traffic.
    pub(super) fn expire_due(&mut self) {
        let now = SystemTime::now();
        if self.timers.expiry_retry_at.is_some_and(|at| at > now) {
            return;
        }
        let due = entries::expired(&self.live.runtime, now);
        if due.is_empty() {
            return;
        }
        let expired: Vec<RuntimeEntry> = due
            .iter()
            .filter_map(|key| self.live.runtime.get(key).cloned())
            .collect();
        let edits = due
            .into_iter()
            .filter_map(|key| {
                Some(Edit {
                    rule: self.live.config.rule(&key.0)?.0,
                    key,
                    entry: None,
                })
            })
            .collect();
        match self.commit(edits, Durability::BestEffort, None) {
            Ok(()) => {
                self.timers.expiry_retry_at = None;
                self.publish();
                for entry in expired {
                    info!(rule = entry.rule, prefix = %entry.prefix, "runtime entry expired and was removed");
                    self.record(&AuditRecord::expiry(entry, "expired"));
                }
            }
            Err(error) => {
                error!(error = %error, "removing expired entries failed; trying again in 1 s");
                self.timers.expiry_retry_at = Some(now + EXPIRY_RETRY);
            }
        }
    }
}
