//! The operations of HMAC and signing keys (`Mac`, `VerifyMac`, `Sign`,
//! `Verify`, `GetPublicKey`) and `GenerateRandom`, which names no key.
//!
//! Checks in the order of every key operation: the grant (a peer without
//! one learns nothing about the key), the key's state, the key's type
//! (`WrongKeyType`, naming the type and what it does), the sizes, then the
//! cryptography. `GetPublicKey` skips the state: a public key is public,
//! and stays retrievable for audit after the key is disabled or revoked.
//!
//! `Mac` and `Sign` use the latest version; `VerifyMac` and `Verify` check
//! the version given (refused when it is revoked or below the minimum
//! decryption version), or else the [`MAX_VERSIONS_TRIED`] newest live
//! versions at or above the minimum, newest first. A tag or signature that does not check is `valid: false`,
//! never an error, and never says why. Neither counts toward a version's
//! encryption limit: that limit is AES-GCM's bound on random nonces, which
//! HMAC and signatures do not have.
//!
//! Where the cryptography runs ([`runs_inline`]): a MAC (about 4 µs) or an
//! Ed25519 signature or check (about 25 and 70 µs, BENCHMARKS.md) over at
//! most [`INLINE_BYTES`] runs on the request's task, within the budget of
//! about 100 µs a task may hold a runtime thread; anything longer goes to
//! the blocking pool (one thread hop, about 10 µs): ECDSA P-256 (about 150
//! µs to sign, 270 µs to verify), ML-DSA-65 (1.4 ms to sign, the key being
//! expanded from its seed for each signature and FIPS 204's loop retrying
//! a random number of times; 270 µs to verify), larger data, and checks
//! against several versions.

use std::sync::Arc;

use agent_proto::{
    ErrorCode, KeyType, MAX_RANDOM_BYTES, MacTag, Operation, PublicKeyInfo, Response, SecretBytes,
    SignInput, Signature, Verification,
};
use rand::TryRng;
use zeroize::Zeroizing;

use super::{Refusal, Service};
use crate::audit::Subject;
use crate::keystore::{EntropySource, Key, StoreError, Version};
use crate::peer::Peer;
use crate::version_key::{DIGEST_LEN, KeyUseError, VersionKey};

/// Longest signature `Verify` accepts (ML-DSA-65's are 3309 bytes).
pub const MAX_SIGNATURE_LEN: usize = 8 * 1024;
/// Longest tag `VerifyMac` accepts (HMAC-SHA512's are 64 bytes).
pub const MAX_TAG_LEN: usize = 64;
/// Most bytes of data or message an operation on the request's task
/// hashes; more go to the blocking pool.
pub const INLINE_BYTES: usize = 16 * 1024;
/// Bytes of TPM randomness per draw from the random reserve.
const DRAW: usize = 32;

impl Service {
    /// The key named `name` for `op`, after the grant, the key's state and
    /// its type are checked.
    fn typed_key(&self, peer: &Peer, op: Operation, name: &str) -> Result<Arc<Key>, Refusal> {
        self.permit(peer, op, name)?;
        let keys = self.keystore()?.keys();
        let key = keys
            .by_name(name)
            .ok_or_else(|| StoreError::KeyNotFound(name.to_string()))?;
        if op != Operation::PublicKey {
            Self::usable(key)?;
        }
        if !key.key_type().operations().contains(&op) {
            return Err(Refusal::wrong_key_type(key, op));
        }
        Ok(Arc::clone(key))
    }

    /// Refuses data or a message of `len` bytes beyond `max_plaintext`;
    /// `advice` says what to do instead.
    fn check_size(&self, len: usize, what: &str, advice: &str) -> Result<(), Refusal> {
        let max = self.limits.load().max_plaintext;
        if len > max {
            return Err(Refusal::new(
                ErrorCode::PlaintextTooLarge,
                format!(
                    "{what} of {len} bytes exceeds the limit of {max} bytes (max_plaintext); {advice}"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a message beyond `max_plaintext`, with advice that fits the
    /// key's type, and a digest that is not ECDSA P-256's 32 bytes.
    fn check_sign_input(&self, key: &Key, op: Operation, input: &SignInput) -> Result<(), Refusal> {
        match input {
            SignInput::Message(message) => {
                let advice = if key.key_type() == KeyType::EcdsaP256 {
                    format!(
                        "send its {DIGEST_LEN}-byte SHA-256 digest instead (hostkms {op} --digest): an ecdsa-p256 signature of the digest is the signature of the message"
                    )
                } else {
                    format!(
                        "{} keys sign whole messages only; only ecdsa-p256 keys can {op} a SHA-256 digest of a larger message (hostkms {op} --digest)",
                        key.key_type()
                    )
                };
                self.check_size(message.len(), "a message", &advice)
            }
            SignInput::Digest(digest) => {
                let problem = if key.key_type() != KeyType::EcdsaP256 {
                    Some(format!("a key of type {} takes no digest", key.key_type()))
                } else if digest.len() != DIGEST_LEN {
                    Some(format!("the digest is {} bytes long", digest.len()))
                } else {
                    None
                };
                match problem {
                    None => Ok(()),
                    Some(problem) => Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "key \"{}\": {problem}: only ecdsa-p256 keys {op} a pre-hashed digest, and it must be a {DIGEST_LEN}-byte SHA-256 digest; send the message instead",
                            key.name()
                        ),
                    )),
                }
            }
        }
    }

    /// `Mac`: the HMAC tag of `data` under the latest version of `name`.
    pub(super) async fn mac(
        &self,
        peer: &Peer,
        name: &str,
        data: SecretBytes,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let key = self.typed_key(peer, Operation::Mac, name)?;
        self.check_size(
            data.len(),
            "data",
            "mac and verify-mac take at most that much in one request; an admin can raise max_plaintext in the config",
        )?;
        let (version, _) = latest_live(&key)?;
        let version = Arc::clone(version);
        let tagger = Arc::clone(&version);
        let inline = runs_inline(key.key_type(), 1, data.len());
        let tag = run(inline, move || match tagger.key() {
            Some(secret) => secret.mac(data.expose()).map(Some),
            None => Ok(None),
        })
        .await?
        .map_err(|e| use_refusal(&key, e))?
        .ok_or_else(|| no_live_version(&key))?;
        subject.set_version(version.number());
        Ok(Response::Mac(MacTag {
            key: key.name().to_string(),
            version: version.number(),
            tag,
        }))
    }

    /// `VerifyMac`: whether `tag` is the HMAC of `data` under `name`.
    pub(super) async fn verify_mac(
        &self,
        peer: &Peer,
        name: &str,
        data: SecretBytes,
        tag: Vec<u8>,
        version: Option<u32>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let key = self.typed_key(peer, Operation::VerifyMac, name)?;
        self.check_size(
            data.len(),
            "data",
            "mac and verify-mac take at most that much in one request; an admin can raise max_plaintext in the config",
        )?;
        if tag.len() > MAX_TAG_LEN {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a tag of {} bytes is longer than any HMAC tag (at most {MAX_TAG_LEN} bytes); send the tag mac returned",
                    tag.len()
                ),
            ));
        }
        let Candidates { versions, untried } = candidates(&key, version, subject)?;
        let inline = runs_inline(key.key_type(), versions.len(), data.len());
        let matched = run(inline, move || {
            first_match(&versions, |secret| secret.verify_mac(data.expose(), &tag))
        })
        .await?
        .map_err(|e| use_refusal(&key, e))?;
        if matched.is_none() && untried > 0 {
            return Err(untried_versions(&key, untried));
        }
        Ok(verified(&key, matched, subject))
    }

    /// `Sign`: a signature over `input` under the latest version of `name`.
    pub(super) async fn sign(
        &self,
        peer: &Peer,
        name: &str,
        input: SignInput,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let key = self.typed_key(peer, Operation::Sign, name)?;
        self.check_sign_input(&key, Operation::Sign, &input)?;
        let (version, _) = latest_live(&key)?;
        let version = Arc::clone(version);
        let signer = Arc::clone(&version);
        let inline = runs_inline(key.key_type(), 1, input.bytes().len());
        let signature = run(inline, move || match signer.key() {
            Some(secret) => secret.sign(&input).map(Some),
            None => Ok(None),
        })
        .await?
        .map_err(|e| use_refusal(&key, e))?
        .ok_or_else(|| no_live_version(&key))?;
        subject.set_version(version.number());
        Ok(Response::Signature(Signature {
            key: key.name().to_string(),
            version: version.number(),
            signature,
        }))
    }

    /// `Verify`: whether `signature` is `name`'s over `input`.
    pub(super) async fn verify(
        &self,
        peer: &Peer,
        name: &str,
        input: SignInput,
        signature: Vec<u8>,
        version: Option<u32>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let key = self.typed_key(peer, Operation::Verify, name)?;
        self.check_sign_input(&key, Operation::Verify, &input)?;
        if signature.len() > MAX_SIGNATURE_LEN {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a signature of {} bytes is longer than any this daemon makes (at most {MAX_SIGNATURE_LEN} bytes); send the signature sign returned",
                    signature.len()
                ),
            ));
        }
        let Candidates { versions, untried } = candidates(&key, version, subject)?;
        let inline = runs_inline(key.key_type(), versions.len(), input.bytes().len());
        let matched = run(inline, move || {
            first_match(&versions, |secret| secret.verify(&input, &signature))
        })
        .await?
        .map_err(|e| use_refusal(&key, e))?;
        if matched.is_none() && untried > 0 {
            return Err(untried_versions(&key, untried));
        }
        Ok(verified(&key, matched, subject))
    }

    /// `GetPublicKey`: the SubjectPublicKeyInfo of `version` (the latest
    /// when `None`) of the signing key `name`, revoked versions too.
    pub(super) fn public_key(
        &self,
        peer: &Peer,
        name: &str,
        version: Option<u32>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let key = self.typed_key(peer, Operation::PublicKey, name)?;
        let number = version.unwrap_or_else(|| key.latest_version());
        subject.set_version(number);
        let found = key
            .version(number)
            .ok_or_else(|| StoreError::VersionNotFound {
                key: key.name().to_string(),
                version: number,
                latest: key.latest_version(),
            })?;
        let Some(spki_der) = public_key_der(found) else {
            // Every version of a signing key has one; a store without it
            // was damaged past its row MACs.
            return Err(Refusal::new(
                ErrorCode::Internal,
                format!(
                    "the key store holds no public key for version {number} of key \"{}\"",
                    key.name()
                ),
            ));
        };
        Ok(Response::PublicKey(PublicKeyInfo {
            key: key.name().to_string(),
            version: number,
            key_type: key.key_type(),
            revoked: found.is_revoked(),
            spki_der,
        }))
    }

    /// `GenerateRandom`: `bytes` bytes of OS randomness, each XORed with a
    /// byte of TPM randomness from the random reserve (never the one new
    /// key versions draw from). For admins and peers holding any grant
    /// whose ops list `random`, whatever its keys.
    pub(super) async fn random(&self, peer: &Peer, bytes: u16) -> Result<Response, Refusal> {
        if !self.policy.load().allows_random(peer) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "uid {} may not generate random bytes: admins may, and peers holding a [[grant]] whose ops list \"random\"",
                    peer.uid
                ),
            ));
        }
        if bytes == 0 || bytes > MAX_RANDOM_BYTES {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("{bytes} random bytes are not offered; ask for 1 to {MAX_RANDOM_BYTES}"),
            ));
        }
        let Some(source) = self.random.clone() else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "this daemon has no TPM randomness reserve for random bytes",
            ));
        };
        let _turn = self
            .random_gate
            .acquire()
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "the random reserve is closed"))?;
        let mixed = tokio::task::spawn_blocking(move || mix_random(source.as_ref(), bytes))
            .await
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("drawing random bytes did not finish: {e}"),
                )
            })??;
        Ok(Response::Random(mixed))
    }
}

/// `bytes` bytes of OS randomness XOR TPM randomness from `source`, one
/// draw per 32 bytes (a draw's unused rest is wiped, never handed out).
fn mix_random(source: &dyn EntropySource, bytes: u16) -> Result<SecretBytes, Refusal> {
    let mut out = Zeroizing::new(vec![0u8; usize::from(bytes)]);
    rand::rngs::SysRng.try_fill_bytes(&mut out).map_err(|e| {
        Refusal::new(
            ErrorCode::Internal,
            format!("the OS random number generator failed: {e}"),
        )
    })?;
    for chunk in out.chunks_mut(DRAW) {
        let tpm = source.take().map_err(|e| {
            Refusal::new(
                ErrorCode::TpmUnavailable,
                format!("no TPM randomness to mix in: {e}"),
            )
        })?;
        for (byte, mixed) in chunk.iter_mut().zip(tpm.iter()) {
            *byte ^= mixed;
        }
    }
    Ok(SecretBytes::new(std::mem::take(&mut *out)))
}

/// The public key of `version`, which the store keeps in clear (it is
/// public) for revoked versions too.
fn public_key_der(version: &Version) -> Option<Vec<u8>> {
    version.public_key_der().map(<[u8]>::to_vec)
}

/// The latest version of an enabled key and its secret. An enabled key's
/// latest version is always live (revoking it first adds a new one).
fn latest_live(key: &Key) -> Result<(&Arc<Version>, &VersionKey), Refusal> {
    key.latest()
        .and_then(|version| version.key().map(|secret| (version, secret)))
        .ok_or_else(|| no_live_version(key))
}

fn no_live_version(key: &Key) -> Refusal {
    Refusal::new(
        ErrorCode::Internal,
        format!(
            "key \"{}\" has no live latest version; rotate it",
            key.name()
        ),
    )
}

/// Most versions one check without a named version tries: a peer holding
/// only `verify` could otherwise make every request cost as many
/// signature checks as the key has versions (an ML-DSA key of 200 versions:
/// about a second of CPU each).
pub const MAX_VERSIONS_TRIED: usize = 8;

/// The versions a check tries, and how many live versions it leaves
/// untried beyond [`MAX_VERSIONS_TRIED`].
struct Candidates {
    versions: Vec<Arc<Version>>,
    untried: usize,
}

/// The versions a check tries: `version` alone when given (refused when
/// missing, revoked or below the minimum decryption version), else the
/// [`MAX_VERSIONS_TRIED`] newest live versions at or above the minimum,
/// newest first. `subject` learns a given version.
fn candidates(
    key: &Key,
    version: Option<u32>,
    subject: &mut Subject,
) -> Result<Candidates, Refusal> {
    let Some(number) = version else {
        let min = key.min_decryption_version();
        let mut live = (min.max(1)..=key.latest_version())
            .rev()
            .filter_map(|n| key.version(n))
            .filter(|v| !v.is_revoked());
        let versions: Vec<_> = live.by_ref().take(MAX_VERSIONS_TRIED).cloned().collect();
        return Ok(Candidates {
            versions,
            untried: live.count(),
        });
    };
    subject.set_version(number);
    let found = key
        .version(number)
        .ok_or_else(|| StoreError::VersionNotFound {
            key: key.name().to_string(),
            version: number,
            latest: key.latest_version(),
        })?;
    if found.is_revoked() {
        return Err(Refusal::new(
            ErrorCode::VersionRevoked,
            format!("version {number} of key \"{}\" is revoked", key.name()),
        ));
    }
    if number < key.min_decryption_version() {
        return Err(Refusal::new(
            ErrorCode::VersionRevoked,
            format!(
                "version {number} of key \"{}\" is below its minimum decryption version {}",
                key.name(),
                key.min_decryption_version()
            ),
        ));
    }
    Ok(Candidates {
        versions: vec![Arc::clone(found)],
        untried: 0,
    })
}

/// A check that matched none of the versions it tried while older live
/// versions were left untried: the caller must name the version.
fn untried_versions(key: &Key, untried: usize) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidArgument,
        format!(
            "no match under the {MAX_VERSIONS_TRIED} newest live versions of key \"{}\", and {untried} older live {} not tried (one request tries at most {MAX_VERSIONS_TRIED}); name the version to check (--version N, or the request's version field), or retire old versions with min-decryption-version",
            key.name(),
            if untried == 1 {
                "version was"
            } else {
                "versions were"
            }
        ),
    )
}

/// The number of the first of `candidates` whose secret `check` accepts.
fn first_match(
    candidates: &[Arc<Version>],
    check: impl Fn(&VersionKey) -> Result<bool, KeyUseError>,
) -> Result<Option<u32>, KeyUseError> {
    for version in candidates {
        if let Some(secret) = version.key()
            && check(secret)?
        {
            return Ok(Some(version.number()));
        }
    }
    Ok(None)
}

/// The answer to a check: valid with the version that matched, or not.
fn verified(key: &Key, matched: Option<u32>, subject: &mut Subject) -> Response {
    if let Some(number) = matched {
        subject.set_version(number);
    }
    subject.set_verified(matched.is_some());
    Response::Verified(Verification {
        key: key.name().to_string(),
        valid: matched.is_some(),
        version: matched,
    })
}

/// The refusal for an operation the key version would not perform (the
/// checks before make each of these unexpected).
fn use_refusal(key: &Key, error: KeyUseError) -> Refusal {
    let code = match error {
        KeyUseError::WrongKeyType { .. } => ErrorCode::WrongKeyType,
        KeyUseError::Digest(_) => ErrorCode::InvalidArgument,
        KeyUseError::Signer(_) => ErrorCode::Internal,
    };
    Refusal::new(code, format!("key \"{}\": {error}", key.name()))
}

/// Whether an operation of `key_type` over `len` bytes with `versions`
/// versions is short enough (about 100 µs at most) for the request's task:
/// up to three MACs, or one Ed25519 signature or check, over at most
/// [`INLINE_BYTES`].
pub fn runs_inline(key_type: KeyType, versions: usize, len: usize) -> bool {
    let cost = match key_type {
        KeyType::HmacSha256 | KeyType::HmacSha512 => 1,
        KeyType::Ed25519 => 3,
        _ => return false,
    };
    len <= INLINE_BYTES && versions.saturating_mul(cost) <= 3
}

/// Runs `work` here when `inline`, else on the blocking pool.
async fn run<T: Send + 'static>(
    inline: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refusal> {
    if inline {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        Refusal::new(
            ErrorCode::Internal,
            format!("the cryptographic operation did not finish: {e}"),
        )
    })
}
