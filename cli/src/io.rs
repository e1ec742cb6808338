//! Input and output: bounded reads of --in or standard input, the
//! base64-or-raw detection of ciphertext input, base64 encoding into wiped
//! buffers, and writes to standard output or --out files (0600 for secrets).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt as _, PermissionsExt};

use atomic_write_file::unix::OpenOptionsExt as _;
use std::path::Path;

use agent_proto::ciphertext;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::error::{CliError, describe};

/// The most bytes one input may hold: the daemon's frame limit, since a
/// larger input could never fit in a request.
pub const MAX_INPUT: usize = agent_proto::DEFAULT_MAX_FRAME as usize;

/// Whether an output holds secret material (a plaintext): such files are
/// always new files of mode 0600.
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

/// Reads the ciphertext input of `unwrap`, `rewrap` or `inspect` from
/// `path` (standard input when `None` or "-") and decodes it
/// ([`ciphertext_from_input`]); too large an input is told as larger than
/// any ciphertext, not as a plaintext to wrap differently.
pub fn read_ciphertext(path: Option<&Path>) -> Result<Vec<u8>, CliError> {
    let path = path.filter(|p| p.as_os_str() != "-");
    let input = read_input(path).map_err(|err| match err {
        CliError::InputTooLarge { what, limit } => CliError::LargerThanAny {
            what,
            limit,
            expected: "ciphertext",
        },
        other => other,
    })?;
    ciphertext_from_input(&input, &describe(path, "standard input"))
}

/// Reads a message to sign, verify or MAC from `path` (standard input
/// when `None` or "-"): like [`read_input`], but too large a message gets
/// advice that fits signing rather than wrapping.
pub fn read_message(path: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, CliError> {
    read_input(path).map_err(|err| match err {
        CliError::InputTooLarge { what, limit } => CliError::MessageTooLarge { what, limit },
        other => other,
    })
}

/// The most bytes a `--signature` or `--tag` file may hold: far more than
/// any signature (an ML-DSA-65 one is 3,309 bytes), in base64 or raw.
pub const MAX_SIGNATURE_FILE: usize = 64 * 1024;

/// The bytes a `--signature` or `--tag` argument (`flag`) stands for: when
/// `arg` names an existing file, its contents, decoded when they are base64
/// (surrounding whitespace ignored) and taken as raw bytes otherwise; else
/// `arg` itself as base64 text.
pub fn bytes_from_arg(flag: &str, arg: &str) -> Result<Vec<u8>, CliError> {
    let path = Path::new(arg);
    // Any file but a directory: a pipe (`<(...)`, /dev/stdin) holds a
    // signature as well as a regular file; the read is bounded either way.
    if std::fs::metadata(path).is_ok_and(|meta| !meta.is_dir()) {
        let contents = fs::File::open(path)
            .and_then(|mut file| read_bounded(&mut file, MAX_SIGNATURE_FILE))
            .map_err(|e| CliError::read(Some(path), e))?
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "{flag} {}: the file holds more than {MAX_SIGNATURE_FILE} bytes, \
                     more than any signature or tag",
                    path.display()
                ))
            })?;
        return Ok(match STANDARD.decode(contents.trim_ascii()) {
            Ok(decoded) if !decoded.is_empty() => decoded,
            _ => contents.to_vec(),
        });
    }
    match STANDARD.decode(arg.trim()) {
        Ok(decoded) if !decoded.is_empty() => Ok(decoded),
        Ok(_) => Err(CliError::Usage(format!(
            "{flag} is empty: give the base64 text, or a file that holds it"
        ))),
        Err(err) => Err(CliError::Usage(format!(
            "{flag} '{}' is neither a file nor standard base64 ({err}): give the \
             base64 text that sign or mac printed, or the file it was written to",
            crate::error::printable(arg)
        ))),
    }
}

/// The SHA-256 digest an input of `sign --digest` or `verify --digest`
/// holds: 32 raw bytes, or 64 hex digits as the first word (so that the
/// output of `sha256sum FILE` or `openssl dgst -sha256 -r` works too).
pub fn digest_from_input(input: &[u8]) -> Result<Vec<u8>, CliError> {
    if input.len() == 32 {
        return Ok(input.to_vec());
    }
    let word = input
        .split(|b| b.is_ascii_whitespace())
        .find(|word| !word.is_empty())
        .unwrap_or_default();
    if word.len() == 64 && word.iter().all(u8::is_ascii_hexdigit) {
        let decoded: Option<Vec<u8>> = word
            .chunks_exact(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect();
        if let Some(digest) = decoded {
            return Ok(digest);
        }
    }
    Err(CliError::Usage(format!(
        "--digest: the input is {} bytes, not a SHA-256 digest: give its 32 raw bytes \
         (openssl dgst -sha256 -binary FILE) or 64 hex digits (sha256sum FILE)",
        input.len()
    )))
}

/// Lower-case hex of `bytes` in a buffer that is wiped when dropped.
pub fn hex_secret(bytes: &[u8]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Zeroizing::new(String::with_capacity(bytes.len() * 2 + 1));
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
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

/// The ciphertext an input (read from `what`, for messages) holds: a raw
/// ciphertext (starting with the magic `HKMS`, [`ciphertext::MAGIC`]) as
/// it is; else standard base64 of one, surrounding whitespace and line
/// breaks anywhere ignored (`base64` wraps at 76 columns), decoded.
///
/// Anything else is diagnosed here, before the daemon is asked (it could
/// only answer "invalid ciphertext"): an empty input, `wrap --json`
/// output, base64 of something else, or neither base64 nor a ciphertext.
pub fn ciphertext_from_input(input: &[u8], what: &str) -> Result<Vec<u8>, CliError> {
    let not = |why: &str| CliError::NotCiphertext {
        what: what.to_string(),
        why: why.to_string(),
    };
    if input.starts_with(&ciphertext::MAGIC) {
        return Ok(input.to_vec());
    }
    let trimmed = input.trim_ascii();
    if trimmed.is_empty() {
        return Err(not(
            "input is empty: give the ciphertext wrap printed (base64) or wrote (--binary)",
        ));
    }
    if trimmed.first() == Some(&b'{') && is_wrap_json(trimmed) {
        return Err(not(
            "this is `wrap --json` output, pass the ciphertext field: e.g. jq -r .ciphertext FILE | hostkms unwrap",
        ));
    }
    let is_base64_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if trimmed
        .iter()
        .all(|b| is_base64_char(b) || b.is_ascii_whitespace())
    {
        let joined: Zeroizing<Vec<u8>> = Zeroizing::new(
            trimmed
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        );
        if let Ok(decoded) = STANDARD.decode(&joined) {
            if decoded.starts_with(&ciphertext::MAGIC) {
                return Ok(decoded);
            }
            return Err(not(
                "the input is base64, but of something that is not a hostkms ciphertext \
                 (no HKMS header): give what wrap printed",
            ));
        }
    }
    Err(not(
        "not base64 and no hostkms header: the input is neither the base64 text wrap \
         prints nor a raw ciphertext (wrap --binary, which starts with HKMS)",
    ))
}

/// Whether `text` is a JSON object with a string field `ciphertext`, as
/// `wrap --json` prints.
fn is_wrap_json(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(text)
        .ok()
        .and_then(|value| value.get("ciphertext").map(serde_json::Value::is_string))
        .unwrap_or(false)
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

/// The file an `--out` names: `None` for standard output (no `--out`, or
/// `--out -`, as `--in -` is standard input).
pub fn out_path(path: Option<&Path>) -> Option<&Path> {
    path.filter(|p| p.as_os_str() != "-")
}

/// Refuses `--out -` for a command whose standard output carries its own
/// report (`command`), so the output cannot go there too.
pub fn refuse_out_dash(out: &Path, command: &str) -> Result<(), CliError> {
    if out.as_os_str() == "-" {
        return Err(CliError::Usage(format!(
            "--out - (standard output) is not for {command}: it prints its report on \
             standard output; give --out FILE"
        )));
    }
    Ok(())
}

/// Refuses an `--out` FILE that exists (a link, dangling or not, counts)
/// unless `force`: secret outputs never replace a file by surprise.
pub fn refuse_existing(out: &Path, force: bool) -> Result<(), CliError> {
    if !force && fs::symlink_metadata(out).is_ok() {
        return Err(CliError::Usage(format!(
            "{} exists; give --force to replace it, or another --out",
            out.display()
        )));
    }
    Ok(())
}

/// A secret `--out` file made ready before the daemon is asked for the
/// secret: FILE checked (not there unless `--force`, nothing but a regular
/// file to replace) and its temporary file created (mode 0600) in FILE's
/// directory, so a path that cannot be written is refused before a data
/// key is made or a ciphertext decrypted. [`SecretOutput::write`] checks
/// again, fills it and renames it over FILE; dropped unwritten, the
/// temporary file is removed.
pub struct SecretOutput {
    path: std::path::PathBuf,
    force: bool,
    file: atomic_write_file::AtomicWriteFile,
}

impl SecretOutput {
    /// Prepares `path` (see [`SecretOutput`]).
    pub fn prepare(path: &Path, force: bool) -> Result<SecretOutput, CliError> {
        // What --force cannot fix is told first.
        refuse_non_regular(path).map_err(|e| CliError::write(Some(path), e))?;
        refuse_existing(path, force)?;
        let file = open_replacement(path, FileMode::Exactly(0o600))
            .map_err(|e| CliError::write(Some(path), e))?;
        Ok(SecretOutput {
            path: path.to_path_buf(),
            force,
            file,
        })
    }

    /// The file this output replaces.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` and renames the file over the path, after checking
    /// again that nothing appeared there meanwhile (unless `--force`) and
    /// that it did not become something other than a regular file.
    pub fn write(self, bytes: &[u8]) -> Result<(), CliError> {
        let path = self.path.clone();
        self.write_with(|file| {
            file.write_all(bytes)
                .map_err(|e| CliError::write(Some(&path), e))
        })
    }

    /// Streams the output into the temporary file through `fill`, then
    /// (when `fill` succeeded) checks FILE again as [`Self::write`] does,
    /// syncs the temporary file and renames it over FILE. When `fill` or
    /// anything after it fails, the temporary file is removed and FILE is
    /// left as it was: nothing partial is ever at FILE.
    pub fn write_with<T>(
        mut self,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        let value = fill(&mut self.file)?;
        refuse_existing(&self.path, self.force)?;
        let path = self.path;
        refuse_non_regular(&path)
            .and_then(|()| {
                self.file
                    .commit()
                    .map_err(|e| explain_directory_error(&path, e))
            })
            .map_err(|e| CliError::write(Some(&path), e))?;
        Ok(value)
    }
}

/// Writes `bytes` to `path`, or to standard output when `path` is `None`
/// or "-". A file is written as [`replace_file`] does: a secret gets a new
/// file of mode 0600, a public output one of mode 0666 less the umask.
pub fn write_output(
    path: Option<&Path>,
    sensitivity: Sensitivity,
    bytes: &[u8],
) -> Result<(), CliError> {
    match out_path(path) {
        Some(path) => {
            let mode = match sensitivity {
                Sensitivity::Secret => FileMode::Exactly(0o600),
                Sensitivity::Public => FileMode::Umask(0o666),
            };
            replace_file(path, bytes, mode).map_err(|e| CliError::write(Some(path), e))
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

/// The mode of a file [`replace_file`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// This mode, whatever the umask.
    Exactly(u32),
    /// This mode less the umask, as for any new file.
    Umask(u32),
}

/// Replaces `path` whole with a new file holding `bytes`: a temporary file
/// created in `path`'s directory (exclusively, with `mode`, owned by the
/// caller) is written, synced and renamed over `path`. Whatever was at
/// `path` is never written through: a symbolic link there is replaced, not
/// followed (so root writing into a directory another user controls cannot
/// be made to overwrite the link's target), and a file another user made is
/// replaced by one of the caller's (so they keep no descriptor on the
/// secret, and cannot have chosen its mode). Readers see the old file or
/// the new one, never part of one; on failure the temporary file is removed
/// and `path` is left as it was.
///
/// Refused, before anything is created: a `path` that is, or is a link to,
/// something other than a regular file (a FIFO, a device, a directory):
/// replacing it would break what uses it, and writing into it is what
/// standard output is for.
pub fn replace_file(path: &Path, bytes: &[u8], mode: FileMode) -> io::Result<()> {
    let file = open_replacement(path, mode)?;
    finish_replacement(file, path, bytes)
}

/// The first half of [`replace_file`]: refuses what it refuses and creates
/// the temporary file, with its mode, in `path`'s directory.
fn open_replacement(path: &Path, mode: FileMode) -> io::Result<atomic_write_file::AtomicWriteFile> {
    refuse_non_regular(path)?;
    let create_mode = match mode {
        FileMode::Exactly(mode) | FileMode::Umask(mode) => mode,
    };
    let file = atomic_write_file::AtomicWriteFile::options()
        // The defaults copy the mode and owner of what is at `path`: the
        // owner and mode of another user's file, or 0777 from a link.
        .preserve_mode(false)
        .preserve_owner(false)
        .mode(create_mode)
        .open(path)
        .map_err(|e| explain_directory_error(path, e))?;
    if let FileMode::Exactly(mode) = mode {
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// The second half of [`replace_file`]: writes, syncs and renames.
fn finish_replacement(
    mut file: atomic_write_file::AtomicWriteFile,
    path: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    file.write_all(bytes)?;
    file.commit().map_err(|e| explain_directory_error(path, e))
}

/// Refuses a `path` that exists and is not a regular file, or is a link
/// that leads to something other than a regular file (a dangling link is
/// replaced like any other).
fn refuse_non_regular(path: &Path) -> io::Result<()> {
    let found = match fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let (meta, through_link) = if found.is_symlink() {
        match fs::metadata(path) {
            Ok(target) => (target, true),
            Err(_) => return Ok(()),
        }
    } else {
        (fs::symlink_metadata(path)?, false)
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something"
    };
    let link = if through_link { "a link to " } else { "" };
    // Whoever made it decides who reads what is written into it: a FIFO
    // another user planted hands them the output. Say who owns it rather
    // than suggest writing into it.
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    Err(io::Error::other(format!(
        "it is {link}{what} owned by uid {owner}, not a regular file; --out only creates or \
         replaces regular files, and writes neither into it nor over it. Choose another \
         path; or, only if you know who reads {} and trust them, leave out --out and \
         redirect standard output there",
        path.display()
    )))
}

/// Adds to a permission error that --out needs to write the directory.
fn explain_directory_error(path: &Path, error: io::Error) -> io::Error {
    if error.kind() != io::ErrorKind::PermissionDenied {
        return error;
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.display().to_string(),
        _ => ".".to_string(),
    };
    io::Error::new(
        error.kind(),
        format!(
            "{error}; --out writes a new file in {dir} and renames it over the old one, \
             so you need write permission on {dir} itself"
        ),
    )
}

/// Replaces `path` whole with `bytes`, readable by all (mode 0644): a
/// metrics collector reading it meanwhile sees the old file or the new one,
/// never half of one. See [`replace_file`]. "-" is standard output.
pub fn write_public_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    match out_path(Some(path)) {
        Some(path) => replace_file(path, bytes, FileMode::Exactly(0o644))
            .map_err(|e| CliError::write(Some(path), e)),
        None => write_stdout(bytes),
    }
}

/// A new file being written in a directory, in no directory entry until
/// [`NewFileAt::commit`]: made with `O_TMPFILE` (unnamed), so a process
/// killed before the commit leaves nothing; only on a file system without
/// `O_TMPFILE` (`EOPNOTSUPP`, or `EISDIR` before Linux 3.11) a named file
/// `fallback` (`O_EXCL`, never following a link), removed on failure but
/// left by a kill. `--out` files get the same through atomic-write-file's
/// `unnamed-tmpfile` feature.
pub struct NewFileAt {
    file: fs::File,
    fallback: String,
    named: bool,
}

impl NewFileAt {
    /// Creates the file in `dir` with `mode`.
    pub fn create(dir: &impl AsFd, fallback: &str, mode: u32) -> io::Result<NewFileAt> {
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::Mode;
        let mode = Mode::from_bits_truncate(mode);
        let unnamed = openat(
            dir,
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            mode,
        );
        let (fd, named) = match unnamed {
            Ok(fd) => (fd, false),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR) => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                (openat(dir, fallback, flags, mode)?, true)
            }
            Err(errno) => return Err(errno.into()),
        };
        Ok(NewFileAt {
            file: fs::File::from(fd),
            fallback: fallback.to_string(),
            named,
        })
    }

    /// The file, to write (and chown) it.
    pub fn file(&mut self) -> &mut fs::File {
        &mut self.file
    }

    /// Syncs the file, puts it at `name` in `dir` (linked under the
    /// fallback name through /proc/self/fd, then renamed over `name`) and
    /// syncs `dir`. On failure nothing is left under the fallback name.
    pub fn commit(self, dir: &impl AsFd, name: &str) -> io::Result<()> {
        use nix::fcntl::{AtFlags, renameat};
        use std::os::fd::AsRawFd;
        let mut linked = self.named;
        let placed = (|| -> io::Result<()> {
            self.file.sync_all()?;
            if !linked {
                let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                nix::unistd::linkat(
                    dir,
                    proc_path.as_str(),
                    dir,
                    self.fallback.as_str(),
                    AtFlags::AT_SYMLINK_FOLLOW,
                )?;
                linked = true;
            }
            renameat(dir, self.fallback.as_str(), dir, name)?;
            nix::unistd::fsync(dir)?;
            Ok(())
        })();
        if placed.is_err() && linked {
            let _ = nix::unistd::unlinkat(
                dir,
                self.fallback.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        placed
    }

    /// Removes the named fallback file, if any (an unnamed one goes with
    /// its descriptor).
    pub fn discard(self, dir: &impl AsFd) {
        if !self.named {
            return;
        }
        let _ = nix::unistd::unlinkat(
            dir,
            self.fallback.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// Asks for one line on the terminal (standard input) with echo off,
/// restoring the terminal's settings after; the line's newline is dropped.
/// The prompt goes to standard error. For secrets: a credential, a PIN.
pub fn prompt_hidden(text: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let tty = stdin.as_fd();
    let saved = tcgetattr(tty).map_err(|e| CliError::read(None, e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    let _ = write!(io::stderr(), "{text}");
    tcsetattr(tty, SetArg::TCSANOW, &quiet).map_err(|e| CliError::read(None, e.into()))?;
    let mut line = Zeroizing::new(Vec::new());
    let read = read_line(&mut line);
    let restored = tcsetattr(tty, SetArg::TCSANOW, &saved);
    read.map_err(|e| CliError::read(None, e))?;
    restored.map_err(|e| CliError::read(None, e.into()))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// The longest line a terminal takes in canonical mode (the kernel's
/// line buffer): the most a typed secret can hold.
const MAX_TYPED: usize = 4096;

/// Reads standard input up to and including a newline, byte by byte into
/// a buffer that never grows (so no copy of the secret is left unwiped),
/// at most [`MAX_TYPED`] bytes.
fn read_line(line: &mut Zeroizing<Vec<u8>>) -> io::Result<()> {
    let mut stdin = io::stdin().lock();
    let mut byte = Zeroizing::new([0u8; 1]);
    line.reserve_exact(MAX_TYPED);
    loop {
        if stdin.read(&mut byte[..])? == 0 {
            return Ok(());
        }
        if line.len() == MAX_TYPED {
            return Err(io::Error::other(format!(
                "a typed secret has at most {MAX_TYPED} bytes; give a longer one with --in FILE"
            )));
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return Ok(());
        }
    }
}

/// Asks a yes/no `question` on the terminal (the answer echoed): true
/// only for "y" or "yes" (any case); anything else, an empty line or the
/// end of input is no.
pub fn confirm(question: &str) -> Result<bool, CliError> {
    let _ = write!(io::stderr(), "{question} [y/N] ");
    let mut line = Zeroizing::new(Vec::new());
    read_line(&mut line).map_err(|e| CliError::read(None, e))?;
    let answer = String::from_utf8_lossy(&line).trim().to_ascii_lowercase();
    Ok(answer == "y" || answer == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ciphertext() -> Vec<u8> {
        let header = ciphertext::Header {
            key_id: [7; 16],
            version: 1,
            nonce: [9; 12],
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend((0u8..=255).cycle().take(60));
        assert!(ciphertext::Header::parse(&bytes).is_ok());
        bytes
    }

    fn from_input(input: &[u8]) -> Result<Vec<u8>, CliError> {
        ciphertext_from_input(input, "standard input")
    }

    fn diagnosis(input: &[u8]) -> String {
        let err = from_input(input).expect_err("refused");
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.code(), "not_ciphertext");
        err.to_string()
    }

    #[test]
    fn base64_input_is_decoded_with_surrounding_whitespace_ignored() {
        let raw = ciphertext();
        let text = format!("  \n{}\r\n\n", STANDARD.encode(&raw));
        assert_eq!(from_input(text.as_bytes()).expect("base64"), raw);
        assert_eq!(
            from_input(STANDARD.encode(&raw).as_bytes()).expect("b64"),
            raw
        );
    }

    #[test]
    fn base64_wrapped_at_76_columns_is_decoded() {
        let raw = ciphertext();
        let encoded = STANDARD.encode(&raw);
        assert!(encoded.len() > 76);
        let wrapped: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|line| std::str::from_utf8(line).expect("ascii"))
            .collect();
        let text = format!("{}\n", wrapped.join("\n"));
        assert_eq!(from_input(text.as_bytes()).expect("wrapped"), raw);
        let crlf = wrapped.join("\r\n");
        assert_eq!(from_input(crlf.as_bytes()).expect("crlf"), raw);
    }

    #[test]
    fn raw_input_is_used_as_it_is() {
        let raw = ciphertext();
        assert_eq!(from_input(&raw).expect("raw"), raw);
        // Raw bytes with trailing whitespace stay raw, whitespace included.
        let mut padded = raw.clone();
        padded.push(b'\n');
        assert_eq!(from_input(&padded).expect("raw"), padded);
    }

    #[test]
    fn what_is_not_a_ciphertext_is_diagnosed_locally() {
        for empty in [&b""[..], b"  \n\n"] {
            let text = diagnosis(empty);
            assert!(text.starts_with("standard input: input is empty"), "{text}");
        }
        let json = format!(
            "{{\"key\":\"k\",\"version\":1,\"ciphertext\":\"{}\"}}\n",
            STANDARD.encode(ciphertext())
        );
        let text = diagnosis(json.as_bytes());
        assert!(
            text.contains("this is `wrap --json` output, pass the ciphertext field"),
            "{text}"
        );
        let text = diagnosis(STANDARD.encode(b"not a ciphertext").as_bytes());
        assert!(
            text.contains("not a hostkms ciphertext (no HKMS header)"),
            "{text}"
        );
        for garbage in [
            &b"HKM"[..],
            b"hello, world!",
            b"{not json",
            b"\x00\x01binary",
        ] {
            let text = diagnosis(garbage);
            assert!(text.contains("not base64 and no hostkms header"), "{text}");
        }
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
    fn signatures_are_base64_text_or_a_file_in_base64_or_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw: Vec<u8> = (0u8..64).map(|b| b.wrapping_mul(37) ^ 0x80).collect();
        let text = STANDARD.encode(&raw);
        assert_eq!(bytes_from_arg("--signature", &text).expect("text"), raw);
        let b64_file = dir.path().join("sig.b64");
        fs::write(&b64_file, format!("{text}\n")).expect("write");
        let b64_arg = b64_file.to_str().expect("utf-8");
        assert_eq!(bytes_from_arg("--signature", b64_arg).expect("file"), raw);
        let raw_file = dir.path().join("sig.bin");
        fs::write(&raw_file, &raw).expect("write");
        let raw_arg = raw_file.to_str().expect("utf-8");
        assert_eq!(bytes_from_arg("--signature", raw_arg).expect("raw"), raw);

        let err = bytes_from_arg("--signature", "not base64!").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("neither a file nor standard base64"),
            "{err}"
        );
        let missing = dir.path().join("missing.sig");
        let err = bytes_from_arg("--tag", missing.to_str().expect("utf-8")).unwrap_err();
        assert!(err.to_string().starts_with("--tag "), "{err}");
        assert!(bytes_from_arg("--tag", "").is_err());
        let big = dir.path().join("big");
        fs::write(&big, vec![b'A'; MAX_SIGNATURE_FILE + 1]).expect("write");
        let err = bytes_from_arg("--signature", big.to_str().expect("utf-8")).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn digests_are_32_raw_bytes_or_64_hex_digits() {
        let digest: Vec<u8> = (0u8..32).collect();
        assert_eq!(digest_from_input(&digest).expect("raw"), digest);
        let hex = hex_secret(&digest);
        assert_eq!(hex.len(), 64);
        assert_eq!(digest_from_input(hex.as_bytes()).expect("hex"), digest);
        let sha256sum = format!("{}  -\n", hex.as_str());
        assert_eq!(
            digest_from_input(sha256sum.as_bytes()).expect("sha256sum"),
            digest
        );
        for bad in [
            &b""[..],
            &[0u8; 31][..],
            &[0u8; 33][..],
            &[b'g'; 64][..],
            &[b'+'; 64][..],
        ] {
            let err = digest_from_input(bad).unwrap_err();
            assert!(err.to_string().contains("SHA-256 digest"), "{err}");
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex_secret(&[0x00, 0xab, 0xff]).as_str(), "00abff");
        assert_eq!(hex_secret(&[]).as_str(), "");
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
