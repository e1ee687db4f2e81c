//! The one transaction every change of the allowlist goes through
//! ([`Writer::commit`]): validate, update the compiled policy, write the
//! idle slot, make the state durable, switch, then audit and answer
//! ([`Writer::audited`]). A failure before the switch undoes the in-memory
//! change and leaves the live policy and the state file as they were.

use std::{collections::BTreeSet, sync::Arc, time::SystemTime};

use tracing::{error, info, warn};

use super::{Writer, describe};
use crate::{
    api::{
        AuditRecord, ChangeReport, CommandError, EntryChange, EntryChangeKind, ErrorKind, Outcome,
        Response, SshSession,
    },
    config::IpPrefix,
    datapath::Delta,
    entries::{EntryKey, RuntimeEntry},
    policy::{PolicyDiff, guard},
};

/// When a change is saved, relative to going live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    /// Saved before it goes live (`allow`, `remove`): what is acknowledged
    /// survives a crash, and a change that cannot be saved is not made.
    Required,
    /// Live first, then saved if the disk allows (expiry): an expired entry
    /// must stop admitting traffic even on a full disk, and one left in the
    /// file is dropped at the next start anyway.
    BestEffort,
}

/// One runtime entry to set (`Some`) or remove (`None`).
pub(super) struct Edit {
    pub(super) key: EntryKey,
    pub(super) rule: usize,
    pub(super) entry: Option<RuntimeEntry>,
}

/// A change that was applied, for the reply and the audit record.
pub(super) struct Applied {
    pub(super) changes: Vec<EntryChange>,
    pub(super) warnings: Vec<String>,
}

impl Writer {
    /// Answers a change and audits it, applied or refused.
    pub(super) fn audited(
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

    /// Whether rule `rule` lists `prefix` other than by a runtime entry: in
    /// the config, or through one of its feeds.
    pub(super) fn listed_elsewhere(&self, rule: usize, prefix: &IpPrefix) -> bool {
        let rule = &self.live.config.rules[rule];
        rule.lists(prefix)
            || rule.feeds.iter().any(|feed| {
                self.live
                    .feeds
                    .get(feed)
                    .is_some_and(|list| list.lists(prefix))
            })
    }

    /// Applies `edits` to the runtime entries and the compiled policy,
    /// collecting changed map keys in `diff`; returns the edits that undo it.
    pub(super) fn apply_edits(&mut self, edits: Vec<Edit>, diff: &mut PolicyDiff) -> Vec<Edit> {
        let mut undo = Vec::with_capacity(edits.len());
        let mut changes = Vec::new();
        for edit in edits {
            let in_config = self.listed_elsewhere(edit.rule, &edit.key.1);
            let previous = match edit.entry {
                Some(entry) => {
                    Arc::make_mut(&mut self.live.runtime).insert(edit.key.clone(), entry)
                }
                None => Arc::make_mut(&mut self.live.runtime).remove(&edit.key),
            };
            let listed_before = in_config || previous.is_some();
            let listed_after = in_config || self.live.runtime.contains_key(&edit.key);
            if listed_before != listed_after {
                changes.push((edit.rule, edit.key.1, listed_after));
            }
            undo.push(Edit {
                key: edit.key,
                rule: edit.rule,
                entry: previous,
            });
        }
        Arc::make_mut(&mut self.live.policy).set_listed_many(&changes, diff);
        undo.reverse();
        undo
    }

    /// Makes `edits` live and durable, or changes nothing (see
    /// [`Durability`]). With `ssh`, refuses edits that would cut that session.
    pub(super) fn commit(
        &mut self,
        edits: Vec<Edit>,
        durability: Durability,
        ssh: Option<SshSession>,
    ) -> Result<(), CommandError> {
        if edits.is_empty() {
            return Ok(());
        }
        let session_was_in = ssh.filter(|session| guard::admits(&self.live.policy, session));
        let mut diff = PolicyDiff::default();
        let undo = self.apply_edits(edits, &mut diff);
        if let Some(session) = session_was_in
            && !guard::admits(&self.live.policy, &session)
        {
            self.apply_edits(undo, &mut PolicyDiff::default());
            return Err(CommandError::conflict(guard::cut_message(
                &self.live.config,
                &session,
            )));
        }
        if let Err(err) = self.live.policy.check_entry_tables() {
            self.apply_edits(undo, &mut PolicyDiff::default());
            return Err(CommandError::conflict(format!(
                "{err}; nothing was changed"
            )));
        }
        let enforce_change = diff.len() > 0;
        let mut staged = if enforce_change {
            self.datapath
                .write_idle(&self.live.policy, Delta::Keys(diff))
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
            if let Err(err) = self.datapath.switch(&self.live.policy) {
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
            self.live.applied_at = SystemTime::now();
        }
        if durability == Durability::BestEffort
            && let Err(message) = self.save()
        {
            error!(error = %message, "the change is live but could not be saved; the state file still has the old entries");
        }
        Ok(())
    }

    pub(super) fn save(&self) -> Result<(), CommandError> {
        self.files
            .store
            .save(&self.live.runtime)
            .map_err(|err| CommandError::internal(err.to_string()))
    }
}

/// Fails with every problem at once, so one multi-prefix call changes
/// nothing unless all of it is valid; of the kind all problems share, or
/// invalid input when they are of several kinds.
pub(super) fn refuse_if_any(mut problems: Vec<CommandError>) -> Result<(), CommandError> {
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
