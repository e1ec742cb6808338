//! `hostkmsd accept-rollback`: the operator's explicit, audited way past a
//! refused start after restoring an older copy of the state dir on purpose
//! (or after the store's TPM counter was deleted).
//!
//! Offline: it takes the state dir's lock (so the daemon must be stopped),
//! unseals the root key, opens the key store without holding its binding
//! against it, and records the store as it is: the counter's current value
//! and the digest of the rows, or a new counter when the old one is gone.
//! It prints and audits what it accepted, including the versions that are
//! live in this copy (a version revoked after the copy was taken is live
//! again until it is revoked again).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::KeyState;

use crate::audit;
use crate::config::Config;
use crate::keystore::{KeyStore, RollbackAccepted, StoreError, TpmEntropy};
use crate::rootkey::{self, RootKeyError};
use crate::state_dir::{KEYSTORE_DB, StateDir, StateDirError, StateDirLock};
use crate::tpm::TpmWorker;

/// How long the end waits for the TPM worker's last conversation.
const TPM_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Why `accept-rollback` could not accept the store.
#[derive(Debug, thiserror::Error)]
pub enum AcceptRollbackError {
    /// The state directory is unusable, or the daemon holds it.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// There is no key store to accept.
    #[error(
        "{path} does not exist: there is no key store to accept; check state_dir in the config"
    )]
    NoStore {
        /// The key store file.
        path: String,
    },
    /// The root key could not be unsealed.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The key store could not be opened or bound.
    #[error(transparent)]
    KeyStore(#[from] StoreError),
}

/// Accepts the key store in `config`'s state dir as it is; returns the
/// report to print.
pub fn run(config: &Config, pin: Option<&[u8]>) -> Result<String, AcceptRollbackError> {
    let tpm =
        Arc::new(TpmWorker::start(config.tpm.tcti.clone()).map_err(RootKeyError::TpmUnavailable)?);
    let result = accept(config, &tpm, pin);
    tpm.shutdown(TPM_SHUTDOWN_WAIT);
    result
}

fn accept(
    config: &Config,
    tpm: &Arc<TpmWorker>,
    pin: Option<&[u8]>,
) -> Result<String, AcceptRollbackError> {
    let state_dir = StateDir::open(&config.state_dir)?;
    let _lock = StateDirLock::acquire(&state_dir)?;
    if !state_dir.contains(KEYSTORE_DB) {
        return Err(AcceptRollbackError::NoStore {
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
    let store = KeyStore::open_accepting_rollback(
        &state_dir,
        &root_key,
        entropy,
        crate::clock::Clock::from_env(),
    )?;
    drop(root_key);
    let accepted = store.accept_rollback(tpm, config.tpm.start_timeout)?;
    let keys = store.keys();
    audit::rollback_accepted(
        &store_path(&state_dir),
        &accepted,
        keys.len(),
        keys.version_count(),
    );
    Ok(report(&state_dir, &store, &accepted))
}

fn store_path(state_dir: &StateDir) -> String {
    state_dir.file(KEYSTORE_DB).display().to_string()
}

/// What was accepted, for the operator: the counter, why the start refused,
/// and every key with the versions this copy holds live.
fn report(state_dir: &StateDir, store: &KeyStore, accepted: &RollbackAccepted) -> String {
    let mut out = String::new();
    let path = store_path(state_dir);
    let _ = writeln!(out, "accepted {path} as it is.");
    if !accepted.problem.is_empty() {
        let _ = writeln!(out, "it had been refused: {}", accepted.problem);
    }
    match (&accepted.previous, accepted.new_counter) {
        (Some(previous), false) => {
            let what = match previous.counter.cmp(&accepted.counter) {
                std::cmp::Ordering::Less => " (an older copy of the store: a rollback)",
                std::cmp::Ordering::Equal => "",
                std::cmp::Ordering::Greater => " (increments a crash held back)",
            };
            let _ = writeln!(
                out,
                "rollback counter: NV index {:#010x}; the store recorded {}, the TPM is at {}{what}, which the store now records.",
                accepted.index, previous.counter, accepted.counter
            );
        }
        (Some(previous), true) => {
            let _ = writeln!(
                out,
                "rollback counter: NV index {:#010x} (recorded {}) could not be used; the store is bound to a new counter, NV index {:#010x}, at {}.",
                previous.index, previous.counter, accepted.index, accepted.counter
            );
        }
        (None, _) => {
            let _ = writeln!(
                out,
                "rollback counter: the store had no usable binding; it is bound to NV index {:#010x}, at {}.",
                accepted.index, accepted.counter
            );
        }
    }
    let keys = store.keys();
    let _ = writeln!(
        out,
        "in force now: {} keys, {} versions. Every version listed live below opens its ciphertexts again, including any revoked after this copy was taken: revoke those again (hostkms revoke NAME --version N).",
        keys.len(),
        keys.version_count()
    );
    let pending: Vec<String> = keys
        .after(None)
        .filter(|key| key.state() == KeyState::PendingDeletion)
        .map(|key| format!("{:?}", key.name()))
        .collect();
    if !pending.is_empty() {
        let _ = writeln!(
            out,
            "pending deletion in this copy: {}. Each is deleted for good at the end of its wait, including any whose deletion was cancelled after this copy was taken: cancel those again (hostkms cancel-deletion NAME).",
            pending.join(", ")
        );
    }
    for key in keys.after(None) {
        let mut live = Vec::new();
        let mut revoked = Vec::new();
        for number in 1..=key.latest_version() {
            match key.version(number) {
                Some(version) if !version.is_revoked() => live.push(number.to_string()),
                _ => revoked.push(number.to_string()),
            }
        }
        let state = match key.state() {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::Revoked => "revoked",
            KeyState::PendingDeletion => "pending deletion",
        };
        let _ = writeln!(
            out,
            "  {:?} ({state}, id {}): live versions [{}], revoked [{}], minimum decryption version {}",
            key.name(),
            key.id(),
            live.join(", "),
            revoked.join(", "),
            key.min_decryption_version()
        );
    }
    out
}
