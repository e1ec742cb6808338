//! The one thread that talks to the TPM, and deadlines for whoever waits.
//!
//! tss-esapi 7 is synchronous and its TCTIs have no timeout: a TPM (or a
//! swtpm) that stops answering blocks the calling thread forever. So every
//! TPM conversation of the daemon runs here, one at a time, and callers
//! wait for its answer with a deadline. When a deadline passes the caller
//! gets [`TpmError::Timeout`] and the worker is marked stuck: every later
//! call fails at once with [`TpmError::Stuck`] until the hung command comes
//! back, so blocked threads never pile up behind a dead TPM.
//!
//! A conversation that fails because the TPM is out of object or session
//! memory (a TPM without a resource manager still holding a crashed
//! process's handles) is retried once after [`flush_stale`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{Cause, TpmError, flush_stale, has_resource_manager};
use crate::config::Tcti;

type Job = Box<dyn FnOnce(&Tcti) + Send>;

/// What the worker is doing, shared with the callers.
#[derive(Debug, Default)]
struct State {
    /// When the conversation in progress started.
    busy_since: Option<Instant>,
    /// A caller gave up on the conversation in progress.
    stuck: bool,
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

    /// Whether a TPM command is overdue, so that TPM work fails at once.
    pub fn is_stuck(&self) -> bool {
        self.shared.state().stuck
    }

    /// Runs `task` (named `what` in errors) on the worker and waits at most
    /// `timeout` for its result. Fails at once while the worker is stuck.
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
        match answered.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::Relaxed);
                let mut state = self.shared.state();
                if !state.stuck {
                    state.stuck = true;
                    tracing::error!(
                        tcti = %self.shared.tcti,
                        task = what,
                        timeout_secs = timeout.as_secs(),
                        "the TPM did not answer in time; TPM work fails at once until it does"
                    );
                }
                Err(TpmError::Timeout {
                    tcti: self.shared.tcti.to_string(),
                    secs: timeout.as_secs(),
                    task: what,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(TpmError::WorkerGone(
                "it stopped during the conversation".to_string(),
            )),
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
                    .busy_since
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
        shared.state().busy_since = Some(Instant::now());
        job(&shared.tcti);
        let mut state = shared.state();
        let waited = state.busy_since.take().map(|since| since.elapsed());
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
