//! The credential socket, with the test playing the service manager: a
//! process (root, or another uid) moved into a unit's cgroup, bound to
//! systemd's abstract address `\0RANDOM/unit/UNIT/ID`, connects, shuts its
//! write side down (as systemd does) and reads to EOF. Credential files are
//! made with the admin client's `wrap_credential`, as `hostkms credential
//! encrypt` makes them.
//!
//! What a peer observes: a delivery is the exact bytes, then a clean EOF.
//! Any refused peer (root, or a user manager) reads the refusal filler, more
//! than systemd's 1 MiB limit for one credential, which fails the unit the
//! way systemd 252 fails it (the reader stops there, as systemd does), and
//! never an EOF after less (an `AF_UNIX` close would be an EOF, an empty
//! credential); then the close.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use agent_proto::Operation;
use agent_proto::counters::{self, RequestResult};
use nix::sys::socket::{
    AddressFamily, Shutdown, SockFlag, SockType, UnixAddr, bind, connect, shutdown, socket,
};
use serde_json::Value;

use crate::harness::journal::JournalScope;
use crate::harness::peer_identity::{TestCgroups, join_cgroup_as};
use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Swtpm, contains, ensure_journald, field, helper_test,
    journal_export_of, journal_of_stopped, socket_activated, text, with_id,
};

const CREDENTIAL_DELIVERED: &str = "6e273d579fbe44b8838b84ca35ab13d7";
const CREDENTIAL_REFUSED: &str = "deeff9e3c6aa4ca5979d8a6fcc4111c7";
const NOBODY: u32 = 65534;
const KEY: &str = "cred-key";
/// How long a refused root peer is watched for a byte or an EOF.
const HELD_FOR: Duration = Duration::from_millis(1500);
/// systemd's limit on one credential: its reader fails past it.
const SYSTEMD_CREDENTIAL_MAX: usize = 1024 * 1024;

/// A fresh random value, so that names and secrets are this test's own.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// A daemon serving credentials from its own directory on its own
/// credential socket, logging to the journal; key `cred-key`; cgroups.
struct Setup {
    _tpm: Swtpm,
    _files: DaemonFiles,
    daemon: Daemon,
    journal: JournalScope,
    /// The credential socket.
    socket: PathBuf,
    /// The main socket.
    main_socket: PathBuf,
    /// The credential directory.
    dir: PathBuf,
    cgroups: TestCgroups,
}

/// A unit name of this test's own.
fn unit_name() -> String {
    format!("hkt-{}.service", random_hex(4))
}

/// The grant of `credential` on `cred-*` to `units`.
fn credential_grant(units: &[&str]) -> Grant {
    Grant::new()
        .keys(&["cred-*"])
        .units(units)
        .ops(&["credential"])
}

fn setup(grants: Vec<Grant>, config: DaemonConfig) -> Setup {
    setup_with_env(grants, config, &[])
}

/// As [`setup`], with extra environment variables for the daemon.
fn setup_with_env(grants: Vec<Grant>, config: DaemonConfig, env: &[(&str, &str)]) -> Setup {
    ensure_journald();
    let cgroups = TestCgroups::new();
    let tpm = Swtpm::start();
    let public = tempfile::Builder::new()
        .prefix("hostkms-cred-")
        .tempdir()
        .expect("socket directory");
    fs::set_permissions(public.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = public.path().join("credentials.sock");
    let dir = public.path().join("credentials");
    fs::create_dir(&dir).expect("credential directory");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let config = grants
        .into_iter()
        .fold(config.credentials(&socket, &dir), DaemonConfig::grant);
    let mut files = DaemonFiles::new(&tpm.tcti(), &config);
    // Kept with the daemon's files: removed when the test ends.
    files.public = Some(public);
    let mut daemon_env = vec![("HOSTKMS_LOG_TARGET", "journal")];
    daemon_env.extend_from_slice(env);
    let daemon = Daemon::start_with_env(&files, &[], &daemon_env).expect("start hostkmsd");
    let journal = daemon.journal_scope();
    daemon.client().create_key(KEY).expect("create the key");
    Setup {
        main_socket: files.socket.clone(),
        _tpm: tpm,
        _files: files,
        daemon,
        journal,
        socket,
        dir,
        cgroups,
    }
}

impl Setup {
    /// Encrypts `secret` as credential `id` of `unit` and stores it.
    fn store(&self, unit: &str, id: &str, secret: &[u8]) -> PathBuf {
        let wrapped = self
            .daemon
            .client()
            .wrap_credential(KEY, unit, id, secret)
            .expect("wrap the credential");
        let unit_dir = self.dir.join(unit);
        fs::create_dir_all(&unit_dir).expect("unit directory");
        let path = unit_dir.join(id);
        fs::write(&path, wrapped.ciphertext.as_bytes()).expect("write the credential");
        path
    }

    /// The cgroup of system unit `unit`.
    fn cgroup(&mut self, unit: &str) -> PathBuf {
        self.cgroups.make(&format!("system.slice/{unit}"))
    }

    /// Stops the daemon; its journal entries.
    fn stop(self) -> (Vec<Value>, Vec<u8>) {
        let Setup {
            daemon, journal, ..
        } = self;
        let (status, log) = daemon.stop();
        assert!(status.success(), "{log}");
        (journal_of_stopped(&journal), journal_export_of(&journal))
    }
}

/// systemd's address for credential `id` of `unit`.
fn address(unit: &str, id: &str) -> Vec<u8> {
    format!("{}/unit/{unit}/{id}", random_hex(8)).into_bytes()
}

/// What a reader saw: how the stream ended and the bytes before.
#[derive(Debug, PartialEq, Eq)]
struct Fetched {
    /// `eof`, `reset`, `timeout`, `too-large` (more than systemd reads,
    /// all of it the refusal filler), `too-large-unexpected`, or
    /// `error: ...`.
    end: String,
    data: Vec<u8>,
}

impl Fetched {
    fn delivered(secret: &[u8]) -> Fetched {
        Fetched {
            end: "eof".to_string(),
            data: secret.to_vec(),
        }
    }

    /// Refused, as any peer sees it: the refusal filler past systemd's
    /// limit (so systemd fails the unit), no EOF before, then the close.
    fn refused() -> Fetched {
        Fetched {
            end: "too-large-then-eof".to_string(),
            data: Vec::new(),
        }
    }
}

/// Options of one run of [`credential_reader`].
struct Reader<'a> {
    cgroup: &'a Path,
    uid: u32,
    socket: &'a Path,
    /// The abstract name to bind, without its NUL; `None`: no bind.
    address: Option<Vec<u8>>,
    wait: Duration,
    /// Connections to open and hold without reading, instead of reading one.
    hoard: usize,
    /// The command name to take before connecting; `None`: the test's own.
    comm: Option<&'a str>,
}

impl Reader<'_> {
    fn command(&self) -> std::process::Command {
        let mut command = helper_test(module_path!(), "credential_reader");
        command
            .arg("--nocapture")
            .env("HKT_CRED_SOCKET", self.socket)
            .env(
                "HKT_CRED_ADDRESS",
                self.address.as_deref().map(hex).unwrap_or_default(),
            )
            .env("HKT_CRED_WAIT_MS", self.wait.as_millis().to_string())
            .env("HKT_CRED_HOARD", self.hoard.to_string())
            .env("HKT_CRED_COMM", self.comm.unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        join_cgroup_as(&mut command, self.cgroup, self.uid);
        command
    }

    fn run(&self) -> Fetched {
        let output = self
            .command()
            .output()
            .expect("run the reader (the test binary must be executable by others)");
        let stdout = text(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|line| line.split_once("CRED-RESULT ").map(|(_, result)| result))
            .unwrap_or_else(|| {
                panic!(
                    "the reader printed no result: {stdout}{}",
                    text(&output.stderr)
                )
            });
        let (end, data) = line.split_once(' ').unwrap_or((line, ""));
        let data = data.trim();
        Fetched {
            end: end.to_string(),
            data: unhex(data),
        }
    }
}

/// Reads credential `id` of `unit` as `uid` in `cgroup`, bound to
/// systemd's address for them.
fn fetch(cgroup: &Path, uid: u32, socket: &Path, unit: &str, id: &str, wait: Duration) -> Fetched {
    Reader {
        cgroup,
        uid,
        socket,
        address: Some(address(unit, id)),
        wait,
        hoard: 0,
        comm: None,
    }
    .run()
}

/// The half of the tests that plays the service manager's process: binds
/// `HKT_CRED_ADDRESS` (hex; empty: no bind), connects to
/// `HKT_CRED_SOCKET`, shuts its write side down and reads until EOF, an
/// error or `HKT_CRED_WAIT_MS`; prints `CRED-RESULT END HEXDATA`. With
/// `HKT_CRED_HOARD` = N > 0 it opens N such connections, reads none and
/// holds them for `HKT_CRED_WAIT_MS`.
#[test]
#[ignore = "a helper the credential tests run as a peer in a unit's cgroup"]
fn credential_reader() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let path = PathBuf::from(var("HKT_CRED_SOCKET"));
    let address = unhex(&var("HKT_CRED_ADDRESS"));
    let wait = Duration::from_millis(var("HKT_CRED_WAIT_MS").parse().expect("ms"));
    let hoard: usize = var("HKT_CRED_HOARD").parse().expect("a count");
    let comm = var("HKT_CRED_COMM");
    if !comm.is_empty() {
        // The process's name (its main thread's), not this test thread's.
        fs::write("/proc/self/comm", comm).expect("rename the process");
    }
    let open = |n: usize| -> std::os::unix::net::UnixStream {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        if !address.is_empty() {
            let mut name = address.clone();
            if n > 0 {
                name.extend_from_slice(format!("-{n}").as_bytes());
            }
            bind(
                fd.as_raw_fd(),
                &UnixAddr::new_abstract(&name).expect("address"),
            )
            .expect("bind");
        }
        connect(fd.as_raw_fd(), &UnixAddr::new(&path).expect("path")).expect("connect");
        shutdown(fd.as_raw_fd(), Shutdown::Write).expect("shutdown");
        std::os::unix::net::UnixStream::from(fd)
    };
    if hoard > 0 {
        let held: Vec<_> = (0..hoard).map(|n| open(n + 1)).collect();
        println!("CRED-RESULT hoarded");
        std::thread::sleep(wait);
        drop(held);
        return;
    }
    let mut stream = open(0);
    // HKT_CRED_DROP_TO: become another uid once connected (the connection
    // keeps uid 0 as its peer credentials), as a process that took a
    // reused pid would be another process.
    if let Ok(uid) = std::env::var("HKT_CRED_DROP_TO") {
        let uid = nix::unistd::Uid::from_raw(uid.parse().expect("a uid"));
        nix::unistd::setresuid(uid, uid, uid).expect("setresuid");
        println!("CRED-CONNECTED");
        std::io::Write::flush(&mut std::io::stdout()).expect("flush");
    }
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) => break "eof".to_string(),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if data.len() > SYSTEMD_CREDENTIAL_MAX {
                    // Where systemd stops and fails the unit (E2BIG).
                    let line = format!(
                        "hostkms refused this credential: see journalctl MESSAGE_ID={CREDENTIAL_REFUSED}\n"
                    );
                    let filler = line.bytes().cycle().take(data.len());
                    if data.iter().copied().eq(filler) {
                        data.clear();
                        // The filler ends one byte past the limit; then the
                        // connection is held, never an EOF or more bytes.
                        stream
                            .set_read_timeout(Some(Duration::from_millis(300)))
                            .expect("timeout");
                        break match std::io::Read::read(&mut stream, &mut buf) {
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                "too-large".to_string()
                            }
                            Ok(0) => "too-large-then-eof".to_string(),
                            Ok(_) => "too-large-then-more".to_string(),
                            Err(e) => format!("too-large-then-error:{}", e.kind()),
                        };
                    }
                    data.truncate(64);
                    break "too-large-unexpected".to_string();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset".to_string(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break "timeout".to_string();
            }
            Err(e) => break format!("error:{}", e.kind()),
        }
    };
    println!("CRED-RESULT {end} {}", hex(&data));
}

/// Reads a reader's output into `seen` until it holds `marker`.
fn read_until(out: &mut impl std::io::Read, seen: &mut String, marker: &str) {
    let mut buf = [0u8; 256];
    while !seen.contains(marker) {
        let n = out.read(&mut buf).expect("the reader's output");
        assert!(n > 0, "the reader ended before {marker}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// The refusal events, each with its reason.
fn refusals(entries: &[Value]) -> Vec<&Value> {
    with_id(entries, CREDENTIAL_REFUSED)
}

/// The one refusal event whose `HOSTKMS_REASON` is `reason` and whose
/// credential unit is `unit` (`None`: the event names none).
fn refusal<'a>(entries: &'a [Value], reason: &str, unit: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = refusals(entries)
        .into_iter()
        .filter(|e| {
            field(e, "HOSTKMS_REASON") == Some(reason)
                && field(e, "HOSTKMS_CREDENTIAL_UNIT") == unit
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one refusal {reason} for {unit:?}: {:#?}",
        refusals(entries)
    );
    found[0]
}

#[test]
fn the_unit_gets_the_exact_bytes_then_a_clean_eof_and_the_delivery_is_audited() {
    let unit = unit_name();
    let mut s = setup(vec![credential_grant(&[&unit])], DaemonConfig::new());
    // Binary, with a trailing newline and a NUL: the bytes are the credential.
    let secret = format!("pw-{}\n\0\u{7f}end\n", random_hex(16)).into_bytes();
    s.store(&unit, "dbpass", &secret);
    let cgroup = s.cgroup(&unit);

    let started = Instant::now();
    let got = fetch(
        &cgroup,
        0,
        &s.socket,
        &unit,
        "dbpass",
        Duration::from_secs(10),
    );
    assert_eq!(got, Fetched::delivered(&secret));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Counted per operation, as `credential`, in Status: the delivery and
    // the WrapCredential that made the file (both are Operation::Credential).
    let counters = s.daemon.client().status().expect("status").counters;
    let ok = counters::request_counter(Operation::Credential, RequestResult::Ok);
    assert_eq!(counters.get(&ok), Some(&2), "{counters:?}");

    let (entries, export) = s.stop();
    let delivered = with_id(&entries, CREDENTIAL_DELIVERED);
    assert_eq!(delivered.len(), 1, "{entries:#?}");
    let event = delivered[0];
    for (name, value) in [
        ("HOSTKMS_OP", "credential"),
        ("HOSTKMS_RESULT", "ok"),
        ("HOSTKMS_CREDENTIAL_UNIT", unit.as_str()),
        ("HOSTKMS_CREDENTIAL", "dbpass"),
        ("HOSTKMS_KEY", KEY),
        ("HOSTKMS_KEY_VERSION", "1"),
        ("HOSTKMS_PEER_UID", "0"),
        ("HOSTKMS_PEER_UNIT", unit.as_str()),
        ("PRIORITY", "6"),
    ] {
        assert_eq!(field(event, name), Some(value), "{name}: {event:#}");
    }
    assert!(field(event, "HOSTKMS_PEER_PID").is_some(), "{event:#}");
    // The reader is this test binary: its comm is its name, cut to 15.
    let exe = std::env::current_exe().expect("exe");
    let comm: String = exe
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name")
        .chars()
        .take(15)
        .collect();
    assert_eq!(
        field(event, "HOSTKMS_PEER_COMM"),
        Some(comm.as_str()),
        "{event:#}"
    );
    assert!(refusals(&entries).is_empty(), "{entries:#?}");
    assert!(
        !contains(&export, &secret[..20]),
        "the secret is in the journal"
    );
}

#[test]
fn peers_that_are_not_the_units_own_root_process_get_nothing_and_are_audited() {
    let unit = unit_name();
    let other = unit_name();
    let mut s = setup(
        vec![credential_grant(&[&unit]), credential_grant(&[&other])],
        DaemonConfig::new(),
    );
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    s.store(&unit, "dbpass", &secret);
    let own = s.cgroup(&unit);
    let elsewhere = s.cgroup(&other);
    let no_unit = s.cgroups.make("");
    // Socket permissions aside: the daemon's own check must refuse.
    fs::set_permissions(&s.socket, fs::Permissions::from_mode(0o666)).expect("chmod");

    // Another uid, in the unit's cgroup, with the right address.
    let got = fetch(&own, NOBODY, &s.socket, &unit, "dbpass", HELD_FOR);
    assert_eq!(got, Fetched::refused());
    // Root, in another service's cgroup, naming the unit.
    let got = fetch(&elsewhere, 0, &s.socket, &unit, "dbpass", HELD_FOR);
    assert_eq!(got, Fetched::refused());
    // Root, in no unit at all.
    let got = fetch(&no_unit, 0, &s.socket, &unit, "dbpass", HELD_FOR);
    assert_eq!(got, Fetched::refused());
    // The unit itself still gets it.
    let got = fetch(&own, 0, &s.socket, &unit, "dbpass", Duration::from_secs(10));
    assert_eq!(got, Fetched::delivered(&secret));

    let (entries, _) = s.stop();
    let not_root = refusal(&entries, "not-root", Some(&unit));
    assert_eq!(field(not_root, "HOSTKMS_PEER_UID"), Some("65534"));
    assert_eq!(field(not_root, "HOSTKMS_RESULT"), Some("denied"));
    let mismatches: Vec<&Value> = refusals(&entries)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_REASON") == Some("unit-mismatch"))
        .collect();
    assert_eq!(mismatches.len(), 2, "{entries:#?}");
    assert_eq!(
        field(mismatches[0], "HOSTKMS_PEER_UNIT"),
        Some(other.as_str())
    );
    assert_eq!(
        field(mismatches[0], "HOSTKMS_CREDENTIAL_UNIT"),
        Some(unit.as_str())
    );
    assert_eq!(field(mismatches[1], "HOSTKMS_PEER_UNIT"), None);
    assert_eq!(
        field(mismatches[1], "HOSTKMS_PEER_UNIT_UNKNOWN"),
        Some("no-unit")
    );
    assert_eq!(
        with_id(&entries, CREDENTIAL_DELIVERED).len(),
        1,
        "{entries:#?}"
    );
}

#[test]
fn a_peer_whose_address_names_no_valid_unit_and_id_gets_nothing() {
    let unit = unit_name();
    let mut s = setup(vec![credential_grant(&[&unit])], DaemonConfig::new());
    s.store(&unit, "dbpass", b"secret");
    let own = s.cgroup(&unit);
    let bad: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(b"no-slashes".to_vec()),
        Some(format!("r/units/{unit}/dbpass").into_bytes()),
        Some(format!("r/unit/{unit}/..").into_bytes()),
        Some(format!("r/unit/{unit}/dbpass/x").into_bytes()),
    ];
    for address in bad {
        let got = Reader {
            cgroup: &own,
            uid: 0,
            socket: &s.socket,
            address: address.clone(),
            wait: HELD_FOR,
            hoard: 0,
            comm: None,
        }
        .run();
        assert_eq!(got, Fetched::refused(), "{address:?}");
    }
    let (entries, _) = s.stop();
    let bad_addresses = refusals(&entries)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_REASON") == Some("bad-address"))
        .count();
    assert_eq!(bad_addresses, 5, "{entries:#?}");
    assert!(with_id(&entries, CREDENTIAL_DELIVERED).is_empty());
}

#[test]
fn a_credential_copied_to_another_units_directory_is_refused_and_audited() {
    let (a, b) = (unit_name(), unit_name());
    let mut s = setup(vec![credential_grant(&[&a, &b])], DaemonConfig::new());
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    let file = s.store(&a, "dbpass", &secret);
    fs::create_dir(s.dir.join(&b)).expect("b's directory");
    fs::copy(&file, s.dir.join(&b).join("dbpass")).expect("copy");
    // Also under another id of the same unit.
    fs::copy(&file, s.dir.join(&a).join("other")).expect("copy");
    let (cgroup_a, cgroup_b) = (s.cgroup(&a), s.cgroup(&b));

    assert_eq!(
        fetch(&cgroup_b, 0, &s.socket, &b, "dbpass", HELD_FOR),
        Fetched::refused()
    );
    assert_eq!(
        fetch(&cgroup_a, 0, &s.socket, &a, "other", HELD_FOR),
        Fetched::refused()
    );
    assert_eq!(
        fetch(
            &cgroup_a,
            0,
            &s.socket,
            &a,
            "dbpass",
            Duration::from_secs(10)
        ),
        Fetched::delivered(&secret)
    );
    let (entries, _) = s.stop();
    let copied = refusal(&entries, "invalid-ciphertext", Some(&b));
    assert_eq!(field(copied, "HOSTKMS_CREDENTIAL"), Some("dbpass"));
    assert_eq!(field(copied, "HOSTKMS_KEY"), Some(KEY));
    assert_eq!(field(copied, "HOSTKMS_PEER_UNIT"), Some(b.as_str()));
    assert_eq!(field(copied, "HOSTKMS_ERROR"), Some("invalid-ciphertext"));
    let renamed = refusal(&entries, "invalid-ciphertext", Some(&a));
    assert_eq!(field(renamed, "HOSTKMS_CREDENTIAL"), Some("other"));
}

#[test]
fn only_regular_files_inside_the_directory_are_read_and_never_through_a_link() {
    let unit = unit_name();
    let linked = unit_name();
    let mut s = setup(
        vec![credential_grant(&[&unit, &linked])],
        DaemonConfig::new().max_plaintext(1024),
    );
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    // Valid credentials outside the directory, reached only through links.
    let outside = s.dir.parent().expect("parent").join("outside");
    let real = s.store(&unit, "dbpass", &secret);
    fs::create_dir_all(outside.join(&linked)).expect("outside");
    fs::rename(&real, outside.join("dbpass")).expect("move out");
    symlink(outside.join("dbpass"), &real).expect("file link");
    let linked_file = s.store(&linked, "dbpass", &secret);
    fs::rename(&linked_file, outside.join(&linked).join("dbpass")).expect("move out");
    fs::remove_dir(s.dir.join(&linked)).expect("remove");
    symlink(outside.join(&linked), s.dir.join(&linked)).expect("directory link");
    // A FIFO, a device, an oversized file, a directory.
    let unit_dir = s.dir.join(&unit);
    nix::unistd::mkfifo(
        &unit_dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    nix::sys::stat::mknod(
        &unit_dir.join("device"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 5),
    )
    .expect("mknod /dev/zero's twin");
    fs::write(unit_dir.join("large"), vec![b'x'; 1024 + 100]).expect("large");
    fs::create_dir(unit_dir.join("directory")).expect("dir");
    let (own, other) = (s.cgroup(&unit), s.cgroup(&linked));

    let cases = [
        (&own, &unit, "dbpass", "symlink"),
        (&other, &linked, "dbpass", "symlink"),
        (&own, &unit, "missing", "missing"),
        (&own, &unit, "fifo", "not-a-regular-file"),
        (&own, &unit, "device", "not-a-regular-file"),
        (&own, &unit, "directory", "not-a-regular-file"),
        (&own, &unit, "large", "too-large"),
    ];
    for (cgroup, unit, id, _) in cases {
        let started = Instant::now();
        assert_eq!(
            fetch(cgroup, 0, &s.socket, unit, id, HELD_FOR),
            Fetched::refused(),
            "{unit}/{id}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{unit}/{id}");
    }
    let (entries, _) = s.stop();
    let reasons: Vec<(String, String)> = refusals(&entries)
        .iter()
        .map(|e| {
            (
                field(e, "HOSTKMS_CREDENTIAL")
                    .unwrap_or_default()
                    .to_string(),
                field(e, "HOSTKMS_REASON").unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = cases
        .iter()
        .map(|(_, _, id, reason)| (id.to_string(), reason.to_string()))
        .collect();
    assert_eq!(reasons, expected);
    assert!(with_id(&entries, CREDENTIAL_DELIVERED).is_empty());
}

#[test]
fn grants_decide_by_unit_alone_and_the_key_state_is_checked() {
    let (granted, ungranted) = (unit_name(), unit_name());
    // root holds every op on every key: that allows no credential.
    let root_grant = Grant::new()
        .keys(&["*"])
        .uids(&[0])
        .ops(&["unwrap", "describe"]);
    let mut s = setup(
        vec![credential_grant(&[&granted]), root_grant],
        DaemonConfig::new(),
    );
    s.store(&ungranted, "dbpass", b"not yours");
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    s.store(&granted, "v1", &secret);
    let (own, other) = (s.cgroup(&granted), s.cgroup(&ungranted));
    assert_eq!(
        fetch(&other, 0, &s.socket, &ungranted, "dbpass", HELD_FOR),
        Fetched::refused()
    );
    // A revoked version.
    let mut admin = s.daemon.client();
    admin.rotate(KEY).expect("rotate");
    admin.revoke(KEY, Some(1)).expect("revoke v1");
    assert_eq!(
        fetch(&own, 0, &s.socket, &granted, "v1", HELD_FOR),
        Fetched::refused()
    );
    // Re-encrypted under v2: delivered; then the key disabled: refused.
    s.store(&granted, "v1", &secret);
    assert_eq!(
        fetch(&own, 0, &s.socket, &granted, "v1", Duration::from_secs(10)),
        Fetched::delivered(&secret)
    );
    admin.disable(KEY).expect("disable");
    assert_eq!(
        fetch(&own, 0, &s.socket, &granted, "v1", HELD_FOR),
        Fetched::refused()
    );
    drop(admin);
    let (entries, _) = s.stop();
    let denied = refusal(&entries, "denied", Some(&ungranted));
    assert_eq!(field(denied, "HOSTKMS_ERROR"), Some("permission-denied"));
    assert_eq!(field(denied, "HOSTKMS_KEY"), Some(KEY));
    let revoked = refusal(&entries, "version-revoked", Some(&granted));
    assert_eq!(field(revoked, "HOSTKMS_KEY_VERSION"), Some("1"));
    let disabled = refusal(&entries, "key-disabled", Some(&granted));
    assert_eq!(field(disabled, "HOSTKMS_KEY_VERSION"), Some("2"));
}

#[test]
fn a_credential_grant_must_name_units_and_nothing_else() {
    for grant in [
        Grant::new()
            .keys(&["cred-*"])
            .uids(&[0])
            .ops(&["credential"]),
        Grant::new()
            .keys(&["cred-*"])
            .units(&["db.service"])
            .groups(&["root"])
            .ops(&["credential"]),
    ] {
        let files = DaemonFiles::new(
            "swtpm:host=127.0.0.1,port=1",
            &DaemonConfig::new().grant(grant),
        );
        let error = match Daemon::start(&files) {
            Ok(_) => panic!("a daemon started with a credential grant by uid or group"),
            Err(error) => error,
        };
        assert!(error.contains("grant #1"), "{error}");
        assert!(error.contains("\"credential\""), "{error}");
    }
}

#[test]
fn neither_socket_answers_the_others_requests() {
    let unit = unit_name();
    let mut s = setup(
        vec![credential_grant(&[&unit])],
        DaemonConfig::new().idle_timeout_secs(1),
    );
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    s.store(&unit, "dbpass", &secret);
    let own = s.cgroup(&unit);
    // systemd's request on the main socket: no credential, whatever it waits.
    let got = fetch(
        &own,
        0,
        &s.main_socket,
        &unit,
        "dbpass",
        Duration::from_secs(5),
    );
    assert!(got.data.is_empty(), "{got:?}");
    // A protocol request on the credential socket (from root, the admin of
    // the main socket): never answered.
    let mut client = agent_proto::Client::connect(&s.socket).expect("connect");
    client
        .set_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert!(
        client.ping().is_err(),
        "the credential socket answered a ping"
    );
    drop(client);
    let (entries, _) = s.stop();
    assert!(with_id(&entries, CREDENTIAL_DELIVERED).is_empty());
    assert_eq!(
        field(refusal(&entries, "bad-address", None), "HOSTKMS_PEER_UID"),
        Some("0")
    );
}

#[test]
fn hoarding_peers_do_not_block_the_unit() {
    let unit = unit_name();
    let other = unit_name();
    let mut s = setup(vec![credential_grant(&[&unit])], DaemonConfig::new());
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    s.store(&unit, "dbpass", &secret);
    let (own, elsewhere) = (s.cgroup(&unit), s.cgroup(&other));
    fs::set_permissions(&s.socket, fs::Permissions::from_mode(0o666)).expect("chmod");
    let hoard = |cgroup: &Path, uid: u32, address: Option<Vec<u8>>, count: usize| -> Child {
        let mut child = Reader {
            cgroup,
            uid,
            socket: &s.socket,
            address,
            wait: Duration::from_secs(20),
            hoard: count,
            comm: None,
        }
        .command()
        .spawn()
        .expect("a hoarder");
        // Wait until it has connected everything.
        let mut out = child.stdout.take().expect("stdout");
        let mut seen = String::new();
        read_until(&mut out, &mut seen, "CRED-RESULT hoarded");
        child
    };
    let mut hoarders = vec![
        // Root elsewhere naming the unit: a few fillers at once, for that
        // unit's peers, the rest closed at once.
        hoard(&elsewhere, 0, Some(address(&unit, "dbpass")), 100),
        // Root in the unit, no address: the same, counted for the unit.
        hoard(&own, 0, None, 100),
        // Not root: the same.
        hoard(&own, NOBODY, Some(address(&unit, "dbpass")), 100),
        // The unit's own, never reading: more than the served bound.
        hoard(&own, 0, Some(address(&unit, "dbpass")), 100),
    ];
    // The hoarders' fillers take nobody else's turn: a refused peer of a
    // third unit still reads the filler, never an empty EOF.
    let third = unit_name();
    let third_cgroup = s.cgroup(&third);
    let got = fetch(&third_cgroup, 0, &s.socket, &third, "dbpass", HELD_FOR);
    assert_eq!(got, Fetched::refused());
    // A hoarding unit's peer past its few fillers is closed at once.
    let got = fetch(&elsewhere, 0, &s.socket, &unit, "dbpass", HELD_FOR);
    assert_eq!(
        got,
        Fetched {
            end: "eof".to_string(),
            data: Vec::new()
        }
    );
    let started = Instant::now();
    let got = fetch(&own, 0, &s.socket, &unit, "dbpass", Duration::from_secs(10));
    assert_eq!(got, Fetched::delivered(&secret));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "delivered only after {:?}",
        started.elapsed()
    );
    for hoarder in &mut hoarders {
        let _ = hoarder.kill();
        let _ = hoarder.wait();
    }
    let (entries, _) = s.stop();
    assert!(!with_id(&entries, CREDENTIAL_DELIVERED).is_empty());
}

#[test]
fn socket_activation_passes_the_credential_socket_by_its_name() {
    let unit = unit_name();
    let mut cgroups = TestCgroups::new();
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().expect("dir");
    let credentials = dir.path().join("credentials");
    fs::create_dir(&credentials).expect("credential directory");
    let configured = dir.path().join("configured-credentials.sock");
    let config = DaemonConfig::new()
        .credentials(&configured, &credentials)
        .grant(credential_grant(&[&unit]));
    let files = DaemonFiles::new(&tpm.tcti(), &config);
    let (main, passed) = (dir.path().join("main.sock"), dir.path().join("cred.sock"));
    let log = dir.path().join("activate.log");
    // The credential socket first: the names, not the order, decide.
    let mut child = socket_activated(
        &[&passed, &main],
        Some("credentials:hostkms"),
        &files.config,
        &log,
    );
    let mut admin = crate::systemd::ping_when_up(&main, &mut child, &log);
    admin.create_key(KEY).expect("create");
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    let wrapped = admin
        .wrap_credential(KEY, &unit, "dbpass", &secret)
        .expect("wrap the credential");
    fs::create_dir(credentials.join(&unit)).expect("unit dir");
    fs::write(
        credentials.join(&unit).join("dbpass"),
        wrapped.ciphertext.as_bytes(),
    )
    .expect("write");
    let cgroup = cgroups.make(&format!("system.slice/{unit}"));
    let got = fetch(
        &cgroup,
        0,
        &passed,
        &unit,
        "dbpass",
        Duration::from_secs(10),
    );
    assert_eq!(got, Fetched::delivered(&secret));
    assert!(
        !configured.exists(),
        "the daemon bound [credentials] socket although systemd passed one"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = crate::harness::wait_with_timeout(&mut child, Duration::from_secs(20));
    assert!(
        status.success(),
        "{status}: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Before Linux 6.5 (no `SO_PEERPIDFD`; the daemon is told to act so) the
/// unit is read from whatever process has the connector's pid after
/// accept: a root process of another unit that connects and exits could
/// have its pid taken by a process of the unit. On such a kernel only
/// systemd's own helper, named "(sd-…)", gets a credential.
#[test]
fn without_peerpidfd_only_systemds_helper_gets_a_credential() {
    let unit = unit_name();
    let mut s = setup_with_env(
        vec![credential_grant(&[&unit])],
        DaemonConfig::new(),
        &[("HOSTKMS_TEST_NO_PEERPIDFD", "1")],
    );
    let secret = format!("pw-{}", random_hex(16)).into_bytes();
    s.store(&unit, "dbpass", &secret);
    let own = s.cgroup(&unit);
    let as_comm = |comm: Option<&str>| {
        Reader {
            cgroup: &own,
            uid: 0,
            socket: &s.socket,
            address: Some(address(&unit, "dbpass")),
            wait: HELD_FOR,
            hoard: 0,
            comm,
        }
        .run()
    };
    assert_eq!(as_comm(None), Fetched::refused());
    assert_eq!(as_comm(Some("postgres")), Fetched::refused());
    assert_eq!(as_comm(Some("(sd-mkdcreds)")), Fetched::delivered(&secret));
    let (entries, _) = s.stop();
    let unproven: Vec<&Value> = refusals(&entries)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_REASON") == Some("peer-unproven"))
        .collect();
    assert_eq!(unproven.len(), 2, "{unproven:#?}");
    assert!(
        unproven.iter().all(|e| field(e, "MESSAGE")
            .is_some_and(|m| m.contains("SO_PEERPIDFD") && m.contains("(sd-"))),
        "{unproven:#?}"
    );
    assert!(!with_id(&entries, CREDENTIAL_DELIVERED).is_empty());
}

/// Every peer of this socket is root, so the flood limit of refused
/// connections is shared by all of them: junk connections must not push an
/// impersonation attempt (a process naming a unit it does not run in) out
/// of the trail.
#[test]
fn junk_connections_do_not_hide_an_impersonation_attempt() {
    let unit = unit_name();
    let other = unit_name();
    let mut s = setup(vec![credential_grant(&[&unit])], DaemonConfig::new());
    s.store(&unit, "dbpass", b"secret");
    let (own, elsewhere) = (s.cgroup(&unit), s.cgroup(&other));
    for _ in 0..8 {
        let junk = Reader {
            cgroup: &own,
            uid: 0,
            socket: &s.socket,
            address: None,
            wait: HELD_FOR,
            hoard: 0,
            comm: None,
        }
        .run();
        assert_eq!(junk, Fetched::refused());
    }
    let got = fetch(&elsewhere, 0, &s.socket, &unit, "dbpass", HELD_FOR);
    assert_eq!(got, Fetched::refused());
    let (entries, _) = s.stop();
    let attempt = refusal(&entries, "unit-mismatch", Some(&unit));
    assert_eq!(field(attempt, "HOSTKMS_PEER_UNIT"), Some(other.as_str()));
}

/// Before Linux 6.5, the process that holds the connector's pid when the
/// daemon looks must be root as systemd's helper is, not merely named like
/// it: a process of the unit that took a reused pid can name itself
/// "(sd-mkdcreds)" but is not root. Played here by the connector itself
/// dropping to another uid while the daemon is stopped, before it accepts.
#[test]
fn without_peerpidfd_the_pid_holder_must_be_root() {
    let unit = unit_name();
    let mut s = setup_with_env(
        vec![credential_grant(&[&unit])],
        DaemonConfig::new(),
        &[("HOSTKMS_TEST_NO_PEERPIDFD", "1")],
    );
    s.store(&unit, "dbpass", b"secret");
    let own = s.cgroup(&unit);
    let daemon = nix::unistd::Pid::from_raw(i32::try_from(s.daemon.pid()).expect("a pid"));
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).expect("stop the daemon");
    let mut command = Reader {
        cgroup: &own,
        uid: 0,
        socket: &s.socket,
        address: Some(address(&unit, "dbpass")),
        wait: Duration::from_secs(10),
        hoard: 0,
        comm: Some("(sd-mkdcreds)"),
    }
    .command();
    let mut child = command
        .env("HKT_CRED_DROP_TO", NOBODY.to_string())
        .spawn()
        .expect("the reader");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "CRED-CONNECTED");
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).expect("resume the daemon");
    std::io::Read::read_to_string(&mut out, &mut seen).expect("reader output");
    let _ = child.wait();
    let line = seen
        .lines()
        .find_map(|line| line.split_once("CRED-RESULT ").map(|(_, result)| result))
        .unwrap_or_else(|| panic!("no result: {seen}"));
    assert_eq!(line.trim(), "too-large-then-eof", "{seen}");
    let (entries, _) = s.stop();
    let unproven = refusal(&entries, "peer-unproven", Some(&unit));
    assert!(
        field(unproven, "MESSAGE").is_some_and(|m| m.contains("uid 65534")),
        "{unproven:?}"
    );
}
