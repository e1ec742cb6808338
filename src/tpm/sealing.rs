//! Sealing a secret behind the machine's boot state (a PCR policy) or a
//! PIN (the object's authValue), and unsealing it again.
//!
//! A PCR-bound object's authPolicy is PolicyPCR over the sha256 bank: it
//! unseals only while the selected PCRs hold the values they had when it
//! was sealed (the values are given, not read by the TPM, so the record
//! the caller keeps and the policy agree). Its userWithAuth is clear, so no
//! password opens it, and it is noDA like its parent.
//!
//! A PIN-protected object has the PIN as its authValue and is *not* noDA:
//! the TPM counts every wrong PIN towards dictionary-attack lockout, which
//! is the only rate limit. The PIN is only ever used through the salted,
//! parameter-encrypting HMAC session of [`Tpm`] (never PolicyPassword, and
//! never as a plain password session), so it never crosses the TPM
//! interface in clear: Create carries it in the encrypted sensitive area,
//! Unseal proves it with an HMAC keyed by it.

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{PropertyTag, SessionType};
use tss_esapi::handles::ObjectHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    Auth, Digest, KeyedHashScheme, PcrSelectionList, PcrSlot, PublicBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition,
};
use zeroize::Zeroizing;

use super::{SealedBlobs, Tpm, TpmError, worker};

/// The highest PCR index hostkms binds to (PC client TPMs have 24).
pub const MAX_PCR: u8 = 23;

/// One sha256 PCR and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValue {
    /// The PCR index, 0..=[`MAX_PCR`].
    pub pcr: u8,
    /// Its sha256 bank value.
    pub sha256: [u8; 32],
}

/// How a sealed object is protected, beyond the TPM it is sealed to. Its
/// `Debug` never shows the PIN.
#[derive(Clone, Copy)]
pub enum Protection<'a> {
    /// Nothing more: anyone who reaches the TPM with the blobs unseals it
    /// (the mode without PCRs and PIN, as before 0.14).
    Plain,
    /// A PolicyPCR over these PCRs with these values.
    Pcrs(&'a [PcrValue]),
    /// The PIN as authValue, dictionary-attack protected.
    Pin(&'a [u8]),
}

impl std::fmt::Debug for Protection<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::Plain => f.write_str("Plain"),
            Protection::Pcrs(values) => f.debug_tuple("Pcrs").field(values).finish(),
            Protection::Pin(_) => f.write_str("Pin(<redacted>)"),
        }
    }
}

/// The TPM's dictionary-attack state: what a wrong PIN costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DictionaryAttack {
    /// Failures counted now (TPM_PT_LOCKOUT_COUNTER).
    pub failures: u32,
    /// Failures at which the TPM locks out (TPM_PT_MAX_AUTH_FAIL).
    pub max_failures: u32,
    /// Seconds after which the TPM forgets one failure
    /// (TPM_PT_LOCKOUT_INTERVAL): an upper bound on the wait in lockout.
    pub interval_secs: u32,
}

impl DictionaryAttack {
    /// Tries left before lockout (0: locked out).
    pub fn tries_left(&self) -> u32 {
        self.max_failures.saturating_sub(self.failures)
    }
}

/// The selection of `pcrs` in the sha256 bank.
fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&pcr| {
            if pcr > MAX_PCR {
                return Err(TpmError::BadAnswer {
                    step: "selecting PCRs",
                    problem: format!("PCR {pcr} is out of range 0..={MAX_PCR}"),
                });
            }
            PcrSlot::try_from(1u32 << pcr).map_err(TpmError::command("selecting PCRs"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(TpmError::command("selecting PCRs"))
}

/// The digest PolicyPCR compares: sha256 over the values in PCR order.
fn pcr_digest(values: &[PcrValue]) -> Result<Digest, TpmError> {
    let mut sorted: Vec<&PcrValue> = values.iter().collect();
    sorted.sort_by_key(|value| value.pcr);
    let mut hash = Sha256::new();
    for value in sorted {
        hash.update(value.sha256);
    }
    Digest::try_from(hash.finalize().to_vec()).map_err(TpmError::command("hashing PCR values"))
}

impl Tpm {
    /// The current sha256 values of `pcrs`, in the order given.
    pub fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<Vec<PcrValue>, TpmError> {
        let mut values = Vec::with_capacity(pcrs.len());
        for &pcr in pcrs {
            // One PCR per read: a TPM returns at most eight per call, and
            // leaves out those it does not have.
            let selected = selection(&[pcr])?;
            let (_, _, digests) = self
                .context
                .execute_without_session(|ctx| ctx.pcr_read(selected))
                .map_err(TpmError::command("PCR_Read"))?;
            worker::answered();
            let digest = digests.value().first().ok_or_else(|| TpmError::BadAnswer {
                step: "PCR_Read",
                problem: format!("no value for sha256 PCR {pcr} (is the sha256 bank allocated?)"),
            })?;
            let sha256: [u8; 32] = digest.value().try_into().map_err(|_| TpmError::BadAnswer {
                step: "PCR_Read",
                problem: format!("a {}-byte value for sha256 PCR {pcr}", digest.value().len()),
            })?;
            values.push(PcrValue { pcr, sha256 });
        }
        Ok(values)
    }

    /// The TPM's dictionary-attack counter, threshold and interval.
    pub fn dictionary_attack(&mut self) -> Result<DictionaryAttack, TpmError> {
        let mut property = |tag: PropertyTag| -> Result<u32, TpmError> {
            let value = self
                .context
                .execute_without_session(|ctx| ctx.get_tpm_property(tag))
                .map_err(TpmError::command("GetCapability (dictionary-attack state)"))?;
            worker::answered();
            value.ok_or_else(|| TpmError::BadAnswer {
                step: "GetCapability (dictionary-attack state)",
                problem: format!("no value for {tag:?}"),
            })
        };
        Ok(DictionaryAttack {
            failures: property(PropertyTag::LockoutCounter)?,
            max_failures: property(PropertyTag::MaxAuthFail)?,
            interval_secs: property(PropertyTag::LockoutInterval)?,
        })
    }

    /// Seals `secret` under the storage primary with `protection`; returns
    /// the blobs.
    pub fn seal_protected(
        &mut self,
        secret: &[u8],
        protection: Protection<'_>,
    ) -> Result<SealedBlobs, TpmError> {
        let (policy, auth) = match protection {
            Protection::Plain => (None, None),
            Protection::Pcrs(values) => (Some(self.pcr_policy_digest(values)?), None),
            Protection::Pin(pin) => (
                None,
                Some(Auth::try_from(pin.to_vec()).map_err(TpmError::command("preparing the PIN"))?),
            ),
        };
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            // A policy-bound copy opens by its policy alone.
            .with_user_with_auth(policy.is_none())
            // Only the PIN copy is worth a dictionary attack: the others
            // have no secret authorization to guess.
            .with_no_da(auth.is_none())
            .build()
            .map_err(TpmError::command("building the sealed object's attributes"))?;
        let mut public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default());
        if let Some(policy) = policy {
            public = public.with_auth_policy(policy);
        }
        let public = public
            .build()
            .map_err(TpmError::command("building the sealed object's template"))?;
        let data = SensitiveData::try_from(secret.to_vec())
            .map_err(TpmError::command("preparing the secret to seal"))?;
        let created = self
            .context
            .create(self.primary.handle, public, auth, Some(data), None, None)
            .map_err(TpmError::command("Create (sealing the root key)"))?;
        worker::answered();
        SealedBlobs::from_tpm(created.out_public, &created.out_private).map_err(|e| {
            TpmError::BadAnswer {
                step: "Create",
                problem: e.to_string(),
            }
        })
    }

    /// The policy digest of PolicyPCR over `values`, computed by the TPM in
    /// a trial session: what a copy sealed to them has as authPolicy.
    pub fn pcr_policy_digest(&mut self, values: &[PcrValue]) -> Result<Digest, TpmError> {
        let pcrs: Vec<u8> = values.iter().map(|value| value.pcr).collect();
        let trial = self
            .context
            .execute_without_session(|ctx| {
                ctx.start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Trial,
                    SymmetricDefinition::Null,
                    HashingAlgorithm::Sha256,
                )
            })
            .map_err(TpmError::command("StartAuthSession (trial)"))?
            .ok_or_else(|| TpmError::BadAnswer {
                step: "StartAuthSession (trial)",
                problem: "no session handle".to_string(),
            })?;
        let trial = PolicySession::try_from(trial)
            .map_err(TpmError::command("StartAuthSession (trial)"))?;
        let digest = pcr_digest(values)?;
        let selected = selection(&pcrs)?;
        let computed = self.context.execute_without_session(|ctx| {
            ctx.policy_pcr(trial, digest, selected)?;
            ctx.policy_get_digest(trial)
        });
        let flushed = self.context.flush_context(ObjectHandle::from(
            tss_esapi::handles::SessionHandle::from(trial),
        ));
        let computed = computed.map_err(TpmError::command("PolicyPCR (trial)"))?;
        flushed.map_err(TpmError::command("FlushContext (of the trial session)"))?;
        worker::answered();
        Ok(computed)
    }

    /// Loads a PCR-bound copy and unseals it in a policy session that
    /// satisfies PolicyPCR over `pcrs` with their current values. Fails
    /// with [`TpmError::PcrPolicy`] (cause [`super::Cause::PcrMismatch`])
    /// when they changed.
    pub fn unseal_with_pcrs(
        &mut self,
        blobs: &SealedBlobs,
        pcrs: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let object = self.load_sealed(blobs)?;
        let unsealed = self.policy_unseal(object, pcrs);
        let flushed = self.context.flush_context(ObjectHandle::from(object));
        let secret = unsealed?;
        flushed.map_err(TpmError::command("FlushContext (of the sealed root key)"))?;
        Ok(secret)
    }

    fn policy_unseal(
        &mut self,
        object: tss_esapi::handles::KeyHandle,
        pcrs: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        // Salted with the primary and encrypting responses, like the HMAC
        // session: the unsealed secret comes back encrypted.
        let session = self
            .context
            .execute_without_session(|ctx| {
                ctx.start_auth_session(
                    Some(self.primary.handle),
                    None,
                    None,
                    SessionType::Policy,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
            })
            .map_err(TpmError::command("StartAuthSession (policy, salted)"))?
            .ok_or_else(|| TpmError::BadAnswer {
                step: "StartAuthSession (policy)",
                problem: "no session handle".to_string(),
            })?;
        worker::answered();
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_encrypt(true)
            .with_continue_session(false)
            .build();
        let result = (|| {
            self.context
                .tr_sess_set_attributes(session, attributes, mask)
                .map_err(TpmError::command(
                    "setting the policy session's encryption attributes",
                ))?;
            let policy = PolicySession::try_from(session)
                .map_err(TpmError::command("StartAuthSession (policy)"))?;
            let selected = selection(pcrs)?;
            self.context
                .execute_without_session(|ctx| ctx.policy_pcr(policy, Digest::default(), selected))
                .map_err(TpmError::pcr_policy("PolicyPCR"))?;
            worker::answered();
            let secret = self
                .context
                .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
                .map_err(TpmError::pcr_policy(
                    "Unseal (of the PCR-bound copy of the root key)",
                ))?;
            worker::answered();
            Ok(Zeroizing::new(secret.value().to_vec()))
        })();
        if result.is_err() {
            // An Unseal that succeeded ends the session (continueSession
            // clear); one that failed, or never ran, leaves it to flush.
            let _ = self.context.flush_context(ObjectHandle::from(
                tss_esapi::handles::SessionHandle::from(session),
            ));
        }
        result
    }

    /// Loads a PIN-protected copy and unseals it with `pin` as its
    /// authValue, in the salted HMAC session. A wrong PIN fails with
    /// [`TpmError::PinObject`] (cause [`super::Cause::WrongPin`]) and
    /// counts towards the TPM's lockout; in lockout the TPM refuses before
    /// checking the PIN (cause [`super::Cause::Lockout`]).
    pub fn unseal_with_pin(
        &mut self,
        blobs: &SealedBlobs,
        pin: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let object = self.load_sealed(blobs)?;
        let unsealed = Auth::try_from(pin.to_vec())
            .map_err(TpmError::command("preparing the PIN"))
            .and_then(|auth| {
                self.context
                    .tr_set_auth(object.into(), auth)
                    .map_err(TpmError::command("setting the PIN on the loaded object"))
            })
            .and_then(|()| {
                self.context
                    .unseal(object.into())
                    .map_err(TpmError::pin_object(
                        "Unseal (of the PIN-protected copy of the root key)",
                    ))
            });
        let flushed = self.context.flush_context(ObjectHandle::from(object));
        let secret = unsealed?;
        worker::answered();
        flushed.map_err(TpmError::command("FlushContext (of the sealed root key)"))?;
        Ok(Zeroizing::new(secret.value().to_vec()))
    }

    pub(super) fn load_sealed(
        &mut self,
        blobs: &SealedBlobs,
    ) -> Result<tss_esapi::handles::KeyHandle, TpmError> {
        let (public, private) = blobs.to_tpm().map_err(|e| TpmError::BadAnswer {
            step: "Load",
            problem: e.to_string(),
        })?;
        let object = self
            .context
            .load(self.primary.handle, private, public)
            .map_err(TpmError::sealed_object("Load (of the sealed root key)"))?;
        worker::answered();
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pcr_digest_is_over_the_values_in_pcr_order() {
        let a = PcrValue {
            pcr: 7,
            sha256: [7; 32],
        };
        let b = PcrValue {
            pcr: 14,
            sha256: [14; 32],
        };
        let forward = pcr_digest(&[a.clone(), b.clone()]).unwrap();
        let backward = pcr_digest(&[b, a]).unwrap();
        assert_eq!(forward, backward);
        let mut expected = Sha256::new();
        expected.update([7u8; 32]);
        expected.update([14u8; 32]);
        assert_eq!(forward.value(), expected.finalize().as_slice());
    }

    #[test]
    fn a_pin_protection_never_shows_the_pin() {
        let shown = format!("{:?}", Protection::Pin(b"Pq7-zK2!mW9x"));
        assert_eq!(shown, "Pin(<redacted>)");
    }

    #[test]
    fn pcrs_beyond_23_are_refused() {
        assert!(selection(&[24]).is_err());
        assert!(selection(&[0, 23]).is_ok());
    }

    #[test]
    fn tries_left_never_underflow() {
        let state = DictionaryAttack {
            failures: 5,
            max_failures: 3,
            interval_secs: 10,
        };
        assert_eq!(state.tries_left(), 0);
    }
}
