//! A private software TPM per test: swtpm on free loopback ports with its
//! own state directory, stopped on drop; unplugged, crashed or paused on
//! demand.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ports::{free_port_pair, refuse_port, wait_for_port};
use super::private_tempdir;
use super::tpm2_tools::tpm2;

/// The closed ports of an unplugged TPM (see [`Swtpm::unplug`]): held,
/// never read.
pub struct Unplugged {
    _ports: [OwnedFd; 2],
}

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
        Unplugged {
            _ports: [refuse_port(port), refuse_port(port + 1)],
        }
    }

    /// Stops swtpm (SIGSTOP): the TPM hangs without closing its sockets, so
    /// commands are accepted and never answered.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused swtpm run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to swtpm: {e}"));
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
