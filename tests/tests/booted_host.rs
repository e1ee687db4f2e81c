//! The booted-host test's probe. `cargo xtask vm-test --boot` boots a
//! Debian 12 root file system with systemd as PID 1, this binary in
//! `/opt/fwtest` and two builds of the `.deb` (a version and a higher one)
//! beside it, and runs these tests there from units of their own:
//!
//! - `booted_host_lab`, before `firewall-ctl.service` at every boot: the
//!   lab's namespaces and veth (the edge namespace is where a drop-in runs
//!   the daemon, `NetworkNamespacePath=`);
//! - `booted_host`, after `network.target`: the checks of the first boot
//!   (install, enable, restart, upgrade, reload, kill -9, detach, manual,
//!   journal), a reboot, then those of the second boot (started before
//!   the network, enforcing from the first packet, remove, purge).
//!
//! Each check prints `booted-host: ok - ...` or `booted-host: FAILED -
//! ...` on the serial console, which the host reads. Ignored elsewhere: they
//! change the system they run on.

use std::{
    mem::ManuallyDrop,
    process::Command,
    time::{Duration, Instant},
};

use firewall_tests::{
    addr::*,
    daemon::poll,
    lab::{Lab, Netns},
    traffic::{Connect, StreamedSyns, connect_tcp, listen_tcp, syns_through},
};

/// Where the packages, this binary and the stage file are in the guest.
const DIR: &str = "/opt/fwtest";
const STAGE_FILE: &str = "/var/lib/fwtest-stage";
const CONFIG: &str = "/etc/firewall-ctl/firewall.toml";
const METRICS: &str = "127.0.0.1:9469";

/// The lab with the names the drop-in and the units use; never deleted
/// here (the daemon runs in its edge namespace until the VM stops).
fn lab() -> ManuallyDrop<Lab> {
    ManuallyDrop::new(Lab {
        edge: Netns {
            name: "fwboot-edge".to_string(),
        },
        peer: Netns {
            name: "fwboot-peer".to_string(),
        },
    })
}

/// Made before `firewall-ctl.service` at every boot.
#[test]
#[ignore = "runs in the booted-host VM (cargo xtask vm-test --boot)"]
fn booted_host_lab() {
    let lab = lab();
    for ns in [&lab.edge, &lab.peer] {
        let created = Command::new("ip")
            .args(["netns", "add", &ns.name])
            .status()
            .unwrap();
        assert!(created.success(), "ip netns add {}", ns.name);
        ns.sysctl("net.ipv6.conf.all.accept_ra", "0");
        ns.ip("link set lo up");
    }
    lab.wire();
    println!("booted-host: the lab is wired");
}

/// The config the checks run with: the vendor may reach 443, and metrics
/// are served (which needs IP sockets under the shipped unit).
fn config(extra_rule: bool) -> String {
    let mut config = format!(
        "interfaces = [\"{EDGE_IF}\"]\nxdp_mode = \"driver\"\nenforce = true\n[metrics]\nlisten = \"{METRICS}\"\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nsources = [\"203.0.113.0/24\"]\n"
    );
    if extra_rule {
        config.push_str("[[rules]]\nname = \"office\"\nports = [\"tcp/443\"]\nsources = [\"198.51.100.0/24\"]\n");
    }
    config
}

/// What the checks found.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            println!("booted-host: ok - {name}");
        } else {
            println!("booted-host: FAILED - {name}: {detail}");
            self.failed.push(name.to_string());
        }
    }

    fn figure(&self, name: &str, value: impl std::fmt::Display) {
        println!("booted-host: figure - {name}: {value}");
    }
}

/// Runs a command, returning its exit status and its output (both streams).
fn sh(command: &str) -> (bool, String) {
    let output = Command::new("sh")
        .args(["-c", command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn systemctl(what: &str) -> String {
    sh(&format!("systemctl {what}")).1.trim().to_string()
}

fn main_pid() -> String {
    systemctl("show --property=MainPID --value firewall-ctl.service")
}

/// The packages in [`DIR`], oldest version first.
fn packages() -> Vec<String> {
    let mut debs: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path().display().to_string())
        .filter(|path| path.ends_with(".deb"))
        .collect();
    debs.sort_by(|one, other| {
        let newer = Command::new("dpkg")
            .args([
                "--compare-versions",
                &version_of(one),
                "gt",
                &version_of(other),
            ])
            .status()
            .unwrap()
            .success();
        if newer {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Less
        }
    });
    debs
}

fn version_of(deb: &str) -> String {
    sh(&format!("dpkg-deb --field {deb} Version"))
        .1
        .trim()
        .to_string()
}

/// A service restart that lost or passed nothing.
fn no_gap(checks: &mut Checks, name: &str, syns: StreamedSyns) {
    let StreamedSyns {
        rounds,
        stranger_passed: stranger,
        vendor_passed: vendor,
    } = syns;
    checks.figure(
        &format!("{name}: rounds sent, stranger SYNs passed, vendor SYNs passed"),
        format!("{rounds}, {stranger}, {vendor}"),
    );
    checks.check(
        &format!("{name}: no stranger SYN passed, no vendor SYN lost"),
        rounds > 50 && stranger == 0 && vendor == rounds,
        format!("{rounds} rounds, {stranger} stranger and {vendor} vendor SYNs passed"),
    );
}

/// The stranger is shut out and the vendor let in, right now.
fn enforcing(checks: &mut Checks, lab: &Lab, name: &str) {
    let stranger = connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443));
    let vendor = connect_tcp(&lab.peer, VENDOR_V4.into(), at(EDGE_V4, 443));
    checks.check(
        name,
        stranger == Connect::TimedOut && vendor == Connect::Connected,
        format!("stranger {stranger:?}, vendor {vendor:?}"),
    );
}

#[test]
#[ignore = "runs in the booted-host VM (cargo xtask vm-test --boot)"]
fn booted_host() {
    let lab = lab();
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let mut checks = Checks::default();
    let stage = std::fs::read_to_string(STAGE_FILE).unwrap_or_default();
    // A check that panics is a failed check; the stage still ends, and
    // says so.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if stage.trim() == "rebooted" {
            second_boot(&mut checks, &lab);
        } else {
            first_boot(&mut checks, &lab);
        }
    }));
    if let Err(panic) = ran {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
            .unwrap_or_default();
        checks.check("the probe ran to its end", false, why);
    }
    if !checks.failed.is_empty() {
        println!(
            "booted-host: the daemon's journal:\n{}",
            sh("journalctl -u firewall-ctl --no-pager | tail -40").1
        );
    }
    println!("booted-host: stage end, {} failed", checks.failed.len());
    assert!(checks.failed.is_empty(), "failed: {:?}", checks.failed);
    if stage.trim() != "rebooted" {
        std::fs::write(STAGE_FILE, "rebooted\n").unwrap();
        println!("booted-host: rebooting");
        sh("systemctl reboot");
    }
}

fn first_boot(checks: &mut Checks, lab: &Lab) {
    let debs = packages();
    assert_eq!(debs.len(), 2, "two packages in {DIR}: {debs:?}");

    let (installed, said) = sh(&format!("dpkg -i {}", debs[0]));
    checks.check("dpkg -i installs the package", installed, &said);
    checks.check(
        "the install starts nothing and says what to do",
        systemctl("is-active firewall-ctl") == "inactive"
            && said.contains("installed, not started"),
        &said,
    );
    // Harmless as shipped: valid where the host has eth0, and otherwise
    // `check` says which line to edit.
    let (checked, said) = sh(&format!("firewall-ctl check --config {CONFIG}"));
    checks.check(
        "check explains the shipped config",
        checked || said.contains("interface `eth0` does not exist"),
        &said,
    );

    std::fs::write(CONFIG, config(false)).unwrap();
    let asked = Instant::now();
    let (enabled, said) = sh("systemctl enable --now firewall-ctl");
    checks.figure(
        "systemctl enable --now firewall-ctl, to active (s)",
        format!("{:.2}", asked.elapsed().as_secs_f64()),
    );
    checks.check(
        "systemctl enable --now reaches active",
        enabled && systemctl("is-active firewall-ctl") == "active",
        &said,
    );
    checks.check(
        "at active the program is attached (Type=notify)",
        lab.edge.xdp_attached(EDGE_IF),
        "no XDP program on the edge interface",
    );
    enforcing(
        checks,
        lab,
        "a stranger's SYN is dropped, the vendor's passes",
    );
    let scraped = std::panic::catch_unwind(|| {
        firewall_tests::http::get(&lab.edge, METRICS.parse().unwrap(), "/metrics")
    })
    .unwrap_or_default();
    checks.check(
        "metrics are served under the shipped unit (IP sockets allowed)",
        scraped.starts_with("HTTP/1.1 200"),
        scraped.lines().next().unwrap_or_default(),
    );

    let before = main_pid();
    let counts = syns_through(lab, Duration::from_micros(500), || {
        sh("systemctl restart firewall-ctl");
    });
    no_gap(checks, "systemctl restart", counts);
    checks.check(
        "systemctl restart started a new daemon",
        main_pid() != before && systemctl("is-active firewall-ctl") == "active",
        main_pid(),
    );

    let before = main_pid();
    let counts = syns_through(lab, Duration::from_micros(500), || {
        let (upgraded, said) = sh(&format!("dpkg -i {}", debs[1]));
        println!("{said}");
        assert!(upgraded, "dpkg -i of the newer package failed");
    });
    no_gap(checks, "upgrade (dpkg -i of a higher version)", counts);
    checks.check(
        "the upgrade restarted the daemon on the new package",
        main_pid() != before
            && sh("dpkg-query -W -f='${Version}' firewall-ctl").1 == version_of(&debs[1]),
        sh("dpkg-query -W -f='${Version}' firewall-ctl").1,
    );

    std::fs::write(CONFIG, config(true)).unwrap();
    let (reloaded, said) = sh("systemctl reload firewall-ctl");
    let office = connect_tcp(&lab.peer, OFFICE_V4.into(), at(EDGE_V4, 443));
    checks.check(
        "systemctl reload applies a config change",
        reloaded && office == Connect::Connected,
        format!("{said} office {office:?}"),
    );

    let killed = main_pid();
    let counts = syns_through(lab, Duration::from_micros(500), || {
        sh(&format!("kill -9 {killed}"));
        let back = poll(Duration::from_secs(30), Duration::from_millis(100), || {
            let pid = main_pid();
            (pid != killed && pid != "0" && systemctl("is-active firewall-ctl") == "active")
                .then_some(pid)
        });
        assert!(
            back.is_some(),
            "systemd did not restart the daemon after kill -9"
        );
    });
    no_gap(checks, "kill -9 and systemd's restart", counts);

    let (detached, said) = sh("firewall-ctl detach");
    std::thread::sleep(Duration::from_secs(3));
    checks.check(
        "firewall-ctl detach under systemd leaves the firewall removed",
        detached
            && !lab.edge.xdp_attached(EDGE_IF)
            && systemctl("is-active firewall-ctl") == "inactive"
            && said.contains("systemctl stop firewall-ctl.service"),
        &said,
    );
    let (started, said) = sh("systemctl start firewall-ctl");
    checks.check("systemctl start brings it back", started, &said);

    let (shown, page) = sh("man -P cat firewall-ctl");
    checks.check(
        "man firewall-ctl",
        shown && page.contains("EXIT STATUS") && page.contains("FILES"),
        page.lines().take(5).collect::<Vec<_>>().join(" / "),
    );
    let (shown, page) = sh("man -P cat 5 firewall-ctl.toml");
    checks.check(
        "man 5 firewall-ctl.toml",
        shown && page.contains("interfaces"),
        page.lines().take(5).collect::<Vec<_>>().join(" / "),
    );
    for path in [
        "/usr/share/bash-completion/completions/firewall-ctl",
        "/usr/share/zsh/vendor-completions/_firewall-ctl",
        "/usr/share/fish/vendor_completions.d/firewall-ctl.fish",
    ] {
        checks.check(
            &format!("completions at {path}"),
            std::fs::metadata(path).is_ok_and(|file| file.len() > 100),
            "missing",
        );
    }
    let (_, journal) = sh("journalctl -u firewall-ctl -o json --no-pager");
    let attached = journal.lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        (entry["MESSAGE"] == "attached XDP program").then_some(entry)
    });
    checks.check(
        "the journal has the daemon's entries with their fields",
        attached.as_ref().is_some_and(|entry| {
            entry["INTERFACE"] == EDGE_IF && entry["SYSLOG_IDENTIFIER"] == "firewall-ctl"
        }),
        attached.map_or_else(
            || journal.lines().take(3).collect::<Vec<_>>().join(" / "),
            |entry| entry.to_string(),
        ),
    );
}

fn second_boot(checks: &mut Checks, lab: &Lab) {
    let active = |unit: &str| -> u64 {
        systemctl(&format!(
            "show --property=ActiveEnterTimestampMonotonic --value {unit}"
        ))
        .parse()
        .unwrap_or(0)
    };
    let (firewall, network) = (active("firewall-ctl.service"), active("network.target"));
    checks.figure(
        "boot to firewall-ctl active (s)",
        format!("{:.2}", firewall as f64 / 1e6),
    );
    checks.check(
        "after a reboot the unit is active before network.target",
        firewall > 0 && network > 0 && firewall < network,
        format!("firewall-ctl at {firewall} us, network.target at {network} us"),
    );
    enforcing(
        checks,
        lab,
        "after the reboot the first stranger SYN is dropped",
    );

    let (removed, said) = sh("apt-get remove -y firewall-ctl");
    let stranger = connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443));
    checks.check(
        "apt remove detaches the firewall, and says so",
        removed
            && !lab.edge.xdp_attached(EDGE_IF)
            && stranger == Connect::Connected
            && said.contains("the firewall is removed"),
        format!("{said} stranger {stranger:?}"),
    );
    let (purged, said) = sh("apt-get purge -y firewall-ctl");
    checks.check(
        "apt purge removes state, config and the enablement link",
        purged
            && !std::path::Path::new("/var/lib/firewall-ctl").exists()
            && !std::path::Path::new("/etc/firewall-ctl").exists()
            && std::fs::symlink_metadata(
                "/etc/systemd/system/multi-user.target.wants/firewall-ctl.service",
            )
            .is_err(),
        &said,
    );
}
