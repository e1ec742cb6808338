//! Child processes of the tests: waiting with a bound, feeding input, and
//! reading what they printed.

use std::io::Write;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Waits for `child` to exit; kills it and fails the test after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    exit_within(child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("process {} did not exit within {timeout:?}", child.id());
    })
}

/// `child`'s exit status if it exits within `timeout`.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` with `stdin` as its input and returns its output. The
/// input is written from a thread, so a large one cannot deadlock against
/// the output pipes, and a command that stops reading early (input too
/// large) fails through its output, not through a broken pipe here.
pub fn output_feeding(mut command: Command, stdin: &[u8], what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().expect("the command's output");
    writer.join().expect("stdin writer");
    output
}

/// Bytes a command printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(output: &Output) -> String {
    text(&output.stderr)
}

/// The stdout of a run that must have succeeded.
pub fn ok(output: Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "hostkms failed ({:?}): {}",
        output.status.code(),
        stderr(&output)
    );
    output.stdout
}

/// This test binary, set to run only its ignored helper test `name` of
/// `module` (pass `module_path!()`): the half of a test that runs in another
/// process (as another uid, or to be killed). All tests share one binary,
/// so the helper is named by its full test path; a helper that is not there
/// fails the test here instead of running no test and exiting 0.
pub fn helper_test(module: &str, name: &str) -> Command {
    let exe = std::env::current_exe().expect("this test binary");
    // `module_path!()` starts with the crate's name, libtest's paths do not.
    let path = match module.split_once("::") {
        Some((_, module)) => format!("{module}::{name}"),
        None => name.to_string(),
    };
    let listed = Command::new(&exe)
        .args([path.as_str(), "--exact", "--ignored", "--list"])
        .output()
        .expect("list this binary's tests");
    assert!(
        text(&listed.stdout)
            .lines()
            .any(|line| line == format!("{path}: test")),
        "no helper test {path} in {}: {}",
        exe.display(),
        text(&listed.stdout)
    );
    let mut command = Command::new(exe);
    command.args([path.as_str(), "--exact", "--ignored", "--test-threads=1"]);
    command
}
