//! The config's sections in the running daemon: a SIGHUP puts the
//! reloadable sections (server limits, service limits) in force on the
//! connection already open, and for the sections only a restart changes
//! (listener, TPM) it keeps the running values and says which keys to
//! restart for.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness};
use agent_proto::{ClientError, EncryptionContext, ErrorCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Daemon { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The daemon's log once it contains `text`; panics after a generous wait.
fn log_once_it_says(daemon: &Daemon, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon.log();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {text:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reload_applies_the_limit_sections_and_names_the_keys_only_a_restart_applies() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new().max_plaintext(4000));
    let mode = |files: &DaemonFiles| {
        std::fs::metadata(&files.socket)
            .expect("the socket")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&files), 0o660);
    let mut client = daemon.client();
    let context = EncryptionContext::new();
    client.create_key("app-reload").expect("create");
    client
        .wrap("app-reload", &[1u8; 3000], &context)
        .expect("within the limits it started with");

    files.write_config(
        &tpm.tcti(),
        &DaemonConfig::new()
            .max_frame(2048)
            .max_plaintext(100)
            .socket_mode("0600")
            .tpm_timeout_secs(7),
    );
    kill(Pid::from_raw(daemon.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    let log = log_once_it_says(&daemon, "reloaded");
    assert!(!log.contains("reload failed"), "{log}");
    assert!(
        log.contains(
            "`socket`, `socket_mode` or `socket_group` changed in the config; a reload keeps the running value. Restart hostkmsd"
        ),
        "the listener's keys are named: {log}"
    );
    assert!(
        log.contains("`tcti`, `tpm_timeout_secs` or `tpm_start_timeout_secs` changed"),
        "the TPM's keys are named: {log}"
    );
    assert!(
        !log.contains("`state_dir` changed"),
        "an unchanged section is not named: {log}"
    );
    assert_eq!(mode(&files), 0o660, "the socket keeps its running mode");

    // The service's limit, on the connection open since before the reload.
    client
        .wrap("app-reload", &[1u8; 100], &context)
        .expect("at the new limit");
    let (code, message) = refused(client.wrap("app-reload", &[1u8; 1000], &context));
    assert_eq!(code, ErrorCode::PlaintextTooLarge, "{message}");
    assert!(message.contains("100"), "{message}");
    // The server's limit: a frame over the new max_frame never reaches the service.
    let mut fresh = daemon.client();
    let (code, message) = refused(fresh.wrap("app-reload", &[1u8; 3000], &context));
    assert_eq!(code, ErrorCode::FrameTooLarge, "{message}");
}
