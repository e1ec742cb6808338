//! The one place the wire encoding is defined: frames and their bodies.
//!
//! A frame is a `u32` big-endian body length, then the body. The body is a
//! bincode 1.3.3 encoding of an [`Envelope`] with fixed options: fixed-width
//! little-endian integers, a byte limit equal to the body length, trailing
//! bytes rejected. Lengths are checked against a limit before anything is
//! allocated, and buffers that held a message are zeroized when dropped.

use std::io::{ErrorKind, Read};

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{DecodeError, EncodeError, FrameError};
use crate::message::{Envelope, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};

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
    let len = bincode_options(u64::from(max_frame))
        .serialized_size(envelope)
        .map_err(|_| too_large(u64::MAX))?;
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

/// Decodes a frame body (without its length prefix) into an envelope.
///
/// The protocol version is checked before the rest is decoded, so a newer
/// peer gets `UnsupportedVersion` rather than a decoding error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<Envelope<T>, DecodeError> {
    let id = body
        .get(2..10)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
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
    bincode_options(body.len() as u64)
        .deserialize(body)
        .map_err(|e| DecodeError::Malformed {
            id,
            reason: e.to_string(),
        })
}

/// Reads one frame body from a blocking stream.
///
/// Returns `Ok(None)` when the stream ends cleanly between frames. The body
/// buffer is allocated only after its length passed the limit.
pub fn read_frame<R: Read>(reader: &mut R, max_frame: u32) -> Result<Option<FrameBuf>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let got = read_full(reader, &mut prefix)?;
    let Some(mut body) = body_buffer(got, prefix, max_frame)? else {
        return Ok(None);
    };
    let got = read_full(reader, &mut body)?;
    check_body_complete(got, body.len())?;
    Ok(Some(body))
}

/// After `got` bytes of a length prefix: `None` at a clean end of stream,
/// else a zeroed buffer for the body, allocated only once the length passed
/// the limit.
fn body_buffer(
    got: usize,
    prefix: [u8; LENGTH_PREFIX],
    max_frame: u32,
) -> Result<Option<FrameBuf>, FrameError> {
    match got {
        0 => Ok(None),
        LENGTH_PREFIX => {
            let len = body_length(prefix, max_frame)?;
            Ok(Some(Zeroizing::new(vec![0u8; len])))
        }
        _ => Err(FrameError::Truncated {
            got,
            expected: LENGTH_PREFIX,
        }),
    }
}

fn check_body_complete(got: usize, len: usize) -> Result<(), FrameError> {
    if got < len {
        return Err(FrameError::Truncated {
            got: LENGTH_PREFIX + got,
            expected: LENGTH_PREFIX + len,
        });
    }
    Ok(())
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
    finish_frame_async(reader, prefix, got, max_frame)
        .await
        .map(Some)
}

/// Reads the rest of a frame whose first `got` (at least 1) length-prefix
/// bytes are already in `prefix`: for a server that waits for a frame's
/// first byte under one timeout and for the rest under another.
#[cfg(feature = "tokio")]
pub async fn finish_frame_async<R>(
    reader: &mut R,
    mut prefix: [u8; LENGTH_PREFIX],
    got: usize,
    max_frame: u32,
) -> Result<FrameBuf, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let got = got + read_full_async(reader, &mut prefix[got.min(LENGTH_PREFIX)..]).await?;
    let mut body = body_buffer(got, prefix, max_frame)?.ok_or(FrameError::Truncated {
        got: 0,
        expected: LENGTH_PREFIX,
    })?;
    let got = read_full_async(reader, &mut body).await?;
    check_body_complete(got, body.len())?;
    Ok(body)
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
