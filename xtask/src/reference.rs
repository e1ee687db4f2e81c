//! The programs `cargo xtask bench` measures the firewall against
//! (`firewall-ebpf/src/bench.rs`): a minimal XDP LPM allowlist holding the
//! same prefixes, a drop-all and a pass-all program, and the traffic
//! generator. aya-build compiles them beside the firewall when
//! `firewall-ctl` is built; they are loaded here, attached to the bench's
//! veths or run with `BPF_PROG_TEST_RUN`.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, lpm_trie::Key},
    programs::{Xdp, XdpMode},
};

use firewall_common::{maps::PortKey, wire::protocol};

use crate::cargo::workspace_root;

/// The object aya-build wrote for the release build of `firewall-ctl`:
/// the newest `bench` under its build script outputs.
fn object_path() -> anyhow::Result<PathBuf> {
    let build = workspace_root().join("target/release/build");
    let newest = std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("firewall-ctl-")
        })
        .map(|entry| entry.path().join("out/bench"))
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .max();
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no bench object under {}: build firewall-ctl in release mode first",
            build.display()
        ),
    }
}

/// One program of the bench object, loaded (with the object's maps).
pub struct Program {
    ebpf: Ebpf,
    name: &'static str,
}

impl Program {
    fn load(name: &'static str) -> anyhow::Result<Program> {
        let path = object_path()?;
        let mut ebpf =
            Ebpf::load_file(&path).with_context(|| format!("loading {}", path.display()))?;
        let xdp: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in {}", path.display()))?
            .try_into()?;
        xdp.load()?;
        Ok(Program { ebpf, name })
    }

    fn xdp(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(self.name)
            .with_context(|| format!("no program {}", self.name))?
            .try_into()?)
    }

    pub fn fd(&self) -> anyhow::Result<BorrowedFd<'_>> {
        let xdp: &Xdp = self
            .ebpf
            .program(self.name)
            .with_context(|| format!("no program {}", self.name))?
            .try_into()?;
        Ok(xdp.fd()?.as_fd())
    }

    /// Attaches the program in driver mode to `interface` of the calling
    /// thread's namespace, until it is dropped.
    pub fn attach(&mut self, interface: &str) -> anyhow::Result<()> {
        let name = self.name;
        self.xdp()?
            .attach(interface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {interface}"))?;
        Ok(())
    }
}

/// The minimal LPM allowlist, loaded with TCP 443 exposed to `sources`.
pub fn minimal_lpm(sources: &[(IpAddr, u8)]) -> anyhow::Result<Program> {
    let mut program = Program::load("minimal_lpm")?;
    let ebpf = &mut program.ebpf;
    let mut ports: Array<_, u8> = ebpf
        .map_mut("BENCH_PORTS")
        .context("BENCH_PORTS")?
        .try_into()?;
    let https = PortKey::new(protocol::TCP, 443)
        .index()
        .context("TCP has port indexes")?;
    ports.set(https, 1, 0)?;
    // Taken out of the object: the loaded program keeps them alive.
    let mut v4: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(
        ebpf.take_map("BENCH_SOURCES_V4")
            .context("BENCH_SOURCES_V4")?,
    )?;
    let mut v6: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.take_map("BENCH_SOURCES_V6")
            .context("BENCH_SOURCES_V6")?,
    )?;
    for (address, len) in sources {
        match address {
            IpAddr::V4(address) => v4.insert(&Key::new(u32::from(*len), address.octets()), 1, 0)?,
            IpAddr::V6(address) => v6.insert(&Key::new(u32::from(*len), address.octets()), 1, 0)?,
        }
    }
    Ok(program)
}

/// Drops every packet: the floor under any XDP program.
pub fn drop_all() -> anyhow::Result<Program> {
    Program::load("drop_all")
}

/// Passes every packet: attached where netfilter is measured, so that the
/// veth takes redirected frames in.
pub fn pass_all() -> anyhow::Result<Program> {
    Program::load("pass_all")
}

/// The traffic generator, cycling through `sources` (repeated to fill its
/// table).
pub fn generator(sources: &[Ipv4Addr]) -> anyhow::Result<Program> {
    if sources.is_empty() {
        bail!("the generator needs at least one source");
    }
    let mut program = Program::load("generate")?;
    let mut table: Array<_, [u8; 4]> = program
        .ebpf
        .map_mut("GENERATOR_SOURCES")
        .context("GENERATOR_SOURCES")?
        .try_into()?;
    for index in 0..table.len() {
        table.set(index, sources[index as usize % sources.len()].octets(), 0)?;
    }
    Ok(program)
}
