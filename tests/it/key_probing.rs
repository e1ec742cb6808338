//! Key existence does not leak: a peer that holds no grant covering a key
//! name gets `PermissionDenied` for every request naming it, with the same
//! message whether a key of that name exists or not; `KeyNotFound` goes
//! only to admins and to peers whose grants cover the name.

use std::path::Path;

use agent_proto::{
    Ciphertext, Client, ClientError, EncryptionContext, ErrorCode, KeySettings, Request,
    RewrapDestination, SecretBytes, SignInput, UnwrapItem, WrapItem,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, helper_test, stderr, text};

const NOBODY: u32 = 65534;
/// A uid that no grant covers at all.
const UNGRANTED: u32 = 65533;
const SOCKET_ENV: &str = "HOSTKMS_PROBE_SOCKET";
const CIPHERTEXT_ENV: &str = "HOSTKMS_PROBE_CIPHERTEXT";

/// An existing key no grant of the prober covers, and a name no key has.
const EXISTING: &str = "secret";
const MISSING: &str = "hidden";

/// Every request that names a key, each naming `name` where the request
/// names a key (for the unwraps and rewraps, as the key the peer expects
/// or the destination; the ciphertext is of a key the peer may use).
fn requests_naming(name: &str, ciphertext: &[u8]) -> Vec<Request> {
    let key = || name.to_string();
    let ct = || Ciphertext::from(ciphertext);
    let context = EncryptionContext::new;
    vec![
        Request::CreateKey {
            name: key(),
            key_type: agent_proto::KeyType::Aes256Gcm,
            settings: KeySettings::default(),
        },
        Request::Wrap {
            key: key(),
            plaintext: SecretBytes::from(&b"x"[..]),
            context: context(),
        },
        Request::Unwrap {
            ciphertext: ct(),
            context: context(),
            key: Some(key()),
        },
        Request::GenerateDataKey {
            key: key(),
            bytes: 32,
            include_plaintext: true,
            context: context(),
        },
        Request::Rewrap {
            ciphertext: ct(),
            context: context(),
            key: Some(key()),
            destination: None,
        },
        Request::Rewrap {
            ciphertext: ct(),
            context: context(),
            key: None,
            destination: Some(RewrapDestination {
                key: Some(key()),
                context: None,
            }),
        },
        Request::Rotate { key: key() },
        Request::Revoke {
            key: key(),
            version: Some(1),
        },
        Request::Disable { key: key() },
        Request::Enable { key: key() },
        Request::SetMinDecryptionVersion {
            key: key(),
            version: 1,
        },
        Request::DescribeKey { key: key() },
        Request::ExportKey {
            key: key(),
            destination: "elsewhere".into(),
        },
        Request::Mac {
            key: key(),
            data: SecretBytes::from(&b"x"[..]),
        },
        Request::VerifyMac {
            key: key(),
            data: SecretBytes::from(&b"x"[..]),
            tag: vec![0; 32],
            version: None,
        },
        Request::Sign {
            key: key(),
            input: SignInput::Message(SecretBytes::from(&b"x"[..])),
        },
        Request::Verify {
            key: key(),
            input: SignInput::Message(SecretBytes::from(&b"x"[..])),
            signature: vec![0; 64],
            version: None,
        },
        Request::GetPublicKey {
            key: key(),
            version: None,
        },
        Request::ScheduleDeletion {
            key: key(),
            days: 7,
        },
        Request::CancelDeletion { key: key() },
        Request::SetRotationPeriod {
            key: key(),
            period: None,
        },
        Request::UpdateKeyMetadata {
            key: key(),
            description: Some("probe".into()),
            set_tags: Default::default(),
            remove_tags: Vec::new(),
        },
        Request::WrapBatch {
            key: key(),
            items: vec![WrapItem {
                plaintext: SecretBytes::from(&b"x"[..]),
                context: context(),
            }],
        },
        Request::UnwrapBatch {
            key: Some(key()),
            items: vec![UnwrapItem {
                ciphertext: ct(),
                context: context(),
            }],
        },
    ]
}

/// The refusal's code and message, with the probed name replaced.
fn answer(client: &mut Client, request: Request, name: &str) -> (String, String) {
    let what = format!("{request:?}");
    match client.call(request) {
        Err(ClientError::Daemon { code, message }) => {
            (code.to_string(), message.replace(name, "NAME"))
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
#[ignore = "the peer half of the probing tests, run as another uid"]
fn prober_process() {
    let Ok(socket) = std::env::var(SOCKET_ENV) else {
        panic!("run only by the key-probing tests, with {SOCKET_ENV} set");
    };
    let ciphertext = STANDARD
        .decode(std::env::var(CIPHERTEXT_ENV).expect("set by the test"))
        .expect("base64");
    let mut client = Client::connect(&socket).expect("connect");
    client
        .set_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let existing = requests_naming(EXISTING, &ciphertext);
    let missing = requests_naming(MISSING, &ciphertext);
    for (existing, missing) in existing.into_iter().zip(missing) {
        let op = existing.operation();
        let seen_existing = answer(&mut client, existing, EXISTING);
        let seen_missing = answer(&mut client, missing, MISSING);
        assert_eq!(
            seen_existing, seen_missing,
            "{op}: an existing key and a missing one are told apart"
        );
        assert_eq!(
            seen_existing.0,
            ErrorCode::PermissionDenied.to_string(),
            "{op}: {}",
            seen_existing.1
        );
        assert!(
            !seen_existing.1.contains("app-db"),
            "{op}: the refusal names a key the peer did not send: {}",
            seen_existing.1
        );
    }
}

fn run_prober(uid: u32, socket: &Path, ciphertext: &[u8]) {
    use std::os::unix::process::CommandExt;
    let output = helper_test(module_path!(), "prober_process")
        .arg("--nocapture")
        .env(SOCKET_ENV, socket)
        .env(CIPHERTEXT_ENV, STANDARD.encode(ciphertext))
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run the prober as another uid");
    assert!(
        output.status.success(),
        "the prober (uid {uid}) failed:\n{}\n{}",
        text(&output.stdout),
        stderr(&output)
    );
}

#[test]
fn a_peer_without_a_grant_on_a_name_cannot_tell_an_existing_key_from_a_missing_one() {
    let tpm = Swtpm::start();
    // The prober may use app-* keys in every way, and nothing else.
    let config =
        DaemonConfig::new()
            .socket_mode("0666")
            .grant(Grant::to_uid(NOBODY).keys(&["app-*"]).ops(&[
                "create",
                "wrap",
                "unwrap",
                "datakey",
                "rewrap",
                "rotate",
                "revoke",
                "disable",
                "enable",
                "min-decryption-version",
                "describe",
                "export",
                "mac",
                "verify-mac",
                "sign",
                "verify",
                "public-key",
                "schedule-deletion",
                "cancel-deletion",
                "set-rotation-period",
                "set-metadata",
            ]));
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon: Daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start: {log}"));
    let mut admin = daemon.client();
    admin.create_key("app-db").unwrap();
    admin.create_key(EXISTING).unwrap();
    let ciphertext = admin
        .wrap("app-db", b"the prober's own", &EncryptionContext::new())
        .unwrap()
        .ciphertext;

    // A peer with grants on other keys, and a peer with no grant at all.
    run_prober(NOBODY, &daemon.socket, ciphertext.as_bytes());
    run_prober(UNGRANTED, &daemon.socket, ciphertext.as_bytes());

    // Where a grant covers the name, the answer is precise.
    let probe = |args: &[&str]| crate::harness::cli_as(NOBODY, &daemon.socket, args, b"x");
    let out = probe(&["describe", "app-missing"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no key named \"app-missing\"")
            || stderr(&out).contains("key not found"),
        "{}",
        stderr(&out)
    );
    // And admins learn that a key is missing.
    match admin.describe_key(MISSING) {
        Err(ClientError::Daemon { code, .. }) => assert_eq!(code, ErrorCode::KeyNotFound),
        other => panic!("an admin is told the key is missing: {other:?}"),
    }
}
