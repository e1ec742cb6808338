//! `hostkms backup`: one tar file of the recovery directory the daemon names
//! in `Status` (`recovery.dir`), for shipping off the host.
//!
//! Consistency without a lock: the daemon replaces every file of the
//! directory by an atomic rename, so each file read here is whole. The
//! MANIFEST is read first, then `custodians/` and `keys/`; since the daemon
//! writes a key's file before the MANIFEST, a key file in the tar may be
//! newer than the MANIFEST's entry for it, never older (restore accepts a
//! record revision at or above the MANIFEST's). Everything in the tar is
//! encrypted to the custodians or authenticated; it is written with mode
//! 0600 anyway.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::CliError;
use crate::io::{Sensitivity, write_output};

/// The directory entries a backup holds, in the order they are read.
pub const MANIFEST: &str = "MANIFEST";
/// The subdirectories, after the MANIFEST.
pub const SUBDIRS: [&str; 2] = ["custodians", "keys"];

/// The largest single file copied (the daemon's MANIFEST limit).
const MAX_FILE: u64 = 512 << 20;

/// Reads the recovery directory `dir` and returns the tar's bytes:
/// `MANIFEST`, then `custodians/…` and `keys/…` (each sorted by name).
pub fn tar_of(dir: &Path) -> Result<Vec<u8>, CliError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| -> Result<(), CliError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o640);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        builder
            .append_data(&mut header, name, bytes)
            .map_err(|e| CliError::write(None, e))
    };
    let manifest = read_file(&dir.join(MANIFEST))?;
    add(MANIFEST, &manifest)?;
    for sub in SUBDIRS {
        let path = dir.join(sub);
        let entries = fs::read_dir(&path).map_err(|e| unreadable(&path, e))?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".age") && !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            match read_file(&path.join(&name)) {
                Ok(bytes) => add(&format!("{sub}/{name}"), &bytes)?,
                // Removed since it was listed (a custodian file after re-escrow).
                Err(CliError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    builder.into_inner().map_err(|e| CliError::write(None, e))
}

/// Writes the backup of `dir` to `out` (mode 0600), refusing an existing
/// `out` unless `force`.
pub fn write_backup(dir: &Path, out: &Path, force: bool) -> Result<(), CliError> {
    if !force && fs::symlink_metadata(out).is_ok() {
        return Err(CliError::Usage(format!(
            "{} exists; give --force to replace it, or another --out",
            out.display()
        )));
    }
    let tar = tar_of(dir)?;
    write_output(Some(out), Sensitivity::Secret, &tar)
}

/// A file of the recovery directory: never through a symbolic link, only a
/// regular file, bounded.
fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| unreadable(path, e))?;
    let meta = file.metadata().map_err(|e| unreadable(path, e))?;
    if !meta.is_file() {
        return Err(unreadable(
            path,
            std::io::Error::other("not a regular file"),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE) as usize);
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(unreadable(
            path,
            std::io::Error::other(format!("longer than {MAX_FILE} bytes")),
        ));
    }
    Ok(bytes)
}

/// O_NOFOLLOW | O_NONBLOCK (a FIFO must not hang the read).
fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits()
}

fn unreadable(path: &Path, source: std::io::Error) -> CliError {
    let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
        " (run hostkms backup as root or as a member of the recovery directory's group, [recovery] group)"
    } else {
        ""
    };
    CliError::Read {
        what: format!("{}{hint}", PathBuf::from(path).display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_comes_first_then_custodians_then_keys() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("keys")).unwrap();
        fs::create_dir(dir.path().join("custodians")).unwrap();
        fs::write(dir.path().join("MANIFEST"), b"m").unwrap();
        fs::write(dir.path().join("keys/bb.age"), b"b").unwrap();
        fs::write(dir.path().join("keys/aa.age"), b"a").unwrap();
        fs::write(dir.path().join("keys/.tmp"), b"t").unwrap();
        fs::write(dir.path().join("custodians/identity.age"), b"i").unwrap();
        let tar = tar_of(dir.path()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "MANIFEST",
                "custodians/identity.age",
                "keys/aa.age",
                "keys/bb.age"
            ]
        );
    }

    #[test]
    fn links_and_missing_manifests_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(tar_of(dir.path()), Err(CliError::Read { .. })));
        fs::create_dir(dir.path().join("keys")).unwrap();
        fs::create_dir(dir.path().join("custodians")).unwrap();
        fs::write(dir.path().join("elsewhere"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("MANIFEST"))
            .unwrap();
        assert!(matches!(tar_of(dir.path()), Err(CliError::Read { .. })));
    }

    #[test]
    fn an_existing_output_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("keys")).unwrap();
        fs::create_dir(dir.path().join("custodians")).unwrap();
        fs::write(dir.path().join("MANIFEST"), b"m").unwrap();
        let out = dir.path().join("backup.tar");
        fs::write(&out, b"old").unwrap();
        assert!(matches!(
            write_backup(dir.path(), &out, false),
            Err(CliError::Usage(_))
        ));
        assert_eq!(fs::read(&out).unwrap(), b"old");
        write_backup(dir.path(), &out, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
