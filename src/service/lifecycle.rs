//! The key lifecycle requests: creating a key with its rotation period
//! (the config's default unless the creator says), scheduling and
//! cancelling its deletion, changing its rotation period; and the refusal
//! and alert when a key pending deletion is still used.
//!
//! The lifecycle timer (`crate::lifecycle`) does the rest: it rotates keys
//! that are due and deletes keys whose waiting period is over.

use std::sync::Arc;

use agent_proto::{KeySettings, KeyType, Operation, Response, RotationSetting};

use super::{Refusal, Service};
use crate::audit::{self, Subject};
use crate::keystore::{Key, NewKeySettings, StoreError};
use crate::peer::Peer;
use agent_proto::date::rfc3339;

/// What new keys get unless their creator says: the config's `[keys]`
/// table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyDefaults {
    /// The rotation period of a key created with
    /// [`RotationSetting::DaemonDefault`]; `None`: no rotation by age.
    pub rotation_period: Option<u64>,
}

/// The operations that use a key's material: refused on a key pending
/// deletion, and each such refusal raises the pending-deletion alert
/// (someone still needs the key). Batches are not here: a batch is never
/// refused whole for it, each refused item raises its own alert.
pub(super) const USES: [Operation; 9] = [
    Operation::Wrap,
    Operation::Unwrap,
    Operation::DataKey,
    Operation::Rewrap,
    Operation::Mac,
    Operation::VerifyMac,
    Operation::Sign,
    Operation::Verify,
    Operation::Export,
];

impl Service {
    /// Puts the config's key defaults in force (at start and on every
    /// reload); keys created before keep what they have.
    pub fn set_key_defaults(&self, defaults: KeyDefaults) {
        self.key_defaults.store(Arc::new(defaults));
    }

    /// `CreateKey`: the rotation setting resolved (the daemon's default is
    /// stored in the key, so a later config change does not touch it); the
    /// store checks the period, description and tags.
    pub(super) async fn create_key(
        &self,
        peer: &Peer,
        name: String,
        key_type: KeyType,
        settings: KeySettings,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::Create, &name)?;
        let rotation_period = match settings.rotation {
            RotationSetting::DaemonDefault => self.key_defaults.load().rotation_period,
            RotationSetting::Off => None,
            RotationSetting::Every(secs) => Some(secs),
        };
        let settings = NewKeySettings {
            rotation_period,
            description: settings.description,
            tags: settings.tags,
        };
        self.change(
            move |store| store.create_with(&name, key_type, settings),
            subject,
        )
        .await
    }

    /// `ScheduleDeletion`: the key becomes pending deletion, due when the
    /// wall clock reaches now + `days` AND the daemon clock (time the
    /// daemon measured passing) has advanced by `days` too, so that no
    /// clock jump deletes it early.
    pub(super) async fn schedule_deletion(
        &self,
        peer: &Peer,
        key: String,
        days: u16,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::ScheduleDeletion, &key)?;
        let response = self
            .change(
                move |store| {
                    let due = store.deletion_due_in(days)?;
                    store.schedule_deletion(&key, due)
                },
                subject,
            )
            .await?;
        if let Response::Key(info) = &response {
            tracing::warn!(
                key = info.name.as_str(),
                uid = peer.uid,
                deletion_date = info.deletion_date.map(rfc3339),
                "key {} scheduled for deletion by uid {}: deleted for good at {} at the earliest, unless cancelled with `hostkms cancel-deletion`",
                info.name,
                peer.uid,
                info.deletion_date.map_or_else(|| "?".to_string(), rfc3339),
            );
        }
        Ok(response)
    }

    /// `CancelDeletion`: a key pending deletion becomes disabled.
    pub(super) async fn cancel_deletion(
        &self,
        peer: &Peer,
        key: String,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::CancelDeletion, &key)?;
        self.change(move |store| store.cancel_deletion(&key), subject)
            .await
    }

    /// `SetRotationPeriod`: `Some(seconds)` within 1 hour to 100 years (the
    /// store checks), or `None` for no rotation by age.
    pub(super) async fn set_rotation_period(
        &self,
        peer: &Peer,
        key: String,
        period: Option<u64>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::SetRotationPeriod, &key)?;
        self.change(
            move |store| store.set_rotation_period(&key, period),
            subject,
        )
        .await
    }

    /// The refusal of a use of `key`, pending deletion: the store's
    /// refusal of a change to it, which names the date and how to cancel.
    pub(super) fn pending_deletion(key: &Key) -> Refusal {
        StoreError::KeyPendingDeletion {
            name: key.name().to_string(),
            // Set on every pending key: the loader and restore refuse one without.
            due_wall: key.deletion_due().map_or(0, |due| due.wall),
        }
        .into()
    }

    /// Raises the pending-deletion alert for a use of `key` by `peer`,
    /// refused with the deletion date `due`: at most once per key and peer
    /// per hour, so a client in a retry loop cannot flood the journal.
    /// Called for every refused use, including each item of a batch.
    pub(crate) fn pending_deletion_used(
        &self,
        peer: &Peer,
        key: &str,
        due: Option<u64>,
        op: Operation,
    ) {
        let Some(store) = self.store() else {
            return;
        };
        let now = store.clock().monotonic();
        if self.monitor.pending_deletion_use(peer.uid, key, now) {
            audit::pending_deletion_use_alert(peer, key, op, due);
        }
    }
}
