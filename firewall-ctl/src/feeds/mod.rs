//! Vendor IP feeds: the formats vendors publish their ranges in, turned
//! into validated, normalised prefix lists.

pub mod fetch;
pub mod formats;
pub mod normalize;
pub mod schedule;
pub mod store;

use std::{collections::BTreeMap, fmt, str::FromStr};

/// Each feed's last good list, by feed name.
pub type FeedLists = BTreeMap<String, normalize::FeedList>;

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

/// How a feed's source is named in status and audit records.
pub fn source_name(source: &crate::config::FeedSource) -> String {
    match source {
        crate::config::FeedSource::Url(url) => url.clone(),
        crate::config::FeedSource::File(path) => format!("file://{}", path.display()),
        crate::config::FeedSource::Dns(names) => names.join(", "),
    }
}

/// Reads, normalises and checks a body fetched for `feed` against its
/// last good list: the list to apply, or why it must not be.
pub fn prepare(
    feed: &crate::config::Feed,
    body: &[u8],
    last_good: Option<&normalize::FeedList>,
) -> Result<normalize::Normalized, String> {
    let entries =
        formats::entries(feed.format, &feed.filter, body).map_err(|err| err.to_string())?;
    let normalized = normalize::normalize(&entries).map_err(|err| err.to_string())?;
    normalized
        .list
        .check_update(last_good, feed.min_entries, feed.max_shrink_percent)
        .map_err(|err| err.to_string())?;
    Ok(normalized)
}
