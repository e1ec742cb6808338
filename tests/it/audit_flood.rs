//! A peer cannot flood the audit trail: of a burst of refusals, the journal
//! holds the first few of each window one by one and one summary per window
//! whose counts add up exactly to the rest; one alert per burst, a second
//! only after a quiet window; the counters count every request.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    Alerts, Daemon, DaemonConfig, DaemonFiles, Swtpm, ensure_journald, field, helper_test,
    journal_of_stopped, with_id,
};
use agent_proto::{Client, EncryptionContext, ErrorCode, Request, Response};
use serde_json::Value;

const REQUEST_DENIED: &str = "ae4499d0098646569a7eaef5c366b9e7";
const ALERT_REPEATED_DENIALS: &str = "03be2c8933e142a2b89d67c4df0731b9";
const ALERT_REPEATED_INVALID_CIPHERTEXTS: &str = "1a9d2af668fc48ac9ab2d4a888899de9";
const BAD_FRAME: &str = "25ca2e79038c454a964578eca0ad300f";
const REFUSALS_SUMMARIZED: &str = "cf5a105062ba4cfc9c310216444a36d7";
/// Refusals of one kind logged one by one per window (monitor::flood).
const LOGGED_PER_WINDOW: usize = 5;

/// Not a test: the flooding peer, which [`flood_as`] runs as another user
/// by starting this test binary again with only this function selected.
/// `HOSTKMS_FLOOD_KIND` says what it sends, `HOSTKMS_FLOOD_COUNT` times:
/// `describe` requests, each for another key name, pipelined 100 at a time
/// and each denied; `ping` requests (which need no grant), pipelined the
/// same way; or `connections`: it holds one connection and opens that many
/// more, each of which must be refused `Busy` (the daemon under test allows
/// one connection per uid).
#[test]
#[ignore = "a helper that flood_as runs as another uid"]
fn flood_helper() {
    let socket = std::env::var("HOSTKMS_FLOOD_SOCKET").expect("run by flood_as");
    let count: usize = std::env::var("HOSTKMS_FLOOD_COUNT")
        .expect("count")
        .parse()
        .expect("a number");
    match std::env::var("HOSTKMS_FLOOD_KIND").as_deref() {
        Ok("ping") => return ping_flood(&socket, count),
        Ok("connections") => return connection_flood(&socket, count),
        _ => {}
    }
    let mut client = Client::connect(&socket).expect("connect");
    client.set_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(100);
        for i in 0..batch {
            client
                .send(Request::DescribeKey {
                    key: format!("flood-{}", sent + i),
                })
                .expect("send");
        }
        for _ in 0..batch {
            match client.receive().expect("an answer").op {
                Response::Error(reply) if reply.code == ErrorCode::PermissionDenied => {}
                other => panic!("expected a denial, got {other:?}"),
            }
        }
        sent += batch;
    }
}

/// `count` pings on one connection, pipelined 100 at a time, each answered.
fn ping_flood(socket: &str, count: usize) {
    let mut client = Client::connect(socket).expect("connect");
    client.set_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(100);
        for _ in 0..batch {
            client.send(Request::Ping).expect("send");
        }
        for _ in 0..batch {
            match client.receive().expect("an answer").op {
                Response::Pong => {}
                other => panic!("expected Pong, got {other:?}"),
            }
        }
        sent += batch;
    }
}

/// Holds one connection, then opens `count` more, each refused `Busy`.
fn connection_flood(socket: &str, count: usize) {
    let mut held = Client::connect(socket).expect("connect");
    held.ping().expect("the first connection is served");
    for i in 0..count {
        let mut extra = Client::connect(socket).expect("connect");
        extra.set_timeout(Some(Duration::from_secs(10))).unwrap();
        match extra.ping() {
            Err(agent_proto::ClientError::Daemon {
                code: ErrorCode::Busy,
                ..
            }) => {}
            other => panic!("connection {i} beyond the cap: expected Busy, got {other:?}"),
        }
    }
    held.ping().expect("the held connection still serves");
}

/// Sends `count` requests that are denied, as `uid`, as fast as one
/// connection goes.
fn flood_as(uid: u32, socket: &Path, count: usize) {
    flood_kind_as("describe", uid, socket, count);
}

/// Runs [`flood_helper`] as `uid` with `kind` and `count`.
fn flood_kind_as(kind: &str, uid: u32, socket: &Path, count: usize) {
    let output = helper_test(module_path!(), "flood_helper")
        .env("HOSTKMS_FLOOD_SOCKET", socket)
        .env("HOSTKMS_FLOOD_KIND", kind)
        .env("HOSTKMS_FLOOD_COUNT", count.to_string())
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run the flood helper (the test binary must be executable by others)");
    assert!(
        output.status.success(),
        "the flood helper failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The summaries of `kind` and the sum of their counts, all for `uid`.
fn summarized(entries: &[Value], kind: &str, uid: &str) -> (usize, u64) {
    let summaries: Vec<&Value> = with_id(entries, REFUSALS_SUMMARIZED)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_EVENT") == Some(kind))
        .collect();
    let mut total = 0;
    for summary in &summaries {
        assert_eq!(field(summary, "HOSTKMS_PEER_UID"), Some(uid), "{summary}");
        assert_eq!(field(summary, "PRIORITY"), Some("4"), "{summary}");
        let count: u64 = field(summary, "HOSTKMS_COUNT")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("a count: {summary}"));
        assert!(count > 0, "no empty summaries: {summary}");
        total += count;
    }
    (summaries.len(), total)
}

/// At most this many windows of `window` fit in `elapsed`, counting the
/// ones cut at either end.
fn windows_in(elapsed: Duration, window: Duration) -> usize {
    (elapsed.as_secs_f64() / window.as_secs_f64()).ceil() as usize + 1
}

#[test]
fn a_flood_of_denials_is_a_few_lines_exact_summaries_and_one_alert_per_burst() {
    ensure_journald();
    let tpm = Swtpm::start();
    let window = Duration::from_secs(2);
    let files = DaemonFiles::with_public_socket(
        &tpm.tcti(),
        &DaemonConfig::new()
            .socket_mode("0666")
            .alerts(Alerts::new().window_secs(2).denials(10)),
    );
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let journal = daemon.journal_scope();

    let started = Instant::now();
    flood_as(65534, &files.socket, 5000);
    let first = started.elapsed();
    // Quiet for more than a window: the burst is over.
    thread::sleep(window * 3);
    let second_started = Instant::now();
    flood_as(65534, &files.socket, 100);
    let second = second_started.elapsed();

    let status = daemon.client().status().expect("status");
    assert_eq!(
        status.counters["denials"], 5100,
        "the counters count every request: {:?}",
        status.counters
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);

    let lines = with_id(&entries, REQUEST_DENIED);
    for line in &lines {
        assert_eq!(field(line, "HOSTKMS_PEER_UID"), Some("65534"), "{line}");
    }
    let (summaries, summarized_count) = summarized(&entries, "denied", "65534");
    assert_eq!(
        lines.len() as u64 + summarized_count,
        5100,
        "{} denials logged one by one and {summarized_count} in {summaries} summaries: every denial is accounted for exactly",
        lines.len()
    );
    let windows = windows_in(first, window) + windows_in(second, window);
    assert!(
        lines.len() <= LOGGED_PER_WINDOW * windows,
        "{} denial lines for at most {windows} windows ({first:?} and {second:?} of flooding)",
        lines.len()
    );
    assert!(
        summaries <= windows,
        "{summaries} summaries for {windows} windows"
    );
    assert!(
        entries.len() <= (LOGGED_PER_WINDOW + 1) * windows + 20,
        "the journal holds {} entries for 5,100 denials in {windows} windows",
        entries.len()
    );

    let alerts = with_id(&entries, ALERT_REPEATED_DENIALS);
    assert_eq!(
        alerts.len(),
        2,
        "one alert per burst, two bursts: {alerts:#?}"
    );
    for alert in &alerts {
        assert_eq!(field(alert, "HOSTKMS_PEER_UID"), Some("65534"));
        assert_eq!(field(alert, "HOSTKMS_COUNT"), Some("10"));
    }
    assert_eq!(status.counters["alerts.repeated-denials"], 2);
}

#[test]
fn a_flood_of_bad_frames_is_a_few_lines_and_an_exact_summary() {
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        &DaemonConfig::new().alerts(Alerts::new().window_secs(600)),
    );
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let journal = daemon.journal_scope();

    let frames = 300;
    for _ in 0..frames {
        let mut stream = UnixStream::connect(&files.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A well-framed body that is no request.
        stream
            .write_all(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .expect("send a bad frame");
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .expect("the refusal, then the daemon closes");
        assert!(!answer.is_empty(), "the bad frame is answered");
    }
    // The daemon still serves.
    daemon.client().ping().expect("ping");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);

    let lines = with_id(&entries, BAD_FRAME);
    for line in &lines {
        assert_eq!(field(line, "HOSTKMS_PEER_UID"), Some("0"), "{line}");
        assert_eq!(field(line, "PRIORITY"), Some("4"), "{line}");
    }
    let (summaries, summarized_count) = summarized(&entries, "bad-frame", "0");
    assert_eq!(
        lines.len(),
        LOGGED_PER_WINDOW,
        "the first few of the window, one by one"
    );
    assert_eq!(summaries, 1, "one summary, written at shutdown");
    assert_eq!(
        lines.len() as u64 + summarized_count,
        frames,
        "every bad frame is accounted for exactly"
    );
}

#[test]
fn a_flood_of_invalid_ciphertexts_is_summarized_exactly_with_one_alert() {
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        &DaemonConfig::new().alerts(Alerts::new().window_secs(600).invalid_ciphertexts(10)),
    );
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let journal = daemon.journal_scope();
    let mut client = daemon.client();
    client.create_key("flooded").expect("create");
    let right = EncryptionContext::from([("app".to_string(), "right".to_string())]);
    let wrong = EncryptionContext::from([("app".to_string(), "wrong".to_string())]);
    let wrapped = client.wrap("flooded", b"data", &right).expect("wrap");

    let attempts = 2000;
    for _ in 0..attempts {
        let err = client
            .unwrap(wrapped.ciphertext.as_bytes(), &wrong, None)
            .expect_err("the wrong context never unwraps");
        assert_eq!(err.code(), Some(ErrorCode::InvalidCiphertext), "{err}");
    }
    let status = client.status().expect("status");
    assert_eq!(status.counters["requests.unwrap.error"], attempts);
    assert_eq!(status.counters["alerts.repeated-invalid-ciphertexts"], 1);
    drop(client);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);

    let lines: Vec<&Value> = entries
        .iter()
        .filter(|e| field(e, "HOSTKMS_ERROR") == Some("invalid-ciphertext"))
        .collect();
    let (summaries, summarized_count) = summarized(&entries, "invalid-ciphertext", "0");
    assert_eq!(lines.len(), LOGGED_PER_WINDOW, "one window's first few");
    assert_eq!(summaries, 1);
    assert_eq!(lines.len() as u64 + summarized_count, attempts);
    assert_eq!(
        with_id(&entries, ALERT_REPEATED_INVALID_CIPHERTEXTS).len(),
        1,
        "one alert for the burst"
    );
}

#[test]
fn a_flood_of_pings_by_a_peer_without_a_grant_is_summarized_exactly() {
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::with_public_socket(
        &tpm.tcti(),
        &DaemonConfig::new()
            .socket_mode("0666")
            .alerts(Alerts::new().window_secs(600)),
    );
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let journal = daemon.journal_scope();

    let pings = 3000;
    flood_kind_as("ping", 65534, &files.socket, pings);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);

    let lines: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            field(e, "HOSTKMS_OP") == Some("ping") && field(e, "HOSTKMS_PEER_UID") == Some("65534")
        })
        .collect();
    let (summaries, summarized_count) = summarized(&entries, "open-request", "65534");
    assert_eq!(
        lines.len(),
        LOGGED_PER_WINDOW,
        "the first few pings of the window, one by one"
    );
    assert_eq!(summaries, 1, "one summary, written at shutdown");
    assert_eq!(
        lines.len() as u64 + summarized_count,
        pings as u64,
        "every ping is accounted for exactly"
    );
    assert!(
        entries.len() < 50,
        "the journal holds {} entries for {pings} pings",
        entries.len()
    );
}

#[test]
fn refused_connections_are_audited_summarized_and_never_filtered_out() {
    const CONNECTION_REFUSED: &str = "84380fec6afc4b42895bd3dc67b7274e";
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::with_public_socket(
        &tpm.tcti(),
        &DaemonConfig::new()
            .socket_mode("0666")
            .max_connections_per_uid(1)
            .alerts(Alerts::new().window_secs(600)),
    );
    // A log filter that lets no ordinary line through: refusals are audit
    // events, which no filter removes.
    let daemon = Daemon::start_with_env(
        &files,
        &[],
        &[("HOSTKMS_LOG_TARGET", "journal"), ("HOSTKMS_LOG", "error")],
    )
    .expect("start hostkmsd");
    let journal = daemon.journal_scope();

    let refused = 40;
    flood_kind_as("connections", 65534, &files.socket, refused);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);

    let lines = with_id(&entries, CONNECTION_REFUSED);
    for line in &lines {
        assert_eq!(field(line, "HOSTKMS_PEER_UID"), Some("65534"), "{line}");
        assert_eq!(field(line, "PRIORITY"), Some("4"), "{line}");
        assert!(
            field(line, "MESSAGE").is_some_and(|m| m.contains("max_connections_per_uid")),
            "the event names the limit: {line}"
        );
    }
    let (summaries, summarized_count) = summarized(&entries, "refused-connection", "65534");
    assert_eq!(lines.len(), LOGGED_PER_WINDOW, "the first few, one by one");
    assert_eq!(summaries, 1, "one summary, written at shutdown");
    assert_eq!(
        lines.len() as u64 + summarized_count,
        refused as u64,
        "every refused connection is accounted for exactly"
    );
}
