//! Protocol version 1, frozen: the request and response enums exactly as
//! version-1 peers encode them, and their conversions to and from the
//! current version.
//!
//! Only the enums whose shape changed since version 1 are copied here
//! (`Request` and `Response`, for the paginated `ListKeys` of version 2);
//! the structures they carry are shared with the current version, except
//! `StatusInfo`, which version 3 extended (version 1 carries the frozen
//! [`crate::v2::StatusInfo`]), and `KeyInfo`, which version 4 extended
//! (version 1 carries the frozen [`crate::v3::KeyInfo`]). Never edit these enums: a version-1 client built years ago
//! encodes them this way. A later version that changes a shared structure
//! copies that structure here first.

use serde::{Deserialize, Serialize};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::message::{DataKey, EncryptionContext, ErrorReply, KeyType, Unwrapped, Wrapped};
use crate::v2::StatusInfo;
use crate::v3::{KeyInfo, KeyPage};

/// This module's protocol version.
pub const VERSION: u16 = 1;

/// How many request variants version 1 has (indexes 0 to 13).
pub const REQUEST_VARIANTS: u32 = 14;

/// A version-1 request: [`crate::v4::Request`] as it was, with `ListKeys`
/// without fields (every key in one answer).
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
    /// Every key the caller may see, in one answer.
    ListKeys,
    /// As [`crate::v4::Request::DescribeKey`].
    DescribeKey {
        /// As in [`crate::v4::Request::DescribeKey`].
        key: String,
    },
}

/// A version-1 response: [`crate::v4::Response`] as it was, with `Keys`
/// carrying every key and no page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// As [`crate::v4::Response::Pong`].
    Pong,
    /// As [`crate::v4::Response::Status`].
    Status(StatusInfo),
    /// As [`crate::v4::Response::Key`].
    Key(KeyInfo),
    /// Every key the caller may see.
    Keys(Vec<KeyInfo>),
    /// As [`crate::v4::Response::Wrapped`].
    Wrapped(Wrapped),
    /// As [`crate::v4::Response::Unwrapped`].
    Unwrapped(Unwrapped),
    /// As [`crate::v4::Response::DataKey`].
    DataKey(DataKey),
    /// As [`crate::v4::Response::Error`].
    Error(ErrorReply),
}

/// A current message that version 1 cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInV1 {
    /// A `ListKeys` with `after` or `limit`: version 1 lists every key at once.
    #[error("protocol version 1 has no paginated ListKeys (after or limit given)")]
    PagedListKeys,
    /// A page of keys with more to follow: version 1 answers every key at once.
    #[error("protocol version 1 cannot carry a partial page of keys")]
    PartialKeyPage,
    /// A request appended after version 1.
    #[error("protocol version 1 has no {0} request (upgrade the daemon or the client)")]
    Request(crate::Operation),
    /// A `CreateKey` of a type other than AES-256-GCM, the only type
    /// version 1 knows.
    #[error(
        "protocol version 1 creates only aes256-gcm keys, not {0} keys (creating one needs \
         protocol version 4)"
    )]
    KeyType(KeyType),
    /// A response appended after version 1.
    #[error("protocol version 1 has no {0} response")]
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
                key_type: KeyType::Aes256Gcm,
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
            Request::ListKeys => Now::ListKeys {
                after: None,
                limit: None,
            },
            Request::DescribeKey { key } => Now::DescribeKey { key },
        }
    }
}

impl TryFrom<crate::v4::Request> for Request {
    type Error = NotInV1;

    fn try_from(request: crate::v4::Request) -> Result<Request, NotInV1> {
        use crate::v4::Request as Now;
        Ok(match request {
            Now::Ping => Request::Ping,
            Now::Status => Request::Status,
            Now::CreateKey {
                name,
                key_type: KeyType::Aes256Gcm,
            } => Request::CreateKey { name },
            Now::CreateKey { key_type, .. } => return Err(NotInV1::KeyType(key_type)),
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
            Now::ListKeys {
                after: None,
                limit: None,
            } => Request::ListKeys,
            Now::ListKeys { .. } => return Err(NotInV1::PagedListKeys),
            Now::DescribeKey { key } => Request::DescribeKey { key },
            request @ (Now::RotateRoot
            | Now::TransportKey
            | Now::ExportKey { .. }
            | Now::ImportKey { .. }
            | Now::Mac { .. }
            | Now::VerifyMac { .. }
            | Now::Sign { .. }
            | Now::Verify { .. }
            | Now::GetPublicKey { .. }
            | Now::GenerateRandom { .. }) => return Err(NotInV1::Request(request.operation())),
        })
    }
}

impl From<Response> for crate::v4::Response {
    fn from(response: Response) -> crate::v4::Response {
        use crate::v4::Response as Now;
        match response {
            Response::Pong => Now::Pong,
            Response::Status(status) => Now::Status(status.into()),
            Response::Key(key) => Now::Key(key.into()),
            Response::Keys(keys) => Now::Keys(KeyPage { keys, next: None }.into()),
            Response::Wrapped(wrapped) => Now::Wrapped(wrapped),
            Response::Unwrapped(unwrapped) => Now::Unwrapped(unwrapped),
            Response::DataKey(data_key) => Now::DataKey(data_key),
            Response::Error(reply) => Now::Error(reply),
        }
    }
}

impl TryFrom<crate::v4::Response> for Response {
    type Error = NotInV1;

    fn try_from(response: crate::v4::Response) -> Result<Response, NotInV1> {
        use crate::v4::Response as Now;
        Ok(match response {
            Now::Pong => Response::Pong,
            Now::Status(status) => Response::Status(status.into()),
            Now::Key(key) => Response::Key(key.into()),
            Now::Keys(crate::v4::KeyPage { keys, next: None }) => {
                Response::Keys(keys.into_iter().map(Into::into).collect())
            }
            Now::Keys(crate::v4::KeyPage { next: Some(_), .. }) => {
                return Err(NotInV1::PartialKeyPage);
            }
            Now::Wrapped(wrapped) => Response::Wrapped(wrapped),
            Now::Unwrapped(unwrapped) => Response::Unwrapped(unwrapped),
            Now::DataKey(data_key) => Response::DataKey(data_key),
            Now::Error(reply) => Response::Error(reply),
            response @ (Now::RootRotated(_)
            | Now::TransportKey(_)
            | Now::Exported(_)
            | Now::Mac(_)
            | Now::Verified(_)
            | Now::Signature(_)
            | Now::PublicKey(_)
            | Now::Random(_)) => {
                return Err(NotInV1::Response(response.kind()));
            }
        })
    }
}
