//! The only code that touches the kernel: loads the XDP program, attaches
//! it, writes policies into its maps and reads its counters back.
//!
//! A policy is applied double-buffered: the idle slot's maps are made equal
//! to the new policy, then one write to `ACTIVE` makes that slot live. A
//! packet sees the whole old or the whole new policy; if writing the idle
//! slot fails, the live slot was never touched.
//!
//! Only what differs is written: the datapath knows at which keys the idle
//! slot may differ from the live policy (its *lag*: the keys of the last
//! change), so a change writes those keys plus its own, not the whole
//! policy. A one-prefix `allow` on a 250k-prefix policy is a few syscalls.
//!
//! Maps and links are pinned under `bpf_dir` ([`pins`]): the program stays
//! attached and enforcing when the daemon stops or crashes, and the next
//! daemon adopts it: same maps, its own program swapped onto the links
//! atomically, its policy written into the idle slot and switched once.

pub mod flows;
pub mod pins;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use firewall_common::{
    limits::MAX_RULES,
    maps::{ActivePolicy, Counter, PortKey, RuleSet, names, rule_stats_index},
    reasons::{REASON_COUNT, Reason},
};
use tracing::{info, warn};

use self::pins::{PinDir, PinDirError};
use crate::{
    config::XdpModeSetting,
    policy::{CompiledPolicy, PolicyDiff, PrefixKey, PrefixTable},
};

/// The XDP object built by `build.rs`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));

/// Name of the XDP function in the object.
const PROGRAM_NAME: &str = "firewall";

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

pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
    active: ActivePolicy,
    /// Keys at which the idle slot may differ from the live policy; `None`
    /// when anything may (nothing written yet, or a write failed halfway).
    idle_lag: Option<PolicyDiff>,
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
    /// to these maps; returns whether it did.
    pub fn restore_ledger(&mut self, ledger: CounterLedger) -> bool {
        let ours = self.adopted() && ledger.maps_id == self.ledger.maps_id;
        if ours {
            self.ledger = ledger;
        }
        ours
    }

    /// The ledger, if it changed since the last call: to be saved.
    pub fn take_changed_ledger(&mut self) -> Option<CounterLedger> {
        std::mem::take(&mut self.ledger_changed).then(|| self.ledger.clone())
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
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        changed: &PolicyDiff,
    ) -> Result<(), DatapathError> {
        self.write_idle(policy, changed)?;
        self.switch(policy)
    }

    /// Makes the idle slot hold exactly `policy`, which differs from the
    /// live policy at the keys in `changed`. Nothing live is touched; if
    /// the caller then does not switch, the next write still knows what
    /// the idle slot holds.
    pub fn write_idle(
        &mut self,
        policy: &CompiledPolicy,
        changed: &PolicyDiff,
    ) -> Result<(), DatapathError> {
        let slot = self.idle_slot();
        self.wait_for_retired_readers();
        let lag = self.idle_lag.take();
        let result = match &lag {
            Some(lag) => {
                let mut keys = lag.clone();
                keys.extend(changed);
                self.write_keys(slot, policy, &keys)
            }
            None => self.write_all(slot, policy),
        };
        // If the write failed halfway, the slot holds a mix: `idle_lag`
        // stays `None`, so the next write rewrites it whole.
        result?;
        if self.ledger.slot_rules[slot as usize] != policy.rule_names {
            self.give_rules(slot, &policy.rule_names)?;
        }
        self.idle_lag = Some(changed.clone());
        Ok(())
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

    /// Whether the idle slot must be written whole before the next change
    /// can be a diff. [`Datapath::prepare_idle`] does that ahead of time.
    pub fn idle_needs_full_write(&self) -> bool {
        self.idle_lag.is_none()
    }

    /// Writes the live `policy` into the idle slot too, so the next change
    /// writes only its diff.
    pub fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        self.write_idle(policy, &PolicyDiff::default())
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

    /// Writes `policy`'s value (or its absence) at each key of `keys`.
    fn write_keys(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        keys: &PolicyDiff,
    ) -> Result<(), DatapathError> {
        let slot = slot as usize;
        write_prefix_keys(
            self,
            names::SOURCES_V4[slot],
            &policy.v4,
            &keys.v4,
            v4_bytes,
        )?;
        write_prefix_keys(
            self,
            names::SOURCES_V6[slot],
            &policy.v6,
            &keys.v6,
            u128::to_be_bytes,
        )?;
        let name = names::PORTS[slot];
        let mut ports: HashMap<&mut MapData, PortKey, RuleSet> = self.map_mut(name)?;
        for key in &keys.ports {
            match policy.ports.get(key) {
                Some(rules) => ports.insert(key, rules, 0),
                None => ports.remove(key).or_else(absent_is_removed),
            }
            .map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Makes `slot`'s maps hold exactly `policy`, whatever they held.
    fn write_all(&mut self, slot: u32, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        let slot = slot as usize;
        sync_prefixes(self, names::SOURCES_V4[slot], &policy.v4, v4_bytes)?;
        sync_prefixes(self, names::SOURCES_V6[slot], &policy.v6, u128::to_be_bytes)?;
        let name = names::PORTS[slot];
        let mut ports: HashMap<&mut MapData, PortKey, RuleSet> = self.map_mut(name)?;
        let stale: Vec<PortKey> = ports
            .keys()
            .filter(|key| {
                key.as_ref()
                    .map_or(true, |key| !policy.ports.contains_key(key))
            })
            .collect::<Result<_, _>>()
            .map_err(map_error(name))?;
        for key in stale {
            ports.remove(&key).map_err(map_error(name))?;
        }
        for (key, rules) in &policy.ports {
            ports.insert(key, rules, 0).map_err(map_error(name))?;
        }
        Ok(())
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

fn v4_bytes(bits: u128) -> [u8; 4] {
    (bits as u32).to_be_bytes()
}

/// Deleting a key that is not there leaves the map as wanted.
fn absent_is_removed(error: MapError) -> Result<(), MapError> {
    match &error {
        MapError::SyscallError(SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        _ => Err(error),
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a Counter>) -> Counter {
    values.fold(Counter::default(), |mut total, value| {
        total += *value;
        total
    })
}

/// Writes `table`'s value (or its absence) at each of `keys` into the trie `name`.
fn write_prefix_keys<const N: usize>(
    datapath: &mut Datapath,
    name: &'static str,
    table: &PrefixTable,
    keys: &std::collections::BTreeSet<PrefixKey>,
    to_bytes: fn(u128) -> [u8; N],
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], RuleSet> = datapath.map_mut(name)?;
    for key in keys {
        let trie_key = Key::new(u32::from(key.1), to_bytes(key.0));
        match table.get(key) {
            Some(rules) => trie.insert(&trie_key, rules, 0),
            None => trie.remove(&trie_key).or_else(absent_is_removed),
        }
        .map_err(map_error(name))?;
    }
    Ok(())
}

/// Makes the LPM trie `name` hold exactly `table`.
fn sync_prefixes<const N: usize>(
    datapath: &mut Datapath,
    name: &'static str,
    table: &PrefixTable,
    to_bytes: fn(u128) -> [u8; N],
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], RuleSet> = datapath.map_mut(name)?;
    let wanted: std::collections::HashSet<(u32, [u8; N])> = table
        .entries()
        .map(|(key, _)| (u32::from(key.1), to_bytes(key.0)))
        .collect();
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter(|key| {
            key.as_ref().map_or(true, |key| {
                !wanted.contains(&(key.prefix_len(), key.data()))
            })
        })
        .collect::<Result<_, _>>()
        .map_err(map_error(name))?;
    for key in stale {
        trie.remove(&key).map_err(map_error(name))?;
    }
    for (key, rules) in table.entries() {
        let trie_key = Key::new(u32::from(key.1), to_bytes(key.0));
        trie.insert(&trie_key, rules, 0).map_err(map_error(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

    use super::PROGRAM;

    /// The maps of layout version 2: name, type, key size, value size,
    /// max entries, flags (from the object's `bpf_map_def`s). Version 1
    /// had no flow maps and 11 reasons.
    const LAYOUT_2: [(&str, u32, u32, u32, u32, u32); 13] = [
        ("ACTIVE", 2, 4, 4, 1, 0),
        ("FLOWS", 9, 40, 16, 65_536, 0),
        ("FLOW_CONFIG", 2, 4, 40, 1, 0),
        ("FLOW_KEY_SCRATCH", 6, 4, 40, 1, 0),
        ("FLOW_STATS", 6, 4, 8, 4, 0),
        ("PORTS_0", 1, 4, 8, 131_072, 1),
        ("PORTS_1", 1, 4, 8, 131_072, 1),
        ("REASON_STATS", 6, 4, 16, 14, 0),
        ("RULE_STATS", 6, 4, 16, 128, 0),
        ("SOURCES_V4_0", 11, 8, 8, 262_144, 1),
        ("SOURCES_V4_1", 11, 8, 8, 262_144, 1),
        ("SOURCES_V6_0", 11, 20, 8, 262_144, 1),
        ("SOURCES_V6_1", 11, 20, 8, 262_144, 1),
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
            2,
            "record the new version's layout in this test"
        );
        assert_eq!(
            maps, LAYOUT_2,
            "the maps changed: bump firewall_common::maps::LAYOUT_VERSION and record the new layout here"
        );
        let mut names: Vec<&str> = firewall_common::maps::names::ALL.to_vec();
        names.sort();
        assert_eq!(
            names,
            LAYOUT_2.map(|map| map.0),
            "names::ALL lists every map"
        );
    }

    /// Helpers the data plane (XDP and TC programs) may call, each in Linux
    /// 5.15 (the LTS floor edge hosts run). Add one only after checking the
    /// kernel it arrived in.
    const HELPERS_IN_5_15: [(i32, &str); 4] = [
        (1, "bpf_map_lookup_elem, Linux 3.19"),
        (2, "bpf_map_update_elem, Linux 3.19"),
        (5, "bpf_ktime_get_ns, Linux 4.1"),
        (39, "bpf_skb_pull_data, Linux 4.9"),
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
