//! The root key's sealing modes on a real (software) TPM and the real
//! daemon: the migration of the layout before them (root.pub/root.priv
//! under the tpm2-tools template without noDA), PCR-bound auto-unsealing,
//! a locked start with a PIN, and the operator's `hostkms unlock`,
//! `reseal` and `change-pin`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agent_proto::{EncryptionContext, ErrorCode};
use hostkms::rootkey::check_value;

use crate::harness::break_glass_unseal;
use crate::harness::tpm2_tools::{da_setup, hex, legacy_primary, noda_primary, pcr_extend};
use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, RecordingRelay, Swtpm, cli, contains, root_key_file_names,
    root_key_files, seal_record, stderr, text,
};
use tools::{
    in_lockout, legacy_state_dir, lock_out, pcr_reset, pcr_value as pcr_read, seal_state_dir,
    unseal_copy,
};

/// The code a locked daemon refuses key operations with.
const LOCKED: ErrorCode = ErrorCode::Locked;

/// A PIN of the allowed length (8 to 32 bytes), unlike anything else in
/// the tests, so a capture or a log can be searched for it.
const PIN: &[u8] = b"Pq7-zK2!mW9x";
/// Another one, for wrong tries and PIN changes.
const OTHER_PIN: &[u8] = b"Xv4#nB8@rT1e";

/// The debug PCR the tests bind to: resettable and extendable at
/// locality 0, and zero after swtpm starts.
const PCR: u8 = 16;

/// A 32-byte secret for the state dirs tpm2-tools seal.
fn chosen_secret() -> Vec<u8> {
    (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

fn root_key_check(daemon: &Daemon) -> String {
    daemon.client().status().expect("status").root_key_check
}

/// tpm2-tools against a test's swtpm, for what the sealing modes need: the
/// break-glass recipes of the new layout, the layout before it, PCRs and
/// the dictionary-attack state.
///
/// What `harness::tpm2_tools` does not have: the legacy layout, a TPM put
/// in lockout, a copy unsealed with a plain password.
pub(crate) mod tools {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output, Stdio};

    use crate::harness::tpm2_tools::{Sealing, legacy_primary, seal_like_the_daemon, tpm2};

    fn p(path: &Path) -> String {
        path.display().to_string()
    }

    /// Runs a tpm2-tools command; returns what it did, success or not.
    pub fn tpm2_try(port: u16, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .args(args)
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={port}"),
            )
            .env("TSS2_LOG", "all+none")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool} must be installed: {e}"))
    }

    /// Loads `state_dir/name.pub` + `.priv` under `parent` and unseals it
    /// with `auth` as tpm2_unseal's `-p` (a plain password, which crosses
    /// the TPM interface in clear, or `pcr:sha256:16`). Returns
    /// tpm2-tools' error output when a step fails.
    pub fn unseal_copy(
        port: u16,
        parent: &str,
        state_dir: &Path,
        name: &str,
        auth: Option<&str>,
        work: &Path,
    ) -> Result<Vec<u8>, String> {
        let ctx = work.join(format!("{name}.ctx"));
        let load = tpm2_try(
            port,
            "tpm2_load",
            &[
                "-Q",
                "-C",
                parent,
                "-u",
                &p(&state_dir.join(format!("{name}.pub"))),
                "-r",
                &p(&state_dir.join(format!("{name}.priv"))),
                "-c",
                &p(&ctx),
            ],
        );
        let _ = tpm2_try(port, "tpm2_flushcontext", &["-t"]);
        if !load.status.success() {
            return Err(String::from_utf8_lossy(&load.stderr).into_owned());
        }
        let mut args = vec!["-c".to_string(), p(&ctx)];
        if let Some(auth) = auth {
            args.push("-p".to_string());
            args.push(auth.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let unseal = tpm2_try(port, "tpm2_unseal", &args);
        let _ = tpm2_try(port, "tpm2_flushcontext", &["-t"]);
        let _ = tpm2_try(port, "tpm2_flushcontext", &["-s"]);
        if unseal.status.success() {
            Ok(unseal.stdout)
        } else {
            Err(String::from_utf8_lossy(&unseal.stderr).into_owned())
        }
    }

    /// A state dir in the layout before sealing modes, as tpm2-tools make
    /// it: `secret` sealed under the legacy primary as `root.pub` and
    /// `root.priv` (mode 0600, in a 0700 directory).
    pub fn legacy_state_dir(port: u16, state_dir: &Path, secret: &[u8], work: &Path) {
        fs::create_dir_all(state_dir).expect("state dir");
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        legacy_seal(
            port,
            secret,
            &state_dir.join("root.pub"),
            &state_dir.join("root.priv"),
            work,
        );
    }

    /// `secret` sealed under the legacy primary into `public` and
    /// `private` (mode 0600), as hostkms before sealing modes did.
    pub fn legacy_seal(port: u16, secret: &[u8], public: &Path, private: &Path, work: &Path) {
        let primary = legacy_primary(port, work);
        let input = work.join("secret.bin");
        fs::write(&input, secret).expect("secret");
        tpm2(
            port,
            "tpm2_create",
            &[
                "-Q",
                "-C",
                &primary,
                "-i",
                &p(&input),
                "-u",
                &p(public),
                "-r",
                &p(private),
            ],
        );
        tpm2(port, "tpm2_flushcontext", &["-t"]);
        fs::remove_file(&input).expect("rm secret");
        for path in [public, private] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }

    /// Seals `secret` in the daemon's layout as generation `generation`
    /// for `pcrs` and `pin` (`seal_like_the_daemon`: what `hostkms reseal`
    /// makes), with the daemon's file modes, and removes the copies of
    /// other generations.
    pub fn seal_state_dir(
        port: u16,
        state_dir: &Path,
        secret: &[u8],
        generation: u64,
        pcrs: &[u8],
        pin: Option<&[u8]>,
        work: &Path,
    ) {
        let pin = pin.map(|pin| std::str::from_utf8(pin).expect("a UTF-8 PIN"));
        let sealing = Sealing {
            pcrs,
            pin,
            persistent_srk: false,
            generation,
        };
        seal_like_the_daemon(port, state_dir, work, secret, &sealing);
        for entry in fs::read_dir(state_dir).expect("state dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if !name.starts_with("root") {
                continue;
            }
            if name.starts_with("root-") && !name.starts_with(&format!("root-{generation}-")) {
                fs::remove_file(&path).expect("rm an older copy");
            } else {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            }
        }
    }

    /// The sha256 value of `pcr`.
    pub fn pcr_value(port: u16, pcr: u8) -> [u8; 32] {
        let work = tempfile::tempdir().expect("tempdir");
        crate::harness::tpm2_tools::pcr_read(port, pcr, work.path())
    }

    /// `tpm2_pcrreset pcr` (a debug PCR: 16 or 23).
    pub fn pcr_reset(port: u16, pcr: u8) {
        tpm2(port, "tpm2_pcrreset", &[&pcr.to_string()]);
    }

    /// Whether the TPM is in dictionary-attack lockout, and its counter.
    pub fn in_lockout(port: u16) -> (bool, u32) {
        let (counter, max, _) = crate::harness::tpm2_tools::da_state(port);
        (counter >= max, counter)
    }

    /// Puts the TPM in lockout once `max_tries` is 1: one wrong password
    /// on a DA-protected object sealed for the purpose.
    pub fn lock_out(port: u16, work: &Path) {
        let primary = legacy_primary(port, work);
        let input = work.join("da-bait.bin");
        fs::write(&input, b"bait").expect("bait");
        let (public, private) = (work.join("da-bait.pub"), work.join("da-bait.priv"));
        tpm2(
            port,
            "tpm2_create",
            &[
                "-Q",
                "-C",
                &primary,
                "-p",
                "right password",
                "-i",
                &p(&input),
                "-u",
                &p(&public),
                "-r",
                &p(&private),
            ],
        );
        tpm2(port, "tpm2_flushcontext", &["-t"]);
        let refused = unseal_copy(port, &primary, work, "da-bait", Some("wrong"), work)
            .expect_err("a wrong password");
        assert!(refused.contains("0x98E"), "{refused}");
    }
}

#[test]
fn a_state_dir_of_the_layout_before_sealing_modes_is_migrated_at_start() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    let secret = chosen_secret();
    legacy_state_dir(tpm.port, &files.state_dir, &secret, &work);
    assert_eq!(
        crate::harness::tpm2_tools::break_glass_unseal_legacy(tpm.port, &files.state_dir, &work),
        secret,
        "the old recipe opens the old layout"
    );

    let daemon = Daemon::start(&files).expect("a start on the old layout");
    assert_eq!(
        root_key_check(&daemon),
        check_value(&secret),
        "the migrated root key is the one sealed before"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("migrated the sealed root key to the noDA storage primary"),
        "the migration is logged: {log}"
    );
    assert!(log.contains(&check_value(&secret)), "{log}");
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-1-auto.priv", "root-1-auto.pub", "root.seal"],
        "root.pub and root.priv are gone"
    );
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["generation"], 1, "{record}");
    assert_eq!(record["primary"], "transient-noda", "{record}");
    assert_eq!(record["pcrs"], serde_json::json!([]), "{record}");
    assert_eq!(record["pin"], false, "{record}");
    let mode = |name: &str| {
        fs::metadata(files.state_file(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for name in ["root.seal", "root-1-auto.pub", "root-1-auto.priv"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }

    // The new copy is a child of the noDA primary, and of it only.
    let noda = noda_primary(tpm.port, &work);
    let unsealed = unseal_copy(
        tpm.port,
        &noda,
        &files.state_dir,
        "root-1-auto",
        None,
        &work,
    )
    .expect("the new copy loads and unseals under the noDA primary");
    assert_eq!(unsealed, secret);
    let legacy = legacy_primary(tpm.port, &work);
    unseal_copy(
        tpm.port,
        &legacy,
        &files.state_dir,
        "root-1-auto",
        None,
        &work,
    )
    .expect_err("the new copy is not a child of the old primary");

    // A restart unseals without migrating again.
    let blobs = root_key_files(&files.state_dir);
    let daemon = Daemon::start(&files).expect("restart");
    assert_eq!(root_key_check(&daemon), check_value(&secret));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("unsealed root key"), "{log}");
    assert!(!log.contains("migrated"), "{log}");
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing rewritten");
}

#[test]
fn a_tpm_in_lockout_stops_the_migration_and_changes_nothing_until_cleared() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    let secret = chosen_secret();
    legacy_state_dir(tpm.port, &files.state_dir, &secret, &work);
    da_setup(tpm.port, 1, 1000);
    lock_out(tpm.port, &work);
    let before = root_key_files(&files.state_dir);

    let log = Daemon::start(&files)
        .err()
        .expect("the old primary is refused in lockout");
    assert!(log.contains("locked out"), "{log}");
    assert!(
        log.contains("tpm2_dictionarylockout --clear-lockout"),
        "{log}"
    );
    assert!(log.contains("the blobs are not at fault"), "{log}");
    assert!(log.contains("root.pub"), "names the old blobs: {log}");
    assert_eq!(root_key_files(&files.state_dir), before, "nothing changed");

    crate::harness::tpm2_tools::tpm2(tpm.port, "tpm2_dictionarylockout", &["--clear-lockout"]);
    let daemon = Daemon::start(&files).expect("migrates once the lockout is cleared");
    assert_eq!(root_key_check(&daemon), check_value(&secret));
    assert!(daemon.log().contains("migrated the sealed root key"));
}

#[test]
fn pcr_mode_unseals_while_the_pcr_is_unchanged_and_refuses_after_an_extend() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new().root_key(&[PCR], false);
    let files = DaemonFiles::new(&tpm.tcti(), &config);
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    // A value other than the reset one, so "sealed" is not all zeros.
    pcr_extend(tpm.port, PCR, &[0x11; 32]);
    let sealed_value = pcr_read(tpm.port, PCR);

    let daemon = Daemon::start(&files).expect("first start in PCR mode");
    let check = root_key_check(&daemon);
    let context = EncryptionContext::new();
    let mut client = daemon.client();
    client.create_key("bound").expect("create");
    let wrapped = client.wrap("bound", b"kept", &context).expect("wrap");
    drop(client);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("created root key and sealed it to the TPM (PCR 16)"),
        "{log}"
    );
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-1-auto.priv", "root-1-auto.pub", "root.seal"],
        "no PIN copy in PCR-only mode"
    );
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["pcrs"], serde_json::json!([PCR]), "{record}");
    assert_eq!(record["pin"], false, "{record}");
    assert_eq!(
        record["pcr_values"],
        serde_json::json!([{"pcr": PCR, "sha256": hex(&sealed_value)}]),
        "the record shows the PCR's value at sealing"
    );

    // Break-glass with the PCR policy gets the same key; without it, no.
    let recovered = break_glass_unseal(tpm.port, &files.state_dir, &work);
    assert_eq!(check_value(&recovered), check);
    let noda = noda_primary(tpm.port, &work);
    unseal_copy(
        tpm.port,
        &noda,
        &files.state_dir,
        "root-1-auto",
        None,
        &work,
    )
    .expect_err("a PCR-bound copy does not open with a password");

    let daemon = Daemon::start(&files).expect("a restart with the PCR unchanged");
    assert_eq!(root_key_check(&daemon), check);
    let unwrapped = daemon
        .client()
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("unsealed root key (sealed to PCR 16)"),
        "{log}"
    );

    // The boot state changes: no copy opens, and the daemon says why.
    let blobs = root_key_files(&files.state_dir);
    pcr_extend(tpm.port, PCR, &[0x22; 32]);
    let changed_value = pcr_read(tpm.port, PCR);
    assert_ne!(changed_value, sealed_value);
    let log = Daemon::start(&files)
        .err()
        .expect("PCR-only mode cannot start after the PCR changed");
    assert!(log.contains("PCR 16"), "names the PCR: {log}");
    assert!(
        log.contains(&hex(&sealed_value)) && log.contains(&hex(&changed_value)),
        "shows the sealed and the current value: {log}"
    );
    assert!(log.contains("blobs are intact"), "{log}");
    assert!(!log.contains("another TPM"), "not blamed on the TPM: {log}");
    assert!(!log.contains("created root key"), "{log}");
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing changed");

    // The boot state it was sealed under comes back: so does the key.
    pcr_reset(tpm.port, PCR);
    pcr_extend(tpm.port, PCR, &[0x11; 32]);
    assert_eq!(pcr_read(tpm.port, PCR), sealed_value);
    let daemon = Daemon::start(&files).expect("the same boot state again");
    assert_eq!(root_key_check(&daemon), check);
}

#[test]
fn the_root_key_never_crosses_the_tpm_interface_in_clear_in_pcr_mode() {
    let tpm = Swtpm::start();
    let relay = RecordingRelay::start(&tpm);
    let files = DaemonFiles::new(&relay.tcti(), &DaemonConfig::new().root_key(&[PCR], false));
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    let daemon = Daemon::start(&files).expect("create through the relay");
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("unseal through the relay");
    let check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());
    let key = break_glass_unseal(tpm.port, &files.state_dir, &work);
    assert_eq!(check_value(&key), check);
    let wire = relay.recorded();
    assert!(wire.len() > 1000, "the relay saw the daemon's traffic");
    for window in key.windows(8) {
        assert!(
            !contains(&wire, window),
            "8 bytes of the root key crossed the wire in clear"
        );
    }
}

#[test]
fn pin_mode_with_an_empty_state_dir_starts_locked_and_refuses_key_operations() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[], true));
    let daemon = Daemon::start(&files).expect("a locked daemon starts and answers Ping");
    let mut client = daemon.client();
    client.ping().expect("ping");
    let status = client.status().expect("status");
    assert!(!status.root_key_loaded, "{status:?}");
    assert_eq!(status.root_key_check, "", "{status:?}");
    let context = EncryptionContext::new();
    let refused = client
        .wrap("any", b"secret", &context)
        .expect_err("a locked daemon wraps nothing");
    assert_eq!(refused.code(), Some(LOCKED), "{refused}");
    assert!(refused.to_string().contains("hostkms unlock"), "{refused}");
    let refused = client.create_key("new").expect_err("nor creates keys");
    assert_eq!(refused.code(), Some(LOCKED), "{refused}");
    let refused = client.rotate_root().expect_err("nor rotates the root key");
    assert_eq!(refused.code(), Some(LOCKED), "{refused}");
    let refused = client.list_keys().expect_err("nor lists keys");
    assert_eq!(refused.code(), Some(LOCKED), "{refused}");
    drop(client);
    assert!(
        root_key_file_names(&files.state_dir).is_empty(),
        "no root key before the first unlock sets the PIN"
    );
    assert!(!files.state_file("keystore.db").exists());

    // The CLI shows the same.
    let out = cli(&daemon.socket, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&daemon.socket, &["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(stderr(&out).contains("hostkms unlock"), "{}", stderr(&out));

    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("hostkmsd is locked"), "{log}");
    assert!(log.contains("no root key yet"), "{log}");
}

/// A state dir with a key store and keys, in the mode `pcrs` and `pin`
/// as `hostkms reseal` would leave it (sealed here by tpm2-tools, from the
/// root key a plain-mode daemon made): its files, the root key, a
/// ciphertext of "kept" under key "kept"; the config asks for the mode.
struct Prepared {
    files: DaemonFiles,
    secret: Vec<u8>,
    wrapped: Vec<u8>,
    work: std::path::PathBuf,
}

fn prepared(tpm: &Swtpm, pcrs: &[u8], pin: Option<&[u8]>) -> Prepared {
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    let daemon = Daemon::start(&files).expect("a plain-mode start");
    let mut client = daemon.client();
    client.create_key("kept").expect("create");
    let wrapped = client
        .wrap("kept", b"kept", &EncryptionContext::new())
        .expect("wrap")
        .ciphertext
        .as_bytes()
        .to_vec();
    drop(client);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let secret = break_glass_unseal(tpm.port, &files.state_dir, &work);
    seal_state_dir(tpm.port, &files.state_dir, &secret, 2, pcrs, pin, &work);
    let config = DaemonConfig::new().root_key(pcrs, pin.is_some());
    files.write_config(&tpm.tcti(), &config);
    Prepared {
        files,
        secret,
        wrapped,
        work,
    }
}

/// Every key operation of a locked daemon is refused with [`LOCKED`], the
/// message saying to unlock (and `why`).
fn assert_refuses_key_operations(daemon: &Daemon, wrapped: &[u8], why: &str) {
    let mut client = daemon.client();
    let context = EncryptionContext::new();
    let refusals = [
        ("unwrap", client.unwrap(wrapped, &context, None).map(|_| ())),
        ("wrap", client.wrap("kept", b"x", &context).map(|_| ())),
        ("describe", client.describe_key("kept").map(|_| ())),
        ("create", client.create_key("new").map(|_| ())),
        ("rotate", client.rotate("kept").map(|_| ())),
        ("list", client.list_keys().map(|_| ())),
        ("rotate-root", client.rotate_root().map(|_| ())),
    ];
    for (op, result) in refusals {
        let error = result.expect_err(op);
        assert_eq!(error.code(), Some(LOCKED), "{op}: {error}");
        assert!(
            error.to_string().contains("hostkms unlock"),
            "{op}: {error}"
        );
        assert!(error.to_string().contains(why), "{op}: {error}");
    }
    client.ping().expect("a locked daemon answers Ping");
    let status = client.status().expect("and Status");
    assert!(!status.root_key_loaded, "{status:?}");
}

#[test]
fn pcr_and_pin_mode_unseals_by_itself_and_starts_locked_once_the_pcr_changed() {
    let tpm = Swtpm::start();
    pcr_extend(tpm.port, PCR, &[0x33; 32]);
    let sealed_value = pcr_read(tpm.port, PCR);
    let prepared = prepared(&tpm, &[PCR], Some(PIN));
    let files = &prepared.files;
    let check = check_value(&prepared.secret);

    let daemon = Daemon::start(files).expect("PCRs unchanged: unseals by itself");
    assert_eq!(root_key_check(&daemon), check);
    let unwrapped = daemon
        .client()
        .unwrap(&prepared.wrapped, &EncryptionContext::new(), None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("unsealed root key (sealed to PCR 16, or a PIN)"),
        "{log}"
    );
    assert!(
        !log.contains("[root_key] asks"),
        "config and record agree: {log}"
    );

    let blobs = root_key_files(&files.state_dir);
    pcr_extend(tpm.port, PCR, &[0x44; 32]);
    let changed_value = pcr_read(tpm.port, PCR);
    let daemon = Daemon::start(files).expect("a PCR mismatch with a PIN copy starts locked");
    assert_refuses_key_operations(&daemon, &prepared.wrapped, "PCR 16");
    // The refusal names the PCR and points at `hostkms status`, which
    // shows both values.
    let refused = daemon
        .client()
        .describe_key("kept")
        .expect_err("locked")
        .to_string();
    assert!(refused.contains("hostkms status"), "{refused}");
    let sealing = sealing_status(&daemon.socket);
    assert_eq!(sealing["lock"], "pcr_mismatch", "{sealing}");
    assert_eq!(sealing["changed_pcrs"][0]["pcr"], PCR, "{sealing}");
    assert_eq!(sealing["changed_pcrs"][0]["sealed"], hex(&sealed_value));
    assert_eq!(sealing["changed_pcrs"][0]["current"], hex(&changed_value));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("hostkmsd is locked"), "{log}");
    assert!(log.contains("PCR 16"), "{log}");
    assert!(
        log.contains(&hex(&sealed_value)) && log.contains(&hex(&changed_value)),
        "{log}"
    );
    assert!(!log.contains("another TPM"), "{log}");
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing changed");

    // The PIN copy opens with tpm2-tools under the noDA primary (break-glass).
    let noda = noda_primary(tpm.port, &prepared.work);
    let pin = std::str::from_utf8(PIN).unwrap();
    let unsealed = unseal_copy(
        tpm.port,
        &noda,
        &files.state_dir,
        "root-2-pin",
        Some(pin),
        &prepared.work,
    )
    .expect("the PIN copy unseals with the PIN");
    assert_eq!(unsealed, prepared.secret);
}

#[test]
fn pin_only_mode_starts_locked_and_offline_tasks_need_the_pin_file() {
    let tpm = Swtpm::start();
    let prepared = prepared(&tpm, &[], Some(PIN));
    let files = &prepared.files;
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-2-pin.priv", "root-2-pin.pub", "root.seal"],
        "PIN-only: no auto copy"
    );
    let daemon = Daemon::start(files).expect("PIN-only mode starts locked");
    assert_refuses_key_operations(&daemon, &prepared.wrapped, "PIN");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("hostkmsd is locked"), "{log}");

    // Offline, the PIN comes from --pin-file.
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let wrong = pin_file(pins.path(), "wrong", OTHER_PIN);
    let without = offline(files, None, "accept-rollback");
    assert!(!without.status.success(), "{}", stderr(&without));
    assert!(
        stderr(&without).contains("sealed to a PIN") && stderr(&without).contains("--pin-file"),
        "says to give the PIN: {}",
        stderr(&without)
    );
    let before = in_lockout(tpm.port).1;
    let refused = offline(files, Some(&wrong), "accept-rollback");
    assert!(!refused.status.success(), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("refused the PIN") && stderr(&refused).contains("left"),
        "a wrong PIN reports the tries left: {}",
        stderr(&refused)
    );
    assert_eq!(in_lockout(tpm.port).1, before + 1, "the TPM counted it");
    let accepted = offline(files, Some(&right), "accept-rollback");
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    for output in [&without, &refused, &accepted] {
        for pin in [PIN, OTHER_PIN] {
            assert!(
                !contains(&output.stdout, pin) && !contains(&output.stderr, pin),
                "a PIN in the output: {}",
                stderr(output)
            );
        }
    }

    // A PIN for a mode without one is refused, not ignored.
    let plain = prepared_plain(&tpm);
    let refused = offline(&plain, Some(&right), "accept-rollback");
    assert!(!refused.status.success(), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("no PIN is set"),
        "{}",
        stderr(&refused)
    );
}

/// A plain-mode state dir with a key store, its daemon stopped.
fn prepared_plain(tpm: &Swtpm) -> DaemonFiles {
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    assert!(daemon.stop().0.success());
    files
}

/// Runs `hostkmsd [--pin-file F] TASK --config C`.
fn offline(files: &DaemonFiles, pin_file: Option<&Path>, task: &str) -> std::process::Output {
    let mut command = std::process::Command::new(crate::harness::HOSTKMSD);
    if let Some(pin_file) = pin_file {
        command.arg("--pin-file").arg(pin_file);
    }
    command
        .arg(task)
        .arg("--config")
        .arg(&files.config)
        .env("HOSTKMS_LOG", "info")
        .env("HOSTKMS_LOG_TARGET", "stderr");
    crate::harness::process::output_feeding(command, b"", "hostkmsd offline task")
}

/// Writes `pin` to a private file for `--pin-file`, with the trailing
/// newline an editor adds.
fn pin_file(dir: &Path, name: &str, pin: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = pin.to_vec();
    bytes.push(b'\n');
    fs::write(&path, bytes).expect("pin file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

// `hostkms unlock`, `reseal` and `change-pin` (protocol version 6).

/// `hostkms --json ARGS...` against `socket`; the output, and its JSON
/// when it succeeded.
fn cli_json(socket: &Path, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = cli(socket, &all);
    let json = if out.status.success() {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out.stdout)))
    } else {
        serde_json::Value::Null
    };
    (out, json)
}

/// `hostkms --json unlock --pin-file F [--reseal]`, which must succeed;
/// its JSON answer.
fn unlock(socket: &Path, pin_file: &Path, reseal: bool) -> serde_json::Value {
    let pin_file = pin_file.to_str().expect("UTF-8 path");
    let mut args = vec!["unlock", "--pin-file", pin_file];
    if reseal {
        args.push("--reseal");
    }
    let (out, json) = cli_json(socket, &args);
    assert!(out.status.success(), "unlock: {}", stderr(&out));
    json
}

/// `hostkms unlock --pin-file F`, which must fail; its stderr.
fn unlock_refused(socket: &Path, pin_file: &Path) -> String {
    let out = cli(
        socket,
        &[
            "unlock",
            "--pin-file",
            pin_file.to_str().expect("UTF-8 path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    stderr(&out)
}

/// `hostkms change-pin` from the PIN in file `pin` to the one in `new_pin`.
fn change_pin(socket: &Path, pin: &Path, new_pin: &Path) -> std::process::Output {
    let (pin, new_pin) = (pin.display().to_string(), new_pin.display().to_string());
    cli(
        socket,
        &["change-pin", "--pin-file", &pin, "--new-pin-file", &new_pin],
    )
}

/// The `sealing` part of `hostkms --json status`.
fn sealing_status(socket: &Path) -> serde_json::Value {
    let (out, json) = cli_json(socket, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json["sealing"].clone()
}

#[test]
fn the_first_unlock_sets_the_pin_and_later_starts_need_it() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();

    let daemon = Daemon::start(&files).expect("starts locked");
    assert_eq!(sealing_status(&daemon.socket)["lock"], "no_root_key_yet");
    let unlocked = unlock(&daemon.socket, &right, false);
    let check = unlocked["root_key_check"]
        .as_str()
        .expect("check")
        .to_string();
    assert_eq!(root_key_check(&daemon), check);
    assert_eq!(sealing_status(&daemon.socket)["lock"], "unlocked");
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-1-pin.priv", "root-1-pin.pub", "root.seal"],
        "PIN-only: one PIN copy"
    );
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["pin"], true, "{record}");
    for name in ["root.seal", "root-1-pin.pub", "root-1-pin.priv"] {
        let mode = fs::metadata(files.state_file(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let context = EncryptionContext::new();
    let mut client = daemon.client();
    client.create_key("k").expect("create once unlocked");
    let wrapped = client.wrap("k", b"kept", &context).expect("wrap");
    drop(client);
    assert!(daemon.stop().0.success());

    // Break-glass: tpm2_unseal -p PIN under the noDA primary.
    let noda = noda_primary(tpm.port, &work);
    let pin = std::str::from_utf8(PIN).unwrap();
    let key = unseal_copy(
        tpm.port,
        &noda,
        &files.state_dir,
        "root-1-pin",
        Some(pin),
        &work,
    )
    .expect("the PIN copy unseals with the PIN");
    assert_eq!(check_value(&key), check);

    let daemon = Daemon::start(&files).expect("starts locked again");
    assert_eq!(sealing_status(&daemon.socket)["lock"], "pin_required");
    assert_refuses_key_operations(&daemon, wrapped.ciphertext.as_bytes(), "PIN");
    let unlocked = unlock(&daemon.socket, &right, false);
    assert_eq!(unlocked["root_key_check"], check.as_str());
    let unwrapped = daemon
        .client()
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap after the unlock");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
    // Unlocking an unlocked daemon changes nothing.
    let again = cli(
        &daemon.socket,
        &["unlock", "--pin-file", right.to_str().unwrap()],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("not locked"), "{}", stderr(&again));
}

#[test]
fn only_admins_may_unlock_reseal_or_change_the_pin_whatever_they_are_granted() {
    let tpm = Swtpm::start();
    let config = DaemonConfig::new()
        .socket_mode("0666")
        .root_key(&[], true)
        .grant(
            crate::harness::Grant::to_uid(65534)
                .keys(&["*"])
                .ops(&["create", "wrap", "unwrap", "describe"]),
        );
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).expect("starts locked");
    let mut pin = PIN.to_vec();
    pin.push(b'\n');
    let out = crate::harness::cli_as(65534, &files.socket, &["unlock", "--pin-file", "-"], &pin);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(stderr(&out).contains("only admins"), "{}", stderr(&out));
    assert!(
        root_key_file_names(&files.state_dir).is_empty(),
        "no PIN was set by a non-admin"
    );
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    unlock(&daemon.socket, &right, false);
    let blobs = root_key_files(&files.state_dir);
    // The new PIN from a file the other user can read (only this test's).
    let shared = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let new_pin = shared.path().join("new-pin");
    fs::write(&new_pin, b"Nn5%pL3&qZ7c\n").expect("new pin");
    fs::set_permissions(&new_pin, fs::Permissions::from_mode(0o644)).expect("chmod");
    let new_pin = new_pin.to_str().expect("UTF-8 path");
    for args in [
        &["reseal", "--pin-file", "-"][..],
        &["change-pin", "--pin-file", "-", "--new-pin-file", new_pin][..],
    ] {
        let out = crate::harness::cli_as(65534, &files.socket, args, &pin);
        assert!(!out.status.success(), "{args:?}: {}", text(&out.stdout));
        assert!(
            stderr(&out).contains("only admins"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing changed");
    assert!(
        !contains(daemon.log().as_bytes(), PIN),
        "the PIN in the log"
    );
}

#[test]
fn after_a_pcr_change_unlock_reseal_makes_the_next_start_unseal_by_itself() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[PCR], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);

    let daemon = Daemon::start(&files).expect("starts locked");
    let check = unlock(&daemon.socket, &right, false)["root_key_check"]
        .as_str()
        .expect("check")
        .to_string();
    assert_eq!(
        root_key_file_names(&files.state_dir),
        [
            "root-1-auto.priv",
            "root-1-auto.pub",
            "root-1-pin.priv",
            "root-1-pin.pub",
            "root.seal"
        ]
    );
    let sealed_value = pcr_read(tpm.port, PCR);
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("PCR unchanged");
    assert_eq!(root_key_check(&daemon), check, "unsealed by itself");
    assert!(daemon.stop().0.success());

    // A "firmware update".
    pcr_extend(tpm.port, PCR, &[0x55; 32]);
    let current = pcr_read(tpm.port, PCR);
    let daemon = Daemon::start(&files).expect("starts locked");
    let sealing = sealing_status(&daemon.socket);
    assert_eq!(sealing["lock"], "pcr_mismatch", "{sealing}");
    assert_eq!(sealing["changed_pcrs"][0]["pcr"], PCR, "{sealing}");
    assert_eq!(sealing["changed_pcrs"][0]["sealed"], hex(&sealed_value));
    assert_eq!(sealing["changed_pcrs"][0]["current"], hex(&current));

    // Without --reseal: this boot only.
    let unlocked = unlock(&daemon.socket, &right, false);
    assert_eq!(unlocked["root_key_check"], check.as_str());
    assert_eq!(unlocked["resealed"], false, "{unlocked}");
    assert_eq!(unlocked["changed_pcrs"][0]["pcr"], PCR, "{unlocked}");
    let blobs = root_key_files(&files.state_dir);
    assert!(daemon.stop().0.success());
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing resealed");
    let daemon = Daemon::start(&files).expect("still locked");
    assert_eq!(sealing_status(&daemon.socket)["lock"], "pcr_mismatch");

    // With --reseal: the PCR copy trusts this boot state from now on.
    let unlocked = unlock(&daemon.socket, &right, true);
    assert_eq!(unlocked["resealed"], true, "{unlocked}");
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["generation"], 2, "{record}");
    assert_eq!(record["pcr_values"][0]["sha256"], hex(&current), "{record}");
    assert_eq!(
        root_key_file_names(&files.state_dir),
        [
            "root-2-auto.priv",
            "root-2-auto.pub",
            "root-2-pin.priv",
            "root-2-pin.pub",
            "root.seal"
        ]
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let daemon = Daemon::start(&files).expect("unseals by itself again");
    assert_eq!(root_key_check(&daemon), check);
    assert_eq!(sealing_status(&daemon.socket)["lock"], "unlocked");
}

#[test]
fn wrong_pins_report_the_tries_left_then_lockout_which_spares_the_pcr_copy() {
    let tpm = Swtpm::start();
    da_setup(tpm.port, 3, 1000);
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[PCR], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let wrong = pin_file(pins.path(), "wrong", OTHER_PIN);
    let daemon = Daemon::start(&files).expect("starts locked");
    let check = unlock(&daemon.socket, &right, false)["root_key_check"]
        .as_str()
        .expect("check")
        .to_string();
    assert!(daemon.stop().0.success());
    pcr_extend(tpm.port, PCR, &[0x66; 32]);
    let daemon = Daemon::start(&files).expect("starts locked");

    let refused = unlock_refused(&daemon.socket, &wrong);
    assert!(refused.contains("2 tries left"), "{refused}");
    let refused = unlock_refused(&daemon.socket, &wrong);
    assert!(refused.contains("1 try left"), "{refused}");
    let refused = unlock_refused(&daemon.socket, &wrong);
    assert!(refused.contains("lockout"), "{refused}");
    assert!(
        refused.contains("1000 s"),
        "the upper bound on the wait: {refused}"
    );
    assert!(in_lockout(tpm.port).0);
    // In lockout the TPM refuses the right PIN too.
    let refused = unlock_refused(&daemon.socket, &right);
    assert!(refused.contains("lockout"), "{refused}");
    assert_eq!(sealing_status(&daemon.socket)["locked"], true);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    for pin in [PIN, OTHER_PIN] {
        assert!(!contains(log.as_bytes(), pin), "a PIN in the log");
    }
    // Every attempt is audited, with the tries left.
    let attempts: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("unlock with the PIN by uid 0"))
        .collect();
    assert_eq!(attempts.len(), 4, "{log}");
    for (attempt, tries) in attempts.iter().zip([2, 1, 0, 0]) {
        assert!(
            attempt.contains(&format!("HOSTKMS_PIN_TRIES_LEFT={tries} ")),
            "{attempt}"
        );
    }

    // The boot state is back: the noDA PCR copy unseals in lockout.
    pcr_reset(tpm.port, PCR);
    let daemon = Daemon::start(&files).expect("the PCR copy unseals in lockout");
    assert_eq!(root_key_check(&daemon), check);
    assert!(in_lockout(tpm.port).0, "still in lockout");
}

#[test]
fn the_pin_never_crosses_the_tpm_interface_nor_shows_in_logs_or_errors() {
    let tpm = Swtpm::start();
    let relay = RecordingRelay::start(&tpm);
    let files = DaemonFiles::new(&relay.tcti(), &DaemonConfig::new().root_key(&[], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let wrong = pin_file(pins.path(), "wrong", OTHER_PIN);

    let daemon = Daemon::start(&files).expect("starts locked");
    unlock(&daemon.socket, &right, false); // sets the PIN: TPM2_Create
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("starts locked");
    let mut outputs = vec![unlock_refused(&daemon.socket, &wrong)];
    unlock(&daemon.socket, &right, false); // TPM2_Unseal with the PIN
    let changed = change_pin(&daemon.socket, &right, &wrong);
    assert!(changed.status.success(), "{}", stderr(&changed));
    outputs.push(stderr(&changed));
    outputs.push(text(&changed.stdout));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    outputs.push(log);

    let wire = relay.recorded();
    assert!(wire.len() > 1000, "the relay saw the daemon's traffic");
    for pin in [PIN, OTHER_PIN] {
        assert!(
            !contains(&wire, pin),
            "a PIN crossed the TPM interface in clear"
        );
        for output in &outputs {
            assert!(!contains(output.as_bytes(), pin), "a PIN shown: {output}");
        }
    }
    // Control: the relay saw the daemon load the PIN copy (the command
    // whose authorization is the PIN).
    let generation = seal_record(&files.state_dir, "root.seal")["generation"]
        .as_u64()
        .expect("generation");
    let public = fs::read(files.state_file(&format!("root-{generation}-pin.pub"))).expect("pub");
    assert!(
        contains(&wire, &public),
        "the relay recorded the PIN copy's Load"
    );
}

#[test]
fn reseal_applies_the_configs_mode_and_change_pin_replaces_the_pin() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let pins = crate::harness::private_tempdir();
    let first = pin_file(pins.path(), "first", PIN);
    let second = pin_file(pins.path(), "second", OTHER_PIN);
    let daemon = Daemon::start(&files).expect("plain mode");
    let check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());

    // The config asks for PCR 16 and a PIN: logged, applied by reseal.
    let config = DaemonConfig::new().root_key(&[PCR], true);
    files.write_config(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).expect("the record is in force");
    assert!(daemon.log().contains("[root_key] asks"), "{}", daemon.log());
    let blobs = root_key_files(&files.state_dir);
    let (out, dry) = cli_json(&daemon.socket, &["reseal", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["after"]["pcrs"], serde_json::json!([PCR]), "{dry}");
    assert_eq!(
        root_key_files(&files.state_dir),
        blobs,
        "a dry run changes nothing"
    );
    let out = cli(&daemon.socket, &["reseal"]);
    assert!(!out.status.success(), "a PIN turned on needs the new PIN");
    assert!(stderr(&out).contains("PIN"), "{}", stderr(&out));
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing changed");
    let (out, resealed) = cli_json(
        &daemon.socket,
        &["reseal", "--new-pin-file", first.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(resealed["after"]["pin"], true, "{resealed}");
    assert_eq!(
        root_key_file_names(&files.state_dir),
        [
            "root-2-auto.priv",
            "root-2-auto.pub",
            "root-2-pin.priv",
            "root-2-pin.pub",
            "root.seal"
        ]
    );
    assert_eq!(root_key_check(&daemon), check, "the same root key");

    // change-pin: the old PIN is refused from then on, the new one opens.
    let wrong_current = change_pin(&daemon.socket, &second, &first);
    assert_eq!(wrong_current.status.code(), Some(1));
    assert!(stderr(&wrong_current).contains("refused the PIN"));
    let changed = change_pin(&daemon.socket, &first, &second);
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert!(daemon.stop().0.success());
    pcr_extend(tpm.port, PCR, &[0x77; 32]);
    let daemon = Daemon::start(&files).expect("starts locked");
    assert!(unlock_refused(&daemon.socket, &first).contains("refused the PIN"));
    assert_eq!(
        unlock(&daemon.socket, &second, true)["root_key_check"],
        check.as_str()
    );

    // Back to plain with --pcrs none and a config without a PIN.
    files.write_config(&tpm.tcti(), &DaemonConfig::new());
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("resealed to the current PCRs");
    let out = cli(
        &daemon.socket,
        &[
            "reseal",
            "--pcrs",
            "none",
            "--pin-file",
            second.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["pcrs"], serde_json::json!([]), "{record}");
    assert_eq!(record["pin"], false, "{record}");
    pcr_extend(tpm.port, PCR, &[0x88; 32]);
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("plain again: no PCR, no PIN");
    assert_eq!(root_key_check(&daemon), check);
}

#[test]
fn rotate_root_in_pin_mode_needs_the_pin_and_seals_the_new_key_to_it() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let wrong = pin_file(pins.path(), "wrong", OTHER_PIN);
    let daemon = Daemon::start(&files).expect("starts locked");
    let old = unlock(&daemon.socket, &right, false)["root_key_check"]
        .as_str()
        .expect("check")
        .to_string();
    let context = EncryptionContext::new();
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    let wrapped = client.wrap("k", b"kept", &context).expect("wrap");
    drop(client);
    let blobs = root_key_files(&files.state_dir);

    let out = cli(&daemon.socket, &["rotate-root"]);
    assert!(!out.status.success(), "without the PIN");
    assert!(stderr(&out).contains("PIN"), "{}", stderr(&out));
    let out = cli(
        &daemon.socket,
        &["rotate-root", "--pin-file", wrong.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "with a wrong PIN");
    assert!(stderr(&out).contains("refused the PIN"), "{}", stderr(&out));
    assert_eq!(root_key_files(&files.state_dir), blobs, "nothing changed");
    assert_eq!(root_key_check(&daemon), old);

    let (out, rotation) = cli_json(
        &daemon.socket,
        &["rotate-root", "--pin-file", right.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let new = rotation["new_check"]
        .as_str()
        .expect("new check")
        .to_string();
    assert_ne!(new, old);
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-2-pin.priv", "root-2-pin.pub", "root.seal"]
    );
    assert!(daemon.stop().0.success());
    let daemon = Daemon::start(&files).expect("starts locked");
    assert_eq!(
        unlock(&daemon.socket, &right, false)["root_key_check"],
        new.as_str()
    );
    let unwrapped = daemon
        .client()
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap under the new root key");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
}

#[test]
fn a_reseal_during_a_rotation_never_loses_the_root_key() {
    // Reseal and RotateRoot both seal a next generation; run together they
    // must not interleave (one waits or is told Busy), and whatever the
    // order, a restart unseals the key the store records.
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    let mut client = daemon.client();
    client.create_key("k").expect("create");
    let context = EncryptionContext::new();
    let wrapped = client.wrap("k", b"kept", &context).expect("wrap");
    drop(client);
    for round in 0..5 {
        // The TPM paused: both requests queue up behind it.
        tpm.pause();
        let socket = daemon.socket.clone();
        let rotation = std::thread::spawn(move || {
            let mut client = agent_proto::Client::connect(&socket).expect("connect");
            client
                .set_timeout(Some(std::time::Duration::from_secs(60)))
                .expect("timeout");
            client.rotate_root()
        });
        std::thread::sleep(std::time::Duration::from_millis(300 + 100 * round));
        let socket = daemon.socket.clone();
        let reseal = std::thread::spawn(move || cli(&socket, &["reseal"]));
        std::thread::sleep(std::time::Duration::from_millis(300));
        tpm.resume();
        let _ = rotation.join().expect("rotation thread");
        let _ = reseal.join().expect("reseal thread");
    }
    let expected = root_key_check(&daemon);
    let (status, before) = daemon.stop();
    assert!(status.success(), "{before}");
    let daemon = Daemon::start(&files).unwrap_or_else(|refused| {
        panic!("a restart after rotations and reseals: {refused}\nthe run before: {before}")
    });
    assert_eq!(root_key_check(&daemon), expected);
    let unwrapped = daemon
        .client()
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"kept");
}

#[test]
fn the_journal_holds_the_lock_and_every_pin_attempt_but_never_the_pin() {
    use crate::harness::{ensure_journald, field, journal_export_of, journal_of_stopped, with_id};
    const DAEMON_LOCKED: &str = "eb043bc953384ab2aff654d8d03e5ba9";
    const ROOT_KEY_UNLOCK: &str = "dab12fd4462e41349a815e8d0b3a2d7c";
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let wrong = pin_file(pins.path(), "wrong", OTHER_PIN);
    let journal_env = [("HOSTKMS_LOG_TARGET", "journal")];
    let daemon = Daemon::start_with_env(&files, &[], &journal_env).expect("starts locked");
    unlock(&daemon.socket, &right, false);
    assert!(daemon.stop().0.success());

    let daemon = Daemon::start_with_env(&files, &[], &journal_env).expect("starts locked");
    let journal = daemon.journal_scope();
    unlock_refused(&daemon.socket, &wrong);
    unlock(&daemon.socket, &right, false);
    assert!(daemon.stop().0.success());

    let entries = journal_of_stopped(&journal);
    let locked = with_id(&entries, DAEMON_LOCKED);
    assert_eq!(locked.len(), 1, "{entries:#?}");
    assert_eq!(field(locked[0], "PRIORITY"), Some("4"), "a warning");
    let attempts = with_id(&entries, ROOT_KEY_UNLOCK);
    assert_eq!(attempts.len(), 2, "{entries:#?}");
    assert_eq!(field(attempts[0], "HOSTKMS_RESULT"), Some("wrong-pin"));
    assert!(field(attempts[0], "HOSTKMS_PIN_TRIES_LEFT").is_some());
    assert_eq!(field(attempts[0], "HOSTKMS_PEER_UID"), Some("0"));
    assert_eq!(field(attempts[1], "HOSTKMS_RESULT"), Some("unlocked"));
    let export = journal_export_of(&journal);
    assert!(contains(&export, ROOT_KEY_UNLOCK.as_bytes()));
    for pin in [PIN, OTHER_PIN] {
        assert!(!contains(&export, pin), "a PIN reached the journal");
    }
}

#[test]
fn a_migration_interrupted_after_its_commit_leaves_no_old_blob_behind() {
    // migrate() writes root.seal (the commit), then removes root.pub,
    // root.priv and an interrupted rotation's root-next.*: a crash in
    // between leaves those beside the new layout. The next start must
    // finish the removal, and nothing may stay refused because of them.
    use crate::sealing_modes::tools::legacy_seal;
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    let secret = chosen_secret();
    legacy_state_dir(tpm.port, &files.state_dir, &secret, &work);
    let legacy = work.join("legacy");
    fs::create_dir(&legacy).unwrap();
    for name in ["root.pub", "root.priv"] {
        fs::copy(files.state_file(name), legacy.join(name)).unwrap();
    }
    let other: Vec<u8> = chosen_secret().iter().map(|b| b ^ 0xff).collect();
    legacy_seal(
        tpm.port,
        &other,
        &legacy.join("root-next.pub"),
        &legacy.join("root-next.priv"),
        &work,
    );
    let daemon = Daemon::start(&files).expect("migrating start");
    daemon.client().create_key("k").expect("create");
    assert!(daemon.stop().0.success());
    // The crash: the old blobs back beside root.seal.
    for name in ["root.pub", "root.priv", "root-next.pub", "root-next.priv"] {
        fs::copy(legacy.join(name), files.state_file(name)).unwrap();
        fs::set_permissions(files.state_file(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let daemon = Daemon::start(&files).expect("a start after the interrupted migration");
    assert_eq!(root_key_check(&daemon), check_value(&secret));
    let rotation = daemon.client().rotate_root();
    assert!(rotation.is_ok(), "rotate-root refused: {rotation:?}");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        root_key_file_names(&files.state_dir),
        ["root-2-auto.priv", "root-2-auto.pub", "root.seal"],
        "the old layout's blobs are gone: {log}"
    );
}

/// Makes an SRK at 0x81000001 from `-G algorithm` with the noDA
/// attributes, as a provisioning tool would (TCG guidance; systemd's
/// systemd-tpm2-setup, Windows).
fn provision_srk(port: u16, algorithm: &str, work: &Path) {
    use crate::harness::tpm2_tools::{NODA_PRIMARY_ATTRIBUTES, SRK_HANDLE, tpm2};
    let ctx = work.join("srk.ctx");
    let ctx = ctx.to_str().expect("UTF-8 path");
    tpm2(
        port,
        "tpm2_createprimary",
        &[
            "-Q",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            algorithm,
            "-a",
            NODA_PRIMARY_ATTRIBUTES,
            "-c",
            ctx,
        ],
    );
    tpm2(
        port,
        "tpm2_evictcontrol",
        &["-Q", "-C", "o", "-c", ctx, SRK_HANDLE],
    );
    tpm2(port, "tpm2_flushcontext", &["-t"]);
}

#[test]
fn a_daemon_seals_under_a_persistent_srk_when_the_tpm_has_one() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[PCR], false));
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    provision_srk(tpm.port, "rsa2048:aes128cfb", &work);
    let daemon = Daemon::start(&files).expect("start");
    let check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());
    let record = seal_record(&files.state_dir, "root.seal");
    assert_eq!(record["primary"], "persistent-srk", "{record}");
    assert_eq!(
        check_value(&break_glass_unseal(tpm.port, &files.state_dir, &work)),
        check
    );
    let daemon = Daemon::start(&files).expect("restart");
    assert_eq!(root_key_check(&daemon), check);
}

#[test]
fn an_srk_provisioned_after_sealing_does_not_lock_the_root_key_out() {
    // systemd-tpm2-setup (systemd 256 and later) makes an SRK at
    // 0x81000001 at boot; the copies sealed under the transient noDA
    // primary before must still open: root.seal says which primary.
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let work = files.root.path().join("tools");
    fs::create_dir(&work).unwrap();
    let daemon = Daemon::start(&files).expect("start");
    let check = root_key_check(&daemon);
    assert!(daemon.stop().0.success());
    assert_eq!(
        seal_record(&files.state_dir, "root.seal")["primary"],
        "transient-noda"
    );
    provision_srk(tpm.port, "rsa2048:aes128cfb", &work);
    let daemon = Daemon::start(&files)
        .unwrap_or_else(|log| panic!("the root key is sealed under the transient primary: {log}"));
    assert_eq!(root_key_check(&daemon), check);
}

#[test]
fn a_record_edited_to_other_pcr_values_is_never_sealed_in() {
    // root.seal has no integrity of its own. An attacker who edits the
    // recorded PCR value to one of its choosing, then waits for an admin's
    // PIN change (or rotation), must not get the new PCR copy bound to it:
    // that would let the machine unseal in the attacker's boot state.
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new().root_key(&[PCR], true));
    let pins = crate::harness::private_tempdir();
    let right = pin_file(pins.path(), "right", PIN);
    let other = pin_file(pins.path(), "other", OTHER_PIN);
    let daemon = Daemon::start(&files).expect("starts locked");
    unlock(&daemon.socket, &right, false);
    let record_path = files.state_dir.join("root.seal");
    let honest = std::fs::read_to_string(&record_path).expect("record");
    let lie = honest.replace(&hex(&pcr_read(tpm.port, PCR)), &"ab".repeat(32));
    assert_ne!(lie, honest, "the record holds PCR 16's value");
    std::fs::write(&record_path, &lie).expect("edit the record");
    let copies = |dir: &Path| -> Vec<_> {
        root_key_files(dir)
            .into_iter()
            .filter(|(name, _)| name.as_str() != "root.seal")
            .collect()
    };
    let blobs = copies(&files.state_dir);
    let new_pin = other.display().to_string();
    let right_pin = right.display().to_string();
    for args in [
        vec![
            "change-pin",
            "--pin-file",
            &right_pin,
            "--new-pin-file",
            &new_pin,
        ],
        vec!["rotate-root", "--pin-file", &right_pin],
    ] {
        let output = cli(&daemon.socket, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} went through: {stderr}");
        assert!(
            stderr.contains("does not match the sealed copy"),
            "{args:?}: {stderr}"
        );
        assert_eq!(copies(&files.state_dir), blobs, "{args:?} sealed nothing");
    }
    // An edit to the plain mode (no PCRs, no PIN) is a lie too: a rotation
    // would seal the new key in a plain copy, which opens in any boot state.
    let no_pcrs = honest
        .replace("\"pin\": true", "\"pin\": false")
        .replace("\"pcrs\": [\n    16\n  ]", "\"pcrs\": []")
        .replace(
            &format!(
                "\"pcr_values\": [\n    {{\n      \"pcr\": 16,\n      \"sha256\": \"{}\"\n    }}\n  ]",
                hex(&pcr_read(tpm.port, PCR))
            ),
            "\"pcr_values\": []",
        );
    assert!(no_pcrs.contains("\"pcrs\": []"), "{no_pcrs}");
    std::fs::write(&record_path, &no_pcrs).expect("edit the record");
    // (The daemon still shows the PIN it unlocked with, so the CLI sends it.)
    let output = cli(&daemon.socket, &["rotate-root", "--pin-file", &right_pin]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not match the sealed copy"),
        "{stderr}"
    );
    assert_eq!(copies(&files.state_dir), blobs, "nothing sealed");
    // Put back, the PIN change goes through.
    std::fs::write(&record_path, &honest).expect("restore the record");
    let output = change_pin(&daemon.socket, &right, &other);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(daemon.stop().0.success());
}
