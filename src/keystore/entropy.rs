//! Randomness for new KEKs: the [`EntropySource`] the key store draws from,
//! and its daemon implementation [`TpmEntropy`], TPM randomness drawn in
//! batches ahead of need so creating or rotating a key rarely waits on the
//! TPM. Each KEK is OS randomness XOR one draw (see the key store), so a
//! source only adds to the OS RNG, never replaces it.
//!
//! The TPM reserve holds up to two batches. When it falls below half a batch a
//! refill is queued on the TPM worker in the background; only a reserve
//! that ran dry makes a caller wait for the TPM (with the request deadline).
//! Each batch is drawn over the salted, encrypting session (never in clear
//! on the TPM interface), kept in locked memory, and every byte is used for
//! one KEK only and wiped as it is taken. `GenerateRandom` draws from a
//! second reserve of the same kind ([`TpmEntropy::for_random`]), never this
//! one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use super::sealing::KEK_LEN;
use crate::locked::LockedBytes;
use crate::tpm::{Tpm, TpmError, TpmWorker};

/// Bytes fetched per TPM conversation: enough for 128 KEKs.
const BATCH: usize = 4096;
/// Bytes the reserve holds at most.
const CAPACITY: usize = 2 * BATCH;
/// Below this many bytes (64 KEKs) a background refill is queued.
const LOW_WATER: usize = BATCH / 2;

/// The reserve's bytes; only the first `available` are unused.
struct Pool {
    bytes: LockedBytes<CAPACITY>,
    available: usize,
}

impl Pool {
    /// Adds as much of `fresh` as there is room for.
    fn deposit(&mut self, fresh: &[u8]) {
        let n = fresh.len().min(CAPACITY - self.available);
        self.bytes.expose_mut()[self.available..self.available + n].copy_from_slice(&fresh[..n]);
        self.available += n;
    }

    /// Takes the last `KEK_LEN` unused bytes, wiping them in the pool.
    fn take(&mut self) -> Option<Zeroizing<[u8; KEK_LEN]>> {
        let start = self.available.checked_sub(KEK_LEN)?;
        let mut out = Zeroizing::new([0u8; KEK_LEN]);
        let taken = &mut self.bytes.expose_mut()[start..self.available];
        out.copy_from_slice(taken);
        taken.zeroize();
        self.available = start;
        Some(out)
    }
}

/// Where the key store gets the second, independent half of each new KEK's
/// randomness. The store calls [`EntropySource::take`] before it takes its
/// writer lock, so a source may block (at most its own deadline) without
/// holding up other changes.
pub trait EntropySource: Send + Sync + std::fmt::Debug {
    /// 32 bytes that no one else gets, or why the TPM could not supply them
    /// (the store refuses the change with `TpmUnavailable`).
    fn take(&self) -> Result<Zeroizing<[u8; KEK_LEN]>, TpmError>;

    /// Called once when the store has loaded: a source that keeps a reserve
    /// starts filling it now. Does nothing by default.
    fn start(&self) {}
}

/// A reserve of TPM randomness, the daemon's [`EntropySource`]. The
/// daemon keeps two: the key store's, for new key versions
/// ([`TpmEntropy::new`]), and `GenerateRandom`'s
/// ([`TpmEntropy::for_random`]), so callers of the latter cannot drain the
/// former.
pub struct TpmEntropy {
    tpm: Arc<TpmWorker>,
    /// What a draw is for, in TPM errors.
    purpose: &'static str,
    timeout: Duration,
    pool: Arc<Mutex<Pool>>,
    refilling: Arc<AtomicBool>,
}

impl std::fmt::Debug for TpmEntropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmEntropy")
            .field("available", &lock(&self.pool).available)
            .finish_non_exhaustive()
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One batch of TPM randomness, in one conversation.
fn draw_batch(tcti: &crate::tpm::Tcti) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    Tpm::open(tcti)?.random(BATCH)
}

impl TpmEntropy {
    /// An empty reserve filled from `tpm`: the first background refill is
    /// queued by [`EntropySource::start`] (when the key store has loaded);
    /// a caller that finds it empty waits at most `timeout` for the TPM.
    pub fn new(tpm: Arc<TpmWorker>, timeout: Duration) -> TpmEntropy {
        TpmEntropy::with_purpose(tpm, timeout, "drawing randomness for a new key version")
    }

    /// A reserve of its own for `GenerateRandom`, filled from `tpm` like
    /// the key store's ([`TpmEntropy::new`]) but apart from it: random
    /// bytes handed to peers never come from, nor empty, the reserve new
    /// key versions draw from. Filled at the first request (nothing to
    /// [`EntropySource::start`]), then in the background as it runs low.
    pub fn for_random(tpm: Arc<TpmWorker>, timeout: Duration) -> TpmEntropy {
        TpmEntropy::with_purpose(tpm, timeout, "drawing randomness for random bytes")
    }

    fn with_purpose(tpm: Arc<TpmWorker>, timeout: Duration, purpose: &'static str) -> TpmEntropy {
        TpmEntropy {
            tpm,
            purpose,
            timeout,
            pool: Arc::new(Mutex::new(Pool {
                bytes: LockedBytes::new(),
                available: 0,
            })),
            refilling: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl EntropySource for TpmEntropy {
    fn start(&self) {
        self.refill_in_background();
    }

    /// 32 bytes of TPM randomness that no one else gets. Waits for the TPM
    /// (at most the timeout) only when the reserve is empty.
    fn take(&self) -> Result<Zeroizing<[u8; KEK_LEN]>, TpmError> {
        loop {
            let (taken, low) = {
                let mut pool = lock(&self.pool);
                (pool.take(), pool.available < LOW_WATER)
            };
            if low {
                self.refill_in_background();
            }
            if let Some(bytes) = taken {
                return Ok(bytes);
            }
            // Queued behind a background refill, this finds the reserve
            // filled and draws nothing more.
            let pool = Arc::clone(&self.pool);
            let fresh = self.tpm.call(self.purpose, self.timeout, move |tcti| {
                if lock(&pool).available >= KEK_LEN {
                    return Ok(None);
                }
                draw_batch(tcti).map(Some)
            })?;
            if let Some(fresh) = fresh {
                lock(&self.pool).deposit(&fresh);
            }
        }
    }
}

impl TpmEntropy {
    /// Queues one refill on the TPM worker unless one is queued already
    /// (or the TPM is not answering: then the next `take` reports it).
    fn refill_in_background(&self) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(&self.pool);
        let done = Arc::clone(&self.refilling);
        let failed = Arc::clone(&self.refilling);
        let queued = self.tpm.spawn(
            move |tcti| {
                let fresh = draw_batch(tcti);
                if let Ok(fresh) = &fresh {
                    lock(&pool).deposit(fresh);
                }
                done.store(false, Ordering::Release);
                fresh.map(drop)
            },
            |e| tracing::warn!("could not refill TPM randomness in the background: {e}"),
        );
        if queued.is_err() {
            failed.store(false, Ordering::Release);
        }
    }
}

/// An [`EntropySource`] for tests, without a TPM: OS randomness, or on
/// demand the error of a TPM that stopped answering. Tests and the
/// `test-util` feature only; never in a release build.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct TestEntropy {
    unavailable: AtomicBool,
    taken: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "test-util"))]
impl TestEntropy {
    /// A source that answers (until [`TestEntropy::set_unavailable`]).
    pub fn new() -> TestEntropy {
        TestEntropy::default()
    }

    /// Makes every later `take` fail as a hung TPM does (`true`), or answer
    /// again (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::Relaxed);
    }

    /// How many draws were answered so far (one per new key version).
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }
}

#[cfg(any(test, feature = "test-util"))]
impl EntropySource for TestEntropy {
    fn take(&self) -> Result<Zeroizing<[u8; KEK_LEN]>, TpmError> {
        use rand::TryRng;
        if self.unavailable.load(Ordering::Relaxed) {
            return Err(TpmError::Stuck {
                tcti: "test entropy".to_string(),
                secs: 0,
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        rand::rngs::SysRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(|e| TpmError::WorkerGone(format!("the OS RNG failed: {e}")))?;
        self.taken.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }
}
