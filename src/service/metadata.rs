//! A key's description and tags after creation: `UpdateKeyMetadata`
//! (grant `set-metadata`). A `CreateKey`'s are passed on by
//! `service::lifecycle::create_key`; the limits are checked in one place,
//! the key store's (`keystore::metadata`), for both.

use std::collections::BTreeMap;

use agent_proto::{Operation, Response};

use super::{Refusal, Service};
use crate::audit::Subject;
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
}
