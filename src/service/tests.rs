//! `Service::handle` in-process, without a TPM: every operation's answer
//! and every refusal the service makes, asserted exactly, for peers built
//! by hand (uid, groups, units) under grants resolved by [`Policy`].
//!
//! The service runs over a key store in a temporary state dir, under a root
//! key made from bytes, with a test entropy source and TPM probe
//! ([`super::testing`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use agent_proto::{
    Ciphertext, EncryptionContext, ErrorCode, KeyInfo, KeyPage, KeyState, OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION, Request, Response, SecretBytes, StatusInfo, VersionState, Wrapped,
};

use super::testing::{TEST_ROOT_KEY, TestServiceBuilder};
use super::*;
use crate::keystore::TestEntropy;
use crate::monitor::AlertThresholds;
use crate::peer::{Peer, UnitUnknown};
use crate::policy::{GrantConfig, Policy};
use agent_proto::ciphertext::{HEADER_LEN, OVERHEAD};

/// The uid of the one non-admin peer most tests use.
const APP: u32 = 1000;
/// A uid no grant names.
const STRANGER: u32 = 2000;
/// A uid granted `metrics` only, in the tests that say so.
const MONITOR: u32 = 3000;
/// The message every ciphertext that does not unwrap gets.
const INVALID: &str = "the ciphertext is not valid for any key this daemon holds with this context";

/// Limits small enough to reach in a test.
const LIMITS: ServiceLimits = ServiceLimits {
    max_plaintext: 1000,
    rotate_after: 1 << 30,
    max_frame: agent_proto::DEFAULT_MAX_FRAME,
};

/// A service in a temporary state dir; the dir lives as long as this.
struct Fixture {
    service: Service,
    entropy: Arc<TestEntropy>,
    probe: Arc<TestProbe>,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    /// A service under `grants` and `admin_groups` with `limits`.
    fn build(grants: &[GrantConfig], admin_groups: &[&str], limits: ServiceLimits) -> Fixture {
        let admin_groups: Vec<String> = admin_groups.iter().map(|g| g.to_string()).collect();
        let (policy, missing) = Policy::new(grants, &admin_groups).expect("grants resolve");
        assert!(missing.is_empty(), "{missing:?}");
        let tmp = tempfile::tempdir().expect("tempdir");
        let builder = TestServiceBuilder::new().limits(limits);
        let service = builder
            .build(&tmp.path().join("state"), policy)
            .expect("test service");
        Fixture {
            service,
            entropy: builder.entropy(),
            probe: builder.probe(),
            _tmp: tmp,
        }
    }

    /// A service under `grants` (no admin groups) with `limits`.
    fn new(grants: &[GrantConfig], limits: ServiceLimits) -> Fixture {
        Fixture::build(grants, &[], limits)
    }

    /// A service where uid [`APP`] may use keys `app-*` for `ops`.
    fn with_app_grant(ops: &[&str]) -> Fixture {
        Fixture::new(&[grant(&[APP], &["app-*"], ops)], LIMITS)
    }

    async fn call(&self, peer: &Peer, request: Request) -> Response {
        self.service.handle(peer, request).await
    }

    /// Creates `name` as root and returns its metadata.
    async fn create(&self, name: &str) -> KeyInfo {
        key_info(self.call(&admin(), create(name)).await)
    }

    /// Wraps `plaintext` under `key` as `peer`.
    async fn wrap(
        &self,
        peer: &Peer,
        key: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Wrapped {
        match self.call(peer, wrap(key, plaintext, ctx)).await {
            Response::Wrapped(wrapped) => wrapped,
            other => panic!("expected Wrapped, got {other:?}"),
        }
    }

    /// The encryption counts of `key`'s versions, oldest first.
    async fn counts(&self, key: &str) -> Vec<u64> {
        let info = key_info(self.call(&admin(), describe(key)).await);
        info.versions.iter().map(|v| v.encryptions).collect()
    }
}

/// Seconds since the Unix epoch, as the key store stamps creation.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn peer(uid: u32) -> Peer {
    Peer {
        uid,
        gid: uid,
        pid: Some(4242),
        groups: Vec::new(),
        unit: None,
        user_unit: None,
        unit_unknown: Some(UnitUnknown::NoUnit),
    }
}

fn admin() -> Peer {
    peer(0)
}

fn grant(uids: &[u32], keys: &[&str], ops: &[&str]) -> GrantConfig {
    GrantConfig {
        keys: keys.iter().map(|s| s.to_string()).collect(),
        uids: uids.to_vec(),
        ops: ops.iter().map(|s| s.to_string()).collect(),
        ..GrantConfig::default()
    }
}

fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn refusal(code: ErrorCode, message: &str) -> Response {
    Response::error(code, message)
}

fn invalid() -> Response {
    refusal(ErrorCode::InvalidCiphertext, INVALID)
}

fn denied(uid: u32, op: &str, key: &str) -> Response {
    refusal(
        ErrorCode::PermissionDenied,
        &format!("uid {uid} may not {op} with key {key:?}"),
    )
}

/// The one refusal of a ciphertext to a peer without a grant on its key.
fn denied_ciphertext(uid: u32, op: &str) -> Response {
    refusal(
        ErrorCode::PermissionDenied,
        &format!(
            "uid {uid} holds no grant to {op} with the key this ciphertext names, or the ciphertext names no key of this host (damaged, or made on another host); if it is this host's, an admin can grant access in the config's [[grant]] tables"
        ),
    )
}

fn key_info(response: Response) -> KeyInfo {
    match response {
        Response::Key(info) => info,
        other => panic!("expected Key, got {other:?}"),
    }
}

fn create(name: &str) -> Request {
    Request::CreateKey {
        name: name.to_string(),
        key_type: agent_proto::KeyType::Aes256Gcm,
        settings: Default::default(),
    }
}

fn wrap(key: &str, plaintext: &[u8], context: &EncryptionContext) -> Request {
    Request::Wrap {
        key: key.to_string(),
        plaintext: SecretBytes::new(plaintext.to_vec()),
        context: context.clone(),
    }
}

fn unwrap(ciphertext: &Ciphertext, context: &EncryptionContext, key: Option<&str>) -> Request {
    Request::Unwrap {
        ciphertext: ciphertext.clone(),
        context: context.clone(),
        key: key.map(str::to_string),
    }
}

fn rewrap(ciphertext: &Ciphertext, context: &EncryptionContext, key: Option<&str>) -> Request {
    Request::Rewrap {
        ciphertext: ciphertext.clone(),
        context: context.clone(),
        key: key.map(str::to_string),
        destination: None,
    }
}

fn data_key(
    key: &str,
    bytes: u16,
    include_plaintext: bool,
    context: &EncryptionContext,
) -> Request {
    Request::GenerateDataKey {
        key: key.to_string(),
        bytes,
        include_plaintext,
        context: context.clone(),
    }
}

fn rotate(key: &str) -> Request {
    Request::Rotate {
        key: key.to_string(),
    }
}

fn revoke(key: &str, version: Option<u32>) -> Request {
    Request::Revoke {
        key: key.to_string(),
        version,
    }
}

fn disable(key: &str) -> Request {
    Request::Disable {
        key: key.to_string(),
    }
}

fn enable(key: &str) -> Request {
    Request::Enable {
        key: key.to_string(),
    }
}

fn min_version(key: &str, version: u32) -> Request {
    Request::SetMinDecryptionVersion {
        key: key.to_string(),
        version,
    }
}

fn describe(key: &str) -> Request {
    Request::DescribeKey {
        key: key.to_string(),
    }
}

/// A `ListKeys` of every key the peer may see (no page limit, as a
/// protocol-1 `ListKeys` arrives).
fn list_all() -> Request {
    Request::ListKeys {
        after: None,
        limit: None,
    }
}

/// A `ListKeys` page: at most `limit` keys after `after`.
fn list_page(after: Option<&str>, limit: u32) -> Request {
    Request::ListKeys {
        after: after.map(str::to_string),
        limit: Some(limit),
    }
}

/// The page a `ListKeys` answer carries.
fn page(response: Response) -> KeyPage {
    match response {
        Response::Keys(page) => page,
        other => panic!("expected Keys, got {other:?}"),
    }
}

/// The keys a `ListKeys` answer of every key lists: one last page.
fn listed(response: Response) -> Vec<KeyInfo> {
    let page = page(response);
    assert_eq!(page.next, None, "a list without a limit is one last page");
    page.keys
}

/// `info` with its state, latest and minimum version and its versions'
/// states and counts replaced: what a change to the key is expected to
/// answer (id, name and creation times stay).
fn expected(
    info: &KeyInfo,
    state: KeyState,
    min_decryption_version: u32,
    versions: &[(VersionState, u64)],
) -> KeyInfo {
    let created = info.versions.first().map_or(info.created, |v| v.created);
    KeyInfo {
        state,
        latest_version: versions.len() as u32,
        min_decryption_version,
        versions: versions
            .iter()
            .enumerate()
            .map(|(i, &(state, encryptions))| agent_proto::VersionInfo {
                version: i as u32 + 1,
                created: info.versions.get(i).map_or(created, |v| v.created),
                state,
                encryptions,
            })
            .collect(),
        ..info.clone()
    }
}

/// Asserts `response` is `expected`, but for creation times of versions
/// it did not know (new versions), which must be no earlier than `info`'s.
fn assert_key(response: Response, want: KeyInfo) {
    let got = key_info(response);
    let mut normalized = got.clone();
    for (have, want) in normalized.versions.iter_mut().zip(&want.versions) {
        assert!(have.created >= want.created, "{got:?}");
        have.created = want.created;
    }
    assert_eq!(normalized, want);
}

const ENABLED: VersionState = VersionState::Enabled;
const REVOKED: VersionState = VersionState::Revoked;

#[tokio::test]
async fn ping_is_answered_for_anyone() {
    let fixture = Fixture::new(&[], LIMITS);
    assert_eq!(
        fixture.call(&peer(STRANGER), Request::Ping).await,
        Response::Pong
    );
    assert_eq!(fixture.call(&admin(), Request::Ping).await, Response::Pong);
}

#[tokio::test]
async fn create_answers_version_one_and_refuses_taken_and_invalid_names() {
    let fixture = Fixture::new(&[], LIMITS);
    let before = unix_now();
    let info = key_info(fixture.call(&admin(), create("app-db")).await);
    let after = unix_now();
    assert!((before..=after).contains(&info.created), "{info:?}");
    assert_eq!(
        info,
        KeyInfo {
            id: info.id,
            name: "app-db".to_string(),
            created: info.created,
            state: KeyState::Enabled,
            latest_version: 1,
            min_decryption_version: 1,
            versions: vec![agent_proto::VersionInfo {
                version: 1,
                created: info.created,
                state: ENABLED,
                encryptions: 0,
            }],
            key_type: agent_proto::KeyType::Aes256Gcm,
            description: String::new(),
            tags: Default::default(),
            rotation_period: None,
            next_rotation: None,
            deletion_date: None,
        }
    );
    assert_ne!(info.id, [0; 16], "a random id");
    assert_ne!(fixture.create("other").await.id, info.id);

    assert_eq!(
        fixture.call(&admin(), create("app-db")).await,
        refusal(
            ErrorCode::KeyExists,
            "a key named \"app-db\" exists already; key names are never reused, even after revocation"
        )
    );
    let long = "x".repeat(129);
    for (bad, shown) in [
        ("", "\"\""),
        ("has space", "\"has space\""),
        ("slash/name", "\"slash/name\""),
        ("ctl\u{1b}[2J", "\"ctl\\u{1b}[2J\""),
        (long.as_str(), &format!("{:?}", "x".repeat(64))),
    ] {
        assert_eq!(
            fixture.call(&admin(), create(bad)).await,
            refusal(
                ErrorCode::InvalidArgument,
                &format!(
                    "{shown} is not a valid key name: use 1 to 128 characters from A-Z a-z 0-9 . _ -"
                )
            ),
            "{bad:?}"
        );
    }
    let longest = "y".repeat(128);
    assert_eq!(
        key_info(fixture.call(&admin(), create(&longest)).await).name,
        longest
    );
}

#[tokio::test]
async fn wrap_and_unwrap_round_trip_with_and_without_the_key_named() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap"]);
    let app = peer(APP);
    let info = fixture.create("app-db").await;
    let ctx = context(&[("table", "users")]);

    let wrapped = fixture.wrap(&app, "app-db", b"hello world", &ctx).await;
    assert_eq!((wrapped.key.as_str(), wrapped.version), ("app-db", 1));
    let blob = wrapped.ciphertext.as_bytes();
    assert_eq!(blob.len(), OVERHEAD + 11);
    assert_eq!(&blob[..5], b"HKMS\x01");
    assert_eq!(&blob[5..21], &info.id);
    assert_eq!(&blob[21..25], &1u32.to_be_bytes());
    assert!(!blob.windows(5).any(|w| w == b"hello"), "encrypted");

    let expected = Response::Unwrapped(agent_proto::Unwrapped {
        key: "app-db".to_string(),
        version: 1,
        plaintext: SecretBytes::new(b"hello world".to_vec()),
    });
    for key in [None, Some("app-db")] {
        assert_eq!(
            fixture
                .call(&app, unwrap(&wrapped.ciphertext, &ctx, key))
                .await,
            expected,
            "{key:?}"
        );
    }
    // An empty plaintext and an empty context are fine too.
    let empty = fixture
        .wrap(&app, "app-db", b"", &EncryptionContext::new())
        .await;
    assert_eq!(empty.ciphertext.len(), OVERHEAD);
    assert_eq!(
        fixture
            .call(
                &app,
                unwrap(&empty.ciphertext, &EncryptionContext::new(), None)
            )
            .await,
        Response::Unwrapped(agent_proto::Unwrapped {
            key: "app-db".to_string(),
            version: 1,
            plaintext: SecretBytes::new(Vec::new()),
        })
    );
    assert_eq!(
        fixture.counts("app-db").await,
        [2],
        "two encryptions counted"
    );
}

#[tokio::test]
async fn wrap_refuses_a_plaintext_over_the_limit() {
    let fixture = Fixture::with_app_grant(&["wrap"]);
    let app = peer(APP);
    fixture.create("app-db").await;
    let ctx = EncryptionContext::new();
    fixture.wrap(&app, "app-db", &[7; 1000], &ctx).await;
    assert_eq!(
        fixture.call(&app, wrap("app-db", &[7; 1001], &ctx)).await,
        refusal(
            ErrorCode::PlaintextTooLarge,
            "a plaintext of 1001 bytes exceeds the limit of 1000 bytes (max_plaintext); encrypt large data with `hostkms encrypt-file` (the age format, any size), or with a data key from `datakey`"
        )
    );
    assert_eq!(
        fixture.counts("app-db").await,
        [1],
        "the refusal encrypted nothing"
    );
}

#[tokio::test]
async fn data_keys_of_every_offered_size_with_and_without_plaintext() {
    let fixture = Fixture::with_app_grant(&["datakey", "unwrap"]);
    let app = peer(APP);
    fixture.create("app-db").await;
    let ctx = context(&[("purpose", "backup")]);
    for bytes in DATA_KEY_LENGTHS {
        for include_plaintext in [true, false] {
            let Response::DataKey(got) = fixture
                .call(&app, data_key("app-db", bytes, include_plaintext, &ctx))
                .await
            else {
                panic!("expected DataKey");
            };
            assert_eq!((got.key.as_str(), got.version), ("app-db", 1));
            assert_eq!(got.ciphertext.len(), OVERHEAD + usize::from(bytes));
            let Response::Unwrapped(inner) = fixture
                .call(&app, unwrap(&got.ciphertext, &ctx, None))
                .await
            else {
                panic!("the wrapped data key unwraps");
            };
            assert_eq!(inner.plaintext.len(), usize::from(bytes));
            match got.plaintext {
                Some(plaintext) => assert_eq!(plaintext, inner.plaintext),
                None => assert!(!include_plaintext),
            }
            assert_ne!(
                inner.plaintext.expose(),
                vec![0u8; usize::from(bytes)],
                "random"
            );
        }
    }
    for bytes in [0, 8, 31, 65, 1024, u16::MAX] {
        assert_eq!(
            fixture
                .call(&app, data_key("app-db", bytes, true, &ctx))
                .await,
            refusal(
                ErrorCode::InvalidArgument,
                &format!("a data key of {bytes} bytes is not offered; ask for 16, 24, 32 or 64")
            )
        );
    }
    assert_eq!(fixture.counts("app-db").await, [8]);
}

#[tokio::test]
async fn rewrap_moves_a_ciphertext_to_the_latest_version() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap", "rewrap"]);
    let app = peer(APP);
    fixture.create("app-db").await;
    let ctx = context(&[("table", "users")]);
    let v1 = fixture.wrap(&app, "app-db", b"secret", &ctx).await;
    key_info(fixture.call(&admin(), rotate("app-db")).await);
    let Response::Wrapped(v2) = fixture
        .call(&app, rewrap(&v1.ciphertext, &ctx, Some("app-db")))
        .await
    else {
        panic!("expected Wrapped");
    };
    assert_eq!((v2.key.as_str(), v2.version), ("app-db", 2));
    assert_eq!(&v2.ciphertext.as_bytes()[21..25], &2u32.to_be_bytes());
    for ciphertext in [&v1.ciphertext, &v2.ciphertext] {
        let Response::Unwrapped(got) = fixture.call(&app, unwrap(ciphertext, &ctx, None)).await
        else {
            panic!("expected Unwrapped");
        };
        assert_eq!(got.plaintext.expose(), b"secret");
    }
    // Rewrapping a latest-version ciphertext makes a new one of the same version.
    let Response::Wrapped(again) = fixture.call(&app, rewrap(&v2.ciphertext, &ctx, None)).await
    else {
        panic!("expected Wrapped");
    };
    assert_eq!(again.version, 2);
    assert_ne!(again.ciphertext, v2.ciphertext);
    assert_eq!(fixture.counts("app-db").await, [1, 2]);
    // The context is kept: the new ciphertext needs the same one.
    assert_eq!(
        fixture
            .call(
                &app,
                unwrap(&again.ciphertext, &EncryptionContext::new(), None)
            )
            .await,
        invalid()
    );
}

#[tokio::test]
async fn rotate_revoke_disable_enable_and_minimum_version_answer_the_new_metadata() {
    let fixture = Fixture::new(&[], LIMITS);
    let root = admin();
    let ctx = EncryptionContext::new();
    let info = fixture.create("k").await;

    assert_key(
        fixture.call(&root, rotate("k")).await,
        expected(&info, KeyState::Enabled, 1, &[(ENABLED, 0), (ENABLED, 0)]),
    );
    let v2 = fixture.wrap(&root, "k", b"two", &ctx).await;
    assert_eq!(v2.version, 2);
    assert_key(
        fixture.call(&root, min_version("k", 2)).await,
        expected(&info, KeyState::Enabled, 2, &[(ENABLED, 0), (ENABLED, 1)]),
    );
    assert_key(
        fixture.call(&root, min_version("k", 1)).await,
        expected(&info, KeyState::Enabled, 1, &[(ENABLED, 0), (ENABLED, 1)]),
    );
    assert_key(
        fixture.call(&root, disable("k")).await,
        expected(&info, KeyState::Disabled, 1, &[(ENABLED, 0), (ENABLED, 1)]),
    );
    // Disabling twice changes nothing; an admin may rotate a disabled key.
    assert_key(
        fixture.call(&root, disable("k")).await,
        expected(&info, KeyState::Disabled, 1, &[(ENABLED, 0), (ENABLED, 1)]),
    );
    assert_key(
        fixture.call(&root, rotate("k")).await,
        expected(
            &info,
            KeyState::Disabled,
            1,
            &[(ENABLED, 0), (ENABLED, 1), (ENABLED, 0)],
        ),
    );
    assert_key(
        fixture.call(&root, enable("k")).await,
        expected(
            &info,
            KeyState::Enabled,
            1,
            &[(ENABLED, 0), (ENABLED, 1), (ENABLED, 0)],
        ),
    );
    // Revoking an old version revokes it alone; again, it changes nothing.
    for _ in 0..2 {
        assert_key(
            fixture.call(&root, revoke("k", Some(1))).await,
            expected(
                &info,
                KeyState::Enabled,
                1,
                &[(REVOKED, 0), (ENABLED, 1), (ENABLED, 0)],
            ),
        );
    }
    // Revoking the latest version first adds a new one.
    assert_key(
        fixture.call(&root, revoke("k", Some(3))).await,
        expected(
            &info,
            KeyState::Enabled,
            1,
            &[(REVOKED, 0), (ENABLED, 1), (REVOKED, 0), (ENABLED, 0)],
        ),
    );
    assert_eq!(fixture.wrap(&root, "k", b"four", &ctx).await.version, 4);
    // The whole key.
    assert_key(
        fixture.call(&root, revoke("k", None)).await,
        expected(
            &info,
            KeyState::Revoked,
            1,
            &[(REVOKED, 0), (REVOKED, 1), (REVOKED, 0), (REVOKED, 1)],
        ),
    );
    assert_key(
        fixture.call(&root, describe("k")).await,
        expected(
            &info,
            KeyState::Revoked,
            1,
            &[(REVOKED, 0), (REVOKED, 1), (REVOKED, 0), (REVOKED, 1)],
        ),
    );
    assert_eq!(
        fixture
            .call(&root, unwrap(&v2.ciphertext, &ctx, None))
            .await,
        refusal(ErrorCode::KeyRevoked, "key \"k\" is revoked")
    );
}

#[tokio::test]
async fn version_and_minimum_refusals_name_the_range() {
    let fixture = Fixture::new(&[], LIMITS);
    let root = admin();
    fixture.create("k").await;
    key_info(fixture.call(&root, rotate("k")).await);
    assert_eq!(
        fixture.call(&root, revoke("k", Some(9))).await,
        refusal(
            ErrorCode::VersionNotFound,
            "key \"k\" has no version 9; its versions are 1 to 2"
        )
    );
    assert_eq!(
        fixture.call(&root, revoke("k", Some(0))).await,
        refusal(
            ErrorCode::VersionNotFound,
            "key \"k\" has no version 0; its versions are 1 to 2"
        )
    );
    for version in [0, 3, u32::MAX] {
        assert_eq!(
            fixture.call(&root, min_version("k", version)).await,
            refusal(
                ErrorCode::InvalidArgument,
                &format!(
                    "minimum decryption version {version} of key \"k\" must be between 1 and its latest version 2"
                )
            )
        );
    }
}

#[tokio::test]
async fn revoked_versions_and_versions_below_the_minimum_do_not_unwrap() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap", "rewrap"]);
    let (root, app) = (admin(), peer(APP));
    fixture.create("app-k").await;
    let ctx = EncryptionContext::new();
    let v1 = fixture.wrap(&app, "app-k", b"one", &ctx).await;
    key_info(fixture.call(&root, rotate("app-k")).await);
    let v2 = fixture.wrap(&app, "app-k", b"two", &ctx).await;

    key_info(fixture.call(&root, min_version("app-k", 2)).await);
    let below = refusal(
        ErrorCode::VersionRevoked,
        "version 1 of key \"app-k\" is below its minimum decryption version 2",
    );
    assert_eq!(
        fixture.call(&app, unwrap(&v1.ciphertext, &ctx, None)).await,
        below
    );
    assert_eq!(
        fixture.call(&app, rewrap(&v1.ciphertext, &ctx, None)).await,
        below
    );
    assert!(matches!(
        fixture.call(&app, unwrap(&v2.ciphertext, &ctx, None)).await,
        Response::Unwrapped(_)
    ));
    key_info(fixture.call(&root, min_version("app-k", 1)).await);
    assert!(matches!(
        fixture.call(&app, unwrap(&v1.ciphertext, &ctx, None)).await,
        Response::Unwrapped(_)
    ));

    key_info(fixture.call(&root, revoke("app-k", Some(1))).await);
    let revoked = refusal(
        ErrorCode::VersionRevoked,
        "version 1 of key \"app-k\" is revoked",
    );
    assert_eq!(
        fixture.call(&app, unwrap(&v1.ciphertext, &ctx, None)).await,
        revoked
    );
    assert_eq!(
        fixture.call(&app, rewrap(&v1.ciphertext, &ctx, None)).await,
        revoked
    );
    assert_eq!(
        fixture.counts("app-k").await,
        [1, 1],
        "the refused rewraps encrypted nothing"
    );
}

#[tokio::test]
async fn a_ciphertext_of_a_version_the_key_never_had_is_invalid() {
    let fixture = Fixture::new(&[], LIMITS);
    let root = admin();
    fixture.create("k").await;
    let ctx = EncryptionContext::new();
    let v1 = fixture.wrap(&root, "k", b"one", &ctx).await;
    let mut future = v1.ciphertext.clone().into_bytes();
    future[21..25].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        fixture
            .call(&root, unwrap(&Ciphertext::new(future), &ctx, None))
            .await,
        invalid()
    );
}

#[tokio::test]
async fn a_disabled_key_refuses_cryptography_until_enabled() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap", "rewrap", "datakey"]);
    let (root, app) = (admin(), peer(APP));
    fixture.create("app-k").await;
    let ctx = EncryptionContext::new();
    let v1 = fixture.wrap(&app, "app-k", b"one", &ctx).await;
    key_info(fixture.call(&root, disable("app-k")).await);
    let disabled = refusal(
        ErrorCode::KeyDisabled,
        "key \"app-k\" is disabled; an admin can enable it again",
    );
    for request in [
        wrap("app-k", b"x", &ctx),
        unwrap(&v1.ciphertext, &ctx, None),
        rewrap(&v1.ciphertext, &ctx, None),
        data_key("app-k", 32, true, &ctx),
    ] {
        assert_eq!(
            fixture.call(&app, request.clone()).await,
            disabled,
            "{request:?}"
        );
        assert_eq!(
            fixture.call(&root, request.clone()).await,
            disabled,
            "admin: {request:?}"
        );
    }
    key_info(fixture.call(&root, enable("app-k")).await);
    fixture.wrap(&app, "app-k", b"x", &ctx).await;
    assert_eq!(fixture.counts("app-k").await, [2]);
}

#[tokio::test]
async fn a_revoked_key_refuses_everything_but_describe_and_keeps_its_name() {
    let fixture = Fixture::new(&[], LIMITS);
    let root = admin();
    fixture.create("k").await;
    let ctx = EncryptionContext::new();
    let v1 = fixture.wrap(&root, "k", b"one", &ctx).await;
    key_info(fixture.call(&root, revoke("k", None)).await);
    let revoked = refusal(ErrorCode::KeyRevoked, "key \"k\" is revoked");
    for request in [
        wrap("k", b"x", &ctx),
        unwrap(&v1.ciphertext, &ctx, None),
        rewrap(&v1.ciphertext, &ctx, None),
        data_key("k", 32, true, &ctx),
        rotate("k"),
        revoke("k", None),
        revoke("k", Some(1)),
        disable("k"),
        enable("k"),
        min_version("k", 1),
    ] {
        assert_eq!(
            fixture.call(&root, request.clone()).await,
            revoked,
            "{request:?}"
        );
    }
    assert_eq!(
        fixture.call(&root, create("k")).await,
        refusal(
            ErrorCode::KeyExists,
            "a key named \"k\" exists already; key names are never reused, even after revocation"
        )
    );
    assert_eq!(
        key_info(fixture.call(&root, describe("k")).await).state,
        KeyState::Revoked
    );
}

#[tokio::test]
async fn an_unknown_key_is_not_found_for_an_admin() {
    let fixture = Fixture::new(&[], LIMITS);
    let root = admin();
    let ctx = EncryptionContext::new();
    let not_found = refusal(ErrorCode::KeyNotFound, "no key named \"nope\"");
    for request in [
        wrap("nope", b"x", &ctx),
        data_key("nope", 32, true, &ctx),
        rotate("nope"),
        revoke("nope", None),
        revoke("nope", Some(1)),
        disable("nope"),
        enable("nope"),
        min_version("nope", 1),
        describe("nope"),
    ] {
        assert_eq!(
            fixture.call(&root, request.clone()).await,
            not_found,
            "{request:?}"
        );
    }
    // A name with control characters is escaped in the answer.
    assert_eq!(
        fixture.call(&root, describe("a\nb")).await,
        refusal(ErrorCode::KeyNotFound, "no key named \"a\\nb\"")
    );
}

#[tokio::test]
async fn grants_are_checked_by_uid_operation_and_key_glob_before_the_key() {
    let fixture = Fixture::with_app_grant(&["wrap", "describe"]);
    let (app, stranger) = (peer(APP), peer(STRANGER));
    fixture.create("app-db").await;
    fixture.create("other").await;
    let ctx = EncryptionContext::new();

    // Granted: this op on a matching key, and nothing else.
    fixture.wrap(&app, "app-db", b"x", &ctx).await;
    assert_eq!(
        key_info(fixture.call(&app, describe("app-db")).await).name,
        "app-db"
    );
    assert_eq!(
        fixture.call(&app, wrap("other", b"x", &ctx)).await,
        denied(APP, "wrap", "other")
    );
    assert_eq!(
        fixture.call(&app, data_key("app-db", 32, true, &ctx)).await,
        denied(APP, "datakey", "app-db")
    );
    // Every operation that names a key, by a uid no grant covers.
    for (request, op) in [
        (create("app-db"), "create"), // exists: denied before KeyExists
        (wrap("app-db", b"x", &ctx), "wrap"),
        (data_key("app-db", 32, true, &ctx), "datakey"),
        (rotate("app-db"), "rotate"),
        (revoke("app-db", None), "revoke"),
        (disable("app-db"), "disable"),
        (enable("app-db"), "enable"),
        (min_version("app-db", 1), "min-decryption-version"),
        (describe("app-db"), "describe"),
    ] {
        assert_eq!(
            fixture.call(&stranger, request.clone()).await,
            denied(STRANGER, op, "app-db"),
            "{request:?}"
        );
    }
    // The grant comes before anything about the key: a missing key, a bad
    // name, a too-large plaintext or a bad size are all just denied.
    assert_eq!(
        fixture.call(&app, rotate("app-missing")).await,
        denied(APP, "rotate", "app-missing")
    );
    assert_eq!(
        fixture.call(&stranger, describe("nope")).await,
        denied(STRANGER, "describe", "nope")
    );
    assert_eq!(
        fixture.call(&stranger, create("bad name")).await,
        denied(STRANGER, "create", "bad name")
    );
    assert_eq!(
        fixture
            .call(&stranger, wrap("app-db", &[0; 5000], &ctx))
            .await,
        denied(STRANGER, "wrap", "app-db")
    );
    assert_eq!(
        fixture
            .call(&stranger, data_key("app-db", 7, true, &ctx))
            .await,
        denied(STRANGER, "datakey", "app-db")
    );
    // Admin operations need admin rights even on a granted key.
    assert_eq!(
        fixture.call(&app, rotate("app-db")).await,
        denied(APP, "rotate", "app-db")
    );
    assert_eq!(
        fixture.counts("app-db").await,
        [1],
        "no denied request encrypted"
    );
    assert_eq!(fixture.counts("other").await, [0]);
}

#[tokio::test]
async fn a_denial_shows_at_most_128_characters_of_the_name_escaped() {
    let fixture = Fixture::new(&[], LIMITS);
    let stranger = peer(STRANGER);
    let long = format!("{}\u{7}{}", "n".repeat(100), "m".repeat(200));
    let shown: String = long.chars().take(128).collect();
    assert_eq!(
        fixture.call(&stranger, describe(&long)).await,
        refusal(
            ErrorCode::PermissionDenied,
            &format!("uid {STRANGER} may not describe with key {shown:?}")
        )
    );
    assert!(shown.contains('\u{7}') && format!("{shown:?}").contains("\\u{7}"));
}

#[tokio::test]
async fn group_unit_and_user_unit_grants_cover_their_peers() {
    let mut by_group = grant(&[], &["g-*"], &["describe"]);
    by_group.groups = vec!["root".to_string()]; // gid 0 exists everywhere
    let mut by_unit = grant(&[], &["u-*"], &["describe"]);
    by_unit.units = vec!["postgresql.service".to_string()];
    let mut by_user_unit = grant(&[APP], &["uu-*"], &["describe"]);
    by_user_unit.user_units = vec!["backup.service".to_string()];
    let fixture = Fixture::new(&[by_group, by_unit, by_user_unit], LIMITS);
    for name in ["g-1", "u-1", "uu-1"] {
        fixture.create(name).await;
    }
    let member = Peer {
        groups: vec![0],
        ..peer(STRANGER)
    };
    let postgres = Peer {
        unit: Some("postgresql.service".to_string()),
        unit_unknown: None,
        ..peer(STRANGER)
    };
    let backup = Peer {
        unit: Some(format!("user@{APP}.service")),
        user_unit: Some("backup.service".to_string()),
        unit_unknown: None,
        ..peer(APP)
    };
    let backup_of_another = Peer {
        uid: STRANGER,
        ..backup.clone()
    };
    for (who, allowed) in [(&member, "g-1"), (&postgres, "u-1"), (&backup, "uu-1")] {
        for name in ["g-1", "u-1", "uu-1"] {
            let got = fixture.call(who, describe(name)).await;
            if name == allowed {
                assert_eq!(key_info(got).name, name);
            } else {
                assert_eq!(got, denied(who.uid, "describe", name));
            }
        }
    }
    assert_eq!(
        fixture.call(&backup_of_another, describe("uu-1")).await,
        denied(STRANGER, "describe", "uu-1")
    );
    assert_eq!(
        fixture.call(&peer(APP), describe("uu-1")).await,
        denied(APP, "describe", "uu-1"),
        "the uid alone, outside the user unit"
    );
}

#[tokio::test]
async fn an_admin_group_member_may_do_everything() {
    let fixture = Fixture::build(&[], &["root"], LIMITS); // gid 0 exists everywhere
    let member = Peer {
        groups: vec![0],
        ..peer(STRANGER)
    };
    let primary = Peer {
        gid: 0,
        ..peer(APP)
    };
    assert!(fixture.service.is_admin(&member) && fixture.service.is_admin(&primary));
    assert_eq!(fixture.service.peer_class(&member), PeerClass::Admin);
    assert_eq!(key_info(fixture.call(&member, create("k")).await).name, "k");
    assert_eq!(
        key_info(fixture.call(&primary, rotate("k")).await).latest_version,
        2
    );
    assert_eq!(
        fixture.call(&peer(STRANGER), rotate("k")).await,
        denied(STRANGER, "rotate", "k")
    );
}

/// A peer without a grant on the key a ciphertext names learns nothing:
/// not the name, not whether the key exists, not whether the key it
/// expects is the right one. Expecting a key it holds no grant on is
/// refused for that name alone, before the ciphertext is read.
#[tokio::test]
async fn without_a_grant_every_ciphertext_gets_one_and_the_same_refusal() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap", "rewrap"]);
    let (root, app, stranger) = (admin(), peer(APP), peer(STRANGER));
    fixture.create("app-k").await;
    fixture.create("secret-k").await;
    let ctx = EncryptionContext::new();
    let granted = fixture.wrap(&app, "app-k", b"mine", &ctx).await.ciphertext;
    let other = fixture
        .wrap(&root, "secret-k", b"theirs", &ctx)
        .await
        .ciphertext;
    let mut unknown = granted.clone().into_bytes();
    unknown[5..21].copy_from_slice(&[0xee; 16]);
    let unknown = Ciphertext::new(unknown);
    key_info(fixture.call(&root, disable("secret-k")).await);

    type Make = fn(&Ciphertext, &EncryptionContext, Option<&str>) -> Request;
    for (op, request) in [("unwrap", unwrap as Make), ("rewrap", rewrap as Make)] {
        let one = denied_ciphertext(APP, op);
        for (ciphertext, expect) in [
            (&other, None),
            (&other, Some("app-k")),
            (&unknown, None),
            (&unknown, Some("app-k")),
        ] {
            assert_eq!(
                fixture.call(&app, request(ciphertext, &ctx, expect)).await,
                one,
                "{op} {expect:?}"
            );
        }
        // An expected key no grant of the peer covers: the same refusal
        // whether it exists, and whatever the ciphertext.
        for ciphertext in [&granted, &other, &unknown] {
            for expect in ["secret-k", "nope"] {
                assert_eq!(
                    fixture
                        .call(&app, request(ciphertext, &ctx, Some(expect)))
                        .await,
                    denied(APP, op, expect),
                    "{op} {expect:?}"
                );
            }
        }
        let none = denied_ciphertext(STRANGER, op);
        for ciphertext in [&granted, &other, &unknown] {
            assert_eq!(
                fixture
                    .call(&stranger, request(ciphertext, &ctx, None))
                    .await,
                none
            );
        }
        // An admin holds every grant, and learns the precise answer.
        assert_eq!(
            fixture.call(&root, request(&unknown, &ctx, None)).await,
            invalid()
        );
        assert_eq!(
            fixture.call(&root, request(&other, &ctx, None)).await,
            refusal(
                ErrorCode::KeyDisabled,
                "key \"secret-k\" is disabled; an admin can enable it again"
            )
        );
    }
}

#[tokio::test]
async fn every_damaged_ciphertext_and_wrong_context_is_invalid() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap"]);
    let app = peer(APP);
    fixture.create("app-k").await;
    fixture.create("app-other").await;
    let ctx = context(&[("db", "main"), ("table", "users")]);
    let blob = fixture
        .wrap(&app, "app-k", b"attack at dawn", &ctx)
        .await
        .ciphertext
        .into_bytes();
    let ask = |bytes: Vec<u8>, ctx: EncryptionContext, key: Option<&'static str>| {
        fixture.call(&app, unwrap(&Ciphertext::new(bytes), &ctx, key))
    };
    // Format, version and body: every field but the key id (whose damage
    // names another key: see the test of refusals without a grant).
    for i in (0..5).chain(21..blob.len()) {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        assert_eq!(ask(bad, ctx.clone(), None).await, invalid(), "byte {i}");
    }
    for cut in [0, 4, 10, HEADER_LEN, OVERHEAD - 1, blob.len() - 1] {
        assert_eq!(
            ask(blob[..cut].to_vec(), ctx.clone(), None).await,
            invalid(),
            "cut {cut}"
        );
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert_eq!(ask(longer, ctx.clone(), None).await, invalid());
    assert_eq!(
        ask(
            b"not a ciphertext at all, but long enough to hold a header....".to_vec(),
            ctx.clone(),
            None
        )
        .await,
        invalid()
    );
    for wrong in [
        EncryptionContext::new(),
        context(&[("db", "main")]),
        context(&[("db", "main"), ("table", "user")]),
        context(&[("db", "main"), ("table", "users"), ("x", "y")]),
    ] {
        assert_eq!(
            ask(blob.clone(), wrong.clone(), None).await,
            invalid(),
            "{wrong:?}"
        );
    }
    // The right ciphertext, but the peer expects another key it holds a
    // grant on (one that exists, one that does not).
    for expect in ["app-other", "app-nope"] {
        assert_eq!(
            ask(blob.clone(), ctx.clone(), Some(expect)).await,
            invalid(),
            "{expect}"
        );
    }
    // A key no grant of the peer covers: refused for the name, whether
    // it exists or not.
    for expect in ["secret", "nope"] {
        assert_eq!(
            ask(blob.clone(), ctx.clone(), Some(expect)).await,
            denied(APP, "unwrap", expect),
            "{expect}"
        );
    }
    assert!(matches!(
        ask(blob, ctx, Some("app-k")).await,
        Response::Unwrapped(_)
    ));
}

#[tokio::test]
async fn rewrap_refuses_what_unwrap_refuses_and_encrypts_nothing() {
    let fixture = Fixture::with_app_grant(&["wrap", "rewrap"]);
    let app = peer(APP);
    fixture.create("app-k").await;
    fixture.create("app-other").await;
    let ctx = context(&[("a", "1")]);
    let wrapped = fixture.wrap(&app, "app-k", b"x", &ctx).await.ciphertext;
    assert_eq!(
        fixture
            .call(&app, rewrap(&wrapped, &EncryptionContext::new(), None))
            .await,
        invalid()
    );
    assert_eq!(
        fixture
            .call(&app, rewrap(&wrapped, &ctx, Some("app-other")))
            .await,
        invalid()
    );
    assert_eq!(
        fixture.call(&app, unwrap(&wrapped, &ctx, None)).await,
        denied_ciphertext(APP, "unwrap"),
        "rewrap does not imply unwrap"
    );
    assert_eq!(fixture.counts("app-k").await, [1]);
    assert_eq!(fixture.counts("app-other").await, [0]);
}

#[tokio::test]
async fn list_shows_each_peer_the_keys_it_holds_a_grant_on_sorted() {
    let metrics_only = grant(&[MONITOR], &[], &["metrics"]);
    let fixture = Fixture::new(
        &[
            grant(&[APP], &["app-*", "shared"], &["unwrap"]),
            metrics_only,
        ],
        LIMITS,
    );
    for name in ["zeta", "app-b", "shared", "app-a", "other"] {
        fixture.create(name).await;
    }
    let names = |response: Response| {
        listed(response)
            .into_iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(fixture.call(&admin(), list_all()).await),
        ["app-a", "app-b", "other", "shared", "zeta"]
    );
    assert_eq!(
        names(fixture.call(&peer(APP), list_all()).await),
        ["app-a", "app-b", "shared"]
    );
    assert!(names(fixture.call(&peer(STRANGER), list_all()).await).is_empty());
    assert!(
        names(fixture.call(&peer(MONITOR), list_all()).await).is_empty(),
        "metrics shows no key"
    );
    // The listed metadata is what describe answers.
    for info in listed(fixture.call(&admin(), list_all()).await) {
        assert_eq!(
            fixture.call(&admin(), describe(&info.name)).await,
            Response::Key(info)
        );
    }

    // In pages: `limit` keys the peer may see, after `after` (exclusive),
    // and `next` while more follow.
    let page_names = |page: &KeyPage| page.keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    let first = page(fixture.call(&admin(), list_page(None, 2)).await);
    assert_eq!(page_names(&first), ["app-a", "app-b"]);
    assert_eq!(first.next.as_deref(), Some("app-b"));
    let second = page(fixture.call(&admin(), list_page(Some("app-b"), 2)).await);
    assert_eq!(page_names(&second), ["other", "shared"]);
    assert_eq!(second.next.as_deref(), Some("shared"));
    let last = page(fixture.call(&admin(), list_page(Some("shared"), 2)).await);
    assert_eq!(page_names(&last), ["zeta"]);
    assert_eq!(last.next, None, "the last page says so");
    let exact = page(fixture.call(&admin(), list_page(Some("other"), 3)).await);
    assert_eq!(page_names(&exact), ["shared", "zeta"]);
    assert_eq!(
        exact.next, None,
        "no next when the page ends at the last key"
    );
    // `after` need not name a key; a page counts only keys the peer may see.
    let app = page(fixture.call(&peer(APP), list_page(Some("app-a0"), 1)).await);
    assert_eq!(page_names(&app), ["app-b"]);
    assert_eq!(app.next.as_deref(), Some("app-b"));
    let app = page(fixture.call(&peer(APP), list_page(Some("app-b"), 1)).await);
    assert_eq!(page_names(&app), ["shared"]);
    assert_eq!(app.next, None);
    assert_eq!(
        fixture.call(&admin(), list_page(None, 0)).await,
        refusal(
            ErrorCode::InvalidArgument,
            "a ListKeys limit must be at least 1 (or none, for every key)"
        ),
        "a page of no keys"
    );
}

/// The status fields that do not depend on who asks.
fn status_of(response: Response) -> StatusInfo {
    match response {
        Response::Status(status) => {
            assert_eq!(status.daemon_version, env!("CARGO_PKG_VERSION"));
            assert_eq!(
                (status.oldest_protocol, status.newest_protocol),
                (OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION)
            );
            assert!(status.uptime_secs < 3600, "{status:?}");
            assert!(status.root_key_loaded);
            status
        }
        other => panic!("expected Status, got {other:?}"),
    }
}

/// The monitor's counters now.
fn counters_now(fixture: &Fixture) -> BTreeMap<String, u64> {
    fixture.service.monitor().counters()
}

#[tokio::test]
async fn status_counters_and_check_value_only_for_admins_and_metrics_grants() {
    let fixture = Fixture::new(
        &[
            grant(&[APP], &["app-*"], &["wrap"]),
            grant(&[MONITOR], &[], &["metrics"]),
        ],
        LIMITS,
    );
    let ctx = EncryptionContext::new();
    fixture.create("app-k").await;
    key_info(fixture.call(&admin(), rotate("app-k")).await);
    fixture.wrap(&peer(APP), "app-k", b"x", &ctx).await;
    assert_eq!(
        fixture.call(&peer(APP), rotate("app-k")).await,
        denied(APP, "rotate", "app-k")
    );
    assert_eq!(
        fixture.call(&admin(), describe("nope")).await,
        refusal(ErrorCode::KeyNotFound, "no key named \"nope\"")
    );

    let check = crate::rootkey::check_value(&TEST_ROOT_KEY);
    assert_eq!(check.len(), 16, "8 bytes in hex");
    for who in [admin(), peer(MONITOR)] {
        // A request is counted once answered: not in its own answer.
        let mut expected = counters_now(&fixture);
        expected.insert("keys".to_string(), 1);
        expected.insert("versions".to_string(), 2);
        let status = status_of(fixture.call(&who, Request::Status).await);
        assert!(status.tpm_reachable);
        assert_eq!(status.root_key_check, check);
        assert_eq!(status.counters, expected, "uid {}", who.uid);
    }
    let counters = status_of(fixture.call(&admin(), Request::Status).await).counters;
    for (name, count) in [
        ("requests.create.ok", 1),
        ("requests.rotate.ok", 1),
        ("requests.rotate.denied", 1),
        ("requests.wrap.ok", 1),
        ("requests.describe.error", 1),
        ("requests.status.ok", 2),
        ("requests.unwrap.ok", 0),
        ("denials", 1),
        ("requests", 7),
        ("alerts", 0),
    ] {
        assert_eq!(counters.get(name), Some(&count), "{name}: {counters:?}");
    }

    for who in [peer(APP), peer(STRANGER)] {
        let status = status_of(fixture.call(&who, Request::Status).await);
        assert!(status.tpm_reachable);
        assert_eq!(status.root_key_check, "", "withheld from uid {}", who.uid);
        assert!(status.counters.is_empty(), "withheld from uid {}", who.uid);
    }
}

#[tokio::test]
async fn status_says_the_tpm_is_unreachable_while_it_is_stuck() {
    let fixture = Fixture::new(&[], LIMITS);
    fixture.probe.set_stuck(true);
    for who in [admin(), peer(STRANGER)] {
        assert!(!status_of(fixture.call(&who, Request::Status).await).tpm_reachable);
    }
    fixture.probe.set_stuck(false);
    assert!(status_of(fixture.call(&admin(), Request::Status).await).tpm_reachable);
    assert_eq!(
        fixture.probe.probes(),
        0,
        "the answer at start is fresh: no probe yet"
    );
}

/// What a change that needs TPM randomness answers while the TPM hangs.
fn tpm_unavailable() -> Response {
    refusal(
        ErrorCode::TpmUnavailable,
        &StoreError::Tpm(crate::tpm::TpmError::Stuck {
            tcti: "test entropy".to_string(),
            secs: 0,
        })
        .to_string(),
    )
}

#[tokio::test]
async fn changes_that_need_tpm_randomness_are_refused_while_the_tpm_hangs() {
    let fixture = Fixture::new(
        &[],
        ServiceLimits {
            max_plaintext: 1000,
            rotate_after: 2,
            max_frame: agent_proto::DEFAULT_MAX_FRAME,
        },
    );
    let root = admin();
    let ctx = EncryptionContext::new();
    let info = fixture.create("k").await;
    fixture.create("old").await;
    key_info(fixture.call(&root, rotate("old")).await);
    let v1 = fixture.wrap(&root, "k", b"one", &ctx).await;
    fixture.entropy.set_unavailable(true);
    let message = match tpm_unavailable() {
        Response::Error(reply) => reply.message,
        _ => unreachable!(),
    };
    assert!(
        message.starts_with("cannot draw TPM randomness for a new key version: "),
        "{message}"
    );
    for request in [create("new"), rotate("k"), revoke("k", Some(1))] {
        assert_eq!(
            fixture.call(&root, request.clone()).await,
            tpm_unavailable(),
            "{request:?}"
        );
    }
    // A wrap that would rotate at the limit needs a new version too.
    fixture.wrap(&root, "k", b"two", &ctx).await;
    assert_eq!(
        fixture.call(&root, wrap("k", b"three", &ctx)).await,
        tpm_unavailable()
    );
    // What needs no new version goes on: unwrap, disable, enable, minimum
    // version, revoking an old version or a whole key.
    assert!(matches!(
        fixture
            .call(&root, unwrap(&v1.ciphertext, &ctx, None))
            .await,
        Response::Unwrapped(_)
    ));
    key_info(fixture.call(&root, disable("k")).await);
    key_info(fixture.call(&root, enable("k")).await);
    key_info(fixture.call(&root, min_version("k", 1)).await);
    key_info(fixture.call(&root, revoke("old", Some(1))).await);
    key_info(fixture.call(&root, revoke("old", None)).await);
    assert_eq!(
        listed(fixture.call(&root, list_all()).await),
        vec![
            expected(&info, KeyState::Enabled, 1, &[(ENABLED, 2)]),
            key_info(fixture.call(&root, describe("old")).await),
        ],
        "nothing was created or rotated"
    );
    fixture.entropy.set_unavailable(false);
    assert_eq!(fixture.wrap(&root, "k", b"three", &ctx).await.version, 2);
}

#[tokio::test]
async fn a_reconfiguration_applies_to_the_next_request() {
    let fixture = Fixture::new(&[], LIMITS);
    let app = peer(APP);
    fixture.create("app-k").await;
    let ctx = EncryptionContext::new();
    assert_eq!(
        fixture.call(&app, wrap("app-k", b"x", &ctx)).await,
        denied(APP, "wrap", "app-k")
    );
    assert_eq!(fixture.service.peer_class(&app), PeerClass::Ungranted);
    let (policy, _) = Policy::new(&[grant(&[APP], &["app-*"], &["wrap"])], &[]).expect("policy");
    fixture.service.reconfigure(
        policy,
        ServiceLimits {
            max_plaintext: 10,
            rotate_after: 1 << 30,
            max_frame: agent_proto::DEFAULT_MAX_FRAME,
        },
        AlertThresholds::default(),
    );
    assert_eq!(fixture.service.peer_class(&app), PeerClass::Granted);
    assert_eq!(fixture.service.peer_class(&admin()), PeerClass::Admin);
    fixture.wrap(&app, "app-k", &[1; 10], &ctx).await;
    assert_eq!(
        fixture.call(&app, wrap("app-k", &[1; 11], &ctx)).await,
        refusal(
            ErrorCode::PlaintextTooLarge,
            "a plaintext of 11 bytes exceeds the limit of 10 bytes (max_plaintext); encrypt large data with `hostkms encrypt-file` (the age format, any size), or with a data key from `datakey`"
        )
    );
}

#[tokio::test]
async fn a_metrics_grant_alone_does_not_make_a_peer_granted() {
    let metrics = grant(&[MONITOR], &[], &["metrics"]);
    let fixture = Fixture::new(&[metrics, grant(&[APP], &["app-*"], &["describe"])], LIMITS);
    assert_eq!(
        fixture.service.peer_class(&peer(MONITOR)),
        PeerClass::Ungranted
    );
    assert_eq!(fixture.service.peer_class(&peer(APP)), PeerClass::Granted);
    assert_eq!(
        fixture.service.peer_class(&peer(STRANGER)),
        PeerClass::Ungranted
    );
    assert!(fixture.service.is_admin(&admin()));
    assert!(!fixture.service.is_admin(&peer(APP)));
}

#[tokio::test]
async fn repeated_denials_and_invalid_ciphertexts_alert_once_per_peer_and_burst() {
    // The default thresholds: 10 of either within 60 s.
    let fixture = Fixture::with_app_grant(&["unwrap"]);
    fixture.create("secret").await;
    let garbage = Ciphertext::new(vec![0; OVERHEAD]);
    let ctx = EncryptionContext::new();
    for _ in 0..9 {
        assert_eq!(
            fixture.call(&peer(STRANGER), describe("secret")).await,
            denied(STRANGER, "describe", "secret")
        );
        assert_eq!(
            fixture.call(&peer(APP), unwrap(&garbage, &ctx, None)).await,
            invalid()
        );
    }
    let alerts = |fixture: &Fixture| {
        let counters = counters_now(fixture);
        (
            counters["alerts.repeated-denials"],
            counters["alerts.repeated-invalid-ciphertexts"],
        )
    };
    assert_eq!(alerts(&fixture), (0, 0), "below the thresholds");
    for _ in 0..16 {
        fixture.call(&peer(STRANGER), describe("secret")).await;
        fixture.call(&peer(APP), unwrap(&garbage, &ctx, None)).await;
    }
    assert_eq!(alerts(&fixture), (1, 1), "one alert per burst");
    // Another peer's refusals are its own burst.
    for _ in 0..10 {
        fixture.call(&peer(STRANGER + 1), describe("secret")).await;
    }
    assert_eq!(alerts(&fixture), (2, 1));
    let counters = counters_now(&fixture);
    assert_eq!(counters["requests.describe.denied"], 35);
    assert_eq!(counters["requests.unwrap.error"], 25);
    assert_eq!((counters["denials"], counters["alerts"]), (35, 3));
}

/// The audit events written on this thread (the runtime's, in a
/// current-thread `#[tokio::test]`) while it captures, each as its fields.
#[derive(Clone, Default)]
struct AuditLog(Arc<std::sync::Mutex<Vec<BTreeMap<String, String>>>>);

std::thread_local! {
    /// Where this thread's audit events go, while a test captures them.
    static CAPTURING: std::cell::RefCell<Option<AuditLog>> = const { std::cell::RefCell::new(None) };
}

/// Ends a capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|sink| sink.borrow_mut().take());
    }
}

impl AuditLog {
    /// Captures this thread's audit events until the guard drops.
    ///
    /// The subscriber is the process's global one, installed once, and
    /// routes each event to the capture of the thread that wrote it: a
    /// thread-scoped subscriber instead can lose events, since a callsite
    /// that another test thread registers at the same moment may cache
    /// "nobody listens".
    fn capture() -> (AuditLog, Capturing) {
        use tracing_subscriber::layer::SubscriberExt;
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(AuditRouter),
            )
            .expect("no other global subscriber in the unit tests");
        });
        tracing::callsite::rebuild_interest_cache();
        let log = AuditLog::default();
        CAPTURING.with(|sink| *sink.borrow_mut() = Some(log.clone()));
        (log, Capturing)
    }

    /// Takes the events captured so far.
    fn take(&self) -> Vec<BTreeMap<String, String>> {
        std::mem::take(&mut *self.0.lock().expect("audit log"))
    }
}

/// Hands each audit event to the capture of the thread that wrote it.
struct AuditRouter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditRouter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields<'a>(&'a mut BTreeMap<String, String>);
        impl tracing::field::Visit for Fields<'_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().to_string(), value.to_string());
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0
                    .insert(field.name().to_string(), format!("{value:?}"));
            }
        }
        if event.metadata().target() != "hostkms::audit" {
            return;
        }
        CAPTURING.with(|sink| {
            if let Some(log) = sink.borrow().as_ref() {
                let mut fields = BTreeMap::new();
                event.record(&mut Fields(&mut fields));
                log.0.lock().expect("audit log").push(fields);
            }
        });
    }
}

/// The fields of a request's audit event that these tests check.
fn audit_fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `event` without the fields every request event has that these tests
/// do not check (message, message id, pid, the unit-unknown reason).
fn checked(mut event: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for field in [
        "message",
        "MESSAGE_ID",
        "HOSTKMS_PEER_PID",
        "HOSTKMS_PEER_UNIT_UNKNOWN",
    ] {
        event.remove(field);
    }
    event
}

#[tokio::test]
async fn each_request_writes_one_audit_event_naming_the_real_key_and_no_secret() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap"]);
    fixture.create("app-k").await;
    fixture.create("secret-k").await;
    let ctx = context(&[("purpose", "audit")]);
    let theirs = fixture
        .wrap(&admin(), "secret-k", b"their secret", &ctx)
        .await
        .ciphertext;
    let (log, _guard) = AuditLog::capture();

    let mine = fixture
        .wrap(&peer(APP), "app-k", b"my secret", &ctx)
        .await
        .ciphertext;
    // The peer learns nothing of the key its ciphertext names; the audit
    // trail records it.
    let answer = fixture.call(&peer(APP), unwrap(&theirs, &ctx, None)).await;
    assert_eq!(answer, denied_ciphertext(APP, "unwrap"));
    assert!(matches!(
        fixture
            .call(&peer(APP), unwrap(&mine, &ctx, Some("app-k")))
            .await,
        Response::Unwrapped(_)
    ));
    key_info(fixture.call(&admin(), revoke("app-k", Some(1))).await);
    fixture.call(&peer(STRANGER), describe("bad\nname")).await;

    let events = log.take();
    let uid = |uid: u32| uid.to_string();
    assert_eq!(
        events.iter().cloned().map(checked).collect::<Vec<_>>(),
        [
            audit_fields(&[
                ("HOSTKMS_OP", "wrap"),
                ("HOSTKMS_KEY", "app-k"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_PEER_UID", &uid(APP)),
            ]),
            audit_fields(&[
                ("HOSTKMS_OP", "unwrap"),
                ("HOSTKMS_KEY", "secret-k"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "denied"),
                ("HOSTKMS_ERROR", "permission-denied"),
                ("HOSTKMS_PEER_UID", &uid(APP)),
            ]),
            audit_fields(&[
                ("HOSTKMS_OP", "unwrap"),
                ("HOSTKMS_KEY", "app-k"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_PEER_UID", &uid(APP)),
            ]),
            // Revoking the latest version makes version 2; the event names
            // the version revoked.
            audit_fields(&[
                ("HOSTKMS_OP", "revoke"),
                ("HOSTKMS_KEY", "app-k"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_PEER_UID", "0"),
            ]),
            // A name that is no key name is escaped, so it cannot forge a field.
            audit_fields(&[
                ("HOSTKMS_OP", "describe"),
                ("HOSTKMS_KEY", "\"bad\\nname\""),
                ("HOSTKMS_RESULT", "denied"),
                ("HOSTKMS_ERROR", "permission-denied"),
                ("HOSTKMS_PEER_UID", &uid(STRANGER)),
            ]),
        ]
    );
    for event in &events {
        let text = format!("{event:?}");
        for secret in ["my secret", "their secret"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(event["HOSTKMS_PEER_PID"], "4242");
        assert_eq!(event["HOSTKMS_PEER_UNIT_UNKNOWN"], "no-unit");
    }
    assert!(
        events[1]["message"].starts_with("unwrap secret-k v1 by uid 1000: denied"),
        "{:?}",
        events[1]["message"]
    );
}

#[tokio::test]
async fn a_peers_refusals_past_the_first_few_of_a_window_are_not_logged_one_by_one() {
    let fixture = Fixture::new(&[], LIMITS);
    let (log, _guard) = AuditLog::capture();
    for _ in 0..crate::monitor::flood::LOGGED_PER_WINDOW + 3 {
        assert_eq!(
            fixture.call(&peer(STRANGER), describe("k")).await,
            denied(STRANGER, "describe", "k")
        );
    }
    let events = log.take();
    assert_eq!(
        events.len(),
        crate::monitor::flood::LOGGED_PER_WINDOW as usize
    );
    // Another peer's are its own; an admin's answered request always is.
    fixture.call(&peer(STRANGER + 1), describe("k")).await;
    fixture.create("k").await;
    let events = log.take();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["HOSTKMS_OP"], "create");
    assert_eq!(
        counters_now(&fixture)["requests.describe.denied"],
        u64::from(crate::monitor::flood::LOGGED_PER_WINDOW) + 4,
        "every refusal is counted"
    );
}

/// A key change whose answer could not be sent was made all the same: its
/// audit event says ok and names the lost answer, and it is never counted
/// as a failure (which a peer's cheap errors could push out of the
/// journal). A read whose answer was lost failed, and says so.
#[tokio::test]
async fn a_change_whose_answer_was_lost_is_journaled_as_done() {
    let fixture = Fixture::with_app_grant(&["rotate", "describe"]);
    fixture.create("app-k").await;
    let (log, _guard) = AuditLog::capture();
    // More cheap failures than a window logs one by one.
    for _ in 0..6 {
        fixture.call(&peer(APP), describe("app-missing")).await;
    }
    log.take();

    let (_, pending) = fixture.service.decide(&peer(APP), rotate("app-k")).await;
    assert!(pending.changed_keys());
    fixture
        .service
        .complete_unsent(&peer(APP), pending, ErrorCode::FrameTooLarge);
    let (_, pending) = fixture.service.decide(&peer(APP), describe("app-k")).await;
    assert!(!pending.changed_keys());
    fixture
        .service
        .complete_unsent(&peer(APP), pending, ErrorCode::FrameTooLarge);

    let events: Vec<_> = log.take().into_iter().map(checked).collect();
    let uid = APP.to_string();
    assert_eq!(
        events,
        [audit_fields(&[
            ("HOSTKMS_OP", "rotate"),
            ("HOSTKMS_KEY", "app-k"),
            ("HOSTKMS_KEY_VERSION", "2"),
            ("HOSTKMS_RESULT", "ok"),
            ("HOSTKMS_ANSWER_ERROR", "frame-too-large"),
            ("HOSTKMS_PEER_UID", &uid),
        ])],
        "the lost describe is a failure past the window's five, summarized later"
    );
    let counters = counters_now(&fixture);
    assert_eq!(counters["requests.rotate.ok"], 1);
    assert_eq!(counters["requests.describe.error"], 7);
}

#[tokio::test]
async fn sign_verify_mac_and_random_events_name_key_version_and_validity_never_the_bytes() {
    use agent_proto::{KeyType, SignInput};
    let fixture = Fixture::new(
        &[grant(
            &[APP],
            &["app-*"],
            &["sign", "verify", "mac", "random"],
        )],
        LIMITS,
    );
    for (name, key_type) in [
        ("app-rel", KeyType::Ed25519),
        ("app-tok", KeyType::HmacSha256),
    ] {
        key_info(
            fixture
                .call(
                    &admin(),
                    Request::CreateKey {
                        name: name.to_string(),
                        key_type,
                        settings: Default::default(),
                    },
                )
                .await,
        );
    }
    let message = b"release secret message".to_vec();
    let input = || SignInput::Message(SecretBytes::new(message.clone()));
    let (log, _guard) = AuditLog::capture();
    let app = peer(APP);
    let Response::Signature(signature) = fixture
        .call(
            &app,
            Request::Sign {
                key: "app-rel".into(),
                input: input(),
            },
        )
        .await
    else {
        panic!("expected Signature");
    };
    for signature in [signature.signature.clone(), vec![0u8; 64]] {
        fixture
            .call(
                &app,
                Request::Verify {
                    key: "app-rel".into(),
                    input: input(),
                    signature,
                    version: None,
                },
            )
            .await;
    }
    let Response::Mac(tag) = fixture
        .call(
            &app,
            Request::Mac {
                key: "app-tok".into(),
                data: SecretBytes::new(message.clone()),
            },
        )
        .await
    else {
        panic!("expected Mac");
    };
    let Response::Random(random) = fixture
        .call(&app, Request::GenerateRandom { bytes: 64 })
        .await
    else {
        panic!("expected Random");
    };

    let events = log.take();
    let uid = APP.to_string();
    assert_eq!(
        events.iter().cloned().map(checked).collect::<Vec<_>>(),
        [
            audit_fields(&[
                ("HOSTKMS_OP", "sign"),
                ("HOSTKMS_KEY", "app-rel"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_PEER_UID", &uid),
            ]),
            audit_fields(&[
                ("HOSTKMS_OP", "verify"),
                ("HOSTKMS_KEY", "app-rel"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_VERIFIED", "valid"),
                ("HOSTKMS_PEER_UID", &uid),
            ]),
            audit_fields(&[
                ("HOSTKMS_OP", "verify"),
                ("HOSTKMS_KEY", "app-rel"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_VERIFIED", "invalid"),
                ("HOSTKMS_PEER_UID", &uid),
            ]),
            audit_fields(&[
                ("HOSTKMS_OP", "mac"),
                ("HOSTKMS_KEY", "app-tok"),
                ("HOSTKMS_KEY_VERSION", "1"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_PEER_UID", &uid),
            ]),
            audit_fields(&[
                ("HOSTKMS_OP", "random"),
                ("HOSTKMS_RESULT", "ok"),
                ("HOSTKMS_PEER_UID", &uid),
            ]),
        ]
    );
    assert!(
        events[2]["message"].ends_with(": ok (invalid)"),
        "{:?}",
        events[2]["message"]
    );
    let text = format!("{events:?}");
    assert!(!text.contains("release secret message"), "{text}");
    for bytes in [&signature.signature[..], &tag.tag[..], random.expose()] {
        assert!(!text.contains(&format!("{:?}", &bytes[..8])), "{text}");
        assert!(!text.contains(&format!("{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2])));
    }
}

/// The spec's "Repeated state changes": on a live key, a change to the
/// state it is in succeeds and changes nothing; on a revoked key, every
/// change is `KeyRevoked`, a repeated whole-key revoke included.
#[tokio::test]
async fn repeated_state_changes_succeed_unchanged_on_a_live_key_and_are_refused_on_a_revoked_one() {
    let fixture = Fixture::new(&[], LIMITS);
    let root = admin();
    fixture.create("k").await;
    key_info(fixture.call(&root, rotate("k")).await);
    key_info(fixture.call(&root, revoke("k", Some(1))).await);
    let before = key_info(fixture.call(&root, describe("k")).await);
    let again = key_info(fixture.call(&root, revoke("k", Some(1))).await);
    assert_eq!(again, before, "revoking a revoked version again");
    assert_eq!(again.latest_version, 2, "no new version");
    let enabled = key_info(fixture.call(&root, enable("k")).await);
    assert_eq!(enabled, before, "enabling an enabled key");
    let disabled = key_info(fixture.call(&root, disable("k")).await);
    assert_eq!(disabled.state, KeyState::Disabled);
    assert_eq!(
        key_info(fixture.call(&root, disable("k")).await),
        disabled,
        "disabling a disabled key"
    );
    key_info(fixture.call(&root, revoke("k", None)).await);
    assert_eq!(
        fixture.call(&root, revoke("k", None)).await,
        refusal(ErrorCode::KeyRevoked, "key \"k\" is revoked")
    );
}

/// A batch refused at the first gate names the grant a config must hold
/// (`wrap`, `unwrap`), never `wrap-batch`, which no grant can name.
#[tokio::test]
async fn a_denied_batch_names_the_grant_it_needs() {
    let fixture = Fixture::with_app_grant(&["wrap", "unwrap"]);
    fixture.create("secret").await;
    for uid in [APP, STRANGER] {
        let wrap_batch = Request::WrapBatch {
            key: "secret".into(),
            items: vec![agent_proto::WrapItem {
                plaintext: SecretBytes::from(&b"x"[..]),
                context: EncryptionContext::new(),
            }],
        };
        assert_eq!(
            fixture.call(&peer(uid), wrap_batch).await,
            denied(uid, "wrap", "secret")
        );
        let unwrap_batch = Request::UnwrapBatch {
            key: Some("secret".into()),
            items: vec![agent_proto::UnwrapItem {
                ciphertext: Ciphertext::from(&b"x"[..]),
                context: EncryptionContext::new(),
            }],
        };
        assert_eq!(
            fixture.call(&peer(uid), unwrap_batch).await,
            denied(uid, "unwrap", "secret")
        );
    }
}
