//! TPM randomness for new KEKs, drawn in batches ahead of need so creating
//! or rotating a key rarely waits on the TPM.
//!
//! The reserve holds up to two batches. When it falls below half a batch a
//! refill is queued on the TPM worker in the background; only a reserve
//! that ran dry makes a caller wait for the TPM (with the request deadline).
//! Each batch is drawn over the salted, encrypting session (never in clear
//! on the TPM interface), kept in locked memory, and every byte is used for
//! one KEK only and wiped as it is taken.

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

/// A reserve of TPM randomness.
pub struct TpmEntropy {
    tpm: Arc<TpmWorker>,
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
    /// A reserve filled from `tpm`, starting with a background refill;
    /// a caller that finds it empty waits at most `timeout` for the TPM.
    pub fn new(tpm: Arc<TpmWorker>, timeout: Duration) -> TpmEntropy {
        let entropy = TpmEntropy {
            tpm,
            timeout,
            pool: Arc::new(Mutex::new(Pool {
                bytes: LockedBytes::new(),
                available: 0,
            })),
            refilling: Arc::new(AtomicBool::new(false)),
        };
        entropy.refill_in_background();
        entropy
    }

    /// 32 bytes of TPM randomness that no one else gets. Waits for the TPM
    /// (at most the timeout) only when the reserve is empty.
    pub fn take(&self) -> Result<Zeroizing<[u8; KEK_LEN]>, TpmError> {
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
            let fresh = self.tpm.call(
                "drawing randomness for a new key version",
                self.timeout,
                move |tcti| {
                    if lock(&pool).available >= KEK_LEN {
                        return Ok(None);
                    }
                    draw_batch(tcti).map(Some)
                },
            )?;
            if let Some(fresh) = fresh {
                lock(&self.pool).deposit(&fresh);
            }
        }
    }

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
