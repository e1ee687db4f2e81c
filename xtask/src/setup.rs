//! `cargo xtask setup`: installs what building the XDP program needs, and
//! nothing that is already there. Prints each step's outcome.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cargo::{EbpfToolchain, is_root, output, run as run_command};

/// LLVM packages bpf-linker links against; versions must match its feature.
const LLVM_PACKAGES: [&str; 3] = ["llvm-22-dev", "libclang-22-dev", "libpolly-22-dev"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The static build's target (`cargo xtask package`).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
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
        ("openssl", "openssl"),
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
    if installed.lines().any(|target| target.trim() == MUSL_TARGET) {
        say(&format!("ok: the {} target", MUSL_TARGET));
    } else {
        run_command(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    }
    Ok(())
}

/// What `cargo xtask vm-test` needs: qemu, virtme-ng (from PyPI), and
/// busybox for the initramfs it makes.
pub fn vm() -> anyhow::Result<()> {
    command_from_package("qemu-system-x86_64", "qemu-system-x86")?;
    command_from_package("busybox", "busybox-static")?;
    if on_path("vng") {
        say("ok: vng (virtme-ng)");
    } else {
        say("installing virtme-ng from PyPI");
        run_command(Command::new("python3").args(["-m", "pip", "install", "--quiet", "virtme-ng"]))
            .context(
                "installing virtme-ng failed; `python3 -m pip install virtme-ng` installs it",
            )?;
        if !on_path("vng") {
            bail!(
                "virtme-ng was installed but `vng` is not on PATH; add pip's script directory to PATH"
            );
        }
    }
    Ok(())
}

/// What `cargo xtask vm-test --boot` needs beside the VM's: mmdebstrap,
/// and mkfs.ext4 with `-d`.
pub fn booted() -> anyhow::Result<()> {
    command_from_package("mmdebstrap", "mmdebstrap")?;
    command_from_package("mkfs.ext4", "e2fsprogs")
}

/// Debian 12's 6.1 kernel image (the newest ABI Debian's packages have),
/// installed if missing.
pub fn vm_kernel() -> anyhow::Result<std::path::PathBuf> {
    if let Some(kernel) = installed_6_1_kernel() {
        say(&format!("ok: {}", kernel.display()));
        return Ok(kernel);
    }
    let candidates = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    ]))
    .unwrap_or_default();
    let newest = candidates
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .max_by_key(|name| abi_6_1(name))
        .map(ToString::to_string);
    let Some(package) = newest else {
        bail!(
            "no Debian 12 6.1 kernel package is known to apt here (`apt-cache search linux-image-6.1.0` finds none): add Debian 12 (bookworm) to the apt sources, or pass `--kernel PATH`"
        );
    };
    apt_install(&[&package])?;
    installed_6_1_kernel()
        .ok_or_else(|| anyhow::anyhow!("{package} installed no /boot/vmlinuz-6.1.*"))
}

/// The newest /boot/vmlinuz-6.1.0-N-amd64.
fn installed_6_1_kernel() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-6.1.0-") && name.ends_with("-amd64"))
        })
        .max_by_key(|path| abi_6_1(&path.to_string_lossy()))
}

/// The ABI number N of a 6.1 kernel's package or image name
/// (`linux-image-6.1.0-N-amd64-unsigned`, `/boot/vmlinuz-6.1.0-N-amd64`).
fn abi_6_1(name: &str) -> Option<u32> {
    name.rsplit("6.1.0-")
        .next()?
        .split('-')
        .next()?
        .parse()
        .ok()
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
