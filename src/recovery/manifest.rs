//! The MANIFEST of the recovery directory: what the directory holds, with no
//! secret, authenticated under the bundle identity.
//!
//! Format 1 is one line of compact JSON (fields in this order; unknown
//! fields are refused):
//!
//! ```json
//! {"format":1,
//!  "bundle_recipient":"age1…",
//!  "threshold":2,
//!  "custodians":[{"index":1,"recipient":"age1…","fingerprint":"<16 hex>"}, …],
//!  "keys":[{"id":"<32 hex>","name":"app-db","revision":3,"state":"enabled",
//!           "min_decryption_version":1,
//!           "versions":[{"version":1,"state":"revoked"},{"version":2,"state":"enabled"}]}, …],
//!  "mac":"<64 hex>"}
//! ```
//!
//! `custodians` are in config order: custodian `n` holds `custodians/<n>.age`
//! (threshold > 1) and every custodian is a recipient of
//! `custodians/identity.age` (threshold 1). A fingerprint is the first 16 hex
//! digits of SHA-256 over the recipient string. `keys` are sorted by id;
//! `revision` is that key's record revision when the MANIFEST was written (a
//! key file read later may be newer, never older). `mac` is HMAC-SHA256,
//! keyed by HKDF-SHA256 of the bundle identity's secret with label
//! [`MANIFEST_MAC_LABEL`](super::escrow::MANIFEST_MAC_LABEL), over the same JSON without `mac`. Later formats
//! extend it as the key record does: a new number, and every earlier one
//! stays readable.
//!
//! A reader first takes the MANIFEST unverified ([`UnverifiedManifest`]): it
//! names the bundle recipient, the custodians and the threshold needed to
//! rebuild the bundle identity, whose key then verifies it.

use serde::{Deserialize, Serialize};

use super::agefile::fingerprint;
use super::record::{MacKey, StateV1, VersionStateV1, classify, unhex};
use crate::keystore::KeyMaterial;

/// The MANIFEST format this build writes; it reads every format up to it.
pub const MANIFEST_FORMAT: u32 = 1;

/// The largest MANIFEST read (well above a million keys).
pub const MAX_MANIFEST_LEN: usize = 512 << 20;

/// One custodian as the MANIFEST names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Custodian {
    /// Its position in the config, from 1 (its share file is `<index>.age`).
    pub index: u32,
    /// Its age recipient.
    pub recipient: String,
    /// The recipient's fingerprint.
    pub fingerprint: String,
}

/// One version of a key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestVersion {
    /// Its number.
    pub version: u32,
    /// Enabled or revoked.
    pub state: VersionStateV1,
}

/// One key, without its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestKey {
    /// The key id, 32 lower-case hex digits; its file is `keys/<id>.age`.
    pub id: String,
    /// The key name.
    pub name: String,
    /// The revision of its record.
    pub revision: u64,
    /// Its state.
    pub state: StateV1,
    /// Versions below this refuse to unwrap.
    pub min_decryption_version: u32,
    /// Every version.
    pub versions: Vec<ManifestVersion>,
}

impl ManifestKey {
    /// The entry of `material` at `revision`.
    pub fn of(material: &KeyMaterial, revision: u64) -> ManifestKey {
        ManifestKey {
            id: material.id.to_string(),
            name: material.name.clone(),
            revision,
            state: material.state.into(),
            min_decryption_version: material.min_decryption_version,
            versions: material
                .versions
                .iter()
                .map(|v| ManifestVersion {
                    version: v.number,
                    state: VersionStateV1::of(v),
                })
                .collect(),
        }
    }
}

/// The MANIFEST's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The bundle identity's recipient: every key file is encrypted to it.
    pub bundle_recipient: String,
    /// How many custodians must join.
    pub threshold: u32,
    /// The custodians, in config order.
    pub custodians: Vec<Custodian>,
    /// Every key, sorted by id.
    pub keys: Vec<ManifestKey>,
}

/// The wire shape, borrowed for writing (the same field order as read).
#[derive(Serialize)]
struct ManifestV1Out<'a> {
    format: u32,
    bundle_recipient: &'a str,
    threshold: u32,
    custodians: &'a [Custodian],
    keys: &'a [ManifestKey],
}

/// The wire shape as read.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestV1 {
    format: u32,
    bundle_recipient: String,
    threshold: u32,
    custodians: Vec<Custodian>,
    keys: Vec<ManifestKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

/// Why a MANIFEST cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Longer than [`MAX_MANIFEST_LEN`].
    #[error("the MANIFEST is {len} bytes, more than the {MAX_MANIFEST_LEN} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not JSON of a known shape.
    #[error("the MANIFEST is not valid: {kind} at line {line}, column {column}")]
    Malformed {
        /// syntax error, wrong data, or cut short.
        kind: &'static str,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// Written by a newer hostkms.
    #[error(
        "the MANIFEST is in format {found}, newer than this hostkms reads (formats 1 to {MANIFEST_FORMAT}): use a newer hostkms"
    )]
    NewerFormat {
        /// Its format.
        found: u32,
    },
    /// Its contents break a rule.
    #[error("the MANIFEST is inconsistent: {0}")]
    Invalid(String),
    /// The MAC does not match.
    #[error(
        "the MANIFEST does not authenticate under the recovered bundle identity: it was edited or belongs to another bundle; do not trust this backup's list of keys"
    )]
    BadMac,
    /// serde_json refused to write (never expected).
    #[error("cannot write the MANIFEST: {0}")]
    Serialize(String),
}

impl Manifest {
    /// The MANIFEST's text: compact JSON and a newline, authenticated.
    pub fn encode(&self, key: &MacKey) -> Result<Vec<u8>, ManifestError> {
        let out = ManifestV1Out {
            format: MANIFEST_FORMAT,
            bundle_recipient: &self.bundle_recipient,
            threshold: self.threshold,
            custodians: &self.custodians,
            keys: &self.keys,
        };
        let mut text = Vec::with_capacity(256 + self.keys.len() * 200);
        serde_json::to_writer(&mut text, &out)
            .map_err(|e| ManifestError::Serialize(e.to_string()))?;
        let tag = key.tag_hex(&text);
        // The canonical text ends with the object's `}`: the MAC goes before it.
        if text.pop() != Some(b'}') {
            return Err(ManifestError::Serialize("not a JSON object".into()));
        }
        text.extend_from_slice(format!(",\"mac\":\"{tag}\"}}\n").as_bytes());
        Ok(text)
    }

    /// Its custodians' recipients, in order.
    pub fn recipients(&self) -> Vec<String> {
        self.custodians
            .iter()
            .map(|c| c.recipient.clone())
            .collect()
    }

    /// The custodian list of `recipients` (config order).
    pub fn custodians_of(recipients: &[String]) -> Vec<Custodian> {
        recipients
            .iter()
            .enumerate()
            .map(|(i, r)| Custodian {
                index: i as u32 + 1,
                recipient: r.clone(),
                fingerprint: fingerprint(r),
            })
            .collect()
    }
}

/// A MANIFEST read but not yet authenticated: what it claims is enough to
/// find the custodians, nothing more.
#[derive(Debug)]
pub struct UnverifiedManifest {
    claimed: Manifest,
    canonical: Vec<u8>,
    mac: String,
}

impl UnverifiedManifest {
    /// Parses a MANIFEST of any known format and checks its consistency.
    pub fn parse(text: &[u8]) -> Result<UnverifiedManifest, ManifestError> {
        if text.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge { len: text.len() });
        }
        let probe: FormatProbe = serde_json::from_slice(text).map_err(|e| malformed(&e))?;
        match probe.format {
            0 => Err(ManifestError::Invalid("it claims format 0".into())),
            1 => UnverifiedManifest::parse_v1(text),
            found => Err(ManifestError::NewerFormat { found }),
        }
    }

    fn parse_v1(text: &[u8]) -> Result<UnverifiedManifest, ManifestError> {
        let mut wire: ManifestV1 = serde_json::from_slice(text).map_err(|e| malformed(&e))?;
        let mac = wire.mac.take().unwrap_or_default();
        let canonical =
            serde_json::to_vec(&wire).map_err(|e| ManifestError::Serialize(e.to_string()))?;
        let claimed = Manifest {
            bundle_recipient: wire.bundle_recipient,
            threshold: wire.threshold,
            custodians: wire.custodians,
            keys: wire.keys,
        };
        check(&claimed).map_err(ManifestError::Invalid)?;
        Ok(UnverifiedManifest {
            claimed,
            canonical,
            mac,
        })
    }

    /// What it claims, unauthenticated: use only to find the custodians.
    pub fn claimed(&self) -> &Manifest {
        &self.claimed
    }

    /// The MANIFEST, once its MAC checks out under `key` (the bundle
    /// identity's [`manifest_mac_key`](super::escrow::BundleIdentity::manifest_mac_key)).
    pub fn verify(self, key: &MacKey) -> Result<Manifest, ManifestError> {
        if key.verify_hex(&self.canonical, &self.mac) {
            Ok(self.claimed)
        } else {
            Err(ManifestError::BadMac)
        }
    }
}

/// The rules a MANIFEST keeps.
fn check(manifest: &Manifest) -> Result<(), String> {
    if manifest.custodians.is_empty() {
        return Err("it names no custodian".into());
    }
    for (i, c) in manifest.custodians.iter().enumerate() {
        if c.index as usize != i + 1 {
            return Err(format!("custodian {} has index {}", i + 1, c.index));
        }
        if c.fingerprint != fingerprint(&c.recipient) {
            return Err(format!(
                "custodian {}'s fingerprint does not match its recipient",
                c.index
            ));
        }
    }
    if manifest.threshold == 0 || manifest.threshold as usize > manifest.custodians.len() {
        return Err(format!(
            "threshold {} is not between 1 and its {} custodians",
            manifest.threshold,
            manifest.custodians.len()
        ));
    }
    for pair in manifest.keys.windows(2) {
        if pair[0].id >= pair[1].id {
            return Err(format!(
                "key {:?} is out of order or listed twice",
                pair[1].id
            ));
        }
    }
    for key in &manifest.keys {
        if unhex::<16>(&key.id).is_none() || key.id.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "key id {:?} is not 32 lower-case hex digits",
                key.id
            ));
        }
    }
    Ok(())
}

fn malformed(e: &serde_json::Error) -> ManifestError {
    ManifestError::Malformed {
        kind: classify(e),
        line: e.line(),
        column: e.column(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::KeyId;
    use crate::keystore::VersionMaterial;
    use crate::recovery::escrow::MANIFEST_MAC_LABEL;
    use agent_proto::KeyState;
    use zeroize::Zeroizing;

    fn key(n: u8) -> KeyMaterial {
        KeyMaterial {
            id: KeyId([n; 16]),
            name: format!("key-{n}"),
            created: 1,
            state: KeyState::Enabled,
            min_decryption_version: 1,
            settings: Default::default(),
            versions: vec![
                VersionMaterial {
                    number: 1,
                    created: 1,
                    kek: None,
                    public_key: None,
                },
                VersionMaterial {
                    number: 2,
                    created: 2,
                    kek: Some(Zeroizing::new([n; 32])),
                    public_key: None,
                },
            ],
            key_type: agent_proto::KeyType::Aes256Gcm,
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            bundle_recipient: "age1bundle".into(),
            threshold: 2,
            custodians: Manifest::custodians_of(&["age1a".into(), "age1b".into(), "age1c".into()]),
            keys: vec![ManifestKey::of(&key(1), 3), ManifestKey::of(&key(2), 1)],
        }
    }

    fn mac() -> MacKey {
        MacKey::derive(&[5; 32], MANIFEST_MAC_LABEL)
    }

    #[test]
    fn round_trip_and_shape() {
        let text = manifest().encode(&mac()).unwrap();
        let back = UnverifiedManifest::parse(&text)
            .unwrap()
            .verify(&mac())
            .unwrap();
        assert_eq!(back, manifest());
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["format"], 1);
        assert_eq!(value["custodians"][1]["fingerprint"], fingerprint("age1b"));
        assert_eq!(value["keys"][0]["versions"][0]["state"], "revoked");
        assert_eq!(value["keys"][0]["revision"], 3);
        assert!(text.ends_with(b"}\n"));
        // No secret in it.
        let secret = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 32]);
        assert!(!String::from_utf8_lossy(&text).contains(&secret));
    }

    #[test]
    fn an_edit_or_another_bundle_fails_verification() {
        let text = manifest().encode(&mac()).unwrap();
        let edited = String::from_utf8(text.clone())
            .unwrap()
            .replace("\"revision\":3", "\"revision\":2");
        let parsed = UnverifiedManifest::parse(edited.as_bytes()).unwrap();
        assert_eq!(parsed.claimed().keys[0].revision, 2);
        assert!(matches!(parsed.verify(&mac()), Err(ManifestError::BadMac)));
        let other = MacKey::derive(&[6; 32], MANIFEST_MAC_LABEL);
        assert!(matches!(
            UnverifiedManifest::parse(&text).unwrap().verify(&other),
            Err(ManifestError::BadMac)
        ));
    }

    #[test]
    fn broken_manifests_are_refused_with_reasons() {
        let text = String::from_utf8(manifest().encode(&mac()).unwrap()).unwrap();
        for (from, to) in [
            ("\"threshold\":2", "\"threshold\":4"),
            ("\"threshold\":2", "\"threshold\":0"),
            ("\"index\":2", "\"index\":5"),
            ("\"recipient\":\"age1b\"", "\"recipient\":\"age1x\""),
            (
                "\"id\":\"02020202020202020202020202020202",
                "\"id\":\"01010101010101010101010101010101",
            ),
        ] {
            let edited = text.replacen(from, to, 1);
            assert!(
                matches!(
                    UnverifiedManifest::parse(edited.as_bytes()),
                    Err(ManifestError::Invalid(_))
                ),
                "{from} -> {to}"
            );
        }
        let newer = text.replace("\"format\":1", "\"format\":7");
        assert!(matches!(
            UnverifiedManifest::parse(newer.as_bytes()),
            Err(ManifestError::NewerFormat { found: 7 })
        ));
        let extra = text.replace("\"format\":1", "\"format\":1,\"x\":1");
        assert!(matches!(
            UnverifiedManifest::parse(extra.as_bytes()),
            Err(ManifestError::Malformed { .. })
        ));
        assert!(matches!(
            UnverifiedManifest::parse(b"{\"format\":1"),
            Err(ManifestError::Malformed { .. })
        ));
    }

    #[test]
    fn ten_thousand_keys_encode_in_reasonable_time() {
        let mut m = manifest();
        m.keys = (0..10_000u32)
            .map(|i| {
                let mut k = key(0);
                k.id = KeyId(u128::from(i).to_be_bytes());
                k.name = format!("key-{i}");
                ManifestKey::of(&k, 1)
            })
            .collect();
        let started = std::time::Instant::now();
        let text = m.encode(&mac()).unwrap();
        let took = started.elapsed();
        eprintln!("MANIFEST of 10,000 keys: {} bytes in {took:?}", text.len());
        assert!(took < std::time::Duration::from_secs(30));
        let back = UnverifiedManifest::parse(&text)
            .unwrap()
            .verify(&mac())
            .unwrap();
        assert_eq!(back.keys.len(), 10_000);
    }
}
