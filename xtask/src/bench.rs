//! `cargo xtask bench`: how long an operator waits for `firewall-ctl allow`
//! and `remove`, on a small policy and on one of 250,000 prefixes per
//! family, with the release build, in a lab of network namespaces.
//!
//! Each figure is the wall time of the CLI process (start, connect, the
//! daemon validating, writing the changed map entries, making the state
//! file durable, switching and auditing, the answer), as an operator or a
//! script sees it.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::bail;
use firewall_tests::{daemon::Daemon, lab::Lab};

use crate::{
    cargo::{EbpfToolchain, cargo, is_root, run as run_command, workspace_root},
    setup,
};

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

/// One rule listing `count` IPv4 /31s in 198.18.0.0/15 and `count` IPv6
/// /64s in 2001:db8::/32 (documentation and benchmarking ranges).
fn config(count: u32) -> String {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let mut sources = Vec::with_capacity(2 * count as usize);
    for index in 0..count {
        sources.push(format!("\"{}/31\"", Ipv4Addr::from(base + 2 * index)));
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
    for count in [10, LARGE] {
        let lab = Lab::new();
        let daemon = Daemon::start(&lab.edge, &config(count));
        let policy = format!("{count} prefixes per family");
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
    }
    println!(
        "\n`status` is the floor: starting the CLI and one socket round trip. A change\n\
         within a second of the previous one also waits for an RCU grace period\n\
         (membarrier) before it reuses the retired policy slot; that is the\n\
         difference between the isolated and the back-to-back rows."
    );
    Ok(())
}
