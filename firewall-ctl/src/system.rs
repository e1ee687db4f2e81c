//! Facts about the host the daemon needs before it touches anything.

use std::path::Path;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "firewall-ctl daemon needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as root, e.g. `sudo firewall-ctl daemon --config {config}`"
    )]
    Privileges { config: String },
}

/// Fails unless the effective capabilities allow loading and attaching XDP.
pub fn check_privileges(config: &Path) -> Result<(), SystemError> {
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        Ok(())
    } else {
        Err(SystemError::Privileges {
            config: config.display().to_string(),
        })
    }
}

/// Whether this host (this network namespace) has an interface `name`.
pub fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}
