//! Runtime entries on disk: `state_dir/allowlist.toml`, written by the
//! daemon only, atomically and durably, and never silently discarded.
//!
//! A file the daemon cannot use stops it with an error that names the file
//! and how to recover; the file is left exactly as it was.

use std::{
    fs::File,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::CounterLedger,
    entries::{RuntimeEntries, RuntimeEntry},
    fsutil::{DirError, MAX_FILE_BYTES, ReadError, StateDir},
};

/// The state file, inside `state_dir`.
pub const STATE_FILE: &str = "allowlist.toml";
/// Held locked while a daemon uses `state_dir`.
const LOCK_FILE: &str = "lock";
/// Which rules the pinned counters count for (see [`CounterLedger`]).
const LEDGER_FILE: &str = "counters.json";
/// A `reload --confirm` waiting for confirmation, and what it rolls back to.
const PENDING_FILE: &str = "pending-reload.toml";
/// A copy of the config text the daemon runs, for `reload --confirm` to
/// roll back to: on disk rather than in memory, where a large allowlist's
/// text is megabytes. Rewritten at every start and reload, so it needs no
/// fsync; operators can diff it against the config file.
pub const RUNNING_CONFIG_FILE: &str = "running-config.toml";
/// The copy of a config while it is being applied.
const STAGED_CONFIG_FILE: &str = "running-config.toml.next";

/// A staged copy of a config ([`StateStore::stage_running_config`]),
/// removed when dropped unless kept.
pub struct StagedConfig {
    /// Writes the copy while the config is compiled and applied.
    writing: Option<std::thread::JoinHandle<io::Result<()>>>,
    dir: Arc<StateDir>,
}

impl StagedConfig {
    /// Whether the copy was written whole; waits for the write.
    fn written(&mut self) -> io::Result<()> {
        match self.writing.take().map(std::thread::JoinHandle::join) {
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(io::Error::other("the thread writing it stopped")),
            None => Err(io::Error::other("the copy was not written")),
        }
    }

    /// Makes the staged copy the running one, now that its config is live.
    /// Without one, the running copy is removed: it is out of date, and
    /// must never be rolled back to.
    pub fn keep(mut self) {
        let kept = self
            .written()
            .and_then(|()| self.dir.rename(STAGED_CONFIG_FILE, RUNNING_CONFIG_FILE));
        if let Err(err) = kept {
            let _ = self.dir.remove(STAGED_CONFIG_FILE);
            let _ = self.dir.remove(RUNNING_CONFIG_FILE);
            tracing::warn!(path = %self.dir.join(RUNNING_CONFIG_FILE).display(), error = %err, "keeping a copy of the running config failed; `reload --confirm` is refused until a reload writes it");
        }
    }
}

impl Drop for StagedConfig {
    fn drop(&mut self) {
        if self.writing.is_some() {
            let _ = self.written();
            let _ = self.dir.remove(STAGED_CONFIG_FILE);
        }
    }
}

/// A reload that rolls back unless confirmed: kept on disk so that a
/// daemon restarted meanwhile still rolls back on time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingReload {
    pub version: u32,
    /// When the previous config comes back unless `confirm` came first.
    pub rollback_at: crate::entries::Timestamp,
    /// The config text that was live before the reload.
    pub previous_config: String,
}
/// The format this release reads and writes.
pub const STATE_VERSION: u32 = 1;

const HEADER: &str = "# Runtime allowlist entries of firewall-ctl, added with `firewall-ctl allow`.\n\
# Written by the daemon; change entries with `firewall-ctl allow` and `firewall-ctl remove`,\n\
# and edit this file by hand only while the daemon is stopped.\n";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    entries: Vec<RuntimeEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state_dir `{}`: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: DirError,
    },
    #[error(
        "cannot use the lock file `{path}`: {source}; remove it while no daemon runs (the daemon creates its own)",
        path = path.display()
    )]
    Lock {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error(
        "another firewall-ctl daemon is using state_dir `{}`; stop it first, or give this daemon its own `state_dir`",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error(
        "cannot read state file `{path}`: {source}; it was left untouched. To start without its runtime entries, move it aside (`mv {path} {path}.broken`) and add them again with `firewall-ctl allow`",
        path = path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error(
        "state file `{path}` is corrupt: {message}; it was left untouched. Fix it by hand while the daemon is stopped (it is TOML), or move it aside (`mv {path} {path}.broken`) and add its entries again with `firewall-ctl allow`",
        path = path.display()
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "state file `{path}` has format version {version}, which this firewall-ctl does not know (it reads version {STATE_VERSION}); it was left untouched. It was probably written by a newer release: run that release, or move the file aside (`mv {path} {path}.broken`) and add its entries again with `firewall-ctl allow`",
        path = path.display()
    )]
    Version { path: PathBuf, version: i64 },
    #[error("writing state file `{}` failed: {source}; nothing was changed", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The state directory of a running daemon, locked against a second one.
pub struct StateStore {
    dir: Arc<StateDir>,
    _lock: Flock<File>,
}

impl StateStore {
    /// Opens (creating if needed) `dir`, locks it, and loads its entries.
    pub fn open(dir: &Path) -> Result<(Self, RuntimeEntries), StateError> {
        let dir = StateDir::open(dir).map_err(|source| StateError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let lock_file = dir
            .open_lock(LOCK_FILE)
            .map_err(|source| StateError::Lock {
                path: dir.join(LOCK_FILE),
                source,
            })?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            StateError::Locked {
                dir: dir.path().to_path_buf(),
            }
        })?;
        let entries = load(&dir, STATE_FILE)?;
        let store = Self {
            dir: Arc::new(dir),
            _lock: lock,
        };
        Ok((store, entries))
    }

    /// The state file's path, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The directory, for the other files the daemon keeps there.
    pub fn dir(&self) -> &Arc<StateDir> {
        &self.dir
    }

    /// Replaces the file with `entries`; durable when this returns `Ok`.
    pub fn save(&self, entries: &RuntimeEntries) -> Result<(), StateError> {
        let text = render(entries);
        self.dir
            .write_atomically(STATE_FILE, text.as_bytes(), 0o600)
            .map_err(|source| StateError::Write {
                path: self.path(),
                source,
            })
    }
}

impl StateStore {
    /// The counter ledger an earlier daemon saved, if any can be read.
    pub fn ledger(&self) -> Option<CounterLedger> {
        let path = self.dir.join(LEDGER_FILE);
        let text = match self.dir.read(LEDGER_FILE, MAX_FILE_BYTES) {
            Ok(text) => text,
            Err(ReadError::Io(err)) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "ignoring a counter ledger that cannot be read; per-rule counters start from zero, and it is replaced");
                return None;
            }
        };
        serde_json::from_str(&text)
            .inspect_err(|err| {
                tracing::warn!(file = %path.display(), error = %err, "ignoring an unreadable counter ledger; per-rule counters start from zero")
            })
            .ok()
    }

    /// Saves the counter ledger; losing it only resets per-rule counters.
    pub fn save_ledger(&self, ledger: &CounterLedger) {
        let text = serde_json::to_vec(ledger).expect("a ledger serializes");
        if let Err(err) = self.dir.write_atomically(LEDGER_FILE, &text, 0o600) {
            tracing::warn!(file = %self.dir.join(LEDGER_FILE).display(), error = %err, "saving the counter ledger failed; per-rule counters will restart from zero after a restart");
        }
    }
}

impl StateStore {
    /// The pending reload, if one waits for confirmation. An unreadable
    /// file stops start-up like a corrupt state file: it decides which
    /// policy comes back.
    pub fn pending_reload(&self) -> Result<Option<PendingReload>, StateError> {
        let path = self.dir.join(PENDING_FILE);
        let text = match self.dir.read(PENDING_FILE, MAX_FILE_BYTES) {
            Ok(text) => text,
            Err(ReadError::Io(err)) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let pending: PendingReload = toml::from_str(&text).map_err(|err| StateError::Corrupt {
            path: path.clone(),
            message: crate::text::escape_controls(&err.to_string()),
        })?;
        if pending.version != STATE_VERSION {
            return Err(StateError::Version {
                path,
                version: i64::from(pending.version),
            });
        }
        Ok(Some(pending))
    }

    /// Records a pending reload, durably, before it goes live.
    pub fn save_pending_reload(&self, pending: &PendingReload) -> Result<(), StateError> {
        let text = toml::to_string(pending).expect("a pending reload serializes");
        self.dir
            .write_atomically(PENDING_FILE, text.as_bytes(), 0o600)
            .map_err(|source| StateError::Write {
                path: self.dir.join(PENDING_FILE),
                source,
            })
    }

    /// Keeps `text` as the copy of the running config.
    pub fn keep_running_config(&self, text: String) {
        self.stage_running_config(text).keep();
    }

    /// Writes `text`, a config about to go live, beside the running copy,
    /// on a thread of its own while the config is compiled and applied,
    /// so that the text need not stay in memory after that (a large
    /// allowlist's text is megabytes) nor its write delay the reload:
    /// [`StagedConfig::keep`] makes it the running copy once it is live.
    pub fn stage_running_config(&self, text: String) -> StagedConfig {
        let dir = Arc::clone(&self.dir);
        // Written in place: it is only ever used once whole, renamed by
        // `keep`. No fsync: it is written again at every start.
        let write = move || {
            dir.create_new(STAGED_CONFIG_FILE, 0o600)
                .and_then(|mut file| file.write_all(text.as_bytes()))
        };
        let writing = std::thread::Builder::new()
            .name("config-copy".into())
            .spawn(write)
            .inspect_err(|err| {
                tracing::warn!(path = %self.dir.join(STAGED_CONFIG_FILE).display(), error = %err, "writing a copy of the new config failed; once it is live, `reload --confirm` is refused until a reload writes the copy");
            })
            .ok();
        StagedConfig {
            writing,
            dir: Arc::clone(&self.dir),
        }
    }

    /// The copy of the running config.
    pub fn running_config(&self) -> Result<String, String> {
        let path = self.dir.join(RUNNING_CONFIG_FILE);
        self.dir.read(RUNNING_CONFIG_FILE, MAX_FILE_BYTES).map_err(|err| {
            format!(
                "the copy of the running config `{}`, which `--confirm` rolls back to, cannot be read: {err}; reload without `--confirm`, which writes the copy again",
                path.display()
            )
        })
    }

    /// Forgets the pending reload (confirmed or rolled back).
    pub fn clear_pending_reload(&self) -> Result<(), StateError> {
        self.dir
            .remove(PENDING_FILE)
            .and_then(|_| self.dir.sync())
            .map_err(|source| StateError::Write {
                path: self.dir.join(PENDING_FILE),
                source,
            })
    }
}

fn render(entries: &RuntimeEntries) -> String {
    let file = StateFile {
        version: STATE_VERSION,
        entries: entries.values().cloned().collect(),
    };
    let body = toml::to_string(&file).expect("runtime entries always serialize to TOML");
    format!("{HEADER}{body}")
}

/// Loads the entries in the file `name` of `dir`; a missing file means none.
fn load(dir: &StateDir, name: &str) -> Result<RuntimeEntries, StateError> {
    let path = dir.join(name);
    let text = match dir.read(name, MAX_FILE_BYTES) {
        Ok(text) => text,
        Err(ReadError::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(RuntimeEntries::new());
        }
        Err(source) => return Err(StateError::Read { path, source }),
    };
    parse(&text).map_err(|err| match err {
        ParseError::Version(version) => StateError::Version { path, version },
        ParseError::Corrupt(message) => StateError::Corrupt {
            path,
            message: crate::text::escape_controls(&message),
        },
    })
}

enum ParseError {
    Version(i64),
    Corrupt(String),
}

fn parse(text: &str) -> Result<RuntimeEntries, ParseError> {
    // The version first: a newer format must say so, not look corrupt.
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ParseError::Corrupt(err.to_string()))?;
    match table.get("version") {
        Some(toml::Value::Integer(version)) if *version == i64::from(STATE_VERSION) => {}
        Some(toml::Value::Integer(version)) => return Err(ParseError::Version(*version)),
        _ => {
            return Err(ParseError::Corrupt(
                "it has no integer `version`".to_string(),
            ));
        }
    }
    let file: StateFile =
        toml::from_str(text).map_err(|err| ParseError::Corrupt(err.to_string()))?;
    let mut entries = RuntimeEntries::new();
    for entry in file.entries {
        if let Some(twice) = entries.insert(entry.key(), entry) {
            return Err(ParseError::Corrupt(format!(
                "`{}` is listed twice in rule `{}`",
                twice.prefix, twice.rule
            )));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::entries::{Requester, Timestamp};

    fn entry(prefix: &str, expires: bool) -> RuntimeEntry {
        let entry = crate::entries::tests::entry("vendor", prefix);
        RuntimeEntry {
            comment: expires.then(|| "until \"Friday\"\n".to_string()),
            added_by: Requester {
                uid: 1000,
                user: Some("alice".to_string()),
                pid: Some(4242),
            },
            expires_at: expires.then(|| Timestamp(entry.added_at.0 + Duration::from_secs(3600))),
            ..entry
        }
    }

    fn entries(list: &[RuntimeEntry]) -> RuntimeEntries {
        list.iter()
            .map(|entry| (entry.key(), entry.clone()))
            .collect()
    }

    /// A staged copy becomes the running one when kept, and leaves no
    /// trace when dropped (a reload that failed).
    #[test]
    fn a_staged_config_is_kept_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open(dir.path()).unwrap();
        store.keep_running_config("first".to_string());
        assert_eq!(store.running_config().unwrap(), "first");
        drop(store.stage_running_config("failed".to_string()));
        assert_eq!(store.running_config().unwrap(), "first");
        assert!(!dir.path().join(STAGED_CONFIG_FILE).exists());
        let large = "x".repeat(4 << 20);
        store.stage_running_config(large.clone()).keep();
        assert_eq!(store.running_config().unwrap(), large);
        assert!(!dir.path().join(STAGED_CONFIG_FILE).exists());
    }

    #[test]
    fn entries_round_trip_through_a_readable_versioned_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = StateStore::open(dir.path()).unwrap();
        assert!(loaded.is_empty());
        let saved = entries(&[entry("203.0.113.0/24", true), entry("2001:db8::/48", false)]);
        store.save(&saved).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.starts_with("# Runtime allowlist entries"), "{text}");
        assert!(text.contains("version = 1"), "{text}");
        assert!(text.contains("prefix = \"203.0.113.0/24\""), "{text}");
        assert!(
            text.contains("expires_at = \"2027-01-15T09:00:00Z\""),
            "{text}"
        );
        assert_eq!(load(store.dir(), STATE_FILE).unwrap(), saved);
    }

    #[test]
    fn a_second_daemon_cannot_use_the_same_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
    }

    /// A broken or unknown file stops start-up with the path and a way out,
    /// and is never rewritten.
    #[test]
    fn corrupt_and_unknown_files_are_refused_and_left_untouched() {
        let cases = [
            (
                "version = 1\n[[entries]]\nrule = \"vendor\"\nprefix = \"203.0.113.5/24\"\n",
                "host bits set",
            ),
            ("version = 1\n[[entries]]\nrule = ", "TOML parse error"),
            ("entries = []\n", "no integer `version`"),
            ("version = 1\nsurprise = true\n", "unknown field `surprise`"),
            ("\u{0}\u{1}garbage", "TOML parse error"),
        ];
        for (text, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(STATE_FILE);
            std::fs::write(&path, text).unwrap();
            let message = StateStore::open(dir.path()).err().unwrap().to_string();
            assert!(message.contains(expected), "{expected}: {message}");
            assert!(
                message.contains(&format!("state file `{}` is corrupt", path.display())),
                "{message}"
            );
            assert!(message.contains(".broken"), "{message}");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                text,
                "left untouched"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, "version = 2\n[[entries]]\nnew_field = 1\n").unwrap();
        let message = StateStore::open(dir.path()).err().unwrap().to_string();
        assert!(message.contains("format version 2"), "{message}");
        assert!(message.contains("newer release"), "{message}");
    }

    #[test]
    fn duplicates_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let one = entry("203.0.113.0/24", false);
        let body = toml::to_string(&StateFile {
            version: 1,
            entries: vec![one.clone(), one],
        })
        .unwrap();
        std::fs::write(dir.path().join(STATE_FILE), body).unwrap();
        let message = StateStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            message.contains("`203.0.113.0/24` is listed twice in rule `vendor`"),
            "{message}"
        );
    }
}
