//! Reading and writing the daemon's files safely: reads never block or
//! grow without bound, writes are all-or-nothing and durable.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Largest config or state file read: far above any real allowlist
/// (500k prefixes take about 12 MiB), far below what would hurt the host.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a file could not be read. The caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it is {kind}, not a regular file; point it at a regular file")]
    NotRegular { kind: &'static str },
    #[error("it is larger than {limit} bytes; this is not a file firewall-ctl wrote or expects")]
    TooLarge { limit: u64 },
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Reads the regular file at `path` as text, at most `limit` bytes.
///
/// Opened non-blocking, so a FIFO cannot hang the caller in `open()`, and
/// checked to be a regular file before a byte is read, so a device such as
/// `/dev/zero` is refused instead of read forever.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<String, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(ReadError::NotRegular {
            kind: kind_of(&metadata.file_type()),
        });
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // The file may grow after fstat; never read past the limit.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

/// Describes what is at `path` if it is not a regular file or missing:
/// `None` when nothing is there, `Some(kind)` otherwise.
pub fn kind_at(path: &Path) -> Option<&'static str> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    Some(if metadata.file_type().is_file() {
        "a regular file"
    } else {
        kind_of(&metadata.file_type())
    })
}

/// Replaces `path` with `contents` so that a crash or power loss at any
/// moment leaves either the old file or the new one, never a mix: write a
/// temporary file beside it, fsync it, rename it over `path`, fsync the
/// directory so the rename itself is durable.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("the path has no directory"))?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_dir(dir)
}

/// Makes the directory's entries (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
        let path = dir.path().join("state.toml");
        write_atomically(&path, b"one", 0o600).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
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
