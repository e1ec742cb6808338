//! Who may hold the daemon's shared resources: the memory of partly
//! received frames. A peer that would take more than is left gets `Busy`,
//! so that no single user can make the daemon commit memory it never uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_proto::codec::{BODY_STEP, BodyMemory};

/// The memory all connections' partly received frames hold together,
/// beyond the first [`BODY_STEP`] bytes of each (which the connection cap
/// already bounds), so that a small request is never refused for memory.
#[derive(Debug, Default)]
pub struct FrameMemory {
    held: AtomicUsize,
}

impl FrameMemory {
    /// Nothing held yet.
    pub fn new() -> Arc<FrameMemory> {
        Arc::new(FrameMemory::default())
    }

    /// A reservation for one frame, within `limit` bytes for all frames.
    pub fn for_frame(self: &Arc<Self>, limit: usize) -> FrameReservation {
        FrameReservation {
            memory: Arc::clone(self),
            limit,
            asked: 0,
            held: 0,
        }
    }

    /// Bytes held now by all frames.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// What one frame's body holds of the shared [`FrameMemory`]; given back
/// when dropped (after the frame has been answered).
#[derive(Debug)]
pub struct FrameReservation {
    memory: Arc<FrameMemory>,
    limit: usize,
    /// Bytes the frame asked for in all.
    asked: usize,
    /// Of those, bytes taken from the shared memory.
    held: usize,
}

impl BodyMemory for FrameReservation {
    fn reserve(&mut self, bytes: usize) -> bool {
        let free = BODY_STEP.saturating_sub(self.asked).min(bytes);
        let shared = bytes - free;
        if shared > 0 {
            let taken =
                self.memory
                    .held
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                        held.checked_add(shared)
                            .filter(|&total| total <= self.limit)
                    });
            if taken.is_err() {
                return false;
            }
            self.held += shared;
        }
        self.asked += bytes;
        true
    }
}

impl Drop for FrameReservation {
    fn drop(&mut self) {
        self.memory.held.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_memory_is_shared_and_given_back() {
        let memory = FrameMemory::new();
        let mut first = memory.for_frame(100_000);
        assert!(first.reserve(BODY_STEP), "the first step is free");
        assert_eq!(memory.held(), 0);
        assert!(first.reserve(90_000));
        assert_eq!(memory.held(), 90_000);
        let mut second = memory.for_frame(100_000);
        assert!(second.reserve(BODY_STEP));
        assert!(!second.reserve(20_000), "past the shared limit");
        assert!(second.reserve(10_000));
        drop(first);
        assert_eq!(memory.held(), 10_000);
        drop(second);
        assert_eq!(memory.held(), 0);
    }
}
