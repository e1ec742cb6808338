//! The `hostkms` CLI against the real `hostkmsd` on a private swtpm: key
//! management, wrap/unwrap/rewrap through stdin, files and base64 or raw
//! encodings, data keys, refusals (exit 1), usage errors (exit 2) and bench.
//!
//! The daemon runs as root in these tests and root is an admin, so every
//! operation is allowed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{DaemonConfig, Harness, cli, cli_stdin, ok, stderr};
use agent_proto::date::rfc3339;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// The stdout of a successful run, as text.
pub(crate) fn ok_text(output: Output) -> String {
    String::from_utf8(ok(output)).expect("UTF-8 output")
}

/// The stdout of a successful run, as exactly one JSON document.
pub(crate) fn ok_json(output: Output) -> Value {
    let stdout = ok(output);
    let mut documents = serde_json::Deserializer::from_slice(&stdout).into_iter::<Value>();
    let value = documents
        .next()
        .expect("a JSON document")
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(&stdout)));
    assert!(documents.next().is_none(), "more than one JSON document");
    value
}

/// Asserts a refusal by the daemon: exit 1 and `hostkms: <what>` on stderr.
pub(crate) fn assert_refused(output: &Output, what: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.starts_with(&format!("hostkms: {what}: ")), "{err}");
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout after a refusal"
    );
}

/// Asserts a usage or local error: exit 2, the daemon not needed. The
/// message is on stderr, or on stdout as a JSON error with `--json`.
pub(crate) fn assert_usage(output: &Output, needles: &[&str]) {
    let err = format!(
        "{}{}",
        stderr(output),
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(2), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn lifecycle_dates_are_rfc3339_utc_in_describe_list_and_every_key_printed() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    let date = |value: &Value, field: &str| -> String {
        let date = value[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {value}"));
        assert!(is_rfc3339_utc(date), "{field}: {value}");
        date.to_string()
    };

    let created = ok_json(cli(
        socket,
        &["--json", "create-key", "dated", "--rotation-period", "90d"],
    ));
    let info = daemon.client().describe_key("dated").expect("describe");
    let next = info.next_rotation.expect("a key rotating by age has one");
    assert_eq!(next, info.created + 90 * 86_400);
    assert_eq!(created["rotation_period"], "90d");
    assert_eq!(created["rotation_period_secs"], 90 * 86_400);
    assert_eq!(date(&created, "next_rotation"), rfc3339(next));
    assert_eq!(date(&created, "created"), rfc3339(info.created));
    assert!(created["deletion_date"].is_null(), "{created}");

    let scheduled = ok_json(cli(
        socket,
        &["--json", "schedule-deletion", "dated", "--days", "7"],
    ));
    let info = daemon.client().describe_key("dated").expect("describe");
    let due = info
        .deletion_date
        .expect("a pending key has a deletion date");
    assert!(due >= info.created + 7 * 86_400, "{info:?}");
    assert_eq!(scheduled["state"], "pending-deletion");
    assert_eq!(date(&scheduled, "deletion_date"), rfc3339(due));

    let described = ok_json(cli(socket, &["--json", "describe", "dated"]));
    assert_eq!(described["state"], "pending-deletion");
    assert_eq!(described["rotation_period"], "90d", "kept while pending");
    assert!(
        described["next_rotation"].is_null(),
        "a pending key does not rotate: {described}"
    );
    assert_eq!(date(&described, "deletion_date"), rfc3339(due));
    assert_eq!(date(&described, "created"), rfc3339(info.created));
    date(&described["versions"][0], "created");

    let list = ok_json(cli(socket, &["--json", "list"]));
    let listed = &list[0];
    assert_eq!(listed["name"], "dated");
    assert_eq!(date(listed, "deletion_date"), rfc3339(due));

    let text = ok_text(cli(socket, &["describe", "dated"]));
    assert!(
        text.contains(&format!("deletion date:           {}", rfc3339(due))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "created:                 {}\n",
            rfc3339(info.created)
        )),
        "{text}"
    );

    let cancelled = ok_json(cli(socket, &["--json", "cancel-deletion", "dated"]));
    assert_eq!(cancelled["state"], "disabled");
    assert!(cancelled["deletion_date"].is_null(), "{cancelled}");
    let enabled = ok_json(cli(socket, &["--json", "enable", "dated"]));
    let set = ok_json(cli(
        socket,
        &["--json", "set-rotation-period", "dated", "1w"],
    ));
    assert_eq!(enabled["state"], "enabled");
    assert_eq!(set["rotation_period"], "1w");
    assert_eq!(
        date(&set, "next_rotation"),
        rfc3339(info.versions[0].created + 7 * 86_400)
    );
}

#[test]
fn keys_are_created_listed_and_described() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;

    let text = ok_text(cli(socket, &["create-key", "app-db"]));
    assert!(text.contains("name:") && text.contains("app-db"), "{text}");
    assert!(text.contains("enabled"), "{text}");

    let key = ok_json(cli(socket, &["--json", "create-key", "backups"]));
    assert_eq!(key["name"], "backups");
    assert_eq!(key["state"], "enabled");
    assert_eq!(key["latest_version"], 1);
    assert_eq!(key["min_decryption_version"], 1);
    let id = key["id"].as_str().expect("id");
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{id}"
    );
    // Times are RFC 3339 UTC in JSON as in text.
    assert!(key["created"].as_str().is_some_and(is_rfc3339_utc), "{key}");
    let versions = key["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["state"], "enabled");
    assert_eq!(versions[0]["encryptions"], 0);

    // A name is never reused.
    assert_refused(&cli(socket, &["create-key", "app-db"]), "key exists");

    // list: one line per key with name, state, latest version and id.
    let text = ok_text(cli(socket, &["list"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let backups = lines
        .iter()
        .find(|l| l.starts_with("backups "))
        .unwrap_or_else(|| panic!("no backups line: {text}"));
    assert!(
        backups.contains("enabled") && backups.contains(id),
        "{backups}"
    );
    assert!(lines.iter().any(|l| l.starts_with("app-db ")), "{text}");

    let list = ok_json(cli(socket, &["--json", "list"]));
    let mut names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|k| k["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["app-db", "backups"]);

    // describe, human: id in hex, state, times in RFC 3339 UTC.
    let text = ok_text(cli(socket, &["describe", "backups"]));
    assert!(text.contains(id), "{text}");
    assert!(text.contains("latest version"), "{text}");
    assert!(text.contains("min decryption version"), "{text}");
    let version_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no line for version 1: {text}"));
    assert!(
        version_line.split_whitespace().any(is_rfc3339_utc),
        "{version_line}"
    );
    let described = ok_json(cli(socket, &["--json", "describe", "backups"]));
    assert_eq!(described["id"], id);

    assert_refused(&cli(socket, &["describe", "nope"]), "key not found");

    // The socket may come from HOSTKMS_SOCKET instead of --socket.
    let output = Command::new(crate::harness::hostkms())
        .arg("list")
        .env("HOSTKMS_SOCKET", socket)
        .output()
        .expect("run hostkms");
    assert_eq!(ok_text(output).lines().count(), 2);
}

#[test]
fn wrap_and_unwrap_round_trip_in_base64_and_raw() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    let dir = files.root.path();
    ok(cli(socket, &["create-key", "app-db"]));
    let plaintext = b"the database password\n\x00\xff binary too";
    let context = ["--context", "table=users", "--context", "purpose=test"];
    // Wraps with app-db so far: its encryption count in describe, at the end.
    let mut wraps = 0u64;

    // Base64 through stdin and stdout.
    let mut args = vec!["wrap", "app-db"];
    args.extend(context);
    let text = ok_text(cli_stdin(socket, &args, plaintext));
    wraps += 1;
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let ciphertext = STANDARD.decode(text.trim()).expect("base64 ciphertext");
    assert!(ciphertext.starts_with(b"HKMS"));

    // The context's order on the command line does not matter.
    let args = [
        "unwrap",
        "--context",
        "purpose=test",
        "--context",
        "table=users",
    ];
    assert_eq!(ok(cli_stdin(socket, &args, text.as_bytes())), plaintext);
    // With --key naming the right key, and with surrounding whitespace.
    let padded = format!("\n  {}  \n\n", text.trim());
    let mut args = vec!["unwrap", "--key", "app-db"];
    args.extend(context);
    assert_eq!(ok(cli_stdin(socket, &args, padded.as_bytes())), plaintext);

    // Raw: --binary to a file, unwrap from that file to a 0600 file.
    let plain_in = dir.join("plain.in");
    let sealed = dir.join("sealed.bin");
    let plain_out = dir.join("plain.out");
    fs::write(&plain_in, plaintext).expect("write input");
    let mut args = vec![
        "wrap",
        "app-db",
        "--binary",
        "--in",
        plain_in.to_str().expect("path"),
        "--out",
        sealed.to_str().expect("path"),
    ];
    args.extend(context);
    assert!(
        ok(cli(socket, &args)).is_empty(),
        "nothing on stdout with --out"
    );
    wraps += 1;
    let raw = fs::read(&sealed).expect("ciphertext file");
    assert!(raw.starts_with(b"HKMS"));

    let mut args = vec![
        "unwrap",
        "--in",
        sealed.to_str().expect("path"),
        "--out",
        plain_out.to_str().expect("path"),
    ];
    args.extend(context);
    assert!(ok(cli(socket, &args)).is_empty());
    assert_eq!(fs::read(&plain_out).expect("plaintext file"), plaintext);
    assert_eq!(mode(&plain_out), 0o600, "a plaintext file is private");

    // An existing, readable --out file is kept unless --force, then
    // replaced and made 0600.
    let old = b"old, longer content than the plaintext itself....";
    fs::write(&plain_out, old).expect("w");
    fs::set_permissions(&plain_out, fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = cli(socket, &args);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert_eq!(fs::read(&plain_out).expect("plaintext file"), old);
    args.push("--force");
    assert!(ok(cli(socket, &args)).is_empty());
    assert_eq!(fs::read(&plain_out).expect("plaintext file"), plaintext);
    assert_eq!(mode(&plain_out), 0o600);

    // Raw ciphertext through stdin, base64 ciphertext written by --out.
    let mut args = vec!["unwrap"];
    args.extend(context);
    assert_eq!(ok(cli_stdin(socket, &args, &raw)), plaintext);
    let sealed_b64 = dir.join("sealed.b64");
    let mut args = vec![
        "wrap",
        "app-db",
        "--out",
        sealed_b64.to_str().expect("path"),
    ];
    args.extend(context);
    ok(cli_stdin(socket, &args, plaintext));
    wraps += 1;
    let mut args = vec!["unwrap", "--in", sealed_b64.to_str().expect("path")];
    args.extend(context);
    assert_eq!(ok(cli(socket, &args)), plaintext);

    // JSON both ways.
    let mut args = vec!["--json", "wrap", "app-db"];
    args.extend(context);
    let wrapped = ok_json(cli_stdin(socket, &args, plaintext));
    wraps += 1;
    assert_eq!(wrapped["key"], "app-db");
    assert_eq!(wrapped["version"], 1);
    let b64 = wrapped["ciphertext"].as_str().expect("ciphertext");
    let mut args = vec!["--json", "unwrap"];
    args.extend(context);
    let unwrapped = ok_json(cli_stdin(socket, &args, b64.as_bytes()));
    assert_eq!(unwrapped["key"], "app-db");
    assert_eq!(unwrapped["version"], 1);
    let again = STANDARD
        .decode(unwrapped["plaintext"].as_str().expect("plaintext"))
        .expect("base64 plaintext");
    assert_eq!(again, plaintext);

    // The wrong context, or none, does not authenticate; no plaintext leaks.
    let secret_marker = "the database password";
    for args in [
        &[
            "unwrap",
            "--context",
            "table=orders",
            "--context",
            "purpose=test",
        ][..],
        &["unwrap", "--context", "table=users"][..],
        &["unwrap"][..],
    ] {
        let output = cli_stdin(socket, args, text.as_bytes());
        assert_refused(&output, "invalid ciphertext");
        assert!(!stderr(&output).contains(secret_marker));
    }

    // --key naming another key is refused.
    ok(cli(socket, &["create-key", "other"]));
    let mut args = vec!["unwrap", "--key", "other"];
    args.extend(context);
    let output = cli_stdin(socket, &args, text.as_bytes());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(output.stdout.is_empty());

    // The encryption count shows in describe: one per wrap, none per unwrap
    // or refusal.
    let key = ok_json(cli(socket, &["--json", "describe", "app-db"]));
    assert_eq!(
        key["versions"][0]["encryptions"].as_u64(),
        Some(wraps),
        "the encryption count of app-db: {key}"
    );
}

#[test]
fn data_keys_with_and_without_plaintext() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "app-db"]));

    let data_key = ok_json(cli(
        socket,
        &["--json", "datakey", "app-db", "--context", "db=main"],
    ));
    assert_eq!(data_key["key"], "app-db");
    assert_eq!(data_key["version"], 1);
    let plaintext = STANDARD
        .decode(data_key["plaintext"].as_str().expect("plaintext"))
        .expect("base64");
    assert_eq!(plaintext.len(), 32, "32 bytes by default");
    let ciphertext = data_key["ciphertext"].as_str().expect("ciphertext");
    assert!(
        STANDARD
            .decode(ciphertext)
            .expect("base64")
            .starts_with(b"HKMS")
    );
    // The wrapped data key unwraps to the data key.
    let unwrapped = ok(cli_stdin(
        socket,
        &["unwrap", "--context", "db=main"],
        ciphertext.as_bytes(),
    ));
    assert_eq!(unwrapped, plaintext);

    let data_key = ok_json(cli(
        socket,
        &[
            "--json",
            "datakey",
            "app-db",
            "--bytes",
            "64",
            "--without-plaintext",
        ],
    ));
    assert!(
        data_key.get("plaintext").is_none_or(Value::is_null),
        "{data_key}"
    );
    let ciphertext = data_key["ciphertext"].as_str().expect("ciphertext");
    let unwrapped = ok(cli_stdin(socket, &["unwrap"], ciphertext.as_bytes()));
    assert_eq!(unwrapped.len(), 64);

    // Human form: key, version, plaintext, ciphertext lines.
    let text = ok_text(cli(socket, &["datakey", "app-db", "--bytes", "16"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "key app-db");
    assert_eq!(lines[1], "version 1");
    let plaintext = lines[2].strip_prefix("plaintext ").expect("plaintext line");
    assert_eq!(STANDARD.decode(plaintext).expect("base64").len(), 16);
    assert!(lines[3].starts_with("ciphertext "), "{text}");

    let text = ok_text(cli(socket, &["datakey", "app-db", "--without-plaintext"]));
    assert!(!text.contains("plaintext"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");

    // Unsupported lengths are usage errors.
    assert_usage(
        &cli(socket, &["datakey", "app-db", "--bytes", "33"]),
        &["--bytes"],
    );
    assert_refused(&cli(socket, &["datakey", "nope"]), "key not found");
}

#[test]
fn rotate_rewrap_and_revoke_a_version() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    let dir = files.root.path();
    ok(cli(socket, &["create-key", "app-db"]));
    let plaintext = b"rotate me";
    let v1 = ok(cli_stdin(
        socket,
        &["wrap", "app-db", "--context", "a=b"],
        plaintext,
    ));
    let v1_file = dir.join("v1.b64");
    fs::write(&v1_file, &v1).expect("write");

    let key = ok_json(cli(socket, &["--json", "rotate", "app-db"]));
    assert_eq!(key["latest_version"], 2);
    assert_eq!(key["versions"].as_array().map(Vec::len), Some(2));

    // rewrap: the new ciphertext is of version 2 and holds the same plaintext.
    let rewrapped = ok_json(cli(
        socket,
        &[
            "--json",
            "rewrap",
            "--in",
            v1_file.to_str().expect("path"),
            "--context",
            "a=b",
        ],
    ));
    assert_eq!(rewrapped["key"], "app-db");
    assert_eq!(rewrapped["version"], 2);
    let v2 = rewrapped["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_string();
    assert_eq!(
        ok(cli_stdin(
            socket,
            &["unwrap", "--context", "a=b"],
            v2.as_bytes()
        )),
        plaintext
    );
    // rewrap --binary writes raw bytes; the human form is base64.
    let raw = ok(cli_stdin(
        socket,
        &["rewrap", "--binary", "--key", "app-db", "--context", "a=b"],
        &v1,
    ));
    assert!(raw.starts_with(b"HKMS"));
    let text = ok_text(cli_stdin(socket, &["rewrap", "--context", "a=b"], &raw));
    assert!(
        STANDARD
            .decode(text.trim())
            .expect("base64")
            .starts_with(b"HKMS")
    );

    // Revoke version 1: its ciphertexts no longer unwrap, version 2's do.
    let key = ok_json(cli(
        socket,
        &["--json", "revoke", "app-db", "--version", "1"],
    ));
    assert_eq!(key["versions"][0]["state"], "revoked");
    assert_eq!(key["versions"][1]["state"], "enabled");
    assert_eq!(key["state"], "enabled");
    let output = cli_stdin(socket, &["unwrap", "--context", "a=b"], &v1);
    assert_refused(&output, "version revoked");
    let output = cli_stdin(socket, &["rewrap", "--context", "a=b"], &v1);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        ok(cli_stdin(
            socket,
            &["unwrap", "--context", "a=b"],
            v2.as_bytes()
        )),
        plaintext
    );
    let text = ok_text(cli(socket, &["describe", "app-db"]));
    assert!(text.contains("revoked"), "{text}");

    // The whole key: without --version, destroying it needs --yes (the
    // tests' stdin is no terminal, so nothing can be typed instead), and
    // without it nothing is revoked.
    let output = cli(socket, &["revoke", "app-db"]);
    assert_usage(
        &output,
        &[
            "every version of key app-db",
            "--yes",
            "Nothing was revoked",
        ],
    );
    let key = ok_json(cli(socket, &["--json", "describe", "app-db"]));
    assert_eq!(key["state"], "enabled");
    let output = cli(socket, &["--json", "revoke", "app-db", "--yes"]);
    let key: serde_json::Value =
        serde_json::from_slice(&ok(output.clone())).expect("revoke --json");
    assert_eq!(key["state"], "revoked");
    assert!(
        stderr(&output).contains("key material of its 2 versions is destroyed"),
        "{}",
        stderr(&output)
    );
    let output = cli_stdin(socket, &["unwrap", "--context", "a=b"], v2.as_bytes());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn disable_enable_and_min_decryption_version() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "app-db"]));
    let v1 = ok(cli_stdin(socket, &["wrap", "app-db"], b"one"));

    let key = ok_json(cli(socket, &["--json", "disable", "app-db"]));
    assert_eq!(key["state"], "disabled");
    assert_refused(
        &cli_stdin(socket, &["wrap", "app-db"], b"x"),
        "key disabled",
    );
    let text = ok_text(cli(socket, &["list"]));
    assert!(text.contains("disabled"), "{text}");

    let key = ok_json(cli(socket, &["--json", "enable", "app-db"]));
    assert_eq!(key["state"], "enabled");
    ok(cli_stdin(socket, &["wrap", "app-db"], b"x"));

    // Versions below the minimum refuse to unwrap, reversibly.
    ok(cli(socket, &["rotate", "app-db"]));
    let v2 = ok(cli_stdin(socket, &["wrap", "app-db"], b"two"));
    let key = ok_json(cli(
        socket,
        &["--json", "min-decryption-version", "app-db", "2"],
    ));
    assert_eq!(key["min_decryption_version"], 2);
    assert_refused(&cli_stdin(socket, &["unwrap"], &v1), "version revoked");
    assert_eq!(ok(cli_stdin(socket, &["unwrap"], &v2)), b"two");
    let text = ok_text(cli(socket, &["min-decryption-version", "app-db", "1"]));
    assert!(text.contains("min decryption version:  1"), "{text}");
    assert_eq!(ok(cli_stdin(socket, &["unwrap"], &v1)), b"one");
}

#[test]
fn usage_and_local_errors_exit_2_before_contacting_the_daemon() {
    // No daemon: these must fail on their own, naming what is wrong.
    let dir = crate::harness::private_tempdir();
    let socket = dir.path().join("no-daemon.sock");

    let output = cli(&socket, &["wrap", "k", "--context", "novalue"]);
    assert_usage(&output, &["--context", "novalue"]);
    let output = cli(&socket, &["unwrap", "--context", "=v"]);
    assert_usage(&output, &["--context", "=v"]);
    let output = cli_stdin(
        &socket,
        &["wrap", "k", "--context", "a=1", "--context", "a=2"],
        b"x",
    );
    assert_usage(&output, &["--context", "a=2"]);
    let output = cli_stdin(&socket, &["--json", "wrap", "k", "--binary"], b"x");
    assert_usage(&output, &["--binary", "--json"]);
    assert_usage(&cli(&socket, &["revoke"]), &["NAME"]);
    assert_usage(&cli(&socket, &["bench", "--op", "encrypt"]), &["--op"]);
    assert_usage(
        &cli(&socket, &["bench", "--op", "datakey", "--size", "20"]),
        &["--size"],
    );

    // Local files: say which and why.
    let missing = dir.path().join("missing.txt");
    let output = cli(
        &socket,
        &["wrap", "k", "--in", missing.to_str().expect("path")],
    );
    assert_usage(&output, &["missing.txt", "No such file"]);

    // Input over the frame limit is refused before anything is sent.
    let big = vec![b'a'; 1024 * 1024 + 1];
    let output = cli_stdin(&socket, &["wrap", "k"], &big);
    assert_usage(&output, &["standard input", "1048576"]);

    // And the connection error itself.
    let output = cli_stdin(&socket, &["wrap", "k"], b"x");
    assert_usage(&output, &["no-daemon.sock", "is hostkmsd running"]);
}

#[test]
fn bench_prints_one_json_object() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    let output = cli(
        socket,
        &["--json", "bench", "--duration", "1", "--connections", "2"],
    );
    let err = stderr(&output);
    let report = ok_json(output);
    for field in [
        "op",
        "connections",
        "duration_secs",
        "size",
        "ops",
        "errors",
        "ops_per_sec",
        "ping_ops_per_sec",
        "ratio_to_ping",
        "p50_us",
        "p99_us",
        "p999_us",
        "ping_p50_us",
        "ping_p99_us",
    ] {
        assert!(report.get(field).is_some(), "{field} missing: {report}");
    }
    assert_eq!(report["op"], "unwrap");
    assert_eq!(report["connections"], 2);
    assert_eq!(report["size"], 32);
    assert_eq!(report["duration_secs"], 1.0);
    assert!(report["ops"].as_u64() > Some(0), "{report}");
    assert_eq!(report["errors"], 0);
    let number = |field: &str| report[field].as_f64().unwrap_or(-1.0);
    assert!(number("ops_per_sec") > 0.0, "{report}");
    assert!(number("ping_ops_per_sec") > 0.0, "{report}");
    assert!(number("ratio_to_ping") > 0.0, "{report}");
    assert!(number("p50_us") > 0.0, "{report}");
    assert!(number("p50_us") <= number("p99_us"), "{report}");
    assert!(number("p99_us") <= number("p999_us"), "{report}");
    assert!(number("ping_p50_us") <= number("ping_p99_us"), "{report}");

    // It ran on a temporary key, announced at the start and revoked at
    // the end: no permanent "bench" key is left behind.
    let key = report["key"].as_str().expect("key");
    assert!(key.starts_with("bench-tmp-aes256-gcm-"), "{report}");
    assert_eq!(report["temporary_key"], true);
    assert!(
        err.contains(&format!("using temporary key {key}, revoked"))
            && err.contains(&format!("revoked temporary key {key}")),
        "{err}"
    );
    let described = ok_json(cli(socket, &["--json", "describe", key]));
    assert_eq!(described["state"], "revoked");
    assert_refused(&cli(socket, &["describe", "bench"]), "key not found");
    // Two runs never share a temporary key.
    let again = ok_json(cli(
        socket,
        &["--json", "bench", "--duration", "0.2", "--connections", "1"],
    ));
    assert_ne!(again["key"], report["key"]);
}

#[test]
fn bench_measures_wrap_and_datakey_too() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    for (op, size) in [("wrap", "100"), ("datakey", "64")] {
        let report = ok_json(cli(
            socket,
            &[
                "--json",
                "bench",
                "--op",
                op,
                "--size",
                size,
                "--duration",
                "0.3",
                "--connections",
                "3",
                "--key",
                "bench-ops",
            ],
        ));
        assert_eq!(report["op"], op);
        assert!(report["ops"].as_u64() > Some(0), "{report}");
        assert_eq!(report["errors"], 0, "{report}");
    }
    // Human form.
    let text = ok_text(cli(
        socket,
        &["bench", "--duration", "0.2", "--connections", "1"],
    ));
    assert!(
        text.contains("ops/s") && text.contains("ratio to ping:"),
        "{text}"
    );

    // However short the window, a phase stops only once --min-ops
    // requests completed in it (default 1, which the runs above rely on):
    // a loaded host lengthens the window, never empties it. 500 requests
    // cannot complete in a millisecond.
    let report = ok_json(cli(
        socket,
        &[
            "--json",
            "bench",
            "--op",
            "wrap",
            "--duration",
            "0.001",
            "--min-ops",
            "500",
            "--connections",
            "2",
            "--key",
            "bench-ops",
        ],
    ));
    assert_eq!(report["min_ops"], 500, "{report}");
    assert!(report["ops"].as_u64() >= Some(500), "{report}");
    assert!(report["ping_ops"].as_u64() >= Some(500), "{report}");
    assert!(
        report["elapsed_secs"].as_f64() > Some(0.001),
        "the window measured, not the one asked for: {report}"
    );

    // A bench that fails its requests exits 1 after its report.
    ok(cli(socket, &["disable", "bench-ops"]));
    let output = cli(
        socket,
        &[
            "--json",
            "bench",
            "--op",
            "wrap",
            "--duration",
            "0.2",
            "--connections",
            "1",
            "--key",
            "bench-ops",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("report JSON");
    assert!(report["errors"].as_u64() > Some(0), "{report}");
    assert!(
        stderr(&output).contains("key disabled"),
        "{}",
        stderr(&output)
    );
}
