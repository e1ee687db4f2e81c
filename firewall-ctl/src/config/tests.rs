use super::{feeds::FeedSource, *};

const GOOD: &str = r#"
interfaces = ["eth0", "eth1"]
xdp_mode = "skb"
enforce = false
socket = "/tmp/fw.sock"

[[rules]]
name = "jira-align"
ports = ["tcp/443"]
sources = ["203.0.113.0/24", "2001:db8:1::/48"]
comment = "Jira Align connector egress"

[[rules]]
name = "office_ssh"
ports = ["22", "udp/4500", "tcp/8000-8080"]
sources = ["198.51.100.7"]
"#;

/// A host for tests: which interfaces and groups exist, what is at which path.
pub struct TestHost {
    pub interfaces: &'static [&'static str],
    pub groups: &'static [(&'static str, u32)],
    pub files: &'static [(&'static str, &'static str)],
}

/// Has every interface, groups `fwctl` (gid 990) and `fwread` (991), and a
/// regular file at `/etc/hosts`.
pub const ANY_HOST: TestHost = TestHost {
    interfaces: &[],
    groups: &[("fwctl", 990), ("fwread", 991)],
    files: &[("/etc/hosts", "a regular file")],
};

impl Host for TestHost {
    fn interface_exists(&self, name: &str) -> bool {
        self.interfaces.is_empty() || self.interfaces.contains(&name)
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(group, _)| *group == name)
            .map(|(_, gid)| *gid)
    }

    fn non_socket_at(&self, path: &Path) -> Option<&'static str> {
        self.files
            .iter()
            .find(|(file, _)| Path::new(file) == path)
            .map(|(_, kind)| *kind)
    }
}

/// Parses as on [`ANY_HOST`].
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    super::parse(text, &ANY_HOST)
}

fn problems(text: &str) -> Vec<Problem> {
    parse(text).expect_err("config should be rejected")
}

/// The one problem of `text`, as `(line, message)`.
fn only_problem(text: &str) -> (Option<usize>, String) {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    (problems[0].line, problems[0].message.clone())
}

fn with_rule(rule: &str) -> String {
    format!("interfaces = [\"eth0\"]\n\n[[rules]]\n{rule}")
}

#[test]
fn parses_a_full_config() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.interfaces, ["eth0", "eth1"]);
    assert_eq!(config.xdp_mode, XdpModeSetting::Skb);
    assert!(!config.enforce);
    assert_eq!(config.socket, PathBuf::from("/tmp/fw.sock"));
    assert_eq!(config.rules.len(), 2);
    assert_eq!(config.rules[0].name, "jira-align");
    assert_eq!(
        config.rules[0].sources.iter().nth(1).unwrap().to_string(),
        "2001:db8:1::/48"
    );
    assert_eq!(
        config.rules[0].comment.as_deref(),
        Some("Jira Align connector egress")
    );
    let ports: Vec<String> = config.rules[1]
        .ports
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ports, ["tcp/22", "udp/4500", "tcp/8000-8080"]);
    assert_eq!(
        config.rules[1].sources.iter().next().unwrap().to_string(),
        "198.51.100.7/32"
    );
}

#[test]
fn defaults_are_auto_enforce_and_the_standard_socket() {
    let config = parse("interfaces = [\"eth0\"]").unwrap();
    assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
    assert!(config.enforce);
    assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
    assert!(config.rules.is_empty());
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let (line, message) = only_problem("interfaces = [\"eth0\"]\nenforcing = true\n");
    assert_eq!(line, Some(2));
    assert!(message.contains("unknown field `enforcing`"), "{message}");
    let (line, message) = only_problem(&with_rule(
        "name = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\nport = 1\n",
    ));
    assert_eq!(line, Some(7));
    assert!(message.contains("unknown field `port`"), "{message}");
}

#[test]
fn missing_interfaces_and_bad_mode_are_rejected() {
    let (_, message) = only_problem("enforce = true\n");
    assert!(message.contains("missing field `interfaces`"), "{message}");
    let (line, message) = only_problem("interfaces = []\n");
    assert_eq!(line, Some(1));
    assert!(message.contains("`interfaces` is empty"), "{message}");
    let (line, message) = only_problem("interfaces = [\"eth0\"]\nxdp_mode = \"native\"\n");
    assert_eq!(line, Some(2));
    assert!(message.contains("unknown variant `native`"), "{message}");
    let (_, message) = only_problem("interfaces = [\"eth0\", \"eth0\"]\n");
    assert!(message.contains("listed twice"), "{message}");
    let (_, message) = only_problem("interfaces = [\"this-name-is-too-long\"]\n");
    assert!(message.contains("not a valid interface name"), "{message}");
}

#[test]
fn duplicate_rule_names_point_at_the_second_one() {
    let text = with_rule(
        "name = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n\n[[rules]]\nname = \"a\"\nports = [\"22\"]\nsources = [\"192.0.2.2\"]\n",
    );
    let (line, message) = only_problem(&text);
    assert_eq!(line, Some(9));
    assert_eq!(message, "rule name `a` is used twice; names must be unique");
    let (_, message) = only_problem(&with_rule(
        "name = \"bad name\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n",
    ));
    assert!(
        message.contains("rule name `bad name` is invalid"),
        "{message}"
    );
}

#[test]
fn host_bits_name_the_value_and_suggest_the_network() {
    let (line, message) = only_problem(&with_rule(
        "name = \"vendor\"\nports = [\"443\"]\nsources = [\"203.0.113.5/24\"]\n",
    ));
    assert_eq!(line, Some(6));
    assert_eq!(
        message,
        "rule `vendor`: `203.0.113.5/24` has host bits set; write the network `203.0.113.0/24` (or `203.0.113.5` for that one host)"
    );
}

#[test]
fn any_source_needs_an_explicit_opt_in() {
    for any in ["0.0.0.0/0", "::/0"] {
        let (_, message) = only_problem(&with_rule(&format!(
            "name = \"open\"\nports = [\"443\"]\nsources = [\"{any}\"]\n"
        )));
        assert!(message.contains("allow_any_source = true"), "{message}");
        let config = parse(&with_rule(&format!(
            "name = \"open\"\nports = [\"443\"]\nsources = [\"{any}\"]\nallow_any_source = true\n"
        )))
        .unwrap();
        assert!(config.rules[0].sources.iter().next().unwrap().is_any());
    }
}

#[test]
fn broad_prefixes_need_the_same_opt_in_so_two_halves_cannot_bypass_it() {
    let (_, message) = only_problem(&with_rule(
        "name = \"open\"\nports = [\"443\"]\nsources = [\"0.0.0.0/1\"]\n",
    ));
    assert_eq!(
        message,
        "rule `open`: `0.0.0.0/1` covers a large share of the internet (shorter than /8); if that is intended, add `allow_any_source = true` to the rule"
    );
    let halves = problems(&with_rule(
        "name = \"open\"\nports = [\"443\"]\nsources = [\"0.0.0.0/1\", \"128.0.0.0/1\", \"::/1\", \"8000::/1\", \"2000::/15\"]\n",
    ));
    assert_eq!(halves.len(), 5, "{halves:#?}");
    assert!(
        halves
            .iter()
            .all(|problem| problem.message.contains("add `allow_any_source = true`"))
    );
    let config = parse(&with_rule(
        "name = \"open\"\nports = [\"443\"]\nsources = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\nallow_any_source = true\n",
    ))
    .unwrap();
    assert!(config.rules[0].allow_any_source);
    assert!(
        parse(&with_rule(
            "name = \"a\"\nports = [\"443\"]\nsources = [\"10.0.0.0/8\", \"2001::/16\"]\n"
        ))
        .is_ok()
    );
}

#[test]
fn ipv4_mapped_sources_and_padded_lengths_are_refused() {
    let (line, message) = only_problem(&with_rule(
        "name = \"v\"\nports = [\"443\"]\nsources = [\"::ffff:203.0.113.1\"]\n",
    ));
    assert_eq!(line, Some(6));
    assert!(message.contains("write `203.0.113.1/32`"), "{message}");
    let (_, message) = only_problem(&with_rule(
        "name = \"v\"\nports = [\"443\"]\nsources = [\"203.0.113.0/0024\"]\n",
    ));
    assert!(message.contains("write `/24`"), "{message}");
}

#[test]
fn state_dir_groups_and_the_default_rule() {
    let config = parse(
        "interfaces = [\"eth0\"]\nstate_dir = \"/srv/fw\"\ncontrol_group = \"fwctl\"\nread_group = \"fwread\"\n\n[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"192.0.2.2\"]\ndefault = true\n",
    )
    .unwrap();
    assert_eq!(config.state_dir, PathBuf::from("/srv/fw"));
    assert_eq!(
        config.control_group,
        Some(Group {
            name: "fwctl".to_string(),
            gid: 990
        })
    );
    assert_eq!(config.read_group.as_ref().unwrap().gid, 991);
    assert_eq!(config.default_rule().unwrap().name, "b");

    let defaults = parse("interfaces = [\"eth0\"]").unwrap();
    assert_eq!(defaults.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(defaults.control_group, None);
    assert!(defaults.default_rule().unwrap_err().contains("no rules"));

    let (line, message) = only_problem("interfaces = [\"eth0\"]\nread_group = \"nobody-here\"\n");
    assert_eq!(line, Some(2));
    assert_eq!(
        message,
        "`read_group`: group `nobody-here` does not exist on this host; create it (`groupadd nobody-here`) or remove the key"
    );
}

#[test]
fn without_a_default_the_only_rule_is_it_and_otherwise_the_error_lists_the_rules() {
    let one = parse(&with_rule(
        "name = \"only\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n",
    ))
    .unwrap();
    assert_eq!(one.default_rule().unwrap().name, "only");
    let two = parse(GOOD).unwrap();
    assert_eq!(
        two.default_rule().unwrap_err(),
        "the config has 2 rules and none is marked `default = true`; pass `--rule NAME` with one of: jira-align, office_ssh"
    );
    let text = with_rule(
        "name = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\ndefault = true\n\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"192.0.2.2\"]\ndefault = true\n",
    );
    let (line, message) = only_problem(&text);
    assert_eq!(line, Some(13));
    assert!(message.contains("already set on rule `a`"), "{message}");
}

#[test]
fn a_socket_path_holding_anything_but_a_socket_is_refused() {
    let (line, message) = only_problem("interfaces = [\"eth0\"]\nsocket = \"/etc/hosts\"\n");
    assert_eq!(line, Some(2));
    assert_eq!(
        message,
        "`socket`: `/etc/hosts` is a regular file, not a socket; firewall-ctl only ever replaces a stale socket, so choose another path"
    );
}

#[test]
fn control_characters_in_values_are_escaped_in_problems() {
    let (_, message) = only_problem(&with_rule(
        "name = \"a\\u001b[31m\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n",
    ));
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(message.contains("a\\u{1b}[31m"), "{message}");
}

/// Problems are located through an index of line starts, not by rescanning
/// the file for each; 40,000 problems are all reported, each on its line.
#[test]
fn many_problems_are_each_reported_on_their_line() {
    let sources: Vec<String> = (0..40_000)
        .map(|i| format!("  \"192.0.2.{}/24\",", i % 250 + 1))
        .collect();
    let text = with_rule(&format!(
        "name = \"r\"\nports = [\"443\"]\nsources = [\n{}\n]\n",
        sources.join("\n")
    ));
    let problems = problems(&text);
    assert_eq!(problems.len(), 40_000);
    assert_eq!(problems[0].line, Some(7));
    assert_eq!(problems[39_999].line, Some(40_006));
}

#[test]
fn bad_ports_are_rejected_with_their_line() {
    let cases = [
        ("tcp/0", "port 0 is out of range"),
        ("tcp/65536", "port 65536 is out of range"),
        (
            "tcp/2000-1000",
            "the range is inverted; write `tcp/1000-2000`",
        ),
        ("icmp/1", "only `tcp` and `udp` have ports"),
    ];
    for (port, expected) in cases {
        let (line, message) = only_problem(&with_rule(&format!(
            "name = \"r\"\nports = [\"{port}\"]\nsources = [\"192.0.2.1\"]\n"
        )));
        assert_eq!(line, Some(5), "{port}");
        assert!(message.contains(expected), "{port}: {message}");
    }
}

#[test]
fn empty_ports_or_sources_are_rejected() {
    let (line, message) = only_problem(&with_rule(
        "name = \"r\"\nports = []\nsources = [\"192.0.2.1\"]\n",
    ));
    assert_eq!(line, Some(5));
    assert!(message.contains("`ports` is empty"), "{message}");
    let (line, message) = only_problem(&with_rule(
        "name = \"r\"\nports = [\"443\"]\nsources = []\n",
    ));
    assert_eq!(line, Some(6));
    assert!(message.contains("no `sources` and no `feeds`"), "{message}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = with_rule(
        "name = \"r\"\nports = [\"tcp/0\", \"udp/1-0\"]\nsources = [\"203.0.113.5/24\", \"nonsense\"]\n",
    );
    assert_eq!(problems(&text).len(), 4);
}

#[test]
fn too_many_rules_are_rejected() {
    let mut text = String::from("interfaces = [\"eth0\"]\n");
    for index in 0..=MAX_RULES {
        text.push_str(&format!(
            "[[rules]]\nname = \"r{index}\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n"
        ));
    }
    let (line, message) = only_problem(&text);
    assert_eq!(line, None);
    assert!(message.contains("at most 64 are supported"), "{message}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firewall.toml");
    std::fs::write(&path, "interfaces = [\"eth0\"]\nbogus = 1\n").unwrap();
    let message = load(&path, &ANY_HOST).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "config `{}` is invalid:\n  line 2: unknown field `bogus`",
            path.display()
        )),
        "{message}"
    );
    let missing = load(&dir.path().join("missing.toml"), &ANY_HOST)
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("cannot read config"), "{missing}");
}

#[test]
fn missing_interfaces_are_named_with_their_line() {
    let text = "interfaces = [\n  \"eth0\",\n  \"eth9\",\n]\n";
    let host = TestHost {
        interfaces: &["eth0"],
        ..ANY_HOST
    };
    let problems = super::parse(text, &host).unwrap_err();
    assert_eq!(
        problems,
        [Problem {
            line: Some(3),
            message: "interface `eth9` does not exist on this host; `ip link` lists the interfaces"
                .to_string()
        }]
    );
}

#[test]
fn flow_tracking_is_on_by_default_and_its_keys_are_checked() {
    let defaults = parse("interfaces = [\"eth0\"]").unwrap();
    assert!(defaults.track_outbound);
    assert_eq!(defaults.flows, FlowSettings::default());
    assert_eq!(
        defaults.flows.udp_timeout,
        std::time::Duration::from_secs(60)
    );

    let set = parse(
        "interfaces = [\"eth0\"]\ntrack_outbound = false\n[flows]\nudp_timeout = \"2s\"\ntcp_timeout = \"1h\"\ntcp_close_timeout = \"5s\"\nicmp_timeout = \"10s\"\nmax_flows = 1024\n",
    )
    .unwrap();
    assert!(!set.track_outbound);
    assert_eq!(
        set.flows,
        FlowSettings {
            tcp_timeout: std::time::Duration::from_secs(3600),
            tcp_close_timeout: std::time::Duration::from_secs(5),
            udp_timeout: std::time::Duration::from_secs(2),
            icmp_timeout: std::time::Duration::from_secs(10),
            max_flows: 1024,
        }
    );
    let plane = set.flows.data_plane(true);
    assert_eq!(plane.enabled, 1);
    assert_eq!(plane.udp_timeout_ns, 2_000_000_000);
    assert_eq!(set.flows.data_plane(false).enabled, 0);

    let problems = parse(
        "interfaces = [\"eth0\"]\n[flows]\nudp_timeout = \"soon\"\ntcp_timeout = \"0s\"\nmax_flows = 10\n",
    )
    .unwrap_err();
    let messages: Vec<(Option<usize>, &str)> = problems
        .iter()
        .map(|problem| (problem.line, problem.message.as_str()))
        .collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0].0, Some(5));
    assert!(
        messages[0]
            .1
            .starts_with("`flows.max_flows = 10` is out of range; use 64 to 4194304"),
        "{messages:?}"
    );
    assert_eq!(messages[1].0, Some(4));
    assert!(
        messages[1]
            .1
            .starts_with("`flows.tcp_timeout = \"0s\"` is out of range; write a duration from 1s to 30days, e.g. \"5days\""),
        "{messages:?}"
    );
    assert_eq!(messages[2].0, Some(3));
    assert!(
        messages[2]
            .1
            .starts_with("`flows.udp_timeout = \"soon\"` is not a duration"),
        "{messages:?}"
    );
    let (_, unknown) = only_problem("interfaces = [\"eth0\"]\n[flows]\nudp_timeot = \"2s\"\n");
    assert!(unknown.contains("unknown field `udp_timeot`"), "{unknown}");
}

const FEEDS: &str = r#"
interfaces = ["eth0"]

[[feeds]]
name = "atlassian-jira"
url = "https://ip-ranges.atlassian.com/"
format = "atlassian"
filter = { product = ["jira"], direction = ["egress"] }
refresh = "6h"
max_age = "3d"
min_entries = 1
max_shrink = "50%"

[[feeds]]
name = "office"
format = "dns"
names = ["office.example.org"]

[[feeds]]
name = "vendor-file"
url = "file:///etc/firewall-ctl/vendor.txt"
format = "plain"

[[rules]]
name = "jira-cloud"
ports = ["tcp/443"]
feeds = ["atlassian-jira", "office"]

[[rules]]
name = "vendor"
ports = ["tcp/8443"]
sources = ["203.0.113.10"]
feeds = ["vendor-file"]
"#;

#[test]
fn feeds_are_parsed_and_rules_take_sources_feeds_or_both() {
    let config = parse(FEEDS).unwrap();
    assert_eq!(config.feeds.len(), 3);
    let jira = &config.feeds[0];
    assert_eq!(jira.format, FeedFormat::Atlassian);
    assert_eq!(
        jira.source,
        FeedSource::Url("https://ip-ranges.atlassian.com/".to_string())
    );
    assert_eq!(jira.filter["product"], ["jira"]);
    assert_eq!(jira.refresh, std::time::Duration::from_secs(6 * 3600));
    assert_eq!(jira.max_age, std::time::Duration::from_secs(3 * 24 * 3600));
    assert_eq!(jira.max_shrink_percent, 50);
    let office = &config.feeds[1];
    assert_eq!(
        office.source,
        FeedSource::Dns(vec!["office.example.org".to_string()])
    );
    assert_eq!(office.refresh, std::time::Duration::from_secs(300));
    assert_eq!(
        office.max_shrink_percent, 100,
        "a dynamic address replaces itself"
    );
    assert_eq!(
        config.feeds[2].source,
        FeedSource::File(PathBuf::from("/etc/firewall-ctl/vendor.txt"))
    );
    assert!(config.rules[0].sources.len() == 0);
    assert_eq!(config.rules[0].feeds, ["atlassian-jira", "office"]);
    assert_eq!(config.rules[1].sources.len(), 1);
    assert_eq!(config.rules[1].feeds, ["vendor-file"]);
}

#[test]
fn feed_mistakes_are_named_with_their_fix() {
    let problem = |feed: &str, rule_feeds: &str| {
        let text = format!(
            "interfaces = [\"eth0\"]\n[[feeds]]\n{feed}\n[[rules]]\nname = \"r\"\nports = [\"443\"]\nfeeds = [{rule_feeds}]\n"
        );
        let problems = parse(&text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems[0].message.clone()
    };
    assert!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"csv\"",
            "\"f\""
        )
        .starts_with("feed `f`: unknown format `csv`; use one of plain, atlassian, aws")
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"aws\"\nfilter = { product = [\"jira\"] }",
            "\"f\""
        ),
        "feed `f`: filter key `product` does not belong to the format; `aws` feeds filter by `service`, `region`, `network_border_group`"
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"fastly\"\nfilter = { family = [\"ipv4\"] }",
            "\"f\""
        ),
        "feed `f`: filter key `family` does not belong to the format; `fastly` feeds take no filter; remove it"
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"dns\"\nnames = [\"a.example\"]",
            "\"f\""
        ),
        "feed `f`: a `dns` feed has `names`, not a `url`; remove `url` or choose the list's format"
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"plain\"\nnames = [\"a.example\"]",
            "\"f\""
        ),
        "feed `f`: `names` belongs to `format = \"dns\"` feeds; a list fetched from a URL has only `url`"
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"ftp://x.example/list\"\nformat = \"plain\"",
            "\"f\""
        ),
        "feed `f`: `url = \"ftp://x.example/list\"` is not an `https://`, `http://` or `file:///absolute/path` address"
    );
    assert!(
        problem(
            "name = \"f\"\nurl = \"https://api.github.com/meta\"\nformat = \"github\"",
            "\"f\""
        )
        .starts_with("feed `f`: a `github` feed needs `filter = { keys = [...] }`")
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"plain\"\nrefresh = \"10s\"",
            "\"f\""
        ),
        "feed `f`: `refresh = \"10s\"` is not a duration of at least 1m; write e.g. \"6h\""
    );
    // `feeds refresh` waits for a fetch, and the CLI for `feeds refresh`.
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"plain\"\ntimeout = \"10m\"",
            "\"f\""
        ),
        "feed `f`: `timeout = \"10m\"` is not a duration between 1s and 5m; write e.g. \"1m\""
    );
    assert!(
        crate::api::Command::FeedsRefresh { feed: None }.default_wait()
            >= 2 * crate::config::feeds::MAX_TIMEOUT
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"plain\"\nmax_shrink = \"150%\"",
            "\"f\""
        ),
        "feed `f`: `max_shrink = \"150%\"` is not a percentage from 0% to 100%; write e.g. \"50%\""
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"plain\"\nmin_entries = 0",
            "\"f\""
        ),
        "feed `f`: `min_entries = 0` must be at least 1: an empty list is never a good update"
    );
    assert_eq!(
        problem(
            "name = \"f\"\nformat = \"dns\"\nnames = [\"bad_name.example\"]",
            "\"f\""
        ),
        "feed `f`: `bad_name.example` is not a DNS name (letters, digits, '-' and dots, labels of 1 to 63 characters)"
    );
    assert_eq!(
        problem(
            "name = \"f\"\nurl = \"https://x.example/\"\nformat = \"plain\"",
            "\"f\", \"g\""
        ),
        "rule `r`: no feed is named `g`; define it in a `[[feeds]]` table or remove it"
    );
}

#[test]
fn unused_feeds_and_rules_without_sources_are_refused() {
    let problems = parse(
        "interfaces = [\"eth0\"]\n[[feeds]]\nname = \"spare\"\nurl = \"https://x.example/\"\nformat = \"plain\"\n[[rules]]\nname = \"r\"\nports = [\"443\"]\nsources = []\n",
    )
    .unwrap_err();
    let messages: Vec<(Option<usize>, &str)> = problems
        .iter()
        .map(|problem| (problem.line, problem.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            (
                Some(9),
                "rule `r`: no `sources` and no `feeds`; list at least one address or prefix, or a feed"
            ),
            (
                Some(3),
                "feed `spare` is used by no rule; add it to a rule's `feeds`, or remove it"
            ),
        ]
    );
}

#[test]
fn metrics_per_entry_and_the_blocked_sample_rate() {
    let config = parse("interfaces = [\"eth0\"]").unwrap();
    assert_eq!(config.sample_rate, DEFAULT_SAMPLE_RATE);
    assert_eq!(config.metrics, None);
    let config = parse(
        "interfaces = [\"eth0\"]\n[metrics]\nlisten = \"127.0.0.1:9469\"\nper_entry = true\n[blocked]\nsample_rate = 0\n",
    )
    .unwrap();
    assert!(config.metrics.unwrap().per_entry);
    assert_eq!(config.sample_rate, 0);
    let (line, message) =
        only_problem("interfaces = [\"eth0\"]\n[blocked]\nsample_rate = 1000000\n");
    assert_eq!(line, Some(3));
    assert!(
        message.contains("`blocked.sample_rate = 1000000` is too high; write at most 10000"),
        "{message}"
    );
    let (line, message) = only_problem("interfaces = [\"eth0\"]\n[blocked]\nrate = 5\n");
    assert_eq!(line, Some(3));
    assert!(message.contains("unknown field `rate`"), "{message}");
}
