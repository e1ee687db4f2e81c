//! Attaching the XDP program to interfaces with pinned links, taking
//! over an earlier daemon's links atomically, and detaching.

use std::path::Path;

use aya::{
    programs::{
        ProgramError, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use tracing::{info, warn};

use super::{Datapath, DatapathError, LinkError, flows};
use crate::{api::AttachMode, config::XdpModeSetting};

impl AttachMode {
    fn flags(self) -> XdpMode {
        match self {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// The program on one interface, kept attached by its pinned link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    /// Taken over from an earlier daemon (the program was swapped on its
    /// link), rather than attached now.
    pub adopted: bool,
}

impl XdpModeSetting {
    /// Whether a link attached in `mode` satisfies this setting.
    fn accepts(self, mode: AttachMode) -> bool {
        match self {
            XdpModeSetting::Auto => true,
            XdpModeSetting::Driver => mode == AttachMode::Driver,
            XdpModeSetting::Skb => mode == AttachMode::Skb,
        }
    }
}

/// Whether an attach failed because the interface already has an XDP program.
fn is_busy(error: &LinkError) -> bool {
    let LinkError::Program(error) = error else {
        return false;
    };
    let errno = match error {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(netlink)) => {
            netlink.raw_os_error()
        }
        _ => None,
    };
    matches!(errno, Some(libc::EBUSY | libc::EEXIST))
}

impl Datapath {
    /// Makes this daemon's program run on `interface`, pinned. A link an
    /// earlier daemon pinned there in a mode `setting` accepts is kept and
    /// gets this program swapped in atomically; otherwise the program is
    /// attached (`Auto`: driver mode, else generic) and its link pinned.
    pub fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
    ) -> Result<Attachment, DatapathError> {
        self.programs.wait()?;
        if let Some((mode, path)) = self.pins.link_of(interface) {
            if !setting.accepts(mode) {
                warn!(interface, pinned = %mode, wanted = %setting, "the pinned link has another XDP mode; re-attaching (the interface is unprotected for a moment)");
            } else {
                match self.swap_program_on(&path) {
                    Ok(()) => {
                        info!(interface, %mode, "adopted the pinned XDP link; this daemon's program now runs on it");
                        return Ok(Attachment {
                            interface: interface.to_string(),
                            mode,
                            adopted: true,
                        });
                    }
                    Err(err) => {
                        warn!(interface, error = %err, "the pinned XDP link cannot be reused (was the interface recreated?); attaching anew")
                    }
                }
            }
            self.pins
                .remove_xdp_link(interface)
                .map_err(|source| DatapathError::Pin {
                    interface: interface.to_string(),
                    path: path.clone(),
                    source,
                })?;
        }
        let attempt = |datapath: &mut Self, mode: AttachMode| {
            datapath.attach_pinned(interface, mode).map_err(|source| {
                if is_busy(&source) {
                    DatapathError::Busy {
                        interface: interface.to_string(),
                    }
                } else {
                    DatapathError::Attach {
                        interface: interface.to_string(),
                        mode,
                        source,
                    }
                }
            })
        };
        let mode = match setting {
            XdpModeSetting::Driver => {
                attempt(self, AttachMode::Driver).map(|()| AttachMode::Driver)?
            }
            XdpModeSetting::Skb => attempt(self, AttachMode::Skb).map(|()| AttachMode::Skb)?,
            XdpModeSetting::Auto => match attempt(self, AttachMode::Driver) {
                Ok(()) => AttachMode::Driver,
                Err(err @ DatapathError::Busy { .. }) => return Err(err),
                Err(err) => {
                    warn!(interface, error = %err, "driver mode unavailable; falling back to generic (skb) mode, which is slower");
                    attempt(self, AttachMode::Skb)?;
                    AttachMode::Skb
                }
            },
        };
        info!(interface, %mode, "attached XDP program");
        Ok(Attachment {
            interface: interface.to_string(),
            mode,
            adopted: false,
        })
    }

    /// Detaches the programs from `interface` by unpinning their links.
    pub fn detach(&self, interface: &str) -> std::io::Result<()> {
        flows::remove_netlink_filter(interface);
        self.pins.remove_interface(interface)?;
        info!(interface, "detached XDP program");
        Ok(())
    }

    /// Attaches in `mode` through a BPF link and pins the link.
    pub(super) fn attach_pinned(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(), LinkError> {
        let path = self.pins.link_path(interface, mode);
        self.pins.prepare_link(interface)?;
        let program = self.program();
        let id = program.attach(interface, mode.flags())?;
        let link = FdLink::try_from(program.take_link(id)?)?;
        // Our descriptor closes at the end of this function; the pin keeps
        // the link, and with it the program, attached.
        link.pin(&path)?;
        Ok(())
    }

    /// Replaces the program on the pinned link at `path` with this one:
    /// one `bpf_link_update`, so no packet goes unfiltered.
    pub(super) fn swap_program_on(&mut self, path: &Path) -> Result<(), LinkError> {
        let pinned = PinnedLink::from_pin(path)?;
        let link = XdpLink::try_from(FdLink::from(pinned))?;
        let program = self.program();
        let id = program.attach_to_link(link)?;
        drop(program.take_link(id)?);
        Ok(())
    }

    /// Unpins links of interfaces that are not in `interfaces`, and maps of
    /// other layout versions (no link runs their program any more).
    pub fn remove_stale_pins(&self, interfaces: &[String]) {
        for interface in self.pins.interfaces() {
            if !interfaces.contains(&interface) {
                match self.detach(&interface) {
                    Ok(()) => info!(
                        interface,
                        "detached XDP program: the interface is no longer in the config"
                    ),
                    Err(err) => {
                        warn!(interface, error = %err, "unpinning the link of a removed interface failed")
                    }
                }
            }
        }
        for old in self.pins.other_layouts() {
            match std::fs::remove_dir_all(&old) {
                Ok(()) => info!(maps = %old.display(), "removed the maps of an older layout"),
                Err(err) => {
                    warn!(maps = %old.display(), error = %err, "removing the maps of an older layout failed")
                }
            }
        }
    }
}
