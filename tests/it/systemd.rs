//! hostkmsd as systemd runs it, without systemd as PID 1: socket activation
//! through `systemd-socket-activate`, the notifications (READY, STATUS,
//! WATCHDOG, RELOADING, STOPPING) received on a test NOTIFY_SOCKET, and a
//! SIGHUP reload that changes what a connected peer may do.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::harness::{
    DaemonConfig, DaemonFiles, Grant, HOSTKMSD, Swtpm, helper_test, socket_activated,
    wait_with_timeout,
};
use agent_proto::{Client, ClientError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Waits for `path` to accept a connection and answer a Ping.
pub fn ping_when_up(path: &std::path::Path, child: &mut Child, log: &std::path::Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(mut client) = Client::connect(path) {
            client
                .set_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            if client.ping().is_ok() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "no answer on {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    wait_with_timeout(child, Duration::from_secs(20))
}

#[test]
fn socket_activation_serves_the_passed_socket_and_binds_none() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let activated = files.root.path().join("activated.sock");
    let log = files.root.path().join("activate.log");
    let mut child = socket_activated(&[&activated], None, &files.config, &log);
    // The first connection makes systemd-socket-activate exec the daemon.
    let mut client = ping_when_up(&activated, &mut child, &log);
    client.create_key("activated").expect("create a key");
    assert!(
        !files.socket.exists(),
        "the daemon bound its configured socket {} although one was passed",
        files.socket.display()
    );
    let status = terminate(&mut child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit {status}:\n{text}");
    assert!(
        text.contains(&format!("on {} (socket-activated)", activated.display())),
        "the ready event names the passed socket: {text}"
    );
    assert!(
        activated.exists(),
        "the passed socket's path is systemd's: the daemon must not remove it"
    );
}

#[test]
fn a_passed_descriptor_that_is_no_unix_listener_is_refused_by_name() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    // fd 3 is a regular file, and LISTEN_PID names the daemon itself.
    let output = Command::new("sh")
        .arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" --config \"$1\" 3<\"$1\"")
        .arg(HOSTKMSD)
        .arg(&files.config)
        .env("HOSTKMS_LOG_TARGET", "stderr")
        .output()
        .expect("run hostkmsd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a listening Unix stream socket"),
        "{stderr}"
    );
    assert!(!files.socket.exists());
}

/// A service manager's notify socket, as the test plays systemd.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { socket, path }
    }

    /// The next message, within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one has `line` as one of its lines (an assignment such
    /// as `READY=1`); returns that message.
    fn until_line(&self, line: &str) -> String {
        self.until(line, |m| m.lines().any(|l| l == line))
    }

    /// Messages until one satisfies `done`; panics naming what came instead.
    fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(message) = self.next(Duration::from_millis(500)) {
                if done(&message) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no {what} within 20 s; received: {seen:?}");
    }
}

/// Starts hostkmsd with `notify` as its NOTIFY_SOCKET and, when given,
/// WATCHDOG_USEC; its output goes to `notified.log` in the test's directory.
fn start_notified(files: &DaemonFiles, notify: &NotifySocket, watchdog_usec: Option<u64>) -> Child {
    let log = files.root.path().join("notified.log");
    let log_file = std::fs::File::create(log).expect("log");
    let mut command = Command::new(HOSTKMSD);
    command
        .arg("--config")
        .arg(&files.config)
        .env("HOSTKMS_LOG_TARGET", "stderr")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file);
    if let Some(usec) = watchdog_usec {
        command.env("WATCHDOG_USEC", usec.to_string());
    }
    command.spawn().expect("spawn hostkmsd")
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_service_manager() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let notify = NotifySocket::bind(files.root.path());
    let mut child = start_notified(&files, &notify, Some(400_000));

    let ready = notify.until_line("READY=1");
    // READY comes only once the root key is sealed and the socket serves.
    assert!(
        files.state_file("root.seal").exists(),
        "READY before the root key"
    );
    assert!(
        ready.contains("STATUS=serving 0 keys (0 versions)"),
        "{ready}"
    );
    let mut client = Client::connect(&files.socket).expect("serving when READY=1 arrives");
    client.create_key("notified").expect("create");
    client.ping().expect("ping");

    // The watchdog is pinged at half of WATCHDOG_USEC (every 200 ms), from the
    // serving loop. The median gap between pings must be well under the
    // 400 ms timeout: a median, because a stall on this shared machine
    // stretches one gap (and the catch-up shortens the next) without
    // changing the cadence, while a daemon pinging every 400 ms or slower,
    // which systemd would kill, has a median of 400 ms or more. Pings queued
    // before are drained first.
    notify.until_line("WATCHDOG=1");
    while notify.next(Duration::from_millis(1)).is_some() {}
    let mut pings = Vec::new();
    while pings.len() < 11 {
        notify.until_line("WATCHDOG=1");
        pings.push(Instant::now());
    }
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median < Duration::from_millis(300),
        "median gap between WATCHDOG=1 pings {median:?} (gaps {gaps:?}) with \
         WATCHDOG_USEC=400000: pings must come every 200 ms"
    );
    let status = notify.until("STATUS= with the requests served", |m| {
        m.contains("STATUS=serving 1 keys (1 versions); 2 requests")
    });
    assert!(status.contains("0 denied, 0 alerts"), "{status}");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    notify.until_line("STOPPING=1");
    let exit = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
}

#[test]
fn a_locked_daemon_is_ready_and_its_status_line_says_locked() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[], true));
    let notify = NotifySocket::bind(files.root.path());
    let mut child = start_notified(&files, &notify, Some(400_000));
    let ready = notify.until_line("READY=1");
    assert!(
        ready.contains("STATUS=locked: run hostkms unlock"),
        "a locked daemon is active, and says what to do: {ready}"
    );
    assert!(ready.contains("no root key yet"), "and why: {ready}");
    let mut client = Client::connect(&files.socket).expect("serving when READY=1 arrives");
    client.ping().expect("ping");
    assert!(!client.status().expect("status").root_key_loaded);
    // A locked daemon is alive: the watchdog is pinged.
    notify.until_line("WATCHDOG=1");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    notify.until_line("STOPPING=1");
    let exit = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
}

#[test]
fn without_a_watchdog_no_watchdog_pings_are_sent() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let notify = NotifySocket::bind(files.root.path());
    let mut child = start_notified(&files, &notify, None);
    notify.until_line("READY=1");
    // Requests after READY show only in a STATUS sent after them: the
    // refresh due every 5 s, not the one the serving loop sends as it starts.
    let mut client = Client::connect(&files.socket).expect("serving when READY=1 arrives");
    client.create_key("refreshed").expect("create");
    client.ping().expect("ping");
    let refreshed = "STATUS=serving 1 keys (1 versions); 2 requests";
    let mut messages = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
    {
        if let Some(m) = notify.next(left) {
            let done = m.contains(refreshed);
            messages.push(m);
            if done {
                break;
            }
        }
    }
    assert!(
        messages.iter().any(|m| m.contains(refreshed)),
        "STATUS is refreshed every 5 s: no {refreshed:?} within 15 s of the requests: {messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "{messages:?}"
    );
    terminate(&mut child);
}

/// The environment variable that makes this test binary act as the reload
/// test's unprivileged peer (see [`reload_changes_what_a_connected_peer_may_do`]).
const PEER_SOCKET_ENV: &str = "HOSTKMS_TEST_RELOAD_PEER_SOCKET";
/// What starts each of the peer's answer lines.
const PEER_ANSWER: &str = "peer answer: ";

/// A peer process that must run as another uid, and keep one connection
/// across the reload: the test binary re-executes itself as uid 65534 with
/// `PEER_SOCKET_ENV` set and runs this ignored entry point, which does the
/// peer's part. It is not a test of its own.
#[test]
#[ignore = "the peer half of reload_changes_what_a_connected_peer_may_do, run by it"]
fn reload_peer_process() {
    let Some(socket) = std::env::var_os(PEER_SOCKET_ENV) else {
        panic!(
            "run only by reload_changes_what_a_connected_peer_may_do, with {PEER_SOCKET_ENV} set"
        );
    };
    let mut client = Client::connect(std::path::Path::new(&socket)).expect("peer connects");
    client
        .set_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut stdin = BufReader::new(std::io::stdin());
    let mut out = std::io::stdout();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line).expect("read command") == 0 {
            return;
        }
        let answer = match client.describe_key(line.trim()) {
            Ok(key) => format!("ok {}", key.name),
            Err(ClientError::Daemon { code, .. }) => format!("refused {code:?}"),
            Err(e) => format!("failed {e}"),
        };
        // On a line of its own: libtest's "test ... " banner has no newline yet.
        writeln!(out, "\n{PEER_ANSWER}{answer}").expect("answer");
        out.flush().expect("flush");
    }
}

#[test]
fn reload_changes_what_a_connected_peer_may_do() {
    let tpm = Swtpm::start();
    let files =
        DaemonFiles::with_public_socket(&tpm.tcti(), &DaemonConfig::new().socket_mode("0666"));
    let notify = NotifySocket::bind(files.root.path());
    let mut daemon = start_notified(&files, &notify, None);
    notify.until_line("READY=1");
    let mut admin = Client::connect(&files.socket).expect("admin connects");
    admin.create_key("app-reload").expect("create");

    // The peer: this test binary again, as uid 65534, holding one connection.
    let mut peer = helper_test(module_path!(), "reload_peer_process")
        .arg("--nocapture")
        .env(PEER_SOCKET_ENV, &files.socket)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the peer");
    let mut to_peer = peer.stdin.take().expect("stdin");
    let mut from_peer = BufReader::new(peer.stdout.take().expect("stdout"));
    // Read all along, so that a full pipe never blocks the peer; shown if it dies.
    let mut peer_stderr = peer.stderr.take().expect("stderr");
    let mut peer_stderr = Some(std::thread::spawn(move || {
        let mut text = String::new();
        let _ = peer_stderr.read_to_string(&mut text);
        text
    }));
    let mut ask = |key: &str| -> String {
        writeln!(to_peer, "{key}").expect("ask the peer");
        let mut line = String::new();
        loop {
            line.clear();
            if from_peer.read_line(&mut line).expect("peer answer") == 0 {
                let status = wait_with_timeout(&mut peer, Duration::from_secs(20));
                let stderr = peer_stderr
                    .take()
                    .map(|reader| reader.join().unwrap_or_default())
                    .unwrap_or_default();
                panic!("peer died asked about {key:?}, {status}; its stderr:\n{stderr}");
            }
            // The test harness prints its own lines around the peer's answers.
            if let Some(answer) = line.trim().strip_prefix(PEER_ANSWER) {
                return answer.to_string();
            }
        }
    };
    assert_eq!(ask("app-reload"), "refused PermissionDenied");

    // A config that grants uid 65534 describe on app-*: SIGHUP, RELOADING, READY.
    files.write_config(
        &tpm.tcti(),
        &DaemonConfig::new()
            .socket_mode("0666")
            .grant(Grant::to_uid(65534).keys(&["app-*"]).ops(&["describe"])),
    );
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    notify.until_line("RELOADING=1");
    notify.until_line("READY=1");
    assert_eq!(
        ask("app-reload"),
        "ok app-reload",
        "the same connection is now allowed"
    );

    // An invalid config changes nothing, and says why.
    std::fs::write(
        &files.config,
        "socket_mode = \"0666\"\n[[grant]]\nkeys = [\"app-*\"]\nops = [\"fly\"]\n",
    )
    .expect("write bad config");
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    notify.until_line("READY=1");
    assert_eq!(ask("app-reload"), "ok app-reload", "the old grant stays");
    admin
        .ping()
        .expect("the admin's connection survived both reloads");

    drop(to_peer);
    let _ = peer.wait();
    assert!(terminate(&mut daemon).success());
    let log = std::fs::read_to_string(files.root.path().join("notified.log")).unwrap_or_default();
    assert!(
        log.contains("reload failed, the running config stays in force"),
        "{log}"
    );
    assert!(log.contains("`grant`"), "the error names the field: {log}");
}
