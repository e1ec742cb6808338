//! A tokio client over a Unix stream socket, with the same typed methods as
//! the blocking [`Client`](crate::Client). Enabled by the `tokio` feature.

use std::collections::VecDeque;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::bytes::{Ciphertext, SecretBytes};
use crate::client::{ClientError, expect, typed_operations};
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
    next_id: u64,
    in_flight: VecDeque<u64>,
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
            next_id: 1,
            in_flight: VecDeque::new(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub async fn send(&mut self, op: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let frame = codec::encode_frame(&Envelope::new(id, op), self.max_frame)?;
        self.stream.write_all(&frame).await?;
        self.in_flight.push_back(id);
        Ok(id)
    }

    /// Receives the answer to the oldest request sent and not yet answered.
    pub async fn receive(&mut self) -> Result<Envelope<Response>, ClientError> {
        let body = codec::read_frame_async(&mut self.stream, self.max_frame)
            .await?
            .ok_or(ClientError::Closed)?;
        let envelope: Envelope<Response> = codec::decode_body(&body)?;
        match self.in_flight.pop_front() {
            Some(expected) if expected != envelope.id => Err(ClientError::IdMismatch {
                expected,
                got: envelope.id,
            }),
            _ => Ok(envelope),
        }
    }

    /// Sends one request and waits for its answer; a refusal becomes
    /// [`ClientError::Daemon`].
    pub async fn call(&mut self, op: Request) -> Result<Response, ClientError> {
        self.send(op).await?;
        match self.receive().await?.op {
            Response::Error(reply) => Err(ClientError::Daemon {
                code: reply.code,
                message: reply.message,
            }),
            response => Ok(response),
        }
    }

    typed_operations!(tokio);
}
