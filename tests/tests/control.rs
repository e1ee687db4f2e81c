//! Live allowlist edits through the control socket: `allow`, `remove`,
//! `list`, `explain`, `reload`, expiry, persistence, the audit trail and who
//! may do what; all against the real daemon and real connections.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    time::Duration,
};

use firewall_tests::{
    addr::*,
    config,
    daemon::{Daemon, ctl, poll},
    exit,
    lab::Lab,
    lab_or_skip,
    traffic::{Connect, connect_tcp, listen_tcp},
    users::{Group, User},
};
use serde_json::Value;

fn https(lab: &Lab, source: impl Into<IpAddr>) -> Connect {
    connect_tcp(&lab.peer, source.into(), at(EDGE_V4, 443))
}

/// The prefixes `list --json` shows, as `(rule, prefix, origin)`.
fn listed(daemon: &Daemon) -> Vec<(String, String, String)> {
    daemon.json(&["list"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["rule"].as_str().unwrap().to_string(),
                entry["prefix"].as_str().unwrap().to_string(),
                entry["origin"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `config("driver")` with `default = true` on the vendor rule.
fn config_with_default() -> String {
    config("driver").replace(
        "sources = [\"203.0.113.0/24\", \"2001:db8:1::/48\"]\n",
        "sources = [\"203.0.113.0/24\", \"2001:db8:1::/48\"]\ndefault = true\n",
    )
}

#[test]
fn allow_lets_a_stranger_in_at_once_and_remove_shuts_them_out() {
    let lab = lab_or_skip!("allow_lets_a_stranger_in_at_once_and_remove_shuts_them_out");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);

    let added = daemon.ctl_ok(&[
        "allow",
        "192.0.2.99",
        "--rule",
        "vendor",
        "--comment",
        "OPS-42",
    ]);
    assert_eq!(added, "added 192.0.2.99/32 to rule `vendor`\n");
    // No wait: `allow` returns once the data plane enforces it.
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    let entry = &daemon.json(&["list", "--rule", "vendor"])["entries"][2];
    assert_eq!(entry["prefix"], "192.0.2.99/32");
    assert_eq!(entry["origin"], "cli");
    assert_eq!(entry["comment"], "OPS-42");
    assert_eq!(entry["added_by"]["uid"], 0);
    assert_eq!(entry["added_by"]["user"], "root");
    assert!(entry["added_at"].as_str().unwrap().ends_with('Z'));
    assert!(entry["expires_at"].is_null());

    // Again: a no-op that says so; with a new comment: an update.
    let again = daemon.ctl_ok(&["allow", "192.0.2.99", "--rule", "vendor"]);
    assert!(
        again.contains("already in rule `vendor`; nothing changed"),
        "{again}"
    );
    let updated = daemon.ctl_ok(&[
        "allow",
        "192.0.2.99",
        "--rule",
        "vendor",
        "--comment",
        "OPS-43",
    ]);
    assert!(updated.contains("updated its comment"), "{updated}");
    let in_config = daemon.ctl_ok(&["allow", "203.0.113.0/24", "--rule", "vendor"]);
    assert!(
        in_config.contains("from the config file; nothing changed"),
        "{in_config}"
    );

    let removed = daemon.ctl_ok(&["remove", "192.0.2.99"]);
    assert_eq!(removed, "removed 192.0.2.99/32 from rule `vendor`\n");
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);

    // `revoke` is `remove`; neither touches config entries or absent ones.
    let config_entry = daemon.ctl_err(&["revoke", "203.0.113.0/24"], exit::CONFLICT);
    assert!(
        config_entry.contains("comes from the config file")
            && config_entry.contains("edit the file and run `firewall-ctl reload`"),
        "{config_entry}"
    );
    let absent = daemon.ctl_err(&["remove", "192.0.2.99"], exit::NOT_FOUND);
    assert!(
        absent.contains("`192.0.2.99/32` is not in the allowlist"),
        "{absent}"
    );
    // With `--json`, the error is one object on stderr, its kind the exit code's.
    let absent = daemon.ctl(&["remove", "192.0.2.99", "--json"]);
    assert_eq!(absent.status.code(), Some(exit::NOT_FOUND));
    assert!(absent.stdout.is_empty());
    let error: Value = serde_json::from_slice(&absent.stderr).unwrap();
    assert_eq!(error["error"]["kind"], "not_found", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`192.0.2.99/32` is not in the allowlist"),
        "{error}"
    );
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);

    // One bad prefix in a multi-prefix call changes nothing.
    let mixed = daemon.ctl_err(
        &["allow", "192.0.2.99", "192.0.2.5/24", "--rule", "vendor"],
        exit::INVALID_INPUT,
    );
    assert!(
        mixed.starts_with("error: nothing was changed: `192.0.2.5/24` has host bits set; write the network `192.0.2.0/24`"),
        "{mixed}"
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);
    assert_eq!(listed(&daemon).len(), 4, "{:?}", listed(&daemon));

    // Broad prefixes need the rule's opt-in and --force.
    let broad = daemon.ctl_err(
        &[
            "allow",
            "0.0.0.0/1",
            "128.0.0.0/1",
            "--rule",
            "vendor",
            "--force",
        ],
        exit::INVALID_INPUT,
    );
    assert!(broad.contains("needs `allow_any_source = true`"), "{broad}");
    let mapped = daemon.ctl_err(
        &["allow", "::ffff:192.0.2.99", "--rule", "vendor"],
        exit::INVALID_INPUT,
    );
    assert!(mapped.contains("write `192.0.2.99/32`"), "{mapped}");
    let padded = daemon.ctl_err(
        &["allow", "192.0.2.0/0024", "--rule", "vendor"],
        exit::INVALID_INPUT,
    );
    assert!(padded.contains("write `/24`"), "{padded}");

    // Every change and refusal is in the audit log, with who asked.
    let records = daemon.audit();
    let summary: Vec<(String, String)> = records
        .iter()
        .map(|record| {
            (
                record["action"].as_str().unwrap().to_string(),
                record["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("start", "applied"),
        ("allow", "applied"),
        ("allow", "unchanged"),
        ("allow", "applied"),
        ("allow", "unchanged"),
        ("remove", "applied"),
        ("remove", "rejected"),
        ("remove", "rejected"),
        ("remove", "rejected"),
        ("allow", "rejected"),
        ("allow", "rejected"),
        ("allow", "rejected"),
        ("allow", "rejected"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(action, outcome)| (action.to_string(), outcome.to_string()))
        .collect();
    assert_eq!(summary, expected);
    assert_eq!(records[1]["prefixes"], serde_json::json!(["192.0.2.99"]));
    assert_eq!(records[1]["comment"], "OPS-42");
    assert_eq!(records[1]["user"]["uid"], 0);
    assert!(records[1]["user"]["pid"].as_u64().unwrap() > 0);
}

#[test]
fn allow_without_a_rule_uses_the_default_or_the_only_rule() {
    let lab = lab_or_skip!("allow_without_a_rule_uses_the_default_or_the_only_rule");
    let _ssh = listen_tcp(&lab.edge, at(EDGE_V4, 22));
    let _https = listen_tcp(&lab.edge, at(EDGE_V4, 443));

    // Two rules, no default: the error lists them.
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    let neither = daemon.ctl_err(&["allow", "192.0.2.99"], exit::INVALID_INPUT);
    assert!(
        neither.contains(
            "none is marked `default = true`; pass `--rule NAME` with one of: vendor, office-ssh"
        ),
        "{neither}"
    );
    drop(daemon);

    // The rule marked `default = true`.
    let daemon = Daemon::start(&lab.edge, &config_with_default());
    assert_eq!(
        daemon.ctl_ok(&["allow", "192.0.2.99"]),
        "added 192.0.2.99/32 to rule `vendor`\n"
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 22)),
        Connect::TimedOut
    );
    drop(daemon);

    // The only rule.
    let only_ssh = "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n\n[[rules]]\nname = \"ssh\"\nports = [\"tcp/22\"]\nsources = [\"198.51.100.0/24\"]\n";
    let daemon = Daemon::start(&lab.edge, only_ssh);
    assert_eq!(
        daemon.ctl_ok(&["allow", "192.0.2.99"]),
        "added 192.0.2.99/32 to rule `ssh`\n"
    );
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 22)),
        Connect::Connected
    );
}

/// What `allow` acknowledged survives a restart, and a `kill -9` right
/// after the acknowledgement.
#[test]
fn entries_survive_a_restart_and_a_kill_9_right_after_allow() {
    let lab = lab_or_skip!("entries_survive_a_restart_and_a_kill_9_right_after_allow");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let mut daemon = Daemon::start(&lab.edge, &config_with_default());
    daemon.ctl_ok(&["allow", "192.0.2.99", "--comment", "restart"]);
    assert_eq!(daemon.kill(libc::SIGTERM), 0);
    daemon.spawn_and_wait();
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);

    // Acknowledged, then killed before anything else can happen.
    daemon.ctl_ok(&["allow", "2001:db8::99"]);
    daemon.kill(libc::SIGKILL);
    daemon.spawn_and_wait();
    let cli: Vec<String> = listed(&daemon)
        .into_iter()
        .filter(|(_, _, origin)| origin == "cli")
        .map(|(_, prefix, _)| prefix)
        .collect();
    assert_eq!(cli, ["192.0.2.99/32", "2001:db8::99/128"]);
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V6.into(), at(EDGE_V6, 443)),
        Connect::Refused,
        "the IPv6 entry is enforced: the SYN reaches the host, where nothing listens on [::]:443"
    );
    assert_eq!(daemon.status()["runtime_entries"], 2);
}

#[test]
fn an_expiring_entry_admits_then_stops_admitting() {
    let lab = lab_or_skip!("an_expiring_entry_admits_then_stops_admitting");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let daemon = Daemon::start(&lab.edge, &config_with_default());
    let added = daemon.ctl_ok(&["allow", "192.0.2.99", "--expires", "2s"]);
    assert!(added.contains(", expires 20"), "{added}");
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    let expires_at = daemon.status()["next_expiry"].as_str().unwrap().to_string();
    let gone = poll(Duration::from_secs(4), Duration::from_millis(100), || {
        (daemon.status()["runtime_entries"] == 0).then_some(())
    });
    assert!(gone.is_some(), "not expired after 4 s:\n{}", daemon.log());
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);
    let expiry = daemon
        .audit()
        .into_iter()
        .find(|record| record["action"] == "expire")
        .expect("the expiry is audited");
    assert_eq!(expiry["prefixes"], serde_json::json!(["192.0.2.99/32"]));
    assert_eq!(expiry["expires_at"], expires_at.as_str());
    assert!(expiry["user"].is_null());
    assert!(
        daemon
            .log()
            .contains("runtime entry expired and was removed")
    );

    // Past and malformed expiries are refused.
    let past = daemon.ctl_err(
        &["allow", "192.0.2.99", "--expires", "2020-01-01T00:00:00Z"],
        exit::INVALID_INPUT,
    );
    assert!(past.contains("is in the past"), "{past}");
    let garbage = daemon.ctl_err(
        &["allow", "192.0.2.99", "--expires", "friday"],
        exit::INVALID_INPUT,
    );
    assert!(garbage.contains("neither a duration"), "{garbage}");
}

#[test]
fn entries_that_expired_while_the_daemon_was_down_are_never_enforced() {
    let lab = lab_or_skip!("entries_that_expired_while_the_daemon_was_down_are_never_enforced");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let mut daemon = Daemon::start(&lab.edge, &config_with_default());
    daemon.ctl_ok(&["allow", "192.0.2.98"]);
    // Killed right after the entry is added, long before it expires, even
    // on a slow (emulated) machine.
    daemon.ctl_ok(&["allow", "192.0.2.99", "--expires", "3s"]);
    daemon.kill(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(3500));
    daemon.spawn_and_wait();
    assert_eq!(https(&lab, STRANGER_V4), Connect::TimedOut);
    let cli: Vec<String> = listed(&daemon)
        .into_iter()
        .filter(|(_, _, origin)| origin == "cli")
        .map(|(_, prefix, _)| prefix)
        .collect();
    assert_eq!(cli, ["192.0.2.98/32"]);
    let expired = daemon
        .audit()
        .into_iter()
        .find(|record| record["action"] == "expire")
        .unwrap();
    assert!(
        expired["detail"]
            .as_str()
            .unwrap()
            .contains("while the daemon was stopped"),
        "{expired}"
    );
}

#[test]
fn read_group_may_read_but_not_change_and_strangers_may_not_connect() {
    let lab = lab_or_skip!("read_group_may_read_but_not_change_and_strangers_may_not_connect");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let readers = Group::create();
    let operators = Group::create();
    let reader = User::create(&[&readers]);
    let operator = User::create(&[&operators]);
    let outsider = User::create(&[]);
    let config = config_with_default().replace(
        "xdp_mode = \"driver\"",
        &format!(
            "xdp_mode = \"driver\"\ncontrol_group = \"{}\"\nread_group = \"{}\"",
            operators.name, readers.name
        ),
    );
    let daemon = Daemon::start(&lab.edge, &config);
    let metadata = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
        0o660
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&metadata), 0);

    // (`explain` of a packet the policy drops exits with 4.)
    for (command, code) in [
        (&["status"][..], 0),
        (&["stats"], 0),
        (&["list"], 0),
        (&["explain", "192.0.2.99", "443"], 4),
        (&["audit", "log"], 0),
    ] {
        let output = reader.ctl(&daemon.socket, command);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{command:?} as a read_group member: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let refused = reader.ctl(&daemon.socket, &["allow", "192.0.2.99"]);
    assert_eq!(refused.status.code(), Some(exit::PERMISSION_DENIED));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "permission denied: `allow` changes the allowlist and needs root or membership in group `{}`",
            operators.name
        )),
        "{stderr}"
    );
    let reload = reader.ctl(&daemon.socket, &["reload"]);
    assert_eq!(reload.status.code(), Some(exit::PERMISSION_DENIED));

    // A control_group member may change it.
    let allowed = operator.ctl(&daemon.socket, &["allow", "192.0.2.99"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);

    // Someone in neither group cannot even connect, and is told why.
    let outside = outsider.ctl(&daemon.socket, &["status"]);
    assert_eq!(outside.status.code(), Some(exit::PERMISSION_DENIED));
    assert!(
        String::from_utf8_lossy(&outside.stderr)
            .contains("permission denied on the control socket"),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );

    let records = daemon.audit();
    let denied: Vec<&Value> = records
        .iter()
        .filter(|record| record["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 2, "{records:#?}");
    assert_eq!(denied[0]["action"], "allow");
    assert_eq!(denied[0]["user"]["user"], reader.name.as_str());
    assert_eq!(denied[0]["prefixes"], serde_json::json!(["192.0.2.99"]));
    assert_eq!(denied[1]["action"], "reload");
    let applied = records
        .iter()
        .find(|record| record["action"] == "allow" && record["outcome"] == "applied")
        .unwrap();
    assert_eq!(applied["user"]["user"], operator.name.as_str());
    assert!(daemon.log().contains("permission denied"));

    // A reload without the groups takes the socket back to root alone.
    std::fs::write(&daemon.config, config_with_default()).unwrap();
    daemon.ctl_ok(&["reload"]);
    for user in [&reader, &operator] {
        let output = user.ctl(&daemon.socket, &["status"]);
        assert_eq!(output.status.code(), Some(exit::PERMISSION_DENIED));
        assert!(
            String::from_utf8_lossy(&output.stderr)
                .contains("permission denied on the control socket"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Sends `request` on a fresh connection and returns the answer line.
fn raw_request(socket: &std::path::Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    answer
}

#[test]
fn garbage_oversized_and_silent_clients_do_not_disturb_well_formed_ones() {
    let lab = lab_or_skip!("garbage_oversized_and_silent_clients_do_not_disturb_well_formed_ones");
    let daemon = Daemon::start(&lab.edge, &config_with_default());
    let socket = daemon.socket.clone();

    // Clients that connect and say nothing, holding their connections open.
    let silent: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // One that sends half a line and stalls.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"{\"version\": 3, \"comm").unwrap();

    let garbage = raw_request(&socket, b"\x00\x1b[2J garbage\n");
    assert!(garbage.contains("malformed request"), "{garbage}");
    let old = raw_request(&socket, b"{\"version\":2,\"command\":\"status\"}\n");
    assert!(old.contains("protocol version 2 is not supported"), "{old}");
    let unknown = raw_request(&socket, b"{\"version\":3,\"command\":\"rm_rf\"}\n");
    assert!(unknown.contains("unknown variant"), "{unknown}");
    let oversized = raw_request(&socket, &vec![b'x'; 100 * 1024]);
    assert!(
        oversized.contains("request larger than 65536 bytes"),
        "{oversized}"
    );
    for answer in [&garbage, &old, &unknown, &oversized] {
        assert!(
            answer.starts_with("{\"error\":{\"kind\":\"invalid_input\",\"message\":"),
            "{answer}"
        );
    }

    // 50 concurrent well-formed clients, all answered.
    let workers: Vec<_> = (0..50)
        .map(|index| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let command = if index % 2 == 0 { "status" } else { "stats" };
                let output = ctl(&["--socket", socket.to_str().unwrap(), command, "--json"]);
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                serde_json::from_slice::<Value>(&output.stdout).unwrap()
            })
        })
        .collect();
    for worker in workers {
        let answer = worker.join().unwrap();
        assert_eq!(answer["mode"], "enforce");
    }
    // And a change goes through meanwhile.
    daemon.ctl_ok(&["allow", "192.0.2.99"]);

    // The silent ones are told off after the request timeout, not before.
    let mut first = silent.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("no request within 5 s"), "{answer}");
    drop(stalled);
    assert_eq!(daemon.status()["runtime_entries"], 1);
}

#[test]
fn connections_past_the_limit_are_refused_promptly() {
    let lab = lab_or_skip!("connections_past_the_limit_are_refused_promptly");
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    let held: Vec<UnixStream> = (0..128)
        .map(|_| UnixStream::connect(&daemon.socket).unwrap())
        .collect();
    // Accepted in order: give the daemon a moment to take all 128.
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let answer = raw_request(&daemon.socket, b"{\"version\":3,\"command\":\"status\"}\n");
    assert!(answer.contains("128 control connections open"), "{answer}");
    assert!(answer.contains("\"kind\":\"unavailable\""), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused promptly, not after a timeout"
    );
    drop(held);
    let answered = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        daemon.try_json(&["status"])
    });
    assert!(
        answered.is_some(),
        "status answers again once the clients are gone"
    );
}

#[test]
fn a_corrupt_state_file_stops_start_up_and_is_left_untouched() {
    let lab = lab_or_skip!("a_corrupt_state_file_stops_start_up_and_is_left_untouched");
    let mut daemon = Daemon::prepare(&lab.edge, &config_with_default());
    std::fs::create_dir_all(&daemon.state_dir).unwrap();
    let state_file = daemon.state_dir.join("allowlist.toml");
    let corrupt = "version = 1\n[[entries]]\nrule = \"vendor\"\nprefix = \"203.0.113.300\"\n";
    std::fs::write(&state_file, corrupt).unwrap();
    let (code, log) = daemon.run_expecting_failure();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!("state file `{}` is corrupt", state_file.display())),
        "{log}"
    );
    assert!(log.contains("203.0.113.300"), "{log}");
    assert!(
        log.contains(&format!("mv {0} {0}.broken", state_file.display())),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), corrupt);
    assert!(!lab.edge.xdp_attached(EDGE_IF), "nothing was attached");

    // A newer format is named as such.
    let mut daemon = Daemon::prepare(&lab.edge, &config_with_default());
    std::fs::create_dir_all(&daemon.state_dir).unwrap();
    std::fs::write(daemon.state_dir.join("allowlist.toml"), "version = 9\n").unwrap();
    let (code, log) = daemon.run_expecting_failure();
    assert_eq!(code, 1);
    assert!(log.contains("format version 9"), "{log}");
}

#[test]
fn explain_names_the_rule_and_entry_live_and_from_a_config_file() {
    let lab = lab_or_skip!("explain_names_the_rule_and_entry_live_and_from_a_config_file");
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    let live = |source: &str, port: &str| daemon.explain(&[source, port]);
    let inner_ssh = live("203.0.113.70", "22");
    assert_eq!(inner_ssh["verdict"], "pass");
    assert_eq!(inner_ssh["rule"], "office-ssh");
    assert_eq!(inner_ssh["entry"]["prefix"], "203.0.113.64/26");
    assert_eq!(inner_ssh["entry"]["origin"], "config");
    let inner_https = live("203.0.113.70", "tcp/443");
    assert_eq!(inner_https["rule"], "vendor");
    assert_eq!(inner_https["entry"]["prefix"], "203.0.113.0/24");
    let outer_ssh = live("203.0.113.10", "22");
    assert_eq!(outer_ssh["verdict"], "drop");
    assert_eq!(outer_ssh["reason"], "not_allowlisted");
    assert_eq!(outer_ssh["exposing_rules"][0]["rule"], "office-ssh");
    assert_eq!(
        outer_ssh["exposing_rules"][0]["nearest"][0]["prefix"],
        "203.0.113.64/26"
    );
    assert_eq!(live("203.0.113.10", "udp/53")["reason"], "port_closed");

    // A runtime entry is named with its origin.
    daemon.ctl_ok(&["allow", "192.0.2.99", "--rule", "office-ssh"]);
    let added = live("192.0.2.99", "22");
    assert_eq!(added["entry"]["prefix"], "192.0.2.99/32");
    assert_eq!(added["entry"]["origin"], "cli");
    let human = daemon.ctl(&["explain", "203.0.113.10", "22"]);
    assert_eq!(human.status.code(), Some(4), "a drop exits with 4");
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.contains("203.0.113.10 -> tcp/22: DROP, reason not_allowlisted")
            && human.contains("rule `office-ssh` exposes tcp/22 but does not list 203.0.113.10; nearest entries: 203.0.113.64/26 (config)"),
        "{human}"
    );

    // From the file alone: no daemon, no root (on the edge host, whose
    // interfaces the config names).
    let nobody = User::create(&[]);
    let offline = nobody.run_in(
        Some(&lab.edge),
        &[
            "--socket",
            "/nonexistent.sock",
            "explain",
            "203.0.113.70",
            "22",
            "--config",
            daemon.config.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let offline: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(offline["rule"], "office-ssh");
    assert_eq!(offline["entry"]["prefix"], "203.0.113.64/26");
    // The file alone knows nothing of runtime entries.
    let without = nobody.run_in(
        Some(&lab.edge),
        &[
            "explain",
            "192.0.2.99",
            "22",
            "--config",
            daemon.config.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(without.status.code(), Some(4));
    let without: Value = serde_json::from_slice(&without.stdout).unwrap();
    assert_eq!(without["reason"], "not_allowlisted");
}

#[test]
fn reload_reports_a_broken_config_and_keeps_the_policy() {
    let lab = lab_or_skip!("reload_reports_a_broken_config_and_keeps_the_policy");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let first = config_with_default();
    let daemon = Daemon::start(&lab.edge, &first);
    let with_stranger = first.replace(
        "\"203.0.113.0/24\", ",
        "\"203.0.113.0/24\", \"192.0.2.99\", ",
    );
    std::fs::write(&daemon.config, &with_stranger).unwrap();
    let applied = daemon.ctl_ok(&["reload"]);
    assert!(
        applied.starts_with("config reloaded: 2 rules, 4 IPv4 prefixes"),
        "{applied}"
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);

    std::fs::write(
        &daemon.config,
        with_stranger.replace("\"192.0.2.99\"", "\"192.0.2.99/24\""),
    )
    .unwrap();
    let rejected = daemon.ctl_err(&["reload"], exit::INVALID_INPUT);
    assert!(
        rejected.contains("reload rejected, the running policy is unchanged")
            && rejected.contains("host bits set; write the network `192.0.2.0/24`"),
        "{rejected}"
    );
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    assert_eq!(https(&lab, VENDOR_V4), Connect::Connected);
    let status = daemon.status();
    assert_eq!(status["reloads"], 1);
    assert_eq!(status["reloads_rejected"], 1);

    // A runtime entry's rule cannot vanish from under it.
    daemon.ctl_ok(&["allow", "198.51.100.9", "--rule", "office-ssh"]);
    let without_ssh = with_stranger
        .split("[[rules]]\nname = \"office-ssh\"")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&daemon.config, &without_ssh).unwrap();
    let orphaned = daemon.ctl_err(&["reload"], exit::INVALID_INPUT);
    assert!(
        orphaned
            .contains("`198.51.100.9/32` is in rule `office-ssh`, which the config no longer has"),
        "{orphaned}"
    );
    let reloads: Vec<String> = daemon
        .audit()
        .iter()
        .filter(|record| record["action"] == "reload")
        .map(|record| record["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reloads, ["applied", "rejected", "rejected"]);
}

/// Sets or clears the immutable attribute of `path`: not even root can then
/// create, rename or change files in it, as on a full or failing disk.
fn immutable(path: &std::path::Path, on: bool) {
    let status = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chattr on {}", path.display());
}

/// A state file that cannot be written: a change is refused whole, and an
/// expiry still takes the entry out of the data plane.
#[test]
fn an_unwritable_state_dir_refuses_changes_but_not_expiry() {
    let lab = lab_or_skip!("an_unwritable_state_dir_refuses_changes_but_not_expiry");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let daemon = Daemon::start(&lab.edge, &config_with_default());
    daemon.ctl_ok(&["allow", "192.0.2.99", "--expires", "2s"]);
    assert_eq!(https(&lab, STRANGER_V4), Connect::Connected);
    immutable(&daemon.state_dir, true);
    let refused = daemon.ctl_err(&["allow", "198.51.100.200"], exit::INTERNAL);
    let expired = poll(Duration::from_secs(4), Duration::from_millis(100), || {
        (daemon.status()["runtime_entries"] == 0).then_some(())
    });
    let stranger = https(&lab, STRANGER_V4);
    immutable(&daemon.state_dir, false);
    assert!(
        refused.contains("writing state file") && refused.contains("nothing was changed"),
        "{refused}"
    );
    assert!(
        expired.is_some(),
        "the entry did not expire:\n{}",
        daemon.log()
    );
    assert_eq!(
        stranger,
        Connect::TimedOut,
        "the expired entry still admitted traffic"
    );
    assert!(
        daemon
            .log()
            .contains("the change is live but could not be saved")
    );
    // The refused entry was never live, nor listed.
    assert!(
        listed(&daemon)
            .iter()
            .all(|(_, prefix, _)| prefix != "198.51.100.200/32")
    );
}
