//! Inputs that once hurt the daemon: paths that are not what they seem,
//! files that never end, a busy interface, and text that would drive a
//! terminal.

use std::os::unix::fs::symlink;

use firewall_tests::{
    addr::*,
    config,
    daemon::{Daemon, ctl},
    exit, lab_or_skip,
};

#[test]
fn only_a_stale_socket_is_ever_replaced() {
    let lab = lab_or_skip!("only_a_stale_socket_is_ever_replaced");
    let mut daemon = Daemon::prepare(&lab.edge, &config("driver"));
    std::fs::write(&daemon.socket, "precious data\n").unwrap();
    let (code, log) = daemon.run_expecting_failure();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "`{}` is a regular file, not a socket",
            daemon.socket.display()
        )),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&daemon.socket).unwrap(),
        "precious data\n"
    );
    assert!(!lab.edge.xdp_attached(EDGE_IF));

    // `check` refuses the same config, naming the line.
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "x").unwrap();
    let path = dir.path().join("firewall.toml");
    std::fs::write(
        &path,
        config("skb").replace("edge0", "lo").replace(
            "xdp_mode = \"skb\"",
            &format!("xdp_mode = \"skb\"\nsocket = \"{}\"", precious.display()),
        ),
    )
    .unwrap();
    let output = ctl(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 4: `socket`:") && stderr.contains("is a regular file, not a socket"),
        "{stderr}"
    );

    // A stale socket (its daemon was killed) is replaced.
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    daemon.kill(libc::SIGKILL);
    daemon.spawn_and_wait();

    // On exit the daemon removes its own socket, and only that: not a file
    // that took its place meanwhile.
    std::fs::remove_file(&daemon.socket).unwrap();
    std::fs::write(&daemon.socket, "someone else's\n").unwrap();
    daemon.kill(libc::SIGTERM);
    assert_eq!(
        std::fs::read_to_string(&daemon.socket).unwrap(),
        "someone else's\n"
    );
}

/// A FIFO or a device in place of the config is refused without hanging:
/// status keeps answering and SIGTERM is honoured.
#[test]
fn a_fifo_or_a_device_as_config_is_refused_without_hanging() {
    let lab = lab_or_skip!("a_fifo_or_a_device_as_config_is_refused_without_hanging");
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    std::fs::remove_file(&daemon.config).unwrap();
    let fifo = std::ffi::CString::new(daemon.config.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let status = daemon.reload_with_signal();
    let error = status["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("it is a FIFO, not a regular file"),
        "{error}"
    );
    let reported = daemon.ctl_err(&["reload"], exit::INVALID_INPUT);
    assert!(
        reported.contains("it is a FIFO, not a regular file"),
        "{reported}"
    );

    std::fs::remove_file(&daemon.config).unwrap();
    symlink("/dev/zero", &daemon.config).unwrap();
    let reported = daemon.ctl_err(&["reload"], exit::INVALID_INPUT);
    assert!(reported.contains("it is a character device"), "{reported}");
    assert_eq!(daemon.status()["reloads_rejected"], 3);

    let code = daemon.kill(libc::SIGTERM);
    let log = daemon.log();
    assert_eq!(code, 0, "{log}");
    assert!(lab.edge.xdp_attached(EDGE_IF), "the pinned firewall stays");
}

#[test]
fn a_busy_interface_is_reported_as_such() {
    let lab = lab_or_skip!("a_busy_interface_is_reported_as_such");
    let _first = Daemon::start(&lab.edge, &config("driver"));
    for mode in ["driver", "auto", "skb"] {
        let (code, log) = Daemon::start_expecting_failure(&lab.edge, &config(mode));
        assert_eq!(code, 1, "{log}");
        assert!(
            log.contains("another XDP program is already attached to `edge0`"),
            "{mode}: {log}"
        );
    }
    assert!(
        lab.edge.xdp_attached(EDGE_IF),
        "the first daemon's program stays"
    );
}

#[test]
fn control_characters_never_reach_the_terminal_or_the_log() {
    let lab = lab_or_skip!("control_characters_never_reach_the_terminal_or_the_log");
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    for (args, code) in [
        (
            &["allow", "192.0.2.1\u{1b}[2J", "--rule", "vendor"][..],
            exit::INVALID_INPUT,
        ),
        (
            &["allow", "192.0.2.1", "--rule", "vendor\u{1b}]0;pwned\u{7}"],
            exit::NOT_FOUND,
        ),
        (
            &[
                "allow",
                "192.0.2.1",
                "--rule",
                "vendor",
                "--comment",
                "a\u{1b}[31mred",
            ],
            exit::INVALID_INPUT,
        ),
        (
            &["explain", "192.0.2.1\u{1b}[2J", "443"],
            exit::INVALID_INPUT,
        ),
    ] {
        let stderr = daemon.ctl_err(args, code);
        assert!(!stderr.contains('\u{1b}'), "{args:?}: {stderr:?}");
        assert!(
            stderr.contains("\\u{1b}") || stderr.contains("control characters"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!daemon.log().contains('\u{1b}'), "{:?}", daemon.log());
}
