//! Batch map reads and deletes (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6): one `bpf` call per [`BATCH`]
//! elements, not one per element. aya 0.14 has no wrapper for them.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya::{
    maps::{MapData, MapError},
    sys::SyscallError,
};

use super::{
    DatapathError,
    sys::{self, BPF_MAP_DELETE_BATCH, BPF_MAP_LOOKUP_BATCH, BatchAttr},
};

/// The largest key of our maps (the flow key is 40 bytes), rounded up.
const MAX_KEY_BYTES: usize = 64;

/// Elements read or deleted per `bpf` call.
const BATCH: usize = 4096;

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

/// The descriptor of `map`, as `bpf_attr` holds it.
fn raw_fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// The elements of `map`, in the map's order. `K` and `V` must be the
/// map's key and value types.
pub fn read<K: aya::Pod, V: aya::Pod>(map: &MapData) -> std::io::Result<Vec<(K, V)>> {
    let fd = raw_fd(map);
    let mut elements = Vec::new();
    let mut keys = vec![zeroed::<K>(); BATCH];
    let mut values = vec![zeroed::<V>(); BATCH];
    // The position in the map: a bucket index for hash maps, the last key
    // for arrays (generic batch ops), so room for any key.
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
        // SAFETY: room for `BATCH` keys and values of the map's types, and
        // for any key as the position.
        let more = unsafe { sys::batch(BPF_MAP_LOOKUP_BATCH, &mut attr)? };
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
        // SAFETY: `count` keys of the map's key type.
        let complete = unsafe { sys::batch(BPF_MAP_DELETE_BATCH, &mut attr)? };
        let done = attr.count as usize;
        deleted += done as u64;
        // A key not found stops the call at it: skip it, go on after it.
        rest = &rest[if complete { chunk.len() } else { done + 1 }..];
    }
    Ok(deleted)
}
