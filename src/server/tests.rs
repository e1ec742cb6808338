//! The server in-process, on a Unix socket in a temporary directory, over
//! a service from the test seams (no TPM, no daemon binary): framing,
//! pipelining, the frame and memory limits, the connection caps, and the
//! timeouts.
//!
//! The timeout tests run on tokio's paused clock and move it with
//! [`tokio::time::advance`]: no test sleeps. Their clients are
//! non-blocking std sockets polled between `yield_now`s, never awaited: a
//! paused runtime that parks jumps its clock to the next timer, which
//! would move time on behind the test's back. The other tests run on the
//! real clock with timeouts far longer than they take.
//!
//! Peers are this process. When the tests run as root (uid 0, always an
//! admin), a thread that switches its own uid to `nobody` connects as the
//! non-admin peer; otherwise the tests' own uid is that peer, and the tests
//! that need two identities at once say so and do nothing.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_proto::codec::{self, BODY_STEP, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{Envelope, ErrorCode, Request, Response, SecretBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::admission;
use crate::policy::{GrantConfig, Policy};
use crate::service::testing::TestServiceBuilder;

/// The protocol version the test frames are sent in, which the server
/// answers in.
const V1: u16 = 1;
/// How long a real-clock test waits for an answer before it fails: far
/// beyond what any answer takes.
const PATIENCE: Duration = Duration::from_secs(60);
/// `yield_now`s a paused-clock client waits for the server to act.
const SETTLE_YIELDS: usize = 200;

/// Limits no test reaches unless it lowers them.
fn limits() -> Limits {
    Limits {
        max_frame: DEFAULT_MAX_FRAME,
        max_connections: 32,
        max_connections_per_uid: 16,
        admin_reserved_connections: 4,
        max_ungranted_connections: 8,
        idle_timeout: Duration::from_secs(30),
        frame_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(10),
        max_frame_memory: 32 << 20,
    }
}

/// The uid a thread of this process can switch to, to connect as a peer
/// that is neither this process's uid nor an admin: `nobody`, when the
/// tests run as root and may change uids (not, say, root in a user
/// namespace that maps no `nobody`).
fn switched_uid() -> Option<u32> {
    static SWITCHED: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *SWITCHED.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        std::thread::spawn(|| switch_thread_uid(NOBODY).ok().map(|()| NOBODY))
            .join()
            .ok()
            .flatten()
    })
}

/// `nobody`, the peer a root test process connects as.
const NOBODY: u32 = 65534;

/// The uid of the non-admin peer: [`switched_uid`], or else the tests'
/// own uid when that is not root; `None` when neither is possible.
fn user_uid() -> Option<u32> {
    let own = nix::unistd::geteuid();
    switched_uid().or((!own.is_root()).then_some(own.as_raw()))
}

/// Says why a test that needs `what` does nothing here.
fn skipped(what: &str) {
    eprintln!(
        "skipped: needs {what}; uid {} cannot connect as another uid",
        nix::unistd::geteuid()
    );
}

/// A grant of every key operation on every key, and of the metrics, to `uid`
/// (but `credential`, which only a grant to units may name).
fn grant_all(uid: u32) -> GrantConfig {
    GrantConfig {
        keys: vec!["*".to_string()],
        uids: vec![uid],
        ops: crate::policy::GRANTABLE
            .iter()
            .filter(|&&op| op != agent_proto::Operation::Credential)
            .map(|op| op.as_str())
            .chain([crate::policy::METRICS])
            .map(str::to_string)
            .collect(),
        ..GrantConfig::default()
    }
}

/// A server on a socket in a temporary directory; stops when dropped.
struct Harness {
    socket: PathBuf,
    limits: LiveLimits,
    shutdown: CancellationToken,
    served: Option<JoinHandle<()>>,
    beats: Arc<AtomicUsize>,
    _tmp: tempfile::TempDir,
}

impl Harness {
    /// A server under `grants` and `limits`; the tests' own uid is granted
    /// every operation (as root it is an admin anyway).
    async fn start(grants: &[GrantConfig], limits: Limits) -> Harness {
        Harness::start_with(grants, limits, None).await
    }

    /// [`Harness::start`], with a heartbeat every `beat` when given.
    async fn start_with(grants: &[GrantConfig], limits: Limits, beat: Option<Duration>) -> Harness {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The non-admin peer (nobody) must reach the socket.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut grants = grants.to_vec();
        grants.push(grant_all(nix::unistd::geteuid().as_raw()));
        let (policy, _) = Policy::new(&grants, &[]).expect("grants resolve");
        let service = TestServiceBuilder::new()
            .build(&tmp.path().join("state"), policy)
            .expect("test service");
        let socket = tmp.path().join("hostkms.sock");
        let bound = BoundSocket::bind(&socket, 0o666, None).expect("bind");
        let limits: LiveLimits = Arc::new(ArcSwap::from_pointee(limits));
        let shutdown = CancellationToken::new();
        let beats = Arc::new(AtomicUsize::new(0));
        let heartbeat = beat.map(|every| {
            let beats = Arc::clone(&beats);
            Heartbeat {
                every,
                beat: Box::new(move || {
                    beats.fetch_add(1, Ordering::Relaxed);
                }),
            }
        });
        let served = tokio::spawn({
            let (limits, shutdown) = (Arc::clone(&limits), shutdown.clone());
            async move {
                serve(
                    bound.listener(),
                    Arc::new(service),
                    limits,
                    shutdown,
                    heartbeat,
                )
                .await;
                drop(bound);
            }
        });
        Harness {
            socket,
            limits,
            shutdown,
            served: Some(served),
            beats,
            _tmp: tmp,
        }
    }

    /// A connection of this process (as root: an admin).
    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).await.expect("connect")
    }

    /// A connection as `uid` (see [`connect_as`]).
    fn connect_user(&self, uid: u32) -> UnixStream {
        let stream = connect_as(&self.socket, uid);
        stream.set_nonblocking(true).expect("nonblocking");
        UnixStream::from_std(stream).expect("register")
    }

    /// A non-blocking std connection of this process, for the paused clock.
    fn connect_std(&self) -> StdStream {
        let stream = StdStream::connect(&self.socket).expect("connect");
        stream.set_nonblocking(true).expect("nonblocking");
        stream
    }

    /// Replaces the limits in force, as a reload does.
    fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served.abort();
        }
    }
}

/// Connects to `socket` as `uid`. A uid other than this process's needs
/// root: a short-lived thread switches its own credentials (only its own:
/// the raw system call, not libc's process-wide `setresuid`) and connects,
/// so the kernel records that uid as the peer's.
fn connect_as(socket: &Path, uid: u32) -> StdStream {
    if uid == nix::unistd::geteuid().as_raw() {
        return StdStream::connect(socket).expect("connect");
    }
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        switch_thread_uid(uid).expect("setresuid");
        StdStream::connect(&socket).expect("connect as another uid")
    })
    .join()
    .expect("the connecting thread")
}

/// Switches the calling thread's (and only its) uids to `uid`: the raw
/// system call, not libc's `setresuid`, which changes every thread. For a
/// thread that ends right after.
fn switch_thread_uid(uid: u32) -> std::io::Result<()> {
    // SAFETY: setresuid takes three integers and touches no memory of
    // this process; as a raw system call it changes the credentials of the
    // calling thread alone.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_setresuid,
            libc::c_long::from(uid),
            libc::c_long::from(uid),
            0 as libc::c_long,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The frame of `request` with id `id`, in protocol version 1 (as a
/// version-1 client sends it; the server answers in the same version).
fn frame(id: u64, request: Request) -> Vec<u8> {
    frame_in(V1, id, request)
}

/// The frame of `request` with id `id` in protocol version `proto`.
fn frame_in(proto: u16, id: u64, request: Request) -> Vec<u8> {
    codec::encode_request(
        Envelope {
            proto,
            id,
            op: request,
        },
        DEFAULT_MAX_FRAME,
    )
    .expect("encode")
    .to_vec()
}

/// A frame of a `Wrap` whose body is exactly `body_len` bytes.
fn wrap_frame_of(id: u64, body_len: usize) -> Vec<u8> {
    let wrap = |len: usize| Request::Wrap {
        key: "k".to_string(),
        plaintext: SecretBytes::new(vec![0x42; len]),
        context: Default::default(),
    };
    let overhead = frame(id, wrap(0)).len() - LENGTH_PREFIX;
    let frame = frame(id, wrap(body_len - overhead));
    assert_eq!(frame.len(), LENGTH_PREFIX + body_len);
    frame
}

/// A raw frame: the length prefix of `body`, then `body`.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// An envelope head: protocol version 1 and `id`, as a body starts.
fn head(proto: u16, id: u64) -> Vec<u8> {
    let mut body = proto.to_le_bytes().to_vec();
    body.extend_from_slice(&id.to_le_bytes());
    body
}

fn decode(body: &[u8]) -> Envelope<Response> {
    codec::decode_response(body).expect("a response the client decodes")
}

/// A `Pong` answering a version-1 `Ping` with `id`.
fn pong(id: u64) -> Envelope<Response> {
    Envelope {
        proto: V1,
        id,
        op: Response::Pong,
    }
}

/// An error answer in version 1 with `id`.
fn error(id: u64, code: ErrorCode, message: &str) -> Envelope<Response> {
    Envelope {
        proto: V1,
        id,
        op: Response::error(code, message),
    }
}

/// The next answer on `stream`, or `None` at the end of the stream.
async fn next(stream: &mut UnixStream) -> Option<Envelope<Response>> {
    let frame = tokio::time::timeout(PATIENCE, codec::read_frame_async(stream, DEFAULT_MAX_FRAME))
        .await
        .expect("an answer or the end, in time")
        .expect("a whole frame");
    frame.map(|body| decode(&body))
}

async fn reply(stream: &mut UnixStream) -> Envelope<Response> {
    next(stream).await.expect("an answer, not the end")
}

/// Asserts the server has closed `stream`: nothing more, then the end.
async fn assert_closed(stream: &mut UnixStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the end, in time");
    match read {
        Ok(_) => assert!(rest.is_empty(), "{} more bytes", rest.len()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

async fn send(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("send");
}

async fn ping(stream: &mut UnixStream, id: u64) {
    send(stream, &frame(id, Request::Ping)).await;
    assert_eq!(reply(stream).await, pong(id));
}

fn key_of(envelope: Envelope<Response>) -> agent_proto::KeyInfo {
    match envelope.op {
        Response::Key(info) => info,
        other => panic!("expected Key, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_is_answered_in_its_envelope() {
    let server = Harness::start(&[], limits()).await;
    let mut stream = server.connect().await;
    ping(&mut stream, 7).await;
    send(
        &mut stream,
        &frame(
            u64::MAX,
            Request::CreateKey {
                name: "k".into(),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: Default::default(),
            },
        ),
    )
    .await;
    let answer = reply(&mut stream).await;
    assert_eq!((answer.proto, answer.id), (V1, u64::MAX));
    let info = key_of(answer);
    assert_eq!((info.name.as_str(), info.latest_version), ("k", 1));
    send(&mut stream, &frame(0, Request::Status)).await;
    let status = reply(&mut stream).await;
    assert_eq!(status.id, 0);
    let Response::Status(status) = status.op else {
        panic!("expected Status");
    };
    assert_eq!(status.counters["keys"], 1);
    // The same connection may speak the current version: each request is
    // answered in its own.
    send(
        &mut stream,
        &frame_in(
            PROTOCOL_VERSION,
            8,
            Request::DescribeKey { key: "k".into() },
        ),
    )
    .await;
    let answer = reply(&mut stream).await;
    assert_eq!((answer.proto, answer.id), (PROTOCOL_VERSION, 8));
    assert_eq!(key_of(answer).name, "k");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_errors_keep_the_connection() {
    let server = Harness::start(&[], limits()).await;
    let mut stream = server.connect().await;
    let describe = |key: &str| Request::DescribeKey { key: key.into() };
    let requests = [
        Request::CreateKey {
            name: "k".into(),
            key_type: agent_proto::KeyType::Aes256Gcm,
            settings: Default::default(),
        },
        Request::Wrap {
            key: "k".into(),
            plaintext: SecretBytes::new(b"x".to_vec()),
            context: Default::default(),
        },
        describe("k"),
        Request::Ping,
        describe("nope"),
        Request::Rotate { key: "k".into() },
        describe("k"),
    ];
    let frames: Vec<u8> = requests
        .into_iter()
        .zip(100..)
        .flat_map(|(request, id)| frame(id, request))
        .collect();
    send(&mut stream, &frames).await;
    let answers: Vec<Envelope<Response>> = {
        let mut answers = Vec::new();
        for _ in 0..7 {
            answers.push(reply(&mut stream).await);
        }
        answers
    };
    let ids: Vec<u64> = answers.iter().map(|a| a.id).collect();
    assert_eq!(ids, (100..107).collect::<Vec<_>>());
    let mut answers = answers.into_iter();
    assert_eq!(key_of(answers.next().unwrap()).latest_version, 1);
    assert!(matches!(answers.next().unwrap().op, Response::Wrapped(ref w) if w.version == 1));
    assert_eq!(key_of(answers.next().unwrap()).versions[0].encryptions, 1);
    assert_eq!(answers.next().unwrap(), pong(103));
    assert_eq!(
        answers.next().unwrap(),
        error(104, ErrorCode::KeyNotFound, "no key named \"nope\"")
    );
    assert_eq!(key_of(answers.next().unwrap()).latest_version, 2);
    assert_eq!(key_of(answers.next().unwrap()).latest_version, 2);
    ping(&mut stream, 107).await;
}

#[tokio::test]
async fn a_frame_over_max_frame_is_refused_and_ends_the_connection() {
    let server = Harness::start(
        &[],
        Limits {
            max_frame: 4096,
            ..limits()
        },
    )
    .await;
    let mut stream = server.connect().await;
    // A frame of exactly max_frame is read and answered.
    send(&mut stream, &wrap_frame_of(1, 4096)).await;
    assert_eq!(
        reply(&mut stream).await,
        error(1, ErrorCode::KeyNotFound, "no key named \"k\"")
    );
    // One byte more is refused from its length prefix alone.
    send(&mut stream, &4097u32.to_be_bytes()).await;
    assert_eq!(
        reply(&mut stream).await,
        error(
            0,
            ErrorCode::FrameTooLarge,
            "frame of 4097 bytes exceeds the limit of 4096 bytes"
        )
    );
    assert_closed(&mut stream).await;

    // A reload applies to open connections.
    let mut stream = server.connect().await;
    send(&mut stream, &wrap_frame_of(2, 4096)).await;
    assert_eq!(reply(&mut stream).await.id, 2);
    server.set_limits(Limits {
        max_frame: 4095,
        ..limits()
    });
    // The connection took the limits for its next frame as it began to
    // wait for it: the reload applies from the frame after.
    send(&mut stream, &wrap_frame_of(3, 4096)).await;
    assert_eq!(reply(&mut stream).await.id, 3);
    send(&mut stream, &wrap_frame_of(4, 4096)).await;
    assert_eq!(
        reply(&mut stream).await,
        error(
            0,
            ErrorCode::FrameTooLarge,
            "frame of 4096 bytes exceeds the limit of 4095 bytes"
        )
    );
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn a_truncated_frame_ends_the_connection_without_an_answer() {
    let server = Harness::start(&[], limits()).await;
    let whole = frame(9, Request::Ping);
    let cases: [(&str, Vec<u8>, usize); 4] = [
        ("half a length prefix", whole[..2].to_vec(), 0),
        ("a prefix alone", whole[..LENGTH_PREFIX].to_vec(), 0),
        ("half a body", whole[..whole.len() - 3].to_vec(), 0),
        (
            "a whole frame, then half of one",
            [&whole[..], &whole[..6]].concat(),
            1,
        ),
    ];
    for (case, bytes, answered) in cases {
        let mut stream = server.connect().await;
        send(&mut stream, &bytes).await;
        stream.shutdown().await.expect("shut down writing");
        for _ in 0..answered {
            assert_eq!(reply(&mut stream).await, pong(9), "{case}");
        }
        assert_closed(&mut stream).await;
    }
    // Other connections are unaffected.
    let mut stream = server.connect().await;
    ping(&mut stream, 10).await;
}

#[tokio::test]
async fn an_undecodable_body_is_refused_with_its_id_and_ends_the_connection() {
    let server = Harness::start(&[], limits()).await;
    let mut create_truncated = head(V1, 42);
    create_truncated.extend_from_slice(&2u32.to_le_bytes()); // CreateKey
    create_truncated.extend_from_slice(&1000u64.to_le_bytes()); // a name of 1000 bytes, absent
    let mut trailing = frame(43, Request::Ping)[LENGTH_PREFIX..].to_vec();
    trailing.push(0);
    let cases: [(&str, Vec<u8>, ErrorCode, u64); 4] = [
        (
            "a truncated request",
            create_truncated,
            ErrorCode::BadRequest,
            42,
        ),
        ("trailing bytes", trailing, ErrorCode::BadRequest, 43),
        (
            "a body too short for an id",
            vec![1],
            ErrorCode::BadRequest,
            0,
        ),
        (
            "an unknown version",
            head(999, 44),
            ErrorCode::UnsupportedVersion,
            44,
        ),
    ];
    for (case, body, code, id) in cases {
        let mut stream = server.connect().await;
        ping(&mut stream, 1).await;
        send(&mut stream, &raw_frame(&body)).await;
        let answer = reply(&mut stream).await;
        assert_eq!((answer.proto, answer.id), (V1, id), "{case}");
        match answer.op {
            Response::Error(reply) => {
                assert_eq!(reply.code, code, "{case}: {}", reply.message);
                assert!(!reply.message.is_empty());
            }
            other => panic!("{case}: expected an error, got {other:?}"),
        }
        assert_closed(&mut stream).await;
    }
}

#[tokio::test]
async fn a_frame_past_the_shared_frame_memory_is_answered_busy() {
    let server = Harness::start(
        &[],
        Limits {
            max_frame_memory: 0,
            ..limits()
        },
    )
    .await;
    let mut stream = server.connect().await;
    // The first BODY_STEP bytes of every frame are free.
    send(&mut stream, &wrap_frame_of(1, BODY_STEP)).await;
    assert_eq!(reply(&mut stream).await.id, 1);
    send(&mut stream, &wrap_frame_of(2, BODY_STEP + 1)).await;
    assert_eq!(
        reply(&mut stream).await,
        error(
            2,
            ErrorCode::Busy,
            "hostkmsd holds its limit of 0 bytes of partly received requests (max_frame_memory); send the request again later"
        )
    );
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn a_peer_without_a_grant_may_send_only_small_frames() {
    let Some(uid) = switched_uid() else {
        return skipped("a peer without a grant");
    };
    let server = Harness::start(&[], limits()).await;
    let mut stream = server.connect_user(uid);
    ping(&mut stream, 1).await;
    send(&mut stream, &wrap_frame_of(2, BODY_STEP)).await;
    assert_eq!(
        reply(&mut stream).await,
        error(
            2,
            ErrorCode::PermissionDenied,
            &format!("uid {uid} may not wrap with key \"k\"")
        ),
        "a frame of BODY_STEP is read"
    );
    let len = BODY_STEP + 1;
    send(&mut stream, &wrap_frame_of(3, len)).await;
    assert_eq!(
        reply(&mut stream).await,
        error(
            3,
            ErrorCode::PermissionDenied,
            &format!(
                "uid {uid} holds no grant, so hostkmsd reads at most {BODY_STEP} bytes of each of its requests (ping, status and list need less); this one has {len}. Ask the administrator for a grant if this program needs to use keys"
            )
        )
    );
    assert_closed(&mut stream).await;
    // A granted peer's frame of that size is read.
    let server = Harness::start(&[grant_all(uid)], limits()).await;
    let mut stream = server.connect_user(uid);
    send(&mut stream, &wrap_frame_of(4, len)).await;
    assert_eq!(
        reply(&mut stream).await,
        error(4, ErrorCode::KeyNotFound, "no key named \"k\"")
    );
}

/// The `Busy` answer a refused connection gets to its first request.
async fn refused(stream: &mut UnixStream, id: u64, refusal: admission::Refusal) {
    send(stream, &frame(id, Request::Ping)).await;
    assert_eq!(
        reply(stream).await,
        error(id, ErrorCode::Busy, &refusal.to_string())
    );
    assert_closed(stream).await;
}

#[tokio::test]
async fn one_uid_may_hold_max_connections_per_uid() {
    let Some(uid) = user_uid() else {
        return skipped("a peer that is no admin");
    };
    let server = Harness::start(
        &[grant_all(uid)],
        Limits {
            max_connections_per_uid: 2,
            ..limits()
        },
    )
    .await;
    let mut first = server.connect_user(uid);
    ping(&mut first, 1).await;
    let mut second = server.connect_user(uid);
    ping(&mut second, 2).await;
    let mut third = server.connect_user(uid);
    refused(&mut third, 3, admission::Refusal::PerUid { uid, max: 2 }).await;
    // The held connections still work, and a slot given back is taken again.
    ping(&mut first, 4).await;
    drop(second);
    let mut fourth = loop {
        let mut stream = server.connect_user(uid);
        send(&mut stream, &frame(5, Request::Ping)).await;
        match reply(&mut stream).await.op {
            Response::Pong => break stream,
            // The server may not have seen the close yet.
            Response::Error(e) if e.code == ErrorCode::Busy => tokio::task::yield_now().await,
            other => panic!("{other:?}"),
        }
    };
    ping(&mut fourth, 6).await;
}

#[tokio::test]
async fn peers_without_a_grant_share_max_ungranted_connections() {
    let Some(uid) = switched_uid() else {
        return skipped("a peer without a grant");
    };
    let ungranted = |max| Limits {
        max_ungranted_connections: max,
        ..limits()
    };
    let server = Harness::start(&[], ungranted(1)).await;
    let mut first = server.connect_user(uid);
    ping(&mut first, 1).await;
    let mut second = server.connect_user(uid);
    refused(
        &mut second,
        2,
        admission::Refusal::Ungranted { uid, max: 1 },
    )
    .await;
    // An admin (or granted peer) is not counted against that share.
    let mut admin = server.connect().await;
    ping(&mut admin, 3).await;

    let server = Harness::start(&[], ungranted(0)).await;
    let mut stream = server.connect_user(uid);
    refused(
        &mut stream,
        4,
        admission::Refusal::Ungranted { uid, max: 0 },
    )
    .await;
}

#[tokio::test]
async fn the_last_slots_are_for_admins_and_every_slot_counts() {
    let Some(uid) = switched_uid() else {
        return skipped("an admin and a peer that is no admin");
    };
    let server = Harness::start(
        &[grant_all(uid)],
        Limits {
            max_connections: 3,
            admin_reserved_connections: 1,
            ..limits()
        },
    )
    .await;
    let mut held = Vec::new();
    for id in 1..=2 {
        let mut stream = server.connect_user(uid);
        ping(&mut stream, id).await;
        held.push(stream);
    }
    let mut third = server.connect_user(uid);
    refused(
        &mut third,
        3,
        admission::Refusal::ReservedForAdmins {
            max: 3,
            reserved: 1,
        },
    )
    .await;
    let mut admin = server.connect().await;
    ping(&mut admin, 4).await;
    let mut another_admin = server.connect().await;
    refused(&mut another_admin, 5, admission::Refusal::Full { max: 3 }).await;
    for stream in &mut held {
        ping(stream, 6).await;
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_ends_serve() {
    let mut server = Harness::start(&[], limits()).await;
    let mut stream = server.connect().await;
    ping(&mut stream, 1).await;
    server.shutdown.cancel();
    assert_closed(&mut stream).await;
    let served = server.served.take().expect("serving");
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("serve returns once its connections are closed")
        .expect("serve did not panic");
    assert!(
        StdStream::connect(&server.socket).is_err(),
        "nobody listens any more"
    );
}

// The paused clock. Clients are non-blocking std sockets; nothing here
// awaits anything that parks the runtime.

/// Lets the server act on what the clock and the sockets say now.
async fn settle() {
    for _ in 0..SETTLE_YIELDS {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock on by `by`, and lets the server act.
async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    settle().await;
}

/// What a non-blocking client finds on its socket now.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing to read, and the server has not closed.
    Nothing,
    /// Bytes to read.
    Data,
    /// The server closed the connection.
    Closed,
}

fn seen(stream: &StdStream) -> Seen {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match recv(
        stream.as_fd().as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) | Err(nix::errno::Errno::ECONNRESET) => Seen::Closed,
        Ok(_) => Seen::Data,
        Err(nix::errno::Errno::EAGAIN) => Seen::Nothing,
        Err(e) => panic!("recv: {e}"),
    }
}

/// Reads one answer from a non-blocking client, letting the server act
/// (without moving the clock) until it is there.
async fn settled_reply(stream: &mut StdStream) -> Envelope<Response> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    // Real time, not the paused clock: the server may wait for the blocking
    // pool (a key-store write), which does not move the paused clock.
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if bytes.len() >= LENGTH_PREFIX {
            let len = u32::from_be_bytes(bytes[..LENGTH_PREFIX].try_into().unwrap()) as usize;
            if bytes.len() >= LENGTH_PREFIX + len {
                assert_eq!(bytes.len(), LENGTH_PREFIX + len, "one answer, no more");
                return decode(&bytes[LENGTH_PREFIX..]);
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => tokio::task::yield_now().await,
            Err(e) => panic!("read: {e}"),
        }
    }
    panic!("no whole answer: {} bytes", bytes.len());
}

async fn settled_ping(stream: &mut StdStream, id: u64) {
    stream.write_all(&frame(id, Request::Ping)).expect("send");
    assert_eq!(settled_reply(stream).await, pong(id));
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_idle_timeout() {
    let server = Harness::start(&[], limits()).await;
    let mut stream = server.connect_std();
    settled_ping(&mut stream, 1).await;
    advance(Duration::from_secs(29)).await;
    assert_eq!(seen(&stream), Seen::Nothing, "open before idle_timeout");
    // A request starts the wait afresh.
    settled_ping(&mut stream, 2).await;
    advance(Duration::from_secs(29)).await;
    assert_eq!(seen(&stream), Seen::Nothing);
    advance(Duration::from_secs(2)).await;
    assert_eq!(seen(&stream), Seen::Closed, "closed after idle_timeout");
}

#[tokio::test(start_paused = true)]
async fn a_frame_must_arrive_whole_within_frame_timeout() {
    let server = Harness::start(&[], limits()).await;
    let whole = frame(1, Request::Ping);
    for (case, part) in [("a prefix", 2), ("a body", whole.len() - 1)] {
        let mut stream = server.connect_std();
        settled_ping(&mut stream, 1).await;
        stream.write_all(&whole[..part]).expect("send");
        settle().await;
        advance(Duration::from_secs(4)).await;
        assert_eq!(
            seen(&stream),
            Seen::Nothing,
            "{case}: open before frame_timeout"
        );
        advance(Duration::from_secs(2)).await;
        assert_eq!(
            seen(&stream),
            Seen::Closed,
            "{case}: closed after frame_timeout"
        );
    }
    // A slow frame that arrives in time is answered.
    let mut stream = server.connect_std();
    stream.write_all(&whole[..3]).expect("send");
    settle().await;
    advance(Duration::from_secs(4)).await;
    stream.write_all(&whole[3..]).expect("send");
    assert_eq!(settled_reply(&mut stream).await, pong(1));
}

/// Writes as much of `bytes` (from `*sent` on) as the socket takes now.
fn write_some(stream: &mut StdStream, bytes: &[u8], sent: &mut usize) -> std::io::Result<()> {
    while *sent < bytes.len() {
        match stream.write(&bytes[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_its_answers_is_closed_after_write_timeout() {
    let server = Harness::start(&[], limits()).await;
    let mut stream = server.connect_std();
    // Big answers, pipelined and never read, until the server is stuck
    // writing one and the client cannot send any more.
    let create = frame(
        1,
        Request::CreateKey {
            name: "k".into(),
            key_type: agent_proto::KeyType::Aes256Gcm,
            settings: Default::default(),
        },
    );
    stream.write_all(&create).expect("send");
    let Response::Key(_) = settled_reply(&mut stream).await.op else {
        panic!("create");
    };
    // The first wrap persists the count's reservation (on the blocking
    // pool); the pipelined ones need no more of that.
    stream.write_all(&wrap_frame_of(2, 100)).expect("send");
    let Response::Wrapped(_) = settled_reply(&mut stream).await.op else {
        panic!("wrap");
    };
    let big = wrap_frame_of(3, 60_000);
    let pipeline: Vec<u8> = std::iter::repeat_n(&big[..], 64)
        .flatten()
        .copied()
        .collect();
    let mut sent = 0;
    let mut stalled = 0;
    while stalled < 3 {
        let before = sent;
        write_some(&mut stream, &pipeline, &mut sent).expect("send");
        settle().await;
        stalled = if sent == before { stalled + 1 } else { 0 };
    }
    assert!(
        sent < pipeline.len(),
        "the server stopped reading: {sent} bytes sent"
    );
    advance(Duration::from_secs(9)).await;
    assert!(
        write_some(&mut stream, &pipeline, &mut sent).is_ok(),
        "open before write_timeout"
    );
    advance(Duration::from_secs(2)).await;
    let after = write_some(&mut stream, &pipeline, &mut sent);
    assert!(
        matches!(&after, Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)),
        "closed after write_timeout: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_that_sends_nothing_is_answered_busy_after_two_seconds() {
    let server = Harness::start(
        &[],
        Limits {
            max_connections: 1,
            admin_reserved_connections: 0,
            ..limits()
        },
    )
    .await;
    let mut held = server.connect_std();
    settled_ping(&mut held, 1).await;
    let mut refused = server.connect_std();
    settle().await;
    advance(Duration::from_millis(1900)).await;
    assert_eq!(seen(&refused), Seen::Nothing, "waiting for a request id");
    advance(Duration::from_millis(200)).await;
    assert_eq!(
        settled_reply(&mut refused).await,
        error(
            0,
            ErrorCode::Busy,
            &admission::Refusal::Full { max: 1 }.to_string()
        )
    );
    settled_ping(&mut held, 2).await;
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_beats_from_the_accept_loop_at_its_interval() {
    let server = Harness::start_with(&[], limits(), Some(Duration::from_secs(5))).await;
    settle().await;
    let beats = || server.beats.load(Ordering::Relaxed);
    assert_eq!(beats(), 1, "at once");
    for second in 1..=20u64 {
        advance(Duration::from_secs(1)).await;
        assert_eq!(beats() as u64, 1 + second / 5, "after {second} s");
    }
    let mut stream = server.connect_std();
    settled_ping(&mut stream, 1).await;
}

#[tokio::test]
async fn binding_replaces_a_stale_socket_and_refuses_a_live_one_or_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("hostkms.sock");
    // A socket file nobody answers on (its listener is gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let bound = BoundSocket::bind(&path, 0o660, None).expect("replaces the stale socket");
    let meta = fs::metadata(&path).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // A live one is another daemon's.
    let err = BoundSocket::bind(&path, 0o660, None).unwrap_err();
    assert!(
        matches!(&err, ServerError::AlreadyServing { path: p } if *p == path),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("another hostkmsd is already serving")
    );
    drop(bound);
    assert!(!path.exists(), "removed when dropped");

    // Anything but a socket is left alone.
    fs::write(&path, b"not a socket").expect("file");
    let err = BoundSocket::bind(&path, 0o660, None).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read(&path).expect("kept"), b"not a socket");
    fs::remove_file(&path).expect("rm");

    // A socket that replaced ours meanwhile is not removed with ours.
    let bound = BoundSocket::bind(&path, 0o660, None).expect("bind");
    fs::remove_file(&path).expect("rm");
    let other = std::os::unix::net::UnixListener::bind(&path).expect("another socket");
    drop(bound);
    assert!(path.exists(), "the other socket stays");
    drop(other);
}

/// A key change whose answer (the key's description) outgrows the frame
/// is still made: the client is told it stands and how to see the key,
/// never `Internal`, and a key alone too large for any page is named as
/// such rather than "ask for fewer keys".
#[tokio::test]
async fn a_change_whose_answer_outgrows_the_frame_stands_and_says_so() {
    let small = Limits {
        max_frame: 4096,
        ..limits()
    };
    let harness = Harness::start(&[], small).await;
    let mut stream = harness.connect().await;
    let name = "grown".to_string();
    send(
        &mut stream,
        &frame(
            1,
            Request::CreateKey {
                name: name.clone(),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: Default::default(),
            },
        ),
    )
    .await;
    key_of(reply(&mut stream).await);
    // Each version adds its metadata to the key's description: rotate
    // until the description no longer fits in 4 KiB.
    let mut id = 2;
    loop {
        send(
            &mut stream,
            &frame(id, Request::Rotate { key: name.clone() }),
        )
        .await;
        let answer = reply(&mut stream).await;
        id += 1;
        if let Response::Error(error) = answer.op {
            assert_eq!(error.code, ErrorCode::FrameTooLarge, "{}", error.message);
            assert!(
                error.message.contains("rotate was done and stands"),
                "{}",
                error.message
            );
            break;
        }
        assert!(id < 1000, "the description never outgrew 4 KiB");
    }
    send(
        &mut stream,
        &frame(
            id,
            Request::Revoke {
                key: name.clone(),
                version: Some(2),
            },
        ),
    )
    .await;
    let Response::Error(error) = reply(&mut stream).await.op else {
        panic!("the revoke's answer cannot fit");
    };
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    assert!(
        error.message.contains("revoke was done and stands"),
        "{}",
        error.message
    );
    assert!(error.message.contains("--max-frame"), "{}", error.message);
    send(
        &mut stream,
        &frame_in(
            2,
            id + 1,
            Request::ListKeys {
                after: None,
                limit: Some(1),
            },
        ),
    )
    .await;
    let Response::Error(error) = reply(&mut stream).await.op else {
        panic!("a page of that one key cannot fit");
    };
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    assert!(error.message.contains("one key alone"), "{}", error.message);
    assert!(!error.message.contains("fewer keys"), "{}", error.message);

    // With room for the answer, the key shows the revoke was made.
    harness.set_limits(limits());
    let mut stream = harness.connect().await;
    send(&mut stream, &frame(1, Request::DescribeKey { key: name })).await;
    let info = key_of(reply(&mut stream).await);
    assert_eq!(info.versions[1].state, agent_proto::VersionState::Revoked);
}

/// A refusal made before the whole frame arrived is answered in the
/// request's own protocol version when its first bytes named one.
#[tokio::test]
async fn an_early_refusal_answers_in_the_requests_version() {
    let Some(uid) = switched_uid() else {
        return skipped("a peer without a grant");
    };
    let server = Harness::start(&[], limits()).await;
    let mut stream = server.connect_user(uid);
    let big = Request::Wrap {
        key: "k".to_string(),
        plaintext: SecretBytes::new(vec![0x42; 2 * BODY_STEP]),
        context: Default::default(),
    };
    send(&mut stream, &frame_in(2, 7, big)).await;
    let answer = reply(&mut stream).await;
    assert_eq!((answer.proto, answer.id), (2, 7), "{answer:?}");
    assert!(
        matches!(&answer.op, Response::Error(e) if e.code == ErrorCode::PermissionDenied),
        "{answer:?}"
    );
}
