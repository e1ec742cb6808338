//! The state dir belongs to one daemon at a time, and its files are trusted
//! only when they are what hostkmsd itself writes: regular files (no links)
//! of the daemon's user, private, in a directory no one else can swap out.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, cli, run_daemon_to_exit};

/// Daemon files whose state dir is `other`'s, with a socket of their own.
fn sharing_state_dir(tcti: &str, other: &DaemonFiles) -> DaemonFiles {
    let mut files = DaemonFiles::new(tcti, &DaemonConfig::new());
    files.state_dir = other.state_dir.clone();
    files.write_config(tcti, &DaemonConfig::new());
    files
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_naming_the_first() {
    let tpm = Swtpm::start();
    let first = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let second = sharing_state_dir(&tpm.tcti(), &first);
    assert_ne!(first.socket, second.socket);
    let a = Daemon::start(&first).expect("start the first daemon");
    a.client().create_key("shared").expect("create");

    let refused = run_daemon_to_exit(&["--config", second.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the second daemon ran: {stderr}");
    assert!(
        stderr.contains(&format!("in use by process {}", a.pid())),
        "the refusal names the first daemon's pid {}: {stderr}",
        a.pid()
    );
    assert!(
        stderr.contains("Stop that process first"),
        "and says what to do: {stderr}"
    );
    assert!(
        !second.socket.exists(),
        "the refused daemon never bound its socket"
    );

    // The first one is unaffected: it still serves and changes keys.
    let mut client = a.client();
    client.ping().expect("the first daemon still answers");
    assert_eq!(client.rotate("shared").expect("rotate").latest_version, 2);
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");

    // Once it is gone, the second one starts and sees what the first wrote.
    let b = Daemon::start(&second).expect("the lock is free once the first daemon stopped");
    let key = b.client().describe_key("shared").expect("describe");
    assert_eq!(key.latest_version, 2);
}

#[test]
fn deleting_the_lock_file_does_not_free_the_state_dir() {
    let tpm = Swtpm::start();
    let first = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let second = sharing_state_dir(&tpm.tcti(), &first);
    let a = Daemon::start(&first).expect("start the first daemon");
    // An operator "clearing a stale lock" while the daemon runs.
    fs::remove_file(first.state_file("lock")).expect("delete the lock file");

    let refused = run_daemon_to_exit(&["--config", second.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the second daemon ran: {stderr}");
    assert!(
        stderr.contains(&format!("in use by process {}", a.pid())),
        "the refusal still names the first daemon's pid {}: {stderr}",
        a.pid()
    );
    assert!(
        !second.socket.exists(),
        "the refused daemon never bound its socket"
    );
    a.client().ping().expect("the first daemon still answers");
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");
    Daemon::start(&second).expect("the state dir is free once the first daemon stopped");
}

#[test]
fn a_hard_linked_key_store_is_refused() {
    let tpm = Swtpm::start();
    let files = prepared(&tpm);
    let other = files.root.path().join("elsewhere.db");
    fs::hard_link(files.state_file("keystore.db"), &other).expect("ln");
    let log = refused(&files);
    assert!(
        log.contains("keystore.db has 2 hard links")
            && log.contains("not a backup")
            && log.contains(".backup"),
        "{log}"
    );
    fs::remove_file(&other).expect("rm the other link");
    let daemon = Daemon::start(&files).expect("start once the file has one link");
    daemon
        .client()
        .describe_key("kept")
        .expect("the key is there");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    // The root key's files too: its sealed copy and the record naming it.
    for name in ["root-1-auto.priv", "root.seal"] {
        let other = files.root.path().join(format!("elsewhere-{name}"));
        fs::hard_link(files.state_file(name), &other).expect("ln");
        let log = refused(&files);
        assert!(log.contains(&format!("{name} has 2 hard links")), "{log}");
        fs::remove_file(&other).expect("rm the other link");
    }
}

/// A state dir with a root key and a key store in it, its daemon stopped.
fn prepared(tpm: &Swtpm) -> DaemonFiles {
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("first start");
    daemon.client().create_key("kept").expect("create");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    files
}

/// Starts the daemon expecting a refusal; returns its log.
fn refused(files: &DaemonFiles) -> String {
    match Daemon::start(files) {
        Ok(daemon) => panic!("hostkmsd started:\n{}", daemon.log()),
        Err(log) => log,
    }
}

/// Moves state file `name` out of the state dir, world-readable, and puts
/// a symbolic link to it in its place; returns where it went.
fn replace_by_link(files: &DaemonFiles, name: &str) -> PathBuf {
    let outside = files.root.path().join(format!("outside-{name}"));
    fs::rename(files.state_file(name), &outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&outside, files.state_file(name)).unwrap();
    outside
}

#[test]
fn a_symlinked_key_store_is_refused_not_followed() {
    let tpm = Swtpm::start();
    let files = prepared(&tpm);
    let outside = replace_by_link(&files, "keystore.db");
    let before = fs::read(&outside).unwrap();
    let log = refused(&files);
    assert!(
        log.contains("keystore.db is a symbolic link")
            && log.contains("does not follow links")
            && log.contains("Replace the link by the file itself"),
        "{log}"
    );
    assert_eq!(
        fs::read(&outside).unwrap(),
        before,
        "the target is untouched"
    );
    assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o644);

    // Put back, it serves the same keys again.
    fs::remove_file(files.state_file("keystore.db")).unwrap();
    fs::rename(&outside, files.state_file("keystore.db")).unwrap();
    let daemon = Daemon::start(&files).expect("start with the real file");
    daemon
        .client()
        .describe_key("kept")
        .expect("the key is there");
}

#[test]
fn a_symlinked_root_blob_is_refused_not_followed() {
    let tpm = Swtpm::start();
    let files = prepared(&tpm);
    for name in ["root-1-auto.pub", "root.seal"] {
        let outside = replace_by_link(&files, name);
        let log = refused(&files);
        assert!(
            log.contains(&format!("{name} is a symbolic link"))
                && log.contains("does not follow links"),
            "{log}"
        );
        fs::remove_file(files.state_file(name)).unwrap();
        fs::rename(&outside, files.state_file(name)).unwrap();
    }
    Daemon::start(&files).expect("starts with the real files back");
}

#[test]
fn state_files_open_to_others_are_set_back_to_0600_and_the_repair_logged() {
    let tpm = Swtpm::start();
    let files = prepared(&tpm);
    for name in ["root-1-auto.priv", "root.seal", "keystore.db"] {
        fs::set_permissions(files.state_file(name), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let daemon = Daemon::start(&files).expect("a loose mode is repaired, not fatal");
    daemon.client().describe_key("kept").expect("serves");
    for name in ["root-1-auto.priv", "root.seal", "keystore.db"] {
        let mode = fs::metadata(files.state_file(name)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let log = daemon.log();
    for name in ["root-1-auto.priv", "root.seal", "keystore.db"] {
        assert!(
            log.contains(&format!("{name} had mode 0644")) && log.contains("set it to 0600"),
            "the repair of {name} is logged: {log}"
        );
    }
}

#[test]
fn state_files_of_another_user_are_refused() {
    let tpm = Swtpm::start();
    let files = prepared(&tpm);
    for name in ["root-1-auto.priv", "root.seal", "keystore.db"] {
        nix::unistd::chown(
            &files.state_file(name),
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
        let log = refused(&files);
        assert!(
            log.contains(&format!("{name} is owned by uid 65534"))
                && log.contains("trusts only files its own user wrote"),
            "{log}"
        );
        nix::unistd::chown(
            &files.state_file(name),
            Some(nix::unistd::Uid::from_raw(0)),
            None,
        )
        .unwrap();
    }
    Daemon::start(&files).expect("starts once the files are the daemon's again");
}

#[test]
fn a_state_dir_below_a_directory_others_can_write_is_refused() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    // The state dir's parent is files.root (a private tempdir).
    let parent = files.root.path();
    assert_eq!(files.state_dir.parent(), Some(parent));

    fs::set_permissions(parent, fs::Permissions::from_mode(0o777)).unwrap();
    let log = refused(&files);
    assert!(
        log.contains("which every user may write (mode 0777) without the sticky bit")
            && log.contains("chmod o-w"),
        "{log}"
    );

    fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(parent, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let log = refused(&files);
    assert!(log.contains("which is owned by uid 65534"), "{log}");
    nix::unistd::chown(parent, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();

    // Sticky and world-writable, like /tmp: others cannot rename what is not theirs.
    fs::set_permissions(parent, fs::Permissions::from_mode(0o1777)).unwrap();
    Daemon::start(&files).expect("a sticky parent is fine");
}

#[test]
fn control_characters_of_a_key_name_are_escaped_in_errors() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let name = "evil\u{1b}[31m\nFAKE: granted\u{7}";

    let err = daemon.client().describe_key(name).expect_err("no such key");
    let message = err.to_string();
    assert!(
        !message.chars().any(char::is_control),
        "the daemon's own message carries no control character: {message:?}"
    );
    assert!(
        message.contains(r#"no key named "evil\u{1b}[31m\nFAKE: granted\u{7}""#),
        "{message}"
    );

    let out = cli(&files.socket, &["describe", name]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.trim_end().chars().any(char::is_control),
        "{stderr:?}"
    );
    assert!(stderr.contains(r"evil\u{1b}[31m\nFAKE"), "{stderr}");
}
