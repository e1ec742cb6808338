//! Opening a backup: the bundle identity put together from the custodians'
//! identities or shares, then the MANIFEST and every key record verified
//! under it, into the keys' material. Nothing here touches the host: a
//! wrong custodian, a tampered, planted or stale file, or a missing record
//! stops the restore before the state dir is opened.
//!
//! The formats are the recovery directory's (`crate::recovery`): the
//! MANIFEST is read unverified first, only to learn the bundle recipient,
//! the custodians and the threshold; once the bundle identity is rebuilt
//! (and checked against that recipient) the MANIFEST's MAC is verified,
//! then each `keys/<id>.age` is decrypted and its record's MAC verified.

use std::collections::BTreeMap;

use crate::envelope::KeyId;
use crate::keystore::KeyMaterial;
use crate::recovery::agefile::{self, AgeError};
use crate::recovery::escrow::{self, BundleIdentity, EscrowError, EscrowFile, Share};
use crate::recovery::manifest::{Manifest, ManifestError, UnverifiedManifest};
use crate::recovery::record::{self, MAX_RECORD_LEN, RecordError};

use super::backup::{Backup, CUSTODIANS, KEYS, MANIFEST};

/// The largest share or escrowed identity text (a share is about 200 bytes).
const MAX_ESCROW_TEXT: usize = 4096;

/// A backup opened: every key's material, and who opened it.
#[derive(Debug)]
pub struct Opened {
    /// Every key of the backup, verified, sorted by id.
    pub keys: Vec<KeyMaterial>,
    /// The fingerprint of the bundle identity's recipient.
    pub bundle_fingerprint: String,
    /// The fingerprints of the custodians whose identities or shares took
    /// part, in custodian order.
    pub custodians: Vec<String>,
}

/// An identity file or a share file, as read, with a name for messages.
pub struct CustodianInput<'a> {
    /// Its path, for messages.
    pub name: String,
    /// Its contents.
    pub bytes: &'a [u8],
}

/// Why a backup could not be opened. Nothing was imported.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The MANIFEST cannot be read or does not verify.
    #[error("backup {origin}: {source}; restore changed nothing")]
    Manifest {
        /// The backup.
        origin: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// An identity file is not an age identity file.
    #[error(
        "identity file {file}: {source}; give the custodian's identity file made by age-keygen (or, with --share, the share they decrypted with age -d)"
    )]
    Identity {
        /// The file.
        file: String,
        /// What is wrong.
        source: AgeError,
    },
    /// An identity is not one of the bundle's custodians.
    #[error(
        "identity file {file} holds the identity of {recipient} (fingerprint {fingerprint}), which is none of the custodians of this backup; the bundle needs {threshold} of these recipients: {expected}. Restore changed nothing"
    )]
    NotACustodian {
        /// The file.
        file: String,
        /// The identity's recipient.
        recipient: String,
        /// Its fingerprint.
        fingerprint: String,
        /// How many custodians must join.
        threshold: u32,
        /// The bundle's custodians, with fingerprints.
        expected: String,
    },
    /// The bundle identity could not be put together.
    #[error("backup {origin}: {source}. Restore changed nothing")]
    Escrow {
        /// The backup.
        origin: String,
        /// Why, with how many custodians are needed and which.
        source: EscrowError,
    },
    /// A key file does not open under the bundle identity.
    #[error(
        "backup {origin}: {file} does not open under the bundle identity ({source}): it was altered, or planted; restore changed nothing. Restore from an intact copy of the recovery directory"
    )]
    Undecryptable {
        /// The backup.
        origin: String,
        /// The file.
        file: String,
        /// What age said.
        source: AgeError,
    },
    /// A key record does not verify.
    #[error(
        "backup {origin}: {file}: {source}. Restore changed nothing; restore from an intact copy of the recovery directory"
    )]
    Record {
        /// The backup.
        origin: String,
        /// The file.
        file: String,
        /// What is wrong.
        source: RecordError,
    },
    /// A file of `keys/` is not named after a key id, or holds another key.
    #[error("backup {origin}: {file} {problem}; restore changed nothing")]
    Misplaced {
        /// The backup.
        origin: String,
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// A key the MANIFEST lists has no record in the backup.
    #[error(
        "backup {origin}: the MANIFEST lists key {name:?} (id {id}) but {KEYS}/{id}.age is missing: the copy is incomplete, and restoring it would lose that key. Restore changed nothing; take a complete copy of the recovery directory"
    )]
    Missing {
        /// The backup.
        origin: String,
        /// The key id.
        id: String,
        /// The key name.
        name: String,
    },
    /// A record is older than the MANIFEST says it is.
    #[error(
        "backup {origin}: {KEYS}/{id}.age holds revision {found} of key {name:?}, older than revision {listed} the MANIFEST lists: a stale file was mixed into this copy (it may still hold versions revoked since). Restore changed nothing; take a consistent copy (hostkms backup) of the recovery directory"
    )]
    Stale {
        /// The backup.
        origin: String,
        /// The key id.
        id: String,
        /// The key name.
        name: String,
        /// The record's revision.
        found: u64,
        /// The MANIFEST's revision.
        listed: u64,
    },
}

/// Puts the bundle identity of `backup` together from `identities` (age
/// identity files) and `shares` (shares, or at threshold 1 the identity
/// text, that custodians decrypted with `age -d`), then verifies and reads
/// every key.
pub fn open(
    backup: &Backup,
    identities: &[CustodianInput<'_>],
    shares: &[CustodianInput<'_>],
) -> Result<Opened, OpenError> {
    let origin = backup.origin.display().to_string();
    let manifest_error = |source| OpenError::Manifest {
        origin: origin.clone(),
        source,
    };
    let unverified = UnverifiedManifest::parse(backup.file(MANIFEST).unwrap_or_default())
        .map_err(manifest_error)?;
    let (bundle, custodians) =
        rebuild_bundle(&origin, backup, unverified.claimed(), identities, shares)?;
    let manifest = unverified
        .verify(&bundle.manifest_mac_key())
        .map_err(manifest_error)?;
    let keys = read_keys(&origin, backup, &bundle, &manifest)?;
    Ok(Opened {
        keys,
        bundle_fingerprint: agefile::fingerprint(bundle.recipient()),
        custodians,
    })
}

/// The bundle identity, and the fingerprints of the custodians who took
/// part. `claimed` is the MANIFEST as yet unverified: the bundle rebuilt
/// must be the one it names, and the MANIFEST is verified under it after.
fn rebuild_bundle(
    origin: &str,
    backup: &Backup,
    claimed: &Manifest,
    identities: &[CustodianInput<'_>],
    shares: &[CustodianInput<'_>],
) -> Result<(BundleIdentity, Vec<String>), OpenError> {
    let recipients = claimed.recipients();
    let expected = || {
        claimed
            .custodians
            .iter()
            .map(|c| format!("{} (fingerprint {})", c.recipient, c.fingerprint))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let escrow_error = |source| OpenError::Escrow {
        origin: origin.to_string(),
        source,
    };
    // Which custodians took part, by index (from 1).
    let mut joined = std::collections::BTreeSet::new();
    let mut ages = Vec::new();
    for input in identities {
        let identity_error = |source| OpenError::Identity {
            file: input.name.clone(),
            source,
        };
        let text =
            std::str::from_utf8(input.bytes).map_err(|_| identity_error(AgeError::BadIdentity))?;
        for identity in agefile::parse_identity_file(text).map_err(identity_error)? {
            let recipient = identity.to_public().to_string();
            let Some(custodian) = claimed.custodians.iter().find(|c| c.recipient == recipient)
            else {
                return Err(OpenError::NotACustodian {
                    file: input.name.clone(),
                    fingerprint: agefile::fingerprint(&recipient),
                    recipient,
                    threshold: claimed.threshold,
                    expected: expected(),
                });
            };
            joined.insert(custodian.index);
            ages.push(identity);
        }
    }
    let files: Vec<EscrowFile> = backup
        .files_in(CUSTODIANS)
        .map(|(name, contents)| EscrowFile {
            name: name.to_string(),
            contents: contents.to_vec(),
        })
        .collect();
    let bundle = if claimed.threshold <= 1 {
        // A share at threshold 1 is custodians/identity.age decrypted: the
        // bundle identity's own text.
        match shares.first() {
            Some(input) => {
                let text = std::str::from_utf8(input.bytes).map_err(|_| {
                    escrow_error(EscrowError::BadShare {
                        which: input.name.clone(),
                        detail: "is not text".to_string(),
                    })
                })?;
                let bundle = BundleIdentity::from_text(text.trim()).map_err(|_| {
                    escrow_error(EscrowError::BadShare {
                        which: input.name.clone(),
                        detail: format!(
                            "is not the bundle identity (AGE-SECRET-KEY-1…): at threshold 1 a share is custodians/{} decrypted with age -d",
                            escrow::IDENTITY_FILE
                        ),
                    })
                })?;
                if bundle.recipient() != claimed.bundle_recipient {
                    return Err(escrow_error(EscrowError::WrongBundle {
                        got: bundle.recipient().to_string(),
                        expected: claimed.bundle_recipient.clone(),
                    }));
                }
                bundle
            }
            None => {
                escrow::recover_bundle(&ages, &files, 1, &claimed.bundle_recipient, &recipients)
                    .map_err(escrow_error)?
            }
        }
    } else {
        let mut parsed = Vec::new();
        for file in &files {
            if let Ok(text) = agefile::decrypt(&ages, &file.contents, MAX_ESCROW_TEXT) {
                let text = std::str::from_utf8(&text).map_err(|_| {
                    escrow_error(EscrowError::BadShare {
                        which: file.name.clone(),
                        detail: "is not text".to_string(),
                    })
                })?;
                parsed.push(Share::parse(text, &file.name).map_err(escrow_error)?);
            }
        }
        for input in shares {
            let text = std::str::from_utf8(input.bytes).map_err(|_| {
                escrow_error(EscrowError::BadShare {
                    which: input.name.clone(),
                    detail: "is not text (give the plaintext age -d printed)".to_string(),
                })
            })?;
            let share = Share::parse(text, &input.name).map_err(escrow_error)?;
            joined.insert(share.index);
            parsed.push(share);
        }
        escrow::combine_shares(
            &parsed,
            claimed.threshold,
            &claimed.bundle_recipient,
            &recipients,
        )
        .map_err(escrow_error)?
    };
    let fingerprints = claimed
        .custodians
        .iter()
        .filter(|c| joined.contains(&c.index))
        .map(|c| c.fingerprint.clone())
        .collect();
    Ok((bundle, fingerprints))
}

/// Every key record of `backup`, decrypted and verified under `bundle`, and
/// checked against `manifest`: none missing, none older than listed.
fn read_keys(
    origin: &str,
    backup: &Backup,
    bundle: &BundleIdentity,
    manifest: &Manifest,
) -> Result<Vec<KeyMaterial>, OpenError> {
    let mac = bundle.record_mac_key();
    let mut records: BTreeMap<String, (KeyMaterial, u64)> = BTreeMap::new();
    for (name, contents) in backup.files_in(KEYS) {
        let file = format!("{KEYS}/{name}");
        let misplaced = |problem: String| OpenError::Misplaced {
            origin: origin.to_string(),
            file: file.clone(),
            problem,
        };
        let Some(id) = name
            .strip_suffix(".age")
            .filter(|id| parse_id(id).is_some())
        else {
            return Err(misplaced(
                "is not named <key id in 32 lower-case hex>.age, as every key record is"
                    .to_string(),
            ));
        };
        let plaintext = agefile::decrypt(
            std::slice::from_ref(bundle.age_identity()),
            contents,
            MAX_RECORD_LEN,
        )
        .map_err(|source| OpenError::Undecryptable {
            origin: origin.to_string(),
            file: file.clone(),
            source,
        })?;
        let read = record::decode(&plaintext, &mac).map_err(|source| OpenError::Record {
            origin: origin.to_string(),
            file: file.clone(),
            source,
        })?;
        if read.material.id.to_string() != id {
            return Err(misplaced(format!(
                "holds the record of key {:?} (id {}), another key",
                read.material.name, read.material.id
            )));
        }
        records.insert(id.to_string(), (read.material, read.revision));
    }
    for listed in &manifest.keys {
        let Some((material, revision)) = records.get(&listed.id) else {
            return Err(OpenError::Missing {
                origin: origin.to_string(),
                id: listed.id.clone(),
                name: listed.name.clone(),
            });
        };
        if *revision < listed.revision {
            return Err(OpenError::Stale {
                origin: origin.to_string(),
                id: listed.id.clone(),
                name: material.name.clone(),
                found: *revision,
                listed: listed.revision,
            });
        }
    }
    // A record the MANIFEST does not list yet authenticated under the
    // bundle: a key made after the MANIFEST was copied. It is newer, so it
    // is restored too.
    Ok(records
        .into_values()
        .map(|(material, _)| material)
        .collect())
}

/// A key id from its 32 lower-case hex digits.
fn parse_id(text: &str) -> Option<KeyId> {
    if text.len() != 32
        || text
            .bytes()
            .any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(KeyId(id))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use age::secrecy::ExposeSecret;
    use age::x25519::Identity;

    use super::*;
    use crate::keystore::{KeyStore, TestEntropy};
    use crate::recovery::manifest::{Manifest, ManifestKey};
    use crate::recovery::record::MacKey;
    use crate::rootkey::RootKey;
    use crate::state_dir::StateDir;

    /// A recovery directory as the recovery writer lays it out, in memory:
    /// the custodians' identities, the bundle, and the keys written.
    struct Written {
        custodians: Vec<Identity>,
        bundle: BundleIdentity,
        backup: Backup,
        keys: Vec<KeyMaterial>,
    }

    fn keys() -> Vec<KeyMaterial> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        let store = KeyStore::open(
            &dir,
            &RootKey::from_bytes_for_tests([5; 32]),
            Arc::new(TestEntropy::new()),
            crate::clock::Clock::system(),
        )
        .unwrap();
        for name in ["db", "files"] {
            store.create(name).unwrap();
        }
        store.rotate("db").unwrap();
        store.revoke("db", Some(1)).unwrap();
        store.set_enabled("files", false).unwrap();
        store.with_all_material(|keys| keys.to_vec()).unwrap()
    }

    fn record_file(bundle: &BundleIdentity, material: &KeyMaterial, revision: u64) -> Vec<u8> {
        let text = record::encode(material, revision, &bundle.record_mac_key()).unwrap();
        agefile::encrypt(&[bundle.age_recipient()], &text).unwrap()
    }

    fn write(custodians: usize, threshold: u32, revision: u64) -> Written {
        let ids: Vec<Identity> = (0..custodians).map(|_| Identity::generate()).collect();
        let recipients: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        let bundle = BundleIdentity::generate().unwrap();
        let keys = keys();
        let mut backup = Backup::default();
        for file in escrow::escrow(&bundle, &recipients, threshold).unwrap() {
            backup
                .files
                .insert(format!("{CUSTODIANS}/{}", file.name), file.contents);
        }
        let mut listed = Vec::new();
        for material in &keys {
            backup.files.insert(
                format!("{KEYS}/{}.age", material.id),
                record_file(&bundle, material, revision),
            );
            listed.push(ManifestKey::of(material, revision));
        }
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        let manifest = Manifest {
            bundle_recipient: bundle.recipient().to_string(),
            threshold,
            custodians: Manifest::custodians_of(&recipients),
            keys: listed,
        };
        backup.files.insert(
            MANIFEST.to_string(),
            manifest.encode(&bundle.manifest_mac_key()).unwrap(),
        );
        Written {
            custodians: ids,
            bundle,
            backup,
            keys,
        }
    }

    fn identity_text(identity: &Identity) -> Vec<u8> {
        format!("# a custodian\n{}\n", identity.to_string().expose_secret()).into_bytes()
    }

    fn input<'a>(name: &str, bytes: &'a [u8]) -> CustodianInput<'a> {
        CustodianInput {
            name: name.to_string(),
            bytes,
        }
    }

    fn share_of(written: &Written, n: usize) -> Vec<u8> {
        let file = written
            .backup
            .file(&format!("{CUSTODIANS}/{}", escrow::share_file_name(n)))
            .unwrap();
        agefile::decrypt(&written.custodians[n - 1..n], file, 4096)
            .unwrap()
            .to_vec()
    }

    fn copy(backup: &Backup) -> Backup {
        Backup {
            files: backup.files.clone(),
            ..Backup::default()
        }
    }

    fn same(a: &[KeyMaterial], b: &[KeyMaterial]) -> bool {
        a.len() == b.len()
            && a.iter()
                .all(|x| b.iter().any(|y| record::same_material(x, y)))
    }

    #[test]
    fn k_identities_shares_or_a_mix_open_a_2_of_3_backup() {
        let written = write(3, 2, 1);
        let one = identity_text(&written.custodians[0]);
        let three = identity_text(&written.custodians[2]);
        let share_two = share_of(&written, 2);
        let share_three = share_of(&written, 3);
        for (identities, shares, joined) in [
            (vec![input("1", &one), input("3", &three)], vec![], [0, 2]),
            (
                vec![],
                vec![input("s2", &share_two), input("s3", &share_three)],
                [1, 2],
            ),
            (
                vec![input("1", &one)],
                vec![input("s3", &share_three)],
                [0, 2],
            ),
        ] {
            let opened = open(&written.backup, &identities, &shares).unwrap();
            assert!(same(&opened.keys, &written.keys));
            assert_eq!(
                opened.bundle_fingerprint,
                agefile::fingerprint(written.bundle.recipient())
            );
            let expected: Vec<String> = joined
                .iter()
                .map(|&i| agefile::fingerprint(&written.custodians[i].to_public().to_string()))
                .collect();
            assert_eq!(opened.custodians, expected);
        }
    }

    #[test]
    fn too_few_or_foreign_custodians_are_refused_naming_the_ones_needed() {
        let written = write(3, 2, 1);
        let one = identity_text(&written.custodians[0]);
        let share_one = share_of(&written, 1);
        let fingerprints: Vec<String> = written
            .custodians
            .iter()
            .map(|c| agefile::fingerprint(&c.to_public().to_string()))
            .collect();
        for (identities, shares) in [
            (vec![input("1", &one)], vec![]),
            (vec![], vec![input("s1", &share_one)]),
            (vec![input("1", &one)], vec![input("s1", &share_one)]),
            (vec![], vec![]),
        ] {
            let err = open(&written.backup, &identities, &shares).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("of the 2 custodians needed"), "{message}");
            for fingerprint in &fingerprints {
                assert!(message.contains(fingerprint.as_str()), "{message}");
            }
        }
        let stranger = Identity::generate();
        let text = identity_text(&stranger);
        let err = open(&written.backup, &[input("1", &one), input("x", &text)], &[]).unwrap_err();
        assert!(matches!(err, OpenError::NotACustodian { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&agefile::fingerprint(&stranger.to_public().to_string())),
            "{err}"
        );
        let other = write(3, 2, 1);
        let foreign = share_of(&other, 2);
        let err = open(
            &written.backup,
            &[input("1", &one)],
            &[input("f", &foreign)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("belongs to bundle"), "{err}");
    }

    #[test]
    fn threshold_one_opens_with_one_identity_or_the_decrypted_identity_file() {
        let written = write(2, 1, 1);
        let two = identity_text(&written.custodians[1]);
        let opened = open(&written.backup, &[input("2", &two)], &[]).unwrap();
        assert!(same(&opened.keys, &written.keys));
        let decrypted = agefile::decrypt(
            &written.custodians[0..1],
            written.backup.file("custodians/identity.age").unwrap(),
            4096,
        )
        .unwrap();
        let opened = open(&written.backup, &[], &[input("bundle.key", &decrypted)]).unwrap();
        assert!(same(&opened.keys, &written.keys));
        let err = open(&written.backup, &[], &[]).unwrap_err();
        assert!(
            err.to_string().contains("of the 1 custodians needed"),
            "{err}"
        );
    }

    #[test]
    fn a_tampered_manifest_or_record_is_refused() {
        let one = |w: &Written| identity_text(&w.custodians[0]);
        // A MANIFEST edited after it was written: the disabled key enabled.
        let mut written = write(1, 1, 1);
        let mut text = String::from_utf8(written.backup.files[MANIFEST].clone()).unwrap();
        assert!(text.contains("\"state\":\"disabled\""), "{text}");
        text = text.replace("\"state\":\"disabled\"", "\"state\":\"enabled\"");
        written
            .backup
            .files
            .insert(MANIFEST.to_string(), text.into_bytes());
        let identity = one(&written);
        let err = open(&written.backup, &[input("1", &identity)], &[]).unwrap_err();
        assert!(matches!(err, OpenError::Manifest { .. }), "{err}");
        assert!(err.to_string().contains("does not authenticate"), "{err}");

        // A key file with a flipped byte.
        let mut written = write(1, 1, 1);
        let name = format!("{KEYS}/{}.age", written.keys[0].id);
        let file = written.backup.files.get_mut(&name).unwrap();
        let last = file.len() - 1;
        file[last] ^= 1;
        let identity = one(&written);
        let err = open(&written.backup, &[input("1", &identity)], &[]).unwrap_err();
        assert!(matches!(err, OpenError::Undecryptable { .. }), "{err}");

        // A record planted by someone who knows only the bundle recipient:
        // valid age, valid JSON, a MAC under a key of their own.
        let mut written = write(1, 1, 1);
        let mut planted = written.keys[0].clone();
        planted.min_decryption_version = 1;
        planted.name = "planted".to_string();
        let text = record::encode(&planted, 9, &MacKey::from_bytes([3u8; 32].into())).unwrap();
        let file = agefile::encrypt(&[written.bundle.age_recipient()], &text).unwrap();
        written
            .backup
            .files
            .insert(format!("{KEYS}/{}.age", planted.id), file);
        let identity = one(&written);
        let err = open(&written.backup, &[input("1", &identity)], &[]).unwrap_err();
        assert!(matches!(err, OpenError::Record { .. }), "{err}");
        assert!(err.to_string().contains("does not authenticate"), "{err}");
    }

    #[test]
    fn a_stale_missing_or_misplaced_record_is_refused_and_a_newer_one_accepted() {
        let written = write(1, 1, 5);
        let identity = identity_text(&written.custodians[0]);
        let name = format!("{KEYS}/{}.age", written.keys[0].id);

        let mut stale = copy(&written.backup);
        stale.files.insert(
            name.clone(),
            record_file(&written.bundle, &written.keys[0], 4),
        );
        let err = open(&stale, &[input("1", &identity)], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::Stale {
                    found: 4,
                    listed: 5,
                    ..
                }
            ),
            "{err}"
        );

        let mut newer = copy(&written.backup);
        newer.files.insert(
            name.clone(),
            record_file(&written.bundle, &written.keys[0], 6),
        );
        assert!(open(&newer, &[input("1", &identity)], &[]).is_ok());

        let mut missing = copy(&written.backup);
        missing.files.remove(&name);
        let err = open(&missing, &[input("1", &identity)], &[]).unwrap_err();
        assert!(matches!(err, OpenError::Missing { .. }), "{err}");

        let mut swapped = copy(&written.backup);
        let other = format!("{KEYS}/{}.age", written.keys[1].id);
        let first = swapped.files[&name].clone();
        swapped.files.insert(other, first);
        let err = open(&swapped, &[input("1", &identity)], &[]).unwrap_err();
        assert!(matches!(err, OpenError::Misplaced { .. }), "{err}");
    }
}
