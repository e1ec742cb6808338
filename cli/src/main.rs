//! `hostkms`: the operator and script CLI for hostkmsd. It parses the
//! command line, calls the one matching method of `agent_proto::Client`
//! and prints the answer for a human or, with `--json`, for a script.
//!
//! Exit codes: 0 success, 1 the daemon refused the request (or, for
//! `verify` and `verify-mac`, the signature or tag is invalid; for
//! `decrypt-file`, the file does not authenticate or records another
//! context), 2 usage,
//! connection or local I/O errors, 3 the daemon is busy (retry later),
//! 128 plus the signal's number for a `bench` a signal stopped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent_proto::{Client, ClientError, KeyInfo, KeySettings, RotationSetting};
use clap::Parser as _;
use hostkms_cli::age_file::recipient::RecipientSpec;
use hostkms_cli::args::{
    Cli, Command, CredentialCommand, CredentialEncryptArgs, CredentialListArgs, DatakeyArgs,
    ExportArgs, InOutArgs, InspectArgs, MacArgs, PeriodArg, PublicKeyArgs, RandomArgs, RewrapArgs,
    SignArgs, UnwrapArgs, VerifyArgs, VerifyMacArgs, WrapArgs,
};
use hostkms_cli::error::{CliError, printable};
use hostkms_cli::io::{Sensitivity, base64_public, write_output, write_stdout};
use hostkms_cli::{age_file, bench, denial, io, output, report};

use hostkms_cli::REQUEST_TIMEOUT;

/// Parses the command line, runs the command, and reports a failure (see
/// `hostkms_cli::report`): a JSON object on stdout with `--json`, else
/// `hostkms: <why>` (or clap's style for usage errors) on stderr.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let json = report::json_requested(std::env::args_os());
            std::process::exit(report::command_line_failure(&err, json));
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = report::diagnose_connect(err);
            let uid = nix::unistd::geteuid().as_raw();
            let err = match &cli.command {
                Command::DecryptFile(_) => denial::explain_unwrap(err, uid),
                command => denial::explain(err, denial::named_key(command), uid),
            };
            let subcommand = hostkms_cli::command()
                .try_get_matches_from(std::env::args_os())
                .ok()
                .and_then(|m| m.subcommand_name().map(str::to_string));
            ExitCode::from(report::report(&err, cli.json, subcommand.as_deref()))
        }
    }
}

/// The daemon a command talks to: its socket and the frame limit to use.
struct Daemon<'a> {
    socket: &'a Path,
    max_frame: u32,
}

impl Daemon<'_> {
    /// Connects with the CLI's request timeout and frame limit.
    fn connect(&self) -> Result<Client, CliError> {
        let mut client = Client::connect(self.socket)?;
        client.set_timeout(Some(REQUEST_TIMEOUT))?;
        client.set_max_frame(self.max_frame);
        Ok(client)
    }
}

/// Runs one command. Local checks (usage, contexts, input files) come
/// before the daemon is contacted, so they fail fast and hold no connection.
fn run(cli: &Cli) -> Result<(), CliError> {
    let json = cli.json;
    let socket = cli.socket.as_path();
    let daemon = &Daemon {
        socket,
        max_frame: cli.max_frame,
    };
    match &cli.command {
        Command::Ping => {
            daemon.connect()?.ping()?;
            write_stdout(if json { b"{\"ok\":true}\n" } else { b"pong\n" })
        }
        Command::Status => {
            let status = daemon.connect()?.status()?;
            let text = if json {
                output::status_json(&status).map_err(json_error)?
            } else {
                output::status_human(&status)
            };
            write_stdout(text.as_bytes())?;
            if output::counters_withheld(&status) {
                // Health only: say why the rest is missing, off stdout so
                // --json stays one document.
                let withheld = CliError::CountersWithheld {
                    uid: nix::unistd::geteuid().as_raw(),
                };
                let _ = writeln!(std::io::stderr(), "hostkms: note: {withheld}");
            }
            Ok(())
        }
        Command::Metrics { out } => {
            let status = daemon.connect()?.status()?;
            if output::counters_withheld(&status) {
                // Zeros would read as "nothing happened" to a scraper.
                return Err(CliError::CountersWithheld {
                    uid: nix::unistd::geteuid().as_raw(),
                });
            }
            let text = if json {
                output::metrics_json(&status).map_err(json_error)?
            } else {
                output::metrics_openmetrics(&status)
            };
            match out {
                Some(path) => io::write_public_atomically(path, text.as_bytes()),
                None => write_stdout(text.as_bytes()),
            }
        }
        Command::Unlock(args) => hostkms_cli::sealing::unlock(&mut daemon.connect()?, args, json),
        Command::Reseal(args) => hostkms_cli::sealing::reseal(&mut daemon.connect()?, args, json),
        Command::ChangePin(args) => {
            hostkms_cli::sealing::change_pin(&mut daemon.connect()?, args, json)
        }
        Command::RotateRoot(args) => {
            let rotation = hostkms_cli::sealing::rotate_root(&mut daemon.connect()?, args)?;
            let text = if json {
                output::json_line(&rotation).map_err(json_error)?
            } else {
                output::root_rotation_human(&rotation)
            };
            write_stdout(text.as_bytes())
        }
        Command::CreateKey {
            name,
            key_type,
            rotation_period,
            metadata,
        } => {
            let settings = KeySettings {
                rotation: match rotation_period {
                    None => RotationSetting::DaemonDefault,
                    Some(PeriodArg(None)) => RotationSetting::Off,
                    Some(PeriodArg(Some(secs))) => RotationSetting::Every(*secs),
                },
                description: metadata.description.clone().unwrap_or_default(),
                tags: metadata.tags()?,
            };
            print_key(
                &daemon
                    .connect()?
                    .create_key_with(name, key_type.0, settings)?,
                json,
            )
        }
        Command::SetMetadata(args) => {
            let set_tags = args.set_tags()?;
            print_key(
                &daemon.connect()?.update_key_metadata(
                    &args.name,
                    args.description.as_deref(),
                    &set_tags,
                    &args.remove_tags,
                )?,
                json,
            )
        }
        Command::List { tags } => {
            let wanted = hostkms_cli::args::tags_from_pairs(tags).map_err(CliError::Usage)?;
            let mut keys = daemon.connect()?.list_keys()?;
            keys.retain(|key| output::has_tags(key, &wanted));
            let text = if json {
                output::keys_json(&keys).map_err(json_error)?
            } else {
                output::keys_human(&keys)
            };
            write_stdout(text.as_bytes())
        }
        Command::Describe { name } => print_key(&daemon.connect()?.describe_key(name)?, json),
        Command::Rotate { name } => print_key(&daemon.connect()?.rotate(name)?, json),
        Command::Revoke { name, version, yes } => {
            if version.is_none() && !yes {
                confirm_whole_key_revocation(name)?;
            }
            let key = daemon.connect()?.revoke(name, *version)?;
            print_key(&key, json)?;
            if version.is_none() {
                let _ = writeln!(
                    std::io::stderr(),
                    "hostkms: key {} is revoked: the key material of its {} versions is destroyed for good",
                    printable(&key.name),
                    key.versions.len()
                );
            }
            Ok(())
        }
        Command::Disable { name } => print_key(&daemon.connect()?.disable(name)?, json),
        Command::Enable { name } => print_key(&daemon.connect()?.enable(name)?, json),
        Command::ScheduleDeletion { name, days } => {
            let key = daemon.connect()?.schedule_deletion(name, *days)?;
            print_key(&key, json)?;
            let _ = writeln!(
                std::io::stderr(),
                "hostkms: key {} is pending deletion: every use is refused, and its material is deleted for good on {} at the earliest (after {days} days of the daemon running); `hostkms cancel-deletion {}` takes it back until then",
                printable(&key.name),
                key.deletion_date
                    .map_or_else(|| "?".to_string(), agent_proto::date::rfc3339),
                printable(&key.name),
            );
            Ok(())
        }
        Command::CancelDeletion { name } => {
            let key = daemon.connect()?.cancel_deletion(name)?;
            print_key(&key, json)?;
            let _ = writeln!(
                std::io::stderr(),
                "hostkms: deletion of key {} cancelled; it stays disabled until `hostkms enable {}`",
                printable(&key.name),
                printable(&key.name),
            );
            Ok(())
        }
        Command::SetRotationPeriod { name, period } => print_key(
            &daemon.connect()?.set_rotation_period(name, period.0)?,
            json,
        ),
        Command::MinDecryptionVersion { name, version } => print_key(
            &daemon
                .connect()?
                .set_min_decryption_version(name, *version)?,
            json,
        ),
        Command::Wrap(args) => wrap(daemon, args, json),
        Command::Unwrap(args) => unwrap(daemon, args, json),
        Command::Datakey(args) => datakey(daemon, args, json),
        Command::Rewrap(args) => rewrap(daemon, args, json),
        Command::Inspect(args) => inspect(daemon, args, json),
        Command::Mac(args) => mac(daemon, args, json),
        Command::VerifyMac(args) => verify_mac(daemon, args, json),
        Command::Sign(args) => sign(daemon, args, json),
        Command::Verify(args) => verify(daemon, args, json),
        Command::PublicKey(args) => public_key(daemon, args, json),
        Command::Random(args) => random(daemon, args, json),
        Command::Bench(args) => bench::run(socket, args, json),
        Command::TransportKey => {
            let info = daemon.connect()?.transport_key()?;
            let text = if json {
                output::json_line(&info).map_err(json_error)?
            } else {
                format!(
                    "recipient: {}\nfingerprint: {}\n",
                    info.recipient, info.fingerprint
                )
            };
            write_stdout(text.as_bytes())
        }
        Command::Export(args) => export(daemon, args, json),
        Command::Import { file } => {
            // The daemon refuses more than a frame; so does the CLI, first.
            let bytes = std::fs::File::open(file)
                .and_then(|mut f| io::read_bounded(&mut f, daemon.max_frame as usize))
                .map_err(|e| CliError::read(Some(file), e))?
                .ok_or_else(|| CliError::LargerThanAny {
                    what: format!("file {}", file.display()),
                    limit: daemon.max_frame as usize,
                    expected: "export file",
                })?;
            print_key(&daemon.connect()?.import_key(&bytes)?, json)
        }
        Command::Backup { out, force } => backup(daemon, out, *force, json),
        Command::EncryptFile(args) => encrypt_file(daemon, args, json),
        Command::DecryptFile(args) => decrypt_file(daemon, args, json),
        Command::AgeRecipient { name, context } => age_recipient(name, context, json),
        Command::AgeIdentity => age_identity(json),
        Command::Credential(CredentialCommand::Encrypt(args)) => {
            credential_encrypt(daemon, args, json)
        }
        Command::Credential(CredentialCommand::List(args)) => credential_list(daemon, args, json),
    }
}

/// Where the output of `encrypt-file` or `decrypt-file` goes: refuses
/// `--json` without `--out` (standard output carries the file) and, unless
/// `--force`, binary output to a terminal (`refusal` says why); then makes
/// an `--out` FILE ready (see [`io::SecretOutput`]) before the daemon is
/// asked anything.
fn file_output(
    out: Option<&Path>,
    force: bool,
    json: bool,
    refusal: &str,
) -> Result<Option<io::SecretOutput>, CliError> {
    use std::io::IsTerminal;
    if json && out.is_none() {
        return Err(CliError::Usage(
            "--json needs --out FILE: standard output carries the file itself".to_string(),
        ));
    }
    if out.is_none() && !force && std::io::stdout().is_terminal() {
        return Err(CliError::Usage(refusal.to_string()));
    }
    out.map(|path| io::SecretOutput::prepare(path, force))
        .transpose()
}

/// Streams into `output` (an `--out` FILE renamed into place on success
/// only) or, without one, standard output.
fn stream_into<T>(
    output: Option<io::SecretOutput>,
    fill: impl FnOnce(&mut dyn std::io::Write) -> Result<T, CliError>,
) -> Result<T, CliError> {
    match output {
        Some(output) => output.write_with(fill),
        None => fill(&mut std::io::stdout().lock()),
    }
}

/// The input of `encrypt-file` or `decrypt-file`: `--in` FILE, or
/// standard input (no `--in`, or `--in -`).
fn open_input(path: Option<&Path>) -> Result<Box<dyn std::io::Read>, CliError> {
    match path {
        Some(path) => std::fs::File::open(path)
            .map(|file| Box::new(file) as Box<dyn std::io::Read>)
            .map_err(|e| CliError::read(Some(path), e)),
        None => Ok(Box::new(std::io::stdin().lock())),
    }
}

/// Reports a file encrypted or decrypted to `--out` (nothing when the
/// file went to standard output).
fn report_file(
    verb: &str,
    streamed: &hostkms_cli::age_file::stream::Streamed,
    out: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let Some(out) = out else {
        return Ok(());
    };
    let used = &streamed.used;
    let text = if json {
        output::json_line(&serde_json::json!({
            "key": used.key,
            "version": used.version,
            "context": used.context,
            "bytes": streamed.bytes,
            "out": out.display().to_string(),
        }))
        .map_err(json_error)?
    } else {
        format!(
            "{verb} {} bytes to {} (key {} version {}, context {})\n",
            streamed.bytes,
            out.display(),
            printable(&used.key),
            used.version,
            hostkms_cli::age_file::identity::show_context(&used.context),
        )
    };
    write_stdout(text.as_bytes())
}

/// The streaming half of `encrypt-file` or `decrypt-file`.
type FileStreamer<'a> = dyn FnMut(
        &mut Client,
        &mut dyn std::io::Read,
        Option<&Path>,
        &mut dyn std::io::Write,
        Option<&Path>,
    ) -> Result<hostkms_cli::age_file::stream::Streamed, CliError>
    + 'a;

/// `encrypt-file` and `decrypt-file`: opens the input, makes the output
/// ready (refusing a terminal for binary output, `refusal` says why),
/// only then connects, streams with `streamer` and reports (`verb`).
fn file_command(
    daemon: &Daemon,
    args: &hostkms_cli::args::AgeFileArgs,
    json: bool,
    (verb, refusal): (&str, &str),
    streamer: &mut FileStreamer<'_>,
) -> Result<(), CliError> {
    let in_path = args.io.input.as_deref().filter(|p| p.as_os_str() != "-");
    let out = io::out_path(args.io.output.as_deref());
    let mut input = open_input(in_path)?;
    let output = file_output(out, args.force, json, refusal)?;
    let mut client = daemon.connect()?;
    let streamed = stream_into(output, |sink| {
        streamer(&mut client, &mut *input, in_path, sink, out)
    })?;
    report_file(verb, &streamed, out, json)
}

/// `encrypt-file`: an age file whose key the daemon wraps under NAME.
fn encrypt_file(
    daemon: &Daemon,
    args: &hostkms_cli::args::EncryptFileArgs,
    json: bool,
) -> Result<(), CliError> {
    let spec = RecipientSpec {
        key: args.name.clone(),
        context: args.file.context.context()?,
    };
    let refusal = "refusing to write the binary age file to a terminal: redirect standard \
                   output, give --out FILE, or give --force";
    file_command(
        daemon,
        &args.file,
        json,
        ("encrypted", refusal),
        &mut |client, input, in_path, sink, out| {
            age_file::stream::encrypt(client, &spec, input, in_path, sink, out)
        },
    )
}

/// `decrypt-file`: the plaintext of an age file with a `hostkms` stanza.
fn decrypt_file(
    daemon: &Daemon,
    args: &hostkms_cli::args::DecryptFileArgs,
    json: bool,
) -> Result<(), CliError> {
    if let Some(key) = &args.key {
        agent_proto::key_name::check(key).map_err(|e| CliError::Usage(format!("--key: {e}")))?;
    }
    let key = args.key.as_deref();
    let args = &args.file;
    let context = args.context.context()?;
    let expected = (!args.context.pairs.is_empty()).then_some(&context);
    let refusal = "refusing to write the raw plaintext to a terminal (binary bytes can garble \
                   it, and it stays in the scrollback): redirect standard output, give --out \
                   FILE, or give --force";
    file_command(
        daemon,
        args,
        json,
        ("decrypted", refusal),
        &mut |client, input, in_path, sink, out| {
            age_file::stream::decrypt(client, (expected, key), input, in_path, sink, out)
        },
    )
    .map_err(|err| match (err, key) {
        // The daemon tells a wrong key like a damaged ciphertext (it keeps
        // no oracle of which key a ciphertext belongs to): say --key's part.
        (
            CliError::Client(ClientError::Daemon {
                code: agent_proto::ErrorCode::InvalidCiphertext,
                message,
            }),
            Some(key),
        ) => CliError::Client(ClientError::Daemon {
            code: agent_proto::ErrorCode::InvalidCiphertext,
            message: format!(
                "{message} (or, as --key {key} was given, the file's key is not {key}: the \
                 daemon does not say which)"
            ),
        }),
        (err, _) => err,
    })
}

/// `age-recipient`: the `age1hostkms1...` recipient of NAME and a context.
fn age_recipient(
    name: &str,
    context: &hostkms_cli::args::ContextArgs,
    json: bool,
) -> Result<(), CliError> {
    agent_proto::key_name::check(name).map_err(|e| CliError::Usage(e.to_string()))?;
    let spec = RecipientSpec {
        key: name.to_string(),
        context: context.context()?,
    };
    let recipient = spec.encode();
    let text = if json {
        output::json_line(&serde_json::json!({
            "recipient": recipient,
            "key": spec.key,
            "context": spec.context,
        }))
        .map_err(json_error)?
    } else {
        format!("{recipient}\n")
    };
    write_stdout(text.as_bytes())
}

/// `age-identity`: the identity file age reads for `-d -i`.
fn age_identity(json: bool) -> Result<(), CliError> {
    let identity = age_file::recipient::identity_string();
    let text = if json {
        output::json_line(&serde_json::json!({ "identity": identity })).map_err(json_error)?
    } else {
        format!(
            "# hostkms age identity (age-plugin-hostkms): holds no secret; decrypting with it \
             asks hostkmsd, whose unwrap grants decide\n{identity}\n"
        )
    };
    write_stdout(text.as_bytes())
}

/// `credential encrypt`: checks the names and the target path, reads the
/// secret, has the daemon encrypt it for the unit (admins only), writes
/// the file and says what to put in the unit.
fn credential_encrypt(
    daemon: &Daemon,
    args: &CredentialEncryptArgs,
    json: bool,
) -> Result<(), CliError> {
    use hostkms_cli::credential::{self, Encrypted, Target};
    credential::check_names(&args.unit, &args.id)?;
    let target = Target::prepare(&args.dir, &args.unit, &args.id)?;
    let secret = credential::read_secret(
        args.input.as_deref(),
        &format!(
            "credential {} of {}",
            printable(&args.id),
            printable(&args.unit)
        ),
    )?;
    let wrapped = daemon
        .connect()?
        .wrap_credential(&args.key, &args.unit, &args.id, &secret)?;
    drop(secret);
    let replaced = target.replaces();
    let file = target.write(wrapped.ciphertext.as_bytes())?;
    let done = Encrypted {
        unit: args.unit.clone(),
        credential: args.id.clone(),
        key: wrapped.key.clone(),
        version: wrapped.version,
        file: file.display().to_string(),
        replaced,
        load_credential: credential::load_credential_line(&args.id),
        grant: credential::grant_line(&args.unit, &wrapped.key),
    };
    let text = if json {
        output::json_line(&done).map_err(json_error)?
    } else {
        credential::encrypted_human(&done)
    };
    write_stdout(text.as_bytes())
}

/// `credential list`: what is stored, with the key names the daemon shows
/// (without a daemon, the key ids only, and a note).
fn credential_list(daemon: &Daemon, args: &CredentialListArgs, json: bool) -> Result<(), CliError> {
    use hostkms_cli::credential;
    let mut listed = credential::list(&args.dir, args.unit.as_deref())?;
    if credential::has_headers(&listed) {
        match daemon.connect().and_then(|mut c| Ok(c.list_keys()?)) {
            Ok(keys) => credential::name_keys(&mut listed, &keys),
            Err(err) => {
                let err = report::diagnose_connect(err);
                let _ = writeln!(
                    std::io::stderr(),
                    "hostkms: note: key names are not shown: {err}"
                );
            }
        }
    }
    let text = if json {
        output::json_line(&listed).map_err(json_error)?
    } else {
        credential::list_human(&listed)
    };
    write_stdout(text.as_bytes())
}

/// `export`: refuses to replace FILE without --force, and a FILE it could
/// not write, before the daemon is asked (checked again after its answer),
/// then writes the daemon's file with mode 0600.
fn export(daemon: &Daemon, args: &ExportArgs, json: bool) -> Result<(), CliError> {
    io::refuse_out_dash(&args.out, "export")?;
    let output = io::SecretOutput::prepare(&args.out, args.force)?;
    let exported = daemon.connect()?.export_key(&args.name, &args.to)?;
    output.write(&exported.file)?;
    let text = if json {
        output::json_line(&serde_json::json!({
            "key": exported.key,
            "destination": exported.destination,
            "file": args.out.display().to_string(),
            "bytes": exported.file.len(),
        }))
        .map_err(json_error)?
    } else {
        format!(
            "exported key {} to {}: {} ({} bytes); import it there with: hostkms import FILE\n",
            exported.key,
            exported.destination,
            args.out.display(),
            exported.file.len()
        )
    };
    write_stdout(text.as_bytes())
}

/// `backup`: the recovery directory named by the daemon's status, as a tar.
fn backup(daemon: &Daemon, out: &Path, force: bool, json: bool) -> Result<(), CliError> {
    io::refuse_out_dash(out, "backup")?;
    let status = daemon.connect()?.status()?;
    if output::counters_withheld(&status) {
        return Err(CliError::CountersWithheld {
            uid: nix::unistd::geteuid().as_raw(),
        });
    }
    if !status.recovery.configured {
        return Err(CliError::NotRecoverable);
    }
    let dir = PathBuf::from(&status.recovery.dir);
    hostkms_cli::backup::write_backup(&dir, out, force)?;
    let text = if json {
        format!(
            "{}\n",
            serde_json::json!({ "dir": status.recovery.dir, "out": out.display().to_string() })
        )
    } else {
        format!("wrote a backup of {} to {}\n", dir.display(), out.display())
    };
    write_stdout(text.as_bytes())
}

/// Refuses `--binary` with `--json`: the JSON object carries base64.
fn check_binary(binary: bool, json: bool) -> Result<(), CliError> {
    check_binary_of(binary, json, "ciphertext")
}

/// Refuses `--binary` with `--json` for an output named `what`.
fn check_binary_of(binary: bool, json: bool, what: &str) -> Result<(), CliError> {
    if binary && json {
        return Err(CliError::Usage(format!(
            "'--binary' and '--json' cannot be used together: with --json the \
             {what} is printed in base64 inside a JSON object"
        )));
    }
    Ok(())
}

/// Writes public bytes (a tag, a signature) to `--out` or standard output:
/// base64 and a newline, or the raw bytes with `--binary`.
fn emit_public(out: Option<&Path>, bytes: &[u8], binary: bool) -> Result<(), CliError> {
    if binary {
        write_output(out, Sensitivity::Public, bytes)
    } else {
        let mut text = base64_public(bytes);
        text.push('\n');
        write_output(out, Sensitivity::Public, text.as_bytes())
    }
}

/// `mac`: an HMAC tag of the input under the key's latest version.
fn mac(daemon: &Daemon, args: &MacArgs, json: bool) -> Result<(), CliError> {
    check_binary_of(args.binary, json, "tag")?;
    let data = io::read_message(args.io.input.as_deref())?;
    let tag = daemon.connect()?.mac(&args.name, &data)?;
    let out = args.io.output.as_deref();
    if json {
        let text = output::mac_json(&tag).map_err(json_error)?;
        write_output(out, Sensitivity::Public, text.as_bytes())
    } else {
        emit_public(out, &tag.tag, args.binary)
    }
}

/// Prints a verification, and turns an invalid one into exit code 1.
fn report_verification(
    verification: &agent_proto::Verification,
    what: &'static str,
    version: Option<u32>,
    json: bool,
) -> Result<(), CliError> {
    let text = if json {
        output::verification_json(verification).map_err(json_error)?
    } else {
        output::verification_human(verification)
    };
    write_stdout(text.as_bytes())?;
    if verification.valid {
        return Ok(());
    }
    Err(CliError::NotVerified {
        what,
        key: printable(&verification.key),
        versions: match version {
            Some(version) => format!(" (version {version})"),
            None => " (under the newest live versions at or above its minimum version, up to 8; \
                 name an older one with --version)"
                .to_string(),
        },
    })
}

/// `verify-mac`: whether the tag is the key's HMAC of the input.
fn verify_mac(daemon: &Daemon, args: &VerifyMacArgs, json: bool) -> Result<(), CliError> {
    let tag = io::bytes_from_arg("--tag", &args.tag)?;
    let data = io::read_message(args.input.as_deref())?;
    let verification = daemon
        .connect()?
        .verify_mac(&args.name, &data, &tag, args.version)?;
    report_verification(&verification, "tag", args.version, json)
}

/// `sign`: a signature of the input (or of the digest it holds) under the
/// key's latest version.
fn sign(daemon: &Daemon, args: &SignArgs, json: bool) -> Result<(), CliError> {
    check_binary_of(args.binary, json, "signature")?;
    let input = io::read_message(args.io.input.as_deref())?;
    let signature = if args.digest {
        let digest = io::digest_from_input(&input)?;
        daemon.connect()?.sign_digest(&args.name, &digest)?
    } else {
        daemon.connect()?.sign(&args.name, &input)?
    };
    let out = args.io.output.as_deref();
    if json {
        let text = output::signature_json(&signature).map_err(json_error)?;
        write_output(out, Sensitivity::Public, text.as_bytes())
    } else {
        emit_public(out, &signature.signature, args.binary)
    }
}

/// `verify`: whether the signature is the key's over the input (or over
/// the digest it holds).
fn verify(daemon: &Daemon, args: &VerifyArgs, json: bool) -> Result<(), CliError> {
    let signature = io::bytes_from_arg("--signature", &args.signature)?;
    let input = io::read_message(args.input.as_deref())?;
    let verification = if args.digest {
        let digest = io::digest_from_input(&input)?;
        daemon
            .connect()?
            .verify_digest(&args.name, &digest, &signature, args.version)?
    } else {
        daemon
            .connect()?
            .verify(&args.name, &input, &signature, args.version)?
    };
    report_verification(&verification, "signature", args.version, json)
}

/// `public-key`: the version's public key as PEM (or JSON); a note on
/// standard error when the version is revoked.
fn public_key(daemon: &Daemon, args: &PublicKeyArgs, json: bool) -> Result<(), CliError> {
    let info = daemon.connect()?.public_key(&args.name, args.version)?;
    let pem = output::public_key_pem(&info.spki_der)
        .map_err(|e| CliError::write(args.output.as_deref(), std::io::Error::other(e)))?;
    let text = if json {
        output::public_key_json(&info, &pem).map_err(json_error)?
    } else {
        pem
    };
    write_output(args.output.as_deref(), Sensitivity::Public, text.as_bytes())?;
    if info.revoked {
        let _ = writeln!(
            std::io::stderr(),
            "hostkms: note: version {} of key {} is revoked: hostkms no longer signs or \
             verifies with it; its public key is shown for audit",
            info.version,
            printable(&info.key)
        );
    }
    Ok(())
}

/// `random`: N bytes from the daemon, base64 (default), hex or raw.
fn random(daemon: &Daemon, args: &RandomArgs, json: bool) -> Result<(), CliError> {
    let encoding = &args.encoding;
    if json && (encoding.hex || encoding.binary) {
        return Err(CliError::Usage(
            "'--json' prints the bytes in base64 inside a JSON object: leave out \
             '--hex' and '--binary'"
                .to_string(),
        ));
    }
    let bytes = daemon.connect()?.random(args.bytes)?;
    if json {
        let encoded = io::base64_secret(bytes.expose(), 0);
        let text = output::random_json(bytes.len(), &encoded).map_err(json_error)?;
        write_stdout(&text)
    } else if encoding.binary {
        write_stdout(bytes.expose())
    } else if encoding.hex {
        let mut text = io::hex_secret(bytes.expose());
        text.push('\n');
        write_stdout(text.as_bytes())
    } else {
        let mut text = io::base64_secret(bytes.expose(), 1);
        text.push('\n');
        write_stdout(text.as_bytes())
    }
}

/// Asks before `revoke NAME` destroys a whole key: on a terminal, the
/// operator types the key's name; elsewhere `--yes` is required.
fn confirm_whole_key_revocation(name: &str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal};
    let what = format!(
        "revoke without --version destroys the key material of every version of key {} for good: \
         nothing wrapped, signed or tagged with it can be opened or checked by hostkms again",
        printable(name)
    );
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{what}; add --yes to confirm, or --version N to revoke one version. Nothing was revoked"
        )));
    }
    let _ = write!(
        std::io::stderr(),
        "hostkms: {what}.\nType the key's name to confirm: "
    );
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::read(None, e))?;
    if answer.trim_end_matches(['\n', '\r']) != name {
        return Err(CliError::Usage(
            "the name typed is not the key's: nothing was revoked".to_string(),
        ));
    }
    Ok(())
}

/// A JSON serialization failure, reported as an output error.
fn json_error(err: serde_json::Error) -> CliError {
    CliError::write(None, std::io::Error::other(err))
}

/// Prints a key's metadata.
fn print_key(key: &KeyInfo, json: bool) -> Result<(), CliError> {
    let text = if json {
        output::key_json(key).map_err(json_error)?
    } else {
        output::key_human(key)
    };
    write_stdout(text.as_bytes())
}

/// The ciphertext named by `--in` (or standard input), base64 or raw.
fn read_ciphertext(io: &InOutArgs) -> Result<Vec<u8>, CliError> {
    io::read_ciphertext(io.input.as_deref())
}

/// Prints (or writes to `--out`) a new ciphertext: base64 and a newline,
/// the raw bytes with `--binary`, or a JSON object with `--json`.
fn emit_wrapped(
    wrapped: &agent_proto::Wrapped,
    out: Option<&PathBuf>,
    binary: bool,
    json: bool,
) -> Result<(), CliError> {
    let out = out.map(PathBuf::as_path);
    if json {
        let text = output::wrapped_json(wrapped).map_err(json_error)?;
        write_output(out, Sensitivity::Public, text.as_bytes())
    } else if binary {
        write_output(out, Sensitivity::Public, wrapped.ciphertext.as_bytes())
    } else {
        let mut text = base64_public(wrapped.ciphertext.as_bytes());
        text.push('\n');
        write_output(out, Sensitivity::Public, text.as_bytes())
    }
}

/// `wrap`: encrypts the input under the key's latest version.
fn wrap(daemon: &Daemon, args: &WrapArgs, json: bool) -> Result<(), CliError> {
    check_binary(args.binary, json)?;
    let context = args.context.context()?;
    let plaintext = io::read_input(args.io.input.as_deref())?;
    let wrapped = daemon.connect()?.wrap(&args.name, &plaintext, &context)?;
    emit_wrapped(&wrapped, args.io.output.as_ref(), args.binary, json)
}

/// `unwrap`: decrypts the input and writes the raw plaintext (or JSON).
fn unwrap(daemon: &Daemon, args: &UnwrapArgs, json: bool) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let encoding = &args.encoding;
    if json && (encoding.base64 || encoding.hex) {
        return Err(CliError::Usage(
            "'--json' prints the plaintext in base64 inside a JSON object: leave out \
             '--base64' and '--hex'"
                .to_string(),
        ));
    }
    let out = io::out_path(args.io.output.as_deref());
    let raw = !json && !encoding.base64 && !encoding.hex;
    if raw && out.is_none() && !args.force && std::io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "refusing to write the raw plaintext to a terminal (binary bytes can garble \
             it, and it stays in the scrollback): redirect standard output, give --out \
             FILE, print it with --base64 or --hex, or give --force"
                .to_string(),
        ));
    }
    let context = args.context.context()?;
    let ciphertext = read_ciphertext(&args.io)?;
    let output = out
        .map(|path| io::SecretOutput::prepare(path, args.force))
        .transpose()?;
    let unwrapped = daemon
        .connect()?
        .unwrap(&ciphertext, &context, args.key.as_deref())?;
    let plaintext = unwrapped.plaintext.expose();
    let emit = |bytes: &[u8]| match output {
        Some(output) => output.write(bytes),
        None => write_stdout(bytes),
    };
    if json {
        emit(&output::unwrapped_json(&unwrapped).map_err(json_error)?)
    } else if encoding.base64 {
        let mut text = io::base64_secret(plaintext, 1);
        text.push('\n');
        emit(text.as_bytes())
    } else if encoding.hex {
        let mut text = io::hex_secret(plaintext);
        text.push('\n');
        emit(text.as_bytes())
    } else {
        emit(plaintext)
    }
}

/// `datakey`: a fresh data key, with or without its plaintext.
fn datakey(daemon: &Daemon, args: &DatakeyArgs, json: bool) -> Result<(), CliError> {
    let context = args.context.context()?;
    if let Some(out) = &args.out {
        io::refuse_out_dash(out, "datakey")?;
    }
    // The file is made ready first: a path that cannot take the data key
    // is refused before the daemon makes (and audits) one.
    let output = args
        .out
        .as_deref()
        .map(|out| io::SecretOutput::prepare(out, args.force))
        .transpose()?;
    let mut client = daemon.connect()?;
    let data_key = if args.without_plaintext {
        client.generate_data_key_without_plaintext(&args.name, args.bytes, &context)?
    } else {
        client.generate_data_key(&args.name, args.bytes, &context)?
    };
    if let Some(output) = output {
        let out = output.path().to_path_buf();
        let out = &out;
        let plaintext = data_key.plaintext.as_ref().map(|p| p.expose());
        output.write(plaintext.unwrap_or_default())?;
        let text = if json {
            output::data_key_file_json(&data_key, out).map_err(json_error)?
        } else {
            output::data_key_file_human(&data_key, out)
        };
        return write_stdout(text.as_bytes());
    }
    if json {
        write_stdout(&output::data_key_json(&data_key).map_err(json_error)?)
    } else {
        write_stdout(output::data_key_human(&data_key).as_bytes())
    }
}

/// `inspect`: the key, key id and version of the input ciphertext.
fn inspect(daemon: &Daemon, args: &InspectArgs, json: bool) -> Result<(), CliError> {
    let path = args.input.as_deref().filter(|p| p.as_os_str() != "-");
    let what = hostkms_cli::error::describe(path, "standard input");
    // A bad input is refused before the daemon is asked anything.
    let ciphertext = io::read_ciphertext(path)?;
    let header = hostkms_cli::inspect::header(&ciphertext, &what)?;
    let inspection = hostkms_cli::inspect::inspect(&mut daemon.connect()?, &header)?;
    if json {
        write_stdout(
            hostkms_cli::inspect::json(&inspection)
                .map_err(json_error)?
                .as_bytes(),
        )
    } else {
        write_stdout(hostkms_cli::inspect::human(&inspection).as_bytes())
    }
}

/// `rewrap`: re-encrypts the input under its key's latest version, or for
/// the destination --to-key/--to-context name.
fn rewrap(daemon: &Daemon, args: &RewrapArgs, json: bool) -> Result<(), CliError> {
    check_binary(args.binary, json)?;
    let context = args.context.context()?;
    let ciphertext = read_ciphertext(&args.io)?;
    let destination = args.destination()?;
    let mut client = daemon.connect()?;
    let wrapped = match destination {
        None => client.rewrap(&ciphertext, &context, args.key.as_deref())?,
        Some(to) => client.rewrap_to(
            &ciphertext,
            &context,
            args.key.as_deref(),
            to.key.as_deref(),
            to.context.as_ref(),
        )?,
    };
    emit_wrapped(&wrapped, args.io.output.as_ref(), args.binary, json)
}
