//! One address family's listed prefixes and what each gives (what its
//! source rows hold), kept up to date one prefix at a time.
//!
//! An LPM lookup returns only the longest match, so every entry carries the
//! rules of every listed prefix that contains it (its *effective* rules).
//! Listing or unlisting one prefix changes the effective rules of that
//! prefix and of the prefixes nested under it, and nothing else; this type
//! recomputes exactly that subtree and reports the keys that changed, so a
//! one-prefix `allow` on a 250k-prefix policy touches a handful of entries.
//!
//! The table is one sorted vector, 22 bytes per IPv4 prefix and 34 per
//! IPv6 one: a 250k + 250k policy takes 14 MB, where two B-trees (listings
//! and trie contents) took about 170 MB, and a reload holds two policies at
//! once.

use std::collections::{BTreeMap, BTreeSet};

use firewall_common::maps::RuleSet;

use crate::config::prefix::network_bits;

/// A trie key: network bits (IPv4 in the low 32 bits) and prefix length.
/// Sorted by (bits, length), a prefix comes before everything nested in
/// it, and its subtree is one contiguous range.
pub type PrefixKey = (u128, u8);

/// What the trie holds for one prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// Own rules plus those of every enclosing prefix.
    pub rules: RuleSet,
    /// The length of the entry the first of `rules` (lowest bit) credits:
    /// that rule's most specific listed prefix containing this one, so this
    /// prefix cut to that length ([`PrefixTable::first_entry`]).
    pub first_len: u8,
}

/// How a table keeps its prefixes' network bits, which fixes its family.
pub trait Bits: Copy + Eq + std::fmt::Debug {
    /// Address width: 32 or 128.
    const WIDTH: u8;
    fn store(bits: u128) -> Self;
    fn load(self) -> u128;
}

/// IPv4: 4 bytes, where 16 made an IPv4 entry 34 bytes instead of 22.
impl Bits for u32 {
    const WIDTH: u8 = 32;

    fn store(bits: u128) -> Self {
        bits as u32
    }

    fn load(self) -> u128 {
        self.into()
    }
}

/// IPv6: high and low halves, so that no `u128` aligns an entry to 16 bytes.
impl Bits for [u64; 2] {
    const WIDTH: u8 = 128;

    fn store(bits: u128) -> Self {
        [(bits >> 64) as u64, bits as u64]
    }

    fn load(self) -> u128 {
        (u128::from(self[0]) << 64) | u128::from(self[1])
    }
}

pub type V4Table = PrefixTable<u32>;
pub type V6Table = PrefixTable<[u64; 2]>;

/// One listed prefix: its key and node split into fields, and packed, so
/// that the two lengths are not padded to 8 (unaligned loads cost nothing
/// here, and no field is ever borrowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed)]
struct Listed<B: Bits> {
    /// Network bits.
    bits: B,
    /// Rules that list exactly this prefix; never empty.
    own: RuleSet,
    /// [`Node::rules`] of what the trie holds for it.
    rules: RuleSet,
    len: u8,
    /// [`Node::first_len`].
    first_len: u8,
}

const _: () = assert!(std::mem::size_of::<Listed<u32>>() == 22);
const _: () = assert!(std::mem::size_of::<Listed<[u64; 2]>>() == 34);

impl<B: Bits> Listed<B> {
    fn new(key: PrefixKey, own: RuleSet, node: Node) -> Self {
        Self {
            bits: B::store(key.0),
            own,
            rules: node.rules,
            len: key.1,
            first_len: node.first_len,
        }
    }

    fn key(&self) -> PrefixKey {
        (self.bits.load(), self.len)
    }

    fn node(&self) -> Node {
        Node {
            rules: self.rules,
            first_len: self.first_len,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixTable<B: Bits> {
    /// Every listed prefix, sorted by key: a trie entry each.
    listed: Vec<Listed<B>>,
    /// Per rule (bit), the nodes holding it after another rule: kept with
    /// every change so [`PrefixTable::later_rules`] costs no walk.
    later: [u32; RuleSet::BITS as usize],
}

/// Whether `outer` contains `inner`.
pub fn contains(outer: PrefixKey, inner: PrefixKey, width: u8) -> bool {
    outer.1 <= inner.1 && network_bits(inner.0, outer.1, width) == outer.0
}

/// Pops a stack of nested prefixes down to `key`'s nearest ancestor and
/// returns that ancestor's node.
fn pop_to_parent(
    ancestors: &mut Vec<(PrefixKey, Node)>,
    key: PrefixKey,
    width: u8,
) -> Option<Node> {
    while let Some(&(top, node)) = ancestors.last() {
        if contains(top, key, width) {
            return Some(node);
        }
        ancestors.pop();
    }
    None
}

/// Adds `by` (1 or -1) to the count of each rule `node` holds after another.
fn count_later(later: &mut [u32; RuleSet::BITS as usize], node: Node, by: i32) {
    let mut rules = node.rules & node.rules.wrapping_sub(1);
    while rules != 0 {
        let rule = rules.trailing_zeros() as usize;
        later[rule] = later[rule].wrapping_add_signed(by);
        rules &= rules - 1;
    }
}

/// The node of `key`, listed by `own` rules, under `parent`.
fn node_of(key: PrefixKey, own: RuleSet, parent: Option<Node>) -> Node {
    let rules = own | parent.map_or(0, |parent| parent.rules);
    let first_rule = rules & rules.wrapping_neg();
    let first_len = match parent {
        Some(parent) if own & first_rule == 0 => parent.first_len,
        _ => key.1,
    };
    Node { rules, first_len }
}

impl<B: Bits> PrefixTable<B> {
    /// Builds the table from the rules listing each prefix, given in key
    /// order, each prefix once.
    pub fn new(own: impl IntoIterator<Item = (PrefixKey, RuleSet)>) -> Self {
        // Sorted by (bits, length), a prefix's ancestors come before it and
        // before anything outside it: one pass with a stack of the current
        // ancestor chain visits each prefix once.
        let own = own.into_iter();
        let mut listed: Vec<Listed<B>> = Vec::with_capacity(own.size_hint().0);
        let mut later = [0; RuleSet::BITS as usize];
        let mut ancestors: Vec<(PrefixKey, Node)> = Vec::new();
        for (key, rules) in own {
            debug_assert!(listed.last().is_none_or(|last| last.key() < key));
            let node = node_of(key, rules, pop_to_parent(&mut ancestors, key, B::WIDTH));
            ancestors.push((key, node));
            listed.push(Listed::new(key, rules, node));
            count_later(&mut later, node, 1);
        }
        Self { listed, later }
    }

    /// Where `key` is in `listed`, or where it would go.
    fn position(&self, key: &PrefixKey) -> Result<usize, usize> {
        self.listed.binary_search_by(|listed| listed.key().cmp(key))
    }

    fn find(&self, key: &PrefixKey) -> Option<&Listed<B>> {
        self.position(key).ok().map(|index| &self.listed[index])
    }

    /// The rules some node holds after another rule (not as its first):
    /// those the data plane may need to find an entry of with a second
    /// lookup, in this family's entry tables, because the longest match
    /// names another rule first. Usually none: with rules that do not
    /// overlap, the source rows alone credit every entry.
    pub fn later_rules(&self) -> RuleSet {
        self.later
            .iter()
            .enumerate()
            .filter(|(_, nodes)| **nodes > 0)
            .fold(0, |rules, (rule, _)| rules | 1 << rule)
    }

    /// Number of trie entries.
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// Entries' rules as the trie holds them, in key order.
    #[cfg(test)]
    pub fn entries(&self) -> impl Iterator<Item = (PrefixKey, RuleSet)> + '_ {
        self.nodes().map(|(key, node)| (key, node.rules))
    }

    /// Entries as the trie holds them, in key order.
    pub fn nodes(&self) -> impl Iterator<Item = (PrefixKey, Node)> + '_ {
        self.listed
            .iter()
            .map(|listed| (listed.key(), listed.node()))
    }

    #[cfg(test)]
    pub fn get(&self, key: &PrefixKey) -> Option<RuleSet> {
        self.node(key).map(|node| node.rules)
    }

    pub fn node(&self, key: &PrefixKey) -> Option<Node> {
        self.find(key).map(Listed::node)
    }

    /// The prefix of the entry `node` (at `key`) credits for its first rule.
    pub fn first_entry(&self, key: PrefixKey, node: Node) -> PrefixKey {
        (
            network_bits(key.0, node.first_len, B::WIDTH),
            node.first_len,
        )
    }

    /// Rules that list exactly `key`.
    pub fn listings(&self, key: &PrefixKey) -> RuleSet {
        self.find(key).map_or(0, |listed| listed.own)
    }

    /// Every prefix, the rules listing it and its node, in key order.
    pub fn listed(&self) -> impl Iterator<Item = (PrefixKey, RuleSet, Node)> + '_ {
        self.listed
            .iter()
            .map(|listed| (listed.key(), listed.own, listed.node()))
    }

    /// Every (prefix, rules listing it), in key order.
    pub fn all_listings(&self) -> impl Iterator<Item = (PrefixKey, RuleSet)> + '_ {
        self.listed.iter().map(|listed| (listed.key(), listed.own))
    }

    /// Whether adding `key` would add a trie entry.
    pub fn is_new(&self, key: &PrefixKey) -> bool {
        self.position(key).is_err()
    }

    /// Rules of the longest prefix containing `address`, as the data
    /// plane's source rows answer.
    pub fn longest_match(&self, address: u128) -> RuleSet {
        self.longest_node(address).map_or(0, |(_, node)| node.rules)
    }

    /// The longest prefix containing `address`, and its node.
    pub fn longest_node(&self, address: u128) -> Option<(PrefixKey, Node)> {
        self.enclosing_node(address, B::WIDTH + 1)
    }

    /// The longest prefix rule `rule` lists that contains `address`, as the
    /// data plane's entry rows answer.
    #[cfg(test)]
    pub fn longest_listing(&self, address: u128, rule: u32) -> Option<PrefixKey> {
        (0..=B::WIDTH).rev().find_map(|len| {
            let key = (network_bits(address, len, B::WIDTH), len);
            (self.listings(&key) & (1 << rule) != 0).then_some(key)
        })
    }

    /// Sets or clears `bit` in the rules listing exactly `key`, updates the
    /// effective rules of `key` and everything nested in it, and adds every
    /// trie key whose contents changed to `changed`.
    pub fn set_listed(
        &mut self,
        key: PrefixKey,
        bit: RuleSet,
        listed: bool,
        changed: &mut BTreeSet<PrefixKey>,
    ) {
        let start = match self.position(&key) {
            Ok(index) => {
                let entry = &mut self.listed[index];
                let own = if listed {
                    entry.own | bit
                } else {
                    entry.own & !bit
                };
                if own == entry.own {
                    return;
                }
                if own == 0 {
                    let old = self.listed.remove(index);
                    count_later(&mut self.later, old.node(), -1);
                    changed.insert(key);
                } else {
                    entry.own = own;
                }
                index
            }
            Err(_) if !listed => return,
            Err(index) => {
                // No rules yet: the walk below computes its node and
                // counts it as new.
                let node = Node {
                    rules: 0,
                    first_len: 0,
                };
                self.listed.insert(index, Listed::new(key, bit, node));
                index
            }
        };
        let base = self.enclosing_node(key.0, key.1).map(|(_, node)| node);
        let last = network_bits(u128::MAX, B::WIDTH, B::WIDTH);
        let broadcast = key.0 | (last & !network_bits(last, key.1, B::WIDTH));
        let Self { listed, later } = self;
        let end = listed.partition_point(|listed| listed.key() <= (broadcast, B::WIDTH));
        let mut ancestors: Vec<(PrefixKey, Node)> = Vec::new();
        for inner in &mut listed[start..end] {
            let parent = pop_to_parent(&mut ancestors, inner.key(), B::WIDTH).or(base);
            let node = node_of(inner.key(), inner.own, parent);
            ancestors.push((inner.key(), node));
            if inner.node() != node {
                count_later(later, inner.node(), -1);
                count_later(later, node, 1);
                (inner.rules, inner.first_len) = (node.rules, node.first_len);
                changed.insert(inner.key());
            }
        }
    }

    /// The table with `changes` (prefix, rule bit, listed) applied in
    /// order: one merge and rebuild, where [`PrefixTable::set_listed`]
    /// shifts the vector's tail for each prefix it adds or removes.
    pub fn with_changes(&self, changes: &[(PrefixKey, RuleSet, bool)]) -> Self {
        // Per prefix, the bits to set and to clear, the last change winning.
        let mut edits: BTreeMap<PrefixKey, (RuleSet, RuleSet)> = BTreeMap::new();
        for &(key, bit, listed) in changes {
            let (set, clear) = edits.entry(key).or_default();
            if listed {
                (*set, *clear) = (*set | bit, *clear & !bit);
            } else {
                (*set, *clear) = (*set & !bit, *clear | bit);
            }
        }
        let mut edits = edits.into_iter().peekable();
        let mut own = self.all_listings().peekable();
        let merged = std::iter::from_fn(|| {
            loop {
                let next = match (own.peek().copied(), edits.peek().copied()) {
                    (None, None) => return None,
                    (Some(listed), None) => {
                        own.next();
                        listed
                    }
                    (Some((key, rules)), Some((edited, _))) if key < edited => {
                        own.next();
                        (key, rules)
                    }
                    (listed, Some((edited, (set, clear)))) => {
                        edits.next();
                        let rules = match listed {
                            Some((key, rules)) if key == edited => {
                                own.next();
                                rules
                            }
                            _ => 0,
                        };
                        (edited, (rules | set) & !clear)
                    }
                };
                if next.1 != 0 {
                    return Some(next);
                }
            }
        });
        Self::new(merged.collect::<Vec<_>>())
    }

    /// The longest listed prefix containing `address` and shorter than
    /// `shorter_than`, and its node.
    fn enclosing_node(&self, address: u128, shorter_than: u8) -> Option<(PrefixKey, Node)> {
        (0..shorter_than).rev().find_map(|len| {
            let key = (network_bits(address, len, B::WIDTH), len);
            self.node(&key).map(|node| (key, node))
        })
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn v4(text: &str) -> PrefixKey {
        let prefix: crate::config::IpPrefix = text.parse().unwrap();
        (prefix.bits().0, prefix.len())
    }

    fn table(own: &[(&str, RuleSet)]) -> V4Table {
        PrefixTable::new(
            own.iter()
                .map(|(text, rules)| (v4(text), *rules))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn nested_prefixes_inherit_their_parents_rules() {
        let table = table(&[
            ("203.0.113.0/24", 0b01),
            ("203.0.113.64/26", 0b10),
            ("198.51.100.0/24", 0b10),
        ]);
        let entries: Vec<_> = table.entries().collect();
        assert_eq!(
            entries,
            [
                (v4("198.51.100.0/24"), 0b10),
                (v4("203.0.113.0/24"), 0b01),
                (v4("203.0.113.64/26"), 0b11),
            ]
        );
        assert_eq!(table.longest_match(v4("203.0.113.70/32").0), 0b11);
        assert_eq!(table.longest_match(v4("203.0.113.10/32").0), 0b01);
        assert_eq!(table.longest_match(v4("192.0.2.1/32").0), 0);
    }

    #[test]
    fn listing_a_parent_updates_exactly_its_subtree() {
        let mut table = table(&[
            ("203.0.113.64/26", 0b10),
            ("203.0.113.70/32", 0b100),
            ("198.51.100.0/24", 0b10),
        ]);
        let mut changed = BTreeSet::new();
        table.set_listed(v4("203.0.113.0/24"), 0b1, true, &mut changed);
        assert_eq!(
            changed,
            BTreeSet::from([
                v4("203.0.113.0/24"),
                v4("203.0.113.64/26"),
                v4("203.0.113.70/32")
            ])
        );
        assert_eq!(table.get(&v4("203.0.113.70/32")), Some(0b111));
        // Listing the same bit again changes nothing.
        changed.clear();
        table.set_listed(v4("203.0.113.0/24"), 0b1, true, &mut changed);
        assert!(changed.is_empty());
        // Unlisting restores the original table exactly.
        table.set_listed(v4("203.0.113.0/24"), 0b1, false, &mut changed);
        assert_eq!(
            table,
            self::table(&[
                ("203.0.113.64/26", 0b10),
                ("203.0.113.70/32", 0b100),
                ("198.51.100.0/24", 0b10),
            ])
        );
        assert_eq!(changed.len(), 3);
    }

    #[test]
    fn a_prefix_listed_by_two_rules_stays_until_both_unlist_it() {
        let mut table = table(&[("192.0.2.0/24", 0b11)]);
        let mut changed = BTreeSet::new();
        table.set_listed(v4("192.0.2.0/24"), 0b01, false, &mut changed);
        assert_eq!(table.get(&v4("192.0.2.0/24")), Some(0b10));
        table.set_listed(v4("192.0.2.0/24"), 0b10, false, &mut changed);
        assert_eq!(table.len(), 0);
    }

    /// Many edits at once give what the same edits one at a time give.
    #[test]
    fn changes_at_once_equal_the_same_changes_one_at_a_time() {
        let start = table(&[
            ("192.0.2.0/24", 0b01),
            ("192.0.2.64/26", 0b10),
            ("198.51.100.0/24", 0b11),
        ]);
        let changes = [
            (v4("192.0.2.0/24"), 0b01, false),
            (v4("192.0.2.0/24"), 0b100, true),
            (v4("203.0.113.0/24"), 0b01, true),
            (v4("198.51.100.0/24"), 0b10, false),
            (v4("192.0.2.64/26"), 0b10, false),
            (v4("203.0.113.9/32"), 0b10, true),
            (v4("203.0.113.9/32"), 0b10, false),
            (v4("203.0.113.0/24"), 0b01, true),
            (v4("10.0.0.0/8"), 0b01, false),
        ];
        let mut one_by_one = start.clone();
        for (key, bit, listed) in changes {
            one_by_one.set_listed(key, bit, listed, &mut BTreeSet::new());
        }
        assert_eq!(start.with_changes(&changes), one_by_one);
        assert_eq!(start.with_changes(&[]), start);
    }

    /// Random edits applied one at a time give the same table as building
    /// it from scratch, and report every key whose contents changed.
    #[test]
    fn incremental_edits_equal_a_full_rebuild() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut own: BTreeMap<PrefixKey, RuleSet> = BTreeMap::new();
        let mut table = V4Table::new([]);
        for _ in 0..3000 {
            // Prefixes inside 10.0.0.0/16, so they nest often.
            let len = 16 + (random() % 17) as u8;
            let key = (
                network_bits(0x0a00_0000 | (random() as u128 & 0xffff), len, 32),
                len,
            );
            let bit: RuleSet = 1 << (random() % 3);
            let listed = random() % 3 != 0;
            let before = table.clone();
            let mut changed = BTreeSet::new();
            table.set_listed(key, bit, listed, &mut changed);
            let rules = own.get(&key).copied().unwrap_or(0);
            let rules = if listed { rules | bit } else { rules & !bit };
            if rules == 0 {
                own.remove(&key);
            } else {
                own.insert(key, rules);
            }
            let rebuilt = V4Table::new(own.clone());
            assert_eq!(table, rebuilt);
            let really_changed: BTreeSet<PrefixKey> = before
                .nodes()
                .chain(rebuilt.nodes())
                .map(|(key, _)| key)
                .filter(|key| before.node(key) != rebuilt.node(key))
                .collect();
            assert_eq!(changed, really_changed);
        }
    }
}
