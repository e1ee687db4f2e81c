//! Flow tracking end to end: the edge's own connections (and those it
//! forwards with NAT) get their replies through from peers no rule
//! admits, while everything unsolicited from those same peers is still
//! dropped, and flows end when their connection does.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use firewall_tests::{
    addr::*,
    config,
    daemon::Daemon,
    frames::*,
    lab::{Lab, Netns, veth},
    lab_or_skip, slowdown,
    traffic::{
        Connect, bind_udp, connect_tcp, echo_tcp_once, echo_udp, listen_tcp, ping, send_frames,
        tcp_stream, udp_delivered,
    },
};
use serde_json::Value;

/// Where the peer serves.
const SERVER_PORT: u16 = 8080;
const DNS_PORT: u16 = 5353;
/// A port the edge listens on that no rule exposes.
const OTHER_PORT: u16 = 8081;

/// The lab's config with `[flows]` settings appended.
fn with_flows(settings: &str) -> String {
    format!("{}\n[flows]\n{settings}\n", config("driver"))
}

/// A frame from `peer` to the edge carrying `transport` of `protocol`.
fn frame_from(peer: IpAddr, protocol: u8, transport: &[u8]) -> Vec<u8> {
    match peer {
        IpAddr::V4(peer) => ethernet(&[], ETH_IPV4, &ipv4(peer, protocol, &[], 0, transport)),
        IpAddr::V6(peer) => ethernet(&[], ETH_IPV6, &ipv6(peer, &[], protocol, transport)),
    }
}

/// A segment from `peer`:`peer_port` to the edge's `edge_port`.
fn segment(peer: IpAddr, peer_port: u16, edge_port: u16, flags: u8) -> Vec<u8> {
    frame_from(peer, TCP, &tcp_segment(peer_port, edge_port, flags))
}

fn count(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

/// Connects from `source` in `ns` to an echo server the peer starts at
/// `target`, and checks that `message` comes back; the connection and the
/// server, which returns what it echoed once the connection closes.
fn exchange(
    lab: &Lab,
    ns: &Netns,
    source: SocketAddr,
    target: SocketAddr,
    message: &[u8],
) -> (std::net::TcpStream, std::thread::JoinHandle<Vec<u8>>) {
    let server = echo_tcp_once(&lab.peer, target);
    let mut stream = tcp_stream(ns, source, target)
        .unwrap_or_else(|err| panic!("{source} connects to {target}: {err}"));
    stream.write_all(message).unwrap();
    let mut answer = vec![0u8; message.len()];
    stream
        .read_exact(&mut answer)
        .unwrap_or_else(|err| panic!("the answer from {target}: {err}"));
    assert_eq!(answer, message);
    (stream, server)
}

/// A UDP query from `source` in `ns` to `target`, and its answer if one
/// came back in time.
fn udp_query(ns: &Netns, source: SocketAddr, target: SocketAddr) -> std::io::Result<Vec<u8>> {
    let socket = bind_udp(ns, source);
    socket.connect(target)?;
    socket.send(b"query from the edge")?;
    let mut buffer = [0u8; 256];
    let len = socket.recv(&mut buffer)?;
    Ok(buffer[..len].to_vec())
}

#[test]
fn the_edge_talks_to_peers_no_rule_admits_and_they_still_cannot_reach_it() {
    let lab = lab_or_skip!("the_edge_talks_to_peers_no_rule_admits_and_they_still_cannot_reach_it");
    lab.edge.sysctl("net.ipv4.ping_group_range", "0 0");
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    let families: [(IpAddr, IpAddr, u16); 2] = [
        (EDGE_V4.into(), STRANGER_V4.into(), 40100),
        (EDGE_V6.into(), STRANGER_V6.into(), 40101),
    ];
    for (edge, peer, client_port) in families {
        // Listening, so that only the firewall can keep a SYN out.
        let _listener = listen_tcp(&lab.edge, at(edge, OTHER_PORT));
        let before = daemon.settled_stats();
        let request = b"request from the edge, and its answer";
        let (stream, server) = exchange(
            &lab,
            &lab.edge,
            at(edge, client_port),
            at(peer, SERVER_PORT),
            request,
        );

        let answers = echo_udp(&lab.peer, at(peer, DNS_PORT));
        let answer = udp_query(&lab.edge, at(edge, 0), at(peer, DNS_PORT))
            .unwrap_or_else(|err| panic!("UDP answer from {peer}: {err}"));
        assert_eq!(answer, b"query from the edge");
        assert!(ping(&lab.edge, edge, peer), "ping {peer} from the edge");
        // Nothing listens on the peer's DNS_PORT + 1: its port unreachable
        // quotes the edge's datagram, so it passes and the socket learns.
        let refused = udp_query(&lab.edge, at(edge, 0), at(peer, DNS_PORT + 1))
            .expect_err("no answer from a closed port");
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "the ICMP error about the edge's own datagram reaches it"
        );

        let during = daemon.settled_stats();
        // SYN-ACK, data and ACKs, the UDP answer, the echo reply.
        assert!(during.passed_since(&before, "return_traffic") >= 4);
        assert_eq!(during.passed_since(&before, "icmp_error"), 1);
        during.assert_drops_since(&before, &[]);
        let flows = &during.0["flows"];
        assert!(count(&flows["tcp"]) >= 1, "{flows}");
        assert!(count(&flows["udp"]) >= 2, "{flows}");
        assert!(count(&flows["icmp"]) >= 1, "{flows}");
        assert_eq!(count(&flows["evicted"]), 0, "{flows}");
        // `stats` swept and published the table: `status` shows it too.
        assert_eq!(&daemon.status()["flows"], flows);

        // Meanwhile, the same peer cannot start anything: real sockets ...
        assert_eq!(
            connect_tcp(&lab.peer, peer, at(edge, 443)),
            Connect::TimedOut,
            "exposed port, source not allowlisted"
        );
        assert_eq!(
            connect_tcp(&lab.peer, peer, at(edge, OTHER_PORT)),
            Connect::TimedOut
        );
        let receiver = bind_udp(&lab.edge, at(edge, OTHER_PORT));
        assert!(!udp_delivered(&lab.peer, peer, &receiver));
        // ... and crafted frames, counted exactly.
        let before = daemon.settled_stats();
        let frames = vec![
            segment(peer, 50000, 443, TCP_SYN),
            segment(peer, 50000, OTHER_PORT, TCP_SYN),
            frame_from(peer, UDP, &udp_from(DNS_PORT, OTHER_PORT, b"unsolicited")),
            // The tracked connection's addresses, the wrong port pair.
            segment(peer, SERVER_PORT + 1, client_port, TCP_ACK),
            segment(peer, SERVER_PORT, client_port + 10, TCP_ACK),
            // Its very port pair, but a SYN: never a reply.
            segment(peer, SERVER_PORT, client_port, TCP_SYN),
        ];
        send_frames(&lab.peer, PEER_IF, frames);
        let after = daemon.settled_stats();
        after.assert_drops_since(&before, &[("not_allowlisted", 1), ("port_closed", 5)]);
        assert_eq!(after.passed_since(&before, "return_traffic"), 0);

        drop(stream);
        assert_eq!(server.join().unwrap(), request);
        assert_eq!(answers.join().unwrap(), 1);
    }
}

#[test]
fn a_connection_forwarded_through_the_edge_with_nat_is_tracked() {
    let lab = lab_or_skip!("a_connection_forwarded_through_the_edge_with_nat_is_tracked");
    // An internal client behind the edge, which masquerades it on edge0.
    let inner = Netns::create(format!("{}-lan", lab.edge.name));
    veth(&lab.edge, "lan0", &inner, "inner0");
    let router: IpAddr = "198.51.100.129".parse().unwrap();
    let client: IpAddr = "198.51.100.130".parse().unwrap();
    lab.edge.ip(&format!("addr add {router}/25 dev lan0"));
    lab.edge.ip("link set lan0 up");
    inner.ip("link set lo up");
    inner.ip(&format!("addr add {client}/25 dev inner0"));
    inner.ip("link set inner0 up");
    inner.ip(&format!("route add default via {router}"));
    lab.edge.sysctl("net.ipv4.ip_forward", "1");
    let nat = "table ip fwt_nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  oifname \"edge0\" masquerade\n }\n}\n";
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.edge.name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("running nft");
    nft.stdin.take().unwrap().write_all(nat.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success(), "nft: masquerade on edge0");

    let daemon = Daemon::start(&lab.edge, &config("driver"));
    let before = daemon.settled_stats();
    let request = b"forwarded, masqueraded, and answered";
    let (stream, server) = exchange(
        &lab,
        &inner,
        at(client, 40200),
        at(STRANGER_V4, SERVER_PORT),
        request,
    );
    drop(stream);
    assert_eq!(server.join().unwrap(), request);
    let after = daemon.settled_stats();
    assert!(after.passed_since(&before, "return_traffic") >= 2);
    after.assert_drops_since(&before, &[]);
    assert!(count(&after.0["flows"]["tcp"]) >= 1);
    // The peer still cannot reach the edge's address itself.
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443)),
        Connect::TimedOut
    );
}

#[test]
fn a_late_udp_reply_is_dropped_after_the_idle_timeout() {
    let lab = lab_or_skip!("a_late_udp_reply_is_dropped_after_the_idle_timeout");
    let udp_timeout = Duration::from_secs(2) * slowdown();
    let daemon = Daemon::start(
        &lab.edge,
        &with_flows(&format!("udp_timeout = \"{}s\"", udp_timeout.as_secs())),
    );
    let edge = bind_udp(&lab.edge, at(EDGE_V4, 40300));
    let peer = bind_udp(&lab.peer, at(STRANGER_V4, DNS_PORT));
    edge.send_to(b"query", at(STRANGER_V4, DNS_PORT)).unwrap();
    let mut buffer = [0u8; 64];
    let (_, from) = peer.recv_from(&mut buffer).expect("the query arrives");
    peer.send_to(b"answer", from).unwrap();
    let (len, _) = edge.recv_from(&mut buffer).expect("the answer passes");
    assert_eq!(&buffer[..len], b"answer");

    std::thread::sleep(udp_timeout + Duration::from_millis(500) * slowdown());
    let before = daemon.settled_stats();
    peer.send_to(b"late answer", from).unwrap();
    assert!(
        edge.recv_from(&mut buffer).is_err(),
        "a reply after udp_timeout is dropped"
    );
    let after = daemon.settled_stats();
    after.assert_drops_since(&before, &[("port_closed", 1)]);
    assert_eq!(after.passed_since(&before, "return_traffic"), 0);
    // The sweep deleted the timed-out flow; nothing was evicted.
    let flows = &after.0["flows"];
    assert_eq!(count(&flows["udp"]), 0, "{flows}");
    assert_eq!(count(&flows["created"]), 1, "{flows}");
    assert_eq!(count(&flows["evicted"]), 0, "{flows}");
}

/// The edge's connection from `client_port` to the peer's echo server.
fn edge_exchange(
    lab: &Lab,
    client_port: u16,
) -> (std::net::TcpStream, std::thread::JoinHandle<Vec<u8>>) {
    exchange(
        lab,
        &lab.edge,
        at(EDGE_V4, client_port),
        at(STRANGER_V4, SERVER_PORT),
        b"hello",
    )
}

/// The `tcp_close_timeout` of the close test: long enough for a segment
/// sent right after the close to make it on a slow guest.
fn tcp_close_timeout() -> Duration {
    Duration::from_secs(1) * slowdown()
}

/// After the close timeout, a late segment of the connection on
/// `client_port` is dropped; before it, one passed.
fn late_segment_is_dropped_after_close(lab: &Lab, daemon: &Daemon, client_port: u16) {
    assert!(
        late_segment_passes(lab, daemon, client_port),
        "within the close timeout a last segment passes"
    );
    std::thread::sleep(tcp_close_timeout() + Duration::from_millis(500) * slowdown());
    let before = daemon.settled_stats();
    assert!(!late_segment_passes(lab, daemon, client_port));
    daemon
        .settled_stats()
        .assert_drops_since(&before, &[("port_closed", 1)]);
}

#[test]
fn after_fin_or_rst_late_segments_are_dropped_once_the_close_timeout_passed() {
    let lab =
        lab_or_skip!("after_fin_or_rst_late_segments_are_dropped_once_the_close_timeout_passed");
    let daemon = Daemon::start(
        &lab.edge,
        &with_flows(&format!(
            "tcp_close_timeout = \"{}s\"",
            tcp_close_timeout().as_secs()
        )),
    );

    // FIN both ways: the edge closes its side, the peer answers with its FIN.
    let (mut stream, server) = edge_exchange(&lab, 40400);
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the peer's FIN passes");
    assert_eq!(server.join().unwrap(), b"hello");
    late_segment_is_dropped_after_close(&lab, &daemon, 40400);

    // RST: the edge aborts the connection.
    let (stream, server) = edge_exchange(&lab, 40401);
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    server.join().unwrap();
    late_segment_is_dropped_after_close(&lab, &daemon, 40401);
}

#[test]
fn filling_the_flow_table_past_max_flows_counts_evictions() {
    let lab = lab_or_skip!("filling_the_flow_table_past_max_flows_counts_evictions");
    let daemon = Daemon::start(&lab.edge, &with_flows("max_flows = 64"));
    let socket: UdpSocket = bind_udp(&lab.edge, at(EDGE_V4, 40500));
    const FLOWS: u64 = 200;
    for port in 0..FLOWS as u16 {
        socket.send_to(b"x", at(STRANGER_V4, 10000 + port)).unwrap();
    }
    let stats = daemon.settled_stats();
    let flows = &stats.0["flows"];
    let live = count(&flows["tcp"]) + count(&flows["udp"]) + count(&flows["icmp"]);
    assert_eq!(count(&flows["capacity"]), 64);
    assert_eq!(count(&flows["created"]), FLOWS, "{flows}");
    assert!(live <= 64, "{flows}");
    assert_eq!(count(&flows["evicted"]), FLOWS - live, "{flows}");
    assert!(daemon.log().contains("the flow table is full"));
    let text = String::from_utf8(daemon.ctl(&["stats"]).stdout).unwrap();
    assert!(
        text.contains(&format!("{live} tracked"))
            && text.contains(&format!("of 64; {} evicted", FLOWS - live)),
        "{text}"
    );
}

#[test]
fn without_track_outbound_replies_are_dropped_and_a_reload_turns_tracking_on_and_off() {
    let lab = lab_or_skip!(
        "without_track_outbound_replies_are_dropped_and_a_reload_turns_tracking_on_and_off"
    );
    let off = config("driver").replace("xdp_mode", "track_outbound = false\nxdp_mode");
    let daemon = Daemon::start(&lab.edge, &off);
    // Through TCX, pinned; or, before Linux 6.6, a classic clsact filter.
    let egress_pin = daemon.bpf_dir.join("links").join(EDGE_IF).join("tc-egress");
    let egress = || egress_pin.exists() || lab.edge.tc_egress_filter(EDGE_IF);
    let connects = || {
        let _server = listen_tcp(&lab.peer, at(STRANGER_V4, SERVER_PORT));
        connect_tcp(&lab.edge, EDGE_V4.into(), at(STRANGER_V4, SERVER_PORT)) == Connect::Connected
    };
    assert!(!egress(), "no TC program without tracking");
    assert_eq!(daemon.status()["flows"], Value::Null);
    assert!(!connects(), "the SYN-ACK is dropped without tracking");

    let status = daemon.reload(&config("driver"));
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert!(egress());
    assert!(connects(), "tracking on: the SYN-ACK passes");

    let status = daemon.reload(&off);
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert!(!egress(), "the TC program is detached again");
    assert_eq!(daemon.status()["flows"], Value::Null);
    assert!(!connects());
}

/// A late segment of the edge's connection from `client_port`: passes as
/// return traffic exactly when its flow is in the table.
fn late_segment_passes(lab: &Lab, daemon: &Daemon, client_port: u16) -> bool {
    let before = daemon.settled_stats();
    send_frames(
        &lab.peer,
        PEER_IF,
        vec![segment(
            STRANGER_V4.into(),
            SERVER_PORT,
            client_port,
            TCP_ACK,
        )],
    );
    daemon
        .settled_stats()
        .passed_since(&before, "return_traffic")
        == 1
}

#[test]
fn tracked_flows_survive_a_daemon_restart_and_a_new_max_flows() {
    let lab = lab_or_skip!("tracked_flows_survive_a_daemon_restart_and_a_new_max_flows");
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    let (stream, server) = edge_exchange(&lab, 40600);
    assert!(late_segment_passes(&lab, &daemon, 40600));

    // The edge sends nothing between: only the pinned table can know the flow.
    assert_eq!(daemon.kill(libc::SIGTERM), 0, "{}", daemon.log());
    daemon.spawn_and_wait();
    assert!(count(&daemon.status()["flows"]["tcp"]) >= 1);
    assert!(late_segment_passes(&lab, &daemon, 40600));

    std::fs::write(&daemon.config, with_flows("max_flows = 128")).unwrap();
    assert_eq!(daemon.kill(libc::SIGTERM), 0, "{}", daemon.log());
    daemon.spawn_and_wait();
    assert_eq!(count(&daemon.status()["flows"]["capacity"]), 128);
    assert!(
        daemon
            .log()
            .contains("carried tracked flows into the resized table")
    );
    assert!(
        late_segment_passes(&lab, &daemon, 40600),
        "the flow was carried into the resized table"
    );
    drop(stream);
    assert_eq!(server.join().unwrap(), b"hello");
}

#[test]
fn a_start_that_fails_leaves_the_pinned_flow_table_to_the_running_programs() {
    let lab =
        lab_or_skip!("a_start_that_fails_leaves_the_pinned_flow_table_to_the_running_programs");
    let mut daemon = Daemon::start(&lab.edge, &config("driver"));
    daemon.ctl_ok(&["allow", "192.0.2.9", "--rule", "office-ssh"]);
    assert_eq!(daemon.kill(libc::SIGTERM), 0, "{}", daemon.log());

    // A new table size, and a config the runtime entry no longer fits:
    // the start fails after the config is read, and must not have swapped
    // in a new flow table that the running programs do not record into.
    let without_office = config("driver")
        .split("[[rules]]\nname = \"office-ssh\"")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        &daemon.config,
        format!("{without_office}\n[flows]\nmax_flows = 128\n"),
    )
    .unwrap();
    let (code, log) = daemon.run_expecting_failure();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("no longer fit the config"), "{log}");
    assert!(!log.contains("resizing the flow table"), "{log}");

    // A connection the firewall left running records meanwhile.
    let (stream, server) = edge_exchange(&lab, 40610);
    std::fs::write(&daemon.config, with_flows("max_flows = 128")).unwrap();
    daemon.spawn_and_wait();
    assert_eq!(count(&daemon.status()["flows"]["capacity"]), 128);
    assert!(
        late_segment_passes(&lab, &daemon, 40610),
        "the flow recorded after the failed start was carried"
    );
    drop(stream);
    assert_eq!(server.join().unwrap(), b"hello");
}

#[test]
fn a_connection_older_than_the_daemon_is_tracked_from_its_next_outgoing_packet() {
    let lab =
        lab_or_skip!("a_connection_older_than_the_daemon_is_tracked_from_its_next_outgoing_packet");
    let (mut stream, server) = edge_exchange(&lab, 40700);
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    assert!(
        !late_segment_passes(&lab, &daemon, 40700),
        "before the edge sends, nothing knows the connection"
    );
    stream.write_all(b" again").unwrap();
    let mut answer = [0u8; 6];
    stream
        .read_exact(&mut answer)
        .expect("once the edge sent, the answer passes");
    assert_eq!(&answer, b" again");
    assert!(late_segment_passes(&lab, &daemon, 40700));
    drop(stream);
    assert_eq!(server.join().unwrap(), b"hello again");
}

#[test]
fn monitor_mode_counts_return_traffic_like_any_verdict() {
    let lab = lab_or_skip!("monitor_mode_counts_return_traffic_like_any_verdict");
    let monitor = config("driver").replace("xdp_mode", "enforce = false\nxdp_mode");
    let daemon = Daemon::start(&lab.edge, &monitor);
    let before = daemon.settled_stats();
    let (stream, server) = edge_exchange(&lab, 40800);
    drop(stream);
    server.join().unwrap();
    let after = daemon.settled_stats();
    assert!(after.passed_since(&before, "return_traffic") >= 2);
    after.assert_drops_since(&before, &[]);
    // An unsolicited SYN is counted as the drop it would be, and passes.
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, OTHER_PORT));
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, OTHER_PORT)),
        Connect::Connected
    );
    assert!(daemon.settled_stats().drops("port_closed") > after.drops("port_closed"));
}
