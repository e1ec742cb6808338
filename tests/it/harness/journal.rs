//! journald for the audit tests: one started by hand when none runs, and
//! the entries of one daemon run read back with journalctl.

use std::fs;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where journald listens; tracing-journald writes to this fixed path.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The MESSAGE_ID of the event a daemon logs last, as it stops.
pub const DAEMON_STOPPED: &str = "03cf281e477a40c99f3000e0beee0cae";

/// Makes sure a journald runs, starting one by hand (as on this machine,
/// where systemd is not PID 1) when nothing listens on its socket. A socket
/// file left by a journald that has since died refuses connections; the new
/// journald replaces it. Tests of the one test process take turns here, so
/// only one starts a journald.
pub fn ensure_journald() {
    static STARTED: Mutex<()> = Mutex::new(());
    let _once = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if journald_listens() {
        return;
    }
    for dir in ["/run/systemd/journal", "/run/log/journal"] {
        fs::create_dir_all(dir).expect("journal directories");
    }
    // --fork: setsid returns at once and journald outlives the test process.
    let started = Command::new("setsid")
        .args(["--fork", "/lib/systemd/systemd-journald"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start systemd-journald");
    assert!(started.success(), "setsid systemd-journald: {started}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journald_listens() {
        assert!(
            Instant::now() < deadline,
            "journald did not listen on {JOURNAL_SOCKET} within 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a journald accepts datagrams on its socket: connecting to a
/// socket file whose journald has died is refused.
fn journald_listens() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|socket| socket.connect(JOURNAL_SOCKET))
        .is_ok()
}

/// The journal entries of one daemon run: its pid, and only from when it
/// started, because journald outlives test runs and pids (pid_max is 32768
/// here) come round again.
#[derive(Clone, Copy, Debug)]
pub struct JournalScope {
    pid: u32,
    since: SystemTime,
}

impl JournalScope {
    /// The entries of process `pid` from `since` on.
    pub fn new(pid: u32, since: SystemTime) -> JournalScope {
        JournalScope { pid, since }
    }

    /// journalctl's output for this run in `format`; fails the test when
    /// journalctl fails, rather than reading that as no entries.
    fn journalctl(&self, format: &str) -> Vec<u8> {
        let since = self
            .since
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        let output = Command::new("journalctl")
            .args(["--no-pager", "--all", "-o", format])
            .arg(format!(
                "--since=@{}.{:06}",
                since.as_secs(),
                since.subsec_micros()
            ))
            .arg(format!("_PID={}", self.pid))
            .output()
            .expect("run journalctl");
        assert!(
            output.status.success(),
            "journalctl: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }
}

/// The string field `name` of a journal entry.
pub fn field<'a>(entry: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(serde_json::Value::as_str)
}

/// The entries with MESSAGE_ID `id`.
pub fn with_id<'a>(entries: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    entries
        .iter()
        .filter(|e| field(e, "MESSAGE_ID") == Some(id))
        .collect()
}

/// Every journal entry of a daemon run that has stopped, as JSON objects:
/// polled until its stop event is readable (journald indexes the last
/// entries within a poll or two), so none is missed; fails after 10 s.
pub fn journal_of_stopped(scope: &JournalScope) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&scope.journalctl("json"))
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if !with_id(&entries, DAEMON_STOPPED).is_empty() {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "no stop event of pid {} in the journal within 10 s: {entries:#?}",
            scope.pid
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Everything the journal holds of one daemon run, in the export format
/// (binary fields raw), to search for bytes that must never be logged.
pub fn journal_export_of(scope: &JournalScope) -> Vec<u8> {
    scope.journalctl("export")
}
