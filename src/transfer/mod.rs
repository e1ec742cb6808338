//! Keys moved between hosts (key distribution): the host's transport key,
//! the pinned peers of the config's `[[transfer]]` tables, and the export
//! file.
//!
//! Each host has a *transport key*, an X25519 age identity generated at
//! first start and kept only sealed under the root key in the key store's
//! secrets (TPM → root key → transport key). Its public half (`age1…`,
//! `hostkms transport-key`) is what the other host's root pins.
//!
//! An export file is an age file (binary, no armor) encrypted to the
//! destination's transport key. Its plaintext is ([`file`]):
//!
//! ```text
//! hostkms-transfer 1
//! source age1…            the exporting host's transport key
//! destination age1…       the importing host's transport key
//!
//! { "format": 1, … }      the key record (crate::recovery::record: format 1, 2 for a key that is
//!                         not AES, 3 for a key with a description, tags or rotation period)
//! ```
//!
//! age has no sender authentication: anyone who knows a host's public
//! transport key can encrypt a file to it. So the record's MAC (the
//! recovery record's own `mac` field) is keyed not by the bundle identity
//! but by HKDF-SHA256 over X25519(source secret, destination public)
//! (= X25519(destination secret, source public)), salt "hostkms transfer
//! v1", info "source <age1…> destination <age1…>": only the holder of one
//! of the two transport keys can make it, and a changed `source` or
//! `destination` line changes the key. The importer takes the file only
//! when its `source` is the transport key of a peer pinned in its own
//! config whose globs cover the key, and the record verifies under the key
//! it derives from its own secret and that pinned public key.

mod file;
mod peers;

pub use crate::recovery::agefile::fingerprint;
pub use file::{ExportFile, FileError, open, seal};
pub use peers::{MAX_PEER_NAME, Peer, PeerConfig, PeerError, Peers, check_peer_name};

use std::str::FromStr;

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::keystore::{KeyStore, SecretName, StoreError};

/// Why the transport key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TransportKeyError {
    /// The key store could not read or write the sealed secret.
    #[error("cannot load or store the transport key: {0}")]
    Store(#[from] StoreError),
    /// The sealed secret is not a transport key.
    #[error(transparent)]
    Invalid(#[from] TransportKeyInvalid),
}

/// This host's transport key from the store's sealed secrets, or a new one
/// generated and sealed there (durably) at first start; `true` when new.
pub fn load_or_create(store: &KeyStore) -> Result<(TransportKey, bool), TransportKeyError> {
    if let Some(sealed) = store.secret(SecretName::TransportKey)? {
        return Ok((TransportKey::from_sealed(&sealed)?, false));
    }
    let (key, sealed) = TransportKey::generate()?;
    store.put_secret(SecretName::TransportKey, &sealed)?;
    Ok((key, true))
}

/// The sealed transport key does not parse: the store's secret is damaged.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sealed transport key is not an age X25519 identity; the key store's secrets table was damaged"
)]
pub struct TransportKeyInvalid;

/// This host's transport key: an X25519 age identity. Its secret half is
/// in zeroize-on-drop memory, never in Debug output.
pub struct TransportKey {
    identity: age::x25519::Identity,
    secret: Zeroizing<[u8; 32]>,
    recipient: String,
    fingerprint: String,
}

impl std::fmt::Debug for TransportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportKey")
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

impl TransportKey {
    /// A new transport key from the OS RNG, and its sealable form (the age
    /// identity string, `AGE-SECRET-KEY-1…`).
    pub fn generate() -> Result<(TransportKey, Zeroizing<Vec<u8>>), TransportKeyInvalid> {
        let identity = age::x25519::Identity::generate();
        let text = Zeroizing::new(identity.to_string().expose_secret().as_bytes().to_vec());
        let key = TransportKey::from_sealed(&text)?;
        Ok((key, text))
    }

    /// The transport key from its sealed form, the age identity string.
    pub fn from_sealed(sealed: &[u8]) -> Result<TransportKey, TransportKeyInvalid> {
        let text = std::str::from_utf8(sealed).map_err(|_| TransportKeyInvalid)?;
        let identity = age::x25519::Identity::from_str(text).map_err(|_| TransportKeyInvalid)?;
        let (_, bytes) = bech32::decode(text).map_err(|_| TransportKeyInvalid)?;
        let bytes = Zeroizing::new(bytes);
        let mut secret = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(TransportKeyInvalid);
        }
        secret.copy_from_slice(&bytes);
        let recipient = identity.to_public().to_string();
        Ok(TransportKey {
            fingerprint: fingerprint(&recipient),
            identity,
            secret,
            recipient,
        })
    }

    /// The public half, `age1…`.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// The public half's fingerprint ([`fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn identity(&self) -> &age::x25519::Identity {
        &self.identity
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_key_survives_sealing_and_shows_its_recipient_only() {
        let (key, sealed) = TransportKey::generate().unwrap();
        let again = TransportKey::from_sealed(&sealed).unwrap();
        assert_eq!(key.recipient(), again.recipient());
        assert!(key.recipient().starts_with("age1"));
        assert_eq!(key.fingerprint(), fingerprint(key.recipient()));
        assert_eq!(key.fingerprint().len(), 16);
        let shown = format!("{key:?}");
        let sealed_text = std::str::from_utf8(&sealed).unwrap();
        assert!(!shown.contains(&sealed_text[20..40]), "{shown}");
        assert!(TransportKey::from_sealed(b"AGE-SECRET-KEY-1NOPE").is_err());
        assert!(TransportKey::from_sealed(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_recipient_text() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
    }
}
