//! The key record: one key's material ([`KeyMaterial`]) as versioned,
//! authenticated JSON text.
//!
//! It is the plaintext inside `keys/<id hex>.age` of the recovery directory
//! and inside an export file, so a person with the age identity can read it
//! with `age -d` alone. Format 1, the record of an AES-256-GCM key (every
//! field is required unless said otherwise; unknown fields are refused, so
//! nothing unauthenticated rides along):
//!
//! ```json
//! {
//!   "format": 1,
//!   "id": "<32 lower-case hex digits: the key id of every ciphertext header>",
//!   "name": "<the key name>",
//!   "created": <unix seconds>,
//!   "state": "enabled" | "disabled" | "revoked",
//!   "min_decryption_version": <1..=the number of versions>,
//!   "revision": <u64, +1 for every write of this key's record>,
//!   "versions": [
//!     { "version": 1, "created": <unix seconds>, "state": "enabled" | "revoked",
//!       "secret": "<base64 of the 32-byte KEK; absent when revoked>" }
//!   ],
//!   "mac": "<64 hex digits>"
//! }
//! ```
//!
//! Format 2 (issue 11), the record of a key of any other type: format 1
//! with `"format": 2`, the key's type after its name, and each version of a
//! signing key (ed25519, ecdsa-p256, ml-dsa-65) with its public key, kept
//! when the version is revoked so a restored revoked version still has it:
//!
//! ```json
//! {
//!   "format": 2,
//!   "id": "…", "name": "…",
//!   "type": "aes256-gcm" | "hmac-sha256" | "hmac-sha512" | "ed25519" | "ecdsa-p256" | "ml-dsa-65",
//!   "created": …, "state": …, "min_decryption_version": …, "revision": …,
//!   "versions": [
//!     { "version": 1, "created": …, "state": "enabled" | "revoked",
//!       "secret": "<base64 of the 32-byte secret: HMAC key, Ed25519 secret key,
//!                  ECDSA scalar or ML-DSA seed; absent when revoked>",
//!       "public_key": "<base64 of the SubjectPublicKeyInfo DER; signing keys only>" }
//!   ],
//!   "mac": "<64 hex digits>"
//! }
//! ```
//!
//! Format 3 (issue 12), the record of a key with any of what issue 12
//! added (a pending deletion, a rotation period, a description, tags):
//! format 2 with `"format": 3`, the type always present (`aes256-gcm`
//! too), the state `pending-deletion` possible, and these fields, each
//! absent when the key has none:
//!
//! ```json
//! {
//!   "format": 3,
//!   "id": "…", "name": "…", "type": "…", "created": …,
//!   "state": "enabled" | "disabled" | "pending-deletion" | "revoked",
//!   "deletion_date": <unix seconds: when the key is deleted, on the wall clock>,
//!   "deletion_daemon_clock": <the writing host's daemon clock reading the
//!                            deletion also waits for; meaningless elsewhere>,
//!   "min_decryption_version": …, "revision": …,
//!   "rotation_period": <seconds between rotations by age, 3600 to 100 years>,
//!   "description": "<free text, at most 1024 bytes, no control characters>",
//!   "tags": { "<name [A-Za-z0-9._-]{1,64}>": "<value, at most 256 bytes>", … },
//!   "versions": [ … as in format 2 … ],
//!   "mac": "<64 hex digits>"
//! }
//! ```
//!
//! `deletion_date` and `deletion_daemon_clock` are present exactly when the
//! state is `pending-deletion`; `tags` are in name order (at most 32). A
//! restore or an import brings a key pending deletion back disabled,
//! without its deletion: the waiting period's daemon clock does not travel,
//! so nothing is destroyed early and nothing lost (the operator schedules
//! it again if still wanted).
//!
//! Writers emit format 3 only for a key that has any of those fields;
//! otherwise format 1 for AES-256-GCM keys (so a hostkms from before key
//! types still restores them) and format 2 for every other type (so a
//! hostkms from before issue 12 still restores them). Readers take all
//! three. A record of format 1 or 2 with a field of format 3 or the state
//! `pending-deletion` is refused; a format-1 record with a `type` or
//! `public_key` is refused (format 1 has no such field); a format-2 or -3
//! record without a `type`, with a type this build does not know, without
//! the public key of a signing version or with one on a version of another
//! type is refused; so is a format-3 record whose deletion fields disagree
//! with its state, or whose description, tags or rotation period break a
//! limit.
//!
//! Version `n` is at index `n - 1`. A revoked key has every version revoked.
//! `mac` is HMAC-SHA256 over the record's canonical text: the same object
//! without `mac`, serialized compactly (no white space) with the fields in
//! the order above and the versions' fields in the order above (so it
//! covers `type`, `public_key` and every field of format 3 too). Its key is
//! derived with HKDF-SHA256 (no salt) from a secret under a label: for the
//! recovery directory the bundle identity's 32-byte X25519 secret and
//! [`RECORD_MAC_LABEL`] ([`MacKey::for_records`]); an export file uses a key
//! of its own ([`MacKey::from_bytes`]). So a file planted by someone who knows
//! only the public bundle recipient is refused.
//!
//! Evolution: a change of shape (key types, deletion dates, tags) is a new
//! format number; its reader is added beside [`decode`]'s arms and
//! converts to the current [`KeyMaterial`], so every earlier format stays
//! readable. A format newer than this build is refused with "upgrade".

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use agent_proto::{KeyState, KeyType};

use crate::envelope::KeyId;
use crate::keystore::{DeletionDue, KeyMaterial, KeySettingsMaterial, VersionMaterial};

/// The newest record format this build writes, for a key with a pending
/// deletion, a rotation period, a description or tags; it reads every
/// format from 1 to this.
pub const RECORD_FORMAT: u32 = 3;

/// The record format of a key of any type but AES-256-GCM without the
/// fields of [`RECORD_FORMAT`]: 2, which every hostkms since key types reads.
pub const RECORD_FORMAT_TYPED: u32 = 2;

/// The record format of an AES-256-GCM key without the fields of
/// [`RECORD_FORMAT`]: 1, which every hostkms reads.
pub const RECORD_FORMAT_AES: u32 = 1;

/// The longest public key a record may carry, in bytes of DER (an ML-DSA-65
/// SubjectPublicKeyInfo is 1,974).
pub const MAX_PUBLIC_KEY_LEN: usize = 4096;

/// HKDF label of the MAC key of the recovery directory's key records.
pub const RECORD_MAC_LABEL: &str = "hostkms recovery record mac v1";

/// The largest record text accepted (a key with about 300,000 versions).
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// Length of a KEK, the secret of a version.
const SECRET_LEN: usize = 32;

/// A key that authenticates record (or manifest) text: HMAC-SHA256.
pub struct MacKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    /// HKDF-SHA256 (no salt) of `secret` with `label` as info.
    pub fn derive(secret: &[u8], label: &str) -> MacKey {
        let hkdf = Hkdf::<Sha256>::new(None, secret);
        let mut key = Zeroizing::new([0u8; 32]);
        // Expanding 32 bytes from SHA-256 HKDF cannot exceed its 8160-byte bound.
        let _ = hkdf.expand(label.as_bytes(), key.as_mut());
        MacKey(key)
    }

    /// The MAC key of the recovery directory's key records, from the bundle
    /// identity's 32-byte secret.
    pub fn for_records(bundle_secret: &[u8; 32]) -> MacKey {
        MacKey::derive(bundle_secret, RECORD_MAC_LABEL)
    }

    /// A MAC key given whole (an export file's, for example).
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> MacKey {
        MacKey(key)
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; 32 bytes is never refused.
        <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    /// The tag of `text`, as 64 lower-case hex digits.
    pub fn tag_hex(&self, text: &[u8]) -> String {
        let mut mac = self.hmac();
        mac.update(text);
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `tag_hex` is the tag of `text`, compared in constant time.
    pub fn verify_hex(&self, text: &[u8], tag_hex: &str) -> bool {
        let Some(tag) = unhex::<32>(tag_hex) else {
            return false;
        };
        let mut mac = self.hmac();
        mac.update(text);
        mac.verify_slice(&tag).is_ok()
    }
}

/// A key record read back: the key's material and the record's revision.
#[derive(Debug)]
pub struct Record {
    /// The key, with its KEKs (revoked versions have none).
    pub material: KeyMaterial,
    /// How many times this key's record was written (+1 per write).
    pub revision: u64,
}

/// Why a record cannot be written or read. Never shows secret text: a
/// malformed record is reported by position only.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Longer than [`MAX_RECORD_LEN`].
    #[error("the key record is {len} bytes, more than the {MAX_RECORD_LEN} a record may have")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not JSON of a known shape.
    #[error(
        "the key record is not a valid record of format {format}: {kind} at line {line}, column {column}"
    )]
    Malformed {
        /// The format it claims (0 when unreadable).
        format: u32,
        /// syntax error, wrong data, or cut short.
        kind: &'static str,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// Written by a newer hostkms.
    #[error(
        "the key record is in format {found}, newer than this hostkms reads (formats 1 to {RECORD_FORMAT}): read it with a newer hostkms"
    )]
    NewerFormat {
        /// The format it has.
        found: u32,
    },
    /// Format 0: never written by any hostkms.
    #[error("the key record claims format 0, which no hostkms writes")]
    FormatZero,
    /// The MAC does not match.
    #[error(
        "the key record of key {id} ({name:?}) does not authenticate: it was edited, planted by someone who knows only the public bundle recipient, or belongs to another recovery bundle; do not use it"
    )]
    BadMac {
        /// The id it claims.
        id: String,
        /// The name it claims.
        name: String,
    },
    /// Authenticated but inconsistent, or material that cannot be written.
    #[error("the key record of key {id} ({name:?}) is inconsistent: {detail}")]
    Invalid {
        /// The id it claims.
        id: String,
        /// The name it claims.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// serde_json refused to write (never expected).
    #[error("cannot write the key record of key {id}: {detail}")]
    Serialize {
        /// The key.
        id: String,
        /// Why.
        detail: String,
    },
}

/// A key state as the MANIFEST (format 1) spells it: a key pending
/// deletion is listed as disabled (unusable, as it is), so older readers
/// still read the MANIFEST; its record says `pending-deletion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateV1 {
    /// In service.
    Enabled,
    /// Stopped until an admin enables it.
    Disabled,
    /// Revoked for good.
    Revoked,
}

impl From<KeyState> for StateV1 {
    fn from(state: KeyState) -> StateV1 {
        match state {
            KeyState::Enabled => StateV1::Enabled,
            KeyState::Disabled => StateV1::Disabled,
            KeyState::Revoked => StateV1::Revoked,
            // The MANIFEST's format 1 has no such state.
            KeyState::PendingDeletion => StateV1::Disabled,
        }
    }
}

impl From<StateV1> for KeyState {
    fn from(state: StateV1) -> KeyState {
        match state {
            StateV1::Enabled => KeyState::Enabled,
            StateV1::Disabled => KeyState::Disabled,
            StateV1::Revoked => KeyState::Revoked,
        }
    }
}

/// A version state as records and the MANIFEST spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionStateV1 {
    /// Its secret exists.
    Enabled,
    /// Its secret is gone.
    Revoked,
}

impl VersionStateV1 {
    /// The state of `version`.
    pub fn of(version: &VersionMaterial) -> VersionStateV1 {
        if version.kek.is_some() {
            VersionStateV1::Enabled
        } else {
            VersionStateV1::Revoked
        }
    }
}

/// A key state as records spell it: format 3 adds `pending-deletion`
/// (the MANIFEST, in format 1, lists such a key as `disabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RecordState {
    Enabled,
    Disabled,
    PendingDeletion,
    Revoked,
}

impl RecordState {
    fn as_str(self) -> &'static str {
        match self {
            RecordState::Enabled => "enabled",
            RecordState::Disabled => "disabled",
            RecordState::PendingDeletion => "pending-deletion",
            RecordState::Revoked => "revoked",
        }
    }
}

impl From<KeyState> for RecordState {
    fn from(state: KeyState) -> RecordState {
        match state {
            KeyState::Enabled => RecordState::Enabled,
            KeyState::Disabled => RecordState::Disabled,
            KeyState::PendingDeletion => RecordState::PendingDeletion,
            KeyState::Revoked => RecordState::Revoked,
        }
    }
}

impl From<RecordState> for KeyState {
    fn from(state: RecordState) -> KeyState {
        match state {
            RecordState::Enabled => KeyState::Enabled,
            RecordState::Disabled => KeyState::Disabled,
            RecordState::PendingDeletion => KeyState::PendingDeletion,
            RecordState::Revoked => KeyState::Revoked,
        }
    }
}

/// Formats 1 to 3, field for field: a field a format lacks is absent from
/// its text (format 1 has no `type` and no `public_key`, formats 1 and 2
/// no field of format 3); `mac` absent in the canonical text.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordV1 {
    format: u32,
    id: String,
    name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    key_type: Option<String>,
    created: u64,
    state: RecordState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deletion_date: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deletion_daemon_clock: Option<u64>,
    min_decryption_version: u32,
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotation_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<BTreeMap<String, String>>,
    versions: Vec<VersionV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl RecordV1 {
    /// The first field of format 3 this record has, by name.
    fn format_3_field(&self) -> Option<&'static str> {
        [
            (
                self.state == RecordState::PendingDeletion,
                "the state pending-deletion",
            ),
            (self.deletion_date.is_some(), "a deletion_date"),
            (
                self.deletion_daemon_clock.is_some(),
                "a deletion_daemon_clock",
            ),
            (self.rotation_period.is_some(), "a rotation_period"),
            (self.description.is_some(), "a description"),
            (self.tags.is_some(), "tags"),
        ]
        .into_iter()
        .find_map(|(has, name)| has.then_some(name))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionV1 {
    version: u32,
    created: u64,
    state: VersionStateV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<Zeroizing<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
}

/// Only the format number, read first to choose the reader.
#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

/// Writes `material` as a record with `revision`, authenticated under
/// `key`: format 3 for a key with any of its fields (a pending deletion, a
/// rotation period, a description, tags), else format 1 for an
/// AES-256-GCM key and format 2 (with its type and public keys) for any
/// other. The text is pretty-printed JSON in a zeroizing buffer.
pub fn encode(
    material: &KeyMaterial,
    revision: u64,
    key: &MacKey,
) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    let id = material.id.to_string();
    let invalid = |detail: String| RecordError::Invalid {
        id: id.clone(),
        name: material.name.clone(),
        detail,
    };
    check_material(material).map_err(invalid)?;
    let format = format_of(material);
    let settings = &material.settings;
    let mut record = RecordV1 {
        format,
        id: id.clone(),
        name: material.name.clone(),
        key_type: (format != RECORD_FORMAT_AES).then(|| material.key_type.as_str().to_string()),
        created: material.created,
        state: material.state.into(),
        deletion_date: settings.deletion_due.map(|due| due.wall),
        deletion_daemon_clock: settings.deletion_due.map(|due| due.elapsed),
        min_decryption_version: material.min_decryption_version,
        revision,
        rotation_period: settings.rotation_period,
        description: (!settings.description.is_empty()).then(|| settings.description.clone()),
        tags: (!settings.tags.is_empty()).then(|| settings.tags.clone()),
        versions: material
            .versions
            .iter()
            .map(|v| VersionV1 {
                version: v.number,
                created: v.created,
                state: VersionStateV1::of(v),
                secret: v
                    .kek
                    .as_ref()
                    .map(|kek| Zeroizing::new(BASE64.encode(kek.as_slice()))),
                public_key: v.public_key.as_deref().map(|der| BASE64.encode(der)),
            })
            .collect(),
        mac: None,
    };
    let canonical = canonical(&record).map_err(|detail| RecordError::Serialize {
        id: id.clone(),
        detail,
    })?;
    record.mac = Some(key.tag_hex(&canonical));
    // Sized ahead so the buffer holding secrets is not reallocated (a
    // reallocation would leave a copy behind in freed memory).
    let mut text = Zeroizing::new(Vec::with_capacity(2 * canonical.len() + 1024));
    serde_json::to_writer_pretty(&mut *text, &record).map_err(|e| RecordError::Serialize {
        id: id.clone(),
        detail: e.to_string(),
    })?;
    text.push(b'\n');
    Ok(text)
}

/// The format `material`'s record is written in: the oldest that holds
/// everything it has, so older readers restore every key they can.
pub fn format_of(material: &KeyMaterial) -> u32 {
    if !material.settings.is_empty() {
        RECORD_FORMAT
    } else if material.key_type != KeyType::Aes256Gcm {
        RECORD_FORMAT_TYPED
    } else {
        RECORD_FORMAT_AES
    }
}

/// Reads a record of any format this build knows, checks its MAC under
/// `key` and its consistency, and returns the key's material.
pub fn decode(text: &[u8], key: &MacKey) -> Result<Record, RecordError> {
    if text.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge { len: text.len() });
    }
    let probe: FormatProbe = serde_json::from_slice(text).map_err(|e| malformed(0, &e))?;
    match probe.format {
        0 => Err(RecordError::FormatZero),
        format @ 1..=RECORD_FORMAT => decode_known(text, format, key),
        found => Err(RecordError::NewerFormat { found }),
    }
}

/// Reads format 1, 2 or 3 (`format`, as probed): one shape, format 1
/// without the fields of key types, formats 1 and 2 without those of
/// format 3.
fn decode_known(text: &[u8], format: u32, key: &MacKey) -> Result<Record, RecordError> {
    let mut record: RecordV1 = serde_json::from_slice(text).map_err(|e| malformed(format, &e))?;
    let claimed_id = record.id.clone();
    let claimed_name = record.name.clone();
    let mac = record.mac.take().unwrap_or_default();
    let canonical = canonical(&record).map_err(|detail| RecordError::Serialize {
        id: claimed_id.clone(),
        detail,
    })?;
    if !key.verify_hex(&canonical, &mac) {
        return Err(RecordError::BadMac {
            id: claimed_id,
            name: claimed_name,
        });
    }
    let invalid = |detail: String| RecordError::Invalid {
        id: claimed_id.clone(),
        name: claimed_name.clone(),
        detail,
    };
    let id = unhex::<16>(&record.id)
        .filter(|_| record.id.bytes().all(|b| !b.is_ascii_uppercase()))
        .map(KeyId)
        .ok_or_else(|| invalid("its id is not 32 lower-case hex digits".into()))?;
    if format < RECORD_FORMAT {
        if let Some(field) = record.format_3_field() {
            return Err(invalid(format!(
                "it is in format {format} but has {field}, which only format {RECORD_FORMAT} has"
            )));
        }
    }
    let key_type = match (format, &record.key_type) {
        // Format 1 records predate key types: every key was AES-256-GCM.
        (1, None) => KeyType::Aes256Gcm,
        (1, Some(_)) => {
            return Err(invalid(
                "it is in format 1 but names a key type, which only formats 2 and 3 have".into(),
            ));
        }
        (_, None) => {
            return Err(invalid(format!(
                "it is in format {format} but names no key type"
            )));
        }
        (_, Some(name)) => KeyType::from_name(name).ok_or_else(|| {
            invalid(format!(
                "its key type {name:?} is not one this hostkms knows ({}): read it with a newer hostkms",
                KeyType::ALL.map(KeyType::as_str).join(", ")
            ))
        })?,
    };
    let mut versions = Vec::with_capacity(record.versions.len());
    for v in &record.versions {
        let kek = match (v.state, &v.secret) {
            (VersionStateV1::Enabled, Some(secret)) => {
                Some(decode_secret(secret).ok_or_else(|| {
                    invalid(format!(
                        "version {} has a secret that is not 32 bytes of base64",
                        v.version
                    ))
                })?)
            }
            (VersionStateV1::Revoked, None) => None,
            (VersionStateV1::Enabled, None) => {
                return Err(invalid(format!(
                    "version {} is enabled but has no secret",
                    v.version
                )));
            }
            (VersionStateV1::Revoked, Some(_)) => {
                return Err(invalid(format!(
                    "version {} is revoked but has a secret",
                    v.version
                )));
            }
        };
        let public_key = match &v.public_key {
            None if key_type.is_signing() => {
                return Err(invalid(format!(
                    "version {} of its {key_type} key has no public key",
                    v.version
                )));
            }
            None => None,
            Some(_) if !key_type.is_signing() => {
                return Err(invalid(format!(
                    "version {} has a public key, which {key_type} keys do not have",
                    v.version
                )));
            }
            Some(text) => Some(decode_public_key(text).ok_or_else(|| {
                invalid(format!(
                    "version {} has a public key that is not base64 of 1 to {MAX_PUBLIC_KEY_LEN} bytes",
                    v.version
                ))
            })?),
        };
        versions.push(VersionMaterial {
            number: v.version,
            created: v.created,
            kek,
            public_key,
        });
    }
    let material = KeyMaterial {
        id,
        name: record.name.clone(),
        created: record.created,
        key_type,
        state: record.state.into(),
        min_decryption_version: record.min_decryption_version,
        versions,
        settings: KeySettingsMaterial {
            description: record.description.take().unwrap_or_default(),
            tags: record.tags.take().unwrap_or_default(),
            rotation_period: record.rotation_period,
            deletion_due: match (record.deletion_date, record.deletion_daemon_clock) {
                (Some(wall), Some(elapsed)) => Some(DeletionDue { wall, elapsed }),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        "it has one of deletion_date and deletion_daemon_clock without the other"
                            .into(),
                    ));
                }
            },
        },
    };
    check_material(&material).map_err(invalid)?;
    Ok(Record {
        material,
        revision: record.revision,
    })
}

/// The rules every key's material keeps (the key store's own invariants).
fn check_material(material: &KeyMaterial) -> Result<(), String> {
    agent_proto::key_name::check(&material.name).map_err(|e| e.to_string())?;
    if material.versions.is_empty() {
        return Err("it has no versions".into());
    }
    for (index, v) in material.versions.iter().enumerate() {
        if u64::from(v.number) != index as u64 + 1 {
            return Err(format!(
                "its versions are not numbered 1, 2, …: entry {} is version {}",
                index + 1,
                v.number
            ));
        }
    }
    let latest = material.versions.len();
    if material.min_decryption_version == 0 || material.min_decryption_version as usize > latest {
        return Err(format!(
            "its minimum decryption version {} is not between 1 and its latest version {latest}",
            material.min_decryption_version
        ));
    }
    if material.state == KeyState::Revoked && material.versions.iter().any(|v| v.kek.is_some()) {
        return Err("it is revoked but a version still has its secret".into());
    }
    match (material.state, material.settings.deletion_due) {
        (KeyState::PendingDeletion, None) => {
            return Err("it is pending deletion but has no deletion date".into());
        }
        (state, Some(_)) if state != KeyState::PendingDeletion => {
            return Err(format!(
                "it has a deletion date but is {}, not pending deletion",
                RecordState::from(state).as_str()
            ));
        }
        _ => {}
    }
    material
        .settings
        .check()
        .map_err(|e| format!("its settings break a limit: {e}"))?;
    for v in &material.versions {
        match &v.public_key {
            None if material.key_type.is_signing() => {
                return Err(format!(
                    "version {} of its {} key has no public key",
                    v.number, material.key_type
                ));
            }
            Some(_) if !material.key_type.is_signing() => {
                return Err(format!(
                    "version {} has a public key, which {} keys do not have",
                    v.number, material.key_type
                ));
            }
            Some(der) if der.is_empty() || der.len() > MAX_PUBLIC_KEY_LEN => {
                return Err(format!(
                    "version {} has a public key of {} bytes, not 1 to {MAX_PUBLIC_KEY_LEN}",
                    v.number,
                    der.len()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether two keys' materials are the same: every field, every KEK and
/// every public key.
pub fn same_material(a: &KeyMaterial, b: &KeyMaterial) -> bool {
    a.id == b.id
        && a.name == b.name
        && a.key_type == b.key_type
        && a.created == b.created
        && a.state == b.state
        && a.min_decryption_version == b.min_decryption_version
        && a.settings == b.settings
        && a.versions.len() == b.versions.len()
        && a.versions.iter().zip(&b.versions).all(|(x, y)| {
            x.number == y.number
                && x.created == y.created
                && x.public_key == y.public_key
                && match (&x.kek, &y.kek) {
                    (Some(x), Some(y)) => x.as_slice() == y.as_slice(),
                    (None, None) => true,
                    _ => false,
                }
        })
}

/// The canonical text: compact JSON of the record without its MAC.
fn canonical(record: &RecordV1) -> Result<Zeroizing<Vec<u8>>, String> {
    // Sized ahead so the buffer holding secrets is not reallocated: every
    // field at its longest after JSON escaping (base64 is 4/3 of its bytes).
    let description = record.description.as_ref().map_or(0, |d| 2 * d.len());
    let tags = record.tags.as_ref().map_or(0, |tags| {
        tags.iter()
            .map(|(name, value)| 2 * (name.len() + value.len()) + 8)
            .sum()
    });
    let versions: usize = record
        .versions
        .iter()
        .map(|v| 160 + v.public_key.as_ref().map_or(0, String::len))
        .sum();
    let estimate = 512 + description + tags + versions;
    let mut text = Zeroizing::new(Vec::with_capacity(estimate));
    serde_json::to_writer(&mut *text, record).map_err(|e| e.to_string())?;
    Ok(text)
}

fn decode_secret(text: &str) -> Option<Zeroizing<[u8; SECRET_LEN]>> {
    let mut buf = Zeroizing::new([0u8; SECRET_LEN + 8]);
    let len = BASE64.decode_slice(text.as_bytes(), buf.as_mut()).ok()?;
    if len != SECRET_LEN {
        return None;
    }
    let mut kek = Zeroizing::new([0u8; SECRET_LEN]);
    kek.copy_from_slice(&buf[..SECRET_LEN]);
    Some(kek)
}

fn decode_public_key(text: &str) -> Option<Vec<u8>> {
    if text.len() > MAX_PUBLIC_KEY_LEN.div_ceil(3) * 4 {
        return None;
    }
    let der = BASE64.decode(text.as_bytes()).ok()?;
    (1..=MAX_PUBLIC_KEY_LEN).contains(&der.len()).then_some(der)
}

fn malformed(format: u32, e: &serde_json::Error) -> RecordError {
    RecordError::Malformed {
        format,
        kind: classify(e),
        line: e.line(),
        column: e.column(),
    }
}

/// serde_json's error category, without its message (which may quote text).
pub(crate) fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "a read error",
        serde_json::error::Category::Syntax => "a JSON syntax error",
        serde_json::error::Category::Data => "a missing, unknown or mistyped field",
        serde_json::error::Category::Eof => "the text ends too early",
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2 N` hex digits (either case).
pub(crate) fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type JsonEdit = Box<dyn Fn(&mut serde_json::Value)>;
    type MaterialEdit = Box<dyn Fn(&mut KeyMaterial)>;

    fn material() -> KeyMaterial {
        KeyMaterial {
            id: KeyId([0xab; 16]),
            name: "app-db".into(),
            created: 1_700_000_000,
            state: KeyState::Enabled,
            min_decryption_version: 2,
            settings: Default::default(),
            versions: vec![
                VersionMaterial {
                    number: 1,
                    created: 1_700_000_000,
                    kek: None,
                    public_key: None,
                },
                VersionMaterial {
                    number: 2,
                    created: 1_700_000_100,
                    kek: Some(Zeroizing::new([7; 32])),
                    public_key: None,
                },
                VersionMaterial {
                    number: 3,
                    created: 1_700_000_200,
                    kek: Some(Zeroizing::new([9; 32])),
                    public_key: None,
                },
            ],
            key_type: agent_proto::KeyType::Aes256Gcm,
        }
    }

    fn key() -> MacKey {
        MacKey::for_records(&[1; 32])
    }

    fn edit(text: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(text).unwrap();
        f(&mut value);
        serde_json::to_vec_pretty(&value).unwrap()
    }

    #[test]
    fn round_trip_keeps_every_field_and_secret() {
        let text = encode(&material(), 5, &key()).unwrap();
        let record = decode(&text, &key()).unwrap();
        assert_eq!(record.revision, 5);
        assert!(same_material(&record.material, &material()));
        assert_eq!(record.material.id, KeyId([0xab; 16]));
        assert_eq!(record.material.min_decryption_version, 2);
        assert!(record.material.versions[0].kek.is_none());
        assert_eq!(record.material.versions[2].kek.as_deref(), Some(&[9; 32]));
    }

    #[test]
    fn the_text_is_the_documented_shape() {
        let text = encode(&material(), 5, &key()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["format"], 1);
        assert_eq!(value["id"], "abababababababababababababababab");
        assert_eq!(value["name"], "app-db");
        assert_eq!(value["state"], "enabled");
        assert_eq!(value["revision"], 5);
        assert_eq!(value["min_decryption_version"], 2);
        let versions = value["versions"].as_array().unwrap();
        assert_eq!(versions[0]["state"], "revoked");
        assert!(
            versions[0].get("secret").is_none(),
            "a revoked version's secret is gone"
        );
        assert_eq!(versions[1]["secret"], BASE64.encode([7u8; 32]));
        assert_eq!(value["mac"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn the_mac_is_over_the_compact_text_without_it() {
        let text = encode(&material(), 5, &key()).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let mac = value.as_object_mut().unwrap().remove("mac").unwrap();
        // serde_json::Value keeps insertion order only with preserve_order;
        // rebuild the canonical text from the typed record instead.
        let record: RecordV1 = serde_json::from_value(value).unwrap();
        let canonical = canonical(&record).unwrap();
        assert!(key().verify_hex(&canonical, mac.as_str().unwrap()));
        assert!(canonical.starts_with(br#"{"format":1,"id":"abab"#));
    }

    #[test]
    fn any_edit_is_refused() {
        let text = encode(&material(), 5, &key()).unwrap();
        let edits: Vec<JsonEdit> = vec![
            Box::new(|v| v["name"] = "other".into()),
            Box::new(|v| v["state"] = "disabled".into()),
            Box::new(|v| v["min_decryption_version"] = 1.into()),
            Box::new(|v| v["revision"] = 6.into()),
            Box::new(|v| v["versions"][1]["secret"] = BASE64.encode([8u8; 32]).into()),
            Box::new(|v| {
                // A revoked version brought back.
                v["versions"][0]["state"] = "enabled".into();
                v["versions"][0]["secret"] = BASE64.encode([8u8; 32]).into();
            }),
            Box::new(|v| {
                v["versions"].as_array_mut().unwrap().pop();
            }),
        ];
        for f in edits {
            let edited = edit(&text, f);
            assert!(
                matches!(decode(&edited, &key()), Err(RecordError::BadMac { .. })),
                "{}",
                String::from_utf8_lossy(&edited)
            );
        }
    }

    #[test]
    fn a_record_planted_without_the_bundle_secret_is_refused() {
        // Someone who knows only the public recipient can encrypt to it, but
        // cannot derive the MAC key.
        let planted = encode(&material(), 9, &MacKey::for_records(&[2; 32])).unwrap();
        let err = decode(&planted, &key()).unwrap_err();
        assert!(matches!(err, RecordError::BadMac { .. }), "{err}");
        assert!(err.to_string().contains("does not authenticate"));
        let no_mac = edit(&planted, |v| {
            v.as_object_mut().unwrap().remove("mac");
        });
        assert!(matches!(
            decode(&no_mac, &key()),
            Err(RecordError::BadMac { .. })
        ));
    }

    #[test]
    fn the_transfer_variant_uses_its_own_key() {
        let transfer = MacKey::from_bytes(Zeroizing::new([3; 32]));
        let text = encode(&material(), 1, &transfer).unwrap();
        assert!(decode(&text, &transfer).is_ok());
        assert!(decode(&text, &key()).is_err());
        assert!(decode(&text, &MacKey::derive(&[3; 32], RECORD_MAC_LABEL)).is_err());
    }

    #[test]
    fn formats_are_checked_before_anything_else() {
        let text = encode(&material(), 5, &key()).unwrap();
        let newer = edit(&text, |v| v["format"] = 4.into());
        assert!(matches!(
            decode(&newer, &key()),
            Err(RecordError::NewerFormat { found: 4 })
        ));
        assert!(
            decode(&newer, &key())
                .unwrap_err()
                .to_string()
                .contains("newer hostkms")
        );
        let zero = edit(&text, |v| v["format"] = 0.into());
        assert!(matches!(
            decode(&zero, &key()),
            Err(RecordError::FormatZero)
        ));
        let unknown_field = edit(&text, |v| v["owner"] = "x".into());
        assert!(matches!(
            decode(&unknown_field, &key()),
            Err(RecordError::Malformed { format: 1, .. })
        ));
    }

    #[test]
    fn malformed_text_is_an_error_that_quotes_no_content() {
        let text = encode(&material(), 5, &key()).unwrap();
        let secret = BASE64.encode([7u8; 32]);
        // The secret where a number belongs.
        let edited = edit(&text, |v| v["created"] = secret.clone().into());
        let err = decode(&edited, &key()).unwrap_err();
        assert!(matches!(err, RecordError::Malformed { .. }), "{err}");
        assert!(!err.to_string().contains(&secret));
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"format\":\"1\"}",
            &[0xff; 10],
        ] {
            assert!(
                matches!(decode(bad, &key()), Err(RecordError::Malformed { .. })),
                "{bad:?}"
            );
        }
        let huge = vec![b' '; MAX_RECORD_LEN + 1];
        assert!(matches!(
            decode(&huge, &key()),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn inconsistent_material_is_refused_even_when_authenticated() {
        let cases: Vec<MaterialEdit> = vec![
            Box::new(|m| m.min_decryption_version = 0),
            Box::new(|m| m.min_decryption_version = 4),
            Box::new(|m| m.versions[1].number = 3),
            Box::new(|m| m.versions.clear()),
            Box::new(|m| m.name = "bad name".into()),
            Box::new(|m| m.state = KeyState::Revoked),
        ];
        for f in cases {
            let mut m = material();
            f(&mut m);
            // encode refuses it ...
            assert!(matches!(
                encode(&m, 1, &key()),
                Err(RecordError::Invalid { .. })
            ));
        }
        // ... and decode refuses a MACed record that breaks a rule.
        let text = encode(&material(), 5, &key()).unwrap();
        let cases: Vec<JsonEdit> = vec![
            Box::new(|v| v["versions"][1]["secret"] = "AAAA".into()),
            Box::new(|v| {
                v["versions"][1].as_object_mut().unwrap().remove("secret");
            }),
            Box::new(|v| v["versions"][0]["secret"] = BASE64.encode([1u8; 32]).into()),
            Box::new(|v| v["id"] = "ABABABABABABABABABABABABABABABAB".into()),
            Box::new(|v| v["id"] = "abab".into()),
            Box::new(|v| v["versions"][2]["version"] = 7.into()),
        ];
        for f in cases {
            let mut value: serde_json::Value = serde_json::from_slice(&text).unwrap();
            value.as_object_mut().unwrap().remove("mac");
            f(&mut value);
            let mut record: RecordV1 = serde_json::from_value(value).unwrap();
            record.mac = Some(key().tag_hex(&canonical(&record).unwrap()));
            let resigned = serde_json::to_vec(&record).unwrap();
            let err = decode(&resigned, &key()).unwrap_err();
            assert!(matches!(err, RecordError::Invalid { .. }), "{err}");
        }
    }

    #[test]
    fn same_material_sees_every_difference() {
        assert!(same_material(&material(), &material()));
        let mut m = material();
        m.versions[2].kek = Some(Zeroizing::new([10; 32]));
        assert!(!same_material(&m, &material()));
        let mut m = material();
        m.versions[2].kek = None;
        assert!(!same_material(&m, &material()));
        let mut m = material();
        m.state = KeyState::Disabled;
        assert!(!same_material(&m, &material()));
    }

    #[test]
    fn debug_of_the_mac_key_is_redacted() {
        assert_eq!(format!("{:?}", key()), "MacKey(<redacted>)");
    }

    /// An ed25519 key: version 1 revoked, version 2 live, each with its
    /// public key as the store keeps it.
    fn signing_material() -> KeyMaterial {
        let public_key = |seed: u8| {
            crate::version_key::VersionKey::from_seed(KeyType::Ed25519, &[seed; 32])
                .unwrap()
                .public_key_der()
                .map(|der| der.to_vec())
        };
        KeyMaterial {
            id: KeyId([0xcd; 16]),
            name: "release".into(),
            created: 1_700_000_000,
            key_type: KeyType::Ed25519,
            state: KeyState::Enabled,
            min_decryption_version: 1,
            settings: Default::default(),
            versions: vec![
                VersionMaterial {
                    number: 1,
                    created: 1_700_000_000,
                    kek: None,
                    public_key: public_key(5),
                },
                VersionMaterial {
                    number: 2,
                    created: 1_700_000_100,
                    kek: Some(Zeroizing::new([6; 32])),
                    public_key: public_key(6),
                },
            ],
        }
    }

    /// `text` edited by `f` and MACed again under [`key`], as only a holder
    /// of the MAC key could.
    fn resigned(text: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(text).unwrap();
        value.as_object_mut().unwrap().remove("mac");
        f(&mut value);
        let mut record: RecordV1 = serde_json::from_value(value).unwrap();
        record.mac = Some(key().tag_hex(&canonical(&record).unwrap()));
        serde_json::to_vec(&record).unwrap()
    }

    #[test]
    fn a_key_of_another_type_is_written_in_format_2_with_its_type_and_public_keys() {
        let signing = signing_material();
        let text = encode(&signing, 3, &key()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["format"], 2);
        assert_eq!(value["type"], "ed25519");
        let versions = value["versions"].as_array().unwrap();
        assert!(versions[0].get("secret").is_none());
        for (json, version) in versions.iter().zip(&signing.versions) {
            assert_eq!(
                json["public_key"],
                BASE64.encode(version.public_key.as_ref().unwrap())
            );
        }
        let record = decode(&text, &key()).unwrap();
        assert!(same_material(&record.material, &signing));
        assert_eq!(record.material.key_type, KeyType::Ed25519);
        assert_eq!(
            record.material.versions[0].public_key,
            signing.versions[0].public_key
        );
        // The canonical text puts the type after the name.
        let mut value = value;
        value.as_object_mut().unwrap().remove("mac");
        let record: RecordV1 = serde_json::from_value(value).unwrap();
        let canonical = canonical(&record).unwrap();
        assert!(
            canonical.starts_with(br#"{"format":2,"id":"cdcd"#)
                && canonical
                    .windows(br#""name":"release","type":"ed25519","created""#.len())
                    .any(|w| w == br#""name":"release","type":"ed25519","created""#),
            "{}",
            String::from_utf8_lossy(&canonical)
        );
        // An HMAC key: format 2, its type, no public key.
        let mut hmac = signing.clone();
        hmac.key_type = KeyType::HmacSha512;
        hmac.versions.iter_mut().for_each(|v| v.public_key = None);
        let text = encode(&hmac, 1, &key()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            (value["format"].clone(), value["type"].clone()),
            (2.into(), "hmac-sha512".into())
        );
        assert!(value["versions"][1].get("public_key").is_none());
        assert!(same_material(
            &decode(&text, &key()).unwrap().material,
            &hmac
        ));
        // An AES key stays in format 1, without a type.
        let text = encode(&material(), 1, &key()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["format"], 1);
        assert!(value.get("type").is_none());
    }

    #[test]
    fn the_mac_covers_the_type_and_the_public_keys() {
        let text = encode(&signing_material(), 3, &key()).unwrap();
        let other = BASE64.encode(signing_material().versions[1].public_key.as_ref().unwrap());
        let edits: Vec<JsonEdit> = vec![
            Box::new(|v| v["type"] = "ecdsa-p256".into()),
            Box::new(move |v| v["versions"][0]["public_key"] = other.clone().into()),
            Box::new(|v| {
                v["versions"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("public_key");
            }),
            // Passed off as an AES key's format-1 record.
            Box::new(|v| {
                v["format"] = 1.into();
                v.as_object_mut().unwrap().remove("type");
                for version in v["versions"].as_array_mut().unwrap() {
                    version.as_object_mut().unwrap().remove("public_key");
                }
            }),
        ];
        for f in edits {
            let edited = edit(&text, f);
            assert!(
                matches!(decode(&edited, &key()), Err(RecordError::BadMac { .. })),
                "{}",
                String::from_utf8_lossy(&edited)
            );
        }
    }

    #[test]
    fn type_fields_that_contradict_the_format_or_the_type_are_refused_even_when_authenticated() {
        let typed = encode(&signing_material(), 3, &key()).unwrap();
        let aes = encode(&material(), 3, &key()).unwrap();
        let cases: Vec<(&[u8], JsonEdit, &str)> = vec![
            (
                &aes,
                Box::new(|v| v["type"] = "ed25519".into()),
                "format 1 but names a key type",
            ),
            (
                &aes,
                Box::new(|v| v["versions"][1]["public_key"] = "MAA=".into()),
                "which aes256-gcm keys do not have",
            ),
            (
                &typed,
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("type");
                }),
                "format 2 but names no key type",
            ),
            (
                &typed,
                Box::new(|v| v["type"] = "rsa-4096".into()),
                "\"rsa-4096\" is not one this hostkms knows",
            ),
            (
                &typed,
                Box::new(|v| {
                    v["versions"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("public_key");
                }),
                "version 1 of its ed25519 key has no public key",
            ),
            (
                &typed,
                Box::new(|v| v["type"] = "hmac-sha256".into()),
                "version 1 has a public key, which hmac-sha256 keys do not have",
            ),
            (
                &typed,
                Box::new(|v| v["versions"][1]["public_key"] = "not base64!".into()),
                "version 2 has a public key that is not base64",
            ),
            (
                &typed,
                Box::new(|v| v["versions"][1]["public_key"] = "".into()),
                "version 2 has a public key that is not base64",
            ),
            (
                &typed,
                Box::new(|v| {
                    v["versions"][1]["public_key"] =
                        BASE64.encode(vec![0u8; MAX_PUBLIC_KEY_LEN + 1]).into()
                }),
                "version 2 has a public key that is not base64",
            ),
        ];
        for (text, f, expected) in cases {
            let err = decode(&resigned(text, f), &key()).unwrap_err();
            assert!(
                matches!(err, RecordError::Invalid { .. }),
                "{expected}: {err}"
            );
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        // And the writer refuses material that breaks the same rules.
        let mut missing = signing_material();
        missing.versions[0].public_key = None;
        let mut extra = material();
        extra.versions[1].public_key = Some(vec![0x30]);
        for material in [missing, extra] {
            assert!(matches!(
                encode(&material, 1, &key()),
                Err(RecordError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn same_material_sees_the_type_and_public_keys() {
        let mut m = signing_material();
        m.key_type = KeyType::EcdsaP256;
        assert!(!same_material(&m, &signing_material()));
        let mut m = signing_material();
        m.versions[0].public_key = m.versions[1].public_key.clone();
        assert!(!same_material(&m, &signing_material()));
    }

    /// `material()` pending deletion, with a rotation period, a
    /// description and tags: every field of format 3.
    fn lifecycle_material() -> KeyMaterial {
        let mut m = material();
        m.state = KeyState::PendingDeletion;
        m.settings = KeySettingsMaterial {
            description: "orders \"db\" é".into(),
            tags: [("env", "prod"), ("owner", "team-a")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rotation_period: Some(90 * 86_400),
            deletion_due: Some(DeletionDue {
                wall: 1_800_000_000,
                elapsed: 2_592_000,
            }),
        };
        m
    }

    #[test]
    fn a_key_with_lifecycle_fields_is_written_in_format_3_and_read_back_whole() {
        let pending = lifecycle_material();
        let text = encode(&pending, 4, &key()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["format"], 3);
        assert_eq!(
            value["type"], "aes256-gcm",
            "format 3 always names the type"
        );
        assert_eq!(value["state"], "pending-deletion");
        assert_eq!(value["deletion_date"], 1_800_000_000u64);
        assert_eq!(value["deletion_daemon_clock"], 2_592_000u64);
        assert_eq!(value["rotation_period"], 7_776_000u64);
        assert_eq!(value["description"], "orders \"db\" é");
        assert_eq!(value["tags"]["owner"], "team-a");
        let record = decode(&text, &key()).unwrap();
        assert_eq!(record.revision, 4);
        assert!(same_material(&record.material, &pending));
        assert_eq!(record.material.settings, pending.settings);
        // The canonical text keeps the documented field order.
        let mut value = value;
        value.as_object_mut().unwrap().remove("mac");
        let canonical = canonical(&serde_json::from_value(value).unwrap()).unwrap();
        let canonical = String::from_utf8(canonical.to_vec()).unwrap();
        let order = [
            "\"format\"",
            "\"id\"",
            "\"name\"",
            "\"type\"",
            "\"created\"",
            "\"state\"",
            "\"deletion_date\"",
            "\"deletion_daemon_clock\"",
            "\"min_decryption_version\"",
            "\"revision\"",
            "\"rotation_period\"",
            "\"description\"",
            "\"tags\"",
            "\"versions\"",
        ]
        .map(|field| canonical.find(field).unwrap());
        assert!(order.is_sorted(), "{canonical}");

        // Any one of the fields alone is format 3, and only that field
        // appears; a signing key keeps its public keys.
        let mut described = signing_material();
        described.settings.description = "release signing".into();
        let mut rotating = material();
        rotating.settings.rotation_period = Some(3600);
        let mut tagged = material();
        tagged.state = KeyState::Disabled;
        tagged.settings.tags.insert("env".into(), String::new());
        for (m, only) in [
            (described, "description"),
            (rotating, "rotation_period"),
            (tagged, "tags"),
        ] {
            let text = encode(&m, 1, &key()).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(value["format"], 3, "{only}");
            for field in [
                "deletion_date",
                "deletion_daemon_clock",
                "rotation_period",
                "description",
                "tags",
            ] {
                assert_eq!(value.get(field).is_some(), field == only, "{only}: {field}");
            }
            assert!(same_material(&decode(&text, &key()).unwrap().material, &m));
        }
        // A key without any keeps format 1 or 2, readable by older restores.
        assert_eq!(format_of(&material()), 1);
        assert_eq!(format_of(&signing_material()), 2);
    }

    #[test]
    fn the_mac_covers_every_field_of_format_3() {
        let text = encode(&lifecycle_material(), 3, &key()).unwrap();
        let edits: Vec<JsonEdit> = vec![
            Box::new(|v| v["description"] = "orders".into()),
            Box::new(|v| v["tags"]["env"] = "dev".into()),
            Box::new(|v| v["tags"]["extra"] = "x".into()),
            Box::new(|v| {
                v["tags"].as_object_mut().unwrap().remove("owner");
            }),
            Box::new(|v| v["rotation_period"] = 3600.into()),
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("rotation_period");
            }),
            // A deletion moved later, or earlier.
            Box::new(|v| v["deletion_date"] = 1_900_000_000u64.into()),
            Box::new(|v| v["deletion_daemon_clock"] = 0.into()),
            // Cancelled by hand: disabled, without the deletion.
            Box::new(|v| {
                v["state"] = "disabled".into();
                let v = v.as_object_mut().unwrap();
                v.remove("deletion_date");
                v.remove("deletion_daemon_clock");
            }),
        ];
        for f in edits {
            let edited = edit(&text, f);
            assert!(
                matches!(decode(&edited, &key()), Err(RecordError::BadMac { .. })),
                "{}",
                String::from_utf8_lossy(&edited)
            );
        }
    }

    #[test]
    fn format_3_fields_that_contradict_the_format_the_state_or_a_limit_are_refused_even_when_authenticated()
     {
        let v3 = encode(&lifecycle_material(), 3, &key()).unwrap();
        let aes = encode(&material(), 3, &key()).unwrap();
        let typed = encode(&signing_material(), 3, &key()).unwrap();
        let cases: Vec<(&[u8], JsonEdit, &str)> = vec![
            (
                &aes,
                Box::new(|v| v["tags"] = serde_json::json!({"env": "prod"})),
                "in format 1 but has tags, which only format 3 has",
            ),
            (
                &typed,
                Box::new(|v| v["description"] = "x".into()),
                "in format 2 but has a description",
            ),
            (
                &typed,
                Box::new(|v| v["rotation_period"] = 3600.into()),
                "in format 2 but has a rotation_period",
            ),
            (
                &aes,
                Box::new(|v| v["state"] = "pending-deletion".into()),
                "in format 1 but has the state pending-deletion",
            ),
            (
                &v3,
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("type");
                }),
                "in format 3 but names no key type",
            ),
            (
                &v3,
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("deletion_daemon_clock");
                }),
                "one of deletion_date and deletion_daemon_clock without the other",
            ),
            (
                &v3,
                Box::new(|v| {
                    let v = v.as_object_mut().unwrap();
                    v.remove("deletion_date");
                    v.remove("deletion_daemon_clock");
                }),
                "pending deletion but has no deletion date",
            ),
            (
                &v3,
                Box::new(|v| v["state"] = "enabled".into()),
                "has a deletion date but is enabled",
            ),
            (
                &v3,
                Box::new(|v| v["description"] = "two\nlines".into()),
                "control character",
            ),
            (
                &v3,
                Box::new(|v| v["tags"]["not a name"] = "x".into()),
                "1 to 64",
            ),
            (
                &v3,
                Box::new(|v| {
                    v["tags"] = (0..=agent_proto::MAX_TAGS)
                        .map(|i| (format!("t{i}"), serde_json::Value::from("")))
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                }),
                "at most 32 tags",
            ),
            (
                &v3,
                Box::new(|v| v["rotation_period"] = 59.into()),
                "minimum of 1h",
            ),
        ];
        for (text, f, expected) in cases {
            let err = decode(&resigned(text, f), &key()).unwrap_err();
            assert!(
                matches!(err, RecordError::Invalid { .. }),
                "{expected}: {err}"
            );
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        // And the writer refuses material that breaks the same rules.
        let mut no_date = lifecycle_material();
        no_date.settings.deletion_due = None;
        let mut date_but_enabled = lifecycle_material();
        date_but_enabled.state = KeyState::Enabled;
        let mut long = material();
        long.settings.description = "d".repeat(agent_proto::MAX_DESCRIPTION_BYTES + 1);
        for material in [no_date, date_but_enabled, long] {
            assert!(matches!(
                encode(&material, 1, &key()),
                Err(RecordError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn same_material_sees_every_field_of_format_3() {
        let base = lifecycle_material();
        let edits: Vec<MaterialEdit> = vec![
            Box::new(|m| m.settings.description.push('!')),
            Box::new(|m| {
                m.settings.tags.insert("new".into(), "x".into());
            }),
            Box::new(|m| m.settings.rotation_period = None),
            Box::new(|m| {
                m.settings.deletion_due = Some(DeletionDue {
                    wall: 1_800_000_001,
                    elapsed: 2_592_000,
                })
            }),
        ];
        for f in edits {
            let mut m = base.clone();
            f(&mut m);
            assert!(!same_material(&m, &base));
        }
    }
}
