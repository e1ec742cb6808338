//! The pinned peers: the config's `[[transfer]]` tables, resolved (the
//! transport key parsed, the globs compiled). A peer is the only host a key
//! may be exported to, and the only host whose export files are imported:
//! root pins both in the config, and no request names a transport key.

use std::str::FromStr;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::fingerprint;

/// The longest peer name.
pub const MAX_PEER_NAME: usize = 64;

/// One `[[transfer]]` table as written in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's name, unique in the file: `[A-Za-z0-9._-]{1,64}`.
    #[serde(default)]
    pub name: String,
    /// The peer's transport key, as `hostkms transport-key` prints it there
    /// (`age1…`).
    #[serde(default)]
    pub transport_key: String,
    /// Glob patterns over the names of the keys that may travel to and
    /// from the peer.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// A `[[transfer]]` table that cannot be used; `peer` counts from 1 in
/// file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transfer #{peer}: `{field}`: {problem}")]
pub struct PeerError {
    /// Which `[[transfer]]` table, from 1.
    pub peer: usize,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what to write instead.
    pub problem: String,
}

/// One pinned peer.
#[derive(Clone)]
pub struct Peer {
    name: String,
    recipient: age::x25519::Recipient,
    recipient_text: String,
    fingerprint: String,
    keys: GlobSet,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("transport_key", &self.recipient_text)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// The peer's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer's transport key, parsed.
    pub fn recipient(&self) -> &age::x25519::Recipient {
        &self.recipient
    }

    /// The peer's transport key as the config writes it (`age1…`).
    pub fn transport_key(&self) -> &str {
        &self.recipient_text
    }

    /// The transport key's fingerprint (first 16 hex digits of its SHA-256).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether the key named `key` may travel to and from this peer.
    pub fn covers(&self, key: &str) -> bool {
        self.keys.is_match(key)
    }
}

/// Every pinned peer, in file order.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    peers: Vec<Peer>,
}

impl Peers {
    /// Resolves the `[[transfer]]` tables. Every problem names the table
    /// and the field.
    pub fn new(tables: &[PeerConfig]) -> Result<Peers, PeerError> {
        let mut peers: Vec<Peer> = Vec::with_capacity(tables.len());
        for (i, table) in tables.iter().enumerate() {
            let peer = resolve(i + 1, table)?;
            let error = |field, problem| PeerError {
                peer: i + 1,
                field,
                problem,
            };
            if let Some(first) = peers.iter().position(|p| p.name == peer.name) {
                return Err(error(
                    "name",
                    format!(
                        "\"{}\" names transfer #{} already; give every [[transfer]] table its own name",
                        peer.name,
                        first + 1
                    ),
                ));
            }
            if let Some(first) = peers
                .iter()
                .find(|p| p.recipient_text == peer.recipient_text)
            {
                return Err(error(
                    "transport_key",
                    format!(
                        "is the transport key of \"{}\" already; one host is one [[transfer]] table (list all its key globs there)",
                        first.name
                    ),
                ));
            }
            peers.push(peer);
        }
        Ok(Peers { peers })
    }

    /// The peer named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The peer whose transport key is `recipient` (`age1…`).
    pub fn by_transport_key(&self, recipient: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.recipient_text == recipient)
    }

    /// How many peers are pinned.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is pinned.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peers' names, in file order, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.peers.iter().map(|p| p.name.as_str()).collect()
    }
}

fn resolve(index: usize, table: &PeerConfig) -> Result<Peer, PeerError> {
    let error = |field, problem: String| PeerError {
        peer: index,
        field,
        problem,
    };
    check_peer_name(&table.name).map_err(|problem| error("name", problem))?;
    let text = table.transport_key.trim();
    if text.is_empty() {
        return Err(error(
            "transport_key",
            "is missing; give the peer's transport key as `hostkms transport-key` prints it on that host (age1…)".to_string(),
        ));
    }
    if text
        .get(..15)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("AGE-SECRET-KEY-"))
    {
        // Never echoed: it is a private key.
        return Err(error(
            "transport_key",
            "is an age secret key, not a recipient: remove it from the config (and treat it as exposed); give the peer's public `age1…` transport key".to_string(),
        ));
    }
    let recipient = age::x25519::Recipient::from_str(text).map_err(|e| {
        error(
            "transport_key",
            format!(
                "{:?} is not an age X25519 recipient ({e}); copy the `age1…` line `hostkms transport-key` prints on that host",
                shorten(text)
            ),
        )
    })?;
    if table.keys.is_empty() {
        return Err(error(
            "keys",
            "names no key; give glob patterns over the names of the keys that may travel to and from this peer, e.g. keys = [\"app-db*\"]".to_string(),
        ));
    }
    let mut keys = GlobSetBuilder::new();
    for pattern in &table.keys {
        let glob = Glob::new(pattern).map_err(|e| {
            error(
                "keys",
                format!("\"{pattern}\" is not a valid glob: {}", e.kind()),
            )
        })?;
        keys.add(glob);
    }
    let keys = keys
        .build()
        .map_err(|e| error("keys", format!("the patterns cannot be compiled: {e}")))?;
    let recipient_text = recipient.to_string();
    Ok(Peer {
        name: table.name.clone(),
        fingerprint: fingerprint(&recipient_text),
        recipient,
        recipient_text,
        keys,
    })
}

/// Checks a peer name: `[A-Za-z0-9._-]{1,64}`.
pub fn check_peer_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(
            "is missing; name the peer, e.g. name = \"db-replica-2\" (letters, digits, '.', '_', '-')"
                .to_string(),
        );
    }
    if name.len() > MAX_PEER_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{:?} is not a peer name; use 1 to {MAX_PEER_NAME} letters, digits, '.', '_' or '-'",
            shorten(name)
        ));
    }
    Ok(())
}

/// At most 80 characters of `text`, for a message.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient() -> String {
        age::x25519::Identity::generate().to_public().to_string()
    }

    fn table(name: &str, transport_key: &str, keys: &[&str]) -> PeerConfig {
        PeerConfig {
            name: name.to_string(),
            transport_key: transport_key.to_string(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn a_peer_covers_the_keys_of_its_globs() {
        let key = recipient();
        let peers = Peers::new(&[table("db-replica-2", &key, &["app-db*"])]).unwrap();
        let peer = peers.by_name("db-replica-2").unwrap();
        assert!(peer.covers("app-db-main"));
        assert!(!peer.covers("app-web"));
        assert_eq!(peer.transport_key(), key);
        assert_eq!(peer.fingerprint().len(), 16);
        assert!(peers.by_transport_key(&key).is_some());
        assert!(peers.by_name("other").is_none());
    }

    #[test]
    fn bad_tables_are_refused_naming_the_field() {
        let key = recipient();
        let cases = [
            (table("", &key, &["a*"]), "name"),
            (table("bad name", &key, &["a*"]), "name"),
            (table(&"x".repeat(65), &key, &["a*"]), "name"),
            (table("p", "", &["a*"]), "transport_key"),
            (table("p", "age1notakey", &["a*"]), "transport_key"),
            (
                table(
                    "p",
                    "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
                    &["a*"],
                ),
                "transport_key",
            ),
            (table("p", &key, &[]), "keys"),
            (table("p", "age-secret-key-1", &["a*"]), "transport_key"),
            (table("p", "ééééééééé", &["a*"]), "transport_key"),
            (table("p", &key, &["a[*"]), "keys"),
        ];
        for (table, field) in cases {
            let err = Peers::new(std::slice::from_ref(&table)).unwrap_err();
            assert!(!err.to_string().contains("QQQQ"), "a secret echoed: {err}");
            assert_eq!(err.field, field, "{table:?}: {err}");
            assert_eq!(err.peer, 1);
        }
    }

    #[test]
    fn names_and_transport_keys_are_unique() {
        let (a, b) = (recipient(), recipient());
        let err = Peers::new(&[table("p", &a, &["x*"]), table("p", &b, &["y*"])]).unwrap_err();
        assert_eq!((err.peer, err.field), (2, "name"), "{err}");
        let err = Peers::new(&[table("p", &a, &["x*"]), table("q", &a, &["y*"])]).unwrap_err();
        assert_eq!((err.peer, err.field), (2, "transport_key"), "{err}");
        assert!(err.problem.contains("\"p\""), "{err}");
    }
}
