//! systemd credentials served by hostkms: the names and the reserved
//! encryption context that bind a credential to one unit.
//!
//! A credential file is an ordinary hostkms ciphertext whose context is
//! `{hostkms.unit: UNIT, hostkms.credential: ID}`. Context keys beginning
//! with [`RESERVED_PREFIX`] belong to hostkms: the main socket refuses any
//! request that uses one, so only the credential socket, which checks the
//! unit of the process systemd connects from, ever unwraps such a
//! ciphertext. A credential copied into another unit's directory carries
//! the wrong context and does not decrypt.

use crate::EncryptionContext;

/// Context keys beginning with this are hostkms's own; no request on the
/// main socket may use one.
pub const RESERVED_PREFIX: &str = "hostkms.";

/// The reserved context key that names the unit a credential is for.
pub const UNIT_KEY: &str = "hostkms.unit";

/// The reserved context key that names the credential's id.
pub const CREDENTIAL_KEY: &str = "hostkms.credential";

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` less the NUL).
pub const MAX_UNIT_NAME: usize = 255;

/// Longest credential id: a file name (`NAME_MAX`).
pub const MAX_CREDENTIAL_ID: usize = 255;

/// Unit suffixes systemd can start and load credentials for.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".mount",
    ".swap",
    ".target",
    ".device",
    ".automount",
    ".timer",
    ".path",
    ".slice",
    ".scope",
];

/// The context a credential of `unit` named `credential` is bound to.
pub fn context(unit: &str, credential: &str) -> EncryptionContext {
    let mut context = EncryptionContext::new();
    context.insert(UNIT_KEY.to_string(), unit.to_string());
    context.insert(CREDENTIAL_KEY.to_string(), credential.to_string());
    context
}

/// The first context key of `context` that is reserved, if any.
pub fn reserved_key(context: &EncryptionContext) -> Option<&str> {
    context
        .keys()
        .map(String::as_str)
        .find(|key| key.starts_with(RESERVED_PREFIX))
}

/// Checks a unit name the way systemd's `unit_name_is_valid` does for
/// plain and instance names: `[A-Za-z0-9:_.\\@-]`, at most
/// [`MAX_UNIT_NAME`] bytes, a known suffix, and a prefix before it. The
/// error says what is wrong.
pub fn check_unit(unit: &str) -> Result<(), String> {
    if unit.is_empty() || unit.len() > MAX_UNIT_NAME {
        return Err(format!(
            "a unit name has 1 to {MAX_UNIT_NAME} bytes, not {}",
            unit.len()
        ));
    }
    if let Some(bad) = unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(format!(
            "{unit:?} is no unit name: {bad:?} is not allowed (letters, digits and :-_.\\@ are)"
        ));
    }
    let Some(suffix) = UNIT_SUFFIXES.iter().find(|s| unit.ends_with(**s)) else {
        return Err(format!(
            "{unit:?} is no unit name: it must end in a unit type such as .service"
        ));
    };
    let prefix = &unit[..unit.len() - suffix.len()];
    if prefix.is_empty() || prefix.starts_with('@') || prefix.matches('@').count() > 1 {
        return Err(format!(
            "{unit:?} is no unit name: it needs a name before {suffix}, with at most one @"
        ));
    }
    Ok(())
}

/// Checks a credential id the way systemd's `credential_name_valid` does:
/// a file name (no `/`, not `.` or `..`, at most [`MAX_CREDENTIAL_ID`]
/// bytes). Control characters are refused too, so an id prints safely.
pub fn check_credential(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CREDENTIAL_ID {
        return Err(format!(
            "a credential id has 1 to {MAX_CREDENTIAL_ID} bytes, not {}",
            id.len()
        ));
    }
    if id == "." || id == ".." || id.contains('/') {
        return Err(format!(
            "{id:?} is no credential id: it must be a file name (no '/', not '.' or '..')"
        ));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{id:?} is no credential id: it has a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_context_is_reserved() {
        let context = context("postgresql.service", "dbpass");
        assert_eq!(reserved_key(&context), Some(CREDENTIAL_KEY));
        let mut plain = EncryptionContext::new();
        plain.insert("hostkms".into(), "x".into());
        plain.insert("app".into(), "hostkms.unit".into());
        assert_eq!(reserved_key(&plain), None);
    }

    #[test]
    fn unit_names_follow_systemd() {
        for good in [
            "postgresql.service",
            "getty@tty1.service",
            "a.socket",
            "x-y_z:1.timer",
        ] {
            assert_eq!(check_unit(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "postgresql",
            ".service",
            "@x.service",
            "a@b@c.service",
            "a/b.service",
            "../x.service",
            "a b.service",
            "a\n.service",
        ] {
            assert!(check_unit(bad).is_err(), "{bad:?}");
        }
        assert!(check_unit(&format!("{}.service", "a".repeat(250))).is_err());
    }

    #[test]
    fn credential_ids_are_file_names() {
        for good in ["dbpass", "tls.key", "a-b_c"] {
            assert_eq!(check_credential(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "/etc", "a\tb"] {
            assert!(check_credential(bad).is_err(), "{bad:?}");
        }
        assert!(check_credential(&"a".repeat(256)).is_err());
    }
}
