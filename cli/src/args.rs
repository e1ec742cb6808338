//! The command line: global flags, one subcommand per daemon operation, and
//! the value parsers that reject bad input (contexts, sizes, durations)
//! before anything is sent to the daemon.

use std::path::PathBuf;
use std::time::Duration;

use agent_proto::{EncryptionContext, KeyType, MAX_RANDOM_BYTES, Operation};
use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::CliError;

/// Operate a hostkms daemon: manage keys, wrap and unwrap data, make and
/// check MACs and signatures, benchmark.
///
/// Exit codes: 0 success, 1 the daemon refused the request (or, for verify
/// and verify-mac, the signature or tag is invalid; for decrypt-file, the
/// file does not authenticate or records another context), 2 usage,
/// connection or local file errors, 3 the daemon is busy (retry later).
#[derive(Debug, Parser)]
#[command(name = "hostkms", version, about, after_long_help = crate::json_docs::ERRORS)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(
        long,
        env = "HOSTKMS_SOCKET",
        default_value = agent_proto::DEFAULT_SOCKET,
        global = true,
        value_name = "PATH"
    )]
    pub socket: PathBuf,
    /// Print results as JSON (one document on standard output).
    #[arg(long, global = true)]
    pub json: bool,
    /// The largest frame the CLI sends or accepts, in bytes: raise it with
    /// the daemon's max_frame setting to wrap or read larger messages.
    #[arg(
        long,
        env = "HOSTKMS_MAX_FRAME",
        default_value_t = agent_proto::DEFAULT_MAX_FRAME,
        value_parser = clap::value_parser!(u32).range(1024..=(64 << 20)),
        global = true,
        value_name = "BYTES"
    )]
    pub max_frame: u32,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per operation of the daemon, plus `bench`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the daemon answers.
    #[command(after_long_help = crate::json_docs::PING)]
    Ping,
    /// Show the daemon's health: versions, uptime, TPM, root key, and (to
    /// admins and peers granted "metrics") its counters and root key check.
    #[command(after_long_help = crate::json_docs::STATUS)]
    Status,
    /// Print the daemon's counters in the OpenMetrics text format, for
    /// Prometheus or node_exporter's textfile collector (needs an admin or
    /// a "metrics" grant).
    #[command(after_long_help = crate::json_docs::METRICS)]
    Metrics {
        /// Write to this file atomically (mode 0644, replaced whole, so a
        /// collector never reads half of it) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Rotate the root key (admins only): seal a new root key to the TPM
    /// and re-seal every key under it. Ciphertexts are unaffected. Prints
    /// the old and the new root key check value. When the root key is
    /// sealed to a PIN, the PIN is asked for (or read from --pin-file):
    /// the new key's PIN copy is sealed with it.
    #[command(after_long_help = crate::json_docs::ROOT_ROTATION)]
    RotateRoot(PinArgs),
    /// Unlock a daemon whose root key is sealed behind a PIN, or to PCRs
    /// that changed (admins only). The PIN comes from --pin-file, or is
    /// asked without echo on a terminal, or is read from standard input.
    /// On a daemon that has no root key yet, the PIN given becomes the PIN
    /// (asked twice on a terminal). After a PCR change, shows which PCRs
    /// changed and, with --reseal (or a yes on a terminal), reseals the PCR
    /// copy to the current values so the next start unlocks by itself;
    /// otherwise the daemon is unlocked for this boot only.
    #[command(after_long_help = crate::json_docs::UNLOCK)]
    Unlock(UnlockArgs),
    /// Seal the root key again, in the mode of the daemon's config
    /// ([root_key] pcrs and pin) or to the PCRs of --pcrs, at the PCRs'
    /// current values (admins only): after a firmware or boot-chain update,
    /// or to apply a new [root_key] config. On a terminal, shows what
    /// changes (as --dry-run does) and asks first. Needs the PIN when the
    /// root key has one, and a new PIN when the config turns the PIN on.
    #[command(after_long_help = crate::json_docs::RESEAL)]
    Reseal(ResealArgs),
    /// Change the PIN of the root key (admins only): the current PIN, then
    /// the new one (asked twice on a terminal).
    #[command(after_long_help = crate::json_docs::RESEAL)]
    ChangePin(ChangePinArgs),
    /// Create a key at version 1, of one type for life.
    #[command(after_long_help = crate::json_docs::KEY)]
    CreateKey {
        /// Key name: 1 to 128 of A-Z a-z 0-9 . _ -
        name: String,
        /// What the key is for; every version of it has this type.
        #[arg(long = "type", value_name = "TYPE", default_value = "aes256-gcm")]
        key_type: KeyTypeArg,
        /// Rotate the key by age, every PERIOD after its latest version was
        /// made: <n>h, <n>d, <n>w or <n>y (365 days), at least 1h, or off.
        /// Default: the daemon's [keys] rotation_period (off unless set).
        #[arg(long, value_name = "PERIOD", value_parser = parse_period_arg)]
        rotation_period: Option<PeriodArg>,
        /// Its description and tags.
        #[command(flatten)]
        metadata: NewMetadataArgs,
    },
    /// List the keys you may see, with their description and tags.
    #[command(after_long_help = crate::json_docs::LIST)]
    List {
        /// Show only keys with this tag; repeat to require several (all
        /// must match).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Change a key's description and tags (needs the "set-metadata" grant).
    #[command(after_long_help = crate::json_docs::KEY)]
    SetMetadata(SetMetadataArgs),
    /// Show a key's metadata and versions.
    #[command(after_long_help = crate::json_docs::KEY)]
    Describe {
        /// Key name.
        name: String,
    },
    /// Add a new latest version to a key; older versions still unwrap.
    #[command(after_long_help = crate::json_docs::KEY)]
    Rotate {
        /// Key name.
        name: String,
    },
    /// Revoke one version of a key, or the whole key. Irreversible: the key
    /// material is deleted and its ciphertexts never unwrap again.
    #[command(after_long_help = crate::json_docs::KEY)]
    Revoke {
        /// Key name.
        name: String,
        /// Revoke only this version (default: the whole key).
        #[arg(long, value_name = "N")]
        version: Option<u32>,
        /// Confirm revoking the whole key (needed without --version; on a
        /// terminal, typing the key's name confirms instead).
        #[arg(long)]
        yes: bool,
    },
    /// Stop every use of a key until it is enabled again.
    #[command(after_long_help = crate::json_docs::KEY)]
    Disable {
        /// Key name.
        name: String,
    },
    /// Put a disabled key back in service.
    #[command(after_long_help = crate::json_docs::KEY)]
    Enable {
        /// Key name.
        name: String,
    },
    /// Schedule a key for deletion after a waiting period: until then every
    /// use is refused (and raises an alert) and cancel-deletion takes it
    /// back; then the daemon deletes its material for good. Only time the
    /// daemon ran counts toward the period, and a wall-clock jump never
    /// shortens it.
    #[command(after_long_help = crate::json_docs::KEY)]
    ScheduleDeletion {
        /// Key name.
        name: String,
        /// The waiting period in days: 7 to 30.
        #[arg(long, value_name = "N", default_value_t = agent_proto::DEFAULT_DELETION_DAYS,
              value_parser = clap::value_parser!(u16).range(
                  i64::from(agent_proto::MIN_DELETION_DAYS)..=i64::from(agent_proto::MAX_DELETION_DAYS)))]
        days: u16,
    },
    /// Cancel a key's scheduled deletion; the key becomes disabled (enable
    /// it once it is wanted again).
    #[command(after_long_help = crate::json_docs::KEY)]
    CancelDeletion {
        /// Key name.
        name: String,
    },
    /// Set how often the daemon rotates a key by age (after its latest
    /// version was made), or stop it with "off".
    #[command(after_long_help = crate::json_docs::KEY)]
    SetRotationPeriod {
        /// Key name.
        name: String,
        /// <n>h, <n>d, <n>w or <n>y (365 days), at least 1h; or off.
        #[arg(value_name = "PERIOD", value_parser = parse_period_arg)]
        period: PeriodArg,
    },
    /// Refuse to unwrap ciphertexts of versions below N (reversible).
    #[command(after_long_help = crate::json_docs::KEY)]
    MinDecryptionVersion {
        /// Key name.
        name: String,
        /// Lowest version that still unwraps.
        version: u32,
    },
    /// Encrypt data (from --in or standard input) under a key's latest version.
    #[command(after_long_help = crate::json_docs::WRAPPED)]
    Wrap(WrapArgs),
    /// Decrypt a ciphertext (base64 or raw, from --in or standard input);
    /// an --out file gets mode 0600.
    #[command(after_long_help = crate::json_docs::UNWRAPPED)]
    Unwrap(UnwrapArgs),
    /// Encrypt a file of any size in the age format, in constant memory: the
    /// daemon wraps the file's age key under key NAME with the context (one
    /// wrap request, audited); the data never reaches the daemon. `age -d`
    /// with an identity from `hostkms age-identity` decrypts it too.
    ///
    /// To standard output, a failure midway leaves a partial output and a
    /// non-zero exit; --out FILE gets all or nothing.
    #[command(after_long_help = crate::json_docs::ENCRYPT_FILE)]
    EncryptFile(EncryptFileArgs),
    /// Decrypt an age file made by `hostkms encrypt-file` or by `age -r
    /// age1hostkms1...`: the daemon unwraps its key (needs an "unwrap"
    /// grant on it; one unwrap request, audited), and every 64 KiB chunk is
    /// authenticated before it is written. With --context, the context the
    /// file records must be exactly those pairs (checked before the daemon
    /// is asked); without, the recorded context is used. With --key NAME,
    /// the daemon refuses a file whose key is not NAME: give both to be sure
    /// a file is the one you made, not one anyone holding "wrap" on another
    /// key you may unwrap made with the same context.
    ///
    /// To standard output, a failure midway (a damaged chunk) leaves a
    /// partial output and a non-zero exit: give --out FILE to get all or
    /// nothing (an unnamed temporary file in FILE's directory, linked over
    /// FILE once the last chunk authenticated: a killed decrypt-file leaves
    /// nothing behind; on a file system without O_TMPFILE, a named
    /// .FILE.XXXXXX, mode 0600, removed on failure but left by a kill).
    /// An age header over 64 KiB is refused before it is parsed (a hostkms
    /// header is under 1 KiB).
    #[command(after_long_help = crate::json_docs::DECRYPT_FILE)]
    DecryptFile(DecryptFileArgs),
    /// Print the age recipient (age1hostkms1...) of key NAME and a context,
    /// for `age -r`: the age CLI then encrypts through the daemon with
    /// age-plugin-hostkms. Nothing is asked of the daemon until age runs.
    #[command(after_long_help = crate::json_docs::AGE_RECIPIENT)]
    AgeRecipient {
        /// Key name.
        name: String,
        /// The encryption context the recipient wraps with.
        #[command(flatten)]
        context: ContextArgs,
    },
    /// Print an age identity (AGE-PLUGIN-HOSTKMS-1...) for `age -d -i FILE`:
    /// it holds no secret; age-plugin-hostkms decrypts through the daemon,
    /// whose grants decide which files this user may decrypt.
    #[command(after_long_help = crate::json_docs::AGE_IDENTITY)]
    AgeIdentity,
    /// Generate a fresh data key, in clear and wrapped under a key.
    #[command(after_long_help = crate::json_docs::DATA_KEY)]
    Datakey(DatakeyArgs),
    /// Re-encrypt a ciphertext under its key's latest version, or under
    /// another key or with another context (--to-key, --to-context),
    /// without the plaintext leaving the daemon.
    #[command(after_long_help = crate::json_docs::WRAPPED)]
    Rewrap(RewrapArgs),
    /// Tell which key, key id and version a ciphertext (base64 or raw,
    /// from --in or standard input) belongs to, without decrypting it: the
    /// header is not secret. The key's name is shown only when you may
    /// see the key in `list`.
    #[command(after_long_help = crate::json_docs::INSPECT)]
    Inspect(InspectArgs),
    /// Compute an HMAC tag of data (from --in or standard input) under an
    /// HMAC key's latest version: base64 out, raw with --binary.
    #[command(after_long_help = crate::json_docs::MAC)]
    Mac(MacArgs),
    /// Check an HMAC tag of data (from --in or standard input): exit 0 and
    /// "valid (version N)", or exit 1 and "invalid".
    #[command(after_long_help = crate::json_docs::VERIFICATION)]
    VerifyMac(VerifyMacArgs),
    /// Sign a message (from --in or standard input) with a signing key's
    /// latest version: base64 out, raw with --binary.
    #[command(after_long_help = crate::json_docs::SIGNATURE)]
    Sign(SignArgs),
    /// Check a signature of a message (from --in or standard input): exit 0
    /// and "valid (version N)", or exit 1 and "invalid".
    #[command(after_long_help = crate::json_docs::VERIFICATION)]
    Verify(VerifyArgs),
    /// Print a signing key's public key (SubjectPublicKeyInfo) as PEM, for
    /// openssl and other verifiers; a revoked version's stays available.
    #[command(after_long_help = crate::json_docs::PUBLIC_KEY)]
    PublicKey(PublicKeyArgs),
    /// Print N random bytes (1 to 1024) from the daemon: the OS RNG mixed
    /// with the TPM's. Base64 by default.
    #[command(after_long_help = crate::json_docs::RANDOM)]
    Random(RandomArgs),
    /// Measure the daemon's throughput and latency against ping.
    #[command(after_long_help = crate::json_docs::BENCH)]
    Bench(BenchArgs),
    /// Write the recovery directory the daemon names in its status as one
    /// tar file (MANIFEST, custodians/, keys/; everything in it is
    /// encrypted to the custodians), mode 0600. Run as root or as a member
    /// of the recovery directory's group.
    #[command(after_long_help = crate::json_docs::BACKUP)]
    Backup {
        /// The tar file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print this host's transport key (age1...) and its fingerprint: what
    /// another host's root pins in a [[transfer]] table to export keys here
    /// and to import keys from here.
    #[command(after_long_help = crate::json_docs::TRANSPORT_KEY)]
    TransportKey,
    /// Export a key to a host pinned in the daemon's config ([[transfer]]):
    /// its versions (revoked ones as numbers only) in a file only that
    /// host's daemon can open. The key is never in clear outside the daemons.
    #[command(after_long_help = crate::json_docs::EXPORT)]
    Export(ExportArgs),
    /// systemd credentials served by hostkms: encrypt a secret for one
    /// unit's `LoadCredential=`, list what is stored (as root).
    #[command(subcommand, after_long_help = crate::json_docs::CREDENTIAL)]
    Credential(CredentialCommand),
    /// Import a key from a file a pinned host exported to this host: adds
    /// the key, or the versions this host lacks; never brings back a version
    /// revoked here.
    #[command(after_long_help = crate::json_docs::KEY)]
    Import {
        /// The file `hostkms export` wrote on the other host.
        file: PathBuf,
    },
}

/// Where a PIN comes from: a file, or standard input (`-`), or, without
/// the option, the terminal (asked without echo) or standard input.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Read the PIN from FILE ("-": standard input); one trailing newline
    /// is not part of it. A PIN is 8 to 32 bytes of UTF-8, no control
    /// characters.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
}

/// `unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The PIN.
    #[command(flatten)]
    pub pin: PinArgs,
    /// After a PCR change, reseal the PCR copy of the root key to the PCRs'
    /// current values, so the next start unlocks without the PIN.
    #[arg(long)]
    pub reseal: bool,
}

/// `reseal`.
#[derive(Debug, Args)]
pub struct ResealArgs {
    /// Bind to these PCRs of the sha256 bank (0 to 23, comma-separated,
    /// e.g. 7,14; "none" for no binding) instead of the config's
    /// [root_key] pcrs.
    #[arg(long, value_name = "LIST", value_parser = parse_pcrs)]
    pub pcrs: Option<PcrList>,
    /// Only show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The current PIN.
    #[command(flatten)]
    pub pin: PinArgs,
    /// Read the new PIN from FILE ("-": standard input), when the config
    /// turns the PIN on and none is set yet.
    #[arg(long, value_name = "FILE")]
    pub new_pin_file: Option<PathBuf>,
}

/// `change-pin`.
#[derive(Debug, Args)]
pub struct ChangePinArgs {
    /// The current PIN.
    #[command(flatten)]
    pub pin: PinArgs,
    /// Read the new PIN from FILE ("-": standard input).
    #[arg(long, value_name = "FILE")]
    pub new_pin_file: Option<PathBuf>,
}

/// A `--pcrs` list: PCR indexes 0 to 23, sorted, each once (empty: no
/// binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrList(pub Vec<u8>);

/// The highest PCR index of the TPM's sha256 bank that hostkms binds to.
pub const MAX_PCR: u8 = 23;

/// Parses `--pcrs`: "7,14" (spaces allowed, any order, repeats merged),
/// or "none" (or an empty list) for no PCR binding.
pub fn parse_pcrs(arg: &str) -> Result<PcrList, String> {
    let arg = arg.trim();
    if arg.is_empty() || arg == "none" {
        return Ok(PcrList(Vec::new()));
    }
    let mut pcrs = Vec::new();
    for part in arg.split(',') {
        let part = part.trim();
        let pcr: u8 = part
            .parse()
            .ok()
            .filter(|pcr| *pcr <= MAX_PCR)
            .ok_or_else(|| {
                format!(
                    "{part:?} is not a PCR: give PCR numbers 0 to {MAX_PCR} separated by commas, e.g. 7,14, or none"
                )
            })?;
        pcrs.push(pcr);
    }
    pcrs.sort_unstable();
    pcrs.dedup();
    Ok(PcrList(pcrs))
}

/// `credential encrypt` and `credential list`.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Encrypt a secret (from --in, standard input, or asked twice on a
    /// terminal) as the systemd credential ID of UNIT, written to
    /// DIR/UNIT/ID (mode 0600, replaced whole if it exists), and print the
    /// LoadCredential= line to add to the unit. Admins only (run as root).
    #[command(after_long_help = crate::json_docs::CREDENTIAL_ENCRYPT)]
    Encrypt(CredentialEncryptArgs),
    /// List the credentials stored in DIR: unit, id, key, version, size,
    /// modification time; a file that is no hostkms ciphertext is listed
    /// as such, and a .ID.hostkms-new-PID file (left by an encrypt of an
    /// older version killed mid-write) as a leftover, safe to delete. The
    /// key and version come from each file's header only: they do not
    /// prove the file decrypts for its unit (a file copied from another
    /// unit looks the same; the daemon refuses it at delivery).
    #[command(after_long_help = crate::json_docs::CREDENTIAL_LIST)]
    List(CredentialListArgs),
}

/// Arguments of `credential encrypt`.
#[derive(Debug, Args)]
pub struct CredentialEncryptArgs {
    /// The unit that receives the credential, e.g. postgresql.service; not
    /// a template (x@.service never runs): name an instance, x@NAME.service.
    #[arg(long, value_name = "UNIT")]
    pub unit: String,
    /// The credential's id: its file name in $CREDENTIALS_DIRECTORY.
    #[arg(long = "name", value_name = "ID")]
    pub id: String,
    /// The aes256-gcm key to encrypt it with.
    #[arg(long, value_name = "NAME")]
    pub key: String,
    /// Read the secret from FILE ("-": standard input); its bytes are the
    /// credential, a trailing newline included. Default: standard input,
    /// or, on a terminal, asked twice without echo.
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// The credentials directory, as the daemon's [credentials] directory.
    #[arg(long, value_name = "DIR", default_value = crate::credential::DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// Arguments of `credential list`.
#[derive(Debug, Args)]
pub struct CredentialListArgs {
    /// Only this unit's credentials.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// The credentials directory, as the daemon's [credentials] directory.
    #[arg(long, value_name = "DIR", default_value = crate::credential::DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Key name.
    pub name: String,
    /// The destination: the `name` of a [[transfer]] table in the daemon's config.
    #[arg(long = "to", value_name = "DEST")]
    pub to: String,
    /// Write the export file here (mode 0600).
    #[arg(long = "out", value_name = "FILE")]
    pub out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `--context KEY=VALUE`, repeatable: the encryption context bound to a
/// ciphertext, which must be given again, identical, to unwrap it.
#[derive(Debug, Args)]
pub struct ContextArgs {
    /// A KEY=VALUE pair of the encryption context; repeat for more pairs.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context_pair)]
    pub pairs: Vec<(String, String)>,
}

impl ContextArgs {
    /// The context these flags describe; a key given twice is a usage error.
    pub fn context(&self) -> Result<EncryptionContext, CliError> {
        context_from_pairs(&self.pairs).map_err(CliError::Usage)
    }
}

/// Where the input comes from and where the output goes.
#[derive(Debug, Args)]
pub struct InOutArgs {
    /// Read the input from FILE instead of standard input ("-": standard input).
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write the output to FILE instead of standard output ("-": standard
    /// output): a new file, renamed over FILE (a link there is replaced,
    /// not followed; a FIFO or device is refused: redirect standard output
    /// to it instead).
    #[arg(long = "out", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Arguments of `wrap`.
#[derive(Debug, Args)]
pub struct WrapArgs {
    /// Key name.
    pub name: String,
    /// The encryption context.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Input and output files.
    #[command(flatten)]
    pub io: InOutArgs,
    /// Write the raw ciphertext bytes instead of base64.
    #[arg(long)]
    pub binary: bool,
}

/// Arguments of `encrypt-file`.
#[derive(Debug, Args)]
pub struct EncryptFileArgs {
    /// Key name.
    pub name: String,
    /// The context (recorded in the file's header), files and --force.
    #[command(flatten)]
    pub file: AgeFileArgs,
}

/// Arguments of `decrypt-file`.
#[derive(Debug, Args)]
pub struct DecryptFileArgs {
    /// Refuse the file unless its file key is wrapped under this key (the
    /// daemon checks it; without, any key you may unwrap is accepted).
    #[arg(long = "key", value_name = "NAME")]
    pub key: Option<String>,
    /// The context (the file must record exactly it), files and --force.
    #[command(flatten)]
    pub file: AgeFileArgs,
}

/// What `encrypt-file` and `decrypt-file` share.
#[derive(Debug, Args)]
pub struct AgeFileArgs {
    /// The encryption context: encrypt-file records it in the file;
    /// decrypt-file insists on exactly it (all pairs, no more), and without
    /// --context uses the one the file records.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Input and output files (an output file is created with mode 0600).
    #[command(flatten)]
    pub io: InOutArgs,
    /// Replace an existing --out FILE, and write binary output even when
    /// standard output is a terminal.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `unwrap`.
#[derive(Debug, Args)]
pub struct UnwrapArgs {
    /// Refuse the ciphertext unless it belongs to this key.
    #[arg(long = "key", value_name = "NAME")]
    pub key: Option<String>,
    /// The encryption context the ciphertext was wrapped with.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Input and output files (an output file is created with mode 0600).
    #[command(flatten)]
    pub io: InOutArgs,
    /// How the plaintext is written.
    #[command(flatten)]
    pub encoding: PlaintextEncoding,
    /// Write the raw plaintext even when standard output is a terminal
    /// (refused otherwise, as it may hold control sequences and stays in
    /// the scrollback), and replace an existing --out FILE (refused
    /// otherwise, like datakey --out and export).
    #[arg(long)]
    pub force: bool,
}

/// How `unwrap` writes the plaintext: raw bytes (the default, refused on a
/// terminal without `--force`), base64 or hex.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PlaintextEncoding {
    /// Print the plaintext in standard base64 and a newline.
    #[arg(long)]
    pub base64: bool,
    /// Print the plaintext in lower-case hex and a newline.
    #[arg(long)]
    pub hex: bool,
}

/// Arguments of `datakey`.
#[derive(Debug, Args)]
pub struct DatakeyArgs {
    /// Key name.
    pub name: String,
    /// Data-key length in bytes: 16, 24, 32 or 64.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = DataKeyLen)]
    pub bytes: u16,
    /// Return only the wrapped data key, not the data key in clear.
    #[arg(long, conflicts_with = "out")]
    pub without_plaintext: bool,
    /// Write the data key in clear (its raw bytes) to FILE, a new file of
    /// mode 0600, instead of printing it; standard output gets the rest.
    /// FILE is checked, and its temporary file made, before the daemon is
    /// asked ("-" is refused: leave out --out to print the data key).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace FILE if it exists (with --out).
    #[arg(long, requires = "out")]
    pub force: bool,
    /// The encryption context.
    #[command(flatten)]
    pub context: ContextArgs,
}

/// Arguments of `rewrap`.
#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// Refuse the ciphertext unless it belongs to this key.
    #[arg(long = "key", value_name = "NAME")]
    pub key: Option<String>,
    /// The encryption context the ciphertext was wrapped with (kept unless
    /// --to-context or --to-empty-context is given).
    #[command(flatten)]
    pub context: ContextArgs,
    /// Encrypt under this key's latest version instead (an aes256-gcm key;
    /// needs the "unwrap" grant on the source key and "wrap" on this one).
    #[arg(long = "to-key", value_name = "NAME")]
    pub to_key: Option<String>,
    /// A KEY=VALUE pair of the new ciphertext's encryption context, instead
    /// of the source's; repeat for more pairs (needs the "unwrap" grant on
    /// the source key and "wrap" on the destination key).
    #[arg(long = "to-context", value_name = "KEY=VALUE", value_parser = parse_context_pair)]
    pub to_context: Vec<(String, String)>,
    /// Give the new ciphertext an empty encryption context (same grants as
    /// --to-context).
    #[arg(long, conflicts_with = "to_context")]
    pub to_empty_context: bool,
    /// Input and output files.
    #[command(flatten)]
    pub io: InOutArgs,
    /// Write the raw ciphertext bytes instead of base64.
    #[arg(long)]
    pub binary: bool,
}

impl RewrapArgs {
    /// The destination these flags ask for: `None` to re-encrypt under the
    /// same key and context (the "rewrap" grant).
    pub fn destination(&self) -> Result<Option<agent_proto::RewrapDestination>, CliError> {
        let context = if self.to_empty_context {
            Some(EncryptionContext::new())
        } else if self.to_context.is_empty() {
            None
        } else {
            Some(context_from_pairs(&self.to_context).map_err(CliError::Usage)?)
        };
        if self.to_key.is_none() && context.is_none() {
            return Ok(None);
        }
        Ok(Some(agent_proto::RewrapDestination {
            key: self.to_key.clone(),
            context,
        }))
    }
}

/// `create-key`'s `--description` and `--tag`.
#[derive(Debug, Args)]
pub struct NewMetadataArgs {
    /// Free text for humans: at most 1024 bytes, no control characters.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A tag NAME=VALUE (NAME: 1 to 64 of A-Z a-z 0-9 . _ -; VALUE: at
    /// most 256 bytes, no control characters); repeat for more, at most 32.
    #[arg(long = "tag", value_name = "NAME=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
}

impl NewMetadataArgs {
    /// The tags these flags give; a name given twice is a usage error.
    pub fn tags(&self) -> Result<std::collections::BTreeMap<String, String>, CliError> {
        tags_from_pairs(&self.tags).map_err(CliError::Usage)
    }
}

/// Arguments of `set-metadata`.
#[derive(Debug, Args)]
pub struct SetMetadataArgs {
    /// Key name.
    pub name: String,
    /// Replace the description ("" clears it): at most 1024 bytes, no
    /// control characters.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Add or replace a tag NAME=VALUE; repeat for more.
    #[arg(long = "tag", value_name = "NAME=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Remove the tag TAG (no error when it is absent); repeat for more.
    #[arg(long = "remove-tag", value_name = "TAG")]
    pub remove_tags: Vec<String>,
}

impl SetMetadataArgs {
    /// The tags to set; a name given twice, or both set and removed, is a
    /// usage error, and so is asking for no change at all.
    pub fn set_tags(&self) -> Result<std::collections::BTreeMap<String, String>, CliError> {
        let tags = tags_from_pairs(&self.tags).map_err(CliError::Usage)?;
        if let Some(both) = self
            .remove_tags
            .iter()
            .find(|name| tags.contains_key(*name))
        {
            return Err(CliError::Usage(format!(
                "tag '{both}' is both set (--tag) and removed (--remove-tag); give one"
            )));
        }
        if self.description.is_none() && tags.is_empty() && self.remove_tags.is_empty() {
            return Err(CliError::Usage(
                "nothing to change: give --description, --tag or --remove-tag".to_string(),
            ));
        }
        Ok(tags)
    }
}

/// Parses `NAME=VALUE` of `--tag` (the name and value are checked by the
/// daemon, which knows the limits).
pub fn parse_tag(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        None => Err("expected NAME=VALUE, but there is no '='".to_string()),
        Some(("", _)) => Err("expected NAME=VALUE, but NAME is empty".to_string()),
        Some((name, value)) => Ok((name.to_string(), value.to_string())),
    }
}

/// Builds tags from parsed pairs; a name given twice is an error that
/// names both arguments.
pub fn tags_from_pairs(
    pairs: &[(String, String)],
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut tags = std::collections::BTreeMap::new();
    for (name, value) in pairs {
        if let Some(first) = tags.get(name) {
            return Err(format!(
                "invalid value '{name}={value}' for '--tag <NAME=VALUE>': tag '{name}' is \
                 already given (as '{name}={first}'); each tag may appear once"
            ));
        }
        tags.insert(name.clone(), value.clone());
    }
    Ok(tags)
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Read the ciphertext (base64 or raw) from FILE instead of standard
    /// input ("-": standard input).
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
}

/// A key type as the command line spells it (`--type`): the names of
/// [`KeyType::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTypeArg(pub KeyType);

impl KeyTypeArg {
    /// Every key type, in wire order.
    const ALL: [KeyTypeArg; 6] = [
        KeyTypeArg(KeyType::Aes256Gcm),
        KeyTypeArg(KeyType::HmacSha256),
        KeyTypeArg(KeyType::HmacSha512),
        KeyTypeArg(KeyType::Ed25519),
        KeyTypeArg(KeyType::EcdsaP256),
        KeyTypeArg(KeyType::MlDsa65),
    ];
}

impl ValueEnum for KeyTypeArg {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self.0 {
            KeyType::Aes256Gcm => "wraps data: wrap, unwrap, datakey, rewrap",
            KeyType::HmacSha256 => "HMAC-SHA256 tags: mac, verify-mac",
            KeyType::HmacSha512 => "HMAC-SHA512 tags: mac, verify-mac",
            KeyType::Ed25519 => "Ed25519 signatures (RFC 8032): sign, verify, public-key",
            KeyType::EcdsaP256 => {
                "ECDSA P-256 with SHA-256 signatures (DER): sign, verify, public-key"
            }
            KeyType::MlDsa65 => {
                "ML-DSA-65 post-quantum signatures (FIPS 204): sign, verify, public-key"
            }
        };
        Some(PossibleValue::new(self.0.as_str()).help(help))
    }
}

/// Arguments of `mac`.
#[derive(Debug, Args)]
pub struct MacArgs {
    /// Key name.
    pub name: String,
    /// Input and output files.
    #[command(flatten)]
    pub io: InOutArgs,
    /// Write the raw tag bytes instead of base64.
    #[arg(long)]
    pub binary: bool,
}

/// Arguments of `verify-mac`.
#[derive(Debug, Args)]
pub struct VerifyMacArgs {
    /// Key name.
    pub name: String,
    /// The tag to check: base64 text, or a file holding it in base64 or raw.
    #[arg(long, value_name = "TAG")]
    pub tag: String,
    /// Check against this version only (default: the 8 newest live
    /// versions at or above the key's minimum version).
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,
    /// Read the data from FILE instead of standard input ("-": standard input).
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
}

/// Arguments of `sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Key name.
    pub name: String,
    /// Input and output files.
    #[command(flatten)]
    pub io: InOutArgs,
    /// The input is a SHA-256 digest of the message (32 raw bytes or 64 hex
    /// digits), not the message: ecdsa-p256 keys only, for messages too
    /// large to send.
    #[arg(long)]
    pub digest: bool,
    /// Write the raw signature bytes instead of base64.
    #[arg(long)]
    pub binary: bool,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Key name.
    pub name: String,
    /// The signature to check: base64 text, or a file holding it in base64
    /// or raw (as `sign` or `sign --binary` wrote it).
    #[arg(long, value_name = "SIG")]
    pub signature: String,
    /// Check against this version only (default: the 8 newest live
    /// versions at or above the key's minimum version).
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,
    /// Read the message from FILE instead of standard input ("-": standard input).
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// The input is a SHA-256 digest of the message (32 raw bytes or 64 hex
    /// digits): ecdsa-p256 keys only.
    #[arg(long)]
    pub digest: bool,
}

/// Arguments of `public-key`.
#[derive(Debug, Args)]
pub struct PublicKeyArgs {
    /// Key name.
    pub name: String,
    /// This version's public key (default: the latest version's).
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,
    /// Write the PEM to FILE instead of standard output.
    #[arg(long = "out", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// How `random` prints its bytes.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct RandomEncoding {
    /// Print lower-case hex.
    #[arg(long)]
    pub hex: bool,
    /// Print standard base64 (the default).
    #[arg(long)]
    pub base64: bool,
    /// Write the raw bytes.
    #[arg(long)]
    pub binary: bool,
}

/// Arguments of `random`.
#[derive(Debug, Args)]
pub struct RandomArgs {
    /// How many bytes: 1 to 1024.
    #[arg(value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_RANDOM_BYTES)))]
    pub bytes: u16,
    /// The encoding.
    #[command(flatten)]
    pub encoding: RandomEncoding,
}

/// The operation `bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// Wrap `size` random bytes.
    Wrap,
    /// Unwrap one prepared ciphertext of `size` bytes.
    Unwrap,
    /// Generate a `size`-byte data key (with its plaintext).
    Datakey,
    /// Sign `size` random bytes (with a key of `--type`, default ed25519).
    Sign,
    /// Verify one prepared signature over `size` bytes.
    Verify,
    /// Compute an HMAC tag of `size` random bytes (hmac-sha256 by default).
    Mac,
}

impl BenchOp {
    /// The operation's name as the command line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchOp::Wrap => "wrap",
            BenchOp::Unwrap => "unwrap",
            BenchOp::Datakey => "datakey",
            BenchOp::Sign => "sign",
            BenchOp::Verify => "verify",
            BenchOp::Mac => "mac",
        }
    }

    /// The daemon operation measured.
    pub fn operation(self) -> Operation {
        match self {
            BenchOp::Wrap => Operation::Wrap,
            BenchOp::Unwrap => Operation::Unwrap,
            BenchOp::Datakey => Operation::DataKey,
            BenchOp::Sign => Operation::Sign,
            BenchOp::Verify => Operation::Verify,
            BenchOp::Mac => Operation::Mac,
        }
    }

    /// The key type used when `--type` is not given.
    pub fn default_key_type(self) -> KeyType {
        match self {
            BenchOp::Wrap | BenchOp::Unwrap | BenchOp::Datakey => KeyType::Aes256Gcm,
            BenchOp::Sign | BenchOp::Verify => KeyType::Ed25519,
            BenchOp::Mac => KeyType::HmacSha256,
        }
    }
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent connections, one OS thread each.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub connections: u16,
    /// The operation to measure.
    #[arg(long, value_enum, default_value_t = BenchOp::Unwrap)]
    pub op: BenchOp,
    /// Measured seconds per phase (each phase also has a 0.5 s warm-up).
    /// A phase in which fewer than --min-ops requests completed by then
    /// runs on until they have.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests (succeeded or failed) each phase must complete in its
    /// measured window before it stops, however long that takes, so that a
    /// slow or loaded daemon gives a longer window rather than a phase with
    /// nothing measured. 0: stop after --duration whatever was measured.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub min_ops: u32,
    /// Plaintext size in bytes (for datakey: the data-key length, 16, 24, 32 or 64).
    #[arg(long, value_name = "BYTES", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub size: u32,
    /// The type of the key to use (default: aes256-gcm for wrap, unwrap and
    /// datakey, ed25519 for sign and verify, hmac-sha256 for mac).
    #[arg(long = "type", value_name = "TYPE")]
    pub key_type: Option<KeyTypeArg>,
    /// The key to use, created if missing and kept (default: a temporary
    /// key, "bench-tmp-TYPE-" and random hex, announced at the start and
    /// revoked, its key material destroyed, at the end, also when SIGINT,
    /// SIGTERM or SIGHUP stops the run; made only when the daemon says this
    /// peer may revoke it, asked by revoking a version no key has).
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
    /// Also measure wrap-batch or unwrap-batch (with --op wrap or unwrap)
    /// with N items per request (1 to 1000), and report its items per
    /// second as a ratio to the single requests of the same run.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=agent_proto::MAX_BATCH_ITEMS as i64))]
    pub batch: Option<u16>,
}

impl BenchArgs {
    /// The key type the benchmark uses.
    pub fn key_type(&self) -> KeyType {
        self.key_type
            .map_or_else(|| self.op.default_key_type(), |t| t.0)
    }

    /// The name of the key the benchmark uses: `--key`, or a temporary
    /// name with `suffix` (random hex) that no other run picks.
    pub fn key_name(&self, suffix: &str) -> String {
        match &self.key {
            Some(name) => name.clone(),
            None => format!("bench-tmp-{}-{suffix}", self.key_type()),
        }
    }

    /// Whether the key is temporary: made for this run and revoked after.
    pub fn temporary_key(&self) -> bool {
        self.key.is_none()
    }
}

/// A rotation period as the command line spells it: `Some(seconds)`, or
/// `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodArg(pub Option<u64>);

/// Parses a rotation period (`90d`, `12h`, `2w`, `1y`, `off`) with the
/// daemon's own rules.
pub fn parse_period_arg(arg: &str) -> Result<PeriodArg, String> {
    agent_proto::period::parse_period(arg)
        .map(PeriodArg)
        .map_err(|e| e.to_string())
}

/// Parses one `KEY=VALUE` pair; the value may be empty or contain `=`.
pub fn parse_context_pair(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        None => Err("expected KEY=VALUE, but there is no '='".to_string()),
        Some(("", _)) => Err("expected KEY=VALUE, but KEY is empty".to_string()),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
    }
}

/// Builds a context from parsed pairs; a key given twice is an error that
/// names both arguments.
pub fn context_from_pairs(pairs: &[(String, String)]) -> Result<EncryptionContext, String> {
    let mut context = EncryptionContext::new();
    for (key, value) in pairs {
        if let Some(first) = context.get(key) {
            return Err(format!(
                "invalid value '{key}={value}' for '--context <KEY=VALUE>': \
                 key '{key}' is already given (as '{key}={first}'); each context key may appear once"
            ));
        }
        context.insert(key.clone(), value.clone());
    }
    Ok(context)
}

/// The `--bytes` of `datakey`: [`parse_data_key_len`], with the sizes as
/// possible values so that `--help` and shell completion offer them.
#[derive(Debug, Clone, Copy)]
pub struct DataKeyLen;

impl clap::builder::TypedValueParser for DataKeyLen {
    type Value = u16;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<u16, clap::Error> {
        let text = value.to_string_lossy();
        parse_data_key_len(&text).map_err(|why| {
            let arg = arg.map_or_else(|| "--bytes".to_string(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value '{text}' for '{arg}': {why}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            ["16", "24", "32", "64"].into_iter().map(PossibleValue::new),
        ))
    }
}

/// Parses a data-key length: one of the sizes the daemon supports.
pub fn parse_data_key_len(arg: &str) -> Result<u16, String> {
    match arg.trim().parse::<u16>() {
        Ok(n @ (16 | 24 | 32 | 64)) => Ok(n),
        _ => Err("expected 16, 24, 32 or 64 (bytes)".to_string()),
    }
}

/// The longest benchmark phase accepted, so that durations stay sane.
const MAX_DURATION_SECS: f64 = 24.0 * 3600.0;

/// Parses a positive number of seconds (fractions allowed) of at most a day.
pub fn parse_duration(arg: &str) -> Result<Duration, String> {
    let secs: f64 = arg
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 5 or 0.5".to_string())?;
    if !(secs > 0.0 && secs <= MAX_DURATION_SECS) {
        return Err("expected more than 0 and at most 86400 seconds".to_string());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(args: &[&str]) -> Vec<(String, String)> {
        args.iter()
            .map(|a| parse_context_pair(a).expect("valid pair"))
            .collect()
    }

    #[test]
    fn context_pairs_split_on_the_first_equals_sign() {
        assert_eq!(
            parse_context_pair("table=users"),
            Ok(("table".to_string(), "users".to_string()))
        );
        assert_eq!(
            parse_context_pair("expr=a=b"),
            Ok(("expr".to_string(), "a=b".to_string()))
        );
        assert_eq!(
            parse_context_pair("empty="),
            Ok(("empty".to_string(), String::new()))
        );
    }

    #[test]
    fn context_pairs_without_equals_or_key_are_refused() {
        assert!(
            parse_context_pair("novalue")
                .unwrap_err()
                .contains("no '='")
        );
        assert!(
            parse_context_pair("=value")
                .unwrap_err()
                .contains("KEY is empty")
        );
        assert!(parse_context_pair("").is_err());
    }

    #[test]
    fn context_keys_may_appear_once() {
        let context = context_from_pairs(&pairs(&["b=2", "a=1"])).expect("context");
        assert_eq!(context.len(), 2);
        assert_eq!(context.get("a").map(String::as_str), Some("1"));
        let err = context_from_pairs(&pairs(&["a=1", "b=2", "a=3"])).unwrap_err();
        assert!(err.contains("'a=3'") && err.contains("'a=1'"), "{err}");
        assert!(err.contains("--context"), "{err}");
        assert!(context_from_pairs(&[]).expect("empty").is_empty());
    }

    #[test]
    fn context_flags_parse_through_clap() {
        let cli = Cli::try_parse_from(["hostkms", "wrap", "k", "--context", "a=1"]).expect("parse");
        let Command::Wrap(args) = cli.command else {
            panic!("wrap expected")
        };
        assert_eq!(args.context.context().expect("context").len(), 1);
        let err = Cli::try_parse_from(["hostkms", "wrap", "k", "--context", "novalue"])
            .expect_err("refused");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--context"), "{err}");
    }

    #[test]
    fn data_key_lengths_are_offered_and_checked_by_clap() {
        use clap::CommandFactory;
        let cli = Cli::try_parse_from(["hostkms", "datakey", "k", "--bytes", "64"]).expect("parse");
        let Command::Datakey(args) = cli.command else {
            panic!("datakey expected")
        };
        assert_eq!(args.bytes, 64);
        let err =
            Cli::try_parse_from(["hostkms", "datakey", "k", "--bytes", "33"]).expect_err("refused");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("'33'") && text.contains("16, 24, 32 or 64"),
            "{text}"
        );
        let command = Cli::command();
        let datakey = command.find_subcommand("datakey").expect("datakey");
        let bytes = datakey
            .get_arguments()
            .find(|a| a.get_id() == "bytes")
            .expect("--bytes");
        let offered: Vec<String> = bytes
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(offered, ["16", "24", "32", "64"]);
    }

    #[test]
    fn data_key_lengths_and_durations_are_checked() {
        assert_eq!(parse_data_key_len("64"), Ok(64));
        assert!(parse_data_key_len("33").is_err());
        assert!(parse_data_key_len("x").is_err());
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("NaN").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("1e300").is_err());
    }

    #[test]
    fn key_types_are_spelled_as_the_protocol_names_them() {
        let names: Vec<&str> = KeyTypeArg::ALL.iter().map(|t| t.0.as_str()).collect();
        let expected: Vec<&str> = KeyType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, expected);
        let cli = Cli::try_parse_from(["hostkms", "create-key", "k", "--type", "ml-dsa-65"])
            .expect("parse");
        let Command::CreateKey { key_type, .. } = cli.command else {
            panic!("create-key expected")
        };
        assert_eq!(key_type.0, KeyType::MlDsa65);
        let cli = Cli::try_parse_from(["hostkms", "create-key", "k"]).expect("parse");
        let Command::CreateKey { key_type, .. } = cli.command else {
            panic!("create-key expected")
        };
        assert_eq!(key_type.0, KeyType::Aes256Gcm, "the default");
        let err = Cli::try_parse_from(["hostkms", "create-key", "k", "--type", "rsa"])
            .expect_err("refused");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        for name in expected {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
    }

    #[test]
    fn random_sizes_and_encodings_are_checked() {
        for good in ["1", "1024"] {
            assert!(
                Cli::try_parse_from(["hostkms", "random", good]).is_ok(),
                "{good}"
            );
        }
        for bad in ["0", "1025", "-1", "x"] {
            assert!(
                Cli::try_parse_from(["hostkms", "random", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["hostkms", "random", "8", "--hex", "--binary"]).is_err());
    }

    #[test]
    fn bench_keys_follow_the_operation_and_type() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("parse");
            let Command::Bench(bench) = cli.command else {
                panic!("bench expected")
            };
            (
                bench.key_type(),
                bench.key_name("0a1b"),
                bench.temporary_key(),
            )
        };
        assert_eq!(
            parse(&["hostkms", "bench"]),
            (
                KeyType::Aes256Gcm,
                "bench-tmp-aes256-gcm-0a1b".to_string(),
                true
            )
        );
        assert_eq!(
            parse(&["hostkms", "bench", "--op", "sign"]),
            (KeyType::Ed25519, "bench-tmp-ed25519-0a1b".to_string(), true)
        );
        assert_eq!(
            parse(&["hostkms", "bench", "--op", "verify", "--type", "ecdsa-p256"]),
            (
                KeyType::EcdsaP256,
                "bench-tmp-ecdsa-p256-0a1b".to_string(),
                true
            )
        );
        assert_eq!(
            parse(&["hostkms", "bench", "--op", "mac", "--key", "m"]),
            (KeyType::HmacSha256, "m".to_string(), false)
        );
    }

    #[test]
    fn unwrap_encodings_exclude_each_other_and_datakey_out_needs_the_plaintext() {
        assert!(Cli::try_parse_from(["hostkms", "unwrap", "--base64", "--hex"]).is_err());
        // --force also lets --out replace a file, so it goes with any encoding.
        assert!(
            Cli::try_parse_from(["hostkms", "unwrap", "--hex", "--force", "--out", "f"]).is_ok()
        );
        assert!(Cli::try_parse_from(["hostkms", "unwrap", "--force"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "hostkms",
                "datakey",
                "k",
                "--out",
                "f",
                "--without-plaintext"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["hostkms", "datakey", "k", "--force"]).is_err());
        assert!(Cli::try_parse_from(["hostkms", "datakey", "k", "--out", "f", "--force"]).is_ok());
    }

    #[test]
    fn lifecycle_arguments_are_checked_before_the_daemon_is_asked() {
        let cli = Cli::try_parse_from(["hostkms", "schedule-deletion", "k"]).expect("parse");
        let Command::ScheduleDeletion { days, .. } = cli.command else {
            panic!("schedule-deletion expected")
        };
        assert_eq!(days, 30, "the default");
        for bad in ["6", "31", "0", "x"] {
            let err = Cli::try_parse_from(["hostkms", "schedule-deletion", "k", "--days", bad])
                .expect_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        let cli = Cli::try_parse_from(["hostkms", "set-rotation-period", "k", "90d"]).expect("90d");
        let Command::SetRotationPeriod { period, .. } = cli.command else {
            panic!("set-rotation-period expected")
        };
        assert_eq!(period, PeriodArg(Some(90 * 86_400)));
        let cli = Cli::try_parse_from(["hostkms", "set-rotation-period", "k", "off"]).expect("off");
        let Command::SetRotationPeriod { period, .. } = cli.command else {
            panic!("set-rotation-period expected")
        };
        assert_eq!(period, PeriodArg(None));
        let err = Cli::try_parse_from(["hostkms", "set-rotation-period", "k", "30m"])
            .expect_err("minutes are no unit");
        assert!(err.to_string().contains("e.g. 90d"), "{err}");
        let cli = Cli::try_parse_from(["hostkms", "create-key", "k", "--rotation-period", "1w"])
            .expect("parse");
        let Command::CreateKey {
            rotation_period, ..
        } = cli.command
        else {
            panic!("create-key expected")
        };
        assert_eq!(rotation_period, Some(PeriodArg(Some(7 * 86_400))));
    }

    #[test]
    fn every_command_documents_its_json_fields() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let nested = cli
            .get_subcommands()
            .flat_map(clap::Command::get_subcommands);
        let undocumented: Vec<&str> = cli
            .get_subcommands()
            .chain(nested)
            .filter(|sub| sub.get_name() != "help")
            .filter(|sub| {
                !sub.get_after_long_help()
                    .is_some_and(|help| help.to_string().starts_with("JSON (--json"))
            })
            .map(clap::Command::get_name)
            .collect();
        assert!(
            undocumented.is_empty(),
            "no --json fields in the after_long_help (cli/src/json_docs.rs) of {undocumented:?}"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn pcrs_parse_sorted_and_once_and_refuse_what_is_no_pcr() {
        assert_eq!(parse_pcrs("7,14").unwrap(), PcrList(vec![7, 14]));
        assert_eq!(parse_pcrs(" 14 , 7,7").unwrap(), PcrList(vec![7, 14]));
        assert_eq!(parse_pcrs("0,23").unwrap(), PcrList(vec![0, 23]));
        assert_eq!(parse_pcrs("none").unwrap(), PcrList(Vec::new()));
        assert_eq!(parse_pcrs("").unwrap(), PcrList(Vec::new()));
        for bad in ["24", "7,", "-1", "7;14", "pcr7", "256"] {
            let err = parse_pcrs(bad).unwrap_err();
            assert!(err.contains("0 to 23"), "{bad}: {err}");
        }
    }

    #[test]
    fn unlock_reseal_and_change_pin_parse() {
        let cli = Cli::try_parse_from(["hostkms", "unlock", "--pin-file", "/run/pin", "--reseal"])
            .expect("parse");
        let Command::Unlock(args) = cli.command else {
            panic!("not unlock");
        };
        assert!(args.reseal);
        assert_eq!(
            args.pin.pin_file.as_deref(),
            Some(std::path::Path::new("/run/pin"))
        );
        let cli = Cli::try_parse_from(["hostkms", "unlock"]).expect("parse");
        let Command::Unlock(args) = cli.command else {
            panic!("not unlock");
        };
        assert!(!args.reseal && args.pin.pin_file.is_none());

        let cli = Cli::try_parse_from([
            "hostkms",
            "reseal",
            "--pcrs",
            "14,7",
            "--dry-run",
            "--pin-file",
            "-",
            "--new-pin-file",
            "/run/new",
        ])
        .expect("parse");
        let Command::Reseal(args) = cli.command else {
            panic!("not reseal");
        };
        assert_eq!(args.pcrs, Some(PcrList(vec![7, 14])));
        assert!(args.dry_run);
        assert_eq!(
            args.pin.pin_file.as_deref(),
            Some(std::path::Path::new("-"))
        );
        assert!(args.new_pin_file.is_some());
        let cli = Cli::try_parse_from(["hostkms", "reseal"]).expect("parse");
        let Command::Reseal(args) = cli.command else {
            panic!("not reseal");
        };
        assert!(args.pcrs.is_none() && !args.dry_run);
        assert!(Cli::try_parse_from(["hostkms", "reseal", "--pcrs", "99"]).is_err());

        let cli = Cli::try_parse_from([
            "hostkms",
            "change-pin",
            "--pin-file",
            "/a",
            "--new-pin-file",
            "/b",
        ])
        .expect("parse");
        assert!(matches!(cli.command, Command::ChangePin(_)));
        // PINs never come from the command line itself.
        assert!(Cli::try_parse_from(["hostkms", "unlock", "--pin", "12345678"]).is_err());
        assert!(Cli::try_parse_from(["hostkms", "unlock", "12345678"]).is_err());
    }
}
