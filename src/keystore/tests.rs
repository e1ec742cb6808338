//! The key store in-process, without a TPM: a root key from bytes and
//! [`TestEntropy`]. Changes must survive a reopen; a row edited on disk
//! must stop the store from opening, with the error naming the key.

use std::path::PathBuf;
use std::sync::Arc;

use agent_proto::{EncryptionContext, KeyState, KeyType, SecretBytes, SignInput};
use rusqlite::Connection;

use super::db::{self, Database, DbError};
use super::sealing::StoreSecrets;
use super::*;
use crate::envelope;
use crate::rootkey::RootKey;
use crate::state_dir::{KEYSTORE_DB, StateDir};

const ROOT: [u8; 32] = [0x42; 32];

/// A state dir (created 0700 below a tempdir, which may be 0755).
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    entropy: Arc<TestEntropy>,
    /// The store's clock, moved by the file `clock` in the tempdir.
    clock: crate::clock::Clock,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let clock = crate::clock::Clock::movable(tmp.path().join("clock"));
        Fixture {
            _tmp: tmp,
            dir,
            entropy: Arc::new(TestEntropy::new()),
            clock,
        }
    }

    fn open_with(&self, root: [u8; 32]) -> Result<KeyStore, StoreError> {
        let dir = StateDir::open(&self.dir).unwrap();
        let root = RootKey::from_bytes_for_tests(root);
        KeyStore::open(&dir, &root, self.entropy.clone(), self.clock.clone())
    }

    fn open(&self) -> Result<KeyStore, StoreError> {
        self.open_with(ROOT)
    }

    fn db_path(&self) -> PathBuf {
        self.dir.join(KEYSTORE_DB)
    }

    /// Runs `sql` on the file directly, as someone editing it would.
    fn edit(&self, sql: &str) {
        let conn = Connection::open(self.db_path()).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF;").unwrap();
        conn.execute_batch(sql).unwrap();
    }

    /// Rewrites rows with valid MACs (as only a holder of the root key
    /// could), to reach the loader's checks behind the MACs.
    fn forge(&self, change: impl FnOnce(&mut Vec<db::KeyRow>, &mut Vec<db::VersionRow>)) {
        let root = RootKey::from_bytes_for_tests(ROOT);
        let secrets = StoreSecrets::derive(&root).unwrap();
        let (mut database, _) = Database::open(&self.db_path()).unwrap();
        let (keys, versions) = database.load().unwrap();
        let mut keys: Vec<db::KeyRow> = keys.into_iter().map(|s| s.row).collect();
        let mut versions: Vec<db::VersionRow> = versions.into_iter().map(|s| s.row).collect();
        change(&mut keys, &mut versions);
        database
            .transaction(|tx| {
                tx.execute_batch("DELETE FROM versions; DELETE FROM keys;")?;
                for row in &keys {
                    db::put_key(tx, row, &secrets.row_mac(&row.canonical()))?;
                }
                for row in &versions {
                    db::put_version(tx, row, &secrets.row_mac(&row.canonical()))?;
                }
                Ok(())
            })
            .unwrap();
    }
}

fn id_hex(store: &KeyStore, name: &str) -> String {
    store.keys().by_name(name).unwrap().id().to_string()
}

/// The `(key, detail)` of a `Tampered` refusal; panics on anything else.
fn tampered(result: Result<KeyStore, StoreError>) -> (String, String) {
    match result {
        Err(StoreError::Tampered { key, detail, .. }) => (key, detail),
        Err(other) => panic!("expected Tampered, got {other}"),
        Ok(_) => panic!("expected Tampered, but the store opened"),
    }
}

/// A store with key "a" at versions 1 and 2, and key "b" at version 1.
fn two_keys(fixture: &Fixture) -> (String, String) {
    let store = fixture.open().unwrap();
    store.create("a").unwrap();
    store.rotate("a").unwrap();
    store.create("b").unwrap();
    (id_hex(&store, "a"), id_hex(&store, "b"))
}

fn wrap(store: &KeyStore, name: &str, plaintext: &[u8]) -> Vec<u8> {
    let keys = store.keys();
    let key = keys.by_name(name).unwrap();
    let version = key.latest().unwrap();
    envelope::wrap(
        version.cipher().unwrap(),
        key.id(),
        version.number(),
        plaintext,
        &EncryptionContext::new(),
    )
    .unwrap()
}

fn unwrap_with(store: &KeyStore, name: &str, version: u32, blob: &[u8]) -> Option<Vec<u8>> {
    let keys = store.keys();
    let version = keys.by_name(name)?.version(version)?.clone();
    let plaintext = envelope::unwrap(version.cipher()?, blob, &EncryptionContext::new()).ok()?;
    Some(plaintext.to_vec())
}

// --- Persistence across reopen -------------------------------------------

#[test]
fn changes_survive_a_reopen() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("rotated").unwrap();
    store.rotate("rotated").unwrap();
    store.rotate("rotated").unwrap();
    store.set_min_decryption_version("rotated", 2).unwrap();
    store.create("disabled").unwrap();
    store.set_enabled("disabled", false).unwrap();
    store.create("revoked").unwrap();
    store.revoke("revoked", None).unwrap();
    store.create("old-version-revoked").unwrap();
    store.rotate("old-version-revoked").unwrap();
    store.revoke("old-version-revoked", Some(1)).unwrap();
    let blob = wrap(&store, "rotated", b"kept secret");
    let before: Vec<_> = store.keys().after(None).map(|k| k.info()).collect();
    drop(store);

    let store = fixture.open().unwrap();
    let after: Vec<_> = store.keys().after(None).map(|k| k.info()).collect();
    assert_eq!(before, after);
    let keys = store.keys();
    let rotated = keys.by_name("rotated").unwrap();
    assert_eq!(rotated.latest_version(), 3);
    assert_eq!(rotated.min_decryption_version(), 2);
    assert_eq!(
        keys.by_name("disabled").unwrap().state(),
        KeyState::Disabled
    );
    let revoked = keys.by_name("revoked").unwrap();
    assert_eq!(revoked.state(), KeyState::Revoked);
    assert!(revoked.version(1).unwrap().is_revoked());
    let partly = keys.by_name("old-version-revoked").unwrap();
    assert!(partly.version(1).unwrap().is_revoked());
    assert!(!partly.version(2).unwrap().is_revoked());
    // The KEK itself persisted: a ciphertext from before unwraps after.
    assert_eq!(
        unwrap_with(&store, "rotated", 3, &blob).as_deref(),
        Some(&b"kept secret"[..])
    );
}

#[test]
fn enabling_again_and_revoking_the_latest_version_survive_a_reopen() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("k").unwrap();
    store.set_enabled("k", false).unwrap();
    store.set_enabled("k", true).unwrap();
    let blob = wrap(&store, "k", b"v1");
    // Revoking the latest version first adds a new one.
    let key = store.revoke("k", Some(1)).unwrap();
    assert_eq!(key.latest_version(), 2);
    drop(store);

    let store = fixture.open().unwrap();
    let keys = store.keys();
    let key = keys.by_name("k").unwrap();
    assert_eq!(key.state(), KeyState::Enabled);
    assert_eq!(key.latest_version(), 2);
    assert!(key.version(1).unwrap().is_revoked());
    assert!(key.version(1).unwrap().cipher().is_none());
    assert_eq!(unwrap_with(&store, "k", 1, &blob), None);
}

#[test]
fn revoked_names_stay_taken_after_a_reopen() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("gone").unwrap();
    store.revoke("gone", None).unwrap();
    drop(store);
    let store = fixture.open().unwrap();
    assert!(matches!(
        store.create("gone"),
        Err(StoreError::KeyExists(_))
    ));
    assert!(matches!(
        store.rotate("gone"),
        Err(StoreError::KeyRevoked(_))
    ));
}

#[test]
fn encryption_counts_reopen_at_their_reservation_after_a_crash_and_exact_after_persisting() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("k").unwrap();
    let keys = store.keys();
    let key = keys.by_name("k").unwrap();
    let version = key.latest().unwrap();
    for expected in 1..=5 {
        assert_eq!(version.count_encryption(u64::MAX), Some(expected));
    }
    assert!(!version.is_reserved(5));
    store.reserve(key.id(), version, 5).unwrap();
    assert!(version.is_reserved(5 + RESERVATION_STEP));
    assert!(!version.is_reserved(5 + RESERVATION_STEP + 1));
    drop((keys, store));

    // No clean shutdown: the count is the persisted upper bound.
    let store = fixture.open().unwrap();
    let count = |store: &KeyStore| {
        store
            .keys()
            .by_name("k")
            .unwrap()
            .latest()
            .unwrap()
            .encryptions()
    };
    assert_eq!(count(&store), 5 + RESERVATION_STEP);
    drop(store);

    // A clean shutdown writes the exact count.
    let store = fixture.open().unwrap();
    let keys = store.keys();
    let version = keys.by_name("k").unwrap().latest().unwrap();
    version.count_encryption(u64::MAX).unwrap();
    store.persist_counts().unwrap();
    drop((keys, store));
    let store = fixture.open().unwrap();
    assert_eq!(count(&store), 5 + RESERVATION_STEP + 1);
}

#[test]
fn a_reservation_for_a_replaced_version_is_refused_as_changed() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("k").unwrap();
    let keys = store.keys();
    let key = keys.by_name("k").unwrap();
    let version = Arc::clone(key.latest().unwrap());
    version.count_encryption(u64::MAX).unwrap();
    store.revoke("k", Some(1)).unwrap();
    assert!(matches!(
        store.reserve(key.id(), &version, 1),
        Err(StoreError::Changed(_))
    ));
}

#[test]
fn the_version_count_limit_stops_counting() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("k").unwrap();
    let keys = store.keys();
    let version = keys.by_name("k").unwrap().latest().unwrap();
    assert_eq!(version.count_encryption(2), Some(1));
    assert_eq!(version.count_encryption(2), Some(2));
    assert_eq!(version.count_encryption(2), None);
    assert_eq!(version.encryptions(), 2);
}

#[test]
fn rotate_if_latest_rotates_once_however_many_ask() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    let id = store.create("k").unwrap().id();
    assert_eq!(store.rotate_if_latest(id, 1).unwrap().latest_version(), 2);
    // A second caller that saw version 1 at its limit finds it replaced.
    assert_eq!(store.rotate_if_latest(id, 1).unwrap().latest_version(), 2);
    assert_eq!(fixture.entropy.taken(), 2);
}

#[test]
fn rotate_if_due_leaves_a_key_disabled_since_it_was_found_due() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    let id = store.create("k").unwrap().id();
    // The timer found version 1 due; the key is disabled before it rotates.
    store.set_enabled("k", false).unwrap();
    let key = store.rotate_if_due(id, 1).unwrap();
    assert_eq!(key.latest_version(), 1);
    assert_eq!(key.state(), KeyState::Disabled);
    assert_eq!(store.keys().by_name("k").unwrap().latest_version(), 1);
    // Enabled again, it is rotated.
    store.set_enabled("k", true).unwrap();
    assert_eq!(store.rotate_if_due(id, 1).unwrap().latest_version(), 2);
}

#[test]
fn new_versions_need_the_entropy_source_but_other_changes_do_not() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("k").unwrap();
    fixture.entropy.set_unavailable(true);
    assert!(matches!(store.create("other"), Err(StoreError::Tpm(_))));
    assert!(matches!(store.rotate("k"), Err(StoreError::Tpm(_))));
    assert!(matches!(
        store.revoke("k", Some(1)),
        Err(StoreError::Tpm(_))
    ));
    store.set_enabled("k", false).unwrap();
    store.set_enabled("k", true).unwrap();
    store.revoke("k", None).unwrap();
    assert!(store.keys().by_name("other").is_none());
}

// --- Tamper detection at open -------------------------------------------

#[test]
fn an_untouched_store_opens() {
    let fixture = Fixture::new();
    two_keys(&fixture);
    let store = fixture.open().unwrap();
    assert_eq!(store.keys().len(), 2);
    assert_eq!(store.keys().version_count(), 3);
}

#[test]
fn edited_key_rows_fail_authentication() {
    for edit in [
        "UPDATE keys SET name = 'renamed' WHERE name = 'a'",
        "UPDATE keys SET created = created + 1 WHERE name = 'a'",
        "UPDATE keys SET state = 0 WHERE name = 'a'",
        "UPDATE keys SET min_decryption_version = 1 WHERE name = 'a'",
        "UPDATE keys SET latest_version = 1 WHERE name = 'a'",
        "UPDATE keys SET mac = (SELECT mac FROM keys WHERE name = 'b') WHERE name = 'a'",
    ] {
        let fixture = Fixture::new();
        let (a, _) = two_keys(&fixture);
        {
            // Give the edits of state and minimum version something to undo.
            let store = fixture.open().unwrap();
            store.set_enabled("a", false).unwrap();
            store.set_min_decryption_version("a", 2).unwrap();
        }
        fixture.edit(edit);
        let (key, detail) = tampered(fixture.open());
        assert!(key.contains(&a), "{edit}: {key}");
        assert_eq!(detail, "fails authentication under the root key", "{edit}");
    }
}

#[test]
fn edited_version_rows_fail_authentication() {
    for edit in [
        // The count: rolled back so more encryptions fit under the limit.
        "UPDATE versions SET encryptions_reserved = 0 WHERE version = 2",
        "UPDATE versions SET created = 0 WHERE version = 2",
        "UPDATE versions SET state = 1, sealed_kek = NULL WHERE version = 2",
        // The sealed KEKs of versions 1 and 2 swapped.
        "UPDATE versions SET sealed_kek = CASE version WHEN 1 THEN \
             (SELECT sealed_kek FROM versions v WHERE v.key_id = versions.key_id AND v.version = 2) \
             ELSE (SELECT sealed_kek FROM versions v WHERE v.key_id = versions.key_id AND v.version = 1) END \
         WHERE key_id = (SELECT id FROM keys WHERE name = 'a')",
        // The sealed KEK of key b put in version 2 of key a.
        "UPDATE versions SET sealed_kek = \
             (SELECT sealed_kek FROM versions v JOIN keys k ON k.id = v.key_id WHERE k.name = 'b') \
         WHERE version = 2",
    ] {
        let fixture = Fixture::new();
        let (a, _) = two_keys(&fixture);
        {
            let store = fixture.open().unwrap();
            let keys = store.keys();
            let key = keys.by_name("a").unwrap();
            let version = key.latest().unwrap();
            version.count_encryption(u64::MAX).unwrap();
            store.reserve(key.id(), version, 1).unwrap();
        }
        fixture.edit(edit);
        let (key, detail) = tampered(fixture.open());
        assert!(key.contains(&a), "{edit}: {key}");
        assert!(
            detail.starts_with("version ")
                && detail.ends_with("fails authentication under the root key"),
            "{edit}: {detail}"
        );
    }
}

#[test]
fn rows_swapped_with_their_macs_fail_authentication() {
    let fixture = Fixture::new();
    let (a, _) = two_keys(&fixture);
    // Versions 1 and 2 of key a trade everything but their numbers: each
    // MAC covers the version number, so neither verifies.
    fixture.edit(
        "UPDATE versions SET version = 3 WHERE version = 1 AND key_id = (SELECT id FROM keys WHERE name = 'a');
         UPDATE versions SET version = 1 WHERE version = 2 AND key_id = (SELECT id FROM keys WHERE name = 'a');
         UPDATE versions SET version = 2 WHERE version = 3 AND key_id = (SELECT id FROM keys WHERE name = 'a');",
    );
    let (key, detail) = tampered(fixture.open());
    assert!(key.contains(&a));
    assert_eq!(detail, "version 1: fails authentication under the root key");
}

#[test]
fn a_deleted_version_row_is_refused() {
    let fixture = Fixture::new();
    let (a, _) = two_keys(&fixture);
    fixture.edit(
        "DELETE FROM versions WHERE version = 1 AND key_id = (SELECT id FROM keys WHERE name = 'a')",
    );
    let (key, detail) = tampered(fixture.open());
    assert!(key.contains(&a));
    assert_eq!(detail, "lists versions 1 to 2 but the store holds [2]");
}

#[test]
fn an_added_version_row_is_refused() {
    let fixture = Fixture::new();
    let (a, _) = two_keys(&fixture);
    fixture.edit(
        "INSERT INTO versions (key_id, version, created, state, encryptions_reserved, sealed_kek, mac)
         SELECT key_id, 3, created, state, encryptions_reserved, sealed_kek, mac FROM versions
         WHERE version = 2 AND key_id = (SELECT id FROM keys WHERE name = 'a')",
    );
    let (key, detail) = tampered(fixture.open());
    assert!(key.contains(&a));
    assert_eq!(
        detail,
        "lists versions 1 to 2 but the store holds [1, 2, 3]"
    );
}

#[test]
fn versions_without_their_key_row_are_refused() {
    let fixture = Fixture::new();
    let (_, b) = two_keys(&fixture);
    fixture.edit("DELETE FROM keys WHERE name = 'b'");
    let (key, detail) = tampered(fixture.open());
    assert_eq!(key, format!("id {b}"));
    assert_eq!(detail, "has versions but no key row");
}

#[test]
fn an_added_key_row_is_refused() {
    let fixture = Fixture::new();
    two_keys(&fixture);
    // A copy of key b under a new id and name, with b's MAC.
    fixture.edit(
        "INSERT INTO keys (id, name, created, state, latest_version, min_decryption_version, mac)
         SELECT zeroblob(16), 'copy', created, state, latest_version, min_decryption_version, mac
         FROM keys WHERE name = 'b'",
    );
    let (key, detail) = tampered(fixture.open());
    assert!(key.contains("\"copy\""), "{key}");
    assert_eq!(detail, "fails authentication under the root key");
}

#[test]
fn the_root_key_check_value_must_be_there_and_match() {
    let fixture = Fixture::new();
    two_keys(&fixture);
    assert!(matches!(
        fixture.open_with([0x43; 32]),
        Err(StoreError::WrongRootKey { .. })
    ));
    fixture.edit("UPDATE meta SET value = 'ffffffffffffffff' WHERE name = 'root_key_check'");
    match fixture.open() {
        Err(StoreError::WrongRootKey {
            store_check,
            root_check,
            ..
        }) => {
            assert_eq!(store_check, "ffffffffffffffff");
            assert_eq!(
                root_check,
                RootKey::from_bytes_for_tests(ROOT).check_value()
            );
        }
        other => panic!("expected WrongRootKey, got {other:?}"),
    }
    fixture.edit("DELETE FROM meta WHERE name = 'root_key_check'");
    let (key, detail) = tampered(fixture.open());
    assert_eq!(key, "(none)");
    assert_eq!(detail, "table meta lacks the root key check value");
}

#[test]
fn out_of_range_values_are_refused_as_corrupt() {
    let fixture = Fixture::new();
    two_keys(&fixture);
    fixture.edit("UPDATE versions SET encryptions_reserved = -1 WHERE version = 2");
    assert!(matches!(
        fixture.open(),
        Err(StoreError::Database {
            source: DbError::Corrupt(_),
            ..
        })
    ));
}

// Behind the MACs: rows forged with the root key, which the loader's
// consistency checks still refuse.

#[test]
fn a_sealed_kek_moved_to_another_version_does_not_open_even_with_a_valid_mac() {
    let fixture = Fixture::new();
    let (a, _) = two_keys(&fixture);
    fixture.forge(|keys, versions| {
        let id = keys.iter().find(|k| k.name == "a").unwrap().id;
        let pos = |n: u32| {
            versions
                .iter()
                .position(|v| v.key_id == id && v.version == n)
                .unwrap()
        };
        let (one, two) = (pos(1), pos(2));
        let first = versions[one].sealed_kek.take();
        versions[one].sealed_kek = versions[two].sealed_kek.replace(first.unwrap());
    });
    let (key, detail) = tampered(fixture.open());
    assert!(key.contains(&a));
    assert_eq!(
        detail,
        "version 1: its KEK does not open under the root key"
    );
}

#[test]
fn forged_rows_that_contradict_themselves_are_refused() {
    type Forgery = fn(&mut Vec<db::KeyRow>, &mut Vec<db::VersionRow>);
    let cases: [(Forgery, &str); 5] = [
        (|keys, _| keys[0].state = 7, "has an unknown state 7"),
        (
            |keys, _| keys[0].min_decryption_version = 0,
            "has an impossible minimum decryption version",
        ),
        (
            |keys, _| keys[0].min_decryption_version = keys[0].latest_version + 1,
            "has an impossible minimum decryption version",
        ),
        (
            |keys, versions| {
                let id = keys[0].id;
                let v = versions.iter_mut().find(|v| v.key_id == id).unwrap();
                v.state = 1;
            },
            "version 1: its state and KEK disagree",
        ),
        (
            |keys, _| keys[0].state = 2,
            "version 1: is live in a revoked key",
        ),
    ];
    for (forge, expected) in cases {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        store.create("only").unwrap();
        let id = id_hex(&store, "only");
        drop(store);
        fixture.forge(forge);
        let (key, detail) = tampered(fixture.open());
        assert!(key.contains(&id), "{expected}: {key}");
        assert_eq!(detail, expected);
    }
}

#[test]
fn sealed_secrets_survive_a_reopen_and_open_only_under_their_root_key() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    assert!(store.secret(SecretName::TransportKey).unwrap().is_none());
    store
        .put_secret(SecretName::TransportKey, b"AGE-SECRET-KEY-1TEST")
        .unwrap();
    store
        .put_secret(SecretName::RollbackAuth, &[7u8; 32])
        .unwrap();
    drop(store);
    // Never in clear on disk.
    let bytes = std::fs::read(fixture.db_path()).unwrap();
    assert!(
        !bytes
            .windows(b"AGE-SECRET-KEY-1TEST".len())
            .any(|w| w == b"AGE-SECRET-KEY-1TEST")
    );
    let store = fixture.open().unwrap();
    assert_eq!(
        store
            .secret(SecretName::TransportKey)
            .unwrap()
            .unwrap()
            .as_slice(),
        b"AGE-SECRET-KEY-1TEST"
    );
    assert_eq!(
        store
            .secret(SecretName::RollbackAuth)
            .unwrap()
            .unwrap()
            .as_slice(),
        &[7u8; 32]
    );
    assert!(store.secret(SecretName::RecoveryBundle).unwrap().is_none());
}

#[test]
fn a_secret_moved_to_another_name_or_edited_stops_the_open() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store
        .put_secret(SecretName::TransportKey, b"transport")
        .unwrap();
    drop(store);
    fixture.edit("UPDATE secrets SET name = 'recovery bundle identity';");
    let err = fixture.open().unwrap_err();
    assert!(
        matches!(&err, StoreError::Tampered { key, .. } if key.contains("recovery bundle identity")),
        "{err}"
    );
    fixture.edit("UPDATE secrets SET name = 'transport key', sealed = zeroblob(40);");
    let err = fixture.open().unwrap_err();
    assert!(matches!(err, StoreError::Tampered { .. }), "{err}");
}

/// A change as the sink saw it: key name, kind, each version's KEK.
type Seen = (String, Change, Vec<Option<[u8; 32]>>);

/// Records what the store told it.
#[derive(Debug, Default)]
struct RecordingSink {
    seen: std::sync::Mutex<Vec<Seen>>,
}

impl ChangeSink for RecordingSink {
    fn key_changed(&self, key: &KeyMaterial, change: Change) {
        let keks = key
            .versions
            .iter()
            .map(|v| v.kek.as_ref().map(|k| **k))
            .collect();
        self.seen
            .lock()
            .unwrap()
            .push((key.name.clone(), change, keks));
    }

    fn status(&self) -> agent_proto::RecoveryStatus {
        agent_proto::RecoveryStatus {
            configured: true,
            ..Default::default()
        }
    }
}

#[test]
fn every_change_reaches_the_sink_with_its_material_before_it_returns() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    let sink = Arc::new(RecordingSink::default());
    assert!(!store.recovery_status().configured);
    assert!(store.set_change_sink(sink.clone()));
    assert!(store.recovery_status().configured);
    store.create("app").unwrap();
    store.rotate("app").unwrap();
    store.revoke("app", Some(1)).unwrap();
    store.set_enabled("app", false).unwrap();
    store.set_enabled("app", true).unwrap();
    store.set_min_decryption_version("app", 2).unwrap();
    let seen = sink.seen.lock().unwrap();
    let changes: Vec<Change> = seen.iter().map(|(_, change, _)| *change).collect();
    assert_eq!(
        changes,
        [
            Change::Create,
            Change::Rotate,
            Change::Revoke,
            Change::Disable,
            Change::Enable,
            Change::MinDecryptionVersion
        ]
    );
    // After the revocation, version 1 has no material; 2 keeps its KEK.
    let (_, _, after_revoke) = &seen[2];
    assert_eq!(after_revoke.len(), 2);
    assert!(after_revoke[0].is_none());
    let (_, _, after_rotate) = &seen[1];
    assert_eq!(after_revoke[1], after_rotate[1]);
    assert!(after_rotate[1].is_some());
    // The material is the KEK itself: it wraps what the store's key unwraps.
    let material = store
        .material(store.keys().by_name("app").unwrap())
        .unwrap();
    assert_eq!(
        material.versions[1].kek.as_ref().map(|k| **k),
        after_rotate[1]
    );
    assert!(!format!("{material:?}").contains(&format!("{:?}", after_rotate[1].unwrap())));
    assert!(Change::Revoke.reduces_access() && !Change::Rotate.reduces_access());
}

// --- Key types (issue 11) -------------------------------------------------

/// What a version does with a fixed input, whatever its type: a wrap of
/// it, its tag or its signature; [`reproduces`] checks it after a reopen
/// (unwraps it, recomputes the tag, verifies the signature: ML-DSA signs
/// hedged, so signatures differ each time).
fn fingerprint(version: &Version) -> Vec<u8> {
    let key = version.key().expect("a live version");
    match key.key_type() {
        KeyType::Aes256Gcm => envelope::wrap(
            version.cipher().unwrap(),
            envelope::KeyId([1; 16]),
            version.number(),
            b"probe",
            &EncryptionContext::new(),
        )
        .unwrap(),
        KeyType::HmacSha256 | KeyType::HmacSha512 => key.mac(b"probe").unwrap(),
        _ => key
            .sign(&SignInput::Message(SecretBytes::new(b"probe".to_vec())))
            .unwrap(),
    }
}

/// Whether `version` reproduces `fingerprint` (an AES version: unwraps it).
fn reproduces(version: &Version, fingerprint: &[u8]) -> bool {
    match version.key().map(|k| k.key_type()) {
        Some(KeyType::Aes256Gcm) => envelope::unwrap(
            version.cipher().unwrap(),
            fingerprint,
            &EncryptionContext::new(),
        )
        .is_ok_and(|p| *p == *b"probe"),
        Some(KeyType::HmacSha256 | KeyType::HmacSha512) => {
            self::fingerprint(version) == fingerprint
        }
        Some(_) => version.key().is_some_and(|key| {
            let probe = SignInput::Message(SecretBytes::new(b"probe".to_vec()));
            key.verify(&probe, fingerprint) == Ok(true)
        }),
        None => false,
    }
}

#[test]
fn every_key_type_survives_a_reopen_with_its_type_secret_and_public_key() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    let mut before = Vec::new();
    for key_type in KeyType::ALL {
        let name = key_type.as_str();
        let created = store.create_typed(name, key_type).unwrap();
        assert_eq!(created.key_type(), key_type);
        let key = store.rotate(name).unwrap();
        assert_eq!(key.key_type(), key_type, "rotation keeps the type");
        let versions: Vec<_> = key
            .versions
            .iter()
            .map(|v| {
                assert_eq!(v.key().unwrap().key_type(), key_type);
                let public_key = v.public_key_der().map(<[u8]>::to_vec);
                assert_eq!(public_key.is_some(), key_type.is_signing(), "{name}");
                assert_eq!(
                    public_key.as_deref(),
                    v.key()
                        .unwrap()
                        .public_key_der()
                        .as_deref()
                        .map(Vec::as_slice)
                );
                (public_key, fingerprint(v))
            })
            .collect();
        assert_ne!(
            versions[0], versions[1],
            "{name}: each version its own secret"
        );
        before.push((name, key_type, key.info(), versions));
    }
    drop(store);

    let store = fixture.open().unwrap();
    let keys = store.keys();
    for (name, key_type, info, versions) in before {
        let key = keys.by_name(name).unwrap();
        assert_eq!(key.key_type(), key_type);
        assert_eq!(key.info(), info);
        assert_eq!(key.info().key_type, key_type);
        for (version, (public_key, fingerprint)) in key.versions.iter().zip(versions) {
            assert_eq!(version.public_key_der(), public_key.as_deref(), "{name}");
            assert!(reproduces(version, &fingerprint), "{name}");
        }
    }
}

#[test]
fn a_revoked_signing_version_keeps_its_public_key_across_a_reopen() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    let mut kept = Vec::new();
    for key_type in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::MlDsa65] {
        let name = key_type.as_str();
        store.create_typed(name, key_type).unwrap();
        let key = store.rotate(name).unwrap();
        let v1 = key.version(1).unwrap().public_key_der().unwrap().to_vec();
        let v2 = key.version(2).unwrap().public_key_der().unwrap().to_vec();
        let key = store.revoke(name, Some(1)).unwrap();
        let revoked = key.version(1).unwrap();
        assert!(revoked.is_revoked() && revoked.key().is_none());
        assert_eq!(revoked.public_key_der(), Some(v1.as_slice()));
        kept.push((name, v1, v2));
    }
    // A whole key revoked keeps every version's public key too.
    store.create_typed("gone", KeyType::Ed25519).unwrap();
    let gone = store
        .keys()
        .by_name("gone")
        .unwrap()
        .latest()
        .unwrap()
        .public_key_der()
        .unwrap()
        .to_vec();
    let key = store.revoke("gone", None).unwrap();
    assert_eq!(
        key.version(1).unwrap().public_key_der(),
        Some(gone.as_slice())
    );
    // HMAC and AES keys have none, live or revoked.
    for key_type in [KeyType::HmacSha256, KeyType::Aes256Gcm] {
        let name = format!("{key_type}-revoked");
        store.create_typed(&name, key_type).unwrap();
        let key = store.revoke(&name, Some(1)).unwrap();
        assert!(key.versions.iter().all(|v| v.public_key_der().is_none()));
    }
    drop(store);

    let store = fixture.open().unwrap();
    let keys = store.keys();
    for (name, v1, v2) in kept {
        let key = keys.by_name(name).unwrap();
        assert!(key.version(1).unwrap().is_revoked());
        assert_eq!(
            key.version(1).unwrap().public_key_der(),
            Some(v1.as_slice())
        );
        assert_eq!(
            key.version(2).unwrap().public_key_der(),
            Some(v2.as_slice())
        );
        assert_eq!(key.latest_version(), 2);
    }
    let gone_key = keys.by_name("gone").unwrap();
    assert_eq!(gone_key.state(), KeyState::Revoked);
    assert_eq!(
        gone_key.version(1).unwrap().public_key_der(),
        Some(gone.as_slice())
    );
}

/// The schema of the store before key types (commit c7ec9ad): no
/// `key_type`, no `public_key`.
const SCHEMA_BEFORE_TYPES: &str = "
CREATE TABLE keys (
    id                     BLOB PRIMARY KEY CHECK (length(id) = 16),
    name                   TEXT NOT NULL UNIQUE,
    created                INTEGER NOT NULL,
    state                  INTEGER NOT NULL,
    latest_version         INTEGER NOT NULL,
    min_decryption_version INTEGER NOT NULL,
    mac                    BLOB NOT NULL
);
CREATE TABLE versions (
    key_id               BLOB NOT NULL REFERENCES keys(id),
    version              INTEGER NOT NULL,
    created              INTEGER NOT NULL,
    state                INTEGER NOT NULL,
    encryptions_reserved INTEGER NOT NULL,
    sealed_kek           BLOB,
    mac                  BLOB NOT NULL,
    PRIMARY KEY (key_id, version)
);";

#[test]
fn a_store_from_before_key_types_opens_and_its_keys_are_aes() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("old").unwrap();
    store.rotate("old").unwrap();
    store.revoke("old", Some(1)).unwrap();
    store.create("other").unwrap();
    let blob = wrap(&store, "old", b"from before");
    let info: Vec<_> = store.keys().after(None).map(|k| k.info()).collect();
    drop(store);
    // The rows moved into tables of the old schema, MACs as they are: what
    // a hostkmsd from before this change wrote.
    fixture.edit(&format!(
        "ALTER TABLE keys RENAME TO keys_new; ALTER TABLE versions RENAME TO versions_new;
         {SCHEMA_BEFORE_TYPES}
         INSERT INTO keys SELECT id, name, created, state, latest_version,
             min_decryption_version, mac FROM keys_new;
         INSERT INTO versions SELECT key_id, version, created, state, encryptions_reserved,
             sealed_kek, mac FROM versions_new;
         DROP TABLE versions_new; DROP TABLE keys_new;"
    ));
    let columns = |table: &str| -> Vec<String> {
        let conn = Connection::open(fixture.db_path()).unwrap();
        let mut statement = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!columns("keys").contains(&"key_type".to_string()));
    assert!(!columns("versions").contains(&"public_key".to_string()));

    let store = fixture.open().unwrap();
    assert!(columns("keys").contains(&"key_type".to_string()));
    assert!(columns("versions").contains(&"public_key".to_string()));
    let after: Vec<_> = store.keys().after(None).map(|k| k.info()).collect();
    assert_eq!(after, info);
    assert!(
        store
            .keys()
            .after(None)
            .all(|k| k.key_type() == KeyType::Aes256Gcm)
    );
    assert_eq!(
        unwrap_with(&store, "old", 2, &blob).as_deref(),
        Some(&b"from before"[..])
    );
    // It keeps working: a change writes its rows as before, and reopens.
    store.rotate("old").unwrap();
    drop(store);
    let store = fixture.open().unwrap();
    assert_eq!(store.keys().by_name("old").unwrap().latest_version(), 3);
}

/// A store with ed25519 key "sig" (versions 1 and 2), ed25519 key "other"
/// and hmac-sha256 key "mac".
fn typed_keys(fixture: &Fixture) -> String {
    let store = fixture.open().unwrap();
    store.create_typed("sig", KeyType::Ed25519).unwrap();
    store.rotate("sig").unwrap();
    store.create_typed("other", KeyType::Ed25519).unwrap();
    store.create_typed("mac", KeyType::HmacSha256).unwrap();
    id_hex(&store, "sig")
}

#[test]
fn an_edited_key_type_or_public_key_fails_authentication() {
    for (edit, name) in [
        // Another signing type, or AES: the row's type is MACed.
        ("UPDATE keys SET key_type = 4 WHERE name = 'sig'", "sig"),
        ("UPDATE keys SET key_type = 0 WHERE name = 'sig'", "sig"),
        // An HMAC key passed off as AES (label v2 to v1).
        ("UPDATE keys SET key_type = 0 WHERE name = 'mac'", "mac"),
        // The public key of another key swapped in.
        (
            "UPDATE versions SET public_key = \
                 (SELECT public_key FROM versions v JOIN keys k ON k.id = v.key_id WHERE k.name = 'other') \
             WHERE version = 1 AND key_id = (SELECT id FROM keys WHERE name = 'sig')",
            "sig",
        ),
        // The public key removed, or one added to an HMAC version.
        (
            "UPDATE versions SET public_key = NULL \
             WHERE key_id = (SELECT id FROM keys WHERE name = 'sig')",
            "sig",
        ),
        (
            "UPDATE versions SET public_key = x'00' \
             WHERE key_id = (SELECT id FROM keys WHERE name = 'mac')",
            "mac",
        ),
    ] {
        let fixture = Fixture::new();
        typed_keys(&fixture);
        let id = {
            let store = fixture.open().unwrap();
            // Revoked: its public key is no longer checked against a secret.
            store.revoke("sig", Some(1)).unwrap();
            id_hex(&store, name)
        };
        fixture.edit(edit);
        let (key, detail) = tampered(fixture.open());
        assert!(key.contains(&id), "{edit}: {key}");
        assert!(
            detail.ends_with("fails authentication under the root key"),
            "{edit}: {detail}"
        );
    }
}

/// Version `number` of the key named `name` among forged rows.
fn version_row<'a>(
    keys: &[db::KeyRow],
    versions: &'a mut [db::VersionRow],
    name: &str,
    number: u32,
) -> &'a mut db::VersionRow {
    let id = keys.iter().find(|k| k.name == name).unwrap().id;
    versions
        .iter_mut()
        .find(|v| v.key_id == id && v.version == number)
        .unwrap()
}

#[test]
fn forged_typed_rows_that_contradict_their_secrets_are_refused() {
    type Forgery = fn(&mut Vec<db::KeyRow>, &mut Vec<db::VersionRow>);
    let cases: [(Forgery, &str, &str); 6] = [
        (
            |keys, _| keys.iter_mut().find(|k| k.name == "sig").unwrap().key_type = 9,
            "sig",
            "has an unknown key type 9",
        ),
        (
            |keys, versions| {
                let theirs = version_row(keys, versions, "other", 1).public_key.clone();
                version_row(keys, versions, "sig", 2).public_key = theirs;
            },
            "sig",
            "version 2: its public key is not the one its secret gives",
        ),
        (
            |keys, versions| version_row(keys, versions, "sig", 2).public_key = None,
            "sig",
            "version 2: lacks its public key",
        ),
        (
            // Version 1 of "sig" is revoked by the fixture below.
            |keys, versions| version_row(keys, versions, "sig", 1).public_key = None,
            "sig",
            "version 1: lacks its public key",
        ),
        (
            |keys, versions| {
                version_row(keys, versions, "mac", 1).public_key = Some(vec![0x30, 0x00]);
            },
            "mac",
            "version 1: has a public key but its key type has none",
        ),
        (
            // The HMAC key's secret read as an Ed25519 key (type forged).
            |keys, _| keys.iter_mut().find(|k| k.name == "mac").unwrap().key_type = 3,
            "mac",
            "version 1: lacks its public key",
        ),
    ];
    for (forge, name, expected) in cases {
        let fixture = Fixture::new();
        typed_keys(&fixture);
        let id = {
            let store = fixture.open().unwrap();
            store.revoke("sig", Some(1)).unwrap();
            id_hex(&store, name)
        };
        fixture.forge(forge);
        let (key, detail) = tampered(fixture.open());
        assert!(key.contains(&id), "{expected}: {key}");
        assert_eq!(detail, expected);
    }
}

// --- Lifecycle fields and the daemon clock (issue 12) ------------------------

const DAY: u64 = 86_400;

fn settings(description: &str, tags: &[(&str, &str)], period: Option<u64>) -> NewKeySettings {
    NewKeySettings {
        rotation_period: period,
        description: description.to_string(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

impl Fixture {
    /// Moves the store's clocks: wall by `wall` seconds, monotonic by
    /// `monotonic`, from the real clocks.
    fn move_clock(&self, wall: i64, monotonic: i64) {
        std::fs::write(
            self._tmp.path().join("clock"),
            format!("{wall} {monotonic}"),
        )
        .unwrap();
    }
}

/// A store with "meta" (description, tags, period), "pending" (scheduled
/// for deletion in 7 days) and "plain"; returns the due of "pending".
fn lifecycle_keys(fixture: &Fixture) -> DeletionDue {
    let store = fixture.open().unwrap();
    store
        .create_with(
            "meta",
            KeyType::Ed25519,
            settings(
                "payments DB",
                &[("env", "prod"), ("team", "pay")],
                Some(90 * DAY),
            ),
        )
        .unwrap();
    store.create("pending").unwrap();
    store.create("plain").unwrap();
    store.advance_daemon_clock(100).unwrap();
    let due = store.deletion_due_in(7).unwrap();
    store.schedule_deletion("pending", due).unwrap();
    due
}

#[test]
fn every_new_field_and_the_daemon_clock_survive_a_reopen() {
    let fixture = Fixture::new();
    let due = lifecycle_keys(&fixture);
    assert_eq!(due.elapsed, 100 + 7 * DAY);
    let store = fixture.open().unwrap();
    assert_eq!(store.daemon_clock(), 100);
    let keys = store.keys();
    let meta = keys.by_name("meta").unwrap();
    assert_eq!(meta.description(), "payments DB");
    assert_eq!(meta.tags().get("env").map(String::as_str), Some("prod"));
    assert_eq!(meta.rotation_period(), Some(90 * DAY));
    let created = meta.latest().unwrap().created;
    assert_eq!(meta.next_rotation(), Some(created + 90 * DAY));
    let info = meta.info();
    assert_eq!(info.description, "payments DB");
    assert_eq!(info.tags.len(), 2);
    assert_eq!(info.rotation_period, Some(90 * DAY));
    assert_eq!(info.next_rotation, Some(created + 90 * DAY));
    let pending = keys.by_name("pending").unwrap();
    assert_eq!(pending.state(), KeyState::PendingDeletion);
    assert_eq!(pending.deletion_due(), Some(due));
    assert_eq!(pending.info().deletion_date, Some(due.wall));
    let plain = keys.by_name("plain").unwrap();
    assert_eq!(plain.info().description, "");
    assert!(plain.tags().is_empty() && plain.rotation_period().is_none());
    assert_eq!(plain.next_rotation(), None);

    // Updates persist too; a description of None keeps the old one.
    store
        .update_metadata(
            "meta",
            None,
            [("owner".to_string(), "ana".to_string())].into(),
            &["env".to_string()],
        )
        .unwrap();
    store.set_rotation_period("meta", None).unwrap();
    store
        .update_metadata(
            "plain",
            Some("now described".into()),
            Default::default(),
            &[],
        )
        .unwrap();
    drop((keys, store));
    let store = fixture.open().unwrap();
    let keys = store.keys();
    let meta = keys.by_name("meta").unwrap();
    assert_eq!(meta.description(), "payments DB");
    let tags: Vec<&str> = meta.tags().keys().map(String::as_str).collect();
    assert_eq!(tags, ["owner", "team"]);
    assert_eq!(meta.rotation_period(), None);
    assert_eq!(
        keys.by_name("plain").unwrap().description(),
        "now described"
    );
}

#[test]
fn the_store_refuses_settings_beyond_the_limits_naming_them() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    let refused = |result: Result<Arc<Key>, StoreError>, limit: &str| match result {
        Err(StoreError::InvalidArgument(message)) => {
            assert!(message.contains(limit), "{message:?} lacks {limit:?}")
        }
        other => panic!("expected InvalidArgument naming {limit:?}, got {other:?}"),
    };
    refused(
        store.create_with(
            "k",
            KeyType::Aes256Gcm,
            settings(&"x".repeat(1025), &[], None),
        ),
        "1024 bytes",
    );
    refused(
        store.create_with("k", KeyType::Aes256Gcm, settings("", &[("a b", "")], None)),
        "1 to 64",
    );
    refused(
        store.create_with("k", KeyType::Aes256Gcm, settings("", &[], Some(60))),
        "minimum of 1h",
    );
    assert!(store.keys().by_name("k").is_none(), "nothing was created");
    store.create("k").unwrap();
    refused(
        store.update_metadata("k", Some("a\nb".into()), Default::default(), &[]),
        "control character",
    );
    let many = (0..33).map(|i| (format!("t{i}"), String::new())).collect();
    refused(
        store.update_metadata("k", None, many, &[]),
        "at most 32 tags",
    );
    refused(
        store.set_rotation_period("k", Some(u64::MAX)),
        "maximum of 100y",
    );
    assert!(matches!(
        store.deletion_due_in(6),
        Err(StoreError::InvalidArgument(m)) if m.contains("7 to 30 days")
    ));
}

#[test]
fn a_pending_key_refuses_state_changes_but_can_be_revoked_or_cancelled() {
    let fixture = Fixture::new();
    lifecycle_keys(&fixture);
    let store = fixture.open().unwrap();
    let pending = |result: Result<Arc<Key>, StoreError>| match result {
        Err(e @ StoreError::KeyPendingDeletion { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("hostkms cancel-deletion pending"),
                "{message}"
            );
            assert!(message.contains('T') && message.contains('Z'), "{message}");
        }
        other => panic!("expected KeyPendingDeletion, got {other:?}"),
    };
    pending(store.rotate("pending"));
    pending(store.set_enabled("pending", true));
    pending(store.set_enabled("pending", false));
    pending(store.schedule_deletion("pending", store.deletion_due_in(30).unwrap()));
    let id = store.keys().by_name("pending").unwrap().id();
    assert!(matches!(
        store.rotate_if_latest(id, 1),
        Err(StoreError::KeyPendingDeletion { .. })
    ));
    // A version can be revoked (its successor made), the minimum raised.
    store.revoke("pending", Some(1)).unwrap();
    store.set_min_decryption_version("pending", 2).unwrap();
    assert_eq!(
        store.keys().by_name("pending").unwrap().state(),
        KeyState::PendingDeletion
    );
    // Cancel: disabled, no date; a second cancel is refused.
    let cancelled = store.cancel_deletion("pending").unwrap();
    assert_eq!(cancelled.state(), KeyState::Disabled);
    assert_eq!(cancelled.deletion_due(), None);
    assert!(matches!(
        store.cancel_deletion("pending"),
        Err(StoreError::InvalidArgument(m)) if m.contains("not scheduled for deletion")
    ));
    // Scheduled again, then revoked whole: revoked, no date.
    store
        .schedule_deletion("pending", store.deletion_due_in(7).unwrap())
        .unwrap();
    let revoked = store.revoke("pending", None).unwrap();
    assert_eq!(revoked.state(), KeyState::Revoked);
    assert_eq!(revoked.deletion_due(), None);
    assert!(matches!(
        store.schedule_deletion("pending", store.deletion_due_in(7).unwrap()),
        Err(StoreError::KeyRevoked(_))
    ));
    drop(store);
    assert_eq!(
        fixture
            .open()
            .unwrap()
            .keys()
            .by_name("pending")
            .unwrap()
            .state(),
        KeyState::Revoked
    );
}

#[test]
fn a_deletion_waits_for_both_clocks_then_deletes_every_kek() {
    let fixture = Fixture::new();
    let due = lifecycle_keys(&fixture);
    let store = fixture.open().unwrap();
    let sink = Arc::new(RecordingSink::default());
    store.set_change_sink(sink.clone());
    let not_due = |result: Result<Arc<Key>, StoreError>| {
        assert!(
            matches!(result, Err(StoreError::DeletionNotDue { .. })),
            "{result:?}"
        )
    };
    // Neither clock has passed.
    not_due(store.delete_due("pending", store.clock().now(), store.daemon_clock()));
    // The wall clock jumps 8 days ahead: the daemon has not measured them.
    fixture.move_clock(8 * DAY as i64, 0);
    let now = store.clock().now();
    assert!(now >= due.wall);
    not_due(store.delete_due("pending", now, store.daemon_clock()));
    // A caller's daemon clock ahead of the persisted one is not believed.
    not_due(store.delete_due("pending", now, u64::MAX));
    // The daemon measures the 7 days, but the wall clock went back.
    fixture.move_clock(0, 0);
    store.advance_daemon_clock(7 * DAY).unwrap();
    not_due(store.delete_due("pending", store.clock().now(), store.daemon_clock()));
    assert_eq!(
        store.keys().by_name("pending").unwrap().state(),
        KeyState::PendingDeletion
    );
    assert!(sink.seen.lock().unwrap().is_empty());
    // Both passed: deleted as a whole-key revocation.
    fixture.move_clock(7 * DAY as i64 + 1, 0);
    let deleted = store
        .delete_due("pending", store.clock().now(), store.daemon_clock())
        .unwrap();
    assert_eq!(deleted.state(), KeyState::Revoked);
    assert_eq!(deleted.deletion_due(), None);
    assert!(deleted.latest().unwrap().is_revoked());
    let seen = sink.seen.lock().unwrap();
    let (name, change, keks) = &seen[0];
    assert_eq!(
        (name.as_str(), *change),
        ("pending", Change::DeleteScheduled)
    );
    assert!(keks.iter().all(Option::is_none));
    assert!(Change::DeleteScheduled.reduces_access() && Change::ScheduleDeletion.reduces_access());
    assert!(!Change::CancelDeletion.reduces_access() && !Change::Metadata.reduces_access());
    // Undoing a cancel would destroy the key: counted all the same.
    assert!(Change::CancelDeletion.is_rollback_protected());
    assert!(
        Change::Revoke.is_rollback_protected() && Change::ScheduleDeletion.is_rollback_protected()
    );
    for change in [
        Change::Create,
        Change::Rotate,
        Change::Enable,
        Change::Restore,
        Change::Import,
        Change::Metadata,
        Change::RotationPeriod,
    ] {
        assert!(!change.is_rollback_protected(), "{change:?}");
    }
    drop(seen);
    drop(store);
    let store = fixture.open().unwrap();
    let key = store.keys().by_name("pending").cloned().unwrap();
    assert_eq!(key.state(), KeyState::Revoked);
    assert!(key.versions_revoked_for_tests());
}

#[test]
fn the_daemon_clock_persists_only_grows_and_refuses_edits() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    assert_eq!(store.daemon_clock(), 0);
    assert_eq!(store.advance_daemon_clock(60).unwrap(), 60);
    assert_eq!(store.advance_daemon_clock(0).unwrap(), 60);
    assert_eq!(store.advance_daemon_clock(5).unwrap(), 65);
    // A clock moved back does not move it: it only adds what it is given.
    fixture.move_clock(-(30 * DAY as i64), -(30 * DAY as i64));
    assert_eq!(store.daemon_clock(), 65);
    drop(store);
    let store = fixture.open().unwrap();
    assert_eq!(store.daemon_clock(), 65);
    assert_eq!(store.advance_daemon_clock(u64::MAX).unwrap(), u64::MAX);
    drop(store);
    // Edited on disk: the value, the MAC, or the form.
    let stored: String = Connection::open(fixture.db_path())
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE name = 'daemon_clock'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let forged = stored.replacen(&u64::MAX.to_string(), "99999999999", 1);
    for text in [forged.as_str(), "v1 1", "v2 1 00", "v1 x 00"] {
        fixture.edit(&format!(
            "UPDATE meta SET value = '{text}' WHERE name = 'daemon_clock'"
        ));
        let (key, _) = tampered(fixture.open());
        assert_eq!(key, "(daemon clock)");
    }
    fixture.edit(&format!(
        "UPDATE meta SET value = '{stored}' WHERE name = 'daemon_clock'"
    ));
    assert_eq!(fixture.open().unwrap().daemon_clock(), u64::MAX);
}

#[test]
fn edited_lifecycle_columns_fail_authentication() {
    let fixture = Fixture::new();
    lifecycle_keys(&fixture);
    let store = fixture.open().unwrap();
    let (meta, pending, plain) = (
        id_hex(&store, "meta"),
        id_hex(&store, "pending"),
        id_hex(&store, "plain"),
    );
    drop(store);
    let edits = [
        (&meta, "description = 'other'"),
        (&meta, "description = ''"),
        (&meta, "tags = x''"),
        (&meta, "rotation_period = 3600"),
        (&meta, "rotation_period = NULL"),
        (&pending, "deletion_due_wall = deletion_due_wall + 86400"),
        (&pending, "deletion_due_elapsed = 0"),
        // Cancelled by hand: every new field stripped, state disabled.
        (
            &pending,
            "state = 1, deletion_due_wall = NULL, deletion_due_elapsed = NULL",
        ),
        (&plain, "description = 'added'"),
        (&plain, "rotation_period = 3600"),
        (&plain, "state = 3"),
    ];
    for (id, set) in edits {
        let before = std::fs::read(fixture.db_path()).unwrap();
        fixture.edit(&format!(
            "UPDATE keys SET {set} WHERE hex(id) = upper('{id}')"
        ));
        let (key, detail) = tampered(fixture.open());
        assert!(key.contains(id.as_str()), "{set}: {key}");
        assert!(!detail.is_empty());
        std::fs::write(fixture.db_path(), before).unwrap();
    }
    fixture.open().unwrap();
}

#[test]
fn forged_lifecycle_rows_that_contradict_themselves_are_refused() {
    let fixture = Fixture::new();
    lifecycle_keys(&fixture);
    type Edit = fn(&mut db::KeyRow);
    let cases: [(&str, Edit); 4] = [
        ("half a deletion date", |row| {
            row.deletion_due_elapsed = None
        }),
        ("disagree", |row| row.state = 1),
        ("out of name order", |row| {
            let mut tags = 2u32.to_be_bytes().to_vec();
            for name in ["z", "a"] {
                tags.extend_from_slice(&1u32.to_be_bytes());
                tags.extend_from_slice(name.as_bytes());
                tags.extend_from_slice(&0u32.to_be_bytes());
            }
            row.tags = tags;
        }),
        ("1024 bytes", |row| row.description = "d".repeat(2000)),
    ];
    for (detail, change) in cases {
        let before = std::fs::read(fixture.db_path()).unwrap();
        fixture.forge(|keys, _| {
            let row = keys.iter_mut().find(|k| k.name == "pending").unwrap();
            change(row);
        });
        let (_, found) = tampered(fixture.open());
        assert!(found.contains(detail), "{found:?} lacks {detail:?}");
        std::fs::write(fixture.db_path(), before).unwrap();
    }
}

/// The schema of the release before issue 12: key types, no lifecycle
/// columns.
const SCHEMA_BEFORE_LIFECYCLE: &str = "
CREATE TABLE keys (
    id                     BLOB PRIMARY KEY CHECK (length(id) = 16),
    name                   TEXT NOT NULL UNIQUE,
    created                INTEGER NOT NULL,
    state                  INTEGER NOT NULL,
    latest_version         INTEGER NOT NULL,
    min_decryption_version INTEGER NOT NULL,
    mac                    BLOB NOT NULL,
    key_type               INTEGER NOT NULL DEFAULT 0
);";

#[test]
fn a_store_from_before_the_lifecycle_fields_opens_unchanged_and_keeps_working() {
    let fixture = Fixture::new();
    let store = fixture.open().unwrap();
    store.create("old").unwrap();
    store.rotate("old").unwrap();
    store.create_typed("sig", KeyType::Ed25519).unwrap();
    store.set_enabled("sig", false).unwrap();
    let blob = wrap(&store, "old", b"from before");
    let info: Vec<_> = store.keys().after(None).map(|k| k.info()).collect();
    drop(store);
    let macs = || -> Vec<Vec<u8>> {
        let conn = Connection::open(fixture.db_path()).unwrap();
        let mut statement = conn.prepare("SELECT mac FROM keys ORDER BY name").unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let old_macs = macs();
    // The rows moved into the old table, MACs as they are: what the
    // previous release wrote.
    fixture.edit(&format!(
        "PRAGMA legacy_alter_table = ON;
         ALTER TABLE keys RENAME TO keys_new;
         {SCHEMA_BEFORE_LIFECYCLE}
         INSERT INTO keys SELECT id, name, created, state, latest_version,
             min_decryption_version, mac, key_type FROM keys_new;
         DROP TABLE keys_new;"
    ));
    let has_description = || -> bool {
        Connection::open(fixture.db_path())
            .unwrap()
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('keys') WHERE name = 'description'",
                [],
                |row| row.get(0),
            )
            .unwrap()
    };
    assert!(!has_description());
    let store = fixture.open().unwrap();
    assert!(has_description());
    assert_eq!(macs(), old_macs, "opening rewrites no row");
    let after: Vec<_> = store.keys().after(None).map(|k| k.info()).collect();
    assert_eq!(after, info);
    assert_eq!(store.daemon_clock(), 0);
    assert_eq!(
        unwrap_with(&store, "old", 2, &blob).as_deref(),
        Some(&b"from before"[..])
    );
    // It keeps working, new fields included, across a reopen.
    store.rotate("old").unwrap();
    store
        .update_metadata(
            "sig",
            Some("signs releases".into()),
            Default::default(),
            &[],
        )
        .unwrap();
    store.advance_daemon_clock(1).unwrap();
    drop(store);
    let store = fixture.open().unwrap();
    assert_eq!(store.keys().by_name("old").unwrap().latest_version(), 3);
    assert_eq!(
        store.keys().by_name("sig").unwrap().description(),
        "signs releases"
    );
    assert_eq!(store.daemon_clock(), 1);
}

#[test]
fn a_store_cut_off_before_its_first_stamp_is_made_anew_but_a_used_one_is_not() {
    // kill -9 between the schema and the root key check value: the file
    // holds the schema only, and never held a key.
    let fixture = Fixture::new();
    let dir = StateDir::open(&fixture.dir).unwrap();
    drop(crate::keystore::db::Database::open(&dir.file(KEYSTORE_DB)).unwrap());
    let store = fixture
        .open()
        .expect("an unstamped, empty store is made anew");
    store.create("after").unwrap();
    drop(store);
    assert!(fixture.open().unwrap().keys().by_name("after").is_some());
    // A store that was stamped, even without keys, is not.
    let stamped = Fixture::new();
    drop(stamped.open().unwrap());
    stamped.edit("DELETE FROM meta WHERE name = 'root_key_check'");
    let (key, detail) = tampered(stamped.open());
    assert_eq!(key, "(none)");
    assert_eq!(detail, "table meta lacks the root key check value");
}
