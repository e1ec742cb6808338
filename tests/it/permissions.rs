//! Access control against a real peer: a child process running as uid
//! 65534 (nobody) uses the CLI on the daemon's socket.

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, b64, cli_as, text};
use agent_proto::EncryptionContext;

const NOBODY: u32 = 65534;

struct Setup {
    _tpm: Swtpm,
    _files: DaemonFiles,
    daemon: Daemon,
    granted: String,
    secret: String,
}

/// A daemon whose socket everyone may open (0666), with one grant for
/// `app-db`, and a ciphertext of each of two keys.
fn setup(grant_peer: Grant, socket_mode: &str) -> Setup {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new().socket_mode(socket_mode).grant(
        grant_peer
            .keys(&["app-*"])
            .ops(&["wrap", "unwrap", "datakey", "rewrap", "describe"]),
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).expect("start");
    let mut admin = daemon.client();
    let ctx = EncryptionContext::from([("svc".to_string(), "web".to_string())]);
    admin.create_key("app-db").unwrap();
    admin.create_key("secret").unwrap();
    let granted = b64(admin
        .wrap("app-db", b"granted plaintext", &ctx)
        .unwrap()
        .ciphertext
        .as_bytes());
    let secret = b64(admin
        .wrap("secret", b"not for nobody", &ctx)
        .unwrap()
        .ciphertext
        .as_bytes());
    Setup {
        _tpm: tpm,
        _files: files,
        daemon,
        granted,
        secret,
    }
}

/// The one refusal a peer without a grant on a ciphertext's key gets: it
/// names neither the key nor whether it exists (peer_identity.rs).
fn assert_ciphertext_denied(output: &std::process::Output, op: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{op}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "hostkms: permission denied: uid {NOBODY} holds no grant to {op} with the key this ciphertext names"
        )),
        "{stderr}"
    );
}

fn assert_denied(output: &std::process::Output, op: &str, key: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{op} {key}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "hostkms: permission denied: uid {NOBODY} may not {op} with key \"{key}\""
        )),
        "{stderr}"
    );
}

#[test]
fn a_granted_peer_uses_its_key_and_nothing_else() {
    let s = setup(Grant::to_uid(NOBODY), "0666");
    let socket = &s.daemon.socket;

    let out = cli_as(
        NOBODY,
        socket,
        &["unwrap", "--context", "svc=web"],
        s.granted.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"granted plaintext");

    let out = cli_as(
        NOBODY,
        socket,
        &["unwrap", "--context", "svc=web"],
        s.secret.as_bytes(),
    );
    assert_ciphertext_denied(&out, "unwrap");
    assert!(!text(&out.stdout).contains("not for nobody"));

    let out = cli_as(NOBODY, socket, &["wrap", "app-db"], b"mine");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Keys without a grant, then admin operations, even on the granted key:
    // (command line, the operation and key the refusal names).
    let denied: [(&[&str], &str, &str); 8] = [
        (&["wrap", "secret"], "wrap", "secret"),
        (&["datakey", "secret"], "datakey", "secret"),
        (&["describe", "secret"], "describe", "secret"),
        (&["rotate", "app-db"], "rotate", "app-db"),
        (&["revoke", "app-db", "--yes"], "revoke", "app-db"),
        (&["disable", "app-db"], "disable", "app-db"),
        (&["create-key", "app-new"], "create", "app-new"),
        (
            &["min-decryption-version", "app-db", "1"],
            "min-decryption-version",
            "app-db",
        ),
    ];
    for (args, op, key) in denied {
        let stdin: &[u8] = if op == "wrap" { b"x" } else { b"" };
        assert_denied(&cli_as(NOBODY, socket, args, stdin), op, key);
    }

    // The list shows only keys the peer holds a grant on.
    let out = cli_as(NOBODY, socket, &["--json", "list"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON list");
    let names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app-db"]);

    // Everyone connected may ask for status.
    assert!(cli_as(NOBODY, socket, &["status"], b"").status.success());
    assert!(
        s.daemon.log().contains("denied"),
        "denials are logged: {}",
        s.daemon.log()
    );
}

#[test]
fn a_group_grant_admits_the_groups_members() {
    let s = setup(Grant::new().groups(&["nogroup"]), "0666");
    let out = cli_as(
        NOBODY,
        &s.daemon.socket,
        &["unwrap", "--context", "svc=web"],
        s.granted.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"granted plaintext");
}

#[test]
fn with_mode_0660_another_user_cannot_connect_and_the_cli_says_so() {
    let s = setup(Grant::to_uid(NOBODY), "0660");
    let out = cli_as(NOBODY, &s.daemon.socket, &["unwrap"], s.granted.as_bytes());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&s.daemon.socket.display().to_string()),
        "names the socket: {stderr}"
    );
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("group"), "says what to do: {stderr}");
}

/// A cgroup named like a systemd service, created for the test and removed
/// when dropped, in the hierarchy `/proc/PID/cgroup` reports units from.
struct UnitCgroup {
    dir: std::path::PathBuf,
}

impl UnitCgroup {
    fn new(unit: &str) -> UnitCgroup {
        let root = [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .into_iter()
        .map(std::path::Path::new)
        .find(|root| root.join("cgroup.procs").exists())
        .expect("a writable cgroup hierarchy (the test runs as root)");
        let dir = root.join("hostkms-test.slice").join(unit);
        std::fs::create_dir_all(&dir).expect("create the unit's cgroup");
        UnitCgroup { dir }
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn a_unit_grant_admits_the_units_processes_only() {
    let unit = format!("hostkms-test-{}.service", std::process::id());
    let s = setup(Grant::new().units(&[&unit]), "0666");
    let cgroup = UnitCgroup::new(&unit);
    // The shell joins the unit's cgroup, then becomes nobody running the CLI.
    let run_in_unit = |stdin: &str| {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups {} --socket {} unwrap --context svc=web",
            cgroup.dir.display(),
            crate::harness::hostkms().display(),
            s.daemon.socket.display()
        );
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run_in_unit(&s.granted);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"granted plaintext");
    assert_ciphertext_denied(&run_in_unit(&s.secret), "unwrap");

    // The same user outside the unit holds no grant.
    let out = cli_as(
        NOBODY,
        &s.daemon.socket,
        &["unwrap", "--context", "svc=web"],
        s.granted.as_bytes(),
    );
    assert_ciphertext_denied(&out, "unwrap");
}
