//! The programs `cargo xtask bench` measures the firewall against
//! (`firewall-ebpf/src/bench.rs`): a minimal XDP LPM allowlist holding the
//! same prefixes, and a drop-all program. aya-build compiles them beside
//! the firewall when `firewall-ctl` is built; they are loaded here, never
//! attached, and run with `BPF_PROG_TEST_RUN`.

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, lpm_trie::Key},
    programs::Xdp,
};

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

fn load(program: &str) -> anyhow::Result<Ebpf> {
    let path = object_path()?;
    let mut ebpf = Ebpf::load_file(&path).with_context(|| format!("loading {}", path.display()))?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program} in {}", path.display()))?
        .try_into()?;
    xdp.load()?;
    Ok(ebpf)
}

fn program_fd<'a>(ebpf: &'a Ebpf, program: &str) -> anyhow::Result<BorrowedFd<'a>> {
    let xdp: &Xdp = ebpf
        .program(program)
        .with_context(|| format!("no program {program}"))?
        .try_into()?;
    Ok(xdp.fd()?.as_fd())
}

/// The minimal LPM allowlist, loaded with TCP 443 exposed to `sources`.
pub struct MinimalLpm(Ebpf);

impl MinimalLpm {
    const PROGRAM: &str = "minimal_lpm";

    pub fn load(sources: &[(IpAddr, u8)]) -> anyhow::Result<MinimalLpm> {
        let mut ebpf = load(Self::PROGRAM)?;
        let mut ports: Array<_, u8> = ebpf
            .map_mut("BENCH_PORTS")
            .context("BENCH_PORTS")?
            .try_into()?;
        ports.set(443, 1, 0)?;
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
                IpAddr::V4(address) => {
                    v4.insert(&Key::new(u32::from(*len), address.octets()), 1, 0)?
                }
                IpAddr::V6(address) => {
                    v6.insert(&Key::new(u32::from(*len), address.octets()), 1, 0)?
                }
            }
        }
        Ok(MinimalLpm(ebpf))
    }

    pub fn fd(&self) -> anyhow::Result<BorrowedFd<'_>> {
        program_fd(&self.0, Self::PROGRAM)
    }
}

/// The drop-all program: the floor under any XDP program.
pub struct DropAll(Ebpf);

impl DropAll {
    const PROGRAM: &str = "drop_all";

    pub fn load() -> anyhow::Result<DropAll> {
        Ok(DropAll(load(Self::PROGRAM)?))
    }

    pub fn fd(&self) -> anyhow::Result<BorrowedFd<'_>> {
        program_fd(&self.0, Self::PROGRAM)
    }
}
