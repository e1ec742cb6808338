//! The first gate of every request that names a key: a peer that holds no
//! grant covering the name is refused `PermissionDenied` before anything
//! about the key is looked up, so that whether a key of that name exists
//! never depends on the answer. The operation's own grant is checked
//! after, by the handler ([`Service::permit`]); a peer whose grants cover
//! the name may learn that it names no key (`KeyNotFound`), as `ListKeys`
//! would show it the key if it existed.

use agent_proto::{Operation, Request};

use super::{Refusal, Service};
use crate::peer::Peer;

impl Service {
    /// Refuses `request` when it names a key that no grant of `peer`
    /// covers (admins are covered everywhere): a peer learns whether a key
    /// exists exactly when `ListKeys` would show it to it. Every name the request
    /// carries counts: the key, the key an unwrap or rewrap expects, and a
    /// rewrap's destination key.
    pub(super) fn gate(&self, peer: &Peer, request: &Request) -> Result<(), Refusal> {
        let policy = self.policy.load();
        for (op, name) in named_keys(request) {
            if !policy.may_see(peer, name) {
                return Err(Refusal::denied(peer, op, name));
            }
        }
        Ok(())
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
