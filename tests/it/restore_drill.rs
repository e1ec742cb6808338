//! The recovery drill (issue 10, items 3 and 7): host A, with its own swtpm
//! and `[recovery]` to three custodians (2 of 3), makes keys, rotates,
//! revokes, disables and wraps hundreds of ciphertexts; `hostkms backup`
//! takes its recovery directory; A's TPM and root blobs are destroyed; host
//! B (another swtpm, an empty state dir) runs `hostkmsd restore` with two
//! custodians' identities, host C with two shares decrypted by the real
//! `age -d`, and every ciphertext answers on them as it did on A. Plus
//! every refusal: too few or wrong custodians, a store with keys without
//! `--merge`, a name taken, a tampered or planted record or manifest, a
//! stale record, a running daemon; each leaves the store as it was.
//!
//! The refusals run against a backup written directly in the recovery
//! directory's formats (`hostkms::recovery`) with KEKs the test knows, so
//! each needs no host A of its own.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{
    DaemonConfig, DaemonFiles, HOSTKMSD, Harness, Swtpm, cli, ok, private_tempdir, sqlite, stderr,
    text,
};
use agent_proto::{Client, ClientError, EncryptionContext, ErrorCode, KeyInfo, KeyState, KeyType};
use hostkms::envelope::KeyId;
use hostkms::keystore::{KeyMaterial, VersionMaterial};
use hostkms::recovery::manifest::{Manifest, ManifestKey};
use hostkms::recovery::{agefile, escrow, record};

/// An offline custodian: an age identity file made by `age-keygen`.
struct Custodian {
    key: PathBuf,
    recipient: String,
}

/// `count` custodians with identity files in `dir`.
fn custodians(dir: &Path, count: usize) -> Vec<Custodian> {
    (1..=count)
        .map(|n| {
            let key = dir.join(format!("custodian-{n}.key"));
            age_keygen(&key);
            let recipient = public_key(&key);
            Custodian { key, recipient }
        })
        .collect()
}

fn age_keygen(key: &Path) {
    let output = Command::new("age-keygen")
        .arg("-o")
        .arg(key)
        .output()
        .expect("age-keygen must be installed (apt-get install age)");
    assert!(output.status.success(), "age-keygen: {}", stderr(&output));
}

fn public_key(key: &Path) -> String {
    let output = Command::new("age-keygen")
        .arg("-y")
        .arg(key)
        .output()
        .expect("age-keygen -y");
    assert!(
        output.status.success(),
        "age-keygen -y: {}",
        stderr(&output)
    );
    text(&output.stdout).trim().to_string()
}

/// `age -d -i identity file`: the plaintext, or the failed output.
fn age_decrypt(identity: &Path, file: &Path) -> Output {
    Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .expect("age must be installed (apt-get install age)")
}

/// A recipient's fingerprint (D5), as the manifest, status and messages
/// show it.
fn fingerprint(recipient: &str) -> String {
    agefile::fingerprint(recipient)
}

fn context(n: usize) -> EncryptionContext {
    [("record".to_string(), n.to_string())]
        .into_iter()
        .collect()
}

/// One ciphertext made on host A and what A answered when it was asked
/// to unwrap it just before the backup: the plaintext, or a refusal.
struct Sample {
    key: String,
    version: u32,
    context: EncryptionContext,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
    on_a: Result<Vec<u8>, ErrorCode>,
}

fn unwrap_outcome(client: &mut Client, sample: &Sample) -> Result<Vec<u8>, ErrorCode> {
    match client.unwrap(&sample.ciphertext, &sample.context, None) {
        Ok(unwrapped) => Ok(unwrapped.plaintext.expose().to_vec()),
        Err(ClientError::Daemon { code, .. }) => Err(code),
        Err(e) => panic!("unwrap of {} v{}: {e}", sample.key, sample.version),
    }
}

/// A key as a backup must keep it: everything but the encryption counts.
fn kept_fields(key: &KeyInfo) -> String {
    let versions: Vec<String> = key
        .versions
        .iter()
        .map(|v| format!("{}@{}:{:?}", v.version, v.created, v.state))
        .collect();
    format!(
        "{} {:02x?} created {} {:?} latest {} min {} [{}]",
        key.name,
        key.id,
        key.created,
        key.state,
        key.latest_version,
        key.min_decryption_version,
        versions.join(" ")
    )
}

fn describe_all(client: &mut Client) -> BTreeMap<String, String> {
    client
        .list_keys()
        .expect("list")
        .iter()
        .map(|key| (key.name.clone(), kept_fields(key)))
        .collect()
}

/// Host A after the drill's changes, stopped, its TPM and root blobs gone:
/// what is left is its backup, the custodians and what A answered.
struct OldHost {
    work: tempfile::TempDir,
    custodians: Vec<Custodian>,
    backup: PathBuf,
    recovery_dir: PathBuf,
    samples: Vec<Sample>,
    keys: BTreeMap<String, String>,
    /// The bundle's public recipient, as the MANIFEST names it.
    bundle_recipient: String,
    /// The keys' material and the bundle identity's text, when the test
    /// wrote the backup itself.
    material: Vec<KeyMaterial>,
    bundle_text: Option<String>,
}

/// Runs host A: `custodians` custodians, `threshold` of them to recover;
/// `per_version` ciphertexts for each live version of each key.
fn old_host(custodian_count: usize, threshold: usize, per_version: usize) -> OldHost {
    let work = private_tempdir();
    let custodians = custodians(work.path(), custodian_count);
    let recovery_dir = work.path().join("recovery");
    let recipients: Vec<String> = custodians.iter().map(|c| c.recipient.clone()).collect();
    let config = DaemonConfig::new().recovery(&recipients, threshold as u64, &recovery_dir);
    let Harness { tpm, files, daemon } = Harness::start(config);
    let mut client = daemon.client();
    let mut samples = Vec::new();
    let mut wrap_some = |client: &mut Client, key: &str| {
        for _ in 0..per_version {
            let n = samples.len();
            let plaintext = format!("secret {n} of {key}").into_bytes();
            let wrapped = client
                .wrap(key, &plaintext, &context(n))
                .unwrap_or_else(|e| panic!("wrap {key}: {e}"));
            samples.push(Sample {
                key: key.to_string(),
                version: wrapped.version,
                context: context(n),
                plaintext,
                ciphertext: wrapped.ciphertext.as_bytes().to_vec(),
                on_a: Err(ErrorCode::Internal),
            });
        }
    };
    for key in ["app-db", "app-files", "app-cold", "app-gone", "app-plain"] {
        client.create_key(key).expect("create");
        wrap_some(&mut client, key);
    }
    for _ in 0..2 {
        for key in ["app-db", "app-files"] {
            client.rotate(key).expect("rotate");
            wrap_some(&mut client, key);
        }
    }
    // app-db: version 1 revoked for good; app-files: versions below 2
    // refused (reversibly); app-cold disabled; app-gone revoked whole.
    client.revoke("app-db", Some(1)).expect("revoke a version");
    client
        .set_min_decryption_version("app-files", 2)
        .expect("min decryption version");
    client.disable("app-cold").expect("disable");
    client.revoke("app-gone", None).expect("revoke a key");
    for sample in &mut samples {
        sample.on_a = unwrap_outcome(&mut client, sample);
    }
    let keys = describe_all(&mut client);
    let status = client.status().expect("status");
    assert!(
        status.recovery.configured && status.recovery.current,
        "A's recovery directory is current: {:?}",
        status.recovery
    );
    let backup = work.path().join("backup.tar");
    let out = cli(
        &files.socket,
        &["backup", "--out", backup.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "hostkms backup: {}", stderr(&out));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    // The machine is gone: its TPM (and with it the storage key that
    // sealed the root key) and its state dir.
    drop(tpm);
    fs::remove_dir_all(&files.state_dir).expect("destroy A's state dir");
    drop(files);
    let manifest = fs::read_to_string(recovery_dir.join("MANIFEST")).expect("MANIFEST");
    let bundle_recipient = manifest
        .split("\"bundle_recipient\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the MANIFEST names its bundle recipient")
        .to_string();
    OldHost {
        work,
        custodians,
        backup,
        recovery_dir,
        samples,
        keys,
        bundle_recipient,
        material: Vec::new(),
        bundle_text: None,
    }
}

/// 32 bytes from the OS.
fn random_kek() -> zeroize::Zeroizing<[u8; 32]> {
    use std::io::Read;
    let mut kek = zeroize::Zeroizing::new([0u8; 32]);
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(kek.as_mut()))
        .expect("/dev/urandom");
    kek
}

/// The drill's keys, written straight in the recovery directory's formats
/// (as host A's recovery writer would) with KEKs the test knows: `app-db`
/// with version 1 revoked, `app-files` with minimum decryption version 2,
/// `app-cold` disabled, `app-gone` revoked, `app-plain`; every record at
/// `revision`. Its `samples` are ciphertexts of every version, made here
/// with those KEKs, and what a host holding the keys must answer.
fn written_host(custodian_count: usize, threshold: u32, revision: u64) -> OldHost {
    use aes_gcm::KeyInit;
    let work = private_tempdir();
    let custodians = custodians(work.path(), custodian_count);
    let recipients: Vec<String> = custodians.iter().map(|c| c.recipient.clone()).collect();
    let bundle = escrow::BundleIdentity::generate().expect("bundle");
    let mut keys = Vec::new();
    let mut samples = Vec::new();
    for (n, (name, versions)) in [
        ("app-db", 3),
        ("app-files", 3),
        ("app-cold", 1),
        ("app-gone", 2),
        ("app-plain", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let mut id = [0u8; 16];
        id.copy_from_slice(&random_kek()[..16]);
        let mut material = KeyMaterial {
            settings: Default::default(),
            id: KeyId(id),
            name: name.to_string(),
            created: 1_700_000_000 + n as u64,
            state: KeyState::Enabled,
            min_decryption_version: 1,
            versions: (1..=versions)
                .map(|number| VersionMaterial {
                    number,
                    created: 1_700_000_100 + u64::from(number),
                    kek: Some(random_kek()),
                    public_key: None,
                })
                .collect(),
            key_type: agent_proto::KeyType::Aes256Gcm,
        };
        for version in &material.versions {
            let kek = version.kek.as_ref().expect("live");
            let cipher = aes_gcm::Aes256Gcm::new(&(**kek).into());
            for _ in 0..3 {
                let n = samples.len();
                let plaintext = format!("secret {n} of {name}").into_bytes();
                let ciphertext = hostkms::envelope::wrap(
                    &cipher,
                    material.id,
                    version.number,
                    &plaintext,
                    &context(n),
                )
                .expect("wrap");
                samples.push(Sample {
                    key: name.to_string(),
                    version: version.number,
                    context: context(n),
                    on_a: expected_answer(name, version.number, &plaintext),
                    plaintext,
                    ciphertext,
                });
            }
        }
        match name {
            "app-db" => material.versions[0].kek = None,
            "app-files" => material.min_decryption_version = 2,
            "app-cold" => material.state = KeyState::Disabled,
            "app-gone" => {
                material.state = KeyState::Revoked;
                for version in &mut material.versions {
                    version.kek = None;
                }
            }
            _ => {}
        }
        keys.push(material);
    }
    let recovery_dir = work.path().join("recovery");
    write_recovery_dir(
        &recovery_dir,
        &bundle,
        &recipients,
        threshold,
        &keys,
        revision,
    );
    let backup = work.path().join("backup.tar");
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(&backup)
        .arg("-C")
        .arg(&recovery_dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(tar.status.success(), "tar -cf: {}", stderr(&tar));
    OldHost {
        keys: keys
            .iter()
            .map(|k| (k.name.clone(), material_fields(k)))
            .collect(),
        work,
        custodians,
        backup,
        recovery_dir,
        samples,
        bundle_recipient: bundle.recipient().to_string(),
        material: keys,
        bundle_text: Some(bundle.to_text().to_string()),
    }
}

/// Writes a recovery directory of `keys` (each record at `revision`).
fn write_recovery_dir(
    dir: &Path,
    bundle: &escrow::BundleIdentity,
    recipients: &[String],
    threshold: u32,
    keys: &[KeyMaterial],
    revision: u64,
) {
    fs::create_dir_all(dir.join("custodians")).expect("mkdir");
    fs::create_dir_all(dir.join("keys")).expect("mkdir");
    for file in escrow::escrow(bundle, recipients, threshold).expect("escrow") {
        fs::write(dir.join("custodians").join(&file.name), &file.contents).expect("write");
    }
    let mut listed = Vec::new();
    for material in keys {
        write_record(dir, bundle, material, revision);
        listed.push(ManifestKey::of(material, revision));
    }
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let manifest = Manifest {
        bundle_recipient: bundle.recipient().to_string(),
        threshold,
        custodians: Manifest::custodians_of(recipients),
        keys: listed,
    };
    fs::write(
        dir.join("MANIFEST"),
        manifest
            .encode(&bundle.manifest_mac_key())
            .expect("manifest"),
    )
    .expect("write");
}

fn write_record(
    dir: &Path,
    bundle: &escrow::BundleIdentity,
    material: &KeyMaterial,
    revision: u64,
) {
    let text = record::encode(material, revision, &bundle.record_mac_key()).expect("record");
    let file = agefile::encrypt(&[bundle.age_recipient()], &text).expect("age");
    fs::write(dir.join("keys").join(format!("{}.age", material.id)), file).expect("write");
}

/// What a host holding the drill's keys answers to a ciphertext of `key`
/// version `version`.
fn expected_answer(key: &str, version: u32, plaintext: &[u8]) -> Result<Vec<u8>, ErrorCode> {
    match (key, version) {
        ("app-db", 1) | ("app-files", 1) => Err(ErrorCode::VersionRevoked),
        ("app-cold", _) => Err(ErrorCode::KeyDisabled),
        ("app-gone", _) => Err(ErrorCode::KeyRevoked),
        _ => Ok(plaintext.to_vec()),
    }
}

/// [`kept_fields`] of a key's material, as `describe` shows it.
fn material_fields(key: &KeyMaterial) -> String {
    let versions: Vec<String> = key
        .versions
        .iter()
        .map(|v| {
            let state = if v.kek.is_some() {
                agent_proto::VersionState::Enabled
            } else {
                agent_proto::VersionState::Revoked
            };
            format!("{}@{}:{state:?}", v.number, v.created)
        })
        .collect();
    format!(
        "{} {:02x?} created {} {:?} latest {} min {} [{}]",
        key.name,
        key.id.0,
        key.created,
        key.state,
        key.versions.len(),
        key.min_decryption_version,
        versions.join(" ")
    )
}

/// A new host: its own swtpm and an empty state dir, nothing running.
struct NewHost {
    tpm: Swtpm,
    files: DaemonFiles,
}

fn new_host() -> NewHost {
    new_host_with(&DaemonConfig::new())
}

fn new_host_with(config: &DaemonConfig) -> NewHost {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), config);
    NewHost { tpm, files }
}

impl NewHost {
    /// `hostkmsd restore --config ... --bundle BUNDLE ARGS`: `bundle` is
    /// what the operator wrote down when the old host escrowed it.
    fn restore(&self, bundle: &str, args: &[&str]) -> Output {
        Command::new(HOSTKMSD)
            .arg("restore")
            .arg("--config")
            .arg(&self.files.config)
            .arg("--bundle")
            .arg(bundle)
            .args(args)
            .env("HOSTKMS_LOG_TARGET", "stderr")
            .env("HOSTKMS_LOG", "info")
            .output()
            .expect("run hostkmsd restore")
    }

    fn start(&self) -> crate::harness::Daemon {
        let _ = &self.tpm;
        crate::harness::Daemon::start(&self.files).unwrap_or_else(|log| panic!("start: {log}"))
    }

    /// The key names in the store, straight from the file.
    fn stored_names(&self) -> String {
        sqlite(
            &self.files.state_file("keystore.db"),
            "SELECT name FROM keys ORDER BY name",
        )
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every ciphertext answers on `daemon` as it did on A; and A's answers
/// were the drill's: plaintexts for live versions, `VersionRevoked` for a
/// revoked or too old version, `KeyDisabled`, `KeyRevoked`.
fn assert_answers_as_on_a(old: &OldHost, client: &mut Client) {
    let mut unwrapped = 0;
    for sample in &old.samples {
        let expected = expected_answer(&sample.key, sample.version, &sample.plaintext);
        assert_eq!(
            sample.on_a, expected,
            "A: {} v{}",
            sample.key, sample.version
        );
        assert_eq!(
            unwrap_outcome(client, sample),
            expected,
            "restored host: {} v{}",
            sample.key,
            sample.version
        );
        unwrapped += usize::from(expected.is_ok());
    }
    assert!(unwrapped >= old.samples.len() / 2, "{unwrapped}");
    let mut described = describe_all(client);
    described.retain(|name, _| old.keys.contains_key(name));
    assert_eq!(described, old.keys, "ids, names, versions, states");
}

#[test]
fn drill_a_lost_host_is_restored_with_two_of_three_custodians() {
    let old = old_host(3, 2, 40);
    assert!(old.samples.len() >= 300, "{}", old.samples.len());
    restore_on_two_hosts(&old);

    // The restored host escrows afresh: custodians put the old bundle
    // identity together, so it counts as exposed and is not adopted.
    let recipients: Vec<String> = old.custodians.iter().map(|c| c.recipient.clone()).collect();
    let new_dir = old.work.path().join("recovery-d");
    let d = new_host_with(&DaemonConfig::new().recovery(&recipients, 2, &new_dir));
    let out = d.restore(
        &old.bundle_recipient,
        &[
            "--identity",
            path(&old.custodians[1].key),
            "--identity",
            path(&old.custodians[2].key),
            path(&old.backup),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text(&out.stdout).contains("counts as exposed"),
        "{}",
        text(&out.stdout)
    );
    let daemon = d.start();
    let mut client = daemon.client();
    let recovery = client.status().expect("status").recovery;
    assert!(recovery.configured && recovery.current, "{recovery:?}");
    assert_ne!(
        recovery.bundle_recipient, old.bundle_recipient,
        "a new bundle identity, not the exposed one"
    );
    let keys = fs::read_dir(new_dir.join("keys"))
        .expect("D's recovery dir")
        .count();
    assert_eq!(keys, 5, "every restored key is escrowed anew");
    assert_answers_as_on_a(&old, &mut client);
}

#[test]
fn a_backup_in_the_documented_formats_restores_with_identities_or_shares() {
    restore_on_two_hosts(&written_host(3, 2, 1));
}

/// Host B restores `old` with custodians 1 and 3's identity files, host C
/// with custodians 2 and 3's shares as `age -d` decrypts them; both answer
/// every ciphertext as A did.
fn restore_on_two_hosts(old: &OldHost) {
    let backup = path(&old.backup);

    // Host B: two custodians' identity files.
    let b = new_host();
    let out = b.restore(
        &old.bundle_recipient,
        &[
            "--identity",
            path(&old.custodians[0].key),
            "--identity",
            path(&old.custodians[2].key),
            backup,
        ],
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert!(
        text(&out.stdout).contains("restored 5 keys"),
        "{}",
        text(&out.stdout)
    );
    // The audit event (on stderr here; the journal under systemd), with
    // what came in and who opened it.
    let audit = stderr(&out);
    let custodian = |n: usize| fingerprint(&old.custodians[n].recipient);
    let revoked: usize = old
        .keys
        .values()
        .map(|k| k.matches(":Revoked").count())
        .sum();
    assert!(revoked >= 2, "the drill revokes versions: {:?}", old.keys);
    for field in [
        "MESSAGE_ID=\"7725a34402704e0ca1961764a810e6a6\"".to_string(),
        "HOSTKMS_KEYS=5".to_string(),
        format!("HOSTKMS_REVOKED_VERSIONS={revoked}"),
        format!("HOSTKMS_CUSTODIANS=\"{},{}\"", custodian(0), custodian(2)),
        format!(
            "HOSTKMS_BUNDLE_FINGERPRINT=\"{}\"",
            fingerprint(&old.bundle_recipient)
        ),
    ] {
        assert!(audit.contains(&field), "{field} in {audit}");
    }
    let daemon = b.start();
    let mut client = daemon.client();
    assert_answers_as_on_a(old, &mut client);
    // The restore bound the new store to B's TPM counter, with the digest
    // of the keys it brought: the daemon's start finds them level.
    assert!(client.status().expect("status").rollback.bound);
    assert!(
        daemon
            .log()
            .contains("the key store matches its TPM rollback counter"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        client.describe_key("app-cold").expect("describe").state,
        KeyState::Disabled
    );
    // The restored keys are sealed under B's own root key, and work for
    // new ciphertexts too.
    let wrapped = client
        .wrap("app-db", b"after the restore", &context(0))
        .expect("wrap on B");
    assert_eq!(
        client
            .unwrap(wrapped.ciphertext.as_bytes(), &context(0), None)
            .expect("unwrap on B")
            .plaintext
            .expose(),
        b"after the restore"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    // Host C: two shares, each decrypted by its custodian with plain
    // `age -d` from the custodians/ files of the backup tar.
    let unpacked = old.work.path().join("unpacked");
    fs::create_dir(&unpacked).expect("mkdir");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&old.backup)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .expect("tar");
    assert!(untar.status.success(), "tar -xf: {}", stderr(&untar));
    let mut shares = Vec::new();
    for custodian in &old.custodians[1..] {
        let escrowed = find_files(&unpacked, "custodians");
        let share = escrowed
            .iter()
            .find_map(|file| {
                let out = age_decrypt(&custodian.key, file);
                out.status.success().then_some(out.stdout)
            })
            .expect("each custodian opens one share with age -d");
        let share_path = old.work.path().join(format!("share-{}", shares.len() + 1));
        fs::write(&share_path, share).expect("write share");
        shares.push(share_path);
    }
    let c = new_host();
    let out = c.restore(
        &old.bundle_recipient,
        &[
            "--share",
            path(&shares[0]),
            "--share",
            path(&shares[1]),
            backup,
        ],
    );
    assert!(
        out.status.success(),
        "restore with shares: {}",
        stderr(&out)
    );
    let daemon = c.start();
    assert_answers_as_on_a(old, &mut daemon.client());
}

/// The files of directory `dir` (relative to `root`'s one recovery
/// directory, wherever the tar put it).
fn find_files(root: &Path, dir: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in fs::read_dir(&at).expect("read dir") {
            let entry = entry.expect("entry");
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().and_then(Path::file_name) == Some(dir.as_ref()) {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn too_few_or_wrong_custodians_are_refused_naming_the_ones_needed() {
    let old = written_host(3, 2, 1);
    let backup = path(&old.backup);
    let host = new_host();
    let stranger = old.work.path().join("stranger.key");
    age_keygen(&stranger);
    for args in [
        vec!["--identity", path(&old.custodians[1].key), backup],
        vec![
            "--identity",
            path(&old.custodians[1].key),
            "--identity",
            path(&stranger),
            backup,
        ],
        vec![backup],
    ] {
        let out = host.restore(&old.bundle_recipient, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(message.contains('2'), "{args:?} says how many: {message}");
        assert!(
            message.contains("MESSAGE_ID=\"cb05f1bc80be4862bc959b256cdd4f63\""),
            "{args:?} is audited as a failed restore: {message}"
        );
        for custodian in &old.custodians {
            assert!(
                message.contains(&fingerprint(&custodian.recipient)),
                "{args:?} names every custodian the bundle expects: {message}"
            );
        }
        assert!(
            !host.files.state_dir.exists(),
            "{args:?}: a refused restore touches no state dir"
        );
    }
    let out = host.restore(
        &old.bundle_recipient,
        &["--identity", path(&stranger), backup],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&fingerprint(&public_key(&stranger))),
        "a wrong identity is named: {}",
        stderr(&out)
    );
}

#[test]
fn a_store_with_keys_needs_merge_which_keeps_its_keys_and_refuses_a_taken_name() {
    let old = written_host(2, 1, 1);
    let backup = path(&old.backup);
    let identity = path(&old.custodians[0].key);
    let host = new_host();
    let daemon = host.start();
    let mut client = daemon.client();
    client.create_key("b-local").expect("create");
    let local = client.wrap("b-local", b"kept", &context(7)).expect("wrap");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    let out = host.restore(&old.bundle_recipient, &["--identity", identity, backup]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--merge"), "{}", stderr(&out));
    assert_eq!(host.stored_names(), "b-local\n", "nothing imported");

    let out = host.restore(
        &old.bundle_recipient,
        &["--merge", "--identity", identity, backup],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let daemon = host.start();
    let mut client = daemon.client();
    assert_eq!(
        client
            .unwrap(local.ciphertext.as_bytes(), &context(7), None)
            .expect("the store's own key still unwraps")
            .plaintext
            .expose(),
        b"kept"
    );
    let mut keys = describe_all(&mut client);
    keys.remove("b-local");
    assert_eq!(keys, old.keys);
    for sample in &old.samples {
        assert_eq!(unwrap_outcome(&mut client, sample), sample.on_a);
    }
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    // Again: every key id is there already, so each is kept as it is.
    let before = fs::read(host.files.state_file("keystore.db")).expect("db");
    let out = host.restore(
        &old.bundle_recipient,
        &["--merge", "--identity", identity, backup],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text(&out.stdout).contains("restored 0 keys"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        host.stored_names(),
        "app-cold\napp-db\napp-files\napp-gone\napp-plain\nb-local\n"
    );
    let _ = before;

    // A store whose own key has a backup key's name (another id).
    let other = new_host();
    let daemon = other.start();
    let taken = daemon.client().create_key("app-db").expect("create");
    drop(daemon);
    let out = other.restore(
        &old.bundle_recipient,
        &["--merge", "--identity", identity, backup],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(message.contains("\"app-db\""), "{message}");
    assert!(
        message.contains(&hex(&taken.id)),
        "names the store's key: {message}"
    );
    assert_eq!(other.stored_names(), "app-db\n", "nothing imported");
}

#[test]
fn restore_refuses_while_the_daemon_runs() {
    let old = written_host(1, 1, 1);
    let host = new_host();
    let daemon = host.start();
    let out = host.restore(
        &old.bundle_recipient,
        &[
            "--identity",
            path(&old.custodians[0].key),
            path(&old.backup),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use by"), "{}", stderr(&out));
    assert!(daemon.client().list_keys().expect("list").is_empty());
}

/// A copy of `old`'s recovery directory at `work/name`.
fn copy_of(old: &OldHost, name: &str) -> PathBuf {
    let copy = old.work.path().join(name);
    let out = Command::new("cp")
        .arg("-a")
        .arg(&old.recovery_dir)
        .arg(&copy)
        .output()
        .expect("cp");
    assert!(out.status.success(), "cp -a: {}", stderr(&out));
    copy
}

fn key_file(dir: &Path, old: &OldHost, name: &str) -> PathBuf {
    let key = old
        .material
        .iter()
        .find(|k| k.name == name)
        .expect("a key of the backup");
    dir.join("keys").join(format!("{}.age", key.id))
}

#[test]
fn a_tampered_planted_stale_or_incomplete_backup_imports_nothing() {
    let old = written_host(1, 1, 5);
    let bundle = escrow::BundleIdentity::from_text(old.bundle_text.as_deref().expect("written"))
        .expect("bundle");
    let identity = path(&old.custodians[0].key);
    let host = new_host();
    let daemon = host.start();
    daemon.client().create_key("b-local").expect("create");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let db = host.files.state_file("keystore.db");
    let before = fs::read(&db).expect("db");

    // A flipped byte in a key file.
    let flipped = copy_of(&old, "flipped");
    let file = key_file(&flipped, &old, "app-db");
    let mut bytes = fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&file, bytes).expect("write");

    // The MANIFEST edited: the disabled key listed as enabled.
    let edited = copy_of(&old, "edited");
    let manifest = fs::read_to_string(edited.join("MANIFEST")).expect("MANIFEST");
    assert!(manifest.contains("\"state\":\"disabled\""));
    fs::write(
        edited.join("MANIFEST"),
        manifest.replace("\"state\":\"disabled\"", "\"state\":\"enabled\""),
    )
    .expect("write");

    // A record planted by someone who knows only the public bundle
    // recipient: the plain age CLI encrypts it, but its MAC is their own.
    let planted = copy_of(&old, "planted");
    let mut forged = old.material[0].clone();
    forged.id = KeyId([0x5a; 16]);
    forged.name = "planted".to_string();
    let text = record::encode(
        &forged,
        1,
        &record::MacKey::from_bytes(zeroize::Zeroizing::new([7u8; 32])),
    )
    .expect("record");
    let plain = old.work.path().join("forged.json");
    fs::write(&plain, text.as_slice()).expect("write");
    let out = Command::new("age")
        .arg("-r")
        .arg(&old.bundle_recipient)
        .arg("-o")
        .arg(planted.join("keys").join(format!("{}.age", forged.id)))
        .arg(&plain)
        .output()
        .expect("age");
    assert!(out.status.success(), "age -r: {}", stderr(&out));

    // A stale record mixed in: an authentic older revision of app-db,
    // which still holds version 1, revoked since.
    let stale = copy_of(&old, "stale");
    let mut older = old
        .material
        .iter()
        .find(|k| k.name == "app-db")
        .expect("app-db")
        .clone();
    older.versions[0].kek = Some(random_kek());
    write_record(&stale, &bundle, &older, 4);

    // A key file missing from the copy.
    let incomplete = copy_of(&old, "incomplete");
    fs::remove_file(key_file(&incomplete, &old, "app-plain")).expect("rm");

    for (dir, expected) in [
        (&flipped, "does not open under the bundle identity"),
        (&edited, "MANIFEST does not authenticate"),
        (&planted, "does not authenticate"),
        (&stale, "older than revision 5 the MANIFEST lists"),
        (&incomplete, "is missing"),
    ] {
        let out = host.restore(
            &old.bundle_recipient,
            &["--merge", "--identity", identity, path(dir)],
        );
        assert_eq!(out.status.code(), Some(1), "{dir:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{dir:?}: {}", stderr(&out));
        assert_eq!(
            fs::read(&db).expect("db"),
            before,
            "{dir:?}: the store is untouched"
        );
    }
    assert_eq!(host.stored_names(), "b-local\n");

    // A record newer than the MANIFEST (copied while the key changed) is
    // what the store had last: accepted.
    let newer = copy_of(&old, "newer");
    let current = old
        .material
        .iter()
        .find(|k| k.name == "app-db")
        .expect("app-db");
    write_record(&newer, &bundle, current, 6);
    let out = host.restore(
        &old.bundle_recipient,
        &["--merge", "--identity", identity, path(&newer)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let daemon = host.start();
    assert_answers_as_on_a(&old, &mut daemon.client());
}

#[test]
fn run_as_root_it_writes_as_the_daemons_user_after_reading_roots_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let old = written_host(1, 1, 1);
    let tpm = Swtpm::start();
    // A state dir another user can reach: below a 0755 directory.
    let public = tempfile::Builder::new()
        .prefix("hostkms-restore-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(public.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    files.state_dir = public.path().join("state");
    files.write_config(&tpm.tcti(), &DaemonConfig::new());
    let host = NewHost { tpm, files };
    // The backup and the identity are root's own (in a 0700 directory):
    // read before the restore becomes the daemon's user.
    let out = host.restore(
        &old.bundle_recipient,
        &[
            "--user",
            "nobody",
            "--identity",
            path(&old.custodians[0].key),
            path(&old.backup),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text(&out.stdout).contains("owned by uid 65534"),
        "{}",
        text(&out.stdout)
    );
    let mut seen = vec![host.files.state_dir.clone()];
    for entry in fs::read_dir(&host.files.state_dir).expect("state dir") {
        seen.push(entry.expect("entry").path());
    }
    assert!(seen.len() >= 4, "root blobs and the store: {seen:?}");
    for path in &seen {
        let meta = fs::symlink_metadata(path).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path:?}");
    }
    let mode = fs::metadata(&host.files.state_dir).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(
        text(&out.stdout).contains("restored 5 keys"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn restore_killed_at_any_moment_leaves_all_keys_or_none() {
    use std::time::Instant;
    let work = private_tempdir();
    let custodian = custodians(work.path(), 1).remove(0);
    let bundle = escrow::BundleIdentity::generate().expect("bundle");
    let keys: Vec<KeyMaterial> = (0..1000)
        .map(|n| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&random_kek()[..16]);
            KeyMaterial {
                settings: Default::default(),
                id: KeyId(id),
                name: format!("key-{n:05}"),
                created: 1_700_000_000,
                state: KeyState::Enabled,
                min_decryption_version: 1,
                versions: vec![VersionMaterial {
                    number: 1,
                    created: 1_700_000_000,
                    kek: Some(random_kek()),
                    public_key: None,
                }],
                key_type: agent_proto::KeyType::Aes256Gcm,
            }
        })
        .collect();
    let dir = work.path().join("recovery");
    write_recovery_dir(
        &dir,
        &bundle,
        std::slice::from_ref(&custodian.recipient),
        1,
        &keys,
        1,
    );
    // How long a whole restore takes here, to spread the kills over it.
    let probe = new_host();
    let started = Instant::now();
    let out = probe.restore(
        bundle.recipient(),
        &["--identity", path(&custodian.key), path(&dir)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = started.elapsed();
    let all = format!("{}\n", keys.len());
    assert_eq!(
        sqlite(
            &probe.files.state_file("keystore.db"),
            "SELECT count(*) FROM keys"
        ),
        all
    );
    let mut interrupted = 0;
    for step in 1..=5 {
        let host = new_host();
        let mut child = Command::new(HOSTKMSD)
            .arg("restore")
            .arg("--config")
            .arg(&host.files.config)
            .arg("--bundle")
            .arg(bundle.recipient())
            .arg("--identity")
            .arg(&custodian.key)
            .arg(&dir)
            .env("HOSTKMS_LOG_TARGET", "stderr")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn restore");
        std::thread::sleep(whole.mul_f64(f64::from(step) / 6.0));
        let _ = child.kill();
        let _ = child.wait();
        let db = host.files.state_file("keystore.db");
        let count = if db.exists() {
            sqlite(&db, "SELECT count(*) FROM keys")
        } else {
            "0\n".to_string()
        };
        assert!(
            count == "0\n" || count == all,
            "kill -9 at step {step}/6 of {whole:?} left {count} keys"
        );
        // Whatever the kill left, the restore completes or the store is
        // already whole; then the daemon serves every key.
        if count == "0\n" {
            interrupted += 1;
            let out = host.restore(
                bundle.recipient(),
                &["--identity", path(&custodian.key), path(&dir)],
            );
            assert!(out.status.success(), "step {step}: {}", stderr(&out));
        }
        let daemon = host.start();
        assert_eq!(
            daemon.client().list_keys().expect("list").len(),
            keys.len(),
            "step {step}"
        );
        let (status, log) = daemon.stop();
        assert!(status.success(), "{log}");
    }
    assert!(
        interrupted > 0,
        "no kill landed before the restore was done"
    );
}

/// Anyone can make a backup whose custodian files the real custodians open:
/// the custodians' recipients are public (every MANIFEST lists them), and age
/// says nothing of who encrypted a file. So the bundle the backup was made
/// for is checked against the one the operator names, written down when the
/// old host escrowed it; a forged backup would otherwise plant keys whose
/// secrets its maker knows.
#[test]
fn a_backup_forged_for_the_real_custodians_is_refused_by_the_named_bundle() {
    let work = private_tempdir();
    let custodian = custodians(work.path(), 1).remove(0);
    let genuine = escrow::BundleIdentity::generate().expect("bundle");
    let forged = escrow::BundleIdentity::generate().expect("bundle");
    let keys = vec![KeyMaterial {
        settings: Default::default(),
        id: KeyId([0x77; 16]),
        name: "app-db".to_string(),
        created: 1_700_000_000,
        state: KeyState::Enabled,
        min_decryption_version: 1,
        versions: vec![VersionMaterial {
            number: 1,
            created: 1_700_000_000,
            kek: Some(random_kek()),
            public_key: None,
        }],
        key_type: agent_proto::KeyType::Aes256Gcm,
    }];
    let dir = work.path().join("forged");
    write_recovery_dir(
        &dir,
        &forged,
        std::slice::from_ref(&custodian.recipient),
        1,
        &keys,
        1,
    );
    let host = new_host();
    let identity = path(&custodian.key);
    for named in [
        genuine.recipient().to_string(),
        fingerprint(genuine.recipient()),
    ] {
        let out = host.restore(&named, &["--identity", identity, path(&dir)]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{message}");
        assert!(message.contains("or it was forged"), "{message}");
        assert!(
            message.contains(&fingerprint(forged.recipient())),
            "names the bundle the backup was made for: {message}"
        );
        assert!(
            message.contains("MESSAGE_ID=\"cb05f1bc80be4862bc959b256cdd4f63\""),
            "audited as a failed restore: {message}"
        );
        assert!(
            !host.files.state_dir.exists(),
            "a refused restore touches no state dir"
        );
    }
    // The same backup restores when the operator names its own bundle.
    let out = host.restore(
        &fingerprint(forged.recipient()).to_uppercase(),
        &["--identity", identity, path(&dir)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Each version of key `name` and its public key column, hex, straight
/// from the store file (the column is in clear): one line per version.
fn stored_public_keys(files: &DaemonFiles, name: &str) -> String {
    sqlite(
        &files.state_file("keystore.db"),
        &format!(
            "SELECT version, hex(public_key) FROM versions \
             WHERE key_id = (SELECT id FROM keys WHERE name = '{name}') ORDER BY version"
        ),
    )
}

#[test]
fn signing_and_hmac_keys_are_restored_on_a_new_host_with_their_types_and_public_keys() {
    use p256::pkcs8::DecodePublicKey;
    let work = private_tempdir();
    let custodian = custodians(work.path(), 1).remove(0);
    let recovery_dir = work.path().join("recovery");
    let config =
        DaemonConfig::new().recovery(std::slice::from_ref(&custodian.recipient), 1, &recovery_dir);

    // Host A: an ed25519 key signed with at versions 1 and 2, then version
    // 1 revoked; an ml-dsa-65 key; an hmac-sha256 key and a tag.
    let Harness { tpm, files, daemon } = Harness::start(config);
    let mut a = daemon.client();
    a.create_key_of_type("rel", KeyType::Ed25519)
        .expect("create rel");
    let old_signature = a.sign("rel", b"release 1.0").expect("sign v1");
    assert_eq!(old_signature.version, 1);
    let rel_v1 = a.public_key("rel", Some(1)).expect("public key").spki_der;
    a.rotate("rel").expect("rotate");
    let signature = a.sign("rel", b"release 2.0").expect("sign v2");
    assert_eq!(signature.version, 2);
    a.revoke("rel", Some(1)).expect("revoke v1");
    a.create_key_of_type("pq", KeyType::MlDsa65)
        .expect("create pq");
    let pq_signature = a.sign("pq", b"post-quantum").expect("sign pq");
    a.create_key_of_type("tok", KeyType::HmacSha256)
        .expect("create tok");
    let tag = a.mac("tok", b"token 42").expect("mac");
    let public_on_a = |a: &mut Client, key: &str, version: u32| {
        a.public_key(key, Some(version))
            .unwrap_or_else(|e| panic!("public key of {key} v{version}: {e}"))
            .spki_der
    };
    let rel_v2 = public_on_a(&mut a, "rel", 2);
    let pq_v1 = public_on_a(&mut a, "pq", 1);
    let stored_on_a: Vec<String> = ["rel", "pq", "tok"]
        .iter()
        .map(|name| stored_public_keys(&files, name))
        .collect();
    let bundle_recipient = a.status().expect("status").recovery.bundle_recipient;
    let backup = work.path().join("backup.tar");
    ok(cli(&files.socket, &["backup", "--out", path(&backup)]));
    drop(a);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    drop(tpm);
    fs::remove_dir_all(&files.state_dir).expect("destroy A's state dir");
    drop(files);

    // Host B: another TPM, an empty state dir.
    let b = new_host();
    let out = b.restore(
        &bundle_recipient,
        &["--identity", path(&custodian.key), path(&backup)],
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let printed = text(&out.stdout);
    for (name, key_type) in [
        ("rel", "ed25519"),
        ("pq", "ml-dsa-65"),
        ("tok", "hmac-sha256"),
    ] {
        assert!(
            printed.lines().any(
                |line| line.starts_with(&format!("  restored \"{name}\" (id "))
                    && line.ends_with(&format!(", {key_type})"))
            ),
            "{printed}"
        );
    }
    let daemon = b.start();
    let mut client = daemon.client();
    let types: BTreeMap<String, KeyType> = client
        .list_keys()
        .expect("list")
        .iter()
        .map(|key| (key.name.clone(), key.key_type))
        .collect();
    assert_eq!(
        types,
        BTreeMap::from([
            ("pq".to_string(), KeyType::MlDsa65),
            ("rel".to_string(), KeyType::Ed25519),
            ("tok".to_string(), KeyType::HmacSha256),
        ])
    );
    // The same public keys, the revoked version's included.
    let stored_on_b: Vec<String> = ["rel", "pq", "tok"]
        .iter()
        .map(|name| stored_public_keys(&b.files, name))
        .collect();
    assert_eq!(stored_on_b, stored_on_a);
    assert_eq!(stored_on_b[0].lines().count(), 2, "{}", stored_on_b[0]);
    assert_eq!(
        client.public_key("rel", None).expect("public key").spki_der,
        rel_v2
    );
    // The revoked version's public key stays retrievable, for audit.
    let revoked = client.public_key("rel", Some(1)).expect("public key of v1");
    assert!(revoked.revoked);
    assert_eq!(revoked.spki_der, rel_v1);
    let verifying_v1 =
        ed25519_dalek::VerifyingKey::from_public_key_der(&revoked.spki_der).expect("SPKI");
    let signature_v1 =
        ed25519_dalek::Signature::from_slice(&old_signature.signature).expect("64 bytes");
    assert!(
        verifying_v1
            .verify_strict(b"release 1.0", &signature_v1)
            .is_ok(),
        "an old release signature still checks outside hostkms"
    );
    assert_eq!(
        client
            .public_key("pq", Some(1))
            .expect("public key")
            .spki_der,
        pq_v1
    );
    // The same secrets: A's signatures and tag verify on B, B's new
    // signature verifies under A's public key outside hostkms, B's tag is
    // A's (HMAC is deterministic).
    let checks = [
        client.verify("rel", b"release 2.0", &signature.signature, None),
        client.verify("pq", b"post-quantum", &pq_signature.signature, None),
        client.verify_mac("tok", b"token 42", &tag.tag, None),
    ];
    for check in checks {
        assert!(check.expect("verify").valid);
    }
    let on_b = client.sign("rel", b"release 2.1").expect("sign on B");
    assert_eq!(on_b.version, 2);
    let verifying = ed25519_dalek::VerifyingKey::from_public_key_der(&rel_v2).expect("A's SPKI");
    let on_b_signature = ed25519_dalek::Signature::from_slice(&on_b.signature).expect("64 bytes");
    assert!(
        verifying
            .verify_strict(b"release 2.1", &on_b_signature)
            .is_ok(),
        "B signs with A's key"
    );
    assert_eq!(
        client.mac("tok", b"token 42").expect("mac on B").tag,
        tag.tag
    );
    // Revoked on A, revoked on B: its signatures no longer verify here.
    let old = client
        .verify("rel", b"release 1.0", &old_signature.signature, None)
        .expect("verify");
    assert!(!old.valid);
    match client.verify("rel", b"release 1.0", &old_signature.signature, Some(1)) {
        Err(ClientError::Daemon { code, .. }) => assert_eq!(code, ErrorCode::VersionRevoked),
        other => panic!("expected VersionRevoked, got {other:?}"),
    }
}

#[test]
fn a_merge_that_brings_a_store_keys_id_under_another_type_imports_nothing() {
    let old = written_host(1, 1, 1);
    let identity = path(&old.custodians[0].key);
    let host = new_host();
    let out = host.restore(
        &old.bundle_recipient,
        &["--identity", identity, path(&old.backup)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let names = host.stored_names();

    // A second backup, MACed and escrowed as a real one: app-plain's id as
    // an hmac-sha256 key, and a key the store does not have.
    let plain = old
        .material
        .iter()
        .find(|k| k.name == "app-plain")
        .expect("app-plain");
    let mut retyped = plain.clone();
    retyped.key_type = KeyType::HmacSha256;
    let mut fresh = plain.clone();
    fresh.id = KeyId([0x5a; 16]);
    fresh.name = "app-new".to_string();
    let bundle = escrow::BundleIdentity::generate().expect("bundle");
    let dir = old.work.path().join("recovery-retyped");
    let recipients = [old.custodians[0].recipient.clone()];
    write_recovery_dir(&dir, &bundle, &recipients, 1, &[retyped, fresh], 1);
    let backup = old.work.path().join("retyped.tar");
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(&backup)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(tar.status.success(), "tar -cf: {}", stderr(&tar));

    let out = host.restore(
        bundle.recipient(),
        &["--merge", "--identity", identity, path(&backup)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("hmac-sha256") && message.contains("aes256-gcm"),
        "names both types: {message}"
    );
    assert!(message.contains(&plain.id.to_string()), "{message}");
    assert_eq!(host.stored_names(), names, "nothing imported");
    let daemon = host.start();
    let info = daemon.client().describe_key("app-plain").expect("describe");
    assert_eq!(info.key_type, KeyType::Aes256Gcm);
}

/// A key as [`write_recovery_dir`] writes it: one live version with `kek`,
/// made at `created`.
fn one_version_key(
    name: &str,
    key_type: KeyType,
    kek: &zeroize::Zeroizing<[u8; 32]>,
    created: u64,
) -> KeyMaterial {
    let mut id = [0u8; 16];
    id.copy_from_slice(&random_kek()[..16]);
    KeyMaterial {
        id: KeyId(id),
        name: name.to_string(),
        created,
        key_type,
        state: KeyState::Enabled,
        min_decryption_version: 1,
        settings: Default::default(),
        versions: vec![VersionMaterial {
            number: 1,
            created,
            kek: Some(kek.clone()),
            public_key: None,
        }],
    }
}

#[test]
fn a_key_pending_deletion_is_restored_disabled_and_every_key_keeps_its_metadata() {
    use aes_gcm::KeyInit;
    let work = private_tempdir();
    let custodian = custodians(work.path(), 1).remove(0);
    let bundle = escrow::BundleIdentity::generate().expect("bundle");
    let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // "orders": pending deletion on 2027-01-15T08:00:00Z, described,
    // tagged, rotating every 90 days. "tokens": an HMAC key, enabled,
    // tagged, rotating every 30 days. "plain": none of it. Made now, so
    // no rotation by age is due on the new host.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let orders_kek = random_kek();
    let mut orders = one_version_key("orders", KeyType::Aes256Gcm, &orders_kek, now);
    orders.state = KeyState::PendingDeletion;
    orders.settings.description = "orders DB, \"EU\" shard é".to_string();
    orders.settings.tags = tags(&[("env", "prod"), ("team", "payments")]);
    orders.settings.rotation_period = Some(90 * 86_400);
    orders.settings.deletion_due = Some(hostkms::keystore::DeletionDue {
        wall: 1_800_000_000,
        elapsed: 30 * 86_400,
    });
    let mut tokens = one_version_key("tokens", KeyType::HmacSha256, &random_kek(), now);
    tokens.settings.tags = tags(&[("env", "dev")]);
    tokens.settings.rotation_period = Some(30 * 86_400);
    let plain = one_version_key("plain", KeyType::Aes256Gcm, &random_kek(), now);
    let keys = vec![orders.clone(), tokens.clone(), plain.clone()];
    let recovery_dir = work.path().join("recovery");
    write_recovery_dir(
        &recovery_dir,
        &bundle,
        std::slice::from_ref(&custodian.recipient),
        1,
        &keys,
        2,
    );
    // Format 3 only for the keys that need it: an older restore still
    // reads "plain".
    for (key, format) in [(&orders, 3), (&tokens, 3), (&plain, 1)] {
        let file =
            fs::read(recovery_dir.join("keys").join(format!("{}.age", key.id))).expect("read");
        let text = agefile::decrypt(&[bundle.age_identity().clone()], &file, 1 << 20).expect("age");
        let value: serde_json::Value = serde_json::from_slice(&text).expect("json");
        assert_eq!(value["format"], format, "{}", key.name);
    }
    let sample = {
        let cipher = aes_gcm::Aes256Gcm::new(&(*orders_kek).into());
        hostkms::envelope::wrap(&cipher, orders.id, 1, b"order 17", &context(17)).expect("wrap")
    };

    let b = new_host();
    let out = b.restore(
        bundle.recipient(),
        &["--identity", path(&custodian.key), path(&recovery_dir)],
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let printed = text(&out.stdout);
    let told = format!(
        "  restored \"orders\" (id {}, aes256-gcm), disabled: it was scheduled for deletion on 2027-01-15T08:00:00Z; schedule it again if still wanted (hostkms schedule-deletion orders)",
        orders.id
    );
    assert!(printed.lines().any(|line| line == told), "{printed}");
    assert_eq!(
        printed.matches("scheduled for deletion").count(),
        1,
        "{printed}"
    );
    let logged = stderr(&out);
    assert!(
        logged.contains(&format!(
            "restored key \"orders\" (id {}) disabled: it was scheduled for deletion on 2027-01-15T08:00:00Z; schedule it again if still wanted",
            orders.id
        )),
        "{logged}"
    );

    let daemon = b.start();
    let mut client = daemon.client();
    let described: BTreeMap<String, KeyInfo> = client
        .list_keys()
        .expect("list")
        .into_iter()
        .map(|key| (key.name.clone(), key))
        .collect();
    let shown = |name: &str| {
        let key = &described[name];
        (
            key.state,
            key.description.clone(),
            key.tags.clone(),
            key.rotation_period,
            key.next_rotation,
            key.deletion_date,
        )
    };
    assert_eq!(
        shown("orders"),
        (
            KeyState::Disabled,
            orders.settings.description.clone(),
            orders.settings.tags.clone(),
            Some(90 * 86_400),
            None,
            None
        ),
        "disabled, without its deletion, with its metadata"
    );
    assert_eq!(
        shown("tokens"),
        (
            KeyState::Enabled,
            String::new(),
            tokens.settings.tags.clone(),
            Some(30 * 86_400),
            Some(now + 30 * 86_400),
            None
        )
    );
    assert_eq!(
        shown("plain"),
        (
            KeyState::Enabled,
            String::new(),
            BTreeMap::new(),
            None,
            None,
            None
        )
    );
    // Nothing destroyed: disabled refuses, enabled unwraps.
    let unwrap = |client: &mut Client| match client.unwrap(&sample, &context(17), None) {
        Ok(unwrapped) => Ok(unwrapped.plaintext.expose().to_vec()),
        Err(ClientError::Daemon { code, .. }) => Err(code),
        Err(e) => panic!("unwrap: {e}"),
    };
    assert_eq!(unwrap(&mut client), Err(ErrorCode::KeyDisabled));
    client.enable("orders").expect("enable");
    assert_eq!(unwrap(&mut client), Ok(b"order 17".to_vec()));
}
