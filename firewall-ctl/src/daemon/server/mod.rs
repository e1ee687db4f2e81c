//! The control socket: who may connect, who may do what, and a server that
//! no client can stall.
//!
//! The socket is mode 0660, owned by root and `control_group`; members of
//! `read_group` get access through a POSIX ACL entry. Every request is
//! checked again against the peer's credentials (SO_PEERCRED and
//! SO_PEERGROUPS, taken by the kernel at connect time): changes need uid 0
//! or `control_group`, reads also allow `read_group`. Refusals are logged
//! and audited.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use nix::sys::stat::{Mode, umask};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, oneshot, watch},
};
use tracing::warn;

use super::{
    access::{Access, Peer, authorize, privileged, secure},
    audit,
    limits::{self, Limiter, Throttle},
    reads,
    writer::{Job, PolicyStatus},
};
use crate::{
    api::{self, Action, AuditRecord, Command, CommandError, Request, Response, StatusReport},
    entries::{Requester, Timestamp},
    system,
    text::escape_controls,
};

/// `blocked --follow` streams at once: each holds a connection for as long
/// as it runs, and readers must not be able to take them all.
pub const MAX_FOLLOWERS: usize = 8;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read each chunk of its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers past this size give their memory back to the kernel once sent.
const LARGE_RESPONSE_BYTES: usize = 16 << 20;

/// The control socket's file, removed when the daemon exits for any
/// reason, but only if it is still the socket this daemon bound (same
/// device and inode): never a file someone put there since.
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|metadata| (metadata.dev(), metadata.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if identity(&self.path) == Some(self.identity) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the control socket. Only a stale socket at `path` is ever
/// replaced: anything else there is an error that names it.
pub fn bind(path: &Path, access: &Access) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the socket directory `{}`", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("checking `{}`", path.display())),
        Ok(metadata) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !metadata.file_type().is_socket() {
                bail!(
                    "`{}` is {}, not a socket; firewall-ctl only ever replaces a stale socket, so point `socket` (or `--socket`) elsewhere",
                    path.display(),
                    crate::fsutil::kind_at(path).unwrap_or("something else")
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another firewall-ctl daemon is already listening on `{}`; stop it first, or give this one another `--socket PATH`",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket `{}`", path.display()))?;
        }
    }
    // The process's file creation mask: the daemon has no other thread
    // creating files yet, and restores it at once.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener =
        bound.with_context(|| format!("binding the control socket `{}`", path.display()))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        identity: identity(path).context("the socket vanished right after it was bound")?,
    };
    secure(path, access)?;
    Ok((listener, file))
}

/// What connection tasks share.
pub struct Shared {
    pub jobs: std::sync::mpsc::Sender<Job>,
    pub status: watch::Receiver<Arc<PolicyStatus>>,
    /// What the kernel runs on each configured interface.
    pub interfaces: watch::Receiver<Vec<api::InterfaceStatus>>,
    /// Where `feeds refresh` asks for fetches now.
    pub refresh_feeds: tokio::sync::mpsc::Sender<crate::feeds::schedule::RefreshRequest>,
    /// Drop samples, for `blocked`.
    pub blocked: Arc<super::blocked::BlockedView>,
    /// Permits of `blocked --follow` streams ([`MAX_FOLLOWERS`]).
    pub followers: Arc<Semaphore>,
    /// The audit trail's files, for `audit log`.
    pub audit_files: audit::AuditFiles,
    /// Control connections held, by user ([`limits::CONNECTIONS`]).
    pub connections: Limiter,
    /// Heavy reads running, by user ([`limits::HEAVY_READS`]).
    pub heavy_reads: Limiter,
    /// Reads queued for or running on the policy writer, by user
    /// ([`limits::WRITER_READS`]).
    pub writer_reads: Limiter,
    pub started: Instant,
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let mut refusals = Throttle::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let peer = match peer_of(&stream) {
                    Ok(peer) => peer,
                    Err(err) => {
                        warn!(error = %err, "reading a control client's credentials failed; closing");
                        continue;
                    }
                };
                let privileged = privileged(&peer, &shared.status.borrow().access);
                match shared.connections.admit(peer.uid, privileged) {
                    Ok(slot) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            handle(stream, peer, privileged, &shared).await;
                            drop(slot);
                        });
                    }
                    Err(refusal) => {
                        let message = refusal.message(
                            "control connections open",
                            limits::CONNECTIONS,
                            peer.uid,
                        );
                        if let Some(held_back) = refusals.due(peer.uid) {
                            warn!(
                                uid = peer.uid,
                                pid = peer.pid,
                                also_refused_since_last_logged = held_back,
                                reason = message,
                                "control connection refused"
                            );
                        }
                        refuse(&stream, CommandError::unavailable(message));
                    }
                }
            }
            Err(err) => {
                warn!(error = %err, "accepting a control connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Tells a client it is refused, without waiting for it, and closes.
fn refuse(stream: &UnixStream, error: CommandError) {
    let mut line = serde_json::to_vec(&Response::Error(error)).expect("responses serialize");
    line.push(b'\n');
    let _ = stream.try_write(&line);
}

/// Reads the peer's credentials from the connected socket.
fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let credentials = stream.peer_cred()?;
    let mut groups = system::peer_groups(stream.as_raw_fd())?;
    groups.push(credentials.gid());
    Ok(Peer {
        uid: credentials.uid(),
        pid: credentials.pid(),
        groups,
    })
}

/// Longest request id a client may give.
const MAX_REQUEST_ID_BYTES: usize = 64;
/// How long a request may wait for the policy writer when its client
/// gives no deadline (`firewall-ctl` always gives one).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// The furthest deadline a client may give.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// Parses one request line: version first, so an old or new client learns
/// that before anything else.
pub fn parse_request(line: &str) -> Result<Request, CommandError> {
    let malformed = |message: String| CommandError::invalid_input(escape_controls(&message));
    if line.trim().is_empty() {
        return Err(malformed("empty request".to_string()));
    }
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|err| malformed(format!("malformed request (not JSON: {err})")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(version) if version == u64::from(api::PROTOCOL_VERSION) => {}
        Some(version) => {
            return Err(malformed(format!(
                "protocol version {version} is not supported (this daemon speaks {}); use the firewall-ctl binary of the same release",
                api::PROTOCOL_VERSION
            )));
        }
        None => return Err(malformed("malformed request: no `version`".to_string())),
    }
    let request = serde_json::from_value::<Request>(value)
        .map_err(|err| malformed(format!("malformed or unknown request: {err}")))?;
    if let Some(id) = &request.id
        && (id.is_empty()
            || id.len() > MAX_REQUEST_ID_BYTES
            || !id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte)))
    {
        return Err(malformed(format!(
            "malformed request: `id` must be 1 to {MAX_REQUEST_ID_BYTES} letters, digits, `-`, `_` or `.`"
        )));
    }
    Ok(request)
}

/// When the policy writer must have started `request` by, or refuse it.
fn deadline_of(request: &Request, now: SystemTime) -> SystemTime {
    let latest = now + MAX_DEADLINE;
    request
        .deadline_ms
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or(now + DEFAULT_DEADLINE)
        .min(latest)
}

async fn handle(stream: UnixStream, peer: Peer, privileged: bool, shared: &Shared) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader.take(api::MAX_REQUEST_BYTES));
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) if !line.ends_with('\n') && line.len() as u64 >= api::MAX_REQUEST_BYTES => {
            Answer::Now(Response::Error(CommandError::invalid_input(format!(
                "request larger than {} bytes",
                api::MAX_REQUEST_BYTES
            ))))
        }
        Ok(Ok(_)) => match parse_request(&line) {
            Ok(Request {
                command: Command::BlockedFollow,
                ..
            }) if authorize(
                &Command::BlockedFollow,
                &peer,
                &shared.status.borrow().access,
            )
            .is_ok() =>
            {
                match shared.followers.clone().try_acquire_owned() {
                    Ok(_permit) => return follow_blocked(reader, writer, shared).await,
                    Err(_) => Answer::Now(Response::Error(CommandError::unavailable(format!(
                        "{MAX_FOLLOWERS} `blocked --follow` streams are running already; stop one, or use `firewall-ctl blocked`"
                    )))),
                }
            }
            Ok(request) => answer(request, peer, privileged, shared).await,
            Err(error) => Answer::Now(Response::Error(error)),
        },
        Ok(Err(err)) => Answer::Now(Response::Error(CommandError::invalid_input(format!(
            "reading the request failed: {err}"
        )))),
        Err(_) => Answer::Now(Response::Error(CommandError::invalid_input(format!(
            "no request within {} s",
            REQUEST_TIMEOUT.as_secs()
        )))),
    };
    let sent = match answer {
        Answer::Now(response) => {
            send(
                &mut writer,
                Background::Pool,
                RESPONSE_TIMEOUT,
                move |out| reads::write_response(&response, out),
            )
            .await
        }
        Answer::Heavy(produce) => {
            send(
                &mut writer,
                Background::LowPriority,
                RESPONSE_TIMEOUT,
                produce,
            )
            .await
        }
    };
    // A report of every entry of a large policy (a hundred MB and more
    // while it was built) would otherwise stay resident. Off the runtime's
    // one thread: trimming a large heap takes a while.
    if sent > LARGE_RESPONSE_BYTES {
        let _ = tokio::task::spawn_blocking(system::return_free_memory).await;
    }
}

/// Writes an answer into what it is given; runs off the runtime's thread.
type Producer = Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send>;

/// What a request is answered with.
enum Answer {
    /// A response ready to send.
    Now(Response),
    /// An answer to build and write on a thread of its own, at a low
    /// priority: a heavy read, holding its slot until it is written.
    Heavy(Producer),
}

/// Where [`send`] runs what writes the answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Background {
    /// tokio's blocking pool: serializing a response at hand.
    Pool,
    /// A thread of its own at a lower CPU priority than the policy writer.
    LowPriority,
}

/// Bytes of JSON written at a time by [`send`].
const RESPONSE_CHUNK_BYTES: usize = 1 << 20;

/// Sends what `produce` writes (a response line), a chunk at a time while
/// it writes the next, from a thread of `background`: a report of every
/// entry of a 250k + 250k policy is about 190 MB of JSON, which was built
/// whole first. Gives up once the client has not taken a chunk within
/// `chunk_timeout`; returns the bytes sent.
async fn send(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    background: Background,
    chunk_timeout: Duration,
    produce: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send + 'static,
) -> usize {
    let (chunks, mut received) = tokio::sync::mpsc::channel(2);
    let run = move || {
        let mut out = ChunkWriter {
            chunks,
            buffer: Vec::new(),
        };
        // An error is a closed channel: the writing side gave up.
        let _ = produce(&mut out).and_then(|()| std::io::Write::flush(&mut out));
    };
    let (finished, done) = oneshot::channel::<()>();
    let finish = move || {
        run();
        let _ = finished.send(());
    };
    match background {
        Background::Pool => drop(tokio::task::spawn_blocking(finish)),
        Background::LowPriority => {
            let spawned = std::thread::Builder::new()
                .name("heavy-read".into())
                .spawn(move || {
                    system::lower_thread_priority();
                    finish();
                });
            if let Err(err) = spawned {
                warn!(error = %err, "starting a thread for a heavy read failed");
            }
        }
    }
    let mut sent = 0;
    // However long a chunk takes to make, the client has `chunk_timeout`
    // to take each one.
    while let Some(chunk) = received.recv().await {
        match tokio::time::timeout(chunk_timeout, writer.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    // Stops the writing thread at its next chunk if the client gave up.
    drop(received);
    let _ = done.await;
    sent
}

/// Hands what is written to it to [`send`] in chunks.
struct ChunkWriter {
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= RESPONSE_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buffer);
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

/// The action a denied `command` is audited as.
fn denied_action(command: &Command) -> Action {
    match command {
        Command::Allow(_) => Action::Allow,
        Command::Remove(_) => Action::Remove,
        Command::Reload(_) => Action::Reload,
        Command::Confirm => Action::Confirm,
        Command::FeedsRefresh { .. } => Action::FeedsRefresh,
        _ => Action::Read,
    }
}

async fn answer(request: Request, peer: Peer, privileged: bool, shared: &Shared) -> Answer {
    let Request {
        command,
        id: request_id,
        ..
    } = &request;
    let deadline = deadline_of(&request, SystemTime::now());
    let uid = peer.uid;
    let user = tokio::task::spawn_blocking(move || system::user_name(uid))
        .await
        .ok()
        .flatten();
    let requester = Requester {
        uid: peer.uid,
        user,
        pid: peer.pid,
    };
    let status = shared.status.borrow().clone();
    if let Err(denial) = authorize(command, &peer, &status.access) {
        warn!(command = command.name(), requester = %requester, "control request refused: permission denied");
        let (rule, prefixes) = match command {
            Command::Allow(api::AllowRequest { rule, prefixes, .. })
            | Command::Remove(api::RemoveRequest { rule, prefixes, .. }) => {
                (rule.as_deref(), prefixes.as_slice())
            }
            _ => (None, &[][..]),
        };
        let mut record = AuditRecord::denied(
            denied_action(command),
            requester,
            &denial.message,
            rule,
            prefixes,
        );
        record.request_id = request_id.clone();
        let _ = shared.jobs.send(Job::Denied(record));
        return Answer::Now(Response::Error(denial));
    }
    let request_id = request_id.clone();
    let command = request.command;
    if command.is_heavy() {
        return match shared.heavy_reads.admit(peer.uid, privileged) {
            Ok(slot) => heavy_read(command, slot, shared).await,
            Err(refusal) => Answer::Now(Response::Error(CommandError::unavailable(format!(
                "busy: {}",
                refusal.message(
                    "heavy reads (`list`, `stats --entries`, `audit report`, `audit log`, `explain --feed`/`--file`) running",
                    shared.heavy_reads.limits(),
                    peer.uid
                )
            )))),
        };
    }
    Answer::Now(match command {
        Command::Status => Response::Status(status_report(&status, shared).await),
        Command::FeedsRefresh { feed } => refresh_feeds(shared, feed).await,
        Command::Blocked => Response::Blocked(shared.blocked.report(status.sample_rate)),
        command => {
            // Only readers are limited here: root and `control_group` may
            // change the policy anyway.
            let _queued = if privileged {
                None
            } else {
                match shared.writer_reads.admit(peer.uid, privileged) {
                    Ok(slot) => Some(slot),
                    Err(refusal) => {
                        return Answer::Now(Response::Error(CommandError::unavailable(format!(
                            "busy: {}",
                            refusal.message(
                                "reads (`stats`, `explain`, `feeds`) waiting for the policy writer",
                                shared.writer_reads.limits(),
                                peer.uid
                            )
                        ))));
                    }
                }
            };
            let (reply, answer) = oneshot::channel();
            let job = Job::Command {
                command,
                requester: Some(requester),
                reply: Some(reply),
                request_id,
                deadline: Some(deadline),
            };
            if shared.jobs.send(job).is_err() {
                return Answer::Now(shutting_down());
            }
            answer.await.unwrap_or_else(|_| shutting_down())
        }
    })
}

fn shutting_down() -> Response {
    Response::Error(CommandError::unavailable("the daemon is shutting down"))
}

/// Answers a heavy read holding `slot`: the audit trail streamed from its
/// files; the entries' reports from a snapshot of the writer's state.
async fn heavy_read(command: Command, slot: limits::Slot, shared: &Shared) -> Answer {
    if let Command::AuditLog { since, request } = command {
        let since = match since.as_deref().map(parse_since).transpose() {
            Ok(since) => since,
            Err(error) => return Answer::Now(Response::Error(error)),
        };
        let filter = audit::Filter {
            since,
            request_id: request,
        };
        let files = shared.audit_files.clone();
        return Answer::Heavy(Box::new(move |out| {
            let _slot = slot;
            match files.open() {
                Ok(report) => report.write(&filter, out),
                Err(err) => reads::write_response(
                    &Response::Error(CommandError::internal(format!(
                        "reading the audit log failed: {err}"
                    ))),
                    out,
                ),
            }
        }));
    }
    let (reply, view) = oneshot::channel();
    if shared.jobs.send(Job::Snapshot(reply)).is_err() {
        return Answer::Now(shutting_down());
    }
    let mut view = match view.await {
        Ok(Ok(view)) => view,
        Ok(Err(error)) => return Answer::Now(Response::Error(error)),
        Err(_) => return Answer::Now(shutting_down()),
    };
    if !matches!(command, Command::Entries { .. }) {
        // A list has no counters: holding them would only make the writer
        // copy them at its next change.
        view.usage = None;
    }
    Answer::Heavy(Box::new(move |out| {
        let _slot = slot;
        match command {
            Command::List { rule } => view.write_list(rule.as_deref(), out),
            Command::Entries { rule } => view.write_entries(rule.as_deref(), out),
            Command::Coverage { port, feed, ranges } => {
                reads::write_response(&view.coverage(&port, feed.as_deref(), &ranges), out)
            }
            other => reads::write_response(
                &Response::Error(CommandError::internal(format!(
                    "`{}` is not a heavy read",
                    other.name()
                ))),
                out,
            ),
        }
    }))
}

/// Streams each newly sampled blocked source to `writer`, one response
/// line each, until the client goes away: it closes its side (seen on
/// `reader` at once, even while nothing is blocked) or stops reading.
async fn follow_blocked(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    mut writer: tokio::net::unix::OwnedWriteHalf,
    shared: &Shared,
) {
    let mut sources = shared.blocked.subscribe();
    let mut ignored = [0u8; 64];
    loop {
        let received = tokio::select! {
            received = sources.recv() => received,
            read = reader.read(&mut ignored) => match read {
                // The client closed or failed; anything else it sends is ignored.
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let response = match received {
            Ok(source) => Response::BlockedSource(source),
            // A slow reader missed some: go on with the next.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let mut bytes = serde_json::to_vec(&response).expect("responses serialize");
        bytes.push(b'\n');
        match tokio::time::timeout(RESPONSE_TIMEOUT, writer.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Fetches the feed named (every feed with `None`) now, and reports each
/// one's status once its update was applied or refused.
async fn refresh_feeds(shared: &Shared, feed: Option<String>) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if shared
        .refresh_feeds
        .send((feed.clone(), reply))
        .await
        .is_err()
    {
        return shutting_down();
    }
    match answer.await {
        Ok(outcomes) if outcomes.is_empty() => {
            Response::Error(CommandError::not_found(match feed {
                Some(name) => format!("no feed is named `{name}`; `firewall-ctl feeds` lists them"),
                None => "the config has no feeds".to_string(),
            }))
        }
        Ok(outcomes) => Response::Feeds(api::FeedsReport {
            feeds: outcomes.into_iter().map(|outcome| outcome.status).collect(),
        }),
        Err(_) => shutting_down(),
    }
}

/// How long `status` waits for the link watcher to check the interfaces
/// of a config just applied.
const INTERFACES_CHECK_WAIT: Duration = Duration::from_secs(1);

async fn status_report(status: &PolicyStatus, shared: &Shared) -> StatusReport {
    // Right after a reload the watcher may still report the interfaces of
    // the config before: wait (briefly) for its check of the current ones.
    let mut interfaces = shared.interfaces.clone();
    let current = |states: &Vec<api::InterfaceStatus>| {
        states
            .iter()
            .map(|state| &state.name)
            .eq(status.interfaces.iter())
    };
    let _ = tokio::time::timeout(INTERFACES_CHECK_WAIT, interfaces.wait_for(current)).await;
    let interfaces = interfaces.borrow().clone();
    StatusReport {
        uptime_seconds: shared.started.elapsed().as_secs(),
        interfaces,
        ..status.report.clone()
    }
}

/// Parses `--since`: a duration back from now (`1h`, `7d`) or a UTC time.
pub fn parse_since(text: &str) -> Result<Timestamp, CommandError> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(Timestamp(
            std::time::SystemTime::now()
                .checked_sub(duration)
                .unwrap_or(std::time::UNIX_EPOCH),
        ));
    }
    humantime::parse_rfc3339_weak(text)
        .map(Timestamp)
        .map_err(|_| {
            CommandError::invalid_input(format!(
                "`--since {}` is neither a duration (`1h`, `7d`) nor a UTC time (`2026-11-25T08:00:00Z`)",
                escape_controls(text)
            ))
        })
}

#[cfg(test)]
mod tests;
