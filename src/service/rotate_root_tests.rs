//! `RotateRoot` through `Service::handle`, without a TPM: a fake
//! [`RootSealer`] hands out a root key made from bytes. Only admins may
//! rotate, whatever a grant says; `Status` shows the new check value; the
//! KEKs do not change, so ciphertexts made before unwrap after.

use std::sync::{Arc, Mutex};

use agent_proto::{EncryptionContext, ErrorCode, Request, Response, SecretBytes};

use super::testing::{TEST_ROOT_KEY, TestServiceBuilder};
use super::*;
use crate::peer::{Peer, UnitUnknown};
use crate::policy::{GRANTABLE, GrantConfig, Policy};
use crate::rootkey::{RootKey, RootKeyError, check_value};

const NEW_ROOT: [u8; 32] = [0x77; 32];
const APP: u32 = 1000;

#[derive(Debug, Default)]
struct FakeSealer {
    steps: Mutex<Vec<&'static str>>,
}

impl RootSealer for FakeSealer {
    fn seal_next(&self) -> Result<RootKey, RootKeyError> {
        self.steps.lock().unwrap().push("seal");
        Ok(RootKey::from_bytes_for_tests(NEW_ROOT))
    }
    fn promote_next(&self) -> Result<(), RootKeyError> {
        self.steps.lock().unwrap().push("promote");
        Ok(())
    }
    fn discard_next(&self) -> Result<(), RootKeyError> {
        self.steps.lock().unwrap().push("discard");
        Ok(())
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

/// A service where uid [`APP`] holds every grantable operation on every
/// key (but `credential`, which only a grant to units may name), with a
/// fake sealer (or none).
fn service(dir: &std::path::Path, sealer: Option<Arc<FakeSealer>>) -> Service {
    let grant = GrantConfig {
        keys: vec!["*".to_string()],
        uids: vec![APP],
        ops: GRANTABLE
            .iter()
            .filter(|&&op| op != agent_proto::Operation::Credential)
            .map(|op| op.as_str().to_string())
            .collect(),
        ..GrantConfig::default()
    };
    let (policy, _) = Policy::new(&[grant], &[]).expect("grants resolve");
    let service = TestServiceBuilder::new()
        .build(&dir.join("state"), policy)
        .expect("service");
    match sealer {
        Some(sealer) => service.with_root_sealer(sealer),
        None => service,
    }
}

async fn status_check(service: &Service) -> String {
    match service.handle(&peer(0), Request::Status).await {
        Response::Status(status) => status.root_key_check,
        other => panic!("expected Status, got {other:?}"),
    }
}

fn refusal(response: Response) -> (ErrorCode, String) {
    match response {
        Response::Error(reply) => (reply.code, reply.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_admin_rotates_status_shows_the_new_check_and_ciphertexts_still_unwrap() {
    let tmp = tempfile::tempdir().unwrap();
    let sealer = Arc::new(FakeSealer::default());
    let service = service(tmp.path(), Some(Arc::clone(&sealer)));
    let admin = peer(0);
    let old = check_value(&TEST_ROOT_KEY);
    let new = check_value(&NEW_ROOT);
    assert_eq!(status_check(&service).await, old);
    service
        .handle(
            &admin,
            Request::CreateKey {
                name: "app-db".into(),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: Default::default(),
            },
        )
        .await;
    let context = EncryptionContext::new();
    let wrapped = match service
        .handle(
            &admin,
            Request::Wrap {
                key: "app-db".into(),
                plaintext: SecretBytes::from(&b"before"[..]),
                context: context.clone(),
            },
        )
        .await
    {
        Response::Wrapped(wrapped) => wrapped,
        other => panic!("expected Wrapped, got {other:?}"),
    };

    match service
        .handle(&admin, Request::RotateRoot { pin: None })
        .await
    {
        Response::RootRotated(rotation) => {
            assert_eq!(rotation.old_check, old);
            assert_eq!(rotation.new_check, new);
            assert_eq!((rotation.keys, rotation.versions), (1, 1));
        }
        other => panic!("expected RootRotated, got {other:?}"),
    }
    assert_eq!(*sealer.steps.lock().unwrap(), ["seal", "promote"]);
    assert_eq!(status_check(&service).await, new);
    match service
        .handle(
            &admin,
            Request::Unwrap {
                ciphertext: wrapped.ciphertext,
                context,
                key: None,
            },
        )
        .await
    {
        Response::Unwrapped(unwrapped) => assert_eq!(unwrapped.plaintext.expose(), b"before"),
        other => panic!("expected Unwrapped, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_granted_everything_may_not_rotate_the_root_key() {
    let tmp = tempfile::tempdir().unwrap();
    let sealer = Arc::new(FakeSealer::default());
    let service = service(tmp.path(), Some(Arc::clone(&sealer)));
    let (code, message) = refusal(
        service
            .handle(&peer(APP), Request::RotateRoot { pin: None })
            .await,
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    assert!(message.contains("only admins"), "{message}");
    assert!(sealer.steps.lock().unwrap().is_empty(), "no TPM work");
    assert_eq!(status_check(&service).await, check_value(&TEST_ROOT_KEY));
}

#[tokio::test]
async fn without_a_sealer_rotate_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let service = service(tmp.path(), None);
    let (code, message) = refusal(
        service
            .handle(&peer(0), Request::RotateRoot { pin: None })
            .await,
    );
    assert_eq!(code, ErrorCode::Internal);
    assert!(message.contains("no TPM"), "{message}");
}
