//! The operations, free of any transport: a request and its peer in, a
//! response out. The server frames them; this module decides them.
//!
//! Order of checks for every key operation: a grant covering every key
//! name the request carries (`access`: a peer without one gets
//! `PermissionDenied` whether or not the key exists), then the grant of
//! the operation on the key, then the key's state, then its type
//! (`WrongKeyType`), then sizes, then the cryptography.
//!
//! The dispatcher here answers the original key operations itself and
//! hands the rest to one module each: `signing` (HMAC, signatures,
//! `GenerateRandom`), `transfer` (transport key, export, import),
//! `lifecycle` (creation settings, deletion, rotation periods, the
//! pending-deletion refusal and alert), `metadata` (descriptions and
//! tags), `rewrap` (a `Rewrap` with a destination), `batch` (`WrapBatch`,
//! `UnwrapBatch`), `credential_encrypt` (`WrapCredential`) and `health`
//! (the TPM probe of `Status`).
//!
//! Changes to the key store run on the blocking pool: they wait for SQLite
//! to sync and, for new versions when no TPM randomness is in reserve, for
//! the TPM (at most `tpm_timeout_secs`).

use std::sync::Arc;
use std::time::Instant;

use agent_proto::{
    Ciphertext, DataKey, EncryptionContext, ErrorCode, KeyPage, KeyState, KeyType,
    OLDEST_PROTOCOL_VERSION, Operation, PROTOCOL_VERSION, Request, Response, SecretBytes,
    StatusInfo, Unwrapped, Wrapped,
};
use arc_swap::ArcSwap;
use rand::TryRng;
use zeroize::Zeroizing;

use crate::audit::{self, Subject};
use crate::envelope::{self, InvalidCiphertext};
use crate::keystore::{EntropySource, Key, KeyStore, RootRotation, StoreError, Version};
use crate::monitor::flood::Limited;
use crate::monitor::{AlertKind, AlertThresholds, Monitor};
use crate::peer::Peer;
use crate::policy::{PeerClass, Policy};
use crate::rootkey::{RootKeyError, RootSealer};
use crate::transfer::{Peers, TransportKey};

mod access;
mod batch;
mod credential_delivery;
mod credential_encrypt;
#[cfg(test)]
mod encrypt_limit_tests;
mod health;
mod lifecycle;
mod metadata;
mod rewrap;
mod signing;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod transfer;
mod unlock;

pub use credential_delivery::CredentialRefusal;
#[cfg(any(test, feature = "test-util"))]
pub use health::TestProbe;
use health::TpmHealth;
pub use health::{TpmProbe, WorkerProbe};
pub use lifecycle::KeyDefaults;
pub use signing::{MAX_SIGNATURE_LEN, MAX_TAG_LEN, MAX_VERSIONS_TRIED};
pub use unlock::{ResealPlan, Resealed, SealingState, UnlockFailure, Unlocked, Unlocker};

/// Data-key lengths `GenerateDataKey` accepts.
pub const DATA_KEY_LENGTHS: [u16; 4] = [16, 24, 32, 64];
/// How often a wrap retries when its key version changes under it.
const WRAP_ATTEMPTS: usize = 4;

/// Limits the operations enforce.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Largest plaintext `Wrap` accepts, and the largest data `Mac` and
    /// `VerifyMac` and message `Sign` and `Verify` take.
    pub max_plaintext: usize,
    /// Encryptions after which a key version is replaced by a new one.
    pub rotate_after: u64,
    /// The server's frame limit (`max_frame`): a batch whose answer could
    /// exceed it is refused as a whole before any work.
    pub max_frame: u32,
}

/// A refused request: the code and message the client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable error code.
    pub code: ErrorCode,
    /// What failed, on what, and what to do.
    pub message: String,
    /// For `KeyPendingDeletion`: when the key is deleted (wall clock, unix
    /// seconds), as the refusal found it; the alert names the same date.
    pub deletion_due: Option<u64>,
}

impl Refusal {
    /// A refusal; control characters in `message` (from a name or value a
    /// peer sent, wherever it came from) are escaped, so no client prints
    /// them raw.
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        let message: String = message.into();
        let message = if message.chars().any(char::is_control) {
            message
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        } else {
            message
        };
        Refusal {
            code,
            message,
            deletion_due: None,
        }
    }

    /// `op` asked of a key whose type does not perform it.
    fn wrong_key_type(key: &Key, op: Operation) -> Refusal {
        let error = crate::version_key::KeyUseError::WrongKeyType {
            key_type: key.key_type(),
            operation: op,
        };
        Refusal::new(
            ErrorCode::WrongKeyType,
            format!("key \"{}\": {error}", key.name()),
        )
    }

    /// `peer` may not `op` with the key named `key`: the same words
    /// whether or not a key of that name exists.
    fn denied(peer: &Peer, op: Operation, key: &str) -> Refusal {
        let shown: String = key.chars().take(128).collect();
        Refusal::new(
            ErrorCode::PermissionDenied,
            format!("uid {} may not {op} with key {shown:?}", peer.uid),
        )
    }

    fn invalid_ciphertext() -> Refusal {
        Refusal::new(ErrorCode::InvalidCiphertext, InvalidCiphertext.to_string())
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Refusal {
        let code = match &error {
            StoreError::KeyNotFound(_) => ErrorCode::KeyNotFound,
            StoreError::KeyExists(_) | StoreError::ImportRefused(_) => ErrorCode::KeyExists,
            StoreError::KeyRevoked(_) => ErrorCode::KeyRevoked,
            StoreError::KeyPendingDeletion { .. } => ErrorCode::KeyPendingDeletion,
            StoreError::DeletionNotDue { .. } => ErrorCode::InvalidArgument,
            StoreError::VersionNotFound { .. } => ErrorCode::VersionNotFound,
            StoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            StoreError::Changed(_) => ErrorCode::Busy,
            StoreError::Tpm(_) => ErrorCode::TpmUnavailable,
            StoreError::RotationRunning => ErrorCode::Busy,
            StoreError::RootKey(e) => match e.as_ref() {
                RootKeyError::TpmUnavailable(_) => ErrorCode::TpmUnavailable,
                RootKeyError::RotationPending { .. } => ErrorCode::Busy,
                RootKeyError::WrongPin { .. } | RootKeyError::PinLockout { .. } => {
                    ErrorCode::WrongPin
                }
                RootKeyError::PinNeeded | RootKeyError::NoPinSet => ErrorCode::InvalidArgument,
                _ => ErrorCode::Internal,
            },
            StoreError::RootKeyNotInPlace { .. } => ErrorCode::Internal,
            StoreError::Tampered { .. }
            | StoreError::WrongRootKey { .. }
            | StoreError::Rollback(_)
            | StoreError::Database { .. }
            | StoreError::Random(_) => {
                tracing::error!("key store failure: {error}");
                return Refusal::new(
                    ErrorCode::Internal,
                    "the key store failed; nothing was changed. The daemon's log says why",
                );
            }
        };
        let deletion_due = match &error {
            StoreError::KeyPendingDeletion { due_wall, .. } => Some(*due_wall),
            _ => None,
        };
        Refusal {
            deletion_due,
            ..Refusal::new(code, error.to_string())
        }
    }
}

/// The audit event of a request that is decided but not yet answered: the
/// server encodes the answer first and then completes the event
/// ([`Service::complete`]) with the outcome the client actually got, so
/// that an answer that could not be sent is not journaled as "ok".
#[derive(Debug)]
#[must_use = "a request's audit event is written only when it is completed"]
pub struct PendingAudit {
    op: Operation,
    subject: Subject,
    decided: Option<ErrorCode>,
}

impl PendingAudit {
    /// Whether the decided request changed the key store (a key created,
    /// rotated, revoked, disabled, enabled or given a minimum version, or
    /// the store re-sealed under a new root key): the
    /// change is durable before the answer is encoded, so it stands even
    /// when the answer is lost.
    pub fn changed_keys(&self) -> bool {
        self.decided.is_none()
            && matches!(
                self.op,
                Operation::Create
                    | Operation::Rotate
                    | Operation::Revoke
                    | Operation::Disable
                    | Operation::Enable
                    | Operation::MinDecryptionVersion
                    | Operation::UpdateMetadata
                    | Operation::Import
                    | Operation::RotateRoot
                    | Operation::ScheduleDeletion
                    | Operation::CancelDeletion
                    | Operation::SetRotationPeriod
            )
    }
}

/// The outcome a response carries: its error code, `None` for success.
pub fn outcome_of(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(reply) => Some(reply.code),
        _ => None,
    }
}

/// The daemon's state that requests act on.
#[derive(Debug)]
pub struct Service {
    /// The key store, once the root key is unsealed: at start, or at
    /// `hostkms unlock` for a daemon that started locked.
    store: std::sync::OnceLock<Arc<KeyStore>>,
    /// How the root key is sealed, and why the daemon is locked if it is.
    sealing: ArcSwap<unlock::SealingState>,
    /// Opens the root key on an operator's request (unlock, reseal, PIN
    /// change); `None` where there is no TPM (tests of what lies above).
    unlocker: Option<Arc<dyn unlock::Unlocker>>,
    /// One unlock, reseal, PIN change or root-key rotation at a time: each
    /// seals a new generation of the root key's copies.
    unlock_gate: tokio::sync::Mutex<()>,
    /// Wakes whoever waits for the key store ([`Service::opened`]).
    opened: tokio::sync::Notify,
    /// Seals new root keys for `RotateRoot`; `None` where there is no TPM.
    root_sealer: Option<Arc<dyn RootSealer>>,
    /// The TPM randomness `GenerateRandom` mixes in: a reserve of its own,
    /// never the one new key versions draw from. `None`: no TPM.
    random: Option<Arc<dyn EntropySource>>,
    /// One `GenerateRandom` draws at a time (the others wait here, holding
    /// no thread), so random requests queue at most one draw on the TPM
    /// worker and the key-creation reserve's refills are never stuck behind
    /// a crowd of them.
    random_gate: tokio::sync::Semaphore,
    policy: ArcSwap<Policy>,
    limits: ArcSwap<ServiceLimits>,
    /// What new keys get unless their creator says (`[keys]`).
    key_defaults: ArcSwap<KeyDefaults>,
    started: Instant,
    tpm_health: TpmHealth,
    monitor: Monitor,
    /// The pinned transfer peers (`[[transfer]]`), replaced on reload.
    transfer: ArcSwap<Peers>,
    /// This host's transport key, set once at start.
    transport: std::sync::OnceLock<Arc<TransportKey>>,
}

impl Service {
    /// A service over a key store opened under the root key; `Status` asks
    /// `tpm` whether the TPM answers (in the daemon a [`WorkerProbe`]).
    /// Without [`Service::with_root_sealer`] it cannot rotate the root key.
    pub fn new(
        store: KeyStore,
        policy: Policy,
        limits: ServiceLimits,
        alerts: AlertThresholds,
        tpm: Arc<dyn TpmProbe>,
    ) -> Service {
        let service = Service::locked(policy, limits, alerts, tpm, unlock::SealingState::default());
        service.open_with(store);
        service
    }

    /// A service whose root key is not unsealed yet: it answers `Ping`,
    /// `Status` and `Unlock`, and refuses every key operation with
    /// `Locked` until an unlock ([`Service::with_unlocker`]) opens the store.
    pub fn locked(
        policy: Policy,
        limits: ServiceLimits,
        alerts: AlertThresholds,
        tpm: Arc<dyn TpmProbe>,
        sealing: unlock::SealingState,
    ) -> Service {
        Service {
            store: std::sync::OnceLock::new(),
            sealing: ArcSwap::from_pointee(sealing),
            unlocker: None,
            unlock_gate: tokio::sync::Mutex::new(()),
            opened: tokio::sync::Notify::new(),
            root_sealer: None,
            random: None,
            random_gate: tokio::sync::Semaphore::new(1),
            policy: ArcSwap::from_pointee(policy),
            limits: ArcSwap::from_pointee(limits),
            key_defaults: ArcSwap::from_pointee(KeyDefaults::default()),
            started: Instant::now(),
            tpm_health: TpmHealth::new(tpm),
            monitor: Monitor::new(alerts),
            transfer: ArcSwap::from_pointee(Peers::default()),
            transport: std::sync::OnceLock::new(),
        }
    }

    /// Puts the config's pinned transfer peers in force (at start and on
    /// every reload).
    pub fn set_transfer_peers(&self, peers: Peers) {
        self.transfer.store(Arc::new(peers));
    }

    /// Gives the service this host's transport key; only the first call
    /// counts (returns false for a later one).
    pub fn set_transport_key(&self, key: TransportKey) -> bool {
        self.transport.set(Arc::new(key)).is_ok()
    }

    /// The service with `sealer` to seal new root keys for `RotateRoot`
    /// (in the daemon a [`crate::rootkey::TpmRootSealer`]).
    pub fn with_root_sealer(mut self, sealer: Arc<dyn RootSealer>) -> Service {
        self.root_sealer = Some(sealer);
        self
    }

    /// The service with `source` as the TPM randomness `GenerateRandom`
    /// mixes into the OS RNG's (in the daemon a second
    /// [`crate::keystore::TpmEntropy`], apart from the key store's). Without
    /// it `GenerateRandom` is refused.
    pub fn with_random_source(mut self, source: Arc<dyn EntropySource>) -> Service {
        self.random = Some(source);
        self
    }

    /// The key store, for start-up and shutdown bookkeeping; `None` while
    /// the daemon is locked.
    pub fn store(&self) -> Option<&Arc<KeyStore>> {
        self.store.get()
    }

    /// The key store, waiting for an unlock if the daemon is locked.
    pub async fn opened(&self) -> Arc<KeyStore> {
        loop {
            let notified = self.opened.notified();
            if let Some(store) = self.store.get() {
                return Arc::clone(store);
            }
            notified.await;
        }
    }

    /// Puts the key store in force (at start, or by an unlock) and wakes
    /// whoever waits for it; a second call changes nothing.
    fn open_with(&self, store: KeyStore) {
        if self.store.set(Arc::new(store)).is_ok() {
            self.opened.notify_waiters();
        }
    }

    /// The key store for a request, or `Locked` while the daemon is.
    fn keystore(&self) -> Result<&Arc<KeyStore>, Refusal> {
        self.store.get().ok_or_else(|| self.locked_refusal())
    }

    /// The request and alert counters.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Whether `peer` is an admin under the grants in force.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        self.policy.load().is_admin(peer)
    }

    /// What `peer` is to the server's admission under the grants in force:
    /// an admin, covered by some grant, or covered by none.
    pub fn peer_class(&self, peer: &Peer) -> PeerClass {
        self.policy.load().class_of(peer)
    }

    /// Puts a reloaded config's grants, limits and alert thresholds in
    /// force. Requests already running finish under the old ones; every
    /// later request, on old connections too, is decided by the new ones.
    pub fn reconfigure(&self, policy: Policy, limits: ServiceLimits, alerts: AlertThresholds) {
        self.policy.store(Arc::new(policy));
        self.limits.store(Arc::new(limits));
        self.monitor.set_thresholds(alerts);
    }

    /// Answers one request from `peer`, counts it and writes its audit
    /// event with the response's outcome: [`Service::decide`] and
    /// [`Service::complete`] in one, for a caller that sends the response
    /// as it is.
    pub async fn handle(&self, peer: &Peer, request: Request) -> Response {
        let (response, audit) = self.decide(peer, request).await;
        self.complete(peer, audit, outcome_of(&response));
        response
    }

    /// Decides one request from `peer`: its response, and its audit event
    /// still to be written once the response is encoded and the real
    /// outcome is known.
    pub async fn decide(&self, peer: &Peer, request: Request) -> (Response, PendingAudit) {
        let op = request.operation();
        let mut subject = Subject::default();
        let response = self
            .dispatch(peer, request, &mut subject)
            .await
            .unwrap_or_else(|refusal| {
                if let Some(due) = refusal.deletion_due {
                    subject.set_deletion_due(due);
                }
                Response::error(refusal.code, refusal.message)
            });
        let decided = outcome_of(&response);
        (
            response,
            PendingAudit {
                op,
                subject,
                decided,
            },
        )
    }

    /// Counts a decided request and writes its audit event, with `code` the
    /// outcome the client got (`None`: success): the response's own, or the
    /// error that replaced it when it could not be encoded.
    pub fn complete(&self, peer: &Peer, audit: PendingAudit, code: Option<ErrorCode>) {
        self.journal(peer, audit, code, None);
    }

    /// Completes the audit event of a request whose answer could not be
    /// encoded and was replaced by the error `sent`. A change to the key
    /// store was made all the same: it is journaled and counted as done
    /// (never as a failure, which a peer could push out of the journal
    /// with a few cheap errors), with the lost answer named beside it.
    pub fn complete_unsent(&self, peer: &Peer, audit: PendingAudit, sent: ErrorCode) {
        if audit.changed_keys() {
            self.journal(peer, audit, None, Some(sent));
        } else {
            self.journal(peer, audit, Some(sent), None);
        }
    }

    fn journal(
        &self,
        peer: &Peer,
        audit: PendingAudit,
        code: Option<ErrorCode>,
        unsent: Option<ErrorCode>,
    ) {
        let PendingAudit { op, subject, .. } = audit;
        if code == Some(ErrorCode::KeyPendingDeletion) && lifecycle::USES.contains(&op) {
            if let Some((key, due)) = subject.pending_deletion() {
                self.pending_deletion_used(peer, key, due, op);
            }
        }
        // A refusal, or a request that needs no grant, may only be counted
        // in a later summary: see monitor::flood. A batch with a success
        // never is.
        let logged = Limited::of(op, subject.flood_code(code)).is_none_or(|kind| {
            let admission = self.monitor.admit(peer.uid, kind);
            audit::summarized(&admission.closed);
            admission.log
        });
        if logged {
            audit::request(peer, op, &subject, code, unsent);
        }
        if let Some(alert) = self.monitor.record(peer.uid, op, code) {
            audit::peer_alert(&alert);
        }
        self.raise_batch_item_alerts(peer, op, &subject);
    }

    /// Audits a frame from `peer` the server refused before it became a
    /// request, under the same per-peer limit as refused requests.
    pub fn refused_frame(&self, peer: &Peer, code: ErrorCode, problem: &dyn std::fmt::Display) {
        let admission = self.monitor.admit(peer.uid, Limited::BadFrame);
        audit::summarized(&admission.closed);
        if admission.log {
            audit::bad_frame(peer, code, problem);
        }
    }

    /// Logs a connection of `peer` the server refused or cut off (`why`
    /// says which limit), under the same per-peer limit as refused
    /// requests: a peer can open connections as fast as it likes.
    pub fn refused_connection(&self, peer: &Peer, why: &dyn std::fmt::Display) {
        let admission = self.monitor.admit(peer.uid, Limited::Connection);
        audit::summarized(&admission.closed);
        if admission.log {
            audit::connection_refused(peer, why);
        }
    }

    async fn dispatch(
        &self,
        peer: &Peer,
        request: Request,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let op = request.operation();
        if let Some(key) = request.key_name() {
            subject.set_key(key);
        }
        if self.store.get().is_none() && !unlock::served_while_locked(&request) {
            return Err(self.locked_refusal());
        }
        self.gate(peer, &request)?;
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Status => Ok(Response::Status(self.status(peer).await)),
            Request::CreateKey {
                name,
                key_type,
                settings,
            } => {
                self.create_key(peer, name, key_type, settings, subject)
                    .await
            }
            Request::Wrap {
                key,
                plaintext,
                context,
            } => self
                .wrap(peer, &key, plaintext.expose(), &context, subject)
                .await
                .map(Response::Wrapped),
            Request::Unwrap {
                ciphertext,
                context,
                key,
            } => self
                .decrypt(peer, op, &ciphertext, &context, key.as_deref(), subject)
                .map(|mut decrypted| {
                    Response::Unwrapped(Unwrapped {
                        key: decrypted.key.name().to_string(),
                        version: decrypted.version,
                        // Moves the buffer, leaving no unwiped copy behind.
                        plaintext: SecretBytes::new(std::mem::take(&mut *decrypted.plaintext)),
                    })
                }),
            Request::GenerateDataKey {
                key,
                bytes,
                include_plaintext,
                context,
            } => {
                self.data_key(peer, &key, bytes, include_plaintext, &context, subject)
                    .await
            }
            Request::Rewrap {
                ciphertext,
                context,
                key,
                destination,
            } => {
                if let Some(destination) = destination {
                    return self
                        .rewrap_to(
                            peer,
                            &ciphertext,
                            &context,
                            key.as_deref(),
                            destination,
                            subject,
                        )
                        .await
                        .map(Response::Wrapped);
                }
                let decrypted =
                    self.decrypt(peer, op, &ciphertext, &context, key.as_deref(), subject)?;
                self.encrypt(
                    op,
                    decrypted.key.name(),
                    &decrypted.plaintext,
                    &context,
                    subject,
                )
                .await
                .map(Response::Wrapped)
            }
            Request::Rotate { key } => {
                self.permit(peer, op, &key)?;
                self.change(move |store| store.rotate(&key), subject).await
            }
            Request::Revoke { key, version } => {
                self.permit(peer, op, &key)?;
                let response = self
                    .change(move |store| store.revoke(&key, version), subject)
                    .await;
                if let Some(version) = version {
                    subject.set_version(version);
                }
                response
            }
            Request::Disable { key } => {
                self.permit(peer, op, &key)?;
                self.change(move |store| store.set_enabled(&key, false), subject)
                    .await
            }
            Request::Enable { key } => {
                self.permit(peer, op, &key)?;
                self.change(move |store| store.set_enabled(&key, true), subject)
                    .await
            }
            Request::SetMinDecryptionVersion { key, version } => {
                self.permit(peer, op, &key)?;
                let response = self
                    .change(
                        move |store| store.set_min_decryption_version(&key, version),
                        subject,
                    )
                    .await;
                subject.set_version(version);
                response
            }
            Request::ListKeys { after, limit } => self.list(peer, after.as_deref(), limit),
            Request::DescribeKey { key } => {
                self.permit(peer, op, &key)?;
                let keys = self.keystore()?.keys();
                keys.by_name(&key)
                    .map(|key| Response::Key(key.info()))
                    .ok_or_else(|| StoreError::KeyNotFound(key).into())
            }
            Request::TransportKey => self.transport_key_info(),
            Request::ExportKey { key, destination } => self.export(peer, &key, &destination).await,
            Request::Mac { key, data } => self.mac(peer, &key, data, subject).await,
            Request::VerifyMac {
                key,
                data,
                tag,
                version,
            } => {
                self.verify_mac(peer, &key, data, tag, version, subject)
                    .await
            }
            Request::Sign { key, input } => self.sign(peer, &key, input, subject).await,
            Request::Verify {
                key,
                input,
                signature,
                version,
            } => {
                self.verify(peer, &key, input, signature, version, subject)
                    .await
            }
            Request::GetPublicKey { key, version } => self.public_key(peer, &key, version, subject),
            Request::GenerateRandom { bytes } => self.random(peer, bytes).await,
            Request::ImportKey { file } => self.import(peer, file, subject).await,
            Request::ScheduleDeletion { key, days } => {
                self.schedule_deletion(peer, key, days, subject).await
            }
            Request::CancelDeletion { key } => self.cancel_deletion(peer, key, subject).await,
            Request::SetRotationPeriod { key, period } => {
                self.set_rotation_period(peer, key, period, subject).await
            }
            Request::UpdateKeyMetadata {
                key,
                description,
                set_tags,
                remove_tags,
            } => {
                let update = metadata::MetadataUpdate {
                    description,
                    set_tags,
                    remove_tags,
                };
                self.update_metadata(peer, key, update, subject).await
            }
            Request::WrapBatch { key, items } => self.wrap_batch(peer, &key, items, subject).await,
            Request::UnwrapBatch { key, items } => {
                self.unwrap_batch(peer, key.as_deref(), items, subject)
                    .await
            }
            Request::WrapCredential {
                key,
                unit,
                credential,
                plaintext,
            } => {
                self.wrap_credential(peer, &key, &unit, &credential, plaintext.expose(), subject)
                    .await
            }
            Request::Unlock { pin, reseal } => self.unlock(peer, pin, reseal).await,
            Request::Reseal {
                pin,
                pcrs,
                new_pin,
                dry_run,
            } => {
                self.reseal(peer, unlock::Purpose::Reseal, pin, pcrs, new_pin, dry_run)
                    .await
            }
            Request::ChangePin { pin, new_pin } => {
                self.reseal(
                    peer,
                    unlock::Purpose::ChangePin,
                    Some(pin),
                    None,
                    Some(new_pin),
                    false,
                )
                .await
            }
            Request::RotateRoot { pin } => {
                let pin = unlock::checked_pin(pin.as_ref())?;
                let rotation = self.rotate_root(peer, pin).await?;
                Ok(Response::RootRotated(agent_proto::RootRotation {
                    old_check: rotation.old_check,
                    new_check: rotation.new_check,
                    keys: rotation.keys,
                    versions: rotation.versions,
                }))
            }
        }
    }

    /// One page of the keys `peer` may see, in name order: at most `limit`
    /// (all when `None`) whose names follow `after`.
    fn list(
        &self,
        peer: &Peer,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Response, Refusal> {
        let limit = match limit {
            Some(0) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidArgument,
                    "a ListKeys limit must be at least 1 (or none, for every key)",
                ));
            }
            Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let policy = self.policy.load();
        if policy.class_of(peer) == PeerClass::Ungranted {
            // No grant covers the peer, so it sees no key: answered without
            // walking the store, which a peer with no grant could otherwise
            // make the daemon do on every request.
            return Ok(Response::Keys(KeyPage {
                keys: Vec::new(),
                next: None,
            }));
        }
        let keys = self.keystore()?.keys();
        let mut visible = keys
            .after(after)
            .filter(|key| policy.may_see(peer, key.name()));
        let page: Vec<_> = visible.by_ref().take(limit).map(|key| key.info()).collect();
        let next = match visible.next() {
            Some(_) => page.last().map(|key| key.name.clone()),
            None => None,
        };
        Ok(Response::Keys(KeyPage { keys: page, next }))
    }

    /// Refuses `op` on `key` unless a grant (or admin rights) allows it.
    fn permit(&self, peer: &Peer, op: Operation, key: &str) -> Result<(), Refusal> {
        if self.policy.load().allows(peer, op, key) {
            return Ok(());
        }
        Err(Refusal::denied(peer, op, key))
    }

    /// Rotates the root key for `peer`, an admin (no grant can allow it):
    /// the key store's [`KeyStore::rotate_root`] on the blocking pool, with
    /// the rotation audited. Status shows the new check value from then on.
    async fn rotate_root(
        &self,
        peer: &Peer,
        pin: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<RootRotation, Refusal> {
        if !self.is_admin(peer) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "uid {} may not rotate the root key: only admins (root and the admin_groups) may, and no grant can allow it",
                    peer.uid
                ),
            ));
        }
        let Some(sealer) = self.root_sealer.clone() else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "this service has no TPM to seal a new root key to",
            ));
        };
        let store = Arc::clone(self.keystore()?);
        // A reseal or PIN change seals the same next generation of copies:
        // one of them at a time.
        let Ok(_one_at_a_time) = self.unlock_gate.try_lock() else {
            return Err(Refusal::new(
                ErrorCode::Busy,
                "cannot rotate the root key now: a rotation, reseal or PIN change is running; try again when it has finished",
            ));
        };
        let used_pin = pin.is_some();
        let sealer = crate::rootkey::PinnedSealer::new(sealer, pin);
        let rotated = tokio::task::spawn_blocking(move || store.rotate_root(&sealer))
            .await
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the root-key rotation did not finish: {e}"),
                )
            })?;
        if used_pin {
            self.pin_attempt_audited(peer, "rotate-root", rotated.as_ref().err());
        }
        match rotated {
            Ok(rotation) => {
                audit::root_key_rotated(
                    peer,
                    &rotation.old_check,
                    &rotation.new_check,
                    rotation.keys,
                    rotation.versions,
                    true,
                );
                Ok(rotation)
            }
            Err(error) => {
                if let StoreError::RootKeyNotInPlace {
                    old_check,
                    new_check,
                    ..
                } = &error
                {
                    let keys = self.keystore()?.keys();
                    audit::root_key_rotated(
                        peer,
                        old_check,
                        new_check,
                        keys.len() as u32,
                        keys.version_count() as u32,
                        false,
                    );
                }
                Err(error.into())
            }
        }
    }

    /// Runs a key-store change on the blocking pool and answers with the
    /// key's new metadata; `subject` learns the key's latest version.
    async fn change(
        &self,
        change: impl FnOnce(&KeyStore) -> Result<Arc<Key>, StoreError> + Send + 'static,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let store = Arc::clone(self.keystore()?);
        let key = tokio::task::spawn_blocking(move || change(&store))
            .await
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the change did not finish: {e}"),
                )
            })??;
        subject.set_version(key.latest_version());
        Ok(Response::Key(key.info()))
    }

    /// Checks that `key` may be used for cryptography.
    fn usable(key: &Key) -> Result<(), Refusal> {
        match key.state() {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(Refusal::new(
                ErrorCode::KeyDisabled,
                format!(
                    "key \"{}\" is disabled; an admin can enable it again",
                    key.name()
                ),
            )),
            KeyState::Revoked => Err(StoreError::KeyRevoked(key.name().to_string()).into()),
            KeyState::PendingDeletion => Err(Self::pending_deletion(key)),
        }
    }

    async fn wrap(
        &self,
        peer: &Peer,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
        subject: &mut Subject,
    ) -> Result<Wrapped, Refusal> {
        self.permit(peer, Operation::Wrap, key)?;
        self.check_plaintext_size(
            "a plaintext",
            plaintext,
            "encrypt large data with `hostkms encrypt-file` (the age format, any size), or with a data key from `datakey`",
        )?;
        self.encrypt(Operation::Wrap, key, plaintext, context, subject)
            .await
    }

    /// Refuses `plaintext` (`what`, as the message names it) over the
    /// `max_plaintext` limit, saying what to do `instead`.
    fn check_plaintext_size(
        &self,
        what: &str,
        plaintext: &[u8],
        instead: &str,
    ) -> Result<(), Refusal> {
        let max_plaintext = self.limits.load().max_plaintext;
        if plaintext.len() > max_plaintext {
            return Err(Refusal::new(
                ErrorCode::PlaintextTooLarge,
                format!(
                    "{what} of {} bytes exceeds the limit of {max_plaintext} bytes (max_plaintext); {instead}",
                    plaintext.len()
                ),
            ));
        }
        Ok(())
    }

    async fn data_key(
        &self,
        peer: &Peer,
        key: &str,
        bytes: u16,
        include_plaintext: bool,
        context: &EncryptionContext,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::DataKey, key)?;
        if !DATA_KEY_LENGTHS.contains(&bytes) {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("a data key of {bytes} bytes is not offered; ask for 16, 24, 32 or 64"),
            ));
        }
        let mut data_key = Zeroizing::new(vec![0u8; usize::from(bytes)]);
        rand::rngs::SysRng
            .try_fill_bytes(&mut data_key)
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the OS random number generator failed: {e}"),
                )
            })?;
        let wrapped = self
            .encrypt(Operation::DataKey, key, &data_key, context, subject)
            .await?;
        Ok(Response::DataKey(DataKey {
            key: wrapped.key,
            version: wrapped.version,
            plaintext: include_plaintext.then(|| SecretBytes::new(std::mem::take(&mut *data_key))),
            ciphertext: wrapped.ciphertext,
        }))
    }

    /// Encrypts under the latest version of `key`: counts the encryption,
    /// persists the count's reservation when it runs out, raises the alert
    /// when the version nears its limit, and rotates the key when it
    /// reaches it.
    async fn encrypt(
        &self,
        op: Operation,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
        subject: &mut Subject,
    ) -> Result<Wrapped, Refusal> {
        let rotate_after = self.limits.load().rotate_after;
        for _ in 0..WRAP_ATTEMPTS {
            let keys = self.keystore()?.keys();
            let Some(current) = keys.by_name(key) else {
                return Err(StoreError::KeyNotFound(key.to_string()).into());
            };
            Self::usable(current)?;
            if current.key_type() != KeyType::Aes256Gcm {
                return Err(Refusal::wrong_key_type(current, op));
            }
            let Some(version) = current.latest().cloned() else {
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    format!("key \"{key}\" has no version"),
                ));
            };
            let Some(count) = version.count_encryption(rotate_after) else {
                self.rotate_at_limit(current, &version).await?;
                continue;
            };
            if count >= self.monitor.thresholds().encryption_alert_at(rotate_after)
                && version.mark_limit_alerted()
            {
                self.monitor.count_alert(AlertKind::EncryptionLimit);
                audit::encryption_limit_alert(
                    current.name(),
                    version.number(),
                    count,
                    rotate_after,
                );
            }
            if !version.is_reserved(count) {
                let store = Arc::clone(self.keystore()?);
                let (id, reserved_version) = (current.id(), Arc::clone(&version));
                let reserved = tokio::task::spawn_blocking(move || {
                    store.reserve(id, &reserved_version, count)
                })
                .await
                .map_err(|e| {
                    Refusal::new(
                        ErrorCode::Internal,
                        format!("the count did not persist: {e}"),
                    )
                })?;
                match reserved {
                    Ok(()) => {}
                    Err(StoreError::Changed(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(cipher) = version.cipher() else {
                continue; // revoked meanwhile: the next snapshot has a new latest
            };
            let ciphertext =
                envelope::wrap(cipher, current.id(), version.number(), plaintext, context)
                    .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
            subject.set_version(version.number());
            return Ok(Wrapped {
                key: current.name().to_string(),
                version: version.number(),
                ciphertext: Ciphertext::new(ciphertext),
            });
        }
        Err(Refusal::new(
            ErrorCode::Busy,
            format!("key \"{key}\" kept changing during the request; try again"),
        ))
    }

    async fn rotate_at_limit(&self, key: &Key, version: &Version) -> Result<(), Refusal> {
        let store = Arc::clone(self.keystore()?);
        let (id, number) = (key.id(), version.number());
        let rotated = tokio::task::spawn_blocking(move || store.rotate_if_latest(id, number))
            .await
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the rotation did not finish: {e}"),
                )
            })??;
        if rotated.latest_version() > number {
            tracing::info!(
                key = key.name(),
                version = number,
                new_version = rotated.latest_version(),
                encryptions = version.encryptions(),
                "rotated key automatically: version reached its encryption limit"
            );
        }
        Ok(())
    }

    /// Decrypts a ciphertext for `op` (unwrap or rewrap), after the grant,
    /// key state and version checks.
    ///
    /// The grant is checked before anything about the key is answered: a
    /// peer that holds no grant for `op` on the key the ciphertext names, or
    /// whose ciphertext names no key of this host, gets one and the same
    /// refusal, which reveals neither the key's name nor whether it exists;
    /// nor does the `key` the peer expects change it. Admins and covered
    /// peers get the precise answers.
    fn decrypt(
        &self,
        peer: &Peer,
        op: Operation,
        ciphertext: &Ciphertext,
        context: &EncryptionContext,
        expected_key: Option<&str>,
        subject: &mut Subject,
    ) -> Result<Decrypted, Refusal> {
        let header = envelope::read_header(ciphertext.as_bytes())
            .map_err(|_| Refusal::invalid_ciphertext())?;
        let keys = self.keystore()?.keys();
        let policy = self.policy.load();
        let key = keys.by_id(header.key_id);
        if let Some(key) = key {
            // The audit records the real key; the peer may not learn it.
            subject.set_key(key.name());
            subject.set_version(header.version);
        }
        let key = match key {
            Some(key) if policy.allows(peer, op, key.name()) => key,
            None if policy.is_admin(peer) => return Err(Refusal::invalid_ciphertext()),
            _ => {
                return Err(Refusal::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "uid {} holds no grant to {op} with the key this ciphertext names, or the ciphertext names no key of this host (damaged, or made on another host); if it is this host's, an admin can grant access in the config's [[grant]] tables",
                        peer.uid
                    ),
                ));
            }
        };
        if expected_key.is_some_and(|expected| expected != key.name()) {
            return Err(Refusal::invalid_ciphertext());
        }
        Self::usable(key)?;
        if key.key_type() != KeyType::Aes256Gcm {
            return Err(Refusal::wrong_key_type(key, op));
        }
        let version = key
            .version(header.version)
            .ok_or_else(Refusal::invalid_ciphertext)?;
        if version.is_revoked() {
            return Err(Refusal::new(
                ErrorCode::VersionRevoked,
                format!(
                    "version {} of key \"{}\" is revoked",
                    header.version,
                    key.name()
                ),
            ));
        }
        if header.version < key.min_decryption_version() {
            return Err(Refusal::new(
                ErrorCode::VersionRevoked,
                format!(
                    "version {} of key \"{}\" is below its minimum decryption version {}",
                    header.version,
                    key.name(),
                    key.min_decryption_version()
                ),
            ));
        }
        let cipher = version.cipher().ok_or_else(Refusal::invalid_ciphertext)?;
        let plaintext = envelope::unwrap(cipher, ciphertext.as_bytes(), context)
            .map_err(|_| Refusal::invalid_ciphertext())?;
        Ok(Decrypted {
            key: Arc::clone(key),
            version: header.version,
            plaintext,
        })
    }

    /// The daemon's health for every peer; its counters (requests, denials,
    /// keys, versions) and the root key check value only for admins and
    /// peers granted `metrics`: to others an empty map and an empty check
    /// value, in the same wire shape.
    async fn status(&self, peer: &Peer) -> StatusInfo {
        // What protects the keys (recovery, rollback) goes with the counters:
        // to admins and peers granted `metrics`.
        let store = self.store.get();
        let metrics = self.policy.load().allows_metrics(peer);
        let (recovery, rollback) = match store {
            Some(store) if metrics => (store.recovery_status(), store.rollback_status()),
            _ => Default::default(),
        };
        let (counters, root_key_check) = match store {
            Some(store) if metrics => {
                let keys = store.keys();
                let mut counters = self.monitor.counters();
                counters.insert(agent_proto::counters::KEYS.to_string(), keys.len() as u64);
                counters.insert(
                    agent_proto::counters::VERSIONS.to_string(),
                    keys.version_count() as u64,
                );
                (counters, store.root_key_check().to_string())
            }
            None if metrics => (self.monitor.counters(), String::new()),
            _ => (Default::default(), String::new()),
        };
        StatusInfo {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            oldest_protocol: OLDEST_PROTOCOL_VERSION,
            newest_protocol: PROTOCOL_VERSION,
            uptime_secs: self.started.elapsed().as_secs(),
            tpm_reachable: self.tpm_health.reachable().await,
            root_key_loaded: store.is_some(),
            root_key_check,
            counters,
            recovery,
            rollback,
            sealing: unlock::status(&self.sealing.load()),
        }
    }
}

/// A ciphertext's plaintext and where it came from.
struct Decrypted {
    key: Arc<Key>,
    version: u32,
    plaintext: Zeroizing<Vec<u8>>,
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn refusals_escape_control_characters_only() {
        let refusal = Refusal::new(ErrorCode::KeyNotFound, "key \"a\u{1b}[2J\nb\" — gone");
        assert_eq!(refusal.message, "key \"a\\u{1b}[2J\\nb\" — gone");
        let plain = Refusal::new(ErrorCode::KeyNotFound, "key \"ab\" — gone");
        assert_eq!(plain.message, "key \"ab\" — gone");
    }
}

#[cfg(test)]
mod rotate_root_tests;
#[cfg(test)]
mod signing_tests;
#[cfg(test)]
mod tests;
