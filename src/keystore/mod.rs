//! Keys, their versions and states, persisted in SQLite under the root key.
//!
//! Requests read an immutable snapshot of every key ([`Keys`]), swapped
//! atomically after each change, so wrap and unwrap take no lock. Changes
//! (create, rotate, revoke, disable, enable, minimum decryption version) are
//! serialized, written in one transaction that is durable before the new
//! snapshot is published, and only then answered.
//!
//! Every row is authenticated under the root key; a row edited on disk stops
//! the daemon at start with an error naming the key. KEKs are stored only
//! sealed under the root key, and held in memory as ready ciphers.
//!
//! The writer lock is never held while waiting on the TPM: a new version's
//! TPM randomness is taken before the lock, so a hung TPM cannot stop
//! disable, enable or the encryption-count reservations that wraps need.

mod db;
mod entropy;
mod kek;
mod sealing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::Aes256Gcm;
use agent_proto::{KeyInfo, KeyState, VersionInfo, VersionState};
use arc_swap::ArcSwap;
use rand::TryRng;
use zeroize::Zeroizing;

pub use kek::Kek;

use crate::envelope::KeyId;
use crate::rootkey::{KEYSTORE_DB, RootKey};
use crate::state_dir::StateDir;
use crate::tpm::{TpmError, TpmWorker};
use db::{Database, DbError, KeyRow, Stored, VersionRow};
use entropy::TpmEntropy;
use sealing::{KEK_LEN, SEALED_KEK_LEN, StoreSecrets};

/// Encryptions reserved (persisted) ahead of use: the most a crash can
/// overcount by, and how often a busy version writes its count.
pub const RESERVATION_STEP: u64 = 1 << 14;

/// One version of a key: its KEK (until revoked) and its encryption count.
pub struct Version {
    number: u32,
    created: u64,
    kek: Option<Kek>,
    sealed: Option<[u8; SEALED_KEK_LEN]>,
    encryptions: AtomicU64,
    reserved: AtomicU64,
    /// Whether this process raised the near-the-limit alert for the version.
    limit_alerted: AtomicBool,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("number", &self.number)
            .field("revoked", &self.is_revoked())
            .field("encryptions", &self.encryptions())
            .finish_non_exhaustive()
    }
}

impl Version {
    /// The version number, from 1.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The KEK's cipher; `None` once the version is revoked.
    pub fn cipher(&self) -> Option<&Aes256Gcm> {
        self.kek.as_ref().map(Kek::cipher)
    }

    /// Whether the version is revoked (its KEK deleted).
    pub fn is_revoked(&self) -> bool {
        self.kek.is_none()
    }

    /// Encryptions made so far (after a crash: an upper bound).
    pub fn encryptions(&self) -> u64 {
        self.encryptions.load(Ordering::Relaxed)
    }

    /// Counts one encryption if fewer than `limit` were made; returns the
    /// new count, or `None` when the version has reached its limit.
    pub fn count_encryption(&self, limit: u64) -> Option<u64> {
        self.encryptions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|n| n + 1)
    }

    /// Marks the near-the-limit alert as raised; true only for the first
    /// caller, so the alert is raised once per version and process.
    pub fn mark_limit_alerted(&self) -> bool {
        !self.limit_alerted.swap(true, Ordering::Relaxed)
    }

    /// Whether `count` encryptions are covered by the persisted reservation.
    pub fn is_reserved(&self, count: u64) -> bool {
        count <= self.reserved.load(Ordering::Relaxed)
    }

    fn revoked_copy(&self) -> Version {
        let count = self.encryptions();
        Version {
            number: self.number,
            created: self.created,
            kek: None,
            sealed: None,
            encryptions: AtomicU64::new(count),
            reserved: AtomicU64::new(self.reserved.load(Ordering::Relaxed).max(count)),
            limit_alerted: AtomicBool::new(self.limit_alerted.load(Ordering::Relaxed)),
        }
    }

    fn row(&self, key_id: KeyId) -> VersionRow {
        VersionRow {
            key_id,
            version: self.number,
            created: self.created,
            state: u8::from(self.is_revoked()),
            encryptions_reserved: self.reserved.load(Ordering::Relaxed),
            sealed_kek: self.sealed.map(|s| s.to_vec()),
        }
    }

    fn info(&self) -> VersionInfo {
        VersionInfo {
            version: self.number,
            created: self.created,
            state: if self.is_revoked() {
                VersionState::Revoked
            } else {
                VersionState::Enabled
            },
            encryptions: self.encryptions(),
        }
    }
}

/// A key as one snapshot sees it.
#[derive(Debug, Clone)]
pub struct Key {
    id: KeyId,
    name: String,
    created: u64,
    state: KeyState,
    min_decryption_version: u32,
    /// Version `n` at index `n - 1`; never empty.
    versions: Vec<Arc<Version>>,
}

impl Key {
    /// The key's random id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enabled, disabled or revoked.
    pub fn state(&self) -> KeyState {
        self.state
    }

    /// Versions below this refuse to unwrap.
    pub fn min_decryption_version(&self) -> u32 {
        self.min_decryption_version
    }

    /// The number of the newest version.
    pub fn latest_version(&self) -> u32 {
        self.versions.len() as u32
    }

    /// The newest version, which new ciphertexts use.
    pub fn latest(&self) -> Option<&Arc<Version>> {
        self.versions.last()
    }

    /// Version `number`, if it exists.
    pub fn version(&self, number: u32) -> Option<&Arc<Version>> {
        number
            .checked_sub(1)
            .and_then(|i| self.versions.get(i as usize))
    }

    /// Metadata for clients; never key material.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.0,
            name: self.name.clone(),
            created: self.created,
            state: self.state,
            latest_version: self.latest_version(),
            min_decryption_version: self.min_decryption_version,
            versions: self.versions.iter().map(|v| v.info()).collect(),
        }
    }

    fn row(&self) -> KeyRow {
        KeyRow {
            id: self.id,
            name: self.name.clone(),
            created: self.created,
            state: match self.state {
                KeyState::Enabled => 0,
                KeyState::Disabled => 1,
                KeyState::Revoked => 2,
            },
            latest_version: self.latest_version(),
            min_decryption_version: self.min_decryption_version,
        }
    }
}

/// Every key, by name and by id: one immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    by_name: HashMap<String, Arc<Key>>,
    by_id: HashMap<KeyId, Arc<Key>>,
}

impl Keys {
    /// The key named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Key>> {
        self.by_name.get(name)
    }

    /// The key with id `id`.
    pub fn by_id(&self, id: KeyId) -> Option<&Arc<Key>> {
        self.by_id.get(&id)
    }

    /// Every key, sorted by name.
    pub fn sorted(&self) -> Vec<&Arc<Key>> {
        let mut keys: Vec<&Arc<Key>> = self.by_name.values().collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        keys
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// How many versions all keys have together.
    pub fn version_count(&self) -> usize {
        self.by_name.values().map(|k| k.versions.len()).sum()
    }

    fn insert(&mut self, key: Arc<Key>) {
        self.by_id.insert(key.id, Arc::clone(&key));
        self.by_name.insert(key.name.clone(), key);
    }
}

/// Why a key-store operation failed. Names a peer sent are shown quoted and
/// escaped (`{:?}`), so a control character in one cannot forge output.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key has that name.
    #[error("no key named {0:?}")]
    KeyNotFound(String),
    /// The name is taken (names are never reused, even after revocation).
    #[error("a key named {0:?} exists already; key names are never reused, even after revocation")]
    KeyExists(String),
    /// The key is revoked for good.
    #[error("key {0:?} is revoked")]
    KeyRevoked(String),
    /// The key has no such version.
    #[error("key {key:?} has no version {version}; its versions are 1 to {latest}")]
    VersionNotFound {
        /// The key.
        key: String,
        /// The version asked for.
        version: u32,
        /// The newest version.
        latest: u32,
    },
    /// A value of the request is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The version changed (was revoked) while a request was using it.
    #[error("key {0:?} changed while the request was using it")]
    Changed(String),
    /// A row fails authentication or is inconsistent: edited outside hostkms.
    #[error(
        "{path}: the row of key {key} {detail}; the key store was changed outside hostkms. hostkmsd will not trust it: restore keystore.db from backup"
    )]
    Tampered {
        /// The key store file.
        path: String,
        /// The key, by name and id as stored.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The store was written under a different root key.
    #[error(
        "{path} was written under root key {store_check}, but the unsealed root key is {root_check}: the key store and root.pub/root.priv do not belong together. Restore the matching pair from backup"
    )]
    WrongRootKey {
        /// The key store file.
        path: String,
        /// The check value recorded in the store.
        store_check: String,
        /// The check value of the unsealed root key.
        root_check: String,
    },
    /// SQLite failed.
    #[error("key store {path}: {source}")]
    Database {
        /// The key store file.
        path: String,
        /// Why.
        source: DbError,
    },
    /// The TPM could not supply randomness for a new KEK.
    #[error("cannot draw TPM randomness for a new key version: {0}")]
    Tpm(#[from] TpmError),
    /// The operating system's RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// The serialized side of the store: the database and the keys protecting it.
struct Writer {
    db: Database,
    secrets: StoreSecrets,
}

/// The key store.
pub struct KeyStore {
    keys: ArcSwap<Keys>,
    writer: Mutex<Writer>,
    /// TPM randomness for new KEKs, taken before the writer lock.
    entropy: TpmEntropy,
    path: PathBuf,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, StoreError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::SysRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(bytes)
}

/// Checks a key name: `[A-Za-z0-9._-]{1,128}`, the rule of
/// [`agent_proto::key_name`].
pub fn check_name(name: &str) -> Result<(), StoreError> {
    agent_proto::key_name::check(name).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

impl KeyStore {
    /// Opens (or creates) `keystore.db` in `dir` and loads every key,
    /// verifying each row and opening each KEK under `root`. New KEKs will
    /// mix in randomness from `tpm`, waiting for it at most `tpm_timeout`
    /// when none is in reserve.
    pub fn open(
        dir: &StateDir,
        root: &RootKey,
        tpm: Arc<TpmWorker>,
        tpm_timeout: Duration,
    ) -> Result<KeyStore, StoreError> {
        let path = dir.file(KEYSTORE_DB);
        let shown = path.display().to_string();
        let db_error = |source| StoreError::Database {
            path: shown.clone(),
            source,
        };
        let secrets = StoreSecrets::derive(root).map_err(|e| db_error(DbError::Corrupt(e)))?;
        let (mut db, created) = Database::open(&path).map_err(db_error)?;
        let root_check = root.check_value();
        match db.meta("root_key_check").map_err(db_error)? {
            Some(store_check) if store_check != root_check => {
                return Err(StoreError::WrongRootKey {
                    path: shown,
                    store_check,
                    root_check,
                });
            }
            Some(_) => {}
            None if created => db
                .set_meta("root_key_check", &root_check)
                .map_err(db_error)?,
            None => {
                return Err(StoreError::Tampered {
                    path: shown,
                    key: "(none)".to_string(),
                    detail: "table meta lacks the root key check value".to_string(),
                });
            }
        }
        let (key_rows, version_rows) = db.load().map_err(db_error)?;
        let keys = load_keys(&shown, &secrets, key_rows, version_rows)?;
        Ok(KeyStore {
            keys: ArcSwap::from_pointee(keys),
            writer: Mutex::new(Writer { db, secrets }),
            entropy: TpmEntropy::new(tpm, tpm_timeout),
            path,
        })
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

    /// Writes `key`'s row and `versions`' rows in one durable transaction,
    /// then publishes `key` in a new snapshot.
    fn commit(
        &self,
        writer: &mut Writer,
        key: Key,
        versions: &[&Version],
    ) -> Result<Arc<Key>, StoreError> {
        let key_row = key.row();
        let key_mac = writer.secrets.row_mac(&key_row.canonical());
        let version_rows: Vec<(VersionRow, [u8; 32])> = versions
            .iter()
            .map(|v| {
                let row = v.row(key.id);
                let mac = writer.secrets.row_mac(&row.canonical());
                (row, mac)
            })
            .collect();
        writer
            .db
            .transaction(|tx| {
                db::put_key(tx, &key_row, &key_mac)?;
                for (row, mac) in &version_rows {
                    db::put_version(tx, row, mac)?;
                }
                Ok(())
            })
            .map_err(|e| self.db_error(e))?;
        let key = Arc::new(key);
        let mut next = Keys::clone(&self.keys.load());
        next.insert(Arc::clone(&key));
        self.keys.store(Arc::new(next));
        Ok(key)
    }

    /// A new version of key `id`: a KEK from the OS RNG XOR `tpm`
    /// randomness (taken before the writer lock), sealed under the root key.
    fn new_version(
        writer: &mut Writer,
        id: KeyId,
        number: u32,
        tpm: &[u8; KEK_LEN],
    ) -> Result<Version, StoreError> {
        let mut material = random::<KEK_LEN>()?;
        for (byte, mix) in material.iter_mut().zip(tpm.iter()) {
            *byte ^= mix;
        }
        let sealed = writer
            .secrets
            .seal_kek(id, number, &material)
            .map_err(StoreError::Random)?;
        let sealed: [u8; SEALED_KEK_LEN] = sealed
            .try_into()
            .map_err(|_| StoreError::Random("a sealed KEK of the wrong length".to_string()))?;
        Ok(Version {
            number,
            created: now(),
            kek: Some(Kek::new(&material)),
            sealed: Some(sealed),
            encryptions: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            limit_alerted: AtomicBool::new(false),
        })
    }

    /// The current key named `name`, for a change.
    fn current(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        self.keys
            .load()
            .by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::KeyNotFound(name.to_string()))
    }

    fn live(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        let key = self.current(name)?;
        if key.state == KeyState::Revoked {
            return Err(StoreError::KeyRevoked(key.name.clone()));
        }
        Ok(key)
    }

    /// Creates key `name` at version 1.
    pub fn create(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        check_name(name)?;
        if self.keys.load().by_name(name).is_some() {
            return Err(StoreError::KeyExists(name.to_string()));
        }
        let tpm = self.entropy.take()?;
        let mut writer = self.writer();
        if self.keys.load().by_name(name).is_some() {
            return Err(StoreError::KeyExists(name.to_string()));
        }
        let id = loop {
            let id = KeyId(*random::<16>()?);
            if self.keys.load().by_id(id).is_none() {
                break id;
            }
        };
        let version = Arc::new(Self::new_version(&mut writer, id, 1, &tpm)?);
        let key = Key {
            id,
            name: name.to_string(),
            created: now(),
            state: KeyState::Enabled,
            min_decryption_version: 1,
            versions: vec![Arc::clone(&version)],
        };
        self.commit(&mut writer, key, &[&version])
    }

    /// Adds a new latest version to key `name`.
    pub fn rotate(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        self.live(name)?;
        let tpm = self.entropy.take()?;
        let mut writer = self.writer();
        let key = self.live(name)?;
        self.rotate_locked(&mut writer, &key, &tpm)
    }

    /// Rotates key `id` only if `version` is still its latest: what a version
    /// that reached its encryption limit asks for. Returns the current key.
    pub fn rotate_if_latest(&self, id: KeyId, version: u32) -> Result<Arc<Key>, StoreError> {
        let current = || {
            let key = self
                .keys
                .load()
                .by_id(id)
                .cloned()
                .ok_or_else(|| StoreError::KeyNotFound(id.to_string()))?;
            if key.state == KeyState::Revoked {
                return Err(StoreError::KeyRevoked(key.name.clone()));
            }
            Ok(key)
        };
        let key = current()?;
        if key.latest_version() != version {
            return Ok(key);
        }
        let tpm = self.entropy.take()?;
        let mut writer = self.writer();
        let key = current()?;
        if key.latest_version() != version {
            return Ok(key);
        }
        self.rotate_locked(&mut writer, &key, &tpm)
    }

    fn rotate_locked(
        &self,
        writer: &mut Writer,
        key: &Key,
        tpm: &[u8; KEK_LEN],
    ) -> Result<Arc<Key>, StoreError> {
        let version = Arc::new(Self::new_version(
            writer,
            key.id,
            key.latest_version() + 1,
            tpm,
        )?);
        let mut next = key.clone();
        next.versions.push(Arc::clone(&version));
        self.commit(writer, next, &[&version])
    }

    /// Revokes version `version` of key `name`, or with `None` the whole key.
    /// Revoking the latest version first adds a new one, so the key keeps
    /// working. Revoked KEKs are deleted from the store and from memory.
    pub fn revoke(&self, name: &str, version: Option<u32>) -> Result<Arc<Key>, StoreError> {
        loop {
            // Revoking the latest version needs TPM randomness for its
            // successor: taken before the writer lock, and checked again
            // under it (a rotation in between makes it unneeded).
            let tpm = match version {
                Some(number) if self.live(name)?.latest_version() == number => {
                    Some(self.entropy.take()?)
                }
                _ => None,
            };
            if let Some(revoked) = self.revoke_with(name, version, tpm.as_deref())? {
                return Ok(revoked);
            }
        }
    }

    /// [`KeyStore::revoke`] under the writer lock; `None` when it needs TPM
    /// randomness it was not given.
    fn revoke_with(
        &self,
        name: &str,
        version: Option<u32>,
        tpm: Option<&[u8; KEK_LEN]>,
    ) -> Result<Option<Arc<Key>>, StoreError> {
        let mut writer = self.writer();
        let key = self.live(name)?;
        let mut next = Key::clone(&key);
        let mut changed: Vec<Arc<Version>> = Vec::new();
        match version {
            None => {
                next.state = KeyState::Revoked;
                for slot in &mut next.versions {
                    if !slot.is_revoked() {
                        *slot = Arc::new(slot.revoked_copy());
                        changed.push(Arc::clone(slot));
                    }
                }
            }
            Some(number) => {
                let latest = key.latest_version();
                let Some(old) = key.version(number) else {
                    return Err(StoreError::VersionNotFound {
                        key: key.name.clone(),
                        version: number,
                        latest,
                    });
                };
                if old.is_revoked() {
                    return Ok(Some(key));
                }
                if number == latest {
                    let Some(tpm) = tpm else {
                        return Ok(None);
                    };
                    let fresh = Arc::new(Self::new_version(&mut writer, key.id, latest + 1, tpm)?);
                    next.versions.push(Arc::clone(&fresh));
                    changed.push(fresh);
                }
                let revoked = Arc::new(old.revoked_copy());
                next.versions[number as usize - 1] = Arc::clone(&revoked);
                changed.push(revoked);
            }
        }
        let rows: Vec<&Version> = changed.iter().map(Arc::as_ref).collect();
        self.commit(&mut writer, next, &rows).map(Some)
    }

    /// Disables (`enabled == false`) or enables key `name`.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<Arc<Key>, StoreError> {
        let mut writer = self.writer();
        let key = self.live(name)?;
        let state = if enabled {
            KeyState::Enabled
        } else {
            KeyState::Disabled
        };
        if key.state == state {
            return Ok(key);
        }
        let mut next = Key::clone(&key);
        next.state = state;
        self.commit(&mut writer, next, &[])
    }

    /// Makes versions below `version` of key `name` refuse to unwrap.
    pub fn set_min_decryption_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Arc<Key>, StoreError> {
        let mut writer = self.writer();
        let key = self.live(name)?;
        let latest = key.latest_version();
        if !(1..=latest).contains(&version) {
            return Err(StoreError::InvalidArgument(format!(
                "minimum decryption version {version} of key \"{}\" must be between 1 and its latest version {latest}",
                key.name
            )));
        }
        let mut next = Key::clone(&key);
        next.min_decryption_version = version;
        self.commit(&mut writer, next, &[])
    }

    /// Persists a reservation covering `count` encryptions of `version` of
    /// key `id`, before a ciphertext beyond the old reservation leaves.
    pub fn reserve(&self, id: KeyId, version: &Arc<Version>, count: u64) -> Result<(), StoreError> {
        let mut writer = self.writer();
        if version.is_reserved(count) {
            return Ok(());
        }
        let keys = self.keys.load();
        let current = keys.by_id(id).and_then(|k| k.version(version.number));
        let Some(current) = current.filter(|current| Arc::ptr_eq(current, version)) else {
            let name = keys
                .by_id(id)
                .map_or_else(|| id.to_string(), |k| k.name.clone());
            return Err(StoreError::Changed(name));
        };
        let reserved = count + RESERVATION_STEP;
        let mut row = current.row(id);
        row.encryptions_reserved = reserved;
        let mac = writer.secrets.row_mac(&row.canonical());
        writer
            .db
            .transaction(|tx| db::put_version(tx, &row, &mac))
            .map_err(|e| self.db_error(e))?;
        current.reserved.store(reserved, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the exact encryption counts (at a clean shutdown), so the next
    /// start does not round them up to their reservations.
    pub fn persist_counts(&self) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let keys = self.keys.load();
        let mut rows = Vec::new();
        for key in keys.by_name.values() {
            for version in &key.versions {
                let count = version.encryptions();
                if count != version.reserved.load(Ordering::Relaxed) {
                    let mut row = version.row(key.id);
                    row.encryptions_reserved = count;
                    let mac = writer.secrets.row_mac(&row.canonical());
                    rows.push((row, mac, Arc::clone(version)));
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        writer
            .db
            .transaction(|tx| {
                rows.iter()
                    .try_for_each(|(row, mac, _)| db::put_version(tx, row, mac))
            })
            .map_err(|e| self.db_error(e))?;
        for (row, _, version) in rows {
            version
                .reserved
                .store(row.encryptions_reserved, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Verifies and assembles every key from its rows.
fn load_keys(
    path: &str,
    secrets: &StoreSecrets,
    key_rows: Vec<Stored<KeyRow>>,
    version_rows: Vec<Stored<VersionRow>>,
) -> Result<Keys, StoreError> {
    let tampered = |row: &KeyRow, detail: String| StoreError::Tampered {
        path: path.to_string(),
        key: format!("\"{}\" (id {})", row.name, row.id),
        detail,
    };
    let mut versions_by_key: HashMap<KeyId, Vec<Stored<VersionRow>>> = HashMap::new();
    for stored in version_rows {
        versions_by_key
            .entry(stored.row.key_id)
            .or_default()
            .push(stored);
    }
    let mut keys = Keys::default();
    for Stored { row, mac } in key_rows {
        if !secrets.row_mac_matches(&row.canonical(), &mac) {
            return Err(tampered(
                &row,
                "fails authentication under the root key".to_string(),
            ));
        }
        let state = match row.state {
            0 => KeyState::Enabled,
            1 => KeyState::Disabled,
            2 => KeyState::Revoked,
            other => return Err(tampered(&row, format!("has an unknown state {other}"))),
        };
        let mut stored_versions = versions_by_key.remove(&row.id).unwrap_or_default();
        stored_versions.sort_by_key(|v| v.row.version);
        let numbers: Vec<u32> = stored_versions.iter().map(|v| v.row.version).collect();
        let expected: Vec<u32> = (1..=row.latest_version).collect();
        if numbers != expected {
            return Err(tampered(
                &row,
                format!(
                    "lists versions 1 to {} but the store holds {numbers:?}",
                    row.latest_version
                ),
            ));
        }
        if !(1..=row.latest_version).contains(&row.min_decryption_version) {
            return Err(tampered(
                &row,
                "has an impossible minimum decryption version".to_string(),
            ));
        }
        let mut versions = Vec::with_capacity(stored_versions.len());
        for Stored { row: version, mac } in stored_versions {
            let which =
                |detail: &str| tampered(&row, format!("version {}: {detail}", version.version));
            if !secrets.row_mac_matches(&version.canonical(), &mac) {
                return Err(which("fails authentication under the root key"));
            }
            let kek = match (version.state, &version.sealed_kek) {
                (0, Some(sealed)) => {
                    let material = secrets
                        .open_kek(row.id, version.version, sealed)
                        .map_err(|_| which("its KEK does not open under the root key"))?;
                    let sealed: [u8; SEALED_KEK_LEN] = sealed
                        .as_slice()
                        .try_into()
                        .map_err(|_| which("its sealed KEK has the wrong length"))?;
                    Some((Kek::new(&material), sealed))
                }
                (1, None) => None,
                _ => return Err(which("its state and KEK disagree")),
            };
            if state == KeyState::Revoked && kek.is_some() {
                return Err(which("is live in a revoked key"));
            }
            let (kek, sealed) = kek.map_or((None, None), |(k, s)| (Some(k), Some(s)));
            versions.push(Arc::new(Version {
                number: version.version,
                created: version.created,
                kek,
                sealed,
                encryptions: AtomicU64::new(version.encryptions_reserved),
                reserved: AtomicU64::new(version.encryptions_reserved),
                limit_alerted: AtomicBool::new(false),
            }));
        }
        if keys.by_name(&row.name).is_some() || keys.by_id(row.id).is_some() {
            return Err(tampered(&row, "appears twice".to_string()));
        }
        keys.insert(Arc::new(Key {
            id: row.id,
            name: row.name,
            created: row.created,
            state,
            min_decryption_version: row.min_decryption_version,
            versions,
        }));
    }
    if let Some((id, _)) = versions_by_key.into_iter().next() {
        return Err(StoreError::Tampered {
            path: path.to_string(),
            key: format!("id {id}"),
            detail: "has versions but no key row".to_string(),
        });
    }
    Ok(keys)
}
