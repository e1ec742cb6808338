//! `Rewrap` with a destination (AWS ReEncrypt): to another key and/or
//! another context, the plaintext never leaving the daemon; it needs
//! `unwrap` on the source key and `wrap` on the destination key, never
//! only `rewrap`; the audit names both keys and versions.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, cli, cli_as, cli_stdin, ensure_journald,
    field, journal_of_stopped, ok, text, with_id,
};
use agent_proto::{EncryptionContext, ErrorCode, KeyType};

const REQUEST_OK: &str = "54ef972d04c94c4d82e172b091a4204e";
const REQUEST_DENIED: &str = "ae4499d0098646569a7eaef5c366b9e7";
const ALERT_PENDING_DELETION_USE: &str = "1b1684d127a34c64a0db0e7121098f60";
/// Holds only `rewrap` on `app-*`.
const REWRAPPER: u32 = 65534;
/// Holds `unwrap` on `app-src` and `wrap` on `app-dst`.
const MOVER: u32 = 65533;

fn context(value: &str) -> EncryptionContext {
    EncryptionContext::from([("svc".to_string(), value.to_string())])
}

/// A daemon (journal logging) with the keys `app-src`, `app-dst` and the
/// ed25519 key `app-signer`, and the grants of [`REWRAPPER`] and [`MOVER`].
fn start() -> (Swtpm, DaemonFiles, Daemon) {
    ensure_journald();
    let tpm = Swtpm::start();
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(Grant::to_uid(REWRAPPER).keys(&["app-*"]).ops(&["rewrap"]))
        .grant(Grant::to_uid(MOVER).keys(&["app-src"]).ops(&["unwrap"]))
        .grant(Grant::to_uid(MOVER).keys(&["app-dst"]).ops(&["wrap"]));
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let mut admin = daemon.client();
    admin.create_key("app-src").unwrap();
    admin.rotate("app-src").unwrap();
    admin.create_key("app-dst").unwrap();
    admin
        .create_key_of_type("app-signer", KeyType::Ed25519)
        .unwrap();
    (tpm, files, daemon)
}

#[test]
fn to_another_key_the_plaintext_follows_and_the_audit_names_both() {
    let (_tpm, _files, daemon) = start();
    let journal = daemon.journal_scope();
    let mut admin = daemon.client();
    let source = admin
        .wrap("app-src", b"moving house", &context("web"))
        .unwrap();
    assert_eq!(source.version, 2);

    let moved = admin
        .rewrap_to(
            source.ciphertext.as_bytes(),
            &context("web"),
            None,
            Some("app-dst"),
            None,
        )
        .unwrap();
    assert_eq!((moved.key.as_str(), moved.version), ("app-dst", 1));
    let back = admin
        .unwrap(
            moved.ciphertext.as_bytes(),
            &context("web"),
            Some("app-dst"),
        )
        .unwrap();
    assert_eq!(back.plaintext.expose(), b"moving house");
    // The source ciphertext is untouched and still its key's.
    let same = admin
        .unwrap(source.ciphertext.as_bytes(), &context("web"), None)
        .unwrap();
    assert_eq!(same.key, "app-src");

    // The CLI does the same.
    let socket = &daemon.socket;
    let out = ok(cli_stdin(
        socket,
        &["rewrap", "--context", "svc=web", "--to-key", "app-dst"],
        STANDARD.encode(source.ciphertext.as_bytes()).as_bytes(),
    ));
    let out = ok(cli_stdin(socket, &["unwrap", "--context", "svc=web"], &out));
    assert_eq!(out, b"moving house");

    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let rewraps: Vec<_> = with_id(&entries, REQUEST_OK)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("rewrap"))
        .collect();
    assert_eq!(rewraps.len(), 2, "{rewraps:?}");
    for event in rewraps {
        assert_eq!(field(event, "HOSTKMS_KEY"), Some("app-src"), "{event}");
        assert_eq!(field(event, "HOSTKMS_KEY_VERSION"), Some("2"), "{event}");
        assert_eq!(field(event, "HOSTKMS_DESTINATION_KEY"), Some("app-dst"));
        assert_eq!(field(event, "HOSTKMS_DESTINATION_KEY_VERSION"), Some("1"));
        let message = field(event, "MESSAGE").unwrap_or_default();
        assert!(message.contains("app-src v2 to app-dst v1"), "{message}");
    }
}

#[test]
fn to_another_context_only_the_new_context_unwraps() {
    let (_tpm, _files, daemon) = start();
    let mut admin = daemon.client();
    let source = admin
        .wrap("app-src", b"relabel me", &context("web"))
        .unwrap();
    let relabelled = admin
        .rewrap_to(
            source.ciphertext.as_bytes(),
            &context("web"),
            Some("app-src"),
            None,
            Some(&context("batch")),
        )
        .unwrap();
    assert_eq!(relabelled.key, "app-src");
    let back = admin
        .unwrap(relabelled.ciphertext.as_bytes(), &context("batch"), None)
        .unwrap();
    assert_eq!(back.plaintext.expose(), b"relabel me");
    let old = admin
        .unwrap(relabelled.ciphertext.as_bytes(), &context("web"), None)
        .unwrap_err();
    assert_eq!(old.code(), Some(ErrorCode::InvalidCiphertext), "{old}");

    // The CLI, to an empty context.
    let socket = &daemon.socket;
    let out = ok(cli_stdin(
        socket,
        &["rewrap", "--context", "svc=web", "--to-empty-context"],
        STANDARD.encode(source.ciphertext.as_bytes()).as_bytes(),
    ));
    assert_eq!(ok(cli_stdin(socket, &["unwrap"], &out)), b"relabel me");
    let usage = cli(
        socket,
        &["rewrap", "--to-context", "a=b", "--to-empty-context"],
    );
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
}

#[test]
fn a_destination_needs_unwrap_on_the_source_and_wrap_on_the_destination() {
    let (_tpm, _files, daemon) = start();
    let journal = daemon.journal_scope();
    let socket = &daemon.socket;
    let mut admin = daemon.client();
    let source = STANDARD.encode(
        admin
            .wrap("app-src", b"guarded", &context("web"))
            .unwrap()
            .ciphertext
            .as_bytes(),
    );
    let of_dst = STANDARD.encode(
        admin
            .wrap("app-dst", b"other", &context("web"))
            .unwrap()
            .ciphertext
            .as_bytes(),
    );
    let rewrap = |uid: u32, extra: &[&str], input: &str| {
        let mut args = vec!["rewrap", "--context", "svc=web"];
        args.extend_from_slice(extra);
        cli_as(uid, socket, &args, input.as_bytes())
    };
    let denied = |out: &std::process::Output, what: &str| {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("permission denied"), "{what}: {stderr}");
        stderr
    };

    // `rewrap` alone: the plain rewrap works, a destination does not.
    let out = rewrap(REWRAPPER, &[], &source);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = denied(
        &rewrap(REWRAPPER, &["--to-key", "app-dst"], &source),
        "rewrap-only to another key",
    );
    assert!(
        stderr.contains("may not wrap with key \"app-dst\""),
        "{stderr}"
    );
    let stderr = denied(
        &rewrap(REWRAPPER, &["--to-context", "svc=batch"], &source),
        "rewrap-only to another context",
    );
    assert!(
        stderr.contains("holds no grant to unwrap with the key this ciphertext names"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("app-src"),
        "the source is not named: {stderr}"
    );

    // unwrap on the source and wrap on the destination: allowed.
    let out = rewrap(MOVER, &["--to-key", "app-dst"], &source);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let moved = ok(cli_stdin(
        socket,
        &["unwrap", "--context", "svc=web"],
        &out.stdout,
    ));
    assert_eq!(moved, b"guarded");
    // ...but not a plain rewrap, nor a context change on the source (no
    // wrap there), nor a ciphertext of a key it may not unwrap.
    denied(&rewrap(MOVER, &[], &source), "mover, plain rewrap");
    let stderr = denied(
        &rewrap(MOVER, &["--to-context", "svc=batch"], &source),
        "mover, to another context on the source",
    );
    assert!(
        stderr.contains("may not wrap with key \"app-src\""),
        "{stderr}"
    );
    let stderr = denied(
        &rewrap(MOVER, &["--to-key", "app-dst"], &of_dst),
        "mover, a source it may not unwrap",
    );
    assert!(
        stderr.contains("holds no grant to unwrap with the key this ciphertext names"),
        "{stderr}"
    );

    // The audit of the refusal names the destination asked for.
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let denied = with_id(&entries, REQUEST_DENIED)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("rewrap"))
        .filter(|e| field(e, "HOSTKMS_PEER_UID") == Some("65534"))
        .filter(|e| field(e, "HOSTKMS_DESTINATION_KEY") == Some("app-dst"))
        .count();
    assert_eq!(denied, 1, "the rewrap-only peer's refusal to app-dst");
}

#[test]
fn a_signing_destination_is_the_wrong_key_type() {
    let (_tpm, _files, daemon) = start();
    let mut admin = daemon.client();
    let source = admin
        .wrap("app-src", b"not signable", &context("web"))
        .unwrap();
    let err = admin
        .rewrap_to(
            source.ciphertext.as_bytes(),
            &context("web"),
            None,
            Some("app-signer"),
            None,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WrongKeyType), "{err}");
    assert!(err.to_string().contains("app-signer"), "{err}");
    assert!(!err.to_string().contains("not signable"), "{err}");
    let err = admin
        .rewrap_to(
            source.ciphertext.as_bytes(),
            &context("web"),
            None,
            Some("no-such-key"),
            None,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::KeyNotFound), "{err}");
}

#[test]
fn a_destination_pending_deletion_is_refused_and_its_alert_names_it() {
    let (_tpm, _files, daemon) = start();
    let journal = daemon.journal_scope();
    let mut admin = daemon.client();
    let source = admin
        .wrap("app-src", b"moving house", &context("web"))
        .unwrap();
    admin.schedule_deletion("app-dst", 7).unwrap();
    let refused = admin
        .rewrap_to(
            source.ciphertext.as_bytes(),
            &context("web"),
            None,
            Some("app-dst"),
            None,
        )
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::KeyPendingDeletion),
        "{refused}"
    );
    assert!(refused.to_string().contains("app-dst"), "{refused}");

    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let alerts: Vec<_> = with_id(&entries, ALERT_PENDING_DELETION_USE)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("rewrap"))
        .collect();
    let keys: Vec<_> = alerts.iter().map(|e| field(e, "HOSTKMS_KEY")).collect();
    assert_eq!(
        keys,
        [Some("app-dst")],
        "the alert names the key pending deletion, not the source: {alerts:?}"
    );
}
