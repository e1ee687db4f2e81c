//! Heavy reads (`list`, `stats --entries`, `audit report`), answered from a
//! snapshot of the policy state beside the policy writer, on a thread of
//! their own: the writer only hands out the snapshot (a few shared
//! pointers), so a report of half a million entries never delays a change
//! or the watchdog.

use std::{io, sync::Arc};

use crate::{
    api::{self, Response},
    config::Config,
    datapath::EntryUsageReader,
    entries::{RuntimeEntries, Timestamp},
    feeds::FeedLists,
    policy::explain,
};

/// The policy state as of one moment, shared with the writer, which
/// copies what it changes while a reader holds it.
pub struct ReadView {
    pub config: Arc<Config>,
    pub runtime: Arc<RuntimeEntries>,
    pub feeds: Arc<FeedLists>,
    pub usage: EntryUsageReader,
}

impl ReadView {
    /// Writes `list`'s answer (every entry, of `rule` or all), an entry at
    /// a time, and a newline.
    pub fn write_list(&self, rule: Option<&str>, out: &mut dyn io::Write) -> io::Result<()> {
        if let Some(Err(message)) = rule.map(|name| self.config.rule_index(name)) {
            return write_response(&Response::Error(message), out);
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

    /// What each entry (of `rule`, or all) admitted.
    pub fn entries(&self, rule: Option<&str>) -> Response {
        if let Some(Err(message)) = rule.map(|name| self.config.rule_index(name)) {
            return Response::Error(message);
        }
        match self.usage.read() {
            Ok(usage) => Response::Entries(crate::usage::entries_report(
                explain::list(&self.config, &self.runtime, &self.feeds, rule),
                usage,
                Timestamp::now(),
                |ns| Timestamp(crate::system::wall_clock_of(ns)),
            )),
            Err(err) => Response::Error(format!("reading the entry counters failed: {err}")),
        }
    }

    /// What each entry admitted, for a metrics scrape.
    pub fn entries_report(&self) -> anyhow::Result<api::EntriesReport> {
        match self.entries(None) {
            Response::Entries(report) => Ok(report),
            Response::Error(message) => Err(anyhow::anyhow!(message)),
            _ => unreachable!("entries answers with entries or an error"),
        }
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
    use crate::{config::tests::parse, datapath::EntryUsageReader};

    /// What is streamed is exactly the report `list --json` parses.
    #[test]
    fn a_streamed_list_is_the_list_report() {
        let config = parse(
            "interfaces = [\"eth0\"]\n[[rules]]\nname = \"vendor\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", \"2001:db8::/48\"]\n[[rules]]\nname = \"office\"\nports = [\"22\"]\nsources = [\"198.51.100.7\"]\n",
        )
        .unwrap();
        let view = ReadView {
            config: Arc::new(config),
            runtime: Arc::default(),
            feeds: Arc::default(),
            usage: EntryUsageReader::empty(),
        };
        let mut out = Vec::new();
        view.write_list(None, &mut out).unwrap();
        let Response::List(report) = serde_json::from_slice(&out).unwrap() else {
            panic!("not a list");
        };
        let expected: Vec<_> =
            explain::list(&view.config, &view.runtime, &view.feeds, None).collect();
        assert_eq!(report.entries, expected);
        assert_eq!(report.entries.len(), 3);
        let mut out = Vec::new();
        view.write_list(Some("nope"), &mut out).unwrap();
        let Response::Error(message) = serde_json::from_slice(&out).unwrap() else {
            panic!("not an error");
        };
        assert!(
            message.contains("no rule `nope`; its rules are: vendor, office"),
            "{message}"
        );
    }
}
