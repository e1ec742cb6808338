//! Who may do what with which key: grants from the config, resolved once at
//! start (names to ids, globs compiled), checked on every request.
//!
//! Nothing is allowed that no grant allows. uid 0 and members of
//! `admin_groups` are admins and may do everything. `Ping`, `Status` and
//! `ListKeys` need no grant; `ListKeys` shows a peer only the keys it holds
//! a grant on, and `Status` shows the counters and the root key check value
//! only to admins and to peers granted `metrics`. `GenerateRandom` names no
//! key: admins may, and so may peers covered by any grant whose ops list
//! `random`, whatever its `keys` (a grant of `random` alone may omit them).
//!
//! A grant naming a user or group that does not resolve (deleted, or the
//! lookup failed) is disabled, not the whole config refused: fail-closed
//! for that grant, and every other grant still applies.

use std::collections::BTreeSet;

use agent_proto::Operation;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::peer::Peer;

/// One `[[grant]]` table as written in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Glob patterns over key names.
    #[serde(default)]
    pub keys: Vec<String>,
    /// User names.
    #[serde(default)]
    pub users: Vec<String>,
    /// Numeric user ids.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Group names (primary or supplementary).
    #[serde(default)]
    pub groups: Vec<String>,
    /// System-manager unit names, e.g. `postgresql.service`.
    #[serde(default)]
    pub units: Vec<String>,
    /// User-manager unit names, e.g. `backup.service` inside
    /// `user@UID.service`; match only together with `users`/`uids`.
    #[serde(default)]
    pub user_units: Vec<String>,
    /// Operation names, e.g. `wrap`, `unwrap`, `datakey`.
    #[serde(default)]
    pub ops: Vec<String>,
}

/// A grant that cannot be used; `grant` counts from 1 in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("grant #{grant}: `{field}`: {problem}")]
pub struct GrantError {
    /// Which `[[grant]]` table, from 1.
    pub grant: usize,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what to write instead.
    pub problem: String,
}

/// The grantable permission that is no key operation: `Status` with its
/// counters and the root key check value. A grant naming it allows it
/// whatever its `keys` are, and may omit `keys` when it names nothing else.
pub const METRICS: &str = "metrics";

/// The grantable operation that allows `op`: a batch is allowed by its
/// single operation (`wrap-batch` by `wrap`, `unwrap-batch` by `unwrap`),
/// every other operation by itself. A denial names this one, the name a
/// config must write.
pub fn granted_as(op: Operation) -> Operation {
    match op {
        Operation::WrapBatch => Operation::Wrap,
        Operation::UnwrapBatch => Operation::Unwrap,
        other => other,
    }
}

/// Operations a grant may name, besides [`METRICS`]. `ping`, `status`,
/// `list` and `transport-key` (a public key) are open to every connected
/// peer and need no grant; `rotate-root`, `unlock`, `reseal` and
/// `change-pin` are for admins only. `random`
/// names no key: a grant listing it allows it whatever its `keys`.
/// `wrap-batch` and `unwrap-batch` are no grants: a batch needs `wrap`
/// (or `unwrap`) on the keys its items use. `credential` lets the units a
/// grant names receive systemd credentials encrypted under its keys, on
/// the credential socket; it matches units only.
pub const GRANTABLE: [Operation; 24] = [
    Operation::Create,
    Operation::Wrap,
    Operation::Unwrap,
    Operation::DataKey,
    Operation::Rewrap,
    Operation::Rotate,
    Operation::Revoke,
    Operation::Disable,
    Operation::Enable,
    Operation::MinDecryptionVersion,
    Operation::Describe,
    Operation::Export,
    Operation::Import,
    Operation::Mac,
    Operation::VerifyMac,
    Operation::Sign,
    Operation::Verify,
    Operation::PublicKey,
    Operation::Random,
    Operation::ScheduleDeletion,
    Operation::CancelDeletion,
    Operation::SetRotationPeriod,
    Operation::UpdateMetadata,
    Operation::Credential,
];

/// What a peer is to the server's admission, decided from the grants in
/// force: the policy owns it so that the layers above (server, admission)
/// ask the policy, never the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClass {
    /// uid 0 or a member of an admin group: no per-uid cap, and the
    /// reserved slots.
    Admin,
    /// Covered by at least one grant in force: the per-uid cap.
    Granted,
    /// Covered by no grant: the per-uid cap, and all such peers together
    /// `max_ungranted_connections`; no shared frame memory.
    Ungranted,
}

/// A grant put out of force because a name in it does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledGrant {
    /// Which `[[grant]]` table, from 1.
    pub grant: usize,
    /// The field holding the name (`users` or `groups`).
    pub field: &'static str,
    /// The name that does not resolve.
    pub name: String,
    /// Why, and what to do.
    pub problem: String,
}

/// One resolved grant.
#[derive(Debug, Clone)]
struct Grant {
    keys: GlobSet,
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
    units: BTreeSet<String>,
    user_units: BTreeSet<String>,
    ops: BTreeSet<Operation>,
    metrics: bool,
}

impl Grant {
    fn covers_peer(&self, peer: &Peer) -> bool {
        if !self.user_units.is_empty() {
            // The user's own units: the uid and the user unit together.
            return self.uids.contains(&peer.uid)
                && peer
                    .user_unit
                    .as_ref()
                    .is_some_and(|unit| self.user_units.contains(unit));
        }
        self.uids.contains(&peer.uid)
            || self.gids.iter().any(|&gid| peer.in_group(gid))
            || peer
                .unit
                .as_ref()
                .is_some_and(|unit| self.units.contains(unit))
    }
}

/// The access policy the daemon enforces.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: Vec<Grant>,
    admin_gids: BTreeSet<u32>,
    disabled: Vec<DisabledGrant>,
}

/// Why a grant was not resolved: unusable (a config error) or disabled.
enum Unresolved {
    Invalid(GrantError),
    Disabled(DisabledGrant),
}

/// Looks up a user or group name; `None` when the system does not know it.
fn resolve(kind: &str, name: &str) -> Result<Option<u32>, String> {
    let found = match kind {
        "user" => nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw())),
        _ => nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw())),
    };
    found.map_err(|e| format!("cannot look up {kind} \"{name}\": {e}"))
}

impl Policy {
    /// Resolves `grants` and `admin_groups`. Every problem names the grant
    /// and the field. An admin group that does not exist is skipped (the
    /// packaged default names `hostkms-admin`, which a host may not have)
    /// and returned for the caller to log.
    pub fn new(
        grants: &[GrantConfig],
        admin_groups: &[String],
    ) -> Result<(Policy, Vec<String>), GrantError> {
        let mut missing_admin_groups = Vec::new();
        let mut admin_gids = BTreeSet::new();
        for name in admin_groups {
            match resolve("group", name) {
                Ok(Some(gid)) => {
                    admin_gids.insert(gid);
                }
                Ok(None) | Err(_) => missing_admin_groups.push(name.clone()),
            }
        }
        let mut resolved = Vec::new();
        let mut disabled = Vec::new();
        for (i, grant) in grants.iter().enumerate() {
            match resolve_grant(i + 1, grant) {
                Ok(grant) => resolved.push(grant),
                Err(Unresolved::Disabled(grant)) => disabled.push(grant),
                Err(Unresolved::Invalid(error)) => return Err(error),
            }
        }
        let policy = Policy {
            grants: resolved,
            admin_gids,
            disabled,
        };
        Ok((policy, missing_admin_groups))
    }

    /// How many grants the policy holds in force.
    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }

    /// The grants put out of force because a user or group in them does
    /// not resolve; the caller logs each as an error.
    pub fn disabled(&self) -> &[DisabledGrant] {
        &self.disabled
    }

    /// What `peer` is to the server's admission: admin, covered by a grant
    /// of key operations, or neither.
    pub fn class_of(&self, peer: &Peer) -> PeerClass {
        if self.is_admin(peer) {
            PeerClass::Admin
        } else if self.grants_key_operations(peer) {
            PeerClass::Granted
        } else {
            PeerClass::Ungranted
        }
    }

    /// Whether `peer` is an admin: uid 0 or a member of an admin group.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        peer.uid == 0 || self.admin_gids.iter().any(|&gid| peer.in_group(gid))
    }

    /// Whether a grant in force lets `peer` use keys: one that covers it
    /// and names a key operation (admins aside). Any other peer, one that
    /// holds only [`METRICS`] included, sends nothing but `Ping`, `Status`
    /// and `List`, all tiny; the server gives such peers together a small
    /// share of its connections and no shared frame memory, so that a
    /// monitoring account cannot crowd out the services either.
    pub fn grants_key_operations(&self, peer: &Peer) -> bool {
        self.grants
            .iter()
            .any(|grant| !grant.ops.is_empty() && grant.covers_peer(peer))
    }

    /// Whether `peer` may perform `op` on the key named `key`.
    pub fn allows(&self, peer: &Peer, op: Operation, key: &str) -> bool {
        match op {
            Operation::Ping | Operation::Status | Operation::List | Operation::TransportKey => true,
            Operation::RotateRoot
            | Operation::Unlock
            | Operation::Reseal
            | Operation::ChangePin => self.is_admin(peer),
            Operation::Random => self.allows_random(peer),
            Operation::Credential => self.allows_credential(peer, key),
            _ => {
                self.is_admin(peer)
                    || self.grants.iter().any(|grant| {
                        grant.ops.contains(&op)
                            && grant.covers_peer(peer)
                            && grant.keys.is_match(key)
                    })
            }
        }
    }

    /// Whether `peer` may receive a systemd credential encrypted under
    /// `key`: only a grant of `credential` naming the peer's unit allows it.
    /// No admin shortcut (every peer of the credential socket is root) and
    /// no uid or group match (every such peer is uid 0).
    pub fn allows_credential(&self, peer: &Peer, key: &str) -> bool {
        let Some(unit) = peer.unit.as_ref() else {
            return false;
        };
        self.grants.iter().any(|grant| {
            grant.ops.contains(&Operation::Credential)
                && grant.units.contains(unit)
                && grant.keys.is_match(key)
        })
    }

    /// Whether `peer` holds any grant on `key` (what `ListKeys` shows it):
    /// one naming an operation on keys (`random` names none).
    pub fn may_see(&self, peer: &Peer, key: &str) -> bool {
        self.is_admin(peer)
            || self.grants.iter().any(|grant| {
                grant.ops.iter().any(|&op| op != Operation::Random)
                    && grant.covers_peer(peer)
                    && grant.keys.is_match(key)
            })
    }

    /// Whether `peer` may ask for random bytes: an admin, or covered by a
    /// grant whose ops list `random` (its `keys` do not matter).
    pub fn allows_random(&self, peer: &Peer) -> bool {
        self.allows_on_some_key(peer, Operation::Random)
    }

    /// Whether `peer` may perform `op` on some key: an admin, or covered by
    /// a grant naming `op` (what `import` asks before it opens a file whose
    /// key it cannot yet name).
    pub fn allows_on_some_key(&self, peer: &Peer, op: Operation) -> bool {
        self.is_admin(peer)
            || self
                .grants
                .iter()
                .any(|grant| grant.ops.contains(&op) && grant.covers_peer(peer))
    }

    /// Whether `peer` may see the counters and the root key check value in
    /// `Status`: admins, and peers granted [`METRICS`].
    pub fn allows_metrics(&self, peer: &Peer) -> bool {
        self.is_admin(peer)
            || self
                .grants
                .iter()
                .any(|grant| grant.metrics && grant.covers_peer(peer))
    }
}

fn resolve_grant(index: usize, config: &GrantConfig) -> Result<Grant, Unresolved> {
    let error = |field, problem: String| {
        Unresolved::Invalid(GrantError {
            grant: index,
            field,
            problem,
        })
    };
    if config.ops.is_empty() {
        return Err(error(
            "ops",
            format!("names no operation; choose from {}", grantable_names()),
        ));
    }
    let mut ops = BTreeSet::new();
    let mut metrics = false;
    for name in &config.ops {
        match Operation::from_name(name).filter(|op| GRANTABLE.contains(op)) {
            Some(op) => {
                ops.insert(op);
            }
            None if name == METRICS => metrics = true,
            None if matches!(name.as_str(), "ping" | "status" | "list" | "transport-key") => {
                return Err(error(
                    "ops",
                    format!(
                        "\"{name}\" is open to every connected peer and needs no grant; remove it (\"metrics\" grants status's counters)"
                    ),
                ));
            }
            None if matches!(
                Operation::from_name(name),
                Some(Operation::WrapBatch | Operation::UnwrapBatch)
            ) =>
            {
                let single = Operation::from_name(name).map_or(Operation::Wrap, granted_as);
                return Err(error(
                    "ops",
                    format!(
                        "\"{name}\" is not a grant: a batch needs \"{single}\" on the keys its items use; write \"{single}\" instead"
                    ),
                ));
            }
            None if matches!(
                Operation::from_name(name),
                Some(
                    Operation::RotateRoot
                        | Operation::Unlock
                        | Operation::Reseal
                        | Operation::ChangePin
                )
            ) =>
            {
                return Err(error(
                    "ops",
                    format!(
                        "\"{name}\" is for admins only (root or a member of an admin group) and cannot be granted; remove it"
                    ),
                ));
            }
            None => {
                return Err(error(
                    "ops",
                    format!(
                        "unknown operation \"{name}\"; choose from {}",
                        grantable_names()
                    ),
                ));
            }
        }
    }

    if config.keys.is_empty() && ops.iter().any(|&op| op != Operation::Random) {
        return Err(error(
            "keys",
            "names no key; give glob patterns, e.g. keys = [\"app-*\"] (only a grant of \"metrics\" or \"random\" alone may omit keys)".to_string(),
        ));
    }
    let mut keys = GlobSetBuilder::new();
    for pattern in &config.keys {
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

    let units = unit_names(&config.units).map_err(|unit| {
        error(
            "units",
            format!(
                "\"{unit}\" is not a systemd service or scope name, e.g. \"postgresql.service\""
            ),
        )
    })?;
    let user_units = unit_names(&config.user_units).map_err(|unit| {
        error(
            "user_units",
            format!("\"{unit}\" is not a systemd service or scope name, e.g. \"backup.service\""),
        )
    })?;
    if !user_units.is_empty() {
        if !config.groups.is_empty() || !config.units.is_empty() {
            return Err(error(
                "user_units",
                "a grant with user_units matches users/uids and user_units together; put groups and units in a grant of their own".to_string(),
            ));
        }
        if config.users.is_empty() && config.uids.is_empty() {
            return Err(error(
                "user_units",
                "names units of user managers but not whose: a user unit matches only together with the user that runs it; add users = [...] or uids = [...] to this grant".to_string(),
            ));
        }
    }
    if ops.contains(&Operation::Credential) {
        if units.is_empty() {
            return Err(error(
                "units",
                "grants \"credential\" but names no unit: credentials are delivered to the units a grant names (every peer of the credential socket is root), e.g. units = [\"postgresql.service\"]".to_string(),
            ));
        }
        if !config.users.is_empty()
            || !config.uids.is_empty()
            || !config.groups.is_empty()
            || !user_units.is_empty()
        {
            return Err(error(
                "ops",
                "\"credential\" matches units only (every peer of the credential socket is root); put users, uids, groups and user_units in a grant of their own".to_string(),
            ));
        }
    }
    if config.users.is_empty()
        && config.uids.is_empty()
        && config.groups.is_empty()
        && units.is_empty()
    {
        return Err(error(
            "users",
            "names no peer; give users, uids, groups, units, or user_units with users/uids"
                .to_string(),
        ));
    }

    // Names last: one that does not resolve disables this grant only.
    let disabled = |field, name: &str, problem: String| {
        Unresolved::Disabled(DisabledGrant {
            grant: index,
            field,
            name: name.to_string(),
            problem,
        })
    };
    let mut uids: BTreeSet<u32> = config.uids.iter().copied().collect();
    for name in &config.users {
        match resolve("user", name) {
            Ok(Some(uid)) => uids.insert(uid),
            Ok(None) => {
                return Err(disabled(
                    "users",
                    name,
                    format!(
                        "no user named \"{name}\" exists on this host; the grant is disabled until the name resolves at a reload. Create the user, or remove or fix the name and reload"
                    ),
                ));
            }
            Err(e) => {
                return Err(disabled(
                    "users",
                    name,
                    format!("{e}; the grant is disabled until the name resolves at a reload"),
                ));
            }
        };
    }
    let mut gids = BTreeSet::new();
    for name in &config.groups {
        match resolve("group", name) {
            Ok(Some(gid)) => gids.insert(gid),
            Ok(None) => {
                return Err(disabled(
                    "groups",
                    name,
                    format!(
                        "no group named \"{name}\" exists on this host; the grant is disabled until the name resolves at a reload. Create the group, or remove or fix the name and reload"
                    ),
                ));
            }
            Err(e) => {
                return Err(disabled(
                    "groups",
                    name,
                    format!("{e}; the grant is disabled until the name resolves at a reload"),
                ));
            }
        };
    }
    Ok(Grant {
        keys,
        uids,
        gids,
        units,
        user_units,
        ops,
        metrics,
    })
}

/// Checks service and scope names; the first invalid one is the error.
fn unit_names(names: &[String]) -> Result<BTreeSet<String>, &str> {
    let mut units = BTreeSet::new();
    for unit in names {
        let valid = (unit.ends_with(".service") || unit.ends_with(".scope"))
            && crate::peer::unit_name_valid(unit, true);
        if !valid {
            return Err(unit);
        }
        units.insert(unit.clone());
    }
    Ok(units)
}

fn grantable_names() -> String {
    GRANTABLE
        .iter()
        .map(|op| op.as_str())
        .chain([METRICS])
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32], unit: Option<&str>) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
            unit: unit.map(str::to_string),
            user_unit: None,
            unit_unknown: None,
        }
    }

    /// A peer whose process runs in `user_unit` of uid's user manager.
    fn user_peer(uid: u32, user_unit: &str) -> Peer {
        Peer {
            unit: Some(format!("user@{uid}.service")),
            user_unit: Some(user_unit.to_string()),
            ..peer(uid, uid, &[], None)
        }
    }

    fn grant(keys: &[&str], ops: &[&str]) -> GrantConfig {
        GrantConfig {
            keys: keys.iter().map(|s| s.to_string()).collect(),
            ops: ops.iter().map(|s| s.to_string()).collect(),
            ..GrantConfig::default()
        }
    }

    #[test]
    fn grants_allow_exactly_what_they_name() {
        let mut by_uid = grant(&["app-*"], &["wrap", "unwrap"]);
        by_uid.uids = vec![1001];
        let mut by_group = grant(&["shared"], &["describe"]);
        by_group.groups = vec!["root".to_string()]; // gid 0 exists everywhere
        let mut by_unit = grant(&["db-?"], &["datakey"]);
        by_unit.units = vec!["postgresql.service".to_string()];
        let (policy, _) = Policy::new(&[by_uid, by_group, by_unit], &[]).unwrap();

        let app = peer(1001, 1001, &[], None);
        assert!(policy.allows(&app, Operation::Wrap, "app-db"));
        assert!(policy.allows(&app, Operation::Unwrap, "app-x"));
        assert!(
            !policy.allows(&app, Operation::DataKey, "app-db"),
            "op not granted"
        );
        assert!(
            !policy.allows(&app, Operation::Wrap, "other"),
            "key not granted"
        );
        assert!(
            !policy.allows(&app, Operation::Rotate, "app-db"),
            "admin op"
        );
        assert!(policy.allows(&app, Operation::List, "anything"));
        assert!(policy.may_see(&app, "app-db") && !policy.may_see(&app, "shared"));

        let member = peer(2000, 2000, &[0], None);
        assert!(
            policy.allows(&member, Operation::Describe, "shared"),
            "supplementary group"
        );
        let postgres = peer(3000, 3000, &[], Some("postgresql.service"));
        assert!(policy.allows(&postgres, Operation::DataKey, "db-1"));
        assert!(!policy.allows(&postgres, Operation::DataKey, "db-12"));
        let stranger = peer(65534, 65534, &[], Some("other.service"));
        for op in GRANTABLE {
            assert!(!policy.allows(&stranger, op, "app-db"), "{op}");
        }
    }

    /// The op names a doc lists between `from` and `to`: its backticked
    /// (or, in the config's comments, comma-separated) lower-case words.
    fn listed_ops(doc: &str, from: &str, to: &str) -> std::collections::BTreeSet<String> {
        let start = doc.find(from).unwrap_or_else(|| panic!("no {from:?}")) + from.len();
        let end = start + doc[start..].find(to).unwrap_or_else(|| panic!("no {to:?}"));
        doc[start..end]
            .split(|c: char| !(c.is_ascii_lowercase() || c == '-' || c == '`'))
            .filter(|word| word.starts_with('`') || !doc[start..end].contains('`'))
            .map(|word| word.trim_matches('`').to_string())
            .filter(|word| {
                !word.is_empty()
                    && !matches!(word.as_str(), "and" | "from" | "version" | "which" | "is")
            })
            .collect()
    }

    #[test]
    fn the_docs_list_exactly_the_grantable_ops() {
        let expected: std::collections::BTreeSet<String> = GRANTABLE
            .iter()
            .map(|op| op.as_str().to_string())
            .chain([METRICS.to_string()])
            .collect();
        for (doc, listed) in [
            (
                "README.md",
                listed_ops(
                    include_str!("../README.md"),
                    "Grantable ops:",
                    "Each is a grant",
                ),
            ),
            (
                "agent-proto/README.md",
                listed_ops(
                    include_str!("../agent-proto/README.md"),
                    "The grantable operation names are",
                    "which is no",
                ),
            ),
            (
                "packaging/config.toml",
                listed_ops(
                    &include_str!("../packaging/config.toml").replace('#', " "),
                    "ops, chosen from:",
                    "Each op is",
                ),
            ),
        ] {
            assert_eq!(listed, expected, "{doc}'s list of grantable ops");
        }
    }

    #[test]
    fn a_credential_grant_names_units_only_and_root_gets_nothing_else() {
        let mut g = grant(&["cred-*"], &["credential"]);
        g.units = vec!["db.service".to_string()];
        let (policy, _) = Policy::new(&[g.clone()], &[]).unwrap();
        let root_in_db = peer(0, 0, &[], Some("db.service"));
        let root_elsewhere = peer(0, 0, &[], Some("web.service"));
        let root_nowhere = peer(0, 0, &[], None);
        assert!(policy.allows(&root_in_db, Operation::Credential, "cred-db"));
        assert!(!policy.allows(&root_in_db, Operation::Credential, "other"));
        // Root is an admin, but that is no credential grant.
        assert!(!policy.allows(&root_elsewhere, Operation::Credential, "cred-db"));
        assert!(!policy.allows(&root_nowhere, Operation::Credential, "cred-db"));
        for (field, bad) in [
            ("uids", {
                let mut b = grant(&["cred-*"], &["credential"]);
                b.uids = vec![0];
                b
            }),
            ("groups", {
                let mut b = g.clone();
                b.groups = vec!["root".into()];
                b
            }),
            ("users", {
                let mut b = g.clone();
                b.users = vec!["root".into()];
                b
            }),
        ] {
            let err = Policy::new(&[bad], &[]).unwrap_err();
            assert!(err.problem.contains("\"credential\""), "{field}: {err}");
        }
    }

    #[test]
    fn the_lifecycle_and_metadata_ops_are_grants_and_batches_are_not() {
        for op in [
            "schedule-deletion",
            "cancel-deletion",
            "set-rotation-period",
            "set-metadata",
        ] {
            let mut g = grant(&["app-*"], &[op]);
            g.uids = vec![1001];
            let (policy, _) = Policy::new(&[g], &[]).unwrap();
            let op = Operation::from_name(op).unwrap();
            let app = peer(1001, 1001, &[], None);
            assert!(policy.allows(&app, op, "app-db"), "{op}");
            assert!(!policy.allows(&app, op, "other"), "{op}");
        }
        for (batch, single) in [("wrap-batch", "wrap"), ("unwrap-batch", "unwrap")] {
            let mut g = grant(&["app-*"], &[batch]);
            g.uids = vec![1001];
            let err = Policy::new(&[g], &[]).unwrap_err();
            assert_eq!(err.field, "ops");
            assert!(
                err.problem.contains(&format!("write \"{single}\" instead")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_name_is_covered_by_any_grant_on_it_whatever_the_op() {
        let mut g = grant(&["app-*"], &["describe"]);
        g.uids = vec![1001];
        let mut random = grant(&["other-*"], &["random"]);
        random.uids = vec![1001];
        let (policy, _) = Policy::new(&[g, random], &[]).unwrap();
        let app = peer(1001, 1001, &[], None);
        assert!(policy.may_see(&app, "app-db"));
        assert!(!policy.allows(&app, Operation::Wrap, "app-db"));
        // `random` names no key: it covers none.
        assert!(!policy.may_see(&app, "other-1"));
        assert!(!policy.may_see(&app, "secret"));
        assert!(!policy.may_see(&peer(1002, 1002, &[], None), "app-db"));
        assert!(policy.may_see(&peer(0, 0, &[], None), "secret"), "admin");
    }

    #[test]
    fn an_import_grant_on_some_key_is_what_import_asks_first() {
        let mut importer = grant(&["app-*"], &["import"]);
        importer.uids = vec![1001];
        let mut wrapper = grant(&["app-*"], &["wrap", "export"]);
        wrapper.uids = vec![1002];
        let (policy, _) = Policy::new(&[importer, wrapper], &[]).unwrap();
        let (imports, wraps) = (peer(1001, 1001, &[], None), peer(1002, 1002, &[], None));
        assert!(policy.allows_on_some_key(&imports, Operation::Import));
        assert!(!policy.allows_on_some_key(&wraps, Operation::Import));
        assert!(policy.allows_on_some_key(&peer(0, 0, &[], None), Operation::Import));
        assert!(policy.allows(&imports, Operation::Import, "app-db"));
        assert!(!policy.allows(&imports, Operation::Import, "payroll"));
        assert!(policy.allows(&wraps, Operation::Export, "app-db"));
    }

    #[test]
    fn root_and_admin_groups_are_admins() {
        let (policy, missing) =
            Policy::new(&[], &["root".to_string(), "no-such-group-hk".to_string()]).unwrap();
        assert_eq!(missing, vec!["no-such-group-hk".to_string()]);
        assert!(policy.is_admin(&peer(0, 0, &[], None)));
        assert!(policy.is_admin(&peer(1000, 1000, &[0], None)));
        assert!(!policy.is_admin(&peer(1000, 1000, &[], None)));
        assert!(policy.allows(&peer(0, 0, &[], None), Operation::Revoke, "anything"));
    }

    #[test]
    fn bad_grants_name_the_grant_and_field() {
        let cases: Vec<(GrantConfig, &str, &str)> = vec![
            (
                grant(&["a"], &["wrap", "frobnicate"]),
                "ops",
                "unknown operation \"frobnicate\"",
            ),
            (grant(&["a"], &["status"]), "ops", "needs no grant"),
            (grant(&["a["], &["wrap"]), "keys", "not a valid glob"),
            (grant(&[], &["wrap"]), "keys", "names no key"),
            (
                GrantConfig {
                    user_units: vec!["backup.service".into()],
                    groups: vec!["root".into()],
                    ..grant(&["a"], &["wrap"])
                },
                "user_units",
                "users/uids and user_units together",
            ),
            (
                GrantConfig {
                    user_units: vec!["backup".into()],
                    uids: vec![1],
                    ..grant(&["a"], &["wrap"])
                },
                "user_units",
                "not a systemd service",
            ),
            (grant(&[], &["wrap", "metrics"]), "keys", "names no key"),
            (
                GrantConfig {
                    units: vec!["postgres".into()],
                    ..grant(&["a"], &["wrap"])
                },
                "units",
                "not a systemd service",
            ),
        ];
        for (mut config, field, needle) in cases {
            if config.users.is_empty() && config.groups.is_empty() && config.units.is_empty() {
                config.uids = vec![1];
            }
            let ok = GrantConfig {
                uids: vec![1],
                ..grant(&["x"], &["wrap"])
            };
            let err = Policy::new(&[ok, config], &[]).unwrap_err();
            assert_eq!(err.grant, 2);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let no_peer = grant(&["a"], &["wrap"]);
        let err = Policy::new(&[no_peer], &[]).unwrap_err();
        assert!(err.to_string().contains("names no peer"), "{err}");
        // user_units alone would match any user's unit of that name.
        let whose = GrantConfig {
            user_units: vec!["backup.service".into()],
            ..grant(&["a"], &["wrap"])
        };
        let err = Policy::new(&[whose], &[]).unwrap_err();
        assert_eq!(err.field, "user_units");
        assert!(
            err.to_string().contains("add users = [...] or uids"),
            "{err}"
        );
    }

    #[test]
    fn unit_grants_match_system_units_and_user_units_need_the_uid_too() {
        let mut system = grant(&["db"], &["unwrap"]);
        system.units = vec!["postgresql.service".to_string()];
        let mut users_own = grant(&["backup"], &["wrap"]);
        users_own.uids = vec![1000];
        users_own.user_units = vec!["backup.service".to_string()];
        let (policy, _) = Policy::new(&[system, users_own], &[]).unwrap();

        // A user's unit named like the system's is not the system's.
        let impostor = user_peer(65534, "postgresql.service");
        assert!(!policy.allows(&impostor, Operation::Unwrap, "db"));
        let real = peer(70, 70, &[], Some("postgresql.service"));
        assert!(policy.allows(&real, Operation::Unwrap, "db"));

        // The user unit matches only for the grant's uid, and uid 1000
        // outside that unit holds nothing.
        assert!(policy.allows(
            &user_peer(1000, "backup.service"),
            Operation::Wrap,
            "backup"
        ));
        assert!(!policy.allows(
            &user_peer(1001, "backup.service"),
            Operation::Wrap,
            "backup"
        ));
        assert!(!policy.allows(&user_peer(1000, "other.service"), Operation::Wrap, "backup"));
        assert!(!policy.allows(&peer(1000, 1000, &[], None), Operation::Wrap, "backup"));
    }

    #[test]
    fn a_grant_naming_an_unknown_user_or_group_is_disabled_and_the_rest_apply() {
        let mut kept = grant(&["a"], &["wrap"]);
        kept.uids = vec![1001];
        let mut gone_user = grant(&["*"], &["unwrap"]);
        gone_user.users = vec!["no-such-user-hk".into()];
        gone_user.uids = vec![1002];
        let mut gone_group = grant(&["*"], &["unwrap"]);
        gone_group.groups = vec!["no-such-group-hk".into()];
        let (policy, _) = Policy::new(&[kept, gone_user, gone_group], &[]).unwrap();
        assert_eq!(policy.grant_count(), 1);
        let disabled = policy.disabled();
        assert_eq!(disabled.len(), 2);
        assert_eq!((disabled[0].grant, disabled[0].field), (2, "users"));
        assert_eq!(disabled[0].name, "no-such-user-hk");
        assert!(disabled[0].problem.contains("disabled"), "{disabled:?}");
        assert_eq!((disabled[1].grant, disabled[1].field), (3, "groups"));
        assert!(policy.allows(&peer(1001, 1001, &[], None), Operation::Wrap, "a"));
        // Fail-closed: the whole grant is out, its uids too.
        assert!(!policy.allows(&peer(1002, 1002, &[], None), Operation::Unwrap, "a"));
    }

    #[test]
    fn the_key_type_ops_are_grantable_each_on_its_own() {
        let names = ["sign", "verify", "mac", "verify-mac", "public-key"];
        let mut grants = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut one = grant(&["rel-*"], &[name]);
            one.uids = vec![4000 + i as u32];
            grants.push(one);
        }
        let (policy, _) = Policy::new(&grants, &[]).unwrap();
        for (i, name) in names.iter().enumerate() {
            let holder = peer(4000 + i as u32, 4000 + i as u32, &[], None);
            for other in names {
                let op = Operation::from_name(other).unwrap();
                assert_eq!(
                    policy.allows(&holder, op, "rel-1"),
                    *name == other,
                    "{name} holder asking {other}"
                );
            }
            let op = Operation::from_name(name).unwrap();
            assert!(
                !policy.allows(&holder, op, "other"),
                "{name} outside its keys"
            );
            assert!(policy.may_see(&holder, "rel-1"), "{name} shows the key");
            assert!(!policy.allows_random(&holder));
        }
    }

    #[test]
    fn random_is_granted_whatever_the_keys_and_shows_no_key() {
        let mut alone = grant(&[], &["random"]);
        alone.uids = vec![5000];
        let mut with_keys = grant(&["app-*"], &["random"]);
        with_keys.uids = vec![5001];
        let mut beside = grant(&["app-*"], &["random", "wrap"]);
        beside.uids = vec![5002];
        let mut without = grant(&["*"], &["wrap", "sign", "mac"]);
        without.uids = vec![5003];
        let (policy, _) = Policy::new(&[alone, with_keys, beside, without], &[]).unwrap();
        for uid in [5000, 5001, 5002] {
            let holder = peer(uid, uid, &[], None);
            assert!(policy.allows_random(&holder), "{uid}");
            assert!(policy.allows(&holder, Operation::Random, "any name at all"));
            assert!(policy.grants_key_operations(&holder));
        }
        assert!(!policy.allows_random(&peer(5003, 5003, &[], None)));
        assert!(!policy.allows_random(&peer(6000, 6000, &[], None)));
        assert!(policy.allows_random(&peer(0, 0, &[], None)), "admins may");
        // A grant of random alone is on no key, whatever its patterns.
        assert!(!policy.may_see(&peer(5001, 5001, &[], None), "app-db"));
        assert!(policy.may_see(&peer(5002, 5002, &[], None), "app-db"));
        assert!(!policy.allows(&peer(5001, 5001, &[], None), Operation::Wrap, "app-db"));
        // Beside an op on keys, the keys are needed again.
        let mut keyless = grant(&[], &["random", "sign"]);
        keyless.uids = vec![1];
        let err = Policy::new(&[keyless], &[]).unwrap_err();
        assert_eq!(err.field, "keys", "{err}");
        assert!(
            err.to_string().contains("\"random\" alone may omit keys"),
            "{err}"
        );
    }

    #[test]
    fn metrics_is_granted_without_keys_and_shows_no_key() {
        let mut metrics = grant(&[], &["metrics"]);
        metrics.uids = vec![3000];
        let mut with_keys = grant(&["*"], &["metrics"]);
        with_keys.uids = vec![3001];
        let mut wrap = grant(&["app-*"], &["wrap"]);
        wrap.uids = vec![3002];
        let (policy, _) = Policy::new(&[metrics, with_keys, wrap], &[]).unwrap();
        assert!(policy.allows_metrics(&peer(3000, 3000, &[], None)));
        assert!(policy.allows_metrics(&peer(3001, 3001, &[], None)));
        assert!(!policy.allows_metrics(&peer(3002, 3002, &[], None)));
        assert!(policy.allows_metrics(&peer(0, 0, &[], None)));
        // A metrics grant is no grant on keys, whatever its patterns, and
        // puts its peer among those that send only tiny requests.
        assert!(!policy.may_see(&peer(3001, 3001, &[], None), "app-db"));
        assert!(!policy.grants_key_operations(&peer(3000, 3000, &[], None)));
        assert!(!policy.grants_key_operations(&peer(3001, 3001, &[], None)));
        assert!(policy.grants_key_operations(&peer(3002, 3002, &[], None)));
        for op in GRANTABLE {
            assert!(
                !policy.allows(&peer(3001, 3001, &[], None), op, "app-db"),
                "{op}"
            );
        }
    }
}
