//! Header parsing: from a frame to the [`Packet`] the policy decides on.
//!
//! Each layer reads its header through the [`Cursor`], which checks the
//! frame's end on every read; anything that does not fit is `Malformed`.
//! Header structs are made of byte arrays only, so they have alignment 1
//! and fields are decoded explicitly from network byte order.

mod headers;
mod ipv4;
mod ipv6;
mod transport;

use transport::TransportHeader;

use firewall_common::{
    flow::{Direction, Ends, FlowKey, Track},
    limits::MAX_VLAN_DEPTH,
    maps::PortKey,
    verdict::Packet,
    wire::{ARP_BODY_LEN, ETH_HEADER_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Source, is_vlan},
};

use crate::cursor::Cursor;

/// The destination and source MAC addresses, ahead of the Ethernet type.
const ETH_ADDRESSES_LEN: usize = ETH_HEADER_LEN - 2;

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
    /// Offset of the IP header in the frame.
    pub header_at: usize,
    pub source: Source,
    pub hop_limit: u8,
}

/// Where a flow's key is in the frame: the IP header holding its addresses,
/// and the ports (or ICMP identifier) read already. The 40-byte key itself
/// is built only where it is looked up (a packet the allowlist would drop)
/// or recorded (the egress program): allowed traffic never pays for it, and
/// the 512-byte BPF stack never holds copies of it.
#[derive(Clone, Copy)]
pub struct FlowRef {
    pub header_at: u16,
    pub v6: bool,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    /// How the packet crossed the interface: `Egress` for the packet an
    /// ICMP error quotes (the host sent it).
    pub direction: Direction,
}

impl FlowRef {
    const NONE: Self = Self {
        header_at: 0,
        v6: false,
        protocol: 0,
        source_port: 0,
        destination_port: 0,
        direction: Direction::Ingress,
    };

    /// Builds the key in the scratch entry, reading the addresses from the
    /// frame from `data` to `end`; the key, or `None` if the frame (which
    /// the parser read already) ends first.
    #[inline(always)]
    pub fn key(&self, data: usize, end: usize) -> Option<&'static FlowKey> {
        let address = |at: usize| {
            let mut cursor = Cursor::new(data, end);
            cursor.skip(self.header_at as usize + at);
            cursor
        };
        let key = crate::scratch::scratch_key()?;
        // Set on each branch, not from `Source`s joined after it: an IPv4
        // `Source` has 12 undefined bytes, which LLVM may take from any
        // register, a pointer included, and the verifier refuses
        // arithmetic on pointers even where the result goes unused.
        let mut set = |source: Source, destination: Source| {
            key.set(
                self.direction,
                self.protocol,
                &source,
                &destination,
                self.source_port,
                self.destination_port,
            )
        };
        if self.v6 {
            set(
                Source::V6(address(headers::V6_SOURCE_AT).peek()?),
                Source::V6(address(headers::V6_DESTINATION_AT).peek()?),
            );
        } else {
            set(
                Source::V4(address(headers::V4_SOURCE_AT).peek()?),
                Source::V4(address(headers::V4_DESTINATION_AT).peek()?),
            );
        }
        Some(key)
    }
}

/// What a packet means for flow tracking, as the parser hands it on, with
/// every field set on every path. A `Track` carried out of the parser would
/// leave the bytes of the variants not taken undefined, and LLVM may fill
/// such bytes from any register, a pointer included, which the verifier
/// rejects ("invalid size of register spill"). Each path makes a `Track`
/// and turns it into this at once; [`Tracked::track`] makes the `Track`
/// again where it is used.
#[derive(Clone, Copy)]
pub struct Tracked {
    kind: u8,
    opens: bool,
    ends: Ends,
    flow: FlowRef,
}

impl Tracked {
    const KIND_NONE: u8 = 0;
    const KIND_FLOW: u8 = 1;
    const KIND_RELATED: u8 = 2;
    const KIND_RELATED_UNREADABLE: u8 = 3;
    const KIND_INVALID_NEIGHBOR: u8 = 4;

    pub const NOTHING: Self = Self {
        kind: Self::KIND_NONE,
        opens: false,
        ends: Ends::NONE,
        flow: FlowRef::NONE,
    };

    #[inline(always)]
    pub const fn track(self) -> Track<FlowRef> {
        match self.kind {
            Self::KIND_FLOW => Track::Flow {
                key: self.flow,
                opens: self.opens,
                ends: self.ends,
            },
            Self::KIND_RELATED => Track::Related {
                quoted: Some(self.flow),
            },
            Self::KIND_RELATED_UNREADABLE => Track::Related { quoted: None },
            Self::KIND_INVALID_NEIGHBOR => Track::InvalidNeighbor,
            _ => Track::None,
        }
    }
}

impl From<Track<FlowRef>> for Tracked {
    #[inline(always)]
    fn from(track: Track<FlowRef>) -> Self {
        match track {
            Track::Flow { key, opens, ends } => Self {
                kind: Self::KIND_FLOW,
                opens,
                ends,
                flow: key,
            },
            Track::Related { quoted: Some(key) } => Self {
                kind: Self::KIND_RELATED,
                flow: key,
                ..Self::NOTHING
            },
            Track::Related { quoted: None } => Self {
                kind: Self::KIND_RELATED_UNREADABLE,
                ..Self::NOTHING
            },
            Track::InvalidNeighbor => Self {
                kind: Self::KIND_INVALID_NEIGHBOR,
                ..Self::NOTHING
            },
            Track::None => Self::NOTHING,
        }
    }
}

/// What the allowlist decides on, as the parser hands it on: plain fields,
/// every one set on every path, for the reason given at [`Tracked`].
/// [`ParsedPacket::packet`] makes the `Packet` where it is used.
#[derive(Clone, Copy)]
pub struct ParsedPacket {
    kind: u8,
    v6: bool,
    /// The source address; an IPv4 one in the first 4 bytes.
    address: [u8; 16],
    port: PortKey,
}

impl ParsedPacket {
    const TRANSPORT: u8 = 0;
    const ECHO_REQUEST: u8 = 1;
    const LATER_FRAGMENT: u8 = 2;
    const UNEXPOSED: u8 = 3;
    const ARP: u8 = 4;
    const NEIGHBOR: u8 = 5;
    const ICMP_ERROR: u8 = 6;
    const MALFORMED: u8 = 7;
    const NON_IP: u8 = 8;

    #[inline(always)]
    const fn of(kind: u8) -> Self {
        Self {
            kind,
            v6: false,
            address: [0; 16],
            port: PortKey::new(0, 0),
        }
    }

    #[inline(always)]
    const fn from(kind: u8, source: Source) -> Self {
        match source {
            Source::V4([a, b, c, d]) => Self {
                address: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..Self::of(kind)
            },
            Source::V6(address) => Self {
                v6: true,
                address,
                ..Self::of(kind)
            },
        }
    }

    /// The source address (zero without one); IPv4 in the first 4 bytes.
    #[inline(always)]
    pub const fn address(&self) -> [u8; 16] {
        self.address
    }

    /// Protocol and destination port (zero without them).
    #[inline(always)]
    pub const fn port(&self) -> PortKey {
        self.port
    }

    /// 4 or 6 for a packet with a source address, else 0.
    #[inline(always)]
    pub const fn family(&self) -> u8 {
        match self.kind {
            Self::TRANSPORT | Self::ECHO_REQUEST | Self::LATER_FRAGMENT if self.v6 => 6,
            Self::TRANSPORT | Self::ECHO_REQUEST | Self::LATER_FRAGMENT => 4,
            _ => 0,
        }
    }

    #[inline(always)]
    pub const fn packet(self) -> Packet {
        let [a, b, c, d, ..] = self.address;
        let source = if self.v6 {
            Source::V6(self.address)
        } else {
            Source::V4([a, b, c, d])
        };
        match self.kind {
            Self::TRANSPORT => Packet::Transport {
                source,
                port: self.port,
            },
            Self::ECHO_REQUEST => Packet::EchoRequest { source },
            Self::LATER_FRAGMENT => Packet::LaterFragment { source },
            Self::UNEXPOSED => Packet::Unexposed,
            Self::ARP => Packet::Arp,
            Self::NEIGHBOR => Packet::Neighbor,
            Self::ICMP_ERROR => Packet::IcmpError,
            Self::NON_IP => Packet::NonIp,
            _ => Packet::Malformed,
        }
    }
}

impl From<Packet> for ParsedPacket {
    #[inline(always)]
    fn from(packet: Packet) -> Self {
        match packet {
            Packet::Transport { source, port } => Self {
                port,
                ..Self::from(Self::TRANSPORT, source)
            },
            Packet::EchoRequest { source } => Self::from(Self::ECHO_REQUEST, source),
            Packet::LaterFragment { source } => Self::from(Self::LATER_FRAGMENT, source),
            Packet::Unexposed => Self::of(Self::UNEXPOSED),
            Packet::Arp => Self::of(Self::ARP),
            Packet::Neighbor => Self::of(Self::NEIGHBOR),
            Packet::IcmpError => Self::of(Self::ICMP_ERROR),
            Packet::Malformed => Self::of(Self::MALFORMED),
            Packet::NonIp => Self::of(Self::NON_IP),
        }
    }
}

/// A parse result: the packet and its tracking meaning, as plain fields.
pub type Parsed = (ParsedPacket, Tracked);

/// A parse result without a meaning for flow tracking.
#[inline(always)]
pub fn untracked(packet: Packet) -> Option<Parsed> {
    Some((packet.into(), Tracked::NOTHING))
}

/// Parses the frame under `cursor`, crossing the interface `direction`:
/// what the allowlist decides on, and what it means for flow tracking.
#[inline(always)]
pub fn packet(mut cursor: Cursor, direction: Direction) -> Parsed {
    parse_ethernet(&mut cursor, direction)
        .unwrap_or((ParsedPacket::of(ParsedPacket::MALFORMED), Tracked::NOTHING))
}

/// An untagged TCP or UDP packet over IPv4, or over IPv6 without
/// extension headers: most of what arrives.
pub struct PlainTransport {
    ip: Ip,
    header: TransportHeader,
}

impl PlainTransport {
    /// The packet at `cursor`, the IP header of an untagged frame whose
    /// Ethernet type ([`read_ether_type`]) said IPv6 if `IPV6`, IPv4 if not;
    /// read as [`packet`] would read it. `None` for any other packet
    /// (fragments, extension headers, ICMP, anything malformed), which
    /// [`packet`] parses.
    ///
    /// The data plane decides these frames on this direct reading: the
    /// full parse joins its many paths into one value, which the decision
    /// then keeps on the stack and reloads. Each IP version is read and
    /// decided on its own for the same reason: joined, an IPv4 `Source`
    /// leaves 12 bytes undefined against the IPv6 path's, which LLVM may
    /// keep in a register never written, and the verifier refuses to read
    /// it ("!read_ok").
    #[inline(always)]
    pub fn read<const IPV6: bool>(mut cursor: Cursor) -> Option<Self> {
        let header_at = cursor.offset;
        let (source, protocol, hop_limit) = if IPV6 {
            let ip = cursor.read::<headers::Ipv6Hdr>()?;
            if !ip.well_formed() {
                return None;
            }
            (Source::V6(ip.source), ip.next_header, ip.hop_limit)
        } else {
            let ip = cursor.read::<headers::Ipv4Hdr>()?;
            if ip.later_fragment() {
                return None;
            }
            cursor.skip(ip.options_len()?);
            (Source::V4(ip.source), ip.protocol, ip.ttl)
        };
        Some(Self {
            ip: Ip {
                header_at,
                source,
                hop_limit,
            },
            header: TransportHeader::read(&cursor, protocol)?,
        })
    }

    #[inline(always)]
    pub fn packet(&self) -> Packet {
        self.header.packet(self.ip.source)
    }

    /// What it means for flow tracking, crossing the interface `direction`.
    #[inline(always)]
    pub fn track(&self, direction: Direction) -> Track<FlowRef> {
        self.header.track(&self.ip, direction)
    }
}

/// The type of the Ethernet header under `cursor`, moving past the header.
/// Its addresses are not read: 4-byte loads of them would not be aligned
/// where the verifier checks alignment (see `cursor::load`).
#[inline(always)]
pub fn read_ether_type(cursor: &mut Cursor) -> Option<u16> {
    cursor.skip(ETH_ADDRESSES_LEN);
    cursor.read::<[u8; 2]>().map(u16::from_be_bytes)
}

/// `None` means a header was cut short: the caller reports `Malformed`.
#[inline(always)]
fn parse_ethernet(cursor: &mut Cursor, direction: Direction) -> Option<Parsed> {
    let mut ether_type = read_ether_type(cursor)?;
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
