//! What is on the wire: header sizes and protocol numbers, shared by the
//! XDP parser and the reference parser in [`crate::model::frame`], and the
//! source address as the parsers read it. It imports nothing: the flow
//! table, the maps and the decision all build on it.

pub const ETH_HEADER_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// ARP for IPv4 over Ethernet, the only kind an Ethernet host answers.
pub const ARP_BODY_LEN: usize = 28;

pub const IPV4_HEADER_LEN: usize = 20;
/// Flags and fragment offset: the offset is the low 13 bits.
pub const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
pub const IPV6_HEADER_LEN: usize = 40;

/// IPv6 extension headers the parser walks.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AUTHENTICATION: u8 = 51;
pub const IPV6_DESTINATION_OPTIONS: u8 = 60;
pub const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

/// IP protocol numbers the policy can expose.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// A source address as it appears on the wire (network byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

pub const TCP_HEADER_LEN: usize = 20;
/// TCP flags (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// The bytes of a quoted transport header an ICMP error must carry that
/// flow tracking reads: the TCP or UDP ports (RFC 792 guarantees 8).
pub const QUOTED_PORTS_LEN: usize = 4;
pub const UDP_HEADER_LEN: usize = 8;
/// Type, code, checksum and the 4 bytes every ICMP message has after them.
pub const ICMP_HEADER_LEN: usize = 8;

#[inline(always)]
pub const fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// Whether `next_header` is an extension header the parser walks.
#[inline(always)]
pub const fn is_ipv6_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        IPV6_HOP_BY_HOP
            | IPV6_ROUTING
            | IPV6_FRAGMENT
            | IPV6_AUTHENTICATION
            | IPV6_DESTINATION_OPTIONS
    )
}

/// Length of a hop-by-hop, routing or destination options header from its
/// length byte (8-octet units, not counting the first 8).
#[inline(always)]
pub const fn ipv6_options_header_len(len_byte: u8) -> usize {
    (len_byte as usize + 1) * 8
}

/// Length of an authentication header from its length byte (4-octet units,
/// minus 2; RFC 4302).
#[inline(always)]
pub const fn ipv6_authentication_header_len(len_byte: u8) -> usize {
    (len_byte as usize + 2) * 4
}
