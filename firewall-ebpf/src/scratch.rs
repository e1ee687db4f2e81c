//! The per-CPU scratch space the parser builds flow keys in: apart from
//! `maps`, whose lookups take what the parser made, so that the parser
//! needs nothing of them.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use firewall_common::flow::FlowKey;

/// The flow key being looked up or recorded (see `parse::FlowRef::key`):
/// 40 bytes the 512-byte BPF stack cannot spare per copy. One entry per
/// CPU, used from building the key to the lookup that needs it.
#[map]
static FLOW_KEY_SCRATCH: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// The scratch entry, to build a key in; `None` if the map has no entry
/// (it always has one).
#[inline(always)]
pub fn scratch_key() -> Option<&'static mut FlowKey> {
    let slot = FLOW_KEY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value: nothing else uses it while we run, and
    // each use builds its key anew before reading it.
    Some(unsafe { &mut *slot })
}
