//! Stale transient objects and sessions in a TPM without a resource
//! manager, and flushing them.
//!
//! The kernel's resource manager (`/dev/tpmrm0`) and tpm2-abrmd give each
//! client its own view and flush a client's objects when it goes away. A
//! TPM reached directly (`/dev/tpm0`, swtpm, a simulator) keeps whatever a
//! killed process had loaded, and with three object slots (swtpm) one crash
//! in the middle of a conversation fills it.
//!
//! Such a TPM does not keep clients apart: libtss2's swtpm TCTI even
//! connects anew for every command, so the commands of two clients
//! interleave, and a flush can remove objects another client is using at
//! that moment. hostkmsd therefore flushes only when the TPM has answered
//! that it is out of object or session memory, where its own conversation
//! would fail anyway (and whatever fills it is most likely a dead
//! process's), never unconditionally at start. README (TPM) says to give
//! hostkmsd the resource manager when other programs use the same TPM.

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::TpmHandle;
use tss_esapi::structures::CapabilityData;

use super::{Tcti, TpmError, open_context};

/// First handle of each range flushed: transient objects, loaded sessions
/// (HMAC and policy), saved (context-swapped) sessions.
const STALE_RANGES: [u32; 3] = [0x8000_0000, 0x0200_0000, 0x0300_0000];

/// Whether `tcti` reaches the TPM through a resource manager, which
/// virtualises and cleans up every client's handles by itself.
pub fn has_resource_manager(tcti: &Tcti) -> bool {
    let text = tcti.as_str();
    match text
        .split_once(':')
        .map_or((text, ""), |(kind, rest)| (kind, rest))
    {
        ("tabrmd", _) => true,
        ("device", path) => std::path::Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("tpmrm")),
        _ => false,
    }
}

/// Whether `handle` belongs to the list that starts at `first`.
fn in_range(handle: u32, first: u32) -> bool {
    match first >> 24 {
        0x02 | 0x03 => matches!(handle >> 24, 0x02 | 0x03),
        kind => handle >> 24 == kind,
    }
}

/// Flushes every transient object and every loaded or saved session from
/// the TPM at `tcti`; returns how many. Does nothing (returns 0) through a
/// resource manager, where another client's handles are invisible anyway.
pub fn flush_stale(tcti: &Tcti) -> Result<usize, TpmError> {
    if has_resource_manager(tcti) {
        return Ok(0);
    }
    let mut context = open_context(tcti)?;
    let mut flushed = 0;
    for first in STALE_RANGES {
        // Handles flushed disappear from the list: ask again from the
        // start of the range until it is empty (bounded: a TPM has a few
        // dozen slots at most).
        for _ in 0..64 {
            let (data, _more) = context
                .get_capability(CapabilityType::Handles, first, 64)
                .map_err(TpmError::command("GetCapability (handles)"))?;
            let CapabilityData::Handles(list) = data else {
                return Err(TpmError::BadAnswer {
                    step: "GetCapability (handles)",
                    problem: "something other than a handle list".to_string(),
                });
            };
            // The list starts at `first` but runs on into later ranges. A
            // session's handle says its type, not the range it is listed
            // in: HMAC sessions are 0x02, policy sessions 0x03, in both the
            // loaded and the saved list.
            let handles: Vec<TpmHandle> = list
                .into_inner()
                .into_iter()
                .filter(|handle| in_range(u32::from(*handle), first))
                .collect();
            if handles.is_empty() {
                break;
            }
            for handle in handles {
                let object = context
                    .tr_from_tpm_public(handle)
                    .map_err(TpmError::command("reading a stale handle"))?;
                let is_policy_session = u32::from(handle) >> 24 == 0x03;
                match context.flush_context(object) {
                    Ok(()) => {}
                    // tss-esapi 7 books a policy session as "close, never
                    // flush" and says so after the TPM has flushed it: its
                    // FlushContext succeeded, only the bookkeeping differs.
                    Err(tss_esapi::Error::WrapperError(
                        tss_esapi::WrapperErrorKind::InvalidHandleState,
                    )) if is_policy_session => {}
                    Err(source) => {
                        return Err(TpmError::Command {
                            step: "FlushContext (of a stale handle)",
                            source,
                        });
                    }
                }
                flushed += 1;
            }
        }
    }
    Ok(flushed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_sessions_count_as_sessions_in_either_list() {
        // A policy session left by a killed unseal is 0x03000000 and is
        // listed among the loaded sessions (0x02...): it was never flushed.
        assert!(in_range(0x0300_0000, 0x0200_0000));
        assert!(in_range(0x0200_0001, 0x0200_0000));
        assert!(in_range(0x0200_0001, 0x0300_0000));
        assert!(in_range(0x8000_0002, 0x8000_0000));
        assert!(!in_range(0x8100_0001, 0x8000_0000));
        assert!(!in_range(0x8000_0000, 0x0200_0000));
        assert!(!in_range(0x0300_0000, 0x8000_0000));
    }
}
