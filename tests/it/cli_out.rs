//! `--out FILE` as root, in a directory another user controls: the CLI
//! never writes through what is already at FILE. A link there is replaced,
//! not followed; a file another user made is replaced by a new one of the
//! caller's; a FIFO or a device is refused, and nothing is written to it.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, cli, cli_stdin, ok, stderr,
};

/// The uid (and gid) of the other user: nobody.
const OTHER: u32 = 65534;

const PLAINTEXT: &[u8] = b"DATA KEY BYTES";

/// A daemon with key app-db, a ciphertext of [`PLAINTEXT`] under it in a
/// file, and a directory owned by [`OTHER`] for the outputs.
struct Setup {
    _tpm: Swtpm,
    files: DaemonFiles,
    daemon: Daemon,
    sealed: std::path::PathBuf,
    service_dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    ok(cli(&daemon.socket, &["create-key", "app-db"]));
    let text = ok(cli_stdin(
        &daemon.socket,
        &["wrap", "app-db", "--context", "a=b"],
        PLAINTEXT,
    ));
    let sealed = files.root.path().join("sealed.b64");
    fs::write(&sealed, text).expect("write the ciphertext");
    let service_dir = files.root.path().join("service");
    fs::create_dir(&service_dir).expect("mkdir");
    fs::set_permissions(&service_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&service_dir, Some(OTHER), Some(OTHER)).expect("chown");
    // Every directory above must let nobody reach it, as in real life.
    fs::set_permissions(files.root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    Setup {
        _tpm: tpm,
        files,
        daemon,
        sealed,
        service_dir,
    }
}

impl Setup {
    /// `hostkms unwrap --out out --force` of the ciphertext (--force: what
    /// is at `out` may be replaced, so each test sees how).
    fn unwrap_forced_to(&self, out: &Path) -> Output {
        let mut args = vec![
            "unwrap",
            "--context",
            "a=b",
            "--in",
            self.sealed.to_str().expect("path"),
            "--out",
            out.to_str().expect("path"),
        ];
        args.push("--force");
        cli(&self.daemon.socket, &args)
    }

    /// `hostkms unwrap --out out` of the ciphertext.
    fn unwrap_to(&self, out: &Path) -> Output {
        cli(
            &self.daemon.socket,
            &[
                "unwrap",
                "--context",
                "a=b",
                "--in",
                self.sealed.to_str().expect("path"),
                "--out",
                out.to_str().expect("path"),
            ],
        )
    }
}

/// Asserts `path` is a regular file of root (this process's user), mode
/// 0600, holding the plaintext.
fn assert_private_plaintext(path: &Path) {
    let meta = fs::symlink_metadata(path).expect("lstat");
    assert!(
        meta.file_type().is_file(),
        "{} is a regular file",
        path.display()
    );
    assert_eq!(
        meta.uid(),
        nix::unistd::geteuid().as_raw(),
        "owned by the caller"
    );
    assert_eq!(meta.mode() & 0o7777, 0o600, "private");
    assert_eq!(meta.nlink(), 1, "a new file, linked nowhere else");
    assert_eq!(fs::read(path).expect("read"), PLAINTEXT);
}

/// No temporary file of an output is left in `dir`: only `names`.
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected, "what is left in {}", dir.display());
}

#[test]
fn a_link_at_out_is_replaced_never_followed() {
    let s = setup();
    let victim = s.files.root.path().join("victim.conf");
    fs::write(&victim, b"root-owned config, must survive\n").expect("write");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = s.service_dir.join("secret.key");
    std::os::unix::fs::symlink(&victim, &out).expect("symlink");
    std::os::unix::fs::lchown(&out, Some(OTHER), Some(OTHER)).expect("lchown");

    assert!(ok(s.unwrap_forced_to(&out)).is_empty());
    assert_eq!(
        fs::read(&victim).expect("read"),
        b"root-owned config, must survive\n",
        "the link's target is untouched"
    );
    assert_eq!(fs::metadata(&victim).expect("stat").mode() & 0o777, 0o644);
    assert_private_plaintext(&out);
    assert_only(&s.service_dir, &["secret.key"]);

    // A ciphertext (not secret) replaces a link the same way.
    let public = s.service_dir.join("sealed.copy");
    std::os::unix::fs::symlink(&victim, &public).expect("symlink");
    let output = cli_stdin(
        &s.daemon.socket,
        &[
            "wrap",
            "app-db",
            "--binary",
            "--out",
            public.to_str().expect("path"),
        ],
        b"x",
    );
    assert!(ok(output).is_empty());
    assert!(
        fs::symlink_metadata(&public)
            .expect("lstat")
            .file_type()
            .is_file()
    );
    assert!(fs::read(&public).expect("read").starts_with(b"HKMS"));
    assert_eq!(
        fs::read(&victim).expect("read"),
        b"root-owned config, must survive\n"
    );
}

#[test]
fn a_file_another_user_made_is_replaced_by_a_private_one() {
    let s = setup();
    let out = s.service_dir.join("secret.key");
    fs::write(&out, b"theirs").expect("write");
    fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).expect("chmod");
    std::os::unix::fs::chown(&out, Some(OTHER), Some(OTHER)).expect("chown");
    // The other user keeps a descriptor open on the file they made.
    let mut theirs = fs::File::open(&out).expect("open");
    let old_inode = fs::metadata(&out).expect("stat").ino();

    assert!(ok(s.unwrap_forced_to(&out)).is_empty());
    assert_private_plaintext(&out);
    assert_ne!(
        fs::metadata(&out).expect("stat").ino(),
        old_inode,
        "a new file"
    );
    let mut seen = Vec::new();
    theirs.read_to_end(&mut seen).expect("read");
    assert_eq!(seen, b"theirs", "nothing reached the file they hold open");
    assert_only(&s.service_dir, &["secret.key"]);
}

#[test]
fn a_fifo_or_a_link_to_one_is_refused_and_nothing_written() {
    let s = setup();
    let fifo = s.service_dir.join("secret.key");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    // Planted by the other user, as an attacker would.
    std::os::unix::fs::chown(&fifo, Some(OTHER), Some(OTHER)).expect("chown");
    // A reader is waiting, so an open for writing would not block.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the FIFO");

    let output = s.unwrap_forced_to(&fifo);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains(fifo.to_str().expect("path")), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert!(
        err.contains("standard output"),
        "suggests redirection: {err}"
    );
    assert!(
        err.contains("owned by uid 65534") && err.contains("only if you know who reads"),
        "says who owns it rather than advise writing into it: {err}"
    );
    assert!(output.stdout.is_empty());
    let mut seen = [0u8; 64];
    match reader.read(&mut seen) {
        Ok(n) => assert_eq!(n, 0, "nothing was written into the FIFO"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
    }
    assert!(
        fs::symlink_metadata(&fifo)
            .expect("lstat")
            .file_type()
            .is_fifo(),
        "the FIFO is still there"
    );

    // A link to it is refused too: it would not lead to a file either.
    let link = s.service_dir.join("link.key");
    std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
    let output = s.unwrap_forced_to(&link);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    match reader.read(&mut seen) {
        Ok(n) => assert_eq!(n, 0, "nothing was written into the FIFO"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
    }
    assert_only(&s.service_dir, &["secret.key", "link.key"]);
}

/// `--out -` is standard output, as `--in -` is standard input: no file
/// named "-" is made, and the terminal refusal of raw plaintext applies.
#[test]
fn out_dash_is_standard_output() {
    let s = setup();
    let cwd = s.files.root.path().join("cwd");
    fs::create_dir(&cwd).expect("mkdir");
    let socket = s.daemon.socket.to_str().expect("path");
    let sealed = s.sealed.to_str().expect("path");
    let run = |args: &[&str]| {
        std::process::Command::new(crate::harness::hostkms())
            .current_dir(&cwd)
            .args(["--socket", socket])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run hostkms")
    };
    let unwrap = ["unwrap", "--context", "a=b", "--in", sealed, "--out", "-"];
    assert_eq!(ok(run(&unwrap)), PLAINTEXT);
    let wrapped = ok(run(&["wrap", "app-db", "--in", sealed, "--out", "-"]));
    assert!(!wrapped.is_empty());
    assert_only(&cwd, &[]);

    let mut on_tty = vec!["--socket", socket];
    on_tty.extend(unwrap);
    let (code, screen) = crate::cli_errors::on_a_terminal(crate::harness::hostkms(), &on_tty);
    assert_eq!(code, Some(2), "{screen}");
    assert!(
        screen.contains("refusing to write the raw plaintext to a terminal"),
        "{screen}"
    );
    assert!(
        !screen.contains(std::str::from_utf8(PLAINTEXT).expect("utf-8")),
        "{screen}"
    );

    // Where standard output carries the command's report, "-" is refused.
    for args in [
        &["datakey", "app-db", "--out", "-"][..],
        &["export", "app-db", "--to", "b", "--out", "-"],
    ] {
        let output = run(args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--out -"), "{err}");
    }
    assert_only(&cwd, &[]);
}

/// `unwrap --out FILE` keeps an existing FILE unless --force, like
/// `datakey --out` and `export`; with --force the new file is 0600.
#[test]
fn unwrap_out_never_replaces_a_file_unasked() {
    let s = setup();
    let out = s.files.root.path().join("plain.out");
    fs::write(&out, b"keep me").expect("write");
    fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = s.unwrap_to(&out);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("exists; give --force"), "{err}");
    assert_eq!(fs::read(&out).expect("read"), b"keep me");

    let out_arg = out.to_str().expect("path");
    let sealed = s.sealed.to_str().expect("path");
    let args = [
        "unwrap",
        "--context",
        "a=b",
        "--in",
        sealed,
        "--out",
        out_arg,
    ];
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(ok(cli(&s.daemon.socket, &forced)).is_empty());
    assert_private_plaintext(&out);
    // --force goes with --base64 and --hex too.
    let mut encoded = forced.clone();
    encoded.push("--base64");
    assert!(ok(cli(&s.daemon.socket, &encoded)).is_empty());
    assert_eq!(
        fs::read(&out).expect("read"),
        format!("{}\n", crate::harness::b64(PLAINTEXT)).as_bytes()
    );
}

/// An `--out` that cannot be written (a FIFO, even with --force; a missing
/// directory) is refused before the daemon is asked: no data key is made
/// or audited, no plaintext decrypted. Shown with a socket nobody listens
/// on: the refusal is about the path, not the connection.
#[test]
fn an_unwritable_out_is_refused_before_the_daemon_is_asked() {
    let dir = crate::harness::private_tempdir();
    let socket = dir.path().join("none.sock");
    let fifo = dir.path().join("dek.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let fifo = fifo.to_str().expect("path");
    let missing = dir.path().join("no-such-dir").join("dek");
    let missing = missing.to_str().expect("path");
    let input = dir.path().join("in.ct");
    fs::write(&input, crate::harness::b64(b"HKMS whatever")).expect("write");
    let input = input.to_str().expect("path");
    for args in [
        &["datakey", "k", "--out", fifo, "--force"][..],
        &["datakey", "k", "--out", missing],
        &["unwrap", "--in", input, "--out", fifo, "--force"],
        &["export", "k", "--to", "b", "--out", fifo, "--force"],
    ] {
        let output = cli(&socket, args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            !err.contains("cannot connect"),
            "asked the daemon first: {err}"
        );
        assert!(err.contains("cannot write file"), "{args:?}: {err}");
    }
    assert_only(dir.path(), &["dek.fifo", "in.ct"]);
}
