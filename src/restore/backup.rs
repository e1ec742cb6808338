//! Reading the BACKUP of `hostkmsd restore`: a recovery directory, or the
//! tar file `hostkms backup` writes, into memory, file by file.
//!
//! Everything in a backup is untrusted until the bundle identity has
//! authenticated it, so reading it is bounded and literal: only `MANIFEST`,
//! `custodians/NAME` and `keys/NAME` are read, each at most
//! [`MAX_FILE`] bytes ([`MAX_MANIFEST`] for the MANIFEST) and all together
//! at most [`MAX_TOTAL`]; a symbolic
//! link, a hard link, a device or a FIFO in their place is refused, never
//! followed (`O_NOFOLLOW` on every open in a directory, and only regular
//! entries in a tar); a tar path that climbs (`..`) or is absolute is
//! refused. Other files (a backup agent's own, a writer's temporary file)
//! are left unread and named in [`Backup::ignored`].

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::recovery::manifest::MAX_MANIFEST_LEN;
use crate::recovery::record::MAX_RECORD_LEN;

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST";
/// The directory of the escrowed bundle identity (or its shares).
pub const CUSTODIANS: &str = "custodians";
/// The directory of the key records.
pub const KEYS: &str = "keys";

/// The largest key or custodian file a backup may hold: the largest key
/// record, and room for its age encryption.
pub const MAX_FILE: u64 = MAX_RECORD_LEN as u64 + (1 << 20);
/// The largest MANIFEST a backup may hold.
pub const MAX_MANIFEST: u64 = MAX_MANIFEST_LEN as u64;
/// The most all files of a backup may hold together.
pub const MAX_TOTAL: u64 = 1 << 30;
/// The most files a backup may hold.
pub const MAX_FILES: usize = 1 << 20;

/// A backup read into memory: its files by path relative to the recovery
/// directory (`MANIFEST`, `custodians/1.age`, `keys/<id>.age`).
#[derive(Debug, Default)]
pub struct Backup {
    /// Where it was read from, for messages.
    pub origin: PathBuf,
    /// The files read, by relative path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files the backup holds that restore does not read.
    pub ignored: Vec<String>,
    /// The bytes of `files` together, kept as they are added.
    pub(super) total_bytes: u64,
}

/// Why a backup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The path could not be opened or read.
    #[error(
        "cannot read backup {}: {source}; give a recovery directory or a tar file written by `hostkms backup`",
        path.display()
    )]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something in the backup is not what hostkms writes there.
    #[error("backup {}: {entry} {problem}; restore changed nothing", origin.display())]
    Refused {
        /// The backup.
        origin: PathBuf,
        /// The entry, as the backup names it.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The backup is larger than any hostkms writes.
    #[error(
        "backup {}: {problem}; it is not a hostkms recovery directory (restore reads at most {MAX_FILES} files, each key or custodian file at most {MAX_FILE} bytes, the MANIFEST at most {MAX_MANIFEST}, {MAX_TOTAL} bytes in all)",
        origin.display()
    )]
    TooLarge {
        /// The backup.
        origin: PathBuf,
        /// Which limit it passes.
        problem: String,
    },
    /// The backup has no MANIFEST.
    #[error(
        "backup {} has no {MANIFEST}: it is not a hostkms recovery directory or backup tar (they hold {MANIFEST}, {CUSTODIANS}/ and {KEYS}/)",
        origin.display()
    )]
    NoManifest {
        /// The backup.
        origin: PathBuf,
    },
}

impl Backup {
    /// Reads `path`: a recovery directory, or a tar file.
    pub fn read(path: &Path) -> Result<Backup, BackupError> {
        let read_error = |source| BackupError::Read {
            path: path.to_path_buf(),
            source,
        };
        // The path the operator named is followed like any command-line
        // argument; nothing inside it is.
        let meta = std::fs::metadata(path).map_err(read_error)?;
        let mut backup = Backup {
            origin: path.to_path_buf(),
            ..Backup::default()
        };
        if meta.is_dir() {
            backup.read_directory()?;
        } else if meta.is_file() {
            let file = std::fs::File::open(path).map_err(read_error)?;
            backup.read_tar(file)?;
        } else {
            return Err(BackupError::Refused {
                origin: path.to_path_buf(),
                entry: String::from("it"),
                problem: "is neither a directory nor a regular file".to_string(),
            });
        }
        if !backup.files.contains_key(MANIFEST) {
            return Err(BackupError::NoManifest {
                origin: backup.origin,
            });
        }
        Ok(backup)
    }

    /// The file at `path` (relative), if the backup holds it.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// The files directly in directory `dir` (`keys`, `custodians`), by
    /// file name.
    pub fn files_in<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.files.iter().filter_map(move |(path, bytes)| {
            let name = path.strip_prefix(dir)?.strip_prefix('/')?;
            Some((name, bytes.as_slice()))
        })
    }

    fn refused(&self, entry: &str, problem: impl Into<String>) -> BackupError {
        BackupError::Refused {
            origin: self.origin.clone(),
            entry: entry.to_string(),
            problem: problem.into(),
        }
    }

    /// Adds file `relative` (already known to be wanted) with `bytes`,
    /// within the limits.
    fn add(&mut self, relative: String, bytes: Vec<u8>) -> Result<(), BackupError> {
        if self.files.len() >= MAX_FILES {
            return Err(BackupError::TooLarge {
                origin: self.origin.clone(),
                problem: format!("it holds more than {MAX_FILES} files"),
            });
        }
        let total = self.total_bytes + bytes.len() as u64;
        if total > MAX_TOTAL {
            return Err(BackupError::TooLarge {
                origin: self.origin.clone(),
                problem: format!("its files hold more than {MAX_TOTAL} bytes"),
            });
        }
        if self.files.insert(relative.clone(), bytes).is_some() {
            return Err(self.refused(&relative, "appears twice"));
        }
        self.total_bytes = total;
        Ok(())
    }

    /// Reads the recovery directory at `self.origin`.
    fn read_directory(&mut self) -> Result<(), BackupError> {
        let origin = self.origin.clone();
        let io = |path: &str, source: nix::Error| BackupError::Read {
            path: origin.join(path),
            source: std::io::Error::from(source),
        };
        let root = nix::fcntl::open(
            &origin,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("", e))?;
        for name in list(&root).map_err(|e| io("", e))? {
            match name.as_str() {
                MANIFEST => {
                    let bytes = self.read_at(&root, MANIFEST, MANIFEST)?;
                    self.add(MANIFEST.to_string(), bytes)?;
                }
                CUSTODIANS | KEYS => {
                    let dir = nix::fcntl::openat(
                        &root,
                        name.as_str(),
                        OFlag::O_RDONLY
                            | OFlag::O_DIRECTORY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| match e {
                        nix::Error::ELOOP | nix::Error::ENOTDIR => self.refused(
                            &format!("{name}/"),
                            "is not a directory (a symbolic link, or a file); restore follows no links in a backup",
                        ),
                        e => io(&name, e),
                    })?;
                    for file in list(&dir).map_err(|e| io(&name, e))? {
                        let relative = format!("{name}/{file}");
                        if file.starts_with('.') {
                            self.ignored.push(relative);
                            continue;
                        }
                        let bytes = self.read_at(&dir, &file, &relative)?;
                        self.add(relative, bytes)?;
                    }
                }
                _ => self.ignored.push(name),
            }
        }
        Ok(())
    }

    /// Reads the regular file `name` in `dir`, never through a link.
    fn read_at(&self, dir: &OwnedFd, name: &str, relative: &str) -> Result<Vec<u8>, BackupError> {
        let fd = nix::fcntl::openat(
            dir,
            name,
            // O_NONBLOCK: a FIFO put in place of a file must not hang the open.
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            nix::Error::ELOOP => self.refused(
                relative,
                "is a symbolic link; restore follows no links in a backup: copy the file itself there",
            ),
            e => BackupError::Read {
                path: self.origin.join(relative),
                source: std::io::Error::from(e),
            },
        })?;
        let file = std::fs::File::from(fd);
        let read_error = |source| BackupError::Read {
            path: self.origin.join(relative),
            source,
        };
        let meta = file.metadata().map_err(read_error)?;
        if !meta.is_file() {
            return Err(self.refused(relative, "is not a regular file"));
        }
        let max = limit(relative);
        if meta.len() > max {
            return Err(BackupError::TooLarge {
                origin: self.origin.clone(),
                problem: format!("{relative} is {} bytes", meta.len()),
            });
        }
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > max {
            return Err(BackupError::TooLarge {
                origin: self.origin.clone(),
                problem: format!("{relative} grew past {max} bytes while read"),
            });
        }
        Ok(bytes)
    }

    /// Reads a tar file: regular entries only, at relative paths that stay
    /// inside the archive. Its paths may all sit below one directory (a
    /// tar of `hostkms-recovery/`), which is then taken as the root.
    fn read_tar(&mut self, file: impl Read) -> Result<(), BackupError> {
        let origin = self.origin.clone();
        let read_error = |source| BackupError::Read {
            path: origin.clone(),
            source,
        };
        let mut archive = tar::Archive::new(file);
        let mut entries: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
        // Counted as entries are read, so a tar of many large (or sparse)
        // entries is refused before it is in memory, not after.
        let mut total: u64 = 0;
        for entry in archive.entries().map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                // Nothing is made from a tar: a directory entry (`./`, as
                // `tar -C DIR .` writes, or `keys/`) only names what the
                // files below it say again.
                continue;
            }
            let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let components = tar_path(&entry).ok_or_else(|| {
                self.refused(
                    &format!("tar entry {shown:?}"),
                    "has an absolute path, a \"..\" or a name that is not UTF-8; hostkms backup writes none",
                )
            })?;
            if !(kind.is_file() || kind.is_contiguous()) {
                return Err(self.refused(
                    &format!("tar entry {shown:?}"),
                    format!(
                        "is a {} rather than a regular file; restore extracts no links or special files",
                        kind_name(kind)
                    ),
                ));
            }
            if entries.len() >= MAX_FILES {
                return Err(BackupError::TooLarge {
                    origin: self.origin.clone(),
                    problem: format!("it holds more than {MAX_FILES} files"),
                });
            }
            let size = entry.size();
            let max = if components.last().is_some_and(|last| last == MANIFEST) {
                MAX_MANIFEST
            } else {
                MAX_FILE
            };
            if size > max {
                return Err(BackupError::TooLarge {
                    origin: self.origin.clone(),
                    problem: format!("tar entry {shown:?} is {size} bytes"),
                });
            }
            if !wanted(&components) && !wanted(components.get(1..).unwrap_or_default()) {
                self.ignored.push(components.join("/"));
                continue;
            }
            total = total.saturating_add(size);
            if total > MAX_TOTAL {
                return Err(BackupError::TooLarge {
                    origin: self.origin.clone(),
                    problem: format!("its files hold more than {MAX_TOTAL} bytes"),
                });
            }
            let mut bytes = Vec::new();
            entry
                .take(max + 1)
                .read_to_end(&mut bytes)
                .map_err(read_error)?;
            entries.push((components, bytes));
        }
        // The root is where MANIFEST is: the archive's top, or the one
        // directory every entry sits below.
        let prefix_len = if entries.iter().any(|(c, _)| c.as_slice() == [MANIFEST]) {
            0
        } else {
            let first = entries.first().and_then(|(c, _)| c.first()).cloned();
            let shared = entries.iter().all(|(c, _)| c.first() == first.as_ref());
            usize::from(shared && first.is_some())
        };
        for (components, bytes) in entries {
            let inner = components.get(prefix_len..).unwrap_or_default();
            if wanted(inner) {
                self.add(inner.join("/"), bytes)?;
            } else {
                self.ignored.push(components.join("/"));
            }
        }
        Ok(())
    }
}

/// The most bytes the file at `relative` may have.
fn limit(relative: &str) -> u64 {
    if relative == MANIFEST {
        MAX_MANIFEST
    } else {
        MAX_FILE
    }
}

/// Whether restore reads the file at these relative path components.
fn wanted(components: &[String]) -> bool {
    match components {
        [name] => name == MANIFEST,
        [dir, name] => (dir == CUSTODIANS || dir == KEYS) && !name.starts_with('.'),
        _ => false,
    }
}

/// A tar entry's path as normal components (`./` dropped), or `None` when
/// it is absolute, climbs with `..`, or is not UTF-8.
fn tar_path<R: Read>(entry: &tar::Entry<'_, R>) -> Option<Vec<String>> {
    let path = entry.path().ok()?;
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => components.push(name.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!components.is_empty()).then_some(components)
}

/// What a tar entry of type `kind` is, in words.
fn kind_name(kind: tar::EntryType) -> &'static str {
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_hard_link() {
        "hard link"
    } else if kind.is_character_special() || kind.is_block_special() {
        "device"
    } else if kind.is_fifo() {
        "FIFO"
    } else {
        "special entry"
    }
}

/// The names in directory `dir`, without `.` and `..`, sorted.
fn list(dir: &impl AsFd) -> Result<Vec<String>, nix::Error> {
    let fd = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn recovery_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(MANIFEST), b"manifest").expect("write");
        std::fs::create_dir(dir.path().join(CUSTODIANS)).expect("mkdir");
        std::fs::create_dir(dir.path().join(KEYS)).expect("mkdir");
        std::fs::write(dir.path().join("custodians/1.age"), b"share one").expect("write");
        std::fs::write(dir.path().join("keys/00ff.age"), b"record").expect("write");
        dir
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            // set_path refuses "..": write the raw name, as an attacker would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if kind.is_symlink() {
                header.set_link_name("/etc/shadow").expect("link name");
            }
            header.set_cksum();
            builder.append(&header, *bytes).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    fn read_tar(bytes: Vec<u8>) -> Result<Backup, BackupError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.tar");
        std::fs::write(&path, bytes).expect("write");
        Backup::read(&path)
    }

    #[test]
    fn a_recovery_directory_is_read_file_by_file() {
        let dir = recovery_dir();
        std::fs::write(dir.path().join("keys/.00ff.age.tmp"), b"half").expect("write");
        std::fs::write(dir.path().join("README"), b"agent's note").expect("write");
        let backup = Backup::read(dir.path()).expect("read");
        assert_eq!(backup.file(MANIFEST), Some(&b"manifest"[..]));
        assert_eq!(
            backup.files_in(KEYS).collect::<Vec<_>>(),
            [("00ff.age", &b"record"[..])]
        );
        assert_eq!(
            backup.files_in(CUSTODIANS).collect::<Vec<_>>(),
            [("1.age", &b"share one"[..])]
        );
        assert_eq!(backup.ignored, ["README", "keys/.00ff.age.tmp"]);
    }

    #[test]
    fn a_link_in_a_recovery_directory_is_refused_not_followed() {
        let dir = recovery_dir();
        symlink("/etc/passwd", dir.path().join("keys/11.age")).expect("symlink");
        let err = Backup::read(dir.path()).expect_err("a link is refused");
        assert!(
            err.to_string().contains("keys/11.age is a symbolic link"),
            "{err}"
        );

        let dir = recovery_dir();
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::fs::remove_dir_all(dir.path().join(KEYS)).expect("rm");
        symlink(elsewhere.path(), dir.path().join(KEYS)).expect("symlink");
        let err = Backup::read(dir.path()).expect_err("a linked directory is refused");
        assert!(
            err.to_string().contains("keys/ is not a directory"),
            "{err}"
        );

        let dir = recovery_dir();
        std::fs::remove_file(dir.path().join(MANIFEST)).expect("rm");
        symlink("/etc/hostname", dir.path().join(MANIFEST)).expect("symlink");
        let err = Backup::read(dir.path()).expect_err("a linked manifest is refused");
        assert!(
            err.to_string().contains("MANIFEST is a symbolic link"),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_in_a_recovery_directory_is_refused_without_hanging() {
        let dir = recovery_dir();
        nix::unistd::mkfifo(
            &dir.path().join("keys/22.age"),
            Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let err = Backup::read(dir.path()).expect_err("a FIFO is refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_directory_without_manifest_is_not_a_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Backup::read(dir.path()).expect_err("no manifest");
        assert!(matches!(err, BackupError::NoManifest { .. }), "{err}");
    }

    #[test]
    fn a_tar_is_read_at_its_top_or_below_its_one_directory() {
        let regular = tar::EntryType::Regular;
        let flat = tar_of(&[
            ("MANIFEST", regular, b"m"),
            ("keys/aa.age", regular, b"k"),
            ("./custodians/1.age", regular, b"c"),
        ]);
        let backup = read_tar(flat).expect("read");
        assert_eq!(backup.file(MANIFEST), Some(&b"m"[..]));
        assert_eq!(backup.file("keys/aa.age"), Some(&b"k"[..]));
        assert_eq!(backup.file("custodians/1.age"), Some(&b"c"[..]));

        let dotted = tar_of(&[
            ("./", tar::EntryType::Directory, b""),
            ("./MANIFEST", regular, b"m"),
            ("./keys/", tar::EntryType::Directory, b""),
            ("./keys/aa.age", regular, b"k"),
        ]);
        let backup = read_tar(dotted).expect("read `tar -C DIR .`");
        assert_eq!(backup.file(MANIFEST), Some(&b"m"[..]));
        assert_eq!(backup.file("keys/aa.age"), Some(&b"k"[..]));

        let nested = tar_of(&[
            ("hostkms-recovery/", tar::EntryType::Directory, b""),
            ("hostkms-recovery/MANIFEST", regular, b"m"),
            ("hostkms-recovery/keys/aa.age", regular, b"k"),
        ]);
        let backup = read_tar(nested).expect("read");
        assert_eq!(backup.file(MANIFEST), Some(&b"m"[..]));
        assert_eq!(backup.file("keys/aa.age"), Some(&b"k"[..]));
    }

    #[test]
    fn a_tar_with_links_traversal_or_absolute_paths_is_refused() {
        let regular = tar::EntryType::Regular;
        for (entries, expected) in [
            (
                vec![
                    ("MANIFEST", regular, &b"m"[..]),
                    ("keys/aa.age", tar::EntryType::Symlink, b""),
                ],
                "symbolic link",
            ),
            (
                vec![
                    ("MANIFEST", regular, &b"m"[..]),
                    ("keys/aa.age", tar::EntryType::Link, b""),
                ],
                "hard link",
            ),
            (
                vec![
                    ("MANIFEST", regular, &b"m"[..]),
                    ("keys/../../etc/x", regular, b"x"),
                ],
                "\"..\"",
            ),
            (vec![("/MANIFEST", regular, &b"m"[..])], "absolute path"),
            (
                vec![
                    ("MANIFEST", regular, &b"m"[..]),
                    ("./MANIFEST", regular, b"m2"),
                ],
                "appears twice",
            ),
        ] {
            let err = read_tar(tar_of(&entries)).expect_err("refused");
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn a_tar_entry_larger_than_any_record_is_refused_before_it_is_read() {
        let mut header = tar::Header::new_gnu();
        header.set_path("keys/big.age").expect("path");
        header.set_size(MAX_FILE + 1);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        // Only the header: the size alone must refuse it, with no allocation.
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let err = read_tar(bytes).expect_err("too large");
        assert!(matches!(err, BackupError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let err = read_tar(b"not a tar at all".repeat(100)).expect_err("garbage");
        assert!(
            matches!(
                err,
                BackupError::Read { .. } | BackupError::NoManifest { .. }
            ),
            "{err}"
        );
    }
}
