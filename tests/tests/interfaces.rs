//! Interfaces change under a running firewall: rebuilt by the host, or
//! added and removed by a reload. `status` reports what the kernel runs.

use std::time::Duration;

use firewall_tests::{
    addr::*,
    config,
    daemon::{Daemon, poll},
    lab::veth,
    lab_or_skip,
    traffic::{Connect, connect_tcp, listen_tcp},
};
use serde_json::Value;

/// The `state` of `interface` in `status --json`.
fn state(daemon: &Daemon, interface: &str) -> String {
    let status = daemon.status();
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == interface)
        .map(|entry| entry["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{interface} not in {status}"))
}

/// Waits until `status` reports `interface` in `wanted` state.
fn await_state(daemon: &Daemon, interface: &str, wanted: &str) {
    let reached = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (state(daemon, interface) == wanted).then_some(())
    });
    assert!(
        reached.is_some(),
        "{interface} never became {wanted}: {}\n{}",
        daemon.status(),
        daemon.log()
    );
}

#[test]
fn a_recreated_interface_is_protected_again_and_status_tells_the_truth() {
    let lab = lab_or_skip!("a_recreated_interface_is_protected_again_and_status_tells_the_truth");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    assert_eq!(state(&daemon, EDGE_IF), "protected");
    assert_eq!(daemon.status()["interfaces"][0]["xdp_mode"], "driver");

    lab.unwire();
    await_state(&daemon, EDGE_IF, "missing");
    let human = daemon.ctl_ok(&["status"]);
    assert!(human.contains("edge0 (MISSING"), "{human}");

    // Rebuilt with the same name: the program is attached again on its own.
    lab.wire();
    await_state(&daemon, EDGE_IF, "protected");
    assert!(lab.edge.xdp_attached(EDGE_IF));
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443)),
        Connect::TimedOut
    );
    assert_eq!(
        connect_tcp(&lab.peer, VENDOR_V4.into(), at(EDGE_V4, 443)),
        Connect::Connected
    );
    assert!(daemon.log().contains("re-attached the XDP program"));
    // ... and so is flow tracking: the edge's own connection gets its answer.
    let _server = listen_tcp(&lab.peer, at(STRANGER_V4, 8080));
    assert_eq!(
        connect_tcp(&lab.edge, EDGE_V4.into(), at(STRANGER_V4, 8080)),
        Connect::Connected
    );

    // A link-attached program cannot be removed from under the firewall
    // by another tool.
    let off = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.edge.name,
            "link",
            "set",
            "dev",
            EDGE_IF,
            "xdp",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!off.status.success());
    assert!(
        String::from_utf8_lossy(&off.stderr).contains("Can't replace active BPF XDP link"),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    assert_eq!(state(&daemon, EDGE_IF), "protected");
}

#[test]
fn a_reload_adds_and_removes_interfaces() {
    let lab = lab_or_skip!("a_reload_adds_and_removes_interfaces");
    veth(&lab.edge, "edge1", &lab.peer, "peer1");
    lab.edge.ip("link set edge1 up");
    lab.peer.ip("link set peer1 up");
    let one = config("driver");
    let daemon = Daemon::start(&lab.edge, &one);
    assert!(!lab.edge.xdp_attached("edge1"));

    let both = one.replace("[\"edge0\"]", "[\"edge0\", \"edge1\"]");
    let status = daemon.reload(&both);
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert!(lab.edge.xdp_attached("edge1"));
    await_state(&daemon, "edge1", "protected");
    assert_eq!(state(&daemon, EDGE_IF), "protected");

    let second_only = one.replace("[\"edge0\"]", "[\"edge1\"]");
    let status = daemon.reload(&second_only);
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert!(!lab.edge.xdp_attached(EDGE_IF), "edge0 is detached");
    assert!(lab.edge.xdp_attached("edge1"));
    let names: Vec<Value> = daemon.status()["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].clone())
        .collect();
    assert_eq!(names, ["edge1"]);

    // A new mode re-attaches in it.
    let status = daemon.reload(&second_only.replace("xdp_mode = \"driver\"", "xdp_mode = \"skb\""));
    assert!(status["last_reload_error"].is_null(), "{status}");
    let reported = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (daemon.status()["interfaces"][0]["xdp_mode"] == "skb").then_some(())
    });
    assert!(reported.is_some(), "{}", daemon.status());
    assert_eq!(state(&daemon, "edge1"), "protected");
}
