//! Real BPF maps for unit tests of the code that writes them (root only).

use std::os::fd::{FromRawFd as _, OwnedFd};

/// Whether the test runs as root; says it skips `test` if not.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root (creates a BPF map)");
    }
    root
}

/// `union bpf_attr` of `BPF_MAP_CREATE`, as far as used.
#[repr(C)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// A new map of `map_type` (`BPF_MAP_TYPE_*`).
pub fn create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> OwnedFd {
    const BPF_MAP_CREATE: libc::c_long = 0;
    let attr = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
    };
    // SAFETY: a create attr; the kernel returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const attr,
            std::mem::size_of::<CreateAttr>(),
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just returned to us, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}
