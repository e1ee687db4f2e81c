//! Real BPF maps for unit tests of the code that writes them (root only).

use std::os::fd::OwnedFd;

/// Whether the test runs as root; says it skips `test` if not.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED {test}: needs root (creates a BPF map)");
    }
    root
}

/// A new map of `map_type` (`BPF_MAP_TYPE_*`).
pub fn create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> OwnedFd {
    super::sys::map_create(map_type, key_size, value_size, max_entries, map_flags)
        .unwrap_or_else(|err| panic!("creating a BPF map: {err}"))
}
