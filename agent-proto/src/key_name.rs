//! The rule every key name follows: 1 to 128 characters from `A-Z a-z 0-9
//! . _ -` (`[A-Za-z0-9._-]{1,128}`). The daemon refuses to create any other
//! name, so a name that breaks the rule names no key; it is also safe to
//! print and log as it is. Specified in this crate's README ("Key names").

/// The longest key name, in characters (all ASCII, so also in bytes).
pub const MAX_LEN: usize = 128;

/// How many characters of a refused name its error shows.
const SHOWN_CHARS: usize = 64;

/// A name that breaks the key-name rule. Its message shows the name's
/// first 64 characters, escaped, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown:?} is not a valid key name: use 1 to {MAX_LEN} characters from A-Z a-z 0-9 . _ -")]
pub struct KeyNameError {
    /// The refused name, cut to its first 64 characters.
    shown: String,
}

/// Whether `byte` may appear in a key name.
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// Checks `name` against the key-name rule.
pub fn check(name: &str) -> Result<(), KeyNameError> {
    if (1..=MAX_LEN).contains(&name.len()) && name.bytes().all(is_name_byte) {
        return Ok(());
    }
    Err(KeyNameError {
        shown: name.chars().take(SHOWN_CHARS).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_allowed_characters_are_accepted() {
        for name in [
            "a",
            "app-db",
            "App_DB.v2",
            "0",
            "...",
            "-",
            "_x_",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-",
        ] {
            assert_eq!(check(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn length_is_1_to_128() {
        assert!(check("").is_err());
        assert_eq!(check(&"k".repeat(128)), Ok(()));
        assert!(check(&"k".repeat(129)).is_err());
        assert!(check(&"k".repeat(100_000)).is_err());
    }

    #[test]
    fn any_other_character_is_refused() {
        for name in [
            "app db",
            "app/db",
            "app\0",
            "app\n",
            "a:b",
            "a+b",
            "a*",
            "a=b",
            "\"",
            "é",
            "ключ",
            "k\u{200b}",
            "🔑",
        ] {
            assert!(check(name).is_err(), "{name:?}");
        }
        for byte in 0..=127u8 {
            let allowed = byte.is_ascii_alphanumeric() || b"._-".contains(&byte);
            let name = format!("k{}", char::from(byte));
            assert_eq!(check(&name).is_ok(), allowed, "{byte:#04x}");
            assert_eq!(is_name_byte(byte), allowed, "{byte:#04x}");
        }
        // 128 characters, but more than 128 bytes: still refused.
        assert!(check(&"é".repeat(64)).is_err());
    }

    #[test]
    fn the_error_shows_the_name_escaped_and_cut() {
        assert_eq!(
            check("bad name\n").map_err(|e| e.to_string()),
            Err(
                "\"bad name\\n\" is not a valid key name: use 1 to 128 characters from A-Z a-z 0-9 . _ -"
                    .to_string()
            )
        );
        let long = format!("{}{}", "x".repeat(64), "y".repeat(100));
        let message = check(&long).map_err(|e| e.to_string()).unwrap_err();
        assert!(
            message.starts_with(&format!("{:?} is", "x".repeat(64))),
            "{message}"
        );
        assert!(!message.contains("xy"), "{message}");
    }
}
