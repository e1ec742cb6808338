//! The command line of `hostkmsd`, here rather than in the binary so that
//! `cargo xtask` renders the daemon's man page from the same clap
//! definition the daemon parses (the Debian package ships it).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where hostkmsd's log goes, for `hostkmsd --help` and the man page.
pub const LOGS: &str = "\
Logs: to journald when its socket (/run/systemd/journal/socket) is there, else
to standard error. HOSTKMS_LOG_TARGET=auto (the default), journal or stderr
chooses; HOSTKMS_LOG filters the ordinary lines (tracing's syntax, default
info; audit events and alerts always pass). Read them with
journalctl -u hostkms (or journalctl -t hostkmsd for a daemon run by hand);
journalctl -u hostkms -p warning shows denials, failures and alerts.
Run by hand in a terminal while journald listens, hostkmsd also prints its
warnings and errors on the terminal, so a start-up failure is seen where it
was started; the subcommands always print their errors.

Sockets: the main socket (config `socket`, or the one systemd passes), and
the systemd-credential socket: the one systemd passes named \"credentials\"
(hostkms-credentials.socket, /run/hostkms/credentials.sock), or the path
[credentials] socket names. It serves LoadCredential=ID:SOCKET to the unit
that asks, from [credentials] directory (default /etc/hostkms/credentials),
when a grant of \"credential\" names the unit.";

/// TPM-backed key-management daemon. Without a subcommand it serves; the
/// subcommands are offline tasks run with the service stopped.
#[derive(Debug, Parser)]
#[command(name = "hostkmsd", version, about, after_long_help = LOGS)]
pub struct Args {
    /// Config file (TOML). The default path may be absent (all defaults);
    /// a path given here must exist.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Socket path, overriding `socket` in the config.
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// State directory, overriding `state_dir` in the config.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// TPM TCTI string, overriding `tcti` in the config
    /// (e.g. "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321").
    #[arg(long, value_name = "TCTI", global = true)]
    pub tcti: Option<String>,
    /// For the offline tasks, when the root key is sealed to a PIN: the
    /// file holding the PIN ("-" for standard input). The daemon itself
    /// never reads a PIN: a locked daemon waits for `hostkms unlock`.
    #[arg(long, value_name = "FILE", global = true)]
    pub pin_file: Option<PathBuf>,
    /// An offline task instead of serving (the daemon must be stopped).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Offline tasks on the state dir, run with the daemon stopped.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accept the key store as it is after its rollback protection refused it.
    ///
    /// For an older copy restored on purpose, or a store whose TPM counter
    /// was deleted. Run with the daemon stopped: records the TPM counter's
    /// current value (or binds the store to a new counter), audits it and
    /// prints what is in force. Versions revoked after the copy was taken
    /// are live again until revoked again.
    AcceptRollback,
    /// Replace the recovery bundle identity (rare; say, after a custodian's
    /// copy may have leaked).
    ///
    /// Run with the daemon stopped: seals a new bundle identity in the key
    /// store, escrows it to the configured [recovery] custodians and
    /// re-encrypts every key file of the recovery directory to it. Copies
    /// of the directory taken before still open with the old identity.
    RotateBundle,
    /// Restore the keys of a recovery directory or backup tar onto this host.
    ///
    /// Every key of the recovery directory, or of a `hostkms backup` tar, is
    /// imported into this host's store, sealed under this host's TPM, in one
    /// transaction. Needs as many custodians as the bundle's threshold, each
    /// as an age identity file (--identity) or as the share its custodian
    /// decrypted with `age -d` (--share). Run with the daemon stopped.
    Restore(RestoreArgs),
}

/// The arguments of `hostkmsd restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A custodian's age identity file (from age-keygen); repeat for each
    /// custodian taking part.
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<PathBuf>,
    /// A share of the bundle identity, as its custodian decrypted it with
    /// `age -d -i CUSTODIAN.key custodians/N.age`; repeat for each share.
    #[arg(long = "share", value_name = "FILE")]
    pub shares: Vec<PathBuf>,
    /// Add the backup's keys to a store that already holds keys. An
    /// existing key id is never overwritten (it is kept as it is and
    /// skipped); a backup key whose name another key holds is refused.
    #[arg(long)]
    pub merge: bool,
    /// The user the daemon runs as (default: the owner of the state dir,
    /// or, for a state dir not yet made, the user running the restore).
    /// When run as root, the restore writes as this user, so every file it
    /// leaves is that user's.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The bundle identity the backup must be made for: its recipient
    /// (`age1...`) or fingerprint, as written down when the old host escrowed
    /// it (`hostkms status` on that host, its journal's escrow event). A
    /// backup is only as good as this: anyone can make a backup whose
    /// custodian files the real custodians open, so the restore refuses
    /// every bundle but the one named here.
    #[arg(long, value_name = "RECIPIENT|FINGERPRINT")]
    pub bundle: String,
    /// The recovery directory, or a tar file written by `hostkms backup`.
    #[arg(value_name = "BACKUP")]
    pub backup: PathBuf,
}

/// The clap definition of the `hostkmsd` command line, for its man page.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn overrides_parse_and_misspelt_options_are_refused() {
        let args = Args::try_parse_from([
            "hostkmsd",
            "--config",
            "/etc/x.toml",
            "--tcti",
            "swtpm:port=2321",
        ])
        .expect("parse");
        assert_eq!(args.config, Some(PathBuf::from("/etc/x.toml")));
        assert_eq!(args.tcti.as_deref(), Some("swtpm:port=2321"));
        assert!(args.socket.is_none() && args.state_dir.is_none());
        assert!(args.command.is_none(), "plain hostkmsd serves");
        let err = Args::try_parse_from(["hostkmsd", "--sockett", "/x"]).expect_err("refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn restore_takes_identities_shares_and_the_config_after_the_subcommand() {
        let args = Args::try_parse_from([
            "hostkmsd",
            "restore",
            "--config",
            "/etc/x.toml",
            "--identity",
            "a.key",
            "--share",
            "b.share",
            "--identity",
            "c.key",
            "--merge",
            "--bundle",
            "0123456789abcdef",
            "/backup.tar",
        ])
        .expect("parse");
        assert_eq!(args.config, Some(PathBuf::from("/etc/x.toml")));
        let Some(Command::Restore(restore)) = args.command else {
            panic!("restore expected");
        };
        assert_eq!(
            restore.identities,
            [PathBuf::from("a.key"), PathBuf::from("c.key")]
        );
        assert_eq!(restore.shares, [PathBuf::from("b.share")]);
        assert!(restore.merge);
        assert_eq!(restore.bundle, "0123456789abcdef");
        assert_eq!(restore.backup, PathBuf::from("/backup.tar"));
        let err = Args::try_parse_from(["hostkmsd", "restore", "--identity", "a.key"])
            .expect_err("BACKUP is required");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err =
            Args::try_parse_from(["hostkmsd", "restore", "--identity", "a.key", "/backup.tar"])
                .expect_err("--bundle is required: a backup cannot vouch for itself");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn accept_rollback_takes_the_config_after_it() {
        let args = Args::try_parse_from(["hostkmsd", "accept-rollback", "--config", "/etc/x.toml"])
            .expect("parse");
        assert!(matches!(args.command, Some(Command::AcceptRollback)));
        assert_eq!(args.config, Some(PathBuf::from("/etc/x.toml")));
    }
}
