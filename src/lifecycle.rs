//! The lifecycle timer: once at start-up and then every minute it
//!
//! 1. advances the daemon clock (the persisted count of seconds the daemon
//!    has measured passing on the monotonic clock, across runs) by the
//!    time measured since the last tick;
//! 2. deletes every key pending deletion whose waiting period is over by
//!    both clocks: the wall-clock date has come AND the daemon clock has
//!    reached its target, so no jump of the wall clock deletes a key early
//!    and downtime does not count;
//! 3. rotates every enabled key whose rotation period is up (its latest
//!    version's creation + the period is past), once: the new version
//!    restarts the period. A host that was off rotates at start-up. A
//!    latest version made more than [`FUTURE_TOLERANCE`] ahead of the
//!    wall clock was stamped while the clock was wrong (a bad RTC, an NTP
//!    glitch): it would hold rotation off for as long as the clock was
//!    ahead, so the key is due at once, with a warning naming it and the
//!    date; the new version is stamped now, so it rotates once, not in a
//!    loop.
//!
//! At shutdown it advances the daemon clock a last time, so a clean stop
//! loses nothing and a crash at most one tick (which only delays a
//! deletion). Each change is logged and audited with the daemon as the
//! peer. With a movable test clock (debug builds only) it ticks every
//! 200 ms, so tests need not wait a minute.

use std::sync::Arc;
use std::time::Duration;

use agent_proto::KeyState;
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::clock::Clock;
use crate::envelope::KeyId;
use crate::keystore::{Key, KeyStore};
use crate::service::Service;

/// How often the timer ticks.
pub const TICK: Duration = Duration::from_secs(60);
/// How often it ticks with a movable test clock.
const MOVABLE_CLOCK_TICK: Duration = Duration::from_millis(200);

/// How far ahead of the wall clock a key's latest version may have been
/// stamped before the timer takes the stamp for a clock that was wrong
/// and rotates the key at once (seconds): a day, well beyond any clock
/// skew NTP leaves.
pub const FUTURE_TOLERANCE: u64 = 86_400;

/// Runs the timer until `shutdown`, then advances the daemon clock one
/// last time.
pub async fn run(service: Arc<Service>, shutdown: CancellationToken) {
    // A locked daemon has no keys to tick for until it is unlocked.
    let store = tokio::select! {
        () = shutdown.cancelled() => return,
        store = service.opened() => store,
    };
    let every = tick_interval(store.clock());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut measured = Measured::from(store.clock());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let ticking = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || {
            tick(&ticking, &mut measured);
            measured
        })
        .await
        {
            Ok(after) => measured = after,
            Err(e) => tracing::error!("the lifecycle timer's tick did not finish: {e}"),
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = measured.advance(&store) {
            tracing::warn!(
                "could not record the daemon clock at shutdown (scheduled deletions wait up to a minute longer): {e}"
            );
        }
    })
    .await;
}

/// Logs a warning at start when the key store existed but recorded no
/// daemon clock ([`KeyStore::daemon_clock_missing`]), naming the keys
/// pending deletion, whose measured wait starts again.
pub fn warn_if_daemon_clock_missing(store: &KeyStore) {
    if let Some(warning) = daemon_clock_missing(store) {
        tracing::warn!("{warning}");
    }
}

/// The warning of [`warn_if_daemon_clock_missing`], if one is due.
fn daemon_clock_missing(store: &KeyStore) -> Option<String> {
    if !store.daemon_clock_missing() {
        return None;
    }
    let keys = store.keys();
    let pending: Vec<String> = keys
        .after(None)
        .filter(|key| key.state() == KeyState::PendingDeletion)
        .map(|key| format!("{:?}", key.name()))
        .collect();
    let mut warning = format!(
        "{} records no daemon clock: its row was deleted, or the store was last written by a hostkms without scheduled deletions. The daemon clock starts again at 0, so the measured wait of every scheduled deletion starts again (a deletion comes later than scheduled, never earlier)",
        store.path().display()
    );
    if pending.is_empty() {
        warning.push_str("; no key is pending deletion");
    } else {
        warning.push_str(&format!(
            "; keys pending deletion, whose wait starts again: {}",
            pending.join(", ")
        ));
    }
    Some(warning)
}

/// The timer's period on `clock`.
fn tick_interval(clock: &Clock) -> Duration {
    if clock.is_movable() {
        MOVABLE_CLOCK_TICK
    } else {
        TICK
    }
}

/// Up to which reading of the monotonic clock the daemon clock has been
/// advanced: only whole seconds are added, the rest waits for the next tick.
#[derive(Debug, Clone, Copy)]
struct Measured {
    until: Duration,
}

impl Measured {
    fn from(clock: &Clock) -> Measured {
        Measured {
            until: clock.monotonic(),
        }
    }

    /// Adds the whole seconds measured since the last advance to the
    /// store's daemon clock; returns its value. A monotonic clock that went
    /// back (only a test clock can) adds nothing until it passes again.
    fn advance(&mut self, store: &KeyStore) -> Result<u64, crate::keystore::StoreError> {
        let now = store.clock().monotonic();
        let secs = now.saturating_sub(self.until).as_secs();
        if secs == 0 {
            return Ok(store.daemon_clock());
        }
        let value = store.advance_daemon_clock(secs)?;
        self.until += Duration::from_secs(secs);
        Ok(value)
    }
}

/// A key the tick found due, and what it does to it.
enum Due {
    Deletion {
        name: String,
        versions: u32,
        wall: u64,
    },
    Rotation {
        name: String,
        id: KeyId,
        version: u32,
        period: u64,
        at: u64,
        /// When the latest version was stamped, if that is further ahead
        /// than [`FUTURE_TOLERANCE`] (then `at` is now).
        stamped_ahead: Option<u64>,
    },
}

/// One tick: advance the daemon clock, delete what is due, rotate what is
/// due.
fn tick(store: &KeyStore, measured: &mut Measured) {
    let daemon_clock = measured.advance(store).unwrap_or_else(|e| {
        tracing::warn!(
            "could not advance the daemon clock (scheduled deletions wait until it can): {e}"
        );
        store.daemon_clock()
    });
    let now = store.clock().now();
    for due in due_keys(store, now, daemon_clock) {
        match due {
            Due::Deletion {
                name,
                versions,
                wall,
            } => match store.delete_due(&name, now, daemon_clock) {
                Ok(_) => audit::deleted_as_scheduled(&name, versions, wall),
                Err(e) => audit::change_by_daemon_failed(audit::DELETE_SCHEDULED, &name, &e),
            },
            Due::Rotation {
                name,
                id,
                version,
                period,
                at,
                stamped_ahead,
            } => {
                if let Some(stamped) = stamped_ahead {
                    warn_stamped_ahead(&name, version, stamped, now);
                }
                rotate_by_age(store, &name, id, version, period, at);
            }
        }
    }
}

/// Warns that key `name`'s latest `version` was stamped `stamped`, more
/// than [`FUTURE_TOLERANCE`] ahead of the wall clock's `now`.
fn warn_stamped_ahead(name: &str, version: u32, stamped: u64, now: u64) {
    tracing::warn!(
        key = name,
        "key {name:?}: its latest version {version} is stamped {}, in the future (the wall clock now reads {}): the clock was ahead when it was made. Rotating the key now, so that its rotation period counts from the present and not from that date; check the host's clock (timedatectl)",
        agent_proto::date::rfc3339(stamped),
        agent_proto::date::rfc3339(now)
    );
}

/// Rotates key `name` (`id`), due by age since `at`, if `version` is still
/// its latest and the key still enabled; audits it.
fn rotate_by_age(store: &KeyStore, name: &str, id: KeyId, version: u32, period: u64, at: u64) {
    match store.rotate_if_due(id, version) {
        Ok(key) if key.latest_version() > version => {
            audit::rotated_by_age(name, key.latest_version(), period, at);
        }
        // Rotated meanwhile (by a request, or at its encryption limit):
        // the new version restarted the period. Or disabled meanwhile: a
        // disabled key is not rotated by age.
        Ok(_) => {}
        Err(e) => audit::change_by_daemon_failed("rotate", name, &e),
    }
}

/// The keys due for deletion (both clocks past their targets) or for
/// rotation (enabled, rotation period up) at wall time `now` and daemon
/// clock `daemon_clock`.
fn due_keys(store: &KeyStore, now: u64, daemon_clock: u64) -> Vec<Due> {
    let keys = store.keys();
    let mut due = Vec::new();
    for key in keys.after(None) {
        match key.state() {
            KeyState::PendingDeletion => {
                if let Some(deletion) = key.deletion_due() {
                    if now >= deletion.wall && daemon_clock >= deletion.elapsed {
                        due.push(Due::Deletion {
                            name: key.name().to_string(),
                            versions: key.latest_version(),
                            wall: deletion.wall,
                        });
                    }
                }
            }
            KeyState::Enabled => {
                if let Some(rotation) = rotation_due(key, now) {
                    due.push(rotation);
                }
            }
            KeyState::Disabled | KeyState::Revoked => {}
        }
    }
    due
}

/// Whether enabled `key` is due for rotation by age at wall time `now`:
/// its period is up, or its latest version was stamped more than
/// [`FUTURE_TOLERANCE`] ahead of `now` (due at once: that stamp says the
/// clock was wrong, not when the period began).
fn rotation_due(key: &Key, now: u64) -> Option<Due> {
    let (period, at) = (key.rotation_period()?, key.next_rotation()?);
    let stamped = key.latest()?.created();
    let stamped_ahead = (stamped > now.saturating_add(FUTURE_TOLERANCE)).then_some(stamped);
    if now < at && stamped_ahead.is_none() {
        return None;
    }
    Some(Due::Rotation {
        name: key.name().to_string(),
        id: key.id(),
        version: key.latest_version(),
        period,
        at: if stamped_ahead.is_some() { now } else { at },
        stamped_ahead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::service::testing::TestServiceBuilder;

    const DAY: u64 = 86_400;

    #[test]
    fn a_version_stamped_more_than_a_day_ahead_is_due_at_once_and_only_then() {
        let tmp = tempfile::tempdir().unwrap();
        let clock_file = tmp.path().join("clock");
        let ahead = 10 * 365 * DAY;
        std::fs::write(&clock_file, format!("{ahead} 0")).unwrap();
        let service = TestServiceBuilder::new()
            .clock(Clock::movable(&clock_file))
            .build(&tmp.path().join("state"), Policy::default())
            .unwrap();
        let store = service.store().expect("the test service is unlocked");
        store.create("aged").unwrap();
        let key = store.set_rotation_period("aged", Some(DAY)).unwrap();
        let stamped = key.latest().unwrap().created();

        // By the clock it was made with, not due before its period is up.
        assert!(rotation_due(&key, stamped).is_none());
        assert!(rotation_due(&key, stamped + DAY).is_some());
        // Up to a day ahead is clock skew: the period rules.
        assert!(rotation_due(&key, stamped - FUTURE_TOLERANCE).is_none());
        // Further ahead: due now, saying when it was stamped.
        let now = stamped - FUTURE_TOLERANCE - 1;
        match rotation_due(&key, now) {
            Some(Due::Rotation {
                at, stamped_ahead, ..
            }) => assert_eq!((at, stamped_ahead), (now, Some(stamped))),
            _ => panic!("a version stamped in the future is due"),
        }
        // A disabled key never rotates, however it is stamped.
        let disabled = store.set_enabled("aged", false).unwrap();
        assert!(rotation_due(&disabled, now).is_none());
    }
}
