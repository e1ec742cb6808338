//! The ciphertext format's header: the one definition the daemon (which
//! writes and authenticates ciphertexts) and the clients (which recognise
//! them and read which key made them) share.
//!
//! ```text
//! "HKMS" | format u8 = 1 | key id [16] | version u32 BE | nonce [12] | ciphertext | tag [16]
//! ```
//!
//! Everything in the header is public: reading it needs no key, and says
//! only which key and version made the ciphertext. Whether the rest
//! authenticates only the daemon can tell. The layout is specified in this
//! crate's README ("Ciphertexts").

/// The bytes every ciphertext starts with.
pub const MAGIC: [u8; 4] = *b"HKMS";

/// The format byte of the layout above; a ciphertext of another format is
/// refused rather than guessed at.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of the key id: a key's random 128-bit id, given at creation.
pub const KEY_ID_LEN: usize = 16;

/// Bytes of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// Bytes of the AES-GCM tag that ends every ciphertext.
pub const TAG_LEN: usize = 16;

/// Bytes of the header: magic, format, key id, version, nonce (37). The
/// daemon authenticates all of them with the ciphertext.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN + 4 + NONCE_LEN;

/// Bytes a ciphertext adds to its plaintext: the header and the tag. No
/// ciphertext is shorter.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Offsets of the header's fields.
const FORMAT_AT: usize = MAGIC.len();
const KEY_ID_AT: usize = FORMAT_AT + 1;
const VERSION_AT: usize = KEY_ID_AT + KEY_ID_LEN;
const NONCE_AT: usize = VERSION_AT + 4;

/// The header of a ciphertext: which key and version made it, and its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The id of the key that made the ciphertext (`KeyInfo::id`).
    pub key_id: [u8; KEY_ID_LEN],
    /// The key version that made it.
    pub version: u32,
    /// The AES-GCM nonce, fresh for every ciphertext.
    pub nonce: [u8; NONCE_LEN],
}

/// Why bytes are not a ciphertext of this format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The bytes do not start with [`MAGIC`]: not a hostkms ciphertext.
    #[error("not a hostkms ciphertext: it does not start with \"HKMS\"")]
    BadMagic,
    /// A hostkms ciphertext of a format this library does not know.
    #[error(
        "a hostkms ciphertext of format {0}, which this version does not know (it knows format {FORMAT_VERSION})"
    )]
    UnsupportedFormat(u8),
    /// Fewer bytes than the smallest ciphertext ([`OVERHEAD`]).
    #[error(
        "a truncated hostkms ciphertext: {len} bytes, fewer than the {OVERHEAD} of an empty one"
    )]
    TooShort {
        /// How many bytes there were.
        len: usize,
    },
}

impl Header {
    /// Reads the header of `ciphertext`, a whole ciphertext (header, body
    /// and tag). Bytes that contradict the magic are [`HeaderError::BadMagic`]
    /// and then a wrong format byte [`HeaderError::UnsupportedFormat`], even
    /// when the input is short; anything shorter than [`OVERHEAD`] is
    /// otherwise [`HeaderError::TooShort`]. Never panics.
    pub fn parse(ciphertext: &[u8]) -> Result<Header, HeaderError> {
        let len = ciphertext.len();
        let seen = len.min(MAGIC.len());
        if ciphertext.get(..seen) != MAGIC.get(..seen) {
            return Err(HeaderError::BadMagic);
        }
        match ciphertext.get(FORMAT_AT) {
            Some(&format) if format != FORMAT_VERSION => {
                return Err(HeaderError::UnsupportedFormat(format));
            }
            _ => {}
        }
        let too_short = HeaderError::TooShort { len };
        if len < OVERHEAD {
            return Err(too_short);
        }
        Ok(Header {
            key_id: field(ciphertext, KEY_ID_AT).ok_or(too_short)?,
            version: u32::from_be_bytes(field(ciphertext, VERSION_AT).ok_or(too_short)?),
            nonce: field(ciphertext, NONCE_AT).ok_or(too_short)?,
        })
    }

    /// The header's [`HEADER_LEN`] bytes, as a ciphertext starts.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..FORMAT_AT].copy_from_slice(&MAGIC);
        bytes[FORMAT_AT] = FORMAT_VERSION;
        bytes[KEY_ID_AT..VERSION_AT].copy_from_slice(&self.key_id);
        bytes[VERSION_AT..NONCE_AT].copy_from_slice(&self.version.to_be_bytes());
        bytes[NONCE_AT..].copy_from_slice(&self.nonce);
        bytes
    }
}

/// The `N` bytes of `bytes` from offset `at`, if there are that many.
fn field<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..)?.first_chunk::<N>().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            key_id: [0x11; 16],
            version: 1,
            nonce: [0x22; 12],
        }
    }

    /// The example ciphertext of the README's response frame, as bytes.
    fn readme_ciphertext() -> Vec<u8> {
        let mut bytes = b"HKMS\x01".to_vec();
        bytes.extend_from_slice(&[0x11; 16]);
        bytes.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]);
        bytes.extend_from_slice(&[0x22; 12]);
        bytes.extend_from_slice(&[0x33; 5]);
        bytes.extend_from_slice(&[0x44; 16]);
        bytes
    }

    #[test]
    fn the_layout_is_the_specified_one() {
        assert_eq!(HEADER_LEN, 37);
        assert_eq!(OVERHEAD, 53);
        let blob = readme_ciphertext();
        assert_eq!(sample().to_bytes()[..], blob[..HEADER_LEN]);
        assert_eq!(Header::parse(&blob), Ok(sample()));
    }

    #[test]
    fn headers_round_trip() {
        let header = Header {
            key_id: *b"0123456789abcdef",
            version: 0x0102_0304,
            nonce: *b"nonce-twelve",
        };
        let mut blob = header.to_bytes().to_vec();
        assert_eq!(&blob[21..25], &[1, 2, 3, 4], "version is big-endian");
        blob.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(blob.len(), OVERHEAD);
        assert_eq!(Header::parse(&blob), Ok(header));
        let version_max = Header {
            version: u32::MAX,
            ..header
        };
        let mut blob = version_max.to_bytes().to_vec();
        blob.extend_from_slice(&[0xff; TAG_LEN + 100]);
        assert_eq!(Header::parse(&blob), Ok(version_max));
    }

    #[test]
    fn short_input_is_too_short() {
        let blob = readme_ciphertext();
        for len in [0, 1, 3, 4, 5, 20, HEADER_LEN, OVERHEAD - 1] {
            assert_eq!(
                Header::parse(&blob[..len]),
                Err(HeaderError::TooShort { len }),
                "{len} bytes"
            );
        }
        assert!(Header::parse(&blob[..OVERHEAD]).is_ok());
    }

    #[test]
    fn other_bytes_are_not_a_ciphertext() {
        let mut blob = readme_ciphertext();
        for i in 0..MAGIC.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x20;
            assert_eq!(Header::parse(&bad), Err(HeaderError::BadMagic), "byte {i}");
            assert_eq!(
                Header::parse(&bad[..i + 1]),
                Err(HeaderError::BadMagic),
                "{} bytes",
                i + 1
            );
        }
        assert_eq!(Header::parse(b"{\"json\": 1}"), Err(HeaderError::BadMagic));
        blob[..4].copy_from_slice(b"hkms");
        assert_eq!(Header::parse(&blob), Err(HeaderError::BadMagic));
    }

    #[test]
    fn another_format_is_refused() {
        for format in [0, 2, 0xff] {
            let mut blob = readme_ciphertext();
            blob[4] = format;
            assert_eq!(
                Header::parse(&blob),
                Err(HeaderError::UnsupportedFormat(format))
            );
            assert_eq!(
                Header::parse(&blob[..5]),
                Err(HeaderError::UnsupportedFormat(format)),
                "short, but the format byte is there"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_panic(
            prefix in 0usize..3,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            // Random bytes, or after the magic, or after magic and format.
            let prefix: &[u8] = [&b""[..], &MAGIC[..], &b"HKMS\x01"[..]][prefix];
            let bytes = [prefix, &tail].concat();
            match Header::parse(&bytes) {
                Ok(header) => {
                    proptest::prop_assert!(bytes.len() >= OVERHEAD);
                    proptest::prop_assert_eq!(&header.to_bytes()[..], &bytes[..HEADER_LEN]);
                }
                Err(HeaderError::BadMagic) => {
                    let seen = bytes.len().min(4);
                    proptest::prop_assert_ne!(&bytes[..seen], &MAGIC[..seen]);
                }
                Err(HeaderError::UnsupportedFormat(format)) => {
                    proptest::prop_assert_eq!(&bytes[..4], &MAGIC[..]);
                    proptest::prop_assert_eq!(bytes[4], format);
                    proptest::prop_assert_ne!(format, FORMAT_VERSION);
                }
                Err(HeaderError::TooShort { len }) => {
                    proptest::prop_assert_eq!(len, bytes.len());
                    proptest::prop_assert!(len < OVERHEAD);
                }
            }
        }

        #[test]
        fn every_header_round_trips_whatever_follows(
            key_id in proptest::array::uniform16(proptest::num::u8::ANY),
            version in proptest::num::u32::ANY,
            nonce in proptest::array::uniform12(proptest::num::u8::ANY),
            rest in proptest::collection::vec(proptest::num::u8::ANY, TAG_LEN..100),
        ) {
            let header = Header { key_id, version, nonce };
            let mut blob = header.to_bytes().to_vec();
            blob.extend_from_slice(&rest);
            proptest::prop_assert_eq!(Header::parse(&blob), Ok(header));
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            HeaderError::TooShort { len: 7 }.to_string(),
            "a truncated hostkms ciphertext: 7 bytes, fewer than the 53 of an empty one"
        );
        assert!(
            HeaderError::UnsupportedFormat(2)
                .to_string()
                .contains("format 2")
        );
        assert!(HeaderError::BadMagic.to_string().contains("HKMS"));
    }
}
