//! Batch map reads, writes and deletes (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6): one `bpf` call per [`BATCH`]
//! elements, not one or two per element. aya 0.14 has no wrapper for them.

use std::os::fd::AsFd as _;

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

/// `bpf(cmd, attr)`; `Ok(true)` when there is more to come, `Ok(false)` at
/// the end of the map (`ENOENT`), with `attr.count` saying how many
/// elements the call handled either way.
fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<bool> {
    // SAFETY: `attr` is a batch `bpf_attr` whose buffers the caller sized
    // for `attr.count` elements; they outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
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

/// A failed batch call on the map `name`.
pub fn error(name: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |io_error| DatapathError::Map {
        name,
        source: MapError::SyscallError(SyscallError {
            call: "bpf batch",
            io_error,
        }),
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
    std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()) as u32
}

/// The elements of `map`, in the map's order, up to about `limit` of them
/// (whole batches). `K` and `V` must be the map's key and value types.
pub fn read<K: aya::Pod, V: aya::Pod>(map: &MapData, limit: usize) -> std::io::Result<Vec<(K, V)>> {
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
        let more = batch_call(BPF_MAP_LOOKUP_BATCH, &mut attr)?;
        let read = attr.count as usize;
        elements.extend(
            keys[..read]
                .iter()
                .copied()
                .zip(values[..read].iter().copied()),
        );
        if !more || elements.len() >= limit {
            return Ok(elements);
        }
        position_in = position_out;
        first = false;
    }
}

/// Deletes `keys` from `map`, skipping any gone already; how many it
/// deleted.
pub fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> std::io::Result<u64> {
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    let fd = raw_fd(map);
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
        let complete = batch_call(BPF_MAP_DELETE_BATCH, &mut attr)?;
        let done = attr.count as usize;
        deleted += done as u64;
        // A key not found stops the call at it: skip it, go on after it.
        rest = &rest[if complete { chunk.len() } else { done + 1 }..];
    }
    Ok(deleted)
}

/// Writes `values[i]` at `keys[i]` in `map`, [`BATCH`] elements per call.
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = raw_fd(map);
    for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        batch_call(BPF_MAP_UPDATE_BATCH, &mut attr)?;
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
