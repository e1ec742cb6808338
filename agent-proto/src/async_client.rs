//! A tokio client over a Unix stream socket, with the same typed methods as
//! the blocking [`Client`](crate::Client). Enabled by the `tokio` feature.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::bytes::{Ciphertext, SecretBytes};
use crate::client::{
    ClientError, Pipeline, closed_by_daemon, expect, left_refusal, refusal_as_error,
    typed_operations,
};
use crate::codec::{self, DEFAULT_MAX_FRAME};
use crate::message::{
    DataKey, EncryptionContext, Envelope, KeyInfo, Request, Response, StatusInfo, Unwrapped,
    Wrapped,
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
#[derive(Debug)]
pub struct AsyncClient {
    stream: UnixStream,
    pipeline: Pipeline,
    max_frame: u32,
}

impl AsyncClient {
    /// Connects to the daemon's socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AsyncClient::from_stream(stream))
    }

    /// Uses an already connected stream.
    pub fn from_stream(stream: UnixStream) -> AsyncClient {
        AsyncClient {
            stream,
            pipeline: Pipeline::new(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub async fn send(&mut self, op: Request) -> Result<u64, ClientError> {
        let (id, frame) = self.pipeline.frame(op, self.max_frame)?;
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
    pub async fn call(&mut self, op: Request) -> Result<Response, ClientError> {
        if let Err(err) = self.send(op).await {
            return Err(self.refusal_after(err).await);
        }
        refusal_as_error(self.receive().await?.op)
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
