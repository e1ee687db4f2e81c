//! The only code that touches the kernel: loads the XDP program, attaches
//! it, writes policies into its maps and reads its counters back.
//!
//! A policy is applied double-buffered: the idle slot's maps are made equal
//! to the new policy, then one write to `ACTIVE` makes that slot live. A
//! packet sees the whole old or the whole new policy; if writing the idle
//! slot fails, the live slot was never touched.

use std::{collections::HashMap as StdHashMap, fmt, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use firewall_common::{
    limits::MAX_RULES,
    maps::{ActivePolicy, Counter, PortKey, RuleSet, names, rule_stats_index},
    reasons::{REASON_COUNT, Reason},
};
use tracing::{info, warn};

use crate::{
    config::XdpModeSetting,
    policy::{CompiledPolicy, PrefixEntry},
};

/// The XDP object built by `build.rs`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));

/// Name of the XDP function in the object.
const PROGRAM_NAME: &str = "firewall";

/// How long a packet can still be using the slot that was just retired.
/// XDP runs to completion within microseconds; this is orders above that.
const RETIRE_GRACE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel rejected the XDP program: {0}")]
    Program(#[source] ProgramError),
    #[error("attaching XDP to `{interface}` in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
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

/// The XDP mode an interface actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The program on one interface.
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    link: XdpLinkId,
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
    attachments: Vec<Attachment>,
    active: ActivePolicy,
    /// Rule names of the policy written to each slot, in config order.
    slot_rules: [Vec<String>; 2],
    /// What rules counted in slots since replaced, by rule name.
    retired: StdHashMap<String, Counter>,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Datapath {
    /// Loads the object and the program into the kernel; nothing is
    /// attached yet, and every packet passes until [`Datapath::apply`].
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(PROGRAM).map_err(DatapathError::Object)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DatapathError::MissingProgram { name: PROGRAM_NAME })?
            .try_into()
            .map_err(DatapathError::Program)?;
        program.load().map_err(DatapathError::Program)?;
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            active: ActivePolicy::default(),
            slot_rules: [Vec::new(), Vec::new()],
            retired: StdHashMap::new(),
        })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|program| program.try_into().ok())
            .expect("loaded in Datapath::load")
    }

    /// Attaches to `interface`. `Auto` tries driver mode, then generic.
    pub fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
    ) -> Result<AttachMode, DatapathError> {
        let attempt = |datapath: &mut Self, mode: AttachMode| {
            datapath
                .program()
                .attach(interface, mode.flags())
                .map_err(|source| DatapathError::Attach {
                    interface: interface.to_string(),
                    mode,
                    source,
                })
        };
        let (mode, link) = match setting {
            XdpModeSetting::Driver => (AttachMode::Driver, attempt(self, AttachMode::Driver)?),
            XdpModeSetting::Skb => (AttachMode::Skb, attempt(self, AttachMode::Skb)?),
            XdpModeSetting::Auto => match attempt(self, AttachMode::Driver) {
                Ok(link) => (AttachMode::Driver, link),
                Err(err) => {
                    warn!(interface, error = %err, "driver mode unavailable; falling back to generic (skb) mode, which is slower");
                    (AttachMode::Skb, attempt(self, AttachMode::Skb)?)
                }
            },
        };
        info!(interface, %mode, "attached XDP program");
        self.attachments.push(Attachment {
            interface: interface.to_string(),
            mode,
            link,
        });
        Ok(mode)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Detaches from every interface. Also happens on drop; this logs it.
    pub fn detach_all(&mut self) {
        for attachment in std::mem::take(&mut self.attachments) {
            match self.program().detach(attachment.link) {
                Ok(()) => info!(interface = attachment.interface, "detached XDP program"),
                Err(err) => {
                    warn!(interface = attachment.interface, error = %err, "detaching XDP program failed")
                }
            }
        }
    }

    /// Makes `policy` live atomically. On error the previous policy stays
    /// live and untouched; once this returns `Ok`, `policy` is live.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        let idle = if self.active.ready() {
            1 - self.active.slot()
        } else {
            0
        };
        self.write_slot(idle, policy)?;
        let retiring = self.active;
        self.set_active(ActivePolicy::new(idle, policy.enforce))?;
        self.slot_rules[idle as usize] = policy.rule_names.clone();
        // The new policy is live: nothing below may report the apply as failed.
        if retiring.ready() {
            self.retire_counters(retiring.slot());
        }
        Ok(())
    }

    /// Keeps the totals the rules of a slot just replaced had counted.
    fn retire_counters(&mut self, slot: u32) {
        // Packets that read `ACTIVE` before the switch may still count into
        // the old slot; let them finish first.
        std::thread::sleep(RETIRE_GRACE);
        match self.slot_rule_counters(slot) {
            Ok(counters) => {
                for (name, counter) in counters {
                    *self.retired.entry(name).or_default() += counter;
                }
            }
            Err(err) => {
                warn!(error = %err, "reading the replaced policy's rule counters failed; their counts before this reload are lost")
            }
        }
    }

    fn set_active(&mut self, active: ActivePolicy) -> Result<(), DatapathError> {
        let mut map: Array<&mut MapData, ActivePolicy> = self.map_mut(names::ACTIVE)?;
        map.set(0, active, 0).map_err(map_error(names::ACTIVE))?;
        self.active = active;
        Ok(())
    }

    /// Makes `slot`'s maps hold exactly `policy` and zeroes its rule counters.
    fn write_slot(&mut self, slot: u32, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        let slot_index = slot as usize;
        sync_prefixes(self, names::SOURCES_V4[slot_index], &policy.v4, |bits| {
            (bits as u32).to_be_bytes()
        })?;
        sync_prefixes(
            self,
            names::SOURCES_V6[slot_index],
            &policy.v6,
            u128::to_be_bytes,
        )?;
        let name = names::PORTS[slot_index];
        let mut ports: HashMap<&mut MapData, PortKey, RuleSet> = self.map_mut(name)?;
        let wanted: std::collections::HashSet<PortKey> =
            policy.ports.iter().map(|(key, _)| *key).collect();
        let stale: Vec<PortKey> = ports
            .keys()
            .filter(|key| key.as_ref().map_or(true, |key| !wanted.contains(key)))
            .collect::<Result<_, _>>()
            .map_err(map_error(name))?;
        for key in stale {
            ports.remove(&key).map_err(map_error(name))?;
        }
        for (key, rules) in &policy.ports {
            ports.insert(key, rules, 0).map_err(map_error(name))?;
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

    /// Per-rule counters of `slot`, by the names of the rules written there.
    fn slot_rule_counters(&self, slot: u32) -> Result<Vec<(String, Counter)>, DatapathError> {
        let stats: PerCpuArray<&MapData, Counter> = self.map(names::RULE_STATS)?;
        self.slot_rules[slot as usize]
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
        let rules = if self.active.ready() {
            self.slot_rule_counters(self.active.slot())?
                .into_iter()
                .map(|(name, mut total)| {
                    total += self.retired.get(&name).copied().unwrap_or_default();
                    (name, total)
                })
                .collect()
        } else {
            Vec::new()
        };
        debug_assert_eq!(reasons.len(), Reason::ALL.len());
        Ok(Counters { rules, reasons })
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a Counter>) -> Counter {
    values.fold(Counter::default(), |mut total, value| {
        total += *value;
        total
    })
}

/// Makes the LPM trie `name` hold exactly `entries`.
fn sync_prefixes<const N: usize>(
    datapath: &mut Datapath,
    name: &'static str,
    entries: &[PrefixEntry],
    to_bytes: fn(u128) -> [u8; N],
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], RuleSet> = datapath.map_mut(name)?;
    let wanted: std::collections::HashSet<(u32, [u8; N])> = entries
        .iter()
        .map(|entry| (u32::from(entry.len), to_bytes(entry.bits)))
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
    for entry in entries {
        let key = Key::new(u32::from(entry.len), to_bytes(entry.bits));
        trie.insert(&key, entry.rules, 0).map_err(map_error(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, SectionKind};

    use super::PROGRAM;

    /// Helpers the data plane may call, each in Linux 5.15 (the LTS floor
    /// edge hosts run). Add one only after checking the kernel it arrived in.
    const HELPERS_IN_5_15: [(i32, &str); 1] = [(1, "bpf_map_lookup_elem, Linux 3.19")];

    const BPF_CALL: u8 = 0x85;
    const SRC_HELPER: u8 = 0;
    const SRC_LOCAL_FUNCTION: u8 = 1;

    #[test]
    fn the_xdp_program_calls_only_helpers_available_in_linux_5_15() {
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
