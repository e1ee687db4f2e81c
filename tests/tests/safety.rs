//! Changes an operator can take back: `reload --confirm` rolls back unless
//! confirmed, also across a daemon restart, and no reload or removal cuts
//! the operator's own SSH session unless forced.

use std::time::Duration;

use firewall_tests::{
    addr::*,
    config,
    daemon::{Daemon, ctl, poll},
    exit,
    lab::Lab,
    lab_or_skip, slowdown,
    traffic::{Connect, connect_tcp, listen_tcp},
};

fn https(lab: &Lab) -> Connect {
    connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443))
}

/// `config("driver")` with the stranger added to the vendor rule.
fn with_stranger() -> String {
    config("driver").replace(
        "sources = [\"203.0.113.0/24\", ",
        "sources = [\"192.0.2.99\", \"203.0.113.0/24\", ",
    )
}

/// A confirmation window of `secs` seconds on a real host, longer on a slow
/// guest so the steps a test takes inside it still fit: the window and its
/// `--confirm` argument.
fn confirm_window(secs: u64) -> (Duration, String) {
    let window = Duration::from_secs(secs) * slowdown();
    (window, format!("{}s", window.as_secs()))
}

fn audit_actions(daemon: &Daemon) -> Vec<(String, String)> {
    daemon
        .audit()
        .iter()
        .map(|record| {
            (
                record["action"].as_str().unwrap().to_string(),
                record["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until no reload waits for confirmation any more: the longest
/// window these tests give (10 s) and a slow machine's margin.
fn await_no_pending(daemon: &Daemon) {
    let done = poll(
        Duration::from_secs(20) * slowdown(),
        Duration::from_millis(50),
        || daemon.status()["rollback_at"].is_null().then_some(()),
    );
    assert!(
        done.is_some(),
        "still pending: {}\n{}",
        daemon.status(),
        daemon.log()
    );
}

#[test]
fn reload_confirm_rolls_back_unless_confirmed() {
    let lab = lab_or_skip!("reload_confirm_rolls_back_unless_confirmed");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    assert_eq!(https(&lab), Connect::TimedOut);
    // What a rollback comes back to is kept in the state directory.
    let running = daemon.state_dir.join("running-config.toml");
    let running_text = || std::fs::read_to_string(&running).unwrap();
    assert_eq!(running_text(), config("driver"));

    // Not confirmed: the new rule admits, then stops admitting.
    std::fs::write(&daemon.config, with_stranger()).unwrap();
    let (window, confirm) = confirm_window(2);
    let applied = daemon.ctl_ok(&["reload", "--confirm", &confirm]);
    assert!(
        applied.contains("unless you run `firewall-ctl confirm`"),
        "{applied}"
    );
    assert_eq!(https(&lab), Connect::Connected);
    assert_eq!(running_text(), with_stranger());
    assert!(daemon.status()["rollback_at"].is_string());
    let busy = daemon.ctl_err(&["reload"], exit::CONFLICT);
    assert!(busy.contains("waits for confirmation"), "{busy}");
    await_no_pending(&daemon);
    assert_eq!(https(&lab), Connect::TimedOut, "rolled back");
    assert!(daemon.log().contains("rolled back to the previous config"));
    assert_eq!(running_text(), config("driver"));

    // Confirmed: it stays.
    daemon.ctl_ok(&["reload", "--confirm", &confirm]);
    assert_eq!(
        daemon
            .ctl_ok(&["confirm"])
            .lines()
            .next()
            .unwrap()
            .split(" (")
            .next()
            .unwrap(),
        "confirmed: the reloaded config stays"
    );
    std::thread::sleep(window + Duration::from_millis(500));
    assert_eq!(https(&lab), Connect::Connected, "confirmed: no rollback");
    assert!(
        daemon
            .ctl_err(&["confirm"], exit::CONFLICT)
            .contains("no reload is waiting for confirmation")
    );
    let actions = audit_actions(&daemon);
    let tail: Vec<(&str, &str)> = actions[actions.len() - 6..]
        .iter()
        .map(|(action, outcome)| (action.as_str(), outcome.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            ("reload", "applied"),
            ("reload", "rejected"),
            ("rollback", "applied"),
            ("reload", "applied"),
            ("confirm", "applied"),
            ("confirm", "rejected"),
        ]
    );
    let bad = daemon.ctl_err(&["reload", "--confirm", "soon"], exit::INVALID_INPUT);
    assert!(bad.contains("`--confirm soon` is not a duration"), "{bad}");

    // Without the copy there is nothing to roll back to: refused, and
    // nothing changes, until a plain reload writes the copy again.
    std::fs::remove_file(&running).unwrap();
    std::fs::write(&daemon.config, config("driver")).unwrap();
    let refused = daemon.ctl_err(&["reload", "--confirm", "2s"], exit::INTERNAL);
    assert!(
        refused.contains("running-config.toml`, which `--confirm` rolls back to, cannot be read")
            && refused.contains("reload without `--confirm`"),
        "{refused}"
    );
    assert_eq!(https(&lab), Connect::Connected, "the stranger is still in");
    assert!(daemon.status()["rollback_at"].is_null());
    // The new config's copy, written while it was applied, is gone too.
    assert!(!daemon.state_dir.join("running-config.toml.next").exists());
    daemon.ctl_ok(&["reload"]);
    assert_eq!(https(&lab), Connect::TimedOut);
    assert_eq!(running_text(), config("driver"));
}

#[test]
fn a_restart_respects_a_pending_rollback() {
    let lab = lab_or_skip!("a_restart_respects_a_pending_rollback");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    std::fs::write(&daemon.config, with_stranger()).unwrap();

    // Restarted within the window (wide enough for an emulated machine's
    // restart): still pending, and rolls back on time.
    daemon.ctl_ok(&["reload", "--confirm", &confirm_window(10).1]);
    daemon.kill(libc::SIGKILL);
    daemon.spawn_and_wait();
    assert!(
        daemon.status()["rollback_at"].is_string(),
        "{}\n{}",
        daemon.status(),
        daemon.log()
    );
    assert_eq!(https(&lab), Connect::Connected);
    await_no_pending(&daemon);
    assert_eq!(https(&lab), Connect::TimedOut);

    // Down when the time ran out: starts with the previous config.
    std::fs::write(&daemon.config, with_stranger()).unwrap();
    let (window, confirm) = confirm_window(1);
    daemon.ctl_ok(&["reload", "--confirm", &confirm]);
    assert_eq!(https(&lab), Connect::Connected);
    daemon.kill(libc::SIGTERM);
    std::thread::sleep(window + Duration::from_millis(500));
    daemon.spawn_and_wait();
    assert!(daemon.status()["rollback_at"].is_null());
    assert_eq!(
        https(&lab),
        Connect::TimedOut,
        "the unconfirmed config did not come back"
    );
    assert!(
        daemon
            .log()
            .contains("starting with the config it replaced")
    );
    assert_eq!(
        audit_actions(&daemon)
            .iter()
            .filter(|(action, _)| action == "rollback")
            .count(),
        2
    );
}

#[test]
fn the_lockout_guard_keeps_the_callers_ssh_session() {
    let lab = lab_or_skip!("the_lockout_guard_keeps_the_callers_ssh_session");
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    // The office (198.51.100.0/24) reaches tcp/22 through `office-ssh`.
    let ssh = [("SSH_CONNECTION", "198.51.100.7 50022 192.0.2.1 22")];
    let run = |args: &[&str]| daemon.ctl_with_env(&ssh, args);

    let without_office = config("driver").replace(", \"198.51.100.0/24\"]", "]");
    std::fs::write(&daemon.config, &without_office).unwrap();
    let refused = run(&["reload"]);
    assert_eq!(refused.status.code(), Some(exit::CONFLICT));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("this would cut your own SSH session from 198.51.100.7 to tcp/22")
            && stderr.contains("add `198.51.100.7/32` to rule `office-ssh`"),
        "{stderr}"
    );
    assert_eq!(daemon.status()["reloads"], 0);
    // Without an SSH session (or from elsewhere) it goes through; so does --force.
    let forced = run(&["reload", "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(daemon.status()["reloads"], 1);

    // A removal that would cut the session is refused the same way.
    daemon.ctl_ok(&["allow", "198.51.100.7", "--rule", "office-ssh"]);
    let refused = run(&["remove", "198.51.100.7"]);
    assert_eq!(refused.status.code(), Some(exit::CONFLICT));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cut your own SSH session"));
    assert_eq!(daemon.status()["runtime_entries"], 1);
    let forced = run(&["remove", "198.51.100.7", "--force"]);
    assert!(forced.status.success());
    assert_eq!(daemon.status()["runtime_entries"], 0);
    // A session the firewall never admitted (another interface) is no reason to refuse.
    let elsewhere = [("SSH_CONNECTION", "192.0.2.50 50022 192.0.2.1 22")];
    daemon.ctl_ok(&["allow", "198.51.100.8", "--rule", "office-ssh"]);
    let output = daemon.ctl_with_env(&elsewhere, &["remove", "198.51.100.8"]);
    assert!(output.status.success());
}

#[test]
fn check_warns_when_no_rule_admits_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firewall.toml");
    std::fs::write(
        &path,
        "interfaces = [\"lo\"]\n[[rules]]\nname = \"vpn\"\nports = [\"udp/4500\"]\nsources = [\"203.0.113.0/24\"]\n",
    )
    .unwrap();
    let output = ctl(&["check", "--config", path.to_str().unwrap()]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("warning: no rule admits SSH (tcp/"),
        "{stdout}"
    );
}
