//! Start-up, reload, monitor mode and the CLI's errors.

use std::net::IpAddr;

use firewall_tests::{
    addr::*,
    config,
    daemon::{Daemon, ctl, run_in},
    exit,
    frames::tcp_v4,
    lab::Lab,
    lab_or_skip, root_or_skip,
    traffic::{Connect, connect_tcp, listen_tcp, send_frames, stream_frames},
};

fn https(lab: &Lab, source: impl Into<IpAddr>) -> Connect {
    connect_tcp(&lab.peer, source.into(), at(EDGE_V4, 443))
}

#[test]
fn monitor_mode_passes_everything_but_counts_what_it_would_drop() {
    let lab = lab_or_skip!("monitor_mode_passes_everything_but_counts_what_it_would_drop");
    let _listeners = [
        listen_tcp(&lab.edge, at(EDGE_V4, 443)),
        listen_tcp(&lab.edge, at(EDGE_V4, 80)),
    ];
    let monitor = config("driver").replace(
        "xdp_mode = \"driver\"",
        "xdp_mode = \"driver\"\nenforce = false",
    );
    let daemon = Daemon::start(&lab.edge, &monitor);
    assert_eq!(daemon.status()["mode"], "monitor");
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    assert_eq!(
        connect_tcp(&lab.peer, VENDOR_V4.into(), at(EDGE_V4, 80)),
        Connect::Connected
    );

    let before = daemon.stats();
    send_frames(
        &lab.peer,
        PEER_IF,
        (0..6)
            .map(|_| tcp_v4(STRANGER_V4, 443))
            .chain((0..2).map(|_| tcp_v4(VENDOR_V4, 8080)))
            .collect(),
    );
    let after = daemon.settled_stats();
    assert_eq!(after.0["mode"], "monitor");
    assert_eq!(
        after.drops("not_allowlisted") - before.drops("not_allowlisted"),
        6
    );
    assert_eq!(after.drops("port_closed") - before.drops("port_closed"), 2);
    let human = String::from_utf8(daemon.ctl(&["stats"]).stdout).unwrap();
    assert!(human.contains("WOULD DROP (monitor mode)"), "{human}");
}

#[test]
fn sighup_applies_a_new_config_and_keeps_the_old_one_when_the_new_one_is_broken() {
    let lab = lab_or_skip!(
        "sighup_applies_a_new_config_and_keeps_the_old_one_when_the_new_one_is_broken"
    );
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let first = config("driver");
    let daemon = Daemon::start(&lab.edge, &first);
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);
    let vendor_before = daemon.stats().rule("vendor");

    // A new config that lets the stranger in and drops the office rule.
    let second = format!(
        "{}\n[[rules]]\nname = \"partner\"\nports = [\"tcp/443\"]\nsources = [\"192.0.2.99\"]\n",
        first
            .split("[[rules]]\nname = \"office-ssh\"")
            .next()
            .unwrap()
    );
    let status = daemon.reload(&second);
    assert_eq!(status["reloads"], 1);
    assert_eq!(status["rules"], 2);
    assert!(status["last_reload_error"].is_null());
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);
    let stats = daemon.stats();
    // The vendor rule kept its counts across the reload.
    assert!(stats.rule("vendor").0 > vendor_before.0, "{stats:?}");
    assert!(stats.rule("partner").0 > 0, "{stats:?}");
    assert!(
        stats.0["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|rule| rule["name"] != "office-ssh")
    );

    // A broken config is rejected whole: the running policy stays.
    let broken = second.replace("\"192.0.2.99\"", "\"192.0.2.99/24\"");
    let status = daemon.reload(&broken);
    assert_eq!(status["reloads"], 1);
    assert_eq!(status["reloads_rejected"], 1);
    let error = status["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("line 14")
            && error.contains("host bits set")
            && error.contains("192.0.2.0/24"),
        "{error}"
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);
    assert!(
        daemon
            .log()
            .contains("reload rejected; the running policy is unchanged")
    );
    let human = String::from_utf8(daemon.ctl(&["status"]).stdout).unwrap();
    assert!(
        human.contains("last reload REJECTED, running policy kept"),
        "{human}"
    );

    // Back to the first config: the stranger is out again.
    let status = daemon.reload(&first);
    assert_eq!(status["reloads"], 2);
    assert!(status["last_reload_error"].is_null());
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);
}

/// Two policies whose every mix gives a verdict neither gives alone: a
/// packet that sees the sources of one and the ports of the other is
/// `not_allowlisted`, which neither whole policy ever says about this
/// traffic. Flood while switching back and forth; none may appear.
#[test]
fn reloads_are_atomic_under_traffic() {
    if !root_or_skip("reloads_are_atomic_under_traffic") {
        return;
    }
    // Thousands of distinct prefixes per policy, as a vendor feed brings:
    // writing them takes milliseconds, a window no mix may leak through.
    let policy = |source: &str, port: u16, filler: u16| {
        let sources: Vec<String> = std::iter::once(format!("\"{source}\""))
            .chain((0..3000).map(|host| format!("\"2001:db8:{filler:x}::{host:x}\"")))
            .collect();
        format!(
            "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n[[rules]]\nname = \"alpha\"\nports = [\"tcp/{port}\"]\nsources = [{}]\n",
            sources.join(", ")
        )
    };
    let a = policy("203.0.113.10", 443, 0xa);
    let b = policy("192.0.2.99", 8443, 0xb);
    let lab = Lab::new();
    let daemon = Daemon::start(&lab.edge, &a);
    let before = daemon.stats();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = stream_frames(
        &lab.peer,
        PEER_IF,
        vec![tcp_v4(VENDOR_V4, 443), tcp_v4(STRANGER_V4, 8443)],
        std::time::Duration::ZERO,
        stop.clone(),
    );
    for round in 0..20 {
        let status = daemon.reload(if round % 2 == 0 { &b } else { &a });
        assert_eq!(status["reloads"], round + 1, "{}", daemon.log());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = flood.join().unwrap();
    let after = daemon.settled_stats();
    let sent = 2 * rounds;
    assert!(
        rounds > 1000,
        "only {rounds} rounds sent; the test proves nothing"
    );
    assert_eq!(
        after.drops("not_allowlisted"),
        before.drops("not_allowlisted"),
        "a packet saw a mixed policy"
    );
    let allowed = after.rule("alpha").0 - before.rule("alpha").0;
    let closed = after.drops("port_closed") - before.drops("port_closed");
    assert_eq!(
        allowed + closed,
        sent,
        "every packet got one of the two verdicts"
    );
    assert!(allowed > 0 && closed > 0);
}

#[test]
fn the_daemon_refuses_bad_input_before_touching_the_interface() {
    let lab = lab_or_skip!("the_daemon_refuses_bad_input_before_touching_the_interface");
    let cases = [
        (
            config("driver").replace("203.0.113.64/26", "203.0.113.65/26"),
            "line 13: rule `office-ssh`: `203.0.113.65/26` has host bits set; write the network `203.0.113.64/26`",
        ),
        (
            config("driver").replace("[\"edge0\"]", "[\"fwt-missing0\"]"),
            "interface `fwt-missing0` does not exist on this host",
        ),
        (
            config("driver").replace("tcp/22", "tcp/0"),
            "port 0 is out of range",
        ),
        (
            config("driver").replace("\"198.51.100.0/24\"", "\"0.0.0.0/0\""),
            "add `allow_any_source = true`",
        ),
        (config("driver") + "\nbogus = 1\n", "unknown field `bogus`"),
    ];
    for (text, expected) in cases {
        let (code, log) = Daemon::start_expecting_failure(&lab.edge, &text);
        assert_eq!(code, 1, "{log}");
        assert!(log.contains(expected), "expected {expected:?} in:\n{log}");
        assert!(
            log.contains("firewall.toml"),
            "the error names the file:\n{log}"
        );
    }
    assert!(!lab.edge.xdp_attached(EDGE_IF), "nothing was attached");
}

#[test]
fn auto_mode_uses_driver_mode_on_veth_and_a_second_daemon_is_refused() {
    let lab = lab_or_skip!("auto_mode_uses_driver_mode_on_veth_and_a_second_daemon_is_refused");
    let mut daemon = Daemon::start(&lab.edge, &config("auto"));
    assert_eq!(daemon.status()["interfaces"][0]["xdp_mode"], "driver");
    let second = run_in(
        &lab.edge,
        &[],
        &[
            "daemon",
            "--config",
            daemon.config.to_str().unwrap(),
            "--socket",
            daemon.socket.to_str().unwrap(),
        ],
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr)
            .contains("another firewall-ctl daemon is already listening")
    );
    // The first one is unharmed.
    assert_eq!(daemon.status()["interfaces"][0]["xdp_mode"], "driver");
    // SIGINT (Ctrl-C) stops as cleanly as SIGTERM; the firewall stays.
    let code = daemon.kill(libc::SIGINT);
    let log = daemon.log();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("the firewall stays attached and enforcing"),
        "{log}"
    );
    assert!(lab.edge.xdp_attached(EDGE_IF));
}

#[test]
fn the_daemon_needs_cap_bpf_and_cap_net_admin() {
    if !root_or_skip("the_daemon_needs_cap_bpf_and_cap_net_admin") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("firewall.toml");
    std::fs::write(&path, config("driver")).unwrap();
    let socket = dir.path().join("ctl.sock");
    // Root without capabilities (an emptied bounding set), and a plain user.
    for identity in [
        &["--bounding-set=-all", "--inh-caps=-all"][..],
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
    ] {
        let wrapper = [&["setpriv"][..], identity, &["--"]].concat();
        let output = run_in(
            &lab.edge,
            &wrapper,
            &[
                "daemon",
                "--config",
                path.to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{identity:?}: {stderr}");
        assert!(
            stderr.contains("firewall-ctl daemon needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as root"),
            "{identity:?}: {stderr}"
        );
    }
    assert!(!socket.exists(), "nothing was set up");
}

#[test]
fn cli_without_a_daemon_says_how_to_start_one() {
    let output = ctl(&["--socket", "/nonexistent/firewall-ctl.sock", "stats"]);
    assert_eq!(output.status.code(), Some(exit::UNAVAILABLE));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no firewall-ctl daemon is listening on `/nonexistent/firewall-ctl.sock`"),
        "{stderr}"
    );
    assert!(stderr.contains("firewall-ctl daemon --config"), "{stderr}");
}

#[test]
fn check_validates_a_config_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firewall.toml");
    std::fs::write(&path, config("skb").replace("edge0", "lo")).unwrap();
    let output = ctl(&["check", "--config", path.to_str().unwrap(), "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["rules"][0]["name"], "vendor");
    assert_eq!(
        report["rules"][0]["ports"],
        serde_json::json!(["tcp/443", "udp/4500"])
    );
    assert_eq!(report["prefixes_v4"], 3);
    assert_eq!(report["prefixes_v6"], 1);
    assert_eq!(report["ports"], 3);
    let human = ctl(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains("2 rules, 3 IPv4 prefixes, 1 IPv6 prefixes, 3 ports")
    );

    std::fs::write(
        &path,
        config("skb")
            .replace("edge0", "lo")
            .replace("tcp/22", "tcp/22-21"),
    )
    .unwrap();
    let output = ctl(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("config `{}` is invalid", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "line 12: rule `office-ssh`: `tcp/22-21`: the range is inverted; write `tcp/21-22`"
        ),
        "{stderr}"
    );
}

/// The daemon under a service manager (`Type=notify`): a stand-in listens
/// on NOTIFY_SOCKET, as systemd would.
#[test]
fn systemd_hears_ready_only_once_enforcing_then_watchdog_and_stopping() {
    if !root_or_skip("systemd_hears_ready_only_once_enforcing_then_watchdog_and_stopping") {
        return;
    }
    use std::os::unix::net::UnixDatagram;
    let lab = Lab::new();
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let mut daemon = Daemon::prepare(&lab.edge, &config("driver"));
    let path = daemon.dir().join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    daemon.env = vec![
        (
            "NOTIFY_SOCKET".to_string(),
            path.to_str().unwrap().to_string(),
        ),
        ("WATCHDOG_USEC".to_string(), "400000".to_string()),
    ];
    daemon.spawn();
    let next = || {
        let mut buffer = [0u8; 512];
        let len = manager.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    };
    let ready = next();
    // At the moment READY arrives, the policy is already enforced.
    let attached = lab.edge.xdp_attached(EDGE_IF);
    let log = daemon.log();
    assert_eq!(ready, "READY=1\n");
    assert!(attached, "READY before the program was attached");
    assert!(
        log.contains("firewall-ctl daemon running"),
        "READY before start-up finished:\n{log}"
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);
    assert_eq!(next(), "WATCHDOG=1\n");
    daemon.signal(libc::SIGTERM);
    let stopping = (0..10)
        .map(|_| next())
        .find(|message| message != "WATCHDOG=1\n")
        .unwrap();
    assert_eq!(stopping, "STOPPING=1\n");
}

/// The shipped unit file passes `systemd-analyze verify` (pointed at the
/// binary under test, without the man page it names).
#[test]
fn the_shipped_systemd_unit_verifies() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED the_shipped_systemd_unit_verifies: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/firewall-ctl.service"),
    )
    .unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecReload=/usr/sbin/firewall-ctl reload")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firewall-ctl.service");
    let binary = firewall_tests::daemon::binary();
    let local: String = unit
        .replace("/usr/sbin/firewall-ctl", binary.to_str().unwrap())
        .lines()
        .filter(|line| !line.starts_with("Documentation="))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&path, local).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// A process put into a namespace without a fresh /sys (systemd's
/// `NetworkNamespacePath=`, `nsenter --net`) sees the namespace's
/// interfaces: they are asked of the kernel, not read from sysfs, which
/// still shows those of the namespace it was mounted in.
#[test]
fn the_config_sees_the_interfaces_of_the_daemons_network_namespace() {
    let lab = lab_or_skip!("the_config_sees_the_interfaces_of_the_daemons_network_namespace");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firewall.toml");
    std::fs::write(&path, config("driver")).unwrap();
    let checked = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.edge.name))
        .arg(firewall_tests::daemon::binary())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // And in this namespace, where there is no edge0, it is missing.
    let here = ctl(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(here.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&here.stderr).contains("interface `edge0` does not exist"),
        "{}",
        String::from_utf8_lossy(&here.stderr)
    );
}
