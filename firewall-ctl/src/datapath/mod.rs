//! The only code that touches the kernel: loads the XDP program, attaches
//! it, writes policies into its maps and reads its counters back.
//!
//! A policy is applied double-buffered: the idle slot's maps are made equal
//! to the new policy, then one write to `ACTIVE` makes that slot live. A
//! packet sees the whole old or the whole new policy; if writing the idle
//! slot fails, the live slot was never touched.
//!
//! The prefixes are written as interval tables ([`rows`]): rows a binary
//! search in the data plane finds, stored through a memory mapping, a
//! slot's table at a time. A new 250k-prefix list costs the time to cut it
//! into rows and copy them, not a syscall and a kernel allocation per
//! prefix; a change that leaves the policy as it is writes nothing.
//!
//! Each source row also names the counter of the entry its first rule
//! credits, and each rule's entry table names its own entries'; the
//! counters' indexes are kept stable per entry ([`entry_counters`]).
//!
//! Maps and links are pinned under `bpf_dir` ([`pins`]): the program stays
//! attached and enforcing when the daemon stops or crashes, and the next
//! daemon adopts it: same maps, its own program swapped onto the links
//! atomically, its policy written into the idle slot and switched once.

mod attach;
mod batch;
mod counters;
pub mod entry_counters;
#[cfg(test)]
pub mod fake;
pub mod flows;
mod load;
mod mapped;
pub mod pins;
pub mod program_log;
mod rows;
pub mod samples;
mod slots;
mod sys;
#[cfg(test)]
mod test_maps;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, MapError},
    programs::ProgramError,
};
use firewall_common::maps::ActivePolicy;

use self::slots::Families;
pub use self::{
    attach::Attachment,
    counters::{CounterLedger, Counters, EntryUsage, EntryUsageReader},
    load::ProgramLoader,
    slots::Delta,
};
use self::{
    entry_counters::EntryIndexes,
    pins::{PinDir, PinDirError},
};
use crate::{api::AttachMode, config::XdpModeSetting, policy::CompiledPolicy};

/// The XDP object built by `build.rs`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));

/// Name of the XDP function in the object.
const PROGRAM_NAME: &str = "firewall";

/// Rows stored at a time: what a write holds in memory besides the policy.
const WRITE_CHUNK: usize = 65_536;

/// After this long, no packet can still be using a slot that was retired:
/// XDP runs to completion within microseconds, and an RCU grace period
/// (which bounds them) takes milliseconds. Only a change that follows the
/// previous one more closely waits, for an actual grace period.
const RETIRE_GRACE: Duration = Duration::from_millis(1000);
/// The wait where the kernel cannot wait for a grace period (`nohz_full`).
const RETIRE_FALLBACK_WAIT: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    PinDir(#[from] PinDirError),
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("pinning the link of `{interface}` at `{}` failed: {source}", path.display())]
    Pin {
        interface: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel rejected the XDP program: {0}")]
    Program(#[source] ProgramError),
    #[error(
        "another XDP program is already attached to `{interface}`; firewall-ctl does not replace it: see it with `ip link show {interface}`, remove it (`ip link set dev {interface} xdp off`, or stop the tool that attached it), then start again"
    )]
    Busy { interface: String },
    #[error("attaching XDP to `{interface}` in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: LinkError,
    },
    #[error("attaching the flow tracking program to `{interface}` (TC egress) failed: {source}")]
    Egress {
        interface: String,
        #[source]
        source: LinkError,
    },
    #[error("program `{name}` is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map `{name}` is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("loading the XDP program on a thread of its own failed: {0}")]
    Verifier(#[source] std::io::Error),
    #[error("counting CPUs failed: {0}")]
    Cpus(#[source] std::io::Error),
    #[error(
        "map `{name}` cannot hold this policy's rows ({max} a slot): list fewer prefixes, or fewer that overlap across rules"
    )]
    TableFull { name: &'static str, max: u32 },
}

/// A step of attaching, pinning or adopting a link that failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What the policy writer asks of the kernel: [`Datapath`], or in the
/// writer's tests an in-memory data plane that can be made to fail at each
/// step. A change goes [`DataPlane::write_idle`] then
/// [`DataPlane::switch`]; nothing live changes before the switch.
pub trait DataPlane: Send {
    /// See [`Datapath::write_idle`].
    fn write_idle(
        &mut self,
        policy: &CompiledPolicy,
        changed: Delta,
    ) -> Result<usize, DatapathError>;
    /// See [`Datapath::switch`].
    fn switch(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError>;
    /// Makes `policy` live atomically: written into the idle slot, then
    /// switched; on error the previous policy stays live. Returns how
    /// many map entries were written.
    fn apply(&mut self, policy: &CompiledPolicy, changed: Delta) -> Result<usize, DatapathError> {
        let written = self.write_idle(policy, changed)?;
        self.switch(policy)?;
        Ok(written)
    }
    /// See [`Datapath::idle_lags`].
    fn idle_lags(&self) -> bool;
    /// See [`Datapath::prepare_idle`].
    fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError>;
    /// See [`Datapath::take_changed_ledger`].
    fn take_changed_ledger(&mut self) -> Option<CounterLedger>;
    /// See [`Datapath::attach`].
    fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
    ) -> Result<Attachment, DatapathError>;
    /// See [`Datapath::detach`].
    fn detach(&self, interface: &str) -> std::io::Result<()>;
    /// See [`Datapath::set_tracking`].
    fn set_tracking(&mut self, config: &crate::config::Config) -> Result<(), DatapathError>;
    /// See [`Datapath::track_egress`].
    fn track_egress(&mut self, interface: &str) -> Result<(), DatapathError>;
    /// See [`Datapath::sweep_flows`].
    fn sweep_flows(&mut self, all: bool) -> Result<crate::api::FlowTable, DatapathError>;
    /// See [`Datapath::counters`].
    fn counters(&self) -> Result<Counters, DatapathError>;
    /// See [`Datapath::usage_reader`].
    fn usage_reader(&self) -> Result<EntryUsageReader, DatapathError>;
}

impl DataPlane for Datapath {
    fn write_idle(
        &mut self,
        policy: &CompiledPolicy,
        changed: Delta,
    ) -> Result<usize, DatapathError> {
        Datapath::write_idle(self, policy, changed)
    }
    fn switch(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        Datapath::switch(self, policy)
    }
    fn idle_lags(&self) -> bool {
        Datapath::idle_lags(self)
    }
    fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        Datapath::prepare_idle(self, policy)
    }
    fn take_changed_ledger(&mut self) -> Option<CounterLedger> {
        Datapath::take_changed_ledger(self)
    }
    fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
    ) -> Result<Attachment, DatapathError> {
        Datapath::attach(self, interface, setting)
    }
    fn detach(&self, interface: &str) -> std::io::Result<()> {
        Datapath::detach(self, interface)
    }
    fn set_tracking(&mut self, config: &crate::config::Config) -> Result<(), DatapathError> {
        Datapath::set_tracking(self, config)
    }
    fn track_egress(&mut self, interface: &str) -> Result<(), DatapathError> {
        Datapath::track_egress(self, interface)
    }
    fn sweep_flows(&mut self, all: bool) -> Result<crate::api::FlowTable, DatapathError> {
        Datapath::sweep_flows(self, all)
    }
    fn counters(&self) -> Result<Counters, DatapathError> {
        Datapath::counters(self)
    }
    fn usage_reader(&self) -> Result<EntryUsageReader, DatapathError> {
        Datapath::usage_reader(self)
    }
}

/// The eBPF object's programs. The kernel verifies the XDP program on a
/// thread of its own at load, while the daemon writes the policy into the
/// maps: the two took about as long.
enum Programs {
    Verifying(std::thread::JoinHandle<Result<Ebpf, DatapathError>>),
    Loaded(Ebpf),
    /// The verification failed; its error was returned once.
    Failed,
}

impl Programs {
    /// The programs, once the kernel has verified the XDP program: waits
    /// for it if it still verifies.
    fn wait(&mut self) -> Result<&mut Ebpf, DatapathError> {
        if let Programs::Verifying(_) = self
            && let Programs::Verifying(verifying) = std::mem::replace(self, Programs::Failed)
        {
            let loaded = verifying.join().unwrap_or_else(|_| {
                Err(DatapathError::Verifier(std::io::Error::other(
                    "the thread loading the XDP program stopped",
                )))
            })?;
            *self = Programs::Loaded(loaded);
        }
        match self {
            Programs::Loaded(ebpf) => Ok(ebpf),
            _ => Err(DatapathError::Verifier(std::io::Error::other(
                "the XDP program failed to load (see the first error)",
            ))),
        }
    }
}

pub struct Datapath {
    /// The maps, taken out of the eBPF object at load, by name: written
    /// while the kernel verifies the programs.
    maps: HashMap<&'static str, aya::maps::Map>,
    programs: Programs,
    pins: PinDir,
    active: ActivePolicy,
    /// Per family, whether the idle slot holds the live policy's rows,
    /// with its rules: false until known (a write that failed halfway
    /// leaves a mix). Families the last change left alone stay held.
    idle_holds_live: Families,
    /// Which rule each slot's counters count for, and what rules counted
    /// before their slot was given other rules.
    ledger: CounterLedger,
    /// Set when `ledger` changed: the caller saves it (see
    /// [`Datapath::take_changed_ledger`]).
    ledger_changed: bool,
    /// When the idle slot stopped being live: until a grace period has
    /// passed, a packet may still be reading it.
    retiring_since: Option<Instant>,
    /// What `FLOW_CONFIG` holds.
    flow_config: firewall_common::flow::FlowConfig,
    /// Size of the flow table.
    max_flows: u32,
    /// The `ENTRY_STATS` index of each entry either slot lists; shared
    /// with the readers of [`Datapath::usage_reader`] (copied on write
    /// while one holds it).
    entry_indexes: Arc<EntryIndexes>,
    /// Whether the warning that `ENTRY_STATS` is full was logged.
    uncounted_warned: bool,
    /// The reader of this load's programs' diagnostic events, until the
    /// daemon takes it.
    program_log: Option<program_log::ProgramLog>,
}

impl Datapath {
    /// The reader of the programs' diagnostic events, for the daemon to
    /// forward them ([`program_log::forward`]); once.
    pub fn take_program_log(&mut self) -> Option<program_log::ProgramLog> {
        self.program_log.take()
    }

    pub(super) fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .maps
            .get_mut(name)
            .ok_or(DatapathError::MissingMap { name })?;
        M::try_from(map).map_err(map_error(name))
    }

    pub(super) fn map<'a, M>(&'a self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self
            .maps
            .get(name)
            .ok_or(DatapathError::MissingMap { name })?;
        M::try_from(map).map_err(map_error(name))
    }
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The kernel object behind the map `name`.
fn map_data<'a>(datapath: &'a Datapath, name: &'static str) -> Result<&'a MapData, DatapathError> {
    use aya::maps::Map;
    match datapath.maps.get(name) {
        Some(Map::Array(data) | Map::LruHashMap(data)) => Ok(data),
        _ => Err(DatapathError::MissingMap { name }),
    }
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

    use super::PROGRAM;

    /// The maps of layout version 7: name, type, key size, value size,
    /// max entries, flags (from the object's `bpf_map_def`s). Version 1
    /// had no flow maps and 11 reasons; version 2 had no entry tries,
    /// entry counters or drop samples, and source tries held a bare
    /// `RuleSet`; up to version 3 `PORTS` were hash maps, and in version 4
    /// one array per slot; up to version 5 `ENTRY_STATS` had half the
    /// entries, and it and `PORTS` could not be mmapped; up to version 6
    /// sources and entries were LPM tries, one per slot.
    const LAYOUT_7: [(&str, u32, u32, u32, u32, u32); 17] = [
        ("ACTIVE", 2, 4, 4, 1, 0),
        ("BLOCKED_SAMPLES", 27, 0, 0, 524_288, 0),
        ("ENTRIES_V4", 2, 4, 8, 1_048_576, 1024),
        ("ENTRIES_V6", 2, 4, 24, 1_048_576, 1024),
        ("ENTRY_STATS", 2, 4, 40, 1_048_576, 1024),
        ("FLOWS", 9, 40, 16, 65_536, 0),
        ("FLOW_CONFIG", 2, 4, 40, 1, 0),
        ("FLOW_KEY_SCRATCH", 6, 4, 40, 1, 0),
        ("FLOW_STATS", 6, 4, 8, 4, 0),
        ("PORTS", 2, 4, 8, 262_144, 1024),
        ("REASON_STATS", 6, 4, 16, 14, 0),
        ("RULE_STATS", 6, 4, 16, 128, 0),
        ("SAMPLE_BUCKETS", 6, 4, 24, 1, 0),
        ("SOURCES_V4", 2, 4, 16, 1_048_576, 1024),
        ("SOURCES_V6", 2, 4, 32, 1_048_576, 1024),
        ("SOURCE_BUCKETS_V4", 2, 4, 8, 131_072, 1024),
        ("SPANS", 2, 4, 8, 260, 1024),
    ];

    /// Maps each load of the programs makes afresh, never pinned nor
    /// adopted, so outside the layout: the aya-log ring of the programs'
    /// diagnostic events and the per-CPU counts that space them out.
    const UNPINNED: [(&str, u32, u32, u32, u32, u32); 2] = [
        ("AYA_LOGS", 27, 0, 0, 131_072, 0),
        ("DIAGNOSTICS", 6, 4, 8, 3, 0),
    ];

    /// A daemon adopts pinned maps of its own layout version only, so any
    /// change to a map must come with a new version: this fails until it does.
    #[test]
    fn the_map_layout_matches_its_version() {
        let object = object::File::parse(PROGRAM).expect("the embedded object is ELF");
        let section = object.section_by_name("maps").expect("a maps section");
        let data = section.data().unwrap();
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let mut maps: Vec<(&str, u32, u32, u32, u32, u32)> = object
            .symbols()
            .filter(|symbol| symbol.section_index() == Some(section.index()))
            .map(|symbol| {
                let at = symbol.address() as usize - section.address() as usize;
                (
                    symbol.name().unwrap(),
                    word(at),
                    word(at + 4),
                    word(at + 8),
                    word(at + 12),
                    word(at + 16),
                )
            })
            .collect();
        maps.sort();
        let (unpinned, maps): (Vec<_>, Vec<_>) = maps
            .into_iter()
            .partition(|map| UNPINNED.iter().any(|(name, ..)| *name == map.0));
        assert_eq!(unpinned, UNPINNED);
        assert_eq!(
            firewall_common::maps::LAYOUT_VERSION,
            7,
            "record the new version's layout in this test"
        );
        assert_eq!(
            maps, LAYOUT_7,
            "the maps changed: bump firewall_common::maps::LAYOUT_VERSION and record the new layout here"
        );
        let mut names: Vec<&str> = firewall_common::maps::names::ALL.to_vec();
        names.sort();
        assert_eq!(
            names,
            LAYOUT_7.map(|map| map.0),
            "names::ALL lists every map"
        );
    }

    /// Helpers the data plane (XDP and TC programs) may call, each in Linux
    /// 5.15 (the LTS floor edge hosts run). Add one only after checking the
    /// kernel it arrived in.
    const HELPERS_IN_5_15: [(i32, &str); 8] = [
        (1, "bpf_map_lookup_elem, Linux 3.19"),
        (2, "bpf_map_update_elem, Linux 3.19"),
        (5, "bpf_ktime_get_ns, Linux 4.1"),
        (39, "bpf_skb_pull_data, Linux 4.9"),
        (131, "bpf_ringbuf_reserve, Linux 5.8"),
        (132, "bpf_ringbuf_submit, Linux 5.8"),
        (133, "bpf_ringbuf_discard, Linux 5.8"),
        (160, "bpf_ktime_get_coarse_ns, Linux 5.11"),
    ];

    const BPF_CALL: u8 = 0x85;
    const SRC_HELPER: u8 = 0;
    const SRC_LOCAL_FUNCTION: u8 = 1;

    #[test]
    fn every_program_calls_only_helpers_available_in_linux_5_15() {
        let object = object::File::parse(PROGRAM).expect("the embedded object is ELF");
        let mut calls = 0;
        for section in object
            .sections()
            .filter(|section| section.kind() == SectionKind::Text)
        {
            let code = section.data().unwrap();
            for instruction in code.chunks_exact(8) {
                if instruction[0] != BPF_CALL {
                    continue;
                }
                let source = instruction[1] >> 4;
                let id = i32::from_le_bytes(instruction[4..8].try_into().unwrap());
                match source {
                    SRC_HELPER => assert!(
                        HELPERS_IN_5_15.iter().any(|(allowed, _)| *allowed == id),
                        "section {:?} calls helper {id}: check it exists in Linux 5.15, then list it",
                        section.name()
                    ),
                    SRC_LOCAL_FUNCTION => {}
                    // 2 is a kfunc: none is stable across LTS kernels.
                    other => panic!(
                        "section {:?} makes a call of kind {other} (kfunc?)",
                        section.name()
                    ),
                }
                calls += 1;
            }
        }
        assert!(
            calls > 0,
            "no calls found: the scan is not reading the program"
        );
    }
}
