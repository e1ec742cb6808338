//! The spec's "Connections" section against the real daemon: which
//! refusals close a connection, with which id and in which version, that
//! every other refusal leaves it open, and how far a client that writes
//! and reads in one thread may send ahead.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME};
use agent_proto::{Envelope, ErrorCode, Request, Response, SecretBytes};

use crate::harness::{DaemonConfig, Harness};

fn connect(harness: &Harness) -> UnixStream {
    let stream = UnixStream::connect(&harness.daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads one answer: its version, id and error code (none for success).
fn read_answer(stream: &mut UnixStream) -> (u16, u64, Option<ErrorCode>) {
    let body = codec::read_frame(stream, DEFAULT_MAX_FRAME)
        .expect("read an answer")
        .expect("an answer, not the end of the stream");
    let proto = u16::from_le_bytes([body[0], body[1]]);
    let answer = codec::decode_response(&body).expect("decode the answer");
    let code = match answer.op {
        Response::Error(reply) => Some(reply.code),
        _ => None,
    };
    (proto, answer.id, code)
}

/// Whether the daemon closed the connection (the stream ends).
fn closed(stream: &mut UnixStream) -> bool {
    matches!(
        codec::read_frame(stream, DEFAULT_MAX_FRAME),
        Ok(None) | Err(_)
    )
}

/// Sends `frame` on a new connection and returns the answer, checking
/// that the daemon then closes the connection.
fn refused_and_closed(
    harness: &Harness,
    what: &str,
    frame: &[u8],
) -> (u16, u64, Option<ErrorCode>) {
    let mut stream = connect(harness);
    // The daemon may close before it has read all of an oversized frame.
    let _ = stream.write_all(frame);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let answer = read_answer(&mut stream);
    assert!(closed(&mut stream), "{what}: the connection stays open");
    answer
}

fn frame(proto: u16, id: u64, op: Request) -> Vec<u8> {
    codec::encode_request(Envelope { proto, id, op }, DEFAULT_MAX_FRAME)
        .expect("encode")
        .to_vec()
}

#[test]
fn closing_refusals_carry_the_id_and_version_the_spec_gives_and_others_keep_the_connection() {
    let harness = Harness::start(DaemonConfig::new());

    // A length prefix over max_frame: answered at once, id 0, version 1.
    let mut oversized = (DEFAULT_MAX_FRAME + 1).to_be_bytes().to_vec();
    oversized.extend_from_slice(&4u16.to_le_bytes());
    oversized.extend_from_slice(&77u64.to_le_bytes());
    assert_eq!(
        refused_and_closed(&harness, "oversized", &oversized),
        (1, 0, Some(ErrorCode::FrameTooLarge))
    );

    // A version the daemon does not speak: the request's id, version 1.
    let mut future = frame(5, 41, Request::Ping);
    future[4..6].copy_from_slice(&9u16.to_le_bytes());
    assert_eq!(
        refused_and_closed(&harness, "version 9", &future),
        (1, 41, Some(ErrorCode::UnsupportedVersion))
    );

    // A request variant unknown in its version: the request's id and version.
    let mut unknown = frame(4, 42, Request::Ping);
    unknown[14..18].copy_from_slice(&24u32.to_le_bytes());
    assert_eq!(
        refused_and_closed(&harness, "variant 24 in version 4", &unknown),
        (4, 42, Some(ErrorCode::BadRequest))
    );

    // A body with bytes left over, in version 2.
    let mut padded = frame(2, 43, Request::Ping);
    padded.push(0);
    let len = (padded.len() - 4) as u32;
    padded[..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        refused_and_closed(&harness, "trailing byte", &padded),
        (2, 43, Some(ErrorCode::BadRequest))
    );

    // A body too short to hold an id: id 0, version 1.
    let mut short = 6u32.to_be_bytes().to_vec();
    short.extend_from_slice(&5u16.to_le_bytes());
    short.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(
        refused_and_closed(&harness, "6-byte body", &short),
        (1, 0, Some(ErrorCode::BadRequest))
    );

    // Refusals of requests that decoded leave the connection open: the
    // next request on it is answered.
    let mut stream = connect(&harness);
    let refusals = [
        (
            Request::DescribeKey {
                key: "missing".into(),
            },
            ErrorCode::KeyNotFound,
        ),
        (
            Request::GenerateRandom { bytes: 0 },
            ErrorCode::InvalidArgument,
        ),
        (
            Request::Unwrap {
                ciphertext: agent_proto::Ciphertext::from(&b"not one"[..]),
                context: Default::default(),
                key: None,
            },
            ErrorCode::InvalidCiphertext,
        ),
    ];
    for (i, (request, code)) in refusals.into_iter().enumerate() {
        let id = 50 + i as u64;
        stream.write_all(&frame(5, id, request)).unwrap();
        assert_eq!(read_answer(&mut stream), (5, id, Some(code)));
    }
    stream.write_all(&frame(5, 60, Request::Ping)).unwrap();
    assert_eq!(read_answer(&mut stream), (5, 60, None));
}

#[test]
fn a_client_in_one_thread_may_send_64_requests_before_it_reads() {
    let harness = Harness::start(DaemonConfig::new());
    harness.daemon.client().create_key("app-db").unwrap();
    let mut stream = connect(&harness);
    // 64 wraps of 900 bytes: under 64 KiB of requests, and of answers.
    let frames: Vec<Vec<u8>> = (1..=64u64)
        .map(|id| {
            frame(
                5,
                id,
                Request::Wrap {
                    key: "app-db".into(),
                    plaintext: SecretBytes::new(vec![0x5a; 900]),
                    context: Default::default(),
                },
            )
        })
        .collect();
    let requests: usize = frames.iter().map(Vec::len).sum();
    assert!(requests <= 64 * 1024, "{requests} bytes of requests");
    for frame in &frames {
        stream
            .write_all(frame)
            .expect("the daemon takes 64 requests before the client reads");
    }
    let mut answers = 0;
    for id in 1..=64u64 {
        let body = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME)
            .unwrap()
            .expect("an answer");
        answers += body.len() + 4;
        let answer = codec::decode_response(&body).unwrap();
        assert_eq!(answer.id, id, "answers come in the order of the requests");
        assert!(matches!(answer.op, Response::Wrapped(_)), "{:?}", answer.op);
    }
    assert!(answers <= 64 * 1024, "{answers} bytes of answers");
}
