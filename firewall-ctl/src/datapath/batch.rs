//! Batch map reads, writes and deletes (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6): one `bpf` call per [`BATCH`]
//! elements, not one or two per element. aya 0.14 has no wrapper for them.
//! Writes take a bare descriptor, so that a thread of their own can make
//! them ([`super::background`]); so do their per-element fallbacks.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya::{
    maps::{MapData, MapError},
    sys::SyscallError,
};

use super::DatapathError;

/// The largest key of our maps (the flow key is 40 bytes), rounded up.
const MAX_KEY_BYTES: usize = 64;

/// Elements read or deleted per `bpf` call.
const BATCH: usize = 4096;

/// `union bpf_attr` of `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `bpf(cmd, attr)`, where `attr` is the `union bpf_attr` of `cmd`;
/// `Ok(false)` for `ENOENT`: the end of the map for a batch read (with
/// `count` saying how many elements the call handled), a key not found for
/// an element call.
fn bpf_call<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<bool> {
    // SAFETY: `attr` is the attr of `cmd`; every buffer it points to was
    // sized by the caller for the call and outlives it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>(),
        )
    };
    if result == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOENT) => Ok(false),
        _ => Err(error),
    }
}

/// A failed `bpf` call on the map `name`, or a failed copy of its descriptor.
pub fn error(name: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    syscall_error(name, "bpf")
}

/// A failed system call `call` on the map `name`.
pub fn syscall_error(
    name: &'static str,
    call: &'static str,
) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |io_error| DatapathError::Map {
        name,
        source: MapError::SyscallError(SyscallError { call, io_error }),
    }
}

/// A buffer element for the kernel to fill.
fn zeroed<T: aya::Pod>() -> T {
    // SAFETY: `Pod` types are plain integers and arrays of them, for which
    // all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// The outcome of a batch call on the map `name`: `Some` result, `None`
/// when this kernel has no batch operations for the map type (the caller
/// falls back to one call per element), or the error.
pub fn or_fallback<T>(
    name: &'static str,
    result: std::io::Result<T>,
) -> Result<Option<T>, DatapathError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if unsupported(&err) => Ok(None),
        Err(err) => Err(error(name)(err)),
    }
}

/// Whether `error` says this kernel has no batch operations for the map
/// type (before Linux 5.6 for arrays and hashes; later for LPM tries).
fn unsupported(error: &std::io::Error) -> bool {
    /// `ENOTSUPP`, the kernel-internal errno batch calls return.
    const ENOTSUPP: i32 = 524;
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The descriptor of `map`, as `bpf_attr` holds it.
fn raw_fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// `union bpf_attr` of `BPF_MAP_UPDATE_ELEM` and `BPF_MAP_DELETE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct ElementAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The elements of `map`, in the map's order. `K` and `V` must be the
/// map's key and value types.
pub fn read<K: aya::Pod, V: aya::Pod>(map: &MapData) -> std::io::Result<Vec<(K, V)>> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let fd = raw_fd(map);
    let mut elements = Vec::new();
    let mut keys = vec![zeroed::<K>(); BATCH];
    let mut values = vec![zeroed::<V>(); BATCH];
    // The position in the map: a bucket index for hash maps, the last key
    // for arrays and LPM tries (generic batch ops), so room for any key.
    let (mut position_in, mut position_out) = ([0u8; MAX_KEY_BYTES], [0u8; MAX_KEY_BYTES]);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &raw mut position_in as u64
            },
            out_batch: &raw mut position_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        let more = bpf_call(BPF_MAP_LOOKUP_BATCH, &mut attr)?;
        let read = attr.count as usize;
        elements.extend(
            keys[..read]
                .iter()
                .copied()
                .zip(values[..read].iter().copied()),
        );
        if !more {
            return Ok(elements);
        }
        position_in = position_out;
        first = false;
    }
}

/// Deletes `keys` from the map `map`, skipping any gone already; how many
/// it deleted.
pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> std::io::Result<u64> {
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    let fd = map.as_raw_fd() as u32;
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        let complete = bpf_call(BPF_MAP_DELETE_BATCH, &mut attr)?;
        let done = attr.count as usize;
        deleted += done as u64;
        // A key not found stops the call at it: skip it, go on after it.
        rest = &rest[if complete { chunk.len() } else { done + 1 }..];
    }
    Ok(deleted)
}

/// Writes `values[i]` at `keys[i]` in the map `map`, [`BATCH`] elements
/// per call.
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.as_raw_fd() as u32;
    for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        bpf_call(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        if attr.count as usize != keys.len() {
            return Err(std::io::Error::other(format!(
                "the kernel wrote {} of {} elements",
                attr.count,
                keys.len()
            )));
        }
    }
    Ok(())
}

/// Deletes `removed` (absent ones included) from the map `name` at `map`
/// and writes `values` at `keys`: batch calls where the kernel has them for
/// the map type (LPM tries got them after arrays and hashes), else
/// [`replace_each`].
pub fn replace<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    name: &'static str,
    removed: &[K],
    keys: &[K],
    values: &[V],
) -> Result<(), DatapathError> {
    let written = delete(map, removed).and_then(|_| update(map, keys, values));
    match or_fallback(name, written)? {
        Some(()) => Ok(()),
        None => replace_each(map, removed, keys, values).map_err(error(name)),
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// [`replace`] one call per element.
fn replace_each<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    removed: &[K],
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    let map_fd = map.as_raw_fd() as u32;
    for key in removed {
        let mut attr = ElementAttr {
            map_fd,
            key: std::ptr::from_ref(key) as u64,
            ..ElementAttr::default()
        };
        // Absent already is removed.
        bpf_call(BPF_MAP_DELETE_ELEM, &mut attr)?;
    }
    for (key, value) in keys.iter().zip(values) {
        let mut attr = ElementAttr {
            map_fd,
            key: std::ptr::from_ref(key) as u64,
            value: std::ptr::from_ref(value) as u64,
            ..ElementAttr::default()
        };
        if !bpf_call(BPF_MAP_UPDATE_ELEM, &mut attr)? {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, OwnedFd};

    use aya::maps::lpm_trie::Key;

    use super::*;

    fn lpm_trie() -> OwnedFd {
        // BPF_MAP_TYPE_LPM_TRIE; BPF_F_NO_PREALLOC, which LPM tries require.
        super::super::test_maps::create(11, 8, 4, 16, 1)
    }

    fn lookup(map: &OwnedFd, key: &Key<[u8; 4]>) -> Option<u32> {
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let mut value = 0u32;
        let mut attr = ElementAttr {
            map_fd: map.as_raw_fd() as u32,
            key: std::ptr::from_ref(key) as u64,
            value: &raw mut value as u64,
            ..ElementAttr::default()
        };
        bpf_call(BPF_MAP_LOOKUP_ELEM, &mut attr)
            .unwrap()
            .then_some(value)
    }

    /// The per-element path, which kernels without batch calls for LPM
    /// tries take (this one has them, so `replace` would not).
    #[test]
    fn one_call_per_element_deletes_and_writes_exactly() {
        if !super::super::test_maps::root_or_skip("one_call_per_element_deletes_and_writes_exactly")
        {
            return;
        }
        let map = lpm_trie();
        let key = |last: u8| Key::new(32, [192, 0, 2, last]);
        replace_each(map.as_fd(), &[], &[key(1), key(2)], &[10u32, 20]).unwrap();
        // Deleting an absent key is fine; writes replace values.
        replace_each(
            map.as_fd(),
            &[key(1), key(9)],
            &[key(2), key(3)],
            &[21u32, 30],
        )
        .unwrap();
        assert_eq!(lookup(&map, &key(1)), None);
        assert_eq!(lookup(&map, &key(2)), Some(21));
        assert_eq!(lookup(&map, &key(3)), Some(30));
        // And the batch path gives the same.
        replace(map.as_fd(), "TEST", &[key(3)], &[key(4)], &[40u32]).unwrap();
        assert_eq!(lookup(&map, &key(3)), None);
        assert_eq!(lookup(&map, &key(4)), Some(40));
    }
}
