//! The key store's protection under the root key: KEKs encrypted with
//! AES-256-GCM, rows authenticated with HMAC-SHA256.
//!
//! Both keys are derived from the root key with HKDF-SHA256 under distinct
//! labels, so the root key itself is never used for two purposes.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::TryRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::kek::Kek;
use crate::envelope::KeyId;
use crate::rootkey::RootKey;

/// Length of a KEK in bytes.
pub const KEK_LEN: usize = 32;
/// Length of a sealed KEK: nonce, encrypted KEK, tag.
pub const SEALED_KEK_LEN: usize = 12 + KEK_LEN + 16;

/// Keys derived from the root key that protect the key store's contents.
pub struct StoreSecrets {
    kek_wrap: Kek,
    row_mac: Hmac<Sha256>,
}

impl std::fmt::Debug for StoreSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSecrets(<redacted>)")
    }
}

/// A sealed KEK that does not open: tampered, swapped or from another root key.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the sealed KEK does not authenticate under this root key")]
pub struct SealedKekInvalid;

impl StoreSecrets {
    /// Derives the KEK-wrapping key and the row-MAC key from the root key.
    pub fn derive(root: &RootKey) -> Result<StoreSecrets, String> {
        let hkdf = Hkdf::<Sha256>::new(Some(b"hostkms keystore v1"), root.expose());
        let mut kek_wrap = Zeroizing::new([0u8; 32]);
        let mut row_mac = Zeroizing::new([0u8; 32]);
        // Expanding 32 bytes from SHA-256 HKDF cannot exceed its 8160-byte bound.
        let _ = hkdf.expand(b"kek wrap", kek_wrap.as_mut());
        let _ = hkdf.expand(b"row mac", row_mac.as_mut());
        let row_mac = <Hmac<Sha256> as KeyInit>::new_from_slice(row_mac.as_ref())
            .map_err(|e| format!("cannot key the row MAC: {e}"))?;
        Ok(StoreSecrets {
            kek_wrap: Kek::new(&kek_wrap),
            row_mac,
        })
    }

    /// Encrypts KEK material for storage; the AAD binds it to its key id and
    /// version, so a sealed KEK moved to another row does not open.
    pub fn seal_kek(
        &self,
        id: KeyId,
        version: u32,
        kek: &[u8; KEK_LEN],
    ) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; 12];
        rand::rngs::SysRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| format!("the operating system's random number generator failed: {e}"))?;
        let mut sealed = Vec::with_capacity(SEALED_KEK_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(kek);
        let tag = self
            .kek_wrap
            .cipher()
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &kek_aad(id, version),
                (&mut sealed[12..]).into(),
            )
            .map_err(|_| "AES-GCM refused to encrypt a KEK".to_string())?;
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// Decrypts a sealed KEK of key `id`, `version`.
    pub fn open_kek(
        &self,
        id: KeyId,
        version: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<[u8; KEK_LEN]>, SealedKekInvalid> {
        if sealed.len() != SEALED_KEK_LEN {
            return Err(SealedKekInvalid);
        }
        let nonce: [u8; 12] = sealed[..12].try_into().map_err(|_| SealedKekInvalid)?;
        let tag: [u8; 16] = sealed[12 + KEK_LEN..]
            .try_into()
            .map_err(|_| SealedKekInvalid)?;
        let mut kek = Zeroizing::new([0u8; KEK_LEN]);
        kek.copy_from_slice(&sealed[12..12 + KEK_LEN]);
        self.kek_wrap
            .cipher()
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &kek_aad(id, version),
                kek.as_mut_slice().into(),
                &Tag::from(tag),
            )
            .map_err(|_| SealedKekInvalid)?;
        Ok(kek)
    }

    /// Encrypts a secret named `name` for the `secrets` table: nonce ‖
    /// AES-256-GCM(secret) ‖ tag, with AAD "hostkms secret v1" ‖ name, so a
    /// sealed secret moved to another name does not open.
    pub fn seal_secret(&self, name: &str, secret: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; 12];
        rand::rngs::SysRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| format!("the operating system's random number generator failed: {e}"))?;
        let mut sealed = Vec::with_capacity(12 + secret.len() + 16);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(secret);
        let tag = self
            .kek_wrap
            .cipher()
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &secret_aad(name),
                (&mut sealed[12..]).into(),
            )
            .map_err(|_| "AES-GCM refused to encrypt a secret".to_string())?;
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// Decrypts a secret sealed by [`StoreSecrets::seal_secret`] under `name`.
    pub fn open_secret(
        &self,
        name: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealedKekInvalid> {
        if sealed.len() < 12 + 16 {
            return Err(SealedKekInvalid);
        }
        let nonce: [u8; 12] = sealed[..12].try_into().map_err(|_| SealedKekInvalid)?;
        let tag: [u8; 16] = sealed[sealed.len() - 16..]
            .try_into()
            .map_err(|_| SealedKekInvalid)?;
        let mut secret = Zeroizing::new(sealed[12..sealed.len() - 16].to_vec());
        self.kek_wrap
            .cipher()
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &secret_aad(name),
                secret.as_mut_slice().into(),
                &Tag::from(tag),
            )
            .map_err(|_| SealedKekInvalid)?;
        Ok(secret)
    }

    /// HMAC-SHA256 of a row's canonical encoding.
    pub fn row_mac(&self, row: &[u8]) -> [u8; 32] {
        let mut mac = self.row_mac.clone();
        mac.update(row);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC of `row`, compared in constant time.
    pub fn row_mac_matches(&self, row: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.row_mac.clone();
        mac.update(row);
        mac.verify_slice(tag).is_ok()
    }
}

/// AAD of a sealed secret: a label and the secret's name.
fn secret_aad(name: &str) -> Vec<u8> {
    let mut aad = b"hostkms secret v1".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// AAD of a sealed KEK: key id ‖ version (big endian).
fn kek_aad(id: KeyId, version: u32) -> [u8; 20] {
    let mut aad = [0u8; 20];
    aad[..16].copy_from_slice(&id.0);
    aad[16..].copy_from_slice(&version.to_be_bytes());
    aad
}
