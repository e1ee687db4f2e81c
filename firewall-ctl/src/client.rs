//! The CLI's side of the control protocol ([`crate::api`]): one request
//! per connection, the answer awaited within a deadline, or a stream of
//! answers (`blocked --follow`).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    api::{Command, CommandError, ErrorKind, PROTOCOL_VERSION, Request, Response},
    entries::Timestamp,
};

/// How long sending a request may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A change whose outcome the CLI does not know: the daemon did not answer
/// within the wait. It is either applied or refused, and audited under its
/// request id either way.
#[derive(Debug, thiserror::Error)]
#[error(
    "pending: the daemon did not answer `{command}` within {}; it refuses a change it could not start by {deadline}, and applies one it started: `firewall-ctl audit log --request {id}` shows which",
    humantime::format_duration(*wait)
)]
pub struct Pending {
    pub command: &'static str,
    pub id: String,
    pub wait: Duration,
    pub deadline: Timestamp,
}

/// A new request id: unique on this host for a long while (process id,
/// time, and a random hash seed).
fn new_request_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Sends one request to the daemon at `socket` and returns its answer,
/// waiting up to `wait` (the command's default without one). The daemon
/// must start the request within half of the wait or refuse it; a change
/// not answered within the whole wait is [`Pending`].
pub fn call(socket: &Path, command: Command, wait: Option<Duration>) -> anyhow::Result<Response> {
    let wait = wait.unwrap_or_else(|| command.default_wait());
    let name = command.name();
    let deadlined = command.is_deadlined_change();
    let id = new_request_id();
    let deadline = std::time::SystemTime::now() + wait / 2;
    let request = Request {
        version: PROTOCOL_VERSION,
        command,
        id: Some(id.clone()),
        deadline_ms: Some(
            deadline
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        ),
    };
    let mut answers = send(socket, &request, Some(wait))?;
    match next_response(&mut answers, socket) {
        Ok(Some(response)) => Ok(response),
        Ok(None) => bail!(
            "the daemon at `{}` closed the connection without answering",
            socket.display()
        ),
        Err(err) if timed_out(&err) && deadlined => Err(Pending {
            command: name,
            id,
            wait,
            deadline: Timestamp(deadline),
        }
        .into()),
        Err(err) if timed_out(&err) => Err(CommandError::unavailable(format!(
            "the daemon at `{}` did not answer `{name}` within {}; {}",
            socket.display(),
            humantime::format_duration(wait),
            if matches!(name, "feeds refresh") {
                "the fetch goes on, and `firewall-ctl feeds` shows how it ended"
            } else {
                "try again, or wait longer with `--timeout`"
            }
        ))
        .into()),
        Err(err) => Err(err),
    }
}

/// Whether reading an answer failed for want of one in time.
fn timed_out(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>().is_some_and(|err| {
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}

/// Sends a streaming request (`blocked --follow`) and hands each answer
/// line to `each` until the daemon closes the stream or `each` fails.
pub fn follow(
    socket: &Path,
    command: Command,
    mut each: impl FnMut(Response) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let request = Request {
        version: PROTOCOL_VERSION,
        command,
        id: None,
        deadline_ms: None,
    };
    let mut answers = send(socket, &request, None)?;
    while let Some(response) = next_response(&mut answers, socket)? {
        each(response)?;
    }
    Ok(())
}

/// Connects, sends `request`, and returns the stream to read answers
/// from; `read_timeout` bounds the wait for each answer (`None`: forever).
fn send(
    socket: &Path,
    request: &Request,
    read_timeout: Option<Duration>,
) -> anyhow::Result<BufReader<UnixStream>> {
    let mut stream = UnixStream::connect(socket).map_err(|err| {
        if err.kind() == std::io::ErrorKind::PermissionDenied {
            CommandError::permission_denied(format!(
                "permission denied on the control socket `{}`: run as root, or as a member of the config's `control_group` (changes) or `read_group` (status, stats, list, explain, audit log)",
                socket.display()
            ))
        } else {
            CommandError::unavailable(format!(
                "no firewall-ctl daemon is listening on `{}` ({err}); start it with `firewall-ctl daemon --config /etc/firewall-ctl/firewall.toml`, or pass the daemon's `--socket PATH`",
                socket.display()
            ))
        }
    })?;
    stream.set_read_timeout(read_timeout)?;
    stream.set_write_timeout(Some(SEND_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("sending to the daemon at `{}`", socket.display()))?;
    Ok(BufReader::new(stream))
}

/// The next answer line; `None` when the daemon closed the stream. An
/// error answer is an error.
fn next_response(
    answers: &mut BufReader<UnixStream>,
    socket: &Path,
) -> anyhow::Result<Option<Response>> {
    let mut answer = String::new();
    if let Err(err) = answers.read_line(&mut answer) {
        return Err(anyhow::Error::from(err).context(format!(
            "reading the daemon's answer from `{}`",
            socket.display()
        )));
    }
    if answer.is_empty() {
        return Ok(None);
    }
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon at `{}` sent an answer this CLI does not understand; are both the same version?", socket.display()))?;
    match response {
        Response::Error(error) => Err(CommandError {
            message: crate::text::escape_controls_in_lines(&error.message),
            ..error
        }
        .into()),
        response => Ok(Some(response)),
    }
}

/// The CLI's exit code for an error answer of `kind` (the README's and the
/// man page's table): 5 and up, after those of the CLI itself.
pub const fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput => 5,
        ErrorKind::PermissionDenied => 6,
        ErrorKind::Conflict => 7,
        ErrorKind::NotFound => 8,
        ErrorKind::Unavailable => 9,
        ErrorKind::Internal => 10,
    }
}
