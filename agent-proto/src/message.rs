//! The messages: one envelope, the requests a client sends and the responses
//! the daemon returns.
//!
//! The order of enum variants and struct fields is the wire format (bincode
//! encodes a variant by its index and a struct field by its position): append,
//! never reorder or remove. The README of this crate is the specification;
//! its "Compatibility and evolution" section says what needs a new protocol
//! version. In short: a new request variant is appended here (and refused
//! as `NotInV1` by the conversion to every older version, which the
//! compiler asks for); any other change to a shape bumps
//! [`PROTOCOL_VERSION`], after the shape as it was is copied into a frozen
//! module like [`crate::v1`], with conversions, and the codec's versioned
//! functions learn the new number.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::error::ErrorCode;

/// The protocol version this library speaks and sends: the newest it knows.
/// Version 2 made `ListKeys` paginated; version 1 is frozen in [`crate::v1`].
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this library accepts: a daemon keeps serving
/// every version it ever spoke, and a client falls back to it.
pub const OLDEST_PROTOCOL_VERSION: u16 = 1;

/// Every frame body: the protocol version, a request id the response echoes,
/// and the request or response itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Protocol version of this message.
    pub proto: u16,
    /// Chosen by the client; the response to this request carries the same id.
    pub id: u64,
    /// The request or the response.
    pub op: T,
}

impl<T> Envelope<T> {
    /// An envelope of the current protocol version.
    pub fn new(id: u64, op: T) -> Self {
        Envelope {
            proto: PROTOCOL_VERSION,
            id,
            op,
        }
    }
}

/// Key/value pairs bound to a ciphertext as additional authenticated data: a
/// ciphertext unwraps only with the same context. Sorted by key, so its
/// encoding is canonical.
pub type EncryptionContext = BTreeMap<String, String>;

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Daemon health and counters; answered with [`Response::Status`].
    Status,
    /// Create a key named `name` at version 1.
    CreateKey {
        /// `[A-Za-z0-9._-]{1,128}`.
        name: String,
    },
    /// Encrypt `plaintext` under the latest version of `key`.
    Wrap {
        /// Key name.
        key: String,
        /// At most the daemon's `max_plaintext` bytes.
        plaintext: SecretBytes,
        /// Bound to the ciphertext; needed again to unwrap.
        context: EncryptionContext,
    },
    /// Decrypt a ciphertext made by `Wrap`, `GenerateDataKey` or `Rewrap`.
    Unwrap {
        /// The ciphertext blob.
        ciphertext: Ciphertext,
        /// The context it was wrapped with.
        context: EncryptionContext,
        /// When given, the ciphertext must belong to this key.
        key: Option<String>,
    },
    /// A fresh random data key and its wrapped form.
    GenerateDataKey {
        /// Key name.
        key: String,
        /// Data-key length: 16, 24, 32 or 64.
        bytes: u16,
        /// Return the plaintext data key too (false: only the wrapped form).
        include_plaintext: bool,
        /// Bound to the wrapped data key.
        context: EncryptionContext,
    },
    /// Re-encrypt a ciphertext under its key's latest version; the plaintext
    /// never leaves the daemon.
    Rewrap {
        /// The ciphertext blob.
        ciphertext: Ciphertext,
        /// The context it was wrapped with (kept for the new ciphertext).
        context: EncryptionContext,
        /// When given, the ciphertext must belong to this key.
        key: Option<String>,
    },
    /// Add a new latest version to `key`.
    Rotate {
        /// Key name.
        key: String,
    },
    /// Revoke one version of `key` or, with `version: None`, the whole key.
    /// Irreversible: the key material is deleted.
    Revoke {
        /// Key name.
        key: String,
        /// The version to revoke; `None` revokes the whole key.
        version: Option<u32>,
    },
    /// Stop every use of `key` until it is enabled again.
    Disable {
        /// Key name.
        key: String,
    },
    /// Undo `Disable`.
    Enable {
        /// Key name.
        key: String,
    },
    /// Refuse to unwrap ciphertexts of versions below `version` (reversible).
    SetMinDecryptionVersion {
        /// Key name.
        key: String,
        /// Lowest version that still unwraps.
        version: u32,
    },
    /// Metadata of the keys the caller may see, one page at a time, in
    /// name order (byte order of the UTF-8). Version 2; version 1's
    /// `ListKeys` had no fields and is `ListKeys { after: None, limit: None }`.
    ListKeys {
        /// Start after this name (exclusive): the previous page's
        /// [`KeyPage::next`]. `None` starts at the first key.
        after: Option<String>,
        /// At most this many keys (at least 1). `None`: every key after
        /// `after`, which may exceed the frame limit (the answer is then
        /// `FrameTooLarge`).
        limit: Option<u32>,
    },
    /// Metadata of one key.
    DescribeKey {
        /// Key name.
        key: String,
    },
}

/// The operation a request performs: the names grants use in the config and
/// audit events use in `HOSTKMS_OP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// [`Request::Ping`].
    Ping,
    /// [`Request::Status`].
    Status,
    /// [`Request::CreateKey`].
    Create,
    /// [`Request::Wrap`].
    Wrap,
    /// [`Request::Unwrap`].
    Unwrap,
    /// [`Request::GenerateDataKey`].
    DataKey,
    /// [`Request::Rewrap`].
    Rewrap,
    /// [`Request::Rotate`].
    Rotate,
    /// [`Request::Revoke`].
    Revoke,
    /// [`Request::Disable`].
    Disable,
    /// [`Request::Enable`].
    Enable,
    /// [`Request::SetMinDecryptionVersion`].
    MinDecryptionVersion,
    /// [`Request::ListKeys`].
    List,
    /// [`Request::DescribeKey`].
    Describe,
}

impl Operation {
    /// Every operation, in wire order.
    pub const ALL: [Operation; 14] = [
        Operation::Ping,
        Operation::Status,
        Operation::Create,
        Operation::Wrap,
        Operation::Unwrap,
        Operation::DataKey,
        Operation::Rewrap,
        Operation::Rotate,
        Operation::Revoke,
        Operation::Disable,
        Operation::Enable,
        Operation::MinDecryptionVersion,
        Operation::List,
        Operation::Describe,
    ];

    /// The operation's name in config grants and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Ping => "ping",
            Operation::Status => "status",
            Operation::Create => "create",
            Operation::Wrap => "wrap",
            Operation::Unwrap => "unwrap",
            Operation::DataKey => "datakey",
            Operation::Rewrap => "rewrap",
            Operation::Rotate => "rotate",
            Operation::Revoke => "revoke",
            Operation::Disable => "disable",
            Operation::Enable => "enable",
            Operation::MinDecryptionVersion => "min-decryption-version",
            Operation::List => "list",
            Operation::Describe => "describe",
        }
    }

    /// The operation named `name`, as [`Operation::as_str`] spells it.
    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Request {
    /// How many request variants this version has: one per [`Operation`].
    pub const VARIANTS: u32 = Operation::ALL.len() as u32;

    /// The operation this request performs.
    pub fn operation(&self) -> Operation {
        match self {
            Request::Ping => Operation::Ping,
            Request::Status => Operation::Status,
            Request::CreateKey { .. } => Operation::Create,
            Request::Wrap { .. } => Operation::Wrap,
            Request::Unwrap { .. } => Operation::Unwrap,
            Request::GenerateDataKey { .. } => Operation::DataKey,
            Request::Rewrap { .. } => Operation::Rewrap,
            Request::Rotate { .. } => Operation::Rotate,
            Request::Revoke { .. } => Operation::Revoke,
            Request::Disable { .. } => Operation::Disable,
            Request::Enable { .. } => Operation::Enable,
            Request::SetMinDecryptionVersion { .. } => Operation::MinDecryptionVersion,
            Request::ListKeys { .. } => Operation::List,
            Request::DescribeKey { .. } => Operation::Describe,
        }
    }

    /// The key name the request names, if it names one (an unwrap without
    /// `key` names none: the ciphertext says which key).
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Request::CreateKey { name } => Some(name),
            Request::Wrap { key, .. }
            | Request::GenerateDataKey { key, .. }
            | Request::Rotate { key }
            | Request::Revoke { key, .. }
            | Request::Disable { key }
            | Request::Enable { key }
            | Request::SetMinDecryptionVersion { key, .. }
            | Request::DescribeKey { key } => Some(key),
            Request::Unwrap { key, .. } | Request::Rewrap { key, .. } => key.as_deref(),
            Request::Ping | Request::Status | Request::ListKeys { .. } => None,
        }
    }
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Status`.
    Status(StatusInfo),
    /// Metadata of one key: answer to `CreateKey`, `Rotate`, `Revoke`,
    /// `Disable`, `Enable`, `SetMinDecryptionVersion` and `DescribeKey`.
    Key(KeyInfo),
    /// Answer to `ListKeys`: one page of keys (version 2; version 1 carried
    /// a bare `Vec<KeyInfo>` of every key).
    Keys(KeyPage),
    /// A new ciphertext: answer to `Wrap` and `Rewrap`.
    Wrapped(Wrapped),
    /// Answer to `Unwrap`.
    Unwrapped(Unwrapped),
    /// Answer to `GenerateDataKey`.
    DataKey(DataKey),
    /// The request failed.
    Error(ErrorReply),
}

impl Response {
    /// A short name of the variant, for error messages about unexpected answers.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Pong => "Pong",
            Response::Status(_) => "Status",
            Response::Key(_) => "Key",
            Response::Keys(_) => "Keys",
            Response::Wrapped(_) => "Wrapped",
            Response::Unwrapped(_) => "Unwrapped",
            Response::DataKey(_) => "DataKey",
            Response::Error(_) => "Error",
        }
    }

    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }
}

/// A refused request: a stable code and a message for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure (stable number on the wire).
    pub code: ErrorCode,
    /// What failed, on what, and what to do; never secret material.
    pub message: String,
}

/// A ciphertext and the key version that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrapped {
    /// Key name.
    pub key: String,
    /// Key version used.
    pub version: u32,
    /// The ciphertext blob (format in the README).
    pub ciphertext: Ciphertext,
}

/// A decrypted plaintext and the key version that made its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwrapped {
    /// Key name.
    pub key: String,
    /// Key version of the ciphertext.
    pub version: u32,
    /// The plaintext.
    pub plaintext: SecretBytes,
}

/// A fresh data key: its wrapped form, and the plaintext unless the request
/// asked for the wrapped form only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    /// Key name.
    pub key: String,
    /// Key version used.
    pub version: u32,
    /// The data key in clear; `None` when `include_plaintext` was false.
    pub plaintext: Option<SecretBytes>,
    /// The data key wrapped under `key`.
    pub ciphertext: Ciphertext,
}

/// Whether a key can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// In service.
    Enabled,
    /// Stopped until an admin enables it.
    Disabled,
    /// Revoked for good; its material is deleted.
    Revoked,
}

/// Whether a key version can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionState {
    /// Its KEK exists; it unwraps (if at or above the minimum decryption version).
    Enabled,
    /// Revoked for good; its KEK is deleted.
    Revoked,
}

/// Metadata of one key version; never key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Enabled or revoked.
    pub state: VersionState,
    /// How many encryptions this version has made.
    pub encryptions: u64,
}

/// Metadata of one key; never key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Random 128-bit id given at creation; ciphertexts carry it.
    pub id: [u8; 16],
    /// Key name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Enabled, disabled or revoked.
    pub state: KeyState,
    /// The version new ciphertexts use.
    pub latest_version: u32,
    /// Versions below this refuse to unwrap.
    pub min_decryption_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// One page of a key listing, the answer to [`Request::ListKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPage {
    /// The keys of this page, in name order.
    pub keys: Vec<KeyInfo>,
    /// When more keys follow: the name to pass as `after` for the next page
    /// (the last name of this page). `None`: this page is the last.
    pub next: Option<String>,
}

/// The daemon's health, as `Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The daemon's package version.
    pub daemon_version: String,
    /// Oldest protocol version the daemon accepts.
    pub oldest_protocol: u16,
    /// Newest protocol version the daemon speaks.
    pub newest_protocol: u16,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Whether the TPM answered the daemon's last probe.
    pub tpm_reachable: bool,
    /// Whether the root key was unsealed and the keys derived from it are in
    /// memory (the root key itself is wiped once they are).
    pub root_key_loaded: bool,
    /// A check value of the root key (not the key; safe to compare and log),
    /// to tell whether two runs hold the same root key.
    pub root_key_check: String,
    /// Named counters (keys, versions, requests by operation and result...);
    /// empty, like `root_key_check`, when the daemon withholds them from a
    /// peer that is neither admin nor granted `metrics`.
    pub counters: BTreeMap<String, u64>,
}
