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
//!
//! # Using a data key
//!
//! hostkms never sees your data: encrypt it in your process with the
//! plaintext data key and store only the wrapped key
//! (`data_key.ciphertext`) beside it. The recommended way:
//!
//! - AES-256-GCM (the [`aes-gcm`](https://docs.rs/aes-gcm) crate) with a
//!   32-byte data key (`generate_data_key(name, 32, &context)`);
//! - a fresh 96-bit random nonce for every message, from the OS RNG, never
//!   a counter kept across restarts; store it beside the ciphertext
//!   (`nonce || ciphertext`);
//! - at most 2^32 messages per data key (random 96-bit nonces, NIST SP
//!   800-38D): ask for a new data key before, and keep each message's
//!   wrapped key with it;
//! - the encryption context as the messages' associated data too, encoded
//!   canonically (the map's sorted order, each key and value
//!   length-prefixed), so a record moved to another context does not
//!   decrypt;
//! - keep the plaintext key no longer than needed ([`SecretBytes`] wipes
//!   it on drop).
//!
//! ```no_run
//! use aes_gcm::Aes256Gcm;
//! use aes_gcm::aead::{Aead, Generate, KeyInit, Nonce, Payload};
//! use agent_proto::{Client, EncryptionContext};
//!
//! /// The context as associated data: every key and value, in order,
//! /// after its length as a u32 big endian.
//! fn aad(context: &EncryptionContext) -> Vec<u8> {
//!     let mut out = Vec::new();
//!     for (key, value) in context {
//!         for part in [key, value] {
//!             let len = u32::try_from(part.len()).expect("a short context");
//!             out.extend_from_slice(&len.to_be_bytes());
//!             out.extend_from_slice(part.as_bytes());
//!         }
//!     }
//!     out
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut hostkms = Client::connect_default()?;
//! let mut context = EncryptionContext::new();
//! context.insert("table".into(), "customers".into());
//! let data_key = hostkms.generate_data_key("app-db", 32, &context)?;
//! let key = data_key.plaintext.as_ref().ok_or("asked for the plaintext")?;
//! let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| "a 32-byte key")?;
//!
//! // Each message: a fresh random nonce, stored in front of its ciphertext.
//! let nonce = Nonce::<Aes256Gcm>::generate();
//! let payload = Payload { msg: b"a customer row", aad: &aad(&context) };
//! let sealed = cipher.encrypt(&nonce, payload).map_err(|_| "too long")?;
//! let mut record = nonce.to_vec();
//! record.extend_from_slice(&sealed);
//! let wrapped_key = data_key.ciphertext.as_bytes().to_vec(); // stored beside
//!
//! // Later: unwrap the stored key, split off the nonce, decrypt.
//! let key = hostkms.unwrap(&wrapped_key, &context, Some("app-db"))?.plaintext;
//! let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| "a 32-byte key")?;
//! let (nonce, sealed) = record.split_at(12);
//! let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| "a 12-byte nonce")?;
//! let payload = Payload { msg: sealed, aad: &aad(&context) };
//! let row = cipher.decrypt(&nonce, payload).map_err(|_| "tampered or moved")?;
//! assert_eq!(row, b"a customer row");
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
pub mod credential;
pub mod date;
mod error;
pub mod key_name;
mod message;
pub mod period;
pub mod pin;
pub mod text;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;
pub mod v5;

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
    DEFAULT_DELETION_DAYS, DataKey, EncryptionContext, Envelope, ErrorReply, ExportedFile, KeyInfo,
    KeyPage, KeySettings, KeyState, KeyType, LockState, MAX_BATCH_ITEMS, MAX_DELETION_DAYS,
    MAX_DESCRIPTION_BYTES, MAX_RANDOM_BYTES, MAX_TAGS, MIN_DELETION_DAYS, MIN_ROTATION_PERIOD_SECS,
    MacTag, OLDEST_PROTOCOL_VERSION, Operation, PROTOCOL_VERSION, PcrChange, PcrValue,
    PublicKeyInfo, RecoveryStatus, Request, ResealInfo, Response, RewrapDestination,
    RollbackStatus, RootRotation, RotationSetting, Sealing, SealingStatus, SignInput, Signature,
    StatusInfo, TransportKeyInfo, UnlockInfo, UnwrapItem, Unwrapped, Verification, VersionInfo,
    VersionState, WrapItem, Wrapped,
};

/// The README's examples, compiled as doctests so the specification's code stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
