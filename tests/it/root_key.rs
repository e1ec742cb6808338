//! The root key sealed to a real (software) TPM: created once, unsealed on
//! every start, refused when anything about it is off, recoverable with
//! tpm2-tools alone, and never on the TPM wire in clear.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness, RecordingRelay, Swtpm};
use hostkms::rootkey::check_value;

fn root_key_check(daemon: &Daemon) -> String {
    daemon.client().status().expect("status").root_key_check
}

fn file_bytes(files: &DaemonFiles) -> (Vec<u8>, Vec<u8>) {
    (
        fs::read(files.state_file("root.pub")).expect("root.pub"),
        fs::read(files.state_file("root.priv")).expect("root.priv"),
    )
}

#[test]
fn restart_unseals_the_same_root_key() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());

    let first = Daemon::start(&files).expect("first start");
    let created = root_key_check(&first);
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("created root key"), "{log}");
    assert!(
        log.contains(&created),
        "the log names the check value: {log}"
    );
    let blobs = file_bytes(&files);

    let second = Daemon::start(&files).expect("second start");
    assert_eq!(
        root_key_check(&second),
        created,
        "a restart must unseal the same root key"
    );
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("unsealed root key"), "{log}");
    assert!(!log.contains("created root key"), "{log}");
    assert_eq!(
        file_bytes(&files),
        blobs,
        "unsealing must not rewrite the blobs"
    );
}

#[test]
fn state_dir_is_0700_and_its_files_0600() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mode =
        |path: &std::path::Path| fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&files.state_dir), 0o700);
    assert_eq!(mode(&files.state_file("root.pub")), 0o600);
    assert_eq!(mode(&files.state_file("root.priv")), 0o600);
    assert_eq!(mode(&files.state_file("keystore.db")), 0o600);
    assert_eq!(mode(&files.state_file("lock")), 0o600);
    let mut entries: Vec<String> = fs::read_dir(&files.state_dir)
        .expect("read state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["keystore.db", "lock", "root.priv", "root.pub"],
        "no temporary files"
    );
    drop(daemon);
}

#[test]
fn another_tpm_cannot_unseal_the_blobs_and_the_daemon_refuses_to_start() {
    let first_tpm = Swtpm::start();
    let files = DaemonFiles::new(&first_tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start on the first TPM");
    let first_check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());
    let blobs = file_bytes(&files);

    let other_tpm = Swtpm::start();
    files.write_config(&other_tpm.tcti(), &DaemonConfig::new());
    let log = match Daemon::start(&files) {
        Ok(_) => panic!("a different TPM must not unseal the root key"),
        Err(log) => log,
    };
    assert!(log.contains("cannot unseal the root key"), "{log}");
    assert!(
        log.contains("root.priv") && log.contains("root.pub"),
        "names the files: {log}"
    );
    assert!(
        log.contains("TPM response"),
        "names the TPM's answer: {log}"
    );
    assert!(
        log.contains("sealed by another TPM"),
        "says what it means: {log}"
    );
    assert!(!log.contains("created root key"), "{log}");
    assert_eq!(file_bytes(&files), blobs, "the blobs are left as they were");

    // A fresh state dir on the other TPM gets a different root key: the
    // check value tells keys apart.
    let fresh = DaemonFiles::new(&other_tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&fresh).expect("fresh start on the other TPM");
    assert_ne!(root_key_check(&daemon), first_check);
}

fn refused_start(files: &DaemonFiles, tpm: &Swtpm, damage: impl FnOnce(&DaemonFiles)) -> String {
    let daemon = Daemon::start(files).expect("start");
    assert!(daemon.stop().0.success());
    damage(files);
    let before = file_bytes(files);
    let log = match Daemon::start(files) {
        Ok(_) => panic!("the daemon must refuse damaged root blobs"),
        Err(log) => log,
    };
    assert!(
        !log.contains("created root key"),
        "no new root key over old state: {log}"
    );
    assert_eq!(file_bytes(files), before, "nothing is rewritten");
    let _ = tpm;
    log
}

#[test]
fn truncated_root_priv_is_refused_with_a_clear_error() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files, &tpm, |files| {
        let path = files.state_file("root.priv");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    });
    assert!(log.contains("root.priv"), "{log}");
    assert!(log.contains("truncated or corrupt"), "{log}");
    assert!(log.contains("Restore it from backup"), "{log}");
}

#[test]
fn bit_flipped_root_priv_is_refused_by_the_tpm() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files, &tpm, |files| {
        let path = files.state_file("root.priv");
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
    });
    assert!(log.contains("cannot unseal the root key"), "{log}");
    assert!(log.contains("TPM response"), "{log}");
}

#[test]
fn corrupt_root_pub_is_refused() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files, &tpm, |files| {
        let path = files.state_file("root.pub");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        bytes[4] ^= 0xff; // inside the object attributes
        fs::write(&path, &bytes).unwrap();
    });
    assert!(log.contains("root.pub"), "{log}");
}

#[test]
fn key_store_without_root_blobs_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    assert!(daemon.stop().0.success());
    fs::write(files.state_file("keystore.db"), b"").unwrap();
    fs::remove_file(files.state_file("root.pub")).unwrap();
    fs::remove_file(files.state_file("root.priv")).unwrap();
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains("keystore.db exists but"), "{log}");
    assert!(log.contains("Restore root.pub and root.priv"), "{log}");
    assert!(
        !files.state_file("root.pub").exists(),
        "no new root key was made"
    );
}

#[test]
fn one_blob_without_the_other_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    assert!(daemon.stop().0.success());
    fs::remove_file(files.state_file("root.pub")).unwrap();
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains("root.priv exists but"), "{log}");
    assert!(log.contains("root.pub does not"), "{log}");
    assert!(!files.state_file("root.pub").exists());
}

#[test]
fn unreachable_tpm_is_a_clear_start_error() {
    let tpm = Swtpm::start();
    let tcti = tpm.tcti();
    let _unplugged = tpm.unplug();
    let files = DaemonFiles::new(&tcti, &DaemonConfig::new());
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains("cannot open the TPM at"), "{log}");
    assert!(log.contains(&tcti), "names the TCTI: {log}");
    assert!(!files.state_file("root.priv").exists());
}

#[test]
fn break_glass_with_tpm2_tools_alone_recovers_the_root_key() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let daemon_check = root_key_check(&daemon);
    // The daemon holds no TPM connection or handle between requests.
    let recovered =
        crate::harness::break_glass_unseal(tpm.port, &files.state_dir, files.root.path());
    assert_eq!(recovered.len(), 32, "the root key is 32 bytes");
    assert_ne!(recovered, vec![0u8; 32]);
    assert_eq!(
        check_value(&recovered),
        daemon_check,
        "tpm2-tools recovered the daemon's root key"
    );
    assert!(daemon.stop().0.success());
}

#[test]
fn the_root_key_never_crosses_the_tpm_interface_in_clear() {
    let tpm = Swtpm::start();
    let relay = RecordingRelay::start(&tpm);
    let files = DaemonFiles::new(&relay.tcti(), &DaemonConfig::new());
    // Create (seal), then restart (unseal), all through the relay.
    let daemon = Daemon::start(&files).expect("create through the relay");
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("unseal through the relay");
    let check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());

    // Learn the key out of band, straight from swtpm.
    let key = crate::harness::break_glass_unseal(tpm.port, &files.state_dir, files.root.path());
    assert_eq!(check_value(&key), check);

    let wire = relay.recorded();
    assert!(
        wire.len() > 1000,
        "the relay saw the daemon's TPM traffic ({} bytes)",
        wire.len()
    );
    for window in key.windows(8) {
        assert!(
            !crate::harness::contains(&wire, window),
            "8 bytes of the root key crossed the wire in clear"
        );
    }

    // Control: a plain tpm2_unseal through the same relay does expose it, so
    // the relay sees what matters.
    let work = files.root.path().join("control");
    fs::create_dir(&work).unwrap();
    crate::harness::break_glass_unseal(relay.port, &files.state_dir, &work);
    assert!(
        crate::harness::contains(&relay.recorded(), &key),
        "the relay records unseal responses"
    );
}

#[test]
fn a_tpm_in_dictionary_attack_lockout_is_explained_not_blamed_on_the_blobs() {
    let tpm_state = crate::harness::private_tempdir();
    let tpm = Swtpm::start_in(tpm_state.path());
    // One strike: any unclean shutdown after a DA-protected use locks out.
    crate::harness::tpm2_tools::tpm2(
        tpm.port,
        "tpm2_dictionarylockout",
        &[
            "--setup-parameters",
            "--max-tries=1",
            "--recovery-time=1000",
            "--lockout-recovery-time=1000",
        ],
    );
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    let check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());
    tpm.crash();

    let tpm = Swtpm::resume_in(tpm_state.path());
    files.write_config(&tpm.tcti(), &DaemonConfig::new());
    let log = Daemon::start(&files)
        .err()
        .expect("a locked-out TPM refuses the storage key");
    assert!(log.contains("locked out"), "{log}");
    assert!(
        log.contains("tpm2_dictionarylockout --clear-lockout"),
        "{log}"
    );
    assert!(log.contains("the blobs are not at fault"), "{log}");

    crate::harness::tpm2_tools::tpm2(tpm.port, "tpm2_dictionarylockout", &["--clear-lockout"]);
    let daemon = Daemon::start(&files).expect("starts once the lockout is cleared");
    assert_eq!(root_key_check(&daemon), check);
}
