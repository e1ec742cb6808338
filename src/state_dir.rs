//! The daemon's state directory: created 0700, refused when others can reach
//! it, written only atomically with files of mode 0600, and held by one
//! process at a time through [`StateDirLock`].

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;
use atomic_write_file::unix::OpenOptionsExt as _;

/// A state directory that is problematic, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The directory could not be created or read.
    #[error("state dir {}: {problem}", path.display())]
    Unusable {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A file in it could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file in it is larger than any valid file of its kind.
    #[error("{} is {len} bytes, more than the {max} a valid file can have; it is not a hostkms file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The largest valid length.
        max: u64,
    },
    /// A file in it could not be written.
    #[error("cannot write {}: {source}; nothing was replaced", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the state dir's lock.
    #[error(
        "state dir {} is in use by {holder} (it holds the lock {}): two daemons on one state dir would each acknowledge writes the other then loses. Stop that process first, or give this daemon its own state_dir",
        dir.display(), lock.display()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// Who holds it, as far as the lock file says ("process 1234").
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error(
        "cannot lock state dir {} through {}: {source}; it must be a regular file (not a link) owned by the daemon's user, in a directory the daemon can write",
        dir.display(), lock.display()
    )]
    Lock {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An opened, checked state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it with mode 0700 if it does not exist.
    ///
    /// An existing directory must belong to the daemon's user and admit no
    /// one else: it holds the sealed root key and the key store.
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        let unusable = |problem: String| StateDirError::Unusable {
            path: path.to_path_buf(),
            problem,
        };
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| unusable(format!("cannot create it: {e}; create it (mode 0700, owned by the daemon's user) or choose another state_dir")))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                    .map_err(|e| unusable(format!("cannot set its mode to 0700: {e}")))?;
            }
            Err(e) => {
                return Err(unusable(format!(
                    "cannot inspect it: {e}; check the permissions of its parent directories"
                )));
            }
            Ok(meta) => {
                if !meta.is_dir() {
                    return Err(unusable(
                        "is not a directory; point state_dir at a directory".to_string(),
                    ));
                }
                let euid = nix::unistd::geteuid().as_raw();
                if meta.uid() != euid {
                    return Err(unusable(format!(
                        "is owned by uid {}, but the daemon runs as uid {euid}; chown it to the daemon's user",
                        meta.uid()
                    )));
                }
                let mode = meta.mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(unusable(format!(
                        "has mode {mode:04o}, so other users can reach the sealed root key and key store; run chmod 700 {}",
                        path.display()
                    )));
                }
            }
        }
        fs::read_dir(path).map_err(|e| unusable(format!("cannot read it: {e}; it must be readable and writable by the daemon's user (mode 0700)")))?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of file `name` in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether file `name` exists (a dangling link counts as existing).
    pub fn contains(&self, name: &str) -> bool {
        fs::symlink_metadata(self.file(name)).is_ok()
    }

    /// Reads file `name`, refusing files longer than `max` bytes.
    pub fn read(&self, name: &str, max: u64) -> Result<Vec<u8>, StateDirError> {
        let path = self.file(name);
        let read_error = |source| StateDirError::Read {
            path: path.clone(),
            source,
        };
        let file = fs::File::open(&path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > max {
            return Err(StateDirError::TooLarge {
                path,
                len: bytes.len() as u64,
                max,
            });
        }
        Ok(bytes)
    }

    /// Writes file `name` atomically with mode 0600: a temporary file,
    /// fsync, rename over `name`, fsync of the directory. Either the old
    /// contents or the new ones survive a crash, never a mix.
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), StateDirError> {
        let path = self.file(name);
        let write_error = |source| StateDirError::Write {
            path: path.clone(),
            source,
        };
        let mut file = AtomicWriteFile::options()
            .mode(0o600)
            .preserve_mode(false)
            .open(&path)
            .map_err(write_error)?;
        file.write_all(bytes).map_err(write_error)?;
        file.commit().map_err(write_error)
    }
}

/// The name of the lock file in the state dir.
pub const LOCK_FILE: &str = "lock";

/// Exclusive use of a state directory for as long as the value lives: an
/// `flock` on [`LOCK_FILE`], which holds the holder's pid so a second
/// process can say who has it (`flock` itself cannot). The daemon holds it
/// for its whole life; any command that changes the state dir offline must
/// take it too. The kernel releases it when the process dies, however it
/// dies, so a crash never leaves a stale lock.
#[derive(Debug)]
pub struct StateDirLock {
    file: fs::File,
    path: PathBuf,
}

impl StateDirLock {
    /// Takes the lock of `dir` without waiting, and records this process's
    /// pid in it; fails with [`StateDirError::Locked`], naming the holder,
    /// when another process has it.
    pub fn acquire(dir: &StateDir) -> Result<StateDirLock, StateDirError> {
        let path = dir.file(LOCK_FILE);
        let lock_error = |source| StateDirError::Lock {
            dir: dir.path().to_path_buf(),
            lock: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(lock_error)?;
        // SAFETY: flock on a file descriptor this function owns.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(lock_error(error));
            }
            let mut recorded = String::new();
            let _ = (&file).take(64).read_to_string(&mut recorded);
            let holder = match recorded.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process (it has not written its pid yet)".to_string(),
            };
            return Err(StateDirError::Locked {
                dir: dir.path().to_path_buf(),
                lock: path,
                holder,
            });
        }
        file.set_len(0).map_err(lock_error)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(lock_error)?;
        file.sync_all().map_err(lock_error)?;
        Ok(StateDirLock { file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateDirLock {
    fn drop(&mut self) {
        // The pid goes with the lock; the file stays, so that a process
        // waiting for it never locks a file already unlinked.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0700_and_writes_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("a/b")).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        dir.write_private("x", b"abc").unwrap();
        assert_eq!(fs::metadata(dir.file("x")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(dir.read("x", 3).unwrap(), b"abc");
        assert!(matches!(
            dir.read("x", 2),
            Err(StateDirError::TooLarge { .. })
        ));
        dir.write_private("x", b"defg").unwrap();
        assert_eq!(dir.read("x", 10).unwrap(), b"defg");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files are left behind");
    }

    #[test]
    fn refuses_a_directory_others_can_reach() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = StateDir::open(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("mode 0755") && err.contains("chmod 700"),
            "{err}"
        );
    }

    #[test]
    fn one_lock_holder_at_a_time_named_by_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s")).unwrap();
        let held = StateDirLock::acquire(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(held.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(fs::metadata(held.path()).unwrap().mode() & 0o777, 0o600);
        let err = StateDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("in use by process {}", std::process::id())),
            "{err}"
        );
        drop(held);
        StateDirLock::acquire(&dir).expect("free again once dropped");
    }

    #[test]
    fn refuses_a_file_in_place_of_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = StateDir::open(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
