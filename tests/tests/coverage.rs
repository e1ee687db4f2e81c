//! `explain --feed` and `explain --file`: before the vendor tries, whether
//! every address it publishes (or its support listed) would be admitted on
//! a port, which rule and entry admit each range, and what is not admitted
//! and how to fix it. Exit code 0 only when every range is admitted.

use std::time::Duration;

use firewall_tests::{
    daemon::{Daemon, poll, run_in},
    exit,
    http::{HttpServer, Reply},
    lab_or_skip,
};
use serde_json::Value;

/// The vendor's rule takes the feed `fastly` on tcp/443; the office lists
/// 198.51.100.0/25 on tcp/22.
fn config(url: &str) -> String {
    format!(
        r#"
interfaces = ["edge0"]
xdp_mode = "driver"

[[feeds]]
name = "fastly"
url = "{url}"
format = "fastly"

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/25"]
feeds = ["fastly"]

[[rules]]
name = "office"
ports = ["tcp/22"]
sources = ["198.51.100.0/25"]
"#
    )
}

#[test]
fn a_feed_and_a_support_list_are_checked_range_by_range_before_the_vendor_tries() {
    let lab = lab_or_skip!(
        "a_feed_and_a_support_list_are_checked_range_by_range_before_the_vendor_tries"
    );
    let server = HttpServer::start(&lab.edge, "127.0.0.1:0".parse().unwrap());
    server.set(Reply::ok(
        serde_json::json!({"addresses": ["198.51.100.0/24"], "ipv6_addresses": ["2001:db8:fa::/48"]})
            .to_string(),
    ));
    let daemon = Daemon::start(&lab.edge, &config(&server.url("/list")));
    let fetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (daemon.json(&["feeds"])["feeds"][0]["last_success"] != Value::Null).then_some(())
    });
    assert!(fetched.is_some(), "{}", daemon.log());

    // The feed is admitted whole on the port its rule exposes.
    let report: Value = serde_json::from_str(
        &daemon.ctl_ok(&["explain", "--feed", "fastly", "--port", "tcp/443", "--json"]),
    )
    .unwrap();
    assert_eq!(report["admitted"], 2, "{report}");
    assert_eq!(report["feed"], "fastly");
    let ranges = report["ranges"].as_array().unwrap();
    assert_eq!(ranges[0]["range"], "198.51.100.0/24");
    assert_eq!(ranges[0]["rule"], "vendor");
    assert_eq!(ranges[0]["entry"]["prefix"], "198.51.100.0/24");
    assert_eq!(ranges[0]["entry"]["origin"], "feed:fastly");
    assert_eq!(ranges[1]["range"], "2001:db8:fa::/48");

    // On a port no rule exposes, nothing is: exit code 4, each range named.
    let human = daemon.ctl_err(&["explain", "--feed", "fastly", "--port", "tcp/8443"], 4);
    assert!(human.is_empty(), "nothing on stderr: {human}");
    let out = daemon.ctl(&["explain", "--feed", "fastly", "--port", "tcp/8443"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("feed `fastly` on tcp/8443: 0 of 2 ranges admitted\n"),
        "{text}"
    );
    assert!(
        text.contains("198.51.100.0/24: no rule exposes tcp/8443;"),
        "{text}"
    );

    // Vendor support's list: one address admitted by the config, one range
    // only half admitted (the office's /25 is on tcp/22 only), one not at
    // all. The half and the rest are named, with the command that fixes it.
    let list = daemon.dir().join("from-support.txt");
    std::fs::write(
        &list,
        "# Acme egress, as sent by support\n203.0.113.9\n192.0.2.0/24\n198.51.100.0/23  # both halves\n",
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let out = daemon.ctl(&["explain", "--file", list, "--port", "tcp/443", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["admitted"], 1, "{report}");
    let ranges = report["ranges"].as_array().unwrap();
    assert_eq!(
        (ranges[0]["range"].as_str(), ranges[0]["admitted"].as_bool()),
        (Some("203.0.113.9/32"), Some(true))
    );
    assert_eq!(ranges[0]["entry"]["prefix"], "203.0.113.0/25");
    assert_eq!(
        ranges[1]["not_admitted"],
        serde_json::json!(["192.0.2.0/24"])
    );
    assert_eq!(
        ranges[1]["fix"],
        "firewall-ctl allow 192.0.2.0/24 --rule vendor"
    );
    assert_eq!(
        ranges[2]["not_admitted"],
        serde_json::json!(["198.51.101.0/24"])
    );
    assert_eq!(ranges[2]["parts"][0]["entry"]["prefix"], "198.51.100.0/24");

    // The fix it names works.
    daemon.ctl_ok(&[
        "allow",
        "192.0.2.0/24",
        "198.51.101.0/24",
        "--rule",
        "vendor",
    ]);
    daemon.ctl_ok(&["explain", "--file", list, "--port", "tcp/443"]);

    // From the config file alone, without the daemon (so without the
    // runtime entries just added), on the edge host whose interfaces the
    // config names: the vendor's /25 still admits the support's address.
    let offline = |args: &[&str]| {
        let config = daemon.config.to_str().unwrap();
        let args = [args, &["--port", "tcp/443", "--config", config, "--json"]].concat();
        run_in(&lab.edge, &[], &args)
    };
    // (The daemon here keeps its state, and the feed's copy, in a
    // `--state-dir` the config does not name.)
    let feed = offline(&["explain", "--feed", "fastly"]);
    assert_eq!(feed.status.code(), Some(exit::FAILED), "{feed:?}");
    assert!(
        String::from_utf8_lossy(&feed.stderr).contains("feed `fastly` has no last good list"),
        "{feed:?}"
    );
    let listed = offline(&["explain", "--file", list]);
    assert_eq!(listed.status.code(), Some(4), "{listed:?}");
    let report: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(report["admitted"], 1, "{report}");
    let unknown = offline(&["explain", "--feed", "nope"]);
    assert_eq!(unknown.status.code(), Some(exit::NOT_FOUND), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no feed `nope` in"),
        "{unknown:?}"
    );

    // Bad input: clear errors, nothing asked or changed.
    let err = daemon.ctl_err(
        &["explain", "--feed", "nope", "--port", "tcp/443"],
        exit::NOT_FOUND,
    );
    assert!(err.contains("no feed `nope` in the config"), "{err}");
    std::fs::write(
        daemon.dir().join("bad.txt"),
        "203.0.113.9\n203.0.113.5/24\n",
    )
    .unwrap();
    let bad = daemon.dir().join("bad.txt");
    let err = daemon.ctl_err(
        &["explain", "--file", bad.to_str().unwrap(), "--port", "443"],
        exit::INVALID_INPUT,
    );
    assert!(
        err.contains("bad.txt` line 2: `203.0.113.5/24` has host bits set"),
        "{err}"
    );
    let err = daemon.ctl_err(
        &["explain", "--feed", "fastly", "--port", "tcp/1-9"],
        exit::INVALID_INPUT,
    );
    assert!(
        err.contains("is a range; `explain` takes one port"),
        "{err}"
    );
}
