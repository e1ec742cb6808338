//! `hostkms inspect`: which key, key id and version a ciphertext belongs
//! to, read from its header without decrypting it (the header is not
//! secret). The key's name comes from matching the id against the keys
//! the peer may see (`list`); a key it may not see stays an id.

use std::fmt::Write as _;

use agent_proto::ciphertext::Header;
use agent_proto::{Client, KeyInfo};
use serde::Serialize;

use crate::error::{CliError, printable};
use crate::output::hex_id;

/// What a ciphertext's header says, with the key's name when visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The id of the key that made the ciphertext.
    pub key_id: [u8; 16],
    /// The key version that made it.
    pub version: u32,
    /// The key's name, when the peer may see the key.
    pub key: Option<String>,
}

/// The header of `ciphertext` (read from `what`, for messages), or why it
/// is not a hostkms ciphertext: the same [`CliError::NotCiphertext`] as
/// every other diagnosis of the input.
pub fn header(ciphertext: &[u8], what: &str) -> Result<Header, CliError> {
    let not = |why: String| CliError::NotCiphertext {
        what: what.to_string(),
        why,
    };
    if ciphertext.trim_ascii().is_empty() {
        return Err(not(
            "input is empty: pass a ciphertext with --in FILE or on standard input".into(),
        ));
    }
    Header::parse(ciphertext).map_err(|e| {
        not(format!(
            "{e}; inspect takes a ciphertext as `hostkms wrap` writes it (base64 or raw)"
        ))
    })
}

/// Names the key of `header` from `keys`, the keys the peer may see.
pub fn inspection(header: &Header, keys: &[KeyInfo]) -> Inspection {
    Inspection {
        key_id: header.key_id,
        version: header.version,
        key: keys
            .iter()
            .find(|key| key.id == header.key_id)
            .map(|key| key.name.clone()),
    }
}

/// Names the key of a ciphertext's `header` by asking the daemon for the
/// keys this peer may see.
pub fn inspect(client: &mut Client, header: &Header) -> Result<Inspection, CliError> {
    let keys = client.list_keys().map_err(CliError::from)?;
    Ok(inspection(header, &keys))
}

/// The JSON form: `{"key": NAME or null, "key_id": HEX, "version": N}`.
#[derive(Debug, Serialize)]
struct InspectionJson<'a> {
    key: Option<&'a str>,
    key_id: String,
    version: u32,
}

/// One line of JSON.
pub fn json(inspection: &Inspection) -> Result<String, serde_json::Error> {
    crate::output::json_line(&InspectionJson {
        key: inspection.key.as_deref(),
        key_id: hex_id(&inspection.key_id),
        version: inspection.version,
    })
}

/// A block for a human.
pub fn human(inspection: &Inspection) -> String {
    let id = hex_id(&inspection.key_id);
    let key = match &inspection.key {
        Some(name) => printable(name),
        None => format!("a key you cannot see (id {id})"),
    };
    let mut out = String::new();
    let _ = writeln!(out, "key:      {key}");
    let _ = writeln!(out, "key id:   {id}");
    let _ = writeln!(out, "version:  {}", inspection.version);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ciphertext(key_id: [u8; 16], version: u32) -> Vec<u8> {
        let header = Header {
            key_id,
            version,
            nonce: [7; 12],
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        bytes
    }

    #[test]
    fn names_the_key_only_when_listed() {
        let header = header(&ciphertext([1; 16], 3), "standard input").unwrap();
        let unseen = inspection(&header, &[]);
        assert_eq!(unseen.key, None);
        assert_eq!(unseen.version, 3);
        assert!(human(&unseen).contains("a key you cannot see (id 0101"));
        assert!(json(&unseen).unwrap().contains("\"key\":null"));
    }

    #[test]
    fn refuses_what_is_not_a_ciphertext_saying_why() {
        for (input, why) in [
            (&b""[..], "empty"),
            (b"  \n", "empty"),
            (b"hello world", "not a hostkms ciphertext"),
            (b"HKMS\x01short", "truncated"),
        ] {
            let err = header(input, "standard input").unwrap_err();
            assert_eq!(err.code(), "not_ciphertext");
            let err = err.to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
