//! `cargo xtask test`: every test, unit and end-to-end.

use std::process::Command;

use firewall_tests::lab::NETNS_PREFIX;

use crate::{
    cargo::{build_firewall_ctl, cargo, is_root, output, run as run_command},
    setup,
};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    let toolchain = setup::run()?;
    if is_root() {
        remove_leftover_namespaces();
    } else {
        println!(
            "xtask test: not root: end-to-end tests will say SKIPPED; run as root to run them"
        );
    }
    // The end-to-end tests run this binary; build it first, fresh.
    let binary = build_firewall_ctl(toolchain)?;
    // The eBPF crate builds only for the bpf target (through build.rs).
    let mut test = cargo(
        toolchain,
        &["test", "--workspace", "--exclude", "firewall-ebpf"],
    );
    test.args(extra).env("FIREWALL_CTL_BIN", binary);
    run_command(&mut test)
}

/// Namespaces of test runs that were killed before they could clean up:
/// named `fwt-<pid>-...` after a test process that no longer exists.
fn remove_leftover_namespaces() {
    let Some(list) = output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let owner = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if owner.is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists()) {
            println!("xtask test: removing leftover namespace {name}");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
