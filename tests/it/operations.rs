//! Every key operation through the client library, against the real
//! daemon and a real swtpm: semantics, persistence across restarts,
//! tampering, and concurrency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness};
use agent_proto::{Client, ClientError, EncryptionContext, ErrorCode, KeyState, VersionState};

fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Daemon { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn restart(files: &DaemonFiles, daemon: Daemon) -> Daemon {
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    Daemon::start(files).expect("restart")
}

#[test]
fn every_operation_through_the_client_library() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let ctx = context(&[("table", "users")]);

    let created = client.create_key("app-db").expect("create");
    assert_eq!(
        (created.name.as_str(), created.latest_version, created.state),
        ("app-db", 1, KeyState::Enabled)
    );
    assert_eq!(refused(client.create_key("app-db")).0, ErrorCode::KeyExists);
    for bad in ["", "has space", "slash/name", &"x".repeat(129)] {
        assert_eq!(
            refused(client.create_key(bad)).0,
            ErrorCode::InvalidArgument,
            "{bad:?}"
        );
    }

    let wrapped = client.wrap("app-db", b"hello world", &ctx).expect("wrap");
    assert_eq!(wrapped.version, 1);
    assert_eq!(wrapped.ciphertext.len(), 11 + 53);
    assert_eq!(&wrapped.ciphertext.as_bytes()[..5], b"HKMS\x01");
    assert_eq!(&wrapped.ciphertext.as_bytes()[5..21], &created.id);
    let unwrapped = client
        .unwrap(wrapped.ciphertext.as_bytes(), &ctx, None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"hello world");
    assert_eq!((unwrapped.key.as_str(), unwrapped.version), ("app-db", 1));
    client
        .unwrap(wrapped.ciphertext.as_bytes(), &ctx, Some("app-db"))
        .expect("unwrap naming the key");

    let data_key = client
        .generate_data_key("app-db", 32, &ctx)
        .expect("datakey");
    let plaintext = data_key.plaintext.clone().expect("plaintext returned");
    assert_eq!(plaintext.len(), 32);
    let again = client
        .unwrap(data_key.ciphertext.as_bytes(), &ctx, None)
        .expect("unwrap data key");
    assert_eq!(again.plaintext, plaintext);
    let only_wrapped = client
        .generate_data_key_without_plaintext("app-db", 64, &ctx)
        .expect("datakey without plaintext");
    assert!(only_wrapped.plaintext.is_none());
    assert_eq!(
        client
            .unwrap(only_wrapped.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .len(),
        64
    );
    for bytes in [0, 8, 31, 65, 1024] {
        assert_eq!(
            refused(client.generate_data_key("app-db", bytes, &ctx)).0,
            ErrorCode::InvalidArgument
        );
    }

    let rotated = client.rotate("app-db").expect("rotate");
    assert_eq!(rotated.latest_version, 2);
    let rewrapped = client
        .rewrap(wrapped.ciphertext.as_bytes(), &ctx, None)
        .expect("rewrap");
    assert_eq!(rewrapped.version, 2);
    assert_eq!(
        client
            .unwrap(rewrapped.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"hello world"
    );

    let described = client.describe_key("app-db").expect("describe");
    assert_eq!(described.versions.len(), 2);
    assert_eq!(
        described.versions[0].encryptions, 3,
        "wrap + two data keys under version 1"
    );
    assert_eq!(described.versions[1].encryptions, 1, "the rewrap");
    assert_eq!(
        refused(client.describe_key("nope")).0,
        ErrorCode::KeyNotFound
    );

    client.create_key("other").expect("second key");
    let names: Vec<String> = client
        .list_keys()
        .expect("list")
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["app-db", "other"]);

    let disabled = client.disable("app-db").expect("disable");
    assert_eq!(disabled.state, KeyState::Disabled);
    assert_eq!(
        refused(client.wrap("app-db", b"x", &ctx)).0,
        ErrorCode::KeyDisabled
    );
    assert_eq!(
        refused(client.unwrap(wrapped.ciphertext.as_bytes(), &ctx, None)).0,
        ErrorCode::KeyDisabled
    );
    client
        .rotate("app-db")
        .expect("an admin may still rotate a disabled key");
    client.enable("app-db").expect("enable");
    client
        .wrap("app-db", b"x", &ctx)
        .expect("wrap after enable");

    let status = client.status().expect("status");
    assert_eq!(status.counters["keys"], 2);
    assert_eq!(status.counters["versions"], 4);
    drop(files);
}

#[test]
fn rotation_keeps_old_ciphertexts_and_revocation_ends_them() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let ctx = EncryptionContext::new();
    client.create_key("k").unwrap();
    let v1 = client.wrap("k", b"one", &ctx).unwrap();
    client.rotate("k").unwrap();
    let v2 = client.wrap("k", b"two", &ctx).unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(
        client
            .unwrap(v1.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"one"
    );
    assert_eq!(
        client
            .unwrap(v2.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"two"
    );

    let info = client.revoke("k", Some(1)).unwrap();
    assert_eq!(info.versions[0].state, VersionState::Revoked);
    let (code, message) = refused(client.unwrap(v1.ciphertext.as_bytes(), &ctx, None));
    assert_eq!(code, ErrorCode::VersionRevoked);
    assert!(message.contains("version 1"), "{message}");
    assert_eq!(
        refused(client.rewrap(v1.ciphertext.as_bytes(), &ctx, None)).0,
        ErrorCode::VersionRevoked
    );
    assert_eq!(
        client
            .unwrap(v2.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"two"
    );
    client
        .revoke("k", Some(1))
        .expect("revoking again changes nothing");
    assert_eq!(
        refused(client.revoke("k", Some(9))).0,
        ErrorCode::VersionNotFound
    );

    // Revoking the latest version first rotates, so the key keeps working.
    let info = client.revoke("k", Some(2)).unwrap();
    assert_eq!(info.latest_version, 3);
    assert_eq!(info.versions[1].state, VersionState::Revoked);
    assert_eq!(client.wrap("k", b"three", &ctx).unwrap().version, 3);
    assert_eq!(
        refused(client.unwrap(v2.ciphertext.as_bytes(), &ctx, None)).0,
        ErrorCode::VersionRevoked
    );

    let v3 = client.wrap("k", b"three again", &ctx).unwrap();

    // The whole key: every operation answers KeyRevoked, for good.
    let revoked = client.revoke("k", None).unwrap();
    assert_eq!(revoked.state, KeyState::Revoked);
    assert!(
        revoked
            .versions
            .iter()
            .all(|v| v.state == VersionState::Revoked)
    );
    assert_eq!(
        refused(client.wrap("k", b"x", &ctx)).0,
        ErrorCode::KeyRevoked
    );
    assert_eq!(
        refused(client.unwrap(v3.ciphertext.as_bytes(), &ctx, None)).0,
        ErrorCode::KeyRevoked
    );
    assert_eq!(
        refused(client.generate_data_key("k", 32, &ctx)).0,
        ErrorCode::KeyRevoked
    );
    assert_eq!(refused(client.rotate("k")).0, ErrorCode::KeyRevoked);
    assert_eq!(refused(client.enable("k")).0, ErrorCode::KeyRevoked);
    assert_eq!(refused(client.revoke("k", None)).0, ErrorCode::KeyRevoked);
    assert_eq!(
        refused(client.set_min_decryption_version("k", 1)).0,
        ErrorCode::KeyRevoked
    );
    assert_eq!(
        refused(client.create_key("k")).0,
        ErrorCode::KeyExists,
        "the name stays taken"
    );
}

#[test]
fn minimum_decryption_version_refuses_older_versions_until_lowered() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let ctx = EncryptionContext::new();
    client.create_key("k").unwrap();
    let v1 = client.wrap("k", b"one", &ctx).unwrap();
    client.rotate("k").unwrap();
    let v2 = client.wrap("k", b"two", &ctx).unwrap();
    client.set_min_decryption_version("k", 2).unwrap();
    let (code, message) = refused(client.unwrap(v1.ciphertext.as_bytes(), &ctx, None));
    assert_eq!(code, ErrorCode::VersionRevoked);
    assert!(
        message.contains("minimum decryption version 2"),
        "{message}"
    );
    client.unwrap(v2.ciphertext.as_bytes(), &ctx, None).unwrap();
    client.set_min_decryption_version("k", 1).unwrap();
    client
        .unwrap(v1.ciphertext.as_bytes(), &ctx, None)
        .expect("reversible");
}

#[test]
fn every_tampering_and_every_wrong_context_is_invalid_ciphertext() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let ctx = context(&[("db", "main"), ("table", "users")]);
    client.create_key("k").unwrap();
    client.create_key("other").unwrap();
    let blob = client
        .wrap("k", b"attack at dawn", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();
    let fields = [
        ("magic", 0..4),
        ("format", 4..5),
        ("key id", 5..21),
        ("version", 21..25),
        ("nonce", 25..37),
        ("body", 37..blob.len() - 16),
        ("tag", blob.len() - 16..blob.len()),
    ];
    for (field, range) in fields {
        for i in range {
            for bit in [0x01u8, 0x80] {
                let mut bad = blob.clone();
                bad[i] ^= bit;
                let (code, message) = refused(client.unwrap(&bad, &ctx, None));
                assert_eq!(
                    code,
                    ErrorCode::InvalidCiphertext,
                    "{field} byte {i} bit {bit:#x}: {message}"
                );
            }
        }
    }
    for cut in [0, 10, 36, 37, 52, blob.len() - 1] {
        assert_eq!(
            refused(client.unwrap(&blob[..cut], &ctx, None)).0,
            ErrorCode::InvalidCiphertext,
            "cut {cut}"
        );
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert_eq!(
        refused(client.unwrap(&longer, &ctx, None)).0,
        ErrorCode::InvalidCiphertext
    );
    for wrong in [
        EncryptionContext::new(),
        context(&[("db", "main")]),
        context(&[("db", "main"), ("table", "user")]),
        context(&[("db", "main"), ("table", "users"), ("x", "y")]),
    ] {
        assert_eq!(
            refused(client.unwrap(&blob, &wrong, None)).0,
            ErrorCode::InvalidCiphertext,
            "{wrong:?}"
        );
    }
    let (code, message) = refused(client.unwrap(&blob, &ctx, Some("other")));
    assert_eq!(
        code,
        ErrorCode::InvalidCiphertext,
        "a ciphertext of another key: {message}"
    );
    assert!(!message.contains("attack"), "{message}");
    assert_eq!(
        client.unwrap(&blob, &ctx, None).unwrap().plaintext.expose(),
        b"attack at dawn"
    );
}

#[test]
fn a_name_created_again_never_decrypts_the_old_keys_ciphertexts() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("k").unwrap();
    let blob = client
        .wrap("k", b"old", &EncryptionContext::new())
        .unwrap()
        .ciphertext;
    drop(client);
    drop(daemon);
    // A fresh state dir on the same TPM: a new root key and a new key "k".
    let fresh = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&fresh).unwrap();
    let mut client = daemon.client();
    client.create_key("k").unwrap();
    assert_eq!(
        refused(client.unwrap(blob.as_bytes(), &EncryptionContext::new(), None)).0,
        ErrorCode::InvalidCiphertext
    );
    drop(files);
}

#[test]
fn everything_survives_a_restart() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let ctx = context(&[("purpose", "restart")]);
    let mut client = daemon.client();
    client.create_key("a").unwrap();
    client.create_key("b").unwrap();
    client.create_key("c").unwrap();
    let a1 = client.wrap("a", b"a1", &ctx).unwrap();
    client.rotate("a").unwrap();
    let a2 = client.wrap("a", b"a2", &ctx).unwrap();
    client.revoke("a", Some(1)).unwrap();
    client.disable("b").unwrap();
    client.rotate("c").unwrap();
    client.set_min_decryption_version("c", 2).unwrap();
    let before: BTreeMap<String, agent_proto::KeyInfo> = client
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|k| (k.name.clone(), k))
        .collect();
    drop(client);

    let daemon = restart(&files, daemon);
    let mut client = daemon.client();
    let after: BTreeMap<String, agent_proto::KeyInfo> = client
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|k| (k.name.clone(), k))
        .collect();
    assert_eq!(
        after, before,
        "metadata, states and exact encryption counts survive a clean restart"
    );
    assert_eq!(
        client
            .unwrap(a2.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"a2"
    );
    assert_eq!(
        refused(client.unwrap(a1.ciphertext.as_bytes(), &ctx, None)).0,
        ErrorCode::VersionRevoked
    );
    assert_eq!(
        refused(client.wrap("b", b"x", &ctx)).0,
        ErrorCode::KeyDisabled
    );
    let c1 = after["c"].clone();
    assert_eq!(c1.min_decryption_version, 2);
    client.enable("b").unwrap();
    client.wrap("b", b"x", &ctx).unwrap();

    // A crash (SIGKILL) loses no change: each was durable before its reply.
    client.create_key("after-crash").unwrap();
    let wrapped = client.wrap("after-crash", b"kept", &ctx).unwrap();
    drop(client);
    drop(daemon); // SIGKILL
    let daemon = Daemon::start(&files).unwrap();
    let mut client = daemon.client();
    assert_eq!(
        client
            .unwrap(wrapped.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"kept"
    );
    let count = client.describe_key("after-crash").unwrap().versions[0].encryptions;
    assert!(
        count >= 1,
        "a crash may round the count up, never down: {count}"
    );
}

#[test]
fn a_version_rotates_itself_at_its_encryption_limit() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new().rotate_after_encryptions(5));
    let mut client = daemon.client();
    let ctx = EncryptionContext::new();
    client.create_key("k").unwrap();
    let versions: Vec<u32> = (0..12)
        .map(|i| client.wrap("k", &[i], &ctx).unwrap().version)
        .collect();
    assert_eq!(versions, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]);
    let info = client.describe_key("k").unwrap();
    let counts: Vec<u64> = info.versions.iter().map(|v| v.encryptions).collect();
    assert_eq!(counts, [5, 5, 2]);
    assert!(
        daemon.log().contains("rotated key automatically"),
        "{}",
        daemon.log()
    );
}

#[test]
fn plaintext_limit_is_enforced() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new().max_plaintext(1000));
    let mut client = daemon.client();
    client.create_key("k").unwrap();
    client
        .wrap("k", &[7u8; 1000], &EncryptionContext::new())
        .expect("at the limit");
    let (code, message) = refused(client.wrap("k", &[7u8; 1001], &EncryptionContext::new()));
    assert_eq!(code, ErrorCode::PlaintextTooLarge);
    assert!(
        message.contains("1001") && message.contains("1000"),
        "{message}"
    );
}

#[test]
fn two_hundred_concurrent_clients_get_correct_results() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut admin = daemon.client();
    admin.create_key("shared").unwrap();
    let socket = Arc::new(daemon.socket.clone());
    let workers: Vec<_> = (0..200u32)
        .map(|n| {
            let socket = Arc::clone(&socket);
            thread::spawn(move || {
                let mut client = Client::connect(socket.as_path()).expect("connect");
                let ctx = context(&[("client", &n.to_string())]);
                for round in 0..10u32 {
                    let plaintext = format!("client {n} round {round}").into_bytes();
                    let wrapped = client.wrap("shared", &plaintext, &ctx).expect("wrap");
                    let unwrapped = client
                        .unwrap(wrapped.ciphertext.as_bytes(), &ctx, None)
                        .expect("unwrap");
                    assert_eq!(unwrapped.plaintext.expose(), plaintext.as_slice());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a client thread failed");
    }
    let info = admin.describe_key("shared").unwrap();
    assert_eq!(info.versions[0].encryptions, 2000);
}

#[test]
fn key_store_file_is_private_and_revoked_material_is_gone_from_it() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("k").unwrap();
    client.rotate("k").unwrap();
    let db = files.state_file("keystore.db");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&db).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    let sealed_hex = crate::harness::sqlite(
        &db,
        "SELECT hex(sealed_kek) FROM versions WHERE version = 1",
    );
    let sealed = (0..sealed_hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&sealed_hex.trim()[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    assert_eq!(sealed.len(), 60);
    assert!(crate::harness::contains(
        &std::fs::read(&db).unwrap(),
        &sealed
    ));
    client.revoke("k", Some(1)).unwrap();
    let bytes = std::fs::read(&db).unwrap();
    assert!(
        !crate::harness::contains(&bytes, &sealed[12..44]),
        "secure_delete overwrote the revoked KEK"
    );
}

/// Edits `keystore.db` behind the daemon's back and expects the next start
/// to refuse, naming the key.
fn tampered_start(sql: &str) -> String {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("app-db").unwrap();
    client.rotate("app-db").unwrap();
    client.create_key("bystander").unwrap();
    drop(client);
    assert!(daemon.stop().0.success());
    crate::harness::sqlite(&files.state_file("keystore.db"), sql);
    match Daemon::start(&files) {
        Ok(_) => panic!("a keystore edited with `{sql}` must be refused"),
        Err(log) => log,
    }
}

#[test]
fn rows_edited_with_sqlite3_are_detected_at_start() {
    let cases = [
        (
            "UPDATE keys SET name = 'evil' WHERE name = 'app-db'",
            "\"evil\"",
        ),
        (
            "UPDATE keys SET state = 0, min_decryption_version = 2 WHERE name = 'app-db'",
            "\"app-db\"",
        ),
        (
            "UPDATE keys SET latest_version = 1 WHERE name = 'app-db'",
            "\"app-db\"",
        ),
        (
            "UPDATE versions SET encryptions_reserved = 5 WHERE version = 2",
            "\"app-db\"",
        ),
        ("DELETE FROM versions WHERE version = 2", "\"app-db\""),
        (
            "UPDATE versions SET sealed_kek = (SELECT sealed_kek FROM versions WHERE version = 2) WHERE version = 1 AND key_id = (SELECT id FROM keys WHERE name = 'app-db')",
            "\"app-db\"",
        ),
    ];
    for (sql, key) in cases {
        let log = tampered_start(sql);
        assert!(log.contains("was changed outside hostkms"), "{sql}: {log}");
        assert!(log.contains(key), "{sql}: the error names the key: {log}");
        assert!(log.contains("restore keystore.db from backup"), "{log}");
    }
}

#[test]
fn the_tokio_client_does_the_envelope_flow_and_pipelines() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = agent_proto::AsyncClient::connect(&daemon.socket)
            .await
            .expect("connect");
        let ctx = context(&[("service", "async")]);
        client.create_key("async-key").await.expect("create");
        let data_key = client
            .generate_data_key("async-key", 32, &ctx)
            .await
            .expect("datakey");
        let unwrapped = client
            .unwrap(data_key.ciphertext.as_bytes(), &ctx, Some("async-key"))
            .await
            .expect("unwrap");
        assert_eq!(Some(unwrapped.plaintext), data_key.plaintext);
        let (code, _) = refused(
            client
                .unwrap(
                    data_key.ciphertext.as_bytes(),
                    &EncryptionContext::new(),
                    None,
                )
                .await,
        );
        assert_eq!(code, ErrorCode::InvalidCiphertext);

        let ids: Vec<u64> = {
            let mut ids = Vec::new();
            for _ in 0..20 {
                ids.push(client.send(agent_proto::Request::Ping).await.expect("send"));
            }
            ids
        };
        for id in ids {
            let reply = client.receive().await.expect("receive");
            assert_eq!(reply.id, id);
            assert_eq!(reply.op, agent_proto::Response::Pong);
        }
    });
}
