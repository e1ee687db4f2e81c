//! From the entries a feed lists to the prefixes it adds: each parsed,
//! host bits masked (and reported), prefixes too broad for a feed refused,
//! duplicates removed, nested and adjacent prefixes aggregated, families
//! split; and whether such a list may replace the last good one.

use std::{collections::HashSet, net::IpAddr};

use ipnet::IpNet;

use crate::config::IpPrefix;

/// Shortest prefixes a feed may hold: the limits `allow_any_source`
/// lifts for a rule's own sources, which no download can lift.
const MIN_V4_LEN: u8 = 8;
const MIN_V6_LEN: u8 = 16;

/// An entry that makes the whole list unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry {position} `{text}` is not an IP address or prefix")]
    Invalid { position: usize, text: String },
    #[error(
        "entry {position} `{text}` covers too much of the internet (shorter than /{MIN_V4_LEN} for IPv4, /{MIN_V6_LEN} for IPv6); a feed may not open a port that wide"
    )]
    Broad { position: usize, text: String },
    #[error(
        "entry {position} `{text}` is an IPv4-mapped IPv6 address, which never matches IPv4 traffic"
    )]
    Mapped { position: usize, text: String },
}

/// A feed's list, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedList {
    /// Aggregated and sorted (IPv4 first).
    pub prefixes: Vec<IpPrefix>,
    /// Distinct prefixes the feed listed, before aggregation.
    pub listed: usize,
}

/// A normalised list and the entries whose host bits were cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub list: FeedList,
    /// `(as listed, as used)`.
    pub masked: Vec<(String, IpNet)>,
}

/// An entry as an error quotes it: the feed chose it, so it is cut short
/// (a valid prefix has at most 43 characters) and its control characters
/// escaped.
fn quoted(text: &str) -> String {
    crate::text::truncated(&crate::text::escape_controls(text), 96).into_owned()
}

/// Parses and normalises `entries` (as a format read them).
pub fn normalize(entries: &[String]) -> Result<Normalized, EntryError> {
    let mut prefixes = Vec::with_capacity(entries.len());
    let mut masked = Vec::new();
    for (index, text) in entries.iter().enumerate() {
        let position = index + 1;
        let prefix = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| EntryError::Invalid {
                position,
                text: quoted(text),
            })?;
        let (broad, mapped) = match prefix {
            IpNet::V4(v4) => (v4.prefix_len() < MIN_V4_LEN, false),
            IpNet::V6(v6) => (
                v6.prefix_len() < MIN_V6_LEN,
                v6.addr().to_ipv4_mapped().is_some(),
            ),
        };
        if broad {
            return Err(EntryError::Broad {
                position,
                text: quoted(text),
            });
        }
        if mapped {
            return Err(EntryError::Mapped {
                position,
                text: text.clone(),
            });
        }
        let network = prefix.trunc();
        if network != prefix {
            masked.push((text.clone(), network));
        }
        prefixes.push(network);
    }
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut aggregated: Vec<IpPrefix> = IpNet::aggregate(&prefixes)
        .into_iter()
        .map(|prefix| match prefix {
            IpNet::V4(v4) => IpPrefix::V4 {
                address: v4.network(),
                len: v4.prefix_len(),
            },
            IpNet::V6(v6) => IpPrefix::V6 {
                address: v6.network(),
                len: v6.prefix_len(),
            },
        })
        .collect();
    crate::config::prefix::sort_and_dedup(&mut aggregated);
    let list = FeedList {
        prefixes: aggregated,
        listed: prefixes.len(),
    };
    Ok(Normalized { list, masked })
}

/// Why a good-looking list may still not replace the last good one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("{listed} entries, fewer than `min_entries = {min_entries}`")]
    TooFew { listed: usize, min_entries: usize },
    #[error(
        "it removes {removed} of the {before} prefixes of the last good list ({percent}%), more than `max_shrink = \"{max_percent}%\"`"
    )]
    Shrinks {
        removed: usize,
        before: usize,
        percent: usize,
        max_percent: u8,
    },
}

impl FeedList {
    /// Aggregated prefixes of each family: `(IPv4, IPv6)`.
    pub fn families(&self) -> (usize, usize) {
        let v4 = self.prefixes.iter().filter(|prefix| prefix.is_v4()).count();
        (v4, self.prefixes.len() - v4)
    }

    /// Whether the list holds exactly `prefix` (after aggregation).
    pub fn lists(&self, prefix: &IpPrefix) -> bool {
        self.prefixes.binary_search(prefix).is_ok()
    }

    /// Whether this list may replace `last_good`: at least `min_entries`
    /// listed, and no more than `max_shrink_percent` of the last good
    /// list's prefixes gone.
    pub fn check_update(
        &self,
        last_good: Option<&FeedList>,
        min_entries: usize,
        max_shrink_percent: u8,
    ) -> Result<(), UpdateError> {
        if self.listed < min_entries {
            return Err(UpdateError::TooFew {
                listed: self.listed,
                min_entries,
            });
        }
        let Some(last_good) = last_good.filter(|last| !last.prefixes.is_empty()) else {
            return Ok(());
        };
        let kept: HashSet<&IpPrefix> = self.prefixes.iter().collect();
        let removed = last_good
            .prefixes
            .iter()
            .filter(|prefix| !kept.contains(prefix))
            .count();
        let before = last_good.prefixes.len();
        if removed * 100 > before * usize::from(max_shrink_percent) {
            return Err(UpdateError::Shrinks {
                removed,
                before,
                percent: removed * 100 / before,
                max_percent: max_shrink_percent,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|entry| entry.to_string()).collect()
    }

    #[test]
    fn entries_are_masked_deduplicated_aggregated_and_split() {
        let normalized = normalize(&strings(&[
            "203.0.113.10",
            "203.0.113.0/28",
            "198.51.100.5/24",
            "2001:db8:10::/48",
            "203.0.113.10",
            "192.0.2.0/25",
            "192.0.2.128/25",
            "2001:db8:10:1::/64",
        ]))
        .unwrap();
        assert_eq!(
            normalized.masked,
            [(
                "198.51.100.5/24".to_string(),
                "198.51.100.0/24".parse::<IpNet>().unwrap()
            )]
        );
        let list = normalized.list;
        assert_eq!(list.listed, 7, "the duplicate counts once");
        let prefixes: Vec<String> = list.prefixes.iter().map(ToString::to_string).collect();
        // 203.0.113.10 sits inside /28; the two /25 halves make a /24.
        assert_eq!(
            prefixes,
            [
                "192.0.2.0/24",
                "198.51.100.0/24",
                "203.0.113.0/28",
                "2001:db8:10::/48"
            ]
        );
        assert_eq!(list.families(), (3, 1));
        assert!(list.lists(&"198.51.100.0/24".parse().unwrap()));
        assert!(!list.lists(&"198.51.100.0/25".parse().unwrap()));
    }

    #[test]
    fn a_bad_broad_or_mapped_entry_refuses_the_whole_list() {
        let err = |entries: &[&str]| normalize(&strings(entries)).unwrap_err().to_string();
        assert_eq!(
            err(&["203.0.113.0/24", "203.0.113.0/33"]),
            "entry 2 `203.0.113.0/33` is not an IP address or prefix"
        );
        assert_eq!(
            err(&["not-an-ip"]),
            "entry 1 `not-an-ip` is not an IP address or prefix"
        );
        assert!(err(&["0.0.0.0/0"]).starts_with("entry 1 `0.0.0.0/0` covers too much"));
        assert!(err(&["203.0.113.0/24", "10.0.0.0/7"]).starts_with("entry 2 `10.0.0.0/7`"));
        assert!(err(&["::/0"]).contains("covers too much"));
        assert!(err(&["2001::/15"]).contains("covers too much"));
        assert!(err(&["::ffff:203.0.113.1"]).contains("IPv4-mapped"));
        // The narrowest allowed prefixes pass.
        assert!(normalize(&strings(&["10.0.0.0/8", "2001::/16"])).is_ok());
    }

    fn list(entries: &[&str]) -> FeedList {
        normalize(&strings(entries)).unwrap().list
    }

    #[test]
    fn an_update_needs_min_entries_and_may_shrink_only_so_far() {
        let last = list(&[
            "192.0.2.0/28",
            "192.0.2.32/28",
            "198.51.100.0/28",
            "203.0.113.0/28",
        ]);
        let half = list(&["192.0.2.0/28", "192.0.2.32/28"]);
        assert_eq!(half.check_update(Some(&last), 1, 50), Ok(()));
        let quarter = list(&["192.0.2.0/28", "2001:db8::/48"]);
        assert_eq!(
            quarter.check_update(Some(&last), 1, 50),
            Err(UpdateError::Shrinks {
                removed: 3,
                before: 4,
                percent: 75,
                max_percent: 50
            })
        );
        assert_eq!(
            quarter
                .check_update(Some(&last), 1, 50)
                .unwrap_err()
                .to_string(),
            "it removes 3 of the 4 prefixes of the last good list (75%), more than `max_shrink = \"50%\"`"
        );
        assert_eq!(quarter.check_update(Some(&last), 1, 100), Ok(()));
        assert_eq!(
            quarter.check_update(None, 1, 0),
            Ok(()),
            "no last good list"
        );
        assert_eq!(
            half.check_update(None, 3, 50),
            Err(UpdateError::TooFew {
                listed: 2,
                min_entries: 3
            })
        );
    }
}
