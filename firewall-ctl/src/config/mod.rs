//! The TOML config: parsed strictly, validated completely, and turned into a
//! [`Config`] that cannot hold a bad value.
//!
//! Every problem in a file is reported at once, each with the file, the line
//! and the value, and how to fix it. Nothing here does I/O beyond reading the
//! file, so it is all unit-tested.

pub mod ports;
pub mod prefix;

use std::{
    collections::HashSet,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use firewall_common::limits::MAX_RULES;
use serde::Deserialize;
use toml::Spanned;

pub use self::{ports::PortRange, prefix::IpPrefix};

/// Where the control socket lives unless the config or `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/firewall-ctl/ctl.sock";

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    /// `false`: monitor mode, count what would be dropped but drop nothing.
    pub enforce: bool,
    pub socket: PathBuf,
    pub rules: Vec<Rule>,
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
    pub sources: Vec<IpPrefix>,
    pub comment: Option<String>,
}

/// A config file that cannot be used. Nothing has been applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    socket: Option<PathBuf>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

fn enforce_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    ports: Spanned<Vec<Spanned<String>>>,
    sources: Spanned<Vec<Spanned<String>>>,
    comment: Option<String>,
    /// Required to list `0.0.0.0/0` or `::/0`: opening a port to everyone
    /// must be deliberate.
    #[serde(default)]
    allow_any_source: bool,
}

/// Reads and validates the config at `path`; `interface_exists` tells
/// whether this host has an interface of that name.
pub fn load(path: &Path, interface_exists: &dyn Fn(&str) -> bool) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, interface_exists).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Validates config text; every problem found is returned.
pub fn parse(text: &str, interface_exists: &dyn Fn(&str) -> bool) -> Result<Config, Vec<Problem>> {
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        vec![Problem {
            line: err.span().map(|span| line_of(text, &span)),
            message: err.message().trim_end().to_string(),
        }]
    })?;
    let mut validator = Validator {
        text,
        interface_exists,
        problems: Vec::new(),
    };
    let config = validator.config(raw);
    if validator.problems.is_empty() {
        Ok(config)
    } else {
        Err(validator.problems)
    }
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// Collects problems while building a [`Config`]; the config is only used
/// when no problem was found.
struct Validator<'a> {
    text: &'a str,
    interface_exists: &'a dyn Fn(&str) -> bool,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: Some(line_of(self.text, &at.span())),
            message: message.into(),
        });
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
            } else if !(self.interface_exists)(name.get_ref()) {
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
        let mut names = HashSet::new();
        let rules = raw
            .rules
            .into_iter()
            .map(|rule| self.rule(rule, &mut names))
            .collect();
        Config {
            interfaces,
            xdp_mode: raw.xdp_mode,
            enforce: raw.enforce,
            socket: raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            rules,
        }
    }

    fn rule(&mut self, raw: RawRule, names: &mut HashSet<String>) -> Rule {
        let name = raw.name.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.problem(
                &raw.name,
                format!("rule name `{name}` is invalid; use 1 to 64 letters, digits, '-' and '_'"),
            );
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
        if raw.sources.get_ref().is_empty() {
            self.problem(
                &raw.sources,
                format!("rule `{name}`: `sources` is empty; list at least one address or prefix"),
            );
        }
        let mut ports = Vec::new();
        for text in raw.ports.get_ref() {
            match text.get_ref().parse::<PortRange>() {
                Ok(range) => ports.push(range),
                Err(err) => self.problem(text, format!("rule `{name}`: {err}")),
            }
        }
        let mut sources = Vec::new();
        for text in raw.sources.get_ref() {
            match text.get_ref().parse::<IpPrefix>() {
                Ok(prefix) if prefix.is_any() && !raw.allow_any_source => self.problem(
                    text,
                    format!(
                        "rule `{name}`: `{}` lets every address in; if that is intended, add `allow_any_source = true` to the rule",
                        text.get_ref()
                    ),
                ),
                Ok(prefix) => sources.push(prefix),
                Err(err) => self.problem(text, format!("rule `{name}`: {err}")),
            }
        }
        Rule {
            name: name.clone(),
            ports,
            sources,
            comment: raw.comment,
        }
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
mod tests;
