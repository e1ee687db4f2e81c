//! `[[feeds]]`: vendor IP lists the daemon fetches and keeps current, and
//! dynamic-DNS names it resolves. Rules take their entries with `feeds`.

use std::{collections::BTreeMap, fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;
use toml::Spanned;

/// One feed, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub name: String,
    pub source: FeedSource,
    pub format: FeedFormat,
    /// Filter key (valid for the format) -> accepted values.
    pub filter: BTreeMap<String, Vec<String>>,
    /// How often it is fetched (or, for `dns`, the longest a resolved
    /// address is kept before asking again).
    pub refresh: Duration,
    /// Data older than this raises an alarm.
    pub max_age: Duration,
    /// Longest a download (or a DNS answer) may take.
    pub timeout: Duration,
    /// Fewer entries than this is a failed update.
    pub min_entries: usize,
    /// An update that removes more than this percentage of the last good
    /// list is refused.
    pub max_shrink_percent: u8,
}

/// The feeds a config declares.
#[derive(Default)]
pub(super) struct DeclaredFeeds {
    /// Every feed name, as written.
    pub names: Vec<Spanned<String>>,
    /// The feeds without problems.
    pub valid: Vec<Feed>,
}

impl DeclaredFeeds {
    pub fn declares(&self, name: &str) -> bool {
        self.names.iter().any(|known| known.get_ref() == name)
    }
}

/// Where a feed's list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSource {
    /// `https://` or `http://`.
    Url(String),
    /// `file:///path`: a list kept on the host (air-gapped hosts).
    File(PathBuf),
    /// Names whose A and AAAA records are the list.
    Dns(Vec<String>),
}

/// Shortest `refresh`: vendors rate-limit (GitHub: 60 requests an hour).
const MIN_REFRESH: Duration = Duration::from_secs(60);
const DEFAULT_REFRESH: Duration = Duration::from_secs(6 * 3600);
/// DNS names: the records' TTL decides, bounded by this.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(300);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3 * 24 * 3600);
const DEFAULT_MAX_SHRINK_PERCENT: u8 = 50;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `timeout`: `feeds refresh` waits for the fetch, and the CLI
/// waits 10 minutes for `feeds refresh`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// `[[feeds]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    names: Option<Spanned<Vec<Spanned<String>>>>,
    format: Spanned<String>,
    #[serde(default)]
    filter: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    refresh: Option<Spanned<String>>,
    max_age: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    min_entries: Option<Spanned<i64>>,
    max_shrink: Option<Spanned<String>>,
}

impl super::Validator<'_> {
    /// The feeds, each problem recorded. A feed with a problem is left
    /// out; its name stays declared, so rules naming it are not reported
    /// twice.
    pub(super) fn feeds(&mut self, raw: Vec<RawFeed>) -> DeclaredFeeds {
        let mut declared = DeclaredFeeds::default();
        for raw in raw {
            let name = raw.name.get_ref().clone();
            if let Err(message) = super::check_name(&name) {
                self.problem(&raw.name, format!("feed name {message}"));
                continue;
            }
            if declared.names.iter().any(|known| *known.get_ref() == name) {
                self.problem(
                    &raw.name,
                    format!("feed name `{name}` is used twice; names must be unique"),
                );
                continue;
            }
            declared.names.push(raw.name.clone());
            if let Some(feed) = self.feed(name, raw) {
                declared.valid.push(feed);
            }
        }
        declared
    }

    fn feed(&mut self, name: String, raw: RawFeed) -> Option<Feed> {
        let problems_before = self.problems.len();
        let format = match raw.format.get_ref().parse::<FeedFormat>() {
            Ok(format) => Some(format),
            Err(()) => {
                self.problem(
                    &raw.format,
                    format!(
                        "feed `{name}`: unknown format `{}`; use one of {}",
                        raw.format.get_ref(),
                        FeedFormat::ALL
                            .iter()
                            .map(|format| format.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        };
        let source = match (format, raw.url, raw.names) {
            (Some(FeedFormat::Dns), None, Some(names)) => self.dns_names(&name, names),
            (Some(FeedFormat::Dns), Some(url), _) => {
                self.problem(
                    &url,
                    format!(
                        "feed `{name}`: a `dns` feed has `names`, not a `url`; remove `url` or choose the list's format"
                    ),
                );
                None
            }
            (Some(FeedFormat::Dns), None, None) => {
                self.problem(
                    &raw.format,
                    format!(
                        "feed `{name}`: a `dns` feed needs `names`, e.g. `names = [\"office.example.org\"]`"
                    ),
                );
                None
            }
            (_, _, Some(names)) => {
                self.problem(
                    &names,
                    format!(
                        "feed `{name}`: `names` belongs to `format = \"dns\"` feeds; a list fetched from a URL has only `url`"
                    ),
                );
                None
            }
            (_, Some(url), None) => self.url(&name, url),
            (_, None, None) => {
                self.problem(
                    &raw.name,
                    format!(
                        "feed `{name}`: `url` is missing; give the list's `https://` address, or `file:///path` for a local copy"
                    ),
                );
                None
            }
        };
        let filter = match (format, raw.filter) {
            (Some(format), Some(filter)) => self.filter(&name, format, filter),
            (Some(FeedFormat::Github), None) => {
                self.problem(
                    &raw.format,
                    format!(
                        "feed `{name}`: a `github` feed needs `filter = {{ keys = [...] }}` naming the lists to take, e.g. `keys = [\"hooks\"]` for webhooks; taking every list would admit all of GitHub Actions"
                    ),
                );
                BTreeMap::new()
            }
            _ => BTreeMap::new(),
        };
        let default_refresh = if format == Some(FeedFormat::Dns) {
            DEFAULT_DNS_REFRESH
        } else {
            DEFAULT_REFRESH
        };
        let refresh = self.duration(
            &name,
            "refresh",
            raw.refresh,
            default_refresh,
            MIN_REFRESH..=Duration::MAX,
        );
        let max_age = self.duration(
            &name,
            "max_age",
            raw.max_age,
            DEFAULT_MAX_AGE,
            MIN_REFRESH..=Duration::MAX,
        );
        let timeout = self.duration(
            &name,
            "timeout",
            raw.timeout,
            DEFAULT_TIMEOUT,
            MIN_TIMEOUT..=MAX_TIMEOUT,
        );
        let min_entries = match raw.min_entries {
            None => 1,
            Some(value) => match usize::try_from(*value.get_ref()) {
                Ok(count) if count >= 1 => count,
                _ => {
                    self.problem(
                        &value,
                        format!(
                            "feed `{name}`: `min_entries = {}` must be at least 1: an empty list is never a good update",
                            value.get_ref()
                        ),
                    );
                    1
                }
            },
        };
        // A dynamic address replaces itself: all of a `dns` list may change.
        let default_shrink = if format == Some(FeedFormat::Dns) {
            100
        } else {
            DEFAULT_MAX_SHRINK_PERCENT
        };
        let max_shrink_percent = match raw.max_shrink {
            None => default_shrink,
            Some(text) => match parse_percent(text.get_ref()) {
                Some(percent) => percent,
                None => {
                    self.problem(
                        &text,
                        format!(
                            "feed `{name}`: `max_shrink = \"{}\"` is not a percentage from 0% to 100%; write e.g. \"50%\"",
                            text.get_ref()
                        ),
                    );
                    DEFAULT_MAX_SHRINK_PERCENT
                }
            },
        };
        if self.problems.len() > problems_before {
            return None;
        }
        Some(Feed {
            name,
            source: source?,
            format: format?,
            filter,
            refresh,
            max_age,
            timeout,
            min_entries,
            max_shrink_percent,
        })
    }

    fn url(&mut self, name: &str, url: Spanned<String>) -> Option<FeedSource> {
        let text = url.get_ref();
        if let Some(path) = text.strip_prefix("file://") {
            if path.starts_with('/') {
                return Some(FeedSource::File(PathBuf::from(path)));
            }
        } else if (text.starts_with("https://") || text.starts_with("http://"))
            && text.len() > "https://".len()
            && !text.contains(char::is_whitespace)
        {
            return Some(FeedSource::Url(text.clone()));
        }
        self.problem(
            &url,
            format!(
                "feed `{name}`: `url = \"{text}\"` is not an `https://`, `http://` or `file:///absolute/path` address"
            ),
        );
        None
    }

    fn dns_names(
        &mut self,
        feed: &str,
        names: Spanned<Vec<Spanned<String>>>,
    ) -> Option<FeedSource> {
        if names.get_ref().is_empty() {
            self.problem(
                &names,
                format!("feed `{feed}`: `names` is empty; list the names to resolve"),
            );
            return None;
        }
        let mut valid = Vec::new();
        for name in names.into_inner() {
            if is_dns_name(name.get_ref()) {
                valid.push(name.into_inner().to_ascii_lowercase());
            } else {
                self.problem(
                    &name,
                    format!(
                        "feed `{feed}`: `{}` is not a DNS name (letters, digits, '-' and dots, labels of 1 to 63 characters)",
                        name.get_ref()
                    ),
                );
            }
        }
        Some(FeedSource::Dns(valid))
    }

    fn filter(
        &mut self,
        name: &str,
        format: FeedFormat,
        filter: Spanned<BTreeMap<String, Vec<String>>>,
    ) -> BTreeMap<String, Vec<String>> {
        let allowed = format.filter_keys();
        for (key, values) in filter.get_ref() {
            if !allowed.contains(&key.as_str()) {
                let fix = if allowed.is_empty() {
                    format!("`{}` feeds take no filter; remove it", format.name())
                } else {
                    format!(
                        "`{}` feeds filter by {}",
                        format.name(),
                        allowed
                            .iter()
                            .map(|key| format!("`{key}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.problem(
                    &filter,
                    format!(
                        "feed `{name}`: filter key `{key}` does not belong to the format; {fix}"
                    ),
                );
            } else if values.is_empty() {
                self.problem(
                    &filter,
                    format!("feed `{name}`: filter `{key}` is empty; list the values to take"),
                );
            }
        }
        filter.into_inner()
    }

    fn duration(
        &mut self,
        feed: &str,
        key: &str,
        text: Option<Spanned<String>>,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Duration {
        let Some(text) = text else {
            return default;
        };
        match humantime::parse_duration(text.get_ref()) {
            Ok(duration) if range.contains(&duration) => duration,
            _ => {
                let bounds = if *range.end() == Duration::MAX {
                    format!("of at least {}", humantime::format_duration(*range.start()))
                } else {
                    format!(
                        "between {} and {}",
                        humantime::format_duration(*range.start()),
                        humantime::format_duration(*range.end())
                    )
                };
                self.problem(
                    &text,
                    format!(
                        "feed `{feed}`: `{key} = \"{}\"` is not a duration {bounds}; write e.g. \"{}\"",
                        text.get_ref(),
                        humantime::format_duration(default)
                    ),
                );
                default
            }
        }
    }
}

/// `"50%"` (or `"50"`) as 50; `None` past 100 or unparsable.
fn parse_percent(text: &str) -> Option<u8> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
    number.parse::<u8>().ok().filter(|percent| *percent <= 100)
}

/// A host name: dot-separated labels of letters, digits and hyphens.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

/// How a feed's body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FeedFormat {
    /// One address or prefix per line; `#` and `;` start comments.
    Plain,
    Atlassian,
    Aws,
    Github,
    Gcp,
    Azure,
    Cloudflare,
    Fastly,
    /// The A and AAAA records of `names`.
    Dns,
}

impl FeedFormat {
    pub const ALL: [FeedFormat; 9] = [
        FeedFormat::Plain,
        FeedFormat::Atlassian,
        FeedFormat::Aws,
        FeedFormat::Github,
        FeedFormat::Gcp,
        FeedFormat::Azure,
        FeedFormat::Cloudflare,
        FeedFormat::Fastly,
        FeedFormat::Dns,
    ];

    /// As written in the config.
    pub const fn name(self) -> &'static str {
        match self {
            FeedFormat::Plain => "plain",
            FeedFormat::Atlassian => "atlassian",
            FeedFormat::Aws => "aws",
            FeedFormat::Github => "github",
            FeedFormat::Gcp => "gcp",
            FeedFormat::Azure => "azure",
            FeedFormat::Cloudflare => "cloudflare",
            FeedFormat::Fastly => "fastly",
            FeedFormat::Dns => "dns",
        }
    }

    /// The `filter` keys the format's entries can be selected by.
    pub const fn filter_keys(self) -> &'static [&'static str] {
        match self {
            FeedFormat::Atlassian => &["product", "direction", "perimeter", "region"],
            FeedFormat::Aws => &["service", "region", "network_border_group"],
            FeedFormat::Github => &["keys"],
            FeedFormat::Gcp => &["scope", "service"],
            FeedFormat::Azure => &["name", "region", "system_service"],
            FeedFormat::Plain | FeedFormat::Cloudflare | FeedFormat::Fastly | FeedFormat::Dns => {
                &[]
            }
        }
    }
}

impl FromStr for FeedFormat {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        FeedFormat::ALL
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or(())
    }
}

impl fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
