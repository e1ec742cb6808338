//! TPM randomness for new KEKs, fetched in batches so creating or rotating
//! a key costs a TPM round trip only once per batch.
//!
//! Each batch is drawn over the salted, encrypting session (never in clear
//! on the TPM interface), kept in locked memory, and every byte is used for
//! one KEK only and wiped as it is taken.

use zeroize::{Zeroize, Zeroizing};

use super::sealing::KEK_LEN;
use crate::config::Tcti;
use crate::locked::LockedBytes;
use crate::tpm::{Tpm, TpmError};

/// Bytes fetched per TPM conversation: enough for 128 KEKs.
const BATCH: usize = 4096;

/// A reserve of TPM randomness.
#[derive(Debug)]
pub struct TpmEntropy {
    tcti: Tcti,
    pool: LockedBytes<BATCH>,
    available: usize,
}

impl TpmEntropy {
    /// An empty reserve that fills from the TPM at `tcti` on first use.
    pub fn new(tcti: Tcti) -> TpmEntropy {
        TpmEntropy {
            tcti,
            pool: LockedBytes::new(),
            available: 0,
        }
    }

    /// 32 bytes of TPM randomness that no one else gets.
    pub fn take(&mut self) -> Result<Zeroizing<[u8; KEK_LEN]>, TpmError> {
        if self.available < KEK_LEN {
            self.refill()?;
        }
        let start = self.available - KEK_LEN;
        let mut out = Zeroizing::new([0u8; KEK_LEN]);
        let taken = &mut self.pool.expose_mut()[start..self.available];
        out.copy_from_slice(taken);
        taken.zeroize();
        self.available = start;
        Ok(out)
    }

    fn refill(&mut self) -> Result<(), TpmError> {
        let mut tpm = Tpm::open(&self.tcti)?;
        let fresh = tpm.random(BATCH)?;
        self.pool.expose_mut().copy_from_slice(&fresh);
        self.available = BATCH;
        Ok(())
    }
}
