//! Opening the store: the root key's check value, then every row verified
//! under the root key and assembled into keys. A row edited on disk stops
//! the open with [`StoreError::Tampered`] naming the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use agent_proto::KeyState;
use arc_swap::ArcSwap;

use super::db::{
    DAEMON_CLOCK, Database, DbError, KeyRow, ROOT_KEY_CHECK, SecretRow, Stored, VersionRow,
    daemon_clock_canonical,
};
use super::lifecycle::daemon_clock_row;
use super::metadata::{self, DeletionDue};
use super::sealing::{SEALED_KEK_LEN, StoreSecrets};
use super::{
    EntropySource, Key, KeyStore, Keys, SecretName, StoreError, Version, Writer, rollback,
};
use crate::clock::Clock;
use crate::envelope::KeyId;
use crate::rootkey::RootKey;
use crate::state_dir::{KEYSTORE_DB, StateDir};
use crate::version_key::VersionKey;

impl KeyStore {
    /// Opens (or creates) `keystore.db` in `dir` and loads every key,
    /// verifying each row and opening each KEK under `root`. New KEKs will
    /// mix OS randomness with randomness from `entropy` (in the daemon a
    /// [`TpmEntropy`](super::TpmEntropy)), which is started once the store has loaded.
    ///
    /// A store bound to a TPM counter must match the digest of its keys
    /// recorded with the binding ([`StoreError::Rollback`] when a key or
    /// version was deleted or replayed); the counter itself is checked by
    /// [`KeyStore::bind_rollback`].
    ///
    /// Every time the store records (creation times) and the daemon clock's
    /// runs are read from `clock`.
    pub fn open(
        dir: &StateDir,
        root: &RootKey,
        entropy: Arc<dyn EntropySource>,
        clock: Clock,
    ) -> Result<KeyStore, StoreError> {
        KeyStore::open_with(dir, root, entropy, clock, false)
    }

    /// Opens the store for `hostkmsd accept-rollback`: as
    /// [`KeyStore::open`], but a binding that does not match the rows is
    /// kept as a problem to report rather than refused.
    pub fn open_accepting_rollback(
        dir: &StateDir,
        root: &RootKey,
        entropy: Arc<dyn EntropySource>,
        clock: Clock,
    ) -> Result<KeyStore, StoreError> {
        KeyStore::open_with(dir, root, entropy, clock, true)
    }

    fn open_with(
        dir: &StateDir,
        root: &RootKey,
        entropy: Arc<dyn EntropySource>,
        clock: Clock,
        accepting: bool,
    ) -> Result<KeyStore, StoreError> {
        let path = dir.file(KEYSTORE_DB);
        let shown = path.display().to_string();
        let db_error = |source| StoreError::Database {
            path: shown.clone(),
            source,
        };
        let secrets = StoreSecrets::derive(root).map_err(|e| db_error(DbError::Corrupt(e)))?;
        let (mut db, created) = Database::open(&path).map_err(db_error)?;
        // A store whose creation was cut off (kill -9, power loss) after
        // its schema and before its first stamp holds nothing: it is made
        // anew rather than refused with advice to restore a backup that
        // never existed.
        let created = created || db.never_stamped().map_err(db_error)?;
        let root_check = root.check_value();
        match db.meta(ROOT_KEY_CHECK).map_err(db_error)? {
            Some(store_check) if store_check != root_check => {
                return Err(StoreError::WrongRootKey {
                    path: shown,
                    store_check,
                    root_check,
                });
            }
            Some(_) => {}
            None if created => db.set_meta(ROOT_KEY_CHECK, &root_check).map_err(db_error)?,
            None => {
                return Err(StoreError::Tampered {
                    path: shown,
                    key: "(none)".to_string(),
                    detail: "table meta lacks the root key check value".to_string(),
                });
            }
        }
        let (key_rows, version_rows) = db.load().map_err(db_error)?;
        // `bound_rows`: some key row is MACed as part of a bound store.
        let (keys, bound_rows) = load_keys(&shown, &secrets, key_rows, version_rows)?;
        let sealed = load_secrets(&shown, &secrets, db.load_secrets().map_err(db_error)?)?;
        let stored_clock = db.meta(DAEMON_CLOCK).map_err(db_error)?;
        // A new store records its daemon clock at once, so that only a
        // deleted row (or a store from before the clock) lacks one.
        let daemon_clock_missing = !created && stored_clock.is_none();
        let daemon_clock = load_daemon_clock(&shown, &secrets, stored_clock)?;
        if created {
            db.set_meta(DAEMON_CLOCK, &daemon_clock_row(&secrets, 0))
                .map_err(db_error)?;
        }
        let auth_name = SecretName::RollbackAuth.as_str();
        let auth =
            match sealed.get(auth_name) {
                Some(value) => Some(secrets.open_secret(auth_name, value).map_err(|_| {
                    StoreError::Tampered {
                        path: shown.clone(),
                        key: format!("(secret {auth_name:?})"),
                        detail: "does not open under the root key".to_string(),
                    }
                })?),
                None => None,
            };
        let binding = rollback::load_binding(
            &shown,
            db.meta(rollback::ROLLBACK_META).map_err(db_error)?,
            auth.as_deref().map(Vec::as_slice),
            &keys,
            bound_rows,
            accepting,
        )?;
        entropy.start();
        let store = KeyStore {
            keys: ArcSwap::from_pointee(keys),
            writer: Mutex::new(Writer {
                db,
                secrets,
                rollback: binding.row,
                rollback_key: binding.key,
                fresh: created,
                rollback_problem: binding.problem,
                sealed,
            }),
            entropy,
            sink: std::sync::OnceLock::new(),
            path,
            rollback: rollback::Rollback::default(),
            root_key_check: ArcSwap::from_pointee(root_check),
            rotation: Mutex::new(()),
            clock,
            daemon_clock: AtomicU64::new(daemon_clock),
            daemon_clock_missing,
        };
        if let Some(row) = binding.row {
            store.rollback.opened(&row);
        }
        Ok(store)
    }
}

impl KeyStore {
    /// The root key check value `keystore.db` in `dir` records, read
    /// without any key: `None` when there is no store. What decides, at a
    /// start after an interrupted root-key rotation, which root key is in
    /// force. Opening the database rolls back a transaction a crash cut
    /// short, so the value is the committed one.
    pub fn recorded_root_key_check(dir: &StateDir) -> Result<Option<String>, StoreError> {
        if !dir.contains(KEYSTORE_DB) {
            return Ok(None);
        }
        let path = dir.file(KEYSTORE_DB);
        let db_error = |source| StoreError::Database {
            path: path.display().to_string(),
            source,
        };
        let (db, _) = Database::open(&path).map_err(db_error)?;
        db.meta(ROOT_KEY_CHECK).map_err(db_error)
    }
}

/// Reads and verifies the daemon clock (`meta` entry [`DAEMON_CLOCK`],
/// "v1 SECONDS MAC"): 0 when the store has none yet.
fn load_daemon_clock(
    path: &str,
    secrets: &StoreSecrets,
    stored: Option<String>,
) -> Result<u64, StoreError> {
    let Some(text) = stored else {
        return Ok(0);
    };
    let tampered = |detail: &str| StoreError::Tampered {
        path: path.to_string(),
        key: "(daemon clock)".to_string(),
        detail: detail.to_string(),
    };
    let fields: Vec<&str> = text.split(' ').collect();
    let ["v1", seconds, mac] = fields.as_slice() else {
        return Err(tampered("is not in the form hostkmsd writes"));
    };
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| tampered("is not a number of seconds"))?;
    let mac = rollback::unhex(mac).ok_or_else(|| tampered("has a MAC that is not hex"))?;
    if !secrets.row_mac_matches(&daemon_clock_canonical(seconds), &mac) {
        return Err(tampered("fails authentication under the root key"));
    }
    Ok(seconds)
}

/// Verifies every row of `secrets` and keeps them sealed, by name: each is
/// opened only when asked for.
fn load_secrets(
    path: &str,
    secrets: &StoreSecrets,
    rows: Vec<Stored<SecretRow>>,
) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut sealed = BTreeMap::new();
    for Stored { row, mac } in rows {
        if !secrets.row_mac_matches(&row.canonical(), &mac) {
            return Err(StoreError::Tampered {
                path: path.to_string(),
                key: format!("(secret {:?})", row.name),
                detail: "fails authentication under the root key".to_string(),
            });
        }
        sealed.insert(row.name, row.sealed);
    }
    Ok(sealed)
}

/// Verifies and assembles every key from its rows; also says whether any
/// key row carries the label of a store bound to a rollback counter.
fn load_keys(
    path: &str,
    secrets: &StoreSecrets,
    key_rows: Vec<Stored<KeyRow>>,
    version_rows: Vec<Stored<VersionRow>>,
) -> Result<(Keys, bool), StoreError> {
    let tampered = |row: &KeyRow, detail: String| StoreError::Tampered {
        path: path.to_string(),
        key: format!("\"{}\" (id {})", row.name, row.id),
        detail,
    };
    let mut versions_by_key: HashMap<KeyId, Vec<Stored<VersionRow>>> = HashMap::new();
    for stored in version_rows {
        versions_by_key
            .entry(stored.row.key_id)
            .or_default()
            .push(stored);
    }
    let mut keys = Keys::default();
    let mut bound_rows = false;
    for Stored { row, mac } in key_rows {
        let Some(bound) = [true, false]
            .into_iter()
            .find(|bound| secrets.row_mac_matches(&row.canonical_as(*bound), &mac))
        else {
            return Err(tampered(
                &row,
                "fails authentication under the root key".to_string(),
            ));
        };
        bound_rows |= bound;
        let Some(key_type) = super::model::key_type_of(row.key_type) else {
            return Err(tampered(
                &row,
                format!("has an unknown key type {}", row.key_type),
            ));
        };
        let state = match row.state {
            0 => KeyState::Enabled,
            1 => KeyState::Disabled,
            2 => KeyState::Revoked,
            3 => KeyState::PendingDeletion,
            other => return Err(tampered(&row, format!("has an unknown state {other}"))),
        };
        let deletion_due = match (row.deletion_due_wall, row.deletion_due_elapsed) {
            (Some(wall), Some(elapsed)) => Some(DeletionDue { wall, elapsed }),
            (None, None) => None,
            _ => return Err(tampered(&row, "has half a deletion date".to_string())),
        };
        if (state == KeyState::PendingDeletion) != deletion_due.is_some() {
            return Err(tampered(
                &row,
                "has a state and a deletion date that disagree".to_string(),
            ));
        }
        let tags = metadata::decode_tags(&row.tags).map_err(|e| tampered(&row, e))?;
        metadata::check_settings(&row.description, &tags, row.rotation_period)
            .map_err(|e| tampered(&row, format!("breaks a limit: {e}")))?;
        let mut stored_versions = versions_by_key.remove(&row.id).unwrap_or_default();
        stored_versions.sort_by_key(|v| v.row.version);
        let numbers: Vec<u32> = stored_versions.iter().map(|v| v.row.version).collect();
        let expected: Vec<u32> = (1..=row.latest_version).collect();
        if numbers != expected {
            return Err(tampered(
                &row,
                format!(
                    "lists versions 1 to {} but the store holds {numbers:?}",
                    row.latest_version
                ),
            ));
        }
        if !(1..=row.latest_version).contains(&row.min_decryption_version) {
            return Err(tampered(
                &row,
                "has an impossible minimum decryption version".to_string(),
            ));
        }
        let mut versions = Vec::with_capacity(stored_versions.len());
        for Stored { row: version, mac } in stored_versions {
            let which =
                |detail: &str| tampered(&row, format!("version {}: {detail}", version.version));
            if !secrets.row_mac_matches(&version.canonical(), &mac) {
                return Err(which("fails authentication under the root key"));
            }
            let kek = match (version.state, &version.sealed_kek) {
                (0, Some(sealed)) => {
                    let material = secrets
                        .open_kek(row.id, version.version, sealed)
                        .map_err(|_| which("its KEK does not open under the root key"))?;
                    let sealed: [u8; SEALED_KEK_LEN] = sealed
                        .as_slice()
                        .try_into()
                        .map_err(|_| which("its sealed KEK has the wrong length"))?;
                    let key = VersionKey::from_seed(key_type, &material)
                        .map_err(|e| which(&format!("its secret does not load: {e}")))?;
                    Some((key, sealed))
                }
                (1, None) => None,
                _ => return Err(which("its state and KEK disagree")),
            };
            if state == KeyState::Revoked && kek.is_some() {
                return Err(which("is live in a revoked key"));
            }
            let (key, sealed) = kek.map_or((None, None), |(k, s)| (Some(k), Some(s)));
            let public_key = super::model::checked_public_key(
                key_type,
                key.as_ref(),
                version.public_key.as_deref(),
            )
            .map_err(which)?;
            versions.push(Arc::new(Version {
                number: version.version,
                created: version.created,
                key,
                public_key,
                sealed: Mutex::new(sealed),
                encryptions: AtomicU64::new(version.encryptions_reserved),
                reserved: AtomicU64::new(version.encryptions_reserved),
                limit_alerted: AtomicBool::new(false),
            }));
        }
        if keys.by_name(&row.name).is_some() || keys.by_id(row.id).is_some() {
            return Err(tampered(&row, "appears twice".to_string()));
        }
        keys.insert(Arc::new(Key {
            id: row.id,
            name: row.name,
            created: row.created,
            key_type,
            state,
            min_decryption_version: row.min_decryption_version,
            versions,
            description: row.description,
            tags,
            rotation_period: row.rotation_period,
            deletion_due,
        }));
    }
    if let Some((id, _)) = versions_by_key.into_iter().next() {
        return Err(StoreError::Tampered {
            path: path.to_string(),
            key: format!("id {id}"),
            detail: "has versions but no key row".to_string(),
        });
    }
    Ok((keys, bound_rows))
}
