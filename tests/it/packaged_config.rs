//! The default `/etc/hostkms/config.toml` of the Debian package
//! (`packaging/config.toml`) against the real config parser: as shipped it
//! is valid and means "all defaults", every value it shows commented out is
//! the real default, and it documents every field the parser knows, so a
//! field added to `src/config/` fails here until the packaged file shows it.

use std::path::Path;

use hostkms::config::{Config, ConfigError, DEFAULT_ADMIN_GROUP, Overrides};

const PACKAGED: &str = include_str!("../../packaging/config.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("/etc/hostkms/config.toml"),
        &Overrides::default(),
    )
}

/// The settings of the packaged file with their `#` removed, up to the
/// example grants. `socket_group` stays out: naming a group that this build
/// host lacks is an error, while the default only uses it when it exists.
fn uncommented_defaults() -> String {
    let mut out = String::new();
    for line in PACKAGED.lines() {
        if line == "#[[grant]]" {
            break;
        }
        let Some(setting) = line.strip_prefix('#') else {
            continue;
        };
        let is_table = setting == "[alerts]" || setting == "[keys]";
        let is_field = setting.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        if (is_table || is_field) && !setting.starts_with("socket_group ") {
            out.push_str(setting);
            out.push('\n');
        }
    }
    out
}

/// The default admin groups that do not exist on this host. The defaults
/// report none missing, since only groups named in the file are reported,
/// while the file's `admin_groups` line names them explicitly.
fn missing_default_admin_groups() -> Vec<String> {
    [DEFAULT_ADMIN_GROUP]
        .into_iter()
        .filter(|name| nix::unistd::Group::from_name(name).ok().flatten().is_none())
        .map(str::to_string)
        .collect()
}

/// The field names a table accepts, as the parser lists them when it
/// refuses an unknown one.
fn known_fields(table_prefix: &str) -> Vec<String> {
    let err = parse(&format!("{table_prefix}zz_not_a_field = 1\n"))
        .expect_err("an unknown field is refused")
        .to_string();
    // serde says "expected one of `a`, `b`", or "expected `a`" for a
    // table of one field.
    let list = err
        .split_once("expected one of")
        .or_else(|| err.split_once("expected "))
        .unwrap_or_else(|| panic!("the error lists the fields: {err}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_packaged_config_as_shipped_is_all_defaults() {
    let shipped = parse(PACKAGED).expect("the packaged config parses");
    let defaults = parse("").expect("the empty config parses");
    assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
}

#[test]
fn the_values_shown_in_the_packaged_config_are_the_defaults() {
    let text = uncommented_defaults();
    assert!(text.contains("tcti = "), "{text}");
    assert!(text.contains("[alerts]\n"), "{text}");
    assert!(text.contains("\nadmin_groups = "), "{text}");
    let shown = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let defaults = parse("").expect("the empty config parses");
    for (field, shown, default) in [
        (
            "socket",
            format!("{:?}", shown.listener.socket),
            format!("{:?}", defaults.listener.socket),
        ),
        (
            "socket_mode",
            format!("{:o}", shown.listener.socket_mode),
            format!("{:o}", defaults.listener.socket_mode),
        ),
        (
            "state_dir",
            format!("{:?}", shown.state_dir),
            format!("{:?}", defaults.state_dir),
        ),
        (
            "tcti",
            shown.tpm.tcti.to_string(),
            defaults.tpm.tcti.to_string(),
        ),
        (
            "max_frame",
            shown.server.max_frame.to_string(),
            defaults.server.max_frame.to_string(),
        ),
        (
            "max_plaintext",
            shown.service.max_plaintext.to_string(),
            defaults.service.max_plaintext.to_string(),
        ),
        (
            "max_connections",
            shown.server.max_connections.to_string(),
            defaults.server.max_connections.to_string(),
        ),
        (
            "idle_timeout_secs",
            format!("{:?}", shown.server.idle_timeout),
            format!("{:?}", defaults.server.idle_timeout),
        ),
        (
            "frame_timeout_secs",
            format!("{:?}", shown.server.frame_timeout),
            format!("{:?}", defaults.server.frame_timeout),
        ),
        (
            "rotate_after_encryptions",
            shown.service.rotate_after.to_string(),
            defaults.service.rotate_after.to_string(),
        ),
        (
            "alerts",
            format!("{:?}", shown.alerts),
            format!("{:?}", defaults.alerts),
        ),
        (
            "keys",
            format!("{:?}", shown.keys),
            format!("{:?}", defaults.keys),
        ),
        (
            "root_key",
            format!("{:?}", shown.root_key),
            format!("{:?}", defaults.root_key),
        ),
        (
            "admin_groups (the admins it resolves to)",
            format!("{:?}", shown.access.policy),
            format!("{:?}", defaults.access.policy),
        ),
        (
            "admin_groups (the groups this host lacks)",
            format!("{:?}", shown.access.missing_admin_groups),
            format!("{:?}", missing_default_admin_groups()),
        ),
    ] {
        assert_eq!(
            shown, default,
            "packaging/config.toml shows a wrong default for {field}"
        );
    }
}

#[test]
fn the_packaged_config_documents_every_field() {
    let top = known_fields("");
    assert!(top.iter().any(|f| f == "tcti"), "{top:?}");
    let alerts = known_fields("[alerts]\n");
    assert!(alerts.iter().any(|f| f == "denials"), "{alerts:?}");
    for field in &top {
        let shown = match field.as_str() {
            "grant" => PACKAGED.contains("\n#[[grant]]\n"),
            "transfer" => PACKAGED.contains("\n#[[transfer]]\n"),
            "alerts" => PACKAGED.contains("\n#[alerts]\n"),
            "recovery" => PACKAGED.contains("\n#[recovery]\n"),
            "keys" => PACKAGED.contains("\n#[keys]\n"),
            "credentials" => PACKAGED.contains("\n#[credentials]\n"),
            "root_key" => PACKAGED.contains("\n#[root_key]\n"),
            _ => PACKAGED.contains(&format!("\n#{field} = ")),
        };
        assert!(
            shown,
            "packaging/config.toml does not show the field `{field}`"
        );
    }
    for field in &alerts {
        assert!(
            PACKAGED.contains(&format!("\n#{field} = ")),
            "packaging/config.toml does not show the field `alerts.{field}`"
        );
    }
    for field in known_fields("[keys]\n") {
        assert!(
            PACKAGED.contains(&format!("\n#{field} = ")),
            "packaging/config.toml does not show the field `keys.{field}`"
        );
    }
    let root_key = PACKAGED
        .split_once("\n#[root_key]\n")
        .expect("the packaged config shows [root_key]")
        .1;
    for field in known_fields("[root_key]\n") {
        assert!(
            root_key.contains(&format!("\n#{field} = ")),
            "packaging/config.toml does not show the field `root_key.{field}`"
        );
    }
    let credentials = PACKAGED
        .split_once("\n#[credentials]\n")
        .expect("the packaged config shows [credentials]")
        .1;
    for field in known_fields("[credentials]\n") {
        assert!(
            credentials.contains(&format!("\n#{field} = ")),
            "packaging/config.toml does not show the field `credentials.{field}`"
        );
    }
    let recovery = known_fields("[recovery]\n");
    assert!(recovery.iter().any(|f| f == "recipients"), "{recovery:?}");
    let table = PACKAGED
        .split_once("\n#[recovery]\n")
        .expect("the packaged config shows [recovery]")
        .1;
    for field in &recovery {
        assert!(
            table.contains(&format!("\n#{field} = ")) || table.starts_with(&format!("#{field} = ")),
            "packaging/config.toml does not show the field `recovery.{field}`"
        );
    }
}
