//! The `hostkms` CLI under test: where its binary is, and running it against
//! a daemon's socket, as root or as another user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::daemon::HOSTKMSD;
use super::process::output_feeding;

/// Path of the CLI binary under test: `hostkms` next to `hostkmsd` in the
/// same target directory. The CLI is a binary of another workspace package,
/// so Cargo builds it for this test crate only when asked to; fails the
/// test with what to run when it is missing.
pub fn hostkms() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(HOSTKMSD).with_file_name("hostkms");
        assert!(
            path.is_file(),
            "the hostkms CLI is not at {}: it is a binary of another package \
             (hostkms-cli); run `cargo build --workspace --bins` first",
            path.display()
        );
        path
    })
}

/// Runs the `hostkms` CLI against `socket`; returns its output.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(hostkms())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run hostkms")
}

/// Runs the `hostkms` CLI feeding `stdin`; returns its output.
pub fn cli_stdin(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(hostkms());
    command.arg("--socket").arg(socket).args(args);
    output_feeding(command, stdin, "run hostkms")
}

/// Runs the `hostkms` CLI as user `uid` (group `uid`, no supplementary
/// groups), feeding `stdin`; returns its output.
pub fn cli_as(uid: u32, socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(hostkms());
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(uid);
    output_feeding(
        command,
        stdin,
        &format!(
            "run {} as uid {uid} (every directory above the checkout's \
             target/ must be searchable by others)",
            hostkms().display()
        ),
    )
}
