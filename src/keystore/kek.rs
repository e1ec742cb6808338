//! A KEK in memory: a ready AES-256-GCM instance (key schedule done once),
//! zeroized on drop and, where the system allows, locked in RAM.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use aes_gcm::{Aes256Gcm, KeyInit};

use super::sealing::KEK_LEN;

/// How many KEKs could not be locked in RAM (RLIMIT_MEMLOCK reached).
static UNLOCKED: AtomicUsize = AtomicUsize::new(0);

/// A key-encryption key, ready to wrap and unwrap.
///
/// The cipher (which zeroizes its round keys on drop) sits in its own heap
/// allocation, locked with `mlock` so it is never swapped out. The lock is
/// not undone on drop: the allocation is wiped and may be reused, and
/// unlocking could unlock a neighbour on the same page.
pub struct Kek {
    cipher: Box<Aes256Gcm>,
}

impl Kek {
    /// Builds the cipher for `material`.
    pub fn new(material: &[u8; KEK_LEN]) -> Kek {
        let cipher = Box::new(Aes256Gcm::new(material.into()));
        let ptr = NonNull::from(cipher.as_ref()).cast::<c_void>();
        // SAFETY: the range is the live allocation just made; mlock only
        // changes whether the kernel may swap those pages out.
        if unsafe { nix::sys::mman::mlock(ptr, std::mem::size_of::<Aes256Gcm>()) }.is_err() {
            UNLOCKED.fetch_add(1, Ordering::Relaxed);
        }
        Kek { cipher }
    }

    /// The cipher.
    pub fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }

    /// How many key secrets (KEKs and the other types' keys) so far could
    /// not be locked in RAM.
    pub fn unlocked_count() -> usize {
        UNLOCKED.load(Ordering::Relaxed)
    }

    /// Counts a key secret of another type that could not be locked in RAM.
    pub(crate) fn note_unlocked() {
        UNLOCKED.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}
