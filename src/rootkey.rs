//! The root key: 256 bits sealed to the TPM in `root.pub`/`root.priv`,
//! unsealed once at start into locked memory, never on disk in clear.
//!
//! Start-up either creates and seals a new root key (empty state dir) or
//! unseals the existing one. Anything in between — a key store without its
//! root blobs, one blob without the other, blobs this TPM cannot load — stops
//! the daemon with an explanation; a new root key is never made over
//! existing state.

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use std::time::Duration;

use crate::locked::LockedBytes;
use crate::state_dir::{KEYSTORE_DB, ROOT_PRIV, ROOT_PUB, StateDir, StateDirError};
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
}

/// `advice` as a sentence after a message: ". advice", or nothing.
fn sentence(advice: &str) -> String {
    if advice.is_empty() {
        String::new()
    } else {
        format!(". {advice}")
    }
}

/// Creates and seals a root key in an empty state dir, or unseals the
/// existing one, through `tpm`, giving up after `timeout`.
pub fn load_or_create(
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
    let public = dir.read(ROOT_PUB, MAX_BLOB)?;
    let private = dir.read(ROOT_PRIV, MAX_BLOB)?;
    let blobs = SealedBlobs::parse(public, private).map_err(|source| {
        let name = match source.part() {
            BlobPart::Public => ROOT_PUB,
            BlobPart::Private => ROOT_PRIV,
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
            let public = dir.file(ROOT_PUB).display().to_string();
            let private = dir.file(ROOT_PRIV).display().to_string();
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
    let mut secret = Zeroizing::new([0u8; ROOT_KEY_LEN]);
    rand::rngs::SysRng
        .try_fill_bytes(secret.as_mut())
        .map_err(|e| RootKeyError::Random(e.to_string()))?;
    let os_random = Zeroizing::new(*secret);
    let (secret, blobs) = tpm
        .call("sealing a new root key", timeout, move |tcti| {
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
        })?;
    // The private part first: a crash between the two writes leaves
    // root.priv alone, which the next start explains instead of guessing.
    dir.write_private(ROOT_PRIV, blobs.private_bytes())?;
    dir.write_private(ROOT_PUB, blobs.public_bytes())?;
    RootKey::from_slice(secret.as_ref())
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

    #[test]
    fn different_root_keys_have_different_check_values() {
        let a = RootKey::from_bytes_for_tests([1; ROOT_KEY_LEN]);
        let b = RootKey::from_bytes_for_tests([2; ROOT_KEY_LEN]);
        assert_ne!(a.check_value(), b.check_value());
    }
}
