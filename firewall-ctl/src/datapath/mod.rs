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

mod batch;
pub mod entry_counters;
#[cfg(test)]
pub mod fake;
pub mod flows;
mod mapped;
pub mod pins;
mod rows;
#[cfg(test)]
mod test_maps;

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use firewall_common::{
    limits::{MAX_ENTRY_COUNTERS, MAX_PORT_ENTRIES, MAX_RULES},
    maps::{
        ActivePolicy, Counter, EntryCounter, EntryRef, RuleSet, SourceValue, UNCOUNTED_ENTRY,
        names,
        rows::{
            self as table_rows, EntryRowV4, EntryRowV6, SPANS_PER_SLOT, SourceRowV4, SourceRowV6,
            Span, Table, V4_BUCKETS, span_index,
        },
        rule_stats_index,
    },
    reasons::{REASON_COUNT, Reason},
};
use tracing::{info, warn};

use self::{
    entry_counters::{EntryId, EntryIndexes, Holding},
    pins::{PinDir, PinDirError},
    rows::Cutter,
};
use crate::{
    api::AttachMode,
    config::{IpPrefix, XdpModeSetting, prefix::network_bits},
    policy::{CompiledPolicy, PolicyDiff, PrefixKey, PrefixTable, table::Node},
};

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

impl AttachMode {
    fn flags(self) -> XdpMode {
        match self {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// The program on one interface, kept attached by its pinned link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    /// Taken over from an earlier daemon (the program was swapped on its
    /// link), rather than attached now.
    pub adopted: bool,
}

impl XdpModeSetting {
    /// Whether a link attached in `mode` satisfies this setting.
    fn accepts(self, mode: AttachMode) -> bool {
        match self {
            XdpModeSetting::Auto => true,
            XdpModeSetting::Driver => mode == AttachMode::Driver,
            XdpModeSetting::Skb => mode == AttachMode::Skb,
        }
    }
}

/// Whether an attach failed because the interface already has an XDP program.
fn is_busy(error: &LinkError) -> bool {
    let LinkError::Program(error) = error else {
        return false;
    };
    let errno = match error {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(netlink)) => {
            netlink.raw_os_error()
        }
        _ => None,
    };
    matches!(errno, Some(libc::EBUSY | libc::EEXIST))
}

/// Counters read back from the kernel, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Per rule of the live policy, in config order, including what the
    /// same-named rule counted under earlier policies.
    pub rules: Vec<(String, Counter)>,
    /// Indexed by [`Reason`].
    pub reasons: Vec<Counter>,
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

/// Where a new policy may differ from the live one.
#[derive(Clone, Debug)]
pub enum Delta {
    /// At these keys only: what CLI edits change.
    Keys(PolicyDiff),
    /// Wherever it differs from this policy, the live one: a reload or
    /// feed update.
    From(Arc<CompiledPolicy>),
}

impl Delta {
    /// Whether `policy`, so changed, differs from the live policy.
    fn differs(&self, policy: &CompiledPolicy) -> bool {
        match self {
            Delta::Keys(keys) => keys.len() > 0,
            Delta::From(live) => **live != *policy,
        }
    }

    /// Whether `policy`, so changed, lists the same sources as the live
    /// policy in the family `v4` says, for the same rules (CLI edits never
    /// change the rules): then the family's rows are the same too.
    fn keeps_family(&self, policy: &CompiledPolicy, v4: bool) -> bool {
        match self {
            Delta::Keys(keys) if v4 => keys.v4.is_empty() && keys.v4_listings.is_empty(),
            Delta::Keys(keys) => keys.v6.is_empty() && keys.v6_listings.is_empty(),
            Delta::From(live) => {
                live.rule_names == policy.rule_names
                    && if v4 {
                        live.v4 == policy.v4
                    } else {
                        live.v6 == policy.v6
                    }
            }
        }
    }
}

/// Per address family, a flag.
#[derive(Clone, Copy, Debug)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    const NONE: Self = Self {
        v4: false,
        v6: false,
    };

    fn both(self) -> bool {
        self.v4 && self.v6
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
}

/// Reads what each entry of a policy admitted, away from the writer
/// ([`Datapath::usage_reader`]). An index freed after the reader was made
/// is given again only by a later change, once neither slot lists its
/// entry (a third of a second after it was removed, at the least): a
/// report that takes longer may credit that new entry's counts to the old
/// one.
pub struct EntryUsageReader {
    indexes: Arc<EntryIndexes>,
    /// The slot live when the reader was made; `None` before any was.
    live_slot: Option<u32>,
    entry_stats: std::os::fd::OwnedFd,
}

impl EntryUsageReader {
    /// A reader of a datapath with no live policy yet.
    #[cfg(test)]
    pub fn empty() -> Self {
        Self {
            indexes: Arc::default(),
            live_slot: None,
            entry_stats: std::fs::File::open("/dev/null").unwrap().into(),
        }
    }

    /// Reads the counters; the reader is spent, and its hold on the
    /// indexes let go.
    pub fn read(self) -> Result<Vec<EntryUsage>, DatapathError> {
        let Some(slot) = self.live_slot else {
            return Ok(Vec::new());
        };
        let mut listed: Vec<(&str, IpPrefix, u32)> = self.indexes.listed_in(slot).collect();
        listed.sort_unstable_by_key(|(_, _, index)| *index);
        let indexes: Vec<u32> = listed.iter().map(|(_, _, index)| *index).collect();
        let counters: Vec<EntryCounter> =
            mapped::load_sorted(self.entry_stats.as_fd(), &indexes)
                .map_err(batch::syscall_error(names::ENTRY_STATS, "mmap"))?;
        Ok(listed
            .into_iter()
            .zip(counters)
            .map(|((rule, prefix, index), counter)| EntryUsage {
                entry: EntryId {
                    rule: rule.to_string(),
                    prefix,
                },
                counter: (index != UNCOUNTED_ENTRY).then_some(counter),
            })
            .collect())
    }
}

/// What one entry admitted, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryUsage {
    pub entry: EntryId,
    /// `None`: the entry has no counter (the counters were full when it
    /// was listed).
    pub counter: Option<EntryCounter>,
}

/// Per-rule counters outlive policy changes and daemon restarts: a slot's
/// rule counters keep counting for the rule names written there, and only
/// when a slot gets other rule names (a reload that adds, removes or
/// reorders rules) are its counts folded into `retired`, by name. A rule's
/// total is what it has in `retired` plus what both slots count for it.
/// The daemon saves the ledger whenever it changes, so a restarted daemon,
/// adopting the same maps (`maps_id`), carries every rule's counts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterLedger {
    /// Id of the `ACTIVE` map: the ledger belongs to these maps only.
    pub maps_id: u32,
    /// Rule names of each slot's counters, in config order.
    pub slot_rules: [Vec<String>; 2],
    /// `(packets, bytes)` by rule name, from slots since given other rules.
    pub retired: BTreeMap<String, (u64, u64)>,
}

/// Has the kernel verify and load the XDP program of `ebpf`, and with
/// `track_flows` the egress program.
fn load_program(mut ebpf: Ebpf, track_flows: bool) -> Result<Ebpf, DatapathError> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(DatapathError::MissingProgram { name: PROGRAM_NAME })?
        .try_into()
        .map_err(DatapathError::Program)?;
    let verifying = Instant::now();
    program.load().map_err(DatapathError::Program)?;
    // How much work the kernel's verifier did: most of a small start.
    let verified_insns = program
        .info()
        .ok()
        .and_then(|info| info.verified_instruction_count());
    info!(program = PROGRAM_NAME, verified_insns, took = ?verifying.elapsed(), "loaded the XDP program");
    // The egress program here too, so that attaching it at start does not
    // wait for the verifier. A failure is left for `track_egress`, which
    // loads it again and reports the error in its context.
    if track_flows {
        let _ = flows::egress_program(&mut ebpf);
    }
    Ok(ebpf)
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// aya's program loader, made on a thread of its own: making one reads and
/// parses the kernel's BTF (`/sys/kernel/btf/vmlinux`, about 10 ms here),
/// which a start does while it reads its config instead of before it
/// creates the maps.
pub struct ProgramLoader(Option<std::thread::JoinHandle<EbpfLoader<'static>>>);

impl ProgramLoader {
    /// Starts making the loader.
    pub fn prepare() -> Self {
        Self(
            std::thread::Builder::new()
                .name("btf".into())
                .spawn(EbpfLoader::new)
                .ok(),
        )
    }

    /// The loader; made here if its thread could not start or panicked.
    fn take(self) -> EbpfLoader<'static> {
        self.0
            .and_then(|making| making.join().ok())
            .unwrap_or_default()
    }
}

impl Datapath {
    /// Loads the program into the kernel with `loader`, the maps pinned
    /// under `bpf_dir`: the maps an earlier daemon of the same layout left
    /// there (live policy, counters, flows), else new ones, with a flow
    /// table of `max_flows`. Nothing is attached yet; a new set of maps
    /// passes every packet until the first [`Datapath::switch`]. The kernel
    /// verifies the program meanwhile (and the egress program, with
    /// `track_flows`); a program it rejects fails the first
    /// [`Datapath::switch`] or attach, before anything is made live.
    pub fn load(
        loader: ProgramLoader,
        bpf_dir: &Path,
        max_flows: u32,
        track_flows: bool,
    ) -> Result<Self, DatapathError> {
        let pins = PinDir::open(bpf_dir)?;
        let resized = flows::resized_table(&pins.maps_dir().join(names::FLOWS), max_flows);
        let mut loader = loader.take();
        for name in names::ALL {
            loader.map_pin_path(name, pins.maps_dir().join(name));
        }
        loader.map_max_entries(names::FLOWS, max_flows);
        let mut ebpf = loader.load(PROGRAM).map_err(DatapathError::Object)?;
        // The maps' descriptors are in the programs' instructions already.
        let maps = names::ALL
            .iter()
            .map(|name| {
                let map = ebpf
                    .take_map(name)
                    .ok_or(DatapathError::MissingMap { name })?;
                Ok((*name, map))
            })
            .collect::<Result<_, DatapathError>>()?;
        let verifying = std::thread::Builder::new()
            .name("verifier".into())
            .spawn(move || load_program(ebpf, track_flows))
            .map_err(DatapathError::Verifier)?;
        let mut datapath = Self {
            maps,
            programs: Programs::Verifying(verifying),
            pins,
            active: ActivePolicy::default(),
            idle_holds_live: Families::NONE,
            ledger: CounterLedger::default(),
            ledger_changed: false,
            retiring_since: None,
            flow_config: Default::default(),
            max_flows,
            entry_indexes: Arc::default(),
            uncounted_warned: false,
        };
        if let Some(old) = resized {
            datapath.carry_flows_from(old)?;
        }
        let active: Array<&MapData, ActivePolicy> = datapath.map(names::ACTIVE)?;
        datapath.active = active.get(&0, 0).map_err(map_error(names::ACTIVE))?;
        datapath.ledger.maps_id = MapData::from_pin(datapath.pins.maps_dir().join(names::ACTIVE))
            .and_then(|map| map.info())
            .map_err(map_error(names::ACTIVE))?
            .id();
        Ok(datapath)
    }

    /// Whether [`Datapath::load`] with `max_flows` would replace the flow
    /// table pinned under `bpf_dir` with one of another size: a step that
    /// leaves the old program's flows behind, so that a start that fails
    /// later would lose the flows since.
    pub fn resizes_flow_table(bpf_dir: &Path, max_flows: u32) -> bool {
        PinDir::existing(bpf_dir)
            .is_some_and(|pins| flows::resizes(&pins.maps_dir().join(names::FLOWS), max_flows))
    }

    /// Takes over the counter ledger an earlier daemon saved, if it belongs
    /// to these maps, and with it the entries' counters; returns whether it
    /// did.
    pub fn restore_ledger(&mut self, ledger: CounterLedger) -> bool {
        let ours = self.adopted() && ledger.maps_id == self.ledger.maps_id;
        if ours {
            self.ledger = ledger;
            let adopted = self
                .adopt_entry_indexes::<V4>()
                .and_then(|()| self.adopt_entry_indexes::<V6>());
            match adopted {
                Ok(()) => Arc::make_mut(&mut self.entry_indexes).free_unheld(),
                Err(err) => {
                    // The firewall keeps enforcing either way; only the
                    // entries' counts start over.
                    warn!(error = %err, "reading back the per-entry counters failed; they start from zero");
                    self.entry_indexes = Arc::default();
                }
            }
        }
        ours
    }

    /// Reads back which index each entry of each slot counts in: from the
    /// source rows for the entries of each address's first rule, from the
    /// entry rows for the rest. A row's entry carries its prefix length,
    /// so the row's start cut to it is the entry's prefix. (An entry with
    /// no row, its prefix covered by longer ones of its rule, can never be
    /// credited: it is given a fresh counter.)
    fn adopt_entry_indexes<F: Family>(&mut self) -> Result<(), DatapathError> {
        for slot in 0..2 {
            let names = self.ledger.slot_rules[slot].clone();
            let spans = self.spans(slot as u32)?;
            let mut adopted: Vec<(u32, PrefixKey, u32)> = Vec::new();
            let entry = |start: u128, entry: EntryRef| {
                let len = entry.prefix_len();
                ((network_bits(start, len, F::WIDTH), len), entry.index())
            };
            let span = spans[F::span(None)];
            for row in self.rows::<F::SourceRow>(F::SOURCES, span)? {
                let (start, rules, first) = F::source_of(&row);
                if rules != 0 {
                    let (key, index) = entry(start, first);
                    adopted.push((rules.trailing_zeros(), key, index));
                }
            }
            for rule in 0..MAX_RULES as u32 {
                let span = spans[F::span(Some(rule))];
                for row in self.rows::<F::EntryRow>(F::ENTRIES, span)? {
                    let (start, found) = F::entry_of(&row);
                    let (key, index) = entry(start, found);
                    adopted.push((rule, key, index));
                }
            }
            adopted.sort_unstable();
            adopted.dedup();
            for (rule, key, index) in adopted {
                // An index past the counters (a damaged map) counts nowhere.
                if let Some(name) = names.get(rule as usize)
                    && index != UNCOUNTED_ENTRY
                    && index < MAX_ENTRY_COUNTERS
                {
                    Arc::make_mut(&mut self.entry_indexes).adopt(
                        name,
                        F::prefix(key),
                        slot as u32,
                        index,
                    );
                }
            }
        }
        Ok(())
    }

    /// The spans of `slot`, in `SPANS` order.
    fn spans(&self, slot: u32) -> Result<Vec<Span>, DatapathError> {
        let first = slot * SPANS_PER_SLOT;
        let indexes: Vec<u32> = (first..first + SPANS_PER_SLOT).collect();
        mapped::load_sorted(map_data(self, names::SPANS)?.fd().as_fd(), &indexes)
            .map_err(batch::syscall_error(names::SPANS, "mmap"))
    }

    /// The rows of `span` in the table `name`; none if the span lies
    /// outside it (a damaged map).
    fn rows<T: aya::Pod>(&self, name: &'static str, span: Span) -> Result<Vec<T>, DatapathError> {
        let Some(end) = span
            .first
            .checked_add(span.len)
            .filter(|end| *end <= table_rows::PER_MAP)
        else {
            return Ok(Vec::new());
        };
        let indexes: Vec<u32> = (span.first..end).collect();
        mapped::load_sorted(map_data(self, name)?.fd().as_fd(), &indexes)
            .map_err(batch::syscall_error(name, "mmap"))
    }

    /// The ledger, if it changed since the last call: to be saved.
    pub fn take_changed_ledger(&mut self) -> Option<CounterLedger> {
        std::mem::take(&mut self.ledger_changed).then(|| self.ledger.clone())
    }

    /// Where the maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.pins.maps_dir()
    }

    /// Whether the maps were adopted with a live policy in them.
    pub fn adopted(&self) -> bool {
        self.active.ready()
    }

    /// The XDP program; only once [`Programs::wait`] has it loaded.
    fn program(&mut self) -> &mut Xdp {
        match &mut self.programs {
            Programs::Loaded(ebpf) => ebpf
                .program_mut(PROGRAM_NAME)
                .and_then(|program| program.try_into().ok())
                .expect("loaded in load_program"),
            _ => unreachable!("the program is used only once it is loaded"),
        }
    }

    /// Makes this daemon's program run on `interface`, pinned. A link an
    /// earlier daemon pinned there in a mode `setting` accepts is kept and
    /// gets this program swapped in atomically; otherwise the program is
    /// attached (`Auto`: driver mode, else generic) and its link pinned.
    pub fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
    ) -> Result<Attachment, DatapathError> {
        self.programs.wait()?;
        if let Some((mode, path)) = self.pins.link_of(interface) {
            if !setting.accepts(mode) {
                warn!(interface, pinned = %mode, wanted = %setting, "the pinned link has another XDP mode; re-attaching (the interface is unprotected for a moment)");
            } else {
                match self.swap_program_on(&path) {
                    Ok(()) => {
                        info!(interface, %mode, "adopted the pinned XDP link; this daemon's program now runs on it");
                        return Ok(Attachment {
                            interface: interface.to_string(),
                            mode,
                            adopted: true,
                        });
                    }
                    Err(err) => {
                        warn!(interface, error = %err, "the pinned XDP link cannot be reused (was the interface recreated?); attaching anew")
                    }
                }
            }
            self.pins
                .remove_xdp_link(interface)
                .map_err(|source| DatapathError::Pin {
                    interface: interface.to_string(),
                    path: path.clone(),
                    source,
                })?;
        }
        let attempt = |datapath: &mut Self, mode: AttachMode| {
            datapath.attach_pinned(interface, mode).map_err(|source| {
                if is_busy(&source) {
                    DatapathError::Busy {
                        interface: interface.to_string(),
                    }
                } else {
                    DatapathError::Attach {
                        interface: interface.to_string(),
                        mode,
                        source,
                    }
                }
            })
        };
        let mode = match setting {
            XdpModeSetting::Driver => {
                attempt(self, AttachMode::Driver).map(|()| AttachMode::Driver)?
            }
            XdpModeSetting::Skb => attempt(self, AttachMode::Skb).map(|()| AttachMode::Skb)?,
            XdpModeSetting::Auto => match attempt(self, AttachMode::Driver) {
                Ok(()) => AttachMode::Driver,
                Err(err @ DatapathError::Busy { .. }) => return Err(err),
                Err(err) => {
                    warn!(interface, error = %err, "driver mode unavailable; falling back to generic (skb) mode, which is slower");
                    attempt(self, AttachMode::Skb)?;
                    AttachMode::Skb
                }
            },
        };
        info!(interface, %mode, "attached XDP program");
        Ok(Attachment {
            interface: interface.to_string(),
            mode,
            adopted: false,
        })
    }

    /// Detaches the programs from `interface` by unpinning their links.
    pub fn detach(&self, interface: &str) -> std::io::Result<()> {
        flows::remove_netlink_filter(interface);
        self.pins.remove_interface(interface)?;
        info!(interface, "detached XDP program");
        Ok(())
    }

    /// The kernel's id of this daemon's program: what `status` looks for
    /// on each interface.
    pub fn program_id(&mut self) -> Result<u32, DatapathError> {
        self.programs.wait()?;
        self.program()
            .info()
            .map(|info| info.id())
            .map_err(DatapathError::Program)
    }

    /// Attaches in `mode` through a BPF link and pins the link.
    fn attach_pinned(&mut self, interface: &str, mode: AttachMode) -> Result<(), LinkError> {
        let path = self.pins.link_path(interface, mode);
        self.pins.prepare_link(interface)?;
        let program = self.program();
        let id = program.attach(interface, mode.flags())?;
        let link = FdLink::try_from(program.take_link(id)?)?;
        // Our descriptor closes at the end of this function; the pin keeps
        // the link, and with it the program, attached.
        link.pin(&path)?;
        Ok(())
    }

    /// Replaces the program on the pinned link at `path` with this one:
    /// one `bpf_link_update`, so no packet goes unfiltered.
    fn swap_program_on(&mut self, path: &Path) -> Result<(), LinkError> {
        let pinned = PinnedLink::from_pin(path)?;
        let link = XdpLink::try_from(FdLink::from(pinned))?;
        let program = self.program();
        let id = program.attach_to_link(link)?;
        drop(program.take_link(id)?);
        Ok(())
    }

    /// Unpins links of interfaces that are not in `interfaces`, and maps of
    /// other layout versions (no link runs their program any more).
    pub fn remove_stale_pins(&self, interfaces: &[String]) {
        for interface in self.pins.interfaces() {
            if !interfaces.contains(&interface) {
                match self.detach(&interface) {
                    Ok(()) => info!(
                        interface,
                        "detached XDP program: the interface is no longer in the config"
                    ),
                    Err(err) => {
                        warn!(interface, error = %err, "unpinning the link of a removed interface failed")
                    }
                }
            }
        }
        for old in self.pins.other_layouts() {
            match std::fs::remove_dir_all(&old) {
                Ok(()) => info!(maps = %old.display(), "removed the maps of an older layout"),
                Err(err) => {
                    warn!(maps = %old.display(), error = %err, "removing the maps of an older layout failed")
                }
            }
        }
    }

    /// The slot that is not live (slot 0 before anything is live).
    fn idle_slot(&self) -> u32 {
        if self.active.ready() {
            1 - self.active.slot()
        } else {
            0
        }
    }

    /// Makes the idle slot hold exactly `policy`, which differs from the
    /// live policy where `changed` says: written whole, unless it already
    /// holds it. Nothing live is touched. Returns how many map entries
    /// (rows and ports) were written.
    pub fn write_idle(
        &mut self,
        policy: &CompiledPolicy,
        changed: Delta,
    ) -> Result<usize, DatapathError> {
        let held = self.idle_holds_live;
        if held.both() && !changed.differs(policy) {
            return Ok(0);
        }
        let slot = self.idle_slot();
        self.wait_for_retired_readers();
        // Per family, whether `policy` has the live rows: whichever slot is
        // live next, the two hold the same rows there.
        let unchanged = Families {
            v4: changed.keeps_family(policy, true),
            v6: changed.keeps_family(policy, false),
        };
        // A family the idle slot holds already is not written again: an
        // `allow` of one address writes the rows of its family only.
        let kept = Families {
            v4: held.v4 && unchanged.v4,
            v6: held.v6 && unchanged.v6,
        };
        // If the write fails halfway, the slot holds a mix.
        self.idle_holds_live = Families::NONE;
        let written = self.write_all(slot, policy, kept)?;
        if self.ledger.slot_rules[slot as usize] != policy.rule_names {
            self.give_rules(slot, &policy.rule_names)?;
        }
        self.idle_holds_live = unchanged;
        Ok(written)
    }

    /// Makes the idle slot, written by [`Datapath::write_idle`], live.
    pub fn switch(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        // Nothing goes live before the kernel has accepted the program
        // (an adopted firewall's old program reads these maps meanwhile).
        self.programs.wait()?;
        let slot = self.idle_slot();
        let was_live = self.active.ready();
        let active = ActivePolicy::new(slot, policy.enforce);
        let mut map: Array<&mut MapData, ActivePolicy> = self.map_mut(names::ACTIVE)?;
        map.set(0, active, 0).map_err(map_error(names::ACTIVE))?;
        self.active = active;
        if was_live {
            self.retiring_since = Some(Instant::now());
        } else {
            // The other slot has never been written.
            self.idle_holds_live = Families::NONE;
        }
        Ok(())
    }

    /// Whether the idle slot may differ from the live policy:
    /// [`Datapath::prepare_idle`] makes it hold the live policy, which
    /// releases the counters of entries only it still listed.
    pub fn idle_lags(&self) -> bool {
        !self.idle_holds_live.both()
    }

    /// Writes the live `policy` into the idle slot too.
    pub fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        self.write_idle(policy, Delta::Keys(PolicyDiff::default()))?;
        // Both slots list the same entries now: the fewest there will be
        // until the next change.
        Arc::make_mut(&mut self.entry_indexes).shrink();
        Ok(())
    }

    /// Waits, if the last switch was recent, until no packet can still be
    /// using the slot it retired: XDP runs inside an RCU read-side section.
    fn wait_for_retired_readers(&mut self) {
        if let Some(since) = self.retiring_since.take()
            && since.elapsed() < RETIRE_GRACE
            && !crate::system::wait_for_rcu_readers()
        {
            std::thread::sleep(RETIRE_FALLBACK_WAIT);
        }
    }

    /// Makes `slot`'s rule counters count for `rules`: what they counted
    /// for the slot's old rules is folded into `retired` by name first.
    fn give_rules(&mut self, slot: u32, rules: &[String]) -> Result<(), DatapathError> {
        for (name, counter) in self.slot_rule_counters(slot)? {
            let total = self.ledger.retired.entry(name).or_default();
            total.0 += counter.packets;
            total.1 += counter.bytes;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| DatapathError::Cpus(err))?;
        let mut stats: PerCpuArray<&mut MapData, Counter> = self.map_mut(names::RULE_STATS)?;
        for rule in 0..MAX_RULES as u32 {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])
                .map_err(DatapathError::Cpus)?;
            stats
                .set(rule_stats_index(slot, rule), zeros, 0)
                .map_err(map_error(names::RULE_STATS))?;
        }
        self.ledger.slot_rules[slot as usize] = rules.to_vec();
        self.ledger_changed = true;
        Ok(())
    }

    /// Makes `slot`'s maps hold exactly `policy`, given that they hold its
    /// rows of the families in `kept` already; returns how many rows and
    /// ports were written.
    fn write_all(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        kept: Families,
    ) -> Result<usize, DatapathError> {
        let mut spans = if kept.v4 || kept.v6 {
            self.spans(slot)?
        } else {
            vec![Span::default(); SPANS_PER_SLOT as usize]
        };
        let mut written = 0;
        if !kept.v4 {
            written += self.write_family::<V4>(slot, policy, &mut spans)?;
        }
        if !kept.v6 {
            written += self.write_family::<V6>(slot, policy, &mut spans)?;
        }
        let first_span = slot * SPANS_PER_SLOT;
        mapped::store_run(
            map_data(self, names::SPANS)?.fd().as_fd(),
            first_span,
            &spans,
        )
        .map_err(batch::syscall_error(names::SPANS, "mmap"))?;
        let name = names::PORTS;
        let mut rules: Vec<RuleSet> = vec![0; MAX_PORT_ENTRIES as usize];
        for (key, exposing) in &policy.ports {
            if let Some(index) = key.index() {
                rules[index as usize] = *exposing;
            }
        }
        mapped::store_run(
            map_data(self, name)?.fd().as_fd(),
            slot * MAX_PORT_ENTRIES,
            &rules,
        )
        .map_err(batch::syscall_error(name, "mmap"))?;
        Ok(written + policy.ports.len())
    }

    /// Writes one family of `policy` into `slot`: its source rows, and the
    /// entry rows of the rules in its [`PrefixTable::later_rules`]; their
    /// spans go into `spans` (the slot's, from its first). Holds a counter
    /// for every entry the family lists and releases the slot's others.
    /// Returns how many rows were written.
    fn write_family<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        spans: &mut [Span],
    ) -> Result<usize, DatapathError> {
        let table = F::table(policy);
        let entry_rules = table.later_rules();
        let mut given = Vec::new();
        // Per rule with entry rows: its listings and their counters, in
        // key order.
        let mut listings: Vec<Vec<(PrefixKey, EntryRef)>> = vec![Vec::new(); MAX_RULES];
        Arc::make_mut(&mut self.entry_indexes).unlist_family(slot, F::V4);
        let mut sources = RowWriter::new(owned_fd(self, F::SOURCES)?, F::SOURCES, slot);
        // IPv4 row starts, for the buckets.
        let mut starts: Vec<u32> = Vec::new();
        let mut push_source = |sources: &mut RowWriter<F::SourceRow>, start: u128, value| {
            if F::V4 {
                starts.push(start as u32);
            }
            sources.push(F::source_row(start, value))
        };
        let mut cutter = Cutter::new(F::WIDTH);
        for (key, own, node) in table.listed() {
            let first_rule = node.rules.trailing_zeros();
            let mut first_index = None;
            for rule in crate::policy::rule_indexes(own) {
                let name = &policy.rule_names[rule as usize];
                let index = self.hold_entry(name, F::prefix(key), slot, &mut given);
                if rule == first_rule {
                    first_index = Some(index);
                }
                if entry_rules & (1 << rule) != 0 {
                    listings[rule as usize].push((key, EntryRef::new(index, key.1)));
                }
            }
            let value = self.node_value::<F>(slot, policy, key, node, first_index, &mut given);
            cutter.add(
                key,
                (node.rules, EntryRef::new(value.entry, node.first_len)),
            );
            for (start, value) in cutter.drain() {
                push_source(&mut sources, start, value)?;
            }
            if given.len() >= WRITE_CHUNK {
                self.reset_entry_counters(&mut given)?;
                given.clear();
            }
        }
        for (start, value) in cutter.finish() {
            push_source(&mut sources, start, value)?;
        }
        self.reset_entry_counters(&mut given)?;
        Arc::make_mut(&mut self.entry_indexes).free_unlisted(F::V4);
        let mut written = sources.len();
        let span = sources.finish()?;
        spans[F::span(None)] = span;
        if F::V4 {
            let name = names::SOURCE_BUCKETS_V4;
            let buckets = rows::v4_buckets(&starts, span.first);
            mapped::store_run(
                map_data(self, name)?.fd().as_fd(),
                slot * V4_BUCKETS,
                &buckets,
            )
            .map_err(batch::syscall_error(name, "mmap"))?;
            written += buckets.len();
        }
        let mut entries = RowWriter::new(owned_fd(self, F::ENTRIES)?, F::ENTRIES, slot);
        for (rule, listings) in listings.into_iter().enumerate() {
            let first = entries.len();
            let mut cutter = Cutter::new(F::WIDTH);
            for (key, entry) in listings {
                cutter.add(key, entry);
                for (start, entry) in cutter.drain() {
                    entries.push(F::entry_row(start, entry))?;
                }
            }
            for (start, entry) in cutter.finish() {
                entries.push(F::entry_row(start, entry))?;
            }
            spans[F::span(Some(rule as u32))] = entries.span_since(first);
        }
        written += entries.len();
        entries.finish()?;
        Ok(written)
    }

    /// [`Datapath::source_value`], given `own_entry`, the index just held
    /// for `key`'s own listing by the node's first rule, if any: usually
    /// the entry the node credits, so no second lookup.
    fn node_value<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        key: PrefixKey,
        node: Node,
        own_entry: Option<u32>,
        given: &mut Vec<u32>,
    ) -> SourceValue {
        match own_entry {
            Some(entry) if node.first_len == key.1 => source_value(node, entry),
            _ => self.source_value::<F>(slot, policy, key, node, given),
        }
    }

    /// The source value of `node`: its rules, and the counter of the entry the
    /// first of them credits.
    fn source_value<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        key: PrefixKey,
        node: Node,
        given: &mut Vec<u32>,
    ) -> SourceValue {
        let rule = &policy.rule_names[node.rules.trailing_zeros() as usize];
        let first = F::table(policy).first_entry(key, node);
        source_value(node, self.hold_entry(rule, F::prefix(first), slot, given))
    }

    /// The counter index of `rule`'s `prefix` in `slot`; newly given ones
    /// are added to `given`.
    fn hold_entry(&mut self, rule: &str, prefix: IpPrefix, slot: u32, given: &mut Vec<u32>) -> u32 {
        let holding = Arc::make_mut(&mut self.entry_indexes).hold(rule, prefix, slot);
        match holding {
            Holding::Given(index) => given.push(index),
            Holding::Full if !self.uncounted_warned => {
                self.uncounted_warned = true;
                warn!(rule, %prefix, capacity = MAX_ENTRY_COUNTERS - 1, "per-entry counters are full: this entry and later ones are not counted per entry (rule counters still count them)");
            }
            _ => {}
        }
        holding.index()
    }

    /// Starts the counters at `indexes` from zero, counting from now.
    fn reset_entry_counters(&mut self, indexes: &mut [u32]) -> Result<(), DatapathError> {
        if indexes.is_empty() {
            return Ok(());
        }
        let fresh = EntryCounter {
            listed_at: crate::system::monotonic_ns(),
            ..EntryCounter::default()
        };
        let map = map_data(self, names::ENTRY_STATS)?.fd().as_fd();
        mapped::store_at(map, indexes, fresh)
            .map_err(batch::syscall_error(names::ENTRY_STATS, "mmap"))
    }

    /// A reader of what each entry of the live policy admitted, as of now,
    /// for another thread: it holds the entries' indexes (the writer copies
    /// them before its next change while the reader lives) and the counter
    /// map.
    pub fn usage_reader(&self) -> Result<EntryUsageReader, DatapathError> {
        let entry_stats = map_data(self, names::ENTRY_STATS)?
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(batch::syscall_error(names::ENTRY_STATS, "dup"))?;
        Ok(EntryUsageReader {
            indexes: Arc::clone(&self.entry_indexes),
            live_slot: self.active.ready().then(|| self.active.slot()),
            entry_stats,
        })
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .maps
            .get_mut(name)
            .ok_or(DatapathError::MissingMap { name })?;
        M::try_from(map).map_err(map_error(name))
    }

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self
            .maps
            .get(name)
            .ok_or(DatapathError::MissingMap { name })?;
        M::try_from(map).map_err(map_error(name))
    }

    /// Per-rule counters of `slot`, by the names of the rules they count for.
    fn slot_rule_counters(&self, slot: u32) -> Result<Vec<(String, Counter)>, DatapathError> {
        let stats: PerCpuArray<&MapData, Counter> = self.map(names::RULE_STATS)?;
        self.ledger.slot_rules[slot as usize]
            .iter()
            .enumerate()
            .map(|(rule, name)| {
                let values = stats
                    .get(&rule_stats_index(slot, rule as u32), 0)
                    .map_err(map_error(names::RULE_STATS))?;
                Ok((name.clone(), sum(values.iter())))
            })
            .collect()
    }

    /// Current counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let stats: PerCpuArray<&MapData, Counter> = self.map(names::REASON_STATS)?;
        let reasons = (0..REASON_COUNT)
            .map(|index| {
                stats
                    .get(&index, 0)
                    .map(|values| sum(values.iter()))
                    .map_err(map_error(names::REASON_STATS))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut totals: BTreeMap<String, Counter> = self
            .ledger
            .retired
            .iter()
            .map(|(name, (packets, bytes))| {
                let counter = Counter {
                    packets: *packets,
                    bytes: *bytes,
                };
                (name.clone(), counter)
            })
            .collect();
        for slot in 0..2 {
            for (name, counter) in self.slot_rule_counters(slot)? {
                *totals.entry(name).or_default() += counter;
            }
        }
        let rules = if self.active.ready() {
            self.ledger.slot_rules[self.active.slot() as usize]
                .iter()
                .map(|name| (name.clone(), totals.get(name).copied().unwrap_or_default()))
                .collect()
        } else {
            Vec::new()
        };
        debug_assert_eq!(reasons.len(), Reason::ALL.len());
        Ok(Counters { rules, reasons })
    }
}

/// One address family's tables and row encodings.
trait Family {
    /// Bits in an address.
    const WIDTH: u8 = <Self::Bits as crate::policy::Bits>::WIDTH;
    const V4: bool = Self::WIDTH == 32;
    const SOURCES: &'static str;
    const ENTRIES: &'static str;
    type SourceRow: aya::Pod;
    type EntryRow: aya::Pod;
    /// How this family's policy table keeps network bits.
    type Bits: crate::policy::Bits;
    /// This family's table of `policy`.
    fn table(policy: &CompiledPolicy) -> &PrefixTable<Self::Bits>;
    fn prefix(key: PrefixKey) -> IpPrefix;
    /// A source row: from `start`, `value`'s rules and the entry their
    /// first credits, or none.
    fn source_row(start: u128, value: Option<(RuleSet, EntryRef)>) -> Self::SourceRow;
    fn entry_row(start: u128, entry: Option<EntryRef>) -> Self::EntryRow;
    /// A source row's start, rules and entry.
    fn source_of(row: &Self::SourceRow) -> (u128, RuleSet, EntryRef);
    fn entry_of(row: &Self::EntryRow) -> (u128, EntryRef);

    /// Index within a slot's spans of this family's source table, or of
    /// `rule`'s entry table.
    fn span(rule: Option<u32>) -> usize {
        let table = match rule {
            None => Table::Sources { v4: Self::V4 },
            Some(rule) => Table::Entries { v4: Self::V4, rule },
        };
        span_index(0, table).expect("rules are fewer than MAX_RULES") as usize
    }
}

struct V4;
struct V6;

impl Family for V4 {
    const SOURCES: &'static str = names::SOURCES_V4;
    const ENTRIES: &'static str = names::ENTRIES_V4;
    type SourceRow = SourceRowV4;
    type EntryRow = EntryRowV4;
    type Bits = u32;

    fn table(policy: &CompiledPolicy) -> &PrefixTable<u32> {
        &policy.v4
    }

    fn prefix(key: PrefixKey) -> IpPrefix {
        IpPrefix::V4 {
            address: (key.0 as u32).into(),
            len: key.1,
        }
    }

    fn source_row(start: u128, value: Option<(RuleSet, EntryRef)>) -> SourceRowV4 {
        let (rules, entry) = value.unwrap_or_default();
        SourceRowV4 {
            start: start as u32,
            entry: entry.0,
            rules,
        }
    }

    fn entry_row(start: u128, entry: Option<EntryRef>) -> EntryRowV4 {
        EntryRowV4 {
            start: start as u32,
            entry: entry.unwrap_or_default().0,
        }
    }

    fn source_of(row: &SourceRowV4) -> (u128, RuleSet, EntryRef) {
        (row.start.into(), row.rules, EntryRef(row.entry))
    }

    fn entry_of(row: &EntryRowV4) -> (u128, EntryRef) {
        (row.start.into(), EntryRef(row.entry))
    }
}

impl Family for V6 {
    const SOURCES: &'static str = names::SOURCES_V6;
    const ENTRIES: &'static str = names::ENTRIES_V6;
    type SourceRow = SourceRowV6;
    type EntryRow = EntryRowV6;
    type Bits = [u64; 2];

    fn table(policy: &CompiledPolicy) -> &PrefixTable<[u64; 2]> {
        &policy.v6
    }

    fn prefix(key: PrefixKey) -> IpPrefix {
        IpPrefix::V6 {
            address: key.0.into(),
            len: key.1,
        }
    }

    fn source_row(start: u128, value: Option<(RuleSet, EntryRef)>) -> SourceRowV6 {
        let (rules, entry) = value.unwrap_or_default();
        SourceRowV6 {
            start: halves(start),
            rules,
            entry: entry.0,
            pad: 0,
        }
    }

    fn entry_row(start: u128, entry: Option<EntryRef>) -> EntryRowV6 {
        EntryRowV6 {
            start: halves(start),
            entry: entry.unwrap_or_default().0,
            pad: 0,
        }
    }

    fn source_of(row: &SourceRowV6) -> (u128, RuleSet, EntryRef) {
        (whole(row.start), row.rules, EntryRef(row.entry))
    }

    fn entry_of(row: &EntryRowV6) -> (u128, EntryRef) {
        (whole(row.start), EntryRef(row.entry))
    }
}

/// An IPv6 row start's halves, high first.
fn halves(start: u128) -> [u64; 2] {
    [(start >> 64) as u64, start as u64]
}

fn whole([high, low]: [u64; 2]) -> u128 {
    (u128::from(high) << 64) | u128::from(low)
}

/// Rows of one table of one slot, stored a chunk at a time from the
/// slot's first row.
struct RowWriter<T> {
    map: OwnedFd,
    name: &'static str,
    /// Index in the map of the slot's first row.
    first: u32,
    stored: u32,
    chunk: Vec<T>,
}

impl<T: aya::Pod> RowWriter<T> {
    fn new(map: OwnedFd, name: &'static str, slot: u32) -> Self {
        Self {
            map,
            name,
            first: slot * table_rows::PER_SLOT,
            stored: 0,
            chunk: Vec::new(),
        }
    }

    /// Rows so far.
    fn len(&self) -> usize {
        self.stored as usize + self.chunk.len()
    }

    fn push(&mut self, row: T) -> Result<(), DatapathError> {
        if self.len() >= table_rows::PER_SLOT as usize {
            return Err(DatapathError::TableFull {
                name: self.name,
                max: table_rows::PER_SLOT,
            });
        }
        self.chunk.push(row);
        if self.chunk.len() >= WRITE_CHUNK {
            self.store()?;
        }
        Ok(())
    }

    /// The rows from the `from`th so far.
    fn span_since(&self, from: usize) -> Span {
        Span {
            first: self.first + from as u32,
            len: (self.len() - from) as u32,
        }
    }

    fn store(&mut self) -> Result<(), DatapathError> {
        mapped::store_run(self.map.as_fd(), self.first + self.stored, &self.chunk)
            .map_err(batch::syscall_error(self.name, "mmap"))?;
        self.stored += self.chunk.len() as u32;
        self.chunk.clear();
        Ok(())
    }

    /// Stores the last rows; returns the span of all.
    fn finish(mut self) -> Result<Span, DatapathError> {
        self.store()?;
        Ok(self.span_since(0))
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a Counter>) -> Counter {
    values.fold(Counter::default(), |mut total, value| {
        total += *value;
        total
    })
}

/// The kernel object behind the map `name`.
fn map_data<'a>(datapath: &'a Datapath, name: &'static str) -> Result<&'a MapData, DatapathError> {
    use aya::maps::Map;
    match datapath.maps.get(name) {
        Some(Map::Array(data) | Map::LruHashMap(data)) => Ok(data),
        _ => Err(DatapathError::MissingMap { name }),
    }
}

/// The source value of `node`, whose first rule credits the counter at
/// `entry`.
fn source_value(node: Node, entry: u32) -> SourceValue {
    SourceValue {
        rules: node.rules,
        entry,
        pad: 0,
    }
}

/// A descriptor of the map `name` of its own, kept while the map is written.
fn owned_fd(datapath: &Datapath, name: &'static str) -> Result<OwnedFd, DatapathError> {
    map_data(datapath, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(batch::error(name))
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
    const HELPERS_IN_5_15: [(i32, &str); 7] = [
        (1, "bpf_map_lookup_elem, Linux 3.19"),
        (2, "bpf_map_update_elem, Linux 3.19"),
        (5, "bpf_ktime_get_ns, Linux 4.1"),
        (39, "bpf_skb_pull_data, Linux 4.9"),
        (131, "bpf_ringbuf_reserve, Linux 5.8"),
        (132, "bpf_ringbuf_submit, Linux 5.8"),
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
