//! Running a guest VM and watching its console, for `vm-test` and
//! `vm-test --boot`.
//!
//! Nested KVM hangs after the boot loader on some machines: a guest that
//! prints nothing within [`FIRST_OUTPUT`] is stopped and started again
//! without KVM (TCG), which boots Debian's 6.1 in seconds.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long a guest may take to show it runs (a line its kernel or the
/// test prints; a boot loader's lines do not count) before it counts as
/// hung.
const FIRST_OUTPUT: Duration = Duration::from_secs(90);
/// How long the guest may print nothing once running (a test that hangs).
const QUIET_LIMIT: Duration = Duration::from_secs(600);
/// Lines of the guest's output shown when it fails or hangs.
const TAIL_LINES: usize = 40;

/// How qemu runs the guest (`vm-test --accel`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
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
