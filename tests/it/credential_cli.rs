//! `hostkms credential encrypt` and `hostkms credential list` against the
//! real daemon, and the daemon's `WrapCredential` under them (D6): admins
//! only, names checked, an encryption key only, audited with the
//! credential's unit and id. The file is written as the daemon reads it:
//! owned like the credentials directory, 0600, in a 0700 unit directory,
//! never through a link.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use agent_proto::{ClientError, ErrorCode};

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, cli, cli_as, cli_stdin, ensure_journald,
    field, hostkms, journal_of_stopped, text,
};

/// The daemon's user in these tests: the owner of the credentials
/// directory, whose files the daemon must be able to read.
const DAEMON_USER: u32 = 65534;

/// A uid that holds `wrap` on the key but is no admin.
const SERVICE: u32 = 65534;

const SECRET: &[u8] = b"s3cret \xc3\xa9 with a newline\n";

struct Setup {
    daemon: Daemon,
    files: DaemonFiles,
    _tpm: Swtpm,
    /// The credentials directory, owned by [`DAEMON_USER`], mode 0700.
    dir: PathBuf,
    /// A file holding [`SECRET`].
    secret: PathBuf,
}

fn setup_with(env: &[(&str, &str)]) -> Setup {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new().socket_mode("0666").grant(
        Grant::to_uid(SERVICE)
            .keys(&["cred", "signer"])
            .ops(&["wrap", "unwrap", "describe"]),
    );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start_with_env(&files, &[], env)
        .unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    ok(cli(&daemon.socket, &["create-key", "cred"]));
    ok(cli(
        &daemon.socket,
        &["create-key", "signer", "--type", "ecdsa-p256"],
    ));
    let root = files.root.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = root.join("credentials");
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(DAEMON_USER), Some(DAEMON_USER)).expect("chown");
    let secret = root.join("secret");
    fs::write(&secret, SECRET).expect("write the secret");
    Setup {
        daemon,
        files,
        _tpm: tpm,
        dir,
        secret,
    }
}

fn setup() -> Setup {
    setup_with(&[])
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout)
}

impl Setup {
    fn dir_arg(&self) -> &str {
        self.dir.to_str().expect("path")
    }

    /// `credential encrypt` as root with the secret from the file.
    fn encrypt(&self, unit: &str, id: &str, key: &str, extra: &[&str]) -> Output {
        let mut args = encrypt_args(unit, id, key, self.dir_arg(), &["--in"]);
        args.push(self.secret.to_str().expect("path"));
        args.extend_from_slice(extra);
        cli(&self.daemon.socket, &args)
    }

    /// `credential encrypt` of db.service's `id` as [`SERVICE`], the secret
    /// on standard input.
    fn encrypt_as_service(&self, id: &str) -> Output {
        let args = encrypt_args("db.service", id, "cred", self.dir_arg(), &[]);
        cli_as(SERVICE, &self.daemon.socket, &args, SECRET)
    }

    /// `credential encrypt` of x.service's credential `a` into `dir`.
    fn encrypt_into(&self, dir: &Path, extra: &[&str]) -> Output {
        let secret = self.secret.to_str().expect("path");
        let mut args = encrypt_args("x.service", "a", "cred", dir.to_str().expect("path"), extra);
        args.extend_from_slice(&["--in", secret]);
        cli(&self.daemon.socket, &args)
    }

    fn file(&self, unit: &str, id: &str) -> PathBuf {
        self.dir.join(unit).join(id)
    }
}

/// The arguments of `credential encrypt` of `unit`'s `id` under `key`
/// into `dir`, then `extra`.
fn encrypt_args<'a>(
    unit: &'a str,
    id: &'a str,
    key: &'a str,
    dir: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "credential",
        "encrypt",
        "--unit",
        unit,
        "--name",
        id,
        "--key",
        key,
        "--dir",
        dir,
    ];
    args.extend_from_slice(extra);
    args
}

/// What is in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn root_encrypts_a_credential_for_a_unit_and_gets_the_lines_to_paste() {
    let s = setup();
    let out = s.encrypt("db.service", "dbpass", "cred", &[]);
    let stdout = ok(out);
    assert!(
        stdout.starts_with("wrote credential dbpass of db.service (key cred, version 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n    LoadCredential=dbpass:/run/hostkms/credentials.sock\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "[[grant]] units = [\"db.service\"], keys = [\"cred\"], ops = [\"credential\"]"
        ),
        "{stdout}"
    );
    // The unit's directory and the file: owned like the credentials
    // directory (the daemon's user reads them), private.
    let unit_dir = fs::symlink_metadata(s.dir.join("db.service")).expect("unit dir");
    assert!(unit_dir.is_dir());
    assert_eq!(unit_dir.mode() & 0o7777, 0o700);
    assert_eq!((unit_dir.uid(), unit_dir.gid()), (DAEMON_USER, DAEMON_USER));
    let path = s.file("db.service", "dbpass");
    let meta = fs::symlink_metadata(&path).expect("credential file");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (DAEMON_USER, DAEMON_USER));
    assert_eq!(
        names(&s.dir.join("db.service")),
        ["dbpass"],
        "no temporary file left"
    );
    // A raw hostkms ciphertext of the key, version 1, with no secret in it.
    let bytes = fs::read(&path).expect("read");
    assert!(!crate::harness::contains(&bytes, b"s3cret"));
    let inspected = ok(cli(
        &s.daemon.socket,
        &["--json", "inspect", "--in", path.to_str().expect("path")],
    ));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).expect("json");
    assert_eq!(inspected["key"], "cred");
    assert_eq!(inspected["version"], 1);
    // Bound to the unit: the main socket refuses the reserved context, and
    // no other context opens it.
    let mut client = s.daemon.client();
    let err = client
        .unwrap(
            &bytes,
            &agent_proto::credential::context("db.service", "dbpass"),
            None,
        )
        .expect_err("the main socket never unwraps a credential");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    let err = client
        .unwrap(&bytes, &agent_proto::EncryptionContext::new(), None)
        .expect_err("not without its context");
    assert_eq!(err.code(), Some(ErrorCode::InvalidCiphertext), "{err}");
}

#[test]
fn re_encrypting_replaces_the_file_with_the_latest_version() {
    let s = setup();
    ok(s.encrypt("db.service", "dbpass", "cred", &[]));
    let first = fs::read(s.file("db.service", "dbpass")).expect("read");
    ok(cli(&s.daemon.socket, &["rotate", "cred"]));
    let out = ok(s.encrypt("db.service", "dbpass", "cred", &["--json"]));
    let done: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(done["replaced"], true, "{done}");
    assert_eq!(done["version"], 2, "{done}");
    assert_eq!(done["unit"], "db.service");
    assert_eq!(done["credential"], "dbpass");
    assert_eq!(done["key"], "cred");
    assert_eq!(
        done["load_credential"],
        "LoadCredential=dbpass:/run/hostkms/credentials.sock"
    );
    assert_eq!(
        done["file"],
        s.file("db.service", "dbpass").display().to_string()
    );
    let second = fs::read(s.file("db.service", "dbpass")).expect("read");
    assert_ne!(first, second);
    assert_eq!(names(&s.dir.join("db.service")), ["dbpass"]);
    let human = ok(s.encrypt("db.service", "dbpass", "cred", &[]));
    assert!(human.starts_with("replaced credential dbpass"), "{human}");
}

#[test]
fn a_service_holding_wrap_may_not_encrypt_credentials() {
    let s = setup();
    let out = s.encrypt_as_service("dbpass");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "uid {SERVICE} may not encrypt credentials: only admins (root and the admin_groups) \
             may, and no grant can allow it; run `hostkms credential encrypt` as root"
        )),
        "{stderr}"
    );
    // No grant is suggested: none could allow it.
    assert!(!stderr.contains("[[grant]]"), "{stderr}");
    assert!(
        names(&s.dir).is_empty(),
        "nothing written: {:?}",
        names(&s.dir)
    );
    // Yet the same uid may wrap with the key: the grant holds, and only
    // credentials are refused.
    let out = cli_as(SERVICE, &s.daemon.socket, &["wrap", "cred"], b"x");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn bad_names_are_refused_by_the_cli_and_by_the_daemon() {
    let s = setup();
    for (unit, id, what) in [
        ("db", "dbpass", "--unit"),
        ("../x.service", "dbpass", "--unit"),
        ("db.service", "a/b", "--name"),
        ("db.service", "..", "--name"),
    ] {
        let out = s.encrypt(unit, id, "cred", &[]);
        assert_eq!(out.status.code(), Some(2), "{unit} {id}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(what), "{stderr}");
    }
    assert!(names(&s.dir).is_empty());
    // The daemon checks them too, for any client.
    let mut client = s.daemon.client();
    for (unit, id) in [
        ("db", "dbpass"),
        ("db.service", "a/b"),
        ("a b.service", "x"),
    ] {
        let err = client
            .wrap_credential("cred", unit, id, b"x")
            .expect_err("a bad name");
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidArgument),
            "{unit} {id}: {err}"
        );
    }
}

#[test]
fn a_signing_key_cannot_encrypt_a_credential() {
    let s = setup();
    let out = s.encrypt("db.service", "dbpass", "signer", &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let error: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("json");
    assert_eq!(error["error"]["code"], "wrong_key_type", "{error}");
    assert!(names(&s.dir).is_empty(), "nothing written");
    let err = s
        .daemon
        .client()
        .wrap_credential("signer", "db.service", "dbpass", b"x")
        .expect_err("a signing key");
    assert!(
        matches!(
            err,
            ClientError::Daemon {
                code: ErrorCode::WrongKeyType,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_empty_secret_is_refused_before_the_daemon_is_asked() {
    let s = setup();
    let out = cli_stdin(
        &s.daemon.socket,
        &encrypt_args("db.service", "dbpass", "cred", s.dir_arg(), &[]),
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("is empty"), "{out:?}");
    assert!(names(&s.dir).is_empty());
    let key = s.daemon.client().describe_key("cred").expect("describe");
    assert_eq!(
        key.versions[0].encryptions, 0,
        "the daemon encrypted nothing"
    );
    // Standard input works like --in: the bytes as they are.
    ok(cli_stdin(
        &s.daemon.socket,
        &encrypt_args("db.service", "dbpass", "cred", s.dir_arg(), &[]),
        SECRET,
    ));
    assert!(s.file("db.service", "dbpass").is_file());
}

#[test]
fn links_in_the_credentials_directory_are_never_followed() {
    let s = setup();
    let elsewhere = s.files.root.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    // A link as the unit's directory.
    std::os::unix::fs::symlink(&elsewhere, s.dir.join("db.service")).expect("symlink");
    let out = s.encrypt("db.service", "dbpass", "cred", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("is not a directory"), "{out:?}");
    assert!(
        names(&elsewhere).is_empty(),
        "nothing written through the link"
    );
    // A link as the credential file.
    fs::create_dir(s.dir.join("web.service")).expect("mkdir");
    let target = elsewhere.join("target");
    fs::write(&target, b"untouched").expect("write");
    std::os::unix::fs::symlink(&target, s.file("web.service", "dbpass")).expect("symlink");
    let out = s.encrypt("web.service", "dbpass", "cred", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("is not a regular file"),
        "{out:?}"
    );
    assert_eq!(fs::read(&target).expect("read"), b"untouched");
    // The credentials directory itself as a link.
    let link = s.files.root.path().join("linked");
    std::os::unix::fs::symlink(&s.dir, &link).expect("symlink");
    let out = s.encrypt_into(&link, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!s.dir.join("x.service").exists());
}

#[test]
fn a_missing_directory_says_how_to_make_it() {
    let s = setup();
    let missing = s.files.root.path().join("nope");
    let out = s.encrypt_into(&missing, &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let error: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("json");
    assert_eq!(error["error"]["code"], "credential_dir");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!(
            "install -d -m 0700 -o hostkms -g hostkms {}",
            missing.display()
        )),
        "{message}"
    );
    assert!(!missing.exists());
    let out = cli(
        &s.daemon.socket,
        &[
            "credential",
            "list",
            "--dir",
            missing.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("install -d -m 0700"), "{out:?}");
    // A directory only root may open: said so, to a user who is not.
    let private = s.files.root.path().join("private");
    fs::create_dir(&private).expect("mkdir");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = cli_as(
        SERVICE,
        &s.daemon.socket,
        &[
            "credential",
            "list",
            "--dir",
            private.to_str().expect("path"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr)
            .contains("permission denied (it is the daemon's, mode 0700); run this as root"),
        "{out:?}"
    );
}

/// unit, id, key, version, and whether it has no problem.
type Row = (String, String, Option<String>, Option<u64>, bool);

#[test]
fn list_shows_what_is_stored_and_odd_files_as_such() {
    let s = setup();
    ok(s.encrypt("db.service", "dbpass", "cred", &[]));
    ok(s.encrypt("web.service", "tls.key", "cred", &[]));
    fs::write(s.dir.join("web.service").join("notes"), b"not a ciphertext").expect("write");
    let out = ok(cli(
        &s.daemon.socket,
        &["--json", "credential", "list", "--dir", s.dir_arg()],
    ));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let rows: Vec<Row> = listed
        .iter()
        .map(|row| {
            (
                row["unit"].as_str().expect("unit").to_string(),
                row["credential"].as_str().expect("id").to_string(),
                row["key"].as_str().map(str::to_string),
                row["version"].as_u64(),
                row["problem"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "db.service".into(),
                "dbpass".into(),
                Some("cred".into()),
                Some(1),
                true
            ),
            ("web.service".into(), "notes".into(), None, None, false),
            (
                "web.service".into(),
                "tls.key".into(),
                Some("cred".into()),
                Some(1),
                true
            ),
        ]
    );
    let size = fs::metadata(s.file("db.service", "dbpass"))
        .expect("stat")
        .len();
    assert_eq!(listed[0]["size"], size);
    assert!(listed[0]["modified"].as_str().expect("time").ends_with('Z'));
    assert!(
        listed[1]["problem"]
            .as_str()
            .expect("problem")
            .starts_with("not a hostkms ciphertext"),
        "{}",
        listed[1]
    );
    let human = ok(cli(
        &s.daemon.socket,
        &[
            "credential",
            "list",
            "--unit",
            "db.service",
            "--dir",
            s.dir_arg(),
        ],
    ));
    let mut lines = human.lines();
    assert!(
        lines
            .next()
            .is_some_and(|note| note.starts_with('#') && note.contains("do not prove")),
        "{human}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{human}");
    assert!(rows[0].starts_with("db.service"), "{human}");
    assert!(
        human.contains("dbpass") && human.contains("key cred v1"),
        "{human}"
    );
}

#[test]
fn encrypting_a_credential_is_audited_with_its_unit_and_id() {
    ensure_journald();
    let s = setup_with(&[("HOSTKMS_LOG_TARGET", "journal")]);
    let journal = s.daemon.journal_scope();
    ok(s.encrypt("db.service", "dbpass", "cred", &[]));
    let out = s.encrypt_as_service("other");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A reserved context on the main socket: refused and audited.
    let out = cli_stdin(
        &s.daemon.socket,
        &["wrap", "cred", "--context", "hostkms.unit=db.service"],
        b"x",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let Setup { daemon, .. } = s;
    let _ = daemon.stop();
    let entries = journal_of_stopped(&journal);
    let credential: Vec<_> = entries
        .iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("credential"))
        .collect();
    assert_eq!(credential.len(), 2, "{credential:#?}");
    let done = credential[0];
    assert_eq!(field(done, "HOSTKMS_RESULT"), Some("ok"), "{done}");
    assert_eq!(field(done, "HOSTKMS_KEY"), Some("cred"));
    assert_eq!(field(done, "HOSTKMS_KEY_VERSION"), Some("1"));
    assert_eq!(field(done, "HOSTKMS_CREDENTIAL_UNIT"), Some("db.service"));
    assert_eq!(field(done, "HOSTKMS_CREDENTIAL"), Some("dbpass"));
    assert_eq!(field(done, "HOSTKMS_PEER_UID"), Some("0"));
    assert!(
        field(done, "MESSAGE").is_some_and(
            |m| m.contains("for credential dbpass of db.service") && m.ends_with(": ok")
        ),
        "{done}"
    );
    let refused = credential[1];
    assert_eq!(
        field(refused, "HOSTKMS_RESULT"),
        Some("denied"),
        "{refused}"
    );
    assert_eq!(
        field(refused, "HOSTKMS_CREDENTIAL_UNIT"),
        Some("db.service")
    );
    assert_eq!(field(refused, "HOSTKMS_CREDENTIAL"), Some("other"));
    assert_eq!(
        field(refused, "HOSTKMS_PEER_UID"),
        Some(SERVICE.to_string().as_str())
    );
    let reserved: Vec<_> = entries
        .iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("wrap"))
        .collect();
    assert_eq!(reserved.len(), 1, "{reserved:#?}");
    assert_eq!(
        field(reserved[0], "HOSTKMS_ERROR"),
        Some("invalid-argument"),
        "{}",
        reserved[0]
    );
    // The secret is in no event.
    let export = crate::harness::journal_export_of(&journal);
    assert!(!crate::harness::contains(&export, b"s3cret"));
}

/// Runs `credential encrypt` on a terminal (`script` gives it a pty),
/// typing `lines` one by one after a pause, so each arrives once the
/// prompt has turned echo off; returns the exit status and the
/// terminal's transcript.
fn on_a_terminal(s: &Setup, id: &str, lines: &[&str]) -> (Option<i32>, String) {
    let command = format!(
        "{} --socket {} credential encrypt --unit tty.service --name {id} --key cred --dir {}",
        crate::harness::hostkms().display(),
        s.daemon.socket.display(),
        s.dir.display()
    );
    let typed: String = lines
        .iter()
        .map(|line| format!("sleep 0.5; printf '%s\\n' '{line}'; "))
        .collect();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("({typed} sleep 1) | script -qec \"$0\" /dev/null",))
        .arg(&command)
        .output()
        .expect("run script");
    (out.status.code(), text(&out.stdout))
}

#[test]
fn on_a_terminal_the_secret_is_asked_twice_without_echo() {
    let s = setup();
    let (code, transcript) = on_a_terminal(&s, "pw", &["typed secret", "typed secret"]);
    assert_eq!(code, Some(0), "{transcript}");
    assert!(
        transcript.contains("Secret for credential pw of tty.service: ")
            && transcript.contains("Again: "),
        "{transcript}"
    );
    assert!(!transcript.contains("typed secret"), "echoed: {transcript}");
    // The typed line without its newline.
    let bytes = fs::read(s.file("tty.service", "pw")).expect("written");
    assert_eq!(
        bytes.len(),
        agent_proto::ciphertext::OVERHEAD + "typed secret".len()
    );
    let (code, transcript) = on_a_terminal(&s, "other", &["one", "two"]);
    assert_eq!(code, Some(2), "{transcript}");
    assert!(
        transcript.contains("the two secrets typed differ"),
        "{transcript}"
    );
    assert!(!s.file("tty.service", "other").exists());
    let (code, transcript) = on_a_terminal(&s, "empty", &["", ""]);
    assert_eq!(code, Some(2), "{transcript}");
    assert!(transcript.contains("is empty"), "{transcript}");
}

#[test]
fn list_flags_the_leftover_of_an_interrupted_encrypt() {
    let s = setup();
    ok(s.encrypt("db.service", "pw", "cred", &[]));
    // What an encrypt of an older version, killed before its rename, left.
    fs::copy(
        s.file("db.service", "pw"),
        s.file("db.service", ".pw.hostkms-new-9789"),
    )
    .expect("copy");
    let out = ok(cli(
        &s.daemon.socket,
        &["--json", "credential", "list", "--dir", s.dir_arg()],
    ));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.len(), 2, "{out}");
    assert_eq!(listed[0]["credential"], ".pw.hostkms-new-9789", "{out}");
    let problem = listed[0]["problem"].as_str().unwrap_or_default();
    assert!(
        problem.starts_with("leftover of an interrupted encrypt (safe to delete"),
        "{out}"
    );
    assert!(listed[1]["problem"].is_null(), "{out}");
    assert_eq!(listed[1]["key"], "cred", "{out}");
}

#[test]
fn a_template_unit_is_refused_with_its_instances_named() {
    let s = setup();
    let out = s.encrypt("getty@.service", "pw", "cred", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr.contains("template") && stderr.contains("getty@NAME.service"),
        "{stderr}"
    );
    assert!(names(&s.dir).is_empty());
    // An instance is a unit like any other.
    ok(s.encrypt("getty@tty1.service", "pw", "cred", &[]));
}

/// The pid of the child of `pid` (strace) that runs the CLI, once it does:
/// strace may fork other children first.
fn child_of(pid: u32) -> u32 {
    for _ in 0..2400 {
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            // Its program, not its arguments: a fork of strace has the
            // same arguments before it execs, or exits.
            if fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|exe| exe == hostkms()) {
                return child.parse().expect("pid");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("strace started no credential encrypt");
}

#[test]
fn a_killed_encrypt_leaves_no_file_behind() {
    let s = setup();
    ok(s.encrypt("db.service", "pw", "cred", &[]));
    let before = fs::read(s.file("db.service", "pw")).expect("read");
    // strace holds every fsync 10 s: the kill lands after the new file was
    // written, before it is renamed into place.
    let mut args = vec![
        "-f".to_string(),
        "-o".to_string(),
        "/dev/null".to_string(),
        "-e".to_string(),
        "inject=fsync:delay_enter=10000000".to_string(),
        hostkms().display().to_string(),
        "--socket".to_string(),
        s.daemon.socket.display().to_string(),
    ];
    let secret = s.secret.display().to_string();
    args.extend(
        encrypt_args("db.service", "pw", "cred", s.dir_arg(), &["--in", &secret])
            .into_iter()
            .map(str::to_string),
    );
    let mut strace = std::process::Command::new("strace")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace must be installed");
    let victim = child_of(strace.id());
    // Once it holds the new file open (named or not), it is about to sync it.
    let unit_dir = format!("{}/", s.dir.join("db.service").display());
    let holds_new_file = || {
        fs::read_dir(format!("/proc/{victim}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|target| target.to_string_lossy().starts_with(&unit_dir))
    };
    let mut waited = 0;
    while !holds_new_file() {
        // Up to a minute: a debug binary under strace starts slowly on a
        // loaded machine.
        assert!(
            waited < 2400,
            "the encrypt (pid {victim}) never opened its new file in {unit_dir}: {:?}",
            fs::read_dir(format!("/proc/{victim}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| fs::read_link(fd.path()).ok())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
        waited += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    let _ = strace.wait();
    assert_eq!(names(&s.dir.join("db.service")), ["pw"]);
    assert_eq!(fs::read(s.file("db.service", "pw")).expect("read"), before);
}
