//! The root key sealed to a real (software) TPM: created once, unsealed on
//! every start, refused when anything about it is off, recoverable with
//! tpm2-tools alone, and never on the TPM wire in clear. The sealing modes
//! (PCRs, PIN) and the migration of the layout before them are in
//! `sealing_modes`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Harness, RecordingRelay, Swtpm, break_glass_unseal,
    root_key_file_names, root_key_files, seal_record,
};
use hostkms::rootkey::check_value;

/// The files a plain-mode state dir's first generation seals the root key in.
const AUTO_PUB: &str = "root-1-auto.pub";
const AUTO_PRIV: &str = "root-1-auto.priv";

fn root_key_check(daemon: &Daemon) -> String {
    daemon.client().status().expect("status").root_key_check
}

fn file_bytes(files: &DaemonFiles) -> Vec<(String, Vec<u8>)> {
    root_key_files(&files.state_dir)
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
    assert_eq!(
        root_key_file_names(&files.state_dir),
        [AUTO_PRIV, AUTO_PUB, "root.seal"],
        "a plain mode seals one auto copy, generation 1"
    );
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["format"], 1, "{record}");
    assert_eq!(record["generation"], 1, "{record}");
    assert_eq!(record["primary"], "transient-noda", "{record}");
    assert_eq!(record["pcrs"], serde_json::json!([]), "{record}");
    assert_eq!(record["pcr_values"], serde_json::json!([]), "{record}");
    assert_eq!(record["pin"], false, "{record}");
    assert!(
        log.contains("sealed it to the TPM (this TPM only (no PCRs, no PIN))"),
        "the log names the mode: {log}"
    );

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
    for name in ["root.seal", AUTO_PUB, AUTO_PRIV, "keystore.db", "lock"] {
        assert_eq!(mode(&files.state_file(name)), 0o600, "{name}");
    }
    let mut entries: Vec<String> = fs::read_dir(&files.state_dir)
        .expect("read state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["keystore.db", "lock", AUTO_PRIV, AUTO_PUB, "root.seal"],
        "no temporary files"
    );
    // A rotation's new generation is private too, and the old one is gone.
    daemon.client().rotate_root().expect("rotate-root");
    for name in ["root.seal", "root-2-auto.pub", "root-2-auto.priv"] {
        assert_eq!(mode(&files.state_file(name)), 0o600, "{name}");
    }
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-2-auto.priv", "root-2-auto.pub", "root.seal"]
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
        log.contains(AUTO_PRIV) && log.contains(AUTO_PUB),
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
        let path = files.state_file(AUTO_PRIV);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    });
    assert!(log.contains(AUTO_PRIV), "{log}");
    assert!(log.contains("truncated or corrupt"), "{log}");
    assert!(log.contains("Restore it from backup"), "{log}");
}

#[test]
fn bit_flipped_root_priv_is_refused_by_the_tpm() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files, &tpm, |files| {
        let path = files.state_file(AUTO_PRIV);
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
        let path = files.state_file(AUTO_PUB);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        bytes[4] ^= 0xff; // inside the object attributes
        fs::write(&path, &bytes).unwrap();
    });
    assert!(log.contains(AUTO_PUB), "{log}");
}

#[test]
fn a_corrupt_sealing_record_is_refused_naming_it() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files, &tpm, |files| {
        let path = files.state_file("root.seal");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
    });
    assert!(
        log.contains("root.seal is not a valid sealing record"),
        "{log}"
    );
    assert!(log.contains("changed nothing"), "{log}");
}

#[test]
fn a_sealing_record_naming_missing_copies_is_refused() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let log = refused_start(&files, &tpm, |files| {
        // The record says generation 2; only generation 1's files exist.
        let path = files.state_file("root.seal");
        let text = fs::read_to_string(&path).unwrap();
        let text = text.replace("\"generation\": 1", "\"generation\": 2");
        assert!(text.contains("\"generation\": 2"), "{text}");
        fs::write(&path, text).unwrap();
    });
    assert!(log.contains("root-2-auto"), "names the missing copy: {log}");
}

#[test]
fn key_store_without_root_blobs_is_refused() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    assert!(daemon.stop().0.success());
    // The record alone gone: the copies are not enough to go on.
    fs::remove_file(files.state_file("root.seal")).unwrap();
    let copies = file_bytes(&files);
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains("keystore.db exists but"), "{log}");
    assert!(log.contains("Restore root.seal"), "{log}");
    assert_eq!(file_bytes(&files), copies, "no new root key was made");

    // Nothing of the root key left.
    fs::write(files.state_file("keystore.db"), b"").unwrap();
    fs::remove_file(files.state_file(AUTO_PUB)).unwrap();
    fs::remove_file(files.state_file(AUTO_PRIV)).unwrap();
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains("keystore.db exists but"), "{log}");
    assert!(log.contains("Restore root.seal"), "{log}");
    assert!(
        root_key_file_names(&files.state_dir).is_empty(),
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
    fs::remove_file(files.state_file(AUTO_PUB)).unwrap();
    let before = file_bytes(&files);
    let log = Daemon::start(&files).err().expect("must refuse");
    assert!(log.contains(AUTO_PUB), "names the missing blob: {log}");
    assert!(!log.contains("created root key"), "{log}");
    assert_eq!(file_bytes(&files), before, "nothing was rewritten");
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
    assert!(root_key_file_names(&files.state_dir).is_empty());
}

#[test]
fn break_glass_with_tpm2_tools_alone_recovers_the_root_key() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let daemon_check = root_key_check(&daemon);
    // The daemon holds no TPM connection or handle between requests.
    let recovered = break_glass_unseal(tpm.port, &files.state_dir, files.root.path());
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
    let key = break_glass_unseal(tpm.port, &files.state_dir, files.root.path());
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
    break_glass_unseal(relay.port, &files.state_dir, &work);
    assert!(
        crate::harness::contains(&relay.recorded(), &key),
        "the relay records unseal responses"
    );
}

#[test]
fn a_tpm_in_dictionary_attack_lockout_no_longer_stops_a_plain_mode_daemon() {
    use crate::harness::tpm2_tools::da_setup;
    use crate::sealing_modes::tools::{in_lockout, lock_out};
    let tpm_state = crate::harness::private_tempdir();
    let tpm = Swtpm::start_in(tpm_state.path());
    // One strike. Before, any unclean shutdown of the TPM after the daemon
    // had used its (not noDA) primary was one, and locked it out.
    da_setup(tpm.port, 1, 1000);
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    assert!(daemon.stop().0.success());
    tpm.crash();
    let tpm = Swtpm::resume_in(tpm_state.path());
    files.write_config(&tpm.tcti(), &DaemonConfig::new());
    assert_eq!(
        in_lockout(tpm.port),
        (false, 0),
        "nothing the daemon uses counts towards lockout"
    );
    let daemon = Daemon::start(&files).expect("start");
    let check = root_key_check(&daemon);
    let context = agent_proto::EncryptionContext::new();
    let mut client = daemon.client();
    client.create_key("before").expect("create");
    let wrapped = client.wrap("before", b"kept", &context).expect("wrap");
    drop(client);
    assert!(daemon.stop().0.success());
    let blobs = file_bytes(&files);

    // One strike, then a wrong password on a DA-protected object: the TPM
    // is in lockout and refuses every object under a primary without
    // noDA, as the tpm2-tools default template (hostkms's before 0.14) is.
    let work = files.root.path().join("lockout");
    fs::create_dir(&work).unwrap();
    lock_out(tpm.port, &work);
    assert!(in_lockout(tpm.port).0, "the TPM is in lockout");

    let daemon = Daemon::start(&files).expect("a TPM in lockout unseals the noDA copies");
    assert_eq!(root_key_check(&daemon), check);
    let mut client = daemon.client();
    let unwrapped = client
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap in lockout");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
    client
        .create_key("in-lockout")
        .expect("create a key in lockout");
    client
        .rotate_root()
        .expect("rotate the root key in lockout");
    drop(client);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("locked out"), "{log}");
    assert!(
        log.contains("loaded transport key") && !log.contains("no transport key"),
        "the transport key loads in lockout too: {log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    assert_ne!(
        file_bytes(&files),
        blobs,
        "the rotation sealed a new generation"
    );

    // A first start in lockout seals a new root key too.
    let fresh = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&fresh).expect("a first start in lockout");
    assert_ne!(root_key_check(&daemon), check);
    assert!(in_lockout(tpm.port).0, "still in lockout throughout");
}
