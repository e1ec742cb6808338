//! A tokio client over a Unix stream socket, with the same typed methods as
//! the blocking [`Client`](crate::Client). Enabled by the `tokio` feature.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::bytes::{Ciphertext, SecretBytes};
use crate::client::{
    ClientError, DEFAULT_TIMEOUT, Failure, LIST_PAGE, Pipeline, RECONNECT_BACKOFF,
    closes_connection, default_socket, expect, fallback_version, is_timeout, lost,
    refusal_as_error, refusal_left, typed_operations, unsent,
};
use crate::codec::{self, DEFAULT_MAX_FRAME};
use crate::error::{ErrorCode, FrameError};
use crate::message::{
    DataKey, EncryptionContext, Envelope, ErrorReply, ExportedFile, KeyInfo, KeyPage, KeySettings,
    KeyType, MacTag, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, PublicKeyInfo, Request, ResealInfo,
    Response, RewrapDestination, RootRotation, SignInput, Signature, StatusInfo, TransportKeyInfo,
    UnlockInfo, UnwrapItem, Unwrapped, Verification, WrapItem, Wrapped,
};
use crate::pin::Pin;

/// An async connection to hostkmsd.
///
/// Requests are answered in order, so a caller may [`send`](AsyncClient::send)
/// several and then [`receive`](AsyncClient::receive) their answers.
///
/// ```no_run
/// # async fn demo() -> Result<(), agent_proto::ClientError> {
/// use agent_proto::{AsyncClient, EncryptionContext};
///
/// let mut hostkms = AsyncClient::connect(agent_proto::DEFAULT_SOCKET).await?;
/// let context = EncryptionContext::new();
/// let data_key = hostkms.generate_data_key("app-db", 32, &context).await?;
/// let stored = data_key.ciphertext.as_bytes().to_vec(); // keep beside the data
/// let again = hostkms.unwrap(&stored, &context, Some("app-db")).await?;
/// assert_eq!(Some(again.plaintext), data_key.plaintext);
/// # Ok(())
/// # }
/// ```
///
/// It speaks the newest protocol version both sides know, falling back as
/// the blocking [`Client`](crate::Client) does, and reconnects, or reports a
/// request that may have been carried out, as the blocking client does (see
/// its "Connection losses"). Its timeout and reconnection pauses use
/// tokio's timer: the runtime needs its time driver (`enable_time` or
/// `enable_all`, which `#[tokio::main]` turns on).
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug)]
pub struct AsyncClient {
    stream: UnixStream,
    pipeline: Pipeline,
    max_frame: u32,
    proto: u16,
    path: Option<PathBuf>,
    /// The daemon closed the connection after `BadRequest`: the next call
    /// opens a new one (when the client has a path).
    reopen: bool,
    /// The per-request timeout.
    timeout: Option<Duration>,
}

impl AsyncClient {
    /// Connects to the daemon's socket at `path`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the socket cannot be reached.
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient, ClientError> {
        let path = path.as_ref();
        let mut client = AsyncClient::from_stream(open(path).await?);
        client.path = Some(path.to_path_buf());
        Ok(client)
    }

    /// Connects to the socket `$HOSTKMS_SOCKET` names, else to
    /// [`DEFAULT_SOCKET`](crate::DEFAULT_SOCKET).
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the socket cannot be reached.
    pub async fn connect_default() -> Result<AsyncClient, ClientError> {
        AsyncClient::connect(default_socket()).await
    }

    /// Uses an already connected stream (no fallback to an older protocol
    /// version and no reconnection: those need a new connection).
    pub fn from_stream(stream: UnixStream) -> AsyncClient {
        AsyncClient {
            stream,
            pipeline: Pipeline::new(),
            max_frame: DEFAULT_MAX_FRAME,
            proto: PROTOCOL_VERSION,
            path: None,
            reopen: false,
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }

    /// Limits how long one request may take, writing it and reading its
    /// whole answer (`None`: forever; default
    /// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT)). A request that
    /// outlasts it is [`ClientError::TimedOut`]. For
    /// [`send`](AsyncClient::send) and [`receive`](AsyncClient::receive) it
    /// bounds each of them.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// [`set_timeout`](AsyncClient::set_timeout) as a builder.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> AsyncClient {
        self.timeout = timeout;
        self
    }

    /// The per-request timeout (`None`: none).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the largest frame body this client sends or accepts (default
    /// [`DEFAULT_MAX_FRAME`]).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The largest frame body this client sends or accepts.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// The protocol version this client speaks on its connection.
    pub fn protocol(&self) -> u16 {
        self.proto
    }

    /// Speaks protocol version `proto` from now on (no negotiation).
    pub fn set_protocol(&mut self, proto: u16) {
        self.proto = proto;
    }

    /// Sends a request without waiting for its answer; returns its id.
    /// Never reconnects nor retries.
    ///
    /// # Errors
    ///
    /// [`ClientError::DaemonTooOld`] or [`ClientError::Encode`] when the
    /// request cannot be encoded; [`ClientError::Io`] when the write fails
    /// or outlasts the timeout (`TimedOut`; the daemon may have read part
    /// of it: drop the connection).
    pub async fn send(&mut self, op: Request) -> Result<u64, ClientError> {
        let (id, frame) = self.pipeline.frame(op, self.proto, self.max_frame)?;
        within(self.timeout, self.stream.write_all(&frame))
            .await
            .and_then(|written| written)?;
        self.pipeline.sent(id);
        Ok(id)
    }

    /// Receives the answer to the oldest request sent and not yet answered.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the daemon closed the connection,
    /// [`ClientError::Frame`] when the read fails or outlasts the timeout,
    /// [`ClientError::Decode`] or [`ClientError::IdMismatch`] for an answer
    /// that is not one.
    pub async fn receive(&mut self) -> Result<Envelope<Response>, ClientError> {
        let body = within(
            self.timeout,
            codec::read_frame_async(&mut self.stream, self.max_frame),
        )
        .await
        .map_err(FrameError::Io)
        .and_then(|read| read)?
        .ok_or(ClientError::Closed)?;
        self.pipeline.answer(&body)
    }

    /// Sends one request and waits for its answer; a refusal becomes
    /// [`ClientError::Daemon`]. When the daemon closed the connection before
    /// the request went out, the refusal it left (e.g. `Busy`) is returned;
    /// without one, the client reconnects and sends the request again.
    /// When the daemon speaks only an older protocol version, the client
    /// reconnects and retries once in that version.
    ///
    /// # Errors
    ///
    /// Those of [`Client::call`](crate::Client::call).
    pub async fn call(&mut self, op: Request) -> Result<Response, ClientError> {
        let mut pauses = RECONNECT_BACKOFF.iter();
        loop {
            match self.call_negotiated(op.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Unsent(err)) => match (pauses.next(), &self.path) {
                    (Some(pause), Some(_)) => {
                        tokio::time::sleep(*pause).await;
                        self.reopen = true;
                    }
                    _ => return Err(err),
                },
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    /// One attempt of [`call`](AsyncClient::call), falling back to an
    /// older protocol version when the daemon asks for it.
    async fn call_negotiated(&mut self, op: Request) -> Result<Response, Failure> {
        if let (true, Some(path)) = (self.reopen, self.path.clone()) {
            self.reconnect(&path).await.map_err(Failure::Unsent)?;
        }
        let retry =
            (self.proto > OLDEST_PROTOCOL_VERSION && self.path.is_some()).then(|| op.clone());
        let err = match self.call_once(op).await {
            Err(Failure::Final(err)) => err,
            answered => return answered,
        };
        match (fallback_version(&err, self.proto), retry, self.path.clone()) {
            (Some(proto), Some(op), Some(path)) => {
                self.proto = proto;
                self.reconnect(&path).await.map_err(Failure::Unsent)?;
                self.call_once(op).await
            }
            _ => Err(Failure::Final(err)),
        }
    }

    /// Replaces the connection the daemon closed with a new one.
    async fn reconnect(&mut self, path: &Path) -> Result<(), ClientError> {
        self.stream = open(path).await?;
        self.pipeline.reset();
        self.reopen = false;
        Ok(())
    }

    async fn call_once(&mut self, op: Request) -> Result<Response, Failure> {
        let operation = op.operation();
        let (id, frame) = self
            .pipeline
            .frame(op, self.proto, self.max_frame)
            .map_err(Failure::Final)?;
        self.probe().await?;
        let timeout = self.timeout;
        let late = ClientError::TimedOut {
            operation,
            after: timeout.unwrap_or_default(),
        };
        let exchange = async {
            let mut written = 0;
            while written < frame.len() {
                match self.stream.write(&frame[written..]).await {
                    Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
                    Ok(n) => written += n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => return Err((written, err)),
                }
            }
            self.pipeline.sent(id);
            Ok(codec::read_frame_async(&mut self.stream, self.max_frame).await)
        };
        let read = match within(timeout, exchange).await {
            Err(_) => {
                self.reopen = true;
                return Err(Failure::Final(late));
            }
            Ok(Err((0, err))) if unsent(&err) => {
                let left = within(
                    timeout,
                    codec::read_frame_async(&mut self.stream, self.max_frame),
                )
                .await;
                return Err(match left.ok().and_then(refusal_left) {
                    Some(refusal) => Failure::Final(refusal),
                    None => Failure::Unsent(err.into()),
                });
            }
            Ok(Err((_, err))) if is_timeout(&err) => {
                self.reopen = true;
                return Err(Failure::Final(late));
            }
            Ok(Err((0, err))) => return Err(Failure::Final(err.into())),
            Ok(Err((_, err))) => {
                self.reopen = true;
                return Err(Failure::Final(lost(operation, err.into())));
            }
            Ok(Ok(read)) => read,
        };
        let body = match read {
            Ok(Some(body)) => body,
            Ok(None) => {
                self.reopen = true;
                return Err(Failure::Final(lost(operation, ClientError::Closed)));
            }
            Err(err) => {
                self.reopen = true;
                return Err(Failure::Final(lost(operation, err.into())));
            }
        };
        let answer = self.pipeline.answer(&body).map_err(Failure::Final)?.op;
        self.reopen = closes_connection(&answer);
        refusal_as_error(answer, operation).map_err(Failure::Final)
    }

    /// Before a call writes its request: whether the daemon closed the
    /// connection meanwhile, or left a refusal on it (see the blocking
    /// client's).
    async fn probe(&mut self) -> Result<(), Failure> {
        if !self.pipeline.is_idle() {
            return Ok(());
        }
        let mut first = [0u8; 1];
        match self.stream.try_read(&mut first) {
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Ok(0) => Err(Failure::Unsent(ClientError::Closed)),
            Err(err) if unsent(&err) => Err(Failure::Unsent(err.into())),
            Err(err) => Err(Failure::Final(err.into())),
            Ok(_) => {
                self.reopen = true;
                let mut prefix = [0u8; codec::LENGTH_PREFIX];
                prefix[0] = first[0];
                let left = within(
                    self.timeout,
                    codec::finish_frame_async(
                        &mut self.stream,
                        prefix,
                        1,
                        self.max_frame,
                        &mut codec::Unbounded,
                    ),
                )
                .await;
                let left = left.ok().and_then(|left| refusal_left(left.map(Some)));
                Err(Failure::Final(left.unwrap_or(ClientError::Closed)))
            }
        }
    }

    typed_operations!(tokio);
}

/// `work`, given `timeout` when there is one; a `TimedOut` error past it.
async fn within<T>(
    timeout: Option<Duration>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, std::io::Error> {
    match timeout {
        None => Ok(work.await),
        Some(timeout) => tokio::time::timeout(timeout, work).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the request timed out")
        }),
    }
}

/// Connects to the daemon's socket at `path`.
async fn open(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{
        Conn, Fake, NAMES, Scripted, paging_daemon, stuck_cursor, too_old_for_rotate,
        version_3_daemon,
    };

    #[tokio::test]
    async fn the_async_client_reconnects_after_the_daemon_closed_an_idle_connection() {
        let daemon = Scripted::start(&[Conn::Answer(1), Conn::Answer(1)]);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        client.ping().await.unwrap();
        daemon.wait_closed(1);
        client.ping().await.expect("a new connection carries it");
        assert_eq!(daemon.seen(), vec![Request::Ping, Request::Ping]);
    }

    #[tokio::test]
    async fn the_async_client_reports_a_lost_request_and_does_not_send_it_again() {
        let daemon = Scripted::start(&[Conn::Swallow]);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        let err = client.rotate("k").await.unwrap_err();
        assert!(
            matches!(err, ClientError::MayHaveExecuted { .. }),
            "{err:?}"
        );
        assert_eq!(daemon.seen().len(), 1, "not replayed");
        client
            .ping()
            .await
            .expect("the next call opens a new connection");
    }

    #[tokio::test]
    async fn the_async_client_times_out_a_late_answer() {
        let daemon = Scripted::start(&[Conn::Stall(Duration::from_secs(2))]);
        let mut client = AsyncClient::connect(&daemon.path)
            .await
            .unwrap()
            .with_timeout(Some(Duration::from_millis(300)));
        let err = client.rotate("k").await.unwrap_err();
        assert!(matches!(err, ClientError::TimedOut { .. }), "{err:?}");
        assert_eq!(daemon.seen().len(), 1, "not replayed");
    }

    #[tokio::test]
    async fn the_async_client_falls_back_to_version_3_and_refuses_key_types_there() {
        let daemon = Fake::start(3, version_3_daemon);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        let key = client.create_key("db").await.unwrap();
        assert_eq!((client.protocol(), key.key_type), (3, KeyType::Aes256Gcm));
        let err = client
            .create_key_of_type("rel", KeyType::MlDsa65)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::DaemonTooOld { reason, .. } if reason.contains("ml-dsa-65")),
            "{err:?}"
        );
        let err = client.sign("rel", b"m").await.unwrap_err();
        assert!(matches!(err, ClientError::DaemonTooOld { .. }), "{err:?}");
        assert_eq!(daemon.seen().len(), 1, "only the AES CreateKey went out");
    }

    #[tokio::test]
    async fn the_async_client_refuses_a_cursor_that_does_not_advance() {
        let daemon = Fake::start(2, stuck_cursor);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), client.list_keys())
            .await
            .expect("list_keys returned instead of following the cursor forever")
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::ListCursorStuck { after: Some(after), next, .. }
                if after == "a" && next == "a"),
            "{err:?}"
        );
        assert_eq!(daemon.seen().len(), 2, "refused at the second page");
    }

    #[tokio::test]
    async fn the_async_client_falls_back_to_version_1_and_lists_every_key() {
        let daemon = Fake::start(1, paging_daemon);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        client.ping().await.unwrap();
        assert_eq!(client.protocol(), 1);
        let names: Vec<String> = client
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, NAMES);
        assert!(daemon.seen().iter().all(|(proto, _)| *proto == 1));
    }

    #[tokio::test]
    async fn after_daemon_too_old_the_async_client_reconnects() {
        let daemon = Fake::start(2, too_old_for_rotate);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        let err = client.rotate("a").await.unwrap_err();
        assert!(matches!(err, ClientError::DaemonTooOld { .. }), "{err:?}");
        client.ping().await.expect("a ping on a new connection");
    }

    #[tokio::test]
    async fn the_async_client_pages_a_version_2_daemon() {
        let daemon = Fake::start(2, paging_daemon);
        let mut client = AsyncClient::connect(&daemon.path).await.unwrap();
        client.set_max_frame(4 << 20);
        assert_eq!(client.max_frame(), 4 << 20);
        let names: Vec<String> = client
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, NAMES);
        assert_eq!(client.protocol(), 2);
    }
}
