//! Which `ENTRY_STATS` index counts for which allowlisted entry.
//!
//! An entry is a rule (by name) and a prefix, whatever its origin. It keeps
//! its index for as long as either policy slot lists it, so its counters
//! survive reloads, CLI edits and feed updates; a daemon that adopts pinned
//! maps reads the indexes back from the rows. An index is given
//! again only once neither slot lists its entry, and its counter is reset
//! then.

use std::{hash::Hash, net::Ipv4Addr, ops::Range};

use firewall_common::{limits::MAX_ENTRY_COUNTERS, maps::UNCOUNTED_ENTRY};

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

    /// An entry released by both slots, its index freed: no index given
    /// ever has all index bits set.
    const GONE: Held = Held(Self::INDEX_BITS);
}

const _: () = assert!(MAX_ENTRY_COUNTERS <= Held::INDEX_BITS, "every index fits");

/// One rule's entries of one family, as sorted vectors: 12 bytes an IPv4
/// entry and 24 an IPv6 one, where a hash map took twice that at the load
/// its power-of-two growth leaves (a 250k list sat in 512k buckets, a new
/// list's 500k entries in 1M). Entries given since the last merge are
/// appended to `added`: a policy is walked in key order, so they come in
/// key order, and so are the lookups of a walk: each vector is searched
/// forward from where the last lookup ended ([`gallop`]), a step or two
/// each, where a bisection of a 250k list took eighteen cache misses and
/// most of an `allow`. A released entry stays, [`Held::GONE`], until the
/// next merge.
#[derive(Clone, Debug)]
struct EntryMap<K> {
    /// Sorted by key, each key once.
    sorted: Vec<(K, Held)>,
    /// Sorted by key, each key once and none in `sorted` (but for adopted
    /// entries until [`EntryMap::merge`]).
    added: Vec<(K, Held)>,
    /// Entries not gone.
    held: usize,
    /// Where the last lookup ended in `sorted` and in `added`: where the
    /// next key of a walk in key order is sought first.
    hints: [usize; 2],
}

impl<K> Default for EntryMap<K> {
    fn default() -> Self {
        Self {
            sorted: Vec::new(),
            added: Vec::new(),
            held: 0,
            hints: [0; 2],
        }
    }
}

/// Where `key` is in `entries` (sorted by key), or where it would go, as
/// `binary_search` answers, sought from `hint` on if every key before
/// `hint` is smaller (doubling the window until it holds the key, then
/// bisecting it), else from the start. Costs the log of the distance from
/// `hint`.
fn gallop<K: Ord>(entries: &[(K, Held)], hint: usize, key: &K) -> Result<usize, usize> {
    let from = if hint <= entries.len() && (hint == 0 || entries[hint - 1].0 < *key) {
        hint
    } else {
        0
    };
    let rest = &entries[from..];
    let mut window = 1;
    while window < rest.len() && rest[window - 1].0 < *key {
        window *= 2;
    }
    rest[..window.min(rest.len())]
        .binary_search_by(|(at, _)| at.cmp(key))
        .map(|at| from + at)
        .map_err(|at| from + at)
}

impl<K: Ord + Copy> EntryMap<K> {
    /// Where `key` is: in `added` or not, and at which position.
    fn locate(&mut self, key: &K) -> Option<(bool, usize)> {
        for (in_added, entries) in [(false, &self.sorted), (true, &self.added)] {
            let hint = &mut self.hints[usize::from(in_added)];
            match gallop(entries, *hint, key) {
                Ok(at) => {
                    *hint = at;
                    return Some((in_added, at));
                }
                Err(at) => *hint = at,
            }
        }
        None
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut Held> {
        let (in_added, at) = self.locate(key)?;
        let entries = if in_added {
            &mut self.added
        } else {
            &mut self.sorted
        };
        Some(&mut entries[at].1)
    }

    /// `key`'s entry, given with `insert()` if it had none (or it was gone).
    fn held(&mut self, key: K, insert: impl FnOnce() -> Held) -> &mut Held {
        // Two lookups, the second at the hint: a borrow returned from one
        // branch is still taken in the other, for the borrow checker.
        if let Some(held) = self.get_mut(&key) {
            if *held == Held::GONE {
                *held = insert();
                self.held += 1;
            }
            return self.get_mut(&key).expect("found above");
        }
        if self.added.last().is_some_and(|(last, _)| *last > key) {
            // Out of key order: a new walk began. Merged first, so that
            // `added` stays sorted.
            self.merge();
        }
        self.held += 1;
        self.added.push((key, insert()));
        &mut self.added.last_mut().expect("pushed above").1
    }

    /// Records an entry read back from adopted maps, in no particular
    /// order and once per slot; [`EntryMap::merge`] files them.
    fn adopt(&mut self, key: K, held: Held) {
        self.added.push((key, held));
    }

    /// Notes that `slot` lists none of the entries; they keep their
    /// indexes until [`EntryMap::free_unlisted`].
    fn unlist(&mut self, slot: u32) {
        for (_, held) in self.sorted.iter_mut().chain(&mut self.added) {
            held.list(slot, false);
        }
    }

    /// Makes the entries neither slot lists gone, adding their indexes to
    /// `free`.
    fn free_unlisted(&mut self, free: &mut FreeIndexes) {
        for (_, held) in self.sorted.iter_mut().chain(&mut self.added) {
            if *held != Held::GONE && !held.listed() {
                if held.index() != UNCOUNTED_ENTRY {
                    free.push(held.index());
                }
                *held = Held::GONE;
                self.held -= 1;
            }
        }
    }

    /// Every entry not gone, in no particular order.
    fn all(&self) -> impl Iterator<Item = (K, Held)> + '_ {
        self.sorted
            .iter()
            .chain(&self.added)
            .filter(|(_, held)| *held != Held::GONE)
            .copied()
    }

    /// Makes `sorted` every entry not gone, with `added` merged in
    /// (adopted ones sorted, their slots combined), and gives back the
    /// room of the rest.
    fn merge(&mut self) {
        if self.added.is_empty() && self.held == self.sorted.len() {
            // Nothing added and nothing gone: what a change that kept
            // every entry (an `allow`) leaves.
            return;
        }
        let mut added = std::mem::take(&mut self.added);
        added.sort_by_key(|(key, _)| *key);
        added.dedup_by(|(key, held), (kept_key, kept)| {
            let same = key == kept_key;
            if same {
                // The slot bits; both slots name the same index.
                *kept = Held(kept.0 | (held.0 & !Held::INDEX_BITS));
            }
            same
        });
        let mut merged = Vec::with_capacity(self.sorted.len().max(added.len()));
        let mut added = added.into_iter().peekable();
        for entry in std::mem::take(&mut self.sorted) {
            while let Some(next) = added.next_if(|(key, _)| *key < entry.0) {
                merged.push(next);
            }
            merged.push(entry);
        }
        merged.extend(added);
        merged.retain(|(_, held)| *held != Held::GONE);
        merged.shrink_to_fit();
        self.held = merged.len();
        self.sorted = merged;
    }

    fn is_empty(&self) -> bool {
        self.held == 0
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.sorted.capacity() + self.added.capacity()
    }
}

/// One rule's entries, per family, keyed by address and length. Not the
/// byte-array keys of `PrefixList`: those compare through memcmp, and the
/// million bisections of a new-list reload took 0.1 s longer on them.
#[derive(Clone, Debug, Default)]
struct RuleEntries {
    v4: EntryMap<(u32, u8)>,
    v6: EntryMap<([u8; 16], u8)>,
}

impl RuleEntries {
    /// `prefix`'s entry, inserted with `insert()` if it has none.
    fn held(&mut self, prefix: IpPrefix, insert: impl FnOnce() -> Held) -> &mut Held {
        match prefix {
            IpPrefix::V4 { address, len } => self.v4.held((address.to_bits(), len), insert),
            IpPrefix::V6 { address, len } => self.v6.held((address.octets(), len), insert),
        }
    }

    fn adopt(&mut self, prefix: IpPrefix, held: Held) {
        match prefix {
            IpPrefix::V4 { address, len } => self.v4.adopt((address.to_bits(), len), held),
            IpPrefix::V6 { address, len } => self.v6.adopt((address.octets(), len), held),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = Held> + '_ {
        let v4 = self.v4.all().map(|(_, held)| held);
        v4.chain(self.v6.all().map(|(_, held)| held))
    }

    fn merge(&mut self) {
        self.v4.merge();
        self.v6.merge();
    }

    /// The entries `slot` lists: prefix and index.
    fn listed_in(&self, slot: u32) -> impl Iterator<Item = (IpPrefix, u32)> + '_ {
        let v4 = self.v4.all().map(|((bits, len), held)| {
            let address = Ipv4Addr::from_bits(bits);
            (IpPrefix::V4 { address, len }, held)
        });
        let v6 = self.v6.all().map(|((octets, len), held)| {
            let address = octets.into();
            (IpPrefix::V6 { address, len }, held)
        });
        v4.chain(v6)
            .filter(move |(_, held)| held.listed_in(slot))
            .map(|(prefix, held)| (prefix, held.index()))
    }
}

/// Indexes free to be given again, as runs: entries are given indexes and
/// freed in key order, so the half a million a new list frees are a few
/// runs, where a vector of them kept 2 MB.
#[derive(Clone, Debug, Default)]
struct FreeIndexes(Vec<Range<u32>>);

impl FreeIndexes {
    fn push(&mut self, index: u32) {
        match self.0.last_mut() {
            Some(run) if run.end == index => run.end += 1,
            Some(run) if run.start == index + 1 => run.start = index,
            _ => self.0.push(index..index + 1),
        }
    }

    /// The lowest index of the run freed last.
    fn pop(&mut self) -> Option<u32> {
        let run = self.0.last_mut()?;
        let index = run.start;
        run.start += 1;
        if run.start == run.end {
            self.0.pop();
        }
        Some(index)
    }
}

#[cfg(test)]
impl FreeIndexes {
    /// The runs as (first, past the last).
    fn runs(&self) -> Vec<(u32, u32)> {
        self.0.iter().map(|run| (run.start, run.end)).collect()
    }
}

impl FromIterator<u32> for FreeIndexes {
    fn from_iter<I: IntoIterator<Item = u32>>(indexes: I) -> Self {
        let mut free = Self::default();
        indexes.into_iter().for_each(|index| free.push(index));
        free
    }
}

/// The index of each entry listed in either slot. Entries are grouped by
/// rule, so each is keyed by its prefix alone (no name per entry).
#[derive(Clone, Debug)]
pub struct EntryIndexes {
    /// Per rule by name (at most 64, each once), its entries.
    by_rule: Vec<(String, RuleEntries)>,
    /// Where in `by_rule` the last rule looked up is: a walk of a policy
    /// asks for the same rule prefix after prefix, and comparing one name
    /// costs less than hashing it twice, as a hash map did.
    last_rule: usize,
    /// Indexes given before and free again.
    free: FreeIndexes,
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
            by_rule: Vec::new(),
            last_rule: 0,
            free: FreeIndexes::default(),
            unused_from: UNCOUNTED_ENTRY + 1,
            capacity,
        }
    }

    /// The entries of `rule` in `by_rule`, created empty if it has none,
    /// sought at `last_rule` first, which is left where they are. A
    /// function of the fields, so that callers may use the others
    /// meanwhile.
    fn of_rule<'a>(
        by_rule: &'a mut Vec<(String, RuleEntries)>,
        last_rule: &mut usize,
        rule: &str,
    ) -> &'a mut RuleEntries {
        let is_rule = |(name, _): &(String, RuleEntries)| name == rule;
        if !by_rule.get(*last_rule).is_some_and(is_rule) {
            *last_rule = by_rule.iter().position(is_rule).unwrap_or_else(|| {
                by_rule.push((rule.to_string(), RuleEntries::default()));
                by_rule.len() - 1
            });
        }
        &mut by_rule[*last_rule].1
    }

    /// Notes that `slot` lists `rule`'s `prefix`, and gives the entry an
    /// index if it had none.
    pub fn hold(&mut self, rule: &str, prefix: IpPrefix, slot: u32) -> Holding {
        let Self {
            by_rule,
            last_rule,
            free,
            unused_from,
            capacity,
        } = self;
        let mut given = false;
        let held = Self::of_rule(by_rule, last_rule, rule).held(prefix, || {
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
    /// from adopted maps; [`EntryIndexes::free_unheld`] must follow.
    pub fn adopt(&mut self, rule: &str, prefix: IpPrefix, slot: u32, index: u32) {
        Self::of_rule(&mut self.by_rule, &mut self.last_rule, rule)
            .adopt(prefix, Held::new(index, slot));
        self.unused_from = self.unused_from.max(index + 1);
    }

    /// After [`EntryIndexes::adopt`]: files the adopted entries, and every
    /// index below the highest adopted one that no entry holds is free.
    pub fn free_unheld(&mut self) {
        self.rules_mut().for_each(RuleEntries::merge);
        let mut taken = vec![false; self.unused_from as usize];
        for held in self.by_rule.iter().flat_map(|(_, entries)| entries.all()) {
            taken[held.index() as usize] = true;
        }
        self.free = (UNCOUNTED_ENTRY + 1..self.unused_from)
            .filter(|index| !taken[*index as usize])
            .collect();
    }

    /// Notes that `slot` lists none of the IPv4 (`v4`) or IPv6 entries, as
    /// a slot is rewritten whole: holding again those it lists, then
    /// [`EntryIndexes::free_unlisted`], frees the others. Two passes over
    /// the entries, where asking the policy about each one took 0.15 s of
    /// a 250k + 250k start.
    pub fn unlist_family(&mut self, slot: u32, v4: bool) {
        for entries in self.rules_mut() {
            if v4 {
                entries.v4.unlist(slot);
            } else {
                entries.v6.unlist(slot);
            }
        }
    }

    /// Frees the index of every entry of the family `v4` says that
    /// neither slot lists: after [`EntryIndexes::unlist_family`], only
    /// that family's entries can have become free.
    pub fn free_unlisted(&mut self, v4: bool) {
        let free = &mut self.free;
        self.by_rule.retain_mut(|(_, entries)| {
            if v4 {
                entries.v4.free_unlisted(free);
            } else {
                entries.v6.free_unlisted(free);
            }
            !entries.is_empty()
        });
    }

    fn rules_mut(&mut self) -> impl Iterator<Item = &mut RuleEntries> {
        self.by_rule.iter_mut().map(|(_, entries)| entries)
    }

    /// Drops the entries neither slot lists and gives back their room:
    /// after a new list both lists' entries were held at once, twice what
    /// either slot lists once the idle slot has caught up.
    pub fn shrink(&mut self) {
        self.rules_mut().for_each(RuleEntries::merge);
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

    /// Rewrites `slot` (IPv4) as listing `listed` only.
    fn relist(indexes: &mut EntryIndexes, slot: u32, listed: &[(&str, IpPrefix)]) {
        indexes.unlist_family(slot, true);
        for (rule, prefix) in listed {
            indexes.hold(rule, *prefix, slot);
        }
        indexes.free_unlisted(true);
    }

    #[test]
    fn an_entry_keeps_its_index_while_either_slot_lists_it() {
        let mut indexes = EntryIndexes::with_capacity(4);
        let vendor = prefix("203.0.113.0/24");
        assert_eq!(indexes.hold("vendor", vendor, 0), Holding::Given(1));
        assert_eq!(indexes.hold("vendor", vendor, 1), Holding::Kept(1));
        relist(&mut indexes, 0, &[]);
        assert_eq!(indexes.hold("vendor", vendor, 0), Holding::Kept(1));
        relist(&mut indexes, 0, &[]);
        relist(&mut indexes, 1, &[]);
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
        let kept: Vec<(&str, IpPrefix)> = prefixes[..100].iter().map(|p| ("vendor", *p)).collect();
        relist(&mut indexes, 0, &kept);
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
        assert!(indexes.by_rule[0].1.v4.capacity() < 1000);
        assert_eq!(listed(&indexes), before);
        assert_eq!(indexes.hold("vendor", prefixes[0], 1), Holding::Kept(1));
    }

    /// Rules looked up in any order, the last one or another, keep their
    /// own entries.
    #[test]
    fn each_rule_keeps_its_entries_whatever_rule_came_before() {
        let mut indexes = EntryIndexes::with_capacity(100);
        let net = prefix("192.0.2.0/24");
        let order = ["a", "b", "a", "c", "c", "b", "a"];
        let held: Vec<Holding> = order
            .iter()
            .map(|rule| indexes.hold(rule, net, 0))
            .collect();
        assert_eq!(
            held,
            [
                Holding::Given(1),
                Holding::Given(2),
                Holding::Kept(1),
                Holding::Given(3),
                Holding::Kept(3),
                Holding::Kept(2),
                Holding::Kept(1),
            ]
        );
        let mut listed: Vec<(&str, u32)> = indexes
            .listed_in(0)
            .map(|(rule, _, index)| (rule, index))
            .collect();
        listed.sort();
        assert_eq!(listed, [("a", 1), ("b", 2), ("c", 3)]);
    }

    /// From any hint, right or wrong, a lookup answers what a bisection of
    /// the whole vector answers.
    #[test]
    fn a_lookup_from_any_hint_finds_what_bisection_finds() {
        let entries: Vec<(u32, Held)> = (0..40).map(|key| (3 * key, Held(key))).collect();
        for len in [0, 1, 2, 5, 40] {
            let entries = &entries[..len];
            for key in 0..125 {
                let whole = entries.binary_search_by(|(at, _)| at.cmp(&key));
                for hint in 0..=len + 1 {
                    assert_eq!(gallop(entries, hint, &key), whole, "{len} {key} {hint}");
                }
            }
        }
    }

    /// Entries given in any order, released, given again and adopted are
    /// found with their indexes, before and after merges.
    #[test]
    fn entries_keep_their_indexes_in_any_order_of_changes() {
        let mut entries = EntryMap::<u32>::default();
        let mut next = 0;
        let mut give = |entries: &mut EntryMap<u32>, key: u32| {
            entries
                .held(key, || {
                    next += 1;
                    Held::new(next, 0)
                })
                .index()
        };
        // In key order: appended; then out of order, which merges first.
        assert_eq!([10, 20, 30].map(|key| give(&mut entries, key)), [1, 2, 3]);
        assert_eq!(entries.added.len(), 3);
        assert_eq!(give(&mut entries, 15), 4);
        assert_eq!(entries.sorted.len(), 3);
        assert_eq!(
            [30, 15, 10, 20].map(|key| give(&mut entries, key)),
            [3, 4, 1, 2]
        );
        // Unlisted by its only slot, an entry is gone once freed: given
        // again, it gets a new index, and a merge drops what stays gone.
        entries.unlist(0);
        for key in [15, 30] {
            entries.get_mut(&key).unwrap().list(0, true);
        }
        let mut free = FreeIndexes::default();
        entries.free_unlisted(&mut free);
        assert_eq!(free.runs(), [(1, 3)]);
        assert_eq!(give(&mut entries, 20), 5);
        entries.merge();
        let all: Vec<(u32, u32)> = entries
            .all()
            .map(|(key, held)| (key, held.index()))
            .collect();
        assert_eq!(all, [(15, 4), (20, 5), (30, 3)]);
        assert_eq!(entries.sorted.capacity(), 3);
        // Adopted entries come once per slot, in no order.
        let mut adopted = EntryMap::<u32>::default();
        for (key, slot, index) in [(9, 1, 7), (3, 0, 8), (9, 0, 7)] {
            adopted.adopt(key, Held::new(index, slot));
        }
        adopted.merge();
        let held: Vec<(u32, u32, bool, bool)> = adopted
            .all()
            .map(|(key, held)| (key, held.index(), held.listed_in(0), held.listed_in(1)))
            .collect();
        assert_eq!(held, [(3, 8, true, false), (9, 7, true, true)]);
        assert!(!adopted.is_empty());
        let mut free = FreeIndexes::default();
        adopted.unlist(0);
        adopted.free_unlisted(&mut free);
        assert_eq!(free.runs(), [(8, 9)]);
        adopted.unlist(1);
        adopted.free_unlisted(&mut free);
        assert_eq!(free.runs(), [(7, 9)]);
        assert!(adopted.is_empty());
    }

    #[test]
    fn free_indexes_freed_in_either_order_are_one_run() {
        let mut free: FreeIndexes = (10..500_010).collect();
        assert_eq!(free.runs(), [(10, 500_010)]);
        (3..6).rev().for_each(|index| free.push(index));
        free.push(8);
        assert_eq!(free.runs(), [(10, 500_010), (3, 6), (8, 9)]);
        let given: Vec<u32> = std::iter::from_fn(|| free.pop()).take(5).collect();
        assert_eq!(given, [8, 3, 4, 5, 10]);
        assert_eq!(free.runs(), [(11, 500_010)]);
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
        relist(&mut indexes, 0, &[("a", b)]);
        relist(&mut indexes, 1, &[]);
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
        indexes.free_unlisted(true);
        let listed: Vec<&str> = indexes.listed_in(1).map(|(rule, _, _)| rule).collect();
        assert_eq!(listed, ["a"]);
        assert_eq!(
            indexes.hold("d", prefix("192.0.2.77/32"), 1),
            Holding::Given(5)
        );
    }
}
