//! How to get access after a denial: for a request that named its key,
//! the `[[grant]]` table an admin would add to the daemon's config. Only a
//! key name the command line itself gave is ever shown. `unwrap` and
//! `rewrap` get none: the grant they need is on the ciphertext's key,
//! which the daemon does not name to a peer without one, and `--key` is
//! only a check of it (a guess there must not become advice).

use agent_proto::{ClientError, ErrorCode, Operation};

use crate::args::Command;
use crate::error::CliError;

/// The grantable operation and the key name a command sends, when the key
/// the daemon checks the grant on is the one named on the command line.
pub fn named_key(command: &Command) -> Option<(Operation, &str)> {
    let (op, name) = match command {
        Command::Describe { name } => (Operation::Describe, name),
        Command::Rotate { name } => (Operation::Rotate, name),
        Command::Revoke { name, .. } => (Operation::Revoke, name),
        Command::Disable { name } => (Operation::Disable, name),
        Command::Enable { name } => (Operation::Enable, name),
        Command::MinDecryptionVersion { name, .. } => (Operation::MinDecryptionVersion, name),
        Command::CreateKey { name, .. } => (Operation::Create, name),
        Command::ScheduleDeletion { name, .. } => (Operation::ScheduleDeletion, name),
        Command::CancelDeletion { name } => (Operation::CancelDeletion, name),
        Command::SetRotationPeriod { name, .. } => (Operation::SetRotationPeriod, name),
        Command::SetMetadata(args) => (Operation::UpdateMetadata, &args.name),
        Command::Wrap(args) => (Operation::Wrap, &args.name),
        Command::Datakey(args) => (Operation::DataKey, &args.name),
        Command::Mac(args) => (Operation::Mac, &args.name),
        Command::VerifyMac(args) => (Operation::VerifyMac, &args.name),
        Command::Sign(args) => (Operation::Sign, &args.name),
        Command::Verify(args) => (Operation::Verify, &args.name),
        Command::PublicKey(args) => (Operation::PublicKey, &args.name),
        Command::Export(args) => (Operation::Export, &args.name),
        Command::EncryptFile(args) => (Operation::Wrap, &args.name),
        _ => return None,
    };
    Some((op, name.as_str()))
}

/// The `[[grant]]` table that allows uid `uid` `op` with key `key`, in the
/// config's TOML, on one line.
pub fn grant_hint(uid: u32, op: Operation, key: &str) -> String {
    // TOML basic strings: a key name is [A-Za-z0-9._-], but escape anyway.
    let key = key.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "to get access, an admin adds [[grant]] uids = [{uid}], keys = [\"{key}\"], \
         ops = [\"{op}\"] to the daemon's config (/etc/hostkms/config.toml) and reloads it \
         (systemctl reload hostkms)"
    )
}

/// What to ask for after a denied `decrypt-file` (or an age decryption
/// through `age-plugin-hostkms`): an `unwrap` grant on the file's key, which
/// the daemon does not name to a peer without one, so none is guessed.
pub fn unwrap_hint(uid: u32) -> String {
    format!(
        "decrypting needs an \"unwrap\" grant on the key the file was encrypted with; \
         to get access, an admin adds [[grant]] uids = [{uid}], keys = [\"<that key>\"], \
         ops = [\"unwrap\"] to the daemon's config (/etc/hostkms/config.toml) and reloads it \
         (systemctl reload hostkms)"
    )
}

/// A refusal of the sealing of the root key (protocol version 6) in words
/// that say what to do: `Locked` becomes [`CliError::Locked`] (an admin
/// must unlock the daemon), `WrongPin` [`CliError::WrongPin`]; any other
/// error is returned as it is.
pub fn sealing_refusal(err: CliError) -> CliError {
    match err {
        CliError::Client(ClientError::Daemon {
            code: ErrorCode::Locked,
            message,
        }) => CliError::Locked { message },
        CliError::Client(ClientError::Daemon {
            code: ErrorCode::WrongPin,
            message,
        }) => CliError::WrongPin { message },
        err => err,
    }
}

/// [`explain`] for a decryption of a file: a `PermissionDenied` becomes
/// [`CliError::Denied`] with [`unwrap_hint`].
pub fn explain_unwrap(err: CliError, uid: u32) -> CliError {
    match sealing_refusal(err) {
        CliError::Client(ClientError::Daemon {
            code: ErrorCode::PermissionDenied,
            message,
        }) => CliError::Denied {
            message,
            hint: unwrap_hint(uid),
        },
        err => err,
    }
}

/// Turns the daemon's `PermissionDenied` answer to a request that named
/// its key into [`CliError::Denied`], with the grant that would allow it;
/// any other error is returned as it is.
pub fn explain(err: CliError, named: Option<(Operation, &str)>, uid: u32) -> CliError {
    match (sealing_refusal(err), named) {
        (
            CliError::Client(ClientError::Daemon {
                code: ErrorCode::PermissionDenied,
                message,
            }),
            Some((op, key)),
        ) => CliError::Denied {
            message,
            hint: grant_hint(uid, op, key),
        },
        (err, _) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    fn denied() -> CliError {
        CliError::Client(ClientError::Daemon {
            code: ErrorCode::PermissionDenied,
            message: "uid 1000 may not wrap with key \"db\"".to_string(),
        })
    }

    #[test]
    fn a_denial_naming_its_key_says_which_grant_allows_it() {
        let cli = Cli::try_parse_from(["hostkms", "wrap", "db"]).expect("parse");
        let err = explain(denied(), named_key(&cli.command), 1000);
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.code(), "permission_denied");
        assert_eq!(
            err.to_string(),
            "permission denied: uid 1000 may not wrap with key \"db\"; to get access, an \
             admin adds [[grant]] uids = [1000], keys = [\"db\"], ops = [\"wrap\"] to the \
             daemon's config (/etc/hostkms/config.toml) and reloads it (systemctl reload hostkms)"
        );
    }

    #[test]
    fn a_ciphertexts_key_is_never_named_not_even_as_guessed() {
        for args in [
            &["hostkms", "unwrap"][..],
            &["hostkms", "unwrap", "--key", "guess"],
            &["hostkms", "rewrap", "--key", "guess"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parse");
            assert_eq!(named_key(&cli.command), None);
            let err = explain(denied(), named_key(&cli.command), 1000);
            assert!(matches!(err, CliError::Client(_)), "{err}");
        }
        // Other refusals keep their own message.
        let cli = Cli::try_parse_from(["hostkms", "wrap", "db"]).expect("parse");
        let other = CliError::Client(ClientError::Daemon {
            code: ErrorCode::KeyDisabled,
            message: "key \"db\" is disabled".to_string(),
        });
        let err = explain(other, named_key(&cli.command), 1000);
        assert_eq!(err.to_string(), "key disabled: key \"db\" is disabled");
    }

    #[test]
    fn a_credential_denial_suggests_no_grant() {
        // Only admins encrypt credentials; no grant could allow it.
        let cli = Cli::try_parse_from([
            "hostkms",
            "credential",
            "encrypt",
            "--unit",
            "a.service",
            "--name",
            "x",
            "--key",
            "db",
        ])
        .expect("parse");
        assert_eq!(named_key(&cli.command), None);
    }

    #[test]
    fn files_name_the_grant_they_need() {
        let cli = Cli::try_parse_from(["hostkms", "encrypt-file", "backup"]).expect("parse");
        assert_eq!(named_key(&cli.command), Some((Operation::Wrap, "backup")));
        let cli = Cli::try_parse_from(["hostkms", "decrypt-file"]).expect("parse");
        assert_eq!(named_key(&cli.command), None);
        let err = explain_unwrap(denied(), 1000);
        assert_eq!(err.exit_code(), 1);
        let text = err.to_string();
        assert!(text.contains("uids = [1000]"), "{text}");
        assert!(text.contains("ops = [\"unwrap\"]"), "{text}");
        assert!(text.contains("keys = [\"<that key>\"]"), "{text}");
    }

    #[test]
    fn grant_ops_are_the_configs_names() {
        let cli =
            Cli::try_parse_from(["hostkms", "min-decryption-version", "k", "2"]).expect("parse");
        assert_eq!(
            named_key(&cli.command),
            Some((Operation::MinDecryptionVersion, "k"))
        );
        let cli = Cli::try_parse_from(["hostkms", "datakey", "k"]).expect("parse");
        assert_eq!(named_key(&cli.command), Some((Operation::DataKey, "k")));
    }

    #[test]
    fn lifecycle_and_metadata_commands_name_their_grant() {
        for (args, op) in [
            (
                &["hostkms", "schedule-deletion", "k"][..],
                "schedule-deletion",
            ),
            (&["hostkms", "cancel-deletion", "k"], "cancel-deletion"),
            (
                &["hostkms", "set-rotation-period", "k", "90d"],
                "set-rotation-period",
            ),
            (
                &["hostkms", "set-metadata", "k", "--description", "d"],
                "set-metadata",
            ),
            (
                &["hostkms", "create-key", "k", "--rotation-period", "1w"],
                "create",
            ),
        ] {
            let cli = Cli::try_parse_from(args).expect("parse");
            let (granted, key) = named_key(&cli.command).expect("names its key");
            assert_eq!((granted.as_str(), key), (op, "k"), "{args:?}");
        }
    }

    #[test]
    fn a_locked_daemon_and_a_wrong_pin_say_what_to_do() {
        let locked = CliError::Client(ClientError::Daemon {
            code: ErrorCode::Locked,
            message: "hostkmsd is locked (PCR 7 changed since sealing): an admin must run `hostkms unlock` (`hostkms status` says why)".to_string(),
        });
        let cli = Cli::try_parse_from(["hostkms", "wrap", "db"]).expect("parse");
        let err = explain(locked, named_key(&cli.command), 1000);
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.code(), "locked");
        assert!(
            err.to_string()
                .contains("an admin must run `hostkms unlock`"),
            "{err}"
        );
        let wrong = CliError::Client(ClientError::Daemon {
            code: ErrorCode::WrongPin,
            message: "the TPM allows 2 more tries".to_string(),
        });
        let err = explain(wrong, None, 0);
        assert_eq!((err.exit_code(), err.code()), (1, "wrong_pin"));
        assert!(err.to_string().contains("2 more tries"), "{err}");
    }
}
