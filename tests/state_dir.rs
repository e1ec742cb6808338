//! The state dir belongs to one daemon at a time, and its files are trusted
//! only when they are what hostkmsd itself writes: regular files (no links)
//! of the daemon's user, private, in a directory no one else can swap out.

mod common;

use common::{Daemon, DaemonFiles, Swtpm, run_daemon_to_exit};

/// Daemon files whose state dir is `other`'s, with a socket of their own.
fn sharing_state_dir(tcti: &str, other: &DaemonFiles) -> DaemonFiles {
    let mut files = DaemonFiles::new(tcti, "");
    files.state_dir = other.state_dir.clone();
    files.write_config(tcti, "");
    files
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_naming_the_first() {
    let tpm = Swtpm::start();
    let first = DaemonFiles::new(&tpm.tcti(), "");
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
