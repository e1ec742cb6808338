//! A whole [`Service`] in-process, without swtpm or the daemon: a root key
//! from fixed bytes, a key store in a temporary directory fed by
//! [`TestEntropy`] (and `GenerateRandom` by another), and a [`TestProbe`] for `Status`. For unit tests of the
//! service and the server; only in tests and with the `test-util` feature.
//!
//! ```ignore
//! let tmp = tempfile::tempdir()?;
//! // The state dir must be new (it is created 0700) or mode 0700 already:
//! // a tempdir may be 0755, so use a directory below it.
//! let service = service_in(&tmp.path().join("state"), Policy::default())?;
//! ```

use std::path::Path;
use std::sync::Arc;

use super::{Service, ServiceLimits, TestProbe};
use crate::config::{DEFAULT_MAX_PLAINTEXT, DEFAULT_ROTATE_AFTER_ENCRYPTIONS};
use crate::keystore::{KeyStore, StoreError, TestEntropy};
use crate::monitor::AlertThresholds;
use crate::policy::Policy;
use crate::rootkey::{ROOT_KEY_LEN, RootKey};
use crate::state_dir::{StateDir, StateDirError};

/// The root key [`service_in`] uses unless told otherwise.
pub const TEST_ROOT_KEY: [u8; ROOT_KEY_LEN] = [0x5a; ROOT_KEY_LEN];

/// Why a test service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TestServiceError {
    /// The directory is not usable as a state dir.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The key store would not open (e.g. written under another root key).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds test services; keeps the entropy source and the probe so a test
/// can make the "TPM" fail or hang after the service is built.
#[derive(Debug, Clone)]
pub struct TestServiceBuilder {
    root_key: [u8; ROOT_KEY_LEN],
    limits: ServiceLimits,
    alerts: AlertThresholds,
    entropy: Arc<TestEntropy>,
    random: Arc<TestEntropy>,
    probe: Arc<TestProbe>,
    clock: crate::clock::Clock,
}

impl Default for TestServiceBuilder {
    fn default() -> TestServiceBuilder {
        TestServiceBuilder::new()
    }
}

impl TestServiceBuilder {
    /// The daemon's default limits and alert thresholds, [`TEST_ROOT_KEY`],
    /// a TPM that answers.
    pub fn new() -> TestServiceBuilder {
        TestServiceBuilder {
            root_key: TEST_ROOT_KEY,
            limits: ServiceLimits {
                max_plaintext: DEFAULT_MAX_PLAINTEXT,
                rotate_after: DEFAULT_ROTATE_AFTER_ENCRYPTIONS,
                max_frame: agent_proto::DEFAULT_MAX_FRAME,
            },
            alerts: AlertThresholds::default(),
            entropy: Arc::new(TestEntropy::new()),
            random: Arc::new(TestEntropy::new()),
            probe: Arc::new(TestProbe::new()),
            clock: crate::clock::Clock::system(),
        }
    }

    /// Uses `bytes` as the root key.
    pub fn root_key(mut self, bytes: [u8; ROOT_KEY_LEN]) -> TestServiceBuilder {
        self.root_key = bytes;
        self
    }

    /// Uses `limits` (plaintext size, rotate-after count).
    pub fn limits(mut self, limits: ServiceLimits) -> TestServiceBuilder {
        self.limits = limits;
        self
    }

    /// Uses `clock` for the store (a [`crate::clock::Clock::movable`] one
    /// moves time for the test); the real clocks otherwise.
    pub fn clock(mut self, clock: crate::clock::Clock) -> TestServiceBuilder {
        self.clock = clock;
        self
    }

    /// Uses `alerts` as the alert thresholds.
    pub fn alerts(mut self, alerts: AlertThresholds) -> TestServiceBuilder {
        self.alerts = alerts;
        self
    }

    /// The entropy source the store draws new KEKs from.
    pub fn entropy(&self) -> Arc<TestEntropy> {
        Arc::clone(&self.entropy)
    }

    /// The source `GenerateRandom` mixes in, apart from the store's.
    pub fn random(&self) -> Arc<TestEntropy> {
        Arc::clone(&self.random)
    }

    /// The probe `Status` asks.
    pub fn probe(&self) -> Arc<TestProbe> {
        Arc::clone(&self.probe)
    }

    /// Opens (or creates) the key store in state dir `dir` (created 0700 if
    /// missing; an existing one must be 0700, as the daemon demands) and
    /// builds a service over it with `policy`. Building again on the same `dir` reopens the store,
    /// as a daemon restart does.
    pub fn build(&self, dir: &Path, policy: Policy) -> Result<Service, TestServiceError> {
        let state_dir = StateDir::open(dir)?;
        let root = RootKey::from_bytes_for_tests(self.root_key);
        let store = KeyStore::open(&state_dir, &root, self.entropy.clone(), self.clock.clone())?;
        Ok(
            Service::new(store, policy, self.limits, self.alerts, self.probe.clone())
                .with_random_source(self.random.clone()),
        )
    }
}

/// A service over a key store in state dir `dir` (created 0700 if missing)
/// with `policy`,
/// the daemon's default limits, and a TPM that answers.
pub fn service_in(dir: &Path, policy: Policy) -> Result<Service, TestServiceError> {
    TestServiceBuilder::new().build(dir, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_service_keeps_its_store_across_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let service = service_in(&dir, Policy::default()).unwrap();
        service
            .store()
            .expect("the test service is unlocked")
            .create("app.db")
            .unwrap();
        drop(service);
        let again = service_in(&dir, Policy::default()).unwrap();
        assert!(
            again
                .store()
                .expect("the test service is unlocked")
                .keys()
                .by_name("app.db")
                .is_some()
        );
    }

    #[test]
    fn another_root_key_does_not_open_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        drop(service_in(&dir, Policy::default()).unwrap());
        let other = TestServiceBuilder::new()
            .root_key([1; ROOT_KEY_LEN])
            .build(&dir, Policy::default());
        assert!(matches!(
            other,
            Err(TestServiceError::Store(StoreError::WrongRootKey { .. }))
        ));
    }

    #[test]
    fn an_unavailable_entropy_source_refuses_new_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let builder = TestServiceBuilder::new();
        let service = builder.build(&dir, Policy::default()).unwrap();
        builder.entropy().set_unavailable(true);
        assert!(matches!(
            service
                .store()
                .expect("the test service is unlocked")
                .create("k"),
            Err(StoreError::Tpm(_))
        ));
        builder.entropy().set_unavailable(false);
        service
            .store()
            .expect("the test service is unlocked")
            .create("k")
            .unwrap();
        assert_eq!(builder.entropy().taken(), 1);
    }
}
