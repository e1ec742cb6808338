//! Who may hold the daemon's shared resources: connection slots (a cap per
//! uid, a reserve for admins, a cap on all peers without a grant together)
//! and the memory of partly received frames (none for peers without a
//! grant). A peer that holds more than its share gets `Busy`, so that
//! neither a single user nor many users without a grant can lock root and
//! the granted services out.
//!
//! A peer without any grant (not an admin, covered by no grant in force)
//! can only `Ping`, ask `Status` and `List`: requests of a few bytes. So
//! all such peers together get `max_ungranted_connections` slots, and their
//! frames never draw on the shared frame memory: each is read only up to
//! its first [`BODY_STEP`] bytes, which the connection caps already bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agent_proto::codec::{BODY_STEP, BodyMemory};

use crate::policy::PeerClass;

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
    /// Connections all peers without a grant may hold together.
    pub max_ungranted_connections: usize,
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
    /// Peers without a grant hold together as many connections as they may.
    #[error(
        "uid {uid} holds no grant for a key operation, and peers without one already hold {max} \
         connections, the most they may together (max_ungranted_connections{}); ask the \
         administrator for a grant if this program needs to use keys",
        if *max == 0 { " = 0: this daemon serves only admins and granted peers" } else { "; try again later" }
    )]
    Ungranted {
        /// The peer's uid.
        uid: u32,
        /// `max_ungranted_connections`.
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
    /// Of `total`, those of peers without a grant.
    ungranted: usize,
    by_uid: HashMap<u32, usize>,
}

impl Admission {
    /// No connections yet.
    pub fn new() -> Arc<Admission> {
        Arc::new(Admission::default())
    }

    /// Admits a connection of `uid` (of `class`) under `limits`, or says
    /// why not. The slot is held until the returned value drops, in the
    /// class it was admitted in. Admins are not capped per uid and may take
    /// the reserved slots; peers without a grant share
    /// `max_ungranted_connections`.
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        class: PeerClass,
        limits: &SlotLimits,
    ) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= limits.max_connections {
            return Err(Refusal::Full {
                max: limits.max_connections,
            });
        }
        let ungranted = class == PeerClass::Ungranted;
        if class != PeerClass::Admin {
            // The peer's own cap first: it is the limit the peer can act on.
            if open.by_uid.get(&uid).copied().unwrap_or(0) >= limits.max_connections_per_uid {
                return Err(Refusal::PerUid {
                    uid,
                    max: limits.max_connections_per_uid,
                });
            }
            if ungranted && open.ungranted >= limits.max_ungranted_connections {
                return Err(Refusal::Ungranted {
                    uid,
                    max: limits.max_ungranted_connections,
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
        if ungranted {
            open.ungranted += 1;
        }
        *open.by_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            admission: Arc::clone(self),
            uid,
            ungranted,
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
    /// Counted among the connections of peers without a grant.
    ungranted: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if self.ungranted {
            open.ungranted = open.ungranted.saturating_sub(1);
        }
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
/// Frames of peers without a grant take none of it (see
/// [`FrameMemory::for_small_frame`]).
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
            shares: true,
            asked: 0,
            held: 0,
        }
    }

    /// A reservation for one frame that takes nothing of the shared memory:
    /// the frame may grow to [`BODY_STEP`] bytes and no further. For peers
    /// without a grant, whose requests (`Ping`, `Status`, `List`) are a few
    /// bytes, so that they cannot keep the memory full for everyone else.
    pub fn for_small_frame(self: &Arc<Self>) -> FrameReservation {
        FrameReservation {
            memory: Arc::clone(self),
            limit: 0,
            shares: false,
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
    /// Whether the frame may take of the shared memory at all.
    shares: bool,
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
            if !self.shares {
                return false;
            }
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
        max_ungranted_connections: 4,
    };

    const GRANTED: PeerClass = PeerClass::Granted;

    #[test]
    fn ungranted_peers_share_their_own_cap_and_granted_peers_still_get_in() {
        let admission = Admission::new();
        let mut held: Vec<Slot> = (0..4)
            .map(|uid| {
                admission
                    .admit(40000 + uid, PeerClass::Ungranted, &LIMITS)
                    .unwrap()
            })
            .collect();
        let refusal = admission
            .admit(40009, PeerClass::Ungranted, &LIMITS)
            .unwrap_err();
        assert_eq!(refusal, Refusal::Ungranted { uid: 40009, max: 4 });
        assert!(refusal.to_string().contains("max_ungranted_connections"));
        // The granted peers' share is untouched: 4 more up to the reserve.
        for uid in 0..4 {
            held.push(admission.admit(1000 + uid, GRANTED, &LIMITS).unwrap());
        }
        assert_eq!(
            admission.admit(1009, GRANTED, &LIMITS).unwrap_err(),
            Refusal::ReservedForAdmins {
                max: 10,
                reserved: 2
            }
        );
        // A slot keeps the class it was admitted in when given back.
        held.remove(0);
        assert!(
            admission
                .admit(40009, PeerClass::Ungranted, &LIMITS)
                .is_ok()
        );
    }

    #[test]
    fn a_small_frame_takes_no_shared_memory() {
        let memory = FrameMemory::new();
        let mut small = memory.for_small_frame();
        assert!(small.reserve(BODY_STEP), "the first step is free");
        assert!(!small.reserve(1), "and all it may have");
        assert_eq!(memory.held(), 0);
    }

    #[test]
    fn a_uid_is_capped_and_others_still_get_in() {
        let admission = Admission::new();
        let held: Vec<Slot> = (0..3)
            .map(|_| admission.admit(65534, GRANTED, &LIMITS).unwrap())
            .collect();
        assert_eq!(
            admission.admit(65534, GRANTED, &LIMITS).unwrap_err(),
            Refusal::PerUid { uid: 65534, max: 3 }
        );
        let other = admission.admit(1001, GRANTED, &LIMITS).unwrap();
        drop(held);
        assert_eq!(admission.open(), 1);
        let again = admission.admit(65534, GRANTED, &LIMITS);
        assert!(again.is_ok());
        drop(other);
    }

    #[test]
    fn the_reserve_is_for_admins_and_admins_are_not_capped_per_uid() {
        let admission = Admission::new();
        let mut held: Vec<Slot> = (0..8)
            .map(|uid| admission.admit(1000 + uid, GRANTED, &LIMITS).unwrap())
            .collect();
        assert_eq!(
            admission.admit(2000, GRANTED, &LIMITS).unwrap_err(),
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
            admission.admit(1000, GRANTED, &tight).unwrap_err(),
            Refusal::PerUid { uid: 1000, max: 1 }
        );
        held.push(admission.admit(0, PeerClass::Admin, &LIMITS).unwrap());
        held.push(admission.admit(0, PeerClass::Admin, &LIMITS).unwrap());
        assert_eq!(
            admission.admit(0, PeerClass::Admin, &LIMITS).unwrap_err(),
            Refusal::Full { max: 10 }
        );
        let admins = SlotLimits {
            max_connections: 10,
            max_connections_per_uid: 1,
            admin_reserved_connections: 0,
            max_ungranted_connections: 0,
        };
        let admission = Admission::new();
        let root: Vec<Slot> = (0..10)
            .map(|_| admission.admit(0, PeerClass::Admin, &admins).unwrap())
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
