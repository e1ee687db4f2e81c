//! Trie writes made on threads of their own while the caller works out
//! the next ones. A large change spends about as long finding counter
//! indexes as the kernel spends in its tries, so the two overlap; and the
//! tries of the two families are separate maps with locks of their own, so
//! each family has its own writing thread (its lane).

use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::mpsc,
    thread::{Scope, ScopedJoinHandle},
};

use super::{DatapathError, batch};

type Job = Box<dyn FnOnce() -> Result<(), DatapathError> + Send>;

/// The writing threads: each makes the writes queued on its lane in
/// order, until its first error. Queues are unbounded: a producer that
/// waited for one lane could not start the other's work, and what waits is
/// at most one change's values (about 20 MB for a new 250k list).
pub struct TrieWrites<'scope> {
    lanes: Vec<Lane<'scope>>,
}

struct Lane<'scope> {
    jobs: mpsc::Sender<Job>,
    writer: ScopedJoinHandle<'scope, Result<(), DatapathError>>,
}

/// Lanes: one per address family.
pub const LANES: usize = 2;

impl<'scope> TrieWrites<'scope> {
    pub fn start(scope: &'scope Scope<'scope, '_>) -> Result<Self, DatapathError> {
        let lanes = (0..LANES)
            .map(|_| {
                let (jobs, queue) = mpsc::channel::<Job>();
                let writer = std::thread::Builder::new()
                    .name("map-writer".into())
                    .spawn_scoped(scope, move || queue.into_iter().try_for_each(|job| job()))
                    .map_err(DatapathError::Thread)?;
                Ok(Lane { jobs, writer })
            })
            .collect::<Result<_, DatapathError>>()?;
        Ok(Self { lanes })
    }

    /// Queues on `lane`: delete `removed` from the map `name` (at `map`, a
    /// descriptor of its own) and write `values` at `keys`. Writes to one
    /// map must all go on one lane.
    pub fn replace<K: aya::Pod + Send, V: aya::Pod + Send>(
        &self,
        lane: usize,
        map: OwnedFd,
        name: &'static str,
        removed: Vec<K>,
        keys: Vec<K>,
        values: Vec<V>,
    ) {
        let job: Job =
            Box::new(move || batch::replace(map.as_fd(), name, &removed, &keys, &values));
        // Fails only once the lane's writer has stopped at an error,
        // which `finish` returns.
        let _ = self.lanes[lane].jobs.send(job);
    }

    /// Waits for every queued write; the first lane's error, if one failed.
    pub fn finish(self) -> Result<(), DatapathError> {
        let results: Vec<_> = self
            .lanes
            .into_iter()
            .map(|Lane { jobs, writer }| {
                drop(jobs);
                writer
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        results.into_iter().collect()
    }
}

/// Runs `produce` with a [`TrieWrites`] and waits for its writes. A failed
/// write is the error returned, even if `produce` failed after it (it may
/// have failed for that reason).
pub fn with_trie_writes<T>(
    produce: impl FnOnce(&TrieWrites<'_>) -> Result<T, DatapathError>,
) -> Result<T, DatapathError> {
    std::thread::scope(|scope| {
        let writes = TrieWrites::start(scope)?;
        let produced = produce(&writes);
        writes.finish()?;
        produced
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_the_error_and_later_ones_are_not_made() {
        // A descriptor that is no map: every write to it fails.
        let not_a_map = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let result = with_trie_writes(|writes| {
            writes.replace(0, not_a_map(), "FIRST", vec![1u32], vec![2u32], vec![3u32]);
            writes.replace(0, not_a_map(), "SECOND", vec![1u32], vec![2u32], vec![3u32]);
            writes.replace(1, not_a_map(), "OTHER", vec![1u32], vec![2u32], vec![3u32]);
            Ok(())
        });
        let err = result.unwrap_err();
        assert!(err.to_string().contains("FIRST"), "{err}");
    }

    #[test]
    fn a_producer_error_is_returned_when_the_writes_succeeded() {
        let result: Result<(), _> =
            with_trie_writes(|_| Err(DatapathError::MissingMap { name: "SOURCES" }));
        assert!(matches!(
            result,
            Err(DatapathError::MissingMap { name: "SOURCES" })
        ));
    }
}
