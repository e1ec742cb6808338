//! `xtask`: build-time tasks of hostkms, never installed. It renders the
//! man pages and shell completions of the Debian package from the real clap
//! definitions (`hostkms_cli::command()`, `hostkms::cli_args::command()`),
//! so the manual cannot drift from the command line, while clap_mangen and
//! clap_complete stay out of the production binaries.
//!
//! ```text
//! cargo run -p xtask -- man OUT_DIR           # hostkms.1, hostkmsd.8
//! cargo run -p xtask -- completions OUT_DIR   # hostkms.bash, _hostkms, hostkms.fish
//! ```

mod completions;
mod man;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clap_complete::Shell;

/// Build-time tasks of hostkms (scripts/build-deb.sh runs them).
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Xtask {
    /// The task.
    #[command(subcommand)]
    task: Task,
}

/// One subcommand per kind of generated file.
#[derive(Debug, Subcommand)]
enum Task {
    /// Write the man pages hostkms.1 and hostkmsd.8 into OUT_DIR, dated by
    /// SOURCE_DATE_EPOCH (Unix seconds) when set, else today (UTC).
    Man {
        /// The directory to write into (created if missing).
        out_dir: PathBuf,
    },
    /// Write the CLI's completions hostkms.bash, _hostkms (zsh) and
    /// hostkms.fish into OUT_DIR.
    Completions {
        /// The directory to write into (created if missing).
        out_dir: PathBuf,
    },
}

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// SOURCE_DATE_EPOCH is set but is not Unix seconds of years 1970-9999.
    #[error(
        "SOURCE_DATE_EPOCH={0:?} is not a whole number of seconds since \
         1970-01-01T00:00:00Z before the year 10000; unset it or fix it"
    )]
    SourceDateEpoch(String),
    /// The date could not be formatted.
    #[error("cannot format the man pages' date: {0}")]
    Date(jiff::Error),
    /// clap_mangen could not render a page.
    #[error("cannot render the man page {page}: {source}")]
    Render {
        /// The page, e.g. `hostkms.1`.
        page: String,
        /// Why.
        source: std::io::Error,
    },
    /// A generated file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file (or the directory it goes in).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the task named on the command line; errors go to stderr, exit 1.
fn main() -> ExitCode {
    let xtask = Xtask::parse();
    match run(&xtask.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Renders and writes the files of `task`.
fn run(task: &Task) -> Result<(), XtaskError> {
    match task {
        Task::Man { out_dir } => {
            let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
            let date = man::build_date(epoch.as_deref(), jiff::Timestamp::now().as_second())?;
            for (page, command) in [
                (&man::HOSTKMS, hostkms_cli::command()),
                (&man::HOSTKMSD, hostkms::cli_args::command()),
            ] {
                let name = page.file_name();
                let roff =
                    man::render(page, command, &date).map_err(|source| XtaskError::Render {
                        page: name.clone(),
                        source,
                    })?;
                write(out_dir, &name, &roff)?;
            }
        }
        Task::Completions { out_dir } => {
            let program = man::HOSTKMS.program;
            for (shell, name) in [
                (Shell::Bash, "hostkms.bash"),
                (Shell::Zsh, "_hostkms"),
                (Shell::Fish, "hostkms.fish"),
            ] {
                let mut command = hostkms_cli::command().name(program).bin_name(program);
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, program, &mut script);
                if shell == Shell::Bash {
                    let keys = completions::bash_key_names(program, &hostkms_cli::command());
                    script.extend_from_slice(keys.as_bytes());
                }
                write(out_dir, name, &script)?;
            }
        }
    }
    Ok(())
}

/// Writes `contents` to `dir/name` whole: into a temporary file first,
/// renamed over the target, so a failed run leaves no half file behind.
fn write(dir: &Path, name: &str, contents: &[u8]) -> Result<(), XtaskError> {
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| XtaskError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(error(dir))?;
    let path = dir.join(name);
    let partial = dir.join(format!("{name}.tmp"));
    std::fs::write(&partial, contents).map_err(error(&partial))?;
    std::fs::rename(&partial, &path).map_err(error(&path))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
