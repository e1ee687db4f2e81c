//! The IPv4 and IPv6 headers, as their layer parses them and as an ICMP
//! error quotes them (`transport`).

use firewall_common::wire::{IPV4_FRAGMENT_OFFSET_MASK, IPV4_HEADER_LEN, IPV6_HEADER_LEN};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    tos: u8,
    pub total_len: [u8; 2],
    id: [u8; 2],
    pub flags_fragment_offset: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    checksum: [u8; 2],
    pub source: [u8; 4],
    pub destination: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_HEADER_LEN);

/// Offsets of the addresses in the header.
pub const V4_SOURCE_AT: usize = core::mem::offset_of!(Ipv4Hdr, source);
pub const V4_DESTINATION_AT: usize = core::mem::offset_of!(Ipv4Hdr, destination);

impl Ipv4Hdr {
    /// The header's length, options included, if it is version 4 and at
    /// least 20 bytes long.
    #[inline(always)]
    pub fn header_len(&self) -> Option<usize> {
        let header_len = ((self.version_ihl & 0x0f) as usize) * 4;
        (self.version_ihl >> 4 == 4 && header_len >= IPV4_HEADER_LEN).then_some(header_len)
    }

    /// The length of the header's options, if the header is well formed:
    /// [`Ipv4Hdr::header_len`], and inside the total length.
    #[inline(always)]
    pub fn options_len(&self) -> Option<usize> {
        let header_len = self.header_len()?;
        if (u16::from_be_bytes(self.total_len) as usize) < header_len {
            return None;
        }
        Some(header_len - IPV4_HEADER_LEN)
    }

    /// Whether this is a fragment other than the first, which has no
    /// transport header.
    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        u16::from_be_bytes(self.flags_fragment_offset) & IPV4_FRAGMENT_OFFSET_MASK != 0
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub source: [u8; 16],
    pub destination: [u8; 16],
}

impl Ipv6Hdr {
    #[inline(always)]
    pub fn well_formed(&self) -> bool {
        self.version_class_flow[0] >> 4 == 6
    }
}

const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HEADER_LEN);

/// Offsets of the addresses in the header.
pub const V6_SOURCE_AT: usize = core::mem::offset_of!(Ipv6Hdr, source);
pub const V6_DESTINATION_AT: usize = core::mem::offset_of!(Ipv6Hdr, destination);
