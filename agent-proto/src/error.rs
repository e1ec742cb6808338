//! Error codes carried on the wire, and the errors of encoding and decoding.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why the daemon refused a request: a stable number on the wire.
///
/// The numbers are part of the protocol. A code is never renumbered or reused;
/// new codes get new numbers. A code this library does not know (from a newer
/// daemon) decodes as [`ErrorCode::Unrecognized`] and keeps its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request could not be decoded, or is not valid in this position.
    BadRequest,
    /// The frame's length prefix exceeds the receiver's limit.
    FrameTooLarge,
    /// The envelope's protocol version is outside the range the receiver speaks.
    UnsupportedVersion,
    /// No grant allows this peer this operation on this key.
    PermissionDenied,
    /// No key has that name (or the ciphertext names a key id that is unknown).
    KeyNotFound,
    /// A key with that name exists already (names are never reused).
    KeyExists,
    /// The whole key is revoked, for good.
    KeyRevoked,
    /// The key version that made the ciphertext is revoked, or below the key's
    /// minimum decryption version.
    VersionRevoked,
    /// The key is disabled; an admin can enable it again.
    KeyDisabled,
    /// The ciphertext does not authenticate: wrong context, tampering,
    /// truncation or wrong key all look the same.
    InvalidCiphertext,
    /// The plaintext exceeds the daemon's `max_plaintext`.
    PlaintextTooLarge,
    /// The daemon is at a limit (connections, load); try again later.
    Busy,
    /// The TPM is needed for this request and cannot be reached.
    TpmUnavailable,
    /// The daemon failed for a reason of its own; its log says more.
    Internal,
    /// The daemon understood the request but does not implement it yet.
    NotImplemented,
    /// A field of the request has a value outside its allowed range or form
    /// (a key name, a data-key size, a version number).
    InvalidArgument,
    /// The key exists but has no such version.
    VersionNotFound,
    /// The operation does not fit the key's type (wrap with a signing key,
    /// sign with an AES key); the message names the type and what it does.
    WrongKeyType,
    /// The key is scheduled for deletion (version 5): the message names the
    /// date; an admin can cancel the deletion until then. Version-4 and
    /// older clients get `KeyDisabled` instead.
    KeyPendingDeletion,
    /// The daemon is locked (version 6): its root key is sealed behind a
    /// PIN or to PCRs that changed, and an admin must run `hostkms unlock`.
    /// Version-5 and older clients get `TpmUnavailable` instead.
    Locked,
    /// The PIN is wrong (version 6): the message says how many tries the
    /// TPM still allows, or, in lockout, how long it may take to forgive
    /// one.
    WrongPin,
    /// A code this library does not know, with its number.
    Unrecognized(u16),
}

impl ErrorCode {
    /// Every code this library knows, in numeric order.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::BadRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::PermissionDenied,
        ErrorCode::KeyNotFound,
        ErrorCode::KeyExists,
        ErrorCode::KeyRevoked,
        ErrorCode::VersionRevoked,
        ErrorCode::KeyDisabled,
        ErrorCode::InvalidCiphertext,
        ErrorCode::PlaintextTooLarge,
        ErrorCode::Busy,
        ErrorCode::TpmUnavailable,
        ErrorCode::Internal,
        ErrorCode::NotImplemented,
        ErrorCode::InvalidArgument,
        ErrorCode::VersionNotFound,
        ErrorCode::WrongKeyType,
        ErrorCode::KeyPendingDeletion,
        ErrorCode::Locked,
        ErrorCode::WrongPin,
    ];

    /// The code's number on the wire.
    pub fn number(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::PermissionDenied => 4,
            ErrorCode::KeyNotFound => 5,
            ErrorCode::KeyExists => 6,
            ErrorCode::KeyRevoked => 7,
            ErrorCode::VersionRevoked => 8,
            ErrorCode::KeyDisabled => 9,
            ErrorCode::InvalidCiphertext => 10,
            ErrorCode::PlaintextTooLarge => 11,
            ErrorCode::Busy => 12,
            ErrorCode::TpmUnavailable => 13,
            ErrorCode::Internal => 14,
            ErrorCode::NotImplemented => 15,
            ErrorCode::InvalidArgument => 16,
            ErrorCode::VersionNotFound => 17,
            ErrorCode::WrongKeyType => 18,
            ErrorCode::KeyPendingDeletion => 19,
            ErrorCode::Locked => 20,
            ErrorCode::WrongPin => 21,
            ErrorCode::Unrecognized(n) => n,
        }
    }

    /// The code for a number read off the wire.
    pub fn from_number(number: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.number() == number)
            .unwrap_or(ErrorCode::Unrecognized(number))
    }

    /// A short lower-case name for messages, e.g. `permission denied`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::KeyNotFound => "key not found",
            ErrorCode::KeyExists => "key exists",
            ErrorCode::KeyRevoked => "key revoked",
            ErrorCode::VersionRevoked => "version revoked",
            ErrorCode::KeyDisabled => "key disabled",
            ErrorCode::InvalidCiphertext => "invalid ciphertext",
            ErrorCode::PlaintextTooLarge => "plaintext too large",
            ErrorCode::Busy => "busy",
            ErrorCode::TpmUnavailable => "TPM unavailable",
            ErrorCode::Internal => "internal error",
            ErrorCode::NotImplemented => "not implemented",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::VersionNotFound => "version not found",
            ErrorCode::WrongKeyType => "wrong key type",
            ErrorCode::KeyPendingDeletion => "key pending deletion",
            ErrorCode::Locked => "locked",
            ErrorCode::WrongPin => "wrong PIN",
            ErrorCode::Unrecognized(_) => "unrecognized error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unrecognized(n) => write!(f, "unrecognized error code {n}"),
            code => f.write_str(code.name()),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.number())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u16::deserialize(deserializer).map(ErrorCode::from_number)
    }
}

/// The start of the message with which a daemon answers a request variant
/// it does not know (`BadRequest`): clients take it to mean "daemon too old".
pub const UNKNOWN_REQUEST: &str = "unknown request variant";

/// The text bincode 1.3.3 (frozen) gives for an unknown enum variant, which
/// protocol-1 daemons, older than [`UNKNOWN_REQUEST`], answer an unknown
/// request variant with. A request carries no other enum, so in the answer
/// to a well-formed request it can only mean the request's variant.
pub(crate) const BINCODE_UNKNOWN_VARIANT: &str = "expected variant index";

/// A frame or message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than the receiver accepts; nothing was
    /// allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced body length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// The envelope names a protocol version the receiver does not speak.
    #[error(
        "protocol version {got} is not supported; this side speaks versions {oldest} to {newest}",
        oldest = crate::OLDEST_PROTOCOL_VERSION,
        newest = crate::PROTOCOL_VERSION
    )]
    UnsupportedVersion {
        /// The version the peer sent.
        got: u16,
        /// The request id, when the envelope got that far.
        id: Option<u64>,
    },
    /// The request names a variant this side does not know in its version:
    /// the peer is newer (new requests are appended, see the spec's
    /// "Compatibility and evolution"). The message starts with
    /// [`UNKNOWN_REQUEST`], which clients look for.
    #[error(
        "unknown request variant {index} in protocol version {proto} (this side knows 0 to {last}): {}",
        unknown_request_advice(*proto, *index),
        last = known.saturating_sub(1)
    )]
    UnknownRequest {
        /// The request id, when the envelope got that far.
        id: Option<u64>,
        /// The envelope's protocol version.
        proto: u16,
        /// The variant index the peer sent.
        index: u32,
        /// How many request variants this side knows in `proto`.
        known: u32,
    },
    /// A map in the request (an encryption context, or a key's tags) is
    /// not in its canonical encoding: keys sorted by their UTF-8 bytes,
    /// each key once. Refused rather than read, since a reader would have
    /// to guess which of two entries with the same key was meant.
    #[error(
        "malformed message: a map in the request (an encryption context or tags) is not canonical \
         (first difference at body byte {offset}): send its keys sorted by their UTF-8 bytes, each key once"
    )]
    NotCanonical {
        /// The request id, when the envelope got that far.
        id: Option<u64>,
        /// The first byte of the body where the canonical encoding differs.
        offset: usize,
    },
    /// The body is truncated, has trailing bytes, or is not a valid message.
    #[error("malformed message: {reason}")]
    Malformed {
        /// The request id, when the envelope got that far.
        id: Option<u64>,
        /// What the decoder found wrong.
        reason: String,
    },
}

/// What to do about an unknown request variant: a variant this side knows
/// in a newer protocol version was sent under an older version's label (a
/// client bug, not an old daemon); any other is from a newer peer.
fn unknown_request_advice(proto: u16, index: u32) -> String {
    if proto < crate::PROTOCOL_VERSION && index < crate::Request::VARIANTS {
        format!(
            "that request came in a later protocol version; send it as version {} (the newest this side speaks)",
            crate::PROTOCOL_VERSION
        )
    } else {
        "the daemon is older than the client; upgrade hostkmsd".to_string()
    }
}

impl DecodeError {
    /// The wire error code that answers this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::Malformed { .. }
            | DecodeError::NotCanonical { .. }
            | DecodeError::UnknownRequest { .. } => ErrorCode::BadRequest,
        }
    }

    /// The id of the request that failed, when it could be read, so that the
    /// error response can echo it.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::FrameTooLarge { .. } => None,
            DecodeError::UnsupportedVersion { id, .. }
            | DecodeError::Malformed { id, .. }
            | DecodeError::NotCanonical { id, .. }
            | DecodeError::UnknownRequest { id, .. } => *id,
        }
    }
}

/// A message that could not be encoded into a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed the frame limit.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// The encoded length of the message body.
        len: u64,
        /// The frame limit.
        max: u32,
    },
    /// The serializer refused the message.
    #[error("cannot encode message: {0}")]
    Serialize(String),
    /// The message cannot be expressed in the protocol version it is to be
    /// sent in (e.g. a paginated `ListKeys` to a version-1 daemon).
    #[error("protocol version {proto} cannot carry this message: {reason}")]
    NotInVersion {
        /// The version the message was to be sent in.
        proto: u16,
        /// What that version lacks.
        reason: String,
    },
}

/// Reading or writing a frame on a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        got: usize,
        /// Bytes the frame needed.
        expected: usize,
    },
    /// The length prefix announced a frame over the limit.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The receiver's memory for partly received frames is spent: other
    /// peers' frames hold it. Only a receiver that bounds it says this.
    #[error(
        "no memory is left to receive a frame of {len} bytes: partly received frames hold the receiver's limit"
    )]
    OutOfMemory {
        /// The declared body length.
        len: usize,
        /// The request id, when the body's first bytes had arrived.
        id: Option<u64>,
        /// The request's protocol version, when its first two bytes had
        /// arrived: the refusal is answered in it.
        proto: Option<u16>,
    },
}
