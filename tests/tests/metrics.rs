//! Prometheus metrics: scraped over HTTP from the daemon, parsed with a
//! real text-format parser, and equal to what `stats --json` and `feeds
//! --json` say.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use firewall_tests::{
    addr::*,
    daemon::{Daemon, poll},
    http::{self, HttpServer, Reply},
    lab::Lab,
    lab_or_skip,
    traffic::{Connect, connect_tcp, listen_tcp},
};
use prometheus_parse::{Scrape, Value};

const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9469);

/// `GET /metrics` on the edge's loopback: the status line and the body.
fn scrape(lab: &Lab) -> (String, Scrape) {
    let response = http::get(&lab.edge, METRICS, "/metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let scrape = Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).unwrap();
    (head.lines().next().unwrap_or_default().to_string(), scrape)
}

/// The value of `name` with exactly `labels` (with the `firewall_ctl_` prefix).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let full = format!("firewall_ctl_{name}");
    let sample = scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == full
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .unwrap_or_else(|| panic!("no {full} {labels:?}"));
    match sample.value {
        Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => value,
        _ => panic!("{full} is not a number"),
    }
}

#[test]
fn metrics_are_scraped_over_http_and_equal_the_cli() {
    let lab = lab_or_skip!("metrics_are_scraped_over_http_and_equal_the_cli");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let server = HttpServer::start(&lab.edge, "127.0.0.1:0".parse().unwrap());
    server.set(Reply::ok(
        serde_json::json!({"addresses": ["198.51.100.0/24"], "ipv6_addresses": ["2001:db8:fa::/48"]})
            .to_string(),
    ));
    let config = format!(
        r#"
interfaces = ["edge0"]
xdp_mode = "driver"

[metrics]
listen = "127.0.0.1:9469"

[[feeds]]
name = "office"
url = "{}"
format = "fastly"

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/24"]
feeds = ["office"]
"#,
        server.url("/list")
    );
    let daemon = Daemon::start(&lab.edge, &config);
    let fetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (daemon.json(&["feeds"])["feeds"][0]["last_success"] != serde_json::Value::Null)
            .then_some(())
    });
    assert!(fetched.is_some(), "{}", daemon.log());
    assert_eq!(
        connect_tcp(&lab.peer, VENDOR_V4.into(), at(EDGE_V4, 443)),
        Connect::Connected
    );
    assert_eq!(
        connect_tcp(&lab.peer, STRANGER_V4.into(), at(EDGE_V4, 443)),
        Connect::TimedOut
    );
    daemon.ctl_ok(&["allow", "192.0.2.0/28", "--rule", "vendor"]);

    let stats = daemon.settled_stats();
    let (status, metrics) = scrape(&lab);
    assert!(status.contains("200"), "{status}");
    let (packets, bytes) = stats.rule("vendor");
    assert!(packets > 0);
    assert_eq!(
        value(&metrics, "allowed_packets_total", &[("rule", "vendor")]),
        packets as f64
    );
    assert_eq!(
        value(&metrics, "allowed_bytes_total", &[("rule", "vendor")]),
        bytes as f64
    );
    for reason in ["not_allowlisted", "port_closed", "malformed"] {
        assert_eq!(
            value(&metrics, "dropped_packets_total", &[("reason", reason)]),
            stats.drops(reason) as f64,
            "{reason}"
        );
    }
    assert!(stats.drops("not_allowlisted") > 0);
    assert_eq!(
        value(
            &metrics,
            "passed_packets_total",
            &[("reason", "return_traffic")]
        ),
        stats.passed("return_traffic") as f64
    );
    for (origin, count) in [("config", 1.0), ("cli", 1.0), ("feed:office", 2.0)] {
        assert_eq!(
            value(
                &metrics,
                "entries",
                &[("rule", "vendor"), ("origin", origin)]
            ),
            count,
            "{origin}"
        );
    }
    assert_eq!(value(&metrics, "feed_stale", &[("feed", "office")]), 0.0);
    assert_eq!(value(&metrics, "feed_failing", &[("feed", "office")]), 0.0);
    assert_eq!(
        value(
            &metrics,
            "feed_prefixes",
            &[("feed", "office"), ("family", "ipv4")]
        ),
        1.0
    );
    assert!(value(&metrics, "feed_age_seconds", &[("feed", "office")]) < 60.0);
    assert_eq!(value(&metrics, "enforcing", &[]), 1.0);
    assert_eq!(value(&metrics, "reloads_total", &[]), 0.0);
    assert_eq!(
        value(&metrics, "flow_table_capacity", &[]),
        stats.0["flows"]["capacity"].as_f64().unwrap()
    );
    assert_eq!(
        value(
            &metrics,
            "build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A failing feed shows.
    server.set(Reply::status(500, "down"));
    assert!(!daemon.ctl(&["feeds", "refresh"]).status.success());
    let (_, metrics) = scrape(&lab);
    assert_eq!(value(&metrics, "feed_failing", &[("feed", "office")]), 1.0);
}
