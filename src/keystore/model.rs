//! The in-memory model: a [`Key`] and its [`Version`]s as one snapshot
//! ([`Keys`]) sees them, the rows they are stored as, and the key-name rule.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aes_gcm::Aes256Gcm;
use agent_proto::{KeyInfo, KeyState, KeyType, Operation, VersionInfo, VersionState};

use super::db::{KeyRow, VersionRow};
use super::error::StoreError;
use super::metadata::{DeletionDue, encode_tags};
use super::sealing::SEALED_KEK_LEN;
use crate::envelope::KeyId;
use crate::version_key::VersionKey;

/// Checks a key name: `[A-Za-z0-9._-]{1,128}`, the rule of
/// [`agent_proto::key_name`].
pub fn check_name(name: &str) -> Result<(), StoreError> {
    agent_proto::key_name::check(name).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// One version of a key: its secret (until revoked) and its encryption count.
pub struct Version {
    pub(super) number: u32,
    pub(super) created: u64,
    /// The KEK, HMAC key or signing key; `None` once revoked.
    pub(super) key: Option<VersionKey>,
    /// A signing version's public key (SubjectPublicKeyInfo DER), kept
    /// when the version is revoked; `None` for AES and HMAC versions.
    pub(super) public_key: Option<Arc<[u8]>>,
    /// The KEK sealed under the root key in force, as stored; replaced when
    /// the root key is rotated (under the writer lock, like every write).
    pub(super) sealed: Mutex<Option<[u8; SEALED_KEK_LEN]>>,
    pub(super) encryptions: AtomicU64,
    pub(super) reserved: AtomicU64,
    /// Whether this process raised the near-the-limit alert for the version.
    pub(super) limit_alerted: AtomicBool,
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

    /// When the version was made, Unix seconds (by the wall clock then).
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The KEK's cipher; `None` once the version is revoked, or when the
    /// key is not an AES-256-GCM key.
    pub fn cipher(&self) -> Option<&Aes256Gcm> {
        self.key
            .as_ref()
            .and_then(|key| key.cipher(Operation::Wrap).ok())
    }

    /// The version's secret in usable form; `None` once revoked.
    pub fn key(&self) -> Option<&VersionKey> {
        self.key.as_ref()
    }

    /// The version's public key as SubjectPublicKeyInfo DER: for every
    /// version of a signing key, revoked ones included (a revoked
    /// version's signatures can still be checked outside hostkms, for
    /// audit); `None` for AES and HMAC keys.
    pub fn public_key_der(&self) -> Option<&[u8]> {
        self.public_key.as_deref()
    }

    /// Whether the version is revoked (its secret deleted).
    pub fn is_revoked(&self) -> bool {
        self.key.is_none()
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

    pub(super) fn revoked_copy(&self) -> Version {
        let count = self.encryptions();
        Version {
            number: self.number,
            created: self.created,
            key: None,
            public_key: self.public_key.clone(),
            sealed: Mutex::new(None),
            encryptions: AtomicU64::new(count),
            reserved: AtomicU64::new(self.reserved.load(Ordering::Relaxed).max(count)),
            limit_alerted: AtomicBool::new(self.limit_alerted.load(Ordering::Relaxed)),
        }
    }

    /// The sealed KEK as stored; `None` once revoked.
    pub(super) fn sealed_kek(&self) -> Option<[u8; SEALED_KEK_LEN]> {
        *self.sealed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the sealed KEK after the root key's rotation re-sealed it.
    pub(super) fn set_sealed_kek(&self, sealed: [u8; SEALED_KEK_LEN]) {
        *self.sealed.lock().unwrap_or_else(PoisonError::into_inner) = Some(sealed);
    }

    pub(super) fn row(&self, key_id: KeyId) -> VersionRow {
        VersionRow {
            key_id,
            version: self.number,
            created: self.created,
            state: u8::from(self.is_revoked()),
            encryptions_reserved: self.reserved.load(Ordering::Relaxed),
            sealed_kek: self.sealed_kek().map(|s| s.to_vec()),
            public_key: self.public_key.as_deref().map(<[u8]>::to_vec),
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
    pub(super) id: KeyId,
    pub(super) name: String,
    pub(super) created: u64,
    /// Fixed at creation; every version has it.
    pub(super) key_type: KeyType,
    pub(super) state: KeyState,
    pub(super) min_decryption_version: u32,
    /// Version `n` at index `n - 1`; never empty.
    pub(super) versions: Vec<Arc<Version>>,
    /// Free text for humans.
    pub(super) description: String,
    /// Tags, by name.
    pub(super) tags: BTreeMap<String, String>,
    /// Seconds between rotations by age; `None`: never by age.
    pub(super) rotation_period: Option<u64>,
    /// When a key pending deletion is deleted; `Some` exactly in state
    /// `PendingDeletion`.
    pub(super) deletion_due: Option<DeletionDue>,
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

    /// What the key is for.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Enabled, disabled, pending deletion or revoked.
    pub fn state(&self) -> KeyState {
        self.state
    }

    /// Free text for humans (empty when none was given).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The key's tags, by name.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }

    /// Seconds between rotations by age; `None`: never by age.
    pub fn rotation_period(&self) -> Option<u64> {
        self.rotation_period
    }

    /// When the next rotation by age is due, Unix seconds: the latest
    /// version's creation plus the period. `None` without a period, and
    /// for a key that is not enabled (only enabled keys rotate by age).
    pub fn next_rotation(&self) -> Option<u64> {
        if self.state != KeyState::Enabled {
            return None;
        }
        let period = self.rotation_period?;
        let latest = self.latest()?;
        Some(latest.created.saturating_add(period))
    }

    /// When the key is deleted, if it is pending deletion.
    pub fn deletion_due(&self) -> Option<DeletionDue> {
        self.deletion_due
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
            key_type: self.key_type,
            description: self.description.clone(),
            tags: self.tags.clone(),
            rotation_period: self.rotation_period,
            next_rotation: self.next_rotation(),
            deletion_date: self.deletion_due.map(|due| due.wall),
        }
    }

    pub(super) fn row(&self) -> KeyRow {
        KeyRow {
            id: self.id,
            name: self.name.clone(),
            created: self.created,
            state: match self.state {
                KeyState::Enabled => 0,
                KeyState::Disabled => 1,
                KeyState::Revoked => 2,
                KeyState::PendingDeletion => 3,
            },
            latest_version: self.latest_version(),
            min_decryption_version: self.min_decryption_version,
            key_type: key_type_index(self.key_type),
            description: self.description.clone(),
            tags: encode_tags(&self.tags),
            rotation_period: self.rotation_period,
            deletion_due_wall: self.deletion_due.map(|due| due.wall),
            deletion_due_elapsed: self.deletion_due.map(|due| due.elapsed),
        }
    }
}

/// The public key of `key`, as a [`Version`] keeps it; `None` for AES and
/// HMAC keys.
pub(super) fn public_key_of(key: &VersionKey) -> Option<Arc<[u8]>> {
    key.public_key_der().map(|der| Arc::from(der.as_slice()))
}

/// The public key a version of `key_type` keeps, checked against what it
/// was given (`stored`: a row's column, a record's field): a live version's
/// must be the one its secret gives; a revoked signing version's is taken
/// as given and must be there, a SubjectPublicKeyInfo of the key's type;
/// an AES or HMAC version has none. The error
/// says what is wrong, for a message naming the key and version.
pub(super) fn checked_public_key(
    key_type: KeyType,
    key: Option<&VersionKey>,
    stored: Option<&[u8]>,
) -> Result<Option<Arc<[u8]>>, &'static str> {
    match (key, stored) {
        (Some(key), stored) => {
            let derived = public_key_of(key);
            if derived.as_deref() != stored {
                return Err(match stored {
                    Some(_) if derived.is_none() => "has a public key but its key type has none",
                    Some(_) => "its public key is not the one its secret gives",
                    None => "lacks its public key",
                });
            }
            Ok(derived)
        }
        (None, Some(_)) if !key_type.is_signing() => {
            Err("has a public key but its key type has none")
        }
        (None, Some(stored)) if !is_public_key_of(key_type, stored) => {
            Err("its public key is not a public key of its key type")
        }
        (None, Some(stored)) => Ok(Some(Arc::from(stored))),
        (None, None) if key_type.is_signing() => Err("lacks its public key"),
        (None, None) => Ok(None),
    }
}

/// Whether `der` is a SubjectPublicKeyInfo of a `key_type` public key.
fn is_public_key_of(key_type: KeyType, der: &[u8]) -> bool {
    use p256::pkcs8::DecodePublicKey;
    match key_type {
        KeyType::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_der(der).is_ok(),
        KeyType::EcdsaP256 => p256::ecdsa::VerifyingKey::from_public_key_der(der).is_ok(),
        KeyType::MlDsa65 => {
            ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::from_public_key_der(der).is_ok()
        }
        KeyType::Aes256Gcm | KeyType::HmacSha256 | KeyType::HmacSha512 => false,
    }
}

/// A key type's wire index, as the `keys` table stores it.
pub(super) fn key_type_index(key_type: KeyType) -> u8 {
    KeyType::ALL
        .iter()
        .position(|t| *t == key_type)
        .map_or(0, |i| i as u8)
}

/// The key type stored as `index`, if it is one.
pub(super) fn key_type_of(index: u8) -> Option<KeyType> {
    KeyType::ALL.get(usize::from(index)).copied()
}

/// Every key, by name and by id: one immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub(super) by_name: BTreeMap<String, Arc<Key>>,
    pub(super) by_id: HashMap<KeyId, Arc<Key>>,
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

    /// The keys named after `after` (all, with `None`), in name order,
    /// found without walking the ones before: a page of `ListKeys` costs
    /// its own size, not the store's.
    pub fn after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a Arc<Key>> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name.to_string()),
            None => Bound::Unbounded,
        };
        self.by_name
            .range((start, Bound::Unbounded))
            .map(|(_, key)| key)
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

    pub(super) fn insert(&mut self, key: Arc<Key>) {
        self.by_id.insert(key.id, Arc::clone(&key));
        self.by_name.insert(key.name.clone(), key);
    }
}

#[cfg(test)]
impl Key {
    /// Whether every version's secret is gone.
    pub(super) fn versions_revoked_for_tests(&self) -> bool {
        self.versions.iter().all(|v| v.is_revoked())
    }
}
