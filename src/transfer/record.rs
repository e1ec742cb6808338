//! The key record an export file carries: one [`KeyMaterial`] as JSON.
//!
//! PROVISIONAL: issue 10's recovery record (src/recovery/record.rs) is the
//! format export files are to carry; this module adapts to it once it
//! lands, so export files and recovery records are one format.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::envelope::KeyId;
use crate::keystore::{KeyMaterial, VersionMaterial};
use agent_proto::KeyState;

/// A record that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(String);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: String,
    version: u32,
    id: String,
    name: String,
    created: u64,
    state: String,
    min_decryption_version: u32,
    versions: Vec<RecordVersion>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordVersion {
    number: u32,
    created: u64,
    kek: Option<Zeroizing<String>>,
}

const FORMAT: &str = "hostkms key record";

/// `material` as record text.
pub fn encode_record(material: &KeyMaterial) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    let record = Record {
        format: FORMAT.to_string(),
        version: 1,
        id: material.id.to_string(),
        name: material.name.clone(),
        created: material.created,
        state: match material.state {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::Revoked => "revoked",
        }
        .to_string(),
        min_decryption_version: material.min_decryption_version,
        versions: material
            .versions
            .iter()
            .map(|v| RecordVersion {
                number: v.number,
                created: v.created,
                kek: v
                    .kek
                    .as_ref()
                    .map(|kek| Zeroizing::new(STANDARD.encode(kek.as_slice()))),
            })
            .collect(),
    };
    serde_json::to_vec(&record)
        .map(Zeroizing::new)
        .map_err(|e| RecordError(e.to_string()))
}

/// The material of record text.
pub fn decode_record(text: &[u8]) -> Result<KeyMaterial, RecordError> {
    let record: Record = serde_json::from_slice(text).map_err(|e| RecordError(e.to_string()))?;
    if record.format != FORMAT || record.version != 1 {
        return Err(RecordError(format!(
            "record format {:?} version {} is not read here",
            record.format.chars().take(40).collect::<String>(),
            record.version
        )));
    }
    let id = unhex_id(&record.id).ok_or_else(|| RecordError("a malformed key id".to_string()))?;
    let state = match record.state.as_str() {
        "enabled" => KeyState::Enabled,
        "disabled" => KeyState::Disabled,
        "revoked" => KeyState::Revoked,
        _ => return Err(RecordError("an unknown key state".to_string())),
    };
    let versions = record
        .versions
        .into_iter()
        .map(|v| {
            let kek = match v.kek {
                None => None,
                Some(text) => {
                    let bytes = Zeroizing::new(
                        STANDARD
                            .decode(text.as_bytes())
                            .map_err(|_| RecordError("a malformed KEK".to_string()))?,
                    );
                    let mut kek = Zeroizing::new([0u8; 32]);
                    if bytes.len() != 32 {
                        return Err(RecordError("a KEK of the wrong length".to_string()));
                    }
                    kek.copy_from_slice(&bytes);
                    Some(kek)
                }
            };
            Ok(VersionMaterial {
                number: v.number,
                created: v.created,
                kek,
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    Ok(KeyMaterial {
        id,
        name: record.name,
        created: record.created,
        state,
        min_decryption_version: record.min_decryption_version,
        versions,
    })
}

fn unhex_id(text: &str) -> Option<KeyId> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(KeyId(id))
}
