//! The processes under test: a private swtpm on free loopback ports and the
//! real `hostkmsd` binary on it, as tests/it/harness starts them, with the
//! daemon's log scanned as it is written and its memory sampled.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::Client;

/// A private directory tree for one run, removed on drop.
#[derive(Debug)]
pub struct RunDir {
    /// The root (mode 0700): config, state dir, swtpm state.
    pub root: PathBuf,
    /// A 0755 directory for the socket, so the fuzzing uid reaches it.
    pub public: PathBuf,
}

impl RunDir {
    /// Creates both directories under the system temp dir.
    pub fn create() -> Result<RunDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = std::env::temp_dir();
        let tag = format!("{}-{nanos}", std::process::id());
        let root = base.join(format!("hostkms-fuzz-{tag}"));
        let public = base.join(format!("hostkms-fuzz-sock-{tag}"));
        for (dir, mode) in [(&root, 0o700), (&public, 0o755)] {
            fs::create_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        }
        Ok(RunDir { root, public })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var_os("FUZZ_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
            let _ = fs::remove_dir_all(&self.public);
        }
    }
}

/// A private software TPM.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
}

fn free_port_pair() -> u16 {
    loop {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Whether process `pid` listens on loopback `port` (so another run's
/// swtpm that took the port meanwhile is not mistaken for ours).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
    })
}

impl Swtpm {
    /// Starts swtpm with its state in `dir` and waits until it listens.
    pub fn start(dir: &Path) -> Result<Swtpm, String> {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        for _ in 0..20 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run swtpm (make deps installs it): {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if listens_on(child.id(), port) && listens_on(child.id(), port + 1) {
                    return Ok(Swtpm { child, port });
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err("swtpm did not listen on a free port pair in 20 attempts".to_string())
    }

    /// Its TCTI string.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the daemon's log showed, scanned line by line as it was written.
#[derive(Debug, Default)]
pub struct LogScan {
    /// Lines read.
    pub lines: u64,
    /// Lines with "panicked".
    pub panics: u64,
    /// The first of those lines.
    pub panic_lines: Vec<String>,
    /// The last lines, for a report when the daemon died.
    pub tail: std::collections::VecDeque<String>,
}

/// The running daemon.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// The socket it serves.
    pub socket: PathBuf,
    /// Its log, as scanned so far.
    pub log: Arc<Mutex<LogScan>>,
}

fn scan_log(reader: impl std::io::Read + Send + 'static, log: Arc<Mutex<LogScan>>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let mut scan = log.lock().unwrap_or_else(|e| e.into_inner());
            scan.lines += 1;
            if text.contains("panicked") {
                scan.panics += 1;
                if scan.panic_lines.len() < 10 {
                    scan.panic_lines.push(text.clone());
                }
            }
            if scan.tail.len() >= 40 {
                scan.tail.pop_front();
            }
            scan.tail.push_back(text);
        }
    });
}

impl Daemon {
    /// Writes a config (socket mode 0666 in `dir.public`, `grant` appended)
    /// and starts `hostkmsd` on it; waits up to 30 s for a Ping answer.
    pub fn start(hostkmsd: &Path, dir: &RunDir, tcti: &str, grant: &str) -> Result<Daemon, String> {
        let socket = dir.public.join("hostkms.sock");
        let config = dir.root.join("config.toml");
        let text = format!(
            "socket = \"{}\"\nsocket_mode = \"0666\"\nstate_dir = \"{}\"\ntcti = \"{tcti}\"\n{grant}\n",
            socket.display(),
            dir.root.join("state").display()
        );
        fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
        let mut child = Command::new(hostkmsd)
            .arg("--config")
            .arg(&config)
            .env("HOSTKMS_LOG_TARGET", "stderr")
            .env("HOSTKMS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", hostkmsd.display()))?;
        let log = Arc::new(Mutex::new(LogScan::default()));
        if let Some(out) = child.stdout.take() {
            scan_log(out, Arc::clone(&log));
        }
        if let Some(err) = child.stderr.take() {
            scan_log(err, Arc::clone(&log));
        }
        let mut daemon = Daemon { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(format!(
                    "hostkmsd exited with {status} at start:\n{}",
                    daemon.tail()
                ));
            }
            if let Ok(mut client) = Client::connect(&daemon.socket) {
                let _ = client.set_timeout(Some(Duration::from_secs(2)));
                if client.ping().is_ok() {
                    return Ok(daemon);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "hostkmsd did not answer within 30 s:\n{}",
                    daemon.tail()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let scan = self.log.lock().unwrap_or_else(|e| e.into_inner());
        scan.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then up to 20 s for it to exit; its exit code (None: it
    /// was killed, or did not exit and was killed).
    pub fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples a process's RSS every 100 ms until stopped: start, max, last.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    /// RSS when sampling began, KiB.
    pub start: u64,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let start = rss_kib(pid).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(start));
        let last = Arc::new(AtomicU64::new(start));
        let handle = {
            let (stop, max, last) = (Arc::clone(&stop), Arc::clone(&max), Arc::clone(&last));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_kib(pid) {
                        max.fetch_max(rss, Ordering::Relaxed);
                        last.store(rss, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            stop,
            max,
            last,
            start,
            handle: Some(handle),
        }
    }

    /// The largest RSS seen so far, KiB.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns (max, last) in KiB.
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        (self.max(), self.last.load(Ordering::Relaxed))
    }
}

/// VmHWM (peak RSS) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
