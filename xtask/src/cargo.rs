//! Running cargo and other commands with the eBPF toolchain chosen by setup.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// How `firewall-ctl/build.rs` must build the eBPF crate on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfToolchain {
    /// `nightly` with rust-src (the default `build.rs` uses).
    Nightly,
    /// No usable nightly: stable with rust-src and `RUSTC_BOOTSTRAP=1`.
    StableBootstrap,
}

impl EbpfToolchain {
    /// Sets the variables `build.rs` and aya-build read.
    pub fn apply(self, command: &mut Command) {
        if self == EbpfToolchain::StableBootstrap {
            command
                .env("FIREWALL_EBPF_TOOLCHAIN", "stable")
                .env("RUSTC_BOOTSTRAP", "1");
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `cargo <args>` in the workspace root, with the eBPF toolchain applied.
pub fn cargo(toolchain: EbpfToolchain, args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(workspace_root());
    toolchain.apply(&mut command);
    command
}

/// Runs `command`, failing with its description if it does not succeed.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Runs `command` and returns its stdout when it succeeds, `None` otherwise
/// (including when the program does not exist).
pub fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the daemon and returns the path of the binary.
pub fn build_firewall_ctl(toolchain: EbpfToolchain) -> anyhow::Result<PathBuf> {
    run(&mut cargo(
        toolchain,
        &["build", "--package", "firewall-ctl"],
    ))?;
    Ok(workspace_root().join("target/debug/firewall-ctl"))
}

/// Builds the integration-test binaries `cargo test --no-run <selection>`
/// selects, and returns their paths, sorted.
pub fn test_executables(
    toolchain: EbpfToolchain,
    selection: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    let built = cargo(
        toolchain,
        &[
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ],
    )
    .args(selection)
    .stderr(Stdio::inherit())
    .output()
    .with_context(|| format!("building the tests {selection:?}"))?;
    if !built.status.success() {
        bail!("building the tests {selection:?} failed");
    }
    let mut binaries: Vec<PathBuf> = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["profile"]["test"] == true
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"))
        })
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .collect();
    binaries.sort();
    if binaries.is_empty() {
        bail!("cargo built no test binaries for {selection:?}");
    }
    Ok(binaries)
}

/// Makes `dir` an empty directory, removing whatever it held.
pub fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing `{}`", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))
}
