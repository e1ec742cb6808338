//! Import of a key another host exported ([`KeyStore::import_key`]): a new
//! key is added with its id, name, state and versions; a key this store
//! has gets the versions it lacks. Nothing here ever brings back a version
//! revoked on this host, overwrites a KEK, or renames a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use agent_proto::KeyState;

use super::model::checked_public_key;
use super::sealing::{KEK_LEN, SEALED_KEK_LEN};
use super::{
    Change, Key, KeyMaterial, KeyStore, StoreError, Version, VersionMaterial, Writer, check_name,
};
use crate::envelope::KeyId;
use crate::version_key::VersionKey;
use agent_proto::KeyType;

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The key as the store now has it.
    pub key: Arc<Key>,
    /// How many versions it did not have before (0: the import changed
    /// nothing, e.g. the same file imported again).
    pub added: u32,
    /// Whether the key was new to this store.
    pub created: bool,
}

impl KeyStore {
    /// Adds `material`, a key from another host, through one durable
    /// transaction (`Change::Import`):
    ///
    /// - a key id this store lacks is added whole (its name must be free;
    ///   a name held by another id is refused naming both);
    /// - a key id it has gets the versions after its latest; every version
    ///   both have must hold the same KEK (or be revoked on one side),
    ///   else the import is refused;
    /// - a version revoked here stays revoked, and the key's state,
    ///   minimum decryption version, description, tags and rotation period
    ///   here are kept; a key revoked here is refused;
    /// - a new key pending deletion in the file arrives disabled
    ///   ([`KeyMaterial::arriving`]).
    pub fn import_key(&self, material: &KeyMaterial) -> Result<Imported, StoreError> {
        check_material(material)?;
        let mut writer = self.writer();
        let keys = self.keys.load_full();
        match keys.by_id(material.id) {
            Some(existing) => self.import_into(&mut writer, existing, material),
            None => {
                if let Some(holder) = keys.by_name(&material.name) {
                    return Err(StoreError::ImportRefused(format!(
                        "the file's key \"{}\" has id {}, but this host's key \"{}\" has id {}: they are different keys. Key names are never reused; create the key here under another name, or rename nothing and leave the two apart",
                        material.name, material.id, holder.name, holder.id
                    )));
                }
                self.import_new(&mut writer, material)
            }
        }
    }

    fn import_new(
        &self,
        writer: &mut Writer,
        material: &KeyMaterial,
    ) -> Result<Imported, StoreError> {
        let versions = material
            .versions
            .iter()
            .map(|v| Self::imported_version(writer, material.id, material.key_type, v))
            .collect::<Result<Vec<_>, _>>()?;
        let (state, settings) = material.arriving();
        let key = Key {
            id: material.id,
            name: material.name.clone(),
            created: material.created,
            key_type: material.key_type,
            state,
            min_decryption_version: material.min_decryption_version,
            versions: versions.into_iter().map(Arc::new).collect(),
            description: settings.description,
            tags: settings.tags,
            rotation_period: settings.rotation_period,
            deletion_due: None,
        };
        let rows: Vec<Arc<Version>> = key.versions.clone();
        let rows: Vec<&Version> = rows.iter().map(Arc::as_ref).collect();
        let added = key.latest_version();
        let key = self.commit(writer, key, &rows, Change::Import)?;
        Ok(Imported {
            key,
            added,
            created: true,
        })
    }

    fn import_into(
        &self,
        writer: &mut Writer,
        existing: &Arc<Key>,
        material: &KeyMaterial,
    ) -> Result<Imported, StoreError> {
        let refuse = |detail: String| {
            StoreError::ImportRefused(format!(
                "key \"{}\" (id {}) exists on this host and {detail}; nothing was imported",
                existing.name, existing.id
            ))
        };
        if existing.name != material.name {
            return Err(refuse(format!(
                "is named \"{}\" in the file: the same id under another name is not the same key",
                material.name
            )));
        }
        if existing.key_type != material.key_type {
            return Err(refuse(format!(
                "is an {} key here but an {} key in the file: the same id with another type is not the same key",
                existing.key_type, material.key_type
            )));
        }
        if existing.state == KeyState::Revoked {
            return Err(StoreError::KeyRevoked(existing.name.clone()));
        }
        let ours = material_keks(writer, existing)?;
        for (version, mine) in material.versions.iter().zip(ours.iter()) {
            if let (Some(theirs), Some(mine)) = (&version.kek, mine) {
                if !same_kek(theirs, mine) {
                    return Err(refuse(format!(
                        "its version {} holds different key material than the file's: the two hosts' keys diverged (one was created or rotated apart from the other). Do not import; find out which host's version {0} made your ciphertexts",
                        version.number
                    )));
                }
            }
        }
        let latest = existing.latest_version();
        let new: Vec<Arc<Version>> = material
            .versions
            .iter()
            .filter(|v| v.number > latest)
            .map(|v| {
                Self::imported_version(writer, existing.id, existing.key_type, v).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        if new.is_empty() {
            return Ok(Imported {
                key: Arc::clone(existing),
                added: 0,
                created: false,
            });
        }
        let mut next = Key::clone(existing);
        next.versions.extend(new.iter().cloned());
        let rows: Vec<&Version> = new.iter().map(Arc::as_ref).collect();
        let added = new.len() as u32;
        let key = self.commit(writer, next, &rows, Change::Import)?;
        Ok(Imported {
            key,
            added,
            created: false,
        })
    }

    /// A version from another host: its KEK sealed under this root key, or
    /// a tombstone; a signing version with its public key.
    fn imported_version(
        writer: &mut Writer,
        id: KeyId,
        key_type: KeyType,
        version: &VersionMaterial,
    ) -> Result<Version, StoreError> {
        let number = version.number;
        let (kek, sealed) = match &version.kek {
            Some(material) => {
                let sealed = writer
                    .secrets
                    .seal_kek(id, number, material)
                    .map_err(StoreError::Random)?;
                let sealed: [u8; SEALED_KEK_LEN] = sealed.try_into().map_err(|_| {
                    StoreError::Random("a sealed KEK of the wrong length".to_string())
                })?;
                let key = VersionKey::from_seed(key_type, material).map_err(|e| {
                    StoreError::InvalidArgument(format!("version {number} of the key: {e}"))
                })?;
                (Some(key), Some(sealed))
            }
            None => (None, None),
        };
        let public_key = checked_public_key(key_type, kek.as_ref(), version.public_key.as_deref())
            .map_err(|e| {
                StoreError::InvalidArgument(format!("version {number} of the key: {e}"))
            })?;
        Ok(Version {
            number,
            created: version.created,
            key: kek,
            public_key,
            sealed: std::sync::Mutex::new(sealed),
            encryptions: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            limit_alerted: AtomicBool::new(false),
        })
    }
}

/// The KEKs of `key` in clear (`None` for revoked versions), under the
/// writer lock already held.
fn material_keks(
    writer: &Writer,
    key: &Key,
) -> Result<Vec<Option<zeroize::Zeroizing<[u8; KEK_LEN]>>>, StoreError> {
    super::material::material_of(&writer.secrets, key)
        .map(|m| m.versions.into_iter().map(|v| v.kek).collect())
}

/// Compares two KEKs without an early exit.
fn same_kek(a: &[u8; KEK_LEN], b: &[u8; KEK_LEN]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Refuses material no store could hold: a bad name, no versions, versions
/// not numbered 1..n, a revoked key, a minimum decryption version out of
/// range, or a latest version without its KEK.
fn check_material(material: &KeyMaterial) -> Result<(), StoreError> {
    let bad = |problem: String| {
        StoreError::InvalidArgument(format!(
            "the imported key \"{}\" cannot be stored: {problem}",
            material.name.chars().take(128).collect::<String>()
        ))
    };
    check_name(&material.name)?;
    if material.versions.is_empty() {
        return Err(bad("it has no version".to_string()));
    }
    for (i, version) in material.versions.iter().enumerate() {
        if version.number as usize != i + 1 {
            return Err(bad(format!(
                "its versions are not numbered 1 to {}",
                material.versions.len()
            )));
        }
    }
    if material.state == KeyState::Revoked {
        return Err(bad(
            "it is revoked; a revoked key is never imported".to_string()
        ));
    }
    material
        .settings
        .check()
        .map_err(|e| bad(format!("its settings break a limit: {e}")))?;
    let latest = material.versions.len() as u32;
    if !(1..=latest).contains(&material.min_decryption_version) {
        return Err(bad(format!(
            "its minimum decryption version {} is not between 1 and its latest version {latest}",
            material.min_decryption_version
        )));
    }
    if material.versions.last().is_some_and(|v| v.kek.is_none()) {
        return Err(bad(
            "its latest version has no key material (a key's latest version is never revoked)"
                .to_string(),
        ));
    }
    Ok(())
}
