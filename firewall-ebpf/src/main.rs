//! The firewall-ctl programs.
//!
//! `firewall` (XDP, ingress): parse the frame, ask the live policy slot and
//! the flow table for a [`Verdict`], count it, and pass or drop. Every path
//! ends in [`finish`], so no verdict escapes the counters.
//!
//! `track_egress` (TC, egress): record the flows the host sends, so that
//! their replies pass as return traffic. It never drops anything.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no atomic read-modify-write types, but
// its instruction set has the atomic add the per-entry counters need.
#![feature(core_intrinsics, asm_experimental_arch)]
#![allow(internal_features)]

mod cursor;
mod diagnostics;
mod maps;
mod parse;
mod scratch;

use aya_ebpf::{
    bindings::{
        TC_ACT_UNSPEC,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use firewall_common::{
    flow::{Direction, Track},
    maps::{ActivePolicy, rule_stats_index},
    reasons::Reason,
    verdict::{Verdict, decide_tracked},
    wire::{ETH_P_IP, ETH_P_IPV6},
};

use crate::{
    cursor::Cursor,
    maps::SlotPolicy,
    parse::{ParsedPacket, PlainTransport},
};

#[xdp]
pub fn firewall(ctx: XdpContext) -> u32 {
    let active = maps::active_policy();
    if !active.ready() {
        // Loaded but not yet filled by user space: touch nothing.
        return XDP_PASS;
    }
    let mut cursor = Cursor::new(ctx.data(), ctx.data_end());
    let decided = match parse::read_ether_type(&mut cursor) {
        Some(ETH_P_IP) => decide_plain_frame::<false>(&ctx, active, cursor),
        Some(ETH_P_IPV6) => decide_plain_frame::<true>(&ctx, active, cursor),
        _ => None,
    };
    decided.unwrap_or_else(|| decide_any_frame(&ctx, active))
}

/// A plain TCP or UDP packet ([`PlainTransport`]) over IPv4, or over IPv6
/// if `IPV6`, its IP header at `cursor`: most of what arrives. `None` for
/// any other frame. Its flow is read only for a packet the allowlist would
/// drop.
///
/// Inlined into the entry: a BPF-to-BPF call cost 3 ns a packet here, a
/// sixth of a closed port's whole cost. The two IP versions are decided
/// apart (see `PlainTransport::read`).
#[inline(always)]
fn decide_plain_frame<const IPV6: bool>(
    ctx: &XdpContext,
    active: ActivePolicy,
    cursor: Cursor,
) -> Option<u32> {
    let plain = PlainTransport::read::<IPV6>(cursor)?;
    let policy = SlotPolicy::new(active.slot(), ctx);
    let packet = plain.packet();
    let verdict = decide_tracked(packet, || plain.track(Direction::Ingress), &policy);
    Some(finish(ctx, active, &verdict, &packet.into()))
}

/// Every other frame: the full parse.
///
/// A BPF function of its own, called from one place, so that LLVM keeps
/// the two parses apart (inlined, it merged their common Ethernet read and
/// plain packets paid for the joined paths again), and the verifier
/// reaches it from one call site, not one per IP version. Its stack and
/// the entry's share the 512 bytes a program may use.
#[inline(never)]
fn decide_any_frame(ctx: &XdpContext, active: ActivePolicy) -> u32 {
    let (packet, tracked) =
        parse::packet(Cursor::new(ctx.data(), ctx.data_end()), Direction::Ingress);
    let policy = SlotPolicy::new(active.slot(), ctx);
    let verdict = decide_tracked(packet.packet(), || tracked.track(), &policy);
    finish(ctx, active, &verdict, &packet)
}

/// Headers the egress parser may read, pulled into the linear part of the
/// packet first: Ethernet, two VLAN tags, IPv6 with extension headers, the
/// transport header.
const EGRESS_HEADROOM: u32 = 256;

#[classifier]
pub fn track_egress(ctx: TcContext) -> i32 {
    // Best effort: a packet shorter than this is linear anyway.
    let _ = ctx.pull_data(ctx.len().min(EGRESS_HEADROOM));
    let (data, end) = (ctx.data(), ctx.data_end());
    let (_, tracked) = parse::packet(Cursor::new(data, end), Direction::Egress);
    if let Track::Flow {
        key: flow, ends, ..
    } = tracked.track()
        && let Some(key) = flow.key(data, end)
    {
        maps::record_outgoing(key, ends);
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn finish(ctx: &XdpContext, active: ActivePolicy, verdict: &Verdict, packet: &ParsedPacket) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    maps::count(&maps::REASON_STATS, verdict.reason as u32, bytes);
    if verdict.reason.is_drop() {
        // SAFETY: `ctx.ctx` is the program's `xdp_md`, valid for the call.
        maps::sample_drop(packet, verdict.reason, || unsafe {
            (*ctx.ctx).ingress_ifindex
        });
        return if active.enforce() { XDP_DROP } else { XDP_PASS };
    }
    if verdict.reason == Reason::Allowed {
        maps::count(
            &maps::RULE_STATS,
            rule_stats_index(active.slot(), verdict.rule),
            bytes,
        );
        maps::count_entry(verdict.entry, bytes);
    }
    XDP_PASS
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
