//! `cargo xtask demo`: the real daemon, with `examples/firewall.toml`, on
//! an edge host in a throwaway lab of network namespaces joined by a
//! bridge; a vendor, an office and a stranger host try to connect.
//! The lab is removed at the end, on failure, and on Ctrl-C.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use firewall_tests::{
    addr::{EDGE_V4, EDGE_V6, OFFICE_V4, STRANGER_V4, STRANGER_V6, VENDOR_V4, VENDOR_V6, at},
    daemon::Daemon,
    lab::{Netns, veth},
    traffic::{Connect, connect_tcp, listen_tcp},
};

use crate::{
    cargo::{build_firewall_ctl, is_root, workspace_root},
    setup,
};

/// The BPF file system the demo's daemon pins in, for the Ctrl-C handler.
static DEMO_BPFFS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Every namespace of the demo starts with this.
const PREFIX: &str = "fwdemo-";
const HOSTS: [&str; 4] = ["edge", "vendor", "office", "stranger"];

/// One connection attempt and what `examples/firewall.toml` should make of it.
struct Attempt {
    host: usize,
    source: IpAddr,
    target: SocketAddr,
    expect: Connect,
    why: &'static str,
}

fn attempts() -> Vec<Attempt> {
    let vendor: IpAddr = VENDOR_V4.into();
    let vendor6: IpAddr = VENDOR_V6.into();
    let office: IpAddr = OFFICE_V4.into();
    let stranger: IpAddr = STRANGER_V4.into();
    let stranger6: IpAddr = STRANGER_V6.into();
    let v4 = |port| at(EDGE_V4, port);
    let v6 = |port| at(EDGE_V6, port);
    use Connect::{Connected, TimedOut};
    vec![
        Attempt {
            host: 1,
            source: vendor,
            target: v4(443),
            expect: Connected,
            why: "rule jira-align",
        },
        Attempt {
            host: 1,
            source: vendor6,
            target: v6(443),
            expect: Connected,
            why: "rule jira-align (IPv6)",
        },
        Attempt {
            host: 1,
            source: vendor,
            target: v4(22),
            expect: TimedOut,
            why: "dropped: not_allowlisted",
        },
        Attempt {
            host: 2,
            source: office,
            target: v4(443),
            expect: Connected,
            why: "rule office-https",
        },
        Attempt {
            host: 2,
            source: office,
            target: v4(22),
            expect: Connected,
            why: "rule office-ssh",
        },
        Attempt {
            host: 2,
            source: office,
            target: v4(8080),
            expect: TimedOut,
            why: "dropped: port_closed",
        },
        Attempt {
            host: 3,
            source: stranger,
            target: v4(443),
            expect: TimedOut,
            why: "dropped: not_allowlisted",
        },
        Attempt {
            host: 3,
            source: stranger6,
            target: v6(443),
            expect: TimedOut,
            why: "dropped: not_allowlisted",
        },
        Attempt {
            host: 3,
            source: stranger,
            target: v4(22),
            expect: TimedOut,
            why: "dropped: not_allowlisted",
        },
    ]
}

/// Tries each connection, prints a table row for it, and returns how many
/// did not behave as expected.
fn try_connections(hosts: &[Netns], attempts: &[Attempt]) -> usize {
    let mut surprises = 0;
    println!(
        "\n{:<9} {:<16} {:<20} {:<10} WHY",
        "HOST", "SOURCE", "TARGET", "RESULT"
    );
    for attempt in attempts {
        let result = connect_tcp(&hosts[attempt.host], attempt.source, attempt.target);
        let shown = match result {
            Connect::Connected => "connected",
            Connect::TimedOut => "DROPPED",
            Connect::Refused => "refused",
        };
        let note = if result == attempt.expect {
            attempt.why.to_string()
        } else {
            surprises += 1;
            format!(
                "UNEXPECTED, expected {:?} ({})",
                attempt.expect, attempt.why
            )
        };
        println!(
            "{:<9} {:<16} {:<20} {:<10} {note}",
            HOSTS[attempt.host],
            attempt.source.to_string(),
            attempt.target.to_string(),
            shown
        );
    }
    surprises
}

/// Runs a CLI command against the demo daemon and prints it with its output.
fn show(daemon: &Daemon, title: &str, args: &[&str]) {
    let output = daemon.ctl(args);
    print!(
        "\n$ {title}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn remove_lab() {
    for host in HOSTS.iter().chain(&["switch"]) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &format!("{PREFIX}{host}")])
            .output();
    }
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (`sudo cargo xtask demo`)"
        );
    }
    setup::run().and_then(build_firewall_ctl)?;
    remove_lab(); // from an earlier run that was killed
    // Ctrl-C also reaches the daemon (same process group), which stops;
    // unmounting its BPF file system removes the firewall it pinned there.
    ctrlc::set_handler(|| {
        if let Some(bpffs) = DEMO_BPFFS.get() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(bpffs)
                .output();
        }
        remove_lab();
        eprintln!("\ninterrupted: lab removed");
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    println!("\nbuilding the lab: edge, vendor, office and stranger hosts on one bridge");
    let switch = Netns::create(format!("{PREFIX}switch"));
    switch.ip("link add br0 type bridge");
    switch.ip("link set br0 up");
    let hosts: Vec<Netns> = HOSTS
        .iter()
        .map(|host| Netns::create(format!("{PREFIX}{host}")))
        .collect();
    for (host, ns) in HOSTS.iter().zip(&hosts) {
        veth(ns, "eth0", &switch, host);
        switch.ip(&format!("link set {host} master br0 up"));
        ns.ip("link set lo up");
        ns.ip("link set eth0 up");
    }
    let [edge, vendor, office, stranger] = [&hosts[0], &hosts[1], &hosts[2], &hosts[3]];
    edge.ip(&format!("addr add {EDGE_V4}/24 dev eth0"));
    edge.ip(&format!("addr add {EDGE_V6}/64 dev eth0 nodad"));
    for route in ["203.0.113.0/24", "198.51.100.0/24", "2001:db8:1::/48"] {
        edge.ip(&format!("route add {route} dev eth0"));
    }
    vendor.ip(&format!("addr add {VENDOR_V4}/24 dev eth0"));
    vendor.ip(&format!("addr add {VENDOR_V6}/64 dev eth0 nodad"));
    vendor.ip("route add 192.0.2.0/24 dev eth0");
    vendor.ip("route add 2001:db8::/64 dev eth0");
    office.ip(&format!("addr add {OFFICE_V4}/24 dev eth0"));
    office.ip("route add 192.0.2.0/24 dev eth0");
    stranger.ip(&format!("addr add {STRANGER_V4}/24 dev eth0"));
    stranger.ip(&format!("addr add {STRANGER_V6}/64 dev eth0 nodad"));
    let _listeners: Vec<_> = [443, 22, 8080]
        .into_iter()
        .map(|port| listen_tcp(edge, at(EDGE_V4, port)))
        .chain([listen_tcp(edge, at(EDGE_V6, 443))])
        .collect();

    let config_path = workspace_root().join("examples/firewall.toml");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    // The example starts in monitor mode, as an operator should; the demo
    // shows what it enforces.
    let monitor = "\nenforce = false\n";
    anyhow::ensure!(
        config.contains(monitor),
        "{} no longer says `enforce = false`; the demo turns it on",
        config_path.display()
    );
    let config = config.replacen(monitor, "\nenforce = true\n", 1);
    println!(
        "starting `firewall-ctl daemon --config examples/firewall.toml` (with `enforce = true`) on the edge host"
    );
    let daemon = Daemon::start(edge, &config);
    if let Some(bpffs) = daemon.bpf_dir.parent() {
        let _ = DEMO_BPFFS.set(bpffs.to_path_buf());
    }
    println!("the edge host listens on TCP 443 (IPv4 and IPv6), 22 and 8080\n");

    let mut surprises = try_connections(&hosts, &attempts());
    for (title, args) in [
        ("firewall-ctl status", &["status"][..]),
        ("firewall-ctl stats", &["stats"]),
    ] {
        show(&daemon, title, args);
    }

    println!("\nlive edits: a contractor at {STRANGER_V4} needs HTTPS access for ten minutes");
    show(
        &daemon,
        "firewall-ctl allow 192.0.2.99 --rule office-https --comment 'contractor, OPS-7' --expires 10m",
        &[
            "allow",
            "192.0.2.99",
            "--rule",
            "office-https",
            "--comment",
            "contractor, OPS-7",
            "--expires",
            "10m",
        ],
    );
    let stranger_https = |expect, why| Attempt {
        host: 3,
        source: STRANGER_V4.into(),
        target: at(EDGE_V4, 443),
        expect,
        why,
    };
    surprises += try_connections(
        &hosts,
        &[stranger_https(
            Connect::Connected,
            "runtime entry in office-https",
        )],
    );
    show(
        &daemon,
        "firewall-ctl list --rule office-https",
        &["list", "--rule", "office-https"],
    );
    show(
        &daemon,
        "firewall-ctl explain 192.0.2.99 443",
        &["explain", "192.0.2.99", "443"],
    );
    show(
        &daemon,
        "firewall-ctl explain 192.0.2.99 22",
        &["explain", "192.0.2.99", "22"],
    );
    show(
        &daemon,
        "firewall-ctl remove 192.0.2.99",
        &["remove", "192.0.2.99"],
    );
    surprises += try_connections(
        &hosts,
        &[stranger_https(
            Connect::TimedOut,
            "dropped again: not_allowlisted",
        )],
    );
    show(&daemon, "firewall-ctl audit log", &["audit", "log"]);
    let mut daemon = daemon;
    let code = daemon.kill(libc::SIGTERM);
    println!("\nthe daemon stopped (exit code {code}); the firewall stays attached and enforcing:");
    surprises += try_connections(
        &hosts,
        &[stranger_https(
            Connect::TimedOut,
            "still dropped: not_allowlisted",
        )],
    );
    print!("\n$ firewall-ctl detach\n{}", daemon.detach(&[]));
    surprises += try_connections(
        &hosts,
        &[stranger_https(Connect::Connected, "no firewall any more")],
    );
    println!("\nremoving the lab");
    drop(hosts);
    drop(switch);
    if surprises > 0 {
        bail!("{surprises} connection(s) did not behave as examples/firewall.toml says");
    }
    println!("demo finished: every connection behaved as the config says");
    Ok(())
}
