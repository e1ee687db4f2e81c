//! Compiles the config and the runtime entries into the exact contents of
//! the data plane's maps, and keeps them up to date one entry at a time.
//!
//! Pure: no I/O, so the whole policy logic is unit-tested. The result is
//! checked against the map capacities here, so an oversized policy fails
//! before any map is touched.

pub mod coverage;
pub mod explain;
pub mod guard;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};

use firewall_common::{
    limits::{MAX_PORT_ENTRIES, MAX_PREFIXES_PER_FAMILY},
    maps::{PortKey, RuleSet, SourceValue},
    verdict::Policy,
    wire::Source,
};

pub use self::table::{Bits, PrefixKey, PrefixTable, V4Table, V6Table};
use crate::{
    config::{Config, IpPrefix},
    entries::RuntimeEntries,
    feeds::FeedLists,
};

/// Everything the data plane needs, ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Rule names in config order: bit `i` of a [`RuleSet`] is `rule_names[i]`.
    pub rule_names: Vec<String>,
    pub v4: V4Table,
    pub v6: V6Table,
    pub ports: BTreeMap<PortKey, RuleSet>,
    pub enforce: bool,
}

/// Prefix changes in one family up to which
/// [`CompiledPolicy::set_listed_many`] edits the sorted table in place; past
/// it, one rebuild (a few milliseconds per 10,000 prefixes) is cheaper.
pub const REBUILD_ABOVE: usize = 32;

/// A policy the data plane cannot hold, or runtime entries that no longer
/// fit the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the policy has {count} distinct IPv{family} prefixes; the data plane holds at most {max}: merge adjacent prefixes or split the allowlist across hosts"
    )]
    TooManyPrefixes { family: u8, count: usize, max: u32 },
    #[error(
        "overlapping rules need {count} IPv{family} entries in the data plane's entry tables (one per prefix listed by a rule that another rule's prefix covers or equals), and it holds at most {max}: let fewer rules list the same large feed or prefixes, or merge those rules"
    )]
    TooManyOverlaps { family: u8, count: usize, max: u32 },
    #[error(
        "runtime entries (added with `firewall-ctl allow`) no longer fit the config: {}; put the rules back as they were, or remove the entries first with `firewall-ctl remove PREFIX --rule NAME` and then change the config",
        misfits.join("; ")
    )]
    Misfits { misfits: Vec<String> },
}

/// Where two policies' map contents differ: the keys to write (or delete)
/// to turn a slot holding one into a slot holding the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub v4: BTreeSet<PrefixKey>,
    pub v6: BTreeSet<PrefixKey>,
    pub ports: BTreeSet<PortKey>,
    /// (prefix, rule index) listings added or removed: the keys of the
    /// entry tables.
    pub v4_listings: BTreeSet<Listing>,
    pub v6_listings: BTreeSet<Listing>,
}

/// A prefix and the index of a rule that lists (or listed) it.
pub type Listing = (PrefixKey, u32);

impl PolicyDiff {
    /// Every key where `old` and `new` differ: what edits collect as they
    /// go, found here by comparing whole policies.
    #[cfg(test)]
    pub fn between(old: &CompiledPolicy, new: &CompiledPolicy) -> Self {
        let (v4, v4_listings) = family_diff(&old.v4, &new.v4);
        let (v6, v6_listings) = family_diff(&old.v6, &new.v6);
        Self {
            v4,
            v6,
            ports: changed_ports(old, new),
            v4_listings,
            v6_listings,
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len()
            + self.v6.len()
            + self.ports.len()
            + self.v4_listings.len()
            + self.v6_listings.len()
    }
}

/// Where two tables of one family differ, collected: the trie keys, and
/// the listings of the entry tables.
fn family_diff<B: Bits>(
    old: &PrefixTable<B>,
    new: &PrefixTable<B>,
) -> (BTreeSet<PrefixKey>, BTreeSet<Listing>) {
    // In key order: the sets are built in bulk, not one insertion per key.
    (
        changed_nodes(old, new).collect(),
        changed_listings(old, new).collect(),
    )
}

/// The trie keys whose values differ between two tables of one family
/// (held by one only, or with other values), in key order: one merge pass.
fn changed_nodes<'a, B: Bits>(
    old: &'a PrefixTable<B>,
    new: &'a PrefixTable<B>,
) -> impl Iterator<Item = PrefixKey> + 'a {
    differing(old.nodes(), new.nodes()).map(|(key, _, _)| key)
}

/// The listings in one of two tables of one family and not the other, in
/// key order: one merge pass.
fn changed_listings<'a, B: Bits>(
    old: &'a PrefixTable<B>,
    new: &'a PrefixTable<B>,
) -> impl Iterator<Item = Listing> + 'a {
    differing(old.all_listings(), new.all_listings()).flat_map(|(key, old, new)| {
        let flipped = old.unwrap_or(0) ^ new.unwrap_or(0);
        rule_indexes(flipped).map(move |rule| (key, rule))
    })
}

/// The port keys whose rules differ between two policies.
#[cfg(test)]
fn changed_ports(old: &CompiledPolicy, new: &CompiledPolicy) -> BTreeSet<PortKey> {
    differing(
        old.ports.iter().map(|(key, rules)| (*key, *rules)),
        new.ports.iter().map(|(key, rules)| (*key, *rules)),
    )
    .map(|(key, _, _)| key)
    .collect()
}

/// The indexes of the rules in `rules`.
pub fn rule_indexes(rules: RuleSet) -> impl Iterator<Item = u32> {
    // A step per rule in the set, not per bit: the walk of a policy asks
    // this of every prefix, and testing 64 bits each was half its time.
    let mut left = rules;
    std::iter::from_fn(move || {
        let rule = (left != 0).then(|| left.trailing_zeros())?;
        left &= left - 1;
        Some(rule)
    })
}

/// The keys whose values differ between two maps given as sorted
/// iterators, with the old and new value (`None`: absent), in key order:
/// one merge pass, linear in their sizes.
fn differing<K: Ord + Copy, V: PartialEq + Copy>(
    old: impl Iterator<Item = (K, V)>,
    new: impl Iterator<Item = (K, V)>,
) -> impl Iterator<Item = (K, Option<V>, Option<V>)> {
    let (mut old, mut new) = (old.peekable(), new.peekable());
    std::iter::from_fn(move || {
        loop {
            match (old.peek().copied(), new.peek().copied()) {
                (None, None) => return None,
                (Some((key, value)), None) => {
                    old.next();
                    return Some((key, Some(value), None));
                }
                (None, Some((key, value))) => {
                    new.next();
                    return Some((key, None, Some(value)));
                }
                (Some((old_key, old_value)), Some((new_key, new_value))) => {
                    if old_key < new_key {
                        old.next();
                        return Some((old_key, Some(old_value), None));
                    }
                    if new_key < old_key {
                        new.next();
                        return Some((new_key, None, Some(new_value)));
                    }
                    old.next();
                    new.next();
                    if old_value != new_value {
                        return Some((old_key, Some(old_value), Some(new_value)));
                    }
                }
            }
        }
    })
}

/// The trie key of a prefix.
pub fn key_of(prefix: &IpPrefix) -> PrefixKey {
    (prefix.bits().0, prefix.len())
}

/// Runtime entries that `config` cannot take: their rule is gone, or it no
/// longer allows broad prefixes. Each is described for an error message.
pub fn misfits(config: &Config, runtime: &RuntimeEntries) -> Vec<String> {
    runtime
        .values()
        .filter_map(|entry| match config.rule(&entry.rule) {
            None => Some(format!(
                "`{}` is in rule `{}`, which the config no longer has",
                entry.prefix, entry.rule
            )),
            Some((_, rule)) if entry.prefix.is_broad() && !rule.allow_any_source => Some(format!(
                "`{}` is in rule `{}`, which no longer has `allow_any_source = true`",
                entry.prefix, entry.rule
            )),
            Some(_) => None,
        })
        .collect()
}

/// Compiles `config` plus `runtime` entries, without feeds.
pub fn compile(config: &Config, runtime: &RuntimeEntries) -> Result<CompiledPolicy, PolicyError> {
    compile_with(config, runtime, &FeedLists::new())
}

/// Compiles `config` plus `runtime` entries plus the `feeds`' lists (for
/// the rules that name them). Rule `i` (config order) is bit `i` of every
/// [`RuleSet`].
pub fn compile_with(
    config: &Config,
    runtime: &RuntimeEntries,
    feeds: &FeedLists,
) -> Result<CompiledPolicy, PolicyError> {
    let misfits = misfits(config, runtime);
    if !misfits.is_empty() {
        return Err(PolicyError::Misfits { misfits });
    }
    let mut v4: Vec<(PrefixKey, RuleSet)> = Vec::new();
    let mut v6: Vec<(PrefixKey, RuleSet)> = Vec::new();
    let mut ports: BTreeMap<PortKey, RuleSet> = BTreeMap::new();
    let runtime_sources = runtime
        .values()
        .filter_map(|entry| Some((config.rule(&entry.rule)?.0, entry.prefix)));
    let config_sources = config
        .rules
        .iter()
        .enumerate()
        .flat_map(|(index, rule)| rule.sources.iter().map(move |prefix| (index, prefix)));
    let feed_sources = config.rules.iter().enumerate().flat_map(|(index, rule)| {
        rule.feeds
            .iter()
            .filter_map(|feed| feeds.get(feed))
            .flat_map(move |list| list.prefixes.iter().map(move |prefix| (index, *prefix)))
    });
    for (index, prefix) in config_sources.chain(feed_sources).chain(runtime_sources) {
        let family = if prefix.is_v4() { &mut v4 } else { &mut v6 };
        family.push((key_of(&prefix), 1 << index));
    }
    let (v4, v6) = (listings_by_prefix(v4), listings_by_prefix(v6));
    for (index, rule) in config.rules.iter().enumerate() {
        for range in &rule.ports {
            for port in range.first..=range.last {
                *ports.entry(PortKey::new(range.protocol, port)).or_insert(0) |= 1 << index;
            }
        }
    }
    for (family, count) in [(4, v4.len()), (6, v6.len())] {
        check_capacity(family, count)?;
    }
    // Cannot fail: there are only 2 x 65535 TCP and UDP ports.
    debug_assert!(ports.len() <= MAX_PORT_ENTRIES as usize);
    let policy = CompiledPolicy {
        rule_names: config.rules.iter().map(|rule| rule.name.clone()).collect(),
        v4: PrefixTable::new(v4),
        v6: PrefixTable::new(v6),
        ports,
        enforce: config.enforce,
    };
    policy.check_entry_tables()?;
    Ok(policy)
}

/// (prefix, rules) listings sorted by prefix, each prefix once with the
/// union of its rules: a vector sorted in place, where a map would cost a
/// tree node per prefix.
fn listings_by_prefix(mut listings: Vec<(PrefixKey, RuleSet)>) -> Vec<(PrefixKey, RuleSet)> {
    listings.sort_unstable_by_key(|(key, _)| *key);
    listings.dedup_by(|(key, rules), (kept_key, kept_rules)| {
        let same = key == kept_key;
        if same {
            *kept_rules |= *rules;
        }
        same
    });
    listings
}

fn check_capacity(family: u8, count: usize) -> Result<(), PolicyError> {
    if count > MAX_PREFIXES_PER_FAMILY as usize {
        return Err(PolicyError::TooManyPrefixes {
            family,
            count,
            max: MAX_PREFIXES_PER_FAMILY,
        });
    }
    Ok(())
}

impl CompiledPolicy {
    /// Fails if a family's entry tables could not hold the listings of
    /// its [`PrefixTable::later_rules`].
    pub fn check_entry_tables(&self) -> Result<(), PolicyError> {
        for (family, count) in [(4, entry_rows(&self.v4)), (6, entry_rows(&self.v6))] {
            if count > MAX_PREFIXES_PER_FAMILY as usize {
                return Err(PolicyError::TooManyOverlaps {
                    family,
                    count,
                    max: MAX_PREFIXES_PER_FAMILY,
                });
            }
        }
        Ok(())
    }

    /// Fails if adding `prefixes` would exceed a family's capacity.
    pub fn check_room_for(&self, prefixes: &[IpPrefix]) -> Result<(), PolicyError> {
        check_capacity(4, len_with(&self.v4, prefixes))?;
        check_capacity(6, len_with(&self.v6, prefixes))
    }

    /// [`CompiledPolicy::set_listed`] for each of `changes` (rule index,
    /// prefix, listed), in order. Past [`REBUILD_ABOVE`] changes in a
    /// family, the family is rebuilt once and diffed, instead of shifting
    /// its sorted table for every prefix added or removed.
    pub fn set_listed_many(&mut self, changes: &[(usize, IpPrefix, bool)], diff: &mut PolicyDiff) {
        for v4 in [true, false] {
            let family = changes.iter().filter(|(_, prefix, _)| prefix.is_v4() == v4);
            if family.clone().count() <= REBUILD_ABOVE {
                for &(rule, prefix, listed) in family {
                    self.set_listed(rule, prefix, listed, diff);
                }
                continue;
            }
            let family: Vec<(PrefixKey, RuleSet, bool)> = family
                .map(|&(rule, prefix, listed)| (key_of(&prefix), 1 << rule, listed))
                .collect();
            if v4 {
                rebuild(&mut self.v4, &family, &mut diff.v4, &mut diff.v4_listings);
            } else {
                rebuild(&mut self.v6, &family, &mut diff.v6, &mut diff.v6_listings);
            }
        }
    }

    /// Sets whether rule `rule` (its config index) lists `prefix`, and adds
    /// the map keys that changed to `diff`. Applying the opposite call
    /// restores the policy exactly.
    pub fn set_listed(
        &mut self,
        rule: usize,
        prefix: IpPrefix,
        listed: bool,
        diff: &mut PolicyDiff,
    ) {
        let change = (key_of(&prefix), rule, listed);
        if prefix.is_v4() {
            set_listed_in(&mut self.v4, change, &mut diff.v4, &mut diff.v4_listings);
        } else {
            set_listed_in(&mut self.v6, change, &mut diff.v6, &mut diff.v6_listings);
        }
    }
}

/// The rows a family's entry tables need: a listing each by a rule of its
/// [`PrefixTable::later_rules`].
fn entry_rows<B: Bits>(table: &PrefixTable<B>) -> usize {
    let entry_rules = table.later_rules();
    if entry_rules == 0 {
        return 0;
    }
    table
        .all_listings()
        .map(|(_, rules)| (rules & entry_rules).count_ones() as usize)
        .sum()
}

/// How many prefixes `table` would hold with those of `prefixes` in its family.
fn len_with<B: Bits>(table: &PrefixTable<B>, prefixes: &[IpPrefix]) -> usize {
    let new: BTreeSet<PrefixKey> = prefixes
        .iter()
        .filter(|prefix| prefix.is_v4() == (B::WIDTH == 32))
        .map(key_of)
        .filter(|key| table.is_new(key))
        .collect();
    table.len() + new.len()
}

/// Applies `changes` to one family's table by rebuilding it, and adds what
/// changed to that family's diff.
fn rebuild<B: Bits>(
    table: &mut PrefixTable<B>,
    changes: &[(PrefixKey, RuleSet, bool)],
    changed: &mut BTreeSet<PrefixKey>,
    listings: &mut BTreeSet<Listing>,
) {
    let rebuilt = table.with_changes(changes);
    let (nodes, listed) = family_diff(table, &rebuilt);
    changed.extend(nodes);
    listings.extend(listed);
    *table = rebuilt;
}

/// [`CompiledPolicy::set_listed`] in one family's table: `(key, rule,
/// listed)`.
fn set_listed_in<B: Bits>(
    table: &mut PrefixTable<B>,
    (key, rule, listed): (PrefixKey, usize, bool),
    changed: &mut BTreeSet<PrefixKey>,
    listings: &mut BTreeSet<Listing>,
) {
    let bit = 1 << rule;
    if (table.listings(&key) & bit != 0) != listed {
        listings.insert((key, rule as u32));
    }
    table.set_listed(key, bit, listed, changed);
}

/// The compiled tables answer lookups exactly as the kernel's maps do, so
/// `explain` and the tests run the data plane's own decision on them.
/// Entry indexes are the datapath's: here every entry is uncounted.
impl Policy for CompiledPolicy {
    fn source_entry(&self, source: &Source) -> SourceValue {
        let rules = match source {
            Source::V4(octets) => self.v4.longest_match(u32::from_be_bytes(*octets) as u128),
            Source::V6(octets) => self.v6.longest_match(u128::from_be_bytes(*octets)),
        };
        SourceValue {
            rules,
            ..SourceValue::default()
        }
    }

    fn port_rules(&self, port: &PortKey) -> RuleSet {
        self.ports.get(port).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
