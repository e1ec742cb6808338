//! The recovery directory: every key, age-encrypted to a bundle identity that
//! is escrowed to offline custodians, so a lost TPM loses no key.
//!
//! One file, one job: `record` (a key's material as authenticated JSON, the
//! plaintext of `keys/<id>.age` and of an export file), `agefile` (age
//! encryption and recipient fingerprints), `escrow` (the bundle identity, its
//! escrow to the custodians and its recovery from them), `manifest` (the
//! directory's authenticated table of contents), `dir` (the directory and
//! its writer, the key store's change sink). Here: the `[recovery]` config
//! section's type and the start-up that ties them to the key store.

pub mod agefile;
pub mod dir;
pub mod escrow;
pub mod manifest;
pub mod record;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::keystore::{KeyStore, SecretName, StoreError};
use dir::{RecoveryError, RecoveryWriter};
use escrow::BundleIdentity;

/// How often a recovery directory that lags is written again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// How often a daemon without `[recovery]` warns in the journal.
pub const NOT_RECOVERABLE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The warning of a daemon without `[recovery]`.
pub const NOT_RECOVERABLE: &str = "keys are not recoverable if this TPM is lost: configure [recovery] (custodians' age recipients) so every key is escrowed to a recovery directory";

/// The `[recovery]` table, validated. Only a restart changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// The custodians' age X25519 recipients, in order, each once.
    pub recipients: Vec<String>,
    /// How many custodians must join to recover (1..=recipients).
    pub threshold: u32,
    /// The recovery directory.
    pub dir: PathBuf,
    /// The directory's group (a backup agent's), if set.
    pub group: Option<RecoveryGroup>,
}

/// The recovery directory's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryGroup {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// Why recovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The key store failed (the sealed bundle identity).
    #[error("recovery: {0}")]
    Store(#[from] StoreError),
    /// The directory is unusable.
    #[error(transparent)]
    Dir(#[from] RecoveryError),
    /// The sealed bundle identity is damaged.
    #[error(transparent)]
    Escrow(#[from] escrow::EscrowError),
}

/// The bundle identity sealed in the store, or a new one generated and
/// sealed there (durably) when it has none; true when new.
pub fn bundle_identity(store: &KeyStore) -> Result<(BundleIdentity, bool), StartError> {
    if let Some(text) = store.secret(SecretName::RecoveryBundle)? {
        let text = std::str::from_utf8(&text).map_err(|_| escrow::EscrowError::BadBundle)?;
        return Ok((BundleIdentity::from_text(text)?, false));
    }
    let bundle = BundleIdentity::generate()?;
    let text: Zeroizing<String> = bundle.to_text();
    store.put_secret(SecretName::RecoveryBundle, text.as_bytes())?;
    Ok((bundle, true))
}

/// Replaces the bundle identity (rare, admin-initiated, daemon stopped):
/// a new one is generated and sealed in the store (durably, first), then the
/// directory is rewritten under it: the new identity escrowed to the
/// configured custodians, every key record re-encrypted and re-authenticated,
/// the MANIFEST. Copies taken before still open with the old identity's
/// escrow. Returns the old recipient (if any) and the new one.
pub fn rotate_bundle(
    config: RecoveryConfig,
    store: &KeyStore,
) -> Result<(Option<String>, String), StartError> {
    let old = match store.secret(SecretName::RecoveryBundle)? {
        Some(text) => {
            let text = std::str::from_utf8(&text).map_err(|_| escrow::EscrowError::BadBundle)?;
            Some(BundleIdentity::from_text(text)?.recipient().to_string())
        }
        None => None,
    };
    let bundle = BundleIdentity::generate()?;
    let new = bundle.recipient().to_string();
    store.put_secret(SecretName::RecoveryBundle, bundle.to_text().as_bytes())?;
    // Every old file fails to open under the new identity and is rewritten:
    // expected here, so the reconcile report is not logged as tampering.
    let (writer, _) =
        store.with_all_material(|all| RecoveryWriter::start(config, bundle, all))??;
    if !writer.is_current() {
        return Err(StartError::Dir(RecoveryError::Unusable {
            path: writer.dir_path().to_path_buf(),
            problem: format!(
                "the new bundle identity is sealed, but the directory could not be rewritten: {}; the daemon finishes it at its next start",
                writer_problem(&writer)
            ),
        }));
    }
    Ok((old, new))
}

fn writer_problem(writer: &RecoveryWriter) -> String {
    use crate::keystore::ChangeSink;
    writer.status().problem
}

/// Starts recovery for `store`: the bundle identity, the directory brought
/// level with the store (under its writer lock), and the writer installed as
/// the store's change sink. Logs what reconciling did; true when the bundle
/// identity was escrowed anew (for the audit trail).
pub fn start(
    config: RecoveryConfig,
    store: &KeyStore,
) -> Result<(Arc<RecoveryWriter>, bool), StartError> {
    let (bundle, created) = bundle_identity(store)?;
    if created {
        tracing::info!(
            bundle_recipient = bundle.recipient(),
            "generated the recovery bundle identity and sealed it in the key store"
        );
    }
    let dir = config.dir.clone();
    let (writer, report) =
        store.with_all_material(|all| RecoveryWriter::start(config, bundle, all))??;
    let writer = Arc::new(writer);
    if report.escrowed {
        tracing::info!(
            dir = %dir.display(),
            "escrowed the recovery bundle identity to the configured custodians"
        );
    }
    for name in &report.untrusted {
        tracing::warn!(
            dir = %dir.display(),
            "recovery file {name} does not authenticate under the bundle identity (planted, edited or unreadable); rewritten from the key store"
        );
    }
    for name in &report.removed {
        tracing::warn!(
            dir = %dir.display(),
            "recovery key file {name} names no key of the store; removed"
        );
    }
    if !report.rewritten.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            count = report.rewritten.len(),
            "wrote recovery key files that lagged behind the key store"
        );
    }
    store.set_change_sink(Arc::clone(&writer) as Arc<dyn crate::keystore::ChangeSink>);
    Ok((writer, report.escrowed))
}
