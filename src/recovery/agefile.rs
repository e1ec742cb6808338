//! age files: encrypting to X25519 recipients and decrypting with
//! identities, through the `age` crate (binary format, no armor), and the
//! recipient fingerprint (D5).

use std::io::{Read, Write};

use age::x25519::{Identity, Recipient};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Why an age file could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum AgeError {
    /// A recipient string is not an age X25519 recipient.
    #[error("{0:?} is not an age X25519 recipient (age1…, as printed by age-keygen)")]
    BadRecipient(String),
    /// An identity string is not an age X25519 identity.
    #[error("not an age X25519 identity (AGE-SECRET-KEY-1…, as written by age-keygen)")]
    BadIdentity,
    /// age refused to encrypt.
    #[error("cannot age-encrypt: {0}")]
    Encrypt(String),
    /// Not an age file, or none of the identities is a recipient of it.
    #[error("cannot age-decrypt: {0}")]
    Decrypt(String),
    /// The plaintext is longer than the reader allows.
    #[error("the age file's plaintext is longer than the {limit} bytes allowed")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Parses an age X25519 recipient (`age1…`).
pub fn parse_recipient(text: &str) -> Result<Recipient, AgeError> {
    text.parse::<Recipient>()
        .map_err(|_| AgeError::BadRecipient(text.to_string()))
}

/// Parses an age X25519 identity (`AGE-SECRET-KEY-1…`). The error never
/// shows the text.
pub fn parse_identity(text: &str) -> Result<Identity, AgeError> {
    text.trim()
        .parse::<Identity>()
        .map_err(|_| AgeError::BadIdentity)
}

/// The identities of an age identity file: every line that is not blank or
/// a `#` comment. The error never shows the text.
pub fn parse_identity_file(text: &str) -> Result<Vec<Identity>, AgeError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_identity)
        .collect()
}

/// A recipient's fingerprint: the first 16 hex digits of SHA-256 over the
/// recipient string (`age1…`).
pub fn fingerprint(recipient: &str) -> String {
    let digest = Sha256::digest(recipient.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `plaintext` as an age file encrypted to every one of `recipients`.
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, AgeError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| AgeError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256 + 200 * recipients.len());
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| AgeError::Encrypt(e.to_string()))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish().map(drop))
        .map_err(|e| AgeError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// The plaintext of age file `file`, opened by any of `identities`, at most
/// `limit` bytes, in a zeroizing buffer.
pub fn decrypt(
    identities: &[Identity],
    file: &[u8],
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, AgeError> {
    let decryptor =
        age::Decryptor::new_buffered(file).map_err(|e| AgeError::Decrypt(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| AgeError::Decrypt(e.to_string()))?;
    // The plaintext is shorter than the file: no reallocation, no stray copy.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(file.len().min(limit) + 1));
    let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut reader)
        .take(bound)
        .read_to_end(&mut plaintext)
        .map_err(|e| AgeError::Decrypt(e.to_string()))?;
    if plaintext.len() > limit {
        return Err(AgeError::TooLarge { limit });
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn round_trip_to_several_recipients() {
        let a = Identity::generate();
        let b = Identity::generate();
        let c = Identity::generate();
        let file = encrypt(&[a.to_public(), b.to_public()], b"hello").unwrap();
        assert_eq!(
            decrypt(std::slice::from_ref(&b), &file, 100)
                .unwrap()
                .as_slice(),
            b"hello"
        );
        assert_eq!(decrypt(&[a], &file, 100).unwrap().as_slice(), b"hello");
        assert!(matches!(
            decrypt(&[c], &file, 100),
            Err(AgeError::Decrypt(_))
        ));
        assert!(matches!(
            decrypt(&[b], &file, 4),
            Err(AgeError::TooLarge { limit: 4 })
        ));
    }

    #[test]
    fn parsing_errors_never_show_secrets() {
        let id = Identity::generate();
        let text = id.to_string();
        let mut broken = text.expose_secret().to_string();
        broken.push('x');
        let Err(err) = parse_identity(&broken) else {
            panic!("a broken identity parsed")
        };
        assert!(!err.to_string().contains(&broken[..20]));
        let file = format!(
            "# created: now\n# public key: x\n{}\n",
            text.expose_secret()
        );
        assert_eq!(parse_identity_file(&file).unwrap().len(), 1);
        assert!(parse_recipient("age1nope").is_err());
        assert!(parse_recipient(&id.to_public().to_string()).is_ok());
    }

    #[test]
    fn fingerprint_is_16_hex_digits_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
    }
}
