//! Compiles a [`Config`] into the exact contents of the data plane's maps.
//!
//! Pure: no I/O, so the whole policy logic is unit-tested. The result is
//! applied as one unit by the datapath; it is checked against the map
//! capacities here, so an oversized policy fails before any map is touched.

use std::collections::BTreeMap;

use firewall_common::{
    limits::{MAX_PORT_ENTRIES, MAX_PREFIXES_PER_FAMILY},
    maps::{PortKey, RuleSet},
};

use crate::config::{Config, prefix::network_bits};

/// One LPM trie entry: a prefix and the rules of every configured prefix
/// that contains it (an LPM lookup returns only the longest match, so the
/// longest match must carry what its parents allow too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefixEntry {
    /// Network bits; IPv4 in the low 32 bits.
    pub bits: u128,
    pub len: u8,
    pub rules: RuleSet,
}

/// Everything the data plane needs, ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Rule names in config order: bit `i` of a [`RuleSet`] is `rule_names[i]`.
    pub rule_names: Vec<String>,
    pub v4: Vec<PrefixEntry>,
    pub v6: Vec<PrefixEntry>,
    pub ports: Vec<(PortKey, RuleSet)>,
    pub enforce: bool,
}

/// A policy too large for the data plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the policy has {count} distinct IPv{family} prefixes; the data plane holds at most {max}: merge adjacent prefixes or split the allowlist across hosts"
    )]
    TooManyPrefixes { family: u8, count: usize, max: u32 },
}

/// Compiles `config`. Rule `i` (config order) is bit `i` of every [`RuleSet`].
pub fn compile(config: &Config) -> Result<CompiledPolicy, PolicyError> {
    let mut v4 = BTreeMap::new();
    let mut v6 = BTreeMap::new();
    let mut ports: BTreeMap<PortKey, RuleSet> = BTreeMap::new();
    for (index, rule) in config.rules.iter().enumerate() {
        let bit: RuleSet = 1 << index;
        for prefix in &rule.sources {
            let family = if prefix.is_v4() { &mut v4 } else { &mut v6 };
            *family.entry((prefix.bits().0, prefix.len())).or_insert(0) |= bit;
        }
        for range in &rule.ports {
            for port in range.first..=range.last {
                *ports.entry(PortKey::new(range.protocol, port)).or_insert(0) |= bit;
            }
        }
    }
    let v4 = inherit_enclosing_rules(v4, 32);
    let v6 = inherit_enclosing_rules(v6, 128);
    for (family, entries) in [(4, &v4), (6, &v6)] {
        if entries.len() > MAX_PREFIXES_PER_FAMILY as usize {
            return Err(PolicyError::TooManyPrefixes {
                family,
                count: entries.len(),
                max: MAX_PREFIXES_PER_FAMILY,
            });
        }
    }
    // Cannot fail: there are only 2 x 65535 TCP and UDP ports.
    debug_assert!(ports.len() <= MAX_PORT_ENTRIES as usize);
    Ok(CompiledPolicy {
        rule_names: config.rules.iter().map(|rule| rule.name.clone()).collect(),
        v4,
        v6,
        ports: ports.into_iter().collect(),
        enforce: config.enforce,
    })
}

/// Whether prefix `(outer, outer_len)` contains `(inner, inner_len)`.
fn contains(outer: u128, outer_len: u8, inner: u128, inner_len: u8, width: u8) -> bool {
    outer_len <= inner_len && network_bits(inner, outer_len, width) == outer
}

/// Gives every prefix the rules of all prefixes that contain it.
///
/// Sorted by (address, length), a prefix's ancestors come before it and
/// before anything outside it, so one pass with a stack of the current
/// ancestor chain visits each prefix once: O(n log n) for the sort.
fn inherit_enclosing_rules(own: BTreeMap<(u128, u8), RuleSet>, width: u8) -> Vec<PrefixEntry> {
    let mut ancestors: Vec<PrefixEntry> = Vec::new();
    let mut entries = Vec::with_capacity(own.len());
    for ((bits, len), rules) in own {
        while let Some(top) = ancestors.last() {
            if contains(top.bits, top.len, bits, len, width) {
                break;
            }
            ancestors.pop();
        }
        let inherited = ancestors.last().map_or(0, |parent| parent.rules);
        let entry = PrefixEntry {
            bits,
            len,
            rules: rules | inherited,
        };
        ancestors.push(entry);
        entries.push(entry);
    }
    entries
}

#[cfg(test)]
mod tests;
