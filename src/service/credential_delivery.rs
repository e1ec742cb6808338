//! Delivering a systemd credential on the credential socket: the file
//! `DIRECTORY/UNIT/ID`, read without following any symbolic link, unwrapped
//! like an `Unwrap` of it under the reserved context of that unit and id,
//! when a grant of `credential` names the unit and the file's key. The
//! server has checked the peer (root, in the unit's cgroup) before.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use agent_proto::ciphertext::OVERHEAD;
use agent_proto::{Ciphertext, ErrorCode, Operation, credential};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use zeroize::Zeroizing;

use super::Service;
use crate::audit::{self, CredentialEvent, Subject};
use crate::monitor::flood::Limited;
use crate::peer::Peer;

/// Why a connection to the credential socket got no credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRefusal {
    /// A short word for `HOSTKMS_REASON`: `not-root`, `bad-address`,
    /// `unit-mismatch`, `missing`, `symlink`, `not-a-regular-file`,
    /// `too-large`, `unreadable`, or the error name of a failed unwrap
    /// (`permission-denied`, `version-revoked`, `key-disabled`...).
    pub reason: &'static str,
    /// The error code, for a failure of the unwrap.
    pub code: Option<ErrorCode>,
    /// What failed, on what, and what to do.
    pub message: String,
}

impl CredentialRefusal {
    /// A refusal for `reason`, explained by `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> CredentialRefusal {
        CredentialRefusal {
            reason,
            code: None,
            message: message.into(),
        }
    }
}

impl Service {
    /// The plaintext of the credential `id` of `unit` stored under
    /// `directory`, for `peer` (root in `unit`'s cgroup); `event` learns
    /// the key and version the file names.
    pub async fn deliver_credential(
        &self,
        peer: &Peer,
        unit: &str,
        id: &str,
        directory: &Path,
        event: &mut CredentialEvent,
    ) -> Result<Zeroizing<Vec<u8>>, CredentialRefusal> {
        credential::check_unit(unit)
            .and_then(|()| credential::check_credential(id))
            .map_err(|problem| CredentialRefusal::new("bad-address", problem))?;
        if self.store().is_none() {
            // A locked daemon fails the unit at once rather than let it
            // wait: systemd does not retry a credential.
            return Err(CredentialRefusal::new(
                "locked",
                self.locked_refusal().message,
            ));
        }
        let max_len = self.limits.load().max_plaintext + OVERHEAD;
        let path = directory.to_path_buf();
        let (unit_owned, id_owned) = (unit.to_string(), id.to_string());
        let bytes = tokio::task::spawn_blocking(move || {
            read_credential(&path, &unit_owned, &id_owned, max_len)
        })
        .await
        .map_err(|e| {
            CredentialRefusal::new("unreadable", format!("the read did not finish: {e}"))
        })??;
        let context = credential::context(unit, id);
        let mut subject = Subject::default();
        let decrypted = self.decrypt(
            peer,
            Operation::Credential,
            &Ciphertext::new(bytes),
            &context,
            None,
            &mut subject,
        );
        event.key = subject.key().map(str::to_string);
        event.version = subject.version();
        match decrypted {
            Ok(decrypted) => Ok(decrypted.plaintext),
            Err(refusal) => {
                let reason = match refusal.code {
                    ErrorCode::PermissionDenied => "denied",
                    ErrorCode::InvalidCiphertext => "invalid-ciphertext",
                    ErrorCode::KeyDisabled => "key-disabled",
                    ErrorCode::KeyRevoked => "key-revoked",
                    ErrorCode::VersionRevoked => "version-revoked",
                    ErrorCode::KeyPendingDeletion => "key-pending-deletion",
                    ErrorCode::WrongKeyType => "wrong-key-type",
                    ErrorCode::Locked => "locked",
                    _ => "failed",
                };
                let message = if refusal.code == ErrorCode::PermissionDenied {
                    format!(
                        "no grant of \"credential\" names unit {unit} and the key of {}/{unit}/{id}; add one to the config's [[grant]] tables (units = [\"{unit}\"], ops = [\"credential\"]) and reload",
                        directory.display()
                    )
                } else if refusal.code == ErrorCode::InvalidCiphertext {
                    format!(
                        "{}/{unit}/{id} does not decrypt as credential {id} of {unit}: damaged, made on another host, or encrypted for another unit or id (copied); encrypt it again with `hostkms credential encrypt --unit {unit} --name {id}`",
                        directory.display()
                    )
                } else {
                    refusal.message
                };
                Err(CredentialRefusal {
                    reason,
                    code: Some(refusal.code),
                    message,
                })
            }
        }
    }

    /// Counts and audits a credential delivered to `peer`.
    pub fn credential_delivered(&self, peer: &Peer, event: &CredentialEvent) {
        audit::credential(peer, event, None);
        if let Some(alert) = self.monitor.record(peer.uid, Operation::Credential, None) {
            audit::peer_alert(&alert);
        }
    }

    /// Counts and audits a connection to the credential socket that got no
    /// credential. A peer that broke the peer rule (not root, no valid
    /// address, not in the unit it names) is logged under the per-peer
    /// limit of refused connections, since it can connect as often as it
    /// likes, with an impersonation attempt (not in the unit it names, or
    /// not proven to be) counted apart from the rest, so that junk cannot
    /// hide it; a failed delivery to the unit itself always is.
    pub fn credential_refused(
        &self,
        peer: &Peer,
        event: &CredentialEvent,
        refusal: &CredentialRefusal,
        peer_rule: bool,
    ) {
        let kind = match refusal.reason {
            "unit-mismatch" | "peer-unproven" => Limited::Impersonation,
            _ => Limited::Connection,
        };
        let logged = !peer_rule || {
            let admission = self.monitor.admit(peer.uid, kind);
            audit::summarized(&admission.closed);
            admission.log
        };
        if logged {
            audit::credential(
                peer,
                event,
                Some((refusal.reason, refusal.code, &refusal.message)),
            );
        }
        let code = refusal.code.unwrap_or(ErrorCode::PermissionDenied);
        if let Some(alert) = self
            .monitor
            .record(peer.uid, Operation::Credential, Some(code))
        {
            audit::peer_alert(&alert);
        }
    }
}

/// Reads `directory/unit/id` (names already checked: no `/`, no `..`):
/// no symbolic link is followed at any level (`O_NOFOLLOW`), only a regular
/// file of at most `max_len` bytes is read, and a FIFO or device is never
/// opened for reading (it is refused by its `fstatat` first).
fn read_credential(
    directory: &Path,
    unit: &str,
    id: &str,
    max_len: usize,
) -> Result<Vec<u8>, CredentialRefusal> {
    let shown = format!("{}/{unit}/{id}", directory.display());
    let problem = |what: &str, e: io::Error| -> CredentialRefusal {
        match e.raw_os_error() {
            Some(libc::ENOENT) => CredentialRefusal::new(
                "missing",
                format!(
                    "{shown} does not exist ({what} missing); make it with `hostkms credential encrypt --unit {unit} --name {id} --key KEY`"
                ),
            ),
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => CredentialRefusal::new(
                "symlink",
                format!(
                    "{what} of {shown} is a symbolic link or not a directory; hostkmsd follows no link in the credential directory: replace it with the real directory or file"
                ),
            ),
            _ => {
                CredentialRefusal::new("unreadable", format!("cannot open {what} of {shown}: {e}"))
            }
        }
    };
    let top = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(directory)
        .map_err(|e| problem("the credential directory", e))?;
    let unit_dir = open_at(
        &top,
        unit,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
    )
    .map_err(|e| problem("the unit's directory", e))?;
    let before = nix::sys::stat::fstatat(&unit_dir, id, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| problem("the file", io::Error::from(e)))?;
    check_regular(&before, &shown, max_len)?;
    let file = open_at(
        &unit_dir,
        id,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
    )
    .map_err(|e| problem("the file", e))?;
    let after =
        nix::sys::stat::fstat(&file).map_err(|e| problem("the file", io::Error::from(e)))?;
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) {
        return Err(CredentialRefusal::new(
            "unreadable",
            format!("{shown} was replaced while it was opened; try again"),
        ));
    }
    check_regular(&after, &shown, max_len)?;
    let mut bytes = Vec::new();
    File::from(file)
        .take(max_len as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CredentialRefusal::new("unreadable", format!("cannot read {shown}: {e}")))?;
    if bytes.len() > max_len {
        return Err(too_large(&shown, max_len));
    }
    Ok(bytes)
}

/// Refuses anything but a regular file of at most `max_len` bytes.
fn check_regular(stat: &FileStat, shown: &str, max_len: usize) -> Result<(), CredentialRefusal> {
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        return Err(CredentialRefusal::new(
            "symlink",
            format!(
                "{shown} is a symbolic link; hostkmsd follows no link in the credential directory: replace it with the file"
            ),
        ));
    }
    if kind != SFlag::S_IFREG {
        return Err(CredentialRefusal::new(
            "not-a-regular-file",
            format!(
                "{shown} is not a regular file; a credential is a file made by `hostkms credential encrypt`"
            ),
        ));
    }
    if u64::try_from(stat.st_size).map_or(true, |size| size > max_len as u64) {
        return Err(too_large(shown, max_len));
    }
    Ok(())
}

fn too_large(shown: &str, max_len: usize) -> CredentialRefusal {
    CredentialRefusal::new(
        "too-large",
        format!(
            "{shown} has more than {max_len} bytes, more than any credential of at most max_plaintext bytes; it is no credential made by `hostkms credential encrypt`"
        ),
    )
}

/// `openat(dir, name, flags)`.
fn open_at(dir: &impl AsFd, name: &str, flags: OFlag) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::openat(dir, name, flags, Mode::empty())?)
}
