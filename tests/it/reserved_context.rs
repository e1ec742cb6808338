//! Context keys beginning with `hostkms.` are hostkms's own: they bind a
//! systemd credential to its unit. The main socket refuses, whole and
//! before any work, every request whose context uses one, so a service
//! holding `unwrap` on a key cannot decrypt another unit's credential
//! made with that key by passing the credential's context itself.

use agent_proto::credential;
use agent_proto::{
    Ciphertext, ClientError, EncryptionContext, ErrorCode, Request, RewrapDestination, SecretBytes,
    UnwrapItem, WrapItem,
};

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, b64, cli_as};

/// The uid of the service that tries: nobody.
const SERVICE: u32 = 65534;

const SECRET: &[u8] = b"the database password of db.service";

/// The start of the refusal D7 gives.
const RESERVED: &str = "context key \"hostkms.";

/// A daemon where [`SERVICE`] holds every data grant on key `shared`, and
/// root (an admin) made a credential of `db.service` under that key.
/// The socket admits everyone (0666), as a host's does for its services.
fn setup() -> (Harness, Ciphertext) {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new().socket_mode("0666").grant(
        Grant::to_uid(SERVICE)
            .keys(&["shared"])
            .ops(&["wrap", "unwrap", "datakey", "rewrap", "describe"]),
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    let harness = Harness { daemon, files, tpm };
    let mut client = harness.daemon.client();
    client.create_key("shared").expect("create");
    let wrapped = client
        .wrap_credential("shared", "db.service", "dbpass", SECRET)
        .expect("root encrypts a credential");
    (harness, wrapped.ciphertext)
}

/// Asserts the daemon refused with the reserved-context InvalidArgument.
fn assert_reserved(result: Result<agent_proto::Response, ClientError>, what: &str) {
    let Err(ClientError::Daemon { code, message }) = result else {
        panic!("{what} must be refused by the daemon, got {result:?}");
    };
    assert_eq!(code, ErrorCode::InvalidArgument, "{what}: {message}");
    assert!(
        message.starts_with(RESERVED)
            && message.contains("keys beginning with \"hostkms.\" are hostkms's own"),
        "{what}: {message}"
    );
}

#[test]
fn a_service_holding_unwrap_cannot_read_another_units_credential() {
    let (harness, ciphertext) = setup();
    // The service got hold of the file (a backup, a world-readable copy):
    // the ciphertext is not secret, the context is no secret either.
    let out = cli_as(
        SERVICE,
        &harness.daemon.socket,
        &[
            "unwrap",
            "--context",
            "hostkms.unit=db.service",
            "--context",
            "hostkms.credential=dbpass",
        ],
        b64(ciphertext.as_bytes()).as_bytes(),
    );
    assert!(
        !crate::harness::contains(&out.stdout, SECRET),
        "the service read the credential: {out:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "context key \"hostkms.credential\" is reserved: keys beginning with \"hostkms.\" \
             are hostkms's own (they bind systemd credentials); use another name"
        ),
        "{stderr}"
    );
}

#[test]
fn every_request_carrying_a_reserved_context_key_is_refused_whole() {
    let (harness, ciphertext) = setup();
    let mut client = harness.daemon.client();
    let reserved = credential::context("db.service", "dbpass");
    let mut one = EncryptionContext::new();
    one.insert("hostkms.anything".into(), "x".into());
    let plain = EncryptionContext::from([("app".to_string(), "db".to_string())]);
    let mine = client
        .wrap("shared", b"mine", &plain)
        .expect("a plain context works")
        .ciphertext;

    // Even an admin, even with the right context: no request of the main
    // socket may name a reserved key.
    let requests = [
        (
            "unwrap",
            Request::Unwrap {
                ciphertext: ciphertext.clone(),
                context: reserved.clone(),
                key: None,
            },
        ),
        (
            "wrap",
            Request::Wrap {
                key: "shared".into(),
                plaintext: SecretBytes::from(&b"x"[..]),
                context: one.clone(),
            },
        ),
        (
            "datakey",
            Request::GenerateDataKey {
                key: "shared".into(),
                bytes: 32,
                include_plaintext: true,
                context: one.clone(),
            },
        ),
        (
            "rewrap",
            Request::Rewrap {
                ciphertext: ciphertext.clone(),
                context: reserved.clone(),
                key: None,
                destination: None,
            },
        ),
        (
            "rewrap out of a credential to a plain context",
            Request::Rewrap {
                ciphertext: ciphertext.clone(),
                context: reserved.clone(),
                key: None,
                destination: Some(RewrapDestination {
                    key: None,
                    context: Some(plain.clone()),
                }),
            },
        ),
        (
            "rewrap into a credential's context",
            Request::Rewrap {
                ciphertext: mine.clone(),
                context: plain.clone(),
                key: None,
                destination: Some(RewrapDestination {
                    key: None,
                    context: Some(reserved.clone()),
                }),
            },
        ),
        (
            "wrap batch with one reserved item",
            Request::WrapBatch {
                key: "shared".into(),
                items: vec![
                    WrapItem {
                        plaintext: SecretBytes::from(&b"a"[..]),
                        context: plain.clone(),
                    },
                    WrapItem {
                        plaintext: SecretBytes::from(&b"b"[..]),
                        context: reserved.clone(),
                    },
                ],
            },
        ),
        (
            "unwrap batch with one reserved item",
            Request::UnwrapBatch {
                key: None,
                items: vec![
                    UnwrapItem {
                        ciphertext: mine.clone(),
                        context: plain.clone(),
                    },
                    UnwrapItem {
                        ciphertext: ciphertext.clone(),
                        context: reserved.clone(),
                    },
                ],
            },
        ),
    ];
    let before = client.describe_key("shared").expect("describe").versions[0].encryptions;
    for (what, request) in requests {
        assert_reserved(client.call(request), what);
    }
    // Refused before any work: nothing was encrypted.
    let after = client.describe_key("shared").expect("describe").versions[0].encryptions;
    assert_eq!(after, before, "a refused request encrypted nothing");
    // The connection serves on, and a plain context still works.
    client.wrap("shared", b"x", &plain).expect("plain wrap");
}

#[test]
fn a_peer_without_any_grant_learns_nothing_new_from_the_refusal() {
    // The check needs no key: a peer with no grant is refused for the
    // reserved key too, and for nothing about the key (the same answer
    // whether "secret-key" exists or not).
    let (harness, _) = setup();
    for key in ["shared", "no-such-key"] {
        let out = cli_as(
            12345,
            &harness.daemon.socket,
            &["wrap", key, "--context", "hostkms.unit=x.service"],
            b"x",
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is reserved"), "{key}: {stderr}");
    }
}
