//! Map names, keys and values. The XDP program and `firewall-ctl`'s datapath
//! module must agree on every byte here; change both together.

use crate::limits::{MAX_PORT_ENTRIES, MAX_RULES};

/// Names of the maps in the eBPF object. Each per-slot map exists twice,
/// suffixed `_0` and `_1` (see [`ActivePolicy`]), except `PORTS`, which
/// holds both slots.
pub mod names {
    /// `Array<ActivePolicy>`, one entry.
    pub const ACTIVE: &str = "ACTIVE";
    /// `LpmTrie<[u8; 4], SourceValue>` per slot.
    pub const SOURCES_V4: [&str; 2] = ["SOURCES_V4_0", "SOURCES_V4_1"];
    /// `LpmTrie<[u8; 16], SourceValue>` per slot.
    pub const SOURCES_V6: [&str; 2] = ["SOURCES_V6_0", "SOURCES_V6_1"];
    /// `LpmTrie<[u8; 5], u32>` per slot: (rule, IPv4 prefix) -> entry index.
    pub const ENTRIES_V4: [&str; 2] = ["ENTRIES_V4_0", "ENTRIES_V4_1"];
    /// `LpmTrie<[u8; 17], u32>` per slot: (rule, IPv6 prefix) -> entry index.
    pub const ENTRIES_V6: [&str; 2] = ["ENTRIES_V6_0", "ENTRIES_V6_1"];
    /// `Array<EntryCounter>` indexed by entry index, shared by the slots.
    pub const ENTRY_STATS: &str = "ENTRY_STATS";
    /// `PerCpuArray<SampleBucket>`, one entry: the sampling token bucket.
    pub const SAMPLE_BUCKETS: &str = "SAMPLE_BUCKETS";
    /// `RingBuf` of `BlockedSample`s.
    pub const BLOCKED_SAMPLES: &str = "BLOCKED_SAMPLES";
    /// `Array<RuleSet>` of both slots, indexed by
    /// [`super::PortKey::slot_index`]: one map, so that the verifier inlines
    /// the lookup (a call site that may use either of two maps goes through
    /// the generic helper, which costs the closed-port path 10 ns).
    pub const PORTS: &str = "PORTS";
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
    pub const ALL: [&str; 19] = [
        ACTIVE,
        SOURCES_V4[0],
        SOURCES_V4[1],
        SOURCES_V6[0],
        SOURCES_V6[1],
        ENTRIES_V4[0],
        ENTRIES_V4[1],
        ENTRIES_V6[0],
        ENTRIES_V6[1],
        ENTRY_STATS,
        SAMPLE_BUCKETS,
        BLOCKED_SAMPLES,
        PORTS,
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
pub const LAYOUT_VERSION: u32 = 6;

/// The rules that match something, one bit per rule in config order
/// (bit 0 = first rule). Stored per source prefix and per exposed port; a
/// packet is allowed when the two sets intersect.
pub type RuleSet = u64;

/// Value of the source tries: the rules whose sources contain the prefix,
/// and the entry that the first of them (lowest bit) credits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceValue {
    pub rules: RuleSet,
    /// Index into `ENTRY_STATS` of the most specific entry of rule
    /// `rules.trailing_zeros()` that contains the prefix.
    pub entry: u32,
    /// Always zero.
    pub pad: u32,
}

/// An entry index that counts nothing user space reads: given to entries
/// when `ENTRY_STATS` is full, so the data plane never needs a check.
pub const UNCOUNTED_ENTRY: u32 = 0;

/// What one allowlisted entry (rule + prefix) admitted. One value shared by
/// every CPU: the data plane adds with atomic instructions, so memory does
/// not grow with the number of CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounter {
    pub packets: u64,
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` ns (coarse) of the first and last admitted packet;
    /// 0 for never.
    pub first_seen: u64,
    pub last_seen: u64,
    /// `CLOCK_MONOTONIC` ns when user space gave the entry this index: the
    /// counters count since then.
    pub listed_at: u64,
}

/// Key bytes of the entry tries: the rule's index, then the address, so a
/// longest-prefix match of `(rule, address)` finds the most specific entry
/// of that rule containing the address.
pub const fn entry_key_len(address_len: u8) -> u32 {
    8 + address_len as u32
}

/// A dropped packet as sampled for user space (`BLOCKED_SAMPLES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedSample {
    /// Source address; an IPv4 one in the first 4 bytes. Zero where the
    /// packet has none (not IP, malformed).
    pub source: [u8; 16],
    pub ifindex: u32,
    /// Destination port, host byte order; 0 without one.
    pub port: u16,
    pub protocol: u8,
    /// A [`crate::reasons::Reason`].
    pub reason: u8,
    /// 4, 6, or 0 without a source.
    pub family: u8,
    pub pad: [u8; 7],
}

/// The sampling token bucket of one CPU. User space refills it every
/// second; the data plane only spends tokens, so an empty bucket costs one
/// per-CPU array read per drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleBucket {
    pub tokens: u32,
    /// Spent only on a source other than the last one sampled, so a flood
    /// from one source cannot hide the others.
    pub novel_tokens: u32,
    /// [`fold_source`] of the last source sampled: one 8-byte compare per
    /// drop once the plain tokens are spent, where comparing 16 bytes cost
    /// the closed-port path 2 ns.
    pub last_source: u64,
    /// Keeps the value 24 bytes, as in layout 5: the bucket is refilled
    /// whole every second, so adopted maps need no new layout for it.
    pub reserved: u64,
}

/// An address (IPv4 in the first 4 bytes) folded to 64 bits, its halves
/// XORed: exact for IPv4; two IPv6 sources that fold alike count as one
/// for novelty, which only decides which of them a novel token samples.
#[inline(always)]
pub const fn fold_source(address: [u8; 16]) -> u64 {
    // SAFETY: 16 bytes as two words; every bit pattern is a valid u64.
    let [high, low]: [u64; 2] = unsafe { core::mem::transmute(address) };
    high ^ low
}

/// IP protocol numbers the policy can expose.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// A protocol and destination port: what `PORTS` is indexed by (see
/// [`PortKey::slot_index`]).
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

    /// Index within one slot's part of `PORTS`: every TCP port, then every
    /// UDP port. `None` for other protocols, which no rule can expose.
    #[inline(always)]
    pub const fn index(&self) -> Option<u32> {
        match self.protocol {
            protocol::TCP => Some(self.port as u32),
            protocol::UDP => Some(PORTS_PER_PROTOCOL + self.port as u32),
            _ => None,
        }
    }

    /// Index into `PORTS` for policy slot `slot`: slot 0's ports, then
    /// slot 1's.
    #[inline(always)]
    pub const fn slot_index(&self, slot: u32) -> Option<u32> {
        match self.index() {
            Some(index) => Some(slot * MAX_PORT_ENTRIES + index),
            None => None,
        }
    }
}

/// Ports of one protocol: a slot's part of `PORTS` holds TCP's, then UDP's.
pub const PORTS_PER_PROTOCOL: u32 = 65_536;

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
    // SAFETY: all are `#[repr(C)]`/`#[repr(transparent)]` with integer fields
    // only and no implicit padding (`PortKey` pads explicitly).
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::ActivePolicy {}
    unsafe impl aya::Pod for super::SourceValue {}
    unsafe impl aya::Pod for super::EntryCounter {}
    unsafe impl aya::Pod for super::BlockedSample {}
    unsafe impl aya::Pod for super::SampleBucket {}
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
    fn folded_sources_are_exact_for_ipv4_and_tell_ipv6_networks_apart() {
        let v4 = |octets: [u8; 4]| {
            let mut address = [0; 16];
            address[..4].copy_from_slice(&octets);
            fold_source(address)
        };
        assert_ne!(v4([192, 0, 2, 1]), v4([192, 0, 2, 2]));
        assert_eq!(v4([192, 0, 2, 1]), v4([192, 0, 2, 1]));
        let v6 = |text: &str| fold_source(text.parse::<core::net::Ipv6Addr>().unwrap().octets());
        assert_ne!(v6("2001:db8::1"), v6("2001:db8::2"));
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:1::1"));
        assert_ne!(v4([192, 0, 2, 1]), 0, "never the refilled bucket's 0");
    }

    #[test]
    fn port_indexes_cover_both_protocols_without_overlap() {
        assert_eq!(PortKey::new(protocol::TCP, 0).index(), Some(0));
        assert_eq!(PortKey::new(protocol::TCP, 65_535).index(), Some(65_535));
        assert_eq!(PortKey::new(protocol::UDP, 0).index(), Some(65_536));
        assert_eq!(
            PortKey::new(protocol::UDP, 65_535).index(),
            Some(MAX_PORT_ENTRIES - 1)
        );
        assert_eq!(PortKey::new(protocol::ICMP, 8).index(), None);
        assert_eq!(PortKey::new(protocol::TCP, 443).slot_index(0), Some(443));
        assert_eq!(
            PortKey::new(protocol::TCP, 443).slot_index(1),
            Some(MAX_PORT_ENTRIES + 443)
        );
        assert_eq!(
            PortKey::new(protocol::UDP, 65_535).slot_index(1),
            Some(2 * MAX_PORT_ENTRIES - 1)
        );
        assert_eq!(PortKey::new(protocol::ICMP, 8).slot_index(1), None);
    }

    #[test]
    fn rule_stats_of_the_two_slots_do_not_overlap() {
        assert_eq!(
            rule_stats_index(0, MAX_RULES as u32 - 1) + 1,
            rule_stats_index(1, 0)
        );
    }
}
