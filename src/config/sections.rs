//! The sections of [`Config`](super::Config): for each, the keys of the
//! file it reads, its type (its own, or that of the part of the daemon
//! that uses it) and its validator, which applies the defaults and refuses
//! a bad value naming its line. A validator reads only its section's keys
//! (the service's also takes the server's `max_frame`, which bounds it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use super::file::{Bounds, ConfigFile, Source, flag_invalid};
use super::{
    ConfigError, DEFAULT_ADMIN_GROUP, DEFAULT_ADMIN_RESERVED_CONNECTIONS, DEFAULT_CREDENTIALS_DIR,
    DEFAULT_FRAME_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_MAX_FRAME_MEMORY, DEFAULT_MAX_PLAINTEXT,
    DEFAULT_MAX_UNGRANTED_CONNECTIONS, DEFAULT_RECOVERY_DIR, DEFAULT_ROTATE_AFTER_ENCRYPTIONS,
    DEFAULT_SOCKET, DEFAULT_SOCKET_GROUP, DEFAULT_SOCKET_MODE, DEFAULT_STATE_DIR, DEFAULT_TCTI,
    DEFAULT_TPM_START_TIMEOUT_SECS, DEFAULT_TPM_TIMEOUT_SECS, DEFAULT_WRITE_TIMEOUT_SECS,
    Overrides,
};
use crate::monitor::{
    AlertThresholds, DEFAULT_ALERT_DENIALS, DEFAULT_ALERT_INVALID_CIPHERTEXTS,
    DEFAULT_ALERT_WINDOW_SECS, DEFAULT_ENCRYPTION_LIMIT_PERCENT,
};
use crate::policy::{DisabledGrant, GrantConfig, Policy};
use crate::recovery::{RecoveryConfig, RecoveryGroup, escrow};
use crate::server::Limits;
use crate::service::{KeyDefaults, ServiceLimits};
use crate::tpm::Tcti;
use crate::transfer::{PeerConfig, Peers};

/// The keys the `listener` section reads.
pub const LISTENER_KEYS: &[&str] = &["socket", "socket_mode", "socket_group"];
/// The keys the `state_dir` section reads.
pub const STATE_DIR_KEYS: &[&str] = &["state_dir"];
/// The keys the `tpm` section reads.
pub const TPM_KEYS: &[&str] = &["tcti", "tpm_timeout_secs", "tpm_start_timeout_secs"];
/// The keys the `server` section reads.
pub const SERVER_KEYS: &[&str] = &[
    "max_frame",
    "max_connections",
    "max_connections_per_uid",
    "admin_reserved_connections",
    "max_ungranted_connections",
    "idle_timeout_secs",
    "frame_timeout_secs",
    "write_timeout_secs",
    "max_frame_memory",
];
/// The keys the `service` section reads.
pub const SERVICE_KEYS: &[&str] = &["max_plaintext", "rotate_after_encryptions"];
/// The keys the `access` section reads: a list and the `[[grant]]` tables.
pub const ACCESS_KEYS: &[&str] = &["admin_groups", "grant"];
/// The keys the `alerts` section reads: the `[alerts]` table.
pub const ALERTS_KEYS: &[&str] = &["alerts"];
/// The keys the `transfer` section reads: the `[[transfer]]` tables.
pub const TRANSFER_KEYS: &[&str] = &["transfer"];
/// The keys the `recovery` section reads: the `[recovery]` table.
pub const RECOVERY_KEYS: &[&str] = &["recovery"];
/// The keys the `keys` section reads: the `[keys]` table.
pub const KEYS_KEYS: &[&str] = &["keys"];
/// The keys the `credentials` section reads: the `[credentials]` table.
pub const CREDENTIALS_KEYS: &[&str] = &["credentials"];

/// The keys the `root_key` section reads: the `[root_key]` table.
pub const ROOT_KEY_KEYS: &[&str] = &["root_key"];

/// Every top-level key of the config file, by the field of
/// [`Config`](super::Config) (the section) that holds its value. Each key
/// is in exactly one section.
pub const SECTIONS: [(&str, &[&str]); 12] = [
    ("listener", LISTENER_KEYS),
    ("state_dir", STATE_DIR_KEYS),
    ("tpm", TPM_KEYS),
    ("server", SERVER_KEYS),
    ("service", SERVICE_KEYS),
    ("access", ACCESS_KEYS),
    ("alerts", ALERTS_KEYS),
    ("transfer", TRANSFER_KEYS),
    ("recovery", RECOVERY_KEYS),
    ("keys", KEYS_KEYS),
    ("credentials", CREDENTIALS_KEYS),
    ("root_key", ROOT_KEY_KEYS),
];

/// The systemd credentials the credential socket serves: the `[credentials]`
/// table. Only a restart changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsConfig {
    /// Where the credential files are, `DIRECTORY/UNIT/ID`.
    pub directory: PathBuf,
    /// The credential socket the daemon binds itself when systemd passes
    /// none (named `credentials`); `None`: no credential socket of its own.
    pub socket: Option<PathBuf>,
}

/// Where clients connect: the socket file and who may open it. Only a
/// restart changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Path of the Unix socket to serve.
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// The socket file's group, when one is set (and exists).
    pub socket_group: Option<SocketGroup>,
}

/// The group the socket file is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// How the daemon reaches the TPM and how long it waits for it. Only a
/// restart changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    /// How to reach the TPM.
    pub tcti: Tcti,
    /// How long a request waits for the TPM before answering `TpmUnavailable`.
    pub timeout: Duration,
    /// How long start-up waits for the TPM before giving up.
    pub start_timeout: Duration,
}

/// Who may do what with which key, and what of it is out of force on this
/// host.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// The admins and the grants.
    pub policy: Policy,
    /// Admin groups named in the config that do not exist on this host.
    pub missing_admin_groups: Vec<String>,
    /// Grants out of force because a user or group in them does not
    /// resolve; the daemon logs each as an error at start and reload.
    pub disabled_grants: Vec<DisabledGrantAt>,
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

/// The listener: `socket` (or `--socket`), `socket_mode`, `socket_group`.
/// Without `socket_group`, the group `hostkms` is used when it exists.
pub(super) fn listener(
    file: &ConfigFile,
    source: &Source<'_>,
    overrides: &Overrides,
) -> Result<ListenerConfig, ConfigError> {
    let socket_group = match &file.socket_group {
        Some(name) => Some(resolve_group(name.get_ref()).ok_or_else(|| {
            source.invalid(
                Some(name.span()),
                "socket_group",
                format!("no group named \"{}\" exists on this host; create it (groupadd --system {0}) or remove the setting", name.get_ref()),
            )
        })?),
        None => resolve_group(DEFAULT_SOCKET_GROUP),
    };
    let socket = absolute_path(source, &file.socket, "socket", DEFAULT_SOCKET)?;
    let socket_mode = match &file.socket_mode {
        Some(mode) => parse_mode(mode.get_ref())
            .map_err(|p| source.invalid(Some(mode.span()), "socket_mode", p))?,
        None => DEFAULT_SOCKET_MODE,
    };
    Ok(ListenerConfig {
        socket: overridden(socket, &overrides.socket, "--socket", "socket")?,
        socket_mode,
        socket_group,
    })
}

/// The credential store and socket: the `[credentials]` table.
pub(super) fn credentials(
    file: &ConfigFile,
    source: &Source<'_>,
) -> Result<CredentialsConfig, ConfigError> {
    let table = &file.credentials;
    let directory = absolute_path(
        source,
        &table.directory,
        "credentials.directory",
        DEFAULT_CREDENTIALS_DIR,
    )?;
    let socket = match &table.socket {
        None => None,
        Some(value) => {
            check_absolute(value.get_ref())
                .map_err(|p| source.invalid(Some(value.span()), "credentials.socket", p))?;
            Some(value.get_ref().clone())
        }
    };
    Ok(CredentialsConfig { directory, socket })
}

/// How a new root key is sealed: the `[root_key]` table (`pcrs`, `pin`).
pub(super) fn root_key(
    file: &ConfigFile,
    source: &Source<'_>,
) -> Result<crate::rootkey::SealingMode, ConfigError> {
    let table = &file.root_key;
    let mut pcrs = Vec::new();
    if let Some(list) = &table.pcrs {
        for value in list.get_ref() {
            let pcr = u8::try_from(*value.get_ref())
                .ok()
                .filter(|pcr| *pcr <= crate::tpm::MAX_PCR)
                .ok_or_else(|| {
                    source.invalid(
                        Some(value.span()),
                        "root_key.pcrs",
                        format!(
                            "{} is not a PCR: sha256 PCRs are numbered 0 to {}",
                            value.get_ref(),
                            crate::tpm::MAX_PCR
                        ),
                    )
                })?;
            if pcrs.contains(&pcr) {
                return Err(source.invalid(
                    Some(value.span()),
                    "root_key.pcrs",
                    format!("PCR {pcr} is listed twice"),
                ));
            }
            pcrs.push(pcr);
        }
        pcrs.sort_unstable();
    }
    let pin = table.pin.as_ref().is_some_and(|pin| *pin.get_ref());
    Ok(crate::rootkey::SealingMode { pcrs, pin })
}

/// The state directory: `state_dir` (or `--state-dir`).
pub(super) fn state_dir(
    file: &ConfigFile,
    source: &Source<'_>,
    overrides: &Overrides,
) -> Result<PathBuf, ConfigError> {
    let dir = absolute_path(source, &file.state_dir, "state_dir", DEFAULT_STATE_DIR)?;
    overridden(dir, &overrides.state_dir, "--state-dir", "state_dir")
}

/// The TPM: `tcti` (or `--tcti`), `tpm_timeout_secs`,
/// `tpm_start_timeout_secs`.
pub(super) fn tpm(
    file: &ConfigFile,
    source: &Source<'_>,
    overrides: &Overrides,
) -> Result<TpmConfig, ConfigError> {
    let tcti = match (&overrides.tcti, &file.tcti) {
        (Some(flag), _) => Tcti::from_str(flag).map_err(|p| flag_invalid("--tcti", "tcti", p))?,
        (None, Some(tcti)) => Tcti::from_str(tcti.get_ref())
            .map_err(|p| source.invalid(Some(tcti.span()), "tcti", p))?,
        (None, None) => {
            Tcti::from_str(DEFAULT_TCTI).map_err(|p| source.invalid(None, "tcti", p))?
        }
    };
    Ok(TpmConfig {
        tcti,
        timeout: source.secs(
            &file.tpm_timeout_secs,
            "tpm_timeout_secs",
            (1, 600),
            DEFAULT_TPM_TIMEOUT_SECS,
        )?,
        start_timeout: source.secs(
            &file.tpm_start_timeout_secs,
            "tpm_start_timeout_secs",
            (1, 3600),
            DEFAULT_TPM_START_TIMEOUT_SECS,
        )?,
    })
}

/// The server's limits: frame size, connection slots, timeouts, frame
/// memory. The slot limits default to at most `max_connections` (an old
/// file with a small `max_connections` stays valid).
pub(super) fn server(file: &ConfigFile, source: &Source<'_>) -> Result<Limits, ConfigError> {
    let max_frame = source.int(
        &file.max_frame,
        "max_frame",
        Bounds {
            min: 1024,
            max: 64 << 20,
            default: i64::from(agent_proto::DEFAULT_MAX_FRAME),
            unit: "a byte count",
        },
    )?;
    let max_connections = source.int(
        &file.max_connections,
        "max_connections",
        Bounds {
            min: 1,
            max: 65536,
            default: DEFAULT_MAX_CONNECTIONS as i64,
            unit: "a number of connections",
        },
    )?;
    let connections = |value, field, min, max, default: usize, unit| {
        let default = (default as i64).min(max_connections);
        let bounds = Bounds {
            min,
            max,
            default,
            unit,
        };
        source.int(value, field, bounds).map(|n| n as usize)
    };
    let max_connections_per_uid = connections(
        &file.max_connections_per_uid,
        "max_connections_per_uid",
        1,
        max_connections,
        DEFAULT_MAX_CONNECTIONS_PER_UID,
        "a number of connections up to max_connections",
    )?;
    let admin_reserved_connections = source.int(
        &file.admin_reserved_connections,
        "admin_reserved_connections",
        Bounds {
            min: 0,
            max: max_connections - 1,
            default: (DEFAULT_ADMIN_RESERVED_CONNECTIONS as i64).min(max_connections / 4),
            unit: "a number of connections below max_connections",
        },
    )? as usize;
    let max_ungranted_connections = connections(
        &file.max_ungranted_connections,
        "max_ungranted_connections",
        0,
        max_connections,
        DEFAULT_MAX_UNGRANTED_CONNECTIONS,
        "a number of connections up to max_connections",
    )?;
    Ok(Limits {
        max_frame: max_frame as u32,
        max_connections: max_connections as usize,
        max_connections_per_uid,
        admin_reserved_connections,
        max_ungranted_connections,
        idle_timeout: source.secs(
            &file.idle_timeout_secs,
            "idle_timeout_secs",
            (1, 86400),
            DEFAULT_IDLE_TIMEOUT_SECS,
        )?,
        frame_timeout: source.secs(
            &file.frame_timeout_secs,
            "frame_timeout_secs",
            (1, 3600),
            DEFAULT_FRAME_TIMEOUT_SECS,
        )?,
        write_timeout: source.secs(
            &file.write_timeout_secs,
            "write_timeout_secs",
            (1, 3600),
            DEFAULT_WRITE_TIMEOUT_SECS,
        )?,
        max_frame_memory: source.int(
            &file.max_frame_memory,
            "max_frame_memory",
            Bounds {
                min: max_frame,
                max: 1 << 34,
                default: (DEFAULT_MAX_FRAME_MEMORY as i64).max(2 * max_frame),
                unit: "a byte count from max_frame",
            },
        )? as usize,
    })
}

/// The service's limits: `max_plaintext` (at most half of the server's
/// `max_frame`, so a wrapped answer fits a frame) and
/// `rotate_after_encryptions`.
pub(super) fn service(
    file: &ConfigFile,
    source: &Source<'_>,
    max_frame: u32,
) -> Result<ServiceLimits, ConfigError> {
    let half_frame = i64::from(max_frame) / 2;
    let max_plaintext = source.int(
        &file.max_plaintext,
        "max_plaintext",
        Bounds {
            min: 1,
            max: half_frame,
            default: (DEFAULT_MAX_PLAINTEXT as i64).min(half_frame),
            unit: "a byte count up to half of max_frame",
        },
    )?;
    let rotate_after = source.int(
        &file.rotate_after_encryptions,
        "rotate_after_encryptions",
        Bounds {
            min: 1,
            max: 1 << 32,
            default: DEFAULT_ROTATE_AFTER_ENCRYPTIONS as i64,
            unit: "a number of encryptions",
        },
    )?;
    Ok(ServiceLimits {
        max_plaintext: max_plaintext as usize,
        rotate_after: rotate_after as u64,
        max_frame,
    })
}

/// What new keys get unless their creator says: the `[keys]` table.
/// `rotation_period` is a period as [`agent_proto::period::parse_period`]
/// reads it (`90d`, `1w`, `1y`, `off`); off by default.
pub(super) fn keys(file: &ConfigFile, source: &Source<'_>) -> Result<KeyDefaults, ConfigError> {
    let rotation_period = match &file.keys.rotation_period {
        None => None,
        Some(value) => agent_proto::period::parse_period(value.get_ref()).map_err(|e| {
            source.invalid(Some(value.span()), "keys.rotation_period", e.to_string())
        })?,
    };
    Ok(KeyDefaults { rotation_period })
}

/// The alert thresholds: the `[alerts]` table.
pub(super) fn alerts(
    file: &ConfigFile,
    source: &Source<'_>,
) -> Result<AlertThresholds, ConfigError> {
    let alerts = &file.alerts;
    let count = |value, field, max, default: i64, unit| {
        let bounds = Bounds {
            min: 1,
            max,
            default,
            unit,
        };
        source.int(value, field, bounds)
    };
    Ok(AlertThresholds {
        window: source.secs(
            &alerts.window_secs,
            "alerts.window_secs",
            (1, 86400),
            DEFAULT_ALERT_WINDOW_SECS,
        )?,
        denials: count(
            &alerts.denials,
            "alerts.denials",
            1_000_000,
            i64::from(DEFAULT_ALERT_DENIALS),
            "a number of denials",
        )? as u32,
        invalid_ciphertexts: count(
            &alerts.invalid_ciphertexts,
            "alerts.invalid_ciphertexts",
            1_000_000,
            i64::from(DEFAULT_ALERT_INVALID_CIPHERTEXTS),
            "a number of failures",
        )? as u32,
        encryption_limit_percent: count(
            &alerts.encryption_limit_percent,
            "alerts.encryption_limit_percent",
            100,
            i64::from(DEFAULT_ENCRYPTION_LIMIT_PERCENT),
            "a percentage",
        )? as u8,
    })
}

/// Access: `admin_groups` (default `hostkms-admin`) and the `[[grant]]`
/// tables. Only admin groups the file names are reported missing.
pub(super) fn access(file: &ConfigFile, source: &Source<'_>) -> Result<AccessConfig, ConfigError> {
    let admin_groups = file
        .admin_groups
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_ADMIN_GROUP.to_string()]);
    let grant_at = |number: usize| file.grant.get(number.saturating_sub(1)).map(Spanned::span);
    let grants: Vec<GrantConfig> = file.grant.iter().map(|g| g.get_ref().clone()).collect();
    let (policy, missing_admin_groups) = Policy::new(&grants, &admin_groups)
        .map_err(|e| source.invalid(grant_at(e.grant), "grant", e.to_string()))?;
    let disabled_grants = policy
        .disabled()
        .iter()
        .map(|grant| DisabledGrantAt {
            grant: grant.clone(),
            origin: source.path.to_path_buf(),
            line: grant_at(grant.grant).map(|span| source.line_of(span.start)),
        })
        .collect();
    Ok(AccessConfig {
        policy,
        missing_admin_groups: if file.admin_groups.is_some() {
            missing_admin_groups
        } else {
            Vec::new()
        },
        disabled_grants,
    })
}

/// The pinned transfer peers: the `[[transfer]]` tables (none by default:
/// nothing can be exported or imported).
pub(super) fn transfer(file: &ConfigFile, source: &Source<'_>) -> Result<Peers, ConfigError> {
    let tables: Vec<PeerConfig> = file.transfer.iter().map(|t| t.get_ref().clone()).collect();
    Peers::new(&tables).map_err(|e| {
        let span = file
            .transfer
            .get(e.peer.saturating_sub(1))
            .map(Spanned::span);
        source.invalid(span, "transfer", e.to_string())
    })
}

/// The recovery directory and its custodians: the `[recovery]` table, or
/// `None` when the file has none (the keys are then not recoverable, which
/// the daemon says). `recipients` must be age X25519 recipients, each once;
/// `threshold` 1..=their number (default 1); `dir` absolute (default
/// [`DEFAULT_RECOVERY_DIR`]); `group` an existing group.
pub(super) fn recovery(
    file: &ConfigFile,
    source: &Source<'_>,
) -> Result<Option<RecoveryConfig>, ConfigError> {
    let Some(table) = &file.recovery else {
        return Ok(None);
    };
    let table_line = Some(table.span());
    let table = table.get_ref();
    let Some(recipients) = &table.recipients else {
        return Err(source.invalid(
            table_line,
            "recovery.recipients",
            "[recovery] names no custodians; list their age recipients (made with age-keygen, private keys kept offline): recipients = [\"age1…\", …]".to_string(),
        ));
    };
    let mut parsed = Vec::with_capacity(recipients.get_ref().len());
    for recipient in recipients.get_ref() {
        let text = recipient.get_ref().trim();
        let secret = text
            .get(..15)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("AGE-SECRET-KEY-"));
        if secret {
            // Never echoed: at threshold 1 it opens every copy of the
            // recovery directory, and the error goes to the journal.
            return Err(source.invalid(
                Some(recipient.span()),
                "recovery.recipients",
                "holds an age secret key, not a recipient: remove it from the config and treat it as exposed (make the custodian a new key with age-keygen, kept offline); give the age1… line age-keygen prints as \"public key\"".to_string(),
            ));
        }
        if escrow::check_custodians(&[text.to_string()], 1).is_err() {
            return Err(source.invalid(
                Some(recipient.span()),
                "recovery.recipients",
                format!("{:?} is not an age X25519 recipient; give the age1… line age-keygen prints as \"public key\"", recipient.get_ref()),
            ));
        }
        if parsed.iter().any(|r: &String| r == text) {
            return Err(source.invalid(
                Some(recipient.span()),
                "recovery.recipients",
                format!("{text:?} is listed twice; name each custodian once"),
            ));
        }
        parsed.push(text.to_string());
    }
    if parsed.is_empty() || parsed.len() > escrow::MAX_CUSTODIANS {
        return Err(source.invalid(
            Some(recipients.span()),
            "recovery.recipients",
            format!(
                "{} custodians; name from 1 to {} age recipients",
                parsed.len(),
                escrow::MAX_CUSTODIANS
            ),
        ));
    }
    let threshold = source.int(
        &table.threshold,
        "recovery.threshold",
        Bounds {
            min: 1,
            max: parsed.len() as i64,
            default: 1,
            unit: "a count of custodians (at most the number of recipients)",
        },
    )? as u32;
    let dir = absolute_path(source, &table.dir, "recovery.dir", DEFAULT_RECOVERY_DIR)?;
    let group = match &table.group {
        Some(name) => {
            let group = resolve_group(name.get_ref()).ok_or_else(|| {
                source.invalid(
                    Some(name.span()),
                    "recovery.group",
                    format!("no group named \"{}\" exists on this host; create it (groupadd --system {0}) or remove the setting", name.get_ref()),
                )
            })?;
            Some(RecoveryGroup {
                name: group.name,
                gid: group.gid,
            })
        }
        None => None,
    };
    Ok(Some(RecoveryConfig {
        recipients: parsed,
        threshold,
        dir,
        group,
    }))
}

/// The absolute path `value` of `field`, or `default` when unset.
fn absolute_path(
    source: &Source<'_>,
    value: &Option<Spanned<PathBuf>>,
    field: &'static str,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    let Some(value) = value else {
        return Ok(PathBuf::from(default));
    };
    check_absolute(value.get_ref()).map_err(|p| source.invalid(Some(value.span()), field, p))?;
    Ok(value.get_ref().clone())
}

/// `path`, or the non-empty path the command-line option `flag` gave.
fn overridden(
    path: PathBuf,
    flag_value: &Option<PathBuf>,
    flag: &str,
    field: &'static str,
) -> Result<PathBuf, ConfigError> {
    match flag_value {
        Some(given) => {
            check_not_empty(given).map_err(|p| flag_invalid(flag, field, p))?;
            Ok(given.clone())
        }
        None => Ok(path),
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
