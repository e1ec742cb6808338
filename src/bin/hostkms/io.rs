//! Input and output: bounded reads of --in or standard input, the
//! base64-or-raw detection of ciphertext input, base64 encoding into wiped
//! buffers, and writes to standard output or --out files (0600 for secrets).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::error::{CliError, describe};

/// The most bytes one input may hold: the daemon's frame limit, since a
/// larger input could never fit in a request.
pub const MAX_INPUT: usize = agent_proto::DEFAULT_MAX_FRAME as usize;

/// The first bytes of every ciphertext the daemon makes.
pub const CIPHERTEXT_MAGIC: &[u8] = b"HKMS";

/// Whether an output holds secret material (a plaintext): such files are
/// created, or reset, with mode 0600.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    /// A plaintext or a data key.
    Secret,
    /// A ciphertext or metadata.
    Public,
}

/// Reads all of `path` (standard input when `None` or "-"), refusing more
/// than [`MAX_INPUT`] bytes. The buffer is wiped when dropped.
pub fn read_input(path: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let path = path.filter(|p| p.as_os_str() != "-");
    let result = match path {
        Some(path) => fs::File::open(path).and_then(|mut file| read_bounded(&mut file, MAX_INPUT)),
        None => read_bounded(&mut io::stdin().lock(), MAX_INPUT),
    };
    match result {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(CliError::InputTooLarge {
            what: describe(path, "standard input"),
            limit: MAX_INPUT,
        }),
        Err(source) => Err(CliError::read(path, source)),
    }
}

/// Reads at most `limit + 1` bytes into one buffer allocated up front (so
/// no partial copy of a secret is left behind by a reallocation); `None`
/// when the reader holds more than `limit` bytes.
pub fn read_bounded(
    reader: &mut impl Read,
    limit: usize,
) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let capacity = limit.saturating_add(1);
    let mut buf = Zeroizing::new(vec![0u8; capacity]);
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled > limit {
        return Ok(None);
    }
    buf.truncate(filled);
    Ok(Some(buf))
}

/// The ciphertext an input holds: when the input, without surrounding
/// whitespace, is standard base64 of bytes starting with `HKMS`, the decoded
/// bytes; otherwise the input as it is (a raw ciphertext).
pub fn ciphertext_from_input(input: &[u8]) -> Vec<u8> {
    match STANDARD.decode(input.trim_ascii()) {
        Ok(decoded) if decoded.starts_with(CIPHERTEXT_MAGIC) => decoded,
        _ => input.to_vec(),
    }
}

/// Standard base64 of `bytes` in a buffer that is wiped when dropped, sized
/// up front (with room for `extra` more bytes) so it never reallocates.
pub fn base64_secret(bytes: &[u8], extra: usize) -> Zeroizing<String> {
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    let mut out = Zeroizing::new(String::with_capacity(len.saturating_add(extra)));
    STANDARD.encode_string(bytes, &mut out);
    out
}

/// Standard base64 of public bytes (a ciphertext).
pub fn base64_public(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Writes `bytes` to `path`, replacing its content, or to standard output
/// when `path` is `None`. A regular file that receives a secret gets mode
/// 0600 before anything is written to it, whether it is new or not.
pub fn write_output(
    path: Option<&Path>,
    sensitivity: Sensitivity,
    bytes: &[u8],
) -> Result<(), CliError> {
    match path {
        Some(path) => {
            write_file(path, sensitivity, bytes).map_err(|e| CliError::write(Some(path), e))
        }
        None => write_stdout(bytes),
    }
}

/// Writes `bytes` to standard output and flushes it.
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::write(None, e))
}

/// Opens (creating or replacing) and writes one output file; see
/// [`write_output`].
fn write_file(path: &Path, sensitivity: Sensitivity, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true);
    match sensitivity {
        // Not truncated at open: the mode is fixed first, then the content.
        Sensitivity::Secret => options.truncate(false).mode(0o600),
        Sensitivity::Public => options.truncate(true),
    };
    let mut file = options.open(path)?;
    let regular = file.metadata()?.file_type().is_file();
    if regular && sensitivity == Sensitivity::Secret {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
    }
    file.write_all(bytes)?;
    file.flush()
}

/// Replaces `path` whole with `bytes`, readable by all (mode 0644): a
/// metrics collector reading it meanwhile sees the old file or the new one,
/// never half of one.
pub fn write_public_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let write = || -> io::Result<()> {
        let mut file = atomic_write_file::AtomicWriteFile::open(path)?;
        file.write_all(bytes)?;
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
        file.commit()
    };
    write().map_err(|e| CliError::write(Some(path), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ciphertext() -> Vec<u8> {
        let mut bytes = b"HKMS\x01".to_vec();
        bytes.extend((0u8..=255).cycle().take(60));
        bytes
    }

    #[test]
    fn base64_input_is_decoded_with_surrounding_whitespace_ignored() {
        let raw = ciphertext();
        let text = format!("  \n{}\r\n\n", STANDARD.encode(&raw));
        assert_eq!(ciphertext_from_input(text.as_bytes()), raw);
        assert_eq!(ciphertext_from_input(STANDARD.encode(&raw).as_bytes()), raw);
    }

    #[test]
    fn raw_input_is_used_as_it_is() {
        let raw = ciphertext();
        assert_eq!(ciphertext_from_input(&raw), raw);
        // Raw bytes with trailing whitespace stay raw, whitespace included.
        let mut padded = raw.clone();
        padded.push(b'\n');
        assert_eq!(ciphertext_from_input(&padded), padded);
    }

    #[test]
    fn base64_of_something_else_is_taken_as_raw() {
        // Valid base64, but not of a ciphertext: the text itself is sent.
        let text = STANDARD.encode(b"not a ciphertext");
        assert_eq!(ciphertext_from_input(text.as_bytes()), text.as_bytes());
        // Not base64 at all.
        assert_eq!(ciphertext_from_input(b"HKMS!!"), b"HKMS!!");
        assert_eq!(ciphertext_from_input(b""), b"");
        // Base64 that needs more than trimming (inner line breaks) is not decoded.
        let encoded = STANDARD.encode(ciphertext());
        let broken = format!("{}\n{}", &encoded[..20], &encoded[20..]);
        assert_eq!(ciphertext_from_input(broken.as_bytes()), broken.as_bytes());
    }

    #[test]
    fn reads_are_bounded() {
        let data = [7u8; 100];
        let read = read_bounded(&mut &data[..], 100)
            .expect("read")
            .expect("fits");
        assert_eq!(&read[..], &data[..]);
        assert!(read_bounded(&mut &data[..], 99).expect("read").is_none());
        let empty = read_bounded(&mut io::empty(), 10)
            .expect("read")
            .expect("fits");
        assert!(empty.is_empty());
    }

    #[test]
    fn base64_secret_does_not_reallocate() {
        let encoded = base64_secret(b"hello", 1);
        assert_eq!(encoded.as_str(), "aGVsbG8=");
        assert!(encoded.capacity() > encoded.len());
    }

    #[test]
    fn secret_files_are_0600_even_when_they_existed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plain");
        fs::write(&path, b"old content that is longer").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_output(Some(&path), Sensitivity::Secret, b"new").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let fresh = dir.path().join("fresh");
        write_output(Some(&fresh), Sensitivity::Secret, b"x").expect("write");
        let mode = fs::metadata(&fresh).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn write_errors_name_the_file() {
        let err = write_output(
            Some(Path::new("/nonexistent-dir/out")),
            Sensitivity::Public,
            b"x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/out"), "{err}");
        let err = read_input(Some(Path::new("/nonexistent-dir/in"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/in"), "{err}");
    }
}
