//! `cargo xtask bench`'s figures of what local users can do to the daemon
//! at 250k + 250k prefixes: an administrator's `allow` and the daemon's
//! memory while a `read_group` member runs 30 heavy reads at once without
//! pause, the audit log's growth under a minute of denied requests from
//! that reader, and the descriptors 20,000 idle metrics clients hold.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use firewall_tests::{
    daemon::{Daemon, heavy_read, request_line},
    lab::Lab,
    users::{Group, User},
};
use serde_json::json;

use crate::workload::{ISOLATED_PAUSE, memory_mb, time_ms};

/// Heavy reads the reader keeps running at once.
const HEAVY_READERS: usize = 30;
/// `allow`s (each followed by a `remove`) timed under that load.
const ALLOWS: usize = 20;
/// Idle metrics clients, held by helper processes of this many each (a
/// process's file limit here is 20,000).
const METRICS_CLIENTS: usize = 20_000;
const CLIENTS_PER_HELPER: usize = 10_000;
const METRICS: &str = "127.0.0.1:9469";

/// What `--json` writes of it.
#[derive(serde::Serialize)]
pub struct Pressure {
    pub prefixes: u32,
    pub heavy_readers: usize,
    /// `allow` wall times, as the CLI sees them, under the heavy reads,
    /// and on the same daemon before them (each isolated: see
    /// `workload::ISOLATED_PAUSE`).
    pub allow_ms_median: f64,
    pub allow_ms_max: f64,
    pub allow_ms_median_unloaded: f64,
    pub allow_ms_max_unloaded: f64,
    /// The daemon's resident memory before the heavy reads and its peak
    /// during them.
    pub rss_mb_before: f64,
    pub peak_rss_mb: f64,
    /// Heavy reads answered whole, and refused as busy, meanwhile.
    pub heavy_reads_answered: u64,
    pub heavy_reads_busy: u64,
    /// Whether the watchdog's ping (a writer round trip) was answered every
    /// time during the load, and the slowest one.
    pub writer_ping_max_ms: f64,
    /// Bytes a minute of denied requests from one reader added to the
    /// denials' file and to the trail of changes.
    pub denied_log_bytes_per_minute: u64,
    pub change_log_bytes_per_minute: u64,
    pub denied_requests_per_minute: u64,
    pub metrics_clients: usize,
    /// Descriptors the daemon held with them connected, beyond its own.
    pub metrics_descriptors: usize,
}

/// The bench's config for `count` prefixes, with a reader group and
/// metrics.
fn config(count: u32, readers: &Group) -> String {
    format!(
        "read_group = \"{}\"\n{}\n[metrics]\nlisten = \"{METRICS}\"\n",
        readers.name,
        crate::workload::config(count)
    )
}

pub fn measure(count: u32) -> anyhow::Result<Pressure> {
    let lab = Lab::new();
    let readers = Group::create();
    let reader = User::create(&[&readers]);
    let mut daemon = Daemon::prepare(&lab.edge, &config(count, &readers));
    daemon.spawn_and_wait();
    let pid = u64::from(daemon.pid());
    let (unloaded, _) = allow_times(&daemon, ALLOWS / 2)?;
    let (rss_mb_before, _) = memory_mb(pid)?;
    daemon.reset_peak_memory();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let credentials = reader.credentials();
    let readers_running: Vec<_> = (0..HEAVY_READERS)
        .map(|index| {
            let (credentials, socket) = (credentials.clone(), daemon.socket.clone());
            let (stop, answered, busy) = (stop.clone(), answered.clone(), busy.clone());
            std::thread::spawn(move || {
                credentials.on_thread(move || {
                    let line = request_line(heavy_read(index));
                    let mut answer = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = UnixStream::connect(&socket) else {
                            continue;
                        };
                        answer.clear();
                        if stream.write_all(&line).is_err()
                            || stream.read_to_end(&mut answer).is_err()
                        {
                            continue;
                        }
                        if answer.starts_with(b"{\"error\"") {
                            busy.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        } else {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
        })
        .collect();
    // The load settles: every reader has asked at least once.
    std::thread::sleep(Duration::from_secs(3));
    let (allows, pings) = allow_times(&daemon, ALLOWS)?;
    let (_, peak_rss_mb) = memory_mb(pid)?;
    stop.store(true, Ordering::Relaxed);
    for thread in readers_running {
        let _ = thread.join();
    }

    let (denied_requests_per_minute, denied_log, change_log) = deny_for_a_minute(&daemon, &reader)?;
    let (metrics_clients, metrics_descriptors) = idle_metrics_clients(&lab, &daemon)?;
    Ok(Pressure {
        prefixes: count,
        heavy_readers: HEAVY_READERS,
        allow_ms_median: allows[allows.len() / 2],
        allow_ms_max: allows[allows.len() - 1],
        allow_ms_median_unloaded: unloaded[unloaded.len() / 2],
        allow_ms_max_unloaded: unloaded[unloaded.len() - 1],
        rss_mb_before,
        peak_rss_mb,
        heavy_reads_answered: answered.load(Ordering::Relaxed),
        heavy_reads_busy: busy.load(Ordering::Relaxed),
        writer_ping_max_ms: pings.iter().copied().fold(0.0, f64::max),
        denied_log_bytes_per_minute: denied_log,
        change_log_bytes_per_minute: change_log,
        denied_requests_per_minute,
        metrics_clients,
        metrics_descriptors,
    })
}

/// `samples` isolated `allow`s (each removed again), sorted, and the time
/// of a `stats` (a policy writer round trip, as the watchdog's) after each.
fn allow_times(daemon: &Daemon, samples: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut allows, mut pings) = (Vec::new(), Vec::new());
    for sample in 0..samples {
        let address = format!("192.0.2.{}", 100 + sample);
        std::thread::sleep(ISOLATED_PAUSE);
        allows.push(time_ms(daemon, &["allow", &address, "--rule", "vendor"])?);
        pings.push(time_ms(daemon, &["stats"])?);
        std::thread::sleep(ISOLATED_PAUSE);
        time_ms(daemon, &["remove", &address])?;
    }
    allows.sort_by(f64::total_cmp);
    Ok((allows, pings))
}

/// Bytes in `daemon`'s state files whose names start with `prefix`.
fn bytes_of(daemon: &Daemon, prefix: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(&daemon.state_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// A minute of denied `allow`s of 3,900 prefixes each (64 KiB requests),
/// as fast as the reader can send them; then the summaries' interval, so
/// that what they add is counted. Returns the requests sent and the bytes
/// the denials' file and the trail of changes grew by.
fn deny_for_a_minute(daemon: &Daemon, reader: &User) -> anyhow::Result<(u64, u64, u64)> {
    let denied_before = bytes_of(daemon, "audit-denied.log")?;
    let changes_before = bytes_of(daemon, "audit.log")?;
    let prefixes: Vec<String> = (0..3900).map(|i| format!("192.0.2.{}", i % 256)).collect();
    let line = request_line(
        json!({"allow": {"prefixes": prefixes, "rule": null, "comment": null, "expires": null, "force": false}}),
    );
    let socket = daemon.socket.clone();
    let sent = reader.on_thread(move || {
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(60) {
            let Ok(mut stream) = UnixStream::connect(&socket) else {
                continue;
            };
            let mut answer = String::new();
            if stream.write_all(&line).is_ok()
                && std::io::BufReader::new(stream)
                    .read_line(&mut answer)
                    .is_ok()
            {
                sent += 1;
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(11));
    Ok((
        sent,
        bytes_of(daemon, "audit-denied.log")? - denied_before,
        bytes_of(daemon, "audit.log")? - changes_before,
    ))
}

/// Connects [`METRICS_CLIENTS`] clients that send half a request line and
/// wait, and counts the descriptors the daemon holds meanwhile beyond those
/// it held before.
fn idle_metrics_clients(lab: &Lab, daemon: &Daemon) -> anyhow::Result<(usize, usize)> {
    let before = daemon.open_files();
    let exe = std::env::current_exe()?;
    let mut helpers = Vec::new();
    let mut connected = 0;
    for _ in 0..METRICS_CLIENTS / CLIENTS_PER_HELPER {
        let mut helper = Command::new("ip")
            .args(["netns", "exec", &lab.edge.name])
            .arg(&exe)
            .args(["hold-connections", METRICS, &CLIENTS_PER_HELPER.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a helper that holds metrics connections")?;
        let mut ready = String::new();
        std::io::BufReader::new(helper.stdout.take().expect("piped")).read_line(&mut ready)?;
        connected += ready
            .strip_prefix("held ")
            .and_then(|count| count.trim().parse::<usize>().ok())
            .ok_or_else(|| anyhow::anyhow!("the helper said {ready:?}"))?;
        helpers.push(helper);
    }
    let held = daemon.open_files().saturating_sub(before);
    for mut helper in helpers {
        // Its stdin closes: it lets go and exits.
        drop(helper.stdin.take());
        helper.wait()?;
    }
    Ok((connected, held))
}

/// `cargo xtask hold-connections ADDRESS COUNT`: connects COUNT clients to
/// ADDRESS, each sending half a request line, says `held N` (those that
/// connected), and keeps them until its stdin closes.
pub fn hold_connections(address: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(mut stream) = TcpStream::connect(address) else {
            continue;
        };
        // The daemon may have closed it already: it counts as connected.
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x");
        held.push(stream);
    }
    if held.is_empty() {
        bail!("no connection to {address}");
    }
    println!("held {}", held.len());
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    Ok(())
}

/// The table `cargo xtask bench` prints.
pub fn print(pressure: &Pressure) {
    println!(
        "\nLocal users at {} prefixes per family (release build): an administrator's `allow` while a read_group member keeps {} heavy reads (list, stats --entries, audit log) going at once; a minute of denied 64 KiB requests from that reader; {} idle metrics clients",
        pressure.prefixes, pressure.heavy_readers, pressure.metrics_clients
    );
    println!(
        "isolated allow under the heavy reads: median {:.1} ms, max {:.1} ms ({} samples; before them: {:.1} / {:.1} ms); a writer round trip (stats) at most {:.1} ms",
        pressure.allow_ms_median,
        pressure.allow_ms_max,
        ALLOWS,
        pressure.allow_ms_median_unloaded,
        pressure.allow_ms_max_unloaded,
        pressure.writer_ping_max_ms
    );
    println!(
        "daemon RSS: {:.0} MB before, peak {:.0} MB during; heavy reads answered {}, refused as busy {}",
        pressure.rss_mb_before,
        pressure.peak_rss_mb,
        pressure.heavy_reads_answered,
        pressure.heavy_reads_busy
    );
    println!(
        "a minute of denials ({} requests): audit-denied.log +{} bytes, audit.log +{} bytes",
        pressure.denied_requests_per_minute,
        pressure.denied_log_bytes_per_minute,
        pressure.change_log_bytes_per_minute
    );
    println!(
        "{} idle metrics clients: the daemon held {} more descriptors",
        pressure.metrics_clients, pressure.metrics_descriptors
    );
}
