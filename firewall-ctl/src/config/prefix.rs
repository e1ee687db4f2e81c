//! Source prefixes as operators write them: `203.0.113.0/24`, `2001:db8::/32`,
//! or a bare address meaning one host. Read by hand rather than with
//! `ipnet`, for the errors (leading zeros, host bits, IPv4-mapped) and the
//! speed ([`super::address`] has the measured figure).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

#[cfg(test)]
use firewall_common::{model, wire::Source};

use super::address;
use crate::text::escape_controls;

/// A validated network prefix: no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpPrefix {
    V4 { address: Ipv4Addr, len: u8 },
    V6 { address: Ipv6Addr, len: u8 },
}

/// Why a source string is not a usable prefix. Messages say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error(
        "`{0}` is not an IP address or CIDR prefix; write e.g. `203.0.113.0/24`, `2001:db8::/32` or `203.0.113.7`"
    )]
    Syntax(String),
    #[error("`{text}` has a prefix length above {max}; IPv4 allows /0 to /32, IPv6 /0 to /128")]
    LengthTooLong { text: String, max: u8 },
    #[error("`{text}` writes the prefix length with leading zeros; write `/{len}`")]
    LeadingZeros { text: String, len: u16 },
    #[error(
        "`{text}` is an IPv4-mapped IPv6 prefix, which never matches IPv4 traffic (the data plane sees IPv4 packets as IPv4); write `{ipv4}`"
    )]
    Ipv4Mapped { text: String, ipv4: IpPrefix },
    #[error(
        "`{text}` has host bits set; write the network `{network}` (or `{address}` for that one host)"
    )]
    HostBits {
        text: String,
        network: IpPrefix,
        address: IpAddr,
    },
}

impl IpPrefix {
    pub fn len(&self) -> u8 {
        match self {
            IpPrefix::V4 { len, .. } | IpPrefix::V6 { len, .. } => *len,
        }
    }

    pub fn is_v4(&self) -> bool {
        matches!(self, IpPrefix::V4 { .. })
    }

    /// Matches every address of its family.
    pub fn is_any(&self) -> bool {
        self.len() == 0
    }

    /// Shorter than /8 (IPv4) or /16 (IPv6): a large share of the internet,
    /// which needs the same opt-in as `0.0.0.0/0` (two /1s would otherwise
    /// bypass it).
    pub fn is_broad(&self) -> bool {
        self.len() < if self.is_v4() { MIN_V4_LEN } else { MIN_V6_LEN }
    }

    /// The IPv4 prefix this IPv6 prefix spells inside `::ffff:0:0/96`.
    fn ipv4_mapped(&self) -> Option<IpPrefix> {
        match self {
            IpPrefix::V6 { address, len } if *len >= 96 => {
                address.to_ipv4_mapped().map(|address| IpPrefix::V4 {
                    address,
                    len: len - 96,
                })
            }
            _ => None,
        }
    }

    /// Whether `address` lies inside this prefix (families never mix).
    pub fn contains(&self, address: IpAddr) -> bool {
        let (bits, width) = self.bits();
        match (self, address) {
            (IpPrefix::V4 { len, .. }, IpAddr::V4(v4)) => {
                network_bits(u32::from(v4) as u128, *len, width) == bits
            }
            (IpPrefix::V6 { len, .. }, IpAddr::V6(v6)) => {
                network_bits(u128::from(v6), *len, width) == bits
            }
            _ => false,
        }
    }

    pub fn address(&self) -> IpAddr {
        match self {
            IpPrefix::V4 { address, .. } => IpAddr::V4(*address),
            IpPrefix::V6 { address, .. } => IpAddr::V6(*address),
        }
    }

    /// The address as an integer (IPv4 in the low 32 bits) and the family
    /// width, the form the policy compiler sorts and compares.
    pub fn bits(&self) -> (u128, u8) {
        match self {
            IpPrefix::V4 { address, .. } => (u32::from(*address) as u128, 32),
            IpPrefix::V6 { address, .. } => (u128::from(*address), 128),
        }
    }

    /// The last address of the prefix, in the form of [`IpPrefix::bits`].
    pub fn last_bits(&self) -> u128 {
        let (bits, width) = self.bits();
        let host_bits = u32::from(width - self.len());
        if host_bits == 0 {
            bits
        } else {
            bits | (u128::MAX >> (128 - host_bits))
        }
    }

    /// The same prefix in the reference classifier's terms.
    #[cfg(test)]
    pub fn to_model(self) -> model::Prefix {
        match self {
            IpPrefix::V4 { address, len } => model::Prefix {
                address: Source::V4(address.octets()),
                len,
            },
            IpPrefix::V6 { address, len } => model::Prefix {
                address: Source::V6(address.octets()),
                len,
            },
        }
    }
}

/// Sorts `prefixes` into their order (IPv4 first, then by address, then
/// by length) and drops repeats. Each family is sorted on an integer key of
/// its own: with the derived comparison, a config listing 250k prefixes of
/// each family, mixed, spent a quarter of its parse sorting them.
pub fn sort_and_dedup(prefixes: &mut Vec<IpPrefix>) {
    let (mut v4, mut v6): (Vec<IpPrefix>, Vec<IpPrefix>) =
        prefixes.iter().partition(|prefix| prefix.is_v4());
    v4.sort_unstable_by_key(|prefix| (prefix.bits().0 as u64) << 8 | u64::from(prefix.len()));
    v6.sort_unstable_by_key(|prefix| (prefix.bits().0, prefix.len()));
    prefixes.clear();
    prefixes.append(&mut v4);
    prefixes.append(&mut v6);
    prefixes.dedup();
}

/// Prefixes in their order without repeats, as a config rule lists them,
/// kept per family on compact keys (the address in network order, then
/// the length, so that byte order is prefix order): 5 bytes an IPv4 prefix
/// and 17 an IPv6 one, where an `IpPrefix` takes 18. A rule of 250k + 250k
/// is 5.5 MB instead of 9, held once per config (twice while a reload
/// replaces it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixList {
    v4: Vec<[u8; 5]>,
    v6: Vec<[u8; 17]>,
}

impl PrefixList {
    /// The list of `prefixes`, given in any order, repeats allowed.
    pub fn new(prefixes: Vec<IpPrefix>) -> Self {
        // Sorted as keys, not as prefixes first: a config of 250k + 250k
        // held 9 MB more at its peak for the prefixes sorted per family.
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for prefix in prefixes {
            match prefix {
                IpPrefix::V4 { address, len } => v4.push(v4_key(address, len)),
                IpPrefix::V6 { address, len } => v6.push(v6_key(address, len)),
            }
        }
        v4.sort_unstable_by_key(|&[a, b, c, d, len]| {
            u64::from_be_bytes([0, 0, 0, a, b, c, d, len])
        });
        v6.sort_unstable_by_key(|key| {
            (
                u128::from_be_bytes(*key.first_chunk().unwrap_or(&[0; 16])),
                key[16],
            )
        });
        v4.dedup();
        v6.dedup();
        Self { v4, v6 }
    }

    /// In order: IPv4 first, then by address, then by length.
    pub fn iter(&self) -> impl Iterator<Item = IpPrefix> + '_ {
        let v4 = self.v4.iter().map(|&[a, b, c, d, len]| IpPrefix::V4 {
            address: Ipv4Addr::new(a, b, c, d),
            len,
        });
        let v6 = self.v6.iter().map(|key| {
            let (address, len) = key.split_at(16);
            IpPrefix::V6 {
                address: <[u8; 16]>::try_from(address).expect("16 bytes").into(),
                len: len[0],
            }
        });
        v4.chain(v6)
    }

    pub fn contains(&self, prefix: &IpPrefix) -> bool {
        match *prefix {
            IpPrefix::V4 { address, len } => self.v4.binary_search(&v4_key(address, len)).is_ok(),
            IpPrefix::V6 { address, len } => self.v6.binary_search(&v6_key(address, len)).is_ok(),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

fn v4_key(address: Ipv4Addr, len: u8) -> [u8; 5] {
    let [a, b, c, d] = address.octets();
    [a, b, c, d, len]
}

fn v6_key(address: Ipv6Addr, len: u8) -> [u8; 17] {
    let mut key = [0; 17];
    key[..16].copy_from_slice(&address.octets());
    key[16] = len;
    key
}

/// Shortest IPv4 prefix accepted without `allow_any_source`.
pub const MIN_V4_LEN: u8 = 8;
/// Shortest IPv6 prefix accepted without `allow_any_source`.
pub const MIN_V6_LEN: u8 = 16;

/// `bits` with everything after the first `len` of `width` bits cleared.
pub fn network_bits(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let host_bits = u32::from(width - len);
    let mask = if host_bits >= 128 {
        0
    } else {
        (u128::MAX >> host_bits) << host_bits
    };
    bits & mask & (u128::MAX >> (128 - u32::from(width)))
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax(escape_controls(text));
        // A byte search: `split_once('/')` cost as much as reading the address.
        let (address_text, len_text) = match text.bytes().position(|byte| byte == b'/') {
            Some(slash) => (&text[..slash], Some(&text[slash + 1..])),
            None => (text, None),
        };
        let address = address::parse(address_text).ok_or_else(syntax)?;
        let max: u8 = if address.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => u16::from(max),
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                let value = len.parse::<u16>().map_err(|_| syntax())?;
                if len.len() > 1 && len.starts_with('0') {
                    return Err(PrefixError::LeadingZeros {
                        text: escape_controls(text),
                        len: value,
                    });
                }
                value
            }
            Some(_) => return Err(syntax()),
        };
        if len > u16::from(max) {
            return Err(PrefixError::LengthTooLong {
                text: escape_controls(text),
                max,
            });
        }
        let len = len as u8;
        let network = match address {
            IpAddr::V4(v4) => IpPrefix::V4 {
                address: Ipv4Addr::from(network_bits(u32::from(v4) as u128, len, 32) as u32),
                len,
            },
            IpAddr::V6(v6) => IpPrefix::V6 {
                address: Ipv6Addr::from(network_bits(u128::from(v6), len, 128)),
                len,
            },
        };
        if network.address() != address {
            return Err(PrefixError::HostBits {
                text: escape_controls(text),
                network,
                address,
            });
        }
        if let Some(ipv4) = network.ipv4_mapped() {
            return Err(PrefixError::Ipv4Mapped {
                text: escape_controls(text),
                ipv4,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpPrefix::V4 { address, len } => write!(f, "{address}/{len}"),
            IpPrefix::V6 { address, len } => write!(f, "{address}/{len}"),
        }
    }
}

impl serde::Serialize for IpPrefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixes_and_bare_addresses() {
        assert_eq!(
            "203.0.113.0/24".parse::<IpPrefix>().unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            "203.0.113.7".parse::<IpPrefix>().unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            "2001:db8::/32".parse::<IpPrefix>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!("2001:db8::1".parse::<IpPrefix>().unwrap().len(), 128);
        assert!("0.0.0.0/0".parse::<IpPrefix>().unwrap().is_any());
        assert!("::/0".parse::<IpPrefix>().unwrap().is_any());
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let err = "203.0.113.5/24".parse::<IpPrefix>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`203.0.113.5/24` has host bits set; write the network `203.0.113.0/24` (or `203.0.113.5` for that one host)"
        );
        let err = "2001:db8::1/32".parse::<IpPrefix>().unwrap_err();
        assert!(err.to_string().contains("`2001:db8::/32`"), "{err}");
    }

    #[test]
    fn rejects_garbage_and_long_lengths() {
        for bad in [
            "",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "203.0.113/24",
            "example.com",
            " 203.0.113.1",
        ] {
            assert!(
                matches!(bad.parse::<IpPrefix>(), Err(PrefixError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "203.0.113.0/33".parse::<IpPrefix>(),
            Err(PrefixError::LengthTooLong { max: 32, .. })
        ));
        assert!(matches!(
            "2001:db8::/129".parse::<IpPrefix>(),
            Err(PrefixError::LengthTooLong { max: 128, .. })
        ));
    }

    #[test]
    fn leading_zeros_in_the_length_are_refused() {
        assert_eq!(
            "203.0.113.0/0024"
                .parse::<IpPrefix>()
                .unwrap_err()
                .to_string(),
            "`203.0.113.0/0024` writes the prefix length with leading zeros; write `/24`"
        );
        assert!("0.0.0.0/00".parse::<IpPrefix>().is_err());
        assert!("0.0.0.0/0".parse::<IpPrefix>().is_ok());
        assert!("2001:db8::/032".parse::<IpPrefix>().is_err());
        // Leading zeros in an octet were never accepted (octal ambiguity).
        assert!("203.0.113.010".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn ipv4_mapped_prefixes_are_refused_with_the_ipv4_spelling() {
        for (mapped, ipv4) in [
            ("::ffff:203.0.113.1", "203.0.113.1/32"),
            ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ] {
            let err = mapped.parse::<IpPrefix>().unwrap_err();
            assert_eq!(
                err,
                PrefixError::Ipv4Mapped {
                    text: mapped.to_string(),
                    ipv4: ipv4.parse().unwrap()
                }
            );
            assert!(
                err.to_string().contains(&format!("write `{ipv4}`")),
                "{err}"
            );
        }
        // A broader IPv6 prefix that merely contains the mapped range is IPv6.
        assert!("::/64".parse::<IpPrefix>().is_ok());
    }

    #[test]
    fn broad_prefixes_are_those_shorter_than_8_or_16() {
        let broad = |text: &str| text.parse::<IpPrefix>().unwrap().is_broad();
        assert!(broad("0.0.0.0/1") && broad("128.0.0.0/1") && broad("0.0.0.0/7"));
        assert!(!broad("10.0.0.0/8"));
        assert!(broad("::/1") && broad("8000::/1") && broad("2000::/15"));
        assert!(!broad("2001::/16"));
    }

    #[test]
    fn control_characters_in_bad_input_are_escaped() {
        let err = "203.0.113.0\u{1b}[2J"
            .parse::<IpPrefix>()
            .unwrap_err()
            .to_string();
        assert!(!err.chars().any(char::is_control), "{err:?}");
        assert!(err.contains("`203.0.113.0\\u{1b}[2J`"), "{err}");
    }

    #[test]
    fn sorting_gives_the_order_of_prefixes_without_repeats() {
        let mut prefixes: Vec<IpPrefix> = [
            "2001:db8::/48",
            "10.0.0.1",
            "::/0",
            "10.0.0.0/16",
            "255.255.255.255",
            "2001:db8::/32",
            "10.0.0.0/8",
            "9.255.255.255",
            "ff00::/8",
            "10.0.0.0/16",
            "0.0.0.0/0",
            "2001:db8:0:1::/64",
            "::1",
            "2001:db8::/32",
        ]
        .map(|text| text.parse().unwrap())
        .to_vec();
        let mut expected = prefixes.clone();
        expected.sort_unstable();
        expected.dedup();
        // Kept compact, the list gives back the same prefixes in order.
        let list = PrefixList::new(prefixes.clone());
        sort_and_dedup(&mut prefixes);
        assert_eq!(prefixes, expected);
        assert_eq!(prefixes.len(), 12);
        assert_eq!(list.iter().collect::<Vec<_>>(), expected);
        assert_eq!(list.len(), 12);
        for prefix in &expected {
            assert!(list.contains(prefix), "{prefix}");
        }
        for absent in ["10.0.0.0/9", "10.0.0.2", "2001:db8::/33", "::2"] {
            assert!(!list.contains(&absent.parse().unwrap()), "{absent}");
        }
    }

    #[test]
    fn contains_checks_family_and_bits() {
        let prefix: IpPrefix = "203.0.113.64/26".parse().unwrap();
        assert!(prefix.contains("203.0.113.70".parse().unwrap()));
        assert!(!prefix.contains("203.0.113.10".parse().unwrap()));
        assert!(!prefix.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn network_bits_masks_each_width() {
        assert_eq!(network_bits(0xcb00_7105, 24, 32), 0xcb00_7100);
        assert_eq!(network_bits(0xcb00_7105, 32, 32), 0xcb00_7105);
        assert_eq!(network_bits(u128::MAX, 128, 128), u128::MAX);
        assert_eq!(network_bits(u128::MAX, 1, 128), 1 << 127);
        assert_eq!(network_bits(u128::MAX, 0, 128), 0);
    }
}
