//! The age recipient of a hostkms key, `age1hostkms1…`: the key's name and
//! the encryption context, in Bech32 (as every age plugin recipient), and
//! the [`age::Recipient`] that wraps a file key through the daemon.
//!
//! Its data is the key name's length (4 bytes big-endian) and UTF-8 bytes,
//! then the context's canonical encoding ([`stanza::encode_context`]).

use std::collections::HashSet;

use age::{EncryptError, Recipient};
use age_core::format::{FileKey, Stanza};
use agent_proto::{Client, ClientError, EncryptionContext};
use bech32::Hrp;

use super::stanza::{self, DaemonCall};

/// The plugin's name: age runs `age-plugin-hostkms` for it.
pub const PLUGIN_NAME: &str = "hostkms";

/// A hostkms key and context to encrypt a file to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientSpec {
    /// The key's name.
    pub key: String,
    /// The encryption context the file key is wrapped with.
    pub context: EncryptionContext,
}

impl RecipientSpec {
    /// The recipient's data: what the Bech32 string encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut data = u32::try_from(self.key.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        data.extend_from_slice(self.key.as_bytes());
        data.extend_from_slice(&stanza::encode_context(&self.context));
        data
    }

    /// Reads the recipient's data (as age hands it to the plugin).
    pub fn from_bytes(data: &[u8]) -> Result<RecipientSpec, String> {
        let bad = |why: &str| format!("not a hostkms recipient: {why}");
        let (len, rest) = data
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("too short"))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if rest.len() < len {
            return Err(bad("too short"));
        }
        let (name, rest) = rest.split_at(len);
        let key = std::str::from_utf8(name)
            .map_err(|_| bad("its key name is not UTF-8"))?
            .to_string();
        agent_proto::key_name::check(&key).map_err(|e| bad(&e.to_string()))?;
        let context = stanza::decode_context(rest).map_err(|e| bad(&e.0))?;
        Ok(RecipientSpec { key, context })
    }

    /// The recipient string, `age1hostkms1…`.
    pub fn encode(&self) -> String {
        let hrp = Hrp::parse_unchecked(&format!("age1{PLUGIN_NAME}"));
        age_core::primitives::bech32_encode(hrp, &self.to_bytes())
    }
}

/// The identity string of the plugin, `AGE-PLUGIN-HOSTKMS-1…`: it holds
/// no secret (and no key name), only [`IDENTITY_DATA`]; the daemon's grants
/// decide what it decrypts.
pub fn identity_string() -> String {
    let hrp = Hrp::parse_unchecked(&format!("AGE-PLUGIN-{}-", PLUGIN_NAME.to_ascii_uppercase()));
    age_core::primitives::bech32_encode(hrp, IDENTITY_DATA).to_ascii_uppercase()
}

/// The data of the plugin's identity: a format version, nothing secret.
pub const IDENTITY_DATA: &[u8] = b"hostkms-v1";

/// An [`age::Recipient`] that wraps the file key through the daemon, under
/// the spec's key and context; its [`DaemonCall`] keeps the key used, or
/// the daemon's refusal.
pub struct DaemonRecipient<'a> {
    /// The daemon, and what the wrap did.
    pub call: DaemonCall<'a, ClientError>,
    spec: &'a RecipientSpec,
}

impl<'a> DaemonRecipient<'a> {
    /// A recipient for `spec` that asks the daemon behind `client`.
    pub fn new(client: &'a mut Client, spec: &'a RecipientSpec) -> DaemonRecipient<'a> {
        DaemonRecipient {
            call: DaemonCall::new(client),
            spec,
        }
    }
}

impl Recipient for DaemonRecipient<'_> {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), EncryptError> {
        let spec = self.spec;
        self.call
            .run(|client| stanza::wrap_file_key(client, &spec.key, &spec.context, file_key))
            .map(|stanza| (vec![stanza], HashSet::new()))
            .ok_or_else(|| EncryptError::Io(std::io::Error::other("the daemon refused")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipient_names_its_key_and_context() {
        let spec = RecipientSpec {
            key: "backup".to_string(),
            context: [("host".to_string(), "db1".to_string())].into(),
        };
        let text = spec.encode();
        assert!(text.starts_with("age1hostkms1"), "{text}");
        assert_eq!(RecipientSpec::from_bytes(&spec.to_bytes()), Ok(spec));
        assert!(RecipientSpec::from_bytes(b"\0\0\0\x09bad name!\0\0\0\0").is_err());
        assert!(RecipientSpec::from_bytes(b"\0\0").is_err());
    }

    #[test]
    fn the_identity_is_the_plugins() {
        let id = identity_string();
        assert!(id.starts_with("AGE-PLUGIN-HOSTKMS-1"), "{id}");
        assert_eq!(id, id.to_ascii_uppercase());
    }
}
