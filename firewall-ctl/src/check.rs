//! `firewall-ctl check`: validate a config without root and summarise it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{api, config, daemon};

/// `firewall-ctl check --json`.
#[derive(Serialize)]
pub struct CheckReport {
    pub config: PathBuf,
    pub valid: bool,
    pub interfaces: Vec<String>,
    pub xdp_mode: config::XdpModeSetting,
    pub mode: String,
    pub socket: PathBuf,
    pub rules: Vec<CheckedRule>,
    /// Distinct prefixes after merging duplicates: what the maps will hold.
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// Distinct (protocol, port) pairs exposed.
    pub ports: usize,
    pub track_outbound: bool,
    pub flows: CheckedFlows,
    /// Things that are valid but probably not meant.
    pub warnings: Vec<String>,
}

/// Where sshd's config is read for its port.
const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";

/// The first `Port` of an sshd config, else 22.
fn ssh_port(sshd_config: Option<&str>) -> u16 {
    sshd_config
        .into_iter()
        .flat_map(str::lines)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let key = words.next()?;
            key.eq_ignore_ascii_case("port")
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or(22)
}

/// What `check` warns about in a valid config.
fn warnings(config: &config::Config, ssh_port: u16) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.rules.is_empty() {
        warnings.push("no rules: every port is closed".to_string());
    }
    let admits_ssh = config.rules.iter().any(|rule| {
        rule.ports.iter().any(|range| {
            range.protocol == firewall_common::wire::protocol::TCP
                && (range.first..=range.last).contains(&ssh_port)
        })
    });
    if !config.track_outbound && config.enforce {
        warnings.push(
            "track_outbound = false: replies to this host's own connections (DNS, NTP, updates, its calls to the vendor) are dropped unless a rule admits their source and port".to_string(),
        );
    }
    if !admits_ssh && config.enforce {
        warnings.push(format!(
            "no rule admits SSH (tcp/{ssh_port}): if you manage this host over SSH through a protected interface, this config locks you out; add a rule exposing tcp/{ssh_port} for your admin range"
        ));
    }
    warnings
}

/// `[flows]`, durations as they are written in the config.
#[derive(Serialize)]
pub struct CheckedFlows {
    pub tcp_timeout: String,
    pub tcp_close_timeout: String,
    pub udp_timeout: String,
    pub icmp_timeout: String,
    pub max_flows: u32,
}

impl From<&config::FlowSettings> for CheckedFlows {
    fn from(flows: &config::FlowSettings) -> Self {
        let text = |duration| humantime::format_duration(duration).to_string();
        Self {
            tcp_timeout: text(flows.tcp_timeout),
            tcp_close_timeout: text(flows.tcp_close_timeout),
            udp_timeout: text(flows.udp_timeout),
            icmp_timeout: text(flows.icmp_timeout),
            max_flows: flows.max_flows,
        }
    }
}

#[derive(Serialize)]
pub struct CheckedRule {
    pub name: String,
    pub ports: Vec<String>,
    pub sources_v4: usize,
    pub sources_v6: usize,
    /// Feeds whose lists the rule takes (fetched by the daemon; not counted
    /// in `sources_v4`/`sources_v6`).
    pub feeds: Vec<String>,
    pub comment: Option<String>,
}

/// Validates the config at `path` exactly as the daemon would, and
/// summarises it.
pub fn report(path: &Path) -> anyhow::Result<CheckReport> {
    let (config, policy) = daemon::load_policy(path)?;
    Ok(CheckReport {
        config: path.to_path_buf(),
        valid: true,
        interfaces: config.interfaces.clone(),
        xdp_mode: config.xdp_mode,
        mode: api::mode_name(config.enforce),
        socket: config.socket.clone(),
        rules: config
            .rules
            .iter()
            .map(|rule| CheckedRule {
                name: rule.name.clone(),
                ports: rule.ports.iter().map(ToString::to_string).collect(),
                sources_v4: rule.sources.iter().filter(|prefix| prefix.is_v4()).count(),
                sources_v6: rule.sources.iter().filter(|prefix| !prefix.is_v4()).count(),
                feeds: rule.feeds.clone(),
                comment: rule.comment.clone(),
            })
            .collect(),
        prefixes_v4: policy.v4.len(),
        prefixes_v6: policy.v6.len(),
        ports: policy.ports.len(),
        track_outbound: config.track_outbound,
        flows: CheckedFlows::from(&config.flows),
        warnings: warnings(
            &config,
            ssh_port(std::fs::read_to_string(SSHD_CONFIG).ok().as_deref()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_port_comes_from_sshd_config() {
        assert_eq!(ssh_port(None), 22);
        assert_eq!(ssh_port(Some("# Port 2222\nPermitRootLogin no\n")), 22);
        assert_eq!(ssh_port(Some("Port 2222\nPort 22\n")), 2222);
        assert_eq!(ssh_port(Some("  port   2200\n")), 2200);
    }

    #[test]
    fn a_config_without_ssh_is_warned_about() {
        let with = config::tests::parse(
            "interfaces = [\"eth0\"]\n[[rules]]\nname = \"ssh\"\nports = [\"tcp/20-25\"]\nsources = [\"198.51.100.0/24\"]\n",
        )
        .unwrap();
        assert!(warnings(&with, 22).is_empty());
        let warned = warnings(&with, 2222);
        assert_eq!(warned.len(), 1);
        assert!(
            warned[0].contains("no rule admits SSH (tcp/2222)"),
            "{warned:?}"
        );
        let empty = config::tests::parse("interfaces = [\"eth0\"]").unwrap();
        assert_eq!(warnings(&empty, 22).len(), 2);
    }

    #[test]
    fn rules_show_the_feeds_they_take() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.toml");
        std::fs::write(
            &path,
            "interfaces = [\"lo\"]\n[[feeds]]\nname = \"aws\"\nurl = \"https://ip-ranges.amazonaws.com/ip-ranges.json\"\nformat = \"aws\"\n[[rules]]\nname = \"ssh\"\nports = [\"tcp/22\"]\nfeeds = [\"aws\"]\n",
        )
        .unwrap();
        let report = report(&path).unwrap();
        assert_eq!(report.rules[0].feeds, ["aws"]);
        assert_eq!(report.rules[0].sources_v4, 0);
        let text = crate::output::check(&report);
        assert!(text.contains("FEEDS"), "{text}");
        assert!(
            text.lines()
                .any(|line| line.starts_with("ssh") && line.ends_with("aws")),
            "{text}"
        );
    }

    #[test]
    fn a_config_without_flow_tracking_is_warned_about() {
        let off = config::tests::parse(
            "interfaces = [\"eth0\"]\ntrack_outbound = false\n[[rules]]\nname = \"ssh\"\nports = [\"tcp/22\"]\nsources = [\"198.51.100.0/24\"]\n",
        )
        .unwrap();
        let warned = warnings(&off, 22);
        assert_eq!(warned.len(), 1);
        assert!(
            warned[0].starts_with("track_outbound = false: replies to this host's own connections")
        );
        let flows = CheckedFlows::from(&off.flows);
        assert_eq!(flows.tcp_timeout, "5days");
        assert_eq!(flows.udp_timeout, "1m");
        assert_eq!(flows.max_flows, 65536);
    }
}
