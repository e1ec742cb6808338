//! `WrapBatch` and `UnwrapBatch` against the real daemon: each item gets
//! the result a single request would, the whole request is refused before
//! any work beyond 1,000 items or the frame limit, and the audit has one
//! event per batch naming every item's key, version and result, which
//! flood coalescing never hides when an item succeeded.

use std::os::unix::process::CommandExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{
    Alerts, Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, ensure_journald, field, helper_test,
    journal_of_stopped, with_id,
};
use agent_proto::{
    Client, ClientError, EncryptionContext, ErrorCode, MAX_BATCH_ITEMS, Request, SecretBytes,
    UnwrapItem, WrapItem,
};
use serde_json::Value;

const NOBODY: u32 = 65534;
const REQUEST_OK: &str = "54ef972d04c94c4d82e172b091a4204e";
const REQUEST_DENIED: &str = "ae4499d0098646569a7eaef5c366b9e7";
/// Batches (each with a success) the peer sends after exhausting its
/// window of logged denials.
const BATCHES_AFTER_DENIALS: usize = 12;
/// The repeated-denials threshold of [`denied_items_raise_the_repeated_denials_alert`].
const ALERT_AFTER: usize = 4;
const ALERT_REPEATED_DENIALS: &str = "03be2c8933e142a2b89d67c4df0731b9";
const ALERT_PENDING_DELETION_USE: &str = "1b1684d127a34c64a0db0e7121098f60";

fn context(value: &str) -> EncryptionContext {
    EncryptionContext::from([("svc".to_string(), value.to_string())])
}

fn wrap_item(plaintext: &[u8], value: &str) -> WrapItem {
    WrapItem {
        plaintext: SecretBytes::from(plaintext),
        context: context(value),
    }
}

fn unwrap_item(ciphertext: &[u8], value: &str) -> UnwrapItem {
    UnwrapItem {
        ciphertext: agent_proto::Ciphertext::from(ciphertext),
        context: context(value),
    }
}

/// A daemon everyone may connect to, nobody granted wrap and unwrap on
/// `app-*` (not on `secret`), with `max_plaintext` 100, logging to the
/// journal; the keys `app-a` and `secret` exist.
fn granted_daemon() -> (Swtpm, DaemonFiles, Daemon) {
    granted_daemon_with(DaemonConfig::new())
}

/// [`granted_daemon`] from `config`.
fn granted_daemon_with(config: DaemonConfig) -> (Swtpm, DaemonFiles, Daemon) {
    ensure_journald();
    let tpm = Swtpm::start();
    let config = config.socket_mode("0666").max_plaintext(100).grant(
        crate::harness::Grant::to_uid(NOBODY)
            .keys(&["app-*"])
            .ops(&["wrap", "unwrap", "describe"]),
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let mut admin = daemon.client();
    admin.create_key("app-a").unwrap();
    admin.create_key("secret").unwrap();
    (tpm, files, daemon)
}

/// Not a test: the peer of [`mixed_results_as_a_granted_peer`], run as
/// nobody. `HOSTKMS_BATCH_SECRET` is a ciphertext (base64) of the key
/// `secret`, which nobody may not use.
#[test]
#[ignore = "a helper that the batch tests run as another uid"]
fn batch_peer() {
    let socket = std::env::var("HOSTKMS_BATCH_SOCKET").expect("run by a batch test");
    let secret = STANDARD
        .decode(std::env::var("HOSTKMS_BATCH_SECRET").expect("a ciphertext"))
        .expect("base64");
    let mut client = Client::connect(&socket).expect("connect");
    if std::env::var("HOSTKMS_BATCH_ALERT").is_ok() {
        // One batch of denied items, and no other request.
        let items = (0..ALERT_AFTER)
            .map(|_| unwrap_item(&secret, "one"))
            .collect();
        let results = client.unwrap_batch(None, items).unwrap();
        assert!(results.iter().all(|item| {
            item.as_ref()
                .is_err_and(|e| e.code == ErrorCode::PermissionDenied)
        }));
        return;
    }

    // Wrap: one fine item, one over max_plaintext (100).
    let wrapped = client
        .wrap_batch(
            "app-a",
            vec![wrap_item(b"first", "one"), wrap_item(&[7; 101], "two")],
        )
        .expect("a wrap batch is answered item by item");
    assert_eq!(wrapped.len(), 2);
    let first = wrapped[0].as_ref().expect("the first item is wrapped");
    assert_eq!((first.key.as_str(), first.version), ("app-a", 1));
    let too_large = wrapped[1].as_ref().expect_err("the second is too large");
    assert_eq!(
        too_large.code,
        ErrorCode::PlaintextTooLarge,
        "{too_large:?}"
    );
    // The same code a single Wrap gets.
    let single = client
        .wrap("app-a", &[7; 101], &context("two"))
        .unwrap_err();
    assert_eq!(single.code(), Some(ErrorCode::PlaintextTooLarge));

    // Wrap on a key without the grant: refused as a whole, like a Wrap.
    let denied = client
        .wrap_batch("secret", vec![wrap_item(b"x", "one")])
        .unwrap_err();
    assert_eq!(denied.code(), Some(ErrorCode::PermissionDenied), "{denied}");
    // In the same words, naming the grant it needs (`wrap-batch` is none).
    let single = client.wrap("secret", b"x", &context("one")).unwrap_err();
    assert_eq!(denied.to_string(), single.to_string());
    assert!(
        denied.to_string().contains("may not wrap with key"),
        "{denied}"
    );

    // Unwrap: ok, wrong context, a key without the grant, garbage.
    let unwrapped = client
        .unwrap_batch(
            None,
            vec![
                unwrap_item(first.ciphertext.as_bytes(), "one"),
                unwrap_item(first.ciphertext.as_bytes(), "other"),
                unwrap_item(&secret, "one"),
                unwrap_item(b"not a ciphertext", "one"),
            ],
        )
        .expect("an unwrap batch is answered item by item");
    assert_eq!(unwrapped.len(), 4);
    let ok = unwrapped[0].as_ref().expect("the first item unwraps");
    assert_eq!((ok.key.as_str(), ok.version), ("app-a", 1));
    assert_eq!(ok.plaintext.expose(), b"first");
    let codes: Vec<Option<ErrorCode>> = unwrapped
        .iter()
        .map(|item| item.as_ref().err().map(|e| e.code))
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some(ErrorCode::InvalidCiphertext),
            Some(ErrorCode::PermissionDenied),
            Some(ErrorCode::InvalidCiphertext),
        ]
    );
    let denial = unwrapped[2].as_ref().unwrap_err();
    assert!(
        !denial.message.contains("secret"),
        "a denied item never names a key the peer did not send: {}",
        denial.message
    );
    // The same answer a single Unwrap gets.
    let single = client.unwrap(&secret, &context("one"), None).unwrap_err();
    match single {
        ClientError::Daemon { code, message } => {
            assert_eq!(
                (code, message.as_str()),
                (denial.code, denial.message.as_str())
            );
        }
        other => panic!("expected a denial, got {other}"),
    }

    // With `key`, an item of another key is an invalid ciphertext.
    let other_key = client
        .unwrap_batch(
            Some("app-b"),
            vec![unwrap_item(first.ciphertext.as_bytes(), "one")],
        )
        .unwrap();
    assert_eq!(
        other_key[0].as_ref().unwrap_err().code,
        ErrorCode::InvalidCiphertext
    );

    if std::env::var("HOSTKMS_BATCH_FLOOD").is_ok() {
        // Use up the window of denials logged one by one, then send batches
        // whose first item is denied and whose second succeeds.
        for i in 0..20 {
            let _ = client.describe_key(&format!("nope-{i}")).unwrap_err();
        }
        for _ in 0..BATCHES_AFTER_DENIALS {
            let results = client
                .unwrap_batch(
                    None,
                    vec![
                        unwrap_item(&secret, "one"),
                        unwrap_item(first.ciphertext.as_bytes(), "one"),
                    ],
                )
                .unwrap();
            assert!(results[0].is_err() && results[1].is_ok());
        }
    }
}

/// Runs [`batch_peer`] as nobody against `socket`.
fn run_peer(socket: &Path, secret: &[u8], flood: bool) {
    run_peer_with(
        socket,
        secret,
        if flood { "HOSTKMS_BATCH_FLOOD" } else { "" },
    );
}

/// Runs [`batch_peer`] as nobody with `mode` (an environment variable
/// set to 1; "" for none).
fn run_peer_with(socket: &Path, secret: &[u8], mode: &str) {
    let mut command = helper_test(module_path!(), "batch_peer");
    command
        .env("HOSTKMS_BATCH_SOCKET", socket)
        .env("HOSTKMS_BATCH_SECRET", STANDARD.encode(secret))
        .uid(NOBODY)
        .gid(NOBODY);
    if !mode.is_empty() {
        command.env(mode, "1");
    }
    let output = command
        .output()
        .expect("run the batch peer (the test binary must be executable by others)");
    assert!(
        output.status.success(),
        "the batch peer failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The audit events of `op` by nobody.
fn batch_events<'a>(entries: &'a [Value], op: &str) -> Vec<&'a Value> {
    with_id(entries, REQUEST_OK)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some(op))
        .filter(|e| field(e, "HOSTKMS_PEER_UID") == Some("65534"))
        .collect()
}

#[test]
fn mixed_results_as_a_granted_peer() {
    let (_tpm, files, daemon) = granted_daemon();
    let secret = daemon
        .client()
        .wrap("secret", b"not for nobody", &context("one"))
        .unwrap()
        .ciphertext;
    let journal = daemon.journal_scope();
    run_peer(&files.socket, secret.as_bytes(), false);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);

    let wraps = batch_events(&entries, "wrap-batch");
    assert_eq!(wraps.len(), 1, "one event per batch: {wraps:?}");
    let wrap = wraps[0];
    assert_eq!(field(wrap, "HOSTKMS_KEY"), Some("app-a"));
    assert_eq!(field(wrap, "HOSTKMS_BATCH_ITEMS"), Some("2"));
    assert_eq!(field(wrap, "HOSTKMS_BATCH_OK"), Some("1"));
    assert_eq!(
        field(wrap, "HOSTKMS_BATCH_RESULTS"),
        Some("0:app-a:1:ok 1:app-a:-:plaintext-too-large")
    );
    // The whole-batch denial is a denial like a Wrap's.
    let denied: Vec<_> = with_id(&entries, REQUEST_DENIED)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("wrap-batch"))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(field(denied[0], "HOSTKMS_KEY"), Some("secret"));

    let unwraps = batch_events(&entries, "unwrap-batch");
    assert_eq!(unwraps.len(), 2, "one event per batch: {unwraps:?}");
    let unwrap = unwraps[0];
    assert_eq!(field(unwrap, "HOSTKMS_BATCH_ITEMS"), Some("4"));
    assert_eq!(field(unwrap, "HOSTKMS_BATCH_OK"), Some("1"));
    // The auditor sees the real key of the denied item, which the peer did not.
    assert_eq!(
        field(unwrap, "HOSTKMS_BATCH_RESULTS"),
        Some(
            "0:app-a:1:ok 1:app-a:1:invalid-ciphertext 2:secret:1:permission-denied \
             3:-:-:invalid-ciphertext"
        )
    );
    assert_eq!(
        field(unwraps[1], "HOSTKMS_BATCH_RESULTS"),
        Some("0:app-a:1:invalid-ciphertext")
    );
}

#[test]
fn a_batch_with_a_success_is_never_coalesced() {
    let (_tpm, files, daemon) = granted_daemon();
    let secret = daemon
        .client()
        .wrap("secret", b"not for nobody", &context("one"))
        .unwrap()
        .ciphertext;
    let journal = daemon.journal_scope();
    run_peer(&files.socket, secret.as_bytes(), true);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let flooded: Vec<_> = batch_events(&entries, "unwrap-batch")
        .into_iter()
        .filter(|e| {
            field(e, "HOSTKMS_BATCH_RESULTS") == Some("0:secret:1:permission-denied 1:app-a:1:ok")
        })
        .collect();
    assert_eq!(
        flooded.len(),
        BATCHES_AFTER_DENIALS,
        "every batch with a success is logged one by one, after the window of denials is used up"
    );
}

/// The encryptions counted on `key`'s version 1.
fn encryptions(client: &mut Client, key: &str) -> u64 {
    client.describe_key(key).unwrap().versions[0].encryptions
}

#[test]
fn a_batch_beyond_the_item_limit_is_refused_as_a_whole_naming_it() {
    let harness = Harness::start(DaemonConfig::new());
    let mut client = harness.daemon.client();
    client.create_key("k").unwrap();
    let items: Vec<WrapItem> = (0..=MAX_BATCH_ITEMS)
        .map(|_| wrap_item(b"x", "one"))
        .collect();
    let err = client.wrap_batch("k", items).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    assert!(err.to_string().contains("1000"), "{err}");
    assert!(err.to_string().contains("1001"), "{err}");
    assert_eq!(encryptions(&mut client, "k"), 0, "nothing was done");

    let unwraps: Vec<UnwrapItem> = (0..=MAX_BATCH_ITEMS)
        .map(|_| unwrap_item(b"x", "one"))
        .collect();
    let err = client.unwrap_batch(None, unwraps).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    assert!(err.to_string().contains("1000"), "{err}");

    let err = client.wrap_batch("k", Vec::new()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");

    // Exactly the limit is fine.
    let items: Vec<WrapItem> = (0..MAX_BATCH_ITEMS)
        .map(|_| wrap_item(b"x", "one"))
        .collect();
    let results = client.wrap_batch("k", items).unwrap();
    assert_eq!(results.len(), MAX_BATCH_ITEMS);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(encryptions(&mut client, "k"), MAX_BATCH_ITEMS as u64);
}

#[test]
fn a_batch_whose_answer_could_exceed_the_frame_is_refused_as_a_whole() {
    let max_frame: u32 = 65536;
    let harness = Harness::start(DaemonConfig::new().max_frame(u64::from(max_frame)));
    let mut client = harness.daemon.client();
    client.create_key("k").unwrap();
    // 62 items of 1000 bytes: the request fits the frame, the answer
    // (each item's ciphertext 53 bytes longer, plus its key and version)
    // does not.
    let items: Vec<WrapItem> = (0..62).map(|_| wrap_item(&[1; 1000], "one")).collect();
    let request = agent_proto::Envelope {
        proto: agent_proto::PROTOCOL_VERSION,
        id: 1,
        op: Request::WrapBatch {
            key: "k".to_string(),
            items: items.clone(),
        },
    };
    let frame = agent_proto::codec::encode_frame(&request, u32::MAX).unwrap();
    assert!(frame.len() - 4 <= max_frame as usize, "the request fits");
    let err = client.wrap_batch("k", items).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    assert!(err.to_string().contains("max_frame"), "{err}");
    assert!(err.to_string().contains("65536"), "{err}");
    assert_eq!(encryptions(&mut client, "k"), 0, "nothing was done");

    // Fewer items fit, and are done.
    let items: Vec<WrapItem> = (0..50).map(|_| wrap_item(&[1; 1000], "one")).collect();
    let results = client.wrap_batch("k", items).unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(encryptions(&mut client, "k"), 50);
}

#[test]
fn denied_items_raise_the_repeated_denials_alert() {
    let (_tpm, files, daemon) = granted_daemon_with(
        DaemonConfig::new().alerts(Alerts::new().window_secs(60).denials(ALERT_AFTER as u64)),
    );
    let secret = daemon
        .client()
        .wrap("secret", b"not for nobody", &context("one"))
        .unwrap()
        .ciphertext;
    let journal = daemon.journal_scope();
    run_peer_with(&files.socket, secret.as_bytes(), "HOSTKMS_BATCH_ALERT");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let alerts = with_id(&entries, ALERT_REPEATED_DENIALS);
    assert_eq!(
        alerts.len(),
        1,
        "{ALERT_AFTER} denied items in one batch are {ALERT_AFTER} denials: {alerts:?}"
    );
    assert_eq!(field(alerts[0], "HOSTKMS_PEER_UID"), Some("65534"));
}

#[test]
fn batch_items_of_a_key_pending_deletion_are_refused_and_raise_its_alert() {
    let (_tpm, _files, daemon) = granted_daemon();
    let journal = daemon.journal_scope();
    let mut admin = daemon.client();
    let wrapped = admin.wrap("app-a", b"before", &context("one")).unwrap();
    admin.schedule_deletion("app-a", 7).unwrap();
    let results = admin
        .wrap_batch(
            "app-a",
            vec![wrap_item(b"x", "one"), wrap_item(b"y", "one")],
        )
        .unwrap();
    let single = admin.wrap("app-a", b"x", &context("one")).unwrap_err();
    for result in &results {
        let err = result.as_ref().unwrap_err();
        assert_eq!(err.code, ErrorCode::KeyPendingDeletion, "{err:?}");
        assert_eq!(Some(err.code), single.code());
    }
    let results = admin
        .unwrap_batch(
            None,
            vec![unwrap_item(wrapped.ciphertext.as_bytes(), "one")],
        )
        .unwrap();
    assert_eq!(
        results[0].as_ref().unwrap_err().code,
        ErrorCode::KeyPendingDeletion
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let alerts: Vec<_> = with_id(&entries, ALERT_PENDING_DELETION_USE)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_KEY") == Some("app-a"))
        .collect();
    assert!(
        alerts
            .iter()
            .any(|e| field(e, "HOSTKMS_OP") == Some("wrap-batch")),
        "a batch's use of a key pending deletion raises the alert: {alerts:?}"
    );
}
