//! Why a key-store operation failed: [`StoreError`].

use super::db::DbError;
use crate::rootkey::RootKeyError;
use crate::rootkey::{NEXT_RECORD, RECORD};
use crate::state_dir::KEYSTORE_DB;
use crate::tpm::TpmError;

/// Why a key-store operation failed. Names a peer sent are shown quoted and
/// escaped (`{:?}`), so a control character in one cannot forge output.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key has that name.
    #[error("no key named {0:?}")]
    KeyNotFound(String),
    /// The name is taken (names are never reused, even after revocation).
    #[error("a key named {0:?} exists already; key names are never reused, even after revocation")]
    KeyExists(String),
    /// The key is revoked for good.
    #[error("key {0:?} is revoked")]
    KeyRevoked(String),
    /// The key is pending deletion: it cannot be used, rotated, enabled or
    /// disabled until the deletion is cancelled.
    #[error(
        "key {name:?} is scheduled for deletion on {} (at the earliest): it cannot be used or changed until the deletion is cancelled. If it is still needed, an admin (or a peer granted cancel-deletion) can cancel it with `hostkms cancel-deletion {name}`; it then stays disabled until enabled",
        agent_proto::date::rfc3339(*due_wall)
    )]
    KeyPendingDeletion {
        /// The key.
        name: String,
        /// When it is deleted (wall clock), Unix seconds.
        due_wall: u64,
    },
    /// A pending deletion is not due yet on one of the two clocks.
    #[error(
        "key {name:?} is not due for deletion yet: its date is {} and the daemon must still measure {elapsed_left} seconds of its waiting period",
        agent_proto::date::rfc3339(*due_wall)
    )]
    DeletionNotDue {
        /// The key.
        name: String,
        /// Its deletion date (wall clock), Unix seconds.
        due_wall: u64,
        /// Seconds the daemon clock still lacks (0 when only the date lacks).
        elapsed_left: u64,
    },
    /// The key has no such version.
    #[error("key {key:?} has no version {version}; its versions are 1 to {latest}")]
    VersionNotFound {
        /// The key.
        key: String,
        /// The version asked for.
        version: u32,
        /// The newest version.
        latest: u32,
    },
    /// An imported key clashes with this store's keys (a name held by
    /// another id, or different material for a version both have).
    #[error("{0}")]
    ImportRefused(String),
    /// A value of the request is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The version changed (was revoked) while a request was using it.
    #[error("key {0:?} changed while the request was using it")]
    Changed(String),
    /// A row fails authentication or is inconsistent: edited outside hostkms.
    #[error(
        "{path}: the row of key {key} {detail}; the key store was changed outside hostkms. hostkmsd will not trust it: restore {KEYSTORE_DB} from backup"
    )]
    Tampered {
        /// The key store file.
        path: String,
        /// The key, by name and id as stored.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The store was written under a different root key.
    #[error(
        "{path} was written under root key {store_check}, but the unsealed root key is {root_check}: the key store and the sealed root key ({RECORD} and the copies it names) do not belong together. Restore them together from one backup"
    )]
    WrongRootKey {
        /// The key store file.
        path: String,
        /// The check value recorded in the store.
        store_check: String,
        /// The check value of the unsealed root key.
        root_check: String,
    },
    /// The store's binding to its TPM counter refuses it: a rollback or a
    /// deletion was detected, or the counter is unusable.
    #[error(transparent)]
    Rollback(#[from] super::rollback::RollbackError),
    /// SQLite failed.
    #[error("key store {path}: {source}")]
    Database {
        /// The key store file.
        path: String,
        /// Why.
        source: DbError,
    },
    /// The TPM could not supply randomness for a new KEK.
    #[error("cannot draw TPM randomness for a new key version: {0}")]
    Tpm(#[from] TpmError),
    /// The operating system's RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// A new root key could not be sealed for a rotation; the old one
    /// stays in force.
    #[error("cannot rotate the root key: {0}; the root key in force is unchanged")]
    RootKey(Box<RootKeyError>),
    /// A root-key rotation is already running.
    #[error("a root-key rotation is already running; wait for it to finish")]
    RotationRunning,
    /// The store committed to the new root key, but its blobs could not be
    /// renamed into place.
    #[error(
        "the key store is re-sealed under the new root key {new_check} (was {old_check}), which is in force, but its sealed copies could not be put in force: {source}. Leave {NEXT_RECORD} and the copies it names where they are: the next start of hostkmsd finishes the rotation"
    )]
    RootKeyNotInPlace {
        /// The check value of the root key that was in force.
        old_check: String,
        /// The check value of the root key now in force.
        new_check: String,
        /// Why the rename failed.
        source: Box<RootKeyError>,
    },
}
