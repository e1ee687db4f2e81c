//! How much of the daemon local users may take at once: control
//! connections and heavy reads, per user and in all, with room kept that
//! only root and `control_group` can use, so that a reader holding all it
//! may never locks an administrator out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Limits of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Held at once by everyone.
    pub total: usize,
    /// Held at once by one user other than root.
    pub per_user: usize,
    /// Held at once by users outside root and `control_group` together:
    /// `total - unprivileged` is theirs alone.
    pub unprivileged: usize,
}

/// Control connections: far below the daemon's file limit, far above what
/// operators and scripts need.
pub const CONNECTIONS: Limits = Limits {
    total: 128,
    per_user: 32,
    unprivileged: 96,
};

/// Reads that build or stream large answers (`list`, `stats --entries`,
/// `audit report`, `audit log`): each may take a core for seconds at
/// half a million entries.
pub const HEAVY_READS: Limits = Limits {
    total: 3,
    per_user: 2,
    unprivileged: 2,
};

/// Reads of users outside root and `control_group` that the policy writer
/// answers (`stats`, `explain`, `feeds`), queued or running at once: each
/// is quick, but a reader with all its connections asking again and again
/// would queue an administrator's change behind them.
pub const WRITER_READS: Limits = Limits {
    total: 4,
    per_user: 2,
    unprivileged: 4,
};

/// Why a holder was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `total` are held.
    Full,
    /// This user holds `per_user`.
    User,
    /// Users outside root and `control_group` hold `unprivileged`.
    Unprivileged,
}

impl Refusal {
    /// Says why `uid` was refused one more of `what` (`control connections
    /// open`), under `limits`.
    pub fn message(self, what: &str, limits: Limits, uid: u32) -> String {
        match self {
            Refusal::Full => format!(
                "the daemon has {} {what}, all it serves at once; try again in a moment",
                limits.total
            ),
            Refusal::User => format!(
                "{} {what} from uid {uid} already, the most one user may have; close some, or try again in a moment",
                limits.per_user
            ),
            Refusal::Unprivileged => format!(
                "users outside root and `control_group` have {} {what} already, all they may (the rest are kept for those who may change the policy); try again in a moment",
                limits.unprivileged
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    unprivileged: usize,
    by_user: HashMap<u32, usize>,
}

/// Counts what is held against [`Limits`].
#[derive(Clone, Debug)]
pub struct Limiter {
    limits: Limits,
    held: Arc<Mutex<Held>>,
}

/// One thing held; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Mutex<Held>>,
    uid: u32,
    privileged: bool,
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            held: Arc::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for `uid`; `privileged` is root or a `control_group` member.
    pub fn admit(&self, uid: u32, privileged: bool) -> Result<Slot, Refusal> {
        let mut held = self.held.lock().expect("no holder panics");
        let of_user = held.by_user.get(&uid).copied().unwrap_or(0);
        if held.total >= self.limits.total {
            return Err(Refusal::Full);
        }
        if uid != 0 && of_user >= self.limits.per_user {
            return Err(Refusal::User);
        }
        if !privileged && held.unprivileged >= self.limits.unprivileged {
            return Err(Refusal::Unprivileged);
        }
        held.total += 1;
        held.unprivileged += usize::from(!privileged);
        *held.by_user.entry(uid).or_default() += 1;
        Ok(Slot {
            held: Arc::clone(&self.held),
            uid,
            privileged,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("no holder panics");
        held.total -= 1;
        held.unprivileged -= usize::from(!self.privileged);
        if let Some(count) = held.by_user.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                held.by_user.remove(&self.uid);
            }
        }
    }
}

/// How often refusals of one kind (one user's, say) are logged, at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets a log line of each key through once per [`LOG_INTERVAL`], counting
/// those held back: a flood of refusals cannot flood the journal.
#[derive(Debug)]
pub struct Throttle<K> {
    by_key: HashMap<K, (Instant, u64)>,
}

impl<K> Default for Throttle<K> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Throttle<K> {
    /// `Some(held back since the last one)` if a line of `key` is due.
    pub fn due(&mut self, key: K) -> Option<u64> {
        let now = Instant::now();
        let (logged_at, held_back) = self.by_key.entry(key).or_insert((now - LOG_INTERVAL, 0));
        if now.duration_since(*logged_at) < LOG_INTERVAL {
            *held_back += 1;
            return None;
        }
        let due = *held_back;
        *logged_at = now;
        *held_back = 0;
        if self.by_key.len() > 4096 {
            self.by_key
                .retain(|_, (logged_at, _)| now.duration_since(*logged_at) < LOG_INTERVAL);
        }
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.due(1), Some(0));
        assert_eq!(throttle.due(1), None);
        assert_eq!(throttle.due(1), None);
        assert_eq!(throttle.due(2), Some(0));
        throttle.by_key.get_mut(&1).unwrap().0 -= LOG_INTERVAL;
        assert_eq!(throttle.due(1), Some(2));
    }

    #[test]
    fn a_user_gets_a_share_and_root_and_operators_keep_theirs() {
        let limiter = Limiter::new(CONNECTIONS);
        // A reader takes what one user may.
        let reader: Vec<Slot> = (0..32)
            .map(|_| limiter.admit(1001, false).unwrap())
            .collect();
        assert_eq!(limiter.admit(1001, false).unwrap_err(), Refusal::User);
        // Other readers fill what readers may hold together.
        let others: Vec<Slot> = (0..64)
            .map(|n| limiter.admit(2000 + n / 32, false).unwrap())
            .collect();
        assert_eq!(
            limiter.admit(3000, false).unwrap_err(),
            Refusal::Unprivileged
        );
        // Root and an operator still get in, up to the total.
        let admins: Vec<Slot> = (0..32)
            .map(|n| {
                limiter
                    .admit(if n % 2 == 0 { 0 } else { 1002 }, true)
                    .unwrap()
            })
            .collect();
        assert_eq!(limiter.admit(0, true).unwrap_err(), Refusal::Full);
        drop(admins);
        // Root has no per-user limit.
        let root: Vec<Slot> = (0..32).map(|_| limiter.admit(0, true).unwrap()).collect();
        drop((reader, others, root));
        assert_eq!(
            *limiter.held.lock().unwrap().by_user.get(&0).unwrap_or(&0),
            0
        );
        assert_eq!(limiter.held.lock().unwrap().total, 0);
        assert!(limiter.held.lock().unwrap().by_user.is_empty());
    }
}
