//! Access control against a real peer: a child process running as uid
//! 65534 (nobody) uses the CLI on the daemon's socket.

mod common;

use agent_proto::EncryptionContext;
use base64::Engine;
use common::{Daemon, DaemonFiles, Swtpm, cli_as};

const NOBODY: u32 = 65534;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct Setup {
    _tpm: Swtpm,
    _files: DaemonFiles,
    daemon: Daemon,
    granted: String,
    secret: String,
}

/// A daemon whose socket everyone may open (0666), with one grant for
/// `app-db`, and a ciphertext of each of two keys.
fn setup(grant_peer: &str, socket_mode: &str) -> Setup {
    let tpm = Swtpm::start();
    let extra = format!(
        "socket_mode = \"{socket_mode}\"\n\n[[grant]]\nkeys = [\"app-*\"]\n{grant_peer}\nops = [\"wrap\", \"unwrap\", \"datakey\", \"rewrap\", \"describe\"]\n"
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &extra);
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
    let s = setup(&format!("uids = [{NOBODY}]"), "0666");
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
    assert_denied(&out, "unwrap", "secret");
    assert!(!text(&out.stdout).contains("not for nobody"));

    let out = cli_as(NOBODY, socket, &["wrap", "app-db"], b"mine");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_denied(
        &cli_as(NOBODY, socket, &["wrap", "secret"], b"x"),
        "wrap",
        "secret",
    );
    assert_denied(
        &cli_as(NOBODY, socket, &["datakey", "secret"], b""),
        "datakey",
        "secret",
    );
    assert_denied(
        &cli_as(NOBODY, socket, &["describe", "secret"], b""),
        "describe",
        "secret",
    );

    // Admin operations, even on the granted key.
    assert_denied(
        &cli_as(NOBODY, socket, &["rotate", "app-db"], b""),
        "rotate",
        "app-db",
    );
    assert_denied(
        &cli_as(NOBODY, socket, &["revoke", "app-db"], b""),
        "revoke",
        "app-db",
    );
    assert_denied(
        &cli_as(NOBODY, socket, &["disable", "app-db"], b""),
        "disable",
        "app-db",
    );
    assert_denied(
        &cli_as(NOBODY, socket, &["create-key", "app-new"], b""),
        "create",
        "app-new",
    );
    assert_denied(
        &cli_as(
            NOBODY,
            socket,
            &["min-decryption-version", "app-db", "1"],
            b"",
        ),
        "min-decryption-version",
        "app-db",
    );

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
    let s = setup("groups = [\"nogroup\"]", "0666");
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
    let s = setup(&format!("uids = [{NOBODY}]"), "0660");
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
