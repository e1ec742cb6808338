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
        "systemd passed {0} sockets; hostkmsd serves exactly one. Give hostkms.socket a single ListenStream="
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

/// The listening socket systemd passed, if the daemon was socket-activated.
///
/// `None` when `LISTEN_PID` is absent or names another process: the daemon
/// then binds its own socket.
pub fn activated_listener() -> Result<Option<UnixListener>, ActivationError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(ActivationError::Environment)?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => return Err(ActivationError::TooMany(more.len())),
    };
    check_unix_listener(fd).map_err(|problem| ActivationError::NotAUnixListener { fd, problem })?;
    // SAFETY: systemd passed `fd` to this process for it to own (sd_listen_fds(3)),
    // it was checked above to be an open listening socket, and nothing else
    // in the daemon takes ownership of descriptors from LISTEN_FDS.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener
        .set_nonblocking(true)
        .map_err(|e| ActivationError::NotAUnixListener {
            fd,
            problem: format!("cannot make it non-blocking: {e}"),
        })?;
    Ok(Some(listener))
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
