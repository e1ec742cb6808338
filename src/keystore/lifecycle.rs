//! The changes of a key's lifecycle besides its versions: description and
//! tags, the rotation period, a deletion scheduled, cancelled or done, and
//! the daemon clock a deletion's waiting period is measured on.
//!
//! A deletion is due once both clocks have passed its date: the wall clock
//! ([`crate::clock::Clock::now`]) and the daemon clock, the seconds the
//! daemon has measured passing with its monotonic clock, persisted across
//! runs. A wall-clock jump forward therefore never deletes early, and time
//! the daemon did not run does not count toward the waiting period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use agent_proto::{KeyState, MAX_DELETION_DAYS, MIN_DELETION_DAYS};

use super::db::{self, DAEMON_CLOCK, daemon_clock_canonical};
use super::metadata::{self, DeletionDue};
use super::sealing::StoreSecrets;
use super::writers::{refuse_pending, revoke_whole};
use super::{Change, Key, KeyStore, StoreError, Version, rollback};

const DAY: u64 = 86_400;

impl KeyStore {
    /// Replaces key `name`'s description (when `Some`), sets `set_tags`
    /// and removes `remove_tags` (a name in both is removed); checked
    /// against the limits as a whole. Allowed in every state but revoked.
    pub fn update_metadata(
        &self,
        name: &str,
        description: Option<String>,
        set_tags: BTreeMap<String, String>,
        remove_tags: &[String],
    ) -> Result<Arc<Key>, StoreError> {
        if let Some(description) = &description {
            metadata::check_description(description)?;
        }
        let mut writer = self.writer();
        let key = self.live(name)?;
        let tags = metadata::updated_tags(&key.tags, set_tags, remove_tags)?;
        let mut next = Key::clone(&key);
        if let Some(description) = description {
            next.description = description;
        }
        next.tags = tags;
        self.commit(&mut writer, next, &[], Change::Metadata)
    }

    /// Sets key `name`'s rotation period (`None`: never by age). Allowed
    /// in every state but revoked; only an enabled key rotates.
    pub fn set_rotation_period(
        &self,
        name: &str,
        period: Option<u64>,
    ) -> Result<Arc<Key>, StoreError> {
        metadata::check_rotation_period(period)?;
        let mut writer = self.writer();
        let key = self.live(name)?;
        if key.rotation_period == period {
            return Ok(key);
        }
        let mut next = Key::clone(&key);
        next.rotation_period = period;
        self.commit(&mut writer, next, &[], Change::RotationPeriod)
    }

    /// When a deletion scheduled now with a waiting period of `days`
    /// (from [`MIN_DELETION_DAYS`] to [`MAX_DELETION_DAYS`]) is due: `days`
    /// from now on the wall clock and on the daemon clock.
    pub fn deletion_due_in(&self, days: u16) -> Result<DeletionDue, StoreError> {
        if !(MIN_DELETION_DAYS..=MAX_DELETION_DAYS).contains(&days) {
            return Err(StoreError::InvalidArgument(format!(
                "a deletion waits {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS} days, not {days}: \
                 ask for a waiting period in that range"
            )));
        }
        let wait = u64::from(days) * DAY;
        Ok(DeletionDue {
            wall: self.clock.now().saturating_add(wait),
            elapsed: self.daemon_clock().saturating_add(wait),
        })
    }

    /// Puts key `name` (enabled or disabled) in state `PendingDeletion`
    /// until `due` ([`KeyStore::deletion_due_in`]). Takes access away, so
    /// the rollback counter counts it like a disable. A key already
    /// pending is refused with [`StoreError::KeyPendingDeletion`].
    pub fn schedule_deletion(&self, name: &str, due: DeletionDue) -> Result<Arc<Key>, StoreError> {
        let mut writer = self.writer();
        let key = self.live(name)?;
        refuse_pending(&key)?;
        let mut next = Key::clone(&key);
        next.state = KeyState::PendingDeletion;
        next.deletion_due = Some(due);
        self.commit(&mut writer, next, &[], Change::ScheduleDeletion)
    }

    /// Cancels key `name`'s pending deletion: the key becomes disabled (an
    /// operator enables it deliberately). Any other state is refused.
    pub fn cancel_deletion(&self, name: &str) -> Result<Arc<Key>, StoreError> {
        let mut writer = self.writer();
        let key = self.live(name)?;
        if key.deletion_due.is_none() {
            return Err(StoreError::InvalidArgument(format!(
                "key {:?} is not scheduled for deletion",
                key.name
            )));
        }
        let mut next = Key::clone(&key);
        next.state = KeyState::Disabled;
        next.deletion_due = None;
        self.commit(&mut writer, next, &[], Change::CancelDeletion)
    }

    /// Deletes key `name`, pending deletion, once its due has passed on
    /// both clocks: `now_wall` (the wall clock) and `daemon_clock`, taken
    /// as at most the persisted daemon clock, so a value ahead of it never
    /// deletes early. The effect of revoking the whole key: every KEK
    /// deleted, state `Revoked`, the rollback counter counted up, the
    /// recovery record rewritten. Refused ([`StoreError::DeletionNotDue`])
    /// before the due, and for a key not pending deletion.
    pub fn delete_due(
        &self,
        name: &str,
        now_wall: u64,
        daemon_clock: u64,
    ) -> Result<Arc<Key>, StoreError> {
        let mut writer = self.writer();
        let key = self.live(name)?;
        let Some(due) = key.deletion_due else {
            return Err(StoreError::InvalidArgument(format!(
                "key {:?} is not scheduled for deletion",
                key.name
            )));
        };
        let elapsed = daemon_clock.min(self.daemon_clock());
        if now_wall < due.wall || elapsed < due.elapsed {
            return Err(StoreError::DeletionNotDue {
                name: key.name.clone(),
                due_wall: due.wall,
                elapsed_left: due.elapsed.saturating_sub(elapsed),
            });
        }
        let mut next = Key::clone(&key);
        let changed = revoke_whole(&mut next);
        let rows: Vec<&Version> = changed.iter().map(Arc::as_ref).collect();
        self.commit(&mut writer, next, &rows, Change::DeleteScheduled)
    }

    /// Adds `seconds` to the daemon clock, durably; returns the new value.
    /// The lifecycle timer calls it at every tick and at a clean shutdown
    /// with the monotonic time measured since its last call.
    pub fn advance_daemon_clock(&self, seconds: u64) -> Result<u64, StoreError> {
        let mut writer = self.writer();
        let value = self.daemon_clock().saturating_add(seconds);
        if seconds == 0 {
            return Ok(value);
        }
        let text = daemon_clock_row(&writer.secrets, value);
        writer
            .db
            .transaction(|tx| db::put_meta(tx, DAEMON_CLOCK, &text))
            .map_err(|e| self.db_error(e))?;
        self.daemon_clock.store(value, Ordering::Release);
        Ok(value)
    }
}

/// The `meta` value of the daemon clock at `seconds`: "v1 SECONDS MAC",
/// MACed under the root key's row key in `secrets`.
pub(super) fn daemon_clock_row(secrets: &StoreSecrets, seconds: u64) -> String {
    let mac = secrets.row_mac(&daemon_clock_canonical(seconds));
    format!("v1 {seconds} {}", rollback::hex(&mac))
}
