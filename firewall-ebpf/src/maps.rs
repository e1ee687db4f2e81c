//! The program's maps and the policy lookups backed by them. Names, keys and
//! values are defined in `firewall_common::maps`; user space writes them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use firewall_common::{
    limits::{MAX_PORT_ENTRIES, MAX_PREFIXES_PER_FAMILY, MAX_RULES, POLICY_SLOTS},
    maps::{ActivePolicy, Counter, PortKey, RuleSet},
    reasons::REASON_COUNT,
    verdict::{Policy, Source},
};

/// Which slot is live and whether to enforce. One entry.
#[map]
static ACTIVE: Array<ActivePolicy> = Array::with_max_entries(1, 0);

/// Slot 0 and 1: IPv4 source prefix -> rules whose sources contain it.
#[map]
static SOURCES_V4_0: LpmTrie<[u8; 4], RuleSet> =
    LpmTrie::with_max_entries(MAX_PREFIXES_PER_FAMILY, 0);
#[map]
static SOURCES_V4_1: LpmTrie<[u8; 4], RuleSet> =
    LpmTrie::with_max_entries(MAX_PREFIXES_PER_FAMILY, 0);

/// Slot 0 and 1: IPv6 source prefix -> rules whose sources contain it.
#[map]
static SOURCES_V6_0: LpmTrie<[u8; 16], RuleSet> =
    LpmTrie::with_max_entries(MAX_PREFIXES_PER_FAMILY, 0);
#[map]
static SOURCES_V6_1: LpmTrie<[u8; 16], RuleSet> =
    LpmTrie::with_max_entries(MAX_PREFIXES_PER_FAMILY, 0);

/// Slot 0 and 1: (protocol, destination port) -> rules exposing it. Not
/// preallocated: a policy usually exposes a handful of ports.
#[map]
static PORTS_0: HashMap<PortKey, RuleSet> =
    HashMap::with_max_entries(MAX_PORT_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
static PORTS_1: HashMap<PortKey, RuleSet> =
    HashMap::with_max_entries(MAX_PORT_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Packets and bytes per `Reason`, per CPU.
#[map]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Packets and bytes of allowed traffic per rule, per slot, per CPU.
#[map]
pub static RULE_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES as u32, 0);

/// The live slot and mode; not ready (all zero) until user space sets it.
#[inline(always)]
pub fn active_policy() -> ActivePolicy {
    ACTIVE.get(0).copied().unwrap_or_default()
}

#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, so nothing else writes it while we run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

/// The policy of one slot.
pub struct SlotPolicy {
    slot: u32,
}

impl SlotPolicy {
    #[inline(always)]
    pub fn new(slot: u32) -> Self {
        Self { slot }
    }
}

impl Policy for SlotPolicy {
    #[inline(always)]
    fn source_rules(&self, source: &Source) -> RuleSet {
        let found = match source {
            Source::V4(address) => {
                let key = Key::new(32, *address);
                if self.slot == 0 {
                    SOURCES_V4_0.get(&key)
                } else {
                    SOURCES_V4_1.get(&key)
                }
            }
            Source::V6(address) => {
                let key = Key::new(128, *address);
                if self.slot == 0 {
                    SOURCES_V6_0.get(&key)
                } else {
                    SOURCES_V6_1.get(&key)
                }
            }
        };
        found.copied().unwrap_or(0)
    }

    #[inline(always)]
    fn port_rules(&self, port: &PortKey) -> RuleSet {
        let map = if self.slot == 0 { &PORTS_0 } else { &PORTS_1 };
        // SAFETY: the value is copied out at once; user space may replace it
        // later, which only matters to a reference we do not keep.
        unsafe { map.get(port) }.copied().unwrap_or(0)
    }
}
