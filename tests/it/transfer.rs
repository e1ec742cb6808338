//! Keys moved between hosts (issue 10, item 4): two daemons, each with its
//! own swtpm, state dir and socket. A exports to B's transport key, which
//! root pinned in A's config; B imports a file from A, which root pinned
//! in B's. Everything else (another destination, another key, another uid,
//! another host's file, a changed byte, a planted file) is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use agent_proto::{ClientError, EncryptionContext, ErrorCode, KeyState, KeyType, VersionState};
use hostkms::envelope::KeyId;
use hostkms::keystore::{KeyMaterial, VersionMaterial};
use hostkms::recovery::record::{self, MacKey};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use zeroize::Zeroizing;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, cli, cli_as, ensure_journald, field,
    journal_of_stopped, ok, sqlite, stderr, text, with_id,
};

const NOBODY: u32 = 65534;

/// One host: its daemon, files and TPM (dropped in that order), and its
/// transport key as `hostkms transport-key` printed it.
struct Host {
    daemon: Daemon,
    files: DaemonFiles,
    tpm: Swtpm,
    recipient: String,
    fingerprint: String,
}

impl Host {
    fn start(config: DaemonConfig) -> Host {
        Host::start_with(config, false)
    }

    /// With `public`, a socket other uids can reach (mode 0666).
    fn start_with(config: DaemonConfig, public: bool) -> Host {
        Host::start_logging(config, public, "stderr")
    }

    /// Logging to `target` (`stderr` or `journal`).
    fn start_logging(config: DaemonConfig, public: bool, target: &str) -> Host {
        let tpm = Swtpm::start();
        let files = if public {
            DaemonFiles::with_public_socket(&tpm.tcti(), &config)
        } else {
            DaemonFiles::new(&tpm.tcti(), &config)
        };
        let daemon = Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", target)])
            .unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
        let printed = text(&ok(cli(&daemon.socket, &["transport-key"])));
        let line = |label: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(label))
                .unwrap_or_else(|| panic!("no {label} in {printed:?}"))
                .to_string()
        };
        let recipient = line("recipient: ");
        let fingerprint = line("fingerprint: ");
        assert!(recipient.starts_with("age1"), "{printed}");
        assert_eq!(fingerprint.len(), 16, "{printed}");
        Host {
            daemon,
            files,
            tpm,
            recipient,
            fingerprint,
        }
    }

    /// Puts `config` in force with a SIGHUP and waits for the reload.
    fn reconfigure(&self, config: DaemonConfig) {
        let before = self.daemon.log().matches("reloaded ").count();
        self.files.write_config(&self.tpm.tcti(), &config);
        kill(Pid::from_raw(self.daemon.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.daemon.log();
            assert!(!log.contains("reload failed"), "{log}");
            if log.matches("reloaded ").count() > before {
                return;
            }
            assert!(Instant::now() < deadline, "no reload:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        cli(&self.daemon.socket, args)
    }
}

/// A and B, each pinning the other for `keys`.
fn pair(keys: &[&str]) -> (Host, Host) {
    let (a, b) = (
        Host::start(DaemonConfig::new()),
        Host::start(DaemonConfig::new()),
    );
    a.reconfigure(DaemonConfig::new().transfer("b", &b.recipient, keys));
    b.reconfigure(DaemonConfig::new().transfer("a", &a.recipient, keys));
    (a, b)
}

fn export(from: &Host, key: &str, to: &str, out: &Path) -> Output {
    from.cli(&[
        "export",
        key,
        "--to",
        to,
        "--out",
        out.to_str().unwrap(),
        "--force",
    ])
}

fn import(into: &Host, file: &Path) -> Output {
    into.cli(&["import", file.to_str().unwrap()])
}

fn refused(output: &Output, expected: &str) -> String {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(expected),
        "expected {expected:?} in {message}"
    );
    message
}

fn daemon_refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Daemon { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn hex(id: [u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory for export files, and a path in it.
fn out_file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn a_key_exported_to_a_pinned_peer_unwraps_there_and_importing_again_changes_nothing() {
    let (a, b) = pair(&["app-db*"]);
    let json: serde_json::Value =
        serde_json::from_slice(&ok(b.cli(&["--json", "transport-key"]))).unwrap();
    assert_eq!(json["recipient"], b.recipient.as_str());
    assert_eq!(json["fingerprint"], b.fingerprint.as_str());
    let ctx = EncryptionContext::from([("table".to_string(), "users".to_string())]);
    let mut on_a = a.daemon.client();
    on_a.create_key("app-db").unwrap();
    let v1 = on_a
        .wrap("app-db", b"made with v1", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();
    on_a.rotate("app-db").unwrap();
    let v2 = on_a
        .wrap("app-db", b"made with v2", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();

    let dir = tempfile::tempdir().unwrap();
    let file = out_file(&dir, "app-db.export");
    let printed = text(&ok(a.cli(&[
        "export",
        "app-db",
        "--to",
        "b",
        "--out",
        file.to_str().unwrap(),
    ])));
    assert!(printed.contains("exported key app-db to b"), "{printed}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "an age file");
    assert!(
        !bytes.windows(6).any(|w| w == b"app-db"),
        "the key's name is not in clear"
    );

    ok(import(&b, &file));
    let mut on_b = b.daemon.client();
    assert_eq!(
        on_b.unwrap(&v1, &ctx, None).unwrap().plaintext.expose(),
        b"made with v1"
    );
    assert_eq!(
        on_b.unwrap(&v2, &ctx, None).unwrap().plaintext.expose(),
        b"made with v2"
    );
    // And back: B wraps under the same version 2, A unwraps.
    let from_b = on_b.wrap("app-db", b"made on B", &ctx).unwrap();
    assert_eq!(from_b.version, 2);
    assert_eq!(
        on_a.unwrap(from_b.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"made on B"
    );
    let described = on_b.describe_key("app-db").unwrap();
    assert_eq!(described.id, on_a.describe_key("app-db").unwrap().id);

    // The same file again: nothing changes.
    ok(import(&b, &file));
    let again = on_b.describe_key("app-db").unwrap();
    assert_eq!(again.latest_version, described.latest_version);
    assert_eq!(again.versions.len(), described.versions.len());

    // The CLI never replaces a file without --force.
    let again = a.cli(&[
        "export",
        "app-db",
        "--to",
        "b",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("give --force"),
        "{}",
        stderr(&again)
    );
    ok(export(&a, "app-db", "b", &file));
    // A symbolic link at FILE is an existing file without --force, and is
    // replaced, never followed, with it.
    let victim = out_file(&dir, "victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let link = out_file(&dir, "link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = a.cli(&[
        "export",
        "app-db",
        "--to",
        "b",
        "--out",
        link.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    ok(export(&a, "app-db", "b", &link));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());

    // Both sides audited, with the peer and its fingerprint.
    let log_a = a.daemon.log();
    assert!(
        log_a.contains("exported key app-db") && log_a.contains(&b.fingerprint),
        "{log_a}"
    );
    let log_b = b.daemon.log();
    assert!(
        log_b.contains("imported key app-db") && log_b.contains(&a.fingerprint),
        "{log_b}"
    );
}

#[test]
fn export_goes_only_to_a_pinned_destination_whose_globs_cover_the_key() {
    let (a, _b) = pair(&["app-db*"]);
    let mut on_a = a.daemon.client();
    on_a.create_key("app-db").unwrap();
    on_a.create_key("payroll").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = out_file(&dir, "f");
    // Root is an admin, and bound by the pin all the same.
    refused(
        &export(&a, "payroll", "b", &file),
        "transfer destination \"b\" is not pinned for key \"payroll\"",
    );
    refused(
        &export(&a, "app-db", "elsewhere", &file),
        "no transfer destination \"elsewhere\" is pinned",
    );
    assert!(!file.exists(), "nothing written on a refusal");
    // Unpinned by a reload: refused from then on.
    a.reconfigure(DaemonConfig::new());
    refused(
        &export(&a, "app-db", "b", &file),
        "no transfer destination \"b\"",
    );
    let (code, _) = daemon_refused(on_a.export_key("app-db", "b"));
    assert_eq!(code, ErrorCode::PermissionDenied);
}

#[test]
fn a_peer_without_the_grant_may_neither_export_nor_import() {
    let grant = Grant::to_uid(NOBODY)
        .keys(&["app-*"])
        .ops(&["wrap", "unwrap", "describe"]);
    let a = Host::start_with(
        DaemonConfig::new().socket_mode("0666").grant(grant.clone()),
        true,
    );
    let b = Host::start_with(
        DaemonConfig::new().socket_mode("0666").grant(grant.clone()),
        true,
    );
    a.reconfigure(
        DaemonConfig::new()
            .socket_mode("0666")
            .grant(grant.clone())
            .transfer("b", &b.recipient, &["app-*"]),
    );
    b.reconfigure(
        DaemonConfig::new()
            .socket_mode("0666")
            .grant(grant)
            .transfer("a", &a.recipient, &["app-*"]),
    );
    a.daemon.client().create_key("app-db").unwrap();
    // A path nobody may write (export checks --out before the daemon).
    let writable = tempfile::Builder::new()
        .prefix("hostkms-transfer-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(writable.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = writable.path().join("x");
    let out = cli_as(
        NOBODY,
        &a.daemon.socket,
        &[
            "export",
            "app-db",
            "--to",
            "b",
            "--out",
            target.to_str().unwrap(),
        ],
        b"",
    );
    refused(
        &out,
        &format!("uid {NOBODY} may not export with key \"app-db\""),
    );
    assert_eq!(
        std::fs::read_dir(writable.path()).unwrap().count(),
        0,
        "nothing written, no temporary file left"
    );
    // The file itself, made by root: nobody may not import it on B.
    let file = a.daemon.client().export_key("app-db", "b").unwrap().file;
    let dir = tempfile::Builder::new()
        .prefix("hostkms-transfer-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("app-db.export");
    std::fs::write(&path, &file).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli_as(
        NOBODY,
        &b.daemon.socket,
        &["import", path.to_str().unwrap()],
        b"",
    );
    refused(&out, &format!("uid {NOBODY} holds no grant to import keys"));
    assert!(b.daemon.client().describe_key("app-db").is_err());
}

#[test]
fn a_key_id_that_clashes_is_refused_and_a_version_revoked_here_never_comes_back() {
    let (a, b) = pair(&["app-*"]);
    let ctx = EncryptionContext::new();
    let (mut on_a, mut on_b) = (a.daemon.client(), b.daemon.client());
    let dir = tempfile::tempdir().unwrap();

    // The same name, two different keys: refused, naming both ids.
    let theirs = on_a.create_key("app-db").unwrap();
    let ours = on_b.create_key("app-db").unwrap();
    let file = out_file(&dir, "app-db");
    ok(export(&a, "app-db", "b", &file));
    let message = refused(&import(&b, &file), "different keys");
    assert!(message.contains(&hex(theirs.id)), "{message}");
    assert!(message.contains(&hex(ours.id)), "{message}");
    assert_eq!(on_b.describe_key("app-db").unwrap().id, ours.id);

    // The same key rotated apart on the two hosts: version 2 differs, and
    // the import is refused rather than either version overwritten.
    on_a.create_key("app-split").unwrap();
    let file = out_file(&dir, "app-split");
    ok(export(&a, "app-split", "b", &file));
    ok(import(&b, &file));
    on_a.rotate("app-split").unwrap();
    let on_b_v2 = on_b.rotate("app-split").unwrap();
    let b_v2 = on_b
        .wrap("app-split", b"B's v2", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();
    ok(export(&a, "app-split", "b", &file));
    refused(
        &import(&b, &file),
        "its version 2 holds different key material",
    );
    assert_eq!(
        on_b.describe_key("app-split").unwrap().latest_version,
        on_b_v2.latest_version
    );
    assert_eq!(
        on_b.unwrap(&b_v2, &ctx, None).unwrap().plaintext.expose(),
        b"B's v2"
    );

    // A version B revoked stays revoked when A sends its key again.
    on_a.create_key("app-x").unwrap();
    let v1 = on_a
        .wrap("app-x", b"v1", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();
    on_a.rotate("app-x").unwrap();
    let file = out_file(&dir, "app-x");
    ok(export(&a, "app-x", "b", &file));
    ok(import(&b, &file));
    assert_eq!(
        on_b.unwrap(&v1, &ctx, None).unwrap().plaintext.expose(),
        b"v1"
    );
    on_b.revoke("app-x", Some(1)).unwrap();
    on_a.rotate("app-x").unwrap();
    let v3 = on_a
        .wrap("app-x", b"v3", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();
    ok(export(&a, "app-x", "b", &file));
    ok(import(&b, &file));
    let (code, message) = daemon_refused(on_b.unwrap(&v1, &ctx, None));
    assert_eq!(code, ErrorCode::VersionRevoked, "{message}");
    assert_eq!(
        on_b.unwrap(&v3, &ctx, None).unwrap().plaintext.expose(),
        b"v3"
    );
    let described = on_b.describe_key("app-x").unwrap();
    assert_eq!(described.latest_version, 3);
    // Still after a restart of B: the tombstone is in its store.
    drop(on_b);
    let b = restart(b);
    let (code, _) = daemon_refused(b.daemon.client().unwrap(&v1, &ctx, None));
    assert_eq!(code, ErrorCode::VersionRevoked);
}

/// Stops `host`'s daemon and starts it again on the same files and TPM.
fn restart(host: Host) -> Host {
    let Host {
        daemon,
        files,
        tpm,
        recipient,
        fingerprint,
    } = host;
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("restart: {log}"));
    let printed = text(&ok(cli(&daemon.socket, &["transport-key"])));
    assert!(
        printed.contains(&recipient),
        "the transport key survives a restart: {printed}"
    );
    Host {
        daemon,
        files,
        tpm,
        recipient,
        fingerprint,
    }
}

#[test]
fn a_file_for_another_host_a_changed_byte_an_unpinned_source_or_a_planted_file_is_refused() {
    let (a, b) = pair(&["app-*"]);
    a.daemon.client().create_key("app-db").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = out_file(&dir, "app-db");
    ok(export(&a, "app-db", "b", &file));
    let bytes = std::fs::read(&file).unwrap();

    // Made for B: A itself cannot open it, and says whose key it has.
    let message = refused(
        &import(&a, &file),
        "not encrypted to this host's transport key",
    );
    assert!(message.contains(&a.fingerprint), "{message}");

    // One changed byte anywhere past the age header.
    let changed = out_file(&dir, "changed");
    for at in [bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        std::fs::write(&changed, &bad).unwrap();
        let out = import(&b, &changed);
        assert_eq!(out.status.code(), Some(1), "byte {at}: {}", stderr(&out));
    }
    std::fs::write(&changed, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(import(&b, &changed).status.code(), Some(1));

    // B no longer pins A: the file is refused, naming A's fingerprint.
    b.reconfigure(DaemonConfig::new());
    let message = refused(
        &import(&b, &file),
        "no [[transfer]] table of this host's config pins",
    );
    assert!(message.contains(&a.fingerprint), "{message}");
    b.reconfigure(DaemonConfig::new().transfer("a", &a.recipient, &["app-*"]));

    // Planted: whoever knows the two public transport keys writes a file
    // to B that claims to come from A, with a key of their choosing.
    let planted_key = KeyMaterial {
        settings: Default::default(),
        id: KeyId([0xab; 16]),
        name: "app-planted".to_string(),
        created: 1,
        state: KeyState::Enabled,
        min_decryption_version: 1,
        versions: vec![VersionMaterial {
            number: 1,
            created: 1,
            kek: Some(Zeroizing::new([0x41; 32])),
            public_key: None,
        }],
        key_type: agent_proto::KeyType::Aes256Gcm,
    };
    // The forger's best MAC key: anything but the X25519 agreement of A
    // and B, which takes a secret it lacks.
    let guess = MacKey::from_bytes(Zeroizing::new([0x42; 32]));
    let record = record::encode(&planted_key, 1, &guess).unwrap();
    let plaintext = format!(
        "hostkms-transfer 1\nsource {}\ndestination {}\n\n{}",
        a.recipient,
        b.recipient,
        String::from_utf8(record.to_vec()).unwrap()
    );
    let to_b: age::x25519::Recipient = b.recipient.parse().unwrap();
    let planted = age::encrypt(&to_b, plaintext.as_bytes()).unwrap();
    let path = out_file(&dir, "planted");
    std::fs::write(&path, planted).unwrap();
    refused(&import(&b, &path), "fails authentication");
    assert!(b.daemon.client().describe_key("app-planted").is_err());

    // The genuine file still imports.
    ok(import(&b, &file));
}

/// The audit trail of both directions in a real journald: the export and
/// the import events with the key, the peer's name and its transport key's
/// fingerprint, at priority warning.
#[test]
fn exports_and_imports_are_journal_events_naming_the_peer_and_its_fingerprint() {
    const KEY_EXPORTED: &str = "12c4e514adcf4786ba7cc953997b64a2";
    const KEY_IMPORTED: &str = "de27b4d0ea4d4deea0179c5860a70ad8";
    ensure_journald();
    let b = Host::start(DaemonConfig::new());
    let a = Host::start_logging(
        DaemonConfig::new().transfer("db-b", &b.recipient, &["app-*"]),
        false,
        "journal",
    );
    b.reconfigure(DaemonConfig::new().transfer("db-a", &a.recipient, &["app-*"]));
    let dir = tempfile::tempdir().unwrap();
    a.daemon.client().create_key("app-out").unwrap();
    let file = out_file(&dir, "out");
    ok(export(&a, "app-out", "db-b", &file));
    ok(import(&b, &file));
    let mut on_b = b.daemon.client();
    on_b.create_key("app-in").unwrap();
    on_b.rotate("app-in").unwrap();
    ok(export(&b, "app-in", "db-a", &file));
    ok(import(&a, &file));

    let Host { daemon, .. } = a;
    let scope = daemon.journal_scope();
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let entries = journal_of_stopped(&scope);
    let exported = with_id(&entries, KEY_EXPORTED);
    assert_eq!(exported.len(), 1, "{entries:#?}");
    let imported = with_id(&entries, KEY_IMPORTED);
    assert_eq!(imported.len(), 1, "{entries:#?}");
    for (event, key, versions) in [(exported[0], "app-out", "1"), (imported[0], "app-in", "2")] {
        assert_eq!(field(event, "HOSTKMS_KEY"), Some(key), "{event}");
        assert_eq!(
            field(event, "HOSTKMS_KEY_VERSION"),
            Some(versions),
            "{event}"
        );
        assert_eq!(
            field(event, "HOSTKMS_TRANSFER_PEER"),
            Some("db-b"),
            "{event}"
        );
        assert_eq!(
            field(event, "HOSTKMS_TRANSFER_FINGERPRINT"),
            Some(b.fingerprint.as_str()),
            "{event}"
        );
        assert_eq!(field(event, "HOSTKMS_PEER_UID"), Some("0"), "{event}");
        assert_eq!(field(event, "PRIORITY"), Some("4"), "{event}");
    }
    assert_eq!(field(imported[0], "HOSTKMS_ADDED_VERSIONS"), Some("2"));
    // And the requests themselves, as every request is.
    let ops: Vec<&str> = entries
        .iter()
        .filter_map(|e| field(e, "HOSTKMS_OP"))
        .collect();
    assert!(
        ops.contains(&"export") && ops.contains(&"import"),
        "{ops:?}"
    );
}

/// The transport key is one of the store's sealed secrets: a root-key
/// rotation re-seals it, so after the rotation and a restart the host has
/// the same transport key, and a file exported to it before still imports.
#[test]
fn the_transport_key_survives_a_root_key_rotation() {
    let (a, b) = pair(&["app-*"]);
    let ctx = EncryptionContext::new();
    let mut on_a = a.daemon.client();
    on_a.create_key("app-r").unwrap();
    let ciphertext = on_a
        .wrap("app-r", b"before", &ctx)
        .unwrap()
        .ciphertext
        .into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let file = out_file(&dir, "app-r");
    ok(export(&a, "app-r", "b", &file));
    let rotation = b.daemon.client().rotate_root().unwrap();
    assert_ne!(rotation.old_check, rotation.new_check);
    let b = restart(b);
    ok(import(&b, &file));
    let mut on_b = b.daemon.client();
    assert_eq!(
        on_b.unwrap(&ciphertext, &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        b"before"
    );
}

/// An import is a key change like any other: on a host with a recovery
/// directory, the imported key's record and the MANIFEST are written
/// before the import is answered.
#[test]
fn an_imported_key_is_in_the_recovery_directory_when_the_import_is_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let recovery_dir = tmp.path().join("recovery");
    let custodian = age::x25519::Identity::generate().to_public().to_string();
    let with_recovery =
        || DaemonConfig::new().recovery(std::slice::from_ref(&custodian), 1, &recovery_dir);
    let a = Host::start(DaemonConfig::new());
    let b = Host::start(with_recovery());
    a.reconfigure(DaemonConfig::new().transfer("b", &b.recipient, &["app-*"]));
    b.reconfigure(with_recovery().transfer("a", &a.recipient, &["app-*"]));
    let info = a.daemon.client().create_key("app-escrowed").unwrap();
    let id = hex(info.id);
    let record = recovery_dir.join("keys").join(format!("{id}.age"));
    assert!(!record.exists());
    let dir = tempfile::tempdir().unwrap();
    let file = out_file(&dir, "app-escrowed");
    ok(export(&a, "app-escrowed", "b", &file));
    ok(import(&b, &file));
    assert!(record.is_file(), "{} after the import", record.display());
    let manifest = std::fs::read_to_string(recovery_dir.join("MANIFEST")).unwrap();
    assert!(manifest.contains(&id), "{manifest}");
}

/// Each version of key `name` in `host`'s store and its public key column,
/// hex, straight from the file: "1 302A…\n2 302A…\n" (empty for none).
fn stored_public_keys(host: &Host, name: &str) -> String {
    sqlite(
        &host.files.state_file("keystore.db"),
        &format!(
            "SELECT version, hex(public_key) FROM versions \
             WHERE key_id = (SELECT id FROM keys WHERE name = '{name}') ORDER BY version"
        ),
    )
}

#[test]
fn an_exported_signing_key_arrives_with_its_type_and_every_versions_public_key() {
    let (a, b) = pair(&["rel*"]);
    let (mut on_a, mut on_b) = (a.daemon.client(), b.daemon.client());
    on_a.create_key_of_type("rel", KeyType::Ed25519).unwrap();
    on_a.rotate("rel").unwrap();
    on_a.revoke("rel", Some(1)).unwrap();
    on_a.create_key_of_type("rel-tags", KeyType::HmacSha512)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in ["rel", "rel-tags"] {
        let file = out_file(&dir, name);
        ok(export(&a, name, "b", &file));
        ok(import(&b, &file));
    }

    let (there, here) = (
        on_a.describe_key("rel").unwrap(),
        on_b.describe_key("rel").unwrap(),
    );
    assert_eq!(here.key_type, KeyType::Ed25519);
    assert_eq!((here.id, here.latest_version), (there.id, 2));
    assert_eq!(here.versions[0].state, VersionState::Revoked);
    // The revoked version's public key came along: B can still show it.
    let public_keys = stored_public_keys(&b, "rel");
    assert_eq!(public_keys, stored_public_keys(&a, "rel"));
    let lines: Vec<&str> = public_keys.lines().collect();
    assert_eq!(lines.len(), 2, "{public_keys}");
    for (number, line) in lines.iter().enumerate() {
        let (version, der) = line.split_once('|').unwrap();
        assert_eq!(version, (number + 1).to_string());
        // An Ed25519 SubjectPublicKeyInfo: 12 bytes of header, 32 of key.
        assert!(
            der.starts_with("302A300506032B6570032100") && der.len() == 88,
            "{line}"
        );
    }
    assert_ne!(lines[0], lines[1]);
    // And the daemon answers them, the revoked one marked so.
    for version in [1, 2] {
        let (there, here) = (
            on_a.public_key("rel", Some(version)).unwrap(),
            on_b.public_key("rel", Some(version)).unwrap(),
        );
        assert_eq!(here.spki_der, there.spki_der);
        assert_eq!(here.revoked, version == 1);
    }

    let tags = on_b.describe_key("rel-tags").unwrap();
    assert_eq!(tags.key_type, KeyType::HmacSha512);
    assert_eq!(
        stored_public_keys(&b, "rel-tags"),
        "1|\n",
        "an HMAC key has none"
    );
}
