//! `hostkms bench` without `--key` never leaves its temporary key behind
//! unannounced: SIGTERM, SIGINT and SIGHUP stop the run and it still
//! revokes the key; a peer that could not revoke it is refused before
//! anything is created.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, cli, cli_as, hostkms, ok, stderr,
    wait_with_timeout,
};

const NOBODY: u32 = 65534;

/// The temporary keys `list` shows, by name and state.
fn temporary_keys(socket: &std::path::Path) -> Vec<(String, String)> {
    let list: Value = serde_json::from_slice(&ok(cli(socket, &["--json", "list"]))).expect("JSON");
    list.as_array()
        .expect("array")
        .iter()
        .filter_map(|key| {
            let name = key["name"].as_str()?;
            let state = key["state"].as_str()?;
            name.starts_with("bench-tmp-")
                .then(|| (name.to_string(), state.to_string()))
        })
        .collect()
}

#[test]
fn a_signalled_bench_still_revokes_its_temporary_key() {
    let harness = Harness::start(DaemonConfig::new());
    let socket = &harness.daemon.socket;
    for (signal, code) in [
        (Signal::SIGTERM, 143),
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
    ] {
        let before = temporary_keys(socket).len();
        let mut child = Command::new(hostkms())
            .arg("--socket")
            .arg(socket)
            .args(["bench", "--duration", "60", "--connections", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hostkms bench");
        // Wait for its key to exist: then the run is under way.
        let deadline = Instant::now() + Duration::from_secs(30);
        let key = loop {
            let keys = temporary_keys(socket);
            if keys.len() > before {
                break keys
                    .into_iter()
                    .find(|(_, s)| s == "enabled")
                    .expect("new key")
                    .0;
            }
            assert!(Instant::now() < deadline, "bench made no temporary key");
            std::thread::sleep(Duration::from_millis(50));
        };
        kill(Pid::from_raw(child.id() as i32), signal).expect("signal bench");
        let status = wait_with_timeout(&mut child, Duration::from_secs(60));
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert_eq!(status.code(), Some(code), "{signal}: {err}");
        assert!(
            err.contains(&format!("revoked temporary key {key}")),
            "{err}"
        );
        assert!(err.contains("interrupted"), "{err}");
        let state = temporary_keys(socket)
            .into_iter()
            .find(|(name, _)| *name == key)
            .expect("still listed")
            .1;
        assert_eq!(state, "revoked", "{signal}: {err}");
    }
}

#[test]
fn a_peer_that_cannot_revoke_gets_no_temporary_key() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new().socket_mode("0666").grant(
        Grant::to_uid(NOBODY)
            .keys(&["bench-tmp-*"])
            .ops(&["create", "wrap", "unwrap"]),
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    let socket = &daemon.socket;
    let output = cli_as(
        NOBODY,
        socket,
        &["bench", "--duration", "0.2", "--connections", "1"],
        b"",
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("revoke"), "{err}");
    assert!(err.contains("--key NAME"), "{err}");
    assert!(temporary_keys(socket).is_empty(), "created anyway: {err}");

    // With the grant, the run goes through and cleans up.
    drop(daemon);
    let tpm = Swtpm::start();
    let config = DaemonConfig::new().socket_mode("0666").grant(
        Grant::to_uid(NOBODY)
            .keys(&["bench-tmp-*"])
            .ops(&["create", "wrap", "unwrap", "revoke"]),
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    let socket = &daemon.socket;
    let output = cli_as(
        NOBODY,
        socket,
        &["bench", "--duration", "0.2", "--connections", "1"],
        b"",
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    let keys = temporary_keys(socket);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].1, "revoked");
}

#[test]
fn a_cleanup_the_daemon_refuses_fails_the_run_and_names_the_key() {
    use std::os::unix::process::CommandExt;
    let tpm = Swtpm::start();
    let grant = |ops: &[&str]| Grant::to_uid(NOBODY).keys(&["bench-tmp-*"]).ops(ops);
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(grant(&["create", "wrap", "unwrap", "revoke"]));
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    let socket = &daemon.socket;
    let mut child = Command::new(hostkms())
        .arg("--socket")
        .arg(socket)
        .args(["bench", "--duration", "60", "--connections", "1"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hostkms bench");
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = loop {
        if let Some((name, _)) = temporary_keys(socket).into_iter().next() {
            break name;
        }
        assert!(Instant::now() < deadline, "bench made no temporary key");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The grant loses `revoke` while the run goes on.
    files.write_config(
        &tpm.tcti(),
        &DaemonConfig::new()
            .socket_mode("0666")
            .grant(grant(&["create", "wrap", "unwrap"])),
    );
    kill(Pid::from_raw(daemon.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    let probe = ["revoke", "bench-tmp-probe", "--version", "1"];
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli_as(NOBODY, socket, &probe, b"").status.code() != Some(1)
        || !stderr(&cli_as(NOBODY, socket, &probe, b"")).contains("may not revoke")
    {
        assert!(Instant::now() < deadline, "the reload never took");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal bench");
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("could not revoke its temporary key {key}"))
            && err.contains("An admin, or a peer granted \"revoke\" on it, must revoke it"),
        "{err}"
    );
    let left = temporary_keys(socket);
    assert_eq!(left, vec![(key, "enabled".to_string())]);
}
