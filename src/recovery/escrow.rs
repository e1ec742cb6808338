//! The bundle identity and its escrow to the custodians.
//!
//! The bundle identity is an age X25519 identity the daemon generates once;
//! every key record is encrypted to its recipient. Its secret lives only
//! sealed in the key store (`SecretName::RecoveryBundle`) and, escrowed, in
//! `custodians/` of the recovery directory:
//!
//! - threshold 1: `custodians/identity.age`, the identity's text
//!   (`AGE-SECRET-KEY-1…` and a newline) age-encrypted to every custodian at
//!   once, so any one of them recovers with
//!   `age -d -i custodian.key custodians/identity.age > bundle.key`;
//! - threshold k > 1: the identity's 32-byte X25519 secret split k-of-n with
//!   Shamir's scheme (the `blahaj` crate, GF(256)); `custodians/<n>.age`
//!   (n = 1 … the number of custodians, in config order) is share n
//!   age-encrypted to custodian n alone. A custodian decrypts theirs on their
//!   own machine (`age -d -i custodian.key custodians/2.age > share-2.txt`)
//!   and hands over that text, which is (format 1, one `name: value` per
//!   line after the first):
//!
//!   ```text
//!   hostkms recovery share v1
//!   bundle-recipient: age1…
//!   threshold: 2
//!   share: 2 of 3
//!   secret: <base64: the share index byte, then 32 bytes>
//!   ```
//!
//! [`recover_bundle`] and [`combine_shares`] are the inverse, for restore:
//! they check that what they rebuild is the bundle the MANIFEST names.

use age::secrecy::ExposeSecret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::{Zeroize, Zeroizing};

use super::agefile::{self, AgeError};
use super::record::MacKey;

/// File name of the escrowed identity with threshold 1, in `custodians/`.
pub const IDENTITY_FILE: &str = "identity.age";

/// First line of a share's text.
pub const SHARE_HEADER: &str = "hostkms recovery share v1";

/// HKDF label of the MANIFEST's MAC key.
pub const MANIFEST_MAC_LABEL: &str = "hostkms recovery manifest mac v1";

/// The largest share or identity text read back.
const MAX_ESCROW_TEXT: usize = 4096;

/// The most custodians Shamir's scheme over GF(256) allows.
pub const MAX_CUSTODIANS: usize = 255;

/// The bundle identity: an age X25519 identity with its secret in zeroizing
/// memory. Debug shows the recipient only.
pub struct BundleIdentity {
    identity: age::x25519::Identity,
    secret: Zeroizing<[u8; 32]>,
    recipient: String,
}

impl std::fmt::Debug for BundleIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleIdentity")
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

/// Why escrow or recovery of the bundle identity failed.
#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    /// An age operation failed.
    #[error(transparent)]
    Age(#[from] AgeError),
    /// The custodians or threshold are unusable.
    #[error("{0}")]
    Config(String),
    /// The sealed bundle identity is not an age identity.
    #[error(
        "the sealed recovery bundle identity is not a valid age X25519 identity; the key store is damaged"
    )]
    BadBundle,
    /// Too few custodians joined.
    #[error(
        "{have} of the {need} custodians needed opened their part of the recovery bundle; the bundle expects {need} of these recipients: {expected}. Supply identities or decrypted shares of more of them"
    )]
    NotEnough {
        /// Distinct parts opened.
        have: usize,
        /// The threshold.
        need: usize,
        /// The bundle's custodians, with their fingerprints.
        expected: String,
    },
    /// What was rebuilt is not the bundle the MANIFEST names.
    #[error(
        "the identity rebuilt from the shares or identities given is {got}, but the bundle's recipient is {expected}: a share is wrong, or belongs to another bundle"
    )]
    WrongBundle {
        /// The recipient rebuilt.
        got: String,
        /// The MANIFEST's bundle recipient.
        expected: String,
    },
    /// A share's text is not format 1.
    #[error("share {which}: {detail}")]
    BadShare {
        /// Which share (by position given).
        which: String,
        /// What is wrong.
        detail: String,
    },
}

impl BundleIdentity {
    /// A new random bundle identity.
    pub fn generate() -> Result<BundleIdentity, EscrowError> {
        let identity = age::x25519::Identity::generate();
        BundleIdentity::from_text(identity.to_string().expose_secret())
    }

    /// From its text, `AGE-SECRET-KEY-1…` (as sealed in the key store).
    pub fn from_text(text: &str) -> Result<BundleIdentity, EscrowError> {
        let identity = agefile::parse_identity(text).map_err(|_| EscrowError::BadBundle)?;
        let (hrp, mut bytes) = bech32::decode(text.trim()).map_err(|_| EscrowError::BadBundle)?;
        let secret = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| EscrowError::BadBundle);
        bytes.zeroize();
        if !hrp.as_str().eq_ignore_ascii_case("AGE-SECRET-KEY-") {
            return Err(EscrowError::BadBundle);
        }
        let recipient = identity.to_public().to_string();
        Ok(BundleIdentity {
            identity,
            secret: Zeroizing::new(secret?),
            recipient,
        })
    }

    /// From its 32-byte X25519 secret (as rebuilt from shares).
    pub fn from_secret(secret: &[u8; 32]) -> Result<BundleIdentity, EscrowError> {
        let hrp = bech32::Hrp::parse("age-secret-key-").map_err(|_| EscrowError::BadBundle)?;
        let text = Zeroizing::new(
            bech32::encode::<bech32::Bech32>(hrp, secret)
                .map_err(|_| EscrowError::BadBundle)?
                .to_uppercase(),
        );
        BundleIdentity::from_text(&text)
    }

    /// Its text, `AGE-SECRET-KEY-1…`, what `age -i` reads.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(self.identity.to_string().expose_secret().to_string())
    }

    /// Its recipient, `age1…`: the key records are encrypted to it.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// The age identity, to decrypt key records.
    pub fn age_identity(&self) -> &age::x25519::Identity {
        &self.identity
    }

    /// The age recipient, to encrypt key records.
    pub fn age_recipient(&self) -> age::x25519::Recipient {
        self.identity.to_public()
    }

    /// The MAC key of the key records.
    pub fn record_mac_key(&self) -> MacKey {
        MacKey::for_records(&self.secret)
    }

    /// The MAC key of the MANIFEST.
    pub fn manifest_mac_key(&self) -> MacKey {
        MacKey::derive(self.secret.as_ref(), MANIFEST_MAC_LABEL)
    }
}

/// One file of `custodians/`: its name and age-encrypted contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowFile {
    /// `identity.age` or `<n>.age`.
    pub name: String,
    /// The age file.
    pub contents: Vec<u8>,
}

/// The name of custodian `n`'s share file (n from 1).
pub fn share_file_name(n: usize) -> String {
    format!("{n}.age")
}

/// Checks a custodian list and threshold: valid X25519 recipients, no
/// duplicates, at most [`MAX_CUSTODIANS`], threshold 1..=len.
pub fn check_custodians(
    recipients: &[String],
    threshold: u32,
) -> Result<Vec<age::x25519::Recipient>, EscrowError> {
    if recipients.is_empty() {
        return Err(EscrowError::Config(
            "no custodian recipients: name at least one age1… recipient".into(),
        ));
    }
    if recipients.len() > MAX_CUSTODIANS {
        return Err(EscrowError::Config(format!(
            "{} custodian recipients, more than the {MAX_CUSTODIANS} Shamir's scheme allows",
            recipients.len()
        )));
    }
    let parsed = recipients
        .iter()
        .map(|r| agefile::parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::BTreeSet::new();
    for (r, p) in recipients.iter().zip(&parsed) {
        if !seen.insert(p.to_string()) {
            return Err(EscrowError::Config(format!(
                "custodian recipient {r:?} is named twice: each custodian once"
            )));
        }
    }
    if threshold == 0 || threshold as usize > recipients.len() {
        return Err(EscrowError::Config(format!(
            "threshold {threshold} must be between 1 and the number of custodian recipients, {}",
            recipients.len()
        )));
    }
    Ok(parsed)
}

/// Escrows `bundle` to `recipients` with `threshold`: the files of
/// `custodians/`.
pub fn escrow(
    bundle: &BundleIdentity,
    recipients: &[String],
    threshold: u32,
) -> Result<Vec<EscrowFile>, EscrowError> {
    let parsed = check_custodians(recipients, threshold)?;
    if threshold == 1 {
        let mut text = bundle.to_text();
        text.push('\n');
        let contents = agefile::encrypt(&parsed, text.as_bytes())?;
        return Ok(vec![EscrowFile {
            name: IDENTITY_FILE.into(),
            contents,
        }]);
    }
    let k = u8::try_from(threshold)
        .map_err(|_| EscrowError::Config(format!("threshold {threshold} is above 255")))?;
    let shares: Vec<blahaj::Share> = blahaj::Sharks(k)
        .dealer(bundle.secret.as_ref())
        .take(parsed.len())
        .collect();
    let mut files = Vec::with_capacity(parsed.len());
    for (index, (recipient, share)) in parsed.iter().zip(&shares).enumerate() {
        let bytes = Zeroizing::new(Vec::from(share));
        let text = Zeroizing::new(format!(
            "{SHARE_HEADER}\nbundle-recipient: {}\nthreshold: {threshold}\nshare: {} of {}\nsecret: {}\n",
            bundle.recipient(),
            index + 1,
            parsed.len(),
            Zeroizing::new(BASE64.encode(bytes.as_slice())).as_str(),
        ));
        files.push(EscrowFile {
            name: share_file_name(index + 1),
            contents: agefile::encrypt(std::slice::from_ref(recipient), text.as_bytes())?,
        });
    }
    Ok(files)
}

/// A share as parsed from its text.
pub struct Share {
    /// The bundle it belongs to.
    pub bundle_recipient: String,
    /// k.
    pub threshold: u32,
    /// Its index, from 1.
    pub index: u32,
    share: blahaj::Share,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("bundle_recipient", &self.bundle_recipient)
            .field("threshold", &self.threshold)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// Parses a share's text (format 1). `which` names it in errors.
    pub fn parse(text: &str, which: &str) -> Result<Share, EscrowError> {
        let bad = |detail: &str| EscrowError::BadShare {
            which: which.to_string(),
            detail: detail.to_string(),
        };
        if text.len() > MAX_ESCROW_TEXT {
            return Err(bad("longer than a share can be"));
        }
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(SHARE_HEADER) {
            return Err(bad(&format!(
                "does not start with {SHARE_HEADER:?}: not a hostkms share (decrypt the custodian's .age file with age -d first)"
            )));
        }
        let (mut recipient, mut threshold, mut index, mut secret) = (None, None, None, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                if line.trim().is_empty() {
                    continue;
                }
                return Err(bad("a line is not `name: value`"));
            };
            let value = value.trim();
            match name.trim() {
                "bundle-recipient" => recipient = Some(value.to_string()),
                "threshold" => threshold = value.parse::<u32>().ok(),
                "share" => {
                    index = value
                        .split_once(" of ")
                        .and_then(|(i, _)| i.trim().parse::<u32>().ok());
                }
                "secret" => {
                    secret = Some(Zeroizing::new(
                        BASE64
                            .decode(value)
                            .map_err(|_| bad("its secret is not base64"))?,
                    ));
                }
                _ => return Err(bad("has an unknown line")),
            }
        }
        let (Some(bundle_recipient), Some(threshold), Some(index), Some(secret)) =
            (recipient, threshold, index, secret)
        else {
            return Err(bad(
                "lacks one of bundle-recipient, threshold, share, secret",
            ));
        };
        if secret.len() != 33 || u32::from(secret[0]) != index || index == 0 {
            return Err(bad("its secret is not share data of a 32-byte identity"));
        }
        let share = blahaj::Share::try_from(secret.as_slice())
            .map_err(|_| bad("its secret is not share data"))?;
        Ok(Share {
            bundle_recipient,
            threshold,
            index,
            share,
        })
    }
}

/// Rebuilds the bundle identity from decrypted shares, checking it is
/// `expected` (the MANIFEST's bundle recipient). `custodians` (recipients in
/// order) are named when too few shares are given.
pub fn combine_shares(
    shares: &[Share],
    threshold: u32,
    expected: &str,
    custodians: &[String],
) -> Result<BundleIdentity, EscrowError> {
    let mut distinct = std::collections::BTreeMap::new();
    for s in shares {
        if s.bundle_recipient != expected {
            return Err(EscrowError::BadShare {
                which: format!("{}", s.index),
                detail: format!(
                    "belongs to bundle {}, not to this backup's bundle {expected}",
                    s.bundle_recipient
                ),
            });
        }
        distinct.insert(s.index, &s.share);
    }
    let need = threshold as usize;
    if distinct.len() < need {
        return Err(not_enough(distinct.len(), need, custodians));
    }
    let k = u8::try_from(threshold)
        .map_err(|_| EscrowError::Config(format!("threshold {threshold} is above 255")))?;
    let secret = Zeroizing::new(
        blahaj::Sharks(k)
            .recover(distinct.values().copied())
            .map_err(|_| not_enough(distinct.len(), need, custodians))?,
    );
    let secret: &[u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| EscrowError::BadBundle)?;
    check_expected(BundleIdentity::from_secret(secret)?, expected)
}

/// Rebuilds the bundle identity from custodian identities and the files of
/// `custodians/`, checking it is `expected`.
pub fn recover_bundle(
    identities: &[age::x25519::Identity],
    files: &[EscrowFile],
    threshold: u32,
    expected: &str,
    custodians: &[String],
) -> Result<BundleIdentity, EscrowError> {
    if threshold <= 1 {
        let file = files
            .iter()
            .find(|f| f.name == IDENTITY_FILE)
            .ok_or_else(|| {
                EscrowError::Config(format!(
                    "custodians/{IDENTITY_FILE} is missing from the backup"
                ))
            })?;
        let text = agefile::decrypt(identities, &file.contents, MAX_ESCROW_TEXT)
            .map_err(|_| not_enough(0, 1, custodians))?;
        let text = std::str::from_utf8(&text).map_err(|_| EscrowError::BadBundle)?;
        return check_expected(BundleIdentity::from_text(text)?, expected);
    }
    let mut shares = Vec::new();
    for file in files {
        if let Ok(text) = agefile::decrypt(identities, &file.contents, MAX_ESCROW_TEXT) {
            let text = std::str::from_utf8(&text).map_err(|_| EscrowError::BadShare {
                which: file.name.clone(),
                detail: "not text".into(),
            })?;
            shares.push(Share::parse(text, &file.name)?);
        }
    }
    combine_shares(&shares, threshold, expected, custodians)
}

fn check_expected(bundle: BundleIdentity, expected: &str) -> Result<BundleIdentity, EscrowError> {
    if bundle.recipient() != expected {
        return Err(EscrowError::WrongBundle {
            got: bundle.recipient().to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(bundle)
}

fn not_enough(have: usize, need: usize, custodians: &[String]) -> EscrowError {
    EscrowError::NotEnough {
        have,
        need,
        expected: custodians
            .iter()
            .map(|r| format!("{r} (fingerprint {})", agefile::fingerprint(r)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::x25519::Identity;

    fn custodians(n: usize) -> (Vec<Identity>, Vec<String>) {
        let ids: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
        let recipients = ids.iter().map(|i| i.to_public().to_string()).collect();
        (ids, recipients)
    }

    #[test]
    fn the_bundle_identity_round_trips_through_text_and_secret() {
        let bundle = BundleIdentity::generate().unwrap();
        assert!(bundle.to_text().starts_with("AGE-SECRET-KEY-1"));
        let again = BundleIdentity::from_text(&bundle.to_text()).unwrap();
        assert_eq!(again.recipient(), bundle.recipient());
        let from_secret = BundleIdentity::from_secret(&bundle.secret).unwrap();
        assert_eq!(from_secret.recipient(), bundle.recipient());
        assert_eq!(*from_secret.to_text(), *bundle.to_text());
        assert!(!format!("{bundle:?}").contains("AGE-SECRET"));
        assert!(BundleIdentity::from_text("AGE-SECRET-KEY-1XYZ").is_err());
    }

    #[test]
    fn threshold_one_any_custodian_opens_the_identity() {
        let bundle = BundleIdentity::generate().unwrap();
        let (ids, recipients) = custodians(3);
        let files = escrow(&bundle, &recipients, 1).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "identity.age");
        for id in &ids {
            let text =
                agefile::decrypt(std::slice::from_ref(id), &files[0].contents, 4096).unwrap();
            assert_eq!(
                text.as_slice(),
                format!("{}\n", *bundle.to_text()).as_bytes()
            );
            let back = recover_bundle(
                std::slice::from_ref(id),
                &files,
                1,
                bundle.recipient(),
                &recipients,
            )
            .unwrap();
            assert_eq!(back.recipient(), bundle.recipient());
        }
        let (strangers, _) = custodians(1);
        let err =
            recover_bundle(&strangers, &files, 1, bundle.recipient(), &recipients).unwrap_err();
        assert!(
            matches!(
                err,
                EscrowError::NotEnough {
                    have: 0,
                    need: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn two_of_three_no_single_custodian_recovers_two_do() {
        let bundle = BundleIdentity::generate().unwrap();
        let (ids, recipients) = custodians(3);
        let files = escrow(&bundle, &recipients, 2).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["1.age", "2.age", "3.age"]);
        // Each share opens only with its own custodian.
        assert!(agefile::decrypt(&ids[1..2], &files[0].contents, 4096).is_err());
        for (i, id) in ids.iter().enumerate() {
            let err = recover_bundle(
                std::slice::from_ref(id),
                &files,
                2,
                bundle.recipient(),
                &recipients,
            )
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    EscrowError::NotEnough {
                        have: 1,
                        need: 2,
                        ..
                    }
                ),
                "custodian {i}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&recipients[2]) && msg.contains(&agefile::fingerprint(&recipients[0]))
            );
        }
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let two = [ids[pair[0]].clone(), ids[pair[1]].clone()];
            let back = recover_bundle(&two, &files, 2, bundle.recipient(), &recipients).unwrap();
            assert_eq!(*back.to_text(), *bundle.to_text());
        }
    }

    #[test]
    fn decrypted_shares_combine_and_are_checked() {
        let bundle = BundleIdentity::generate().unwrap();
        let (ids, recipients) = custodians(3);
        let files = escrow(&bundle, &recipients, 2).unwrap();
        let text = |i: usize| {
            let t = agefile::decrypt(&ids[i..=i], &files[i].contents, 4096).unwrap();
            String::from_utf8(t.to_vec()).unwrap()
        };
        let t3 = text(2);
        assert!(t3.starts_with("hostkms recovery share v1\n"));
        assert!(t3.contains(&format!("bundle-recipient: {}\n", bundle.recipient())));
        assert!(t3.contains("threshold: 2\nshare: 3 of 3\nsecret: "));
        let shares = [
            Share::parse(&text(0), "a").unwrap(),
            Share::parse(&t3, "b").unwrap(),
        ];
        assert_eq!(shares[1].index, 3);
        assert!(!format!("{:?}", shares[1]).contains("secret"));
        let back = combine_shares(&shares, 2, bundle.recipient(), &recipients).unwrap();
        assert_eq!(back.recipient(), bundle.recipient());
        // The same share twice is one share.
        let same = [
            Share::parse(&t3, "a").unwrap(),
            Share::parse(&t3, "b").unwrap(),
        ];
        assert!(matches!(
            combine_shares(&same, 2, bundle.recipient(), &recipients),
            Err(EscrowError::NotEnough {
                have: 1,
                need: 2,
                ..
            })
        ));
        // A share of another bundle is refused by name.
        let other = BundleIdentity::generate().unwrap();
        assert!(matches!(
            combine_shares(&shares, 2, other.recipient(), &recipients),
            Err(EscrowError::BadShare { .. })
        ));
        // A tampered share rebuilds a different identity: detected.
        let line = t3.lines().last().unwrap();
        let mut bytes = BASE64.decode(line.trim_start_matches("secret: ")).unwrap();
        bytes[5] ^= 1;
        let flipped = t3.replace(line, &format!("secret: {}", BASE64.encode(&bytes)));
        let shares = [
            Share::parse(&text(0), "a").unwrap(),
            Share::parse(&flipped, "c").unwrap(),
        ];
        let err = combine_shares(&shares, 2, bundle.recipient(), &recipients).unwrap_err();
        assert!(matches!(err, EscrowError::WrongBundle { .. }), "{err}");
        for junk in ["", "hello", "hostkms recovery share v1\nthreshold: 2\n"] {
            assert!(matches!(
                Share::parse(junk, "x"),
                Err(EscrowError::BadShare { .. })
            ));
        }
    }

    #[test]
    fn custodian_lists_are_checked() {
        let (_, recipients) = custodians(2);
        assert!(check_custodians(&recipients, 2).is_ok());
        assert!(matches!(
            check_custodians(&recipients, 0),
            Err(EscrowError::Config(_))
        ));
        assert!(matches!(
            check_custodians(&recipients, 3),
            Err(EscrowError::Config(_))
        ));
        assert!(matches!(
            check_custodians(&[], 1),
            Err(EscrowError::Config(_))
        ));
        let twice = vec![recipients[0].clone(), recipients[0].clone()];
        assert!(matches!(
            check_custodians(&twice, 1),
            Err(EscrowError::Config(_))
        ));
        assert!(matches!(
            check_custodians(&["age1bad".into()], 1),
            Err(EscrowError::Age(AgeError::BadRecipient(_)))
        ));
    }
}
