//! The two policy slots: the idle one written to equal a new policy
//! (only the families and rows that differ), then switched live with one
//! write to `ACTIVE`, and brought up to date again after a change.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::Instant,
};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use firewall_common::{
    limits::{MAX_ENTRY_COUNTERS, MAX_PORT_ENTRIES, MAX_RULES},
    maps::{
        ActivePolicy, Counter, EntryCounter, EntryRef, RuleSet, SourceValue, names,
        rows::{
            self as table_rows, EntryRowV4, EntryRowV6, SPANS_PER_SLOT, SourceRowV4, SourceRowV6,
            Span, Table, V4_BUCKETS, span_index,
        },
        rule_stats_index,
    },
};
use tracing::warn;

use super::{
    Datapath, DatapathError, RETIRE_FALLBACK_WAIT, RETIRE_GRACE, WRITE_CHUNK, batch,
    entry_counters::Holding, map_data, map_error, mapped, rows, rows::Cutter,
};
use crate::{
    config::IpPrefix,
    policy::{CompiledPolicy, PolicyDiff, PrefixKey, PrefixTable, table::Node},
};

/// Where a new policy may differ from the live one.
#[derive(Clone, Debug)]
pub enum Delta {
    /// At these keys only: what CLI edits change.
    Keys(PolicyDiff),
    /// Wherever it differs from this policy, the live one: a reload or
    /// feed update.
    From(Arc<CompiledPolicy>),
}

impl Delta {
    /// Whether `policy`, so changed, differs from the live policy.
    fn differs(&self, policy: &CompiledPolicy) -> bool {
        match self {
            Delta::Keys(keys) => keys.len() > 0,
            Delta::From(live) => **live != *policy,
        }
    }

    /// Whether `policy`, so changed, lists the same sources as the live
    /// policy in the family `v4` says, for the same rules (CLI edits never
    /// change the rules): then the family's rows are the same too.
    fn keeps_family(&self, policy: &CompiledPolicy, v4: bool) -> bool {
        match self {
            Delta::Keys(keys) if v4 => keys.v4.is_empty() && keys.v4_listings.is_empty(),
            Delta::Keys(keys) => keys.v6.is_empty() && keys.v6_listings.is_empty(),
            Delta::From(live) => {
                live.rule_names == policy.rule_names
                    && if v4 {
                        live.v4 == policy.v4
                    } else {
                        live.v6 == policy.v6
                    }
            }
        }
    }
}

/// Per address family, a flag.
#[derive(Clone, Copy, Debug)]
pub(super) struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    pub(super) const NONE: Self = Self {
        v4: false,
        v6: false,
    };

    fn both(self) -> bool {
        self.v4 && self.v6
    }
}

impl Datapath {
    /// The slot that is not live (slot 0 before anything is live).
    pub(super) fn idle_slot(&self) -> u32 {
        if self.active.ready() {
            1 - self.active.slot()
        } else {
            0
        }
    }

    /// Makes the idle slot hold exactly `policy`, which differs from the
    /// live policy where `changed` says: written whole, unless it already
    /// holds it. Nothing live is touched. Returns how many map entries
    /// (rows and ports) were written.
    pub fn write_idle(
        &mut self,
        policy: &CompiledPolicy,
        changed: Delta,
    ) -> Result<usize, DatapathError> {
        let held = self.idle_holds_live;
        if held.both() && !changed.differs(policy) {
            return Ok(0);
        }
        let slot = self.idle_slot();
        self.wait_for_retired_readers();
        // Per family, whether `policy` has the live rows: whichever slot is
        // live next, the two hold the same rows there.
        let unchanged = Families {
            v4: changed.keeps_family(policy, true),
            v6: changed.keeps_family(policy, false),
        };
        // A family the idle slot holds already is not written again: an
        // `allow` of one address writes the rows of its family only.
        let kept = Families {
            v4: held.v4 && unchanged.v4,
            v6: held.v6 && unchanged.v6,
        };
        // If the write fails halfway, the slot holds a mix.
        self.idle_holds_live = Families::NONE;
        let written = self.write_all(slot, policy, kept)?;
        if self.ledger.slot_rules[slot as usize] != policy.rule_names {
            self.give_rules(slot, &policy.rule_names)?;
        }
        self.idle_holds_live = unchanged;
        Ok(written)
    }

    /// Makes the idle slot, written by [`Datapath::write_idle`], live.
    pub fn switch(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        // Nothing goes live before the kernel has accepted the program
        // (an adopted firewall's old program reads these maps meanwhile).
        self.programs.wait()?;
        let slot = self.idle_slot();
        let was_live = self.active.ready();
        let active = ActivePolicy::new(slot, policy.enforce);
        let mut map: Array<&mut MapData, ActivePolicy> = self.map_mut(names::ACTIVE)?;
        map.set(0, active, 0).map_err(map_error(names::ACTIVE))?;
        self.active = active;
        if was_live {
            self.retiring_since = Some(Instant::now());
        } else {
            // The other slot has never been written.
            self.idle_holds_live = Families::NONE;
        }
        Ok(())
    }

    /// Whether the idle slot may differ from the live policy:
    /// [`Datapath::prepare_idle`] makes it hold the live policy, which
    /// releases the counters of entries only it still listed.
    pub fn idle_lags(&self) -> bool {
        !self.idle_holds_live.both()
    }

    /// Writes the live `policy` into the idle slot too.
    pub fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        self.write_idle(policy, Delta::Keys(PolicyDiff::default()))?;
        // Both slots list the same entries now: the fewest there will be
        // until the next change.
        Arc::make_mut(&mut self.entry_indexes).shrink();
        Ok(())
    }

    /// Waits, if the last switch was recent, until no packet can still be
    /// using the slot it retired: XDP runs inside an RCU read-side section.
    pub(super) fn wait_for_retired_readers(&mut self) {
        if let Some(since) = self.retiring_since.take()
            && since.elapsed() < RETIRE_GRACE
            && !crate::system::wait_for_rcu_readers()
        {
            std::thread::sleep(RETIRE_FALLBACK_WAIT);
        }
    }

    /// Makes `slot`'s rule counters count for `rules`: what they counted
    /// for the slot's old rules is folded into `retired` by name first.
    pub(super) fn give_rules(&mut self, slot: u32, rules: &[String]) -> Result<(), DatapathError> {
        for (name, counter) in self.slot_rule_counters(slot)? {
            let total = self.ledger.retired.entry(name).or_default();
            total.0 += counter.packets;
            total.1 += counter.bytes;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| DatapathError::Cpus(err))?;
        let mut stats: PerCpuArray<&mut MapData, Counter> = self.map_mut(names::RULE_STATS)?;
        for rule in 0..MAX_RULES as u32 {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])
                .map_err(DatapathError::Cpus)?;
            stats
                .set(rule_stats_index(slot, rule), zeros, 0)
                .map_err(map_error(names::RULE_STATS))?;
        }
        self.ledger.slot_rules[slot as usize] = rules.to_vec();
        self.ledger_changed = true;
        Ok(())
    }

    /// Makes `slot`'s maps hold exactly `policy`, given that they hold its
    /// rows of the families in `kept` already; returns how many rows and
    /// ports were written.
    pub(super) fn write_all(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        kept: Families,
    ) -> Result<usize, DatapathError> {
        let mut spans = if kept.v4 || kept.v6 {
            self.spans(slot)?
        } else {
            vec![Span::default(); SPANS_PER_SLOT as usize]
        };
        let mut written = 0;
        if !kept.v4 {
            written += self.write_family::<V4>(slot, policy, &mut spans)?;
        }
        if !kept.v6 {
            written += self.write_family::<V6>(slot, policy, &mut spans)?;
        }
        let first_span = slot * SPANS_PER_SLOT;
        mapped::store_run(
            map_data(self, names::SPANS)?.fd().as_fd(),
            first_span,
            &spans,
        )
        .map_err(batch::syscall_error(names::SPANS, "mmap"))?;
        let name = names::PORTS;
        let mut rules: Vec<RuleSet> = vec![0; MAX_PORT_ENTRIES as usize];
        for (key, exposing) in &policy.ports {
            if let Some(index) = key.index() {
                rules[index as usize] = *exposing;
            }
        }
        mapped::store_run(
            map_data(self, name)?.fd().as_fd(),
            slot * MAX_PORT_ENTRIES,
            &rules,
        )
        .map_err(batch::syscall_error(name, "mmap"))?;
        Ok(written + policy.ports.len())
    }

    /// Writes one family of `policy` into `slot`: its source rows, and the
    /// entry rows of the rules in its [`PrefixTable::later_rules`]; their
    /// spans go into `spans` (the slot's, from its first). Holds a counter
    /// for every entry the family lists and releases the slot's others.
    /// Returns how many rows were written.
    pub(super) fn write_family<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        spans: &mut [Span],
    ) -> Result<usize, DatapathError> {
        let table = F::table(policy);
        let entry_rules = table.later_rules();
        let mut given = Vec::new();
        // Per rule with entry rows: its listings and their counters, in
        // key order.
        let mut listings: Vec<Vec<(PrefixKey, EntryRef)>> = vec![Vec::new(); MAX_RULES];
        Arc::make_mut(&mut self.entry_indexes).unlist_family(slot, F::V4);
        let mut sources = RowWriter::new(owned_fd(self, F::SOURCES)?, F::SOURCES, slot);
        // IPv4 row starts, for the buckets.
        let mut starts: Vec<u32> = Vec::new();
        let mut push_source = |sources: &mut RowWriter<F::SourceRow>, start: u128, value| {
            if F::V4 {
                starts.push(start as u32);
            }
            sources.push(F::source_row(start, value))
        };
        let mut cutter = Cutter::new(F::WIDTH);
        for (key, own, node) in table.listed() {
            let first_rule = node.rules.trailing_zeros();
            let mut first_index = None;
            for rule in crate::policy::rule_indexes(own) {
                let name = &policy.rule_names[rule as usize];
                let index = self.hold_entry(name, F::prefix(key), slot, &mut given);
                if rule == first_rule {
                    first_index = Some(index);
                }
                if entry_rules & (1 << rule) != 0 {
                    listings[rule as usize].push((key, EntryRef::new(index, key.1)));
                }
            }
            let value = self.node_value::<F>(slot, policy, key, node, first_index, &mut given);
            cutter.add(
                key,
                (node.rules, EntryRef::new(value.entry, node.first_len)),
            );
            for (start, value) in cutter.drain() {
                push_source(&mut sources, start, value)?;
            }
            if given.len() >= WRITE_CHUNK {
                self.reset_entry_counters(&mut given)?;
                given.clear();
            }
        }
        for (start, value) in cutter.finish() {
            push_source(&mut sources, start, value)?;
        }
        self.reset_entry_counters(&mut given)?;
        Arc::make_mut(&mut self.entry_indexes).free_unlisted(F::V4);
        let mut written = sources.len();
        let span = sources.finish()?;
        spans[F::span(None)] = span;
        if F::V4 {
            let name = names::SOURCE_BUCKETS_V4;
            let buckets = rows::v4_buckets(&starts, span.first);
            mapped::store_run(
                map_data(self, name)?.fd().as_fd(),
                slot * V4_BUCKETS,
                &buckets,
            )
            .map_err(batch::syscall_error(name, "mmap"))?;
            written += buckets.len();
        }
        let mut entries = RowWriter::new(owned_fd(self, F::ENTRIES)?, F::ENTRIES, slot);
        for (rule, listings) in listings.into_iter().enumerate() {
            let first = entries.len();
            let mut cutter = Cutter::new(F::WIDTH);
            for (key, entry) in listings {
                cutter.add(key, entry);
                for (start, entry) in cutter.drain() {
                    entries.push(F::entry_row(start, entry))?;
                }
            }
            for (start, entry) in cutter.finish() {
                entries.push(F::entry_row(start, entry))?;
            }
            spans[F::span(Some(rule as u32))] = entries.span_since(first);
        }
        written += entries.len();
        entries.finish()?;
        Ok(written)
    }

    /// [`Datapath::source_value`], given `own_entry`, the index just held
    /// for `key`'s own listing by the node's first rule, if any: usually
    /// the entry the node credits, so no second lookup.
    pub(super) fn node_value<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        key: PrefixKey,
        node: Node,
        own_entry: Option<u32>,
        given: &mut Vec<u32>,
    ) -> SourceValue {
        match own_entry {
            Some(entry) if node.first_len == key.1 => source_value(node, entry),
            _ => self.source_value::<F>(slot, policy, key, node, given),
        }
    }

    /// The source value of `node`: its rules, and the counter of the entry the
    /// first of them credits.
    pub(super) fn source_value<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        key: PrefixKey,
        node: Node,
        given: &mut Vec<u32>,
    ) -> SourceValue {
        let rule = &policy.rule_names[node.rules.trailing_zeros() as usize];
        let first = F::table(policy).first_entry(key, node);
        source_value(node, self.hold_entry(rule, F::prefix(first), slot, given))
    }

    /// The counter index of `rule`'s `prefix` in `slot`; newly given ones
    /// are added to `given`.
    pub(super) fn hold_entry(
        &mut self,
        rule: &str,
        prefix: IpPrefix,
        slot: u32,
        given: &mut Vec<u32>,
    ) -> u32 {
        let holding = Arc::make_mut(&mut self.entry_indexes).hold(rule, prefix, slot);
        match holding {
            Holding::Given(index) => given.push(index),
            Holding::Full if !self.uncounted_warned => {
                self.uncounted_warned = true;
                warn!(rule, %prefix, capacity = MAX_ENTRY_COUNTERS - 1, "per-entry counters are full: this entry and later ones are not counted per entry (rule counters still count them)");
            }
            _ => {}
        }
        holding.index()
    }

    /// Starts the counters at `indexes` from zero, counting from now.
    pub(super) fn reset_entry_counters(
        &mut self,
        indexes: &mut [u32],
    ) -> Result<(), DatapathError> {
        if indexes.is_empty() {
            return Ok(());
        }
        let fresh = EntryCounter {
            listed_at: crate::system::monotonic_ns(),
            ..EntryCounter::default()
        };
        let map = map_data(self, names::ENTRY_STATS)?.fd().as_fd();
        mapped::store_at(map, indexes, fresh)
            .map_err(batch::syscall_error(names::ENTRY_STATS, "mmap"))
    }
}

/// One address family's tables and row encodings.
pub(super) trait Family {
    /// Bits in an address.
    const WIDTH: u8 = <Self::Bits as crate::policy::Bits>::WIDTH;
    const V4: bool = Self::WIDTH == 32;
    const SOURCES: &'static str;
    const ENTRIES: &'static str;
    type SourceRow: aya::Pod;
    type EntryRow: aya::Pod;
    /// How this family's policy table keeps network bits.
    type Bits: crate::policy::Bits;
    /// This family's table of `policy`.
    fn table(policy: &CompiledPolicy) -> &PrefixTable<Self::Bits>;
    fn prefix(key: PrefixKey) -> IpPrefix;
    /// A source row: from `start`, `value`'s rules and the entry their
    /// first credits, or none.
    fn source_row(start: u128, value: Option<(RuleSet, EntryRef)>) -> Self::SourceRow;
    fn entry_row(start: u128, entry: Option<EntryRef>) -> Self::EntryRow;
    /// A source row's start, rules and entry.
    fn source_of(row: &Self::SourceRow) -> (u128, RuleSet, EntryRef);
    fn entry_of(row: &Self::EntryRow) -> (u128, EntryRef);

    /// Index within a slot's spans of this family's source table, or of
    /// `rule`'s entry table.
    fn span(rule: Option<u32>) -> usize {
        let table = match rule {
            None => Table::Sources { v4: Self::V4 },
            Some(rule) => Table::Entries { v4: Self::V4, rule },
        };
        span_index(0, table).expect("rules are fewer than MAX_RULES") as usize
    }
}

pub(super) struct V4;
pub(super) struct V6;

impl Family for V4 {
    const SOURCES: &'static str = names::SOURCES_V4;
    const ENTRIES: &'static str = names::ENTRIES_V4;
    type SourceRow = SourceRowV4;
    type EntryRow = EntryRowV4;
    type Bits = u32;

    fn table(policy: &CompiledPolicy) -> &PrefixTable<u32> {
        &policy.v4
    }

    fn prefix(key: PrefixKey) -> IpPrefix {
        IpPrefix::V4 {
            address: (key.0 as u32).into(),
            len: key.1,
        }
    }

    fn source_row(start: u128, value: Option<(RuleSet, EntryRef)>) -> SourceRowV4 {
        let (rules, entry) = value.unwrap_or_default();
        SourceRowV4 {
            start: start as u32,
            entry: entry.0,
            rules,
        }
    }

    fn entry_row(start: u128, entry: Option<EntryRef>) -> EntryRowV4 {
        EntryRowV4 {
            start: start as u32,
            entry: entry.unwrap_or_default().0,
        }
    }

    fn source_of(row: &SourceRowV4) -> (u128, RuleSet, EntryRef) {
        (row.start.into(), row.rules, EntryRef(row.entry))
    }

    fn entry_of(row: &EntryRowV4) -> (u128, EntryRef) {
        (row.start.into(), EntryRef(row.entry))
    }
}

impl Family for V6 {
    const SOURCES: &'static str = names::SOURCES_V6;
    const ENTRIES: &'static str = names::ENTRIES_V6;
    type SourceRow = SourceRowV6;
    type EntryRow = EntryRowV6;
    type Bits = [u64; 2];

    fn table(policy: &CompiledPolicy) -> &PrefixTable<[u64; 2]> {
        &policy.v6
    }

    fn prefix(key: PrefixKey) -> IpPrefix {
        IpPrefix::V6 {
            address: key.0.into(),
            len: key.1,
        }
    }

    fn source_row(start: u128, value: Option<(RuleSet, EntryRef)>) -> SourceRowV6 {
        let (rules, entry) = value.unwrap_or_default();
        SourceRowV6 {
            start: halves(start),
            rules,
            entry: entry.0,
            pad: 0,
        }
    }

    fn entry_row(start: u128, entry: Option<EntryRef>) -> EntryRowV6 {
        EntryRowV6 {
            start: halves(start),
            entry: entry.unwrap_or_default().0,
            pad: 0,
        }
    }

    fn source_of(row: &SourceRowV6) -> (u128, RuleSet, EntryRef) {
        (whole(row.start), row.rules, EntryRef(row.entry))
    }

    fn entry_of(row: &EntryRowV6) -> (u128, EntryRef) {
        (whole(row.start), EntryRef(row.entry))
    }
}

/// An IPv6 row start's halves, high first.
fn halves(start: u128) -> [u64; 2] {
    [(start >> 64) as u64, start as u64]
}

fn whole([high, low]: [u64; 2]) -> u128 {
    (u128::from(high) << 64) | u128::from(low)
}

/// Rows of one table of one slot, stored a chunk at a time from the
/// slot's first row.
struct RowWriter<T> {
    map: OwnedFd,
    name: &'static str,
    /// Index in the map of the slot's first row.
    first: u32,
    stored: u32,
    chunk: Vec<T>,
}

impl<T: aya::Pod> RowWriter<T> {
    fn new(map: OwnedFd, name: &'static str, slot: u32) -> Self {
        Self {
            map,
            name,
            first: slot * table_rows::PER_SLOT,
            stored: 0,
            chunk: Vec::new(),
        }
    }

    /// Rows so far.
    fn len(&self) -> usize {
        self.stored as usize + self.chunk.len()
    }

    fn push(&mut self, row: T) -> Result<(), DatapathError> {
        if self.len() >= table_rows::PER_SLOT as usize {
            return Err(DatapathError::TableFull {
                name: self.name,
                max: table_rows::PER_SLOT,
            });
        }
        self.chunk.push(row);
        if self.chunk.len() >= WRITE_CHUNK {
            self.store()?;
        }
        Ok(())
    }

    /// The rows from the `from`th so far.
    fn span_since(&self, from: usize) -> Span {
        Span {
            first: self.first + from as u32,
            len: (self.len() - from) as u32,
        }
    }

    fn store(&mut self) -> Result<(), DatapathError> {
        mapped::store_run(self.map.as_fd(), self.first + self.stored, &self.chunk)
            .map_err(batch::syscall_error(self.name, "mmap"))?;
        self.stored += self.chunk.len() as u32;
        self.chunk.clear();
        Ok(())
    }

    /// Stores the last rows; returns the span of all.
    fn finish(mut self) -> Result<Span, DatapathError> {
        self.store()?;
        Ok(self.span_since(0))
    }
}

/// The source value of `node`, whose first rule credits the counter at
/// `entry`.
fn source_value(node: Node, entry: u32) -> SourceValue {
    SourceValue {
        rules: node.rules,
        entry,
        pad: 0,
    }
}

/// A descriptor of the map `name` of its own, kept while the map is written.
fn owned_fd(datapath: &Datapath, name: &'static str) -> Result<OwnedFd, DatapathError> {
    map_data(datapath, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(batch::error(name))
}
