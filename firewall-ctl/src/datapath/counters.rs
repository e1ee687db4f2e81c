//! Reading the counters back: per reason and rule ([`Counters`], with the
//! ledger that carries rule counts across policies and restarts), and per
//! entry ([`EntryUsageReader`]).

use std::{collections::BTreeMap, os::fd::AsFd as _, sync::Arc};

use aya::maps::{MapData, PerCpuArray};
use firewall_common::{
    maps::{Counter, EntryCounter, UNCOUNTED_ENTRY, names, rule_stats_index},
    reasons::{REASON_COUNT, Reason},
};

use super::{
    Datapath, DatapathError, batch,
    entry_counters::{EntryId, EntryIndexes},
    map_data, map_error, mapped,
};
use crate::config::IpPrefix;

/// Counters read back from the kernel, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Per rule of the live policy, in config order, including what the
    /// same-named rule counted under earlier policies.
    pub rules: Vec<(String, Counter)>,
    /// Indexed by [`Reason`].
    pub reasons: Vec<Counter>,
}

/// Reads what each entry of a policy admitted, away from the writer
/// ([`Datapath::usage_reader`]). An index freed after the reader was made
/// is given again only by a later change, once neither slot lists its
/// entry (a third of a second after it was removed, at the least): a
/// report that takes longer may credit that new entry's counts to the old
/// one.
pub struct EntryUsageReader {
    indexes: Arc<EntryIndexes>,
    /// The slot live when the reader was made; `None` before any was.
    live_slot: Option<u32>,
    entry_stats: std::os::fd::OwnedFd,
}

impl EntryUsageReader {
    /// A reader of a datapath with no live policy yet.
    #[cfg(test)]
    pub fn empty() -> Self {
        Self {
            indexes: Arc::default(),
            live_slot: None,
            entry_stats: std::fs::File::open("/dev/null").unwrap().into(),
        }
    }

    /// Reads the counters; the reader is spent, and its hold on the
    /// indexes let go.
    pub fn read(self) -> Result<Vec<EntryUsage>, DatapathError> {
        let Some(slot) = self.live_slot else {
            return Ok(Vec::new());
        };
        let mut listed: Vec<(&str, IpPrefix, u32)> = self.indexes.listed_in(slot).collect();
        listed.sort_unstable_by_key(|(_, _, index)| *index);
        let indexes: Vec<u32> = listed.iter().map(|(_, _, index)| *index).collect();
        let counters: Vec<EntryCounter> =
            mapped::load_sorted(self.entry_stats.as_fd(), &indexes)
                .map_err(batch::syscall_error(names::ENTRY_STATS, "mmap"))?;
        Ok(listed
            .into_iter()
            .zip(counters)
            .map(|((rule, prefix, index), counter)| EntryUsage {
                entry: EntryId {
                    rule: rule.to_string(),
                    prefix,
                },
                counter: (index != UNCOUNTED_ENTRY).then_some(counter),
            })
            .collect())
    }
}

/// What one entry admitted, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryUsage {
    pub entry: EntryId,
    /// `None`: the entry has no counter (the counters were full when it
    /// was listed).
    pub counter: Option<EntryCounter>,
}

/// Per-rule counters outlive policy changes and daemon restarts: a slot's
/// rule counters keep counting for the rule names written there, and only
/// when a slot gets other rule names (a reload that adds, removes or
/// reorders rules) are its counts folded into `retired`, by name. A rule's
/// total is what it has in `retired` plus what both slots count for it.
/// The daemon saves the ledger whenever it changes, so a restarted daemon,
/// adopting the same maps (`maps_id`), carries every rule's counts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterLedger {
    /// Id of the `ACTIVE` map: the ledger belongs to these maps only.
    pub maps_id: u32,
    /// Rule names of each slot's counters, in config order.
    pub slot_rules: [Vec<String>; 2],
    /// `(packets, bytes)` by rule name, from slots since given other rules.
    pub retired: BTreeMap<String, (u64, u64)>,
}

impl Datapath {
    /// The ledger, if it changed since the last call: to be saved.
    pub fn take_changed_ledger(&mut self) -> Option<CounterLedger> {
        std::mem::take(&mut self.ledger_changed).then(|| self.ledger.clone())
    }

    /// A reader of what each entry of the live policy admitted, as of now,
    /// for another thread: it holds the entries' indexes (the writer copies
    /// them before its next change while the reader lives) and the counter
    /// map.
    pub fn usage_reader(&self) -> Result<EntryUsageReader, DatapathError> {
        let entry_stats = map_data(self, names::ENTRY_STATS)?
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(batch::syscall_error(names::ENTRY_STATS, "dup"))?;
        Ok(EntryUsageReader {
            indexes: Arc::clone(&self.entry_indexes),
            live_slot: self.active.ready().then(|| self.active.slot()),
            entry_stats,
        })
    }

    /// Per-rule counters of `slot`, by the names of the rules they count for.
    pub(super) fn slot_rule_counters(
        &self,
        slot: u32,
    ) -> Result<Vec<(String, Counter)>, DatapathError> {
        let stats: PerCpuArray<&MapData, Counter> = self.map(names::RULE_STATS)?;
        self.ledger.slot_rules[slot as usize]
            .iter()
            .enumerate()
            .map(|(rule, name)| {
                let values = stats
                    .get(&rule_stats_index(slot, rule as u32), 0)
                    .map_err(map_error(names::RULE_STATS))?;
                Ok((name.clone(), sum(values.iter())))
            })
            .collect()
    }

    /// Current counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let stats: PerCpuArray<&MapData, Counter> = self.map(names::REASON_STATS)?;
        let reasons = (0..REASON_COUNT)
            .map(|index| {
                stats
                    .get(&index, 0)
                    .map(|values| sum(values.iter()))
                    .map_err(map_error(names::REASON_STATS))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut totals: BTreeMap<String, Counter> = self
            .ledger
            .retired
            .iter()
            .map(|(name, (packets, bytes))| {
                let counter = Counter {
                    packets: *packets,
                    bytes: *bytes,
                };
                (name.clone(), counter)
            })
            .collect();
        for slot in 0..2 {
            for (name, counter) in self.slot_rule_counters(slot)? {
                *totals.entry(name).or_default() += counter;
            }
        }
        let rules = if self.active.ready() {
            self.ledger.slot_rules[self.active.slot() as usize]
                .iter()
                .map(|name| (name.clone(), totals.get(name).copied().unwrap_or_default()))
                .collect()
        } else {
            Vec::new()
        };
        debug_assert_eq!(reasons.len(), Reason::ALL.len());
        Ok(Counters { rules, reasons })
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a Counter>) -> Counter {
    values.fold(Counter::default(), |mut total, value| {
        total += *value;
        total
    })
}
