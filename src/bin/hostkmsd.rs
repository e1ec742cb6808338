//! `hostkmsd`: the hostkms daemon. Loads the config, hardens the process,
//! unseals (or creates) the root key and serves the socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hostkms::config::{Config, DEFAULT_CONFIG_PATH, Overrides};

/// TPM-backed key-management daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). The default path may be absent (all defaults);
    /// a path given here must exist.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path, overriding `socket` in the config.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory, overriding `state_dir` in the config.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// TPM TCTI string, overriding `tcti` in the config
    /// (e.g. "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321").
    #[arg(long, value_name = "TCTI")]
    tcti: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    quiet_tss_logging();
    harden_process();
    init_logging();

    let overrides = Overrides {
        socket: args.socket,
        state_dir: args.state_dir,
        tcti: args.tcti,
    };
    let (path, required) = match args.config {
        Some(path) => (path, true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let config = match Config::load(&path, required, &overrides) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match hostkms::daemon::run(&config) {
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
        // SAFETY: called first in main, before any other thread exists.
        unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    }
}

/// Keeps secrets out of core dumps and files private by default: no core
/// dumps, no ptrace by other processes of the same user, umask 077.
fn harden_process() {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::sys::stat::{Mode, umask};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        eprintln!("hostkmsd: warning: cannot disable core dumps: {e}");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("hostkmsd: warning: cannot mark the process non-dumpable: {e}");
    }
    umask(Mode::from_bits_truncate(0o077));
}

/// Logs to stderr at `info`, or as `HOSTKMS_LOG` says (tracing's filter
/// syntax). tss-esapi's own log lines stay off unless `HOSTKMS_LOG` names
/// `tss_esapi`: expected misses (no persistent SRK) look like errors there,
/// and real failures are reported by the daemon in words.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let mut directives = std::env::var("HOSTKMS_LOG").unwrap_or_else(|_| "info".to_string());
    if !directives.contains("tss_esapi") {
        directives.push_str(",tss_esapi=off");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("hostkmsd: warning: HOSTKMS_LOG={directives:?} is not a valid filter ({e}); logging at info");
        EnvFilter::new("info,tss_esapi=off")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
