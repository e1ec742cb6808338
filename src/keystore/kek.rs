//! A KEK in memory: a ready AES-256-GCM instance (key schedule done once),
//! zeroized on drop and, where the system allows, locked in RAM.

use aes_gcm::{Aes256Gcm, KeyInit};

use super::sealing::KEK_LEN;
use crate::locked::LockedBox;

/// A key-encryption key, ready to wrap and unwrap: the cipher (which
/// zeroizes its round keys on drop) in a locked allocation of its own.
pub struct Kek {
    cipher: LockedBox<Aes256Gcm>,
}

impl Kek {
    /// Builds the cipher for `material`.
    pub fn new(material: &[u8; KEK_LEN]) -> Kek {
        Kek {
            cipher: LockedBox::new(Aes256Gcm::new(material.into())),
        }
    }

    /// The cipher.
    pub fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}
