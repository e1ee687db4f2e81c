//! `firewall-ctl detach`: the one way to remove the firewall. Stops the
//! daemon if one runs on this firewall, then unpins its links (the kernel
//! detaches the program) and its maps.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    api::{Command, Response},
    datapath::pins::PinDir,
};

/// How long a stopping daemon may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `firewall-ctl detach --json`.
#[derive(Debug, Serialize)]
pub struct DetachReport {
    pub bpf_dir: PathBuf,
    /// The daemon stopped first, if one ran.
    pub stopped_daemon_pid: Option<u32>,
    /// The systemd service it ran as, stopped through systemd (which would
    /// otherwise start it again).
    pub stopped_unit: Option<String>,
    /// Interfaces the program was detached from.
    pub detached: Vec<String>,
    /// Whether the maps and the directory were removed too (not with
    /// `--interface`).
    pub removed_maps: bool,
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`; comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// The systemd service whose main process is `pid`, if systemd runs this
/// host: not a service that merely contains it (a shell, a CI job).
fn systemd_unit_of(pid: u32) -> Option<String> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let unit = unit_in_cgroups(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)?;
    let shown = std::process::Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", &unit])
        .output()
        .ok()?;
    let main_pid: u32 = String::from_utf8_lossy(&shown.stdout).trim().parse().ok()?;
    (main_pid == pid).then_some(unit)
}

/// The service in a `/proc/PID/cgroup` listing (`0::/system.slice/NAME.service`,
/// or a cgroup v1 line with the same path).
fn unit_in_cgroups(listing: &str) -> Option<String> {
    listing
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(|path| path.rsplit('/').find(|part| part.ends_with(".service")))
        .map(ToString::to_string)
}

/// Stops the daemon listening on `socket` if it runs the firewall in
/// `bpf_dir`: through systemd if it runs it (a signal would only have it
/// restarted), else with SIGTERM. Returns its pid and unit.
fn stop_daemon(socket: &Path, bpf_dir: &Path) -> anyhow::Result<(Option<u32>, Option<String>)> {
    let Ok(Response::Status(status)) = crate::client::call(socket, Command::Status, None) else {
        return Ok((None, None));
    };
    if status.bpf_dir != bpf_dir {
        eprintln!(
            "note: the daemon on `{}` (pid {}) runs the firewall in `{}`, not `{}`; leaving it running",
            socket.display(),
            status.pid,
            status.bpf_dir.display(),
            bpf_dir.display()
        );
        return Ok((None, None));
    }
    let pid = nix::unistd::Pid::from_raw(status.pid as i32);
    let unit = systemd_unit_of(status.pid);
    match &unit {
        Some(unit) => {
            let stopped = std::process::Command::new("systemctl")
                .args(["stop", unit])
                .status()
                .with_context(|| format!("running `systemctl stop {unit}`"))?;
            if !stopped.success() {
                bail!("`systemctl stop {unit}` failed ({stopped}); nothing was detached");
            }
        }
        None => nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("stopping the daemon (pid {pid})"))?,
    }
    let started = Instant::now();
    while running(status.pid) {
        if started.elapsed() > STOP_TIMEOUT {
            bail!(
                "the daemon (pid {pid}) did not stop within {} s; nothing was detached",
                STOP_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Some(status.pid), unit))
}

/// Removes the firewall pinned in `bpf_dir`, or only its link on `interface`.
pub fn run(socket: &Path, bpf_dir: &Path, interface: Option<&str>) -> anyhow::Result<DetachReport> {
    let Some(pins) = PinDir::existing(bpf_dir) else {
        bail!(
            "no firewall is pinned in `{}`; if it runs elsewhere, pass `--config` with its config or `--bpf-dir DIR`",
            bpf_dir.display()
        );
    };
    let links = pins.links();
    if let Some(interface) = interface
        && !links.iter().any(|(name, _, _)| name == interface)
    {
        bail!(
            "the firewall in `{}` is not attached to `{interface}`; it is attached to: {}",
            bpf_dir.display(),
            links
                .iter()
                .map(|(name, _, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (stopped_daemon_pid, stopped_unit) = stop_daemon(socket, bpf_dir)?;
    let mut detached = Vec::new();
    for (name, _, _) in links
        .iter()
        .filter(|(name, _, _)| interface.is_none_or(|interface| interface == name))
    {
        crate::datapath::flows::remove_netlink_filter(name);
        pins.remove_interface(name)
            .with_context(|| format!("unpinning the link of `{name}`"))?;
        detached.push(name.clone());
    }
    let removed_maps = interface.is_none();
    if removed_maps {
        pins.remove_all()
            .with_context(|| format!("removing `{}`", bpf_dir.display()))?;
    }
    Ok(DetachReport {
        bpf_dir: bpf_dir.to_path_buf(),
        stopped_daemon_pid,
        stopped_unit,
        detached,
        removed_maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_read_from_the_cgroup_listing() {
        assert_eq!(
            unit_in_cgroups("0::/system.slice/firewall-ctl.service\n").as_deref(),
            Some("firewall-ctl.service")
        );
        assert_eq!(
            unit_in_cgroups("12:pids:/\n1:name=systemd:/system.slice/fw.service/sub\n0::/\n")
                .as_deref(),
            Some("fw.service")
        );
        assert_eq!(
            unit_in_cgroups("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
    }
}
