//! The secret of one key version, ready to use: an AES-256-GCM cipher, an
//! HMAC key or a signing key, built from the version's 32-byte seed.
//!
//! Every key type keeps the same 32 secret bytes per version (sealed under
//! the root key like any KEK, carried the same way in recovery records and
//! export files): the AES key, the HMAC key, the Ed25519 secret key, the
//! ECDSA P-256 scalar or the ML-DSA-65 seed ξ (FIPS 204 `KeyGen_internal`).
//! Each primitive comes from a kept RustCrypto/dalek crate; nothing here is
//! cryptography of our own, only the choice of which call to make.

use aes_gcm::Aes256Gcm;
use agent_proto::{KeyType, Operation, SignInput};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

use crate::keystore::Kek;
use crate::locked::{LockedBox, LockedBytes};

/// Length of every version's secret: the KEK, HMAC key or signing seed.
pub const SEED_LEN: usize = 32;
/// Length of the pre-hashed digest ECDSA P-256 signs (SHA-256).
pub const DIGEST_LEN: usize = 32;

/// Why a key version cannot do what was asked. Never says anything about a
/// secret, a message or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyUseError {
    /// The operation is not one this key type performs.
    #[error(
        "the {operation} operation does not fit a key of type {key_type}; that type supports {}",
        supported(*key_type)
    )]
    WrongKeyType {
        /// The key's type.
        key_type: KeyType,
        /// What was asked of it.
        operation: Operation,
    },
    /// A pre-hashed digest for a type that signs only messages, or a digest
    /// of the wrong length.
    #[error(
        "{0}: only ecdsa-p256 keys sign a pre-hashed digest, and it must be a {DIGEST_LEN}-byte SHA-256 digest"
    )]
    Digest(&'static str),
    /// The crate refused to sign (never expected with a valid key).
    #[error("the {0} signer failed")]
    Signer(KeyType),
}

/// The operations of `key_type`, for error messages: "wrap, unwrap, ...".
fn supported(key_type: KeyType) -> String {
    key_type
        .operations()
        .iter()
        .map(|op| op.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A seed that is no valid key of its type (an ECDSA scalar of zero or
/// beyond the group order): new seeds are drawn again; a stored one is
/// damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the seed is not a valid {0} private key")]
pub struct SeedInvalid(pub KeyType);

/// A DER ECDSA P-256 signature in low-S form, the only form hostkms makes:
/// `None` for a malformed one or its high-S twin (n - s), so a signature's
/// bytes cannot be altered and still verify.
fn low_s_ecdsa(der: &[u8]) -> Option<p256::ecdsa::Signature> {
    let signature = p256::ecdsa::Signature::from_der(der).ok()?;
    (signature.normalize_s() == signature).then_some(signature)
}

/// One key version's secret, in the form its type uses. Opaque: the
/// secret leaves only as what its operations return.
pub struct VersionKey(Secret);

/// The forms a [`VersionKey`] takes.
enum Secret {
    /// An AES-256-GCM KEK.
    Aes256Gcm(Kek),
    /// An HMAC-SHA256 key.
    HmacSha256(LockedBox<Hmac<Sha256>>),
    /// An HMAC-SHA512 key (32 bytes: 256-bit strength, as every other type).
    HmacSha512(LockedBox<Hmac<Sha512>>),
    /// An Ed25519 signing key.
    Ed25519(LockedBox<ed25519_dalek::SigningKey>),
    /// An ECDSA P-256 signing key.
    EcdsaP256(LockedBox<p256::ecdsa::SigningKey>),
    /// An ML-DSA-65 key: its seed, locked (the expanded signing key lives
    /// on heap buffers of the crate's own that cannot be locked, so it is
    /// made for each signature and wiped after it), and the public key.
    MlDsa65(
        LockedBytes<SEED_LEN>,
        Box<ml_dsa::VerifyingKey<ml_dsa::MlDsa65>>,
    ),
}

impl std::fmt::Debug for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VersionKey({}, <redacted>)", self.key_type())
    }
}

impl VersionKey {
    /// The key of type `key_type` whose secret is `seed`.
    pub fn from_seed(key_type: KeyType, seed: &[u8; SEED_LEN]) -> Result<VersionKey, SeedInvalid> {
        Ok(VersionKey(match key_type {
            KeyType::Aes256Gcm => Secret::Aes256Gcm(Kek::new(seed)),
            KeyType::HmacSha256 => Secret::HmacSha256(LockedBox::new(
                <Hmac<Sha256> as KeyInit>::new_from_slice(seed)
                    .map_err(|_| SeedInvalid(key_type))?,
            )),
            KeyType::HmacSha512 => Secret::HmacSha512(LockedBox::new(
                <Hmac<Sha512> as KeyInit>::new_from_slice(seed)
                    .map_err(|_| SeedInvalid(key_type))?,
            )),
            KeyType::Ed25519 => {
                Secret::Ed25519(LockedBox::new(ed25519_dalek::SigningKey::from_bytes(seed)))
            }
            KeyType::EcdsaP256 => Secret::EcdsaP256(LockedBox::new(
                p256::ecdsa::SigningKey::from_slice(seed).map_err(|_| SeedInvalid(key_type))?,
            )),
            KeyType::MlDsa65 => {
                let mut locked = LockedBytes::<SEED_LEN>::new();
                if !locked.is_locked() {
                    crate::locked::note_unlocked();
                }
                locked.expose_mut().copy_from_slice(seed);
                let signing = ml_dsa::SigningKey::<ml_dsa::MlDsa65>::from_seed(&(*seed).into());
                let verifying: &ml_dsa::VerifyingKey<ml_dsa::MlDsa65> = AsRef::as_ref(&signing);
                Secret::MlDsa65(locked, Box::new(verifying.clone()))
            }
        }))
    }

    /// Whether `seed` is a valid secret of `key_type`: a fresh seed that
    /// is not is drawn again (only ECDSA P-256 can refuse one, with
    /// probability about 2^-32).
    pub fn seed_is_valid(key_type: KeyType, seed: &[u8; SEED_LEN]) -> bool {
        match key_type {
            KeyType::EcdsaP256 => p256::ecdsa::SigningKey::from_slice(seed).is_ok(),
            _ => true,
        }
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match &self.0 {
            Secret::Aes256Gcm(_) => KeyType::Aes256Gcm,
            Secret::HmacSha256(_) => KeyType::HmacSha256,
            Secret::HmacSha512(_) => KeyType::HmacSha512,
            Secret::Ed25519(_) => KeyType::Ed25519,
            Secret::EcdsaP256(_) => KeyType::EcdsaP256,
            Secret::MlDsa65(..) => KeyType::MlDsa65,
        }
    }

    fn wrong(&self, operation: Operation) -> KeyUseError {
        KeyUseError::WrongKeyType {
            key_type: self.key_type(),
            operation,
        }
    }

    /// The AES-256-GCM cipher, for wrap and unwrap.
    pub fn cipher(&self, operation: Operation) -> Result<&Aes256Gcm, KeyUseError> {
        match &self.0 {
            Secret::Aes256Gcm(kek) => Ok(kek.cipher()),
            _ => Err(self.wrong(operation)),
        }
    }

    /// The HMAC tag of `data`: a plain HMAC anyone with the key recomputes.
    pub fn mac(&self, data: &[u8]) -> Result<Vec<u8>, KeyUseError> {
        match &self.0 {
            Secret::HmacSha256(key) => {
                let mut mac = Hmac::clone(key);
                mac.update(data);
                Ok(mac.finalize().into_bytes().to_vec())
            }
            Secret::HmacSha512(key) => {
                let mut mac = Hmac::clone(key);
                mac.update(data);
                Ok(mac.finalize().into_bytes().to_vec())
            }
            _ => Err(self.wrong(Operation::Mac)),
        }
    }

    /// Whether `tag` is the HMAC of `data`, compared in constant time.
    pub fn verify_mac(&self, data: &[u8], tag: &[u8]) -> Result<bool, KeyUseError> {
        match &self.0 {
            Secret::HmacSha256(key) => {
                let mut mac = Hmac::clone(key);
                mac.update(data);
                Ok(mac.verify_slice(tag).is_ok())
            }
            Secret::HmacSha512(key) => {
                let mut mac = Hmac::clone(key);
                mac.update(data);
                Ok(mac.verify_slice(tag).is_ok())
            }
            _ => Err(self.wrong(Operation::VerifyMac)),
        }
    }

    /// A signature over `input` in the type's standard encoding: Ed25519
    /// 64 bytes (RFC 8032, pure); ECDSA P-256 with SHA-256, ASN.1 DER
    /// (RFC 6979 nonces, S normalized low
    /// as BIP 62 has it; a high-S twin does not verify); ML-DSA-65 as FIPS 204 encodes it (hedged,
    /// empty context).
    pub fn sign(&self, input: &SignInput) -> Result<Vec<u8>, KeyUseError> {
        use signature::Signer;
        match (&self.0, input) {
            (Secret::Ed25519(key), SignInput::Message(message)) => {
                let signature: ed25519_dalek::Signature = key.sign(message.expose());
                Ok(signature.to_bytes().to_vec())
            }
            (Secret::EcdsaP256(key), SignInput::Message(message)) => {
                let signature: p256::ecdsa::Signature = key
                    .try_sign(message.expose())
                    .map_err(|_| KeyUseError::Signer(KeyType::EcdsaP256))?;
                Ok(signature.normalize_s().to_der().as_bytes().to_vec())
            }
            (Secret::EcdsaP256(key), SignInput::Digest(digest)) => {
                use signature::hazmat::PrehashSigner;
                if digest.len() != DIGEST_LEN {
                    return Err(KeyUseError::Digest("the digest has the wrong length"));
                }
                let signature: p256::ecdsa::Signature = key
                    .sign_prehash(digest)
                    .map_err(|_| KeyUseError::Signer(KeyType::EcdsaP256))?;
                Ok(signature.normalize_s().to_der().as_bytes().to_vec())
            }
            (Secret::MlDsa65(seed, _), SignInput::Message(message)) => {
                // Zeroized when dropped at the end of this arm.
                let key =
                    ml_dsa::SigningKey::<ml_dsa::MlDsa65>::from_seed(&(*seed.expose()).into());
                // The hedged variant FIPS 204 recommends: fresh randomness
                // from the OS mixed into each signature's nonce.
                let signature: ml_dsa::Signature<ml_dsa::MlDsa65> = key
                    .expanded_key()
                    .sign_randomized(message.expose(), &[], &mut rand::rngs::SysRng)
                    .map_err(|_| KeyUseError::Signer(KeyType::MlDsa65))?;
                Ok(signature.encode().to_vec())
            }
            (Secret::Ed25519(_) | Secret::MlDsa65(..), SignInput::Digest(_)) => {
                Err(KeyUseError::Digest("this key type signs messages only"))
            }
            _ => Err(self.wrong(Operation::Sign)),
        }
    }

    /// Whether `signature` is this key's over `input`. A malformed
    /// signature is `false`, like a wrong one.
    pub fn verify(&self, input: &SignInput, signature: &[u8]) -> Result<bool, KeyUseError> {
        use signature::Verifier;
        match (&self.0, input) {
            (Secret::Ed25519(key), SignInput::Message(message)) => {
                let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
                    return Ok(false);
                };
                Ok(key
                    .verifying_key()
                    .verify_strict(message.expose(), &signature)
                    .is_ok())
            }
            (Secret::EcdsaP256(key), SignInput::Message(message)) => {
                let Some(signature) = low_s_ecdsa(signature) else {
                    return Ok(false);
                };
                Ok(key
                    .verifying_key()
                    .verify(message.expose(), &signature)
                    .is_ok())
            }
            (Secret::EcdsaP256(key), SignInput::Digest(digest)) => {
                use signature::hazmat::PrehashVerifier;
                if digest.len() != DIGEST_LEN {
                    return Err(KeyUseError::Digest("the digest has the wrong length"));
                }
                let Some(signature) = low_s_ecdsa(signature) else {
                    return Ok(false);
                };
                Ok(key
                    .verifying_key()
                    .verify_prehash(digest, &signature)
                    .is_ok())
            }
            (Secret::MlDsa65(_, verifying), SignInput::Message(message)) => {
                let Ok(encoded) = signature.try_into() else {
                    return Ok(false);
                };
                let Some(signature) = ml_dsa::Signature::<ml_dsa::MlDsa65>::decode(encoded) else {
                    return Ok(false);
                };
                Ok(verifying.verify(message.expose(), &signature).is_ok())
            }
            (Secret::Ed25519(_) | Secret::MlDsa65(..), SignInput::Digest(_)) => {
                Err(KeyUseError::Digest("this key type verifies messages only"))
            }
            _ => Err(self.wrong(Operation::Verify)),
        }
    }

    /// The public key as SubjectPublicKeyInfo DER; `None` for a type that
    /// has none (AES, HMAC).
    pub fn public_key_der(&self) -> Option<Zeroizing<Vec<u8>>> {
        use p256::pkcs8::EncodePublicKey;
        let der = match &self.0 {
            Secret::Ed25519(key) => key.verifying_key().to_public_key_der(),
            Secret::EcdsaP256(key) => key.verifying_key().to_public_key_der(),
            Secret::MlDsa65(_, verifying) => verifying.to_public_key_der(),
            _ => return None,
        };
        der.ok().map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests;
