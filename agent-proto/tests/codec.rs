//! Round trips of every message, the error paths of the decoder, and the
//! README's example frames checked byte for byte.

mod samples;

use std::io::Cursor;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{
    Ciphertext, DecodeError, Envelope, ErrorCode, FrameError, KeyInfo, KeyPage, KeyState,
    PROTOCOL_VERSION, Request, Response, SecretBytes, VersionInfo, VersionState, Wrapped, v1, v2,
    v3, v4,
};

fn round_trip<T>(op: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
{
    let envelope = Envelope::new(42, op);
    let frame = codec::encode_frame(&envelope, DEFAULT_MAX_FRAME).expect("encode");
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - LENGTH_PREFIX, "length prefix");
    let body = codec::read_frame(&mut Cursor::new(&frame[..]), DEFAULT_MAX_FRAME)
        .expect("read")
        .expect("one frame");
    let decoded: Envelope<T> = codec::decode_body(&body).expect("decode");
    assert_eq!(decoded, envelope);
}

#[test]
fn every_request_round_trips() {
    for request in samples::requests() {
        round_trip(request);
    }
}

#[test]
fn every_response_round_trips() {
    for response in samples::responses() {
        round_trip(response);
    }
}

#[test]
fn every_error_code_keeps_its_number() {
    for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(code.number()), i + 1, "{code:?} renumbered");
        assert_eq!(ErrorCode::from_number(code.number()), code);
        round_trip(Response::error(code, "x"));
    }
    assert_eq!(ErrorCode::from_number(999), ErrorCode::Unrecognized(999));
    round_trip(Response::error(
        ErrorCode::Unrecognized(999),
        "from a newer daemon",
    ));
}

fn body_of(frame: &[u8]) -> Vec<u8> {
    frame[LENGTH_PREFIX..].to_vec()
}

#[test]
fn oversized_length_is_refused_before_reading_the_body() {
    let mut frame = (DEFAULT_MAX_FRAME + 1).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 16]);
    let err = codec::read_frame(&mut Cursor::new(frame), DEFAULT_MAX_FRAME).unwrap_err();
    match err {
        FrameError::Decode(e @ DecodeError::FrameTooLarge { .. }) => {
            assert_eq!(e.code(), ErrorCode::FrameTooLarge)
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[test]
fn truncated_frames_are_reported_as_truncated() {
    let frame = codec::encode_frame(&Envelope::new(1, Request::Status), DEFAULT_MAX_FRAME).unwrap();
    for cut in 1..frame.len() {
        let err = codec::read_frame(&mut Cursor::new(&frame[..cut]), DEFAULT_MAX_FRAME)
            .expect_err("a cut frame must not decode");
        assert!(
            matches!(err, FrameError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    let nothing = codec::read_frame(&mut Cursor::new(&[][..]), DEFAULT_MAX_FRAME).unwrap();
    assert!(
        nothing.is_none(),
        "a clean end between frames is not an error"
    );
}

#[test]
fn truncated_and_padded_bodies_are_bad_requests_that_keep_the_id() {
    let request = Request::Wrap {
        key: "k".into(),
        plaintext: SecretBytes::from(&b"abc"[..]),
        context: samples::context(),
    };
    let body =
        body_of(&codec::encode_frame(&Envelope::new(77, request), DEFAULT_MAX_FRAME).unwrap());
    for cut in 0..body.len() {
        let err = codec::decode_body::<Request>(&body[..cut]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest, "cut at {cut}");
        if cut >= 10 {
            assert_eq!(err.request_id(), Some(77));
        }
    }
    let mut padded = body.clone();
    padded.push(0);
    let err = codec::decode_body::<Request>(&padded).unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::BadRequest,
        "trailing bytes must be rejected"
    );
}

#[test]
fn unknown_protocol_version_names_the_supported_range() {
    let mut envelope = Envelope::new(5, Request::Ping);
    envelope.proto = PROTOCOL_VERSION + 1;
    let body = body_of(&codec::encode_frame(&envelope, DEFAULT_MAX_FRAME).unwrap());
    let err = codec::decode_body::<Request>(&body).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    assert_eq!(err.request_id(), Some(5));
    let message = err.to_string();
    let newer = PROTOCOL_VERSION + 1;
    assert!(
        message.contains(&format!("version {newer} is not supported")),
        "{message}"
    );
    assert!(
        message.contains(&format!("versions 1 to {PROTOCOL_VERSION}")),
        "{message}"
    );
}

#[test]
fn unknown_request_variant_is_a_bad_request() {
    let mut body =
        body_of(&codec::encode_frame(&Envelope::new(9, Request::Ping), DEFAULT_MAX_FRAME).unwrap());
    body[10..14].copy_from_slice(&1000u32.to_le_bytes());
    let err = codec::decode_body::<Request>(&body).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert_eq!(err.request_id(), Some(9));
}

#[test]
fn encoding_refuses_a_message_over_the_limit() {
    let request = Request::Wrap {
        key: "k".into(),
        plaintext: SecretBytes::new(vec![0u8; 2048]),
        context: Default::default(),
    };
    let err = codec::encode_frame(&Envelope::new(1, request), 1024).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the frame limit of 1024"),
        "{err}"
    );
}

#[test]
fn a_message_over_the_limit_reports_its_real_encoded_length() {
    let envelope = Envelope::new(
        1,
        Request::Wrap {
            key: "k".into(),
            plaintext: SecretBytes::new(vec![0u8; 2048]),
            context: Default::default(),
        },
    );
    let frame = codec::encode_frame(&envelope, DEFAULT_MAX_FRAME).expect("fits 1 MiB");
    let real = (frame.len() - LENGTH_PREFIX) as u64;
    let err = codec::encode_frame(&envelope, 1024).unwrap_err();
    assert!(
        matches!(err, agent_proto::EncodeError::TooLarge { len, max: 1024 } if len == real),
        "wanted TooLarge {{ len: {real}, max: 1024 }}, got {err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("message of {real} bytes exceeds")),
        "{err}"
    );
}

#[test]
fn secrets_and_ciphertexts_never_print_their_bytes() {
    let request = Request::Wrap {
        key: "k".into(),
        plaintext: SecretBytes::from(&b"topsecret"[..]),
        context: Default::default(),
    };
    let printed = format!("{request:?}");
    assert!(
        !printed.contains("topsecret") && !printed.contains("116, 111, 112"),
        "{printed}"
    );
    assert!(printed.contains("9 bytes redacted"), "{printed}");
    let printed = format!("{:?}", Ciphertext::from(&b"HKMS-body"[..]));
    assert_eq!(printed, "Ciphertext(<9 bytes>)");
}

/// Pulls the hex between `<!-- NAME -->` and `<!-- /NAME -->` out of the README.
fn readme_hex(name: &str) -> Vec<u8> {
    let readme = include_str!("../README.md");
    let open = format!("<!-- {name} -->");
    let close = format!("<!-- /{name} -->");
    let start = readme
        .find(&open)
        .unwrap_or_else(|| panic!("README lacks {open}"))
        + open.len();
    let end = readme[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("README lacks {close}"))
        + start;
    let digits: String = readme[start..end]
        .lines()
        .filter(|line| !line.starts_with("```"))
        .flat_map(|line| line.split('#').next().unwrap_or("").chars())
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The README's example request, a version-1 frame, built with the library.
pub fn readme_request() -> Envelope<Request> {
    let mut context = agent_proto::EncryptionContext::new();
    context.insert("table".into(), "users".into());
    Envelope {
        proto: v1::VERSION,
        id: 7,
        op: Request::Wrap {
            key: "app-db".into(),
            plaintext: SecretBytes::from(&b"hello"[..]),
            context,
        },
    }
}

/// The README's example response, built with the library.
pub fn readme_response() -> Envelope<Response> {
    let mut ciphertext = b"HKMS\x01".to_vec();
    ciphertext.extend_from_slice(&[0x11; 16]); // key id
    ciphertext.extend_from_slice(&1u32.to_be_bytes()); // version
    ciphertext.extend_from_slice(&[0x22; 12]); // nonce
    ciphertext.extend_from_slice(&[0x33; 5]); // encrypted "hello"
    ciphertext.extend_from_slice(&[0x44; 16]); // tag
    Envelope {
        proto: v1::VERSION,
        id: 7,
        op: Response::Wrapped(Wrapped {
            key: "app-db".into(),
            version: 1,
            ciphertext: Ciphertext::new(ciphertext),
        }),
    }
}

#[test]
fn readme_request_frame_is_what_the_code_produces() {
    let frame = codec::encode_request(readme_request(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(frame.as_slice(), readme_hex("request-frame").as_slice());
}

#[test]
fn readme_response_frame_is_what_the_code_produces() {
    let frame = codec::encode_response(readme_response(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(frame.as_slice(), readme_hex("response-frame").as_slice());
}

#[test]
fn readme_v1_list_request_frame_is_the_frozen_v1_encoding() {
    let envelope = Envelope {
        proto: v1::VERSION,
        id: 8,
        op: v1::Request::ListKeys,
    };
    let frame = codec::encode_frame(&envelope, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        frame.as_slice(),
        readme_hex("v1-list-request-frame").as_slice()
    );
    // The current library sends the same bytes for the same request in version 1.
    let now = Envelope {
        proto: v1::VERSION,
        id: 8,
        op: Request::ListKeys {
            after: None,
            limit: None,
        },
    };
    let frame = codec::encode_request(now.clone(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        frame.as_slice(),
        readme_hex("v1-list-request-frame").as_slice()
    );
    let decoded = codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap();
    assert_eq!(decoded, now);
}

/// The README's version-2 `ListKeys` request and its answer, built with the library.
fn readme_v2_list() -> (Envelope<Request>, Envelope<Response>) {
    let request = Envelope {
        proto: v2::VERSION,
        id: 9,
        op: Request::ListKeys {
            after: Some("app-db".into()),
            limit: Some(1),
        },
    };
    let page = KeyPage {
        keys: vec![KeyInfo {
            id: [0x55; 16],
            name: "app-dc".into(),
            created: 1_764_000_000,
            state: KeyState::Enabled,
            latest_version: 1,
            min_decryption_version: 1,
            versions: vec![VersionInfo {
                version: 1,
                created: 1_764_000_000,
                state: VersionState::Enabled,
                encryptions: 3,
            }],
            key_type: agent_proto::KeyType::Aes256Gcm,
            description: String::new(),
            tags: Default::default(),
            rotation_period: None,
            next_rotation: None,
            deletion_date: None,
        }],
        next: Some("app-dc".into()),
    };
    let response = Envelope {
        proto: v2::VERSION,
        id: 9,
        op: Response::Keys(page),
    };
    (request, response)
}

/// The README's version-3 `Status` answer, built with the library.
fn readme_v3_status() -> Envelope<Response> {
    Envelope {
        proto: v3::VERSION,
        id: 10,
        op: Response::Status(agent_proto::StatusInfo {
            daemon_version: "0.1.0".into(),
            oldest_protocol: 1,
            newest_protocol: 3,
            uptime_secs: 5,
            tpm_reachable: true,
            root_key_loaded: true,
            root_key_check: "0011223344556677".into(),
            counters: Default::default(),
            recovery: agent_proto::RecoveryStatus {
                configured: true,
                dir: "/r".into(),
                custodians: 3,
                threshold: 2,
                bundle_recipient: "age1b".into(),
                current: true,
                problem: String::new(),
            },
            rollback: agent_proto::RollbackStatus {
                bound: true,
                nv_index: 0x0100_4b00,
                store_counter: 2,
                pending_increments: 0,
                problem: String::new(),
            },
            sealing: Default::default(),
        }),
    }
}

#[test]
fn readme_v3_status_frame_is_what_the_code_produces() {
    let response = readme_v3_status();
    let frame = codec::encode_response(response.clone(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        frame.as_slice(),
        readme_hex("v3-status-response-frame").as_slice()
    );
    assert_eq!(
        codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap(),
        response
    );
}

#[test]
fn a_version_3_status_answered_in_version_2_drops_only_the_new_fields() {
    let mut response = readme_v3_status();
    response.proto = v2::VERSION;
    let frame = codec::encode_response(response.clone(), DEFAULT_MAX_FRAME).unwrap();
    let old: Envelope<v2::Response> = codec::decode_body(&frame[LENGTH_PREFIX..]).unwrap();
    let v2::Response::Status(old) = old.op else {
        panic!("not a status: {old:?}");
    };
    assert_eq!(old.root_key_check, "0011223344556677");
    assert_eq!(old.newest_protocol, 3);
    // Read back by a current client, a version-2 status says recovery is
    // unknown to the daemon rather than pretending it is configured.
    let Response::Status(now) = codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap().op else {
        panic!("not a status");
    };
    assert!(!now.recovery.configured);
    assert!(
        now.recovery.problem.contains("upgrade hostkmsd"),
        "{:?}",
        now.recovery
    );
    assert!(!now.rollback.bound);
}

#[test]
fn requests_appended_in_version_3_are_unknown_to_versions_1_and_2() {
    for proto in [v1::VERSION, v2::VERSION] {
        for op in [Request::RotateRoot { pin: None }, Request::TransportKey] {
            let err = codec::encode_request(Envelope { proto, id: 5, op }, DEFAULT_MAX_FRAME)
                .unwrap_err();
            assert!(
                matches!(err, agent_proto::EncodeError::NotInVersion { .. }),
                "{err}"
            );
        }
        let err = codec::encode_response(
            Envelope {
                proto,
                id: 5,
                op: Response::TransportKey(agent_proto::TransportKeyInfo {
                    recipient: "age1x".into(),
                    fingerprint: "00".into(),
                }),
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap_err();
        assert!(
            matches!(err, agent_proto::EncodeError::NotInVersion { .. }),
            "{err}"
        );
    }
}

#[test]
fn readme_v2_list_frames_are_what_the_code_produces() {
    let (request, response) = readme_v2_list();
    let frame = codec::encode_request(request.clone(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        frame.as_slice(),
        readme_hex("v2-list-request-frame").as_slice()
    );
    assert_eq!(
        codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap(),
        request
    );
    let frame = codec::encode_response(response.clone(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        frame.as_slice(),
        readme_hex("v2-list-response-frame").as_slice()
    );
    assert_eq!(
        codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap(),
        response
    );
}

#[test]
fn readme_v1_frames_decode_with_the_versioned_decoders() {
    let request = readme_hex("request-frame");
    let decoded = codec::decode_request(&request[LENGTH_PREFIX..]).unwrap();
    assert_eq!(decoded.proto, 1);
    assert_eq!(decoded.op, readme_request().op);
    let response = readme_hex("response-frame");
    let decoded = codec::decode_response(&response[LENGTH_PREFIX..]).unwrap();
    assert_eq!(decoded.proto, 1);
    assert_eq!(decoded.op, readme_response().op);
}

#[test]
fn a_request_variant_unknown_in_its_version_says_what_to_do() {
    for (proto, known) in [
        (1u16, v1::REQUEST_VARIANTS),
        (2, v2::REQUEST_VARIANTS),
        (3, v3::REQUEST_VARIANTS),
        (4, v4::REQUEST_VARIANTS),
        (5, agent_proto::v5::REQUEST_VARIANTS),
        (6, Request::VARIANTS),
    ] {
        let mut body = body_of(
            &codec::encode_frame(
                &Envelope {
                    proto,
                    id: 11,
                    op: Request::Ping,
                },
                DEFAULT_MAX_FRAME,
            )
            .unwrap(),
        );
        body[10..14].copy_from_slice(&known.to_le_bytes());
        let err = codec::decode_request(&body).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
        assert_eq!(err.request_id(), Some(11));
        let message = err.to_string();
        assert!(
            message.starts_with(agent_proto::UNKNOWN_REQUEST),
            "{message}"
        );
        if proto < PROTOCOL_VERSION {
            // Every older version is frozen, so a variant past its end that
            // a later version has is a mislabelled frame, not a newer peer.
            assert!(
                message.contains(&format!("send it as version {PROTOCOL_VERSION}")),
                "{message}"
            );
        } else {
            assert!(message.contains("upgrade hostkmsd"), "{message}");
        }
        // The last known variant still decodes as far as its (absent) fields.
        body[10..14].copy_from_slice(&(known - 1).to_le_bytes());
        let err = codec::decode_request(&body).unwrap_err();
        assert!(
            !err.to_string().contains(agent_proto::UNKNOWN_REQUEST),
            "{err}"
        );
    }
}

#[test]
fn a_version_1_daemon_names_an_unknown_variant_in_bincode_words() {
    // What today's protocol-1 daemons answer (they decode the frozen v1
    // enum with bincode 1.3.3): the client's "daemon too old" detection
    // depends on this text.
    let mut body = body_of(
        &codec::encode_frame(
            &Envelope {
                proto: 1,
                id: 3,
                op: v1::Request::Ping,
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap(),
    );
    body[10..14].copy_from_slice(&14u32.to_le_bytes());
    let err = codec::decode_body::<v1::Request>(&body).unwrap_err();
    assert!(err.to_string().contains("expected variant index"), "{err}");
}

#[test]
fn a_page_version_1_cannot_carry_is_refused_not_cut() {
    let (request, response) = readme_v2_list();
    let err = codec::encode_request(
        Envelope {
            proto: 1,
            ..request
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap_err();
    assert!(
        matches!(err, agent_proto::EncodeError::NotInVersion { proto: 1, .. }),
        "{err}"
    );
    let err = codec::encode_response(
        Envelope {
            proto: 1,
            ..response
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap_err();
    assert!(
        matches!(err, agent_proto::EncodeError::NotInVersion { proto: 1, .. }),
        "{err}"
    );
    // The last page (no `next`) is every key: version 1 carries it.
    let all = Envelope {
        proto: 1,
        id: 4,
        op: Response::Keys(KeyPage {
            keys: Vec::new(),
            next: None,
        }),
    };
    let frame = codec::encode_response(all.clone(), DEFAULT_MAX_FRAME).unwrap();
    let old: Envelope<v1::Response> = codec::decode_body(&frame[LENGTH_PREFIX..]).unwrap();
    assert_eq!(old.op, v1::Response::Keys(Vec::new()));
    assert_eq!(
        codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap(),
        all
    );
}

/// The README's version-4 example frames, each built with the frozen
/// version-4 shapes (`agent_proto::v4`), by the name of its hex block.
fn readme_v4_frames() -> Vec<(&'static str, V4Frame)> {
    use agent_proto::{KeyType, SignInput, Signature, Verification};
    fn req(id: u64, op: v4::Request) -> V4Frame {
        V4Frame::Request(Envelope { proto: 4, id, op })
    }
    fn resp(id: u64, op: v4::Response) -> V4Frame {
        V4Frame::Response(Envelope { proto: 4, id, op })
    }
    vec![
        (
            "v4-create-key-request-frame",
            req(
                12,
                v4::Request::CreateKey {
                    name: "rel".into(),
                    key_type: KeyType::Ed25519,
                },
            ),
        ),
        (
            "v4-create-key-response-frame",
            resp(12, v4::Response::Key(readme_v4_key().into())),
        ),
        (
            "v4-mac-request-frame",
            req(
                13,
                v4::Request::Mac {
                    key: "hooks".into(),
                    data: SecretBytes::from(&b"hi"[..]),
                },
            ),
        ),
        (
            "v4-verify-mac-request-frame",
            req(
                14,
                v4::Request::VerifyMac {
                    key: "hooks".into(),
                    data: SecretBytes::from(&b"hi"[..]),
                    tag: vec![0xaa; 32],
                    version: Some(1),
                },
            ),
        ),
        (
            "v4-sign-request-frame",
            req(
                15,
                v4::Request::Sign {
                    key: "rel".into(),
                    input: SignInput::Message(SecretBytes::from(&b"hi\n"[..])),
                },
            ),
        ),
        (
            "v4-signature-response-frame",
            resp(
                15,
                v4::Response::Signature(Signature {
                    key: "rel".into(),
                    version: 1,
                    signature: vec![0x77; 64],
                }),
            ),
        ),
        (
            "v4-verify-request-frame",
            req(
                16,
                v4::Request::Verify {
                    key: "p256".into(),
                    input: SignInput::Digest(vec![0x11; 32]),
                    signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
                    version: None,
                },
            ),
        ),
        (
            "v4-verified-response-frame",
            resp(
                16,
                v4::Response::Verified(Verification {
                    key: "p256".into(),
                    valid: false,
                    version: None,
                }),
            ),
        ),
        (
            "v4-public-key-request-frame",
            req(
                17,
                v4::Request::GetPublicKey {
                    key: "rel".into(),
                    version: Some(2),
                },
            ),
        ),
        (
            "v4-random-request-frame",
            req(18, v4::Request::GenerateRandom { bytes: 32 }),
        ),
    ]
}

/// A version-4 request or response, for the table of README frames.
enum V4Frame {
    Request(Envelope<v4::Request>),
    Response(Envelope<v4::Response>),
}

/// The key of the README's version-4 `CreateKey` answer.
fn readme_v4_key() -> KeyInfo {
    KeyInfo {
        id: [0x66; 16],
        name: "rel".into(),
        created: 1_764_000_000,
        state: KeyState::Enabled,
        latest_version: 1,
        min_decryption_version: 1,
        versions: vec![VersionInfo {
            version: 1,
            created: 1_764_000_000,
            state: VersionState::Enabled,
            encryptions: 0,
        }],
        key_type: agent_proto::KeyType::Ed25519,
        description: String::new(),
        tags: Default::default(),
        rotation_period: None,
        next_rotation: None,
        deletion_date: None,
    }
}

#[test]
fn readme_v4_frames_are_the_frozen_version_4_encoding() {
    let frames = readme_v4_frames();
    assert_eq!(frames.len(), 10, "one README frame per example");
    for (name, frame) in frames {
        let expected = readme_hex(name);
        match frame {
            V4Frame::Request(old) => {
                // The frozen shape encodes to the README's bytes...
                let bytes = codec::encode_frame(&old, DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                // ...and so does today's library speaking version 4, which
                // reads them back as the same request.
                let now = Envelope {
                    proto: 4,
                    id: old.id,
                    op: Request::from(old.op),
                };
                let bytes = codec::encode_request(now.clone(), DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let back = codec::decode_request(&bytes[LENGTH_PREFIX..]).unwrap();
                assert_eq!(back, now, "{name}");
            }
            V4Frame::Response(old) => {
                let bytes = codec::encode_frame(&old, DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let now = Envelope {
                    proto: 4,
                    id: old.id,
                    op: Response::from(old.op),
                };
                let bytes = codec::encode_response(now.clone(), DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let back = codec::decode_response(&bytes[LENGTH_PREFIX..]).unwrap();
                assert_eq!(back, now, "{name}");
            }
        }
    }
}

#[test]
fn every_new_request_of_version_4_has_a_readme_frame() {
    let shown: Vec<agent_proto::Operation> = readme_v4_frames()
        .into_iter()
        .filter_map(|(_, frame)| match frame {
            V4Frame::Request(request) => Some(request.op.operation()),
            V4Frame::Response(_) => None,
        })
        .collect();
    for request in samples::requests() {
        let op = request.operation();
        let new_in_v4 = (op >= agent_proto::Operation::Mac
            && !samples::appended_in_v5(op)
            && !samples::appended_in_v6(op))
            || op == agent_proto::Operation::Create;
        if new_in_v4 {
            assert!(
                shown.contains(&request.operation()),
                "the README shows no {} frame",
                request.operation()
            );
        }
    }
}

#[test]
fn the_readme_v4_key_answered_in_version_3_is_the_version_3_key_without_its_type() {
    let answer = Envelope {
        proto: v3::VERSION,
        id: 12,
        op: Response::Key(readme_v4_key()),
    };
    let frame = codec::encode_response(answer, DEFAULT_MAX_FRAME).unwrap();
    let v4 = readme_hex("v4-create-key-response-frame");
    // The same bytes but the proto, the length and the trailing key_type.
    assert_eq!(frame.len(), v4.len() - 4);
    assert_eq!(
        &frame[..4],
        &((v4.len() - 4 - LENGTH_PREFIX) as u32).to_be_bytes()
    );
    assert_eq!(&frame[4..6], &3u16.to_le_bytes());
    assert_eq!(&frame[6..], &v4[6..v4.len() - 4]);
    let old: Envelope<v3::Response> = codec::decode_body(&frame[LENGTH_PREFIX..]).unwrap();
    assert!(matches!(old.op, v3::Response::Key(ref key) if key.name == "rel"));
    let Response::Key(now) = codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap().op else {
        panic!("not a key");
    };
    assert_eq!(now.key_type, agent_proto::KeyType::Aes256Gcm);
}

#[test]
fn requests_appended_in_version_4_are_not_sent_in_versions_1_to_3() {
    for proto in [v1::VERSION, v2::VERSION, v3::VERSION] {
        for request in samples::requests() {
            let create_typed = matches!(
                &request,
                Request::CreateKey { key_type, .. } if *key_type != agent_proto::KeyType::Aes256Gcm
            );
            if request.operation() < agent_proto::Operation::Mac && !create_typed {
                continue;
            }
            let err = codec::encode_request(
                Envelope {
                    proto,
                    id: 5,
                    op: request.clone(),
                },
                DEFAULT_MAX_FRAME,
            )
            .unwrap_err();
            assert!(
                matches!(err, agent_proto::EncodeError::NotInVersion { proto: p, .. } if p == proto),
                "{err}"
            );
        }
        for response in samples::responses() {
            let appended = matches!(
                response,
                Response::Mac(_)
                    | Response::Verified(_)
                    | Response::Signature(_)
                    | Response::PublicKey(_)
                    | Response::Random(_)
                    | Response::WrappedBatch(_)
                    | Response::UnwrappedBatch(_)
                    | Response::Unlocked(_)
                    | Response::Resealed(_)
            );
            let sent = codec::encode_response(
                Envelope {
                    proto,
                    id: 5,
                    op: response.clone(),
                },
                DEFAULT_MAX_FRAME,
            );
            if appended {
                assert!(sent.is_err(), "{response:?} went out in version {proto}");
            } else if proto == v3::VERSION {
                assert!(sent.is_ok(), "{response:?} did not go out in version 3");
            }
        }
    }
}

#[test]
fn a_typed_create_key_cannot_go_to_an_older_version_and_says_which_type() {
    for key_type in agent_proto::KeyType::ALL {
        for proto in [v1::VERSION, v2::VERSION, v3::VERSION] {
            let sent = codec::encode_request(
                Envelope {
                    proto,
                    id: 6,
                    op: Request::CreateKey {
                        name: "k".into(),
                        key_type,
                        settings: Default::default(),
                    },
                },
                DEFAULT_MAX_FRAME,
            );
            match (key_type, sent) {
                (agent_proto::KeyType::Aes256Gcm, sent) => {
                    let frame = sent.expect("an AES key goes to every version");
                    let back = codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap();
                    assert_eq!(back.proto, proto);
                }
                (_, Ok(_)) => panic!("a {key_type} key went out in version {proto}"),
                (_, Err(err)) => {
                    let message = err.to_string();
                    assert!(message.contains(key_type.as_str()), "{message}");
                    assert!(message.contains("aes256-gcm"), "{message}");
                }
            }
        }
    }
}

#[test]
fn wrong_key_type_goes_to_older_clients_as_code_18_with_its_message() {
    for proto in [v1::VERSION, v2::VERSION, v3::VERSION] {
        let refusal = Envelope {
            proto,
            id: 9,
            op: Response::error(
                ErrorCode::WrongKeyType,
                "key \"rel\" is an ed25519 key: it does sign, verify, public-key",
            ),
        };
        let frame = codec::encode_response(refusal, DEFAULT_MAX_FRAME).unwrap();
        let body = &frame[LENGTH_PREFIX..];
        // Response variant 7 (Error), then code 18 as u16: the shape every
        // version shares, which an older client reads as an unknown code.
        assert_eq!(&body[10..14], &7u32.to_le_bytes());
        assert_eq!(&body[14..16], &18u16.to_le_bytes());
        let Response::Error(reply) = codec::decode_response(body).unwrap().op else {
            panic!("not an error");
        };
        assert_eq!(reply.code, ErrorCode::WrongKeyType);
        assert!(reply.message.contains("ed25519"));
    }
}

/// A map with two entries whose encodings the canonical-map tests find
/// and rearrange in a frame.
fn two_entries() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("ctx-a".to_string(), "v1".to_string()),
        ("ctx-b".to_string(), "v2".to_string()),
    ])
}

/// The bincode encoding of one map entry.
fn entry(key: &str, value: &str) -> Vec<u8> {
    let mut bytes = (key.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

/// `body` with the (first) encoding of [`two_entries`] replaced by
/// `entries`, which must be as long.
fn rearranged(body: &[u8], entries: &[(&str, &str)]) -> Vec<u8> {
    let canonical = [entry("ctx-a", "v1"), entry("ctx-b", "v2")].concat();
    let replacement: Vec<u8> = entries.iter().flat_map(|(k, v)| entry(k, v)).collect();
    assert_eq!(canonical.len(), replacement.len());
    let at = body
        .windows(canonical.len())
        .position(|window| window == canonical.as_slice())
        .expect("the body holds the two entries");
    let mut patched = body.to_vec();
    patched[at..at + canonical.len()].copy_from_slice(&replacement);
    patched
}

/// One request of every kind that carries a map, each with
/// [`two_entries`] in one of its maps (every map of the request in turn).
fn requests_with_maps() -> Vec<(&'static str, Request)> {
    use agent_proto::{KeySettings, RewrapDestination, UnwrapItem, WrapItem};
    let ciphertext = || Ciphertext::from(&b"HKMS\x01opaque"[..]);
    vec![
        (
            "wrap context",
            Request::Wrap {
                key: "k".into(),
                plaintext: SecretBytes::from(&b"x"[..]),
                context: two_entries(),
            },
        ),
        (
            "unwrap context",
            Request::Unwrap {
                ciphertext: ciphertext(),
                context: two_entries(),
                key: Some("k".into()),
            },
        ),
        (
            "data key context",
            Request::GenerateDataKey {
                key: "k".into(),
                bytes: 32,
                include_plaintext: false,
                context: two_entries(),
            },
        ),
        (
            "rewrap context",
            Request::Rewrap {
                ciphertext: ciphertext(),
                context: two_entries(),
                key: None,
                destination: None,
            },
        ),
        (
            "rewrap destination context",
            Request::Rewrap {
                ciphertext: ciphertext(),
                context: Default::default(),
                key: None,
                destination: Some(RewrapDestination {
                    key: Some("other".into()),
                    context: Some(two_entries()),
                }),
            },
        ),
        (
            "wrap batch item context",
            Request::WrapBatch {
                key: "k".into(),
                items: vec![
                    WrapItem {
                        plaintext: SecretBytes::from(&b"x"[..]),
                        context: Default::default(),
                    },
                    WrapItem {
                        plaintext: SecretBytes::from(&b"y"[..]),
                        context: two_entries(),
                    },
                ],
            },
        ),
        (
            "unwrap batch item context",
            Request::UnwrapBatch {
                key: None,
                items: vec![UnwrapItem {
                    ciphertext: ciphertext(),
                    context: two_entries(),
                }],
            },
        ),
        (
            "create key tags",
            Request::CreateKey {
                name: "k".into(),
                key_type: agent_proto::KeyType::Aes256Gcm,
                settings: KeySettings {
                    tags: two_entries(),
                    ..Default::default()
                },
            },
        ),
        (
            "metadata tags",
            Request::UpdateKeyMetadata {
                key: "k".into(),
                description: None,
                set_tags: two_entries(),
                remove_tags: Vec::new(),
            },
        ),
    ]
}

#[test]
fn a_map_out_of_order_or_with_a_repeated_key_is_a_bad_request_in_every_field() {
    for (what, request) in requests_with_maps() {
        let frame =
            codec::encode_request(Envelope::new(31, request.clone()), DEFAULT_MAX_FRAME).unwrap();
        let body = body_of(&frame);
        // The canonical body decodes to the request.
        assert_eq!(codec::decode_request(&body).unwrap().op, request, "{what}");
        for entries in [
            [("ctx-b", "v2"), ("ctx-a", "v1")], // out of order
            [("ctx-a", "v1"), ("ctx-a", "v2")], // "ctx-a" twice: the last would win
            [("ctx-b", "v1"), ("ctx-b", "v2")], // "ctx-b" twice
        ] {
            let patched = rearranged(&body, &entries);
            let err = codec::decode_request(&patched).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest, "{what} {entries:?}");
            assert_eq!(err.request_id(), Some(31), "{what}");
            assert!(
                matches!(err, DecodeError::NotCanonical { .. }),
                "{what} {entries:?}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("sorted by their UTF-8 bytes, each key once"),
                "{message}"
            );
        }
    }
}

#[test]
fn a_context_out_of_order_is_refused_in_every_protocol_version() {
    for proto in 1..=PROTOCOL_VERSION {
        let request = Envelope {
            proto,
            id: 32,
            op: Request::Wrap {
                key: "k".into(),
                plaintext: SecretBytes::from(&b"x"[..]),
                context: two_entries(),
            },
        };
        let frame = codec::encode_request(request.clone(), DEFAULT_MAX_FRAME).unwrap();
        let body = body_of(&frame);
        assert_eq!(codec::decode_request(&body).unwrap(), request);
        let patched = rearranged(&body, &[("ctx-a", "v1"), ("ctx-a", "v2")]);
        let err = codec::decode_request(&patched).unwrap_err();
        assert!(
            matches!(err, DecodeError::NotCanonical { id: Some(32), .. }),
            "version {proto}: {err:?}"
        );
        // The offset is the first byte where the body leaves the canonical
        // encoding of what it decoded to: the entry count, 2 where the one
        // key read makes 1.
        let DecodeError::NotCanonical { offset, .. } = err else {
            unreachable!()
        };
        assert_eq!(&patched[offset..offset + 8], &2u64.to_le_bytes());
        assert_eq!(&patched[offset + 8..offset + 16], &5u64.to_le_bytes());
    }
}

#[test]
fn a_sorted_context_is_sorted_by_bytes_not_by_characters() {
    // "Z" (0x5a) sorts before "a" (0x61), and "é" (0xc3 0xa9) after "z":
    // byte order of the UTF-8, which a client in another language must use.
    let context = agent_proto::EncryptionContext::from([
        ("a".to_string(), "1".to_string()),
        ("Z".to_string(), "2".to_string()),
        ("é".to_string(), "3".to_string()),
        ("z".to_string(), "4".to_string()),
    ]);
    let keys: Vec<&str> = context.keys().map(String::as_str).collect();
    assert_eq!(keys, ["Z", "a", "z", "é"]);
    let request = Envelope::new(
        33,
        Request::Wrap {
            key: "k".into(),
            plaintext: SecretBytes::from(&b"x"[..]),
            context,
        },
    );
    let frame = codec::encode_request(request.clone(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap(),
        request
    );
}

/// A made-up ciphertext of `len` plaintext bytes, laid out as the README's
/// examples show it.
fn readme_ciphertext(len: usize) -> Ciphertext {
    let mut bytes = b"HKMS\x01".to_vec();
    bytes.extend_from_slice(&[0x11; 16]);
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&[0x22; 12]);
    bytes.extend_from_slice(&vec![0x33; len]);
    bytes.extend_from_slice(&[0x44; 16]);
    Ciphertext::new(bytes)
}

/// A request or a response of the current version, for the table of
/// README frames.
enum Frame {
    Request(Envelope<Request>),
    Response(Envelope<Response>),
}

/// The key of the README's version-5 `ScheduleDeletion` answer.
fn readme_v5_key() -> KeyInfo {
    KeyInfo {
        id: [0x77; 16],
        name: "orders".into(),
        created: 1_764_000_000,
        state: KeyState::PendingDeletion,
        latest_version: 1,
        min_decryption_version: 1,
        versions: vec![VersionInfo {
            version: 1,
            created: 1_764_000_000,
            state: VersionState::Enabled,
            encryptions: 0,
        }],
        key_type: agent_proto::KeyType::Aes256Gcm,
        description: "orders db".into(),
        tags: [("team".to_string(), "pay".to_string())].into(),
        rotation_period: Some(7_776_000),
        next_rotation: None,
        deletion_date: Some(1_766_592_000),
    }
}

/// The README's version-5 example frames, built with the library, by the
/// name of its hex block.
fn readme_v5_frames() -> Vec<(&'static str, Frame)> {
    use agent_proto::{
        ErrorReply, KeySettings, RewrapDestination, RotationSetting, UnwrapItem, WrapItem,
    };
    fn req(id: u64, op: Request) -> Frame {
        Frame::Request(Envelope { proto: 5, id, op })
    }
    fn resp(id: u64, op: Response) -> Frame {
        Frame::Response(Envelope { proto: 5, id, op })
    }
    let orders = || "orders".to_string();
    vec![
        (
            "v5-create-key-request-frame",
            req(
                20,
                Request::CreateKey {
                    name: orders(),
                    key_type: agent_proto::KeyType::Aes256Gcm,
                    settings: KeySettings {
                        rotation: RotationSetting::Every(7_776_000),
                        description: "orders db".into(),
                        tags: [("team".to_string(), "pay".to_string())].into(),
                    },
                },
            ),
        ),
        (
            "v5-schedule-deletion-request-frame",
            req(
                21,
                Request::ScheduleDeletion {
                    key: orders(),
                    days: 30,
                },
            ),
        ),
        (
            "v5-key-response-frame",
            resp(21, Response::Key(readme_v5_key())),
        ),
        (
            "v5-cancel-deletion-request-frame",
            req(22, Request::CancelDeletion { key: orders() }),
        ),
        (
            "v5-set-rotation-period-request-frame",
            req(
                23,
                Request::SetRotationPeriod {
                    key: orders(),
                    period: Some(2_592_000),
                },
            ),
        ),
        (
            "v5-update-metadata-request-frame",
            req(
                24,
                Request::UpdateKeyMetadata {
                    key: orders(),
                    description: Some(String::new()),
                    set_tags: [("env".to_string(), "prod".to_string())].into(),
                    remove_tags: vec!["team".into()],
                },
            ),
        ),
        (
            "v5-rewrap-request-frame",
            req(
                25,
                Request::Rewrap {
                    ciphertext: readme_ciphertext(0),
                    context: [("table".to_string(), "users".to_string())].into(),
                    key: Some(orders()),
                    destination: Some(RewrapDestination {
                        key: Some("archive".into()),
                        context: Some(Default::default()),
                    }),
                },
            ),
        ),
        (
            "v5-wrap-batch-request-frame",
            req(
                26,
                Request::WrapBatch {
                    key: orders(),
                    items: vec![
                        WrapItem {
                            plaintext: SecretBytes::from(&b"a"[..]),
                            context: Default::default(),
                        },
                        WrapItem {
                            plaintext: SecretBytes::from(&b"b"[..]),
                            context: [("n".to_string(), "2".to_string())].into(),
                        },
                    ],
                },
            ),
        ),
        (
            "v5-wrapped-batch-response-frame",
            resp(
                26,
                Response::WrappedBatch(vec![
                    Ok(Wrapped {
                        key: orders(),
                        version: 1,
                        ciphertext: readme_ciphertext(1),
                    }),
                    Err(ErrorReply {
                        code: ErrorCode::PlaintextTooLarge,
                        message: "item 1 is too large".into(),
                    }),
                ]),
            ),
        ),
        (
            "v5-unwrap-batch-request-frame",
            req(
                27,
                Request::UnwrapBatch {
                    key: None,
                    items: vec![UnwrapItem {
                        ciphertext: readme_ciphertext(1),
                        context: Default::default(),
                    }],
                },
            ),
        ),
        (
            "v5-unwrapped-batch-response-frame",
            resp(
                27,
                Response::UnwrappedBatch(vec![Ok(agent_proto::Unwrapped {
                    key: orders(),
                    version: 1,
                    plaintext: SecretBytes::from(&b"a"[..]),
                })]),
            ),
        ),
        (
            "v5-pending-deletion-error-frame",
            resp(
                28,
                Response::error(
                    ErrorCode::KeyPendingDeletion,
                    "key \"orders\" is scheduled for deletion",
                ),
            ),
        ),
        (
            "v5-wrap-credential-request-frame",
            req(
                29,
                Request::WrapCredential {
                    key: orders(),
                    unit: "postgresql.service".into(),
                    credential: "dbpass".into(),
                    plaintext: SecretBytes::from(&b"s3cret"[..]),
                },
            ),
        ),
    ]
}

#[test]
fn readme_v5_frames_are_what_the_code_produces() {
    let frames = readme_v5_frames();
    assert_eq!(frames.len(), 13, "one README frame per example");
    for (name, frame) in frames {
        let expected = readme_hex(name);
        match frame {
            Frame::Request(request) => {
                let bytes = codec::encode_request(request.clone(), DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let back = codec::decode_request(&bytes[LENGTH_PREFIX..]).unwrap();
                assert_eq!(back, request, "{name}");
            }
            Frame::Response(response) => {
                let bytes = codec::encode_response(response.clone(), DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let back = codec::decode_response(&bytes[LENGTH_PREFIX..]).unwrap();
                assert_eq!(back, response, "{name}");
            }
        }
    }
}

#[test]
fn every_request_new_or_changed_in_version_5_has_a_readme_frame() {
    let shown: Vec<Request> = readme_v5_frames()
        .into_iter()
        .filter_map(|(_, frame)| match frame {
            Frame::Request(request) => Some(request.op),
            Frame::Response(_) => None,
        })
        .collect();
    for request in samples::requests() {
        if samples::appended_in_v5(request.operation()) {
            assert!(
                shown.iter().any(|r| r.operation() == request.operation()),
                "the README shows no {} frame",
                request.operation()
            );
        }
    }
    for changed in samples::v5_forms() {
        assert!(
            shown.iter().any(|r| {
                r.operation() == changed.operation() && v4::Request::try_from(r.clone()).is_err()
            }),
            "the README shows no version-5 form of {}",
            changed.operation()
        );
    }
}

#[test]
fn the_readme_v5_answers_to_a_version_4_client() {
    // The key pending deletion: disabled, without the fields of version 5.
    let answer = Envelope {
        proto: 4,
        id: 21,
        op: Response::Key(readme_v5_key()),
    };
    let frame = codec::encode_response(answer, DEFAULT_MAX_FRAME).unwrap();
    let old: Envelope<v4::Response> = codec::decode_body(&frame[LENGTH_PREFIX..]).unwrap();
    let v4::Response::Key(key) = old.op else {
        panic!("not a key: {old:?}");
    };
    assert_eq!(key.state, KeyState::Disabled);
    assert_eq!(key.name, "orders");
    // The refusal: code 9, KeyDisabled, with the daemon's message.
    let refusal = Envelope {
        proto: 4,
        id: 28,
        op: Response::error(
            ErrorCode::KeyPendingDeletion,
            "key \"orders\" is scheduled for deletion",
        ),
    };
    for proto in 1..=4 {
        let frame = codec::encode_response(
            Envelope {
                proto,
                ..refusal.clone()
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let body = &frame[LENGTH_PREFIX..];
        assert_eq!(&body[10..14], &7u32.to_le_bytes());
        assert_eq!(&body[14..16], &9u16.to_le_bytes(), "version {proto}");
    }
    let v5 = readme_hex("v5-pending-deletion-error-frame");
    assert_eq!(
        &v5[LENGTH_PREFIX + 14..LENGTH_PREFIX + 16],
        &19u16.to_le_bytes()
    );
}

/// The README's version-6 example frames, built with the library, by the
/// name of its hex block.
fn readme_v6_frames() -> Vec<(&'static str, Frame)> {
    use agent_proto::{
        LockState, PcrChange, PcrValue, RecoveryStatus, ResealInfo, RollbackStatus, Sealing,
        SealingStatus, StatusInfo, UnlockInfo,
    };
    fn req(id: u64, op: Request) -> Frame {
        Frame::Request(Envelope { proto: 6, id, op })
    }
    fn resp(id: u64, op: Response) -> Frame {
        Frame::Response(Envelope { proto: 6, id, op })
    }
    let pin = || SecretBytes::from(&b"correct horse"[..]);
    let change = || PcrChange {
        pcr: 7,
        sealed: vec![0xa7; 32],
        current: vec![0xb7; 32],
    };
    vec![
        (
            "v6-unlock-request-frame",
            req(
                30,
                Request::Unlock {
                    pin: pin(),
                    reseal: true,
                },
            ),
        ),
        (
            "v6-unlocked-response-frame",
            resp(
                30,
                Response::Unlocked(UnlockInfo {
                    root_key_check: "0011223344556677".into(),
                    resealed: true,
                    changed_pcrs: vec![change()],
                }),
            ),
        ),
        (
            "v6-reseal-request-frame",
            req(
                31,
                Request::Reseal {
                    pin: Some(pin()),
                    pcrs: Some(vec![7, 14]),
                    new_pin: None,
                    dry_run: true,
                },
            ),
        ),
        (
            "v6-resealed-response-frame",
            resp(
                31,
                Response::Resealed(ResealInfo {
                    dry_run: true,
                    before: Sealing {
                        pcrs: vec![],
                        pin: true,
                        pcr_values: vec![],
                    },
                    after: Sealing {
                        pcrs: vec![7, 14],
                        pin: true,
                        pcr_values: vec![
                            PcrValue {
                                pcr: 7,
                                sha256: vec![0xb7; 32],
                            },
                            PcrValue {
                                pcr: 14,
                                sha256: vec![0xe1; 32],
                            },
                        ],
                    },
                }),
            ),
        ),
        (
            "v6-change-pin-request-frame",
            req(
                32,
                Request::ChangePin {
                    pin: pin(),
                    new_pin: SecretBytes::from(&b"battery staple"[..]),
                },
            ),
        ),
        (
            "v6-status-response-frame",
            resp(
                33,
                Response::Status(StatusInfo {
                    daemon_version: "0.1.0".into(),
                    oldest_protocol: 1,
                    newest_protocol: 6,
                    uptime_secs: 5,
                    tpm_reachable: true,
                    root_key_loaded: false,
                    root_key_check: String::new(),
                    counters: Default::default(),
                    recovery: RecoveryStatus::default(),
                    rollback: RollbackStatus::default(),
                    sealing: SealingStatus {
                        lock: LockState::PcrMismatch {
                            changed: vec![change()],
                        },
                        mode: Sealing {
                            pcrs: vec![7],
                            pin: true,
                            pcr_values: vec![PcrValue {
                                pcr: 7,
                                sha256: vec![0xa7; 32],
                            }],
                        },
                    },
                }),
            ),
        ),
        (
            "v6-locked-error-frame",
            resp(
                34,
                Response::error(
                    ErrorCode::Locked,
                    "the daemon is locked: run hostkms unlock",
                ),
            ),
        ),
        (
            "v6-wrong-pin-error-frame",
            resp(
                35,
                Response::error(
                    ErrorCode::WrongPin,
                    "wrong PIN: the TPM allows 2 more tries",
                ),
            ),
        ),
    ]
}

#[test]
fn readme_v6_frames_are_what_the_code_produces() {
    let frames = readme_v6_frames();
    assert_eq!(frames.len(), 8, "one README frame per example");
    for (name, frame) in frames {
        let expected = readme_hex(name);
        match frame {
            Frame::Request(request) => {
                let bytes = codec::encode_request(request.clone(), DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let back = codec::decode_request(&bytes[LENGTH_PREFIX..]).unwrap();
                assert_eq!(back, request, "{name}");
            }
            Frame::Response(response) => {
                let bytes = codec::encode_response(response.clone(), DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(bytes.as_slice(), expected.as_slice(), "{name}");
                let back = codec::decode_response(&bytes[LENGTH_PREFIX..]).unwrap();
                assert_eq!(back, response, "{name}");
            }
        }
    }
}

#[test]
fn every_request_appended_in_version_6_has_a_readme_frame() {
    let shown: Vec<agent_proto::Operation> = readme_v6_frames()
        .into_iter()
        .filter_map(|(_, frame)| match frame {
            Frame::Request(request) => Some(request.op.operation()),
            Frame::Response(_) => None,
        })
        .collect();
    for request in samples::requests() {
        if samples::appended_in_v6(request.operation()) {
            assert!(
                shown.contains(&request.operation()),
                "the README shows no {} frame",
                request.operation()
            );
        }
    }
}

#[test]
fn the_readme_v6_answers_to_a_version_5_client() {
    // The locked status: no sealing, and the root key not loaded.
    let frames = readme_v6_frames();
    let Some((_, Frame::Response(status))) = frames
        .into_iter()
        .find(|(name, _)| *name == "v6-status-response-frame")
    else {
        panic!("no status frame");
    };
    let frame = codec::encode_response(
        Envelope {
            proto: 5,
            ..status.clone()
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let v6 = readme_hex("v6-status-response-frame");
    // Version 5's status is version 6's without the sealing at its end.
    let sealing_len = 4 + 8 + 1 + 8 + 32 + 8 + 32 + 8 + 1 + 1 + 8 + 1 + 8 + 32;
    assert_eq!(frame.len(), v6.len() - sealing_len);
    assert_eq!(&frame[6..], &v6[6..v6.len() - sealing_len]);
    let old: Envelope<agent_proto::v5::Response> =
        codec::decode_body(&frame[LENGTH_PREFIX..]).unwrap();
    let agent_proto::v5::Response::Status(old) = old.op else {
        panic!("not a status: {old:?}");
    };
    assert!(!old.root_key_loaded);
    // The refusal: code 13, TpmUnavailable, with the daemon's message, in
    // every version before 6.
    for proto in 1..=5 {
        let frame = codec::encode_response(
            Envelope {
                proto,
                id: 34,
                op: Response::error(
                    ErrorCode::Locked,
                    "the daemon is locked: run hostkms unlock",
                ),
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let body = &frame[LENGTH_PREFIX..];
        assert_eq!(&body[10..14], &7u32.to_le_bytes());
        assert_eq!(&body[14..16], &13u16.to_le_bytes(), "version {proto}");
    }
    let v6 = readme_hex("v6-locked-error-frame");
    assert_eq!(
        &v6[LENGTH_PREFIX + 14..LENGTH_PREFIX + 16],
        &20u16.to_le_bytes()
    );
}

#[test]
fn requests_appended_in_version_6_are_not_sent_in_versions_1_to_5() {
    for request in samples::requests() {
        if !samples::appended_in_v6(request.operation()) {
            continue;
        }
        for proto in 1..=5 {
            let err = codec::encode_request(
                Envelope {
                    proto,
                    id: 5,
                    op: request.clone(),
                },
                DEFAULT_MAX_FRAME,
            )
            .unwrap_err();
            let agent_proto::EncodeError::NotInVersion {
                proto: said,
                reason,
            } = err
            else {
                panic!("{err}");
            };
            assert_eq!(said, proto);
            assert!(
                reason.contains(&format!("protocol version {proto} has no")),
                "{reason}"
            );
            assert!(reason.contains("needs protocol version 6"), "{reason}");
        }
    }
}
