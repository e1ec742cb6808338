//! `age-plugin-hostkms`: the age plugin of hostkms. The `age` CLI runs it
//! with `--age-plugin=recipient-v1` to encrypt to an `age1hostkms1…`
//! recipient and `--age-plugin=identity-v1` to decrypt with an
//! `AGE-PLUGIN-HOSTKMS-1…` identity; the file key is wrapped and unwrapped
//! by the daemon at `$HOSTKMS_SOCKET` (else the default socket). See
//! `hostkms_cli::age_file::plugin`.

use std::io::Write as _;
use std::process::ExitCode;

use hostkms_cli::age_file::plugin::Handler;

/// What the plugin says when run by hand.
const USAGE: &str = "\
age-plugin-hostkms: the age plugin of hostkms; age runs it, not you.

Encrypt to a hostkms key:   age -r \"$(hostkms age-recipient NAME)\" -o FILE.age FILE
Decrypt through hostkmsd:   hostkms age-identity > id.txt; age -d -i id.txt FILE.age
                            (or age -d -j hostkms FILE.age with age 1.2 or later)

The daemon is reached at $HOSTKMS_SOCKET, else /run/hostkms/hostkms.sock.
";

fn main() -> ExitCode {
    let mut state_machine = None;
    for arg in std::env::args().skip(1) {
        match arg.strip_prefix("--age-plugin=") {
            Some(machine) => state_machine = Some(machine.to_string()),
            None if arg == "--version" => {
                let _ = writeln!(
                    std::io::stdout(),
                    "age-plugin-hostkms {}",
                    env!("CARGO_PKG_VERSION")
                );
                return ExitCode::SUCCESS;
            }
            None => {
                let _ = std::io::stderr().write_all(USAGE.as_bytes());
                return ExitCode::from(2);
            }
        }
    }
    let Some(state_machine) = state_machine else {
        let _ = std::io::stderr().write_all(USAGE.as_bytes());
        return ExitCode::from(2);
    };
    match age_plugin::run_state_machine(&state_machine, Handler) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "age-plugin-hostkms: {err}");
            ExitCode::FAILURE
        }
    }
}
