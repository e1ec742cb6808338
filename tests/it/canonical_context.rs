//! The canonical encoding of maps (encryption contexts, tags) against the
//! real daemon: a request whose context lists its keys out of order, or a
//! key twice, is refused `BadRequest` and its connection closed, never
//! read as some other context (with two entries of one key, the last would
//! win: a ciphertext bound to a context other than the one a reviewer of
//! the request saw).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME};
use agent_proto::{
    Ciphertext, EncryptionContext, Envelope, ErrorCode, Request, Response, SecretBytes,
};

use crate::harness::{DaemonConfig, Harness};

/// The context the frames below carry, in canonical order.
fn two_entries() -> EncryptionContext {
    BTreeMap::from([
        ("ctx-a".to_string(), "v1".to_string()),
        ("ctx-b".to_string(), "v2".to_string()),
    ])
}

fn entry(key: &str, value: &str) -> Vec<u8> {
    let mut bytes = (key.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

/// The frame of `request` in version `proto`, with the encoding of
/// [`two_entries`] replaced by `entries` (as long): a frame no honest
/// encoder makes.
fn hand_made(proto: u16, id: u64, request: Request, entries: &[(&str, &str)]) -> Vec<u8> {
    let frame = codec::encode_request(
        Envelope {
            proto,
            id,
            op: request,
        },
        DEFAULT_MAX_FRAME,
    )
    .expect("encode");
    let canonical = [entry("ctx-a", "v1"), entry("ctx-b", "v2")].concat();
    let replacement: Vec<u8> = entries.iter().flat_map(|(k, v)| entry(k, v)).collect();
    assert_eq!(canonical.len(), replacement.len());
    let at = frame
        .windows(canonical.len())
        .position(|w| w == canonical.as_slice())
        .expect("the frame holds the context");
    let mut patched = frame.to_vec();
    patched[at..at + canonical.len()].copy_from_slice(&replacement);
    patched
}

/// Sends one frame on a new connection and returns the answer, and
/// whether the daemon then closed the connection.
fn exchange(socket: &std::path::Path, frame: &[u8]) -> (Envelope<Response>, bool) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream.write_all(frame).expect("send");
    // Nothing more to send: the daemon need not wait for more after its answer.
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shut down writing");
    let body = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME)
        .expect("read the answer")
        .expect("an answer");
    let answer = codec::decode_response(&body).expect("decode the answer");
    let closed = matches!(
        codec::read_frame(&mut stream, DEFAULT_MAX_FRAME),
        Ok(None) | Err(_)
    );
    (answer, closed)
}

fn assert_refused(what: &str, (answer, closed): (Envelope<Response>, bool), id: u64) {
    match &answer.op {
        Response::Error(reply) => {
            assert_eq!(reply.code, ErrorCode::BadRequest, "{what}: {reply:?}");
            assert!(
                reply
                    .message
                    .contains("sorted by their UTF-8 bytes, each key once"),
                "{what}: {}",
                reply.message
            );
        }
        other => panic!("{what}: a non-canonical context was served: {other:?}"),
    }
    assert_eq!(answer.id, id, "{what}: the refusal echoes the request id");
    assert!(closed, "{what}: the connection stays open after BadRequest");
}

const OUT_OF_ORDER: [(&str, &str); 2] = [("ctx-b", "v2"), ("ctx-a", "v1")];
const REPEATED: [(&str, &str); 2] = [("ctx-a", "v1"), ("ctx-a", "v2")];

#[test]
fn a_context_out_of_order_or_with_a_repeated_key_is_refused_by_every_request() {
    let harness = Harness::start(DaemonConfig::new());
    let socket = &harness.daemon.socket;
    let mut admin = harness.daemon.client();
    admin.create_key("app-db").unwrap();
    let sealed = admin
        .wrap("app-db", b"bound to two entries", &two_entries())
        .unwrap()
        .ciphertext;
    let ciphertext = || Ciphertext::from(sealed.as_bytes());

    let requests = [
        (
            "wrap",
            Request::Wrap {
                key: "app-db".into(),
                plaintext: SecretBytes::from(&b"x"[..]),
                context: two_entries(),
            },
        ),
        (
            "unwrap",
            Request::Unwrap {
                ciphertext: ciphertext(),
                context: two_entries(),
                key: Some("app-db".into()),
            },
        ),
        (
            "datakey",
            Request::GenerateDataKey {
                key: "app-db".into(),
                bytes: 32,
                include_plaintext: true,
                context: two_entries(),
            },
        ),
        (
            "rewrap",
            Request::Rewrap {
                ciphertext: ciphertext(),
                context: two_entries(),
                key: None,
                destination: None,
            },
        ),
    ];
    let mut id = 100;
    for (what, request) in requests {
        // The canonical frame is served: the refusals below are about the
        // order, nothing else.
        id += 1;
        let canonical = hand_made(
            agent_proto::PROTOCOL_VERSION,
            id,
            request.clone(),
            &[("ctx-a", "v1"), ("ctx-b", "v2")],
        );
        let (answer, _) = exchange(socket, &canonical);
        assert!(
            !matches!(answer.op, Response::Error(_)),
            "{what}: the canonical frame was refused: {answer:?}"
        );
        for proto in [1, 4, agent_proto::PROTOCOL_VERSION] {
            for entries in [OUT_OF_ORDER, REPEATED] {
                id += 1;
                let frame = hand_made(proto, id, request.clone(), &entries);
                assert_refused(
                    &format!("{what} in version {proto} with {entries:?}"),
                    exchange(socket, &frame),
                    id,
                );
            }
        }
    }
    // The daemon serves on: a new connection is answered.
    assert!(admin.ping().is_ok());
    // Not one of the refused wraps and data keys counted as an encryption.
    let info = admin.describe_key("app-db").unwrap();
    assert_eq!(
        info.versions[0].encryptions, 4,
        "the first wrap, the canonical wrap, data key and rewrap"
    );
}
