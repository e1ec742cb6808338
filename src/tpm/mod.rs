//! Everything that speaks to the TPM (tss-esapi): the storage primary,
//! sealing and unsealing the root key, and TPM randomness.
//!
//! A [`Tpm`] is one short conversation: opened for an operation and dropped
//! after, so the daemon never holds the TPM across requests (a TPM without a
//! resource manager serves one client at a time). Every command runs in an
//! HMAC session salted with the primary key, with parameter encryption both
//! ways, so secrets never cross the TPM interface in clear.
//!
//! The daemon talks to the TPM only through its [`TpmWorker`]: one thread,
//! waited for with a deadline, so a TPM that stops answering costs a caller
//! a bounded wait and never wedges anything else.

mod nv;
mod primary;
mod sealed;
mod sealing;
mod stale;
mod tcti;
mod worker;

pub use nv::{NV_AUTH_LEN, NV_COUNTER_FIRST, NV_COUNTER_LAST, NvCounterError};
pub use primary::{
    NODA_ATTRIBUTES, PERSISTENT_SRK, StoragePrimary, Template, noda_ecc_template,
    tpm2_tools_ecc_template,
};
pub use sealed::{BlobError, Part as BlobPart, SealedBlobs};
pub use sealing::{DictionaryAttack, MAX_PCR, PcrValue, Protection};
pub use stale::{flush_stale, has_resource_manager};
pub use tcti::Tcti;
pub use worker::TpmWorker;

use tss_esapi::Context;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::ObjectHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Digest, SymmetricDefinition};
use zeroize::Zeroizing;

/// A TPM operation that failed, with the TPM's response in words.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI could not be opened.
    #[error(
        "cannot open the TPM at \"{tcti}\": {}; check that the TPM is there (ls -l /dev/tpmrm0) and that the daemon may open it (group tss), or for a software TPM that swtpm is running on that port",
        describe(source)
    )]
    Open {
        /// The TCTI string.
        tcti: String,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// A TPM command failed.
    #[error("TPM {step} failed: {}", describe(source))]
    Command {
        /// What the daemon was doing.
        step: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM refused to load or unseal a sealed object (the root key).
    #[error("TPM {step} failed: {}", describe(source))]
    SealedObject {
        /// What the daemon was doing.
        step: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM refused to unseal the PCR-bound copy of the root key
    /// (PolicyPCR or Unseal under its policy).
    #[error("TPM {step} failed: {}", describe(source))]
    PcrPolicy {
        /// What the daemon was doing.
        step: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM refused to unseal the PIN-protected copy of the root key.
    #[error("TPM {step} failed: {}", describe(source))]
    PinObject {
        /// What the daemon was doing.
        step: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The root key was sealed under the persistent SRK, which is gone.
    #[error(
        "the root key's copies were sealed under the TPM's persistent storage root key at 0x81000001, which this TPM no longer has ({}): it was evicted (tpm2_evictcontrol), or the TPM was cleared. If it was only evicted, provision it again as it was (the TPM derives the same key from its owner seed with the same template, e.g. systemd-tpm2-setup); if the TPM was cleared, recover the keys from the custodians (README: Backup and recovery)",
        describe(source)
    )]
    NoPersistentSrk {
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM answered with something unusable.
    #[error("TPM {step} returned {problem}")]
    BadAnswer {
        /// What the daemon was doing.
        step: &'static str,
        /// What was wrong with the answer.
        problem: String,
    },
    /// The TPM did not answer within the deadline.
    #[error(
        "the TPM at \"{tcti}\" did not answer within {secs} s ({task}); check that the TPM is working, or that swtpm is running and not stopped. TPM work fails at once until the TPM answers again; operations that need no TPM go on"
    )]
    Timeout {
        /// The TCTI string.
        tcti: String,
        /// The deadline, in seconds.
        secs: u64,
        /// What the daemon asked the TPM to do.
        task: &'static str,
    },
    /// The TPM kept answering, but too slowly to finish the work in time.
    #[error(
        "the TPM at \"{tcti}\" answers, but too slowly: {task} did not finish within {secs} s (a slow TPM, or much TPM work queued); try again, and check the TPM's load"
    )]
    Slow {
        /// The TCTI string.
        tcti: String,
        /// How long the caller waited, in seconds.
        secs: u64,
        /// What the daemon asked the TPM to do.
        task: &'static str,
    },
    /// An earlier TPM command has not come back; new ones are refused at once.
    #[error(
        "the TPM at \"{tcti}\" has not answered a command for {secs} s; check that the TPM is working, or that swtpm is running and not stopped. TPM work fails at once until the TPM answers again; operations that need no TPM go on"
    )]
    Stuck {
        /// The TCTI string.
        tcti: String,
        /// How long the command has been waiting, in seconds.
        secs: u64,
    },
    /// The TPM worker thread is gone (it panicked or could not be started).
    #[error("the daemon's TPM worker thread is gone ({0}); restart hostkmsd")]
    WorkerGone(String),
}

/// What a TPM failure means, to give advice that fits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The TPM refused a sealed object's blobs as such: integrity, binding,
    /// key, handle, attribute or policy failures on Load or Unseal. Another
    /// TPM sealed them, this TPM was cleared, or the files were altered.
    BlobRejected,
    /// Dictionary-attack lockout.
    Lockout,
    /// The PCRs a copy of the root key is bound to no longer hold the
    /// values it was sealed to (a firmware, boot loader or Secure Boot
    /// update, or an altered boot chain).
    PcrMismatch,
    /// The PIN is not the one the copy was sealed with (the TPM counted a
    /// failure towards dictionary-attack lockout).
    WrongPin,
    /// No room for objects or sessions (stale handles, or other clients).
    OutOfMemory,
    /// The TPM asked to be retried: busy, yielded, self-testing, NV rate.
    Busy,
    /// The TPM is not operational: not started, failure mode, needs a reboot.
    NotOperational,
    /// The transport failed: nothing answers, or the connection broke.
    Transport,
    /// The TPM did not answer in time, or an earlier command is still out.
    Timeout,
    /// Anything else.
    Other,
}

impl TpmError {
    fn command(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |source| TpmError::Command { step, source }
    }

    fn sealed_object(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |source| TpmError::SealedObject { step, source }
    }

    fn pcr_policy(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |source| TpmError::PcrPolicy { step, source }
    }

    fn pin_object(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |source| TpmError::PinObject { step, source }
    }

    /// Whether the TPM refused because it is in dictionary-attack lockout.
    pub fn is_lockout(&self) -> bool {
        self.cause() == Cause::Lockout
    }

    /// What the failure means; [`Cause::BlobRejected`] only for a sealed
    /// object's Load or Unseal refused for a reason that points at the blobs.
    pub fn cause(&self) -> Cause {
        use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Kind;
        let (source, sealed_object) = match self {
            TpmError::Open { source, .. } | TpmError::Command { source, .. } => (source, false),
            TpmError::SealedObject { source, .. } => (source, true),
            TpmError::PcrPolicy { source, .. } => {
                return match response_kind(source) {
                    Some(
                        Kind::PolicyFail
                        | Kind::Policy
                        | Kind::Value
                        | Kind::PcrChanged
                        | Kind::Pcr
                        | Kind::AuthUnavailable,
                    ) => Cause::PcrMismatch,
                    _ => TpmError::Command {
                        step: "",
                        source: *source,
                    }
                    .cause(),
                };
            }
            TpmError::PinObject { source, .. } => {
                return match response_kind(source) {
                    Some(Kind::AuthFail | Kind::BadAuth) => Cause::WrongPin,
                    _ => TpmError::Command {
                        step: "",
                        source: *source,
                    }
                    .cause(),
                };
            }
            TpmError::Timeout { .. } | TpmError::Stuck { .. } => return Cause::Timeout,
            TpmError::Slow { .. } => return Cause::Busy,
            TpmError::BadAnswer { .. } | TpmError::WorkerGone(_) => return Cause::Other,
            TpmError::NoPersistentSrk { .. } => return Cause::BlobRejected,
        };
        let tss_esapi::Error::Tss2Error(rc) = source else {
            return Cause::Other;
        };
        match rc.kind() {
            Some(
                Kind::Integrity
                | Kind::Binding
                | Kind::Sensitive
                | Kind::Key
                | Kind::KeySize
                | Kind::Size
                | Kind::Value
                | Kind::Attributes
                | Kind::Type
                | Kind::Hash
                | Kind::Scheme
                | Kind::Symmetric
                | Kind::Asymmetric
                | Kind::Handle
                | Kind::Policy
                | Kind::PolicyFail
                | Kind::Pcr
                | Kind::PcrChanged
                | Kind::AuthFail
                | Kind::BadAuth,
            ) if sealed_object => Cause::BlobRejected,
            Some(Kind::Lockout) => Cause::Lockout,
            Some(
                Kind::ObjectMemory
                | Kind::SessionMemory
                | Kind::Memory
                | Kind::ObjectHandles
                | Kind::SessionHandles
                | Kind::TooManyContexts
                | Kind::ContextGap,
            ) => Cause::OutOfMemory,
            Some(
                Kind::Retry
                | Kind::Yielded
                | Kind::Canceled
                | Kind::Testing
                | Kind::NvRate
                | Kind::NvUnavailable,
            ) => Cause::Busy,
            Some(
                Kind::Initialize | Kind::Failure | Kind::Reboot | Kind::NeedsTest | Kind::Upgrade,
            ) => Cause::NotOperational,
            Some(_) => Cause::Other,
            // A TSS layer's own code: the TCTI (10) or a resource manager (11, 12).
            None => match raw_response_code(rc).map(|raw| (raw >> 16) & 0xff) {
                Some(10..=12) => Cause::Transport,
                _ => Cause::Other,
            },
        }
    }

    /// What to do about the failure, in a sentence that fits its cause
    /// (empty when the message already says it).
    pub fn advice(&self) -> &'static str {
        if matches!(
            self,
            TpmError::Open { .. }
                | TpmError::NoPersistentSrk { .. }
                | TpmError::Timeout { .. }
                | TpmError::Slow { .. }
                | TpmError::Stuck { .. }
                | TpmError::WorkerGone(_)
        ) {
            return "";
        }
        match self.cause() {
            Cause::BlobRejected => {
                "The TPM refused the sealed object itself: it was sealed by another TPM, this TPM was cleared, or the files were altered"
            }
            Cause::PcrMismatch => {
                "The PCRs the root key is sealed to changed since it was sealed (a firmware, boot loader or Secure Boot update, or an altered boot chain); the blobs are intact. Unlock with the PIN (`hostkms unlock --reseal` once you trust the new boot state), or boot the old boot chain"
            }
            Cause::WrongPin => {
                "The TPM refused the PIN; it counts this towards its dictionary-attack lockout. Try again with the right PIN (`hostkms status` shows the tries left)"
            }
            Cause::Lockout => {
                "The TPM is in dictionary-attack lockout; wait for its recovery time or clear it with `tpm2_dictionarylockout --clear-lockout` (needs the lockout authorization)"
            }
            Cause::OutOfMemory => {
                "The TPM has no room for more objects or sessions: another program holds them, or a program using a TPM without a resource manager died without flushing them (hostkmsd flushes those it finds and retries once). See what holds them with `tpm2_getcap handles-transient` and `tpm2_getcap handles-loaded-session`, and let programs that share the TPM use the kernel's resource manager (device:/dev/tpmrm0). Nothing is wrong with the sealed files"
            }
            Cause::Busy => {
                "The TPM asked to be retried (busy, self-testing or rate-limiting its NV writes); try again in a moment. Nothing is wrong with the sealed files"
            }
            Cause::NotOperational => {
                "The TPM is not operational (not started up, in failure mode, or waiting for a reboot or self-test); check it with `tpm2_selftest` and `tpm2_gettestresult`, or restart swtpm. Nothing is wrong with the sealed files"
            }
            Cause::Transport => {
                "Nothing answered on the TPM's transport, or the connection broke: check that the TPM is there and the daemon may open it, or that swtpm is running on that port. Nothing is wrong with the sealed files"
            }
            Cause::Timeout => "",
            Cause::Other => {
                "Check the TPM with tpm2-tools (`tpm2_selftest`, `tpm2_getcap properties-variable`); hostkms changed nothing"
            }
        }
    }
}

/// The TPM response code's kind, when the error is the TPM's answer.
fn response_kind(
    error: &tss_esapi::Error,
) -> Option<tss_esapi::constants::response_code::Tss2ResponseCodeKind> {
    match error {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// The TSS/TPM error in words, with its numeric code.
pub fn describe(error: &tss_esapi::Error) -> String {
    match error {
        tss_esapi::Error::Tss2Error(rc) => match (rc.kind(), raw_response_code(rc)) {
            (Some(kind), Some(raw)) => format!("{rc} (TPM response {kind:?}, {raw:#x})"),
            (Some(kind), None) => format!("{rc} (TPM response {kind:?})"),
            (None, Some(raw)) => describe_tss_layer_code(raw),
            (None, None) => format!("{rc}"),
        },
        tss_esapi::Error::WrapperError(kind) => format!("{kind} (tss-esapi)"),
    }
}

/// The raw TSS2_RC, which tss-esapi 7 exposes only through `Display`
/// ("Response code value: 0x…").
fn raw_response_code(rc: &tss_esapi::constants::response_code::Tss2ResponseCode) -> Option<u32> {
    use tss_esapi::constants::response_code::Tss2ResponseCode as Rc;
    let shown = match rc {
        Rc::Success => return Some(0),
        Rc::FormatZero(code) => code.to_string(),
        Rc::FormatOne(code) => code.to_string(),
    };
    let hex = shown.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// Words for a response code from a TSS software layer (TCTI, ESAPI, ...),
/// which tss-esapi does not describe (the TSS 2.0 "TSS2_RC" tables).
fn describe_tss_layer_code(raw: u32) -> String {
    let layer = match (raw >> 16) & 0xff {
        0 => "TPM",
        6 => "TSS feature API",
        7 => "TSS enhanced system API",
        8 => "TSS system API",
        9 => "TSS marshalling",
        10 => "TPM transport (TCTI)",
        11 | 12 => "TPM resource manager",
        _ => "TSS",
    };
    let what = match raw & 0xffff {
        1 => "general failure",
        2 => "not implemented",
        3 => "bad context",
        4 => "ABI mismatch",
        5 => "bad reference",
        6 => "insufficient buffer",
        7 => "bad sequence",
        8 => "no connection",
        9 => "try again",
        10 => "input/output error (nothing answers there, or the connection broke)",
        11 => "bad value",
        12 => "not permitted",
        16 => "bad size",
        17 => "malformed response",
        21 => "not supported",
        23 => "out of memory",
        27 => "response authentication failed",
        _ => "error",
    };
    format!("{layer}: {what} (response code {raw:#x})")
}

/// An open conversation with the TPM: the storage primary loaded and a
/// salted, parameter-encrypting session started. Dropping it flushes both
/// (tss-esapi's `Context` flushes every transient handle it created and
/// closes the rest) and closes the TCTI.
pub struct Tpm {
    context: Context,
    primary: primary::Primary,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

impl Tpm {
    /// Opens the TPM at `tcti`, loads the (noDA) storage primary and starts the session.
    pub fn open(tcti: &Tcti) -> Result<Tpm, TpmError> {
        Tpm::open_under(tcti, StoragePrimary::Preferred(Template::NoDa))
    }

    /// As [`Tpm::open`], under the storage primary `choice` names: the one
    /// a sealed object's record says it was sealed under, or the legacy
    /// template only to migrate blobs sealed before 0.14.
    pub fn open_under(tcti: &Tcti, choice: StoragePrimary) -> Result<Tpm, TpmError> {
        let mut context = open_context(tcti)?;
        let primary = primary::load(&mut context, choice).map_err(|source| {
            if choice == StoragePrimary::PersistentSrk {
                TpmError::NoPersistentSrk { source }
            } else {
                TpmError::Command {
                    step: "loading the storage primary key",
                    source,
                }
            }
        })?;
        worker::answered();
        start_salted_session(&mut context, primary)?;
        worker::answered();
        Ok(Tpm { context, primary })
    }

    /// Whether the storage primary is the TPM's persistent SRK (0x81000001)
    /// rather than the transient tpm2-tools template.
    pub fn uses_persistent_srk(&self) -> bool {
        self.primary.persistent
    }

    /// `n` bytes from the TPM's RNG (its answers are encrypted on the way out).
    pub fn random(&mut self, n: usize) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let mut out = Zeroizing::new(Vec::with_capacity(n));
        while out.len() < n {
            // GetRandom returns at most a digest's worth per call (64 bytes
            // on a TPM with SHA-512, 32 or 48 on most): ask for 64.
            let want = (n - out.len()).min(64);
            let chunk: Digest = self
                .context
                .get_random(want)
                .map_err(TpmError::command("GetRandom"))?;
            worker::answered();
            if chunk.is_empty() {
                return Err(TpmError::BadAnswer {
                    step: "GetRandom",
                    problem: "no bytes".to_string(),
                });
            }
            out.extend_from_slice(chunk.value());
        }
        out.truncate(n);
        Ok(out)
    }

    /// Seals `secret` as a keyed-hash object under the storage primary with
    /// no protection beyond the TPM ([`Protection::Plain`]). The object has
    /// an empty authorization, so dictionary-attack protection would guard
    /// nothing: it is noDA, and a TPM in lockout still unseals it.
    pub fn seal(&mut self, secret: &[u8]) -> Result<SealedBlobs, TpmError> {
        self.seal_protected(secret, Protection::Plain)
    }

    /// Loads sealed blobs with an empty authorization under the storage
    /// primary and unseals the secret.
    pub fn unseal(&mut self, blobs: &SealedBlobs) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let object = self.load_sealed(blobs)?;
        let unsealed = self.context.unseal(ObjectHandle::from(object));
        // Flush before looking at the result: swtpm holds only 3 objects.
        let flushed = self.context.flush_context(ObjectHandle::from(object));
        let secret = unsealed.map_err(TpmError::sealed_object("Unseal"))?;
        flushed.map_err(TpmError::command("FlushContext (of the sealed root key)"))?;
        Ok(Zeroizing::new(secret.value().to_vec()))
    }
}

/// Starts an HMAC session salted with the primary (so its secret is known
/// only to the TPM and us), encrypting command and response parameters with
/// AES-128-CFB, and makes it the context's session for every command.
fn start_salted_session(context: &mut Context, primary: primary::Primary) -> Result<(), TpmError> {
    let session = context
        .start_auth_session(
            Some(primary.handle),
            None,
            None,
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(TpmError::command("StartAuthSession (salted)"))?
        .ok_or_else(|| TpmError::BadAnswer {
            step: "StartAuthSession",
            problem: "no session handle".to_string(),
        })?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .with_continue_session(true)
        .build();
    context
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(TpmError::command(
            "setting the session's encryption attributes",
        ))?;
    context.set_sessions((Some(session), None, None));
    Ok(())
}

/// A bare ESAPI context on the TPM at `tcti`: no primary, no session.
fn open_context(tcti: &Tcti) -> Result<Context, TpmError> {
    Context::new(tcti.name_conf()).map_err(|source| TpmError::Open {
        tcti: tcti.to_string(),
        source,
    })
}

/// Checks that the TPM at `tcti` answers, with a GetRandom of one byte that
/// is thrown away; cheaper than [`Tpm::open`] (no primary key, no session).
pub fn probe(tcti: &Tcti) -> Result<(), TpmError> {
    let mut context = open_context(tcti)?;
    context
        .execute_without_session(|ctx| ctx.get_random(1))
        .map(drop)
        .map_err(TpmError::command("GetRandom (probe)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn rc(raw: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(raw))
    }

    fn command(raw: u32) -> TpmError {
        TpmError::Command {
            step: "CreatePrimary",
            source: rc(raw),
        }
    }

    fn sealed(raw: u32) -> TpmError {
        TpmError::SealedObject {
            step: "Load (of the sealed root key)",
            source: rc(raw),
        }
    }

    #[test]
    fn only_blob_failures_on_the_sealed_object_blame_the_blobs() {
        // TPM_RC_INTEGRITY, TPM_RC_BINDING, TPM_RC_HANDLE, TPM_RC_POLICY_FAIL
        // (format one, on parameter/handle 1).
        for raw in [0x1df, 0x1e5, 0x18b, 0x9d] {
            assert_eq!(sealed(raw).cause(), Cause::BlobRejected, "{raw:#x}");
            assert!(sealed(raw).advice().contains("another TPM"), "{raw:#x}");
            // The same code outside Load/Unseal of the sealed object is not
            // a statement about the blobs.
            assert_eq!(command(raw).cause(), Cause::Other, "{raw:#x}");
        }
    }

    #[test]
    fn every_other_answer_is_named_for_what_it_is() {
        let cases = [
            (0x902, Cause::OutOfMemory),    // TPM_RC_OBJECT_MEMORY
            (0x903, Cause::OutOfMemory),    // TPM_RC_SESSION_MEMORY
            (0x921, Cause::Lockout),        // TPM_RC_LOCKOUT
            (0x922, Cause::Busy),           // TPM_RC_RETRY
            (0x90a, Cause::Busy),           // TPM_RC_TESTING
            (0x101, Cause::NotOperational), // TPM_RC_FAILURE
            (0x100, Cause::NotOperational), // TPM_RC_INITIALIZE
            (0xa000a, Cause::Transport),    // TSS2_TCTI_RC_IO_ERROR
        ];
        for (raw, cause) in cases {
            for error in [command(raw), sealed(raw)] {
                assert_eq!(error.cause(), cause, "{raw:#x}");
                let advice = error.advice();
                assert!(!advice.is_empty(), "{raw:#x}");
                assert!(!advice.contains("another TPM"), "{raw:#x}: {advice}");
                assert!(!advice.contains("backup"), "{raw:#x}: {advice}");
            }
        }
        let timeout = TpmError::Timeout {
            tcti: "swtpm:port=1".to_string(),
            secs: 3,
            task: "probing the TPM",
        };
        assert_eq!(timeout.cause(), Cause::Timeout);
        let shown = timeout.to_string();
        assert!(shown.contains("did not answer within 3 s"), "{shown}");
        assert!(!shown.contains("backup"), "{shown}");
    }

    #[test]
    fn resource_managers_are_recognised() {
        let tcti = |text: &str| Tcti::from_str(text).expect("TCTI");
        assert!(has_resource_manager(&tcti("device:/dev/tpmrm0")));
        assert!(has_resource_manager(&tcti("tabrmd:")));
        assert!(!has_resource_manager(&tcti("device:/dev/tpm0")));
        assert!(!has_resource_manager(&tcti(
            "swtpm:host=127.0.0.1,port=2321"
        )));
        assert!(!has_resource_manager(&tcti(
            "mssim:host=127.0.0.1,port=2321"
        )));
    }
}
