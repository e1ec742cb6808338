//! The sealed copies of the root key a record names: sealing a set of
//! them for a mode, and unsealing one (the auto copy at start, the PIN
//! copy when an operator gives the PIN).

use std::time::Duration;

use zeroize::Zeroizing;

use super::record::{CopyFiles, PrimaryKind, SealRecord, SealingMode};
use super::{MAX_BLOB, PcrChange, RootKey, RootKeyError};
use crate::state_dir::StateDir;
use crate::tpm::{BlobPart, Cause, PcrValue, Protection, SealedBlobs, Tpm, TpmError, TpmWorker};

/// Seals `key` in the copies `mode` asks for, as generation `generation`,
/// and writes their files durably (private blobs first); returns the
/// record that names them, not yet written. The auto copy is bound to
/// `pcr_values` when given (the values an earlier sealing trusted), else
/// to the PCRs' current values. Each copy is unsealed once before anything
/// is written, where it can be: a PCR copy sealed to values the PCRs do
/// not hold now cannot be.
#[allow(clippy::too_many_arguments)]
pub(super) fn seal_copies(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    key: &RootKey,
    generation: u64,
    mode: &SealingMode,
    pcr_values: Option<Vec<PcrValue>>,
    pin: Option<&[u8]>,
) -> Result<SealRecord, RootKeyError> {
    if mode.pin && pin.is_none() {
        return Err(RootKeyError::PinNeeded);
    }
    let secret = Zeroizing::new(*key.expose());
    let pin = pin.map(|pin| Zeroizing::new(pin.to_vec()));
    let want = mode.clone();
    let (primary, values, auto, pin_copy) = tpm
        .call("sealing the root key's copies", timeout, move |tcti| {
            let mut tpm = Tpm::open(tcti)?;
            let primary = if tpm.uses_persistent_srk() {
                PrimaryKind::PersistentSrk
            } else {
                PrimaryKind::TransientNoda
            };
            let current = tpm.read_pcrs(&want.pcrs)?;
            let values = pcr_values.clone().unwrap_or_else(|| current.clone());
            let auto = if want.has_auto_copy() {
                let blobs = if want.pcrs.is_empty() {
                    tpm.seal_protected(secret.as_ref(), Protection::Plain)?
                } else {
                    tpm.seal_protected(secret.as_ref(), Protection::Pcrs(&values))?
                };
                let check = if want.pcrs.is_empty() {
                    Some(tpm.unseal(&blobs)?)
                } else if values == current {
                    Some(tpm.unseal_with_pcrs(&blobs, &want.pcrs)?)
                } else {
                    None
                };
                same_secret(check.as_ref().map(|c| c.as_slice()), secret.as_ref())?;
                Some(blobs)
            } else {
                None
            };
            let pin_copy = match &pin {
                Some(pin) if want.pin => {
                    let blobs = tpm.seal_protected(secret.as_ref(), Protection::Pin(pin))?;
                    let check = tpm.unseal_with_pin(&blobs, pin)?;
                    same_secret(Some(&check), secret.as_ref())?;
                    Some(blobs)
                }
                _ => None,
            };
            Ok((primary, values, auto, pin_copy))
        })
        .map_err(|e| match e {
            TpmError::Open { .. }
            | TpmError::Timeout { .. }
            | TpmError::Slow { .. }
            | TpmError::Stuck { .. } => RootKeyError::TpmUnavailable(e),
            e => RootKeyError::Seal(e),
        })?;
    let record = SealRecord {
        generation,
        primary,
        mode: mode.clone(),
        pcr_values: if mode.pcrs.is_empty() {
            Vec::new()
        } else {
            values
        },
    };
    let copies = [(record.auto_files(), auto), (record.pin_files(), pin_copy)];
    for (files, blobs) in copies {
        if let (Some(files), Some(blobs)) = (files, blobs) {
            dir.write_private(&files.private, blobs.private_bytes())?;
            dir.write_private(&files.public, blobs.public_bytes())?;
        }
    }
    Ok(record)
}

fn same_secret(unsealed: Option<&[u8]>, sealed: &[u8]) -> Result<(), TpmError> {
    match unsealed {
        Some(unsealed) if unsealed != sealed => Err(TpmError::BadAnswer {
            step: "Unseal (check of a new copy of the root key)",
            problem: "a different secret than was sealed".to_string(),
        }),
        _ => Ok(()),
    }
}

/// Checks that `record` tells the truth about its auto copy before its
/// recorded PCR values are sealed to again (a PIN change, a rotation): the
/// copy's authPolicy must be PolicyPCR over exactly those values, or, with
/// no PCRs, none. `root.seal` has no integrity protection of its own; a
/// record edited to other values (or to none) would otherwise have them
/// sealed in, and the machine unseal in a boot state nobody trusted.
pub(super) fn check_record(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    record: &SealRecord,
) -> Result<(), RootKeyError> {
    let Some(files) = record.auto_files() else {
        return Ok(());
    };
    let (policy, user_with_auth) =
        read_copy(dir, &files)?
            .authorization()
            .map_err(|source| RootKeyError::MalformedBlob {
                path: dir.file(&files.public).display().to_string(),
                source,
            })?;
    let expected = if record.pcr_values.is_empty() {
        Vec::new()
    } else {
        let values = record.pcr_values.clone();
        tpm.call("computing the PCR policy", timeout, move |tcti| {
            Tpm::open(tcti)?.pcr_policy_digest(&values)
        })
        .map_err(RootKeyError::TpmUnavailable)?
        .value()
        .to_vec()
    };
    if policy == expected && user_with_auth == record.pcr_values.is_empty() {
        return Ok(());
    }
    Err(RootKeyError::RecordMismatch {
        record: dir.file(super::RECORD).display().to_string(),
        copy: dir.file(&files.public).display().to_string(),
    })
}

/// Reads and parses a copy's blobs.
pub(super) fn read_copy(dir: &StateDir, files: &CopyFiles) -> Result<SealedBlobs, RootKeyError> {
    let public = dir.read(&files.public, MAX_BLOB)?;
    let private = dir.read(&files.private, MAX_BLOB)?;
    SealedBlobs::parse(public, private).map_err(|source| {
        let name = match source.part() {
            BlobPart::Public => &files.public,
            BlobPart::Private => &files.private,
        };
        RootKeyError::MalformedBlob {
            path: dir.file(name).display().to_string(),
            source,
        }
    })
}

/// What unsealing the auto copy gave.
pub(super) enum AutoUnseal {
    /// The root key.
    Key(RootKey),
    /// The PCRs changed since sealing: these, with both values.
    PcrsChanged(Vec<PcrChange>),
}

/// Unseals the auto copy of `record` (plain or PCR-bound).
pub(super) fn unseal_auto(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    record: &SealRecord,
) -> Result<AutoUnseal, RootKeyError> {
    let Some(files) = record.auto_files() else {
        return Err(RootKeyError::PinNeeded);
    };
    let blobs = read_copy(dir, &files)?;
    let pcrs = record.mode.pcrs.clone();
    let primary = record.primary.storage_primary();
    let unsealed = tpm.call("unsealing the root key", timeout, move |tcti| {
        let mut tpm = Tpm::open_under(tcti, primary)?;
        if pcrs.is_empty() {
            return tpm.unseal(&blobs).map(Ok);
        }
        match tpm.unseal_with_pcrs(&blobs, &pcrs) {
            Ok(secret) => Ok(Ok(secret)),
            Err(e) if e.cause() == Cause::PcrMismatch => Ok(Err((tpm.read_pcrs(&pcrs)?, e))),
            Err(e) => Err(e),
        }
    });
    match unsealed {
        Ok(Ok(secret)) => RootKey::from_slice(&secret).map(AutoUnseal::Key),
        Ok(Err((current, refusal))) => {
            let changed = changes(&record.pcr_values, &current);
            if changed.is_empty() {
                // The PCRs hold the recorded values, yet the policy fails:
                // the record or the blobs are not what was sealed.
                return Err(RootKeyError::Unseal {
                    public: dir.file(&files.public).display().to_string(),
                    private: dir.file(&files.private).display().to_string(),
                    source: refusal,
                });
            }
            Ok(AutoUnseal::PcrsChanged(changed))
        }
        Err(source) => Err(classify(dir, &files, source)),
    }
}

/// The PCRs whose current value differs from the recorded one.
pub(super) fn changes(recorded: &[PcrValue], current: &[PcrValue]) -> Vec<PcrChange> {
    recorded
        .iter()
        .filter_map(|sealed| {
            let now = current.iter().find(|value| value.pcr == sealed.pcr)?;
            (now.sha256 != sealed.sha256).then_some(PcrChange {
                pcr: sealed.pcr,
                sealed: sealed.sha256,
                current: now.sha256,
            })
        })
        .collect()
}

/// Unseals the PIN copy of `record` with `pin`. A wrong PIN and a TPM in
/// lockout are answered with the TPM's dictionary-attack state.
pub(super) fn unseal_pin(
    dir: &StateDir,
    tpm: &TpmWorker,
    timeout: Duration,
    record: &SealRecord,
    pin: &[u8],
) -> Result<RootKey, RootKeyError> {
    let Some(files) = record.pin_files() else {
        return Err(RootKeyError::NoPinSet);
    };
    let blobs = read_copy(dir, &files)?;
    let pin = Zeroizing::new(pin.to_vec());
    let primary = record.primary.storage_primary();
    let unsealed = tpm.call(
        "unsealing the root key with the PIN",
        timeout,
        move |tcti| {
            let mut tpm = Tpm::open_under(tcti, primary)?;
            match tpm.unseal_with_pin(&blobs, &pin) {
                Ok(secret) => Ok(Ok(secret)),
                Err(e) if matches!(e.cause(), Cause::WrongPin | Cause::Lockout) => {
                    let state = tpm.dictionary_attack()?;
                    Ok(Err((e.cause(), state)))
                }
                Err(e) => Err(e),
            }
        },
    );
    match unsealed {
        Ok(Ok(secret)) => RootKey::from_slice(&secret),
        Ok(Err((Cause::WrongPin, state))) if state.tries_left() > 0 => {
            Err(RootKeyError::WrongPin {
                tries_left: state.tries_left(),
                interval_secs: state.interval_secs,
            })
        }
        Ok(Err((_, state))) => Err(RootKeyError::PinLockout {
            interval_secs: state.interval_secs,
        }),
        Err(source) => Err(classify(dir, &files, source)),
    }
}

/// The error for a TPM failure on a copy's files, by what it means.
pub(super) fn classify(dir: &StateDir, files: &CopyFiles, source: TpmError) -> RootKeyError {
    let public = dir.file(&files.public).display().to_string();
    let private = dir.file(&files.private).display().to_string();
    match source.cause() {
        Cause::Lockout => RootKeyError::Lockout {
            public,
            private,
            source,
        },
        Cause::BlobRejected => RootKeyError::Unseal {
            public,
            private,
            source,
        },
        _ if matches!(
            source,
            TpmError::SealedObject { .. } | TpmError::PcrPolicy { .. } | TpmError::PinObject { .. }
        ) =>
        {
            RootKeyError::TpmFailed {
                public,
                private,
                source,
            }
        }
        _ => RootKeyError::TpmUnavailable(source),
    }
}

/// Removes sealed copies no record names: a generation whose reseal was
/// interrupted before its commit, or one whose removal after the commit
/// was. A stale PIN copy would still open with the PIN it was sealed to
/// (one changed because it leaked), so none is left lying about.
pub(super) fn remove_strays(dir: &StateDir, record: &SealRecord) {
    let kept = record.files();
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if is_copy_file(&name) && !kept.contains(&name) {
            match dir.remove(&name) {
                Ok(()) => tracing::warn!(
                    file = %dir.file(&name).display(),
                    "removed a sealed copy of the root key that no record names (left by an interrupted reseal)"
                ),
                Err(e) => tracing::warn!(
                    file = %dir.file(&name).display(),
                    "could not remove a sealed copy of the root key that no record names: {e}"
                ),
            }
        }
    }
}

/// Whether `name` is a copy file: `root-G-auto.pub`, `root-G-pin.priv`...
fn is_copy_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("root-") else {
        return false;
    };
    let Some((generation, copy)) = rest.split_once('-') else {
        return false;
    };
    !generation.is_empty()
        && generation.bytes().all(|b| b.is_ascii_digit())
        && matches!(copy, "auto.pub" | "auto.priv" | "pin.pub" | "pin.priv")
}

/// Removes the files of `record`'s generation (after a newer record is
/// committed): a failure leaves garbage, never a problem, and is logged.
pub(super) fn remove_files(dir: &StateDir, record: &SealRecord) {
    for name in record.files() {
        if let Err(e) = dir.remove(&name) {
            tracing::warn!(
                file = %dir.file(&name).display(),
                "could not remove a superseded sealed copy of the root key: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copy_files_are_strays() {
        for name in ["root-1-auto.pub", "root-12-pin.priv", "root-3-auto.priv"] {
            assert!(is_copy_file(name), "{name}");
        }
        for name in [
            "root.seal",
            "root-next.seal",
            "root.pub",
            "root-next.priv",
            "root--auto.pub",
            "root-1-auto.pub.tmp",
            "root-x-pin.pub",
            "keystore.db",
        ] {
            assert!(!is_copy_file(name), "{name}");
        }
    }
}
