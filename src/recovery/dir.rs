//! The recovery directory and its writer, the key store's change sink.
//!
//! ```text
//! <dir>/                 mode 0750, the daemon's user, the [recovery] group (or the daemon's)
//!   MANIFEST             the authenticated table of contents (manifest.rs), 0640
//!   custodians/          identity.age (threshold 1) or 1.age … n.age (one share each)
//!   keys/<id hex>.age    one key's record (record.rs), age-encrypted to the bundle recipient
//! ```
//!
//! Every file is replaced by an atomic, durable rename (a temporary file in
//! the same directory, fsync, rename, fsync of the directory), so a reader
//! sees a whole old file or a whole new one. A change writes the key's file
//! first and the MANIFEST after it, before the change is answered: a key
//! file read after the MANIFEST is at least the MANIFEST's revision, never
//! older. A write that fails leaves the change standing (it is committed);
//! the writer keeps the encrypted file in memory, says "not current" in
//! `Status` and the journal, and writes everything that lags at the next
//! change or [`RecoveryWriter::retry`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use agent_proto::RecoveryStatus;
use atomic_write_file::AtomicWriteFile;
use atomic_write_file::unix::OpenOptionsExt as _;

use super::RecoveryConfig;
use super::agefile::{self, AgeError};
use super::escrow::{self, BundleIdentity, EscrowError, EscrowFile};
use super::manifest::{Manifest, ManifestKey, UnverifiedManifest};
use super::record::{self, MAX_RECORD_LEN};
use crate::envelope::KeyId;
use crate::keystore::{Change, ChangeSink, KeyMaterial};

/// The MANIFEST's file name.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The directory of the escrowed bundle identity.
pub const CUSTODIANS_DIR: &str = "custodians";
/// The directory of the key files.
pub const KEYS_DIR: &str = "keys";
/// The directories' mode: the daemon's user writes, their group (a backup
/// agent's) reads, others nothing. The daemon sets no setgid bit (the
/// unit's RestrictSUIDSGID= forbids it) but keeps one an administrator set;
/// files get the configured group from it, or else by fchown.
pub const DIR_MODE: u32 = 0o750;
/// The files' mode.
pub const FILE_MODE: u32 = 0o640;

/// The suffix of a batch write's temporary files (`.<name>.tmp`).
const TEMP_SUFFIX: &str = ".tmp";

/// Lagging key files beyond this many are written as one batch.
const BATCH_FROM: usize = 16;

/// The largest key file read back: a record of the largest size, and age's
/// header and 16-byte tag per 64 KiB chunk.
const MAX_KEY_FILE: usize = MAX_RECORD_LEN + MAX_RECORD_LEN / 4096 + 64 * 1024;

/// The file name of key `id`'s record.
pub fn key_file_name(id: KeyId) -> String {
    format!("{id}.age")
}

/// Why the recovery directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The directory (or a part of it) is unusable.
    #[error("recovery dir {}: {problem}", path.display())]
    Unusable {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key record could not be made.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The MANIFEST could not be made.
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    /// age failed.
    #[error(transparent)]
    Age(#[from] AgeError),
    /// Escrow failed.
    #[error(transparent)]
    Escrow(#[from] EscrowError),
}

/// A checked recovery directory.
#[derive(Debug)]
pub struct RecoveryDir {
    path: PathBuf,
    /// The group its files get, when configured.
    gid: Option<u32>,
}

impl RecoveryDir {
    /// Opens `path`, creating it (mode 0750, `gid`'s group when given) and
    /// its `keys/` and `custodians/`. Refuses a symbolic link, anything but
    /// a directory, and a directory of another user or that every user can
    /// read.
    pub fn open(path: &Path, gid: Option<u32>) -> Result<RecoveryDir, RecoveryError> {
        let dir = RecoveryDir {
            path: path.to_path_buf(),
            gid,
        };
        check_ancestors(path).map_err(|problem| RecoveryError::Unusable {
            path: path.to_path_buf(),
            problem,
        })?;
        dir.prepare(path, gid)?;
        for sub in [KEYS_DIR, CUSTODIANS_DIR] {
            dir.prepare(&path.join(sub), gid)?;
        }
        Ok(dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prepare(&self, path: &Path, gid: Option<u32>) -> Result<(), RecoveryError> {
        let unusable = |problem: String| RecoveryError::Unusable {
            path: path.to_path_buf(),
            problem,
        };
        let euid = nix::unistd::geteuid().as_raw();
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o750)
                    .create(path)
                    .map_err(|e| unusable(format!("cannot create it: {e}; create it (install -d -m 0750 -o <the daemon's user> DIR) or set [recovery] dir")))?;
            }
            Err(e) => {
                return Err(unusable(format!(
                    "cannot inspect it: {e}; check the permissions of its parent directories"
                )));
            }
            Ok(meta) => {
                if meta.file_type().is_symlink() {
                    return Err(unusable(
                        "is a symbolic link; hostkmsd writes key files only into a real directory: point [recovery] dir at the directory itself".into(),
                    ));
                }
                if !meta.is_dir() {
                    return Err(unusable("is not a directory".into()));
                }
                if meta.uid() != euid {
                    return Err(unusable(format!(
                        "is owned by uid {}, but the daemon runs as uid {euid}: another user could replace the key files. chown it to the daemon's user",
                        meta.uid()
                    )));
                }
            }
        }
        let meta =
            fs::symlink_metadata(path).map_err(|e| unusable(format!("cannot inspect it: {e}")))?;
        if let Some(gid) = gid {
            if meta.gid() != gid {
                nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(
                    |e| {
                        unusable(format!(
                            "cannot give it to group {gid}: {e}; make the daemon's user a member of that group, or chgrp it as root"
                        ))
                    },
                )?;
            }
        }
        // A setgid bit an administrator set (so files take the directory's
        // group without a chown, which the packaged unit's system-call
        // filter forbids) is kept.
        let wanted = DIR_MODE | (meta.mode() & 0o2000);
        if meta.mode() & 0o7777 != wanted {
            fs::set_permissions(path, fs::Permissions::from_mode(wanted)).map_err(|e| {
                unusable(format!(
                    "cannot set its mode to {wanted:04o}: {e}; as root, run install -d -m {wanted:04o} -o <the daemon's user> -g <its group> on it and on its keys/ and custodians/"
                ))
            })?;
        }
        Ok(())
    }

    /// Writes `name` (relative to the directory) atomically and durably,
    /// mode 0640.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), RecoveryError> {
        let path = self.path.join(name);
        let write_error = |source| RecoveryError::Write {
            path: path.clone(),
            source,
        };
        let mut file = AtomicWriteFile::options()
            .mode(FILE_MODE)
            .preserve_mode(false)
            .preserve_owner(false)
            .open(&path)
            .map_err(write_error)?;
        // The daemon's umask (077) would leave the group (a backup agent's)
        // out: the mode is set explicitly.
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(write_error)?;
        self.give_to_group(file.as_file()).map_err(write_error)?;
        file.write_all(bytes).map_err(write_error)?;
        file.commit().map_err(write_error)
    }

    /// Writes many files of subdirectory `sub` at once, for reconciling a
    /// large store: each a temporary file renamed over its name (a reader
    /// still sees whole files), then one `syncfs` for all of them instead
    /// of two fsyncs each (at 10,000 keys, minutes of fsyncs at start). A
    /// crash before the `syncfs` may leave a file empty: the next start
    /// checks every file and writes it again.
    pub fn write_batch<'a>(
        &self,
        sub: &str,
        files: impl Iterator<Item = (String, &'a [u8])>,
    ) -> Result<(), RecoveryError> {
        let dir = self.path.join(sub);
        for (name, bytes) in files {
            let path = dir.join(&name);
            let temp = dir.join(format!(".{name}{TEMP_SUFFIX}"));
            let write_error = |source| RecoveryError::Write {
                path: path.clone(),
                source,
            };
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&temp)
                .map_err(write_error)?;
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                .map_err(write_error)?;
            self.give_to_group(&file).map_err(write_error)?;
            file.write_all(bytes).map_err(write_error)?;
            drop(file);
            fs::rename(&temp, &path).map_err(write_error)?;
        }
        let handle = fs::File::open(&dir).map_err(|source| RecoveryError::Write {
            path: dir.clone(),
            source,
        })?;
        nix::unistd::syncfs(&handle).map_err(|e| RecoveryError::Write {
            path: dir.clone(),
            source: e.into(),
        })
    }

    /// Gives `file` to the configured group, when it has another.
    fn give_to_group(&self, file: &fs::File) -> std::io::Result<()> {
        let Some(gid) = self.gid else {
            return Ok(());
        };
        if file.metadata()?.gid() == gid {
            return Ok(());
        }
        std::os::unix::fs::fchown(file, None, Some(gid)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot give it to group {gid} ({e}): the daemon's user must be a member of [recovery] group"),
            )
        })
    }

    /// Reads `name` (never through a symbolic link, only a regular file),
    /// at most `max` bytes; `None` when it does not exist.
    pub fn read(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        let path = self.path.join(name);
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open it: {e}")),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot inspect it: {e}"))?;
        if !meta.is_file() {
            return Err("is not a regular file".into());
        }
        let mut bytes = Vec::new();
        file.take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.len() > max {
            return Err(format!("is longer than the {max} bytes allowed"));
        }
        Ok(Some(bytes))
    }

    /// The names of the entries of subdirectory `sub`.
    fn list(&self, sub: &str) -> Result<Vec<String>, RecoveryError> {
        let path = self.path.join(sub);
        let entries = fs::read_dir(&path).map_err(|e| RecoveryError::Unusable {
            path: path.clone(),
            problem: format!("cannot list it: {e}"),
        })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Removes `name`, durably.
    fn remove(&self, name: &str) -> Result<(), RecoveryError> {
        let path = self.path.join(name);
        let write_error = |source| RecoveryError::Write {
            path: path.clone(),
            source,
        };
        fs::remove_file(&path).map_err(write_error)?;
        let parent = path.parent().unwrap_or(&self.path);
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(write_error)
    }
}

/// Refuses a recovery directory that another user could swap for their
/// own while the daemon runs: every directory above it (on the path as
/// given and as resolved) must belong to root or the daemon's user, and
/// none may be writable by every user without the sticky bit (as `/tmp`).
fn check_ancestors(path: &Path) -> Result<(), String> {
    let given =
        std::path::absolute(path).map_err(|e| format!("cannot make its path absolute: {e}"))?;
    let parent = given.parent().unwrap_or(&given);
    let real = fs::canonicalize(parent).map_err(|e| {
        format!(
            "cannot resolve its parent {}: {e}; create it or choose another [recovery] dir",
            parent.display()
        )
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    for ancestor in given.ancestors().skip(1).chain(real.ancestors()) {
        let meta = fs::symlink_metadata(ancestor)
            .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(format!(
                "lies below {}, owned by uid {}: that user could rename the recovery directory and put another in its place. Move it below directories owned by root or the daemon's user",
                ancestor.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "lies below {}, which every user may write (mode {mode:04o}) without the sticky bit: anyone could put another directory in its place. Run chmod o-w {} (or chmod +t), or move it",
                ancestor.display(),
                ancestor.display()
            ));
        }
    }
    Ok(())
}

/// What lags behind the store, kept until written.
#[derive(Default)]
struct Lagging {
    /// Custodian files to write, then the ones to remove.
    escrow: Option<(Vec<EscrowFile>, Vec<String>)>,
    /// Encrypted key files to write, by key.
    keys: BTreeMap<[u8; 16], Vec<u8>>,
    /// Whether the MANIFEST must be written.
    manifest: bool,
}

impl Lagging {
    fn is_empty(&self) -> bool {
        self.escrow.is_none() && self.keys.is_empty() && !self.manifest
    }
}

struct WriterState {
    manifest: Manifest,
    lagging: Lagging,
    /// Why the directory is not current; empty when it is.
    problem: String,
}

/// The recovery directory's writer: the key store's [`ChangeSink`].
pub struct RecoveryWriter {
    dir: RecoveryDir,
    config: RecoveryConfig,
    bundle: BundleIdentity,
    state: Mutex<WriterState>,
}

impl std::fmt::Debug for RecoveryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryWriter")
            .field("dir", &self.dir.path)
            .field("bundle", &self.bundle.recipient())
            .finish_non_exhaustive()
    }
}

/// What reconciling the directory with the store did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Whether the bundle identity was escrowed again (first start, new
    /// custodians or threshold, a missing custodian file).
    pub escrowed: bool,
    /// Key files written because they were missing or differed.
    pub rewritten: Vec<String>,
    /// Files (key files, the MANIFEST) that did not authenticate under the
    /// bundle identity (planted, edited, or of another bundle): rewritten.
    pub untrusted: Vec<String>,
    /// Files for no key of the store, removed.
    pub removed: Vec<String>,
}

impl RecoveryWriter {
    /// Opens the directory and brings it level with `all` (every key, under
    /// the store's writer lock): escrow when the custodians changed, key
    /// files that are missing, differ or do not authenticate, the MANIFEST.
    /// A directory that is unusable is an error; a write that fails leaves
    /// the writer not current, to be retried.
    pub fn start(
        config: RecoveryConfig,
        bundle: BundleIdentity,
        all: &[KeyMaterial],
    ) -> Result<(RecoveryWriter, Reconciled), RecoveryError> {
        escrow::check_custodians(&config.recipients, config.threshold)?;
        let dir = RecoveryDir::open(&config.dir, config.group.as_ref().map(|g| g.gid))?;
        let mut report = Reconciled::default();
        let old = match dir.read(MANIFEST_FILE, super::manifest::MAX_MANIFEST_LEN) {
            Ok(None) => None,
            Ok(Some(text)) => {
                let verified = UnverifiedManifest::parse(&text)
                    .ok()
                    .and_then(|m| m.verify(&bundle.manifest_mac_key()).ok());
                if verified.is_none() {
                    report.untrusted.push(MANIFEST_FILE.to_string());
                }
                verified
            }
            Err(problem) => {
                report
                    .untrusted
                    .push(format!("{MANIFEST_FILE} ({problem})"));
                None
            }
        };
        let mut lagging = Lagging::default();

        // Escrow: again when anything about it changed or a file is gone.
        let wanted: Vec<String> = if config.threshold == 1 {
            vec![escrow::IDENTITY_FILE.to_string()]
        } else {
            (1..=config.recipients.len())
                .map(escrow::share_file_name)
                .collect()
        };
        let present = dir.list(CUSTODIANS_DIR)?;
        let same_escrow = old.as_ref().is_some_and(|m| {
            m.bundle_recipient == bundle.recipient()
                && m.threshold == config.threshold
                && m.recipients() == config.recipients
        }) && wanted.iter().all(|w| present.contains(w));
        if !same_escrow {
            let files = escrow::escrow(&bundle, &config.recipients, config.threshold)?;
            let stale = present
                .into_iter()
                .filter(|p| !wanted.contains(p))
                .collect();
            lagging.escrow = Some((files, stale));
            report.escrowed = true;
        }

        // Key files: each one decrypted and compared with the store.
        let old_revisions: BTreeMap<&str, u64> = old
            .as_ref()
            .map(|m| m.keys.iter().map(|k| (k.id.as_str(), k.revision)).collect())
            .unwrap_or_default();
        let mut entries = Vec::with_capacity(all.len());
        let record_key = bundle.record_mac_key();
        let identity = [bundle.age_identity().clone()];
        let recipient = [bundle.age_recipient()];
        let mut known = std::collections::BTreeSet::new();
        for material in all {
            let name = key_file_name(material.id);
            known.insert(name.clone());
            let path = format!("{KEYS_DIR}/{name}");
            let on_disk = match dir.read(&path, MAX_KEY_FILE) {
                Ok(Some(file)) => match agefile::decrypt(&identity, &file, MAX_RECORD_LEN) {
                    Ok(text) => match record::decode(&text, &record_key) {
                        Ok(r) if r.material.id == material.id => Some(r),
                        _ => {
                            report.untrusted.push(name.clone());
                            None
                        }
                    },
                    Err(_) => {
                        report.untrusted.push(name.clone());
                        None
                    }
                },
                Ok(None) => None,
                Err(problem) => {
                    report.untrusted.push(format!("{name} ({problem})"));
                    None
                }
            };
            let revision = match &on_disk {
                Some(r) if record::same_material(&r.material, material) => r.revision,
                other => {
                    let before = other.as_ref().map_or(0, |r| r.revision).max(
                        old_revisions
                            .get(material.id.to_string().as_str())
                            .copied()
                            .unwrap_or(0),
                    );
                    let text = record::encode(material, before + 1, &record_key)?;
                    let file = agefile::encrypt(&recipient, &text)?;
                    lagging.keys.insert(material.id.0, file);
                    report.rewritten.push(name);
                    before + 1
                }
            };
            entries.push(ManifestKey::of(material, revision));
        }
        for name in dir.list(KEYS_DIR)? {
            if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                // A batch write's leftover from a crash.
                dir.remove(&format!("{KEYS_DIR}/{name}"))?;
                continue;
            }
            if name.ends_with(".age") && !known.contains(&name) {
                dir.remove(&format!("{KEYS_DIR}/{name}"))?;
                report.removed.push(name);
            }
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let manifest = Manifest {
            bundle_recipient: bundle.recipient().to_string(),
            threshold: config.threshold,
            custodians: Manifest::custodians_of(&config.recipients),
            keys: entries,
        };
        lagging.manifest = true;
        let writer = RecoveryWriter {
            dir,
            config,
            bundle,
            state: Mutex::new(WriterState {
                manifest,
                lagging,
                problem: String::new(),
            }),
        };
        writer.flush(&mut writer.state());
        Ok((writer, report))
    }

    fn state(&self) -> MutexGuard<'_, WriterState> {
        // A panic mid-write leaves `lagging` as it was: still to be written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes everything that lags; true when the directory is current.
    pub fn retry(&self) -> bool {
        let mut state = self.state();
        self.flush(&mut state)
    }

    /// Whether every acknowledged change is in the directory.
    pub fn is_current(&self) -> bool {
        self.state().lagging.is_empty()
    }

    /// The directory.
    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle identity's recipient.
    pub fn bundle_recipient(&self) -> &str {
        self.bundle.recipient()
    }

    /// Writes what lags, in order: custodian files, key files, the
    /// MANIFEST, then stale custodian files are removed. Stops at the first
    /// failure, which becomes the problem (logged when it is new).
    fn flush(&self, state: &mut WriterState) -> bool {
        match self.write_lagging(state) {
            Ok(()) => {
                if !state.problem.is_empty() {
                    tracing::info!(
                        dir = %self.dir.path.display(),
                        "the recovery directory is current again"
                    );
                }
                state.problem.clear();
                true
            }
            Err(e) => {
                let problem = format!(
                    "{e}; the key store has the change, but the recovery directory lags behind it. Fix the cause (disk space, permissions); hostkmsd retries at the next change and every {} s",
                    super::RETRY_INTERVAL.as_secs()
                );
                if problem != state.problem {
                    tracing::error!(dir = %self.dir.path.display(), "{problem}");
                }
                state.problem = problem;
                false
            }
        }
    }

    fn write_lagging(&self, state: &mut WriterState) -> Result<(), RecoveryError> {
        if let Some((files, _)) = &state.lagging.escrow {
            for file in files {
                self.dir
                    .write(&format!("{CUSTODIANS_DIR}/{}", file.name), &file.contents)?;
            }
        }
        if state.lagging.keys.len() >= BATCH_FROM {
            let files = state
                .lagging
                .keys
                .iter()
                .map(|(id, file)| (key_file_name(KeyId(*id)), file.as_slice()));
            self.dir.write_batch(KEYS_DIR, files)?;
            state.lagging.keys.clear();
        }
        while let Some((&id, file)) = state.lagging.keys.first_key_value() {
            self.dir
                .write(&format!("{KEYS_DIR}/{}", key_file_name(KeyId(id))), file)?;
            state.lagging.keys.remove(&id);
        }
        if state.lagging.manifest || state.lagging.escrow.is_some() {
            let text = state.manifest.encode(&self.bundle.manifest_mac_key())?;
            self.dir.write(MANIFEST_FILE, &text)?;
            state.lagging.manifest = false;
        }
        if let Some((_, stale)) = &state.lagging.escrow {
            for name in stale {
                self.dir.remove(&format!("{CUSTODIANS_DIR}/{name}"))?;
            }
            state.lagging.escrow = None;
        }
        Ok(())
    }

    /// Makes key `material`'s next record, encrypted: its manifest entry
    /// and file.
    fn seal(
        &self,
        material: &KeyMaterial,
        revision: u64,
    ) -> Result<(ManifestKey, Vec<u8>), RecoveryError> {
        let text = record::encode(material, revision, &self.bundle.record_mac_key())?;
        let file = agefile::encrypt(&[self.bundle.age_recipient()], &text)?;
        Ok((ManifestKey::of(material, revision), file))
    }
}

impl ChangeSink for RecoveryWriter {
    fn key_changed(&self, key: &KeyMaterial, change: Change) {
        let mut state = self.state();
        let id = key.id.to_string();
        let slot = state
            .manifest
            .keys
            .binary_search_by(|k| k.id.as_str().cmp(&id));
        let revision = slot.map_or(0, |i| state.manifest.keys[i].revision) + 1;
        match self.seal(key, revision) {
            Ok((entry, file)) => {
                match slot {
                    Ok(i) => state.manifest.keys[i] = entry,
                    Err(i) => state.manifest.keys.insert(i, entry),
                }
                state.lagging.keys.insert(key.id.0, file);
                state.lagging.manifest = true;
            }
            Err(e) => {
                // Not expected (the store keeps the rules a record checks);
                // the directory cannot hold this change.
                let problem = format!(
                    "cannot make the recovery record of key \"{}\" after {change:?}: {e}",
                    key.name
                );
                tracing::error!("{problem}");
                state.problem = problem;
                return;
            }
        }
        self.flush(&mut state);
    }

    fn status(&self) -> RecoveryStatus {
        let state = self.state();
        RecoveryStatus {
            configured: true,
            dir: self.dir.path.display().to_string(),
            custodians: self.config.recipients.len() as u32,
            threshold: self.config.threshold,
            bundle_recipient: self.bundle.recipient().to_string(),
            current: state.lagging.is_empty() && state.problem.is_empty(),
            problem: state.problem.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::VersionMaterial;
    use agent_proto::KeyState;
    use zeroize::Zeroizing;

    fn material(i: u32) -> KeyMaterial {
        let mut id = [0u8; 16];
        id[12..].copy_from_slice(&i.to_be_bytes());
        KeyMaterial {
            id: KeyId(id),
            name: format!("key-{i}"),
            created: 1,
            state: KeyState::Enabled,
            min_decryption_version: 1,
            settings: Default::default(),
            versions: vec![VersionMaterial {
                number: 1,
                created: 1,
                kek: Some(Zeroizing::new([i as u8; 32])),
                public_key: None,
            }],
            key_type: agent_proto::KeyType::Aes256Gcm,
        }
    }

    fn config(dir: &Path) -> RecoveryConfig {
        RecoveryConfig {
            recipients: vec![age::x25519::Identity::generate().to_public().to_string()],
            threshold: 1,
            dir: dir.to_path_buf(),
            group: None,
        }
    }

    fn bundle_copy(bundle: &BundleIdentity) -> BundleIdentity {
        BundleIdentity::from_text(&bundle.to_text()).unwrap()
    }

    #[test]
    fn a_second_start_finds_everything_current() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(&tmp.path().join("r"));
        let bundle = BundleIdentity::generate().unwrap();
        let all: Vec<KeyMaterial> = (0..3).map(material).collect();
        let (writer, first) =
            RecoveryWriter::start(config.clone(), bundle_copy(&bundle), &all).unwrap();
        assert!(first.escrowed);
        assert_eq!(first.rewritten.len(), 3);
        assert!(writer.is_current());
        drop(writer);
        let leftover = config.dir.join(KEYS_DIR).join(".0001.age.tmp");
        fs::write(&leftover, b"a crash's leftover").unwrap();
        let (writer, second) = RecoveryWriter::start(config, bundle, &all).unwrap();
        assert_eq!(second, Reconciled::default(), "nothing to do");
        assert!(writer.status().current);
        assert!(!leftover.exists());
    }

    /// `material(i)` with a description, tags, a rotation period and,
    /// for odd `i`, a pending deletion: a record of format 3.
    fn lifecycle_material(i: u32) -> KeyMaterial {
        let mut m = material(i);
        m.settings.description = format!("key number {i}");
        m.settings.tags.insert("env".into(), "prod".into());
        m.settings.rotation_period = Some(86_400);
        if i % 2 == 1 {
            m.state = KeyState::PendingDeletion;
            m.settings.deletion_due = Some(crate::keystore::DeletionDue {
                wall: 1_800_000_000,
                elapsed: 1_000,
            });
        }
        m
    }

    #[test]
    fn records_of_format_3_are_current_at_the_next_start_and_one_change_writes_one() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(&tmp.path().join("r"));
        let bundle = BundleIdentity::generate().unwrap();
        let mut all: Vec<KeyMaterial> = (0..4).map(lifecycle_material).collect();
        all.push(material(4));
        let (writer, first) =
            RecoveryWriter::start(config.clone(), bundle_copy(&bundle), &all).unwrap();
        assert_eq!(first.rewritten.len(), 5);
        drop(writer);
        let (writer, second) =
            RecoveryWriter::start(config.clone(), bundle_copy(&bundle), &all).unwrap();
        assert_eq!(second, Reconciled::default(), "nothing to rewrite");
        // A change of a description rewrites that key's record alone.
        let keys = config.dir.join(KEYS_DIR);
        // Every write is a new file renamed into place: a new inode.
        let inode = |i: u32| {
            fs::metadata(keys.join(key_file_name(material(i).id)))
                .unwrap()
                .ino()
        };
        let before: Vec<_> = (0..5).map(inode).collect();
        all[2].settings.description = "changed".into();
        writer.key_changed(&all[2], Change::Metadata);
        assert!(writer.is_current());
        let after: Vec<_> = (0..5).map(inode).collect();
        for i in 0..5 {
            assert_eq!(before[i] == after[i], i != 2, "key {i}");
        }
        let file = fs::read(keys.join(key_file_name(all[2].id))).unwrap();
        let text =
            agefile::decrypt(&[bundle.age_identity().clone()], &file, MAX_RECORD_LEN).unwrap();
        let read = record::decode(&text, &bundle.record_mac_key()).unwrap();
        assert!(record::same_material(&read.material, &all[2]));
        assert_eq!(read.revision, 2);
        drop(writer);
        let (_, third) = RecoveryWriter::start(config, bundle, &all).unwrap();
        assert_eq!(third, Reconciled::default());
    }

    /// The record of `id` in the directory, read back under `bundle`.
    fn read_record(dir: &Path, bundle: &BundleIdentity, id: KeyId) -> record::Record {
        let file = fs::read(dir.join(KEYS_DIR).join(key_file_name(id))).unwrap();
        let text =
            agefile::decrypt(&[bundle.age_identity().clone()], &file, MAX_RECORD_LEN).unwrap();
        record::decode(&text, &bundle.record_mac_key()).unwrap()
    }

    #[test]
    fn every_lifecycle_change_of_the_store_reaches_its_record_and_a_restart_rewrites_none() {
        use crate::keystore::{KeyStore, NewKeySettings, TestEntropy};
        let tmp = tempfile::tempdir().unwrap();
        let clock_file = tmp.path().join("clock");
        let open_store = || {
            let dir = crate::state_dir::StateDir::open(&tmp.path().join("state")).unwrap();
            KeyStore::open(
                &dir,
                &crate::rootkey::RootKey::from_bytes_for_tests([3; 32]),
                std::sync::Arc::new(TestEntropy::new()),
                crate::clock::Clock::movable(&clock_file),
            )
            .unwrap()
        };
        let config = config(&tmp.path().join("r"));
        let bundle = BundleIdentity::generate().unwrap();
        let store = open_store();
        let (writer, _) = store
            .with_all_material(|all| {
                RecoveryWriter::start(config.clone(), bundle_copy(&bundle), all)
            })
            .unwrap()
            .unwrap();
        let writer = std::sync::Arc::new(writer);
        store.set_change_sink(writer.clone());
        let settings = NewKeySettings {
            rotation_period: Some(86_400),
            description: "orders".into(),
            tags: [("env".to_string(), "prod".to_string())].into(),
        };
        let key = store
            .create_with("orders", agent_proto::KeyType::Aes256Gcm, settings)
            .unwrap();
        let id = key.id();
        let in_dir = || read_record(&config.dir, &bundle, id).material;
        let in_store = || {
            store
                .material(store.keys().by_name("orders").unwrap())
                .unwrap()
        };
        let check = |what: &str| {
            assert!(writer.is_current(), "{what}");
            assert!(record::same_material(&in_dir(), &in_store()), "{what}");
        };
        check("created");
        store
            .update_metadata(
                "orders",
                Some("orders, EU".into()),
                Default::default(),
                &["env".into()],
            )
            .unwrap();
        check("metadata");
        store.set_rotation_period("orders", None).unwrap();
        check("rotation period");
        let due = store.deletion_due_in(7).unwrap();
        store.schedule_deletion("orders", due).unwrap();
        check("scheduled");
        assert_eq!(in_dir().state, KeyState::PendingDeletion);
        assert_eq!(in_dir().settings.deletion_due, Some(due));
        store.cancel_deletion("orders").unwrap();
        check("cancelled");
        assert_eq!(
            (in_dir().state, in_dir().settings.deletion_due),
            (KeyState::Disabled, None)
        );
        store
            .schedule_deletion("orders", store.deletion_due_in(7).unwrap())
            .unwrap();
        // Seven days later on both clocks.
        fs::write(&clock_file, format!("{} 0", 7 * 86_400)).unwrap();
        store.advance_daemon_clock(7 * 86_400).unwrap();
        let now = store.clock().now();
        store
            .delete_due("orders", now, store.daemon_clock())
            .unwrap();
        check("deleted");
        let deleted = in_dir();
        assert_eq!(deleted.state, KeyState::Revoked);
        assert!(deleted.versions.iter().all(|v| v.kek.is_none()));
        assert_eq!(
            deleted.settings.description, "orders, EU",
            "kept for the record"
        );
        drop((writer, store));
        let store = open_store();
        let (_, restart) = store
            .with_all_material(|all| {
                RecoveryWriter::start(config.clone(), bundle_copy(&bundle), all)
            })
            .unwrap()
            .unwrap();
        assert_eq!(restart, Reconciled::default());
    }

    #[test]
    fn a_directory_below_a_world_writable_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = RecoveryDir::open(&open.join("r"), None).unwrap_err();
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        assert!(!open.join("r").exists(), "nothing created");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        RecoveryDir::open(&open.join("r"), None).unwrap();
    }

    #[test]
    fn a_failed_write_is_kept_and_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let (writer, _) = RecoveryWriter::start(
            config(&dir),
            BundleIdentity::generate().unwrap(),
            &[material(1)],
        )
        .unwrap();
        fs::rename(dir.join(KEYS_DIR), dir.join("aside")).unwrap();
        fs::write(dir.join(KEYS_DIR), b"in the way").unwrap();
        writer.key_changed(&material(2), Change::Create);
        let status = writer.status();
        assert!(
            !status.current && status.problem.contains("lags behind"),
            "{status:?}"
        );
        assert!(!writer.retry(), "still in the way");
        fs::remove_file(dir.join(KEYS_DIR)).unwrap();
        fs::rename(dir.join("aside"), dir.join(KEYS_DIR)).unwrap();
        assert!(writer.retry());
        assert!(writer.status().current && writer.status().problem.is_empty());
        assert!(
            dir.join(KEYS_DIR)
                .join(key_file_name(material(2).id))
                .exists()
        );
        let manifest = fs::read(dir.join(MANIFEST_FILE)).unwrap();
        let manifest = UnverifiedManifest::parse(&manifest).unwrap();
        assert_eq!(manifest.claimed().keys.len(), 2);
    }

    /// One change among `keys` keys: one record encrypted, two durable
    /// writes (its file, the whole MANIFEST); prints the times.
    fn one_change_among(keys: u32) {
        let tmp = tempfile::tempdir().unwrap();
        let all: Vec<KeyMaterial> = (0..keys).map(material).collect();
        let config = config(&tmp.path().join("r"));
        let bundle = BundleIdentity::generate().unwrap();
        let started = std::time::Instant::now();
        let (writer, _) =
            RecoveryWriter::start(config.clone(), bundle_copy(&bundle), &all).unwrap();
        let reconcile = started.elapsed();
        drop(writer);
        let started = std::time::Instant::now();
        let (writer, again) = RecoveryWriter::start(config, bundle, &all).unwrap();
        let restart = started.elapsed();
        assert_eq!(again, Reconciled::default());
        let mut changed = material(keys / 2);
        changed.state = KeyState::Disabled;
        let started = std::time::Instant::now();
        let rounds = 10;
        for _ in 0..rounds {
            writer.key_changed(&changed, Change::Disable);
        }
        let per_change = started.elapsed() / rounds;
        eprintln!(
            "{keys} keys: first reconcile (every file written) {reconcile:?}; a restart (every file checked) {restart:?}; one change {per_change:?}"
        );
        assert!(writer.is_current());
        assert!(per_change < std::time::Duration::from_secs(10));
    }

    #[test]
    fn one_change_among_a_thousand_keys() {
        one_change_among(1_000);
    }

    /// The measurement of BENCHMARKS.md: `cargo test --release -p hostkms
    /// --lib ten_thousand -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: about a minute in a debug build"]
    fn one_change_among_ten_thousand_keys() {
        one_change_among(10_000);
    }
}
