//! The blocked-traffic view. The XDP program sends samples of dropped
//! packets through a ring buffer, rate-limited by a per-CPU token bucket
//! that this module refills once a second; the samples are aggregated by
//! source, protocol, port, reason and interface for `firewall-ctl blocked`,
//! and streamed to `blocked --follow`.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use firewall_common::{
    maps::{BlockedSample, SampleBucket},
    reasons::Reason,
    wire::protocol,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, watch},
};
use tracing::warn;

use super::writer::PolicyStatus;
use crate::{
    api::{BlockedReport, BlockedSource},
    datapath::samples::{self, SampleMaps},
    entries::Timestamp,
};

/// Distinct (source, protocol, port, reason, interface) rows kept; past
/// it the least recently seen row makes room.
const MAX_ROWS: usize = 10_000;
/// Rows `blocked` reports in each list (the CLI shows `--top` of them).
const REPORTED_ROWS: usize = 100;
/// How often the token buckets are refilled: the rate is per second.
const REFILL_EVERY: Duration = Duration::from_secs(1);

type RowKey = (Option<IpAddr>, u8, u16, u8, u32);

#[derive(Clone, Copy)]
struct Row {
    samples: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
}

#[derive(Default)]
struct Table {
    rows: HashMap<RowKey, Row>,
    samples: u64,
    interfaces: HashMap<u32, String>,
}

/// The aggregated samples and the stream of new ones.
pub struct BlockedView {
    table: Mutex<Table>,
    events: broadcast::Sender<BlockedSource>,
}

impl Default for BlockedView {
    fn default() -> Self {
        Self {
            table: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl BlockedView {
    /// Adds one sample, seen at `now`.
    fn record(&self, sample: &BlockedSample, now: SystemTime) {
        let source = source_of(sample);
        let key = (
            source,
            sample.protocol,
            sample.port,
            sample.reason,
            sample.ifindex,
        );
        let mut table = self.table.lock().expect("not poisoned");
        table.samples += 1;
        if !table.rows.contains_key(&key) && table.rows.len() >= MAX_ROWS {
            table.evict_oldest();
        }
        let row = table.rows.entry(key).or_insert(Row {
            samples: 0,
            first_seen: now,
            last_seen: now,
        });
        row.samples += 1;
        row.last_seen = now;
        let row = *row;
        let source = table.describe(key, row);
        // Nobody following is fine.
        let _ = self.events.send(source);
    }

    /// Top sources by samples and the most recent ones.
    pub fn report(&self, sample_rate: u32) -> BlockedReport {
        let mut table = self.table.lock().expect("not poisoned");
        let mut rows: Vec<(RowKey, Row)> = table.rows.iter().map(|(k, r)| (*k, *r)).collect();
        rows.sort_by_key(|(key, row)| (std::cmp::Reverse(row.samples), *key));
        let top = rows
            .iter()
            .take(REPORTED_ROWS)
            .map(|(key, row)| table.describe(*key, *row))
            .collect();
        rows.sort_by_key(|(key, row)| (std::cmp::Reverse(row.last_seen), *key));
        let recent = rows
            .iter()
            .take(REPORTED_ROWS)
            .map(|(key, row)| table.describe(*key, *row))
            .collect();
        BlockedReport {
            samples: table.samples,
            sample_rate,
            top,
            recent,
        }
    }

    /// New blocked sources as they are sampled.
    pub fn subscribe(&self) -> broadcast::Receiver<BlockedSource> {
        self.events.subscribe()
    }
}

impl Table {
    /// Drops the least recently seen tenth of the rows: one scan per
    /// thousand new rows, so a flood of new sources costs little.
    fn evict_oldest(&mut self) {
        let mut by_age: Vec<(SystemTime, RowKey)> = self
            .rows
            .iter()
            .map(|(key, row)| (row.last_seen, *key))
            .collect();
        let cut = (by_age.len() / 10).max(1);
        by_age.select_nth_unstable(cut - 1);
        for (_, key) in &by_age[..cut] {
            self.rows.remove(key);
        }
    }

    fn describe(&mut self, key: RowKey, row: Row) -> BlockedSource {
        let (source, protocol_number, port, reason, ifindex) = key;
        BlockedSource {
            source,
            protocol: protocol_name(protocol_number),
            port: (matches!(protocol_number, protocol::TCP | protocol::UDP)).then_some(port),
            reason: Reason::ALL
                .get(reason as usize)
                .map_or_else(|| reason.to_string(), |reason| reason.name().to_string()),
            interface: self
                .interfaces
                .entry(ifindex)
                .or_insert_with(|| interface_name(ifindex))
                .clone(),
            samples: row.samples,
            first_seen: Timestamp(row.first_seen),
            last_seen: Timestamp(row.last_seen),
        }
    }
}

fn source_of(sample: &BlockedSample) -> Option<IpAddr> {
    match sample.family {
        4 => {
            let [a, b, c, d, ..] = sample.source;
            Some(IpAddr::from([a, b, c, d]))
        }
        6 => Some(IpAddr::from(sample.source)),
        _ => None,
    }
}

fn protocol_name(number: u8) -> String {
    match number {
        protocol::TCP => "tcp".to_string(),
        protocol::UDP => "udp".to_string(),
        protocol::ICMP => "icmp".to_string(),
        protocol::ICMPV6 => "icmpv6".to_string(),
        0 => "-".to_string(),
        other => other.to_string(),
    }
}

/// The name of interface `ifindex`, or its number if it is gone.
fn interface_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex).map_or_else(
        |_| format!("if{ifindex}"),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Reads samples from the pinned ring buffer under `maps_dir` into `view`,
/// and refills the token buckets from the live config's `sample_rate`,
/// until the daemon stops.
pub async fn run(
    maps_dir: &Path,
    view: Arc<BlockedView>,
    status: watch::Receiver<Arc<PolicyStatus>>,
) -> anyhow::Result<()> {
    let SampleMaps { ring, buckets } = samples::open(maps_dir)
        .with_context(|| format!("opening the drop samples in `{}`", maps_dir.display()))?;
    tokio::spawn(refill(buckets, status));
    // SAFETY: the ring buffer owns its descriptor, which stays open and
    // the same until the `AsyncFd` drops it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("watching the drop samples")?;
    loop {
        let mut ready = ring.readable_mut().await?;
        let now = SystemTime::now();
        while let Some(item) = ready.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<BlockedSample>() {
                // SAFETY: the program writes whole `BlockedSample`s; the
                // read is unaligned-safe.
                let sample =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<BlockedSample>()) };
                view.record(&sample, now);
            }
        }
        ready.clear_ready();
    }
}

/// Sets every CPU's bucket to `sample_rate` tokens (and as many for novel
/// sources) each second.
async fn refill(
    mut buckets: PerCpuArray<MapData, SampleBucket>,
    status: watch::Receiver<Arc<PolicyStatus>>,
) {
    let cpus = match aya::util::nr_cpus() {
        Ok(cpus) => cpus,
        Err((_, err)) => {
            warn!(error = %err, "counting CPUs failed; blocked traffic is not sampled");
            return;
        }
    };
    let mut ticks = tokio::time::interval(REFILL_EVERY);
    loop {
        ticks.tick().await;
        let rate = status.borrow().sample_rate;
        let bucket = SampleBucket {
            tokens: rate,
            novel_tokens: rate,
            ..SampleBucket::default()
        };
        let values = PerCpuValues::try_from(vec![bucket; cpus]).expect("one value per CPU");
        if let Err(err) = buckets.set(0, values, 0) {
            warn!(error = %err, "refilling the drop sample buckets failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(source: [u8; 4], port: u16, reason: Reason) -> BlockedSample {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&source);
        BlockedSample {
            source: bytes,
            ifindex: 1,
            port,
            protocol: protocol::TCP,
            reason: reason as u8,
            family: 4,
            pad: [0; 7],
        }
    }

    #[test]
    fn samples_aggregate_into_top_and_recent_sources() {
        let view = BlockedView::default();
        let mut follower = view.subscribe();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        for second in 0..5 {
            view.record(
                &sample([198, 51, 100, 7], 443, Reason::NotAllowlisted),
                start + Duration::from_secs(second),
            );
        }
        view.record(
            &sample([192, 0, 2, 9], 22, Reason::PortClosed),
            start + Duration::from_secs(2),
        );
        let report = view.report(100);
        assert_eq!(report.samples, 6);
        assert_eq!(report.top[0].source, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(report.top[0].samples, 5);
        assert_eq!(report.top[0].reason, "not_allowlisted");
        assert_eq!(report.top[0].port, Some(443));
        assert_eq!(report.top[1].source, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(report.recent[0].source, report.top[0].source);
        assert_eq!(follower.try_recv().unwrap().samples, 1);
    }

    #[test]
    fn a_full_table_drops_its_least_recently_seen_tenth() {
        let view = BlockedView::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        for n in 0..MAX_ROWS as u32 + 1 {
            let [a, b, c, d] = (0xc633_0000 + n).to_be_bytes();
            view.record(
                &sample([a, b, c, d], 443, Reason::NotAllowlisted),
                start + Duration::from_millis(u64::from(n)),
            );
        }
        let table = view.table.lock().unwrap();
        assert_eq!(table.rows.len(), MAX_ROWS - MAX_ROWS / 10 + 1);
        let oldest = table.rows.values().map(|row| row.last_seen).min().unwrap();
        assert_eq!(oldest, start + Duration::from_millis(MAX_ROWS as u64 / 10));
    }
}
