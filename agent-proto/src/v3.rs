//! Protocol version 3, frozen: the request and response enums and the key
//! metadata exactly as version-3 peers encode them, and their conversions
//! to and from the current version.
//!
//! Version 4 added key types: `CreateKey` gained `key_type`, `KeyInfo`
//! gained `key_type` (so `KeyPage` and the `Key` and `Keys` responses
//! changed too), and the key-type requests and their responses were
//! appended. Everything else is shared with the current version. Never edit
//! these shapes: a version-3 client built today encodes them this way.
//! Versions 1 and 2 ([`crate::v1`], [`crate::v2`]) carry this module's
//! [`KeyInfo`] and [`KeyPage`] too: their key metadata never had a type.

use serde::{Deserialize, Serialize};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::message::{
    DataKey, EncryptionContext, ErrorReply, ExportedFile, KeyState, KeyType, Operation,
    RootRotation, TransportKeyInfo, Unwrapped, VersionInfo, Wrapped,
};
use crate::v5::StatusInfo;

/// This module's protocol version.
pub const VERSION: u16 = 3;

/// How many request variants version 3 has (indexes 0 to 17).
pub const REQUEST_VARIANTS: u32 = 18;

/// A version-3 request: [`crate::v4::Request`] as it was, with `CreateKey`
/// without a type (every key was [`KeyType::Aes256Gcm`]) and before the
/// key-type requests of version 4 were appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// As [`crate::v4::Request::Ping`].
    Ping,
    /// As [`crate::v4::Request::Status`].
    Status,
    /// As [`crate::v4::Request::CreateKey`].
    CreateKey {
        /// As in [`crate::v4::Request::CreateKey`].
        name: String,
    },
    /// As [`crate::v4::Request::Wrap`].
    Wrap {
        /// As in [`crate::v4::Request::Wrap`].
        key: String,
        /// As in [`crate::v4::Request::Wrap`].
        plaintext: SecretBytes,
        /// As in [`crate::v4::Request::Wrap`].
        context: EncryptionContext,
    },
    /// As [`crate::v4::Request::Unwrap`].
    Unwrap {
        /// As in [`crate::v4::Request::Unwrap`].
        ciphertext: Ciphertext,
        /// As in [`crate::v4::Request::Unwrap`].
        context: EncryptionContext,
        /// As in [`crate::v4::Request::Unwrap`].
        key: Option<String>,
    },
    /// As [`crate::v4::Request::GenerateDataKey`].
    GenerateDataKey {
        /// As in [`crate::v4::Request::GenerateDataKey`].
        key: String,
        /// As in [`crate::v4::Request::GenerateDataKey`].
        bytes: u16,
        /// As in [`crate::v4::Request::GenerateDataKey`].
        include_plaintext: bool,
        /// As in [`crate::v4::Request::GenerateDataKey`].
        context: EncryptionContext,
    },
    /// As [`crate::v4::Request::Rewrap`].
    Rewrap {
        /// As in [`crate::v4::Request::Rewrap`].
        ciphertext: Ciphertext,
        /// As in [`crate::v4::Request::Rewrap`].
        context: EncryptionContext,
        /// As in [`crate::v4::Request::Rewrap`].
        key: Option<String>,
    },
    /// As [`crate::v4::Request::Rotate`].
    Rotate {
        /// As in [`crate::v4::Request::Rotate`].
        key: String,
    },
    /// As [`crate::v4::Request::Revoke`].
    Revoke {
        /// As in [`crate::v4::Request::Revoke`].
        key: String,
        /// As in [`crate::v4::Request::Revoke`].
        version: Option<u32>,
    },
    /// As [`crate::v4::Request::Disable`].
    Disable {
        /// As in [`crate::v4::Request::Disable`].
        key: String,
    },
    /// As [`crate::v4::Request::Enable`].
    Enable {
        /// As in [`crate::v4::Request::Enable`].
        key: String,
    },
    /// As [`crate::v4::Request::SetMinDecryptionVersion`].
    SetMinDecryptionVersion {
        /// As in [`crate::v4::Request::SetMinDecryptionVersion`].
        key: String,
        /// As in [`crate::v4::Request::SetMinDecryptionVersion`].
        version: u32,
    },
    /// As [`crate::v4::Request::ListKeys`].
    ListKeys {
        /// As in [`crate::v4::Request::ListKeys`].
        after: Option<String>,
        /// As in [`crate::v4::Request::ListKeys`].
        limit: Option<u32>,
    },
    /// As [`crate::v4::Request::DescribeKey`].
    DescribeKey {
        /// As in [`crate::v4::Request::DescribeKey`].
        key: String,
    },
    /// As [`crate::v4::Request::RotateRoot`].
    RotateRoot,
    /// As [`crate::v4::Request::TransportKey`].
    TransportKey,
    /// As [`crate::v4::Request::ExportKey`].
    ExportKey {
        /// As in [`crate::v4::Request::ExportKey`].
        key: String,
        /// As in [`crate::v4::Request::ExportKey`].
        destination: String,
    },
    /// As [`crate::v4::Request::ImportKey`].
    ImportKey {
        /// As in [`crate::v4::Request::ImportKey`].
        file: Vec<u8>,
    },
}

/// A version-3 response: [`crate::v4::Response`] as it was, with the
/// version-3 [`KeyInfo`] and [`KeyPage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// As [`crate::v4::Response::Pong`].
    Pong,
    /// As [`crate::v4::Response::Status`].
    Status(StatusInfo),
    /// As [`crate::v4::Response::Key`].
    Key(KeyInfo),
    /// As [`crate::v4::Response::Keys`].
    Keys(KeyPage),
    /// As [`crate::v4::Response::Wrapped`].
    Wrapped(Wrapped),
    /// As [`crate::v4::Response::Unwrapped`].
    Unwrapped(Unwrapped),
    /// As [`crate::v4::Response::DataKey`].
    DataKey(DataKey),
    /// As [`crate::v4::Response::Error`].
    Error(ErrorReply),
    /// As [`crate::v4::Response::RootRotated`].
    RootRotated(RootRotation),
    /// As [`crate::v4::Response::TransportKey`].
    TransportKey(TransportKeyInfo),
    /// As [`crate::v4::Response::Exported`].
    Exported(ExportedFile),
}

/// A key's metadata as versions 1 to 3 reported it: [`crate::v4::KeyInfo`]
/// without the key's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// As in [`crate::v4::KeyInfo`].
    pub id: [u8; 16],
    /// As in [`crate::v4::KeyInfo`].
    pub name: String,
    /// As in [`crate::v4::KeyInfo`].
    pub created: u64,
    /// As in [`crate::v4::KeyInfo`].
    pub state: KeyState,
    /// As in [`crate::v4::KeyInfo`].
    pub latest_version: u32,
    /// As in [`crate::v4::KeyInfo`].
    pub min_decryption_version: u32,
    /// As in [`crate::v4::KeyInfo`].
    pub versions: Vec<VersionInfo>,
}

/// A page of a key listing as versions 2 and 3 reported it: of the
/// version-3 [`KeyInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPage {
    /// As in [`crate::v4::KeyPage`].
    pub keys: Vec<KeyInfo>,
    /// As in [`crate::v4::KeyPage`].
    pub next: Option<String>,
}

/// Key metadata from a daemon of version 3 or older: every key it has is
/// an AES-256-GCM key.
impl From<KeyInfo> for crate::v4::KeyInfo {
    fn from(key: KeyInfo) -> crate::v4::KeyInfo {
        crate::v4::KeyInfo {
            id: key.id,
            name: key.name,
            created: key.created,
            state: key.state,
            latest_version: key.latest_version,
            min_decryption_version: key.min_decryption_version,
            versions: key.versions,
            key_type: KeyType::Aes256Gcm,
        }
    }
}

/// Key metadata for a client of version 3 or older: the type is left out
/// (such a client cannot name it; an operation that does not fit the type
/// is refused with `WrongKeyType`, code 18, which it reads as an unknown
/// code with the daemon's message).
impl From<crate::v4::KeyInfo> for KeyInfo {
    fn from(key: crate::v4::KeyInfo) -> KeyInfo {
        KeyInfo {
            id: key.id,
            name: key.name,
            created: key.created,
            state: key.state,
            latest_version: key.latest_version,
            min_decryption_version: key.min_decryption_version,
            versions: key.versions,
        }
    }
}

impl From<KeyPage> for crate::v4::KeyPage {
    fn from(page: KeyPage) -> crate::v4::KeyPage {
        crate::v4::KeyPage {
            keys: page.keys.into_iter().map(Into::into).collect(),
            next: page.next,
        }
    }
}

impl From<crate::v4::KeyPage> for KeyPage {
    fn from(page: crate::v4::KeyPage) -> KeyPage {
        KeyPage {
            keys: page.keys.into_iter().map(Into::into).collect(),
            next: page.next,
        }
    }
}

/// A current message that version 3 cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInV3 {
    /// A request appended after version 3.
    #[error("protocol version 3 has no {0} request (upgrade the daemon or the client)")]
    Request(Operation),
    /// A `CreateKey` of a type other than AES-256-GCM, the only type
    /// version 3 knows.
    #[error(
        "protocol version 3 creates only aes256-gcm keys, not {0} keys (creating one needs \
         protocol version 4)"
    )]
    KeyType(KeyType),
    /// A response appended after version 3.
    #[error("protocol version 3 has no {0} response")]
    Response(&'static str),
}

impl From<Request> for crate::v4::Request {
    fn from(request: Request) -> crate::v4::Request {
        use crate::v4::Request as Now;
        match request {
            Request::Ping => Now::Ping,
            Request::Status => Now::Status,
            Request::CreateKey { name } => Now::CreateKey {
                name,
                key_type: crate::KeyType::Aes256Gcm,
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
        }
    }
}

impl TryFrom<crate::v4::Request> for Request {
    type Error = NotInV3;

    fn try_from(request: crate::v4::Request) -> Result<Request, NotInV3> {
        use crate::v4::Request as Now;
        Ok(match request {
            Now::Ping => Request::Ping,
            Now::Status => Request::Status,
            Now::CreateKey {
                name,
                key_type: crate::KeyType::Aes256Gcm,
            } => Request::CreateKey { name },
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
            } => Request::Rewrap {
                ciphertext,
                context,
                key,
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
            Now::RotateRoot => Request::RotateRoot,
            Now::TransportKey => Request::TransportKey,
            Now::ExportKey { key, destination } => Request::ExportKey { key, destination },
            Now::ImportKey { file } => Request::ImportKey { file },
            Now::CreateKey { key_type, .. } => return Err(NotInV3::KeyType(key_type)),
            request @ (Now::Mac { .. }
            | Now::VerifyMac { .. }
            | Now::Sign { .. }
            | Now::Verify { .. }
            | Now::GetPublicKey { .. }
            | Now::GenerateRandom { .. }) => return Err(NotInV3::Request(request.operation())),
        })
    }
}

impl From<Response> for crate::v4::Response {
    fn from(response: Response) -> crate::v4::Response {
        use crate::v4::Response as Now;
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
        }
    }
}

impl TryFrom<crate::v4::Response> for Response {
    type Error = NotInV3;

    fn try_from(response: crate::v4::Response) -> Result<Response, NotInV3> {
        use crate::v4::Response as Now;
        Ok(match response {
            Now::Pong => Response::Pong,
            Now::Status(status) => Response::Status(status),
            Now::Key(key) => Response::Key(key.into()),
            Now::Keys(page) => Response::Keys(page.into()),
            Now::Wrapped(wrapped) => Response::Wrapped(wrapped),
            Now::Unwrapped(unwrapped) => Response::Unwrapped(unwrapped),
            Now::DataKey(data_key) => Response::DataKey(data_key),
            Now::Error(reply) => Response::Error(reply),
            Now::RootRotated(rotation) => Response::RootRotated(rotation),
            Now::TransportKey(info) => Response::TransportKey(info),
            Now::Exported(file) => Response::Exported(file),
            response @ (Now::Mac(_)
            | Now::Verified(_)
            | Now::Signature(_)
            | Now::PublicKey(_)
            | Now::Random(_)) => {
                return Err(NotInV3::Response(response.kind()));
            }
        })
    }
}
