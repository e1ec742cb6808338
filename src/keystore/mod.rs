//! Keys, their versions and states, persisted in SQLite under the root key.
//!
//! Requests read an immutable snapshot of every key ([`Keys`]), swapped
//! atomically after each change, so wrap and unwrap take no lock. Changes
//! (create, rotate, revoke, disable, enable, minimum decryption version) are
//! serialized, written in one transaction that is durable before the new
//! snapshot is published, and only then answered.
//!
//! Every row is authenticated under the root key; a row edited on disk stops
//! the daemon at start with an error naming the key.
//!
//! Besides keys the store keeps the daemon clock (seconds the daemon has
//! measured passing, across runs: what a deletion's waiting period counts),
//! and reads the time only through the [`crate::clock::Clock`] it is opened
//! with. KEKs are stored only
//! sealed under the root key, and held in memory as ready ciphers.
//!
//! The writer lock is never held while waiting on the TPM: a new version's
//! TPM randomness is taken before the lock, so a hung TPM cannot stop
//! disable, enable or the encryption-count reservations that wraps need.
//!
//! Files: [`KeyStore`] itself here; `model` (keys, versions, snapshots, the
//! key-name rule), `error` ([`StoreError`]), `loader` (open and tamper
//! verification), `writers` (every change to versions and states),
//! `lifecycle` (metadata, rotation period, deletion, the daemon clock), `db` (SQLite rows and their
//! canonical encodings), `sealing` (the keys derived from the root key),
//! `entropy` ([`EntropySource`] and the TPM reserve), `kek` (a KEK in memory),
//! `material` (keys in clear for recovery and transfer, the change sink,
//! and the sealed secrets), `metadata` (the rules for descriptions, tags and
//! rotation periods), `import` (a key from another host), `restore`
//! (a backup's keys imported at once), `rollback` (the binding to a TPM NV
//! counter: its row, the key-set digest, the start check, the background
//! increments).

mod db;
mod entropy;
mod error;
mod import;
#[cfg(test)]
mod import_tests;
mod kek;
mod lifecycle;
mod loader;
mod material;
mod metadata;
mod model;
mod reseal;
mod restore;
mod rollback;
mod sealing;
#[cfg(test)]
mod test_host;
#[cfg(test)]
mod tests;
mod writers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

#[cfg(any(test, feature = "test-util"))]
pub use entropy::TestEntropy;
pub use entropy::{EntropySource, TpmEntropy};
pub use error::StoreError;
pub use import::Imported;
pub use kek::Kek;
pub use material::{
    Change, ChangeSink, KeyMaterial, KeySettingsMaterial, SecretName, VersionMaterial,
};
pub use metadata::{
    DeletionDue, MAX_ROTATION_PERIOD_SECS, MAX_TAG_NAME_BYTES, MAX_TAG_VALUE_BYTES, NewKeySettings,
    check_description, check_rotation_period, check_tag, check_tag_name, check_tags,
};
pub use model::{Key, Keys, Version, check_name};
pub use reseal::RootRotation;
pub use restore::{RestoreRefused, Restored, RestoredKey};
pub use rollback::{
    MAX_CATCH_UP, RollbackAccepted, RollbackError, RollbackRow, RollbackStart, key_set_digest,
};

use db::{Database, DbError};
use sealing::StoreSecrets;

/// Encryptions reserved (persisted) ahead of use: the most a crash can
/// overcount by, and how often a busy version writes its count.
pub const RESERVATION_STEP: u64 = 1 << 14;

/// The serialized side of the store: the database and the keys protecting it.
struct Writer {
    db: Database,
    secrets: StoreSecrets,
    /// The store's binding to its TPM counter; `None` until bound.
    rollback: Option<rollback::RollbackRow>,
    /// The key that MACs the binding row; `None` until bound.
    rollback_key: Option<rollback::RowKey>,
    /// Whether the store was created by this open.
    fresh: bool,
    /// Opened for `accept-rollback`: why a start would have refused it.
    rollback_problem: String,
    /// The `secrets` table, verified and still sealed, by name.
    sealed: std::collections::BTreeMap<String, Vec<u8>>,
}

/// The key store.
pub struct KeyStore {
    keys: ArcSwap<Keys>,
    writer: Mutex<Writer>,
    /// TPM randomness for new KEKs, taken before the writer lock.
    entropy: Arc<dyn EntropySource>,
    /// Told of every change before it is answered (the recovery directory).
    sink: std::sync::OnceLock<Arc<dyn ChangeSink>>,
    path: PathBuf,
    /// The binding to the TPM counter, and the increments pending.
    rollback: rollback::Rollback,
    /// The check value of the root key the store is sealed under.
    root_key_check: ArcSwap<String>,
    /// Held for a whole root-key rotation, TPM work included, so two never
    /// overlap; the writer lock is taken only for the re-sealing itself.
    rotation: Mutex<()>,
    /// Where every time the store records comes from.
    clock: crate::clock::Clock,
    /// The daemon clock as persisted: seconds the daemon has measured
    /// passing, across runs. Written under the writer lock.
    daemon_clock: AtomicU64,
    /// Whether the store existed but recorded no daemon clock when opened.
    daemon_clock_missing: bool,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// The check value of the root key the store is sealed under (see
    /// [`crate::rootkey::RootKey::check_value`]); changes with a rotation.
    pub fn root_key_check(&self) -> Arc<String> {
        self.root_key_check.load_full()
    }

    /// The clock the store was opened with: creation times, and what the
    /// daemon's lifecycle reads the time from.
    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    /// The daemon clock: the seconds the daemon has measured passing with
    /// its monotonic clock, accumulated across runs and persisted (MACed)
    /// in the store. Only ever grows.
    pub fn daemon_clock(&self) -> u64 {
        self.daemon_clock.load(Ordering::Acquire)
    }

    /// Whether the store existed when opened but recorded no daemon clock:
    /// its row was deleted, or the store was last written by a hostkms
    /// without one. The clock then starts at 0, so every scheduled
    /// deletion's measured wait starts again (later, never earlier).
    pub fn daemon_clock_missing(&self) -> bool {
        self.daemon_clock_missing
    }

    /// The file the store is kept in.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The current snapshot of every key.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic mid-change rolls its transaction back; the state is sound.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn db_error(&self, source: DbError) -> StoreError {
        StoreError::Database {
            path: self.path.display().to_string(),
            source,
        }
    }
}
