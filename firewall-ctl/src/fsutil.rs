//! Reading and writing the daemon's files safely: reads never block or
//! grow without bound, writes are all-or-nothing and durable, and nothing
//! in the state directory is reached through a symbolic link or read from
//! a file someone else put there ([`StateDir`]).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, openat, renameat},
    sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, mkdirat},
    unistd::{UnlinkatFlags, unlinkat},
};

/// Largest config or state file read: far above any real allowlist
/// (500k prefixes take about 12 MiB), far below what would hurt the host.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a file could not be read. The caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error(
        "it is owned by uid {uid}, not by uid {ours} that runs firewall-ctl: it is not a file firewall-ctl wrote, so it is neither read nor quoted"
    )]
    NotOurs { uid: u32, ours: u32 },
    #[error("it is larger than {limit} bytes; this is not a file firewall-ctl wrote or expects")]
    TooLarge { limit: u64 },
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

/// Reads the regular file at `path` as text, at most `limit` bytes.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_regular_bytes(path, limit)?).map_err(|_| ReadError::NotUtf8)
}

/// Reads the regular file at `path`, at most `limit` bytes.
///
/// Opened non-blocking, so a FIFO cannot hang the caller in `open()`, and
/// checked to be a regular file before a byte is read, so a device such as
/// `/dev/zero` is refused instead of read forever.
pub fn read_regular_bytes(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(ReadError::NotRegular {
            kind: kind_of_mode(metadata.mode()),
        });
    }
    read_bounded(file, limit)
}

/// What a file's mode says it is, for messages.
fn kind_of_mode(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

/// The user this process runs as: the owner of every file it writes.
fn our_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Why the state directory cannot be used. The caller names it.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it is {kind}, not a directory")]
    NotDirectory { kind: &'static str },
    #[error(
        "it is owned by uid {uid}, not by uid {ours} that runs firewall-ctl; `chown {ours} DIR`, after checking what is in it"
    )]
    NotOurs { uid: u32, ours: u32 },
    #[error(
        "it is writable by others (mode {mode:04o}): anyone could have put files there for the daemon to read or write through; check what is in it, then `chmod 0700 DIR`"
    )]
    WritableByOthers { mode: u32 },
}

impl From<Errno> for DirError {
    fn from(errno: Errno) -> Self {
        DirError::Io(errno.into())
    }
}

/// The daemon's state directory, opened once: every file in it is reached
/// relative to this descriptor (`openat`), never through a symbolic link
/// (`O_NOFOLLOW`), never by blocking in `open()` (`O_NONBLOCK`: a FIFO is
/// refused at once), and only if it is a regular file this process's user
/// owns, so an error never quotes a file someone else chose.
#[derive(Debug)]
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Opened for the daemon, which creates and tightens what it needs;
    /// `false`: opened to read, changing nothing.
    for_the_daemon: bool,
}

/// How files in a [`StateDir`] are opened, whatever else is asked.
fn safe_flags() -> OFlag {
    OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

impl StateDir {
    /// Opens the directory at `path`, creating it (and its parents) with
    /// mode 0700 if it does not exist. An existing one must be a directory
    /// owned by this process's user that no one else may write; one that
    /// others may read is tightened to 0700 (it holds the audit trail).
    pub fn open(path: &Path) -> Result<Self, DirError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        Self::open_dir(path, true)
    }

    /// Opens the existing directory at `path` to read from it, changing
    /// nothing (`explain --config` reads the feeds' last good copies so),
    /// under the same checks as [`StateDir::open`].
    pub fn open_to_read(path: &Path) -> Result<Self, DirError> {
        Self::open_dir(path, false)
    }

    fn open_dir(path: &Path, for_the_daemon: bool) -> Result<Self, DirError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            Errno::ENOTDIR => DirError::NotDirectory {
                kind: kind_at(path).unwrap_or("not a directory"),
            },
            errno => errno.into(),
        })?;
        let dir = Self {
            fd,
            path: path.to_path_buf(),
            for_the_daemon,
        };
        dir.check_and_tighten()?;
        Ok(dir)
    }

    /// Checks the directory, and for the daemon makes it private.
    fn check_and_tighten(&self) -> Result<(), DirError> {
        let stat = fstat(&self.fd)?;
        if stat.st_uid != our_uid() {
            return Err(DirError::NotOurs {
                uid: stat.st_uid,
                ours: our_uid(),
            });
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(DirError::WritableByOthers { mode });
        }
        if mode & 0o077 != 0 && self.for_the_daemon {
            fchmod(&self.fd, Mode::from_bits_truncate(0o700))?;
            tracing::info!(state_dir = %self.path.display(), mode = format!("{mode:04o}"), "made the state directory private (0700): it holds the audit trail");
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the subdirectory `name` under the same rules as the directory
    /// itself; for the daemon, it is created (mode 0700) if needed.
    pub fn subdir(&self, name: &str) -> Result<StateDir, DirError> {
        if self.for_the_daemon {
            match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | safe_flags(),
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            Errno::ENOTDIR | Errno::ELOOP => DirError::NotDirectory {
                kind: self.kind_of(name).unwrap_or("not a directory"),
            },
            errno => errno.into(),
        })?;
        let dir = StateDir {
            fd,
            path: self.join(name),
            for_the_daemon: self.for_the_daemon,
        };
        dir.check_and_tighten()?;
        Ok(dir)
    }

    /// What `name` is, without following a link: `None` if nothing is there.
    pub fn kind_of(&self, name: &str) -> Option<&'static str> {
        nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|stat| kind_of_mode(stat.st_mode))
    }

    /// Opens the existing file `name` with `flags` (and the safe ones),
    /// checked to be a regular file of ours before anything is read or
    /// written, and back in blocking mode.
    fn open_existing(&self, name: &str, flags: OFlag) -> Result<File, ReadError> {
        let fd =
            openat(&self.fd, name, flags | safe_flags(), Mode::empty()).map_err(
                |errno| match errno {
                    // O_NOFOLLOW on a link.
                    Errno::ELOOP => ReadError::NotRegular {
                        kind: "a symbolic link",
                    },
                    // O_NONBLOCK write-open of a FIFO without a reader.
                    Errno::ENXIO => ReadError::NotRegular {
                        kind: self.kind_of(name).unwrap_or("not a regular file"),
                    },
                    errno => ReadError::Io(errno.into()),
                },
            )?;
        check_ours(&fstat(&fd).map_err(io::Error::from)?)?;
        clear_nonblocking(fd.as_fd())?;
        Ok(File::from(fd))
    }

    /// Reads the regular file `name` as text, at most `limit` bytes.
    pub fn read(&self, name: &str, limit: u64) -> Result<String, ReadError> {
        let bytes = read_bounded(self.open_existing(name, OFlag::O_RDONLY)?, limit)?;
        String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
    }

    /// Opens the regular file `name` for reading.
    pub fn open_read(&self, name: &str) -> Result<File, ReadError> {
        self.open_existing(name, OFlag::O_RDONLY)
    }

    /// Opens `name` for appending, creating it with `mode` if it is not
    /// there.
    pub fn open_append(&self, name: &str, mode: u32) -> Result<File, ReadError> {
        match openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_EXCL | safe_flags(),
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => {
                clear_nonblocking(fd.as_fd())?;
                Ok(File::from(fd))
            }
            Err(Errno::EEXIST) => self.open_existing(name, OFlag::O_WRONLY | OFlag::O_APPEND),
            Err(errno) => Err(ReadError::Io(errno.into())),
        }
    }

    /// Opens (creating if needed) `name` for writing without truncating
    /// it: a lock file.
    pub fn open_lock(&self, name: &str) -> Result<File, ReadError> {
        match openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | safe_flags(),
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => {
                clear_nonblocking(fd.as_fd())?;
                Ok(File::from(fd))
            }
            Err(Errno::EEXIST) => self.open_existing(name, OFlag::O_WRONLY),
            Err(errno) => Err(ReadError::Io(errno.into())),
        }
    }

    /// Creates `name` anew with `mode` for writing: whatever was there (a
    /// file left by a crash, a link someone planted) is removed first, never
    /// written through; `O_EXCL` makes sure of it.
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno.into()),
        }
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | safe_flags(),
            Mode::from_bits_truncate(mode),
        )?;
        clear_nonblocking(fd.as_fd())?;
        Ok(File::from(fd))
    }

    /// Replaces `name` with `contents` so that a crash or power loss at any
    /// moment leaves either the old file or the new one, never a mix: write
    /// a new temporary file beside it, fsync it, rename it over `name`,
    /// fsync the directory so the rename itself is durable.
    pub fn write_atomically(&self, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
        let temporary = format!("{name}.tmp");
        let mut file = self.create_new(&temporary, mode)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        self.rename(&temporary, name)?;
        self.sync()
    }

    /// Renames `from` to `to` within this directory (replacing `to`).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Removes the file `name`; `Ok(false)` if there was none.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Makes the directory's entries (a rename, a new file) durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(nix::unistd::fsync(&self.fd)?)
    }
}

/// Fails unless `stat` is a regular file owned by this process's user.
fn check_ours(stat: &FileStat) -> Result<(), ReadError> {
    let kind = kind_of_mode(stat.st_mode);
    if kind != "a regular file" {
        return Err(ReadError::NotRegular { kind });
    }
    if stat.st_uid != our_uid() {
        return Err(ReadError::NotOurs {
            uid: stat.st_uid,
            ours: our_uid(),
        });
    }
    Ok(())
}

/// Puts a file opened with `O_NONBLOCK` (so that `open()` could not hang)
/// back in blocking mode.
fn clear_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Reads `file`, already checked to be a regular file: at most `limit`
/// bytes.
fn read_bounded(file: File, limit: u64) -> Result<Vec<u8>, ReadError> {
    let length = file.metadata()?.len();
    if length > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(length as usize);
    // The file may grow after fstat; never read past the limit.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Describes what is at `path` if it is not a regular file or missing:
/// `None` when nothing is there, `Some(kind)` otherwise.
pub fn kind_at(path: &Path) -> Option<&'static str> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    Some(kind_of_mode(metadata.mode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "x = 1\n").unwrap();
        assert_eq!(read_regular_file(&path, 100).unwrap(), "x = 1\n");
    }

    #[test]
    fn refuses_fifos_devices_directories_and_large_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No writer: a blocking open would hang here forever.
        assert!(matches!(
            read_regular_file(&fifo, 100),
            Err(ReadError::NotRegular { kind: "a FIFO" })
        ));
        assert!(matches!(
            read_regular_file(Path::new("/dev/zero"), 100),
            Err(ReadError::NotRegular {
                kind: "a character device"
            })
        ));
        assert!(matches!(
            read_regular_file(dir.path(), 100),
            Err(ReadError::NotRegular {
                kind: "a directory"
            })
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, [b'#'; 101]).unwrap();
        assert!(matches!(
            read_regular_file(&big, 100),
            Err(ReadError::TooLarge { limit: 100 })
        ));
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_regular_file(&binary, 100),
            Err(ReadError::NotUtf8)
        ));
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let path = dir.path().join("state.toml");
        state.write_atomically("state.toml", b"one", 0o600).unwrap();
        state.write_atomically("state.toml", b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.toml"]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Links are never followed, FIFOs never block, and a file of someone
    /// else is never read: the error says what is there, not what is in it.
    #[test]
    fn the_state_dir_follows_no_link_and_reads_only_its_own_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "SECRET\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
        assert!(matches!(
            state.read("link", 100),
            Err(ReadError::NotRegular {
                kind: "a symbolic link"
            })
        ));
        assert!(matches!(
            state.open_append("link", 0o600),
            Err(ReadError::NotRegular {
                kind: "a symbolic link"
            })
        ));
        assert!(matches!(
            state.open_lock("link"),
            Err(ReadError::NotRegular {
                kind: "a symbolic link"
            })
        ));
        // A temporary name taken by a link is replaced, not written through.
        std::os::unix::fs::symlink(&victim, dir.path().join("state.toml.tmp")).unwrap();
        state
            .write_atomically("state.toml", b"ours", 0o600)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "SECRET\n");
        assert_eq!(state.read("state.toml", 100).unwrap(), "ours");

        nix::unistd::mkfifo(
            &dir.path().join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        for opened in [
            state.read("fifo", 100).map(drop),
            state.open_append("fifo", 0o600).map(drop),
            state.open_lock("fifo").map(drop),
        ] {
            assert!(
                matches!(opened, Err(ReadError::NotRegular { kind: "a FIFO" })),
                "{opened:?}"
            );
        }
    }

    #[test]
    fn a_state_dir_others_may_write_is_refused_and_one_they_may_read_tightened() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o757)).unwrap();
        let err = StateDir::open(&path).unwrap_err();
        assert!(
            err.to_string().contains("writable by others (mode 0757)"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Read as it is: nothing changes.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let read = StateDir::open_to_read(&path).unwrap();
        assert!(read.subdir("feeds").is_err(), "not created");
        assert!(!path.join("feeds").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(StateDir::open_to_read(&dir.path().join("none")).is_err());
        // Created private, with its parents.
        let deep = dir.path().join("a/b");
        let state = StateDir::open(&deep).unwrap();
        let sub = state.subdir("feeds").unwrap();
        for made in [&deep, &sub.path] {
            let mode = std::fs::metadata(made).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", made.display());
        }
    }

    #[test]
    fn kind_at_tells_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kind_at(&dir.path().join("none")), None);
        assert_eq!(kind_at(dir.path()), Some("a directory"));
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert_eq!(kind_at(&file), Some("a regular file"));
    }
}
