//! When feeds are fetched: each on its own timer (its `refresh`, with
//! jitter; after a failure, exponential backoff with jitter), and at once on
//! `firewall-ctl feeds refresh`. Fetching runs on the async side, so it
//! never blocks the control socket or the data plane; the policy writer
//! applies what a fetch brought and answers with the outcome.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, RandomState},
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::{
    FeedState, FeedStates,
    fetch::{self, Fetched},
    store::Validator,
};
use crate::{api::FeedStatus, config::Feed, entries::Timestamp};

/// The first wait after a failure; it doubles with each further failure,
/// up to the feed's `refresh`.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest wait before resolving DNS names again, however short
/// their TTL.
const MIN_DNS_WAIT: Duration = Duration::from_secs(5);

/// Where fetches go to be applied (the policy writer's queue); `false`
/// once nobody takes them any more (the daemon stops).
pub type FetchSink = std::sync::Arc<dyn Fn(FetchJob) -> bool + Send + Sync>;

/// A fetch for the writer to apply.
pub struct FetchJob {
    /// The feed as it was defined when fetched.
    pub feed: Feed,
    pub fetched: Result<Fetched, String>,
    /// When the next attempt comes, if this one succeeds or fails.
    pub next_if_ok: Timestamp,
    pub next_if_failed: Timestamp,
    pub reply: oneshot::Sender<FeedOutcome>,
}

/// How the writer took a fetch.
pub struct FeedOutcome {
    pub ok: bool,
    pub status: FeedStatus,
    /// What the last good copy was validated with, for the next request.
    pub validator: Option<Validator>,
}

/// `firewall-ctl feeds refresh [NAME]`: the feed (all with `None`), and
/// where to answer with each one's status after it was fetched.
pub type RefreshRequest = (Option<String>, oneshot::Sender<Vec<FeedOutcome>>);

/// `duration` plus or minus 10%, so hosts and feeds do not fetch in step.
fn jittered(duration: Duration) -> Duration {
    let random = RandomState::new().hash_one(SystemTime::now());
    let tenth = duration / 10;
    let spread = tenth.as_millis().max(1) as u64 * 2;
    duration - tenth + Duration::from_millis(random % spread)
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32, refresh: Duration) -> Duration {
    jittered(
        FIRST_BACKOFF
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(refresh),
    )
}

/// Starts fetching `feeds` (and follows the config's feeds as reloads
/// change them); returns where to ask for a refresh.
pub fn start(
    mut feeds: watch::Receiver<Vec<Feed>>,
    known: FeedStates,
    jobs: FetchSink,
) -> anyhow::Result<mpsc::Sender<RefreshRequest>> {
    let client = fetch::client()?;
    let (requests, mut incoming) = mpsc::channel::<RefreshRequest>(16);
    tokio::spawn(async move {
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        // Only at start: a feed a reload adds or changes fetches at once.
        let mut known = known;
        loop {
            let wanted = feeds.borrow_and_update().clone();
            running.retain(|name, task| {
                let keep = wanted.contains(&task.feed);
                if !keep {
                    warn!(feed = name, "the feed changed or is gone; its fetches stop");
                    task.handle.abort();
                }
                keep
            });
            for feed in wanted {
                if running.contains_key(&feed.name) {
                    continue;
                }
                let known = known.get(&feed.name).cloned();
                let task =
                    Running::spawn(feed, known, client.clone(), std::sync::Arc::clone(&jobs));
                running.insert(task.feed.name.clone(), task);
            }
            known.clear();
            tokio::select! {
                changed = feeds.changed() => if changed.is_err() { return },
                request = incoming.recv() => match request {
                    Some((name, reply)) => refresh(&running, name.as_deref(), reply),
                    None => return,
                },
            }
        }
    });
    Ok(requests)
}

/// Asks the feeds named (all with `None`) to fetch now; answers once all
/// have, in the background.
fn refresh(
    running: &BTreeMap<String, Running>,
    name: Option<&str>,
    reply: oneshot::Sender<Vec<FeedOutcome>>,
) {
    let answers: Vec<oneshot::Receiver<FeedOutcome>> = running
        .values()
        .filter(|task| name.is_none_or(|name| task.feed.name == name))
        .filter_map(|task| {
            let (answer, outcome) = oneshot::channel();
            task.now.try_send(answer).ok().map(|()| outcome)
        })
        .collect();
    tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for answer in answers {
            if let Ok(outcome) = answer.await {
                outcomes.push(outcome);
            }
        }
        let _ = reply.send(outcomes);
    });
}

/// One feed's fetch loop.
struct Running {
    feed: Feed,
    /// Fetch now, and answer here.
    now: mpsc::Sender<oneshot::Sender<FeedOutcome>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    fn spawn(
        feed: Feed,
        known: Option<FeedState>,
        client: reqwest::Client,
        jobs: FetchSink,
    ) -> Self {
        let (now, mut requests) = mpsc::channel::<oneshot::Sender<FeedOutcome>>(4);
        // A feed with a last good copy waits out the rest of its refresh
        // (a restart does not fetch every feed again); one without fetches
        // at once.
        let first_wait =
            known
                .as_ref()
                .and_then(|state| state.fetched_at)
                .map_or(Duration::ZERO, |fetched| {
                    let age = fetched.elapsed().unwrap_or_default();
                    jittered(feed.refresh.saturating_sub(age))
                });
        let mut validator = known.and_then(|state| state.validator);
        let looped = feed.clone();
        let handle = tokio::spawn(async move {
            let feed = looped;
            let mut wait = first_wait;
            let mut failures = 0;
            loop {
                let asked = tokio::select! {
                    () = tokio::time::sleep(wait) => None,
                    asked = requests.recv() => match asked {
                        Some(asked) => Some(asked),
                        None => return,
                    },
                };
                let fetched = fetch::fetch(&client, &feed, validator.as_ref())
                    .await
                    .map_err(|err| err.to_string());
                let now = SystemTime::now();
                // DNS answers live as long as their TTL, bounded by `refresh`.
                let valid_for = match &fetched {
                    Ok(Fetched::Body {
                        valid_for: Some(ttl),
                        ..
                    }) => (*ttl).clamp(MIN_DNS_WAIT, feed.refresh),
                    _ => feed.refresh,
                };
                let next_ok = jittered(valid_for);
                let next_failed = backoff(failures + 1, feed.refresh);
                let (reply, outcome) = oneshot::channel();
                let job = FetchJob {
                    feed: feed.clone(),
                    fetched,
                    next_if_ok: Timestamp(now + next_ok),
                    next_if_failed: Timestamp(now + next_failed),
                    reply,
                };
                if !jobs(job) {
                    return;
                }
                let Ok(outcome) = outcome.await else {
                    warn!(
                        feed = feed.name,
                        "the policy writer did not answer a feed update"
                    );
                    return;
                };
                if outcome.ok {
                    failures = 0;
                    wait = next_ok;
                } else {
                    failures += 1;
                    wait = next_failed;
                }
                validator = outcome.validator.clone();
                if let Some(asked) = asked {
                    let _ = asked.send(outcome);
                }
            }
        });
        Self { feed, now, handle }
    }
}
