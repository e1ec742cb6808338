//! Phase one: mutated frames through agent-proto's decoder in this process
//! (`codec::read_frame` over a reader that returns short reads, then
//! `codec::decode_body` as a request and as a response), every call under
//! `catch_unwind`.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use agent_proto::codec::{decode_body, decode_request, decode_response, read_frame};
use agent_proto::{Request, Response};

use crate::corpus::{Corpus, MAX_FRAME};
use crate::mutate::{next_frame, random_request_frame};
use crate::rng::Rng;

/// What phase one saw.
#[derive(Debug, Default)]
pub struct DecoderReport {
    /// Frames decoded.
    pub frames: u64,
    /// Calls that panicked (caught).
    pub panics: u64,
    /// Bodies that decoded into a request.
    pub requests_decoded: u64,
    /// Bodies that decoded into a response.
    pub responses_decoded: u64,
    /// Frames `read_frame` refused (length, truncation).
    pub frames_refused: u64,
    /// The first panics: worker, frame index, message, frame bytes in hex.
    pub first_panics: Vec<String>,
    /// Seconds it took.
    pub seconds: f64,
}

/// A reader over `bytes` that hands out at most a random few bytes per
/// call, as a socket may.
struct ShortReads<'a> {
    bytes: &'a [u8],
    rng: Rng,
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len()).min(1 + self.rng.below(64));
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// Outcomes of one frame.
#[derive(Default)]
struct Outcome {
    requests: u64,
    responses: u64,
    refused: u64,
}

fn decode_everything(bytes: &[u8], rng: Rng) -> Outcome {
    let mut outcome = Outcome::default();
    // The body as the prefix claims it, through the framing code.
    let mut reader = ShortReads { bytes, rng };
    loop {
        match read_frame(&mut reader, MAX_FRAME) {
            Ok(Some(body)) => {
                outcome.requests += u64::from(decode_request(&body).is_ok());
                outcome.responses += u64::from(decode_response(&body).is_ok());
                let _ = decode_body::<Request>(&body);
                let _ = decode_body::<Response>(&body);
            }
            Ok(None) => break,
            Err(_) => {
                outcome.refused += 1;
                break;
            }
        }
    }
    // The body as it is, whatever the prefix says.
    let body = bytes.get(4..).unwrap_or_default();
    let _ = decode_body::<Request>(body);
    let _ = decode_body::<Response>(body);
    let _ = decode_request(body);
    let _ = decode_response(body);
    outcome
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `frames` mutated frames on `threads` threads from `seed`; request
/// and response seeds alternate. Panics are caught, counted and kept.
pub fn run(seed: u64, frames: u64, threads: u64, corpus: &Corpus) -> DecoderReport {
    let started = Instant::now();
    let panics = AtomicU64::new(0);
    let first_panics = Mutex::new(Vec::new());
    let totals = Mutex::new(Outcome::default());
    // The default hook would print a backtrace per panic; they are counted
    // and the first ones printed in the report instead.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (panics, first_panics, totals) = (&panics, &first_panics, &totals);
            scope.spawn(move || {
                let mut rng = Rng::derive(seed, 1_000 + t);
                let mut local = Outcome::default();
                let share = frames / threads + u64::from(t < frames % threads);
                for i in 0..share {
                    let seeds = if i % 2 == 0 {
                        &corpus.requests
                    } else {
                        &corpus.responses
                    };
                    let frame = if i % 4 == 0 {
                        random_request_frame(&mut rng, &["fuzz", "demo"], &[])
                    } else {
                        next_frame(&mut rng, seeds, 10)
                    };
                    let reads = Rng::new(rng.next_u64());
                    match catch_unwind(AssertUnwindSafe(|| decode_everything(&frame.bytes, reads)))
                    {
                        Ok(o) => {
                            local.requests += o.requests;
                            local.responses += o.responses;
                            local.refused += o.refused;
                        }
                        Err(payload) => {
                            panics.fetch_add(1, Ordering::Relaxed);
                            let message = payload
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            let mut first = first_panics.lock().unwrap_or_else(|e| e.into_inner());
                            if first.len() < 10 {
                                first.push(format!(
                                    "thread {t} frame {i}: {message}; frame {}",
                                    hex(&frame.bytes)
                                ));
                            }
                        }
                    }
                }
                let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
                totals.requests += local.requests;
                totals.responses += local.responses;
                totals.refused += local.refused;
            });
        }
    });
    std::panic::set_hook(previous_hook);
    let totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    DecoderReport {
        frames,
        panics: panics.into_inner(),
        requests_decoded: totals.requests,
        responses_decoded: totals.responses,
        frames_refused: totals.refused,
        first_panics: first_panics.into_inner().unwrap_or_else(|e| e.into_inner()),
        seconds: started.elapsed().as_secs_f64(),
    }
}
