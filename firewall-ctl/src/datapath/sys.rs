//! Every raw `bpf()` system call, for what aya 0.14 has no wrapper for:
//! batch map reads and deletes (Linux 5.6), getting a pinned object and
//! detaching a link through it (5.9), and for the unit tests, creating a
//! map. Each command takes its `union bpf_attr`, declared here as far as
//! used; the rest of the data plane calls these, never `syscall` itself.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

#[cfg(test)]
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` of `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH`.
#[repr(C)]
#[derive(Default)]
pub struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// `bpf(cmd, attr)`: the kernel's non-negative answer, or its error.
///
/// # Safety
/// `attr` is the `union bpf_attr` of `cmd`, and every buffer it points to
/// is sized for the call and outlives it.
unsafe fn bpf<A>(cmd: libc::c_long, attr: *mut A) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises.
    let result = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, std::mem::size_of::<A>()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// A batch command (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`) on
/// `attr`; `Ok(false)` for `ENOENT`: the end of the map for a batch read
/// (with `attr.count` saying how many elements the call handled), a key not
/// found for a delete.
///
/// # Safety
/// The buffers `attr` points to hold `attr.count` keys (and values) of the
/// map's sizes.
pub unsafe fn batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<bool> {
    // SAFETY: a batch attr, its buffers as the caller promises.
    match unsafe { bpf(cmd, std::ptr::from_mut(attr)) } {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(error) => Err(error),
    }
}

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // pathname, bpf_fd, file_flags.
    let mut attr = [0u64; 2];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: the attribute points at a NUL-terminated path that outlives
    // the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &raw mut attr)? };
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_DETACH`: the kernel detaches `link` at once, under the RTNL
/// lock.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // link_fd.
    let mut attr = [link.as_raw_fd() as u32];
    // SAFETY: a plain attribute.
    unsafe { bpf(BPF_LINK_DETACH, &raw mut attr) }.map(drop)
}

/// `union bpf_attr` of `BPF_MAP_CREATE`, as far as used.
#[cfg(test)]
#[repr(C)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `BPF_MAP_CREATE`: a new map of `map_type` (`BPF_MAP_TYPE_*`).
#[cfg(test)]
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
    };
    // SAFETY: a create attr, no pointers.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &raw mut attr)? };
    // SAFETY: a descriptor just returned to us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
