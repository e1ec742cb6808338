//! The export file: an age file to the destination's transport key whose
//! plaintext is a short header (format, source and destination transport
//! keys) and the key record, MACed under the two hosts' X25519 agreement.
//! See the module docs of [`crate::transfer`] for the layout and why.

use std::io::{Read, Write};

use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{Peer, Peers, TransportKey, fingerprint};
use crate::keystore::KeyMaterial;
use crate::recovery::record::{self, MAX_RECORD_LEN, MacKey, RecordError};

/// The first line of the plaintext: the format and its version.
const MAGIC: &str = "hostkms-transfer 1";
/// HKDF salt of the MAC key.
const SALT: &[u8] = b"hostkms transfer v1";
/// The record's revision in an export file (revisions count the writes of
/// the recovery directory's records; an export is one write).
const EXPORT_REVISION: u64 = 1;

/// Why an export file was refused. Never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be made (the record or age refused: not expected).
    #[error("cannot write the export file: {0}")]
    Encrypt(String),
    /// The file is not an age file, or is cut short.
    #[error(
        "the file is not a hostkms export file (not a whole age file: {0}); copy it again from the exporting host"
    )]
    NotAgeFile(String),
    /// The file is an age file, but not to this host's transport key.
    #[error(
        "the file is not encrypted to this host's transport key (fingerprint {fingerprint}); export it again on the source host with --to a [[transfer]] destination whose transport_key is this host's ({recipient})"
    )]
    NotForThisHost {
        /// This host's transport key.
        recipient: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// The file decrypts but its content is damaged or was altered.
    #[error(
        "the export file fails authentication ({0}): it was altered, damaged, or not made by the pinned peer's hostkms; do not import it, export the key again"
    )]
    Tampered(String),
    /// The file is of a newer format than this daemon reads.
    #[error(
        "the export file's format is {0:?}, which this hostkmsd does not read (it reads \"{MAGIC}\"); upgrade hostkmsd on this host"
    )]
    UnsupportedFormat(String),
    /// The file comes from a host no `[[transfer]]` table pins.
    #[error(
        "the export file comes from transport key {source_key} (fingerprint {fingerprint}), which no [[transfer]] table of this host's config pins; if that host is trusted, add a [[transfer]] table with its transport_key and key globs, and reload (systemctl reload hostkms)"
    )]
    UnknownSource {
        /// The source's transport key, as the file names it.
        source_key: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// The record authenticates but cannot be used (a newer record format,
    /// inconsistent material).
    #[error("the export file's key record cannot be used: {0}")]
    Record(RecordError),
}

/// An export file that opened: who sent it and the key it carries.
pub struct ExportFile {
    /// The pinned peer whose transport key made the file.
    pub source: Peer,
    /// The key, authenticated.
    pub material: KeyMaterial,
}

impl std::fmt::Debug for ExportFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportFile")
            .field("source", &self.source.name())
            .field("material", &self.material)
            .finish()
    }
}

/// The export file carrying `material` from this host (`transport`) to
/// `destination`: age-encrypted to its transport key, the record MACed
/// under the two hosts' X25519 agreement.
pub fn seal(
    transport: &TransportKey,
    destination: &Peer,
    material: &KeyMaterial,
) -> Result<Vec<u8>, FileError> {
    let header = header(transport.recipient(), destination.transport_key());
    let key = mac_key(
        transport,
        destination.transport_key(),
        transport.recipient(),
        destination.transport_key(),
    )
    .map_err(FileError::Encrypt)?;
    let record = record::encode(material, EXPORT_REVISION, &key)
        .map_err(|e| FileError::Encrypt(e.to_string()))?;
    let mut plaintext = Zeroizing::new(Vec::with_capacity(header.len() + record.len() + 1));
    plaintext.extend_from_slice(header.as_bytes());
    plaintext.push(b'\n');
    plaintext.extend_from_slice(&record);
    let recipient: &dyn age::Recipient = destination.recipient();
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient))
        .map_err(|e| FileError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| FileError::Encrypt(e.to_string()))?;
    writer
        .write_all(&plaintext)
        .and_then(|()| writer.finish().map(drop))
        .map_err(|e| FileError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Opens an export file made for this host (`transport`) by one of the
/// pinned `peers`, and reads its record under their MAC key.
pub fn open(transport: &TransportKey, peers: &Peers, file: &[u8]) -> Result<ExportFile, FileError> {
    let decryptor =
        age::Decryptor::new_buffered(file).map_err(|e| FileError::NotAgeFile(e.to_string()))?;
    let identity: &dyn age::Identity = transport.identity();
    let reader = decryptor
        .decrypt(std::iter::once(identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => FileError::NotForThisHost {
                recipient: transport.recipient().to_string(),
                fingerprint: transport.fingerprint().to_string(),
            },
            age::DecryptError::InvalidHeader
            | age::DecryptError::UnknownFormat
            | age::DecryptError::Io(_) => FileError::NotAgeFile(e.to_string()),
            other => FileError::Tampered(other.to_string()),
        })?;
    // The plaintext is never longer than the file, nor than a record and
    // its header.
    let bound = file.len().min(MAX_RECORD_LEN + 1024);
    let mut plaintext = Zeroizing::new(Vec::with_capacity(bound));
    reader
        .take(bound as u64)
        .read_to_end(&mut plaintext)
        .map_err(|e| FileError::Tampered(format!("the age payload does not decrypt: {e}")))?;
    let split =
        find(&plaintext, b"\n\n").ok_or_else(|| FileError::Tampered("no header".to_string()))?;
    let (head, text) = (&plaintext[..split + 1], &plaintext[split + 2..]);
    let head = std::str::from_utf8(head)
        .map_err(|_| FileError::Tampered("the header is not text".to_string()))?;
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    if first != MAGIC {
        if first.starts_with("hostkms-transfer ") {
            return Err(FileError::UnsupportedFormat(
                first.chars().take(40).collect(),
            ));
        }
        return Err(FileError::Tampered("not a hostkms export".to_string()));
    }
    let field = |line: Option<&str>, name: &str| {
        line.and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .map(str::to_string)
            .ok_or_else(|| FileError::Tampered(format!("no {name} line")))
    };
    let source_key = field(lines.next(), "source")?;
    let destination = field(lines.next(), "destination")?;
    if lines.next().is_some() {
        return Err(FileError::Tampered("unknown header lines".to_string()));
    }
    if destination != transport.recipient() {
        return Err(FileError::Tampered(
            "it names another destination than this host's transport key".to_string(),
        ));
    }
    let Some(source) = peers.by_transport_key(&source_key) else {
        return Err(FileError::UnknownSource {
            fingerprint: fingerprint(&source_key),
            source_key: source_key.chars().take(100).collect(),
        });
    };
    let key = mac_key(
        transport,
        source.transport_key(),
        source.transport_key(),
        transport.recipient(),
    )
    .map_err(FileError::Tampered)?;
    let record = record::decode(text, &key).map_err(|e| match e {
        RecordError::BadMac { .. } => FileError::Tampered(format!(
            "its key record does not verify under the transport key of peer \"{}\"",
            source.name()
        )),
        RecordError::Malformed { .. } | RecordError::TooLarge { .. } => {
            FileError::Tampered(e.to_string())
        }
        other => FileError::Record(other),
    })?;
    Ok(ExportFile {
        source: source.clone(),
        material: record.material,
    })
}

/// The header lines.
fn header(source: &str, destination: &str) -> String {
    format!("{MAGIC}\nsource {source}\ndestination {destination}\n")
}

/// HKDF-SHA256(X25519(ours, theirs), salt, "source ‖ destination"): the
/// MAC key both ends of a transfer derive.
fn mac_key(
    ours: &TransportKey,
    theirs: &str,
    source: &str,
    destination: &str,
) -> Result<MacKey, String> {
    let public = raw_recipient(theirs)?;
    let secret = StaticSecret::from(*ours.secret());
    let shared = secret.diffie_hellman(&PublicKey::from(public));
    if !shared.was_contributory() {
        return Err("the peer's transport key is a low-order point".to_string());
    }
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), shared.as_bytes());
    let info = format!("source {source} destination {destination}");
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(info.as_bytes(), key.as_mut())
        .map_err(|_| "HKDF refused 32 bytes".to_string())?;
    Ok(MacKey::from_bytes(key))
}

/// The 32 bytes of an `age1…` recipient.
fn raw_recipient(recipient: &str) -> Result<[u8; 32], String> {
    let (hrp, bytes) =
        bech32::decode(recipient).map_err(|e| format!("a malformed transport key: {e}"))?;
    if hrp.as_str() != "age" {
        return Err("a transport key that is not an age recipient".to_string());
    }
    bytes
        .try_into()
        .map_err(|_| "a transport key of the wrong length".to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::KeyId;
    use crate::keystore::VersionMaterial;
    use crate::transfer::PeerConfig;
    use agent_proto::KeyState;

    fn pin(name: &str, key: &TransportKey) -> Peers {
        Peers::new(&[PeerConfig {
            name: name.to_string(),
            transport_key: key.recipient().to_string(),
            keys: vec!["app-*".to_string()],
        }])
        .unwrap()
    }

    fn hosts() -> (TransportKey, TransportKey) {
        (
            TransportKey::generate().unwrap().0,
            TransportKey::generate().unwrap().0,
        )
    }

    fn material(kek: u8) -> KeyMaterial {
        KeyMaterial {
            id: KeyId([9; 16]),
            name: "app-db".to_string(),
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
                    kek: Some(Zeroizing::new([kek; 32])),
                    public_key: None,
                },
            ],
            key_type: agent_proto::KeyType::Aes256Gcm,
        }
    }

    #[test]
    fn a_file_from_a_pinned_source_opens_on_its_destination() {
        let (a, b) = hosts();
        let file = seal(&a, pin("b", &b).by_name("b").unwrap(), &material(7)).unwrap();
        let opened = open(&b, &pin("a", &a), &file).unwrap();
        assert_eq!(opened.source.name(), "a");
        assert_eq!(opened.material.name, "app-db");
        assert!(opened.material.versions[0].kek.is_none());
        assert_eq!(opened.material.versions[1].kek.as_deref(), Some(&[7u8; 32]));
        assert!(find(&file, b"app-db").is_none(), "nothing in clear");
    }

    #[test]
    fn a_file_for_another_host_is_refused_naming_this_hosts_key() {
        let (a, b) = hosts();
        let c = TransportKey::generate().unwrap().0;
        let file = seal(&a, pin("b", &b).by_name("b").unwrap(), &material(1)).unwrap();
        let err = open(&c, &pin("a", &a), &file).unwrap_err();
        assert!(matches!(err, FileError::NotForThisHost { .. }), "{err}");
        assert!(err.to_string().contains(c.fingerprint()), "{err}");
    }

    #[test]
    fn a_file_from_an_unpinned_source_is_refused() {
        let (a, b) = hosts();
        let c = TransportKey::generate().unwrap().0;
        let file = seal(&c, pin("b", &b).by_name("b").unwrap(), &material(1)).unwrap();
        let err = open(&b, &pin("a", &a), &file).unwrap_err();
        assert!(matches!(err, FileError::UnknownSource { .. }), "{err}");
        assert!(err.to_string().contains(c.fingerprint()), "{err}");
    }

    /// Someone who knows only the public transport keys encrypts a file to
    /// B claiming to come from A: the record's MAC does not verify.
    #[test]
    fn a_forged_file_claiming_a_pinned_source_is_refused() {
        let (a, b) = hosts();
        let forger = TransportKey::generate().unwrap().0;
        let key = mac_key(&forger, b.recipient(), a.recipient(), b.recipient()).unwrap();
        let record = record::encode(&material(3), 1, &key).unwrap();
        let mut text = header(a.recipient(), b.recipient()).into_bytes();
        text.push(b'\n');
        text.extend_from_slice(&record);
        let to_b = pin("b", &b);
        let file = age::encrypt(to_b.by_name("b").unwrap().recipient(), &text).unwrap();
        let err = open(&b, &pin("a", &a), &file).unwrap_err();
        assert!(matches!(err, FileError::Tampered(_)), "{err}");
    }

    #[test]
    fn a_flipped_bit_or_a_cut_file_is_refused() {
        let (a, b) = hosts();
        let file = seal(&a, pin("b", &b).by_name("b").unwrap(), &material(5)).unwrap();
        let peers = pin("a", &a);
        for at in [10, file.len() / 2, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert!(open(&b, &peers, &bad).is_err(), "bit {at}");
        }
        for len in [0, 5, file.len() / 2, file.len() - 1] {
            assert!(open(&b, &peers, &file[..len]).is_err(), "cut at {len}");
        }
        assert!(open(&b, &peers, b"not a file").is_err());
    }

    /// A → B and B → A derive different MAC keys: a file cannot be
    /// reflected; both ends of A → B derive the same one.
    #[test]
    fn the_direction_is_bound() {
        let (a, b) = hosts();
        let tag = |key: MacKey| key.tag_hex(b"x");
        let ab = tag(mac_key(&a, b.recipient(), a.recipient(), b.recipient()).unwrap());
        let ba = tag(mac_key(&a, b.recipient(), b.recipient(), a.recipient()).unwrap());
        let ab_on_b = tag(mac_key(&b, a.recipient(), a.recipient(), b.recipient()).unwrap());
        assert_eq!(ab, ab_on_b);
        assert_ne!(ab, ba);
    }

    #[test]
    fn a_key_with_metadata_travels_in_format_3_and_a_plain_key_stays_in_format_1() {
        let (a, b) = hosts();
        let destination = pin("b", &b);
        let destination = destination.by_name("b").unwrap();
        let mut described = material(4);
        described.settings.description = "orders".to_string();
        described.settings.tags.insert("env".into(), "prod".into());
        described.settings.rotation_period = Some(86_400);
        for (material, format) in [(described, 3), (material(5), 1)] {
            let file = seal(&a, destination, &material).unwrap();
            let opened = open(&b, &pin("a", &a), &file).unwrap();
            assert!(record::same_material(&opened.material, &material));
            assert_eq!(opened.material.settings, material.settings);
            assert_eq!(record::format_of(&opened.material), format);
        }
    }
}
