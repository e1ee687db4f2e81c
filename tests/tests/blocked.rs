//! The blocked-traffic view: drop samples stay within the in-kernel rate
//! limit under a flood, the flooding source comes first and a rarer one is
//! still seen, and `blocked --follow` streams a new source promptly.

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use firewall_tests::{
    addr::*,
    daemon::{Daemon, binary, poll},
    frames::*,
    lab_or_skip,
    traffic::send_frames,
};

const SAMPLE_RATE: u64 = 20;

fn config() -> String {
    format!(
        r#"
interfaces = ["edge0"]
xdp_mode = "driver"

[blocked]
sample_rate = {SAMPLE_RATE}

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/24"]
"#
    )
}

const RARE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

#[test]
fn a_flood_is_sampled_within_the_rate_limit_and_rarer_sources_still_show() {
    let lab = lab_or_skip!("a_flood_is_sampled_within_the_rate_limit_and_rarer_sources_still_show");
    let started = Instant::now();
    let daemon = Daemon::start(&lab.edge, &config());
    const FLOOD: usize = 30_000;
    let mut frames: Vec<Vec<u8>> = (0..FLOOD).map(|_| tcp_v4(STRANGER_V4, 443)).collect();
    // Three packets of a rarer source to a closed port, inside the flood.
    for at in [FLOOD / 4, FLOOD / 2, 3 * FLOOD / 4] {
        frames.insert(at, tcp_v4(RARE, 8080));
    }
    send_frames(&lab.peer, PEER_IF, frames);
    let stats = daemon.settled_stats();
    assert_eq!(stats.drops("not_allowlisted"), FLOOD as u64);
    assert_eq!(stats.drops("port_closed"), 3);

    let report = poll(Duration::from_secs(3), Duration::from_millis(50), || {
        let report = daemon.json(&["blocked"]);
        let rare_seen = report["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["source"] == RARE.to_string());
        rare_seen.then_some(report)
    })
    .unwrap_or_else(|| panic!("{}\n{}", daemon.json(&["blocked"]), daemon.log()));
    // Per CPU and second: `sample_rate` tokens, as many again for novel
    // sources; the flood ran within the seconds since the daemon started.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let seconds = started.elapsed().as_secs() + 1;
    let samples = report["samples"].as_u64().unwrap();
    assert!(
        samples <= 2 * SAMPLE_RATE * cpus * seconds,
        "{samples} samples in {seconds} s on {cpus} CPUs"
    );
    assert!(samples >= SAMPLE_RATE, "{report}");
    let top = &report["top"][0];
    assert_eq!(top["source"], STRANGER_V4.to_string());
    assert_eq!(top["port"], 443);
    assert_eq!(top["protocol"], "tcp");
    assert_eq!(top["reason"], "not_allowlisted");
    assert_eq!(top["interface"], EDGE_IF);
    let rare = report["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["source"] == RARE.to_string())
        .unwrap();
    assert_eq!(rare["port"], 8080);
    assert_eq!(rare["reason"], "port_closed");
    assert!(rare["samples"].as_u64().unwrap() <= 3);
    assert_eq!(report["sample_rate"], SAMPLE_RATE);

    let table = String::from_utf8(daemon.ctl(&["blocked", "--top", "1"]).stdout).unwrap();
    assert!(table.contains(&STRANGER_V4.to_string()), "{table}");
    assert!(table.contains("not_allowlisted"), "{table}");
}

#[test]
fn blocked_follow_prints_a_new_blocked_source_within_a_second() {
    let lab = lab_or_skip!("blocked_follow_prints_a_new_blocked_source_within_a_second");
    let daemon = Daemon::start(&lab.edge, &config());
    let mut follower = Command::new(binary())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["blocked", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // The follower is connected once it streams: wait for a first sample.
    let ready = poll(Duration::from_secs(5), Duration::from_millis(200), || {
        send_frames(&lab.peer, PEER_IF, vec![tcp_v4(STRANGER_V4, 9000)]);
        received.recv_timeout(Duration::from_millis(100)).ok()
    });
    assert!(ready.is_some(), "blocked --follow printed nothing");
    while received.try_recv().is_ok() {}

    let newcomer = Ipv4Addr::new(198, 51, 100, 123);
    send_frames(&lab.peer, PEER_IF, vec![tcp_v4(newcomer, 8443)]);
    let deadline = Instant::now() + Duration::from_secs(1);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .expect("no line for the new source within a second");
        if line.contains(&newcomer.to_string()) {
            break line;
        }
    };
    let source: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(source["port"], 8443);
    assert_eq!(source["reason"], "port_closed");
    let _ = follower.kill();
    let _ = follower.wait();
}
