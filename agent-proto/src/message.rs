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
/// Version 6 added the sealing of the root key behind a PIN and the boot
/// state (PCRs): [`StatusInfo::sealing`], the requests `Unlock`, `Reseal`
/// and `ChangePin`, and the error codes `Locked` and `WrongPin`; version 5
/// (frozen in [`crate::v5`]) added the key lifecycle (deletion with a waiting period,
/// rotation by age), key metadata, rewrap to another key or context and
/// batch wrap and unwrap; version 4 (frozen in [`crate::v4`]) added key types ([`KeyType`] in `CreateKey` and [`KeyInfo`],
/// and the requests that MAC, sign, verify and give random bytes); version
/// 3 (recovery and rollback in [`StatusInfo`]) is frozen in [`crate::v3`],
/// version 2 (paginated `ListKeys`) in [`crate::v2`], version 1 in
/// [`crate::v1`].
pub const PROTOCOL_VERSION: u16 = 6;

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
    RotateRoot {
        /// The PIN, when the root key is sealed to one (version 6; before,
        /// no root key had a PIN): the new key's PIN copy is sealed with
        /// it, once it has opened the current one.
        pin: Option<SecretBytes>,
    },
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
    /// `bytes` random bytes (1 to [`MAX_RANDOM_BYTES`]): the OS RNG mixed
    /// with the TPM's. Answered with [`Response::Random`].
    GenerateRandom {
        /// How many bytes.
        bytes: u16,
    },
    /// Put `key` in state [`KeyState::PendingDeletion`] for `days` days
    /// ([`MIN_DELETION_DAYS`] to [`MAX_DELETION_DAYS`]), after which the
    /// daemon deletes every version's secret. Answered with
    /// [`Response::Key`].
    ScheduleDeletion {
        /// Key name.
        key: String,
        /// The waiting period in days.
        days: u16,
    },
    /// Take `key` out of [`KeyState::PendingDeletion`]; it becomes
    /// disabled. Answered with [`Response::Key`].
    CancelDeletion {
        /// Key name.
        key: String,
    },
    /// Rotate `key` every `period` seconds (at least
    /// [`MIN_ROTATION_PERIOD_SECS`]), or never by age with `None`. Answered
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
    /// Encrypt up to [`MAX_BATCH_ITEMS`] plaintexts under the latest
    /// version of `key`, each with its own context. Answered with
    /// [`Response::WrappedBatch`]: one result per item, in order.
    WrapBatch {
        /// Key name.
        key: String,
        /// The items.
        items: Vec<WrapItem>,
    },
    /// Decrypt up to [`MAX_BATCH_ITEMS`] ciphertexts, each with its own
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
    /// Unseal the root key of a locked daemon with the PIN (version 6;
    /// admin only, never grantable). On a daemon that has no root key yet
    /// and is configured with `pin = true`, `pin` becomes the PIN and the
    /// root key is created and sealed. Answered with [`Response::Unlocked`].
    Unlock {
        /// The PIN: raw UTF-8 of 8 to 32 bytes ([`crate::pin::Pin`]).
        pin: SecretBytes,
        /// After a PCR mismatch, also reseal the PCR-bound copy of the root
        /// key to the PCRs' current values, so the next start unseals it
        /// without the PIN. `false`: unlocked for this boot only.
        reseal: bool,
    },
    /// Seal the root key again in the sealing mode of the daemon's config
    /// (`[root_key]`), to the PCRs' current values (version 6; admin only,
    /// never grantable). Answered with [`Response::Resealed`].
    Reseal {
        /// The PIN, when the root key is sealed with one (the daemon
        /// unseals it again to get the root key).
        pin: Option<SecretBytes>,
        /// The PCRs to bind to (sha256 bank, 0 to 23); `None`: the config's
        /// `[root_key] pcrs`.
        pcrs: Option<Vec<u8>>,
        /// The PIN to set when the config turns the PIN on and none is
        /// set yet.
        new_pin: Option<SecretBytes>,
        /// Only say what would change (`before` and `after`), change
        /// nothing.
        dry_run: bool,
    },
    /// Change the PIN (version 6; admin only, never grantable). Answered
    /// with [`Response::Resealed`].
    ChangePin {
        /// The current PIN.
        pin: SecretBytes,
        /// The new PIN: raw UTF-8 of 8 to 32 bytes ([`crate::pin::Pin`]).
        new_pin: SecretBytes,
    },
}

/// Fewest days a [`Request::ScheduleDeletion`] waits.
pub const MIN_DELETION_DAYS: u16 = 7;

/// Most days a [`Request::ScheduleDeletion`] waits.
pub const MAX_DELETION_DAYS: u16 = 30;

/// The waiting period `hostkms schedule-deletion` asks for unless told.
pub const DEFAULT_DELETION_DAYS: u16 = 30;

/// The shortest rotation period: one hour.
pub const MIN_ROTATION_PERIOD_SECS: u64 = 3600;

/// Most items in one [`Request::WrapBatch`] or [`Request::UnwrapBatch`].
pub const MAX_BATCH_ITEMS: usize = 1000;

/// What a new key starts with besides its name and type (version 5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySettings {
    /// Rotation by age.
    pub rotation: RotationSetting,
    /// Free text for humans (at most [`MAX_DESCRIPTION_BYTES`] bytes).
    pub description: String,
    /// Tags (at most [`MAX_TAGS`]; names `[A-Za-z0-9._-]{1,64}`, values at
    /// most 256 bytes).
    pub tags: BTreeMap<String, String>,
}

/// Whether a new key rotates by age.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationSetting {
    /// The daemon's configured default (`[keys] rotation_period`).
    #[default]
    DaemonDefault,
    /// Never by age.
    Off,
    /// Every this many seconds (at least [`MIN_ROTATION_PERIOD_SECS`]).
    Every(u64),
}

/// Longest key description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

/// Most tags on one key.
pub const MAX_TAGS: usize = 32;

/// Where a [`Request::Rewrap`] puts the new ciphertext (version 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapDestination {
    /// The destination key (an AES-256-GCM key); `None`: the source key.
    pub key: Option<String>,
    /// The new ciphertext's context; `None`: the source context.
    pub context: Option<EncryptionContext>,
}

/// One plaintext of a [`Request::WrapBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrapItem {
    /// At most the daemon's `max_plaintext` bytes.
    pub plaintext: SecretBytes,
    /// Bound to this item's ciphertext.
    pub context: EncryptionContext,
}

/// One ciphertext of a [`Request::UnwrapBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwrapItem {
    /// The ciphertext blob.
    pub ciphertext: Ciphertext,
    /// The context it was wrapped with.
    pub context: EncryptionContext,
}

/// Most bytes one [`Request::GenerateRandom`] returns.
pub const MAX_RANDOM_BYTES: u16 = 1024;

/// What a signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignInput {
    /// The message itself (at most the daemon's `max_plaintext` bytes);
    /// every signing key type takes it.
    Message(SecretBytes),
    /// A SHA-256 digest (32 bytes) of a message too large to send: ECDSA
    /// P-256 only, which signs the digest as it would the message's.
    Digest(Vec<u8>),
}

impl SignInput {
    /// The bytes sent: the message or the digest.
    pub fn bytes(&self) -> &[u8] {
        match self {
            SignInput::Message(message) => message.expose(),
            SignInput::Digest(digest) => digest,
        }
    }
}

/// What a key is for: fixed when it is created, the same for every version.
/// The order of variants is the wire format (append only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// AES-256-GCM: wraps data (every key before protocol version 4).
    #[default]
    Aes256Gcm,
    /// HMAC-SHA256: tags data.
    HmacSha256,
    /// HMAC-SHA512: tags data.
    HmacSha512,
    /// Ed25519 (RFC 8032, pure): signs messages.
    Ed25519,
    /// ECDSA over NIST P-256 with SHA-256: signs messages or digests.
    EcdsaP256,
    /// ML-DSA-65 (FIPS 204, post-quantum): signs messages.
    MlDsa65,
}

impl KeyType {
    /// Every key type, in wire order.
    pub const ALL: [KeyType; 6] = [
        KeyType::Aes256Gcm,
        KeyType::HmacSha256,
        KeyType::HmacSha512,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::MlDsa65,
    ];

    /// The type's name in the CLI, the config and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256Gcm => "aes256-gcm",
            KeyType::HmacSha256 => "hmac-sha256",
            KeyType::HmacSha512 => "hmac-sha512",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::MlDsa65 => "ml-dsa-65",
        }
    }

    /// The type named `name`, as [`KeyType::as_str`] spells it.
    pub fn from_name(name: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The cryptographic operations a key of this type performs (every type
    /// also has the lifecycle ones: rotate, revoke, describe...).
    pub fn operations(self) -> &'static [Operation] {
        match self {
            KeyType::Aes256Gcm => &[
                Operation::Wrap,
                Operation::Unwrap,
                Operation::DataKey,
                Operation::Rewrap,
            ],
            KeyType::HmacSha256 | KeyType::HmacSha512 => &[Operation::Mac, Operation::VerifyMac],
            KeyType::Ed25519 | KeyType::EcdsaP256 | KeyType::MlDsa65 => {
                &[Operation::Sign, Operation::Verify, Operation::PublicKey]
            }
        }
    }

    /// Whether a key of this type signs (and so has a public key).
    pub fn is_signing(self) -> bool {
        matches!(
            self,
            KeyType::Ed25519 | KeyType::EcdsaP256 | KeyType::MlDsa65
        )
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// [`Request::RotateRoot`]; admin only, never grantable.
    RotateRoot,
    /// [`Request::TransportKey`].
    TransportKey,
    /// [`Request::ExportKey`].
    Export,
    /// [`Request::ImportKey`].
    Import,
    /// [`Request::Mac`].
    Mac,
    /// [`Request::VerifyMac`].
    VerifyMac,
    /// [`Request::Sign`].
    Sign,
    /// [`Request::Verify`].
    Verify,
    /// [`Request::GetPublicKey`].
    PublicKey,
    /// [`Request::GenerateRandom`]; names no key.
    Random,
    /// [`Request::ScheduleDeletion`].
    ScheduleDeletion,
    /// [`Request::CancelDeletion`].
    CancelDeletion,
    /// [`Request::SetRotationPeriod`].
    SetRotationPeriod,
    /// [`Request::UpdateKeyMetadata`].
    UpdateMetadata,
    /// [`Request::WrapBatch`]; each item needs the `wrap` grant.
    WrapBatch,
    /// [`Request::UnwrapBatch`]; each item needs the `unwrap` grant on its key.
    UnwrapBatch,
    /// [`Request::WrapCredential`] on the main socket (admins only), and as
    /// a grant, a credential handed to a unit on the credential socket.
    Credential,
    /// [`Request::Unlock`]; admin only, never grantable.
    Unlock,
    /// [`Request::Reseal`]; admin only, never grantable.
    Reseal,
    /// [`Request::ChangePin`]; admin only, never grantable.
    ChangePin,
}

impl Operation {
    /// Every operation, in wire order.
    pub const ALL: [Operation; 34] = [
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
        Operation::RotateRoot,
        Operation::TransportKey,
        Operation::Export,
        Operation::Import,
        Operation::Mac,
        Operation::VerifyMac,
        Operation::Sign,
        Operation::Verify,
        Operation::PublicKey,
        Operation::Random,
        Operation::ScheduleDeletion,
        Operation::CancelDeletion,
        Operation::SetRotationPeriod,
        Operation::UpdateMetadata,
        Operation::WrapBatch,
        Operation::UnwrapBatch,
        Operation::Credential,
        Operation::Unlock,
        Operation::Reseal,
        Operation::ChangePin,
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
            Operation::RotateRoot => "rotate-root",
            Operation::TransportKey => "transport-key",
            Operation::Export => "export",
            Operation::Import => "import",
            Operation::Mac => "mac",
            Operation::VerifyMac => "verify-mac",
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::PublicKey => "public-key",
            Operation::Random => "random",
            Operation::ScheduleDeletion => "schedule-deletion",
            Operation::CancelDeletion => "cancel-deletion",
            Operation::SetRotationPeriod => "set-rotation-period",
            Operation::UpdateMetadata => "set-metadata",
            Operation::WrapBatch => "wrap-batch",
            Operation::UnwrapBatch => "unwrap-batch",
            Operation::Credential => "credential",
            Operation::Unlock => "unlock",
            Operation::Reseal => "reseal",
            Operation::ChangePin => "change-pin",
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
            Request::RotateRoot { .. } => Operation::RotateRoot,
            Request::TransportKey => Operation::TransportKey,
            Request::ExportKey { .. } => Operation::Export,
            Request::ImportKey { .. } => Operation::Import,
            Request::Mac { .. } => Operation::Mac,
            Request::VerifyMac { .. } => Operation::VerifyMac,
            Request::Sign { .. } => Operation::Sign,
            Request::Verify { .. } => Operation::Verify,
            Request::GetPublicKey { .. } => Operation::PublicKey,
            Request::GenerateRandom { .. } => Operation::Random,
            Request::ScheduleDeletion { .. } => Operation::ScheduleDeletion,
            Request::CancelDeletion { .. } => Operation::CancelDeletion,
            Request::SetRotationPeriod { .. } => Operation::SetRotationPeriod,
            Request::UpdateKeyMetadata { .. } => Operation::UpdateMetadata,
            Request::WrapBatch { .. } => Operation::WrapBatch,
            Request::UnwrapBatch { .. } => Operation::UnwrapBatch,
            Request::WrapCredential { .. } => Operation::Credential,
            Request::Unlock { .. } => Operation::Unlock,
            Request::Reseal { .. } => Operation::Reseal,
            Request::ChangePin { .. } => Operation::ChangePin,
        }
    }

    /// The key name the request names, if it names one (an unwrap without
    /// `key` names none: the ciphertext says which key).
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Request::CreateKey { name, .. } => Some(name),
            Request::Wrap { key, .. }
            | Request::GenerateDataKey { key, .. }
            | Request::Rotate { key }
            | Request::Revoke { key, .. }
            | Request::Disable { key }
            | Request::Enable { key }
            | Request::SetMinDecryptionVersion { key, .. }
            | Request::DescribeKey { key }
            | Request::ExportKey { key, .. }
            | Request::Mac { key, .. }
            | Request::VerifyMac { key, .. }
            | Request::Sign { key, .. }
            | Request::Verify { key, .. }
            | Request::GetPublicKey { key, .. }
            | Request::ScheduleDeletion { key, .. }
            | Request::CancelDeletion { key }
            | Request::SetRotationPeriod { key, .. }
            | Request::UpdateKeyMetadata { key, .. }
            | Request::WrapBatch { key, .. }
            | Request::WrapCredential { key, .. } => Some(key),
            Request::Unwrap { key, .. }
            | Request::Rewrap { key, .. }
            | Request::UnwrapBatch { key, .. } => key.as_deref(),
            Request::Ping
            | Request::Status
            | Request::ListKeys { .. }
            | Request::RotateRoot { .. }
            | Request::TransportKey
            | Request::ImportKey { .. }
            | Request::GenerateRandom { .. }
            | Request::Unlock { .. }
            | Request::Reseal { .. }
            | Request::ChangePin { .. } => None,
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
    /// Answer to `Unlock` (version 6).
    Unlocked(UnlockInfo),
    /// Answer to `Reseal` and `ChangePin` (version 6).
    Resealed(ResealInfo),
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
            Response::RootRotated(_) => "RootRotated",
            Response::TransportKey(_) => "TransportKey",
            Response::Exported(_) => "Exported",
            Response::Mac(_) => "Mac",
            Response::Verified(_) => "Verified",
            Response::Signature(_) => "Signature",
            Response::PublicKey(_) => "PublicKey",
            Response::Random(_) => "Random",
            Response::WrappedBatch(_) => "WrappedBatch",
            Response::UnwrappedBatch(_) => "UnwrappedBatch",
            Response::Unlocked(_) => "Unlocked",
            Response::Resealed(_) => "Resealed",
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
    /// Scheduled for deletion (version 5): every use is refused with
    /// `KeyPendingDeletion` until an admin cancels (the key becomes
    /// disabled) or the date in [`KeyInfo::deletion_date`] passes (the key
    /// becomes revoked). Version-4 and older peers see it as `Disabled`.
    PendingDeletion,
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
    /// What the key is for (version 4; older daemons have only
    /// [`KeyType::Aes256Gcm`] keys).
    pub key_type: KeyType,
    /// Free text for humans (version 5).
    pub description: String,
    /// Tags (version 5).
    pub tags: BTreeMap<String, String>,
    /// Seconds between rotations by age; `None`: never by age (version 5).
    pub rotation_period: Option<u64>,
    /// When the next rotation by age is due, seconds since the Unix epoch
    /// (version 5).
    pub next_rotation: Option<u64>,
    /// When a key pending deletion is deleted, seconds since the Unix
    /// epoch (at the earliest: see the spec's "Deletion" section); `None`
    /// unless the state is `PendingDeletion` (version 5).
    pub deletion_date: Option<u64>,
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
    /// Whether the keys can be recovered without this TPM (version 3).
    pub recovery: RecoveryStatus,
    /// Whether the key store is bound to a TPM counter against rollback
    /// (version 3).
    pub rollback: RollbackStatus,
    /// How the root key is sealed and whether the daemon is locked
    /// (version 6). A client of version 5 or older gets no such field, and
    /// `root_key_loaded: false` from a locked daemon.
    pub sealing: SealingStatus,
}

/// How the root key is sealed, and whether the daemon holds it (version 6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealingStatus {
    /// Whether the daemon is locked, and why.
    pub lock: LockState,
    /// The sealing in force (the state dir's record, not the config).
    pub mode: Sealing,
}

/// Whether the daemon holds its root key (version 6). A locked daemon
/// answers `Ping`, `Status` and `Unlock`, and refuses every other request
/// with `Locked`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockState {
    /// The root key was unsealed: the daemon serves every request.
    #[default]
    Unlocked,
    /// Locked: the config wants a PIN and there is no root key yet; the
    /// first `Unlock` sets the PIN and creates the root key.
    NoRootKeyYet,
    /// Locked: the root key opens only with the PIN.
    PinRequired,
    /// Locked: the PCRs the root key is sealed to changed since sealing;
    /// the PIN opens it.
    PcrMismatch {
        /// The PCRs that changed, with their sealed and current values.
        changed: Vec<PcrChange>,
    },
}

impl LockState {
    /// Whether the daemon is locked (anything but [`LockState::Unlocked`]).
    pub fn is_locked(&self) -> bool {
        !matches!(self, LockState::Unlocked)
    }
}

/// A sealing of the root key (version 6): to which PCRs, and whether a copy
/// opens with a PIN. No PCRs and no PIN is the plain sealing of versions 1
/// to 5.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealing {
    /// The PCRs (sha256 bank, 0 to 23, sorted, each once) the automatic
    /// copy is bound to; empty: not bound.
    pub pcrs: Vec<u8>,
    /// Whether a copy opens with a PIN.
    pub pin: bool,
    /// The PCRs' values at sealing, one per PCR in `pcrs`, in order.
    pub pcr_values: Vec<PcrValue>,
}

/// One PCR's value (version 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrValue {
    /// The PCR's index (0 to 23).
    pub pcr: u8,
    /// Its value in the sha256 bank (32 bytes).
    pub sha256: Vec<u8>,
}

/// A PCR whose value differs from the one the root key was sealed to
/// (version 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrChange {
    /// The PCR's index (0 to 23).
    pub pcr: u8,
    /// Its sha256 value at sealing.
    pub sealed: Vec<u8>,
    /// Its sha256 value now.
    pub current: Vec<u8>,
}

/// The answer to [`Request::Unlock`] (version 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockInfo {
    /// Check value of the root key now loaded (as [`StatusInfo::root_key_check`]).
    pub root_key_check: String,
    /// Whether the PCR-bound copy was resealed to the current values (the
    /// next start unseals without the PIN).
    pub resealed: bool,
    /// The PCRs that had changed since sealing (empty when the daemon was
    /// locked only for the PIN).
    pub changed_pcrs: Vec<PcrChange>,
}

/// The answer to [`Request::Reseal`] and [`Request::ChangePin`] (version 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResealInfo {
    /// Whether this was a dry run: nothing changed.
    pub dry_run: bool,
    /// The sealing before.
    pub before: Sealing,
    /// The sealing after (or, in a dry run, what it would be).
    pub after: Sealing,
}

/// Whether this host's keys are escrowed to offline custodians, so that
/// losing the TPM loses no key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// Whether `[recovery]` is configured. `false`: the keys die with this
    /// TPM.
    pub configured: bool,
    /// The recovery directory (what a backup agent copies).
    pub dir: String,
    /// How many custodians (age recipients) the bundle identity is escrowed to.
    pub custodians: u32,
    /// How many of them must join to recover.
    pub threshold: u32,
    /// The bundle identity's age recipient (`age1…`); public.
    pub bundle_recipient: String,
    /// Whether every acknowledged key change is in the directory.
    pub current: bool,
    /// What is wrong when it is not current; empty otherwise.
    pub problem: String,
}

/// The key store's binding to a TPM NV counter, which makes a copy of an
/// older store (bringing revoked keys back) refuse to load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStatus {
    /// Whether the store is bound to a TPM NV counter.
    pub bound: bool,
    /// The NV index (0 when not bound).
    pub nv_index: u32,
    /// The counter value the store records.
    pub store_counter: u64,
    /// Increments the TPM still owes (it was unreachable when access was
    /// taken away); until they happen, rollback protection lags.
    pub pending_increments: u64,
    /// A problem the running daemon found with its counter that retrying
    /// cannot fix (it was undefined, or redefined by another TPM user), and
    /// what to do; empty otherwise.
    pub problem: String,
}

/// The answer to [`Request::RotateRoot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    /// Check value of the root key before.
    pub old_check: String,
    /// Check value of the new root key, now in force.
    pub new_check: String,
    /// Keys re-sealed.
    pub keys: u32,
    /// Key versions re-sealed.
    pub versions: u32,
}

/// This host's transport key: public, safe to print and paste.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportKeyInfo {
    /// The age recipient (`age1…`) that other hosts export keys to.
    pub recipient: String,
    /// The first 16 hex digits of SHA-256 over `recipient`.
    pub fingerprint: String,
}

/// A key exported to another host: an age file only that host's daemon opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    /// Key name.
    pub key: String,
    /// The `[[transfer]]` destination it was encrypted to.
    pub destination: String,
    /// The age file.
    pub file: Vec<u8>,
}

/// An HMAC tag, the answer to [`Request::Mac`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacTag {
    /// Key name.
    pub key: String,
    /// The key version that made the tag.
    pub version: u32,
    /// The plain HMAC (32 bytes for HMAC-SHA256, 64 for HMAC-SHA512).
    pub tag: Vec<u8>,
}

/// The answer to [`Request::VerifyMac`] and [`Request::Verify`]. A tag or
/// signature that does not check is `valid: false`, never an error, and
/// never says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Key name.
    pub key: String,
    /// Whether the tag or signature is the key's over the data.
    pub valid: bool,
    /// The version it checked under when valid.
    pub version: Option<u32>,
}

/// A signature, the answer to [`Request::Sign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Key name.
    pub key: String,
    /// The key version that signed.
    pub version: u32,
    /// The standard encoding: Ed25519 64 bytes, ECDSA ASN.1 DER, ML-DSA
    /// as FIPS 204 defines it.
    pub signature: Vec<u8>,
}

/// A signing key version's public key, the answer to [`Request::GetPublicKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    /// Key name.
    pub key: String,
    /// The version.
    pub version: u32,
    /// The key's type.
    pub key_type: KeyType,
    /// Whether the version is revoked: its public key stays retrievable,
    /// for audit, though hostkms no longer signs or verifies with it.
    pub revoked: bool,
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}
