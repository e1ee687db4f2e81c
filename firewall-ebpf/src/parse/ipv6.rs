//! IPv6 and its extension header chain.

use firewall_common::{
    limits::MAX_IPV6_EXT_HEADERS,
    verdict::{Packet, Source},
};

use super::transport;
use crate::cursor::Cursor;

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    source: [u8; 16],
    destination: [u8; 16],
}

/// The first two bytes every extension header shares.
#[derive(Clone, Copy)]
#[repr(C)]
struct ExtHdr {
    next_header: u8,
    len: u8,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct FragmentHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;

#[inline(always)]
pub fn parse(cursor: &mut Cursor) -> Option<Packet> {
    let ip = cursor.read::<Ipv6Hdr>()?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Some(Packet::Malformed);
    }
    let source = Source::V6(ip.source);
    let mut next_header = ip.next_header;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                let ext = cursor.peek::<ExtHdr>()?;
                // Length in 8-octet units, not counting the first 8 octets.
                cursor.skip((ext.len as usize + 1) * 8);
                next_header = ext.next_header;
            }
            AUTHENTICATION => {
                let ext = cursor.peek::<ExtHdr>()?;
                // Length in 4-octet units, minus 2 (RFC 4302).
                cursor.skip((ext.len as usize + 2) * 4);
                next_header = ext.next_header;
            }
            FRAGMENT => {
                let fragment = cursor.read::<FragmentHdr>()?;
                if u16::from_be_bytes(fragment.offset_flags) >> 3 != 0 {
                    return Some(Packet::LaterFragment { source });
                }
                next_header = fragment.next_header;
            }
            _ => return transport::parse(cursor, next_header, source),
        }
    }
    match next_header {
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | AUTHENTICATION | FRAGMENT => {
            Some(Packet::Malformed)
        }
        _ => transport::parse(cursor, next_header, source),
    }
}
