//! Reading a PIN from a file for the offline tasks (`--pin-file`).

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

/// The most bytes read from a PIN file: a PIN is at most 32 bytes, and a
/// file much longer is not a PIN file.
const MAX_PIN_FILE: u64 = 1024;

/// Why a PIN file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinFileError {
    /// The file could not be read.
    #[error("cannot read the PIN from {path}: {source}")]
    Read {
        /// The file ("-": standard input).
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The contents are not a valid PIN.
    #[error("the PIN in {path} is not valid: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What the rule is.
        problem: String,
    },
}

/// Reads and checks the PIN in `path` ("-": standard input), by the rules
/// of `agent_proto::pin` (one trailing newline stripped, 8 to 32 bytes of
/// UTF-8).
pub fn read_pin_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PinFileError> {
    let shown = path.display().to_string();
    let mut bytes = Zeroizing::new(Vec::new());
    let read = if shown == "-" {
        std::io::stdin().take(MAX_PIN_FILE).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(MAX_PIN_FILE).read_to_end(&mut bytes))
    };
    read.map_err(|source| PinFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let pin = agent_proto::pin::Pin::parse(&bytes).map_err(|e| PinFileError::Invalid {
        path: shown,
        problem: e.to_string(),
    })?;
    Ok(Zeroizing::new(pin.expose().to_vec()))
}
