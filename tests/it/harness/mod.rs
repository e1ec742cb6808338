//! Test harness: a private swtpm per test, the real `hostkmsd` binary
//! against it, the `hostkms` CLI, and helpers to read what they did.
//! Everything is stopped on drop. One module per concern:
//!
//! - [`ports`]: free loopback ports, and holding them closed;
//! - [`swtpm`]: the software TPM;
//! - [`tpm2_tools`]: tpm2-tools against it (break-glass);
//! - [`relay`]: a recording relay in front of it;
//! - [`config`]: the daemon's config, built and rendered as TOML;
//! - [`daemon`]: the daemon's files and process;
//! - [`cli`]: the CLI binary, as root or as another user;
//! - [`clock`]: the daemon's movable test clock;
//! - [`journal`]: journald and the entries of one daemon run;
//! - [`peer_identity`]: cgroups, processes in them, throw-away users;
//! - [`process`]: child processes: bounded waits, input, output.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod journal;
pub mod peer_identity;
pub mod ports;
pub mod process;
pub mod relay;
pub mod swtpm;
pub mod tpm2_tools;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

pub use cli::{cli, cli_as, cli_stdin, hostkms};
pub use clock::TestClock;
pub use config::{Alerts, DaemonConfig, Grant};
pub use daemon::{Daemon, DaemonFiles, HOSTKMSD, run_daemon_to_exit, socket_activated};
pub use journal::{ensure_journald, field, journal_export_of, journal_of_stopped, with_id};
pub use process::{helper_test, ok, stderr, text, wait_with_timeout};
pub use relay::RecordingRelay;
pub use swtpm::Swtpm;
pub use tpm2_tools::break_glass_unseal;

/// A fresh swtpm, daemon files and a daemon serving them: what most tests
/// start with. Its fields drop in order: the daemon first, then its files,
/// then the TPM.
pub struct Harness {
    /// The running daemon.
    pub daemon: Daemon,
    /// Its config, state dir and socket.
    pub files: DaemonFiles,
    /// Its TPM.
    pub tpm: Swtpm,
}

impl Harness {
    /// Starts a fresh swtpm and a daemon with `config` on it, and waits
    /// until the daemon answers; fails the test with its log if it does not.
    pub fn start(config: DaemonConfig) -> Harness {
        let tpm = Swtpm::start();
        let files = DaemonFiles::new(&tpm.tcti(), &config);
        let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
        Harness { daemon, files, tpm }
    }
}

/// A fresh private directory, removed on drop, with mode 0700 so a daemon
/// state dir inside it is acceptable.
pub fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hostkms-test-")
        .tempdir()
        .expect("create a temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod tempdir");
    dir
}

/// Standard base64, as the CLI reads and prints it.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether `haystack` contains `needle` as a contiguous run.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `name` is a file of the sealed root key: `root.seal`,
/// `root-next.seal`, a copy `root-G-auto|pin.pub|priv`, or a blob of the
/// layout before sealing modes (`root.pub`, `root.priv`, `root-next.pub`,
/// `root-next.priv`).
pub fn is_root_key_file(name: &str) -> bool {
    if matches!(
        name,
        "root.seal"
            | "root-next.seal"
            | "root.pub"
            | "root.priv"
            | "root-next.pub"
            | "root-next.priv"
    ) {
        return true;
    }
    let Some(rest) = name.strip_prefix("root-") else {
        return false;
    };
    let Some((generation, copy)) = rest.split_once('-') else {
        return false;
    };
    !generation.is_empty()
        && generation.bytes().all(|b| b.is_ascii_digit())
        && matches!(copy, "auto.pub" | "auto.priv" | "pin.pub" | "pin.priv")
}

/// The sealed root key's files in `state_dir` ([`is_root_key_file`]), by
/// name, with their contents.
pub fn root_key_files(state_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(state_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", state_dir.display()))
        .map(|entry| {
            entry
                .expect("state dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| is_root_key_file(name))
        .map(|name| {
            let bytes =
                fs::read(state_dir.join(&name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

/// The names of [`root_key_files`].
pub fn root_key_file_names(state_dir: &Path) -> Vec<String> {
    root_key_files(state_dir)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// A sealing record of `state_dir` (`root.seal` or `root-next.seal`) as JSON.
pub fn seal_record(state_dir: &Path, name: &str) -> serde_json::Value {
    let path = state_dir.join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()))
}

/// The generation `root.seal` in `state_dir` names.
pub fn seal_generation(state_dir: &Path) -> u64 {
    let record = seal_record(state_dir, "root.seal");
    record["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no generation in root.seal: {record}"))
}

/// Runs `sqlite3 DB SQL`, failing the test when it fails.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let output = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 must be installed (`make test` installs it)");
    assert!(
        output.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
