//! The encrypt path's limit: every wrap and data key counts against the
//! latest version; the count is reserved on disk before a ciphertext
//! leaves; a version at `rotate_after` is replaced by a new one; the
//! near-the-limit alert is raised once per version.

use std::path::PathBuf;

use agent_proto::{
    Ciphertext, EncryptionContext, ErrorCode, Request, Response, SecretBytes, Unwrapped,
};

use super::testing::TestServiceBuilder;
use super::*;
use crate::keystore::RESERVATION_STEP;

/// uid 0 is an admin, which every operation allows.
fn root_peer() -> Peer {
    Peer {
        uid: 0,
        gid: 0,
        pid: None,
        groups: Vec::new(),
        unit: None,
        user_unit: None,
        unit_unknown: None,
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    builder: TestServiceBuilder,
}

impl Fixture {
    fn new(rotate_after: u64) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let builder = TestServiceBuilder::new().limits(ServiceLimits {
            max_plaintext: 1024,
            rotate_after,
            max_frame: agent_proto::DEFAULT_MAX_FRAME,
        });
        Fixture {
            _tmp: tmp,
            dir,
            builder,
        }
    }

    fn service(&self) -> Service {
        self.builder.build(&self.dir, Policy::default()).unwrap()
    }
}

async fn wrap(service: &Service, key: &str, plaintext: &[u8]) -> Response {
    service
        .handle(
            &root_peer(),
            Request::Wrap {
                key: key.to_string(),
                plaintext: SecretBytes::new(plaintext.to_vec()),
                context: EncryptionContext::new(),
            },
        )
        .await
}

/// The version and ciphertext of a successful wrap.
async fn wrapped(service: &Service, key: &str, plaintext: &[u8]) -> (u32, Ciphertext) {
    match wrap(service, key, plaintext).await {
        Response::Wrapped(w) => (w.version, w.ciphertext),
        other => panic!("expected Wrapped, got {other:?}"),
    }
}

async fn data_key_version(service: &Service, key: &str) -> u32 {
    let request = Request::GenerateDataKey {
        key: key.to_string(),
        bytes: 32,
        include_plaintext: false,
        context: EncryptionContext::new(),
    };
    match service.handle(&root_peer(), request).await {
        Response::DataKey(d) => d.version,
        other => panic!("expected DataKey, got {other:?}"),
    }
}

async fn unwrap(service: &Service, ciphertext: Ciphertext) -> Unwrapped {
    let request = Request::Unwrap {
        ciphertext,
        context: EncryptionContext::new(),
        key: None,
    };
    match service.handle(&root_peer(), request).await {
        Response::Unwrapped(u) => u,
        other => panic!("expected Unwrapped, got {other:?}"),
    }
}

fn encryptions(service: &Service, key: &str, version: u32) -> u64 {
    service
        .store()
        .expect("the test service is unlocked")
        .keys()
        .by_name(key)
        .unwrap()
        .version(version)
        .unwrap()
        .encryptions()
}

#[tokio::test]
async fn a_version_at_its_limit_is_replaced_by_a_new_one() {
    let fixture = Fixture::new(3);
    let service = fixture.service();
    service
        .store()
        .expect("the test service is unlocked")
        .create("k")
        .unwrap();

    let (first, old) = wrapped(&service, "k", b"one").await;
    assert_eq!(first, 1);
    assert_eq!(wrapped(&service, "k", b"two").await.0, 1);
    // Data keys count against the same limit.
    assert_eq!(data_key_version(&service, "k").await, 1);
    assert_eq!(encryptions(&service, "k", 1), 3);
    assert_eq!(fixture.builder.entropy().taken(), 1);

    let (next, _) = wrapped(&service, "k", b"four").await;
    assert_eq!(next, 2);
    let keys = service
        .store()
        .expect("the test service is unlocked")
        .keys();
    let key = keys.by_name("k").unwrap();
    assert_eq!(key.latest_version(), 2);
    assert_eq!(key.version(1).unwrap().encryptions(), 3);
    assert_eq!(key.version(2).unwrap().encryptions(), 1);
    assert_eq!(fixture.builder.entropy().taken(), 2);
    // The old version still decrypts what it made.
    let plain = unwrap(&service, old).await;
    assert_eq!((plain.version, plain.plaintext.expose()), (1, &b"one"[..]));
}

#[tokio::test]
async fn a_version_at_its_limit_without_tpm_randomness_refuses_instead_of_overrunning() {
    let fixture = Fixture::new(2);
    let service = fixture.service();
    service
        .store()
        .expect("the test service is unlocked")
        .create("k")
        .unwrap();
    wrapped(&service, "k", b"a").await;
    wrapped(&service, "k", b"b").await;

    fixture.builder.entropy().set_unavailable(true);
    match wrap(&service, "k", b"c").await {
        Response::Error(reply) => assert_eq!(reply.code, ErrorCode::TpmUnavailable),
        other => panic!("expected TpmUnavailable, got {other:?}"),
    }
    assert_eq!(encryptions(&service, "k", 1), 2);
    assert_eq!(
        service
            .store()
            .expect("the test service is unlocked")
            .keys()
            .by_name("k")
            .unwrap()
            .latest_version(),
        1
    );

    fixture.builder.entropy().set_unavailable(false);
    assert_eq!(wrapped(&service, "k", b"c").await.0, 2);
}

#[tokio::test]
async fn the_count_is_reserved_on_disk_before_the_ciphertext_leaves() {
    let fixture = Fixture::new(10);
    let service = fixture.service();
    service
        .store()
        .expect("the test service is unlocked")
        .create("k")
        .unwrap();
    wrapped(&service, "k", b"x").await;
    // A crash now (no clean shutdown): the reopened store counts the whole
    // reservation, an upper bound, so the version is over its limit ...
    drop(service);
    let service = fixture.service();
    assert_eq!(encryptions(&service, "k", 1), 1 + RESERVATION_STEP);
    // ... and the next wrap rotates rather than exceed it.
    assert_eq!(wrapped(&service, "k", b"y").await.0, 2);
}

#[tokio::test]
async fn a_clean_shutdown_keeps_the_exact_count() {
    let fixture = Fixture::new(10);
    let service = fixture.service();
    service
        .store()
        .expect("the test service is unlocked")
        .create("k")
        .unwrap();
    wrapped(&service, "k", b"x").await;
    wrapped(&service, "k", b"y").await;
    service
        .store()
        .expect("the test service is unlocked")
        .persist_counts()
        .unwrap();
    drop(service);
    let service = fixture.service();
    assert_eq!(encryptions(&service, "k", 1), 2);
    assert_eq!(wrapped(&service, "k", b"z").await.0, 1);
}

#[tokio::test]
async fn the_limit_alert_is_raised_once_per_version() {
    let tmp = tempfile::tempdir().unwrap();
    let builder = TestServiceBuilder::new()
        .limits(ServiceLimits {
            max_plaintext: 1024,
            rotate_after: 4,
            max_frame: agent_proto::DEFAULT_MAX_FRAME,
        })
        .alerts(AlertThresholds {
            encryption_limit_percent: 50,
            ..AlertThresholds::default()
        });
    let service = builder
        .build(&tmp.path().join("state"), Policy::default())
        .unwrap();
    service
        .store()
        .expect("the test service is unlocked")
        .create("k")
        .unwrap();
    let alerts = |service: &Service| service.monitor().counters()["alerts.encryption-limit"];

    wrapped(&service, "k", b"1").await;
    assert_eq!(alerts(&service), 0);
    wrapped(&service, "k", b"2").await;
    assert_eq!(alerts(&service), 1);
    wrapped(&service, "k", b"3").await;
    wrapped(&service, "k", b"4").await;
    assert_eq!(alerts(&service), 1);
    // Version 2 gets its own alert at its own half.
    assert_eq!(wrapped(&service, "k", b"5").await.0, 2);
    wrapped(&service, "k", b"6").await;
    assert_eq!(alerts(&service), 2);
}
