//! Real BPF maps for unit tests of the code that writes them (root only).

use std::os::fd::OwnedFd;

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
