//! Rollback-proof revocation: the key store bound to a TPM NV counter.
//!
//! The store records, in one row of `meta`, the
//! NV index of its counter ([`crate::tpm::NV_COUNTER_FIRST`]..), the value
//! `S` the counter must have, and a digest of every key's id, state and
//! minimum decryption version and every version's number and state. Every
//! change writes the row in its own transaction: a change that takes access
//! away (revoke, disable, minimum decryption version, a deletion scheduled
//! or done) or cancels a deletion (undoing it would destroy the key) with
//! `S + 1`, every other change with `S` and the new digest. After the commit, and never
//! under the writer lock or before the client's answer, a background thread
//! counts the TPM's counter up to `S` (read first, so never past it); while
//! the TPM is away the increments are pending, shown in `Status`.
//!
//! At start, after the rows are verified: a digest that does not match the
//! rows (a key or version deleted, or an older row put back) is refused by
//! the loader; then the counter `T` is read. `S == T`: fine. `S > T`:
//! increments a crash or a hung TPM held back, caught up (at most
//! [`MAX_CATCH_UP`]). `S < T`: an older copy of the store was put back,
//! refused until an operator runs `hostkmsd accept-rollback`. A counter
//! that is missing, has other attributes or refuses the store's
//! authorization value is refused, never defined again silently.
//!
//! The counter's authorization value is 32 random bytes kept as the sealed
//! secret [`SecretName::RollbackAuth`], so no other process with access to
//! the TPM can count it up and lock the daemon out. The row is MACed with a
//! key derived from that value (HKDF-SHA256): only a holder of the root key
//! can read it, so only the daemon can write a row that verifies, and a
//! root-key rotation, which re-seals the secret, leaves the row valid
//! without knowing of it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use agent_proto::{KeyState, KeyType, RollbackStatus};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use rusqlite::Transaction;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::db::DbError;
use super::{KeyStore, Keys, SecretName, StoreError};
use crate::tpm::{NV_AUTH_LEN, NvCounterError, Tcti, Tpm, TpmWorker};

/// The `meta` row that holds the binding.
pub(super) const ROLLBACK_META: &str = "rollback";

/// The most increments a start catches up on; a store further ahead of its
/// counter than this is refused (no crash or TPM outage leaves so many).
pub const MAX_CATCH_UP: u64 = 1024;

/// The most increments the running daemon lets pend while the TPM does not
/// count; beyond, changes that take access away are coalesced (see
/// [`KeyStore::next_rollback_row`]). Well below [`MAX_CATCH_UP`].
pub const MAX_PENDING: u64 = 64;

/// The key that MACs the binding row: HMAC-SHA256 under
/// HKDF-SHA256(the counter's authorization value, salt "hostkms rollback
/// v1", info "row mac").
#[derive(Clone)]
pub(super) struct RowKey(Hmac<Sha256>);

impl std::fmt::Debug for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowKey(<redacted>)")
    }
}

impl RowKey {
    /// The row key of a counter whose authorization value is `auth`.
    pub(super) fn derive(auth: &[u8]) -> Result<RowKey, StoreError> {
        let hkdf = Hkdf::<Sha256>::new(Some(b"hostkms rollback v1"), auth);
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf.expand(b"row mac", key.as_mut())
            .map_err(|e| StoreError::Random(format!("cannot derive the rollback row key: {e}")))?;
        <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_ref())
            .map(RowKey)
            .map_err(|e| StoreError::Random(format!("cannot key the rollback row MAC: {e}")))
    }

    fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    fn matches(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }
}

/// The binding as recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackRow {
    /// The NV index of the store's counter.
    pub index: u32,
    /// The value the counter must have: `S`.
    pub counter: u64,
    /// The digest of every key and version ([`key_set_digest`]).
    pub digest: [u8; 32],
}

impl RollbackRow {
    /// The bytes the row's MAC covers.
    fn canonical(&self) -> Vec<u8> {
        let mut out = b"hostkms rollback row v1".to_vec();
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.digest);
        out
    }

    /// The row as stored in `meta`: "1 INDEX COUNTER DIGEST MAC", hex but
    /// for the counter, MACed under the row key.
    pub(super) fn encode(&self, key: &RowKey) -> String {
        format!(
            "1 {:08x} {} {} {}",
            self.index,
            self.counter,
            hex(&self.digest),
            hex(&key.mac(&self.canonical()))
        )
    }

    /// Reads a stored row and checks its MAC.
    pub(super) fn decode(text: &str, key: &RowKey) -> Result<RollbackRow, String> {
        let fields: Vec<&str> = text.split(' ').collect();
        let [version, index, counter, digest, mac] = fields.as_slice() else {
            return Err(format!("has {} fields, not 5", fields.len()));
        };
        if *version != "1" {
            return Err(format!(
                "has format {version:?}, which this hostkmsd does not read"
            ));
        }
        let index = u32::from_str_radix(index, 16).map_err(|_| "has a bad NV index".to_string())?;
        let counter = counter
            .parse::<u64>()
            .map_err(|_| "has a bad counter value".to_string())?;
        let digest: [u8; 32] = unhex(digest)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| "has a bad digest".to_string())?;
        let mac = unhex(mac).ok_or_else(|| "has a bad MAC".to_string())?;
        let row = RollbackRow {
            index,
            counter,
            digest,
        };
        if !key.matches(&row.canonical(), &mac) {
            return Err(
                "fails authentication under the key derived from the counter's authorization value"
                    .to_string(),
            );
        }
        Ok(row)
    }
}

/// Lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex; `None` for anything else.
pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// SHA-256 over every key, in name order (names are unique and never
/// change): its id, state and minimum decryption version, and each
/// version's number and state. A deleted key or version, or an older row
/// put back (a revoked version live again, a disabled key enabled, a lower
/// minimum version), changes it. A key of another type than AES-256-GCM
/// adds its type, and each of its versions its public key if it has one,
/// so a copy with a key's type or public key swapped is not the same
/// store; an AES key adds nothing, so the digests of stores made before
/// key types stay valid. A key pending deletion (state 3) adds its
/// deletion due (wall clock and daemon clock), so a copy with the deletion
/// moved later is not the same store either; a key without one adds
/// nothing, so digests made before deletions existed stay valid.
/// Description, tags and rotation period take no access away and are not
/// covered. Linear in the number of keys, like the snapshot
/// copy every change makes.
pub fn key_set_digest(keys: &Keys) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"hostkms key set v1");
    hash.update((keys.by_name.len() as u64).to_be_bytes());
    for key in keys.by_name.values() {
        let state: u8 = match key.state {
            KeyState::Enabled => 0,
            KeyState::Disabled => 1,
            KeyState::Revoked => 2,
            KeyState::PendingDeletion => 3,
        };
        hash.update(key.id.0);
        hash.update([state]);
        hash.update(key.min_decryption_version.to_be_bytes());
        hash.update(key.latest_version().to_be_bytes());
        if let Some(due) = key.deletion_due {
            hash.update(b"deletion due");
            hash.update(due.wall.to_be_bytes());
            hash.update(due.elapsed.to_be_bytes());
        }
        let typed = key.key_type != KeyType::Aes256Gcm;
        if typed {
            hash.update([super::model::key_type_index(key.key_type)]);
        }
        for version in &key.versions {
            hash.update(version.number.to_be_bytes());
            hash.update([u8::from(version.is_revoked())]);
            if typed {
                let public_key = version.public_key_der().unwrap_or_default();
                hash.update((public_key.len() as u32).to_be_bytes());
                hash.update(public_key);
            }
        }
    }
    hash.finalize().into()
}

/// Why the store's binding to its counter refuses the start.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The counter is ahead of the store: an older copy was put back.
    #[error(
        "a rollback was detected: {path} records counter {store} but the TPM's NV counter {index:#010x} is at {tpm}; an older copy of the state dir was put back, which may bring revoked keys back, or put a key whose deletion was cancelled back on its way to deletion. If you restored an old backup on purpose, run `hostkmsd accept-rollback --config FILE` (service stopped): it accepts this copy as it is, every version revoked after the copy was taken is live again until you revoke it again, and every deletion cancelled after it is scheduled again until you cancel it again. Otherwise put the newest keystore.db back"
    )]
    Behind {
        /// The key store file.
        path: String,
        /// The NV index.
        index: u32,
        /// `S`, recorded in the store.
        store: u64,
        /// `T`, read from the TPM.
        tpm: u64,
    },
    /// The rows do not match the recorded digest.
    #[error(
        "a deletion or rollback was detected: the keys and versions in {path} do not match the digest recorded with them; a key or version was deleted or replayed (an older row put back). Put the newest keystore.db back; if you want this store as it is, run `hostkmsd accept-rollback --config FILE` (service stopped)"
    )]
    Digest {
        /// The key store file.
        path: String,
    },
    /// The row itself is damaged or forged.
    #[error(
        "{path}: the rollback binding {detail}; the key store was changed outside hostkms. Put the newest keystore.db back, or run `hostkmsd accept-rollback --config FILE` (service stopped) to bind this store again"
    )]
    Row {
        /// The key store file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The store is much further ahead of its counter than any crash leaves it.
    #[error(
        "{path} records counter {store} but the TPM's NV counter {index:#010x} is at {tpm}: more than {MAX_CATCH_UP} increments behind, which neither a crash nor a TPM outage explains (the daemon never lets more than {MAX_PENDING} pend); the counter was probably replaced or the store was written by another program. Check the TPM, then run `hostkmsd accept-rollback --config FILE` (service stopped) to bind this store again"
    )]
    FarAhead {
        /// The key store file.
        path: String,
        /// The NV index.
        index: u32,
        /// `S`.
        store: u64,
        /// `T`.
        tpm: u64,
    },
    /// A store with keys but no binding, on a TPM that holds hostkms
    /// counters: its binding may have been removed to hide a rollback.
    #[error(
        "{path} holds keys but has no rollback binding, while this TPM holds hostkms rollback counters ({indices}): the binding may have been removed from an older copy of the store to hide a rollback. If this store was made by a hostkms from before rollback protection (or you accept it as it is), run `hostkmsd accept-rollback --config FILE` (service stopped) to bind it; otherwise put the newest keystore.db back"
    )]
    Unbound {
        /// The key store file.
        path: String,
        /// The hostkms counters the TPM holds.
        indices: String,
    },
    /// Key rows say the store was bound, but its binding row is gone.
    #[error(
        "{path} was bound to a TPM rollback counter (its key rows say so, under the root key) but its rollback binding has been removed from the file: an older copy of the store may have been put back with the binding deleted to hide the rollback. Put the newest keystore.db back; if you want this store as it is, run `hostkmsd accept-rollback --config FILE` (service stopped): every version revoked after the copy was taken is live again until you revoke it again"
    )]
    BindingRemoved {
        /// The key store file.
        path: String,
    },
    /// The store is bound but its counter's authorization value is gone.
    #[error(
        "{path} is bound to NV counter {index:#010x} but holds no authorization value for it; the key store was changed outside hostkms. Put the newest keystore.db back, or run `hostkmsd accept-rollback --config FILE` (service stopped) to bind this store to a new counter"
    )]
    AuthMissing {
        /// The key store file.
        path: String,
        /// The NV index.
        index: u32,
    },
    /// The counter cannot be used as it is.
    #[error("{path}: {source}. {}", counter_advice(.source))]
    Counter {
        /// The key store file.
        path: String,
        /// What is wrong with the counter.
        source: NvCounterError,
    },
    /// The TPM could not be asked.
    #[error("{path}: cannot check the key store's rollback counter: {source}")]
    Tpm {
        /// The key store file.
        path: String,
        /// The TPM failure.
        source: NvCounterError,
    },
}

/// What to do about a counter that cannot be used: a counter that is gone
/// or not ours is replaced by `accept-rollback`; a TPM with no room for a
/// new one needs room first (`accept-rollback` itself meets that error).
fn counter_advice(source: &NvCounterError) -> &'static str {
    match source {
        NvCounterError::Missing { .. }
        | NvCounterError::Attributes { .. }
        | NvCounterError::AuthFailed { .. } => {
            "Run `hostkmsd accept-rollback --config FILE` (service stopped) to bind this store to a new counter, once you are sure the store is the newest (a rollback would go unnoticed)"
        }
        _ => {
            "Once that is fixed, run the same command again (hostkmsd, or `hostkmsd accept-rollback --config FILE` if that is what failed)"
        }
    }
}

/// What the start check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackStart {
    /// A new store, or one from before the binding, bound to a new counter.
    Bound {
        /// The new counter's index.
        index: u32,
        /// Its first value.
        counter: u64,
        /// Whether the store existed already (it had no binding).
        existing: bool,
    },
    /// The store and its counter agree.
    Level {
        /// The index.
        index: u32,
        /// The value.
        counter: u64,
    },
    /// The counter was behind (crash after a commit) and was brought level.
    CaughtUp {
        /// The index.
        index: u32,
        /// The counter's value before.
        from: u64,
        /// Its value now.
        to: u64,
    },
}

/// What `accept-rollback` accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackAccepted {
    /// The binding found in the store, if it was readable.
    pub previous: Option<RollbackRow>,
    /// Why the store was refused (empty: it was not).
    pub problem: String,
    /// The counter's index now.
    pub index: u32,
    /// The counter's value now, recorded as the store's.
    pub counter: u64,
    /// Whether a new counter was defined (the old one was unusable).
    pub new_counter: bool,
}

/// The live binding, shared with the catch-up thread.
#[derive(Debug, Default)]
pub(super) struct Rollback {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    bound: AtomicBool,
    index: AtomicU32,
    /// `S`.
    target: AtomicU64,
    /// The counter's last known value `T`.
    level: AtomicU64,
    /// A problem with the counter retrying cannot fix, for `Status`.
    problem: Mutex<String>,
    /// Whether the catch-up thread runs; wakes it.
    running: Mutex<bool>,
    wake: Condvar,
}

impl Rollback {
    /// Records the binding as the store's row says (at open and after each change).
    pub(super) fn record(&self, row: &RollbackRow) {
        let shared = &self.shared;
        shared.index.store(row.index, Ordering::SeqCst);
        shared.target.fetch_max(row.counter, Ordering::SeqCst);
        shared.bound.store(true, Ordering::SeqCst);
        let _guard = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared.wake.notify_all();
    }

    /// Records the binding found when the store opened: until the start
    /// check reads the TPM, the counter is taken to be level with it.
    pub(super) fn opened(&self, row: &RollbackRow) {
        self.shared.level.fetch_max(row.counter, Ordering::SeqCst);
        self.record(row);
    }

    fn state(&self) -> RollbackStatus {
        let shared = &self.shared;
        let target = shared.target.load(Ordering::SeqCst);
        RollbackStatus {
            bound: shared.bound.load(Ordering::SeqCst),
            nv_index: shared.index.load(Ordering::SeqCst),
            store_counter: target,
            pending_increments: target.saturating_sub(shared.level.load(Ordering::SeqCst)),
            problem: shared
                .problem
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Waits until no increment is pending, or `wait` has passed; returns
    /// how many are still pending.
    fn settle(&self, wait: Duration) -> u64 {
        let shared = &self.shared;
        let deadline = std::time::Instant::now() + wait;
        let mut running = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            let pending = self.state().pending_increments;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if pending == 0 || !*running || left.is_zero() {
                return pending;
            }
            running = shared
                .wake
                .wait_timeout(running, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Starts the thread that counts the TPM's counter up to `S` after
    /// each change that took access away; the counter is at `level`.
    fn start_catch_up(
        &self,
        level: u64,
        auth: Zeroizing<Vec<u8>>,
        tpm: Arc<TpmWorker>,
        timeout: Duration,
    ) -> Result<(), std::io::Error> {
        let shared = Arc::clone(&self.shared);
        shared.level.store(level, Ordering::SeqCst);
        let mut running = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *running {
            return Ok(());
        }
        let thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("hostkmsd-nv".to_string())
            .spawn(move || catch_up(&thread, &auth, &tpm, timeout))?;
        *running = true;
        Ok(())
    }
}

/// Back-off between attempts while the TPM does not count.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The catch-up thread: whenever the counter is below `S`, counts it up
/// one at a time (each a TPM conversation that reads first, so never past
/// `S`), retrying with back-off while the TPM is away.
fn catch_up(shared: &Shared, auth: &Zeroizing<Vec<u8>>, tpm: &TpmWorker, timeout: Duration) {
    let mut backoff = RETRY_FIRST;
    let mut failing = false;
    loop {
        {
            let mut running = shared
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while shared.level.load(Ordering::SeqCst) >= shared.target.load(Ordering::SeqCst) {
                running = shared
                    .wake
                    .wait(running)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        let index = shared.index.load(Ordering::SeqCst);
        let target = shared.target.load(Ordering::SeqCst);
        let auth = Zeroizing::new(auth.to_vec());
        let result = tpm.call("counting the rollback counter up", timeout, move |tcti| {
            Ok(Tpm::open(tcti)?.nv_counter_raise(index, &auth, target))
        });
        match result.map_err(NvCounterError::from).and_then(|r| r) {
            Ok(value) => {
                shared.level.fetch_max(value, Ordering::SeqCst);
                {
                    let _guard = shared
                        .running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    shared.wake.notify_all();
                }
                shared
                    .problem
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                if failing {
                    failing = false;
                    tracing::warn!(
                        nv_index = format_args!("{index:#010x}"),
                        counter = value,
                        "the TPM counts the rollback counter again"
                    );
                }
                backoff = RETRY_FIRST;
            }
            Err(error @ NvCounterError::Tpm(_)) => {
                if !failing {
                    failing = true;
                    tracing::error!(
                        nv_index = format_args!("{index:#010x}"),
                        pending = target.saturating_sub(shared.level.load(Ordering::SeqCst)),
                        "cannot count the rollback counter up ({error}); revocations are in force, but their rollback protection waits until the TPM counts again. Retrying"
                    );
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            Err(error) => {
                // Not the TPM being away: the counter is gone or is no
                // longer ours (undefined, or defined again by another TPM
                // user). Retrying cannot help, and the next start refuses.
                let advice = format!(
                    "{error}. Rollback protection has stopped and the next start will be refused: stop hostkmsd, make sure the state dir is the newest copy, then run `hostkmsd accept-rollback --config FILE` to bind the store to a new counter"
                );
                *shared
                    .problem
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = advice;
                if !failing {
                    failing = true;
                    tracing::error!(
                        target: "hostkms::alert",
                        nv_index = format_args!("{index:#010x}"),
                        pending = target.saturating_sub(shared.level.load(Ordering::SeqCst)),
                        permanent = true,
                        "the rollback counter is unusable for good: {error}. Revocations are in force, but no longer protected against rollback, and the next start of hostkmsd is refused. Stop hostkmsd, make sure the state dir is the newest copy, then run `hostkmsd accept-rollback --config FILE` to bind the store to a new counter"
                    );
                }
                std::thread::sleep(RETRY_MAX);
            }
        }
    }
}

/// 32 random bytes for a new counter's authorization value.
fn new_auth() -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let mut bytes = Zeroizing::new(vec![0u8; NV_AUTH_LEN]);
    rand::rngs::SysRng
        .try_fill_bytes(bytes.as_mut_slice())
        .map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(bytes)
}

/// Runs one counter conversation on the worker.
fn on_tpm<T: Send + 'static>(
    tpm: &TpmWorker,
    what: &'static str,
    timeout: Duration,
    mut task: impl FnMut(&mut Tpm) -> Result<T, NvCounterError> + Send + 'static,
) -> Result<T, NvCounterError> {
    tpm.call(what, timeout, move |tcti: &Tcti| {
        let mut open = Tpm::open(tcti)?;
        Ok(task(&mut open))
    })
    .map_err(NvCounterError::from)
    .and_then(|result| result)
}

/// Writes the binding row (outside a change: at start and at accept).
///
/// In the same transaction every key row is MACed again under the label of a
/// bound store ([`super::db::KeyRow::canonical_as`]), so a copy taken from
/// now on cannot pass for a store from before the binding by losing its
/// binding row: rewriting a key row takes the root key.
fn write_row(store: &KeyStore, row: &RollbackRow, key: RowKey) -> Result<(), StoreError> {
    let mut writer = store.writer();
    let text = row.encode(&key);
    writer.rollback_key = Some(key);
    let keys = store.keys();
    let key_rows: Vec<_> = keys
        .by_name
        .values()
        .map(|key| {
            let row = key.row();
            let mac = writer.secrets.row_mac(&row.canonical_as(true));
            (row, mac)
        })
        .collect();
    writer
        .db
        .transaction(|tx| {
            for (row, mac) in &key_rows {
                super::db::put_key(tx, row, mac)?;
            }
            put_row(tx, &text)
        })
        .map_err(|e| store.db_error(e))?;
    writer.rollback = Some(*row);
    drop(writer);
    store.rollback.record(row);
    Ok(())
}

/// Writes the binding row inside a change's transaction (commit, and root-key
/// rotation, restore or import when they write rows themselves).
pub(super) fn put_row(tx: &Transaction<'_>, text: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        rusqlite::params![ROLLBACK_META, text],
    )?;
    Ok(())
}

impl KeyStore {
    /// What `Status` says about rollback protection: the binding, and the
    /// increments committed but not yet made in the TPM.
    pub fn rollback_status(&self) -> RollbackStatus {
        self.rollback.state()
    }

    /// At a clean stop: waits at most `wait` for the increments still
    /// pending, so a copy of the stopped store is protected; returns how
    /// many are left (the next start catches those up).
    pub fn settle_rollback_counter(&self, wait: Duration) -> u64 {
        self.rollback.settle(wait)
    }

    /// The row a change writes: `S + 1` when it is `counted` (it takes
    /// access away, or cancels a deletion:
    /// [`super::Change::is_rollback_protected`]), and the digest of `next`,
    /// the snapshot it publishes. `None` while unbound.
    ///
    /// Pending increments are bounded: while [`MAX_PENDING`] are owed (the
    /// TPM does not count), a further counted change keeps
    /// `S` where it is instead of adding one, so no TPM outage, however
    /// long, leaves the store further ahead than a start catches up on.
    /// What that costs: a copy taken during the outage, after the first
    /// [`MAX_PENDING`] such changes, is not told apart from a later one.
    pub(super) fn next_rollback_row(
        &self,
        writer: &super::Writer,
        next: &Keys,
        counted: bool,
    ) -> Option<(RollbackRow, String)> {
        let current = writer.rollback?;
        let key = writer.rollback_key.as_ref()?;
        let pending = self.rollback.state().pending_increments;
        let step = u64::from(counted && pending < MAX_PENDING);
        let row = RollbackRow {
            index: current.index,
            counter: current.counter + step,
            digest: key_set_digest(next),
        };
        let text = row.encode(key);
        Some((row, text))
    }

    /// After a transaction that wrote the row from
    /// [`KeyStore::next_rollback_row`] committed: the binding in memory
    /// follows, and the catch-up thread learns of a new `S`. For every
    /// writer of keys (commit; restore and import if they write rows in
    /// their own transaction).
    pub(super) fn rollback_committed(&self, writer: &mut super::Writer, row: RollbackRow) {
        writer.rollback = Some(row);
        self.rollback.record(&row);
    }

    /// Checks the store against its TPM counter at start (the digest was
    /// checked when the store opened), binds a new or older store to a new
    /// counter, brings a counter a crash left behind level, and starts the
    /// thread that counts it up after each change that takes access away.
    pub fn bind_rollback(
        &self,
        tpm: &Arc<TpmWorker>,
        start_timeout: Duration,
        timeout: Duration,
    ) -> Result<RollbackStart, StoreError> {
        let path = self.path.display().to_string();
        let tpm_error = |source| {
            StoreError::Rollback(RollbackError::Tpm {
                path: path.clone(),
                source,
            })
        };
        let (row, fresh) = {
            let writer = self.writer();
            (writer.rollback, writer.fresh)
        };
        let Some(row) = row else {
            // A store with keys and no binding is one from before rollback
            // protection, or one whose binding was deleted to hide a
            // rollback: the latter is refused where the TPM shows that
            // hostkms bound a store to it. An empty store has nothing a
            // rollback could bring back (a first start cut short after
            // defining its counter included).
            if !fresh && !self.keys().is_empty() {
                let defined = on_tpm(tpm, "listing NV indices", start_timeout, |open| {
                    open.nv_counters_defined()
                })
                .map_err(&tpm_error)?;
                if !defined.is_empty() {
                    let indices: Vec<String> =
                        defined.iter().map(|i| format!("{i:#010x}")).collect();
                    return Err(StoreError::Rollback(RollbackError::Unbound {
                        path,
                        indices: indices.join(", "),
                    }));
                }
            }
            let auth = new_auth()?;
            self.put_secret(SecretName::RollbackAuth, &auth)?;
            let define_auth = Zeroizing::new(auth.to_vec());
            let (index, counter) = on_tpm(
                tpm,
                "defining the rollback counter",
                start_timeout,
                move |open| open.nv_counter_define(&define_auth),
            )
            .map_err(|source| match source {
                NvCounterError::Tpm(_) => tpm_error(source),
                other => StoreError::Rollback(RollbackError::Counter {
                    path: path.clone(),
                    source: other,
                }),
            })?;
            let digest = key_set_digest(&self.keys());
            write_row(
                self,
                &RollbackRow {
                    index,
                    counter,
                    digest,
                },
                RowKey::derive(&auth)?,
            )?;
            self.start_catch_up(counter, auth, tpm, timeout)?;
            return Ok(RollbackStart::Bound {
                index,
                counter,
                existing: !fresh,
            });
        };
        let auth = self.secret(SecretName::RollbackAuth)?.ok_or_else(|| {
            StoreError::Rollback(RollbackError::AuthMissing {
                path: path.clone(),
                index: row.index,
            })
        })?;
        let counter_error = |source: NvCounterError| match source {
            NvCounterError::Tpm(_) => tpm_error(source),
            other => StoreError::Rollback(RollbackError::Counter {
                path: path.clone(),
                source: other,
            }),
        };
        let index = row.index;
        let read_auth = Zeroizing::new(auth.to_vec());
        let tpm_value = on_tpm(
            tpm,
            "reading the rollback counter",
            start_timeout,
            move |open| open.nv_counter_read(index, &read_auth),
        )
        .map_err(counter_error)?;
        let started = if row.counter == tpm_value {
            RollbackStart::Level {
                index,
                counter: tpm_value,
            }
        } else if row.counter < tpm_value {
            return Err(StoreError::Rollback(RollbackError::Behind {
                path,
                index,
                store: row.counter,
                tpm: tpm_value,
            }));
        } else if row.counter - tpm_value > MAX_CATCH_UP {
            return Err(StoreError::Rollback(RollbackError::FarAhead {
                path,
                index,
                store: row.counter,
                tpm: tpm_value,
            }));
        } else {
            let mut value = tpm_value;
            while value < row.counter {
                let raise_auth = Zeroizing::new(auth.to_vec());
                let target = row.counter;
                value = on_tpm(
                    tpm,
                    "bringing the rollback counter level",
                    start_timeout,
                    move |open| open.nv_counter_raise(index, &raise_auth, target),
                )
                .map_err(counter_error)?;
            }
            RollbackStart::CaughtUp {
                index,
                from: tpm_value,
                to: value,
            }
        };
        self.start_catch_up(row.counter, auth, tpm, timeout)?;
        Ok(started)
    }

    fn start_catch_up(
        &self,
        level: u64,
        auth: Zeroizing<Vec<u8>>,
        tpm: &Arc<TpmWorker>,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        self.rollback
            .start_catch_up(level, auth, Arc::clone(tpm), timeout)
            .map_err(|e| {
                StoreError::Random(format!("cannot start the rollback counter's thread: {e}"))
            })
    }

    /// Accepts the store as it is (`hostkmsd accept-rollback`): records the
    /// counter's current value and the digest of the rows as they are, or
    /// binds the store to a new counter when its own is missing, not
    /// hostkms's, refuses the store's authorization value, or the store
    /// had no binding. The store must have been opened with
    /// [`KeyStore::open_accepting_rollback`].
    pub fn accept_rollback(
        &self,
        tpm: &Arc<TpmWorker>,
        timeout: Duration,
    ) -> Result<RollbackAccepted, StoreError> {
        let path = self.path.display().to_string();
        let (previous, problem) = {
            let writer = self.writer();
            (writer.rollback, writer.rollback_problem.clone())
        };
        let auth = self.secret(SecretName::RollbackAuth)?;
        let current = match (previous, &auth) {
            (Some(row), Some(auth)) => {
                let index = row.index;
                let read_auth = Zeroizing::new(auth.to_vec());
                match on_tpm(tpm, "reading the rollback counter", timeout, move |open| {
                    open.nv_counter_read(index, &read_auth)
                }) {
                    Ok(value) => Some((index, value)),
                    Err(error @ NvCounterError::Tpm(_)) => {
                        return Err(StoreError::Rollback(RollbackError::Tpm {
                            path,
                            source: error,
                        }));
                    }
                    Err(error) => {
                        tracing::warn!("{error}; binding the store to a new counter");
                        None
                    }
                }
            }
            _ => None,
        };
        let (index, counter, new_counter, auth) = match (current, auth) {
            (Some((index, counter)), Some(auth)) => (index, counter, false, auth),
            _ => {
                let auth = new_auth()?;
                self.put_secret(SecretName::RollbackAuth, &auth)?;
                let define_auth = Zeroizing::new(auth.to_vec());
                let (index, counter) =
                    on_tpm(tpm, "defining the rollback counter", timeout, move |open| {
                        open.nv_counter_define(&define_auth)
                    })
                    .map_err(|source| {
                        StoreError::Rollback(RollbackError::Counter {
                            path: path.clone(),
                            source,
                        })
                    })?;
                (index, counter, true, auth)
            }
        };
        let digest = key_set_digest(&self.keys());
        write_row(
            self,
            &RollbackRow {
                index,
                counter,
                digest,
            },
            RowKey::derive(&auth)?,
        )?;
        Ok(RollbackAccepted {
            previous,
            problem,
            index,
            counter,
            new_counter,
        })
    }
}

/// The binding found at open: checked against the rows unless `accepting`.
pub(super) struct LoadedBinding {
    /// The row, when present and authentic.
    pub row: Option<RollbackRow>,
    /// The key that MACs it, when the store holds the counter's authorization.
    pub key: Option<RowKey>,
    /// In accept mode: why the start would have refused (empty if not).
    pub problem: String,
}

/// Reads and checks the binding row at open: its MAC, then the digest of
/// the loaded rows. With `accepting`, problems are returned, not raised.
pub(super) fn load_binding(
    path: &str,
    text: Option<String>,
    auth: Option<&[u8]>,
    keys: &Keys,
    bound_rows: bool,
    accepting: bool,
) -> Result<LoadedBinding, StoreError> {
    let key = auth.map(RowKey::derive).transpose()?;
    let loaded = |row, problem: String| LoadedBinding {
        row,
        key: key.clone(),
        problem,
    };
    let Some(text) = text else {
        // Key rows MACed as part of a bound store, but no binding row: the
        // row was deleted (with the counter undefined, perhaps) to pass an
        // older copy off as a store from before rollback protection.
        if bound_rows {
            let error = RollbackError::BindingRemoved {
                path: path.to_string(),
            };
            if accepting {
                return Ok(loaded(None, error.to_string()));
            }
            return Err(StoreError::Rollback(error));
        }
        return Ok(loaded(None, String::new()));
    };
    let decoded = match &key {
        Some(key) => RollbackRow::decode(&text, key),
        None => Err("has no counter authorization value to verify it with".to_string()),
    };
    let error = match decoded {
        Ok(row) if row.digest == key_set_digest(keys) => {
            return Ok(loaded(Some(row), String::new()));
        }
        Ok(row) => {
            let error = RollbackError::Digest {
                path: path.to_string(),
            };
            if accepting {
                return Ok(loaded(Some(row), error.to_string()));
            }
            error
        }
        Err(detail) => RollbackError::Row {
            path: path.to_string(),
            detail,
        },
    };
    if accepting {
        return Ok(loaded(None, error.to_string()));
    }
    Err(StoreError::Rollback(error))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use rusqlite::Connection;

    use super::*;
    use crate::keystore::TestEntropy;
    use crate::rootkey::RootKey;
    use crate::state_dir::{KEYSTORE_DB, StateDir};

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("state");
            Fixture { _tmp: tmp, dir }
        }

        fn open_with(&self, root: [u8; 32], accepting: bool) -> Result<KeyStore, StoreError> {
            let dir = StateDir::open(&self.dir).unwrap();
            let root = RootKey::from_bytes_for_tests(root);
            let entropy = Arc::new(TestEntropy::new());
            if accepting {
                KeyStore::open_accepting_rollback(
                    &dir,
                    &root,
                    entropy,
                    crate::clock::Clock::system(),
                )
            } else {
                KeyStore::open(&dir, &root, entropy, crate::clock::Clock::system())
            }
        }

        fn open(&self) -> Result<KeyStore, StoreError> {
            self.open_with([0x42; 32], false)
        }

        fn edit(&self, sql: &str) {
            let conn = Connection::open(self.dir.join(KEYSTORE_DB)).unwrap();
            conn.execute_batch("PRAGMA foreign_keys = OFF;").unwrap();
            conn.execute_batch(sql).unwrap();
        }

        fn stored_row(&self) -> String {
            let conn = Connection::open(self.dir.join(KEYSTORE_DB)).unwrap();
            conn.query_row(
                "SELECT value FROM meta WHERE name = 'rollback'",
                [],
                |row| row.get(0),
            )
            .unwrap()
        }
    }

    const AUTH: [u8; 32] = [0x17; 32];

    /// Binds `store` as the start would, without a TPM.
    fn bind(store: &KeyStore, counter: u64) {
        store.put_secret(SecretName::RollbackAuth, &AUTH).unwrap();
        let digest = key_set_digest(&store.keys());
        write_row(
            store,
            &RollbackRow {
                index: crate::tpm::NV_COUNTER_FIRST,
                counter,
                digest,
            },
            RowKey::derive(&AUTH).unwrap(),
        )
        .unwrap();
    }

    fn is_digest_error(result: Result<KeyStore, StoreError>) -> bool {
        matches!(
            result,
            Err(StoreError::Rollback(RollbackError::Digest { .. }))
        )
    }

    #[test]
    fn the_row_is_authenticated_under_the_counters_key_field_by_field() {
        let secrets = RowKey::derive(&[1; 32]).unwrap();
        let other = RowKey::derive(&[2; 32]).unwrap();
        let row = RollbackRow {
            index: 0x0100_4b07,
            counter: 12,
            digest: [9; 32],
        };
        let text = row.encode(&secrets);
        assert_eq!(RollbackRow::decode(&text, &secrets), Ok(row));
        assert!(
            RollbackRow::decode(&text, &other).is_err(),
            "another counter's key"
        );
        let fields: Vec<&str> = text.split(' ').collect();
        for (i, edited) in [
            (1, "01004b08".to_string()),
            (2, "13".to_string()),
            (3, "08".repeat(32)),
        ] {
            let mut changed = fields.clone();
            changed[i] = &edited;
            let decoded = RollbackRow::decode(&changed.join(" "), &secrets);
            assert!(decoded.is_err(), "field {i} edited: {decoded:?}");
        }
        for bad in [
            "",
            "1 2 3",
            "2 01004b00 1 00 00",
            "1 zz 1 00 00",
            "1 01004b00 -1 00 00",
        ] {
            assert!(RollbackRow::decode(bad, &secrets).is_err(), "{bad:?}");
        }
    }

    /// The digest as it was before key types (commit c7ec9ad), to show
    /// that an AES-only store's recorded digest stays valid.
    fn digest_before_key_types(keys: &Keys) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"hostkms key set v1");
        hash.update((keys.by_name.len() as u64).to_be_bytes());
        for key in keys.by_name.values() {
            let state: u8 = match key.state {
                KeyState::Enabled => 0,
                KeyState::Disabled => 1,
                KeyState::Revoked => 2,
                KeyState::PendingDeletion => 3,
            };
            hash.update(key.id.0);
            hash.update([state]);
            hash.update(key.min_decryption_version.to_be_bytes());
            hash.update(key.latest_version().to_be_bytes());
            for version in &key.versions {
                hash.update(version.number.to_be_bytes());
                hash.update([u8::from(version.is_revoked())]);
            }
        }
        hash.finalize().into()
    }

    #[test]
    fn an_aes_only_store_keeps_its_digest_and_a_typed_key_adds_its_type_and_public_keys() {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        store.create("a").unwrap();
        store.rotate("a").unwrap();
        store.revoke("a", Some(1)).unwrap();
        store.create("b").unwrap();
        store.set_enabled("b", false).unwrap();
        assert_eq!(
            key_set_digest(&store.keys()),
            digest_before_key_types(&store.keys())
        );

        store.create_typed("sig", KeyType::Ed25519).unwrap();
        store.revoke("sig", None).unwrap();
        let keys = store.keys();
        let typed = key_set_digest(&keys);
        assert_ne!(typed, digest_before_key_types(&keys));
        // The same key under another type is another store.
        let sig = keys.by_name("sig").unwrap();
        let mut retyped = Keys::clone(&keys);
        let mut key = crate::keystore::Key::clone(sig);
        key.key_type = KeyType::MlDsa65;
        retyped.insert(Arc::new(key));
        assert_ne!(key_set_digest(&retyped), typed);
        // ... and so is a revoked version with another public key.
        let mut swapped = Keys::clone(&keys);
        let mut key = crate::keystore::Key::clone(sig);
        let mut version = key.versions[0].revoked_copy();
        version.public_key = Some(Arc::from(&b"another public key"[..]));
        key.versions[0] = Arc::new(version);
        swapped.insert(Arc::new(key));
        assert_ne!(key_set_digest(&swapped), typed);
    }

    /// The digest of the release before issue 12 (commit 5ce2597): key
    /// types, no deletion.
    fn digest_before_lifecycle(keys: &Keys) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"hostkms key set v1");
        hash.update((keys.by_name.len() as u64).to_be_bytes());
        for key in keys.by_name.values() {
            let state: u8 = match key.state {
                KeyState::Enabled => 0,
                KeyState::Disabled => 1,
                KeyState::Revoked => 2,
                KeyState::PendingDeletion => unreachable!("no such state before issue 12"),
            };
            hash.update(key.id.0);
            hash.update([state]);
            hash.update(key.min_decryption_version.to_be_bytes());
            hash.update(key.latest_version().to_be_bytes());
            let typed = key.key_type != KeyType::Aes256Gcm;
            if typed {
                hash.update([super::super::model::key_type_index(key.key_type)]);
            }
            for version in &key.versions {
                hash.update(version.number.to_be_bytes());
                hash.update([u8::from(version.is_revoked())]);
                if typed {
                    let public_key = version.public_key_der().unwrap_or_default();
                    hash.update((public_key.len() as u32).to_be_bytes());
                    hash.update(public_key);
                }
            }
        }
        hash.finalize().into()
    }

    #[test]
    fn a_store_without_a_deletion_keeps_its_digest_and_a_deletion_changes_it() {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        store.create("a").unwrap();
        store.rotate("a").unwrap();
        store.revoke("a", Some(1)).unwrap();
        store.create_typed("sig", KeyType::EcdsaP256).unwrap();
        store.create("off").unwrap();
        store.set_enabled("off", false).unwrap();
        let before = key_set_digest(&store.keys());
        assert_eq!(before, digest_before_lifecycle(&store.keys()));
        // Description, tags and rotation period take no access away: the
        // digest of a store holding them is the old one, unchanged.
        store
            .update_metadata(
                "a",
                Some("described".into()),
                [("env".to_string(), "prod".to_string())].into(),
                &[],
            )
            .unwrap();
        store.set_rotation_period("sig", Some(3600)).unwrap();
        let described = crate::keystore::NewKeySettings {
            description: "new".into(),
            ..Default::default()
        };
        store
            .create_with("b", KeyType::Aes256Gcm, described)
            .unwrap();
        let keys = store.keys();
        assert_eq!(key_set_digest(&keys), digest_before_lifecycle(&keys));

        // State 3 and its due change it: pending differs from disabled,
        // and a due moved on either clock is another store.
        let due = store.deletion_due_in(7).unwrap();
        let pending = store.schedule_deletion("off", due).unwrap();
        let keys = store.keys();
        let scheduled = key_set_digest(&keys);
        let mut as_disabled = Keys::clone(&keys);
        let mut key = crate::keystore::Key::clone(&pending);
        key.state = KeyState::Disabled;
        key.deletion_due = None;
        as_disabled.insert(Arc::new(key));
        assert_eq!(
            key_set_digest(&as_disabled),
            digest_before_lifecycle(&as_disabled)
        );
        assert_ne!(scheduled, key_set_digest(&as_disabled));
        for moved in [
            crate::keystore::DeletionDue {
                wall: due.wall + 86_400,
                elapsed: due.elapsed,
            },
            crate::keystore::DeletionDue {
                wall: due.wall,
                elapsed: due.elapsed + 86_400,
            },
        ] {
            let mut later = Keys::clone(&keys);
            let mut key = crate::keystore::Key::clone(&pending);
            key.deletion_due = Some(moved);
            later.insert(Arc::new(key));
            assert_ne!(key_set_digest(&later), scheduled, "{moved:?}");
        }
        // Cancelled, the key is disabled again: the old digest.
        store.cancel_deletion("off").unwrap();
        let keys = store.keys();
        assert_eq!(key_set_digest(&keys), digest_before_lifecycle(&keys));
    }

    #[test]
    fn the_digest_follows_every_key_version_and_state() {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        let empty = key_set_digest(&store.keys());
        store.create("a").unwrap();
        store.create("b").unwrap();
        let two = key_set_digest(&store.keys());
        assert_ne!(two, empty);
        // Independent of the order the keys were added in.
        let mut reordered = Keys::default();
        let keys = store.keys();
        for name in ["b", "a"] {
            reordered.insert(Arc::clone(keys.by_name(name).unwrap()));
        }
        assert_eq!(key_set_digest(&reordered), two);
        let mut seen = vec![empty, two];
        store.rotate("a").unwrap();
        seen.push(key_set_digest(&store.keys()));
        store.revoke("a", Some(1)).unwrap();
        seen.push(key_set_digest(&store.keys()));
        store.set_min_decryption_version("a", 2).unwrap();
        seen.push(key_set_digest(&store.keys()));
        store.set_enabled("b", false).unwrap();
        seen.push(key_set_digest(&store.keys()));
        store.revoke("b", None).unwrap();
        seen.push(key_set_digest(&store.keys()));
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "every change changes the digest");
        // Encryption counts are not part of it.
        let before = key_set_digest(&store.keys());
        let key = store.keys().by_name("a").cloned().unwrap();
        let latest = Arc::clone(key.latest().unwrap());
        store.reserve(key.id(), &latest, 5).unwrap();
        assert_eq!(key_set_digest(&store.keys()), before);
    }

    #[test]
    fn changes_taking_access_away_count_up_and_every_change_rewrites_the_digest() {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        store.create("k").unwrap();
        bind(&store, 40);
        let counter = || store.rollback_status().store_counter;
        assert_eq!(counter(), 40);
        store.rotate("k").unwrap();
        assert_eq!(counter(), 40, "a rotation gives no access away");
        store.revoke("k", Some(1)).unwrap();
        assert_eq!(counter(), 41);
        store.set_enabled("k", false).unwrap();
        assert_eq!(counter(), 42);
        store.set_enabled("k", true).unwrap();
        assert_eq!(counter(), 42);
        store.set_min_decryption_version("k", 2).unwrap();
        assert_eq!(counter(), 43);
        store.create("other").unwrap();
        assert_eq!(counter(), 43);
        // Nothing counts the TPM here: every increment is pending.
        assert_eq!(store.rollback_status().pending_increments, 43);
        let digest = key_set_digest(&store.keys());
        drop(store);
        let reopened = fixture.open().unwrap();
        assert_eq!(reopened.rollback_status().store_counter, 43);
        let key = RowKey::derive(&AUTH).unwrap();
        let row = RollbackRow::decode(&fixture.stored_row(), &key).unwrap();
        assert_eq!(row.digest, digest);
    }

    #[test]
    fn a_bound_store_cannot_lose_its_binding_row_and_pass_for_an_unbound_one() {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        store.create("a").unwrap();
        drop(store);
        // Before the binding (the upgrade path): no row, and it opens.
        let store = fixture
            .open()
            .expect("a store from before the binding opens");
        assert!(!store.rollback_status().bound);
        bind(&store, 3);
        store.create("b").unwrap();
        drop(store);
        fixture.open().expect("the bound store opens");
        let copy = fixture.dir.join("copy.db");
        std::fs::copy(fixture.dir.join(KEYSTORE_DB), &copy).unwrap();

        // Every key row, the one from before the binding too, says "bound".
        fixture.edit("DELETE FROM meta WHERE name = 'rollback';");
        assert!(matches!(
            fixture.open(),
            Err(StoreError::Rollback(RollbackError::BindingRemoved { .. }))
        ));
        for name in ["a", "b"] {
            std::fs::copy(&copy, fixture.dir.join(KEYSTORE_DB)).unwrap();
            let other = if name == "a" { "b" } else { "a" };
            fixture.edit(&format!(
                "DELETE FROM meta WHERE name = 'rollback';
                 DELETE FROM versions WHERE key_id = (SELECT id FROM keys WHERE name = '{other}');
                 DELETE FROM keys WHERE name = '{other}';"
            ));
            assert!(
                matches!(
                    fixture.open(),
                    Err(StoreError::Rollback(RollbackError::BindingRemoved { .. }))
                ),
                "key {name} alone"
            );
        }
        // accept-rollback opens it and says why a start would not.
        let accepting = fixture.open_with([0x42; 32], true).unwrap();
        assert!(
            accepting
                .writer()
                .rollback_problem
                .contains("has been removed"),
            "{}",
            accepting.writer().rollback_problem
        );
    }

    #[test]
    fn a_deleted_key_or_version_fails_the_open() {
        let fixture = Fixture::new();
        let store = fixture.open().unwrap();
        store.create("a").unwrap();
        store.create("b").unwrap();
        store.rotate("b").unwrap();
        bind(&store, 1);
        drop(store);
        fixture.open().expect("the bound store opens");
        let copy = fixture.dir.join("copy.db");
        std::fs::copy(fixture.dir.join(KEYSTORE_DB), &copy).unwrap();

        fixture.edit(
            "DELETE FROM versions WHERE key_id = (SELECT id FROM keys WHERE name = 'a');
             DELETE FROM keys WHERE name = 'a';",
        );
        assert!(is_digest_error(fixture.open()));
        // accept-rollback opens it, and says why a start would not.
        let accepting = fixture.open_with([0x42; 32], true).unwrap();
        assert!(
            accepting
                .writer()
                .rollback_problem
                .contains("deleted or replayed"),
            "{}",
            accepting.writer().rollback_problem
        );
        drop(accepting);

        std::fs::copy(&copy, fixture.dir.join(KEYSTORE_DB)).unwrap();
        fixture.edit(
            "DELETE FROM versions WHERE version = 2;
             UPDATE keys SET latest_version = 1 WHERE name = 'b';",
        );
        // The key row no longer authenticates: refused before the digest.
        assert!(fixture.open().is_err());

        std::fs::copy(&copy, fixture.dir.join(KEYSTORE_DB)).unwrap();
        fixture.edit("UPDATE meta SET value = 'x' WHERE name = 'rollback';");
        assert!(matches!(
            fixture.open(),
            Err(StoreError::Rollback(RollbackError::Row { .. }))
        ));
    }
}
