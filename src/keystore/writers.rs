//! The changes: create, rotate (on demand or at the encryption limit),
//! revoke, disable and enable, the minimum decryption version, and the
//! encryption-count reservations. Each is serialized under the writer
//! lock, written in one durable transaction, then published as a new
//! snapshot; TPM randomness for a new version is taken before the lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use agent_proto::{KeyState, KeyType};
use rand::TryRng;
use zeroize::Zeroizing;

use super::db::{self, VersionRow};
use super::metadata::{self, NewKeySettings};
use super::sealing::{KEK_LEN, SEALED_KEK_LEN};
use super::{
    Change, Key, KeyStore, Keys, RESERVATION_STEP, StoreError, Version, Writer, check_name,
    rollback,
};
use crate::envelope::KeyId;
use crate::version_key::VersionKey;

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, StoreError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::SysRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(bytes)
}

impl KeyStore {
    /// Writes `key`'s row and `versions`' rows in one durable transaction,
    /// with the store's rollback binding (`S + 1` when the change
    /// [`Change::is_rollback_protected`], and the digest of the new
    /// snapshot), then publishes
    /// `key` in a new snapshot, and tells the change sink (the recovery
    /// directory) before returning, so before the answer. The TPM counter
    /// is counted up afterwards, in the background.
    pub(super) fn commit(
        &self,
        writer: &mut Writer,
        key: Key,
        versions: &[&Version],
        change: Change,
    ) -> Result<Arc<Key>, StoreError> {
        let name = key.name.clone();
        let numbers = versions.iter().map(|v| v.number).collect();
        let mut committed = self.commit_keys(writer, vec![(key, numbers)], change)?;
        committed.pop().ok_or(StoreError::Changed(name))
    }

    /// [`KeyStore::commit`] of several keys at once, in one transaction:
    /// each key's row and the rows of its versions numbered in the list
    /// (those the change made or altered), then one new snapshot, then the
    /// change sink told of each key. Every change to the store's keys goes
    /// through here, so whatever must follow every change (the recovery
    /// directory, the rollback binding) is in one place.
    pub(super) fn commit_keys(
        &self,
        writer: &mut Writer,
        changed: Vec<(Key, Vec<u32>)>,
        change: Change,
    ) -> Result<Vec<Arc<Key>>, StoreError> {
        let mut rows = Vec::with_capacity(changed.len());
        for (key, numbers) in &changed {
            let key_row = key.row();
            let key_mac = writer
                .secrets
                .row_mac(&key_row.canonical_as(writer.rollback.is_some()));
            let mut version_rows: Vec<(VersionRow, [u8; 32])> = Vec::with_capacity(numbers.len());
            for &number in numbers {
                let version = key.version(number).ok_or(StoreError::VersionNotFound {
                    key: key.name.clone(),
                    version: number,
                    latest: key.latest_version(),
                })?;
                let row = version.row(key.id);
                let mac = writer.secrets.row_mac(&row.canonical());
                version_rows.push((row, mac));
            }
            rows.push((key_row, key_mac, version_rows));
        }
        let mut next = Keys::clone(&self.keys.load());
        let committed: Vec<Arc<Key>> = changed
            .into_iter()
            .map(|(key, _)| {
                let key = Arc::new(key);
                next.insert(Arc::clone(&key));
                key
            })
            .collect();
        let rollback = self.next_rollback_row(writer, &next, change.is_rollback_protected());
        writer
            .db
            .transaction(|tx| {
                for (key_row, key_mac, version_rows) in &rows {
                    db::put_key(tx, key_row, key_mac)?;
                    for (row, mac) in version_rows {
                        db::put_version(tx, row, mac)?;
                    }
                }
                if let Some((_, text)) = &rollback {
                    rollback::put_row(tx, text)?;
                }
                Ok(())
            })
            .map_err(|e| self.db_error(e))?;
        self.keys.store(Arc::new(next));
        if let Some((row, _)) = rollback {
            self.rollback_committed(writer, row);
        }
        for key in &committed {
            self.notify(writer, key, change);
        }
        Ok(committed)
    }

    /// A new version of key `id`, of `key_type`: a secret from the OS RNG
    /// XOR `tpm` randomness (taken before the writer lock), sealed under
    /// the root key. A secret that is no valid key of the type (an ECDSA
    /// scalar out of range, about 2^-32) is drawn again from the OS RNG.
    fn new_version(
        &self,
        writer: &mut Writer,
        id: KeyId,
        number: u32,
        key_type: KeyType,
        tpm: &[u8; KEK_LEN],
    ) -> Result<Version, StoreError> {
        let material = loop {
            let mut material = random::<KEK_LEN>()?;
            for (byte, mix) in material.iter_mut().zip(tpm.iter()) {
                *byte ^= mix;
            }
            if VersionKey::seed_is_valid(key_type, &material) {
                break material;
            }
        };
        let key = VersionKey::from_seed(key_type, &material)
            .map_err(|e| StoreError::Random(e.to_string()))?;
        let sealed = writer
            .secrets
            .seal_kek(id, number, &material)
            .map_err(StoreError::Random)?;
        let sealed: [u8; SEALED_KEK_LEN] = sealed
            .try_into()
            .map_err(|_| StoreError::Random("a sealed KEK of the wrong length".to_string()))?;
        Ok(Version {
            number,
            created: self.clock.now(),
            public_key: super::model::public_key_of(&key),
            key: Some(key),
            sealed: std::sync::Mutex::new(Some(sealed)),
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

    /// The current key named `name`, unless it is revoked.
    pub(super) fn live(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        let key = self.current(name)?;
        if key.state == KeyState::Revoked {
            return Err(StoreError::KeyRevoked(key.name.clone()));
        }
        Ok(key)
    }

    /// The current key named `name`, unless it is revoked or pending
    /// deletion: what rotate, disable, enable and scheduling a deletion
    /// need (a pending key's deletion must be cancelled first).
    pub(super) fn settled(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        let key = self.live(name)?;
        refuse_pending(&key)?;
        Ok(key)
    }

    /// Creates AES-256-GCM key `name` at version 1.
    pub fn create(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        self.create_typed(name, KeyType::Aes256Gcm)
    }

    /// Creates key `name` of `key_type` at version 1, with no description,
    /// tags or rotation period.
    pub fn create_typed(&self, name: &str, key_type: KeyType) -> Result<Arc<Key>, StoreError> {
        self.create_with(name, key_type, NewKeySettings::default())
    }

    /// Creates key `name` of `key_type` at version 1 with `settings`
    /// (checked here: [`super::check_description`], [`super::check_tags`],
    /// [`super::check_rotation_period`]).
    pub fn create_with(
        &self,
        name: &str,
        key_type: KeyType,
        settings: NewKeySettings,
    ) -> Result<Arc<Key>, StoreError> {
        check_name(name)?;
        metadata::check_settings(
            &settings.description,
            &settings.tags,
            settings.rotation_period,
        )?;
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
        let version = Arc::new(self.new_version(&mut writer, id, 1, key_type, &tpm)?);
        let key = Key {
            id,
            name: name.to_string(),
            created: version.created,
            key_type,
            state: KeyState::Enabled,
            min_decryption_version: 1,
            versions: vec![Arc::clone(&version)],
            description: settings.description,
            tags: settings.tags,
            rotation_period: settings.rotation_period,
            deletion_due: None,
        };
        self.commit(&mut writer, key, &[&version], Change::Create)
    }

    /// Adds a new latest version to key `name`.
    pub fn rotate(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        self.settled(name)?;
        let tpm = self.entropy.take()?;
        let mut writer = self.writer();
        let key = self.settled(name)?;
        self.rotate_locked(&mut writer, &key, &tpm)
    }

    /// Rotates key `id` only if `version` is still its latest: what a version
    /// that reached its encryption limit asks for. Returns the current key.
    pub fn rotate_if_latest(&self, id: KeyId, version: u32) -> Result<Arc<Key>, StoreError> {
        self.rotate_if(id, version, false)
    }

    /// Rotates key `id` by age: like [`KeyStore::rotate_if_latest`], and
    /// only while the key is still enabled (a key disabled since the timer
    /// found it due is returned unchanged).
    pub fn rotate_if_due(&self, id: KeyId, version: u32) -> Result<Arc<Key>, StoreError> {
        self.rotate_if(id, version, true)
    }

    /// Rotates key `id` if `version` is still its latest and, with
    /// `only_enabled`, the key is enabled; both re-checked under the writer
    /// lock. Returns the current key.
    fn rotate_if(
        &self,
        id: KeyId,
        version: u32,
        only_enabled: bool,
    ) -> Result<Arc<Key>, StoreError> {
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
            refuse_pending(&key)?;
            Ok(key)
        };
        let wanted = |key: &Key| {
            key.latest_version() == version && (!only_enabled || key.state == KeyState::Enabled)
        };
        let key = current()?;
        if !wanted(&key) {
            return Ok(key);
        }
        let tpm = self.entropy.take()?;
        let mut writer = self.writer();
        let key = current()?;
        if !wanted(&key) {
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
        let version = Arc::new(self.new_version(
            writer,
            key.id,
            key.latest_version() + 1,
            key.key_type,
            tpm,
        )?);
        let mut next = key.clone();
        next.versions.push(Arc::clone(&version));
        self.commit(writer, next, &[&version], Change::Rotate)
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
            None => changed = revoke_whole(&mut next),
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
                    let fresh = Arc::new(self.new_version(
                        &mut writer,
                        key.id,
                        latest + 1,
                        key.key_type,
                        tpm,
                    )?);
                    next.versions.push(Arc::clone(&fresh));
                    changed.push(fresh);
                }
                let revoked = Arc::new(old.revoked_copy());
                next.versions[number as usize - 1] = Arc::clone(&revoked);
                changed.push(revoked);
            }
        }
        let rows: Vec<&Version> = changed.iter().map(Arc::as_ref).collect();
        self.commit(&mut writer, next, &rows, Change::Revoke)
            .map(Some)
    }

    /// Disables (`enabled == false`) or enables key `name`.
    /// Refused for a key pending deletion ([`StoreError::KeyPendingDeletion`]):
    /// its deletion is cancelled first.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<Arc<Key>, StoreError> {
        let mut writer = self.writer();
        let key = self.settled(name)?;
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
        let change = if enabled {
            Change::Enable
        } else {
            Change::Disable
        };
        self.commit(&mut writer, next, &[], change)
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
        self.commit(&mut writer, next, &[], Change::MinDecryptionVersion)
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

/// Revokes every version of `key` and the key itself (its KEKs gone for
/// good, a pending deletion done); returns the versions it changed.
pub(super) fn revoke_whole(key: &mut Key) -> Vec<Arc<Version>> {
    key.state = KeyState::Revoked;
    key.deletion_due = None;
    let mut changed = Vec::new();
    for slot in &mut key.versions {
        if !slot.is_revoked() {
            *slot = Arc::new(slot.revoked_copy());
            changed.push(Arc::clone(slot));
        }
    }
    changed
}

/// [`StoreError::KeyPendingDeletion`] for a key pending deletion.
pub(super) fn refuse_pending(key: &Key) -> Result<(), StoreError> {
    match key.deletion_due {
        Some(due) => Err(StoreError::KeyPendingDeletion {
            name: key.name.clone(),
            due_wall: due.wall,
        }),
        None => Ok(()),
    }
}
