//! `cargo xtask bench`: how long an operator waits for `firewall-ctl allow`
//! and `remove`, on a small policy and on one of 250,000 prefixes per
//! family, with the release build, in a lab of network namespaces.
//!
//! Each figure is the wall time of the CLI process (start, connect, the
//! daemon validating, writing the changed map entries, making the state
//! file durable, switching and auditing, the answer), as an operator or a
//! script sees it.
//!
//! Then packet rates through veth against nftables, ipset, a minimal XDP
//! LPM allowlist and drop-all (`rates`), the netfilter control planes on the
//! same lists, and the XDP program's cost per packet measured by the kernel
//! (`BPF_PROG_TEST_RUN`) on the program the daemon attached, with its live
//! maps.

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use firewall_tests::{
    addr::{EDGE_IF, STRANGER_V4},
    bpf,
    daemon::Daemon,
    frames::tcp_v4,
    http::{HttpServer, Reply},
    lab::Lab,
};

use crate::{
    cargo::{EbpfToolchain, cargo, is_root, run as run_command, workspace_root},
    rates::{Rate, RateBench, SYSTEMS, TRAFFIC},
    reference, setup,
    workload::{
        ControlCost, ISOLATED_PAUSE, config, config_from, listed_v4, memory_mb, sources, time_ms,
    },
};

/// Runs per `BPF_PROG_TEST_RUN`; the kernel reports their mean.
const TEST_RUNS: u32 = 1_000_000;
/// `BPF_PROG_TEST_RUN`s per case; the median is reported.
const TEST_RUN_SAMPLES: usize = 5;

/// Prefixes per family of the large policy: the reference size.
const LARGE: u32 = 250_000;
/// Changes measured per case.
const SAMPLES: usize = 15;
fn build_release(toolchain: EbpfToolchain) -> anyhow::Result<PathBuf> {
    run_command(&mut cargo(
        toolchain,
        &["build", "--release", "--package", "firewall-ctl"],
    ))?;
    Ok(workspace_root().join("target/release/firewall-ctl"))
}

fn median_and_max(mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "{:>6.1} {:>6.1}",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    )
}

/// `cargo xtask bench` options.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The 250k size only, 3 repetitions: a few minutes.
    #[arg(long)]
    quick: bool,
    /// Only what local users can do to the daemon at 250k + 250k: `allow`
    /// and memory under 30 heavy reads, a minute of denials, idle metrics
    /// clients (two minutes).
    #[arg(long, conflicts_with = "quick")]
    local_users: bool,
    /// Also write the results as JSON to PATH (stable field names).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// Per-packet cost of one path, firewall-ctl against the minimal program.
#[derive(serde::Serialize)]
struct TestRunCost {
    path: &'static str,
    prefixes: u32,
    firewall_ctl: u32,
    minimal_lpm: u32,
}

/// What `--json` writes.
#[derive(serde::Serialize, Default)]
struct Results {
    /// What sent the rates' frames: `xdp-live` or `af-packet`.
    generator: &'static str,
    rates: Vec<Rate>,
    test_run_ns: Vec<TestRunCost>,
    drop_all_ns: u32,
    control: Vec<ControlCost>,
    /// What a local user can do to the daemon at the large size.
    pressure: Option<crate::pressure::Pressure>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark creates network namespaces and attaches XDP: run it as root");
    }
    let binary = build_release(setup::run()?)?;
    // SAFETY: no other thread exists yet; the lab's helpers read it.
    unsafe { std::env::set_var("FIREWALL_CTL_BIN", &binary) };
    if args.local_users {
        let pressure = crate::pressure::measure(LARGE)?;
        crate::pressure::print(&pressure);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&pressure)? + "\n")?;
        }
        return Ok(());
    }
    let sizes: &[u32] = if args.quick {
        &[LARGE]
    } else {
        &[10, 10_000, 100_000, LARGE]
    };
    let repetitions = if args.quick { 3 } else { TEST_RUN_SAMPLES };
    let mut results = Results::default();
    let mut round_trips = Vec::new();
    for &count in sizes {
        let lab = Lab::new();
        let mut daemon = Daemon::prepare(&lab.edge, &config(count));
        let spawned = std::time::SystemTime::now();
        daemon.spawn_and_wait();
        let policy = format!("{count} prefixes per family");
        results
            .control
            .extend(control_plane(&daemon, spawned, count)?);
        results
            .test_run_ns
            .extend(per_packet_costs(&daemon, count, repetitions)?);
        let (rates, netfilter) = RateBench::new(&lab, &sources(count, 0), &sources(count, 1))?;
        results.control.extend(netfilter);
        results.generator = rates.generator;
        results.rates.extend(rates.measure(repetitions)?);
        if !args.quick && (count == 10 || count == LARGE) {
            round_trips.extend(allow_remove_times(&daemon, &policy)?);
        }
    }
    results.pressure = Some(crate::pressure::measure(LARGE)?);
    results.drop_all_ns = median_cost(
        reference::drop_all()?.fd()?,
        &tcp_v4(STRANGER_V4, 443),
        repetitions,
    )?;

    if !round_trips.is_empty() {
        println!(
            "\nfirewall-ctl allow/remove round trip, release build, CLI wall time in ms ({SAMPLES} samples each)"
        );
        println!(
            "{:<28} {:<22} {:>6} {:>6}",
            "POLICY", "CASE", "MEDIAN", "MAX"
        );
        for row in round_trips {
            println!("{row}");
        }
        println!(
            "\n`status` is the floor: starting the CLI and one socket round trip. A change\n\
             within a second of the previous one also waits for an RCU grace period\n\
             (membarrier) before it reuses the retired policy slot; that is the\n\
             difference between the isolated and the back-to-back rows."
        );
    }
    if let Some(pressure) = &results.pressure {
        crate::pressure::print(pressure);
    }
    print_rates(&results.rates, sizes, results.generator);
    print_control(&results.control, sizes);
    println!(
        "\nns per packet (kernel BPF_PROG_TEST_RUN on the attached program with its live maps, mean of {TEST_RUNS} runs, median of {repetitions}), against a minimal XDP LPM allowlist with the same prefixes; drop-all: {} ns",
        results.drop_all_ns
    );
    println!(
        "{:>9} {:<8} {:>12} {:>11} {:>6}",
        "PREFIXES", "PATH", "FIREWALL-CTL", "MINIMAL LPM", "RATIO"
    );
    for cost in &results.test_run_ns {
        println!(
            "{:>9} {:<8} {:>12} {:>11} {:>6.2}",
            cost.prefixes,
            cost.path,
            cost.firewall_ctl,
            cost.minimal_lpm,
            f64::from(cost.firewall_ctl) / f64::from(cost.minimal_lpm.max(1))
        );
    }
    println!(
        "\nPaths: closed = SYN to a port no rule exposes; far = SYN to 443 from a\n\
         source far from every prefix; near = from an address between two listed\n\
         prefixes (the deepest trie walk); allowed = from a listed address. The\n\
         firewall also parses VLANs, options and extension headers, counts every\n\
         verdict, credits the entry and tracks flows; the minimal program does none\n\
         of that. The figures are bounded by this machine's CPU (one core per run)."
    );
    if !args.quick {
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
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// The rates table: per size and traffic, each system's Mpps and
/// firewall-ctl's ratio to the others, and what sent the frames.
fn print_rates(rates: &[Rate], sizes: &[u32], generator: &str) {
    let generator = match generator {
        "xdp-live" => "an XDP program in live-frames mode",
        _ => {
            "AF_PACKET sendmmsg (the kernel refused XDP live frames), which bounds the faster systems"
        }
    };
    println!(
        "\nPackets per second (Mpps), 54-byte SYNs over veth, generator and receiver on one core, median of the repetitions; sent by {generator}"
    );
    println!(
        "{:>9} {:<8} {:>12} {:>6} {:>6} {:>11} {:>8} {:>6} {:>6} {:>6}",
        "PREFIXES",
        "TRAFFIC",
        "FIREWALL-CTL",
        "NFT",
        "IPSET",
        "MINIMAL-LPM",
        "DROP-ALL",
        "×NFT",
        "×IPSET",
        "×LPM"
    );
    for &count in sizes {
        for traffic in TRAFFIC {
            let mpps = |system: &str| {
                rates
                    .iter()
                    .find(|rate| {
                        rate.prefixes == count && rate.traffic == traffic && rate.system == system
                    })
                    .map_or(f64::NAN, |rate| rate.mpps)
            };
            let [firewall, nft, ipset, lpm, drop] = SYSTEMS.map(mpps);
            println!(
                "{count:>9} {traffic:<8} {firewall:>12.2} {nft:>6.2} {ipset:>6.2} {lpm:>11.2} {drop:>8.2} {:>6.1} {:>6.1} {:>6.2}",
                firewall / nft,
                firewall / ipset,
                firewall / lpm
            );
        }
    }
    println!(
        "\nTraffic: far = SYNs to 443 from 512 sources far from every prefix; near = from\n\
         addresses between two listed ones; closed = to a port no rule exposes;\n\
         allowed = from listed addresses (then the kernel's TCP stack discards them:\n\
         the generator's sources leave the TCP checksum wrong). One core runs both the\n\
         generator and the receiving veth, so a rate is bounded by that core: the\n\
         drop-all column is the ceiling the generator and veth leave, and allowed\n\
         traffic is bounded by the network stack behind every system."
    );
}

/// The control-plane table: per size, each system's start, reloads, one
/// `allow` and, for firewall-ctl, the daemon's memory.
fn print_control(control: &[ControlCost], sizes: &[u32]) {
    println!(
        "\nControl plane: start to enforcing (firewall-ctl: spawned to its log's `running`; nft -f; ipset restore and the iptables rules), reloads of the same and of a new list (firewall-ctl reload; an atomic nft -f; ipset restore and swap), one `allow`, daemon RSS once settled and its peak"
    );
    println!(
        "{:>9} {:<13} {:>9} {:>12} {:>11} {:>9} {:>15}",
        "PREFIXES", "SYSTEM", "START", "RELOAD SAME", "RELOAD NEW", "ALLOW", "RSS/PEAK (MB)"
    );
    for &count in sizes {
        for system in ["firewall-ctl", "nft", "ipset"] {
            let of = |what: &str| {
                control.iter().find(|cost| {
                    cost.prefixes == count && cost.system == system && cost.what == what
                })
            };
            let seconds = |what: &str| of(what).map_or(f64::NAN, |cost| cost.seconds);
            let rss = of("allow")
                .and_then(|cost| Some(format!("{:.0}/{:.0}", cost.rss_mb?, cost.peak_rss_mb?)))
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "{count:>9} {system:<13} {:>8.3}s {:>11.3}s {:>10.3}s {:>8.3}s {rss:>15}",
                seconds("start"),
                seconds("reload_unchanged"),
                seconds("reload_new"),
                seconds("allow"),
            );
        }
    }
}

/// `allow`/`remove` round trips on `daemon`, isolated and back to back,
/// against `status`: one table row per case.
fn allow_remove_times(daemon: &Daemon, policy: &str) -> anyhow::Result<Vec<String>> {
    let mut status = Vec::new();
    let (mut isolated_allow, mut isolated_remove) = (Vec::new(), Vec::new());
    let (mut burst_allow, mut burst_remove) = (Vec::new(), Vec::new());
    for sample in 0..SAMPLES {
        let address = format!("192.0.2.{}", sample + 1);
        std::thread::sleep(ISOLATED_PAUSE);
        status.push(time_ms(daemon, &["status"])?);
        std::thread::sleep(ISOLATED_PAUSE);
        isolated_allow.push(time_ms(daemon, &["allow", &address])?);
        std::thread::sleep(ISOLATED_PAUSE);
        isolated_remove.push(time_ms(daemon, &["remove", &address])?);
    }
    for sample in 0..SAMPLES {
        let address = format!("192.0.2.{}", sample + 1);
        burst_allow.push(time_ms(daemon, &["allow", &address])?);
        burst_remove.push(time_ms(daemon, &["remove", &address])?);
    }
    Ok([
        ("status (no change)", status),
        ("allow, isolated", isolated_allow),
        ("remove, isolated", isolated_remove),
        ("allow, back to back", burst_allow),
        ("remove, back to back", burst_remove),
    ]
    .into_iter()
    .map(|(case, samples)| format!("{policy:<28} {case:<22} {}", median_and_max(samples)))
    .collect())
}

/// Seconds from `spawned` (when the daemon was started: it reads and
/// parses its config, loads the programs, fills the maps and attaches) to
/// its `running` log line.
fn start_seconds(log: &str, spawned: std::time::SystemTime) -> anyhow::Result<f64> {
    let Some(running) = log
        .lines()
        .find(|line| line.contains("firewall-ctl daemon running"))
    else {
        bail!("no `running` line in the daemon's log");
    };
    let stamp = running.split_whitespace().next().unwrap_or_default();
    Ok(humantime::parse_rfc3339(stamp)?
        .duration_since(spawned)?
        .as_secs_f64())
}

/// Start (the daemon was spawned at `spawned`), reloads, an isolated
/// `allow` and memory of `daemon` on the policy of `count` prefixes per
/// family. Leaves it on that policy.
fn control_plane(
    daemon: &Daemon,
    spawned: std::time::SystemTime,
    count: u32,
) -> anyhow::Result<Vec<ControlCost>> {
    let start = start_seconds(&daemon.log(), spawned)?;
    let reload_seconds = |config: &str| -> anyhow::Result<f64> {
        std::fs::write(&daemon.config, config)?;
        // Not right after another change: the daemon's own background work
        // (writing the idle slot) is not what is measured.
        std::thread::sleep(ISOLATED_PAUSE);
        Ok(time_ms(daemon, &["reload"])? / 1000.0)
    };
    let same = reload_seconds(&config(count))?;
    let new = reload_seconds(&config_from(count, 1))?;
    reload_seconds(&config(count))?;
    let mut allows = Vec::new();
    for sample in 0..3 {
        std::thread::sleep(ISOLATED_PAUSE);
        allows.push(time_ms(daemon, &["allow", &format!("192.0.2.{}", 200 + sample)])? / 1000.0);
    }
    allows.sort_by(f64::total_cmp);
    // Past the catch-up of the idle slot, which the last change schedules.
    std::thread::sleep(ISOLATED_PAUSE);
    let pid = daemon.status()["pid"].as_u64().unwrap_or_default();
    let (rss_mb, peak_rss_mb) = memory_mb(pid)?;
    Ok([
        ("start", start),
        ("reload_unchanged", same),
        ("reload_new", new),
        ("allow", allows[1]),
    ]
    .into_iter()
    .map(|(what, seconds)| ControlCost {
        system: "firewall-ctl",
        what,
        prefixes: count,
        seconds,
        rss_mb: Some(rss_mb),
        peak_rss_mb: Some(peak_rss_mb),
    })
    .collect())
}

/// The median of `repetitions` mean costs of `frame` through `program`.
fn median_cost(
    program: impl std::os::fd::AsFd + Copy,
    frame: &[u8],
    repetitions: usize,
) -> anyhow::Result<u32> {
    let mut samples = (0..repetitions)
        .map(|_| Ok(bpf::test_run(program, frame, TEST_RUNS)?.0))
        .collect::<anyhow::Result<Vec<u32>>>()?;
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// The frame of each measured path.
fn paths() -> [(&'static str, Vec<u8>); 4] {
    [
        ("closed", tcp_v4(STRANGER_V4, 40000)),
        ("far", tcp_v4(STRANGER_V4, 443)),
        // Between the listed 198.18.0.0/32 and 198.18.0.2/32.
        ("near", tcp_v4(listed_v4(0, 1), 443)),
        ("allowed", tcp_v4(listed_v4(1, 0), 443)),
    ]
}

/// Per-packet cost of each path through the daemon's attached program and
/// through the minimal LPM program holding the same prefixes.
fn per_packet_costs(
    daemon: &Daemon,
    count: u32,
    repetitions: usize,
) -> anyhow::Result<Vec<TestRunCost>> {
    let program = bpf::program_of_link(&daemon.bpf_dir.join("links").join(EDGE_IF).join("driver"))?;
    let minimal = reference::minimal_lpm(&sources(count, 0))?;
    paths()
        .into_iter()
        .map(|(path, frame)| {
            Ok(TestRunCost {
                path,
                prefixes: count,
                firewall_ctl: median_cost(&program, &frame, repetitions)?,
                minimal_lpm: median_cost(minimal.fd()?, &frame, repetitions)?,
            })
        })
        .collect()
}

/// A feed body in AWS's format with `v4` IPv4 /32s and `v6` IPv6 /64s, none
/// adjacent (so none merge), in the benchmarking and documentation ranges;
/// `shift` 1 moves every prefix.
fn aws_body(v4: u32, v6: u32, shift: u32) -> Vec<u8> {
    let prefixes: Vec<serde_json::Value> = (0..v4)
        .map(|index| {
            serde_json::json!({"ip_prefix": format!("{}/32", listed_v4(index, shift)), "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1"})
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
