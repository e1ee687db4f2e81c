//! Where the data plane lives between daemon runs: a directory on a BPF
//! file system (`bpf_dir`) that holds the maps and one link per interface.
//! While they are pinned, the kernel keeps the program attached and
//! enforcing whatever happens to the daemon.
//!
//! ```text
//! bpf_dir/
//!   maps-v2/ACTIVE, SOURCES_V4_0, ...   the maps of layout version 2
//!   links/eth0/driver                   the XDP link on eth0 (attach mode in the name)
//!   links/eth0/tc-egress                its TC egress link (flow tracking, TCX)
//! ```

use std::{
    fs::DirBuilder,
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use firewall_common::maps::LAYOUT_VERSION;

use crate::api::AttachMode;

/// Where systemd and most distributions mount the BPF file system.
const CONVENTIONAL_MOUNT: &str = "/sys/fs/bpf";
const MAPS_PREFIX: &str = "maps-v";
const LINKS_DIR: &str = "links";
/// Name of the TC egress link's pin, beside the XDP link's.
const EGRESS_LINK: &str = "tc-egress";

#[derive(Debug, thiserror::Error)]
pub enum PinDirError {
    #[error(
        "bpf_dir `{}` is not on a BPF file system; mount one (`mount -t bpf bpf {}`), or point `bpf_dir` at a directory on one",
        dir.display(),
        mount.display()
    )]
    NotBpfFs { dir: PathBuf, mount: PathBuf },
    #[error("bpf_dir `{}`: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Detaches the link pinned at `path` at once (`BPF_LINK_DETACH`, Linux
/// 5.9), under the RTNL lock.
fn detach_pinned_link(path: &Path) -> io::Result<()> {
    let link = super::sys::obj_get(path)?;
    super::sys::link_detach(std::os::fd::AsFd::as_fd(&link))
}

/// A removal that found nothing to remove succeeded.
fn absent_is_removed(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Detaches the link pinned at `path` and unpins it; nothing to do if
/// nothing is pinned there.
fn remove_pinned_link(path: &Path) -> io::Result<()> {
    // A link whose interface is gone is detached already.
    let _ = detach_pinned_link(path);
    absent_is_removed(std::fs::remove_file(path))
}

/// The pin directory of one firewall.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|stat| stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

impl PinDir {
    /// Opens `root`, creating it (and mounting the BPF file system at
    /// /sys/fs/bpf if that is where it belongs and nothing is mounted).
    pub fn open(root: &Path) -> Result<Self, PinDirError> {
        let io_error = |source| PinDirError::Io {
            dir: root.to_path_buf(),
            source,
        };
        let mut existing = root;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        if !is_bpffs(existing) {
            if existing == Path::new(CONVENTIONAL_MOUNT) {
                nix::mount::mount(
                    Some("bpf"),
                    CONVENTIONAL_MOUNT,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|errno| io_error(io::Error::from(errno)))?;
            } else {
                return Err(PinDirError::NotBpfFs {
                    dir: root.to_path_buf(),
                    mount: existing.to_path_buf(),
                });
            }
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        for path in [dir.maps_dir(), dir.root.join(LINKS_DIR)] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(io_error)?;
        }
        Ok(dir)
    }

    /// Opens `root` if it holds a firewall, for removing it.
    pub fn existing(root: &Path) -> Option<Self> {
        root.join(LINKS_DIR).is_dir().then(|| Self {
            root: root.to_path_buf(),
        })
    }

    /// The maps of this release's layout.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("{MAPS_PREFIX}{LAYOUT_VERSION}"))
    }

    /// Map directories of other layout versions (left by another release).
    pub fn other_layouts(&self) -> Vec<PathBuf> {
        let ours = self.maps_dir();
        self.children(&self.root)
            .into_iter()
            .filter(|path| {
                path != &ours
                    && path
                        .file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with(MAPS_PREFIX))
            })
            .collect()
    }

    pub fn link_path(&self, interface: &str, mode: AttachMode) -> PathBuf {
        self.root
            .join(LINKS_DIR)
            .join(interface)
            .join(mode.to_string())
    }

    /// Pinned links: interface, mode and pin path.
    pub fn links(&self) -> Vec<(String, AttachMode, PathBuf)> {
        let mut links = Vec::new();
        for dir in self.children(&self.root.join(LINKS_DIR)) {
            let Some(interface) = dir.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            for pin in self.children(&dir) {
                let mode = match pin.file_name().and_then(|name| name.to_str()) {
                    Some("driver") => AttachMode::Driver,
                    Some("skb") => AttachMode::Skb,
                    _ => continue,
                };
                links.push((interface.to_string(), mode, pin));
            }
        }
        links.sort();
        links
    }

    /// Where the TC egress link of `interface` is pinned.
    pub fn egress_link_path(&self, interface: &str) -> PathBuf {
        self.root.join(LINKS_DIR).join(interface).join(EGRESS_LINK)
    }

    /// Interfaces with anything pinned.
    pub fn interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .children(&self.root.join(LINKS_DIR))
            .iter()
            .filter_map(|dir| dir.file_name()?.to_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// The pinned link of `interface`, if any.
    pub fn link_of(&self, interface: &str) -> Option<(AttachMode, PathBuf)> {
        self.links()
            .into_iter()
            .find(|(name, _, _)| name == interface)
            .map(|(_, mode, path)| (mode, path))
    }

    /// Creates the directory a link of `interface` is pinned in.
    pub fn prepare_link(&self, interface: &str) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.root.join(LINKS_DIR).join(interface))
    }

    /// Detaches the XDP program from `interface` and unpins its link. The
    /// link is detached explicitly first: unpinning alone frees it (and
    /// detaches) only later, from a kernel work queue, and the caller wants
    /// the interface free when this returns.
    pub fn remove_xdp_link(&self, interface: &str) -> io::Result<()> {
        for mode in [AttachMode::Driver, AttachMode::Skb] {
            remove_pinned_link(&self.link_path(interface, mode))?;
        }
        Ok(())
    }

    /// Detaches the TC egress program from `interface` and unpins its link.
    pub fn remove_egress_link(&self, interface: &str) -> io::Result<()> {
        remove_pinned_link(&self.egress_link_path(interface))
    }

    /// Detaches everything from `interface` and removes its directory.
    pub fn remove_interface(&self, interface: &str) -> io::Result<()> {
        self.remove_xdp_link(interface)?;
        self.remove_egress_link(interface)?;
        absent_is_removed(std::fs::remove_dir_all(
            self.root.join(LINKS_DIR).join(interface),
        ))
    }

    /// Detaches every link and unpins everything.
    pub fn remove_all(self) -> io::Result<()> {
        for interface in self.interfaces() {
            self.remove_interface(&interface)?;
        }
        std::fs::remove_dir_all(&self.root)
    }

    fn children(&self, dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default()
    }
}
