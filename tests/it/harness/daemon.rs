//! The `hostkmsd` binary under test: its files (config, state dir, socket,
//! log), starting it until it answers, stopping it, and refused starts.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use agent_proto::Client;

use super::config::DaemonConfig;
use super::journal::JournalScope;
use super::private_tempdir;
use super::process::{exit_within, wait_with_timeout};

/// Runs hostkmsd under `systemd-socket-activate` listening on `listen`
/// (named `names`, `NAME:NAME...`, when given) with config `config`,
/// logging to stderr into `log`: the first connection execs the daemon.
pub fn socket_activated(listen: &[&Path], names: Option<&str>, config: &Path, log: &Path) -> Child {
    let log_file = fs::File::create(log).expect("log");
    let mut command = Command::new("systemd-socket-activate");
    for path in listen {
        command.arg("--listen").arg(path);
    }
    if let Some(names) = names {
        command.arg(format!("--fdname={names}"));
    }
    command
        .arg("--setenv=HOSTKMS_LOG_TARGET=stderr")
        .arg(HOSTKMSD)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("systemd-socket-activate (package systemd)")
}

/// Path of the daemon binary under test.
pub const HOSTKMSD: &str = env!("CARGO_BIN_EXE_hostkmsd");

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
    /// Fresh paths, and a config file with `config` pointing at `tcti`.
    pub fn new(tcti: &str, config: &DaemonConfig) -> DaemonFiles {
        let root = private_tempdir();
        let state_dir = root.path().join("state");
        let socket = root.path().join("hostkms.sock");
        let config_path = root.path().join("config.toml");
        let files = DaemonFiles {
            state_dir,
            socket,
            config: config_path,
            root,
            public: None,
        };
        files.write_config(tcti, config);
        files
    }

    /// Like [`DaemonFiles::new`], with the socket in a directory every user
    /// can traverse (mode 0755), so a child running as another uid reaches
    /// it and only the socket's own mode decides.
    pub fn with_public_socket(tcti: &str, config: &DaemonConfig) -> DaemonFiles {
        let mut files = DaemonFiles::new(tcti, config);
        let public = tempfile::Builder::new()
            .prefix("hostkms-sock-")
            .tempdir()
            .expect("socket directory");
        fs::set_permissions(public.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        files.socket = public.path().join("hostkms.sock");
        files.public = Some(public);
        files.write_config(tcti, config);
        files
    }

    /// Rewrites the config file: `config` on these paths and `tcti`.
    pub fn write_config(&self, tcti: &str, config: &DaemonConfig) {
        let text = config.render(&self.socket, &self.state_dir, tcti);
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
    started: SystemTime,
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
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = files.root.path().join(format!("hostkmsd-{n}.log"));
        let log_file = fs::File::create(&log).expect("daemon log");
        let started = SystemTime::now();
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
        JournalScope::new(self.pid(), self.started)
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
