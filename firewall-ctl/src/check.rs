//! `firewall-ctl check`: validate a config without root and summarise it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{api, config, daemon};

/// `firewall-ctl check --json`.
#[derive(Serialize)]
pub struct CheckReport {
    pub config: PathBuf,
    pub valid: bool,
    pub interfaces: Vec<String>,
    pub xdp_mode: config::XdpModeSetting,
    pub mode: String,
    pub socket: PathBuf,
    pub rules: Vec<CheckedRule>,
    /// Distinct prefixes after merging duplicates: what the maps will hold.
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// Distinct (protocol, port) pairs exposed.
    pub ports: usize,
}

#[derive(Serialize)]
pub struct CheckedRule {
    pub name: String,
    pub ports: Vec<String>,
    pub sources_v4: usize,
    pub sources_v6: usize,
    pub comment: Option<String>,
}

/// Validates the config at `path` exactly as the daemon would, and
/// summarises it.
pub fn report(path: &Path) -> anyhow::Result<CheckReport> {
    let (config, policy) = daemon::load_policy(path)?;
    Ok(CheckReport {
        config: path.to_path_buf(),
        valid: true,
        interfaces: config.interfaces.clone(),
        xdp_mode: config.xdp_mode,
        mode: api::mode_name(config.enforce),
        socket: config.socket.clone(),
        rules: config
            .rules
            .iter()
            .map(|rule| CheckedRule {
                name: rule.name.clone(),
                ports: rule.ports.iter().map(ToString::to_string).collect(),
                sources_v4: rule.sources.iter().filter(|prefix| prefix.is_v4()).count(),
                sources_v6: rule.sources.iter().filter(|prefix| !prefix.is_v4()).count(),
                comment: rule.comment.clone(),
            })
            .collect(),
        prefixes_v4: policy.v4.len(),
        prefixes_v6: policy.v6.len(),
        ports: policy.ports.len(),
    })
}
