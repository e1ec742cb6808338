//! `hostkms credential encrypt` and `hostkms credential list`: systemd
//! credentials stored as hostkms ciphertexts in `<dir>/<unit>/<id>`, which
//! the daemon's credential socket hands to the unit that names them in
//! `LoadCredential=ID:/run/hostkms/credentials.sock`.
//!
//! The file is written as the daemon reads it: every level opened without
//! following a link (a link in the directory is refused, never written
//! through), a new unnamed file (`O_TMPFILE`, mode 0600) in the unit's
//! directory, owned like the credentials directory so the daemon's user can
//! read it, synced, linked beside the old one and renamed over it, and the
//! directory synced, so that a unit starting meanwhile gets the old
//! credential or the new one, never a part, and a killed encrypt leaves no
//! file (see [`crate::io::NewFileAt`]; older versions left
//! `.ID.hostkms-new-PID`, which `list` flags).

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use agent_proto::ciphertext::Header;
use agent_proto::credential;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchown, fsync};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::{CliError, printable};

/// Where credentials are stored unless `--dir` says otherwise: the
/// daemon's default `[credentials] directory`.
pub const DEFAULT_DIR: &str = "/etc/hostkms/credentials";

/// The credential socket a unit's `LoadCredential=` names.
pub const SOCKET: &str = "/run/hostkms/credentials.sock";

/// The line to add under `[Service]` of the unit.
pub fn load_credential_line(id: &str) -> String {
    format!("LoadCredential={id}:{SOCKET}")
}

/// The `[[grant]]` table that lets `unit` receive credentials of `key`.
pub fn grant_line(unit: &str, key: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[[grant]] units = [\"{}\"], keys = [\"{}\"], ops = [\"credential\"]",
        quote(unit),
        quote(key)
    )
}

/// Checks the unit name and credential id before anything else happens.
pub fn check_names(unit: &str, id: &str) -> Result<(), CliError> {
    credential::check_unit(unit).map_err(|e| CliError::Usage(format!("--unit: {e}")))?;
    if let Some((prefix, suffix)) = template(unit) {
        let (prefix, suffix) = (printable(prefix), printable(suffix));
        return Err(CliError::Usage(format!(
            "--unit: {} is a template, which never runs: its instances ({prefix}@NAME.{suffix}) \
             are the units that start, each asks for its own credential under its own \
             name; encrypt one per instance, e.g. --unit {prefix}@NAME.{suffix}",
            printable(unit)
        )));
    }
    credential::check_credential(id).map_err(|e| CliError::Usage(format!("--name: {e}")))
}

/// The prefix and suffix of a template unit name (`x@.service`: nothing
/// between `@` and the type suffix), `None` for any other name.
fn template(unit: &str) -> Option<(&str, &str)> {
    let (name, suffix) = unit.rsplit_once('.')?;
    let prefix = name.strip_suffix('@')?;
    Some((prefix, suffix))
}

/// A credential file about to be written: the credentials directory and
/// the unit's directory (when it exists) opened without following links,
/// the owner new files get, and whether a credential is being replaced.
pub struct Target {
    dir: PathBuf,
    top: OwnedFd,
    owner: (Uid, Gid),
    unit: String,
    id: String,
    unit_dir: Option<OwnedFd>,
    replaces: bool,
}

/// The error for `what` at `path` going wrong with `errno`, in words.
fn dir_error(message: String) -> CliError {
    CliError::CredentialDir(message)
}

/// Opens directory `name` in `at` (or `path` itself when `at` is `None`)
/// without following a link.
fn open_dir(at: Option<&OwnedFd>, name: &Path) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    match at {
        Some(at) => openat(at, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

/// Opens the credentials directory `dir` without following a link, or
/// says what is wrong with it and what to do.
fn open_credentials_dir(dir: &Path) -> Result<OwnedFd, CliError> {
    let shown = dir.display();
    open_dir(None, dir).map_err(|errno| match errno {
        Errno::ENOENT => dir_error(format!(
            "the credentials directory {shown} does not exist: the hostkms package \
             creates it; make it with `install -d -m 0700 -o hostkms -g hostkms {shown}` \
             (or pass --dir with the daemon's [credentials] directory)"
        )),
        Errno::ELOOP | Errno::ENOTDIR => dir_error(format!(
            "{shown} is not a directory (or is a symbolic link, which hostkms never \
             follows there): the credentials directory must be a real directory"
        )),
        Errno::EACCES | Errno::EPERM => dir_error(format!(
            "cannot open the credentials directory {shown}: permission denied (it is the \
             daemon's, mode 0700); run this as root"
        )),
        errno => dir_error(format!(
            "cannot open the credentials directory {shown}: {}",
            io::Error::from(errno)
        )),
    })
}

/// Whether `name` in `at` (shown as `shown`) exists, without following a
/// link: `false` when it does not, an error unless it is of type `want`
/// (`what`, in words).
fn look(at: &OwnedFd, name: &str, shown: &str, want: SFlag, what: &str) -> Result<bool, CliError> {
    match fstatat(at, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(dir_error(format!(
            "cannot look at {shown}: {}",
            io::Error::from(errno)
        ))),
        Ok(stat) if kind(&stat) != want => Err(dir_error(format!(
            "{shown} is not {what} (a symbolic link or another kind of file): hostkms follows \
             no link in the credentials directory and never writes through one; remove it and \
             run this again"
        ))),
        Ok(_) => Ok(true),
    }
}

/// The file type bits of `stat`.
fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

impl Target {
    /// Checks `dir/unit/id` can take a credential: `dir` is a directory
    /// (not a link), `dir/unit` is one or is missing (it will be made),
    /// `dir/unit/id` is a regular file or missing. Nothing is written.
    pub fn prepare(dir: &Path, unit: &str, id: &str) -> Result<Target, CliError> {
        let shown = dir.display();
        let top = open_credentials_dir(dir)?;
        let stat = fstat(&top)
            .map_err(|e| dir_error(format!("cannot stat {shown}: {}", io::Error::from(e))))?;
        let owner = (Uid::from_raw(stat.st_uid), Gid::from_raw(stat.st_gid));
        let unit_shown = format!("{shown}/{unit}");
        let unit_dir = if look(&top, unit, &unit_shown, SFlag::S_IFDIR, "a directory")? {
            Some(open_dir(Some(&top), Path::new(unit)).map_err(|e| {
                dir_error(format!("cannot open {unit_shown}: {}", io::Error::from(e)))
            })?)
        } else {
            None
        };
        let replaces = match &unit_dir {
            None => false,
            Some(unit_dir) => {
                let shown = format!("{unit_shown}/{id}");
                look(unit_dir, id, &shown, SFlag::S_IFREG, "a regular file")?
            }
        };
        Ok(Target {
            dir: dir.to_path_buf(),
            top,
            owner,
            unit: unit.to_string(),
            id: id.to_string(),
            unit_dir,
            replaces,
        })
    }

    /// Whether a credential is already at the path.
    pub fn replaces(&self) -> bool {
        self.replaces
    }

    /// `dir/unit/id`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.unit).join(&self.id)
    }

    /// Writes `ciphertext` as the credential: makes the unit's directory
    /// (0700, owned like the credentials directory) when missing, then a
    /// new file beside the target, renamed over it.
    pub fn write(self, ciphertext: &[u8]) -> Result<PathBuf, CliError> {
        let path = self.path();
        let write_error = |e: io::Error| CliError::write(Some(&path), e);
        let unit_dir = match &self.unit_dir {
            Some(fd) => fd.try_clone().map_err(write_error)?,
            None => self.make_unit_dir()?,
        };
        let temp = format!(".{}.hostkms-new-{}", self.id, std::process::id());
        let temp = if temp.len() > 255 {
            format!(".hostkms-new-{}", std::process::id())
        } else {
            temp
        };
        let mut new = crate::io::NewFileAt::create(&unit_dir, &temp, 0o600).map_err(write_error)?;
        let filled = (|| -> io::Result<()> {
            fchown(new.file().as_fd(), Some(self.owner.0), Some(self.owner.1))?;
            new.file().write_all(ciphertext)
        })();
        let written = match filled {
            Ok(()) => new.commit(&unit_dir, &self.id),
            Err(e) => {
                new.discard(&unit_dir);
                Err(e)
            }
        };
        written.map_err(write_error)?;
        Ok(path)
    }

    /// Makes `dir/unit`, mode 0700, owned like the credentials directory,
    /// and opens it; syncs the credentials directory.
    fn make_unit_dir(&self) -> Result<OwnedFd, CliError> {
        let path = self.dir.join(&self.unit);
        let error = |e: Errno| CliError::write(Some(&path), e.into());
        match mkdirat(
            &self.top,
            self.unit.as_str(),
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(error(errno)),
        }
        // Opened without following a link: one put there meanwhile is refused.
        let fd = open_dir(Some(&self.top), Path::new(&self.unit)).map_err(error)?;
        fchown(&fd, Some(self.owner.0), Some(self.owner.1)).map_err(error)?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(error)?;
        fsync(&self.top).map_err(error)?;
        Ok(fd)
    }
}

/// Reads the secret: from `--in` FILE or standard input, or, on a
/// terminal, asked twice without echo (one trailing newline, the one that
/// ends the typed line, is not part of it). An empty secret is refused.
pub fn read_secret(input: Option<&Path>, what: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    use std::io::IsTerminal;
    let input = input.filter(|p| p.as_os_str() != "-");
    let secret = if input.is_none() && io::stdin().is_terminal() {
        let first = crate::io::prompt_hidden(&format!("Secret for {what}: "))?;
        let again = crate::io::prompt_hidden("Again: ")?;
        if first != again {
            return Err(CliError::Usage(
                "the two secrets typed differ: nothing was encrypted".to_string(),
            ));
        }
        first
    } else {
        crate::io::read_input(input)?
    };
    if secret.is_empty() {
        return Err(CliError::Usage(format!(
            "the secret read from {} is empty: a credential needs at least one byte, and \
             an empty one would start the unit without its secret. Nothing was encrypted",
            crate::error::describe(input, "standard input")
        )));
    }
    Ok(secret)
}

/// What `credential encrypt` did, as printed.
#[derive(Debug, Serialize)]
pub struct Encrypted {
    /// The unit.
    pub unit: String,
    /// The credential id.
    pub credential: String,
    /// The key's name.
    pub key: String,
    /// The key version that encrypted it.
    pub version: u32,
    /// The file written.
    pub file: String,
    /// Whether a credential was replaced.
    pub replaced: bool,
    /// The line for the unit's `[Service]` section.
    pub load_credential: String,
    /// The grant the unit needs.
    pub grant: String,
}

/// The human form of [`Encrypted`].
pub fn encrypted_human(done: &Encrypted) -> String {
    format!(
        "{} credential {} of {} (key {}, version {}): {}\n\
         add under [Service] of {}:\n    {}\n\
         the daemon's config (/etc/hostkms/config.toml) needs, unless a grant already allows it, \
         then `systemctl reload hostkms`:\n    {}\n\
         a unit running now gets the new credential when it restarts\n",
        if done.replaced { "replaced" } else { "wrote" },
        printable(&done.credential),
        printable(&done.unit),
        printable(&done.key),
        done.version,
        printable(&done.file),
        printable(&done.unit),
        printable(&done.load_credential),
        printable(&done.grant),
    )
}

/// One stored credential, as `credential list` shows it.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// The unit's directory name.
    pub unit: String,
    /// The file name: the credential id.
    pub credential: String,
    /// The path.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, RFC 3339 UTC.
    pub modified: String,
    /// The key's name, when known.
    pub key: Option<String>,
    /// The key id from the header, in hex.
    pub key_id: Option<String>,
    /// The key version from the header.
    pub version: Option<u32>,
    /// Why this is no credential hostkms can serve, if it is not.
    pub problem: Option<String>,
    #[serde(skip)]
    raw_key_id: Option<[u8; 16]>,
}

/// The most bytes a credential file is read for its header.
const HEADER_READ: u64 = 4096;

/// The credentials in `dir` (only `unit`'s when given), sorted by unit and
/// id. Links and other odd entries are listed with their problem, never
/// followed; a missing directory is the same error as for `encrypt`.
pub fn list(dir: &Path, unit: Option<&str>) -> Result<Vec<Listed>, CliError> {
    drop(open_credentials_dir(dir)?);
    let mut units = read_names(dir)?;
    if let Some(unit) = unit {
        units.retain(|name| name == unit);
    }
    let mut listed = Vec::new();
    for unit in units {
        let unit_path = dir.join(&unit);
        let meta = std::fs::symlink_metadata(&unit_path)
            .map_err(|e| CliError::read(Some(&unit_path), e))?;
        if !meta.file_type().is_dir() {
            listed.push(entry(&unit, "", &unit_path, &meta, Err(
                "not a directory: a unit's credentials are files in a directory named after the unit (a link is never followed)".to_string(),
            )));
            continue;
        }
        for id in read_names(&unit_path)? {
            let path = unit_path.join(&id);
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| CliError::read(Some(&path), e))?;
            let header = if is_leftover(&id) {
                Err(LEFTOVER.to_string())
            } else if meta.file_type().is_file() {
                read_header(&path)
            } else {
                Err("not a regular file (a link is never followed)".to_string())
            };
            listed.push(entry(&unit, &id, &path, &meta, header));
        }
    }
    Ok(listed)
}

/// What `list` says of a temporary file an interrupted `encrypt` left.
pub const LEFTOVER: &str = "leftover of an interrupted encrypt (safe to delete once no \
                            credential encrypt is running): the credential it was replacing, \
                            if any, is intact";

/// Whether `id` is a temporary file of `encrypt` (`.ID.hostkms-new-PID`,
/// or `.hostkms-new-PID` for a long id), left by a version that named it
/// before the rename and was killed meanwhile.
fn is_leftover(id: &str) -> bool {
    id.starts_with('.') && id.contains(".hostkms-new-")
}

/// The names in directory `dir`, sorted; names that are not UTF-8 are
/// shown lossily.
fn read_names(dir: &Path) -> Result<Vec<String>, CliError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CliError::read(Some(dir), e))? {
        let entry = entry.map_err(|e| CliError::read(Some(dir), e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The header of the credential at `path`, or why it has none.
fn read_header(path: &Path) -> Result<Header, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .and_then(|file| file.take(HEADER_READ).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read it: {e}"))?;
    Header::parse(&bytes).map_err(|e| format!("not a hostkms ciphertext: {e}"))
}

/// O_NOFOLLOW | O_NONBLOCK: never a link, never a FIFO's wait.
fn libc_flags() -> i32 {
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits()
}

/// One row of the listing.
fn entry(
    unit: &str,
    id: &str,
    path: &Path,
    meta: &std::fs::Metadata,
    header: Result<Header, String>,
) -> Listed {
    use std::os::unix::fs::MetadataExt as _;
    let modified = u64::try_from(meta.mtime()).unwrap_or(0);
    let (raw_key_id, version, problem) = match header {
        Ok(header) => (Some(header.key_id), Some(header.version), None),
        Err(problem) => (None, None, Some(problem)),
    };
    Listed {
        unit: unit.to_string(),
        credential: id.to_string(),
        file: path.display().to_string(),
        size: meta.len(),
        modified: agent_proto::date::rfc3339(modified),
        key: None,
        key_id: raw_key_id.as_ref().map(crate::output::hex_id),
        version,
        problem,
        raw_key_id,
    }
}

/// Names the keys of `listed` from `keys`, the keys the daemon shows.
pub fn name_keys(listed: &mut [Listed], keys: &[agent_proto::KeyInfo]) {
    for row in listed {
        row.key = row
            .raw_key_id
            .and_then(|id| keys.iter().find(|key| key.id == id))
            .map(|key| key.name.clone());
    }
}

/// The first line of `list`'s human output: what "key NAME vN" proves.
pub const LIST_NOTE: &str = "# key and version come from each file's header only: they do not \
                             prove the file decrypts for that unit (a file copied from another \
                             unit, or damaged after its header, looks the same)";

/// The human form of a listing: [`LIST_NOTE`], then one line per
/// credential.
pub fn list_human(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return "no credentials stored\n".to_string();
    }
    let mut out = format!("{LIST_NOTE}\n");
    for row in listed {
        let what = match (&row.problem, &row.key, &row.key_id, row.version) {
            (Some(problem), ..) => format!("PROBLEM: {problem}"),
            (None, Some(key), _, Some(version)) => format!("key {} v{version}", printable(key)),
            (None, None, Some(id), Some(version)) => format!("key id {id} v{version}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<32} {:<20} {:>6} B  {}  {}\n",
            printable(&row.unit),
            printable(&row.credential),
            row.size,
            row.modified,
            what
        ));
    }
    out
}

/// Whether `dir` holds a credential that the daemon must be asked to name.
pub fn has_headers(listed: &[Listed]) -> bool {
    listed.iter().any(|row| row.raw_key_id.is_some())
}
