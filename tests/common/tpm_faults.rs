//! A TPM that stops answering: swtpm paused with SIGSTOP (its sockets stay
//! open, so commands are accepted and never answered) and resumed with
//! SIGCONT.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Swtpm;

impl Swtpm {
    /// Stops swtpm (SIGSTOP): the TPM hangs without closing its sockets.
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
}
