//! The client library against a real daemon that closes its connections:
//! after the idle timeout and on a restart a call reconnects by itself,
//! and a request in flight when the daemon dies is reported as perhaps
//! carried out, never sent again (issue 12, item 6).

use std::thread;
use std::time::{Duration, Instant};

use agent_proto::{AsyncClient, ClientError, Operation, RECONNECT_BACKOFF};
use nix::sys::signal::Signal;

use crate::harness::{Daemon, DaemonConfig, Harness};

/// The idle timeout these tests give the daemon: the shortest it allows,
/// so a test waits seconds, not the default 30.
const IDLE_TIMEOUT_SECS: u64 = 1;

/// Long enough for the daemon to have closed an idle connection.
const PAST_IDLE: Duration = Duration::from_millis(2500);

#[test]
fn a_call_after_the_idle_timeout_reconnects() {
    let harness = Harness::start(DaemonConfig::new().idle_timeout_secs(IDLE_TIMEOUT_SECS));
    let mut client = harness.daemon.client();
    client.create_key("idle").expect("create");
    thread::sleep(PAST_IDLE);
    client
        .describe_key("idle")
        .expect("a call after the daemon closed the idle connection");
    thread::sleep(PAST_IDLE);
    client.rotate("idle").expect("and a change of state");
    let key = client.describe_key("idle").expect("describe");
    assert_eq!(key.latest_version, 2, "the rotation went out once");
}

#[test]
fn the_async_client_calls_after_the_idle_timeout() {
    let harness = Harness::start(DaemonConfig::new().idle_timeout_secs(IDLE_TIMEOUT_SECS));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = AsyncClient::connect(&harness.daemon.socket)
            .await
            .expect("connect");
        client.ping().await.expect("ping");
        tokio::time::sleep(PAST_IDLE).await;
        client.ping().await.expect("a ping after the idle timeout");
    });
}

#[test]
fn a_call_after_a_daemon_restart_reconnects() {
    let Harness {
        daemon,
        files,
        tpm: _tpm,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("before").expect("create");
    let (status, log) = daemon.stop();
    assert!(status.success(), "a clean stop:\n{log}");
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("restart: {log}"));
    let key = client
        .describe_key("before")
        .expect("the same client, on the restarted daemon");
    assert_eq!(key.name, "before");
    client
        .create_key("after")
        .expect("create after the restart");
    drop(daemon);
}

#[test]
fn a_request_in_flight_when_the_daemon_dies_is_reported_and_not_sent_again() {
    // The daemon waits long for the paused TPM, so the request is surely
    // in flight when it is killed.
    let Harness { daemon, files, tpm } = Harness::start(DaemonConfig::new().tpm_timeout_secs(120));
    let mut client = daemon.client();
    client.ping().expect("ping");
    tpm.pause();
    let call = thread::spawn(move || {
        let result = client.rotate_root();
        (client, result, Instant::now())
    });
    thread::sleep(Duration::from_secs(2));
    assert!(!call.is_finished(), "rotate-root waits for the paused TPM");
    let killed = Instant::now();
    let (_, first_log) = daemon.stop_with(Signal::SIGKILL);
    let (mut client, result, returned) = call.join().expect("the call's thread");
    match &result {
        Err(ClientError::MayHaveExecuted { operation, .. }) => {
            assert_eq!(*operation, Operation::RotateRoot);
        }
        other => panic!("expected MayHaveExecuted, got {other:?}\n{first_log}"),
    }
    let message = result.map(|_| ()).unwrap_err().to_string();
    assert!(message.contains("may or may not"), "{message}");
    assert!(
        returned.duration_since(killed) < RECONNECT_BACKOFF[0],
        "reported at once, without reconnecting: {:?}",
        returned.duration_since(killed)
    );

    tpm.resume();
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("restart: {log}"));
    client.ping().expect("the next call opens a new connection");
    // Every request a daemon answers is an audit line naming its op: the
    // restarted daemon saw the harness's ping and ours, nothing else.
    let log = daemon.log();
    let ops: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split("HOSTKMS_OP=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(
        ops,
        ["ping", "ping"],
        "the restarted daemon never saw the rotation again:\n{log}"
    );
}
