//! Rendering of the daemon's answers: short human-readable blocks and
//! tables, and JSON documents with stable field names for scripts.

use std::fmt::Write as _;

use agent_proto::counters::{self, RequestResult};
use agent_proto::date::rfc3339;
use agent_proto::{
    DataKey, KeyInfo, KeyState, LockState, MacTag, PcrChange, PublicKeyInfo, ResealInfo,
    RootRotation, Sealing, SealingStatus, Signature, StatusInfo, UnlockInfo, Unwrapped,
    Verification, VersionState, Wrapped,
};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::printable;
use crate::io::{base64_public, base64_secret};

/// A key state as the CLI prints it.
pub fn key_state(state: KeyState) -> &'static str {
    match state {
        KeyState::Enabled => "enabled",
        KeyState::Disabled => "disabled",
        KeyState::Revoked => "revoked",
        KeyState::PendingDeletion => "pending-deletion",
    }
}

/// A version state as the CLI prints it.
pub fn version_state(state: VersionState) -> &'static str {
    match state {
        VersionState::Enabled => "enabled",
        VersionState::Revoked => "revoked",
    }
}

/// A key id as 32 lower-case hex digits.
pub fn hex_id(id: &[u8; 16]) -> String {
    let mut out = String::with_capacity(32);
    for byte in id {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// One version of a key in JSON.
#[derive(Debug, Serialize)]
pub struct VersionJson {
    /// Version number.
    pub version: u32,
    /// Creation time, RFC 3339 UTC (`2026-12-30T10:00:00Z`).
    pub created: String,
    /// "enabled" or "revoked".
    pub state: &'static str,
    /// Encryptions made with this version.
    pub encryptions: u64,
}

/// A key's metadata in JSON.
#[derive(Debug, Serialize)]
pub struct KeyJson<'a> {
    /// 32 hex digits.
    pub id: String,
    /// Key name.
    pub name: &'a str,
    /// The key type: "aes256-gcm", "hmac-sha256", "ed25519", ...
    #[serde(rename = "type")]
    pub key_type: &'static str,
    /// Creation time, RFC 3339 UTC (`2026-12-30T10:00:00Z`).
    pub created: String,
    /// "enabled", "disabled", "pending-deletion" or "revoked".
    pub state: &'static str,
    /// The version new ciphertexts use.
    pub latest_version: u32,
    /// Versions below this refuse to unwrap.
    pub min_decryption_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<VersionJson>,
    /// How often the daemon rotates the key by age, as `90d`, `1w`,
    /// `12h`...; `null`: never by age.
    pub rotation_period: Option<String>,
    /// The same in seconds.
    pub rotation_period_secs: Option<u64>,
    /// When the next rotation by age is due, RFC 3339 UTC; `null` without a
    /// rotation period.
    pub next_rotation: Option<String>,
    /// When a key pending deletion is deleted at the earliest, RFC 3339
    /// UTC; `null` unless its state is `pending-deletion`.
    pub deletion_date: Option<String>,
    /// Free text for humans ("" when none).
    pub description: &'a str,
    /// Tags, by name.
    pub tags: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> From<&'a KeyInfo> for KeyJson<'a> {
    fn from(key: &'a KeyInfo) -> Self {
        KeyJson {
            id: hex_id(&key.id),
            name: &key.name,
            key_type: key.key_type.as_str(),
            created: rfc3339(key.created),
            state: key_state(key.state),
            latest_version: key.latest_version,
            min_decryption_version: key.min_decryption_version,
            versions: key
                .versions
                .iter()
                .map(|v| VersionJson {
                    version: v.version,
                    created: rfc3339(v.created),
                    state: version_state(v.state),
                    encryptions: v.encryptions,
                })
                .collect(),
            rotation_period: key.rotation_period.map(agent_proto::period::format_period),
            rotation_period_secs: key.rotation_period,
            next_rotation: key.next_rotation.map(rfc3339),
            deletion_date: key.deletion_date.map(rfc3339),
            description: &key.description,
            tags: &key.tags,
        }
    }
}

/// Whether `key` carries every tag of `wanted` with the same value
/// (`list --tag`).
pub fn has_tags(key: &KeyInfo, wanted: &std::collections::BTreeMap<String, String>) -> bool {
    wanted
        .iter()
        .all(|(name, value)| key.tags.get(name) == Some(value))
}

/// Tags as `name="value"` separated by ", ", each value quoted
/// ([`quoted`]) so that no value can read as more tags or as the columns
/// after them.
fn tags_human(tags: &std::collections::BTreeMap<String, String>) -> String {
    let shown: Vec<String> = tags
        .iter()
        .map(|(name, value)| format!("{}={}", printable(name), quoted(value)))
        .collect();
    shown.join(", ")
}

/// `text` in double quotes, with `"` and `\` escaped by a backslash and
/// every character that hides or reorders text
/// ([`agent_proto::text::is_display_control`]) shown as its `\u{...}`
/// escape: where it starts and ends, and what it holds, is unambiguous.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if agent_proto::text::is_display_control(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Serializes a public value as one line of JSON.
pub fn json_line<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    Ok(text)
}

/// A key's metadata as JSON.
pub fn key_json(key: &KeyInfo) -> Result<String, serde_json::Error> {
    json_line(&KeyJson::from(key))
}

/// A list of keys as a JSON array.
pub fn keys_json(keys: &[KeyInfo]) -> Result<String, serde_json::Error> {
    json_line(&keys.iter().map(KeyJson::from).collect::<Vec<_>>())
}

/// A key's metadata as a readable block with one line per version.
pub fn key_human(key: &KeyInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name:                    {}", printable(&key.name));
    let _ = writeln!(out, "id:                      {}", hex_id(&key.id));
    let _ = writeln!(out, "type:                    {}", key.key_type);
    let _ = writeln!(out, "state:                   {}", key_state(key.state));
    let _ = writeln!(out, "created:                 {}", rfc3339(key.created));
    let _ = writeln!(out, "latest version:          {}", key.latest_version);
    let _ = writeln!(
        out,
        "min decryption version:  {}",
        key.min_decryption_version
    );
    let _ = writeln!(
        out,
        "rotation period:         {}",
        agent_proto::period::format_setting(key.rotation_period)
    );
    if let Some(next) = key.next_rotation {
        let _ = writeln!(out, "next rotation:           {}", rfc3339(next));
    }
    if let Some(date) = key.deletion_date {
        let _ = writeln!(
            out,
            "deletion date:           {} (at the earliest; cancel-deletion takes it back)",
            rfc3339(date)
        );
    }
    if !key.description.is_empty() {
        let _ = writeln!(out, "description:             {}", quoted(&key.description));
    }
    if !key.tags.is_empty() {
        let _ = writeln!(out, "tags:                    {}", tags_human(&key.tags));
    }
    let _ = writeln!(out, "versions:");
    let _ = writeln!(
        out,
        "  {:<8} {:<9} {:<21} ENCRYPTIONS",
        "VERSION", "STATE", "CREATED"
    );
    for v in &key.versions {
        let _ = writeln!(
            out,
            "  {:<8} {:<9} {:<21} {}",
            v.version,
            version_state(v.state),
            rfc3339(v.created),
            v.encryptions
        );
    }
    out
}

/// One line per key: name, state, type, latest version, id, in aligned
/// columns.
pub fn keys_human(keys: &[KeyInfo]) -> String {
    let names: Vec<String> = keys.iter().map(|k| printable(&k.name)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    // "pending-deletion" is wider than the other states: the column grows
    // only when a key in that state is listed.
    let state_width = keys
        .iter()
        .map(|k| key_state(k.state).len())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = String::new();
    for (key, name) in keys.iter().zip(&names) {
        let mut line = format!(
            "{name:<width$}  {:<state_width$}  {:<11}  v{:<5}  {}",
            key_state(key.state),
            key.key_type.as_str(),
            key.latest_version,
            hex_id(&key.id)
        );
        if !key.tags.is_empty() {
            let _ = write!(line, "  [{}]", tags_human(&key.tags));
        }
        if !key.description.is_empty() {
            let _ = write!(line, "  {}", quoted(&key.description));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A root-key rotation for a human: both check values and what was
/// re-sealed.
pub fn root_rotation_human(rotation: &RootRotation) -> String {
    format!(
        "root key rotated\n  old check value: {}\n  new check value: {}\n  re-sealed:       {} keys, {} versions\nciphertexts are unaffected; back up the state dir again (root.seal, the root-*.pub/.priv copies it names and keystore.db together)\n",
        rotation.old_check, rotation.new_check, rotation.keys, rotation.versions
    )
}

/// Whether the daemon answered with its health only: peers that are not
/// admins and hold no `metrics` grant get no counters and no root key
/// check value (an allowed peer always gets the `keys` counter).
pub fn counters_withheld(status: &StatusInfo) -> bool {
    status.counters.is_empty() && status.root_key_check.is_empty()
}

/// The daemon's status as aligned lines (tests rely on these labels).
pub fn status_human(status: &StatusInfo) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "daemon version:   {}",
        printable(&status.daemon_version)
    );
    let _ = writeln!(
        out,
        "protocol:         {} to {}",
        status.oldest_protocol, status.newest_protocol
    );
    let _ = writeln!(out, "uptime:           {} s", status.uptime_secs);
    let _ = writeln!(out, "TPM reachable:    {}", yes_no(status.tpm_reachable));
    let _ = writeln!(out, "root key loaded:  {}", yes_no(status.root_key_loaded));
    let _ = writeln!(out, "root key:         {}", sealing_line(&status.sealing));
    if let LockState::PcrMismatch { changed } = &status.sealing.lock {
        out.push_str(&pcr_changes_human(changed));
    }
    if counters_withheld(status) {
        let _ = writeln!(out, "root key check:   withheld");
        let _ = writeln!(
            out,
            "counters:         withheld (admins and peers granted \"metrics\" see them)"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "root key check:   {}",
        printable(&status.root_key_check)
    );
    recovery_human(&mut out, &status.recovery);
    let _ = writeln!(out, "rollback counter: {}", rollback_line(&status.rollback));
    let counter = |name: &str| status.counters.get(name).copied().unwrap_or(0);
    for (label, name) in [
        ("keys:", counters::KEYS),
        ("versions:", counters::VERSIONS),
        ("requests:", counters::REQUESTS),
        ("denials:", counters::DENIALS),
        ("alerts:", counters::ALERTS),
    ] {
        let _ = writeln!(out, "{label:<17} {}", counter(name));
    }
    let by_op = requests_by_operation(status);
    if !by_op.is_empty() {
        let _ = writeln!(out, "requests by operation:");
        for (op, [ok, denied, error]) in by_op {
            let _ = writeln!(
                out,
                "  {:<24} ok {ok:<8} denied {denied:<6} error {error}",
                printable(op)
            );
        }
    }
    let alerts: Vec<_> = status
        .counters
        .iter()
        .filter_map(|(name, value)| Some((counters::alert_counter_kind(name)?, *value)))
        .filter(|(_, value)| *value > 0)
        .collect();
    if !alerts.is_empty() {
        let _ = writeln!(out, "alerts by kind:");
        for (kind, value) in alerts {
            let _ = writeln!(out, "  {:<24} {value}", printable(kind));
        }
    }
    out
}

/// The sealing of the root key in one line: whether the daemon is locked
/// and why, or how the root key it holds is sealed.
pub fn sealing_line(sealing: &SealingStatus) -> String {
    match &sealing.lock {
        LockState::Unlocked => format!("unlocked; {}", sealing_mode(&sealing.mode)),
        LockState::PinRequired => "locked (PIN required) \u{2014} run hostkms unlock".to_string(),
        LockState::NoRootKeyYet => {
            "locked: no root key yet \u{2014} run hostkms unlock to set the PIN and create it"
                .to_string()
        }
        LockState::PcrMismatch { changed } => {
            let pcrs: Vec<u8> = changed.iter().map(|change| change.pcr).collect();
            format!(
                "locked: {} changed since sealing \u{2014} run hostkms unlock",
                pcr_list(&pcrs)
            )
        }
    }
}

/// How the root key is sealed: "sealed to PCRs 7 and 14 and a PIN",
/// "sealed with a PIN", "not sealed to PCRs or a PIN".
pub fn sealing_mode(mode: &Sealing) -> String {
    match (mode.pcrs.is_empty(), mode.pin) {
        (true, false) => "not sealed to PCRs or a PIN".to_string(),
        (true, true) => "sealed with a PIN".to_string(),
        (false, false) => format!("sealed to {}", pcr_list(&mode.pcrs)),
        (false, true) => format!("sealed to {} and a PIN", pcr_list(&mode.pcrs)),
    }
}

/// "PCR 7", "PCRs 7 and 14", "PCRs 0, 2 and 7".
pub fn pcr_list(pcrs: &[u8]) -> String {
    let names: Vec<String> = pcrs.iter().map(u8::to_string).collect();
    match names.as_slice() {
        [] => "no PCR".to_string(),
        [one] => format!("PCR {one}"),
        [init @ .., last] => format!("PCRs {} and {last}", init.join(", ")),
    }
}

/// Bytes as lower-case hex (PCR values).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The PCRs that changed since sealing, one indented block each with the
/// value sealed and the value now (sha256, hex).
pub fn pcr_changes_human(changed: &[PcrChange]) -> String {
    let mut out = String::new();
    for change in changed {
        let _ = writeln!(out, "  PCR {} changed since sealing:", change.pcr);
        let _ = writeln!(out, "    sealed:  {}", hex(&change.sealed));
        let _ = writeln!(out, "    now:     {}", hex(&change.current));
    }
    out
}

/// A PCR change as JSON: hex values.
#[derive(Serialize)]
struct PcrChangeJson {
    pcr: u8,
    sealed: String,
    current: String,
}

impl From<&PcrChange> for PcrChangeJson {
    fn from(change: &PcrChange) -> Self {
        PcrChangeJson {
            pcr: change.pcr,
            sealed: hex(&change.sealed),
            current: hex(&change.current),
        }
    }
}

/// A PCR value as JSON: hex.
#[derive(Serialize)]
struct PcrValueJson {
    pcr: u8,
    sha256: String,
}

/// A sealing as JSON.
#[derive(Serialize)]
struct SealingJson {
    pcrs: Vec<u8>,
    pin: bool,
    pcr_values: Vec<PcrValueJson>,
}

impl From<&Sealing> for SealingJson {
    fn from(mode: &Sealing) -> Self {
        SealingJson {
            pcrs: mode.pcrs.clone(),
            pin: mode.pin,
            pcr_values: mode
                .pcr_values
                .iter()
                .map(|value| PcrValueJson {
                    pcr: value.pcr,
                    sha256: hex(&value.sha256),
                })
                .collect(),
        }
    }
}

/// The lock state's name in JSON.
fn lock_name(lock: &LockState) -> &'static str {
    match lock {
        LockState::Unlocked => "unlocked",
        LockState::NoRootKeyYet => "no_root_key_yet",
        LockState::PinRequired => "pin_required",
        LockState::PcrMismatch { .. } => "pcr_mismatch",
    }
}

/// `status`'s sealing as JSON.
#[derive(Serialize)]
struct SealingStatusJson {
    locked: bool,
    lock: &'static str,
    changed_pcrs: Vec<PcrChangeJson>,
    mode: SealingJson,
}

impl From<&SealingStatus> for SealingStatusJson {
    fn from(sealing: &SealingStatus) -> Self {
        let changed_pcrs = match &sealing.lock {
            LockState::PcrMismatch { changed } => changed.iter().map(Into::into).collect(),
            _ => Vec::new(),
        };
        SealingStatusJson {
            locked: sealing.lock.is_locked(),
            lock: lock_name(&sealing.lock),
            changed_pcrs,
            mode: (&sealing.mode).into(),
        }
    }
}

/// The daemon's status as JSON: its fields as the protocol names them,
/// with `sealing` as {"locked", "lock", "changed_pcrs", "mode"} and PCR
/// values in hex.
pub fn status_json(status: &StatusInfo) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(status)?;
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "sealing".to_string(),
            serde_json::to_value(SealingStatusJson::from(&status.sealing))?,
        );
    }
    json_line(&value)
}

/// What `unlock` did, for a person.
pub fn unlock_human(info: &UnlockInfo) -> String {
    let mut out = format!(
        "unlocked; root key check value {}\n",
        printable(&info.root_key_check)
    );
    if info.changed_pcrs.is_empty() {
        return out;
    }
    let pcrs: Vec<u8> = info.changed_pcrs.iter().map(|c| c.pcr).collect();
    if info.resealed {
        let _ = writeln!(
            out,
            "the PCR copy of the root key is resealed to the current values of {}: the next start unlocks by itself",
            pcr_list(&pcrs)
        );
    } else {
        let _ = writeln!(
            out,
            "unlocked for this boot only: {} still differ from the values sealed, so the next start will be locked again unless `hostkms reseal` is run",
            pcr_list(&pcrs)
        );
    }
    out
}

/// What `unlock` did, as JSON: {"root_key_check", "resealed",
/// "changed_pcrs": [{"pcr", "sealed", "current"}]}.
pub fn unlock_json(info: &UnlockInfo) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Json<'a> {
        root_key_check: &'a str,
        resealed: bool,
        changed_pcrs: Vec<PcrChangeJson>,
    }
    json_line(&Json {
        root_key_check: &info.root_key_check,
        resealed: info.resealed,
        changed_pcrs: info.changed_pcrs.iter().map(Into::into).collect(),
    })
}

/// A reseal's (or a PIN change's) before and after, for a person.
pub fn reseal_human(info: &ResealInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "before: {}", sealing_mode(&info.before));
    out.push_str(&pcr_values_human(&info.before));
    let _ = writeln!(
        out,
        "after:  {}{}",
        sealing_mode(&info.after),
        if info.dry_run { " (dry run)" } else { "" }
    );
    out.push_str(&pcr_values_human(&info.after));
    if info.dry_run {
        let _ = writeln!(out, "dry run: nothing changed");
    }
    out
}

/// The PCR values of a sealing, one indented line each.
fn pcr_values_human(mode: &Sealing) -> String {
    let mut out = String::new();
    for value in &mode.pcr_values {
        let _ = writeln!(out, "  PCR {:<2} {}", value.pcr, hex(&value.sha256));
    }
    out
}

/// A reseal's (or a PIN change's) before and after, as JSON: {"dry_run",
/// "before", "after"}, each {"pcrs", "pin", "pcr_values": [{"pcr",
/// "sha256"}]}.
pub fn reseal_json(info: &ResealInfo) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Json {
        dry_run: bool,
        before: SealingJson,
        after: SealingJson,
    }
    json_line(&Json {
        dry_run: info.dry_run,
        before: (&info.before).into(),
        after: (&info.after).into(),
    })
}

/// The recovery lines of `status`: whether a lost TPM loses the keys.
fn recovery_human(out: &mut String, recovery: &agent_proto::RecoveryStatus) {
    if !recovery.configured {
        let why = if recovery.problem.is_empty() {
            "no [recovery] configured".to_string()
        } else {
            printable(&recovery.problem)
        };
        let _ = writeln!(
            out,
            "recoverable:      NO: keys are lost if this TPM is lost ({why})"
        );
        return;
    }
    let _ = writeln!(
        out,
        "recoverable:      yes, by {} of {} custodians",
        recovery.threshold, recovery.custodians
    );
    let _ = writeln!(out, "recovery dir:     {}", printable(&recovery.dir));
    let _ = writeln!(
        out,
        "bundle recipient: {}",
        printable(&recovery.bundle_recipient)
    );
    if recovery.current {
        let _ = writeln!(out, "recovery current: yes");
    } else {
        let _ = writeln!(
            out,
            "recovery current: NO: {}",
            printable(&recovery.problem)
        );
    }
}

/// The key store's binding to its TPM NV counter, in one line.
fn rollback_line(rollback: &agent_proto::RollbackStatus) -> String {
    if !rollback.bound {
        return "not bound (an older copy of keystore.db put back would not be noticed)"
            .to_string();
    }
    let mut line = format!(
        "NV index {:#010x}, at {}",
        rollback.nv_index, rollback.store_counter
    );
    if rollback.pending_increments > 0 {
        let _ = write!(
            line,
            "; {} increments pending (the TPM has not made them yet: until it does, putting an older keystore.db back would go unnoticed)",
            rollback.pending_increments
        );
    }
    if !rollback.problem.is_empty() {
        let _ = write!(line, "; PROBLEM: {}", rollback.problem);
    }
    line
}

/// The `requests.<op>.<result>` counters as (op, result, count), with the
/// names as the daemon spelled them: a newer daemon's operations show too.
fn request_counters(status: &StatusInfo) -> impl Iterator<Item = (&str, &str, u64)> {
    status.counters.iter().filter_map(|(name, value)| {
        let (op, result) = counters::request_counter_parts(name)?;
        Some((op, result, *value))
    })
}

/// The `requests.<op>.<result>` counters of operations that saw any
/// request, as `[ok, denied, error]`.
fn requests_by_operation(status: &StatusInfo) -> Vec<(&str, [u64; 3])> {
    let mut by_op: Vec<(&str, [u64; 3])> = Vec::new();
    for (op, result, value) in request_counters(status) {
        let slot = match RequestResult::from_name(result) {
            Some(RequestResult::Ok) => 0,
            Some(RequestResult::Denied) => 1,
            Some(RequestResult::Error) => 2,
            None => continue,
        };
        match by_op.iter_mut().find(|(known, _)| *known == op) {
            Some((_, counts)) => counts[slot] += value,
            None => {
                let mut counts = [0; 3];
                counts[slot] = value;
                by_op.push((op, counts));
            }
        }
    }
    by_op.retain(|(_, counts)| counts.iter().any(|count| *count > 0));
    by_op
}

/// The daemon's counters in the OpenMetrics text format, for a Prometheus
/// scrape or node_exporter's textfile collector. Label values are escaped;
/// the exposition ends with `# EOF`.
pub fn metrics_openmetrics(status: &StatusInfo) -> String {
    let mut out = String::new();
    let counter = |name: &str| status.counters.get(name).copied().unwrap_or(0);
    let family = |out: &mut String, name: &str, kind: &str, unit: Option<&str>, help: &str| {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        if let Some(unit) = unit {
            let _ = writeln!(out, "# UNIT {name} {unit}");
        }
        let _ = writeln!(out, "# HELP {name} {help}");
    };
    family(
        &mut out,
        "hostkms_requests",
        "counter",
        None,
        "Requests answered since the daemon started, by operation and result.",
    );
    for (op, result, value) in request_counters(status) {
        let _ = writeln!(
            out,
            "hostkms_requests_total{{op=\"{}\",result=\"{}\"}} {value}",
            label_value(op),
            label_value(result)
        );
    }
    family(
        &mut out,
        "hostkms_denials",
        "counter",
        None,
        "Requests denied for want of a grant since the daemon started.",
    );
    let _ = writeln!(out, "hostkms_denials_total {}", counter(counters::DENIALS));
    family(
        &mut out,
        "hostkms_alerts",
        "counter",
        None,
        "Alerts raised since the daemon started, by kind.",
    );
    for (name, value) in &status.counters {
        if let Some(kind) = counters::alert_counter_kind(name) {
            let _ = writeln!(
                out,
                "hostkms_alerts_total{{kind=\"{}\"}} {value}",
                label_value(kind)
            );
        }
    }
    let gauges = [
        (
            "hostkms_keys",
            None,
            "Keys in the key store, revoked ones included.",
            counter(counters::KEYS),
        ),
        (
            "hostkms_key_versions",
            None,
            "Key versions in the key store.",
            counter(counters::VERSIONS),
        ),
        (
            "hostkms_uptime_seconds",
            Some("seconds"),
            "Seconds since the daemon started.",
            status.uptime_secs,
        ),
        (
            "hostkms_tpm_reachable",
            None,
            "1 when the TPM answered the daemon's last probe, else 0.",
            u64::from(status.tpm_reachable),
        ),
        (
            "hostkms_root_key_loaded",
            None,
            "1 when the daemon holds an unsealed root key, else 0.",
            u64::from(status.root_key_loaded),
        ),
        (
            "hostkms_recovery_configured",
            None,
            "1 when the keys are escrowed to offline custodians ([recovery]), else 0: with 0, losing the TPM loses every key.",
            u64::from(status.recovery.configured),
        ),
        (
            "hostkms_recovery_current",
            None,
            "1 when every acknowledged key change is in the recovery directory, else 0.",
            u64::from(status.recovery.configured && status.recovery.current),
        ),
        (
            "hostkms_rollback_bound",
            None,
            "1 when the key store is bound to a TPM NV counter against rollback, else 0.",
            u64::from(status.rollback.bound),
        ),
        (
            "hostkms_rollback_pending_increments",
            None,
            "TPM counter increments still owed; rollback protection lags until 0.",
            status.rollback.pending_increments,
        ),
    ];
    for (name, unit, help, value) in gauges {
        family(&mut out, name, "gauge", unit, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "hostkms_build",
        "info",
        None,
        "The daemon's version.",
    );
    let _ = writeln!(
        out,
        "hostkms_build_info{{version=\"{}\"}} 1",
        label_value(&status.daemon_version)
    );
    out.push_str("# EOF\n");
    out
}

/// The daemon's counters as one JSON object, the same values as
/// [`metrics_openmetrics`] under plain names: `requests` (operation →
/// `{ok, denied, error}`), `denials`, `alerts` (kind → count), `keys`,
/// `key_versions`, `uptime_secs`, `tpm_reachable`, `root_key_loaded`,
/// `recovery_configured`, `recovery_current`, `rollback_bound`,
/// `rollback_pending_increments`, `daemon_version`.
pub fn metrics_json(status: &StatusInfo) -> Result<String, serde_json::Error> {
    let counter = |name: &str| status.counters.get(name).copied().unwrap_or(0);
    let mut requests = serde_json::Map::new();
    for (op, result, value) in request_counters(status) {
        let entry = requests
            .entry(op.to_string())
            .or_insert_with(|| serde_json::json!({ "ok": 0, "denied": 0, "error": 0 }));
        if let Some(slot) = entry.get_mut(result) {
            *slot = serde_json::Value::from(value);
        }
    }
    let alerts: serde_json::Map<String, serde_json::Value> = status
        .counters
        .iter()
        .filter_map(|(name, value)| {
            Some((
                counters::alert_counter_kind(name)?.to_string(),
                serde_json::Value::from(*value),
            ))
        })
        .collect();
    json_line(&serde_json::json!({
        "requests": requests,
        "denials": counter(counters::DENIALS),
        "alerts": alerts,
        "keys": counter(counters::KEYS),
        "key_versions": counter(counters::VERSIONS),
        "uptime_secs": status.uptime_secs,
        "tpm_reachable": status.tpm_reachable,
        "root_key_loaded": status.root_key_loaded,
        "recovery_configured": status.recovery.configured,
        "recovery_current": status.recovery.configured && status.recovery.current,
        "rollback_bound": status.rollback.bound,
        "rollback_pending_increments": status.rollback.pending_increments,
        "daemon_version": status.daemon_version,
    }))
}

/// A label value as OpenMetrics escapes it: backslash, quote and newline.
fn label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c if c.is_control() => escaped.push('?'),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The answer to wrap or rewrap as JSON: key, version, base64 ciphertext.
pub fn wrapped_json(wrapped: &Wrapped) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct WrappedJson<'a> {
        key: &'a str,
        version: u32,
        ciphertext: String,
    }
    json_line(&WrappedJson {
        key: &wrapped.key,
        version: wrapped.version,
        ciphertext: base64_public(wrapped.ciphertext.as_bytes()),
    })
}

/// The answer to mac as JSON: key, version, base64 tag.
pub fn mac_json(mac: &MacTag) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct MacJson<'a> {
        key: &'a str,
        version: u32,
        tag: String,
    }
    json_line(&MacJson {
        key: &mac.key,
        version: mac.version,
        tag: base64_public(&mac.tag),
    })
}

/// The answer to sign as JSON: key, version, base64 signature.
pub fn signature_json(signature: &Signature) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct SignatureJson<'a> {
        key: &'a str,
        version: u32,
        signature: String,
    }
    json_line(&SignatureJson {
        key: &signature.key,
        version: signature.version,
        signature: base64_public(&signature.signature),
    })
}

/// The answer to verify or verify-mac as JSON: key, valid, and the version
/// that verified (null when invalid).
pub fn verification_json(verification: &Verification) -> Result<String, serde_json::Error> {
    json_line(&serde_json::json!({
        "key": verification.key,
        "valid": verification.valid,
        "version": verification.version,
    }))
}

/// The answer to verify or verify-mac for a human: `valid (version N)` or
/// `invalid`.
pub fn verification_human(verification: &Verification) -> String {
    match (verification.valid, verification.version) {
        (true, Some(version)) => format!("valid (version {version})\n"),
        (true, None) => "valid\n".to_string(),
        (false, _) => "invalid\n".to_string(),
    }
}

/// A public key (SubjectPublicKeyInfo DER) as PEM: `-----BEGIN PUBLIC
/// KEY-----`, base64 in lines of 64, the end line, what openssl reads.
pub fn public_key_pem(spki_der: &[u8]) -> Result<String, pem_rfc7468::Error> {
    let mut pem = pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, spki_der)?;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    Ok(pem)
}

/// A public key as JSON: key, version, type, revoked, the PEM and the DER
/// in base64.
pub fn public_key_json(info: &PublicKeyInfo, pem: &str) -> Result<String, serde_json::Error> {
    json_line(&serde_json::json!({
        "key": info.key,
        "version": info.version,
        "type": info.key_type.as_str(),
        "revoked": info.revoked,
        "pem": pem,
        "spki_der": base64_public(&info.spki_der),
    }))
}

/// Serializes a value that contains secrets into a wiped buffer sized up
/// front (`estimate` bytes plus room for the rest) so it never reallocates.
fn secret_json_line<T: Serialize>(
    value: &T,
    estimate: usize,
) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut buf = Zeroizing::new(Vec::with_capacity(estimate.saturating_add(256)));
    serde_json::to_writer(&mut *buf, value)?;
    buf.push(b'\n');
    Ok(buf)
}

/// The answer to unwrap as JSON: key, version, base64 plaintext (secret).
pub fn unwrapped_json(unwrapped: &Unwrapped) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    #[derive(Serialize)]
    struct UnwrappedJson<'a> {
        key: &'a str,
        version: u32,
        plaintext: &'a str,
    }
    let plaintext = base64_secret(unwrapped.plaintext.expose(), 0);
    secret_json_line(
        &UnwrappedJson {
            key: &unwrapped.key,
            version: unwrapped.version,
            plaintext: &plaintext,
        },
        plaintext.len() + unwrapped.key.len() * 6,
    )
}

/// A data key as JSON: key, version, plaintext (base64 or null), ciphertext.
pub fn data_key_json(data_key: &DataKey) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    #[derive(Serialize)]
    struct DataKeyJson<'a> {
        key: &'a str,
        version: u32,
        plaintext: Option<&'a str>,
        ciphertext: String,
    }
    let plaintext = data_key
        .plaintext
        .as_ref()
        .map(|p| base64_secret(p.expose(), 0));
    let ciphertext = base64_public(data_key.ciphertext.as_bytes());
    let estimate =
        plaintext.as_ref().map_or(0, |p| p.len()) + ciphertext.len() + data_key.key.len() * 6;
    secret_json_line(
        &DataKeyJson {
            key: &data_key.key,
            version: data_key.version,
            plaintext: plaintext.as_ref().map(|p| p.as_str()),
            ciphertext,
        },
        estimate,
    )
}

/// Random bytes as JSON: how many, and the bytes in base64 (a wiped
/// buffer: random bytes are often made into keys).
pub fn random_json(bytes: usize, base64: &str) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    #[derive(Serialize)]
    struct RandomJson<'a> {
        bytes: usize,
        random: &'a str,
    }
    secret_json_line(
        &RandomJson {
            bytes,
            random: base64,
        },
        base64.len(),
    )
}

/// A data key as `key`, `version`, `plaintext` (when present) and
/// `ciphertext` lines, in a wiped buffer.
pub fn data_key_human(data_key: &DataKey) -> Zeroizing<String> {
    let name = printable(&data_key.key);
    let ciphertext = base64_public(data_key.ciphertext.as_bytes());
    let plaintext_len = data_key
        .plaintext
        .as_ref()
        .map_or(0, agent_proto::SecretBytes::len);
    let capacity = name.len() + ciphertext.len() + plaintext_len * 4 / 3 + 64;
    let mut out = Zeroizing::new(String::with_capacity(capacity));
    out.push_str("key ");
    out.push_str(&name);
    out.push('\n');
    let _ = writeln!(out, "version {}", data_key.version);
    if let Some(plaintext) = &data_key.plaintext {
        let encoded = base64_secret(plaintext.expose(), 0);
        out.push_str("plaintext ");
        out.push_str(&encoded);
        out.push('\n');
    }
    out.push_str("ciphertext ");
    out.push_str(&ciphertext);
    out.push('\n');
    out
}

/// `datakey --out FILE` for a human: key, version, where the data key in
/// clear went, and the wrapped data key in base64 (no secret).
pub fn data_key_file_human(data_key: &DataKey, file: &std::path::Path) -> String {
    format!(
        "key {}\nversion {}\nplaintext written to {} ({} bytes)\nciphertext {}\n",
        printable(&data_key.key),
        data_key.version,
        printable(&file.display().to_string()),
        data_key
            .plaintext
            .as_ref()
            .map_or(0, agent_proto::SecretBytes::len),
        base64_public(data_key.ciphertext.as_bytes())
    )
}

/// `datakey --out FILE --json`: `key`, `version`, `plaintext_file` (the
/// file holding the data key in clear), `bytes` and `ciphertext` (base64).
pub fn data_key_file_json(
    data_key: &DataKey,
    file: &std::path::Path,
) -> Result<String, serde_json::Error> {
    json_line(&serde_json::json!({
        "key": data_key.key,
        "version": data_key.version,
        "plaintext_file": file.display().to_string(),
        "bytes": data_key.plaintext.as_ref().map_or(0, agent_proto::SecretBytes::len),
        "ciphertext": base64_public(data_key.ciphertext.as_bytes()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::{Ciphertext, SecretBytes, VersionInfo};

    fn sample_key() -> KeyInfo {
        KeyInfo {
            id: [0xab; 16],
            name: "app-db".to_string(),
            created: 1_700_000_000,
            state: KeyState::Disabled,
            latest_version: 2,
            min_decryption_version: 1,
            versions: vec![
                VersionInfo {
                    version: 1,
                    created: 1_700_000_000,
                    state: VersionState::Revoked,
                    encryptions: 3,
                },
                VersionInfo {
                    version: 2,
                    created: 1_700_086_400,
                    state: VersionState::Enabled,
                    encryptions: 0,
                },
            ],
            key_type: agent_proto::KeyType::Aes256Gcm,
            description: String::new(),
            tags: Default::default(),
            rotation_period: None,
            next_rotation: None,
            deletion_date: None,
        }
    }

    #[test]
    fn keys_render_as_json() {
        let value: serde_json::Value =
            serde_json::from_str(&key_json(&sample_key()).expect("json")).expect("parse");
        assert_eq!(value["id"], "ab".repeat(16));
        assert_eq!(value["name"], "app-db");
        assert_eq!(value["type"], "aes256-gcm");
        assert_eq!(value["state"], "disabled");
        assert_eq!(value["created"], "2023-11-14T22:13:20Z");
        assert_eq!(value["versions"][1]["created"], "2023-11-15T22:13:20Z");
        assert_eq!(value["latest_version"], 2);
        assert_eq!(value["min_decryption_version"], 1);
        assert_eq!(value["versions"][0]["state"], "revoked");
        assert_eq!(value["versions"][0]["encryptions"], 3);
        assert_eq!(value["versions"][1]["version"], 2);
        let list: serde_json::Value =
            serde_json::from_str(&keys_json(&[sample_key()]).expect("json")).expect("parse");
        assert_eq!(list.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn keys_render_for_humans() {
        let text = key_human(&sample_key());
        assert!(text.contains("name:                    app-db\n"), "{text}");
        assert!(text.contains(&"ab".repeat(16)), "{text}");
        assert!(
            text.contains("state:                   disabled\n"),
            "{text}"
        );
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        assert!(
            text.contains("  1        revoked   2023-11-14T22:13:20Z  3\n"),
            "{text}"
        );
        let list = keys_human(&[sample_key()]);
        assert_eq!(list.lines().count(), 1);
        assert!(
            list.starts_with("app-db  disabled  aes256-gcm   v2"),
            "{list}"
        );
        let mut signing = sample_key();
        signing.key_type = agent_proto::KeyType::MlDsa65;
        assert!(
            key_human(&signing).contains("type:                    ml-dsa-65\n"),
            "{}",
            key_human(&signing)
        );
        assert!(
            keys_human(&[signing]).starts_with("app-db  disabled  ml-dsa-65    v2"),
            "{list}"
        );
        let pending = KeyInfo {
            name: "old".to_string(),
            state: KeyState::PendingDeletion,
            ..sample_key()
        };
        let list = keys_human(&[sample_key(), pending]);
        let columns: Vec<usize> = list
            .lines()
            .map(|l| l.find("aes256-gcm").expect(l))
            .collect();
        assert_eq!(
            columns[0], columns[1],
            "the type column stays aligned:\n{list}"
        );
        assert!(
            list.contains("old     pending-deletion  aes256-gcm"),
            "{list}"
        );
    }

    #[test]
    fn tags_and_descriptions_cannot_imitate_other_tags_or_columns() {
        let mut spoof = sample_key();
        spoof.tags.insert(
            "env".to_string(),
            "dev, owner=security-team, pci=approved".to_string(),
        );
        spoof
            .tags
            .insert("q".to_string(), "say \"hi\" \\ \u{202E}x".to_string());
        spoof.description = "          (enabled, audited)".to_string();
        let list = keys_human(std::slice::from_ref(&spoof));
        assert!(
            list.contains(
                r#"[env="dev, owner=security-team, pci=approved", q="say \"hi\" \\ \u{202e}x"]"#
            ),
            "{list}"
        );
        assert!(
            list.contains(r#"  "          (enabled, audited)""#),
            "{list}"
        );
        let text = key_human(&spoof);
        assert!(
            text.contains(
                r#"tags:                    env="dev, owner=security-team, pci=approved", q="say \"hi\" \\ \u{202e}x""#
            ),
            "{text}"
        );
        assert!(
            text.contains("description:             \"          (enabled, audited)\"\n"),
            "{text}"
        );
    }

    #[test]
    fn the_lifecycle_renders_in_both_forms() {
        let plain = sample_key();
        let text = key_human(&plain);
        assert!(text.contains("rotation period:         off\n"), "{text}");
        assert!(
            !text.contains("next rotation") && !text.contains("deletion date"),
            "{text}"
        );
        let value: serde_json::Value =
            serde_json::from_str(&key_json(&plain).expect("json")).expect("parse");
        for field in [
            "rotation_period",
            "rotation_period_secs",
            "next_rotation",
            "deletion_date",
        ] {
            assert!(value[field].is_null(), "{field}: {value}");
        }
        let key = KeyInfo {
            state: KeyState::PendingDeletion,
            rotation_period: Some(90 * 86_400),
            next_rotation: Some(1_798_624_800),
            deletion_date: Some(1_798_711_200),
            ..sample_key()
        };
        let text = key_human(&key);
        assert!(
            text.contains("state:                   pending-deletion\n"),
            "{text}"
        );
        assert!(text.contains("rotation period:         90d\n"), "{text}");
        assert!(
            text.contains("next rotation:           2026-12-30T10:00:00Z\n"),
            "{text}"
        );
        assert!(
            text.contains("deletion date:           2026-12-31T10:00:00Z"),
            "{text}"
        );
        let value: serde_json::Value =
            serde_json::from_str(&key_json(&key).expect("json")).expect("parse");
        assert_eq!(value["state"], "pending-deletion");
        assert_eq!(value["rotation_period"], "90d");
        assert_eq!(value["rotation_period_secs"], 90 * 86_400);
        assert_eq!(value["next_rotation"], "2026-12-30T10:00:00Z");
        assert_eq!(value["deletion_date"], "2026-12-31T10:00:00Z");
    }

    #[test]
    fn verifications_render_with_their_version() {
        let mut verification = Verification {
            key: "rel".to_string(),
            valid: true,
            version: Some(2),
        };
        assert_eq!(verification_human(&verification), "valid (version 2)\n");
        let json: serde_json::Value =
            serde_json::from_str(&verification_json(&verification).expect("json")).expect("parse");
        assert_eq!(
            json,
            serde_json::json!({"key": "rel", "valid": true, "version": 2})
        );
        verification.valid = false;
        verification.version = None;
        assert_eq!(verification_human(&verification), "invalid\n");
        let json: serde_json::Value =
            serde_json::from_str(&verification_json(&verification).expect("json")).expect("parse");
        assert_eq!(json["valid"], false);
        assert!(json["version"].is_null());
    }

    #[test]
    fn public_keys_render_as_pem_in_lines_of_64() {
        let der: Vec<u8> = (0u8..=99).collect();
        let pem = public_key_pem(&der).expect("pem");
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN PUBLIC KEY-----"));
        assert_eq!(lines.last(), Some(&"-----END PUBLIC KEY-----"));
        assert!(pem.ends_with("-----\n"));
        let body: String = lines[1..lines.len() - 1].concat();
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        assert_eq!(body, base64_public(&der));
        let (label, decoded) = pem_rfc7468::decode_vec(pem.as_bytes()).expect("decode");
        assert_eq!((label, decoded), ("PUBLIC KEY", der));
    }

    /// A status as the daemon sends it to an admin, with a few counts set,
    /// plus the counter of an operation only a newer daemon knows.
    fn sample_status() -> StatusInfo {
        use agent_proto::Operation;
        let mut counters = std::collections::BTreeMap::new();
        for op in Operation::ALL {
            for result in RequestResult::ALL {
                counters.insert(counters::request_counter(op, result), 0);
            }
        }
        counters.insert(
            counters::request_counter(Operation::Wrap, RequestResult::Ok),
            3,
        );
        counters.insert(
            counters::request_counter(Operation::Rotate, RequestResult::Denied),
            1,
        );
        counters.insert(
            counters::request_counter(Operation::MinDecryptionVersion, RequestResult::Error),
            2,
        );
        counters.insert("requests.recover.ok".to_string(), 5);
        counters.insert(counters::alert_counter("repeated-denials"), 2);
        counters.insert(counters::alert_counter("encryption-limit"), 0);
        for (name, value) in [
            (counters::REQUESTS, 11),
            (counters::DENIALS, 1),
            (counters::ALERTS, 2),
            (counters::KEYS, 4),
            (counters::VERSIONS, 6),
        ] {
            counters.insert(name.to_string(), value);
        }
        StatusInfo {
            daemon_version: "0.1.0".to_string(),
            oldest_protocol: 1,
            newest_protocol: 1,
            uptime_secs: 42,
            tpm_reachable: true,
            root_key_loaded: true,
            root_key_check: "abcd".to_string(),
            counters,
            recovery: Default::default(),
            rollback: Default::default(),
            sealing: Default::default(),
        }
    }

    #[test]
    fn status_shows_the_rollback_binding_and_pending_increments() {
        let mut status = sample_status();
        assert!(
            status_human(&status).contains("rollback counter: not bound"),
            "{}",
            status_human(&status)
        );
        status.rollback.bound = true;
        status.rollback.nv_index = 0x0100_4b00;
        status.rollback.store_counter = 7;
        let text = status_human(&status);
        assert!(
            text.contains("rollback counter: NV index 0x01004b00, at 7\n"),
            "{text}"
        );
        status.rollback.pending_increments = 2;
        let text = status_human(&status);
        assert!(text.contains("at 7; 2 increments pending"), "{text}");
    }

    #[test]
    fn status_shows_counters_by_operation_and_kind() {
        let text = status_human(&sample_status());
        for line in [
            "keys:             4\n",
            "versions:         6\n",
            "requests:         11\n",
            "denials:          1\n",
            "alerts:           2\n",
            "requests by operation:\n",
            "  wrap                     ok 3        denied 0      error 0\n",
            "  rotate                   ok 0        denied 1      error 0\n",
            "  min-decryption-version   ok 0        denied 0      error 2\n",
            "  recover                  ok 5        denied 0      error 0\n",
            "alerts by kind:\n  repeated-denials         2\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(
            !text.contains("unwrap"),
            "operations without requests are left out: {text}"
        );
        assert!(!text.contains("encryption-limit"), "{text}");
    }

    #[test]
    fn metrics_label_every_request_and_alert_counter() {
        let text = metrics_openmetrics(&sample_status());
        for line in [
            "hostkms_requests_total{op=\"wrap\",result=\"ok\"} 3\n",
            "hostkms_requests_total{op=\"unwrap\",result=\"error\"} 0\n",
            "hostkms_requests_total{op=\"recover\",result=\"ok\"} 5\n",
            "hostkms_denials_total 1\n",
            "hostkms_alerts_total{kind=\"repeated-denials\"} 2\n",
            "hostkms_alerts_total{kind=\"encryption-limit\"} 0\n",
            "hostkms_keys 4\n",
            "hostkms_key_versions 6\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let requests = text
            .lines()
            .filter(|line| line.starts_with("hostkms_requests_total{"))
            .count();
        assert_eq!(requests, agent_proto::Operation::ALL.len() * 3 + 1);
        for line in [
            "hostkms_recovery_configured 0\n",
            "hostkms_recovery_current 0\n",
            "hostkms_rollback_bound 0\n",
            "hostkms_rollback_pending_increments 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let mut protected = sample_status();
        protected.recovery.configured = true;
        protected.recovery.current = true;
        protected.rollback.bound = true;
        protected.rollback.pending_increments = 2;
        let text = metrics_openmetrics(&protected);
        for line in [
            "hostkms_recovery_configured 1\n",
            "hostkms_recovery_current 1\n",
            "hostkms_rollback_bound 1\n",
            "hostkms_rollback_pending_increments 2\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn data_keys_render_with_and_without_plaintext() {
        let mut data_key = DataKey {
            key: "k".to_string(),
            version: 3,
            plaintext: Some(SecretBytes::from(&b"hello"[..])),
            ciphertext: Ciphertext::from(&agent_proto::ciphertext::MAGIC[..]),
        };
        let text = data_key_human(&data_key);
        assert_eq!(
            text.as_str(),
            "key k\nversion 3\nplaintext aGVsbG8=\nciphertext SEtNUw==\n"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&data_key_json(&data_key).expect("json")).expect("parse");
        assert_eq!(json["plaintext"], "aGVsbG8=");
        data_key.plaintext = None;
        assert!(!data_key_human(&data_key).contains("plaintext"));
        let json: serde_json::Value =
            serde_json::from_slice(&data_key_json(&data_key).expect("json")).expect("parse");
        assert!(json["plaintext"].is_null());
        assert_eq!(json["ciphertext"], "SEtNUw==");
    }

    fn mismatch() -> agent_proto::SealingStatus {
        agent_proto::SealingStatus {
            lock: LockState::PcrMismatch {
                changed: vec![PcrChange {
                    pcr: 7,
                    sealed: vec![0xa7; 32],
                    current: vec![0xb7; 32],
                }],
            },
            mode: Sealing {
                pcrs: vec![7],
                pin: true,
                pcr_values: vec![agent_proto::PcrValue {
                    pcr: 7,
                    sha256: vec![0xa7; 32],
                }],
            },
        }
    }

    #[test]
    fn the_sealing_line_says_locked_and_why_or_how_the_key_is_sealed() {
        let mut sealing = agent_proto::SealingStatus::default();
        assert_eq!(
            sealing_line(&sealing),
            "unlocked; not sealed to PCRs or a PIN"
        );
        sealing.mode.pcrs = vec![7];
        sealing.mode.pin = true;
        assert_eq!(
            sealing_line(&sealing),
            "unlocked; sealed to PCR 7 and a PIN"
        );
        sealing.mode.pcrs = vec![0, 7, 14];
        sealing.mode.pin = false;
        assert_eq!(
            sealing_line(&sealing),
            "unlocked; sealed to PCRs 0, 7 and 14"
        );
        sealing.lock = LockState::PinRequired;
        assert_eq!(
            sealing_line(&sealing),
            "locked (PIN required) \u{2014} run hostkms unlock"
        );
        sealing.lock = LockState::NoRootKeyYet;
        assert!(sealing_line(&sealing).starts_with("locked: no root key yet"));
        assert_eq!(
            sealing_line(&mismatch()),
            "locked: PCR 7 changed since sealing \u{2014} run hostkms unlock"
        );
    }

    #[test]
    fn status_shows_the_sealing_and_the_pcrs_that_changed() {
        let mut status = sample_status();
        let text = status_human(&status);
        assert!(
            text.contains("root key:         unlocked; not sealed to PCRs or a PIN\n"),
            "{text}"
        );
        status.sealing = mismatch();
        status.counters.clear();
        status.root_key_check.clear();
        let text = status_human(&status);
        assert!(
            text.contains("root key:         locked: PCR 7 changed"),
            "{text}"
        );
        assert!(
            text.contains(&format!("    sealed:  {}\n", "a7".repeat(32))),
            "{text}"
        );
        assert!(
            text.contains(&format!("    now:     {}\n", "b7".repeat(32))),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&status_json(&status).expect("json")).expect("parse");
        assert_eq!(json["sealing"]["locked"], true);
        assert_eq!(json["sealing"]["lock"], "pcr_mismatch");
        assert_eq!(json["sealing"]["changed_pcrs"][0]["pcr"], 7);
        assert_eq!(
            json["sealing"]["changed_pcrs"][0]["current"],
            "b7".repeat(32)
        );
        assert_eq!(json["sealing"]["mode"]["pcrs"], serde_json::json!([7]));
        assert_eq!(json["sealing"]["mode"]["pin"], true);
        assert_eq!(
            json["sealing"]["mode"]["pcr_values"][0]["sha256"],
            "a7".repeat(32)
        );
        assert_eq!(json["root_key_loaded"], true);
    }

    #[test]
    fn unlock_says_whether_the_next_start_unlocks_by_itself() {
        let mut info = UnlockInfo {
            root_key_check: "abcd".to_string(),
            resealed: false,
            changed_pcrs: Vec::new(),
        };
        assert_eq!(unlock_human(&info), "unlocked; root key check value abcd\n");
        info.changed_pcrs = vec![PcrChange {
            pcr: 7,
            sealed: vec![1; 32],
            current: vec![2; 32],
        }];
        let text = unlock_human(&info);
        assert!(text.contains("for this boot only"), "{text}");
        assert!(text.contains("unless `hostkms reseal` is run"), "{text}");
        info.resealed = true;
        let text = unlock_human(&info);
        assert!(text.contains("the next start unlocks by itself"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&unlock_json(&info).expect("json")).expect("parse");
        assert_eq!(json["resealed"], true);
        assert_eq!(json["changed_pcrs"][0]["sealed"], "01".repeat(32));
    }

    #[test]
    fn a_reseal_shows_before_and_after() {
        let info = ResealInfo {
            dry_run: true,
            before: Sealing::default(),
            after: mismatch().mode,
        };
        let text = reseal_human(&info);
        assert!(
            text.starts_with("before: not sealed to PCRs or a PIN\n"),
            "{text}"
        );
        assert!(
            text.contains("after:  sealed to PCR 7 and a PIN (dry run)\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("  PCR 7  {}\n", "a7".repeat(32))),
            "{text}"
        );
        assert!(text.contains("nothing changed"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&reseal_json(&info).expect("json")).expect("parse");
        assert_eq!(json["dry_run"], true);
        assert_eq!(json["before"]["pin"], false);
        assert_eq!(json["after"]["pcrs"], serde_json::json!([7]));
    }
}
