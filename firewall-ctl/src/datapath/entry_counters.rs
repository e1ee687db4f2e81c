//! Which `ENTRY_STATS` index counts for which allowlisted entry.
//!
//! An entry is a rule (by name) and a prefix, whatever its origin. It keeps
//! its index for as long as either policy slot lists it, so its counters
//! survive reloads, CLI edits and feed updates; a daemon that adopts pinned
//! maps reads the indexes back from the entry tries. An index is given
//! again only once neither slot lists its entry, and its counter is reset
//! then.

use std::collections::HashMap;

use firewall_common::{limits::MAX_ENTRY_COUNTERS, maps::UNCOUNTED_ENTRY};

use crate::config::IpPrefix;

/// An allowlisted entry: what a counter counts for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub rule: String,
    pub prefix: IpPrefix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    index: u32,
    /// Whether each policy slot lists the entry.
    slots: [bool; 2],
}

/// The index of each entry listed in either slot.
#[derive(Debug)]
pub struct EntryIndexes {
    held: HashMap<EntryId, Held>,
    /// Indexes given before and free again.
    free: Vec<u32>,
    /// Indexes from here up were never given.
    unused_from: u32,
    capacity: u32,
}

impl Default for EntryIndexes {
    fn default() -> Self {
        Self::with_capacity(MAX_ENTRY_COUNTERS)
    }
}

/// The outcome of [`EntryIndexes::hold`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// The entry already had this index.
    Kept(u32),
    /// The entry got this index now: its counter must be reset before a
    /// slot that uses it goes live.
    Given(u32),
    /// Every index is taken: the entry counts nowhere
    /// ([`UNCOUNTED_ENTRY`]).
    Full,
}

impl Holding {
    pub fn index(self) -> u32 {
        match self {
            Holding::Kept(index) | Holding::Given(index) => index,
            Holding::Full => UNCOUNTED_ENTRY,
        }
    }
}

impl EntryIndexes {
    /// `capacity` indexes, of which [`UNCOUNTED_ENTRY`] (0) is never given.
    pub fn with_capacity(capacity: u32) -> Self {
        Self {
            held: HashMap::new(),
            free: Vec::new(),
            unused_from: UNCOUNTED_ENTRY + 1,
            capacity,
        }
    }

    /// Notes that `slot` lists `entry`, and gives it an index if it had none.
    pub fn hold(&mut self, entry: &EntryId, slot: u32) -> Holding {
        if let Some(held) = self.held.get_mut(entry) {
            held.slots[slot as usize] = true;
            return if held.index == UNCOUNTED_ENTRY {
                Holding::Full
            } else {
                Holding::Kept(held.index)
            };
        }
        let index = self.free.pop().or_else(|| {
            (self.unused_from < self.capacity).then(|| {
                self.unused_from += 1;
                self.unused_from - 1
            })
        });
        let mut slots = [false; 2];
        slots[slot as usize] = true;
        let index_or_none = index.unwrap_or(UNCOUNTED_ENTRY);
        self.held.insert(
            entry.clone(),
            Held {
                index: index_or_none,
                slots,
            },
        );
        index.map_or(Holding::Full, Holding::Given)
    }

    /// Records that `slot` lists `entry` at `index`, as read back from
    /// adopted maps.
    pub fn adopt(&mut self, entry: EntryId, slot: u32, index: u32) {
        let held = self.held.entry(entry).or_insert(Held {
            index,
            slots: [false; 2],
        });
        held.slots[slot as usize] = true;
        self.unused_from = self.unused_from.max(index + 1);
    }

    /// After [`EntryIndexes::adopt`]: every index below the highest adopted
    /// one that no entry holds is free.
    pub fn free_unheld(&mut self) {
        let mut taken = vec![false; self.unused_from as usize];
        for held in self.held.values() {
            taken[held.index as usize] = true;
        }
        self.free = (UNCOUNTED_ENTRY + 1..self.unused_from)
            .filter(|index| !taken[*index as usize])
            .rev()
            .collect();
    }

    /// Notes that `slot` no longer lists `entry`; its index is free once
    /// neither slot does.
    pub fn release(&mut self, entry: &EntryId, slot: u32) {
        let Some(held) = self.held.get_mut(entry) else {
            return;
        };
        held.slots[slot as usize] = false;
        if held.slots == [false; 2] {
            if held.index != UNCOUNTED_ENTRY {
                self.free.push(held.index);
            }
            self.held.remove(entry);
        }
    }

    /// The entries `slot` lists.
    pub fn listed_in(&self, slot: u32) -> impl Iterator<Item = (&EntryId, u32)> {
        self.held
            .iter()
            .filter(move |(_, held)| held.slots[slot as usize])
            .map(|(entry, held)| (entry, held.index))
    }

    /// Indexes from here up were never given: reading counters can stop here.
    pub fn end(&self) -> u32 {
        self.unused_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rule: &str, prefix: &str) -> EntryId {
        EntryId {
            rule: rule.to_string(),
            prefix: prefix.parse().unwrap(),
        }
    }

    #[test]
    fn an_entry_keeps_its_index_while_either_slot_lists_it() {
        let mut indexes = EntryIndexes::with_capacity(4);
        let vendor = entry("vendor", "203.0.113.0/24");
        assert_eq!(indexes.hold(&vendor, 0), Holding::Given(1));
        assert_eq!(indexes.hold(&vendor, 1), Holding::Kept(1));
        indexes.release(&vendor, 0);
        assert_eq!(indexes.hold(&vendor, 0), Holding::Kept(1));
        indexes.release(&vendor, 0);
        indexes.release(&vendor, 1);
        // Free now: the next entry gets it, as a new counter.
        assert_eq!(
            indexes.hold(&entry("office", "198.51.100.0/24"), 0),
            Holding::Given(1)
        );
    }

    #[test]
    fn when_full_entries_count_nowhere_until_indexes_free_up() {
        let mut indexes = EntryIndexes::with_capacity(3);
        let a = entry("a", "192.0.2.1/32");
        let b = entry("a", "192.0.2.2/32");
        let c = entry("a", "192.0.2.3/32");
        assert_eq!(indexes.hold(&a, 0), Holding::Given(1));
        assert_eq!(indexes.hold(&b, 0), Holding::Given(2));
        assert_eq!(indexes.hold(&c, 0), Holding::Full);
        assert_eq!(indexes.hold(&c, 1), Holding::Full);
        indexes.release(&a, 0);
        indexes.release(&c, 0);
        indexes.release(&c, 1);
        assert_eq!(indexes.hold(&c, 0), Holding::Given(1));
        assert_eq!(indexes.end(), 3);
    }

    #[test]
    fn adopted_indexes_are_kept_and_the_gaps_are_free() {
        let mut indexes = EntryIndexes::with_capacity(10);
        indexes.adopt(entry("a", "192.0.2.1/32"), 0, 2);
        indexes.adopt(entry("a", "192.0.2.1/32"), 1, 2);
        indexes.adopt(entry("b", "192.0.2.9/32"), 1, 5);
        indexes.free_unheld();
        assert_eq!(
            indexes.hold(&entry("a", "192.0.2.1/32"), 0),
            Holding::Kept(2)
        );
        let mut given: Vec<u32> = (0..4)
            .map(|n| {
                indexes
                    .hold(&entry("c", &format!("198.51.100.{n}/32")), 0)
                    .index()
            })
            .collect();
        given.sort();
        assert_eq!(given, [1, 3, 4, 6]);
        let mut listed: Vec<u32> = indexes.listed_in(1).map(|(_, index)| index).collect();
        listed.sort();
        assert_eq!(listed, [2, 5]);
    }
}
