//! The drop samples' maps, opened from their pins for the daemon's reader
//! of blocked traffic: the ring buffer the XDP program sends samples on,
//! and the per-CPU token buckets that rate-limit them.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use firewall_common::maps::{SampleBucket, names};

use super::{DatapathError, map_error};

/// The ring buffer the samples arrive on, and the buckets to refill.
pub struct SampleMaps {
    pub ring: RingBuf<MapData>,
    pub buckets: PerCpuArray<MapData, SampleBucket>,
}

/// Opens the sample maps pinned in `maps_dir`.
pub fn open(maps_dir: &Path) -> Result<SampleMaps, DatapathError> {
    let pinned =
        |name: &'static str| MapData::from_pin(maps_dir.join(name)).map_err(map_error(name));
    let ring = RingBuf::try_from(Map::RingBuf(pinned(names::BLOCKED_SAMPLES)?))
        .map_err(map_error(names::BLOCKED_SAMPLES))?;
    let buckets = PerCpuArray::try_from(Map::PerCpuArray(pinned(names::SAMPLE_BUCKETS)?))
        .map_err(map_error(names::SAMPLE_BUCKETS))?;
    Ok(SampleMaps { ring, buckets })
}
