//! Start-up time and memory of hostkmsd with a large key store.
//!
//! `cargo bench --bench startup [-- KEYS]` (default 10,000 keys of 2 versions
//! each). The populated swtpm and state dir are cached under
//! `target/bench-cache/`, so only the first run pays for creating the keys.
//! Each measured start runs the release `hostkmsd` against the cached state:
//! the time from spawning it to its first answered `Ping` (root key unsealed,
//! every row verified and every KEK opened), and its resident memory.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::Client;

const RUNS: usize = 5;

/// The daemon under test.
const HOSTKMSD: &str = env!("CARGO_BIN_EXE_hostkmsd");

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let cache = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-cache")
        .join(format!("startup-{keys}"));
    if !cache.join("populated").exists() {
        populate(&cache, keys);
    }
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    let mut peak = Vec::new();
    for _ in 0..RUNS {
        let (elapsed, rss_kib, hwm_kib) = measure(&cache, keys);
        starts.push(elapsed);
        rss.push(rss_kib);
        peak.push(hwm_kib);
    }
    starts.sort();
    rss.sort_unstable();
    peak.sort_unstable();
    let median = |v: &[u64]| v[v.len() / 2];
    let starts_ms: Vec<u64> = starts.iter().map(|d| d.as_millis() as u64).collect();
    println!("hostkmsd start-up with {keys} keys x 2 versions ({RUNS} runs)");
    println!(
        "  start to serving: median {} ms (min {} ms, max {} ms)",
        median(&starts_ms),
        starts_ms[0],
        starts_ms[RUNS - 1]
    );
    println!(
        "  resident memory:  median {:.1} MiB (peak during start {:.1} MiB)",
        median(&rss) as f64 / 1024.0,
        median(&peak) as f64 / 1024.0
    );
    println!(
        "{{\"keys\":{keys},\"versions\":{},\"start_ms_median\":{},\"start_ms_min\":{},\"start_ms_max\":{},\"rss_mib_median\":{:.1},\"hwm_mib_median\":{:.1}}}",
        keys * 2,
        median(&starts_ms),
        starts_ms[0],
        starts_ms[RUNS - 1],
        median(&rss) as f64 / 1024.0,
        median(&peak) as f64 / 1024.0
    );
}

fn config(cache: &Path, port: u16) -> PathBuf {
    let config = cache.join("config.toml");
    fs::write(
        &config,
        format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\ntcti = \"swtpm:host=127.0.0.1,port={port}\"\n",
            cache.join("hostkms.sock").display(),
            cache.join("state").display()
        ),
    )
    .expect("config");
    config
}

fn spawn_daemon(cache: &Path, port: u16) -> Child {
    Command::new(HOSTKMSD)
        .arg("--config")
        .arg(config(cache, port))
        .env("HOSTKMS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hostkmsd")
}

fn wait_for_ping(socket: &Path, daemon: &mut Child) -> Client {
    loop {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("hostkmsd exited with {status}");
        }
        if let Ok(mut client) = Client::connect(socket) {
            if client.ping().is_ok() {
                return client;
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn stop(mut daemon: Child) {
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();
}

fn populate(cache: &Path, keys: usize) {
    let _ = fs::remove_dir_all(cache);
    fs::create_dir_all(cache).expect("cache dir");
    fs::set_permissions(cache, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    eprintln!(
        "populating {keys} keys x 2 versions in {} (once)...",
        cache.display()
    );
    let tpm = Swtpm::start_in(&cache.join("tpm"));
    let mut daemon = spawn_daemon(cache, tpm.port);
    let mut client = wait_for_ping(&cache.join("hostkms.sock"), &mut daemon);
    let started = Instant::now();
    for i in 0..keys {
        let name = format!("bench-{i:06}");
        client.create_key(&name).expect("create");
        client.rotate(&name).expect("rotate");
    }
    eprintln!("populated in {:.1} s", started.elapsed().as_secs_f64());
    stop(daemon);
    drop(tpm);
    fs::write(cache.join("populated"), b"").expect("marker");
}

/// One start: time to the first answered Ping, then VmRSS and VmHWM in KiB.
fn measure(cache: &Path, keys: usize) -> (Duration, u64, u64) {
    let tpm = Swtpm::start_in(&cache.join("tpm"));
    let socket = cache.join("hostkms.sock");
    let started = Instant::now();
    let mut daemon = spawn_daemon(cache, tpm.port);
    let mut client = wait_for_ping(&socket, &mut daemon);
    let elapsed = started.elapsed();
    let status = client.status().expect("status");
    assert_eq!(status.counters["keys"], keys as u64, "all keys loaded");
    let proc_status =
        fs::read_to_string(format!("/proc/{}/status", daemon.id())).expect("proc status");
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    let (rss, hwm) = (field("VmRSS:"), field("VmHWM:"));
    drop(client);
    stop(daemon);
    drop(tpm);
    (elapsed, rss, hwm)
}

/// The cached TPM: swtpm on the state in a directory of the cache, shut
/// down orderly on drop so that the next start finds no lockout. (The
/// integration tests' harness has more; the benchmark needs only this.)
struct Swtpm {
    child: Child,
    port: u16,
}

impl Swtpm {
    /// Starts swtpm on `dir`'s state, waits until it answers, and clears
    /// any dictionary-attack lockout an unorderly stop left.
    fn start_in(dir: &Path) -> Swtpm {
        fs::create_dir_all(dir).expect("swtpm state dir");
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("swtpm must be installed");
        let tpm = Swtpm { child, port };
        let started = Instant::now();
        while !tpm.tool("tpm2_dictionarylockout", &["--clear-lockout"]) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "swtpm did not answer on port {port} within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        tpm
    }

    /// Runs a tpm2-tools command against this TPM; whether it succeeded.
    fn tool(&self, tool: &str, args: &[&str]) -> bool {
        Command::new(tool)
            .args(args)
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", self.port),
            )
            .env("TSS2_LOG", "all+none")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.tool("tpm2_shutdown", &["--clear"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive free loopback ports (swtpm's command and control ports).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = first.local_addr().expect("local addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}
