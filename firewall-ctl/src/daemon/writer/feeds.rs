//! Feed updates in the policy writer: a fetch is validated, compiled with
//! the rest of the policy and applied atomically, or refused whole with
//! the last good list left in force; either way it is audited and shown.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::Writer;
use crate::{
    api::{Action, AuditRecord, FeedStatus, FeedsReport, Outcome},
    config::Feed,
    datapath::Delta,
    entries::Timestamp,
    feeds::{
        self, FeedLists,
        fetch::Fetched,
        normalize::FeedList,
        schedule::{FeedOutcome, FetchJob},
        store::{LastGood, Validator},
    },
    policy,
};

/// Prefixes an audit record lists per update, at most.
const AUDITED_PREFIXES: usize = 1000;
/// Longest error kept of a failed update (in `feeds`, logs and records).
const MAX_ERROR_BYTES: usize = 512;
/// How often feeds' ages are checked against their `max_age`.
const STALENESS_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Prefixes in `new` and not in `old` (`+`), and the other way (`-`).
fn changes(old: Option<&FeedList>, new: &FeedList) -> (Vec<String>, Vec<String>) {
    let before: std::collections::BTreeSet<_> = old
        .map(|list| list.prefixes.iter().collect())
        .unwrap_or_default();
    let after: std::collections::BTreeSet<_> = new.prefixes.iter().collect();
    (
        after
            .difference(&before)
            .map(|prefix| prefix.to_string())
            .collect(),
        before
            .difference(&after)
            .map(|prefix| prefix.to_string())
            .collect(),
    )
}

impl Writer {
    pub(super) fn feed_config(&self, name: &str) -> Option<&Feed> {
        self.live.config.feeds.iter().find(|feed| feed.name == name)
    }

    /// Applies what a fetch brought, and answers the scheduler.
    pub(super) fn feed_fetched(&mut self, job: FetchJob) {
        // A fetch of a feed a reload has since removed or redefined: its
        // task is gone, and what it read is not what the config asks for.
        if self.feed_config(&job.feed.name) != Some(&job.feed) {
            return;
        }
        let feed = job.feed;
        let now = SystemTime::now();
        let result = match job.fetched {
            Err(error) => Err(error),
            Ok(fetched) => self.take_fetched(&feed, fetched, now),
        };
        let meta = self.feed_book.meta.entry(feed.name.clone()).or_default();
        meta.last_attempt = Some(now);
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                meta.last_success = Some(now);
                meta.last_error = None;
                meta.next_attempt = Some(job.next_if_ok.0);
            }
            Err(error) => {
                // The feed chose much of what an error says: it is shown,
                // logged and audited at a bounded length.
                let error =
                    crate::text::truncated(&crate::text::escape_controls(&error), MAX_ERROR_BYTES)
                        .into_owned();
                warn!(
                    feed = feed.name,
                    error, "the feed update failed; its last good list stays in force"
                );
                meta.next_attempt = Some(job.next_if_failed.0);
                meta.last_error = Some(error.clone());
                let mut record = AuditRecord::new(Action::FeedUpdate, None, Outcome::Rejected);
                record.feed = Some(feed.name.clone());
                record.detail = Some(format!(
                    "{} from {}; the last good list stays in force",
                    error,
                    feeds::source_name(&feed.source)
                ));
                self.record(&record);
            }
        }
        let outcome = FeedOutcome {
            ok,
            status: self.feed_status(&feed),
            validator: self
                .feed_book
                .meta
                .get(&feed.name)
                .and_then(|meta| meta.validator.clone()),
        };
        let _ = job.reply.send(outcome);
        self.publish();
    }

    /// Validates and applies a fetched body (or a 304); `Err` says why
    /// nothing changed.
    pub(super) fn take_fetched(
        &mut self,
        feed: &Feed,
        fetched: Fetched,
        now: SystemTime,
    ) -> Result<(), String> {
        let (bytes, etag, last_modified) = match fetched {
            Fetched::NotModified => {
                return self.confirm_current(feed, None, now);
            }
            Fetched::Body {
                bytes,
                etag,
                last_modified,
                ..
            } => (bytes, etag, last_modified),
        };
        let validator = Validator {
            etag,
            last_modified,
            sha256: format!("{:x}", Sha256::digest(&bytes)),
        };
        let unchanged = self
            .feed_book
            .meta
            .get(&feed.name)
            .and_then(|meta| meta.validator.as_ref())
            .is_some_and(|last| last.sha256 == validator.sha256);
        if unchanged && self.live.feeds.contains_key(&feed.name) {
            return self.confirm_current(feed, Some(validator), now);
        }
        let started = std::time::Instant::now();
        let normalized = feeds::prepare(feed, &bytes, self.live.feeds.get(&feed.name))?;
        for (listed, used) in &normalized.masked {
            info!(feed = feed.name, listed, used = %used, "host bits cleared in a feed entry");
        }
        let list = normalized.list;
        let mut lists = FeedLists::clone(&self.live.feeds);
        let previous = lists.insert(feed.name.clone(), list.clone());
        let compiled = policy::compile_with(&self.live.config, &self.live.runtime, &lists)
            .map_err(|err| err.to_string())?;
        let changed_map_entries = self
            .datapath
            .apply(&compiled, Delta::From(Arc::clone(&self.live.policy)))
            .map_err(|err| format!("applying the update failed: {err}"))?;
        let took = started.elapsed();
        let (added, removed) = changes(previous.as_ref(), &list);
        self.live.policy = Arc::new(compiled);
        self.live.feeds = Arc::new(lists);
        let (v4, v6) = list.families();
        info!(
            feed = feed.name,
            prefixes_v4 = v4,
            prefixes_v6 = v6,
            added = added.len(),
            removed = removed.len(),
            changed_map_entries,
            took_ms = took.as_millis() as u64,
            "applied a feed update"
        );
        crate::system::return_free_memory();
        let mut record = AuditRecord::new(Action::FeedUpdate, None, Outcome::Applied);
        record.feed = Some(feed.name.clone());
        record.prefixes = added
            .iter()
            .map(|prefix| format!("+{prefix}"))
            .chain(removed.iter().map(|prefix| format!("-{prefix}")))
            .take(AUDITED_PREFIXES)
            .collect();
        record.detail = Some(format!(
            "{} added, {} removed; now {v4} IPv4 and {v6} IPv6 prefixes ({} listed) from {}; etag {}, sha256 {}",
            added.len(),
            removed.len(),
            list.listed,
            feeds::source_name(&feed.source),
            validator.etag.as_deref().unwrap_or("none"),
            validator.sha256
        ));
        self.record(&record);
        self.save_last_good(feed, validator, now);
        Ok(())
    }

    /// The server says (304), or the body shows, that the list in force is
    /// current: it is fresh as of `now`.
    pub(super) fn confirm_current(
        &mut self,
        feed: &Feed,
        validator: Option<Validator>,
        now: SystemTime,
    ) -> Result<(), String> {
        if !self.live.feeds.contains_key(&feed.name) {
            return Err(
                "the server answered 304 Not Modified, but no last good copy is kept".to_string(),
            );
        }
        let validator = validator
            .or_else(|| {
                self.feed_book
                    .meta
                    .get(&feed.name)
                    .and_then(|meta| meta.validator.clone())
            })
            .unwrap_or_default();
        self.save_last_good(feed, validator, now);
        Ok(())
    }

    /// Records the list in force as `feed`'s last good copy, in memory and
    /// on disk (a failure there is logged: the list is in force anyway, and
    /// a restart fetches again).
    pub(super) fn save_last_good(&mut self, feed: &Feed, validator: Validator, now: SystemTime) {
        let Some(list) = self.live.feeds.get(&feed.name) else {
            return;
        };
        let last = LastGood::new(feed, Timestamp(now), validator.clone(), list.clone());
        if let Err(err) = self.files.feed_store.save(&feed.name, &last) {
            warn!(feed = feed.name, error = %err, "saving the feed's last good copy failed; a restart without network would lack it");
        }
        let meta = self.feed_book.meta.entry(feed.name.clone()).or_default();
        meta.fetched_at = Some(now);
        meta.validator = Some(validator);
    }

    pub(super) fn feed_status(&self, feed: &Feed) -> FeedStatus {
        let meta = self
            .feed_book
            .meta
            .get(&feed.name)
            .cloned()
            .unwrap_or_default();
        let (v4, v6) = self
            .live
            .feeds
            .get(&feed.name)
            .map_or((0, 0), FeedList::families);
        let age = meta
            .fetched_at
            .map(|at| at.elapsed().unwrap_or(Duration::ZERO));
        FeedStatus {
            name: feed.name.clone(),
            source: feeds::source_name(&feed.source),
            format: feed.format.name().to_string(),
            prefixes_v4: v4,
            prefixes_v6: v6,
            last_attempt: meta.last_attempt.map(Timestamp),
            last_success: meta.last_success.map(Timestamp),
            data_time: meta.fetched_at.map(Timestamp),
            age_seconds: age.map(|age| age.as_secs()),
            next_attempt: meta.next_attempt.map(Timestamp),
            last_error: meta.last_error,
            stale: age.is_none_or(|age| age > feed.max_age),
        }
    }

    /// Feeds whose data is older than their `max_age`, or never fetched.
    pub(super) fn stale_feeds(&self) -> Vec<String> {
        self.live
            .config
            .feeds
            .iter()
            .filter(|feed| self.feed_status(feed).stale)
            .map(|feed| feed.name.clone())
            .collect()
    }

    /// Warns once when a feed turns stale (its vendor's changes are no
    /// longer followed), and says when it is fresh again.
    pub(super) fn warn_about_stale_feeds(&mut self) {
        self.timers.next_staleness_check = SystemTime::now() + STALENESS_CHECK_INTERVAL;
        let stale: std::collections::BTreeSet<String> = self.stale_feeds().into_iter().collect();
        for name in stale.difference(&self.feed_book.warned_stale) {
            let error = self
                .feed_book
                .meta
                .get(name)
                .and_then(|meta| meta.last_error.clone())
                .unwrap_or_else(|| "none".to_string());
            warn!(
                feed = name,
                last_error = error,
                "the feed's data is older than its `max_age`: the vendor's changes are not followed; `firewall-ctl feeds` shows why"
            );
        }
        for name in self.feed_book.warned_stale.difference(&stale) {
            info!(feed = name, "the feed's data is fresh again");
        }
        if stale != self.feed_book.warned_stale {
            self.feed_book.warned_stale = stale;
            self.publish();
        }
    }

    pub(super) fn feeds_report(&self) -> FeedsReport {
        FeedsReport {
            feeds: self
                .live
                .config
                .feeds
                .iter()
                .map(|feed| self.feed_status(feed))
                .collect(),
        }
    }

    /// The lists in force that stay valid under a config with feeds `new`:
    /// a feed that is gone, or now reads another list (another source,
    /// format or filter), loses its list, so narrowing a feed narrows it at
    /// once; its next fetch brings the new list.
    pub(super) fn feeds_for(&self, new: &[Feed]) -> FeedLists {
        let same_list = |name: &str| {
            let old = self.feed_config(name);
            new.iter().any(|feed| {
                old.is_some_and(|old| {
                    feed.name == old.name
                        && feed.source == old.source
                        && feed.format == old.format
                        && feed.filter == old.filter
                })
            })
        };
        self.live
            .feeds
            .iter()
            .filter(|(name, _)| same_list(name))
            .map(|(name, list)| (name.clone(), list.clone()))
            .collect()
    }

    /// Makes the writer's feeds those of a config with feeds `new` just
    /// applied with `lists` (from [`Writer::feeds_for`]), and tells the
    /// scheduler.
    pub(super) fn adopt_feeds(&mut self, new: &[Feed], lists: FeedLists) {
        self.feed_book
            .meta
            .retain(|name, _| lists.contains_key(name));
        self.live.feeds = Arc::new(lists);
        self.feed_book.configs.send_replace(new.to_vec());
    }
}
