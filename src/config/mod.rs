//! The daemon's configuration: one TOML file, safe defaults, strict
//! validation with messages that name the file, the line and the fix.
//!
//! The file is flat (top-level keys, an `[alerts]` table and `[[grant]]`
//! tables) and stays so, but the validated [`Config`] is a struct of
//! sections: each its own type, with its own defaults and validator in
//! `sections.rs`, reading only its own keys, and handed whole to the part of
//! the daemon that uses it (the server's [`Limits`], the service's
//! [`ServiceLimits`], the monitor's [`AlertThresholds`], ...). [`SECTIONS`]
//! says which section reads which key; a new key goes into the section of
//! the part that uses it. `file.rs` holds the file's raw fields and the
//! helpers that turn a bad value into an error naming its line.

mod file;
mod sections;

use std::path::{Path, PathBuf};

use crate::monitor::AlertThresholds;
use crate::recovery::RecoveryConfig;
use crate::server::Limits;
use crate::service::{KeyDefaults, ServiceLimits};
use crate::transfer::Peers;

use file::{ConfigFile, Source};
pub use sections::{
    ACCESS_KEYS, ALERTS_KEYS, AccessConfig, CREDENTIALS_KEYS, CredentialsConfig, DisabledGrantAt,
    KEYS_KEYS, LISTENER_KEYS, ListenerConfig, RECOVERY_KEYS, ROOT_KEY_KEYS, SECTIONS, SERVER_KEYS,
    SERVICE_KEYS, STATE_DIR_KEYS, SocketGroup, TPM_KEYS, TRANSFER_KEYS, TpmConfig,
};

/// Where the packaged daemon reads its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hostkms/config.toml";
/// Where the packaged daemon listens.
pub const DEFAULT_SOCKET: &str = agent_proto::DEFAULT_SOCKET;
/// Where the packaged daemon keeps its sealed root key and key store.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hostkms";
/// Where the systemd credentials are stored: `DIRECTORY/UNIT/ID`.
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/hostkms/credentials";
/// Where the recovery directory is by default: outside the 0700 state dir,
/// so a backup agent in the recovery group can copy it.
pub const DEFAULT_RECOVERY_DIR: &str = "/var/lib/hostkms-recovery";
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

/// The validated configuration the daemon runs with, one field per section
/// (see [`SECTIONS`] for the keys each reads).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect: the socket, its mode and group.
    pub listener: ListenerConfig,
    /// Directory of the sealed root key and the key store.
    pub state_dir: PathBuf,
    /// How to reach the TPM and how long to wait for it.
    pub tpm: TpmConfig,
    /// What connections may hold and how long they may take.
    pub server: Limits,
    /// What the operations accept, and when a key version rotates itself.
    pub service: ServiceLimits,
    /// Who may do what: the admin groups and the grants.
    pub access: AccessConfig,
    /// When the daemon raises alerts.
    pub alerts: AlertThresholds,
    /// The hosts keys may be exported to and imported from: the
    /// `[[transfer]]` tables.
    pub transfer: Peers,
    /// The recovery directory and custodians; `None`: keys are not
    /// recoverable if the TPM is lost. Only a restart changes it.
    pub recovery: Option<RecoveryConfig>,
    /// What new keys get unless their creator says (the `[keys]` table):
    /// the rotation period. A reload applies it to keys created from then
    /// on; existing keys keep theirs.
    pub keys: KeyDefaults,
    /// The systemd credentials the credential socket serves (the
    /// `[credentials]` table). Only a restart changes it.
    pub credentials: CredentialsConfig,
    /// How a new root key is sealed (the `[root_key]` table): PCRs and
    /// PIN. The state dir's `root.seal` says what is in force; `hostkms
    /// reseal` applies a changed table. Only a restart reads it again.
    pub root_key: crate::rootkey::SealingMode,
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

    /// Validates config text; `path` names it in errors. Each section is
    /// validated in turn, and the first bad value is the error.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let source = Source { path, text };
        let file = ConfigFile::from_toml(&source)?;
        let tpm = sections::tpm(&file, &source, overrides)?;
        let server = sections::server(&file, &source)?;
        let service = sections::service(&file, &source, server.max_frame)?;
        let alerts = sections::alerts(&file, &source)?;
        let listener = sections::listener(&file, &source, overrides)?;
        let access = sections::access(&file, &source)?;
        let state_dir = sections::state_dir(&file, &source, overrides)?;
        let transfer = sections::transfer(&file, &source)?;
        let recovery = sections::recovery(&file, &source)?;
        let keys = sections::keys(&file, &source)?;
        let credentials = sections::credentials(&file, &source)?;
        let root_key = sections::root_key(&file, &source)?;
        Ok(Config {
            credentials,
            root_key,
            listener,
            state_dir,
            tpm,
            server,
            service,
            access,
            alerts,
            transfer,
            recovery,
            keys,
        })
    }
}

#[cfg(test)]
mod tests;
