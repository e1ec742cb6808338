//! Every way the CLI can fail, with messages that say what went wrong and
//! what to do, and the exit code each failure maps to.

use std::io;
use std::path::Path;

use agent_proto::{ClientError, ErrorCode};

/// Why a command failed. No variant ever carries plaintext or key material.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon refused the request, or the connection to it failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line is inconsistent in a way clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// An input file or standard input could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        /// The file, or "standard input".
        what: String,
        /// What the system said.
        source: io::Error,
    },
    /// The input exceeds what one request can carry.
    #[error(
        "{what} holds more than {limit} bytes, the most one request can carry; \
         encrypt a file of any size with hostkms encrypt-file instead (the age format; \
         decrypt-file or age -d opens it)"
    )]
    InputTooLarge {
        /// The file, or "standard input".
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// An input that should be something hostkms made (a ciphertext, an
    /// export file) is larger than any such thing can be.
    #[error(
        "{what} holds more than {limit} bytes: larger than any {expected} hostkms makes \
         (the most one request can carry); is it the right file?"
    )]
    LargerThanAny {
        /// The file, or "standard input".
        what: String,
        /// The limit in bytes.
        limit: usize,
        /// What the input should be: "ciphertext", "export file".
        expected: &'static str,
    },
    /// A message to sign or MAC exceeds what one request can carry.
    #[error(
        "{what} holds more than {limit} bytes, the most one request can carry (the \
         daemon's own limit, max_plaintext, is 64 KiB unless raised). mac and verify-mac \
         take no more; to sign a larger message, use an ecdsa-p256 key, which signs its \
         SHA-256 digest (sign --digest, verify --digest)"
    )]
    MessageTooLarge {
        /// The file, or "standard input".
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// `verify` or `verify-mac`: the daemon checked, and the signature or
    /// tag is not the key's over the input.
    #[error("invalid: this {what} is not valid for key {key} over this input{versions}")]
    NotVerified {
        /// "signature" or "tag".
        what: &'static str,
        /// The key name.
        key: String,
        /// Which versions were tried, for the message.
        versions: String,
    },
    /// An output file or standard output could not be written.
    #[error("cannot write {what}: {source}")]
    Write {
        /// The file, or "standard output".
        what: String,
        /// What the system said.
        source: io::Error,
    },
    /// The credentials directory, or what is in it, cannot take or show a
    /// credential: the message says what and what to do.
    #[error("{0}")]
    CredentialDir(String),
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
    /// A benchmark thread died unexpectedly.
    #[error("a benchmark thread panicked; the results are incomplete")]
    BenchThread,
    /// The daemon answered `Status` with its health only: this peer may not
    /// see its counters, so there are no metrics to print.
    #[error(
        "the daemon withheld its counters from uid {uid}: only admins (root and \
         members of admin_groups) and peers granted \"metrics\" see them. Run this \
         as an admin, or have one add a [[grant]] with ops = [\"metrics\"] for this \
         user and reload hostkms"
    )]
    CountersWithheld {
        /// This process's effective uid.
        uid: u32,
    },
    /// The daemon has no recovery directory to back up.
    #[error(
        "the daemon has no [recovery] section: its keys are not escrowed and there is no recovery directory to back up. Configure [recovery] (custodians' age recipients) in its config and restart it"
    )]
    NotRecoverable,
    /// The daemon's socket cannot be reached; `diagnosis` says why, from
    /// what is (or is not) at the path.
    #[error("cannot connect to hostkms at {}: {diagnosis}", path.display())]
    Connect {
        /// The socket path tried.
        path: std::path::PathBuf,
        /// Why, and what to do: see [`crate::socket::diagnose`].
        diagnosis: String,
    },
    /// The daemon refused a request that named its key for want of a
    /// grant: its message, and how to get access.
    #[error("permission denied: {message}; {hint}")]
    Denied {
        /// The daemon's message.
        message: String,
        /// The grant that would allow it, naming only the key the request named.
        hint: String,
    },
    /// The input of `unwrap`, `rewrap` or `inspect` is not a ciphertext,
    /// told without asking the daemon.
    #[error("{what}: {why}")]
    NotCiphertext {
        /// The file, or "standard input".
        what: String,
        /// What the input is instead, and what to pass.
        why: String,
    },
    /// `decrypt-file`: the input is not an age file, has no `hostkms`
    /// stanza, or does not authenticate (truncated, altered, reordered).
    #[error("{what}: {why}")]
    AgeFile {
        /// The file, or "standard input".
        what: String,
        /// What is wrong, and where.
        why: String,
        /// The `--json` code: `not_age_file`, `no_hostkms_stanza` or
        /// `damaged_file` (see `crate::age_file::stream`).
        code: &'static str,
    },
    /// `decrypt-file --context`: the file records another context.
    #[error("{what}: {why}")]
    ContextMismatch {
        /// The file, or "standard input".
        what: String,
        /// The contexts recorded and given.
        why: String,
    },
    /// `bench` was stopped by a signal before it finished (its temporary
    /// key was revoked, or [`CliError::BenchKeyLeft`] says otherwise).
    #[error("bench: interrupted by {name}; no results")]
    BenchInterrupted {
        /// The signal's number: the exit code is 128 plus it.
        signal: i32,
        /// The signal's name.
        name: &'static str,
    },
    /// `bench` would make a temporary key this peer may not revoke, so it
    /// made none.
    #[error(
        "bench makes a temporary key ({key}) and revokes it at the end, but uid {uid} may \
         not revoke it, so it would be left behind: nothing was created. Give --key NAME to \
         measure with a key of your own (created if missing, and kept), or have an admin \
         add \"revoke\" to the ops of your [[grant]] with keys = [\"bench-tmp-*\"]"
    )]
    BenchCannotRevoke {
        /// The temporary key's name.
        key: String,
        /// This process's effective uid.
        uid: u32,
    },
    /// `bench` could not learn whether this peer may revoke its temporary
    /// key (the daemon gave another answer than "no such key or version"),
    /// so it made none.
    #[error(
        "bench makes a temporary key ({key}) and revokes it at the end, but could not check \
         that it may revoke it: {source}. Nothing was created; try again, or give --key NAME \
         to measure with a key of your own"
    )]
    BenchRevokeUnchecked {
        /// The temporary key's name.
        key: String,
        /// The answer to the check.
        source: ClientError,
    },
    /// `bench` could not revoke its temporary key: it is still there.
    #[error(
        "bench could not revoke its temporary key {key} ({why}): it is left as it is. \
         An admin, or a peer granted \"revoke\" on it, must revoke it: \
         hostkms revoke {key} --yes"
    )]
    BenchKeyLeft {
        /// The temporary key's name.
        key: String,
        /// Why the revocation failed.
        why: String,
        /// Whether the report was printed on standard output first.
        reported: bool,
    },
    /// The signal handlers that let `bench` clean up could not be installed.
    #[error("bench: cannot catch SIGINT, SIGTERM and SIGHUP to clean up after them: {0}")]
    Signals(io::Error),
    /// The daemon is locked: its root key is sealed behind a PIN, or to
    /// PCRs that changed, and it refuses every key operation until an
    /// admin unlocks it.
    /// The daemon's message says why and what to do; an older daemon's
    /// (which cannot be locked) never gets here.
    #[error("{message}")]
    Locked {
        /// The daemon's message.
        message: String,
    },
    /// The PIN sent with `unlock`, `reseal` or `change-pin` is wrong.
    #[error(
        "wrong PIN: {message}. Every wrong PIN counts against the TPM's dictionary-attack \
         limit: check the PIN (and the file it came from) before trying again"
    )]
    WrongPin {
        /// The daemon's message (the tries left, or the lockout).
        message: String,
    },
    /// A PIN read from a file, standard input or the terminal breaks the
    /// rule (8 to 32 bytes of UTF-8), or two typed PINs differ. Never
    /// holds the PIN.
    #[error("{what}: {why}. Nothing was sent")]
    Pin {
        /// Where it came from: "the PIN from FILE", "the new PIN typed".
        what: String,
        /// What is wrong.
        why: String,
    },
    /// Benchmark requests failed (the results were printed already).
    #[error("benchmark: {errors} requests failed; first failure: {first}")]
    BenchFailed {
        /// How many requests failed, both phases together.
        errors: u64,
        /// The first failure seen.
        first: String,
    },
}

impl CliError {
    /// The process exit code: 1 when the daemon refused a request, or is
    /// too old for it (or benchmark requests failed or left its temporary
    /// key, or a signature or tag is invalid, or a file to decrypt does not
    /// authenticate or records another context), 2 for usage, connection and
    /// local errors, 3 when the daemon is busy: at a limit, so the same
    /// command may succeed later (a script may retry on 3, never on 1);
    /// 128 plus the signal's number for a `bench` a signal stopped.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BenchInterrupted { signal, .. } => {
                u8::try_from(128 + signal).unwrap_or(u8::MAX)
            }
            CliError::Client(ClientError::Daemon {
                code: ErrorCode::Busy,
                ..
            })
            | CliError::BenchRevokeUnchecked {
                source:
                    ClientError::Daemon {
                        code: ErrorCode::Busy,
                        ..
                    },
                ..
            } => 3,
            CliError::Client(ClientError::Daemon { .. })
            | CliError::Client(ClientError::DaemonTooOld { .. })
            | CliError::BenchFailed { .. }
            | CliError::BenchCannotRevoke { .. }
            | CliError::BenchRevokeUnchecked {
                source: ClientError::Daemon { .. } | ClientError::DaemonTooOld { .. },
                ..
            }
            | CliError::BenchKeyLeft { .. }
            | CliError::NotVerified { .. }
            | CliError::Denied { .. }
            | CliError::CountersWithheld { .. }
            | CliError::ContextMismatch { .. }
            | CliError::Locked { .. }
            | CliError::WrongPin { .. }
            | CliError::NotRecoverable => 1,
            CliError::AgeFile { code, .. } if *code == crate::age_file::stream::DAMAGED_FILE => 1,
            _ => 2,
        }
    }

    /// A stable name for the failure, for scripts: the `code` of a `--json`
    /// error. A daemon refusal is its error code in snake case
    /// (`permission_denied`, `key_not_found`, `busy`, ...); a local failure
    /// names its kind (`usage`, `connect`, `read`, `write`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            CliError::Client(err) | CliError::BenchRevokeUnchecked { source: err, .. } => {
                client_code(err)
            }
            CliError::Denied { .. } => daemon_code(ErrorCode::PermissionDenied),
            CliError::Connect { .. } => "connect",
            CliError::Usage(_) => "usage",
            CliError::Read { .. } => "read",
            CliError::InputTooLarge { .. }
            | CliError::MessageTooLarge { .. }
            | CliError::LargerThanAny { .. } => "input_too_large",
            CliError::NotCiphertext { .. } => "not_ciphertext",
            CliError::NotVerified { .. } => "invalid",
            CliError::Write { .. } => "write",
            CliError::CredentialDir(_) => "credential_dir",
            CliError::Random(_) => "random",
            CliError::BenchThread | CliError::BenchFailed { .. } => "bench_failed",
            CliError::BenchInterrupted { .. } => "interrupted",
            CliError::BenchCannotRevoke { .. } => daemon_code(ErrorCode::PermissionDenied),
            CliError::BenchKeyLeft { .. } => "bench_key_left",
            CliError::Signals(_) => "signals",
            CliError::CountersWithheld { .. } => "counters_withheld",
            CliError::NotRecoverable => "not_recoverable",
            CliError::AgeFile { code, .. } => code,
            CliError::ContextMismatch { .. } => "context_mismatch",
            CliError::Locked { .. } => daemon_code(ErrorCode::Locked),
            CliError::WrongPin { .. } => daemon_code(ErrorCode::WrongPin),
            CliError::Pin { .. } => "invalid_pin",
        }
    }

    /// Whether the command printed its JSON document on standard output
    /// before failing (an invalid signature's `{"valid": false, ...}`, a
    /// benchmark's report): with `--json` the error then goes to standard
    /// error only, so that standard output stays one document.
    pub fn stdout_has_result(&self) -> bool {
        matches!(
            self,
            CliError::NotVerified { .. }
                | CliError::BenchFailed { .. }
                | CliError::BenchKeyLeft { reported: true, .. }
        )
    }

    /// The `--json` form of the error: one line,
    /// `{"error":{"code":"...","message":"..."}}`.
    pub fn to_json(&self) -> String {
        let document = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        format!("{document}\n")
    }

    /// A read error naming `path` (or standard input when `None`).
    pub fn read(path: Option<&Path>, source: io::Error) -> CliError {
        CliError::Read {
            what: describe(path, "standard input"),
            source,
        }
    }

    /// A write error naming `path` (or standard output when `None`).
    pub fn write(path: Option<&Path>, source: io::Error) -> CliError {
        CliError::Write {
            what: describe(path, "standard output"),
            source,
        }
    }
}

/// The `--json` code of a client-side failure.
fn client_code(err: &ClientError) -> &'static str {
    match err {
        ClientError::Daemon { code, .. } => daemon_code(*code),
        ClientError::Connect { .. } => "connect",
        ClientError::DaemonTooOld { .. } => "daemon_too_old",
        ClientError::MayHaveExecuted { .. } => "may_have_executed",
        ClientError::TimedOut { .. } => "timed_out",
        ClientError::Io(_)
        | ClientError::Frame(_)
        | ClientError::Decode(_)
        | ClientError::Encode(_)
        | ClientError::Closed
        | ClientError::UnexpectedResponse { .. }
        | ClientError::ListCursorStuck { .. }
        | ClientError::IdMismatch { .. } => "connection",
    }
}

/// A daemon error code in snake case, as `--json` errors name it.
pub fn daemon_code(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::FrameTooLarge => "frame_too_large",
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::PermissionDenied => "permission_denied",
        ErrorCode::KeyNotFound => "key_not_found",
        ErrorCode::KeyExists => "key_exists",
        ErrorCode::KeyRevoked => "key_revoked",
        ErrorCode::VersionRevoked => "version_revoked",
        ErrorCode::KeyDisabled => "key_disabled",
        ErrorCode::InvalidCiphertext => "invalid_ciphertext",
        ErrorCode::PlaintextTooLarge => "plaintext_too_large",
        ErrorCode::Busy => "busy",
        ErrorCode::TpmUnavailable => "tpm_unavailable",
        ErrorCode::Internal => "internal",
        ErrorCode::NotImplemented => "not_implemented",
        ErrorCode::InvalidArgument => "invalid_argument",
        ErrorCode::VersionNotFound => "version_not_found",
        ErrorCode::WrongKeyType => "wrong_key_type",
        ErrorCode::KeyPendingDeletion => "key_pending_deletion",
        ErrorCode::Locked => "locked",
        ErrorCode::WrongPin => "wrong_pin",
        ErrorCode::Unrecognized(_) => "unrecognized",
    }
}

/// "file PATH", or `stdio` when there is no path.
pub fn describe(path: Option<&Path>, stdio: &str) -> String {
    match path {
        Some(path) => format!("file {}", path.display()),
        None => stdio.to_string(),
    }
}

/// Replaces control characters (terminal escapes, newlines) in text that
/// came from the daemon or the user, so that a message cannot forge output.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_refusals_exit_1_and_the_rest_exit_2() {
        let refusal = CliError::from(ClientError::Daemon {
            code: ErrorCode::PermissionDenied,
            message: "uid 65534 may not unwrap with key \"app-db\"".to_string(),
        });
        assert_eq!(refusal.exit_code(), 1);
        assert_eq!(
            refusal.to_string(),
            "permission denied: uid 65534 may not unwrap with key \"app-db\""
        );
        let busy = CliError::from(ClientError::Daemon {
            code: ErrorCode::Busy,
            message: "hostkmsd serves at most 1 connections at once".to_string(),
        });
        assert_eq!(
            busy.exit_code(),
            3,
            "busy is worth a retry, unlike a refusal"
        );
        assert!(busy.to_string().starts_with("busy: "), "{busy}");
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let invalid = CliError::NotVerified {
            what: "signature",
            key: "rel".to_string(),
            versions: " (version 2)".to_string(),
        };
        assert_eq!(invalid.exit_code(), 1, "an invalid signature fails closed");
        assert_eq!(
            invalid.to_string(),
            "invalid: this signature is not valid for key rel over this input (version 2)"
        );
        assert_eq!(CliError::from(ClientError::Closed).exit_code(), 2);
        let read = CliError::read(
            Some(Path::new("/nope")),
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert_eq!(read.exit_code(), 2);
        assert!(read.to_string().starts_with("cannot read file /nope: "));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain text: ok"), "plain text: ok");
        assert_eq!(printable("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
