//! `cargo xtask setup`: installs what building the XDP program needs, and
//! nothing that is already there. Prints each step's outcome.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cargo::{EbpfToolchain, is_root, output, run as run_command};

/// LLVM packages bpf-linker links against; versions must match its feature.
const LLVM_PACKAGES: [&str; 3] = ["llvm-22-dev", "libclang-22-dev", "libpolly-22-dev"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// What builds the Debian package.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Makes the machine able to build and test; returns the eBPF toolchain to use.
pub fn run() -> anyhow::Result<EbpfToolchain> {
    println!("xtask setup: checking build prerequisites");
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!(
            "rustup is not installed; install Rust with rustup (https://rustup.rs), then rerun `cargo xtask setup`"
        );
    }
    let toolchain = ebpf_toolchain()?;
    bpf_linker()?;
    // What the end-to-end tests and the demo run.
    for (command, package) in [
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("setpriv", "util-linux"),
        ("useradd", "passwd"),
        ("groupadd", "passwd"),
        ("chattr", "e2fsprogs"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        // What `cargo xtask bench` compares against.
        ("ipset", "ipset"),
        ("iptables-legacy", "iptables"),
    ] {
        command_from_package(command, package)?;
    }
    println!("xtask setup: done");
    Ok(toolchain)
}

/// What `cargo xtask package` needs besides the build: cargo-deb, lintian,
/// the musl target and musl-gcc (for ring's C parts).
pub fn packaging() -> anyhow::Result<()> {
    if output(Command::new("cargo").args(["deb", "--version"])).is_some() {
        say("ok: cargo-deb");
    } else {
        say(&format!("installing cargo-deb {CARGO_DEB_VERSION}"));
        run_command(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))
        .context("installing cargo-deb failed")?;
    }
    command_from_package("lintian", "lintian")?;
    command_from_package("musl-gcc", "musl-tools")?;
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed
        .lines()
        .any(|target| target.trim() == crate::package::MUSL_TARGET)
    {
        say(&format!("ok: the {} target", crate::package::MUSL_TARGET));
    } else {
        run_command(Command::new("rustup").args(["target", "add", crate::package::MUSL_TARGET]))?;
    }
    Ok(())
}

fn say(done: &str) {
    println!("  {done}");
}

fn has_rust_src(toolchain: &str) -> bool {
    output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .is_some_and(|installed| installed.lines().any(|line| line.starts_with("rust-src")))
}

/// Nightly with rust-src; else stable with rust-src under RUSTC_BOOTSTRAP.
fn ebpf_toolchain() -> anyhow::Result<EbpfToolchain> {
    let has_nightly =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_some();
    if !has_nightly {
        say("installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        let installed = Command::new("rustup")
            .args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ])
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            say("nightly is not available here; using stable with RUSTC_BOOTSTRAP=1 instead");
            if !has_rust_src("stable") {
                run_command(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "stable",
                ]))
                .context("adding rust-src to stable")?;
            }
            say("ok: stable toolchain with rust-src");
            return Ok(EbpfToolchain::StableBootstrap);
        }
    }
    if has_rust_src("nightly") {
        say("ok: nightly toolchain with rust-src");
    } else {
        say("adding rust-src to the nightly toolchain");
        run_command(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(EbpfToolchain::Nightly)
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        say(&format!("ok: {}", version.trim()));
        return Ok(());
    }
    let missing: Vec<&str> = LLVM_PACKAGES
        .into_iter()
        .filter(|package| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        say("ok: LLVM 22 development packages");
    } else {
        apt_install(&missing)?;
    }
    say(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)"
    ));
    run_command(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("installing bpf-linker failed")?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Whether `command` is an executable file in a directory of `PATH` (or
/// the sbin directories, which a non-login root shell may lack).
fn on_path(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| {
            std::fs::metadata(dir.join(command)).is_ok_and(|metadata| {
                std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0
            })
        })
}

fn command_from_package(command: &str, package: &str) -> anyhow::Result<()> {
    if on_path(command) {
        say(&format!("ok: {command}"));
        return Ok(());
    }
    apt_install(&[package])
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let list = packages.join(" ");
    if output(Command::new("apt-get").arg("--version")).is_none() {
        bail!(
            "{list} must be installed, and this machine has no apt-get: install them with your package manager, then rerun `cargo xtask setup`"
        );
    }
    if !is_root() {
        bail!(
            "installing {list} needs root: run `sudo cargo xtask setup` (or install them yourself)"
        );
    }
    say(&format!("installing {list} with apt-get"));
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
