//! The `hostkms` stanza of an age header, and the canonical encoding of an
//! encryption context it records: the one definition that `encrypt-file`,
//! `decrypt-file`, `age-recipient` and `age-plugin-hostkms` share.
//!
//! ```text
//! -> hostkms <CONTEXT>
//! <base64 of the hostkms ciphertext of the 16-byte file key>
//! ```
//!
//! `CONTEXT` is standard base64 without padding (as age writes its own
//! stanza arguments) of the context's canonical encoding
//! ([`encode_context`]): the number of pairs, then each pair in the order
//! of the keys' UTF-8 bytes, every number a 4-byte big-endian length and
//! every string its UTF-8 bytes. An empty context is `AAAAAA` (four zero
//! bytes). The body is the ciphertext the daemon's `Wrap` made of the file
//! key under the key's latest version with that context: the daemon binds
//! the context to it, so a stanza whose recorded context was edited does
//! not unwrap.

use std::cell::RefCell;

use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use agent_proto::{Client, ClientError, EncryptionContext};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// The stanza's tag: what age calls the recipient type.
pub const TAG: &str = "hostkms";

/// The most bytes one string of an encoded context may claim; anything
/// larger is malformed (the daemon refuses far smaller requests anyway).
const MAX_STRING: usize = 1 << 20;

/// A `hostkms` stanza that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed hostkms stanza: {0}")]
pub struct StanzaError(pub String);

/// The canonical encoding of `context` (see the module's documentation).
pub fn encode_context(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    push_len(&mut out, context.len());
    // A BTreeMap<String, _> iterates in the order of its keys' UTF-8 bytes.
    for (key, value) in context {
        push_len(&mut out, key.len());
        out.extend_from_slice(key.as_bytes());
        push_len(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Appends `len` as 4 bytes big-endian (saturated: a longer string cannot
/// come from a command line, and would not decode).
fn push_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// Reads a context [`encode_context`] wrote from the front of `bytes`;
/// returns it and the bytes after it. Only the canonical encoding is
/// accepted (keys strictly increasing, UTF-8), so one context has one
/// encoding.
pub fn decode_context_prefix(bytes: &[u8]) -> Result<(EncryptionContext, &[u8]), StanzaError> {
    let mut rest = bytes;
    let count = take_len(&mut rest)?;
    let mut context = EncryptionContext::new();
    for _ in 0..count {
        let key = take_string(&mut rest)?;
        let value = take_string(&mut rest)?;
        if context
            .last_key_value()
            .is_some_and(|(last, _)| *last >= key)
        {
            return Err(StanzaError(
                "the context's keys are not in canonical (sorted, unique) order".to_string(),
            ));
        }
        context.insert(key, value);
    }
    Ok((context, rest))
}

/// [`decode_context_prefix`] of all of `bytes`.
pub fn decode_context(bytes: &[u8]) -> Result<EncryptionContext, StanzaError> {
    match decode_context_prefix(bytes)? {
        (context, []) => Ok(context),
        _ => Err(StanzaError("bytes follow the encoded context".to_string())),
    }
}

/// Takes a 4-byte big-endian length off the front of `rest`.
fn take_len(rest: &mut &[u8]) -> Result<usize, StanzaError> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| StanzaError("the encoded context is cut short".to_string()))?;
    *rest = tail;
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if len > MAX_STRING {
        return Err(StanzaError(format!(
            "the encoded context claims {len} bytes"
        )));
    }
    Ok(len)
}

/// Takes a length-prefixed UTF-8 string off the front of `rest`.
fn take_string(rest: &mut &[u8]) -> Result<String, StanzaError> {
    let len = take_len(rest)?;
    if rest.len() < len {
        return Err(StanzaError("the encoded context is cut short".to_string()));
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StanzaError("the context holds a string that is not UTF-8".to_string()))
}

/// The stanza argument recording `context`.
pub fn context_arg(context: &EncryptionContext) -> String {
    STANDARD_NO_PAD.encode(encode_context(context))
}

/// A `hostkms` stanza as read from a header: the context it records and
/// the hostkms ciphertext of the file key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostkmsStanza {
    /// The encryption context the file key was wrapped with.
    pub context: EncryptionContext,
    /// The daemon's ciphertext of the file key.
    pub ciphertext: Vec<u8>,
}

impl HostkmsStanza {
    /// Reads `stanza`: `None` when it is not a `hostkms` stanza (another
    /// recipient's, which age files may hold too), an error when it is one
    /// but malformed.
    pub fn parse(stanza: &Stanza) -> Option<Result<HostkmsStanza, StanzaError>> {
        if stanza.tag != TAG {
            return None;
        }
        Some(Self::parse_ours(stanza))
    }

    /// [`Self::parse`] of a stanza whose tag is ours.
    fn parse_ours(stanza: &Stanza) -> Result<HostkmsStanza, StanzaError> {
        let [arg] = stanza.args.as_slice() else {
            return Err(StanzaError(format!(
                "{} arguments, where there is one (the context)",
                stanza.args.len()
            )));
        };
        let encoded = STANDARD_NO_PAD
            .decode(arg)
            .map_err(|e| StanzaError(format!("its context is not unpadded base64 ({e})")))?;
        let context = decode_context(&encoded)?;
        if stanza.body.is_empty() {
            return Err(StanzaError("its body is empty".to_string()));
        }
        Ok(HostkmsStanza {
            context,
            ciphertext: stanza.body.clone(),
        })
    }

    /// The stanza to write in a header.
    pub fn to_stanza(&self) -> Stanza {
        Stanza {
            tag: TAG.to_string(),
            args: vec![context_arg(&self.context)],
            body: self.ciphertext.clone(),
        }
    }
}

/// What the daemon said it used (the key's name and version), and the
/// context the file key is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsed {
    /// The key's name.
    pub key: String,
    /// The key version.
    pub version: u32,
    /// The encryption context.
    pub context: EncryptionContext,
}

/// The daemon behind an [`age::Recipient`] or [`age::Identity`]: age's
/// traits take `&self` and have no room for our errors, so the client, what
/// the daemon used and the failure are kept in cells, read after age is done.
pub struct DaemonCall<'a, E> {
    client: RefCell<&'a mut Client>,
    used: RefCell<Option<KeyUsed>>,
    error: RefCell<Option<E>>,
}

impl<'a, E> DaemonCall<'a, E> {
    /// Calls through `client`.
    pub fn new(client: &'a mut Client) -> DaemonCall<'a, E> {
        DaemonCall {
            client: RefCell::new(client),
            used: RefCell::new(None),
            error: RefCell::new(None),
        }
    }

    /// Runs `call` with the client: its value, or `None` when it failed
    /// (the failure kept for [`Self::take_error`]).
    pub fn run<T>(&self, call: impl FnOnce(&mut Client) -> Result<(T, KeyUsed), E>) -> Option<T> {
        let mut client = self.client.borrow_mut();
        match call(&mut client) {
            Ok((value, used)) => {
                *self.used.borrow_mut() = Some(used);
                Some(value)
            }
            Err(err) => {
                *self.error.borrow_mut() = Some(err);
                None
            }
        }
    }

    /// The failure of the last call, once.
    pub fn take_error(&self) -> Option<E> {
        self.error.borrow_mut().take()
    }

    /// The key, version and context the daemon used.
    pub fn used(&self) -> Option<KeyUsed> {
        self.used.borrow().clone()
    }
}

/// Wraps `file_key` through the daemon under key `key` with `context` (one
/// `Wrap` request, audited by the daemon as any wrap): the stanza to write.
pub fn wrap_file_key(
    client: &mut Client,
    key: &str,
    context: &EncryptionContext,
    file_key: &FileKey,
) -> Result<(Stanza, KeyUsed), ClientError> {
    use age_core::secrecy::ExposeSecret;
    let wrapped = client.wrap(key, file_key.expose_secret(), context)?;
    let stanza = HostkmsStanza {
        context: context.clone(),
        ciphertext: wrapped.ciphertext.as_bytes().to_vec(),
    };
    let used = KeyUsed {
        key: wrapped.key,
        version: wrapped.version,
        context: context.clone(),
    };
    Ok((stanza.to_stanza(), used))
}

/// Why a stanza's file key could not be unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum UnwrapError {
    /// The daemon refused, or could not be reached.
    #[error(transparent)]
    Daemon(#[from] ClientError),
    /// The daemon's plaintext is not a file key.
    #[error(
        "the hostkms stanza holds {0} bytes where an age file key is {FILE_KEY_BYTES}: \
         this is not an age file hostkms made"
    )]
    NotAFileKey(usize),
}

/// Unwraps a stanza's file key through the daemon with the context the
/// stanza records (one `Unwrap` request, audited by the daemon; it needs an
/// `unwrap` grant on the file's key). With `key`, the daemon refuses a file
/// key wrapped under any other key.
pub fn unwrap_file_key(
    client: &mut Client,
    stanza: &HostkmsStanza,
    key: Option<&str>,
) -> Result<(FileKey, KeyUsed), UnwrapError> {
    let unwrapped = client.unwrap(&stanza.ciphertext, &stanza.context, key)?;
    let plaintext = unwrapped.plaintext.expose();
    let file_key = FileKey::try_init_with_mut(|key| {
        if plaintext.len() != FILE_KEY_BYTES {
            return Err(UnwrapError::NotAFileKey(plaintext.len()));
        }
        key.copy_from_slice(plaintext);
        Ok(())
    })?;
    let used = KeyUsed {
        key: unwrapped.key.clone(),
        version: unwrapped.version,
        context: stanza.context.clone(),
    };
    Ok((file_key, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_context_is_four_zero_bytes() {
        assert_eq!(encode_context(&EncryptionContext::new()), [0, 0, 0, 0]);
        assert_eq!(context_arg(&EncryptionContext::new()), "AAAAAA");
    }

    #[test]
    fn a_context_is_encoded_sorted_and_decodes_back() {
        let ctx = EncryptionContext::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "x=y".to_string()),
        ]);
        let bytes = encode_context(&ctx);
        assert_eq!(
            bytes,
            [
                &[0, 0, 0, 2][..],
                &[0, 0, 0, 1],
                b"a",
                &[0, 0, 0, 3],
                b"x=y",
                &[0, 0, 0, 1],
                b"b",
                &[0, 0, 0, 1],
                b"2"
            ]
            .concat()
        );
        assert_eq!(decode_context(&bytes).expect("decodes"), ctx);
        assert!(!context_arg(&ctx).contains(char::is_whitespace));
    }

    #[test]
    fn only_the_canonical_encoding_decodes() {
        // Two pairs with empty values and one-byte keys, in this order.
        let two_keys = |first: u8, second: u8| {
            [
                &[0, 0, 0, 2][..],
                &[0, 0, 0, 1, first, 0, 0, 0, 0],
                &[0, 0, 0, 1, second, 0, 0, 0, 0],
            ]
            .concat()
        };
        assert!(decode_context(&two_keys(b'a', b'b')).is_ok());
        assert!(decode_context(&two_keys(b'b', b'a')).is_err(), "unsorted");
        assert!(
            decode_context(&two_keys(b'a', b'a')).is_err(),
            "a key twice"
        );
        assert!(decode_context(&[0, 0, 0, 1]).is_err());
        assert!(decode_context(&[0, 0, 0, 0, 9]).is_err());
        assert!(decode_context(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn stanzas_round_trip_and_others_are_not_ours() {
        let ours = HostkmsStanza {
            context: EncryptionContext::from([("app".to_string(), "db".to_string())]),
            ciphertext: vec![1, 2, 3],
        };
        let stanza = ours.to_stanza();
        assert_eq!(stanza.tag, "hostkms");
        assert_eq!(HostkmsStanza::parse(&stanza), Some(Ok(ours)));
        let other = Stanza {
            tag: "X25519".to_string(),
            args: vec!["abc".to_string()],
            body: vec![0; 32],
        };
        assert_eq!(HostkmsStanza::parse(&other), None);
        let bad = Stanza {
            tag: "hostkms".to_string(),
            args: vec![],
            body: vec![1],
        };
        assert!(matches!(HostkmsStanza::parse(&bad), Some(Err(_))));
    }
}
