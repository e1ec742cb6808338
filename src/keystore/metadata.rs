//! The rules for what a key carries besides its material: description,
//! tags and rotation period. Checked here, and only here, for a new key,
//! an update, and every row and record read back, so each limit has one
//! definition and one message.

use std::collections::BTreeMap;

use agent_proto::{MAX_DESCRIPTION_BYTES, MAX_TAGS};

pub use agent_proto::period::MAX_ROTATION_PERIOD_SECS;

use super::StoreError;

/// Longest tag name, in bytes.
pub const MAX_TAG_NAME_BYTES: usize = 64;

/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_BYTES: usize = 256;

/// What a new key starts with besides its name and type, resolved (a
/// daemon default already applied) and checked by the store at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewKeySettings {
    /// Seconds between rotations by age; `None`: never by age.
    pub rotation_period: Option<u64>,
    /// Free text for humans.
    pub description: String,
    /// Tags, by name.
    pub tags: BTreeMap<String, String>,
}

/// When a key pending deletion is deleted: once both have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionDue {
    /// The wall-clock date, seconds since the Unix epoch.
    pub wall: u64,
    /// The daemon clock ([`super::KeyStore::daemon_clock`]) it needs.
    pub elapsed: u64,
}

/// Checks a description: at most [`MAX_DESCRIPTION_BYTES`] bytes, none of
/// the characters [`agent_proto::text::is_display_control`] names.
pub fn check_description(description: &str) -> Result<(), StoreError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "the description is {} bytes; the limit is {MAX_DESCRIPTION_BYTES} bytes of UTF-8",
            description.len()
        )));
    }
    check_text("the description", description)
}

/// Checks one tag: name `[A-Za-z0-9._-]{1,64}`, value at most
/// [`MAX_TAG_VALUE_BYTES`] bytes, none of the characters
/// [`agent_proto::text::is_display_control`] names.
pub fn check_tag(name: &str, value: &str) -> Result<(), StoreError> {
    check_tag_name(name)?;
    if value.len() > MAX_TAG_VALUE_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "the value of tag {name:?} is {} bytes; the limit is {MAX_TAG_VALUE_BYTES} bytes of UTF-8",
            value.len()
        )));
    }
    check_text(&format!("the value of tag {name:?}"), value)
}

/// Refuses `text` (`what`, for the message) when it holds a character that
/// changes how text is shown without showing itself
/// ([`agent_proto::text::is_display_control`]: controls, Unicode format
/// characters such as bidi overrides and zero-width spaces, line and
/// paragraph separators), naming the first one by its code point.
fn check_text(what: &str, text: &str) -> Result<(), StoreError> {
    let Some(c) = text
        .chars()
        .find(|&c| agent_proto::text::is_display_control(c))
    else {
        return Ok(());
    };
    let kind = if c.is_control() {
        "a control character (newlines and tabs included)"
    } else if matches!(c, '\u{2028}' | '\u{2029}') {
        "a line or paragraph separator"
    } else {
        "an invisible Unicode format character (a bidi override or isolate, a zero-width \
         character or the like, which can make text read other than it is)"
    };
    Err(StoreError::InvalidArgument(format!(
        "{what} contains U+{:04X}, {kind}; use plain text on one line",
        u32::from(c)
    )))
}

/// Checks a tag name: `[A-Za-z0-9._-]{1,64}`.
pub fn check_tag_name(name: &str) -> Result<(), StoreError> {
    let valid = (1..=MAX_TAG_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "tag name {name:?} is not 1 to {MAX_TAG_NAME_BYTES} of the characters A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Checks a key's whole set of tags: each tag, and at most [`MAX_TAGS`].
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
    for (name, value) in tags {
        check_tag(name, value)?;
    }
    if tags.len() > MAX_TAGS {
        return Err(StoreError::InvalidArgument(format!(
            "a key may have at most {MAX_TAGS} tags; this would give it {}",
            tags.len()
        )));
    }
    Ok(())
}

/// Checks a rotation period: `None` (never by age), or within the bounds
/// of [`agent_proto::period::check_period`] (1h to 100y), the one rule the
/// CLI and the config's `rotation_period` follow too.
pub fn check_rotation_period(period: Option<u64>) -> Result<(), StoreError> {
    match period {
        Some(secs) => agent_proto::period::check_period(secs)
            .map_err(|e| StoreError::InvalidArgument(e.to_string())),
        None => Ok(()),
    }
}

/// Checks a key's settings against every limit: the one check a new key,
/// a stored row and a key arriving from a record or an import all pass.
pub fn check_settings(
    description: &str,
    tags: &BTreeMap<String, String>,
    rotation_period: Option<u64>,
) -> Result<(), StoreError> {
    check_description(description)?;
    check_tags(tags)?;
    check_rotation_period(rotation_period)
}

/// `tags` with `set` added or replaced and `remove` taken away (a name
/// both set and removed is removed), checked as a whole.
pub fn updated_tags(
    tags: &BTreeMap<String, String>,
    set: BTreeMap<String, String>,
    remove: &[String],
) -> Result<BTreeMap<String, String>, StoreError> {
    for name in remove {
        check_tag_name(name)?;
    }
    let mut next = tags.clone();
    next.extend(set);
    for name in remove {
        next.remove(name);
    }
    check_tags(&next)?;
    Ok(next)
}

/// The canonical encoding of `tags` (what the `keys.tags` column holds and
/// the row MAC covers): the count, then each name and value in name order,
/// each length-prefixed (big-endian u32). Empty tags encode as nothing.
pub fn encode_tags(tags: &BTreeMap<String, String>) -> Vec<u8> {
    if tags.is_empty() {
        return Vec::new();
    }
    let mut out = (tags.len() as u32).to_be_bytes().to_vec();
    for (name, value) in tags {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Decodes [`encode_tags`]' output, refusing anything it would not write
/// (trailing bytes, names out of order or repeated, tags breaking the
/// rules); the error says what is wrong, worded to follow "the row of
/// key K".
pub fn decode_tags(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    if bytes.is_empty() {
        return Ok(tags);
    }
    let mut rest = bytes;
    let count = take_u32(&mut rest)?;
    if count == 0 || count as usize > MAX_TAGS {
        return Err(format!("has a tag count of {count}"));
    }
    let mut last: Option<String> = None;
    for _ in 0..count {
        let name = take_str(&mut rest, MAX_TAG_NAME_BYTES)?;
        let value = take_str(&mut rest, MAX_TAG_VALUE_BYTES)?;
        if last.as_deref().is_some_and(|last| last >= name.as_str()) {
            return Err("has tags out of name order".to_string());
        }
        check_tag(&name, &value).map_err(|e| format!("has a tag breaking a limit: {e}"))?;
        last = Some(name.clone());
        tags.insert(name, value);
    }
    if !rest.is_empty() {
        return Err("has tags with trailing bytes".to_string());
    }
    Ok(tags)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, String> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err("has tags cut short".to_string());
    };
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(rest: &mut &[u8], max: usize) -> Result<String, String> {
    let len = take_u32(rest)? as usize;
    if len > max || len > rest.len() {
        return Err("has tags cut short or too long".to_string());
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(head.to_vec()).map_err(|_| "has a tag that is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn refused(result: Result<(), StoreError>, limit: &str) {
        match result {
            Err(StoreError::InvalidArgument(message)) => {
                assert!(message.contains(limit), "{message:?} lacks {limit:?}")
            }
            other => panic!("expected InvalidArgument naming {limit:?}, got {other:?}"),
        }
    }

    #[test]
    fn each_limit_is_refused_by_name() {
        check_description(&"d".repeat(MAX_DESCRIPTION_BYTES)).unwrap();
        refused(
            check_description(&"d".repeat(MAX_DESCRIPTION_BYTES + 1)),
            "1024 bytes",
        );
        refused(check_description("two\nlines"), "control character");
        check_tag(&"n".repeat(64), &"v".repeat(256)).unwrap();
        refused(check_tag(&"n".repeat(65), "v"), "1 to 64");
        refused(check_tag("", "v"), "1 to 64");
        refused(check_tag("a b", "v"), "1 to 64");
        refused(check_tag("n", &"v".repeat(257)), "256 bytes");
        refused(check_tag("n", "bell\u{7}"), "control character");
        let many: BTreeMap<String, String> = (0..=MAX_TAGS)
            .map(|i| (format!("t{i}"), String::new()))
            .collect();
        refused(check_tags(&many), "at most 32 tags");
        refused(check_rotation_period(Some(3599)), "minimum of 1h");
        refused(
            check_rotation_period(Some(MAX_ROTATION_PERIOD_SECS + 1)),
            "maximum of 100y",
        );
        check_rotation_period(Some(3600)).unwrap();
        check_rotation_period(None).unwrap();
    }

    #[test]
    fn characters_that_hide_or_reorder_text_are_refused_by_code_point() {
        for (text, point) in [
            ("safe key \u{202E}gnp.exe\u{202C}", "U+202E"),
            ("ali\u{200B}ce", "U+200B"),
            ("a\u{2066}b", "U+2066"),
            ("a\u{2069}", "U+2069"),
            ("a\u{200F}", "U+200F"),
            ("a\u{2060}", "U+2060"),
            ("a\u{2064}", "U+2064"),
            ("\u{FEFF}bom", "U+FEFF"),
            ("soft\u{AD}hyphen", "U+00AD"),
            ("tag\u{E0041}", "U+E0041"),
            ("line\u{2028}sep", "U+2028"),
            ("para\u{2029}sep", "U+2029"),
            ("esc\u{1B}[2J", "U+001B"),
            ("csi\u{9B}31m", "U+009B"),
        ] {
            refused(check_description(text), point);
            refused(check_tag("owner", text), point);
            let mut tags = BTreeMap::new();
            tags.insert("owner".to_string(), text.to_string());
            refused(check_tags(&tags), point);
        }
        // Ordinary non-ASCII text stays allowed.
        check_description("équipe données — 東京, Ελληνικά, עברית").unwrap();
        check_tag("owner", "team é ✓").unwrap();
    }

    #[test]
    fn an_update_sets_then_removes_and_is_checked_as_a_whole() {
        let old = tags(&[("a", "1"), ("b", "2")]);
        let next = updated_tags(&old, tags(&[("b", "3"), ("c", "4")]), &["a".into()]).unwrap();
        assert_eq!(next, tags(&[("b", "3"), ("c", "4")]));
        let full: BTreeMap<String, String> = (0..MAX_TAGS)
            .map(|i| (format!("t{i}"), String::new()))
            .collect();
        refused(
            updated_tags(&full, tags(&[("one-more", "")]), &[]).map(drop),
            "at most 32 tags",
        );
        refused(
            updated_tags(&old, BTreeMap::new(), &["a b".into()]).map(drop),
            "1 to 64",
        );
    }

    #[test]
    fn tags_round_trip_and_anything_else_is_refused() {
        let some = tags(&[("env", "prod"), ("owner", "team é")]);
        assert_eq!(decode_tags(&encode_tags(&some)).unwrap(), some);
        assert!(encode_tags(&BTreeMap::new()).is_empty());
        assert_eq!(decode_tags(&[]).unwrap(), BTreeMap::new());
        let mut trailing = encode_tags(&some);
        trailing.push(0);
        assert!(decode_tags(&trailing).is_err());
        let encoded = encode_tags(&some);
        assert!(decode_tags(&encoded[..encoded.len() - 1]).is_err());
        // Out of order: "owner" before "env".
        let mut swapped = 2u32.to_be_bytes().to_vec();
        for (k, v) in [("owner", "x"), ("env", "y")] {
            swapped.extend_from_slice(&(k.len() as u32).to_be_bytes());
            swapped.extend_from_slice(k.as_bytes());
            swapped.extend_from_slice(&(v.len() as u32).to_be_bytes());
            swapped.extend_from_slice(v.as_bytes());
        }
        assert!(decode_tags(&swapped).is_err());
        assert!(decode_tags(&u32::MAX.to_be_bytes()).is_err());
    }
}
