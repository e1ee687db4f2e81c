//! `cargo xtask test`: every test, unit and end-to-end.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use firewall_tests::{lab::NETNS_PREFIX, users::ACCOUNT_PREFIX};

use crate::{
    cargo::{build_firewall_ctl, cargo, is_root, output},
    setup,
};

/// How `firewall_tests::root_or_skip` starts its line.
const SKIP_MARKER: &str = "SKIPPED ";

pub fn run(binary: Option<&std::path::Path>, extra: &[String]) -> anyhow::Result<()> {
    let toolchain = setup::run()?;
    let root = is_root();
    if root {
        remove_leftover_namespaces();
        remove_leftover_accounts();
    } else {
        println!(
            "xtask test: not root: the end-to-end tests skip and say SKIPPED below; run as root to run them"
        );
    }
    // The end-to-end tests run this binary; unless given one, build it
    // first, fresh.
    let binary = match binary {
        // Absolute: the tests run in their crate's directory.
        Some(binary) if binary.is_file() => binary
            .canonicalize()
            .with_context(|| format!("resolving `{}`", binary.display()))?,
        Some(binary) => bail!(
            "`--binary {}` is not a file: build it first (`cargo xtask package` makes the static one)",
            binary.display()
        ),
        None => build_firewall_ctl(toolchain)?,
    };
    // The eBPF crate builds only for the bpf target (through build.rs).
    let mut test = cargo(
        toolchain,
        &["test", "--workspace", "--exclude", "firewall-ebpf"],
    );
    test.args(extra).env("FIREWALL_CTL_BIN", binary);
    if !root {
        // A skipping test passes; show its captured SKIPPED line to count it.
        if !extra.iter().any(|arg| arg == "--") {
            test.arg("--");
        }
        test.arg("--show-output");
    }
    let totals = run_counting(&mut test)?;
    totals.finish()
}

/// What test binaries said, summed over their `test result:` lines.
#[derive(Default)]
pub struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Passed without running because they need root.
    skipped: u64,
}

impl Totals {
    /// Counts what `line` of a test binary's output says.
    pub fn count(&mut self, line: &str) {
        if line.starts_with(SKIP_MARKER) {
            self.skipped += 1;
        }
        if let Some(summary) = line.strip_prefix("test result: ") {
            for part in summary.split([';', '.']).map(str::trim) {
                let count = |word: &str| {
                    part.strip_suffix(word)
                        .and_then(|n| n.trim().parse::<u64>().ok())
                };
                if let Some(n) = count("passed") {
                    self.passed += n;
                } else if let Some(n) = count("failed") {
                    self.failed += n;
                } else if let Some(n) = count("ignored") {
                    self.ignored += n;
                }
            }
        }
    }

    /// Whether any test failed.
    pub fn failed_any(&self) -> bool {
        self.failed > 0
    }

    /// Whether any test ran.
    pub fn ran(&self) -> bool {
        self.passed + self.failed > 0
    }

    /// Prints one plain closing line over all test binaries; fails if a
    /// test did.
    pub fn finish(&self) -> anyhow::Result<()> {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed - self.skipped,
            self.failed,
            self.ignored + self.skipped
        );
        if self.failed > 0 {
            bail!("{} test(s) failed", self.failed);
        }
        Ok(())
    }
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn run_counting(command: &mut Command) -> anyhow::Result<Totals> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        totals.count(&line);
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        bail!("{command:?} failed with {status}");
    }
    Ok(totals)
}

/// Whether `name` is `<prefix><pid>...` of a test process that no longer
/// exists (killed before it could clean up).
fn left_over(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists()
}

/// Namespaces of killed test runs: `fwt-<pid>-...`.
fn remove_leftover_namespaces() {
    let Some(list) = output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| left_over(name, NETNS_PREFIX))
    {
        println!("xtask test: removing leftover namespace {name}");
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

/// Users and groups of killed test runs: `fwt<pid>u<n>`, `fwt<pid>g<n>`.
fn remove_leftover_accounts() {
    for (database, remove) in [("/etc/passwd", "userdel"), ("/etc/group", "groupdel")] {
        let Ok(entries) = std::fs::read_to_string(database) else {
            continue;
        };
        for name in entries
            .lines()
            .filter_map(|line| line.split(':').next())
            .filter(|name| left_over(name, ACCOUNT_PREFIX))
        {
            println!("xtask test: removing leftover test account {name}");
            let _ = Command::new(remove).arg(name).status();
        }
    }
}
