//! [`KeyStore::import_key`] between two stores under different root keys,
//! as two hosts would hold them.

use agent_proto::{EncryptionContext, KeyState, KeyType};

use super::test_host::{self, Host};
use super::*;
use crate::envelope;

fn material(store: &KeyStore, name: &str) -> KeyMaterial {
    store.material(store.keys().by_name(name).unwrap()).unwrap()
}

fn wrap(store: &KeyStore, name: &str, plaintext: &[u8]) -> Vec<u8> {
    test_host::wrap(store, name, plaintext, &EncryptionContext::default())
}

fn unwrap(store: &KeyStore, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let header = envelope::read_header(ciphertext).unwrap();
    let keys = store.keys();
    let version = keys.by_id(header.key_id)?.version(header.version)?;
    let plaintext =
        envelope::unwrap(version.cipher()?, ciphertext, &EncryptionContext::default()).ok()?;
    Some(plaintext.to_vec())
}

#[test]
fn an_imported_key_unwraps_what_the_other_host_wrapped_and_survives_a_reopen() {
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    store_a.create("app-db").unwrap();
    store_a.rotate("app-db").unwrap();
    let old = {
        let keys = store_a.keys();
        let key = keys.by_name("app-db").unwrap();
        let v1 = key.version(1).unwrap();
        envelope::wrap(
            v1.cipher().unwrap(),
            key.id(),
            1,
            b"v1",
            &EncryptionContext::default(),
        )
        .unwrap()
    };
    let new = wrap(&store_a, "app-db", b"v2");
    let imported = store_b.import_key(&material(&store_a, "app-db")).unwrap();
    assert!(imported.created);
    assert_eq!(imported.added, 2);
    assert_eq!(
        imported.key.id(),
        store_a.keys().by_name("app-db").unwrap().id()
    );
    assert_eq!(unwrap(&store_b, &old).unwrap(), b"v1");
    assert_eq!(unwrap(&store_b, &new).unwrap(), b"v2");
    drop(store_b);
    let store_b = b.open();
    assert_eq!(unwrap(&store_b, &new).unwrap(), b"v2");
    assert_eq!(
        store_b.keys().by_name("app-db").unwrap().state(),
        KeyState::Enabled
    );
}

#[test]
fn importing_again_changes_nothing_and_newer_versions_are_added() {
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    store_a.create("app").unwrap();
    let file = material(&store_a, "app");
    store_b.import_key(&file).unwrap();
    let again = store_b.import_key(&file).unwrap();
    assert_eq!((again.added, again.created), (0, false));
    store_a.rotate("app").unwrap();
    let newer = store_b.import_key(&material(&store_a, "app")).unwrap();
    assert_eq!((newer.added, newer.created), (1, false));
    let ciphertext = wrap(&store_a, "app", b"after rotate");
    assert_eq!(unwrap(&store_b, &ciphertext).unwrap(), b"after rotate");
    // An older file brings nothing back and takes nothing away.
    let older = store_b.import_key(&file).unwrap();
    assert_eq!(older.added, 0);
    assert_eq!(older.key.latest_version(), 2);
}

#[test]
fn a_version_revoked_here_stays_revoked_and_local_state_is_kept() {
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    store_a.create("app").unwrap();
    store_a.rotate("app").unwrap();
    let v1 = {
        let keys = store_a.keys();
        let key = keys.by_name("app").unwrap();
        envelope::wrap(
            key.version(1).unwrap().cipher().unwrap(),
            key.id(),
            1,
            b"old",
            &EncryptionContext::default(),
        )
        .unwrap()
    };
    store_b.import_key(&material(&store_a, "app")).unwrap();
    store_b.revoke("app", Some(1)).unwrap();
    store_b.set_enabled("app", false).unwrap();
    store_a.rotate("app").unwrap();
    let imported = store_b.import_key(&material(&store_a, "app")).unwrap();
    assert_eq!(imported.added, 1);
    assert!(imported.key.version(1).unwrap().is_revoked());
    assert_eq!(imported.key.state(), KeyState::Disabled);
    assert!(unwrap(&store_b, &v1).is_none());
    drop(store_b);
    assert!(
        b.open()
            .keys()
            .by_name("app")
            .unwrap()
            .version(1)
            .unwrap()
            .is_revoked()
    );
    // A key revoked here is refused whole.
    let store_b = b.open();
    store_b.revoke("app", None).unwrap();
    let err = store_b.import_key(&material(&store_a, "app")).unwrap_err();
    assert!(matches!(err, StoreError::KeyRevoked(_)), "{err}");
}

#[test]
fn a_name_held_by_another_key_or_different_material_is_refused() {
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    store_a.create("app").unwrap();
    store_b.create("app").unwrap();
    let err = store_b.import_key(&material(&store_a, "app")).unwrap_err();
    let message = err.to_string();
    let id_a = store_a.keys().by_name("app").unwrap().id().to_string();
    let id_b = store_b.keys().by_name("app").unwrap().id().to_string();
    assert!(matches!(err, StoreError::ImportRefused(_)), "{err}");
    assert!(
        message.contains(&id_a) && message.contains(&id_b),
        "{message}"
    );

    store_a.create("other").unwrap();
    store_b.import_key(&material(&store_a, "other")).unwrap();
    let mut forged = material(&store_a, "other");
    if let Some(kek) = forged.versions[0].kek.as_mut() {
        kek[0] ^= 1;
    }
    let err = store_b.import_key(&forged).unwrap_err();
    assert!(matches!(err, StoreError::ImportRefused(_)), "{err}");
    assert!(err.to_string().contains("version 1"), "{err}");
    let mut renamed = material(&store_a, "other");
    renamed.name = "renamed".to_string();
    let err = store_b.import_key(&renamed).unwrap_err();
    assert!(matches!(err, StoreError::ImportRefused(_)), "{err}");
    assert!(store_b.keys().by_name("renamed").is_none());
}

#[test]
fn material_no_store_could_hold_is_refused() {
    let a = Host::new(1);
    let store = a.open();
    store.create("app").unwrap();
    store.rotate("app").unwrap();
    let good = material(&store, "app");
    let fresh = Host::new(2).open();
    let cases: Vec<(KeyMaterial, &str)> = vec![
        (
            KeyMaterial {
                state: KeyState::Revoked,
                ..good.clone()
            },
            "revoked",
        ),
        (
            KeyMaterial {
                versions: Vec::new(),
                ..good.clone()
            },
            "no version",
        ),
        (
            KeyMaterial {
                versions: vec![good.versions[1].clone()],
                ..good.clone()
            },
            "numbered",
        ),
        (
            KeyMaterial {
                min_decryption_version: 3,
                ..good.clone()
            },
            "minimum decryption version",
        ),
        (
            KeyMaterial {
                name: "bad name".to_string(),
                ..good.clone()
            },
            "",
        ),
        (
            {
                let mut m = good.clone();
                m.versions[1].kek = None;
                m
            },
            "latest version",
        ),
    ];
    for (material, expected) in cases {
        let err = fresh.import_key(&material).unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    assert!(fresh.keys().is_empty());
}

#[test]
fn an_imported_signing_key_keeps_its_type_and_public_keys_and_signs_the_same() {
    use agent_proto::{KeyType, SecretBytes, SignInput};
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    store_a.create_typed("rel", KeyType::EcdsaP256).unwrap();
    store_a.rotate("rel").unwrap();
    store_a.revoke("rel", Some(1)).unwrap();
    let file = material(&store_a, "rel");
    let imported = store_b.import_key(&file).unwrap();
    assert_eq!(imported.key.key_type(), KeyType::EcdsaP256);
    drop(store_b);
    let store_b = b.open();
    let (keys_a, keys_b) = (store_a.keys(), store_b.keys());
    let (there, here) = (
        keys_a.by_name("rel").unwrap(),
        keys_b.by_name("rel").unwrap(),
    );
    assert_eq!(here.key_type(), KeyType::EcdsaP256);
    for number in [1, 2] {
        let public_key = here.version(number).unwrap().public_key_der();
        assert!(public_key.is_some(), "version {number}");
        assert_eq!(public_key, there.version(number).unwrap().public_key_der());
    }
    let message = || SignInput::Message(SecretBytes::new(b"release 1.0".to_vec()));
    let sign = |key: &Key| {
        key.latest()
            .unwrap()
            .key()
            .unwrap()
            .sign(&message())
            .unwrap()
    };
    // RFC 6979: the same key signs the same message the same way.
    assert_eq!(sign(here), sign(there));
}

#[test]
fn a_key_of_another_type_under_an_existing_id_is_refused() {
    use agent_proto::KeyType;
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    store_a.create_typed("tok", KeyType::HmacSha256).unwrap();
    store_b.import_key(&material(&store_a, "tok")).unwrap();
    store_a.rotate("tok").unwrap();
    let mut retyped = material(&store_a, "tok");
    retyped.key_type = KeyType::HmacSha512;
    let err = store_b.import_key(&retyped).unwrap_err();
    assert!(matches!(err, StoreError::ImportRefused(_)), "{err}");
    assert!(err.to_string().contains("hmac-sha512"), "{err}");
    assert_eq!(store_b.keys().by_name("tok").unwrap().latest_version(), 1);
}

#[test]
fn a_new_key_arrives_with_its_metadata_and_a_pending_one_disabled_while_a_known_key_keeps_this_hosts()
 {
    let (a, b) = (Host::new(1), Host::new(2));
    let (store_a, store_b) = (a.open(), b.open());
    let settings = NewKeySettings {
        rotation_period: Some(7 * 86_400),
        description: "shared secret".into(),
        tags: [("team".to_string(), "ops".to_string())].into(),
    };
    store_a
        .create_with("shared", KeyType::HmacSha256, settings.clone())
        .unwrap();
    let due = store_a.deletion_due_in(30).unwrap();
    store_a.schedule_deletion("shared", due).unwrap();
    let imported = store_b.import_key(&material(&store_a, "shared")).unwrap();
    assert!(imported.created);
    drop(store_b);
    let store_b = b.open();
    let keys = store_b.keys();
    let key = keys.by_name("shared").unwrap();
    assert_eq!(key.state(), KeyState::Disabled);
    assert_eq!(key.deletion_due(), None);
    assert_eq!(key.description(), settings.description);
    assert_eq!(key.tags(), &settings.tags);
    assert_eq!(key.rotation_period(), settings.rotation_period);
    // A later import of the same key (a new version, other metadata)
    // adds the version and leaves this host's metadata and state alone.
    store_a.cancel_deletion("shared").unwrap();
    store_a.set_enabled("shared", true).unwrap();
    store_a.rotate("shared").unwrap();
    store_a
        .update_metadata("shared", Some("changed".into()), Default::default(), &[])
        .unwrap();
    store_a.set_rotation_period("shared", None).unwrap();
    let again = store_b.import_key(&material(&store_a, "shared")).unwrap();
    assert_eq!((again.added, again.created), (1, false));
    let key = Arc::clone(store_b.keys().by_name("shared").unwrap());
    assert_eq!(key.state(), KeyState::Disabled);
    assert_eq!(key.description(), settings.description);
    assert_eq!(key.rotation_period(), settings.rotation_period);
}
