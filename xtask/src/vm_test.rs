//! `cargo xtask vm-test`: the end-to-end suite on another kernel (Debian
//! 12's 6.1 by default), in a VM that runs over this machine's root file
//! system (virtme-ng driving qemu). Writes in the guest go to overlays, so
//! the host is left as it was.
//!
//! How qemu runs the guest (KVM, or TCG where nested KVM hangs) is
//! [`crate::guest`]'s.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::bail;

use crate::{
    cargo::{build_firewall_ctl, is_root, test_executables, workspace_root},
    guest::{Accel, with_kvm_or_tcg},
    setup,
    test::Totals,
};

/// How many times slower the daemon runs on TCG's emulated CPUs than on
/// the host, for the tests' deadlines: the capacity test's policy writer,
/// which answers its 10 s watchdog on the host, went 15 s without an
/// answer under TCG.
const TCG_SLOWDOWN: u32 = 4;

/// `cargo xtask vm-test` options.
#[derive(clap::Args)]
pub struct VmTestArgs {
    /// The kernel image to boot [default: Debian 12's 6.1, installed from
    /// Debian's packages if missing].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Boot a Debian 12 root file system with systemd as PID 1 and the
    /// package installed in it, and check it as an operator would
    /// (`tests/tests/booted_host.rs`), instead of running the suite.
    #[arg(long, conflicts_with = "filters")]
    pub boot: bool,
    /// How qemu runs the guest: `auto` tries KVM and falls back to TCG
    /// when the guest shows nothing within 90 s; `tcg` skips that try
    /// where nested KVM is known to hang (CI's machines).
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Only the end-to-end tests whose names contain one of these.
    #[arg(trailing_var_arg = true)]
    pub filters: Vec<String>,
}

pub fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the VM's tests create namespaces and attach XDP as root in the guest: run `cargo xtask vm-test` as root"
        );
    }
    let toolchain = setup::run()?;
    let kernel = match &args.kernel {
        Some(kernel) if kernel.is_file() => kernel.clone(),
        Some(kernel) => bail!(
            "`--kernel {}` is not a kernel image file; give the vmlinuz a kernel package installs under /boot",
            kernel.display()
        ),
        None => setup::vm_kernel()?,
    };
    if args.boot {
        return crate::booted::run(&kernel, args.accel);
    }
    setup::vm()?;
    let binary = build_firewall_ctl(toolchain)?;
    let tests = test_executables(toolchain, &["--package", "firewall-tests", "--tests"])?;
    let script = runner_script(&binary, &tests, &args.filters)?;
    let started = Instant::now();
    let totals = boot_and_run(&kernel, args.accel, &script)?;
    println!(
        "vm-test: the suite ran in {:.0} s on {}",
        started.elapsed().as_secs_f64(),
        kernel.display()
    );
    if !totals.ran() {
        bail!("no test ran in the guest; its output is above");
    }
    totals.finish()
}

/// The script the guest runs: every test binary, two tests at a time, as
/// `cargo test` would, and a last line with the guest's exit status.
fn runner_script(binary: &Path, tests: &[PathBuf], filters: &[String]) -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/vm-test");
    std::fs::create_dir_all(&dir)?;
    let quoted = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let mut script = format!(
        "#!/bin/sh\n\
         # Made by `cargo xtask vm-test`; runs in the guest.\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export FIREWALL_CTL_BIN={} RUST_BACKTRACE=1\n\
         # /etc on a tmpfs copy: the tests add users and groups, which the\n\
         # overlay virtme-ng gives /etc cannot take (shadow's lock).\n\
         mkdir -p /run/etc-rw && mount -t tmpfs tmpfs /run/etc-rw && cp -a /etc/. /run/etc-rw/ \\\n\
             && mount --bind /run/etc-rw /etc\n\
         # The tests hold thousands of sockets (20,000 metrics clients).\n\
         ulimit -n 1048576\n\
         cd {}\n\
         echo \"vm-test: guest kernel $(uname -r), $(nproc) CPUs\"\n\
         status=0\n",
        quoted(&binary.display().to_string()),
        quoted(&workspace_root().display().to_string()),
    );
    let filters: Vec<String> = filters.iter().map(|filter| quoted(filter)).collect();
    for test in tests {
        script.push_str(&format!(
            "{} --test-threads=2 {} || status=1\n",
            quoted(&test.display().to_string()),
            filters.join(" ")
        ));
    }
    script.push_str("echo \"vm-test: guest done, status $status\"\nexit $status\n");
    let path = dir.join("run.sh");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// Boots `kernel` over this machine's root and runs `script` in it: with
/// KVM where it works, else with TCG. Echoes the guest's output and sums
/// its test results.
fn boot_and_run(kernel: &Path, accel: Accel, script: &Path) -> anyhow::Result<Totals> {
    let mut totals = Totals::default();
    let ended = with_kvm_or_tcg(
        kernel,
        accel,
        |kvm| vng(kernel, script, kvm),
        |line| line.starts_with("vm-test: guest"),
        |line| {
            totals.count(line);
            false
        },
    )?;
    if !ended.success() && !totals.failed_any() {
        bail!("the guest failed ({ended})");
    }
    Ok(totals)
}

/// The virtme-ng command that runs `script` on `kernel`.
fn vng(kernel: &Path, script: &Path, kvm: bool) -> Command {
    let mut vng = Command::new("vng");
    vng.arg("--run").arg(kernel).args([
        "--force-9p",
        "--force-initramfs",
        "--disable-microvm",
        "--cpus",
        "2",
        "--memory",
        "6G",
        "--exec",
    ]);
    // The guest's shell runs this; under TCG the daemon runs several times
    // slower (see `firewall_tests::slowdown`).
    vng.arg(format!(
        "FIREWALL_TEST_SLOWDOWN={} '{}'",
        if kvm { 1 } else { TCG_SLOWDOWN },
        script.display()
    ));
    if !kvm {
        vng.arg("--disable-kvm");
    }
    vng
}
