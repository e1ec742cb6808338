//! The HMAC and signing operations and `GenerateRandom` through
//! `Service::decide`, in-process: every operation for every key type it
//! fits, `WrongKeyType` for every one that does not, verification across
//! rotation, revocation and the minimum version, the order of checks
//! (grant, state, type, sizes), the grants of each new op, the size limits,
//! and the random reserve kept apart from the key store's.

use std::sync::Arc;

use agent_proto::{
    EncryptionContext, ErrorCode, KeyInfo, KeyType, MAX_RANDOM_BYTES, MacTag, PublicKeyInfo,
    Request, Response, SecretBytes, SignInput, Signature, Verification,
};
use sha2::Digest;

use super::testing::TestServiceBuilder;
use super::*;
use crate::keystore::TestEntropy;
use crate::peer::{Peer, UnitUnknown};
use crate::policy::{GrantConfig, Policy};

/// A peer granted what each test says on keys `app-*`.
const APP: u32 = 1000;
/// A second granted peer.
const OTHER: u32 = 1001;
/// A uid no grant names.
const STRANGER: u32 = 2000;

const LIMITS: ServiceLimits = ServiceLimits {
    max_plaintext: 1000,
    rotate_after: 1 << 30,
    max_frame: agent_proto::DEFAULT_MAX_FRAME,
};

const SIGNING: [KeyType; 3] = [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::MlDsa65];
const HMAC: [KeyType; 2] = [KeyType::HmacSha256, KeyType::HmacSha512];

struct Fixture {
    service: Service,
    entropy: Arc<TestEntropy>,
    random: Arc<TestEntropy>,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    fn new(grants: &[GrantConfig]) -> Fixture {
        let (policy, _) = Policy::new(grants, &[]).expect("grants resolve");
        let tmp = tempfile::tempdir().expect("tempdir");
        let builder = TestServiceBuilder::new().limits(LIMITS);
        let service = builder
            .build(&tmp.path().join("state"), policy)
            .expect("test service");
        Fixture {
            service,
            entropy: builder.entropy(),
            random: builder.random(),
            _tmp: tmp,
        }
    }

    /// A service where [`APP`] holds `ops` on `app-*`.
    fn granting(ops: &[&str]) -> Fixture {
        Fixture::new(&[grant(&[APP], &["app-*"], ops)])
    }

    async fn call(&self, peer: &Peer, request: Request) -> Response {
        self.service.handle(peer, request).await
    }

    /// The response and the key version the audit event names.
    async fn audited(&self, peer: &Peer, request: Request) -> (Response, Option<u32>) {
        let (response, audit) = self.service.decide(peer, request).await;
        let version = audit.subject.version();
        self.service
            .complete(peer, audit, super::outcome_of(&response));
        (response, version)
    }

    async fn create(&self, name: &str, key_type: KeyType) -> KeyInfo {
        match self.call(&admin(), create(name, key_type)).await {
            Response::Key(info) => info,
            other => panic!("expected Key, got {other:?}"),
        }
    }

    async fn admin_call(&self, request: Request) -> Response {
        self.call(&admin(), request).await
    }

    async fn sign(&self, peer: &Peer, key: &str, input: SignInput) -> Signature {
        match self.call(peer, sign(key, input)).await {
            Response::Signature(signature) => signature,
            other => panic!("expected Signature, got {other:?}"),
        }
    }

    async fn mac(&self, peer: &Peer, key: &str, data: &[u8]) -> MacTag {
        match self.call(peer, mac(key, data)).await {
            Response::Mac(tag) => tag,
            other => panic!("expected Mac, got {other:?}"),
        }
    }

    async fn public_key(&self, peer: &Peer, key: &str, version: Option<u32>) -> PublicKeyInfo {
        match self.call(peer, public_key(key, version)).await {
            Response::PublicKey(info) => info,
            other => panic!("expected PublicKey, got {other:?}"),
        }
    }

    async fn encryptions(&self, key: &str) -> Vec<u64> {
        match self
            .admin_call(Request::DescribeKey {
                key: key.to_string(),
            })
            .await
        {
            Response::Key(info) => info.versions.iter().map(|v| v.encryptions).collect(),
            other => panic!("expected Key, got {other:?}"),
        }
    }
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

fn create(name: &str, key_type: KeyType) -> Request {
    Request::CreateKey {
        name: name.to_string(),
        key_type,
        settings: Default::default(),
    }
}

fn message(bytes: &[u8]) -> SignInput {
    SignInput::Message(SecretBytes::new(bytes.to_vec()))
}

fn digest_of(bytes: &[u8]) -> SignInput {
    SignInput::Digest(sha2::Sha256::digest(bytes).to_vec())
}

fn sign(key: &str, input: SignInput) -> Request {
    Request::Sign {
        key: key.to_string(),
        input,
    }
}

fn verify(key: &str, input: SignInput, signature: &[u8], version: Option<u32>) -> Request {
    Request::Verify {
        key: key.to_string(),
        input,
        signature: signature.to_vec(),
        version,
    }
}

fn mac(key: &str, data: &[u8]) -> Request {
    Request::Mac {
        key: key.to_string(),
        data: SecretBytes::new(data.to_vec()),
    }
}

fn verify_mac(key: &str, data: &[u8], tag: &[u8], version: Option<u32>) -> Request {
    Request::VerifyMac {
        key: key.to_string(),
        data: SecretBytes::new(data.to_vec()),
        tag: tag.to_vec(),
        version,
    }
}

fn public_key(key: &str, version: Option<u32>) -> Request {
    Request::GetPublicKey {
        key: key.to_string(),
        version,
    }
}

fn random(bytes: u16) -> Request {
    Request::GenerateRandom { bytes }
}

fn valid(key: &str, version: u32) -> Response {
    Response::Verified(Verification {
        key: key.to_string(),
        valid: true,
        version: Some(version),
    })
}

fn invalid(key: &str) -> Response {
    Response::Verified(Verification {
        key: key.to_string(),
        valid: false,
        version: None,
    })
}

fn code(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(reply) => Some(reply.code),
        _ => None,
    }
}

fn refused(code: ErrorCode, message: &str) -> Response {
    Response::error(code, message)
}

fn denied(uid: u32, op: &str, key: &str) -> Response {
    refused(
        ErrorCode::PermissionDenied,
        &format!("uid {uid} may not {op} with key {key:?}"),
    )
}

fn wrong_type(key: &str, key_type: &str, op: &str, supported: &str) -> Response {
    refused(
        ErrorCode::WrongKeyType,
        &format!(
            "key \"{key}\": the {op} operation does not fit a key of type {key_type}; that type supports {supported}"
        ),
    )
}

/// Flips one bit of `bytes` at `at`.
fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x01;
    out
}

/// Whether `signature` over `msg` verifies with the SubjectPublicKeyInfo
/// `spki` alone, by the crate of the type (what another tool would do).
fn verifies_with_spki(key_type: KeyType, spki: &[u8], msg: &[u8], signature: &[u8]) -> bool {
    use p256::pkcs8::DecodePublicKey;
    use signature::Verifier;
    match key_type {
        KeyType::Ed25519 => {
            let key = ed25519_dalek::VerifyingKey::from_public_key_der(spki).expect("SPKI");
            let signature = ed25519_dalek::Signature::from_slice(signature).expect("64 bytes");
            key.verify(msg, &signature).is_ok()
        }
        KeyType::EcdsaP256 => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki).expect("SPKI");
            let signature = p256::ecdsa::Signature::from_der(signature).expect("DER");
            key.verify(msg, &signature).is_ok()
        }
        KeyType::MlDsa65 => {
            let key =
                ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::from_public_key_der(spki).expect("SPKI");
            let encoded = signature.try_into().expect("ML-DSA-65 signature length");
            let signature =
                ml_dsa::Signature::<ml_dsa::MlDsa65>::decode(encoded).expect("ML-DSA-65 signature");
            key.verify(msg, &signature).is_ok()
        }
        other => panic!("{other} does not sign"),
    }
}

#[test]
fn only_short_macs_and_single_ed25519_operations_run_on_the_request_task() {
    use super::signing::{INLINE_BYTES, runs_inline};
    assert!(runs_inline(KeyType::HmacSha256, 3, INLINE_BYTES));
    assert!(!runs_inline(KeyType::HmacSha512, 4, 32));
    assert!(!runs_inline(KeyType::HmacSha256, 1, INLINE_BYTES + 1));
    assert!(runs_inline(KeyType::Ed25519, 1, 32));
    assert!(!runs_inline(KeyType::Ed25519, 2, 32));
    assert!(!runs_inline(KeyType::Ed25519, 1, INLINE_BYTES + 1));
    for key_type in [KeyType::EcdsaP256, KeyType::MlDsa65, KeyType::Aes256Gcm] {
        assert!(!runs_inline(key_type, 1, 0), "{key_type}");
    }
}

#[tokio::test]
async fn every_signing_type_signs_and_verifies_and_its_public_key_checks_the_signature() {
    let fixture = Fixture::granting(&["sign", "verify", "public-key"]);
    let app = peer(APP);
    for key_type in SIGNING {
        let name = format!("app-{key_type}");
        fixture.create(&name, key_type).await;
        let msg = b"release 1.2.3";
        let (response, audited) = fixture.audited(&app, sign(&name, message(msg))).await;
        let Response::Signature(signature) = response else {
            panic!("{key_type}: expected Signature, got {response:?}");
        };
        assert_eq!(
            (signature.key.as_str(), signature.version),
            (name.as_str(), 1)
        );
        assert_eq!(audited, Some(1), "the audit names the version");
        let expected_len = match key_type {
            KeyType::Ed25519 => Some(64),
            KeyType::MlDsa65 => Some(3309),
            _ => None,
        };
        if let Some(len) = expected_len {
            assert_eq!(signature.signature.len(), len, "{key_type}");
        }

        let (response, audited) = fixture
            .audited(
                &app,
                verify(&name, message(msg), &signature.signature, None),
            )
            .await;
        assert_eq!(response, valid(&name, 1), "{key_type}");
        assert_eq!(audited, Some(1));
        assert_eq!(
            fixture
                .call(
                    &app,
                    verify(&name, message(msg), &signature.signature, Some(1))
                )
                .await,
            valid(&name, 1),
            "{key_type}: against the given version"
        );

        // Tampered message, tampered signature, garbage: invalid, never an
        // error that says why.
        assert_eq!(
            fixture
                .call(
                    &app,
                    verify(&name, message(b"release 1.2.4"), &signature.signature, None)
                )
                .await,
            invalid(&name),
            "{key_type}"
        );
        for at in [
            0,
            signature.signature.len() / 2,
            signature.signature.len() - 1,
        ] {
            let tampered = flipped(&signature.signature, at);
            let (response, audited) = fixture
                .audited(&app, verify(&name, message(msg), &tampered, None))
                .await;
            assert_eq!(response, invalid(&name), "{key_type} bit {at}");
            assert_eq!(audited, None, "no version matched");
        }
        for garbage in [&b""[..], &[0u8; 7][..], &signature.signature[1..]] {
            assert_eq!(
                fixture
                    .call(&app, verify(&name, message(msg), garbage, Some(1)))
                    .await,
                invalid(&name),
                "{key_type}: {} bytes",
                garbage.len()
            );
        }

        let public = fixture.public_key(&app, &name, None).await;
        assert_eq!(
            (public.version, public.key_type, public.revoked),
            (1, key_type, false)
        );
        assert!(verifies_with_spki(
            key_type,
            &public.spki_der,
            msg,
            &signature.signature
        ));
        assert!(!verifies_with_spki(
            key_type,
            &public.spki_der,
            b"release 1.2.4",
            &signature.signature
        ));
        assert_eq!(fixture.public_key(&app, &name, Some(1)).await, public);
        // Signing counts toward no encryption limit.
        assert_eq!(fixture.encryptions(&name).await, vec![0]);
    }
}

#[tokio::test]
async fn ecdsa_signs_a_sha256_digest_as_it_signs_the_message_and_only_ecdsa_takes_one() {
    let fixture = Fixture::granting(&["sign", "verify"]);
    let app = peer(APP);
    fixture.create("app-ec", KeyType::EcdsaP256).await;
    let msg = b"a large artifact";
    let by_digest = fixture.sign(&app, "app-ec", digest_of(msg)).await;
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-ec", message(msg), &by_digest.signature, None)
            )
            .await,
        valid("app-ec", 1)
    );
    let by_message = fixture.sign(&app, "app-ec", message(msg)).await;
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-ec", digest_of(msg), &by_message.signature, None)
            )
            .await,
        valid("app-ec", 1)
    );
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-ec", digest_of(b"other"), &by_message.signature, None)
            )
            .await,
        invalid("app-ec")
    );
    for len in [0, 31, 33, 64] {
        let expected = refused(
            ErrorCode::InvalidArgument,
            &format!(
                "key \"app-ec\": the digest is {len} bytes long: only ecdsa-p256 keys sign a pre-hashed digest, and it must be a 32-byte SHA-256 digest; send the message instead"
            ),
        );
        assert_eq!(
            fixture
                .call(&app, sign("app-ec", SignInput::Digest(vec![7; len])))
                .await,
            expected
        );
    }

    for key_type in [KeyType::Ed25519, KeyType::MlDsa65] {
        let name = format!("app-{key_type}");
        fixture.create(&name, key_type).await;
        let signature = fixture.sign(&app, &name, message(msg)).await;
        for (request, op) in [
            (sign(&name, digest_of(msg)), "sign"),
            (
                verify(&name, digest_of(msg), &signature.signature, None),
                "verify",
            ),
        ] {
            assert_eq!(
                fixture.call(&app, request).await,
                refused(
                    ErrorCode::InvalidArgument,
                    &format!(
                        "key \"{name}\": a key of type {key_type} takes no digest: only ecdsa-p256 keys {op} a pre-hashed digest, and it must be a 32-byte SHA-256 digest; send the message instead"
                    ),
                )
            );
        }
    }
}

#[tokio::test]
async fn hmac_keys_tag_and_verify_under_the_latest_version() {
    let fixture = Fixture::granting(&["mac", "verify-mac"]);
    let app = peer(APP);
    for (key_type, len) in HMAC.into_iter().zip([32, 64]) {
        let name = format!("app-{key_type}");
        fixture.create(&name, key_type).await;
        let (response, audited) = fixture.audited(&app, mac(&name, b"token")).await;
        let Response::Mac(tag) = response else {
            panic!("expected Mac, got {response:?}");
        };
        assert_eq!(
            (tag.key.as_str(), tag.version, tag.tag.len()),
            (name.as_str(), 1, len)
        );
        assert_eq!(audited, Some(1));
        assert_eq!(
            fixture.mac(&app, &name, b"token").await,
            tag,
            "a plain HMAC: the same data gives the same tag"
        );
        assert_ne!(fixture.mac(&app, &name, b"token2").await.tag, tag.tag);
        assert_eq!(
            fixture
                .call(&app, verify_mac(&name, b"token", &tag.tag, None))
                .await,
            valid(&name, 1)
        );
        assert_eq!(
            fixture
                .call(&app, verify_mac(&name, b"token", &tag.tag, Some(1)))
                .await,
            valid(&name, 1)
        );
        assert_eq!(
            fixture
                .call(&app, verify_mac(&name, b"tokeN", &tag.tag, None))
                .await,
            invalid(&name)
        );
        for tampered in [
            flipped(&tag.tag, 0),
            flipped(&tag.tag, len - 1),
            tag.tag[..len - 1].to_vec(),
            Vec::new(),
        ] {
            assert_eq!(
                fixture
                    .call(&app, verify_mac(&name, b"token", &tampered, None))
                    .await,
                invalid(&name)
            );
        }
        // Another key's tag is no tag of this one.
        let other = format!("app-{key_type}-2");
        fixture.create(&other, key_type).await;
        assert_eq!(
            fixture
                .call(&app, verify_mac(&other, b"token", &tag.tag, None))
                .await,
            invalid(&other)
        );
        assert_eq!(fixture.encryptions(&name).await, vec![0]);
    }
}

#[tokio::test]
async fn an_operation_that_does_not_fit_the_key_type_is_wrong_key_type_naming_what_it_supports() {
    let fixture = Fixture::new(&[]);
    for key_type in KeyType::ALL {
        fixture.create(&format!("k-{key_type}"), key_type).await;
    }
    let aes = "wrap, unwrap, datakey, rewrap";
    let hmac = "mac, verify-mac";
    let signing = "sign, verify, public-key";
    let ctx = EncryptionContext::new();
    let cases: Vec<(Request, &str, &str, &str)> = vec![
        (
            Request::Wrap {
                key: "k-ed25519".into(),
                plaintext: SecretBytes::new(b"x".to_vec()),
                context: ctx.clone(),
            },
            "ed25519",
            "wrap",
            signing,
        ),
        (
            Request::GenerateDataKey {
                key: "k-hmac-sha256".into(),
                bytes: 32,
                include_plaintext: true,
                context: ctx.clone(),
            },
            "hmac-sha256",
            "datakey",
            hmac,
        ),
        (
            sign("k-aes256-gcm", message(b"m")),
            "aes256-gcm",
            "sign",
            aes,
        ),
        (
            sign("k-hmac-sha512", message(b"m")),
            "hmac-sha512",
            "sign",
            hmac,
        ),
        (
            verify("k-aes256-gcm", message(b"m"), &[0; 64], None),
            "aes256-gcm",
            "verify",
            aes,
        ),
        (
            verify("k-hmac-sha256", message(b"m"), &[0; 64], Some(1)),
            "hmac-sha256",
            "verify",
            hmac,
        ),
        (mac("k-ecdsa-p256", b"m"), "ecdsa-p256", "mac", signing),
        (mac("k-aes256-gcm", b"m"), "aes256-gcm", "mac", aes),
        (
            verify_mac("k-ed25519", b"m", &[0; 32], None),
            "ed25519",
            "verify-mac",
            signing,
        ),
        (
            verify_mac("k-ml-dsa-65", b"m", &[0; 32], None),
            "ml-dsa-65",
            "verify-mac",
            signing,
        ),
        (
            public_key("k-hmac-sha512", None),
            "hmac-sha512",
            "public-key",
            hmac,
        ),
        (
            public_key("k-aes256-gcm", Some(1)),
            "aes256-gcm",
            "public-key",
            aes,
        ),
    ];
    for (request, key_type, op, supported) in cases {
        let key = request.key_name().unwrap_or_default().to_string();
        assert_eq!(
            fixture.admin_call(request).await,
            wrong_type(&key, key_type, op, supported),
            "{op} with {key_type}"
        );
    }
    // Rewrap and unwrap of an AES ciphertext stay AES-only: a datakey on an
    // HMAC key was refused above, and a ciphertext can name only an AES key.
}

#[tokio::test]
async fn after_rotate_old_signatures_verify_under_version_one_and_new_ones_carry_version_two() {
    let fixture = Fixture::granting(&["sign", "verify", "mac", "verify-mac", "public-key"]);
    let app = peer(APP);
    for key_type in SIGNING {
        let name = format!("app-{key_type}");
        fixture.create(&name, key_type).await;
        let old = fixture.sign(&app, &name, message(b"v1")).await;
        let old_public = fixture.public_key(&app, &name, None).await;
        fixture
            .admin_call(Request::Rotate { key: name.clone() })
            .await;
        let new = fixture.sign(&app, &name, message(b"v2")).await;
        assert_eq!((old.version, new.version), (1, 2));
        let (response, audited) = fixture
            .audited(&app, verify(&name, message(b"v1"), &old.signature, None))
            .await;
        assert_eq!(response, valid(&name, 1));
        assert_eq!(audited, Some(1), "the audit names the version that matched");
        assert_eq!(
            fixture
                .call(&app, verify(&name, message(b"v2"), &new.signature, None))
                .await,
            valid(&name, 2)
        );
        // Against the other version: does not check.
        assert_eq!(
            fixture
                .call(&app, verify(&name, message(b"v1"), &old.signature, Some(2)))
                .await,
            invalid(&name)
        );
        let new_public = fixture.public_key(&app, &name, None).await;
        assert_eq!(new_public.version, 2);
        assert_ne!(new_public.spki_der, old_public.spki_der);
        assert_eq!(fixture.public_key(&app, &name, Some(1)).await, old_public);
        assert_eq!(
            fixture.call(&app, public_key(&name, Some(3))).await,
            refused(
                ErrorCode::VersionNotFound,
                &format!("key {name:?} has no version 3; its versions are 1 to 2")
            )
        );
    }
    fixture.create("app-mac", KeyType::HmacSha256).await;
    let old = fixture.mac(&app, "app-mac", b"d").await;
    fixture
        .admin_call(Request::Rotate {
            key: "app-mac".into(),
        })
        .await;
    let new = fixture.mac(&app, "app-mac", b"d").await;
    assert_eq!((old.version, new.version), (1, 2));
    assert_ne!(old.tag, new.tag);
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"d", &old.tag, None))
            .await,
        valid("app-mac", 1)
    );
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"d", &new.tag, None))
            .await,
        valid("app-mac", 2)
    );
}

#[tokio::test]
async fn a_check_without_a_version_tries_at_most_the_newest_versions_then_asks_for_one() {
    let fixture = Fixture::granting(&["sign", "verify", "mac", "verify-mac"]);
    let app = peer(APP);
    let tried = MAX_VERSIONS_TRIED as u32;
    fixture.create("app-many", KeyType::Ed25519).await;
    fixture.create("app-many-mac", KeyType::HmacSha256).await;
    let first = fixture.sign(&app, "app-many", message(b"old")).await;
    let first_tag = fixture.mac(&app, "app-many-mac", b"old").await;
    for _ in 0..tried {
        for name in ["app-many", "app-many-mac"] {
            fixture
                .admin_call(Request::Rotate { key: name.into() })
                .await;
        }
    }
    // Version 1 is now the (tried + 1)th newest: a check without a version
    // does not reach it, and says so rather than answer "invalid".
    let untried = refused(
        ErrorCode::InvalidArgument,
        &format!(
            "no match under the {tried} newest live versions of key \"app-many\", and 1 older live version was not tried (one request tries at most {tried}); name the version to check (--version N, or the request's version field), or retire old versions with min-decryption-version"
        ),
    );
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-many", message(b"old"), &first.signature, None)
            )
            .await,
        untried
    );
    assert_eq!(
        code(
            &fixture
                .call(
                    &app,
                    verify_mac("app-many-mac", b"old", &first_tag.tag, None)
                )
                .await
        ),
        Some(ErrorCode::InvalidArgument)
    );
    // Named, it checks; the newest still check without a version.
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-many", message(b"old"), &first.signature, Some(1))
            )
            .await,
        valid("app-many", 1)
    );
    assert_eq!(
        fixture
            .call(
                &app,
                verify_mac("app-many-mac", b"old", &first_tag.tag, Some(1))
            )
            .await,
        valid("app-many-mac", 1)
    );
    let newest = fixture.sign(&app, "app-many", message(b"new")).await;
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-many", message(b"new"), &newest.signature, None)
            )
            .await,
        valid("app-many", tried + 1)
    );
    // Retiring the old version brings the count within the limit again.
    fixture
        .admin_call(Request::SetMinDecryptionVersion {
            key: "app-many".into(),
            version: 2,
        })
        .await;
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-many", message(b"old"), &first.signature, None)
            )
            .await,
        invalid("app-many")
    );
}

#[tokio::test]
async fn a_revoked_or_below_minimum_version_verifies_nothing() {
    let fixture = Fixture::granting(&["sign", "verify", "mac", "verify-mac", "public-key"]);
    let app = peer(APP);
    for key_type in SIGNING {
        let name = format!("app-{key_type}");
        fixture.create(&name, key_type).await;
        let old = fixture.sign(&app, &name, message(b"v1")).await;
        fixture
            .admin_call(Request::Rotate { key: name.clone() })
            .await;
        fixture
            .admin_call(Request::Revoke {
                key: name.clone(),
                version: Some(1),
            })
            .await;
        assert_eq!(
            fixture
                .call(&app, verify(&name, message(b"v1"), &old.signature, None))
                .await,
            invalid(&name),
            "{key_type}: no live version checks it"
        );
        assert_eq!(
            fixture
                .call(&app, verify(&name, message(b"v1"), &old.signature, Some(1)))
                .await,
            refused(
                ErrorCode::VersionRevoked,
                &format!("version 1 of key \"{name}\" is revoked")
            )
        );
        assert_eq!(fixture.sign(&app, &name, message(b"x")).await.version, 2);
        // Its public key stays retrievable, for audit, marked revoked.
        let public = fixture.public_key(&app, &name, Some(1)).await;
        assert_eq!((public.version, public.revoked), (1, true));
        assert!(verifies_with_spki(
            key_type,
            &public.spki_der,
            b"v1",
            &old.signature
        ));
        assert!(!fixture.public_key(&app, &name, Some(2)).await.revoked);
    }

    fixture.create("app-mac", KeyType::HmacSha512).await;
    let old = fixture.mac(&app, "app-mac", b"d").await;
    fixture
        .admin_call(Request::Rotate {
            key: "app-mac".into(),
        })
        .await;
    fixture
        .admin_call(Request::SetMinDecryptionVersion {
            key: "app-mac".into(),
            version: 2,
        })
        .await;
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"d", &old.tag, None))
            .await,
        invalid("app-mac"),
        "below the minimum: not tried"
    );
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"d", &old.tag, Some(1)))
            .await,
        refused(
            ErrorCode::VersionRevoked,
            "version 1 of key \"app-mac\" is below its minimum decryption version 2"
        )
    );
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"d", &old.tag, Some(9)))
            .await,
        refused(
            ErrorCode::VersionNotFound,
            "key \"app-mac\" has no version 9; its versions are 1 to 2"
        )
    );
}

#[tokio::test]
async fn a_disabled_or_revoked_key_signs_and_verifies_nothing_but_keeps_its_public_key() {
    let fixture = Fixture::granting(&["sign", "verify", "mac", "verify-mac", "public-key"]);
    let app = peer(APP);
    fixture.create("app-ed", KeyType::Ed25519).await;
    fixture.create("app-mac", KeyType::HmacSha256).await;
    let signature = fixture.sign(&app, "app-ed", message(b"m")).await;
    let tag = fixture.mac(&app, "app-mac", b"m").await;
    let public = fixture.public_key(&app, "app-ed", None).await;
    for key in ["app-ed", "app-mac"] {
        fixture
            .admin_call(Request::Disable { key: key.into() })
            .await;
    }
    let disabled = |key: &str| {
        refused(
            ErrorCode::KeyDisabled,
            &format!("key \"{key}\" is disabled; an admin can enable it again"),
        )
    };
    assert_eq!(
        fixture.call(&app, sign("app-ed", message(b"m"))).await,
        disabled("app-ed")
    );
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-ed", message(b"m"), &signature.signature, None)
            )
            .await,
        disabled("app-ed")
    );
    assert_eq!(
        fixture.call(&app, mac("app-mac", b"m")).await,
        disabled("app-mac")
    );
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"m", &tag.tag, None))
            .await,
        disabled("app-mac")
    );
    // The state comes before the type: a disabled key answers KeyDisabled
    // to an op of the wrong type too.
    assert_eq!(
        fixture.call(&peer(STRANGER), mac("app-ed", b"m")).await,
        denied(STRANGER, "mac", "app-ed"),
        "a grant it lacks comes first of all"
    );
    assert_eq!(
        fixture.admin_call(mac("app-ed", b"m")).await,
        disabled("app-ed")
    );
    assert_eq!(fixture.public_key(&app, "app-ed", None).await, public);

    fixture
        .admin_call(Request::Enable {
            key: "app-ed".into(),
        })
        .await;
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-ed", message(b"m"), &signature.signature, None)
            )
            .await,
        valid("app-ed", 1)
    );
    fixture
        .admin_call(Request::Revoke {
            key: "app-ed".into(),
            version: None,
        })
        .await;
    let got = fixture
        .call(
            &app,
            verify("app-ed", message(b"m"), &signature.signature, None),
        )
        .await;
    assert_eq!(code(&got), Some(ErrorCode::KeyRevoked), "{got:?}");
    let got_sign = fixture.call(&app, sign("app-ed", message(b"m"))).await;
    assert_eq!(code(&got_sign), Some(ErrorCode::KeyRevoked), "{got_sign:?}");
    assert_eq!(
        fixture.public_key(&app, "app-ed", None).await,
        PublicKeyInfo {
            revoked: true,
            ..public
        },
        "a revoked key's public key stays retrievable, for audit"
    );
}

#[tokio::test]
async fn a_verify_grant_verifies_but_does_not_sign_and_a_public_key_grant_only_reads_the_key() {
    let fixture = Fixture::new(&[
        grant(&[APP], &["app-*"], &["sign"]),
        grant(&[OTHER], &["app-*"], &["verify"]),
        grant(&[STRANGER + 1], &["app-*"], &["public-key"]),
        grant(&[STRANGER + 2], &["app-*"], &["mac"]),
        grant(&[STRANGER + 3], &["app-*"], &["verify-mac"]),
    ]);
    let (signer, verifier, reader) = (peer(APP), peer(OTHER), peer(STRANGER + 1));
    let (tagger, checker, stranger) = (peer(STRANGER + 2), peer(STRANGER + 3), peer(STRANGER));
    fixture.create("app-rel", KeyType::Ed25519).await;
    fixture.create("app-tok", KeyType::HmacSha256).await;
    let signature = fixture.sign(&signer, "app-rel", message(b"m")).await;
    let tag = fixture.mac(&tagger, "app-tok", b"m").await;

    assert_eq!(
        fixture
            .call(
                &verifier,
                verify("app-rel", message(b"m"), &signature.signature, None)
            )
            .await,
        valid("app-rel", 1)
    );
    assert_eq!(
        fixture
            .call(&verifier, sign("app-rel", message(b"m")))
            .await,
        denied(OTHER, "sign", "app-rel")
    );
    assert_eq!(
        fixture.call(&verifier, public_key("app-rel", None)).await,
        denied(OTHER, "public-key", "app-rel")
    );
    assert_eq!(
        fixture.public_key(&reader, "app-rel", None).await.version,
        1
    );
    assert_eq!(
        fixture.call(&reader, sign("app-rel", message(b"m"))).await,
        denied(STRANGER + 1, "sign", "app-rel")
    );
    assert_eq!(
        fixture
            .call(
                &reader,
                verify("app-rel", message(b"m"), &signature.signature, None)
            )
            .await,
        denied(STRANGER + 1, "verify", "app-rel")
    );
    assert_eq!(
        fixture
            .call(
                &signer,
                verify("app-rel", message(b"m"), &signature.signature, None)
            )
            .await,
        denied(APP, "verify", "app-rel"),
        "sign does not imply verify"
    );
    assert_eq!(
        fixture
            .call(&checker, verify_mac("app-tok", b"m", &tag.tag, None))
            .await,
        valid("app-tok", 1)
    );
    assert_eq!(
        fixture.call(&checker, mac("app-tok", b"m")).await,
        denied(STRANGER + 3, "mac", "app-tok")
    );
    assert_eq!(
        fixture
            .call(&tagger, verify_mac("app-tok", b"m", &tag.tag, None))
            .await,
        denied(STRANGER + 2, "verify-mac", "app-tok")
    );

    // A peer without a grant learns nothing: the same answer for a key that
    // exists, one that does not, and one outside its grant's globs.
    for key in ["app-rel", "app-nothing", "other"] {
        assert_eq!(
            fixture.call(&stranger, sign(key, message(b"m"))).await,
            denied(STRANGER, "sign", key)
        );
        assert_eq!(
            fixture
                .call(
                    &stranger,
                    verify(key, message(b"m"), &signature.signature, None)
                )
                .await,
            denied(STRANGER, "verify", key)
        );
    }
    assert_eq!(
        fixture
            .call(
                &verifier,
                verify("app-nothing", message(b"m"), &[0; 64], None)
            )
            .await,
        refused(ErrorCode::KeyNotFound, "no key named \"app-nothing\""),
    );
}

#[tokio::test]
async fn messages_data_tags_and_signatures_beyond_their_limits_are_refused() {
    let fixture = Fixture::granting(&["sign", "verify", "mac", "verify-mac"]);
    let app = peer(APP);
    fixture.create("app-ed", KeyType::Ed25519).await;
    fixture.create("app-ec", KeyType::EcdsaP256).await;
    fixture.create("app-ml", KeyType::MlDsa65).await;
    fixture.create("app-mac", KeyType::HmacSha512).await;
    let max = LIMITS.max_plaintext;
    let big = vec![7u8; max + 1];

    // At the limit: fine.
    let at_limit = fixture.sign(&app, "app-ed", message(&big[..max])).await;
    assert_eq!(at_limit.version, 1);
    assert_eq!(fixture.mac(&app, "app-mac", &big[..max]).await.version, 1);

    assert_eq!(
        fixture.call(&app, sign("app-ec", message(&big))).await,
        refused(
            ErrorCode::PlaintextTooLarge,
            &format!(
                "a message of {} bytes exceeds the limit of {max} bytes (max_plaintext); send its 32-byte SHA-256 digest instead (hostkms sign --digest): an ecdsa-p256 signature of the digest is the signature of the message",
                max + 1
            )
        )
    );
    for (key, key_type) in [("app-ed", "ed25519"), ("app-ml", "ml-dsa-65")] {
        for (request, op) in [
            (sign(key, message(&big)), "sign"),
            (verify(key, message(&big), &[0; 64], None), "verify"),
        ] {
            assert_eq!(
                fixture.call(&app, request).await,
                refused(
                    ErrorCode::PlaintextTooLarge,
                    &format!(
                        "a message of {} bytes exceeds the limit of {max} bytes (max_plaintext); {key_type} keys sign whole messages only; only ecdsa-p256 keys can {op} a SHA-256 digest of a larger message (hostkms {op} --digest)",
                        max + 1
                    )
                )
            );
        }
    }
    let data_refusal = refused(
        ErrorCode::PlaintextTooLarge,
        &format!(
            "data of {} bytes exceeds the limit of {max} bytes (max_plaintext); mac and verify-mac take at most that much in one request; an admin can raise max_plaintext in the config",
            max + 1
        ),
    );
    assert_eq!(fixture.call(&app, mac("app-mac", &big)).await, data_refusal);
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", &big, &[0; 64], None))
            .await,
        data_refusal
    );
    assert_eq!(
        fixture
            .call(&app, verify_mac("app-mac", b"d", &[0; 65], None))
            .await,
        refused(
            ErrorCode::InvalidArgument,
            "a tag of 65 bytes is longer than any HMAC tag (at most 64 bytes); send the tag mac returned"
        )
    );
    assert_eq!(
        fixture
            .call(
                &app,
                verify(
                    "app-ml",
                    message(b"m"),
                    &vec![0; MAX_SIGNATURE_LEN + 1],
                    None
                )
            )
            .await,
        refused(
            ErrorCode::InvalidArgument,
            "a signature of 8193 bytes is longer than any this daemon makes (at most 8192 bytes); send the signature sign returned"
        )
    );
    assert_eq!(
        fixture
            .call(
                &app,
                verify("app-ml", message(b"m"), &vec![0; MAX_SIGNATURE_LEN], None)
            )
            .await,
        invalid("app-ml"),
        "at the limit: checked, and invalid"
    );
}

#[tokio::test]
async fn random_bytes_for_admins_and_random_grants_whatever_their_keys() {
    let fixture = Fixture::new(&[
        // `random` alone needs no keys.
        grant(&[APP], &[], &["random"]),
        // Its keys do not matter either.
        grant(&[OTHER], &["nothing-*"], &["random", "verify"]),
        grant(&[STRANGER], &["*"], &["wrap", "sign", "mac"]),
    ]);
    for (who, bytes) in [
        (admin(), 1u16),
        (peer(APP), 33),
        (peer(OTHER), MAX_RANDOM_BYTES),
    ] {
        let (response, audited) = fixture.audited(&who, random(bytes)).await;
        let Response::Random(out) = response else {
            panic!("uid {}: expected Random, got {response:?}", who.uid);
        };
        assert_eq!(out.len(), usize::from(bytes));
        assert_eq!(audited, None);
    }
    let Response::Random(a) = fixture.admin_call(random(64)).await else {
        panic!("expected Random");
    };
    let Response::Random(b) = fixture.admin_call(random(64)).await else {
        panic!("expected Random");
    };
    assert_ne!(a.expose(), b.expose());
    let refusal = refused(
        ErrorCode::PermissionDenied,
        &format!(
            "uid {STRANGER} may not generate random bytes: admins may, and peers holding a [[grant]] whose ops list \"random\""
        ),
    );
    assert_eq!(fixture.call(&peer(STRANGER), random(16)).await, refusal);
    // Without the grant, nothing about the argument is answered either.
    assert_eq!(fixture.call(&peer(STRANGER), random(0)).await, refusal);
    for bytes in [0, MAX_RANDOM_BYTES + 1, u16::MAX] {
        assert_eq!(
            fixture.call(&peer(APP), random(bytes)).await,
            refused(
                ErrorCode::InvalidArgument,
                &format!("{bytes} random bytes are not offered; ask for 1 to 1024")
            )
        );
    }
    // A random grant is no grant on keys: it lists and uses none.
    fixture.create("k", KeyType::Ed25519).await;
    let Response::Keys(page) = fixture
        .call(
            &peer(APP),
            Request::ListKeys {
                after: None,
                limit: None,
            },
        )
        .await
    else {
        panic!("expected Keys");
    };
    assert!(page.keys.is_empty(), "{page:?}");
}

#[tokio::test]
async fn random_bytes_draw_from_a_reserve_of_their_own_never_the_key_stores() {
    let fixture = Fixture::new(&[]);
    let kek_draws = fixture.entropy.taken();
    for bytes in [1u16, 32, 33, 1024] {
        let before = fixture.random.taken();
        assert!(matches!(
            fixture.admin_call(random(bytes)).await,
            Response::Random(_)
        ));
        assert_eq!(
            fixture.random.taken() - before,
            usize::from(bytes).div_ceil(32),
            "one 32-byte draw per 32 bytes"
        );
    }
    assert_eq!(
        fixture.entropy.taken(),
        kek_draws,
        "the KEK reserve is untouched"
    );

    // A TPM that stops answering refuses random bytes, never serves them
    // from the OS RNG alone, and new keys still come from their reserve.
    fixture.random.set_unavailable(true);
    let refused_random = fixture.admin_call(random(16)).await;
    assert_eq!(
        code(&refused_random),
        Some(ErrorCode::TpmUnavailable),
        "{refused_random:?}"
    );
    fixture.create("still", KeyType::HmacSha256).await;
    assert_eq!(fixture.entropy.taken(), kek_draws + 1);
    fixture.random.set_unavailable(false);
    assert!(matches!(
        fixture.admin_call(random(16)).await,
        Response::Random(_)
    ));
}

/// A random source that takes its time and counts how many draws overlap.
#[derive(Debug, Default)]
struct SlowSource {
    inside: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl EntropySource for SlowSource {
    fn take(&self) -> Result<Zeroizing<[u8; 32]>, crate::tpm::TpmError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(5));
        self.inside.fetch_sub(1, SeqCst);
        Ok(Zeroizing::new([7u8; 32]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_draw_one_at_a_time_so_key_refills_are_never_queued_behind_them() {
    let (policy, _) = Policy::new(&[], &[]).expect("no grants");
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = Arc::new(SlowSource::default());
    let service = Arc::new(
        TestServiceBuilder::new()
            .limits(LIMITS)
            .build(&tmp.path().join("state"), policy)
            .expect("test service")
            .with_random_source(Arc::clone(&source) as Arc<dyn EntropySource>),
    );
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let service = Arc::clone(&service);
            tokio::spawn(async move { service.handle(&admin(), random(64)).await })
        })
        .collect();
    for request in requests {
        let response = request.await.expect("request task");
        assert!(matches!(response, Response::Random(_)), "{response:?}");
    }
    assert_eq!(
        source.most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "random requests drew from the TPM reserve one at a time"
    );
}

#[tokio::test]
async fn keys_of_every_type_survive_a_restart_and_old_signatures_still_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let builder = TestServiceBuilder::new().limits(LIMITS);
    let service = builder.build(&dir, Policy::default()).expect("service");
    let mut signatures = Vec::new();
    for key_type in SIGNING {
        let name = format!("k-{key_type}");
        service.handle(&admin(), create(&name, key_type)).await;
        let Response::Signature(signature) =
            service.handle(&admin(), sign(&name, message(b"m"))).await
        else {
            panic!("expected Signature");
        };
        signatures.push((name, signature.signature));
    }
    service
        .handle(&admin(), create("k-mac", KeyType::HmacSha256))
        .await;
    let Response::Mac(tag) = service.handle(&admin(), mac("k-mac", b"m")).await else {
        panic!("expected Mac");
    };
    drop(service);
    let service = builder.build(&dir, Policy::default()).expect("reopened");
    for (name, signature) in signatures {
        assert_eq!(
            service
                .handle(&admin(), verify(&name, message(b"m"), &signature, None))
                .await,
            valid(&name, 1)
        );
    }
    assert_eq!(
        service
            .handle(&admin(), verify_mac("k-mac", b"m", &tag.tag, None))
            .await,
        valid("k-mac", 1)
    );
}
