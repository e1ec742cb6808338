//! The root key: 256 bits sealed to the TPM in `root.pub`/`root.priv`,
//! unsealed once at start into locked memory, never on disk in clear.
//!
//! Start-up either creates and seals a new root key (empty state dir) or
//! unseals the existing one. Anything in between — a key store without its
//! root blobs, one blob without the other, blobs this TPM cannot load — stops
//! the daemon with an explanation; a new root key is never made over
//! existing state.
//!
//! Rotation (`hostkms rotate-root`) replaces the root key without a moment
//! in which a crash loses it:
//!
//! 1. [`seal_next`]: a new key (OS RNG XOR TPM RNG) is sealed and written
//!    durably as `root-next.priv`, then `root-next.pub`;
//! 2. the key store re-seals every KEK, secret and row MAC under it and
//!    records its check value, in one SQLite transaction (`keystore::reseal`);
//! 3. [`promote_next`]: `root-next.priv` is renamed over `root.priv`, then
//!    `root-next.pub` over `root.pub`, and the directory synced.
//!
//! The key store's recorded check value decides which key is in force. A
//! start ([`load_or_complete`]) that finds `root-next.*`
//! ([`rotation_interrupted`]) unseals the
//! candidate pairs and keeps the one the store matches: the old pair (the
//! transaction never committed: the next blobs are deleted) or the new one
//! (it committed: the renames are finished). `root-next.pub` alone means
//! `root.priv` is already the new one. A store that matches no candidate
//! stops the daemon and nothing is changed.

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use std::sync::Arc;
use std::time::Duration;

use crate::locked::LockedBytes;
use crate::state_dir::{
    KEYSTORE_DB, ROOT_NEXT_PRIV, ROOT_NEXT_PUB, ROOT_PRIV, ROOT_PUB, StateDir, StateDirError,
};
use crate::tpm::{BlobError, BlobPart, Cause, SealedBlobs, Tpm, TpmError, TpmWorker};

/// Length of the root key in bytes.
pub const ROOT_KEY_LEN: usize = 32;

/// A TPM2B blob is at most 2 + 65535 bytes.
const MAX_BLOB: u64 = 2 + u16::MAX as u64;

/// The unsealed root key, in locked memory that is wiped on drop. It has no
/// `Display`, and its `Debug` shows only the check value.
pub struct RootKey {
    bytes: LockedBytes<ROOT_KEY_LEN>,
}

impl RootKey {
    fn from_slice(secret: &[u8]) -> Result<RootKey, RootKeyError> {
        if secret.len() != ROOT_KEY_LEN {
            return Err(RootKeyError::WrongLength(secret.len()));
        }
        let mut bytes = LockedBytes::new();
        bytes.expose_mut().copy_from_slice(secret);
        Ok(RootKey { bytes })
    }

    /// A root key made of `bytes`, without a TPM: for tests of what lies
    /// above the root key (key store, service, server). Only in tests and
    /// with the `test-util` feature, which release builds never enable.
    #[cfg(any(test, feature = "test-util"))]
    pub fn from_bytes_for_tests(bytes: [u8; ROOT_KEY_LEN]) -> RootKey {
        let mut locked = LockedBytes::new();
        locked.expose_mut().copy_from_slice(&bytes);
        RootKey { bytes: locked }
    }

    /// A check value: the first 8 bytes of HMAC-SHA256(root key, "hostkms
    /// root key check v1"), in hex. It identifies the key without revealing
    /// it, so two runs (or a break-glass recovery) can be compared in logs.
    pub fn check_value(&self) -> String {
        check_value(self.bytes.expose())
    }

    /// The key itself, for deriving the keys that protect the key store.
    pub(crate) fn expose(&self) -> &[u8; ROOT_KEY_LEN] {
        self.bytes.expose()
    }

    /// Whether the key's page is locked in RAM (see [`LockedBytes`]).
    pub fn is_locked(&self) -> bool {
        self.bytes.is_locked()
    }
}

/// The check value of raw root-key bytes; see [`RootKey::check_value`].
pub fn check_value(key: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::from("(no check value)");
    };
    mac.update(b"hostkms root key check v1");
    mac.finalize().into_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey(<redacted>, check {})", self.check_value())
    }
}

/// How the root key came to be in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The state dir was empty: a new root key was made and sealed.
    Created,
    /// The existing sealed root key was unsealed.
    Unsealed,
    /// A root-key rotation had been interrupted before the key store
    /// committed to the new key: the old key is in force, and the next
    /// blobs were deleted.
    RotationDiscarded,
    /// A root-key rotation had been interrupted after the key store
    /// committed to the new key: the new key is in force, and its blobs
    /// were renamed into place.
    RotationCompleted,
}

/// Why the root key could not be created or unsealed, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// The state directory is unusable.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// A key store exists but the blobs that seal its root key do not.
    #[error(
        "{dir}/{KEYSTORE_DB} exists but {dir}/{ROOT_PUB} and {dir}/{ROOT_PRIV} are missing: the keys in the store are encrypted under the root key sealed in those files, so hostkms will not start (and will not make a new root key over them). Restore {ROOT_PUB} and {ROOT_PRIV} from the backup of this machine's state dir"
    )]
    StoreWithoutRootKey {
        /// The state directory.
        dir: String,
    },
    /// Only one of the two blobs is there.
    #[error(
        "{present} exists but {missing} does not; the root key needs both. Restore {missing} from backup. If this is a first start that was interrupted and no key store exists yet, remove {present} to create a new root key"
    )]
    HalfSealed {
        /// The blob that exists.
        present: String,
        /// The blob that is missing.
        missing: String,
    },
    /// A blob is not a valid TPM2B structure.
    #[error("{path}: {source}. Restore it from backup; hostkms changed nothing")]
    MalformedBlob {
        /// The file.
        path: String,
        /// What is wrong with it.
        source: BlobError,
    },
    /// The TPM could not be reached, or failed before the sealed blobs
    /// were given to it.
    #[error("{error}{advice}", error = .0, advice = sentence(.0.advice()))]
    TpmUnavailable(TpmError),
    /// The TPM is in dictionary-attack lockout and refuses authorizations.
    #[error(
        "cannot unseal the root key from {public} and {private}: {source}. The TPM counts failed authorizations and unclean shutdowns and is locked out for now; the blobs are not at fault and hostkms changed nothing. Wait for the TPM's lockout recovery time, or clear it with `tpm2_dictionarylockout --clear-lockout` (needs the lockout authorization), then start hostkmsd again"
    )]
    Lockout {
        /// The public blob.
        public: String,
        /// The private blob.
        private: String,
        /// The TPM's answer.
        source: TpmError,
    },
    /// The TPM failed while loading or unsealing the blobs, for a reason
    /// that does not point at the blobs (memory, busy, transport, ...).
    #[error(
        "cannot unseal the root key from {public} and {private}: {source}.{} hostkms changed nothing; start hostkmsd again once the TPM is sorted out",
        sentence(.source.advice())
    )]
    TpmFailed {
        /// The public blob.
        public: String,
        /// The private blob.
        private: String,
        /// The TPM's answer.
        source: TpmError,
    },
    /// The TPM refused to load or unseal the blobs themselves (integrity,
    /// binding, key, handle or policy failures).
    #[error(
        "cannot unseal the root key from {public} and {private}: {source}. The blobs were sealed by another TPM, this TPM was cleared, or the files were altered. hostkms changed nothing; run it on the machine whose TPM sealed them, or restore this machine's state dir from backup (README: break-glass recovery)"
    )]
    Unseal {
        /// The public blob.
        public: String,
        /// The private blob.
        private: String,
        /// The TPM's answer.
        source: TpmError,
    },
    /// Sealing a new root key failed.
    #[error("cannot seal a new root key: {error}{advice}", error = .0, advice = sentence(.0.advice()))]
    Seal(TpmError),
    /// The unsealed secret has the wrong length.
    #[error(
        "the unsealed root key is {0} bytes, not {ROOT_KEY_LEN}: these blobs are not a hostkms root key"
    )]
    WrongLength(usize),
    /// The operating system's RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// An interrupted rotation left next blobs, and the key store matches
    /// none of the root keys they and the current blobs seal.
    #[error(
        "{dir}: an interrupted root-key rotation left {left}, and the key store's recorded root key {store_check} is none of the sealed root keys found ({found}). hostkmsd changed nothing and will not guess: restore the state dir's root blobs and {KEYSTORE_DB} together from one backup"
    )]
    RotationUndecidable {
        /// The state directory.
        dir: String,
        /// The next blobs found.
        left: String,
        /// The check value the key store records ("(none)" without a store).
        store_check: String,
        /// Each candidate pair and what it unsealed to, or why it did not.
        found: String,
    },
    /// Next blobs of an earlier rotation remain: a rotation, or an offline
    /// command, waits until a start of the daemon has decided about them.
    #[error(
        "{dir} holds {left} from an earlier root-key rotation that did not finish; start hostkmsd once (it completes or discards that rotation at start, and logs which), then try again"
    )]
    RotationPending {
        /// The state directory.
        dir: String,
        /// The next blobs found.
        left: String,
    },
}

/// `advice` as a sentence after a message: ". advice", or nothing.
fn sentence(advice: &str) -> String {
    if advice.is_empty() {
        String::new()
    } else {
        format!(". {advice}")
    }
}

/// Whether `root-next.*` show a root-key rotation that was interrupted:
/// then [`load_or_complete`] needs the key store's recorded check value.
pub fn rotation_interrupted(dir: &StateDir) -> bool {
    dir.contains(ROOT_NEXT_PUB) || dir.contains(ROOT_NEXT_PRIV)
}

/// Creates and seals a root key in an empty state dir, or unseals the
/// existing one, through `tpm`, giving up after `timeout`. Next blobs of an
/// interrupted rotation ([`rotation_interrupted`]) are refused: only the
/// daemon's start ([`load_or_complete`]), which reads the key store, decides
/// about them.
pub fn load_or_create(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
) -> Result<(RootKey, Origin), RootKeyError> {
    if rotation_interrupted(dir) {
        return Err(RootKeyError::RotationPending {
            dir: dir.path().display().to_string(),
            left: next_blobs_left(dir),
        });
    }
    load_or_create_blobs(dir, tpm, timeout)
}

/// As [`load_or_create`], and when an interrupted rotation left next blobs
/// ([`rotation_interrupted`]), completes or discards it: `store_check`
/// (the check value the key store records; `None` when there is no store)
/// says which key is in force. What the daemon's start uses.
pub fn load_or_complete(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    store_check: Option<&str>,
) -> Result<(RootKey, Origin), RootKeyError> {
    if rotation_interrupted(dir) {
        return complete_rotation(dir, tpm, timeout, store_check);
    }
    load_or_create_blobs(dir, tpm, timeout)
}

/// The root blobs unsealed, or made in an empty state dir.
fn load_or_create_blobs(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
) -> Result<(RootKey, Origin), RootKeyError> {
    let shown = |name: &str| dir.file(name).display().to_string();
    match (dir.contains(ROOT_PUB), dir.contains(ROOT_PRIV)) {
        (true, true) => unseal(dir, tpm, timeout).map(|key| (key, Origin::Unsealed)),
        (false, false) if dir.contains(KEYSTORE_DB) => Err(RootKeyError::StoreWithoutRootKey {
            dir: dir.path().display().to_string(),
        }),
        (false, false) => create(dir, tpm, timeout).map(|key| (key, Origin::Created)),
        (true, false) => Err(RootKeyError::HalfSealed {
            present: shown(ROOT_PUB),
            missing: shown(ROOT_PRIV),
        }),
        (false, true) => Err(RootKeyError::HalfSealed {
            present: shown(ROOT_PRIV),
            missing: shown(ROOT_PUB),
        }),
    }
}

fn unseal(dir: &StateDir, tpm: &TpmWorker, timeout: Duration) -> Result<RootKey, RootKeyError> {
    unseal_pair(dir, tpm, timeout, ROOT_PUB, ROOT_PRIV)
}

/// Unseals the root key sealed in files `pub_name` and `priv_name`.
fn unseal_pair(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    pub_name: &str,
    priv_name: &str,
) -> Result<RootKey, RootKeyError> {
    let public = dir.read(pub_name, MAX_BLOB)?;
    let private = dir.read(priv_name, MAX_BLOB)?;
    let blobs = SealedBlobs::parse(public, private).map_err(|source| {
        let name = match source.part() {
            BlobPart::Public => pub_name,
            BlobPart::Private => priv_name,
        };
        RootKeyError::MalformedBlob {
            path: dir.file(name).display().to_string(),
            source,
        }
    })?;
    let secret = tpm
        .call("unsealing the root key", timeout, move |tcti| {
            Tpm::open(tcti)?.unseal(&blobs)
        })
        .map_err(|source| {
            let public = dir.file(pub_name).display().to_string();
            let private = dir.file(priv_name).display().to_string();
            match source.cause() {
                Cause::Lockout => RootKeyError::Lockout {
                    public,
                    private,
                    source,
                },
                Cause::BlobRejected => RootKeyError::Unseal {
                    public,
                    private,
                    source,
                },
                _ if matches!(source, TpmError::SealedObject { .. }) => RootKeyError::TpmFailed {
                    public,
                    private,
                    source,
                },
                _ => RootKeyError::TpmUnavailable(source),
            }
        })?;
    RootKey::from_slice(&secret)
}

fn create(dir: &StateDir, tpm: &TpmWorker, timeout: Duration) -> Result<RootKey, RootKeyError> {
    let (secret, blobs) = seal_new(tpm, timeout, "sealing a new root key")?;
    // The private part first: a crash between the two writes leaves
    // root.priv alone, which the next start explains instead of guessing.
    dir.write_private(ROOT_PRIV, blobs.private_bytes())?;
    dir.write_private(ROOT_PUB, blobs.public_bytes())?;
    RootKey::from_slice(secret.as_ref())
}

/// A new root key (OS RNG XOR TPM RNG) sealed to the TPM, with the proof
/// that its blobs unseal to it; nothing is written.
fn seal_new(
    tpm: &TpmWorker,
    timeout: Duration,
    what: &'static str,
) -> Result<(Zeroizing<[u8; ROOT_KEY_LEN]>, SealedBlobs), RootKeyError> {
    let mut secret = Zeroizing::new([0u8; ROOT_KEY_LEN]);
    rand::rngs::SysRng
        .try_fill_bytes(secret.as_mut())
        .map_err(|e| RootKeyError::Random(e.to_string()))?;
    let os_random = Zeroizing::new(*secret);
    tpm.call(what, timeout, move |tcti| {
        let mut tpm = Tpm::open(tcti)?;
        let mut secret = Zeroizing::new(*os_random);
        let tpm_random = tpm.random(ROOT_KEY_LEN)?;
        for (byte, mix) in secret.iter_mut().zip(tpm_random.iter()) {
            *byte ^= mix;
        }
        let blobs = tpm.seal(secret.as_ref())?;
        // Prove the blobs unseal to the same key before anything is written.
        let unsealed = tpm.unseal(&blobs)?;
        if unsealed.as_slice() != &secret[..] {
            return Err(TpmError::BadAnswer {
                step: "Unseal (check of the new root key)",
                problem: "a different secret than was sealed".to_string(),
            });
        }
        Ok((secret, blobs))
    })
    .map_err(|e| match e {
        TpmError::Open { .. }
        | TpmError::Timeout { .. }
        | TpmError::Slow { .. }
        | TpmError::Stuck { .. } => RootKeyError::TpmUnavailable(e),
        e => RootKeyError::Seal(e),
    })
}

/// The next blobs present, for messages: "root-next.priv and root-next.pub".
fn next_blobs_left(dir: &StateDir) -> String {
    let left: Vec<&str> = [ROOT_NEXT_PRIV, ROOT_NEXT_PUB]
        .into_iter()
        .filter(|name| dir.contains(name))
        .collect();
    left.join(" and ")
}

/// Step 1 of a rotation: seals a new root key to the TPM (giving up after
/// `timeout`) and writes it durably as `root-next.priv`, then
/// `root-next.pub`. Refuses while next blobs of an earlier rotation remain,
/// which only a start may decide about.
pub fn seal_next(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
) -> Result<RootKey, RootKeyError> {
    if rotation_interrupted(dir) {
        return Err(RootKeyError::RotationPending {
            dir: dir.path().display().to_string(),
            left: next_blobs_left(dir),
        });
    }
    let (secret, blobs) = seal_new(tpm, timeout, "sealing the next root key")?;
    let written = dir
        .write_private(ROOT_NEXT_PRIV, blobs.private_bytes())
        .and_then(|()| dir.write_private(ROOT_NEXT_PUB, blobs.public_bytes()));
    if let Err(e) = written {
        // Nothing refers to them yet; a failed removal is decided at start.
        let _ = discard_next(dir);
        return Err(e.into());
    }
    RootKey::from_slice(secret.as_ref())
}

/// Step 3 of a rotation, once the key store is committed to the next key:
/// renames `root-next.priv` over `root.priv`, then `root-next.pub` over
/// `root.pub`, each durably. A start after a crash in between finishes it.
pub fn promote_next(dir: &StateDir) -> Result<(), RootKeyError> {
    // The store's commit is the deletion of its journal in this directory,
    // which SQLite does not sync (synchronous=FULL): made durable here,
    // before the old blobs go, so a power cut cannot bring back an old
    // store beside the new key alone.
    dir.sync()?;
    if dir.contains(ROOT_NEXT_PRIV) {
        dir.replace(ROOT_NEXT_PRIV, ROOT_PRIV)?;
    }
    dir.replace(ROOT_NEXT_PUB, ROOT_PUB)?;
    Ok(())
}

/// Undoes step 1 of a rotation the key store never committed to: deletes
/// the next blobs (the public one first, so a crash in between leaves
/// `root-next.priv` alone, which a start deletes as well).
pub fn discard_next(dir: &StateDir) -> Result<(), RootKeyError> {
    dir.remove(ROOT_NEXT_PUB)?;
    dir.remove(ROOT_NEXT_PRIV)?;
    Ok(())
}

/// What to do once a candidate pair matches the key store.
#[derive(Debug, Clone, Copy)]
enum Resolution {
    /// The current pair is in force: delete the next blobs.
    Discard,
    /// The next pair is in force: finish the renames.
    Promote,
}

/// Start-up after an interrupted rotation: the candidate pairs, in order,
/// are unsealed and the one whose check value the key store records is
/// kept; see the module's documentation.
fn complete_rotation(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    store_check: Option<&str>,
) -> Result<(RootKey, Origin), RootKeyError> {
    let left = next_blobs_left(dir);
    let undecidable = |found: String| RootKeyError::RotationUndecidable {
        dir: dir.path().display().to_string(),
        left: left.clone(),
        store_check: store_check
            .unwrap_or("(none: there is no key store)")
            .to_string(),
        found,
    };
    let candidates: &[(&str, &str, Resolution)] =
        match (dir.contains(ROOT_NEXT_PUB), dir.contains(ROOT_NEXT_PRIV)) {
            // Crashed after the new key was written: the store says which.
            (true, true) => &[
                (ROOT_PUB, ROOT_PRIV, Resolution::Discard),
                (ROOT_NEXT_PUB, ROOT_NEXT_PRIV, Resolution::Promote),
            ],
            // Crashed between the two renames (root.priv is the new key's),
            // or a discard between its two removals (root.* is the old key).
            (true, false) => &[
                (ROOT_NEXT_PUB, ROOT_PRIV, Resolution::Promote),
                (ROOT_PUB, ROOT_PRIV, Resolution::Discard),
            ],
            // Crashed while writing the new key: never committed.
            (false, true) => &[(ROOT_PUB, ROOT_PRIV, Resolution::Discard)],
            (false, false) => return unseal(dir, tpm, timeout).map(|key| (key, Origin::Unsealed)),
        };
    let Some(store_check) = store_check else {
        return Err(undecidable("none was unsealed".to_string()));
    };
    let mut found = Vec::new();
    for &(pub_name, priv_name, resolution) in candidates {
        let pair = format!("{pub_name} + {priv_name}");
        if !dir.contains(pub_name) || !dir.contains(priv_name) {
            found.push(format!("{pair}: missing"));
            continue;
        }
        let key = match unseal_pair(dir, tpm, timeout, pub_name, priv_name) {
            Ok(key) => key,
            // Blobs that are not a pair, or not this TPM's: not this candidate.
            Err(
                e @ (RootKeyError::Unseal { .. }
                | RootKeyError::MalformedBlob { .. }
                | RootKeyError::WrongLength(_)),
            ) => {
                tracing::info!(candidate = %pair, error = %e, "interrupted root-key rotation: a candidate root key does not unseal");
                found.push(format!("{pair}: does not unseal"));
                continue;
            }
            // The TPM failing decides nothing: stop, change nothing.
            Err(e) => return Err(e),
        };
        let check = key.check_value();
        if check != store_check {
            found.push(format!("{pair}: root key {check}"));
            continue;
        }
        let origin = match resolution {
            Resolution::Discard => {
                tracing::warn!(
                    root_key_check = %check,
                    left = %left,
                    "a root-key rotation was interrupted before the key store committed to the new key; the old root key stays in force and the new key's blobs are deleted"
                );
                discard_next(dir)?;
                Origin::RotationDiscarded
            }
            Resolution::Promote => {
                tracing::warn!(
                    root_key_check = %check,
                    left = %left,
                    "a root-key rotation was interrupted after the key store committed to the new key; the new root key is in force and its blobs are renamed into place"
                );
                promote_next(dir)?;
                Origin::RotationCompleted
            }
        };
        return Ok((key, origin));
    }
    Err(undecidable(found.join("; ")))
}

/// Rotation of the root key for the key store, which knows no TPM and no
/// files: the daemon's [`TpmRootSealer`], or a test double.
pub trait RootSealer: Send + Sync + std::fmt::Debug {
    /// Step 1: seals a new root key and writes it durably as the next
    /// blobs ([`seal_next`]). Called without any key-store lock held.
    fn seal_next(&self) -> Result<RootKey, RootKeyError>;
    /// Step 3: puts the next blobs in place ([`promote_next`]).
    fn promote_next(&self) -> Result<(), RootKeyError>;
    /// Undoes step 1 after the key store refused the key ([`discard_next`]).
    fn discard_next(&self) -> Result<(), RootKeyError>;
}

/// The daemon's [`RootSealer`]: the state dir's next blobs, sealed through
/// the TPM worker with the TPM request deadline.
#[derive(Debug)]
pub struct TpmRootSealer {
    dir: StateDir,
    tpm: Arc<TpmWorker>,
    timeout: Duration,
}

impl TpmRootSealer {
    /// Seals into `dir` through `tpm`, giving up after `timeout`.
    pub fn new(dir: StateDir, tpm: Arc<TpmWorker>, timeout: Duration) -> TpmRootSealer {
        TpmRootSealer { dir, tpm, timeout }
    }
}

impl RootSealer for TpmRootSealer {
    fn seal_next(&self) -> Result<RootKey, RootKeyError> {
        seal_next(&self.dir, &self.tpm, self.timeout)
    }

    fn promote_next(&self) -> Result<(), RootKeyError> {
        promote_next(&self.dir)
    }

    fn discard_next(&self) -> Result<(), RootKeyError> {
        discard_next(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_key_from_bytes_shows_only_its_check_value() {
        let key = RootKey::from_bytes_for_tests([0xab; ROOT_KEY_LEN]);
        assert_eq!(key.expose(), &[0xab; ROOT_KEY_LEN]);
        assert_eq!(key.check_value(), check_value(&[0xab; ROOT_KEY_LEN]));
        assert_eq!(key.check_value().len(), 16);
        let shown = format!("{key:?}");
        assert_eq!(
            shown,
            format!("RootKey(<redacted>, check {})", key.check_value())
        );
    }

    /// A worker on a TPM that is not there: any TPM call fails, so a test
    /// that passes proves nothing was asked of the TPM.
    fn absent_tpm() -> TpmWorker {
        let tcti = "swtpm:host=127.0.0.1,port=9".parse().unwrap();
        TpmWorker::start(tcti).unwrap()
    }

    #[test]
    fn offline_commands_refuse_next_blobs_and_leave_them_for_the_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        for name in [ROOT_PUB, ROOT_PRIV, KEYSTORE_DB, ROOT_NEXT_PRIV] {
            dir.write_private(name, b"x").unwrap();
        }
        let tpm = absent_tpm();
        let error = load_or_create(&dir, &tpm, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(error, RootKeyError::RotationPending { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("start hostkmsd once"), "{error}");
        assert!(dir.contains(ROOT_NEXT_PRIV), "left for the daemon");
        // A new rotation waits for that start too, before any TPM work.
        let error = seal_next(&dir, &tpm, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(error, RootKeyError::RotationPending { .. }),
            "{error}"
        );
        tpm.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn without_a_store_an_interrupted_rotation_is_not_guessed_at() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        for name in [ROOT_PUB, ROOT_PRIV, ROOT_NEXT_PUB, ROOT_NEXT_PRIV] {
            dir.write_private(name, b"x").unwrap();
        }
        let tpm = absent_tpm();
        let error = load_or_complete(&dir, &tpm, Duration::from_secs(1), None).unwrap_err();
        let shown = error.to_string();
        assert!(
            matches!(error, RootKeyError::RotationUndecidable { .. }),
            "{shown}"
        );
        assert!(shown.contains("there is no key store"), "{shown}");
        assert!(shown.contains("changed nothing"), "{shown}");
        for name in [ROOT_PUB, ROOT_PRIV, ROOT_NEXT_PUB, ROOT_NEXT_PRIV] {
            assert!(dir.contains(name), "{name} kept");
        }
        tpm.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn different_root_keys_have_different_check_values() {
        let a = RootKey::from_bytes_for_tests([1; ROOT_KEY_LEN]);
        let b = RootKey::from_bytes_for_tests([2; ROOT_KEY_LEN]);
        assert_ne!(a.check_value(), b.check_value());
    }
}
