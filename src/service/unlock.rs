//! The root key's sealing on an operator's request: `Unlock` (a daemon
//! that started locked), `Reseal` (new PCR values or a new mode) and
//! `ChangePin`. All three are for admins only, one at a time, and run on
//! the blocking pool through the daemon's [`Unlocker`], which holds the
//! state dir and the TPM. The PIN is never logged: every attempt to open
//! the PIN copy is audited with its result and the TPM's tries left.

use std::sync::Arc;

use agent_proto::pin::Pin;
use agent_proto::{
    ErrorCode, LockState, PcrValue, Request, ResealInfo, Response, Sealing, SealingStatus,
    SecretBytes, UnlockInfo,
};
use zeroize::Zeroizing;

use super::{Refusal, Service};
use crate::audit::{self, UnlockResult};
use crate::keystore::KeyStore;
use crate::peer::Peer;
use crate::rootkey::{LockReason, PcrChange, PcrSource, RootKeyError, SealRecord, SealingMode};
use crate::transfer::TransportKey;

/// The code a key operation gets while the daemon is locked.
const LOCKED: ErrorCode = ErrorCode::Locked;
/// The code a refused PIN gets.
const WRONG_PIN: ErrorCode = ErrorCode::WrongPin;

/// How the root key is sealed and whether the daemon is locked: what
/// `Status` reports.
#[derive(Debug, Clone, Default)]
pub struct SealingState {
    /// The record in force; `None` before the first unlock creates a root
    /// key.
    pub record: Option<SealRecord>,
    /// Why the daemon is locked; `None` once the key store is open.
    pub lock: Option<LockReason>,
    /// The mode `[root_key]` asks for (what a first unlock creates).
    pub configured: SealingMode,
}

/// What a successful unlock hands the service.
#[derive(Debug)]
pub struct Unlocked {
    /// The key store, opened under the unsealed root key (which is wiped).
    pub store: KeyStore,
    /// The sealing record in force now.
    pub record: SealRecord,
    /// The PCRs that had changed since sealing (empty: none).
    pub changed: Vec<PcrChange>,
    /// Whether the PCR copy was sealed again to the current values.
    pub resealed: bool,
    /// This host's transport key, when it could be loaded.
    pub transport: Option<TransportKey>,
}

/// A reseal or PIN change to make (or, with `dry_run`, to show). Its
/// `Debug` shows whether PINs are there, never them.
pub struct ResealPlan<'a> {
    /// The PIN that opens the current PIN copy (a mode with a PIN).
    pub pin: Option<&'a [u8]>,
    /// The mode to seal to.
    pub target: SealingMode,
    /// The PIN of the new PIN copy, when it differs from `pin` (a PIN
    /// change, or a mode that gains a PIN).
    pub new_pin: Option<&'a [u8]>,
    /// Which PCR values the auto copy is bound to.
    pub pcrs: PcrSource,
    /// Only show what would be sealed.
    pub dry_run: bool,
}

impl std::fmt::Debug for ResealPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |pin: Option<&[u8]>| pin.map(|_| "<redacted>");
        f.debug_struct("ResealPlan")
            .field("pin", &shown(self.pin))
            .field("target", &self.target)
            .field("new_pin", &shown(self.new_pin))
            .field("pcrs", &self.pcrs)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// What a reseal did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct Resealed {
    /// The record before.
    pub before: SealRecord,
    /// The record after (dry run: with the values it would seal to).
    pub after: SealRecord,
}

/// Why an unlock or reseal failed.
#[derive(Debug, thiserror::Error)]
pub enum UnlockFailure {
    /// The root key could not be opened or sealed.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The root key opened, but what depends on it did not start (the key
    /// store, its rollback check, the recovery directory).
    #[error("the root key opened, but the daemon could not start serving keys: {0}")]
    Start(String),
}

/// The root key's sealed copies, on the daemon's side: unsealing with a
/// PIN, opening what depends on the root key, and sealing again.
pub trait Unlocker: Send + Sync + std::fmt::Debug {
    /// Opens the root key with `pin` (or, with no root key yet, sets the
    /// PIN and creates it), then the key store and what depends on it.
    /// With `reseal`, seals the PCR copy again to the current values.
    fn unlock(&self, pin: &[u8], reseal: bool) -> Result<Unlocked, UnlockFailure>;
    /// Opens the root key again (with the PIN, in a mode with one) and
    /// seals it as `plan` says.
    fn reseal(&self, plan: ResealPlan<'_>) -> Result<Resealed, UnlockFailure>;
}

/// Whether `request` is answered while the daemon is locked.
pub(super) fn served_while_locked(request: &Request) -> bool {
    matches!(
        request,
        Request::Ping | Request::Status | Request::Unlock { .. }
    )
}

/// A PIN from the wire, checked by the PIN rule as it arrives (the client
/// has stripped its newline): `InvalidArgument` names the rule, never the
/// PIN.
pub(super) fn checked_pin(
    pin: Option<&SecretBytes>,
) -> Result<Option<Zeroizing<Vec<u8>>>, Refusal> {
    pin.map(|pin| {
        Pin::exact(pin.expose())
            .map(|pin| Zeroizing::new(pin.expose().to_vec()))
            .map_err(|e| Refusal::new(ErrorCode::InvalidArgument, format!("the PIN: {e}")))
    })
    .transpose()
}

/// What `Status` says of the sealing.
pub(super) fn status(state: &SealingState) -> SealingStatus {
    let lock = match &state.lock {
        None => LockState::Unlocked,
        Some(LockReason::NoRootKeyYet) => LockState::NoRootKeyYet,
        Some(LockReason::PinRequired) => LockState::PinRequired,
        Some(LockReason::PcrMismatch(changes)) => LockState::PcrMismatch {
            changed: changes.iter().map(pcr_change).collect(),
        },
    };
    let mode = match &state.record {
        Some(record) => sealing(record),
        // No root key yet: the mode the first unlock creates.
        None => Sealing {
            pcrs: state.configured.pcrs.clone(),
            pin: state.configured.pin,
            pcr_values: Vec::new(),
        },
    };
    SealingStatus { lock, mode }
}

fn pcr_change(change: &PcrChange) -> agent_proto::PcrChange {
    agent_proto::PcrChange {
        pcr: change.pcr,
        sealed: change.sealed.to_vec(),
        current: change.current.to_vec(),
    }
}

/// A record as the protocol shows it.
fn sealing(record: &SealRecord) -> Sealing {
    Sealing {
        pcrs: record.mode.pcrs.clone(),
        pin: record.mode.pin,
        pcr_values: record
            .pcr_values
            .iter()
            .map(|value| PcrValue {
                pcr: value.pcr,
                sha256: value.sha256.to_vec(),
            })
            .collect(),
    }
}

/// Which operator request opens the PIN copy, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// `hostkms reseal`.
    Reseal,
    /// `hostkms change-pin`.
    ChangePin,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Reseal => "reseal",
            Purpose::ChangePin => "change-pin",
        }
    }
}

impl Service {
    /// `Unlock`, answered with what it did.
    pub(super) async fn unlock(
        &self,
        peer: &Peer,
        pin: SecretBytes,
        reseal: bool,
    ) -> Result<Response, Refusal> {
        self.require_admin(peer, "unlock the root key")?;
        let pin = checked_pin(Some(&pin))?.unwrap_or_default();
        self.unlock_root_key(peer, pin, reseal)
            .await
            .map(Response::Unlocked)
    }

    /// `Reseal` and `ChangePin`, answered with the sealing before and after.
    pub(super) async fn reseal(
        &self,
        peer: &Peer,
        purpose: Purpose,
        pin: Option<SecretBytes>,
        pcrs: Option<Vec<u8>>,
        new_pin: Option<SecretBytes>,
        dry_run: bool,
    ) -> Result<Response, Refusal> {
        let pin = checked_pin(pin.as_ref())?;
        let new_pin = checked_pin(new_pin.as_ref())?;
        let resealed = self
            .reseal_root_key(peer, purpose, pin, pcrs, new_pin, dry_run)
            .await?;
        Ok(Response::Resealed(ResealInfo {
            dry_run,
            before: sealing(&resealed.before),
            after: sealing(&resealed.after),
        }))
    }

    /// Audits an attempt to open the PIN copy for `purpose`, from its
    /// outcome (`None`: it opened).
    pub(super) fn pin_attempt_audited(
        &self,
        peer: &Peer,
        purpose: &str,
        error: Option<&crate::keystore::StoreError>,
    ) {
        use crate::keystore::StoreError;
        match error {
            None => audit::root_key_unlock(peer, purpose, UnlockResult::Unlocked, None, ""),
            Some(StoreError::RootKey(e)) => match e.as_ref() {
                RootKeyError::WrongPin { tries_left, .. } => audit::root_key_unlock(
                    peer,
                    purpose,
                    UnlockResult::WrongPin,
                    Some(*tries_left),
                    &e.to_string(),
                ),
                RootKeyError::PinLockout { .. } => audit::root_key_unlock(
                    peer,
                    purpose,
                    UnlockResult::Lockout,
                    Some(0),
                    &e.to_string(),
                ),
                other => audit::root_key_unlock(
                    peer,
                    purpose,
                    UnlockResult::Failed,
                    None,
                    &other.to_string(),
                ),
            },
            Some(other) => audit::root_key_unlock(
                peer,
                purpose,
                UnlockResult::Failed,
                None,
                &other.to_string(),
            ),
        }
    }

    /// The service with `unlocker` to open and seal the root key on an
    /// operator's request (in the daemon, its state dir and TPM).
    pub fn with_unlocker(mut self, unlocker: Arc<dyn Unlocker>) -> Service {
        self.unlocker = Some(unlocker);
        self
    }

    /// The service with the root key's sealing as start found it.
    pub fn with_sealing(self, sealing: SealingState) -> Service {
        self.sealing.store(Arc::new(sealing));
        self
    }

    /// Puts a reloaded `[root_key]` in force: what `Reseal` applies.
    pub fn set_configured_sealing(&self, configured: SealingMode) {
        let state = self.sealing.load_full();
        self.sealing.store(Arc::new(SealingState {
            configured,
            ..(*state).clone()
        }));
    }

    /// How the root key is sealed and why the daemon is locked, if it is.
    pub fn sealing(&self) -> Arc<SealingState> {
        self.sealing.load_full()
    }

    /// The refusal of a key operation while the daemon is locked.
    pub(super) fn locked_refusal(&self) -> Refusal {
        let why = self.sealing.load().lock.as_ref().map_or_else(
            || "the root key is not unsealed".to_string(),
            LockReason::short,
        );
        Refusal::new(
            LOCKED,
            format!(
                "hostkmsd is locked ({why}): an admin must run `hostkms unlock` (`hostkms status` says why)"
            ),
        )
    }

    fn require_admin(&self, peer: &Peer, what: &str) -> Result<(), Refusal> {
        if self.is_admin(peer) {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "uid {} may not {what}: only admins (root and the admin_groups) may, and no grant can allow it",
                peer.uid
            ),
        ))
    }

    fn unlocker(&self) -> Result<Arc<dyn Unlocker>, Refusal> {
        self.unlocker.clone().ok_or_else(|| {
            Refusal::new(
                ErrorCode::Internal,
                "this service has no TPM to unseal the root key with",
            )
        })
    }

    /// Opens the root key with `pin` and starts serving keys.
    async fn unlock_root_key(
        &self,
        peer: &Peer,
        pin: Zeroizing<Vec<u8>>,
        reseal: bool,
    ) -> Result<UnlockInfo, Refusal> {
        let unlocker = self.unlocker()?;
        let _one_at_a_time = self.unlock_gate.lock().await;
        if self.store.get().is_some() {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "hostkmsd is not locked: the root key is unsealed and keys are served. To seal it to this boot state, run `hostkms reseal`",
            ));
        }
        let unlocked = tokio::task::spawn_blocking(move || unlocker.unlock(&pin, reseal))
            .await
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the unlock did not finish: {e}"),
                )
            });
        let unlocked = match unlocked
            .and_then(|result| result.map_err(|e| self.unlock_refused(peer, "unlock", e)))
        {
            Ok(unlocked) => unlocked,
            Err(refusal) => return Err(refusal),
        };
        let check = unlocked.store.root_key_check().to_string();
        let detail = if unlocked.resealed {
            format!("root key {check}; PCR copy sealed again to this boot state")
        } else if unlocked.changed.is_empty() {
            format!("root key {check}")
        } else {
            format!("root key {check}; for this boot only (the PCRs changed and were not resealed)")
        };
        audit::root_key_unlock(peer, "unlock", UnlockResult::Unlocked, None, &detail);
        if unlocked.resealed {
            let mode = unlocked.record.mode.describe();
            audit::root_key_resealed(
                Some(peer),
                "unlock --reseal",
                &mode,
                &mode,
                unlocked.record.generation,
            );
        }
        if let Some(transport) = unlocked.transport {
            self.set_transport_key(transport);
        }
        let configured = self.sealing.load().configured.clone();
        self.sealing.store(Arc::new(SealingState {
            record: Some(unlocked.record.clone()),
            lock: None,
            configured,
        }));
        self.open_with(unlocked.store);
        Ok(UnlockInfo {
            root_key_check: check,
            resealed: unlocked.resealed,
            changed_pcrs: unlocked.changed.iter().map(pcr_change).collect(),
        })
    }

    /// `Reseal` and `ChangePin`: seals the root key again, to the PCRs'
    /// current values and the mode `pcrs` (or `[root_key]`) says, or under
    /// a new PIN.
    async fn reseal_root_key(
        &self,
        peer: &Peer,
        purpose: Purpose,
        pin: Option<Zeroizing<Vec<u8>>>,
        pcrs: Option<Vec<u8>>,
        new_pin: Option<Zeroizing<Vec<u8>>>,
        dry_run: bool,
    ) -> Result<Resealed, Refusal> {
        let what = match purpose {
            Purpose::Reseal => "reseal the root key",
            Purpose::ChangePin => "change the root key's PIN",
        };
        self.require_admin(peer, what)?;
        self.keystore()?;
        let unlocker = self.unlocker()?;
        let _one_at_a_time = self.unlock_gate.lock().await;
        let state = self.sealing.load_full();
        let Some(current) = state.record.clone() else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "the daemon has no sealing record in force; restart hostkmsd",
            ));
        };
        let (target, source) = match purpose {
            Purpose::Reseal => {
                let pcrs = pcrs.unwrap_or_else(|| state.configured.pcrs.clone());
                let mut pcrs = pcrs;
                pcrs.sort_unstable();
                pcrs.dedup();
                crate::rootkey::record::check_pcrs(&pcrs)
                    .map_err(|problem| Refusal::new(ErrorCode::InvalidArgument, problem))?;
                (
                    SealingMode {
                        pcrs,
                        pin: state.configured.pin,
                    },
                    PcrSource::Current,
                )
            }
            Purpose::ChangePin => {
                if !current.mode.pin {
                    return Err(RootKeyError::NoPinSet.into());
                }
                if new_pin.is_none() {
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        "a PIN change needs the new PIN",
                    ));
                }
                (current.mode.clone(), PcrSource::Recorded)
            }
        };
        if current.mode.pin && pin.is_none() {
            return Err(RootKeyError::PinNeeded.into());
        }
        if !current.mode.pin && pin.is_some() {
            return Err(RootKeyError::NoPinSet.into());
        }
        if target.pin && !current.mode.pin && new_pin.is_none() && !dry_run {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "[root_key] pin = true asks for a PIN and none is set yet: give the new PIN (hostkms reseal asks for it)",
            ));
        }
        let used_pin = pin.is_some();
        let resealed = tokio::task::spawn_blocking(move || {
            unlocker.reseal(ResealPlan {
                pin: pin.as_deref().map(Vec::as_slice),
                target,
                new_pin: new_pin.as_deref().map(Vec::as_slice),
                pcrs: source,
                dry_run,
            })
        })
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Internal,
                format!("the reseal did not finish: {e}"),
            )
        })?
        .map_err(|e| self.unlock_refused(peer, purpose.name(), e))?;
        if used_pin {
            audit::root_key_unlock(peer, purpose.name(), UnlockResult::Unlocked, None, "");
        }
        if !dry_run {
            audit::root_key_resealed(
                Some(peer),
                purpose.name(),
                &resealed.before.mode.describe(),
                &resealed.after.mode.describe(),
                resealed.after.generation,
            );
            self.sealing.store(Arc::new(SealingState {
                record: Some(resealed.after.clone()),
                lock: None,
                configured: state.configured.clone(),
            }));
        }
        Ok(resealed)
    }

    /// The refusal for a failed unlock, reseal or PIN change, audited as
    /// an unlock attempt.
    fn unlock_refused(&self, peer: &Peer, purpose: &str, failure: UnlockFailure) -> Refusal {
        let (result, tries_left, code) = match &failure {
            UnlockFailure::RootKey(RootKeyError::WrongPin { tries_left, .. }) => {
                (UnlockResult::WrongPin, Some(*tries_left), WRONG_PIN)
            }
            UnlockFailure::RootKey(RootKeyError::PinLockout { .. }) => {
                (UnlockResult::Lockout, Some(0), WRONG_PIN)
            }
            UnlockFailure::RootKey(RootKeyError::TpmUnavailable(_)) => {
                (UnlockResult::Failed, None, ErrorCode::TpmUnavailable)
            }
            UnlockFailure::RootKey(RootKeyError::PinNeeded | RootKeyError::NoPinSet) => {
                (UnlockResult::Failed, None, ErrorCode::InvalidArgument)
            }
            UnlockFailure::RootKey(RootKeyError::RotationPending { .. }) => {
                (UnlockResult::Failed, None, ErrorCode::Busy)
            }
            _ => (UnlockResult::Failed, None, ErrorCode::Internal),
        };
        let message = failure.to_string();
        if result == UnlockResult::Failed {
            tracing::error!("{purpose} failed: {message}");
        }
        audit::root_key_unlock(peer, purpose, result, tries_left, &message);
        Refusal::new(code, message)
    }
}

impl From<RootKeyError> for Refusal {
    fn from(error: RootKeyError) -> Refusal {
        let code = match &error {
            RootKeyError::WrongPin { .. } | RootKeyError::PinLockout { .. } => WRONG_PIN,
            RootKeyError::PinNeeded | RootKeyError::NoPinSet => ErrorCode::InvalidArgument,
            RootKeyError::TpmUnavailable(_) => ErrorCode::TpmUnavailable,
            RootKeyError::RotationPending { .. } => ErrorCode::Busy,
            _ => ErrorCode::Internal,
        };
        Refusal::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reseal_plan_never_shows_its_pins() {
        let plan = ResealPlan {
            pin: Some(b"Pq7-zK2!mW9x"),
            target: SealingMode::default(),
            new_pin: Some(b"Xv4#nB8@rT1e"),
            pcrs: PcrSource::Current,
            dry_run: false,
        };
        let shown = format!("{plan:?}");
        assert!(!shown.contains("Pq7") && !shown.contains("Xv4"), "{shown}");
        assert!(!shown.contains("80, 113"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
