//! Streaming a file through age's format in constant memory: the header
//! (one `hostkms` stanza, its file key wrapped by the daemon) and age's
//! STREAM payload (ChaCha20-Poly1305 in 64 KiB chunks), from the `age`
//! crate; and the errors of a file that is not an age file, has no
//! `hostkms` stanza, or is damaged, told with where.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::iter;
use std::path::Path;

use age::armor::ArmoredReader;
use age::{DecryptError, Decryptor, Encryptor, Identity, Recipient};
use agent_proto::{Client, EncryptionContext};
use zeroize::Zeroizing;

use super::identity::{DaemonIdentity, FindError};
use super::recipient::{DaemonRecipient, RecipientSpec};
use super::stanza::{KeyUsed, UnwrapError};
use crate::error::{CliError, describe};

/// The `--json` code of an input that is not an age file.
pub const NOT_AGE_FILE: &str = "not_age_file";
/// The `--json` code of an age file without a `hostkms` stanza.
pub const NO_HOSTKMS_STANZA: &str = "no_hostkms_stanza";
/// The `--json` code of an age file that does not authenticate.
pub const DAMAGED_FILE: &str = "damaged_file";

/// The first line of an ASCII-armored age file (`age -a`).
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// The largest age header `decrypt` reads: a hostkms header (one stanza)
/// is under 1 KiB and many recipients fit; a larger one is refused before
/// age parses it (age 0.12 re-parses the whole header after each line and
/// keeps it all, so a hostile header costs quadratic CPU and its size in
/// memory).
pub const MAX_HEADER: u64 = 64 * 1024;

/// The first line of an age v1 header.
const V1_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// The plaintext size of one STREAM chunk: reads and writes go in these.
pub const CHUNK: usize = 64 * 1024;

/// What one file's encryption or decryption did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// The key and version the daemon used for the file key.
    pub used: KeyUsed,
    /// Plaintext bytes encrypted or decrypted.
    pub bytes: u64,
}

/// Encrypts all of `input` (read from `in_path`, standard input when
/// `None`) to `output` (`out_path`, for messages) as an age file whose file
/// key the daemon wraps under `spec` (one `Wrap` request, before any input
/// is read).
pub fn encrypt(
    client: &mut Client,
    spec: &RecipientSpec,
    input: &mut dyn Read,
    in_path: Option<&Path>,
    output: &mut dyn Write,
    out_path: Option<&Path>,
) -> Result<Streamed, CliError> {
    let recipient = DaemonRecipient::new(client, spec);
    let encryptor =
        Encryptor::with_recipients(iter::once(&recipient as &dyn Recipient)).map_err(|err| {
            match recipient.call.take_error() {
                Some(refused) => CliError::from(refused),
                None => CliError::Write {
                    what: describe(out_path, "standard output"),
                    source: io::Error::other(err.to_string()),
                },
            }
        })?;
    let used = recipient.call.used().ok_or_else(|| {
        CliError::write(out_path, io::Error::other("the daemon wrapped no file key"))
    })?;
    let mut writer = encryptor
        .wrap_output(output)
        .map_err(|e| CliError::write(out_path, e))?;
    let bytes = pump(input, &mut writer, out_path, |e, _| {
        CliError::read(in_path, e)
    })?;
    let output = writer.finish().map_err(|e| CliError::write(out_path, e))?;
    output.flush().map_err(|e| CliError::write(out_path, e))?;
    Ok(Streamed { used, bytes })
}

/// Decrypts the age file `input` (read from `in_path`, standard input when
/// `None`) to `output` (`out_path`, for messages): the file key from its
/// `hostkms` stanza through the daemon (one `Unwrap` request; with an
/// expected context, only a stanza recording exactly that context is tried,
/// and none is refused before the daemon is asked; with an expected key,
/// the daemon refuses a file key wrapped under another key), then the
/// payload, each chunk authenticated before it is written. A header larger
/// than [`MAX_HEADER`] is refused before age parses it.
pub fn decrypt(
    client: &mut Client,
    (expected, key): (Option<&EncryptionContext>, Option<&str>),
    input: &mut dyn Read,
    in_path: Option<&Path>,
    output: &mut dyn Write,
    out_path: Option<&Path>,
) -> Result<Streamed, CliError> {
    let what = describe(in_path, "standard input");
    // Binary age files and ASCII-armored ones (age -a) alike; the armor
    // reader only when the input starts with armor, as it is much slower.
    let mut buffered = BufReader::with_capacity(CHUNK, input);
    let head = buffered
        .fill_buf()
        .map_err(|e| CliError::read(in_path, e))?;
    let mut input: Box<dyn BufRead + '_> = if head.trim_ascii_start().starts_with(ARMOR_BEGIN) {
        Box::new(ArmoredReader::new(buffered))
    } else {
        Box::new(buffered)
    };
    let header = read_header(&mut input).map_err(|err| match err {
        HeaderRead::TooLarge => CliError::AgeFile {
            what: what.clone(),
            why: format!(
                "the age header is larger than {} KiB (a hostkms header is under 1 KiB): \
                 refused before it is parsed; this is not a file hostkms encrypt-file or \
                 age -r made for a hostkms key",
                MAX_HEADER / 1024
            ),
            code: NOT_AGE_FILE,
        },
        HeaderRead::Io(e) => header_error(DecryptError::Io(e), &what, in_path, false),
    })?;
    let v1 = header.starts_with(V1_MAGIC);
    let input = Cursor::new(header).chain(input);
    let decryptor =
        Decryptor::new_buffered(input).map_err(|err| header_error(err, &what, in_path, v1))?;
    let identity = DaemonIdentity::new(client, expected, key);
    let mut reader = match decryptor.decrypt(iter::once(&identity as &dyn Identity)) {
        Ok(reader) => reader,
        Err(err) => {
            return Err(match identity.call.take_error() {
                Some(found) => find_error(found, &what),
                None => header_error(err, &what, in_path, v1),
            });
        }
    };
    let used = identity.call.used().ok_or_else(|| CliError::AgeFile {
        what: what.clone(),
        why: "no file key was unwrapped".to_string(),
        code: NOT_AGE_FILE,
    })?;
    let bytes = pump(&mut reader, output, out_path, |e, good| {
        payload_error(e, good, &what, in_path)
    })?;
    output.flush().map_err(|e| CliError::write(out_path, e))?;
    Ok(Streamed { used, bytes })
}

/// Why [`read_header`] stopped.
enum HeaderRead {
    /// No end of the header within [`MAX_HEADER`] bytes.
    TooLarge,
    /// Reading failed.
    Io(io::Error),
}

/// Reads an age header's lines, up to and including its MAC line (`--- `),
/// and no more than [`MAX_HEADER`] bytes; returns them, for age to parse
/// with the rest of the input after them. Stops early, returning what it
/// read, at the end of the input or after a first line that is not an age
/// header's (age then tells what is wrong); a header without its end within
/// the bound is [`HeaderRead::TooLarge`].
fn read_header(input: &mut dyn BufRead) -> Result<Vec<u8>, HeaderRead> {
    let mut header = Vec::new();
    loop {
        let room = MAX_HEADER.saturating_sub(header.len() as u64);
        if room == 0 {
            return Err(HeaderRead::TooLarge);
        }
        let start = header.len();
        let read = match (&mut *input).take(room).read_until(b'\n', &mut header) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeaderRead::Io(e)),
        };
        let line = header.get(start..).unwrap_or_default();
        let first_not_age = start == 0 && !line.starts_with(b"age-encryption.org/");
        if read == 0 || first_not_age || (line.starts_with(b"--- ") && line.ends_with(b"\n")) {
            return Ok(header);
        }
    }
}

/// Copies `reader` to `writer` in chunks through one buffer wiped when
/// dropped; returns the bytes copied. A read error becomes `read_error` of
/// it and the bytes copied before it; a write error names `out_path`.
fn pump(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    out_path: Option<&Path>,
    read_error: impl Fn(io::Error, u64) -> CliError,
) -> Result<u64, CliError> {
    let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, bytes)),
        };
        writer
            .write_all(buf.get(..n).unwrap_or_default())
            .map_err(|e| CliError::write(out_path, e))?;
        bytes += n as u64;
    }
}

/// The error of a header age could not use; `v1`: the input starts with
/// an age v1 header's first line.
fn header_error(err: DecryptError, what: &str, in_path: Option<&Path>, v1: bool) -> CliError {
    let not_age = |why: &str| CliError::AgeFile {
        what: what.to_string(),
        why: why.to_string(),
        code: NOT_AGE_FILE,
    };
    match err {
        DecryptError::InvalidHeader if v1 => not_age(
            "the age header is malformed or mixes a passphrase (scrypt) stanza with others \
             (age allows a passphrase stanza only alone): give a file hostkms encrypt-file \
             or age -r made",
        ),
        DecryptError::InvalidHeader | DecryptError::UnknownFormat => not_age(
            "not an age file: it does not start with an age v1 header \
             (age-encryption.org/v1) or its ASCII armor; give a file hostkms \
             encrypt-file or age -r made",
        ),
        DecryptError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => not_age(
            "not an age file, or one cut short in its header: the input ends before an \
             age header does",
        ),
        DecryptError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            not_age(&format!("not an age file, or damaged ASCII armor: {e}"))
        }
        DecryptError::Io(e) => CliError::read(in_path, e),
        DecryptError::NoMatchingKeys => CliError::AgeFile {
            what: what.to_string(),
            why: "the file has no hostkms stanza: it was not encrypted to a hostkms key \
                  (hostkms encrypt-file, or age -r age1hostkms1...); decrypt it with the \
                  age identity it was made for"
                .to_string(),
            code: NO_HOSTKMS_STANZA,
        },
        DecryptError::InvalidMac => CliError::AgeFile {
            what: what.to_string(),
            why: "the header's MAC does not match its file key: the header was altered \
                  after encryption"
                .to_string(),
            code: DAMAGED_FILE,
        },
        other => not_age(&format!("age cannot read it: {other}")),
    }
}

/// The error of a file key that did not come out of the stanzas.
fn find_error(err: FindError, what: &str) -> CliError {
    match err {
        FindError::Unwrap(UnwrapError::Daemon(refused)) => CliError::from(refused),
        FindError::ContextMismatch { .. } => CliError::ContextMismatch {
            what: what.to_string(),
            why: err.to_string(),
        },
        other => CliError::AgeFile {
            what: what.to_string(),
            why: other.to_string(),
            code: DAMAGED_FILE,
        },
    }
}

/// The error of a payload that stopped decrypting after `good` plaintext
/// bytes: a chunk that does not authenticate, or a file cut short.
fn payload_error(err: io::Error, good: u64, what: &str, in_path: Option<&Path>) -> CliError {
    let chunk = good / CHUNK as u64 + 1;
    let why = match err.kind() {
        io::ErrorKind::UnexpectedEof => format!(
            "the file is truncated: it ends after {good} bytes of plaintext, without \
             the final chunk that marks the end of an age file"
        ),
        io::ErrorKind::InvalidData => format!(
            "chunk {chunk} of the payload (plaintext bytes from {good}) does not \
             authenticate: the file was altered, truncated or its chunks reordered"
        ),
        _ => return CliError::read(in_path, err),
    };
    CliError::AgeFile {
        what: what.to_string(),
        why,
        code: DAMAGED_FILE,
    }
}
