//! Test harness: a private swtpm per test, the real `hostkmsd` binary
//! against it, and helpers to read what they did. Everything is stopped on
//! drop.
#![allow(dead_code)] // each test binary uses part of the harness

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::Client;

/// Path of the daemon binary under test.
pub const HOSTKMSD: &str = env!("CARGO_BIN_EXE_hostkmsd");
/// The CLI binary under test, `hostkms`, usable wherever its path is
/// (`Command::new(HOSTKMS)`, `format!("{HOSTKMS}")`).
pub const HOSTKMS: CliBinary = CliBinary;

/// The `hostkms` binary of the `hostkms-cli` package. Cargo gives a test
/// only the paths of its own package's binaries, so this one is found next
/// to `hostkmsd`, in the same target directory; `cargo test` does not
/// build it, `cargo build --workspace --bins` (as the Makefile does) does.
#[derive(Debug, Clone, Copy)]
pub struct CliBinary;

impl CliBinary {
    /// The binary's path; panics with what to run when it is not built.
    pub fn path(self) -> &'static Path {
        static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let path = Path::new(HOSTKMSD).with_file_name("hostkms");
            assert!(
                path.is_file(),
                "{} is missing: the CLI is its own package (hostkms-cli); \
                 run `cargo build --workspace --bins` first",
                path.display()
            );
            path
        })
    }
}

impl AsRef<std::ffi::OsStr> for CliBinary {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path().as_os_str()
    }
}

impl std::fmt::Display for CliBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.path().display().fmt(f)
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

/// Two consecutive free loopback ports (swtpm's TPM port and, next to it,
/// its control port, as the swtpm TCTI expects).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = first.local_addr().expect("local addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Waits until `child` itself listens on `port` and `port + 1`. A plain
/// connect is not enough: between [`free_port_pair`] and swtpm's bind,
/// another test's swtpm may take the port, and this one would then exit
/// while a connect still succeeded.
fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited with {status} before listening on {port}"
            ));
        }
        if listens_on(child.id(), port) && listens_on(child.id(), port + 1) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!("{what} did not listen on port {port} within 10 s"))
}

/// Whether process `pid` holds a socket listening on loopback `port`:
/// the socket's inode in /proc/net/tcp is one of the process's fds.
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
    })
}

/// Keeps loopback `port` bound but not listening, for as long as the value
/// lives: connections to it are refused at once, and no other test's swtpm
/// can take the port. Fails the test if someone already listens there.
fn refuse_port(port: u16) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("a TCP socket");
    // Past connections of a stopped swtpm may linger in TIME_WAIT.
    setsockopt(&socket, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )
    .unwrap_or_else(|e| panic!("hold port {port} closed: {e}"));
    socket
}

/// The closed ports of an unplugged TPM (see [`Swtpm::unplug`]).
pub struct Unplugged(std::os::fd::OwnedFd, std::os::fd::OwnedFd);

/// A private software TPM on loopback, with its own state directory.
pub struct Swtpm {
    child: Child,
    /// The TPM command port; the control port is `port + 1`.
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
    /// State that outlives this process: shut the TPM down orderly on drop.
    kept: bool,
}

impl Swtpm {
    /// Starts swtpm on free ports with a fresh state directory (a new TPM)
    /// and waits until it accepts connections.
    pub fn start() -> Swtpm {
        let dir = private_tempdir();
        let mut tpm = Swtpm::launch(dir.path());
        tpm._dir = Some(dir);
        tpm
    }

    /// Starts swtpm with its state in `dir`, which may hold an earlier run's
    /// state (the same TPM again). A TPM killed without TPM2_Shutdown counts
    /// the unorderly shutdown against its dictionary-attack limit, so this
    /// one clears any lockout at start and shuts down orderly on drop.
    pub fn start_in(dir: &Path) -> Swtpm {
        let tpm = Swtpm::resume_in(dir);
        tpm2(tpm.port, "tpm2_dictionarylockout", &["--clear-lockout"]);
        tpm
    }

    /// Starts swtpm on the state in `dir` as it is, lockout included.
    pub fn resume_in(dir: &Path) -> Swtpm {
        let mut tpm = Swtpm::launch(dir);
        tpm.kept = true;
        tpm
    }

    /// Stops swtpm without TPM2_Shutdown, as a power cut would.
    pub fn crash(mut self) {
        self.kept = false;
    }

    /// Stops swtpm and keeps its two ports closed while the value lives, so
    /// its TCTI is refused from then on: a freed port could otherwise be
    /// handed to another test's swtpm, and this TPM would seem to come back.
    pub fn unplug(self) -> Unplugged {
        let port = self.port;
        drop(self);
        Unplugged(refuse_port(port), refuse_port(port + 1))
    }

    fn launch(dir: &Path) -> Swtpm {
        fs::create_dir_all(dir).expect("swtpm state dir");
        let mut last_error = String::new();
        for _ in 0..20 {
            let port = free_port_pair();
            let log = fs::File::create(dir.join("swtpm.log")).expect("swtpm log");
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
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("swtpm must be installed: `make test` installs swtpm and swtpm-tools");
            match wait_for_port(port, &mut child, "swtpm") {
                Ok(()) => {
                    return Swtpm {
                        child,
                        port,
                        _dir: None,
                        kept: false,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Most likely a port taken meanwhile: try others.
                    let log = fs::read_to_string(dir.join("swtpm.log")).unwrap_or_default();
                    last_error = format!("{e}; its log:\n{log}");
                }
            }
        }
        panic!("could not start swtpm: {last_error}");
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if self.kept {
            let _ = Command::new("tpm2_shutdown")
                .arg("--clear")
                .env("TPM2TOOLS_TCTI", self.tcti())
                .env("TSS2_LOG", "all+none")
                .output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test daemon lives: its config, state dir, socket and log.
pub struct DaemonFiles {
    /// Holds everything; removed on drop.
    pub root: tempfile::TempDir,
    /// A world-traversable directory for the socket, when other users must
    /// reach it (see [`DaemonFiles::with_public_socket`]).
    pub public: Option<tempfile::TempDir>,
    /// The state directory (created by the daemon).
    pub state_dir: PathBuf,
    /// The socket path.
    pub socket: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl DaemonFiles {
    /// Fresh paths, and a config file pointing at `tcti` with `extra` TOML appended.
    pub fn new(tcti: &str, extra: &str) -> DaemonFiles {
        let root = private_tempdir();
        let state_dir = root.path().join("state");
        let socket = root.path().join("hostkms.sock");
        let config = root.path().join("config.toml");
        let files = DaemonFiles {
            state_dir,
            socket,
            config,
            root,
            public: None,
        };
        files.write_config(tcti, extra);
        files
    }

    /// Like [`DaemonFiles::new`], with the socket in a directory every user
    /// can traverse (mode 0755), so a child running as another uid reaches
    /// it and only the socket's own mode decides.
    pub fn with_public_socket(tcti: &str, extra: &str) -> DaemonFiles {
        let mut files = DaemonFiles::new(tcti, extra);
        let public = tempfile::Builder::new()
            .prefix("hostkms-sock-")
            .tempdir()
            .expect("socket directory");
        fs::set_permissions(public.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        files.socket = public.path().join("hostkms.sock");
        files.public = Some(public);
        files.write_config(tcti, extra);
        files
    }

    /// Rewrites the config file.
    pub fn write_config(&self, tcti: &str, extra: &str) {
        let text = format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\ntcti = \"{tcti}\"\n{extra}\n",
            self.socket.display(),
            self.state_dir.display()
        );
        fs::write(&self.config, text).expect("write config");
    }

    /// A file in the state dir.
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }
}

/// A running `hostkmsd`.
pub struct Daemon {
    child: Option<Child>,
    /// The socket it serves.
    pub socket: PathBuf,
    log: PathBuf,
    started: std::time::SystemTime,
}

impl Daemon {
    /// Starts hostkmsd with `files.config` and waits until it answers a Ping.
    /// Returns the daemon's log as the error when it exits instead.
    pub fn start(files: &DaemonFiles) -> Result<Daemon, String> {
        Daemon::start_with_args(files, &[])
    }

    /// As [`Daemon::start`], with extra command-line arguments.
    pub fn start_with_args(files: &DaemonFiles, args: &[&str]) -> Result<Daemon, String> {
        Daemon::start_with_env(files, args, &[("HOSTKMS_LOG_TARGET", "stderr")])
    }

    /// As [`Daemon::start`], with extra arguments and environment variables
    /// (`HOSTKMS_LOG_TARGET` chooses where it logs).
    pub fn start_with_env(
        files: &DaemonFiles,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = files.root.path().join(format!("hostkmsd-{n}.log"));
        let log_file = fs::File::create(&log).expect("daemon log");
        let started = std::time::SystemTime::now();
        let child = Command::new(HOSTKMSD)
            .arg("--config")
            .arg(&files.config)
            .args(args)
            .env("HOSTKMS_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn hostkmsd");
        let mut daemon = Daemon {
            child: Some(child),
            socket: files.socket.clone(),
            log,
            started,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = daemon.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    daemon.child = None;
                    return Err(format!("hostkmsd exited with {status}:\n{}", daemon.log()));
                }
            }
            if let Ok(mut client) = Client::connect(&daemon.socket) {
                // A daemon that accepts but never answers must not hang
                // the test past its deadline.
                let _ = client.set_timeout(Some(Duration::from_secs(2)));
                if client.ping().is_ok() {
                    return Ok(daemon);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "hostkmsd did not answer within 20 s:\n{}",
                    daemon.log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        let client = Client::connect(&self.socket).expect("connect to hostkmsd");
        client
            .set_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        client
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Which journal entries are this daemon's, to read them after it stops.
    pub fn journal_scope(&self) -> JournalScope {
        JournalScope {
            pid: self.pid(),
            since: self.started,
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the daemon to exit.
    pub fn stop_with(mut self, signal: nix::sys::signal::Signal) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("daemon still running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal hostkmsd");
        match exit_within(&mut child, Duration::from_secs(20)) {
            Some(status) => (status, self.log()),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hostkmsd did not exit within 20 s of {signal}; its log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// SIGTERM, then wait; returns the exit status and the log.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` to exit; kills it and fails the test after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    exit_within(child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("process {} did not exit within {timeout:?}", child.id());
    })
}

/// `child`'s exit status if it exits within `timeout`.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

/// Runs hostkmsd expecting it to exit by itself (a refused start); returns
/// its output.
pub fn run_daemon_to_exit(args: &[&str]) -> Output {
    let mut child = Command::new(HOSTKMSD)
        .args(args)
        .env("HOSTKMS_LOG", "info")
        .env("HOSTKMS_LOG_TARGET", "stderr")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hostkmsd");
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
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

/// Standard base64, as the CLI reads and prints it.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs the `hostkms` CLI against `socket`; returns its output.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(HOSTKMS)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run hostkms")
}

/// Runs the `hostkms` CLI feeding `stdin`; returns its output.
pub fn cli_stdin(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(HOSTKMS);
    command.arg("--socket").arg(socket).args(args);
    output_feeding(command, stdin, "run hostkms")
}

/// Runs the `hostkms` CLI as user `uid` (group `uid`, no supplementary
/// groups), feeding `stdin`; returns its output.
pub fn cli_as(uid: u32, socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(HOSTKMS);
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
            "run {HOSTKMS} as uid {uid} (every directory above the checkout's \
             target/ must be searchable by others)"
        ),
    )
}

/// Runs `command` with `stdin` as its input and returns its output. The
/// input is written from a thread, so a large one cannot deadlock against
/// the output pipes, and a command that stops reading early (input too
/// large) fails through its output, not through a broken pipe here.
fn output_feeding(mut command: Command, stdin: &[u8], what: &str) -> Output {
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

/// Runs a tpm2-tools command against `tpm`, failing the test when it fails.
pub fn tpm2(tpm_port: u16, tool: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(tool)
        .args(args)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={tpm_port}"),
        )
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} must be installed (`make test` installs tpm2-tools): {e}")
        });
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Break-glass: recovers the sealed secret from `root.pub`/`root.priv` with
/// tpm2-tools alone, as the README describes.
pub fn break_glass_unseal(tpm_port: u16, state_dir: &Path, work: &Path) -> Vec<u8> {
    let primary = work.join("primary.ctx");
    let sealed = work.join("root.ctx");
    let p = |path: &Path| path.display().to_string();
    tpm2(
        tpm_port,
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:aes128cfb",
            "-c",
            &p(&primary),
        ],
    );
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    tpm2(
        tpm_port,
        "tpm2_load",
        &[
            "-C",
            &p(&primary),
            "-u",
            &p(&state_dir.join("root.pub")),
            "-r",
            &p(&state_dir.join("root.priv")),
            "-c",
            &p(&sealed),
        ],
    );
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    let secret = tpm2(tpm_port, "tpm2_unseal", &["-c", &p(&sealed)]);
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    secret
}

/// A TCP relay in front of swtpm that records every byte in both
/// directions, to check what crosses the TPM interface.
pub struct RecordingRelay {
    /// The port clients connect to; `port + 1` relays the control channel.
    pub port: u16,
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl RecordingRelay {
    /// Relays `port` and `port + 1` to `tpm.port` and `tpm.port + 1`.
    pub fn start(tpm: &Swtpm) -> RecordingRelay {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        loop {
            let port = free_port_pair();
            let (Ok(command), Ok(control)) = (
                TcpListener::bind(("127.0.0.1", port)),
                TcpListener::bind(("127.0.0.1", port + 1)),
            ) else {
                continue;
            };
            relay(command, tpm.port, Arc::clone(&recorded));
            relay(control, tpm.port + 1, Arc::clone(&recorded));
            return RecordingRelay { port, recorded };
        }
    }

    /// The TCTI string that goes through the relay.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Everything relayed so far.
    pub fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().expect("recording").clone()
    }
}

fn relay(listener: TcpListener, target: u16, recorded: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                let recorded = Arc::clone(&recorded);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                recorded
                                    .lock()
                                    .expect("recording")
                                    .extend_from_slice(&buf[..n]);
                                if to.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
}

/// Whether `haystack` contains `needle` as a contiguous run.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where journald listens; tracing-journald writes to this fixed path.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Makes sure a journald runs, starting one by hand (as on this machine,
/// where systemd is not PID 1) when nothing listens on its socket. A socket
/// file left by a journald that has since died refuses connections; the new
/// journald replaces it.
pub fn ensure_journald() {
    static STARTED: std::sync::Mutex<()> = std::sync::Mutex::new(());
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
    since: std::time::SystemTime,
}

impl JournalScope {
    /// journalctl's output for this run in `format`; fails the test when
    /// journalctl fails, rather than reading that as no entries.
    fn journalctl(&self, format: &str) -> Vec<u8> {
        let since = self
            .since
            .duration_since(std::time::UNIX_EPOCH)
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

/// The MESSAGE_ID of the event a daemon logs last, as it stops.
pub const DAEMON_STOPPED: &str = "03cf281e477a40c99f3000e0beee0cae";

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
pub mod peer_identity;
pub mod tpm_faults;
