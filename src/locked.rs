//! Secret bytes in memory that is locked into RAM and wiped on drop.

use std::ffi::c_void;
use std::ptr::NonNull;

use std::sync::atomic::{AtomicUsize, Ordering};

use zeroize::Zeroize;

/// One page of its own, so locking and unlocking it touches no other data.
#[repr(C, align(4096))]
struct Page<const N: usize>([u8; N]);

/// `N` secret bytes on a page of their own, locked with `mlock` so they are
/// never written to swap, and zeroized before the page is freed.
///
/// Locking is best effort: where `RLIMIT_MEMLOCK` forbids it the bytes stay
/// unlocked and [`LockedBytes::is_locked`] says so (the daemon logs it).
/// Core dumps are kept out separately, process-wide.
pub struct LockedBytes<const N: usize> {
    page: Box<Page<N>>,
    locked: bool,
}

impl<const N: usize> LockedBytes<N> {
    /// Zeroed, locked bytes.
    pub fn new() -> Self {
        let mut page = Box::new(Page([0u8; N]));
        let locked = match NonNull::new(page.0.as_mut_ptr().cast::<c_void>()) {
            // SAFETY: the range is this live allocation's own bytes; mlock only
            // changes whether the kernel may swap them out.
            Some(ptr) => unsafe { nix::sys::mman::mlock(ptr, N) }.is_ok(),
            None => false,
        };
        LockedBytes { page, locked }
    }

    /// The bytes, to read.
    pub fn expose(&self) -> &[u8; N] {
        &self.page.0
    }

    /// The bytes, to fill.
    pub fn expose_mut(&mut self) -> &mut [u8; N] {
        &mut self.page.0
    }

    /// Whether the page is locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<const N: usize> Default for LockedBytes<N> {
    fn default() -> Self {
        LockedBytes::new()
    }
}

impl<const N: usize> Drop for LockedBytes<N> {
    fn drop(&mut self) {
        self.page.0.zeroize();
        if self.locked {
            if let Some(ptr) = NonNull::new(self.page.0.as_mut_ptr().cast::<c_void>()) {
                // SAFETY: the same range that was locked in `new`, still allocated.
                let _ = unsafe { nix::sys::mman::munlock(ptr, N) };
            }
        }
    }
}

impl<const N: usize> std::fmt::Debug for LockedBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LockedBytes<{N}>(<redacted>)")
    }
}

/// How many key secrets could not be locked in RAM (RLIMIT_MEMLOCK
/// reached): the daemon warns at start when any could not.
static UNLOCKED: AtomicUsize = AtomicUsize::new(0);

/// How many key secrets so far could not be locked in RAM.
pub fn unlocked_count() -> usize {
    UNLOCKED.load(Ordering::Relaxed)
}

/// Counts a key secret that could not be locked in RAM.
pub fn note_unlocked() {
    UNLOCKED.fetch_add(1, Ordering::Relaxed);
}

/// A value on a heap allocation of its own, locked with `mlock` (best
/// effort: a failure is counted by [`note_unlocked`]) so it is never
/// swapped out. For key material in the form a crate uses (an AES-GCM
/// cipher, an HMAC state, a signing key), which zeroizes itself on drop.
/// The lock is not undone on drop: the allocation is wiped by the value and
/// may be reused, and unlocking could unlock a neighbour on the same page.
pub struct LockedBox<T> {
    value: Box<T>,
}

impl<T> LockedBox<T> {
    /// `value`, moved to a locked allocation of its own.
    pub fn new(value: T) -> LockedBox<T> {
        let value = Box::new(value);
        if std::mem::size_of::<T>() > 0 {
            let ptr = NonNull::from(value.as_ref()).cast::<c_void>();
            // SAFETY: the range is the live allocation just made; mlock only
            // changes whether the kernel may swap those pages out. A failure
            // leaves the value usable, merely swappable.
            if unsafe { nix::sys::mman::mlock(ptr, std::mem::size_of::<T>()) }.is_err() {
                note_unlocked();
            }
        }
        LockedBox { value }
    }
}

impl<T> std::ops::Deref for LockedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::fmt::Debug for LockedBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedBox(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sit_alone_on_an_aligned_page() {
        let mut secret = LockedBytes::<32>::new();
        secret.expose_mut().copy_from_slice(&[7u8; 32]);
        assert_eq!(secret.expose(), &[7u8; 32]);
        assert_eq!(secret.expose().as_ptr() as usize % 4096, 0);
        assert_eq!(format!("{secret:?}"), "LockedBytes<32>(<redacted>)");
    }
}
