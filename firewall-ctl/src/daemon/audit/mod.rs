//! The audit trail, one JSON object per line, each appended and fsynced
//! with what it records:
//!
//! - `state_dir/audit.log`: every change, every change refused for bad
//!   input or a failure, and the daemon's own events (start, expiry,
//!   rollback, feed updates). Rotated at [`ROTATE_BYTES`] into
//!   `audit.log.1` ... `audit.log.4`: at most 5 x 16 MiB.
//! - `state_dir/audit-denied.log`: requests refused for lack of permission,
//!   rotated apart ([`DENIED_ROTATE_BYTES`], one older file), so that no
//!   number of them can rotate a change out of the trail.
//!
//! A caller without permission chooses what it sends, so its denials are
//! recorded in a bounded form (the request kind, the caller, how many
//! prefixes, their digest and the first few), a few a minute at most
//! ([`DenialLimiter`]); the rest are counted into a summary record. Every
//! text field of every record is capped ([`AuditRecord::bounded`]).
//!
//! `audit log` streams the records of both files, merged by time, from
//! descriptors opened at once (a rotation meanwhile changes nothing read).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use sha2::{Digest as _, Sha256};

use crate::{
    api::{Action, AuditRecord, Outcome},
    entries::{Requester, RuntimeEntry, Timestamp},
    fsutil::{ReadError, StateDir},
    text::{escape_controls, truncated},
};

pub const AUDIT_FILE: &str = "audit.log";
/// Size at which the log is rotated.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept: `audit.log.1` (newest) to `audit.log.4`.
pub const KEEP_ROTATED: usize = 4;
/// Where permission denials go.
pub const DENIED_FILE: &str = "audit-denied.log";
/// Size at which the denials' file is rotated; one older file is kept.
pub const DENIED_ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest line `audit log` reads; longer ones (written by an older
/// release, or torn) are counted as unreadable.
const MAX_LINE_BYTES: u64 = 1024 * 1024;

/// Caps of the text fields of a record (bytes, after control characters
/// are escaped; JSON may escape a quote or a backslash in them again).
const MAX_NAME_BYTES: usize = 128;
const MAX_PREFIX_BYTES: usize = 64;
const MAX_COMMENT_BYTES: usize = 1024;
const MAX_DETAIL_BYTES: usize = 4096;
const MAX_REQUEST_ID_BYTES: usize = 64;
/// Prefixes a denial record lists; the rest are counted and digested.
const DENIED_PREFIXES: usize = 3;

/// `text` with control characters escaped, cut to `max` bytes.
fn capped(text: &str, max: usize) -> String {
    truncated(&escape_controls(text), max).into_owned()
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
            prefix_count: None,
            prefixes_sha256: None,
            request_id: None,
            suppressed: None,
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

    /// The bounded record of a request refused for lack of permission: the
    /// caller chose its payload, so only its kind, rule, the number of
    /// prefixes, their digest and the first few are kept.
    pub fn denied(
        action: Action,
        user: Requester,
        message: &str,
        rule: Option<&str>,
        prefixes: &[String],
    ) -> Self {
        let mut record = Self::new(action, Some(user), Outcome::Denied);
        record.detail = Some(message.to_string());
        record.rule = rule.map(ToString::to_string);
        if !prefixes.is_empty() {
            record.prefixes = prefixes.iter().take(DENIED_PREFIXES).cloned().collect();
            record.prefix_count = Some(prefixes.len());
            record.prefixes_sha256 = Some(format!("{:x}", Sha256::digest(prefixes.join("\n"))));
        }
        record
    }

    /// This record with every text field capped (control characters
    /// escaped, cut with a marker): what is written.
    pub fn bounded(&self) -> Self {
        let capped_opt = |text: &Option<String>, max| text.as_deref().map(|text| capped(text, max));
        Self {
            rule: capped_opt(&self.rule, MAX_NAME_BYTES),
            prefixes: self
                .prefixes
                .iter()
                .map(|prefix| capped(prefix, MAX_PREFIX_BYTES))
                .collect(),
            comment: capped_opt(&self.comment, MAX_COMMENT_BYTES),
            user: self.user.clone().map(|user| Requester {
                user: user.user.map(|name| capped(&name, MAX_NAME_BYTES)),
                ..user
            }),
            detail: capped_opt(&self.detail, MAX_DETAIL_BYTES),
            feed: capped_opt(&self.feed, MAX_NAME_BYTES),
            request_id: capped_opt(&self.request_id, MAX_REQUEST_ID_BYTES),
            ..self.clone()
        }
    }
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the audit log `{path}`: {source}; move it aside (`mv {path} {path}.broken`), the daemon starts a new one",
    path = path.display()
)]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: ReadError,
}

/// One append-only file and its rotated generations.
struct Trail {
    name: &'static str,
    file: File,
    size: u64,
    rotate_bytes: u64,
    keep_rotated: usize,
}

fn rotated(name: &str, generation: usize) -> String {
    format!("{name}.{generation}")
}

impl Trail {
    fn open(
        dir: &StateDir,
        name: &'static str,
        rotate_bytes: u64,
        keep_rotated: usize,
    ) -> Result<Self, AuditError> {
        let file = dir.open_append(name, 0o600).map_err(|source| AuditError {
            path: dir.join(name),
            source,
        })?;
        let size = file
            .metadata()
            .map_err(|err| AuditError {
                path: dir.join(name),
                source: err.into(),
            })?
            .len();
        Ok(Self {
            name,
            file,
            size,
            rotate_bytes,
            keep_rotated,
        })
    }

    /// Appends `line` (a whole record and its newline) and fsyncs it.
    fn append(&mut self, files: &AuditFiles, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.rotate_bytes {
            // Not while a reader opens the files: it would miss one.
            let _rotating = files
                .rotation
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            self.rotate(&files.dir)?;
        }
        // One write of a whole line to an O_APPEND file: readers see whole
        // lines, or at worst a torn last one after a crash, which they skip.
        self.file.write_all(line)?;
        self.file.sync_data()?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, dir: &StateDir) -> io::Result<()> {
        for generation in (1..self.keep_rotated).rev() {
            match dir.rename(
                &rotated(self.name, generation),
                &rotated(self.name, generation + 1),
            ) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        dir.rename(self.name, &rotated(self.name, 1))?;
        self.file = dir.open_append(self.name, 0o600).map_err(|err| match err {
            ReadError::Io(err) => err,
            other => io::Error::other(other.to_string()),
        })?;
        dir.sync()?;
        self.size = 0;
        Ok(())
    }

    /// The names of this trail's files, oldest first.
    fn files(name: &str, keep_rotated: usize) -> impl Iterator<Item = String> {
        (1..=keep_rotated)
            .rev()
            .map(move |generation| rotated(name, generation))
            .chain(std::iter::once(name.to_string()))
    }
}

/// Where the trail is, for reading it while it is written: the directory,
/// and a lock that a rotation takes against readers opening the files.
#[derive(Clone, Debug)]
pub struct AuditFiles {
    dir: Arc<StateDir>,
    rotation: Arc<RwLock<()>>,
}

pub struct AuditLog {
    files: AuditFiles,
    changes: Trail,
    denials: Trail,
    limiter: DenialLimiter,
}

fn line_of(record: &AuditRecord) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&record.bounded()).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

impl AuditLog {
    pub fn open(dir: Arc<StateDir>) -> Result<Self, AuditError> {
        Self::open_rotating_at(dir, ROTATE_BYTES)
    }

    fn open_rotating_at(dir: Arc<StateDir>, rotate_bytes: u64) -> Result<Self, AuditError> {
        Ok(Self {
            changes: Trail::open(&dir, AUDIT_FILE, rotate_bytes, KEEP_ROTATED)?,
            denials: Trail::open(&dir, DENIED_FILE, DENIED_ROTATE_BYTES, 1)?,
            limiter: DenialLimiter::default(),
            files: AuditFiles {
                dir,
                rotation: Arc::default(),
            },
        })
    }

    /// The files, for readers.
    pub fn files(&self) -> AuditFiles {
        self.files.clone()
    }

    /// Appends `record` (bounded) to the trail of changes and fsyncs it.
    pub fn append(&mut self, record: &AuditRecord) -> io::Result<()> {
        self.changes.append(&self.files, &line_of(record)?)
    }

    /// Records a request denied for lack of permission, in the denials'
    /// file, unless its caller has had its share of records this minute:
    /// then it is only counted, for a summary record.
    pub fn deny(&mut self, record: &AuditRecord) -> io::Result<()> {
        if self.limiter.admit(record, SystemTime::now()) {
            self.denials.append(&self.files, &line_of(record)?)?;
        }
        Ok(())
    }

    /// When a summary of suppressed denials is due next.
    pub fn next_summary_at(&self) -> Option<SystemTime> {
        self.limiter.next_due()
    }

    /// Writes the summaries of suppressed denials that are due.
    pub fn write_due_summaries(&mut self) -> io::Result<()> {
        for record in self.limiter.due_summaries(SystemTime::now()) {
            self.denials.append(&self.files, &line_of(&record)?)?;
        }
        Ok(())
    }
}

/// A token bucket: `burst` tokens, one more every `refill`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    refilled_at: SystemTime,
}

impl Bucket {
    fn full(burst: u32, now: SystemTime) -> Self {
        Self {
            tokens: burst,
            refilled_at: now,
        }
    }

    fn refill(&mut self, burst: u32, refill: Duration, now: SystemTime) {
        let elapsed = now.duration_since(self.refilled_at).unwrap_or_default();
        let earned = (elapsed.as_millis() / refill.as_millis()) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(burst);
            self.refilled_at += refill * earned;
        }
        if self.tokens == burst {
            self.refilled_at = now;
        }
    }
}

/// Denial records one caller may write at once, and how soon it gets
/// another: at most 5 + 5 in a first minute, 5 a minute after.
const CALLER_BURST: u32 = 5;
const CALLER_REFILL: Duration = Duration::from_secs(12);
/// The same over every caller together: 20 a minute.
const ALL_BURST: u32 = 20;
const ALL_REFILL: Duration = Duration::from_secs(3);
/// How often a caller's suppressed denials are summarized, at most.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// What one caller was denied and not recorded one by one.
#[derive(Debug)]
struct Suppressed {
    user: Requester,
    count: u64,
    by_action: BTreeMap<Action, u64>,
    first: Timestamp,
    last: Timestamp,
}

#[derive(Debug)]
struct Caller {
    bucket: Bucket,
    suppressed: Option<Suppressed>,
    /// No summary before this (one per [`SUMMARY_INTERVAL`] at most).
    summary_at: SystemTime,
}

/// Rate limits for denial records, per caller (uid) and overall.
#[derive(Debug, Default)]
pub struct DenialLimiter {
    callers: HashMap<u32, Caller>,
    all: Option<Bucket>,
}

impl DenialLimiter {
    /// Whether `record` (a denial) is written; if not, it is counted.
    fn admit(&mut self, record: &AuditRecord, now: SystemTime) -> bool {
        let Some(user) = record.user.clone() else {
            return true;
        };
        let all = self.all.get_or_insert(Bucket::full(ALL_BURST, now));
        all.refill(ALL_BURST, ALL_REFILL, now);
        let caller = self.callers.entry(user.uid).or_insert_with(|| Caller {
            bucket: Bucket::full(CALLER_BURST, now),
            suppressed: None,
            summary_at: now,
        });
        caller.bucket.refill(CALLER_BURST, CALLER_REFILL, now);
        if caller.bucket.tokens > 0 && all.tokens > 0 {
            caller.bucket.tokens -= 1;
            all.tokens -= 1;
            return true;
        }
        let suppressed = caller.suppressed.get_or_insert_with(|| Suppressed {
            user,
            count: 0,
            by_action: BTreeMap::new(),
            first: record.time,
            last: record.time,
        });
        suppressed.count += 1;
        *suppressed.by_action.entry(record.action).or_default() += 1;
        suppressed.last = record.time;
        if caller.summary_at <= now {
            caller.summary_at = now + SUMMARY_INTERVAL;
        }
        false
    }

    fn next_due(&self) -> Option<SystemTime> {
        self.callers
            .values()
            .filter(|caller| caller.suppressed.is_some())
            .map(|caller| caller.summary_at)
            .min()
    }

    /// The summary records due at `now`; forgets callers with nothing left
    /// to tell whose share is whole again.
    fn due_summaries(&mut self, now: SystemTime) -> Vec<AuditRecord> {
        let mut due = Vec::new();
        for caller in self.callers.values_mut() {
            if caller.summary_at > now {
                continue;
            }
            if let Some(suppressed) = caller.suppressed.take() {
                due.push(summary(suppressed));
                caller.summary_at = now + SUMMARY_INTERVAL;
            }
        }
        self.callers.retain(|_, caller| {
            caller.bucket.refill(CALLER_BURST, CALLER_REFILL, now);
            caller.suppressed.is_some() || caller.bucket.tokens < CALLER_BURST
        });
        due
    }
}

fn summary(suppressed: Suppressed) -> AuditRecord {
    let kinds: Vec<String> = suppressed
        .by_action
        .iter()
        .map(|(action, count)| format!("{} x{count}", action.name()))
        .collect();
    let mut record = AuditRecord::new(
        Action::DeniedRequests,
        Some(suppressed.user),
        Outcome::Denied,
    );
    record.suppressed = Some(suppressed.count);
    record.detail = Some(format!(
        "{} more requests of this caller were denied from {} to {} and not recorded one by one (at most {CALLER_BURST} a minute are): {}",
        suppressed.count,
        suppressed.first,
        suppressed.last,
        kinds.join(", ")
    ));
    record
}

/// Which records `audit log` asks for.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since: Option<Timestamp>,
    pub request_id: Option<String>,
}

impl Filter {
    fn matches(&self, record: &AuditRecord) -> bool {
        self.since.is_none_or(|since| record.time >= since)
            && self
                .request_id
                .as_ref()
                .is_none_or(|id| record.request_id.as_ref() == Some(id))
    }
}

/// The records of one trail, oldest first, read from files opened at once,
/// each only up to the length it had then.
struct TrailReader {
    files: std::vec::IntoIter<io::Take<BufReader<File>>>,
    current: Option<io::Take<BufReader<File>>>,
    line: Vec<u8>,
    unreadable: usize,
}

impl TrailReader {
    fn open(dir: &StateDir, name: &str, keep_rotated: usize) -> io::Result<Self> {
        let mut files = Vec::new();
        for name in Trail::files(name, keep_rotated) {
            match dir.open_read(&name) {
                Ok(file) => {
                    let length = file.metadata()?.len();
                    files.push(BufReader::new(file).take(length));
                }
                Err(ReadError::Io(err)) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(io::Error::other(format!(
                        "`{}`: {err}",
                        dir.join(&name).display()
                    )));
                }
            }
        }
        Ok(Self {
            files: files.into_iter(),
            current: None,
            line: Vec::new(),
            unreadable: 0,
        })
    }

    /// The next record; lines that cannot be read are counted and skipped.
    fn next_record(&mut self) -> io::Result<Option<AuditRecord>> {
        loop {
            if self.current.is_none() {
                match self.files.next() {
                    Some(file) => self.current = Some(file),
                    None => return Ok(None),
                }
            }
            let file = self.current.as_mut().expect("set above");
            self.line.clear();
            let read = file
                .by_ref()
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut self.line)?;
            if read == 0 {
                self.current = None;
                continue;
            }
            if self.line.last() != Some(&b'\n') && read as u64 == MAX_LINE_BYTES {
                // Too long to be ours: skip to its end.
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    let more = file
                        .by_ref()
                        .take(MAX_LINE_BYTES)
                        .read_until(b'\n', &mut rest)?;
                    if more == 0 || rest.last() == Some(&b'\n') {
                        break;
                    }
                }
                self.unreadable += 1;
                continue;
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<AuditRecord>(&self.line) {
                Ok(record) => return Ok(Some(record)),
                Err(_) => self.unreadable += 1,
            }
        }
    }
}

impl AuditFiles {
    /// Opens every file of both trails, at once (no rotation meanwhile),
    /// for one [`Report`].
    pub fn open(&self) -> io::Result<Report> {
        let _opening = self.rotation.read().unwrap_or_else(PoisonError::into_inner);
        Ok(Report {
            changes: TrailReader::open(&self.dir, AUDIT_FILE, KEEP_ROTATED)?,
            denials: TrailReader::open(&self.dir, DENIED_FILE, 1)?,
        })
    }
}

/// Both trails' files, opened, for `audit log`.
pub struct Report {
    changes: TrailReader,
    denials: TrailReader,
}

impl Report {
    /// Writes `{"audit_log":{"records":[...],"unreadable_lines":N}}` and a
    /// newline (the control protocol's `Response::AuditLog`) to `out`, a
    /// record at a time: the records of both trails that match `filter`,
    /// merged by time, oldest first. Memory stays at a line or two whatever
    /// the size. An error past the start leaves the answer cut short.
    pub fn write(mut self, filter: &Filter, out: &mut dyn io::Write) -> io::Result<()> {
        let mut next_change = self.changes.next_record()?;
        let mut next_denial = self.denials.next_record()?;
        out.write_all(b"{\"audit_log\":{\"records\":[")?;
        let mut first = true;
        loop {
            let take_change = match (&next_change, &next_denial) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(change), Some(denial)) => change.time <= denial.time,
            };
            let record = if take_change {
                std::mem::replace(&mut next_change, self.changes.next_record()?)
            } else {
                std::mem::replace(&mut next_denial, self.denials.next_record()?)
            }
            .expect("chosen because it is there");
            if !filter.matches(&record) {
                continue;
            }
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            serde_json::to_writer(&mut *out, &record)?;
        }
        write!(
            out,
            "],\"unreadable_lines\":{}}}}}\n",
            self.changes.unreadable + self.denials.unreadable
        )
    }
}

#[cfg(test)]
mod tests;
