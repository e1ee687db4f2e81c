//! The server in-process: its streaming, its parsing, and requests over a
//! socket pair from peers of each kind, answered by a real writer.

use super::*;
use crate::{api::ErrorKind, daemon::writer::tests as writer_tests};

/// More than a few chunks of JSON.
fn large_response() -> Response {
    Response::Error(CommandError::internal(
        "x".repeat(3 * RESPONSE_CHUNK_BYTES + 5),
    ))
}

#[tokio::test]
async fn a_large_answer_arrives_whole_and_in_order() {
    let (mut server, mut client) = tokio::io::duplex(64 * 1024);
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        received
    });
    let mut expected = serde_json::to_vec(&large_response()).unwrap();
    expected.push(b'\n');
    let sent = send(
        &mut server,
        Background::Pool,
        Duration::from_secs(10),
        |out| reads::write_response(&large_response(), out),
    )
    .await;
    drop(server);
    assert_eq!(sent, expected.len());
    assert!(reader.await.unwrap() == expected);
}

/// A client that stops reading holds the server no longer than the
/// timeout, and the serializing thread stops too.
#[tokio::test]
async fn a_client_that_stops_reading_is_given_up_on() {
    let (mut server, _client) = tokio::io::duplex(64 * 1024);
    let started = Instant::now();
    let sent = send(
        &mut server,
        Background::LowPriority,
        Duration::from_millis(200),
        |out| reads::write_response(&large_response(), out),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sent < RESPONSE_CHUNK_BYTES, "{sent}");
}

#[test]
fn requests_are_checked_for_version_and_shape() {
    let command = |line| parse_request(line).map(|request| request.command);
    assert_eq!(
        command(r#"{"version":3,"command":"status"}"#),
        Ok(Command::Status)
    );
    assert_eq!(
        command(r#"{"version":3,"command":{"list":{"rule":"vendor"}}}"#),
        Ok(Command::List {
            rule: Some("vendor".to_string())
        })
    );
    // An id and a deadline, optional; the id is checked.
    let request =
        parse_request(r#"{"version":3,"command":"confirm","id":"a1-b.2_c","deadline_ms":5}"#)
            .unwrap();
    assert_eq!(request.id.as_deref(), Some("a1-b.2_c"));
    assert_eq!(
        deadline_of(&request, SystemTime::now()),
        UNIX_EPOCH + Duration::from_millis(5)
    );
    for id in ["", "a b", "\u{1b}[2J", &"x".repeat(65)] {
        let line = serde_json::json!({"version": 3, "command": "status", "id": id}).to_string();
        let err = parse_request(&line).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(err.message.contains("`id` must be"), "{err}");
    }
    let now = SystemTime::now();
    let no_deadline = parse_request(r#"{"version":3,"command":"confirm"}"#).unwrap();
    assert_eq!(deadline_of(&no_deadline, now), now + DEFAULT_DEADLINE);
    let far = parse_request(&format!(
        r#"{{"version":3,"command":"confirm","deadline_ms":{}}}"#,
        u64::MAX
    ))
    .unwrap();
    assert_eq!(deadline_of(&far, now), now + MAX_DEADLINE);
    let old = parse_request(r#"{"version":2,"command":"status"}"#).unwrap_err();
    assert!(
        old.message.contains("protocol version 2 is not supported"),
        "{old}"
    );
    let unknown = parse_request(r#"{"version":3,"command":"format_disk"}"#).unwrap_err();
    assert!(
        unknown.message.contains("unknown variant `format_disk`"),
        "{unknown}"
    );
    for garbage in ["", "garbage", "{}", "[1,2]", r#"{"version":"3"}"#] {
        assert!(parse_request(garbage).is_err(), "{garbage}");
    }
    let extra = parse_request(
        r#"{"version":3,"command":{"allow":{"prefixes":[],"rule":null,"comment":null,"expires":null,"force":false,"sudo":true}}}"#,
    )
    .unwrap_err();
    assert!(extra.message.contains("unknown field `sudo`"), "{extra}");
}

#[test]
fn since_takes_durations_and_times() {
    let hour_ago = parse_since("1h").unwrap();
    assert!(hour_ago.0 < std::time::SystemTime::now());
    assert_eq!(
        parse_since("2026-11-25T08:00:00Z").unwrap().to_string(),
        "2026-11-25T08:00:00Z"
    );
    assert!(
        parse_since("yesterday")
            .unwrap_err()
            .message
            .contains("neither a duration")
    );
}

/// A server over a real writer (of [`writer_tests::CONFIG`], on the
/// in-memory data plane) running on a thread of its own, the socket's
/// access as given; and the writer's harness, for what changed.
struct Served {
    shared: Shared,
    writer: std::thread::JoinHandle<()>,
    plane: Arc<std::sync::Mutex<crate::datapath::fake::FakeState>>,
    state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

const CONTROL_GID: u32 = 991;
const READ_GID: u32 = 990;

fn served() -> Served {
    let harness = writer_tests::Harness::new(writer_tests::CONFIG);
    let mut status = harness.writer.snapshot();
    status.access = Access {
        control_group: Some(crate::config::Group {
            name: "fwctl".to_string(),
            gid: CONTROL_GID,
        }),
        read_group: Some(crate::config::Group {
            name: "fwread".to_string(),
            gid: READ_GID,
        }),
    };
    let audit_files = harness.audit_files.clone();
    let (jobs, inbox) = std::sync::mpsc::channel();
    let writer = harness.writer;
    let writer = std::thread::spawn(move || writer.run(inbox));
    let (refresh_feeds, _) = tokio::sync::mpsc::channel(1);
    Served {
        shared: Shared {
            jobs,
            status: watch::channel(Arc::new(status)).1,
            interfaces: watch::channel(Vec::new()).1,
            refresh_feeds,
            blocked: Arc::default(),
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            audit_files,
            connections: Limiter::new(limits::CONNECTIONS),
            heavy_reads: Limiter::new(limits::HEAVY_READS),
            writer_reads: Limiter::new(limits::WRITER_READS),
            started: Instant::now(),
        },
        writer,
        plane: harness.plane,
        state_dir: harness.state_dir,
        _dir: harness.dir,
    }
}

impl Served {
    /// Sends `command` from `peer` over a socket pair and returns the answer.
    async fn ask(&self, peer: Peer, command: Command) -> Response {
        let (server, client) = UnixStream::pair().unwrap();
        let privileged = privileged(&peer, &self.shared.status.borrow().access);
        let asking = async move {
            let (reader, mut writer) = client.into_split();
            let request = Request {
                version: api::PROTOCOL_VERSION,
                command,
                id: Some("in-process".to_string()),
                deadline_ms: None,
            };
            let mut line = serde_json::to_vec(&request).unwrap();
            line.push(b'\n');
            writer.write_all(&line).await.unwrap();
            let mut answer = String::new();
            BufReader::new(reader).read_line(&mut answer).await.unwrap();
            serde_json::from_str::<Response>(&answer).unwrap()
        };
        let ((), response) = tokio::join!(handle(server, peer, privileged, &self.shared), asking);
        response
    }

    /// Stops the writer (as the daemon does) and returns the denials it
    /// recorded.
    fn stop(self) -> String {
        drop(self.shared);
        self.writer.join().unwrap();
        std::fs::read_to_string(self.state_dir.join(audit::DENIED_FILE)).unwrap_or_default()
    }
}

fn user(groups: &[u32]) -> Peer {
    Peer {
        uid: 1000,
        pid: Some(4343),
        groups: groups.to_vec(),
    }
}

fn kind(response: &Response) -> Option<ErrorKind> {
    match response {
        Response::Error(error) => Some(error.kind),
        _ => None,
    }
}

#[tokio::test]
async fn a_read_group_member_reads_and_its_changes_are_denied_and_audited() {
    let served = served();
    let reader = user(&[1000, READ_GID]);
    assert!(matches!(
        served.ask(reader.clone(), Command::Status).await,
        Response::Status(_)
    ));
    assert!(matches!(
        served.ask(reader.clone(), Command::Stats).await,
        Response::Stats(_)
    ));
    let denied = served
        .ask(reader, writer_tests::allow(&["192.0.2.30"]))
        .await;
    assert_eq!(kind(&denied), Some(ErrorKind::PermissionDenied));
    assert!(
        !writer_tests::admits(
            served.plane.lock().unwrap().live.as_ref().unwrap(),
            "192.0.2.30",
            443
        ),
        "nothing changed"
    );
    let denials = served.stop();
    assert_eq!(denials.lines().count(), 1, "{denials}");
    let record: AuditRecord = serde_json::from_str(denials.lines().next().unwrap()).unwrap();
    assert_eq!(
        (record.action, record.outcome),
        (Action::Allow, crate::api::Outcome::Denied)
    );
    assert_eq!(record.prefixes, ["192.0.2.30"]);
    assert_eq!(record.request_id.as_deref(), Some("in-process"));
}

#[tokio::test]
async fn a_control_group_member_changes_the_policy_and_a_stranger_cannot_even_read() {
    let served = served();
    let operator = user(&[1000, CONTROL_GID]);
    let changed = served
        .ask(operator, writer_tests::allow(&["192.0.2.31"]))
        .await;
    assert!(matches!(changed, Response::Change(_)), "{changed:?}");
    assert!(writer_tests::admits(
        served.plane.lock().unwrap().live.as_ref().unwrap(),
        "192.0.2.31",
        443
    ));
    let stranger = user(&[1000]);
    for command in [Command::Status, Command::Confirm] {
        let refused = served.ask(stranger.clone(), command).await;
        assert_eq!(kind(&refused), Some(ErrorKind::PermissionDenied));
    }
    assert_eq!(served.stop().lines().count(), 2);
}

#[tokio::test]
async fn malformed_requests_are_invalid_input_and_reach_no_writer() {
    let served = served();
    let (server, client) = UnixStream::pair().unwrap();
    let asking = async move {
        let (reader, mut writer) = client.into_split();
        writer
            .write_all(b"{\"version\":3,\"command\":\"format_disk\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        BufReader::new(reader).read_line(&mut answer).await.unwrap();
        serde_json::from_str::<Response>(&answer).unwrap()
    };
    let ((), answer) = tokio::join!(handle(server, user(&[]), false, &served.shared), asking);
    assert_eq!(kind(&answer), Some(ErrorKind::InvalidInput));
    assert_eq!(served.stop(), "", "not a denial: nothing to audit");
}
