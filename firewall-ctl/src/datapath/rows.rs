//! Listed prefixes cut into the rows of an interval table (see
//! `firewall_common::maps::rows`): for any address, the last row starting
//! at or below it holds what a longest-prefix match over the prefixes
//! gives. Nested prefixes cut their parent in up to three pieces, so a
//! table of `n` prefixes has at most `2n` rows: each prefix starts one,
//! and one more where its parent (or nothing) resumes after it.

use firewall_common::maps::rows::{Span, V4_BUCKET_BITS, V4_BUCKETS};

use crate::policy::PrefixKey;

/// The `SOURCE_BUCKETS_V4` spans of a slot whose IPv4 source rows start at
/// `starts` (ascending), the first at index `first` of the map: per
/// bucket, from the row in force at its first address (or the first row,
/// if none is) to the last row starting inside it.
pub fn v4_buckets(starts: &[u32], first: u32) -> Vec<Span> {
    // One pass over buckets and rows together: two bisections of a 250k
    // table per bucket had cost 10 ms at every write.
    let (mut at_or_below_low, mut below_next) = (0, 0);
    (0..V4_BUCKETS)
        .map(|bucket| {
            let low = bucket << (32 - V4_BUCKET_BITS);
            let next = u64::from(bucket + 1) << (32 - V4_BUCKET_BITS);
            while starts
                .get(at_or_below_low)
                .is_some_and(|start| *start <= low)
            {
                at_or_below_low += 1;
            }
            while starts
                .get(below_next)
                .is_some_and(|start| u64::from(*start) < next)
            {
                below_next += 1;
            }
            let from = at_or_below_low.saturating_sub(1);
            Span {
                first: first + from as u32,
                len: (below_next - from) as u32,
            }
        })
        .collect()
}

/// Cuts prefixes, added in key order (a prefix before everything nested
/// in it, as a `PrefixTable` holds them), into rows `(start, value)`:
/// ascending starts, `None` where no prefix contains the addresses, and no
/// two neighbours with the same value. Rows come out of [`Cutter::drain`]
/// once no later prefix can change them.
pub struct Cutter<V> {
    /// Bits in an address of the family: 32 or 128.
    width: u8,
    /// The prefixes containing the last one added, outermost first: the
    /// last address of each and its value.
    open: Vec<(u128, V)>,
    /// The last row started: a prefix with the same start replaces its value.
    pending: Option<(u128, Option<V>)>,
    /// Value of the last row given out: a row that does not change it is
    /// not a row.
    last_value: Option<V>,
    done: Vec<(u128, Option<V>)>,
}

impl<V: Copy + PartialEq> Cutter<V> {
    pub fn new(width: u8) -> Self {
        Self {
            width,
            open: Vec::new(),
            pending: None,
            last_value: None,
            done: Vec::new(),
        }
    }

    /// Adds prefix `key`, which no prefix added before sorts after.
    pub fn add(&mut self, key: PrefixKey, value: V) {
        let (start, len) = key;
        self.close_before(start);
        self.start_row(start, Some(value));
        self.open.push((start | self.host_bits(len), value));
    }

    /// Rows no later prefix can change, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (u128, Option<V>)> {
        self.done.drain(..)
    }

    /// Closes every prefix and gives out the remaining rows.
    pub fn finish(mut self) -> Vec<(u128, Option<V>)> {
        self.close_while(|_| true);
        self.give_out_pending();
        self.done
    }

    /// Closes the open prefixes that end before `start`.
    fn close_before(&mut self, start: u128) {
        self.close_while(|last| last < start);
    }

    /// Closes open prefixes, innermost first, while `closes(last address)`:
    /// after each, the prefix around it (or nothing) resumes.
    fn close_while(&mut self, closes: impl Fn(u128) -> bool) {
        while let Some(&(last, _)) = self.open.last()
            && closes(last)
        {
            self.open.pop();
            if last == self.host_bits(0) {
                // The end of the address space: nothing resumes.
                continue;
            }
            let around = self.open.last().map(|(_, value)| *value);
            self.start_row(last + 1, around);
        }
    }

    fn start_row(&mut self, start: u128, value: Option<V>) {
        match &mut self.pending {
            Some((pending, held)) if *pending == start => *held = value,
            _ => {
                self.give_out_pending();
                self.pending = Some((start, value));
            }
        }
    }

    fn give_out_pending(&mut self) {
        if let Some((start, value)) = self.pending.take()
            && value != self.last_value
        {
            self.last_value = value;
            self.done.push((start, value));
        }
    }

    /// The host bits of a prefix of length `len`: all ones.
    fn host_bits(&self, len: u8) -> u128 {
        let host = u32::from(self.width.saturating_sub(len));
        if host == 0 {
            0
        } else {
            u128::MAX >> (128 - host)
        }
    }
}

#[cfg(test)]
mod tests {
    use firewall_common::maps::rows::{Span, last_at_or_below};

    use super::{Cutter, v4_buckets};
    use crate::{config::prefix::network_bits, policy::PrefixKey};

    /// The rows of `prefixes` (any order) with their index as the value.
    fn cut(prefixes: &[PrefixKey], width: u8) -> Vec<(u128, Option<usize>)> {
        let mut sorted: Vec<(PrefixKey, usize)> = prefixes.iter().copied().zip(0..).collect();
        sorted.sort_unstable();
        let mut cutter = Cutter::new(width);
        let mut rows = Vec::new();
        for (key, value) in sorted {
            cutter.add(key, value);
            rows.extend(cutter.drain());
        }
        rows.extend(cutter.finish());
        rows
    }

    /// The value of the last row starting at or below `address`.
    fn look_up(rows: &[(u128, Option<usize>)], address: u128) -> Option<usize> {
        let at = rows.partition_point(|(start, _)| *start <= address);
        at.checked_sub(1).and_then(|at| rows[at].1)
    }

    /// The longest of `prefixes` containing `address`.
    fn longest(prefixes: &[PrefixKey], address: u128, width: u8) -> Option<usize> {
        prefixes
            .iter()
            .enumerate()
            .filter(|(_, (bits, len))| network_bits(address, *len, width) == *bits)
            .max_by_key(|(_, (_, len))| *len)
            .map(|(index, _)| index)
    }

    fn v4(text: &str) -> PrefixKey {
        let (address, len) = text.split_once('/').unwrap();
        let address: std::net::Ipv4Addr = address.parse().unwrap();
        (u32::from(address).into(), len.parse().unwrap())
    }

    #[test]
    fn nested_prefixes_cut_their_parents() {
        let prefixes = [v4("10.0.0.0/8"), v4("10.1.0.0/16"), v4("10.1.0.0/24")];
        let at = |text: &str| u128::from(u32::from(text.parse::<std::net::Ipv4Addr>().unwrap()));
        assert_eq!(
            cut(&prefixes, 32),
            [
                (at("10.0.0.0"), Some(0)),
                (at("10.1.0.0"), Some(2)),
                (at("10.1.1.0"), Some(1)),
                (at("10.2.0.0"), Some(0)),
                (at("11.0.0.0"), None),
            ]
        );
    }

    #[test]
    fn the_edges_of_the_address_space_need_no_extra_rows() {
        assert_eq!(cut(&[(0, 0)], 32), [(0, Some(0))]);
        assert_eq!(cut(&[(0, 0)], 128), [(0, Some(0))]);
        let last = v4("255.255.255.255/32");
        assert_eq!(cut(&[last, (0, 0)], 32), [(0, Some(1)), (last.0, Some(0))]);
        assert_eq!(cut(&[v4("0.0.0.0/32")], 32), [(0, Some(0)), (1, None)]);
        assert_eq!(cut(&[], 32), []);
        let top = (u128::MAX, 128);
        assert_eq!(cut(&[top], 128), [(u128::MAX, Some(0))]);
    }

    #[test]
    fn the_rows_answer_every_longest_match_with_at_most_two_rows_a_prefix() {
        // Random nested and adjacent prefixes in a small corner of each
        // family, so that they overlap often; every address near an edge
        // of one is checked.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (width, round) in [(32u8, 0), (128, 1)].into_iter().cycle().take(400) {
            let count = (next() % 40) as usize;
            let mut prefixes: Vec<PrefixKey> = (0..count)
                .map(|_| {
                    let len = width - (next() % 12) as u8;
                    let len = if round == 0 && next() % 8 == 0 {
                        0
                    } else {
                        len
                    };
                    let address =
                        u128::from(next() as u16) | if width == 128 { 0x2001 << 112 } else { 0 };
                    (network_bits(address, len, width), len)
                })
                .collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            let rows = cut(&prefixes, width);
            assert!(rows.len() <= 2 * prefixes.len(), "{prefixes:?}");
            assert!(
                rows.windows(2)
                    .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 != pair[1].1)
            );
            for (bits, len) in &prefixes {
                let host = if *len == width {
                    0
                } else {
                    u128::MAX >> (128 - u32::from(width - len))
                };
                let last = bits | host;
                let edges = [
                    bits.wrapping_sub(1),
                    *bits,
                    bits + 1,
                    last - 1,
                    last,
                    last.wrapping_add(1),
                ];
                let end = if width == 128 {
                    u128::MAX
                } else {
                    u128::from(u32::MAX)
                };
                for address in edges.into_iter().filter(|address| *address <= end) {
                    assert_eq!(
                        look_up(&rows, address),
                        longest(&prefixes, address, width),
                        "{address:#x} in {prefixes:?}: {rows:?}"
                    );
                }
            }
        }
    }

    /// A search in an address's bucket finds the row a search of the
    /// whole table finds.
    #[test]
    fn a_bucket_holds_every_row_its_addresses_can_fall_in() {
        let at = |text: &str| u32::from(text.parse::<std::net::Ipv4Addr>().unwrap());
        let starts = [
            at("0.0.0.5"),
            at("10.0.0.0"),
            at("10.0.0.128"),
            at("10.0.1.0"),
            at("10.2.0.0"),
            at("10.2.255.255"),
            at("11.0.0.0"),
            at("255.255.255.0"),
        ];
        let first = 1000;
        let buckets = v4_buckets(&starts, first);
        assert_eq!(buckets.len(), 65_536);
        let search = |span: Span, address: u32| {
            last_at_or_below(span, |row| {
                starts
                    .get((row - first) as usize)
                    .map(|start| *start <= address)
            })
        };
        let whole = Span {
            first,
            len: starts.len() as u32,
        };
        let addresses = starts
            .iter()
            .flat_map(|start| [start.wrapping_sub(1), *start, start.wrapping_add(1)])
            .chain([
                0,
                at("10.1.0.0"),
                at("10.255.255.255"),
                at("200.0.0.1"),
                u32::MAX,
            ]);
        for address in addresses {
            let bucket = buckets[(address >> 16) as usize];
            assert_eq!(
                search(bucket, address),
                search(whole, address),
                "{address:#x}"
            );
        }
        // Each span is what bisecting the starts gives.
        for (bucket, span) in (0u64..).zip(&buckets) {
            let from = starts
                .partition_point(|start| u64::from(*start) <= bucket << 16)
                .saturating_sub(1);
            let to = starts.partition_point(|start| u64::from(*start) < (bucket + 1) << 16);
            let expected = Span {
                first: first + from as u32,
                len: (to - from) as u32,
            };
            assert_eq!(*span, expected, "bucket {bucket}");
        }
        // A /16 with no row of its own holds only the row in force.
        assert_eq!(buckets[(at("200.0.0.0") >> 16) as usize].len, 1);
        assert_eq!(v4_buckets(&[], 0)[7], Span::default());
    }
}
