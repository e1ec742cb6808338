//! The daemon's configuration: one TOML file, safe defaults, strict
//! validation with messages that name the file, the line and the fix.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::monitor::{
    AlertThresholds, DEFAULT_ALERT_DENIALS, DEFAULT_ALERT_INVALID_CIPHERTEXTS,
    DEFAULT_ALERT_WINDOW_SECS, DEFAULT_ENCRYPTION_LIMIT_PERCENT,
};
use crate::policy::{DisabledGrant, GrantConfig, Policy};
use crate::tpm::Tcti;

/// Where the packaged daemon reads its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hostkms/config.toml";
/// Where the packaged daemon listens.
pub const DEFAULT_SOCKET: &str = agent_proto::DEFAULT_SOCKET;
/// Where the packaged daemon keeps its sealed root key and key store.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hostkms";
/// The kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// Default socket permissions: owner and group.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// The socket's group when it exists and none is configured.
pub const DEFAULT_SOCKET_GROUP: &str = "hostkms";
/// The admin group when none is configured.
pub const DEFAULT_ADMIN_GROUP: &str = "hostkms-admin";
/// Largest plaintext `Wrap` accepts by default: 64 KiB.
pub const DEFAULT_MAX_PLAINTEXT: usize = 64 * 1024;
/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Connections one non-admin uid may hold at once by default (or
/// `max_connections`, when that is lower): enough for `hostkms bench`'s 64.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 64;
/// Slots reserved for admins by default (or a quarter of
/// `max_connections`, when that is less).
pub const DEFAULT_ADMIN_RESERVED_CONNECTIONS: usize = 16;
/// Connections all peers without a grant may hold together by default (or
/// `max_connections`, when that is lower): they can only ping, ask status
/// and list, which needs few connections.
pub const DEFAULT_MAX_UNGRANTED_CONNECTIONS: usize = 32;
/// Seconds an answer may wait for its client to read it by default.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 10;
/// Bytes all partly received frames may hold together by default (or
/// twice `max_frame`, when that is more): 32 MiB.
pub const DEFAULT_MAX_FRAME_MEMORY: usize = 32 << 20;
/// Seconds a connection may sit idle between requests by default.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
/// Seconds a started frame may take to arrive whole by default.
pub const DEFAULT_FRAME_TIMEOUT_SECS: u64 = 5;
/// Seconds a request waits for the TPM by default (creating or rotating a
/// key when no TPM randomness is in reserve, the `Status` probe).
pub const DEFAULT_TPM_TIMEOUT_SECS: u64 = 10;
/// Seconds start-up waits for the TPM (flushing stale handles, unsealing or
/// sealing the root key) by default.
pub const DEFAULT_TPM_START_TIMEOUT_SECS: u64 = 30;
/// Encryptions after which a key version rotates itself by default: 2^30,
/// well below the 2^32 NIST SP 800-38D allows with random nonces.
pub const DEFAULT_ROTATE_AFTER_ENCRYPTIONS: u64 = 1 << 30;

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the Unix socket to serve.
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Directory of the sealed root key and the key store.
    pub state_dir: PathBuf,
    /// How to reach the TPM.
    pub tcti: Tcti,
    /// Largest frame body accepted or sent, in bytes.
    pub max_frame: u32,
    /// The socket file's group, when one is set (and exists).
    pub socket_group: Option<SocketGroup>,
    /// Who may do what with which key.
    pub policy: Policy,
    /// Admin groups named in the config that do not exist on this host.
    pub missing_admin_groups: Vec<String>,
    /// Grants out of force because a user or group in them does not
    /// resolve; the daemon logs each as an error at start and reload.
    pub disabled_grants: Vec<DisabledGrantAt>,
    /// Largest plaintext `Wrap` accepts, in bytes.
    pub max_plaintext: usize,
    /// Connections served at once; more are answered `Busy` and closed.
    pub max_connections: usize,
    /// Connections one non-admin uid may hold at once.
    pub max_connections_per_uid: usize,
    /// Slots of `max_connections` only admins may take.
    pub admin_reserved_connections: usize,
    /// Connections all peers without a grant may hold together.
    pub max_ungranted_connections: usize,
    /// How long a connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long a started frame may take to arrive whole.
    pub frame_timeout: Duration,
    /// How long an answer may wait for its client to read it.
    pub write_timeout: Duration,
    /// Bytes all partly received frames may hold together.
    pub max_frame_memory: usize,
    /// Encryptions after which a key version rotates itself.
    pub rotate_after_encryptions: u64,
    /// How long a request waits for the TPM before answering `TpmUnavailable`.
    pub tpm_timeout: Duration,
    /// How long start-up waits for the TPM before giving up.
    pub tpm_start_timeout: Duration,
    /// When the daemon raises alerts.
    pub alerts: AlertThresholds,
}

/// A disabled grant and where the config file writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledGrantAt {
    /// The grant and the name that does not resolve.
    pub grant: DisabledGrant,
    /// The config file.
    pub origin: PathBuf,
    /// The line its `[[grant]]` table starts on.
    pub line: Option<usize>,
}

impl fmt::Display for DisabledGrantAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.origin.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(
            f,
            ": grant #{}: `{}`: {}",
            self.grant.grant, self.grant.field, self.grant.problem
        )
    }
}

/// The group the socket file is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// A configuration that cannot be used, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown or mistyped field.
    #[error("config {}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// A field has a value the daemon cannot use.
    #[error("config {}{}: `{field}`: {problem}", origin.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        /// The config file, or the command-line flag that set the value.
        origin: PathBuf,
        /// The line of the field in the file, when it came from the file.
        line: Option<usize>,
        /// The field's name.
        field: &'static str,
        /// What is wrong and what to write instead.
        problem: String,
    },
}

/// The file's fields. Unknown fields are errors, so a typo never passes as a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    socket: Option<Spanned<PathBuf>>,
    socket_mode: Option<Spanned<String>>,
    state_dir: Option<Spanned<PathBuf>>,
    tcti: Option<Spanned<String>>,
    max_frame: Option<Spanned<i64>>,
    socket_group: Option<Spanned<String>>,
    admin_groups: Option<Vec<String>>,
    #[serde(default)]
    grant: Vec<Spanned<GrantConfig>>,
    max_plaintext: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_uid: Option<Spanned<i64>>,
    admin_reserved_connections: Option<Spanned<i64>>,
    max_ungranted_connections: Option<Spanned<i64>>,
    idle_timeout_secs: Option<Spanned<i64>>,
    frame_timeout_secs: Option<Spanned<i64>>,
    write_timeout_secs: Option<Spanned<i64>>,
    max_frame_memory: Option<Spanned<i64>>,
    rotate_after_encryptions: Option<Spanned<i64>>,
    tpm_timeout_secs: Option<Spanned<i64>>,
    tpm_start_timeout_secs: Option<Spanned<i64>>,
    #[serde(default)]
    alerts: AlertsFile,
}

/// The `[alerts]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsFile {
    window_secs: Option<Spanned<i64>>,
    denials: Option<Spanned<i64>>,
    invalid_ciphertexts: Option<Spanned<i64>>,
    encryption_limit_percent: Option<Spanned<i64>>,
}

/// Values given on the command line; each overrides its field in the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--tcti`.
    pub tcti: Option<String>,
}

impl Config {
    /// Reads and validates the config file at `path`, then applies `overrides`.
    ///
    /// With `required == false` a missing file means "all defaults" (the
    /// packaged default path); an explicitly named file must exist.
    pub fn load(path: &Path, required: bool, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Config::parse(&text, path, overrides)
    }

    /// Validates config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid =
            |span: Option<std::ops::Range<usize>>, field, problem: String| ConfigError::Invalid {
                origin: path.to_path_buf(),
                line: span.map(|s| line_of(text, s.start)),
                field,
                problem,
            };
        let flag_invalid = |flag: &str, field, problem: String| ConfigError::Invalid {
            origin: PathBuf::from(flag),
            line: None,
            field,
            problem,
        };

        let tcti = match (&overrides.tcti, file.tcti) {
            (Some(flag), _) => {
                Tcti::from_str(flag).map_err(|p| flag_invalid("--tcti", "tcti", p))?
            }
            (None, Some(tcti)) => {
                Tcti::from_str(tcti.get_ref()).map_err(|p| invalid(Some(tcti.span()), "tcti", p))?
            }
            (None, None) => Tcti::from_str(DEFAULT_TCTI).map_err(|p| invalid(None, "tcti", p))?,
        };
        let range = |value: &Option<Spanned<i64>>,
                     field: &'static str,
                     min: i64,
                     max: i64,
                     default: i64,
                     unit: &str| {
            match value {
                None => Ok(default),
                Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
                Some(v) => Err(invalid(
                    Some(v.span()),
                    field,
                    format!(
                        "{} is out of range; give {unit} from {min} to {max} (default {default})",
                        v.get_ref()
                    ),
                )),
            }
        };
        let max_frame = range(
            &file.max_frame,
            "max_frame",
            1024,
            64 << 20,
            i64::from(agent_proto::DEFAULT_MAX_FRAME),
            "a byte count",
        )?;
        let max_plaintext = range(
            &file.max_plaintext,
            "max_plaintext",
            1,
            max_frame / 2,
            (DEFAULT_MAX_PLAINTEXT as i64).min(max_frame / 2),
            "a byte count up to half of max_frame",
        )?;
        let max_connections = range(
            &file.max_connections,
            "max_connections",
            1,
            65536,
            DEFAULT_MAX_CONNECTIONS as i64,
            "a number of connections",
        )?;
        let max_connections_per_uid = range(
            &file.max_connections_per_uid,
            "max_connections_per_uid",
            1,
            max_connections,
            (DEFAULT_MAX_CONNECTIONS_PER_UID as i64).min(max_connections),
            "a number of connections up to max_connections",
        )?;
        let admin_reserved_connections = range(
            &file.admin_reserved_connections,
            "admin_reserved_connections",
            0,
            max_connections - 1,
            (DEFAULT_ADMIN_RESERVED_CONNECTIONS as i64).min(max_connections / 4),
            "a number of connections below max_connections",
        )?;
        let max_ungranted_connections = range(
            &file.max_ungranted_connections,
            "max_ungranted_connections",
            0,
            max_connections,
            (DEFAULT_MAX_UNGRANTED_CONNECTIONS as i64).min(max_connections),
            "a number of connections up to max_connections",
        )?;
        let idle_timeout = range(
            &file.idle_timeout_secs,
            "idle_timeout_secs",
            1,
            86400,
            DEFAULT_IDLE_TIMEOUT_SECS as i64,
            "seconds",
        )?;
        let frame_timeout = range(
            &file.frame_timeout_secs,
            "frame_timeout_secs",
            1,
            3600,
            DEFAULT_FRAME_TIMEOUT_SECS as i64,
            "seconds",
        )?;
        let write_timeout = range(
            &file.write_timeout_secs,
            "write_timeout_secs",
            1,
            3600,
            DEFAULT_WRITE_TIMEOUT_SECS as i64,
            "seconds",
        )?;
        let max_frame_memory = range(
            &file.max_frame_memory,
            "max_frame_memory",
            max_frame,
            1 << 34,
            (DEFAULT_MAX_FRAME_MEMORY as i64).max(2 * max_frame),
            "a byte count from max_frame",
        )?;
        let rotate_after = range(
            &file.rotate_after_encryptions,
            "rotate_after_encryptions",
            1,
            1 << 32,
            DEFAULT_ROTATE_AFTER_ENCRYPTIONS as i64,
            "a number of encryptions",
        )?;
        let tpm_timeout = range(
            &file.tpm_timeout_secs,
            "tpm_timeout_secs",
            1,
            600,
            DEFAULT_TPM_TIMEOUT_SECS as i64,
            "seconds",
        )?;
        let tpm_start_timeout = range(
            &file.tpm_start_timeout_secs,
            "tpm_start_timeout_secs",
            1,
            3600,
            DEFAULT_TPM_START_TIMEOUT_SECS as i64,
            "seconds",
        )?;

        let alerts = AlertThresholds {
            window: Duration::from_secs(range(
                &file.alerts.window_secs,
                "alerts.window_secs",
                1,
                86400,
                DEFAULT_ALERT_WINDOW_SECS as i64,
                "seconds",
            )? as u64),
            denials: range(
                &file.alerts.denials,
                "alerts.denials",
                1,
                1_000_000,
                i64::from(DEFAULT_ALERT_DENIALS),
                "a number of denials",
            )? as u32,
            invalid_ciphertexts: range(
                &file.alerts.invalid_ciphertexts,
                "alerts.invalid_ciphertexts",
                1,
                1_000_000,
                i64::from(DEFAULT_ALERT_INVALID_CIPHERTEXTS),
                "a number of failures",
            )? as u32,
            encryption_limit_percent: range(
                &file.alerts.encryption_limit_percent,
                "alerts.encryption_limit_percent",
                1,
                100,
                i64::from(DEFAULT_ENCRYPTION_LIMIT_PERCENT),
                "a percentage",
            )? as u8,
        };

        let socket_group = match &file.socket_group {
            Some(name) => Some(resolve_group(name.get_ref()).ok_or_else(|| {
                invalid(
                    Some(name.span()),
                    "socket_group",
                    format!("no group named \"{}\" exists on this host; create it (groupadd --system {0}) or remove the setting", name.get_ref()),
                )
            })?),
            None => resolve_group(DEFAULT_SOCKET_GROUP),
        };
        let admin_groups = file
            .admin_groups
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_ADMIN_GROUP.to_string()]);
        let grants: Vec<GrantConfig> = file.grant.iter().map(|g| g.get_ref().clone()).collect();
        let (policy, missing_admin_groups) = Policy::new(&grants, &admin_groups).map_err(|e| {
            let span = file.grant.get(e.grant.saturating_sub(1)).map(Spanned::span);
            invalid(span, "grant", e.to_string())
        })?;

        let disabled_grants = policy
            .disabled()
            .iter()
            .map(|grant| DisabledGrantAt {
                grant: grant.clone(),
                origin: path.to_path_buf(),
                line: file
                    .grant
                    .get(grant.grant.saturating_sub(1))
                    .map(|g| line_of(text, g.span().start)),
            })
            .collect();

        let mut config = Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: DEFAULT_SOCKET_MODE,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            tcti,
            max_frame: max_frame as u32,
            socket_group,
            policy,
            missing_admin_groups: if file.admin_groups.is_some() {
                missing_admin_groups
            } else {
                Vec::new()
            },
            disabled_grants,
            max_plaintext: max_plaintext as usize,
            max_connections: max_connections as usize,
            max_connections_per_uid: max_connections_per_uid as usize,
            admin_reserved_connections: admin_reserved_connections as usize,
            max_ungranted_connections: max_ungranted_connections as usize,
            idle_timeout: Duration::from_secs(idle_timeout as u64),
            frame_timeout: Duration::from_secs(frame_timeout as u64),
            write_timeout: Duration::from_secs(write_timeout as u64),
            max_frame_memory: max_frame_memory as usize,
            rotate_after_encryptions: rotate_after as u64,
            tpm_timeout: Duration::from_secs(tpm_timeout as u64),
            tpm_start_timeout: Duration::from_secs(tpm_start_timeout as u64),
            alerts,
        };
        if let Some(socket) = file.socket {
            config.socket = socket.get_ref().clone();
            check_absolute(&config.socket)
                .map_err(|p| invalid(Some(socket.span()), "socket", p))?;
        }
        if let Some(mode) = file.socket_mode {
            config.socket_mode = parse_mode(mode.get_ref())
                .map_err(|p| invalid(Some(mode.span()), "socket_mode", p))?;
        }
        if let Some(dir) = file.state_dir {
            config.state_dir = dir.get_ref().clone();
            check_absolute(&config.state_dir)
                .map_err(|p| invalid(Some(dir.span()), "state_dir", p))?;
        }
        if let Some(socket) = &overrides.socket {
            check_not_empty(socket).map_err(|p| flag_invalid("--socket", "socket", p))?;
            config.socket = socket.clone();
        }
        if let Some(dir) = &overrides.state_dir {
            check_not_empty(dir).map_err(|p| flag_invalid("--state-dir", "state_dir", p))?;
            config.state_dir = dir.clone();
        }
        Ok(config)
    }
}

/// The group named `name`, if the host has one.
fn resolve_group(name: &str) -> Option<SocketGroup> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|group| SocketGroup {
            name: name.to_string(),
            gid: group.gid.as_raw(),
        })
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.bytes().filter(|&b| b == b'\n').count())
        + 1
}

fn check_absolute(path: &Path) -> Result<(), String> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" is a relative path; give an absolute path, so the meaning does not depend on the daemon's working directory",
            path.display()
        ))
    }
}

fn check_not_empty(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        Err("the path is empty".to_string())
    } else {
        Ok(())
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode & !0o777 == 0 && mode & 0o600 == 0o600 && mode & 0o111 == 0 => Ok(mode),
        Ok(_) => Err(format!(
            "\"{text}\" is not a usable socket mode; give octal permission bits that let the owner read and write and grant no execute bit, e.g. \"0660\" (owner and group) or \"0666\" (everyone)"
        )),
        Err(_) => Err(format!(
            "\"{text}\" is not an octal mode; write it as a string of octal digits, e.g. socket_mode = \"0660\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/hostkms/config.toml"),
            &Overrides::default(),
        )
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.tcti.as_str(), DEFAULT_TCTI);
        assert_eq!(config.max_frame, 1 << 20);
    }

    #[test]
    fn every_field_is_read() {
        let config = parse(
            "socket = \"/tmp/s.sock\"\nsocket_mode = \"0666\"\nstate_dir = \"/tmp/st\"\n\
             tcti = \"swtpm:host=127.0.0.1,port=4000\"\nmax_frame = 4096\n",
        )
        .unwrap();
        assert_eq!(config.socket, Path::new("/tmp/s.sock"));
        assert_eq!(config.socket_mode, 0o666);
        assert_eq!(config.state_dir, Path::new("/tmp/st"));
        assert_eq!(config.tcti.as_str(), "swtpm:host=127.0.0.1,port=4000");
        assert_eq!(config.max_frame, 4096);
    }

    #[test]
    fn tpm_timeouts_default_parse_and_refuse_out_of_range() {
        let config = parse("").unwrap();
        assert_eq!(
            config.tpm_timeout,
            Duration::from_secs(DEFAULT_TPM_TIMEOUT_SECS)
        );
        assert_eq!(
            config.tpm_start_timeout,
            Duration::from_secs(DEFAULT_TPM_START_TIMEOUT_SECS)
        );
        let config = parse("tpm_timeout_secs = 3\ntpm_start_timeout_secs = 7\n").unwrap();
        assert_eq!(config.tpm_timeout, Duration::from_secs(3));
        assert_eq!(config.tpm_start_timeout, Duration::from_secs(7));
        let err = parse("\ntpm_timeout_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("`tpm_timeout_secs`"), "{err}");
        assert!(err.contains("from 1 to 600"), "{err}");
        let err = parse("tpm_start_timeout_secs = 4000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tpm_start_timeout_secs`"), "{err}");
        assert!(err.contains("from 1 to 3600"), "{err}");
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse("socket = \"/tmp/s\"\nstate_directory = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/hostkms/config.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("unknown field `state_directory`"), "{err}");
        assert!(
            err.contains("state_dir"),
            "the message lists the valid fields: {err}"
        );
    }

    #[test]
    fn bad_tcti_names_line_field_and_fix() {
        let err = parse("\n\ntcti = \"usb:/dev/tpm0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("`tcti`"), "{err}");
        assert!(err.contains("device:/dev/tpmrm0"), "{err}");
        let err = parse("tcti = \"swtpm:port=99999\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("`tcti`"), "{err}");
        assert!(err.contains("99999"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        for (text, field) in [
            ("socket_mode = \"0777\"", "socket_mode"),
            ("socket_mode = \"rw\"", "socket_mode"),
            ("socket_mode = \"0060\"", "socket_mode"),
            ("state_dir = \"relative/dir\"", "state_dir"),
            ("socket = \"s.sock\"", "socket"),
            ("max_frame = 10", "max_frame"),
            ("max_frame = -1", "max_frame"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{text}: {err}");
            assert!(err.contains("line 1"), "{text}: {err}");
        }
        let err = parse("max_frame = \"big\"").unwrap_err().to_string();
        assert!(err.contains("max_frame") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn connection_limits_default_within_max_connections_and_are_checked() {
        let config = parse("").unwrap();
        assert_eq!(config.max_connections_per_uid, 64);
        assert_eq!(config.admin_reserved_connections, 16);
        assert_eq!(config.write_timeout, Duration::from_secs(10));
        // An old file with a small max_connections stays valid.
        assert_eq!(config.max_ungranted_connections, 32);
        let small = parse("max_connections = 2").unwrap();
        assert_eq!(small.max_connections_per_uid, 2);
        assert_eq!(small.max_ungranted_connections, 2);
        assert_eq!(
            parse("max_ungranted_connections = 0")
                .unwrap()
                .max_ungranted_connections,
            0
        );
        assert_eq!(small.admin_reserved_connections, 0);
        let set = parse(
            "max_connections = 100\nmax_connections_per_uid = 10\n\
             admin_reserved_connections = 5\nwrite_timeout_secs = 3\n",
        )
        .unwrap();
        assert_eq!(
            (
                set.max_connections_per_uid,
                set.admin_reserved_connections,
                set.write_timeout
            ),
            (10, 5, Duration::from_secs(3))
        );
        for (text, field, allowed) in [
            (
                "max_connections = 10\nmax_connections_per_uid = 11",
                "max_connections_per_uid",
                "from 1 to 10",
            ),
            (
                "max_connections = 10\nadmin_reserved_connections = 10",
                "admin_reserved_connections",
                "from 0 to 9",
            ),
            (
                "max_connections = 10\nmax_ungranted_connections = 11",
                "max_ungranted_connections",
                "from 0 to 10",
            ),
            (
                "write_timeout_secs = 0",
                "write_timeout_secs",
                "from 1 to 3600",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{text}: {err}");
            assert!(err.contains(allowed), "{text}: {err}");
            assert!(
                err.contains("/etc/hostkms/config.toml line"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn frame_memory_defaults_above_max_frame_and_is_checked() {
        assert_eq!(parse("").unwrap().max_frame_memory, 32 << 20);
        let big_frames = parse("max_frame = 67108864\nmax_plaintext = 65536").unwrap();
        assert_eq!(big_frames.max_frame_memory, 128 << 20);
        assert_eq!(
            parse("max_frame_memory = 2097152")
                .unwrap()
                .max_frame_memory,
            2 << 20
        );
        let err = parse("max_frame_memory = 1000").unwrap_err().to_string();
        assert!(err.contains("`max_frame_memory`"), "{err}");
        assert!(err.contains("from 1048576 to"), "{err}");
        assert!(err.contains("/etc/hostkms/config.toml line 1"), "{err}");
    }

    #[test]
    fn flags_override_the_file_and_are_named_in_errors() {
        let overrides = Overrides {
            socket: Some(PathBuf::from("/tmp/other.sock")),
            state_dir: None,
            tcti: Some("swtpm:port=5000".to_string()),
        };
        let config = Config::parse("socket = \"/tmp/s\"", Path::new("c.toml"), &overrides).unwrap();
        assert_eq!(config.socket, Path::new("/tmp/other.sock"));
        assert_eq!(config.tcti.as_str(), "swtpm:port=5000");
        let overrides = Overrides {
            tcti: Some("nonsense".to_string()),
            ..Overrides::default()
        };
        let err = Config::parse("", Path::new("c.toml"), &overrides)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config --tcti: `tcti`"), "{err}");
    }
}
