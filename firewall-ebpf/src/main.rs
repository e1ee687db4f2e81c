//! The firewall-ctl XDP program.
//!
//! One entry point: parse the frame into a [`Packet`], ask the live policy
//! slot for a [`Verdict`], count it, and pass or drop. Every path ends in
//! [`finish`], so no verdict escapes the counters.
#![no_std]
#![no_main]

mod cursor;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use firewall_common::{
    maps::rule_stats_index,
    reasons::Reason,
    verdict::{Verdict, decide},
};

use crate::maps::SlotPolicy;

#[xdp]
pub fn firewall(ctx: XdpContext) -> u32 {
    let active = maps::active_policy();
    if !active.ready() {
        // Loaded but not yet filled by user space: touch nothing.
        return XDP_PASS;
    }
    let packet = parse::packet(&ctx);
    let verdict = decide(&packet, &SlotPolicy::new(active.slot()));
    finish(&ctx, active.slot(), &verdict, active.enforce())
}

#[inline(always)]
fn finish(ctx: &XdpContext, slot: u32, verdict: &Verdict, enforce: bool) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    maps::count(&maps::REASON_STATS, verdict.reason as u32, bytes);
    if verdict.reason == Reason::Allowed {
        maps::count(
            &maps::RULE_STATS,
            rule_stats_index(slot, verdict.rule),
            bytes,
        );
    }
    if verdict.reason.is_drop() && enforce {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
