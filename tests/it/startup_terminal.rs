//! hostkmsd run by hand in a terminal while journald listens: its log goes
//! to the journal, and its warnings and errors show on the terminal too
//! (the fatal one once), so an operator sees why it did not start.

use std::fs;
use std::process::Command;

use crate::harness::{DaemonConfig, HOSTKMSD, Swtpm, ensure_journald, private_tempdir, text};

/// Runs `sh -c line` with standard output and error on a fresh
/// pseudo-terminal (util-linux `script`), standard input empty; returns
/// its exit code and what it wrote to the terminal.
fn on_a_terminal(line: &str) -> (Option<i32>, String) {
    let output = Command::new("script")
        .args(["-q", "-e", "-f", "-c", line, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env_remove("JOURNAL_STREAM")
        .env_remove("HOSTKMS_LOG_TARGET")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    (
        output.status.code(),
        text(&output.stdout).replace("\r\n", "\n"),
    )
}

#[test]
fn startup_warnings_and_errors_show_on_a_terminal_though_the_log_goes_to_journald() {
    ensure_journald();
    let tpm = Swtpm::start();
    let dir = private_tempdir();
    // A state dir that is a file: the daemon fails after its first
    // warnings, past the TPM.
    let state = dir.path().join("state");
    fs::write(&state, b"not a directory").expect("write");
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        DaemonConfig::new().render(&dir.path().join("s.sock"), &state, &tpm.tcti()),
    )
    .expect("config");
    // A hard limit on open files below what the connections need: a
    // warning at start-up, which used to reach the journal only.
    let line = format!(
        "ulimit -n 300 && exec '{HOSTKMSD}' --config '{}'",
        config.display()
    );
    let (code, screen) = on_a_terminal(&line);
    assert_eq!(code, Some(1), "{screen}");
    assert!(
        screen.contains("hostkmsd: warning: the open-file limit is 300"),
        "{screen}"
    );
    let fatal: Vec<&str> = screen
        .lines()
        .filter(|l| l.starts_with("hostkmsd: error: ") && l.contains(&*state.to_string_lossy()))
        .collect();
    assert_eq!(fatal.len(), 1, "the fatal error once: {screen}");
    // Informational lines stay in the journal.
    assert!(
        screen.lines().all(|l| l.starts_with("hostkmsd: ")),
        "{screen}"
    );
}

#[test]
fn hostkmsd_help_says_where_the_log_goes() {
    let output = Command::new(HOSTKMSD)
        .arg("--help")
        .output()
        .expect("run hostkmsd --help");
    assert!(output.status.success());
    let help = text(&output.stdout);
    for needle in [
        "journald",
        "journalctl -u hostkms",
        "HOSTKMS_LOG_TARGET",
        "terminal",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from: {help}");
    }
}
