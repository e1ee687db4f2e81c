//! `firewall-ctl daemon`: load, attach, serve, reload, expire, detach.
//!
//! Three parts with one job each: this task owns start-up, signals and the
//! attachments; [`writer`] is the single writer of policy state, on a
//! thread of its own; [`server`] answers the control socket, reading the
//! writer's published status for `status` and sending it everything else.

mod access;
pub mod audit;
mod blocked;
mod limits;
mod links;
mod metrics;
mod overrides;
mod reads;
mod server;
pub mod state;
mod writer;

pub use self::overrides::Overrides;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{oneshot, watch},
};
use tracing::{info, warn};

use self::{
    access::Access,
    audit::{AuditFiles, AuditLog},
    state::StateStore,
    writer::{Job, Writer},
};
use crate::{
    api::{self, Action, AuditRecord, Command, Outcome},
    config::{self, Config, Feed},
    datapath::{
        Datapath, Delta, ProgramLoader,
        program_log::{self, ProgramLog},
    },
    entries::{self, RuntimeEntries},
    feeds::FeedStates,
    policy::{self, CompiledPolicy, PolicyDiff},
    system::{self, LiveHost},
};

/// Reads, validates and compiles the config at `path` alone: what `check`
/// and `explain --config` see, refusing exactly what the daemon refuses.
pub fn load_policy(path: &Path) -> anyhow::Result<(Config, CompiledPolicy)> {
    let config = config::load(path, &LiveHost)?;
    let policy = policy::compile(&config, &RuntimeEntries::new())
        .with_context(|| format!("config `{}`", path.display()))?;
    if config.rules.is_empty() {
        warn!(config = %path.display(), "the config has no rules: every port is closed");
    }
    Ok((config, policy))
}

/// `explain --config`: the config at `path`, compiled with its feeds' last
/// good lists where they can be read ([`last_good_feeds`]).
pub fn load_policy_with_feeds(
    path: &Path,
) -> anyhow::Result<(Config, LastGoodFeeds, CompiledPolicy)> {
    let config = config::load(path, &LiveHost)?;
    let feeds = last_good_feeds(&config);
    let policy = policy::compile_with(&config, &RuntimeEntries::new(), &feeds.lists)
        .with_context(|| format!("config `{}`", path.display()))?;
    Ok((config, feeds, policy))
}

/// What `explain --config` knows of a config's feeds: the last good lists
/// the daemon keeps in `state_dir`, read without changing anything there.
pub struct LastGoodFeeds {
    pub lists: crate::feeds::FeedLists,
    /// Feeds whose list could not be read, and why.
    pub missing: Vec<String>,
    pub why: Option<String>,
}

/// The last good lists of `config`'s feeds (see [`LastGoodFeeds`]).
pub fn last_good_feeds(config: &Config) -> LastGoodFeeds {
    let none = LastGoodFeeds {
        lists: Default::default(),
        missing: Vec::new(),
        why: None,
    };
    if config.feeds.is_empty() {
        return none;
    }
    let opened = crate::fsutil::StateDir::open_to_read(&config.state_dir)
        .and_then(|state| crate::feeds::store::FeedStore::open(&state));
    let store = match opened {
        Ok(store) => store,
        Err(err) => {
            return LastGoodFeeds {
                missing: config.feeds.iter().map(|feed| feed.name.clone()).collect(),
                why: Some(format!(
                    "their last good copies in `{}` cannot be read: {err}{}",
                    config.state_dir.join("feeds").display(),
                    if nix::unistd::geteuid().is_root() {
                        ""
                    } else {
                        " (it is root's: run as root)"
                    }
                )),
                ..none
            };
        }
    };
    let lists = crate::feeds::store::lists(&store.load(&config.feeds));
    let missing: Vec<String> = config
        .feeds
        .iter()
        .filter(|feed| !lists.contains_key(&feed.name))
        .map(|feed| feed.name.clone())
        .collect();
    let why = (!missing.is_empty()).then(|| {
        format!(
            "no good copy of them in `{}` (never fetched, or fetched for another source or filter)",
            config.state_dir.join("feeds").display()
        )
    });
    LastGoodFeeds {
        lists,
        missing,
        why,
    }
}

/// Runs the daemon until SIGINT or SIGTERM: [`start`], then [`serve`] with
/// the signals.
pub async fn run(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    // Installed first, so a signal during start-up is not fatal.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (signals, received) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = hangup.recv() => Signal::Reload,
                _ = interrupt.recv() => Signal::Stop,
                _ = terminate.recv() => Signal::Stop,
            };
            if signals.send(signal).await.is_err() {
                return;
            }
        }
    });
    let ready = start(config_path, overrides).await?;
    serve(ready, received).await
}

/// What tells a serving daemon to reload its config or to stop: SIGHUP,
/// and SIGINT or SIGTERM, for the real one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Reload,
    Stop,
}

/// A daemon started: its policy enforced on every interface, its
/// listeners bound, its policy writer made with the data plane it drives.
/// [`serve`] runs it.
pub struct Ready {
    writer: Writer,
    listener: UnixListener,
    /// The control socket's file, removed when the daemon exits (`None`
    /// for a listener its caller binds and removes).
    socket_file: Option<server::SocketFile>,
    metrics: Option<tokio::net::TcpListener>,
    audit_files: AuditFiles,
    /// Where the drop samples' maps are pinned.
    maps_dir: PathBuf,
    bpf_dir: PathBuf,
    /// The programs' diagnostic events, to forward into the log.
    program_log: Option<ProgramLog>,
    /// The config's feeds as the writer tells them, and what is known of
    /// each at start.
    feed_configs: watch::Receiver<Vec<Feed>>,
    feed_states: FeedStates,
}

/// Loads the config and the state, makes the policy live on every
/// interface (adopting a pinned firewall), binds the listeners and makes
/// the policy writer: everything [`serve`] needs, or the reason the daemon
/// cannot start.
pub async fn start(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<Ready> {
    let loader = ProgramLoader::prepare();
    let (file_config, file_text) = overrides.load(&config_path)?;
    system::check_privileges(&config_path)?;
    system::raise_file_limit();
    let state_dir = file_config.state_dir.clone();
    let (store, mut runtime) = StateStore::open(&state_dir)?;
    let mut audit = AuditLog::open(Arc::clone(store.dir()))?;
    let audit_files = audit.files();
    drop_expired(&mut runtime, &store, &mut audit)?;
    // Each feed's last good copy is enforced from the start, before (and
    // whatever becomes of) the first fetch.
    let feed_store = crate::feeds::store::FeedStore::open(store.dir()).with_context(|| {
        format!(
            "cannot use the feeds' directory `{}`",
            store.dir().join("feeds").display()
        )
    })?;
    let (config, config_text, pending) = resume_pending_reload(
        &config_path,
        &overrides,
        &store,
        &mut audit,
        file_config,
        file_text,
    )?;
    // The copy `reload --confirm` rolls back to, written meanwhile and
    // kept once the policy is enforced.
    let staged_config = store.stage_running_config(config_text);
    // Bound before the maps are touched: a second daemon on the same
    // socket stops here.
    let (listener, socket_file) = server::bind(&config.socket, &Access::of(&config))?;
    let metrics_listener = match config.metrics.map(|metrics| metrics.listen) {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|err| {
                    anyhow::anyhow!(
                        "listening for metrics on {address} (`metrics.listen`): {err}: {}",
                        why_not_listening(&err)
                    )
                })?,
        ),
        None => None,
    };

    let last_good = feed_store.load(&config.feeds);
    let feed_lists = crate::feeds::store::lists(&last_good);
    let compile = || {
        policy::compile_with(&config, &runtime, &feed_lists).with_context(|| {
            format!(
                "config `{}` with the runtime entries of `{}` (edit that file while the daemon is stopped to drop entries)",
                config_path.display(),
                store.path().display()
            )
        })
    };
    let (bpf_dir, max_flows, track_flows) = (
        config.bpf_dir.clone(),
        config.flows.max_flows,
        config.track_outbound,
    );
    let (policy, mut datapath) = if Datapath::resizes_flow_table(&bpf_dir, max_flows) {
        // Not for a start that then fails: the new table would miss the
        // flows the running programs record meanwhile.
        let policy = compile()?;
        (
            policy,
            Datapath::load(loader, &bpf_dir, max_flows, track_flows)?,
        )
    } else {
        // The maps are created (or adopted) and the kernel starts
        // verifying the program on a thread of their own while the
        // policy is compiled.
        let loading = std::thread::Builder::new()
            .name("load".into())
            .spawn(move || Datapath::load(loader, &bpf_dir, max_flows, track_flows))
            .context("starting the thread that loads the datapath")?;
        let policy = compile();
        // Joined before any error returns: a load is not cut off half-way.
        let loaded = loading
            .join()
            .map_err(|_| anyhow::anyhow!("loading the datapath panicked"))?;
        (policy?, loaded?)
    };
    if datapath.adopted() {
        info!(bpf_dir = %config.bpf_dir.display(), "adopting the pinned firewall: it keeps enforcing its policy until this one is switched in");
        if let Some(ledger) = store.ledger()
            && datapath.restore_ledger(ledger)
        {
            info!("per-rule counters carry on from the previous daemon");
        }
    }
    // Fill the maps before attaching, while the kernel verifies the
    // program: the first packet already sees the policy. With adopted maps
    // this is the idle slot: one switch replaces the old daemon's policy.
    datapath.write_idle(&policy, Delta::Keys(PolicyDiff::default()))?;
    // Tracking before the policy goes live: it already sees the flows of
    // the host's connections (from their next packet).
    datapath.set_tracking(&config)?;
    datapath.switch(&policy)?;
    for interface in &config.interfaces {
        datapath.attach(interface, config.xdp_mode)?;
    }
    datapath.remove_stale_pins(&config.interfaces);
    // The table as it is now: evictions past these are warned about.
    let flows = if config.track_outbound {
        datapath
            .sweep_flows(false)
            .inspect_err(|err| warn!(error = %err, "counting the flow table failed"))
            .ok()
    } else {
        None
    };
    // Enforcing: now the copy `reload --confirm` rolls back to.
    staged_config.keep();
    let program_id = datapath.program_id()?;
    let maps_dir = datapath.maps_dir();
    let program_log = datapath.take_program_log();
    if let Some(ledger) = datapath.take_changed_ledger() {
        store.save_ledger(&ledger);
    }
    info!(
        config = %config_path.display(),
        socket = %config.socket.display(),
        state_dir = %config.state_dir.display(),
        mode = api::mode_name(config.enforce),
        rules = policy.rule_names.len(),
        prefixes_v4 = policy.v4.len(),
        prefixes_v6 = policy.v6.len(),
        ports = policy.ports.len(),
        runtime_entries = runtime.len(),
        "firewall-ctl daemon running"
    );
    let mut started = AuditRecord::new(Action::Start, None, Outcome::Applied);
    started.detail = Some(format!(
        "config `{}`, {} runtime entries",
        config_path.display(),
        runtime.len()
    ));
    if let Err(err) = audit.append(&started) {
        warn!(error = %err, "appending to the audit log failed");
    }

    let bpf_dir = config.bpf_dir.clone();
    let feed_states: FeedStates = last_good
        .iter()
        .map(|(name, last)| (name.clone(), last.state()))
        .collect();
    let (feed_configs, feed_config_updates) = watch::channel(config.feeds.clone());
    let writer = Writer::new(writer::Started {
        config_path,
        overrides,
        program_id,
        config,
        runtime,
        feeds: feed_lists,
        feed_states: feed_states.clone(),
        feed_store,
        feed_configs,
        policy,
        datapath: Box::new(datapath),
        store,
        audit,
        pending,
        flows,
    });
    Ok(Ready {
        writer,
        listener,
        socket_file: Some(socket_file),
        metrics: metrics_listener,
        audit_files,
        maps_dir,
        bpf_dir,
        program_log,
        feed_configs: feed_config_updates,
        feed_states,
    })
}

/// Serves a started daemon: the policy writer on a thread of its own, the
/// control socket, the link watcher, the feed fetcher, drop samples,
/// metrics and the service manager's watchdog, until a [`Signal::Stop`]
/// comes (or the signals' sender goes) or the writer stops. The pinned
/// firewall stays attached and enforcing after it returns.
pub async fn serve(
    ready: Ready,
    mut signals: tokio::sync::mpsc::Receiver<Signal>,
) -> anyhow::Result<()> {
    let Ready {
        mut writer,
        listener,
        socket_file: _socket_file,
        metrics: metrics_listener,
        audit_files,
        maps_dir,
        bpf_dir,
        program_log,
        feed_configs: feed_config_updates,
        feed_states,
    } = ready;
    let first_status = Arc::new(writer.snapshot());
    let (status_sender, status) = watch::channel(first_status.clone());
    writer.publish_to(status_sender);
    // What the kernel runs where, before the socket answers `status`.
    let (netlink, link_events) = links::connect().context("opening netlink")?;
    let (interfaces_sender, interfaces) =
        watch::channel(links::check(&netlink, &first_status).await);
    let (jobs, pending) = mpsc::channel();
    let (writer_stopped, mut writer_gone) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("policy-writer".to_string())
        .spawn(move || {
            // Dropped when `run` returns or unwinds: the daemon must not
            // live on without the one writer of its policy.
            let _stopped = writer_stopped;
            writer.run(pending)
        })
        .context("starting the policy writer thread")?;
    tokio::spawn(links::watch(
        netlink,
        link_events,
        status.clone(),
        interfaces_sender,
        jobs.clone(),
    ));
    let fetched: crate::feeds::schedule::FetchSink = {
        let jobs = jobs.clone();
        Arc::new(move |job| jobs.send(Job::Feed(job)).is_ok())
    };
    let refresh_feeds = crate::feeds::schedule::start(feed_config_updates, feed_states, fetched)
        .context("starting the feed fetcher")?;
    let blocked = Arc::new(blocked::BlockedView::default());
    {
        let (view, status) = (blocked.clone(), status.clone());
        tokio::spawn(async move {
            if let Err(err) = blocked::run(&maps_dir, view, status).await {
                warn!(error = %format!("{err:#}"), "reading drop samples failed; `firewall-ctl blocked` shows nothing new");
            }
        });
    }
    if let Some(program_log) = program_log {
        tokio::spawn(async move {
            if let Err(err) = program_log::forward(program_log).await {
                warn!(error = %err, "forwarding the programs' diagnostic events failed; the log will not have them");
            }
        });
    }
    let shared = Arc::new(server::Shared {
        jobs: jobs.clone(),
        status,
        interfaces,
        refresh_feeds,
        blocked,
        followers: Arc::new(tokio::sync::Semaphore::new(server::MAX_FOLLOWERS)),
        audit_files,
        connections: limits::Limiter::new(limits::CONNECTIONS),
        heavy_reads: limits::Limiter::new(limits::HEAVY_READS),
        writer_reads: limits::Limiter::new(limits::WRITER_READS),
        started: Instant::now(),
    });
    let server = tokio::spawn(server::serve(listener, shared));
    if let Some(listener) = metrics_listener {
        info!(address = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(metrics::serve(listener, jobs.clone()));
    }
    // Only now: the policy is enforced on every interface and the socket answers.
    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(interval, jobs.clone()));
    }
    let outcome = loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(Signal::Reload) => {
                    info!("SIGHUP: reloading config");
                    let _ = jobs.send(Job::Command {
                        command: Command::Reload(Default::default()),
                        requester: None,
                        reply: None,
                        request_id: None,
                        // However long the writer is busy, a reload signalled is done.
                        deadline: None,
                    });
                }
                Some(Signal::Stop) | None => break Ok(()),
            },
            _ = &mut writer_gone => break Err(anyhow::anyhow!(
                "the policy writer stopped unexpectedly; exiting so that the service manager restarts the daemon"
            )),
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    server.abort();
    // The pinned links keep the program attached and enforcing the last
    // policy: stopping the daemon never opens the door.
    info!(bpf_dir = %bpf_dir.display(), "stopping; the firewall stays attached and enforcing (`firewall-ctl detach` removes it)");
    outcome
}

/// What a failed bind of the metrics listener means, and the way out.
fn why_not_listening(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another program listens on that port; stop it, or choose another port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no interface of this host has that address; use one it has, e.g. 127.0.0.1"
        }
        std::io::ErrorKind::PermissionDenied => {
            "this process may not listen there (a port below 1024 needs CAP_NET_BIND_SERVICE)"
        }
        _ if err.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            "this process may not open IP sockets at all: under systemd, the unit's `RestrictAddressFamilies=` must list AF_INET and AF_INET6"
        }
        _ => "check `metrics.listen`",
    }
}

/// Tells the service manager (systemd `Type=notify`), if any, how we are.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!(error = %err, "notifying the service manager failed");
    }
}

/// Pings the service manager's watchdog while the daemon is healthy: twice
/// per interval, each time after the policy writer has answered, so a
/// writer stuck for a whole interval gets the daemon restarted.
async fn watchdog(interval: std::time::Duration, jobs: mpsc::Sender<Job>) {
    let half = interval / 2;
    loop {
        tokio::time::sleep(half).await;
        let (answered, answer) = oneshot::channel();
        if jobs.send(Job::Ping(answered)).is_err() {
            return;
        }
        if tokio::time::timeout(half, answer)
            .await
            .is_ok_and(|answer| answer.is_ok())
        {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            warn!("the policy writer did not answer the watchdog in time");
        }
    }
}

/// The config to start with when a `reload --confirm` was pending as the
/// last daemon stopped: if its time is up, the config it replaced (rolled
/// back now, audited); if not, the new config, still pending. Otherwise the
/// config file as read.
fn resume_pending_reload(
    config_path: &Path,
    overrides: &Overrides,
    store: &StateStore,
    audit: &mut AuditLog,
    config: Config,
    text: String,
) -> anyhow::Result<(Config, String, Option<writer::Pending>)> {
    let Some(pending) = store.pending_reload()? else {
        return Ok((config, text, None));
    };
    let previous = overrides
        .parse(config_path, &pending.previous_config)
        .context("the config a pending `reload --confirm` rolls back to")?;
    if pending.rollback_at.0 > SystemTime::now() {
        info!(rollback_at = %pending.rollback_at, "a reload still waits for confirmation; it rolls back unless `firewall-ctl confirm` comes in time");
        let pending = writer::Pending {
            rollback_at: pending.rollback_at,
            previous,
            previous_text: pending.previous_config,
        };
        return Ok((config, text, Some(pending)));
    }
    warn!(rollback_was_due = %pending.rollback_at, "a reload was not confirmed before the daemon stopped: starting with the config it replaced");
    let mut record = AuditRecord::new(Action::Rollback, None, Outcome::Applied);
    record.detail = Some(format!(
        "not confirmed by {}: the daemon starts with the previous config; the config file still has the unconfirmed version",
        pending.rollback_at
    ));
    if let Err(err) = audit.append(&record) {
        warn!(error = %err, "appending to the audit log failed");
    }
    store.clear_pending_reload()?;
    Ok((previous, pending.previous_config, None))
}

/// Removes entries that expired while the daemon was not running, before
/// anything is enforced, and audits each.
fn drop_expired(
    runtime: &mut RuntimeEntries,
    store: &StateStore,
    audit: &mut AuditLog,
) -> anyhow::Result<()> {
    let expired = entries::expired(runtime, SystemTime::now());
    if expired.is_empty() {
        return Ok(());
    }
    let removed: Vec<_> = expired
        .iter()
        .filter_map(|key| runtime.remove(key))
        .collect();
    store.save(runtime)?;
    for entry in removed {
        info!(rule = entry.rule, prefix = %entry.prefix, "runtime entry expired while the daemon was stopped; removed");
        let record = AuditRecord::expiry(entry, "expired while the daemon was stopped");
        if let Err(err) = audit.append(&record) {
            warn!(error = %err, "appending to the audit log failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CommandError, ErrorKind, Response};

    /// The whole daemon in-process, without root: a writer on the
    /// in-memory data plane, served on a temporary socket (with the link
    /// watcher, the feed fetcher and the drop samples' reader, which finds
    /// no maps) until told to stop. Root may change the policy through it;
    /// anyone else is refused at the socket's door.
    #[tokio::test]
    async fn a_daemon_serves_its_socket_until_told_to_stop() {
        let harness = writer::tests::Harness::new(writer::tests::CONFIG);
        let dir = harness.dir;
        let socket = dir.path().join("served.sock");
        let ready = Ready {
            writer: harness.writer,
            listener: UnixListener::bind(&socket).unwrap(),
            socket_file: None,
            metrics: None,
            audit_files: harness.audit_files,
            maps_dir: dir.path().join("no-maps"),
            bpf_dir: dir.path().join("bpf"),
            program_log: None,
            feed_configs: harness.feed_configs,
            feed_states: FeedStates::new(),
        };
        let (signals, received) = tokio::sync::mpsc::channel(1);
        let serving = tokio::spawn(serve(ready, received));
        let ask = |command| {
            let socket = socket.clone();
            tokio::task::spawn_blocking(move || crate::client::call(&socket, command, None))
        };
        let status = ask(Command::Status).await.unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(status, Ok(Response::Status(_))), "{status:?}");
            let allowed = ask(writer::tests::allow(&["192.0.2.40"])).await.unwrap();
            assert!(matches!(allowed, Ok(Response::Change(_))), "{allowed:?}");
            let plane = harness.plane.lock().unwrap();
            assert!(writer::tests::admits(
                plane.live.as_ref().unwrap(),
                "192.0.2.40",
                443
            ));
        } else {
            let error = status.unwrap_err();
            assert_eq!(
                error.downcast_ref::<CommandError>().map(|error| error.kind),
                Some(ErrorKind::PermissionDenied),
                "{error:#}"
            );
        }
        signals.send(Signal::Stop).await.unwrap();
        serving.await.unwrap().unwrap();
    }

    /// Each failure names its cause and way out, not a guess.
    #[test]
    fn a_failed_metrics_listener_says_why() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = std::net::TcpListener::bind(taken.local_addr().unwrap()).unwrap_err();
        assert!(why_not_listening(&err).starts_with("another program listens"));
        let err = std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
        assert!(why_not_listening(&err).contains("RestrictAddressFamilies"));
        let err = std::net::TcpListener::bind("192.0.2.1:9469").unwrap_err();
        assert!(why_not_listening(&err).starts_with("no interface of this host"));
    }
}
