//! Which `ENTRY_STATS` index counts for which allowlisted entry.
//!
//! An entry is a rule (by name) and a prefix, whatever its origin. It keeps
//! its index for as long as either policy slot lists it, so its counters
//! survive reloads, CLI edits and feed updates; a daemon that adopts pinned
//! maps reads the indexes back from the entry tries. An index is given
//! again only once neither slot lists its entry, and its counter is reset
//! then.

use std::{collections::HashMap, hash::Hash, net::Ipv4Addr};

use firewall_common::{limits::MAX_ENTRY_COUNTERS, maps::UNCOUNTED_ENTRY};
use foldhash::fast::RandomState;

use crate::config::IpPrefix;

/// An allowlisted entry: what a counter counts for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub rule: String,
    pub prefix: IpPrefix,
}

/// An entry's index and which policy slots list it, in 4 bytes: the index
/// in the low 30 bits, a bit per slot above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held(u32);

impl Held {
    const INDEX_BITS: u32 = (1 << 30) - 1;

    /// Index `index`, listed in `slot` only.
    fn new(index: u32, slot: u32) -> Self {
        Self(index | Self::slot_bit(slot))
    }

    fn slot_bit(slot: u32) -> u32 {
        1 << (30 + slot)
    }

    fn index(self) -> u32 {
        self.0 & Self::INDEX_BITS
    }

    fn list(&mut self, slot: u32, listed: bool) {
        if listed {
            self.0 |= Self::slot_bit(slot);
        } else {
            self.0 &= !Self::slot_bit(slot);
        }
    }

    fn listed_in(self, slot: u32) -> bool {
        self.0 & Self::slot_bit(slot) != 0
    }

    fn listed(self) -> bool {
        self.0 & !Self::INDEX_BITS != 0
    }
}

const _: () = assert!(MAX_ENTRY_COUNTERS <= Held::INDEX_BITS, "every index fits");

/// A hash map with foldhash: a large policy makes a million lookups per
/// reload, and SipHash took a quarter of the daemon's own time in them.
/// Seeded per process, so crafted feed prefixes cannot aim at collisions.
type FastMap<K, V> = HashMap<K, V, RandomState>;

/// One rule's entries, per family, keyed by address and length: 12 bytes
/// an IPv4 entry and 24 an IPv6 one, where an `IpPrefix` key and a wider
/// value took 28 for both. Half a million entries are held while a new
/// list replaces as many.
#[derive(Debug, Default)]
struct RuleEntries {
    v4: FastMap<(u32, u8), Held>,
    v6: FastMap<([u8; 16], u8), Held>,
}

impl RuleEntries {
    /// `prefix`'s entry, inserted with `insert()` if it has none.
    fn held(&mut self, prefix: IpPrefix, insert: impl FnOnce() -> Held) -> &mut Held {
        match prefix {
            IpPrefix::V4 { address, len } => self
                .v4
                .entry((address.to_bits(), len))
                .or_insert_with(insert),
            IpPrefix::V6 { address, len } => self
                .v6
                .entry((address.octets(), len))
                .or_insert_with(insert),
        }
    }

    /// Notes that `slot` no longer lists `prefix`; returns its index if
    /// neither slot does any more (the entry is then gone).
    fn release(&mut self, prefix: IpPrefix, slot: u32) -> Option<u32> {
        fn release_in<K: Hash + Eq>(
            entries: &mut FastMap<K, Held>,
            key: K,
            slot: u32,
        ) -> Option<u32> {
            let held = entries.get_mut(&key)?;
            held.list(slot, false);
            if held.listed() {
                return None;
            }
            entries.remove(&key).map(Held::index)
        }
        match prefix {
            IpPrefix::V4 { address, len } => {
                release_in(&mut self.v4, (address.to_bits(), len), slot)
            }
            IpPrefix::V6 { address, len } => {
                release_in(&mut self.v6, (address.octets(), len), slot)
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = Held> + '_ {
        self.v4.values().chain(self.v6.values()).copied()
    }

    /// The entries `slot` lists: prefix and index.
    fn listed_in(&self, slot: u32) -> impl Iterator<Item = (IpPrefix, u32)> + '_ {
        let v4 = self.v4.iter().map(|(&(bits, len), held)| {
            let address = Ipv4Addr::from_bits(bits);
            (IpPrefix::V4 { address, len }, *held)
        });
        let v6 = self.v6.iter().map(|(&(octets, len), held)| {
            let address = octets.into();
            (IpPrefix::V6 { address, len }, *held)
        });
        v4.chain(v6)
            .filter(move |(_, held)| held.listed_in(slot))
            .map(|(prefix, held)| (prefix, held.index()))
    }
}

/// The index of each entry listed in either slot. Entries are grouped by
/// rule, so each is keyed by its prefix alone (no name per entry).
#[derive(Debug)]
pub struct EntryIndexes {
    by_rule: FastMap<String, RuleEntries>,
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
        by_rule: &'a mut FastMap<String, RuleEntries>,
        rule: &str,
    ) -> &'a mut RuleEntries {
        if !by_rule.contains_key(rule) {
            by_rule.insert(rule.to_string(), RuleEntries::default());
        }
        by_rule.get_mut(rule).expect("inserted above")
    }

    /// Notes that `slot` lists `rule`'s `prefix`, and gives the entry an
    /// index if it had none.
    pub fn hold(&mut self, rule: &str, prefix: IpPrefix, slot: u32) -> Holding {
        let Self {
            by_rule,
            free,
            unused_from,
            capacity,
        } = self;
        let mut given = false;
        let held = Self::of_rule(by_rule, rule).held(prefix, || {
            given = true;
            let index = free.pop().or_else(|| {
                (*unused_from < *capacity).then(|| {
                    *unused_from += 1;
                    *unused_from - 1
                })
            });
            Held::new(index.unwrap_or(UNCOUNTED_ENTRY), slot)
        });
        held.list(slot, true);
        match held.index() {
            UNCOUNTED_ENTRY => Holding::Full,
            index if given => Holding::Given(index),
            index => Holding::Kept(index),
        }
    }

    /// Records that `slot` lists `rule`'s `prefix` at `index`, as read back
    /// from adopted maps.
    pub fn adopt(&mut self, rule: &str, prefix: IpPrefix, slot: u32, index: u32) {
        Self::of_rule(&mut self.by_rule, rule)
            .held(prefix, || Held::new(index, slot))
            .list(slot, true);
        self.unused_from = self.unused_from.max(index + 1);
    }

    /// After [`EntryIndexes::adopt`]: every index below the highest adopted
    /// one that no entry holds is free.
    pub fn free_unheld(&mut self) {
        let mut taken = vec![false; self.unused_from as usize];
        for held in self.by_rule.values().flat_map(RuleEntries::all) {
            taken[held.index() as usize] = true;
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
        if let Some(index) = entries.release(prefix, slot) {
            if index != UNCOUNTED_ENTRY {
                self.free.push(index);
            }
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
        for entries in self.by_rule.values_mut() {
            if v4 {
                entries
                    .v4
                    .values_mut()
                    .for_each(|held| held.list(slot, false));
            } else {
                entries
                    .v6
                    .values_mut()
                    .for_each(|held| held.list(slot, false));
            }
        }
    }

    /// Frees the index of every entry neither slot lists.
    pub fn free_unlisted(&mut self) {
        let free = &mut self.free;
        let mut keep = |held: &mut Held| {
            if !held.listed() && held.index() != UNCOUNTED_ENTRY {
                free.push(held.index());
            }
            held.listed()
        };
        self.by_rule.retain(|_, entries| {
            entries.v4.retain(|_, held| keep(held));
            entries.v6.retain(|_, held| keep(held));
            !entries.is_empty()
        });
    }

    /// Gives back the room of entries since unlisted: after a new list
    /// both lists' entries were held at once, twice what either slot lists
    /// once the idle slot has caught up.
    pub fn shrink(&mut self) {
        fn shrink_map<K: Hash + Eq>(entries: &mut FastMap<K, Held>) {
            if entries.capacity() > 2 * entries.len() {
                entries.shrink_to_fit();
            }
        }
        for entries in self.by_rule.values_mut() {
            shrink_map(&mut entries.v4);
            shrink_map(&mut entries.v6);
        }
    }

    /// The entries `slot` lists: rule, prefix, index.
    pub fn listed_in(&self, slot: u32) -> impl Iterator<Item = (&str, IpPrefix, u32)> {
        self.by_rule.iter().flat_map(move |(rule, entries)| {
            entries
                .listed_in(slot)
                .map(move |(prefix, index)| (rule.as_str(), prefix, index))
        })
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
        assert!(indexes.by_rule["vendor"].v4.capacity() < 1000);
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
        assert_eq!(indexes.unused_from, 3);
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
