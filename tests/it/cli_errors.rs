//! How the `hostkms` CLI fails, against the real daemon: `--json` errors as
//! one object on stdout with the usual exit codes, connection errors that
//! tell a missing socket from a file, a stale socket and a socket of a
//! group the user is not in, denials that say which grant allows the
//! request, `unwrap` diagnosing its input before asking the daemon and
//! refusing raw bytes on a terminal, and `datakey --out`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::cli::{ok_json, ok_text};
use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, b64, cli, cli_as, cli_stdin, hostkms,
    ok, private_tempdir, stderr, text,
};

const NOBODY: u32 = 65534;

/// The JSON error a failed `--json` run printed: exactly one object
/// `{"error": {"code", "message"}}` on stdout, nothing on stderr, and the
/// exit code `exit`.
fn json_error(output: &Output, exit: i32) -> (String, String) {
    assert_eq!(
        output.status.code(),
        Some(exit),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        stderr(output)
    );
    assert!(
        output.stderr.is_empty(),
        "a --json error goes to stdout only: {}",
        stderr(output)
    );
    let value: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(&output.stdout)));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{value}");
    let error = value["error"].as_object().expect("an error object");
    assert_eq!(error.len(), 2, "{value}");
    (
        error["code"].as_str().expect("code").to_string(),
        error["message"].as_str().expect("message").to_string(),
    )
}

/// Runs `program args` with its standard output and error on a fresh
/// pseudo-terminal (util-linux `script`), standard input empty; returns
/// its exit code and what it wrote to the terminal.
pub(crate) fn on_a_terminal(program: &Path, args: &[&str]) -> (Option<i32>, String) {
    let quote = |word: &str| format!("'{}'", word.replace('\'', "'\\''"));
    let mut line = quote(&program.display().to_string());
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    let output = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    (
        output.status.code(),
        text(&output.stdout).replace("\r\n", "\n"),
    )
}

#[test]
fn json_errors_are_one_object_on_stdout_with_the_usual_exit_codes() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "k"]));

    // A daemon refusal: exit 1, the daemon's code in snake case.
    let (code, message) = json_error(&cli(socket, &["--json", "describe", "missing"]), 1);
    assert_eq!(code, "key_not_found");
    assert!(message.starts_with("key not found: "), "{message}");
    let (code, _) = json_error(&cli(socket, &["--json", "create-key", "k"]), 1);
    assert_eq!(code, "key_exists");

    // A usage error found after parsing: exit 2.
    let (code, message) = json_error(&cli(socket, &["wrap", "k", "--binary", "--json"]), 2);
    assert_eq!(code, "usage");
    assert!(message.contains("'--binary' and '--json'"), "{message}");
    // An input error: exit 2, found before the daemon is asked.
    let (code, message) = json_error(&cli_stdin(socket, &["--json", "unwrap"], b""), 2);
    assert_eq!(code, "not_ciphertext");
    assert!(message.contains("input is empty"), "{message}");
    let (code, _) = json_error(
        &cli(socket, &["--json", "wrap", "k", "--in", "/nonexistent"]),
        2,
    );
    assert_eq!(code, "read");

    // A connection error: exit 2.
    let gone = socket.with_file_name("gone.sock");
    let (code, message) = json_error(&cli(&gone, &["--json", "ping"]), 2);
    assert_eq!(code, "connect");
    assert!(message.contains("no socket there"), "{message}");

    // Without --json the same failures are text on stderr, stdout empty.
    let output = cli(socket, &["describe", "missing"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(stderr(&output).starts_with("hostkms: key not found: "));

    // A failed check prints its result, so stdout stays that one document
    // and the error goes to stderr.
    ok(cli(socket, &["create-key", "m", "--type", "hmac-sha256"]));
    let output = cli_stdin(
        socket,
        &["--json", "verify-mac", "m", "--tag", &b64(&[0u8; 32])],
        b"message",
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let value: Value = serde_json::from_slice(&output.stdout).expect("one document");
    assert_eq!(value["valid"], false, "{value}");
    assert!(
        stderr(&output).starts_with("hostkms: invalid: "),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_found_after_parsing_look_like_claps_own() {
    let dir = private_tempdir();
    let socket = dir.path().join("none.sock");
    let ours = cli(&socket, &["revoke", "k"]);
    let claps = cli(&socket, &["revoke"]);
    for output in [&ours, &claps] {
        let err = stderr(output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("Usage: hostkms revoke"), "{err}");
        assert!(
            err.ends_with("For more information, try '--help'.\n"),
            "{err}"
        );
    }
    assert!(
        stderr(&ours).contains("add --yes to confirm"),
        "{}",
        stderr(&ours)
    );
}

#[test]
fn command_line_errors_with_json_are_the_json_error_object() {
    let dir = private_tempdir();
    let socket = dir.path().join("none.sock");
    let out = dir.path().join("x");
    let out = out.to_str().expect("utf-8");
    for args in [
        &[
            "--json",
            "datakey",
            "k",
            "--without-plaintext",
            "--out",
            out,
        ][..],
        &[
            "datakey",
            "k",
            "--without-plaintext",
            "--out",
            out,
            "--json",
        ],
        &["--json", "schedule-deletion", "k", "--days", "3"],
        &["--json", "wrap"],
        &["--json", "no-such-command"],
        &["--json"],
    ] {
        let (code, message) = json_error(&cli(&socket, args), 2);
        assert_eq!(code, "usage", "{args:?}");
        assert!(!message.is_empty(), "{args:?}");
        assert!(!message.contains('\u{1b}'), "no colours: {message:?}");
        assert!(!message.starts_with("error:"), "{message}");
    }
    let (_, message) = json_error(
        &cli(
            &socket,
            &["--json", "schedule-deletion", "k", "--days", "3"],
        ),
        2,
    );
    assert!(message.contains("--days"), "{message}");
    let (_, message) = json_error(
        &cli(
            &socket,
            &[
                "--json",
                "datakey",
                "k",
                "--without-plaintext",
                "--out",
                out,
            ],
        ),
        2,
    );
    assert!(message.contains("cannot be used with"), "{message}");
    assert!(!Path::new(out).exists());

    // Without --json, clap's own text on stderr, as before.
    let output = cli(&socket, &["schedule-deletion", "k", "--days", "3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).starts_with("error: "),
        "{}",
        stderr(&output)
    );
    // After "--" it is a value, not the flag.
    let output = cli(&socket, &["wrap", "--", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    // --help and --version are no errors, and stay text on stdout.
    for flag in ["--help", "--version"] {
        let output = cli(&socket, &["--json", flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert!(text(&output.stdout).contains("hostkms"), "{flag}");
        assert!(serde_json::from_slice::<Value>(&output.stdout).is_err());
    }
}

#[test]
fn oversized_or_truncated_ciphertext_input_gets_ciphertext_advice_in_one_style() {
    let dir = private_tempdir();
    let socket = dir.path().join("none.sock");
    let huge = vec![b'A'; agent_proto::DEFAULT_MAX_FRAME as usize + 1];
    for command in ["inspect", "unwrap", "rewrap"] {
        let output = cli_stdin(&socket, &[command], &huge);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {err}");
        assert!(
            err.starts_with("hostkms: standard input"),
            "{command}: {err}"
        );
        assert!(
            err.contains("larger than any ciphertext hostkms makes"),
            "{command}: {err}"
        );
        assert!(!err.contains("data key"), "plaintext advice: {err}");
        let (code, _) = json_error(&cli_stdin(&socket, &["--json", command], &huge), 2);
        assert_eq!(code, "input_too_large");
    }
    // A cut-off ciphertext: the same `hostkms: ` style as every other
    // input diagnosis, not the argument parser's.
    let header = agent_proto::ciphertext::Header {
        key_id: [1; 16],
        version: 1,
        nonce: [2; 12],
    };
    let truncated = &header.to_bytes()[..20];
    let output = cli_stdin(&socket, &["inspect"], truncated);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.starts_with("hostkms: standard input: "), "{err}");
    assert!(!err.contains("Usage:"), "{err}");
    let (code, _) = json_error(&cli_stdin(&socket, &["--json", "inspect"], truncated), 2);
    assert_eq!(code, "not_ciphertext");
}

#[test]
fn connection_errors_say_what_is_at_the_socket_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");

    let missing = dir.path().join("missing.sock");
    let err = stderr(&cli(&missing, &["ping"]));
    assert!(
        err.contains("no socket there; is hostkmsd running"),
        "{err}"
    );

    let file = dir.path().join("file.sock");
    fs::write(&file, b"").expect("write");
    let output = cli(&file, &["ping"]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("is a regular file, not a socket"), "{err}");
    assert!(!err.contains("stale"), "{err}");

    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let err = stderr(&cli(&stale, &["ping"]));
    assert!(
        err.contains("a stale socket: nothing is listening on it"),
        "{err}"
    );

    // A live socket of mode 0660, owned by root and group "daemon" (gid
    // 1): a user outside the group is told which group to join.
    let guarded = dir.path().join("guarded.sock");
    let _listener = UnixListener::bind(&guarded).expect("bind");
    fs::set_permissions(&guarded, fs::Permissions::from_mode(0o660)).expect("chmod");
    nix::unistd::chown(&guarded, None, Some(nix::unistd::Gid::from_raw(1))).expect("chgrp");
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(1))
        .ok()
        .flatten()
        .map_or_else(|| "gid 1".to_string(), |g| g.name);
    let output = cli_as(NOBODY, &guarded, &["ping"], b"");
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("group {group} with mode 660"))
            && err.contains(&format!("add you to group {group}")),
        "{err}"
    );
}

#[test]
fn denials_of_a_named_key_say_which_grant_allows_them() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(Grant::to_uid(NOBODY).keys(&["app-*"]).ops(&["wrap"]));
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "app-db"]));
    ok(cli(socket, &["create-key", "secret"]));
    let wrapped = ok_text(cli_stdin(socket, &["wrap", "secret"], b"not for nobody"));

    let output = cli_as(NOBODY, socket, &["describe", "app-db"], b"");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "permission denied: uid {NOBODY} may not describe with key \"app-db\"; to get \
             access, an admin adds [[grant]] uids = [{NOBODY}], keys = [\"app-db\"], \
             ops = [\"describe\"] to the daemon's config"
        )),
        "{err}"
    );
    let output = cli_as(NOBODY, socket, &["--json", "wrap", "secret"], b"x");
    let (code, message) = json_error(&output, 1);
    assert_eq!(code, "permission_denied");
    assert!(
        message.contains("keys = [\"secret\"], ops = [\"wrap\"]"),
        "{message}"
    );

    // The lifecycle and metadata commands name their own grant, for a key
    // the peer's grants cover (the op check) and one they do not (the
    // name gate): the same words either way.
    for key in ["app-db", "secret"] {
        let output = cli_as(NOBODY, socket, &["schedule-deletion", key], b"");
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "permission denied: uid {NOBODY} may not schedule-deletion with key \"{key}\"; \
                 to get access, an admin adds [[grant]] uids = [{NOBODY}], keys = [\"{key}\"], \
                 ops = [\"schedule-deletion\"] to the daemon's config"
            )),
            "{err}"
        );
    }
    for (args, op) in [
        (&["cancel-deletion", "app-db"][..], "cancel-deletion"),
        (
            &["set-rotation-period", "app-db", "1d"],
            "set-rotation-period",
        ),
        (&["set-metadata", "app-db", "--tag", "a=b"], "set-metadata"),
    ] {
        let mut json = vec!["--json"];
        json.extend_from_slice(args);
        let (code, message) = json_error(&cli_as(NOBODY, socket, &json, b""), 1);
        assert_eq!(code, "permission_denied", "{message}");
        assert!(
            message.contains(&format!("keys = [\"app-db\"], ops = [\"{op}\"]")),
            "{message}"
        );
    }
    assert_eq!(
        ok_json(cli(socket, &["--json", "describe", "app-db"]))["state"],
        "enabled",
        "nothing was changed"
    );

    // Without --key the ciphertext's key is not the peer's to learn: no
    // grant is suggested, and no key is named.
    let output = cli_as(NOBODY, socket, &["unwrap"], wrapped.as_bytes());
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("secret") && !err.contains("[[grant]] uids"),
        "{err}"
    );
}

#[test]
fn unwrap_diagnoses_its_input_before_asking_the_daemon() {
    // No daemon at all: each diagnosis comes before any connection.
    let dir = private_tempdir();
    let socket = dir.path().join("none.sock");
    for (input, needle) in [
        (&b""[..], "standard input: input is empty"),
        (b"\n \n", "input is empty"),
        (
            br#"{"key":"k","version":1,"ciphertext":"SEtNUw=="}"#,
            "this is `wrap --json` output, pass the ciphertext field",
        ),
        (b"hello, world", "not base64 and no hostkms header"),
        (b"aGVsbG8=", "not a hostkms ciphertext (no HKMS header)"),
    ] {
        let output = cli_stdin(&socket, &["unwrap"], input);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
        assert!(!err.contains("cannot connect"), "{err}");
    }
    let file = dir.path().join("empty.b64");
    fs::write(&file, b"").expect("write");
    let err = stderr(&cli(
        &socket,
        &["rewrap", "--in", file.to_str().expect("utf-8")],
    ));
    assert!(
        err.contains(&format!("file {}: input is empty", file.display())),
        "{err}"
    );
}

#[test]
fn unwrap_reads_wrapped_base64_and_prints_base64_or_hex() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "k"]));
    let plaintext: Vec<u8> = (0u8..200).collect();
    let line = ok_text(cli_stdin(socket, &["wrap", "k"], &plaintext));
    // As `base64` (coreutils) wraps it: 76 columns.
    let encoded = line.trim();
    assert!(encoded.len() > 3 * 76);
    let wrapped: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|l| std::str::from_utf8(l).expect("ascii"))
        .collect();
    let folded = format!("{}\n", wrapped.join("\n"));
    assert_eq!(
        ok(cli_stdin(socket, &["unwrap"], folded.as_bytes())),
        plaintext
    );

    let b64_out = ok_text(cli_stdin(
        socket,
        &["unwrap", "--base64"],
        folded.as_bytes(),
    ));
    assert_eq!(b64_out, format!("{}\n", b64(&plaintext)));
    let hex_out = ok_text(cli_stdin(socket, &["unwrap", "--hex"], folded.as_bytes()));
    let hex: String = plaintext.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex_out, format!("{hex}\n"));
    let (code, _) = json_error(
        &cli_stdin(socket, &["--json", "unwrap", "--hex"], folded.as_bytes()),
        2,
    );
    assert_eq!(code, "usage");
}

#[test]
fn unwrap_refuses_raw_bytes_on_a_terminal_unless_forced() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = daemon.socket.to_str().expect("utf-8 socket");
    ok(cli(&daemon.socket, &["create-key", "k"]));
    let ciphertext = ok_text(cli_stdin(
        &daemon.socket,
        &["wrap", "k"],
        b"terminal plaintext",
    ));
    let input = files.root.path().join("ct.b64");
    fs::write(&input, &ciphertext).expect("write");
    let input = input.to_str().expect("utf-8");

    let (code, screen) = on_a_terminal(hostkms(), &["--socket", socket, "unwrap", "--in", input]);
    assert_eq!(code, Some(2), "{screen}");
    assert!(
        screen.contains("refusing to write the raw plaintext to a terminal"),
        "{screen}"
    );
    assert!(!screen.contains("terminal plaintext"), "{screen}");

    let (code, screen) = on_a_terminal(
        hostkms(),
        &["--socket", socket, "unwrap", "--in", input, "--force"],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("terminal plaintext"), "{screen}");
    let (code, screen) = on_a_terminal(
        hostkms(),
        &["--socket", socket, "unwrap", "--in", input, "--base64"],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains(&b64(b"terminal plaintext")), "{screen}");
}

#[test]
fn datakey_out_writes_the_key_in_clear_0600_and_never_replaces_a_file_unasked() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "k"]));
    let out = files.root.path().join("dek.bin");
    let out_arg = out.to_str().expect("utf-8");

    let report = ok_json(cli(
        socket,
        &["--json", "datakey", "k", "--bytes", "24", "--out", out_arg],
    ));
    assert_eq!(report["key"], "k");
    assert_eq!(report["bytes"], 24);
    assert_eq!(report["plaintext_file"], out_arg);
    assert!(report.get("plaintext").is_none(), "{report}");
    let data_key = fs::read(&out).expect("read");
    assert_eq!(data_key.len(), 24);
    assert_eq!(
        fs::metadata(&out).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    // The wrapped data key unwraps to the bytes in the file.
    let ciphertext = report["ciphertext"].as_str().expect("ciphertext");
    assert_eq!(
        ok(cli_stdin(socket, &["unwrap"], ciphertext.as_bytes())),
        data_key
    );

    // An existing file is kept unless --force.
    let output = cli(socket, &["datakey", "k", "--out", out_arg]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("exists; give --force"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fs::read(&out).expect("read"), data_key);
    let text = ok_text(cli(socket, &["datakey", "k", "--out", out_arg, "--force"]));
    assert!(
        text.contains(&format!("plaintext written to {out_arg} (32 bytes)")),
        "{text}"
    );
    assert!(text.contains("ciphertext "), "{text}");
    assert_eq!(fs::read(&out).expect("read").len(), 32);
}

#[test]
fn metrics_json_is_one_object_of_the_counters() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "k"]));
    ok(cli_stdin(socket, &["wrap", "k"], b"x"));
    let metrics = ok_json(cli(socket, &["--json", "metrics"]));
    assert_eq!(metrics["keys"], 1, "{metrics}");
    assert_eq!(metrics["requests"]["wrap"]["ok"], 1, "{metrics}");
    assert_eq!(metrics["root_key_loaded"], true, "{metrics}");
    assert!(metrics["uptime_secs"].as_u64().is_some(), "{metrics}");
    assert!(metrics["alerts"].is_object(), "{metrics}");
}
