//! Keeps the audit trail countable but not floodable: per peer (uid) and
//! kind of refusal, the first few events of a window are logged one by
//! one, the rest are counted, and the count is handed back as one summary
//! when the window closes. Nothing is dropped: every event is either logged
//! or in exactly one summary.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_proto::{ErrorCode, Operation};

/// Events of one kind that one peer gets logged one by one per window.
pub const LOGGED_PER_WINDOW: u32 = 5;
/// Windows tracked at once; past it the expired ones are summarized, and
/// if that frees nothing, all of them (so memory stays bounded and no
/// count is lost).
const MAX_TRACKED: usize = 4096;

/// The kinds of event the trail limits per peer, each counted apart:
/// refusals, and the requests any connected peer may make without a grant
/// (ping, status, list), which a peer can send as fast as it likes.
/// Identity is the peer and the kind, not the key or operation: a peer that
/// varies the key name of each request must not escape the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limited {
    /// Denied for want of a grant.
    Denied,
    /// A ciphertext that did not authenticate.
    InvalidCiphertext,
    /// Refused for another reason (key state, bad argument...).
    Failed,
    /// A frame that could not be decoded, refused by the server.
    BadFrame,
    /// A connection the server cut short or refused: over a connection
    /// limit, out of frame memory, or too slow to send or to read.
    Connection,
    /// An answered request that needs no grant: ping, status or list.
    OpenRequest,
    /// A connection to the credential socket from a process that named a
    /// unit it does not run in (or could not be proven to): counted apart
    /// from other refused connections, so that junk connections cannot
    /// push an impersonation attempt out of the trail.
    Impersonation,
}

impl Limited {
    /// The kind of a request of `op` answered with `code` (`None` when it
    /// succeeded); `None` for an answered request that needed a grant (or
    /// admin rights), which is always logged one by one.
    pub fn of(op: Operation, code: Option<ErrorCode>) -> Option<Limited> {
        match code {
            Some(ErrorCode::PermissionDenied) => Some(Limited::Denied),
            Some(ErrorCode::InvalidCiphertext) => Some(Limited::InvalidCiphertext),
            Some(_) => Some(Limited::Failed),
            None if matches!(
                op,
                Operation::Ping | Operation::Status | Operation::List | Operation::TransportKey
            ) =>
            {
                Some(Limited::OpenRequest)
            }
            None => None,
        }
    }

    /// `denied`, `invalid-ciphertext`, `failed`, `bad-frame`,
    /// `refused-connection`, `open-request` or `impersonation`: the value of
    /// `HOSTKMS_EVENT` in a summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Denied => "denied",
            Limited::InvalidCiphertext => "invalid-ciphertext",
            Limited::Failed => "failed",
            Limited::BadFrame => "bad-frame",
            Limited::Connection => "refused-connection",
            Limited::OpenRequest => "open-request",
            Limited::Impersonation => "impersonation",
        }
    }
}

/// The events of one peer and kind a closed window did not log one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// The peer's uid.
    pub uid: u32,
    /// The kind of refusal.
    pub kind: Limited,
    /// Events logged one by one in the window.
    pub logged: u32,
    /// Events only counted: the summary's count.
    pub suppressed: u64,
    /// How long the window was open.
    pub over: Duration,
}

/// Whether to log one event, and the summaries due now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Log this event one by one; otherwise it is counted in a summary.
    pub log: bool,
    /// Windows that closed on the way; log their summaries first.
    pub closed: Vec<Suppressed>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    logged: u32,
    suppressed: u64,
}

/// The open windows, per peer and kind.
#[derive(Debug, Default)]
pub struct FloodGate {
    windows: Mutex<HashMap<(u32, Limited), Window>>,
}

impl FloodGate {
    /// Notes one event of `uid` of `kind` at `now`, with windows `window` long.
    pub fn admit(&self, uid: u32, kind: Limited, now: Instant, window: Duration) -> Admission {
        let mut windows = self.lock();
        let mut closed = Vec::new();
        let key = (uid, kind);
        if windows
            .get(&key)
            .is_some_and(|open| now.duration_since(open.opened) >= window)
        {
            if let Some(open) = windows.remove(&key) {
                closed.extend(summary(key, open, now));
            }
        }
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            closed.extend(close(
                &mut windows,
                |open| now.duration_since(open.opened) >= window,
                now,
            ));
            if windows.len() >= MAX_TRACKED {
                closed.extend(close(&mut windows, |_| true, now));
            }
        }
        let open = windows.entry(key).or_insert(Window {
            opened: now,
            logged: 0,
            suppressed: 0,
        });
        let log = open.logged < LOGGED_PER_WINDOW;
        if log {
            open.logged += 1;
        } else {
            open.suppressed += 1;
        }
        Admission { log, closed }
    }

    /// Closes the windows older than `window` (a timer calls this, so a
    /// summary never waits for the peer's next event).
    pub fn close_expired(&self, now: Instant, window: Duration) -> Vec<Suppressed> {
        close(
            &mut self.lock(),
            |open| now.duration_since(open.opened) >= window,
            now,
        )
    }

    /// Closes every window (at shutdown).
    pub fn close_all(&self, now: Instant) -> Vec<Suppressed> {
        close(&mut self.lock(), |_| true, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, Limited), Window>> {
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes the windows `due` selects; returns the summaries of those that
/// counted events, in a stable order.
fn close(
    windows: &mut HashMap<(u32, Limited), Window>,
    due: impl Fn(&Window) -> bool,
    now: Instant,
) -> Vec<Suppressed> {
    let keys: Vec<(u32, Limited)> = windows
        .iter()
        .filter(|(_, open)| due(open))
        .map(|(key, _)| *key)
        .collect();
    let mut closed: Vec<Suppressed> = keys
        .into_iter()
        .filter_map(|key| {
            windows
                .remove(&key)
                .and_then(|open| summary(key, open, now))
        })
        .collect();
    closed.sort_by_key(|s| (s.uid, s.kind));
    closed
}

/// The summary of a window, when it counted anything beyond what it logged.
fn summary((uid, kind): (u32, Limited), open: Window, now: Instant) -> Option<Suppressed> {
    (open.suppressed > 0).then(|| Suppressed {
        uid,
        kind,
        logged: open.logged,
        suppressed: open.suppressed,
        over: now.duration_since(open.opened),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_any_peer_may_send_are_limited_and_changes_are_not() {
        for op in [
            Operation::Ping,
            Operation::Status,
            Operation::List,
            Operation::TransportKey,
        ] {
            assert_eq!(Limited::of(op, None), Some(Limited::OpenRequest), "{op}");
        }
        for op in [Operation::Export, Operation::Import, Operation::Wrap] {
            assert_eq!(Limited::of(op, None), None, "{op}");
        }
    }

    #[test]
    fn a_flood_logs_a_few_and_counts_the_rest_exactly() {
        let gate = FloodGate::default();
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut logged = 0;
        let mut summarized = 0;
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i * 3); // 30 s: 3 windows
            let admission = gate.admit(7, Limited::Denied, now, window);
            logged += u64::from(admission.log);
            summarized += admission.closed.iter().map(|s| s.suppressed).sum::<u64>();
        }
        for s in gate.close_all(start + Duration::from_secs(31)) {
            summarized += s.suppressed;
        }
        assert_eq!(logged, 3 * u64::from(LOGGED_PER_WINDOW));
        assert_eq!(logged + summarized, 10_000, "every event is accounted for");
    }

    #[test]
    fn kinds_and_peers_are_apart_and_quiet_windows_need_no_summary() {
        let gate = FloodGate::default();
        let now = Instant::now();
        let window = Duration::from_secs(1);
        for _ in 0..LOGGED_PER_WINDOW {
            assert!(gate.admit(1, Limited::Denied, now, window).log);
        }
        assert!(!gate.admit(1, Limited::Denied, now, window).log);
        assert!(gate.admit(1, Limited::BadFrame, now, window).log);
        assert!(gate.admit(2, Limited::Denied, now, window).log);
        assert!(gate.close_expired(now, window).is_empty(), "still open");
        let later = now + Duration::from_secs(2);
        let closed = gate.close_expired(later, window);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!((closed[0].uid, closed[0].kind), (1, Limited::Denied));
        assert_eq!((closed[0].logged, closed[0].suppressed), (5, 1));
        assert!(gate.close_all(later).is_empty());
    }

    #[test]
    fn memory_is_bounded_without_losing_counts() {
        let gate = FloodGate::default();
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let mut counted = 0;
        for uid in 0..3 * MAX_TRACKED as u32 {
            for _ in 0..LOGGED_PER_WINDOW + 1 {
                let admission = gate.admit(uid, Limited::Failed, now, window);
                counted += admission.closed.iter().map(|s| s.suppressed).sum::<u64>();
            }
        }
        assert!(gate.lock().len() <= MAX_TRACKED);
        counted += gate
            .close_all(now)
            .iter()
            .map(|s| s.suppressed)
            .sum::<u64>();
        assert_eq!(counted, 3 * MAX_TRACKED as u64, "one counted event per uid");
    }
}
