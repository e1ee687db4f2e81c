//! The data plane at its documented size: 64 rules and a quarter million
//! prefixes per address family, loaded into the kernel and classifying.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::net::{UnixDatagram, UnixStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use firewall_tests::{
    addr::*,
    daemon::{Daemon, heavy_read, poll, request_line},
    frames::{tcp_v4, tcp_v6},
    lab::Lab,
    root_or_skip, slowdown,
    traffic::send_frames,
    users::{Group, User},
};

/// How often the daemon must ping the watchdog (`WatchdogSec`; a third of
/// the shipped unit's), times the machine's [`slowdown`].
fn watchdog_interval() -> Duration {
    Duration::from_secs(10) * slowdown()
}

/// A service manager's notification socket: the times of each `WATCHDOG=1`.
struct Watchdog {
    pings: Arc<Mutex<Vec<Instant>>>,
}

impl Watchdog {
    /// Has `daemon` (not started yet) notify a socket of ours, with a
    /// watchdog of `interval`.
    fn listen(daemon: &mut Daemon, interval: Duration) -> Watchdog {
        let path = daemon.dir().join("notify.sock");
        let manager = UnixDatagram::bind(&path).unwrap();
        daemon.env = vec![
            (
                "NOTIFY_SOCKET".to_string(),
                path.to_str().unwrap().to_string(),
            ),
            (
                "WATCHDOG_USEC".to_string(),
                interval.as_micros().to_string(),
            ),
        ];
        let pings = Arc::new(Mutex::new(Vec::new()));
        let heard = pings.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok(len) = manager.recv(&mut buffer) {
                if &buffer[..len] == b"WATCHDOG=1\n" {
                    heard.lock().unwrap().push(Instant::now());
                }
            }
        });
        Watchdog { pings }
    }

    /// Fails unless the watchdog was pinged at least once per interval
    /// from `since` until now.
    fn assert_answered_since(&self, since: Instant) {
        let pings = self.pings.lock().unwrap().clone();
        let mut last = since;
        for ping in pings
            .iter()
            .filter(|ping| **ping > since)
            .chain([&Instant::now()])
        {
            assert!(
                *ping - last < watchdog_interval(),
                "the watchdog went {:?} without a ping",
                *ping - last
            );
            last = *ping;
        }
    }
}

/// Every prefix of lengths /28 to /32 inside 198.18.0.0/15 (RFC 2544's
/// benchmarking block; these addresses only appear in the config, never in
/// traffic): 253,952 prefixes nested five deep.
fn nested_v4_prefixes() -> Vec<String> {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    (28..=32u32)
        .flat_map(|len| {
            let count = 1u32 << (len - 15);
            (0..count)
                .map(move |index| format!("{}/{len}", Ipv4Addr::from(base + (index << (32 - len)))))
        })
        .collect()
}

/// 250,000 /64s inside 2001:db8::/32, from 2001:db8:`base`::/64.
fn v6_prefixes(base: u16) -> Vec<String> {
    (0..250_000u32)
        .map(|index| {
            format!(
                "{}/64",
                Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    base | (index >> 16) as u16,
                    index as u16,
                    0,
                    0,
                    0,
                    0
                )
            )
        })
        .collect()
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("\"{item}\""))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn sixty_four_rules_and_a_quarter_million_prefixes_per_family() {
    if !root_or_skip("sixty_four_rules_and_a_quarter_million_prefixes_per_family") {
        return;
    }
    let v4 = nested_v4_prefixes();
    let v6 = v6_prefixes(0);
    assert_eq!((v4.len(), v6.len()), (253_952, 250_000));
    let readers = Group::create();
    let reader = User::create(&[&readers]);
    let mut config = format!(
        "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\nread_group = \"{}\"\n",
        readers.name
    );
    config.push_str(&format!(
        "[[rules]]\nname = \"feed\"\nports = [\"tcp/8443\"]\nsources = [{}, {}]\n",
        quoted(&v4),
        quoted(&v6)
    ));
    for index in 1..63 {
        config.push_str(&format!("[[rules]]\nname = \"r{index}\"\nports = [\"udp/{}\"]\nsources = [\"192.0.2.{index}\"]\n", 1000 + index));
    }
    // The 64th rule, bit 63 of every rule set.
    config.push_str("[[rules]]\nname = \"last\"\nports = [\"tcp/443\"]\nsources = [\"203.0.113.0/24\", \"2001:db8:1::/48\"]\n");

    let lab = Lab::new();
    let mut daemon = Daemon::prepare(&lab.edge, &config);
    // A service manager's watchdog (systemd kills a daemon that misses it).
    let watchdog = Watchdog::listen(&mut daemon, watchdog_interval());
    daemon.spawn_and_wait();
    let status = daemon.status();
    assert_eq!(status["rules"], 64);
    assert_eq!(status["prefixes_v4"], 253_952 + 62 + 1);
    // 2001:db8:1::/48 contains 2001:db8:1:x::/64 of the feed: both stay.
    assert_eq!(status["prefixes_v6"], 250_000 + 1);

    let before = daemon.stats();
    send_frames(
        &lab.peer,
        PEER_IF,
        vec![
            tcp_v4(VENDOR_V4, 443),
            tcp_v6(VENDOR_V6, 443),
            tcp_v4(STRANGER_V4, 443),
            tcp_v4(VENDOR_V4, 8443),
        ],
    );
    let after = daemon.settled_stats();
    assert_eq!(after.rule("last").0 - before.rule("last").0, 2);
    assert_eq!(after.rule("feed").0 - before.rule("feed").0, 0);
    assert_eq!(
        after.drops("not_allowlisted") - before.drops("not_allowlisted"),
        2
    );

    // A reader runs 30 heavy reads at once (each a report of half a
    // million entries): they are served beside the policy writer, a few at
    // a time, the rest told to try again, while an administrator's changes
    // go through and the watchdog keeps being answered.
    let socket = daemon.socket.clone();
    let reader = reader.credentials();
    let heavy: Vec<_> = (0..30)
        .map(|index| {
            let (reader, socket) = (reader.clone(), socket.clone());
            std::thread::spawn(move || {
                reader.on_thread(move || {
                    let mut stream = UnixStream::connect(&socket).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(600)))
                        .unwrap();
                    stream.write_all(&request_line(heavy_read(index))).unwrap();
                    let mut answer = Vec::new();
                    stream.read_to_end(&mut answer).unwrap();
                    let head =
                        String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
                    (head, answer.ends_with(b"}\n"))
                })
            })
        })
        .collect();
    let loaded_since = Instant::now();
    for round in 0..5 {
        let prefix = format!("192.0.2.{}", 200 + round);
        assert_eq!(
            daemon.ctl_ok(&["allow", &prefix, "--rule", "last"]),
            format!("added {prefix}/32 to rule `last`\n")
        );
        daemon.ctl_ok(&["remove", &prefix]);
    }
    let answers: Vec<(String, bool)> = heavy
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    let busy = answers
        .iter()
        .filter(|(head, _)| {
            head.starts_with("{\"error\":{\"kind\":\"unavailable\",\"message\":\"busy: ")
        })
        .count();
    let whole = answers
        .iter()
        .filter(|(head, complete)| !head.starts_with("{\"error\"") && *complete)
        .count();
    assert_eq!(busy + whole, 30, "{answers:?}");
    assert!(busy > 0 && whole > 0, "{answers:?}");
    watchdog.assert_answered_since(loaded_since);

    // `allow` at full size writes only what changed.
    let added = daemon.ctl_ok(&["allow", "192.0.2.99", "--rule", "last"]);
    assert_eq!(added, "added 192.0.2.99/32 to rule `last`\n");
    send_frames(&lab.peer, PEER_IF, vec![tcp_v4(STRANGER_V4, 443)]);
    assert_eq!(
        daemon.settled_stats().rule("last").0 - before.rule("last").0,
        3
    );
    // Reloading an unchanged config rewrites nothing.
    let unchanged: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["reload", "--json"])).unwrap();
    assert_eq!(unchanged["changed_map_entries"], 0);
    // ... and keeps the CLI entry enforced.
    send_frames(&lab.peer, PEER_IF, vec![tcp_v4(STRANGER_V4, 443)]);
    assert_eq!(
        daemon.settled_stats().rule("last").0 - before.rule("last").0,
        4
    );

    assert_eq!(
        daemon.ctl_ok(&["remove", "192.0.2.99"]),
        "removed 192.0.2.99/32 from rule `last`\n"
    );

    // A reload of the same size replaces it all, atomically, and `status`
    // answers from the live policy while it runs.
    std::fs::write(
        &daemon.config,
        config.replace("name = \"last\"", "name = \"final\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let mut answered_during_reload = 0;
    let status = poll(Duration::from_secs(60), Duration::from_millis(20), || {
        let status = daemon.status();
        if status["reload_in_progress"] == true {
            answered_during_reload += 1;
            assert_eq!(status["reloads"], 1, "the live policy's status");
        }
        (status["reloads"] == 2).then_some(status)
    })
    .unwrap_or_else(|| panic!("no reload within 60 s:\n{}", daemon.log()));
    assert!(answered_during_reload > 0, "status waited for the reload");
    assert_eq!(status["reload_in_progress"], false);
    send_frames(&lab.peer, PEER_IF, vec![tcp_v4(VENDOR_V4, 443)]);
    assert_eq!(daemon.settled_stats().rule("final").0, 1);

    // A new IPv6 list as large as a slot holds, moved up, then down, then
    // back: each time the idle slot's tables are rewritten whole, a row at
    // least for each prefix of the new list.
    let renamed = config.replace("name = \"last\"", "name = \"final\"");
    let feed_v6 = || daemon.settled_stats().rule("feed").0;
    let mut admitted = feed_v6();
    for (base, passes) in [(0x8000, false), (0x4000, false), (0, true)] {
        // Past the catch-up of the idle slot after the previous change.
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(
            &daemon.config,
            renamed.replace(&quoted(&v6), &quoted(&v6_prefixes(base))),
        )
        .unwrap();
        let reloaded: serde_json::Value =
            serde_json::from_str(&daemon.ctl_ok(&["reload", "--json"])).unwrap();
        assert!(
            reloaded["changed_map_entries"].as_u64().unwrap() >= 250_001,
            "{reloaded}"
        );
        // 2001:db8:1::/64 is in the list at 2001:db8:0:: only.
        send_frames(&lab.peer, PEER_IF, vec![tcp_v6(VENDOR_V6, 8443)]);
        admitted += u64::from(passes);
        assert_eq!(feed_v6(), admitted, "list at 2001:db8:{base:x}::");
    }
    // While a list moved, both lists' entries held counters: there was an
    // index for every one (the report of half a million entries is too slow
    // for the CLI's timeout in a debug build, so the log tells).
    assert!(
        !daemon.log().contains("per-entry counters are full"),
        "{}",
        daemon.log()
    );

    // SIGTERM in the middle of a reload is honoured without waiting for it.
    let applied = daemon.log().matches("new policy applied").count();
    std::fs::write(&daemon.config, &config).unwrap();
    daemon.signal(libc::SIGHUP);
    let reloading = poll(Duration::from_secs(10), Duration::from_millis(5), || {
        (daemon.status()["reload_in_progress"] == true).then_some(())
    });
    assert!(
        reloading.is_some(),
        "the reload never showed as in progress"
    );
    let code = daemon.kill(libc::SIGTERM);
    let log = daemon.log();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.lines()
            .last()
            .is_some_and(|last| last.contains("the firewall stays attached and enforcing")),
        "{log}"
    );
    assert_eq!(
        log.matches("new policy applied").count(),
        applied,
        "the daemon waited for the reload before exiting:\n{log}"
    );
    assert!(lab.edge.xdp_attached(EDGE_IF), "the pinned firewall stays");
}
