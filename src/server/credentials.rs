//! The credential socket: systemd's `LoadCredential=ID:/run/hostkms/credentials.sock`
//! connects here at unit start, from a process in the unit's cgroup bound
//! to the abstract address `\0RANDOM/unit/UNIT/ID`, and reads the
//! credential to EOF. No protocol frame is ever read here.
//!
//! A connection is served only when its peer is uid 0, is bound to such an
//! address with a valid unit and id, and runs in that unit's cgroup (the
//! unit attributed through a pidfd, [`crate::peer`]); the service then
//! decides the grant and unwraps the file. Success: the plaintext is
//! written, the write side shut down, the connection closed (a clean EOF).
//!
//! Failure must never look like an empty credential. An `AF_UNIX` stream
//! has no reset the server can send: `SO_LINGER {on, 0}` does nothing on
//! it, and a close is an EOF to the reader, unless the reader had sent
//! bytes the server did not read (then the reader gets `ECONNRESET`).
//! systemd sends nothing (it shuts its write side down). So a refused root
//! peer is *held* and sent the [`refusal_filler`]: more bytes than systemd
//! accepts for one credential ([`SYSTEMD_CREDENTIAL_MAX`]), which fails the
//! unit at once (`E2BIG`, "Argument list too long"), then nothing until the
//! peer closes the connection, so that a reader without that limit fails at
//! its start timeout rather than on an EOF. A peer that is not root cannot
//! be systemd; it is closed at once. Connections being served are bounded
//! ([`MAX_CREDENTIAL_CONNECTIONS`]; past it, new ones wait in the backlog);
//! a held one gives its slot back and takes a hold, of which each peer
//! cgroup's unit has [`MAX_HELD_PER_UNIT`] and all together
//! [`MAX_HELD`]: past those, a refused connection is closed (the peers of
//! one unit cannot crowd out another unit's refusals, nor the deliveries).

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::UnixAddr;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::CredentialEvent;
use crate::service::{CredentialRefusal, Service};

/// Credential connections open at once, served or held; more wait in the
/// listen backlog until one closes.
pub const MAX_CREDENTIAL_CONNECTIONS: usize = 64;
/// Refused connections held open at once, all peers together.
pub const MAX_HELD: usize = 256;
/// Refused connections held open at once for the peers of one unit (by
/// their cgroup; those with none count as one).
pub const MAX_HELD_PER_UNIT: usize = 8;
/// How long a credential may take to be read by the peer.
pub const CREDENTIAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most systemd reads as one credential (its `CREDENTIAL_SIZE_MAX`,
/// also the budget of all of a unit's credentials together): a longer
/// answer fails the unit's start with `E2BIG`.
pub const SYSTEMD_CREDENTIAL_MAX: usize = 1024 * 1024;

/// What a refused root peer reads: one line naming the refusal event,
/// repeated to one byte past [`SYSTEMD_CREDENTIAL_MAX`]. systemd fails the
/// unit on it; anyone who sees it stored somewhere reads what happened.
pub fn refusal_filler() -> &'static [u8] {
    static FILLER: OnceLock<Vec<u8>> = OnceLock::new();
    FILLER.get_or_init(|| {
        let line = format!(
            "hostkms refused this credential: see journalctl MESSAGE_ID={}\n",
            crate::audit::CREDENTIAL_REFUSED
        );
        line.bytes()
            .cycle()
            .take(SYSTEMD_CREDENTIAL_MAX + 1)
            .collect()
    })
}

/// Serves the credential socket until `shutdown` is cancelled; credentials
/// are read from `directory`.
pub async fn serve_credentials(
    listener: &UnixListener,
    service: Arc<Service>,
    directory: PathBuf,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CREDENTIAL_CONNECTIONS));
    let holds = Arc::new(Holds::default());
    let connections = TaskTracker::new();
    let directory = Arc::new(directory);
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let service = Arc::clone(&service);
                let directory = Arc::clone(&directory);
                let shutdown = shutdown.clone();
                let holds = Arc::clone(&holds);
                connections.spawn(async move {
                    let refused = serve_one(&stream, &service, &directory).await;
                    drop(slot);
                    if let Some(unit) = refused {
                        if let Some(_held) = holds.take(unit) {
                            hold(&stream, &shutdown).await;
                        }
                    }
                });
            }
            Err(e) => super::accept_failed(&e, "a credential connection").await,
        }
    }
    super::drain(&connections, "credential connections").await;
}

/// The refused connections held open, by the unit of their peer's cgroup.
#[derive(Default)]
struct Holds {
    held: Mutex<HashMap<Option<String>, usize>>,
}

/// One held connection, counted in [`Holds`] until dropped.
struct Held<'a> {
    holds: &'a Holds,
    unit: Option<String>,
}

impl Holds {
    /// A hold for a refused peer of `unit`, unless that unit's peers or all
    /// together hold their limit.
    fn take(&self, unit: Option<String>) -> Option<Held<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = held.values().sum();
        let of_unit = held.get(&unit).copied().unwrap_or(0);
        if total >= MAX_HELD || of_unit >= MAX_HELD_PER_UNIT {
            tracing::warn!(
                unit = unit.as_deref().unwrap_or("(none)"),
                "closing a refused credential connection instead of holding it: {of_unit} held for its unit, {total} in all"
            );
            return None;
        }
        *held.entry(unit.clone()).or_insert(0) += 1;
        Some(Held { holds: self, unit })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.holds.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.unit) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.unit);
            }
        }
    }
}

/// One connection: the peer rule, then the delivery or the refusal.
/// Returns the unit of the peer's cgroup when the connection was refused
/// and must be held (its peer is root), `None` when it is done.
async fn serve_one(
    stream: &UnixStream,
    service: &Service,
    directory: &std::path::Path,
) -> Option<Option<String>> {
    let peer = match super::peer_of(stream) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("cannot read a credential connection's peer, closing it: {e}");
            return None;
        }
    };
    let held = Some(peer.unit.clone());
    let mut event = CredentialEvent {
        comm: peer.pid.and_then(comm_of),
        ..CredentialEvent::default()
    };
    let address = peer_address(stream);
    if let Ok((unit, id)) = &address {
        event.unit = Some(unit.clone());
        event.id = Some(id.clone());
    }
    if peer.uid != 0 {
        let refusal = CredentialRefusal::new(
            "not-root",
            format!(
                "uid {} is not root: only the service manager (root, in the unit's cgroup) receives credentials",
                peer.uid
            ),
        );
        service.credential_refused(&peer, &event, &refusal, true);
        // Not systemd: nothing to protect from an empty read.
        return None;
    }
    let (unit, id) = match address {
        Ok(named) => named,
        Err(problem) => {
            let refusal = CredentialRefusal::new("bad-address", problem);
            service.credential_refused(&peer, &event, &refusal, true);
            return held;
        }
    };
    if peer.unit.as_deref() != Some(unit.as_str()) {
        let actual = match (&peer.unit, peer.unit_unknown) {
            (Some(actual), _) => format!("runs in {actual}"),
            (None, Some(why)) => format!("has no unit ({})", why.as_str()),
            (None, None) => "has no unit".to_string(),
        };
        let refusal = CredentialRefusal::new(
            "unit-mismatch",
            format!(
                "the peer names unit {unit} but {actual}; credentials go only to the unit itself"
            ),
        );
        service.credential_refused(&peer, &event, &refusal, true);
        return held;
    }
    let plaintext = match service
        .deliver_credential(&peer, &unit, &id, directory, &mut event)
        .await
    {
        Ok(plaintext) => plaintext,
        Err(refusal) => {
            service.credential_refused(&peer, &event, &refusal, false);
            return held;
        }
    };
    let written =
        tokio::time::timeout(CREDENTIAL_WRITE_TIMEOUT, write_all(stream, &plaintext)).await;
    drop(plaintext);
    match written {
        Ok(Ok(())) => {
            service.credential_delivered(&peer, &event);
            None
        }
        Ok(Err(e)) => {
            let refusal = CredentialRefusal::new(
                "write-failed",
                format!("the credential could not be written: {e}"),
            );
            service.credential_refused(&peer, &event, &refusal, false);
            None
        }
        Err(_) => {
            let refusal = CredentialRefusal::new(
                "write-timeout",
                format!("the peer did not read the credential within {CREDENTIAL_WRITE_TIMEOUT:?}"),
            );
            service.credential_refused(&peer, &event, &refusal, false);
            // Part of it may be written: never end it with an EOF.
            held
        }
    }
}

/// Writes all of `bytes` to a shared stream, then shuts its write side
/// down: the peer reads the credential and then a clean EOF.
async fn write_all(stream: &UnixStream, bytes: &[u8]) -> io::Result<()> {
    write_bytes(stream, bytes).await?;
    nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .map_err(io::Error::from)
}

/// Writes all of `bytes` to a shared stream.
async fn write_bytes(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends a refused connection the [`refusal_filler`], then keeps it open,
/// writing nothing more, until the peer closes it or the daemon stops: its
/// close would be a clean EOF, which the service manager would take for an
/// empty credential. The filler fails systemd's read at once; a peer that
/// reads none of it holds its hold until it gives up.
async fn hold(stream: &UnixStream, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        // An error is the peer gone: the loop below sees it.
        _ = write_bytes(stream, refusal_filler()) => {}
    }
    loop {
        let ready = tokio::select! {
            () = shutdown.cancelled() => return,
            ready = stream.ready(Interest::WRITABLE) => ready,
        };
        match ready {
            Ok(ready) if !ready.is_write_closed() => {
                // Writable is not news; wait for the next change (the
                // peer's close sets write-closed).
                let _ = stream.try_io(Interest::WRITABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
            }
            _ => return,
        }
    }
}

/// The unit and credential id the peer's abstract address names:
/// `\0RANDOM/unit/UNIT/ID` (RANDOM without `/`), as systemd binds it.
fn peer_address(stream: &UnixStream) -> Result<(String, String), String> {
    let address: UnixAddr = nix::sys::socket::getpeername(stream.as_raw_fd())
        .map_err(|e| format!("cannot read the peer's address: {e}"))?;
    parse_address(address.as_abstract())
}

/// Parses the abstract name of a peer's address (without its leading NUL).
pub fn parse_address(name: Option<&[u8]>) -> Result<(String, String), String> {
    const FORM: &str = "systemd binds \\0RANDOM/unit/UNIT/ID";
    let name = name.ok_or_else(|| format!("the peer is bound to no abstract address ({FORM})"))?;
    let text = std::str::from_utf8(name)
        .map_err(|_| format!("the peer's address is not UTF-8 ({FORM})"))?;
    let shown: String = text.chars().take(300).collect();
    let malformed = || format!("the peer's address {shown:?} is not of the form {FORM}");
    let (random, rest) = text.split_once('/').ok_or_else(malformed)?;
    if random.is_empty() {
        return Err(malformed());
    }
    let rest = rest.strip_prefix("unit/").ok_or_else(malformed)?;
    let (unit, id) = rest.split_once('/').ok_or_else(malformed)?;
    agent_proto::credential::check_unit(unit)
        .and_then(|()| agent_proto::credential::check_credential(id))
        .map_err(|problem| format!("the peer's address {shown:?}: {problem}"))?;
    Ok((unit.to_string(), id.to_string()))
}

/// The name of process `pid` (`/proc/PID/comm`), for the audit: systemd's
/// helper that connects is `(sd-mkdcreds)` in v252.
fn comm_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|comm| comm.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn addresses_name_a_valid_unit_and_id_after_a_random_part() {
        assert_eq!(
            parse_address(Some(b"1f2e/unit/db.service/dbpass")),
            Ok(("db.service".to_string(), "dbpass".to_string()))
        );
        for bad in [
            None,
            Some(&b"1f2e/unit/db.service"[..]),
            Some(b"/unit/db.service/dbpass"),
            Some(b"1f2e/units/db.service/dbpass"),
            Some(b"1f2e/unit/db.service/dbpass/x"),
            Some(b"1f2e/unit/not a unit/dbpass"),
            Some(b"1f2e/unit/db.service/.."),
            Some(b"1f2e/unit/db.service/"),
            Some(b"1f2e/unit/db.service/a\nb"),
            Some(b"\xff/unit/db.service/dbpass"),
            Some(b"a/b/unit/db.service/dbpass"),
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }
}
