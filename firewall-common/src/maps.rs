//! Map names, keys and values. The XDP program and `firewall-ctl`'s datapath
//! module must agree on every byte here; change both together.

use crate::{
    limits::{MAX_PORT_ENTRIES, MAX_RULES, PORTS_PER_PROTOCOL},
    wire::protocol,
};

/// Names of the maps in the eBPF object. A map of the policy holds both
/// slots (see [`ActivePolicy`]), slot 0's part first: one map, so that the
/// verifier inlines its lookups (a call site that may use either of two
/// maps goes through the generic helper).
pub mod names {
    /// `Array<ActivePolicy>`, one entry.
    pub const ACTIVE: &str = "ACTIVE";
    /// `Array<SourceRowV4>` of both slots: IPv4 source -> rules whose
    /// sources contain it (see [`super::rows`]).
    pub const SOURCES_V4: &str = "SOURCES_V4";
    /// `Array<SourceRowV6>` of both slots.
    pub const SOURCES_V6: &str = "SOURCES_V6";
    /// `Array<EntryRowV4>` of both slots: per rule, IPv4 source -> the
    /// rule's most specific entry containing it.
    pub const ENTRIES_V4: &str = "ENTRIES_V4";
    /// `Array<EntryRowV6>` of both slots.
    pub const ENTRIES_V6: &str = "ENTRIES_V6";
    /// `Array<Span>` of both slots: where each table's rows are (see
    /// [`super::rows::span_index`]).
    pub const SPANS: &str = "SPANS";
    /// `Array<Span>` of both slots: per /16 of IPv4, the source rows its
    /// addresses can fall in (see [`super::rows::v4_bucket_index`]).
    pub const SOURCE_BUCKETS_V4: &str = "SOURCE_BUCKETS_V4";
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
    pub const ALL: [&str; 17] = [
        ACTIVE,
        SOURCES_V4,
        SOURCES_V6,
        ENTRIES_V4,
        ENTRIES_V6,
        SPANS,
        SOURCE_BUCKETS_V4,
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
pub const LAYOUT_VERSION: u32 = 7;

/// The rules that match something, one bit per rule in config order
/// (bit 0 = first rule). Stored per source prefix and per exposed port; a
/// packet is allowed when the two sets intersect.
pub type RuleSet = u64;

/// What a source lookup finds: the rules whose sources contain the
/// address, and the entry that the first of them (lowest bit) credits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceValue {
    pub rules: RuleSet,
    /// Index into `ENTRY_STATS` of the most specific entry of rule
    /// `rules.trailing_zeros()` that contains the address.
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

/// The policy's prefixes as interval tables: a table's rows ascend by
/// `start`, and the row with the last start at or below an address says
/// what the longest listed prefix containing the address gives there, up to
/// the next row's start (a row with no rules: none). User space cuts nested
/// prefixes into these rows (at most two per prefix) and the data plane
/// finds a row with a binary search over an array, where the kernel's LPM
/// trie chased a pointer per prefix bit and took a syscall and an
/// allocation for every prefix written.
///
/// Row starts are host-order integers: an IPv4 address as one `u32`, an
/// IPv6 one as its high and low `u64` halves.
pub mod rows {
    use crate::limits::{MAX_PREFIXES_PER_FAMILY, MAX_RULES, POLICY_SLOTS};

    /// Rows per table and slot: two per prefix. Slot `s` has rows
    /// `s * PER_SLOT..(s + 1) * PER_SLOT` of each table.
    pub const PER_SLOT: u32 = 2 * MAX_PREFIXES_PER_FAMILY;
    /// Rows of each table map: both slots.
    pub const PER_MAP: u32 = POLICY_SLOTS * PER_SLOT;
    /// Halvings [`last_at_or_below`] takes at most: enough for a slot.
    pub const SEARCH_STEPS: u32 = 20;
    const _: () = assert!(1 << SEARCH_STEPS >= PER_SLOT);

    /// `SPANS` entries per slot: the source table of each family, then the
    /// entry table of each rule, IPv4's rules first.
    pub const SPANS_PER_SLOT: u32 = 2 + 2 * MAX_RULES as u32;

    /// Where the rows of one table of one slot are in their map.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Span {
        /// Index of the first row in the map.
        pub first: u32,
        pub len: u32,
    }

    impl Span {
        /// Whether every row of the span is one of `slot`'s (an empty span
        /// has none).
        #[inline(always)]
        pub const fn within_slot(self, slot: u32) -> bool {
            let slot_first = slot * PER_SLOT;
            self.len == 0
                || (self.first >= slot_first
                    && self.len <= PER_SLOT
                    && self.first - slot_first <= PER_SLOT - self.len)
        }
    }

    /// The table a [`Span`] describes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Table {
        Sources { v4: bool },
        Entries { v4: bool, rule: u32 },
    }

    /// Index into `SPANS` of `table` in `slot`; `None` for a rule past
    /// the last.
    #[inline(always)]
    pub const fn span_index(slot: u32, table: Table) -> Option<u32> {
        let within = match table {
            Table::Sources { v4: true } => 0,
            Table::Sources { v4: false } => 1,
            Table::Entries { v4, rule } => {
                if rule >= MAX_RULES as u32 {
                    return None;
                }
                2 + rule + if v4 { 0 } else { MAX_RULES as u32 }
            }
        };
        Some(slot * SPANS_PER_SLOT + within)
    }

    /// Bits of an IPv4 address that pick its bucket: its /16.
    pub const V4_BUCKET_BITS: u32 = 16;
    /// Buckets per slot.
    pub const V4_BUCKETS: u32 = 1 << V4_BUCKET_BITS;

    /// Index into `SOURCE_BUCKETS_V4` of the bucket of IPv4 `address` in
    /// `slot`: the span of the source rows from the one in force at the
    /// bucket's first address to the last starting inside it. A search
    /// there takes a step or two for a few prefixes per /16, where the
    /// whole table takes twenty.
    #[inline(always)]
    pub const fn v4_bucket_index(slot: u32, address: u32) -> u32 {
        slot * V4_BUCKETS + (address >> (32 - V4_BUCKET_BITS))
    }

    /// The last row of `span` whose start is at or below the address,
    /// given `at_or_below(row)` for rows of the span; `None` if there is
    /// none, or a row cannot be read.
    #[inline(always)]
    pub fn last_at_or_below(span: Span, at_or_below: impl Fn(u32) -> Option<bool>) -> Option<u32> {
        if span.len == 0 {
            return None;
        }
        // The row sought, if any, is among the `len` rows from `base`.
        let (mut base, mut len) = (span.first, span.len);
        for _ in 0..SEARCH_STEPS {
            if len <= 1 {
                break;
            }
            let half = len / 2;
            if at_or_below(base + half)? {
                base += half;
            }
            len -= half;
        }
        if at_or_below(base)? { Some(base) } else { None }
    }

    /// A source table row of IPv4 addresses.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SourceRowV4 {
        pub start: u32,
        /// An [`super::EntryRef`].
        pub entry: u32,
        pub rules: super::RuleSet,
    }

    /// A source table row of IPv6 addresses.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SourceRowV6 {
        /// High, then low half.
        pub start: [u64; 2],
        pub rules: super::RuleSet,
        /// An [`super::EntryRef`].
        pub entry: u32,
        pub pad: u32,
    }

    /// An entry table row of IPv4 addresses; its entry is an
    /// [`super::EntryRef`], [`super::UNCOUNTED_ENTRY`] for none.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EntryRowV4 {
        pub start: u32,
        pub entry: u32,
    }

    /// An entry table row of IPv6 addresses.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EntryRowV6 {
        pub start: [u64; 2],
        pub entry: u32,
        pub pad: u32,
    }

    /// Host-order halves of an IPv6 address, as row starts hold them.
    #[inline(always)]
    pub fn v6_halves(address: &[u8; 16]) -> [u64; 2] {
        let mut high = [0; 8];
        let mut low = [0; 8];
        high.copy_from_slice(&address[..8]);
        low.copy_from_slice(&address[8..]);
        [u64::from_be_bytes(high), u64::from_be_bytes(low)]
    }

    /// Whether IPv6 start `start` is at or below `address`.
    #[inline(always)]
    pub fn v6_at_or_below(start: &[u64; 2], address: &[u64; 2]) -> bool {
        start[0] < address[0] || (start[0] == address[0] && start[1] <= address[1])
    }
}

/// A row's entry: the counter index in the low 24 bits, the entry's prefix
/// length in the high 8. The length lets a restarted daemon tell which
/// prefix a row's counter belongs to (the row's start cut to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryRef(pub u32);

impl EntryRef {
    const INDEX_BITS: u32 = 24;
    const INDEX_MASK: u32 = (1 << Self::INDEX_BITS) - 1;

    pub const fn new(index: u32, prefix_len: u8) -> Self {
        Self((index & Self::INDEX_MASK) | (prefix_len as u32) << Self::INDEX_BITS)
    }

    #[inline(always)]
    pub const fn index(self) -> u32 {
        self.0 & Self::INDEX_MASK
    }

    pub const fn prefix_len(self) -> u8 {
        (self.0 >> Self::INDEX_BITS) as u8
    }
}

const _: () = assert!(crate::limits::MAX_ENTRY_COUNTERS <= EntryRef::INDEX_MASK + 1);

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
    unsafe impl aya::Pod for super::rows::Span {}
    unsafe impl aya::Pod for super::rows::SourceRowV4 {}
    unsafe impl aya::Pod for super::rows::SourceRowV6 {}
    unsafe impl aya::Pod for super::rows::EntryRowV4 {}
    unsafe impl aya::Pod for super::rows::EntryRowV6 {}
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
    fn a_span_is_within_a_slot_only_if_every_row_is_the_slots() {
        use rows::{PER_SLOT, Span};
        let span = |first, len| Span { first, len };
        assert!(span(0, PER_SLOT).within_slot(0));
        assert!(span(PER_SLOT, PER_SLOT).within_slot(1));
        assert!(span(PER_SLOT - 1, 1).within_slot(0));
        assert!(!span(PER_SLOT - 1, 2).within_slot(0), "one row in slot 1");
        assert!(!span(PER_SLOT, 1).within_slot(0));
        assert!(!span(PER_SLOT - 1, 1).within_slot(1));
        assert!(!span(PER_SLOT, u32::MAX).within_slot(1), "no overflow");
        assert!(!span(u32::MAX, 2).within_slot(1));
        assert!(span(u32::MAX, 0).within_slot(0), "empty: no rows at all");
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
    fn the_search_finds_the_last_row_at_or_below_any_key() {
        // Every length up to a few hundred rows, starts with gaps and
        // neighbours, keys on, between, below and above the starts.
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..300u32 {
            let mut starts = [0u32; 300];
            let mut at = 5;
            for start in starts.iter_mut().take(len as usize) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                at += 1 + (seed >> 29);
                *start = at;
            }
            let starts = &starts[..len as usize];
            for offset in [0, 7, 1000] {
                let span = rows::Span { first: offset, len };
                let at_or_below = |key: u32| {
                    move |row: u32| starts.get((row - offset) as usize).map(|s| *s <= key)
                };
                for key in 0..at + 3 {
                    let expected = starts
                        .iter()
                        .rposition(|s| *s <= key)
                        .map(|i| i as u32 + offset);
                    assert_eq!(
                        rows::last_at_or_below(span, at_or_below(key)),
                        expected,
                        "len {len}, key {key}"
                    );
                }
            }
        }
        // A row that cannot be read ends the search with nothing found.
        let span = rows::Span { first: 0, len: 8 };
        assert_eq!(
            rows::last_at_or_below(span, |row| (row < 4).then_some(true)),
            None
        );
    }

    #[test]
    fn the_search_needs_no_more_steps_than_it_is_given_for_a_full_slot() {
        let span = rows::Span {
            first: 0,
            len: rows::PER_SLOT,
        };
        let last = rows::PER_SLOT - 1;
        assert_eq!(rows::last_at_or_below(span, |_| Some(true)), Some(last));
        assert_eq!(rows::last_at_or_below(span, |row| Some(row == 0)), Some(0));
    }

    #[test]
    fn ipv6_starts_compare_as_addresses() {
        let halves =
            |text: &str| rows::v6_halves(&text.parse::<core::net::Ipv6Addr>().unwrap().octets());
        let (low, high) = (halves("2001:db8::ffff"), halves("2001:db8:0:1::"));
        assert!(rows::v6_at_or_below(&low, &high));
        assert!(!rows::v6_at_or_below(&high, &low));
        assert!(rows::v6_at_or_below(&low, &low));
        assert_eq!(halves("::1"), [0, 1]);
    }

    #[test]
    fn entry_refs_carry_index_and_prefix_length() {
        let entry = EntryRef::new(crate::limits::MAX_ENTRY_COUNTERS - 1, 128);
        assert_eq!(entry.index(), crate::limits::MAX_ENTRY_COUNTERS - 1);
        assert_eq!(entry.prefix_len(), 128);
        assert_eq!(EntryRef::new(UNCOUNTED_ENTRY, 0).0, UNCOUNTED_ENTRY);
    }

    #[test]
    fn spans_of_the_two_slots_and_the_tables_do_not_overlap() {
        use rows::{SPANS_PER_SLOT, Table, span_index};
        let last_rule = MAX_RULES as u32 - 1;
        assert_eq!(span_index(0, Table::Sources { v4: true }), Some(0));
        assert_eq!(span_index(0, Table::Entries { v4: true, rule: 0 }), Some(2));
        assert_eq!(
            span_index(
                0,
                Table::Entries {
                    v4: true,
                    rule: last_rule
                }
            )
            .map(|i| i + 1),
            span_index(0, Table::Entries { v4: false, rule: 0 })
        );
        assert_eq!(
            span_index(
                0,
                Table::Entries {
                    v4: false,
                    rule: last_rule
                }
            ),
            Some(SPANS_PER_SLOT - 1)
        );
        assert_eq!(
            span_index(1, Table::Sources { v4: true }),
            Some(SPANS_PER_SLOT)
        );
        assert_eq!(
            span_index(
                1,
                Table::Entries {
                    v4: false,
                    rule: MAX_RULES as u32
                }
            ),
            None
        );
    }

    #[test]
    fn rule_stats_of_the_two_slots_do_not_overlap() {
        assert_eq!(
            rule_stats_index(0, MAX_RULES as u32 - 1) + 1,
            rule_stats_index(1, 0)
        );
    }
}
