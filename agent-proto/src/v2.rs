//! Protocol version 2, frozen: the request and response enums and the
//! status structure exactly as version-2 peers encode them, and their
//! conversions to and from the current version.
//!
//! Version 3 appended requests (and their responses) and appended the
//! recovery and rollback fields to `StatusInfo`; everything else is shared
//! with the current version, except `KeyInfo` and `KeyPage`, which version
//! 4 extended: version 2 carries the frozen [`crate::v3::KeyInfo`] and
//! [`crate::v3::KeyPage`]. Never edit these shapes: a version-2 client
//! built today encodes them this way. Version 1 ([`crate::v1`]) carries
//! this module's [`StatusInfo`] too.

use serde::{Deserialize, Serialize};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::message::{
    DataKey, EncryptionContext, ErrorReply, KeyType, Operation, RecoveryStatus, RollbackStatus,
    Unwrapped, Wrapped,
};
use crate::v3::{KeyInfo, KeyPage};

/// This module's protocol version.
pub const VERSION: u16 = 2;

/// How many request variants version 2 has (indexes 0 to 13).
pub const REQUEST_VARIANTS: u32 = 14;

/// A version-2 request: [`crate::v4::Request`] as it was, before the requests
/// of version 3 were appended.
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
}

/// A version-2 response: [`crate::v4::Response`] as it was, with the
/// version-2 [`StatusInfo`].
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
}

/// The daemon's health as version 2 reported it: [`crate::v5::StatusInfo`]
/// without the recovery and rollback fields of version 3. Version 1 uses
/// it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// As in [`crate::v5::StatusInfo`].
    pub daemon_version: String,
    /// As in [`crate::v5::StatusInfo`].
    pub oldest_protocol: u16,
    /// As in [`crate::v5::StatusInfo`].
    pub newest_protocol: u16,
    /// As in [`crate::v5::StatusInfo`].
    pub uptime_secs: u64,
    /// As in [`crate::v5::StatusInfo`].
    pub tpm_reachable: bool,
    /// As in [`crate::v5::StatusInfo`].
    pub root_key_loaded: bool,
    /// As in [`crate::v5::StatusInfo`].
    pub root_key_check: String,
    /// As in [`crate::v5::StatusInfo`].
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// What a daemon of version 1 or 2 says about recovery, which it never
/// had: not configured, and why the client cannot tell more.
fn recovery_of_older_daemon() -> RecoveryStatus {
    RecoveryStatus {
        problem: "the daemon speaks protocol 2 or older and has no recovery: upgrade hostkmsd"
            .to_string(),
        ..RecoveryStatus::default()
    }
}

impl From<StatusInfo> for crate::v5::StatusInfo {
    fn from(status: StatusInfo) -> crate::v5::StatusInfo {
        crate::v5::StatusInfo {
            daemon_version: status.daemon_version,
            oldest_protocol: status.oldest_protocol,
            newest_protocol: status.newest_protocol,
            uptime_secs: status.uptime_secs,
            tpm_reachable: status.tpm_reachable,
            root_key_loaded: status.root_key_loaded,
            root_key_check: status.root_key_check,
            counters: status.counters,
            recovery: recovery_of_older_daemon(),
            rollback: RollbackStatus::default(),
        }
    }
}

impl From<StatusInfo> for crate::StatusInfo {
    fn from(status: StatusInfo) -> crate::StatusInfo {
        crate::v5::StatusInfo::from(status).into()
    }
}

impl From<crate::StatusInfo> for StatusInfo {
    fn from(status: crate::StatusInfo) -> StatusInfo {
        crate::v5::StatusInfo::from(status).into()
    }
}

impl From<crate::v5::StatusInfo> for StatusInfo {
    fn from(status: crate::v5::StatusInfo) -> StatusInfo {
        StatusInfo {
            daemon_version: status.daemon_version,
            oldest_protocol: status.oldest_protocol,
            newest_protocol: status.newest_protocol,
            uptime_secs: status.uptime_secs,
            tpm_reachable: status.tpm_reachable,
            root_key_loaded: status.root_key_loaded,
            root_key_check: status.root_key_check,
            counters: status.counters,
        }
    }
}

/// A current message that version 2 cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInV2 {
    /// A request appended after version 2.
    #[error("protocol version 2 has no {0} request (upgrade the daemon or the client)")]
    Request(Operation),
    /// A `CreateKey` of a type other than AES-256-GCM, the only type
    /// version 2 knows.
    #[error(
        "protocol version 2 creates only aes256-gcm keys, not {0} keys (creating one needs \
         protocol version 4)"
    )]
    KeyType(KeyType),
    /// A response appended after version 2.
    #[error("protocol version 2 has no {0} response")]
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
            Request::ListKeys { after, limit } => Now::ListKeys { after, limit },
            Request::DescribeKey { key } => Now::DescribeKey { key },
        }
    }
}

impl TryFrom<crate::v4::Request> for Request {
    type Error = NotInV2;

    fn try_from(request: crate::v4::Request) -> Result<Request, NotInV2> {
        use crate::v4::Request as Now;
        Ok(match request {
            Now::Ping => Request::Ping,
            Now::Status => Request::Status,
            Now::CreateKey {
                name,
                key_type: KeyType::Aes256Gcm,
            } => Request::CreateKey { name },
            Now::CreateKey { key_type, .. } => return Err(NotInV2::KeyType(key_type)),
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
            request @ (Now::RotateRoot
            | Now::TransportKey
            | Now::ExportKey { .. }
            | Now::ImportKey { .. }
            | Now::Mac { .. }
            | Now::VerifyMac { .. }
            | Now::Sign { .. }
            | Now::Verify { .. }
            | Now::GetPublicKey { .. }
            | Now::GenerateRandom { .. }) => return Err(NotInV2::Request(request.operation())),
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
            Response::Keys(page) => Now::Keys(page.into()),
            Response::Wrapped(wrapped) => Now::Wrapped(wrapped),
            Response::Unwrapped(unwrapped) => Now::Unwrapped(unwrapped),
            Response::DataKey(data_key) => Now::DataKey(data_key),
            Response::Error(reply) => Now::Error(reply),
        }
    }
}

impl TryFrom<crate::v4::Response> for Response {
    type Error = NotInV2;

    fn try_from(response: crate::v4::Response) -> Result<Response, NotInV2> {
        use crate::v4::Response as Now;
        Ok(match response {
            Now::Pong => Response::Pong,
            Now::Status(status) => Response::Status(status.into()),
            Now::Key(key) => Response::Key(key.into()),
            Now::Keys(page) => Response::Keys(page.into()),
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
                return Err(NotInV2::Response(response.kind()));
            }
        })
    }
}
