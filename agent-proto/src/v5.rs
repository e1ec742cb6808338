//! Protocol version 5, frozen: the request and response enums and the
//! status structure exactly as version-5 peers encode them, and their
//! conversions to and from the current version.
//!
//! Version 6 added the sealing of the root key behind a PIN and the boot
//! state: `StatusInfo` gained `sealing`, the requests `Unlock`, `Reseal`
//! and `ChangePin` and the responses `Unlocked` and `Resealed` were
//! appended, and the error codes `Locked` and `WrongPin`. Everything else
//! is shared with the current version. Never edit these shapes: a
//! version-5 client built today encodes them this way. Versions 3 and 4
//! ([`crate::v3`], [`crate::v4`]) carry this module's [`StatusInfo`] too;
//! version 4 converts to and from this module's shapes (and versions 1 to
//! 3 through version 4's).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::message::{
    DataKey, EncryptionContext, ErrorReply, ExportedFile, KeyInfo, KeyPage, KeySettings, KeyType,
    LockState, MacTag, Operation, PublicKeyInfo, RecoveryStatus, RewrapDestination, RollbackStatus,
    RootRotation, SealingStatus, SignInput, Signature, TransportKeyInfo, UnwrapItem, Unwrapped,
    Verification, WrapItem, Wrapped,
};

/// This module's protocol version.
pub const VERSION: u16 = 5;

/// How many request variants version 5 has (indexes 0 to 30).
pub const REQUEST_VARIANTS: u32 = 31;

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Daemon health and counters; answered with [`Response::Status`].
    Status,
    /// Create a key named `name` at version 1, of type `key_type` for life
    /// (version 4; before, every key was [`KeyType::Aes256Gcm`]).
    CreateKey {
        /// `[A-Za-z0-9._-]{1,128}`.
        name: String,
        /// What the key is for: every version has this type.
        key_type: KeyType,
        /// Rotation period, description and tags (version 5; before, a key
        /// had none).
        settings: KeySettings,
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
    /// Re-encrypt a ciphertext under its key's latest version, or (version
    /// 5) under another key or with another context; the plaintext never
    /// leaves the daemon.
    Rewrap {
        /// The ciphertext blob.
        ciphertext: Ciphertext,
        /// The context it was wrapped with (kept for the new ciphertext
        /// unless `destination` gives another).
        context: EncryptionContext,
        /// When given, the ciphertext must belong to this key.
        key: Option<String>,
        /// Where the new ciphertext goes (version 5): `None` re-encrypts
        /// under the source key's latest version with the same context,
        /// which needs the `rewrap` grant on the key; a destination needs
        /// `unwrap` on the source key and `wrap` on the destination key.
        destination: Option<RewrapDestination>,
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
        /// [`crate::KeyPage::next`]. `None` starts at the first key.
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
    /// Seal a new root key to the TPM and re-seal every key under it
    /// (admin only). Ciphertexts are unaffected. Answered with
    /// [`Response::RootRotated`].
    RotateRoot,
    /// This host's transport key: the age recipient other hosts export keys
    /// to. Answered with [`Response::TransportKey`].
    TransportKey,
    /// Export `key`'s live versions, encrypted to the transport key of
    /// `destination`, a host pinned in the daemon's config (`[[transfer]]`).
    /// Answered with [`Response::Exported`].
    ExportKey {
        /// Key name.
        key: String,
        /// The `name` of a `[[transfer]]` destination in the daemon's config.
        destination: String,
    },
    /// Import a key from a file another host exported to this host's
    /// transport key. Answered with [`Response::Key`].
    ImportKey {
        /// The exported file, as `ExportKey` returned it.
        file: Vec<u8>,
    },
    /// An HMAC tag of `data` under the latest version of an HMAC `key`.
    /// Answered with [`Response::Mac`].
    Mac {
        /// Key name.
        key: String,
        /// At most the daemon's `max_plaintext` bytes.
        data: SecretBytes,
    },
    /// Whether `tag` is the HMAC of `data` under `key`: under `version`
    /// when given, else under the 8 newest live versions at or above the minimum
    /// decryption version. Answered with [`Response::Verified`].
    VerifyMac {
        /// Key name.
        key: String,
        /// At most the daemon's `max_plaintext` bytes.
        data: SecretBytes,
        /// The tag to check (compared in constant time).
        tag: Vec<u8>,
        /// Check against this version only.
        version: Option<u32>,
    },
    /// A signature under the latest version of a signing `key`. Answered
    /// with [`Response::Signature`].
    Sign {
        /// Key name.
        key: String,
        /// The message, or (ECDSA P-256 only) its SHA-256 digest.
        input: SignInput,
    },
    /// Whether `signature` is `key`'s over `input`: under `version` when
    /// given, else under the 8 newest live versions at or above the minimum
    /// decryption version. Answered with [`Response::Verified`].
    Verify {
        /// Key name.
        key: String,
        /// The message, or (ECDSA P-256 only) its SHA-256 digest.
        input: SignInput,
        /// The signature in its standard encoding.
        signature: Vec<u8>,
        /// Check against this version only.
        version: Option<u32>,
    },
    /// The public key of a signing key's `version` (the latest when
    /// `None`). Answered with [`Response::PublicKey`].
    GetPublicKey {
        /// Key name.
        key: String,
        /// Which version; `None`: the latest.
        version: Option<u32>,
    },
    /// `bytes` random bytes (1 to [`crate::MAX_RANDOM_BYTES`]): the OS RNG mixed
    /// with the TPM's. Answered with [`Response::Random`].
    GenerateRandom {
        /// How many bytes.
        bytes: u16,
    },
    /// Put `key` in state [`crate::KeyState::PendingDeletion`] for `days` days
    /// ([`crate::MIN_DELETION_DAYS`] to [`crate::MAX_DELETION_DAYS`]), after which the
    /// daemon deletes every version's secret. Answered with
    /// [`Response::Key`].
    ScheduleDeletion {
        /// Key name.
        key: String,
        /// The waiting period in days.
        days: u16,
    },
    /// Take `key` out of [`crate::KeyState::PendingDeletion`]; it becomes
    /// disabled. Answered with [`Response::Key`].
    CancelDeletion {
        /// Key name.
        key: String,
    },
    /// Rotate `key` every `period` seconds (at least
    /// [`crate::MIN_ROTATION_PERIOD_SECS`]), or never by age with `None`. Answered
    /// with [`Response::Key`].
    SetRotationPeriod {
        /// Key name.
        key: String,
        /// Seconds between rotations; `None`: off.
        period: Option<u64>,
    },
    /// Change `key`'s description and tags. Answered with [`Response::Key`].
    UpdateKeyMetadata {
        /// Key name.
        key: String,
        /// The new description; `None` keeps the current one.
        description: Option<String>,
        /// Tags to add or replace.
        set_tags: BTreeMap<String, String>,
        /// Tags to remove (by tag name); removing an absent tag is no error.
        remove_tags: Vec<String>,
    },
    /// Encrypt up to [`crate::MAX_BATCH_ITEMS`] plaintexts under the latest
    /// version of `key`, each with its own context. Answered with
    /// [`Response::WrappedBatch`]: one result per item, in order.
    WrapBatch {
        /// Key name.
        key: String,
        /// The items.
        items: Vec<WrapItem>,
    },
    /// Decrypt up to [`crate::MAX_BATCH_ITEMS`] ciphertexts, each with its own
    /// context. Answered with [`Response::UnwrappedBatch`]: one result per
    /// item, in order.
    UnwrapBatch {
        /// When given, every ciphertext must belong to this key.
        key: Option<String>,
        /// The items.
        items: Vec<UnwrapItem>,
    },
    /// Encrypt a systemd credential: `plaintext` under the latest version of
    /// `key`, bound to the reserved context of [`crate::credential::context`]
    /// (`hostkms.unit` = `unit`, `hostkms.credential` = `credential`), which
    /// no other request may use. Admins only: a credential is host
    /// configuration. Answered with [`Response::Wrapped`]; the daemon's
    /// credential socket later unwraps it for that unit alone.
    WrapCredential {
        /// Key name (an `aes256-gcm` key).
        key: String,
        /// The systemd unit that will receive the credential, e.g.
        /// `postgresql.service`.
        unit: String,
        /// The credential's id in the unit's `LoadCredential=`.
        credential: String,
        /// The secret.
        plaintext: SecretBytes,
    },
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
    /// Answer to `RotateRoot`.
    RootRotated(RootRotation),
    /// Answer to `TransportKey`.
    TransportKey(TransportKeyInfo),
    /// Answer to `ExportKey`.
    Exported(ExportedFile),
    /// Answer to `Mac`.
    Mac(MacTag),
    /// Answer to `VerifyMac` and `Verify`.
    Verified(Verification),
    /// Answer to `Sign`.
    Signature(Signature),
    /// Answer to `GetPublicKey`.
    PublicKey(PublicKeyInfo),
    /// Answer to `GenerateRandom`.
    Random(SecretBytes),
    /// Answer to `WrapBatch`: one result per item, in the items' order.
    WrappedBatch(Vec<Result<Wrapped, ErrorReply>>),
    /// Answer to `UnwrapBatch`: one result per item, in the items' order.
    UnwrappedBatch(Vec<Result<Unwrapped, ErrorReply>>),
}

/// The daemon's health as version 5 (and 3 and 4) reported it:
/// [`crate::StatusInfo`] without the sealing of version 6.
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
    /// Whether the keys can be recovered without this TPM (version 3).
    pub recovery: RecoveryStatus,
    /// Whether the key store is bound to a TPM counter against rollback
    /// (version 3).
    pub rollback: RollbackStatus,
}

/// A current message that version 5, and so every older version, cannot
/// express. Its `Display` speaks of version 5; [`NotInV5::in_version`]
/// says the same of the version a message was to be sent in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotInV5 {
    /// A request appended after version 5.
    Request(Operation),
    /// A response appended after version 5.
    Response(&'static str),
    /// A field added after version 5 to a request it has.
    Field(&'static str),
}

impl NotInV5 {
    /// What protocol version `proto` (5 or older, all of which lack what
    /// version 5 lacks) cannot carry.
    pub fn in_version(&self, proto: u16) -> String {
        match self {
            NotInV5::Request(op) => format!(
                "protocol version {proto} has no {op} request (it needs protocol version 6: upgrade the daemon or the client)"
            ),
            NotInV5::Response(kind) => format!("protocol version {proto} has no {kind} response"),
            NotInV5::Field(what) => format!(
                "protocol version {proto} cannot carry {what} (it needs protocol version 6: upgrade the daemon or the client)"
            ),
        }
    }
}

impl std::fmt::Display for NotInV5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.in_version(VERSION))
    }
}

impl std::error::Error for NotInV5 {}

/// A status from a daemon of version 5 or older: it seals its root key
/// the plain way (no PCRs, no PIN) and is never locked.
impl From<StatusInfo> for crate::StatusInfo {
    fn from(status: StatusInfo) -> crate::StatusInfo {
        crate::StatusInfo {
            daemon_version: status.daemon_version,
            oldest_protocol: status.oldest_protocol,
            newest_protocol: status.newest_protocol,
            uptime_secs: status.uptime_secs,
            tpm_reachable: status.tpm_reachable,
            root_key_loaded: status.root_key_loaded,
            root_key_check: status.root_key_check,
            counters: status.counters,
            recovery: status.recovery,
            rollback: status.rollback,
            sealing: SealingStatus::default(),
        }
    }
}

/// A status for a client of version 5 or older: the sealing is left out,
/// and a locked daemon says its root key is not loaded (which it is not).
impl From<crate::StatusInfo> for StatusInfo {
    fn from(status: crate::StatusInfo) -> StatusInfo {
        StatusInfo {
            daemon_version: status.daemon_version,
            oldest_protocol: status.oldest_protocol,
            newest_protocol: status.newest_protocol,
            uptime_secs: status.uptime_secs,
            tpm_reachable: status.tpm_reachable,
            root_key_loaded: status.root_key_loaded && status.sealing.lock == LockState::Unlocked,
            root_key_check: status.root_key_check,
            counters: status.counters,
            recovery: status.recovery,
            rollback: status.rollback,
        }
    }
}

/// An error for a client of version 5 or older: `Locked` (code 20) is
/// sent as `TpmUnavailable` (13), which such a client knows and which
/// says what it needs (the daemon cannot use its keys until something
/// outside the client changes), with the daemon's message, which says to
/// run `hostkms unlock`. `WrongPin` answers only `Unlock`, `Reseal` and
/// `ChangePin`, which such a client cannot send.
fn error_for_v5(reply: ErrorReply) -> ErrorReply {
    match reply.code {
        crate::ErrorCode::Locked => ErrorReply {
            code: crate::ErrorCode::TpmUnavailable,
            message: reply.message,
        },
        _ => reply,
    }
}

impl From<Request> for crate::Request {
    fn from(request: Request) -> crate::Request {
        use crate::Request as Now;
        match request {
            Request::Ping => Now::Ping,
            Request::Status => Now::Status,
            Request::CreateKey {
                name,
                key_type,
                settings,
            } => Now::CreateKey {
                name,
                key_type,
                settings,
            },
            Request::Wrap {
                key,
                plaintext,
                context,
            } => Now::Wrap {
                key,
                plaintext,
                context,
            },
            Request::Unwrap {
                ciphertext,
                context,
                key,
            } => Now::Unwrap {
                ciphertext,
                context,
                key,
            },
            Request::GenerateDataKey {
                key,
                bytes,
                include_plaintext,
                context,
            } => Now::GenerateDataKey {
                key,
                bytes,
                include_plaintext,
                context,
            },
            Request::Rewrap {
                ciphertext,
                context,
                key,
                destination,
            } => Now::Rewrap {
                ciphertext,
                context,
                key,
                destination,
            },
            Request::Rotate { key } => Now::Rotate { key },
            Request::Revoke { key, version } => Now::Revoke { key, version },
            Request::Disable { key } => Now::Disable { key },
            Request::Enable { key } => Now::Enable { key },
            Request::SetMinDecryptionVersion { key, version } => {
                Now::SetMinDecryptionVersion { key, version }
            }
            Request::ListKeys { after, limit } => Now::ListKeys { after, limit },
            Request::DescribeKey { key } => Now::DescribeKey { key },
            Request::RotateRoot => Now::RotateRoot { pin: None },
            Request::TransportKey => Now::TransportKey,
            Request::ExportKey { key, destination } => Now::ExportKey { key, destination },
            Request::ImportKey { file } => Now::ImportKey { file },
            Request::Mac { key, data } => Now::Mac { key, data },
            Request::VerifyMac {
                key,
                data,
                tag,
                version,
            } => Now::VerifyMac {
                key,
                data,
                tag,
                version,
            },
            Request::Sign { key, input } => Now::Sign { key, input },
            Request::Verify {
                key,
                input,
                signature,
                version,
            } => Now::Verify {
                key,
                input,
                signature,
                version,
            },
            Request::GetPublicKey { key, version } => Now::GetPublicKey { key, version },
            Request::GenerateRandom { bytes } => Now::GenerateRandom { bytes },
            Request::ScheduleDeletion { key, days } => Now::ScheduleDeletion { key, days },
            Request::CancelDeletion { key } => Now::CancelDeletion { key },
            Request::SetRotationPeriod { key, period } => Now::SetRotationPeriod { key, period },
            Request::UpdateKeyMetadata {
                key,
                description,
                set_tags,
                remove_tags,
            } => Now::UpdateKeyMetadata {
                key,
                description,
                set_tags,
                remove_tags,
            },
            Request::WrapBatch { key, items } => Now::WrapBatch { key, items },
            Request::UnwrapBatch { key, items } => Now::UnwrapBatch { key, items },
            Request::WrapCredential {
                key,
                unit,
                credential,
                plaintext,
            } => Now::WrapCredential {
                key,
                unit,
                credential,
                plaintext,
            },
        }
    }
}

impl TryFrom<crate::Request> for Request {
    type Error = NotInV5;

    fn try_from(request: crate::Request) -> Result<Request, NotInV5> {
        use crate::Request as Now;
        Ok(match request {
            Now::Ping => Request::Ping,
            Now::Status => Request::Status,
            Now::CreateKey {
                name,
                key_type,
                settings,
            } => Request::CreateKey {
                name,
                key_type,
                settings,
            },
            Now::Wrap {
                key,
                plaintext,
                context,
            } => Request::Wrap {
                key,
                plaintext,
                context,
            },
            Now::Unwrap {
                ciphertext,
                context,
                key,
            } => Request::Unwrap {
                ciphertext,
                context,
                key,
            },
            Now::GenerateDataKey {
                key,
                bytes,
                include_plaintext,
                context,
            } => Request::GenerateDataKey {
                key,
                bytes,
                include_plaintext,
                context,
            },
            Now::Rewrap {
                ciphertext,
                context,
                key,
                destination,
            } => Request::Rewrap {
                ciphertext,
                context,
                key,
                destination,
            },
            Now::Rotate { key } => Request::Rotate { key },
            Now::Revoke { key, version } => Request::Revoke { key, version },
            Now::Disable { key } => Request::Disable { key },
            Now::Enable { key } => Request::Enable { key },
            Now::SetMinDecryptionVersion { key, version } => {
                Request::SetMinDecryptionVersion { key, version }
            }
            Now::ListKeys { after, limit } => Request::ListKeys { after, limit },
            Now::DescribeKey { key } => Request::DescribeKey { key },
            Now::RotateRoot { pin: None } => Request::RotateRoot,
            Now::RotateRoot { pin: Some(_) } => {
                return Err(NotInV5::Field("a PIN in a rotate-root request"));
            }
            Now::TransportKey => Request::TransportKey,
            Now::ExportKey { key, destination } => Request::ExportKey { key, destination },
            Now::ImportKey { file } => Request::ImportKey { file },
            Now::Mac { key, data } => Request::Mac { key, data },
            Now::VerifyMac {
                key,
                data,
                tag,
                version,
            } => Request::VerifyMac {
                key,
                data,
                tag,
                version,
            },
            Now::Sign { key, input } => Request::Sign { key, input },
            Now::Verify {
                key,
                input,
                signature,
                version,
            } => Request::Verify {
                key,
                input,
                signature,
                version,
            },
            Now::GetPublicKey { key, version } => Request::GetPublicKey { key, version },
            Now::GenerateRandom { bytes } => Request::GenerateRandom { bytes },
            Now::ScheduleDeletion { key, days } => Request::ScheduleDeletion { key, days },
            Now::CancelDeletion { key } => Request::CancelDeletion { key },
            Now::SetRotationPeriod { key, period } => Request::SetRotationPeriod { key, period },
            Now::UpdateKeyMetadata {
                key,
                description,
                set_tags,
                remove_tags,
            } => Request::UpdateKeyMetadata {
                key,
                description,
                set_tags,
                remove_tags,
            },
            Now::WrapBatch { key, items } => Request::WrapBatch { key, items },
            Now::UnwrapBatch { key, items } => Request::UnwrapBatch { key, items },
            Now::WrapCredential {
                key,
                unit,
                credential,
                plaintext,
            } => Request::WrapCredential {
                key,
                unit,
                credential,
                plaintext,
            },
            request @ (Now::Unlock { .. } | Now::Reseal { .. } | Now::ChangePin { .. }) => {
                return Err(NotInV5::Request(request.operation()));
            }
        })
    }
}

impl From<Response> for crate::Response {
    fn from(response: Response) -> crate::Response {
        use crate::Response as Now;
        match response {
            Response::Pong => Now::Pong,
            Response::Status(status) => Now::Status(status.into()),
            Response::Key(x) => Now::Key(x),
            Response::Keys(x) => Now::Keys(x),
            Response::Wrapped(x) => Now::Wrapped(x),
            Response::Unwrapped(x) => Now::Unwrapped(x),
            Response::DataKey(x) => Now::DataKey(x),
            Response::Error(x) => Now::Error(x),
            Response::RootRotated(x) => Now::RootRotated(x),
            Response::TransportKey(x) => Now::TransportKey(x),
            Response::Exported(x) => Now::Exported(x),
            Response::Mac(x) => Now::Mac(x),
            Response::Verified(x) => Now::Verified(x),
            Response::Signature(x) => Now::Signature(x),
            Response::PublicKey(x) => Now::PublicKey(x),
            Response::Random(x) => Now::Random(x),
            Response::WrappedBatch(x) => Now::WrappedBatch(x),
            Response::UnwrappedBatch(x) => Now::UnwrappedBatch(x),
        }
    }
}

impl TryFrom<crate::Response> for Response {
    type Error = NotInV5;

    fn try_from(response: crate::Response) -> Result<Response, NotInV5> {
        use crate::Response as Now;
        Ok(match response {
            Now::Pong => Response::Pong,
            Now::Status(status) => Response::Status(status.into()),
            Now::Key(x) => Response::Key(x),
            Now::Keys(x) => Response::Keys(x),
            Now::Wrapped(x) => Response::Wrapped(x),
            Now::Unwrapped(x) => Response::Unwrapped(x),
            Now::DataKey(x) => Response::DataKey(x),
            Now::Error(reply) => Response::Error(error_for_v5(reply)),
            Now::RootRotated(x) => Response::RootRotated(x),
            Now::TransportKey(x) => Response::TransportKey(x),
            Now::Exported(x) => Response::Exported(x),
            Now::Mac(x) => Response::Mac(x),
            Now::Verified(x) => Response::Verified(x),
            Now::Signature(x) => Response::Signature(x),
            Now::PublicKey(x) => Response::PublicKey(x),
            Now::Random(x) => Response::Random(x),
            Now::WrappedBatch(x) => Response::WrappedBatch(x),
            Now::UnwrappedBatch(x) => Response::UnwrappedBatch(x),
            response @ (Now::Unlocked(_) | Now::Resealed(_)) => {
                return Err(NotInV5::Response(response.kind()));
            }
        })
    }
}

impl Request {
    /// The operation this request performs (for messages about requests
    /// an older version lacks).
    pub fn operation(&self) -> Operation {
        crate::Request::from(self.clone()).operation()
    }
}

impl Response {
    /// A short name of the variant, as [`crate::Response::kind`].
    pub fn kind(&self) -> &'static str {
        crate::Response::from(self.clone()).kind()
    }
}
