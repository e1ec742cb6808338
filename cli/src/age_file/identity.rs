//! Unwrapping an age file's key from its `hostkms` stanzas through the
//! daemon: the logic `decrypt-file` (as an [`age::Identity`]) and the
//! plugin's identity share.

use std::cell::RefCell;

use age::{DecryptError, Identity};
use age_core::format::{FileKey, Stanza};
use agent_proto::{Client, EncryptionContext};

use super::stanza::{HostkmsStanza, KeyUsed, StanzaError, UnwrapError, unwrap_file_key};

/// Why no file key came out of a header's `hostkms` stanzas.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// A `hostkms` stanza is malformed (and no well-formed one unwrapped).
    #[error(transparent)]
    Malformed(#[from] StanzaError),
    /// The context the caller insists on is not the one any stanza records.
    #[error(
        "the file was encrypted with the context {}, not with the one given ({}): \
         give exactly the file's context, or leave out --context to use the one it records",
        show_contexts(recorded),
        show_context(given)
    )]
    ContextMismatch {
        /// The contexts the file's stanzas record.
        recorded: Vec<EncryptionContext>,
        /// The context given.
        given: EncryptionContext,
    },
    /// The daemon did not unwrap the file key.
    #[error(transparent)]
    Unwrap(#[from] UnwrapError),
}

/// A context as `{k=v, ...}` (`{}` when empty), control characters escaped.
pub fn show_context(context: &EncryptionContext) -> String {
    let pairs: Vec<String> = context
        .iter()
        .map(|(k, v)| crate::error::printable(&format!("{k}={v}")))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Several contexts, shown as [`show_context`] does, separated by " or ".
fn show_contexts(contexts: &[EncryptionContext]) -> String {
    let shown: Vec<String> = contexts.iter().map(show_context).collect();
    shown.join(" or ")
}

/// Unwraps the file key of a header's `stanzas` through the daemon:
/// `None` when none is a `hostkms` stanza. With `expected`, only stanzas
/// recording exactly that context are tried, and none is an error before
/// the daemon is asked; without, each stanza's recorded context is used.
/// The first stanza that unwraps wins; else the first failure is told.
pub fn unwrap_stanzas(
    client: &mut Client,
    stanzas: &[Stanza],
    expected: Option<&EncryptionContext>,
) -> Option<Result<(FileKey, KeyUsed), FindError>> {
    let mut ours = Vec::new();
    let mut malformed = None;
    for parsed in stanzas.iter().filter_map(HostkmsStanza::parse) {
        match parsed {
            Ok(stanza) => ours.push(stanza),
            Err(err) => {
                malformed.get_or_insert(err);
            }
        }
    }
    if ours.is_empty() {
        return malformed.map(|err| Err(err.into()));
    }
    if let Some(expected) = expected {
        let recorded: Vec<EncryptionContext> = ours.iter().map(|s| s.context.clone()).collect();
        ours.retain(|stanza| &stanza.context == expected);
        if ours.is_empty() {
            return Some(Err(FindError::ContextMismatch {
                recorded,
                given: expected.clone(),
            }));
        }
    }
    let mut first_error = None;
    for stanza in &ours {
        match unwrap_file_key(client, stanza) {
            Ok(found) => return Some(Ok(found)),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    first_error.map(|err| Err(err.into()))
}

/// An [`age::Identity`] that unwraps `hostkms` stanzas through the daemon
/// ([`unwrap_stanzas`]). age's trait has no room for our error, so a
/// failure is kept here for [`DaemonIdentity::take_error`].
pub struct DaemonIdentity<'a> {
    client: RefCell<&'a mut Client>,
    expected: Option<&'a EncryptionContext>,
    used: RefCell<Option<KeyUsed>>,
    error: RefCell<Option<FindError>>,
}

impl<'a> DaemonIdentity<'a> {
    /// An identity asking the daemon behind `client`, insisting on
    /// `expected` as the file's context when given.
    pub fn new(
        client: &'a mut Client,
        expected: Option<&'a EncryptionContext>,
    ) -> DaemonIdentity<'a> {
        DaemonIdentity {
            client: RefCell::new(client),
            expected,
            used: RefCell::new(None),
            error: RefCell::new(None),
        }
    }

    /// Why unwrapping failed, after age reported it.
    pub fn take_error(&self) -> Option<FindError> {
        self.error.borrow_mut().take()
    }

    /// The key and version the daemon unwrapped with.
    pub fn used(&self) -> Option<KeyUsed> {
        self.used.borrow().clone()
    }
}

impl Identity for DaemonIdentity<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        self.unwrap_stanzas(std::slice::from_ref(stanza))
    }

    fn unwrap_stanzas(&self, stanzas: &[Stanza]) -> Option<Result<FileKey, DecryptError>> {
        let mut client = self.client.borrow_mut();
        match unwrap_stanzas(&mut client, stanzas, self.expected)? {
            Ok((file_key, used)) => {
                *self.used.borrow_mut() = Some(used);
                Some(Ok(file_key))
            }
            Err(err) => {
                *self.error.borrow_mut() = Some(err);
                Some(Err(DecryptError::KeyDecryptionFailed))
            }
        }
    }
}
