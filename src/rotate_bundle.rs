//! `hostkmsd rotate-bundle`: replaces the recovery bundle identity (rare,
//! admin-initiated; say, when a copy of the old one may have leaked with an
//! old custodian). Offline, like `accept-rollback`: it takes the state dir's
//! lock (so the daemon must be stopped), unseals the root key, opens the key
//! store (its rollback binding checked as at start), seals a new bundle
//! identity in it, escrows that to the configured custodians and re-encrypts
//! every key record to it. Copies of the directory taken before still open
//! with the old identity: retire them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::audit;
use crate::config::Config;
use crate::keystore::{KeyStore, StoreError, TpmEntropy};
use crate::recovery::{self, StartError};
use crate::rootkey::{self, RootKeyError};
use crate::state_dir::{KEYSTORE_DB, StateDir, StateDirError, StateDirLock};
use crate::tpm::TpmWorker;

/// How long the end waits for the TPM worker's last conversation.
const TPM_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Why `rotate-bundle` could not rotate the bundle identity.
#[derive(Debug, thiserror::Error)]
pub enum RotateBundleError {
    /// The config has no `[recovery]`.
    #[error(
        "the config has no [recovery] section: there is no bundle identity to rotate. Configure the custodians first"
    )]
    NotConfigured,
    /// The state directory is unusable, or the daemon holds it.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// There is no key store.
    #[error("{path} does not exist: there is no key store; check state_dir in the config")]
    NoStore {
        /// The key store file.
        path: String,
    },
    /// The root key could not be unsealed.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The key store could not be opened.
    #[error(transparent)]
    KeyStore(#[from] StoreError),
    /// The new identity or the directory failed.
    #[error(transparent)]
    Recovery(#[from] StartError),
}

/// Rotates the bundle identity of `config`'s store; returns the report.
pub fn run(config: &Config, pin: Option<&[u8]>) -> Result<String, RotateBundleError> {
    let Some(recovery_config) = config.recovery.clone() else {
        return Err(RotateBundleError::NotConfigured);
    };
    let tpm =
        Arc::new(TpmWorker::start(config.tpm.tcti.clone()).map_err(RootKeyError::TpmUnavailable)?);
    let result = rotate(config, recovery_config, &tpm, pin);
    tpm.shutdown(TPM_SHUTDOWN_WAIT);
    result
}

fn rotate(
    config: &Config,
    recovery_config: recovery::RecoveryConfig,
    tpm: &Arc<TpmWorker>,
    pin: Option<&[u8]>,
) -> Result<String, RotateBundleError> {
    let state_dir = StateDir::open(&config.state_dir)?;
    let _lock = StateDirLock::acquire(&state_dir)?;
    if !state_dir.contains(KEYSTORE_DB) {
        return Err(RotateBundleError::NoStore {
            path: state_dir.file(KEYSTORE_DB).display().to_string(),
        });
    }
    // The store exists, so this never creates a root key.
    let (root_key, _, _) = rootkey::open_offline(
        &state_dir,
        tpm,
        config.tpm.start_timeout,
        &config.root_key,
        pin,
    )?;
    let entropy = Arc::new(TpmEntropy::new(Arc::clone(tpm), config.tpm.timeout));
    let store = KeyStore::open(
        &state_dir,
        &root_key,
        entropy,
        crate::clock::Clock::from_env(),
    )?;
    drop(root_key);
    store.bind_rollback(tpm, config.tpm.start_timeout, config.tpm.timeout)?;
    let dir = recovery_config.dir.clone();
    let (recipients, threshold) = (
        recovery_config.recipients.clone(),
        recovery_config.threshold,
    );
    let (old, new) = recovery::rotate_bundle(recovery_config, &store)?;
    audit::recovery_escrowed(
        &dir.display().to_string(),
        &new,
        old.as_deref(),
        &recipients,
        threshold,
    );
    tracing::warn!(
        old_bundle_recipient = old.as_deref().unwrap_or("(none)"),
        new_bundle_recipient = new.as_str(),
        dir = %dir.display(),
        "rotated the recovery bundle identity; copies of the recovery directory taken before open only with the old one"
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rotated the recovery bundle identity: {} -> {new}",
        old.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        out,
        "{} keys re-encrypted in {}; the new identity is escrowed to the configured custodians.",
        store.keys().len(),
        dir.display()
    );
    let _ = writeln!(
        out,
        "Copies of the directory taken before still open with the old identity's escrow: retire them."
    );
    Ok(out)
}
