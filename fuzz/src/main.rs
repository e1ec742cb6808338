//! `make fuzz`: at least 10^6 mutated frames through agent-proto's decoder
//! in this process, and 10^6 through a running `hostkmsd` (the real binary
//! on a private swtpm), reporting panics, the daemon's memory and whether
//! it kept answering a separate connection's pings meanwhile.
//!
//! Environment: `FUZZ_SEED` (a number; printed, random by default),
//! `FUZZ_FRAMES` (per phase, default 1000000), `FUZZ_WORKERS` (peer
//! processes, default 4; one admin process sends 5% of the frames), `FUZZ_RSS_GROWTH_MIB` (allowed growth of the
//! daemon's RSS over its start, default 64), `HOSTKMSD` (the daemon binary,
//! default: next to this one), `FUZZ_KEEP` (keep the run's directories).
//! Exits 1 on any panic, a dead daemon, an unanswered ping, a stalled
//! connection or RSS growth past the bound; 2 when it cannot run.

mod corpus;
mod daemon;
mod decoder;
mod mutate;
mod rng;
mod worker;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::Client;

use crate::corpus::{Corpus, seed_context};
use crate::daemon::{Daemon, RssSampler, RunDir, Swtpm};

/// The key the fuzzing uid holds a grant on, and one it does not.
const KEY: &str = "fuzz";
const OTHER: &str = "demo";
/// The key the admin worker's seeds name (it may do anything to any key).
const ADMIN_KEY: &str = "adm";
/// The share of frames, in percent, the admin worker sends: requests that
/// reach the key store's changes (create, rotate, revoke...) with hostile
/// values. Small, because every change is a durable write.
const ADMIN_PERCENT: u64 = 5;
/// The unprivileged uid the workers run as when the driver is root.
const NOBODY: u32 = 65534;

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    rng::Rng::new(nanos ^ u64::from(std::process::id())).next_u64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        std::process::exit(worker_main(&args[2..]));
    }
    match drive() {
        Ok(true) => {
            println!("fuzz: PASS");
        }
        Ok(false) => {
            println!("fuzz: FAIL");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("hostkms-fuzz: {e}");
            std::process::exit(2);
        }
    }
}

/// `hostkms-fuzz worker SOCKET SEED INDEX FRAMES peer|admin`.
fn worker_main(args: &[String]) -> i32 {
    let [socket, seed, index, frames, role] = args else {
        eprintln!("usage: hostkms-fuzz worker SOCKET SEED INDEX FRAMES peer|admin");
        return 2;
    };
    let (Ok(seed), Ok(index), Ok(frames)) = (seed.parse(), index.parse(), frames.parse()) else {
        eprintln!("hostkms-fuzz worker: SEED, INDEX and FRAMES are numbers");
        return 2;
    };
    let key = if role == "admin" { ADMIN_KEY } else { KEY };
    worker::run(Path::new(socket), seed, index, frames, key, OTHER)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Both phases; Ok(false) when a check failed.
fn drive() -> Result<bool, String> {
    let seed = match std::env::var("FUZZ_SEED") {
        Ok(_) => env_u64("FUZZ_SEED", 0)?,
        Err(_) => random_seed(),
    };
    let frames = env_u64("FUZZ_FRAMES", 1_000_000)?;
    let workers = env_u64("FUZZ_WORKERS", 4)?.max(1);
    let rss_growth_mib = env_u64("FUZZ_RSS_GROWTH_MIB", 64)?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let hostkmsd = std::env::var_os("HOSTKMSD")
        .map(PathBuf::from)
        .or_else(|| me.parent().map(|dir| dir.join("hostkmsd")))
        .ok_or("cannot tell where hostkmsd is; set HOSTKMSD")?;
    println!(
        "fuzz: FUZZ_SEED={seed} FUZZ_FRAMES={frames} FUZZ_WORKERS={workers} (rerun with these to reproduce)"
    );
    let mut ok = true;

    // Phase 1: the decoder, in process.
    let corpus = Corpus::new(KEY, OTHER, &[]);
    let report = decoder::run(seed, frames, 2, &corpus);
    println!(
        "decoder: {} frames in {:.1} s ({:.0}/s), {} panics; {} bodies decoded as requests, {} as responses, {} frames refused by read_frame; this process's peak RSS {:.1} MiB",
        report.frames,
        report.seconds,
        report.frames as f64 / report.seconds.max(1e-9),
        report.panics,
        report.requests_decoded,
        report.responses_decoded,
        report.frames_refused,
        mib(daemon::peak_rss_kib(std::process::id()).unwrap_or(0)),
    );
    for panic in &report.first_panics {
        println!("decoder panic: {panic}");
    }
    if report.panics > 0 {
        println!("decoder: FAILED: {} panics", report.panics);
        ok = false;
    }

    // Phase 2: the daemon.
    ok &= fuzz_daemon(&me, &hostkmsd, seed, frames, workers, rss_growth_mib)?;
    Ok(ok)
}

fn fuzz_daemon(
    me: &Path,
    hostkmsd: &Path,
    seed: u64,
    frames: u64,
    workers: u64,
    rss_growth_mib: u64,
) -> Result<bool, String> {
    let started = Instant::now();
    let as_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0;
    let worker_uid = if as_root {
        NOBODY
    } else {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .map_err(|e| format!("cannot read this process's uid: {e}"))?
    };
    let dir = RunDir::create()?;
    let tpm = Swtpm::start(&dir.root.join("tpm"))?;
    let grant = format!(
        "[[grant]]\nuids = [{worker_uid}]\nkeys = [\"{KEY}*\"]\nops = [\"wrap\", \"unwrap\", \"datakey\", \"rewrap\", \"describe\", \"mac\", \"verify-mac\", \"sign\", \"verify\", \"public-key\", \"random\"]\n"
    );
    let mut daemon = Daemon::start(hostkmsd, &dir, &tpm.tcti(), &grant)?;
    {
        let mut admin = Client::connect(&daemon.socket).map_err(|e| e.to_string())?;
        admin
            .set_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        for key in [KEY, OTHER, ADMIN_KEY] {
            admin.create_key(key).map_err(|e| {
                format!("create key {key} (the driver must be an admin: root): {e}")
            })?;
        }
        for (key, key_type) in crate::corpus::typed_keys(KEY)
            .into_iter()
            .chain(crate::corpus::typed_keys(ADMIN_KEY))
        {
            admin
                .create_key_of_type(&key, key_type)
                .map_err(|e| format!("create {key_type} key {key}: {e}"))?;
        }
        admin
            .wrap(OTHER, b"not yours", &seed_context())
            .map_err(|e| e.to_string())?;
    }
    println!(
        "daemon: hostkmsd pid {} on {}, {workers} workers as uid {worker_uid}{} and one admin worker",
        daemon.pid(),
        tpm.tcti(),
        if as_root {
            ""
        } else {
            " (not root: the workers run as this uid)"
        }
    );
    let rss = RssSampler::start(daemon.pid());
    let pinger = worker::Pinger::start(daemon.socket.clone());
    let progress = Arc::new(AtomicU64::new(0));
    let stats: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut children = Vec::new();
    let mut readers = Vec::new();
    let admin_frames = frames * ADMIN_PERCENT / 100;
    let peer_frames = frames - admin_frames;
    // Workers 0..workers are peers (uid 65534 under root); one more, the
    // driver's own uid (an admin), sends the admin share.
    for index in 0..=workers {
        let admin = index == workers;
        let share = if admin {
            admin_frames
        } else {
            peer_frames / workers + u64::from(index < peer_frames % workers)
        };
        let mut command = Command::new(me);
        command
            .arg("worker")
            .arg(&daemon.socket)
            .arg(seed.to_string())
            .arg(index.to_string())
            .arg(share.to_string())
            .arg(if admin { "admin" } else { "peer" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if as_root && !admin {
            // std drops the supplementary groups too when root sets a uid.
            command.uid(NOBODY).gid(NOBODY);
        }
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot run worker {} as uid {worker_uid} (every directory above it must be searchable by others): {e}",
                me.display()
            )
        })?;
        let out = child.stdout.take().ok_or("worker stdout")?;
        let (progress, stats) = (Arc::clone(&progress), Arc::clone(&stats));
        readers.push(thread::spawn(move || {
            let mut last = 0;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("progress ") {
                    let n: u64 = n.parse().unwrap_or(last);
                    progress.fetch_add(n - last, Ordering::Relaxed);
                    last = n;
                } else if let Some(fields) = line.strip_prefix("stats ") {
                    let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
                    for (k, v) in fields.split(' ').filter_map(|f| f.split_once('=')) {
                        let v = v.parse().unwrap_or(0);
                        *stats.entry(k.to_string()).or_default() += v;
                        if admin {
                            *stats.entry(format!("admin_{k}")).or_default() += v;
                        }
                    }
                } else {
                    println!("{line}");
                }
            }
        }));
        children.push(child);
    }
    let mut daemon_died = false;
    let mut last_report = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(200));
        if !daemon_died && !daemon.alive() {
            daemon_died = true;
            println!("daemon: hostkmsd DIED; its log ends:\n{}", daemon.tail());
            for child in &mut children {
                let _ = child.kill();
            }
        }
        let running = children
            .iter_mut()
            .filter_map(|c| c.try_wait().ok())
            .filter(Option::is_none)
            .count();
        if running == 0 {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            println!(
                "daemon: ~{} frames sent, {:.0} s, RSS {:.1} MiB (max {:.1})",
                progress.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64(),
                mib(daemon::rss_kib(daemon.pid()).unwrap_or(0)),
                mib(rss.max())
            );
        }
    }
    let mut workers_failed = 0;
    for mut child in children {
        if !child.wait().map(|s| s.success()).unwrap_or(false) {
            workers_failed += 1;
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    let (pings_sent, pings_answered, ping_failures) = pinger.finish();
    let rss_start = rss.start;
    let (rss_max, rss_end) = rss.finish();
    let seconds = started.elapsed().as_secs_f64();
    let stats = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let get = |k: &str| stats.get(k).copied().unwrap_or(0);
    let alive = !daemon_died && daemon.alive();
    let (log_lines, log_panics, panic_lines) = {
        let scan = daemon.log.lock().unwrap_or_else(|e| e.into_inner());
        (scan.lines, scan.panics, scan.panic_lines.clone())
    };
    if alive {
        // What the admin worker's changes left in the key store.
        let counters = Client::connect(&daemon.socket)
            .and_then(|mut c| {
                c.set_timeout(Some(Duration::from_secs(10)))?;
                c.status()
            })
            .map(|status| status.counters);
        match counters {
            Ok(counters) => println!(
                "daemon: key store at the end: {} keys, {} versions",
                counters.get("keys").copied().unwrap_or(0),
                counters.get("versions").copied().unwrap_or(0)
            ),
            Err(e) => println!("daemon: status at the end failed: {e}"),
        }
    }
    let exit = if alive { daemon.stop() } else { None };
    println!(
        "daemon: {} frames ({} of them well-formed, {} from the admin worker) in {:.1} s ({:.0}/s) on {} connections ({:.1} frames each); {} answers ({} successful, {} closing the connection), {} closed unanswered, {} stalls, {} undecodable answers, {} write errors",
        get("frames"),
        get("valid_frames"),
        get("admin_frames"),
        seconds,
        get("frames") as f64 / seconds.max(1e-9),
        get("connections"),
        get("frames") as f64 / get("connections").max(1) as f64,
        get("answers"),
        get("ok_answers"),
        get("closing_answers"),
        get("closed_unanswered"),
        get("stalls"),
        get("bad_answers"),
        get("write_errors"),
    );
    println!(
        "daemon: alive to the end: {alive}; exit after SIGTERM: {}; log: {log_lines} lines, {log_panics} with \"panicked\"",
        exit.map_or("none (killed or dead)".to_string(), |c| c.to_string())
    );
    for line in &panic_lines {
        println!("daemon panic: {line}");
    }
    println!(
        "daemon: RSS start {:.1} MiB, max {:.1} MiB, end {:.1} MiB (bound: start + {rss_growth_mib} MiB)",
        mib(rss_start),
        mib(rss_max),
        mib(rss_end)
    );
    println!("pings: {pings_answered} of {pings_sent} answered");
    for failure in &ping_failures {
        println!("ping failed: {failure}");
    }
    drop(tpm);
    let checks = [
        (alive, "hostkmsd died"),
        (exit == Some(0), "hostkmsd did not exit 0 on SIGTERM"),
        (log_panics == 0, "hostkmsd's log has \"panicked\""),
        (
            workers_failed == 0,
            "a worker failed (stall, undecodable answer, or no connection)",
        ),
        (
            get("frames") + get("write_errors") >= frames,
            "fewer frames were sent than asked",
        ),
        (
            pings_sent > 0 && pings_answered == pings_sent,
            "pings went unanswered",
        ),
        (
            rss_max <= rss_start + rss_growth_mib * 1024,
            "RSS grew past the bound",
        ),
    ];
    for (passed, what) in checks {
        if !passed {
            println!("daemon: FAILED: {what}");
        }
    }
    Ok(checks.iter().all(|(passed, _)| *passed))
}
