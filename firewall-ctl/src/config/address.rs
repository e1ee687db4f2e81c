//! Address text, read first in the spellings lists use and only then by
//! `core::net`'s general parser: that one tries IPv4 before IPv6, and for
//! IPv6 an embedded IPv4 address at every group. The readers here accept a
//! subset of what `core::net` accepts, with the same value (a unit test
//! compares them on random text), so what is accepted, and how, is
//! `core::net`'s answer either way.
//!
//! The speed argument still holds, narrowly. Measured on the bench's
//! 250k + 250k config (release build, 2-core VM, median of 15 alternating
//! runs of `firewall-ctl check`): 91.5 ms with these readers, 95.0 ms with
//! `ipnet::IpNet`'s parse (which reads the address with `core::net`) in
//! [`super::prefix`]'s place, so about 7 ns a prefix. When this was
//! written, before the pre-scan and the tables got faster, the addresses
//! were a third of the parse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address `text` spells, or `None` if it spells none.
pub fn parse(text: &str) -> Option<IpAddr> {
    // Only IPv6 text has a colon.
    if text.as_bytes().contains(&b':') {
        ipv6(text).or_else(|| text.parse().ok()).map(IpAddr::V6)
    } else {
        ipv4(text).or_else(|| text.parse().ok()).map(IpAddr::V4)
    }
}

/// Four decimal octets, each `0` or without leading zeros.
fn ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut index = 0;
    let mut value: u16 = 0;
    let mut digits = 0;
    for &byte in text.as_bytes() {
        if byte == b'.' {
            if digits == 0 || index == 3 {
                return None;
            }
            octets[index] = value as u8;
            (index, value, digits) = (index + 1, 0, 0);
        } else if byte.is_ascii_digit() && !(digits == 1 && value == 0) {
            value = value * 10 + u16::from(byte - b'0');
            digits += 1;
            if value > 255 {
                return None;
            }
        } else {
            return None;
        }
    }
    if digits == 0 || index != 3 {
        return None;
    }
    octets[3] = value as u8;
    Some(Ipv4Addr::from(octets))
}

/// Eight groups of one to four hex digits, or fewer around one `::`; no
/// embedded IPv4 address.
fn ipv6(text: &str) -> Option<Ipv6Addr> {
    let bytes = text.as_bytes();
    let mut segments = [0u16; 8];
    let mut count = 0;
    // Where `::` stands for one or more groups of zeros.
    let mut gap = None;
    let mut at = 0;
    if bytes.starts_with(b"::") {
        gap = Some(0);
        at = 2;
    }
    while at < bytes.len() {
        let start = at;
        let mut value: u16 = 0;
        while let Some(digit) = bytes
            .get(at)
            .and_then(|&byte| char::from(byte).to_digit(16))
        {
            if at - start == 4 {
                return None;
            }
            value = value << 4 | digit as u16;
            at += 1;
        }
        if at == start {
            return None;
        }
        *segments.get_mut(count)? = value;
        count += 1;
        match &bytes[at..] {
            [] => break,
            [b':', b':', rest @ ..] if gap.is_none() => {
                gap = Some(count);
                at += 2;
                if rest.is_empty() {
                    break;
                }
            }
            [b':', _, ..] => at += 1,
            _ => return None,
        }
    }
    match gap {
        None if count == 8 => {}
        Some(gap) if count < 8 => {
            let tail = count - gap;
            segments.copy_within(gap..count, 8 - tail);
            segments[gap..8 - tail].fill(0);
        }
        _ => return None,
    }
    Some(Ipv6Addr::from(segments))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random text over the characters addresses are made of, shaped like
    /// addresses often enough that both answers occur.
    fn random_text(seed: &mut u64, alphabet: &[u8], max_len: usize) -> String {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let len = (next() as usize) % (max_len + 1);
        (0..len)
            .map(|_| char::from(alphabet[(next() as usize) % alphabet.len()]))
            .collect()
    }

    /// Runs `reader` on random text over `alphabet`: whatever it accepts,
    /// `core::net` accepts with the same value, and it accepts some.
    fn accepts_only_what_core_accepts<A>(
        reader: fn(&str) -> Option<A>,
        alphabet: &[u8],
        max_len: usize,
        mut seed: u64,
    ) where
        A: std::str::FromStr + PartialEq + std::fmt::Debug,
        A::Err: PartialEq + std::fmt::Debug,
    {
        let mut accepted = 0;
        for _ in 0..400_000 {
            let text = random_text(&mut seed, alphabet, max_len);
            if let Some(address) = reader(&text) {
                assert_eq!(text.parse::<A>(), Ok(address), "{text:?}");
                accepted += 1;
            }
        }
        assert!(accepted > 100, "only {accepted} accepted");
    }

    #[test]
    fn ipv4_accepts_only_what_core_accepts_with_the_same_value() {
        accepts_only_what_core_accepts(ipv4, b"0125.", 15, 0x9e37_79b9_7f4a_7c15);
    }

    #[test]
    fn ipv6_accepts_only_what_core_accepts_with_the_same_value() {
        accepts_only_what_core_accepts(ipv6, b"0aF:::.", 24, 0x2545_f491_4f6c_dd1d);
    }

    #[test]
    fn every_address_as_rust_writes_it_is_read_here() {
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Runs of zero groups too, so `::` lands everywhere.
            let mask = u128::from(seed.rotate_left(17)) * 0x0001_0001_0001_0001;
            let v6 = Ipv6Addr::from((u128::from(seed) << 64 | u128::from(!seed)) & mask);
            assert_eq!(ipv6(&v6.to_string()), Some(v6), "{v6}");
            let v4 = Ipv4Addr::from(seed as u32);
            assert_eq!(ipv4(&v4.to_string()), Some(v4), "{v4}");
        }
    }

    #[test]
    fn the_usual_spellings_are_read_here() {
        for text in ["203.0.113.0", "0.0.0.0", "255.255.255.255", "198.51.100.7"] {
            assert_eq!(ipv4(text), text.parse().ok(), "{text}");
        }
        for text in [
            "2001:db8::",
            "::",
            "::1",
            "2001:db8:0:a::",
            "2001:DB8:1:2:3:4:5:6",
            "fe80::1:2",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
        ] {
            assert_eq!(ipv6(text), text.parse().ok(), "{text}");
        }
        // Left to core::net: its answer stands.
        for text in ["01.2.3.4", "1.2.3", "256.0.0.0", "1.2.3.4 "] {
            assert_eq!(ipv4(text), None, "{text}");
        }
        for text in [
            "::ffff:192.0.2.1",
            "1::2::3",
            "1:2:3:4:5:6:7:8:9",
            "12345::",
            ":1::",
            "1:2:3:4:5:6:7:8::",
        ] {
            assert_eq!(ipv6(text), None, "{text}");
        }
        assert_eq!(parse("::ffff:192.0.2.1"), "::ffff:192.0.2.1".parse().ok());
        assert_eq!(parse("1.2.3"), None);
    }
}
