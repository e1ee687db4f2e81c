//! Reports the programs' rare diagnostic events
//! (`firewall_common::diagnostics`) through aya-log, whose records the
//! daemon forwards into its log. Each report is a BPF function of its
//! own, called only on the event's branch: the record's encoding is
//! verified once per call site but is never on a packet's normal path.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::{error, warn};
use firewall_common::diagnostics::{COUNT, Diagnostic, reported};

/// Occurrences of each [`Diagnostic`], per CPU. Not pinned: it only
/// spaces out this program's reports.
#[map]
static DIAGNOSTICS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

/// The program names records carry, as the daemon's log shows them.
const XDP_PROGRAM: &str = "firewall";
const TC_PROGRAM: &str = "track_egress";

/// Counts one `event` on this CPU; its count if this one is reported.
#[inline(always)]
fn due(event: Diagnostic) -> Option<u64> {
    let count = DIAGNOSTICS.get_ptr_mut(event as u32)?;
    // SAFETY: per-CPU value, so nothing else writes it while we run.
    let count = unsafe {
        *count += 1;
        *count
    };
    reported(count).then_some(count)
}

/// A span of live `slot` (rows `first`, `len` of them) reaches outside it.
#[inline(never)]
pub fn span_outside_slot(slot: u32, first: u32, len: u32) {
    if let Some(count) = due(Diagnostic::SpanOutsideSlot) {
        error!(
            &(),
            target: XDP_PROGRAM,
            "the policy maps do not match ACTIVE: live slot {} has a span of {} rows from row {}, outside the slot; its lookups find nothing there (occurrence {} on this CPU)",
            slot,
            len,
            first,
            count
        );
    }
}

/// Inserting a new flow failed with `error` (a negative errno).
#[inline(never)]
pub fn flow_insert_failed(error: i32) {
    if let Some(count) = due(Diagnostic::FlowInsertFailed) {
        warn!(
            &(),
            target: TC_PROGRAM,
            "could not record a new flow (error {}): its replies are judged by the allowlist alone (occurrence {} on this CPU)",
            error,
            count
        );
    }
}

/// The blocked-traffic sample ring was full.
#[inline(never)]
pub fn sample_ring_full() {
    if let Some(count) = due(Diagnostic::SampleRingFull) {
        warn!(
            &(),
            target: XDP_PROGRAM,
            "the blocked-traffic sample ring is full, so a sample was lost: the daemon is not reading it (occurrence {} on this CPU)",
            count
        );
    }
}
