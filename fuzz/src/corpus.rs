//! The frames mutations start from: the byte-exact example frames of the
//! protocol's specification (agent-proto/README.md) and a valid frame of
//! every request and every response type.

use agent_proto::codec::encode_frame;
use agent_proto::{
    Ciphertext, DataKey, EncryptionContext, Envelope, ErrorCode, KeyInfo, KeyPage, KeySettings,
    KeyState, KeyType, MacTag, PublicKeyInfo, Request, Response, RewrapDestination,
    RotationSetting, SecretBytes, SignInput, Signature, StatusInfo, UnwrapItem, Unwrapped,
    Verification, VersionInfo, VersionState, WrapItem, Wrapped,
};
use agent_proto::{LockState, PcrChange, PcrValue, ResealInfo, Sealing, SealingStatus, UnlockInfo};

/// The specification, whose example frames are seeds.
const SPEC: &str = include_str!("../../agent-proto/README.md");

/// The largest frame the fuzzed daemon accepts (its default).
pub const MAX_FRAME: u32 = agent_proto::DEFAULT_MAX_FRAME;

/// Whole frames (length prefix and body) to mutate.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Request frames: what a client sends.
    pub requests: Vec<Vec<u8>>,
    /// Response frames: what a client decodes.
    pub responses: Vec<Vec<u8>>,
}

/// The bytes of the example frame between `<!-- NAME -->` and
/// `<!-- /NAME -->` in the specification: every two-digit hex token before
/// a `#` comment.
pub fn spec_frame(name: &str) -> Option<Vec<u8>> {
    let start = SPEC.find(&format!("<!-- {name} -->"))?;
    let end = start + SPEC[start..].find(&format!("<!-- /{name} -->"))?;
    let bytes: Vec<u8> = SPEC[start..end]
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace())
        .filter(|token| token.len() == 2)
        .filter_map(|token| u8::from_str_radix(token, 16).ok())
        .collect();
    (!bytes.is_empty()).then_some(bytes)
}

fn frame<T: framing::Encodable>(id: u64, op: T) -> Vec<u8> {
    op.frame(id)
}

/// Encoding through agent-proto's own encoder, for requests and responses.
mod framing {
    use super::*;

    /// A message type the codec can frame.
    pub trait Encodable {
        /// The whole frame of this message with request id `id`.
        fn frame(self, id: u64) -> Vec<u8>;
    }

    impl Encodable for Request {
        fn frame(self, id: u64) -> Vec<u8> {
            encode_frame(&Envelope::new(id, self), MAX_FRAME)
                .map(|f| f.to_vec())
                .unwrap_or_default()
        }
    }

    impl Encodable for Response {
        fn frame(self, id: u64) -> Vec<u8> {
            encode_frame(&Envelope::new(id, self), MAX_FRAME)
                .map(|f| f.to_vec())
                .unwrap_or_default()
        }
    }
}

/// The keys of every type but AES-256-GCM that the driver creates beside
/// `key` (named `key-TYPE`, so a grant on `key*` covers them), for the
/// MAC and signing requests to reach real keys of each type.
pub fn typed_keys(key: &str) -> Vec<(String, KeyType)> {
    KeyType::ALL
        .into_iter()
        .filter(|key_type| *key_type != KeyType::Aes256Gcm)
        .map(|key_type| (format!("{key}-{key_type}"), key_type))
        .collect()
}

/// The example frames of the specification that are requests.
const SPEC_REQUESTS: [&str; 22] = [
    "request-frame",
    "v1-list-request-frame",
    "v2-list-request-frame",
    "v4-create-key-request-frame",
    "v4-mac-request-frame",
    "v4-verify-mac-request-frame",
    "v4-sign-request-frame",
    "v4-verify-request-frame",
    "v4-public-key-request-frame",
    "v4-random-request-frame",
    "v5-create-key-request-frame",
    "v5-schedule-deletion-request-frame",
    "v5-cancel-deletion-request-frame",
    "v5-set-rotation-period-request-frame",
    "v5-update-metadata-request-frame",
    "v5-rewrap-request-frame",
    "v5-wrap-batch-request-frame",
    "v5-unwrap-batch-request-frame",
    "v5-wrap-credential-request-frame",
    "v6-unlock-request-frame",
    "v6-reseal-request-frame",
    "v6-change-pin-request-frame",
];

/// The example frames of the specification that are responses.
const SPEC_RESPONSES: [&str; 15] = [
    "response-frame",
    "v2-list-response-frame",
    "v3-status-response-frame",
    "v4-create-key-response-frame",
    "v4-signature-response-frame",
    "v4-verified-response-frame",
    "v5-key-response-frame",
    "v5-wrapped-batch-response-frame",
    "v5-unwrapped-batch-response-frame",
    "v5-pending-deletion-error-frame",
    "v6-unlocked-response-frame",
    "v6-resealed-response-frame",
    "v6-status-response-frame",
    "v6-locked-error-frame",
    "v6-wrong-pin-error-frame",
];

/// The MAC and signing requests on `name`, valid in shape whatever its
/// type (a key of another type answers `WrongKeyType`).
fn key_type_requests(name: &str) -> Vec<Request> {
    let message = || SecretBytes::new(b"fuzzing message".to_vec());
    vec![
        Request::Mac {
            key: name.to_string(),
            data: message(),
        },
        Request::VerifyMac {
            key: name.to_string(),
            data: message(),
            tag: vec![0x5a; 32],
            version: None,
        },
        Request::VerifyMac {
            key: name.to_string(),
            data: message(),
            tag: vec![0x5a; 64],
            version: Some(1),
        },
        Request::Sign {
            key: name.to_string(),
            input: SignInput::Message(message()),
        },
        Request::Sign {
            key: name.to_string(),
            input: SignInput::Digest(vec![0x11; 32]),
        },
        Request::Verify {
            key: name.to_string(),
            input: SignInput::Message(message()),
            signature: vec![0x77; 64],
            version: None,
        },
        Request::Verify {
            key: name.to_string(),
            input: SignInput::Digest(vec![0x11; 32]),
            signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            version: Some(1),
        },
        Request::GetPublicKey {
            key: name.to_string(),
            version: None,
        },
    ]
}

/// The context every seed request carries; ciphertexts made for the
/// seeds must be wrapped with it, so that unmutated unwraps succeed.
pub fn seed_context() -> EncryptionContext {
    [("app", "fuzz"), ("table", "users")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A valid request of every type, on `key` (a key the fuzzing peer holds a
/// grant on) and `other` (one it does not); `ciphertexts` are real ones the
/// daemon made, so unwrap and rewrap reach the decryption itself.
pub fn request_frames(key: &str, other: &str, ciphertexts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let ctx = seed_context();
    let mut requests = vec![
        Request::Ping,
        Request::Status,
        Request::ListKeys {
            after: None,
            limit: None,
        },
        Request::ListKeys {
            after: Some(key.to_string()),
            limit: Some(2),
        },
        // A peer that is not admin: refused without touching the TPM.
        Request::RotateRoot { pin: None },
        Request::TransportKey,
        Request::ImportKey {
            file: b"age-encryption.org/v1\n".to_vec(),
        },
        Request::GenerateRandom { bytes: 32 },
        Request::GenerateRandom { bytes: 0 },
        Request::GenerateRandom {
            bytes: agent_proto::MAX_RANDOM_BYTES + 1,
        },
        // Admin only, never grantable: refused before the TPM is asked.
        // PINs at and past the rule's edges (8 to 32 bytes of UTF-8).
        Request::Unlock {
            pin: SecretBytes::new(b"correct horse".to_vec()),
            reseal: false,
        },
        Request::Unlock {
            pin: SecretBytes::new(b"1234567".to_vec()),
            reseal: true,
        },
        Request::Reseal {
            pin: Some(SecretBytes::new(b"correct horse".to_vec())),
            pcrs: Some(vec![7, 14]),
            new_pin: None,
            dry_run: true,
        },
        Request::Reseal {
            pin: None,
            pcrs: Some(vec![24, 7, 7, 255]),
            new_pin: Some(SecretBytes::new(b"\xff\xfe not utf-8".to_vec())),
            dry_run: false,
        },
        Request::ChangePin {
            pin: SecretBytes::new(b"correct horse".to_vec()),
            new_pin: SecretBytes::new(vec![b'p'; 33]),
        },
    ];
    for (name, key_type) in typed_keys(key) {
        requests.push(Request::CreateKey {
            name: format!("{name}-new"),
            key_type,
            settings: Default::default(),
        });
        requests.extend(key_type_requests(&name));
    }
    requests.extend(key_type_requests(key));
    requests.extend(key_type_requests(other));
    for name in [key, other] {
        requests.extend([
            Request::CreateKey {
                name: name.to_string(),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: Default::default(),
            },
            Request::Wrap {
                key: name.to_string(),
                plaintext: SecretBytes::new(b"fuzzing plaintext".to_vec()),
                context: ctx.clone(),
            },
            Request::GenerateDataKey {
                key: name.to_string(),
                bytes: 32,
                include_plaintext: true,
                context: ctx.clone(),
            },
            Request::Rotate {
                key: name.to_string(),
            },
            Request::Revoke {
                key: name.to_string(),
                version: Some(1),
            },
            Request::Disable {
                key: name.to_string(),
            },
            Request::Enable {
                key: name.to_string(),
            },
            Request::SetMinDecryptionVersion {
                key: name.to_string(),
                version: 1,
            },
            Request::DescribeKey {
                key: name.to_string(),
            },
            Request::ExportKey {
                key: name.to_string(),
                destination: name.to_string(),
            },
            Request::CreateKey {
                name: format!("{name}-settings"),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: KeySettings {
                    rotation: RotationSetting::Every(agent_proto::MIN_ROTATION_PERIOD_SECS),
                    description: "made by the fuzzer".to_string(),
                    tags: [("origin".to_string(), "fuzz".to_string())].into(),
                },
            },
            Request::ScheduleDeletion {
                key: name.to_string(),
                days: agent_proto::MIN_DELETION_DAYS,
            },
            Request::CancelDeletion {
                key: name.to_string(),
            },
            Request::SetRotationPeriod {
                key: name.to_string(),
                period: Some(agent_proto::MIN_ROTATION_PERIOD_SECS),
            },
            Request::SetRotationPeriod {
                key: name.to_string(),
                period: None,
            },
            Request::UpdateKeyMetadata {
                key: name.to_string(),
                description: Some("fuzzed".to_string()),
                set_tags: [("stage".to_string(), "fuzz".to_string())].into(),
                remove_tags: vec!["origin".to_string()],
            },
            Request::WrapCredential {
                key: name.to_string(),
                unit: "fuzz.service".to_string(),
                credential: "secret".to_string(),
                plaintext: SecretBytes::new(b"credential".to_vec()),
            },
            Request::WrapBatch {
                key: name.to_string(),
                items: vec![
                    WrapItem {
                        plaintext: SecretBytes::new(b"first".to_vec()),
                        context: ctx.clone(),
                    },
                    WrapItem {
                        plaintext: SecretBytes::new(b"second".to_vec()),
                        context: EncryptionContext::new(),
                    },
                ],
            },
        ]);
    }
    let mut blobs: Vec<Vec<u8>> = ciphertexts.to_vec();
    // A well-formed header with a made-up key id: the unknown-key path.
    let mut made_up = b"HKMS\x01".to_vec();
    made_up.extend_from_slice(&[0x11; 16]);
    made_up.extend_from_slice(&1u32.to_be_bytes());
    made_up.extend_from_slice(&[0x22; 12 + 5 + 16]);
    blobs.push(made_up);
    for blob in blobs {
        for key_field in [None, Some(key.to_string()), Some(other.to_string())] {
            requests.push(Request::Unwrap {
                ciphertext: Ciphertext::new(blob.clone()),
                context: ctx.clone(),
                key: key_field.clone(),
            });
            requests.push(Request::Rewrap {
                ciphertext: Ciphertext::new(blob.clone()),
                context: ctx.clone(),
                key: key_field.clone(),
                destination: None,
            });
            requests.push(Request::UnwrapBatch {
                key: key_field,
                items: vec![UnwrapItem {
                    ciphertext: Ciphertext::new(blob.clone()),
                    context: ctx.clone(),
                }],
            });
        }
        for destination in [key, other] {
            requests.push(Request::Rewrap {
                ciphertext: Ciphertext::new(blob.clone()),
                context: ctx.clone(),
                key: None,
                destination: Some(RewrapDestination {
                    key: Some(destination.to_string()),
                    context: Some(EncryptionContext::new()),
                }),
            });
        }
    }
    let mut frames: Vec<Vec<u8>> = requests
        .into_iter()
        .enumerate()
        .map(|(i, op)| frame(i as u64 + 1, op))
        .collect();
    for name in SPEC_REQUESTS {
        frames.extend(spec_frame(name));
    }
    frames.retain(|f| !f.is_empty());
    frames
}

/// A valid response of every type, and the specification's example.
pub fn response_frames() -> Vec<Vec<u8>> {
    let info = KeyInfo {
        id: [7; 16],
        name: "app-db".to_string(),
        created: 1_700_000_000,
        state: KeyState::Enabled,
        latest_version: 2,
        min_decryption_version: 1,
        versions: vec![
            VersionInfo {
                version: 1,
                created: 1_700_000_000,
                state: VersionState::Revoked,
                encryptions: 12,
            },
            VersionInfo {
                version: 2,
                created: 1_700_000_100,
                state: VersionState::Enabled,
                encryptions: 3,
            },
        ],
        key_type: agent_proto::KeyType::Aes256Gcm,
        description: "the app's database".to_string(),
        tags: [("team".to_string(), "db".to_string())]
            .into_iter()
            .collect(),
        rotation_period: Some(90 * 86_400),
        next_rotation: Some(1_700_000_100 + 90 * 86_400),
        deletion_date: None,
    };
    let pending = info.clone();
    let change = || PcrChange {
        pcr: 7,
        sealed: vec![0xa7; 32],
        current: vec![0xb7; 32],
    };
    let sealing = || Sealing {
        pcrs: vec![7],
        pin: true,
        pcr_values: vec![PcrValue {
            pcr: 7,
            sha256: vec![0xa7; 32],
        }],
    };
    let responses = vec![
        Response::Pong,
        Response::Status(StatusInfo {
            daemon_version: "0.1.0".to_string(),
            oldest_protocol: 1,
            newest_protocol: 2,
            uptime_secs: 42,
            tpm_reachable: true,
            root_key_loaded: true,
            root_key_check: "0011223344556677".to_string(),
            counters: [("requests".to_string(), 9u64), ("keys".to_string(), 1)]
                .into_iter()
                .collect(),
            recovery: Default::default(),
            rollback: Default::default(),
            sealing: SealingStatus {
                lock: LockState::PcrMismatch {
                    changed: vec![change()],
                },
                mode: sealing(),
            },
        }),
        Response::Key(info.clone()),
        Response::Keys(KeyPage {
            keys: vec![info.clone(), info.clone()],
            next: Some("app-db".to_string()),
        }),
        Response::Wrapped(Wrapped {
            key: "app-db".to_string(),
            version: 1,
            ciphertext: Ciphertext::new(vec![0x48; 58]),
        }),
        Response::Unwrapped(Unwrapped {
            key: "app-db".to_string(),
            version: 1,
            plaintext: SecretBytes::new(b"hello".to_vec()),
        }),
        Response::DataKey(DataKey {
            key: "app-db".to_string(),
            version: 1,
            plaintext: Some(SecretBytes::new(vec![9; 32])),
            ciphertext: Ciphertext::new(vec![0x48; 85]),
        }),
        Response::error(ErrorCode::PermissionDenied, "permission denied"),
        Response::error(ErrorCode::WrongKeyType, "an ed25519 key does not wrap"),
        Response::RootRotated(agent_proto::RootRotation {
            old_check: "0011223344556677".to_string(),
            new_check: "8899aabbccddeeff".to_string(),
            keys: 3,
            versions: 4,
        }),
        Response::TransportKey(agent_proto::TransportKeyInfo {
            recipient: "age1transport".to_string(),
            fingerprint: "0123456789abcdef".to_string(),
        }),
        Response::Exported(agent_proto::ExportedFile {
            key: "app-db".to_string(),
            destination: "replica".to_string(),
            file: b"age-encryption.org/v1\n".to_vec(),
        }),
        Response::Mac(MacTag {
            key: "hooks".to_string(),
            version: 1,
            tag: vec![0x5a; 32],
        }),
        Response::Verified(Verification {
            key: "rel".to_string(),
            valid: true,
            version: Some(1),
        }),
        Response::Signature(Signature {
            key: "rel".to_string(),
            version: 1,
            signature: vec![0x77; 64],
        }),
        Response::PublicKey(PublicKeyInfo {
            key: "rel".to_string(),
            version: 1,
            key_type: KeyType::Ed25519,
            revoked: true,
            spki_der: vec![0x30, 0x2a],
        }),
        Response::Random(SecretBytes::new(vec![0x42; 32])),
        Response::Key(KeyInfo {
            state: KeyState::PendingDeletion,
            deletion_date: Some(1_700_000_000 + 30 * 86_400),
            ..pending
        }),
        Response::error(
            ErrorCode::KeyPendingDeletion,
            "key \"app-db\" is scheduled for deletion",
        ),
        Response::WrappedBatch(vec![
            Ok(Wrapped {
                key: "app-db".to_string(),
                version: 1,
                ciphertext: Ciphertext::new(vec![0x48; 54]),
            }),
            Err(agent_proto::ErrorReply {
                code: ErrorCode::PlaintextTooLarge,
                message: "item 1 is too large".to_string(),
            }),
        ]),
        Response::UnwrappedBatch(vec![
            Ok(Unwrapped {
                key: "app-db".to_string(),
                version: 1,
                plaintext: SecretBytes::new(b"a".to_vec()),
            }),
            Err(agent_proto::ErrorReply {
                code: ErrorCode::InvalidCiphertext,
                message: "item 1 does not authenticate".to_string(),
            }),
        ]),
        Response::Unlocked(UnlockInfo {
            root_key_check: "0011223344556677".to_string(),
            resealed: false,
            changed_pcrs: vec![change()],
        }),
        Response::Resealed(ResealInfo {
            dry_run: true,
            before: Sealing::default(),
            after: sealing(),
        }),
        Response::error(
            ErrorCode::Locked,
            "the daemon is locked: run hostkms unlock",
        ),
        Response::error(
            ErrorCode::WrongPin,
            "wrong PIN: the TPM allows 2 more tries",
        ),
    ];
    let mut frames: Vec<Vec<u8>> = responses
        .into_iter()
        .enumerate()
        .map(|(i, op)| frame(i as u64 + 1, op))
        .collect();
    for name in SPEC_RESPONSES {
        frames.extend(spec_frame(name));
    }
    frames.retain(|f| !f.is_empty());
    frames
}

impl Corpus {
    /// Seeds for a peer granted `key` but not `other`.
    pub fn new(key: &str, other: &str, ciphertexts: &[Vec<u8>]) -> Corpus {
        Corpus {
            requests: request_frames(key, other, ciphertexts),
            responses: response_frames(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_examples_are_found_and_decode() {
        let request = spec_frame("request-frame").expect("request example");
        assert_eq!(request.len(), 4 + 75);
        let env = agent_proto::codec::decode_request(&request[4..]).unwrap();
        assert_eq!(env.id, 7);
        let response = spec_frame("response-frame").expect("response example");
        assert_eq!(response.len(), 4 + 98);
        let env = agent_proto::codec::decode_response(&response[4..]).unwrap();
        assert_eq!(env.id, 7);
    }

    #[test]
    fn every_request_type_has_a_valid_seed() {
        let frames = request_frames("fuzz", "other", &[]);
        let mut seen = std::collections::BTreeSet::new();
        for f in &frames {
            let env = agent_proto::codec::decode_request(&f[4..]).unwrap();
            seen.insert(env.op.operation());
        }
        assert_eq!(seen.len(), agent_proto::Operation::ALL.len());
        let kinds: std::collections::BTreeSet<&str> = response_frames()
            .iter()
            .map(|f| {
                agent_proto::codec::decode_response(&f[4..])
                    .unwrap()
                    .op
                    .kind()
            })
            .collect();
        assert_eq!(kinds.len(), 20, "a seed of every response kind: {kinds:?}");
    }

    #[test]
    fn every_specification_example_is_a_seed() {
        for name in SPEC_REQUESTS {
            let frame = spec_frame(name).unwrap_or_else(|| panic!("no {name} in the spec"));
            agent_proto::codec::decode_request(&frame[4..]).unwrap();
        }
        for name in SPEC_RESPONSES {
            let frame = spec_frame(name).unwrap_or_else(|| panic!("no {name} in the spec"));
            agent_proto::codec::decode_response(&frame[4..]).unwrap();
        }
        let spec = include_str!("../../agent-proto/README.md");
        let examples = spec.matches("-frame -->").count();
        assert_eq!(
            examples,
            2 * (SPEC_REQUESTS.len() + SPEC_RESPONSES.len()),
            "an example frame of the spec is not a seed"
        );
    }
}
