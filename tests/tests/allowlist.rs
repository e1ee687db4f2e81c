//! Real TCP and UDP sockets through the real daemon, in driver and skb mode.

use std::net::{IpAddr, SocketAddr};

use firewall_tests::{
    addr::*,
    config,
    daemon::Daemon,
    lab::Lab,
    lab_or_skip, root_or_skip,
    traffic::{Connect, bind_udp, connect_tcp, listen_tcp, udp_delivered},
};

fn allowlist_is_enforced(mode: &str) {
    let lab = Lab::new();
    let _listeners: Vec<_> = [
        at(EDGE_V4, 443),
        at(EDGE_V6, 443),
        at(EDGE_V4, 22),
        at(EDGE_V4, 80),
        at(EDGE_V6, 80),
    ]
    .into_iter()
    .map(|address| listen_tcp(&lab.edge, address))
    .collect();
    let udp_exposed_v4 = bind_udp(&lab.edge, at(EDGE_V4, 4500));
    let udp_exposed_v6 = bind_udp(&lab.edge, at(EDGE_V6, 4500));
    let udp_closed = bind_udp(&lab.edge, at(EDGE_V4, 5000));
    let tcp = |source: IpAddr, target: SocketAddr| connect_tcp(&lab.peer, source, target);

    // Without the firewall everyone gets in: the drops below are ours.
    assert_eq!(
        tcp(STRANGER_V4.into(), at(EDGE_V4, 443)),
        Connect::Connected
    );
    assert!(udp_delivered(&lab.peer, STRANGER_V4.into(), &udp_closed));

    let daemon = Daemon::start(&lab.edge, &config(mode));
    let status = daemon.status();
    assert_eq!(status["interfaces"][0]["name"], "edge0");
    assert_eq!(status["interfaces"][0]["xdp_mode"], mode);
    assert_eq!(status["mode"], "enforce");
    assert!(lab.edge.xdp_attached(EDGE_IF));
    let socket_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&daemon.socket).unwrap().permissions(),
    );
    assert_eq!(
        socket_mode & 0o777,
        0o660,
        "the control socket is root's and its group's (root, without `control_group`)"
    );
    let socket = daemon.socket.clone();

    // Allowlisted sources reach exposed ports, over IPv4 and IPv6.
    assert_eq!(tcp(VENDOR_V4.into(), at(EDGE_V4, 443)), Connect::Connected);
    assert_eq!(tcp(VENDOR_V6.into(), at(EDGE_V6, 443)), Connect::Connected);
    assert_eq!(tcp(OFFICE_V4.into(), at(EDGE_V4, 22)), Connect::Connected);
    assert!(udp_delivered(&lab.peer, VENDOR_V4.into(), &udp_exposed_v4));
    assert!(udp_delivered(&lab.peer, VENDOR_V6.into(), &udp_exposed_v6));

    // The same sources are dropped on ports that listen but are not exposed.
    assert_eq!(tcp(VENDOR_V4.into(), at(EDGE_V4, 80)), Connect::TimedOut);
    assert_eq!(tcp(VENDOR_V6.into(), at(EDGE_V6, 80)), Connect::TimedOut);
    assert!(!udp_delivered(&lab.peer, VENDOR_V4.into(), &udp_closed));

    // Strangers are dropped on exposed ports.
    assert_eq!(tcp(STRANGER_V4.into(), at(EDGE_V4, 443)), Connect::TimedOut);
    assert_eq!(tcp(STRANGER_V6.into(), at(EDGE_V6, 443)), Connect::TimedOut);
    assert!(!udp_delivered(
        &lab.peer,
        STRANGER_V4.into(),
        &udp_exposed_v4
    ));

    // Overlap: 203.0.113.70 (in both rules) reaches 443 and 22;
    // 203.0.113.10 (only in the /24) reaches 443 but not 22.
    assert_eq!(tcp(INNER_V4.into(), at(EDGE_V4, 443)), Connect::Connected);
    assert_eq!(tcp(INNER_V4.into(), at(EDGE_V4, 22)), Connect::Connected);
    assert_eq!(tcp(VENDOR_V4.into(), at(EDGE_V4, 22)), Connect::TimedOut);

    let stats = daemon.stats();
    assert!(
        stats.rule("vendor").0 > 0 && stats.rule("office-ssh").0 > 0,
        "{stats:?}"
    );
    assert!(stats.drops("not_allowlisted") >= 4, "{stats:?}");
    assert!(stats.drops("port_closed") >= 3, "{stats:?}");
    assert_eq!(stats.drops("malformed"), 0);

    // SIGTERM stops the daemon cleanly, and the firewall stays: still
    // attached, still dropping strangers.
    let mut daemon = daemon;
    assert_eq!(daemon.kill(libc::SIGTERM), 0, "{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("the firewall stays attached and enforcing")
    );
    assert!(lab.edge.xdp_attached(EDGE_IF));
    assert!(!socket.exists(), "the socket is removed on exit");
    assert_eq!(tcp(STRANGER_V4.into(), at(EDGE_V4, 443)), Connect::TimedOut);
    assert_eq!(tcp(VENDOR_V4.into(), at(EDGE_V4, 443)), Connect::Connected);

    // `detach` removes it: the door is open again.
    let detached = daemon.detach(&[]);
    assert!(
        detached.contains("detached the XDP program from edge0"),
        "{detached}"
    );
    assert!(!lab.edge.xdp_attached(EDGE_IF));
    assert_eq!(
        tcp(STRANGER_V4.into(), at(EDGE_V4, 443)),
        Connect::Connected
    );
}

#[test]
fn allowlist_is_enforced_in_driver_mode() {
    if root_or_skip("allowlist_is_enforced_in_driver_mode") {
        allowlist_is_enforced("driver");
    }
}

#[test]
fn allowlist_is_enforced_in_skb_mode() {
    if root_or_skip("allowlist_is_enforced_in_skb_mode") {
        allowlist_is_enforced("skb");
    }
}

#[test]
fn arp_and_neighbor_discovery_keep_working() {
    let lab = lab_or_skip!("arp_and_neighbor_discovery_keep_working");
    let _v4 = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let _v6 = listen_tcp(&lab.edge, at(EDGE_V6, 443));
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    // Empty neighbour caches: the connections below need ARP and ND first.
    lab.edge.ip("neigh flush all");
    lab.peer.ip("neigh flush all");
    let before = daemon.stats();
    assert_eq!(
        connect_tcp(&lab.peer, VENDOR_V4.into(), at(EDGE_V4, 443)),
        Connect::Connected
    );
    assert_eq!(
        connect_tcp(&lab.peer, VENDOR_V6.into(), at(EDGE_V6, 443)),
        Connect::Connected
    );
    let after = daemon.stats();
    assert!(after.passed("arp") > before.passed("arp"), "{after:?}");
    assert!(
        after.passed("neighbor") > before.passed("neighbor"),
        "{after:?}"
    );
}
