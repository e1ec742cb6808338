//! `hostkmsd`: the hostkms daemon. Loads the config, hardens the process,
//! unseals (or creates) the root key and serves the socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hostkms::audit::LogTarget;
use hostkms::cli_args::{Args, Command, RestoreArgs};
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
    let to_journal = hostkms::audit::init(target, &directives);
    // An error the operator must see: logged, and on stderr too when the
    // log went to the journal and stderr is not the journal (a command run
    // by hand; systemd sets JOURNAL_STREAM when stderr is the journal).
    // On a terminal the log's own echo (terminal_echo) has printed it.
    let stderr_is_journal = stderr_is_the_journal();
    let echoed = hostkms::terminal_echo::wanted(to_journal);
    let report = |what: &str, e: &dyn std::fmt::Display, offline: bool| {
        tracing::error!("{e}");
        if to_journal && !echoed && (offline || !stderr_is_journal) {
            eprintln!("hostkmsd{what}: error: {e}");
        }
    };

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
    let pin = match (&args.pin_file, &command) {
        (None, _) => None,
        (Some(_), None) => {
            report(
                "",
                &"--pin-file is for the offline tasks (restore, accept-rollback, rotate-bundle); a running daemon gets its PIN from `hostkms unlock`",
                true,
            );
            return ExitCode::from(2);
        }
        (Some(path), Some(_)) => match hostkms::pin_input::read_pin_file(path) {
            Ok(pin) => Some(pin),
            Err(e) => {
                report("", &e, true);
                return ExitCode::from(2);
            }
        },
    };
    let pin_bytes = pin.as_deref().map(Vec::as_slice);
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            report("", &e, command.is_some());
            return ExitCode::from(2);
        }
    };
    match command {
        Some(Command::Restore(restore)) => return run_restore(&config, restore, pin),
        Some(Command::AcceptRollback) => {
            return match hostkms::accept_rollback::run(&config, pin_bytes) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // An offline operator command: its error always on stderr.
                    report(" accept-rollback", &e, true);
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::RotateBundle) => {
            return match hostkms::rotate_bundle::run(&config, pin_bytes) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report(" rotate-bundle", &e, true);
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    match hostkms::daemon::run(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report("", &e, false);
            ExitCode::FAILURE
        }
    }
}

/// Whether stderr is the journal's stream: systemd says which one in
/// `JOURNAL_STREAM` ("DEVICE:INODE"), and stderr must still be it.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => false,
    }
}

/// `hostkmsd restore`: prints what it did (or why it did nothing) for the
/// operator at the terminal, and audits it. Exits 0 when the keys are
/// restored, 1 when nothing was imported.
fn run_restore(
    config: &hostkms::config::Config,
    args: RestoreArgs,
    pin: Option<zeroize::Zeroizing<Vec<u8>>>,
) -> ExitCode {
    let options = hostkms::restore::RestoreOptions {
        backup: args.backup,
        pin,
        identities: args.identities,
        shares: args.shares,
        merge: args.merge,
        user: args.user,
        bundle: args.bundle,
    };
    match hostkms::restore::run(config, &options) {
        Ok(report) => {
            let restored = &report.restored;
            let names: Vec<&str> = restored.added.iter().map(|k| k.name.as_str()).collect();
            hostkms::audit::keys_restored(&hostkms::audit::RestoreRecord {
                backup: &options.backup,
                state_dir: &config.state_dir,
                bundle: &report.bundle_fingerprint,
                custodians: &report.custodians.join(","),
                keys: &names.join(","),
                added: restored.added.len(),
                versions: restored.versions,
                revoked_versions: restored.revoked_versions,
                kept: restored.kept.len(),
                root_key_check: &report.root_key_check,
            });
            println!("{}", hostkms::restore::summary(&report, &options, config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            hostkms::audit::restore_failed(&options.backup, &e);
            eprintln!("hostkmsd restore: {e}");
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
