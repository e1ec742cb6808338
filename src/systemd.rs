//! The service manager's side of the daemon: the socket systemd passes in
//! (socket activation), and the notifications it expects back (READY,
//! STATUS, RELOADING, STOPPING, WATCHDOG). Run by hand, with none of the
//! environment systemd sets, every call here is a no-op.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, sockopt};
use sd_notify::NotifyState;

/// Why the socket systemd passed cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS`/`LISTEN_PID` are malformed.
    #[error("cannot read the sockets systemd passed (LISTEN_FDS/LISTEN_PID): {0}")]
    Environment(io::Error),
    /// More than one socket was passed.
    #[error(
        "systemd passed {0} sockets; hostkmsd serves one main socket and at most one credential socket (FileDescriptorName=credentials). Give hostkms.socket and hostkms-credentials.socket a single ListenStream= each"
    )]
    TooMany(usize),
    /// The passed descriptor is not a listening Unix stream socket.
    #[error(
        "the descriptor systemd passed ({fd}) is not a listening Unix stream socket ({problem}); hostkms.socket needs ListenStream=/path and Accept=no"
    )]
    NotAUnixListener {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead.
        problem: String,
    },
}

/// The name (`FileDescriptorName=`) of the credential socket systemd
/// passes (hostkms-credentials.socket).
pub const CREDENTIALS_FD_NAME: &str = "credentials";

/// The listening sockets systemd passed.
#[derive(Debug, Default)]
pub struct Activated {
    /// The main socket: the one passed under any name but
    /// [`CREDENTIALS_FD_NAME`].
    pub main: Option<UnixListener>,
    /// The credential socket: the one named [`CREDENTIALS_FD_NAME`].
    pub credentials: Option<UnixListener>,
}

/// The listening sockets systemd passed, if the daemon was socket-activated:
/// at most one named [`CREDENTIALS_FD_NAME`] and one other (the main).
///
/// Both `None` when `LISTEN_PID` is absent or names another process: the
/// daemon then binds its own sockets.
pub fn activated_listeners() -> Result<Activated, ActivationError> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Environment)?
        .collect();
    let credentials = fds
        .iter()
        .filter(|(_, name)| name == CREDENTIALS_FD_NAME)
        .count();
    let main = fds.len() - credentials;
    if main > 1 || credentials > 1 {
        return Err(ActivationError::TooMany(fds.len()));
    }
    for &(fd, _) in &fds {
        check_unix_listener(fd)
            .map_err(|problem| ActivationError::NotAUnixListener { fd, problem })?;
    }
    let mut activated = Activated::default();
    for (fd, name) in fds {
        // SAFETY: systemd passed `fd` to this process for it to own (sd_listen_fds(3)),
        // it was checked above to be an open listening socket, and nothing else
        // in the daemon takes ownership of descriptors from LISTEN_FDS; each
        // is wrapped once, in this loop.
        let listener = unsafe { UnixListener::from_raw_fd(fd) };
        listener
            .set_nonblocking(true)
            .map_err(|e| ActivationError::NotAUnixListener {
                fd,
                problem: format!("cannot make it non-blocking: {e}"),
            })?;
        if name == CREDENTIALS_FD_NAME {
            activated.credentials = Some(listener);
        } else {
            activated.main = Some(listener);
        }
    }
    Ok(activated)
}

fn check_unix_listener(fd: RawFd) -> Result<(), String> {
    // SAFETY: `fd` is one of LISTEN_FDS, open in this process, and nothing
    // closes or takes it before `activated_listener` wraps it after this check
    // returns, so it stays open for the whole borrow; it is only queried.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let kind = nix::sys::socket::getsockopt(&borrowed, sockopt::SockType)
        .map_err(|e| format!("not a socket: {e}"))?;
    if kind != SockType::Stream {
        return Err(format!("socket type {kind:?}, not a stream"));
    }
    let address: SockaddrStorage =
        nix::sys::socket::getsockname(fd).map_err(|e| format!("getsockname failed: {e}"))?;
    if address.family() != Some(AddressFamily::Unix) {
        return Err(format!(
            "address family {:?}, not AF_UNIX",
            address.family()
        ));
    }
    let listening = nix::sys::socket::getsockopt(&borrowed, sockopt::AcceptConn)
        .map_err(|e| format!("cannot tell whether it listens: {e}"))?;
    if !listening {
        return Err("it does not listen".to_string());
    }
    Ok(())
}

/// Sends the service manager the daemon's state changes.
///
/// Without `NOTIFY_SOCKET` every method does nothing. A failed send is
/// logged once at debug level and never stops the daemon: it serves the
/// same either way.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    managed: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` as systemd set them.
    pub fn from_env() -> Notifier {
        Notifier {
            managed: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().filter(|timeout| !timeout.is_zero()),
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    /// How often to ping the watchdog: half its timeout, as sd_watchdog_enabled(3)
    /// recommends. `None` when systemd watches no timeout.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// The root key is unsealed and the key store loaded: requests can be served.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Replaces the one-line status `systemctl status` shows.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// A SIGHUP reload has begun; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// The daemon is shutting down.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Tells the watchdog the serving loop is alive.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}
