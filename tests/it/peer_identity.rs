//! Who the peer is: its systemd unit attributed as systemd does it (real
//! cgroup2 directories, a CLI peer of uid 65534 started inside them), the
//! process pinned by a pidfd, grants of deleted users at reload and start,
//! and what a peer without a grant may learn (key names, counters).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::harness::peer_identity::{
    TestCgroups, TestUser, cli_in_cgroup, join_cgroup_as, wait_for_text,
};
use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, b64, cli_as, text};
use agent_proto::{EncryptionContext, Envelope, Request, SecretBytes};

const NOBODY: u32 = 65534;
/// A second unprivileged uid with no passwd entry (setuid needs none).
const OTHER: u32 = 65533;

fn context() -> EncryptionContext {
    EncryptionContext::from([("svc".to_string(), "db".to_string())])
}

/// A daemon everyone may connect to (socket 0666) with `grants` in its
/// config, and keys `app-db` and `secret`, with a ciphertext of each.
struct Setup {
    _tpm: Swtpm,
    files: DaemonFiles,
    daemon: Daemon,
    app_db: String,
    secret: String,
    secret_raw: Vec<u8>,
}

fn setup(grants: &[Grant]) -> Setup {
    let tpm = Swtpm::start();
    let config = grants
        .iter()
        .fold(DaemonConfig::new().socket_mode("0666"), |config, grant| {
            config.grant(grant.clone())
        });
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).expect("start hostkmsd");
    let mut admin = daemon.client();
    admin.create_key("app-db").unwrap();
    admin.create_key("secret").unwrap();
    let app_db = b64(admin
        .wrap("app-db", b"db plaintext", &context())
        .unwrap()
        .ciphertext
        .as_bytes());
    let secret_raw = admin
        .wrap("secret", b"not for you", &context())
        .unwrap()
        .ciphertext
        .as_bytes()
        .to_vec();
    Setup {
        _tpm: tpm,
        files,
        daemon,
        app_db,
        secret: b64(&secret_raw),
        secret_raw,
    }
}

fn unwrap_in(dir: &Path, uid: u32, s: &Setup, ciphertext: &str) -> Output {
    cli_in_cgroup(
        dir,
        uid,
        &s.daemon.socket,
        &["unwrap", "--context", "svc=db"],
        ciphertext.as_bytes(),
    )
}

// ---- item 1: units as systemd attributes them -------------------------------

#[test]
fn a_user_unit_named_like_a_system_unit_does_not_get_its_grant() {
    let s = setup(&[Grant::new()
        .keys(&["app-*"])
        .units(&["postgresql.service"])
        .ops(&["unwrap"])]);
    let mut cgroups = TestCgroups::new();
    let impostor = cgroups.make(&format!(
        "user.slice/user-{NOBODY}.slice/user@{NOBODY}.service/app.slice/postgresql.service"
    ));
    let system = cgroups.make("system.slice/postgresql.service");
    let below = cgroups.make("system.slice/postgresql.service/worker");

    // The user's own "postgresql.service" is a unit of its user manager,
    // which is unit user@65534.service to the system: denied.
    let out = unwrap_in(&impostor, NOBODY, &s, &s.app_db);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("db plaintext"));

    // The system's postgresql.service, and a cgroup below it: granted.
    for dir in [&system, &below] {
        let out = unwrap_in(dir, NOBODY, &s, &s.app_db);
        assert!(
            out.status.success(),
            "{}: {}",
            dir.display(),
            text(&out.stderr)
        );
        assert_eq!(out.stdout, b"db plaintext");
    }

    // The audit names the unit systemd would name.
    let log = s.daemon.log();
    assert!(
        log.contains(&format!(
            "unwrap app-db v1 by uid {NOBODY} (user@{NOBODY}.service, user unit postgresql.service): denied"
        )),
        "{log}"
    );
    assert_eq!(
        log.matches(&format!(
            "unwrap app-db v1 by uid {NOBODY} (postgresql.service): ok"
        ))
        .count(),
        2,
        "{log}"
    );
}

#[test]
fn user_units_are_granted_only_with_the_uid_that_runs_them() {
    let s = setup(&[Grant::to_uid(NOBODY)
        .keys(&["app-*"])
        .user_units(&["postgresql.service"])
        .ops(&["unwrap"])]);
    let mut cgroups = TestCgroups::new();
    let own = cgroups.make(&format!(
        "user.slice/user-{NOBODY}.slice/user@{NOBODY}.service/app.slice/postgresql.service"
    ));
    let others = cgroups.make(&format!(
        "user.slice/user-{OTHER}.slice/user@{OTHER}.service/app.slice/postgresql.service"
    ));
    let system = cgroups.make("system.slice/postgresql.service");

    let out = unwrap_in(&own, NOBODY, &s, &s.app_db);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"db plaintext");
    // Another uid's user unit of that name, the system unit of that name,
    // and the granted uid outside the unit: all denied.
    for (dir, uid) in [(&others, OTHER), (&system, NOBODY)] {
        let out = unwrap_in(dir, uid, &s, &s.app_db);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            dir.display(),
            text(&out.stderr)
        );
    }
    let out = cli_as(
        NOBODY,
        &s.daemon.socket,
        &["unwrap", "--context", "svc=db"],
        s.app_db.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

// ---- item 2: the peer pinned by a pidfd ---------------------------------------

/// Starts a process that joins `dir` as `uid`, connects to `socket`,
/// sends `frame` and exits without reading the answer; waits for it.
fn send_and_exit(dir: &Path, uid: u32, socket: &Path, frame: Vec<u8>) {
    // Everything the child needs is prepared before the fork.
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_encoded_bytes();
    assert!(path.len() < address.sun_path.len(), "socket path too long");
    for (slot, byte) in address.sun_path.iter_mut().zip(path) {
        *slot = *byte as libc::c_char;
    }
    let mut command = Command::new("/bin/true");
    join_cgroup_as(&mut command, dir, uid);
    // SAFETY: between fork and exec the closure calls only socket, connect,
    // write and _exit on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let connected = libc::connect(
                fd,
                (&raw const address).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let written = libc::write(fd, frame.as_ptr().cast(), frame.len());
            libc::_exit(
                if fd >= 0 && connected == 0 && written == frame.len() as isize {
                    0
                } else {
                    3
                },
            );
        });
    }
    let status = command.status().expect("spawn the peer");
    assert!(
        status.success(),
        "the peer could not connect and send: {status}"
    );
}

#[test]
fn a_peer_gone_before_its_cgroup_is_confirmed_has_no_unit_and_the_audit_says_why() {
    let s = setup(&[Grant::new()
        .keys(&["app-*"])
        .units(&["postgresql.service"])
        .ops(&["wrap"])]);
    let mut cgroups = TestCgroups::new();
    let system = cgroups.make("system.slice/postgresql.service");
    let request = Envelope::new(
        7,
        Request::Wrap {
            key: "app-db".to_string(),
            plaintext: SecretBytes::new(b"from a ghost".to_vec()),
            context: context(),
        },
    );
    let frame = agent_proto::codec::encode_frame(&request, agent_proto::DEFAULT_MAX_FRAME)
        .expect("encode")
        .to_vec();

    // The daemon stopped: the peer connects (the kernel queues it), sends
    // its request, exits and is reaped before the daemon accepts.
    let pid = nix::unistd::Pid::from_raw(s.daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let sent = std::panic::catch_unwind(|| send_and_exit(&system, NOBODY, &s.daemon.socket, frame));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    sent.expect("the peer sent its request");

    let log = wait_for_text(
        "the daemon audits the ghost's request",
        || s.daemon.log(),
        |log| log.contains(&format!("wrap app-db by uid {NOBODY}: denied")),
    );
    let line = log
        .lines()
        .find(|line| line.contains(&format!("wrap app-db by uid {NOBODY}: denied")))
        .unwrap();
    assert!(
        line.contains("HOSTKMS_PEER_UNIT_UNKNOWN=\"process-exited\""),
        "the audit says why the peer has no unit: {line}"
    );

    // A live peer in the same unit is granted, through the same path.
    let out = cli_in_cgroup(
        &system,
        NOBODY,
        &s.daemon.socket,
        &["wrap", "app-db"],
        b"alive",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

// ---- item 9: grants of users that no longer exist -----------------------------

#[test]
fn a_deleted_users_grant_is_disabled_at_reload_and_start_and_the_rest_apply() {
    let user = TestUser::create(&format!("hkt{}", std::process::id()));
    let s = setup(&[
        Grant::new()
            .keys(&["app-*"])
            .users(&[&user.name])
            .ops(&["unwrap"]),
        Grant::to_uid(NOBODY).keys(&["app-*"]).ops(&["unwrap"]),
    ]);
    let unwrap_as = |uid: u32| {
        cli_as(
            uid,
            &s.daemon.socket,
            &["unwrap", "--context", "svc=db"],
            s.app_db.as_bytes(),
        )
    };
    let out = unwrap_as(user.uid);
    assert!(
        out.status.success(),
        "granted before: {}",
        text(&out.stderr)
    );

    user.delete();
    let pid = nix::unistd::Pid::from_raw(s.daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let log = wait_for_text(
        "the reload finishes",
        || s.daemon.log(),
        |log| log.contains("reloaded") || log.contains("reload failed"),
    );
    assert!(
        !log.contains("reload failed"),
        "the rest of the config applies: {log}"
    );
    assert!(
        log.contains("grant #1 is disabled") && log.contains(&format!("\"{}\"", user.name)),
        "the error names the grant and the name: {log}"
    );
    let out = unwrap_as(user.uid);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the deleted user's uid keeps no grant: {}",
        text(&out.stderr)
    );
    let out = unwrap_as(NOBODY);
    assert!(
        out.status.success(),
        "other grants still work: {}",
        text(&out.stderr)
    );

    // And at start: the daemon serves, with that grant out of force.
    let Setup {
        _tpm: tpm,
        files,
        daemon,
        app_db,
        ..
    } = s;
    let (status, _) = daemon.stop();
    assert!(status.success());
    let daemon = Daemon::start(&files).expect("a deleted user does not stop the daemon");
    assert!(
        daemon.log().contains("grant #1 is disabled"),
        "{}",
        daemon.log()
    );
    let unwrap_as = |uid: u32| {
        cli_as(
            uid,
            &daemon.socket,
            &["unwrap", "--context", "svc=db"],
            app_db.as_bytes(),
        )
    };
    let out = unwrap_as(user.uid);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = unwrap_as(NOBODY);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(tpm);
}

// ---- item 10: what a peer without a grant learns -----------------------------

/// The `secret` ciphertext with its key id changed: a well-formed
/// ciphertext of a key this host does not have.
fn unknown_key_ciphertext(secret: &[u8]) -> String {
    let mut forged = secret.to_vec();
    for byte in &mut forged[5..21] {
        *byte ^= 0x5a;
    }
    b64(&forged)
}

#[test]
fn a_peer_without_a_grant_learns_neither_the_name_nor_the_existence_of_a_key() {
    let s = setup(&[Grant::to_uid(NOBODY)
        .keys(&["app-*"])
        .ops(&["unwrap", "rewrap"])]);
    let unknown = unknown_key_ciphertext(&s.secret_raw);
    let run = |args: &[&str], stdin: &str| cli_as(NOBODY, &s.daemon.socket, args, stdin.as_bytes());

    // An existing key it has no grant on, a key that does not exist, with
    // and without a guessed --key it holds a grant on, by unwrap and by
    // rewrap: one answer.
    let mut answers = Vec::new();
    for op in ["unwrap", "rewrap"] {
        for ciphertext in [&s.secret, &unknown] {
            for guess in [None, Some("app-db")] {
                let mut args = vec![op, "--context", "svc=db"];
                if let Some(guess) = guess {
                    args.extend(["--key", guess]);
                }
                let out = run(&args, ciphertext);
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{args:?}: {}",
                    text(&out.stderr)
                );
                let stderr = text(&out.stderr);
                assert!(
                    !stderr.contains("secret"),
                    "{args:?} names the key: {stderr}"
                );
                assert!(out.stdout.is_empty());
                answers.push((op, stderr));
            }
        }
    }
    for (op, stderr) in &answers {
        assert_eq!(
            stderr,
            &format!(
                "hostkms: permission denied: uid {NOBODY} holds no grant to {op} with the key this ciphertext names, or the ciphertext names no key of this host (damaged, or made on another host); if it is this host's, an admin can grant access in the config's [[grant]] tables\n"
            )
        );
    }

    // A guessed --key no grant of the peer covers is refused for that name
    // alone, the same words whether a key of that name exists or not, and
    // whatever the ciphertext.
    for op in ["unwrap", "rewrap"] {
        for ciphertext in [&s.secret, &unknown, &s.app_db] {
            for guess in ["secret", "nope"] {
                let out = run(&[op, "--context", "svc=db", "--key", guess], ciphertext);
                assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
                assert_eq!(
                    text(&out.stderr),
                    format!(
                        "hostkms: permission denied: uid {NOBODY} may not {op} with key \"{guess}\"\n"
                    ),
                    "{op} --key {guess}"
                );
                assert!(out.stdout.is_empty());
            }
        }
    }

    // Its own key still unwraps, and a wrong --key on it is named precisely.
    let out = run(&["unwrap", "--context", "svc=db"], &s.app_db);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        &["unwrap", "--context", "svc=db", "--key", "app-other"],
        &s.app_db,
    );
    assert!(
        text(&out.stderr).contains("invalid ciphertext"),
        "{}",
        text(&out.stderr)
    );
    // Admins keep the precise answers.
    let out = crate::harness::cli_stdin(
        &s.daemon.socket,
        &["unwrap", "--context", "svc=db"],
        unknown.as_bytes(),
    );
    assert!(
        text(&out.stderr).contains("invalid ciphertext"),
        "{}",
        text(&out.stderr)
    );
    // The audit records the real key of the refused request.
    assert!(
        s.daemon
            .log()
            .contains(&format!("unwrap secret v1 by uid {NOBODY}: denied")),
        "{}",
        s.daemon.log()
    );
}

#[test]
fn status_shows_counters_only_to_admins_and_metrics_grants() {
    let s = setup(&[
        Grant::to_uid(OTHER).ops(&["metrics"]),
        Grant::to_uid(NOBODY).keys(&["app-*"]).ops(&["unwrap"]),
    ]);
    // A granted peer without `metrics`: health only, and the CLI says so.
    let out = cli_as(NOBODY, &s.daemon.socket, &["--json", "status"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["counters"], serde_json::json!({}), "{status}");
    assert_eq!(status["root_key_check"], "", "{status}");
    assert_eq!(status["tpm_reachable"], true, "{status}");
    assert_eq!(status["root_key_loaded"], true, "{status}");
    assert!(
        text(&out.stderr).contains("withheld"),
        "{}",
        text(&out.stderr)
    );
    let out = cli_as(NOBODY, &s.daemon.socket, &["status"], b"");
    let human = text(&out.stdout);
    assert!(human.contains("counters:         withheld"), "{human}");
    assert!(!human.contains("requests:"), "{human}");
    let out = cli_as(NOBODY, &s.daemon.socket, &["metrics"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains(&format!("withheld its counters from uid {NOBODY}"))
            && text(&out.stderr).contains("ops = [\"metrics\"]"),
        "{}",
        text(&out.stderr)
    );

    // A `metrics` grant: counters and the check value, and no key.
    let out = cli_as(OTHER, &s.daemon.socket, &["--json", "status"], b"");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["counters"]["keys"], 2, "{status}");
    assert_eq!(
        status["root_key_check"].as_str().map(str::len),
        Some(16),
        "{status}"
    );
    let out = cli_as(OTHER, &s.daemon.socket, &["metrics"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("hostkms_requests"),
        "{}",
        text(&out.stdout)
    );
    let out = cli_as(OTHER, &s.daemon.socket, &["--json", "list"], b"");
    assert_eq!(text(&out.stdout).trim(), "[]");
    // Admins: everything.
    let admin = s.daemon.client().status().unwrap();
    assert_eq!(admin.root_key_check.len(), 16);
    assert!(admin.counters["requests"] > 0);
}
