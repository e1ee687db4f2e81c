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
    #[error("{}", missing_interfaces(interfaces, config))]
    MissingInterfaces {
        interfaces: Vec<String>,
        config: String,
    },
}

fn missing_interfaces(interfaces: &[String], config: &str) -> String {
    let names: Vec<String> = interfaces.iter().map(|name| format!("`{name}`")).collect();
    format!(
        "config `{config}`: interface {} does not exist on this host; fix `interfaces` (`ip link` lists the interfaces)",
        names.join(", ")
    )
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

/// Fails naming every listed interface the host does not have.
pub fn check_interfaces(interfaces: &[String], config: &Path) -> Result<(), SystemError> {
    let missing: Vec<String> = interfaces
        .iter()
        .filter(|name| !Path::new("/sys/class/net").join(name).exists())
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SystemError::MissingInterfaces {
            interfaces: missing,
            config: config.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interfaces_are_named_with_a_fix() {
        let err = check_interfaces(
            &["lo".into(), "fwtest-nope0".into()],
            Path::new("/etc/fw.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config `/etc/fw.toml`: interface `fwtest-nope0` does not exist on this host; fix `interfaces` (`ip link` lists the interfaces)"
        );
        assert!(check_interfaces(&["lo".into()], Path::new("x")).is_ok());
    }
}
