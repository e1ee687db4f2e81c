//! What the bench's parts share: the policy they measure on, and timing
//! and weighing the daemon while they do.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::bail;
use firewall_tests::daemon::Daemon;

/// More than the daemon's grace before it reuses a retired slot, so an
/// isolated change is measured as one (see `datapath::RETIRE_GRACE`).
pub const ISOLATED_PAUSE: Duration = Duration::from_millis(1100);

/// One rule listing `count` IPv4 /32s from 198.18.0.0 (every other
/// address) and `count` IPv6 /64s in 2001:db8::/32 (benchmarking and
/// documentation ranges; nothing is sent to them outside the lab).
pub fn config(count: u32) -> String {
    config_from(count, 0)
}

/// [`config`] with every prefix moved by `shift` (0 or 1): a new list of
/// the same size.
pub fn config_from(count: u32, shift: u32) -> String {
    let sources: Vec<String> = sources(count, shift)
        .iter()
        .map(|(address, len)| format!("\"{address}/{len}\""))
        .collect();
    format!(
        "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nsources = [{}]\n",
        sources.join(",")
    )
}

/// The IPv4 address of prefix `index` of the bench's lists moved by `shift`
/// (0 or 1): every other address from 198.18.0.0, so that the addresses
/// between two listed ones (`shift` 1) are near misses.
pub fn listed_v4(index: u32, shift: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 2 * index + shift)
}

/// The prefixes of [`config_from`]: addresses and lengths.
pub fn sources(count: u32, shift: u32) -> Vec<(IpAddr, u8)> {
    (0..count)
        .flat_map(|index| {
            let v6 = (0x2001_0db8_u128 << 96) | (u128::from(2 * index + shift) << 64);
            [
                (IpAddr::V4(listed_v4(index, shift)), 32),
                (IpAddr::V6(Ipv6Addr::from(v6)), 64),
            ]
        })
        .collect()
}

/// Milliseconds one CLI call takes.
pub fn time_ms(daemon: &Daemon, args: &[&str]) -> anyhow::Result<f64> {
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

/// One control-plane figure of one system at one size. `rss_mb` is the
/// daemon's; netfilter keeps its sets in the kernel, so it has none.
#[derive(serde::Serialize)]
pub struct ControlCost {
    pub system: &'static str,
    pub what: &'static str,
    pub prefixes: u32,
    pub seconds: f64,
    /// The daemon's resident memory once the changes have settled.
    pub rss_mb: Option<f64>,
    /// The most it was resident with, from its start through the changes.
    pub peak_rss_mb: Option<f64>,
}

/// The daemon's resident and peak resident memory, in MB.
pub fn memory_mb(pid: u64) -> anyhow::Result<(f64, f64)> {
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
