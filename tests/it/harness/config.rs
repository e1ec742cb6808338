//! A builder for the daemon's config file, rendered as TOML by the `toml`
//! crate, so tests say which settings they change instead of concatenating
//! TOML text. Tests whose point is broken or raw config text write it
//! themselves.

use std::path::Path;

use toml::{Table, Value};

/// The settings a test gives its daemon; the harness adds `socket`,
/// `state_dir` and `tcti` (see [`DaemonConfig::render`]). Everything not
/// set keeps the daemon's default.
#[derive(Clone, Debug, Default)]
pub struct DaemonConfig {
    top: Table,
    alerts: Table,
    grants: Vec<Grant>,
    transfers: Vec<Table>,
    recovery: Table,
    keys: Table,
    credentials: Table,
    root_key: Table,
}

/// Setters of top-level integer settings, named like the TOML field.
macro_rules! integer_settings {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(self, value: u64) -> Self {
                self.integer(stringify!($name), value)
            }
        )*
    };
}

impl DaemonConfig {
    /// All defaults.
    pub fn new() -> DaemonConfig {
        DaemonConfig::default()
    }

    /// `socket_mode`, an octal string such as `"0666"`.
    pub fn socket_mode(mut self, mode: &str) -> Self {
        self.top.insert("socket_mode".into(), Value::from(mode));
        self
    }

    integer_settings! {
        /// `max_frame`, in bytes.
        max_frame,
        /// `max_connections`.
        max_connections,
        /// `max_connections_per_uid`.
        max_connections_per_uid,
        /// `max_ungranted_connections`.
        max_ungranted_connections,
        /// `admin_reserved_connections`.
        admin_reserved_connections,
        /// `max_plaintext`, in bytes.
        max_plaintext,
        /// `write_timeout_secs`.
        write_timeout_secs,
        /// `frame_timeout_secs`.
        frame_timeout_secs,
        /// `idle_timeout_secs`.
        idle_timeout_secs,
        /// `tpm_timeout_secs`.
        tpm_timeout_secs,
        /// `tpm_start_timeout_secs`.
        tpm_start_timeout_secs,
        /// `rotate_after_encryptions`.
        rotate_after_encryptions,
    }

    /// The `[alerts]` table.
    pub fn alerts(mut self, alerts: Alerts) -> Self {
        self.alerts = alerts.0;
        self
    }

    /// Appends a `[[grant]]` table.
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grants.push(grant);
        self
    }

    /// Appends a `[[transfer]]` table: the peer `name` with transport key
    /// `transport_key`, for the keys `keys` match.
    pub fn transfer(mut self, name: &str, transport_key: &str, keys: &[&str]) -> Self {
        let mut table = Table::new();
        table.insert("name".into(), Value::from(name));
        table.insert("transport_key".into(), Value::from(transport_key));
        let keys = keys.iter().map(|&k| Value::from(k)).collect();
        table.insert("keys".into(), Value::Array(keys));
        self.transfers.push(table);
        self
    }

    /// The `[recovery]` table: the custodians' age recipients, the
    /// threshold and the directory.
    pub fn recovery(mut self, recipients: &[String], threshold: u64, dir: &Path) -> Self {
        let recipients = recipients.iter().map(|r| Value::from(r.as_str()));
        self.recovery
            .insert("recipients".into(), Value::Array(recipients.collect()));
        self.recovery.insert("threshold".into(), integer(threshold));
        self.recovery.insert("dir".into(), Value::from(path(dir)));
        self
    }

    /// `group` of the `[recovery]` table (set [`DaemonConfig::recovery`] too).
    pub fn recovery_group(mut self, group: &str) -> Self {
        self.recovery.insert("group".into(), Value::from(group));
        self
    }

    /// `rotation_period` of the `[keys]` table: `"90d"`, `"off"`...
    pub fn default_rotation_period(mut self, period: &str) -> Self {
        self.keys
            .insert("rotation_period".into(), Value::from(period));
        self
    }

    /// The `[credentials]` table: the credential socket the daemon binds
    /// and the credential directory.
    pub fn credentials(mut self, socket: &Path, directory: &Path) -> Self {
        self.credentials
            .insert("socket".into(), Value::from(path(socket)));
        self.credentials
            .insert("directory".into(), Value::from(path(directory)));
        self
    }

    /// The `[root_key]` table: the sha256 PCRs a new root key's auto copy
    /// is bound to, and whether it gets a PIN copy.
    pub fn root_key(mut self, pcrs: &[u8], pin: bool) -> Self {
        let pcrs = pcrs.iter().map(|&pcr| integer(pcr.into())).collect();
        self.root_key.insert("pcrs".into(), Value::Array(pcrs));
        self.root_key.insert("pin".into(), Value::Boolean(pin));
        self
    }

    fn integer(mut self, name: &str, value: u64) -> Self {
        self.top.insert(name.into(), integer(value));
        self
    }

    /// The config file's text for a daemon on `socket`, `state_dir` and
    /// `tcti`.
    pub fn render(&self, socket: &Path, state_dir: &Path, tcti: &str) -> String {
        let mut table = self.top.clone();
        table.insert("socket".into(), Value::from(path(socket)));
        table.insert("state_dir".into(), Value::from(path(state_dir)));
        table.insert("tcti".into(), Value::from(tcti));
        if !self.alerts.is_empty() {
            table.insert("alerts".into(), Value::Table(self.alerts.clone()));
        }
        if !self.grants.is_empty() {
            let grants = self.grants.iter().map(|g| Value::Table(g.0.clone()));
            table.insert("grant".into(), Value::Array(grants.collect()));
        }
        if !self.transfers.is_empty() {
            let transfers = self.transfers.iter().cloned().map(Value::Table);
            table.insert("transfer".into(), Value::Array(transfers.collect()));
        }
        if !self.recovery.is_empty() {
            table.insert("recovery".into(), Value::Table(self.recovery.clone()));
        }
        if !self.keys.is_empty() {
            table.insert("keys".into(), Value::Table(self.keys.clone()));
        }
        if !self.credentials.is_empty() {
            table.insert("credentials".into(), Value::Table(self.credentials.clone()));
        }
        if !self.root_key.is_empty() {
            table.insert("root_key".into(), Value::Table(self.root_key.clone()));
        }
        toml::to_string(&table).expect("a config renders as TOML")
    }
}

/// The `[alerts]` table of a [`DaemonConfig`].
#[derive(Clone, Debug, Default)]
pub struct Alerts(Table);

impl Alerts {
    /// All alert defaults.
    pub fn new() -> Alerts {
        Alerts::default()
    }

    /// `window_secs`: the length of an alert and audit-summary window.
    pub fn window_secs(self, secs: u64) -> Self {
        self.set("window_secs", secs)
    }

    /// `denials`: denials per window that raise an alert.
    pub fn denials(self, count: u64) -> Self {
        self.set("denials", count)
    }

    /// `invalid_ciphertexts`: invalid ciphertexts per window that raise an alert.
    pub fn invalid_ciphertexts(self, count: u64) -> Self {
        self.set("invalid_ciphertexts", count)
    }

    /// `encryption_limit_percent`: how close to its limit a version raises an alert.
    pub fn encryption_limit_percent(self, percent: u64) -> Self {
        self.set("encryption_limit_percent", percent)
    }

    fn set(mut self, name: &str, value: u64) -> Self {
        self.0.insert(name.into(), integer(value));
        self
    }
}

/// One `[[grant]]` table of a [`DaemonConfig`].
#[derive(Clone, Debug, Default)]
pub struct Grant(Table);

impl Grant {
    /// A grant with no fields yet.
    pub fn new() -> Grant {
        Grant::default()
    }

    /// A grant to the one uid `uid`.
    pub fn to_uid(uid: u32) -> Grant {
        Grant::new().uids(&[uid])
    }

    /// `keys`: the key-name patterns the grant covers.
    pub fn keys(self, keys: &[&str]) -> Self {
        self.strings("keys", keys)
    }

    /// `ops`: the operations it allows.
    pub fn ops(self, ops: &[&str]) -> Self {
        self.strings("ops", ops)
    }

    /// `uids`: the peers it names by uid.
    pub fn uids(mut self, uids: &[u32]) -> Self {
        let uids = uids.iter().map(|&uid| integer(uid.into())).collect();
        self.0.insert("uids".into(), Value::Array(uids));
        self
    }

    /// `users`: the peers it names by user name.
    pub fn users(self, users: &[&str]) -> Self {
        self.strings("users", users)
    }

    /// `groups`: the peers it names by group.
    pub fn groups(self, groups: &[&str]) -> Self {
        self.strings("groups", groups)
    }

    /// `units`: the system units whose processes it admits.
    pub fn units(self, units: &[&str]) -> Self {
        self.strings("units", units)
    }

    /// `user_units`: the user units it admits, with the uids that run them.
    pub fn user_units(self, units: &[&str]) -> Self {
        self.strings("user_units", units)
    }

    fn strings(mut self, name: &str, values: &[&str]) -> Self {
        let values = values.iter().map(|&v| Value::from(v)).collect();
        self.0.insert(name.into(), Value::Array(values));
        self
    }
}

/// A TOML integer; every setting a test gives fits.
fn integer(value: u64) -> Value {
    Value::Integer(i64::try_from(value).expect("a setting within i64"))
}

/// A path as the config file's string; the harness's paths are UTF-8.
fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 test path")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hostkms::config::{Config, Overrides};

    use super::{Alerts, DaemonConfig, Grant};

    /// Every setter at once, so that a misspelled field name fails here
    /// (unknown fields are errors) rather than in a test that needs it.
    fn everything() -> DaemonConfig {
        DaemonConfig::new()
            .socket_mode("0666")
            .max_frame(4096)
            .max_connections(70)
            .max_connections_per_uid(9)
            .max_ungranted_connections(8)
            .admin_reserved_connections(6)
            .max_plaintext(1000)
            .write_timeout_secs(3)
            .frame_timeout_secs(4)
            .idle_timeout_secs(5)
            .tpm_timeout_secs(6)
            .tpm_start_timeout_secs(7)
            .rotate_after_encryptions(10)
            .default_rotation_period("90d")
            .root_key(&[7, 16], true)
            .alerts(
                Alerts::new()
                    .window_secs(600)
                    .denials(3)
                    .invalid_ciphertexts(2)
                    .encryption_limit_percent(50),
            )
            .grant(
                Grant::to_uid(65534)
                    .keys(&["app-*", "a \"quoted\" \\ name"])
                    .ops(&["wrap", "unwrap"]),
            )
            .grant(Grant::new().groups(&["nogroup"]).ops(&["metrics"]))
            .grant(
                Grant::new()
                    .keys(&["app-*"])
                    .units(&["postgresql.service"])
                    .ops(&["describe"]),
            )
            .grant(
                Grant::to_uid(65534)
                    .keys(&["app-*"])
                    .user_units(&["postgresql.service"])
                    .ops(&["describe"]),
            )
            .grant(
                Grant::new()
                    .users(&["nobody"])
                    .keys(&["x"])
                    .ops(&["rotate"]),
            )
    }

    #[test]
    fn every_setting_renders_as_a_field_the_daemon_accepts() {
        let text = everything().render(
            Path::new("/run/test dir/hostkms.sock"),
            Path::new("/var/lib/test \"state\""),
            "swtpm:host=127.0.0.1,port=2321",
        );
        Config::parse(&text, Path::new("/test/config.toml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    }

    #[test]
    fn the_rendered_text_holds_exactly_what_was_set() {
        let text = everything().render(
            Path::new("/run/test dir/hostkms.sock"),
            Path::new("/var/lib/test \"state\""),
            "swtpm:host=127.0.0.1,port=2321",
        );
        let table: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(table["socket"].as_str(), Some("/run/test dir/hostkms.sock"));
        assert_eq!(table["state_dir"].as_str(), Some("/var/lib/test \"state\""));
        assert_eq!(table["socket_mode"].as_str(), Some("0666"));
        assert_eq!(table["max_connections"].as_integer(), Some(70));
        assert_eq!(table["alerts"]["denials"].as_integer(), Some(3));
        assert_eq!(table["root_key"]["pcrs"][1].as_integer(), Some(16));
        assert_eq!(table["root_key"]["pin"].as_bool(), Some(true));
        let grants = table["grant"].as_array().expect("[[grant]] tables");
        assert_eq!(grants.len(), 5);
        assert_eq!(
            grants[0]["keys"][1].as_str(),
            Some("a \"quoted\" \\ name"),
            "{text}"
        );
        assert_eq!(grants[0]["uids"][0].as_integer(), Some(65534));
        // Nothing set, nothing written: the daemon's defaults apply.
        let plain: toml::Table = toml::from_str(&DaemonConfig::new().render(
            Path::new("/s"),
            Path::new("/d"),
            "tabrmd:",
        ))
        .expect("valid TOML");
        let keys: Vec<&str> = plain.keys().map(String::as_str).collect();
        assert_eq!(keys, ["socket", "state_dir", "tcti"]);
    }
}
