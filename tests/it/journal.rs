//! The audit trail in a real journald: one event per request with its
//! structured fields, denials at priority warning, failures at err, an alert
//! after a burst of denials, and none of the secret bytes the test used.

use std::collections::BTreeMap;

use crate::harness::{
    Alerts, Daemon, DaemonConfig, DaemonFiles, Swtpm, cli, cli_as, contains, ensure_journald,
    field, journal::DAEMON_STOPPED, journal_export_of, journal_of_stopped, with_id,
};
use agent_proto::EncryptionContext;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

const REQUEST_OK: &str = "54ef972d04c94c4d82e172b091a4204e";
const REQUEST_DENIED: &str = "ae4499d0098646569a7eaef5c366b9e7";
const REQUEST_FAILED: &str = "4fecfa9090084923a2dbb30f5ea9d08a";
const ALERT_REPEATED_DENIALS: &str = "03be2c8933e142a2b89d67c4df0731b9";
const ALERT_REPEATED_INVALID_CIPHERTEXTS: &str = "1a9d2af668fc48ac9ab2d4a888899de9";
const DAEMON_READY: &str = "3246e65abb4b411ab335889564bd4421";

/// A fresh random value, so that a match in the journal can only come from this test.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_request_is_one_journal_event_with_its_fields_and_no_secret() {
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::with_public_socket(
        &tpm.tcti(),
        &DaemonConfig::new().socket_mode("0666").alerts(
            Alerts::new()
                .window_secs(600)
                .denials(3)
                .invalid_ciphertexts(2),
        ),
    );
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let journal = daemon.journal_scope();
    let key = format!("journal-{}", random_hex(4));
    let secret = format!("journal secret {}", random_hex(16));
    let context = EncryptionContext::from([("app".to_string(), "journal".to_string())]);

    // Requests (Daemon::start answered exactly one Ping first).
    let mut client = daemon.client();
    client.create_key(&key).expect("create");
    let wrapped = client
        .wrap(&key, secret.as_bytes(), &context)
        .expect("wrap");
    let unwrapped = client
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), secret.as_bytes());
    let data_key = client
        .generate_data_key(&key, 32, &context)
        .expect("datakey");
    let data_key_plaintext = data_key.plaintext.expect("plaintext asked for");
    client.rotate(&key).expect("rotate");
    let wrong = EncryptionContext::from([("app".to_string(), "other".to_string())]);
    for _ in 0..2 {
        client
            .unwrap(wrapped.ciphertext.as_bytes(), &wrong, None)
            .expect_err("the wrong context must not unwrap");
    }
    for _ in 0..3 {
        let out = cli_as(65534, &files.socket, &["describe", &key], b"");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    let status = cli(&files.socket, &["status"]);
    assert!(status.status.success());
    let requests = 1 + 5 + 2 + 3 + 1;

    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.is_empty(), "nothing went to stderr: {log}");

    let entries = journal_of_stopped(&journal);
    assert_eq!(with_id(&entries, DAEMON_READY).len(), 1, "{entries:#?}");
    assert_eq!(with_id(&entries, DAEMON_STOPPED).len(), 1, "{entries:#?}");

    let events: Vec<&Value> = entries
        .iter()
        .filter(|e| field(e, "HOSTKMS_OP").is_some() && field(e, "HOSTKMS_ALERT").is_none())
        .collect();
    let ops: Vec<&str> = events
        .iter()
        .filter_map(|e| field(e, "HOSTKMS_OP"))
        .collect();
    assert_eq!(events.len(), requests, "one event per request: {ops:?}");
    for event in &events {
        assert_eq!(field(event, "SYSLOG_IDENTIFIER"), Some("hostkmsd"));
        assert!(field(event, "HOSTKMS_PEER_UID").is_some(), "{event}");
        assert!(field(event, "HOSTKMS_PEER_PID").is_some(), "{event}");
        assert!(field(event, "HOSTKMS_RESULT").is_some(), "{event}");
        assert!(
            [REQUEST_OK, REQUEST_DENIED, REQUEST_FAILED]
                .contains(&field(event, "MESSAGE_ID").unwrap_or("")),
            "{event}"
        );
    }
    let by_op = |op: &str| -> Vec<&&Value> {
        events
            .iter()
            .filter(|e| field(e, "HOSTKMS_OP") == Some(op))
            .collect()
    };

    let wrap = by_op("wrap");
    assert_eq!(wrap.len(), 1);
    let expect = BTreeMap::from([
        ("MESSAGE_ID", REQUEST_OK),
        ("PRIORITY", "6"),
        ("HOSTKMS_KEY", key.as_str()),
        ("HOSTKMS_KEY_VERSION", "1"),
        ("HOSTKMS_RESULT", "ok"),
        ("HOSTKMS_PEER_UID", "0"),
    ]);
    for (name, value) in &expect {
        assert_eq!(field(wrap[0], name), Some(*value), "{name} of {}", wrap[0]);
    }
    assert_eq!(
        field(wrap[0], "HOSTKMS_PEER_PID"),
        Some(std::process::id().to_string().as_str()),
        "the peer is this test process"
    );
    assert_eq!(field(by_op("rotate")[0], "HOSTKMS_KEY_VERSION"), Some("2"));

    let unwraps = by_op("unwrap");
    assert_eq!(unwraps.len(), 3);
    assert_eq!(
        field(unwraps[0], "HOSTKMS_KEY"),
        Some(key.as_str()),
        "an unwrap names the ciphertext's key"
    );
    for failed in &unwraps[1..] {
        assert_eq!(field(failed, "MESSAGE_ID"), Some(REQUEST_FAILED));
        assert_eq!(field(failed, "PRIORITY"), Some("3"));
        assert_eq!(field(failed, "HOSTKMS_RESULT"), Some("error"));
        assert_eq!(field(failed, "HOSTKMS_ERROR"), Some("invalid-ciphertext"));
    }

    let denied: Vec<&&Value> = events
        .iter()
        .filter(|e| field(e, "HOSTKMS_RESULT") == Some("denied"))
        .collect();
    assert_eq!(denied.len(), 3);
    for event in &denied {
        assert_eq!(field(event, "MESSAGE_ID"), Some(REQUEST_DENIED));
        assert_eq!(field(event, "PRIORITY"), Some("4"), "denials are warnings");
        assert_eq!(field(event, "HOSTKMS_PEER_UID"), Some("65534"));
        assert_eq!(field(event, "HOSTKMS_ERROR"), Some("permission-denied"));
        assert_eq!(field(event, "HOSTKMS_KEY"), Some(key.as_str()));
    }

    let alerts = with_id(&entries, ALERT_REPEATED_DENIALS);
    assert_eq!(
        alerts.len(),
        1,
        "one alert for the burst of 3 denials: {entries:#?}"
    );
    assert_eq!(
        field(alerts[0], "PRIORITY"),
        Some("1"),
        "alerts are priority alert"
    );
    assert_eq!(field(alerts[0], "HOSTKMS_ALERT"), Some("repeated-denials"));
    assert_eq!(field(alerts[0], "HOSTKMS_PEER_UID"), Some("65534"));
    let decrypt_alerts = with_id(&entries, ALERT_REPEATED_INVALID_CIPHERTEXTS);
    assert_eq!(decrypt_alerts.len(), 1, "{entries:#?}");
    assert_eq!(field(decrypt_alerts[0], "PRIORITY"), Some("1"));

    // No secret, in clear or in base64, and no ciphertext body anywhere.
    let export = journal_export_of(&journal);
    assert!(
        contains(&export, key.as_bytes()),
        "the export holds this daemon's events"
    );
    for (what, bytes) in [
        ("the secret", secret.as_bytes().to_vec()),
        (
            "the secret in base64",
            STANDARD.encode(secret.as_bytes()).into_bytes(),
        ),
        ("the data key", data_key_plaintext.expose().to_vec()),
        (
            "the data key in base64",
            STANDARD.encode(data_key_plaintext.expose()).into_bytes(),
        ),
        ("the ciphertext", wrapped.ciphertext.as_bytes().to_vec()),
        (
            "the ciphertext in base64",
            STANDARD.encode(wrapped.ciphertext.as_bytes()).into_bytes(),
        ),
    ] {
        assert!(!contains(&export, &bytes), "{what} reached the journal");
    }
}
