//! Who the peer is: its systemd unit attributed as systemd does it (real
//! cgroup2 directories, a CLI peer of uid 65534 started inside them).

mod common;

use std::path::Path;
use std::process::Output;

use agent_proto::EncryptionContext;
use base64::Engine;
use common::peer_identity::{TestCgroups, cli_in_cgroup};
use common::{Daemon, DaemonFiles, Swtpm, cli_as};

const NOBODY: u32 = 65534;
/// A second unprivileged uid with no passwd entry (setuid needs none).
const OTHER: u32 = 65533;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn context() -> EncryptionContext {
    EncryptionContext::from([("svc".to_string(), "db".to_string())])
}

/// A daemon everyone may connect to (socket 0666) with `grants` appended
/// to its config, and keys `app-db` and `secret`, with a ciphertext of each.
#[allow(dead_code)] // the reload and oracle tests use the rest
struct Setup {
    _tpm: Swtpm,
    files: DaemonFiles,
    daemon: Daemon,
    app_db: String,
    secret: String,
    secret_raw: Vec<u8>,
}

fn setup(grants: &str) -> Setup {
    let tpm = Swtpm::start();
    let files =
        DaemonFiles::with_public_socket(&tpm.tcti(), &format!("socket_mode = \"0666\"\n{grants}"));
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
    let s = setup(
        "[[grant]]\nkeys = [\"app-*\"]\nunits = [\"postgresql.service\"]\nops = [\"unwrap\"]\n",
    );
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
    let s = setup(&format!(
        "[[grant]]\nkeys = [\"app-*\"]\nuids = [{NOBODY}]\nuser_units = [\"postgresql.service\"]\nops = [\"unwrap\"]\n"
    ));
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
