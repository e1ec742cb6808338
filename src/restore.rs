//! `hostkmsd restore`: every key of a recovery directory (or of a
//! `hostkms backup` tar) imported into this host's store, sealed under
//! this host's TPM, offline.
//!
//! The order matters. First everything the operator named is read, as the
//! user who runs the restore (identity files are often root's own): the
//! backup ([`backup`]), the custodians' identities or shares. The bundle
//! identity is put together from them and every record and the manifest
//! are verified under it (`crate::recovery`), so a wrong identity, a
//! tampered file or a stale record stops the restore before this host's
//! state dir is touched. Then the restore becomes the daemon's user (when
//! run as root), takes the state dir's lock (refused while a daemon runs),
//! unseals or creates this host's root key, opens the store and imports
//! every key in one transaction ([`KeyStore::restore`]): all or nothing.
//!
//! The restored host does not adopt the old bundle identity: once
//! custodians have put it together it counts as exposed. The new host
//! escrows its own at its first start with `[recovery]`.

pub mod backup;
pub mod open;

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::Config;
use crate::keystore::{EntropySource, KeyStore, RestoreRefused, Restored, StoreError};
use crate::rootkey::{self, Origin, RootKeyError};
use crate::state_dir::{StateDir, StateDirError, StateDirLock};
use crate::tpm::{TpmError, TpmWorker};

pub use backup::{Backup, BackupError};
pub use open::{CustodianInput, OpenError, Opened};

/// The largest identity or share file read: an age identity file with a
/// few identities and comments is far smaller.
pub const MAX_CUSTODIAN_FILE: u64 = 64 << 10;

/// The user the Debian package's hostkmsd runs as (systemd/hostkms.service).
const PACKAGED_USER: &str = "hostkms";

/// How long the restore waits for the TPM worker's last conversation.
const TPM_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What the operator asked `hostkmsd restore` to do.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The recovery directory or backup tar.
    pub backup: PathBuf,
    /// The PIN, when the root key is (or, in an empty state dir, is to be)
    /// sealed to one (`--pin-file`).
    pub pin: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Custodians' age identity files.
    pub identities: Vec<PathBuf>,
    /// Shares, each decrypted by its custodian with `age -d`.
    pub shares: Vec<PathBuf>,
    /// Add to a store that holds keys already.
    pub merge: bool,
    /// The daemon's user, when named.
    pub user: Option<String>,
    /// The bundle identity the backup must be made for: its recipient
    /// (`age1…`) or fingerprint, known from outside the backup.
    pub bundle: String,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// The keys added, versions, and the keys kept under `--merge`.
    pub restored: Restored,
    /// The check value of this host's root key, which seals them now.
    pub root_key_check: String,
    /// Whether the root key was created by this restore.
    pub root_key_origin: Origin,
    /// The fingerprint of the old host's bundle identity.
    pub bundle_fingerprint: String,
    /// The fingerprints of the custodians whose identities or shares took part.
    pub custodians: Vec<String>,
    /// The uid that owns what the restore wrote.
    pub owner: u32,
    /// Files of the backup that restore did not read.
    pub ignored: Vec<String>,
}

/// Why a restore imported nothing, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup could not be read.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// An identity or share file could not be read.
    #[error("cannot read {what} {}: {problem}", path.display())]
    CustodianFile {
        /// "identity file" or "share file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The bundle identity could not be put together, or the backup does
    /// not verify under it.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The backup's bundle identity is not the one the operator named.
    #[error(
        "the backup {backup} was made for bundle identity {found} (fingerprint), not {expected} as --bundle says: it is not the backup of the host you meant, or it was forged (anyone can make a backup whose custodian files your custodians open, so the bundle is checked against what you wrote down when it was escrowed). Restore changed nothing; find the backup of that bundle, or check the value given to --bundle"
    )]
    WrongBundle {
        /// The backup.
        backup: String,
        /// The fingerprint of the bundle it was made for.
        found: String,
        /// What --bundle named.
        expected: String,
    },
    /// The daemon's user could not be found or become.
    #[error("{0}; restore changed nothing")]
    User(String),
    /// The state directory is unusable or in use.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// This host's root key could not be created or unsealed.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The key store could not be opened.
    #[error(transparent)]
    KeyStore(#[from] StoreError),
    /// The store refused the import.
    #[error(transparent)]
    Refused(#[from] RestoreRefused),
}

/// Whether `pinned` (a recipient `age1…` or a fingerprint, as the
/// operator wrote it down) names the bundle whose fingerprint is `found`.
fn bundle_matches(pinned: &str, found: &str) -> bool {
    let pinned = pinned.trim();
    let pinned = if pinned.starts_with("age1") {
        crate::recovery::agefile::fingerprint(pinned)
    } else {
        pinned.to_ascii_lowercase()
    };
    !pinned.is_empty() && pinned == found.to_ascii_lowercase()
}

/// Runs the restore `options` asks for into the state dir of `config`.
pub fn run(config: &Config, options: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    let backup = Backup::read(&options.backup)?;
    let identities = read_all(&options.identities, "identity file")?;
    let shares = read_all(&options.shares, "share file")?;
    let opened = open::open(
        &backup,
        &inputs(&options.identities, &identities),
        &inputs(&options.shares, &shares),
    )?;
    drop((identities, shares));
    if !bundle_matches(&options.bundle, &opened.bundle_fingerprint) {
        return Err(RestoreError::WrongBundle {
            backup: options.backup.display().to_string(),
            found: opened.bundle_fingerprint.clone(),
            expected: options.bundle.trim().to_string(),
        });
    }
    let owner = DaemonUser::resolve(options.user.as_deref(), &config.state_dir)?;
    owner.become_owner(&config.state_dir)?;
    let state_dir = StateDir::open(&config.state_dir)?;
    // Held until the import is done: no daemon may serve (and write) this
    // store meanwhile, and none may start on a half-made root key.
    let _lock = StateDirLock::acquire(&state_dir)?;
    let tpm =
        Arc::new(TpmWorker::start(config.tpm.tcti.clone()).map_err(RootKeyError::TpmUnavailable)?);
    let result = import(
        &state_dir,
        &tpm,
        config,
        opened.keys,
        options.merge,
        options.pin.as_deref().map(Vec::as_slice),
    );
    tpm.shutdown(TPM_SHUTDOWN_WAIT);
    let (restored, root_key_check, root_key_origin) = result?;
    for key in &restored.added {
        if let Some(line) = was_pending_deletion(key) {
            tracing::warn!(
                key = %key.name,
                key_id = %key.id,
                "restored key {:?} (id {}) disabled: {line}",
                key.name,
                key.id
            );
        }
    }
    Ok(RestoreReport {
        restored,
        root_key_check,
        root_key_origin,
        bundle_fingerprint: opened.bundle_fingerprint,
        custodians: opened.custodians,
        owner: owner.uid,
        ignored: backup.ignored,
    })
}

/// Unseals (or creates) this host's root key, opens the store and imports
/// `keys` in one transaction.
fn import(
    state_dir: &StateDir,
    tpm: &Arc<TpmWorker>,
    config: &Config,
    keys: Vec<crate::keystore::KeyMaterial>,
    merge: bool,
    pin: Option<&[u8]>,
) -> Result<(Restored, String, Origin), RestoreError> {
    let (root_key, origin, _) = rootkey::open_offline(
        state_dir,
        tpm,
        config.tpm.start_timeout,
        &config.root_key,
        pin,
    )?;
    let check = root_key.check_value();
    let store = KeyStore::open(
        state_dir,
        &root_key,
        Arc::new(NoNewVersions),
        crate::clock::Clock::from_env(),
    )?;
    drop(root_key);
    // Bound to its TPM counter before the import, as the daemon binds a
    // store at start: a new store gets its counter now, so the import's
    // transaction records the digest of the keys it brings, and a store to
    // merge into must first pass the rollback check (keys are never merged
    // into a rolled-back store).
    let bound = store.bind_rollback(tpm, config.tpm.start_timeout, config.tpm.timeout)?;
    tracing::info!(?bound, "the key store is bound to its TPM rollback counter");
    let restored = store.restore(keys, merge);
    let pending = store.settle_rollback_counter(TPM_SHUTDOWN_WAIT);
    if pending > 0 {
        tracing::warn!(
            pending,
            "the TPM rollback counter has {pending} increments pending; the daemon's next start makes them"
        );
    }
    Ok((restored?, check, origin))
}

/// Reads each of `paths` whole, into memory that is wiped on drop.
fn read_all(
    paths: &[PathBuf],
    what: &'static str,
) -> Result<Vec<Zeroizing<Vec<u8>>>, RestoreError> {
    paths
        .iter()
        .map(|path| {
            let failed = |problem: String| RestoreError::CustodianFile {
                what,
                path: path.clone(),
                problem,
            };
            let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
            let mut bytes = Zeroizing::new(Vec::new());
            file.take(MAX_CUSTODIAN_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| failed(e.to_string()))?;
            if bytes.len() as u64 > MAX_CUSTODIAN_FILE {
                return Err(failed(format!(
                    "it is larger than {MAX_CUSTODIAN_FILE} bytes, which no age identity or share file is"
                )));
            }
            Ok(bytes)
        })
        .collect()
}

/// The user the daemon runs as, who must own everything the restore
/// writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonUser {
    /// Its uid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its name, when the user database knows it (for its groups).
    pub name: Option<String>,
}

impl DaemonUser {
    /// The user named `name`; else the owner of `state_dir`; else (no
    /// state dir yet) the user running the restore.
    pub fn resolve(name: Option<&str>, state_dir: &Path) -> Result<DaemonUser, RestoreError> {
        use nix::unistd::{Uid, User};
        if let Some(name) = name {
            return match User::from_name(name) {
                Ok(Some(user)) => Ok(DaemonUser {
                    uid: user.uid.as_raw(),
                    gid: user.gid.as_raw(),
                    name: Some(user.name),
                }),
                Ok(None) => Err(RestoreError::User(format!(
                    "--user {name:?}: no such user on this host; name the user hostkmsd runs as (the package's is hostkms)"
                ))),
                Err(e) => Err(RestoreError::User(format!(
                    "--user {name:?}: cannot look the user up: {e}"
                ))),
            };
        }
        let (uid, gid) = match std::fs::symlink_metadata(state_dir) {
            Ok(meta) => (meta.uid(), meta.gid()),
            Err(_) => (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        };
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        Ok(DaemonUser {
            uid,
            gid: user.as_ref().map_or(gid, |u| u.gid.as_raw()),
            name: user.map(|u| u.name),
        })
    }

    /// Makes this process the daemon's user, so that every file the
    /// restore writes is that user's: nothing to do when it runs as that
    /// user already; as root, creates a missing state dir for the user
    /// (mode 0700), then takes the user's groups (the package's daemon
    /// reaches /dev/tpmrm0 through group tss), gid and uid, for good.
    /// Must run before any other thread starts.
    pub fn become_owner(&self, state_dir: &Path) -> Result<(), RestoreError> {
        use nix::unistd::{Gid, Uid, geteuid, setgid, setgroups, setuid};
        let euid = geteuid().as_raw();
        if euid == self.uid {
            return Ok(());
        }
        if euid != 0 {
            return Err(RestoreError::User(format!(
                "the state dir {} belongs to uid {} (the daemon's user), but the restore runs as uid {euid}: run it as that user or as root",
                state_dir.display(),
                self.uid
            )));
        }
        if std::fs::symlink_metadata(state_dir).is_err() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(state_dir)
                .and_then(|()| std::os::unix::fs::chown(state_dir, Some(self.uid), Some(self.gid)))
                .map_err(|e| {
                    RestoreError::User(format!(
                        "cannot create the state dir {} for uid {}: {e}",
                        state_dir.display(),
                        self.uid
                    ))
                })?;
        }
        let groups = match &self.name {
            Some(name) => {
                let name = std::ffi::CString::new(name.as_str()).map_err(|_| {
                    RestoreError::User(format!("the user name {name:?} holds a NUL byte"))
                })?;
                nix::unistd::getgrouplist(&name, Gid::from_raw(self.gid)).map_err(|e| {
                    RestoreError::User(format!("cannot list the groups of uid {}: {e}", self.uid))
                })?
            }
            None => vec![Gid::from_raw(self.gid)],
        };
        let become_error = |what: &str, e: nix::Error| {
            RestoreError::User(format!("cannot take on {what} of uid {}: {e}", self.uid))
        };
        setgroups(&groups).map_err(|e| become_error("the groups", e))?;
        setgid(Gid::from_raw(self.gid)).map_err(|e| become_error("the group", e))?;
        setuid(Uid::from_raw(self.uid)).map_err(|e| become_error("the identity", e))?;
        Ok(())
    }
}

/// The key store's entropy source during a restore, which makes no new
/// key versions (imported KEKs come from the backup).
#[derive(Debug)]
struct NoNewVersions;

impl EntropySource for NoNewVersions {
    fn take(&self) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        Err(TpmError::BadAnswer {
            step: "randomness for a new key version",
            problem: "a request during a restore, which makes no new versions".to_string(),
        })
    }
}

/// What the operator reads after a restore: what was imported, what was
/// kept, under which root key, and what to do next.
pub fn summary(report: &RestoreReport, options: &RestoreOptions, config: &Config) -> String {
    let restored = &report.restored;
    let mut out = format!(
        "restored {} keys ({} versions, {} of them revoked) from {} into {}, sealed under this host's root key {} ({})",
        restored.added.len(),
        restored.versions,
        restored.revoked_versions,
        options.backup.display(),
        config.state_dir.display(),
        report.root_key_check,
        match report.root_key_origin {
            Origin::Created => "created and sealed to this TPM by the restore",
            Origin::Unsealed
            | Origin::RotationDiscarded
            | Origin::RotationCompleted
            | Origin::Migrated => {
                "unsealed from the state dir"
            }
        },
    );
    for key in &restored.added {
        out.push_str(&format!(
            "\n  restored {:?} (id {}, {})",
            key.name, key.id, key.key_type
        ));
        if let Some(line) = was_pending_deletion(key) {
            out.push_str(&format!(", disabled: {line}"));
        }
    }
    for key in &restored.kept {
        out.push_str(&format!(
            "\n  kept {:?} (id {}, {}) as the store had it: its id was there already",
            key.name, key.id, key.key_type
        ));
    }
    if !report.ignored.is_empty() {
        out.push_str(&format!(
            "\nnot read (not part of a recovery directory): {}",
            report.ignored.join(", ")
        ));
    }
    out.push_str(&format!(
        "\nthe files are owned by uid {} (the state dir's owner, or --user).",
        report.owner
    ));
    if report.owner == 0 && options.user.is_none() {
        if let Ok(Some(user)) = nix::unistd::User::from_name(PACKAGED_USER) {
            out.push_str(&format!(
                "\nnote: the files are root's, but the packaged hostkmsd runs as {PACKAGED_USER} (uid {}): run chown -R {PACKAGED_USER}: {} before starting it, or restore into an empty state dir with --user {PACKAGED_USER}",
                user.uid,
                config.state_dir.display()
            ));
        }
    }
    out.push_str(&format!(
        "\ncustodians {} put together bundle identity {}: it counts as exposed now and this host does not use it. Configure [recovery] in the config before starting hostkmsd: its first start escrows a bundle identity of its own and writes its recovery directory. Then retire the old host's backups (README: Backup and recovery).",
        report.custodians.join(", "),
        report.bundle_fingerprint,
    ));
    out
}

/// What the operator must hear of `key`, restored disabled because the
/// backup had it pending deletion: the date it was to be deleted on, and
/// how to schedule it again (the waiting period's daemon clock does not
/// travel, so the deletion itself is not restored).
pub fn was_pending_deletion(key: &crate::keystore::RestoredKey) -> Option<String> {
    key.was_pending_deletion.map(|due| {
        format!(
            "it was scheduled for deletion on {}; schedule it again if still wanted (hostkms schedule-deletion {})",
            agent_proto::date::rfc3339(due),
            key.name
        )
    })
}

/// The files read, named by their paths, for [`open::open`].
fn inputs<'a>(paths: &[PathBuf], files: &'a [Zeroizing<Vec<u8>>]) -> Vec<CustodianInput<'a>> {
    paths
        .iter()
        .zip(files)
        .map(|(path, bytes)| CustodianInput {
            name: path.display().to_string(),
            bytes: bytes.as_slice(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_key_that_was_pending_deletion_is_named_with_its_date_and_what_to_do() {
        let mut key = crate::keystore::RestoredKey {
            name: "orders".into(),
            id: crate::envelope::KeyId([1; 16]),
            key_type: agent_proto::KeyType::Aes256Gcm,
            was_pending_deletion: None,
        };
        assert_eq!(was_pending_deletion(&key), None);
        key.was_pending_deletion = Some(1_798_624_800);
        assert_eq!(
            was_pending_deletion(&key).unwrap(),
            "it was scheduled for deletion on 2026-12-30T10:00:00Z; schedule it again if still wanted (hostkms schedule-deletion orders)"
        );
    }

    #[test]
    fn the_named_bundle_matches_by_recipient_or_fingerprint_only() {
        let recipient = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq";
        let found = crate::recovery::agefile::fingerprint(recipient);
        assert!(bundle_matches(recipient, &found));
        assert!(bundle_matches(&format!(" {recipient}\n"), &found));
        assert!(bundle_matches(&found, &found));
        assert!(bundle_matches(&found.to_uppercase(), &found));
        assert!(!bundle_matches("", &found));
        assert!(!bundle_matches(&found[..15], &found));
        assert!(!bundle_matches("age1other", &found));
    }

    #[test]
    fn the_daemon_user_is_the_one_named_else_the_state_dirs_owner_else_the_caller() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("state");
        let me = DaemonUser::resolve(None, &missing).unwrap();
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());

        let owned = tmp.path().join("owned");
        std::fs::create_dir(&owned).unwrap();
        let owner = std::fs::metadata(&owned).unwrap().uid();
        assert_eq!(DaemonUser::resolve(None, &owned).unwrap().uid, owner);
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).unwrap();
            let nobody = DaemonUser::resolve(None, &owned).unwrap();
            assert_eq!(nobody.uid, 65534);
        }

        let root = DaemonUser::resolve(Some("root"), &owned).unwrap();
        assert_eq!((root.uid, root.name.as_deref()), (0, Some("root")));
        let err = DaemonUser::resolve(Some("no-such-user-hostkms"), &owned).unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
    }

    #[test]
    fn identity_and_share_files_are_read_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let small = tmp.path().join("small");
        std::fs::write(&small, b"AGE-SECRET-KEY-1...").unwrap();
        let large = tmp.path().join("large");
        std::fs::write(&large, vec![b'x'; MAX_CUSTODIAN_FILE as usize + 1]).unwrap();
        assert_eq!(
            read_all(std::slice::from_ref(&small), "identity file").unwrap()[0].as_slice(),
            b"AGE-SECRET-KEY-1..."
        );
        let err = read_all(&[small, large.clone()], "share file").unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let err = read_all(&[tmp.path().join("missing")], "identity file").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read identity file"),
            "{err}"
        );
    }
}
