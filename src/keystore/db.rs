//! The key store's SQLite file: schema, rows, and their canonical encodings
//! (what the row MACs cover).
//!
//! Durability: rollback journal with `synchronous=FULL`, so a committed
//! transaction survives a crash; `secure_delete=ON`, so revoked KEKs are
//! overwritten in place rather than left in free pages.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use crate::envelope::KeyId;

/// The `meta` entry holding the check value of the root key the store is
/// sealed under.
pub const ROOT_KEY_CHECK: &str = "root_key_check";

/// Schema version written in the `meta` table.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE keys (
    id                     BLOB PRIMARY KEY CHECK (length(id) = 16),
    name                   TEXT NOT NULL UNIQUE,
    created                INTEGER NOT NULL,
    state                  INTEGER NOT NULL,
    latest_version         INTEGER NOT NULL,
    min_decryption_version INTEGER NOT NULL,
    mac                    BLOB NOT NULL
);
CREATE TABLE versions (
    key_id               BLOB NOT NULL REFERENCES keys(id),
    version              INTEGER NOT NULL,
    created              INTEGER NOT NULL,
    state                INTEGER NOT NULL,
    encryptions_reserved INTEGER NOT NULL,
    sealed_kek           BLOB,
    mac                  BLOB NOT NULL,
    PRIMARY KEY (key_id, version)
);
";

/// The key-type column (issue 11): 0 for AES-256-GCM, every key a store
/// made before it; see [`KeyRow::key_type`]. Added to schema 1 in place.
const KEY_TYPE_COLUMN: &str = "ALTER TABLE keys ADD COLUMN key_type INTEGER NOT NULL DEFAULT 0";

/// The public-key column (issue 11): a signing version's public key
/// (SubjectPublicKeyInfo DER, in clear: it is public), kept when the
/// version is revoked; NULL for AES and HMAC versions and every row made
/// before it. See [`VersionRow::public_key`]. Added to schema 1 in place.
const PUBLIC_KEY_COLUMN: &str = "ALTER TABLE versions ADD COLUMN public_key BLOB";

/// The key fields of issue 12, added to schema 1 in place, in one
/// transaction: a description and tags (see [`super::metadata`]), the
/// rotation period, and a pending deletion's due date (wall clock and
/// daemon clock). Rows made before them hold the defaults (empty, NULL) and
/// keep their MAC encoding; see [`KeyRow::canonical_as`].
const LIFECYCLE_COLUMNS: &str = "
ALTER TABLE keys ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE keys ADD COLUMN tags BLOB NOT NULL DEFAULT x'';
ALTER TABLE keys ADD COLUMN rotation_period INTEGER;
ALTER TABLE keys ADD COLUMN deletion_due_wall INTEGER;
ALTER TABLE keys ADD COLUMN deletion_due_elapsed INTEGER;
";

/// The `meta` entry holding the daemon clock: the seconds the daemon has
/// measured passing, across runs, and its MAC ([`daemon_clock_canonical`]).
pub const DAEMON_CLOCK: &str = "daemon_clock";

/// The bytes the daemon clock's MAC covers.
pub fn daemon_clock_canonical(seconds: u64) -> Vec<u8> {
    let mut out = b"hostkms daemon clock v1".to_vec();
    out.extend_from_slice(&seconds.to_be_bytes());
    out
}

/// The `secrets` table: secrets the daemon keeps besides keys (the recovery
/// bundle identity, the transport key, the NV counter's authorization),
/// each sealed under the root key. Added to schema 1 in place: a daemon
/// that predates it ignores the table.
const SECRETS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS secrets (
    name   TEXT PRIMARY KEY,
    sealed BLOB NOT NULL,
    mac    BLOB NOT NULL
);
";

/// A row of `secrets` as stored: a secret sealed under the root key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// The secret's name ([`super::SecretName::as_str`]).
    pub name: String,
    /// nonce ‖ AES-256-GCM(secret) ‖ tag.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretRow({:?}, {} sealed bytes)",
            self.name,
            self.sealed.len()
        )
    }
}

impl SecretRow {
    /// The bytes the row's MAC covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = b"hostkms secret row v1".to_vec();
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.sealed);
        out
    }
}

/// A row of `keys` as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Random key id.
    pub id: KeyId,
    /// Key name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// 0 enabled, 1 disabled, 2 revoked.
    pub state: u8,
    /// Newest version.
    pub latest_version: u32,
    /// Lowest version that unwraps.
    pub min_decryption_version: u32,
    /// The key's type, by its wire index ([`agent_proto::KeyType::ALL`]):
    /// 0 (AES-256-GCM) for every key made before types existed.
    pub key_type: u8,
    /// Free text for humans; empty for every key made before it existed.
    pub description: String,
    /// The tags, encoded ([`super::metadata::encode_tags`]); empty for none.
    pub tags: Vec<u8>,
    /// Seconds between rotations by age; `None`: never by age.
    pub rotation_period: Option<u64>,
    /// A pending deletion's wall-clock date, Unix seconds (state 3 only).
    pub deletion_due_wall: Option<u64>,
    /// A pending deletion's daemon-clock target (state 3 only).
    pub deletion_due_elapsed: Option<u64>,
}

impl KeyRow {
    /// The bytes the row's MAC covers in a store not (yet) bound to a
    /// rollback counter: every field, fixed-width or length-prefixed.
    #[cfg(test)]
    pub fn canonical(&self) -> Vec<u8> {
        self.canonical_as(false)
    }

    /// The bytes the row's MAC covers; `bound`: the store is bound to a
    /// rollback counter, and the row says so under its own label ("hostkms
    /// key row v1 bound"), so a bound store cannot pass for an unbound one
    /// without the root key.
    ///
    /// An AES-256-GCM key's row is encoded as before types existed (label
    /// "v1"), so existing stores verify unchanged; any other type's row is
    /// labelled "v2" and ends with the type, so no row's type can be
    /// changed without the root key. A row with any field of issue 12 (a
    /// description, tags, a rotation period, a deletion due) is labelled
    /// "v3" and ends with the type and every one of those fields, so none
    /// can be changed, added or stripped without the root key; a row
    /// without them keeps its "v1" or "v2" encoding.
    pub fn canonical_as(&self, bound: bool) -> Vec<u8> {
        let extended = !self.description.is_empty()
            || !self.tags.is_empty()
            || self.rotation_period.is_some()
            || self.deletion_due_wall.is_some()
            || self.deletion_due_elapsed.is_some();
        let typed = self.key_type != 0 || extended;
        let mut out = match (extended, typed, bound) {
            (true, _, false) => b"hostkms key row v3".to_vec(),
            (true, _, true) => b"hostkms key row v3 bound".to_vec(),
            (false, false, false) => b"hostkms key row v1".to_vec(),
            (false, false, true) => b"hostkms key row v1 bound".to_vec(),
            (false, true, false) => b"hostkms key row v2".to_vec(),
            (false, true, true) => b"hostkms key row v2 bound".to_vec(),
        };
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.created.to_be_bytes());
        out.push(self.state);
        out.extend_from_slice(&self.latest_version.to_be_bytes());
        out.extend_from_slice(&self.min_decryption_version.to_be_bytes());
        if typed {
            out.push(self.key_type);
        }
        if extended {
            out.extend_from_slice(&(self.description.len() as u32).to_be_bytes());
            out.extend_from_slice(self.description.as_bytes());
            out.extend_from_slice(&(self.tags.len() as u32).to_be_bytes());
            out.extend_from_slice(&self.tags);
            for value in [
                self.rotation_period,
                self.deletion_due_wall,
                self.deletion_due_elapsed,
            ] {
                match value {
                    Some(value) => {
                        out.push(1);
                        out.extend_from_slice(&value.to_be_bytes());
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }
}

/// A row of `versions` as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// The key it belongs to.
    pub key_id: KeyId,
    /// Version number, from 1.
    pub version: u32,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// 0 enabled, 1 revoked.
    pub state: u8,
    /// An upper bound of the encryptions this version has made, persisted
    /// before they are made, so a crash never undercounts.
    pub encryptions_reserved: u64,
    /// The KEK sealed under the root key; `None` once revoked.
    pub sealed_kek: Option<Vec<u8>>,
    /// A signing version's public key (SubjectPublicKeyInfo DER), kept
    /// after revocation; `None` for AES and HMAC versions.
    pub public_key: Option<Vec<u8>>,
}

impl VersionRow {
    /// The bytes the row's MAC covers. A row without a public key (every
    /// AES and HMAC version, every row made before public keys were kept)
    /// is encoded as before (label "v1"), so existing stores verify
    /// unchanged; a row with one is labelled "v2" and ends with it,
    /// length-prefixed, so no public key can be swapped, added or removed
    /// without the root key.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = if self.public_key.is_some() {
            b"hostkms version row v2".to_vec()
        } else {
            b"hostkms version row v1".to_vec()
        };
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.created.to_be_bytes());
        out.push(self.state);
        out.extend_from_slice(&self.encryptions_reserved.to_be_bytes());
        let sealed = self.sealed_kek.as_deref().unwrap_or_default();
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(sealed);
        if let Some(public_key) = &self.public_key {
            out.extend_from_slice(&(public_key.len() as u32).to_be_bytes());
            out.extend_from_slice(public_key);
        }
        out
    }
}

/// A row and its MAC, as read.
#[derive(Debug, Clone)]
pub struct Stored<R> {
    /// The row.
    pub row: R,
    /// Its MAC as stored.
    pub mac: Vec<u8>,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value is outside what hostkms ever writes.
    #[error("{0}")]
    Corrupt(String),
    /// The file (or its journal) is not one hostkmsd trusts: a link, not a
    /// regular file, or another user's.
    #[error("{0}")]
    Untrusted(#[from] crate::state_dir::StateDirError),
}

/// The open key-store database.
#[derive(Debug)]
pub struct Database {
    conn: Connection,
}

fn column_u64(value: i64, what: &str) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|_| DbError::Corrupt(format!("{what} is negative ({value})")))
}

fn column_opt_u64(value: Option<i64>, what: &str) -> Result<Option<u64>, DbError> {
    value.map(|value| column_u64(value, what)).transpose()
}

fn column_i64(value: Option<u64>, what: &str) -> Result<Option<i64>, DbError> {
    value
        .map(|value| {
            i64::try_from(value).map_err(|_| DbError::Corrupt(format!("{what} beyond 2^63")))
        })
        .transpose()
}

fn column_u32(value: i64, what: &str) -> Result<u32, DbError> {
    u32::try_from(value).map_err(|_| DbError::Corrupt(format!("{what} is out of range ({value})")))
}

fn column_u8(value: i64, what: &str) -> Result<u8, DbError> {
    u8::try_from(value).map_err(|_| DbError::Corrupt(format!("{what} is out of range ({value})")))
}

fn column_id(bytes: Vec<u8>) -> Result<KeyId, DbError> {
    <[u8; 16]>::try_from(bytes.as_slice())
        .map(KeyId)
        .map_err(|_| DbError::Corrupt(format!("a key id is {} bytes, not 16", bytes.len())))
}

impl Database {
    /// Whether the store holds nothing but its schema: no row in `meta`
    /// beside the schema version (no root key check value, no clock), and
    /// no key, version or secret. What a creation cut off before its first
    /// stamp leaves.
    pub fn never_stamped(&self) -> Result<bool, DbError> {
        Ok(self.conn.query_row(
            "SELECT (SELECT count(*) FROM meta WHERE name != 'schema_version') = 0
                AND (SELECT count(*) FROM keys) = 0
                AND (SELECT count(*) FROM versions) = 0
                AND (SELECT count(*) FROM secrets) = 0",
            [],
            |row| row.get(0),
        )?)
    }

    /// Opens `path`, creating the file (mode 0600) and schema if absent.
    /// Returns the database and whether it was just created. An existing
    /// file, and a hot journal next to it, must pass the state dir's checks
    /// ([`crate::state_dir::open_private`]); SQLite then opens it with
    /// `SQLITE_OPEN_NOFOLLOW`, so a link swapped in between is refused too.
    pub fn open(path: &Path) -> Result<(Database, bool), DbError> {
        // A dangling link counts as existing, and is refused below.
        let fresh = std::fs::symlink_metadata(path).is_err();
        if !fresh {
            crate::state_dir::open_private(path, true)?;
        }
        let mut journal = path.as_os_str().to_owned();
        journal.push("-journal");
        if std::fs::symlink_metadata(&journal).is_ok() {
            crate::state_dir::open_private(Path::new(&journal), true)?;
        }
        if fresh {
            // Created 0600 before SQLite opens it, whatever the umask.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| DbError::Corrupt(format!("cannot create {}: {e}", path.display())))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Database { conn };
        let has_schema: bool = db.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |row| row.get(0),
        )?;
        if !has_schema {
            let tx = db.conn.transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )?;
            tx.commit()?;
        }
        db.conn.execute_batch(SECRETS_SCHEMA)?;
        let has_key_type: bool = db.conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('keys') WHERE name = 'key_type'",
            [],
            |row| row.get(0),
        )?;
        if !has_key_type {
            db.conn.execute_batch(KEY_TYPE_COLUMN)?;
        }
        let has_public_key: bool = db.conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('versions') WHERE name = 'public_key'",
            [],
            |row| row.get(0),
        )?;
        if !has_public_key {
            db.conn.execute_batch(PUBLIC_KEY_COLUMN)?;
        }
        let has_lifecycle: bool = db.conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('keys') WHERE name = 'description'",
            [],
            |row| row.get(0),
        )?;
        if !has_lifecycle {
            let tx = db.conn.transaction()?;
            tx.execute_batch(LIFECYCLE_COLUMNS)?;
            tx.commit()?;
        }
        let version = db.meta("schema_version")?;
        if version.as_deref() != Some("1") {
            return Err(DbError::Corrupt(format!(
                "schema version {} is not one this hostkmsd reads (1)",
                version.as_deref().unwrap_or("(none)")
            )));
        }
        Ok((db, fresh || !has_schema))
    }

    /// A value of the `meta` table.
    pub fn meta(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Sets a value of the `meta` table.
    pub fn set_meta(&mut self, name: &str, value: &str) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    /// Every key row and every version row.
    #[allow(clippy::type_complexity)]
    pub fn load(&self) -> Result<(Vec<Stored<KeyRow>>, Vec<Stored<VersionRow>>), DbError> {
        let mut keys = Vec::new();
        let mut statement = self.conn.prepare(
            "SELECT id, name, created, state, latest_version, min_decryption_version, mac, key_type,
                 description, tags, rotation_period, deletion_due_wall, deletion_due_elapsed
             FROM keys",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            keys.push(Stored {
                row: KeyRow {
                    id: column_id(row.get(0)?)?,
                    name: row.get(1)?,
                    created: column_u64(row.get(2)?, "a key's creation time")?,
                    state: column_u8(row.get(3)?, "a key's state")?,
                    latest_version: column_u32(row.get(4)?, "a key's latest version")?,
                    min_decryption_version: column_u32(
                        row.get(5)?,
                        "a key's minimum decryption version",
                    )?,
                    key_type: column_u8(row.get(7)?, "a key's type")?,
                    description: row.get(8)?,
                    tags: row.get(9)?,
                    rotation_period: column_opt_u64(row.get(10)?, "a key's rotation period")?,
                    deletion_due_wall: column_opt_u64(row.get(11)?, "a key's deletion date")?,
                    deletion_due_elapsed: column_opt_u64(
                        row.get(12)?,
                        "a key's deletion daemon-clock target",
                    )?,
                },
                mac: row.get(6)?,
            });
        }
        let mut versions = Vec::new();
        let mut statement = self.conn.prepare(
            "SELECT key_id, version, created, state, encryptions_reserved, sealed_kek, mac,
                 public_key
             FROM versions ORDER BY key_id, version",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            versions.push(Stored {
                row: VersionRow {
                    key_id: column_id(row.get(0)?)?,
                    version: column_u32(row.get(1)?, "a version number")?,
                    created: column_u64(row.get(2)?, "a version's creation time")?,
                    state: column_u8(row.get(3)?, "a version's state")?,
                    encryptions_reserved: column_u64(row.get(4)?, "a version's encryption count")?,
                    sealed_kek: row.get(5)?,
                    public_key: row.get(7)?,
                },
                mac: row.get(6)?,
            });
        }
        Ok((keys, versions))
    }

    /// Every row of `secrets`.
    pub fn load_secrets(&self) -> Result<Vec<Stored<SecretRow>>, DbError> {
        let mut statement = self
            .conn
            .prepare("SELECT name, sealed, mac FROM secrets ORDER BY name")?;
        let mut rows = statement.query([])?;
        let mut secrets = Vec::new();
        while let Some(row) = rows.next()? {
            secrets.push(Stored {
                row: SecretRow {
                    name: row.get(0)?,
                    sealed: row.get(1)?,
                },
                mac: row.get(2)?,
            });
        }
        Ok(secrets)
    }

    /// Runs `change` in one transaction, committed (and synced) only when it
    /// succeeds.
    pub fn transaction<T>(
        &mut self,
        change: impl FnOnce(&Transaction<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let tx = self.conn.transaction()?;
        let value = change(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

/// Sets a value of the `meta` table within a transaction.
pub fn put_meta(tx: &Transaction<'_>, name: &str, value: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

/// Inserts or replaces a key row.
pub fn put_key(tx: &Transaction<'_>, row: &KeyRow, mac: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO keys (id, name, created, state, latest_version, min_decryption_version, mac,
             key_type, description, tags, rotation_period, deletion_due_wall,
             deletion_due_elapsed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, created = excluded.created,
             state = excluded.state, latest_version = excluded.latest_version,
             min_decryption_version = excluded.min_decryption_version, mac = excluded.mac,
             key_type = excluded.key_type, description = excluded.description,
             tags = excluded.tags, rotation_period = excluded.rotation_period,
             deletion_due_wall = excluded.deletion_due_wall,
             deletion_due_elapsed = excluded.deletion_due_elapsed",
        params![
            row.id.0.as_slice(),
            row.name,
            row.created as i64,
            row.state,
            row.latest_version,
            row.min_decryption_version,
            mac,
            row.key_type,
            row.description,
            row.tags,
            column_i64(row.rotation_period, "a rotation period")?,
            column_i64(row.deletion_due_wall, "a deletion date")?,
            column_i64(row.deletion_due_elapsed, "a deletion daemon-clock target")?
        ],
    )?;
    Ok(())
}

/// Inserts or replaces a version row.
pub fn put_version(tx: &Transaction<'_>, row: &VersionRow, mac: &[u8]) -> Result<(), DbError> {
    let reserved = i64::try_from(row.encryptions_reserved)
        .map_err(|_| DbError::Corrupt("an encryption count beyond 2^63".to_string()))?;
    tx.execute(
        "INSERT INTO versions (key_id, version, created, state, encryptions_reserved, sealed_kek, mac,
             public_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (key_id, version) DO UPDATE SET created = excluded.created,
             state = excluded.state, encryptions_reserved = excluded.encryptions_reserved,
             sealed_kek = excluded.sealed_kek, mac = excluded.mac,
             public_key = excluded.public_key",
        params![
            row.key_id.0.as_slice(),
            row.version,
            row.created as i64,
            row.state,
            reserved,
            row.sealed_kek,
            mac,
            row.public_key
        ],
    )?;
    Ok(())
}

/// Inserts or replaces a secret row.
pub fn put_secret(tx: &Transaction<'_>, row: &SecretRow, mac: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO secrets (name, sealed, mac) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, mac = excluded.mac",
        params![row.name, row.sealed, mac],
    )?;
    Ok(())
}
