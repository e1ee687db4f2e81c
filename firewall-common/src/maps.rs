//! Map names, keys and values. The XDP program and `firewall-ctl`'s datapath
//! module must agree on every byte here; change both together.

use crate::limits::MAX_RULES;

/// Names of the maps in the eBPF object. Each per-slot map exists twice,
/// suffixed `_0` and `_1` (see [`ActivePolicy`]).
pub mod names {
    /// `Array<ActivePolicy>`, one entry.
    pub const ACTIVE: &str = "ACTIVE";
    /// `LpmTrie<[u8; 4], RuleSet>` per slot.
    pub const SOURCES_V4: [&str; 2] = ["SOURCES_V4_0", "SOURCES_V4_1"];
    /// `LpmTrie<[u8; 16], RuleSet>` per slot.
    pub const SOURCES_V6: [&str; 2] = ["SOURCES_V6_0", "SOURCES_V6_1"];
    /// `HashMap<PortKey, RuleSet>` per slot.
    pub const PORTS: [&str; 2] = ["PORTS_0", "PORTS_1"];
    /// `PerCpuArray<Counter>` indexed by [`crate::reasons::Reason`].
    pub const REASON_STATS: &str = "REASON_STATS";
    /// `PerCpuArray<Counter>` indexed by [`super::rule_stats_index`].
    pub const RULE_STATS: &str = "RULE_STATS";
    /// `LruHashMap<FlowKey, FlowState>`: flows the host started.
    pub const FLOWS: &str = "FLOWS";
    /// `Array<FlowConfig>`, one entry.
    pub const FLOW_CONFIG: &str = "FLOW_CONFIG";
    /// `PerCpuArray<u64>` indexed by [`crate::flow::flow_stats`].
    pub const FLOW_STATS: &str = "FLOW_STATS";
    /// `PerCpuArray<FlowKey>`, one entry: the data plane's scratch space.
    pub const FLOW_KEY_SCRATCH: &str = "FLOW_KEY_SCRATCH";

    /// Every map, as pinned under `bpf_dir`.
    pub const ALL: [&str; 13] = [
        ACTIVE,
        SOURCES_V4[0],
        SOURCES_V4[1],
        SOURCES_V6[0],
        SOURCES_V6[1],
        PORTS[0],
        PORTS[1],
        REASON_STATS,
        RULE_STATS,
        FLOWS,
        FLOW_CONFIG,
        FLOW_STATS,
        FLOW_KEY_SCRATCH,
    ];
}

/// Version of the maps' layout: names, types, keys, values and sizes. A
/// daemon adopts pinned maps only of its own version; bump this with any
/// change to a map, and a daemon of the new release loads fresh maps, fills
/// them, and swaps the program on the pinned links without a gap.
pub const LAYOUT_VERSION: u32 = 2;

/// The rules that match something, one bit per rule in config order
/// (bit 0 = first rule). Stored per source prefix and per exposed port; a
/// packet is allowed when the two sets intersect.
pub type RuleSet = u64;

/// IP protocol numbers the policy can expose.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Key of the per-slot `PORTS` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// Always zero, so keys hash the same on both sides.
    pub pad: u8,
    /// Destination port, host byte order.
    pub port: u16,
}

impl PortKey {
    pub const fn new(protocol: u8, port: u16) -> Self {
        Self {
            protocol,
            pad: 0,
            port,
        }
    }
}

/// Packet and byte counters, one per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::AddAssign for Counter {
    fn add_assign(&mut self, other: Counter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Which policy slot is live, and whether verdicts are enforced.
///
/// Policy maps exist twice. User space fills the idle slot completely, then
/// writes this one value, so a packet sees the whole old policy or the whole
/// new one. Every bit that changes lives in the lowest byte, so the write is
/// a single-byte store for any concurrent reader.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivePolicy(pub u32);

impl ActivePolicy {
    const SLOT_BIT: u32 = 1 << 0;
    const ENFORCE_BIT: u32 = 1 << 1;
    /// Set once user space has filled a slot; until then every packet passes
    /// uncounted, so loading the program never drops traffic by accident.
    const READY_BIT: u32 = 1 << 2;

    pub const fn new(slot: u32, enforce: bool) -> Self {
        let mut value = Self::READY_BIT | (slot & Self::SLOT_BIT);
        if enforce {
            value |= Self::ENFORCE_BIT;
        }
        Self(value)
    }

    pub const fn slot(self) -> u32 {
        self.0 & Self::SLOT_BIT
    }

    pub const fn enforce(self) -> bool {
        self.0 & Self::ENFORCE_BIT != 0
    }

    pub const fn ready(self) -> bool {
        self.0 & Self::READY_BIT != 0
    }
}

/// Index into `RULE_STATS` of `rule` (its config position) in `slot`. Each slot
/// has its own counters so a reload never credits one rule's traffic to another
/// rule that takes its index.
pub const fn rule_stats_index(slot: u32, rule: u32) -> u32 {
    slot * MAX_RULES as u32 + rule
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are `#[repr(C)]`/`#[repr(transparent)]` with integer fields
    // only and no implicit padding (`PortKey` pads explicitly).
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::ActivePolicy {}
    // SAFETY: as above; every padding byte is an explicit field.
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::FlowState {}
    unsafe impl aya::Pod for crate::flow::FlowConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_policy_round_trips_and_keeps_changes_in_the_low_byte() {
        for slot in 0..2 {
            for enforce in [false, true] {
                let active = ActivePolicy::new(slot, enforce);
                assert_eq!(active.slot(), slot);
                assert_eq!(active.enforce(), enforce);
                assert!(active.ready());
                assert_eq!(active.0 & !0xff, 0);
            }
        }
        assert!(!ActivePolicy::default().ready());
    }

    #[test]
    fn rule_stats_of_the_two_slots_do_not_overlap() {
        assert_eq!(
            rule_stats_index(0, MAX_RULES as u32 - 1) + 1,
            rule_stats_index(1, 0)
        );
    }
}
