//! The key store's rollback counter: one TPM NV index of type
//! `TPM_NT_COUNTER` per store, which only ever counts up.
//!
//! The index lives in the owner hierarchy, in the range
//! [`NV_COUNTER_FIRST`]..=[`NV_COUNTER_LAST`]. Defining it takes the owner
//! authorization, which hostkms expects to be empty (as on swtpm and on
//! typical hosts, where nobody took ownership with a password); a host
//! whose owner authorization is set cannot define it, and says so.
//!
//! Its attributes: `AUTHWRITE` and `AUTHREAD` (reading and counting need
//! the index's own authorization value, 32 random bytes the key store keeps
//! sealed under the root key, so no other process with access to the TPM
//! can count it up and lock the daemon out), `NO_DA` (a wrong value never
//! pushes the TPM towards dictionary-attack lockout) and **not** `ORDERLY`
//! (an orderly counter jumps ahead after every unclean shutdown, which
//! would look like a rollback after each power cut). The owner can still
//! delete it (`tpm2_nvundefine`), which the key store notices at start.
//!
//! A counter has no value until its first increment, which sets it to the
//! largest value any counter on that TPM ever had: its first value is
//! whatever the TPM starts it at, never assumed to be 0.
//!
//! `TPM_RC_NV_RATE` (the TPM throttling NV writes to spare its flash) is
//! retried a bounded number of times with back-off.

use std::time::Duration;

use tss_esapi::attributes::{NvIndexAttributes, NvIndexAttributesBuilder};
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Kind;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::{Auth, CapabilityData, NvPublicBuilder};

use super::{Tpm, TpmError, describe, worker};

/// First NV index hostkms may define for a store's counter.
pub const NV_COUNTER_FIRST: u32 = 0x0100_4B00;
/// Last NV index hostkms may define for a store's counter.
pub const NV_COUNTER_LAST: u32 = 0x0100_4BFF;

/// Length of the counter's authorization value.
pub const NV_AUTH_LEN: usize = 32;

/// How many times a command the TPM answered `TPM_RC_NV_RATE` (or
/// `TPM_RC_RETRY`) is tried in all.
const RATE_TRIES: u32 = 5;
/// The first back-off after `TPM_RC_NV_RATE`; doubled after each.
const RATE_BACKOFF: Duration = Duration::from_millis(100);

/// Why the rollback counter could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NvCounterError {
    /// The index recorded in the key store is not defined in the TPM.
    #[error(
        "the TPM has no NV index {index:#010x}, the rollback counter this key store is bound to: it was deleted (tpm2_nvundefine), the TPM was cleared, or this is another TPM. hostkmsd does not define it again by itself, since a new counter would hide a rollback"
    )]
    Missing {
        /// The NV index.
        index: u32,
    },
    /// The index exists but is not the counter hostkms defined.
    #[error(
        "NV index {index:#010x} is not the rollback counter hostkms defined ({problem}): something else defined an index there after hostkms's was deleted"
    )]
    Attributes {
        /// The NV index.
        index: u32,
        /// What differs.
        problem: String,
    },
    /// The index refused the authorization value the store keeps.
    #[error(
        "NV index {index:#010x} refuses the authorization value this key store keeps for it: it was deleted and defined again by someone else"
    )]
    AuthFailed {
        /// The NV index.
        index: u32,
    },
    /// Every index of hostkms's range is taken.
    #[error(
        "every NV index from {NV_COUNTER_FIRST:#010x} to {NV_COUNTER_LAST:#010x} is defined already; hostkms needs one of them for its rollback counter. List them with `tpm2_getcap handles-nv-index` and delete those of stores that no longer exist with `tpm2_nvundefine`"
    )]
    NoFreeIndex,
    /// The TPM has no room for another NV index.
    #[error(
        "the TPM has no NV space left for the key store's rollback counter ({detail}); see how much is left with `tpm2_getcap properties-variable` (TPM2_PT_NV_INDEX_MAX and the NV memory) and which indices use it with `tpm2_getcap handles-nv-index`, then free an index that is no longer needed with `tpm2_nvundefine`"
    )]
    NoSpace {
        /// The TPM's answer.
        detail: String,
    },
    /// The owner hierarchy refused to define the index.
    #[error(
        "the TPM refused to define the rollback counter with the empty owner authorization ({detail}); hostkms defines its counter in the owner hierarchy and needs the owner authorization to be empty, as it is unless someone took ownership with a password (tpm2_changeauth -c o)"
    )]
    OwnerAuth {
        /// The TPM's answer.
        detail: String,
    },
    /// Any other TPM failure.
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

/// The attributes of hostkms's counter: a counter, AUTHWRITE, AUTHREAD,
/// NO_DA; never ORDERLY, never owner- or policy-writable.
fn counter_attributes() -> tss_esapi::Result<NvIndexAttributes> {
    NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_auth_write(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
}

/// TPMA_NV bits that record the index's state rather than how it was
/// defined: TPMA_NV_WRITELOCKED, TPMA_NV_READLOCKED, TPMA_NV_WRITTEN.
const STATE_BITS: u32 = (1 << 11) | (1 << 28) | (1 << 29);

/// The attribute bits an index was defined with (the state bits cleared),
/// for comparing a found index with the one hostkms defines.
fn defining_bits(attributes: NvIndexAttributes) -> u32 {
    tss_esapi::tss2_esys::TPMA_NV::try_from(attributes).map_or(u32::MAX, |raw| raw & !STATE_BITS)
}

fn handle(index: u32) -> Result<NvIndexTpmHandle, NvCounterError> {
    NvIndexTpmHandle::new(index).map_err(|source| {
        NvCounterError::Tpm(TpmError::Command {
            step: "naming the NV index",
            source,
        })
    })
}

fn kind(error: &tss_esapi::Error) -> Option<Kind> {
    match error {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// Runs `attempt`, trying again after `sleep`ing with doubling back-off
/// while the TPM answers `TPM_RC_NV_RATE` or `TPM_RC_RETRY`, at most
/// [`RATE_TRIES`] times in all; then its last answer stands.
fn retry_nv_rate<T>(
    mut attempt: impl FnMut() -> tss_esapi::Result<T>,
    mut sleep: impl FnMut(Duration),
) -> tss_esapi::Result<T> {
    let mut backoff = RATE_BACKOFF;
    let mut tries = 1;
    loop {
        match attempt() {
            Err(error)
                if tries < RATE_TRIES
                    && matches!(kind(&error), Some(Kind::NvRate | Kind::Retry)) =>
            {
                tracing::debug!(
                    "the TPM throttles NV writes ({}); retrying",
                    describe(&error)
                );
                sleep(backoff);
                backoff *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

impl Tpm {
    /// Runs `command`, trying again with back-off while the TPM answers
    /// `TPM_RC_NV_RATE` or `TPM_RC_RETRY`, at most [`RATE_TRIES`] times.
    fn nv_retrying<T>(
        &mut self,
        mut command: impl FnMut(&mut tss_esapi::Context) -> tss_esapi::Result<T>,
    ) -> tss_esapi::Result<T> {
        let context = &mut self.context;
        retry_nv_rate(
            || {
                let result = command(context);
                worker::answered();
                result
            },
            std::thread::sleep,
        )
    }

    /// Opens the defined index `index`, or says it is missing.
    fn nv_open(&mut self, index: u32) -> Result<NvIndexHandle, NvCounterError> {
        let tpm_handle = TpmHandle::NvIndex(handle(index)?);
        let opened = self
            .context
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle));
        worker::answered();
        match opened {
            Ok(object) => Ok(NvIndexHandle::from(object)),
            Err(error) if matches!(kind(&error), Some(Kind::Handle)) => {
                Err(NvCounterError::Missing { index })
            }
            Err(source) => Err(NvCounterError::Tpm(TpmError::Command {
                step: "NV_ReadPublic (of the rollback counter)",
                source,
            })),
        }
    }

    /// Opens index `index`, checks that it is hostkms's counter, and sets
    /// `auth` as its authorization value for what follows.
    fn nv_open_counter(
        &mut self,
        index: u32,
        auth: &[u8],
    ) -> Result<NvIndexHandle, NvCounterError> {
        let nv = self.nv_open(index)?;
        let (public, _name) = self
            .nv_retrying(|ctx| ctx.nv_read_public(nv))
            .map_err(|source| TpmError::Command {
                step: "NV_ReadPublic (of the rollback counter)",
                source,
            })?;
        let expected = counter_attributes().map_err(|source| TpmError::Command {
            step: "building the rollback counter's attributes",
            source,
        })?;
        let found = public.attributes();
        if defining_bits(found) != defining_bits(expected) {
            return Err(NvCounterError::Attributes {
                index,
                problem: format!(
                    "its attributes are {:#010x}, hostkms's counter has {:#010x}",
                    defining_bits(found),
                    defining_bits(expected)
                ),
            });
        }
        if public.data_size() != 8 {
            return Err(NvCounterError::Attributes {
                index,
                problem: format!("it holds {} bytes, not 8", public.data_size()),
            });
        }
        if public.name_algorithm() != HashingAlgorithm::Sha256 {
            return Err(NvCounterError::Attributes {
                index,
                problem: "its name algorithm is not SHA-256".to_string(),
            });
        }
        let auth = Auth::try_from(auth.to_vec()).map_err(|source| TpmError::Command {
            step: "preparing the rollback counter's authorization",
            source,
        })?;
        self.context
            .tr_set_auth(nv.into(), auth)
            .map_err(|source| TpmError::Command {
                step: "setting the rollback counter's authorization",
                source,
            })?;
        Ok(nv)
    }

    /// Maps an authorization failure on `index` to [`NvCounterError::AuthFailed`].
    fn nv_auth_error(
        index: u32,
        step: &'static str,
    ) -> impl FnOnce(tss_esapi::Error) -> NvCounterError {
        move |source| match kind(&source) {
            Some(Kind::AuthFail | Kind::BadAuth) => NvCounterError::AuthFailed { index },
            _ => NvCounterError::Tpm(TpmError::Command { step, source }),
        }
    }

    fn nv_read_counter(&mut self, index: u32, nv: NvIndexHandle) -> Result<u64, NvCounterError> {
        let data = self
            .nv_retrying(|ctx| ctx.nv_read(NvAuth::NvIndex(nv), nv, 8, 0))
            .map_err(Self::nv_auth_error(
                index,
                "NV_Read (of the rollback counter)",
            ))?;
        let bytes: [u8; 8] = data.value().try_into().map_err(|_| TpmError::BadAnswer {
            step: "NV_Read (of the rollback counter)",
            problem: format!("{} bytes, not 8", data.value().len()),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// The indices of hostkms's range that are defined, from the TPM's
    /// list of NV indices.
    pub fn nv_counters_defined(&mut self) -> Result<Vec<u32>, NvCounterError> {
        let mut taken = Vec::new();
        let mut from = NV_COUNTER_FIRST;
        // At most 256 handles in the range; a TPM answers in pages.
        for _ in 0..=256 {
            let (data, more) = self
                .context
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, from, 64)
                })
                .map_err(|source| TpmError::Command {
                    step: "GetCapability (NV indices)",
                    source,
                })?;
            worker::answered();
            let CapabilityData::Handles(list) = data else {
                return Err(TpmError::BadAnswer {
                    step: "GetCapability (NV indices)",
                    problem: "something other than a handle list".to_string(),
                }
                .into());
            };
            let handles: Vec<u32> = list.into_inner().into_iter().map(u32::from).collect();
            let Some(&last) = handles.last() else {
                break;
            };
            taken.extend(
                handles
                    .iter()
                    .copied()
                    .filter(|h| (NV_COUNTER_FIRST..=NV_COUNTER_LAST).contains(h)),
            );
            if !more || last >= NV_COUNTER_LAST {
                break;
            }
            from = last + 1;
        }
        Ok(taken)
    }

    /// The first index of hostkms's range that is not defined.
    fn nv_first_free(&mut self) -> Result<u32, NvCounterError> {
        let taken = self.nv_counters_defined()?;
        (NV_COUNTER_FIRST..=NV_COUNTER_LAST)
            .find(|index| !taken.contains(index))
            .ok_or(NvCounterError::NoFreeIndex)
    }

    /// Defines a new rollback counter at the first free index of
    /// hostkms's range, with authorization value `auth`, counts it once
    /// (which gives it its first value) and returns the index and that value.
    pub fn nv_counter_define(&mut self, auth: &[u8]) -> Result<(u32, u64), NvCounterError> {
        let index = self.nv_first_free()?;
        let attributes = counter_attributes().map_err(|source| TpmError::Command {
            step: "building the rollback counter's attributes",
            source,
        })?;
        let public = NvPublicBuilder::new()
            .with_nv_index(handle(index)?)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .map_err(|source| TpmError::Command {
                step: "building the rollback counter's public area",
                source,
            })?;
        let value = Auth::try_from(auth.to_vec()).map_err(|source| TpmError::Command {
            step: "preparing the rollback counter's authorization",
            source,
        })?;
        let nv = self
            .nv_retrying(|ctx| {
                ctx.nv_define_space(Provision::Owner, Some(value.clone()), public.clone())
            })
            .map_err(|source| match kind(&source) {
                Some(Kind::NvSpace | Kind::Memory) => NvCounterError::NoSpace {
                    detail: describe(&source),
                },
                Some(
                    Kind::AuthFail | Kind::BadAuth | Kind::AuthMissing | Kind::AuthUnavailable,
                ) => NvCounterError::OwnerAuth {
                    detail: describe(&source),
                },
                Some(Kind::NvDefined) => NvCounterError::Tpm(TpmError::BadAnswer {
                    step: "NV_DefineSpace (of the rollback counter)",
                    problem: format!(
                        "index {index:#010x} defined meanwhile by another program; start again"
                    ),
                }),
                _ => NvCounterError::Tpm(TpmError::Command {
                    step: "NV_DefineSpace (of the rollback counter)",
                    source,
                }),
            })?;
        // ESAPI keeps the authorization value given at definition with the
        // new handle, so the increment below is authorized with it.
        self.nv_retrying(|ctx| ctx.nv_increment(NvAuth::NvIndex(nv), nv))
            .map_err(Self::nv_auth_error(
                index,
                "NV_Increment (of the rollback counter)",
            ))?;
        let first = self.nv_read_counter(index, nv)?;
        Ok((index, first))
    }

    /// The value of rollback counter `index`, read with authorization
    /// `auth` (which so is checked too).
    pub fn nv_counter_read(&mut self, index: u32, auth: &[u8]) -> Result<u64, NvCounterError> {
        let nv = self.nv_open_counter(index, auth)?;
        self.nv_read_counter(index, nv)
    }

    /// Counts rollback counter `index` up by one while it is below
    /// `target`, and returns its value after: never beyond `target`, so an
    /// increment retried after a lost answer does not count twice.
    pub fn nv_counter_raise(
        &mut self,
        index: u32,
        auth: &[u8],
        target: u64,
    ) -> Result<u64, NvCounterError> {
        let nv = self.nv_open_counter(index, auth)?;
        let value = self.nv_read_counter(index, nv)?;
        if value >= target {
            return Ok(value);
        }
        self.nv_retrying(|ctx| ctx.nv_increment(NvAuth::NvIndex(nv), nv))
            .map_err(Self::nv_auth_error(
                index,
                "NV_Increment (of the rollback counter)",
            ))?;
        self.nv_read_counter(index, nv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_never_orderly_and_always_needs_its_own_auth() {
        let attributes = counter_attributes().expect("attributes");
        assert_eq!(attributes.index_type().expect("type"), NvIndexType::Counter);
        assert!(!attributes.orderly());
        assert!(attributes.no_da());
        assert!(attributes.auth_write() && attributes.auth_read());
        assert!(!attributes.owner_write() && !attributes.policy_write());
        assert!(!attributes.pp_write());
    }

    fn rc(raw: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(tss_esapi::constants::response_code::Tss2ResponseCode::from(
            raw,
        ))
    }

    #[test]
    fn nv_rate_is_retried_with_back_off_a_bounded_number_of_times() {
        const NV_RATE: u32 = 0x920;
        // Throttled twice, then counted.
        let mut answers = vec![Err(rc(NV_RATE)), Err(rc(NV_RATE)), Ok(7)].into_iter();
        let mut slept = Vec::new();
        let result = retry_nv_rate(|| answers.next().unwrap_or(Ok(0)), |wait| slept.push(wait));
        assert_eq!(result.ok(), Some(7));
        assert_eq!(slept, [RATE_BACKOFF, RATE_BACKOFF * 2]);

        // Throttled for good: the last answer stands after RATE_TRIES tries.
        let mut tries = 0;
        let mut slept = Vec::new();
        let result: tss_esapi::Result<()> = retry_nv_rate(
            || {
                tries += 1;
                Err(rc(NV_RATE))
            },
            |wait| slept.push(wait),
        );
        assert!(matches!(kind(&result.unwrap_err()), Some(Kind::NvRate)));
        assert_eq!(tries, RATE_TRIES);
        assert_eq!(slept.len() as u32, RATE_TRIES - 1);
        assert!(slept.iter().sum::<Duration>() < Duration::from_secs(5));

        // Anything else is not retried.
        let mut tries = 0;
        let result: tss_esapi::Result<()> = retry_nv_rate(
            || {
                tries += 1;
                Err(rc(0x98e)) // TPM_RC_AUTH_FAIL
            },
            |_| panic!("slept"),
        );
        assert!(result.is_err());
        assert_eq!(tries, 1);
    }

    #[test]
    fn state_bits_do_not_count_when_comparing() {
        let expected = counter_attributes().expect("attributes");
        let written = NvIndexAttributesBuilder::with_attributes(expected)
            .with_written(true)
            .build()
            .expect("written");
        assert_eq!(defining_bits(written), defining_bits(expected));
        let orderly = NvIndexAttributesBuilder::with_attributes(expected)
            .with_orderly(true)
            .build()
            .expect("orderly");
        assert_ne!(defining_bits(orderly), defining_bits(expected));
    }
}
