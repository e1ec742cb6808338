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
use crate::policy::granted_as;

impl Service {
    /// Refuses `request` when it names a key that no grant of `peer`
    /// covers (admins are covered everywhere). Every name the request
    /// carries counts: the key, the key an unwrap or rewrap expects, and a
    /// rewrap's destination key.
    pub(super) fn gate(&self, peer: &Peer, request: &Request) -> Result<(), Refusal> {
        let policy = self.policy.load();
        for (op, name) in named_keys(request) {
            if !policy.covers_name(peer, name) {
                return Err(Refusal::denied(peer, op, name));
            }
        }
        Ok(())
    }
}

/// The key names `request` carries, each with the operation a refusal
/// names for it: the grant the request needs ([`granted_as`]: `wrap` for
/// a `WrapBatch`), or `wrap` for a rewrap's destination (what a grant must
/// allow there).
fn named_keys(request: &Request) -> impl Iterator<Item = (Operation, &str)> {
    let op = granted_as(request.operation());
    let destination = match request {
        Request::Rewrap {
            destination: Some(destination),
            ..
        } => destination.key.as_deref(),
        _ => None,
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
            [(Operation::Rewrap, "from"), (Operation::Wrap, "to")]
        );
        assert_eq!(named_keys(&Request::Ping).count(), 0);
    }
}
