//! The root key and what hangs on it, opened at start or at `hostkms
//! unlock`: one path for both, so a daemon that started locked comes up
//! exactly as one that unsealed by itself.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::config::{Config, TpmConfig};
use crate::keystore::KeyStore;
use crate::recovery::{RecoveryConfig, dir::RecoveryWriter};
use crate::rootkey::{
    self, Opened, PcrSource, RECORD, ResealTo, RootKey, RootKeyError, SealRecord, SealingMode,
};
use crate::service::{ResealPlan, Resealed, UnlockFailure, Unlocked, Unlocker};
use crate::state_dir::StateDir;
use crate::tpm::TpmWorker;
use crate::transfer::TransportKey;

use super::{DaemonError, check_rollback, open_store, start_recovery};

/// The daemon's [`Unlocker`]: its state dir, TPM and config.
#[derive(Debug)]
pub(super) struct Opener {
    state_dir: StateDir,
    tpm: Arc<TpmWorker>,
    settings: TpmConfig,
    /// The mode a new root key is sealed in (`[root_key]`, reloaded).
    mode: Mutex<SealingMode>,
    recovery: Option<RecoveryConfig>,
    /// The recovery writer, once the key store is open.
    writer: OnceLock<Option<Arc<RecoveryWriter>>>,
    /// Whether the key store was opened (at most once per process).
    opened: Mutex<bool>,
}

impl Opener {
    /// An opener for `state_dir` through `tpm`, as `config` says.
    pub(super) fn new(state_dir: StateDir, tpm: Arc<TpmWorker>, config: &Config) -> Opener {
        Opener {
            state_dir,
            tpm,
            settings: config.tpm.clone(),
            mode: Mutex::new(config.root_key.clone()),
            recovery: config.recovery.clone(),
            writer: OnceLock::new(),
            opened: Mutex::new(false),
        }
    }

    /// Puts a reloaded `[root_key]` in force for a root key made from now on.
    pub(super) fn set_mode(&self, mode: SealingMode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    fn mode(&self) -> SealingMode {
        self.mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The sealing record in force, if one can be read (for `Status`).
    pub(super) fn record(&self) -> Option<SealRecord> {
        SealRecord::read(&self.state_dir, RECORD).ok().flatten()
    }

    /// The recovery writer the key store was opened with (`None` without
    /// `[recovery]`, or before the store is open).
    pub(super) fn recovery_writer(&self) -> Option<Arc<RecoveryWriter>> {
        self.writer.get().cloned().flatten()
    }

    /// Opens the root key ([`rootkey::open`]), with the key store's word
    /// on an interrupted rotation.
    pub(super) fn open_root(&self, pin: Option<&[u8]>) -> Result<Opened, DaemonError> {
        // Only an interrupted root-key rotation needs the store's word on
        // which root key is in force.
        let store_check = if rootkey::rotation_interrupted(&self.state_dir) {
            KeyStore::recorded_root_key_check(&self.state_dir)?
        } else {
            None
        };
        Ok(rootkey::open(
            &self.state_dir,
            &self.tpm,
            self.settings.start_timeout,
            &self.mode(),
            store_check.as_deref(),
            pin,
        )?)
    }

    /// Opens the key store under `root_key`, checks it against its
    /// rollback counter, wipes the root key, starts the recovery directory
    /// and loads the transport key (whose failure only disables transfers).
    pub(super) fn open_keys(
        &self,
        root_key: RootKey,
    ) -> Result<(KeyStore, Option<TransportKey>), DaemonError> {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        let store = open_store(&self.state_dir, &root_key, &self.tpm, &self.settings)?;
        check_rollback(&store, &self.tpm, &self.settings)?;
        // The store holds the keys derived from the root key; the root key
        // itself is needed no longer and is wiped here rather than kept for
        // the daemon's life.
        drop(root_key);
        let writer = start_recovery(self.recovery.clone(), &store)?;
        let _ = self.writer.set(writer);
        *opened = true;
        let transport = match crate::transfer::load_or_create(&store) {
            Ok((key, created)) => {
                tracing::info!(
                    transport_key = key.recipient(),
                    fingerprint = key.fingerprint(),
                    "{} transport key {} (fingerprint {})",
                    if created { "created" } else { "loaded" },
                    key.recipient(),
                    key.fingerprint()
                );
                Some(key)
            }
            Err(e) => {
                tracing::error!(
                    "no transport key: keys cannot be exported or imported until this is fixed: {e}"
                );
                None
            }
        };
        Ok((store, transport))
    }
}

impl Unlocker for Opener {
    fn unlock(&self, pin: &[u8], reseal: bool) -> Result<Unlocked, UnlockFailure> {
        let opened = self.open_root(Some(pin)).map_err(start_failure)?;
        let (key, origin, mut record) = match opened {
            Opened::Unsealed {
                key,
                origin,
                record,
            } => (key, origin, record),
            Opened::Locked(reason) => {
                return Err(UnlockFailure::Start(format!(
                    "the root key is still locked: {}",
                    reason.describe()
                )));
            }
        };
        super::log_root_key(&self.state_dir, &key, origin, &record, &self.mode());
        let timeout = self.settings.start_timeout;
        let changed = if record.mode.pcrs.is_empty() {
            Vec::new()
        } else {
            rootkey::pcr_changes(&self.tpm, timeout, &record)?
        };
        let resealed = reseal && !changed.is_empty();
        if resealed {
            let mode = record.mode.clone();
            record = rootkey::reseal(
                &self.state_dir,
                &self.tpm,
                timeout,
                &key,
                &record,
                ResealTo {
                    mode: &mode,
                    pin: Some(pin),
                    pcrs: PcrSource::Current,
                },
            )?;
        }
        let (store, transport) = self.open_keys(key).map_err(start_failure)?;
        Ok(Unlocked {
            store,
            record,
            changed,
            resealed,
            transport,
        })
    }

    fn reseal(&self, plan: ResealPlan<'_>) -> Result<Resealed, UnlockFailure> {
        let timeout = self.settings.start_timeout;
        let Some(before) = SealRecord::read(&self.state_dir, RECORD).map_err(RootKeyError::from)?
        else {
            return Err(UnlockFailure::Start(format!(
                "{} is missing: the sealing record the daemon started with is gone; restore it from backup",
                self.state_dir.file(RECORD).display()
            )));
        };
        if plan.dry_run {
            let current = rootkey::read_pcrs(&self.tpm, timeout, &plan.target.pcrs)?;
            let after = SealRecord {
                generation: before.generation + 1,
                primary: before.primary,
                mode: plan.target.clone(),
                pcr_values: current,
            };
            return Ok(Resealed { before, after });
        }
        let key = rootkey::unseal_in_force(&self.state_dir, &self.tpm, timeout, &before, plan.pin)?;
        let new_pin = plan.new_pin.or(plan.pin).filter(|_| plan.target.pin);
        let after = rootkey::reseal(
            &self.state_dir,
            &self.tpm,
            timeout,
            &key,
            &before,
            ResealTo {
                mode: &plan.target,
                pin: new_pin,
                pcrs: plan.pcrs,
            },
        )?;
        Ok(Resealed { before, after })
    }
}

/// A start-up failure after the root key, as an unlock's failure: a root
/// key error stays one (its advice fits), anything else is described.
fn start_failure(error: DaemonError) -> UnlockFailure {
    match error {
        DaemonError::RootKey(error) => UnlockFailure::RootKey(error),
        other => UnlockFailure::Start(other.to_string()),
    }
}
