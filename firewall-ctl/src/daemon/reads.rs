//! Heavy reads (`list`, `stats --entries`, `audit report`), answered from a
//! snapshot of the policy state beside the policy writer, on a thread of
//! their own: the writer only hands out the snapshot (a few shared
//! pointers), so a report of half a million entries never delays a change
//! or the watchdog.

use std::{io, sync::Arc};

use crate::{
    api::{self, CommandError, Response},
    config::Config,
    datapath::EntryUsageReader,
    entries::{RuntimeEntries, Timestamp},
    feeds::FeedLists,
    policy::{coverage, explain},
    text::escape_controls,
};

/// The policy state as of one moment, shared with the writer, which
/// copies what it changes while a reader holds it.
pub struct ReadView {
    pub config: Arc<Config>,
    pub runtime: Arc<RuntimeEntries>,
    pub feeds: Arc<FeedLists>,
    /// The entries' counters, read once and let go: the writer copies the
    /// entries' indexes (megabytes) at its next change while it is held.
    pub usage: Option<EntryUsageReader>,
}

impl ReadView {
    /// Writes `list`'s answer (every entry, of `rule` or all), an entry at
    /// a time, and a newline.
    pub fn write_list(&self, rule: Option<&str>, out: &mut dyn io::Write) -> io::Result<()> {
        if let Some(Err(message)) = rule.map(|name| self.config.rule_index(name)) {
            return write_response(&CommandError::not_found(message).into(), out);
        }
        out.write_all(b"{\"list\":{\"entries\":[")?;
        let entries = explain::list(&self.config, &self.runtime, &self.feeds, rule);
        for (index, entry) in entries.enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, &entry)?;
        }
        out.write_all(b"]}}\n")
    }

    /// The rows of what each entry (of `rule`, or all) admitted.
    fn entry_rows<'a>(
        &'a mut self,
        rule: Option<&'a str>,
    ) -> Result<impl Iterator<Item = api::EntryStats> + 'a, CommandError> {
        if let Some(Err(message)) = rule.map(|name| self.config.rule_index(name)) {
            return Err(CommandError::not_found(message));
        }
        let usage = self
            .usage
            .take()
            .map(EntryUsageReader::read)
            .transpose()
            .map_err(|err| {
                CommandError::internal(format!("reading the entry counters failed: {err}"))
            })?
            .unwrap_or_default();
        Ok(crate::usage::entry_rows(
            explain::listings(&self.config, &self.runtime, &self.feeds, rule),
            usage,
            |ns| Timestamp(crate::system::wall_clock_of(ns)),
        ))
    }

    /// Writes `stats --entries`' answer (what each entry of `rule`, or
    /// all, admitted), a row at a time, and a newline: the period the
    /// counters cover comes last, once every row is known.
    pub fn write_entries(&mut self, rule: Option<&str>, out: &mut dyn io::Write) -> io::Result<()> {
        let generated_at = Timestamp::now();
        let rows = match self.entry_rows(rule) {
            Ok(rows) => rows,
            Err(error) => return write_response(&error.into(), out),
        };
        out.write_all(b"{\"entries\":{\"generated_at\":")?;
        serde_json::to_writer(&mut *out, &generated_at)?;
        out.write_all(b",\"entries\":[")?;
        let mut counting_since: Option<Timestamp> = None;
        for (index, row) in rows.enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, &row)?;
            counting_since = match (counting_since, row.counting_since) {
                (Some(earliest), Some(this)) => Some(earliest.min(this)),
                (earliest, this) => earliest.or(this),
            };
        }
        out.write_all(b"],\"counting_since\":")?;
        serde_json::to_writer(&mut *out, &counting_since)?;
        out.write_all(b"}}\n")
    }

    /// What each entry admitted, for a metrics scrape.
    pub fn entries_report(&mut self) -> anyhow::Result<api::EntriesReport> {
        let rows = self.entry_rows(None).map_err(anyhow::Error::msg)?;
        Ok(crate::usage::entries_report(rows, Timestamp::now()))
    }
}

impl ReadView {
    /// `explain --feed NAME` / `explain --file`'s answer: whether every
    /// address of the feed's list in force, or of `ranges`, would be
    /// admitted on `port`.
    pub fn coverage(&self, port: &str, feed: Option<&str>, ranges: &[String]) -> Response {
        let port = match explain::parse_port(port) {
            Ok(port) => port,
            Err(message) => return CommandError::invalid_input(message).into(),
        };
        let ranges = match feed {
            Some(name) => match self.feeds.get(name) {
                Some(list) => list.prefixes.clone(),
                None if self.config.feed(name).is_some() => {
                    return CommandError::unavailable(format!(
                        "feed `{}` has no list in force yet; `firewall-ctl feeds` says why",
                        escape_controls(name)
                    ))
                    .into();
                }
                None => {
                    return CommandError::not_found(format!(
                        "no feed `{}` in the config; `firewall-ctl feeds` lists them",
                        escape_controls(name)
                    ))
                    .into();
                }
            },
            None => match coverage::parse_ranges(ranges.iter().map(String::as_str), "the list") {
                Ok(ranges) => ranges,
                Err(message) => return CommandError::invalid_input(message).into(),
            },
        };
        Response::Coverage(coverage::coverage(
            &self.config,
            &self.runtime,
            &self.feeds,
            &ranges,
            port,
            feed,
        ))
    }
}

/// `response` as one line.
pub fn write_response(response: &Response, out: &mut dyn io::Write) -> io::Result<()> {
    serde_json::to_writer(&mut *out, response)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::ErrorKind, config::tests::parse, datapath::EntryUsageReader};

    /// Two rules; `vendor` lists 203.0.113.0/24 in the config, by its
    /// feed and as a runtime entry, and its feed adds 192.0.2.0/24.
    fn view() -> ReadView {
        let config = parse(
            "interfaces = [\"eth0\"]\n[[feeds]]\nname = \"aws\"\nurl = \"https://x.example/\"\nformat = \"plain\"\n[[rules]]\nname = \"vendor\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", \"2001:db8::/48\"]\nfeeds = [\"aws\"]\n[[rules]]\nname = \"office\"\nports = [\"22\"]\nsources = [\"198.51.100.7\"]\n",
        )
        .unwrap();
        let feed = crate::feeds::normalize::normalize(&[
            "192.0.2.0/24".to_string(),
            "203.0.113.0/24".to_string(),
        ])
        .unwrap()
        .list;
        let cli = crate::entries::tests::entry("vendor", "203.0.113.0/24");
        ReadView {
            config: Arc::new(config),
            runtime: Arc::new([(cli.key(), cli)].into_iter().collect()),
            feeds: Arc::new([("aws".to_string(), feed)].into_iter().collect()),
            usage: Some(EntryUsageReader::empty()),
        }
    }

    /// What is streamed is exactly the report `stats --entries --json`
    /// parses: one row per entry, every origin merged into the first.
    #[test]
    fn streamed_entries_are_the_entries_report() {
        let mut out = Vec::new();
        view().write_entries(None, &mut out).unwrap();
        let Response::Entries(streamed) = serde_json::from_slice(&out).unwrap() else {
            panic!("not entries: {}", String::from_utf8_lossy(&out));
        };
        let collected = view().entries_report().unwrap();
        assert_eq!(streamed.entries, collected.entries);
        assert_eq!(streamed.counting_since, collected.counting_since);
        let rows: Vec<(String, String)> = streamed
            .entries
            .iter()
            .map(|row| (row.prefix.to_string(), crate::usage::origins(&row.origins)))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "203.0.113.0/24".to_string(),
                    "config+feed:aws+cli".to_string()
                ),
                ("2001:db8::/48".to_string(), "config".to_string()),
                ("192.0.2.0/24".to_string(), "feed:aws".to_string()),
                ("198.51.100.7/32".to_string(), "config".to_string()),
            ]
        );
        assert!(
            streamed.entries[0].added_by.is_some(),
            "the runtime entry's author"
        );
    }

    /// What is streamed is exactly the report `list --json` parses.
    #[test]
    fn a_streamed_list_is_the_list_report() {
        let view = view();
        let mut out = Vec::new();
        view.write_list(None, &mut out).unwrap();
        let Response::List(report) = serde_json::from_slice(&out).unwrap() else {
            panic!("not a list");
        };
        let expected: Vec<_> =
            explain::list(&view.config, &view.runtime, &view.feeds, None).collect();
        assert_eq!(report.entries, expected);
        assert_eq!(report.entries.len(), 6);
        let mut out = Vec::new();
        view.write_list(Some("nope"), &mut out).unwrap();
        let Response::Error(error) = serde_json::from_slice(&out).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(error.kind, ErrorKind::NotFound);
        assert!(
            error
                .message
                .contains("no rule `nope`; its rules are: vendor, office"),
            "{error}"
        );
    }
}
