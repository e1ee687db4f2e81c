//! The command line's `--socket`, `--state-dir` and `--bpf-dir`, which win
//! over the config's at start-up and at every reload alike.

use std::path::{Path, PathBuf};

use crate::{
    config::{self, Config},
    system::LiveHost,
};

/// Where the daemon keeps its files and listens, when the command line
/// says otherwise than the config.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub bpf_dir: Option<PathBuf>,
}

impl Overrides {
    /// Loads the config at `path` with these overrides applied: start-up
    /// and every reload see the same paths.
    pub fn load(&self, path: &Path) -> Result<(Config, String), config::ConfigError> {
        let text = config::read(path)?;
        Ok((self.parse(path, &text)?, text))
    }

    /// Validates `text`, a copy kept of the config at `path` (the policy a
    /// pending reload rolls back to), with these overrides applied.
    pub fn parse(&self, path: &Path, text: &str) -> Result<Config, config::ConfigError> {
        let mut config = config::parse_at(path, text, &LiveHost)?;
        if let Some(socket) = &self.socket {
            config.socket = socket.clone();
        }
        if let Some(state_dir) = &self.state_dir {
            config.state_dir = state_dir.clone();
        }
        if let Some(bpf_dir) = &self.bpf_dir {
            config.bpf_dir = bpf_dir.clone();
        }
        Ok(config)
    }
}
