//! Loads from and stores into array maps through a memory mapping
//! (`BPF_F_MMAPABLE`, Linux 5.5). Batch map calls copy and check each
//! element in the kernel, about 0.8 µs apiece here: resetting the entry
//! counters of a 250k + 250k policy and writing a slot's ports took 0.5 s of
//! CPU at start, and reading the counters back as long per report. Through
//! a mapping they are plain loads and stores.
//!
//! Only a window of the array is mapped at a time, and unmapped when done:
//! mapped pages count as the daemon's resident memory, and the entry
//! counters span 40 MiB.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

/// Bytes of array mapped at once at most.
const WINDOW_BYTES: usize = 1 << 20;

/// Elements `first..first + len` of an mmapable array map, mapped.
struct Window<T> {
    /// The page-aligned start of the mapping and its length in bytes.
    mapping: NonNull<libc::c_void>,
    mapped_bytes: usize,
    /// Element `first` in the mapping.
    base: NonNull<T>,
    first: u32,
    len: u32,
}

impl<T: aya::Pod> Window<T> {
    /// The kernel lays array values out `round_up(value_size, 8)` apart;
    /// the stores below assume that is `size_of::<T>()`.
    const STRIDE: usize = {
        assert!(
            size_of::<T>().is_multiple_of(8) && align_of::<T>() <= 8,
            "array values are 8-byte aligned"
        );
        size_of::<T>()
    };

    /// Maps elements `first..first + len` of the array `map`, whose value
    /// type must be `T`.
    fn map(map: BorrowedFd<'_>, first: u32, len: u32) -> std::io::Result<Self> {
        let page = page_bytes();
        let start = first as usize * Self::STRIDE;
        let end = start + len as usize * Self::STRIDE;
        let offset = start - start % page;
        let mapped_bytes = (end - offset).div_ceil(page) * page;
        // SAFETY: a new shared mapping of the map's own memory; nothing in
        // this process aliases it. `offset` is page-aligned.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mapping = NonNull::new(address).ok_or_else(std::io::Error::last_os_error)?;
        // SAFETY: `start - offset` is within the mapping, which is at least
        // `end - offset` bytes long.
        let base = unsafe { mapping.byte_add(start - offset) }.cast::<T>();
        Ok(Self {
            mapping,
            mapped_bytes,
            base,
            first,
            len,
        })
    }

    /// Element `index`, which must be in the window.
    fn element(&self, index: u32) -> NonNull<T> {
        let at = index
            .checked_sub(self.first)
            .filter(|at| *at < self.len)
            .expect("accesses stay inside their window");
        // SAFETY: in bounds, checked above.
        unsafe { self.base.add(at as usize) }
    }

    // Loads and stores are volatile and make no Rust reference to the
    // memory: the program updates elements meanwhile. Elements are in
    // bounds (`element`) and aligned (the mapping is page-aligned, elements
    // are `STRIDE` apart).

    /// Stores `value` at element `index`, which must be in the window.
    fn store(&mut self, index: u32, value: T) {
        // SAFETY: see above.
        unsafe { self.element(index).write_volatile(value) }
    }

    /// Element `index`'s value, which must be in the window.
    fn load(&self, index: u32) -> T {
        // SAFETY: see above.
        unsafe { self.element(index).read_volatile() }
    }
}

impl<T> Drop for Window<T> {
    fn drop(&mut self) {
        // Stores are visible to the program before whatever the caller
        // does next (making a slot live, say) on any architecture.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: unmaps exactly what `map` mapped; `base` is not used again.
        unsafe { libc::munmap(self.mapping.as_ptr(), self.mapped_bytes) };
    }
}

fn page_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(bytes).unwrap_or(4096)
}

/// Stores `value` at each of `indexes` of the array `map` (value type `T`);
/// `indexes` are sorted here.
pub fn store_at<T: aya::Pod>(
    map: BorrowedFd<'_>,
    indexes: &mut [u32],
    value: T,
) -> std::io::Result<()> {
    indexes.sort_unstable();
    store_sorted(map, indexes, |_| value)
}

/// Stores `values` at elements `first..first + values.len()` of the array
/// `map` (value type `T`).
pub fn store_run<T: aya::Pod>(
    map: BorrowedFd<'_>,
    first: u32,
    values: &[T],
) -> std::io::Result<()> {
    let indexes: Vec<u32> = (first..).take(values.len()).collect();
    store_sorted(map, &indexes, |at| values[at])
}

/// The values at `indexes` (ascending) of the array `map` (value type `T`).
pub fn load_sorted<T: aya::Pod>(map: BorrowedFd<'_>, indexes: &[u32]) -> std::io::Result<Vec<T>> {
    let mut values = Vec::with_capacity(indexes.len());
    visit_sorted::<T>(map, indexes, |window, index| {
        values.push(window.load(index))
    })?;
    Ok(values)
}

/// Stores `value_of(i)` at `indexes[i]` of the array `map` (value type
/// `T`); `indexes` ascend.
fn store_sorted<T: aya::Pod>(
    map: BorrowedFd<'_>,
    indexes: &[u32],
    value_of: impl Fn(usize) -> T,
) -> std::io::Result<()> {
    let mut at = 0;
    visit_sorted::<T>(map, indexes, |window, index| {
        window.store(index, value_of(at));
        at += 1;
    })
}

/// Calls `visit` with each of `indexes` (ascending) of the array `map`
/// (value type `T`) and a window holding it, a window at a time.
fn visit_sorted<T: aya::Pod>(
    map: BorrowedFd<'_>,
    indexes: &[u32],
    mut visit: impl FnMut(&mut Window<T>, u32),
) -> std::io::Result<()> {
    debug_assert!(indexes.is_sorted(), "indexes ascend");
    let per_window = (WINDOW_BYTES / Window::<T>::STRIDE) as u32;
    let mut rest = indexes;
    while let Some(&first) = rest.first() {
        let inside = rest.partition_point(|index| index - first < per_window);
        let (window_indexes, after) = rest.split_at(inside);
        let last = window_indexes[inside - 1];
        let mut window = Window::<T>::map(map, first, last - first + 1)?;
        for index in window_indexes {
            visit(&mut window, *index);
        }
        rest = after;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use aya::maps::{Array, Map, MapData};

    use super::*;

    /// A 40-byte value, as the entry counters have.
    type Value = [u64; 5];

    /// Stores land at exactly the indexes asked for, across windows and
    /// in any order given; the program (here: a lookup) sees them, and so
    /// do loads.
    #[test]
    fn stores_land_at_their_indexes_and_nowhere_else_and_load_back() {
        if !firewall_tests::root_or_skip(
            "stores_land_at_their_indexes_and_nowhere_else_and_load_back",
        ) {
            return;
        }
        const LEN: u32 = 100_000;
        // BPF_MAP_TYPE_ARRAY, BPF_F_MMAPABLE; 4 MB: four windows.
        let fd = super::super::test_maps::create(2, 4, 40, LEN, 1024);
        let mut scattered = vec![LEN - 1, 7, 30_000, 1, 26_214, 26_213, 99_000];
        store_at::<Value>(fd.as_fd(), &mut scattered, [1, 2, 3, 4, 5]).unwrap();
        let run: Vec<Value> = (0..30_000).map(|index| [index; 5]).collect();
        store_run(fd.as_fd(), 50_000, &run).unwrap();

        let read: Vec<Value> = load_sorted(fd.as_fd(), &[1, 7, 50_000, 79_999, 80_000]).unwrap();
        assert_eq!(
            read,
            [
                [1, 2, 3, 4, 5],
                [1, 2, 3, 4, 5],
                [0; 5],
                [29_999; 5],
                [0; 5]
            ]
        );

        let map = Array::<_, Value>::try_from(Map::Array(MapData::from_fd(fd).unwrap())).unwrap();
        for index in 0..LEN {
            let expected = if scattered.contains(&index) {
                [1, 2, 3, 4, 5]
            } else if (50_000..80_000).contains(&index) {
                [u64::from(index) - 50_000; 5]
            } else {
                [0; 5]
            };
            assert_eq!(map.get(&index, 0).unwrap(), expected, "element {index}");
        }
    }
}
