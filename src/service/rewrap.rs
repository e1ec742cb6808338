//! `Rewrap` with a destination (protocol version 5): decrypt under the
//! source key, encrypt under another key and/or with another context,
//! inside the daemon. The plaintext stays in a buffer wiped on drop and is
//! never part of an answer, a log line or an error.
//!
//! Grants: `unwrap` on the source key and `wrap` on the destination key,
//! exactly what a peer needs to do the same by hand, so nothing new is
//! granted. (A `Rewrap` without destination needs `rewrap` on its key.)

use agent_proto::{
    Ciphertext, EncryptionContext, ErrorCode, Operation, RewrapDestination, Wrapped,
};

use super::{Refusal, Service};
use crate::audit::Subject;
use crate::peer::Peer;

impl Service {
    /// Re-encrypts `ciphertext` (made under `context`, of `expected_key`
    /// when given) for `destination`: its key (default: the source key) and
    /// its context (default: `context`).
    pub(super) async fn rewrap_to(
        &self,
        peer: &Peer,
        ciphertext: &Ciphertext,
        context: &EncryptionContext,
        expected_key: Option<&str>,
        destination: RewrapDestination,
        subject: &mut Subject,
    ) -> Result<Wrapped, Refusal> {
        // The destination's grant first: a peer without it learns nothing
        // about the source ciphertext.
        if let Some(to) = destination.key.as_deref() {
            subject.set_destination(to, None);
            self.permit(peer, Operation::Wrap, to)?;
        }
        let decrypted = self.decrypt(
            peer,
            Operation::Unwrap,
            ciphertext,
            context,
            expected_key,
            subject,
        )?;
        let to = match destination.key.as_deref() {
            Some(to) => to,
            None => {
                // The source key itself: its `wrap` grant, like any other
                // destination's.
                self.permit(peer, Operation::Wrap, decrypted.key.name())?;
                decrypted.key.name()
            }
        };
        let to_context = destination.context.as_ref().unwrap_or(context);
        subject.set_destination(to, None);
        let mut to_subject = Subject::default();
        let wrapped = self
            .encrypt(
                Operation::Rewrap,
                to,
                &decrypted.plaintext,
                to_context,
                &mut to_subject,
            )
            .await
            .inspect_err(|refusal| {
                // The alert of a use of a key pending deletion names the
                // destination, the key refused, not the source.
                if refusal.code == ErrorCode::KeyPendingDeletion {
                    subject.set_pending_deletion(to);
                }
            })?;
        subject.set_destination(&wrapped.key, Some(wrapped.version));
        Ok(wrapped)
    }
}
