//! The only code that touches the kernel: loads the XDP program, attaches
//! it, writes policies into its maps and reads its counters back.
//!
//! A policy is applied double-buffered: the idle slot's maps are made equal
//! to the new policy, then one write to `ACTIVE` makes that slot live. A
//! packet sees the whole old or the whole new policy; if writing the idle
//! slot fails, the live slot was never touched.
//!
//! Only what differs is written: the datapath knows where the idle slot
//! may differ from the live policy (its *lag*, a [`Delta`]: the keys of the
//! last edit, or the whole policy it still holds after a reload), so a
//! change writes those keys plus its own, not the whole policy. A
//! one-prefix `allow` on a 250k-prefix policy is a few syscalls; a reload
//! walks the old and new policies side by side and writes where they
//! differ, without collecting those keys.
//!
//! Each source trie entry also names the counter of the entry its first
//! rule credits, and the entry tries (rule, prefix) name the others'; the
//! counters' indexes are kept stable per entry ([`entry_counters`]).
//!
//! Maps and links are pinned under `bpf_dir` ([`pins`]): the program stays
//! attached and enforcing when the daemon stops or crashes, and the next
//! daemon adopts it: same maps, its own program swapped onto the links
//! atomically, its policy written into the idle slot and switched once.

mod background;
mod batch;
pub mod entry_counters;
pub mod flows;
mod mapped;
pub mod pins;
#[cfg(test)]
mod test_maps;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
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
        ActivePolicy, Counter, EntryCounter, PortKey, RuleSet, SourceValue, UNCOUNTED_ENTRY,
        entry_key_len, names, rule_stats_index,
    },
    reasons::{REASON_COUNT, Reason},
};
use tracing::{info, warn};

use self::{
    background::{TrieWrites, with_trie_writes},
    entry_counters::{EntryId, EntryIndexes, Holding},
    pins::{PinDir, PinDirError},
};
use crate::{
    config::{IpPrefix, XdpModeSetting},
    policy::{self, CompiledPolicy, Listing, PolicyDiff, PrefixKey, PrefixTable, table::Node},
};

/// The XDP object built by `build.rs`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));

/// Name of the XDP function in the object.
const PROGRAM_NAME: &str = "firewall";

/// Map elements built at a time when a change writes many, and handed to
/// a writing thread: it starts on the first chunk while the next are built.
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
    #[error("counting CPUs failed: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("starting a thread to write the maps failed: {0}")]
    Thread(#[source] std::io::Error),
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

/// The XDP mode an interface actually runs in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Driver,
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        })
    }
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

/// Where a slot's maps may differ from a policy written over them.
#[derive(Clone, Debug)]
pub enum Delta {
    /// At these keys only: what CLI edits change.
    Keys(PolicyDiff),
    /// Wherever this policy, which the slot holds, differs from the new
    /// one: a reload or feed update, whose changed keys (millions for a new
    /// list) are found by walking both policies as they are written, never
    /// collected.
    From(Arc<CompiledPolicy>),
}

impl Delta {
    /// Whether anything may differ.
    fn may_differ(&self) -> bool {
        match self {
            Delta::Keys(keys) => keys.len() > 0,
            Delta::From(_) => true,
        }
    }
}

/// The keys to write into a slot to make it hold a policy: where the
/// policy differs from `from`, plus `keys`.
struct Stale<'a> {
    from: Option<&'a CompiledPolicy>,
    keys: Option<Cow<'a, PolicyDiff>>,
}

impl<'a> Stale<'a> {
    /// For an idle slot that differs from the live policy where `lag`
    /// says, and a new policy that differs from the live one where
    /// `changed` says.
    fn new(lag: &'a Delta, changed: &'a Delta) -> Self {
        match (lag, changed) {
            // The slot holds `held` exactly: whatever changed since is
            // where it differs from `held`.
            (Delta::From(held), _) => Self {
                from: Some(held),
                keys: None,
            },
            (Delta::Keys(lag), Delta::From(live)) => Self {
                from: Some(live),
                keys: Some(Cow::Borrowed(lag)),
            },
            // Either diff alone is used as it is: a union copies both.
            (Delta::Keys(lag), Delta::Keys(changed)) => Self {
                from: None,
                keys: Some(match (lag.len(), changed.len()) {
                    (0, _) => Cow::Borrowed(changed),
                    (_, 0) => Cow::Borrowed(lag),
                    _ => Cow::Owned(lag.union(changed)),
                }),
            },
        }
    }

    /// The trie keys of family `F` to write, in key order.
    fn nodes<F: Family>(&self, policy: &'a CompiledPolicy) -> impl Iterator<Item = PrefixKey> + '_ {
        union_sorted(
            self.from
                .into_iter()
                .flat_map(|from| policy::changed_nodes(F::table(from), F::table(policy))),
            self.keys
                .iter()
                .flat_map(|keys| F::keys(keys).0.iter().copied()),
        )
    }

    /// The entry trie listings of family `F` to write, in key order.
    fn listings<F: Family>(
        &self,
        policy: &'a CompiledPolicy,
    ) -> impl Iterator<Item = Listing> + '_ {
        union_sorted(
            self.from
                .into_iter()
                .flat_map(|from| policy::changed_listings(F::table(from), F::table(policy))),
            self.keys
                .iter()
                .flat_map(|keys| F::keys(keys).1.iter().copied()),
        )
    }

    /// The port keys to write.
    fn ports(&self, policy: &CompiledPolicy) -> BTreeSet<PortKey> {
        let mut ports = self
            .from
            .map(|from| policy::changed_ports(from, policy))
            .unwrap_or_default();
        if let Some(keys) = &self.keys {
            ports.extend(keys.ports.iter().copied());
        }
        ports
    }
}

/// The items of two ascending iterators, ascending, each once.
fn union_sorted<T: Ord>(
    one: impl Iterator<Item = T>,
    other: impl Iterator<Item = T>,
) -> impl Iterator<Item = T> {
    let (mut one, mut other) = (one.peekable(), other.peekable());
    std::iter::from_fn(move || match (one.peek(), other.peek()) {
        (Some(a), Some(b)) if a < b => one.next(),
        (Some(a), Some(b)) if b < a => other.next(),
        (Some(_), Some(_)) => {
            other.next();
            one.next()
        }
        (Some(_), None) => one.next(),
        (None, _) => other.next(),
    })
}

pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
    active: ActivePolicy,
    /// Where the idle slot may differ from the live policy; `None` when
    /// anywhere (nothing written yet, or a write failed halfway).
    idle_lag: Option<Delta>,
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
    /// The `ENTRY_STATS` index of each entry either slot lists.
    entry_indexes: EntryIndexes,
    /// Whether the warning that `ENTRY_STATS` is full was logged.
    uncounted_warned: bool,
    /// The rules whose listings each slot's entry tries hold
    /// ([`CompiledPolicy::entry_rules`]); `None` when unknown.
    slot_entry_rules: [Option<RuleSet>; 2],
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

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Datapath {
    /// Loads the program into the kernel with the maps pinned under
    /// `bpf_dir`: the maps an earlier daemon of the same layout left there
    /// (live policy, counters, flows), else new ones, with a flow table of
    /// `max_flows`. Nothing is attached yet; a new set of maps passes every
    /// packet until the first [`Datapath::switch`].
    pub fn load(bpf_dir: &Path, max_flows: u32) -> Result<Self, DatapathError> {
        let pins = PinDir::open(bpf_dir)?;
        let paths: Vec<(&str, PathBuf)> = names::ALL
            .iter()
            .map(|name| (*name, pins.maps_dir().join(name)))
            .collect();
        let resized = flows::resized_table(&pins.maps_dir().join(names::FLOWS), max_flows);
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(names::FLOWS, max_flows);
        let mut ebpf = loader.load(PROGRAM).map_err(DatapathError::Object)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DatapathError::MissingProgram { name: PROGRAM_NAME })?
            .try_into()
            .map_err(DatapathError::Program)?;
        program.load().map_err(DatapathError::Program)?;
        let mut datapath = Self {
            ebpf,
            pins,
            active: ActivePolicy::default(),
            idle_lag: None,
            ledger: CounterLedger::default(),
            ledger_changed: false,
            retiring_since: None,
            flow_config: Default::default(),
            max_flows,
            entry_indexes: EntryIndexes::default(),
            uncounted_warned: false,
            slot_entry_rules: [None; 2],
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
                Ok(()) => self.entry_indexes.free_unheld(),
                Err(err) => {
                    // The firewall keeps enforcing either way; only the
                    // entries' counts start over.
                    warn!(error = %err, "reading back the per-entry counters failed; they start from zero");
                    self.entry_indexes = EntryIndexes::default();
                }
            }
        }
        ours
    }

    /// Reads back which index each entry of each slot counts in: from the
    /// source trie for the entries of each prefix's first rule (an entry is
    /// the shortest prefix naming its index), from the entry trie for the
    /// rest.
    fn adopt_entry_indexes<F: Family>(&mut self) -> Result<(), DatapathError> {
        for slot in 0..2 {
            let names = self.ledger.slot_rules[slot].clone();
            let mut firsts: HashMap<u32, (u8, u128, u32)> = HashMap::new();
            for (key, value) in trie_elements::<F::Bytes, SourceValue>(self, F::SOURCES[slot])? {
                let (bits, len) = F::source_prefix(&key);
                let rule = value.rules.trailing_zeros();
                let shortest = firsts.entry(value.entry).or_insert((len, bits, rule));
                if len < shortest.0 {
                    *shortest = (len, bits, rule);
                }
            }
            let mut adopted: Vec<(u32, PrefixKey, u32)> = firsts
                .into_iter()
                .map(|(index, (len, bits, rule))| (rule, (bits, len), index))
                .collect();
            for (key, index) in trie_elements::<F::EntryBytes, u32>(self, F::ENTRIES[slot])? {
                let (rule, prefix) = F::entry_listing(&key);
                adopted.push((u32::from(rule), prefix, index));
            }
            for (rule, key, index) in adopted {
                // An index past the counters (a damaged map) counts nowhere.
                if let Some(name) = names.get(rule as usize)
                    && index != UNCOUNTED_ENTRY
                    && index < MAX_ENTRY_COUNTERS
                {
                    self.entry_indexes
                        .adopt(name, F::prefix(key), slot as u32, index);
                }
            }
        }
        Ok(())
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

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|program| program.try_into().ok())
            .expect("loaded in Datapath::load")
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

    /// Makes `policy` live atomically: [`Datapath::write_idle`] then
    /// [`Datapath::switch`]. On error the previous policy stays live.
    /// Returns how many map entries were written.
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        changed: Delta,
    ) -> Result<usize, DatapathError> {
        let written = self.write_idle(policy, changed)?;
        // Not switched, the idle slot holds `policy`, where a
        // [`Delta::From`] lag says it holds the live one: rewritten whole
        // next time.
        self.switch(policy).inspect_err(|_| self.idle_lag = None)?;
        Ok(written)
    }

    /// Makes the idle slot hold exactly `policy`, which differs from the
    /// live policy where `changed` says. Nothing live is touched; if the
    /// caller then does not switch, the next write still knows where the
    /// idle slot may differ, for [`Delta::Keys`] (the keys where two
    /// policies differ, whichever of them the slot holds); a
    /// [`Delta::From`] change goes through [`Datapath::apply`]. Returns how
    /// many map entries were written.
    pub fn write_idle(
        &mut self,
        policy: &CompiledPolicy,
        changed: Delta,
    ) -> Result<usize, DatapathError> {
        let slot = self.idle_slot();
        self.wait_for_retired_readers();
        let lag = self.idle_lag.take();
        // Entries are named by rule: a slot whose rules had other names or
        // positions, or whose entry tries hold other rules, is rewritten
        // whole.
        let entry_rules = policy.entry_rules();
        let same_rules = self.ledger.slot_rules[slot as usize] == policy.rule_names
            && self.slot_entry_rules[slot as usize] == Some(entry_rules);
        self.slot_entry_rules[slot as usize] = None;
        let result = match &lag {
            Some(lag) if same_rules => self.write_keys(slot, policy, &Stale::new(lag, &changed)),
            _ => self.write_all(slot, policy),
        };
        // If the write failed halfway, the slot holds a mix: `idle_lag`
        // stays `None`, so the next write rewrites it whole.
        let written = result?;
        if self.ledger.slot_rules[slot as usize] != policy.rule_names {
            self.give_rules(slot, &policy.rule_names)?;
        }
        self.slot_entry_rules[slot as usize] = Some(entry_rules);
        self.idle_lag = Some(changed);
        Ok(written)
    }

    /// Makes the idle slot, written by [`Datapath::write_idle`], live. The
    /// slot that was live becomes idle and differs from the new live policy
    /// exactly where the idle write did.
    pub fn switch(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
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
            self.idle_lag = None;
        }
        Ok(())
    }

    /// Whether the idle slot differs from the live policy (or may):
    /// [`Datapath::prepare_idle`] brings it up to date ahead of the next
    /// change.
    pub fn idle_lags(&self) -> bool {
        self.idle_lag.as_ref().is_none_or(Delta::may_differ)
            || self.slot_entry_rules[self.idle_slot() as usize].is_none()
    }

    /// Writes the live `policy` into the idle slot too, so the next change
    /// writes only its diff.
    pub fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        self.write_idle(policy, Delta::Keys(PolicyDiff::default()))?;
        // Both slots list the same entries now: the fewest there will be
        // until the next change.
        self.entry_indexes.shrink();
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

    /// Writes `policy`'s value (or its absence) at each key of `stale`;
    /// returns how many.
    fn write_keys(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        stale: &Stale<'_>,
    ) -> Result<usize, DatapathError> {
        let entry_rules = policy.entry_rules();
        let written = with_trie_writes(|writes| {
            Ok(
                self.write_family_keys::<V4>(slot, policy, entry_rules, stale, writes)?
                    + self.write_family_keys::<V6>(slot, policy, entry_rules, stale, writes)?,
            )
        })?;
        let name = names::PORTS;
        let mut ports: Array<&mut MapData, RuleSet> = self.map_mut(name)?;
        let stale_ports = stale.ports(policy);
        for key in &stale_ports {
            if let Some(index) = key.slot_index(slot) {
                let rules = policy.ports.get(key).copied().unwrap_or(0);
                ports.set(index, rules, 0).map_err(map_error(name))?;
            }
        }
        Ok(written + stale_ports.len())
    }

    /// Makes `slot`'s maps hold exactly `policy`, whatever they held;
    /// returns how many entries the policy has (all are written).
    fn write_all(&mut self, slot: u32, policy: &CompiledPolicy) -> Result<usize, DatapathError> {
        let entry_rules = policy.entry_rules();
        with_trie_writes(|writes| {
            self.write_family_all::<V4>(slot, policy, entry_rules, writes)?;
            self.write_family_all::<V6>(slot, policy, entry_rules, writes)
        })?;
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
        Ok(policy.v4.len() + policy.v6.len() + policy.ports.len())
    }

    /// Writes one family of `policy` at the keys of `stale` into `slot`;
    /// the entry tries hold the listings of `entry_rules` only. Returns
    /// how many keys were written.
    fn write_family_keys<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        entry_rules: RuleSet,
        stale: &Stale<'_>,
        writes: &TrieWrites<'_>,
    ) -> Result<usize, DatapathError> {
        let table = F::table(policy);
        let mut given = Vec::new();
        let mut entries = Vec::new();
        let mut walk = table.walk();
        // The listings held, in key order: the nodes below usually credit
        // their own listing, and find its index here instead of looking it
        // up again.
        let mut held: Vec<(Listing, u32)> = Vec::new();
        let mut written = 0;
        for (key, rule) in stale.listings::<F>(policy) {
            written += 1;
            let Some(name) = policy.rule_names.get(rule as usize) else {
                continue;
            };
            let own = walk.find(&key).map_or(0, |(own, _)| own);
            let index = if own & (1 << rule) != 0 {
                let index = self.hold_entry(name, F::prefix(key), slot, &mut given);
                held.push(((key, rule), index));
                Some(index)
            } else {
                self.entry_indexes.release(name, F::prefix(key), slot);
                None
            };
            if entry_rules & (1 << rule) != 0 {
                entries.push((F::entry_key(rule, key), index));
            }
        }
        self.reset_entry_counters(&mut given)?;
        write_trie(self, F::ENTRIES[slot as usize], entries, writes, F::LANE)?;
        // Every key the policy no longer lists goes first: a new list as
        // large as the trie must never need room for both lists at once.
        let mut walk = table.walk();
        let removed: TrieUpdates<F::Bytes, SourceValue> = stale
            .nodes::<F>(policy)
            .filter(|key| walk.find(key).is_none())
            .map(|key| (F::key(key), None))
            .collect();
        written += removed.len();
        write_trie(self, F::SOURCES[slot as usize], removed, writes, F::LANE)?;
        // Then the rest a chunk at a time, so that a new list's values never
        // all sit in memory at once and the kernel starts on the first.
        let mut walk = table.walk();
        let mut listed = stale
            .nodes::<F>(policy)
            .filter_map(|key| Some((key, walk.find(&key)?.1)));
        let mut held = held.iter().peekable();
        loop {
            given.clear();
            let sources: TrieUpdates<F::Bytes, SourceValue> = listed
                .by_ref()
                .take(WRITE_CHUNK)
                .map(|(key, node)| {
                    let first = (key, node.rules.trailing_zeros());
                    while held.next_if(|(listing, _)| *listing < first).is_some() {}
                    let own_entry = held
                        .peek()
                        .filter(|(listing, _)| *listing == first)
                        .map(|(_, entry)| *entry);
                    let value =
                        self.node_value::<F>(slot, policy, key, node, own_entry, &mut given);
                    (F::key(key), Some(value))
                })
                .collect();
            if sources.is_empty() {
                return Ok(written);
            }
            written += sources.len();
            self.reset_entry_counters(&mut given)?;
            write_trie(self, F::SOURCES[slot as usize], sources, writes, F::LANE)?;
        }
    }

    /// Makes `slot` hold exactly one family of `policy`; the entry tries
    /// hold the listings of `entry_rules` only.
    fn write_family_all<F: Family>(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        entry_rules: RuleSet,
        writes: &TrieWrites<'_>,
    ) -> Result<(), DatapathError> {
        let table = F::table(policy);
        let (entries_name, sources_name) = (F::ENTRIES[slot as usize], F::SOURCES[slot as usize]);
        // What the tries hold and the policy does not goes first; the rest
        // is overwritten as the policy is walked.
        let stale_entries = stale_keys::<F::EntryBytes, u32>(self, entries_name, |key| {
            let (rule, prefix) = F::entry_listing(key);
            // A rule byte past the last rule (a damaged map) is stale.
            RuleSet::checked_shl(1, rule.into())
                .is_some_and(|bit| entry_rules & bit != 0 && table.listings(&prefix) & bit != 0)
        })?;
        write_trie::<_, u32>(self, entries_name, stale_entries, writes, F::LANE)?;
        let stale_sources = stale_keys::<F::Bytes, SourceValue>(self, sources_name, |key| {
            table.node(&F::source_prefix(key)).is_some()
        })?;
        write_trie::<_, SourceValue>(self, sources_name, stale_sources, writes, F::LANE)?;
        let mut entries = Vec::new();
        let mut given = Vec::new();
        self.entry_indexes.unlist_family(slot, F::V4);
        let mut listed = table.listed().peekable();
        // Written a chunk at a time, so that the kernel fills the trie while
        // the next chunk is worked out.
        while listed.peek().is_some() {
            given.clear();
            let mut sources = Vec::with_capacity(WRITE_CHUNK);
            for (key, own, node) in listed.by_ref().take(WRITE_CHUNK) {
                let first_rule = node.rules.trailing_zeros();
                let mut first_index = None;
                for rule in crate::policy::rule_indexes(own) {
                    let name = &policy.rule_names[rule as usize];
                    let index = self.hold_entry(name, F::prefix(key), slot, &mut given);
                    if rule == first_rule {
                        first_index = Some(index);
                    }
                    if entry_rules & (1 << rule) != 0 {
                        entries.push((F::entry_key(rule, key), Some(index)));
                    }
                }
                let value = self.node_value::<F>(slot, policy, key, node, first_index, &mut given);
                sources.push((F::key(key), Some(value)));
            }
            self.reset_entry_counters(&mut given)?;
            write_trie(self, sources_name, sources, writes, F::LANE)?;
        }
        self.entry_indexes.free_unlisted();
        write_trie(self, entries_name, entries, writes, F::LANE)
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

    /// The trie value of `node`: its rules, and the counter of the entry the
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
        let holding = self.entry_indexes.hold(rule, prefix, slot);
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

    /// What each entry of the live policy admitted.
    pub fn entry_usage(&self) -> Result<Vec<EntryUsage>, DatapathError> {
        if !self.active.ready() {
            return Ok(Vec::new());
        }
        let mut listed: Vec<(&str, IpPrefix, u32)> =
            self.entry_indexes.listed_in(self.active.slot()).collect();
        listed.sort_unstable_by_key(|(_, _, index)| *index);
        let indexes: Vec<u32> = listed.iter().map(|(_, _, index)| *index).collect();
        let map = map_data(self, names::ENTRY_STATS)?.fd().as_fd();
        let counters: Vec<EntryCounter> = mapped::load_sorted(map, &indexes)
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

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { name })?;
        M::try_from(map).map_err(map_error(name))
    }

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map(name)
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

/// One address family's maps and key encodings.
trait Family {
    const V4: bool;
    /// The [`TrieWrites`] lane of this family's tries.
    const LANE: usize;
    const SOURCES: [&'static str; 2];
    const ENTRIES: [&'static str; 2];
    /// Address bytes of a source trie key.
    type Bytes: aya::Pod + Eq + std::hash::Hash + Send;
    /// Rule byte and address bytes of an entry trie key.
    type EntryBytes: aya::Pod + Eq + std::hash::Hash + Send;
    fn bytes(bits: u128) -> Self::Bytes;
    /// The network bits of source trie key bytes.
    fn bits(bytes: Self::Bytes) -> u128;
    fn entry_bytes(rule: u32, bits: u128) -> Self::EntryBytes;
    /// This family's table of `policy`.
    fn table(policy: &CompiledPolicy) -> &PrefixTable;
    /// This family's trie keys and listings in `diff`.
    fn keys(diff: &PolicyDiff) -> (&BTreeSet<PrefixKey>, &BTreeSet<Listing>);
    /// The rule and network bits of an entry trie key.
    fn split_entry(bytes: Self::EntryBytes) -> (u8, u128);
    fn prefix(key: PrefixKey) -> IpPrefix;

    fn key(key: PrefixKey) -> Key<Self::Bytes> {
        Key::new(u32::from(key.1), Self::bytes(key.0))
    }

    fn entry_key(rule: u32, key: PrefixKey) -> Key<Self::EntryBytes> {
        Key::new(entry_key_len(key.1), Self::entry_bytes(rule, key.0))
    }

    /// The prefix of a source trie key.
    fn source_prefix(key: &Key<Self::Bytes>) -> PrefixKey {
        (Self::bits(key.data()), key.prefix_len() as u8)
    }

    /// The rule and prefix of an entry trie key.
    fn entry_listing(key: &Key<Self::EntryBytes>) -> (u8, PrefixKey) {
        let (rule, bits) = Self::split_entry(key.data());
        let len = key.prefix_len().saturating_sub(entry_key_len(0)) as u8;
        (rule, (bits, len))
    }
}

struct V4;
struct V6;

impl Family for V4 {
    const V4: bool = true;
    const LANE: usize = 0;
    const SOURCES: [&'static str; 2] = names::SOURCES_V4;
    const ENTRIES: [&'static str; 2] = names::ENTRIES_V4;
    type Bytes = [u8; 4];
    type EntryBytes = [u8; 5];

    fn bytes(bits: u128) -> [u8; 4] {
        (bits as u32).to_be_bytes()
    }

    fn bits(bytes: [u8; 4]) -> u128 {
        u32::from_be_bytes(bytes) as u128
    }

    fn table(policy: &CompiledPolicy) -> &PrefixTable {
        &policy.v4
    }

    fn keys(diff: &PolicyDiff) -> (&BTreeSet<PrefixKey>, &BTreeSet<Listing>) {
        (&diff.v4, &diff.v4_listings)
    }

    fn entry_bytes(rule: u32, bits: u128) -> [u8; 5] {
        let [a, b, c, d] = Self::bytes(bits);
        [rule as u8, a, b, c, d]
    }

    fn split_entry(bytes: [u8; 5]) -> (u8, u128) {
        let [rule, address @ ..] = bytes;
        (rule, u32::from_be_bytes(address) as u128)
    }

    fn prefix(key: PrefixKey) -> IpPrefix {
        IpPrefix::V4 {
            address: (key.0 as u32).into(),
            len: key.1,
        }
    }
}

impl Family for V6 {
    const V4: bool = false;
    const LANE: usize = 1;
    const SOURCES: [&'static str; 2] = names::SOURCES_V6;
    const ENTRIES: [&'static str; 2] = names::ENTRIES_V6;
    type Bytes = [u8; 16];
    type EntryBytes = [u8; 17];

    fn bytes(bits: u128) -> [u8; 16] {
        bits.to_be_bytes()
    }

    fn bits(bytes: [u8; 16]) -> u128 {
        u128::from_be_bytes(bytes)
    }

    fn table(policy: &CompiledPolicy) -> &PrefixTable {
        &policy.v6
    }

    fn keys(diff: &PolicyDiff) -> (&BTreeSet<PrefixKey>, &BTreeSet<Listing>) {
        (&diff.v6, &diff.v6_listings)
    }

    fn entry_bytes(rule: u32, bits: u128) -> [u8; 17] {
        let mut bytes = [0; 17];
        bytes[0] = rule as u8;
        bytes[1..].copy_from_slice(&bits.to_be_bytes());
        bytes
    }

    fn split_entry(bytes: [u8; 17]) -> (u8, u128) {
        let [rule, address @ ..] = bytes;
        (rule, u128::from_be_bytes(address))
    }

    fn prefix(key: PrefixKey) -> IpPrefix {
        IpPrefix::V6 {
            address: key.0.into(),
            len: key.1,
        }
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
    match datapath.ebpf.map(name) {
        Some(Map::LpmTrie(data) | Map::Array(data) | Map::LruHashMap(data)) => Ok(data),
        _ => Err(DatapathError::MissingMap { name }),
    }
}

/// The source-trie value of `node`, whose first rule credits the counter
/// at `entry`.
fn source_value(node: Node, entry: u32) -> SourceValue {
    SourceValue {
        rules: node.rules,
        entry,
        pad: 0,
    }
}

/// Values to write at trie keys; `None` deletes the key.
type TrieUpdates<K, V> = Vec<(Key<K>, Option<V>)>;

/// Queues writing each value (or its absence) at its key into the trie
/// `name`.
fn write_trie<K: aya::Pod + Send, V: aya::Pod + Send>(
    datapath: &Datapath,
    name: &'static str,
    writes: TrieUpdates<K, V>,
    queue: &TrieWrites<'_>,
    lane: usize,
) -> Result<(), DatapathError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut removed = Vec::new();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (key, value) in writes {
        match value {
            Some(value) => {
                keys.push(key);
                values.push(value);
            }
            None => removed.push(key),
        }
    }
    queue.replace(lane, owned_fd(datapath, name)?, name, removed, keys, values);
    Ok(())
}

/// The keys of the trie `name` that `wanted` says it should not hold, as
/// removals for [`write_trie`]. A new trie (a first start) has none.
fn stale_keys<K: aya::Pod, V: aya::Pod>(
    datapath: &Datapath,
    name: &'static str,
    wanted: impl Fn(&Key<K>) -> bool,
) -> Result<TrieUpdates<K, V>, DatapathError> {
    Ok(trie_elements::<K, V>(datapath, name)?
        .into_iter()
        .filter(|(key, _)| !wanted(key))
        .map(|(key, _)| (key, None))
        .collect())
}

/// A descriptor of the map `name` of its own, for a writing thread.
fn owned_fd(
    datapath: &Datapath,
    name: &'static str,
) -> Result<std::os::fd::OwnedFd, DatapathError> {
    map_data(datapath, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(batch::error(name))
}

/// Every element of the trie `name`: batch reads, else one at a time.
fn trie_elements<K: aya::Pod, V: aya::Pod>(
    datapath: &Datapath,
    name: &'static str,
) -> Result<Vec<(Key<K>, V)>, DatapathError> {
    let read = batch::read::<Key<K>, V>(map_data(datapath, name)?);
    if let Some(elements) = batch::or_fallback(name, read)? {
        return Ok(elements);
    }
    let trie: LpmTrie<&MapData, K, V> = datapath.map(name)?;
    trie.iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(name))
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, collections::BTreeSet, sync::Arc};

    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

    use super::{Delta, Family, PROGRAM, Stale, V4, V6, union_sorted};
    use crate::{
        entries::RuntimeEntries,
        policy::{self, CompiledPolicy, PolicyDiff},
    };

    #[test]
    fn sorted_unions_give_each_item_once_in_order() {
        let union: Vec<u32> =
            union_sorted([1, 3, 5, 6].into_iter(), [2, 3, 6, 9].into_iter()).collect();
        assert_eq!(union, [1, 2, 3, 5, 6, 9]);
        assert_eq!(
            union_sorted([4].into_iter(), [].into_iter()).collect::<Vec<u32>>(),
            [4]
        );
        assert_eq!(
            union_sorted([].into_iter(), [4].into_iter()).collect::<Vec<u32>>(),
            [4]
        );
    }

    fn compile(sources: &[&str]) -> CompiledPolicy {
        let quoted: Vec<String> = sources
            .iter()
            .map(|source| format!("\"{source}\""))
            .collect();
        let config = crate::config::tests::parse(&format!(
            "interfaces = [\"eth0\"]\n[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [{}]\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources = [\"203.0.113.0/24\"]\n",
            quoted.join(", ")
        ))
        .unwrap();
        policy::compile(&config, &RuntimeEntries::new()).unwrap()
    }

    /// What `stale` writes over a slot to make it hold `policy`, collected.
    fn written(stale: &Stale<'_>, policy: &CompiledPolicy) -> PolicyDiff {
        PolicyDiff {
            v4: stale.nodes::<V4>(policy).collect(),
            v6: stale.nodes::<V6>(policy).collect(),
            ports: stale.ports(policy),
            v4_listings: stale.listings::<V4>(policy).collect(),
            v6_listings: stale.listings::<V6>(policy).collect(),
        }
    }

    /// Every way the idle slot and a change can be described gives the
    /// keys where the slot differs from the new policy: no more, and, what
    /// would leave a stale key behind, no fewer.
    #[test]
    fn the_keys_written_are_where_the_idle_slot_differs_from_the_new_policy() {
        let held = Arc::new(compile(&["192.0.2.0/24", "2001:db8::/48"]));
        let live = Arc::new(compile(&["192.0.2.0/24", "198.51.100.7", "2001:db8::/48"]));
        let new = compile(&["198.51.100.7", "198.51.100.0/24", "2001:db8:1::/48"]);
        // A slot holding `held` exactly, whatever the change was.
        let lag = Delta::From(Arc::clone(&held));
        for changed in [
            Delta::From(Arc::clone(&live)),
            Delta::Keys(PolicyDiff::between(&live, &new)),
        ] {
            let stale = Stale::new(&lag, &changed);
            assert_eq!(written(&stale, &new), PolicyDiff::between(&held, &new));
        }
        // A slot holding the live policy except at the keys of the edit
        // that made it live.
        let lag = Delta::Keys(PolicyDiff::between(&held, &live));
        let expected = PolicyDiff::between(&held, &live).union(&PolicyDiff::between(&live, &new));
        for changed in [
            Delta::From(Arc::clone(&live)),
            Delta::Keys(PolicyDiff::between(&live, &new)),
        ] {
            assert_eq!(written(&Stale::new(&lag, &changed), &new), expected);
        }
        // Exactly where the old and new slot contents differ, counted
        // per family.
        let exact = PolicyDiff::between(&held, &new);
        assert!(
            !exact.v4.is_empty() && !exact.v6_listings.is_empty(),
            "{exact:?}"
        );
        assert_eq!(V4::keys(&exact).0, &exact.v4);
        assert_eq!(V6::keys(&exact).1, &exact.v6_listings);
    }

    #[test]
    fn an_empty_diff_is_used_as_it_is_not_copied() {
        let diff = PolicyDiff {
            v4: BTreeSet::from([(7, 32)]),
            ..PolicyDiff::default()
        };
        let empty = Delta::Keys(PolicyDiff::default());
        let changed = Delta::Keys(diff.clone());
        for stale in [Stale::new(&empty, &changed), Stale::new(&changed, &empty)] {
            assert!(matches!(stale.keys, Some(Cow::Borrowed(keys)) if *keys == diff));
            assert!(stale.from.is_none());
        }
    }

    /// The maps of layout version 6: name, type, key size, value size,
    /// max entries, flags (from the object's `bpf_map_def`s). Version 1
    /// had no flow maps and 11 reasons; version 2 had no entry tries,
    /// entry counters or drop samples, and source tries held a bare
    /// `RuleSet`; up to version 3 `PORTS` were hash maps, and in version 4
    /// one array per slot; up to version 5 `ENTRY_STATS` had half the
    /// entries, and it and `PORTS` could not be mmapped.
    const LAYOUT_6: [(&str, u32, u32, u32, u32, u32); 19] = [
        ("ACTIVE", 2, 4, 4, 1, 0),
        ("BLOCKED_SAMPLES", 27, 0, 0, 524_288, 0),
        ("ENTRIES_V4_0", 11, 9, 4, 262_144, 1),
        ("ENTRIES_V4_1", 11, 9, 4, 262_144, 1),
        ("ENTRIES_V6_0", 11, 21, 4, 262_144, 1),
        ("ENTRIES_V6_1", 11, 21, 4, 262_144, 1),
        ("ENTRY_STATS", 2, 4, 40, 1_048_576, 1024),
        ("FLOWS", 9, 40, 16, 65_536, 0),
        ("FLOW_CONFIG", 2, 4, 40, 1, 0),
        ("FLOW_KEY_SCRATCH", 6, 4, 40, 1, 0),
        ("FLOW_STATS", 6, 4, 8, 4, 0),
        ("PORTS", 2, 4, 8, 262_144, 1024),
        ("REASON_STATS", 6, 4, 16, 14, 0),
        ("RULE_STATS", 6, 4, 16, 128, 0),
        ("SAMPLE_BUCKETS", 6, 4, 24, 1, 0),
        ("SOURCES_V4_0", 11, 8, 16, 262_144, 1),
        ("SOURCES_V4_1", 11, 8, 16, 262_144, 1),
        ("SOURCES_V6_0", 11, 20, 16, 262_144, 1),
        ("SOURCES_V6_1", 11, 20, 16, 262_144, 1),
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
            6,
            "record the new version's layout in this test"
        );
        assert_eq!(
            maps, LAYOUT_6,
            "the maps changed: bump firewall_common::maps::LAYOUT_VERSION and record the new layout here"
        );
        let mut names: Vec<&str> = firewall_common::maps::names::ALL.to_vec();
        names.sort();
        assert_eq!(
            names,
            LAYOUT_6.map(|map| map.0),
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
