//! The key lifecycle against the real daemon and a real swtpm, with the
//! daemon's clocks moved by the test clock (`harness::clock`): deletion
//! after a waiting period that no wall-clock jump shortens and a restart
//! does not reset, the refusals and the alert of a key pending deletion,
//! rotation by age (once, not for disabled keys, at start-up after
//! downtime), the config default, and the grants of the new operations.
//!
//! The daemon's lifecycle timer ticks every 200 ms with a test clock. A test
//! that must show something did NOT happen after a clock move waits for a
//! witness instead of sleeping: another key that the same move makes due
//! for rotation. Its rotation proves a tick ran with the moved clock, and
//! one tick examines every key.

use std::time::{Duration, Instant};

use agent_proto::date::rfc3339;
use agent_proto::{
    Client, EncryptionContext, ErrorCode, KeyInfo, KeySettings, KeyState, KeyType, RotationSetting,
};

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, TestClock, cli, cli_as, ensure_journald,
    field, journal_of_stopped, ok, sqlite, text, with_id,
};

const DAY: i64 = 86_400;
/// The audit event of a change the daemon made on its own.
const KEY_CHANGED_BY_DAEMON: &str = "755844621ea64ae3aa1c010741ed921c";
/// The alert of a use of a key pending deletion.
const ALERT_PENDING_DELETION_USE: &str = "1b1684d127a34c64a0db0e7121098f60";

/// A swtpm, the daemon's files with `config`, and a test clock at zero.
fn setup(config: &DaemonConfig) -> (Swtpm, DaemonFiles, TestClock) {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), config);
    let clock = TestClock::new(files.root.path());
    (tpm, files, clock)
}

/// Starts the daemon on `files` with `clock`, logging to the journal when
/// `journal` (the test reads its audit events) or to its log file.
fn start(files: &DaemonFiles, clock: &TestClock, journal: bool) -> Daemon {
    let target = (
        "HOSTKMS_LOG_TARGET",
        if journal { "journal" } else { "stderr" },
    );
    Daemon::start_with_env(files, &[], &[target, clock.env()])
        .unwrap_or_else(|log| panic!("start hostkmsd: {log}"))
}

fn describe(client: &mut Client, key: &str) -> KeyInfo {
    client.describe_key(key).expect("describe")
}

/// Polls `key` until `done` holds for it; fails after 20 s with the key
/// and the daemon's log.
fn await_key(daemon: &Daemon, key: &str, what: &str, done: impl Fn(&KeyInfo) -> bool) -> KeyInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = daemon.client();
    loop {
        let info = describe(&mut client, key);
        if done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "key {key} not {what} within 20 s: {info:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn context() -> EncryptionContext {
    EncryptionContext::from([("app".to_string(), "lifecycle".to_string())])
}

/// Creates `name` of `key_type` rotating every `period` seconds.
fn create_rotating(client: &mut Client, name: &str, period: u64) -> KeyInfo {
    let settings = KeySettings {
        rotation: RotationSetting::Every(period),
        ..KeySettings::default()
    };
    client
        .create_key_with(name, KeyType::Aes256Gcm, settings)
        .expect("create a rotating key")
}

/// The standard output of a CLI run that must have succeeded.
fn shown(out: std::process::Output) -> String {
    text(&ok(out))
}

/// The daemon's refusal code and message of `result`.
fn refusal<T: std::fmt::Debug>(result: Result<T, agent_proto::ClientError>) -> (ErrorCode, String) {
    let err = result.expect_err("refused");
    (err.code().unwrap_or(ErrorCode::Internal), err.to_string())
}

#[test]
fn a_key_pending_deletion_refuses_every_use_alerts_once_and_comes_back_disabled() {
    ensure_journald();
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, true);
    let journal = daemon.journal_scope();
    let mut client = daemon.client();
    client.create_key("doomed").expect("create");
    client
        .create_key_of_type("doomed-mac", KeyType::HmacSha256)
        .expect("create");
    client
        .create_key_of_type("doomed-sig", KeyType::Ed25519)
        .expect("create");
    let wrapped = client
        .wrap("doomed", b"still needed", &context())
        .expect("wrap");
    let tag = client.mac("doomed-mac", b"data").expect("mac");
    let signature = client.sign("doomed-sig", b"message").expect("sign");

    let scheduled_at = now();
    let out = cli(
        &files.socket,
        &["schedule-deletion", "doomed", "--days", "7"],
    );
    let printed = shown(out);
    assert!(printed.contains("pending-deletion"), "{printed}");
    for key in ["doomed-mac", "doomed-sig"] {
        shown(cli(&files.socket, &["schedule-deletion", key]));
    }
    let info = describe(&mut client, "doomed");
    assert_eq!(info.state, KeyState::PendingDeletion);
    let due = info.deletion_date.expect("a deletion date") as i64;
    assert!(
        (due - (scheduled_at + 7 * DAY)).abs() <= 5,
        "due {due}, scheduled at {scheduled_at}"
    );
    let date = rfc3339(due as u64);
    assert!(printed.contains(&date), "the date is shown: {printed}");
    let default_due = describe(&mut client, "doomed-mac")
        .deletion_date
        .expect("a date") as i64;
    assert!(
        (default_due - (scheduled_at + 30 * DAY)).abs() <= 5,
        "30 days by default"
    );

    // Every use is refused, naming the date and how to cancel.
    let ciphertext = wrapped.ciphertext.as_bytes();
    let uses = [
        refusal(client.wrap("doomed", b"x", &context())),
        refusal(client.unwrap(ciphertext, &context(), None)),
        refusal(client.generate_data_key("doomed", 32, &context())),
        refusal(client.rewrap(ciphertext, &context(), None)),
    ];
    for (code, message) in &uses {
        assert_eq!(*code, ErrorCode::KeyPendingDeletion, "{message}");
        assert!(message.contains(&date), "{message}");
        assert!(
            message.contains("hostkms cancel-deletion doomed"),
            "{message}"
        );
    }
    for (code, message) in [
        refusal(client.mac("doomed-mac", b"data")),
        refusal(client.verify_mac("doomed-mac", b"data", &tag.tag, None)),
        refusal(client.sign("doomed-sig", b"message")),
        refusal(client.verify("doomed-sig", b"message", &signature.signature, None)),
    ] {
        assert_eq!(code, ErrorCode::KeyPendingDeletion, "{message}");
    }
    // State changes wait for a cancel; reading the key does not.
    for (code, message) in [
        refusal(client.rotate("doomed")),
        refusal(client.disable("doomed")),
        refusal(client.enable("doomed")),
        refusal(client.schedule_deletion("doomed", 7)),
    ] {
        assert_eq!(code, ErrorCode::KeyPendingDeletion, "{message}");
        assert!(message.contains("cancel"), "{message}");
    }
    client
        .public_key("doomed-sig", None)
        .expect("public-key still works");

    // Cancel: disabled, then enabled deliberately; old ciphertexts unwrap.
    let out = cli(&files.socket, &["cancel-deletion", "doomed"]);
    assert!(shown(out).contains("disabled"));
    let info = describe(&mut client, "doomed");
    assert_eq!((info.state, info.deletion_date), (KeyState::Disabled, None));
    assert_eq!(
        refusal(client.wrap("doomed", b"x", &context())).0,
        ErrorCode::KeyDisabled
    );
    let (code, message) = refusal(client.cancel_deletion("doomed"));
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("not scheduled for deletion"), "{message}");
    client.enable("doomed").expect("enable");
    let plaintext = client
        .unwrap(ciphertext, &context(), None)
        .expect("unwraps again");
    assert_eq!(plaintext.plaintext.expose(), b"still needed");

    let (_, log) = daemon.stop();
    let entries = journal_of_stopped(&journal);
    let alerts = with_id(&entries, ALERT_PENDING_DELETION_USE);
    let of = |key: &str| {
        alerts
            .iter()
            .filter(|e| field(e, "HOSTKMS_KEY") == Some(key))
            .count()
    };
    // Four refused uses of "doomed" by one uid: one alert, not four.
    assert_eq!(of("doomed"), 1, "{alerts:#?}\n{log}");
    assert_eq!((of("doomed-mac"), of("doomed-sig")), (1, 1), "{alerts:#?}");
    let alert = alerts
        .iter()
        .find(|e| field(e, "HOSTKMS_KEY") == Some("doomed"))
        .expect("the alert");
    assert_eq!(field(alert, "PRIORITY"), Some("1"), "priority alert");
    assert_eq!(field(alert, "HOSTKMS_ALERT"), Some("pending-deletion-use"));
    assert_eq!(field(alert, "HOSTKMS_PEER_UID"), Some("0"));
    assert_eq!(field(alert, "HOSTKMS_DELETION_DATE"), Some(date.as_str()));
}

#[test]
fn a_wall_clock_jump_alone_never_deletes_and_both_clocks_do() {
    ensure_journald();
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, true);
    let journal = daemon.journal_scope();
    let mut client = daemon.client();
    client.create_key("doomed").expect("create");
    let wrapped = client.wrap("doomed", b"secret", &context()).expect("wrap");
    client.schedule_deletion("doomed", 7).expect("schedule");
    create_rotating(&mut client, "witness", 86_400);

    // The wall clock jumps 31 days; the daemon measured no time passing.
    clock.set(31 * DAY, 0);
    await_key(&daemon, "witness", "rotated", |k| k.latest_version == 2);
    let info = describe(&mut client, "doomed");
    assert_eq!(
        info.state,
        KeyState::PendingDeletion,
        "a wall-clock jump deleted the key: {info:?}"
    );

    // The daemon's own measure of time reaches the waiting period too.
    clock.set(31 * DAY, 7 * DAY + 60);
    let info = await_key(&daemon, "doomed", "deleted", |k| {
        k.state == KeyState::Revoked
    });
    assert_eq!(info.deletion_date, None);
    let (code, message) = refusal(client.unwrap(wrapped.ciphertext.as_bytes(), &context(), None));
    assert_eq!(code, ErrorCode::KeyRevoked, "{message}");

    let (_, log) = daemon.stop();
    let entries = journal_of_stopped(&journal);
    let deleted: Vec<_> = with_id(&entries, KEY_CHANGED_BY_DAEMON)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("delete-scheduled"))
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:#?}\n{log}");
    assert_eq!(field(deleted[0], "HOSTKMS_KEY"), Some("doomed"));
    assert_eq!(field(deleted[0], "HOSTKMS_PEER"), Some("daemon"));
    assert_eq!(field(deleted[0], "HOSTKMS_RESULT"), Some("ok"));
}

#[test]
fn a_restart_during_the_waiting_period_keeps_the_state_and_the_time_measured() {
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    client.create_key("doomed").expect("create");
    client.schedule_deletion("doomed", 7).expect("schedule");
    // Four days pass, measured by the daemon; then it stops cleanly.
    clock.set(0, 4 * DAY);
    drop(client);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    // Started again (the monotonic offset stays: no time is counted twice).
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    let info = describe(&mut client, "doomed");
    assert_eq!(info.state, KeyState::PendingDeletion, "{info:?}");
    // Four more days of this run and the date: 8 days measured in all,
    // which only adds up with the first run's 4 persisted.
    clock.set(8 * DAY, 8 * DAY);
    await_key(&daemon, "doomed", "deleted after the restart", |k| {
        k.state == KeyState::Revoked
    });
}

#[test]
fn a_key_rotates_once_when_its_period_is_up_and_disabled_keys_do_not() {
    ensure_journald();
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, true);
    let journal = daemon.journal_scope();
    let out = cli(
        &files.socket,
        &["create-key", "aged", "--rotation-period", "1d"],
    );
    let printed = shown(out);
    assert!(
        printed.contains("rotation period:         1d\n"),
        "{printed}"
    );
    let mut client = daemon.client();
    let created = describe(&mut client, "aged");
    assert_eq!(created.rotation_period, Some(86_400));
    assert_eq!(created.next_rotation, Some(created.created + 86_400));
    assert!(
        printed.contains(&format!(
            "next rotation:           {}\n",
            rfc3339(created.created + 86_400)
        )),
        "{printed}"
    );
    create_rotating(&mut client, "aged-disabled", 86_400);
    client.disable("aged-disabled").expect("disable");
    client.create_key("never").expect("create");
    assert_eq!(describe(&mut client, "never").rotation_period, None);

    clock.set(DAY + 60, 0);
    let rotated = await_key(&daemon, "aged", "rotated", |k| k.latest_version >= 2);
    assert_eq!(rotated.latest_version, 2);
    // The new version restarted the period.
    let next = rotated.next_rotation.expect("next rotation");
    assert!(next >= rotated.versions[1].created + 86_400, "{rotated:?}");

    // A witness due after a further hour: once it has rotated, ticks have
    // run with "aged" long past its first due time.
    create_rotating(&mut client, "witness", 3600);
    clock.set(DAY + 2 * 3600, 0);
    await_key(&daemon, "witness", "rotated", |k| k.latest_version == 2);
    assert_eq!(
        describe(&mut client, "aged").latest_version,
        2,
        "rotated in a loop"
    );
    assert_eq!(describe(&mut client, "aged-disabled").latest_version, 1);
    assert_eq!(describe(&mut client, "never").latest_version, 1);

    let (_, log) = daemon.stop();
    let entries = journal_of_stopped(&journal);
    let rotations: Vec<_> = with_id(&entries, KEY_CHANGED_BY_DAEMON)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_KEY") == Some("aged"))
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:#?}\n{log}");
    let event = rotations[0];
    assert_eq!(field(event, "HOSTKMS_OP"), Some("rotate"));
    assert_eq!(field(event, "HOSTKMS_REASON"), Some("rotation-period"));
    assert_eq!(field(event, "HOSTKMS_PEER"), Some("daemon"));
    assert_eq!(field(event, "HOSTKMS_KEY_VERSION"), Some("2"));
}

#[test]
fn a_daemon_that_was_off_past_a_rotation_rotates_when_it_starts() {
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, false);
    create_rotating(&mut daemon.client(), "aged", 86_400);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    // Off for two days (the wall clock moved, the daemon measured nothing).
    clock.set(2 * DAY, 0);
    let daemon = start(&files, &clock, false);
    await_key(&daemon, "aged", "rotated at start", |k| {
        k.latest_version == 2
    });
}

#[test]
fn set_rotation_period_off_stops_it_and_the_config_default_applies_to_new_keys_only() {
    let config = DaemonConfig::new().default_rotation_period("1d");
    let (tpm, files, clock) = setup(&config);
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    assert_eq!(
        client
            .create_key("inherits")
            .expect("create")
            .rotation_period,
        Some(86_400),
        "the config default"
    );
    let out = cli(
        &files.socket,
        &["create-key", "off-at-birth", "--rotation-period", "off"],
    );
    assert!(shown(out).contains("rotation period:         off\n"));
    client.create_key("turned-off").expect("create");
    let out = cli(&files.socket, &["set-rotation-period", "turned-off", "off"]);
    assert!(shown(out).contains("rotation period:         off\n"));
    let out = cli(&files.socket, &["set-rotation-period", "inherits", "2d"]);
    assert!(shown(out).contains("rotation period:         2d\n"));
    let out = cli(&files.socket, &["set-rotation-period", "inherits", "30m"]);
    assert_eq!(out.status.code(), Some(2), "minutes are no unit");
    let (code, message) = refusal(client.set_rotation_period("inherits", Some(60)));
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("1h"), "{message}");
    client
        .set_rotation_period("inherits", Some(86_400))
        .expect("back to 1d");
    drop(client);
    daemon.stop();

    // A new default applies to keys created from then on.
    files.write_config(
        &tpm.tcti(),
        &DaemonConfig::new().default_rotation_period("2w"),
    );
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    assert_eq!(
        client.create_key("later").expect("create").rotation_period,
        Some(14 * 86_400)
    );
    assert_eq!(
        describe(&mut client, "inherits").rotation_period,
        Some(86_400)
    );

    clock.set(DAY + 60, 0);
    await_key(&daemon, "inherits", "rotated", |k| k.latest_version == 2);
    for key in ["off-at-birth", "turned-off", "later"] {
        assert_eq!(describe(&mut client, key).latest_version, 1, "{key}");
    }
}

#[test]
fn a_peer_without_the_lifecycle_grants_is_refused() {
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .grant(
            Grant::to_uid(65534)
                .keys(&["app-*"])
                .ops(&["describe", "wrap", "rotate", "disable"]),
        )
        .grant(Grant::to_uid(65534).keys(&["app-ops-*"]).ops(&[
            "schedule-deletion",
            "cancel-deletion",
            "set-rotation-period",
        ]));
    let tpm = Swtpm::start();
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let clock = TestClock::new(files.root.path());
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    client.create_key("app-plain").expect("create");
    client.create_key("app-ops-1").expect("create");

    for args in [
        &["schedule-deletion", "app-plain"][..],
        &["cancel-deletion", "app-plain"],
        &["set-rotation-period", "app-plain", "90d"],
    ] {
        let out = cli_as(65534, &files.socket, args, b"");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let said = text(&out.stderr);
        assert!(said.contains("may not"), "{args:?}: {said}");
    }
    let info = describe(&mut client, "app-plain");
    assert_eq!(
        (info.state, info.rotation_period),
        (KeyState::Enabled, None)
    );

    for args in [
        &["set-rotation-period", "app-ops-1", "90d"][..],
        &["schedule-deletion", "app-ops-1", "--days", "7"],
        &["cancel-deletion", "app-ops-1"],
    ] {
        let out = cli_as(65534, &files.socket, args, b"");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
    let info = describe(&mut client, "app-ops-1");
    assert_eq!(
        (info.state, info.rotation_period),
        (KeyState::Disabled, Some(90 * 86_400))
    );
}

#[test]
fn a_version_stamped_in_the_future_by_a_clock_jump_rotates_once_the_clock_is_back() {
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    create_rotating(&mut client, "aged", 86_400);

    // A bad RTC or an NTP glitch: ten years ahead for a moment. The key is
    // due and rotates once, its new version stamped ten years ahead.
    const TEN_YEARS: i64 = 10 * 365 * DAY;
    clock.set(TEN_YEARS, 0);
    let jumped = await_key(&daemon, "aged", "rotated in the jump", |k| {
        k.latest_version == 2
    });
    let future = jumped.versions[1].created;
    assert!(future as i64 > now() + TEN_YEARS - DAY, "{jumped:?}");

    // Back to the true time: the version from the future must not hold
    // rotation off for ten years. One rotation stamps a sane time.
    clock.set(0, 0);
    let back = await_key(&daemon, "aged", "rotated once the clock is back", |k| {
        k.latest_version == 3
    });
    let sane = back.versions[2].created as i64;
    assert!((sane - now()).abs() <= 60, "{back:?}");
    assert_eq!(back.next_rotation, Some(sane as u64 + 86_400), "{back:?}");
    let log = daemon.log();
    assert!(
        log.contains("\"aged\"") && log.contains(&rfc3339(future)),
        "a warning names the key and the future date: {log}"
    );

    // Once, not in a loop: a witness due an hour on rotates, "aged" does not.
    create_rotating(&mut client, "witness", 3600);
    clock.set(2 * 3600, 0);
    await_key(&daemon, "witness", "rotated", |k| k.latest_version == 2);
    assert_eq!(describe(&mut client, "aged").latest_version, 3);
}

#[test]
fn a_daemon_clock_deleted_from_the_store_is_reported_naming_the_keys_pending_deletion() {
    /// What the start logs when the daemon clock is missing.
    const MISSING: &str = "records no daemon clock";
    let (_tpm, files, clock) = setup(&DaemonConfig::new());
    let daemon = start(&files, &clock, false);
    let mut client = daemon.client();
    client.create_key("doomed").expect("create");
    client.create_key("kept").expect("create");
    client.schedule_deletion("doomed", 7).expect("schedule");
    drop(client);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(MISSING), "a new store has its clock: {log}");

    // Restarted as it was: nothing to report.
    let daemon = start(&files, &clock, false);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(MISSING), "{log}");

    // The row deleted while the daemon is stopped.
    sqlite(
        &files.state_file("keystore.db"),
        "DELETE FROM meta WHERE name = 'daemon_clock';",
    );
    let daemon = start(&files, &clock, false);
    let log = daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains(MISSING))
        .unwrap_or_else(|| panic!("the start says the daemon clock is missing: {log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("starts again"), "{line}");
    assert!(
        line.contains("\"doomed\""),
        "names the key pending deletion: {line}"
    );
    assert!(!line.contains("kept"), "{line}");
    assert_eq!(
        describe(&mut daemon.client(), "doomed").state,
        KeyState::PendingDeletion
    );
}
