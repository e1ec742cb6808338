//! The command line of `hostkmsd`, here rather than in the binary so that
//! `cargo xtask` renders the daemon's man page from the same clap
//! definition the daemon parses (the Debian package ships it).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// TPM-backed key-management daemon.
#[derive(Debug, Parser)]
#[command(name = "hostkmsd", version, about)]
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
        assert!(args.command.is_none());
        let err = Args::try_parse_from(["hostkmsd", "--sockett", "/x"]).expect_err("refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn accept_rollback_takes_the_config_after_it() {
        let args = Args::try_parse_from(["hostkmsd", "accept-rollback", "--config", "/etc/x.toml"])
            .expect("parse");
        assert!(matches!(args.command, Some(Command::AcceptRollback)));
        assert_eq!(args.config, Some(PathBuf::from("/etc/x.toml")));
    }
}
