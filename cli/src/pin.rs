//! PINs for `unlock`, `reseal` and `change-pin`: from a `--pin-file` (or
//! `--new-pin-file`; `-` is standard input), else asked without echo when
//! standard input is a terminal (a new PIN twice), else read from standard
//! input. Every PIN is checked with [`agent_proto::pin::Pin::parse`] (8 to
//! 32 bytes of UTF-8, one trailing newline stripped) before anything is
//! sent, and lives only in wiped buffers.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};

use agent_proto::pin::Pin;

use crate::error::CliError;

/// The most bytes a PIN file or standard input may hold: a PIN is at most
/// 32 bytes, so anything this large is the wrong file.
const MAX_PIN_INPUT: usize = 1024;

/// Where one PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file (`--pin-file FILE`).
    File(PathBuf),
    /// Standard input that is no terminal, or `--pin-file -`.
    Stdin,
    /// The terminal: asked without echo.
    Terminal,
}

impl Origin {
    /// The origin of a PIN given `file` (its option's value) when standard
    /// input is (`terminal`) or is not a terminal.
    pub fn of(file: Option<&Path>, terminal: bool) -> Origin {
        match file {
            Some(path) if path.as_os_str() == "-" => Origin::Stdin,
            Some(path) => Origin::File(path.to_path_buf()),
            None if terminal => Origin::Terminal,
            None => Origin::Stdin,
        }
    }
}

/// Reads the PINs of one command: standard input gives at most one.
#[derive(Debug)]
pub struct PinReader {
    terminal: bool,
    stdin_read: bool,
}

impl Default for PinReader {
    fn default() -> Self {
        PinReader::new()
    }
}

impl PinReader {
    /// A reader for this process's standard input.
    pub fn new() -> PinReader {
        PinReader {
            terminal: io::stdin().is_terminal(),
            stdin_read: false,
        }
    }

    /// Whether standard input is a terminal (a person can be asked).
    pub fn on_terminal(&self) -> bool {
        self.terminal
    }

    /// Whether a PIN without `file` would be asked on the terminal, or
    /// read from standard input that already gave one (then the caller must
    /// name a file).
    pub fn stdin_taken(&self, file: Option<&Path>) -> bool {
        Origin::of(file, self.terminal) == Origin::Stdin && self.stdin_read
    }

    /// The current PIN (`--pin-file` is `file`); `what` names it in the
    /// prompt and in errors ("PIN").
    pub fn pin(&mut self, file: Option<&Path>, what: &str) -> Result<Pin, CliError> {
        match Origin::of(file, self.terminal) {
            Origin::Terminal => {
                let typed = crate::io::prompt_hidden(&format!("{what}: "))?;
                parse(&typed, &format!("the {what} typed"))
            }
            origin => self.read(origin, what),
        }
    }

    /// A new PIN (`--new-pin-file` is `file`): on a terminal asked twice,
    /// and the two must match.
    pub fn new_pin(&mut self, file: Option<&Path>, what: &str) -> Result<Pin, CliError> {
        match Origin::of(file, self.terminal) {
            Origin::Terminal => {
                let _ = eprintln_rule();
                let first = crate::io::prompt_hidden(&format!("{what}: "))?;
                let pin = parse(&first, &format!("the {what} typed"))?;
                let again = crate::io::prompt_hidden(&format!("{what} again: "))?;
                let again = parse(&again, &format!("the {what} typed again"))?;
                if !pin.same_as(&again) {
                    return Err(CliError::Pin {
                        what: format!("the two {what}s typed"),
                        why: "they differ".to_string(),
                    });
                }
                Ok(pin)
            }
            origin => self.read(origin, what),
        }
    }

    /// A PIN from a file or from standard input (once).
    fn read(&mut self, origin: Origin, what: &str) -> Result<Pin, CliError> {
        let (bytes, from) = match origin {
            Origin::File(path) => {
                let bytes = std::fs::File::open(&path)
                    .and_then(|mut file| crate::io::read_bounded(&mut file, MAX_PIN_INPUT))
                    .map_err(|e| CliError::read(Some(&path), e))?;
                (bytes, format!("file {}", path.display()))
            }
            Origin::Stdin | Origin::Terminal => {
                if self.stdin_read {
                    return Err(CliError::Usage(format!(
                        "standard input gives one PIN only, and it gave one already: give the {what} \
                         with its --*pin-file option. Nothing was sent"
                    )));
                }
                self.stdin_read = true;
                let bytes = crate::io::read_bounded(&mut io::stdin().lock(), MAX_PIN_INPUT)
                    .map_err(|e| CliError::read(None, e))?;
                (bytes, "standard input".to_string())
            }
        };
        let bytes = bytes.ok_or_else(|| CliError::Pin {
            what: format!("the {what} from {from}"),
            why: format!("it holds more than {MAX_PIN_INPUT} bytes, and a PIN is 8 to 32"),
        })?;
        parse(&bytes, &format!("the {what} from {from}"))
    }
}

/// The rule, said once before a new PIN is typed.
fn eprintln_rule() -> io::Result<()> {
    use std::io::Write as _;
    writeln!(
        io::stderr(),
        "hostkms: a PIN is 8 to 32 bytes of UTF-8; `tpm2_unseal -p` takes the same string"
    )
}

/// Checks `bytes` against the PIN rule; `what` says where they came from.
pub fn parse(bytes: &[u8], what: &str) -> Result<Pin, CliError> {
    Pin::parse(bytes).map_err(|e| CliError::Pin {
        what: what.to_string(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_comes_from_the_file_stdin_or_the_terminal() {
        assert_eq!(
            Origin::of(Some(Path::new("/run/pin")), true),
            Origin::File(PathBuf::from("/run/pin"))
        );
        assert_eq!(Origin::of(Some(Path::new("-")), true), Origin::Stdin);
        assert_eq!(Origin::of(None, true), Origin::Terminal);
        assert_eq!(Origin::of(None, false), Origin::Stdin);
    }

    #[test]
    fn a_pin_file_is_checked_and_its_newline_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("pin");
        std::fs::write(&good, b"correct horse\n").unwrap();
        let mut reader = PinReader {
            terminal: false,
            stdin_read: false,
        };
        let pin = reader.pin(Some(&good), "PIN").unwrap();
        assert_eq!(pin.expose(), b"correct horse");
        let short = dir.path().join("short");
        std::fs::write(&short, b"1234567\n").unwrap();
        let err = reader.pin(Some(&short), "PIN").unwrap_err();
        assert_eq!(err.code(), "invalid_pin");
        let message = err.to_string();
        assert!(message.contains("the PIN from file"), "{message}");
        assert!(message.contains("8 to 32 bytes of UTF-8"), "{message}");
        assert!(!message.contains("1234567"), "{message}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 5000]).unwrap();
        let err = reader.new_pin(Some(&big), "new PIN").unwrap_err();
        assert!(err.to_string().contains("more than 1024 bytes"), "{err}");
    }

    #[test]
    fn standard_input_gives_one_pin_only() {
        let mut reader = PinReader {
            terminal: false,
            stdin_read: true,
        };
        assert!(reader.stdin_taken(None));
        assert!(!reader.stdin_taken(Some(Path::new("/f"))));
        let err = reader.new_pin(None, "new PIN").unwrap_err();
        assert_eq!(err.code(), "usage");
        assert!(err.to_string().contains("one PIN only"), "{err}");
    }
}
