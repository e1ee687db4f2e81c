//! Reference programs for `cargo xtask bench`, never loaded by the daemon:
//! what the firewall is measured against.
//!
//! `minimal_lpm` is the least an XDP allowlist can do: Ethernet, the fixed
//! IPv4 or IPv6 header, the destination port, one port array lookup and
//! one LPM lookup of the source. No VLANs, options, extension headers,
//! fragments, ICMP, counters or flow tracking. `drop_all` drops every
//! packet: the floor of any XDP program. `pass_all` passes every packet:
//! what lets a veth receive redirected frames for netfilter to judge.
//!
//! `generate` is the traffic generator: run with `BPF_PROG_TEST_RUN` in
//! live-frames mode, it gives each copy of an IPv4 frame the next source of
//! `GENERATOR_SOURCES`, fixes the header checksum (netfilter drops frames
//! with a wrong one before any rule runs) and sends it out of the veth.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use firewall_common::{
    limits::{MAX_PORT_ENTRIES, MAX_PREFIXES_PER_FAMILY},
    maps::PortKey,
    wire::{ETH_HEADER_LEN, ETH_P_IP, ETH_P_IPV6, IPV4_HEADER_LEN, IPV6_HEADER_LEN},
};

/// Allowed sources, IPv4 and IPv6: any value means allowed.
#[map]
static BENCH_SOURCES_V4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(MAX_PREFIXES_PER_FAMILY, 1);
#[map]
static BENCH_SOURCES_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(MAX_PREFIXES_PER_FAMILY, 1);
/// Exposed ports at [`PortKey::index`]; non-zero means exposed.
#[map]
static BENCH_PORTS: Array<u8> = Array::with_max_entries(MAX_PORT_ENTRIES, 0);

/// The sources the generator cycles through, as IPv4 octets.
#[map]
static GENERATOR_SOURCES: Array<[u8; 4]> = Array::with_max_entries(GENERATOR_SOURCE_COUNT, 0);
/// Per CPU: how many frames this CPU generated, which picks the next source.
#[map]
static GENERATOR_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
const GENERATOR_SOURCE_COUNT: u32 = 65_536;

/// `N` bytes at `at`, if the frame has them.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, at: usize) -> Option<[u8; N]> {
    let start = ctx.data() + at;
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked just above against the frame's end.
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

/// Whether the port (at `l4 + 2`) of protocol `protocol` is exposed.
#[inline(always)]
fn port_exposed(ctx: &XdpContext, protocol: u8, l4: usize) -> Option<bool> {
    let port = u16::from_be_bytes(bytes::<2>(ctx, l4 + 2)?);
    let Some(index) = PortKey::new(protocol, port).index() else {
        return Some(false);
    };
    Some(BENCH_PORTS.get(index).is_some_and(|exposed| *exposed != 0))
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Option<u32> {
    let ethertype = u16::from_be_bytes(bytes::<2>(ctx, 12)?);
    let allowed = match ethertype {
        ETH_P_IP => {
            let header = bytes::<IPV4_HEADER_LEN>(ctx, ETH_HEADER_LEN)?;
            let l4 = ETH_HEADER_LEN + usize::from(header[0] & 0x0f) * 4;
            if !port_exposed(ctx, header[9], l4)? {
                return Some(XDP_DROP);
            }
            let source = [header[12], header[13], header[14], header[15]];
            BENCH_SOURCES_V4.get(Key::new(32, source)).is_some()
        }
        ETH_P_IPV6 => {
            let next = bytes::<1>(ctx, ETH_HEADER_LEN + 6)?[0];
            if !port_exposed(ctx, next, ETH_HEADER_LEN + IPV6_HEADER_LEN)? {
                return Some(XDP_DROP);
            }
            let source = bytes::<16>(ctx, ETH_HEADER_LEN + 8)?;
            BENCH_SOURCES_V6.get(Key::new(128, source)).is_some()
        }
        _ => return Some(XDP_PASS),
    };
    Some(if allowed { XDP_PASS } else { XDP_DROP })
}

#[xdp]
pub fn minimal_lpm(ctx: XdpContext) -> u32 {
    decide(&ctx).unwrap_or(XDP_DROP)
}

#[xdp]
pub fn drop_all(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    next_source(&ctx).map_or(XDP_ABORTED, |()| XDP_TX)
}

/// Writes the next generator source into the frame's IPv4 header and
/// recomputes the header checksum (no options: the frame is the bench's).
#[inline(always)]
fn next_source(ctx: &XdpContext) -> Option<()> {
    let next = GENERATOR_NEXT.get_ptr_mut(0)?;
    // SAFETY: a valid per-CPU slot; only this CPU's program touches it.
    let index = unsafe {
        let index = *next;
        *next = index.wrapping_add(1);
        index
    };
    let source = *GENERATOR_SOURCES.get(index % GENERATOR_SOURCE_COUNT)?;
    let start = ctx.data() + ETH_HEADER_LEN;
    if start + IPV4_HEADER_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: the header's bytes are inside the frame (checked above).
    let header = unsafe { &mut *(start as *mut [u8; IPV4_HEADER_LEN]) };
    header[12..16].copy_from_slice(&source);
    header[10] = 0;
    header[11] = 0;
    let mut sum = 0u32;
    for word in header.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    header[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Some(())
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
