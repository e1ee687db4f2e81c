//! The program's maps and the policy lookups backed by them. Names, keys and
//! values are defined in `firewall_common::maps`; user space writes them.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use firewall_common::{
    flow::{Direction, Ends, FlowConfig, FlowKey, FlowState, flow_stats},
    limits::{
        DEFAULT_MAX_FLOWS, MAX_ENTRY_COUNTERS, MAX_PORT_ENTRIES, MAX_RULES, POLICY_SLOTS,
        SAMPLE_RING_BYTES,
    },
    maps::{
        ActivePolicy, BlockedSample, Counter, EntryCounter, EntryRef, PortKey, RuleSet,
        SampleBucket, SourceValue, UNCOUNTED_ENTRY, fold_source,
        rows::{
            self, EntryRowV4, EntryRowV6, SourceRowV4, SourceRowV6, Span, Table, last_at_or_below,
            span_index, v4_bucket_index, v6_at_or_below, v6_halves,
        },
    },
    reasons::{REASON_COUNT, Reason},
    verdict::{Flows, Policy},
    wire::Source,
};

use crate::{
    diagnostics,
    parse::{FlowRef, ParsedPacket},
};

/// Which slot is live and whether to enforce. One entry.
#[map]
static ACTIVE: Array<ActivePolicy> = Array::with_max_entries(1, 0);

/// Both slots' interval tables of sources (see `firewall_common::maps::rows`):
/// IPv4 and IPv6 source -> the rules whose sources contain it.
/// Mmapable: user space writes a slot's rows with stores.
#[map]
static SOURCES_V4: Array<SourceRowV4> = Array::with_max_entries(rows::PER_MAP, BPF_F_MMAPABLE);
#[map]
static SOURCES_V6: Array<SourceRowV6> = Array::with_max_entries(rows::PER_MAP, BPF_F_MMAPABLE);

/// Both slots' interval tables of entries, a span per rule: source -> the
/// rule's most specific entry containing it. Looked up only when the
/// admitting rule is not the first the source matched.
#[map]
static ENTRIES_V4: Array<EntryRowV4> = Array::with_max_entries(rows::PER_MAP, BPF_F_MMAPABLE);
#[map]
static ENTRIES_V6: Array<EntryRowV6> = Array::with_max_entries(rows::PER_MAP, BPF_F_MMAPABLE);

/// Both slots: per /16, the span of IPv4 source rows to search
/// (`rows::v4_bucket_index`).
#[map]
static SOURCE_BUCKETS_V4: Array<Span> =
    Array::with_max_entries(POLICY_SLOTS * rows::V4_BUCKETS, BPF_F_MMAPABLE);

/// Where each table of each slot has its rows (`rows::span_index`).
#[map]
static SPANS: Array<Span> =
    Array::with_max_entries(POLICY_SLOTS * rows::SPANS_PER_SLOT, BPF_F_MMAPABLE);

/// Per allowlisted entry: packets, bytes, first and last hit. Shared by
/// every CPU (atomic adds): its size does not grow with the CPU count.
/// Mmapable: user space resets counters with stores, not a syscall each.
#[map]
static ENTRY_STATS: Array<EntryCounter> =
    Array::with_max_entries(MAX_ENTRY_COUNTERS, BPF_F_MMAPABLE);

/// Per CPU: tokens for sampling dropped packets, refilled by user space.
#[map]
static SAMPLE_BUCKETS: PerCpuArray<SampleBucket> = PerCpuArray::with_max_entries(1, 0);

/// Samples of dropped packets for user space.
#[map]
static BLOCKED_SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLE_RING_BYTES, 0);

/// Both slots: (protocol, destination port) -> rules exposing it, at
/// `PortKey::slot_index`. One array (1 MiB per slot), not a hash map nor a
/// map per slot: the verifier inlines its lookup, so a closed port costs a
/// load. Mmapable: user space writes a slot's ports with stores.
#[map]
static PORTS: Array<RuleSet> =
    Array::with_max_entries(POLICY_SLOTS * MAX_PORT_ENTRIES, BPF_F_MMAPABLE);

/// Packets and bytes per `Reason`, per CPU.
#[map]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Packets and bytes of allowed traffic per rule, per slot, per CPU.
#[map]
pub static RULE_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES as u32, 0);

/// Flows the host started, written by the TC egress program. LRU: when
/// full, the least recently used flow makes room (user space counts those
/// evictions). User space sets the size from `max_flows` at load.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Whether flows are tracked, and their timeouts. One entry.
#[map]
static FLOW_CONFIG: Array<FlowConfig> = Array::with_max_entries(1, 0);

/// Flows created, per protocol (`flow_stats`), per CPU.
#[map]
static FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(flow_stats::COUNT, 0);

/// The flow tracking settings; all zero (off) until user space sets them.
#[inline(always)]
fn flow_config() -> FlowConfig {
    FLOW_CONFIG.get(0).copied().unwrap_or_default()
}

/// Records a packet the host sends on flow `key`: a live flow is
/// refreshed; an unknown or expired one starts anew, unless the packet is a
/// RST, which starts nothing.
#[inline(always)]
pub fn record_outgoing(key: &FlowKey, ends: Ends) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let fresh = FlowState::new(now, Direction::Egress, ends);
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value; concurrent writers only store timestamps
        // and flags, any of which is a valid state.
        let state = unsafe { &mut *state };
        if flow_config().expired(key.protocol, state, now) {
            // The same addresses and ports again (a reused port): a new flow
            // in the old entry; a RST starts nothing here either.
            if !ends.rst() {
                *state = fresh;
            }
        } else {
            state.observe(now, Direction::Egress, ends);
        }
        return;
    }
    if ends.rst() {
        return;
    }
    match FLOWS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => {
            if let Some(created) = FLOW_STATS.get_ptr_mut(flow_stats::created(key.protocol)) {
                // SAFETY: per-CPU value.
                unsafe { *created += 1 };
            }
        }
        // Another CPU recorded it first.
        Err(error) if error == -EEXIST => {}
        Err(error) => diagnostics::flow_insert_failed(error),
    }
}

/// What a map insert returns, negated, for a key already there.
const EEXIST: i32 = 17;

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

/// Credits an admitted packet of `bytes` to entry `entry`.
#[inline(always)]
pub fn count_entry(entry: u32, bytes: u64) {
    let Some(counter) = ENTRY_STATS.get_ptr_mut(entry) else {
        return;
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions. The value is
    // shared by all CPUs: the sums are atomic adds; the timestamps are
    // plain stores, and whichever CPU stores last is as right as any.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counter).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counter).bytes, bytes);
        (*counter).last_seen = now;
        if (*counter).first_seen == 0 {
            (*counter).first_seen = now;
        }
    }
}

/// Sends a sample of a dropped packet to user space if this CPU's bucket
/// has a token for it: a plain token, or a novel one for a source other
/// than the last sampled. `ifindex` is read only for a sample sent.
#[inline(always)]
pub fn sample_drop(packet: &ParsedPacket, reason: Reason, ifindex: impl FnOnce() -> u32) {
    let Some(bucket) = SAMPLE_BUCKETS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; user space only ever stores a whole new bucket.
    let bucket = unsafe { &mut *bucket };
    let source = packet.address();
    let folded = fold_source(source);
    if bucket.tokens > 0 {
        bucket.tokens -= 1;
    } else if bucket.novel_tokens > 0 && bucket.last_source != folded {
        bucket.novel_tokens -= 1;
    } else {
        return;
    }
    bucket.last_source = folded;
    // Written in place in the ring, not built on the stack and copied. A
    // full ring loses the sample, which is what a sample may do.
    let Some(mut entry) = BLOCKED_SAMPLES.reserve::<BlockedSample>(0) else {
        diagnostics::sample_ring_full();
        return;
    };
    entry.write(BlockedSample {
        source,
        ifindex: ifindex(),
        port: packet.port().port,
        protocol: packet.port().protocol,
        reason: reason as u8,
        family: packet.family(),
        pad: [0; 7],
    });
    entry.submit(0);
}

/// The policy of one slot, and the flow table, for the frame of `ctx`
/// (where flow keys are read from).
///
/// The frame's bounds are read from `ctx` where a flow key needs them, not
/// carried over from the parse: packet pointers carried across the
/// decision differ per parsed path (VLAN tags, extension headers), and the
/// verifier checked the whole decision again for each (100k instructions
/// verified instead of 160k, 30 ms less at every start).
pub struct SlotPolicy<'a> {
    slot: u32,
    ctx: &'a XdpContext,
}

impl<'a> SlotPolicy<'a> {
    #[inline(always)]
    pub fn new(slot: u32, ctx: &'a XdpContext) -> Self {
        Self { slot, ctx }
    }
}

impl Flows<FlowRef> for SlotPolicy<'_> {
    #[inline(always)]
    fn tracking(&self) -> bool {
        flow_config().enabled != 0
    }

    #[inline(always)]
    fn tracked(&self, flow: &FlowRef, seen: Option<Ends>) -> bool {
        let Some(key) = flow.key(self.ctx.data(), self.ctx.data_end()) else {
            return false;
        };
        let Some(state) = FLOWS.get_ptr_mut(key) else {
            return false;
        };
        // SAFETY: bpf_ktime_get_ns has no preconditions; the state is a map
        // value (see `record_outgoing`).
        let (now, state) = unsafe { (bpf_ktime_get_ns(), &mut *state) };
        if flow_config().expired(key.protocol, state, now) {
            return false;
        }
        if let Some(ends) = seen {
            state.observe(now, Direction::Ingress, ends);
        }
        true
    }
}

impl SlotPolicy<'_> {
    /// The rows of `table` in this slot; none if the map has no such entry.
    #[inline(always)]
    fn span(&self, table: Table) -> Span {
        self.own(
            span_index(self.slot, table)
                .and_then(|index| SPANS.get(index))
                .copied()
                .unwrap_or_default(),
        )
    }

    /// `span` if its rows are this slot's; else none, reported: another
    /// slot's rows would answer for another policy.
    #[inline(always)]
    fn own(&self, span: Span) -> Span {
        if span.within_slot(self.slot) {
            span
        } else {
            diagnostics::span_outside_slot(self.slot, span.first, span.len);
            Span::default()
        }
    }
}

impl Policy for SlotPolicy<'_> {
    #[inline(always)]
    fn source_entry(&self, source: &Source) -> SourceValue {
        let (rules, entry) = match source {
            Source::V4(address) => {
                let address = u32::from_be_bytes(*address);
                let span = self.own(
                    SOURCE_BUCKETS_V4
                        .get(v4_bucket_index(self.slot, address))
                        .copied()
                        .unwrap_or_default(),
                );
                let row = last_at_or_below(span, |row| {
                    SOURCES_V4.get(row).map(|row| row.start <= address)
                })
                .and_then(|row| SOURCES_V4.get(row));
                match row {
                    Some(row) => (row.rules, row.entry),
                    None => return SourceValue::default(),
                }
            }
            Source::V6(address) => {
                let address = v6_halves(address);
                let span = self.span(Table::Sources { v4: false });
                let row = last_at_or_below(span, |row| {
                    SOURCES_V6
                        .get(row)
                        .map(|row| v6_at_or_below(&row.start, &address))
                })
                .and_then(|row| SOURCES_V6.get(row));
                match row {
                    Some(row) => (row.rules, row.entry),
                    None => return SourceValue::default(),
                }
            }
        };
        SourceValue {
            rules,
            entry: EntryRef(entry).index(),
            pad: 0,
        }
    }

    #[inline(always)]
    fn rule_entry(&self, rule: u32, source: &Source) -> u32 {
        let entry = match source {
            Source::V4(address) => {
                let address = u32::from_be_bytes(*address);
                let span = self.span(Table::Entries { v4: true, rule });
                last_at_or_below(span, |row| {
                    ENTRIES_V4.get(row).map(|row| row.start <= address)
                })
                .and_then(|row| ENTRIES_V4.get(row))
                .map(|row| row.entry)
            }
            Source::V6(address) => {
                let address = v6_halves(address);
                let span = self.span(Table::Entries { v4: false, rule });
                last_at_or_below(span, |row| {
                    ENTRIES_V6
                        .get(row)
                        .map(|row| v6_at_or_below(&row.start, &address))
                })
                .and_then(|row| ENTRIES_V6.get(row))
                .map(|row| row.entry)
            }
        };
        entry.map_or(UNCOUNTED_ENTRY, |entry| EntryRef(entry).index())
    }

    #[inline(always)]
    fn port_rules(&self, port: &PortKey) -> RuleSet {
        let Some(index) = port.slot_index(self.slot) else {
            return 0;
        };
        PORTS.get(index).copied().unwrap_or(0)
    }
}
