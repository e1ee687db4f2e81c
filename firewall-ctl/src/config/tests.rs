use super::*;

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

/// Parses as on a host that has every interface.
fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    super::parse(text, &|_| true)
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
    assert_eq!(config.rules[0].sources[1].to_string(), "2001:db8:1::/48");
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
    assert_eq!(config.rules[1].sources[0].to_string(), "198.51.100.7/32");
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
        assert!(config.rules[0].sources[0].is_any());
    }
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
    assert!(message.contains("`sources` is empty"), "{message}");
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
    let message = load(&path, &|_| true).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "config `{}` is invalid:\n  line 2: unknown field `bogus`",
            path.display()
        )),
        "{message}"
    );
    let missing = load(&dir.path().join("missing.toml"), &|_| true)
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("cannot read config"), "{missing}");
}

#[test]
fn missing_interfaces_are_named_with_their_line() {
    let text = "interfaces = [\n  \"eth0\",\n  \"eth9\",\n]\n";
    let problems = super::parse(text, &|name| name == "eth0").unwrap_err();
    assert_eq!(
        problems,
        [Problem {
            line: Some(3),
            message: "interface `eth9` does not exist on this host; `ip link` lists the interfaces"
                .to_string()
        }]
    );
}
