//! `hostkms bench --batch N`: wrap-batch or unwrap-batch requests of N
//! items, measured like the single requests of the same run, so their
//! items per second can be compared with the single requests' rate.

use std::path::Path;

use agent_proto::ciphertext::MAGIC;
use agent_proto::{Ciphertext, EncryptionContext, ErrorReply, SecretBytes, UnwrapItem, WrapItem};

use super::{Failure, PhaseLength, PhaseResult, check_failed, run_phase};
use crate::args::BenchOp;
use crate::error::CliError;

/// What one batch request carries.
pub(super) struct Workload<'a> {
    /// `Wrap` or `Unwrap` (the caller refuses the others).
    pub op: BenchOp,
    /// The key.
    pub key: &'a str,
    /// Items per request.
    pub items: usize,
    /// The plaintext of every wrap item, and what every unwrap item must give.
    pub payload: &'a [u8],
    /// The ciphertext every unwrap item carries.
    pub ciphertext: &'a Ciphertext,
    /// Every item's context.
    pub context: &'a EncryptionContext,
}

/// Runs the batch phase: each request counts once in the result's `ops`
/// and latencies, and succeeds only when every item did.
pub(super) fn measure(
    socket: &Path,
    connections: usize,
    length: PhaseLength,
    work: Workload<'_>,
) -> Result<PhaseResult, CliError> {
    let wrap_items: Vec<WrapItem> = match work.op {
        BenchOp::Wrap => (0..work.items)
            .map(|_| WrapItem {
                plaintext: SecretBytes::from(work.payload),
                context: work.context.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let unwrap_items: Vec<UnwrapItem> = match work.op {
        BenchOp::Unwrap => (0..work.items)
            .map(|_| UnwrapItem {
                ciphertext: work.ciphertext.clone(),
                context: work.context.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    run_phase(socket, connections, length, |client| match work.op {
        BenchOp::Wrap => {
            let results = client.wrap_batch(work.key, wrap_items.clone())?;
            check_all(&results, work.items, |wrapped| {
                if wrapped.ciphertext.as_bytes().starts_with(&MAGIC) {
                    Ok(())
                } else {
                    Err("an item is not a ciphertext")
                }
            })
        }
        _ => {
            let results = client.unwrap_batch(Some(work.key), unwrap_items.clone())?;
            check_all(&results, work.items, |unwrapped| {
                if unwrapped.plaintext.expose() == work.payload {
                    Ok(())
                } else {
                    Err("an item unwrapped to other bytes than were wrapped")
                }
            })
        }
    })
}

/// Succeeds when there are `expected` results, every one `Ok` and passing
/// `check`.
fn check_all<T>(
    results: &[Result<T, ErrorReply>],
    expected: usize,
    check: impl Fn(&T) -> Result<(), &'static str>,
) -> Result<(), Failure> {
    if results.len() != expected {
        return Err(check_failed(&format!(
            "the batch answer has {} results for {expected} items",
            results.len()
        )));
    }
    let failed = results.iter().find_map(|item| match item {
        Ok(done) => check(done).err().map(str::to_string),
        Err(reply) => Some(reply.message.clone()),
    });
    match failed {
        Some(message) => Err(check_failed(&format!("a batch item failed: {message}"))),
        None => Ok(()),
    }
}

/// Batch items per second ÷ single requests per second (0 when the single
/// phase measured nothing).
pub(super) fn ratio(single: &PhaseResult, batch: &PhaseResult, items: u16) -> f64 {
    let single_rate = single.ops_per_sec();
    if single_rate > 0.0 {
        batch.ops_per_sec() * f64::from(items) / single_rate
    } else {
        0.0
    }
}
