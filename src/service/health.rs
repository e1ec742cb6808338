//! Whether the TPM answers, for `Status`: the [`TpmProbe`] seam, its
//! daemon implementation on the TPM worker, and the cache in front of it.

use std::sync::Arc;
use std::time::Duration;

// tokio's clock is the system's monotonic clock, except under tokio's
// paused test time, which lets tests age the cached answer.
use tokio::time::Instant;

use crate::tpm::{self, TpmError, TpmWorker};

/// How long a TPM probe result is reused before `Status` probes again.
const TPM_PROBE_MAX_AGE: Duration = Duration::from_secs(10);
/// How long `Status` waits for a probe; after that it answers with the last
/// result (unless the TPM is known to hang), and the probe goes on (up to
/// the TPM timeout) with its answer kept for later.
const TPM_PROBE_WAIT: Duration = Duration::from_secs(2);

/// Asks the TPM whether it answers. The service caches the answers and
/// bounds how long `Status` waits for one; an implementation only asks.
pub trait TpmProbe: Send + Sync + std::fmt::Debug + 'static {
    /// Whether a TPM command is known to hang (outstanding past its
    /// deadline): then `Status` says "unreachable" without asking.
    fn is_stuck(&self) -> bool;

    /// One blocking probe of the TPM, bounded by the probe's own deadline;
    /// run on the blocking pool.
    fn probe(&self) -> Result<(), TpmError>;
}

/// The daemon's [`TpmProbe`]: a probe command on the TPM worker, waiting
/// at most the TPM timeout.
#[derive(Debug)]
pub struct WorkerProbe {
    tpm: Arc<TpmWorker>,
    timeout: Duration,
}

impl WorkerProbe {
    /// Probes through `tpm`, giving up after `timeout`.
    pub fn new(tpm: Arc<TpmWorker>, timeout: Duration) -> WorkerProbe {
        WorkerProbe { tpm, timeout }
    }
}

impl TpmProbe for WorkerProbe {
    /// Stuck, or held: a conversation (the rollback counter's, a request's)
    /// has had no answer for [`TPM_PROBE_WAIT`] or more, far longer than
    /// any TPM command of hostkms's takes, so the TPM is not answering now
    /// even before that call reaches its deadline.
    fn is_stuck(&self) -> bool {
        self.tpm.is_stuck()
            || self
                .tpm
                .silent_for()
                .is_some_and(|silent| silent >= TPM_PROBE_WAIT)
    }

    fn probe(&self) -> Result<(), TpmError> {
        self.tpm.call("probing the TPM", self.timeout, tpm::probe)
    }
}

/// Whether the TPM answers, probed at most every [`TPM_PROBE_MAX_AGE`] on
/// the TPM worker, so `Status` cannot be used to keep the TPM busy. No lock
/// is held while the TPM is asked, one probe at most is out at a time, and
/// `Status` waits for it at most [`TPM_PROBE_WAIT`].
#[derive(Debug)]
pub(super) struct TpmHealth {
    tpm: Arc<dyn TpmProbe>,
    last: Arc<std::sync::Mutex<(Instant, bool)>>,
    probing: Arc<std::sync::atomic::AtomicBool>,
}

impl TpmHealth {
    /// The daemon just unsealed its root key, so the TPM answered at start.
    pub(super) fn new(tpm: Arc<dyn TpmProbe>) -> TpmHealth {
        TpmHealth {
            tpm,
            last: Arc::new(std::sync::Mutex::new((Instant::now(), true))),
            probing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    fn last(&self) -> (Instant, bool) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn reachable(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.tpm.is_stuck() {
            return false;
        }
        let (probed, answered) = self.last();
        if probed.elapsed() < TPM_PROBE_MAX_AGE || self.probing.swap(true, Ordering::AcqRel) {
            return answered;
        }
        let tpm = Arc::clone(&self.tpm);
        let (last, probing) = (Arc::clone(&self.last), Arc::clone(&self.probing));
        let probe = tokio::task::spawn_blocking(move || {
            let answered = match tpm.probe() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("TPM probe failed: {e}");
                    false
                }
            };
            *last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = (Instant::now(), answered);
            probing.store(false, Ordering::Release);
            answered
        });
        match tokio::time::timeout(TPM_PROBE_WAIT, probe).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                tracing::warn!("TPM probe did not finish: {e}");
                false
            }
            // Still waiting (a slow TPM, or queued behind other TPM work):
            // the last answer stands until the TPM is known to hang.
            Err(_) => answered && !self.tpm.is_stuck(),
        }
    }
}

/// A [`TpmProbe`] for tests, without a TPM: answers, fails, hangs (blocks
/// until released) or reports a stuck TPM, as the test sets it. Tests and
/// the `test-util` feature only.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct TestProbe {
    state: std::sync::Mutex<TestProbeState>,
    changed: std::sync::Condvar,
    probes: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default, Clone, Copy)]
struct TestProbeState {
    failing: bool,
    stuck: bool,
    hanging: bool,
}

#[cfg(any(test, feature = "test-util"))]
impl TestProbe {
    /// A probe that answers (until told otherwise).
    pub fn new() -> TestProbe {
        TestProbe::default()
    }

    fn update(&self, change: impl FnOnce(&mut TestProbeState)) {
        change(
            &mut self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.changed.notify_all();
    }

    /// Makes later probes fail (`true`) or answer (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.update(|s| s.failing = failing);
    }

    /// Reports the TPM as stuck (`true`) or not.
    pub fn set_stuck(&self, stuck: bool) {
        self.update(|s| s.stuck = stuck);
    }

    /// Makes probes block until `set_hanging(false)` (`true`), or releases them.
    pub fn set_hanging(&self, hanging: bool) {
        self.update(|s| s.hanging = hanging);
    }

    /// How many probes were started so far.
    pub fn probes(&self) -> usize {
        self.probes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(any(test, feature = "test-util"))]
impl TpmProbe for TestProbe {
    fn is_stuck(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stuck
    }

    fn probe(&self) -> Result<(), TpmError> {
        self.probes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while state.hanging {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.failing {
            return Err(TpmError::Timeout {
                tcti: "test probe".to_string(),
                secs: 0,
                task: "probing the TPM",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> (Arc<TpmHealth>, Arc<TestProbe>) {
        let probe = Arc::new(TestProbe::new());
        (Arc::new(TpmHealth::new(probe.clone())), probe)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_answer_is_reused_without_asking_the_tpm() {
        let (health, probe) = health();
        assert!(health.reachable().await);
        tokio::time::advance(TPM_PROBE_MAX_AGE - Duration::from_secs(1)).await;
        probe.set_failing(true);
        assert!(health.reachable().await);
        assert_eq!(probe.probes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_answer_is_renewed_then_cached_again() {
        let (health, probe) = health();
        probe.set_failing(true);
        tokio::time::advance(TPM_PROBE_MAX_AGE).await;
        assert!(!health.reachable().await);
        assert!(!health.reachable().await);
        assert_eq!(probe.probes(), 1);
        probe.set_failing(false);
        tokio::time::advance(TPM_PROBE_MAX_AGE).await;
        assert!(health.reachable().await);
        assert_eq!(probe.probes(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_tpm_is_unreachable_without_a_probe() {
        let (health, probe) = health();
        probe.set_stuck(true);
        assert!(!health.reachable().await);
        assert_eq!(probe.probes(), 0);
    }

    /// Releases a hanging probe however the test ends, so the runtime's
    /// blocking pool can shut down.
    struct Release(Arc<TestProbe>);

    impl Drop for Release {
        fn drop(&mut self) {
            self.0.set_hanging(false);
        }
    }

    /// `reachable()` in a task; once it has answered or started a probe,
    /// paused time is moved past the wait (a probe running on the blocking
    /// pool stops tokio from advancing paused time by itself).
    async fn reachable_past_the_wait(health: &Arc<TpmHealth>, probe: &TestProbe) -> bool {
        let before = probe.probes();
        let task = tokio::spawn({
            let health = Arc::clone(health);
            async move { health.reachable().await }
        });
        // A bound against a lost wake-up only, not a timed assertion.
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        while !task.is_finished() && probe.probes() == before {
            assert!(std::time::Instant::now() < give_up, "reachable() stalled");
            tokio::task::yield_now().await;
        }
        tokio::time::advance(TPM_PROBE_WAIT + Duration::from_secs(1)).await;
        task.await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_is_waited_for_briefly_and_one_at_a_time() {
        let (health, probe) = health();
        let _release = Release(probe.clone());
        probe.set_hanging(true);
        tokio::time::advance(TPM_PROBE_MAX_AGE).await;
        // The last answer stands while the probe is out ...
        assert!(reachable_past_the_wait(&health, &probe).await);
        assert_eq!(probe.probes(), 1);
        // ... and a second Status does not queue a second probe.
        assert!(reachable_past_the_wait(&health, &probe).await);
        assert_eq!(probe.probes(), 1);
        // A TPM known to hang is unreachable at once.
        probe.set_stuck(true);
        assert!(!health.reachable().await);
    }
}
