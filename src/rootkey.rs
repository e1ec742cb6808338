//! The root key: 256 bits sealed to the TPM, unsealed at start (or at
//! `hostkms unlock`) into locked memory, never on disk in clear.
//!
//! It is sealed in one or two copies, as the `[root_key]` mode asks when
//! it is created (or `hostkms reseal` changes it): an auto copy, plain or
//! bound to PCR values, that unseals at start without a person, and a PIN
//! copy whose authValue is the PIN. `root.seal` ([`record`]) names the
//! generation of files in force and is the commit point of every change
//! ([`reseal`], a rotation, the migration of the layout before 0.14).
//! A daemon that cannot unseal an auto copy starts locked ([`LockReason`]).
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
//! 1. [`seal_next`]: a new key (OS RNG XOR TPM RNG) is sealed in the
//!    copies the mode in force asks for, as the next generation, and
//!    `root-next.seal` names them;
//! 2. the key store re-seals every KEK, secret and row MAC under it and
//!    records its check value, in one SQLite transaction (`keystore::reseal`);
//! 3. [`promote_next`]: `root-next.seal` is renamed over `root.seal`.
//!
//! The key store's recorded check value decides which key is in force. A
//! start that finds `root-next.seal` ([`rotation_interrupted`]) unseals
//! both records' keys and keeps the one the store matches. A store that
//! matches neither stops the daemon and nothing is changed. The layout
//! before 0.14 (`root.pub`/`root.priv`, `root-next.*`) is resolved the
//! same way by its own rules, then migrated.

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
use crate::tpm::{BlobError, StoragePrimary, Template, Tpm, TpmError, TpmWorker};

mod copies;
pub mod record;

use copies::AutoUnseal;
pub use record::{NEXT_RECORD, RECORD, RecordError, SealRecord, SealingMode};

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
    /// The blobs of a version before 0.14 were unsealed under the old
    /// (not noDA) primary and sealed again under the noDA one, in the same
    /// mode (no PCRs, no PIN).
    Migrated,
}

/// A PCR whose value changed since the auto copy was sealed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrChange {
    /// The PCR index.
    pub pcr: u8,
    /// Its sha256 value at sealing.
    pub sealed: [u8; 32],
    /// Its sha256 value now.
    pub current: [u8; 32],
}

impl PcrChange {
    /// "PCR 7 (was 3d45…, now 9f01…)", full values: what an operator
    /// compares with the update's expected measurements.
    pub fn describe(&self) -> String {
        format!(
            "PCR {} (sealed {}, now {})",
            self.pcr,
            record::hex(&self.sealed),
            record::hex(&self.current)
        )
    }
}

/// Why the root key is not in memory although nothing failed: the daemon
/// serves `Ping` and `Status` and waits for `hostkms unlock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockReason {
    /// `pin = true` and no root key yet: the first unlock sets the PIN and
    /// creates it.
    NoRootKeyYet,
    /// PIN-only mode: every start needs the PIN.
    PinRequired,
    /// The PCRs the auto copy is bound to changed; the PIN copy opens it.
    PcrMismatch(Vec<PcrChange>),
}

impl LockReason {
    /// The reason in a few words, for `systemctl status`.
    pub fn short(&self) -> String {
        match self {
            LockReason::NoRootKeyYet => {
                "no root key yet; the first unlock sets the PIN".to_string()
            }
            LockReason::PinRequired => "PIN required".to_string(),
            LockReason::PcrMismatch(changes) => format!(
                "PCR {} changed since sealing",
                changes
                    .iter()
                    .map(|change| change.pcr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The reason in words, with what to do.
    pub fn describe(&self) -> String {
        match self {
            LockReason::NoRootKeyYet => {
                "no root key yet: the first `hostkms unlock` sets the PIN and creates it"
                    .to_string()
            }
            LockReason::PinRequired => {
                "the root key is sealed to a PIN: run `hostkms unlock`".to_string()
            }
            LockReason::PcrMismatch(changes) => format!(
                "the boot state changed since the root key was sealed: {}. If this is an update you expect, run `hostkms unlock --reseal`; otherwise investigate the boot chain (`hostkms unlock` alone unlocks for this boot only)",
                changes
                    .iter()
                    .map(PcrChange::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

/// What [`open`] found.
#[derive(Debug)]
pub enum Opened {
    /// The root key, how it came to be, and the record in force.
    Unsealed {
        /// The key.
        key: RootKey,
        /// How it came to be in memory.
        origin: Origin,
        /// The sealing record in force.
        record: SealRecord,
    },
    /// No copy opens without a person: the daemon starts locked.
    Locked(LockReason),
}

/// Why the root key could not be created or unsealed, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// The state directory is unusable.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// A key store exists but the blobs that seal its root key do not.
    #[error(
        "{dir}/{KEYSTORE_DB} exists but {dir}/{RECORD} (or, before 0.14, {ROOT_PUB} and {ROOT_PRIV}) is missing: the keys in the store are encrypted under the root key sealed in the files it names, so hostkms will not start (and will not make a new root key over them). Restore {RECORD} and the root-*.pub/.priv files it names from the backup of this machine's state dir"
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
    /// The sealing record cannot be used.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `root.seal` says another PCR binding than the auto copy has.
    #[error(
        "{record} does not match the sealed copy {copy}: the PCR values it records are not those the copy is bound to. The record was altered (it has no integrity protection of its own), and nothing was sealed to what it says. Restore it from the backup of this state dir, or run `hostkms reseal`, which seals to the PCR values of now after you have checked them"
    )]
    RecordMismatch {
        /// The record.
        record: String,
        /// The auto copy's public blob.
        copy: String,
    },
    /// PCR-only mode, and the PCRs changed: nothing can open the root key
    /// until the boot state is back.
    #[error(
        "cannot unseal the root key: it is bound to the boot state (PCRs {pcrs:?}) and no PIN copy exists, and the boot state changed since it was sealed: {changes}. The blobs are intact and hostkms changed nothing. Boot the boot chain it was sealed under, and before the next update give the root key a PIN copy (`[root_key] pin = true`, `hostkms reseal`), so that an update only locks the daemon until `hostkms unlock --reseal`; or recover the keys from the custodians (README: Backup and recovery)",
        changes = changed.iter().map(PcrChange::describe).collect::<Vec<_>>().join("; ")
    )]
    PcrMismatch {
        /// The PCRs bound.
        pcrs: Vec<u8>,
        /// Those that changed.
        changed: Vec<PcrChange>,
    },
    /// The TPM refused the PIN.
    #[error(
        "the TPM refused the PIN: {tries_left} {tries} left before the TPM locks PIN tries out (it forgets one failure every {interval_secs} s). Nothing else changed; try again with the right PIN",
        tries = if *tries_left == 1 { "try" } else { "tries" }
    )]
    WrongPin {
        /// Tries left before lockout.
        tries_left: u32,
        /// Seconds after which the TPM forgets one failure.
        interval_secs: u32,
    },
    /// The TPM is in dictionary-attack lockout for the PIN copy.
    #[error(
        "the TPM is in dictionary-attack lockout after too many wrong PINs and refuses PIN tries for now: wait at most {interval_secs} s (the TPM forgets one failure per interval; it does not say how much of it is left), or clear the lockout with `tpm2_dictionarylockout --clear-lockout` (needs the lockout authorization). The PCR-bound copy, if any, is not affected"
    )]
    PinLockout {
        /// Seconds after which the TPM forgets one failure.
        interval_secs: u32,
    },
    /// The mode has a PIN and none was given.
    #[error("the root key is sealed to a PIN; give the PIN (`--pin-file FILE`, or type it)")]
    PinNeeded,
    /// A PIN was given, but the mode has no PIN copy.
    #[error(
        "no PIN is set for the root key (its sealing mode has none); leave the PIN out, or set one with `[root_key] pin = true` and `hostkms reseal`"
    )]
    NoPinSet,
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

/// Whether a root-key rotation was interrupted (`root-next.seal`, or the
/// `root-next.*` blobs of the layout before 0.14): then [`open`] needs the
/// key store's recorded check value.
pub fn rotation_interrupted(dir: &StateDir) -> bool {
    dir.contains(NEXT_RECORD) || dir.contains(ROOT_NEXT_PUB) || dir.contains(ROOT_NEXT_PRIV)
}

/// Whether the state dir holds the layout before 0.14 (no `root.seal`).
fn legacy_layout(dir: &StateDir) -> bool {
    !dir.contains(RECORD)
        && [ROOT_PUB, ROOT_PRIV, ROOT_NEXT_PUB, ROOT_NEXT_PRIV]
            .iter()
            .any(|name| dir.contains(name))
}

/// Opens the root key: unseals it, creates it in an empty state dir (in
/// mode `new_mode`), migrates the layout before 0.14, and completes or
/// discards an interrupted rotation (`store_check`: the check value the
/// key store records, `None` without a store). With `pin` `None` (a start)
/// only an auto copy is tried, and a mode that needs a person answers
/// [`Opened::Locked`]; with a PIN (an operator) the PIN copy is used, or
/// a first PIN is set.
pub fn open(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    new_mode: &SealingMode,
    store_check: Option<&str>,
    pin: Option<&[u8]>,
) -> Result<Opened, RootKeyError> {
    if legacy_layout(dir) {
        return migrate(dir, tpm, timeout, store_check);
    }
    let Some(record) = SealRecord::read(dir, RECORD)? else {
        if dir.contains(KEYSTORE_DB) {
            return Err(RootKeyError::StoreWithoutRootKey {
                dir: dir.path().display().to_string(),
            });
        }
        if new_mode.pin && pin.is_none() {
            return Ok(Opened::Locked(LockReason::NoRootKeyYet));
        }
        let key = fresh_key(tpm, timeout, "making a new root key")?;
        let record = copies::seal_copies(dir, tpm, timeout, &key, 1, new_mode, None, pin)?;
        record.write(dir, RECORD)?;
        return Ok(Opened::Unsealed {
            key,
            origin: Origin::Created,
            record,
        });
    };
    if let Some(next) = SealRecord::read(dir, NEXT_RECORD)? {
        if next.generation <= record.generation {
            // hostkms stages a rotation in the next generation; one that
            // names the generation in force would have its resolution
            // delete the copies it keeps.
            return Err(RecordError::Invalid {
                path: dir.file(NEXT_RECORD).display().to_string(),
                problem: format!(
                    "it names generation {}, not one after the {} in force: hostkms did not write it",
                    next.generation, record.generation
                ),
            }
            .into());
        }
        return complete_rotation_v2(dir, tpm, timeout, record, next, store_check, pin);
    }
    let unsealed = unseal_record(dir, tpm, timeout, &record, pin)?;
    if unsealed.is_ok() {
        remove_migrated_blobs(dir);
    }
    // Only once the record's own copies are there (they opened, or wait
    // for a person): a record naming missing copies must not cost the
    // copies that do exist, which may be the only ones left.
    if record.files().iter().all(|name| dir.contains(name)) {
        copies::remove_strays(dir, &record);
    }
    Ok(match unsealed {
        Ok(key) => Opened::Unsealed {
            key,
            origin: Origin::Unsealed,
            record,
        },
        Err(reason) => Opened::Locked(reason),
    })
}

/// As [`open`] for an offline command (`restore`, `accept-rollback`,
/// `rotate-bundle`): an interrupted rotation is left for the daemon, and a
/// locked outcome is an error that says to give the PIN.
pub fn open_offline(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    new_mode: &SealingMode,
    pin: Option<&[u8]>,
) -> Result<(RootKey, Origin, SealRecord), RootKeyError> {
    if rotation_interrupted(dir) {
        return Err(RootKeyError::RotationPending {
            dir: dir.path().display().to_string(),
            left: next_blobs_left(dir),
        });
    }
    if pin.is_some() {
        let has_pin = match SealRecord::read(dir, RECORD)? {
            Some(record) => record.mode.pin,
            None => new_mode.pin && !legacy_layout(dir),
        };
        if !has_pin {
            return Err(RootKeyError::NoPinSet);
        }
    }
    // The auto copy first: the PIN is spent (a try, if it is wrong) only
    // where no copy opens without it. An empty state dir is made with it.
    let opened = match open(dir, tpm, timeout, new_mode, None, None)? {
        Opened::Locked(_) if pin.is_some() => open(dir, tpm, timeout, new_mode, None, pin)?,
        opened => opened,
    };
    match opened {
        Opened::Unsealed {
            key,
            origin,
            record,
        } => Ok((key, origin, record)),
        Opened::Locked(_) => Err(RootKeyError::PinNeeded),
    }
}

/// Unseals the key of `record`, the sealing in force, for an operator's
/// change to it (a reseal, a PIN change): the PIN copy with `pin`, else
/// the auto copy. None of a start's work (a migration, an interrupted
/// rotation, stray copies) is done here.
pub fn unseal_in_force(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    record: &SealRecord,
    pin: Option<&[u8]>,
) -> Result<RootKey, RootKeyError> {
    unseal_record(dir, tpm, timeout, record, pin)?.map_err(|_| RootKeyError::PinNeeded)
}

/// Unseals `record`'s key: the PIN copy with `pin`, else the auto copy.
/// `Ok(Err(reason))`: nothing failed, but a person must unlock.
fn unseal_record(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    record: &SealRecord,
    pin: Option<&[u8]>,
) -> Result<Result<RootKey, LockReason>, RootKeyError> {
    if let Some(pin) = pin {
        return copies::unseal_pin(dir, tpm, timeout, record, pin).map(Ok);
    }
    if !record.mode.has_auto_copy() {
        return Ok(Err(LockReason::PinRequired));
    }
    match copies::unseal_auto(dir, tpm, timeout, record)? {
        AutoUnseal::Key(key) => Ok(Ok(key)),
        AutoUnseal::PcrsChanged(changed) if record.mode.pin => {
            Ok(Err(LockReason::PcrMismatch(changed)))
        }
        AutoUnseal::PcrsChanged(changed) => Err(RootKeyError::PcrMismatch {
            pcrs: record.mode.pcrs.clone(),
            changed,
        }),
    }
}

/// The current PCR values `record`'s auto copy is bound to, compared with
/// the recorded ones: the PCRs that changed (empty: none, or no PCRs).
pub fn pcr_changes(
    tpm: &TpmWorker,
    timeout: Duration,
    record: &SealRecord,
) -> Result<Vec<PcrChange>, RootKeyError> {
    let current = read_pcrs(tpm, timeout, &record.mode.pcrs)?;
    Ok(copies::changes(&record.pcr_values, &current))
}

/// The current sha256 values of `pcrs`.
pub fn read_pcrs(
    tpm: &TpmWorker,
    timeout: Duration,
    pcrs: &[u8],
) -> Result<Vec<crate::tpm::PcrValue>, RootKeyError> {
    let pcrs = pcrs.to_vec();
    tpm.call("reading PCRs", timeout, move |tcti| {
        Tpm::open(tcti)?.read_pcrs(&pcrs)
    })
    .map_err(RootKeyError::TpmUnavailable)
}

/// Which PCR values a reseal binds the auto copy to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrSource {
    /// The values the PCRs hold now: the operator trusts this boot state.
    Current,
    /// The values recorded at the last sealing, when the PCRs are the
    /// same (a PIN change trusts nothing new).
    Recorded,
}

/// What a reseal seals to: the mode, the PIN of a PIN copy, and which PCR
/// values. Its `Debug` never shows the PIN.
#[derive(Clone, Copy)]
pub struct ResealTo<'a> {
    /// The mode.
    pub mode: &'a SealingMode,
    /// The PIN of the new PIN copy (a mode with a PIN).
    pub pin: Option<&'a [u8]>,
    /// Which PCR values the auto copy is bound to.
    pub pcrs: PcrSource,
}

impl std::fmt::Debug for ResealTo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResealTo")
            .field("mode", self.mode)
            .field("pin", &self.pin.map(|_| "<redacted>"))
            .field("pcrs", &self.pcrs)
            .finish()
    }
}

/// Seals `key` again as `to` says, as the next generation, then commits
/// by replacing `root.seal` and removes the old generation's files. A
/// crash at any moment leaves the old record or the new one, each with all
/// its files.
pub fn reseal(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    key: &RootKey,
    current: &SealRecord,
    to: ResealTo<'_>,
) -> Result<SealRecord, RootKeyError> {
    let ResealTo {
        mode: target,
        pin,
        pcrs,
    } = to;
    if rotation_interrupted(dir) {
        return Err(RootKeyError::RotationPending {
            dir: dir.path().display().to_string(),
            left: next_blobs_left(dir),
        });
    }
    let values = (pcrs == PcrSource::Recorded && target.pcrs == current.mode.pcrs)
        .then(|| current.pcr_values.clone());
    if values.is_some() {
        copies::check_record(dir, tpm, timeout, current)?;
    }
    let generation = current.generation + 1;
    let record = copies::seal_copies(dir, tpm, timeout, key, generation, target, values, pin)?;
    record.write(dir, RECORD)?;
    copies::remove_files(dir, current);
    Ok(record)
}

/// The layout before 0.14: its own start rules (an interrupted rotation
/// included) under the old primary, then the key sealed again under the
/// noDA primary in the same mode, committed by writing `root.seal`, and
/// the old blobs removed.
fn migrate(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    store_check: Option<&str>,
) -> Result<Opened, RootKeyError> {
    let (key, legacy_origin) = if rotation_interrupted(dir) {
        complete_rotation(dir, tpm, timeout, store_check)?
    } else {
        load_or_create_blobs(dir, tpm, timeout)?
    };
    let record = copies::seal_copies(
        dir,
        tpm,
        timeout,
        &key,
        1,
        &SealingMode::default(),
        None,
        None,
    )?;
    record.write(dir, RECORD)?;
    for name in [ROOT_NEXT_PUB, ROOT_NEXT_PRIV, ROOT_PUB, ROOT_PRIV] {
        if let Err(e) = dir.remove(name) {
            tracing::warn!(file = %dir.file(name).display(), "could not remove a migrated root-key blob: {e}");
        }
    }
    tracing::warn!(
        root_key_check = %key.check_value(),
        before = ?legacy_origin,
        files = ?record.files(),
        "migrated the sealed root key to the noDA storage primary: unsealed root.pub/root.priv under the old primary, sealed it again (no PCRs, no PIN, as before) in the files root.seal names, and removed the old blobs. Change the mode with `hostkms reseal`; the break-glass recipe changed (README)"
    );
    Ok(Opened::Unsealed {
        key,
        origin: Origin::Migrated,
        record,
    })
}

/// Removes the blobs of the layout before 0.14 that a migration
/// interrupted after its commit (`root.seal` written) left: they are
/// superseded, and `root-next.*` would hold every later rotation, reseal
/// and offline task back as an "interrupted rotation" no start resolves.
/// Called once the record's copy opened, so they are never the last copy.
fn remove_migrated_blobs(dir: &StateDir) {
    for name in [ROOT_NEXT_PUB, ROOT_NEXT_PRIV, ROOT_PUB, ROOT_PRIV] {
        if !dir.contains(name) {
            continue;
        }
        match dir.remove(name) {
            Ok(()) => tracing::warn!(
                file = %dir.file(name).display(),
                "removed a root-key blob of the layout before 0.14 that an interrupted migration left beside {RECORD}"
            ),
            Err(e) => tracing::warn!(
                file = %dir.file(name).display(),
                "could not remove a root-key blob of the layout before 0.14 left by an interrupted migration: {e}"
            ),
        }
    }
}

/// The legacy root blobs unsealed (under the old primary).
fn load_or_create_blobs(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
) -> Result<(RootKey, Origin), RootKeyError> {
    let shown = |name: &str| dir.file(name).display().to_string();
    match (dir.contains(ROOT_PUB), dir.contains(ROOT_PRIV)) {
        (true, true) => unseal(dir, tpm, timeout).map(|key| (key, Origin::Unsealed)),
        (false, false) => Err(RootKeyError::StoreWithoutRootKey {
            dir: dir.path().display().to_string(),
        }),
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
    let files = record::CopyFiles {
        public: pub_name.to_string(),
        private: priv_name.to_string(),
    };
    let blobs = copies::read_copy(dir, &files)?;
    let secret = tpm
        .call("unsealing the root key", timeout, move |tcti| {
            // Under the SRK if the TPM had one when they were sealed, else
            // the transient template; an SRK provisioned since is passed by.
            let preferred = StoragePrimary::Preferred(Template::Legacy);
            match Tpm::open_under(tcti, preferred)?.unseal(&blobs) {
                Err(e) if e.cause() == crate::tpm::Cause::BlobRejected => {
                    let transient = StoragePrimary::Transient(Template::Legacy);
                    Tpm::open_under(tcti, transient)?
                        .unseal(&blobs)
                        .map_err(|_| e)
                }
                unsealed => unsealed,
            }
        })
        .map_err(|source| copies::classify(dir, &files, source))?;
    RootKey::from_slice(&secret)
}

/// A new root key: the OS RNG's bytes XOR the TPM RNG's, so neither alone
/// decides it.
fn fresh_key(
    tpm: &TpmWorker,
    timeout: Duration,
    what: &'static str,
) -> Result<RootKey, RootKeyError> {
    let mut secret = Zeroizing::new([0u8; ROOT_KEY_LEN]);
    rand::rngs::SysRng
        .try_fill_bytes(secret.as_mut())
        .map_err(|e| RootKeyError::Random(e.to_string()))?;
    let tpm_random = tpm
        .call(what, timeout, |tcti| Tpm::open(tcti)?.random(ROOT_KEY_LEN))
        .map_err(RootKeyError::TpmUnavailable)?;
    if tpm_random.len() != ROOT_KEY_LEN {
        return Err(RootKeyError::TpmUnavailable(TpmError::BadAnswer {
            step: "GetRandom",
            problem: format!("{} bytes", tpm_random.len()),
        }));
    }
    for (byte, mix) in secret.iter_mut().zip(tpm_random.iter()) {
        *byte ^= mix;
    }
    RootKey::from_slice(secret.as_ref())
}

/// The next blobs present, for messages: "root-next.seal".
fn next_blobs_left(dir: &StateDir) -> String {
    let left: Vec<&str> = [NEXT_RECORD, ROOT_NEXT_PRIV, ROOT_NEXT_PUB]
        .into_iter()
        .filter(|name| dir.contains(name))
        .collect();
    left.join(" and ")
}

/// Step 1 of a rotation: makes a new root key and seals it (giving up
/// after `timeout`) in the copies of the mode in force, as the next
/// generation; `root-next.seal` names them. The PCR copy is bound to the
/// values recorded for the current one (a rotation trusts no new boot
/// state). In a mode with a PIN, `pin` must open the current PIN copy
/// first, so that a mistyped PIN can never become the new key's. Refuses
/// while a rotation is pending, which only a start may decide about.
pub fn seal_next(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    pin: Option<&[u8]>,
) -> Result<RootKey, RootKeyError> {
    if rotation_interrupted(dir) {
        return Err(RootKeyError::RotationPending {
            dir: dir.path().display().to_string(),
            left: next_blobs_left(dir),
        });
    }
    let Some(current) = SealRecord::read(dir, RECORD)? else {
        return Err(RootKeyError::StoreWithoutRootKey {
            dir: dir.path().display().to_string(),
        });
    };
    let pin = if current.mode.pin {
        let pin = pin.ok_or(RootKeyError::PinNeeded)?;
        copies::unseal_pin(dir, tpm, timeout, &current, pin)?;
        Some(pin)
    } else {
        None
    };
    let key = fresh_key(tpm, timeout, "making the next root key")?;
    copies::check_record(dir, tpm, timeout, &current)?;
    let values = (!current.mode.pcrs.is_empty()).then(|| current.pcr_values.clone());
    let next = copies::seal_copies(
        dir,
        tpm,
        timeout,
        &key,
        current.generation + 1,
        &current.mode,
        values,
        pin,
    )?;
    if let Err(e) = next.write(dir, NEXT_RECORD) {
        copies::remove_files(dir, &next);
        return Err(e.into());
    }
    Ok(key)
}

/// Step 3 of a rotation, once the key store is committed to the next key:
/// renames `root-next.seal` over `root.seal` and removes the old
/// generation's files.
pub fn promote_next(dir: &StateDir) -> Result<(), RootKeyError> {
    // The store's commit is the deletion of its journal in this directory,
    // which SQLite does not sync (synchronous=FULL): made durable here,
    // before the old record goes, so a power cut cannot bring back an old
    // store beside the new key alone.
    dir.sync()?;
    let old = SealRecord::read(dir, RECORD)?;
    dir.replace(NEXT_RECORD, RECORD)?;
    if let Some(old) = old {
        copies::remove_files(dir, &old);
    }
    Ok(())
}

/// Undoes step 1 of a rotation the key store never committed to: removes
/// `root-next.seal`, then the files it named.
pub fn discard_next(dir: &StateDir) -> Result<(), RootKeyError> {
    let next = SealRecord::read(dir, NEXT_RECORD)?;
    dir.remove(NEXT_RECORD)?;
    if let Some(next) = next {
        copies::remove_files(dir, &next);
    }
    Ok(())
}

/// Start-up after an interrupted rotation: the current record's key and
/// the next one's are unsealed, and the one whose check value the key
/// store records is kept. Without a way to unseal (a PIN-only mode at
/// start) the daemon stays locked until an unlock decides.
fn complete_rotation_v2(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    current: SealRecord,
    next: SealRecord,
    store_check: Option<&str>,
    pin: Option<&[u8]>,
) -> Result<Opened, RootKeyError> {
    let undecidable = |found: String| RootKeyError::RotationUndecidable {
        dir: dir.path().display().to_string(),
        left: NEXT_RECORD.to_string(),
        store_check: store_check
            .unwrap_or("(none: there is no key store)")
            .to_string(),
        found,
    };
    let Some(store_check) = store_check else {
        return Err(undecidable("none was unsealed".to_string()));
    };
    let mut found = Vec::new();
    for (record, resolution) in [(current, Resolution::Discard), (next, Resolution::Promote)] {
        let name = match resolution {
            Resolution::Discard => RECORD,
            Resolution::Promote => NEXT_RECORD,
        };
        let key = match unseal_record(dir, tpm, timeout, &record, pin) {
            Ok(Ok(key)) => key,
            Ok(Err(reason)) => return Ok(Opened::Locked(reason)),
            Err(
                e @ (RootKeyError::Unseal { .. }
                | RootKeyError::MalformedBlob { .. }
                | RootKeyError::StateDir(_)
                | RootKeyError::WrongLength(_)),
            ) => {
                tracing::info!(candidate = name, error = %e, "interrupted root-key rotation: a candidate root key does not unseal");
                found.push(format!("{name}: does not unseal"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let check = key.check_value();
        if check != store_check {
            found.push(format!("{name}: root key {check}"));
            continue;
        }
        let origin = match resolution {
            Resolution::Discard => {
                tracing::warn!(root_key_check = %check, "a root-key rotation was interrupted before the key store committed to the new key; the old root key stays in force and the new key's copies are deleted");
                discard_next(dir)?;
                Origin::RotationDiscarded
            }
            Resolution::Promote => {
                tracing::warn!(root_key_check = %check, "a root-key rotation was interrupted after the key store committed to the new key; the new root key is in force");
                promote_next(dir)?;
                Origin::RotationCompleted
            }
        };
        return Ok(Opened::Unsealed {
            key,
            origin,
            record,
        });
    }
    Err(undecidable(found.join("; ")))
}

/// Step 3 of a rotation in the layout before 0.14.
fn legacy_promote_next(dir: &StateDir) -> Result<(), RootKeyError> {
    dir.sync()?;
    if dir.contains(ROOT_NEXT_PRIV) {
        dir.replace(ROOT_NEXT_PRIV, ROOT_PRIV)?;
    }
    dir.replace(ROOT_NEXT_PUB, ROOT_PUB)?;
    Ok(())
}

/// Undoes step 1 of a rotation in the layout before 0.14 (the public blob
/// first, so a crash in between leaves `root-next.priv` alone).
fn legacy_discard_next(dir: &StateDir) -> Result<(), RootKeyError> {
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
            (false, false) => return load_or_create_blobs(dir, tpm, timeout),
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
                legacy_discard_next(dir)?;
                Origin::RotationDiscarded
            }
            Resolution::Promote => {
                tracing::warn!(
                    root_key_check = %check,
                    left = %left,
                    "a root-key rotation was interrupted after the key store committed to the new key; the new root key is in force and its blobs are renamed into place"
                );
                legacy_promote_next(dir)?;
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
    /// Step 1 with the operator's PIN, which a mode with a PIN needs to
    /// seal the new key's PIN copy ([`seal_next`]); sealers that know no
    /// PIN seal as [`RootSealer::seal_next`].
    fn seal_next_with_pin(&self, pin: Option<&[u8]>) -> Result<RootKey, RootKeyError> {
        let _ = pin;
        self.seal_next()
    }
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
        seal_next(&self.dir, &self.tpm, self.timeout, None)
    }

    fn seal_next_with_pin(&self, pin: Option<&[u8]>) -> Result<RootKey, RootKeyError> {
        seal_next(&self.dir, &self.tpm, self.timeout, pin)
    }

    fn promote_next(&self) -> Result<(), RootKeyError> {
        promote_next(&self.dir)
    }

    fn discard_next(&self) -> Result<(), RootKeyError> {
        discard_next(&self.dir)
    }
}

/// A [`RootSealer`] with the operator's PIN for one rotation: what the
/// key store is given when `RotateRoot` carries a PIN. Its `Debug` never
/// shows the PIN.
pub struct PinnedSealer {
    sealer: Arc<dyn RootSealer>,
    pin: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for PinnedSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedSealer")
            .field("sealer", &self.sealer)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PinnedSealer {
    /// `sealer` with `pin` for its step 1.
    pub fn new(sealer: Arc<dyn RootSealer>, pin: Option<Zeroizing<Vec<u8>>>) -> PinnedSealer {
        PinnedSealer { sealer, pin }
    }
}

impl RootSealer for PinnedSealer {
    fn seal_next(&self) -> Result<RootKey, RootKeyError> {
        self.sealer
            .seal_next_with_pin(self.pin.as_deref().map(Vec::as_slice))
    }

    fn promote_next(&self) -> Result<(), RootKeyError> {
        self.sealer.promote_next()
    }

    fn discard_next(&self) -> Result<(), RootKeyError> {
        self.sealer.discard_next()
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
        let mode = SealingMode::default();
        let error = open_offline(&dir, &tpm, Duration::from_secs(1), &mode, None).unwrap_err();
        assert!(
            matches!(error, RootKeyError::RotationPending { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("start hostkmsd once"), "{error}");
        assert!(dir.contains(ROOT_NEXT_PRIV), "left for the daemon");
        // A new rotation waits for that start too, before any TPM work.
        let error = seal_next(&dir, &tpm, Duration::from_secs(1), None).unwrap_err();
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
        let mode = SealingMode::default();
        let error = open(&dir, &tpm, Duration::from_secs(1), &mode, None, None).unwrap_err();
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
    fn a_next_record_of_the_generation_in_force_is_refused_and_nothing_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        let record = SealRecord {
            generation: 3,
            primary: record::PrimaryKind::TransientNoda,
            mode: SealingMode::default(),
            pcr_values: Vec::new(),
        };
        record.write(&dir, RECORD).unwrap();
        record.write(&dir, NEXT_RECORD).unwrap();
        for name in record.files() {
            dir.write_private(&name, b"x").unwrap();
        }
        let tpm = absent_tpm();
        let mode = SealingMode::default();
        let error = open(&dir, &tpm, Duration::from_secs(1), &mode, Some("00"), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("root-next.seal"), "{error}");
        assert!(error.contains("hostkms did not write it"), "{error}");
        for name in record.files() {
            assert!(dir.contains(&name), "{name} kept");
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
