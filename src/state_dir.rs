//! The daemon's state directory: created 0700, refused when others can reach
//! it, and written only atomically with files of mode 0600.

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
    fn refuses_a_file_in_place_of_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = StateDir::open(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
