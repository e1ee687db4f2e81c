//! The TOML config: parsed strictly, validated completely, and turned into a
//! [`Config`] that cannot hold a bad value.
//!
//! Every problem in a file is reported at once, each with the file, the line
//! and the value, and how to fix it. What the config says about the host
//! (interfaces, groups, the socket path) is asked of a [`Host`], so all of
//! it is unit-tested without one.

mod address;
pub mod feeds;
pub mod flows;
pub mod ports;
pub mod prefix;
mod source_lists;

use std::{
    collections::HashSet,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use firewall_common::limits::MAX_RULES;
use serde::Deserialize;
use toml::Spanned;

pub use self::{
    feeds::{Feed, FeedFormat, FeedSource},
    flows::FlowSettings,
    ports::PortRange,
    prefix::{IpPrefix, PrefixError, PrefixList},
};
use crate::{
    fsutil::{self, MAX_FILE_BYTES, ReadError},
    text::escape_controls,
};

/// Where the control socket lives unless the config or `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/firewall-ctl/ctl.sock";

/// Where runtime entries and the audit log live unless the config says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/firewall-ctl";

/// Where the program's maps and links are pinned unless the config says otherwise.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/firewall-ctl";

/// What the config refers to on this host. The daemon and `check` ask the
/// real host; tests describe one.
pub trait Host {
    /// Whether this network namespace has an interface `name`.
    fn interface_exists(&self, name: &str) -> bool;
    /// The id of group `name`, if it exists.
    fn group_id(&self, name: &str) -> Option<u32>;
    /// What is at `path` when it is not a Unix socket: `None` when nothing
    /// or a socket is there, else a description ("a regular file").
    fn non_socket_at(&self, path: &Path) -> Option<&'static str>;
}

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    /// `false`: monitor mode, count what would be dropped but drop nothing.
    pub enforce: bool,
    pub socket: PathBuf,
    /// Runtime entries and the audit log.
    pub state_dir: PathBuf,
    /// Pinned maps and links, on a BPF file system.
    pub bpf_dir: PathBuf,
    /// Members may change the allowlist through the socket (root always may).
    pub control_group: Option<Group>,
    /// Members may read status, stats, the allowlist and the audit log.
    pub read_group: Option<Group>,
    /// Replies to flows the host starts pass (return traffic), ICMP errors
    /// must quote such a flow, neighbour discovery must be on-link.
    pub track_outbound: bool,
    pub flows: FlowSettings,
    /// Prometheus metrics; `None`: not served.
    pub metrics: Option<MetricsSettings>,
    /// Drop samples per second per CPU for `blocked` (0: off).
    pub sample_rate: u32,
    pub feeds: Vec<Feed>,
    pub rules: Vec<Rule>,
}

/// `[metrics]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    pub listen: std::net::SocketAddr,
    /// Export counters per allowlist entry (a series per prefix: for small
    /// allowlists only).
    pub per_entry: bool,
}

/// Default of `[blocked] sample_rate`.
pub const DEFAULT_SAMPLE_RATE: u32 = 100;
/// Largest `[blocked] sample_rate`: beyond it sampling is a load of its own.
pub const MAX_SAMPLE_RATE: u32 = 10_000;

/// A group named in the config, resolved on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver (native) mode, else generic (skb) mode with a warning.
    #[default]
    Auto,
    Driver,
    Skb,
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpModeSetting::Auto => "auto",
            XdpModeSetting::Driver => "driver",
            XdpModeSetting::Skb => "skb",
        })
    }
}

/// One rule: these sources may reach these ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub ports: Vec<PortRange>,
    pub sources: PrefixList,
    /// Names of the feeds whose entries are this rule's sources too.
    pub feeds: Vec<String>,
    pub comment: Option<String>,
    /// May list `0.0.0.0/0`, `::/0` and other broad prefixes.
    pub allow_any_source: bool,
    /// `firewall-ctl allow` without `--rule` adds here.
    pub default: bool,
}

impl Rule {
    /// Whether the config lists `prefix` in this rule.
    pub fn lists(&self, prefix: &IpPrefix) -> bool {
        self.sources.contains(prefix)
    }
}

impl Config {
    pub fn rule(&self, name: &str) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.name == name)
    }

    pub fn feed(&self, name: &str) -> Option<&Feed> {
        self.feeds.iter().find(|feed| feed.name == name)
    }

    /// The index of the rule named `name`; the error lists the rules there are.
    pub fn rule_index(&self, name: &str) -> Result<usize, String> {
        self.rule(name).map(|(index, _)| index).ok_or_else(|| {
            format!(
                "the config has no rule `{}`; its rules are: {}",
                crate::text::escape_controls(name),
                self.rules
                    .iter()
                    .map(|rule| rule.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The rule `firewall-ctl allow` adds to without `--rule`: the one
    /// marked `default = true`, else the only rule.
    pub fn default_rule(&self) -> Result<&Rule, String> {
        if let Some(rule) = self.rules.iter().find(|rule| rule.default) {
            return Ok(rule);
        }
        match self.rules.as_slice() {
            [only] => Ok(only),
            [] => Err("the config has no rules; add one to the config file and reload".to_string()),
            rules => Err(format!(
                "the config has {} rules and none is marked `default = true`; pass `--rule NAME` with one of: {}",
                rules.len(),
                rules
                    .iter()
                    .map(|rule| rule.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// Why a source prefix cannot go into a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// `0.0.0.0/0`, `::/0`, or shorter than /8 or /16, without the opt-in.
    #[error("{}", broad_message(prefix))]
    Broad { prefix: IpPrefix },
}

fn broad_message(prefix: &IpPrefix) -> String {
    if prefix.is_any() {
        format!("`{prefix}` lets every address in")
    } else {
        format!(
            "`{prefix}` covers a large share of the internet (shorter than /{})",
            if prefix.is_v4() {
                prefix::MIN_V4_LEN
            } else {
                prefix::MIN_V6_LEN
            }
        )
    }
}

/// Parses one source of a rule: the one check the config's `sources` and
/// `firewall-ctl allow` share. `broad_allowed` is the rule's
/// `allow_any_source` (and, for `allow`, `--force`).
pub fn parse_source(text: &str, broad_allowed: bool) -> Result<IpPrefix, SourceError> {
    admit_source(text.parse()?, broad_allowed)
}

/// `prefix`, unless it is broad and `broad_allowed` is not set.
fn admit_source(prefix: IpPrefix, broad_allowed: bool) -> Result<IpPrefix, SourceError> {
    if prefix.is_broad() && !broad_allowed {
        return Err(SourceError::Broad { prefix });
    }
    Ok(prefix)
}

/// A config file that cannot be used. Nothing has been applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("config `{}` is invalid:\n{}", path.display(), Problems(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a config, at a line when we know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            match problem.line {
                Some(line) => write!(f, "  line {line}: {}", problem.message)?,
                None => write!(f, "  {}", problem.message)?,
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    #[serde(default = "enforce_by_default")]
    enforce: bool,
    socket: Option<Spanned<PathBuf>>,
    state_dir: Option<PathBuf>,
    bpf_dir: Option<PathBuf>,
    control_group: Option<Spanned<String>>,
    read_group: Option<Spanned<String>>,
    #[serde(default = "track_outbound_by_default")]
    track_outbound: bool,
    #[serde(default)]
    flows: flows::RawFlows,
    #[serde(default)]
    feeds: Vec<feeds::RawFeed>,
    metrics: Option<RawMetrics>,
    blocked: Option<RawBlocked>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

fn enforce_by_default() -> bool {
    true
}

fn track_outbound_by_default() -> bool {
    true
}

/// `[metrics]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
    #[serde(default)]
    per_entry: bool,
}

/// `[blocked]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlocked {
    sample_rate: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    ports: Spanned<Vec<Spanned<String>>>,
    sources: Option<Spanned<Vec<Spanned<RawSource>>>>,
    feeds: Option<Spanned<Vec<Spanned<String>>>>,
    comment: Option<String>,
    /// Required to list `0.0.0.0/0`, `::/0` or prefixes shorter than /8
    /// (IPv4) or /16 (IPv6): opening a port to everyone must be deliberate.
    #[serde(default)]
    allow_any_source: bool,
    default: Option<Spanned<bool>>,
}

/// A `sources` element, parsed as it is read: a 10 MB config has half a
/// million, and reading each into a `String` first took as many
/// allocations and about 20 MB more at the parse's peak. The rare error is
/// boxed: unboxed, each element took 80 bytes instead of 40.
struct RawSource(Result<IpPrefix, Box<PrefixError>>);

impl RawSource {
    fn read(text: &str) -> Self {
        Self(text.parse().map_err(Box::new))
    }
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address or prefix as a string, e.g. \"203.0.113.0/24\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawSource, E> {
                Ok(RawSource::read(text))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Reads and validates the config at `path` for `host`.
pub fn load(path: &Path, host: &dyn Host) -> Result<Config, ConfigError> {
    parse_at(path, &read(path)?, host)
}

/// Reads the config file at `path` (a regular file of bounded size).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    fsutil::read_regular_file(path, MAX_FILE_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Validates `text`, the contents of (or a copy kept of) the config at `path`.
pub fn parse_at(path: &Path, text: &str, host: &dyn Host) -> Result<Config, ConfigError> {
    parse(text, host).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// The socket and `bpf_dir` a config names, without validating the rest:
/// removing a firewall must work when its config no longer fits the host
/// (an interface gone, a group deleted).
pub fn paths(path: &Path) -> Result<(PathBuf, PathBuf), ConfigError> {
    let text = read(path)?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: err.span().map(|span| LineIndex::new(&text).line_of(&span)),
                message: escape_controls(err.message().trim_end()),
            }],
        })?;
    let path_of = |key: &str, default: &str| {
        PathBuf::from(
            table
                .get(key)
                .and_then(toml::Value::as_str)
                .unwrap_or(default),
        )
    };
    Ok((
        path_of("socket", DEFAULT_SOCKET),
        path_of("bpf_dir", DEFAULT_BPF_DIR),
    ))
}

/// Validates config text; every problem found is returned.
pub fn parse(text: &str, host: &dyn Host) -> Result<Config, Vec<Problem>> {
    let lines = LineIndex::new(text);
    let raw = read_raw(text).map_err(|err| {
        vec![Problem {
            line: err.span().map(|span| lines.line_of(&span)),
            message: escape_controls(err.message().trim_end()),
        }]
    })?;
    let mut validator = Validator {
        lines,
        host,
        problems: Vec::new(),
    };
    let config = validator.config(raw);
    if validator.problems.is_empty() {
        Ok(config)
    } else {
        Err(validator.problems)
    }
}

/// Deserializes `text`, its plain `sources` arrays read apart (see
/// [`source_lists`]). Errors always come from toml reading `text` itself.
fn read_raw(text: &str) -> Result<RawConfig, toml::de::Error> {
    if let Some(taken) = source_lists::take(text)
        && let Ok(mut raw) = toml::from_str::<RawConfig>(&taken.blanked)
        && taken.restore(&mut raw.rules)
    {
        return Ok(raw);
    }
    toml::from_str(text)
}

/// Byte offsets of line starts, so each problem finds its line in
/// O(log n): reporting stays linear in the file however many problems it has.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        Self(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(at, _)| at + 1))
                .collect(),
        )
    }

    /// 1-based line of the span's start.
    fn line_of(&self, span: &Range<usize>) -> usize {
        self.0.partition_point(|&start| start <= span.start)
    }
}

/// Collects problems while building a [`Config`]; the config is only used
/// when no problem was found.
struct Validator<'a> {
    lines: LineIndex,
    host: &'a dyn Host,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    /// Records a problem at `at`'s line. Messages quote input, so control
    /// characters are escaped here, once for all of them.
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl AsRef<str>) {
        self.problems.push(Problem {
            line: Some(self.lines.line_of(&at.span())),
            message: escape_controls(message.as_ref()),
        });
    }

    fn metrics(&mut self, raw: RawMetrics) -> Option<MetricsSettings> {
        match raw.listen.get_ref().parse() {
            Ok(listen) => Some(MetricsSettings {
                listen,
                per_entry: raw.per_entry,
            }),
            Err(_) => {
                self.problem(
                    &raw.listen,
                    format!(
                        "`metrics.listen = \"{}\"` is not an address and port; write e.g. \"127.0.0.1:9469\"",
                        raw.listen.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn sample_rate(&mut self, raw: Option<RawBlocked>) -> u32 {
        let Some(rate) = raw.and_then(|raw| raw.sample_rate) else {
            return DEFAULT_SAMPLE_RATE;
        };
        if *rate.get_ref() > MAX_SAMPLE_RATE {
            self.problem(
                &rate,
                format!(
                    "`blocked.sample_rate = {}` is too high; write at most {MAX_SAMPLE_RATE} samples per second per CPU (default {DEFAULT_SAMPLE_RATE}; 0 turns sampling off)",
                    rate.get_ref()
                ),
            );
        }
        *rate.get_ref()
    }

    fn group(&mut self, key: &str, name: Option<Spanned<String>>) -> Option<Group> {
        let name = name?;
        match self.host.group_id(name.get_ref()) {
            Some(gid) => Some(Group {
                name: name.get_ref().clone(),
                gid,
            }),
            None => {
                self.problem(
                    &name,
                    format!(
                        "`{key}`: group `{}` does not exist on this host; create it (`groupadd {}`) or remove the key",
                        name.get_ref(),
                        name.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        if raw.interfaces.get_ref().is_empty() {
            self.problem(
                &raw.interfaces,
                "`interfaces` is empty; list the interfaces to protect, e.g. `interfaces = [\"eth0\"]`",
            );
        }
        let mut interfaces = Vec::new();
        for name in raw.interfaces.get_ref() {
            if let Err(message) = check_interface_name(name.get_ref()) {
                self.problem(name, message);
            } else if interfaces.contains(name.get_ref()) {
                self.problem(
                    name,
                    format!("interface `{}` is listed twice", name.get_ref()),
                );
            } else if !self.host.interface_exists(name.get_ref()) {
                self.problem(
                    name,
                    format!("interface `{}` does not exist on this host; `ip link` lists the interfaces", name.get_ref()),
                );
            } else {
                interfaces.push(name.get_ref().clone());
            }
        }
        if raw.rules.len() > MAX_RULES {
            self.problems.push(Problem {
                line: None,
                message: format!(
                    "{} rules; at most {MAX_RULES} are supported: merge rules that expose the same ports",
                    raw.rules.len()
                ),
            });
        }
        let feeds = self.feeds(raw.feeds);
        let mut names = HashSet::new();
        let mut default_rule: Option<String> = None;
        let mut rules = Vec::new();
        for raw_rule in raw.rules {
            let is_default = raw_rule.default.clone();
            let rule = self.rule(raw_rule, &mut names, &feeds);
            if let Some(is_default) = is_default.filter(|flag| *flag.get_ref()) {
                if let Some(first) = &default_rule {
                    self.problem(
                        &is_default,
                        format!(
                            "rule `{}`: `default = true` is already set on rule `{first}`; only one rule can be the default",
                            rule.name
                        ),
                    );
                } else {
                    default_rule = Some(rule.name.clone());
                }
            }
            rules.push(rule);
        }
        for name in &feeds.names {
            if !rules
                .iter()
                .any(|rule: &Rule| rule.feeds.contains(name.get_ref()))
            {
                self.problem(
                    name,
                    format!(
                        "feed `{}` is used by no rule; add it to a rule's `feeds`, or remove it",
                        name.get_ref()
                    ),
                );
            }
        }
        let socket = match raw.socket {
            Some(socket) => {
                if let Some(kind) = self.host.non_socket_at(socket.get_ref()) {
                    self.problem(
                        &socket,
                        format!(
                            "`socket`: `{}` is {kind}, not a socket; firewall-ctl only ever replaces a stale socket, so choose another path",
                            socket.get_ref().display()
                        ),
                    );
                }
                socket.into_inner()
            }
            None => PathBuf::from(DEFAULT_SOCKET),
        };
        Config {
            interfaces,
            xdp_mode: raw.xdp_mode,
            enforce: raw.enforce,
            socket,
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            bpf_dir: raw
                .bpf_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_DIR)),
            control_group: self.group("control_group", raw.control_group),
            read_group: self.group("read_group", raw.read_group),
            track_outbound: raw.track_outbound,
            flows: self.flows(raw.flows),
            metrics: raw.metrics.and_then(|metrics| self.metrics(metrics)),
            sample_rate: self.sample_rate(raw.blocked),
            feeds: feeds.valid,
            rules,
        }
    }

    fn rule(
        &mut self,
        raw: RawRule,
        names: &mut HashSet<String>,
        feeds: &feeds::DeclaredFeeds,
    ) -> Rule {
        let name = raw.name.get_ref();
        if let Err(message) = check_name(name) {
            self.problem(&raw.name, format!("rule name {message}"));
        } else if !names.insert(name.clone()) {
            self.problem(
                &raw.name,
                format!("rule name `{name}` is used twice; names must be unique"),
            );
        }
        if raw.ports.get_ref().is_empty() {
            self.problem(
                &raw.ports,
                format!("rule `{name}`: `ports` is empty; list at least one, e.g. `[\"tcp/443\"]`"),
            );
        }
        let no_sources = raw
            .sources
            .as_ref()
            .is_none_or(|sources| sources.get_ref().is_empty());
        let no_feeds = raw
            .feeds
            .as_ref()
            .is_none_or(|feeds| feeds.get_ref().is_empty());
        if no_sources && no_feeds {
            let message = format!(
                "rule `{name}`: no `sources` and no `feeds`; list at least one address or prefix, or a feed"
            );
            match (&raw.sources, &raw.feeds) {
                (Some(sources), _) => self.problem(sources, message),
                (None, Some(feed_names)) => self.problem(feed_names, message),
                (None, None) => self.problem(&raw.name, message),
            }
        }
        let mut rule_feeds: Vec<String> = Vec::new();
        for feed in raw.feeds.map(Spanned::into_inner).unwrap_or_default() {
            if !feeds.declares(feed.get_ref()) {
                self.problem(
                    &feed,
                    format!(
                        "rule `{name}`: no feed is named `{}`; define it in a `[[feeds]]` table or remove it",
                        feed.get_ref()
                    ),
                );
            } else if !rule_feeds.contains(feed.get_ref()) {
                rule_feeds.push(feed.into_inner());
            }
        }
        let mut ports = Vec::new();
        for text in raw.ports.get_ref() {
            match text.get_ref().parse::<PortRange>() {
                Ok(range) => ports.push(range),
                Err(err) => self.problem(text, format!("rule `{name}`: {err}")),
            }
        }
        let elements = raw
            .sources
            .as_ref()
            .map_or(&[][..], |sources| sources.get_ref());
        let mut sources = Vec::with_capacity(elements.len());
        for element in elements {
            match &element.get_ref().0 {
                Ok(prefix) => match admit_source(*prefix, raw.allow_any_source) {
                    Ok(prefix) => sources.push(prefix),
                    Err(err) => self.problem(
                        element,
                        format!(
                            "rule `{name}`: {err}; if that is intended, add `allow_any_source = true` to the rule"
                        ),
                    ),
                },
                Err(err) => self.problem(element, format!("rule `{name}`: {err}")),
            }
        }
        Rule {
            name: name.clone(),
            ports,
            sources: PrefixList::new(sources),
            feeds: rule_feeds,
            comment: raw.comment,
            allow_any_source: raw.allow_any_source,
            default: raw.default.is_some_and(|flag| flag.into_inner()),
        }
    }
}

/// Rule and feed names: 1 to 64 letters, digits, '-' and '_'.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Err(format!(
            "`{name}` is invalid; use 1 to 64 letters, digits, '-' and '_'"
        ))
    } else {
        Ok(())
    }
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace, not `.` or `..`.
fn check_interface_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)"
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests;
