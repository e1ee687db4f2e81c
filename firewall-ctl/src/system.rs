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
    #[error(
        "firewall-ctl {command} needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as root"
    )]
    CommandPrivileges { command: &'static str },
}

/// Fails unless the effective capabilities allow loading and attaching XDP.
pub fn check_privileges(config: &Path) -> Result<(), SystemError> {
    if has_bpf_privileges() {
        Ok(())
    } else {
        Err(SystemError::Privileges {
            config: config.display().to_string(),
        })
    }
}

/// Fails unless `command` (which touches pinned BPF objects) may run.
pub fn check_privileges_for(command: &'static str) -> Result<(), SystemError> {
    if has_bpf_privileges() {
        Ok(())
    } else {
        Err(SystemError::CommandPrivileges { command })
    }
}

fn has_bpf_privileges() -> bool {
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
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

/// Whether this host (this process's network namespace) has an interface
/// `name`. Asked of the kernel, not read from `/sys/class/net`: sysfs shows
/// the interfaces of the namespace it was mounted in, which is not this
/// one for a daemon put in a namespace by systemd's `NetworkNamespacePath=`
/// (or `nsenter --net`).
pub fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok_and(|index| index != 0)
}

/// The host the daemon runs on, as the config sees it.
pub struct LiveHost;

impl crate::config::Host for LiveHost {
    fn interface_exists(&self, name: &str) -> bool {
        interface_exists(name)
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|group| group.gid.as_raw())
    }

    fn non_socket_at(&self, path: &Path) -> Option<&'static str> {
        crate::fsutil::kind_at(path).filter(|kind| *kind != "a socket")
    }
}

/// The name of user `uid`, if the host knows one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// `SO_PEERGROUPS` (Linux 4.13), the same on every architecture the daemon
/// targets; the libc crate does not export it for all of them.
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the process that connected the Unix socket
/// `fd`, as the kernel recorded them at connect().
pub fn peer_groups(fd: std::os::fd::RawFd) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer and its length are ours and consistent.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            // The kernel says how much room it needs.
            groups.resize(count, 0);
        } else {
            return Err(err);
        }
    }
}

/// Sets (or, with `None`, removes) a POSIX ACL on `path` that gives group
/// `gid` the same read-write access as the owning group; the rest of the
/// ACL mirrors mode 0660.
pub fn set_group_acl(path: &Path, gid: Option<u32>) -> std::io::Result<()> {
    const NAME: &[u8] = b"system.posix_acl_access\0";
    // Layout of `struct posix_acl_xattr_header` and `_entry` (linux/posix_acl_xattr.h).
    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED_ID: u32 = u32::MAX;
    const READ_WRITE: u16 = 0o6;
    let path_c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let Some(gid) = gid else {
        // SAFETY: NUL-terminated path and name.
        let rc = unsafe { libc::removexattr(path_c.as_ptr(), NAME.as_ptr().cast()) };
        let err = std::io::Error::last_os_error();
        return match rc {
            0 => Ok(()),
            _ if matches!(err.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => Ok(()),
            _ => Err(err),
        };
    };
    let mut acl = VERSION.to_le_bytes().to_vec();
    // Entries sorted by tag, then id, as the kernel requires.
    for (tag, perm, id) in [
        (USER_OBJ, READ_WRITE, UNDEFINED_ID),
        (GROUP_OBJ, READ_WRITE, UNDEFINED_ID),
        (GROUP, READ_WRITE, gid),
        (MASK, READ_WRITE, UNDEFINED_ID),
        (OTHER, 0, UNDEFINED_ID),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    // SAFETY: NUL-terminated path and name; the value buffer is ours.
    let rc = unsafe {
        libc::setxattr(
            path_c.as_ptr(),
            NAME.as_ptr().cast(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits until every XDP invocation that started before this call has
/// finished: XDP runs inside an RCU read-side section, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU grace period
/// (Linux 4.3). Returns `false` where the kernel refuses (`nohz_full`
/// hosts), so the caller falls back to waiting a fixed time.
pub fn wait_for_rcu_readers() -> bool {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0 }
}

/// Raises the soft open-file limit to the hard one, so the connection
/// limit, not the file limit, is what turns clients away.
pub fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns` (and,
/// coarser, of `bpf_ktime_get_coarse_ns`).
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}

/// The wall-clock time of the `CLOCK_MONOTONIC` instant `ns`.
pub fn wall_clock_of(ns: u64) -> std::time::SystemTime {
    let ago = monotonic_ns().saturating_sub(ns);
    std::time::SystemTime::now() - std::time::Duration::from_nanos(ago)
}

/// Large blocks (a policy's tables, index maps and write buffers, each
/// megabytes) get their own mappings, which a free unmaps at once.
/// glibc otherwise raises its mapping threshold to the largest block freed
/// (up to 32 MiB), after which such blocks come from the heap arenas, where
/// a few small survivors pin their pages: at 250k + 250k prefixes the
/// daemon stayed at 135 MB resident after a list change instead of 73, and
/// peaked at 307 MB instead of 229. (musl's allocator, in the static
/// build, has no such threshold to tune.)
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Sets the allocator up for the daemon; see [`MMAP_THRESHOLD`].
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt has no preconditions; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Whether stderr is connected to the systemd journal: `JOURNAL_STREAM`
/// names its device and inode (systemd sets it for a service whose output
/// goes to the journal, and a child that redirects stderr no longer
/// matches).
pub fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// Niceness of threads that serve heavy reads: the policy writer (at the
/// daemon's own) wins the CPU from them.
const HEAVY_READ_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's CPU priority (Linux keeps a niceness per
/// thread); a failure only leaves it as it was.
pub fn lower_thread_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(
            libc::PRIO_PROCESS,
            thread as libc::id_t,
            HEAVY_READ_NICENESS,
        );
    }
}

/// Gives the memory freed after a large policy change back to the kernel:
/// glibc keeps freed heap pages for reuse, and the daemon's resident size
/// would otherwise stay at the peak of its largest reload.
pub fn return_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn peer_groups_are_the_connecting_process_groups() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let groups = peer_groups(std::os::fd::AsRawFd::as_raw_fd(&ours)).unwrap();
        let mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|gid| gid.as_raw())
            .collect();
        let mut sorted = groups.clone();
        sorted.sort();
        let mut expected = mine;
        expected.sort();
        assert_eq!(sorted, expected);
    }

    #[test]
    fn a_group_acl_can_be_set_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "").unwrap();
        if set_group_acl(&path, Some(4242)).is_err() {
            eprintln!("SKIPPED a_group_acl_can_be_set_and_removed: no ACL support here");
            return;
        }
        let name = std::ffi::CString::new("system.posix_acl_access").unwrap();
        let path_c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let read_acl = || {
            let mut buffer = [0u8; 64];
            // SAFETY: NUL-terminated strings and our buffer.
            let len = unsafe {
                libc::getxattr(
                    path_c.as_ptr(),
                    name.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            (len, buffer)
        };
        let (len, buffer) = read_acl();
        assert_eq!(len, 4 + 5 * 8);
        let gid = &buffer[4 + 2 * 8 + 4..4 + 3 * 8];
        assert_eq!(u32::from_le_bytes(gid.try_into().unwrap()), 4242);
        set_group_acl(&path, None).unwrap();
        assert_eq!(read_acl().0, -1);
    }
}
