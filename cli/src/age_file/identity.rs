//! Unwrapping an age file's key from its `hostkms` stanzas through the
//! daemon: the logic `decrypt-file` (as an [`age::Identity`]) and the
//! plugin's identity share.

use age::{DecryptError, Identity};
use age_core::format::{FileKey, Stanza};
use agent_proto::{Client, EncryptionContext};

use super::stanza::{
    DaemonCall, HostkmsStanza, KeyUsed, StanzaError, UnwrapError, unwrap_file_key,
};

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
    /// No stanza is a `hostkms` stanza (age then tries other identities).
    #[error("the file has no hostkms stanza")]
    NoneOurs,
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
/// With `key`, the daemon refuses a file key wrapped under another key.
/// The first stanza that unwraps wins; else the first failure is told.
pub fn unwrap_stanzas(
    client: &mut Client,
    stanzas: &[Stanza],
    expected: Option<&EncryptionContext>,
    key: Option<&str>,
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
        match unwrap_file_key(client, stanza, key) {
            Ok(found) => return Some(Ok(found)),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    first_error.map(|err| Err(err.into()))
}

/// An [`age::Identity`] that unwraps `hostkms` stanzas through the daemon
/// ([`unwrap_stanzas`]); its [`DaemonCall`] keeps the key used, or why no
/// file key came out.
pub struct DaemonIdentity<'a> {
    /// The daemon, and what the unwrap did.
    pub call: DaemonCall<'a, FindError>,
    expected: Option<&'a EncryptionContext>,
    key: Option<&'a str>,
}

impl<'a> DaemonIdentity<'a> {
    /// An identity asking the daemon behind `client`, insisting on
    /// `expected` as the file's context and on `key` as its key when given.
    pub fn new(
        client: &'a mut Client,
        expected: Option<&'a EncryptionContext>,
        key: Option<&'a str>,
    ) -> DaemonIdentity<'a> {
        DaemonIdentity {
            call: DaemonCall::new(client),
            expected,
            key,
        }
    }
}

impl Identity for DaemonIdentity<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        self.unwrap_stanzas(std::slice::from_ref(stanza))
    }

    fn unwrap_stanzas(&self, stanzas: &[Stanza]) -> Option<Result<FileKey, DecryptError>> {
        let mut none_ours = false;
        let file_key = self.call.run(|client| {
            unwrap_stanzas(client, stanzas, self.expected, self.key).unwrap_or_else(|| {
                none_ours = true;
                Err(FindError::NoneOurs)
            })
        });
        if none_ours {
            let _ = self.call.take_error();
            return None;
        }
        Some(file_key.ok_or(DecryptError::KeyDecryptionFailed))
    }
}
