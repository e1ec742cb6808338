//! Keys with their material in clear, for what must carry them beyond this
//! TPM (the recovery directory, export to another host, restore and
//! import); the change sink that hears of every change before it is
//! answered; and the secrets the store keeps sealed besides keys.

use std::sync::Arc;

use agent_proto::{KeyState, KeyType, RecoveryStatus};
use zeroize::Zeroizing;

use super::db::{self, SecretRow};
use super::sealing::{KEK_LEN, StoreSecrets};
use super::{Key, KeyStore, StoreError, Writer};
use crate::envelope::KeyId;

/// One key with every version's KEK in clear (in zeroizing memory): what a
/// recovery record or an export file holds. Its `Debug` shows no KEK.
#[derive(Clone)]
pub struct KeyMaterial {
    /// The key's random id, which its ciphertexts carry.
    pub id: KeyId,
    /// The key's name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// What the key is for; every version has it.
    pub key_type: KeyType,
    /// Enabled, disabled, pending deletion or revoked.
    pub state: KeyState,
    /// Versions below this refuse to unwrap.
    pub min_decryption_version: u32,
    /// Version `n` at index `n - 1`.
    pub versions: Vec<VersionMaterial>,
    /// Description, tags, rotation period and a pending deletion's due.
    pub settings: KeySettingsMaterial,
}

/// What a [`KeyMaterial`] carries besides its versions (issue 12); all
/// empty for a key that has none, and for every key of an older record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySettingsMaterial {
    /// Free text for humans.
    pub description: String,
    /// Tags, by name.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Seconds between rotations by age; `None`: never by age.
    pub rotation_period: Option<u64>,
    /// When a key pending deletion is deleted; `Some` exactly in state
    /// `PendingDeletion`.
    pub deletion_due: Option<super::DeletionDue>,
}

impl KeySettingsMaterial {
    /// Whether any field is set: a key's record needs format 3.
    pub fn is_empty(&self) -> bool {
        self == &KeySettingsMaterial::default()
    }

    /// Checks the description, tags and rotation period against the
    /// limits ([`super::metadata`]).
    pub fn check(&self) -> Result<(), StoreError> {
        super::metadata::check_settings(&self.description, &self.tags, self.rotation_period)
    }
}

impl KeyMaterial {
    /// The state and settings a key arriving from elsewhere (a restore, an
    /// import) takes here: as it was, except that a key pending deletion
    /// comes back disabled without a deletion date, since the waiting
    /// period's daemon clock does not travel (nothing is destroyed early
    /// and nothing lost; an operator schedules it again if still wanted).
    pub(super) fn arriving(&self) -> (KeyState, KeySettingsMaterial) {
        let mut settings = self.settings.clone();
        settings.deletion_due = None;
        let state = match self.state {
            KeyState::PendingDeletion => KeyState::Disabled,
            other => other,
        };
        (state, settings)
    }
}

/// One version of a [`KeyMaterial`].
#[derive(Clone)]
pub struct VersionMaterial {
    /// The version number, from 1.
    pub number: u32,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The version's 32-byte secret (KEK, HMAC key or signing seed);
    /// `None` once the version is revoked (a tombstone).
    pub kek: Option<Zeroizing<[u8; KEK_LEN]>>,
    /// A signing version's public key (SubjectPublicKeyInfo DER), revoked
    /// versions included; `None` for AES and HMAC keys.
    pub public_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("key_type", &self.key_type)
            .field("state", &self.state)
            .field("min_decryption_version", &self.min_decryption_version)
            .field("versions", &self.versions)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for VersionMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kek = if self.kek.is_some() {
            "<redacted>"
        } else {
            "revoked"
        };
        write!(f, "VersionMaterial({}, {kek})", self.number)
    }
}

/// What a change to the store did, for whoever must follow it (the
/// recovery directory, the rollback counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A key was created.
    Create,
    /// A key got a new latest version.
    Rotate,
    /// A version or a whole key was revoked.
    Revoke,
    /// A key was disabled.
    Disable,
    /// A key was enabled.
    Enable,
    /// A key's minimum decryption version changed.
    MinDecryptionVersion,
    /// A key was restored from a recovery directory.
    Restore,
    /// A key was imported from another host.
    Import,
    /// A key's description or tags changed.
    Metadata,
    /// A key's rotation period changed.
    RotationPeriod,
    /// A key was scheduled for deletion.
    ScheduleDeletion,
    /// A key's pending deletion was cancelled (it is disabled).
    CancelDeletion,
    /// A key pending deletion was deleted when its due passed.
    DeleteScheduled,
}

impl Change {
    /// Whether the change takes access away: what rollback protection must
    /// make impossible to undo by putting an older store back.
    pub fn reduces_access(self) -> bool {
        matches!(
            self,
            Change::Revoke
                | Change::Disable
                | Change::MinDecryptionVersion
                | Change::ScheduleDeletion
                | Change::DeleteScheduled
        )
    }

    /// Whether the rollback counter counts the change, so that no older
    /// copy of the store put back can undo it: a change that takes access
    /// away ([`Change::reduces_access`]), and a cancelled deletion, which
    /// gives access back but takes the key off its way to destruction. An
    /// older copy from while it was pending would put it back on that way,
    /// and the daemon would delete the key the operator saved.
    ///
    /// No other change is such that undoing it destroys anything: a copy
    /// from before an enable, a creation, a rotation, an import or a restore
    /// loses what the change gave (done again, or restored from the
    /// recovery directory), and one from before a change of metadata or
    /// rotation period changes no access.
    pub fn is_rollback_protected(self) -> bool {
        self.reduces_access() || self == Change::CancelDeletion
    }
}

/// Hears of every change to the store, after it is durable and before it
/// is answered, with the writer lock held: the recovery directory, which
/// must never lag an acknowledged change.
pub trait ChangeSink: Send + Sync + std::fmt::Debug {
    /// `key` (as it is now, with its material) changed by `change`.
    fn key_changed(&self, key: &KeyMaterial, change: Change);

    /// What `Status` says about recovery.
    fn status(&self) -> RecoveryStatus;
}

/// The secrets the store keeps sealed under the root key besides keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretName {
    /// The recovery bundle identity (an age X25519 identity).
    RecoveryBundle,
    /// This host's transport key (an age X25519 identity).
    TransportKey,
    /// The authorization of the TPM NV counter that binds the store.
    RollbackAuth,
}

impl SecretName {
    /// The name in the `secrets` table (part of the sealing's AAD).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretName::RecoveryBundle => "recovery bundle identity",
            SecretName::TransportKey => "transport key",
            SecretName::RollbackAuth => "rollback counter auth",
        }
    }
}

/// `key` with every version's KEK opened under the store's secrets.
pub(super) fn material_of(secrets: &StoreSecrets, key: &Key) -> Result<KeyMaterial, StoreError> {
    let versions = key
        .versions
        .iter()
        .map(|version| {
            let kek = match version.sealed_kek() {
                Some(sealed) => Some(secrets.open_kek(key.id, version.number, &sealed).map_err(
                    |_| StoreError::Tampered {
                        path: String::from("(memory)"),
                        key: format!("\"{}\" (id {})", key.name, key.id),
                        detail: format!(
                            "version {}: its KEK no longer opens under the root key",
                            version.number
                        ),
                    },
                )?),
                None => None,
            };
            Ok(VersionMaterial {
                number: version.number,
                created: version.created,
                kek,
                public_key: version.public_key_der().map(<[u8]>::to_vec),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(KeyMaterial {
        id: key.id,
        name: key.name.clone(),
        created: key.created,
        key_type: key.key_type,
        state: key.state,
        min_decryption_version: key.min_decryption_version,
        versions,
        settings: KeySettingsMaterial {
            description: key.description.clone(),
            tags: key.tags.clone(),
            rotation_period: key.rotation_period,
            deletion_due: key.deletion_due,
        },
    })
}

impl KeyStore {
    /// `key` with its material in clear, for a recovery record or an export.
    pub fn material(&self, key: &Key) -> Result<KeyMaterial, StoreError> {
        let writer = self.writer();
        material_of(&writer.secrets, key)
    }

    /// Runs `f` over every key's material under the writer lock: a
    /// consistent view no change can interleave with (the recovery
    /// directory's reconcile at start).
    pub fn with_all_material<R>(
        &self,
        f: impl FnOnce(&[KeyMaterial]) -> R,
    ) -> Result<R, StoreError> {
        let writer = self.writer();
        let keys = self.keys.load();
        let all = keys
            .by_name
            .values()
            .map(|key| material_of(&writer.secrets, key))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(f(&all))
    }

    /// Installs the sink told of every change from now on; only the first
    /// call counts (returns false for a later one).
    pub fn set_change_sink(&self, sink: Arc<dyn ChangeSink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// Tells the sink (if any) of `key`'s change; called by `commit` with the
    /// writer lock held, after the change is durable.
    pub(super) fn notify(&self, writer: &Writer, key: &Key, change: Change) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        match material_of(&writer.secrets, key) {
            Ok(material) => sink.key_changed(&material, change),
            Err(e) => tracing::error!(
                "cannot hand key \"{}\" to the recovery directory: {e}",
                key.name
            ),
        }
    }

    /// What `Status` says about recovery: the sink's word, or not configured.
    pub fn recovery_status(&self) -> RecoveryStatus {
        self.sink
            .get()
            .map_or_else(RecoveryStatus::default, |sink| sink.status())
    }

    /// The secret `name`, unsealed, if the store holds one.
    pub fn secret(&self, name: SecretName) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let writer = self.writer();
        let Some(sealed) = writer.sealed.get(name.as_str()) else {
            return Ok(None);
        };
        writer
            .secrets
            .open_secret(name.as_str(), sealed)
            .map(Some)
            .map_err(|_| StoreError::Tampered {
                path: self.path.display().to_string(),
                key: format!("(secret {:?})", name.as_str()),
                detail: "does not open under the root key".to_string(),
            })
    }

    /// Stores (or replaces) the secret `name`, sealed under the root key, in
    /// one durable transaction.
    pub fn put_secret(&self, name: SecretName, value: &[u8]) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let sealed = writer
            .secrets
            .seal_secret(name.as_str(), value)
            .map_err(StoreError::Random)?;
        let row = SecretRow {
            name: name.as_str().to_string(),
            sealed,
        };
        let mac = writer.secrets.row_mac(&row.canonical());
        writer
            .db
            .transaction(|tx| db::put_secret(tx, &row, &mac))
            .map_err(|e| self.db_error(e))?;
        writer.sealed.insert(row.name, row.sealed);
        Ok(())
    }
}
