//! Flow tracking in the kernel: the TC egress program that records the
//! flows the host starts, the table it fills, and what user space does
//! with it (settings, sweeping expired flows, counting evictions).
//!
//! The egress program is attached through TCX (Linux 6.6) and pinned
//! beside the XDP link, so it survives the daemon like the XDP program;
//! older kernels get a classic clsact filter at a fixed priority and
//! handle, which the kernel keeps without a pin and a restarted daemon
//! replaces in place.

use std::{os::fd::AsFd as _, path::Path};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    util::KernelVersion,
};
use firewall_common::{
    flow::{FlowConfig, FlowKey, FlowState, flow_stats},
    maps::names,
    wire::protocol,
};
use tracing::{info, warn};

use super::{Datapath, DatapathError, LinkError, batch, map_error};
use crate::{api::FlowTable, config::Config};

/// Name of the TC egress function in the object.
const EGRESS_PROGRAM: &str = "track_egress";
/// The classic filter's priority (runs after filters with a lower one) and
/// handle, on kernels without TCX.
const NETLINK_PRIORITY: u16 = 0xfc00;
const NETLINK_HANDLE: u32 = 0xfc11;

/// Whether this kernel has TCX links (Linux 6.6), which can be pinned and
/// updated atomically.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

/// The egress program, loaded into the kernel unless it is already.
pub(super) fn egress_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(EGRESS_PROGRAM)
        .ok_or(DatapathError::MissingProgram {
            name: EGRESS_PROGRAM,
        })?
        .try_into()
        .map_err(DatapathError::Program)?;
    if program.fd().is_err() {
        program.load().map_err(DatapathError::Program)?;
    }
    Ok(program)
}

/// Swaps `program` onto the TCX link pinned at `path`.
fn swap_onto(program: &mut SchedClassifier, path: &Path) -> Result<(), LinkError> {
    let pinned = PinnedLink::from_pin(path)?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
    let id = program.attach_to_link(link)?;
    drop(program.take_link(id)?);
    Ok(())
}

/// Attaches `program` to `interface`'s egress through TCX, after any other
/// program there, and pins the link at `path`.
fn attach_pinned(
    program: &mut SchedClassifier,
    interface: &str,
    path: &Path,
) -> Result<(), LinkError> {
    let id = program.attach_with_options(
        interface,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    FdLink::try_from(program.take_link(id)?)?.pin(path)?;
    Ok(())
}

/// Kernels without TCX: a clsact filter at a fixed priority and handle,
/// replaced in place when an earlier daemon left one.
fn attach_classic(program: &mut SchedClassifier, interface: &str) -> Result<(), LinkError> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {}
        Err(err) => return Err(ProgramError::from(err).into()),
    }
    let handle = TcHandle::from(NETLINK_HANDLE);
    let existing = SchedClassifierLink::attached(
        interface,
        TcAttachType::Egress,
        NETLINK_PRIORITY,
        handle,
        None,
    )?;
    let id = match program.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => program.attach_with_options(
            interface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                priority: NETLINK_PRIORITY,
                handle,
                classid: None,
            }),
        )?,
    };
    // The filter lives on the qdisc, not in this process: forget the
    // handle, whose drop would remove it.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Removes the classic egress filter of an older daemon or kernel from
/// `interface`; nothing to do where there is none.
pub fn remove_netlink_filter(interface: &str) {
    // An error means no such filter, no clsact qdisc or no interface:
    // nothing to remove either way.
    if tc::qdisc_detach_program(interface, TcAttachType::Egress, EGRESS_PROGRAM).is_ok() {
        info!(interface, "removed the TC egress filter");
    }
}

/// Copies the flows of `old` (a table of another size) into `new`, as many
/// as fit, so replies of connections in progress keep passing.
fn carry_flows(
    old: &MapData,
    new: &mut HashMap<&mut MapData, FlowKey, FlowState>,
) -> std::io::Result<usize> {
    Ok(batch::read(old)?
        .into_iter()
        .filter(|(key, state)| new.insert(key, state, 0).is_ok())
        .count())
}

/// A pinned flow table whose size is not `max_flows`: unpinned (the old
/// program keeps it until it is replaced) and returned, to be carried over
/// into the new table by [`carry_flows`].
pub(super) fn resized_table(pin: &Path, max_flows: u32) -> Option<MapData> {
    let (old, size) = pinned_table(pin)?;
    if size == max_flows {
        return None;
    }
    info!(from = size, to = max_flows, "resizing the flow table");
    std::fs::remove_file(pin)
        .inspect_err(|err| warn!(error = %err, "unpinning the old flow table failed"))
        .ok()?;
    Some(old)
}

/// Whether the flow table pinned at `pin` has another size than `max_flows`.
pub(super) fn resizes(pin: &Path, max_flows: u32) -> bool {
    pinned_table(pin).is_some_and(|(_, size)| size != max_flows)
}

/// The flow table pinned at `pin`, and its size.
fn pinned_table(pin: &Path) -> Option<(MapData, u32)> {
    let table = MapData::from_pin(pin).ok()?;
    let size = table.info().ok()?.max_entries();
    Some((table, size))
}

impl Datapath {
    /// Carries the flows of the table `old` was into the new one. If that
    /// fails, replies pass again once the host sends on their flows.
    pub(super) fn carry_flows_from(&mut self, old: MapData) -> Result<(), DatapathError> {
        let mut flows: HashMap<&mut MapData, FlowKey, FlowState> = self.map_mut(names::FLOWS)?;
        match carry_flows(&old, &mut flows) {
            Ok(carried) => info!(
                flows = carried,
                "carried tracked flows into the resized table"
            ),
            Err(err) => {
                warn!(error = %err, "carrying tracked flows into the resized table failed; each is tracked again from its next outgoing packet")
            }
        }
        Ok(())
    }

    /// Whether flows are tracked, and their timeouts: `FLOW_CONFIG`.
    fn set_flow_config(&mut self, config: FlowConfig) -> Result<(), DatapathError> {
        let mut map: aya::maps::Array<&mut MapData, FlowConfig> =
            self.map_mut(names::FLOW_CONFIG)?;
        map.set(0, config, 0)
            .map_err(map_error(names::FLOW_CONFIG))?;
        self.flow_config = config;
        Ok(())
    }

    /// Tracks flows on `config`'s interfaces as it says (`track_outbound`,
    /// `[flows]`). On: the egress program is attached everywhere before the
    /// XDP program is told to use the table, so no reply is judged by an
    /// empty one; an attach that fails leaves the settings as they were.
    /// Off: the XDP program stops using the table first, then the egress
    /// program goes and the table is emptied.
    pub fn set_tracking(&mut self, config: &Config) -> Result<(), DatapathError> {
        let settings = config.flows.data_plane(config.track_outbound);
        if config.track_outbound {
            for interface in &config.interfaces {
                self.track_egress(interface)?;
            }
            return self.set_flow_config(settings);
        }
        self.set_flow_config(settings)?;
        for interface in &config.interfaces {
            if let Err(err) = self.untrack_egress(interface) {
                warn!(interface, error = %err, "detaching the TC egress program failed");
            }
        }
        self.sweep_flows(true).map(drop)
    }

    /// Makes this daemon's egress program record the flows leaving
    /// `interface`: an earlier daemon's pinned link gets it swapped in,
    /// otherwise it is attached and pinned.
    pub fn track_egress(&mut self, interface: &str) -> Result<(), DatapathError> {
        let failed = |source: LinkError| DatapathError::Egress {
            interface: interface.to_string(),
            source,
        };
        let program = egress_program(self.programs.wait()?)?;
        if !has_tcx() {
            attach_classic(program, interface).map_err(failed)?;
            info!(
                interface,
                "attached the TC egress program (flow tracking, classic filter)"
            );
            return Ok(());
        }
        let path = self.pins.egress_link_path(interface);
        if path.exists() {
            match swap_onto(program, &path) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    warn!(interface, error = %err, "the pinned egress link cannot be reused; attaching anew");
                    self.pins
                        .remove_egress_link(interface)
                        .map_err(|err| failed(err.into()))?;
                }
            }
        }
        self.pins
            .prepare_link(interface)
            .map_err(|err| failed(err.into()))?;
        attach_pinned(program, interface, &path).map_err(failed)?;
        info!(interface, "attached the TC egress program (flow tracking)");
        Ok(())
    }

    /// Stops recording the flows leaving `interface`.
    fn untrack_egress(&self, interface: &str) -> std::io::Result<()> {
        remove_netlink_filter(interface);
        self.pins.remove_egress_link(interface)?;
        info!(interface, "detached the TC egress program");
        Ok(())
    }

    /// Deletes timed-out flows (every flow with `all`), and counts the rest.
    /// The kernel ignores timed-out flows already; deleting them keeps the
    /// table's room for live ones and makes evictions countable.
    pub fn sweep_flows(&mut self, all: bool) -> Result<FlowTable, DatapathError> {
        let now = crate::system::monotonic_ns();
        let config = self.flow_config;
        let mut table = FlowTable {
            capacity: self.max_flows,
            ..FlowTable::default()
        };
        let map = match self.maps.get(names::FLOWS) {
            Some(Map::LruHashMap(map)) => map,
            _ => {
                return Err(DatapathError::MissingMap { name: names::FLOWS });
            }
        };
        let mut expired = Vec::new();
        // Collected first: deleting while walking restarts the walk.
        for (key, state) in
            batch::read::<FlowKey, FlowState>(map).map_err(batch::error(names::FLOWS))?
        {
            if all || config.expired(key.protocol, &state, now) {
                expired.push(key);
                continue;
            }
            match key.protocol {
                protocol::TCP => table.tcp += 1,
                protocol::UDP => table.udp += 1,
                _ => table.icmp += 1,
            }
        }
        let deleted =
            batch::delete(map.fd().as_fd(), &expired).map_err(batch::error(names::FLOWS))?;
        let mut stats: PerCpuArray<&mut MapData, u64> = self.map_mut(names::FLOW_STATS)?;
        let per_cpu =
            |stats: &PerCpuArray<&mut MapData, u64>, index| -> Result<Vec<u64>, DatapathError> {
                Ok(stats
                    .get(&index, 0)
                    .map_err(map_error(names::FLOW_STATS))?
                    .iter()
                    .copied()
                    .collect())
            };
        for index in [
            flow_stats::CREATED_TCP,
            flow_stats::CREATED_UDP,
            flow_stats::CREATED_ICMP,
        ] {
            table.created += per_cpu(&stats, index)?.iter().sum::<u64>();
        }
        let mut swept = per_cpu(&stats, flow_stats::SWEPT)?;
        if deleted > 0 {
            swept[0] += deleted;
            let values = PerCpuValues::try_from(swept.clone()).map_err(DatapathError::Cpus)?;
            stats
                .set(flow_stats::SWEPT, values, 0)
                .map_err(map_error(names::FLOW_STATS))?;
        }
        table.evicted = table
            .created
            .saturating_sub(swept.iter().sum::<u64>())
            .saturating_sub(table.tcp + table.udp + table.icmp);
        Ok(table)
    }
}
