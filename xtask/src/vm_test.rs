//! `cargo xtask vm-test`: the end-to-end suite on another kernel (Debian
//! 12's 6.1 by default), in a VM that runs over this machine's root file
//! system (virtme-ng driving qemu). Writes in the guest go to overlays, so
//! the host is left as it was.
//!
//! Nested KVM hangs after the boot loader on some machines: a guest that
//! prints nothing within [`FIRST_OUTPUT`] is stopped and started again
//! without KVM (TCG), which boots Debian's 6.1 in seconds.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cargo::{build_firewall_ctl, is_root, test_executables, workspace_root},
    setup,
    test::Totals,
};

/// How long a guest may take to show it runs (a line its kernel or the
/// test prints; a boot loader's lines do not count) before it counts as
/// hung.
const FIRST_OUTPUT: Duration = Duration::from_secs(90);
/// How long the guest may print nothing once running (a test that hangs).
const QUIET_LIMIT: Duration = Duration::from_secs(600);
/// How many times slower the daemon runs on TCG's emulated CPUs than on
/// the host, for the tests' deadlines: the capacity test's policy writer,
/// which answers its 10 s watchdog on the host, went 15 s without an
/// answer under TCG.
const TCG_SLOWDOWN: u32 = 4;
/// Lines of the guest's output shown when it fails or hangs.
const TAIL_LINES: usize = 40;

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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
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

/// Runs the guest that `guest(kvm)` starts: with `accel` `auto`, with KVM
/// if this machine has it, and again without if no line showed it running
/// (`alive`) in time; hands each line of its console to `each` (which
/// returns `true` to stop the guest there).
pub fn with_kvm_or_tcg(
    kernel: &Path,
    accel: Accel,
    mut guest: impl FnMut(bool) -> Command,
    alive: impl Fn(&str) -> bool,
    mut each: impl FnMut(&str) -> bool,
) -> anyhow::Result<std::process::ExitStatus> {
    let has_kvm = Path::new("/dev/kvm").exists();
    if accel == Accel::Kvm && !has_kvm {
        bail!("`--accel kvm`, but this machine has no /dev/kvm: use `--accel tcg` or `auto`");
    }
    if accel == Accel::Kvm || (accel == Accel::Auto && has_kvm) {
        println!("vm-test: booting {} with KVM", kernel.display());
        match watch(&mut guest(true), &alive, &mut each)? {
            Watched::Ended(status) => return Ok(status),
            Watched::Silent if accel == Accel::Kvm => bail!(
                "the guest did not get going within {} s with KVM (nested KVM hangs after the boot loader on some machines): try `--accel tcg`",
                FIRST_OUTPUT.as_secs()
            ),
            Watched::Silent => println!(
                "vm-test: the guest did not get going within {} s with KVM (nested KVM hangs after the boot loader on some machines); booting again without it (TCG)",
                FIRST_OUTPUT.as_secs()
            ),
        }
    }
    println!("vm-test: booting {} without KVM (TCG)", kernel.display());
    match watch(&mut guest(false), &alive, &mut each)? {
        Watched::Ended(status) => Ok(status),
        Watched::Silent => bail!(
            "the guest did not get going within {} s without KVM either; is `{}` a bootable x86-64 kernel?",
            FIRST_OUTPUT.as_secs(),
            kernel.display()
        ),
    }
}

enum Watched {
    /// It printed and ended, or `each` stopped it (then with a success).
    Ended(std::process::ExitStatus),
    /// It printed nothing in time, and was stopped.
    Silent,
}

/// Runs `command` (a guest), echoing its console and handing each line to
/// `each`; stops it when `each` says so, when no line showed it running
/// (`alive`) within [`FIRST_OUTPUT`], or when it printed nothing more for
/// [`QUIET_LIMIT`] (then fails with the last lines it printed).
fn watch(
    command: &mut Command,
    alive: &impl Fn(&str) -> bool,
    each: &mut impl FnMut(&str) -> bool,
) -> anyhow::Result<Watched> {
    // Its stdout and stderr both into one pipe: virtme-ng has qemu open
    // `/proc/self/fd/2` as a console file, which truncated a log file that
    // stderr went to.
    let (output, console) = std::io::pipe().context("making a pipe for the guest's console")?;
    let spawned = command
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        // A group of its own: stopping it stops the qemu it starts too.
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {command:?}"));
    // The command holds the pipe's writing end until told otherwise: the
    // guest's end must be the last, so that its exit ends the lines.
    command.stdout(Stdio::null()).stderr(Stdio::inherit());
    let mut child = spawned?;
    let lines = forward_lines(output);
    let mut tail = std::collections::VecDeque::new();
    let started = Instant::now();
    let mut running = false;
    loop {
        let waited = if running {
            QUIET_LIMIT
        } else {
            FIRST_OUTPUT.saturating_sub(started.elapsed())
        };
        match lines.recv_timeout(waited) {
            // The console's own padding.
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => {
                println!("{line}");
                running |= alive(&line);
                let done = each(&line);
                tail.push_back(line);
                if tail.len() > TAIL_LINES {
                    tail.pop_front();
                }
                if done {
                    stop(&mut child);
                    return Ok(Watched::Ended(std::process::ExitStatus::default()));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stop(&mut child);
                if !running {
                    return Ok(Watched::Silent);
                }
                bail!(
                    "the guest printed nothing for {} s (hung?); its last lines:\n{}",
                    QUIET_LIMIT.as_secs(),
                    Vec::from(tail).join("\n")
                );
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "vm-test: the guest ended with {status}; its last lines:\n{}",
            Vec::from(tail).join("\n")
        );
    }
    Ok(Watched::Ended(status))
}

/// The guest's console, a line at a time, from a thread of its own.
fn forward_lines(output: std::io::PipeReader) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Stops the guest: vng and the qemu it started (its process group).
fn stop(child: &mut Child) {
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}
