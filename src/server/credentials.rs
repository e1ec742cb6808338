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
//! systemd sends nothing (it shuts its write side down). So every refused
//! peer is sent the [`refusal_filler`]: one byte more than systemd accepts
//! for a credential ([`SYSTEMD_CREDENTIAL_MAX`]), which fails the unit at
//! once (`E2BIG`, "Argument list too long"); then the connection is closed.
//! A user's service manager (`systemd --user`, not root) reads the same way
//! and fails the same way.
//!
//! Bounds: at most [`MAX_CREDENTIAL_CONNECTIONS`] connections are served at
//! once, each keeping its slot until its credential or its filler is written
//! (or [`CREDENTIAL_WRITE_TIMEOUT`] passes); more wait in the listen
//! backlog. The peers of one unit (by their cgroup) get at most
//! [`MAX_REFUSING_PER_UNIT`] fillers at once: systemd loads one credential
//! of a unit at a time, so a unit past that is hoarding, and its further
//! refused connections are closed at once (logged once a minute per unit).
//! At shutdown nothing new is accepted, and fillers being written are
//! finished (within the write timeout), never cut short into an EOF.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::socket::UnixAddr;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::CredentialEvent;
use crate::service::{CredentialRefusal, Service};

/// Credential connections served at once (a credential or a refusal
/// being written); more wait in the listen backlog until one is done.
pub const MAX_CREDENTIAL_CONNECTIONS: usize = 64;
/// How systemd names the helper processes it forks (`(sd-mkdcreds)` loads
/// credentials in systemd 252): the connector on kernels that cannot name it.
pub const SYSTEMD_HELPER_PREFIX: &str = "(sd-";
/// Refusal fillers being written at once to the peers of one unit (by
/// their cgroup; those with none count as one unit).
pub const MAX_REFUSING_PER_UNIT: usize = 4;
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
    let refusing = Arc::new(Refusing::default());
    let connections = TaskTracker::new();
    let directory = Arc::new(directory);
    loop {
        // Biased: after shutdown, nothing more is accepted, whatever waits.
        let slot = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let service = Arc::clone(&service);
                let directory = Arc::clone(&directory);
                let refusing = Arc::clone(&refusing);
                connections.spawn(async move {
                    if let Some(unit) = serve_one(&stream, &service, &directory).await {
                        refuse(&stream, unit, &refusing).await;
                    }
                    drop(slot);
                });
            }
            Err(e) => super::accept_failed(&e, "a credential connection").await,
        }
    }
    super::drain(&connections, "credential connections").await;
}

/// The refusal fillers being written, by the unit of their peer's cgroup,
/// and when each unit's closed-at-once connections were last logged.
#[derive(Default)]
struct Refusing {
    state: Mutex<RefusingState>,
}

#[derive(Default)]
struct RefusingState {
    writing: HashMap<Option<String>, usize>,
    /// Per unit: when its hoarding was last logged, and the connections
    /// closed at once since.
    hoarding: HashMap<Option<String>, (Option<Instant>, u64)>,
}

/// One filler being written, counted in [`Refusing`] until dropped.
struct Writing<'a> {
    refusing: &'a Refusing,
    unit: Option<String>,
}

/// How often a unit's hoarding is logged.
const HOARDING_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Refusing {
    fn lock(&self) -> std::sync::MutexGuard<'_, RefusingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn to write a filler to a peer of `unit`, unless that unit's
    /// peers have [`MAX_REFUSING_PER_UNIT`] being written.
    fn take(&self, unit: Option<String>) -> Option<Writing<'_>> {
        let mut state = self.lock();
        let of_unit = state.writing.get(&unit).copied().unwrap_or(0);
        if of_unit >= MAX_REFUSING_PER_UNIT {
            let now = Instant::now();
            let entry = state.hoarding.entry(unit.clone()).or_insert((None, 0));
            entry.1 += 1;
            if entry
                .0
                .is_none_or(|at| now.duration_since(at) >= HOARDING_LOG_INTERVAL)
            {
                tracing::warn!(
                    unit = unit.as_deref().unwrap_or("(none)"),
                    "closing refused credential connections of {} without their filler: {} closed since this was last logged; its peers already had {MAX_REFUSING_PER_UNIT} refusals being written (systemd loads one credential of a unit at a time, so something in the unit is hoarding connections)",
                    unit.as_deref().unwrap_or("peers in no unit"),
                    entry.1
                );
                *entry = (Some(now), 0);
            }
            if state.hoarding.len() > 4096 {
                state.hoarding.retain(|_, (at, _)| {
                    at.is_some_and(|at| now.duration_since(at) < HOARDING_LOG_INTERVAL)
                });
            }
            return None;
        }
        *state.writing.entry(unit.clone()).or_insert(0) += 1;
        Some(Writing {
            refusing: self,
            unit,
        })
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut state = self.refusing.lock();
        if let Some(count) = state.writing.get_mut(&self.unit) {
            *count -= 1;
            if *count == 0 {
                state.writing.remove(&self.unit);
            }
        }
    }
}

/// Sends a refused peer of `unit` the [`refusal_filler`] (within the write
/// timeout, shutdown or not), then lets the connection close.
async fn refuse(stream: &UnixStream, unit: Option<String>, refusing: &Refusing) {
    let Some(_turn) = refusing.take(unit) else {
        return;
    };
    // An error or a timeout: the peer is gone or reads nothing (systemd
    // reads at once); either way the close follows.
    let _ = tokio::time::timeout(
        CREDENTIAL_WRITE_TIMEOUT,
        write_bytes(stream, refusal_filler()),
    )
    .await;
}

/// One connection: the peer rule, then the delivery or the refusal.
/// Returns the unit of the peer's cgroup when the connection was refused
/// (and must get the filler), `None` when the credential was delivered.
async fn serve_one(
    stream: &UnixStream,
    service: &Service,
    directory: &std::path::Path,
) -> Option<Option<String>> {
    let peer = match super::peer_of(stream) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("cannot read a credential connection's peer, refusing it: {e}");
            return Some(None);
        }
    };
    let refused = Some(peer.unit.clone());
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
        // A user's service manager reads credentials the same way.
        return refused;
    }
    let (unit, id) = match address {
        Ok(named) => named,
        Err(problem) => {
            let refusal = CredentialRefusal::new("bad-address", problem);
            service.credential_refused(&peer, &event, &refusal, true);
            return refused;
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
        return refused;
    }
    if !crate::peer::names_connector(stream) {
        // Before Linux 6.5 the unit is that of whatever process holds the
        // connector's pid now: a root process of another unit could
        // connect, exit, and have its pid taken by a process of UNIT. The
        // holder must then be what systemd's helper is: root, and named
        // "(sd-…)" (systemd 252: "(sd-mkdcreds)"). A process of UNIT that
        // takes the pid and is not root fails; one that is root in UNIT is
        // conceded anyway (it can ask for UNIT's credentials itself).
        let holder = peer.pid.and_then(crate::peer::pinned_comm_and_uid);
        let proven = holder
            .as_ref()
            .is_some_and(|(comm, uid)| *uid == 0 && comm.starts_with(SYSTEMD_HELPER_PREFIX));
        if !proven {
            let refusal = CredentialRefusal::new(
                "peer-unproven",
                format!(
                    "this kernel (before Linux 6.5, no SO_PEERPIDFD) names only the pid of the process that connected, which another process may have taken since; on such a kernel a credential goes only to a process like systemd's own helper (root, named \"{SYSTEMD_HELPER_PREFIX}…)\"), and pid {} is {}; LoadCredential= from systemd works, anything else needs Linux 6.5 or later",
                    peer.pid
                        .map_or_else(|| "?".to_string(), |pid| pid.to_string()),
                    holder.map_or_else(
                        || "gone".to_string(),
                        |(comm, uid)| format!("{comm:?} with uid {uid}")
                    )
                ),
            );
            service.credential_refused(&peer, &event, &refusal, true);
            return refused;
        }
    }
    let plaintext = match service
        .deliver_credential(&peer, &unit, &id, directory, &mut event)
        .await
    {
        Ok(plaintext) => plaintext,
        Err(refusal) => {
            service.credential_refused(&peer, &event, &refusal, false);
            return refused;
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
            // Part of it may be written: the filler follows, so that
            // systemd fails rather than stores a part.
            refused
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
