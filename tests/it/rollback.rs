//! Rollback-proof revocation: the key store bound to a TPM NV counter.
//! The counter itself (define, read, raise, its attributes and
//! authorization) against a private swtpm, then the daemon refusing an
//! older keystore.db, a deleted key and a missing counter, and catching up
//! on increments a hung TPM held back.

use std::fs;
use std::process::{Command, Output};
use std::str::FromStr;
use std::time::{Duration, Instant};

use agent_proto::EncryptionContext;
use hostkms::tpm::{NV_COUNTER_FIRST, NvCounterError, Tcti, Tpm};

use crate::harness::process::output_feeding;
use crate::harness::tpm2_tools::tpm2;
use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, HOSTKMSD, Harness, Swtpm, cli, ok, sqlite, text,
};

fn open(tpm: &Swtpm) -> Tpm {
    Tpm::open(&Tcti::from_str(&tpm.tcti()).expect("TCTI")).expect("open the TPM")
}

#[test]
fn the_counter_is_defined_read_and_raised_never_past_its_target() {
    let swtpm = Swtpm::start();
    let auth = [7u8; 32];
    let (index, first) = open(&swtpm).nv_counter_define(&auth).expect("define");
    assert_eq!(index, NV_COUNTER_FIRST, "the first free index of the range");
    assert_eq!(
        open(&swtpm).nv_counter_read(index, &auth).expect("read"),
        first
    );
    let raised = open(&swtpm)
        .nv_counter_raise(index, &auth, first + 1)
        .expect("raise");
    assert_eq!(raised, first + 1);
    // Already at the target: not counted again.
    let again = open(&swtpm)
        .nv_counter_raise(index, &auth, first + 1)
        .expect("raise again");
    assert_eq!(again, first + 1);

    // A second store gets the next index.
    let (second, _) = open(&swtpm).nv_counter_define(&[9u8; 32]).expect("define");
    assert_eq!(second, NV_COUNTER_FIRST + 1);

    // Another authorization value is refused, without lockout (NO_DA).
    for _ in 0..5 {
        let wrong = open(&swtpm).nv_counter_read(index, &[8u8; 32]);
        assert!(
            matches!(wrong, Err(NvCounterError::AuthFailed { index: i }) if i == index),
            "{wrong:?}"
        );
    }
    let raised = open(&swtpm)
        .nv_counter_raise(index, &[8u8; 32], first + 5)
        .expect_err("raised with another auth");
    assert!(
        matches!(raised, NvCounterError::AuthFailed { .. }),
        "{raised:?}"
    );
    assert_eq!(
        open(&swtpm).nv_counter_read(index, &auth).expect("read"),
        first + 1
    );

    // The owner (empty authorization) cannot count it up.
    let hex = format!("{index:#x}");
    let output = std::process::Command::new("tpm2_nvincrement")
        .args(["-C", "o", &hex])
        .env("TPM2TOOLS_TCTI", swtpm.tcti())
        .env("TSS2_LOG", "all+none")
        .output()
        .expect("tpm2_nvincrement");
    assert!(!output.status.success(), "the owner counted it up");
    assert_eq!(
        open(&swtpm).nv_counter_read(index, &auth).expect("read"),
        first + 1
    );

    // Deleted: missing, never recreated by reading it.
    tpm2(swtpm.port, "tpm2_nvundefine", &["-C", "o", &hex]);
    let missing = open(&swtpm).nv_counter_read(index, &auth);
    assert!(
        matches!(missing, Err(NvCounterError::Missing { .. })),
        "{missing:?}"
    );
    let missing = open(&swtpm).nv_counter_raise(index, &auth, first + 9);
    assert!(
        matches!(missing, Err(NvCounterError::Missing { .. })),
        "{missing:?}"
    );

    // Defined again by someone else, with other attributes: refused.
    tpm2(
        swtpm.port,
        "tpm2_nvdefine",
        &[
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite|authread|authwrite|nt=counter",
            &hex,
        ],
    );
    let other = open(&swtpm).nv_counter_read(index, &auth);
    assert!(
        matches!(other, Err(NvCounterError::Attributes { .. })),
        "{other:?}"
    );
}

#[test]
fn a_new_counter_starts_where_the_tpm_says_not_at_zero() {
    let swtpm = Swtpm::start();
    let auth = [1u8; 32];
    let (index, first) = open(&swtpm).nv_counter_define(&auth).expect("define");
    for target in first + 1..=first + 3 {
        open(&swtpm)
            .nv_counter_raise(index, &auth, target)
            .expect("raise");
    }
    assert!(
        first >= 1,
        "a counter's first value is the TPM's, never 0 ({first})"
    );
    // Deleted and defined again, even at the same index, the counter never
    // starts below the value the deleted one had: the TPM remembers the
    // highest value any of its counters had.
    tpm2(
        swtpm.port,
        "tpm2_nvundefine",
        &["-C", "o", &format!("{index:#x}")],
    );
    let (again, later) = open(&swtpm).nv_counter_define(&[2u8; 32]).expect("define");
    assert_eq!(again, index);
    assert!(later >= first + 3, "{later} < {}", first + 3);
}

/// Runs `hostkmsd accept-rollback --config FILE`; returns its output.
fn accept_rollback(files: &DaemonFiles) -> Output {
    let config = files.config.to_str().expect("config path");
    let mut command = Command::new(HOSTKMSD);
    command
        .args(["accept-rollback", "--config", config])
        .env("HOSTKMS_LOG", "info")
        .env("HOSTKMS_LOG_TARGET", "stderr");
    output_feeding(command, b"", "hostkmsd accept-rollback")
}

/// A start that must be refused; returns the daemon's log.
fn refused_start(files: &DaemonFiles) -> String {
    match Daemon::start(files) {
        Ok(daemon) => panic!("hostkmsd started: {}", daemon.log()),
        Err(log) => log,
    }
}

fn stop(daemon: Daemon) -> String {
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    log
}

fn context() -> EncryptionContext {
    EncryptionContext::new()
}

#[test]
fn an_older_keystore_put_back_is_refused_until_accepted() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    // Offline only: refused while the daemon holds the state dir.
    let output = accept_rollback(&files);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("is in use by"), "{stderr}");

    let mut client = daemon.client();
    client.create_key("k").expect("create");
    let old = client.wrap("k", b"old secret", &context()).expect("wrap");
    client.rotate("k").expect("rotate");
    stop(daemon);
    let copy = files.root.path().join("keystore.db.copy");
    fs::copy(files.state_file("keystore.db"), &copy).expect("copy the store");

    let daemon = Daemon::start(&files).expect("start");
    daemon
        .client()
        .revoke("k", Some(1))
        .expect("revoke version 1");
    assert!(
        daemon
            .client()
            .unwrap(old.ciphertext.as_bytes(), &context(), None)
            .is_err()
    );
    stop(daemon);

    fs::copy(&copy, files.state_file("keystore.db")).expect("put the old store back");
    let log = refused_start(&files);
    assert!(log.contains("a rollback was detected"), "{log}");
    assert!(log.contains("records counter"), "{log}");
    assert!(
        log.contains("hostkmsd accept-rollback --config FILE"),
        "{log}"
    );
    // Refused again: nothing changed by the refusal.
    let log = refused_start(&files);
    assert!(log.contains("a rollback was detected"), "{log}");

    let output = accept_rollback(&files);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("accepted"), "{stdout}");
    assert!(
        stdout.contains(
            "the store recorded 1, the TPM is at 2 (an older copy of the store: a rollback)"
        ),
        "says what it accepts: {stdout}"
    );
    assert!(
        stdout.contains("\"k\" (enabled") && stdout.contains("live versions [1, 2]"),
        "says the revoked version is live again: {stdout}"
    );
    assert!(stderr.contains("accept-rollback:"), "audited: {stderr}");

    let daemon = Daemon::start(&files).expect("starts once accepted");
    let opened = daemon
        .client()
        .unwrap(old.ciphertext.as_bytes(), &context(), None)
        .expect("the accepted copy has version 1 live");
    assert_eq!(opened.plaintext.expose(), b"old secret");
    // Revoked again, and the binding goes on from the accepted value.
    daemon.client().revoke("k", Some(1)).expect("revoke again");
    stop(daemon);
    let daemon = Daemon::start(&files).expect("restart");
    assert!(
        daemon
            .client()
            .unwrap(old.ciphertext.as_bytes(), &context(), None)
            .is_err()
    );
}

#[test]
fn a_deleted_key_or_a_replayed_row_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("kept").expect("create");
    client.create_key("gone").expect("create");
    client.rotate("kept").expect("rotate");
    stop(daemon);
    let db = files.state_file("keystore.db");
    let copy = files.root.path().join("keystore.db.copy");
    fs::copy(&db, &copy).expect("copy the store");

    // A key's rows deleted (re-MACing is impossible without the root key).
    sqlite(
        &db,
        "DELETE FROM versions WHERE key_id = (SELECT id FROM keys WHERE name = 'gone');
         DELETE FROM keys WHERE name = 'gone';",
    );
    let log = refused_start(&files);
    assert!(
        log.contains("a key or version was deleted or replayed"),
        "{log}"
    );

    // A revoked version's older row put back.
    fs::copy(&copy, &db).expect("the whole store back");
    let daemon = Daemon::start(&files).expect("start");
    daemon.client().revoke("kept", Some(1)).expect("revoke");
    stop(daemon);
    sqlite(
        &db,
        &format!(
            "ATTACH '{}' AS old;
             INSERT OR REPLACE INTO versions SELECT * FROM old.versions
               WHERE key_id = (SELECT id FROM keys WHERE name = 'kept') AND version = 1;",
            copy.display()
        ),
    );
    let log = refused_start(&files);
    assert!(
        log.contains("a key or version was deleted or replayed"),
        "{log}"
    );
}

#[test]
fn a_missing_counter_is_refused_and_not_defined_again() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    daemon.client().create_key("k").expect("create");
    stop(daemon);
    let index = format!("{NV_COUNTER_FIRST:#x}");
    tpm2(tpm.port, "tpm2_nvundefine", &["-C", "o", &index]);

    let log = refused_start(&files);
    assert!(log.contains("has no NV index 0x01004b00"), "{log}");
    assert!(log.contains("accept-rollback"), "{log}");
    let defined = text(&tpm2(tpm.port, "tpm2_getcap", &["handles-nv-index"]));
    assert!(!defined.contains("0x1004B00"), "defined again: {defined}");

    let output = accept_rollback(&files);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("bound to a new counter"), "{stdout}");
    let daemon = Daemon::start(&files).expect("starts once accepted");
    daemon.client().describe_key("k").expect("the key is there");
}

#[test]
fn the_first_value_is_the_tpms_and_a_crash_before_the_increment_is_caught_up() {
    let tpm = Swtpm::start();
    // Another counter on the TPM, counted up and deleted: the store's
    // counter starts at the highest value any counter had, not at 0 or 1.
    let other = "0x1500100";
    tpm2(
        tpm.port,
        "tpm2_nvdefine",
        &[
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite|nt=counter",
            other,
        ],
    );
    for _ in 0..6 {
        tpm2(tpm.port, "tpm2_nvincrement", &["-C", "o", other]);
    }
    tpm2(tpm.port, "tpm2_nvundefine", &["-C", "o", other]);

    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().tpm_timeout_secs(3));
    let daemon = Daemon::start(&files).expect("start");
    let log = daemon.log();
    let first: u64 = log
        .split("counter=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the log names the first value: {log}"));
    assert!(first >= 6, "started at {first}: {log}");
    let mut client = daemon.client();
    let status = client.status().expect("status").rollback;
    assert!(status.bound && status.store_counter == first, "{status:?}");
    client.create_key("k").expect("create");
    client.rotate("k").expect("rotate");

    // The TPM hangs; the revocation is committed and answered at once, its
    // increment waits; then the daemon dies before the TPM answers.
    tpm.pause();
    let started = Instant::now();
    client
        .revoke("k", Some(1))
        .expect("revoke with the TPM hung");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(daemon);
    tpm.resume();

    let daemon = Daemon::start(&files).expect("a store one ahead starts");
    let log = daemon.log();
    assert!(log.contains("brought it level"), "{log}");
    stop(daemon);
    let daemon = Daemon::start(&files).expect("and is level after");
    let log = daemon.log();
    assert!(log.contains("matches its TPM rollback counter"), "{log}");
}

#[test]
fn a_revocation_answers_at_once_on_a_hung_tpm_and_its_increment_catches_up() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new().tpm_timeout_secs(3));
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    client.rotate("k").expect("rotate");
    let before = client.status().expect("status").rollback;
    assert!(before.bound, "{before:?}");
    assert_eq!(before.nv_index, NV_COUNTER_FIRST);
    assert_eq!(before.pending_increments, 0, "{before:?}");

    tpm.pause();
    let started = Instant::now();
    client
        .revoke("k", Some(1))
        .expect("revoke with the TPM hung");
    client.disable("k").expect("disable with the TPM hung");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the revocation waited for the TPM: {:?}",
        started.elapsed()
    );
    let during = client.status().expect("status").rollback;
    assert_eq!(during.store_counter, before.store_counter + 2, "{during:?}");
    assert_eq!(during.pending_increments, 2, "{during:?}");
    let shown = text(&ok(cli(&files.socket, &["status"])));
    assert!(shown.contains("2 increments pending"), "{shown}");

    // Past the TPM deadline: the increment fails and is retried.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        client.status().expect("status").rollback.pending_increments,
        2
    );
    tpm.resume();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = client.status().expect("status").rollback;
        if now.pending_increments == 0 {
            assert_eq!(now.store_counter, during.store_counter);
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = stop(daemon);
    assert!(log.contains("counts the rollback counter again"), "{log}");
    let daemon = Daemon::start(&files).expect("restart");
    assert!(
        daemon.log().contains("matches its TPM rollback counter"),
        "{}",
        daemon.log()
    );
}

#[test]
fn an_older_copy_with_its_binding_removed_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    client.rotate("k").expect("rotate");
    stop(daemon);
    let db = files.state_file("keystore.db");
    let copy = files.root.path().join("keystore.db.copy");
    fs::copy(&db, &copy).expect("copy the store");
    let daemon = Daemon::start(&files).expect("start");
    daemon.client().revoke("k", Some(1)).expect("revoke");
    stop(daemon);

    // The older copy, its binding row deleted so that it looks like a
    // store from before rollback protection.
    fs::copy(&copy, &db).expect("put the old store back");
    sqlite(&db, "DELETE FROM meta WHERE name = 'rollback';");
    // The key rows say the store was bound: refused before the TPM is asked.
    let log = refused_start(&files);
    assert!(
        log.contains("its rollback binding has been removed"),
        "{log}"
    );

    let output = accept_rollback(&files);
    assert!(output.status.success(), "{}", text(&output.stderr));
    Daemon::start(&files).expect("starts once accepted");
}

/// Defines ordinary NV indices of `size` bytes from `first` on until the
/// TPM refuses one for want of space; returns how many it took.
fn fill_nv(tpm: &Swtpm, first: u32, size: u32) -> u32 {
    for n in 0..2000 {
        let index = format!("{:#x}", first + n);
        let output = Command::new("tpm2_nvdefine")
            .args([
                "-C",
                "o",
                "-s",
                &size.to_string(),
                "-a",
                "ownerread|ownerwrite",
                &index,
            ])
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .env("TSS2_LOG", "all+none")
            .output()
            .expect("tpm2_nvdefine");
        if !output.status.success() {
            let stderr = text(&output.stderr);
            assert!(stderr.contains("0x14B"), "not NV space: {stderr}");
            return n;
        }
    }
    panic!("the TPM never ran out of NV space");
}

#[test]
fn a_tpm_without_free_nv_space_refuses_the_start_and_says_what_to_do() {
    let tpm = Swtpm::start();
    // Ordinary indices until none fits, then counters like hostkms's own
    // (swtpm keeps room for counters apart) until none fits either.
    let big = fill_nv(&tpm, 0x0150_0000, 2048);
    fill_nv(&tpm, 0x0160_0000, 1);
    assert!(big > 0, "no NV index fitted at all");
    let mut defined = 0;
    let full = loop {
        match open(&tpm).nv_counter_define(&[3u8; 32]) {
            Ok(_) if defined < 256 => defined += 1,
            Ok(_) => panic!("the TPM never ran out of room for counters"),
            Err(error) => break error,
        }
    };
    assert!(matches!(full, NvCounterError::NoSpace { .. }), "{full}");
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files);
    assert!(log.contains("no NV space left"), "{log}");
    assert!(log.contains("tpm2_getcap properties-variable"), "{log}");
    assert!(log.contains("tpm2_nvundefine"), "{log}");

    // Room made: the same state dir starts.
    tpm2(tpm.port, "tpm2_nvundefine", &["-C", "o", "0x1500000"]);
    Daemon::start(&files).expect("starts once there is room");
}

#[test]
fn a_root_key_rotation_keeps_the_binding() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    client.rotate("k").expect("rotate");
    client.revoke("k", Some(1)).expect("revoke");
    let before = client.status().expect("status").rollback;
    client.rotate_root().expect("rotate the root key");
    client.disable("k").expect("disable after the rotation");
    let after = client.status().expect("status").rollback;
    // The rotation counts (it takes the retired root key's access away),
    // and so does the disable.
    assert_eq!(after.store_counter, before.store_counter + 2, "{after:?}");
    stop(daemon);
    let daemon = Daemon::start(&files).expect("starts after a root-key rotation");
    assert!(
        daemon.log().contains("matches its TPM rollback counter"),
        "{}",
        daemon.log()
    );
}

/// Copies every file of the state dir (the root-key blobs and keystore.db)
/// to `to`, or back.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(to).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            fs::remove_file(&path).expect("rm");
        }
    }
    for entry in fs::read_dir(from).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

#[test]
fn an_older_copy_with_its_binding_removed_and_its_counter_undefined_is_refused() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    let old = client.wrap("k", b"old secret", &context()).expect("wrap");
    client.rotate("k").expect("rotate");
    stop(daemon);
    let db = files.state_file("keystore.db");
    let copy = files.root.path().join("keystore.db.copy");
    fs::copy(&db, &copy).expect("copy the store");
    let daemon = Daemon::start(&files).expect("start");
    daemon.client().revoke("k", Some(1)).expect("revoke");
    stop(daemon);

    // The older copy with its binding row deleted, and the counter gone
    // from the TPM (any TPM user with the empty owner authorization can
    // undefine it): nothing on the TPM says a store was bound.
    fs::copy(&copy, &db).expect("put the old store back");
    sqlite(&db, "DELETE FROM meta WHERE name = 'rollback';");
    let index = format!("{NV_COUNTER_FIRST:#x}");
    tpm2(tpm.port, "tpm2_nvundefine", &["-C", "o", &index]);
    let log = refused_start(&files);
    assert!(
        log.contains("its rollback binding has been removed"),
        "{log}"
    );
    assert!(log.contains("accept-rollback"), "{log}");
    // Refused again: the refusal bound nothing.
    refused_start(&files);
    let defined = text(&tpm2(tpm.port, "tpm2_getcap", &["handles-nv-index"]));
    assert!(!defined.contains("0x1004B"), "bound anew: {defined}");

    let output = accept_rollback(&files);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let daemon = Daemon::start(&files).expect("starts once accepted");
    daemon
        .client()
        .unwrap(old.ciphertext.as_bytes(), &context(), None)
        .expect("the accepted copy has version 1 live");
}

#[test]
fn a_state_dir_from_before_a_root_key_rotation_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    daemon.client().create_key("k").expect("create");
    stop(daemon);
    let before = files.root.path().join("state.before");
    copy_dir(&files.state_dir, &before);
    let daemon = Daemon::start(&files).expect("start");
    let mut client = daemon.client();
    let counted = client.status().expect("status").rollback.store_counter;
    client.rotate_root().expect("rotate the root key");
    let after = client.status().expect("status").rollback;
    assert_eq!(after.store_counter, counted + 1, "{after:?}");
    stop(daemon);

    // The pre-rotation state dir (old root blobs, old store) put back.
    copy_dir(&before, &files.state_dir);
    let log = refused_start(&files);
    assert!(log.contains("a rollback was detected"), "{log}");
}

#[test]
fn pending_increments_stay_bounded_while_the_tpm_hangs() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new().tpm_timeout_secs(3));
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    let before = client.status().expect("status").rollback;
    tpm.pause();
    for _ in 0..70 {
        client.disable("k").expect("disable with the TPM hung");
        client.enable("k").expect("enable with the TPM hung");
    }
    let during = client.status().expect("status").rollback;
    assert_eq!(during.pending_increments, 64, "{during:?}");
    assert_eq!(
        during.store_counter,
        before.store_counter + 64,
        "{during:?}"
    );
    let (_, log) = daemon.stop();
    // The stop says what is at risk, at error severity.
    assert!(log.contains("ERROR"), "{log}");
    assert!(
        log.contains("increments of the TPM rollback counter pending"),
        "{log}"
    );
    assert!(log.contains("is not detected"), "{log}");
    tpm.resume();
    let daemon = Daemon::start(&files).expect("the next start catches up");
    assert_eq!(
        daemon
            .client()
            .status()
            .expect("status")
            .rollback
            .pending_increments,
        0
    );
}

#[test]
fn a_counter_undefined_under_the_running_daemon_is_reported_as_permanent() {
    let Harness {
        tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    client.rotate("k").expect("rotate");
    let index = format!("{NV_COUNTER_FIRST:#x}");
    tpm2(tpm.port, "tpm2_nvundefine", &["-C", "o", &index]);
    client.revoke("k", Some(1)).expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains("unusable for good") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log();
    assert!(log.contains("has no NV index 0x01004b00"), "{log}");
    assert!(log.contains("accept-rollback"), "{log}");
    // Status says it too, with what to do.
    let rollback = client.status().expect("status").rollback;
    assert!(
        rollback.problem.contains("has no NV index 0x01004b00")
            && rollback.problem.contains("accept-rollback"),
        "{rollback:?}"
    );
    let shown = text(&ok(cli(&daemon.socket, &["status"])));
    assert!(shown.contains("PROBLEM: "), "{shown}");
}

#[test]
fn accept_rollback_prints_its_error_on_stderr_whatever_the_log_target() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let config = files.config.to_str().expect("config path");
    let mut command = Command::new(HOSTKMSD);
    command
        .args(["accept-rollback", "--config", config])
        .env("HOSTKMS_LOG", "info")
        .env("HOSTKMS_LOG_TARGET", "journal")
        .env_remove("JOURNAL_STREAM");
    let output = output_feeding(command, b"", "hostkmsd accept-rollback");
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("is in use by"), "{stderr}");
    stop(daemon);

    // A refused start run by hand, logging to the journal while its stderr
    // is not the journal's stream (JOURNAL_STREAM names another file).
    let index = format!("{NV_COUNTER_FIRST:#x}");
    tpm2(tpm.port, "tpm2_nvundefine", &["-C", "o", &index]);
    let log = match Daemon::start_with_env(
        &files,
        &[],
        &[("HOSTKMS_LOG_TARGET", "journal"), ("JOURNAL_STREAM", "0:0")],
    ) {
        Ok(daemon) => panic!("hostkmsd started: {}", daemon.log()),
        Err(log) => log,
    };
    assert!(
        log.contains("hostkmsd: error:") && log.contains("has no NV index"),
        "{log}"
    );
}

#[test]
fn the_tpm_is_unreachable_in_status_while_a_call_waits_on_a_held_tpm() {
    // A TPM deadline long enough that the worker is not yet marked stuck.
    let Harness {
        tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new().tpm_timeout_secs(30));
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    client.rotate("k").expect("rotate");
    assert!(client.status().expect("status").tpm_reachable);
    tpm.pause();
    // The revocation answers; its counter increment waits on the TPM.
    client
        .revoke("k", Some(1))
        .expect("revoke with the TPM held");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status().expect("status");
        if !status.tpm_reachable {
            assert_eq!(status.rollback.pending_increments, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TPM shown reachable while held: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    tpm.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.status().expect("status").tpm_reachable {
        assert!(Instant::now() < deadline, "never reachable again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_older_copy_from_before_a_cancelled_deletion_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("saved").expect("create");
    let wrapped = client
        .wrap("saved", b"still needed", &context())
        .expect("wrap");
    client.schedule_deletion("saved", 7).expect("schedule");
    stop(daemon);
    // A nightly copy taken while the key was on its way to deletion.
    let copy = files.root.path().join("keystore.db.pending");
    fs::copy(files.state_file("keystore.db"), &copy).expect("copy the store");

    let daemon = Daemon::start(&files).expect("start");
    let mut client = daemon.client();
    let counted = client.status().expect("status").rollback.store_counter;
    client
        .cancel_deletion("saved")
        .expect("cancel the deletion");
    let after = client.status().expect("status").rollback;
    assert_eq!(
        after.store_counter,
        counted + 1,
        "a cancel counts: {after:?}"
    );
    client.enable("saved").expect("enable");
    client
        .unwrap(wrapped.ciphertext.as_bytes(), &context(), None)
        .expect("saved");
    stop(daemon);

    // The copy put back would bring the deletion back, and with it the
    // destruction of every version once its wait is over.
    fs::copy(&copy, files.state_file("keystore.db")).expect("put the copy back");
    let log = refused_start(&files);
    assert!(log.contains("a rollback was detected"), "{log}");
    assert!(
        log.contains("deletion"),
        "says what a rollback re-arms: {log}"
    );

    // Accepted on purpose, the key is pending again and the operator told.
    let output = accept_rollback(&files);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("\"saved\" (pending deletion"), "{stdout}");
    assert!(
        stdout.contains("hostkms cancel-deletion NAME"),
        "says how to save it again: {stdout}"
    );
}
