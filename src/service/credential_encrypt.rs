//! `WrapCredential`: a systemd credential encrypted for one unit, bound to
//! the reserved context `{hostkms.unit, hostkms.credential}` that no other
//! request may use (see `access`). Admins only: a credential is host
//! configuration, and the credential socket hands it to the unit named in
//! it alone.

use agent_proto::credential;
use agent_proto::{ErrorCode, Operation, Response};

use super::{Refusal, Service};
use crate::audit::Subject;
use crate::peer::Peer;

impl Service {
    /// Encrypts `plaintext` under the latest version of `key` as the
    /// credential `id` of `unit`, for an admin `peer`.
    pub(super) async fn wrap_credential(
        &self,
        peer: &Peer,
        key: &str,
        unit: &str,
        id: &str,
        plaintext: &[u8],
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        subject.set_credential(unit, id);
        if !self.is_admin(peer) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "uid {} may not encrypt credentials: only admins (root and the admin_groups) may, and no grant can allow it; run `hostkms credential encrypt` as root",
                    peer.uid
                ),
            ));
        }
        credential::check_unit(unit)
            .and_then(|()| credential::check_credential(id))
            .map_err(|problem| Refusal::new(ErrorCode::InvalidArgument, problem))?;
        self.check_plaintext_size(
            "a credential",
            plaintext,
            "keep the secret in an encrypted file (`hostkms encrypt-file`) and hand the unit a credential that unlocks it",
        )?;
        let context = credential::context(unit, id);
        self.encrypt(Operation::Credential, key, plaintext, &context, subject)
            .await
            .map(Response::Wrapped)
    }
}
