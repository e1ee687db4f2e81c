//! The audit trail: `state_dir/audit.log`, one JSON object per line for
//! every change and every refused attempt, appended and fsynced with the
//! change it records.
//!
//! Growth is bounded by rotation: once the file would pass
//! [`ROTATE_BYTES`], it becomes `audit.log.1` (older ones move up to
//! `audit.log.4`, the oldest is dropped), so the trail takes at most
//! 5 x 16 MiB.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    entries::{Requester, RuntimeEntry, Timestamp},
    fsutil,
};

pub const AUDIT_FILE: &str = "audit.log";
/// Size at which the log is rotated.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept: `audit.log.1` (newest) to `audit.log.4`.
pub const KEEP_ROTATED: usize = 4;

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Allow,
    Remove,
    Expire,
    Reload,
    /// A `reload --confirm` kept.
    Confirm,
    /// A `reload --confirm` undone because no `confirm` came in time.
    Rollback,
    /// A read-only command refused for lack of permission.
    Read,
    /// A feed's fetched list applied, or refused (the last good one stays).
    FeedUpdate,
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The change is live and durable.
    Applied,
    /// Valid, but there was nothing to change.
    Unchanged,
    /// Invalid input or a failure; nothing was changed.
    Rejected,
    /// The requester may not do this; nothing was changed.
    Denied,
}

/// One line of `audit.log` (`firewall-ctl audit log --json` prints these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: Timestamp,
    pub action: Action,
    pub rule: Option<String>,
    /// The prefixes as given (a rejected attempt may hold invalid text).
    pub prefixes: Vec<String>,
    pub comment: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// From the socket's peer credentials; `null` for SIGHUP and expiry.
    pub user: Option<Requester>,
    pub outcome: Outcome,
    /// What changed, or why it was refused.
    pub detail: Option<String>,
    /// The feed of a `feed_update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
}

impl AuditRecord {
    pub fn new(action: Action, user: Option<Requester>, outcome: Outcome) -> Self {
        Self {
            time: Timestamp::now(),
            action,
            rule: None,
            prefixes: Vec::new(),
            comment: None,
            expires_at: None,
            user,
            outcome,
            detail: None,
            feed: None,
        }
    }

    /// The record of `entry`'s removal at its expiry.
    pub fn expiry(entry: RuntimeEntry, how: &str) -> Self {
        Self {
            rule: Some(entry.rule),
            prefixes: vec![entry.prefix.to_string()],
            comment: entry.comment,
            expires_at: entry.expires_at,
            detail: Some(format!("{how}; added by {}", entry.added_by)),
            ..Self::new(Action::Expire, None, Outcome::Applied)
        }
    }
}

pub struct AuditLog {
    dir: PathBuf,
    file: File,
    size: u64,
    /// [`ROTATE_BYTES`]; smaller in tests.
    rotate_bytes: u64,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn rotated(dir: &Path, generation: usize) -> PathBuf {
    dir.join(format!("{AUDIT_FILE}.{generation}"))
}

impl AuditLog {
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_rotating_at(dir, ROTATE_BYTES)
    }

    fn open_rotating_at(dir: &Path, rotate_bytes: u64) -> io::Result<Self> {
        let file = open(&dir.join(AUDIT_FILE))?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            size,
            rotate_bytes,
        })
    }

    /// Appends `record` and fsyncs it.
    pub fn append(&mut self, record: &AuditRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.rotate_bytes {
            self.rotate()?;
        }
        // One write of a whole line to an O_APPEND file: readers see whole
        // lines, or at worst a torn last one after a crash, which they skip.
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        for generation in (1..KEEP_ROTATED).rev() {
            let from = rotated(&self.dir, generation);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.dir, generation + 1))?;
            }
        }
        std::fs::rename(self.dir.join(AUDIT_FILE), rotated(&self.dir, 1))?;
        self.file = open(&self.dir.join(AUDIT_FILE))?;
        fsutil::sync_dir(&self.dir)?;
        self.size = 0;
        Ok(())
    }
}

/// Records in `dir` at or after `since`, oldest first, and the number of
/// lines that could not be read (a torn line after a crash).
pub fn read(dir: &Path, since: Option<Timestamp>) -> io::Result<(Vec<AuditRecord>, usize)> {
    let mut records = Vec::new();
    let mut unreadable = 0;
    let files = (1..=KEEP_ROTATED)
        .rev()
        .map(|generation| rotated(dir, generation))
        .chain(std::iter::once(dir.join(AUDIT_FILE)));
    for path in files {
        let text = match fsutil::read_regular_file(&path, 2 * ROTATE_BYTES) {
            Ok(text) => text,
            Err(fsutil::ReadError::Io(err)) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io::Error::other(format!("`{}`: {err}", path.display()))),
        };
        for line in text.lines().filter(|line| !line.is_empty()) {
            match serde_json::from_str::<AuditRecord>(line) {
                Ok(record) if since.is_none_or(|since| record.time >= since) => {
                    records.push(record)
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((records, unreadable))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn record(detail: &str) -> AuditRecord {
        AuditRecord {
            rule: Some("vendor".to_string()),
            prefixes: vec!["203.0.113.0/24".to_string()],
            detail: Some(detail.to_string()),
            ..AuditRecord::new(
                Action::Allow,
                Some(Requester {
                    uid: 1000,
                    user: Some("alice".to_string()),
                    pid: Some(7),
                }),
                Outcome::Applied,
            )
        }
    }

    #[test]
    fn records_are_json_lines_with_stable_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        log.append(&record("added")).unwrap();
        let text = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for field in [
            "time",
            "action",
            "rule",
            "prefixes",
            "comment",
            "expires_at",
            "user",
            "outcome",
            "detail",
        ] {
            assert!(value.get(field).is_some(), "{field} in {value}");
        }
        assert_eq!(value["action"], "allow");
        assert_eq!(value["outcome"], "applied");
        assert_eq!(value["user"]["user"], "alice");
        assert_eq!(value["user"]["uid"], 1000);
        assert_eq!(value["user"]["pid"], 7);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(AUDIT_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reading_filters_by_time_and_skips_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        let mut old = record("old");
        old.time = Timestamp(SystemTime::now() - Duration::from_secs(7200));
        log.append(&old).unwrap();
        log.append(&record("new")).unwrap();
        drop(log);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(AUDIT_FILE))
            .unwrap();
        file.write_all(b"{\"time\": \"2026-").unwrap();
        let (all, unreadable) = read(dir.path(), None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(unreadable, 1);
        let since = Timestamp(SystemTime::now() - Duration::from_secs(3600));
        let (recent, _) = read(dir.path(), Some(since)).unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].detail.as_deref(), Some("new"));
    }

    #[test]
    fn the_log_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open_rotating_at(dir.path(), 16 * 1024).unwrap();
        let big = "x".repeat(4 * 1024);
        for _ in 0..30 {
            log.append(&record(&big)).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "audit.log",
                "audit.log.1",
                "audit.log.2",
                "audit.log.3",
                "audit.log.4"
            ]
        );
        for name in &names {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= 16 * 1024);
        }
        // Three records of 4 KiB fit a file: 30 written, 5 files kept.
        let (records, _) = read(dir.path(), None).unwrap();
        assert_eq!(records.len(), 15);
    }
}
