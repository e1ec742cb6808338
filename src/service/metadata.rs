//! A key's description and tags: `UpdateKeyMetadata` (grant
//! `set-metadata`), and what a `CreateKey`'s settings become for the key
//! store. The limits are checked in one place, the key store's
//! (`keystore::metadata`), for both.

use std::collections::BTreeMap;

use agent_proto::{KeySettings, Operation, Response, RotationSetting};

use super::{Refusal, Service};
use crate::audit::Subject;
use crate::keystore::NewKeySettings;
use crate::peer::Peer;

/// An `UpdateKeyMetadata` request's changes.
pub(super) struct MetadataUpdate {
    /// The new description; `None` keeps the current one.
    pub description: Option<String>,
    /// Tags to add or replace.
    pub set_tags: BTreeMap<String, String>,
    /// Tags to remove.
    pub remove_tags: Vec<String>,
}

impl Service {
    /// `UpdateKeyMetadata`: changes `key`'s description and tags for a
    /// peer granted `set-metadata` on it.
    pub(super) async fn update_metadata(
        &self,
        peer: &Peer,
        key: String,
        update: MetadataUpdate,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::UpdateMetadata, &key)?;
        let MetadataUpdate {
            description,
            set_tags,
            remove_tags,
        } = update;
        self.change(
            move |store| store.update_metadata(&key, description, set_tags, &remove_tags),
            subject,
        )
        .await
    }

    /// What a `CreateKey`'s `settings` give the key store: the description
    /// and tags as sent (the store checks them), and the rotation period
    /// resolved against the daemon's default.
    pub(super) fn new_key_settings(
        &self,
        settings: KeySettings,
    ) -> Result<NewKeySettings, Refusal> {
        let KeySettings {
            rotation,
            description,
            tags,
        } = settings;
        let rotation_period = match rotation {
            // The daemon's default: off until the lifecycle's config lands.
            RotationSetting::DaemonDefault | RotationSetting::Off => None,
            RotationSetting::Every(_) => return Err(super::not_yet(Operation::Create)),
        };
        Ok(NewKeySettings {
            rotation_period,
            description,
            tags,
        })
    }
}
