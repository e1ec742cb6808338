//! The daemon watching its own traffic: request counters for `hostkms
//! status` and `hostkms metrics`, the patterns that raise an alert (one
//! peer denied again and again, one peer failing to decrypt again and
//! again, a key version nearing its encryption limit), once per burst, and
//! the per-peer limit that keeps refusals from flooding the audit trail
//! ([`flood`]).

pub mod flood;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proto::counters::{
    ALERTS, DENIALS, REQUESTS, RequestResult, alert_counter, request_counter,
};
use agent_proto::{ErrorCode, Operation};
use arc_swap::ArcSwap;

use self::flood::{Admission, FloodGate, Limited, Suppressed};

/// Default sliding window of the two per-peer alerts.
pub const DEFAULT_ALERT_WINDOW_SECS: u64 = 60;
/// Default denials of one uid within the window that raise an alert.
pub const DEFAULT_ALERT_DENIALS: u32 = 10;
/// Default invalid-ciphertext failures of one uid within the window that raise an alert.
pub const DEFAULT_ALERT_INVALID_CIPHERTEXTS: u32 = 10;
/// Default share of `rotate_after_encryptions` at which a version raises an alert.
pub const DEFAULT_ENCRYPTION_LIMIT_PERCENT: u8 = 90;
/// Peers tracked at once per pattern; beyond it the oldest windows are
/// forgotten, so a flood of distinct uids cannot grow memory without bound.
const MAX_TRACKED_PEERS: usize = 4096;

/// When the daemon raises alerts (the config's `[alerts]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertThresholds {
    /// The sliding window of the per-peer alerts.
    pub window: Duration,
    /// Denials of one uid within the window that raise an alert.
    pub denials: u32,
    /// Invalid-ciphertext failures of one uid within the window that raise an alert.
    pub invalid_ciphertexts: u32,
    /// Percentage of `rotate_after_encryptions` at which a version raises an alert.
    pub encryption_limit_percent: u8,
}

impl Default for AlertThresholds {
    fn default() -> AlertThresholds {
        AlertThresholds {
            window: Duration::from_secs(DEFAULT_ALERT_WINDOW_SECS),
            denials: DEFAULT_ALERT_DENIALS,
            invalid_ciphertexts: DEFAULT_ALERT_INVALID_CIPHERTEXTS,
            encryption_limit_percent: DEFAULT_ENCRYPTION_LIMIT_PERCENT,
        }
    }
}

impl AlertThresholds {
    /// The encryption count at which a version limited to `limit` raises its alert.
    pub fn encryption_alert_at(&self, limit: u64) -> u64 {
        (limit.saturating_mul(u64::from(self.encryption_limit_percent)) / 100).clamp(1, limit)
    }
}

/// The patterns that raise an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// One uid was denied `denials` times within the window.
    RepeatedDenials,
    /// One uid failed `invalid_ciphertexts` decryptions within the window.
    RepeatedInvalidCiphertexts,
    /// A key version reached `encryption_limit_percent` of its encryption limit.
    EncryptionLimit,
    /// A key scheduled for deletion was used: someone still needs it.
    PendingDeletionUse,
}

impl AlertKind {
    /// Every kind, in counter order.
    pub const ALL: [AlertKind; 4] = [
        AlertKind::RepeatedDenials,
        AlertKind::RepeatedInvalidCiphertexts,
        AlertKind::EncryptionLimit,
        AlertKind::PendingDeletionUse,
    ];

    /// The kind's name in `HOSTKMS_ALERT` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RepeatedDenials => "repeated-denials",
            AlertKind::RepeatedInvalidCiphertexts => "repeated-invalid-ciphertexts",
            AlertKind::EncryptionLimit => "encryption-limit",
            AlertKind::PendingDeletionUse => "pending-deletion-use",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A peer pattern that crossed its threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAlert {
    /// Which pattern.
    pub kind: AlertKind,
    /// The peer's uid.
    pub uid: u32,
    /// How many events within the window.
    pub count: u32,
    /// The window.
    pub window: Duration,
}

/// Request and alert counters plus the per-peer alert windows.
#[derive(Debug)]
pub struct Monitor {
    thresholds: ArcSwap<AlertThresholds>,
    requests: [[AtomicU64; RequestResult::ALL.len()]; Operation::ALL.len()],
    alerts: [AtomicU64; AlertKind::ALL.len()],
    denials: Mutex<PeerWindows>,
    invalid_ciphertexts: Mutex<PeerWindows>,
    flood: FloodGate,
    pending_uses: Mutex<PendingUses>,
}

impl Monitor {
    /// A monitor with zero counts.
    pub fn new(thresholds: AlertThresholds) -> Monitor {
        Monitor {
            thresholds: ArcSwap::from_pointee(thresholds),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            alerts: std::array::from_fn(|_| AtomicU64::new(0)),
            denials: Mutex::new(PeerWindows::default()),
            invalid_ciphertexts: Mutex::new(PeerWindows::default()),
            flood: FloodGate::default(),
            pending_uses: Mutex::new(PendingUses::default()),
        }
    }

    /// Whether the audit trail logs one refusal of `uid` of `kind` one by
    /// one, or only counts it for the summary of its window (the alert
    /// window); plus the summaries of windows that closed meanwhile.
    pub fn admit(&self, uid: u32, kind: Limited) -> Admission {
        self.flood
            .admit(uid, kind, Instant::now(), self.thresholds().window)
    }

    /// The summaries of the audit windows that have closed: called on a
    /// timer, so that a count is logged even when its peer goes quiet.
    pub fn close_expired_windows(&self) -> Vec<Suppressed> {
        self.flood
            .close_expired(Instant::now(), self.thresholds().window)
    }

    /// The summaries of every open audit window: called at shutdown, so no
    /// count is lost.
    pub fn close_all_windows(&self) -> Vec<Suppressed> {
        self.flood.close_all(Instant::now())
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> AlertThresholds {
        **self.thresholds.load()
    }

    /// Puts new thresholds in force (a reload); the windows carry over.
    pub fn set_thresholds(&self, thresholds: AlertThresholds) {
        self.thresholds.store(std::sync::Arc::new(thresholds));
    }

    /// Counts one answered request and returns the alert it completes, if any.
    pub fn record(&self, uid: u32, op: Operation, code: Option<ErrorCode>) -> Option<PeerAlert> {
        let result = RequestResult::of(code);
        self.requests[op_index(op)][result as usize].fetch_add(1, Ordering::Relaxed);
        self.note_refusal(uid, code?)
    }

    /// Notes one refusal of `uid` towards the repeated-refusal alerts
    /// without counting a request: an item of a batch, refused in its slot,
    /// counts like a refused request (a peer must not probe keys 1,000 at a
    /// time below the alert). Returns the alert it completes, if any.
    pub fn note_refusal(&self, uid: u32, code: ErrorCode) -> Option<PeerAlert> {
        let thresholds = self.thresholds();
        let (kind, windows, threshold) = match code {
            ErrorCode::PermissionDenied => (
                AlertKind::RepeatedDenials,
                &self.denials,
                thresholds.denials,
            ),
            ErrorCode::InvalidCiphertext => (
                AlertKind::RepeatedInvalidCiphertexts,
                &self.invalid_ciphertexts,
                thresholds.invalid_ciphertexts,
            ),
            _ => return None,
        };
        let mut windows = windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = windows.note(uid, Instant::now(), thresholds.window, threshold)?;
        self.count_alert(kind);
        Some(PeerAlert {
            kind,
            uid,
            count,
            window: thresholds.window,
        })
    }

    /// Whether a use of `key`, pending deletion, by `uid` at `now` (the
    /// daemon's monotonic clock) raises the pending-deletion alert: the
    /// first use of each key by each uid does, then none for
    /// [`PENDING_USE_ALERT_EVERY`]. Counts the alert it raises.
    pub fn pending_deletion_use(&self, uid: u32, key: &str, now: Duration) -> bool {
        let raised = self
            .pending_uses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .note(uid, key, now);
        if raised {
            self.count_alert(AlertKind::PendingDeletionUse);
        }
        raised
    }

    /// Counts an alert raised elsewhere (the encryption limit).
    pub fn count_alert(&self, kind: AlertKind) {
        self.alerts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by name, for `Status`: `requests.<op>.<result>`,
    /// `requests`, `denials`, `alerts.<kind>` and `alerts`, as
    /// [`agent_proto::counters`] spells them.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut counters = BTreeMap::new();
        for (op, by_result) in Operation::ALL.into_iter().zip(&self.requests) {
            for (result, count) in RequestResult::ALL.into_iter().zip(by_result) {
                counters.insert(request_counter(op, result), count.load(Ordering::Relaxed));
            }
        }
        for kind in AlertKind::ALL {
            counters.insert(
                alert_counter(kind.as_str()),
                self.alerts[kind.index()].load(Ordering::Relaxed),
            );
        }
        let totals = self.totals();
        counters.insert(REQUESTS.to_string(), totals.requests);
        counters.insert(DENIALS.to_string(), totals.denials);
        counters.insert(ALERTS.to_string(), totals.alerts);
        counters
    }

    /// The sums over every operation and alert kind.
    pub fn totals(&self) -> Totals {
        let load = |count: &AtomicU64| count.load(Ordering::Relaxed);
        Totals {
            requests: self.requests.iter().flatten().map(load).sum(),
            denials: self
                .requests
                .iter()
                .map(|by_result| load(&by_result[RequestResult::Denied as usize]))
                .sum(),
            alerts: self.alerts.iter().map(load).sum(),
        }
    }
}

/// Requests, denials and alerts since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Requests answered, of every kind.
    pub requests: u64,
    /// Requests denied for want of a grant.
    pub denials: u64,
    /// Alerts raised, of every kind.
    pub alerts: u64,
}

fn op_index(op: Operation) -> usize {
    Operation::ALL
        .iter()
        .position(|candidate| *candidate == op)
        .unwrap_or(0)
}

/// How often one uid's uses of one key pending deletion raise an alert.
pub const PENDING_USE_ALERT_EVERY: Duration = Duration::from_secs(3600);

/// When each (uid, key) last raised the pending-deletion alert; at most
/// [`MAX_TRACKED_PEERS`] pairs. When full, the expired ones are forgotten
/// first, then the oldest one: never all at once, so the pairs kept stay
/// quiet for their hour.
#[derive(Debug, Default)]
struct PendingUses {
    last: HashMap<(u32, String), Duration>,
}

impl PendingUses {
    /// Notes a use; true when it raises the alert.
    fn note(&mut self, uid: u32, key: &str, now: Duration) -> bool {
        let recent = |at: &Duration| now.saturating_sub(*at) < PENDING_USE_ALERT_EVERY;
        let pair = match self.last.entry((uid, key.to_owned())) {
            Entry::Occupied(mut seen) => {
                if recent(seen.get()) {
                    return false;
                }
                seen.insert(now);
                return true;
            }
            Entry::Vacant(slot) => slot.into_key(),
        };
        if self.last.len() >= MAX_TRACKED_PEERS {
            self.last.retain(|_, at| recent(at));
        }
        if self.last.len() >= MAX_TRACKED_PEERS {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(oldest, _)| oldest.clone());
            if let Some(oldest) = oldest {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(pair, now);
        true
    }
}

/// Per uid, the recent event times (at most `threshold`) and whether the
/// current burst has raised its alert.
#[derive(Debug, Default)]
struct PeerWindows {
    by_uid: HashMap<u32, Burst>,
}

/// One uid's events of one pattern.
#[derive(Debug, Default)]
struct Burst {
    times: VecDeque<Instant>,
    /// The alert of this burst was raised; no other until it ends.
    alerted: bool,
    last: Option<Instant>,
}

impl PeerWindows {
    /// Notes one event of `uid` at `now`. When it is the `threshold`th
    /// within `window`, returns the count: the burst's one alert. A burst
    /// ends when the uid has been quiet for a whole `window`; only then can
    /// the next alert be raised, however long the burst goes on.
    fn note(&mut self, uid: u32, now: Instant, window: Duration, threshold: u32) -> Option<u32> {
        let threshold = usize::try_from(threshold.max(1)).unwrap_or(usize::MAX);
        if !self.by_uid.contains_key(&uid) && self.by_uid.len() >= MAX_TRACKED_PEERS {
            self.forget_expired(now, window);
            if self.by_uid.len() >= MAX_TRACKED_PEERS {
                self.by_uid.clear();
            }
        }
        let burst = self.by_uid.entry(uid).or_default();
        let quiet = burst
            .last
            .is_none_or(|last| now.duration_since(last) > window);
        burst.last = Some(now);
        if burst.alerted {
            if !quiet {
                return None;
            }
            burst.alerted = false;
            burst.times.clear();
        }
        while burst
            .times
            .front()
            .is_some_and(|first| now.duration_since(*first) > window)
        {
            burst.times.pop_front();
        }
        burst.times.push_back(now);
        if burst.times.len() < threshold {
            return None;
        }
        let count = burst.times.len();
        burst.times.clear();
        burst.alerted = true;
        Some(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn forget_expired(&mut self, now: Instant, window: Duration) {
        self.by_uid.retain(|_, burst| {
            burst
                .last
                .is_some_and(|last| now.duration_since(last) <= window)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::counters::{alert_counter_kind, parse_request_counter};

    #[test]
    fn a_burst_raises_one_alert_however_long_it_lasts() {
        let mut windows = PeerWindows::default();
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let at = |ms: u64| start + Duration::from_millis(ms);
        for i in 0..2 {
            assert_eq!(windows.note(7, at(i), window, 3), None);
        }
        assert_eq!(windows.note(7, at(2), window, 3), Some(3));
        // Ten minutes more of it, never a minute quiet: no second alert.
        for i in 3..600_003 {
            assert_eq!(windows.note(7, at(i), window, 3), None, "event {i}");
        }
        // Quiet for longer than the window: the next burst raises its own.
        let next = 600_003 + 61_000;
        assert_eq!(windows.note(7, at(next), window, 3), None);
        assert_eq!(windows.note(7, at(next + 1), window, 3), None);
        assert_eq!(windows.note(7, at(next + 2), window, 3), Some(3));
    }

    #[test]
    fn events_outside_the_window_do_not_count() {
        let mut windows = PeerWindows::default();
        let start = Instant::now();
        let window = Duration::from_secs(10);
        for i in 0..10 {
            assert_eq!(
                windows.note(1, start + Duration::from_secs(i * 6), window, 3),
                None,
                "event {i}"
            );
        }
    }

    #[test]
    fn peers_are_counted_apart_and_memory_is_bounded() {
        let mut windows = PeerWindows::default();
        let now = Instant::now();
        let window = Duration::from_secs(60);
        assert_eq!(windows.note(1, now, window, 2), None);
        assert_eq!(windows.note(2, now, window, 2), None);
        assert_eq!(windows.note(1, now, window, 2), Some(2));
        assert_eq!(windows.note(2, now, window, 2), Some(2));
        for uid in 10..10 + 3 * MAX_TRACKED_PEERS as u32 {
            windows.note(uid, now, window, 5);
        }
        assert!(windows.by_uid.len() <= MAX_TRACKED_PEERS);
    }

    #[test]
    fn a_key_pending_deletion_alerts_once_per_uid_and_key_per_hour() {
        let monitor = Monitor::new(AlertThresholds::default());
        let at = Duration::from_secs;
        assert!(monitor.pending_deletion_use(5, "db", at(10)));
        assert!(!monitor.pending_deletion_use(5, "db", at(11)));
        assert!(!monitor.pending_deletion_use(5, "db", at(3609)));
        assert!(monitor.pending_deletion_use(6, "db", at(12)), "another uid");
        assert!(
            monitor.pending_deletion_use(5, "web", at(13)),
            "another key"
        );
        assert!(
            monitor.pending_deletion_use(5, "db", at(3610)),
            "an hour on"
        );
        assert_eq!(monitor.counters()["alerts.pending-deletion-use"], 4);
        let mut uses = PendingUses::default();
        for uid in 0..3 * MAX_TRACKED_PEERS as u32 {
            assert!(uses.note(uid, "db", at(1)));
        }
        assert!(uses.last.len() <= MAX_TRACKED_PEERS);
    }

    #[test]
    fn a_full_pending_use_memory_forgets_one_pair_not_all() {
        let at = Duration::from_millis;
        let mut uses = PendingUses::default();
        let full = MAX_TRACKED_PEERS as u32;
        for uid in 0..full {
            assert!(uses.note(uid, "db", at(uid.into())));
        }
        // A new pair while every tracked one is recent: only the oldest goes.
        assert!(uses.note(full, "db", at(full.into())));
        assert_eq!(uses.last.len(), MAX_TRACKED_PEERS);
        for uid in 1..=full {
            assert!(
                !uses.note(uid, "db", at(full.into())),
                "uid {uid} alerts again"
            );
        }
        // Expired pairs are forgotten before any recent one.
        let hour_on = at(u64::from(full)) + PENDING_USE_ALERT_EVERY;
        assert!(uses.note(full, "db", hour_on));
        assert!(uses.note(full + 1, "web", hour_on));
        assert!(!uses.note(full, "db", hour_on));
        assert_eq!(uses.last.len(), 2);
    }

    #[test]
    fn the_encryption_alert_sits_below_the_limit() {
        let thresholds = AlertThresholds::default();
        assert_eq!(thresholds.encryption_alert_at(1 << 30), 966_367_641);
        assert_eq!(thresholds.encryption_alert_at(5), 4);
        assert_eq!(thresholds.encryption_alert_at(1), 1);
    }

    #[test]
    fn counters_name_every_operation_and_result() {
        let monitor = Monitor::new(AlertThresholds {
            denials: 2,
            ..AlertThresholds::default()
        });
        assert_eq!(monitor.record(5, Operation::Wrap, None), None);
        assert_eq!(
            monitor.record(5, Operation::Unwrap, Some(ErrorCode::PermissionDenied)),
            None
        );
        let alert = monitor.record(5, Operation::Unwrap, Some(ErrorCode::PermissionDenied));
        assert_eq!(
            alert.map(|a| (a.kind, a.uid, a.count)),
            Some((AlertKind::RepeatedDenials, 5, 2))
        );
        let counters = monitor.counters();
        assert_eq!(counters["requests.wrap.ok"], 1);
        assert_eq!(counters["requests.unwrap.denied"], 2);
        assert_eq!(counters["requests.rotate.error"], 0);
        assert_eq!(counters["requests"], 3);
        assert_eq!(counters["denials"], 2);
        assert_eq!(counters["alerts.repeated-denials"], 1);
        assert_eq!(counters["alerts"], 1);
        // Exactly the names the clients parse back: every operation and
        // result, every alert kind, and the three totals.
        let mut requests = 0;
        for name in counters.keys() {
            if let Some((op, result)) = parse_request_counter(name) {
                assert_eq!(*name, request_counter(op, result));
                requests += 1;
            } else if let Some(kind) = alert_counter_kind(name) {
                assert!(AlertKind::ALL.iter().any(|k| k.as_str() == kind), "{name}");
            } else {
                assert!(
                    [REQUESTS, DENIALS, ALERTS].contains(&name.as_str()),
                    "{name}"
                );
            }
        }
        assert_eq!(requests, Operation::ALL.len() * RequestResult::ALL.len());
        assert_eq!(counters.len(), requests + AlertKind::ALL.len() + 3);
        assert_eq!(
            monitor.totals(),
            Totals {
                requests: 3,
                denials: 2,
                alerts: 1
            }
        );
    }
}
