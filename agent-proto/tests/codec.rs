//! Round trips of every message, the error paths of the decoder, and the
//! README's example frames checked byte for byte.

mod samples;

use std::io::Cursor;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{
    Ciphertext, DecodeError, Envelope, ErrorCode, FrameError, PROTOCOL_VERSION, Request, Response,
    SecretBytes, Wrapped,
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
    assert!(message.contains("version 2 is not supported"), "{message}");
    assert!(message.contains("versions 1 to 1"), "{message}");
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

/// The README's example request, built with the library.
pub fn readme_request() -> Envelope<Request> {
    let mut context = agent_proto::EncryptionContext::new();
    context.insert("table".into(), "users".into());
    Envelope::new(
        7,
        Request::Wrap {
            key: "app-db".into(),
            plaintext: SecretBytes::from(&b"hello"[..]),
            context,
        },
    )
}

/// The README's example response, built with the library.
pub fn readme_response() -> Envelope<Response> {
    let mut ciphertext = b"HKMS\x01".to_vec();
    ciphertext.extend_from_slice(&[0x11; 16]); // key id
    ciphertext.extend_from_slice(&1u32.to_be_bytes()); // version
    ciphertext.extend_from_slice(&[0x22; 12]); // nonce
    ciphertext.extend_from_slice(&[0x33; 5]); // encrypted "hello"
    ciphertext.extend_from_slice(&[0x44; 16]); // tag
    Envelope::new(
        7,
        Response::Wrapped(Wrapped {
            key: "app-db".into(),
            version: 1,
            ciphertext: Ciphertext::new(ciphertext),
        }),
    )
}

#[test]
fn readme_request_frame_is_what_the_code_produces() {
    let frame = codec::encode_frame(&readme_request(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(frame.as_slice(), readme_hex("request-frame").as_slice());
}

#[test]
fn readme_response_frame_is_what_the_code_produces() {
    let frame = codec::encode_frame(&readme_response(), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(frame.as_slice(), readme_hex("response-frame").as_slice());
}
