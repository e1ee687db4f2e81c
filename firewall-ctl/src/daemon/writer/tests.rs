//! The writer in-process, without root: a real state directory (a
//! temporary one), a real audit log, and the in-memory data plane, which
//! fails the step a test asks it to. Each test checks what the caller is
//! told (the error's kind), what packets meet (the live policy), what
//! survives a restart (the state file) and what the audit trail says.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use firewall_common::{
    maps::PortKey,
    reasons::Reason,
    verdict::{Packet, decide},
    wire::{Source, protocol},
};
use tokio::sync::{oneshot, watch};

use super::{Job, Started, Writer};
use crate::{
    api::{
        Action, AllowRequest, Command, ErrorKind, Outcome, ReloadRequest, RemoveRequest, Response,
        SshSession,
    },
    daemon::{
        audit::{AUDIT_FILE, AuditFiles, AuditLog},
        overrides::Overrides,
        state::{STATE_FILE, StateStore},
    },
    datapath::fake::{FakeDataPlane, FakeState},
    entries::{Requester, Timestamp},
    feeds::{
        fetch::Fetched,
        schedule::{FeedOutcome, FetchJob},
        store::FeedStore,
    },
    policy::{self, CompiledPolicy},
};

/// Two rules on `lo` (an interface every host has, for the reload's
/// checks): the vendor's on tcp/443 with a feed, SSH from the office.
pub(crate) const CONFIG: &str = r#"
interfaces = ["lo"]
xdp_mode = "skb"

[[feeds]]
name = "partner"
url = "https://feeds.example.org/partner.txt"
format = "plain"
max_shrink = "50%"

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/24"]
feeds = ["partner"]
default = true

[[rules]]
name = "office-ssh"
ports = ["tcp/22"]
sources = ["198.51.100.0/24"]
"#;

/// The caller's SSH session: from the office, to tcp/22.
const SESSION: SshSession = SshSession {
    client: IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)),
    port: 22,
};

pub(crate) struct Harness {
    pub(crate) writer: Writer,
    pub(crate) plane: Arc<Mutex<FakeState>>,
    pub(crate) config_path: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// The audit trail's files, as the server reads them.
    pub(crate) audit_files: AuditFiles,
    /// What the writer tells the feed scheduler.
    pub(crate) feed_configs: watch::Receiver<Vec<crate::config::Feed>>,
    pub(crate) dir: tempfile::TempDir,
}

fn root() -> Requester {
    Requester {
        uid: 0,
        user: Some("root".to_string()),
        pid: Some(4242),
    }
}

impl Harness {
    /// A writer of `config` with no runtime entries, as the daemon starts it.
    pub(crate) fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("firewall.toml");
        let state_dir = dir.path().join("state");
        std::fs::write(&config_path, config).unwrap();
        let overrides = Overrides {
            socket: Some(dir.path().join("ctl.sock")),
            state_dir: Some(state_dir.clone()),
            bpf_dir: Some(dir.path().join("bpf")),
        };
        let (config, text) = overrides.load(&config_path).unwrap();
        let (store, runtime) = StateStore::open(&state_dir).unwrap();
        store.stage_running_config(text).keep();
        let audit = AuditLog::open(Arc::clone(store.dir())).unwrap();
        let audit_files = audit.files();
        let feed_store = FeedStore::open(store.dir()).unwrap();
        let policy = policy::compile(&config, &runtime).unwrap();
        let datapath = FakeDataPlane::enforcing(&policy);
        let plane = datapath.state();
        let (feed_configs, feed_config_updates) = watch::channel(config.feeds.clone());
        let writer = Writer::new(Started {
            config_path: config_path.clone(),
            overrides,
            program_id: 1,
            config,
            runtime,
            feeds: Default::default(),
            feed_states: Default::default(),
            feed_store,
            feed_configs,
            policy,
            datapath: Box::new(datapath),
            store,
            audit,
            pending: None,
            flows: None,
        });
        Self {
            writer,
            plane,
            config_path,
            state_dir,
            audit_files,
            feed_configs: feed_config_updates,
            dir,
        }
    }

    /// Runs `command` as root and returns the answer.
    fn run(&mut self, command: Command) -> Response {
        self.run_by(command, None)
    }

    /// Runs `command` as root, to be started by `deadline`.
    fn run_by(&mut self, command: Command, deadline: Option<SystemTime>) -> Response {
        let (reply, answer) = oneshot::channel();
        self.writer.handle(Job::Command {
            command,
            requester: Some(root()),
            reply: Some(reply),
            request_id: Some("test-1".to_string()),
            deadline,
        });
        answer.blocking_recv().expect("the writer answers")
    }

    /// The error kind `command` is refused with.
    fn refused(&mut self, command: Command) -> (ErrorKind, String) {
        match self.run(command) {
            Response::Error(error) => (error.kind, error.message),
            other => panic!("not refused: {other:?}"),
        }
    }

    fn live(&self) -> CompiledPolicy {
        self.plane
            .lock()
            .unwrap()
            .live
            .clone()
            .expect("a live policy")
    }

    /// Whether the live policy admits `source` on tcp/`port`.
    pub(crate) fn admits(&self, source: &str, port: u16) -> bool {
        admits(&self.live(), source, port)
    }

    /// The state file as a restarted daemon reads it.
    fn saved(&self) -> String {
        std::fs::read_to_string(self.state_dir.join(STATE_FILE)).unwrap_or_default()
    }

    /// `(action, outcome)` of every record of the audit trail, oldest first.
    fn audit(&self) -> Vec<(Action, Outcome)> {
        std::fs::read_to_string(self.state_dir.join(AUDIT_FILE))
            .unwrap()
            .lines()
            .map(|line| {
                let record: crate::api::AuditRecord = serde_json::from_str(line).unwrap();
                (record.action, record.outcome)
            })
            .collect()
    }

    /// Makes the next state file save fail, whoever runs the test (root
    /// too): a directory where the file goes cannot be renamed over.
    fn break_saves(&self) {
        let path = self.state_dir.join(STATE_FILE);
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir(path).unwrap();
    }

    fn mend_saves(&self) {
        std::fs::remove_dir(self.state_dir.join(STATE_FILE)).unwrap();
    }
}

pub(crate) fn admits(policy: &CompiledPolicy, source: &str, port: u16) -> bool {
    let source = match source.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => Source::V4(v4.octets()),
        IpAddr::V6(v6) => Source::V6(v6.octets()),
    };
    let packet = Packet::Transport {
        source,
        port: PortKey::new(protocol::TCP, port),
    };
    decide(packet, policy).reason == Reason::Allowed
}

/// `allow PREFIXES --comment OPS-1` to the default rule.
fn allow_request(prefixes: &[&str]) -> AllowRequest {
    AllowRequest {
        prefixes: prefixes.iter().map(ToString::to_string).collect(),
        rule: None,
        comment: Some("OPS-1".to_string()),
        expires: None,
        force: false,
    }
}

pub(crate) fn allow(prefixes: &[&str]) -> Command {
    Command::Allow(allow_request(prefixes))
}

fn remove_request(prefixes: &[&str], ssh: Option<SshSession>) -> RemoveRequest {
    RemoveRequest {
        prefixes: prefixes.iter().map(ToString::to_string).collect(),
        rule: None,
        ssh,
        force: false,
    }
}

fn remove(prefixes: &[&str], ssh: Option<SshSession>) -> Command {
    Command::Remove(remove_request(prefixes, ssh))
}

fn reload(confirm: Option<&str>, ssh: Option<SshSession>) -> Command {
    Command::Reload(ReloadRequest {
        confirm: confirm.map(ToString::to_string),
        ssh,
        force: false,
    })
}

#[test]
fn allow_is_live_durable_and_audited_and_remove_takes_it_back() {
    let mut harness = Harness::new(CONFIG);
    assert!(!harness.admits("192.0.2.9", 443));
    let Response::Change(report) = harness.run(allow(&["192.0.2.9", "192.0.2.9/32"])) else {
        panic!("not applied");
    };
    assert_eq!(
        report.changes.len(),
        1,
        "the same prefix twice is one entry"
    );
    assert!(harness.admits("192.0.2.9", 443));
    assert!(!harness.admits("192.0.2.9", 22), "only the vendor's port");
    assert!(harness.saved().contains("192.0.2.9/32"));
    // Again: nothing to change.
    let Response::Change(again) = harness.run(allow(&["192.0.2.9"])) else {
        panic!("not answered");
    };
    assert_eq!(again.changes[0].change.name(), "unchanged");

    let Response::Change(_) = harness.run(remove(&["192.0.2.9"], None)) else {
        panic!("not removed");
    };
    assert!(!harness.admits("192.0.2.9", 443));
    assert!(!harness.saved().contains("192.0.2.9/32"));
    assert_eq!(
        harness.audit(),
        [
            (Action::Allow, Outcome::Applied),
            (Action::Allow, Outcome::Unchanged),
            (Action::Remove, Outcome::Applied),
        ]
    );
}

#[test]
fn bad_input_is_refused_whole_with_its_kind_and_audited() {
    let mut harness = Harness::new(CONFIG);
    let before = harness.live();
    let (kind, message) = harness.refused(allow(&["192.0.2.10", "192.0.2.5/24"]));
    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(message.starts_with("nothing was changed: `192.0.2.5/24` has host bits set"));
    let (kind, _) = harness.refused(Command::Allow(AllowRequest {
        rule: Some("nope".to_string()),
        ..allow_request(&["192.0.2.10"])
    }));
    assert_eq!(kind, ErrorKind::NotFound);
    let (kind, message) = harness.refused(remove(&["203.0.113.0/24"], None));
    assert_eq!(kind, ErrorKind::Conflict);
    assert!(message.contains("comes from the config file"), "{message}");
    let (kind, _) = harness.refused(remove(&["192.0.2.77"], None));
    assert_eq!(kind, ErrorKind::NotFound);
    assert_eq!(harness.live(), before);
    assert_eq!(harness.saved(), "");
    assert_eq!(
        harness.audit(),
        [
            (Action::Allow, Outcome::Rejected),
            (Action::Allow, Outcome::Rejected),
            (Action::Remove, Outcome::Rejected),
            (Action::Remove, Outcome::Rejected),
        ]
    );
}

#[test]
fn a_failing_idle_slot_write_changes_nothing() {
    let mut harness = Harness::new(CONFIG);
    let before = harness.live();
    harness.plane.lock().unwrap().fail_write = true;
    let (kind, message) = harness.refused(allow(&["192.0.2.11"]));
    assert_eq!(kind, ErrorKind::Internal);
    assert!(
        message.contains("writing the new policy into the data plane failed")
            && message.ends_with("nothing was changed"),
        "{message}"
    );
    assert_eq!(harness.live(), before);
    assert_eq!(harness.saved(), "");
    assert!(harness.writer.live.runtime.is_empty(), "undone in memory");
    assert_eq!(harness.audit(), [(Action::Allow, Outcome::Rejected)]);
    // The next change goes through whole.
    assert!(matches!(
        harness.run(allow(&["192.0.2.11"])),
        Response::Change(_)
    ));
    assert!(harness.admits("192.0.2.11", 443));
}

#[test]
fn a_failing_state_save_changes_nothing() {
    let mut harness = Harness::new(CONFIG);
    let before = harness.live();
    harness.break_saves();
    let (kind, message) = harness.refused(allow(&["192.0.2.12"]));
    assert_eq!(kind, ErrorKind::Internal);
    assert!(message.ends_with("nothing was changed"), "{message}");
    assert_eq!(harness.live(), before, "saved before it goes live");
    assert!(harness.writer.live.runtime.is_empty());
    harness.mend_saves();
    assert!(matches!(
        harness.run(allow(&["192.0.2.12"])),
        Response::Change(_)
    ));
    assert!(harness.saved().contains("192.0.2.12/32"));
    assert_eq!(
        harness.audit(),
        [
            (Action::Allow, Outcome::Rejected),
            (Action::Allow, Outcome::Applied)
        ]
    );
}

#[test]
fn a_failing_switch_changes_nothing_and_restores_the_state_file() {
    let mut harness = Harness::new(CONFIG);
    assert!(matches!(
        harness.run(allow(&["192.0.2.13"])),
        Response::Change(_)
    ));
    let (before, saved) = (harness.live(), harness.saved());
    harness.plane.lock().unwrap().fail_switch = true;
    let (kind, message) = harness.refused(remove(&["192.0.2.13"], None));
    assert_eq!(kind, ErrorKind::Internal);
    assert!(
        message.starts_with("switching the data plane to the new policy failed"),
        "{message}"
    );
    assert_eq!(harness.live(), before);
    assert_eq!(harness.saved(), saved, "the entry is still in the file");
    assert!(harness.admits("192.0.2.13", 443));
    assert_eq!(harness.writer.live.runtime.len(), 1);
}

#[test]
fn expired_entries_stop_admitting_even_when_the_state_cannot_be_saved() {
    let mut harness = Harness::new(CONFIG);
    assert!(matches!(
        harness.run(Command::Allow(AllowRequest {
            expires: Some("1h".to_string()),
            ..allow_request(&["192.0.2.14"])
        })),
        Response::Change(_)
    ));
    // An hour later.
    for entry in Arc::make_mut(&mut harness.writer.live.runtime).values_mut() {
        entry.expires_at = Some(Timestamp(SystemTime::now() - Duration::from_secs(1)));
    }
    harness.break_saves();
    harness.writer.expire_due();
    assert!(!harness.admits("192.0.2.14", 443), "live first");
    assert!(harness.writer.live.runtime.is_empty());
    assert_eq!(
        harness.audit(),
        [
            (Action::Allow, Outcome::Applied),
            (Action::Expire, Outcome::Applied)
        ]
    );
}

#[test]
fn a_reload_applies_a_good_config_and_refuses_a_bad_one_whole() {
    let mut harness = Harness::new(CONFIG);
    std::fs::write(
        &harness.config_path,
        CONFIG.replace("\"203.0.113.0/24\"", "\"203.0.113.0/24\", \"192.0.2.20\""),
    )
    .unwrap();
    let Response::Reload(report) = harness.run(reload(None, None)) else {
        panic!("not reloaded");
    };
    assert_eq!(report.rules, 2);
    assert!(harness.admits("192.0.2.20", 443));
    let good = harness.live();

    std::fs::write(
        &harness.config_path,
        CONFIG.replace("tcp/443", "tcp/443-80"),
    )
    .unwrap();
    let (kind, message) = harness.refused(reload(None, None));
    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(
        message.starts_with("reload rejected, the running policy is unchanged"),
        "{message}"
    );
    assert_eq!(harness.live(), good);
    assert_eq!(harness.writer.reloads.rejected, 1);
    assert_eq!(
        harness.audit(),
        [
            (Action::Reload, Outcome::Applied),
            (Action::Reload, Outcome::Rejected)
        ]
    );
}

#[test]
fn an_unconfirmed_reload_rolls_back_and_a_confirmed_one_stays() {
    let mut harness = Harness::new(CONFIG);
    let original = harness.live();
    let widened = CONFIG.replace("\"203.0.113.0/24\"", "\"203.0.113.0/24\", \"192.0.2.21\"");
    std::fs::write(&harness.config_path, &widened).unwrap();
    let Response::Reload(report) = harness.run(reload(Some("2m"), None)) else {
        panic!("not reloaded");
    };
    assert!(report.rollback_at.is_some());
    assert!(harness.admits("192.0.2.21", 443));
    // A second reload and an entry for a rule the rollback would drop wait.
    let (kind, _) = harness.refused(reload(None, None));
    assert_eq!(kind, ErrorKind::Conflict);

    // The window passes unconfirmed.
    harness.writer.reloads.pending.as_mut().unwrap().rollback_at =
        Timestamp(SystemTime::now() - Duration::from_secs(1));
    harness.writer.roll_back_if_due();
    assert_eq!(harness.live(), original);
    assert!(harness.writer.reloads.pending.is_none());

    // Again, confirmed this time: it stays; a second confirm has nothing to keep.
    assert!(matches!(
        harness.run(reload(Some("2m"), None)),
        Response::Reload(_)
    ));
    assert!(matches!(
        harness.run(Command::Confirm),
        Response::Confirm(_)
    ));
    let (kind, _) = harness.refused(Command::Confirm);
    assert_eq!(kind, ErrorKind::Conflict);
    harness.writer.roll_back_if_due();
    assert!(harness.admits("192.0.2.21", 443));
    assert_eq!(
        harness.audit(),
        [
            (Action::Reload, Outcome::Applied),
            (Action::Reload, Outcome::Rejected),
            (Action::Rollback, Outcome::Applied),
            (Action::Reload, Outcome::Applied),
            (Action::Confirm, Outcome::Applied),
            (Action::Confirm, Outcome::Rejected),
        ]
    );
}

#[test]
fn the_lockout_guard_keeps_the_callers_ssh_session_unless_forced() {
    let mut harness = Harness::new(CONFIG);
    // A config without the office range would cut the session.
    let without_office = CONFIG.replace(
        "sources = [\"198.51.100.0/24\"]",
        "sources = [\"198.51.100.200/32\"]",
    );
    std::fs::write(&harness.config_path, &without_office).unwrap();
    let (kind, message) = harness.refused(reload(None, Some(SESSION)));
    assert_eq!(kind, ErrorKind::Conflict);
    assert!(message.contains("cut your own SSH session"), "{message}");
    assert!(harness.admits("198.51.100.7", 22));

    // With an entry of its own the reload goes through; removing that
    // entry would cut the session, unless forced.
    let request = AllowRequest {
        rule: Some("office-ssh".to_string()),
        ..allow_request(&["198.51.100.7"])
    };
    assert!(matches!(
        harness.run(Command::Allow(request)),
        Response::Change(_)
    ));
    assert!(matches!(
        harness.run(reload(None, Some(SESSION))),
        Response::Reload(_)
    ));
    let (kind, message) = harness.refused(remove(&["198.51.100.7"], Some(SESSION)));
    assert_eq!(kind, ErrorKind::Conflict);
    assert!(message.contains("cut your own SSH session"), "{message}");
    assert!(harness.admits("198.51.100.7", 22));
    let forced = RemoveRequest {
        force: true,
        ..remove_request(&["198.51.100.7"], Some(SESSION))
    };
    assert!(matches!(
        harness.run(Command::Remove(forced)),
        Response::Change(_)
    ));
    assert!(!harness.admits("198.51.100.7", 22));
    assert_eq!(
        harness.audit(),
        [
            (Action::Reload, Outcome::Rejected),
            (Action::Allow, Outcome::Applied),
            (Action::Reload, Outcome::Applied),
            (Action::Remove, Outcome::Rejected),
            (Action::Remove, Outcome::Applied),
        ]
    );
}

/// Hands the writer a fetch of the `partner` feed with `body`, and
/// returns how it took it.
fn fetched(harness: &mut Harness, body: &str) -> FeedOutcome {
    let feed = harness.writer.live.config.feeds[0].clone();
    let (reply, outcome) = oneshot::channel();
    harness.writer.handle(Job::Feed(FetchJob {
        feed,
        fetched: Ok(Fetched::Body {
            bytes: body.as_bytes().to_vec(),
            etag: None,
            last_modified: None,
            valid_for: None,
        }),
        next_if_ok: Timestamp::now(),
        next_if_failed: Timestamp::now(),
        reply,
    }));
    outcome
        .blocking_recv()
        .expect("the writer answers the scheduler")
}

#[test]
fn a_feed_update_applies_whole_and_one_that_shrinks_too_much_is_refused() {
    let mut harness = Harness::new(CONFIG);
    let outcome = fetched(
        &mut harness,
        "192.0.2.128/28\n192.0.2.160/28\n192.0.2.192/28\n192.0.2.224/28\n",
    );
    assert!(outcome.ok, "{:?}", outcome.status);
    assert_eq!(outcome.status.prefixes_v4, 4);
    assert!(harness.admits("192.0.2.130", 443));
    assert!(harness.admits("192.0.2.230", 443));
    let with_feed = harness.live();

    // Three of four gone: more than `max_shrink = "50%"`.
    let outcome = fetched(&mut harness, "192.0.2.128/28\n");
    assert!(!outcome.ok);
    let error = outcome.status.last_error.unwrap();
    assert!(error.contains("50%"), "{error}");
    assert_eq!(harness.live(), with_feed, "the last good list stays");
    assert_eq!(
        harness.audit(),
        [
            (Action::FeedUpdate, Outcome::Applied),
            (Action::FeedUpdate, Outcome::Rejected)
        ]
    );
}

#[test]
fn a_change_not_started_by_its_deadline_is_refused_and_audited() {
    let mut harness = Harness::new(CONFIG);
    let before = harness.live();
    let past = SystemTime::now() - Duration::from_secs(1);
    let Response::Error(error) = harness.run_by(allow(&["192.0.2.15"]), Some(past)) else {
        panic!("not refused");
    };
    assert_eq!(error.kind, ErrorKind::Unavailable);
    assert!(
        error
            .message
            .starts_with("nothing was changed: the daemon was busy")
    );
    assert_eq!(harness.live(), before);
    assert_eq!(harness.audit(), [(Action::Allow, Outcome::Rejected)]);
}
