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
    flow::{Direction, Ends, Track},
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

/// What a packet means for flow tracking, as the parser hands it on, with
/// every field set on every path. A `Track` built on each path would leave
/// the bytes of the variants not taken undefined, and LLVM may fill such
/// bytes from any register, a pointer included, which the verifier rejects
/// ("invalid size of register spill"). [`Tracked::track`] makes the
/// `Track` where it is used. The flow key itself is in the scratch map.
#[derive(Clone, Copy)]
pub struct Tracked {
    kind: u8,
    opens: bool,
    ends: Ends,
}

impl Tracked {
    const KIND_NONE: u8 = 0;
    const KIND_FLOW: u8 = 1;
    const KIND_RELATED: u8 = 2;
    const KIND_RELATED_UNREADABLE: u8 = 3;
    const KIND_INVALID_NEIGHBOR: u8 = 4;

    const fn of(kind: u8) -> Self {
        Self {
            kind,
            opens: false,
            ends: Ends::NONE,
        }
    }

    pub const NOTHING: Self = Self::of(Self::KIND_NONE);
    pub const INVALID_NEIGHBOR: Self = Self::of(Self::KIND_INVALID_NEIGHBOR);

    /// A packet of the flow whose key was stored (`Some`); `track` says how.
    #[inline(always)]
    pub fn flow(key: Option<ScratchKey>, track: Track<ScratchKey>) -> Self {
        match (key, track) {
            (Some(_), Track::Flow { opens, ends, .. }) => Self {
                kind: Self::KIND_FLOW,
                opens,
                ends,
            },
            _ => Self::NOTHING,
        }
    }

    /// An ICMP error, quoting the flow whose key was stored (`Some`).
    #[inline(always)]
    pub const fn related(quoted: Option<ScratchKey>) -> Self {
        Self::of(if quoted.is_some() {
            Self::KIND_RELATED
        } else {
            Self::KIND_RELATED_UNREADABLE
        })
    }

    #[inline(always)]
    pub const fn track(self) -> Track<ScratchKey> {
        match self.kind {
            Self::KIND_FLOW => Track::Flow {
                key: ScratchKey,
                opens: self.opens,
                ends: self.ends,
            },
            Self::KIND_RELATED => Track::Related {
                quoted: Some(ScratchKey),
            },
            Self::KIND_RELATED_UNREADABLE => Track::Related { quoted: None },
            Self::KIND_INVALID_NEIGHBOR => Track::InvalidNeighbor,
            _ => Track::None,
        }
    }
}

/// A parse result without a meaning for flow tracking.
#[inline(always)]
pub fn untracked(packet: Packet) -> Option<(Packet, Tracked)> {
    Some((packet, Tracked::NOTHING))
}

/// Parses the frame under `cursor`, crossing the interface `direction`:
/// what the allowlist decides on, and what it means for flow tracking.
#[inline(always)]
pub fn packet(mut cursor: Cursor, direction: Direction) -> (Packet, Tracked) {
    parse_ethernet(&mut cursor, direction).unwrap_or((Packet::Malformed, Tracked::NOTHING))
}

/// `None` means a header was cut short: the caller reports `Malformed`.
#[inline(always)]
fn parse_ethernet(cursor: &mut Cursor, direction: Direction) -> Option<(Packet, Tracked)> {
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
