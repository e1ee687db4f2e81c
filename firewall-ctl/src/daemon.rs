//! `firewall-ctl daemon`: load, attach, serve, reload, detach.
//!
//! One task owns the datapath and the running policy; socket connections
//! and signals reach it through a channel and `select!`, so requests and
//! reloads never interleave.

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use firewall_common::reasons::Reason;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{
    api::{
        self, Command, InterfaceStatus, Request, Response, RuleStats, StatsReport, StatusReport,
    },
    config::{self, Config},
    datapath::Datapath,
    policy::{self, CompiledPolicy},
    system,
};

/// Reads, validates and compiles the config at `path`: the one path
/// start-up, reload and `check` take, so all refuse exactly the same inputs.
pub fn load_policy(path: &Path) -> anyhow::Result<(Config, CompiledPolicy)> {
    let config = config::load(path, &system::interface_exists)?;
    let policy =
        policy::compile(&config).with_context(|| format!("config `{}`", path.display()))?;
    if config.rules.is_empty() {
        warn!(config = %path.display(), "the config has no rules: every port is closed");
    }
    Ok((config, policy))
}

/// The state the owner task keeps.
struct Daemon {
    config_path: PathBuf,
    config: Config,
    policy: CompiledPolicy,
    datapath: Datapath,
    started: Instant,
    applied_at: SystemTime,
    reloads: u64,
    reloads_rejected: u64,
    last_reload_error: Option<String>,
}

type Job = (Command, oneshot::Sender<Response>);

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config_path: PathBuf, socket_override: Option<PathBuf>) -> anyhow::Result<()> {
    // Installed first, so a signal during start-up is not fatal.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let (config, policy) = load_policy(&config_path)?;
    system::check_privileges(&config_path)?;
    let socket_path = socket_override.unwrap_or_else(|| config.socket.clone());
    let (listener, _socket_file) = bind_socket(&socket_path)?;

    let mut datapath = Datapath::load()?;
    // Fill the maps before attaching: the first packet already sees the policy.
    datapath.apply(&policy)?;
    for interface in &config.interfaces {
        // On error `datapath` drops and detaches what was attached.
        datapath.attach(interface, config.xdp_mode)?;
    }
    info!(
        config = %config_path.display(),
        socket = %socket_path.display(),
        mode = api::mode_name(config.enforce),
        rules = policy.rule_names.len(),
        prefixes_v4 = policy.v4.len(),
        prefixes_v6 = policy.v6.len(),
        ports = policy.ports.len(),
        "firewall-ctl daemon running"
    );

    let mut daemon = Daemon {
        config_path,
        config,
        policy,
        datapath,
        started: Instant::now(),
        applied_at: SystemTime::now(),
        reloads: 0,
        reloads_rejected: 0,
        last_reload_error: None,
    };
    let (jobs, mut pending) = mpsc::channel::<Job>(32);
    let server = tokio::spawn(serve(listener, jobs));
    loop {
        tokio::select! {
            _ = hangup.recv() => daemon.reload(),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            Some((command, reply)) = pending.recv() => {
                let _ = reply.send(daemon.answer(command));
            }
        }
    }
    info!("shutting down");
    server.abort();
    daemon.datapath.detach_all();
    Ok(())
}

impl Daemon {
    fn reload(&mut self) {
        info!(config = %self.config_path.display(), "SIGHUP: reloading config");
        match self.try_reload() {
            Ok(()) => {
                self.reloads += 1;
                self.last_reload_error = None;
                info!(
                    mode = api::mode_name(self.config.enforce),
                    rules = self.policy.rule_names.len(),
                    prefixes_v4 = self.policy.v4.len(),
                    prefixes_v6 = self.policy.v6.len(),
                    ports = self.policy.ports.len(),
                    "new policy applied"
                );
            }
            Err(err) => {
                let message = format!("{err:#}");
                error!(error = %message, "reload rejected; the running policy is unchanged");
                self.reloads_rejected += 1;
                self.last_reload_error = Some(message);
            }
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let (config, policy) = load_policy(&self.config_path)?;
        if config.interfaces != self.config.interfaces || config.xdp_mode != self.config.xdp_mode {
            warn!("`interfaces` and `xdp_mode` changes take effect when the daemon restarts");
        }
        if config.socket != self.config.socket {
            warn!("a `socket` change takes effect when the daemon restarts");
        }
        self.datapath.apply(&policy)?;
        self.applied_at = SystemTime::now();
        self.config = Config {
            // What is attached is what the old config said.
            interfaces: std::mem::take(&mut self.config.interfaces),
            xdp_mode: self.config.xdp_mode,
            socket: self.config.socket.clone(),
            ..config
        };
        self.policy = policy;
        Ok(())
    }

    fn answer(&self, command: Command) -> Response {
        match command {
            Command::Status => Response::Status(self.status()),
            Command::Stats => match self.stats() {
                Ok(report) => Response::Stats(report),
                Err(err) => Response::Error(format!("{err:#}")),
            },
        }
    }

    fn status(&self) -> StatusReport {
        StatusReport {
            pid: std::process::id(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config_path.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            mode: api::mode_name(self.config.enforce),
            interfaces: self
                .datapath
                .attachments()
                .iter()
                .map(|attachment| InterfaceStatus {
                    name: attachment.interface.clone(),
                    xdp_mode: attachment.mode,
                })
                .collect(),
            rules: self.policy.rule_names.len(),
            prefixes_v4: self.policy.v4.len(),
            prefixes_v6: self.policy.v6.len(),
            ports: self.policy.ports.len(),
            policy_applied_at: self
                .applied_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |age| age.as_secs()),
            reloads: self.reloads,
            reloads_rejected: self.reloads_rejected,
            last_reload_error: self.last_reload_error.clone(),
        }
    }

    fn stats(&self) -> anyhow::Result<StatsReport> {
        let counters = self.datapath.counters()?;
        let mut report = StatsReport {
            mode: api::mode_name(self.config.enforce),
            rules: counters
                .rules
                .into_iter()
                .map(|(name, counter)| RuleStats {
                    name,
                    packets: counter.packets,
                    bytes: counter.bytes,
                })
                .collect(),
            drops: Default::default(),
            drop_bytes: Default::default(),
            passed: Default::default(),
            passed_bytes: Default::default(),
        };
        for (reason, counter) in Reason::ALL.iter().zip(&counters.reasons) {
            let (packets, bytes) = if reason.is_drop() {
                (&mut report.drops, &mut report.drop_bytes)
            } else {
                (&mut report.passed, &mut report.passed_bytes)
            };
            packets.insert(reason.name().to_string(), counter.packets);
            bytes.insert(reason.name().to_string(), counter.bytes);
        }
        Ok(report)
    }
}

/// The control socket's file, removed when the daemon exits for any reason.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the control socket, refusing to steal it from a running daemon.
/// It is created with mode 0600: root only, since it reports the allowlist
/// and will edit it.
fn bind_socket(path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the socket directory `{}`", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another firewall-ctl daemon is already listening on `{}`; stop it first, or give this one another `--socket PATH`",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket `{}`", path.display()))?;
    }
    // SAFETY: umask only changes this process's file creation mask; the
    // daemon is single-threaded here and restores it right after.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener =
        bound.with_context(|| format!("binding the control socket `{}`", path.display()))?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

async fn serve(listener: UnixListener, jobs: mpsc::Sender<Job>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_connection(stream, jobs.clone()));
            }
            Err(err) => {
                warn!(error = %err, "accepting a control connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_connection(stream: UnixStream, jobs: mpsc::Sender<Job>) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        BufReader::new(reader.take(api::MAX_REQUEST_BYTES)).read_line(&mut line),
    )
    .await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) if request.version != api::PROTOCOL_VERSION => Response::Error(format!(
                "protocol version {} is not supported (this daemon speaks {}); use the firewall-ctl binary of the same release",
                request.version,
                api::PROTOCOL_VERSION
            )),
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if jobs.send((request.command, reply)).await.is_err() {
                    return;
                }
                match answer.await {
                    Ok(response) => response,
                    Err(_) => return,
                }
            }
            Err(err) => Response::Error(format!("malformed request: {err}")),
        },
        Ok(Err(err)) => Response::Error(format!("reading the request failed: {err}")),
        Err(_) => Response::Error("no request within 5 s".to_string()),
    };
    if let Ok(mut bytes) = serde_json::to_vec(&response) {
        bytes.push(b'\n');
        let _ = writer.write_all(&bytes).await;
    }
}
