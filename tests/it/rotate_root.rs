//! Root-key rotation against a real (software) TPM and the real daemon:
//! `hostkms rotate-root` re-seals the store under a new root key and every
//! ciphertext still unwraps; only admins may; and a crash at any point
//! (kill -9 during the TPM seal, at random moments, and every file state a
//! crash between two steps leaves) starts again with one of the two keys
//! in force and a store that matches it.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_proto::{EncryptionContext, ErrorCode};
use nix::sys::signal::Signal;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, cli, cli_as, root_key_file_names,
    root_key_files, seal_generation, sqlite, stderr, text,
};

/// The record of a rotation in progress.
const NEXT_RECORD: &str = "root-next.seal";
/// How long a freshly started daemon is left to finish its own start-up
/// TPM work before a rotation is timed or killed.
const SETTLE: Duration = Duration::from_millis(300);

/// A ciphertext and what it must unwrap to; `None` for one whose version
/// is revoked.
struct Sealed {
    ciphertext: Vec<u8>,
    plaintext: Option<Vec<u8>>,
}

fn status_check(daemon: &Daemon) -> String {
    daemon.client().status().expect("status").root_key_check
}

/// The check value the key store records, read with sqlite3.
fn store_check(files: &DaemonFiles) -> String {
    sqlite(
        &files.state_file("keystore.db"),
        "SELECT value FROM meta WHERE name = 'root_key_check'",
    )
    .trim()
    .to_string()
}

/// The sealed root key's files: `root.seal` and the copies, with contents.
fn root_blobs(files: &DaemonFiles) -> Vec<(String, Vec<u8>)> {
    root_key_files(&files.state_dir)
}

/// What no start may leave behind: `root-next.seal`, copies of a
/// generation `root.seal` does not name (an unfinished rotation's, or a
/// finished one's old key), and blobs of the layout before `root.seal`.
fn next_blobs_left(files: &DaemonFiles) -> Vec<String> {
    let current = format!("root-{}-", seal_generation(&files.state_dir));
    root_key_file_names(&files.state_dir)
        .into_iter()
        .filter(|name| name != "root.seal" && !name.starts_with(&current))
        .collect()
}

/// Keys "a" (versions 1 to 3, version 1 revoked after wrapping with it),
/// "b" (disabled after wrapping) and "c", with ciphertexts of each.
fn populate(daemon: &Daemon) -> Vec<Sealed> {
    let mut client = daemon.client();
    let context = EncryptionContext::new();
    let mut sealed = Vec::new();
    for name in ["a", "b", "c"] {
        client.create_key(name).expect("create");
    }
    let mut wrap = |client: &mut agent_proto::Client, key: &str, n: usize, live: bool| {
        let plaintext = format!("{key} secret {n}").into_bytes();
        let wrapped = client.wrap(key, &plaintext, &context).expect("wrap");
        sealed.push(Sealed {
            ciphertext: wrapped.ciphertext.as_bytes().to_vec(),
            plaintext: live.then_some(plaintext),
        });
    };
    wrap(&mut client, "a", 0, false);
    client.rotate("a").expect("rotate");
    wrap(&mut client, "a", 1, true);
    client.rotate("a").expect("rotate");
    wrap(&mut client, "a", 2, true);
    client.revoke("a", Some(1)).expect("revoke v1");
    wrap(&mut client, "c", 3, true);
    wrap(&mut client, "c", 4, true);
    sealed
}

/// Every live ciphertext unwraps to its plaintext; revoked ones refuse.
fn assert_unwraps(daemon: &Daemon, sealed: &[Sealed], when: &str) {
    let mut client = daemon.client();
    let context = EncryptionContext::new();
    for (n, item) in sealed.iter().enumerate() {
        let result = client.unwrap(&item.ciphertext, &context, None);
        match &item.plaintext {
            Some(plaintext) => {
                let unwrapped = result
                    .unwrap_or_else(|e| panic!("{when}: ciphertext {n} does not unwrap: {e}"));
                assert_eq!(
                    unwrapped.plaintext.expose().to_vec(),
                    *plaintext,
                    "{when}: ciphertext {n}"
                );
            }
            None => {
                let error = result.expect_err("a revoked version unwrapped");
                assert_eq!(
                    error.code(),
                    Some(ErrorCode::VersionRevoked),
                    "{when}: {error}"
                );
            }
        }
    }
}

/// What every start must show: the key in force is the one the store
/// records, no next blobs are left, and every ciphertext unwraps.
fn assert_consistent(daemon: &Daemon, files: &DaemonFiles, sealed: &[Sealed], when: &str) {
    let shown = status_check(daemon);
    assert_eq!(shown, store_check(files), "{when}: status vs store");
    assert!(
        next_blobs_left(files).is_empty(),
        "{when}: next blobs left after start: {:?}",
        next_blobs_left(files)
    );
    assert_unwraps(daemon, sealed, when);
}

#[test]
fn rotate_root_reseals_the_store_under_a_new_key_and_every_ciphertext_still_unwraps() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let sealed = populate(&daemon);
    let old_check = status_check(&daemon);
    let old_blobs = root_blobs(&files);

    let out = cli(&daemon.socket, &["rotate-root"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = text(&out.stdout);
    let new_check = status_check(&daemon);
    assert_ne!(new_check, old_check, "status shows the new check value");
    assert!(
        printed.contains(&old_check) && printed.contains(&new_check),
        "the CLI prints both check values: {printed}"
    );
    assert_eq!(store_check(&files), new_check);
    let names = |blobs: &[(String, Vec<u8>)]| -> Vec<String> {
        blobs.iter().map(|(name, _)| name.clone()).collect()
    };
    assert_eq!(
        names(&old_blobs),
        ["root-1-auto.priv", "root-1-auto.pub", "root.seal"]
    );
    let new_blobs = root_blobs(&files);
    assert_eq!(
        names(&new_blobs),
        ["root-2-auto.priv", "root-2-auto.pub", "root.seal"],
        "the new key is the next generation, the old one's copies are gone"
    );
    assert_ne!(new_blobs[2].1, old_blobs[2].1, "root.seal was replaced");
    assert!(next_blobs_left(&files).is_empty());
    assert_unwraps(&daemon, &sealed, "after the rotation");

    // New keys, versions and wraps work under the new key.
    let mut client = daemon.client();
    let context = EncryptionContext::new();
    client.create_key("d").expect("create after rotation");
    client.rotate("a").expect("rotate after rotation");
    let mut sealed = sealed;
    for key in ["a", "d"] {
        let plaintext = format!("{key} after").into_bytes();
        let wrapped = client.wrap(key, &plaintext, &context).expect("wrap");
        sealed.push(Sealed {
            ciphertext: wrapped.ciphertext.as_bytes().to_vec(),
            plaintext: Some(plaintext),
        });
    }
    client.disable("b").expect("disable after rotation");
    drop(client);

    // Scripts get one JSON document; a second rotation starts from the first.
    let out = cli(&daemon.socket, &["--json", "rotate-root"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["old_check"], new_check.as_str(), "{json}");
    let new_check = json["new_check"].as_str().expect("new_check").to_string();
    assert_eq!(json["keys"], 4, "{json}");
    assert_eq!(status_check(&daemon), new_check);

    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("root key rotated by uid 0")
            && log.contains(&old_check)
            && log.contains(&new_check),
        "the rotation is audited with both check values: {log}"
    );

    // A restart unseals the new key and opens the store under it.
    let daemon = Daemon::start(&files).expect("restart after rotation");
    assert_eq!(status_check(&daemon), new_check);
    assert_consistent(&daemon, &files, &sealed, "after a restart");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("unsealed root key"), "{log}");
    assert!(log.contains(&new_check), "{log}");
}

#[test]
fn only_admins_may_rotate_the_root_key_whatever_they_are_granted() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::with_public_socket(
        &tpm.tcti(),
        &DaemonConfig::new().socket_mode("0666").grant(
            Grant::to_uid(65534)
                .keys(&["*"])
                .ops(&["create", "wrap", "unwrap", "rotate", "revoke"]),
        ),
    );
    let daemon = Daemon::start(&files).expect("start");
    let check = status_check(&daemon);
    let blobs = root_blobs(&files);

    let out = cli_as(65534, &files.socket, &["rotate-root"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only admins"),
        "the refusal says who may: {}",
        stderr(&out)
    );
    let mut client = daemon.client();
    assert_eq!(client.status().expect("status").root_key_check, check);
    assert_eq!(root_blobs(&files), blobs);
    assert!(next_blobs_left(&files).is_empty());
    drop(client);
    drop(daemon);
}

#[test]
fn a_kill_during_the_tpm_seal_leaves_the_old_key_and_changes_nothing() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    let sealed = populate(&daemon);
    let check = status_check(&daemon);
    let blobs = root_blobs(&files);
    let db = fs::read(files.state_file("keystore.db")).expect("keystore.db");

    tpm.pause();
    let socket = daemon.socket.clone();
    let asking = thread::spawn(move || {
        let client = agent_proto::Client::connect(&socket).expect("connect");
        client
            .set_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut client = client;
        client.rotate_root()
    });
    // The request is answered only once the TPM answers; give it time to
    // get there.
    thread::sleep(Duration::from_millis(700));
    let (_, log) = daemon.stop_with(Signal::SIGKILL);
    tpm.resume();
    let answer = asking.join().expect("asking thread");
    assert!(answer.is_err(), "no answer from a killed daemon: {log}");

    assert!(
        next_blobs_left(&files).is_empty(),
        "the next key was never written: {:?}",
        next_blobs_left(&files)
    );
    assert_eq!(root_blobs(&files), blobs, "the root blobs are untouched");
    assert_eq!(
        fs::read(files.state_file("keystore.db")).expect("keystore.db"),
        db,
        "the key store is untouched"
    );
    let daemon = Daemon::start(&files).expect("restart");
    assert_eq!(status_check(&daemon), check, "the old key is in force");
    assert_consistent(&daemon, &files, &sealed, "after a kill during the seal");
}

/// A small generator for the kill delays, seeded from the clock; the seed
/// is printed so a failing run can be repeated.
struct Delays(u64);

impl Delays {
    fn new() -> Delays {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("kill delays seeded with {seed}");
        Delays(seed)
    }

    /// A delay between 0 and `max`.
    fn next(&mut self, max: Duration) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

#[test]
fn kill_9_at_random_moments_of_a_rotation_always_restarts_with_a_matching_store() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    let sealed = populate(&daemon);
    // How long one rotation takes here, so the kills spread over all of
    // it (sealing, writing, the transaction, the renames) and a bit past.
    // Each round first lets the daemon's start-up TPM work (its entropy
    // reserve) settle, as the measured rotation did.
    thread::sleep(SETTLE);
    let started = Instant::now();
    daemon.client().rotate_root().expect("a first rotation");
    let span = started.elapsed().mul_f64(1.5) + Duration::from_millis(20);
    eprintln!("one rotation took {:?}", started.elapsed());
    let mut daemon = daemon;
    let mut delays = Delays::new();
    let (mut kept, mut replaced) = (0, 0);
    for round in 0..20 {
        let before = status_check(&daemon);
        thread::sleep(SETTLE);
        let socket = daemon.socket.clone();
        // The kill may come before the thread connects: then it asks
        // nothing, which is one more moment of the rotation's range.
        let asking = thread::spawn(move || {
            let mut client = agent_proto::Client::connect(&socket)?;
            client.set_timeout(Some(Duration::from_secs(60)))?;
            client.rotate_root()
        });
        thread::sleep(delays.next(span));
        let (_, log) = daemon.stop_with(Signal::SIGKILL);
        let _ = asking.join().expect("asking thread");
        daemon = Daemon::start(&files)
            .unwrap_or_else(|e| panic!("round {round}: restart refused: {e}\nbefore: {log}"));
        let after = status_check(&daemon);
        if after == before {
            kept += 1;
        } else {
            replaced += 1;
        }
        assert_consistent(&daemon, &files, &sealed, &format!("round {round}"));
    }
    eprintln!("{kept} rounds kept the old key, {replaced} put the new one in force");
    drop(daemon);
}

/// Copies the state dir's root-key files and key store into `to`.
fn snapshot(files: &DaemonFiles, to: &Path) {
    fs::create_dir_all(to).expect("snapshot dir");
    for name in root_key_file_names(&files.state_dir) {
        fs::copy(files.state_file(&name), to.join(&name)).expect("snapshot");
    }
    fs::copy(files.state_file("keystore.db"), to.join("keystore.db")).expect("snapshot");
}

/// Puts `from/name` in the state dir as `as_name` (mode 0600).
fn place(files: &DaemonFiles, from: &Path, name: &str, as_name: &str) {
    let target = files.state_file(as_name);
    fs::copy(from.join(name), &target).expect("place");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The files of a state dir, but the lock.
fn state_files(files: &DaemonFiles) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(&files.state_dir)
        .expect("state dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "lock")
        .map(|name| {
            let bytes = fs::read(files.state_file(&name)).expect("read");
            (name, bytes)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_start_completes_or_discards_the_rotation_a_crash_left_at_each_step() {
    // The TPM's state is snapshotted with each generation: a crash before
    // a rotation's commit leaves the rollback counter where the old store
    // says (a rotation counts it once committed), so each crash point runs
    // on the TPM of the store it leaves.
    let tpm_home = crate::harness::private_tempdir();
    let tpm_dir = tpm_home.path().join("tpm");
    fs::create_dir_all(&tpm_dir).expect("tpm dir");
    let mut tpm = Swtpm::start_in(&tpm_dir);
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let tpm_as_of = |tpm: Swtpm, generation: &Path| -> Swtpm {
        drop(tpm);
        for entry in fs::read_dir(&tpm_dir).expect("tpm dir") {
            fs::remove_file(entry.expect("entry").path()).expect("rm");
        }
        for entry in fs::read_dir(generation.join("tpm")).expect("tpm snapshot") {
            let path = entry.expect("entry").path();
            fs::copy(&path, tpm_dir.join(path.file_name().expect("name"))).expect("copy");
        }
        let tpm = Swtpm::start_in(&tpm_dir);
        files.write_config(&tpm.tcti(), &DaemonConfig::new());
        tpm
    };
    let work = files.root.path().join("snapshots");
    let (old, new, newer) = (work.join("old"), work.join("new"), work.join("newer"));

    // Three generations of the same state dir: old (root-1-*), then one
    // rotation (new, root-2-*), then another (newer, root-3-*).
    let mut daemon = Daemon::start(&files).expect("start");
    let sealed = populate(&daemon);
    let mut checks = vec![status_check(&daemon)];
    for snapshot_dir in [&old, &new, &newer] {
        if snapshot_dir != &old {
            let rotation = daemon.client().rotate_root().expect("rotate");
            assert_eq!(&rotation.old_check, checks.last().expect("a check"));
            checks.push(rotation.new_check);
        }
        let (exit, log) = daemon.stop();
        assert!(exit.success(), "{log}");
        snapshot(&files, snapshot_dir);
        drop(tpm);
        let tpm_snapshot = snapshot_dir.join("tpm");
        fs::create_dir_all(&tpm_snapshot).expect("tpm snapshot");
        for entry in fs::read_dir(&tpm_dir).expect("tpm dir") {
            let path = entry.expect("entry").path();
            fs::copy(&path, tpm_snapshot.join(path.file_name().expect("name"))).expect("copy");
        }
        tpm = Swtpm::start_in(&tpm_dir);
        files.write_config(&tpm.tcti(), &DaemonConfig::new());
        daemon = Daemon::start(&files).expect("restart");
    }
    drop(daemon);
    let (old_check, new_check, newer_check) =
        (checks[0].clone(), checks[1].clone(), checks[2].clone());
    for (dir, generation) in [(&old, 1), (&new, 2), (&newer, 3)] {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("snapshot")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("root"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("root-{generation}-auto.priv"),
                format!("root-{generation}-auto.pub"),
                "root.seal".to_string()
            ]
        );
    }

    // Each crash point: the files it leaves (each from a snapshot, under
    // its name there, placed under a name in the state dir), the store,
    // and which key must win. A rotation from generation 1 writes
    // root-2-auto.priv, root-2-auto.pub, then root-next.seal (step 1);
    // commits the store (step 2); renames root-next.seal over root.seal
    // and removes root-1-* (step 3). A discard removes root-next.seal,
    // then root-2-*.
    struct Crash {
        what: &'static str,
        /// (snapshot, name there, name in the state dir)
        files: &'static [(&'static str, &'static str, &'static str)],
        store: &'static str,
        new_key_wins: bool,
        /// What the log says about the rotation ("" for a plain unseal).
        said: &'static str,
    }
    const OLD: &[(&str, &str, &str)] = &[
        ("old", "root.seal", "root.seal"),
        ("old", "root-1-auto.priv", "root-1-auto.priv"),
        ("old", "root-1-auto.pub", "root-1-auto.pub"),
    ];
    const NEXT_PRIV: (&str, &str, &str) = ("new", "root-2-auto.priv", "root-2-auto.priv");
    const NEXT_PUB: (&str, &str, &str) = ("new", "root-2-auto.pub", "root-2-auto.pub");
    const NEXT_SEAL: (&str, &str, &str) = ("new", "root.seal", NEXT_RECORD);
    let with = |extra: &[(&'static str, &'static str, &'static str)]| -> &'static [(&'static str, &'static str, &'static str)] {
        let mut all = OLD.to_vec();
        all.extend_from_slice(extra);
        Box::leak(all.into_boxed_slice())
    };
    let crashes = [
        Crash {
            what: "after writing the next copy's private blob",
            files: with(&[NEXT_PRIV]),
            store: "old",
            new_key_wins: false,
            said: "",
        },
        Crash {
            what: "after writing the next copy",
            files: with(&[NEXT_PRIV, NEXT_PUB]),
            store: "old",
            new_key_wins: false,
            said: "",
        },
        Crash {
            what: "after writing root-next.seal",
            files: with(&[NEXT_PRIV, NEXT_PUB, NEXT_SEAL]),
            store: "old",
            new_key_wins: false,
            said: "was rolled back",
        },
        Crash {
            what: "after the transaction committed",
            files: with(&[NEXT_PRIV, NEXT_PUB, NEXT_SEAL]),
            store: "new",
            new_key_wins: true,
            said: "was completed",
        },
        Crash {
            what: "after renaming root-next.seal over root.seal",
            files: &[
                ("new", "root.seal", "root.seal"),
                ("old", "root-1-auto.priv", "root-1-auto.priv"),
                ("old", "root-1-auto.pub", "root-1-auto.pub"),
                NEXT_PRIV,
                NEXT_PUB,
            ],
            store: "new",
            new_key_wins: true,
            said: "",
        },
        Crash {
            what: "after removing the old private blob",
            files: &[
                ("new", "root.seal", "root.seal"),
                ("old", "root-1-auto.pub", "root-1-auto.pub"),
                NEXT_PRIV,
                NEXT_PUB,
            ],
            store: "new",
            new_key_wins: true,
            said: "",
        },
        Crash {
            what: "in a discard, after removing root-next.seal",
            files: with(&[NEXT_PRIV, NEXT_PUB]),
            store: "old",
            new_key_wins: false,
            said: "",
        },
        Crash {
            what: "with root-next.seal whose copies are gone",
            files: with(&[NEXT_SEAL]),
            store: "old",
            new_key_wins: false,
            said: "was rolled back",
        },
    ];
    let dir_of = |which: &str| match which {
        "old" => &old,
        "new" => &new,
        _ => &newer,
    };
    let clear = |files: &DaemonFiles| {
        for name in root_key_file_names(&files.state_dir) {
            fs::remove_file(files.state_file(&name)).expect("rm");
        }
    };
    let mut stray = Vec::new();
    for crash in &crashes {
        clear(&files);
        for &(from, name, as_name) in crash.files {
            place(&files, dir_of(from), name, as_name);
        }
        place(&files, dir_of(crash.store), "keystore.db", "keystore.db");
        tpm = tpm_as_of(tpm, dir_of(crash.store));
        let daemon = Daemon::start(&files)
            .unwrap_or_else(|e| panic!("{}: the start was refused: {e}", crash.what));
        let expected = if crash.new_key_wins {
            &new_check
        } else {
            &old_check
        };
        assert_eq!(&status_check(&daemon), expected, "{}", crash.what);
        assert_eq!(status_check(&daemon), store_check(&files), "{}", crash.what);
        assert!(
            !files.state_file(NEXT_RECORD).exists(),
            "{}: root-next.seal left",
            crash.what
        );
        assert_unwraps(&daemon, &sealed, crash.what);
        let (exit, log) = daemon.stop();
        assert!(exit.success(), "{}: {log}", crash.what);
        if !crash.said.is_empty() {
            assert!(
                log.contains(crash.said),
                "{}: the log says so: {log}",
                crash.what
            );
        }
        let winner = dir_of(if crash.new_key_wins { "new" } else { "old" });
        let generation = if crash.new_key_wins { 2 } else { 1 };
        for name in [
            "root.seal".to_string(),
            format!("root-{generation}-auto.priv"),
            format!("root-{generation}-auto.pub"),
        ] {
            assert_eq!(
                fs::read(files.state_file(&name)).expect("blob"),
                fs::read(winner.join(&name)).expect("snapshot"),
                "{}: {name} is the winning key's",
                crash.what
            );
        }
        let left = next_blobs_left(&files);
        if !left.is_empty() {
            stray.push(format!("{}: {left:?}", crash.what));
        }
        // A restart is an ordinary unseal of the same key.
        let daemon = Daemon::start(&files).expect("a second start");
        assert_eq!(&status_check(&daemon), expected, "{}", crash.what);
        drop(daemon);
    }
    assert!(
        stray.is_empty(),
        "a start leaves copies of a generation root.seal does not name: {stray:#?}"
    );

    // A store that matches neither key (a third one's): refused, and not
    // one file changes.
    clear(&files);
    for &(from, name, as_name) in with(&[NEXT_PRIV, NEXT_PUB, NEXT_SEAL]) {
        place(&files, dir_of(from), name, as_name);
    }
    place(&files, &newer, "keystore.db", "keystore.db");
    let _tpm = tpm_as_of(tpm, &newer);
    let before = state_files(&files);
    let refused = Daemon::start(&files)
        .err()
        .expect("a start on a foreign store");
    assert!(
        refused.contains("interrupted root-key rotation")
            && refused.contains(&newer_check)
            && refused.contains(&old_check)
            && refused.contains(&new_check)
            && refused.contains("changed nothing"),
        "the refusal names the keys it found: {refused}"
    );
    assert_eq!(state_files(&files), before, "nothing changed");
}

#[test]
fn a_rotation_interrupted_before_sealing_modes_is_resolved_then_migrated() {
    // The layout before root.seal: root.pub/root.priv and root-next.* under
    // the tpm2-tools primary without noDA. A start resolves the rotation by
    // those rules (the store decides), then migrates the key in force.
    use crate::harness::break_glass_unseal;
    use crate::sealing_modes::tools::{legacy_seal, legacy_state_dir};
    let tpm_home = crate::harness::private_tempdir();
    let tpm_dir = tpm_home.path().join("tpm");
    fs::create_dir_all(&tpm_dir).expect("tpm dir");
    let mut tpm = Swtpm::start_in(&tpm_dir);
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let work = files.root.path().join("work");
    fs::create_dir_all(&work).expect("work");
    let old_key: Vec<u8> = (0u8..32).map(|i| i ^ 0xa5).collect();
    legacy_state_dir(tpm.port, &files.state_dir, &old_key, &work);

    // The key store under the old key (a migrated start), then under a new
    // one (a rotation), each with the TPM as it was.
    let snapshots = files.root.path().join("snapshots");
    let (old, new) = (snapshots.join("old"), snapshots.join("new"));
    let keep = |tpm: Swtpm, to: &Path| -> Swtpm {
        drop(tpm);
        fs::create_dir_all(to.join("tpm")).expect("snapshot");
        fs::copy(files.state_file("keystore.db"), to.join("keystore.db")).expect("copy");
        for entry in fs::read_dir(&tpm_dir).expect("tpm dir") {
            let path = entry.expect("entry").path();
            fs::copy(&path, to.join("tpm").join(path.file_name().expect("name"))).expect("copy");
        }
        let tpm = Swtpm::start_in(&tpm_dir);
        files.write_config(&tpm.tcti(), &DaemonConfig::new());
        tpm
    };
    let daemon = Daemon::start(&files).expect("migrating start");
    let sealed = populate(&daemon);
    let old_check = status_check(&daemon);
    assert_eq!(old_check, hostkms::rootkey::check_value(&old_key));
    assert!(daemon.stop().0.success());
    tpm = keep(tpm, &old);
    let daemon = Daemon::start(&files).expect("start");
    let new_check = daemon.client().rotate_root().expect("rotate").new_check;
    assert!(daemon.stop().0.success());
    let new_key = break_glass_unseal(tpm.port, &files.state_dir, &work);
    tpm = keep(tpm, &new);

    let legacy = work.join("legacy");
    fs::create_dir_all(&legacy).expect("legacy");
    for (name, key) in [("old", &old_key), ("new", &new_key)] {
        legacy_seal(
            tpm.port,
            key,
            &legacy.join(format!("{name}.pub")),
            &legacy.join(format!("{name}.priv")),
            &work,
        );
    }
    // Per crash point of the old rotation: what it was, the blobs it left
    // (state-dir name, sealed blob), the store's snapshot, whether the new
    // key wins.
    type LegacyCrash<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, bool);
    let crashes: [LegacyCrash; 4] = [
        (
            "after writing root-next.priv",
            &[
                ("root.pub", "old.pub"),
                ("root.priv", "old.priv"),
                ("root-next.priv", "new.priv"),
            ],
            "old",
            false,
        ),
        (
            "after writing both next blobs",
            &[
                ("root.pub", "old.pub"),
                ("root.priv", "old.priv"),
                ("root-next.pub", "new.pub"),
                ("root-next.priv", "new.priv"),
            ],
            "old",
            false,
        ),
        (
            "after the transaction committed",
            &[
                ("root.pub", "old.pub"),
                ("root.priv", "old.priv"),
                ("root-next.pub", "new.pub"),
                ("root-next.priv", "new.priv"),
            ],
            "new",
            true,
        ),
        (
            "after renaming root-next.priv",
            &[
                ("root.pub", "old.pub"),
                ("root.priv", "new.priv"),
                ("root-next.pub", "new.pub"),
            ],
            "new",
            true,
        ),
    ];
    for (what, blobs, store, new_wins) in crashes {
        for name in root_key_file_names(&files.state_dir) {
            fs::remove_file(files.state_file(&name)).expect("rm");
        }
        for (as_name, from) in blobs {
            place(&files, &legacy, from, as_name);
        }
        let snapshot = if store == "old" { &old } else { &new };
        place(&files, snapshot, "keystore.db", "keystore.db");
        drop(tpm);
        for entry in fs::read_dir(&tpm_dir).expect("tpm dir") {
            fs::remove_file(entry.expect("entry").path()).expect("rm");
        }
        for entry in fs::read_dir(snapshot.join("tpm")).expect("tpm snapshot") {
            let path = entry.expect("entry").path();
            fs::copy(&path, tpm_dir.join(path.file_name().expect("name"))).expect("copy");
        }
        tpm = Swtpm::start_in(&tpm_dir);
        files.write_config(&tpm.tcti(), &DaemonConfig::new());

        let daemon =
            Daemon::start(&files).unwrap_or_else(|e| panic!("{what}: the start was refused: {e}"));
        let expected = if new_wins { &new_check } else { &old_check };
        assert_eq!(&status_check(&daemon), expected, "{what}");
        assert_consistent(&daemon, &files, &sealed, what);
        let (exit, log) = daemon.stop();
        assert!(exit.success(), "{what}: {log}");
        let said = if new_wins {
            "interrupted after the key store committed"
        } else {
            "interrupted before the key store committed"
        };
        assert!(log.contains(said), "{what}: {log}");
        assert!(
            log.contains("migrated the sealed root key"),
            "{what}: {log}"
        );
        assert_eq!(
            root_key_file_names(&files.state_dir),
            ["root-1-auto.priv", "root-1-auto.pub", "root.seal"],
            "{what}: migrated, the old layout's blobs gone"
        );
    }
}

#[test]
fn on_a_hung_tpm_rotate_root_fails_in_time_while_other_changes_go_on() {
    const TPM_TIMEOUT_SECS: u64 = 5;
    // Far more than any prompt answer takes here, far less than "forever".
    const PROMPT: Duration = Duration::from_secs(10);
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        &DaemonConfig::new().tpm_timeout_secs(TPM_TIMEOUT_SECS),
    );
    let daemon = Daemon::start(&files).expect("start");
    let sealed = populate(&daemon);
    thread::sleep(SETTLE);
    let check = status_check(&daemon);
    let blobs = root_blobs(&files);

    tpm.pause();
    let socket = daemon.socket.clone();
    let asking = thread::spawn(move || {
        let mut client = agent_proto::Client::connect(&socket).expect("connect");
        client
            .set_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let started = Instant::now();
        let result = client.rotate_root();
        (result, started.elapsed())
    });
    thread::sleep(Duration::from_millis(500));
    // The rotation waits on the TPM without the writer lock: changes that
    // need no TPM answer at once, and a second rotation is told to wait.
    let mut client = daemon.client();
    let started = Instant::now();
    client.disable("b").expect("disable during a hung rotation");
    client.enable("b").expect("enable during a hung rotation");
    let second = client.rotate_root().expect_err("a second rotation");
    assert!(
        started.elapsed() < PROMPT,
        "changes waited {:?} behind a rotation on a hung TPM",
        started.elapsed()
    );
    assert_eq!(second.code(), Some(ErrorCode::Busy), "{second}");
    assert!(
        !asking.is_finished(),
        "the changes were answered only after the rotation gave up on the TPM"
    );

    let (result, took) = asking.join().expect("asking thread");
    let error = result.expect_err("a rotation on a hung TPM");
    assert_eq!(error.code(), Some(ErrorCode::TpmUnavailable), "{error}");
    assert!(
        took < Duration::from_secs(3 * TPM_TIMEOUT_SECS) + PROMPT,
        "the rotation took {took:?}, past its TPM deadline"
    );
    tpm.resume();
    assert_eq!(status_check(&daemon), check, "the old key stays in force");
    assert_eq!(root_blobs(&files), blobs);
    assert!(next_blobs_left(&files).is_empty());
    assert_eq!(store_check(&files), check);
    assert_unwraps(&daemon, &sealed, "after a failed rotation");

    // Once the TPM answers again, so does the rotation.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rotation = loop {
        match client.rotate_root() {
            Ok(rotation) => break rotation,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(ErrorCode::TpmUnavailable), "{e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the TPM answers again, but the rotation still fails: {e}"),
        }
    };
    assert_eq!(rotation.old_check, check);
    assert_eq!(status_check(&daemon), rotation.new_check);
    assert_consistent(&daemon, &files, &sealed, "after the TPM recovered");
}

#[test]
fn a_row_edited_behind_the_daemons_back_stops_the_rotation_and_the_next_key_is_deleted() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    populate(&daemon);
    let check = status_check(&daemon);
    let blobs = root_blobs(&files);
    // Someone with write access to the state dir edits a key's row; a
    // rotation must not re-authenticate it under the new key.
    sqlite(
        &files.state_file("keystore.db"),
        "UPDATE keys SET state = 1 WHERE name = 'b'",
    );
    let out = cli(&daemon.socket, &["rotate-root"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(status_check(&daemon), check, "the old key stays in force");
    assert_eq!(store_check(&files), check);
    assert_eq!(root_blobs(&files), blobs);
    assert!(
        next_blobs_left(&files).is_empty(),
        "the next key is deleted: {:?}",
        next_blobs_left(&files)
    );
    let (_, log) = daemon.stop();
    assert!(
        log.contains("fails authentication under the root key"),
        "the log names the edited row: {log}"
    );
}

#[test]
fn a_next_blob_planted_as_a_symlink_is_refused_not_followed() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
    let daemon = Daemon::start(&files).expect("start");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let before = state_files(&files);
    let target = files.root.path().join("elsewhere");
    fs::write(&target, b"not a blob").expect("target");
    std::os::unix::fs::symlink(&target, files.state_file(NEXT_RECORD)).expect("symlink");

    let refused = Daemon::start(&files)
        .err()
        .expect("a start with a planted link");
    assert!(
        refused.contains(NEXT_RECORD) && refused.contains("symbolic link"),
        "the refusal names the link: {refused}"
    );
    assert_eq!(fs::read(&target).expect("target"), b"not a blob");
    assert!(
        fs::symlink_metadata(files.state_file(NEXT_RECORD))
            .expect("the link stays")
            .file_type()
            .is_symlink()
    );
    fs::remove_file(files.state_file(NEXT_RECORD)).expect("remove link");
    assert_eq!(state_files(&files), before, "nothing else changed");
}
