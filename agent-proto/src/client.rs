//! A blocking client over a Unix stream socket: one typed method per
//! operation, plus `send`/`receive` for pipelining.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bytes::{Ciphertext, SecretBytes};
use crate::codec::{self, DEFAULT_MAX_FRAME, FrameBuf};
use crate::error::{
    BINCODE_UNKNOWN_VARIANT, DecodeError, EncodeError, ErrorCode, FrameError, UNKNOWN_REQUEST,
};
use crate::message::{
    DataKey, EncryptionContext, Envelope, ErrorReply, ExportedFile, KeyInfo, KeyPage, KeySettings,
    KeyType, MacTag, OLDEST_PROTOCOL_VERSION, Operation, PROTOCOL_VERSION, PublicKeyInfo, Request,
    ResealInfo, Response, RewrapDestination, RootRotation, SignInput, Signature, StatusInfo,
    TransportKeyInfo, UnlockInfo, UnwrapItem, Unwrapped, Verification, WrapItem, Wrapped,
};
use crate::pin::Pin;

/// Keys a page that [`Client::list_keys`] asks for.
pub const LIST_PAGE: u32 = 512;

/// The typed operations, written once for the blocking client and once
/// more, with `async`/`.await`, for the tokio client.
macro_rules! typed_operations {
    (blocking) => { typed_operations!(@emit [] []); };
    (tokio) => { typed_operations!(@emit [async] [.await]); };
    (@emit [$($async:tt)*] [$($await:tt)*]) => {
    /// Checks that the daemon answers.
    ///
    /// # Errors
    ///
    /// Only the connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`), and `Busy`.
    pub $($async)* fn ping(&mut self) -> Result<(), ClientError> {
        expect::pong(self.call(Request::Ping)$($await)*?)
    }

    /// The daemon's health and counters.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` when the peer may not read the daemon's status, and
    /// the connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`).
    pub $($async)* fn status(&mut self) -> Result<StatusInfo, ClientError> {
        expect::status(self.call(Request::Status)$($await)*?)
    }

    /// Creates key `name` at version 1.
    ///
    /// # Errors
    ///
    /// `KeyExists` (names are never reused), `InvalidKeyName`/`InvalidArgument`
    /// for a bad name, `PermissionDenied`, `TpmUnavailable`, and the connection
    /// errors of [`Client::call`](crate::Client::call) (`MayHaveExecuted`,
    /// `TimedOut`, `Connect`).
    pub $($async)* fn create_key(&mut self, name: &str) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::CreateKey {
            name: name.to_string(),
            key_type: KeyType::Aes256Gcm,
            settings: KeySettings::default(),
        })$($await)*?)
    }

    /// Creates key `name` of type `key_type` (fixed for the key's life) at
    /// version 1.
    ///
    ///
    /// # Errors
    ///
    /// [`ClientError::DaemonTooOld`] for any type but
    /// [`KeyType::Aes256Gcm`] when the daemon speaks only protocol 3 or
    /// older; the daemon's refusals (`KeyExists`, `InvalidKeyName`,
    /// `PermissionDenied`...) as [`ClientError::Daemon`].
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn create_key_of_type(
        &mut self,
        name: &str,
        key_type: KeyType,
    ) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::CreateKey {
            name: name.to_string(),
            key_type,
            settings: KeySettings::default(),
        })$($await)*?)
    }

    /// The HMAC tag of `data` under the latest version of HMAC key `key`,
    /// with the version that made it.
    ///
    ///
    /// # Errors
    ///
    /// `WrongKeyType` when `key` is not an HMAC key,
    /// `PlaintextTooLarge` above the daemon's `max_plaintext`, the usual
    /// key and permission refusals; [`ClientError::DaemonTooOld`] against a
    /// daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn mac(&mut self, key: &str, data: &[u8]) -> Result<MacTag, ClientError> {
        expect::mac(self.call(Request::Mac {
            key: key.to_string(),
            data: SecretBytes::from(data),
        })$($await)*?)
    }

    /// Whether `tag` is the HMAC of `data` under `key`: under `version`
    /// when given, else under the 8 newest live versions at or above the
    /// minimum
    /// decryption version. A tag that does not match is `valid: false`.
    ///
    ///
    /// # Errors
    ///
    /// `WrongKeyType` when `key` is not an HMAC key,
    /// `VersionRevoked`/`VersionNotFound` for an explicit `version` that
    /// cannot be used, `KeyDisabled`/`KeyRevoked`, `PlaintextTooLarge`,
    /// `InvalidArgument` for a tag over 64 bytes;
    /// [`ClientError::DaemonTooOld`] against a daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn verify_mac(
        &mut self,
        key: &str,
        data: &[u8],
        tag: &[u8],
        version: Option<u32>,
    ) -> Result<Verification, ClientError> {
        expect::verified(self.call(Request::VerifyMac {
            key: key.to_string(),
            data: SecretBytes::from(data),
            tag: tag.to_vec(),
            version,
        })$($await)*?)
    }

    /// A signature of `message` under the latest version of signing key
    /// `key`, with the version that made it.
    ///
    ///
    /// # Errors
    ///
    /// `WrongKeyType` when `key` does not sign,
    /// `PlaintextTooLarge` above the daemon's `max_plaintext` (an
    /// ecdsa-p256 key can sign a digest instead: [`Self::sign_digest`]),
    /// the usual key and permission refusals; [`ClientError::DaemonTooOld`]
    /// against a daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn sign(&mut self, key: &str, message: &[u8]) -> Result<Signature, ClientError> {
        expect::signature(self.call(Request::Sign {
            key: key.to_string(),
            input: SignInput::Message(SecretBytes::from(message)),
        })$($await)*?)
    }

    /// A signature of a message's 32-byte SHA-256 `digest` under the latest
    /// version of ecdsa-p256 key `key` (the same signature as over the
    /// message itself).
    ///
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `digest` is not 32 bytes or `key` is
    /// not an ecdsa-p256 key that signs digests (`WrongKeyType` when it does
    /// not sign at all), the usual key and permission refusals;
    /// [`ClientError::DaemonTooOld`] against a daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn sign_digest(&mut self, key: &str, digest: &[u8]) -> Result<Signature, ClientError> {
        expect::signature(self.call(Request::Sign {
            key: key.to_string(),
            input: SignInput::Digest(digest.to_vec()),
        })$($await)*?)
    }

    /// Whether `signature` is `key`'s over `message`: under `version` when
    /// given, else under the 8 newest live versions at or above the minimum
    /// decryption version. A signature that does not check is
    /// `valid: false`.
    ///
    ///
    /// # Errors
    ///
    /// `WrongKeyType` when `key` does not sign,
    /// `VersionRevoked`/`VersionNotFound` for an explicit `version` that
    /// cannot be used, `KeyDisabled`/`KeyRevoked`, `PlaintextTooLarge`,
    /// `InvalidArgument` for a signature over 8 KiB;
    /// [`ClientError::DaemonTooOld`] against a daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn verify(
        &mut self,
        key: &str,
        message: &[u8],
        signature: &[u8],
        version: Option<u32>,
    ) -> Result<Verification, ClientError> {
        expect::verified(self.call(Request::Verify {
            key: key.to_string(),
            input: SignInput::Message(SecretBytes::from(message)),
            signature: signature.to_vec(),
            version,
        })$($await)*?)
    }

    /// Whether `signature` is ecdsa-p256 key `key`'s over a message whose
    /// SHA-256 is `digest`, as [`Self::verify`] checks a message.
    ///
    ///
    /// # Errors
    ///
    /// those of [`Self::verify`], and `InvalidArgument` when
    /// `digest` is not 32 bytes or `key` is not an ecdsa-p256 key.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn verify_digest(
        &mut self,
        key: &str,
        digest: &[u8],
        signature: &[u8],
        version: Option<u32>,
    ) -> Result<Verification, ClientError> {
        expect::verified(self.call(Request::Verify {
            key: key.to_string(),
            input: SignInput::Digest(digest.to_vec()),
            signature: signature.to_vec(),
            version,
        })$($await)*?)
    }

    /// The public key (SubjectPublicKeyInfo DER) of signing key `key`'s
    /// `version`, the latest when `None`. A revoked version's public key
    /// stays retrievable (`revoked: true`).
    ///
    ///
    /// # Errors
    ///
    /// `WrongKeyType` when `key` does not sign, `VersionNotFound`,
    /// the usual key and permission refusals; [`ClientError::DaemonTooOld`]
    /// against a daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn public_key(
        &mut self,
        key: &str,
        version: Option<u32>,
    ) -> Result<PublicKeyInfo, ClientError> {
        expect::public_key(self.call(Request::GetPublicKey {
            key: key.to_string(),
            version,
        })$($await)*?)
    }

    /// `bytes` random bytes (1 to [`crate::MAX_RANDOM_BYTES`]) from the OS
    /// RNG mixed with the TPM's.
    ///
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a count outside 1..=1024,
    /// `PermissionDenied` without a grant of `random`;
    /// [`ClientError::DaemonTooOld`] against a daemon older than protocol 4.
    /// And the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn random(&mut self, bytes: u16) -> Result<SecretBytes, ClientError> {
        expect::random(self.call(Request::GenerateRandom { bytes })$($await)*?)
    }

    /// Encrypts `plaintext` under the latest version of `key`, bound to
    /// `context`.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `PermissionDenied`, `KeyDisabled`/`KeyRevoked`,
    /// `WrongKeyType` for a key that does not encrypt, `PlaintextTooLarge`,
    /// `TpmUnavailable`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn wrap(
        &mut self,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Wrapped, ClientError> {
        expect::wrapped(self.call(Request::Wrap {
            key: key.to_string(),
            plaintext: SecretBytes::from(plaintext),
            context: context.clone(),
        })$($await)*?)
    }

    /// Encrypts a systemd credential for `unit` under `key`, bound to the
    /// reserved context of [`crate::credential::context`]: the ciphertext to
    /// store at `/etc/hostkms/credentials/UNIT/CREDENTIAL`.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` for a peer that is no admin, `InvalidArgument` for
    /// a bad unit name or credential id, `WrongKeyType`, the key-state errors
    /// of [`wrap`](Self::wrap), and the connection errors.
    pub $($async)* fn wrap_credential(
        &mut self,
        key: &str,
        unit: &str,
        credential: &str,
        plaintext: &[u8],
    ) -> Result<Wrapped, ClientError> {
        expect::wrapped(self.call(Request::WrapCredential {
            key: key.to_string(),
            unit: unit.to_string(),
            credential: credential.to_string(),
            plaintext: SecretBytes::from(plaintext),
        })$($await)*?)
    }

    /// Decrypts `ciphertext`; with `key`, only if it belongs to that key.
    ///
    /// # Errors
    ///
    /// `InvalidCiphertext` (wrong context, tampered, or another key's when
    /// `key` is given), `VersionRevoked`, `KeyDisabled`/`KeyRevoked`,
    /// `PermissionDenied`, `TpmUnavailable`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn unwrap(
        &mut self,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key: Option<&str>,
    ) -> Result<Unwrapped, ClientError> {
        expect::unwrapped(self.call(Request::Unwrap {
            ciphertext: Ciphertext::from(ciphertext),
            context: context.clone(),
            key: key.map(str::to_string),
        })$($await)*?)
    }

    /// A fresh `bytes`-long data key, in clear and wrapped under `key`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a length other than 16, 24, 32 or 64, the key
    /// refusals of [`Self::wrap`], and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn generate_data_key(
        &mut self,
        key: &str,
        bytes: u16,
        context: &EncryptionContext,
    ) -> Result<DataKey, ClientError> {
        self.data_key(key, bytes, context, true)$($await)*
    }

    /// A fresh `bytes`-long data key, only in its wrapped form.
    ///
    /// # Errors
    ///
    /// Those of [`Self::generate_data_key`].
    pub $($async)* fn generate_data_key_without_plaintext(
        &mut self,
        key: &str,
        bytes: u16,
        context: &EncryptionContext,
    ) -> Result<DataKey, ClientError> {
        self.data_key(key, bytes, context, false)$($await)*
    }

    $($async)* fn data_key(
        &mut self,
        key: &str,
        bytes: u16,
        context: &EncryptionContext,
        include_plaintext: bool,
    ) -> Result<DataKey, ClientError> {
        expect::data_key(self.call(Request::GenerateDataKey {
            key: key.to_string(),
            bytes,
            include_plaintext,
            context: context.clone(),
        })$($await)*?)
    }

    /// Re-encrypts `ciphertext` under its key's latest version.
    ///
    /// # Errors
    ///
    /// Those of [`Self::unwrap`] and [`Self::wrap`].
    pub $($async)* fn rewrap(
        &mut self,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key: Option<&str>,
    ) -> Result<Wrapped, ClientError> {
        expect::wrapped(self.call(Request::Rewrap {
            ciphertext: Ciphertext::from(ciphertext),
            context: context.clone(),
            key: key.map(str::to_string),
            destination: None,
        })$($await)*?)
    }

    /// Re-encrypts `ciphertext` (made under `context`; of `key` when given)
    /// under `to_key` (`None`: its own key's latest version) with
    /// `to_context` (`None`: the same context), inside the daemon: the
    /// plaintext never reaches this process. Needs protocol version 5.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` unless the peer holds `unwrap` on the source key
    /// and `wrap` on the destination key, `WrongKeyType` for a destination
    /// that does not encrypt, the refusals of [`Self::unwrap`] for the
    /// source and of [`Self::wrap`] for the destination, and the connection
    /// errors of [`Client::call`](crate::Client::call) (`MayHaveExecuted`,
    /// `TimedOut`, `Connect`).
    pub $($async)* fn rewrap_to(
        &mut self,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key: Option<&str>,
        to_key: Option<&str>,
        to_context: Option<&EncryptionContext>,
    ) -> Result<Wrapped, ClientError> {
        expect::wrapped(self.call(Request::Rewrap {
            ciphertext: Ciphertext::from(ciphertext),
            context: context.clone(),
            key: key.map(str::to_string),
            destination: Some(RewrapDestination {
                key: to_key.map(str::to_string),
                context: to_context.cloned(),
            }),
        })$($await)*?)
    }

    /// Encrypts every item under the latest version of `key`, in one
    /// request of at most [`MAX_BATCH_ITEMS`](crate::MAX_BATCH_ITEMS) items.
    /// Each item gets its own result, in order, with the error a single
    /// [`Self::wrap`] of it would get. Needs protocol version 5.
    ///
    /// # Errors
    ///
    /// For the whole request: `PermissionDenied` without the `wrap` grant on
    /// `key`, `InvalidArgument` for no items, more than 1,000, or an answer
    /// that could exceed the daemon's frame limit (nothing was done: split
    /// the batch), and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`). Per item: the refusals of [`Self::wrap`].
    pub $($async)* fn wrap_batch(
        &mut self,
        key: &str,
        items: Vec<WrapItem>,
    ) -> Result<Vec<Result<Wrapped, ErrorReply>>, ClientError> {
        expect::wrapped_batch(self.call(Request::WrapBatch {
            key: key.to_string(),
            items,
        })$($await)*?)
    }

    /// Decrypts every item (each under the key its ciphertext names; with
    /// `key`, each must belong to it), in one request of at most
    /// [`MAX_BATCH_ITEMS`](crate::MAX_BATCH_ITEMS) items. Each item gets its
    /// own result, in order, with the error a single [`Self::unwrap`] of it
    /// would get. Needs protocol version 5.
    ///
    /// # Errors
    ///
    /// For the whole request: `InvalidArgument` for no items, more than
    /// 1,000, or an answer that could exceed the daemon's frame limit
    /// (nothing was done: split the batch), and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`). Per item: the refusals of [`Self::unwrap`], among them
    /// `PermissionDenied` without the `unwrap` grant on the item's key.
    pub $($async)* fn unwrap_batch(
        &mut self,
        key: Option<&str>,
        items: Vec<UnwrapItem>,
    ) -> Result<Vec<Result<Unwrapped, ErrorReply>>, ClientError> {
        expect::unwrapped_batch(self.call(Request::UnwrapBatch {
            key: key.map(str::to_string),
            items,
        })$($await)*?)
    }

    /// Changes `key`'s description (`None`: kept; `Some("")`: cleared),
    /// sets or replaces `set_tags` and removes `remove_tags` (an absent one
    /// is no error). Needs the `set-metadata` grant and protocol version 5.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `PermissionDenied`, `InvalidArgument` for a
    /// description or tags over their limits (at most
    /// [`MAX_DESCRIPTION_BYTES`](crate::MAX_DESCRIPTION_BYTES) bytes and
    /// [`MAX_TAGS`](crate::MAX_TAGS) tags, names `[A-Za-z0-9._-]{1,64}`,
    /// values at most 256 bytes, no control characters; the message names
    /// the limit),
    /// and the connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`).
    pub $($async)* fn update_key_metadata(
        &mut self,
        key: &str,
        description: Option<&str>,
        set_tags: &std::collections::BTreeMap<String, String>,
        remove_tags: &[String],
    ) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::UpdateKeyMetadata {
            key: key.to_string(),
            description: description.map(str::to_string),
            set_tags: set_tags.clone(),
            remove_tags: remove_tags.to_vec(),
        })$($await)*?)
    }

    /// Adds a new latest version to `key`.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `PermissionDenied`, `KeyDisabled`/`KeyRevoked`,
    /// `TpmUnavailable`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`). A lost `rotate` may have added a version: check with
    /// [`Self::describe_key`].
    pub $($async)* fn rotate(&mut self, key: &str) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::Rotate {
            key: key.to_string(),
        })$($await)*?)
    }

    /// Revokes one version of `key`, or the whole key when `version` is `None`.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `VersionNotFound`, `PermissionDenied`, and the connection
    /// errors of [`Client::call`](crate::Client::call) (`MayHaveExecuted`,
    /// `TimedOut`, `Connect`).
    pub $($async)* fn revoke(&mut self, key: &str, version: Option<u32>) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::Revoke {
            key: key.to_string(),
            version,
        })$($await)*?)
    }

    /// Stops every use of `key` until it is enabled again.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `KeyRevoked`, `PermissionDenied`, and the connection
    /// errors of [`Client::call`](crate::Client::call) (`MayHaveExecuted`,
    /// `TimedOut`, `Connect`).
    pub $($async)* fn disable(&mut self, key: &str) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::Disable {
            key: key.to_string(),
        })$($await)*?)
    }

    /// Puts a disabled `key` back in service.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `KeyRevoked`, `PermissionDenied`, and the connection
    /// errors of [`Client::call`](crate::Client::call) (`MayHaveExecuted`,
    /// `TimedOut`, `Connect`).
    pub $($async)* fn enable(&mut self, key: &str) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::Enable {
            key: key.to_string(),
        })$($await)*?)
    }

    /// Refuses unwraps of `key`'s versions below `version`.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `VersionNotFound`/`InvalidArgument` for a version the key
    /// lacks, `PermissionDenied`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn set_min_decryption_version(
        &mut self,
        key: &str,
        version: u32,
    ) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::SetMinDecryptionVersion {
            key: key.to_string(),
            version,
        })$($await)*?)
    }

    /// Creates key `name` of type `key_type` with `settings`: its rotation
    /// by age (the daemon's configured default unless set), description and
    /// tags.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a rotation period outside 1 hour to 100 years
    /// or metadata over its limits, the refusals of
    /// [`Self::create_key_of_type`], [`ClientError::DaemonTooOld`] for
    /// settings other than the default against a daemon older than
    /// protocol 5, and the connection errors of
    /// [`Client::call`](crate::Client::call).
    pub $($async)* fn create_key_with(
        &mut self,
        name: &str,
        key_type: KeyType,
        settings: KeySettings,
    ) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::CreateKey {
            name: name.to_string(),
            key_type,
            settings,
        })$($await)*?)
    }

    /// Schedules `key` for deletion in `days` days (7 to 30): until then
    /// every use of it is refused `KeyPendingDeletion` and raises an alert,
    /// and [`Self::cancel_deletion`] takes it back; then the daemon deletes
    /// every version's secret for good. The answer's
    /// [`KeyInfo::deletion_date`] is the earliest date of the deletion.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for `days` outside 7..=30, `KeyPendingDeletion`
    /// when it is already scheduled, `KeyRevoked`, `KeyNotFound`,
    /// `PermissionDenied` without the `schedule-deletion` grant,
    /// [`ClientError::DaemonTooOld`] against a daemon older than protocol
    /// 5, and the connection errors of [`Client::call`](crate::Client::call).
    pub $($async)* fn schedule_deletion(&mut self, key: &str, days: u16) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::ScheduleDeletion {
            key: key.to_string(),
            days,
        })$($await)*?)
    }

    /// Cancels the scheduled deletion of `key`, which becomes disabled
    /// (enable it with [`Self::enable`] once it is wanted again).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the key is not scheduled for deletion,
    /// `KeyNotFound`, `PermissionDenied` without the `cancel-deletion`
    /// grant, [`ClientError::DaemonTooOld`] against a daemon older than
    /// protocol 5, and the connection errors of
    /// [`Client::call`](crate::Client::call).
    pub $($async)* fn cancel_deletion(&mut self, key: &str) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::CancelDeletion {
            key: key.to_string(),
        })$($await)*?)
    }

    /// Makes the daemon rotate `key` every `period` seconds after its latest
    /// version was created (1 hour to 100 years), or never by age with
    /// `None`. [`crate::period::parse_period`] reads the `90d` syntax.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a period out of bounds, `KeyRevoked`,
    /// `KeyNotFound`, `PermissionDenied` without the
    /// `set-rotation-period` grant, [`ClientError::DaemonTooOld`] against a
    /// daemon older than protocol 5, and the connection errors of
    /// [`Client::call`](crate::Client::call).
    pub $($async)* fn set_rotation_period(
        &mut self,
        key: &str,
        period: Option<u64>,
    ) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::SetRotationPeriod {
            key: key.to_string(),
            period,
        })$($await)*?)
    }

    /// Every key this caller may see, in name order. Pages through the
    /// daemon's list (protocol 2) with [`LIST_PAGE`] keys a page, halving
    /// the page when one would exceed the daemon's frame limit; a
    /// protocol-1 daemon answers every key at once. A page whose `next`
    /// does not advance the listing is [`ClientError::ListCursorStuck`].
    ///
    /// # Errors
    ///
    /// [`ClientError::ListCursorStuck`], the daemon's refusals of
    /// [`Self::list_page`], and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn list_keys(&mut self) -> Result<Vec<KeyInfo>, ClientError> {
        let mut keys = Vec::new();
        let mut after = None;
        let mut limit = LIST_PAGE;
        loop {
            let page = match self.list_page(after.clone(), Some(limit))$($await)* {
                Err(e) if e.code() == Some(ErrorCode::FrameTooLarge) && limit > 1 => {
                    limit /= 2;
                    continue;
                }
                Err(ClientError::DaemonTooOld { .. })
                    if after.is_none() && self.protocol() == crate::v1::VERSION =>
                {
                    self.list_page(None, None)$($await)*?
                }
                page => page?,
            };
            crate::client::check_cursor(after.as_deref(), &page)?;
            keys.extend(page.keys);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// One page of the keys this caller may see: at most `limit` keys
    /// (`None`: all) whose names follow `after` (`None`: from the first).
    /// Pass the page's [`KeyPage::next`] as `after` for the next page. A
    /// protocol-1 daemon can only answer `after: None, limit: None`; other
    /// pages are [`ClientError::DaemonTooOld`] there.
    ///
    /// # Errors
    ///
    /// [`ClientError::DaemonTooOld`] for a page a protocol-1 daemon cannot
    /// give, `FrameTooLarge` for a page over the daemon's frame limit, and the
    /// connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`).
    pub $($async)* fn list_page(
        &mut self,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Result<KeyPage, ClientError> {
        expect::keys(self.call(Request::ListKeys { after, limit })$($await)*?)
    }

    /// Metadata of `key`.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `PermissionDenied`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn describe_key(&mut self, key: &str) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::DescribeKey {
            key: key.to_string(),
        })$($await)*?)
    }

    /// Seals a new root key and re-seals every key under it (admin only).
    ///
    /// # Errors
    ///
    /// `PermissionDenied` for a peer that is not an admin, `TpmUnavailable`,
    /// `Internal`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn rotate_root(&mut self) -> Result<RootRotation, ClientError> {
        expect::root_rotated(self.call(Request::RotateRoot { pin: None })$($await)*?)
    }

    /// [`rotate_root`](Self::rotate_root) with the PIN, for a root key
    /// sealed to one (version 6): the daemon checks it against the current
    /// PIN copy and seals the new key's with it. A wrong PIN is
    /// `WrongPin`.
    pub $($async)* fn rotate_root_with_pin(&mut self, pin: &crate::pin::Pin) -> Result<RootRotation, ClientError> {
        expect::root_rotated(self.call(Request::RotateRoot { pin: Some(pin.to_secret()) })$($await)*?)
    }

    /// This host's transport key, which other hosts export keys to.
    ///
    /// # Errors
    ///
    /// `TpmUnavailable`, `Internal`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn transport_key(&mut self) -> Result<TransportKeyInfo, ClientError> {
        expect::transport_key(self.call(Request::TransportKey)$($await)*?)
    }

    /// Exports `key` to `destination`, a host pinned in the daemon's config.
    ///
    /// # Errors
    ///
    /// `KeyNotFound`, `PermissionDenied`, `InvalidArgument` for a destination
    /// the config does not pin, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn export_key(&mut self, key: &str, destination: &str) -> Result<ExportedFile, ClientError> {
        expect::exported(self.call(Request::ExportKey {
            key: key.to_string(),
            destination: destination.to_string(),
        })$($await)*?)
    }

    /// Imports a key from a file another host exported to this host.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a file not made for this host, `KeyExists`,
    /// `PermissionDenied`, `TpmUnavailable`, and the connection errors of
    /// [`Client::call`](crate::Client::call) (`MayHaveExecuted`, `TimedOut`,
    /// `Connect`).
    pub $($async)* fn import_key(&mut self, file: &[u8]) -> Result<KeyInfo, ClientError> {
        expect::key(self.call(Request::ImportKey {
            file: file.to_vec(),
        })$($await)*?)
    }

    /// Unlocks a locked daemon with the PIN (admin only, protocol version
    /// 6); on a daemon that has no root key yet, sets the PIN and creates
    /// the root key. With `reseal`, after a PCR mismatch, the PCR-bound
    /// copy is resealed to the current values too.
    ///
    /// # Errors
    ///
    /// `WrongPin` (the message says how many tries the TPM still allows),
    /// `PermissionDenied` for a peer that is not an admin, `InvalidArgument`,
    /// `TpmUnavailable`, `DaemonTooOld` for a daemon of version 5 or older,
    /// and the connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`).
    pub $($async)* fn unlock(&mut self, pin: &Pin, reseal: bool) -> Result<UnlockInfo, ClientError> {
        expect::unlocked(self.call(Request::Unlock {
            pin: pin.to_secret(),
            reseal,
        })$($await)*?)
    }

    /// Seals the root key again in the daemon's configured mode, to the
    /// PCRs' current values (admin only, protocol version 6): `pin` when
    /// the root key is sealed with one, `pcrs` to override the config's,
    /// `new_pin` when the config turns the PIN on and none is set yet;
    /// with `dry_run`, only says what would change.
    ///
    /// # Errors
    ///
    /// `WrongPin`, `Locked`, `PermissionDenied` for a peer that is not an
    /// admin, `InvalidArgument` (a PCR out of range, a PIN missing),
    /// `TpmUnavailable`, `DaemonTooOld` for a daemon of version 5 or older,
    /// and the connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`).
    pub $($async)* fn reseal(
        &mut self,
        pin: Option<&Pin>,
        pcrs: Option<&[u8]>,
        new_pin: Option<&Pin>,
        dry_run: bool,
    ) -> Result<ResealInfo, ClientError> {
        expect::resealed(self.call(Request::Reseal {
            pin: pin.map(Pin::to_secret),
            pcrs: pcrs.map(<[u8]>::to_vec),
            new_pin: new_pin.map(Pin::to_secret),
            dry_run,
        })$($await)*?)
    }

    /// Changes the PIN (admin only, protocol version 6).
    ///
    /// # Errors
    ///
    /// `WrongPin`, `Locked`, `PermissionDenied` for a peer that is not an
    /// admin, `InvalidArgument` (the root key has no PIN), `TpmUnavailable`,
    /// `DaemonTooOld` for a daemon of version 5 or older, and the
    /// connection errors of [`Client::call`](crate::Client::call)
    /// (`MayHaveExecuted`, `TimedOut`, `Connect`).
    pub $($async)* fn change_pin(&mut self, pin: &Pin, new_pin: &Pin) -> Result<ResealInfo, ClientError> {
        expect::resealed(self.call(Request::ChangePin {
            pin: pin.to_secret(),
            new_pin: new_pin.to_secret(),
        })$($await)*?)
    }
    };
}
#[cfg(feature = "tokio")]
pub(crate) use typed_operations;

/// The socket path a packaged daemon listens on.
pub const DEFAULT_SOCKET: &str = "/run/hostkms/hostkms.sock";

/// The environment variable that names the daemon's socket for
/// [`Client::connect_default`] (the CLI reads it too).
pub const SOCKET_ENV: &str = "HOSTKMS_SOCKET";

/// How long a new client lets one request take, writing it and reading its
/// answer together (see [`Client::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The pauses before each new connection a call opens when its request
/// provably never reached the daemon (see [`Client`]): at most this many
/// retries, then the error.
pub const RECONNECT_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(800),
];

/// The socket a client connects to by default: `$HOSTKMS_SOCKET` when it is
/// set and not empty, else [`DEFAULT_SOCKET`].
pub fn default_socket() -> PathBuf {
    socket_from(std::env::var_os(SOCKET_ENV))
}

/// The socket `HOSTKMS_SOCKET`'s value `var` names, [`DEFAULT_SOCKET`]
/// when unset or empty.
fn socket_from(var: Option<std::ffi::OsString>) -> PathBuf {
    var.filter(|path| !path.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to hostkms at {}: {}", path.display(), connect_hint(source))]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The connection failed while writing or reading.
    #[error("connection to hostkms failed: {0}")]
    Io(#[from] io::Error),
    /// A frame could not be read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A response could not be decoded.
    #[error("cannot decode the daemon's response: {0}")]
    Decode(#[from] DecodeError),
    /// A request could not be encoded.
    #[error("cannot send the request: {0}")]
    Encode(#[from] EncodeError),
    /// The daemon closed the connection before answering.
    #[error("the daemon closed the connection before answering")]
    Closed,
    /// The daemon refused the request.
    #[error("{code}: {message}")]
    Daemon {
        /// The stable error code.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
    /// The daemon answered with a response of the wrong kind.
    #[error("unexpected response from the daemon: wanted {expected}, got {got}")]
    UnexpectedResponse {
        /// The kind of response the request calls for.
        expected: &'static str,
        /// The kind that came.
        got: &'static str,
    },
    /// The request cannot be expressed in the protocol the daemon speaks,
    /// or the daemon does not know it (it answered `BadRequest` saying so):
    /// the daemon is older than this client.
    #[error("daemon too old for {operation}: {reason}; upgrade hostkmsd")]
    DaemonTooOld {
        /// The operation the daemon cannot perform.
        operation: Operation,
        /// Why: the version the daemon speaks, or the daemon's answer.
        reason: String,
    },
    /// A `ListKeys` page whose `next` cursor does not move the listing
    /// forward: not after the cursor the page was asked for, or before the
    /// page's last key. Following it could ask for the same pages forever.
    #[error(
        "the daemon's ListKeys cursor did not advance: the page after {} ended at {} \
         and answered next {next:?}; stopped listing",
        show_name(.after.as_deref(), "the start"),
        show_name(.last.as_deref(), "no key")
    )]
    ListCursorStuck {
        /// The cursor the page was asked for (`None`: the first page).
        after: Option<String>,
        /// The last key name on the page, if it had any keys.
        last: Option<String>,
        /// The cursor the daemon answered.
        next: String,
    },
    /// The response's id does not match the request's.
    #[error("response id {got} does not match request id {expected}")]
    IdMismatch {
        /// The id of the oldest request without an answer.
        expected: u64,
        /// The id the response carried.
        got: u64,
    },
    /// The connection failed after (part of) the request was written and
    /// before its whole answer came: the daemon may or may not have carried
    /// the request out. The client does not send it again; the caller
    /// should check its effect (e.g. `describe_key` after a `create_key`)
    /// before repeating a request that is not idempotent. The client's next
    /// call opens a new connection.
    #[error(
        "the connection to hostkms failed after {operation} was sent ({source}): \
         the daemon may or may not have carried it out; check its effect before sending it again"
    )]
    MayHaveExecuted {
        /// The operation that was sent.
        operation: Operation,
        /// How the connection failed.
        source: Box<ClientError>,
    },
    /// The request's whole answer did not come within the client's timeout
    /// ([`Client::set_timeout`]): the daemon may or may not have carried
    /// the request out, as for [`ClientError::MayHaveExecuted`]. The
    /// client's next call opens a new connection.
    #[error(
        "no answer to {operation} within {after:?}: the daemon may or may not have carried it out; \
         check its effect before sending it again, or raise the client's timeout"
    )]
    TimedOut {
        /// The operation that was sent.
        operation: Operation,
        /// The timeout that passed.
        after: Duration,
    },
}

/// A key name in an error message, quoted and escaped; `none` in its place
/// when there is none.
fn show_name(name: Option<&str>, none: &str) -> String {
    name.map_or_else(|| none.to_string(), |name| format!("{name:?}"))
}

impl ClientError {
    /// The daemon's error code, when the daemon refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Daemon { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn connect_hint(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => {
            "no socket there; is hostkmsd running, and is that its socket path?".to_string()
        }
        io::ErrorKind::PermissionDenied => "permission denied; the socket admits its owner \
             and group only: ask an admin to add you to the socket's group (hostkms)"
            .to_string(),
        io::ErrorKind::ConnectionRefused => {
            "nothing is listening there (a stale socket); is hostkmsd running?".to_string()
        }
        _ => err.to_string(),
    }
}

/// A blocking connection to hostkmsd.
///
/// Requests are answered in order, so a caller may [`send`](Client::send)
/// several and then [`receive`](Client::receive) their answers.
///
/// A client speaks the newest protocol version both sides know: it sends
/// version [`PROTOCOL_VERSION`] and, when the daemon answers
/// `UnsupportedVersion` to a [`call`](Client::call), reconnects (the daemon
/// closed the connection), speaks the daemon's newest version from then on
/// and sends the request once more. A client made with
/// [`from_stream`](Client::from_stream) has no path to reconnect to and
/// returns that answer instead.
///
/// # Connection losses
///
/// The daemon closes a connection idle for its `idle_timeout_secs`
/// (default 30 s) and every connection when it stops. A [`call`](Client::call)
/// (and so every typed method) of a client made with
/// [`connect`](Client::connect) reconnects by itself when its request
/// provably never reached the daemon: the connection was found closed
/// before the request was written, or the write of its first byte failed
/// with a broken pipe or reset. It waits [`RECONNECT_BACKOFF`] before each
/// new connection and gives up with the last error after those retries.
/// Once any byte of a request was written, a lost connection is
/// [`ClientError::MayHaveExecuted`] and a late answer
/// [`ClientError::TimedOut`]: the request is never sent twice.
///
/// [`send`](Client::send) and [`receive`](Client::receive) never reconnect
/// nor retry: when either fails, every request sent and not answered may or
/// may not have been carried out, and the connection should be dropped.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    pipeline: Pipeline,
    max_frame: u32,
    proto: u16,
    path: Option<PathBuf>,
    /// The daemon closes a connection after `BadRequest`, and a lost or
    /// late answer leaves it out of step: the next call opens a new one
    /// (when the client has a path to reconnect to).
    reopen: bool,
    /// The per-request timeout in nanoseconds, [`NO_TIMEOUT`] for none.
    timeout: AtomicU64,
}

/// [`Client::timeout`] stored: none.
const NO_TIMEOUT: u64 = u64::MAX;

/// How a call's attempt failed: before its request could reach the daemon
/// (another connection may carry it), or for good.
pub(crate) enum Failure {
    /// The request provably never reached the daemon.
    Unsent(ClientError),
    /// Report this error.
    Final(ClientError),
}

impl Failure {
    pub(crate) fn into_error(self) -> ClientError {
        match self {
            Failure::Unsent(err) | Failure::Final(err) => err,
        }
    }
}

/// Whether an I/O error is a socket timeout (`EAGAIN` under `SO_RCVTIMEO`).
pub(crate) fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whether a failed write of a request's first byte shows the daemon had
/// closed the connection, so the request never reached it.
pub(crate) fn unsent(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// The error of a request whose connection failed with `err` after the
/// request was (partly) written.
pub(crate) fn lost(operation: Operation, err: ClientError) -> ClientError {
    ClientError::MayHaveExecuted {
        operation,
        source: Box::new(err),
    }
}

/// Request ids of one connection: the next to assign, and those sent and
/// not yet answered, oldest first (answers come in request order).
#[derive(Debug)]
pub(crate) struct Pipeline {
    next_id: u64,
    in_flight: std::collections::VecDeque<u64>,
}

impl Pipeline {
    pub(crate) fn new() -> Pipeline {
        Pipeline {
            next_id: CONNECTION_REFUSAL_ID + 1,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// The frame of `op` in protocol `proto` under a fresh id, and that id.
    /// A request `proto` cannot express is [`ClientError::DaemonTooOld`]
    /// (the client speaks an older version only to an older daemon).
    pub(crate) fn frame(
        &mut self,
        op: Request,
        proto: u16,
        max_frame: u32,
    ) -> Result<(u64, codec::FrameBuf), ClientError> {
        let id = self.next_id;
        // Never id 0: that id marks a refusal of the whole connection.
        self.next_id = self
            .next_id
            .checked_add(1)
            .unwrap_or(CONNECTION_REFUSAL_ID + 1);
        let operation = op.operation();
        match codec::encode_request(Envelope { proto, id, op }, max_frame) {
            Ok(frame) => Ok((id, frame)),
            Err(EncodeError::NotInVersion { proto, reason }) => Err(ClientError::DaemonTooOld {
                operation,
                reason: format!("the daemon speaks protocol version {proto}: {reason}"),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether every request sent was answered.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Forgets the requests in flight: their connection is gone.
    pub(crate) fn reset(&mut self) {
        self.in_flight.clear();
    }

    /// Records that the request `id` went out.
    pub(crate) fn sent(&mut self, id: u64) {
        self.in_flight.push_back(id);
    }

    /// Decodes an answer and checks it answers the oldest request in flight.
    ///
    /// An error with id 0 answers the connection rather than a request (the
    /// daemon refused it before it could read a request id, see the spec's
    /// "Refusals"): it is taken as the answer to the oldest request, since
    /// this client never sends id 0.
    pub(crate) fn answer(&mut self, body: &[u8]) -> Result<Envelope<Response>, ClientError> {
        let envelope = codec::decode_response(body)?;
        let refuses_connection =
            envelope.id == CONNECTION_REFUSAL_ID && matches!(envelope.op, Response::Error(_));
        match self.in_flight.pop_front() {
            Some(expected) if expected != envelope.id && !refuses_connection => {
                Err(ClientError::IdMismatch {
                    expected,
                    got: envelope.id,
                })
            }
            _ => Ok(envelope),
        }
    }
}

/// The id of an error that answers a whole connection, not one request.
const CONNECTION_REFUSAL_ID: u64 = 0;

/// The refusal the daemon left before closing, as [`ClientError::Daemon`],
/// if `left` is one.
pub(crate) fn refusal_left(left: Result<Option<FrameBuf>, FrameError>) -> Option<ClientError> {
    match left.map(|body| body.map(|body| codec::decode_response(&body))) {
        Ok(Some(Ok(Envelope {
            op: Response::Error(reply),
            ..
        }))) => Some(ClientError::Daemon {
            code: reply.code,
            message: reply.message,
        }),
        _ => None,
    }
}

/// A response, or the daemon's refusal as [`ClientError::Daemon`]; a
/// `BadRequest` that says the daemon does not know the request (this
/// library's [`UNKNOWN_REQUEST`], or bincode's text from a protocol-1
/// daemon) is [`ClientError::DaemonTooOld`].
pub(crate) fn refusal_as_error(
    response: Response,
    operation: Operation,
) -> Result<Response, ClientError> {
    match response {
        Response::Error(reply)
            if reply.code == ErrorCode::BadRequest
                && (reply.message.contains(UNKNOWN_REQUEST)
                    || reply.message.contains(BINCODE_UNKNOWN_VARIANT)) =>
        {
            Err(ClientError::DaemonTooOld {
                operation,
                reason: format!("it does not know the request ({})", reply.message),
            })
        }
        Response::Error(reply) => Err(ClientError::Daemon {
            code: reply.code,
            message: reply.message,
        }),
        response => Ok(response),
    }
}

/// Whether the daemon closes the connection after this answer: it does
/// after `BadRequest` (the stream is out of step), e.g. a request variant
/// it does not know.
pub(crate) fn closes_connection(answer: &Response) -> bool {
    matches!(answer, Response::Error(reply) if reply.code == ErrorCode::BadRequest)
}

/// The version to retry in after `err` answered a request sent in `proto`:
/// the newest the daemon speaks, when `err` is `UnsupportedVersion` and
/// that is older than `proto` and one this library speaks. The daemon's
/// message names its range as "versions OLDEST to NEWEST" (the spec's
/// rule, and the text of every daemon since version 1); without that, the
/// version below `proto`.
pub(crate) fn fallback_version(err: &ClientError, proto: u16) -> Option<u16> {
    let ClientError::Daemon {
        code: ErrorCode::UnsupportedVersion,
        message,
    } = err
    else {
        return None;
    };
    let newest = message
        .rsplit_once(" to ")
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok()
        })
        .unwrap_or(proto.saturating_sub(1));
    (OLDEST_PROTOCOL_VERSION..proto)
        .contains(&newest)
        .then_some(newest)
}

impl Client {
    /// Connects to the daemon's socket at `path`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the socket cannot be reached (no
    /// daemon, no permission).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let mut client = Client::from_stream(open(path)?);
        client.path = Some(path.to_path_buf());
        Ok(client)
    }

    /// Connects to the socket `$HOSTKMS_SOCKET` names, else to
    /// [`DEFAULT_SOCKET`] (see [`default_socket`]).
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the socket cannot be reached.
    pub fn connect_default() -> Result<Client, ClientError> {
        Client::connect(default_socket())
    }

    /// Uses an already connected stream (no fallback to an older protocol
    /// version and no reconnection: those need a new connection, see
    /// [`Client`]).
    pub fn from_stream(stream: UnixStream) -> Client {
        Client {
            stream,
            pipeline: Pipeline::new(),
            max_frame: DEFAULT_MAX_FRAME,
            proto: PROTOCOL_VERSION,
            path: None,
            reopen: false,
            timeout: AtomicU64::new(nanos(Some(DEFAULT_TIMEOUT))),
        }
    }

    /// Limits how long one request may take, writing it and reading its
    /// whole answer (`None`: forever; default [`DEFAULT_TIMEOUT`]). A
    /// request that outlasts it is [`ClientError::TimedOut`]. For
    /// [`send`](Client::send) and [`receive`](Client::receive) it bounds
    /// each of them.
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`] (`InvalidInput`) for a zero timeout.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a zero timeout").into());
        }
        self.timeout.store(nanos(timeout), Ordering::Relaxed);
        Ok(())
    }

    /// [`set_timeout`](Client::set_timeout) as a builder.
    ///
    /// # Errors
    ///
    /// Those of [`set_timeout`](Client::set_timeout).
    pub fn with_timeout(self, timeout: Option<Duration>) -> Result<Client, ClientError> {
        self.set_timeout(timeout)?;
        Ok(self)
    }

    /// The per-request timeout (`None`: none).
    pub fn timeout(&self) -> Option<Duration> {
        match self.timeout.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Sets the largest frame body this client sends or accepts (default
    /// [`DEFAULT_MAX_FRAME`]); raise it, with the daemon's `max_frame`, to
    /// exchange larger messages.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The largest frame body this client sends or accepts.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// The protocol version this client speaks on its connection: the
    /// newest it knows, or the daemon's newest once it fell back to it.
    pub fn protocol(&self) -> u16 {
        self.proto
    }

    /// Speaks protocol version `proto` from now on (no negotiation): for
    /// tests, and for a caller that knows its daemon's version.
    pub fn set_protocol(&mut self, proto: u16) {
        self.proto = proto;
    }

    /// Sends a request without waiting for its answer; returns its id.
    /// Never reconnects nor retries (see [`Client`]).
    ///
    /// # Errors
    ///
    /// [`ClientError::DaemonTooOld`] or [`ClientError::Encode`] when the
    /// request cannot be encoded; [`ClientError::Io`] when the write fails
    /// or outlasts the timeout (the daemon may have read part of it: drop
    /// the connection).
    pub fn send(&mut self, op: Request) -> Result<u64, ClientError> {
        let (id, frame) = self.pipeline.frame(op, self.proto, self.max_frame)?;
        self.timed().write_all(&frame)?;
        self.pipeline.sent(id);
        Ok(id)
    }

    /// Receives the answer to the oldest request sent and not yet answered.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the daemon closed the connection,
    /// [`ClientError::Frame`] when the read fails or outlasts the timeout,
    /// [`ClientError::Decode`] or [`ClientError::IdMismatch`] for an answer
    /// that is not one.
    pub fn receive(&mut self) -> Result<Envelope<Response>, ClientError> {
        let body =
            codec::read_frame(&mut self.timed(), self.max_frame)?.ok_or(ClientError::Closed)?;
        self.pipeline.answer(&body)
    }

    /// The stream, each read and write bounded by the timeout from now.
    fn timed(&self) -> Timed<'_> {
        Timed {
            stream: &self.stream,
            deadline: self.timeout().map(|timeout| Instant::now() + timeout),
        }
    }

    /// Sends one request and waits for its answer; a refusal becomes
    /// [`ClientError::Daemon`]. When the daemon closed the connection before
    /// the request went out, the refusal it left (e.g. `Busy`) is returned;
    /// without one, the client reconnects and sends the request again (see
    /// [`Client`]). When the daemon speaks only an older protocol version,
    /// the client reconnects and retries once in that version.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] for the daemon's refusal;
    /// [`ClientError::DaemonTooOld`] for a request the daemon is too old
    /// for; [`ClientError::MayHaveExecuted`] or [`ClientError::TimedOut`]
    /// when the request went out and no answer came; [`ClientError::Connect`]
    /// or [`ClientError::Io`] when no connection could carry it.
    pub fn call(&mut self, op: Request) -> Result<Response, ClientError> {
        let mut pauses = RECONNECT_BACKOFF.iter();
        loop {
            match self.call_negotiated(op.clone()) {
                Ok(answer) => return Ok(answer),
                Err(Failure::Unsent(err)) => match (pauses.next(), &self.path) {
                    (Some(pause), Some(_)) => {
                        std::thread::sleep(*pause);
                        self.reopen = true;
                    }
                    _ => return Err(err),
                },
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    /// One attempt of [`call`](Client::call), falling back to an older
    /// protocol version when the daemon asks for it.
    fn call_negotiated(&mut self, op: Request) -> Result<Response, Failure> {
        if let (true, Some(path)) = (self.reopen, self.path.clone()) {
            self.reconnect(&path).map_err(Failure::Unsent)?;
        }
        let retry =
            (self.proto > OLDEST_PROTOCOL_VERSION && self.path.is_some()).then(|| op.clone());
        let err = match self.call_once(op) {
            Err(Failure::Final(err)) => err,
            answered => return answered,
        };
        match (fallback_version(&err, self.proto), retry, self.path.clone()) {
            (Some(proto), Some(op), Some(path)) => {
                self.proto = proto;
                self.reconnect(&path).map_err(Failure::Unsent)?;
                self.call_once(op)
            }
            _ => Err(Failure::Final(err)),
        }
    }

    /// Replaces the connection the daemon closed with a new one.
    fn reconnect(&mut self, path: &Path) -> Result<(), ClientError> {
        self.stream = open(path)?;
        self.pipeline.reset();
        self.reopen = false;
        Ok(())
    }

    fn call_once(&mut self, op: Request) -> Result<Response, Failure> {
        let operation = op.operation();
        let (id, frame) = self
            .pipeline
            .frame(op, self.proto, self.max_frame)
            .map_err(Failure::Final)?;
        self.probe()?;
        let timeout = self.timeout();
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let timed = |stream| Timed { stream, deadline };
        let written = write_counted(&mut timed(&self.stream), &frame);
        let late = |client: &mut Client| {
            client.reopen = true;
            ClientError::TimedOut {
                operation,
                after: timeout.unwrap_or_default(),
            }
        };
        match written {
            Ok(()) => {}
            Err((0, err)) if unsent(&err) => {
                let left = codec::read_frame(&mut self.timed(), self.max_frame);
                return Err(match refusal_left(left) {
                    Some(refusal) => Failure::Final(refusal),
                    None => Failure::Unsent(err.into()),
                });
            }
            Err((_, err)) if is_timeout(&err) => return Err(Failure::Final(late(self))),
            Err((0, err)) => return Err(Failure::Final(err.into())),
            Err((_, err)) => {
                self.reopen = true;
                return Err(Failure::Final(lost(operation, err.into())));
            }
        }
        self.pipeline.sent(id);
        let body = match codec::read_frame(&mut timed(&self.stream), self.max_frame) {
            Ok(Some(body)) => body,
            Ok(None) => {
                self.reopen = true;
                return Err(Failure::Final(lost(operation, ClientError::Closed)));
            }
            Err(FrameError::Io(err)) if is_timeout(&err) => {
                return Err(Failure::Final(late(self)));
            }
            Err(err) => {
                self.reopen = true;
                return Err(Failure::Final(lost(operation, err.into())));
            }
        };
        let answer = self.pipeline.answer(&body).map_err(Failure::Final)?.op;
        self.reopen = closes_connection(&answer);
        refusal_as_error(answer, operation).map_err(Failure::Final)
    }

    /// Before a call writes its request: whether the daemon closed the
    /// connection meanwhile (idle timeout, restart), so the request can go
    /// on a new one, or left a refusal on it. Only an idle connection is
    /// probed: on one with answers pending the bytes are theirs.
    fn probe(&mut self) -> Result<(), Failure> {
        if !self.pipeline.is_idle() {
            return Ok(());
        }
        let mut first = [0u8; 1];
        self.stream
            .set_nonblocking(true)
            .map_err(|e| Failure::Final(e.into()))?;
        let got = (&self.stream).read(&mut first);
        self.stream
            .set_nonblocking(false)
            .map_err(|e| Failure::Final(e.into()))?;
        match got {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Ok(0) => Err(Failure::Unsent(ClientError::Closed)),
            Err(err) if unsent(&err) => Err(Failure::Unsent(err.into())),
            Err(err) => Err(Failure::Final(err.into())),
            Ok(_) => {
                // The daemon spoke first: a refusal it left before closing.
                self.reopen = true;
                let left = codec::read_frame(&mut (&first[..]).chain(self.timed()), self.max_frame);
                Err(Failure::Final(
                    refusal_left(left).unwrap_or(ClientError::Closed),
                ))
            }
        }
    }

    typed_operations!(blocking);
}

/// A timeout as stored in [`Client::timeout`].
fn nanos(timeout: Option<Duration>) -> u64 {
    timeout.map_or(NO_TIMEOUT, |t| {
        u64::try_from(t.as_nanos()).unwrap_or(NO_TIMEOUT - 1)
    })
}

/// Writes `frame`; on failure, how many bytes went out and why.
fn write_counted(out: &mut impl Write, frame: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    while written < frame.len() {
        match out.write(&frame[written..]) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err((written, err)),
        }
    }
    Ok(())
}

/// A stream whose reads and writes end by a deadline.
struct Timed<'a> {
    stream: &'a UnixStream,
    deadline: Option<Instant>,
}

impl Timed<'_> {
    /// The time left, as a socket timeout; an error once it is spent.
    fn left(&self) -> io::Result<Option<Duration>> {
        let Some(deadline) = self.deadline else {
            return Ok(None);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request timed out",
            ));
        }
        Ok(Some(left))
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(self.left()?)?;
        (&*self.stream).read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(self.left()?)?;
        (&*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks that a `ListKeys` page asked for after `after` moves the listing
/// forward: its `next`, if any, must follow `after` and not precede the
/// page's last key (the daemon sends that key's name). A cursor that stays
/// put would have [`Client::list_keys`] ask for the same page forever,
/// its memory growing with every answer.
pub(crate) fn check_cursor(after: Option<&str>, page: &KeyPage) -> Result<(), ClientError> {
    let Some(next) = page.next.as_deref() else {
        return Ok(());
    };
    let last = page.keys.last().map(|key| key.name.as_str());
    // A page with a cursor holds keys, the last one at or before the
    // cursor: an empty page that points further would let a daemon keep a
    // client listing forever.
    if after.is_some_and(|after| next <= after) || last.is_none_or(|last| next < last) {
        return Err(ClientError::ListCursorStuck {
            after: after.map(str::to_string),
            last: last.map(str::to_string),
            next: next.to_string(),
        });
    }
    Ok(())
}

/// Connects to the daemon's socket at `path`.
fn open(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })
}

/// Turns a response into the value a request calls for.
pub(crate) mod expect {
    use super::ClientError;
    use crate::bytes::SecretBytes;
    use crate::message::{
        DataKey, ErrorReply, ExportedFile, KeyInfo, KeyPage, MacTag, PublicKeyInfo, ResealInfo,
        Response, RootRotation, Signature, StatusInfo, TransportKeyInfo, UnlockInfo, Unwrapped,
        Verification, Wrapped,
    };

    fn unexpected(expected: &'static str, got: &Response) -> ClientError {
        ClientError::UnexpectedResponse {
            expected,
            got: got.kind(),
        }
    }

    pub fn pong(response: Response) -> Result<(), ClientError> {
        match response {
            Response::Pong => Ok(()),
            other => Err(unexpected("Pong", &other)),
        }
    }

    pub fn status(response: Response) -> Result<StatusInfo, ClientError> {
        match response {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("Status", &other)),
        }
    }

    pub fn key(response: Response) -> Result<KeyInfo, ClientError> {
        match response {
            Response::Key(key) => Ok(key),
            other => Err(unexpected("Key", &other)),
        }
    }

    pub fn keys(response: Response) -> Result<KeyPage, ClientError> {
        match response {
            Response::Keys(page) => Ok(page),
            other => Err(unexpected("Keys", &other)),
        }
    }

    pub fn wrapped(response: Response) -> Result<Wrapped, ClientError> {
        match response {
            Response::Wrapped(wrapped) => Ok(wrapped),
            other => Err(unexpected("Wrapped", &other)),
        }
    }

    pub fn unwrapped(response: Response) -> Result<Unwrapped, ClientError> {
        match response {
            Response::Unwrapped(unwrapped) => Ok(unwrapped),
            other => Err(unexpected("Unwrapped", &other)),
        }
    }

    pub fn wrapped_batch(
        response: Response,
    ) -> Result<Vec<Result<Wrapped, ErrorReply>>, ClientError> {
        match response {
            Response::WrappedBatch(items) => Ok(items),
            other => Err(unexpected("WrappedBatch", &other)),
        }
    }

    pub fn unwrapped_batch(
        response: Response,
    ) -> Result<Vec<Result<Unwrapped, ErrorReply>>, ClientError> {
        match response {
            Response::UnwrappedBatch(items) => Ok(items),
            other => Err(unexpected("UnwrappedBatch", &other)),
        }
    }

    pub fn data_key(response: Response) -> Result<DataKey, ClientError> {
        match response {
            Response::DataKey(data_key) => Ok(data_key),
            other => Err(unexpected("DataKey", &other)),
        }
    }

    pub fn unlocked(response: Response) -> Result<UnlockInfo, ClientError> {
        match response {
            Response::Unlocked(info) => Ok(info),
            other => Err(unexpected("Unlocked", &other)),
        }
    }

    pub fn resealed(response: Response) -> Result<ResealInfo, ClientError> {
        match response {
            Response::Resealed(info) => Ok(info),
            other => Err(unexpected("Resealed", &other)),
        }
    }

    pub fn root_rotated(response: Response) -> Result<RootRotation, ClientError> {
        match response {
            Response::RootRotated(rotation) => Ok(rotation),
            other => Err(unexpected("RootRotated", &other)),
        }
    }

    pub fn transport_key(response: Response) -> Result<TransportKeyInfo, ClientError> {
        match response {
            Response::TransportKey(info) => Ok(info),
            other => Err(unexpected("TransportKey", &other)),
        }
    }

    pub fn exported(response: Response) -> Result<ExportedFile, ClientError> {
        match response {
            Response::Exported(file) => Ok(file),
            other => Err(unexpected("Exported", &other)),
        }
    }

    pub fn mac(response: Response) -> Result<MacTag, ClientError> {
        match response {
            Response::Mac(tag) => Ok(tag),
            other => Err(unexpected("Mac", &other)),
        }
    }

    pub fn verified(response: Response) -> Result<Verification, ClientError> {
        match response {
            Response::Verified(verification) => Ok(verification),
            other => Err(unexpected("Verified", &other)),
        }
    }

    pub fn signature(response: Response) -> Result<Signature, ClientError> {
        match response {
            Response::Signature(signature) => Ok(signature),
            other => Err(unexpected("Signature", &other)),
        }
    }

    pub fn public_key(response: Response) -> Result<PublicKeyInfo, ClientError> {
        match response {
            Response::PublicKey(info) => Ok(info),
            other => Err(unexpected("PublicKey", &other)),
        }
    }

    pub fn random(response: Response) -> Result<SecretBytes, ClientError> {
        match response {
            Response::Random(bytes) => Ok(bytes),
            other => Err(unexpected("Random", &other)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::message::ErrorReply;

    fn busy(id: u64) -> codec::FrameBuf {
        codec::encode_frame(
            &Envelope::new(
                id,
                Response::error(ErrorCode::Busy, "at most 1 connections"),
            ),
            DEFAULT_MAX_FRAME,
        )
        .unwrap()
    }

    #[test]
    fn an_error_with_id_0_refuses_the_oldest_request_and_other_ids_must_match() {
        let mut pipeline = Pipeline::new();
        pipeline.sent(1);
        let refusal = pipeline.answer(&busy(0)[codec::LENGTH_PREFIX..]).unwrap();
        assert!(matches!(
            refusal.op,
            Response::Error(ErrorReply {
                code: ErrorCode::Busy,
                ..
            })
        ));
        pipeline.sent(2);
        let pong =
            codec::encode_frame(&Envelope::new(0, Response::Pong), DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(
            pipeline.answer(&pong[codec::LENGTH_PREFIX..]),
            Err(ClientError::IdMismatch {
                expected: 2,
                got: 0
            })
        ));
    }

    #[test]
    fn a_refusal_left_before_the_daemon_closed_is_read_after_a_broken_pipe() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut daemon = theirs;
        daemon.write_all(&busy(0)).unwrap();
        drop(daemon);
        let mut client = Client::from_stream(ours);
        let err = client.ping().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Busy), "{err}");
    }

    /// A fake daemon on a socket in a fresh directory: it serves
    /// connections one after another, speaking versions 1 to `newest` as
    /// `answer` says, and records the `proto` and request of every frame.
    /// Like a real daemon, it answers a version it does not speak with
    /// `UnsupportedVersion` and closes the connection.
    pub(crate) struct Fake {
        pub(crate) path: PathBuf,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(u16, Request)>>>,
    }

    impl Fake {
        pub(crate) fn start(newest: u16, answer: fn(&Request) -> Response) -> Fake {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "agent-proto-fake-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            let path = dir.join("sock");
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = std::sync::Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let mut stream = stream.unwrap();
                    while let Ok(Some(body)) = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
                        let proto = u16::from_le_bytes([body[0], body[1]]);
                        let id = u64::from_le_bytes(body[2..10].try_into().unwrap());
                        if proto > newest {
                            let refusal = Response::error(
                                ErrorCode::UnsupportedVersion,
                                format!(
                                    "protocol version {proto} is not supported; this side speaks versions 1 to {newest}"
                                ),
                            );
                            let frame = codec::encode_response(
                                Envelope {
                                    proto: 1,
                                    id,
                                    op: refusal,
                                },
                                DEFAULT_MAX_FRAME,
                            )
                            .unwrap();
                            stream.write_all(&frame).unwrap();
                            break;
                        }
                        let request = codec::decode_request(&body).unwrap();
                        log.lock().unwrap().push((proto, request.op.clone()));
                        let op = answer(&request.op);
                        // As the real daemon: closed after BadRequest.
                        let close = matches!(&op, Response::Error(reply) if reply.code == ErrorCode::BadRequest);
                        let frame =
                            codec::encode_response(Envelope { proto, id, op }, DEFAULT_MAX_FRAME)
                                .unwrap();
                        stream.write_all(&frame).unwrap();
                        if close {
                            break;
                        }
                    }
                }
            });
            Fake { path, seen }
        }

        pub(crate) fn seen(&self) -> Vec<(u16, Request)> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn key(name: &str) -> KeyInfo {
        KeyInfo {
            id: [1; 16],
            name: name.to_string(),
            created: 0,
            state: crate::message::KeyState::Enabled,
            latest_version: 1,
            min_decryption_version: 1,
            versions: Vec::new(),
            key_type: crate::message::KeyType::Aes256Gcm,
            description: String::new(),
            tags: Default::default(),
            rotation_period: None,
            next_rotation: None,
            deletion_date: None,
        }
    }

    pub(crate) const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

    /// Pages of [`NAMES`] as a daemon of version 2 answers them; a page of
    /// more than 2 keys "exceeds the frame".
    pub(crate) fn paging_daemon(request: &Request) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::ListKeys {
                limit: Some(limit), ..
            } if *limit > 2 => Response::error(ErrorCode::FrameTooLarge, "page too large"),
            Request::ListKeys { after, limit } => {
                let rest: Vec<_> = NAMES
                    .iter()
                    .filter(|name| after.as_deref().is_none_or(|after| **name > after))
                    .collect();
                let take = limit.map_or(rest.len(), |l| l as usize).min(rest.len());
                let keys: Vec<KeyInfo> = rest[..take].iter().map(|name| key(name)).collect();
                let next = (take < rest.len()).then(|| keys[take - 1].name.clone());
                Response::Keys(KeyPage { keys, next })
            }
            _ => Response::error(ErrorCode::NotImplemented, "fake"),
        }
    }

    /// A daemon whose every `ListKeys` page is key "a" with `next` "a":
    /// a cursor that never advances.
    pub(crate) fn stuck_cursor(request: &Request) -> Response {
        match request {
            Request::ListKeys { .. } => Response::Keys(KeyPage {
                keys: vec![key("a")],
                next: Some("a".to_string()),
            }),
            other => paging_daemon(other),
        }
    }

    /// A daemon whose first page ends at key "b" but sends `next` "a",
    /// which would ask for "b" again.
    fn cursor_behind_its_page(request: &Request) -> Response {
        match request {
            Request::ListKeys { .. } => Response::Keys(KeyPage {
                keys: vec![key("b")],
                next: Some("a".to_string()),
            }),
            other => paging_daemon(other),
        }
    }

    /// A hostile daemon: empty pages whose cursor always moves on.
    fn empty_pages_moving_on(request: &Request) -> Response {
        match request {
            Request::ListKeys { after, .. } => Response::Keys(KeyPage {
                keys: Vec::new(),
                next: Some(format!("{}a", after.as_deref().unwrap_or(""))),
            }),
            other => paging_daemon(other),
        }
    }

    /// `list_keys` against `daemon`, given 10 seconds to return.
    fn list_keys_within_10s(daemon: &Fake) -> Result<Vec<KeyInfo>, ClientError> {
        let path = daemon.path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut client = Client::connect(&path).unwrap();
            let _ = tx.send(client.list_keys());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("list_keys returned instead of following the cursor forever")
    }

    #[test]
    fn list_keys_refuses_a_cursor_that_does_not_advance() {
        let daemon = Fake::start(2, stuck_cursor);
        let err = list_keys_within_10s(&daemon).unwrap_err();
        assert!(
            matches!(&err, ClientError::ListCursorStuck { after: Some(after), next, .. }
                if after == "a" && next == "a"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the daemon's ListKeys cursor did not advance: the page after \"a\" ended at \"a\" \
             and answered next \"a\"; stopped listing"
        );
        assert_eq!(daemon.seen().len(), 2, "refused at the second page");
    }

    #[test]
    fn list_keys_refuses_a_cursor_before_the_last_key_of_its_page() {
        let daemon = Fake::start(2, cursor_behind_its_page);
        let err = list_keys_within_10s(&daemon).unwrap_err();
        assert!(
            matches!(&err, ClientError::ListCursorStuck { after: None, last: Some(last), next }
                if last == "b" && next == "a"),
            "{err:?}"
        );
        assert_eq!(daemon.seen().len(), 1, "refused at the first page");
    }

    #[test]
    fn list_keys_refuses_an_empty_page_that_points_further() {
        let daemon = Fake::start(2, empty_pages_moving_on);
        let err = list_keys_within_10s(&daemon).unwrap_err();
        assert!(
            matches!(&err, ClientError::ListCursorStuck { after: None, last: None, next }
                if next == "a"),
            "{err:?}"
        );
        assert_eq!(daemon.seen().len(), 1, "refused at the first page");
    }

    #[test]
    fn a_client_falls_back_to_a_version_1_daemon_and_stays_there() {
        let daemon = Fake::start(1, paging_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        assert_eq!(client.protocol(), PROTOCOL_VERSION);
        client.ping().unwrap();
        assert_eq!(client.protocol(), 1);
        client.ping().unwrap();
        assert_eq!(
            daemon.seen(),
            vec![(1, Request::Ping), (1, Request::Ping)],
            "the version-2 frame was refused, then every request went in version 1"
        );
    }

    #[test]
    fn list_keys_on_a_version_1_daemon_gets_every_key_at_once() {
        let daemon = Fake::start(1, paging_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        let names: Vec<String> = client
            .list_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, NAMES);
        let all = Request::ListKeys {
            after: None,
            limit: None,
        };
        assert_eq!(daemon.seen(), vec![(1, all)]);
    }

    #[test]
    fn a_page_a_version_1_daemon_cannot_serve_is_daemon_too_old_and_not_sent() {
        let daemon = Fake::start(1, paging_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        let err = client.list_page(Some("a".into()), Some(2)).unwrap_err();
        assert!(matches!(err, ClientError::DaemonTooOld { .. }), "{err:?}");
        assert!(err.to_string().contains("upgrade hostkmsd"), "{err}");
        assert!(daemon.seen().is_empty(), "{:?}", daemon.seen());
    }

    #[test]
    fn list_keys_pages_and_halves_a_page_that_exceeds_the_frame() {
        let daemon = Fake::start(2, paging_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        let names: Vec<String> = client
            .list_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, NAMES);
        let seen = daemon.seen();
        assert!(seen.iter().all(|(proto, _)| *proto == 2), "{seen:?}");
        // 512, 256, ..., 4 refused; then pages of 2: a-b, c-d, e.
        let limits: Vec<_> = seen
            .iter()
            .map(|(_, request)| match request {
                Request::ListKeys { limit, .. } => limit.unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(limits, [512, 256, 128, 64, 32, 16, 8, 4, 2, 2, 2]);
    }

    #[test]
    fn a_client_without_a_path_does_not_fall_back() {
        let daemon = Fake::start(1, paging_daemon);
        let mut client = Client::from_stream(UnixStream::connect(&daemon.path).unwrap());
        let err = client.ping().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnsupportedVersion), "{err}");
    }

    /// A daemon that does not know `Rotate` (as one older than the client
    /// would not know a request appended later): `BadRequest`, then closed.
    pub(crate) fn too_old_for_rotate(request: &Request) -> Response {
        match request {
            Request::Rotate { .. } => Response::error(
                ErrorCode::BadRequest,
                "unknown request variant 7 in protocol version 2 (this side knows 0 to 6): \
                 the daemon is older than the client; upgrade hostkmsd",
            ),
            other => paging_daemon(other),
        }
    }

    #[test]
    fn after_daemon_too_old_the_next_call_has_a_new_connection() {
        let daemon = Fake::start(2, too_old_for_rotate);
        let mut client = Client::connect(&daemon.path).unwrap();
        let err = client.rotate("a").unwrap_err();
        assert!(matches!(err, ClientError::DaemonTooOld { .. }), "{err:?}");
        client.ping().expect("a ping on a new connection");
        assert_eq!(client.protocol(), 2);
    }

    #[test]
    fn an_unknown_request_answer_is_daemon_too_old() {
        for message in [
            // This daemon's words, and bincode's from a protocol-1 daemon.
            "unknown request variant 14 in protocol version 2 (this side knows 0 to 13): ...",
            "malformed message: invalid value: integer `14`, expected variant index 0 <= i < 14",
        ] {
            let err = refusal_as_error(
                Response::error(ErrorCode::BadRequest, message),
                Operation::Ping,
            )
            .unwrap_err();
            assert!(matches!(err, ClientError::DaemonTooOld { .. }), "{err:?}");
        }
        let err = refusal_as_error(
            Response::error(ErrorCode::BadRequest, "malformed message: io error"),
            Operation::Ping,
        )
        .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    }

    /// A daemon of the newest version that answers the key-type requests
    /// with values made from what they asked, so a test sees each client
    /// method send its request and read its answer.
    fn key_type_daemon(request: &Request) -> Response {
        let key_name = request.key_name().unwrap_or("").to_string();
        match request {
            Request::CreateKey { name, key_type, .. } => Response::Key(KeyInfo {
                key_type: *key_type,
                ..key(name)
            }),
            Request::Mac { data, .. } => Response::Mac(MacTag {
                key: key_name,
                version: 2,
                tag: data.expose().to_vec(),
            }),
            Request::VerifyMac {
                data, tag, version, ..
            } => Response::Verified(Verification {
                key: key_name,
                valid: data.expose() == tag.as_slice(),
                version: *version,
            }),
            Request::Sign { input, .. } => Response::Signature(Signature {
                key: key_name,
                version: match input {
                    SignInput::Message(_) => 1,
                    SignInput::Digest(_) => 2,
                },
                signature: input.bytes().to_vec(),
            }),
            Request::Verify {
                input,
                signature,
                version,
                ..
            } => Response::Verified(Verification {
                key: key_name,
                valid: matches!(input, SignInput::Digest(_))
                    && input.bytes() == signature.as_slice(),
                version: *version,
            }),
            Request::GetPublicKey { version, .. } => Response::PublicKey(PublicKeyInfo {
                key: key_name,
                version: version.unwrap_or(3),
                key_type: KeyType::Ed25519,
                revoked: false,
                spki_der: vec![0x30],
            }),
            Request::GenerateRandom { bytes } => {
                Response::Random(SecretBytes::from(vec![7; usize::from(*bytes)]))
            }
            other => paging_daemon(other),
        }
    }

    #[test]
    fn the_key_type_methods_send_their_request_and_read_its_answer() {
        let daemon = Fake::start(PROTOCOL_VERSION, key_type_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        let created = client.create_key_of_type("rel", KeyType::MlDsa65).unwrap();
        assert_eq!(
            (created.name.as_str(), created.key_type),
            ("rel", KeyType::MlDsa65)
        );
        assert_eq!(
            client.create_key("db").unwrap().key_type,
            KeyType::Aes256Gcm
        );
        let tag = client.mac("h", b"data").unwrap();
        assert_eq!(
            (tag.key.as_str(), tag.version, tag.tag.as_slice()),
            ("h", 2, &b"data"[..])
        );
        let checked = client.verify_mac("h", b"data", b"data", Some(4)).unwrap();
        assert_eq!((checked.valid, checked.version), (true, Some(4)));
        assert!(
            !client
                .verify_mac("h", b"data", b"other", None)
                .unwrap()
                .valid
        );
        let signed = client.sign("rel", b"msg").unwrap();
        assert_eq!(
            (signed.version, signed.signature.as_slice()),
            (1, &b"msg"[..])
        );
        let signed = client.sign_digest("rel", &[9; 32]).unwrap();
        assert_eq!((signed.version, signed.signature), (2, vec![9; 32]));
        assert!(!client.verify("rel", b"msg", b"msg", None).unwrap().valid);
        assert!(
            client
                .verify_digest("rel", b"d", b"d", Some(1))
                .unwrap()
                .valid
        );
        let public = client.public_key("rel", Some(5)).unwrap();
        assert_eq!((public.version, public.key_type), (5, KeyType::Ed25519));
        assert_eq!(client.random(3).unwrap().expose(), &[7, 7, 7]);
        let seen: Vec<Operation> = daemon.seen().iter().map(|(_, r)| r.operation()).collect();
        assert_eq!(
            seen,
            [
                Operation::Create,
                Operation::Create,
                Operation::Mac,
                Operation::VerifyMac,
                Operation::VerifyMac,
                Operation::Sign,
                Operation::Sign,
                Operation::Verify,
                Operation::Verify,
                Operation::PublicKey,
                Operation::Random,
            ]
        );
    }

    #[test]
    fn a_key_type_method_answered_with_another_kind_is_unexpected_response() {
        let daemon = Fake::start(PROTOCOL_VERSION, |_| Response::Pong);
        let mut client = Client::connect(&daemon.path).unwrap();
        let err = client.sign("rel", b"msg").unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::UnexpectedResponse {
                    expected: "Signature",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A version-3 daemon: it answers the requests version 3 has, with
    /// keys of the only type it knows.
    pub(crate) fn version_3_daemon(request: &Request) -> Response {
        let name = request.key_name().unwrap_or("k").to_string();
        match request {
            Request::CreateKey { .. }
            | Request::Rotate { .. }
            | Request::Revoke { .. }
            | Request::Disable { .. }
            | Request::Enable { .. }
            | Request::SetMinDecryptionVersion { .. }
            | Request::DescribeKey { .. } => Response::Key(key(&name)),
            Request::Wrap { key, .. } | Request::Rewrap { key: Some(key), .. } => {
                Response::Wrapped(crate::message::Wrapped {
                    key: key.clone(),
                    version: 1,
                    ciphertext: Ciphertext::from(&b"HKMS\x01"[..]),
                })
            }
            Request::TransportKey => Response::TransportKey(TransportKeyInfo {
                recipient: "age1x".to_string(),
                fingerprint: "00".to_string(),
            }),
            other => paging_daemon(other),
        }
    }

    #[test]
    fn a_current_client_keeps_every_version_3_request_working_with_a_version_3_daemon() {
        let daemon = Fake::start(3, version_3_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        assert_eq!(client.protocol(), PROTOCOL_VERSION);
        client.ping().unwrap();
        assert_eq!(client.protocol(), 3, "fell back to the daemon's version");
        let created = client.create_key("db").unwrap();
        assert_eq!(
            (created.name.as_str(), created.key_type),
            ("db", KeyType::Aes256Gcm)
        );
        let created = client
            .create_key_of_type("db2", KeyType::Aes256Gcm)
            .unwrap();
        assert_eq!(created.key_type, KeyType::Aes256Gcm);
        let context = EncryptionContext::new();
        assert_eq!(client.wrap("db", b"hi", &context).unwrap().version, 1);
        client.rewrap(b"HKMS", &context, Some("db")).unwrap();
        client.rotate("db").unwrap();
        client.revoke("db", Some(1)).unwrap();
        client.disable("db").unwrap();
        client.enable("db").unwrap();
        client.set_min_decryption_version("db", 1).unwrap();
        let described = client.describe_key("db").unwrap();
        assert_eq!(
            described.key_type,
            KeyType::Aes256Gcm,
            "a version-3 key is AES"
        );
        assert_eq!(client.list_keys().unwrap().len(), NAMES.len());
        client.transport_key().unwrap();
        let seen = daemon.seen();
        assert!(seen.iter().all(|(proto, _)| *proto == 3), "{seen:?}");
        assert_eq!(
            seen[1].1,
            Request::CreateKey {
                name: "db".to_string(),
                key_type: KeyType::Aes256Gcm,
                settings: KeySettings::default(),
            }
        );
    }

    #[test]
    fn a_key_type_request_to_a_version_3_daemon_is_daemon_too_old_and_not_sent() {
        let daemon = Fake::start(3, version_3_daemon);
        let mut client = Client::connect(&daemon.path).unwrap();
        client.ping().unwrap();
        let sent = daemon.seen().len();
        let refusals = [
            (
                Operation::Create,
                client.create_key_of_type("rel", KeyType::Ed25519).err(),
            ),
            (Operation::Mac, client.mac("h", b"d").err()),
            (
                Operation::VerifyMac,
                client.verify_mac("h", b"d", b"t", None).err(),
            ),
            (Operation::Sign, client.sign("rel", b"m").err()),
            (Operation::Sign, client.sign_digest("rel", &[0; 32]).err()),
            (
                Operation::Verify,
                client.verify("rel", b"m", b"s", Some(1)).err(),
            ),
            (
                Operation::Verify,
                client.verify_digest("rel", &[0; 32], b"s", None).err(),
            ),
            (Operation::PublicKey, client.public_key("rel", None).err()),
            (Operation::Random, client.random(16).err()),
        ];
        for (expected, err) in refusals {
            match err {
                Some(ClientError::DaemonTooOld { operation, reason }) => {
                    assert_eq!(operation, expected);
                    assert!(reason.contains("protocol version 3"), "{reason}");
                    if operation == Operation::Create {
                        assert!(reason.contains("ed25519"), "names the type: {reason}");
                    }
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
        assert_eq!(daemon.seen().len(), sent, "nothing was sent");
        assert_eq!(client.protocol(), 3);
        client.ping().expect("the connection is still good");
    }

    #[test]
    fn the_fallback_version_is_the_daemons_newest_below_ours() {
        let refusal = |message: &str| ClientError::Daemon {
            code: ErrorCode::UnsupportedVersion,
            message: message.to_string(),
        };
        let v1_words = "protocol version 2 is not supported; this side speaks versions 1 to 1";
        assert_eq!(fallback_version(&refusal(v1_words), 2), Some(1));
        assert_eq!(fallback_version(&refusal("no range given"), 2), Some(1));
        assert_eq!(fallback_version(&refusal(v1_words), 1), None);
        let newer = "protocol version 2 is not supported; this side speaks versions 3 to 4";
        assert_eq!(fallback_version(&refusal(newer), 2), None);
        let busy = ClientError::Daemon {
            code: ErrorCode::Busy,
            message: v1_words.to_string(),
        };
        assert_eq!(fallback_version(&busy, 2), None);
    }

    /// What a [`Scripted`] daemon does with one connection.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Conn {
        /// Answers this many requests (`Pong` to a ping, a key to the
        /// rest), then closes the connection as the idle timeout does.
        Answer(usize),
        /// Reads one request and closes without answering: the daemon died
        /// while serving it.
        Swallow,
        /// Reads one request and holds the connection this long unanswered.
        Stall(Duration),
    }

    /// A daemon that serves connections one after another, each as the
    /// next [`Conn`] of its script says, and records every request it
    /// read. Past the script it answers everything.
    pub(crate) struct Scripted {
        pub(crate) path: PathBuf,
        seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
        /// How many connections the daemon has closed so far.
        closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Scripted {
        pub(crate) fn start(script: &[Conn]) -> Scripted {
            let fake = Fake::start(PROTOCOL_VERSION, |_| Response::Pong);
            // Only its fresh directory: a new listener replaces its socket.
            let path = fake.path.with_file_name("scripted");
            std::mem::forget(fake);
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = std::sync::Arc::clone(&seen);
            let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let closing = std::sync::Arc::clone(&closed);
            let script: Vec<Conn> = script.to_vec();
            let mut script = script.into_iter();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let mut stream = stream.unwrap();
                    let conn = script.next().unwrap_or(Conn::Answer(usize::MAX));
                    let mut answered = 0;
                    while let Ok(Some(body)) = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
                        let request = codec::decode_request(&body).unwrap();
                        log.lock().unwrap().push(request.op.clone());
                        match conn {
                            Conn::Swallow => break,
                            Conn::Stall(time) => {
                                std::thread::sleep(time);
                                break;
                            }
                            Conn::Answer(_) => {}
                        }
                        let op = match request.op {
                            Request::Ping => Response::Pong,
                            _ => Response::Key(key("k")),
                        };
                        let frame = codec::encode_response(
                            Envelope {
                                proto: request.proto,
                                id: request.id,
                                op,
                            },
                            DEFAULT_MAX_FRAME,
                        )
                        .unwrap();
                        stream.write_all(&frame).unwrap();
                        answered += 1;
                        if matches!(conn, Conn::Answer(n) if answered >= n) {
                            break;
                        }
                    }
                    drop(stream);
                    closing.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
            Scripted { path, seen, closed }
        }

        pub(crate) fn seen(&self) -> Vec<Request> {
            self.seen.lock().unwrap().clone()
        }

        /// Waits until the daemon has closed `connections` connections (as
        /// its script ends them), so that a test's next call meets a
        /// closed connection whatever the machine's load; gives up after
        /// 10 s.
        pub(crate) fn wait_closed(&self, connections: usize) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.closed.load(std::sync::atomic::Ordering::SeqCst) < connections {
                assert!(
                    Instant::now() < deadline,
                    "the scripted daemon closed no connection"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn create(name: &str) -> Request {
        Request::CreateKey {
            name: name.to_string(),
            key_type: KeyType::Aes256Gcm,
            settings: KeySettings::default(),
        }
    }

    #[test]
    fn a_call_after_the_daemon_closed_an_idle_connection_reconnects() {
        let daemon = Scripted::start(&[Conn::Answer(1), Conn::Answer(1)]);
        let mut client = Client::connect(&daemon.path).unwrap();
        client.ping().unwrap();
        daemon.wait_closed(1);
        client
            .ping()
            .expect("a new connection carries the second ping");
        daemon.wait_closed(2);
        client.create_key("k").expect("and the next call after it");
        assert_eq!(
            daemon.seen(),
            vec![Request::Ping, Request::Ping, create("k")],
            "each request went out once"
        );
    }

    #[test]
    fn a_request_lost_after_it_was_written_is_reported_and_not_sent_again() {
        let daemon = Scripted::start(&[Conn::Swallow]);
        let mut client = Client::connect(&daemon.path).unwrap();
        let err = client.create_key("k").unwrap_err();
        assert!(
            matches!(
                &err,
                ClientError::MayHaveExecuted {
                    operation: Operation::Create,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("may or may not"), "{err}");
        assert_eq!(daemon.seen(), vec![create("k")], "not replayed");
        client.ping().expect("the next call opens a new connection");
    }

    #[test]
    fn a_late_answer_times_out_and_is_not_sent_again() {
        let daemon = Scripted::start(&[Conn::Stall(Duration::from_secs(2))]);
        let mut client = Client::connect(&daemon.path).unwrap();
        assert_eq!(client.timeout(), Some(DEFAULT_TIMEOUT));
        client
            .set_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let started = Instant::now();
        let err = client.create_key("k").unwrap_err();
        assert!(
            matches!(
                &err,
                ClientError::TimedOut {
                    operation: Operation::Create,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(daemon.seen(), vec![create("k")], "not replayed");
        // The fake serves one connection at a time: the stall ends first.
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        client.ping().expect("the next call opens a new connection");
    }

    #[test]
    fn reconnection_gives_up_after_its_retries() {
        let daemon = Scripted::start(&[Conn::Answer(1)]);
        let mut client = Client::connect(&daemon.path).unwrap();
        client.ping().unwrap();
        std::fs::remove_file(&daemon.path).unwrap();
        daemon.wait_closed(1);
        let started = Instant::now();
        let err = client.ping().unwrap_err();
        assert!(
            matches!(&err, ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        let paused: Duration = RECONNECT_BACKOFF.iter().sum();
        assert!(started.elapsed() >= paused, "{:?}", started.elapsed());
        assert_eq!(daemon.seen(), vec![Request::Ping]);
    }

    #[test]
    fn a_client_without_a_path_reports_a_closed_connection() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let mut client = Client::from_stream(ours);
        let err = client.ping().unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
    }

    #[test]
    fn the_default_socket_is_hostkms_socket_else_the_packaged_one() {
        assert_eq!(socket_from(None), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(socket_from(Some("".into())), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_from(Some("/tmp/k.sock".into())),
            PathBuf::from("/tmp/k.sock")
        );
        assert!(
            Client::set_timeout(
                &Client::from_stream(UnixStream::pair().unwrap().0),
                Some(Duration::ZERO)
            )
            .is_err()
        );
    }
}
