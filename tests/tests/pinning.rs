//! The firewall outlives its daemon: stops, crashes and restarts onto a new
//! policy never let a stranger's packet through nor drop an allowlisted
//! one; only `firewall-ctl detach` removes it.

use std::time::Duration;

use firewall_tests::{
    addr::*,
    config,
    daemon::Daemon,
    exit,
    frames::tcp_v4,
    lab_or_skip,
    traffic::{Connect, connect_tcp, listen_tcp, send_frames, syns_through},
};

/// How often the stream sends one SYN from each source.
const STREAM_INTERVAL: Duration = Duration::from_micros(100);

#[test]
fn restarts_and_crashes_never_open_the_door_nor_drop_the_allowlisted() {
    let lab = lab_or_skip!("restarts_and_crashes_never_open_the_door_nor_drop_the_allowlisted");
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    let pause = || std::thread::sleep(Duration::from_millis(300));
    let syns = syns_through(&lab, STREAM_INTERVAL, || {
        // SIGTERM, a moment without a daemon, then a restart.
        assert_eq!(daemon.kill(libc::SIGTERM), 0, "{}", daemon.log());
        assert!(lab.edge.xdp_attached(EDGE_IF));
        pause();
        daemon.spawn_and_wait();
        pause();

        // kill -9: still attached and enforcing, then adopted again.
        daemon.kill(libc::SIGKILL);
        assert!(
            lab.edge.xdp_attached(EDGE_IF),
            "after kill -9 the program stays"
        );
        pause();
        daemon.spawn_and_wait();
        pause();

        // An upgrade whose maps have another layout, simulated by renaming the
        // pinned maps to an older version's directory: the new daemon fills new
        // maps and swaps its program onto the links, then removes the old maps.
        daemon.kill(libc::SIGKILL);
        let version = firewall_common::maps::LAYOUT_VERSION;
        let older = format!("maps-v{}", version - 1);
        std::fs::rename(
            daemon.bpf_dir.join(format!("maps-v{version}")),
            daemon.bpf_dir.join(&older),
        )
        .unwrap();
        pause();
        daemon.spawn_and_wait();
        assert!(
            !daemon.bpf_dir.join(&older).exists(),
            "the old layout's maps are removed"
        );
        assert!(daemon.log().contains("removed the maps of an older layout"));
        pause();

        // A restart onto a changed policy: the vendor moves to another rule,
        // which also admits the office.
        daemon.kill(libc::SIGTERM);
        std::fs::write(
        &daemon.config,
        config("driver").replace("name = \"vendor\"", "name = \"vendor-renamed\"")
            + "\n[[rules]]\nname = \"more\"\nports = [\"tcp/443\"]\nsources = [\"198.51.100.0/24\"]\n",
    )
    .unwrap();
        daemon.spawn_and_wait();
        assert_eq!(daemon.status()["rules"], 3);
    });
    assert!(syns.rounds > 100, "only {} rounds sent", syns.rounds);
    assert_eq!(syns.stranger_passed, 0, "a stranger's SYN passed");
    assert_eq!(
        syns.vendor_passed, syns.rounds,
        "an allowlisted SYN was dropped"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("adopted the pinned XDP link").count(),
        4,
        "{log}"
    );
    // The upgrade started the counters afresh (new maps); restarts of the
    // same version carried them on.
    let stats = daemon.stats();
    assert!(stats.drops("not_allowlisted") > 0, "{stats:?}");
}

/// A restarted daemon rewrites the idle slot of the maps it adopts whole:
/// what its config no longer lists must be gone from the source and entry
/// tries before that slot goes live, and what it still lists must stay.
#[test]
fn a_restart_onto_a_narrower_config_drops_what_it_no_longer_lists() {
    let lab = lab_or_skip!("a_restart_onto_a_narrower_config_drops_what_it_no_longer_lists");
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    let _https = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let _ssh = listen_tcp(&lab.edge, at(EDGE_V4, 22));
    let reach =
        |source: std::net::Ipv4Addr, port| connect_tcp(&lab.peer, source.into(), at(EDGE_V4, port));
    assert_eq!(reach(VENDOR_V4, 443), Connect::Connected);
    assert_eq!(reach(INNER_V4, 443), Connect::Connected);
    assert_eq!(reach(INNER_V4, 22), Connect::Connected);
    // Both slots hold the policy once the idle one has caught up.
    std::thread::sleep(Duration::from_secs(2));

    for signal in [libc::SIGTERM, libc::SIGKILL] {
        daemon.kill(signal);
        // The vendor keeps only its IPv6 range; the office's /26 inside the
        // vendor's old /24 stays, now under no other rule.
        std::fs::write(
            &daemon.config,
            config("driver").replace(
                "sources = [\"203.0.113.0/24\", \"2001:db8:1::/48\"]",
                "sources = [\"2001:db8:1::/48\"]",
            ),
        )
        .unwrap();
        daemon.spawn_and_wait();
        assert_eq!(reach(VENDOR_V4, 443), Connect::TimedOut, "{signal}");
        assert_eq!(reach(INNER_V4, 443), Connect::TimedOut, "{signal}");
        assert_eq!(reach(INNER_V4, 22), Connect::Connected, "{signal}");
        assert_eq!(reach(OFFICE_V4, 22), Connect::Connected, "{signal}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn detach_removes_the_firewall_with_or_without_a_running_daemon() {
    let lab = lab_or_skip!("detach_removes_the_firewall_with_or_without_a_running_daemon");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let https = || connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443));

    // Running: detach stops the daemon first.
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    let pid = daemon.status()["pid"].as_u64().unwrap();
    let report = daemon.detach(&["--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["stopped_daemon_pid"], pid);
    assert_eq!(report["detached"], serde_json::json!(["edge0"]));
    assert_eq!(report["removed_maps"], true);
    assert!(!lab.edge.xdp_attached(EDGE_IF));
    assert!(!daemon.bpf_dir.exists(), "everything is unpinned");
    assert_eq!(https(), Connect::Connected);

    // Crashed: the firewall stays until detach, which finds no daemon.
    daemon.spawn_and_wait();
    daemon.kill(libc::SIGKILL);
    assert_eq!(https(), Connect::TimedOut);
    let text = daemon.detach(&["--interface", "edge0"]);
    assert_eq!(
        text,
        "detached the XDP program from edge0: its traffic is no longer filtered\n"
    );
    assert_eq!(https(), Connect::Connected);
    assert!(daemon.bpf_dir.exists(), "--interface leaves the maps");

    // Nothing left to detach, or a wrong interface, says so.
    let bpf_dir = daemon.bpf_dir.to_str().unwrap().to_string();
    let wrong = daemon.ctl_err(
        &["detach", "--bpf-dir", &bpf_dir, "--interface", "eth9"],
        exit::FAILED,
    );
    assert!(wrong.contains("is not attached to `eth9`"), "{wrong}");
    daemon.detach(&[]);
    let none = daemon.ctl_err(&["detach", "--bpf-dir", &bpf_dir], exit::FAILED);
    assert!(none.contains("no firewall is pinned in"), "{none}");
}

#[test]
fn counters_carry_on_across_restarts_changes_and_reloads() {
    let lab = lab_or_skip!("counters_carry_on_across_restarts_changes_and_reloads");
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    let send = |count: usize| {
        send_frames(
            &lab.peer,
            PEER_IF,
            (0..count)
                .flat_map(|_| [tcp_v4(VENDOR_V4, 443), tcp_v4(STRANGER_V4, 443)])
                .collect(),
        )
    };
    send(50);
    let counted = |daemon: &Daemon| {
        let stats = daemon.settled_stats();
        (stats.rule("vendor").0, stats.drops("not_allowlisted"))
    };
    let (vendor, strangers) = counted(&daemon);
    assert!(vendor >= 50 && strangers >= 50);

    daemon.kill(libc::SIGTERM);
    daemon.spawn_and_wait();
    assert_eq!(counted(&daemon), (vendor, strangers), "after a restart");
    daemon.kill(libc::SIGKILL);
    daemon.spawn_and_wait();
    assert_eq!(counted(&daemon), (vendor, strangers), "after kill -9");

    // Changes switch slots; the counts stay and grow exactly.
    daemon.ctl_ok(&["allow", "192.0.2.77", "--rule", "vendor"]);
    daemon.ctl_ok(&["remove", "192.0.2.77"]);
    send(10);
    assert_eq!(counted(&daemon), (vendor + 10, strangers + 10));

    // A reload that reorders the rules folds the slots' counts by name.
    let swapped = config("driver")
        .replacen(
            "[[rules]]\nname = \"vendor\"",
            "[[rules]]\nname = \"placeholder\"",
            1,
        )
        .replace("name = \"office-ssh\"", "name = \"vendor-first\"");
    let reordered = format!(
        "{}\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nsources = [\"203.0.113.0/24\"]\n",
        swapped
    );
    assert_eq!(daemon.reload(&reordered)["reloads"], 1, "{}", daemon.log());
    daemon.kill(libc::SIGKILL);
    daemon.spawn_and_wait();
    assert_eq!(counted(&daemon).0, vendor + 10, "{}", daemon.log());
}
