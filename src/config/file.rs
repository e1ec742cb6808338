//! The config file as TOML has it: every key, raw and with its place in
//! the text, and the helpers that turn a bad value into an error naming
//! the file, the line, the field and the allowed values.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use crate::policy::GrantConfig;
use crate::transfer::PeerConfig;

/// The file's fields, grouped by the section of [`super::Config`] that
/// reads them ([`super::SECTIONS`]). The file stays flat: a new key keeps
/// its name here and joins its section's validator. Unknown fields are
/// errors, so a typo never passes as a default; serde's refusal lists the
/// known ones, which is also how tests learn the set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    // listener
    pub socket: Option<Spanned<PathBuf>>,
    pub socket_mode: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
    // state_dir
    pub state_dir: Option<Spanned<PathBuf>>,
    // tpm
    pub tcti: Option<Spanned<String>>,
    pub tpm_timeout_secs: Option<Spanned<i64>>,
    pub tpm_start_timeout_secs: Option<Spanned<i64>>,
    // server
    pub max_frame: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_uid: Option<Spanned<i64>>,
    pub admin_reserved_connections: Option<Spanned<i64>>,
    pub max_ungranted_connections: Option<Spanned<i64>>,
    pub idle_timeout_secs: Option<Spanned<i64>>,
    pub frame_timeout_secs: Option<Spanned<i64>>,
    pub write_timeout_secs: Option<Spanned<i64>>,
    pub max_frame_memory: Option<Spanned<i64>>,
    // service
    pub max_plaintext: Option<Spanned<i64>>,
    pub rotate_after_encryptions: Option<Spanned<i64>>,
    // access
    pub admin_groups: Option<Vec<String>>,
    #[serde(default)]
    pub grant: Vec<Spanned<GrantConfig>>,
    // alerts
    #[serde(default)]
    pub alerts: AlertsFile,
    // transfer
    #[serde(default)]
    pub transfer: Vec<Spanned<PeerConfig>>,
    // recovery
    pub recovery: Option<Spanned<RecoveryFile>>,
    // keys
    #[serde(default)]
    pub keys: KeysFile,
    // credentials
    #[serde(default)]
    pub credentials: CredentialsFile,
    // root_key
    #[serde(default)]
    pub root_key: RootKeyFile,
}

/// The `[root_key]` table: how a new root key is sealed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RootKeyFile {
    pub pcrs: Option<Spanned<Vec<Spanned<i64>>>>,
    pub pin: Option<Spanned<bool>>,
}

/// The `[credentials]` table: where the systemd credentials are stored,
/// and the credential socket the daemon binds when not socket-activated.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialsFile {
    pub directory: Option<Spanned<PathBuf>>,
    pub socket: Option<Spanned<PathBuf>>,
}

/// The `[keys]` table: what new keys get unless their creator says.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysFile {
    pub rotation_period: Option<Spanned<String>>,
}

/// The `[recovery]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecoveryFile {
    pub recipients: Option<Spanned<Vec<Spanned<String>>>>,
    pub threshold: Option<Spanned<i64>>,
    pub dir: Option<Spanned<PathBuf>>,
    pub group: Option<Spanned<String>>,
}

/// The `[alerts]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsFile {
    pub window_secs: Option<Spanned<i64>>,
    pub denials: Option<Spanned<i64>>,
    pub invalid_ciphertexts: Option<Spanned<i64>>,
    pub encryption_limit_percent: Option<Spanned<i64>>,
}

impl ConfigFile {
    /// The raw fields of `source`'s text, or the TOML parser's refusal
    /// (which gives the line and column).
    pub fn from_toml(source: &Source<'_>) -> Result<ConfigFile, ConfigError> {
        toml::from_str(source.text).map_err(|e| ConfigError::Syntax {
            path: source.path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

/// An integer field's allowed values and its default.
pub(super) struct Bounds {
    /// The smallest value allowed.
    pub min: i64,
    /// The largest value allowed.
    pub max: i64,
    /// The value when the file does not set one.
    pub default: i64,
    /// What the number counts, for the refusal: "a byte count", "seconds".
    pub unit: &'static str,
}

/// The config text and its file, so that a refusal names both the file and
/// the line of the value.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    /// The config file.
    pub path: &'a Path,
    /// Its text.
    pub text: &'a str,
}

impl Source<'_> {
    /// A refusal of `field`, at `span` of the text when the value came from it.
    pub fn invalid(
        &self,
        span: Option<Range<usize>>,
        field: &'static str,
        problem: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.path.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            field,
            problem,
        }
    }

    /// The integer `value` of `field` within `bounds`, or its default when
    /// the file does not set it.
    pub fn int(
        &self,
        value: &Option<Spanned<i64>>,
        field: &'static str,
        bounds: Bounds,
    ) -> Result<i64, ConfigError> {
        let Bounds {
            min,
            max,
            default,
            unit,
        } = bounds;
        match value {
            None => Ok(default),
            Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(
                Some(v.span()),
                field,
                format!(
                    "{} is out of range; give {unit} from {min} to {max} (default {default})",
                    v.get_ref()
                ),
            )),
        }
    }

    /// A count of seconds from `min` to `max`, `default` when unset.
    pub fn secs(
        &self,
        value: &Option<Spanned<i64>>,
        field: &'static str,
        (min, max): (i64, i64),
        default: u64,
    ) -> Result<Duration, ConfigError> {
        let bounds = Bounds {
            min,
            max,
            default: default as i64,
            unit: "seconds",
        };
        Ok(Duration::from_secs(self.int(value, field, bounds)? as u64))
    }

    /// 1-based line number of byte `offset` of the text.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(0, |before| before.bytes().filter(|&b| b == b'\n').count())
            + 1
    }
}

/// A refusal of `field` set by the command-line option `flag`.
pub(super) fn flag_invalid(flag: &str, field: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        origin: PathBuf::from(flag),
        line: None,
        field,
        problem,
    }
}
