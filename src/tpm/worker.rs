//! The one thread that talks to the TPM, and deadlines for whoever waits.
//!
//! tss-esapi 7 is synchronous and its TCTIs have no timeout: a TPM (or a
//! swtpm) that stops answering blocks the calling thread forever. So every
//! TPM conversation of the daemon runs here, one at a time, and callers
//! wait for its answer with a deadline. When a deadline passes the caller
//! gets [`TpmError::Timeout`]; if the TPM has not answered any command for
//! the whole deadline (it hangs, rather than being slow or busy with queued
//! work), the worker is marked stuck: every later call fails at once with
//! [`TpmError::Stuck`] until the hung command comes back, so blocked
//! threads never pile up behind a dead TPM.
//!
//! A conversation that fails because the TPM is out of object or session
//! memory (a TPM without a resource manager still holding a crashed
//! process's handles) is retried once after [`flush_stale`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{Cause, Tcti, TpmError, flush_stale, has_resource_manager};

type Job = Box<dyn FnOnce(&Tcti) + Send>;

/// A caller waits at most this many times its timeout for a TPM that keeps
/// answering but has not got to (or through) its work yet.
const SLOW_FACTOR: u32 = 3;

/// What the worker is doing, shared with the callers.
#[derive(Debug, Default)]
struct State {
    /// While a conversation runs: when it started or the TPM last answered
    /// one of its commands, whichever is later. A long conversation that
    /// keeps getting answers (a batch of randomness on a slow TPM) is slow,
    /// not stuck.
    waiting_since: Option<Instant>,
    /// A caller gave up while the TPM had not answered for its whole deadline.
    stuck: bool,
}

std::thread_local! {
    /// The worker's state, on the worker thread only, for [`answered`].
    static WORKER: std::cell::RefCell<Option<Arc<Shared>>> = const { std::cell::RefCell::new(None) };
}

/// Records that the TPM just answered a command; called by [`super::Tpm`]
/// after each one. Does nothing off the worker thread.
pub(super) fn answered() {
    WORKER.with(|worker| {
        if let Some(shared) = worker.borrow().as_ref() {
            let mut state = shared.state();
            if state.waiting_since.is_some() {
                state.waiting_since = Some(Instant::now());
            }
        }
    });
}

#[derive(Debug)]
struct Shared {
    tcti: Tcti,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The TPM worker: a queue of conversations and the thread that runs them.
#[derive(Debug)]
pub struct TpmWorker {
    shared: Arc<Shared>,
    /// `None` once shut down.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Closed (by the thread's exit) when the worker thread has finished.
    finished: Mutex<Option<mpsc::Receiver<()>>>,
}

impl TpmWorker {
    /// Starts the worker thread for the TPM at `tcti`.
    pub fn start(tcti: Tcti) -> Result<TpmWorker, TpmError> {
        let shared = Arc::new(Shared {
            tcti,
            state: Mutex::new(State::default()),
        });
        let (jobs, queue) = mpsc::channel::<Job>();
        let (finishing, finished) = mpsc::channel::<()>();
        let worker = Arc::clone(&shared);
        thread::Builder::new()
            .name("hostkmsd-tpm".to_string())
            .spawn(move || {
                WORKER.with(|slot| *slot.borrow_mut() = Some(Arc::clone(&worker)));
                run(&worker, &queue);
                drop(finishing);
            })
            .map_err(|e| TpmError::WorkerGone(format!("cannot start its thread: {e}")))?;
        Ok(TpmWorker {
            shared,
            jobs: Mutex::new(Some(jobs)),
            finished: Mutex::new(Some(finished)),
        })
    }

    /// Stops taking work and waits at most `timeout` for the conversation
    /// in progress (and those queued) to end, so the process does not exit
    /// while the TSS libraries are in use; a stuck worker is not waited for.
    /// Returns whether the worker ended.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let timeout = if self.is_stuck() {
            Duration::ZERO
        } else {
            timeout
        };
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let finished = self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match finished {
            Some(finished) => matches!(
                finished.recv_timeout(timeout),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            None => true,
        }
    }

    /// The TPM this worker talks to.
    pub fn tcti(&self) -> &Tcti {
        &self.shared.tcti
    }

    /// While a conversation runs: how long the TPM has not answered any of
    /// its commands. `None` while the worker is idle.
    pub fn silent_for(&self) -> Option<Duration> {
        self.shared
            .state()
            .waiting_since
            .map(|since| since.elapsed())
    }

    /// Whether a TPM command is overdue, so that TPM work fails at once.
    pub fn is_stuck(&self) -> bool {
        self.shared.state().stuck
    }

    /// Runs `task` (named `what` in errors) on the worker and waits for its
    /// result until the TPM has been silent for `timeout` ([`TpmError::Timeout`],
    /// and the worker is stuck) or three times `timeout` have
    /// passed ([`TpmError::Slow`]). Fails at once while the worker is stuck.
    pub fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        timeout: Duration,
        task: impl FnMut(&Tcti) -> Result<T, TpmError> + Send + 'static,
    ) -> Result<T, TpmError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        let gave_up = Arc::clone(&abandoned);
        self.submit(Box::new(move |tcti: &Tcti| {
            // Queued behind a command that hung, and given up on since.
            if gave_up.load(Ordering::Relaxed) {
                return;
            }
            let _ = answer.send(with_flush_retry(tcti, task));
        }))?;
        // Wait while the TPM keeps answering (the worker may be busy with
        // queued work on a slow TPM), until it has been silent for
        // `timeout`, and never longer than SLOW_FACTOR times `timeout`.
        let started = Instant::now();
        let cap = timeout * SLOW_FACTOR;
        loop {
            let silent_for = self
                .shared
                .state()
                .waiting_since
                .map_or(Duration::ZERO, |since| since.elapsed());
            let wait = timeout
                .saturating_sub(silent_for)
                .max(Duration::from_millis(20))
                .min(cap.saturating_sub(started.elapsed()));
            match answered.recv_timeout(wait) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(TpmError::WorkerGone(
                        "it stopped during the conversation".to_string(),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let mut state = self.shared.state();
            let silent = state
                .waiting_since
                .is_some_and(|since| since.elapsed() >= timeout);
            if !silent && started.elapsed() < cap {
                continue;
            }
            abandoned.store(true, Ordering::Relaxed);
            if !silent {
                return Err(TpmError::Slow {
                    tcti: self.shared.tcti.to_string(),
                    secs: cap.as_secs(),
                    task: what,
                });
            }
            if !state.stuck {
                state.stuck = true;
                tracing::error!(
                    tcti = %self.shared.tcti,
                    task = what,
                    timeout_secs = timeout.as_secs(),
                    "the TPM did not answer in time; TPM work fails at once until it does"
                );
            }
            return Err(TpmError::Timeout {
                tcti: self.shared.tcti.to_string(),
                secs: timeout.as_secs(),
                task: what,
            });
        }
    }

    /// Runs `task` on the worker without waiting for it (background work
    /// such as refilling randomness). Fails at once while the worker is stuck.
    pub fn spawn(
        &self,
        task: impl FnMut(&Tcti) -> Result<(), TpmError> + Send + 'static,
        on_error: impl FnOnce(TpmError) + Send + 'static,
    ) -> Result<(), TpmError> {
        self.submit(Box::new(move |tcti: &Tcti| {
            if let Err(e) = with_flush_retry(tcti, task) {
                on_error(e);
            }
        }))
    }

    fn submit(&self, job: Job) -> Result<(), TpmError> {
        {
            let state = self.shared.state();
            if state.stuck {
                let secs = state
                    .waiting_since
                    .map_or(0, |since| since.elapsed().as_secs());
                return Err(TpmError::Stuck {
                    tcti: self.shared.tcti.to_string(),
                    secs,
                });
            }
        }
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .ok_or_else(|| TpmError::WorkerGone("the daemon is stopping".to_string()))?
            .send(job)
            .map_err(|_| TpmError::WorkerGone("its thread has exited".to_string()))
    }
}

/// The worker thread: runs each job in turn, recording when it started so
/// that a caller who gives up can say for how long the TPM has been silent.
fn run(shared: &Shared, queue: &mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        shared.state().waiting_since = Some(Instant::now());
        job(&shared.tcti);
        let mut state = shared.state();
        let waited = state.waiting_since.take().map(|since| since.elapsed());
        if std::mem::take(&mut state.stuck) {
            tracing::warn!(
                tcti = %shared.tcti,
                after_secs = waited.map_or(0, |w| w.as_secs()),
                "the TPM answered again; TPM work resumes"
            );
        }
    }
}

/// Runs `task`; if the TPM is out of object or session memory and has no
/// resource manager, flushes its stale handles and runs `task` once more.
fn with_flush_retry<T>(
    tcti: &Tcti,
    mut task: impl FnMut(&Tcti) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    match task(tcti) {
        Err(error) if error.cause() == Cause::OutOfMemory && !has_resource_manager(tcti) => {
            match flush_stale(tcti) {
                Ok(flushed) => {
                    tracing::warn!(
                        flushed,
                        "the TPM was out of memory ({error}); flushed {flushed} stale transient objects and sessions and retried"
                    );
                    task(tcti)
                }
                Err(flush_error) => {
                    tracing::warn!("could not flush the TPM's stale handles: {flush_error}");
                    Err(error)
                }
            }
        }
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn worker() -> TpmWorker {
        TpmWorker::start(Tcti::from_str("swtpm:host=127.0.0.1,port=9").expect("TCTI"))
            .expect("worker")
    }

    #[test]
    fn a_silent_tpm_times_out_then_fails_fast_until_it_answers() {
        let worker = worker();
        let (release, hung) = mpsc::channel::<()>();
        let hung = Mutex::new(hung);
        let started = Instant::now();
        let result = worker.call("hanging", Duration::from_millis(300), move |_| {
            let _ = hung.lock().expect("lock").recv();
            Ok(())
        });
        assert!(
            matches!(result, Err(TpmError::Timeout { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(worker.is_stuck());

        let started = Instant::now();
        let result = worker.call("next", Duration::from_secs(30), |_| Ok(1));
        assert!(matches!(result, Err(TpmError::Stuck { .. })), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "fails at once while stuck"
        );

        release.send(()).expect("release the hung command");
        let deadline = Instant::now() + Duration::from_secs(10);
        while worker.is_stuck() {
            assert!(Instant::now() < deadline, "the worker stays stuck");
            thread::sleep(Duration::from_millis(10));
        }
        let answer = worker.call("after", Duration::from_secs(10), |_| Ok(7));
        assert_eq!(answer.expect("works again"), 7);
        assert!(worker.shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn a_tpm_that_keeps_answering_is_slow_not_stuck() {
        let worker = worker();
        let timeout = Duration::from_secs(1);
        let result = worker.call("a long batch", timeout, move |_| {
            // Answers every 50 ms for four deadlines.
            let until = Instant::now() + timeout * 4;
            while Instant::now() < until {
                thread::sleep(Duration::from_millis(50));
                answered();
            }
            Ok(())
        });
        assert!(matches!(result, Err(TpmError::Slow { .. })), "{result:?}");
        assert!(!worker.is_stuck(), "a slow TPM is not a hung one");
        // A call queued behind the long batch waits for it.
        let answer = worker.call("queued", Duration::from_secs(10), |_| Ok(()));
        assert!(answer.is_ok(), "{answer:?}");
    }
}
