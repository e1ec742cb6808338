//! The one place the wire encoding is defined: frames and their bodies.
//!
//! A frame is a `u32` big-endian body length, then the body. The body is a
//! bincode 1.3.3 encoding of an [`Envelope`] with fixed options: fixed-width
//! little-endian integers, a byte limit equal to the body length, trailing
//! bytes rejected. Lengths are checked against a limit before anything is
//! allocated, a body buffer grows only as its bytes arrive (a length prefix
//! alone commits no memory), and buffers that held a message are zeroized
//! when dropped.

use std::io::{ErrorKind, Read};

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{DecodeError, EncodeError, FrameError};
use crate::message::{Envelope, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response};
use crate::{v1, v2, v3, v4, v5};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// The default limit on a frame body: 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// A frame or body buffer; wiped on drop because it may hold a plaintext.
pub type FrameBuf = Zeroizing<Vec<u8>>;

fn bincode_options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(limit)
        .reject_trailing_bytes()
}

/// Encodes `envelope` as a whole frame (length prefix and body).
///
/// The buffer is sized exactly before encoding, so no partial copy of the
/// message is left behind in freed memory by a reallocation.
pub fn encode_frame<T: Serialize>(
    envelope: &Envelope<T>,
    max_frame: u32,
) -> Result<FrameBuf, EncodeError> {
    let too_large = |len| EncodeError::TooLarge {
        len,
        max: max_frame,
    };
    // Sized without the byte limit, so that a message over it reports its
    // real length: sizing only counts, it allocates nothing.
    let len = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .serialized_size(envelope)
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let body_len = u32::try_from(len)
        .ok()
        .filter(|&n| n <= max_frame)
        .ok_or_else(|| too_large(len))?;
    let mut frame = Zeroizing::new(Vec::with_capacity(LENGTH_PREFIX + body_len as usize));
    frame.extend_from_slice(&body_len.to_be_bytes());
    bincode_options(u64::from(body_len))
        .serialize_into(&mut *frame, envelope)
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    Ok(frame)
}

/// Checks a length prefix against `max_frame` and returns the body length.
pub fn body_length(prefix: [u8; LENGTH_PREFIX], max_frame: u32) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix);
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(len as usize)
}

/// Decodes a frame body (without its length prefix) into an envelope of
/// the current version's shapes.
///
/// The protocol version is checked before the rest is decoded, so a newer
/// peer gets `UnsupportedVersion` rather than a decoding error. Any
/// supported `proto` is accepted, but the body is read with the current
/// shapes: a receiver whose peer may speak an older version uses
/// [`decode_request`] or [`decode_response`], which read each version's own.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<Envelope<T>, DecodeError> {
    let (_, id) = envelope_head(body)?;
    decode_as(body, id)
}

/// The `proto` of a body, checked against the supported range, and its
/// request id when the body is long enough to hold one.
fn envelope_head(body: &[u8]) -> Result<(u16, Option<u64>), DecodeError> {
    let id = request_id(body);
    let proto = match body.get(..2).and_then(|b| b.try_into().ok()) {
        Some(bytes) => u16::from_le_bytes(bytes),
        None => {
            return Err(DecodeError::Malformed {
                id,
                reason: format!("body of {} bytes is shorter than an envelope", body.len()),
            });
        }
    };
    if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&proto) {
        return Err(DecodeError::UnsupportedVersion { got: proto, id });
    }
    Ok((proto, id))
}

fn decode_as<T: DeserializeOwned>(
    body: &[u8],
    id: Option<u64>,
) -> Result<Envelope<T>, DecodeError> {
    bincode_options(body.len() as u64)
        .deserialize(body)
        .map_err(|e| DecodeError::Malformed {
            id,
            reason: e.to_string(),
        })
}

/// Decodes a request body in the version its envelope names, converted to
/// the current [`Request`]; the envelope keeps the peer's `proto`, in which
/// the answer must go back (see [`encode_response`]).
///
/// A request variant this side does not know in that version (one a newer
/// peer appended) is [`DecodeError::UnknownRequest`], answered `BadRequest`
/// with a message that says the daemon is too old. A request that is not
/// in its canonical encoding (a map, such as an encryption context, with
/// its keys out of order or repeated) is [`DecodeError::NotCanonical`],
/// answered `BadRequest` too.
pub fn decode_request(body: &[u8]) -> Result<Envelope<Request>, DecodeError> {
    let (proto, id) = envelope_head(body)?;
    let known = match proto {
        v1::VERSION => v1::REQUEST_VARIANTS,
        v2::VERSION => v2::REQUEST_VARIANTS,
        v3::VERSION => v3::REQUEST_VARIANTS,
        v4::VERSION => v4::REQUEST_VARIANTS,
        v5::VERSION => v5::REQUEST_VARIANTS,
        _ => Request::VARIANTS,
    };
    if let Some(index) = body
        .get(10..14)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
    {
        if index >= known {
            return Err(DecodeError::UnknownRequest {
                id,
                proto,
                index,
                known,
            });
        }
    }
    match proto {
        v1::VERSION => request_via::<v1::Request>(body, id),
        v2::VERSION => request_via::<v2::Request>(body, id),
        v3::VERSION => request_via::<v3::Request>(body, id),
        v4::VERSION => request_via::<v4::Request>(body, id),
        v5::VERSION => request_via::<v5::Request>(body, id),
        _ => decode_canonical(body, id),
    }
}

/// Decodes a request body with the frozen shape `Old` of its version,
/// checks that it is canonical, and converts it to the current shape
/// (through version 4's and 5's, which is what the conversions of the
/// frozen modules do).
fn request_via<Old>(body: &[u8], id: Option<u64>) -> Result<Envelope<Request>, DecodeError>
where
    Old: DeserializeOwned + Serialize + Into<Request>,
{
    let old: Envelope<Old> = decode_canonical(body, id)?;
    Ok(Envelope {
        proto: old.proto,
        id: old.id,
        op: old.op.into(),
    })
}

/// Decodes a body and checks that it is the canonical encoding of what it
/// decoded to: re-encoded, the message gives back the same bytes.
///
/// Every value of the protocol has one encoding except a map, whose
/// entries a sender could put out of order or repeat; decoding into a
/// sorted map would silently reorder them and let the last of two equal
/// keys win, so that the daemon would bind a ciphertext to a context other
/// than the one the sender wrote. The comparison runs as the re-encoding
/// is written, against the body itself: nothing is copied.
fn decode_canonical<T>(body: &[u8], id: Option<u64>) -> Result<Envelope<T>, DecodeError>
where
    T: DeserializeOwned + Serialize,
{
    let envelope: Envelope<T> = decode_as(body, id)?;
    let mut check = SameBytes {
        expected: body,
        at: 0,
    };
    let same = bincode_options(body.len() as u64)
        .serialize_into(&mut check, &envelope)
        .is_ok();
    if !same || check.at != body.len() {
        return Err(DecodeError::NotCanonical {
            id,
            offset: check.at,
        });
    }
    Ok(envelope)
}

/// A writer that accepts only the bytes of `expected`, in order, and
/// stops at the first that differs: `at` is then where it differs.
struct SameBytes<'a> {
    expected: &'a [u8],
    at: usize,
}

impl std::io::Write for SameBytes<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let rest = &self.expected[self.at.min(self.expected.len())..];
        if rest.starts_with(buf) {
            self.at += buf.len();
            return Ok(buf.len());
        }
        self.at += buf.iter().zip(rest).take_while(|(a, b)| a == b).count();
        Err(std::io::Error::other("differs from the body"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes a response body in the version its envelope names, converted to
/// the current [`Response`]: a client that fell back to an older daemon's
/// version reads its answers this way.
pub fn decode_response(body: &[u8]) -> Result<Envelope<Response>, DecodeError> {
    let (proto, id) = envelope_head(body)?;
    match proto {
        v1::VERSION => decode_via::<Response, v4::Response, v1::Response>(body, id),
        v2::VERSION => decode_via::<Response, v4::Response, v2::Response>(body, id),
        v3::VERSION => decode_via::<Response, v4::Response, v3::Response>(body, id),
        v4::VERSION => decode_via::<Response, v4::Response, v4::Response>(body, id),
        v5::VERSION => decode_via::<Response, v5::Response, v5::Response>(body, id),
        _ => decode_as(body, id),
    }
}

/// Decodes a body with the frozen shape `Old` of an older version and
/// converts it to the current `T` through `Mid`, the shape of version 4
/// (which versions 1 to 3 convert to; for versions 4 and 5 `Old` is `Mid`);
/// the envelope keeps its `proto`.
fn decode_via<T, Mid, Old>(body: &[u8], id: Option<u64>) -> Result<Envelope<T>, DecodeError>
where
    Old: DeserializeOwned + Into<Mid>,
    Mid: Into<T>,
{
    let old: Envelope<Old> = decode_as(body, id)?;
    Ok(Envelope {
        proto: old.proto,
        id: old.id,
        op: old.op.into().into(),
    })
}

/// Encodes a request as a whole frame in the version its envelope names:
/// a request that version cannot express (e.g. a paginated `ListKeys` in
/// version 1) is [`EncodeError::NotInVersion`].
pub fn encode_request(
    envelope: Envelope<Request>,
    max_frame: u32,
) -> Result<FrameBuf, EncodeError> {
    match envelope.proto {
        v1::VERSION => encode_via::<Request, v4::Request, v1::Request>(envelope, max_frame),
        v2::VERSION => encode_via::<Request, v4::Request, v2::Request>(envelope, max_frame),
        v3::VERSION => encode_via::<Request, v4::Request, v3::Request>(envelope, max_frame),
        v4::VERSION => encode_via::<Request, v4::Request, v4::Request>(envelope, max_frame),
        v5::VERSION => encode_via::<Request, v5::Request, v5::Request>(envelope, max_frame),
        PROTOCOL_VERSION => encode_frame(&envelope, max_frame),
        proto => Err(unspoken(proto)),
    }
}

/// Encodes a response as a whole frame in the version its envelope names
/// (the version of the request it answers); an answer that version cannot
/// express is [`EncodeError::NotInVersion`].
pub fn encode_response(
    envelope: Envelope<Response>,
    max_frame: u32,
) -> Result<FrameBuf, EncodeError> {
    match envelope.proto {
        v1::VERSION => encode_via::<Response, v4::Response, v1::Response>(envelope, max_frame),
        v2::VERSION => encode_via::<Response, v4::Response, v2::Response>(envelope, max_frame),
        v3::VERSION => encode_via::<Response, v4::Response, v3::Response>(envelope, max_frame),
        v4::VERSION => encode_via::<Response, v4::Response, v4::Response>(envelope, max_frame),
        v5::VERSION => encode_via::<Response, v5::Response, v5::Response>(envelope, max_frame),
        PROTOCOL_VERSION => encode_frame(&envelope, max_frame),
        proto => Err(unspoken(proto)),
    }
}

/// What a frozen version lacks, said of the (same or older) version a
/// message was to be sent in.
trait SaidOf {
    fn in_version(&self, proto: u16) -> String;
}

impl SaidOf for v4::NotInV4 {
    fn in_version(&self, proto: u16) -> String {
        v4::NotInV4::in_version(self, proto)
    }
}

impl SaidOf for v5::NotInV5 {
    fn in_version(&self, proto: u16) -> String {
        v5::NotInV5::in_version(self, proto)
    }
}

/// Encodes `envelope` through `Mid` (version 4's shape, or version 5's for
/// version 5) to the frozen shape `Old` of the older version it names; a
/// message that version cannot express is [`EncodeError::NotInVersion`],
/// its reason naming that version (also when it is version 4 or 5 that
/// lacks it, and so every older one).
fn encode_via<T, Mid, Old>(envelope: Envelope<T>, max_frame: u32) -> Result<FrameBuf, EncodeError>
where
    Mid: TryFrom<T>,
    Mid::Error: SaidOf,
    Old: Serialize + TryFrom<Mid>,
    Old::Error: std::fmt::Display,
{
    let proto = envelope.proto;
    let not_in = |reason: String| EncodeError::NotInVersion { proto, reason };
    let mid = Mid::try_from(envelope.op).map_err(|e| not_in(e.in_version(proto)))?;
    let op = Old::try_from(mid).map_err(|e| not_in(e.to_string()))?;
    encode_frame(
        &Envelope {
            proto,
            id: envelope.id,
            op,
        },
        max_frame,
    )
}

fn unspoken(proto: u16) -> EncodeError {
    EncodeError::NotInVersion {
        proto,
        reason: format!(
            "this side speaks versions {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
        ),
    }
}

/// Memory that frame bodies may take, asked each time a body buffer grows.
///
/// A body buffer grows as its bytes arrive, never from the length prefix
/// alone; a receiver that serves many peers bounds what all their partly
/// received frames hold together by refusing a growth.
pub trait BodyMemory {
    /// Asks for `bytes` more for the body being read; `false` refuses, and
    /// the read fails with [`FrameError::OutOfMemory`].
    fn reserve(&mut self, bytes: usize) -> bool;
}

/// No bound beyond the frame limit: for a client, which reads one frame at
/// a time from the daemon it chose.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unbounded;

impl BodyMemory for Unbounded {
    fn reserve(&mut self, _bytes: usize) -> bool {
        true
    }
}

/// The first capacity of a body buffer, and the most one read adds to it.
pub const BODY_STEP: usize = 16 * 1024;

/// A body being received: its buffer grows (by doubling, with the memory's
/// consent) only once the bytes already received fill it. A growth copies
/// into a fresh buffer and wipes the old one, so no stray copy of a
/// message is left in freed memory.
struct Body {
    buf: FrameBuf,
    /// The declared body length.
    len: usize,
    /// Bytes received.
    filled: usize,
    /// Capacity asked for so far.
    planned: usize,
}

impl Body {
    fn new(len: usize) -> Body {
        Body {
            buf: Zeroizing::new(Vec::new()),
            len,
            filled: 0,
            planned: 0,
        }
    }

    fn is_complete(&self) -> bool {
        self.filled == self.len
    }

    /// Where the next read goes: at most [`BODY_STEP`] bytes, within the
    /// declared length.
    fn window(&mut self, memory: &mut impl BodyMemory) -> Result<&mut [u8], FrameError> {
        if self.filled == self.planned {
            let planned = self.len.min(self.planned.saturating_mul(2).max(BODY_STEP));
            if !memory.reserve(planned - self.planned) {
                return Err(FrameError::OutOfMemory {
                    len: self.len,
                    id: request_id(&self.buf),
                    proto: self
                        .buf
                        .get(..2)
                        .and_then(|b| b.try_into().ok())
                        .map(u16::from_le_bytes),
                });
            }
            let mut grown = Zeroizing::new(Vec::with_capacity(planned));
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
            self.planned = planned;
        }
        let end = self.planned.min(self.filled + BODY_STEP);
        self.buf.resize(end, 0);
        Ok(&mut self.buf[self.filled..end])
    }

    /// Records that the last read put `n` bytes into the window.
    fn received(&mut self, n: usize) {
        self.filled += n;
        self.buf.truncate(self.filled);
    }

    /// The whole body, or how far it got when the stream ended.
    fn finish(self) -> Result<FrameBuf, FrameError> {
        if !self.is_complete() {
            return Err(FrameError::Truncated {
                got: LENGTH_PREFIX + self.filled,
                expected: LENGTH_PREFIX + self.len,
            });
        }
        Ok(self.buf)
    }
}

/// The request id in the first bytes of a body, when they have arrived.
fn request_id(body: &[u8]) -> Option<u64> {
    body.get(2..10)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Reads one frame body from a blocking stream.
///
/// Returns `Ok(None)` when the stream ends cleanly between frames. The
/// length is checked against the limit first, and the body buffer grows
/// only as its bytes arrive.
pub fn read_frame<R: Read>(reader: &mut R, max_frame: u32) -> Result<Option<FrameBuf>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let got = read_full(reader, &mut prefix)?;
    let Some(mut body) = body_of(got, prefix, max_frame)? else {
        return Ok(None);
    };
    while !body.is_complete() {
        let window = body.window(&mut Unbounded)?;
        let n = loop {
            match reader.read(window) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n == 0 {
            break;
        }
        body.received(n);
    }
    body.finish().map(Some)
}

/// After `got` bytes of a length prefix: `None` at a clean end of stream,
/// else an empty body of the length the prefix declares, once that passed
/// the limit.
fn body_of(
    got: usize,
    prefix: [u8; LENGTH_PREFIX],
    max_frame: u32,
) -> Result<Option<Body>, FrameError> {
    match got {
        0 => Ok(None),
        LENGTH_PREFIX => Ok(Some(Body::new(body_length(prefix, max_frame)?))),
        _ => Err(FrameError::Truncated {
            got,
            expected: LENGTH_PREFIX,
        }),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads one frame body from a tokio stream; see [`read_frame`].
#[cfg(feature = "tokio")]
pub async fn read_frame_async<R>(
    reader: &mut R,
    max_frame: u32,
) -> Result<Option<FrameBuf>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut prefix = [0u8; LENGTH_PREFIX];
    let got = read_full_async(reader, &mut prefix).await?;
    if got == 0 {
        return Ok(None);
    }
    finish_frame_async(reader, prefix, got, max_frame, &mut Unbounded)
        .await
        .map(Some)
}

/// Reads the rest of a frame whose first `got` (at least 1) length-prefix
/// bytes are already in `prefix`: for a server that waits for a frame's
/// first byte under one timeout and for the rest under another. The body
/// buffer grows as bytes arrive, each growth granted by `memory`.
#[cfg(feature = "tokio")]
pub async fn finish_frame_async<R>(
    reader: &mut R,
    mut prefix: [u8; LENGTH_PREFIX],
    got: usize,
    max_frame: u32,
    memory: &mut impl BodyMemory,
) -> Result<FrameBuf, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let got = got + read_full_async(reader, &mut prefix[got.min(LENGTH_PREFIX)..]).await?;
    let mut body = body_of(got, prefix, max_frame)?.ok_or(FrameError::Truncated {
        got: 0,
        expected: LENGTH_PREFIX,
    })?;
    while !body.is_complete() {
        let window = body.window(memory)?;
        let n = loop {
            match reader.read(window).await {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n == 0 {
            break;
        }
        body.received(n);
    }
    body.finish()
}

#[cfg(feature = "tokio")]
async fn read_full_async<R>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// The reason `message`, in `proto`, cannot be sent.
    fn not_in(proto: u16, message: Result<FrameBuf, EncodeError>) -> String {
        match message {
            Err(EncodeError::NotInVersion {
                proto: said,
                reason,
            }) => {
                assert_eq!(said, proto);
                reason
            }
            other => panic!("protocol version {proto} carried it: {:?}", other.is_ok()),
        }
    }

    #[test]
    fn what_versions_before_5_lack_is_said_of_the_version_in_use() {
        let batch = || Request::WrapBatch {
            key: "k".into(),
            items: vec![crate::WrapItem {
                plaintext: crate::SecretBytes::from(&b"x"[..]),
                context: crate::EncryptionContext::new(),
            }],
        };
        let destination = || Request::Rewrap {
            ciphertext: crate::Ciphertext::from(&b"x"[..]),
            context: crate::EncryptionContext::new(),
            key: None,
            destination: Some(crate::RewrapDestination {
                key: Some("other".into()),
                context: None,
            }),
        };
        for proto in [v1::VERSION, v2::VERSION, v3::VERSION, v4::VERSION] {
            let envelope = |op| Envelope { proto, id: 1, op };
            let in_use = format!("protocol version {proto} ");
            for (what, reason) in [
                (
                    "wrap-batch",
                    not_in(proto, encode_request(envelope(batch()), 1 << 20)),
                ),
                (
                    "a rewrap destination",
                    not_in(proto, encode_request(envelope(destination()), 1 << 20)),
                ),
                (
                    "WrappedBatch",
                    not_in(
                        proto,
                        encode_response(
                            Envelope {
                                proto,
                                id: 1,
                                op: Response::WrappedBatch(Vec::new()),
                            },
                            1 << 20,
                        ),
                    ),
                ),
            ] {
                assert!(reason.contains(&in_use), "{proto}: {reason}");
                assert!(reason.contains(what), "{proto}: {reason}");
                for other in (1..=4).filter(|v| *v != proto) {
                    assert!(
                        !reason.contains(&format!("protocol version {other} ")),
                        "{proto}: {reason}"
                    );
                }
            }
        }
    }

    /// Counts what a reader asked for, and refuses past a budget.
    struct Budget {
        left: usize,
        asked: usize,
    }

    impl BodyMemory for Budget {
        fn reserve(&mut self, bytes: usize) -> bool {
            self.asked += bytes;
            if bytes > self.left {
                return false;
            }
            self.left -= bytes;
            true
        }
    }

    #[test]
    fn a_large_prefix_commits_memory_only_for_bytes_that_arrive() {
        let mut stream = (1u32 << 20).to_be_bytes().to_vec();
        stream.extend_from_slice(&[7u8; 100]);
        let err = read_frame(&mut Cursor::new(&stream), 1 << 20).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { got: 104, expected } if expected == 4 + (1 << 20)),
            "{err:?}"
        );
    }

    #[test]
    fn a_body_grows_within_its_memory_and_arrives_whole() {
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut stream = (body.len() as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(&body);
        let mut cursor = Cursor::new(&stream);
        let mut prefix = [0u8; LENGTH_PREFIX];
        std::io::Read::read_exact(&mut cursor, &mut prefix).unwrap();
        let mut budget = Budget {
            left: usize::MAX,
            asked: 0,
        };
        let mut got = Body::new(body_length(prefix, 1 << 20).unwrap());
        while !got.is_complete() {
            let window = got.window(&mut budget).unwrap();
            let n = std::io::Read::read(&mut cursor, window).unwrap();
            got.received(n);
        }
        assert_eq!(&got.finish().unwrap()[..], &body[..]);
        assert_eq!(budget.asked, body.len(), "asks add up to the body, no more");
    }

    #[test]
    fn a_refused_growth_is_out_of_memory_with_the_request_id() {
        let mut body = 1u16.to_le_bytes().to_vec();
        body.extend_from_slice(&42u64.to_le_bytes());
        body.resize(100_000, 9);
        let mut budget = Budget {
            left: BODY_STEP,
            asked: 0,
        };
        let mut got = Body::new(body.len());
        let mut cursor = Cursor::new(&body);
        let err = loop {
            match got.window(&mut budget) {
                Ok(window) => {
                    let n = std::io::Read::read(&mut cursor, window).unwrap();
                    got.received(n);
                }
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err,
                FrameError::OutOfMemory {
                    len: 100_000,
                    id: Some(42),
                    proto: Some(_),
                }
            ),
            "{err:?}"
        );
    }
}
