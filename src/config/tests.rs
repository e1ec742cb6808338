//! The config parser's unit tests: defaults, every field read, and
//! refusals that name the file, the line, the field and the fix.

use std::path::PathBuf;
use std::time::Duration;

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
    assert_eq!(config.listener.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(config.listener.socket_mode, 0o660);
    assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(config.tpm.tcti.as_str(), DEFAULT_TCTI);
    assert_eq!(config.server.max_frame, 1 << 20);
}

#[test]
fn every_field_is_read() {
    let config = parse(
        "socket = \"/tmp/s.sock\"\nsocket_mode = \"0666\"\nstate_dir = \"/tmp/st\"\n\
         tcti = \"swtpm:host=127.0.0.1,port=4000\"\nmax_frame = 4096\n",
    )
    .unwrap();
    assert_eq!(config.listener.socket, Path::new("/tmp/s.sock"));
    assert_eq!(config.listener.socket_mode, 0o666);
    assert_eq!(config.state_dir, Path::new("/tmp/st"));
    assert_eq!(config.tpm.tcti.as_str(), "swtpm:host=127.0.0.1,port=4000");
    assert_eq!(config.server.max_frame, 4096);
}

#[test]
fn tpm_timeouts_default_parse_and_refuse_out_of_range() {
    let config = parse("").unwrap();
    assert_eq!(
        config.tpm.timeout,
        Duration::from_secs(DEFAULT_TPM_TIMEOUT_SECS)
    );
    assert_eq!(
        config.tpm.start_timeout,
        Duration::from_secs(DEFAULT_TPM_START_TIMEOUT_SECS)
    );
    let config = parse("tpm_timeout_secs = 3\ntpm_start_timeout_secs = 7\n").unwrap();
    assert_eq!(config.tpm.timeout, Duration::from_secs(3));
    assert_eq!(config.tpm.start_timeout, Duration::from_secs(7));
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
    assert_eq!(config.server.max_connections_per_uid, 64);
    assert_eq!(config.server.admin_reserved_connections, 16);
    assert_eq!(config.server.write_timeout, Duration::from_secs(10));
    // An old file with a small max_connections stays valid.
    assert_eq!(config.server.max_ungranted_connections, 32);
    let small = parse("max_connections = 2").unwrap();
    assert_eq!(small.server.max_connections_per_uid, 2);
    assert_eq!(small.server.max_ungranted_connections, 2);
    assert_eq!(
        parse("max_ungranted_connections = 0")
            .unwrap()
            .server
            .max_ungranted_connections,
        0
    );
    assert_eq!(small.server.admin_reserved_connections, 0);
    let set = parse(
        "max_connections = 100\nmax_connections_per_uid = 10\n\
         admin_reserved_connections = 5\nwrite_timeout_secs = 3\n",
    )
    .unwrap();
    assert_eq!(
        (
            set.server.max_connections_per_uid,
            set.server.admin_reserved_connections,
            set.server.write_timeout
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
    assert_eq!(parse("").unwrap().server.max_frame_memory, 32 << 20);
    let big_frames = parse("max_frame = 67108864\nmax_plaintext = 65536").unwrap();
    assert_eq!(big_frames.server.max_frame_memory, 128 << 20);
    assert_eq!(
        parse("max_frame_memory = 2097152")
            .unwrap()
            .server
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
    assert_eq!(config.listener.socket, Path::new("/tmp/other.sock"));
    assert_eq!(config.tpm.tcti.as_str(), "swtpm:port=5000");
    let overrides = Overrides {
        tcti: Some("nonsense".to_string()),
        ..Overrides::default()
    };
    let err = Config::parse("", Path::new("c.toml"), &overrides)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("config --tcti: `tcti`"), "{err}");
}

/// The field names the parser accepts at the top level, as serde lists
/// them when it refuses an unknown one.
fn accepted_keys() -> Vec<String> {
    let err = parse("zz_not_a_field = 1\n").unwrap_err().to_string();
    let list = err.split_once("expected one of").expect(&err).1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_key_the_file_accepts_is_in_exactly_one_section() {
    let accepted = accepted_keys();
    assert!(accepted.len() > 10, "{accepted:?}");
    let mut mapped: Vec<&str> = SECTIONS
        .iter()
        .flat_map(|(_, keys)| keys.iter().copied())
        .collect();
    for key in &accepted {
        let sections: Vec<&str> = SECTIONS
            .iter()
            .filter(|(_, keys)| keys.contains(&key.as_str()))
            .map(|(section, _)| *section)
            .collect();
        assert_eq!(sections.len(), 1, "`{key}` is in sections {sections:?}");
    }
    mapped.sort_unstable();
    let mut accepted: Vec<&str> = accepted.iter().map(String::as_str).collect();
    accepted.sort_unstable();
    assert_eq!(
        mapped, accepted,
        "SECTIONS names a key the file does not accept"
    );
}

#[test]
fn each_section_reads_its_own_keys() {
    let config = parse(
        "socket = \"/tmp/s.sock\"\nsocket_mode = \"0600\"\nstate_dir = \"/tmp/st\"\n\
         tcti = \"swtpm:port=4000\"\ntpm_timeout_secs = 4\ntpm_start_timeout_secs = 8\n\
         max_frame = 8192\nmax_connections = 40\nmax_connections_per_uid = 7\n\
         admin_reserved_connections = 3\nmax_ungranted_connections = 5\n\
         idle_timeout_secs = 11\nframe_timeout_secs = 12\nwrite_timeout_secs = 13\n\
         max_frame_memory = 20000\nmax_plaintext = 4000\nrotate_after_encryptions = 99\n\
         admin_groups = []\n\
         [alerts]\nwindow_secs = 21\ndenials = 22\ninvalid_ciphertexts = 23\n\
         encryption_limit_percent = 24\n\
         [[grant]]\nkeys = [\"app-*\"]\nuids = [4242]\nops = [\"wrap\"]\n",
    )
    .unwrap();
    let listener = &config.listener;
    assert_eq!(
        (listener.socket.as_path(), listener.socket_mode),
        (Path::new("/tmp/s.sock"), 0o600)
    );
    assert_eq!(config.state_dir, Path::new("/tmp/st"));
    let tpm = &config.tpm;
    assert_eq!(
        (tpm.tcti.as_str(), tpm.timeout, tpm.start_timeout),
        (
            "swtpm:port=4000",
            Duration::from_secs(4),
            Duration::from_secs(8)
        )
    );
    let server = &config.server;
    assert_eq!(
        (
            server.max_frame,
            server.max_connections,
            server.max_connections_per_uid,
            server.admin_reserved_connections,
            server.max_ungranted_connections,
            server.max_frame_memory
        ),
        (8192, 40, 7, 3, 5, 20000)
    );
    assert_eq!(
        (
            server.idle_timeout,
            server.frame_timeout,
            server.write_timeout
        ),
        (
            Duration::from_secs(11),
            Duration::from_secs(12),
            Duration::from_secs(13)
        )
    );
    assert_eq!(
        (config.service.max_plaintext, config.service.rotate_after),
        (4000, 99)
    );
    let alerts = &config.alerts;
    assert_eq!(
        (
            alerts.window,
            alerts.denials,
            alerts.invalid_ciphertexts,
            alerts.encryption_limit_percent
        ),
        (Duration::from_secs(21), 22, 23, 24)
    );
    assert_eq!(config.access.policy.grant_count(), 1);
    assert!(config.access.missing_admin_groups.is_empty());
    assert!(config.access.disabled_grants.is_empty());
}

#[test]
fn a_state_dir_flag_overrides_the_file_and_an_empty_one_is_refused() {
    let overrides = Overrides {
        state_dir: Some(PathBuf::from("/srv/kms")),
        ..Overrides::default()
    };
    let config = Config::parse("state_dir = \"/tmp/st\"", Path::new("c.toml"), &overrides).unwrap();
    assert_eq!(config.state_dir, Path::new("/srv/kms"));
    let overrides = Overrides {
        state_dir: Some(PathBuf::new()),
        ..Overrides::default()
    };
    let err = Config::parse("", Path::new("c.toml"), &overrides)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("config --state-dir: `state_dir`"), "{err}");
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn transfer_tables_pin_peers_and_a_bad_one_names_its_line() {
    let key = age::x25519::Identity::generate().to_public().to_string();
    let config = parse(&format!(
        "[[transfer]]\nname = \"db-replica-2\"\ntransport_key = \"{key}\"\nkeys = [\"app-db*\"]\n"
    ))
    .unwrap();
    let peer = config.transfer.by_name("db-replica-2").unwrap();
    assert!(peer.covers("app-db-1"));
    assert!(parse("").unwrap().transfer.is_empty());

    let err = parse(&format!(
        "max_frame = 4096\n\n[[transfer]]\nname = \"ok\"\ntransport_key = \"{key}\"\nkeys = [\"a*\"]\n\n\
         [[transfer]]\nname = \"bad\"\ntransport_key = \"age1nope\"\nkeys = [\"a*\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 8"), "{err}");
    assert!(err.contains("`transfer`"), "{err}");
    assert!(err.contains("transfer #2: `transport_key`"), "{err}");
    let unknown = parse("[[transfer]]\nname = \"x\"\ndestination = \"y\"\n")
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("destination"), "{unknown}");
}

/// Two valid age recipients, from generated identities.
fn two_recipients() -> [String; 2] {
    [(); 2].map(|()| {
        crate::recovery::escrow::BundleIdentity::generate()
            .unwrap()
            .recipient()
            .to_string()
    })
}

#[test]
fn recovery_is_off_without_its_table_and_read_with_defaults() {
    assert!(parse("").unwrap().recovery.is_none());
    let [a, b] = two_recipients();
    let config = parse(&format!("[recovery]\nrecipients = [\"{a}\", \"{b}\"]\n")).unwrap();
    let recovery = config.recovery.unwrap();
    assert_eq!(recovery.recipients, [a.clone(), b.clone()]);
    assert_eq!(recovery.threshold, 1);
    assert_eq!(recovery.dir, Path::new(DEFAULT_RECOVERY_DIR));
    assert_eq!(recovery.group, None);
    let config = parse(&format!(
        "[recovery]\nrecipients = [\"{a}\", \"{b}\"]\nthreshold = 2\ndir = \"/srv/rec\"\ngroup = \"root\"\n"
    ))
    .unwrap();
    let recovery = config.recovery.unwrap();
    assert_eq!(
        (recovery.threshold, recovery.dir),
        (2, PathBuf::from("/srv/rec"))
    );
    assert_eq!(recovery.group.map(|g| g.gid), Some(0));
}

#[test]
fn a_secret_key_pasted_as_a_custodian_is_refused_without_being_echoed() {
    let secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
    for pasted in [secret.to_string(), secret.to_lowercase()] {
        let err = parse(&format!("[recovery]\nrecipients = [\"{pasted}\"]\n")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("secret key"), "{shown}");
        assert!(shown.contains("treat it as exposed"), "{shown}");
        assert!(
            !shown.to_uppercase().contains("QQQQ"),
            "a secret echoed: {shown}"
        );
    }
}

#[test]
fn bad_recovery_settings_name_the_field_line_and_fix() {
    let [a, b] = two_recipients();
    for (text, field, says) in [
        (
            "[recovery]\n".to_string(),
            "recovery.recipients",
            "names no custodians",
        ),
        (
            "[recovery]\nrecipients = []\n".to_string(),
            "recovery.recipients",
            "0 custodians",
        ),
        (
            "[recovery]\nrecipients = [\"age1nope\"]\n".to_string(),
            "recovery.recipients",
            "not an age X25519 recipient",
        ),
        (
            format!("[recovery]\nrecipients = [\"{a}\", \"{b}\", \"{a}\"]\n"),
            "recovery.recipients",
            "listed twice",
        ),
        (
            format!("[recovery]\nrecipients = [\"{a}\", \"{b}\"]\nthreshold = 3\n"),
            "recovery.threshold",
            "from 1 to 2",
        ),
        (
            format!("[recovery]\nrecipients = [\"{a}\"]\nthreshold = 0\n"),
            "recovery.threshold",
            "out of range",
        ),
        (
            format!("[recovery]\nrecipients = [\"{a}\"]\ndir = \"rel/dir\"\n"),
            "recovery.dir",
            "relative path",
        ),
        (
            format!("[recovery]\nrecipients = [\"{a}\"]\ngroup = \"no-such-group-hkms\"\n"),
            "recovery.group",
            "no group named",
        ),
    ] {
        let err = parse(&text).unwrap_err();
        let ConfigError::Invalid {
            field: got, line, ..
        } = &err
        else {
            panic!("{text}: {err}");
        };
        assert_eq!(*got, field, "{text}: {err}");
        assert!(line.is_some(), "{text}: {err}");
        assert!(err.to_string().contains(says), "{text}: {err}");
    }
    let err = parse("[recovery]\nrecipients = []\nthresold = 2\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn the_keys_table_sets_the_default_rotation_period() {
    assert_eq!(
        parse("").unwrap().keys.rotation_period,
        None,
        "off by default"
    );
    let config = parse("[keys]\nrotation_period = \"90d\"\n").unwrap();
    assert_eq!(config.keys.rotation_period, Some(90 * 86_400));
    let config = parse("[keys]\nrotation_period = \"off\"\n").unwrap();
    assert_eq!(config.keys.rotation_period, None);
    for (bad, says) in [
        ("\"90\"", "e.g. 90d"),
        ("\"30m\"", "e.g. 90d"),
        ("\"0h\"", "minimum of 1h"),
        ("\"101y\"", "maximum of 100y"),
    ] {
        let err = parse(&format!("\n[keys]\nrotation_period = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3: `keys.rotation_period`") && err.contains(says),
            "{bad}: {err}"
        );
    }
    let err = parse("[keys]\nrotation = \"90d\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("rotation_period"), "{err}");
}

#[test]
fn root_key_pcrs_are_sorted_and_bad_ones_named() {
    let config = parse("[root_key]\npcrs = [14, 7]\npin = true\n").unwrap();
    assert_eq!(config.root_key.pcrs, vec![7, 14]);
    assert!(config.root_key.pin);
    assert_eq!(
        parse("").unwrap().root_key,
        crate::rootkey::SealingMode::default()
    );
    for (bad, says) in [
        ("pcrs = [24]", "24 is not a PCR"),
        ("pcrs = [-1]", "-1 is not a PCR"),
        ("pcrs = [7, 7]", "PCR 7 is listed twice"),
    ] {
        let error = parse(&format!("[root_key]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("root_key.pcrs"), "{error}");
        assert!(error.contains(says), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }
    let error = parse("[root_key]\npin = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("pin"), "{error}");
}
