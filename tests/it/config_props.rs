//! Property tests of the config parser (issue 8, item 13b): arbitrary and
//! TOML-ish text never panics and every error names a field or the place
//! of the syntax error; random valid configs read back exactly the values
//! written, and a random out-of-range value is refused naming its field
//! and line.

use std::path::Path;
use std::time::Duration;

use agent_proto::Operation;
use hostkms::config::{Config, ConfigError, Overrides};
use hostkms::peer::Peer;
use proptest::prelude::*;

const PATH: &str = "/etc/hostkms/config.toml";

/// The top-level fields of the config file.
const TOP_LEVEL: [&str; 23] = [
    "socket",
    "socket_mode",
    "socket_group",
    "state_dir",
    "tcti",
    "admin_groups",
    "max_frame",
    "max_plaintext",
    "max_connections",
    "max_connections_per_uid",
    "admin_reserved_connections",
    "max_ungranted_connections",
    "idle_timeout_secs",
    "frame_timeout_secs",
    "write_timeout_secs",
    "max_frame_memory",
    "rotate_after_encryptions",
    "tpm_timeout_secs",
    "tpm_start_timeout_secs",
    "grant",
    "alerts",
    "transfer",
    "recovery",
];

/// The fields of the `[alerts]` table.
const ALERT_FIELDS: [&str; 4] = [
    "window_secs",
    "denials",
    "invalid_ciphertexts",
    "encryption_limit_percent",
];

/// The fields of a `[[grant]]` table.
const GRANT_FIELDS: [&str; 7] = [
    "keys",
    "users",
    "uids",
    "groups",
    "units",
    "user_units",
    "ops",
];

/// The fields of a `[[transfer]]` table.
const TRANSFER_FIELDS: [&str; 3] = ["name", "transport_key", "keys"];

/// The fields of the `[recovery]` table.
const RECOVERY_FIELDS: [&str; 4] = ["recipients", "threshold", "dir", "group"];

/// Whether `field` is a name an `Invalid` error may carry: a top-level
/// field, `alerts.<field>`, `recovery.<field>`, or a grant's field.
fn is_config_field(field: &str) -> bool {
    TOP_LEVEL.contains(&field)
        || GRANT_FIELDS.contains(&field)
        || TRANSFER_FIELDS.contains(&field)
        || field
            .strip_prefix("alerts.")
            .is_some_and(|field| ALERT_FIELDS.contains(&field))
        || field
            .strip_prefix("recovery.")
            .is_some_and(|field| RECOVERY_FIELDS.contains(&field))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH), &Overrides::default())
}

/// The checks every refusal must pass: it names the file, and either a
/// known field (with the line, when the value came from the file) or the
/// line and column of the syntax error.
fn check_error(text: &str, err: &ConfigError) -> Result<(), TestCaseError> {
    let message = err.to_string();
    prop_assert!(message.contains(PATH), "no file in {message:?}");
    match err {
        ConfigError::Syntax { .. } => {
            prop_assert!(
                message.contains("line ") && message.contains("column "),
                "a syntax error without its place: {message:?} for {text:?}"
            );
        }
        ConfigError::Invalid { field, line, .. } => {
            prop_assert!(is_config_field(field), "unknown field {field:?}: {message}");
            prop_assert!(
                message.contains(&format!("`{field}`")),
                "the field is not named: {message:?}"
            );
            prop_assert!(
                line.is_some() || *field == "tcti",
                "a value from the file without its line: {message:?} for {text:?}"
            );
        }
        ConfigError::Read { .. } => prop_assert!(false, "parse never reads: {message}"),
    }
    Ok(())
}

/// Values of every TOML type, sound and hostile.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..100_000).prop_map(|n| n.to_string()),
        prop_oneof![
            Just("1e309".to_string()),
            Just("-0.0".to_string()),
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("9223372036854775808".to_string()),
            Just("0x7fffffffffffffff".to_string()),
            Just("0o777".to_string()),
        ],
        any::<bool>().prop_map(|b| b.to_string()),
        ".{0,24}".prop_map(|s| format!("{s:?}")),
        "[ -~]{0,24}".prop_map(|s| format!("'{}'", s.replace('\'', ""))),
        prop_oneof![
            Just("\"0660\"".to_string()),
            Just("\"/tmp/x.sock\"".to_string()),
            Just("\"swtpm:host=127.0.0.1,port=2321\"".to_string()),
            Just("[\"app-*\"]".to_string()),
            Just("[\"wrap\", \"unwrap\", \"nonsense\"]".to_string()),
            Just("[0, 65534, -1, 4294967296]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("[[1], \"x\"]".to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
            Just("\"[\"".to_string()),
            Just("\"\\u0000\"".to_string()),
        ],
    ]
}

/// Every key the TOML-ish text may use, in any table.
fn keys() -> Vec<&'static str> {
    [
        &TOP_LEVEL[..],
        &ALERT_FIELDS[..],
        &GRANT_FIELDS[..],
        &TRANSFER_FIELDS[..],
    ]
    .concat()
}

/// A line of TOML-ish text: a known key with a value of any type, a table
/// header, a comment, a blank, or noise.
fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (proptest::sample::select(keys()), toml_value())
            .prop_map(|(k, v)| format!("{k} = {v}")),
        2 => proptest::sample::select(&["[alerts]", "[[grant]]", "[[transfer]]", "[grant]", "[[alerts]]", "[other]", "[alerts.x]", "[", "[[grant]"][..])
            .prop_map(str::to_string),
        1 => "#.{0,20}",
        1 => Just(String::new()),
        1 => ".{0,30}",
        1 => ("[a-z_.]{1,12}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics_and_every_error_says_where(text in ".{0,200}") {
        if let Err(e) = parse(&text) {
            check_error(&text, &e)?;
        }
    }

    #[test]
    fn toml_ish_text_never_panics_and_every_error_says_where(
        lines in proptest::collection::vec(toml_line(), 0..16)
    ) {
        let text = lines.join("\n");
        if let Err(e) = parse(&text) {
            check_error(&text, &e)?;
        }
    }
}

/// One generated field: its TOML line and whether it is in range.
#[derive(Debug, Clone)]
struct Field {
    key: &'static str,
    value: String,
    valid: bool,
}

fn int_field(key: &'static str, min: i64, max: i64) -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (min..=max).prop_map(move |n| Field { key, value: n.to_string(), valid: true }),
        1 => prop_oneof![
            (i64::MIN..min).boxed(),
            (max.saturating_add(1)..=i64::MAX).boxed(),
        ]
        .prop_map(move |n| Field { key, value: n.to_string(), valid: false }),
    ]
}

fn path_field(key: &'static str) -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => "(/[a-z0-9_.-]{1,12}){1,4}".prop_map(move |p| Field { key, value: p, valid: true }),
        1 => "[a-z0-9_-]{1,12}(/[a-z0-9_.-]{1,12}){0,3}"
            .prop_map(move |p| Field { key, value: p, valid: false }),
    ]
}

fn mode_field() -> impl Strategy<Value = Field> {
    let key = "socket_mode";
    prop_oneof![
        4 => (
            proptest::sample::select(&[0u32, 2, 4, 6][..]),
            proptest::sample::select(&[0u32, 2, 4, 6][..]),
            any::<bool>(),
        )
            .prop_map(move |(g, o, prefix)| Field {
                key,
                value: format!("{}6{g}{o}", if prefix { "0o" } else { "0" }),
                valid: true,
            }),
        1 => proptest::sample::select(&["0777", "0060", "0700", "rw", "8", "", "0o1666", "-1"][..])
            .prop_map(move |m| Field { key, value: m.to_string(), valid: false }),
    ]
}

fn tcti_field() -> impl Strategy<Value = Field> {
    let key = "tcti";
    prop_oneof![
        4 => prop_oneof![
            (1u16..=u16::MAX).prop_map(|p| format!("swtpm:host=127.0.0.1,port={p}")),
            (1u16..=u16::MAX).prop_map(|p| format!("mssim:port={p}")),
            Just("device:/dev/tpmrm0".to_string()),
            Just("tabrmd:".to_string()),
        ]
        .prop_map(move |t| Field { key, value: t, valid: true }),
        1 => proptest::sample::select(&["usb:/dev/tpm0", "swtpm:port=0", "swtpm:port=70000", "device:dev/tpm0", "swtpm:prot=1", ""][..])
            .prop_map(move |t| Field { key, value: t.to_string(), valid: false }),
    ]
}

/// A random config: each field present or absent, each present one in or
/// out of range, top-level fields in random order.
#[derive(Debug, Clone)]
struct RandomConfig {
    top: Vec<Field>,
    alerts: Vec<Field>,
    /// A grant: (uid, ops) on keys "app-*".
    grant: Option<(u32, Vec<Operation>)>,
}

fn maybe(field: impl Strategy<Value = Field> + 'static) -> BoxedStrategy<Option<Field>> {
    proptest::option::weighted(0.6, field).boxed()
}

fn random_config() -> impl Strategy<Value = RandomConfig> {
    let top = (
        (
            maybe(path_field("socket")),
            maybe(mode_field()),
            maybe(path_field("state_dir")),
            maybe(tcti_field()),
            maybe(int_field("max_frame", 1024, 64 << 20)),
        ),
        (
            // max_plaintext's upper bound depends on max_frame: checked below.
            maybe(int_field("max_plaintext", 1, 512)),
            maybe(int_field("max_connections", 1, 65536)),
            maybe(int_field("idle_timeout_secs", 1, 86400)),
            maybe(int_field("frame_timeout_secs", 1, 3600)),
            maybe(int_field("rotate_after_encryptions", 1, 1 << 32)),
        ),
    )
        .prop_map(|((a, b, c, d, e), (f, g, h, i, j))| {
            [a, b, c, d, e, f, g, h, i, j]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        })
        .prop_shuffle();
    let alerts = (
        maybe(int_field("window_secs", 1, 86400)),
        maybe(int_field("denials", 1, 1_000_000)),
        maybe(int_field("invalid_ciphertexts", 1, 1_000_000)),
        maybe(int_field("encryption_limit_percent", 1, 100)),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d].into_iter().flatten().collect::<Vec<_>>());
    let grant = proptest::option::of((
        1000u32..60000,
        // `credential` only in a grant to units (config_props grants uids).
        proptest::sample::subsequence(
            hostkms::policy::GRANTABLE
                .iter()
                .copied()
                .filter(|&op| op != Operation::Credential)
                .collect::<Vec<_>>(),
            1..=4,
        ),
    ));
    (top, alerts, grant).prop_map(|(top, alerts, grant)| RandomConfig { top, alerts, grant })
}

fn quoted(field: &Field) -> bool {
    matches!(field.key, "socket" | "socket_mode" | "state_dir" | "tcti")
}

impl RandomConfig {
    /// The TOML text, and the line each field is on.
    fn text(&self) -> (String, Vec<(&'static str, usize)>) {
        let mut text = String::from("# generated\n");
        let mut lines = Vec::new();
        let mut line = 2;
        let mut push = |text: &mut String, key: &'static str, row: String| {
            text.push_str(&row);
            text.push('\n');
            lines.push((key, line));
            line += 1;
        };
        for f in &self.top {
            let value = if quoted(f) {
                format!("{:?}", f.value)
            } else {
                f.value.clone()
            };
            push(&mut text, f.key, format!("{} = {value}", f.key));
        }
        push(&mut text, "", "[alerts]".to_string());
        for f in &self.alerts {
            let key = match f.key {
                "window_secs" => "alerts.window_secs",
                "denials" => "alerts.denials",
                "invalid_ciphertexts" => "alerts.invalid_ciphertexts",
                _ => "alerts.encryption_limit_percent",
            };
            push(&mut text, key, format!("{} = {}", f.key, f.value));
        }
        if let Some((uid, ops)) = &self.grant {
            let ops: Vec<String> = ops.iter().map(|op| format!("{:?}", op.as_str())).collect();
            push(
                &mut text,
                "grant",
                format!(
                    "[[grant]]\nkeys = [\"app-*\"]\nuids = [{uid}]\nops = [{}]",
                    ops.join(", ")
                ),
            );
        }
        (text, lines)
    }

    fn get(&self, key: &str) -> Option<&Field> {
        self.top.iter().chain(&self.alerts).find(|f| f.key == key)
    }

    fn int(&self, key: &str, default: i64) -> i64 {
        self.get(key)
            .map_or(default, |f| f.value.parse().expect("an integer field"))
    }

    /// The fields the parser must refuse.
    fn invalid(&self) -> Vec<&'static str> {
        let mut bad: Vec<&'static str> = self
            .top
            .iter()
            .chain(&self.alerts)
            .filter(|f| !f.valid)
            .map(|f| match f.key {
                "window_secs" => "alerts.window_secs",
                "denials" => "alerts.denials",
                "invalid_ciphertexts" => "alerts.invalid_ciphertexts",
                "encryption_limit_percent" => "alerts.encryption_limit_percent",
                key => key,
            })
            .collect();
        // max_plaintext may be at most half of the max_frame in force.
        let max_frame = self.int("max_frame", 1 << 20);
        if let Some(f) = self.get("max_plaintext") {
            let n: i64 = f.value.parse().expect("an integer");
            if f.valid && n > max_frame / 2 {
                bad.push("max_plaintext");
            }
        }
        bad
    }
}

fn peer(uid: u32) -> Peer {
    Peer {
        uid,
        gid: uid,
        pid: None,
        groups: Vec::new(),
        unit: None,
        user_unit: None,
        unit_unknown: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_configs_read_back_or_name_the_bad_field_and_line(config in random_config()) {
        let (text, lines) = config.text();
        let bad = config.invalid();
        match parse(&text) {
            Ok(parsed) => {
                prop_assert!(bad.is_empty(), "accepted {bad:?} in:\n{text}");
                let s = |key: &str| config.get(key).map(|f| f.value.clone());
                let socket = s("socket").unwrap_or("/run/hostkms/hostkms.sock".into());
                prop_assert_eq!(parsed.listener.socket.to_str(), Some(socket.as_str()));
                let state_dir = s("state_dir").unwrap_or("/var/lib/hostkms".into());
                prop_assert_eq!(parsed.state_dir.to_str(), Some(state_dir.as_str()));
                let tcti = s("tcti").unwrap_or("device:/dev/tpmrm0".into());
                prop_assert_eq!(parsed.tpm.tcti.as_str(), tcti.as_str());
                let mode = s("socket_mode").unwrap_or("0660".into());
                prop_assert_eq!(
                    parsed.listener.socket_mode,
                    u32::from_str_radix(mode.trim_start_matches("0o"), 8).expect("octal")
                );
                let max_frame = config.int("max_frame", 1 << 20);
                prop_assert_eq!(i64::from(parsed.server.max_frame), max_frame);
                prop_assert_eq!(
                    parsed.service.max_plaintext as i64,
                    config.int("max_plaintext", (64 * 1024).min(max_frame / 2))
                );
                prop_assert_eq!(parsed.server.max_connections as i64, config.int("max_connections", 256));
                prop_assert_eq!(
                    parsed.server.idle_timeout,
                    Duration::from_secs(config.int("idle_timeout_secs", 30) as u64)
                );
                prop_assert_eq!(
                    parsed.server.frame_timeout,
                    Duration::from_secs(config.int("frame_timeout_secs", 5) as u64)
                );
                prop_assert_eq!(
                    parsed.service.rotate_after as i64,
                    config.int("rotate_after_encryptions", 1 << 30)
                );
                let alerts = &parsed.alerts;
                prop_assert_eq!(
                    alerts.window,
                    Duration::from_secs(config.int("window_secs", alerts.window.as_secs() as i64) as u64)
                );
                prop_assert_eq!(i64::from(alerts.denials), config.int("denials", i64::from(alerts.denials)));
                prop_assert_eq!(
                    i64::from(alerts.invalid_ciphertexts),
                    config.int("invalid_ciphertexts", i64::from(alerts.invalid_ciphertexts))
                );
                prop_assert_eq!(
                    i64::from(alerts.encryption_limit_percent),
                    config.int("encryption_limit_percent", i64::from(alerts.encryption_limit_percent))
                );
                // The grant reads back as written: its uid may do its ops on
                // app-* keys, and nothing else; another uid may do nothing.
                if let Some((uid, ops)) = &config.grant {
                    prop_assert_eq!(parsed.access.policy.grant_count(), 1);
                    for op in hostkms::policy::GRANTABLE {
                        prop_assert_eq!(
                            parsed.access.policy.allows(&peer(*uid), op, "app-db"),
                            ops.contains(&op),
                            "{} for uid {}", op, uid
                        );
                        // `random` names no key: a grant listing it
                        // allows it whatever the key globs say.
                        let beyond_globs = op == Operation::Random && ops.contains(&op);
                        prop_assert_eq!(
                            parsed.access.policy.allows(&peer(*uid), op, "other"),
                            beyond_globs
                        );
                        prop_assert!(!parsed.access.policy.allows(&peer(uid + 1), op, "app-db"));
                    }
                } else {
                    prop_assert_eq!(parsed.access.policy.grant_count(), 0);
                }
            }
            Err(e) => {
                check_error(&text, &e)?;
                let ConfigError::Invalid { field, line, .. } = &e else {
                    return Err(TestCaseError::fail(format!("{e} for valid TOML:\n{text}")));
                };
                prop_assert!(bad.contains(field), "refused {field} though only {bad:?} are bad: {e}\n{text}");
                let expected = lines.iter().find(|(k, _)| k == field).map(|(_, l)| *l);
                prop_assert_eq!(*line, expected, "{}\n{}", e, text);
            }
        }
    }
}
