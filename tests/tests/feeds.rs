//! Vendor feeds end to end: a real HTTP server started by the test serves
//! lists in the vendors' formats; the daemon's rules follow them, and no
//! bad download ever takes the last good list out of force.

use std::{net::SocketAddr, time::Duration};

use firewall_tests::{
    addr::*,
    daemon::{Daemon, poll},
    http::{HttpProxy, HttpServer, HttpsServer, Reply},
    lab::Lab,
    lab_or_skip,
    traffic::{Connect, connect_tcp, listen_tcp},
    users::User,
};
use serde_json::{Value, json};

/// One rule exposing tcp/443 to the feed `vendor` only.
fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
interfaces = ["edge0"]
xdp_mode = "driver"

[[feeds]]
name = "vendor"
url = "{url}"
format = "fastly"
refresh = "1h"
timeout = "2s"
{extra}

[[rules]]
name = "vendor"
ports = ["tcp/443"]
feeds = ["vendor"]
"#
    )
}

/// A list in Fastly's format.
fn fastly(v4: &[&str]) -> Vec<u8> {
    serde_json::json!({"addresses": v4, "ipv6_addresses": ["2001:db8:fa::/48"]})
        .to_string()
        .into_bytes()
}

/// The feed's status, as `feeds --json` shows it.
fn feed(daemon: &Daemon) -> Value {
    daemon.json(&["feeds"])["feeds"][0].clone()
}

/// `feeds refresh vendor`: whether it succeeded, and its output.
fn refresh(daemon: &Daemon) -> (bool, String) {
    let output = daemon.ctl(&["feeds", "refresh", "vendor"]);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout),
    )
}

fn reaches(lab: &Lab, source: std::net::Ipv4Addr) -> bool {
    connect_tcp(&lab.peer, source.into(), at(EDGE_V4, 443)) == Connect::Connected
}

fn server(lab: &Lab) -> HttpServer {
    HttpServer::start(&lab.edge, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
}

/// 203.0.113.0/28 holds the vendor, 198.51.100.0/24 the office; 192.0.2.64/28 nobody.
const VENDOR_AND_SPARE: [&str; 2] = ["203.0.113.0/28", "192.0.2.64/28"];
const SPARE_AND_OFFICE: [&str; 2] = ["192.0.2.64/28", "198.51.100.0/24"];

#[test]
fn a_feed_admits_its_ranges_and_its_updates_add_and_remove_them() {
    let lab = lab_or_skip!("a_feed_admits_its_ranges_and_its_updates_add_and_remove_them");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let server = server(&lab);
    server.set(Reply::ok(fastly(&VENDOR_AND_SPARE)));
    // The list moved (as Cloudflare's did to a trailing-slash URL): the
    // redirect is followed.
    server.set_path(
        "/public-ip-list",
        Reply::Redirect("/public-ip-list/".to_string()),
    );
    let daemon = Daemon::start(&lab.edge, &config(&server.url("/public-ip-list"), ""));
    let fetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (feed(&daemon)["prefixes_v4"] == 2).then_some(())
    });
    assert!(fetched.is_some(), "{}\n{}", feed(&daemon), daemon.log());
    assert!(reaches(&lab, VENDOR_V4));
    assert!(!reaches(&lab, OFFICE_V4));
    let status = feed(&daemon);
    assert_eq!(status["prefixes_v6"], 1);
    assert_eq!(status["last_error"], Value::Null);
    assert_eq!(status["stale"], false);
    let listed = daemon.json(&["list"])["entries"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["prefix"] == "203.0.113.0/28" && entry["origin"] == "feed:vendor"),
        "{listed}"
    );
    let explained = daemon.explain(&["203.0.113.10", "443"]);
    assert_eq!(explained["entry"]["origin"], "feed:vendor");
    // From the config alone: root reads the feed's last good copy from
    // state_dir; a user who cannot is told that the feed was not considered.
    let state_dir = daemon.state_dir.to_str().unwrap().to_string();
    let offline_config = daemon.dir().join("offline.toml");
    std::fs::write(
        &offline_config,
        format!(
            "state_dir = \"{state_dir}\"\n{}",
            std::fs::read_to_string(&daemon.config).unwrap()
        ),
    )
    .unwrap();
    let offline = |user: Option<&User>| {
        let args = [
            "explain",
            "203.0.113.10",
            "443",
            "--config",
            offline_config.to_str().unwrap(),
            "--json",
        ];
        let output = match user {
            Some(user) => user.run_in(Some(&lab.edge), &args),
            None => firewall_tests::daemon::run_in(&lab.edge, &[], &args),
        };
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code(), report)
    };
    let (code, as_root) = offline(None);
    assert_eq!(
        (code, &as_root["entry"]["origin"]),
        (Some(0), &json!("feed:vendor")),
        "{as_root}"
    );
    assert!(as_root.get("feeds_not_considered").is_none(), "{as_root}");
    let nobody = User::create(&[]);
    let (code, as_nobody) = offline(Some(&nobody));
    assert_eq!(code, Some(4), "{as_nobody}");
    assert_eq!(as_nobody["feeds_not_considered"], json!(["vendor"]));
    assert!(
        as_nobody["feeds_note"]
            .as_str()
            .unwrap()
            .contains("run as root"),
        "{as_nobody}"
    );

    // The vendor moves: one range goes, one comes.
    server.set(Reply::ok(fastly(&SPARE_AND_OFFICE)));
    let (ok, output) = refresh(&daemon);
    assert!(ok, "{output}");
    assert!(!reaches(&lab, VENDOR_V4), "the removed range is dropped");
    assert!(reaches(&lab, OFFICE_V4), "the added range passes");
    let applied = daemon
        .audit()
        .into_iter()
        .rfind(|record| record["action"] == "feed_update" && record["outcome"] == "applied")
        .unwrap();
    assert_eq!(applied["feed"], "vendor");
    assert_eq!(
        applied["prefixes"],
        serde_json::json!(["+198.51.100.0/24", "-203.0.113.0/28"])
    );
    let detail = applied["detail"].as_str().unwrap();
    assert!(detail.starts_with("1 added, 1 removed"), "{detail}");
    assert!(detail.contains("sha256 "), "{detail}");

    // A reload that points the feed elsewhere drops its list at once and
    // fetches the new one at once (not after `refresh`).
    server.set(Reply::ok(fastly(&VENDOR_AND_SPARE)));
    let status = daemon.reload(&config(&server.url("/moved"), ""));
    assert!(status["last_reload_error"].is_null(), "{status}");
    let refetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let status = feed(&daemon);
        (status["source"].as_str()?.ends_with("/moved") && status["last_success"] != Value::Null)
            .then_some(())
    });
    assert!(refetched.is_some(), "{}", feed(&daemon));
    assert!(reaches(&lab, VENDOR_V4));
    assert!(!reaches(&lab, OFFICE_V4));
}

/// HTTPS is verified: against an unknown CA the fetch fails and says why;
/// with that CA in the system's roots (`SSL_CERT_FILE`, as an internal CA
/// would be installed) the list is fetched and enforced. CI runs this test
/// on the static (musl) build too.
#[test]
fn a_feed_over_https_is_verified_against_the_systems_roots() {
    let lab = lab_or_skip!("a_feed_over_https_is_verified_against_the_systems_roots");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let list = fastly(&VENDOR_AND_SPARE);
    let server = HttpsServer::start(&lab.edge, 8443, &[("fastly.json", &list)]);
    let mut daemon = Daemon::start(&lab.edge, &config(&server.url("fastly.json"), ""));
    let (fetched, said) = refresh(&daemon);
    assert!(
        !fetched && said.contains("certificate") && said.contains("UnknownIssuer"),
        "{said}\n{}",
        daemon.log()
    );
    assert!(!reaches(&lab, VENDOR_V4));

    daemon.kill(libc::SIGTERM);
    daemon.env.push((
        "SSL_CERT_FILE".to_string(),
        server.ca_file().display().to_string(),
    ));
    daemon.spawn_and_wait();
    let (fetched, said) = refresh(&daemon);
    assert!(fetched, "{said}\n{}", daemon.log());
    assert_eq!(feed(&daemon)["prefixes_v4"], 2, "{}", feed(&daemon));
    assert!(reaches(&lab, VENDOR_V4));
    assert!(!reaches(&lab, STRANGER_V4));
}

#[test]
fn a_bad_download_never_takes_the_last_good_list_out_of_force() {
    let lab = lab_or_skip!("a_bad_download_never_takes_the_last_good_list_out_of_force");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let server = server(&lab);
    server.set(Reply::ok(fastly(&SPARE_AND_OFFICE)));
    let mut daemon = Daemon::start(&lab.edge, &config(&server.url("/list"), ""));
    let fetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (feed(&daemon)["prefixes_v4"] == 2).then_some(())
    });
    assert!(fetched.is_some(), "{}", daemon.log());
    assert!(reaches(&lab, OFFICE_V4));

    let mut huge = b"{\"addresses\": [".to_vec();
    huge.resize(33 * 1024 * 1024, b' ');
    let failures: Vec<(Reply, &str)> = vec![
        (Reply::status(500, "oops"), "HTTP status 500"),
        (
            Reply::status(
                200,
                "<!DOCTYPE html><html><body>Checking your browser</body></html>",
            ),
            "HTML page",
        ),
        (Reply::ok(Vec::new()), "the body is empty"),
        (
            Reply::ok(&b"{\"addresses\": [\"198.51.100.0/24\", \"19"[..]),
            "not valid JSON",
        ),
        (Reply::ok(huge), "larger than"),
        (
            Reply::ok(fastly(&["203.0.113.64/28"])),
            "more than `max_shrink = \"50%\"`",
        ),
        (
            Reply::ok(fastly(&["192.0.2.64/28", "198.51.100.0/24", "0.0.0.0/0"])),
            "covers too much of the internet",
        ),
        (Reply::Stall(Duration::from_secs(5)), "no answer within 2s"),
        (Reply::Redirect("/elsewhere".to_string()), "redirect"),
        (Reply::Close, "error"),
    ];
    server.set_down(true);
    let (ok, output) = refresh(&daemon);
    assert!(!ok, "{output}");
    let error = feed(&daemon)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("Connection refused"), "{error}");
    assert!(
        reaches(&lab, OFFICE_V4),
        "refused: the last good list stays"
    );
    server.set_down(false);
    for (reply, expected) in failures {
        server.set(reply);
        let (ok, output) = refresh(&daemon);
        assert!(!ok, "{expected}: {output}");
        assert!(
            output.contains("the last good lists stay in force"),
            "{output}"
        );
        let status = feed(&daemon);
        let error = status["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(expected), "{expected}: {status}");
        assert_eq!(status["prefixes_v4"], 2, "{expected}");
        assert!(
            reaches(&lab, OFFICE_V4),
            "{expected}: the last good list stays"
        );
        let rejected = daemon.audit().last().unwrap().clone();
        assert_eq!(rejected["action"], "feed_update");
        assert_eq!(rejected["outcome"], "rejected");
        assert!(
            rejected["detail"].as_str().unwrap().contains(expected),
            "{rejected}"
        );
    }

    let status = daemon.status();
    assert_eq!(
        status["feeds_failing"],
        serde_json::json!(["vendor"]),
        "{status}"
    );
    assert!(
        daemon.ctl_ok(&["status"]).contains("FAILING: vendor"),
        "the status table names it"
    );

    // A restart while the server is down enforces the last good copy.
    server.set(Reply::Close);
    assert_eq!(daemon.kill(libc::SIGTERM), 0);
    daemon.spawn_and_wait();
    assert_eq!(feed(&daemon)["prefixes_v4"], 2);
    assert!(reaches(&lab, OFFICE_V4));
    assert!(!reaches(&lab, VENDOR_V4));
    let (ok, _) = refresh(&daemon);
    assert!(!ok);
    assert!(reaches(&lab, OFFICE_V4));

    // The server is back with the same list: 304 keeps it, and it is fresh.
    server.set(Reply::ok(fastly(&SPARE_AND_OFFICE)));
    let (ok, output) = refresh(&daemon);
    assert!(ok, "{output}");
    let requests = server.requests();
    let (ok, output) = refresh(&daemon);
    assert!(ok, "{output}");
    assert_eq!(server.requests(), requests + 1);
    assert!(
        server.last_if_none_match().is_some(),
        "a conditional request"
    );
    let status = feed(&daemon);
    assert_eq!(status["last_error"], Value::Null);
    assert!(status["age_seconds"].as_u64().unwrap() < 5, "{status}");
    assert!(reaches(&lab, OFFICE_V4));
    assert_eq!(daemon.status()["feeds_failing"], serde_json::json!([]));
}

#[test]
fn feeds_download_through_the_protected_interface_and_through_a_proxy() {
    let lab = lab_or_skip!("feeds_download_through_the_protected_interface_and_through_a_proxy");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    // The vendor's server is out on the peer, no rule admits it: only
    // return-traffic tracking lets its answers in.
    let server = HttpServer::start(&lab.peer, at(STRANGER_V4, 8080));
    server.set(Reply::ok(fastly(&SPARE_AND_OFFICE)));
    let daemon = Daemon::start(&lab.edge, &config(&server.url("/list"), ""));
    let fetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (feed(&daemon)["prefixes_v4"] == 2).then_some(())
    });
    assert!(fetched.is_some(), "{}\n{}", feed(&daemon), daemon.log());
    assert!(reaches(&lab, OFFICE_V4));
    assert!(daemon.stats().passed("return_traffic") > 0);
    drop(daemon);

    // Through a proxy the environment names (as on hosts that reach the
    // internet only through one).
    let proxy = HttpProxy::start(&lab.edge, "127.0.0.1:0".parse().unwrap());
    let mut daemon = Daemon::prepare(&lab.edge, &config(&server.url("/list"), ""));
    daemon.env.push((
        "HTTP_PROXY".to_string(),
        format!("http://{}", proxy.address),
    ));
    daemon.spawn_and_wait();
    let fetched = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (feed(&daemon)["last_success"] != Value::Null).then_some(())
    });
    assert!(fetched.is_some(), "{}\n{}", feed(&daemon), daemon.log());
    assert_eq!(proxy.relayed(), 1, "the fetch went through the proxy");
}

/// dnsmasq on the peer, answering from a hosts file the test rewrites.
struct Dns {
    child: std::process::Child,
    hosts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Dns {
    fn start(lab: &Lab, address: std::net::Ipv4Addr, records: &str) -> Dns {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, records).unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.peer.name,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--pid-file",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            // Short-lived answers: the daemon re-resolves at their TTL.
            .args(["--local-ttl=1", "--bind-interfaces", "--user=root"])
            .arg(format!("--listen-address={address}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting dnsmasq (cargo xtask setup installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Dns {
            child,
            hosts,
            _dir: dir,
        }
    }

    /// Replaces the records and has dnsmasq read them again.
    fn set(&self, records: &str) {
        std::fs::write(&self.hosts, records).unwrap();
        // SAFETY: signalling our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) },
            0
        );
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` (the daemon's
/// start) puts in place of `/etc/resolv.conf`; removed with the test.
struct ResolvConf(std::path::PathBuf);

impl ResolvConf {
    fn point(ns: &firewall_tests::lab::Netns, server: std::net::Ipv4Addr) -> ResolvConf {
        let dir = std::path::Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {server}\n")).unwrap();
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_dns_feed_follows_an_address_change() {
    let lab = lab_or_skip!("a_dns_feed_follows_an_address_change");
    let _listener = listen_tcp(&lab.edge, at(EDGE_V4, 443));
    let dns = Dns::start(
        &lab,
        STRANGER_V4,
        &format!("{OFFICE_V4} office.example.org\n"),
    );
    let _resolv = ResolvConf::point(&lab.edge, STRANGER_V4);
    let daemon = Daemon::start(
        &lab.edge,
        "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n[[feeds]]\nname = \"office\"\nformat = \"dns\"\nnames = [\"office.example.org\"]\nrefresh = \"1h\"\ntimeout = \"2s\"\n[[rules]]\nname = \"office\"\nports = [\"tcp/443\"]\nfeeds = [\"office\"]\n",
    );
    let resolved = |address: &str| {
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            daemon.json(&["list"])["entries"]
                .as_array()?
                .iter()
                .any(|entry| entry["prefix"] == address && entry["origin"] == "feed:office")
                .then_some(())
        })
        .is_some()
    };
    assert!(
        resolved("198.51.100.7/32"),
        "{}\n{}",
        feed(&daemon),
        daemon.log()
    );
    assert!(reaches(&lab, OFFICE_V4));
    assert!(!reaches(&lab, VENDOR_V4));

    // The office's dynamic address changes: followed at the records' TTL
    // (one second, so the daemon's floor of 5 s), without a refresh.
    dns.set(&format!("{VENDOR_V4} office.example.org\n"));
    assert!(
        resolved("203.0.113.10/32"),
        "{}\n{}",
        feed(&daemon),
        daemon.log()
    );
    assert!(reaches(&lab, VENDOR_V4));
    assert!(!reaches(&lab, OFFICE_V4));
}
