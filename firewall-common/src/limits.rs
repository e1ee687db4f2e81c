//! Capacities of the data plane. User space checks a policy against these
//! before touching any map, so an oversized policy is an error, not a
//! half-applied update.

/// Rules are a bit set in a `u64` (see [`crate::maps::RuleSet`]).
pub const MAX_RULES: usize = 64;

/// Listed prefixes per address family and per policy slot; their rows
/// (see [`crate::maps::rows`]) are twice as many at most.
pub const MAX_PREFIXES_PER_FAMILY: u32 = 262_144;

/// Ports of one protocol: a slot's part of `PORTS` holds TCP's, then UDP's.
pub const PORTS_PER_PROTOCOL: u32 = 65_536;

/// `(protocol, port)` entries per policy slot: every TCP and UDP port.
pub const MAX_PORT_ENTRIES: u32 = 2 * PORTS_PER_PROTOCOL;

/// 802.1Q / 802.1ad tags parsed before the frame is called malformed.
pub const MAX_VLAN_DEPTH: usize = 2;

/// IPv6 extension headers walked before the packet is called malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Size of the flow table unless the config's `max_flows` says otherwise.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;

/// Policy slots: one live, one being written (see [`crate::maps::ActivePolicy`]).
pub const POLICY_SLOTS: u32 = 2;

/// Per-entry counters (`ENTRY_STATS`), shared by every CPU and both policy
/// slots: as many as both slots can list prefixes, so that a new
/// list as large as a slot counts every entry while the old one is still
/// held (index 0, never given, aside: see [`crate::maps::UNCOUNTED_ENTRY`]).
/// A power of two: without CAP_PERFMON the kernel rounds an array up to
/// one, which one more entry would double to 80 MiB.
pub const MAX_ENTRY_COUNTERS: u32 = POLICY_SLOTS * 2 * MAX_PREFIXES_PER_FAMILY;

/// Bytes of the ring buffer that carries blocked-traffic samples to user
/// space: 8192 samples of 32 bytes plus their 8-byte headers, rounded up
/// to a power of two.
pub const SAMPLE_RING_BYTES: u32 = 512 * 1024;
