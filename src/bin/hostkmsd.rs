//! `hostkmsd`: the hostkms daemon. Loads the config, hardens the process,
//! unseals (or creates) the root key and serves the socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hostkms::audit::LogTarget;
use hostkms::cli_args::{Args, Command};
use hostkms::config::{DEFAULT_CONFIG_PATH, Overrides};
use hostkms::daemon::ConfigSource;

fn main() -> ExitCode {
    let args = Args::parse();
    quiet_tss_logging();
    harden_process();
    let directives = std::env::var("HOSTKMS_LOG").unwrap_or_else(|_| "info".to_string());
    let target = std::env::var("HOSTKMS_LOG_TARGET").unwrap_or_default();
    let target = LogTarget::parse(&target).unwrap_or_else(|| {
        eprintln!(
            "hostkmsd: warning: HOSTKMS_LOG_TARGET={target:?} is not auto, journal or stderr; using auto"
        );
        LogTarget::Auto
    });
    hostkms::audit::init(target, &directives);

    let overrides = Overrides {
        socket: args.socket,
        state_dir: args.state_dir,
        tcti: args.tcti,
    };
    let (path, required) = match args.config {
        Some(path) => (path, true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let source = ConfigSource {
        path,
        required,
        overrides,
    };
    let command = args.command;
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::AcceptRollback) = command {
        return match hostkms::accept_rollback::run(&config) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::RotateBundle) = command {
        return match hostkms::rotate_bundle::run(&config) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    match hostkms::daemon::run(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// tpm2-tss prints its own errors to stderr; the daemon reports TPM failures
/// itself, in words, so tss logging stays off unless TSS2_LOG asks for it.
fn quiet_tss_logging() {
    if std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: main calls this before the tokio runtime or any other
        // thread starts (only argument parsing runs before it), so no other
        // thread can read or write the environment meanwhile.
        unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    }
}

/// Keeps secrets out of core dumps and files private by default: no core
/// dumps, no ptrace by other processes of the same user, umask 077.
fn harden_process() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use nix::sys::stat::{Mode, umask};
    // Under systemd LimitCORE=0 has done this already, and the unit's
    // system-call filter may refuse setrlimit.
    if getrlimit(Resource::RLIMIT_CORE) != Ok((0, 0)) {
        if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
            eprintln!("hostkmsd: warning: cannot disable core dumps: {e}");
        }
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("hostkmsd: warning: cannot mark the process non-dumpable: {e}");
    }
    umask(Mode::from_bits_truncate(0o077));
}
