//! `cargo xtask bench`: how long an operator waits for `firewall-ctl allow`
//! and `remove`, on a small policy and on one of 250,000 prefixes per
//! family, with the release build, in a lab of network namespaces.
//!
//! Each figure is the wall time of the CLI process (start, connect, the
//! daemon validating, writing the changed map entries, making the state
//! file durable, switching and auditing, the answer), as an operator or a
//! script sees it.
//!
//! Then the XDP program's cost per packet, with flow tracking off and on,
//! measured by the kernel (`BPF_PROG_TEST_RUN`) on the program the daemon
//! attached, with its live maps.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::bail;
use firewall_tests::{
    addr::{EDGE_IF, STRANGER_V4},
    bpf,
    daemon::Daemon,
    frames::{ETH_IPV4, TCP, TCP_ACK, ethernet, ipv4, tcp_segment, tcp_v4},
    http::{HttpServer, Reply},
    lab::Lab,
};

use crate::{
    cargo::{EbpfToolchain, cargo, is_root, run as run_command, workspace_root},
    setup,
};

/// Runs per `BPF_PROG_TEST_RUN`; the kernel reports their mean.
const TEST_RUNS: u32 = 1_000_000;
/// `BPF_PROG_TEST_RUN`s per case; the median is reported.
const TEST_RUN_SAMPLES: usize = 5;

/// Prefixes per family of the large policy: the reference size.
const LARGE: u32 = 250_000;
/// Changes measured per case.
const SAMPLES: usize = 15;
/// More than the daemon's grace before it reuses a retired slot, so an
/// isolated change is measured as one (see `datapath::RETIRE_GRACE`).
const ISOLATED_PAUSE: Duration = Duration::from_millis(1100);

fn build_release(toolchain: EbpfToolchain) -> anyhow::Result<PathBuf> {
    run_command(&mut cargo(
        toolchain,
        &["build", "--release", "--package", "firewall-ctl"],
    ))?;
    Ok(workspace_root().join("target/release/firewall-ctl"))
}

/// One rule listing `count` IPv4 /32s from 198.18.0.0 (every other
/// address) and `count` IPv6 /64s in 2001:db8::/32 (benchmarking and
/// documentation ranges; nothing is sent to them outside the lab).
fn config(count: u32) -> String {
    config_from(count, 0)
}

/// [`config`] with every prefix moved by `shift` (0 or 1): a new list of
/// the same size.
fn config_from(count: u32, shift: u32) -> String {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let mut sources = Vec::with_capacity(2 * count as usize);
    for index in 0..count {
        let index = 2 * index + shift;
        sources.push(format!("\"{}/32\"", Ipv4Addr::from(base + index)));
        sources.push(format!(
            "\"2001:db8:{:x}:{:x}::/64\"",
            index >> 16,
            index & 0xffff
        ));
    }
    format!(
        "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nsources = [{}]\n",
        sources.join(",")
    )
}

/// Milliseconds one CLI call takes.
fn time_ms(daemon: &Daemon, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = daemon.ctl(args);
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !output.status.success() {
        bail!(
            "firewall-ctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

fn median_and_max(mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "{:>6.1} {:>6.1}",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    )
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark creates network namespaces and attaches XDP: run it as root");
    }
    let binary = build_release(setup::run()?)?;
    // SAFETY: no other thread exists yet; the lab's helpers read it.
    unsafe { std::env::set_var("FIREWALL_CTL_BIN", &binary) };
    println!(
        "\nfirewall-ctl allow/remove round trip, release build, CLI wall time in ms ({SAMPLES} samples each)"
    );
    println!(
        "{:<28} {:<22} {:>6} {:>6}",
        "POLICY", "CASE", "MEDIAN", "MAX"
    );
    let mut per_packet = Vec::new();
    let mut control = Vec::new();
    for count in [10, LARGE] {
        let lab = Lab::new();
        let daemon = Daemon::start(&lab.edge, &config(count));
        let policy = format!("{count} prefixes per family");
        control.push(control_plane(&daemon, count, &policy)?);
        let mut status = Vec::new();
        let (mut isolated_allow, mut isolated_remove) = (Vec::new(), Vec::new());
        let (mut burst_allow, mut burst_remove) = (Vec::new(), Vec::new());
        for sample in 0..SAMPLES {
            let address = format!("192.0.2.{}", sample + 1);
            std::thread::sleep(ISOLATED_PAUSE);
            status.push(time_ms(&daemon, &["status"])?);
            std::thread::sleep(ISOLATED_PAUSE);
            isolated_allow.push(time_ms(&daemon, &["allow", &address])?);
            std::thread::sleep(ISOLATED_PAUSE);
            isolated_remove.push(time_ms(&daemon, &["remove", &address])?);
        }
        for sample in 0..SAMPLES {
            let address = format!("192.0.2.{}", sample + 1);
            burst_allow.push(time_ms(&daemon, &["allow", &address])?);
            burst_remove.push(time_ms(&daemon, &["remove", &address])?);
        }
        for (case, samples) in [
            ("status (no change)", status),
            ("allow, isolated", isolated_allow),
            ("remove, isolated", isolated_remove),
            ("allow, back to back", burst_allow),
            ("remove, back to back", burst_remove),
        ] {
            println!("{policy:<28} {case:<22} {}", median_and_max(samples));
        }
        per_packet.extend(per_packet_costs(&daemon, count, &policy)?);
    }
    println!(
        "\nControl plane: start to enforcing (the daemon's log: first line to `running`), reloads (CLI wall time until applied), daemon memory"
    );
    println!(
        "{:<28} {:>9} {:>13} {:>11} {:>8} {:>8}",
        "POLICY", "START (s)", "RELOAD SAME", "RELOAD NEW", "RSS (MB)", "PEAK (MB)"
    );
    for row in control {
        println!("{row}");
    }
    println!(
        "\n`status` is the floor: starting the CLI and one socket round trip. A change\n\
         within a second of the previous one also waits for an RCU grace period\n\
         (membarrier) before it reuses the retired policy slot; that is the\n\
         difference between the isolated and the back-to-back rows."
    );
    println!(
        "\nXDP program, ns per packet (kernel BPF_PROG_TEST_RUN, mean of {TEST_RUNS} runs, median of {TEST_RUN_SAMPLES})"
    );
    println!(
        "{:<28} {:<40} {:>9} {:>9}",
        "POLICY", "PACKET", "TRACK OFF", "TRACK ON"
    );
    for row in per_packet {
        println!("{row}");
    }
    println!(
        "\nWith tracking on, only what the allowlist would drop looks up the flow\n\
         table, and a SYN from outside never does (it cannot be a reply)."
    );
    println!(
        "\nLarge feeds: parse, validate, normalise, compile with the policy and write the maps (ms, the daemon's measure), and `feeds refresh` wall time"
    );
    println!(
        "{:<12} {:>7} {:>7} {:>10} {:>10} {:>12}",
        "FEED", "IPV4", "IPV6", "FIRST LOAD", "UPDATE", "REFRESH (ms)"
    );
    for row in feed_apply_times()? {
        println!("{row}");
    }
    Ok(())
}

/// Seconds from the daemon's first log line to its `running` line.
fn start_seconds(log: &str) -> anyhow::Result<f64> {
    let time = |line: &str| -> anyhow::Result<f64> {
        let stamp = line.split_whitespace().next().unwrap_or_default();
        let at = humantime::parse_rfc3339(stamp)?;
        Ok(at.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64())
    };
    let first = log.lines().next().unwrap_or_default();
    let Some(running) = log
        .lines()
        .find(|line| line.contains("firewall-ctl daemon running"))
    else {
        bail!("no `running` line in the daemon's log");
    };
    Ok(time(running)? - time(first)?)
}

/// The daemon's resident and peak resident memory, in MB.
fn memory_mb(pid: u64) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kilobytes = |key: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(key))
            .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .parse::<f64>()?)
    };
    Ok((kilobytes("VmRSS:")? / 1024.0, kilobytes("VmHWM:")? / 1024.0))
}

/// Start, reloads and memory of `daemon` on the policy of `count`
/// prefixes per family: one table row. Leaves the daemon on that policy.
fn control_plane(daemon: &Daemon, count: u32, policy: &str) -> anyhow::Result<String> {
    let start = start_seconds(&daemon.log())?;
    let reload_ms = |config: &str| -> anyhow::Result<f64> {
        std::fs::write(&daemon.config, config)?;
        time_ms(daemon, &["reload"])
    };
    let same = reload_ms(&config(count))?;
    let new = reload_ms(&config_from(count, 1))?;
    reload_ms(&config(count))?;
    let pid = daemon.status()["pid"].as_u64().unwrap_or_default();
    let (rss, peak) = memory_mb(pid)?;
    Ok(format!(
        "{policy:<28} {start:>9.3} {:>10.0} ms {:>8.0} ms {rss:>8.1} {peak:>8.1}",
        same, new
    ))
}

/// Per-packet cost of an allowed packet and of two strangers' packets,
/// with `track_outbound` off and on: one table row per packet.
fn per_packet_costs(daemon: &Daemon, count: u32, policy: &str) -> anyhow::Result<Vec<String>> {
    let cases = [
        (
            "vendor SYN to 443 (allowed)",
            tcp_v4(Ipv4Addr::new(198, 18, 0, 2), 443),
        ),
        ("stranger SYN to 443 (dropped)", tcp_v4(STRANGER_V4, 443)),
        (
            "stranger ACK to port 40000 (dropped)",
            ethernet(
                &[],
                ETH_IPV4,
                &ipv4(STRANGER_V4, TCP, &[], 0, &tcp_segment(443, 40000, TCP_ACK)),
            ),
        ),
    ];
    let mut costs = vec![Vec::new(); cases.len()];
    for track in [false, true] {
        let status = daemon.reload(&format!("track_outbound = {track}\n{}", config(count)));
        if !status["last_reload_error"].is_null() {
            bail!("reload: {}", status["last_reload_error"]);
        }
        let program =
            bpf::program_of_link(&daemon.bpf_dir.join("links").join(EDGE_IF).join("driver"))?;
        for ((_, frame), costs) in cases.iter().zip(&mut costs) {
            let mut samples = Vec::new();
            for _ in 0..TEST_RUN_SAMPLES {
                samples.push(bpf::test_run(&program, frame, TEST_RUNS)?.0);
            }
            samples.sort_unstable();
            costs.push(samples[samples.len() / 2]);
        }
    }
    Ok(cases
        .iter()
        .zip(costs)
        .map(|((case, _), costs)| {
            format!("{policy:<28} {case:<40} {:>9} {:>9}", costs[0], costs[1])
        })
        .collect())
}

/// A feed body in AWS's format with `v4` IPv4 /32s and `v6` IPv6 /64s, none
/// adjacent (so none merge), in the benchmarking and documentation ranges;
/// `shift` 1 moves every prefix.
fn aws_body(v4: u32, v6: u32, shift: u32) -> Vec<u8> {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + shift;
    let prefixes: Vec<serde_json::Value> = (0..v4)
        .map(|index| {
            serde_json::json!({"ip_prefix": format!("{}/32", Ipv4Addr::from(base + 2 * index)), "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1"})
        })
        .collect();
    let ipv6_prefixes: Vec<serde_json::Value> = (0..v6)
        .map(|index| {
            serde_json::json!({"ipv6_prefix": format!("2001:db8:{:x}:{:x}::/64", index >> 15, (index * 2 + shift) & 0xffff), "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1"})
        })
        .collect();
    serde_json::json!({"syncToken": "1", "createDate": "2026-11-25-00-00-00", "prefixes": prefixes, "ipv6_prefixes": ipv6_prefixes})
        .to_string()
        .into_bytes()
}

/// How long a large feed takes to load and apply: the daemon's own
/// measure (parse, validate, normalise, compile, write the maps) and the
/// wall time of `feeds refresh`.
fn feed_apply_times() -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for (name, v4, v6) in [
        ("AWS-sized", 10_700, 6_200),
        ("Azure-sized", 60_000, 40_000),
    ] {
        let lab = Lab::new();
        let server = HttpServer::start(&lab.edge, "127.0.0.1:0".parse()?);
        server.set(Reply::ok(aws_body(v4, v6, 0)));
        let config = format!(
            "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n[[feeds]]\nname = \"big\"\nurl = \"{}\"\nformat = \"aws\"\nmax_shrink = \"100%\"\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nfeeds = [\"big\"]\n",
            server.url("/ip-ranges.json")
        );
        let daemon = Daemon::start(&lab.edge, &config);
        let loaded = firewall_tests::daemon::poll(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || (daemon.json(&["feeds"])["feeds"][0]["prefixes_v4"] == v4).then_some(()),
        );
        if loaded.is_none() {
            bail!("the {name} feed did not load:\n{}", daemon.log());
        }
        // The same size again with every prefix moved: a full update.
        server.set(Reply::ok(aws_body(v4, v6, 1)));
        let refresh = time_ms(&daemon, &["feeds", "refresh", "big"])?;
        let took: Vec<u64> = daemon
            .log()
            .lines()
            .filter(|line| line.contains("applied a feed update"))
            .filter_map(|line| {
                line.split("took_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let [first, update] = took[..] else {
            bail!(
                "expected two applied updates of the {name} feed:\n{}",
                daemon.log()
            );
        };
        rows.push(format!(
            "{name:<12} {v4:>7} {v6:>7} {first:>10} {update:>10} {refresh:>12.1}"
        ));
    }
    Ok(rows)
}
