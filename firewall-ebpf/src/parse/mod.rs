//! Header parsing: from a frame to the [`Packet`] the policy decides on.
//!
//! Each layer reads its header through the [`Cursor`], which checks the
//! frame's end on every read; anything that does not fit is `Malformed`.
//! Header structs are made of byte arrays only, so they have alignment 1
//! and fields are decoded explicitly from network byte order.

mod ipv4;
mod ipv6;
mod transport;

use firewall_common::{
    flow::{Direction, Track},
    limits::MAX_VLAN_DEPTH,
    verdict::{Packet, Source},
    wire::{ARP_BODY_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, is_vlan},
};

use crate::{cursor::Cursor, maps::ScratchKey};

#[derive(Clone, Copy)]
#[repr(C)]
struct EthHdr {
    destination: [u8; 6],
    source: [u8; 6],
    ether_type: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    ether_type: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct ArpBody {
    bytes: [u8; ARP_BODY_LEN],
}

/// What the transport layer needs of the IP header.
pub struct Ip {
    pub source: Source,
    pub destination: Source,
    pub hop_limit: u8,
}

/// A parse result without a meaning for flow tracking.
#[inline(always)]
pub fn untracked(packet: Packet) -> Option<(Packet, Track<ScratchKey>)> {
    Some((packet, Track::None))
}

/// Parses the frame under `cursor`, crossing the interface `direction`:
/// what the allowlist decides on, and what it means for flow tracking.
#[inline(always)]
pub fn packet(mut cursor: Cursor, direction: Direction) -> (Packet, Track<ScratchKey>) {
    parse_ethernet(&mut cursor, direction).unwrap_or((Packet::Malformed, Track::None))
}

/// `None` means a header was cut short: the caller reports `Malformed`.
#[inline(always)]
fn parse_ethernet(
    cursor: &mut Cursor,
    direction: Direction,
) -> Option<(Packet, Track<ScratchKey>)> {
    let eth = cursor.read::<EthHdr>()?;
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    for _ in 0..MAX_VLAN_DEPTH {
        if !is_vlan(ether_type) {
            break;
        }
        let vlan = cursor.read::<VlanHdr>()?;
        ether_type = u16::from_be_bytes(vlan.ether_type);
    }
    match ether_type {
        ETH_P_IP => ipv4::parse(cursor, direction),
        ETH_P_IPV6 => ipv6::parse(cursor, direction),
        ETH_P_ARP => cursor
            .peek::<ArpBody>()
            .and_then(|_| untracked(Packet::Arp)),
        // A third tag: deeper than we parse.
        t if is_vlan(t) => untracked(Packet::Malformed),
        _ => untracked(Packet::NonIp),
    }
}
