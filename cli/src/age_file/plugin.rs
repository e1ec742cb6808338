//! `age-plugin-hostkms`: the age plugin protocol (recipient-v1 and
//! identity-v1, through the `age-plugin` crate's state machines) on the
//! same stanza code as `encrypt-file` and `decrypt-file`. The standard
//! `age` CLI runs it for `age1hostkms1…` recipients and
//! `AGE-PLUGIN-HOSTKMS-1…` identities; it reaches the daemon at
//! `$HOSTKMS_SOCKET`, else the default socket, as the CLI does.
//!
//! Every failure reaches age as a plugin error carrying the daemon's
//! message and the CLI's advice (the grant to ask for, why the socket
//! cannot be reached), never as a panic.

use std::collections::{HashMap, HashSet};
use std::io;

use age_core::format::{FileKey, Stanza};
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::recipient::{self, RecipientPluginV1};
use age_plugin::{Callbacks, PluginHandler};
use agent_proto::{Client, Operation};

use super::identity::{FindError, unwrap_stanzas};
use super::recipient::{IDENTITY_DATA, RecipientSpec};
use super::stanza::{UnwrapError, wrap_file_key};
use crate::error::CliError;

/// The plugin's handler: both state machines.
#[derive(Debug, Default)]
pub struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = RecipientPlugin;
    type IdentityV1 = IdentityPlugin;

    fn recipient_v1(self) -> io::Result<RecipientPlugin> {
        Ok(RecipientPlugin::default())
    }

    fn identity_v1(self) -> io::Result<IdentityPlugin> {
        Ok(IdentityPlugin)
    }
}

/// Connects to the daemon as the CLI does: `$HOSTKMS_SOCKET`, else the
/// default socket, with the CLI's request timeout.
fn connect() -> Result<Client, CliError> {
    let client = Client::connect(agent_proto::default_socket())?;
    client.set_timeout(Some(crate::REQUEST_TIMEOUT))?;
    Ok(client)
}

/// The text of a failure as the CLI would print it: a connection failure
/// with what is at the socket path, a denial with the grant to ask for
/// (`op` on key `key` when a recipient named it, else decrypting's).
fn explain(err: CliError, named: Option<(Operation, &str)>) -> String {
    let err = crate::report::diagnose_connect(err);
    let uid = nix::unistd::geteuid().as_raw();
    match named {
        Some(named) => crate::denial::explain(err, Some(named), uid),
        None => crate::denial::explain_unwrap(err, uid),
    }
    .to_string()
}

/// recipient-v1: wraps each file key under each `age1hostkms1…` recipient.
#[derive(Debug, Default)]
pub struct RecipientPlugin {
    recipients: Vec<(usize, RecipientSpec)>,
}

impl RecipientPluginV1 for RecipientPlugin {
    fn add_recipient(
        &mut self,
        index: usize,
        _plugin_name: &str,
        bytes: &[u8],
    ) -> Result<(), recipient::Error> {
        let spec = RecipientSpec::from_bytes(bytes)
            .map_err(|message| recipient::Error::Recipient { index, message })?;
        self.recipients.push((index, spec));
        Ok(())
    }

    fn add_identity(
        &mut self,
        index: usize,
        _plugin_name: &str,
        _bytes: &[u8],
    ) -> Result<(), recipient::Error> {
        Err(recipient::Error::Identity {
            index,
            message: "a hostkms identity names no key to encrypt to: encrypt to the \
                      recipient `hostkms age-recipient NAME` prints"
                .to_string(),
        })
    }

    fn labels(&mut self) -> HashSet<String> {
        HashSet::new()
    }

    fn wrap_file_keys(
        &mut self,
        file_keys: Vec<FileKey>,
        _callbacks: impl Callbacks<recipient::Error>,
    ) -> io::Result<Result<Vec<Vec<Stanza>>, Vec<recipient::Error>>> {
        let mut client = match connect() {
            Ok(client) => client,
            Err(err) => {
                let message = explain(err, None);
                return Ok(Err(vec![recipient::Error::Internal { message }]));
            }
        };
        let mut files = Vec::with_capacity(file_keys.len());
        let mut errors = Vec::new();
        for file_key in &file_keys {
            let mut stanzas = Vec::with_capacity(self.recipients.len());
            for (index, spec) in &self.recipients {
                match wrap_file_key(&mut client, &spec.key, &spec.context, file_key) {
                    Ok((stanza, _)) => stanzas.push(stanza),
                    Err(err) => errors.push(recipient::Error::Recipient {
                        index: *index,
                        message: explain(err.into(), Some((Operation::Wrap, &spec.key))),
                    }),
                }
            }
            files.push(stanzas);
        }
        Ok(if errors.is_empty() {
            Ok(files)
        } else {
            Err(errors)
        })
    }
}

/// identity-v1: unwraps the file key of each file's `hostkms` stanza
/// through the daemon, with the context the stanza records.
#[derive(Debug, Default)]
pub struct IdentityPlugin;

impl IdentityPluginV1 for IdentityPlugin {
    fn add_identity(
        &mut self,
        index: usize,
        _plugin_name: &str,
        bytes: &[u8],
    ) -> Result<(), identity::Error> {
        // `age -j hostkms` (age 1.2 and later) sends the plugin's identity
        // with no data at all; an identity file has IDENTITY_DATA.
        if bytes.is_empty() || bytes == IDENTITY_DATA {
            return Ok(());
        }
        Err(identity::Error::Identity {
            index,
            message: "not an identity `hostkms age-identity` made (a newer format?)".to_string(),
        })
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        _callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        let mut client = None;
        let mut found = HashMap::new();
        for (file_index, stanzas) in files.iter().enumerate() {
            if !stanzas.iter().any(|s| s.tag == super::stanza::TAG) {
                continue;
            }
            let client = match &mut client {
                Some(client) => client,
                None => match connect() {
                    Ok(connected) => client.insert(connected),
                    Err(err) => {
                        let message = explain(err, None);
                        found.insert(file_index, Err(vec![identity::Error::Internal { message }]));
                        continue;
                    }
                },
            };
            let result = match unwrap_stanzas(client, stanzas, None, None) {
                None => continue,
                Some(Ok((file_key, _))) => Ok(file_key),
                Some(Err(err)) => Err(vec![identity_error(err, file_index, stanzas)]),
            };
            found.insert(file_index, result);
        }
        Ok(found)
    }
}

/// A failure to unwrap file `file_index`'s key, as age wants it.
fn identity_error(err: FindError, file_index: usize, stanzas: &[Stanza]) -> identity::Error {
    match err {
        FindError::Unwrap(UnwrapError::Daemon(refused)) => identity::Error::Identity {
            index: 0,
            message: explain(refused.into(), None),
        },
        other => identity::Error::Stanza {
            file_index,
            stanza_index: stanzas
                .iter()
                .position(|s| s.tag == super::stanza::TAG)
                .unwrap_or(0),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_from_files_and_from_age_j_are_accepted() {
        let mut plugin = IdentityPlugin;
        assert!(plugin.add_identity(0, "hostkms", IDENTITY_DATA).is_ok());
        // age -j hostkms: the plugin's name only, no data.
        assert!(plugin.add_identity(1, "hostkms", b"").is_ok());
        assert!(plugin.add_identity(2, "hostkms", b"other").is_err());
    }

    #[test]
    fn recipients_must_be_ours() {
        let mut plugin = RecipientPlugin::default();
        let spec = RecipientSpec {
            key: "backup".to_string(),
            context: Default::default(),
        };
        assert!(plugin.add_recipient(0, "hostkms", &spec.to_bytes()).is_ok());
        assert!(plugin.add_recipient(1, "hostkms", b"junk").is_err());
        assert!(plugin.add_identity(2, "hostkms", IDENTITY_DATA).is_err());
        assert_eq!(plugin.recipients.len(), 1);
    }
}
