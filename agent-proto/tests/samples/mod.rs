//! One sample of every request and response, shared by the codec tests.
#![allow(dead_code)] // each test binary uses part of the samples

use std::collections::BTreeMap;

use agent_proto::{
    Ciphertext, DataKey, EncryptionContext, ErrorCode, ErrorReply, ExportedFile, KeyInfo, KeyPage,
    KeySettings, KeyState, KeyType, MacTag, Operation, PublicKeyInfo, RecoveryStatus, Request,
    Response, RewrapDestination, RollbackStatus, RootRotation, RotationSetting, SecretBytes,
    SignInput, Signature, StatusInfo, TransportKeyInfo, UnwrapItem, Unwrapped, Verification,
    VersionInfo, VersionState, WrapItem, Wrapped,
};
use agent_proto::{LockState, PcrChange, PcrValue, ResealInfo, Sealing, SealingStatus, UnlockInfo};

pub fn context() -> EncryptionContext {
    let mut context = EncryptionContext::new();
    context.insert("table".to_string(), "users".to_string());
    context.insert("db".to_string(), "main".to_string());
    context
}

/// One request per operation, in wire order.
pub fn requests() -> Vec<Request> {
    let requests = vec![
        Request::Ping,
        Request::Status,
        Request::CreateKey {
            name: "app-db".to_string(),
            key_type: agent_proto::KeyType::Aes256Gcm,
            settings: Default::default(),
        },
        Request::Wrap {
            key: "app-db".to_string(),
            plaintext: SecretBytes::from(&b"hello"[..]),
            context: context(),
        },
        Request::Unwrap {
            ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
            context: context(),
            key: Some("app-db".to_string()),
        },
        Request::GenerateDataKey {
            key: "app-db".to_string(),
            bytes: 32,
            include_plaintext: true,
            context: EncryptionContext::new(),
        },
        Request::Rewrap {
            ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
            context: context(),
            key: None,
            destination: None,
        },
        Request::Rotate {
            key: "app-db".to_string(),
        },
        Request::Revoke {
            key: "app-db".to_string(),
            version: Some(1),
        },
        Request::Disable {
            key: "app-db".to_string(),
        },
        Request::Enable {
            key: "app-db".to_string(),
        },
        Request::SetMinDecryptionVersion {
            key: "app-db".to_string(),
            version: 2,
        },
        Request::ListKeys {
            after: Some("app-a".to_string()),
            limit: Some(100),
        },
        Request::DescribeKey {
            key: "app-db".to_string(),
        },
        Request::RotateRoot { pin: None },
        Request::TransportKey,
        Request::ExportKey {
            key: "app-db".to_string(),
            destination: "db-replica-2".to_string(),
        },
        Request::ImportKey {
            file: b"age-encryption.org/v1\n...".to_vec(),
        },
        Request::Mac {
            key: "webhooks".to_string(),
            data: SecretBytes::from(&b"payload"[..]),
        },
        Request::VerifyMac {
            key: "webhooks".to_string(),
            data: SecretBytes::from(&b"payload"[..]),
            tag: vec![0x5a; 32],
            version: Some(1),
        },
        Request::Sign {
            key: "release".to_string(),
            input: SignInput::Message(SecretBytes::from(&b"hi\n"[..])),
        },
        Request::Verify {
            key: "release".to_string(),
            input: SignInput::Digest(vec![0x11; 32]),
            signature: vec![0x30, 0x44],
            version: None,
        },
        Request::GetPublicKey {
            key: "release".to_string(),
            version: Some(2),
        },
        Request::GenerateRandom { bytes: 32 },
        Request::ScheduleDeletion {
            key: "app-db".to_string(),
            days: 30,
        },
        Request::CancelDeletion {
            key: "app-db".to_string(),
        },
        Request::SetRotationPeriod {
            key: "app-db".to_string(),
            period: Some(90 * 86_400),
        },
        Request::UpdateKeyMetadata {
            key: "app-db".to_string(),
            description: Some("the orders database".to_string()),
            set_tags: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            remove_tags: vec!["old".to_string()],
        },
        Request::WrapBatch {
            key: "app-db".to_string(),
            items: vec![
                WrapItem {
                    plaintext: SecretBytes::from(&b"one"[..]),
                    context: context(),
                },
                WrapItem {
                    plaintext: SecretBytes::from(&b"two"[..]),
                    context: EncryptionContext::new(),
                },
            ],
        },
        Request::UnwrapBatch {
            key: Some("app-db".to_string()),
            items: vec![UnwrapItem {
                ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
                context: context(),
            }],
        },
        Request::WrapCredential {
            key: "app-db".to_string(),
            unit: "postgresql.service".to_string(),
            credential: "dbpass".to_string(),
            plaintext: SecretBytes::from(&b"s3cret"[..]),
        },
        Request::Unlock {
            pin: SecretBytes::from(&b"correct horse"[..]),
            reseal: true,
        },
        Request::Reseal {
            pin: Some(SecretBytes::from(&b"correct horse"[..])),
            pcrs: Some(vec![7, 14]),
            new_pin: None,
            dry_run: true,
        },
        Request::ChangePin {
            pin: SecretBytes::from(&b"correct horse"[..]),
            new_pin: SecretBytes::from(&b"battery staple"[..]),
        },
    ];
    let ops: Vec<Operation> = requests.iter().map(Request::operation).collect();
    assert_eq!(ops, Operation::ALL, "a sample is missing for some request");
    assert_eq!(requests.len(), 34, "34 request kinds in protocol version 6");
    requests
}

/// The operations appended in version 6.
pub fn appended_in_v6(op: Operation) -> bool {
    op >= Operation::Unlock
}

/// A sealing to PCR 7 and a PIN, for the samples.
pub fn sealing() -> Sealing {
    Sealing {
        pcrs: vec![7],
        pin: true,
        pcr_values: vec![PcrValue {
            pcr: 7,
            sha256: vec![0xa7; 32],
        }],
    }
}

/// The forms of version-5 requests that version 4 has too but cannot
/// carry with these fields: a `CreateKey` with settings and a `Rewrap`
/// with a destination.
pub fn v5_forms() -> Vec<Request> {
    vec![
        Request::CreateKey {
            name: "app-db".to_string(),
            key_type: KeyType::Aes256Gcm,
            settings: KeySettings {
                rotation: RotationSetting::Every(90 * 86_400),
                description: "orders".to_string(),
                tags: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            },
        },
        Request::CreateKey {
            name: "app-db".to_string(),
            key_type: KeyType::Aes256Gcm,
            settings: KeySettings {
                rotation: RotationSetting::Off,
                ..Default::default()
            },
        },
        Request::Rewrap {
            ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
            context: context(),
            key: None,
            destination: Some(RewrapDestination {
                key: Some("app-other".to_string()),
                context: None,
            }),
        },
        Request::Rewrap {
            ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
            context: context(),
            key: Some("app-db".to_string()),
            destination: Some(RewrapDestination {
                key: None,
                context: Some(EncryptionContext::new()),
            }),
        },
    ]
}

/// The operations appended in version 5.
pub fn appended_in_v5(op: Operation) -> bool {
    op >= Operation::ScheduleDeletion && !appended_in_v6(op)
}

fn key_info() -> KeyInfo {
    KeyInfo {
        id: [0x5a; 16],
        name: "app-db".to_string(),
        created: 1_764_000_000,
        state: KeyState::Enabled,
        latest_version: 2,
        min_decryption_version: 1,
        versions: vec![
            VersionInfo {
                version: 1,
                created: 1_764_000_000,
                state: VersionState::Revoked,
                encryptions: 10,
            },
            VersionInfo {
                version: 2,
                created: 1_764_000_100,
                state: VersionState::Enabled,
                encryptions: 0,
            },
        ],
        key_type: agent_proto::KeyType::Aes256Gcm,
        description: String::new(),
        tags: Default::default(),
        rotation_period: None,
        next_rotation: None,
        deletion_date: None,
    }
}

/// One response of every kind.
pub fn responses() -> Vec<Response> {
    let responses = vec![
        Response::Pong,
        Response::Status(StatusInfo {
            daemon_version: "0.1.0".to_string(),
            oldest_protocol: 1,
            newest_protocol: 2,
            uptime_secs: 12,
            tpm_reachable: true,
            root_key_loaded: true,
            root_key_check: "0011223344556677".to_string(),
            counters: BTreeMap::from([("keys".to_string(), 1)]),
            recovery: RecoveryStatus {
                configured: true,
                dir: "/var/lib/hostkms-recovery".to_string(),
                custodians: 3,
                threshold: 2,
                bundle_recipient: "age1bundle".to_string(),
                current: true,
                problem: String::new(),
            },
            rollback: RollbackStatus {
                bound: true,
                nv_index: 0x0100_4b00,
                store_counter: 7,
                pending_increments: 0,
                problem: String::new(),
            },
            sealing: SealingStatus {
                lock: LockState::PcrMismatch {
                    changed: vec![PcrChange {
                        pcr: 7,
                        sealed: vec![0xa7; 32],
                        current: vec![0xb7; 32],
                    }],
                },
                mode: sealing(),
            },
        }),
        Response::Key(key_info()),
        Response::Keys(KeyPage {
            keys: vec![key_info(), key_info()],
            next: Some("app-db".to_string()),
        }),
        Response::Wrapped(Wrapped {
            key: "app-db".to_string(),
            version: 2,
            ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
        }),
        Response::Unwrapped(Unwrapped {
            key: "app-db".to_string(),
            version: 2,
            plaintext: SecretBytes::from(&b"hello"[..]),
        }),
        Response::DataKey(DataKey {
            key: "app-db".to_string(),
            version: 2,
            plaintext: Some(SecretBytes::from(vec![7u8; 32])),
            ciphertext: Ciphertext::from(vec![9u8; 85]),
        }),
        Response::error(ErrorCode::KeyNotFound, "no key named \"x\""),
        Response::RootRotated(RootRotation {
            old_check: "0011223344556677".to_string(),
            new_check: "8899aabbccddeeff".to_string(),
            keys: 2,
            versions: 5,
        }),
        Response::TransportKey(TransportKeyInfo {
            recipient: "age1transport".to_string(),
            fingerprint: "0123456789abcdef".to_string(),
        }),
        Response::Exported(ExportedFile {
            key: "app-db".to_string(),
            destination: "db-replica-2".to_string(),
            file: b"age-encryption.org/v1\n...".to_vec(),
        }),
        Response::Mac(MacTag {
            key: "webhooks".to_string(),
            version: 1,
            tag: vec![0x5a; 32],
        }),
        Response::Verified(Verification {
            key: "release".to_string(),
            valid: true,
            version: Some(2),
        }),
        Response::Signature(Signature {
            key: "release".to_string(),
            version: 2,
            signature: vec![0x77; 64],
        }),
        Response::PublicKey(PublicKeyInfo {
            key: "release".to_string(),
            version: 2,
            key_type: KeyType::Ed25519,
            revoked: false,
            spki_der: vec![0x30, 0x2a],
        }),
        Response::Random(SecretBytes::from(vec![0x42; 16])),
        Response::WrappedBatch(vec![
            Ok(Wrapped {
                key: "app-db".to_string(),
                version: 2,
                ciphertext: Ciphertext::from(&b"HKMS\x01opaque"[..]),
            }),
            Err(ErrorReply {
                code: ErrorCode::PlaintextTooLarge,
                message: "item 1 is too large".to_string(),
            }),
        ]),
        Response::UnwrappedBatch(vec![
            Ok(Unwrapped {
                key: "app-db".to_string(),
                version: 2,
                plaintext: SecretBytes::from(&b"hello"[..]),
            }),
            Err(ErrorReply {
                code: ErrorCode::InvalidCiphertext,
                message: "item 1 does not authenticate".to_string(),
            }),
        ]),
        Response::Unlocked(UnlockInfo {
            root_key_check: "0011223344556677".to_string(),
            resealed: true,
            changed_pcrs: vec![PcrChange {
                pcr: 7,
                sealed: vec![0xa7; 32],
                current: vec![0xb7; 32],
            }],
        }),
        Response::Resealed(ResealInfo {
            dry_run: false,
            before: Sealing::default(),
            after: sealing(),
        }),
    ];
    // The match fails to compile when a response kind is added, pointing here.
    let kinds: std::collections::BTreeSet<&str> = responses
        .iter()
        .map(|response| match response {
            Response::Pong
            | Response::Status(_)
            | Response::Key(_)
            | Response::Keys(_)
            | Response::Wrapped(_)
            | Response::Unwrapped(_)
            | Response::DataKey(_)
            | Response::Error(_)
            | Response::RootRotated(_)
            | Response::TransportKey(_)
            | Response::Exported(_)
            | Response::Mac(_)
            | Response::Verified(_)
            | Response::Signature(_)
            | Response::PublicKey(_)
            | Response::Random(_)
            | Response::WrappedBatch(_)
            | Response::UnwrappedBatch(_)
            | Response::Unlocked(_)
            | Response::Resealed(_) => response.kind(),
        })
        .collect();
    assert_eq!(
        kinds.len(),
        20,
        "a sample is missing for some response kind"
    );
    responses
}
