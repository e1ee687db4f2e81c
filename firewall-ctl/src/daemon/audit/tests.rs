//! The audit trail's writing, rotation, bounds and reading.

use std::time::{Duration, SystemTime};

use super::*;
use crate::api::{AuditLogReport, Response};

fn requester(uid: u32) -> Requester {
    Requester {
        uid,
        user: Some("alice".to_string()),
        pid: Some(7),
    }
}

fn record(detail: &str) -> AuditRecord {
    AuditRecord {
        rule: Some("vendor".to_string()),
        prefixes: vec!["203.0.113.0/24".to_string()],
        detail: Some(detail.to_string()),
        ..AuditRecord::new(Action::Allow, Some(requester(1000)), Outcome::Applied)
    }
}

fn state_dir() -> (tempfile::TempDir, Arc<StateDir>) {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(StateDir::open(dir.path()).unwrap());
    (dir, state)
}

fn read(dir: &Arc<StateDir>, filter: &Filter) -> AuditLogReport {
    let files = AuditFiles {
        dir: Arc::clone(dir),
        rotation: Arc::default(),
    };
    let mut out = Vec::new();
    files.open().unwrap().write(filter, &mut out).unwrap();
    assert_eq!(out.last(), Some(&b'\n'));
    match serde_json::from_slice(&out).unwrap() {
        Response::AuditLog(report) => report,
        other => panic!("{other:?}"),
    }
}

fn all(dir: &Arc<StateDir>) -> Vec<AuditRecord> {
    read(dir, &Filter::default()).records
}

#[test]
fn records_are_json_lines_with_stable_names() {
    let (dir, state) = state_dir();
    let mut log = AuditLog::open(state).unwrap();
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
    for action in [
        Action::FeedUpdate,
        Action::FeedsRefresh,
        Action::DeniedRequests,
    ] {
        assert_eq!(
            serde_json::to_value(action).unwrap(),
            serde_json::Value::from(action.name())
        );
    }
}

#[test]
fn reading_filters_by_time_and_request_and_skips_a_torn_last_line() {
    let (dir, state) = state_dir();
    let mut log = AuditLog::open(state.clone()).unwrap();
    let mut old = record("old");
    old.time = Timestamp(SystemTime::now() - Duration::from_secs(7200));
    log.append(&old).unwrap();
    let mut new = record("new");
    new.request_id = Some("r-1".to_string());
    log.append(&new).unwrap();
    drop(log);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(AUDIT_FILE))
        .unwrap();
    file.write_all(b"{\"time\": \"2026-").unwrap();
    let report = read(&state, &Filter::default());
    assert_eq!(report.records.len(), 2);
    assert_eq!(report.unreadable_lines, 1);
    let since = Timestamp(SystemTime::now() - Duration::from_secs(3600));
    let recent = read(
        &state,
        &Filter {
            since: Some(since),
            ..Filter::default()
        },
    );
    assert_eq!(recent.records.len(), 1);
    assert_eq!(recent.records[0].detail.as_deref(), Some("new"));
    let by_id = read(
        &state,
        &Filter {
            request_id: Some("r-1".to_string()),
            ..Filter::default()
        },
    );
    assert_eq!(by_id.records.len(), 1);
    assert_eq!(by_id.records[0].detail, new.detail);
}

/// A line longer than any record is skipped, counted, and the next one
/// read.
#[test]
fn an_overlong_line_is_counted_not_read() {
    let (dir, state) = state_dir();
    let mut text = "x".repeat(3 * MAX_LINE_BYTES as usize);
    text.push('\n');
    text.push_str(&serde_json::to_string(&record("after")).unwrap());
    text.push('\n');
    std::fs::write(dir.path().join(AUDIT_FILE), text).unwrap();
    let report = read(&state, &Filter::default());
    assert_eq!(report.unreadable_lines, 1);
    assert_eq!(report.records.len(), 1);
    assert_eq!(report.records[0].detail.as_deref(), Some("after"));
}

#[test]
fn the_log_rotates_and_keeps_a_bounded_number_of_files() {
    let (dir, state) = state_dir();
    let mut log = AuditLog::open_rotating_at(state.clone(), 16 * 1024).unwrap();
    let big = "x".repeat(4 * 1024);
    for _ in 0..30 {
        log.append(&record(&big)).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(AUDIT_FILE))
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
    assert_eq!(all(&state).len(), 15);
}

/// The worst a caller without permission can make a denial record is a
/// few hundred bytes, whatever it sends.
#[test]
fn a_denial_is_recorded_in_a_bounded_form() {
    let prefixes: Vec<String> = (0..3900).map(|_| "\\\u{1}\"".repeat(20_000)).collect();
    let mut user = requester(1000);
    user.user = Some("a".repeat(32));
    let mut record = AuditRecord::denied(
        Action::Allow,
        user,
        "permission denied: `allow` changes the allowlist and needs root or membership in group `fw-operators-of-this-host`; group `fw-readers-of-this-host` may only read",
        Some(&"\\\u{7}".repeat(100_000)),
        &prefixes,
    );
    record.request_id = Some("r".repeat(64));
    let line = line_of(&record).unwrap();
    assert!(line.len() <= MAX_DENIAL_RECORD_BYTES, "{}", line.len());
    let written: AuditRecord = serde_json::from_slice(&line).unwrap();
    assert_eq!(written.prefixes.len(), DENIED_PREFIXES);
    assert_eq!(written.prefix_count, Some(3900));
    assert_eq!(written.prefixes_sha256.unwrap().len(), 64);
    let summary = line_of(&summary(Suppressed {
        user: requester(1000),
        count: u64::MAX,
        by_action: [
            Action::Allow,
            Action::Remove,
            Action::Reload,
            Action::Confirm,
            Action::FeedsRefresh,
            Action::Read,
        ]
        .into_iter()
        .map(|action| (action, u64::MAX))
        .collect(),
        first: Timestamp::now(),
        last: Timestamp::now(),
    }))
    .unwrap();
    assert!(
        summary.len() <= MAX_SUMMARY_RECORD_BYTES,
        "{}",
        summary.len()
    );
}

/// The largest denial and summary records ([`a_denial_is_recorded_in_a_bounded_form`]
/// checks them): with the limiter's rates, the most a caller's denials
/// add a minute (the README states it).
const MAX_DENIAL_RECORD_BYTES: usize = 1024;
const MAX_SUMMARY_RECORD_BYTES: usize = 640;

#[test]
fn denials_past_a_callers_share_are_summarized_and_never_touch_the_changes() {
    let (dir, state) = state_dir();
    let mut log = AuditLog::open(state.clone()).unwrap();
    log.append(&record("the admin's change")).unwrap();
    let changes_before = std::fs::read(dir.path().join(AUDIT_FILE)).unwrap();
    let prefixes = vec!["192.0.2.1".to_string(); 3900];
    for _ in 0..2000 {
        let denied = AuditRecord::denied(
            Action::Allow,
            requester(1001),
            "permission denied",
            None,
            &prefixes,
        );
        log.deny(&denied).unwrap();
    }
    assert_eq!(
        std::fs::read(dir.path().join(AUDIT_FILE)).unwrap(),
        changes_before
    );
    let due = log.next_summary_at().unwrap();
    assert!(due > SystemTime::now());
    log.limiter
        .callers
        .values_mut()
        .for_each(|caller| caller.summary_at = SystemTime::now());
    log.write_due_summaries().unwrap();
    assert_eq!(log.next_summary_at(), None);
    let records = all(&state);
    assert_eq!(records[0].detail.as_deref(), Some("the admin's change"));
    let denied: Vec<_> = records
        .iter()
        .filter(|record| record.action == Action::Allow && record.outcome == Outcome::Denied)
        .collect();
    assert_eq!(denied.len(), CALLER_BURST as usize);
    let summaries: Vec<_> = records
        .iter()
        .filter(|record| record.action == Action::DeniedRequests)
        .collect();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0].suppressed,
        Some(2000 - u64::from(CALLER_BURST))
    );
    assert!(
        summaries[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("allow x1995"),
        "{:?}",
        summaries[0].detail
    );
}

#[test]
fn callers_share_a_minute_and_all_callers_share_another() {
    let mut limiter = DenialLimiter::default();
    let start = SystemTime::now();
    let deny = |limiter: &mut DenialLimiter, uid, at| {
        let record = AuditRecord::denied(Action::Reload, requester(uid), "no", None, &[]);
        limiter.admit(&record, at)
    };
    // A caller: five at once, then one every 12 s.
    let admitted = (0..100).filter(|_| deny(&mut limiter, 1, start)).count();
    assert_eq!(admitted, 5);
    assert!(!deny(&mut limiter, 1, start + Duration::from_secs(11)));
    assert!(deny(&mut limiter, 1, start + Duration::from_secs(12)));
    // In a minute after the burst: five more.
    let minute: usize = (13..=72)
        .filter(|second| deny(&mut limiter, 1, start + Duration::from_secs(*second)))
        .count();
    assert_eq!(minute, 5);
    // Every caller together: 20 at once.
    let mut limiter = DenialLimiter::default();
    let admitted = (0..100u32)
        .filter(|uid| deny(&mut limiter, 100 + uid, start))
        .count();
    assert_eq!(admitted as u32, ALL_BURST);
}
