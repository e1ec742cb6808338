//! AES-256-GCM wrap/unwrap under a KEK, in the ciphertext format that
//! [`agent_proto::ciphertext`] defines (the one definition the clients
//! share):
//!
//! ```text
//! "HKMS" | format u8 = 1 | key id [16] | version u32 BE | nonce [12] | ciphertext | tag [16]
//! ```
//!
//! The additional authenticated data is the 37-byte header followed by the
//! canonical encoding of the encryption context, so a ciphertext unwraps only
//! under its own key and version and with the same context. Every failure
//! that depends on key material is the same [`InvalidCiphertext`].

use std::fmt;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use agent_proto::EncryptionContext;
use agent_proto::ciphertext::{self, HEADER_LEN, NONCE_LEN, OVERHEAD, TAG_LEN};
use rand::TryRng;
use zeroize::Zeroizing;

/// A key's random 128-bit id, given at creation and carried by every
/// ciphertext, so a name deleted and created again never decrypts the old
/// key's ciphertexts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The one answer to a ciphertext that cannot be unwrapped: bad format,
/// unknown key, wrong context, tampering and truncation look the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ciphertext is not valid for any key this daemon holds with this context")]
pub struct InvalidCiphertext;

/// Wrapping could not draw a nonce.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct NonceError(String);

/// What a ciphertext's header says, read without any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The key that made the ciphertext.
    pub key_id: KeyId,
    /// The key version that made it.
    pub version: u32,
}

/// Reads the header of `blob`; anything malformed is [`InvalidCiphertext`].
pub fn read_header(blob: &[u8]) -> Result<Header, InvalidCiphertext> {
    let header = ciphertext::Header::parse(blob).map_err(|_| InvalidCiphertext)?;
    Ok(Header {
        key_id: KeyId(header.key_id),
        version: header.version,
    })
}

/// Encrypts `plaintext` under `kek` (key `key_id`, `version`) with a random
/// nonce, bound to `context`.
pub fn wrap(
    kek: &Aes256Gcm,
    key_id: KeyId,
    version: u32,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> Result<Vec<u8>, NonceError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| NonceError(e.to_string()))?;
    let header = ciphertext::Header {
        key_id: key_id.0,
        version,
        nonce,
    };
    let mut blob = Vec::with_capacity(OVERHEAD + plaintext.len());
    blob.extend_from_slice(&header.to_bytes());
    blob.extend_from_slice(plaintext);
    let aad = associated_data(&blob[..HEADER_LEN], context);
    let (_, body) = blob.split_at_mut(HEADER_LEN);
    // Encryption fails only for inputs beyond GCM's 64 GiB bound.
    let tag = kek
        .encrypt_inout_detached(&Nonce::from(nonce), &aad, body.into())
        .map_err(|_| NonceError("plaintext too long for AES-GCM".to_string()))?;
    blob.extend_from_slice(&tag);
    Ok(blob)
}

/// Decrypts `blob` under `kek`, checking the tag over header, context and
/// body. The caller chose `kek` from the header's key id and version.
pub fn unwrap(
    kek: &Aes256Gcm,
    blob: &[u8],
    context: &EncryptionContext,
) -> Result<Zeroizing<Vec<u8>>, InvalidCiphertext> {
    let parsed = ciphertext::Header::parse(blob).map_err(|_| InvalidCiphertext)?;
    let (header, rest) = blob.split_at_checked(HEADER_LEN).ok_or(InvalidCiphertext)?;
    let (body, tag) = rest
        .split_last_chunk::<TAG_LEN>()
        .ok_or(InvalidCiphertext)?;
    let aad = associated_data(header, context);
    let mut plaintext = Zeroizing::new(body.to_vec());
    kek.decrypt_inout_detached(
        &Nonce::from(parsed.nonce),
        &aad,
        plaintext.as_mut_slice().into(),
        &Tag::from(*tag),
    )
    .map_err(|_| InvalidCiphertext)?;
    Ok(plaintext)
}

/// The header followed by the context's canonical encoding: the number of
/// pairs, then each key and value in key order, every count and length a
/// u32 big-endian.
fn associated_data(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let size = context
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    let mut aad = Vec::with_capacity(header.len() + 4 + size);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (key, value) in context {
        aad.extend_from_slice(&(key.len() as u32).to_be_bytes());
        aad.extend_from_slice(key.as_bytes());
        aad.extend_from_slice(&(value.len() as u32).to_be_bytes());
        aad.extend_from_slice(value.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::KeyInit;

    fn kek(byte: u8) -> Aes256Gcm {
        Aes256Gcm::new(&[byte; 32].into())
    }

    fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_and_layout() {
        let id = KeyId([9; 16]);
        let ctx = context(&[("b", "2"), ("a", "1")]);
        let blob = wrap(&kek(1), id, 7, b"hello", &ctx).unwrap();
        assert_eq!(blob.len(), OVERHEAD + 5);
        assert_eq!(&blob[..5], b"HKMS\x01");
        assert_eq!(
            read_header(&blob).unwrap(),
            Header {
                key_id: id,
                version: 7
            }
        );
        assert_eq!(unwrap(&kek(1), &blob, &ctx).unwrap().as_slice(), b"hello");
        let again = wrap(&kek(1), id, 7, b"hello", &ctx).unwrap();
        assert_ne!(blob, again, "fresh nonce per wrap");
    }

    #[test]
    fn the_header_is_the_one_clients_read() {
        let ctx = context(&[("app", "demo")]);
        let blob = wrap(&kek(3), KeyId([0x5a; 16]), 0x0102_0304, b"", &ctx).unwrap();
        // Byte for byte the specified layout, written out by hand.
        let mut expected = b"HKMS\x01".to_vec();
        expected.extend_from_slice(&[0x5a; 16]);
        expected.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(blob.len(), 37 + 16);
        assert_eq!(&blob[..25], &expected[..]);
        // What a client reads from it, with agent-proto alone.
        let header = ciphertext::Header::parse(&blob).unwrap();
        assert_eq!(header.key_id, [0x5a; 16]);
        assert_eq!(header.version, 0x0102_0304);
        assert_eq!(header.nonce[..], blob[25..37]);
        assert_eq!(header.to_bytes()[..], blob[..37]);
        assert_eq!(unwrap(&kek(3), &blob, &ctx).unwrap().as_slice(), b"");
    }

    #[test]
    fn every_tampering_is_the_same_error() {
        let ctx = context(&[("table", "users")]);
        let blob = wrap(&kek(1), KeyId([9; 16]), 1, b"secret data", &ctx).unwrap();
        for i in 0..blob.len() {
            for bit in [0x01, 0x80] {
                let mut bad = blob.clone();
                bad[i] ^= bit;
                assert_eq!(
                    unwrap(&kek(1), &bad, &ctx),
                    Err(InvalidCiphertext),
                    "byte {i}"
                );
            }
        }
        for cut in 0..blob.len() {
            assert_eq!(unwrap(&kek(1), &blob[..cut], &ctx), Err(InvalidCiphertext));
        }
        assert_eq!(
            unwrap(&kek(2), &blob, &ctx),
            Err(InvalidCiphertext),
            "wrong key"
        );
        for other in [
            context(&[]),
            context(&[("table", "user")]),
            context(&[("table", "users"), ("x", "")]),
            context(&[("tabl", "eusers")]),
        ] {
            assert_eq!(
                unwrap(&kek(1), &blob, &other),
                Err(InvalidCiphertext),
                "{other:?}"
            );
        }
    }

    #[test]
    fn context_encoding_is_unambiguous() {
        let a = associated_data(b"", &context(&[("ab", "c")]));
        let b = associated_data(b"", &context(&[("a", "bc")]));
        assert_ne!(a, b);
    }
}
