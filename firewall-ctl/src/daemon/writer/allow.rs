//! `allow`: adds prefixes to a rule as runtime entries.

use std::time::SystemTime;

use super::{
    Writer,
    commit::{Applied, Durability, Edit, refuse_if_any},
};
use crate::{
    api::{
        Action, AllowRequest, AuditRecord, CommandError, EntryChange, EntryChangeKind, Outcome,
        Response,
    },
    config::{self, SourceError},
    entries::{self, Requester, RuntimeEntry, Timestamp},
};

/// Longest `--comment`.
const MAX_COMMENT: usize = 1024;

impl Writer {
    pub(super) fn allow(
        &mut self,
        request: AllowRequest,
        requester: Option<Requester>,
    ) -> Response {
        let mut record = AuditRecord::new(Action::Allow, requester.clone(), Outcome::Rejected);
        record.rule = request.rule.clone();
        record.prefixes = request.prefixes.clone();
        record.comment = request.comment.clone();
        let result = self.try_allow(&request, requester, &mut record);
        self.audited(record, result)
    }

    pub(super) fn try_allow(
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
                    .live
                    .config
                    .default_rule()
                    .map_err(CommandError::invalid_input)?
                    .name
                    .clone();
                self.rule_index(&name)?
            }
        };
        let rule_config = &self.live.config.rules[rule];
        let rule_name = rule_config.name.clone();
        record.rule = Some(rule_name.clone());
        if let Some(pending) = &self.reloads.pending
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
        self.live
            .policy
            .check_room_for(&prefixes)
            .map_err(|err| CommandError::conflict(format!("{err}; nothing was changed")))?;
        let mut kinds = Vec::new();
        let mut edits = Vec::new();
        for prefix in prefixes {
            let key = (rule_name.clone(), prefix);
            let kind = if rule_config.lists(&prefix) {
                EntryChangeKind::InConfig
            } else if let Some(existing) = self.live.runtime.get(&key) {
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
                expires_at: self
                    .live
                    .runtime
                    .get(&key)
                    .and_then(|entry| entry.expires_at),
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
}
