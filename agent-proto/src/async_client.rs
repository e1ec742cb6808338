//! A tokio client over a Unix stream socket, with the same typed methods as
//! the blocking [`Client`](crate::Client). Enabled by the `tokio` feature.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::bytes::{Ciphertext, SecretBytes};
use crate::client::{
    ClientError, LIST_PAGE, Pipeline, closed_by_daemon, closes_connection, expect,
    fallback_version, left_refusal, refusal_as_error, typed_operations,
};
use crate::codec::{self, DEFAULT_MAX_FRAME};
use crate::error::ErrorCode;
use crate::message::{
    DataKey, EncryptionContext, Envelope, ExportedFile, KeyInfo, KeyPage, KeyType, MacTag,
    OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, PublicKeyInfo, Request, Response, RootRotation,
    SignInput, Signature, StatusInfo, TransportKeyInfo, Unwrapped, Verification, Wrapped,
};

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
/// the blocking [`Client`](crate::Client) does.
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
}

impl AsyncClient {
    /// Connects to the daemon's socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient, ClientError> {
        let path = path.as_ref();
        let mut client = AsyncClient::from_stream(open(path).await?);
        client.path = Some(path.to_path_buf());
        Ok(client)
    }

    /// Uses an already connected stream (no fallback to an older protocol
    /// version: that needs a new connection).
    pub fn from_stream(stream: UnixStream) -> AsyncClient {
        AsyncClient {
            stream,
            pipeline: Pipeline::new(),
            max_frame: DEFAULT_MAX_FRAME,
            proto: PROTOCOL_VERSION,
            path: None,
            reopen: false,
        }
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
    pub async fn send(&mut self, op: Request) -> Result<u64, ClientError> {
        let (id, frame) = self.pipeline.frame(op, self.proto, self.max_frame)?;
        self.stream.write_all(&frame).await?;
        self.pipeline.sent(id);
        Ok(id)
    }

    /// Receives the answer to the oldest request sent and not yet answered.
    pub async fn receive(&mut self) -> Result<Envelope<Response>, ClientError> {
        let body = codec::read_frame_async(&mut self.stream, self.max_frame)
            .await?
            .ok_or(ClientError::Closed)?;
        self.pipeline.answer(&body)
    }

    /// Sends one request and waits for its answer; a refusal becomes
    /// [`ClientError::Daemon`].
    /// When the daemon closed the connection before the request went out,
    /// the refusal it left (e.g. `Busy`) is returned.
    /// When the daemon speaks only an older protocol version, the client
    /// reconnects and retries once in that version.
    pub async fn call(&mut self, op: Request) -> Result<Response, ClientError> {
        if let (true, Some(path)) = (self.reopen, self.path.clone()) {
            self.reconnect(&path).await?;
        }
        let retry =
            (self.proto > OLDEST_PROTOCOL_VERSION && self.path.is_some()).then(|| op.clone());
        let err = match self.call_once(op).await {
            Err(err) => err,
            answered => return answered,
        };
        match (fallback_version(&err, self.proto), retry, self.path.clone()) {
            (Some(proto), Some(op), Some(path)) => {
                self.proto = proto;
                self.reconnect(&path).await?;
                self.call_once(op).await
            }
            _ => Err(err),
        }
    }

    /// Replaces the connection the daemon closed with a new one.
    async fn reconnect(&mut self, path: &Path) -> Result<(), ClientError> {
        self.stream = open(path).await?;
        self.pipeline.reset();
        self.reopen = false;
        Ok(())
    }

    async fn call_once(&mut self, op: Request) -> Result<Response, ClientError> {
        let operation = op.operation();
        if let Err(err) = self.send(op).await {
            return Err(self.refusal_after(err).await);
        }
        let answer = self.receive().await?.op;
        self.reopen = closes_connection(&answer);
        refusal_as_error(answer, operation)
    }

    /// After a failed send: the refusal the daemon left before closing, if
    /// any, else `err`.
    async fn refusal_after(&mut self, err: ClientError) -> ClientError {
        if !closed_by_daemon(&err) {
            return err;
        }
        let left = codec::read_frame_async(&mut self.stream, self.max_frame).await;
        left_refusal(left, err)
    }

    typed_operations!(tokio);
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
        Fake, NAMES, paging_daemon, stuck_cursor, too_old_for_rotate, version_3_daemon,
    };

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
