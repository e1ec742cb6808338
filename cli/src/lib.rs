//! The `hostkms` CLI as a library: its command line, I/O, output rendering,
//! errors and `bench`, used by the `hostkms` binary (src/main.rs), and its
//! clap definition, [`command`], from which `cargo xtask` renders the man
//! page and shell completions.
//!
//! It depends on `agent-proto` only, never on the daemon crate, so building
//! it needs neither libtss2 nor SQLite.

pub mod age_file;
pub mod args;
pub mod backup;
pub mod bench;
pub mod credential;
pub mod denial;
pub mod error;
pub mod inspect;
pub mod io;
pub mod json_docs;
pub mod output;
pub mod pin;
pub mod report;
pub mod sealing;
pub mod socket;

/// How long one request may wait for the daemon before the CLI (or the
/// age plugin) gives up, so that a hung daemon cannot hang a script forever.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The clap definition of the `hostkms` command line, for generating its
/// man page and completions (xtask) from the same source as the parser.
pub fn command() -> clap::Command {
    <args::Cli as clap::CommandFactory>::command()
}
