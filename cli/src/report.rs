//! How a failed command tells its failure: with `--json`, one JSON object
//! on standard output, `{"error":{"code":"...","message":"..."}}`; else a
//! usage error in clap's own style (`error: ...`, the usage line and a
//! hint), and any other failure as `hostkms: <why>` on standard error. The
//! exit code is the same either way ([`CliError::exit_code`]).

use std::io::Write as _;

use agent_proto::ClientError;
use clap::error::ErrorKind;

use crate::error::{CliError, printable};

/// Turns a failure to reach the daemon into [`CliError::Connect`], which
/// says what is at the socket path (nothing, not a socket, a stale socket,
/// a socket of which group); any other error is returned as it is.
pub fn diagnose_connect(err: CliError) -> CliError {
    match err {
        CliError::Client(ClientError::Connect { path, source }) => {
            let diagnosis = crate::socket::diagnose(&path, &source);
            CliError::Connect { path, diagnosis }
        }
        other => other,
    }
}

/// The text of a usage error as clap prints its own: `error: <why>`, the
/// usage of `subcommand` (the command whose line was wrong), and a hint to
/// its `--help`.
pub fn usage_text(message: &str, subcommand: Option<&str>, color: bool) -> String {
    let mut command = crate::command().color(if color {
        clap::ColorChoice::Auto
    } else {
        clap::ColorChoice::Never
    });
    command.build();
    let mut target = subcommand
        .and_then(|name| command.find_subcommand(name))
        .cloned()
        .unwrap_or(command);
    let error = target.error(ErrorKind::ValueValidation, message);
    if color {
        error.render().ansi().to_string()
    } else {
        error.render().to_string()
    }
}

/// Whether the command line `args` (the program name first) asks for
/// `--json`: the flag before any `--`, after which words are values.
pub fn json_requested<I, S>(args: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    args.into_iter()
        .skip(1)
        .map(|arg| arg.as_ref().to_owned())
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

/// Reports a command line clap refused: with `json`, the `--json` error
/// object (`usage`, clap's message without its colours, usage line and
/// hint) on standard output and exit code 2; otherwise, and always for
/// `--help` and `--version`, as clap prints it. Returns the exit code.
pub fn command_line_failure(err: &clap::Error, json: bool) -> i32 {
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    if !json || informational {
        let _ = err.print();
        return err.exit_code();
    }
    let message = if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "no command given: `hostkms --help` lists the commands".to_string()
    } else {
        clap_message(&err.render().to_string())
    };
    let usage = CliError::Usage(message);
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(usage.to_json().as_bytes())
        .and_then(|()| out.flush());
    i32::from(usage.exit_code())
}

/// The message of clap's rendered (uncoloured) error: its paragraphs but
/// the usage line and the `--help` hint, on one line, without `error: `.
fn clap_message(rendered: &str) -> String {
    let paragraphs: Vec<String> = rendered
        .split("\n\n")
        .map(str::trim)
        .filter(|p| {
            !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more information")
        })
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let joined = paragraphs.join("; ");
    joined
        .strip_prefix("error: ")
        .map(str::to_string)
        .unwrap_or(joined)
}

/// Prints `err` for `--json` (`json`) or a human, and returns its exit
/// code. `subcommand` names the command that ran, for a usage error's
/// usage line.
pub fn report(err: &CliError, json: bool, subcommand: Option<&str>) -> u8 {
    if json && !err.stdout_has_result() {
        let mut out = std::io::stdout().lock();
        let _ = out
            .write_all(err.to_json().as_bytes())
            .and_then(|()| out.flush());
    } else if let CliError::Usage(message) = err {
        use std::io::IsTerminal;
        let color = std::io::stderr().is_terminal();
        let text = usage_text(&printable(message), subcommand, color);
        let _ = std::io::stderr().write_all(text.as_bytes());
    } else {
        let message = printable(&err.to_string());
        let _ = writeln!(std::io::stderr(), "hostkms: {message}");
    }
    err.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::ErrorCode;

    #[test]
    fn json_errors_are_one_object_with_a_code_and_a_message() {
        let refusal = CliError::from(ClientError::Daemon {
            code: ErrorCode::KeyNotFound,
            message: "no key \"x\"\u{1b}[2J".to_string(),
        });
        let text = refusal.to_json();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["error"]["code"], "key_not_found");
        assert_eq!(
            value["error"]["message"],
            "key not found: no key \"x\"\u{1b}[2J"
        );
        assert!(
            !text.contains('\u{1b}'),
            "control characters are escaped: {text}"
        );
        assert_eq!(value.as_object().map(serde_json::Map::len), Some(1));
        let usage = CliError::Usage("'--binary' and '--json' cannot be used together".into());
        let value: serde_json::Value = serde_json::from_str(&usage.to_json()).expect("JSON");
        assert_eq!(value["error"]["code"], "usage");
        assert_eq!(usage.exit_code(), 2);
    }

    #[test]
    fn json_is_asked_for_only_before_a_double_dash() {
        assert!(json_requested(["hostkms", "--json", "ping"]));
        assert!(json_requested(["hostkms", "wrap", "k", "--json"]));
        assert!(!json_requested(["hostkms", "wrap", "--", "--json"]));
        assert!(!json_requested(["--json"]), "the program name is no flag");
        assert!(!json_requested(["hostkms", "--jsonx"]));
    }

    #[test]
    fn clap_messages_lose_the_prefix_usage_and_hint() {
        let err = crate::command()
            .try_get_matches_from(["hostkms", "schedule-deletion", "k", "--days", "3"])
            .expect_err("refused");
        let message = clap_message(&err.render().to_string());
        assert_eq!(
            message,
            "invalid value '3' for '--days <N>': 3 is not in 7..=30"
        );
    }

    #[test]
    fn usage_errors_look_like_clap_ones() {
        let text = usage_text(
            "'--binary' and '--json' cannot be used together",
            Some("wrap"),
            false,
        );
        assert!(
            text.starts_with("error: '--binary' and '--json' cannot be used together\n"),
            "{text}"
        );
        assert!(text.contains("Usage: hostkms wrap"), "{text}");
        assert!(text.contains("--help"), "{text}");
        let clap_own = crate::command()
            .try_get_matches_from(["hostkms", "wrap"])
            .expect_err("refused")
            .render()
            .to_string();
        assert!(clap_own.starts_with("error: "), "{clap_own}");
        assert_eq!(
            clap_own.lines().last(),
            text.lines().last(),
            "the same hint closes both"
        );
    }
}
