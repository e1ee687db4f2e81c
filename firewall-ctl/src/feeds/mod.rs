//! Vendor IP feeds: the formats vendors publish their ranges in, turned
//! into validated, normalised prefix lists.

pub mod fetch;
pub mod formats;
pub mod normalize;
pub mod schedule;
pub mod store;

use std::{collections::BTreeMap, time::SystemTime};

/// What is known of a feed beside its list: the one shape its last good
/// copy loads into ([`store::LastGood::state`]), the scheduler starts from,
/// the policy writer keeps, and `feeds` and `status` are made from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedState {
    /// When the list in force was last confirmed current, and with what.
    pub fetched_at: Option<SystemTime>,
    pub validator: Option<store::Validator>,
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
    pub next_attempt: Option<SystemTime>,
}

/// Each feed's state, by feed name.
pub type FeedStates = BTreeMap<String, FeedState>;

/// Each feed's last good list, by feed name.
pub type FeedLists = BTreeMap<String, normalize::FeedList>;

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
