//! What each command prints with `--json`: the field names, for the
//! `--help` text of each command and the man page generated from it (the
//! commands' `after_long_help`). Times are RFC 3339 UTC strings
//! (`2026-12-30T10:00:00Z`); binary values are standard base64.

/// The top-level `--help`: the JSON error object and the exit codes.
pub const ERRORS: &str = "\
With --json, every command prints one JSON document on standard output; the
fields of each are listed in its --help. A failure is the object
{\"error\": {\"code\": CODE, \"message\": TEXT}} on standard output, with the
same exit code as without --json (where the message goes to standard error).
CODE is the daemon's error code in snake case when it refused the request
(permission_denied, key_not_found, key_exists, key_revoked, version_revoked,
key_disabled, key_pending_deletion, invalid_ciphertext, plaintext_too_large,
busy, tpm_unavailable, internal, not_implemented, invalid_argument,
version_not_found, wrong_key_type, locked, wrong_pin, bad_request,
frame_too_large, unsupported_version, unrecognized), or a local kind: usage,
connect, connection, timed_out, may_have_executed, daemon_too_old, read,
write, invalid_pin, input_too_large, not_ciphertext, credential_dir, not_age_file,
no_hostkms_stanza, damaged_file, context_mismatch, counters_withheld,
not_recoverable, random, bench_failed, bench_key_left, interrupted, signals. verify and verify-mac
print their result object even when the signature or tag is invalid (exit
1), and bench its report when requests failed or its temporary key could
not be revoked: then the error goes to standard error only. Errors of the
command line itself (unknown options, missing arguments, conflicts) are the
usage object too when --json comes before any --, exit 2; --help and
--version print their text.";

/// A key's metadata: create-key, describe, rotate, revoke, disable,
/// enable, schedule-deletion, cancel-deletion, set-rotation-period,
/// set-metadata, min-decryption-version, import (and each element of list).
pub const KEY: &str = "\
JSON (--json): {\"id\": 32 hex digits, \"name\", \"type\" (aes256-gcm, ...),
\"created\" (RFC 3339 UTC), \"state\" (enabled, disabled, pending-deletion,
revoked), \"latest_version\", \"min_decryption_version\", \"versions\": [{\"version\",
\"created\", \"state\" (enabled, revoked), \"encryptions\"}], \"rotation_period\"
(90d, 1w, 12h, ...; null: never by age), \"rotation_period_secs\" (the same in
seconds, or null), \"next_rotation\" (RFC 3339 UTC; null unless the key is
enabled and rotates by age), \"deletion_date\" (RFC 3339 UTC, the earliest
deletion; null unless pending-deletion), \"description\" (\"\" when none),
\"tags\" (an object of name: value)}";

/// `list`.
pub const LIST: &str = "\
JSON (--json): an array of key objects, as describe prints them: {\"id\",
\"name\", \"type\", \"created\" (RFC 3339 UTC), \"state\", \"latest_version\",
\"min_decryption_version\", \"versions\": [{\"version\", \"created\", \"state\",
\"encryptions\"}], \"rotation_period\", \"rotation_period_secs\", \"next_rotation\"
(RFC 3339 UTC or null), \"deletion_date\" (RFC 3339 UTC or null), \"description\",
\"tags\"}; with --tag NAME=VALUE (repeatable) only the keys carrying every
given tag.";

/// `inspect`.
pub const INSPECT: &str = "\
JSON (--json): {\"key\" (the key's name, null when you may not see the key),
\"key_id\" (32 hex digits), \"version\"}

Nothing is decrypted: the header of a ciphertext is not secret. The input is
read like unwrap's (base64, also wrapped, or raw).";

/// `wrap` and `rewrap`.
pub const WRAPPED: &str = "\
JSON (--json): {\"key\" and \"version\" (the key version that made the new
ciphertext: for rewrap --to-key, the destination's), \"ciphertext\" (base64)}";

/// `unwrap`.
pub const UNWRAPPED: &str = "\
JSON (--json): {\"key\", \"version\", \"plaintext\" (base64)}

Without --out, --base64 or --hex, the raw plaintext is refused on a terminal
unless --force. The input may be base64 wrapped on several lines (as
base64(1) prints it at 76 columns); an empty input, wrap --json output, or
input that is neither base64 nor a raw ciphertext is refused before the
daemon is asked.";

/// `encrypt-file`.
pub const ENCRYPT_FILE: &str = "\
JSON (--json, with --out FILE): {\"key\", \"version\" (the key version that
wrapped the file key), \"context\" (an object of name: value), \"bytes\" (the
plaintext's size), \"out\"}

The output is an age v1 file: a header with one stanza \"-> hostkms CONTEXT\"
(CONTEXT: the context, canonically encoded, in base64; the body: the
daemon's ciphertext of the file key) and age's STREAM payload
(ChaCha20-Poly1305, 64 KiB chunks). Without --out the binary file is refused
on a terminal unless --force.";

/// `decrypt-file`.
pub const DECRYPT_FILE: &str = "\
JSON (--json, with --out FILE): {\"key\", \"version\" (the key version that
unwrapped the file key), \"context\" (the context the file records),
\"bytes\" (the plaintext's size), \"out\"}

Exit 1 when the daemon refuses (no unwrap grant, key or version revoked,
a file key not wrapped under --key NAME),
when --context differs from the file's context (context_mismatch, before
the daemon is asked), and when the file does not authenticate
(damaged_file: truncated, altered, chunks reordered); exit 2 when the input
is not an age file (not_age_file; also a header over 64 KiB, or one age
finds malformed) or has no hostkms stanza
(no_hostkms_stanza). With --out nothing is written to FILE then; without,
the raw plaintext is refused on a terminal unless --force.";

/// `age-recipient`.
pub const AGE_RECIPIENT: &str = "\
JSON (--json): {\"recipient\", \"key\", \"context\"}";

/// `age-identity`.
pub const AGE_IDENTITY: &str = "\
JSON (--json): {\"identity\"}

Without --json it prints a comment line (# ...) and the identity, the format
of an age identity file: hostkms age-identity > id.txt; age -d -i id.txt
FILE.age. The identity is the same for every user: it holds no secret.";

/// `datakey`.
pub const DATA_KEY: &str = "\
JSON (--json): {\"key\", \"version\", \"plaintext\" (base64; null with
--without-plaintext), \"ciphertext\" (base64)}; with --out FILE: {\"key\",
\"version\", \"plaintext_file\", \"bytes\", \"ciphertext\"}";

/// `mac`.
pub const MAC: &str = "JSON (--json): {\"key\", \"version\", \"tag\" (base64)}";

/// `sign`.
pub const SIGNATURE: &str = "JSON (--json): {\"key\", \"version\", \"signature\" (base64)}";

/// `verify` and `verify-mac`.
pub const VERIFICATION: &str = "\
JSON (--json): {\"key\", \"valid\" (true or false), \"version\" (the version that
verified, null when invalid)}; exit 1 when invalid";

/// `public-key`.
pub const PUBLIC_KEY: &str = "\
JSON (--json): {\"key\", \"version\", \"type\", \"revoked\", \"pem\", \"spki_der\" (base64)}";

/// `random`.
pub const RANDOM: &str = "JSON (--json): {\"bytes\", \"random\" (base64)}";

/// `ping`.
pub const PING: &str = "JSON (--json): {\"ok\": true}";

/// `status`.
pub const STATUS: &str = "\
JSON (--json): {\"daemon_version\", \"oldest_protocol\", \"newest_protocol\",
\"uptime_secs\", \"tpm_reachable\", \"root_key_loaded\", \"root_key_check\" (empty
when withheld), \"counters\" (name to count; empty when withheld), \"recovery\":
{\"configured\", \"dir\", \"custodians\", \"threshold\", \"bundle_recipient\",
\"current\", \"problem\"}, \"rollback\": {\"bound\", \"nv_index\", \"store_counter\",
\"pending_increments\", \"problem\"}, \"sealing\": {\"locked\", \"lock\" (unlocked,
no_root_key_yet, pin_required or pcr_mismatch), \"changed_pcrs\": [{\"pcr\",
\"sealed\", \"current\"}] (hex sha256 values), \"mode\": {\"pcrs\", \"pin\",
\"pcr_values\": [{\"pcr\", \"sha256\"}]}}}";

/// `unlock`.
pub const UNLOCK: &str = "\
JSON (--json): {\"already_unlocked\", \"root_key_check\", \"resealed\",
\"changed_pcrs\": [{\"pcr\", \"sealed\", \"current\"}]} (hex sha256 values).
Prompts and the PCRs that changed go to standard error.";

/// `reseal` and `change-pin`.
pub const RESEAL: &str = "\
JSON (--json): {\"dry_run\", \"before\", \"after\"}, each sealing {\"pcrs\",
\"pin\", \"pcr_values\": [{\"pcr\", \"sha256\"}]} (hex sha256 values).";

/// `metrics`.
pub const METRICS: &str = "\
JSON (--json, instead of OpenMetrics): {\"requests\": {OPERATION: {\"ok\",
\"denied\", \"error\"}}, \"denials\", \"alerts\": {KIND: count}, \"keys\",
\"key_versions\", \"uptime_secs\", \"tpm_reachable\", \"root_key_loaded\",
\"recovery_configured\", \"recovery_current\", \"rollback_bound\",
\"rollback_pending_increments\", \"daemon_version\"}";

/// `rotate-root`.
pub const ROOT_ROTATION: &str = "\
JSON (--json): {\"old_check\", \"new_check\", \"keys\", \"versions\"}";

/// `transport-key`.
pub const TRANSPORT_KEY: &str = "JSON (--json): {\"recipient\", \"fingerprint\"}";

/// `export`.
pub const EXPORT: &str = "\
JSON (--json): {\"key\", \"destination\", \"file\", \"bytes\"}";

/// `backup`.
pub const BACKUP: &str = "JSON (--json): {\"dir\", \"out\"}";

/// `credential`: the fields of its subcommands.
pub const CREDENTIAL: &str = "\
JSON (--json): credential encrypt prints {\"unit\", \"credential\", \"key\",
\"version\", \"file\", \"replaced\" (true when a credential was there before),
\"load_credential\" (the line for the unit's [Service] section), \"grant\" (the
[[grant]] table the unit needs)}; credential list prints an array of
{\"unit\", \"credential\", \"file\", \"size\", \"modified\" (RFC 3339 UTC),
\"key\" (null when unknown), \"key_id\", \"version\", \"problem\" (null, or why
the file is no credential hostkms can serve)}.";

/// `credential encrypt`.
pub const CREDENTIAL_ENCRYPT: &str = "\
JSON (--json): {\"unit\", \"credential\", \"key\", \"version\", \"file\",
\"replaced\" (true when a credential was there before), \"load_credential\"
(the line for the unit's [Service] section), \"grant\" (the [[grant]] table the
unit needs)}";

/// `credential list`.
pub const CREDENTIAL_LIST: &str = "\
JSON (--json): an array of {\"unit\", \"credential\", \"file\", \"size\",
\"modified\" (RFC 3339 UTC), \"key\" (the key's name; null when the daemon
was not asked or does not know it), \"key_id\" (32 hex digits, or null),
\"version\" (or null), \"problem\" (null, or why the file is no credential
hostkms can serve, e.g. \"leftover of an interrupted encrypt (safe to
delete ...)\" for a .ID.hostkms-new-PID file an older version left)}

Without --json, a first line starting with # says what the listing proves:
key and version come from each file's header only, not a check that it
decrypts for that unit (a copied or damaged file looks the same; the daemon
refuses it at delivery).";

/// `bench`.
pub const BENCH: &str = "\
JSON (--json): {\"op\", \"key\", \"temporary_key\", \"type\", \"connections\",
\"duration_secs\", \"min_ops\", \"size\", \"ops\", \"errors\", \"elapsed_secs\",
\"ops_per_sec\", \"p50_us\", \"p99_us\", \"p999_us\", \"ping_ops\", \"ping_errors\",
\"ping_ops_per_sec\", \"ping_p50_us\", \"ping_p99_us\", \"ping_p999_us\",
\"ratio_to_ping\"}; with --batch N also \"batch\", \"batch_requests\",
\"batch_errors\", \"batch_requests_per_sec\", \"batch_items_per_sec\",
\"batch_p50_us\", \"batch_p99_us\", \"batch_p999_us\" and
\"batch_ratio_to_single\" (batch items per second over the single requests'
rate).

Each phase measures for --duration after a 0.5 s warm-up and, when fewer
than --min-ops requests (default 1) completed in that time, until they have:
elapsed_secs is the window actually measured.

Without --key, bench creates a temporary key (named on standard error) and
revokes it at the end, destroying its key material.";
