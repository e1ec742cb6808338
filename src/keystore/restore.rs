//! Restoring keys from a backup: [`KeyStore::restore`] imports the keys of a
//! recovery bundle (their material in clear, as the bundle identity opened
//! them) in one transaction, each KEK sealed under this store's root key,
//! keeping ids, names, creation times, states, minimum decryption versions
//! and revoked versions as tombstones, so every ciphertext of the old host
//! unwraps here and nothing revoked there comes back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use agent_proto::{KeyState, KeyType};

use super::sealing::SEALED_KEK_LEN;
use super::{Change, Key, KeyMaterial, KeyStore, StoreError, Version, check_name};
use crate::envelope::KeyId;
use crate::version_key::VersionKey;

/// A key of a restore: its name, id and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredKey {
    /// The key's name.
    pub name: String,
    /// The key's id.
    pub id: KeyId,
    /// The key's type.
    pub key_type: KeyType,
    /// The date (Unix seconds) the key was to be deleted on, when the
    /// backup has it pending deletion: it is restored disabled, and the
    /// operator schedules the deletion again if still wanted.
    pub was_pending_deletion: Option<u64>,
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The keys added to the store.
    pub added: Vec<RestoredKey>,
    /// The versions the added keys hold, live and revoked.
    pub versions: usize,
    /// Of those, the revoked ones, kept as tombstones.
    pub revoked_versions: usize,
    /// The backup's keys left out under `--merge` because the store holds
    /// a key with their id already (never overwritten): each with the name
    /// the store knows it by.
    pub kept: Vec<RestoredKey>,
}

/// Why a restore imported nothing. The store is as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreRefused {
    /// The store holds keys and no merge was asked for.
    #[error(
        "the key store {path} holds {keys} keys already; restore changed nothing. Restore into a new state dir (an empty store), or pass --merge to add the backup's keys to these (a key whose id the store holds is kept as it is, never overwritten)"
    )]
    NotEmpty {
        /// The key store file.
        path: String,
        /// How many keys it holds.
        keys: usize,
    },
    /// A backup key's name is held by another key of the store.
    #[error(
        "the backup's key {backup_name:?} (id {backup_id}) has the name of another key in the store, {store_name:?} (id {store_id}); names are never reused, so restore changed nothing. Restore into a new state dir instead of merging into this one"
    )]
    NameTaken {
        /// The backup key's name (the same as the store's).
        backup_name: String,
        /// The backup key's id.
        backup_id: KeyId,
        /// The store key's name.
        store_name: String,
        /// The store key's id.
        store_id: KeyId,
    },
    /// A backup key has the id of a key of the store of another type: not
    /// the same key, whatever its id says.
    #[error(
        "the backup's key {name:?} (id {id}) is an {backup_type} key, but the store's key with that id, {store_name:?}, is an {store_type} key; a key's type never changes, so they are not the same key and restore changed nothing. Restore into a new state dir instead of merging into this one"
    )]
    TypeDiffers {
        /// The backup key's name.
        name: String,
        /// The id both have.
        id: KeyId,
        /// The backup key's type.
        backup_type: KeyType,
        /// The store key's name.
        store_name: String,
        /// The store key's type.
        store_type: KeyType,
    },
    /// A backup key is not one hostkms could have written.
    #[error(
        "the backup's key {name:?} (id {id}) {problem}; hostkms writes no such key, so restore changed nothing"
    )]
    Invalid {
        /// The key's name.
        name: String,
        /// The key's id.
        id: KeyId,
        /// What is wrong with it.
        problem: String,
    },
    /// The key store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyStore {
    /// Imports `keys` in one durable transaction: all of them or, on any
    /// refusal or failure, none. A store that holds keys is refused unless
    /// `merge`; with `merge`, a key whose id the store holds is left as the
    /// store has it (reported in [`Restored::kept`]) and a key whose name
    /// another key of the store holds refuses the whole restore. Each
    /// added key is then reported to the change sink as
    /// [`Change::Restore`].
    pub fn restore(&self, keys: Vec<KeyMaterial>, merge: bool) -> Result<Restored, RestoreRefused> {
        let mut writer = self.writer();
        let current = self.keys.load_full();
        if !merge && !current.is_empty() {
            return Err(RestoreRefused::NotEmpty {
                path: self.path.display().to_string(),
                keys: current.len(),
            });
        }
        let mut restored = Restored::default();
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut adding = Vec::new();
        for material in keys {
            let invalid = |problem: String| RestoreRefused::Invalid {
                name: material.name.clone(),
                id: material.id,
                problem,
            };
            if !ids.insert(material.id) {
                return Err(invalid("appears twice in the backup".to_string()));
            }
            if !names.insert(material.name.clone()) {
                return Err(invalid(
                    "shares its name with another key of the backup".to_string(),
                ));
            }
            if let Some(existing) = current.by_id(material.id) {
                if existing.key_type != material.key_type {
                    return Err(RestoreRefused::TypeDiffers {
                        name: material.name.clone(),
                        id: material.id,
                        backup_type: material.key_type,
                        store_name: existing.name.clone(),
                        store_type: existing.key_type,
                    });
                }
                restored.kept.push(RestoredKey {
                    name: existing.name.clone(),
                    id: existing.id,
                    key_type: existing.key_type,
                    was_pending_deletion: None,
                });
                continue;
            }
            if let Some(existing) = current.by_name(&material.name) {
                return Err(RestoreRefused::NameTaken {
                    backup_name: material.name.clone(),
                    backup_id: material.id,
                    store_name: existing.name.clone(),
                    store_id: existing.id,
                });
            }
            check_material(&material).map_err(invalid)?;
            let mut versions = Vec::with_capacity(material.versions.len());
            for version in &material.versions {
                let (kek, sealed) = match &version.kek {
                    Some(kek) => {
                        let sealed = writer
                            .secrets
                            .seal_kek(material.id, version.number, kek)
                            .map_err(StoreError::Random)?;
                        let sealed: [u8; SEALED_KEK_LEN] = sealed.try_into().map_err(|_| {
                            StoreError::Random("a sealed KEK of the wrong length".to_string())
                        })?;
                        let key = VersionKey::from_seed(material.key_type, kek)
                            .map_err(|e| invalid(format!("version {}: {e}", version.number)))?;
                        (Some(key), Some(sealed))
                    }
                    None => {
                        restored.revoked_versions += 1;
                        (None, None)
                    }
                };
                let public_key = super::model::checked_public_key(
                    material.key_type,
                    kek.as_ref(),
                    version.public_key.as_deref(),
                )
                .map_err(|e| invalid(format!("version {}: {e}", version.number)))?;
                versions.push(Arc::new(Version {
                    number: version.number,
                    created: version.created,
                    key: kek,
                    public_key,
                    sealed: Mutex::new(sealed),
                    // The old host's counts are not in the record: each
                    // version counts afresh here. Only the latest version
                    // encrypts, and it rotates itself at
                    // rotate_after_encryptions (2^30 by default) on either
                    // host, so together they stay below the 2^32 random
                    // nonces NIST SP 800-38D allows a key.
                    encryptions: AtomicU64::new(0),
                    reserved: AtomicU64::new(0),
                    limit_alerted: AtomicBool::new(false),
                }));
            }
            restored.versions += versions.len();
            let (state, settings) = material.arriving();
            restored.added.push(RestoredKey {
                name: material.name.clone(),
                id: material.id,
                key_type: material.key_type,
                was_pending_deletion: material.settings.deletion_due.map(|due| due.wall),
            });
            adding.push(Key {
                id: material.id,
                name: material.name.clone(),
                created: material.created,
                key_type: material.key_type,
                state,
                min_decryption_version: material.min_decryption_version,
                versions,
                description: settings.description,
                tags: settings.tags,
                rotation_period: settings.rotation_period,
                deletion_due: None,
            });
        }
        let changed = adding
            .into_iter()
            .map(|key| {
                let numbers = (1..=key.latest_version()).collect();
                (key, numbers)
            })
            .collect();
        self.commit_keys(&mut writer, changed, Change::Restore)?;
        Ok(restored)
    }
}

/// Checks that `material` is a key hostkms could have written: a valid
/// name, versions numbered 1 to n, a minimum decryption version among them,
/// no live version in a revoked key, a deletion date exactly when pending
/// deletion, and settings within the limits.
fn check_material(material: &KeyMaterial) -> Result<(), String> {
    check_name(&material.name).map_err(|e| e.to_string())?;
    if material.versions.is_empty() {
        return Err("has no versions".to_string());
    }
    for (index, version) in material.versions.iter().enumerate() {
        if version.number as usize != index + 1 {
            return Err(format!(
                "lists version {} where version {} belongs",
                version.number,
                index + 1
            ));
        }
    }
    let latest = material.versions.len() as u32;
    if !(1..=latest).contains(&material.min_decryption_version) {
        return Err(format!(
            "has minimum decryption version {} outside its versions 1 to {latest}",
            material.min_decryption_version
        ));
    }
    if material.state == KeyState::Revoked && material.versions.iter().any(|v| v.kek.is_some()) {
        return Err("is revoked but holds a live version".to_string());
    }
    if (material.state == KeyState::PendingDeletion) != material.settings.deletion_due.is_some() {
        return Err("has a state and a deletion date that disagree".to_string());
    }
    material
        .settings
        .check()
        .map_err(|e| format!("has settings breaking a limit: {e}"))
}

#[cfg(test)]
mod tests {

    use agent_proto::{EncryptionContext, KeyState};
    use zeroize::Zeroizing;

    use super::*;
    use crate::envelope;
    use crate::keystore::VersionMaterial;
    use crate::keystore::test_host::{self, Host};

    fn ctx() -> EncryptionContext {
        [("a".to_string(), "b".to_string())].into_iter().collect()
    }

    fn wrap(store: &KeyStore, name: &str, plaintext: &[u8]) -> Vec<u8> {
        test_host::wrap(store, name, plaintext, &ctx())
    }

    fn unwrap(store: &KeyStore, name: &str, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let keys = store.keys();
        let key = keys.by_name(name).unwrap();
        let header = envelope::read_header(ciphertext).ok()?;
        let cipher = key.version(header.version)?.cipher()?;
        envelope::unwrap(cipher, ciphertext, &ctx())
            .ok()
            .map(|p| p.to_vec())
    }

    /// Host A with a rotated key whose version 1 is revoked, a disabled
    /// key and a revoked key: its keys' material, and a ciphertext of each
    /// live version.
    fn old_host() -> (Vec<KeyMaterial>, Vec<(String, Vec<u8>)>) {
        let a = Host::new(1);
        let store = a.open();
        let mut samples = Vec::new();
        for name in ["db", "cold", "gone"] {
            store.create(name).unwrap();
            samples.push((name.to_string(), wrap(&store, name, name.as_bytes())));
        }
        store.rotate("db").unwrap();
        samples.push(("db".to_string(), wrap(&store, "db", b"db v2")));
        store.revoke("db", Some(1)).unwrap();
        store.set_min_decryption_version("db", 2).unwrap();
        store.set_enabled("cold", false).unwrap();
        store.revoke("gone", None).unwrap();
        let material = store.with_all_material(|keys| keys.to_vec()).unwrap();
        (material, samples)
    }

    #[test]
    fn a_restore_keeps_ids_names_versions_states_and_unwraps_under_another_root_key() {
        let (material, samples) = old_host();
        let b = Host::new(2);
        let store = b.open();
        let restored = store.restore(material.clone(), false).unwrap();
        assert_eq!(restored.added.len(), 3);
        assert_eq!(restored.versions, 4);
        assert_eq!(restored.revoked_versions, 2, "db v1 and gone v1");
        assert!(restored.kept.is_empty());
        // After a reopen: durable, and every row verifies under B's root key.
        drop(store);
        let store = b.open();
        for original in &material {
            let keys = store.keys();
            let key = keys.by_id(original.id).unwrap();
            assert_eq!(key.name(), original.name);
            assert_eq!(key.state(), original.state);
            assert_eq!(
                key.min_decryption_version(),
                original.min_decryption_version
            );
            assert_eq!(key.latest_version() as usize, original.versions.len());
            for version in &original.versions {
                assert_eq!(
                    key.version(version.number).unwrap().is_revoked(),
                    version.kek.is_none()
                );
            }
        }
        assert_eq!(
            store.keys().by_name("cold").unwrap().state(),
            KeyState::Disabled
        );
        assert_eq!(
            store.keys().by_name("gone").unwrap().state(),
            KeyState::Revoked
        );
        for (name, ciphertext) in &samples {
            let opened = unwrap(&store, name, ciphertext);
            match name.as_str() {
                "gone" => assert_eq!(opened, None, "a revoked key stays revoked"),
                "db" if envelope::read_header(ciphertext).unwrap().version == 1 => {
                    assert_eq!(opened, None, "a revoked version stays revoked")
                }
                _ => assert!(opened.is_some(), "{name}"),
            }
        }
        assert_eq!(
            unwrap(&store, "db", &samples[3].1).as_deref(),
            Some(&b"db v2"[..])
        );
    }

    #[test]
    fn a_store_with_keys_needs_merge_which_keeps_existing_ids_and_refuses_taken_names() {
        let (material, _) = old_host();
        let b = Host::new(2);
        let store = b.open();
        store.create("local").unwrap();
        let err = store.restore(material.clone(), false).unwrap_err();
        assert!(
            matches!(err, RestoreRefused::NotEmpty { keys: 1, .. }),
            "{err}"
        );
        assert_eq!(store.keys().len(), 1);

        let restored = store.restore(material.clone(), true).unwrap();
        assert_eq!(restored.added.len(), 3);
        let again = store.restore(material.clone(), true).unwrap();
        assert!(again.added.is_empty());
        assert_eq!(
            again.kept.len(),
            3,
            "existing ids are kept, not overwritten"
        );

        let c = Host::new(3);
        let store = c.open();
        let taken = store.create("db").unwrap();
        let err = store.restore(material, true).unwrap_err();
        let RestoreRefused::NameTaken {
            store_id,
            backup_name,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!((*store_id, backup_name.as_str()), (taken.id(), "db"));
        assert!(err.to_string().contains(&taken.id().to_string()), "{err}");
        drop(store);
        assert_eq!(c.open().keys().len(), 1, "nothing imported");
    }

    #[test]
    fn an_impossible_key_imports_nothing() {
        let (material, _) = old_host();
        let b = Host::new(2);
        let kek = || Some(Zeroizing::new([7u8; 32]));
        let mut broken = material.clone();
        broken[1].versions[0].number = 2;
        let mut revoked_live = material.clone();
        let gone = revoked_live
            .iter_mut()
            .find(|k| k.state == KeyState::Revoked)
            .unwrap();
        gone.versions[0].kek = kek();
        let mut min_too_high = material.clone();
        min_too_high[0].min_decryption_version = 9;
        let mut bad_name = material.clone();
        bad_name[0].name = "has space".to_string();
        let mut twice = material.clone();
        twice.push(material[0].clone());
        let mut no_versions = material.clone();
        no_versions[2].versions.clear();
        let _ = VersionMaterial {
            number: 1,
            created: 0,
            kek: kek(),
            public_key: None,
        };
        for keys in [
            broken,
            revoked_live,
            min_too_high,
            bad_name,
            twice,
            no_versions,
        ] {
            let store = b.open();
            let err = store.restore(keys, false).unwrap_err();
            assert!(matches!(err, RestoreRefused::Invalid { .. }), "{err}");
            assert!(store.keys().is_empty());
        }
        drop(b.open());
    }

    /// Host A with an ed25519 key (version 1 revoked) and an hmac-sha512
    /// key: their material.
    fn typed_host() -> Vec<KeyMaterial> {
        let a = Host::new(1);
        let store = a.open();
        store.create_typed("rel", KeyType::Ed25519).unwrap();
        store.rotate("rel").unwrap();
        store.revoke("rel", Some(1)).unwrap();
        store.create_typed("tok", KeyType::HmacSha512).unwrap();
        store.with_all_material(|keys| keys.to_vec()).unwrap()
    }

    #[test]
    fn a_restore_keeps_each_key_type_secret_and_public_key_revoked_ones_included() {
        let material = typed_host();
        let b = Host::new(2);
        let store = b.open();
        store.restore(material.clone(), false).unwrap();
        drop(store);
        let store = b.open();
        let keys = store.keys();
        let rel = keys.by_name("rel").unwrap();
        assert_eq!(rel.key_type(), KeyType::Ed25519);
        let original = material.iter().find(|k| k.name == "rel").unwrap();
        assert!(original.versions[0].kek.is_none());
        for (version, original) in rel.versions.iter().zip(&original.versions) {
            assert_eq!(
                version.public_key_der(),
                original.public_key.as_deref(),
                "version {}",
                version.number()
            );
            assert!(version.public_key_der().is_some());
        }
        assert!(rel.version(1).unwrap().is_revoked());
        let tok = keys.by_name("tok").unwrap();
        assert_eq!(tok.key_type(), KeyType::HmacSha512);
        let original = material.iter().find(|k| k.name == "tok").unwrap();
        let seed = original.versions[0].kek.as_ref().unwrap();
        let expected = VersionKey::from_seed(KeyType::HmacSha512, seed)
            .unwrap()
            .mac(b"m")
            .unwrap();
        let restored = tok.latest().unwrap().key().unwrap().mac(b"m").unwrap();
        assert_eq!(restored, expected, "the same HMAC key");
    }

    #[test]
    fn merging_a_key_into_a_store_key_of_another_type_with_its_id_is_refused() {
        let material = typed_host();
        let b = Host::new(2);
        let store = b.open();
        store.restore(material.clone(), false).unwrap();
        let mut retyped = material.clone();
        let tok = retyped.iter_mut().find(|k| k.name == "tok").unwrap();
        tok.key_type = KeyType::HmacSha256;
        let err = store.restore(retyped, true).unwrap_err();
        assert!(
            matches!(
                &err,
                RestoreRefused::TypeDiffers {
                    backup_type: KeyType::HmacSha256,
                    store_type: KeyType::HmacSha512,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("hmac-sha512"), "{err}");
    }

    #[test]
    fn a_key_whose_public_keys_contradict_its_type_or_secret_imports_nothing() {
        let material = typed_host();
        let rel = material.iter().position(|k| k.name == "rel").unwrap();
        let tok = material.iter().position(|k| k.name == "tok").unwrap();
        let mut wrong_public = material.clone();
        wrong_public[rel].versions[1].public_key = wrong_public[rel].versions[0].public_key.clone();
        let mut revoked_without = material.clone();
        revoked_without[rel].versions[0].public_key = None;
        let mut hmac_with = material.clone();
        hmac_with[tok].versions[0].public_key = Some(vec![0x30, 0x00]);
        let mut retyped = material.clone();
        retyped[tok].key_type = KeyType::Ed25519;
        let mut other_algorithm = material.clone();
        other_algorithm[rel].versions[0].public_key = Some(
            VersionKey::from_seed(KeyType::EcdsaP256, &[3; 32])
                .unwrap()
                .public_key_der()
                .unwrap()
                .to_vec(),
        );
        let mut garbage = material.clone();
        garbage[rel].versions[0].public_key = Some(vec![0x30, 0x00]);
        let b = Host::new(2);
        for (keys, expected) in [
            (
                wrong_public,
                "version 2: its public key is not the one its secret gives",
            ),
            (revoked_without, "version 1: lacks its public key"),
            (
                hmac_with,
                "version 1: has a public key but its key type has none",
            ),
            (retyped, "version 1: lacks its public key"),
            (
                other_algorithm,
                "version 1: its public key is not a public key of its key type",
            ),
            (
                garbage,
                "version 1: its public key is not a public key of its key type",
            ),
        ] {
            let store = b.open();
            let err = store.restore(keys, false).unwrap_err();
            let RestoreRefused::Invalid { problem, .. } = &err else {
                panic!("{err}");
            };
            assert_eq!(problem, expected);
            assert!(store.keys().is_empty());
        }
    }

    #[test]
    fn a_key_pending_deletion_comes_back_disabled_with_its_metadata_through_its_record() {
        use crate::recovery::record::{self, MacKey};
        let a = Host::new(1);
        let store = a.open();
        let settings = crate::keystore::NewKeySettings {
            rotation_period: Some(30 * 86_400),
            description: "orders DB".into(),
            tags: [("env".to_string(), "prod".to_string())].into(),
        };
        store
            .create_with("orders", KeyType::Aes256Gcm, settings.clone())
            .unwrap();
        store.create("plain").unwrap();
        let sample = wrap(&store, "orders", b"order 1");
        let due = store.deletion_due_in(7).unwrap();
        store.schedule_deletion("orders", due).unwrap();
        // Through the recovery directory's record, as a restore reads it.
        let mac = MacKey::for_records(&[5; 32]);
        let material: Vec<KeyMaterial> = store
            .with_all_material(|keys| keys.to_vec())
            .unwrap()
            .iter()
            .map(|m| {
                let text = record::encode(m, 1, &mac).unwrap();
                record::decode(&text, &mac).unwrap().material
            })
            .collect();
        let b = Host::new(2);
        let restored = b.open().restore(material, false).unwrap();
        let by_name = |name: &str| {
            restored
                .added
                .iter()
                .find(|k| k.name == name)
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("orders").was_pending_deletion, Some(due.wall));
        assert_eq!(by_name("plain").was_pending_deletion, None);
        // Durable: a reopened store has it disabled, without a deletion,
        // with its description, tags and rotation period.
        let store = b.open();
        let keys = store.keys();
        let orders = keys.by_name("orders").unwrap();
        assert_eq!(orders.state(), KeyState::Disabled);
        assert_eq!(orders.deletion_due(), None);
        assert_eq!(orders.description(), settings.description);
        assert_eq!(orders.tags(), &settings.tags);
        assert_eq!(orders.rotation_period(), settings.rotation_period);
        assert_eq!(keys.by_name("plain").unwrap().state(), KeyState::Enabled);
        // Nothing lost: enabled again, it unwraps what it wrapped.
        store.set_enabled("orders", true).unwrap();
        assert_eq!(unwrap(&store, "orders", &sample).unwrap(), b"order 1");
    }
}
