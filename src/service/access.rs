//! The first gate of every request that names a key: a peer that holds no
//! grant covering the name is refused `PermissionDenied` before anything
//! about the key is looked up, so that whether a key of that name exists
//! never depends on the answer. The operation's own grant is checked
//! after, by the handler ([`Service::permit`]); a peer whose grants cover
//! the name may learn that it names no key (`KeyNotFound`), as `ListKeys`
//! would show it the key if it existed.
//!
//! Before that, a request whose encryption context uses a reserved key
//! (`hostkms.`, see `agent_proto::credential`) is refused whole: such a
//! context binds a systemd credential to its unit, and only the
//! credential socket, which checks the unit of the process systemd
//! connects from, may ever unwrap one. Anyone holding `unwrap` on a key
//! could otherwise decrypt every credential made with it by passing the
//! credential's context themselves.

use agent_proto::credential;
use agent_proto::{EncryptionContext, ErrorCode, Operation, Request};

use super::{Refusal, Service};
use crate::peer::Peer;

impl Service {
    /// Refuses `request` when it names a key that no grant of `peer`
    /// covers (admins are covered everywhere): a peer learns whether a key
    /// exists exactly when `ListKeys` would show it to it. Every name the request
    /// carries counts: the key, the key an unwrap or rewrap expects, and a
    /// rewrap's destination key.
    pub(super) fn gate(&self, peer: &Peer, request: &Request) -> Result<(), Refusal> {
        refuse_reserved(request)?;
        let policy = self.policy.load();
        for (op, name) in named_keys(request) {
            if !policy.may_see(peer, name) {
                return Err(Refusal::denied(peer, op, name));
            }
        }
        Ok(())
    }
}

/// Refuses `request` when any encryption context it carries uses a key
/// reserved to hostkms: no request of the main socket may make, read or
/// re-encrypt a ciphertext bound to a systemd credential's context.
fn refuse_reserved(request: &Request) -> Result<(), Refusal> {
    match contexts(request).find_map(credential::reserved_key) {
        Some(key) => Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!(
                "context key {key:?} is reserved: keys beginning with {:?} are hostkms's own \
                 (they bind systemd credentials); use another name",
                credential::RESERVED_PREFIX
            ),
        )),
        None => Ok(()),
    }
}

/// Every encryption context `request` carries: its own, a rewrap's
/// destination context, and each item's of a batch. Every variant is
/// named, so that a new request carrying a context cannot slip past.
/// `WrapCredential` carries none: the daemon builds its reserved context.
fn contexts(request: &Request) -> Box<dyn Iterator<Item = &EncryptionContext> + '_> {
    match request {
        Request::Wrap { context, .. }
        | Request::Unwrap { context, .. }
        | Request::GenerateDataKey { context, .. } => Box::new(std::iter::once(context)),
        Request::Rewrap {
            context,
            destination,
            ..
        } => Box::new(
            std::iter::once(context).chain(
                destination
                    .as_ref()
                    .and_then(|destination| destination.context.as_ref()),
            ),
        ),
        Request::WrapBatch { items, .. } => Box::new(items.iter().map(|item| &item.context)),
        Request::UnwrapBatch { items, .. } => Box::new(items.iter().map(|item| &item.context)),
        Request::Ping
        | Request::Status
        | Request::CreateKey { .. }
        | Request::Rotate { .. }
        | Request::Revoke { .. }
        | Request::Disable { .. }
        | Request::Enable { .. }
        | Request::SetMinDecryptionVersion { .. }
        | Request::ListKeys { .. }
        | Request::DescribeKey { .. }
        | Request::RotateRoot { .. }
        | Request::TransportKey
        | Request::ExportKey { .. }
        | Request::ImportKey { .. }
        | Request::Mac { .. }
        | Request::VerifyMac { .. }
        | Request::Sign { .. }
        | Request::Verify { .. }
        | Request::GetPublicKey { .. }
        | Request::GenerateRandom { .. }
        | Request::ScheduleDeletion { .. }
        | Request::CancelDeletion { .. }
        | Request::SetRotationPeriod { .. }
        | Request::UpdateKeyMetadata { .. }
        | Request::WrapCredential { .. }
        | Request::Unlock { .. }
        | Request::Reseal { .. }
        | Request::ChangePin { .. } => Box::new(std::iter::empty()),
    }
}

/// The key names `request` carries, each with the grantable operation a
/// refusal names for it: the one the handler checks on that name, so that
/// a denial reads the same from either check and names an operation an
/// admin can grant. That is the request's own, except `wrap` for a
/// `WrapBatch`'s key and a rewrap's destination, `unwrap` for the key an
/// `UnwrapBatch` or a rewrap with a destination expects.
fn named_keys(request: &Request) -> impl Iterator<Item = (Operation, &str)> {
    let (op, destination) = match request {
        Request::WrapBatch { .. } => (Operation::Wrap, None),
        Request::UnwrapBatch { .. } => (Operation::Unwrap, None),
        Request::Rewrap {
            destination: Some(destination),
            ..
        } => (Operation::Unwrap, destination.key.as_deref()),
        _ => (request.operation(), None),
    };
    request
        .key_name()
        .map(|name| (op, name))
        .into_iter()
        .chain(destination.map(|name| (Operation::Wrap, name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::{Ciphertext, EncryptionContext, RewrapDestination};

    #[test]
    fn a_rewrap_names_its_expected_key_and_its_destination() {
        let request = Request::Rewrap {
            ciphertext: Ciphertext::from(&b"x"[..]),
            context: EncryptionContext::new(),
            key: Some("from".into()),
            destination: Some(RewrapDestination {
                key: Some("to".into()),
                context: None,
            }),
        };
        let names: Vec<_> = named_keys(&request).collect();
        assert_eq!(
            names,
            [(Operation::Unwrap, "from"), (Operation::Wrap, "to")]
        );
        let same_key = Request::Rewrap {
            ciphertext: Ciphertext::from(&b"x"[..]),
            context: EncryptionContext::new(),
            key: Some("from".into()),
            destination: None,
        };
        let names: Vec<_> = named_keys(&same_key).collect();
        assert_eq!(names, [(Operation::Rewrap, "from")]);
        assert_eq!(named_keys(&Request::Ping).count(), 0);
    }

    #[test]
    fn a_batch_is_refused_under_the_grant_its_items_need() {
        let wrap = Request::WrapBatch {
            key: "k".into(),
            items: Vec::new(),
        };
        let unwrap = Request::UnwrapBatch {
            key: Some("k".into()),
            items: Vec::new(),
        };
        for request in [wrap, unwrap] {
            for (op, _) in named_keys(&request) {
                assert!(
                    crate::policy::GRANTABLE.contains(&op),
                    "{op} is no grant an admin could give"
                );
            }
        }
        let wrap = Request::WrapBatch {
            key: "k".into(),
            items: Vec::new(),
        };
        assert_eq!(
            named_keys(&wrap).collect::<Vec<_>>(),
            [(Operation::Wrap, "k")]
        );
    }
}
