//! `hostkms bench`: drives a running daemon with N blocking connections (one
//! OS thread each), first with `ping` to measure the transport, then with
//! the chosen operation (wrap, unwrap, datakey, sign, verify or mac, with a
//! key of the type it needs), and reports throughput and latency
//! percentiles.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::ciphertext::MAGIC;
use agent_proto::{Client, ClientError, EncryptionContext, ErrorCode, KeyType, Operation};
use rand::TryRng;
use serde_json::json;
use zeroize::Zeroizing;

use crate::args::{BenchArgs, BenchOp};
use crate::error::{CliError, printable};
use crate::io::write_stdout;

mod batch;
mod interrupt;

/// Time each phase runs before it starts counting, so that connection
/// set-up and cold caches do not skew the numbers.
const WARMUP: Duration = Duration::from_millis(500);

/// How long one benchmark request may wait before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Latencies each thread can record before its buffer grows.
const LATENCY_CAPACITY: usize = 1 << 16;

/// How long a phase runs: its `duration` after the warm-up, and longer
/// when fewer than `min_ops` requests completed (succeeded or failed) in
/// that window, until they have. A loaded or slow daemon then yields a
/// longer measured window, never a phase with nothing measured.
#[derive(Debug, Clone, Copy)]
pub struct PhaseLength {
    /// The measured window after the warm-up.
    pub duration: Duration,
    /// Requests that must complete in the window before the phase stops.
    pub min_ops: u64,
}

impl From<&BenchArgs> for PhaseLength {
    fn from(args: &BenchArgs) -> Self {
        PhaseLength {
            duration: args.duration,
            min_ops: u64::from(args.min_ops),
        }
    }
}

/// Why one benchmark request failed.
struct Failure {
    /// What went wrong (never a plaintext).
    message: String,
    /// The connection is unusable: the thread stops.
    fatal: bool,
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        let fatal = !matches!(err, ClientError::Daemon { .. });
        Failure {
            message: err.to_string(),
            fatal,
        }
    }
}

/// A check of a result that failed.
fn check_failed(message: &str) -> Failure {
    Failure {
        message: message.to_string(),
        fatal: false,
    }
}

/// What one thread measured in one phase.
struct ThreadResult {
    /// Latencies of the successful requests in the measured window, ns.
    latencies: Vec<u32>,
    /// Failed requests (warm-up included).
    errors: u64,
    /// The first failure's message.
    first_error: Option<String>,
    /// When the thread's last measured request completed.
    last_done: Option<Instant>,
    /// When the measured window began.
    measure_from: Instant,
}

/// What all threads measured in one phase.
#[derive(Debug)]
pub struct PhaseResult {
    /// Successful requests in the measured window.
    pub ops: u64,
    /// Failed requests.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Length of the measured window, seconds.
    pub elapsed_secs: f64,
    /// Every latency of the window in nanoseconds, sorted.
    pub latencies: Vec<u32>,
}

impl PhaseResult {
    /// Successful requests per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.ops as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    /// The `per_mille`-th percentile latency in microseconds (rounded to
    /// 0.1 µs), `None` when nothing was measured.
    pub fn percentile_us(&self, per_mille: u64) -> Option<f64> {
        percentile(&self.latencies, per_mille).map(|ns| (f64::from(ns) / 100.0).round() / 10.0)
    }
}

/// The nearest-rank percentile of a sorted slice: the smallest value such
/// that at least `per_mille`/1000 of the values are at most it. `None` for
/// an empty slice; `per_mille` is clamped to 1..=1000.
pub fn percentile(sorted: &[u32], per_mille: u64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let per_mille = per_mille.clamp(1, 1000);
    let rank = (per_mille * n).div_ceil(1000).max(1); // 1-based
    let index = usize::try_from(rank - 1).unwrap_or(sorted.len() - 1);
    sorted.get(index).copied()
}

/// Connects with the benchmark's request timeout.
fn connect(socket: &Path) -> Result<Client, ClientError> {
    let client = Client::connect(socket)?;
    client.set_timeout(Some(REQUEST_TIMEOUT))?;
    Ok(client)
}

/// Runs `op` in a closed loop on `connections` threads for the warm-up plus
/// the phase's `length`, each thread with its own connection.
fn run_phase<F>(
    socket: &Path,
    connections: usize,
    length: PhaseLength,
    op: F,
) -> Result<PhaseResult, CliError>
where
    F: Fn(&mut Client) -> Result<(), Failure> + Sync,
{
    let shared = Shared {
        barrier: Barrier::new(connections),
        start: OnceLock::new(),
        completed: AtomicU64::new(0),
        length,
    };
    let results: Vec<Result<ThreadResult, CliError>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| scope.spawn(|| worker(socket, &shared, &op)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Err(CliError::BenchThread)))
            .collect()
    });

    let mut phase = PhaseResult {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed_secs: 0.0,
        latencies: Vec::new(),
    };
    let mut window = Duration::ZERO;
    for result in results {
        let result = result?;
        phase.ops += result.latencies.len() as u64;
        phase.errors += result.errors;
        if phase.first_error.is_none() {
            phase.first_error = result.first_error;
        }
        if let Some(done) = result.last_done {
            window = window.max(done.saturating_duration_since(result.measure_from));
        }
        phase.latencies.extend_from_slice(&result.latencies);
    }
    phase.elapsed_secs = if window.is_zero() {
        length.duration.as_secs_f64()
    } else {
        window.as_secs_f64()
    };
    phase.latencies.sort_unstable();
    Ok(phase)
}

/// What the threads of one phase share.
struct Shared {
    /// Every thread connects before any starts the clock.
    barrier: Barrier,
    /// When the phase started (its warm-up).
    start: OnceLock<Instant>,
    /// Requests completed in the measured window, by every thread.
    completed: AtomicU64,
    /// How long the phase runs.
    length: PhaseLength,
}

/// One thread of a phase: connect, wait for the others, then loop until
/// the window is over and the phase's minimum of requests completed in it.
fn worker<F>(socket: &Path, shared: &Shared, op: &F) -> Result<ThreadResult, CliError>
where
    F: Fn(&mut Client) -> Result<(), Failure>,
{
    let client = connect(socket);
    // Every thread reaches the barrier, connected or not, so none waits forever.
    shared.barrier.wait();
    let mut client = client?;
    let started = *shared.start.get_or_init(Instant::now);
    let measure_from = started + WARMUP;
    let end = measure_from + shared.length.duration;
    let mut result = ThreadResult {
        latencies: Vec::with_capacity(LATENCY_CAPACITY),
        errors: 0,
        first_error: None,
        last_done: None,
        measure_from,
    };
    loop {
        let sent = Instant::now();
        let window_done =
            sent >= end && shared.completed.load(Ordering::Relaxed) >= shared.length.min_ops;
        if window_done || interrupt::requested() {
            break;
        }
        let outcome = op(&mut client);
        let done = Instant::now();
        let measured = sent >= measure_from;
        if measured {
            result.last_done = Some(done);
            shared.completed.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) if measured => {
                let nanos = done.duration_since(sent).as_nanos();
                result
                    .latencies
                    .push(u32::try_from(nanos).unwrap_or(u32::MAX));
            }
            Ok(()) => {}
            Err(failure) => {
                result.errors += 1;
                let fatal = failure.fatal;
                result.first_error.get_or_insert(failure.message);
                if fatal {
                    break;
                }
            }
        }
    }
    Ok(result)
}

/// Fills a wiped buffer of `size` bytes from the OS RNG.
fn random_bytes(size: usize) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut buf = Zeroizing::new(vec![0u8; size]);
    rand::rngs::SysRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| CliError::Random(e.to_string()))?;
    Ok(buf)
}

/// Runs the benchmark and prints its report; any failed request makes it
/// return [`CliError::BenchFailed`] after the report is printed.
pub fn run(socket: &Path, args: &BenchArgs, json: bool) -> Result<(), CliError> {
    let data_key_len = match (args.op, u16::try_from(args.size)) {
        (BenchOp::Datakey, Ok(n @ (16 | 24 | 32 | 64))) => n,
        (BenchOp::Datakey, _) => {
            return Err(CliError::Usage(format!(
                "invalid value '{}' for '--size <BYTES>' with '--op datakey': \
                 a data key is 16, 24, 32 or 64 bytes",
                args.size
            )));
        }
        _ => 0,
    };
    if args.batch.is_some() && !matches!(args.op, BenchOp::Wrap | BenchOp::Unwrap) {
        return Err(CliError::Usage(format!(
            "'--batch' measures wrap-batch or unwrap-batch: use it with '--op wrap' or '--op unwrap', not '--op {}'",
            args.op.as_str()
        )));
    }
    let key_type = args.key_type();
    let operation = args.op.operation();
    if !key_type.operations().contains(&operation) {
        return Err(CliError::Usage(format!(
            "'--op {}' needs a key type that can {}: {}; keys of type {key_type} do {}",
            args.op.as_str(),
            args.op.as_str(),
            types_for(operation),
            ops_of(key_type)
        )));
    }
    let suffix = crate::io::hex_secret(&random_bytes(4)?);
    let key_name = args.key_name(&suffix);
    let key = key_name.as_str();

    // From here a signal stops the run instead of the process, so the
    // temporary key is still revoked.
    interrupt::catch().map_err(CliError::Signals)?;
    let mut setup = connect(socket)?;
    if args.temporary_key() {
        ensure_can_revoke(&mut setup, key)?;
        setup.create_key_of_type(key, key_type)?;
        let _ = writeln!(
            std::io::stderr(),
            "hostkms: bench: using temporary key {key}, revoked (its key material destroyed) \
             at the end; give --key NAME to use a key of your own"
        );
        let measured = measure(socket, args, key, data_key_len, json);
        let revoked = setup
            .revoke(key, None)
            .or_else(|_| connect(socket).and_then(|mut again| again.revoke(key, None)));
        return match revoked {
            // Revoked already (by an admin meanwhile): nothing is left.
            Err(e) if e.code() == Some(ErrorCode::KeyRevoked) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "hostkms: bench: temporary key {key} was revoked already"
                );
                measured
            }
            Ok(_) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "hostkms: bench: revoked temporary key {key}"
                );
                measured
            }
            Err(e) => {
                let reported = matches!(measured, Ok(()) | Err(CliError::BenchFailed { .. }));
                if let Err(failure) = &measured {
                    let _ = writeln!(
                        std::io::stderr(),
                        "hostkms: {}",
                        printable(&failure.to_string())
                    );
                }
                Err(CliError::BenchKeyLeft {
                    key: key.to_string(),
                    why: printable(&e.to_string()),
                    reported,
                })
            }
        };
    }
    match setup.create_key_of_type(key, key_type) {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::KeyExists) => {
            let existing = setup.describe_key(key)?.key_type;
            if existing != key_type {
                return Err(CliError::Usage(format!(
                    "key {} exists and is of type {existing}, not {key_type}: give \
                     another --key (or leave it out for bench-{key_type})",
                    printable(key)
                )));
            }
        }
        Err(e) => return Err(e.into()),
    }
    drop(setup);
    measure(socket, args, key, data_key_len, json)
}

/// Refuses to make temporary key `key` when this peer could not revoke it
/// at the end. The key does not exist yet, and no key has a version
/// `u32::MAX`, so asking to revoke that version revokes nothing: the daemon
/// answers `KeyNotFound` to a peer that holds `revoke` on the name (and to
/// admins) and `PermissionDenied` to any other (agent-proto README,
/// "Permissions"). Any other answer (busy, a TPM or store failure, a
/// dropped connection) proves nothing, so no key is made.
fn ensure_can_revoke(client: &mut Client, key: &str) -> Result<(), CliError> {
    match client.revoke(key, Some(u32::MAX)) {
        Err(e) if e.code() == Some(ErrorCode::PermissionDenied) => {
            Err(CliError::BenchCannotRevoke {
                key: key.to_string(),
                uid: nix::unistd::geteuid().as_raw(),
            })
        }
        Err(e)
            if matches!(
                e.code(),
                Some(ErrorCode::KeyNotFound | ErrorCode::VersionNotFound)
            ) =>
        {
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(source) => Err(CliError::BenchRevokeUnchecked {
            key: key.to_string(),
            source,
        }),
    }
}

/// Stops a run a signal interrupted, before its partial report.
fn check_interrupted() -> Result<(), CliError> {
    match interrupt::signal() {
        Some(signal) => Err(CliError::BenchInterrupted {
            signal,
            name: interrupt::name(signal),
        }),
        None => Ok(()),
    }
}

/// Prepares what the operation needs (the ciphertext unwrap or the
/// signature verify measures) with key `key`, runs both phases and prints
/// the report.
fn measure(
    socket: &Path,
    args: &BenchArgs,
    key: &str,
    data_key_len: u16,
    json: bool,
) -> Result<(), CliError> {
    let size = usize::try_from(args.size).unwrap_or(usize::MAX);
    let connections = usize::from(args.connections);
    let context = EncryptionContext::from([("purpose".to_string(), "hostkms bench".to_string())]);
    let mut setup = connect(socket)?;
    let payload = random_bytes(size)?;
    let ciphertext = match args.op {
        BenchOp::Unwrap => setup.wrap(key, &payload, &context)?.ciphertext,
        _ => agent_proto::Ciphertext::default(),
    };
    let signature = match args.op {
        BenchOp::Verify => setup.sign(key, &payload)?.signature,
        _ => Vec::new(),
    };
    drop(setup);

    let length = PhaseLength::from(args);
    let ping = run_phase(socket, connections, length, |client| {
        client.ping().map_err(Failure::from)
    })?;
    let op = run_phase(socket, connections, length, |client| match args.op {
        BenchOp::Wrap => {
            let wrapped = client.wrap(key, &payload, &context)?;
            if wrapped.ciphertext.as_bytes().starts_with(&MAGIC) {
                Ok(())
            } else {
                Err(check_failed(
                    "wrap returned something that is not a ciphertext",
                ))
            }
        }
        BenchOp::Unwrap => {
            let unwrapped = client.unwrap(ciphertext.as_bytes(), &context, Some(key))?;
            if unwrapped.plaintext.expose() == payload.as_slice() {
                Ok(())
            } else {
                Err(check_failed(
                    "unwrap returned other bytes than were wrapped",
                ))
            }
        }
        BenchOp::Datakey => {
            let data_key = client.generate_data_key(key, data_key_len, &context)?;
            let plaintext_ok = data_key.plaintext.as_ref().is_some_and(|p| p.len() == size);
            if plaintext_ok && data_key.ciphertext.as_bytes().starts_with(&MAGIC) {
                Ok(())
            } else {
                Err(check_failed(
                    "datakey returned no ciphertext or a data key of the wrong length",
                ))
            }
        }
        BenchOp::Sign => {
            if client.sign(key, &payload)?.signature.is_empty() {
                Err(check_failed("sign returned an empty signature"))
            } else {
                Ok(())
            }
        }
        BenchOp::Verify => {
            if client.verify(key, &payload, &signature, None)?.valid {
                Ok(())
            } else {
                Err(check_failed(
                    "verify found the signature made at set-up invalid",
                ))
            }
        }
        BenchOp::Mac => {
            if client.mac(key, &payload)?.tag.is_empty() {
                Err(check_failed("mac returned an empty tag"))
            } else {
                Ok(())
            }
        }
    })?;

    let batch = match args.batch {
        Some(items) => Some(batch::measure(
            socket,
            connections,
            length,
            batch::Workload {
                op: args.op,
                key,
                items: usize::from(items),
                payload: &payload,
                ciphertext: &ciphertext,
                context: &context,
            },
        )?),
        None => None,
    };

    check_interrupted()?;
    let text = if json {
        render_json(args, key, &ping, &op, batch.as_ref())
    } else {
        render_human(args, key, &ping, &op, batch.as_ref())
    };
    write_stdout(text.as_bytes())?;

    let batch_errors = batch.as_ref().map_or(0, |b| b.errors);
    let errors = ping.errors + op.errors + batch_errors;
    if errors > 0 {
        let first = op
            .first_error
            .or(ping.first_error)
            .or(batch.and_then(|b| b.first_error))
            .unwrap_or_else(|| "unknown".to_string());
        return Err(CliError::BenchFailed {
            errors,
            first: printable(&first),
        });
    }
    Ok(())
}

/// The key types whose keys perform `operation`, for a usage message.
fn types_for(operation: Operation) -> String {
    let names: Vec<&str> = KeyType::ALL
        .into_iter()
        .filter(|t| t.operations().contains(&operation))
        .map(KeyType::as_str)
        .collect();
    names.join(", ")
}

/// The operations a key type performs, for a usage message.
fn ops_of(key_type: KeyType) -> String {
    let names: Vec<&str> = key_type.operations().iter().map(|op| op.as_str()).collect();
    names.join(", ")
}

/// op ops/s ÷ ping ops/s (0 when ping measured nothing).
fn ratio(ping: &PhaseResult, op: &PhaseResult) -> f64 {
    let ping_rate = ping.ops_per_sec();
    if ping_rate > 0.0 {
        op.ops_per_sec() / ping_rate
    } else {
        0.0
    }
}

/// Rounds to `digits` decimals for display and JSON.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The report as one JSON object.
fn render_json(
    args: &BenchArgs,
    key: &str,
    ping: &PhaseResult,
    op: &PhaseResult,
    batch: Option<&PhaseResult>,
) -> String {
    let mut value = json!({
        "op": args.op.as_str(),
        "key": key,
        "temporary_key": args.temporary_key(),
        "type": args.key_type().as_str(),
        "connections": args.connections,
        "duration_secs": args.duration.as_secs_f64(),
        "min_ops": args.min_ops,
        "size": args.size,
        "ops": op.ops,
        "errors": op.errors,
        "elapsed_secs": round(op.elapsed_secs, 3),
        "ops_per_sec": round(op.ops_per_sec(), 1),
        "p50_us": op.percentile_us(500),
        "p99_us": op.percentile_us(990),
        "p999_us": op.percentile_us(999),
        "ping_ops": ping.ops,
        "ping_errors": ping.errors,
        "ping_ops_per_sec": round(ping.ops_per_sec(), 1),
        "ping_p50_us": ping.percentile_us(500),
        "ping_p99_us": ping.percentile_us(990),
        "ping_p999_us": ping.percentile_us(999),
        "ratio_to_ping": round(ratio(ping, op), 4),
    });
    if let (Some(phase), Some(items), Some(object)) = (batch, args.batch, value.as_object_mut()) {
        let items_per_sec = phase.ops_per_sec() * f64::from(items);
        for (name, field) in [
            ("batch", json!(items)),
            ("batch_requests", json!(phase.ops)),
            ("batch_errors", json!(phase.errors)),
            (
                "batch_requests_per_sec",
                json!(round(phase.ops_per_sec(), 1)),
            ),
            ("batch_items_per_sec", json!(round(items_per_sec, 1))),
            ("batch_p50_us", json!(phase.percentile_us(500))),
            ("batch_p99_us", json!(phase.percentile_us(990))),
            ("batch_p999_us", json!(phase.percentile_us(999))),
            (
                "batch_ratio_to_single",
                json!(round(batch::ratio(op, phase, items), 4)),
            ),
        ] {
            object.insert(name.to_string(), field);
        }
    }
    format!("{value}\n")
}

/// The report as aligned lines.
fn render_human(
    args: &BenchArgs,
    key: &str,
    ping: &PhaseResult,
    op: &PhaseResult,
    batch: Option<&PhaseResult>,
) -> String {
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let line = |name: &str, phase: &PhaseResult| {
        format!(
            "{:<15}{:>12.1} ops/s  p50 {:>9} us  p99 {:>9} us  p99.9 {:>9} us  ({} ops, {} errors)\n",
            format!("{name}:"),
            phase.ops_per_sec(),
            us(phase.percentile_us(500)),
            us(phase.percentile_us(990)),
            us(phase.percentile_us(999)),
            phase.ops,
            phase.errors
        )
    };
    let mut out = format!(
        "{:<15}{} of {} bytes with {} key {}, {} connections, {} s per phase after {} s warm-up\n",
        "bench:",
        args.op.as_str(),
        args.size,
        args.key_type(),
        printable(key),
        args.connections,
        args.duration.as_secs_f64(),
        WARMUP.as_secs_f64()
    );
    out.push_str(&line("ping", ping));
    out.push_str(&line(args.op.as_str(), op));
    let _ = writeln!(out, "{:<15}{:.3}", "ratio to ping:", ratio(ping, op));
    if let (Some(phase), Some(items)) = (batch, args.batch) {
        out.push_str(&line(&format!("{}-batch", args.op.as_str()), phase));
        let _ = writeln!(
            out,
            "{:<15}{:.1} items/s in batches of {items}: {:.3} times the single {} requests' rate",
            "batch items:",
            phase.ops_per_sec() * f64::from(items),
            batch::ratio(op, phase, items),
            args.op.as_str()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 500), None);
        assert_eq!(percentile(&[7], 500), Some(7));
        assert_eq!(percentile(&[7], 999), Some(7));
        let hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 500), Some(50));
        assert_eq!(percentile(&hundred, 990), Some(99));
        assert_eq!(percentile(&hundred, 999), Some(100));
        assert_eq!(percentile(&hundred, 1000), Some(100));
        assert_eq!(percentile(&hundred, 0), Some(1)); // clamped to the first rank
        let thousand: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&thousand, 999), Some(999));
        assert_eq!(percentile(&thousand, 990), Some(990));
        // Odd count: the rank rounds up.
        assert_eq!(percentile(&[10, 20, 30], 500), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 500), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 510), Some(30));
    }

    #[test]
    fn phase_rates_and_microseconds() {
        let phase = PhaseResult {
            ops: 4,
            errors: 0,
            first_error: None,
            elapsed_secs: 2.0,
            latencies: vec![1_000, 2_000, 3_049, 1_000_000],
        };
        assert_eq!(phase.ops_per_sec(), 2.0);
        assert_eq!(phase.percentile_us(500), Some(2.0));
        assert_eq!(phase.percentile_us(750), Some(3.0));
        assert_eq!(phase.percentile_us(999), Some(1000.0));
        let empty = PhaseResult {
            elapsed_secs: 0.0,
            latencies: Vec::new(),
            ..phase
        };
        assert_eq!(empty.ops_per_sec(), 0.0);
        assert_eq!(empty.percentile_us(500), None);
    }
}
