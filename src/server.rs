//! The socket server: binds the Unix socket, reads each peer's credentials,
//! frames requests and responses, and hands each request to the service.
//! It knows nothing of cryptography.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_proto::codec::{self, FrameBuf, LENGTH_PREFIX};
use agent_proto::{
    EncodeError, Envelope, ErrorCode, FrameError, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
    Response,
};
use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, FrameMemory, SlotLimits};
use crate::peer::Peer;
use crate::policy::PeerClass;
use crate::service::{Service, outcome_of};

pub mod credentials;

/// How long shutdown waits for connections to finish their current request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After refusing a bad frame, how long and how much unread input the
/// daemon discards before closing, so the client reads the refusal rather
/// than a connection reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// How long a refused connection has to send its first request, whose id
/// the `Busy` answer then carries.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Refused connections being answered at once; past this, a refusal is
/// written without waiting for the request (id 0), so that a flood of
/// connections cannot pile up waiting tasks.
const MAX_REFUSALS_IN_FLIGHT: usize = 512;
/// Connections accepted beyond the served and the refused ones: those whose
/// peer is being identified and admitted, or whose refusal is being written.
const ACCEPT_MARGIN: usize = 64;

/// The most connections the daemon holds open at once under
/// `max_connections`: served ones, refusals being answered, and a margin
/// for those being admitted. The accept loop waits for room past it, so a
/// flood of connections waits in the kernel's backlog instead of taking
/// every file descriptor (one per connection).
pub fn max_open_connections(max_connections: usize) -> usize {
    max_connections + MAX_REFUSALS_IN_FLIGHT + ACCEPT_MARGIN
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon answers on the socket path.
    #[error("another hostkmsd is already serving {}; stop it first, or give this one another socket path", path.display())]
    AlreadyServing {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("{} exists and is not a socket; hostkmsd will not delete it. Remove it or choose another socket path", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Binding or preparing the socket failed.
    #[error("cannot serve socket {}: {source}; check that its directory exists and is writable by the daemon's user", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The limits connections run under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame body read or written.
    pub max_frame: u32,
    /// Connections served at once; more are answered `Busy` and closed.
    pub max_connections: usize,
    /// Connections one non-admin uid may hold at once.
    pub max_connections_per_uid: usize,
    /// Slots of `max_connections` that only admins may take.
    pub admin_reserved_connections: usize,
    /// Connections all peers without a grant may hold together.
    pub max_ungranted_connections: usize,
    /// How long a connection may wait between requests before it is closed.
    pub idle_timeout: Duration,
    /// How long a frame may take to arrive once its first byte has, against
    /// clients that send slowly to hold connections.
    pub frame_timeout: Duration,
    /// How long an answer may wait for the client to read it, against
    /// clients that pipeline requests and never read the answers.
    pub write_timeout: Duration,
    /// Bytes all partly received frames may hold together beyond the first
    /// [`codec::BODY_STEP`] of each; a frame that needs more gets `Busy`.
    /// Frames of peers without a grant take none of it.
    pub max_frame_memory: usize,
}

impl Limits {
    fn slots(&self) -> SlotLimits {
        SlotLimits {
            max_connections: self.max_connections,
            max_connections_per_uid: self.max_connections_per_uid,
            admin_reserved_connections: self.admin_reserved_connections,
            max_ungranted_connections: self.max_ungranted_connections,
        }
    }
}

/// Limits that a reload may replace while connections are open: each
/// connection reads them afresh for every frame.
pub type LiveLimits = Arc<ArcSwap<Limits>>;

/// A periodic call from the accept loop itself, so that a service manager's
/// watchdog hears from the loop that serves, not from a side task that
/// would keep ticking while the loop is wedged.
pub struct Heartbeat {
    /// How often.
    pub every: Duration,
    /// What to call.
    pub beat: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// A socket this daemon bound; its path is removed again on drop, unless
/// something else has replaced it meanwhile.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl BoundSocket {
    /// Binds `path` with permission bits `mode` and, when given, group
    /// `gid`. A stale socket file (nobody answers on it) is replaced; a live
    /// one is an error.
    pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<BoundSocket, ServerError> {
        let bind_error = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        clear_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        // The daemon's umask (077) keeps the socket private until this runs.
        if let Some(gid) = gid {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| bind_error(io::Error::from(e)))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(bind_error)?;
        let meta = fs::metadata(path).map_err(bind_error)?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn clear_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::AlreadyServing {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale socket file nobody answers on");
            fs::remove_file(path).map_err(|source| ServerError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ServerError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Accepts connections until `shutdown` is cancelled, then waits (up to
/// [`DRAIN_TIMEOUT`]) for each connection to finish the request it is on.
/// `heartbeat`, when given, is called from this loop at its interval.
pub async fn serve(
    listener: &UnixListener,
    service: Arc<Service>,
    limits: LiveLimits,
    shutdown: CancellationToken,
    heartbeat: Option<Heartbeat>,
) {
    let connections = TaskTracker::new();
    let shared = Arc::new(Shared {
        admission: Admission::new(),
        frame_memory: FrameMemory::new(),
        refusing: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        closed: Notify::new(),
    });
    let mut beat = heartbeat.as_ref().map(|heartbeat| {
        let mut ticks = tokio::time::interval(heartbeat.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            () = next_beat(&mut beat) => {
                if let Some(heartbeat) = &heartbeat {
                    (heartbeat.beat)();
                }
                continue;
            }
            accepted = accept_with_room(listener, &shared, max_open_connections(limits.load().max_connections)) => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let service = Arc::clone(&service);
                let limits = Arc::clone(&limits);
                let open = OpenConnection::count(&shared);
                let shared = Arc::clone(&shared);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    serve_connection(stream, service, limits, shared, shutdown).await;
                    drop(open);
                });
            }
            Err(e) => accept_failed(&e, "a connection").await,
        }
    }
    drain(&connections, "connections").await;
}

/// Who is on the other end of an accepted connection (see [`Peer`]).
pub(crate) fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    Peer::of_socket(stream, cred.uid(), cred.gid(), cred.pid())
}

/// After a failed accept (out of file descriptors and the like): logs it
/// and waits a moment rather than spin.
pub(crate) async fn accept_failed(error: &io::Error, what: &str) {
    tracing::warn!("accepting {what} failed: {error}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// At the end of an accept loop: waits (up to [`DRAIN_TIMEOUT`]) for its
/// `connections` to finish what they are on.
pub(crate) async fn drain(connections: &TaskTracker, what: &str) {
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("{what} still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// The next tick of the heartbeat, or never when there is none.
async fn next_beat(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Accepts the next connection once fewer than `room` are open, waiting
/// for one to close before that (the backlog holds the rest meanwhile).
async fn accept_with_room(
    listener: &UnixListener,
    shared: &Shared,
    room: usize,
) -> io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
    while shared.open.load(Ordering::Acquire) >= room {
        // A close between the check and this wait leaves a stored permit,
        // so no wake-up is lost.
        shared.closed.notified().await;
    }
    listener.accept().await
}

/// What all connections share: their slots, the memory of their partly
/// received frames, the count of refusals being answered, and the count of
/// open connections with the signal that one closed.
struct Shared {
    admission: Arc<Admission>,
    frame_memory: Arc<FrameMemory>,
    refusing: AtomicUsize,
    open: AtomicUsize,
    closed: Notify,
}

/// One accepted connection, counted in [`Shared::open`] until dropped.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn count(shared: &Arc<Shared>) -> OpenConnection {
        shared.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(Arc::clone(shared))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_one();
    }
}

/// One refusal being answered, counted until dropped.
struct Refusing<'a>(&'a AtomicUsize);

impl Drop for Refusing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a refused connection why, as the answer to its first request:
/// reads that request's length prefix and id (waiting at most
/// [`REFUSAL_READ_TIMEOUT`], reading no more than that), answers it `Busy`
/// with its id, then lingers so the answer is not lost to a reset.
/// `refusing` counts the refusals being answered.
async fn refuse_busy(
    mut stream: UnixStream,
    refusing: &AtomicUsize,
    max_frame: u32,
    message: String,
) {
    let in_flight = refusing.fetch_add(1, Ordering::AcqRel);
    let _counted = Refusing(refusing);
    let head = if in_flight < MAX_REFUSALS_IN_FLIGHT {
        tokio::time::timeout(REFUSAL_READ_TIMEOUT, first_request_head(&mut stream))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let reply = rejection(head, ErrorCode::Busy, message);
    if let Ok(frame) = codec::encode_frame(&reply, max_frame) {
        if !matches!(
            tokio::time::timeout(LINGER, write_frame(&mut stream, &frame)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    if in_flight < MAX_REFUSALS_IN_FLIGHT {
        linger(&mut stream).await;
    }
}

/// The version and id of the request a connection sends first, read from
/// its first 14 bytes (length prefix, version, id) and nothing more; `None`
/// when they do not arrive or the frame is too short to hold an id.
async fn first_request_head(stream: &mut UnixStream) -> Option<RequestHead> {
    const ID_END: usize = LENGTH_PREFIX + 10;
    let mut head = [0u8; ID_END];
    let mut got = 0;
    while got < ID_END {
        match stream.read(&mut head[got..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    let (prefix, body) = head.split_at(LENGTH_PREFIX);
    let len = u32::from_be_bytes(prefix.try_into().ok()?);
    if len < 10 {
        return None;
    }
    Some(RequestHead {
        proto: Some(u16::from_le_bytes(body.get(..2)?.try_into().ok()?)),
        id: u64::from_le_bytes(body.get(2..10)?.try_into().ok()?),
    })
}

/// Serves one connection: requests are read, answered and written in order.
/// A bad frame is answered (when it can be) and ends this connection only.
///
/// The peer's class (admin, granted, ungranted) is decided twice from the
/// grants in force: at connect time for its slot, which keeps that class
/// until the connection closes (a reload does not move open connections
/// between shares; `idle_timeout` bounds how long that lasts), and afresh
/// for each frame, so that a peer granted by a reload may send large
/// requests on an open connection and one whose grant was removed may not.
async fn serve_connection(
    mut stream: UnixStream,
    service: Arc<Service>,
    limits: LiveLimits,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let peer = match peer_of(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("cannot read a connection's peer credentials, closing it: {e}");
            return;
        }
    };
    let current = **limits.load();
    let _slot = match shared
        .admission
        .admit(peer.uid, service.peer_class(&peer), &current.slots())
    {
        Ok(slot) => slot,
        Err(refusal) => {
            service.refused_connection(
                &peer,
                &format_args!("refusing a connection with Busy: {refusal}"),
            );
            let message = refusal.to_string();
            refuse_busy(stream, &shared.refusing, current.max_frame, message).await;
            return;
        }
    };
    loop {
        let limits = **limits.load();
        let mut prefix = [0u8; LENGTH_PREFIX];
        let got = tokio::select! {
            () = shutdown.cancelled() => return,
            read = tokio::time::timeout(limits.idle_timeout, stream.read(&mut prefix)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(got)) => got,
                Err(_) => {
                    tracing::debug!(uid = peer.uid, "closing a connection idle for {:?}", limits.idle_timeout);
                    return;
                }
            },
        };
        // A peer without a grant can send only Ping, Status and List: its
        // frames take no shared memory, and one larger than BODY_STEP is
        // refused rather than allowed to hold memory others need.
        let ungranted = service.peer_class(&peer) == PeerClass::Ungranted;
        let mut memory = if ungranted {
            shared.frame_memory.for_small_frame()
        } else {
            shared.frame_memory.for_frame(limits.max_frame_memory)
        };
        let frame = match tokio::time::timeout(
            limits.frame_timeout,
            codec::finish_frame_async(&mut stream, prefix, got, limits.max_frame, &mut memory),
        )
        .await
        {
            Ok(frame) => frame,
            Err(_) => {
                service.refused_connection(
                    &peer,
                    &format_args!(
                        "closing a connection whose frame did not arrive within {:?} (frame_timeout_secs)",
                        limits.frame_timeout
                    ),
                );
                return;
            }
        };
        let (reply, keep_open) = match frame {
            Ok(body) => answer(&body, &peer, &service, limits.max_frame).await,
            Err(FrameError::Decode(e)) => {
                service.refused_frame(&peer, e.code(), &e);
                (
                    Reply::Rejection(rejection(head_of(e.request_id()), e.code(), e.to_string())),
                    false,
                )
            }
            Err(FrameError::OutOfMemory { len, id, proto }) if ungranted => {
                let message = format!(
                    "uid {} holds no grant, so hostkmsd reads at most {} bytes of each of its \
                     requests (ping, status and list need less); this one has {len}. Ask the \
                     administrator for a grant if this program needs to use keys",
                    peer.uid,
                    codec::BODY_STEP
                );
                service.refused_frame(&peer, ErrorCode::PermissionDenied, &message);
                (
                    Reply::Rejection(rejection(
                        head_in(proto, id),
                        ErrorCode::PermissionDenied,
                        message,
                    )),
                    false,
                )
            }
            Err(FrameError::OutOfMemory { len, id, proto }) => {
                service.refused_connection(
                    &peer,
                    &format_args!(
                        "refused a {len}-byte frame with Busy: partly received frames hold {} of max_frame_memory {} bytes",
                        shared.frame_memory.held(),
                        limits.max_frame_memory
                    ),
                );
                let message = format!(
                    "hostkmsd holds its limit of {} bytes of partly received requests \
                     (max_frame_memory); send the request again later",
                    limits.max_frame_memory
                );
                (
                    Reply::Rejection(rejection(head_in(proto, id), ErrorCode::Busy, message)),
                    false,
                )
            }
            Err(FrameError::Truncated { .. }) | Err(FrameError::Io(_)) => return,
        };
        drop(memory);
        let frame = match reply {
            Reply::Encoded(Some(frame)) => frame,
            Reply::Rejection(rejection) => {
                match codec::encode_frame(&rejection, limits.max_frame) {
                    Ok(frame) => frame,
                    Err(_) => return,
                }
            }
            Reply::Encoded(None) => return,
        };
        match tokio::time::timeout(limits.write_timeout, write_frame(&mut stream, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("a client went away before its answer: {e}");
                return;
            }
            Err(_) => {
                service.refused_connection(
                    &peer,
                    &format_args!(
                        "closing a connection that did not read its answers within {:?} (write_timeout_secs)",
                        limits.write_timeout
                    ),
                );
                return;
            }
        }
        if !keep_open {
            linger(&mut stream).await;
            return;
        }
    }
}

/// Closes our side for writing, then discards what the client still sends
/// (bounded in time and bytes) so the refusal we wrote is not lost to a reset.
async fn linger(stream: &mut UnixStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let discard = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

/// What goes back for a frame: an answer already encoded (`None` when not
/// even an error could be), or a rejection of a frame that did not decode.
enum Reply {
    Encoded(Option<FrameBuf>),
    /// Boxed: a `Response` (with its `StatusInfo`) is far larger than a frame.
    Rejection(Box<Envelope<Response>>),
}

/// The version and id of a request, as far as they were read.
#[derive(Debug, Clone, Copy)]
struct RequestHead {
    proto: Option<u16>,
    id: u64,
}

/// The head of a request whose id (and nothing else) is known.
fn head_of(id: Option<u64>) -> Option<RequestHead> {
    head_in(None, id)
}

/// The head of a request whose id, and maybe version, are known.
fn head_in(proto: Option<u16>, id: Option<u64>) -> Option<RequestHead> {
    id.map(|id| RequestHead { proto, id })
}

/// Decodes a request body in its own protocol version, asks the service,
/// encodes the answer in that version and only then completes the
/// request's audit event, with the outcome the client gets. An
/// undecodable body gets an error reply and closes the connection, since
/// the stream is out of step.
async fn answer(body: &FrameBuf, peer: &Peer, service: &Service, max_frame: u32) -> (Reply, bool) {
    let request = match codec::decode_request(body) {
        Ok(request) => request,
        Err(e) => {
            service.refused_frame(peer, e.code(), &e);
            let head = e.request_id().map(|id| RequestHead {
                proto: body
                    .get(..2)
                    .and_then(|b| b.try_into().ok())
                    .map(u16::from_le_bytes),
                id,
            });
            return (
                Reply::Rejection(rejection(head, e.code(), e.to_string())),
                false,
            );
        }
    };
    let op = request.op.operation();
    let (response, audit) = service.decide(peer, request.op).await;
    let outcome = outcome_of(&response);
    let listed = match &response {
        Response::Keys(page) => Some(page.keys.len()),
        _ => None,
    };
    let reply = Envelope {
        proto: request.proto,
        id: request.id,
        op: response,
    };
    let frame = match codec::encode_response(reply, max_frame) {
        Ok(frame) => {
            service.complete(peer, audit, outcome);
            Some(frame)
        }
        Err(e) => {
            let unanswered = Unanswered {
                op,
                proto: request.proto,
                listed,
                changed_keys: audit.changed_keys(),
            };
            let (code, message) = unsendable(&e, &unanswered);
            service.complete_unsent(peer, audit, code);
            let head = RequestHead {
                proto: Some(request.proto),
                id: request.id,
            };
            codec::encode_frame(&rejection(Some(head), code, message), max_frame).ok()
        }
    };
    (Reply::Encoded(frame), true)
}

/// A decided request whose answer could not be encoded: what the error
/// that replaces the answer must say.
struct Unanswered {
    op: agent_proto::Operation,
    proto: u16,
    /// The keys of a `ListKeys` answer.
    listed: Option<usize>,
    /// The request changed the key store, and the change stands.
    changed_keys: bool,
}

/// The error that replaces an answer that cannot be encoded (the request's
/// audit event records it, under the per-peer flood limit: no log line of
/// its own, which a peer could repeat without bound): for a list of
/// keys over the frame limit, `FrameTooLarge` and what to do (page, a
/// smaller page, or a larger frame when one key alone does not fit); for a
/// key change that was made but whose answer is too large, `FrameTooLarge`
/// saying the change stands; for anything else, `Internal`.
fn unsendable(error: &EncodeError, request: &Unanswered) -> (ErrorCode, String) {
    let too_large = match error {
        EncodeError::TooLarge { len, max } => Some((*len, *max)),
        _ => None,
    };
    let raise = "raise max_frame in the daemon's config and the client's (hostkms --max-frame)";
    match (too_large, request.listed) {
        (Some((len, max)), Some(keys)) if request.proto == agent_proto::v1::VERSION => (
            ErrorCode::FrameTooLarge,
            format!(
                "the list of {keys} keys takes {len} bytes, more than the frame limit of \
                     {max} bytes (max_frame): it exceeds the frame. Use a client that speaks \
                     protocol 2, which lists keys in pages"
            ),
        ),
        (Some((len, max)), Some(keys)) if keys <= 1 => (
            ErrorCode::FrameTooLarge,
            format!(
                "the description of one key alone takes {len} bytes, more than the frame \
                     limit of {max} bytes (max_frame), so no page can hold it: {raise}"
            ),
        ),
        (Some((len, max)), Some(keys)) => (
            ErrorCode::FrameTooLarge,
            format!(
                "this page of {keys} keys takes {len} bytes, more than the frame limit of \
                     {max} bytes (max_frame); ask for fewer keys a page (limit)"
            ),
        ),
        (Some((len, max)), None) if request.changed_keys => (
            ErrorCode::FrameTooLarge,
            format!(
                "the {} was done and stands, but its answer (the key's description, {len} \
                     bytes) exceeds the frame limit of {max} bytes (max_frame): {raise} to \
                     see the key",
                request.op
            ),
        ),
        (Some((len, max)), None) => (
            ErrorCode::FrameTooLarge,
            format!(
                "the answer takes {len} bytes, more than the frame limit of {max} bytes \
                     (max_frame): {raise}"
            ),
        ),
        _ => {
            tracing::error!("cannot encode a response: {error}");
            (
                ErrorCode::Internal,
                format!("the response could not be sent: {error}"),
            )
        }
    }
}

/// An error answering a request that never reached the service. It goes in
/// the request's version when this daemon speaks it, else in the oldest:
/// `Error` has the same index and shape in every version, so any client
/// reads it.
fn rejection(
    head: Option<RequestHead>,
    code: ErrorCode,
    message: String,
) -> Box<Envelope<Response>> {
    let proto = head
        .and_then(|head| head.proto)
        .filter(|proto| (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(proto))
        .unwrap_or(OLDEST_PROTOCOL_VERSION);
    Box::new(Envelope {
        proto,
        id: head.map_or(0, |head| head.id),
        op: Response::error(code, message),
    })
}

async fn write_frame(stream: &mut UnixStream, frame: &[u8]) -> io::Result<()> {
    stream.write_all(frame).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests;
