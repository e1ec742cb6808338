//! The PIN that opens a root key sealed with one (protocol version 6): the
//! one rule the CLI checks before sending and the daemon checks on
//! receipt.
//!
//! A PIN is raw UTF-8 of [`MIN_PIN_BYTES`] to [`MAX_PIN_BYTES`] bytes: the
//! TPM's authValue is exactly these bytes, so `tpm2_unseal -p <PIN>` opens
//! the same copy with the same string. Read from a file or a pipe, one
//! trailing newline (`"\n"` or `"\r\n"`) is not part of it.

use std::fmt;

use zeroize::Zeroizing;

use crate::bytes::SecretBytes;

/// Fewest bytes in a PIN.
pub const MIN_PIN_BYTES: usize = 8;

/// Most bytes in a PIN (the TPM's authValue holds at most a digest of the
/// object's name algorithm, 32 bytes for sha256).
pub const MAX_PIN_BYTES: usize = 32;

/// A PIN that follows the rule: wiped on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct Pin(Zeroizing<Vec<u8>>);

/// Why some bytes are not a PIN. The messages state the rule and never
/// show the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Fewer than [`MIN_PIN_BYTES`] bytes.
    #[error(
        "the PIN has {len} bytes; a PIN is {MIN_PIN_BYTES} to {MAX_PIN_BYTES} bytes of UTF-8 (one trailing newline is not counted): choose a longer one"
    )]
    TooShort {
        /// The PIN's length in bytes, after the trailing newline was stripped.
        len: usize,
    },
    /// More than [`MAX_PIN_BYTES`] bytes.
    #[error(
        "the PIN has {len} bytes; a PIN is {MIN_PIN_BYTES} to {MAX_PIN_BYTES} bytes of UTF-8 (one trailing newline is not counted): choose a shorter one"
    )]
    TooLong {
        /// The PIN's length in bytes, after the trailing newline was stripped.
        len: usize,
    },
    /// Not valid UTF-8.
    #[error(
        "the PIN is not valid UTF-8; a PIN is {MIN_PIN_BYTES} to {MAX_PIN_BYTES} bytes of UTF-8 (one trailing newline is not counted), so that `tpm2_unseal -p` takes the same string"
    )]
    NotUtf8,
    /// A control character (NUL, a newline inside, escape...). The TPM
    /// drops trailing NUL bytes of an authValue, so a PIN of NULs would be
    /// no PIN at all; and none can be typed reliably.
    #[error(
        "the PIN holds a control character (such as NUL or a newline inside it); a PIN is {MIN_PIN_BYTES} to {MAX_PIN_BYTES} bytes of printable UTF-8"
    )]
    ControlCharacter,
}

impl Pin {
    /// A PIN as a person or a file gives it: exactly one trailing `"\n"` or
    /// `"\r\n"` is stripped, and the rest must be valid UTF-8 of
    /// [`MIN_PIN_BYTES`] to [`MAX_PIN_BYTES`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Pin, PinError> {
        let bytes = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        Pin::exact(bytes)
    }

    /// A PIN as it travels in a request: the same rule as [`Pin::parse`],
    /// but nothing is stripped (the client stripped the newline).
    pub fn exact(bytes: &[u8]) -> Result<Pin, PinError> {
        match bytes.len() {
            len if len < MIN_PIN_BYTES => return Err(PinError::TooShort { len }),
            len if len > MAX_PIN_BYTES => return Err(PinError::TooLong { len }),
            _ => {}
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(PinError::NotUtf8);
        };
        if text.chars().any(char::is_control) {
            return Err(PinError::ControlCharacter);
        }
        Ok(Pin(Zeroizing::new(bytes.to_vec())))
    }

    /// The PIN's bytes (the TPM's authValue). Keep the borrow short and
    /// never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The PIN as a request field.
    pub fn to_secret(&self) -> SecretBytes {
        SecretBytes::from(self.expose())
    }

    /// Whether two PINs are the same, compared in constant time (a PIN
    /// asked twice).
    pub fn same_as(&self, other: &Pin) -> bool {
        self.to_secret() == other.to_secret()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_nul_above_all() {
        // The TPM strips trailing NULs of an authValue: eight NULs would be
        // no PIN, and "ab" and six NULs a two-character one.
        for bad in [
            &b"\0\0\0\0\0\0\0\0"[..],
            b"ab\0\0\0\0\0\0",
            b"abc\ndefgh",
            b"abcdefg\x1b",
            b"\tabcdefgh",
        ] {
            assert_eq!(
                Pin::exact(bad).err(),
                Some(PinError::ControlCharacter),
                "{bad:?}"
            );
        }
        assert!(Pin::exact("pässwörd ok".as_bytes()).is_ok());
    }

    #[test]
    fn one_trailing_newline_is_stripped() {
        assert_eq!(Pin::parse(b"12345678\n").unwrap().expose(), b"12345678");
        assert_eq!(Pin::parse(b"12345678\r\n").unwrap().expose(), b"12345678");
        assert_eq!(Pin::parse(b"12345678").unwrap().expose(), b"12345678");
        // Only one: a second newline stays, and a PIN holds no control
        // character; nor is a lone carriage return a newline.
        assert_eq!(
            Pin::parse(b"12345678\n\n").err(),
            Some(PinError::ControlCharacter)
        );
        assert_eq!(
            Pin::parse(b"12345678\r").err(),
            Some(PinError::ControlCharacter)
        );
    }

    #[test]
    fn the_length_is_counted_in_bytes_after_stripping() {
        assert_eq!(
            Pin::parse(b"1234567\n").unwrap_err(),
            PinError::TooShort { len: 7 }
        );
        assert_eq!(Pin::parse(b"").unwrap_err(), PinError::TooShort { len: 0 });
        assert_eq!(
            Pin::parse(b"\n").unwrap_err(),
            PinError::TooShort { len: 0 }
        );
        assert!(Pin::parse(&[b'a'; 32]).is_ok());
        let mut long = vec![b'a'; 32];
        long.push(b'\n');
        assert!(Pin::parse(&long).is_ok(), "32 bytes and a newline");
        assert_eq!(
            Pin::parse(&[b'a'; 33]).unwrap_err(),
            PinError::TooLong { len: 33 }
        );
        // Four 2-byte characters are 8 bytes: enough.
        assert!(Pin::parse("éééé".as_bytes()).is_ok());
        assert_eq!(
            Pin::parse("ééé".as_bytes()).unwrap_err(),
            PinError::TooShort { len: 6 }
        );
    }

    #[test]
    fn a_pin_must_be_utf8() {
        assert_eq!(Pin::parse(b"12345678\xff").unwrap_err(), PinError::NotUtf8);
    }

    #[test]
    fn exact_strips_nothing() {
        // The newline a file ends with is not stripped, and then refused.
        assert_eq!(
            Pin::exact(b"12345678\n").err(),
            Some(PinError::ControlCharacter)
        );
        assert_eq!(Pin::exact(b"12345678").unwrap().expose(), b"12345678");
    }

    #[test]
    fn errors_state_the_rule_and_never_the_pin() {
        for (bytes, hint) in [
            (&b"secret1"[..], "longer"),
            (&[b's'; 40][..], "shorter"),
            (&b"secret12\xff"[..], "UTF-8"),
        ] {
            let message = Pin::parse(bytes).unwrap_err().to_string();
            assert!(message.contains("8 to 32 bytes of UTF-8"), "{message}");
            assert!(message.contains(hint), "{message}");
            assert!(!message.contains("secret"), "{message}");
            assert!(!message.contains("sss"), "{message}");
        }
    }

    #[test]
    fn debug_is_redacted_and_equality_is_by_value() {
        let pin = Pin::parse(b"correct horse\n").unwrap();
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
        assert!(pin.same_as(&Pin::parse(b"correct horse").unwrap()));
        assert!(!pin.same_as(&Pin::parse(b"correct horsf").unwrap()));
        assert_eq!(pin.to_secret().expose(), b"correct horse");
    }
}
