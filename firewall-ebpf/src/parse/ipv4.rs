//! IPv4, options included.

use firewall_common::{flow::Direction, verdict::Packet, wire::Source};

use super::{Ip, Parsed, headers::Ipv4Hdr, transport, untracked};
use crate::cursor::Cursor;

#[inline(always)]
pub fn parse(cursor: &mut Cursor, direction: Direction) -> Option<Parsed> {
    let header_at = cursor.offset;
    let ip = cursor.read::<Ipv4Hdr>()?;
    let Some(options_len) = ip.options_len() else {
        return untracked(Packet::Malformed);
    };
    let source = Source::V4(ip.source);
    if ip.later_fragment() {
        return untracked(Packet::LaterFragment { source });
    }
    cursor.skip(options_len);
    let ip_info = Ip {
        header_at,
        source,
        hop_limit: ip.ttl,
    };
    transport::parse(cursor, ip.protocol, &ip_info, direction)
}
