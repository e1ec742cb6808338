//! Files of any size in the age format (issue 13): `hostkms encrypt-file`
//! and `decrypt-file` against the real daemon, the real `age` CLI through
//! `age-plugin-hostkms` both ways, a 1 GiB round trip in constant memory,
//! and every way a file can be damaged or refused: each fails with a clear
//! message and leaves nothing at `--out` (and no temporary file).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, cli, cli_as, contains,
    ensure_journald, field, hostkms, journal_export_of, journal_of_stopped, ok, private_tempdir,
    stderr, text,
};

/// The uid (and gid) of a peer without an unwrap grant: nobody.
const NOBODY: u32 = 65534;

/// The plaintext size of one age STREAM chunk.
const CHUNK: usize = 64 * 1024;

/// Its ciphertext size: the chunk and its Poly1305 tag.
const SEALED_CHUNK: usize = CHUNK + 16;

/// A daemon with key `files`, and a directory (mode 0755) for the files.
struct Setup {
    harness: Harness,
    dir: PathBuf,
}

fn setup() -> Setup {
    let harness = Harness::start(DaemonConfig::new());
    ok(cli(&harness.daemon.socket, &["create-key", "files"]));
    let dir = harness.files.root.path().join("files");
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    Setup { harness, dir }
}

impl Setup {
    fn socket(&self) -> &Path {
        &self.harness.daemon.socket
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `hostkms ARGS` against the daemon.
    fn cli(&self, args: &[&str]) -> Output {
        cli(self.socket(), args)
    }

    /// Writes `plaintext` to `name` and encrypts it to `name.age` with
    /// `context`; returns the age file's path.
    fn encrypt(&self, name: &str, plaintext: &[u8], context: &[&str]) -> PathBuf {
        let input = self.path(name);
        fs::write(&input, plaintext).expect("write the plaintext");
        let sealed = self.path(&format!("{name}.age"));
        let mut args = encrypt_args("files", &input, &sealed);
        for pair in context {
            args.extend(["--context", pair]);
        }
        ok(self.cli(&args));
        sealed
    }

    /// `hostkms decrypt-file --in sealed --out out` with `extra` arguments.
    fn decrypt(&self, sealed: &Path, out: &Path, extra: &[&str]) -> Output {
        let mut args = decrypt_args(sealed, out);
        args.extend(extra);
        self.cli(&args)
    }

    /// The names in the directory: to see that no temporary file is left.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs the real `age` CLI, with `age-plugin-hostkms` (built next to
    /// `hostkms`) on its PATH and the daemon's socket in HOSTKMS_SOCKET.
    fn age(&self, args: &[&str]) -> Output {
        age_command(self.socket(), args)
            .output()
            .expect("age must be installed (scripts/install-deps.sh installs it)")
    }

    /// Runs `hostkms ARGS` against the daemon: whether it succeeded, its
    /// peak RSS in KiB and how long it took.
    fn measure(&self, args: &[&str]) -> (bool, i64, std::time::Duration) {
        let started = Instant::now();
        let mut command = Command::new(hostkms());
        command.arg("--socket").arg(self.socket()).args(args);
        let (success, rss) = run_measuring_rss(command);
        (success, rss, started.elapsed())
    }

    /// An identity file from `hostkms age-identity`.
    fn identity_file(&self) -> PathBuf {
        let identity = self.path("identity.txt");
        fs::write(&identity, ok(self.cli(&["age-identity"]))).expect("write identity");
        identity
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The real `age` CLI with `args`, `age-plugin-hostkms` (built next to
/// `hostkms`) on its PATH and `socket` in HOSTKMS_SOCKET.
fn age_command(socket: &Path, args: &[&str]) -> Command {
    let bin = hostkms().parent().expect("target dir");
    assert!(
        bin.join("age-plugin-hostkms").is_file(),
        "age-plugin-hostkms is not built: run `cargo build --workspace --bins`"
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("age");
    command
        .args(args)
        .env("PATH", path)
        .env("HOSTKMS_SOCKET", socket)
        .stdin(Stdio::null());
    command
}

/// `encrypt-file KEY --in INPUT --out OUT`.
fn encrypt_args<'a>(key: &'a str, input: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec!["encrypt-file", key, "--in", s(input), "--out", s(out)]
}

/// `decrypt-file --in INPUT --out OUT`.
fn decrypt_args<'a>(input: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec!["decrypt-file", "--in", s(input), "--out", s(out)]
}

/// Deterministic bytes that are not all alike.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Where age's STREAM payload starts: after the header's `--- MAC` line
/// and the 16-byte nonce.
fn payload_start(sealed: &[u8]) -> usize {
    let mac = sealed
        .windows(4)
        .position(|w| w == b"\n---")
        .expect("an age header");
    let end = mac
        + 1
        + sealed[mac + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("eol");
    end + 1 + 16
}

/// Where `needle` first is in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("found")
}

/// `bytes` with the base64 character at `at` (in the header) replaced by
/// another one.
fn other_base64(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] = if out[at] == b'A' { b'B' } else { b'A' };
    out
}

#[test]
fn files_round_trip_and_the_context_is_recorded() {
    let setup = setup();
    let plaintext = pattern(3 * CHUNK + 100);
    let sealed = setup.encrypt("data", &plaintext, &["app=backup", "host=db1"]);
    let header = fs::read(&sealed).expect("read");
    assert!(header.starts_with(b"age-encryption.org/v1\n-> hostkms "));
    assert!(!contains(&header, &plaintext[..64]));

    // Without --context, the recorded one; with it, exactly it.
    let out = setup.path("plain");
    let output = setup.decrypt(&sealed, &out, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&ok(output)).expect("json");
    assert_eq!(report["key"], "files");
    assert_eq!(report["version"], 1);
    assert_eq!(report["bytes"], plaintext.len());
    assert_eq!(report["context"]["host"], "db1");
    assert_eq!(fs::read(&out).expect("read"), plaintext);
    assert_eq!(
        fs::metadata(&out).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    fs::remove_file(&out).expect("rm");
    ok(setup.decrypt(
        &sealed,
        &out,
        &["--context", "host=db1", "--context", "app=backup"],
    ));
    assert_eq!(fs::read(&out).expect("read"), plaintext);

    // An existing --out is replaced only with --force.
    let again = setup.decrypt(&sealed, &out, &[]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    ok(setup.decrypt(&sealed, &out, &["--force"]));

    // Standard input to standard output.
    let mut child = Command::new(hostkms())
        .args(["--socket", s(setup.socket()), "decrypt-file"])
        .stdin(fs::File::open(&sealed).expect("open"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut piped = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut piped)
        .expect("read");
    assert!(child.wait().expect("wait").success());
    assert_eq!(piped, plaintext);

    // --json needs --out: standard output carries the file.
    let output = setup.cli(&["--json", "decrypt-file", "--in", s(&sealed)]);
    assert_eq!(output.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["error"]["code"], "usage", "{report}");

    // An empty file round-trips too.
    let empty = setup.encrypt("empty", b"", &[]);
    let out = setup.path("empty.out");
    ok(setup.decrypt(&empty, &out, &[]));
    assert_eq!(fs::read(&out).expect("read"), b"");
}

#[test]
fn a_wrong_context_is_refused_before_the_daemon_is_asked() {
    let setup = setup();
    let sealed = setup.encrypt("data", &pattern(1000), &["app=backup", "host=db1"]);
    let before = setup.names();
    let out = setup.path("plain");
    for wrong in [
        &["--context", "app=backup"][..],
        &["--context", "app=backup", "--context", "host=db2"],
        &[
            "--context",
            "app=backup",
            "--context",
            "host=db1",
            "--context",
            "x=y",
        ],
    ] {
        let output = setup.decrypt(&sealed, &out, wrong);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains("was encrypted with the context {app=backup, host=db1}"),
            "{err}"
        );
        assert_eq!(setup.names(), before, "{err}");
    }
    let output = setup.decrypt(&sealed, &out, &["--json", "--context", "app=other"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["error"]["code"], "context_mismatch");
}

#[test]
fn damaged_files_fail_clearly_and_leave_nothing_at_out() {
    let setup = setup();
    // Five chunks: the last one short.
    let plaintext = pattern(4 * CHUNK + 1000);
    let sealed_path = setup.encrypt("data", &plaintext, &["app=backup"]);
    let sealed = fs::read(&sealed_path).expect("read");
    let start = payload_start(&sealed);
    assert_eq!(sealed.len() - start, 4 * SEALED_CHUNK + 1000 + 16);

    let flip = |at: usize| {
        let mut bytes = sealed.clone();
        bytes[at] ^= 0x01;
        bytes
    };
    let mut swapped = sealed.clone();
    let (first, second) = (start + SEALED_CHUNK, start + 2 * SEALED_CHUNK);
    let chunk2 = sealed[first..second].to_vec();
    let chunk3 = sealed[second..second + SEALED_CHUNK].to_vec();
    swapped[first..second].copy_from_slice(&chunk3);
    swapped[second..second + SEALED_CHUNK].copy_from_slice(&chunk2);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated mid-chunk",
            sealed[..sealed.len() - 100].to_vec(),
            "does not authenticate",
        ),
        (
            "truncated at a chunk boundary",
            sealed[..start + 4 * SEALED_CHUNK].to_vec(),
            "truncated",
        ),
        (
            "first chunk flipped",
            flip(start + 10),
            "chunk 1 of the payload",
        ),
        (
            "middle chunk flipped",
            flip(start + 2 * SEALED_CHUNK + 500),
            "chunk 3 of the payload",
        ),
        (
            "last chunk flipped",
            flip(sealed.len() - 3),
            "chunk 5 of the payload",
        ),
        ("chunks 2 and 3 swapped", swapped, "chunk 2 of the payload"),
        (
            "header MAC altered",
            other_base64(&sealed, find(&sealed, b"\n--- ") + 8),
            "MAC",
        ),
        (
            "stanza body altered",
            other_base64(&sealed, {
                let line = find(&sealed, b"-> hostkms ");
                line + find(&sealed[line..], b"\n") + 6
            }),
            "invalid",
        ),
        ("nonce flipped", flip(start - 5), "chunk 1 of the payload"),
    ];
    let out = setup.path("plain");
    for (what, bytes, says) in cases {
        let damaged = setup.path("damaged.age");
        fs::write(&damaged, &bytes).expect("write");
        let before = setup.names();
        let output = setup.decrypt(&damaged, &out, &[]);
        let err = stderr(&output);
        assert_ne!(output.status.code(), Some(0), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
        assert!(!out.exists(), "{what}: something at --out");
        assert_eq!(setup.names(), before, "{what}: a file left behind");
    }

    // To standard output: a partial output and a non-zero exit.
    let damaged = setup.path("damaged.age");
    fs::write(&damaged, flip(sealed.len() - 3)).expect("write");
    let output = setup.cli(&["decrypt-file", "--in", s(&damaged)]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(output.stdout, plaintext[..4 * CHUNK]);
}

#[test]
fn what_is_not_a_hostkms_age_file_is_told_as_such() {
    let setup = setup();
    let out = setup.path("plain");
    let junk = setup.path("junk");
    fs::write(&junk, b"hello, this is not age\n").expect("write");
    let output = setup.decrypt(&junk, &out, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["error"]["code"], "not_age_file", "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not an age file"))
    );
    assert_eq!(output.status.code(), Some(2));

    // An age file made for an X25519 key has no hostkms stanza.
    let keygen = Command::new("age-keygen").output().expect("age-keygen");
    let keys = text(&keygen.stdout);
    let recipient = keys
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key")
        .to_string();
    let other = setup.path("other.age");
    let input = setup.path("input");
    fs::write(&input, b"secret").expect("write");
    let age = setup.age(&["-r", &recipient, "-o", s(&other), s(&input)]);
    assert!(age.status.success(), "{}", stderr(&age));
    let output = setup.decrypt(&other, &out, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("has no hostkms stanza"), "{err}");
    assert!(!out.exists());
}

#[test]
fn the_age_cli_decrypts_what_encrypt_file_made_and_the_other_way_round() {
    let setup = setup();
    let plaintext = pattern(2 * CHUNK + 5);
    let sealed = setup.encrypt("data", &plaintext, &["app=backup"]);
    let identity = setup.identity_file();
    let id_text = fs::read_to_string(&identity).expect("read");
    assert!(id_text.starts_with("# "), "{id_text}");
    assert!(id_text.contains("AGE-PLUGIN-HOSTKMS-1"), "{id_text}");
    let out = setup.path("by-age");
    let age = setup.age(&["-d", "-i", s(&identity), "-o", s(&out), s(&sealed)]);
    assert!(age.status.success(), "age -d: {}", stderr(&age));
    assert_eq!(fs::read(&out).expect("read"), plaintext);

    // age -r age1hostkms1... encrypts through the daemon.
    let recipient = text(&ok(setup.cli(&[
        "age-recipient",
        "files",
        "--context",
        "app=from-age",
    ])));
    let recipient = recipient.trim();
    assert!(recipient.starts_with("age1hostkms1"), "{recipient}");
    let by_age = setup.path("by-age.age");
    let input = setup.path("data");
    let age = setup.age(&["-r", recipient, "-o", s(&by_age), s(&input)]);
    assert!(age.status.success(), "age -r: {}", stderr(&age));
    let out = setup.path("by-hostkms");
    ok(setup.decrypt(&by_age, &out, &["--context", "app=from-age"]));
    assert_eq!(fs::read(&out).expect("read"), plaintext);
    // ASCII-armored too (age -a).
    let armored = setup.path("by-age.age.asc");
    let age = setup.age(&["-a", "-r", recipient, "-o", s(&armored), s(&input)]);
    assert!(age.status.success(), "age -a -r: {}", stderr(&age));
    let out = setup.path("from-armor");
    ok(setup.decrypt(&armored, &out, &[]));
    assert_eq!(fs::read(&out).expect("read"), plaintext);
    let output = setup.decrypt(&by_age, &setup.path("x"), &["--context", "app=backup"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));

    // A refusal reaches age as a plugin error with the daemon's message.
    ok(setup.cli(&["revoke", "files", "--version", "1"]));
    let age = setup.age(&["-d", "-i", s(&identity), s(&sealed)]);
    let err = stderr(&age);
    assert!(!age.status.success(), "{err}");
    assert!(err.contains("revoked"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn rotation_keeps_old_files_and_revoking_their_version_ends_them() {
    let setup = setup();
    let plaintext = pattern(CHUNK + 1);
    let old = setup.encrypt("old", &plaintext, &[]);
    ok(setup.cli(&["rotate", "files"]));
    let new = setup.encrypt("new", &plaintext, &[]);
    let out = setup.path("plain");
    let report: serde_json::Value =
        serde_json::from_slice(&ok(setup.decrypt(&old, &out, &["--json"]))).expect("json");
    assert_eq!(report["version"], 1);
    fs::remove_file(&out).expect("rm");

    ok(setup.cli(&["revoke", "files", "--version", "1"]));
    let output = setup.decrypt(&old, &out, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("revoked"), "{err}");
    assert!(!out.exists());
    let report: serde_json::Value =
        serde_json::from_slice(&ok(setup.decrypt(&new, &out, &["--json"]))).expect("json");
    assert_eq!(report["version"], 2);
    assert_eq!(fs::read(&out).expect("read"), plaintext);

    // Revoking the whole key ends every file, and new ones.
    ok(setup.cli(&["revoke", "files", "--yes"]));
    let output = setup.decrypt(&new, &out, &["--force"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("revoked"), "{err}");
    let output = setup.cli(&encrypt_args("files", &new, &setup.path("newer.age")));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(!setup.path("newer.age").exists());
}

#[test]
fn a_peer_without_an_unwrap_grant_is_refused_with_the_grant_to_ask_for() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(Grant::to_uid(NOBODY).keys(&["files"]).ops(&["wrap"]));
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "files"]));
    let dir = tempfile::Builder::new()
        .prefix("hostkms-age-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let input = dir.path().join("data");
    fs::write(&input, pattern(1000)).expect("write");
    fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).expect("chmod");
    let sealed = dir.path().join("data.age");
    // nobody may wrap, so it encrypts; but it may not decrypt.
    let output = cli_as(NOBODY, socket, &encrypt_args("files", &input, &sealed), b"");
    assert!(output.status.success(), "{}", stderr(&output));
    let out = dir.path().join("plain");
    let output = cli_as(NOBODY, socket, &decrypt_args(&sealed, &out), b"");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        err.contains(&format!("uids = [{NOBODY}]")) && err.contains("ops = [\"unwrap\"]"),
        "{err}"
    );
    assert!(!out.exists());
    // Through age and the plugin: age's error carries the daemon's.
    let identity = dir.path().join("identity.txt");
    fs::write(&identity, ok(cli(socket, &["age-identity"]))).expect("write");
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o644)).expect("chmod");
    let age = {
        use std::os::unix::process::CommandExt;
        age_command(socket, &["-d", "-i", s(&identity), s(&sealed)])
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run age as nobody")
    };
    let err = stderr(&age);
    assert!(!age.status.success(), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("ops = [\"unwrap\"]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(age.stdout.is_empty());
    // Root (an admin) decrypts it.
    ok(cli(socket, &decrypt_args(&sealed, &out)));
    // A key nobody may not wrap with: the grant named for that key.
    ok(cli(socket, &["create-key", "other"]));
    let mut args = encrypt_args("other", &input, &sealed);
    args.push("--force");
    let output = cli_as(NOBODY, socket, &args, b"");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("keys = [\"other\"], ops = [\"wrap\"]"),
        "{err}"
    );
}

#[test]
fn an_unreachable_daemon_is_told_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nothing.sock");
    let input = dir.path().join("data");
    fs::write(&input, b"x").expect("write");
    let out = dir.path().join("data.age");
    let output = cli(&socket, &encrypt_args("k", &input, &out));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot connect to hostkms"), "{err}");
    assert!(!out.exists());
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
}

/// Runs `command` with standard output and error discarded; returns
/// whether it succeeded and its peak resident set size in KiB (the
/// child's own `ru_maxrss`, from `wait4`).
fn run_measuring_rss(mut command: Command) -> (bool, i64) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (Child::wait is never
    // called on it); `status` and `usage` are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (success, usage.ru_maxrss)
}

/// SHA-256 of a file, read in chunks.
fn sha256_file(path: &Path) -> Vec<u8> {
    let mut file = fs::File::open(path).expect("open");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_vec()
}

#[test]
fn a_gib_round_trips_with_the_cli_under_32_mib() {
    const GIB: u64 = 1 << 30;
    const LIMIT_KIB: i64 = 32 * 1024;
    let setup = setup();
    // A sparse file with data at its start, middle and end.
    let input = setup.path("big");
    let mut file = fs::File::create(&input).expect("create");
    file.set_len(GIB).expect("set_len");
    for at in [0, GIB / 2 - 7, GIB - 4096] {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(at)).expect("seek");
        file.write_all(&pattern(4096)).expect("write");
    }
    drop(file);
    let sealed = setup.path("big.age");
    let out = setup.path("big.out");

    let (encrypted, encrypt_rss, encrypt_time) =
        setup.measure(&encrypt_args("files", &input, &sealed));
    assert!(encrypted, "encrypt-file failed");
    // A whole number of full chunks, the last of them marked last.
    let mut head = vec![0u8; 4096];
    fs::File::open(&sealed)
        .and_then(|mut f| f.read_exact(&mut head))
        .expect("read");
    let payload = fs::metadata(&sealed).expect("stat").len() as usize - payload_start(&head);
    assert_eq!(payload, (GIB as usize / CHUNK) * SEALED_CHUNK);

    let (decrypted, decrypt_rss, decrypt_time) = setup.measure(&decrypt_args(&sealed, &out));
    assert!(decrypted, "decrypt-file failed");
    fs::remove_file(&sealed).expect("rm");
    assert_eq!(fs::metadata(&out).expect("stat").len(), GIB);
    assert_eq!(
        sha256_file(&out),
        sha256_file(&input),
        "the round trip changed the file"
    );
    fs::remove_file(&out).expect("rm");
    fs::remove_file(&input).expect("rm");
    eprintln!(
        "1 GiB: encrypt-file {encrypt_time:?} (peak RSS {encrypt_rss} KiB), decrypt-file \
         {decrypt_time:?} (peak RSS {decrypt_rss} KiB)"
    );
    assert!(
        encrypt_rss < LIMIT_KIB,
        "encrypt-file peak RSS {encrypt_rss} KiB"
    );
    assert!(
        decrypt_rss < LIMIT_KIB,
        "decrypt-file peak RSS {decrypt_rss} KiB"
    );
}

#[test]
fn each_file_is_one_wrap_and_one_unwrap_event_and_its_data_is_never_logged() {
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")])
        .expect("start hostkmsd");
    let journal = daemon.journal_scope();
    let socket = &daemon.socket;
    ok(cli(socket, &["create-key", "files"]));
    let dir = private_tempdir();
    // Five chunks of a marker the journal must never show.
    let marker = b"AGE PAYLOAD NEVER LOGGED ";
    let plaintext: Vec<u8> = marker.iter().copied().cycle().take(5 * CHUNK).collect();
    let input = dir.path().join("data");
    fs::write(&input, &plaintext).expect("write");
    let sealed = dir.path().join("data.age");
    let out = dir.path().join("plain");
    ok(cli(socket, &encrypt_args("files", &input, &sealed)));
    ok(cli(socket, &decrypt_args(&sealed, &out)));
    assert_eq!(fs::read(&out).expect("read"), plaintext);

    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let ops: Vec<&str> = entries
        .iter()
        .filter(|e| field(e, "HOSTKMS_KEY") == Some("files"))
        .filter_map(|e| field(e, "HOSTKMS_OP"))
        .collect();
    assert_eq!(ops, ["create", "wrap", "unwrap"], "{entries:#?}");
    let export = journal_export_of(&journal);
    assert!(
        !contains(&export, marker),
        "the payload reached the journal"
    );
}

/// An age header of `lines` full body lines in one X25519 stanza, its MAC
/// line and a few payload bytes.
fn long_header(lines: usize) -> Vec<u8> {
    let mut file = b"age-encryption.org/v1\n-> X25519 ".to_vec();
    file.extend_from_slice(&[b'A'; 43]);
    file.push(b'\n');
    for _ in 0..lines {
        file.extend_from_slice(&[b'A'; 64]);
        file.push(b'\n');
    }
    file.extend_from_slice(b"AAAA\n--- ");
    file.extend_from_slice(&[b'A'; 43]);
    file.push(b'\n');
    file.extend_from_slice(&[0u8; 64]);
    file
}

#[test]
fn an_age_header_over_64_kib_is_refused_before_it_is_parsed() {
    let setup = setup();
    let out = setup.path("plain");
    let long_line = [
        b"age-encryption.org/v1\n-> ".as_slice(),
        &vec![b'A'; 4 << 20],
        b"\n",
    ]
    .concat();
    for (name, bytes) in [("many-lines", long_header(2000)), ("one-line", long_line)] {
        let input = setup.path(name);
        fs::write(&input, &bytes).expect("write");
        let started = Instant::now();
        let output = setup.decrypt(&input, &out, &["--json"]);
        let took = started.elapsed();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(report["error"]["code"], "not_age_file", "{name}: {report}");
        let message = report["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("the age header is larger than 64 KiB"),
            "{name}: {report}"
        );
        assert!(took.as_secs() < 5, "{name}: took {took:?}");
        assert!(!out.exists());
    }
    // A header just under the bound is age's to judge: no hostkms stanza.
    let input = setup.path("under");
    fs::write(&input, long_header(900)).expect("write");
    let output = setup.decrypt(&input, &out, &[]);
    let err = stderr(&output);
    assert!(err.contains("has no hostkms stanza"), "{err}");
}

#[test]
fn a_passphrase_stanza_mixed_with_others_is_told_as_such() {
    let setup = setup();
    let sealed = fs::read(setup.encrypt("data", b"secret", &[])).expect("read");
    let first_line = find(&sealed, b"\n") + 1;
    let scrypt = [
        b"-> scrypt ".as_slice(),
        &[b'A'; 22],
        b" 10\n",
        &[b'A'; 43],
        b"\n",
    ]
    .concat();
    let mixed = [&sealed[..first_line], &scrypt, &sealed[first_line..]].concat();
    let input = setup.path("mixed.age");
    fs::write(&input, mixed).expect("write");
    let out = setup.path("plain");
    let output = setup.decrypt(&input, &out, &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("mixes a passphrase (scrypt) stanza with others"),
        "{err}"
    );
    assert!(
        !err.contains("does not start with an age v1 header"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn decrypt_file_key_insists_on_the_files_key() {
    let setup = setup();
    ok(setup.cli(&["create-key", "other"]));
    let sealed = setup.encrypt("data", b"secret", &["db=orders"]);
    let out = setup.path("plain");
    let output = setup.decrypt(&sealed, &out, &["--key", "other", "--context", "db=orders"]);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains("the file's key is not other"), "{err}");
    assert!(!out.exists());
    assert_eq!(setup.names(), ["data", "data.age"]);
    ok(setup.decrypt(&sealed, &out, &["--key", "files", "--context", "db=orders"]));
    assert_eq!(fs::read(&out).expect("read"), b"secret");
}

#[test]
fn a_killed_decrypt_file_leaves_no_plaintext_behind() {
    let setup = setup();
    let sealed = fs::read(setup.encrypt("data", &pattern(64 * CHUNK), &[])).expect("read");
    let out = setup.path("k9.out");
    let mut child = Command::new(hostkms())
        .arg("--socket")
        .arg(setup.socket())
        .args(["decrypt-file", "--out", s(&out)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hostkms");
    let mut stdin = child.stdin.take().expect("stdin");
    // Half the file, and the input stays open: decrypt-file waits for more.
    stdin.write_all(&sealed[..sealed.len() / 2]).expect("write");
    stdin.flush().expect("flush");
    let pid = child.id();
    let dir = format!("{}/", setup.dir.display());
    let mut waited = 0;
    loop {
        // Its output file open (named or not) and half the plaintext in it.
        let written = fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fd| {
                fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with(&dir))
            })
            .filter_map(|fd| fs::metadata(fd.path()).ok())
            .any(|meta| meta.len() >= 16 * CHUNK as u64);
        if written {
            break;
        }
        assert!(waited < 600, "decrypt-file never wrote its output");
        std::thread::sleep(std::time::Duration::from_millis(25));
        waited += 1;
    }
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    let _ = child.wait();
    drop(stdin);
    assert_eq!(setup.names(), ["data", "data.age"]);
}
