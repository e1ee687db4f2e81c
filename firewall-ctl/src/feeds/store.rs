//! Each feed's last good list, kept durably in `state_dir/feeds/NAME.json`
//! (written like the state file: temporary file, fsync, rename), so a
//! daemon that starts without network enforces what it last had.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{FeedLists, normalize::FeedList};
use crate::{
    config::Feed,
    entries::Timestamp,
    fsutil::{self, DirError, MAX_FILE_BYTES, StateDir},
};

/// Version of the file format.
const VERSION: u32 = 1;
/// The directory under `state_dir`.
const DIR: &str = "feeds";

/// What a server said about a body, to ask for it again only if it changed
/// (and to name it in the audit log).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// SHA-256 of the body, hex.
    pub sha256: String,
}

/// A feed's last good list and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    pub version: u32,
    /// The URL, file or names it was read from.
    pub source: String,
    pub format: String,
    /// The filter it was read with.
    #[serde(default)]
    pub filter: BTreeMap<String, Vec<String>>,
    /// When the list was last confirmed current (fetched, or answered 304).
    pub fetched_at: Timestamp,
    pub validator: Validator,
    pub list: FeedList,
}

impl LastGood {
    pub fn new(feed: &Feed, fetched_at: Timestamp, validator: Validator, list: FeedList) -> Self {
        Self {
            version: VERSION,
            source: super::source_name(&feed.source),
            format: feed.format.name().to_string(),
            filter: feed.filter.clone(),
            fetched_at,
            validator,
            list,
        }
    }

    /// The feed's state as this copy tells it: when it was fetched, and
    /// with what validator.
    pub fn state(&self) -> super::FeedState {
        super::FeedState {
            fetched_at: Some(self.fetched_at.0),
            validator: Some(self.validator.clone()),
            ..super::FeedState::default()
        }
    }
}

/// The feeds' files in one `state_dir`.
pub struct FeedStore {
    dir: StateDir,
}

impl FeedStore {
    /// Opens (creating if needed) the feeds' directory in `state_dir`.
    pub fn open(state_dir: &StateDir) -> Result<Self, DirError> {
        Ok(Self {
            dir: state_dir.subdir(DIR)?,
        })
    }

    fn file(feed: &str) -> String {
        format!("{feed}.json")
    }

    /// The last good copies of `feeds` that exist and are readable; a copy
    /// that cannot be read is skipped with a warning (the feed is fetched
    /// anew), never fatal: it only ever adds entries.
    pub fn load(&self, feeds: &[Feed]) -> BTreeMap<String, LastGood> {
        let mut loaded = BTreeMap::new();
        for feed in feeds {
            let path = self.dir.join(&Self::file(&feed.name));
            let text = match self.dir.read(&Self::file(&feed.name), MAX_FILE_BYTES) {
                Ok(text) => text,
                Err(fsutil::ReadError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(err) => {
                    tracing::warn!(feed = feed.name, file = %path.display(), error = %err, "the feed's last good copy cannot be read; it is fetched anew");
                    continue;
                }
            };
            match serde_json::from_str::<LastGood>(&text) {
                Ok(last)
                    if last.version == VERSION
                        && last.source == super::source_name(&feed.source)
                        && last.format == feed.format.name()
                        && last.filter == feed.filter =>
                {
                    loaded.insert(feed.name.clone(), last);
                }
                Ok(last) if last.version == VERSION => {
                    tracing::info!(
                        feed = feed.name,
                        "the feed's source, format or filter changed since its last good copy; it is fetched anew"
                    );
                }
                Ok(last) => {
                    tracing::warn!(feed = feed.name, file = %path.display(), version = last.version, "the feed's last good copy has another version; it is fetched anew");
                }
                Err(err) => {
                    tracing::warn!(feed = feed.name, file = %path.display(), error = %err, "the feed's last good copy is corrupt; it is fetched anew");
                }
            }
        }
        loaded
    }

    /// Makes `last` the durable last good copy of `feed`.
    pub fn save(&self, feed: &str, last: &LastGood) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(last).map_err(std::io::Error::other)?;
        self.dir.write_atomically(&Self::file(feed), &json, 0o600)
    }
}

/// The lists of `last_good`.
pub fn lists(last_good: &BTreeMap<String, LastGood>) -> FeedLists {
    last_good
        .iter()
        .map(|(name, last)| (name.clone(), last.list.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    fn feeds(url: &str) -> Vec<Feed> {
        parse(&format!(
            "interfaces = [\"eth0\"]\n[[feeds]]\nname = \"vendor\"\nurl = \"{url}\"\nformat = \"plain\"\n[[rules]]\nname = \"r\"\nports = [\"443\"]\nfeeds = [\"vendor\"]\n"
        ))
        .unwrap()
        .feeds
    }

    #[test]
    fn a_last_good_copy_is_used_only_for_the_list_it_was_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedStore::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        let old = feeds("https://old.example/list");
        let list = crate::feeds::normalize::normalize(&["203.0.113.0/24".to_string()])
            .unwrap()
            .list;
        let last = LastGood::new(&old[0], Timestamp::now(), Validator::default(), list);
        store.save("vendor", &last).unwrap();
        assert_eq!(store.load(&old)["vendor"].list, last.list);
        assert!(
            store.load(&feeds("https://new.example/list")).is_empty(),
            "another source: fetched anew"
        );
        std::fs::write(dir.path().join("feeds/vendor.json"), "{ not json").unwrap();
        assert!(store.load(&old).is_empty(), "a corrupt copy is skipped");
    }
}
