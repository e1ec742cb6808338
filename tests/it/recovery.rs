//! The recovery directory (issue 10, items 1 and 2) against the real daemon
//! and a real swtpm: the directory holds exactly the store's state after
//! every change, before the answer; custodians recover the bundle identity
//! (threshold 1 with one of them, k-of-n with k of them and never fewer),
//! with the hostkms library and with the age CLI alone; a planted key file
//! is detected; the directory refuses links and other owners; a daemon
//! without `[recovery]` says its keys are not recoverable.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use age::secrecy::ExposeSecret;
use age::x25519::Identity;
use agent_proto::{EncryptionContext, KeyInfo, KeyState, KeyType, VersionState};
use hostkms::keystore::Kek;
use hostkms::recovery::agefile;
use hostkms::recovery::escrow::{self, BundleIdentity, EscrowFile, Share};
use hostkms::recovery::manifest::{Manifest, UnverifiedManifest};
use hostkms::recovery::record::{self, MacKey, Record, RecordError, StateV1};
use hostkms::version_key::VersionKey;
use nix::sys::signal::Signal;
use zeroize::Zeroizing;

use crate::harness::{Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, cli, ok, sqlite, text};

/// A custodian: an age identity kept "offline" (here, in the test).
struct Custodian {
    identity: Identity,
    recipient: String,
}

fn custodians(n: usize) -> Vec<Custodian> {
    (0..n)
        .map(|_| {
            let identity = Identity::generate();
            let recipient = identity.to_public().to_string();
            Custodian {
                identity,
                recipient,
            }
        })
        .collect()
}

fn recipients(custodians: &[Custodian]) -> Vec<String> {
    custodians.iter().map(|c| c.recipient.clone()).collect()
}

fn config(dir: &Path, custodians: &[Custodian], threshold: u64) -> DaemonConfig {
    DaemonConfig::new().recovery(&recipients(custodians), threshold, dir)
}

/// What a recovery directory holds, opened with custodian identities.
struct Opened {
    bundle: BundleIdentity,
    manifest: Manifest,
    records: BTreeMap<String, Record>,
}

fn escrow_files(dir: &Path) -> Vec<EscrowFile> {
    let mut files: Vec<EscrowFile> = fs::read_dir(dir.join("custodians"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            EscrowFile {
                name: e.file_name().into_string().unwrap(),
                contents: fs::read(e.path()).unwrap(),
            }
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// Opens `dir` as restore would: the MANIFEST's claims, the bundle identity
/// from the custodians' identities, the MANIFEST verified, every key record
/// decrypted and authenticated.
fn open(dir: &Path, identities: &[Identity]) -> Result<Opened, String> {
    let text = fs::read(dir.join("MANIFEST")).map_err(|e| e.to_string())?;
    let claimed = UnverifiedManifest::parse(&text).map_err(|e| e.to_string())?;
    let (threshold, expected, recipients) = {
        let m = claimed.claimed();
        (m.threshold, m.bundle_recipient.clone(), m.recipients())
    };
    let bundle = escrow::recover_bundle(
        identities,
        &escrow_files(dir),
        threshold,
        &expected,
        &recipients,
    )
    .map_err(|e| e.to_string())?;
    let manifest = claimed
        .verify(&bundle.manifest_mac_key())
        .map_err(|e| e.to_string())?;
    let mut records = BTreeMap::new();
    for key in &manifest.keys {
        let file = fs::read(dir.join("keys").join(format!("{}.age", key.id))).unwrap();
        let plain = agefile::decrypt(std::slice::from_ref(bundle.age_identity()), &file, 1 << 20)
            .map_err(|e| e.to_string())?;
        let record = record::decode(&plain, &bundle.record_mac_key()).map_err(|e| e.to_string())?;
        assert!(
            record.revision >= key.revision,
            "a key file is never older than the MANIFEST"
        );
        records.insert(key.id.clone(), record);
    }
    Ok(Opened {
        bundle,
        manifest,
        records,
    })
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory's record of `info` says exactly what the daemon says.
fn assert_matches(opened: &Opened, info: &KeyInfo) {
    let id = hex(&info.id);
    let record = opened
        .records
        .get(&id)
        .unwrap_or_else(|| panic!("no record of {}", info.name));
    let m = &record.material;
    assert_eq!(m.name, info.name);
    assert_eq!(m.key_type, info.key_type, "{}", info.name);
    assert_eq!(m.state, info.state, "{}", info.name);
    assert_eq!(m.created, info.created);
    assert_eq!(m.min_decryption_version, info.min_decryption_version);
    assert_eq!(m.versions.len(), info.versions.len(), "{}", info.name);
    for (v, i) in m.versions.iter().zip(&info.versions) {
        assert_eq!(v.number, i.version);
        assert_eq!(v.created, i.created);
        assert_eq!(
            v.kek.is_some(),
            i.state == VersionState::Enabled,
            "{} version {}: a revoked version's secret is gone from the record too",
            info.name,
            i.version
        );
    }
    let entry = opened
        .manifest
        .keys
        .iter()
        .find(|k| k.id == id)
        .expect("the MANIFEST lists the key");
    assert_eq!(entry.name, info.name);
    assert_eq!(entry.revision, record.revision);
    let state: StateV1 = info.state.into();
    assert_eq!(entry.state, state);
    assert_eq!(entry.versions.len(), info.versions.len());
}

/// The plaintext of `ciphertext` under the KEK of its version in `record`.
fn unwrap_with_record(record: &Record, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let header = agent_proto::ciphertext::Header::parse(ciphertext).ok()?;
    let version = record.material.versions.get(header.version as usize - 1)?;
    let kek = Kek::new(version.kek.as_ref()?);
    hostkms::envelope::unwrap(kek.cipher(), ciphertext, &EncryptionContext::new())
        .ok()
        .map(|p| p.to_vec())
}

/// Opens the directory right after `what` was answered and checks it holds
/// `info`, at one revision more than before.
fn check_after(
    dir: &Path,
    ids: &[Identity],
    revisions: &mut BTreeMap<String, u64>,
    info: &KeyInfo,
    what: &str,
) -> Opened {
    let opened = open(dir, ids).unwrap_or_else(|e| panic!("after {what}: {e}"));
    assert_matches(&opened, info);
    let id = hex(&info.id);
    let revision = opened.records[&id].revision;
    let before = revisions.insert(id, revision).unwrap_or(0);
    assert_eq!(revision, before + 1, "after {what}: one write per change");
    opened
}

#[test]
fn after_every_change_the_directory_holds_exactly_the_stores_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let ids = [custodians[0].identity.clone()];
    let mut client = daemon.client();
    let ctx = EncryptionContext::new();

    let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut check =
        |info: &KeyInfo, what: &str| check_after(&dir, &ids, &mut revisions, info, what);

    let info = client.create_key("app-db").unwrap();
    let opened = check(&info, "create");
    let v1 = client.wrap("app-db", b"version one", &ctx).unwrap();
    assert_eq!(
        unwrap_with_record(&opened.records[&hex(&info.id)], v1.ciphertext.as_bytes()).as_deref(),
        Some(&b"version one"[..]),
        "the record's KEK opens the daemon's ciphertexts"
    );
    let info = client.rotate("app-db").unwrap();
    let opened = check(&info, "rotate");
    let v2 = client.wrap("app-db", b"version two", &ctx).unwrap();
    assert_eq!(
        unwrap_with_record(&opened.records[&hex(&info.id)], v2.ciphertext.as_bytes()).as_deref(),
        Some(&b"version two"[..])
    );
    let info = client.revoke("app-db", Some(1)).unwrap();
    let opened = check(&info, "revoke of version 1");
    assert!(
        unwrap_with_record(&opened.records[&hex(&info.id)], v1.ciphertext.as_bytes()).is_none(),
        "a revoked version's secret is gone from the directory"
    );
    let info = client.disable("app-db").unwrap();
    check(&info, "disable");
    let info = client.enable("app-db").unwrap();
    check(&info, "enable");
    let info = client.rotate("app-db").unwrap();
    check(&info, "a second rotate");
    let info = client.set_min_decryption_version("app-db", 3).unwrap();
    check(&info, "min decryption version");
    let other = client.create_key("other").unwrap();
    check(&other, "a second create");
    let other = client.revoke("other", None).unwrap();
    let opened = check(&other, "revoke of a key");
    assert_eq!(
        opened.records[&hex(&other.id)].material.state,
        KeyState::Revoked
    );

    // Exactly the store's keys, no more.
    let listed = client.list_keys().unwrap();
    assert_eq!(opened.manifest.keys.len(), listed.len());
    assert_eq!(opened.records.len(), listed.len());
    let status = client.status().unwrap().recovery;
    assert!(status.configured && status.current, "{status:?}");
    assert_eq!(status.bundle_recipient, opened.bundle.recipient());
    assert_eq!((status.custodians, status.threshold), (1, 1));
    assert_eq!(PathBuf::from(&status.dir), dir);
}

#[test]
fn the_age_cli_alone_opens_a_threshold_one_directory_in_two_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(2);
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let info = daemon.client().create_key("app-db").unwrap();

    // The second custodian, on their own machine, with standard tools.
    let key = tmp.path().join("custodian.key");
    fs::write(
        &key,
        format!("{}\n", custodians[1].identity.to_string().expose_secret()),
    )
    .unwrap();
    let bundle_key = tmp.path().join("bundle.key");
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg("-o")
        .arg(&bundle_key)
        .arg(dir.join("custodians/identity.age"))
        .output()
        .expect("run age (apt-get install age)");
    ok(out);
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&bundle_key)
        .arg(dir.join(format!("keys/{}.age", hex(&info.id))))
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&ok(out)).unwrap();
    assert_eq!(record["format"], 1);
    assert_eq!(record["name"], "app-db");
    assert_eq!(record["id"], hex(&info.id));
    assert_eq!(record["state"], "enabled");
    assert_eq!(record["versions"][0]["version"], 1);
    assert_eq!(record["versions"][0]["secret"].as_str().unwrap().len(), 44);
}

#[test]
fn kill_9_right_after_an_acknowledged_rotate_leaves_the_new_version_in_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let mut client = daemon.client();
    client.create_key("k").unwrap();
    let rotated = client.rotate("k").unwrap();
    assert_eq!(rotated.latest_version, 2);
    drop(client);
    let (status, _) = daemon.stop_with(Signal::SIGKILL);
    assert!(!status.success());

    // The copy a backup agent takes now, before any restart.
    let ids = [custodians[0].identity.clone()];
    let opened = open(&dir, &ids).unwrap();
    assert_matches(&opened, &rotated);
    let record = &opened.records[&hex(&rotated.id)];
    assert!(record.material.versions[1].kek.is_some());

    // And that copy's version 2 is the daemon's version 2.
    let daemon = Daemon::start(&files).unwrap();
    let wrapped = daemon
        .client()
        .wrap("k", b"after the crash", &EncryptionContext::new())
        .unwrap();
    assert_eq!(
        unwrap_with_record(record, wrapped.ciphertext.as_bytes()).as_deref(),
        Some(&b"after the crash"[..])
    );
}

#[test]
fn two_of_three_no_single_custodian_opens_anything_two_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(3);
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 2));
    let info = daemon.client().create_key("app-db").unwrap();
    let names: Vec<String> = escrow_files(&dir).into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["1.age", "2.age", "3.age"]);
    let key_file = fs::read(dir.join(format!("keys/{}.age", hex(&info.id)))).unwrap();
    for (i, c) in custodians.iter().enumerate() {
        let alone = [c.identity.clone()];
        let err = open(&dir, &alone).err().expect("one custodian alone");
        assert!(
            err.contains("1 of the 2 custodians needed"),
            "custodian {i}: {err}"
        );
        assert!(
            err.contains(&custodians[(i + 1) % 3].recipient),
            "names the recipients: {err}"
        );
        assert!(
            agefile::decrypt(&alone, &key_file, 1 << 20).is_err(),
            "a custodian's identity does not open a key file"
        );
    }
    for pair in [[0, 1], [1, 2], [0, 2]] {
        let two = [
            custodians[pair[0]].identity.clone(),
            custodians[pair[1]].identity.clone(),
        ];
        let opened = open(&dir, &two).unwrap();
        assert_matches(&opened, &daemon.client().describe_key("app-db").unwrap());
    }

    // Split knowledge: each custodian decrypts only their own share with
    // the age CLI and hands over that text.
    let mut shares = Vec::new();
    for n in [1, 3] {
        let key = tmp.path().join(format!("custodian-{n}.key"));
        fs::write(
            &key,
            format!(
                "{}\n",
                custodians[n - 1].identity.to_string().expose_secret()
            ),
        )
        .unwrap();
        let out = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key)
            .arg(dir.join(format!("custodians/{n}.age")))
            .output()
            .unwrap();
        let share = String::from_utf8(ok(out)).unwrap();
        assert!(share.starts_with("hostkms recovery share v1\n"), "{share}");
        assert!(share.contains(&format!("share: {n} of 3\n")), "{share}");
        shares.push(Share::parse(&share, &format!("share {n}")).unwrap());
    }
    let status = daemon.client().status().unwrap().recovery;
    let bundle = escrow::combine_shares(
        &shares,
        2,
        &status.bundle_recipient,
        &recipients(&custodians),
    )
    .unwrap();
    assert!(
        agefile::decrypt(
            std::slice::from_ref(bundle.age_identity()),
            &key_file,
            1 << 20
        )
        .is_ok()
    );
    let err = escrow::combine_shares(
        &shares[..1],
        2,
        &status.bundle_recipient,
        &recipients(&custodians),
    )
    .unwrap_err();
    assert!(err.to_string().contains("1 of the 2"), "{err}");
}

#[test]
fn a_planted_key_file_is_detected_and_replaced_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let info = daemon.client().create_key("app-db").unwrap();
    let recipient = daemon.client().status().unwrap().recovery.bundle_recipient;
    let ids = [custodians[0].identity.clone()];
    let genuine = open(&dir, &ids).unwrap();

    // Someone who knows only the public bundle recipient writes a record
    // with a secret of their choosing, over the key's file, and one more
    // for a key that does not exist.
    let mut forged = genuine.records[&hex(&info.id)].material.clone();
    forged.versions[0].kek = Some(Zeroizing::new([0x41; 32]));
    let attacker = MacKey::for_records(&[7; 32]);
    let planted = |material: &hostkms::keystore::KeyMaterial| {
        let text = record::encode(material, 99, &attacker).unwrap();
        agefile::encrypt(&[agefile::parse_recipient(&recipient).unwrap()], &text).unwrap()
    };
    let key_path = dir.join(format!("keys/{}.age", hex(&info.id)));
    fs::write(&key_path, planted(&forged)).unwrap();
    // And a MANIFEST that lists a key that is not there.
    let mut manifest = genuine.manifest.clone();
    manifest.keys[0].revision = 99;
    fs::write(
        dir.join("MANIFEST"),
        manifest
            .encode(&MacKey::derive(&[7; 32], escrow::MANIFEST_MAC_LABEL))
            .unwrap(),
    )
    .unwrap();
    let mut stranger = forged.clone();
    stranger.id = hostkms::envelope::KeyId([0x5a; 16]);
    let stranger_path = dir.join(format!("keys/{}.age", hex(&[0x5a; 16])));
    fs::write(&stranger_path, planted(&stranger)).unwrap();

    // Whoever opens the directory refuses it.
    let err = open(&dir, &ids).err().expect("the planted file is refused");
    assert!(err.contains("does not authenticate"), "{err}");
    let plain = agefile::decrypt(
        std::slice::from_ref(genuine.bundle.age_identity()),
        &fs::read(&key_path).unwrap(),
        1 << 20,
    )
    .unwrap();
    assert!(matches!(
        record::decode(&plain, &genuine.bundle.record_mac_key()),
        Err(RecordError::BadMac { .. })
    ));

    // The daemon notices at start, says so, and writes the truth back.
    let (_, _) = daemon.stop();
    let daemon = Daemon::start(&files).unwrap();
    let log = daemon.log();
    assert!(
        log.contains(&format!("{}.age does not authenticate", hex(&info.id))),
        "{log}"
    );
    assert!(log.contains("names no key of the store; removed"), "{log}");
    assert!(
        log.contains("recovery file MANIFEST does not authenticate"),
        "{log}"
    );
    assert!(!stranger_path.exists());
    let repaired = open(&dir, &ids).unwrap();
    assert_matches(&repaired, &daemon.client().describe_key("app-db").unwrap());
    assert!(record::same_material(
        &repaired.records[&hex(&info.id)].material,
        &genuine.records[&hex(&info.id)].material
    ));
}

#[test]
fn changing_the_custodians_re_escrows_the_same_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let first = custodians(1);
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &config(&dir, &first, 1));
    let daemon = Daemon::start(&files).unwrap();
    daemon.client().create_key("app-db").unwrap();
    let before = open(&dir, &[first[0].identity.clone()]).unwrap();
    drop(daemon);

    let next = custodians(3);
    files.write_config(&tpm.tcti(), &config(&dir, &next, 2));
    let daemon = Daemon::start(&files).unwrap();
    let names: Vec<String> = escrow_files(&dir).into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["1.age", "2.age", "3.age"], "identity.age is gone");
    assert!(open(&dir, &[first[0].identity.clone()]).is_err());
    let after = open(&dir, &[next[0].identity.clone(), next[2].identity.clone()]).unwrap();
    assert_eq!(after.bundle.recipient(), before.bundle.recipient());
    assert_eq!(after.manifest.threshold, 2);
    assert_eq!(after.manifest.recipients(), recipients(&next));
    assert_matches(&after, &daemon.client().describe_key("app-db").unwrap());
    let status = daemon.client().status().unwrap().recovery;
    assert_eq!((status.custodians, status.threshold), (3, 2));
    // Audited, with the custodians' fingerprints.
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "escrowed in {} to 3 custodians, 2 of whom must join",
            dir.display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&agefile::fingerprint(&next[1].recipient)),
        "{log}"
    );
}

#[test]
fn the_directory_is_not_world_readable_and_its_files_are_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    // The backup agent's group: nogroup stands in for it.
    let group = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup");
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1).recovery_group("nogroup"));
    let info = daemon.client().create_key("app-db").unwrap();
    for sub in ["", "keys", "custodians"] {
        let meta = fs::metadata(dir.join(sub)).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750, "{sub}");
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(meta.gid(), group.gid.as_raw(), "{sub}");
    }
    for file in [
        "MANIFEST".to_string(),
        "custodians/identity.age".to_string(),
        format!("keys/{}.age", hex(&info.id)),
    ] {
        let meta = fs::metadata(dir.join(&file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{file}");
        assert_eq!(meta.gid(), group.gid.as_raw(), "{file}");
    }
    // No secret in clear anywhere in it.
    let manifest = fs::read_to_string(dir.join("MANIFEST")).unwrap();
    assert!(!manifest.contains("secret"), "{manifest}");
}

#[test]
fn a_symlinked_or_foreign_recovery_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let custodians = custodians(1);
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &config(&link, &custodians, 1));
    let log = Daemon::start(&files)
        .err()
        .expect("a symlinked dir is refused");
    assert!(log.contains("is a symbolic link"), "{log}");
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0, "nothing written");

    nix::unistd::chown(&real, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    files.write_config(&tpm.tcti(), &config(&real, &custodians, 1));
    let log = Daemon::start(&files)
        .err()
        .expect("a foreign dir is refused");
    assert!(log.contains("is owned by uid 65534"), "{log}");
}

#[test]
fn a_daemon_without_recovery_says_its_keys_are_not_recoverable() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let status = text(&ok(cli(&files.socket, &["status"])));
    assert!(
        status.contains("recoverable:      NO: keys are lost if this TPM is lost"),
        "{status}"
    );
    assert!(!daemon.client().status().unwrap().recovery.configured);
    assert!(
        daemon
            .log()
            .contains("keys are not recoverable if this TPM is lost: configure [recovery]"),
        "{}",
        daemon.log()
    );
    let out = cli(&files.socket, &["backup", "--out", "/nonexistent/x.tar"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no [recovery]"));
}

#[test]
fn backup_writes_the_directory_as_one_tar_manifest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let a = daemon.client().create_key("a").unwrap();
    let b = daemon.client().create_key("b").unwrap();
    let human = text(&ok(cli(&files.socket, &["status"])));
    assert!(
        human.contains("recoverable:      yes, by 1 of 1 custodians"),
        "{human}"
    );
    assert!(human.contains("recovery current: yes"), "{human}");
    assert!(
        human.contains(&format!("recovery dir:     {}", dir.display())),
        "{human}"
    );
    let out_path = tmp.path().join("backup.tar");
    ok(cli(
        &files.socket,
        &["backup", "--out", out_path.to_str().unwrap()],
    ));
    assert_eq!(
        fs::metadata(&out_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listing = ok(Command::new("tar")
        .arg("-tf")
        .arg(&out_path)
        .output()
        .unwrap());
    let mut expected = vec![
        "MANIFEST".to_string(),
        "custodians/identity.age".to_string(),
    ];
    let mut keys = vec![
        format!("keys/{}.age", hex(&a.id)),
        format!("keys/{}.age", hex(&b.id)),
    ];
    keys.sort();
    expected.extend(keys);
    assert_eq!(text(&listing).lines().collect::<Vec<_>>(), expected);

    // Unpacked, it opens like the directory itself.
    let unpacked = tmp.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    ok(Command::new("tar")
        .arg("-xf")
        .arg(&out_path)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap());
    let opened = open(&unpacked, &[custodians[0].identity.clone()]).unwrap();
    assert_matches(&opened, &a);
    assert_matches(&opened, &b);

    // An existing file is kept unless --force.
    let again = cli(
        &files.socket,
        &["backup", "--out", out_path.to_str().unwrap()],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("--force"));
    ok(cli(
        &files.socket,
        &["backup", "--out", out_path.to_str().unwrap(), "--force"],
    ));
}

#[test]
fn a_failed_write_leaves_the_change_and_says_not_current_until_it_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let mut client = daemon.client();
    client.create_key("a").unwrap();
    // keys/ replaced by a file: every key write fails (even as root).
    let keys = dir.join("keys");
    let aside = dir.join("keys.aside");
    fs::rename(&keys, &aside).unwrap();
    fs::write(&keys, b"not a directory").unwrap();

    let b = client.create_key("b").expect("the change stands");
    let status = client.status().unwrap().recovery;
    assert!(!status.current, "{status:?}");
    assert!(status.problem.contains("lags behind"), "{status:?}");
    let human = text(&cli(&files.socket, &["status"]).stdout);
    assert!(human.contains("recovery current: NO: "), "{human}");
    assert!(daemon.log().contains("lags behind"), "{}", daemon.log());

    // The cause fixed, the next change writes everything that lagged.
    fs::remove_file(&keys).unwrap();
    fs::rename(&aside, &keys).unwrap();
    let c = client.create_key("c").unwrap();
    let status = client.status().unwrap().recovery;
    assert!(status.current, "{status:?}");
    let opened = open(&dir, &[custodians[0].identity.clone()]).unwrap();
    assert_matches(&opened, &b);
    assert_matches(&opened, &c);
}

#[test]
fn rotate_bundle_re_encrypts_every_record_to_a_new_escrowed_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let ids = [custodians[0].identity.clone()];
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &config(&dir, &custodians, 1));
    let daemon = Daemon::start(&files).unwrap();
    let info = daemon.client().create_key("app-db").unwrap();
    let wrapped = daemon
        .client()
        .wrap("app-db", b"kept", &EncryptionContext::new())
        .unwrap();
    let before = open(&dir, &ids).unwrap();
    let key_path = dir.join(format!("keys/{}.age", hex(&info.id)));
    let old_file = fs::read(&key_path).unwrap();

    // Refused while the daemon holds the state dir.
    let config_path = files.config.to_str().unwrap();
    let out = crate::harness::run_daemon_to_exit(&["rotate-bundle", "--config", config_path]);
    assert!(!out.status.success());
    let (_, _) = daemon.stop();

    let out = crate::harness::run_daemon_to_exit(&["rotate-bundle", "--config", config_path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!("{} -> ", before.bundle.recipient())),
        "{report}"
    );
    assert!(
        text(&out.stderr).contains(&format!("(it replaces {})", before.bundle.recipient())),
        "audited: {}",
        text(&out.stderr)
    );

    let after = open(&dir, &ids).unwrap();
    assert_ne!(after.bundle.recipient(), before.bundle.recipient());
    assert!(record::same_material(
        &after.records[&hex(&info.id)].material,
        &before.records[&hex(&info.id)].material
    ));
    assert_eq!(
        unwrap_with_record(
            &after.records[&hex(&info.id)],
            wrapped.ciphertext.as_bytes()
        )
        .as_deref(),
        Some(&b"kept"[..])
    );
    // The new files are not for the old identity, nor the old ones for the new.
    let new_file = fs::read(&key_path).unwrap();
    let old_identity = std::slice::from_ref(before.bundle.age_identity());
    let new_identity = std::slice::from_ref(after.bundle.age_identity());
    assert!(agefile::decrypt(old_identity, &new_file, 1 << 20).is_err());
    assert!(agefile::decrypt(new_identity, &old_file, 1 << 20).is_err());

    // The daemon starts on it with nothing to repair and reports the new one.
    let daemon = Daemon::start(&files).unwrap();
    let status = daemon.client().status().unwrap().recovery;
    assert_eq!(status.bundle_recipient, after.bundle.recipient());
    assert!(status.current);
    assert!(
        !daemon.log().contains("does not authenticate"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_root_key_rotation_keeps_the_bundle_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    daemon.client().create_key("app-db").unwrap();
    let before = daemon.client().status().unwrap().recovery;
    daemon.client().rotate_root().unwrap();
    let (_, _) = daemon.stop();
    let daemon = Daemon::start(&files).unwrap();
    let after = daemon.client().status().unwrap().recovery;
    assert_eq!(after.bundle_recipient, before.bundle_recipient);
    assert!(after.current, "{after:?}");
    let log = daemon.log();
    assert!(!log.contains("escrowed in"), "no new escrow: {log}");
    assert!(!log.contains("does not authenticate"), "{log}");
    assert_matches(
        &open(&dir, &[custodians[0].identity.clone()]).unwrap(),
        &daemon.client().describe_key("app-db").unwrap(),
    );
}

#[test]
fn backup_by_a_user_who_cannot_read_the_directory_says_how_to_fix_it() {
    // A peer that may read status (a "metrics" grant) but is neither root
    // nor in the directory's group.
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let config = config(&dir, &custodians, 1)
        .socket_mode("0666")
        .grant(crate::harness::Grant::to_uid(65534).ops(&["metrics"]));
    let tpm = Swtpm::start();
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap();
    daemon.client().create_key("app-db").unwrap();
    let out = crate::harness::cli_as(
        65534,
        &files.socket,
        &["backup", "--out", "/tmp/hostkms-backup-never-written.tar"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.contains("run hostkms backup as root or as a member of the recovery directory's group"),
        "{err}"
    );
    assert!(!Path::new("/tmp/hostkms-backup-never-written.tar").exists());
}

/// The record of `info` in `dir` as JSON, decrypted with the bundle
/// identity: what a custodian reads with `age -d`.
fn record_json(opened: &Opened, dir: &Path, info: &KeyInfo) -> serde_json::Value {
    let file = fs::read(dir.join("keys").join(format!("{}.age", hex(&info.id)))).unwrap();
    let plain = agefile::decrypt(
        std::slice::from_ref(opened.bundle.age_identity()),
        &file,
        1 << 20,
    )
    .unwrap();
    serde_json::from_slice(&plain).unwrap()
}

/// The public key column of each version of `name`, hex, from the store.
fn stored_public_keys(files: &DaemonFiles, name: &str) -> Vec<String> {
    sqlite(
        &files.state_file("keystore.db"),
        &format!(
            "SELECT hex(public_key) FROM versions \
             WHERE key_id = (SELECT id FROM keys WHERE name = '{name}') ORDER BY version"
        ),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_signing_key_is_escrowed_in_format_2_with_its_type_and_every_versions_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recovery");
    let custodians = custodians(1);
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(config(&dir, &custodians, 1));
    let ids = [custodians[0].identity.clone()];
    let mut client = daemon.client();
    let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut check =
        |info: &KeyInfo, what: &str| check_after(&dir, &ids, &mut revisions, info, what);

    let info = client
        .create_key_of_type("rel", KeyType::EcdsaP256)
        .unwrap();
    check(&info, "create");
    let info = client.rotate("rel").unwrap();
    check(&info, "rotate");
    let info = client.revoke("rel", Some(1)).unwrap();
    let opened = check(&info, "revoke of version 1");
    let record = &opened.records[&hex(&info.id)];
    assert_eq!(record.material.key_type, KeyType::EcdsaP256);
    let hex_upper = |der: &[u8]| der.iter().map(|b| format!("{b:02X}")).collect::<String>();
    let in_record: Vec<String> = record
        .material
        .versions
        .iter()
        .map(|v| hex_upper(v.public_key.as_deref().expect("every version's public key")))
        .collect();
    // The revoked version's public key too, and each the store's.
    assert_eq!(in_record, stored_public_keys(&files, "rel"));
    assert_ne!(in_record[0], in_record[1]);
    assert!(record.material.versions[0].kek.is_none());
    // The live version's public key is the one its secret gives.
    let live = &record.material.versions[1];
    let derived = VersionKey::from_seed(KeyType::EcdsaP256, live.kek.as_ref().unwrap())
        .unwrap()
        .public_key_der()
        .unwrap();
    assert_eq!(live.public_key.as_deref(), Some(derived.as_slice()));
    let json = record_json(&opened, &dir, &info);
    assert_eq!(json["format"], 2);
    assert_eq!(json["type"], "ecdsa-p256");
    assert!(json["versions"][0].get("secret").is_none());
    assert!(json["versions"][0]["public_key"].is_string());

    let tags = client
        .create_key_of_type("tags", KeyType::HmacSha256)
        .unwrap();
    let opened = check(&tags, "create of an HMAC key");
    let json = record_json(&opened, &dir, &tags);
    assert_eq!(
        (&json["format"], &json["type"]),
        (&2.into(), &"hmac-sha256".into())
    );
    assert!(json["versions"][0].get("public_key").is_none());
    let aes = client.create_key("plain").unwrap();
    let opened = check(&aes, "create of an AES key");
    let json = record_json(&opened, &dir, &aes);
    assert_eq!(json["format"], 1, "an AES key's record stays in format 1");
    assert!(json.get("type").is_none());
}
