//! Protocol version 4, frozen: the request and response enums and the key
//! metadata exactly as version-4 peers encode them, and their conversions
//! to and from the current version.
//!
//! Version 5 added key lifecycle and metadata: `CreateKey` gained
//! `settings`, `Rewrap` gained a destination, `KeyInfo` gained the
//! description, tags, rotation period and deletion date (and `KeyState`
//! the `PendingDeletion` state, which a version-4 peer sees as `Disabled`),
//! and the lifecycle and batch requests were appended. Everything else is
//! shared with version 5 ([`crate::v5`]), whose [`crate::v5::StatusInfo`]
//! it carries. Never edit these shapes: a version-4 client built today
//! encodes them this way. Versions 1 to 3 ([`crate::v1`], [`crate::v2`],
//! [`crate::v3`]) convert to and from this module's shapes, which convert
//! to and from version 5's, which convert to and from the current ones;
//! the conversions between this module's shapes and the current ones go
//! that way too.

use serde::{Deserialize, Serialize};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::message::{
    DataKey, EncryptionContext, ErrorReply, ExportedFile, KeyState, KeyType, MacTag, Operation,
    PublicKeyInfo, RootRotation, SignInput, Signature, TransportKeyInfo, Unwrapped, Verification,
    VersionInfo, Wrapped,
};
use crate::v5::{NotInV5, StatusInfo};

/// This module's protocol version.
pub const VERSION: u16 = 4;

/// How many request variants version 4 has (indexes 0 to 23).
pub const REQUEST_VARIANTS: u32 = 24;

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
    /// What the key is for (version 4; older daemons have only
    /// [`KeyType::Aes256Gcm`] keys).
    pub key_type: KeyType,
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

/// A current message that version 4, and so every older version, cannot
/// express. Its `Display` speaks of version 4; [`NotInV4::in_version`]
/// says the same of the version a message was to be sent in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotInV4 {
    /// A request appended after version 4.
    Request(Operation),
    /// A field added in version 5 that is set to something other than its
    /// default.
    Field(&'static str),
    /// A response appended after version 4.
    Response(&'static str),
    /// A message version 5 cannot express either.
    Later(NotInV5),
}

impl From<NotInV5> for NotInV4 {
    fn from(not_in: NotInV5) -> NotInV4 {
        NotInV4::Later(not_in)
    }
}

impl NotInV4 {
    /// What protocol version `proto` (4 or older, all of which lack what
    /// version 4 lacks) cannot carry.
    pub fn in_version(&self, proto: u16) -> String {
        match self {
            NotInV4::Request(op) => format!(
                "protocol version {proto} has no {op} request (it needs protocol version 5: upgrade the daemon or the client)"
            ),
            NotInV4::Field(field) => format!(
                "protocol version {proto} cannot carry {field} (it needs protocol version 5: upgrade the daemon)"
            ),
            NotInV4::Response(kind) => format!("protocol version {proto} has no {kind} response"),
            NotInV4::Later(not_in) => not_in.in_version(proto),
        }
    }
}

impl std::fmt::Display for NotInV4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.in_version(VERSION))
    }
}

impl std::error::Error for NotInV4 {}

/// Key metadata from a daemon of version 4: no description, tags, rotation
/// period or deletion date.
impl From<KeyInfo> for crate::KeyInfo {
    fn from(key: KeyInfo) -> crate::KeyInfo {
        crate::KeyInfo {
            id: key.id,
            name: key.name,
            created: key.created,
            state: key.state,
            latest_version: key.latest_version,
            min_decryption_version: key.min_decryption_version,
            versions: key.versions,
            key_type: key.key_type,
            description: String::new(),
            tags: Default::default(),
            rotation_period: None,
            next_rotation: None,
            deletion_date: None,
        }
    }
}

/// Key metadata for a client of version 4: the fields of version 5 are
/// left out, and a key pending deletion shows as disabled (which it is, and
/// more: the client's requests on it are refused as if it were disabled).
impl From<crate::KeyInfo> for KeyInfo {
    fn from(key: crate::KeyInfo) -> KeyInfo {
        KeyInfo {
            id: key.id,
            name: key.name,
            created: key.created,
            state: match key.state {
                KeyState::PendingDeletion => KeyState::Disabled,
                state => state,
            },
            latest_version: key.latest_version,
            min_decryption_version: key.min_decryption_version,
            versions: key.versions,
            key_type: key.key_type,
        }
    }
}

impl From<KeyPage> for crate::KeyPage {
    fn from(page: KeyPage) -> crate::KeyPage {
        crate::KeyPage {
            keys: page.keys.into_iter().map(Into::into).collect(),
            next: page.next,
        }
    }
}

impl From<crate::KeyPage> for KeyPage {
    fn from(page: crate::KeyPage) -> KeyPage {
        KeyPage {
            keys: page.keys.into_iter().map(Into::into).collect(),
            next: page.next,
        }
    }
}

/// An error for a client of version 4: `KeyPendingDeletion` (code 19)
/// is sent as `KeyDisabled`, which such a client knows and which says what
/// it needs (an admin must act before the key is usable); the message
/// names the deletion date.
fn error_for_v4(reply: ErrorReply) -> ErrorReply {
    match reply.code {
        crate::ErrorCode::KeyPendingDeletion => ErrorReply {
            code: crate::ErrorCode::KeyDisabled,
            message: reply.message,
        },
        _ => reply,
    }
}

impl From<Request> for crate::v5::Request {
    fn from(request: Request) -> crate::v5::Request {
        use crate::v5::Request as Now;
        match request {
            Request::Ping => Now::Ping,
            Request::Status => Now::Status,
            Request::CreateKey { name, key_type } => Now::CreateKey {
                name,
                key_type,
                settings: crate::KeySettings::default(),
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
            } => Now::Rewrap {
                ciphertext,
                context,
                key,
                destination: None,
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
            Request::RotateRoot => Now::RotateRoot,
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
        }
    }
}

impl TryFrom<crate::v5::Request> for Request {
    type Error = NotInV4;

    fn try_from(request: crate::v5::Request) -> Result<Request, NotInV4> {
        use crate::v5::Request as Now;
        Ok(match request {
            Now::Ping => Request::Ping,
            Now::Status => Request::Status,
            Now::CreateKey {
                name,
                key_type,
                settings,
            } => {
                if settings != crate::KeySettings::default() {
                    return Err(NotInV4::Field(
                        "a key's rotation period, description or tags",
                    ));
                }
                Request::CreateKey { name, key_type }
            }
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
            } => {
                if destination.is_some() {
                    return Err(NotInV4::Field("a rewrap destination"));
                }
                Request::Rewrap {
                    ciphertext,
                    context,
                    key,
                }
            }
            Now::Rotate { key } => Request::Rotate { key },
            Now::Revoke { key, version } => Request::Revoke { key, version },
            Now::Disable { key } => Request::Disable { key },
            Now::Enable { key } => Request::Enable { key },
            Now::SetMinDecryptionVersion { key, version } => {
                Request::SetMinDecryptionVersion { key, version }
            }
            Now::ListKeys { after, limit } => Request::ListKeys { after, limit },
            Now::DescribeKey { key } => Request::DescribeKey { key },
            Now::RotateRoot => Request::RotateRoot,
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
            request @ (Now::ScheduleDeletion { .. }
            | Now::CancelDeletion { .. }
            | Now::SetRotationPeriod { .. }
            | Now::UpdateKeyMetadata { .. }
            | Now::WrapBatch { .. }
            | Now::UnwrapBatch { .. }
            | Now::WrapCredential { .. }) => return Err(NotInV4::Request(request.operation())),
        })
    }
}

impl From<Response> for crate::v5::Response {
    fn from(response: Response) -> crate::v5::Response {
        use crate::v5::Response as Now;
        match response {
            Response::Pong => Now::Pong,
            Response::Status(status) => Now::Status(status),
            Response::Key(key) => Now::Key(key.into()),
            Response::Keys(page) => Now::Keys(page.into()),
            Response::Wrapped(wrapped) => Now::Wrapped(wrapped),
            Response::Unwrapped(unwrapped) => Now::Unwrapped(unwrapped),
            Response::DataKey(data_key) => Now::DataKey(data_key),
            Response::Error(reply) => Now::Error(reply),
            Response::RootRotated(rotation) => Now::RootRotated(rotation),
            Response::TransportKey(info) => Now::TransportKey(info),
            Response::Exported(file) => Now::Exported(file),
            Response::Mac(tag) => Now::Mac(tag),
            Response::Verified(verification) => Now::Verified(verification),
            Response::Signature(signature) => Now::Signature(signature),
            Response::PublicKey(info) => Now::PublicKey(info),
            Response::Random(bytes) => Now::Random(bytes),
        }
    }
}

impl TryFrom<crate::v5::Response> for Response {
    type Error = NotInV4;

    fn try_from(response: crate::v5::Response) -> Result<Response, NotInV4> {
        use crate::v5::Response as Now;
        Ok(match response {
            Now::Pong => Response::Pong,
            Now::Status(status) => Response::Status(status),
            Now::Key(key) => Response::Key(key.into()),
            Now::Keys(page) => Response::Keys(page.into()),
            Now::Wrapped(wrapped) => Response::Wrapped(wrapped),
            Now::Unwrapped(unwrapped) => Response::Unwrapped(unwrapped),
            Now::DataKey(data_key) => Response::DataKey(data_key),
            Now::Error(reply) => Response::Error(error_for_v4(reply)),
            Now::RootRotated(rotation) => Response::RootRotated(rotation),
            Now::TransportKey(info) => Response::TransportKey(info),
            Now::Exported(file) => Response::Exported(file),
            Now::Mac(tag) => Response::Mac(tag),
            Now::Verified(verification) => Response::Verified(verification),
            Now::Signature(signature) => Response::Signature(signature),
            Now::PublicKey(info) => Response::PublicKey(info),
            Now::Random(bytes) => Response::Random(bytes),
            response @ (Now::WrappedBatch(_) | Now::UnwrappedBatch(_)) => {
                return Err(NotInV4::Response(response.kind()));
            }
        })
    }
}

impl From<Request> for crate::Request {
    fn from(request: Request) -> crate::Request {
        crate::v5::Request::from(request).into()
    }
}

impl TryFrom<crate::Request> for Request {
    type Error = NotInV4;

    fn try_from(request: crate::Request) -> Result<Request, NotInV4> {
        Request::try_from(crate::v5::Request::try_from(request)?)
    }
}

impl From<Response> for crate::Response {
    fn from(response: Response) -> crate::Response {
        crate::v5::Response::from(response).into()
    }
}

impl TryFrom<crate::Response> for Response {
    type Error = NotInV4;

    fn try_from(response: crate::Response) -> Result<Response, NotInV4> {
        Response::try_from(crate::v5::Response::try_from(response)?)
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

/// A current message that an older version (1 to 3) cannot express: either
/// version 4 already lacks it, or that version does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInOlder<E: std::error::Error> {
    /// Version 4 cannot express it, so no older version can.
    #[error(transparent)]
    V4(#[from] NotInV4),
    /// Version 4 can, the older version cannot.
    #[error(transparent)]
    Older(E),
}

/// Direct conversions between the current shapes and those of versions 1
/// to 3, through version 4's (which is what those versions convert to).
macro_rules! through_v4 {
    ($module:ident, $not_in:ty) => {
        impl From<crate::$module::Request> for crate::Request {
            fn from(request: crate::$module::Request) -> crate::Request {
                Request::from(request).into()
            }
        }

        impl TryFrom<crate::Request> for crate::$module::Request {
            type Error = NotInOlder<$not_in>;

            fn try_from(request: crate::Request) -> Result<Self, NotInOlder<$not_in>> {
                crate::$module::Request::try_from(Request::try_from(request)?)
                    .map_err(NotInOlder::Older)
            }
        }

        impl From<crate::$module::Response> for crate::Response {
            fn from(response: crate::$module::Response) -> crate::Response {
                Response::from(response).into()
            }
        }

        impl TryFrom<crate::Response> for crate::$module::Response {
            type Error = NotInOlder<$not_in>;

            fn try_from(response: crate::Response) -> Result<Self, NotInOlder<$not_in>> {
                crate::$module::Response::try_from(Response::try_from(response)?)
                    .map_err(NotInOlder::Older)
            }
        }
    };
}

through_v4!(v1, crate::v1::NotInV1);
through_v4!(v2, crate::v2::NotInV2);
through_v4!(v3, crate::v3::NotInV3);

impl From<crate::v3::KeyInfo> for crate::KeyInfo {
    fn from(key: crate::v3::KeyInfo) -> crate::KeyInfo {
        KeyInfo::from(key).into()
    }
}

impl From<crate::KeyInfo> for crate::v3::KeyInfo {
    fn from(key: crate::KeyInfo) -> crate::v3::KeyInfo {
        KeyInfo::from(key).into()
    }
}

impl From<crate::v3::KeyPage> for crate::KeyPage {
    fn from(page: crate::v3::KeyPage) -> crate::KeyPage {
        KeyPage::from(page).into()
    }
}

impl From<crate::KeyPage> for crate::v3::KeyPage {
    fn from(page: crate::KeyPage) -> crate::v3::KeyPage {
        KeyPage::from(page).into()
    }
}
