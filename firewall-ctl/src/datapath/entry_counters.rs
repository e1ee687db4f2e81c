//! Which `ENTRY_STATS` index counts for which allowlisted entry.
//!
//! An entry is a rule (by name) and a prefix, whatever its origin. It keeps
//! its index for as long as either policy slot lists it, so its counters
//! survive reloads, CLI edits and feed updates; a daemon that adopts pinned
//! maps reads the indexes back from the entry tries. An index is given
//! again only once neither slot lists its entry, and its counter is reset
//! then.

use std::collections::{HashMap, hash_map::Entry};

use firewall_common::{limits::MAX_ENTRY_COUNTERS, maps::UNCOUNTED_ENTRY};
use foldhash::fast::RandomState;

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

/// A hash map with foldhash: a large policy makes a million lookups per
/// reload, and SipHash took a quarter of the daemon's own time in them.
/// Seeded per process, so crafted feed prefixes cannot aim at collisions.
type FastMap<K, V> = HashMap<K, V, RandomState>;

/// The index of each entry listed in either slot. Entries are grouped by
/// rule, so each is keyed by its prefix alone (no name per entry).
#[derive(Debug)]
pub struct EntryIndexes {
    by_rule: FastMap<String, FastMap<IpPrefix, Held>>,
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
            by_rule: FastMap::default(),
            free: Vec::new(),
            unused_from: UNCOUNTED_ENTRY + 1,
            capacity,
        }
    }

    /// The entries of `rule` in `by_rule`, created empty if it has none. A
    /// function of the field, so that callers may use the other fields
    /// meanwhile.
    fn of_rule<'a>(
        by_rule: &'a mut FastMap<String, FastMap<IpPrefix, Held>>,
        rule: &str,
    ) -> &'a mut FastMap<IpPrefix, Held> {
        if !by_rule.contains_key(rule) {
            by_rule.insert(rule.to_string(), FastMap::default());
        }
        by_rule.get_mut(rule).expect("inserted above")
    }

    /// Notes that `slot` lists `rule`'s `prefix`, and gives the entry an
    /// index if it had none.
    pub fn hold(&mut self, rule: &str, prefix: IpPrefix, slot: u32) -> Holding {
        match Self::of_rule(&mut self.by_rule, rule).entry(prefix) {
            Entry::Occupied(mut held) => {
                let held = held.get_mut();
                held.slots[slot as usize] = true;
                if held.index == UNCOUNTED_ENTRY {
                    Holding::Full
                } else {
                    Holding::Kept(held.index)
                }
            }
            Entry::Vacant(vacant) => {
                let index = self.free.pop().or_else(|| {
                    (self.unused_from < self.capacity).then(|| {
                        self.unused_from += 1;
                        self.unused_from - 1
                    })
                });
                let mut slots = [false; 2];
                slots[slot as usize] = true;
                vacant.insert(Held {
                    index: index.unwrap_or(UNCOUNTED_ENTRY),
                    slots,
                });
                index.map_or(Holding::Full, Holding::Given)
            }
        }
    }

    /// Records that `slot` lists `rule`'s `prefix` at `index`, as read back
    /// from adopted maps.
    pub fn adopt(&mut self, rule: &str, prefix: IpPrefix, slot: u32, index: u32) {
        let held = Self::of_rule(&mut self.by_rule, rule)
            .entry(prefix)
            .or_insert(Held {
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
        for held in self.by_rule.values().flat_map(FastMap::values) {
            taken[held.index as usize] = true;
        }
        self.free = (UNCOUNTED_ENTRY + 1..self.unused_from)
            .filter(|index| !taken[*index as usize])
            .rev()
            .collect();
    }

    /// Notes that `slot` no longer lists `rule`'s `prefix`; its index is
    /// free once neither slot does.
    pub fn release(&mut self, rule: &str, prefix: IpPrefix, slot: u32) {
        let Some(entries) = self.by_rule.get_mut(rule) else {
            return;
        };
        let Some(held) = entries.get_mut(&prefix) else {
            return;
        };
        held.slots[slot as usize] = false;
        if held.slots == [false; 2] {
            if held.index != UNCOUNTED_ENTRY {
                self.free.push(held.index);
            }
            entries.remove(&prefix);
            if entries.is_empty() {
                self.by_rule.remove(rule);
            }
        }
    }

    /// Notes that `slot` lists none of the IPv4 (`v4`) or IPv6 entries, as
    /// a slot is rewritten whole: holding again those it lists, then
    /// [`EntryIndexes::free_unlisted`], frees the others. Two passes over
    /// the entries, where asking the policy about each one took 0.15 s of
    /// a 250k + 250k start.
    pub fn unlist_family(&mut self, slot: u32, v4: bool) {
        self.by_rule
            .values_mut()
            .flat_map(|entries| entries.iter_mut())
            .filter(|(prefix, _)| prefix.is_v4() == v4)
            .for_each(|(_, held)| held.slots[slot as usize] = false);
    }

    /// Frees the index of every entry neither slot lists.
    pub fn free_unlisted(&mut self) {
        let free = &mut self.free;
        self.by_rule.retain(|_, entries| {
            entries.retain(|_, held| {
                let listed = held.slots != [false; 2];
                if !listed && held.index != UNCOUNTED_ENTRY {
                    free.push(held.index);
                }
                listed
            });
            !entries.is_empty()
        });
    }

    /// Gives back the room of entries since unlisted: after a new list
    /// both lists' entries were held at once, twice what either slot lists
    /// once the idle slot has caught up (60 MB at 250k + 250k).
    pub fn shrink(&mut self) {
        for entries in self.by_rule.values_mut() {
            if entries.capacity() > 2 * entries.len() {
                entries.shrink_to_fit();
            }
        }
    }

    /// The entries `slot` lists: rule, prefix, index.
    pub fn listed_in(&self, slot: u32) -> impl Iterator<Item = (&str, IpPrefix, u32)> {
        self.by_rule.iter().flat_map(move |(rule, entries)| {
            entries
                .iter()
                .filter(move |(_, held)| held.slots[slot as usize])
                .map(move |(prefix, held)| (rule.as_str(), *prefix, held.index))
        })
    }

    /// Indexes from here up were never given: reading counters can stop here.
    pub fn end(&self) -> u32 {
        self.unused_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    #[test]
    fn an_entry_keeps_its_index_while_either_slot_lists_it() {
        let mut indexes = EntryIndexes::with_capacity(4);
        let vendor = prefix("203.0.113.0/24");
        assert_eq!(indexes.hold("vendor", vendor, 0), Holding::Given(1));
        assert_eq!(indexes.hold("vendor", vendor, 1), Holding::Kept(1));
        indexes.release("vendor", vendor, 0);
        assert_eq!(indexes.hold("vendor", vendor, 0), Holding::Kept(1));
        indexes.release("vendor", vendor, 0);
        indexes.release("vendor", vendor, 1);
        // Free now: the next entry gets it, as a new counter.
        assert_eq!(
            indexes.hold("office", prefix("198.51.100.0/24"), 0),
            Holding::Given(1)
        );
        // The same prefix in another rule is another entry.
        assert_eq!(
            indexes.hold("vendor", prefix("198.51.100.0/24"), 0),
            Holding::Given(2)
        );
    }

    #[test]
    fn shrinking_keeps_every_entry_and_its_index() {
        let mut indexes = EntryIndexes::with_capacity(10_000);
        let prefixes: Vec<IpPrefix> = (0..4000)
            .map(|n| prefix(&format!("198.51.{}.{}/32", 100 + n / 256, n % 256)))
            .collect();
        for prefix in &prefixes {
            indexes.hold("vendor", *prefix, 0);
        }
        for prefix in &prefixes[100..] {
            indexes.release("vendor", *prefix, 0);
        }
        let listed = |indexes: &EntryIndexes| {
            let mut listed: Vec<(String, IpPrefix, u32)> = indexes
                .listed_in(0)
                .map(|(rule, prefix, index)| (rule.to_string(), prefix, index))
                .collect();
            listed.sort();
            listed
        };
        let before = listed(&indexes);
        indexes.shrink();
        assert!(indexes.by_rule["vendor"].capacity() < 1000);
        assert_eq!(listed(&indexes), before);
        assert_eq!(indexes.hold("vendor", prefixes[0], 1), Holding::Kept(1));
    }

    #[test]
    fn when_full_entries_count_nowhere_until_indexes_free_up() {
        let mut indexes = EntryIndexes::with_capacity(3);
        let (a, b, c) = (
            prefix("192.0.2.1/32"),
            prefix("192.0.2.2/32"),
            prefix("192.0.2.3/32"),
        );
        assert_eq!(indexes.hold("a", a, 0), Holding::Given(1));
        assert_eq!(indexes.hold("a", b, 0), Holding::Given(2));
        assert_eq!(indexes.hold("a", c, 0), Holding::Full);
        assert_eq!(indexes.hold("a", c, 1), Holding::Full);
        indexes.release("a", a, 0);
        indexes.release("a", c, 0);
        indexes.release("a", c, 1);
        assert_eq!(indexes.hold("a", c, 0), Holding::Given(1));
        assert_eq!(indexes.end(), 3);
    }

    #[test]
    fn adopted_indexes_are_kept_and_the_gaps_are_free() {
        let mut indexes = EntryIndexes::with_capacity(10);
        indexes.adopt("a", prefix("192.0.2.1/32"), 0, 2);
        indexes.adopt("a", prefix("192.0.2.1/32"), 1, 2);
        indexes.adopt("b", prefix("192.0.2.9/32"), 1, 5);
        indexes.free_unheld();
        assert_eq!(
            indexes.hold("a", prefix("192.0.2.1/32"), 0),
            Holding::Kept(2)
        );
        let mut given: Vec<u32> = (0..4)
            .map(|n| {
                indexes
                    .hold("c", prefix(&format!("198.51.100.{n}/32")), 0)
                    .index()
            })
            .collect();
        given.sort();
        assert_eq!(given, [1, 3, 4, 6]);
        let mut listed: Vec<u32> = indexes.listed_in(1).map(|(_, _, index)| index).collect();
        listed.sort();
        assert_eq!(listed, [2, 5]);
        // Slot 1 rewritten with only rule a's entry: b's is freed, and
        // given again as a new counter.
        indexes.unlist_family(1, true);
        assert_eq!(
            indexes.hold("a", prefix("192.0.2.1/32"), 1),
            Holding::Kept(2)
        );
        indexes.free_unlisted();
        let listed: Vec<&str> = indexes.listed_in(1).map(|(rule, _, _)| rule).collect();
        assert_eq!(listed, ["a"]);
        assert_eq!(
            indexes.hold("d", prefix("192.0.2.77/32"), 1),
            Holding::Given(5)
        );
    }
}
