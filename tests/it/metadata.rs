//! Key metadata (description and tags: set, shown, filtered, kept across a
//! restart, bounded) and `hostkms inspect`, which reads a ciphertext's
//! header without decrypting it and names its key only to a peer that may
//! see the key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, cli_as, cli_stdin, ok, text,
};
use agent_proto::EncryptionContext;

const NOBODY: u32 = 65534;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn inspect_names_key_id_and_version_and_the_name_only_when_visible() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(Grant::to_uid(NOBODY).keys(&["app-*"]).ops(&["unwrap"]));
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).expect("start hostkmsd");
    let socket = &daemon.socket;
    let mut admin = daemon.client();
    let app = admin.create_key("app-db").unwrap();
    admin.rotate("app-db").unwrap();
    let secret = admin.create_key("secret").unwrap();
    let ctx = EncryptionContext::new();
    let of_app = admin.wrap("app-db", b"one", &ctx).unwrap().ciphertext;
    let of_secret = admin.wrap("secret", b"two", &ctx).unwrap().ciphertext;

    // Base64 on standard input (as wrap prints it), as the admin.
    let out = text(&ok(cli_stdin(
        socket,
        &["inspect"],
        format!("{}\n", STANDARD.encode(of_app.as_bytes())).as_bytes(),
    )));
    assert!(out.contains("key:      app-db\n"), "{out}");
    assert!(
        out.contains(&format!("key id:   {}\n", hex(&app.id))),
        "{out}"
    );
    assert!(out.contains("version:  2\n"), "{out}");

    // Raw bytes from --in, with --json.
    let dir = crate::harness::private_tempdir();
    let raw = dir.path().join("secret.bin");
    std::fs::write(&raw, of_secret.as_bytes()).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&ok(cli_stdin(
        socket,
        &["--json", "inspect", "--in", raw.to_str().unwrap()],
        b"",
    )))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"key": "secret", "key_id": hex(&secret.id), "version": 1})
    );

    // A peer that may see app-* only: the id and version, never the name.
    let encoded = STANDARD.encode(of_secret.as_bytes());
    let out = cli_as(NOBODY, socket, &["inspect"], encoded.as_bytes());
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!shown.contains("secret"), "{shown}");
    assert!(
        shown.contains(&format!(
            "key:      a key you cannot see (id {})",
            hex(&secret.id)
        )),
        "{shown}"
    );
    let out = cli_as(NOBODY, socket, &["--json", "inspect"], encoded.as_bytes());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["key"], serde_json::Value::Null, "{json}");
    let out = cli_as(
        NOBODY,
        socket,
        &["inspect"],
        STANDARD.encode(of_app.as_bytes()).as_bytes(),
    );
    assert!(text(&out.stdout).contains("key:      app-db\n"));

    // Not a ciphertext: refused locally, saying why.
    let out = cli_stdin(socket, &["inspect"], b"hello");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a hostkms ciphertext"),
        "{}",
        text(&out.stderr)
    );
}
