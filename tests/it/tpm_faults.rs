//! The TPM misbehaving under a real daemon: a crash that leaves the dead
//! daemon's objects and sessions in a TPM without a resource manager, and a
//! TPM that stops answering (a SIGSTOPped swtpm).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, helper_test};
use agent_proto::EncryptionContext;
use nix::sys::signal::Signal;

/// Environment variable that turns [`leave_objects_loaded`] from a no-op
/// into the helper process that fills the TPM at this TCTI.
const LEAK_TCTI: &str = "HOSTKMS_TEST_LEAK_TCTI";
/// Set for [`leave_objects_loaded`] to leave policy sessions.
const LEAK_POLICY_SESSIONS: &str = "HOSTKMS_TEST_LEAK_POLICY_SESSIONS";

/// Not a test: run by [`a_tpm_full_of_a_dead_process_objects_is_flushed_at_start`]
/// as a child process of this test binary. It loads three primary keys
/// and starts three sessions in the TPM, then exits without flushing them,
/// as a process killed with SIGKILL would (tpm2-tools cannot do this: it
/// flushes its transient objects as it exits).
#[test]
#[ignore = "helper process of a_tpm_full_of_a_dead_process_objects_is_flushed_at_start"]
fn leave_objects_loaded() {
    use std::str::FromStr;
    use tss_esapi::Context;
    use tss_esapi::constants::SessionType;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::structures::SymmetricDefinition;
    use tss_esapi::tcti_ldr::TctiNameConf;

    let Ok(tcti) = std::env::var(LEAK_TCTI) else {
        return;
    };
    let mut context =
        Context::new(TctiNameConf::from_str(&tcti).expect("TCTI")).expect("open the TPM");
    for _ in 0..3 {
        let template = hostkms::tpm::tpm2_tools_ecc_template().expect("template");
        context
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .expect("create a primary key");
    }
    // Policy sessions (handles 0x03...) when asked: an unseal of a
    // PCR-bound copy killed half-way leaves one.
    let kind = if std::env::var_os(LEAK_POLICY_SESSIONS).is_some() {
        SessionType::Policy
    } else {
        SessionType::Hmac
    };
    for _ in 0..3 {
        context
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
            .expect("start a session")
            .expect("a session handle");
    }
    // No Drop: the objects and sessions stay in the TPM.
    std::process::exit(0);
}

/// Runs [`leave_objects_loaded`] against `tpm` in a child process.
fn fill_tpm_with_stale_handles(tpm: &Swtpm) {
    fill_tpm(tpm, false);
}

/// As [`fill_tpm_with_stale_handles`], with policy sessions when `policy`.
fn fill_tpm(tpm: &Swtpm, policy: bool) {
    let mut helper = helper_test(module_path!(), "leave_objects_loaded");
    if policy {
        helper.env(LEAK_POLICY_SESSIONS, "1");
    }
    let output = helper
        .arg("--nocapture")
        .env(LEAK_TCTI, tpm.tcti())
        .env("TSS2_LOG", "all+none")
        .output()
        .expect("run the helper");
    assert!(
        output.status.success(),
        "helper failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let handles = crate::harness::tpm2_tools::tpm2(tpm.port, "tpm2_getcap", &["handles-transient"]);
    assert_eq!(
        String::from_utf8_lossy(&handles).matches("0x80").count(),
        3,
        "the helper left three objects loaded: {}",
        String::from_utf8_lossy(&handles)
    );
}

#[test]
fn a_tpm_full_of_a_dead_process_objects_is_flushed_at_start() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let context = EncryptionContext::new();
    let wrapped = daemon
        .client()
        .create_key("before")
        .and_then(|_| daemon.client().wrap("before", b"kept", &context))
        .expect("wrap");
    assert!(daemon.stop().0.success());

    fill_tpm_with_stale_handles(&tpm);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| {
        panic!("the daemon must flush the dead process's objects and start:\n{log}")
    });
    let mut client = daemon.client();
    let unwrapped = client
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap after the flush");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
    client
        .create_key("after")
        .expect("create a key (TPM randomness) after the flush");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("flushed 6 stale"),
        "the log says what was flushed: {log}"
    );

    // A first start (sealing a new root key) is freed the same way.
    fill_tpm_with_stale_handles(&tpm);
    let fresh = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    Daemon::start(&fresh).unwrap_or_else(|log| panic!("first start on a full TPM:\n{log}"));
}

#[test]
fn stale_policy_sessions_of_a_killed_unseal_are_flushed_at_start() {
    // An unseal of a PCR-bound copy runs in a policy session (0x03...);
    // killed half-way without a resource manager, it stays in the TPM.
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new().root_key(&[16], false));
    let check = daemon.client().status().expect("status").root_key_check;
    assert!(daemon.stop().0.success());
    fill_tpm(&tpm, true);
    let sessions =
        crate::harness::tpm2_tools::tpm2(tpm.port, "tpm2_getcap", &["handles-loaded-session"]);
    assert_eq!(
        String::from_utf8_lossy(&sessions).matches("0x3").count(),
        3,
        "three policy sessions are left: {}",
        String::from_utf8_lossy(&sessions)
    );
    let daemon = Daemon::start(&files).unwrap_or_else(|log| {
        panic!("the daemon must flush the stale policy sessions and start:\n{log}")
    });
    assert_eq!(
        daemon.client().status().expect("status").root_key_check,
        check
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("stale transient objects and sessions"),
        "{log}"
    );
}

/// What clients got back before a crash: every acknowledged version and
/// every ciphertext must survive it.
#[derive(Default)]
struct Acknowledged {
    versions: HashMap<String, u32>,
    rotations: u64,
    ciphertexts: Vec<(Vec<u8>, Vec<u8>, EncryptionContext)>,
}

fn rotations_acked(acknowledged: &Mutex<Acknowledged>) -> u64 {
    acknowledged.lock().expect("lock").rotations
}

#[test]
fn twenty_kill_9s_during_rotations_and_wraps_lose_nothing_acknowledged() {
    const KEYS: [&str; 3] = ["k0", "k1", "k2"];
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    {
        let daemon = Daemon::start(&files).expect("first start");
        for key in KEYS {
            daemon.client().create_key(key).expect("create");
        }
        assert!(daemon.stop().0.success());
    }
    for round in 0..20u64 {
        let daemon = Daemon::start(&files)
            .unwrap_or_else(|log| panic!("restart {round} after kill -9 must serve:\n{log}"));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for worker in 0..4usize {
            let socket = daemon.socket.clone();
            let stop = Arc::clone(&stop);
            let acknowledged = Arc::clone(&acknowledged);
            workers.push(thread::spawn(move || {
                let Ok(mut client) = agent_proto::Client::connect(&socket) else {
                    return;
                };
                let _ = client.set_timeout(Some(Duration::from_secs(10)));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = KEYS[(worker + n as usize) % KEYS.len()];
                    n += 1;
                    if worker < 2 {
                        let Ok(info) = client.rotate(key) else { return };
                        let mut ack = acknowledged.lock().expect("lock");
                        ack.rotations += 1;
                        let seen = ack.versions.entry(key.to_string()).or_default();
                        *seen = (*seen).max(info.latest_version);
                    } else {
                        let plaintext = format!("round {round} worker {worker} n {n}").into_bytes();
                        let context: EncryptionContext =
                            BTreeMap::from([("n".to_string(), n.to_string())]);
                        let Ok(wrapped) = client.wrap(key, &plaintext, &context) else {
                            return;
                        };
                        acknowledged.lock().expect("lock").ciphertexts.push((
                            wrapped.ciphertext.as_bytes().to_vec(),
                            plaintext,
                            context,
                        ));
                    }
                }
            }));
        }
        // Even rounds kill early, while the daemon is still drawing its
        // first TPM randomness (a conversation with objects loaded); odd
        // rounds once rotations are acknowledged. Each at another moment.
        if round % 2 == 1 {
            let acked_before = rotations_acked(&acknowledged);
            let deadline = Instant::now() + Duration::from_secs(30);
            while rotations_acked(&acknowledged) == acked_before && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        thread::sleep(Duration::from_millis(20 + (round * 37) % 300));
        let (status, _) = daemon.stop_with(Signal::SIGKILL);
        assert!(!status.success());
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.join().expect("client thread");
        }
    }

    let daemon = Daemon::start(&files).expect("the last restart serves");
    let mut client = daemon.client();
    let ack = acknowledged.lock().expect("lock");
    assert!(
        ack.versions.values().any(|&v| v > 1) && ack.ciphertexts.len() > 20,
        "the storm did rotate and wrap: {:?}, {} ciphertexts",
        ack.versions,
        ack.ciphertexts.len()
    );
    for (key, version) in &ack.versions {
        let info = client.describe_key(key).expect("describe");
        assert!(
            info.latest_version >= *version,
            "key {key}: version {version} was acknowledged, but the store has {}",
            info.latest_version
        );
    }
    for (ciphertext, plaintext, context) in &ack.ciphertexts {
        let unwrapped = client
            .unwrap(ciphertext, context, None)
            .expect("every acknowledged ciphertext unwraps");
        assert_eq!(unwrapped.plaintext.expose(), plaintext.as_slice());
    }
}

/// The request deadline the hung-TPM tests configure.
const TPM_TIMEOUT_SECS: u64 = 3;
/// Far more than any prompt answer takes here, far less than "forever".
const PROMPT: Duration = Duration::from_secs(10);

/// Runs `call` and fails the test unless it returns within `bound`.
fn within<T>(bound: Duration, what: &str, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    assert!(took < bound, "{what} took {took:?}, more than {bound:?}");
    result
}

/// A client whose reads give up long before the harness's 30 s.
fn impatient(daemon: &Daemon) -> agent_proto::Client {
    let client = daemon.client();
    client
        .set_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    client
}

fn assert_tpm_unavailable<T: std::fmt::Debug>(result: Result<T, agent_proto::ClientError>) {
    match result {
        Err(agent_proto::ClientError::Daemon { code, message }) => {
            assert_eq!(code, agent_proto::ErrorCode::TpmUnavailable, "{message}");
            assert!(
                message.contains("TPM") && message.contains("answer"),
                "says the TPM did not answer: {message}"
            );
            assert!(
                !message.contains("backup"),
                "no backup advice for a hung TPM: {message}"
            );
        }
        other => panic!("expected TpmUnavailable, got {other:?}"),
    }
}

#[test]
fn a_hung_tpm_fails_tpm_work_within_the_bound_and_nothing_else_waits() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        &DaemonConfig::new().tpm_timeout_secs(TPM_TIMEOUT_SECS),
    );
    let daemon = Daemon::start(&files).expect("start");
    let context = EncryptionContext::new();
    let mut client = impatient(&daemon);
    // Let the first background draw of TPM randomness finish.
    thread::sleep(Duration::from_secs(3));
    client.create_key("k").expect("create");
    let before = client.wrap("k", b"before", &context).expect("wrap");

    tpm.pause();
    // New versions draw on the reserve of TPM randomness until it is
    // empty; then one waits for the TPM for the timeout and fails, and
    // every later TPM request fails at once. None takes longer.
    let bound = Duration::from_secs(TPM_TIMEOUT_SECS) + PROMPT;
    let mut refused = None;
    for n in 0..1000 {
        let result = within(bound, "a rotation on a hung TPM", || client.rotate("k"));
        if result.is_err() {
            refused = Some(n);
            assert_tpm_unavailable(result);
            break;
        }
    }
    assert!(
        refused.is_some(),
        "the reserve of TPM randomness ran out without a TpmUnavailable"
    );
    assert_tpm_unavailable(within(PROMPT, "create-key on a stuck TPM", || {
        client.create_key("new")
    }));
    assert_tpm_unavailable(within(PROMPT, "rotate on a stuck TPM", || {
        client.rotate("k")
    }));

    // Everything that needs no TPM answers promptly meanwhile.
    within(PROMPT, "ping", || client.ping()).expect("ping");
    let status = within(PROMPT, "status", || client.status()).expect("status");
    assert!(
        !status.tpm_reachable,
        "Status says the TPM is not answering"
    );
    within(PROMPT, "disable", || client.disable("k")).expect("disable");
    within(PROMPT, "enable", || client.enable("k")).expect("enable");
    let unwrapped = within(PROMPT, "unwrap", || {
        client.unwrap(before.ciphertext.as_bytes(), &context, None)
    })
    .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"before");
    // Past a reservation boundary (16,384 encryptions), pipelined.
    let wraps = hostkms::keystore::RESERVATION_STEP as usize + 100;
    let started = Instant::now();
    let mut last = None;
    for batch in 0..wraps.div_ceil(100) {
        for _ in 0..100 {
            client
                .send(agent_proto::Request::Wrap {
                    key: "k".to_string(),
                    plaintext: agent_proto::SecretBytes::from(&b"during"[..]),
                    context: context.clone(),
                })
                .expect("send a wrap");
        }
        for _ in 0..100 {
            match client.receive().expect("a wrap answer").op {
                agent_proto::Response::Wrapped(wrapped) => last = Some(wrapped),
                other => panic!("wrap {batch}: {other:?}"),
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "{wraps} wraps took {:?}",
        started.elapsed()
    );
    let last = last.expect("wrapped");
    let info = client.describe_key("k").expect("describe");
    let latest = info.versions.last().expect("a version");
    assert!(
        latest.encryptions > hostkms::keystore::RESERVATION_STEP,
        "the wraps crossed a reservation boundary: {latest:?}"
    );

    tpm.resume();
    // The hung command comes back; TPM work resumes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.create_key("after") {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "create-key after SIGCONT still fails: {e}"
            ),
        }
        thread::sleep(Duration::from_millis(200));
    }
    let unwrapped = client
        .unwrap(last.ciphertext.as_bytes(), &context, None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"during");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("the TPM answered again"), "{log}");
}

#[test]
fn a_start_against_a_hung_tpm_gives_up_within_the_bound() {
    let tpm = Swtpm::start();
    // Once with a root key to unseal, once on an empty state dir.
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().tpm_start_timeout_secs(3));
    drop(Daemon::start(&files).expect("first start"));
    let fresh = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().tpm_start_timeout_secs(3));
    tpm.pause();
    for files in [&files, &fresh] {
        let started = Instant::now();
        let output =
            crate::harness::run_daemon_to_exit(&["--config", files.config.to_str().expect("path")]);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            took < Duration::from_secs(3) + PROMPT,
            "took {took:?}: {stderr}"
        );
        assert!(
            stderr.contains("did not answer within 3 s"),
            "says what happened: {stderr}"
        );
        assert!(stderr.contains("swtpm"), "says what to check: {stderr}");
        assert!(!stderr.contains("backup"), "no backup advice: {stderr}");
    }
    tpm.resume();
    Daemon::start(&files).expect("starts once the TPM answers");
}

#[test]
fn a_daemon_stops_cleanly_while_the_tpm_hangs() {
    let Harness {
        tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new().tpm_timeout_secs(3));
    let mut client = impatient(&daemon);
    // Let the first background draw of TPM randomness finish.
    thread::sleep(Duration::from_secs(3));
    client.create_key("k").expect("create");
    tpm.pause();
    let mut stuck = false;
    for _ in 0..1000 {
        if client.rotate("k").is_err() {
            stuck = true;
            break;
        }
    }
    assert!(stuck, "the reserve ran out without a TpmUnavailable");
    // Daemon::stop fails the test unless the daemon exits within 20 s.
    let (status, log) = daemon.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("stopped after"), "{log}");
    assert!(log.contains("stopping without it"), "{log}");
}
