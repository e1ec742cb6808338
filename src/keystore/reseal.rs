//! Root-key rotation, the key store's side: every KEK and every row MAC
//! re-sealed under a new root key, with the store's recorded root key check
//! value, in one SQLite transaction.
//!
//! The order is what makes a crash harmless (the files' side is in
//! `rootkey`): the new key is sealed to the TPM and written as the next
//! blobs first, without the writer lock; then the one transaction; then
//! the next blobs are renamed into place. Until the transaction commits the
//! old key is in force and the next blobs are garbage; from the commit on
//! the new key is, and a start finishes the renames. KEKs themselves do not
//! change, so every ciphertext still unwraps.

use std::sync::{Arc, TryLockError};

use super::db::{
    self, DAEMON_CLOCK, DbError, KeyRow, ROOT_KEY_CHECK, SecretRow, Stored, VersionRow,
};
use super::lifecycle::daemon_clock_row;
use super::sealing::{SEALED_KEK_LEN, StoreSecrets};
use super::{KeyStore, StoreError, Writer};
use crate::envelope::KeyId;
use crate::rootkey::RootSealer;

/// What a root-key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotation {
    /// Check value of the root key that was in force.
    pub old_check: String,
    /// Check value of the root key now in force.
    pub new_check: String,
    /// Keys whose rows were re-authenticated.
    pub keys: u32,
    /// Versions whose rows were re-authenticated (their live KEKs re-sealed).
    pub versions: u32,
}

/// The rows re-sealed under the new root key, for the transaction, and the
/// sealed KEKs to put in memory once it has committed.
struct Resealed {
    keys: Vec<(KeyRow, [u8; 32])>,
    versions: Vec<(VersionRow, [u8; 32])>,
    secrets: Vec<(SecretRow, [u8; 32])>,
    sealed: Vec<(KeyId, u32, [u8; SEALED_KEK_LEN])>,
}

impl KeyStore {
    /// Rotates the root key through `sealer`: seals a new one (TPM work,
    /// before the writer lock), re-seals every KEK and row MAC under it in
    /// one transaction, then puts its blobs in place. Refuses while another
    /// rotation runs. On any failure before the commit the old key stays in
    /// force and the next blobs are deleted; a failure after it (the blobs
    /// could not be renamed) leaves the new key in force, and the next start
    /// finishes the renames.
    pub fn rotate_root(&self, sealer: &dyn RootSealer) -> Result<RootRotation, StoreError> {
        let _rotation = match self.rotation.try_lock() {
            Ok(guard) => guard,
            // Only a rotation that panicked; its transaction rolled back.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(StoreError::RotationRunning),
        };
        let next = sealer
            .seal_next()
            .map_err(|e| StoreError::RootKey(Box::new(e)))?;
        let new_check = next.check_value();
        let derived = StoreSecrets::derive(&next);
        // The derived keys are all the store needs; the key itself is wiped.
        drop(next);
        let secrets = match derived {
            Ok(secrets) => secrets,
            Err(e) => {
                discard(sealer);
                return Err(self.db_error(DbError::Corrupt(e)));
            }
        };
        let mut writer = self.writer();
        let old_check = self.root_key_check().to_string();
        let resealed = match self.reseal_locked(&mut writer, &secrets, &new_check) {
            Ok(resealed) => resealed,
            Err(e) => {
                drop(writer);
                discard(sealer);
                return Err(e);
            }
        };
        // Committed: from here on the store is sealed under the new key,
        // whatever happens to the files.
        writer.secrets = secrets;
        writer.sealed = resealed
            .secrets
            .iter()
            .map(|(row, _)| (row.name.clone(), row.sealed.clone()))
            .collect();
        let keys = self.keys.load();
        for (id, number, sealed) in &resealed.sealed {
            if let Some(version) = keys.by_id(*id).and_then(|key| key.version(*number)) {
                version.set_sealed_kek(*sealed);
            }
        }
        self.root_key_check.store(Arc::new(new_check.clone()));
        let promoted = sealer.promote_next();
        drop(writer);
        let rotation = RootRotation {
            old_check,
            new_check: new_check.clone(),
            keys: resealed.keys.len() as u32,
            versions: resealed.versions.len() as u32,
        };
        match promoted {
            Ok(()) => Ok(rotation),
            Err(source) => Err(StoreError::RootKeyNotInPlace {
                old_check: rotation.old_check,
                new_check,
                source: Box::new(source),
            }),
        }
    }

    /// The transaction: every row (keys, versions, secrets) read, verified
    /// under the root key in force (a row edited on disk is refused, never
    /// re-authenticated), re-sealed and re-MACed under `next`, with the
    /// daemon clock and the new check value. A table added later that is MACed or sealed under the
    /// root key must be re-sealed here too.
    fn reseal_locked(
        &self,
        writer: &mut Writer,
        next: &StoreSecrets,
        new_check: &str,
    ) -> Result<Resealed, StoreError> {
        let (key_rows, version_rows) = writer.db.load().map_err(|e| self.db_error(e))?;
        let secret_rows = writer.db.load_secrets().map_err(|e| self.db_error(e))?;
        let path = self.path.display().to_string();
        let mut resealed = reseal_rows(&path, &writer.secrets, next, key_rows, version_rows)?;
        resealed.secrets = reseal_secrets(&path, &writer.secrets, next, secret_rows)?;
        // A rotation takes access away (the retired root key and every
        // state dir sealed under it): `S + 1` in its transaction, so a
        // pre-rotation state dir put back is refused as a rollback once the
        // TPM has counted.
        let rollback = self.next_rollback_row(writer, &self.keys.load(), true);
        let daemon_clock = daemon_clock_row(next, self.daemon_clock());
        writer
            .db
            .transaction(|tx| {
                for (row, mac) in &resealed.keys {
                    db::put_key(tx, row, mac)?;
                }
                for (row, mac) in &resealed.versions {
                    db::put_version(tx, row, mac)?;
                }
                for (row, mac) in &resealed.secrets {
                    db::put_secret(tx, row, mac)?;
                }
                if let Some((_, text)) = &rollback {
                    super::rollback::put_row(tx, text)?;
                }
                // The value in memory, verified at open or written since
                // (the writer lock keeps it still): a row edited on disk is
                // not re-authenticated.
                db::put_meta(tx, DAEMON_CLOCK, &daemon_clock)?;
                db::put_meta(tx, ROOT_KEY_CHECK, new_check)
            })
            .map_err(|e| self.db_error(e))?;
        if let Some((row, _)) = rollback {
            self.rollback_committed(writer, row);
        }
        Ok(resealed)
    }
}

/// Deletes the next blobs of a rotation the store did not commit to; a
/// failure is logged, and the next start deletes them.
fn discard(sealer: &dyn RootSealer) {
    if let Err(e) = sealer.discard_next() {
        tracing::warn!(
            error = %e,
            "could not delete the blobs of the root key that was not put in force; the next start deletes them"
        );
    }
}

/// Every row verified under `current` and re-sealed under `next`.
fn reseal_rows(
    path: &str,
    current: &StoreSecrets,
    next: &StoreSecrets,
    key_rows: Vec<Stored<KeyRow>>,
    version_rows: Vec<Stored<VersionRow>>,
) -> Result<Resealed, StoreError> {
    let tampered = |key: String, detail: String| StoreError::Tampered {
        path: path.to_string(),
        key,
        detail,
    };
    let mut keys = Vec::with_capacity(key_rows.len());
    for Stored { row, mac } in key_rows {
        // A row keeps its label: bound stays bound.
        let Some(bound) = [true, false]
            .into_iter()
            .find(|bound| current.row_mac_matches(&row.canonical_as(*bound), &mac))
        else {
            return Err(tampered(
                format!("\"{}\" (id {})", row.name, row.id),
                "fails authentication under the root key".to_string(),
            ));
        };
        let mac = next.row_mac(&row.canonical_as(bound));
        keys.push((row, mac));
    }
    let mut versions = Vec::with_capacity(version_rows.len());
    let mut sealed = Vec::new();
    for Stored { mut row, mac } in version_rows {
        let which = |detail: &str| {
            tampered(
                format!("id {}", row.key_id),
                format!("version {}: {detail}", row.version),
            )
        };
        if !current.row_mac_matches(&row.canonical(), &mac) {
            return Err(which("fails authentication under the root key"));
        }
        if let Some(old) = &row.sealed_kek {
            let kek = current
                .open_kek(row.key_id, row.version, old)
                .map_err(|_| which("its KEK does not open under the root key"))?;
            let resealed = next
                .seal_kek(row.key_id, row.version, &kek)
                .map_err(StoreError::Random)?;
            let fixed: [u8; SEALED_KEK_LEN] = resealed
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Random("a sealed KEK of the wrong length".to_string()))?;
            sealed.push((row.key_id, row.version, fixed));
            row.sealed_kek = Some(resealed);
        }
        let mac = next.row_mac(&row.canonical());
        versions.push((row, mac));
    }
    Ok(Resealed {
        keys,
        versions,
        secrets: Vec::new(),
        sealed,
    })
}

/// Every sealed secret verified and opened under `current`, sealed again
/// under `next`.
fn reseal_secrets(
    path: &str,
    current: &StoreSecrets,
    next: &StoreSecrets,
    rows: Vec<Stored<SecretRow>>,
) -> Result<Vec<(SecretRow, [u8; 32])>, StoreError> {
    let mut resealed = Vec::with_capacity(rows.len());
    for Stored { mut row, mac } in rows {
        let tampered = |detail: &str| StoreError::Tampered {
            path: path.to_string(),
            key: format!("(secret {:?})", row.name),
            detail: detail.to_string(),
        };
        if !current.row_mac_matches(&row.canonical(), &mac) {
            return Err(tampered("fails authentication under the root key"));
        }
        let secret = current
            .open_secret(&row.name, &row.sealed)
            .map_err(|_| tampered("does not open under the root key"))?;
        row.sealed = next
            .seal_secret(&row.name, &secret)
            .map_err(StoreError::Random)?;
        let mac = next.row_mac(&row.canonical());
        resealed.push((row, mac));
    }
    Ok(resealed)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use agent_proto::EncryptionContext;

    use super::*;
    use crate::envelope;
    use crate::keystore::{SecretName, TestEntropy};
    use crate::rootkey::{RootKey, RootKeyError};
    use crate::state_dir::{KEYSTORE_DB, StateDir};

    const OLD: [u8; 32] = [0x42; 32];
    const NEW: [u8; 32] = [0x17; 32];

    /// A [`RootSealer`] without a TPM: hands out `NEW`, records the steps.
    #[derive(Debug, Default)]
    struct FakeSealer {
        steps: Mutex<Vec<&'static str>>,
        fail_seal: bool,
        fail_promote: bool,
    }

    impl FakeSealer {
        fn steps(&self) -> Vec<&'static str> {
            self.steps.lock().unwrap().clone()
        }
    }

    fn io_error() -> RootKeyError {
        RootKeyError::StateDir(crate::state_dir::StateDirError::Update {
            action: "rename root-next.priv over root.priv in".to_string(),
            path: PathBuf::from("/nowhere"),
            source: std::io::Error::other("injected"),
        })
    }

    impl RootSealer for FakeSealer {
        fn seal_next(&self) -> Result<RootKey, RootKeyError> {
            self.steps.lock().unwrap().push("seal");
            if self.fail_seal {
                return Err(RootKeyError::Random("injected".to_string()));
            }
            Ok(RootKey::from_bytes_for_tests(NEW))
        }
        fn promote_next(&self) -> Result<(), RootKeyError> {
            self.steps.lock().unwrap().push("promote");
            if self.fail_promote {
                return Err(io_error());
            }
            Ok(())
        }
        fn discard_next(&self) -> Result<(), RootKeyError> {
            self.steps.lock().unwrap().push("discard");
            Ok(())
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        entropy: Arc<TestEntropy>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("state");
            Fixture {
                _tmp: tmp,
                dir,
                entropy: Arc::new(TestEntropy::new()),
            }
        }

        fn open_with(&self, root: [u8; 32]) -> Result<KeyStore, StoreError> {
            let dir = StateDir::open(&self.dir).unwrap();
            KeyStore::open(
                &dir,
                &RootKey::from_bytes_for_tests(root),
                self.entropy.clone(),
                crate::clock::Clock::system(),
            )
        }
    }

    fn wrap(store: &KeyStore, name: &str) -> (u32, Vec<u8>) {
        let keys = store.keys();
        let key = keys.by_name(name).unwrap();
        let version = key.latest().unwrap();
        let blob = envelope::wrap(
            version.cipher().unwrap(),
            key.id(),
            version.number(),
            name.as_bytes(),
            &EncryptionContext::new(),
        )
        .unwrap();
        (version.number(), blob)
    }

    fn unwraps(store: &KeyStore, name: &str, version: u32, blob: &[u8]) -> bool {
        let keys = store.keys();
        let key = keys.by_name(name).unwrap();
        let Some(cipher) = key.version(version).and_then(|v| v.cipher()) else {
            return false;
        };
        envelope::unwrap(cipher, blob, &EncryptionContext::new())
            .map(|p| p.as_slice() == name.as_bytes())
            .unwrap_or(false)
    }

    /// Keys "a" (versions 1 revoked, 2, 3) and "b" (1), and a ciphertext
    /// of each live version.
    fn populated(fixture: &Fixture) -> Vec<(&'static str, u32, Vec<u8>)> {
        let store = fixture.open_with(OLD).unwrap();
        store.create("a").unwrap();
        let mut blobs = vec![];
        store.rotate("a").unwrap();
        let (v, blob) = wrap(&store, "a");
        blobs.push(("a", v, blob));
        store.rotate("a").unwrap();
        let (v, blob) = wrap(&store, "a");
        blobs.push(("a", v, blob));
        store.revoke("a", Some(1)).unwrap();
        store.create("b").unwrap();
        let (v, blob) = wrap(&store, "b");
        blobs.push(("b", v, blob));
        blobs
    }

    #[test]
    fn a_rotation_reseals_everything_under_the_new_key_and_keeps_every_kek() {
        let fixture = Fixture::new();
        let blobs = populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        let sealer = FakeSealer::default();
        let rotation = store.rotate_root(&sealer).unwrap();
        assert_eq!(sealer.steps(), ["seal", "promote"]);
        let old_check = RootKey::from_bytes_for_tests(OLD).check_value();
        let new_check = RootKey::from_bytes_for_tests(NEW).check_value();
        assert_eq!(
            rotation,
            RootRotation {
                old_check: old_check.clone(),
                new_check: new_check.clone(),
                keys: 2,
                versions: 4,
            }
        );
        assert_eq!(*store.root_key_check(), new_check);
        // In this process: old ciphertexts unwrap, and later writes are
        // sealed and MACed under the new key.
        for (name, version, blob) in &blobs {
            assert!(unwraps(&store, name, *version, blob));
        }
        store.rotate("b").unwrap();
        store.create("c").unwrap();
        let (_, c_blob) = wrap(&store, "c");
        let keys = store.keys();
        let b1 = Arc::clone(keys.by_name("b").unwrap().version(1).unwrap());
        drop(keys);
        store.reserve(rotation_id(&store, "b"), &b1, 1).unwrap();
        store.persist_counts().unwrap();
        drop(store);

        // The store now opens under the new key only.
        match fixture.open_with(OLD) {
            Err(StoreError::WrongRootKey {
                store_check,
                root_check,
                ..
            }) => {
                assert_eq!(store_check, new_check);
                assert_eq!(root_check, old_check);
            }
            other => panic!("expected WrongRootKey, got {other:?}"),
        }
        let dir = StateDir::open(&fixture.dir).unwrap();
        assert_eq!(
            KeyStore::recorded_root_key_check(&dir).unwrap().as_deref(),
            Some(new_check.as_str())
        );
        let store = fixture.open_with(NEW).unwrap();
        for (name, version, blob) in &blobs {
            assert!(unwraps(&store, name, *version, blob), "{name} v{version}");
        }
        assert!(unwraps(&store, "c", 1, &c_blob));
        let a = store.keys().by_name("a").unwrap().clone();
        assert!(a.version(1).unwrap().is_revoked());
        assert_eq!(store.keys().by_name("b").unwrap().latest_version(), 2);
    }

    #[test]
    fn the_daemon_clock_is_resealed_with_the_keys() {
        let fixture = Fixture::new();
        populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        store.advance_daemon_clock(3600).unwrap();
        store.rotate_root(&FakeSealer::default()).unwrap();
        // Stopped before the timer wrote the clock again (a crash, or a
        // stop within the second): it must open under the new key.
        drop(store);
        let store = fixture
            .open_with(NEW)
            .expect("opens under the new root key");
        assert_eq!(store.daemon_clock(), 3600);
    }

    #[test]
    fn a_rotation_keeps_key_types_and_public_keys_revoked_ones_included() {
        use agent_proto::{KeyType, SecretBytes, SignInput};
        let fixture = Fixture::new();
        let store = fixture.open_with(OLD).unwrap();
        store.create_typed("sig", KeyType::EcdsaP256).unwrap();
        store.rotate("sig").unwrap();
        store.revoke("sig", Some(1)).unwrap();
        store.create_typed("tag", KeyType::HmacSha512).unwrap();
        let public_keys = |store: &KeyStore| -> Vec<Option<Vec<u8>>> {
            let keys = store.keys();
            keys.by_name("sig")
                .unwrap()
                .versions
                .iter()
                .map(|v| v.public_key_der().map(<[u8]>::to_vec))
                .collect()
        };
        let before = public_keys(&store);
        assert!(before.iter().all(Option::is_some));
        let tag = |store: &KeyStore| {
            let keys = store.keys();
            let version = Arc::clone(keys.by_name("tag").unwrap().latest().unwrap());
            version.key().unwrap().mac(b"m").unwrap()
        };
        let tag_before = tag(&store);
        store.rotate_root(&FakeSealer::default()).unwrap();
        drop(store);

        let store = fixture.open_with(NEW).unwrap();
        assert_eq!(public_keys(&store), before);
        assert_eq!(tag(&store), tag_before);
        let keys = store.keys();
        let sig = keys.by_name("sig").unwrap();
        assert_eq!(sig.key_type(), KeyType::EcdsaP256);
        assert_eq!(keys.by_name("tag").unwrap().key_type(), KeyType::HmacSha512);
        let message = SignInput::Message(SecretBytes::new(b"m".to_vec()));
        let key = sig.latest().unwrap().key().unwrap();
        let signature = key.sign(&message).unwrap();
        assert_eq!(key.verify(&message, &signature), Ok(true));
    }

    fn rotation_id(store: &KeyStore, name: &str) -> KeyId {
        store.keys().by_name(name).unwrap().id()
    }

    #[test]
    fn sealed_secrets_are_resealed_with_the_keys() {
        let fixture = Fixture::new();
        populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        store
            .put_secret(SecretName::TransportKey, b"transport secret")
            .unwrap();
        store
            .put_secret(SecretName::RollbackAuth, b"nv auth")
            .unwrap();
        store.rotate_root(&FakeSealer::default()).unwrap();
        let read = |store: &KeyStore, name| store.secret(name).unwrap().unwrap().to_vec();
        assert_eq!(read(&store, SecretName::TransportKey), b"transport secret");
        // A secret written after the rotation is sealed under the new key.
        store
            .put_secret(SecretName::RecoveryBundle, b"bundle")
            .unwrap();
        drop(store);
        let store = fixture.open_with(NEW).unwrap();
        assert_eq!(read(&store, SecretName::TransportKey), b"transport secret");
        assert_eq!(read(&store, SecretName::RollbackAuth), b"nv auth");
        assert_eq!(read(&store, SecretName::RecoveryBundle), b"bundle");
    }

    #[test]
    fn a_failed_seal_changes_nothing() {
        let fixture = Fixture::new();
        let blobs = populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        let sealer = FakeSealer {
            fail_seal: true,
            ..FakeSealer::default()
        };
        let error = store.rotate_root(&sealer).unwrap_err();
        assert!(matches!(error, StoreError::RootKey(_)), "{error}");
        assert!(error.to_string().contains("root key in force is unchanged"));
        assert_eq!(sealer.steps(), ["seal"]);
        let old_check = RootKey::from_bytes_for_tests(OLD).check_value();
        assert_eq!(*store.root_key_check(), old_check);
        store.create("c").unwrap();
        drop(store);
        let store = fixture.open_with(OLD).unwrap();
        for (name, version, blob) in &blobs {
            assert!(unwraps(&store, name, *version, blob));
        }
    }

    #[test]
    fn a_row_edited_on_disk_is_refused_not_blessed_and_the_next_key_discarded() {
        let fixture = Fixture::new();
        populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        // Edited after the store loaded: the rotation reads the rows again.
        let conn = rusqlite::Connection::open(fixture.dir.join(KEYSTORE_DB)).unwrap();
        conn.execute("UPDATE keys SET state = 1 WHERE name = 'b'", [])
            .unwrap();
        drop(conn);
        let sealer = FakeSealer::default();
        match store.rotate_root(&sealer) {
            Err(StoreError::Tampered { key, detail, .. }) => {
                assert!(key.contains("\"b\""), "{key}");
                assert!(detail.contains("fails authentication"), "{detail}");
            }
            other => panic!("expected Tampered, got {other:?}"),
        }
        assert_eq!(sealer.steps(), ["seal", "discard"]);
        drop(store);
        // Still under the old key, and still refused for the edit.
        match fixture.open_with(OLD) {
            Err(StoreError::Tampered { .. }) => {}
            other => panic!("expected Tampered, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_rename_after_the_commit_leaves_the_new_key_in_force() {
        let fixture = Fixture::new();
        let blobs = populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        let sealer = FakeSealer {
            fail_promote: true,
            ..FakeSealer::default()
        };
        let error = store.rotate_root(&sealer).unwrap_err();
        let new_check = RootKey::from_bytes_for_tests(NEW).check_value();
        match &error {
            StoreError::RootKeyNotInPlace {
                new_check: shown, ..
            } => assert_eq!(shown, &new_check),
            other => panic!("expected RootKeyNotInPlace, got {other}"),
        }
        assert!(error.to_string().contains("next start"), "{error}");
        assert_eq!(sealer.steps(), ["seal", "promote"]);
        assert_eq!(*store.root_key_check(), new_check);
        // Writes after it go under the new key, which the store opens with.
        store.rotate("b").unwrap();
        drop(store);
        let store = fixture.open_with(NEW).unwrap();
        for (name, version, blob) in &blobs {
            assert!(unwraps(&store, name, *version, blob));
        }
    }

    #[test]
    fn two_rotations_never_overlap() {
        let fixture = Fixture::new();
        populated(&fixture);
        let store = fixture.open_with(OLD).unwrap();
        let held = store.rotation.lock().unwrap();
        let sealer = FakeSealer::default();
        assert!(matches!(
            store.rotate_root(&sealer),
            Err(StoreError::RotationRunning)
        ));
        assert!(sealer.steps().is_empty());
        drop(held);
        store.rotate_root(&sealer).unwrap();
    }
}
