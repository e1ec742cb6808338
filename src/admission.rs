//! Who may hold the daemon's shared resources: connection slots (a cap per
//! uid, a reserve for admins) and the memory of partly received frames. A
//! peer that holds more than its share gets `Busy`, so that no single user
//! can lock root and the granted services out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agent_proto::codec::{BODY_STEP, BodyMemory};

/// The limits a connection is admitted under (read afresh at each admission,
/// so that a reload applies to the next connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one non-admin uid may hold at once.
    pub max_connections_per_uid: usize,
    /// Slots of `max_connections` only admins may take.
    pub admin_reserved_connections: usize,
}

/// Why a connection was refused; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot is taken.
    #[error("hostkmsd serves at most {max} connections at once (max_connections); try again later")]
    Full {
        /// `max_connections`.
        max: usize,
    },
    /// Only the slots reserved for admins are left.
    #[error(
        "hostkmsd serves at most {max} connections at once (max_connections), the last {reserved} \
         of them for admins only (admin_reserved_connections); try again later"
    )]
    ReservedForAdmins {
        /// `max_connections`.
        max: usize,
        /// `admin_reserved_connections`.
        reserved: usize,
    },
    /// This uid holds as many connections as one user may.
    #[error(
        "uid {uid} already holds {max} connections, the most one user may \
         (max_connections_per_uid); close one of them or try again later"
    )]
    PerUid {
        /// The peer's uid.
        uid: u32,
        /// `max_connections_per_uid`.
        max: usize,
    },
}

/// The connections open now, in total and by uid.
#[derive(Debug, Default)]
pub struct Admission {
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

impl Admission {
    /// No connections yet.
    pub fn new() -> Arc<Admission> {
        Arc::new(Admission::default())
    }

    /// Admits a connection of `uid` (an admin when `admin`) under `limits`,
    /// or says why not. The slot is held until the returned value drops.
    /// Admins are not capped per uid and may take the reserved slots.
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        admin: bool,
        limits: &SlotLimits,
    ) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= limits.max_connections {
            return Err(Refusal::Full {
                max: limits.max_connections,
            });
        }
        if !admin {
            // The peer's own cap first: it is the limit the peer can act on.
            if open.by_uid.get(&uid).copied().unwrap_or(0) >= limits.max_connections_per_uid {
                return Err(Refusal::PerUid {
                    uid,
                    max: limits.max_connections_per_uid,
                });
            }
            let unreserved = limits
                .max_connections
                .saturating_sub(limits.admin_reserved_connections);
            if open.total >= unreserved {
                return Err(Refusal::ReservedForAdmins {
                    max: limits.max_connections,
                    reserved: limits.admin_reserved_connections,
                });
            }
        }
        open.total += 1;
        *open.by_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            admission: Arc::clone(self),
            uid,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// One admitted connection's slot, given back on drop.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_uid.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_uid.remove(&self.uid);
            }
        }
    }
}

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

    const LIMITS: SlotLimits = SlotLimits {
        max_connections: 10,
        max_connections_per_uid: 3,
        admin_reserved_connections: 2,
    };

    #[test]
    fn a_uid_is_capped_and_others_still_get_in() {
        let admission = Admission::new();
        let held: Vec<Slot> = (0..3)
            .map(|_| admission.admit(65534, false, &LIMITS).unwrap())
            .collect();
        assert_eq!(
            admission.admit(65534, false, &LIMITS).unwrap_err(),
            Refusal::PerUid { uid: 65534, max: 3 }
        );
        let other = admission.admit(1001, false, &LIMITS).unwrap();
        drop(held);
        assert_eq!(admission.open(), 1);
        let again = admission.admit(65534, false, &LIMITS);
        assert!(again.is_ok());
        drop(other);
    }

    #[test]
    fn the_reserve_is_for_admins_and_admins_are_not_capped_per_uid() {
        let admission = Admission::new();
        let mut held: Vec<Slot> = (0..8)
            .map(|uid| admission.admit(1000 + uid, false, &LIMITS).unwrap())
            .collect();
        assert_eq!(
            admission.admit(2000, false, &LIMITS).unwrap_err(),
            Refusal::ReservedForAdmins {
                max: 10,
                reserved: 2
            }
        );
        // A uid at its own cap is told so, not about the reserve.
        let tight = SlotLimits {
            max_connections_per_uid: 1,
            ..LIMITS
        };
        assert_eq!(
            admission.admit(1000, false, &tight).unwrap_err(),
            Refusal::PerUid { uid: 1000, max: 1 }
        );
        held.push(admission.admit(0, true, &LIMITS).unwrap());
        held.push(admission.admit(0, true, &LIMITS).unwrap());
        assert_eq!(
            admission.admit(0, true, &LIMITS).unwrap_err(),
            Refusal::Full { max: 10 }
        );
        let admins = SlotLimits {
            max_connections: 10,
            max_connections_per_uid: 1,
            admin_reserved_connections: 0,
        };
        let admission = Admission::new();
        let root: Vec<Slot> = (0..10)
            .map(|_| admission.admit(0, true, &admins).unwrap())
            .collect();
        assert_eq!(root.len(), 10);
    }

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
