//! Key metadata (description and tags: set, shown, filtered, kept across a
//! restart, bounded) and `hostkms inspect`, which reads a ciphertext's
//! header without decrypting it and names its key only to a peer that may
//! see the key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use std::collections::BTreeMap;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, cli, cli_as, cli_stdin, ok, text,
};
use agent_proto::{EncryptionContext, ErrorCode, KeySettings, KeyType};

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

    // Not a ciphertext (read as unwrap reads it): refused locally, saying why.
    for (input, why) in [
        (&b"hello!"[..], "no hostkms header"),
        (b"", "input is empty"),
        (b"HKMS\x01short", "truncated"),
    ] {
        let out = cli_stdin(socket, &["inspect"], input);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
}

fn json_of(output: std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&ok(output)).expect("JSON")
}

fn names(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|key| key["name"].as_str().expect("a name"))
        .collect()
}

#[test]
fn set_show_and_filter_description_and_tags() {
    let harness = Harness::start(DaemonConfig::new());
    let socket = &harness.daemon.socket;
    ok(cli(
        socket,
        &[
            "create-key",
            "orders",
            "--description",
            "orders database, prod",
            "--tag",
            "env=prod",
            "--tag",
            "team=pay",
        ],
    ));
    ok(cli(socket, &["create-key", "staging", "--tag", "env=dev"]));
    ok(cli(socket, &["create-key", "plain"]));

    let shown = text(&ok(cli(socket, &["describe", "orders"])));
    assert!(
        shown.contains("description:             \"orders database, prod\"\n"),
        "{shown}"
    );
    assert!(
        shown.contains("tags:                    env=\"prod\", team=\"pay\"\n"),
        "{shown}"
    );
    let plain = text(&ok(cli(socket, &["describe", "plain"])));
    assert!(
        !plain.contains("tags:") && !plain.contains("description:"),
        "{plain}"
    );
    let key = json_of(cli(socket, &["--json", "describe", "orders"]));
    assert_eq!(key["description"], "orders database, prod");
    assert_eq!(
        key["tags"],
        serde_json::json!({"env": "prod", "team": "pay"})
    );

    let listed = text(&ok(cli(socket, &["list"])));
    let line = listed
        .lines()
        .find(|l| l.starts_with("orders"))
        .expect("orders listed");
    assert!(
        line.contains(r#"[env="prod", team="pay"]  "orders database, prod""#),
        "{listed}"
    );

    // --tag filters: every given tag must match.
    let list = |tags: &[&str]| {
        let mut args = vec!["--json", "list"];
        for tag in tags {
            args.extend(["--tag", tag]);
        }
        json_of(cli(socket, &args))
    };
    assert_eq!(names(&list(&[])), ["orders", "plain", "staging"]);
    assert_eq!(names(&list(&["env=prod"])), ["orders"]);
    assert_eq!(names(&list(&["env=prod", "team=pay"])), ["orders"]);
    assert!(names(&list(&["env=prod", "team=ops"])).is_empty());
    assert!(names(&list(&["env=pro"])).is_empty());

    // set-metadata: replace the description, set one tag, remove another.
    let key = json_of(cli(
        socket,
        &[
            "--json",
            "set-metadata",
            "staging",
            "--description",
            "for tests",
            "--tag",
            "team=pay",
            "--remove-tag",
            "env",
            "--remove-tag",
            "absent",
        ],
    ));
    assert_eq!(key["description"], "for tests");
    assert_eq!(key["tags"], serde_json::json!({"team": "pay"}));
    assert_eq!(names(&list(&["team=pay"])), ["orders", "staging"]);
    // The description is kept unless given; "" clears it.
    ok(cli(socket, &["set-metadata", "staging", "--tag", "x=1"]));
    let key = json_of(cli(socket, &["--json", "describe", "staging"]));
    assert_eq!(key["description"], "for tests");
    ok(cli(
        socket,
        &["set-metadata", "staging", "--description", ""],
    ));
    let key = json_of(cli(socket, &["--json", "describe", "staging"]));
    assert_eq!(key["description"], "");

    // Usage errors never reach the daemon.
    for args in [
        &["set-metadata", "staging"][..],
        &[
            "set-metadata",
            "staging",
            "--tag",
            "a=1",
            "--remove-tag",
            "a",
        ],
        &["create-key", "dup", "--tag", "a=1", "--tag", "a=2"],
        &["list", "--tag", "novalue"],
    ] {
        let out = cli(socket, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = cli(socket, &["describe", "dup"]);
    assert_eq!(out.status.code(), Some(1), "dup was not created");
}

#[test]
fn metadata_persists_across_a_restart() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start hostkmsd");
    let mut client = daemon.client();
    let settings = KeySettings {
        description: "kept".to_string(),
        tags: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        ..KeySettings::default()
    };
    client
        .create_key_with("kept", KeyType::HmacSha256, settings)
        .unwrap();
    client
        .update_key_metadata(
            "kept",
            None,
            &BTreeMap::from([("team".to_string(), "pay".to_string())]),
            &[],
        )
        .unwrap();
    drop(client);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");

    let daemon = Daemon::start(&files).expect("restart hostkmsd");
    let key = daemon.client().describe_key("kept").unwrap();
    assert_eq!(key.key_type, KeyType::HmacSha256);
    assert_eq!(key.description, "kept");
    assert_eq!(
        key.tags,
        BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            ("team".to_string(), "pay".to_string()),
        ])
    );
}

#[test]
fn limits_and_control_characters_are_refused_naming_the_limit() {
    let harness = Harness::start(DaemonConfig::new());
    let mut client = harness.daemon.client();
    client.create_key("k").unwrap();
    let tag = |name: &str, value: &str| BTreeMap::from([(name.to_string(), value.to_string())]);
    let refused = |result: Result<agent_proto::KeyInfo, agent_proto::ClientError>, says: &str| {
        let err = result.expect_err(says);
        assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
        assert!(err.to_string().contains(says), "{err}");
    };
    let none = BTreeMap::new();
    refused(
        client.update_key_metadata("k", Some(&"d".repeat(1025)), &none, &[]),
        "1024",
    );
    refused(
        client.update_key_metadata("k", Some("two\nlines"), &none, &[]),
        "control character",
    );
    refused(
        client.update_key_metadata("k", Some("bell\u{7}"), &none, &[]),
        "control character",
    );
    refused(
        client.update_key_metadata("k", None, &tag("a b", "1"), &[]),
        "A-Z a-z 0-9 . _ -",
    );
    refused(
        client.update_key_metadata("k", None, &tag(&"n".repeat(65), "1"), &[]),
        "64",
    );
    refused(
        client.update_key_metadata("k", None, &tag("t", &"v".repeat(257)), &[]),
        "256",
    );
    refused(
        client.update_key_metadata("k", None, &tag("t", "\u{1b}[2J"), &[]),
        "control character",
    );
    // Characters that hide or reorder text, named by code point.
    refused(
        client.update_key_metadata("k", Some("safe key \u{202E}gnp.exe\u{202C}"), &none, &[]),
        "U+202E",
    );
    refused(
        client.update_key_metadata("k", None, &tag("owner", "ali\u{200B}ce"), &[]),
        "U+200B",
    );
    refused(
        client.update_key_metadata("k", None, &tag("note", "\u{2028}x"), &[]),
        "U+2028",
    );
    let many: BTreeMap<String, String> = (0..33).map(|i| (format!("t{i}"), "v".into())).collect();
    refused(client.update_key_metadata("k", None, &many, &[]), "32");
    // The limit counts the key's tags after the change, not the request's.
    let thirty_two: BTreeMap<String, String> =
        (0..32).map(|i| (format!("t{i}"), "v".into())).collect();
    client
        .update_key_metadata("k", None, &thirty_two, &[])
        .unwrap();
    refused(
        client.update_key_metadata("k", None, &tag("one-more", "v"), &[]),
        "32",
    );
    client
        .update_key_metadata("k", None, &tag("one-more", "v"), &["t0".to_string()])
        .unwrap();
    // At the limit exactly: fine.
    client
        .update_key_metadata(
            "k",
            Some(&"d".repeat(1024)),
            &tag("t1", &"v".repeat(256)),
            &[],
        )
        .unwrap();
    // Creation checks the same limits, and creates nothing when refused.
    let settings = KeySettings {
        description: "tab\there".to_string(),
        ..KeySettings::default()
    };
    refused(
        client.create_key_with("new", KeyType::Aes256Gcm, settings),
        "control character",
    );
    assert_eq!(
        client.describe_key("new").unwrap_err().code(),
        Some(ErrorCode::KeyNotFound)
    );
    // The CLI reports the daemon's reason.
    let out = cli(
        &harness.daemon.socket,
        &["create-key", "new", "--tag", "bad name=1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("tag name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn set_metadata_needs_its_own_grant() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(
            Grant::to_uid(NOBODY)
                .keys(&["app-*"])
                .ops(&["describe", "wrap"]),
        )
        .grant(
            Grant::to_uid(NOBODY)
                .keys(&["app-meta"])
                .ops(&["set-metadata"]),
        );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).expect("start hostkmsd");
    let socket = &daemon.socket;
    let mut admin = daemon.client();
    admin.create_key("app-meta").unwrap();
    admin.create_key("app-other").unwrap();
    let out = cli_as(
        NOBODY,
        socket,
        &["set-metadata", "app-other", "--tag", "a=1"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("may not set-metadata with key \"app-other\""),
        "{}",
        text(&out.stderr)
    );
    let out = cli_as(
        NOBODY,
        socket,
        &["set-metadata", "app-meta", "--tag", "a=1"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(admin.describe_key("app-meta").unwrap().tags.len(), 1);
}
