//! Loading the programs and adopting a pinned firewall: the maps an
//! earlier daemon left are taken over with their counters and entry
//! indexes, and the kernel verifies the XDP program meanwhile.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::Xdp,
};
use firewall_common::{
    limits::{MAX_ENTRY_COUNTERS, MAX_RULES},
    maps::{
        ActivePolicy, EntryRef, UNCOUNTED_ENTRY, names,
        rows::{self as table_rows, SPANS_PER_SLOT, Span},
    },
};
use tracing::{info, warn};

use super::{
    CounterLedger, Datapath, DatapathError, PROGRAM, PROGRAM_NAME, Programs, batch, flows,
    map_data, map_error, mapped,
    pins::PinDir,
    program_log,
    slots::{Families, Family, V4, V6},
};
use crate::{config::prefix::network_bits, policy::PrefixKey};

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
        let program_log = program_log::open(&mut ebpf);
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
            program_log,
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
    pub(super) fn adopt_entry_indexes<F: Family>(&mut self) -> Result<(), DatapathError> {
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
    pub(super) fn spans(&self, slot: u32) -> Result<Vec<Span>, DatapathError> {
        let first = slot * SPANS_PER_SLOT;
        let indexes: Vec<u32> = (first..first + SPANS_PER_SLOT).collect();
        mapped::load_sorted(map_data(self, names::SPANS)?.fd().as_fd(), &indexes)
            .map_err(batch::syscall_error(names::SPANS, "mmap"))
    }

    /// The rows of `span` in the table `name`; none if the span lies
    /// outside it (a damaged map).
    pub(super) fn rows<T: aya::Pod>(
        &self,
        name: &'static str,
        span: Span,
    ) -> Result<Vec<T>, DatapathError> {
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

    /// Where the maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.pins.maps_dir()
    }

    /// Whether the maps were adopted with a live policy in them.
    pub fn adopted(&self) -> bool {
        self.active.ready()
    }

    /// The XDP program; only once [`Programs::wait`] has it loaded.
    pub(super) fn program(&mut self) -> &mut Xdp {
        match &mut self.programs {
            Programs::Loaded(ebpf) => ebpf
                .program_mut(PROGRAM_NAME)
                .and_then(|program| program.try_into().ok())
                .expect("loaded in load_program"),
            _ => unreachable!("the program is used only once it is loaded"),
        }
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
}
