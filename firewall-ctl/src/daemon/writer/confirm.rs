//! `confirm`, and the rollback of a `reload --confirm` that was not
//! confirmed in time.

use std::time::SystemTime;

use tracing::{error, info, warn};

use super::{EXPIRY_RETRY, Pending, Writer};
use crate::{
    api::{Action, AuditRecord, CommandError, ConfirmReport, Outcome, Response},
    entries::{Requester, Timestamp},
    policy::{self},
};

impl Writer {
    pub(super) fn confirm(&mut self, requester: Option<Requester>) -> Response {
        let mut record = AuditRecord::new(Action::Confirm, requester, Outcome::Rejected);
        let Some(pending) = self.reloads.pending.take() else {
            let message = "no reload is waiting for confirmation".to_string();
            record.detail = Some(message.clone());
            self.record(&record);
            return CommandError::conflict(message).into();
        };
        if let Err(err) = self.files.store.clear_pending_reload() {
            let message = format!(
                "{err}; the reload still rolls back at {}",
                pending.rollback_at
            );
            self.reloads.pending = Some(pending);
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
    pub(super) fn roll_back_if_due(&mut self) {
        let Some(pending) = self
            .reloads
            .pending
            .take_if(|pending| pending.rollback_at.0 <= SystemTime::now())
        else {
            return;
        };
        let mut record = AuditRecord::new(Action::Rollback, None, Outcome::Rejected);
        let lists = self.feeds_for(&pending.previous.feeds);
        let result = policy::compile_with(&pending.previous, &self.live.runtime, &lists)
            .map_err(|err| CommandError::internal(err.to_string()))
            .and_then(|policy| self.apply_config(pending.previous.clone(), Some(policy), lists));
        match result {
            Ok(report) => {
                self.files
                    .store
                    .keep_running_config(pending.previous_text.clone());
                if let Err(err) = self.files.store.clear_pending_reload() {
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
                self.reloads.pending = Some(Pending {
                    rollback_at: Timestamp(SystemTime::now() + EXPIRY_RETRY),
                    ..pending
                });
            }
        }
        self.record(&record);
        self.publish();
    }
}
