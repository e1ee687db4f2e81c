//! IPv6 and its extension header chain.

use firewall_common::{
    flow::Direction,
    limits::MAX_IPV6_EXT_HEADERS,
    verdict::Packet,
    wire::{
        IPV6_AUTHENTICATION, IPV6_DESTINATION_OPTIONS, IPV6_FRAGMENT, IPV6_FRAGMENT_HEADER_LEN,
        IPV6_HOP_BY_HOP, IPV6_ROUTING, Source, ipv6_authentication_header_len,
        ipv6_options_header_len, is_ipv6_extension_header,
    },
};

use super::{Ip, Parsed, headers::Ipv6Hdr, transport, untracked};
use crate::cursor::Cursor;

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

const _: () = assert!(core::mem::size_of::<FragmentHdr>() == IPV6_FRAGMENT_HEADER_LEN);

#[inline(always)]
pub fn parse(cursor: &mut Cursor, direction: Direction) -> Option<Parsed> {
    let header_at = cursor.offset;
    let ip = cursor.read::<Ipv6Hdr>()?;
    if !ip.well_formed() {
        return untracked(Packet::Malformed);
    }
    let source = Source::V6(ip.source);
    let ip_info = Ip {
        header_at,
        source,
        hop_limit: ip.hop_limit,
    };
    let mut next_header = ip.next_header;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                let ext = cursor.peek::<ExtHdr>()?;
                cursor.skip(ipv6_options_header_len(ext.len));
                next_header = ext.next_header;
            }
            IPV6_AUTHENTICATION => {
                let ext = cursor.peek::<ExtHdr>()?;
                cursor.skip(ipv6_authentication_header_len(ext.len));
                next_header = ext.next_header;
            }
            IPV6_FRAGMENT => {
                let fragment = cursor.read::<FragmentHdr>()?;
                if u16::from_be_bytes(fragment.offset_flags) >> 3 != 0 {
                    return untracked(Packet::LaterFragment { source });
                }
                next_header = fragment.next_header;
            }
            _ => return transport::parse(cursor, next_header, &ip_info, direction),
        }
    }
    // Still an extension header after the deepest we walk: too deep.
    if is_ipv6_extension_header(next_header) {
        return untracked(Packet::Malformed);
    }
    transport::parse(cursor, next_header, &ip_info, direction)
}
