//! The hostkms wire protocol and client library.
//!
//! Local services use this crate to talk to `hostkmsd` over its Unix socket:
//! ask for a data key, encrypt data with it, store only the wrapped key, and
//! ask hostkms to unwrap it at the next start. The crate links no TPM library
//! and no daemon code: serde, bincode 1.3.3 and a few small crates only.
//!
//! The format is specified in this crate's README; [`codec`] is the one
//! place it is implemented.
//!
//! The other contracts the daemon and its clients must agree on are here
//! too, each the one place it is written: the ciphertext header
//! ([`ciphertext`]), the key-name rule ([`key_name`]) and the names of the
//! `Status` counters ([`counters`]).
//!
//! ```no_run
//! use agent_proto::{Client, EncryptionContext};
//!
//! # fn main() -> Result<(), agent_proto::ClientError> {
//! let mut hostkms = Client::connect(agent_proto::DEFAULT_SOCKET)?;
//! let mut context = EncryptionContext::new();
//! context.insert("table".into(), "customers".into());
//!
//! // At setup: a data key, in clear for use now and wrapped for storage.
//! let data_key = hostkms.generate_data_key("app-db", 32, &context)?;
//! let stored = data_key.ciphertext.as_bytes().to_vec();
//! # let _ = data_key.plaintext;
//!
//! // At the next start: the stored blob back to the data key.
//! let unwrapped = hostkms.unwrap(&stored, &context, Some("app-db"))?;
//! assert_eq!(unwrapped.plaintext.len(), 32);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tokio")]
mod async_client;
mod bytes;
pub mod ciphertext;
mod client;
pub mod codec;
pub mod counters;
mod error;
pub mod key_name;
mod message;
pub mod v1;
pub mod v2;
pub mod v3;

#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
pub use bytes::{Ciphertext, SecretBytes};
pub use client::{
    Client, ClientError, DEFAULT_SOCKET, DEFAULT_TIMEOUT, RECONNECT_BACKOFF, SOCKET_ENV,
    default_socket,
};
pub use codec::DEFAULT_MAX_FRAME;
pub use error::{DecodeError, EncodeError, ErrorCode, FrameError, UNKNOWN_REQUEST};
pub use message::{
    DataKey, EncryptionContext, Envelope, ErrorReply, ExportedFile, KeyInfo, KeyPage, KeyState,
    KeyType, MAX_RANDOM_BYTES, MacTag, OLDEST_PROTOCOL_VERSION, Operation, PROTOCOL_VERSION,
    PublicKeyInfo, RecoveryStatus, Request, Response, RollbackStatus, RootRotation, SignInput,
    Signature, StatusInfo, TransportKeyInfo, Unwrapped, Verification, VersionInfo, VersionState,
    Wrapped,
};

/// The README's examples, compiled as doctests so the specification's code stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
