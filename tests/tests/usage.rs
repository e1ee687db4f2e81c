//! Per-entry counters and the audit report: exact counts of crafted
//! packets, credited to the most specific entry of the admitting rule;
//! kept across a reload, an unrelated `allow`, a feed update and a restart.

use std::{net::Ipv4Addr, time::Duration};

use firewall_tests::{
    addr::*,
    daemon::{Daemon, poll},
    exit,
    frames::*,
    lab::Lab,
    lab_or_skip,
    traffic::send_frames,
};
use serde_json::Value;

/// SYN frames are 54 bytes (IPv4) and 74 bytes (IPv6).
const V4_SYN: u64 = 54;
const V6_SYN: u64 = 74;

fn config(feed: &std::path::Path) -> String {
    format!(
        r#"
interfaces = ["edge0"]
xdp_mode = "driver"

[metrics]
listen = "127.0.0.1:9469"
per_entry = true

[[feeds]]
name = "partner"
url = "file://{}"
format = "plain"
refresh = "1m"

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/24", "2001:db8:1::/48"]
feeds = ["partner"]

[[rules]]
name = "office-ssh"
ports = ["tcp/22"]
sources = ["203.0.113.64/26", "198.51.100.0/24"]
"#,
        feed.display()
    )
}

/// `(packets, bytes, last_seen)` of each entry, by "rule prefix".
fn entries(daemon: &Daemon) -> Vec<(String, u64, u64, Value)> {
    daemon.json(&["stats", "--entries"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                format!(
                    "{} {}",
                    entry["rule"].as_str().unwrap(),
                    entry["prefix"].as_str().unwrap()
                ),
                entry["packets"].as_u64().unwrap(),
                entry["bytes"].as_u64().unwrap(),
                entry["last_seen"].clone(),
            )
        })
        .collect()
}

fn counts(daemon: &Daemon) -> Vec<(String, u64, u64)> {
    entries(daemon)
        .into_iter()
        .map(|(entry, packets, bytes, _)| (entry, packets, bytes))
        .collect()
}

fn syns(source: Ipv4Addr, port: u16, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|_| tcp_v4(source, port)).collect()
}

/// Sends `frames` and waits until the entries' packet total grew by
/// `admitted`.
fn send(lab: &Lab, daemon: &Daemon, frames: Vec<Vec<u8>>, admitted: u64) {
    let total = |daemon: &Daemon| -> u64 { counts(daemon).iter().map(|row| row.1).sum() };
    let before = total(daemon);
    let count = admitted;
    send_frames(&lab.peer, PEER_IF, frames);
    let arrived = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (total(daemon) >= before + count).then_some(())
    });
    assert!(
        arrived.is_some(),
        "{:?}\n{}\n{}",
        counts(daemon),
        daemon.json(&["stats"]),
        daemon.log()
    );
}

#[test]
fn entries_count_exactly_and_keep_their_counts_across_changes_and_restarts() {
    let lab =
        lab_or_skip!("entries_count_exactly_and_keep_their_counts_across_changes_and_restarts");
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("partner.txt");
    std::fs::write(&feed, "192.0.2.128/25\n").unwrap();
    let mut daemon = Daemon::start(&lab.edge, &config(&feed));
    // A CLI entry nested in the vendor's /24.
    daemon.ctl_ok(&[
        "allow",
        "203.0.113.0/28",
        "--rule",
        "vendor",
        "--comment",
        "ticket 42",
    ]);

    // Three rounds a second apart, so last-seen times differ.
    let first_round = [
        syns(VENDOR_V4, 443, 3),                       // vendor 203.0.113.0/28 (cli)
        syns(INNER_V4, 443, 4), // vendor 203.0.113.0/24: the /26 is office-ssh's
        syns(Ipv4Addr::new(203, 0, 113, 200), 443, 1), // vendor /24
    ]
    .concat();
    send(&lab, &daemon, first_round, 8);
    std::thread::sleep(Duration::from_millis(1100));
    let second_round = [
        syns(INNER_V4, 22, 2),     // office-ssh 203.0.113.64/26, not the vendor's /24
        syns(OFFICE_V4, 22, 6),    // office-ssh 198.51.100.0/24
        syns(STRANGER_V4, 443, 5), // dropped: no entry counts it
        syns(OFFICE_V4, 443, 2),   // dropped: office-ssh does not expose 443
    ]
    .concat();
    send(&lab, &daemon, second_round, 8);
    std::thread::sleep(Duration::from_millis(1100));
    let mut third_round: Vec<Vec<u8>> = (0..2).map(|_| tcp_v6(VENDOR_V6, 443)).collect();
    third_round.extend(syns(Ipv4Addr::new(192, 0, 2, 200), 443, 7)); // feed:partner
    send(&lab, &daemon, third_round, 9);

    let expected = vec![
        ("vendor 203.0.113.0/24".to_string(), 5, 5 * V4_SYN),
        ("vendor 2001:db8:1::/48".to_string(), 2, 2 * V6_SYN),
        ("vendor 192.0.2.128/25".to_string(), 7, 7 * V4_SYN),
        ("vendor 203.0.113.0/28".to_string(), 3, 3 * V4_SYN),
        ("office-ssh 198.51.100.0/24".to_string(), 6, 6 * V4_SYN),
        ("office-ssh 203.0.113.64/26".to_string(), 2, 2 * V4_SYN),
    ];
    assert_eq!(counts(&daemon), expected);

    // Last seen, latest first: the third round's entries, then the second's, then the first's.
    let recent: Vec<String> =
        daemon.json(&["stats", "--entries", "--sort", "last-seen"])["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["prefix"].as_str().unwrap().to_string())
            .collect();
    let position = |prefix: &str| recent.iter().position(|p| p == prefix).unwrap();
    for (later, earlier) in [
        ("192.0.2.128/25", "198.51.100.0/24"),
        ("2001:db8:1::/48", "203.0.113.64/26"),
        ("198.51.100.0/24", "203.0.113.0/28"),
        ("203.0.113.64/26", "203.0.113.0/24"),
    ] {
        assert!(position(later) < position(earlier), "{recent:?}");
    }
    let top = daemon.json(&["stats", "--entries", "--top", "2"]);
    let top: Vec<&str> = top["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(top, ["192.0.2.128/25", "198.51.100.0/24"]);
    let office = daemon.json(&["stats", "--entries", "--rule", "office-ssh"]);
    assert_eq!(office["entries"].as_array().unwrap().len(), 2);
    let vendor_cli = &daemon.json(&["stats", "--entries"])["entries"][3];
    assert_eq!(vendor_cli["origins"], serde_json::json!(["cli"]));
    assert_eq!(vendor_cli["comment"], "ticket 42");
    assert!(vendor_cli["first_seen"].is_string());

    // The metrics endpoint has the same numbers per entry.
    let metrics =
        firewall_tests::http::get(&lab.edge, "127.0.0.1:9469".parse().unwrap(), "/metrics");
    assert!(
        metrics.contains(
            "firewall_ctl_entry_packets_total{rule=\"office-ssh\",prefix=\"198.51.100.0/24\"} 6\n"
        ),
        "{metrics}"
    );

    // A reload, an unrelated allow, a feed update and a restart keep every count.
    daemon.reload_with_signal();
    daemon.ctl_ok(&["allow", "198.51.100.128/25", "--rule", "vendor"]);
    std::fs::write(&feed, "192.0.2.128/25\n192.0.2.64/27\n").unwrap();
    daemon.ctl_ok(&["feeds", "refresh", "partner"]);
    // Feed entries in prefix order, then CLI entries in prefix order.
    let mut after = expected.clone();
    after.insert(2, ("vendor 192.0.2.64/27".to_string(), 0, 0));
    after.insert(4, ("vendor 198.51.100.128/25".to_string(), 0, 0));
    assert_eq!(counts(&daemon), after);
    assert_eq!(daemon.kill(libc::SIGTERM), 0, "{}", daemon.log());
    daemon.spawn_and_wait();
    assert_eq!(counts(&daemon), after, "after a restart");
    // And they go on counting.
    send(&lab, &daemon, syns(OFFICE_V4, 22, 1), 1);
    after[6].1 += 1;
    after[6].2 += V4_SYN;
    assert_eq!(counts(&daemon), after);
}

#[test]
fn the_audit_report_flags_unused_entries_and_parses_as_csv_and_json() {
    let lab = lab_or_skip!("the_audit_report_flags_unused_entries_and_parses_as_csv_and_json");
    let daemon = Daemon::start(&lab.edge, &firewall_tests::config("driver"));
    send(&lab, &daemon, syns(OFFICE_V4, 22, 2), 2);

    let report = daemon.json(&["audit", "report"]);
    assert!(report["generated_at"].is_string());
    assert!(report["counting_since"].is_string());
    let flags: Vec<(String, bool, bool)> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["prefix"].as_str().unwrap().to_string(),
                entry["never_hit"].as_bool().unwrap(),
                entry["stale"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("203.0.113.0/24".to_string(), true, true),
            ("2001:db8:1::/48".to_string(), true, true),
            ("198.51.100.0/24".to_string(), false, false),
            ("203.0.113.64/26".to_string(), true, true),
        ]
    );
    assert_eq!(report["entries_stale"], 3);

    // Not hit within a second: stale too.
    std::thread::sleep(Duration::from_millis(2100));
    let later = daemon.json(&["audit", "report", "--stale", "1s", "--format", "json"]);
    assert_eq!(later["entries_stale"], 4);
    assert_eq!(later["entries"][2]["stale"], true);
    assert_eq!(later["entries"][2]["never_hit"], false);

    let output = daemon.ctl(&["audit", "report", "--format", "csv"]);
    assert!(output.status.success());
    let mut reader = csv::Reader::from_reader(output.stdout.as_slice());
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|header| header == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(&rows[2][column("prefix")], "198.51.100.0/24");
    assert_eq!(&rows[2][column("packets")], "2");
    assert_eq!(&rows[2][column("bytes")], &(2 * V4_SYN).to_string());
    assert_eq!(&rows[2][column("origins")], "config");
    assert_eq!(&rows[0][column("stale")], "true");
    assert_eq!(&rows[0][column("last_seen")], "");

    let table = String::from_utf8(daemon.ctl(&["audit", "report"]).stdout).unwrap();
    assert!(table.contains("stale:          3 of 4 entries"), "{table}");
    let refused = daemon.ctl_err(&["audit", "report", "--stale", "soon"], exit::FAILED);
    assert!(
        refused.contains("`--stale soon` is not a duration"),
        "{refused}"
    );
}
