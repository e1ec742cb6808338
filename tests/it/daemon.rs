//! hostkmsd's first form over its real socket: Ping, Status, refusals of
//! what is not built yet, bad frames, config errors, signals, and the CLI.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, cli, run_daemon_to_exit};
use agent_proto::codec::{self, DEFAULT_MAX_FRAME};
use agent_proto::{Envelope, ErrorCode, PROTOCOL_VERSION, Request, Response};
use nix::sys::signal::Signal;

#[test]
fn ping_and_status_over_the_socket() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.ping().expect("ping");
    let status = client.status().expect("status");
    assert_eq!(status.daemon_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (status.oldest_protocol, status.newest_protocol),
        (1, PROTOCOL_VERSION)
    );
    assert!(status.tpm_reachable);
    assert!(status.root_key_loaded);
    assert_eq!(status.root_key_check.len(), 16);
    assert!(status.counters["requests"] >= 2);
    let mode = std::fs::metadata(&files.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "the socket has the configured default mode");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let ids: Vec<u64> = (0..50)
        .map(|i| {
            client
                .send(if i % 2 == 0 {
                    Request::Ping
                } else {
                    Request::Status
                })
                .unwrap()
        })
        .collect();
    for (i, id) in ids.into_iter().enumerate() {
        let reply = client.receive().expect("answer");
        assert_eq!(reply.id, id);
        match (i % 2, reply.op) {
            (0, Response::Pong) | (1, Response::Status(_)) => {}
            (_, other) => panic!("answer {i} out of order: {other:?}"),
        }
    }
}

/// Sends raw bytes on a fresh connection and reads what comes back until
/// the daemon closes it.
fn exchange_raw(daemon: &Daemon, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).expect("send");
    stream.shutdown(std::net::Shutdown::Write).ok();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read until close");
    answer
}

fn decode_reply(answer: &[u8]) -> Envelope<Response> {
    let body = codec::read_frame(&mut &answer[..], DEFAULT_MAX_FRAME)
        .expect("a frame")
        .expect("one reply");
    codec::decode_body(&body).expect("a decodable reply")
}

fn error_code(reply: &Envelope<Response>) -> ErrorCode {
    match &reply.op {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_frames_get_errors_and_the_daemon_keeps_serving() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut bystander = daemon.client();

    // Oversized length: refused before reading.
    let reply = decode_reply(&exchange_raw(
        &daemon,
        &(DEFAULT_MAX_FRAME + 1).to_be_bytes(),
    ));
    assert_eq!(error_code(&reply), ErrorCode::FrameTooLarge);

    // Garbage body.
    let mut frame = 16u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xA5; 16]);
    let reply = decode_reply(&exchange_raw(&daemon, &frame));
    assert_eq!(error_code(&reply), ErrorCode::UnsupportedVersion);

    // Right version, truncated body: the id is echoed.
    let good = codec::encode_frame(
        &Envelope::new(
            99,
            Request::CreateKey {
                name: "x".repeat(40),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: Default::default(),
            },
        ),
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let mut cut = ((good.len() - 4 - 10) as u32).to_be_bytes().to_vec();
    cut.extend_from_slice(&good[4..good.len() - 10]);
    let reply = decode_reply(&exchange_raw(&daemon, &cut));
    assert_eq!(error_code(&reply), ErrorCode::BadRequest);
    assert_eq!(reply.id, 99);

    // Wrong protocol version: the message names the supported range.
    let mut envelope = Envelope::new(5, Request::Ping);
    envelope.proto = 7;
    let reply = decode_reply(&exchange_raw(
        &daemon,
        &codec::encode_frame(&envelope, DEFAULT_MAX_FRAME).unwrap(),
    ));
    assert_eq!(error_code(&reply), ErrorCode::UnsupportedVersion);
    assert_eq!(reply.id, 5);
    match reply.op {
        Response::Error(e) => assert!(
            e.message
                .contains(&format!("versions 1 to {PROTOCOL_VERSION}")),
            "{}",
            e.message
        ),
        _ => unreachable!(),
    }

    // A frame cut short: the daemon just closes that connection.
    let answer = exchange_raw(&daemon, &good[..good.len() / 2]);
    assert!(answer.is_empty());

    // Random bytes, many times.
    for seed in 0..50u32 {
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
            .collect();
        let answer = exchange_raw(&daemon, &noise);
        if !answer.is_empty() {
            error_code(&decode_reply(&answer)); // an error reply, or nothing at all
        }
    }

    bystander
        .ping()
        .expect("an earlier connection is undisturbed");
    daemon
        .client()
        .status()
        .expect("new connections are served");
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_remove_the_socket() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let Harness {
            tpm: _tpm,
            files,
            daemon,
        } = Harness::start(DaemonConfig::new());
        let mut idle = daemon.client();
        idle.ping().unwrap();
        let (status, log) = daemon.stop_with(signal);
        assert_eq!(status.code(), Some(0), "{signal}: {log}");
        assert!(log.contains("stopped"), "{log}");
        assert!(!files.socket.exists(), "the socket file is removed");
    }
}

#[test]
fn a_live_daemon_on_the_socket_is_a_start_error_and_a_stale_socket_is_replaced() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let second = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let output = run_daemon_to_exit(&[
        "--config",
        second.config.to_str().unwrap(),
        "--socket",
        files.socket.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another hostkmsd is already serving"),
        "{stderr}"
    );
    daemon
        .client()
        .ping()
        .expect("the first daemon is untouched");
    drop(daemon); // killed: leaves its socket file behind

    assert!(
        std::fs::symlink_metadata(&files.socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let daemon = Daemon::start(&files).expect("a stale socket is replaced");
    assert!(daemon.log().contains("stale socket"), "{}", daemon.log());
}

#[test]
fn a_file_in_place_of_the_socket_is_never_deleted() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    std::fs::write(&files.socket, b"precious").unwrap();
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(std::fs::read(&files.socket).unwrap(), b"precious");
}

#[test]
fn config_errors_name_the_file_the_line_and_the_fix() {
    let dir = crate::harness::private_tempdir();
    let config = dir.path().join("config.toml");
    // Every config names paths in `dir`, so a regression that accepted one
    // would not touch /var/lib/hostkms or /run/hostkms.
    let state_dir = format!("state_dir = \"{}\"\n", dir.path().join("state").display());
    let socket = format!(
        "socket = \"{}\"\n",
        dir.path().join("hostkms.sock").display()
    );
    let cases = [
        (
            format!("{state_dir}sockett = \"/tmp/s\"\n{socket}"),
            &["line 2", "unknown field `sockett`"][..],
        ),
        (
            format!("tcti = \"tpm0\"\n{state_dir}{socket}"),
            &["line 1", "`tcti`", "device:/dev/tpmrm0"][..],
        ),
        (
            format!("socket_mode = \"0777\"\n{state_dir}{socket}"),
            &["line 1", "`socket_mode`", "0660"][..],
        ),
        // The state dir is what is wrong here, so it stays unusable.
        (
            format!("state_dir = [1]\n{socket}"),
            &["line 1", "state_dir"][..],
        ),
        (
            format!(
                "{state_dir}{socket}[[grant]]\nkeys = [\"a\"]\nuids = [1]\nops = [\"frobnicate\"]\n"
            ),
            &[
                "line 3",
                "grant #1",
                "`ops`",
                "unknown operation \"frobnicate\"",
                "wrap",
            ][..],
        ),
        (
            format!(
                "{state_dir}{socket}[[grant]]\nkeys = [\"a[\"]\nuids = [1]\nops = [\"wrap\"]\n"
            ),
            &["line 3", "grant #1", "`keys`", "not a valid glob"][..],
        ),
        // A user name that does not resolve disables its grant only (the
        // daemon starts): peer_identity.rs.
        (
            format!(
                "{state_dir}{socket}[[grant]]\nkeys = [\"a\"]\nuser_units = [\"x.service\"]\nops = [\"wrap\"]\n"
            ),
            &[
                "line 3",
                "grant #1",
                "`user_units`",
                "users = [...] or uids",
            ][..],
        ),
    ];
    for (text, needles) in cases {
        std::fs::write(&config, &text).unwrap();
        let output = run_daemon_to_exit(&["--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(config.to_str().unwrap()),
            "names the file: {stderr}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{text}: missing {needle:?} in {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = dir.path().join("absent.toml");
    let output = run_daemon_to_exit(&["--config", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("cannot read config") && stderr.contains("absent.toml"),
        "{stderr}"
    );

    std::fs::write(&config, format!("{state_dir}{socket}")).unwrap();
    let output = run_daemon_to_exit(&[
        "--config",
        config.to_str().unwrap(),
        "--tcti",
        "swtpm:port=0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tcti"), "{stderr}");
}

#[test]
fn state_dir_open_to_others_is_refused() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    std::fs::create_dir(&files.state_dir).unwrap();
    std::fs::set_permissions(&files.state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(
        log.contains("mode 0755") && log.contains("chmod 700"),
        "{log}"
    );
}

#[test]
fn cli_ping_and_status() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let output = cli(&daemon.socket, &["ping"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "pong");

    let output = cli(&daemon.socket, &["status"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("TPM reachable:    yes"), "{stdout}");
    assert!(stdout.contains("root key loaded:  yes"), "{stdout}");

    let output = cli(&daemon.socket, &["--json", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(status["tpm_reachable"], true);
    assert_eq!(status["daemon_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn cli_connection_errors_say_what_and_exit_2() {
    let dir = crate::harness::private_tempdir();
    let output = cli(&dir.path().join("nope.sock"), &["ping"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("nope.sock") && stderr.contains("is hostkmsd running"),
        "{stderr}"
    );
}

#[test]
fn connections_over_the_limit_get_busy_and_the_rest_keep_working() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new().max_connections(2));
    // Daemon::start's readiness probe may hold a slot for a moment.
    let admitted = || {
        for _ in 0..100 {
            let mut client = daemon.client();
            if client.ping().is_ok() {
                return client;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no slot became free");
    };
    let mut first = admitted();
    let second = admitted();
    let reply = decode_reply(&exchange_raw(&daemon, &[]));
    assert_eq!(error_code(&reply), ErrorCode::Busy);
    match reply.op {
        Response::Error(e) => assert!(e.message.contains("at most 2 connections"), "{}", e.message),
        _ => unreachable!(),
    }
    first.ping().expect("admitted connections are undisturbed");
    drop(second);
    admitted(); // the slot frees once the daemon sees the close
}

/// Whether the daemon has closed `stream`, waiting up to `wait` for it: the
/// end of the stream or a reset is a close, silence is not, and any data is
/// a failure (the daemon owes `what` no answer).
fn closed_by_daemon(stream: &mut UnixStream, wait: Duration, what: &str) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Ok(_) => panic!("the daemon sent data to the {what} connection instead of closing it"),
        Err(e) => panic!("reading the {what} connection: {e}"),
    }
}

#[test]
fn idle_and_slow_connections_are_closed_and_others_are_not_disturbed() {
    // The busy connection pings every 250 ms: only a stall of 3 s closes it.
    let idle_timeout = Duration::from_secs(3);
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        &DaemonConfig::new()
            .idle_timeout_secs(idle_timeout.as_secs())
            .frame_timeout_secs(1),
    );
    let daemon = Daemon::start(&files).expect("start");

    let mut idle = UnixStream::connect(&daemon.socket).unwrap();
    agent_proto::Client::from_stream(idle.try_clone().unwrap())
        .ping()
        .unwrap();
    let mut slow = UnixStream::connect(&daemon.socket).unwrap();
    slow.write_all(&[0, 0]).unwrap(); // half a length prefix, then nothing
    let mut busy = daemon.client();
    let busy_since = Instant::now();

    // Until both are closed, and the busy connection has outlived the idle
    // timeout with a margin.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut idle_closed, mut slow_closed) = (false, false);
    while !(idle_closed
        && slow_closed
        && busy_since.elapsed() > idle_timeout + Duration::from_secs(1))
    {
        assert!(
            Instant::now() < deadline,
            "after 15 s: idle connection closed: {idle_closed}, slow sender cut off: {slow_closed}\n{}",
            daemon.log()
        );
        busy.ping()
            .expect("an active connection outlives the idle timeout");
        let poll = Duration::from_millis(50);
        slow_closed = slow_closed || closed_by_daemon(&mut slow, poll, "slow");
        idle_closed = idle_closed || closed_by_daemon(&mut idle, poll, "idle");
        std::thread::sleep(Duration::from_millis(150));
    }
    busy.ping()
        .expect("an active connection outlives the idle timeout");
    assert!(
        daemon.log().contains("did not arrive within"),
        "{}",
        daemon.log()
    );
}
