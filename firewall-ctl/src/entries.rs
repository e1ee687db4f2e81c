//! Allowlist entries and where they come from: the config file, or
//! `firewall-ctl allow` at run time (with who added them, when, why and
//! until when).

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{config::IpPrefix, text::escape_controls};

/// Who made a request, from the control socket's peer credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requester {
    pub uid: u32,
    /// The user name of `uid`, when the host knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{} (uid {})", escape_controls(user), self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// A point in time, written as RFC 3339 UTC to the second
/// (`2026-11-25T12:00:00Z`) in files and JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_seconds(self.0).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text)
            .map(Timestamp)
            .map_err(|err| serde::de::Error::custom(format!("`{text}`: {err}")))
    }
}

/// Longest `--expires` accepted: beyond it is a typo, not a plan.
const MAX_EXPIRY: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parses `--expires`: a duration from `now` (`90m`, `2h`, `3d`, `1w`) or a
/// UTC time (`2026-11-27T18:00:00Z`). Past times are refused.
pub fn parse_expiry(text: &str, now: SystemTime) -> Result<Timestamp, String> {
    let quoted = escape_controls(text);
    let at = if let Ok(duration) = humantime::parse_duration(text) {
        if duration.is_zero() {
            return Err(format!(
                "`--expires {quoted}` is zero; give a duration such as `2h` or `3d`"
            ));
        }
        if duration > MAX_EXPIRY {
            return Err(format!(
                "`--expires {quoted}` is more than 10 years away; leave `--expires` out for an entry that does not expire"
            ));
        }
        now + duration
    } else if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        if at <= now {
            return Err(format!(
                "`--expires {quoted}` is in the past (it is now {}); give a later time or a duration such as `2h`",
                Timestamp(now)
            ));
        }
        at
    } else {
        return Err(format!(
            "`--expires {quoted}` is neither a duration (`90m`, `2h`, `3d`, `1w`) nor a UTC time (`2026-11-27T18:00:00Z`)"
        ));
    };
    Ok(Timestamp(at))
}

/// An entry added with `firewall-ctl allow`, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEntry {
    pub rule: String,
    pub prefix: IpPrefix,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub added_by: Requester,
    pub added_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl RuntimeEntry {
    pub fn key(&self) -> EntryKey {
        (self.rule.clone(), self.prefix)
    }
}

/// A rule name and a prefix: what identifies an entry.
pub type EntryKey = (String, IpPrefix);

/// Runtime entries, by rule and prefix.
pub type RuntimeEntries = BTreeMap<EntryKey, RuntimeEntry>;

/// The entries of `entries` that have expired at `now`.
pub fn expired(entries: &RuntimeEntries, now: SystemTime) -> Vec<EntryKey> {
    entries
        .iter()
        .filter(|(_, entry)| entry.expires_at.is_some_and(|at| at.0 <= now))
        .map(|(key, _)| key.clone())
        .collect()
}

/// When the next entry expires.
pub fn next_expiry(entries: &RuntimeEntries) -> Option<Timestamp> {
    entries.values().filter_map(|entry| entry.expires_at).min()
}

/// Where an effective entry comes from; written `config`, `cli` or
/// `feed:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The config file's `sources`.
    Config,
    /// A feed's last good list.
    Feed(String),
    /// `firewall-ctl allow`.
    Cli,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Config => f.write_str("config"),
            Origin::Feed(name) => write!(f, "feed:{name}"),
            Origin::Cli => f.write_str("cli"),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "config" => Ok(Origin::Config),
            "cli" => Ok(Origin::Cli),
            _ => text
                .strip_prefix("feed:")
                .map(|name| Origin::Feed(name.to_string()))
                .ok_or_else(|| serde::de::Error::custom(format!("unknown origin `{text}`"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    /// An entry root added to `rule` at a fixed time, without comment or expiry.
    pub fn entry(rule: &str, prefix: &str) -> RuntimeEntry {
        RuntimeEntry {
            rule: rule.to_string(),
            prefix: prefix.parse().unwrap(),
            comment: None,
            added_by: Requester {
                uid: 0,
                user: Some("root".to_string()),
                pid: Some(1),
            },
            added_at: Timestamp(now()),
            expires_at: None,
        }
    }

    /// Entries of `(rule, prefix)`.
    pub fn runtime(entries: &[(&str, &str)]) -> RuntimeEntries {
        entries
            .iter()
            .map(|(rule, prefix)| {
                let entry = entry(rule, prefix);
                (entry.key(), entry)
            })
            .collect()
    }

    #[test]
    fn expiry_takes_durations_and_utc_times() {
        assert_eq!(
            parse_expiry("2s", now()).unwrap().0,
            now() + Duration::from_secs(2)
        );
        assert_eq!(
            parse_expiry("3d", now()).unwrap().0,
            now() + Duration::from_secs(3 * 86400)
        );
        let at = parse_expiry("2027-01-15T18:00:00Z", now()).unwrap();
        assert_eq!(at.to_string(), "2027-01-15T18:00:00Z");
    }

    #[test]
    fn bad_expiries_say_what_to_write() {
        let past = parse_expiry("2020-01-01T00:00:00Z", now()).unwrap_err();
        assert!(past.contains("is in the past"), "{past}");
        let garbage = parse_expiry("friday", now()).unwrap_err();
        assert!(
            garbage.contains("neither a duration") && garbage.contains("`2h`"),
            "{garbage}"
        );
        assert!(parse_expiry("0s", now()).unwrap_err().contains("is zero"));
        assert!(parse_expiry("20y", now()).unwrap_err().contains("10 years"));
    }

    #[test]
    fn expired_and_next_expiry() {
        let entry = |prefix: &str, expires: Option<u64>| RuntimeEntry {
            expires_at: expires.map(|secs| Timestamp(now() + Duration::from_secs(secs))),
            ..entry("r", prefix)
        };
        let entries: RuntimeEntries = [
            entry("192.0.2.1", Some(10)),
            entry("192.0.2.2", Some(20)),
            entry("192.0.2.3", None),
        ]
        .into_iter()
        .map(|entry| (entry.key(), entry))
        .collect();
        assert_eq!(
            next_expiry(&entries),
            Some(Timestamp(now() + Duration::from_secs(10)))
        );
        let gone = expired(&entries, now() + Duration::from_secs(15));
        assert_eq!(gone, [("r".to_string(), "192.0.2.1".parse().unwrap())]);
    }
}
