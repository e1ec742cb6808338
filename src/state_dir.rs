//! The daemon's state directory: created 0700, refused when others can reach
//! it, written only atomically with files of mode 0600, and held by one
//! process at a time through [`StateDirLock`].

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;
use atomic_write_file::unix::OpenOptionsExt as _;

// The state dir's files, named here so the modules that write them
// (rootkey, keystore, the lock) need not import each other for a file name.

/// The sealed root key's public part (TPM2B_PUBLIC).
pub const ROOT_PUB: &str = "root.pub";
/// The sealed root key's private part (TPM2B_PRIVATE).
pub const ROOT_PRIV: &str = "root.priv";
/// The public part of the next root key while a root-key rotation is
/// under way: written before the key store is re-sealed, renamed over
/// [`ROOT_PUB`] once it has been (see `rootkey` for the protocol).
pub const ROOT_NEXT_PUB: &str = "root-next.pub";
/// The private part of the next root key while a rotation is under way;
/// renamed over [`ROOT_PRIV`] once the key store has been re-sealed.
pub const ROOT_NEXT_PRIV: &str = "root-next.priv";
/// The key store (SQLite), whose keys are encrypted under the root key.
pub const KEYSTORE_DB: &str = "keystore.db";
/// The name of the lock file in the state dir: the lock holder's pid, for
/// messages only (the lock is on the directory).
pub const LOCK_FILE: &str = "lock";

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
    /// A file in it could not be renamed or removed, or the directory
    /// could not be synced afterwards.
    #[error("cannot {action} {}: {source}", path.display())]
    Update {
        /// What was being done ("rename root-next.priv over root.priv").
        action: String,
        /// The file (or the directory, for a failed sync).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file in it is not one hostkmsd can trust: a link, not a regular
    /// file, or owned by another user.
    #[error("{} {problem}; hostkmsd changed nothing", path.display())]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// Another process holds the state dir's lock.
    #[error(
        "state dir {} is in use by {holder} (it holds the lock on the directory; {} records the holder's pid): two daemons on one state dir would each acknowledge writes the other then loses. Stop that process first, or give this daemon its own state_dir",
        dir.display(), lock.display()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// Who holds it ("process 1234"), from the lock file or, when
        /// that is gone, from the kernel's table of locks.
        holder: String,
    },
    /// The state directory could not be locked, or the lock file (the
    /// holder's pid) could not be opened or written.
    #[error(
        "cannot lock state dir {} (a lock on the directory itself, with the holder's pid in {}): {source}; the directory must be the daemon's own, and the lock file a regular file (not a link) owned by the daemon's user",
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
                if meta.file_type().is_symlink() {
                    return Err(unusable(
                        "is a symbolic link; point state_dir at the directory itself".to_string(),
                    ));
                }
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
        check_ancestors(path).map_err(unusable)?;
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

    /// Reads file `name`, refusing files longer than `max` bytes and files
    /// hostkmsd would not have written (see [`open_private`]).
    pub fn read(&self, name: &str, max: u64) -> Result<Vec<u8>, StateDirError> {
        let path = self.file(name);
        let read_error = |source| StateDirError::Read {
            path: path.clone(),
            source,
        };
        let file = open_private(&path, false)?;
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

    /// Renames file `from` over file `to` (atomically: `to` is the old file
    /// or the new one, never neither) and syncs the directory, so the rename
    /// survives a crash once this returns.
    pub fn replace(&self, from: &str, to: &str) -> Result<(), StateDirError> {
        fs::rename(self.file(from), self.file(to)).map_err(|source| StateDirError::Update {
            action: format!("rename {from} over {to} in"),
            path: self.path.clone(),
            source,
        })?;
        self.sync()
    }

    /// Removes file `name` if it exists, and syncs the directory so the
    /// removal survives a crash once this returns.
    pub fn remove(&self, name: &str) -> Result<(), StateDirError> {
        let path = self.file(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateDirError::Update {
                action: "remove".to_string(),
                path,
                source,
            }),
        }
    }

    /// Syncs the directory itself: its entries (renames, removals, and the
    /// deletion of SQLite's journal that commits a transaction) are durable
    /// afterwards.
    pub fn sync(&self) -> Result<(), StateDirError> {
        fs::File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StateDirError::Update {
                action: "sync the directory".to_string(),
                path: self.path.clone(),
                source,
            })
    }
}

/// Refuses a state dir that others could swap for their own: every
/// directory above it must belong to root or the daemon's user, and none
/// may be writable by every user unless it has the sticky bit (as `/tmp`),
/// which keeps others from renaming what they do not own. Checking only the
/// parent would leave a world-writable grandparent free to replace the
/// parent. Group-writable directories are accepted: their group is a set of
/// users the administrator named.
///
/// The directories of the path as configured are checked as well as those
/// of the path it resolves to: whoever may write the directory holding a
/// symbolic link on the way (`/var/lib` -> `/data/lib`) may redirect it.
fn check_ancestors(path: &Path) -> Result<(), String> {
    let real = fs::canonicalize(path).map_err(|e| {
        format!("cannot resolve its path: {e}; check the permissions of its parent directories")
    })?;
    let given =
        std::path::absolute(path).map_err(|e| format!("cannot make its path absolute: {e}"))?;
    let euid = nix::unistd::geteuid().as_raw();
    for ancestor in given.ancestors().skip(1).chain(real.ancestors().skip(1)) {
        let meta = fs::symlink_metadata(ancestor).map_err(|e| {
            format!(
                "cannot inspect its parent directory {}: {e}",
                ancestor.display()
            )
        })?;
        if meta.file_type().is_symlink() {
            // A link's own mode means nothing; the directory holding it is
            // checked as the next ancestor, and its target on the real path.
            continue;
        }
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(format!(
                "lies below {}, which is owned by uid {}: that user could rename the state dir and put another in its place. Move the state dir below directories owned by root or the daemon's user (uid {euid}), or chown {} to one of them",
                ancestor.display(),
                meta.uid(),
                ancestor.display()
            ));
        }
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "lies below {}, which every user may write (mode {mode:04o}) without the sticky bit: anyone could rename the state dir and put another in its place. Run chmod o-w {} (or chmod +t), or move the state dir",
                ancestor.display(),
                ancestor.display()
            ));
        }
    }
    Ok(())
}

/// Opens `path`, a file in a state dir, the way hostkmsd trusts its own
/// files: never through a symbolic link (`O_NOFOLLOW`), only a regular
/// file, only one owned by the daemon's user. A file that group or others
/// may access is repaired to mode 0600 and the repair logged (the
/// reasons are at `check_private`). Opens for writing too when `write` is set.
pub fn open_private(path: &Path, write: bool) -> Result<fs::File, StateDirError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(write)
        // O_NONBLOCK: a FIFO put in place of a file must not hang the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| {
            refused_link(path, source).unwrap_or_else(|source| StateDirError::Read {
                path: path.to_path_buf(),
                source,
            })
        })?;
    check_private(path, &file)?;
    Ok(file)
}

/// The error for a symbolic link where a file was expected (`ELOOP` from
/// an `O_NOFOLLOW` open); any other error is handed back.
fn refused_link(path: &Path, error: std::io::Error) -> Result<StateDirError, std::io::Error> {
    if error.raw_os_error() != Some(libc::ELOOP) {
        return Err(error);
    }
    let target = fs::read_link(path)
        .map(|target| format!(" (to {})", target.display()))
        .unwrap_or_default();
    Ok(StateDirError::Untrusted {
        path: path.to_path_buf(),
        problem: format!(
            "is a symbolic link{target}: hostkmsd does not follow links in its state dir, since one can lead to a file other users can read or replace. Replace the link by the file itself (mode 0600, owned by the daemon's user)"
        ),
    })
}

/// Checks an open state-dir file: a regular file of the daemon's user. A
/// file group or others may access is repaired to 0600 rather than refused:
/// the state dir itself admits no one else (checked at open), so the loose
/// mode exposed nothing yet; it comes from a copy or a restore made with a
/// loose umask, and stopping the daemon over it would help no one. The
/// repair is logged, so the operator learns of it.
fn check_private(path: &Path, file: &fs::File) -> Result<(), StateDirError> {
    let untrusted = |problem: String| StateDirError::Untrusted {
        path: path.to_path_buf(),
        problem,
    };
    let meta = file.metadata().map_err(|source| StateDirError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(untrusted(
            "is not a regular file; move it away: hostkmsd keeps only regular files in its state dir".to_string(),
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(untrusted(format!(
            "is owned by uid {}, but the daemon runs as uid {euid}: hostkmsd trusts only files its own user wrote. If the file is genuine (restored from this machine's backup), chown {euid} it",
            meta.uid()
        )));
    }
    if meta.nlink() > 1 {
        return Err(untrusted(format!(
            "has {} hard links: another path names this same file, so whatever writes there (another daemon with its own state dir and its own view of the keys) changes this daemon's state too. A hard-linked copy is not a backup. Remove the other links (find / -xdev -samefile {}), and make real copies instead: sqlite3 keystore.db \".backup COPY\" for the key store, cp for the other files",
            meta.nlink(),
            path.display()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o7077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| {
                untrusted(format!(
                    "has mode {mode:04o} and cannot be set to 0600 ({e}); run chmod 600 on it"
                ))
            })?;
        tracing::warn!(
            file = %path.display(),
            "{} had mode {mode:04o}, open to group or others; set it to 0600 (was it copied or restored with a loose umask?)",
            path.display()
        );
    }
    Ok(())
}

/// Exclusive use of a state directory for as long as the value lives: an
/// `flock` on the directory itself, which no one can delete or replace
/// while the holder runs (a lock on a file in it would be lost when the file
/// is unlinked, letting a second daemon in). [`LOCK_FILE`] holds the
/// holder's pid so a second process can say who has it (`flock` itself
/// cannot). The daemon holds it for its whole life; any command that
/// changes the state dir offline must take it too. The kernel releases it
/// when the process dies, however it dies, so a crash never leaves a stale
/// lock.
#[derive(Debug)]
pub struct StateDirLock {
    /// The locked directory, open for as long as the lock is held.
    _dir: fs::File,
    file: fs::File,
    path: PathBuf,
}

impl StateDirLock {
    /// Takes the lock of `dir` without waiting, and records this process's
    /// pid in [`LOCK_FILE`]; fails with [`StateDirError::Locked`], naming the
    /// holder, when another process has it.
    pub fn acquire(dir: &StateDir) -> Result<StateDirLock, StateDirError> {
        let path = dir.file(LOCK_FILE);
        let lock_error = |source| StateDirError::Lock {
            dir: dir.path().to_path_buf(),
            lock: path.clone(),
            source,
        };
        let locked_dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.path())
            .map_err(lock_error)?;
        // SAFETY: flock(2) takes no pointer; the descriptor is `locked_dir`'s,
        // which is open and outlives the call.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&locked_dir),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(lock_error(error));
            }
            return Err(StateDirError::Locked {
                dir: dir.path().to_path_buf(),
                holder: holder(&path, &locked_dir),
                lock: path,
            });
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| refused_link(&path, e).unwrap_or_else(lock_error))?;
        check_private(&path, &file)?;
        file.set_len(0).map_err(lock_error)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(lock_error)?;
        file.sync_all().map_err(lock_error)?;
        Ok(StateDirLock {
            _dir: locked_dir,
            file,
            path,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Who holds the lock on the directory open as `dir`: the pid recorded in
/// the lock file at `lock`, or, when that file was deleted or holds no pid,
/// the pid the kernel lists for the directory's lock in `/proc/locks`.
fn holder(lock: &Path, dir: &fs::File) -> String {
    let mut recorded = String::new();
    let read = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(lock)
        .and_then(|file| file.take(64).read_to_string(&mut recorded));
    if read.is_ok()
        && let Ok(pid) = recorded.trim().parse::<u32>()
    {
        return format!("process {pid}");
    }
    let listed = dir.metadata().ok().and_then(|meta| {
        let locks = fs::read_to_string("/proc/locks").ok()?;
        flock_holder(&locks, meta.dev(), meta.ino())
    });
    match listed {
        Some(pid) => format!("process {pid}"),
        None => format!(
            "another process (which one is unknown: {} holds no pid, and the kernel's lock table does not name it)",
            lock.display()
        ),
    }
}

/// The pid holding an `flock` on inode `ino` of device `dev`, from the text
/// of `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`:
/// major and minor in hex, the inode in decimal). Waiters (`->`) are skipped.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // Linux's encoding of a dev_t (glibc's gnu_dev_major and gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, _, pid, file, ..] = fields.as_slice() else {
            return None;
        };
        let mut parts = file.split(':');
        let found_major = u64::from_str_radix(parts.next()?, 16).ok()?;
        let found_minor = u64::from_str_radix(parts.next()?, 16).ok()?;
        let found_ino = parts.next()?.parse::<u64>().ok()?;
        if (found_major, found_minor, found_ino) != (major, minor, ino) {
            return None;
        }
        pid.parse::<u32>().ok().filter(|pid| *pid > 0)
    })
}

impl Drop for StateDirLock {
    fn drop(&mut self) {
        // The pid goes with the lock (released when the directory closes).
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
    fn replaces_and_removes_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s")).unwrap();
        dir.write_private("a", b"old").unwrap();
        dir.write_private("b", b"new").unwrap();
        dir.replace("b", "a").unwrap();
        assert_eq!(dir.read("a", 10).unwrap(), b"new");
        assert!(!dir.contains("b"));
        let missing = dir.replace("b", "a").unwrap_err().to_string();
        assert!(missing.contains("rename b over a in"), "{missing}");
        assert_eq!(dir.read("a", 10).unwrap(), b"new");
        dir.remove("a").unwrap();
        assert!(!dir.contains("a"));
        dir.remove("a").unwrap();
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
    fn files_are_read_only_as_regular_private_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s")).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, dir.file("link")).unwrap();
        let err = dir.read("link", 100).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        fs::create_dir(dir.file("sub")).unwrap();
        let err = dir.read("sub", 100).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        dir.write_private("loose", b"x").unwrap();
        fs::set_permissions(dir.file("loose"), fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(dir.read("loose", 1).unwrap(), b"x");
        assert_eq!(
            fs::metadata(dir.file("loose")).unwrap().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_link_on_the_way_is_checked_where_it_lies() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        let private = tmp.path().join("private");
        fs::create_dir(&open).unwrap();
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&private, open.join("link")).unwrap();
        let err = StateDir::open(&open.join("link/state"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("every user may write (mode 0777)"), "{err}");
        StateDir::open(&private.join("state")).expect("the real path alone is fine");
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
    fn deleting_the_lock_file_frees_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s")).unwrap();
        let held = StateDirLock::acquire(&dir).unwrap();
        fs::remove_file(held.path()).unwrap();
        let err = StateDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("in use by process {}", std::process::id())),
            "named from the kernel's lock table: {err}"
        );
        assert!(!dir.contains(LOCK_FILE), "the refused one wrote nothing");
        drop(held);
        StateDirLock::acquire(&dir).expect("free again once dropped");
        assert!(dir.contains(LOCK_FILE));
    }

    #[test]
    fn flock_holders_are_read_from_proc_locks() {
        let dev = (0xfd << 8) | 0x01;
        let locks = "1: POSIX  ADVISORY  WRITE 10 fd:01:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4321 fd:01:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 55 fd:01:1234 0 EOF\n";
        assert_eq!(flock_holder(locks, dev, 1234), Some(4321));
        assert_eq!(flock_holder(locks, dev, 99), None, "not an flock");
        assert_eq!(flock_holder(locks, dev + 1, 1234), None, "another device");
    }

    #[test]
    fn hard_linked_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("s")).unwrap();
        dir.write_private("x", b"abc").unwrap();
        fs::hard_link(dir.file("x"), tmp.path().join("other")).unwrap();
        let err = dir.read("x", 3).unwrap_err().to_string();
        assert!(
            err.contains("has 2 hard links") && err.contains("not a backup"),
            "{err}"
        );
        fs::remove_file(tmp.path().join("other")).unwrap();
        assert_eq!(dir.read("x", 3).unwrap(), b"abc");
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
