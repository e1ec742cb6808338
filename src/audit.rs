//! The audit trail: one structured event per request, plus alerts and the
//! daemon's life events, each with a fixed `MESSAGE_ID` that
//! `systemd/hostkms.catalog` explains.
//!
//! Events go through `tracing`. Where journald listens they are written to
//! it natively, with every field its own journal field (`journalctl
//! HOSTKMS_OP=unwrap`); elsewhere they are printed to stderr. No plaintext,
//! key material or ciphertext body is ever a field, nor MAC data, a message,
//! a tag, a signature or random bytes: events carry names, numbers and
//! outcomes only.

use std::path::Path;

use agent_proto::counters::RequestResult;
use agent_proto::{ErrorCode, Operation};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt, FilterFn, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::monitor::flood::{Limited, Suppressed};
use crate::monitor::{AlertKind, PeerAlert};
use crate::peer::Peer;

/// A request was answered.
pub const REQUEST_OK: &str = "54ef972d04c94c4d82e172b091a4204e";
/// A request was refused for want of a grant.
pub const REQUEST_DENIED: &str = "ae4499d0098646569a7eaef5c366b9e7";
/// A request was refused for another reason (`HOSTKMS_ERROR` says which).
pub const REQUEST_FAILED: &str = "4fecfa9090084923a2dbb30f5ea9d08a";
/// A frame from a peer could not be decoded and was refused.
pub const BAD_FRAME: &str = "25ca2e79038c454a964578eca0ad300f";
/// A connection was refused `Busy` at a connection limit, or cut off by a
/// frame, write or memory limit.
pub const CONNECTION_REFUSED: &str = "84380fec6afc4b42895bd3dc67b7274e";
/// The refusals of one peer, of one kind, that a window counted but did not
/// log one by one (`HOSTKMS_COUNT` says how many).
pub const REFUSALS_SUMMARIZED: &str = "cf5a105062ba4cfc9c310216444a36d7";
/// One peer was denied repeatedly within the alert window.
pub const ALERT_REPEATED_DENIALS: &str = "03be2c8933e142a2b89d67c4df0731b9";
/// One peer failed to decrypt repeatedly within the alert window.
pub const ALERT_REPEATED_INVALID_CIPHERTEXTS: &str = "1a9d2af668fc48ac9ab2d4a888899de9";
/// A key version neared its encryption limit.
pub const ALERT_ENCRYPTION_LIMIT: &str = "a65fa18274d944968d01e53a1bbd32c0";
/// A key scheduled for deletion was used (at most once per key and peer
/// per hour).
pub const ALERT_PENDING_DELETION_USE: &str = "1b1684d127a34c64a0db0e7121098f60";
/// The daemon changed a key on its own (`HOSTKMS_PEER=daemon`): rotated it
/// when its rotation period was up (`HOSTKMS_OP=rotate`), or deleted it
/// when its waiting period was over (`HOSTKMS_OP=delete-scheduled`).
pub const KEY_CHANGED_BY_DAEMON: &str = "755844621ea64ae3aa1c010741ed921c";
/// The daemon could not rotate or delete a key that was due; it tries
/// again at the next tick.
pub const KEY_CHANGE_BY_DAEMON_FAILED: &str = "d83a645cebf54ea9b7bd36af04db9606";

/// A systemd credential was delivered on the credential socket: the unit
/// `HOSTKMS_CREDENTIAL_UNIT` got its credential `HOSTKMS_CREDENTIAL`.
pub const CREDENTIAL_DELIVERED: &str = "6e273d579fbe44b8838b84ca35ab13d7";
/// A connection to the credential socket got no credential
/// (`HOSTKMS_REASON` says why): refused peers, and deliveries that failed.
pub const CREDENTIAL_REFUSED: &str = "deeff9e3c6aa4ca5979d8a6fcc4111c7";

/// The daemon unsealed its root key, loaded its keys and serves.
pub const DAEMON_READY: &str = "3246e65abb4b411ab335889564bd4421";
/// The daemon stopped cleanly.
pub const DAEMON_STOPPED: &str = "03cf281e477a40c99f3000e0beee0cae";
/// A SIGHUP put new grants and limits in force.
pub const CONFIG_RELOADED: &str = "c8d9b9f895044afdab796f25231a8980";
/// A SIGHUP found an invalid config; the old one stays in force.
pub const CONFIG_RELOAD_FAILED: &str = "fd310359d92c424cafb28af3f8b58d68";
/// A grant names a user or group that does not resolve: it is out of force.
pub const GRANT_DISABLED: &str = "9f10fe38bd23484c914438a7f0775736";
/// `hostkmsd restore` imported the keys of a backup into this host's store.
pub const KEYS_RESTORED: &str = "7725a34402704e0ca1961764a810e6a6";
/// `hostkmsd restore` refused or failed; the store is as it was.
pub const RESTORE_FAILED: &str = "cb05f1bc80be4862bc959b256cdd4f63";
/// The root key was rotated: the key store is sealed under a new root key.
pub const ROOT_KEY_ROTATED: &str = "9da5932d438442bd826e39170b2844a8";

/// A key's material was exported to a pinned transfer peer.
pub const KEY_EXPORTED: &str = "12c4e514adcf4786ba7cc953997b64a2";
/// A key's material was imported from a pinned transfer peer.
pub const KEY_IMPORTED: &str = "de27b4d0ea4d4deea0179c5860a70ad8";
/// An operator accepted a key store its rollback binding refused
/// (`hostkmsd accept-rollback`).
pub const ROLLBACK_ACCEPTED: &str = "e443d75e72c74b83b7b5c0c86a8f686f";
/// The recovery bundle identity was escrowed to custodians: at the first
/// start with `[recovery]`, after the custodians or threshold changed, or
/// after `hostkmsd rotate-bundle` made a new one.
pub const RECOVERY_ESCROWED: &str = "98d6c8c8c8bd47a19a8b17745e87228b";
/// The daemon started locked: the root key needs `hostkms unlock` (a PIN
/// mode, or the PCRs changed since sealing).
pub const DAEMON_LOCKED: &str = "eb043bc953384ab2aff654d8d03e5ba9";
/// An attempt to unlock the root key with the PIN (`hostkms unlock`, and
/// the PIN checks of `reseal`, `change-pin` and `rotate-root`), with its
/// result and the TPM's tries left.
pub const ROOT_KEY_UNLOCK: &str = "dab12fd4462e41349a815e8d0b3a2d7c";
/// The root key's sealed copies were replaced: a reseal (new PCR values or
/// mode) or a PIN change.
pub const ROOT_KEY_RESEALED: &str = "f6cf38e8a51a42318169c4e9091c9034";

/// The tracing target of request and life events.
const AUDIT_TARGET: &str = "hostkms::audit";
/// The tracing target of alerts, which journald receives at priority alert (1).
const ALERT_TARGET: &str = "hostkms::alert";
/// Where journald listens for native messages.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// The journal's `SYSLOG_IDENTIFIER` for the daemon.
const SYSLOG_IDENTIFIER: &str = "hostkmsd";
/// The longest key name an event carries; longer (invalid) names are cut.
const MAX_LOGGED_NAME: usize = 128;

/// Where the daemon is asked to log (`HOSTKMS_LOG_TARGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// journald when its socket is there, else stderr (the default).
    Auto,
    /// journald; stderr, with a warning, when it does not listen.
    Journal,
    /// stderr, even where journald listens (a daemon run by hand in a terminal).
    Stderr,
}

impl LogTarget {
    /// Reads `auto`, `journal` or `stderr`.
    pub fn parse(text: &str) -> Option<LogTarget> {
        match text {
            "auto" | "" => Some(LogTarget::Auto),
            "journal" => Some(LogTarget::Journal),
            "stderr" => Some(LogTarget::Stderr),
            _ => None,
        }
    }
}

/// Sends the daemon's log and audit events to journald when its socket is
/// there (and `target` allows it), else to stderr. `directives` filters
/// ordinary log lines (tracing's syntax, from `HOSTKMS_LOG`); audit events
/// and alerts are never filtered out.
///
/// Run by hand in a terminal with the log going to journald, warnings and
/// errors are echoed to the terminal too ([`crate::terminal_echo`]).
///
/// Returns whether the log goes to the journal (not stderr), so a command
/// run by hand can print its error on stderr as well.
pub fn init(target: LogTarget, directives: &str) -> bool {
    let mut directives = directives.to_string();
    if !directives.contains("tss_esapi") {
        // Expected misses (no persistent SRK) look like errors there; the
        // daemon reports real TPM failures itself, in words.
        directives.push_str(",tss_esapi=off");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!(
            "hostkmsd: warning: HOSTKMS_LOG={directives:?} is not a valid filter ({e}); logging at info"
        );
        EnvFilter::new("info,tss_esapi=off")
    });
    let journal = match target {
        LogTarget::Stderr => None,
        LogTarget::Auto if !Path::new(JOURNAL_SOCKET).exists() => None,
        LogTarget::Auto | LogTarget::Journal => journal_layers(),
    };
    // Ordinary lines pass `filter`; audit events always pass.
    let audit_and_filtered = ordinary_lines()
        .and(filter)
        .or(Targets::new().with_target(AUDIT_TARGET, Level::INFO));
    match journal {
        Some((main, alerts)) => {
            let main = main.with_filter(audit_and_filtered);
            let alerts = alerts.with_filter(Targets::new().with_target(ALERT_TARGET, Level::INFO));
            let echo = crate::terminal_echo::wanted(true)
                .then(|| crate::terminal_echo::layer(ordinary_lines()));
            tracing_subscriber::registry()
                .with(main)
                .with(alerts)
                .with(echo)
                .init();
            true
        }
        None => {
            use std::io::IsTerminal;
            let stderr = tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .with_filter(
                    audit_and_filtered.or(Targets::new().with_target(ALERT_TARGET, Level::INFO)),
                );
            tracing_subscriber::registry().with(stderr).init();
            false
        }
    }
}

/// Everything but audit events and alerts.
fn ordinary_lines() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    FilterFn::new(|meta: &tracing::Metadata<'_>| {
        meta.target() != AUDIT_TARGET && meta.target() != ALERT_TARGET
    })
}

/// Two journald writers: one for everything but alerts (INFO as
/// informational, not notice), one that gives alerts priority alert.
fn journal_layers() -> Option<(tracing_journald::Layer, tracing_journald::Layer)> {
    use tracing_journald::{Priority, PriorityMappings};
    let writer = |mappings: PriorityMappings| {
        tracing_journald::layer().map(|layer| {
            layer
                .with_field_prefix(None)
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())
                .with_priority_mappings(mappings)
        })
    };
    let ordinary = PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        ..PriorityMappings::new()
    };
    let alerts = PriorityMappings {
        error: Priority::Alert,
        warn: Priority::Alert,
        info: Priority::Alert,
        ..PriorityMappings::new()
    };
    match (writer(ordinary), writer(alerts)) {
        (Ok(main), Ok(alerts)) => Some((main, alerts)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("hostkmsd: journald does not accept messages ({e}); logging to stderr");
            None
        }
    }
}

/// What a request acted on, as far as the daemon learned it: filled in as
/// the request goes, so a refused request still names what it asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    key: Option<String>,
    version: Option<u32>,
    verified: Option<bool>,
    batch: Option<Vec<BatchItem>>,
    destination: Option<(String, Option<u32>)>,
    pending_deletion: Option<String>,
    deletion_due: Option<u64>,
    credential: Option<(String, String)>,
}

/// One item of a `WrapBatch` or `UnwrapBatch` as the audit records it: the
/// key and version it used (the real ones, even when the peer was refused
/// and may not learn them) and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// The key's name (escaped when invalid), when the item named or reached one.
    pub key: Option<String>,
    /// The key version used, when known.
    pub version: Option<u32>,
    /// The item's error code; `None` when it succeeded.
    pub result: Option<ErrorCode>,
    /// For a `KeyPendingDeletion` refusal: the key's deletion date (unix
    /// seconds) as the refusal found it.
    pub deletion_due: Option<u64>,
}

impl BatchItem {
    /// The item as the audit records it: the key and version `subject`
    /// learned while deciding it, its result and, when refused for a
    /// pending deletion, the deletion date.
    pub fn of(
        subject: &Subject,
        result: Option<ErrorCode>,
        deletion_due: Option<u64>,
    ) -> BatchItem {
        BatchItem {
            key: subject.key.clone(),
            version: subject.version,
            result,
            deletion_due,
        }
    }
}

impl Subject {
    /// Records the key's name. A name that is not a valid key name came
    /// from the peer unchecked: it is cut and escaped so it cannot forge
    /// journal fields or stderr lines.
    pub fn set_key(&mut self, name: &str) {
        self.key = Some(logged_name(name));
    }

    /// Records the key version the request used or produced.
    pub fn set_version(&mut self, version: u32) {
        self.version = Some(version);
    }

    /// The key's name (escaped when invalid), if known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The key version, if known.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// Records whether the signature or tag a `Verify` or `VerifyMac`
    /// checked was valid (`HOSTKMS_VERIFIED`): an invalid one is answered,
    /// not refused, so only this field shows forgeries being tried.
    pub fn set_verified(&mut self, valid: bool) {
        self.verified = Some(valid);
    }

    /// Whether a checked signature or tag was valid; `None` for any other
    /// request.
    pub fn verified(&self) -> Option<bool> {
        self.verified
    }

    /// Records every item of a batch, in the request's order.
    pub fn set_batch(&mut self, items: Vec<BatchItem>) {
        self.batch = Some(items);
    }

    /// The items of a batch; `None` for any other request.
    pub fn batch(&self) -> Option<&[BatchItem]> {
        self.batch.as_deref()
    }

    /// Records the destination key of a `Rewrap` with a destination, and
    /// the version it encrypted under once it did (the source is
    /// [`Subject::key`] and [`Subject::version`]).
    pub fn set_destination(&mut self, key: &str, version: Option<u32>) {
        self.destination = Some((logged_name(key), version));
    }

    /// The destination key and version of a `Rewrap` with a destination.
    pub fn destination(&self) -> Option<(&str, Option<u32>)> {
        self.destination
            .as_ref()
            .map(|(key, version)| (key.as_str(), *version))
    }

    /// Records the systemd credential a request is about: the unit it is
    /// for and its id (escaped when they are no valid names).
    pub fn set_credential(&mut self, unit: &str, id: &str) {
        use agent_proto::credential::{check_credential, check_unit};
        self.credential = Some((
            logged_as(unit, check_unit(unit).is_ok()),
            logged_as(id, check_credential(id).is_ok()),
        ));
    }

    /// The unit and id of the credential the request is about.
    pub fn credential(&self) -> Option<(&str, &str)> {
        self.credential
            .as_ref()
            .map(|(unit, id)| (unit.as_str(), id.as_str()))
    }

    /// Records that the request was refused because `key`, which is not
    /// [`Subject::key`] (a `Rewrap`'s destination), is pending deletion:
    /// the key its alert names.
    pub fn set_pending_deletion(&mut self, key: &str) {
        self.pending_deletion = Some(logged_name(key));
    }

    /// Records when the key a `KeyPendingDeletion` refusal was about is
    /// deleted (unix seconds), as the refusal found it.
    pub fn set_deletion_due(&mut self, due: u64) {
        self.deletion_due = Some(due);
    }

    /// The key a `KeyPendingDeletion` refusal was about (the one recorded
    /// by [`Subject::set_pending_deletion`], else [`Subject::key`]), with
    /// its deletion date when recorded.
    pub fn pending_deletion(&self) -> Option<(&str, Option<u64>)> {
        self.pending_deletion
            .as_deref()
            .or_else(|| self.key())
            .map(|key| (key, self.deletion_due))
    }

    /// The result flood coalescing counts this request as: its own `code`,
    /// except for a batch answered item by item, which counts as a success
    /// (never coalesced) when any item succeeded and otherwise as its first
    /// item's refusal.
    pub fn flood_code(&self, code: Option<ErrorCode>) -> Option<ErrorCode> {
        match (&self.batch, code) {
            (Some(items), None) if !items.is_empty() => {
                if items.iter().any(|item| item.result.is_none()) {
                    None
                } else {
                    items.first().and_then(|item| item.result)
                }
            }
            _ => code,
        }
    }
}

/// `HOSTKMS_BATCH_RESULTS`: every item of a batch as
/// `index:key:version:result`, separated by spaces; `-` for a key or
/// version the item never reached, `ok` or the error's kebab-case name.
pub fn batch_results(items: &[BatchItem]) -> String {
    let mut out = String::with_capacity(items.len() * 24);
    for (index, item) in items.iter().enumerate() {
        use std::fmt::Write as _;
        if index > 0 {
            out.push(' ');
        }
        let version = item
            .version
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        let result = item.result.map_or_else(|| "ok".to_string(), error_name);
        let key = item
            .key
            .as_deref()
            .map_or_else(|| "-".to_string(), result_key);
        let _ = write!(out, "{index}:{key}:{version}:{result}");
    }
    out
}

/// A key name as `HOSTKMS_BATCH_RESULTS` carries it: a valid name as it
/// is; anything else (a name a peer sent, already escaped) with every byte
/// outside `[A-Za-z0-9._-]` percent-encoded, so no name can add a space or
/// a colon to the list.
fn result_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The kebab-case name of an error code: the value of `HOSTKMS_ERROR`.
pub fn error_name(code: ErrorCode) -> String {
    code.name().replace(' ', "-").to_ascii_lowercase()
}

/// Logs one answered request: priority info when it succeeded, warning when
/// denied, err when it failed.
pub fn request(
    peer: &Peer,
    op: Operation,
    subject: &Subject,
    code: Option<ErrorCode>,
    unsent: Option<ErrorCode>,
) {
    let outcome = RequestResult::of(code);
    let error = code.map(error_name);
    let answer_error = unsent.map(error_name);
    let lost = answer_error
        .as_deref()
        .map(|e| format!(" (the answer was not sent: {e})"))
        .unwrap_or_default();
    let key = subject.key();
    let version = subject.version();
    let verified = subject
        .verified()
        .map(|valid| if valid { "valid" } else { "invalid" });
    let checked = verified.map(|v| format!(" ({v})")).unwrap_or_default();
    let unit = peer.unit.as_deref();
    let user_unit = peer.user_unit.as_deref();
    let unit_unknown = peer.unit_unknown.map(crate::peer::UnitUnknown::as_str);
    let pid = peer.pid;
    let destination = subject.destination();
    let target = match (key, version) {
        (Some(key), Some(v)) => format!(" {key} v{v}"),
        (Some(key), None) => format!(" {key}"),
        _ => String::new(),
    };
    let target = match destination {
        Some((to, Some(v))) => format!("{target} to {to} v{v}"),
        Some((to, None)) => format!("{target} to {to}"),
        None => target,
    };
    let credential = subject.credential();
    let target = match credential {
        Some((unit, id)) => format!("{target} for credential {id} of {unit}"),
        None => target,
    };
    let (credential_unit, credential_id) = credential.unzip();
    let (destination_key, destination_version) = destination.unzip();
    let destination_version = destination_version.flatten();
    let batch = subject.batch();
    let batch_items = batch.map(<[BatchItem]>::len);
    let batch_ok = batch.map(|items| items.iter().filter(|item| item.result.is_none()).count());
    let batch_results = batch.map(batch_results);
    let checked = match (batch_items, batch_ok) {
        (Some(items), Some(ok)) => format!(" ({ok} of {items} items ok)"),
        _ => checked,
    };
    let by = match (unit, user_unit) {
        (Some(unit), Some(user_unit)) => {
            format!("uid {} ({unit}, user unit {user_unit})", peer.uid)
        }
        (Some(unit), None) => format!("uid {} ({unit})", peer.uid),
        (None, _) => format!("uid {}", peer.uid),
    };
    macro_rules! event {
        ($level:expr, $id:expr, $message:expr) => {
            tracing::event!(
                target: AUDIT_TARGET,
                $level,
                MESSAGE_ID = $id,
                HOSTKMS_OP = op.as_str(),
                HOSTKMS_KEY = key,
                HOSTKMS_KEY_VERSION = version,
                HOSTKMS_RESULT = outcome.as_str(),
                HOSTKMS_ERROR = error.as_deref(),
                HOSTKMS_ANSWER_ERROR = answer_error.as_deref(),
                HOSTKMS_VERIFIED = verified,
                HOSTKMS_DESTINATION_KEY = destination_key,
                HOSTKMS_DESTINATION_KEY_VERSION = destination_version,
                HOSTKMS_CREDENTIAL_UNIT = credential_unit,
                HOSTKMS_CREDENTIAL = credential_id,
                HOSTKMS_BATCH_ITEMS = batch_items,
                HOSTKMS_BATCH_OK = batch_ok,
                HOSTKMS_BATCH_RESULTS = batch_results.as_deref(),
                HOSTKMS_PEER_UID = peer.uid,
                HOSTKMS_PEER_PID = pid,
                HOSTKMS_PEER_UNIT = unit,
                HOSTKMS_PEER_USER_UNIT = user_unit,
                HOSTKMS_PEER_UNIT_UNKNOWN = unit_unknown,
                "{}",
                $message
            )
        };
    }
    match outcome {
        RequestResult::Ok if unsent.is_some() => event!(
            Level::WARN,
            REQUEST_OK,
            format!("{op}{target} by {by}: ok{lost}")
        ),
        RequestResult::Ok => event!(
            Level::INFO,
            REQUEST_OK,
            format!("{op}{target} by {by}: ok{checked}")
        ),
        RequestResult::Denied => event!(
            Level::WARN,
            REQUEST_DENIED,
            format!("{op}{target} by {by}: denied, no grant allows it")
        ),
        RequestResult::Error => event!(
            Level::ERROR,
            REQUEST_FAILED,
            format!(
                "{op}{target} by {by}: {}",
                code.map(ErrorCode::name).unwrap_or_default()
            )
        ),
    }
}

/// Logs a frame refused before it became a request (undecodable, too
/// large), at priority warning.
pub fn bad_frame(peer: &Peer, code: ErrorCode, problem: &dyn std::fmt::Display) {
    let unit = peer.unit.as_deref();
    let by = match peer.pid {
        Some(pid) => format!("uid {} (pid {pid})", peer.uid),
        None => format!("uid {}", peer.uid),
    };
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = BAD_FRAME,
        HOSTKMS_ERROR = error_name(code),
        HOSTKMS_PEER_UID = peer.uid,
        HOSTKMS_PEER_PID = peer.pid,
        HOSTKMS_PEER_UNIT = unit,
        "refused a bad frame from {by}: {problem}",
    );
}

/// Logs a connection refused `Busy` at a connection limit or cut off by a
/// frame, write or memory limit; `why` names the limit.
pub fn connection_refused(peer: &Peer, why: &dyn std::fmt::Display) {
    let unit = peer.unit.as_deref();
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = CONNECTION_REFUSED,
        HOSTKMS_PEER_UID = peer.uid,
        HOSTKMS_PEER_PID = peer.pid,
        HOSTKMS_PEER_UNIT = unit,
        "uid {}: {why}",
        peer.uid,
    );
}

/// What a credential-socket event says: the credential asked for (when the
/// peer's address named one), what it was encrypted under (when known), and
/// the connecting process.
#[derive(Debug, Default, Clone)]
pub struct CredentialEvent {
    /// The unit the credential is for, from the peer's address.
    pub unit: Option<String>,
    /// The credential's id, from the peer's address.
    pub id: Option<String>,
    /// The key the credential file is encrypted under.
    pub key: Option<String>,
    /// Its version.
    pub version: Option<u32>,
    /// The connecting process's name (`/proc/PID/comm`), as far as known.
    pub comm: Option<String>,
}

/// Logs a delivered credential (priority info), or one refused or failed
/// (priority warning), with `reason` (a short word, `HOSTKMS_REASON`),
/// `code` (the error, when a request-like failure) and `why` (the details).
pub fn credential(
    peer: &Peer,
    event: &CredentialEvent,
    refusal: Option<(&str, Option<ErrorCode>, &dyn std::fmt::Display)>,
) {
    let unit = peer.unit.as_deref();
    let unit_unknown = peer.unit_unknown.map(crate::peer::UnitUnknown::as_str);
    let credential_unit = event.unit.as_deref().map(shown);
    let credential_id = event.id.as_deref().map(shown);
    let key = event.key.as_deref();
    let comm = event.comm.as_deref().map(shown);
    let what = match (&credential_id, &credential_unit) {
        (Some(id), Some(unit)) => format!("credential {id} of {unit}"),
        _ => "a credential".to_string(),
    };
    let under = match (key, event.version) {
        (Some(key), Some(v)) => format!(" ({key} v{v})"),
        (Some(key), None) => format!(" ({key})"),
        _ => String::new(),
    };
    let by = format!(
        "uid {}{}{}{}",
        peer.uid,
        peer.pid
            .map(|pid| format!(" pid {pid}"))
            .unwrap_or_default(),
        comm.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        unit.map(|u| format!(" in {u}")).unwrap_or_default(),
    );
    macro_rules! event {
        ($level:expr, $id:expr, $result:expr, $reason:expr, $error:expr, $message:expr) => {
            tracing::event!(
                target: AUDIT_TARGET,
                $level,
                MESSAGE_ID = $id,
                HOSTKMS_OP = Operation::Credential.as_str(),
                HOSTKMS_RESULT = $result,
                HOSTKMS_REASON = $reason,
                HOSTKMS_ERROR = $error,
                HOSTKMS_CREDENTIAL_UNIT = credential_unit.as_deref(),
                HOSTKMS_CREDENTIAL = credential_id.as_deref(),
                HOSTKMS_KEY = key,
                HOSTKMS_KEY_VERSION = event.version,
                HOSTKMS_PEER_UID = peer.uid,
                HOSTKMS_PEER_PID = peer.pid,
                HOSTKMS_PEER_UNIT = unit,
                HOSTKMS_PEER_UNIT_UNKNOWN = unit_unknown,
                HOSTKMS_PEER_COMM = comm.as_deref(),
                "{}",
                $message
            )
        };
    }
    match refusal {
        None => event!(
            Level::INFO,
            CREDENTIAL_DELIVERED,
            "ok",
            None::<&str>,
            None::<String>,
            format!("delivered {what}{under} to {by}")
        ),
        Some((reason, code, why)) => {
            let outcome = RequestResult::of(code.or(Some(ErrorCode::PermissionDenied)));
            event!(
                Level::WARN,
                CREDENTIAL_REFUSED,
                outcome.as_str(),
                Some(reason),
                code.map(error_name),
                format!("refused {what}{under} to {by}: {why}")
            )
        }
    }
}

/// `text` as an event shows it: as it is when it has no control character
/// and at most [`MAX_LOGGED_NAME`] characters, else quoted with escapes and cut.
fn shown(text: &str) -> String {
    if text.chars().count() <= MAX_LOGGED_NAME && !text.chars().any(char::is_control) {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX_LOGGED_NAME).collect();
        format!("{cut:?}")
    }
}

/// Logs, for each closed window, how many refusals (or requests that need
/// no grant) of one peer it counted beyond those logged one by one, at
/// priority warning.
pub fn summarized(closed: &[Suppressed]) {
    for window in closed {
        let what = match window.kind {
            Limited::Denied => "denied requests",
            Limited::InvalidCiphertext => "invalid ciphertexts",
            Limited::Failed => "failed requests",
            Limited::BadFrame => "bad frames",
            Limited::Connection => "refused or cut-off connections",
            Limited::OpenRequest => "ping, status and list requests",
            Limited::Impersonation => {
                "credential connections naming a unit they do not run in (impersonation attempts)"
            }
        };
        tracing::event!(
            target: AUDIT_TARGET,
            Level::WARN,
            MESSAGE_ID = REFUSALS_SUMMARIZED,
            HOSTKMS_EVENT = window.kind.as_str(),
            HOSTKMS_PEER_UID = window.uid,
            HOSTKMS_COUNT = window.suppressed,
            HOSTKMS_LOGGED = window.logged,
            HOSTKMS_WINDOW_SECS = window.over.as_secs(),
            "uid {}: {} more {what} within {:.1} s, counted here rather than logged one by one ({} were)",
            window.uid,
            window.suppressed,
            window.over.as_secs_f64(),
            window.logged,
        );
    }
}

/// Raises an alert for a peer that crossed a threshold.
pub fn peer_alert(alert: &PeerAlert) {
    let (id, what) = match alert.kind {
        AlertKind::RepeatedDenials => (ALERT_REPEATED_DENIALS, "was denied"),
        AlertKind::RepeatedInvalidCiphertexts => (
            ALERT_REPEATED_INVALID_CIPHERTEXTS,
            "failed to decrypt (invalid ciphertext)",
        ),
        AlertKind::EncryptionLimit => (ALERT_ENCRYPTION_LIMIT, "neared an encryption limit"),
        AlertKind::PendingDeletionUse => (
            ALERT_PENDING_DELETION_USE,
            "used a key scheduled for deletion",
        ),
    };
    tracing::event!(
        target: ALERT_TARGET,
        Level::ERROR,
        MESSAGE_ID = id,
        HOSTKMS_ALERT = alert.kind.as_str(),
        HOSTKMS_PEER_UID = alert.uid,
        HOSTKMS_COUNT = alert.count,
        HOSTKMS_WINDOW_SECS = alert.window.as_secs(),
        "alert: uid {} {what} {} times within {} s",
        alert.uid,
        alert.count,
        alert.window.as_secs(),
    );
}

/// Raises the alert for a key version nearing its encryption limit.
pub fn encryption_limit_alert(key: &str, version: u32, count: u64, limit: u64) {
    tracing::event!(
        target: ALERT_TARGET,
        Level::ERROR,
        MESSAGE_ID = ALERT_ENCRYPTION_LIMIT,
        HOSTKMS_ALERT = AlertKind::EncryptionLimit.as_str(),
        HOSTKMS_KEY = key,
        HOSTKMS_KEY_VERSION = version,
        HOSTKMS_COUNT = count,
        HOSTKMS_LIMIT = limit,
        "alert: version {version} of key {key} made {count} of its {limit} encryptions; it rotates itself at the limit, or rotate it now"
    );
}

/// A key name as events carry it: a valid name as it is; any other (from
/// a peer, unchecked) cut and escaped, so it cannot forge journal fields or
/// stderr lines.
fn logged_name(name: &str) -> String {
    logged_as(name, agent_proto::key_name::check(name).is_ok())
}

/// A name from a peer as events carry it: as it is when `valid` by its
/// own rule, else cut and escaped.
fn logged_as(name: &str, valid: bool) -> String {
    if valid {
        name.to_string()
    } else {
        let cut: String = name.chars().take(MAX_LOGGED_NAME).collect();
        format!("{cut:?}")
    }
}

/// Raises the alert for a use of `key`, scheduled for deletion on `due`
/// (unix seconds), by `peer`: someone still needs the key.
pub fn pending_deletion_use_alert(peer: &Peer, key: &str, op: Operation, due: Option<u64>) {
    let key = logged_name(key);
    let date = due.map(agent_proto::date::rfc3339);
    tracing::event!(
        target: ALERT_TARGET,
        Level::ERROR,
        MESSAGE_ID = ALERT_PENDING_DELETION_USE,
        HOSTKMS_ALERT = AlertKind::PendingDeletionUse.as_str(),
        HOSTKMS_OP = op.as_str(),
        HOSTKMS_KEY = key.as_str(),
        HOSTKMS_DELETION_DATE = date.as_deref(),
        HOSTKMS_PEER_UID = peer.uid,
        HOSTKMS_PEER_PID = peer.pid,
        HOSTKMS_PEER_UNIT = peer.unit.as_deref(),
        "alert: uid {} tried to {op} with key {key}, which is scheduled for deletion on {}: if it is still needed, cancel with `hostkms cancel-deletion {key}` (alerted once an hour per key and uid)",
        peer.uid,
        date.as_deref().unwrap_or("its due date"),
    );
}

/// The daemon rotated `key` because its rotation period was up: audited
/// like a request, with the daemon as the peer and the reason.
pub fn rotated_by_age(key: &str, version: u32, period: u64, was_due: u64) {
    let key = logged_name(key);
    let period = agent_proto::period::format_period(period);
    let was_due = agent_proto::date::rfc3339(was_due);
    tracing::event!(
        target: AUDIT_TARGET,
        Level::INFO,
        MESSAGE_ID = KEY_CHANGED_BY_DAEMON,
        HOSTKMS_OP = Operation::Rotate.as_str(),
        HOSTKMS_KEY = key.as_str(),
        HOSTKMS_KEY_VERSION = version,
        HOSTKMS_RESULT = RequestResult::Ok.as_str(),
        HOSTKMS_PEER = DAEMON_PEER,
        HOSTKMS_REASON = ROTATION_PERIOD,
        HOSTKMS_ROTATION_PERIOD = period.as_str(),
        "rotate {key} v{version} by the daemon: ok (rotation period {period}, due since {was_due})"
    );
}

/// The daemon deleted `key` (every version's secret) because its waiting
/// period was over: audited like a request, with the daemon as the peer.
pub fn deleted_as_scheduled(key: &str, versions: u32, due: u64) {
    let key = logged_name(key);
    let date = agent_proto::date::rfc3339(due);
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = KEY_CHANGED_BY_DAEMON,
        HOSTKMS_OP = DELETE_SCHEDULED,
        HOSTKMS_KEY = key.as_str(),
        HOSTKMS_KEY_VERSION = versions,
        HOSTKMS_RESULT = RequestResult::Ok.as_str(),
        HOSTKMS_PEER = DAEMON_PEER,
        HOSTKMS_DELETION_DATE = date.as_str(),
        "{DELETE_SCHEDULED} {key} by the daemon: ok; the secrets of its {versions} versions are deleted for good (scheduled for {date}); the key is revoked"
    );
}

/// The daemon could not do `op` (`rotate`, `delete-scheduled`) to `key`,
/// which is due; the next tick tries again.
pub fn change_by_daemon_failed(op: &str, key: &str, problem: &dyn std::fmt::Display) {
    let key = logged_name(key);
    tracing::event!(
        target: AUDIT_TARGET,
        Level::ERROR,
        MESSAGE_ID = KEY_CHANGE_BY_DAEMON_FAILED,
        HOSTKMS_OP = op,
        HOSTKMS_KEY = key.as_str(),
        HOSTKMS_RESULT = RequestResult::Error.as_str(),
        HOSTKMS_PEER = DAEMON_PEER,
        "{op} {key} by the daemon failed, trying again within a minute: {problem}"
    );
}

/// `HOSTKMS_PEER` of the changes the daemon makes on its own.
pub const DAEMON_PEER: &str = "daemon";
/// `HOSTKMS_REASON` of a rotation by age.
pub const ROTATION_PERIOD: &str = "rotation-period";
/// `HOSTKMS_OP` of a deletion at the end of its waiting period.
pub const DELETE_SCHEDULED: &str = "delete-scheduled";

/// What moved between hosts, for [`exported`] and [`imported`]: the key,
/// its versions that carried material, and the peer's name and
/// transport-key fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct Transfer<'a> {
    /// The key's name.
    pub key: &'a str,
    /// The key's newest version in the file.
    pub latest_version: u32,
    /// How many versions carried material (the rest are tombstones).
    pub live_versions: usize,
    /// The `[[transfer]]` peer's name.
    pub peer_name: &'a str,
    /// The fingerprint of the peer's transport key.
    pub peer_fingerprint: &'a str,
}

/// Logs an export of a key's material to a pinned peer, at priority
/// notice: key material left the host for good.
pub fn exported(peer: &Peer, transfer: &Transfer<'_>) {
    let Transfer {
        key,
        latest_version,
        live_versions,
        peer_name,
        peer_fingerprint,
    } = *transfer;
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = KEY_EXPORTED,
        HOSTKMS_KEY = key,
        HOSTKMS_KEY_VERSION = latest_version,
        HOSTKMS_LIVE_VERSIONS = live_versions,
        HOSTKMS_TRANSFER_PEER = peer_name,
        HOSTKMS_TRANSFER_FINGERPRINT = peer_fingerprint,
        HOSTKMS_PEER_UID = peer.uid,
        HOSTKMS_PEER_PID = peer.pid,
        HOSTKMS_PEER_UNIT = peer.unit.as_deref(),
        "exported key {key} (versions up to {latest_version}, {live_versions} with material) to transfer peer {peer_name} (transport key {peer_fingerprint}) for uid {}",
        peer.uid,
    );
}

/// Logs an import of a key's material from a pinned peer; `added` counts
/// the versions the store did not have.
pub fn imported(peer: &Peer, transfer: &Transfer<'_>, added: usize) {
    let Transfer {
        key,
        latest_version,
        live_versions,
        peer_name,
        peer_fingerprint,
    } = *transfer;
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = KEY_IMPORTED,
        HOSTKMS_KEY = key,
        HOSTKMS_KEY_VERSION = latest_version,
        HOSTKMS_LIVE_VERSIONS = live_versions,
        HOSTKMS_ADDED_VERSIONS = added,
        HOSTKMS_TRANSFER_PEER = peer_name,
        HOSTKMS_TRANSFER_FINGERPRINT = peer_fingerprint,
        HOSTKMS_PEER_UID = peer.uid,
        HOSTKMS_PEER_PID = peer.pid,
        HOSTKMS_PEER_UNIT = peer.unit.as_deref(),
        "imported key {key} (versions up to {latest_version}, {added} new) from transfer peer {peer_name} (transport key {peer_fingerprint}) for uid {}",
        peer.uid,
    );
}

/// The daemon serves.
pub fn ready(keys: usize, versions: usize, socket: &str, activated: bool) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::INFO,
        MESSAGE_ID = DAEMON_READY,
        HOSTKMS_KEYS = keys,
        HOSTKMS_VERSIONS = versions,
        HOSTKMS_SOCKET = socket,
        HOSTKMS_SOCKET_ACTIVATED = activated,
        "serving {keys} keys ({versions} versions) on {socket}{}",
        if activated { " (socket-activated)" } else { "" }
    );
}

/// The daemon stopped cleanly.
pub fn stopped(requests: u64) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::INFO,
        MESSAGE_ID = DAEMON_STOPPED,
        HOSTKMS_REQUESTS = requests,
        "stopped after {requests} requests"
    );
}

/// `hostkmsd accept-rollback` accepted the key store at `path` as it is.
pub fn rollback_accepted(
    path: &str,
    accepted: &crate::keystore::RollbackAccepted,
    keys: usize,
    versions: usize,
) {
    let previous = accepted
        .previous
        .map_or_else(|| "none".to_string(), |row| row.counter.to_string());
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = ROLLBACK_ACCEPTED,
        HOSTKMS_KEY_STORE = path,
        HOSTKMS_NV_INDEX = format_args!("{:#010x}", accepted.index),
        HOSTKMS_STORE_COUNTER = %previous,
        HOSTKMS_TPM_COUNTER = accepted.counter,
        HOSTKMS_NEW_COUNTER = accepted.new_counter,
        HOSTKMS_KEYS = keys,
        HOSTKMS_VERSIONS = versions,
        HOSTKMS_PROBLEM = %accepted.problem,
        "accept-rollback: {path} accepted as it is ({keys} keys, {versions} versions); rollback counter {:#010x} at {} (the store had recorded {previous}){}",
        accepted.index,
        accepted.counter,
        if accepted.new_counter { ", a new counter" } else { "" }
    );
}

/// A reload put new grants and limits in force.
pub fn reloaded(path: &Path, grants: usize) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::INFO,
        MESSAGE_ID = CONFIG_RELOADED,
        HOSTKMS_CONFIG = %path.display(),
        HOSTKMS_GRANTS = grants,
        "reloaded {}: {grants} grants and the limits are in force",
        path.display()
    );
}

/// A reload failed; the running config stays.
pub fn reload_failed(problem: &dyn std::fmt::Display) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::ERROR,
        MESSAGE_ID = CONFIG_RELOAD_FAILED,
        "reload failed, the running config stays in force: {problem}"
    );
}

/// The root key was rotated by `peer`: the key store (`keys` keys,
/// `versions` versions) is sealed under the root key `new_check` instead
/// of `old_check`. `in_place` is false when the new key's blobs are still
/// named by `root-next.seal` (the next start puts them in force).
pub fn root_key_rotated(
    peer: &Peer,
    old_check: &str,
    new_check: &str,
    keys: u32,
    versions: u32,
    in_place: bool,
) {
    let pending = if in_place {
        ""
    } else {
        "; its sealed copies are still named by root-next.seal, the next start puts them in force"
    };
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = ROOT_KEY_ROTATED,
        HOSTKMS_OLD_ROOT_KEY_CHECK = old_check,
        HOSTKMS_ROOT_KEY_CHECK = new_check,
        HOSTKMS_KEYS = keys,
        HOSTKMS_VERSIONS = versions,
        HOSTKMS_ROOT_BLOBS_IN_PLACE = in_place,
        HOSTKMS_PEER_UID = peer.uid,
        HOSTKMS_PEER_PID = peer.pid,
        HOSTKMS_PEER_UNIT = peer.unit.as_deref(),
        "root key rotated by uid {}: {keys} keys ({versions} versions) re-sealed under root key {new_check}, was {old_check}{pending}",
        peer.uid
    );
}

/// A grant is out of force because `name` (in its field `field`) does not
/// resolve; `problem` says where it is and what to do. Logged at start and
/// at every reload for as long as the name does not resolve.
pub fn grant_disabled(grant: usize, field: &str, name: &str, problem: &dyn std::fmt::Display) {
    let shown: String = name.chars().take(MAX_LOGGED_NAME).collect();
    tracing::event!(
        target: AUDIT_TARGET,
        Level::ERROR,
        MESSAGE_ID = GRANT_DISABLED,
        HOSTKMS_GRANT = grant,
        HOSTKMS_GRANT_FIELD = field,
        HOSTKMS_GRANT_NAME = %shown.escape_debug(),
        "grant #{grant} is disabled, the rest of the config is in force: {problem}"
    );
}

/// What one `hostkmsd restore` did, for its audit event.
#[derive(Debug, Clone)]
pub struct RestoreRecord<'a> {
    /// The backup it read.
    pub backup: &'a Path,
    /// The state dir it wrote.
    pub state_dir: &'a Path,
    /// The fingerprint of the bundle identity's recipient.
    pub bundle: &'a str,
    /// The fingerprints of the custodians whose identities or shares
    /// opened it, comma-separated.
    pub custodians: &'a str,
    /// The names of the keys added, comma-separated.
    pub keys: &'a str,
    /// How many keys were added.
    pub added: usize,
    /// How many versions they hold.
    pub versions: usize,
    /// Of those, how many are revoked (tombstones).
    pub revoked_versions: usize,
    /// The backup's keys left as the store had them (`--merge`).
    pub kept: usize,
    /// The check value of this host's root key, which now seals them.
    pub root_key_check: &'a str,
}

/// `hostkmsd restore` imported keys.
pub fn keys_restored(record: &RestoreRecord<'_>) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::INFO,
        MESSAGE_ID = KEYS_RESTORED,
        HOSTKMS_BACKUP = %record.backup.display(),
        HOSTKMS_STATE_DIR = %record.state_dir.display(),
        HOSTKMS_BUNDLE_FINGERPRINT = record.bundle,
        HOSTKMS_CUSTODIANS = record.custodians,
        HOSTKMS_KEYS = record.added,
        HOSTKMS_VERSIONS = record.versions,
        HOSTKMS_REVOKED_VERSIONS = record.revoked_versions,
        HOSTKMS_KEPT = record.kept,
        HOSTKMS_KEY_NAMES = record.keys,
        HOSTKMS_ROOT_KEY_CHECK = record.root_key_check,
        "restored {} keys ({} versions, {} of them revoked) from {} into {} under root key {}; {} keys of the backup were already in the store and kept as they were",
        record.added,
        record.versions,
        record.revoked_versions,
        record.backup.display(),
        record.state_dir.display(),
        record.root_key_check,
        record.kept,
    );
}

/// `hostkmsd restore` imported nothing, because of `problem`.
pub fn restore_failed(backup: &Path, problem: &dyn std::fmt::Display) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::ERROR,
        MESSAGE_ID = RESTORE_FAILED,
        HOSTKMS_BACKUP = %backup.display(),
        "restore from {} imported nothing: {problem}",
        backup.display()
    );
}

/// Audits the escrow of the recovery bundle identity `bundle_recipient` to
/// `custodians` (their recipients, named with their fingerprints), k of
/// which must join; `previous` is the identity it replaces, if rotated.
pub fn recovery_escrowed(
    dir: &str,
    bundle_recipient: &str,
    previous: Option<&str>,
    custodians: &[String],
    threshold: u32,
) {
    let named: Vec<String> = custodians
        .iter()
        .map(|r| format!("{r} ({})", crate::recovery::agefile::fingerprint(r)))
        .collect();
    let named = named.join(", ");
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = RECOVERY_ESCROWED,
        HOSTKMS_RECOVERY_DIR = dir,
        HOSTKMS_BUNDLE_RECIPIENT = bundle_recipient,
        HOSTKMS_PREVIOUS_BUNDLE_RECIPIENT = previous.unwrap_or(""),
        HOSTKMS_CUSTODIANS = %named,
        HOSTKMS_THRESHOLD = threshold,
        "recovery bundle identity {bundle_recipient} escrowed in {dir} to {} custodians, {threshold} of whom must join: {named}{}",
        custodians.len(),
        previous.map(|p| format!(" (it replaces {p})")).unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: Option<&str>, version: Option<u32>, result: Option<ErrorCode>) -> BatchItem {
        BatchItem {
            key: key.map(str::to_string),
            version,
            result,
            deletion_due: None,
        }
    }

    #[test]
    fn batch_results_list_every_item_and_no_name_can_break_the_list() {
        let mut odd = Subject::default();
        odd.set_key("a b:c");
        let items = [
            item(Some("orders"), Some(3), None),
            item(None, None, Some(ErrorCode::InvalidCiphertext)),
            BatchItem::of(&odd, Some(ErrorCode::KeyNotFound), None),
        ];
        assert_eq!(
            batch_results(&items),
            "0:orders:3:ok 1:-:-:invalid-ciphertext 2:%22a%20b%3Ac%22:-:key-not-found"
        );
    }

    #[test]
    fn a_batch_with_a_success_counts_as_one_for_flood_coalescing() {
        let denied = Some(ErrorCode::PermissionDenied);
        let mut subject = Subject::default();
        assert_eq!(subject.flood_code(denied), denied, "not a batch");
        subject.set_batch(vec![item(None, None, denied), item(None, None, None)]);
        assert_eq!(subject.flood_code(None), None);
        subject.set_batch(vec![
            item(None, None, denied),
            item(None, None, Some(ErrorCode::InvalidCiphertext)),
        ]);
        assert_eq!(
            subject.flood_code(None),
            denied,
            "no success: its first refusal"
        );
        assert_eq!(
            subject.flood_code(Some(ErrorCode::InvalidArgument)),
            Some(ErrorCode::InvalidArgument),
            "a batch refused as a whole"
        );
    }

    #[test]
    fn a_valid_key_name_is_logged_as_it_is_and_any_other_escaped_and_cut() {
        let mut subject = Subject::default();
        subject.set_key("app-db.v2_X");
        assert_eq!(subject.key(), Some("app-db.v2_X"));
        let longest = "k".repeat(agent_proto::key_name::MAX_LEN);
        subject.set_key(&longest);
        assert_eq!(subject.key(), Some(longest.as_str()));
        subject.set_key("x\nHOSTKMS_RESULT=ok");
        assert_eq!(subject.key(), Some("\"x\\nHOSTKMS_RESULT=ok\""));
        subject.set_key("");
        assert_eq!(subject.key(), Some("\"\""));
        let long = "y".repeat(agent_proto::key_name::MAX_LEN + 1);
        subject.set_key(&long);
        assert_eq!(
            subject.key(),
            Some(format!("{:?}", "y".repeat(MAX_LOGGED_NAME)).as_str())
        );
    }
}

/// The daemon started locked for `reason`: it serves `Ping` and `Status`
/// and refuses key operations until `hostkms unlock`.
pub fn daemon_locked(reason: &str) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = DAEMON_LOCKED,
        HOSTKMS_LOCK_REASON = reason,
        "hostkmsd is locked: {reason}"
    );
}

/// What an unlock attempt came to, for [`root_key_unlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockResult {
    /// The PIN opened the root key.
    Unlocked,
    /// The TPM refused the PIN.
    WrongPin,
    /// The TPM is in dictionary-attack lockout.
    Lockout,
    /// Anything else failed (the message says what).
    Failed,
}

impl UnlockResult {
    fn as_str(self) -> &'static str {
        match self {
            UnlockResult::Unlocked => "unlocked",
            UnlockResult::WrongPin => "wrong-pin",
            UnlockResult::Lockout => "lockout",
            UnlockResult::Failed => "failed",
        }
    }
}

/// One attempt by `peer` to open the root key with the PIN, for `purpose`
/// ("unlock", "reseal", "change-pin", "rotate-root"). Never the PIN.
pub fn root_key_unlock(
    peer: &Peer,
    purpose: &str,
    result: UnlockResult,
    tries_left: Option<u32>,
    detail: &str,
) {
    let level_warn = result != UnlockResult::Unlocked;
    let tries = match tries_left {
        None => String::new(),
        Some(1) => ", 1 try left".to_string(),
        Some(tries) => format!(", {tries} tries left"),
    };
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                target: AUDIT_TARGET,
                $level,
                MESSAGE_ID = ROOT_KEY_UNLOCK,
                HOSTKMS_OP = purpose,
                HOSTKMS_RESULT = result.as_str(),
                HOSTKMS_PIN_TRIES_LEFT = tries_left,
                HOSTKMS_PEER_UID = peer.uid,
                HOSTKMS_PEER_PID = peer.pid,
                HOSTKMS_PEER_UNIT = peer.unit.as_deref(),
                "{purpose} with the PIN by uid {}: {}{tries}{}{detail}",
                peer.uid,
                result.as_str(),
                if detail.is_empty() { "" } else { "; " }
            )
        };
    }
    if level_warn {
        event!(Level::WARN);
    } else {
        event!(Level::INFO);
    }
}

/// `peer` replaced the root key's sealed copies: `before` and `after` are
/// the modes in words, `why` the request ("reseal", "unlock --reseal",
/// "change-pin").
pub fn root_key_resealed(
    peer: Option<&Peer>,
    why: &str,
    before: &str,
    after: &str,
    generation: u64,
) {
    tracing::event!(
        target: AUDIT_TARGET,
        Level::WARN,
        MESSAGE_ID = ROOT_KEY_RESEALED,
        HOSTKMS_OP = why,
        HOSTKMS_SEALING_BEFORE = before,
        HOSTKMS_SEALING = after,
        HOSTKMS_SEALING_GENERATION = generation,
        HOSTKMS_PEER_UID = peer.map(|peer| peer.uid),
        HOSTKMS_PEER_PID = peer.map(|peer| peer.pid),
        "root key sealed again ({why}) by uid {}: was sealed to {before}, now to {after} (generation {generation})",
        peer.map_or("-".to_string(), |peer| peer.uid.to_string())
    );
}
