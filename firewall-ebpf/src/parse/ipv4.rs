//! IPv4, options included.

use firewall_common::{
    verdict::{Packet, Source},
    wire::{IPV4_FRAGMENT_OFFSET_MASK, IPV4_HEADER_LEN},
};

use super::transport;
use crate::cursor::Cursor;

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    flags_fragment_offset: [u8; 2],
    ttl: u8,
    protocol: u8,
    checksum: [u8; 2],
    source: [u8; 4],
    destination: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_HEADER_LEN);

#[inline(always)]
pub fn parse(cursor: &mut Cursor) -> Option<Packet> {
    let ip = cursor.read::<Ipv4Hdr>()?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4
        || header_len < IPV4_HEADER_LEN
        || (u16::from_be_bytes(ip.total_len) as usize) < header_len
    {
        return Some(Packet::Malformed);
    }
    let source = Source::V4(ip.source);
    if u16::from_be_bytes(ip.flags_fragment_offset) & IPV4_FRAGMENT_OFFSET_MASK != 0 {
        return Some(Packet::LaterFragment { source });
    }
    cursor.skip(header_len - IPV4_HEADER_LEN);
    transport::parse(cursor, ip.protocol, source)
}
