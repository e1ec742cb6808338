//! Phase two, the client side: a worker process (run as the unprivileged
//! fuzzing uid) sends mutated frames to the daemon, several per connection
//! while the daemon keeps it open, and checks that each frame is answered
//! or the connection closed within a bound. The pinger checks from a
//! separate connection that the daemon keeps serving others meanwhile.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::codec::{decode_response, read_frame};
use agent_proto::{Client, ErrorCode, FrameError, Response};

use crate::corpus::{Corpus, MAX_FRAME, seed_context};
use crate::mutate::{Frame, next_frame, random_request_frame};
use crate::rng::Rng;

/// How long the daemon may take to answer a frame, or to close a
/// connection whose stream ended mid-frame, before it counts as stalled.
const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// How long a worker keeps trying to connect before giving up.
const CONNECT_BOUND: Duration = Duration::from_secs(10);
/// The share of unmutated seed frames among byte-mutated ones.
const VALID_PERCENT: u64 = 10;
/// The share of well-formed requests with hostile field values: they reach
/// policy and the operations, and keep the connection open.
const STRUCTURED_PERCENT: u64 = 30;

/// What one worker saw; printed as `stats key=value...` for the driver.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Frames written whole.
    pub frames: u64,
    /// Of those, well-formed ones (seeds and hostile-valued requests).
    pub valid_frames: u64,
    /// Connections opened.
    pub connections: u64,
    /// Answers read and decoded.
    pub answers: u64,
    /// Answers that were a successful response (not `Error`).
    pub ok_answers: u64,
    /// Answers after which the daemon closes (bad frame, too large, busy).
    pub closing_answers: u64,
    /// Frames that must be answered but saw the connection closed instead.
    pub closed_unanswered: u64,
    /// Frames not answered, or connections not closed, within the bound.
    pub stalls: u64,
    /// Answers that did not decode as a response.
    pub bad_answers: u64,
    /// Writes the daemon refused (connection already closed).
    pub write_errors: u64,
}

impl WorkerStats {
    fn line(&self) -> String {
        format!(
            "stats frames={} valid_frames={} connections={} answers={} ok_answers={} closing_answers={} closed_unanswered={} stalls={} bad_answers={} write_errors={}",
            self.frames,
            self.valid_frames,
            self.connections,
            self.answers,
            self.ok_answers,
            self.closing_answers,
            self.closed_unanswered,
            self.stalls,
            self.bad_answers,
            self.write_errors
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(256).map(|b| format!("{b:02x}")).collect()
}

fn connect(socket: &Path) -> Result<UnixStream, String> {
    let deadline = Instant::now() + CONNECT_BOUND;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(ANSWER_BOUND));
                let _ = stream.set_write_timeout(Some(ANSWER_BOUND));
                return Ok(stream);
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "cannot connect to {} for {CONNECT_BOUND:?}: {e}",
                    socket.display()
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Real ciphertexts of `key`, so that unwrap and rewrap seeds decrypt.
fn ciphertexts(socket: &Path, key: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut client = Client::connect(socket).map_err(|e| e.to_string())?;
    client
        .set_timeout(Some(ANSWER_BOUND))
        .map_err(|e| e.to_string())?;
    let context = seed_context();
    let wrapped = client
        .wrap(key, b"fuzzing plaintext", &context)
        .map_err(|e| format!("wrap with {key}: {e}"))?;
    let data_key = client
        .generate_data_key(key, 32, &context)
        .map_err(|e| format!("datakey with {key}: {e}"))?;
    Ok(vec![
        wrapped.ciphertext.into_bytes(),
        data_key.ciphertext.into_bytes(),
    ])
}

/// Whether the daemon closes the connection after this error code.
fn closes_after(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadRequest
            | ErrorCode::FrameTooLarge
            | ErrorCode::UnsupportedVersion
            | ErrorCode::Busy
    )
}

/// Runs worker `index`: `frames` frames from stream `index` of `seed`.
/// Prints `progress N` now and then, `anomaly ...` lines and a final
/// `stats ...` line on standard output.
pub fn run(socket: &Path, seed: u64, index: u64, frames: u64, key: &str, other: &str) -> i32 {
    let blobs = match ciphertexts(socket, key) {
        Ok(blobs) => blobs,
        Err(e) => {
            println!("error worker {index}: {e}");
            return 1;
        }
    };
    let seeds = Corpus::new(key, other, &blobs).requests;
    let typed: Vec<String> = crate::corpus::typed_keys(key)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let names: Vec<&str> = [key, other]
        .into_iter()
        .chain(typed.iter().map(String::as_str))
        .collect();
    let mut rng = Rng::derive(seed, index);
    let mut stats = WorkerStats::default();
    let mut anomalies = 0;
    let mut anomaly = |what: &str, i: u64, frame: &Frame| {
        anomalies += 1;
        if anomalies <= 5 {
            println!(
                "anomaly worker={index} frame={i} {what}: {}",
                hex(&frame.bytes)
            );
        }
    };
    let mut stream: Option<UnixStream> = None;
    let mut out = std::io::stdout();
    for i in 0..frames {
        if i % 5_000 == 0 && i > 0 {
            let _ = writeln!(out, "progress {i}");
            let _ = out.flush();
        }
        let frame = if rng.chance(STRUCTURED_PERCENT) {
            random_request_frame(&mut rng, &names, &blobs)
        } else {
            next_frame(&mut rng, &seeds, VALID_PERCENT)
        };
        let mut conn = match stream.take() {
            Some(conn) => conn,
            None => match connect(socket) {
                Ok(conn) => {
                    stats.connections += 1;
                    conn
                }
                Err(e) => {
                    println!("error worker {index}: {e}");
                    println!("{}", stats.line());
                    return 1;
                }
            },
        };
        if let Err(e) = conn.write_all(&frame.bytes) {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                stats.stalls += 1;
                anomaly("write stalled", i, &frame);
            } else {
                stats.write_errors += 1;
            }
            continue;
        }
        stats.frames += 1;
        stats.valid_frames += u64::from(frame.valid);
        if frame.expects_one_answer() {
            match read_frame(&mut conn, MAX_FRAME) {
                Ok(Some(body)) => match decode_response(&body) {
                    Ok(envelope) => {
                        stats.answers += 1;
                        match envelope.op {
                            Response::Error(reply) if closes_after(reply.code) => {
                                stats.closing_answers += 1;
                            }
                            Response::Error(_) => stream = Some(conn),
                            _ => {
                                stats.ok_answers += 1;
                                stream = Some(conn);
                            }
                        }
                    }
                    Err(e) => {
                        stats.bad_answers += 1;
                        anomaly(&format!("answer does not decode: {e}"), i, &frame);
                    }
                },
                Ok(None) => {
                    stats.closed_unanswered += 1;
                    anomaly("closed without an answer", i, &frame);
                }
                Err(FrameError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    stats.stalls += 1;
                    anomaly("no answer within 10 s", i, &frame);
                }
                Err(e) => {
                    stats.closed_unanswered += 1;
                    anomaly(&format!("answer unreadable: {e}"), i, &frame);
                }
            }
        } else {
            // The frame lies about its length or is cut short: end the
            // stream, and the daemon must close the connection by itself.
            let _ = conn.shutdown(Shutdown::Write);
            let started = Instant::now();
            let mut sink = [0u8; 4096];
            loop {
                match conn.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) if started.elapsed() < ANSWER_BOUND => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break;
                    }
                    _ => {
                        stats.stalls += 1;
                        anomaly("connection not closed within 10 s", i, &frame);
                        break;
                    }
                }
            }
        }
    }
    println!("{}", stats.line());
    i32::from(stats.stalls + stats.bad_answers > 0)
}

/// Pings from its own connection every 10 ms until stopped.
#[derive(Debug)]
pub struct Pinger {
    stop: Arc<AtomicBool>,
    /// Pings sent.
    pub sent: Arc<AtomicU64>,
    /// Pings answered with Pong.
    pub answered: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<Vec<String>>>,
}

impl Pinger {
    /// Starts pinging `socket`.
    pub fn start(socket: PathBuf) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, sent, answered) =
                (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&answered));
            thread::spawn(move || {
                let mut failures = Vec::new();
                let mut client: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let result = match client.take() {
                        Some(c) => Ok(c),
                        None => Client::connect(&socket).and_then(|c| {
                            c.set_timeout(Some(Duration::from_secs(5)))?;
                            Ok(c)
                        }),
                    }
                    .and_then(|mut c| c.ping().map(|()| c));
                    match result {
                        Ok(c) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            client = Some(c);
                        }
                        Err(e) if failures.len() < 10 => failures.push(e.to_string()),
                        Err(_) => {}
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                failures
            })
        };
        Pinger {
            stop,
            sent,
            answered,
            handle: Some(handle),
        }
    }

    /// Stops; returns (sent, answered, the first failures).
    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (
            self.sent.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
            failures,
        )
    }
}
