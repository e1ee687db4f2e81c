//! `remove` (`revoke`): removes runtime entries; config and feed entries
//! are the config file's.

use std::collections::BTreeSet;

use super::{
    Writer,
    commit::{Applied, Durability, Edit, refuse_if_any},
};
use crate::{
    api::{
        Action, AuditRecord, CommandError, EntryChange, EntryChangeKind, Outcome, RemoveRequest,
        Response,
    },
    config::IpPrefix,
    entries::Requester,
};

impl Writer {
    pub(super) fn remove(
        &mut self,
        request: RemoveRequest,
        requester: Option<Requester>,
    ) -> Response {
        let mut record = AuditRecord::new(Action::Remove, requester, Outcome::Rejected);
        record.rule = request.rule.clone();
        record.prefixes = request.prefixes.clone();
        let result = self.try_remove(&request, &mut record);
        self.audited(record, result)
    }

    pub(super) fn try_remove(
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
    pub(super) fn runtime_rule_of(
        &self,
        prefix: IpPrefix,
        rule: Option<&str>,
    ) -> Result<String, CommandError> {
        let holders: Vec<&str> = self
            .live
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
            .live
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
                self.setup.config_path.display(),
                in_config
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}
