//! The hidden `--generate KIND` option of `hostkms` and `hostkmsd`: prints a
//! man page or a shell completion script, rendered from the binary's own clap
//! definition, on standard output. The Debian package is built from these
//! (`make deb`), so the manual can never drift from the real command line.
//!
//! It is checked before the normal argument parsing, must be the first
//! argument, and needs no socket, config or TPM: `hostkms --generate man`
//! works on a build machine with nothing else installed. It is not shown by
//! `--help`, because it is for packagers only.
//!
//! This file is shared by both binaries (`#[path]` module); what differs
//! between them is chosen by the program name given to
//! [`run_if_requested`].

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

use clap_complete::Shell;
use clap_mangen::Man;

/// The option that selects generation; must come first on the command line.
const FLAG: &str = "--generate";

/// What `--generate` can print, as spelt on the command line.
const KINDS: [&str; 4] = ["man", "complete-bash", "complete-zsh", "complete-fish"];

/// If the command line is `PROGRAM --generate KIND` (or `--generate=KIND`),
/// prints the requested file for `program`, whose clap definition `command`
/// builds, and returns the exit code; otherwise returns `None` and the
/// binary goes on with its normal parsing.
///
/// `program` is the installed name (`hostkms` or `hostkmsd`): it names the
/// man page and the completed command, and selects the page's section and
/// hand-written sections (FILES, EXIT STATUS, …).
pub fn run_if_requested(
    program: &'static str,
    command: impl FnOnce() -> clap::Command,
) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let kind = match requested_kind(&args)? {
        Ok(kind) => kind,
        Err(message) => {
            eprintln!("{program}: {message}");
            return Some(ExitCode::from(2));
        }
    };
    let command = command().name(program).bin_name(program);
    let text = match render(program, command, &kind) {
        Ok(text) => text,
        Err(message) => {
            eprintln!("{program}: {message}");
            return Some(ExitCode::from(2));
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&text).and_then(|()| stdout.flush()) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{program}: cannot write the generated {kind} to standard output: {e}");
            Some(ExitCode::FAILURE)
        }
    }
}

/// The kind asked for: `None` when the first argument is not `--generate`,
/// `Some(Err(why))` when it is but the rest of the command line is wrong.
fn requested_kind(args: &[OsString]) -> Option<Result<String, String>> {
    let first = args.first()?.to_str()?;
    let (kind, rest) = if first == FLAG {
        (
            args.get(1).map(|k| k.to_string_lossy().into_owned()),
            &args[2.min(args.len())..],
        )
    } else if let Some(kind) = first.strip_prefix("--generate=") {
        (Some(kind.to_string()), &args[1..])
    } else {
        return None;
    };
    let expected = KINDS.join(", ");
    Some(match kind {
        None => Err(format!("{FLAG} needs a value: one of {expected}")),
        Some(kind) if !KINDS.contains(&kind.as_str()) => Err(format!(
            "{FLAG}: unknown kind \"{kind}\"; expected one of {expected}"
        )),
        Some(_) if !rest.is_empty() => Err(format!(
            "{FLAG} takes exactly one value and no other argument (got {} more)",
            rest.len()
        )),
        Some(kind) => Ok(kind),
    })
}

/// Renders one of [`KINDS`] for `command`.
fn render(program: &str, mut command: clap::Command, kind: &str) -> Result<Vec<u8>, String> {
    let shell = match kind {
        "man" => {
            return man_page(program, command)
                .map_err(|e| format!("cannot render the man page: {e}"));
        }
        "complete-bash" => Shell::Bash,
        "complete-zsh" => Shell::Zsh,
        "complete-fish" => Shell::Fish,
        other => return Err(format!("unknown kind \"{other}\"")),
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, program, &mut out);
    Ok(out)
}

/// What differs between the two man pages.
struct Page {
    /// The manual section: 1 for the CLI, 8 for the daemon.
    section: &'static str,
    /// The one-line summary of the NAME section.
    summary: &'static str,
    /// A DESCRIPTION in roff replacing clap's, when the doc comment is too
    /// short for a manual.
    description: Option<&'static str>,
    /// Hand-written roff sections after the generated ones.
    extra: &'static str,
}

/// The page of `program` (`hostkms` or `hostkmsd`).
fn page_of(program: &str) -> Page {
    match program {
        "hostkmsd" => Page {
            section: "8",
            summary: "TPM-backed key-management daemon of hostkms",
            description: Some(HOSTKMSD_DESCRIPTION),
            extra: HOSTKMSD_SECTIONS,
        },
        _ => Page {
            section: "1",
            summary: "manage the keys of a hostkms daemon, wrap and unwrap data",
            description: None,
            extra: HOSTKMS_SECTIONS,
        },
    }
}

/// The roff preamble clap_mangen's renderer puts before every piece it
/// renders; written once at the top of the page and dropped from the pieces.
const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// The man page of `program`: clap_mangen's NAME, SYNOPSIS, DESCRIPTION and
/// OPTIONS; for a program with subcommands a COMMANDS section with each
/// command's synopsis, description and options (one page, rather than a page
/// per command); then the hand-written sections of [`page_of`].
fn man_page(program: &str, mut command: clap::Command) -> std::io::Result<Vec<u8>> {
    let page = page_of(program);
    command = command.about(page.summary);
    command.build();
    let version = command.get_version().unwrap_or_default().to_string();
    let man = Man::new(command.clone());
    let mut out = String::new();
    for line in PREAMBLE {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        ".TH {} {} \"{}\" \"hostkms {version}\" \"hostkms manual\"\n",
        program.to_uppercase(),
        page.section,
        build_date(),
    ));
    out.push_str(&piece(|w| man.render_name_section(w), true)?);
    out.push_str(&piece(|w| man.render_synopsis_section(w), true)?);
    match page.description {
        Some(description) => {
            out.push_str(".SH DESCRIPTION\n");
            out.push_str(description);
        }
        None => out.push_str(&piece(|w| man.render_description_section(w), true)?),
    }
    out.push_str(&piece(|w| man.render_options_section(w), true)?);
    let subcommands: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .collect();
    if !subcommands.is_empty() {
        out.push_str(".SH COMMANDS\n");
        out.push_str(
            "Every command also takes the global options above \
             (\\fB\\-\\-socket\\fR, \\fB\\-\\-json\\fR).\n",
        );
        for sub in subcommands {
            out.push_str(&subcommand(sub)?);
        }
    }
    out.push_str(page.extra);
    Ok(out.into_bytes())
}

/// One subcommand as a `.SS` subsection of COMMANDS: its synopsis,
/// description and own options. The global options and `--help` are left
/// out (they are described once, at the top).
fn subcommand(sub: &clap::Command) -> std::io::Result<String> {
    let mut sub = sub.clone();
    let repeated: Vec<clap::Id> = sub
        .get_arguments()
        .filter(|arg| arg.is_global_set() || arg.get_id() == "help")
        .map(|arg| arg.get_id().clone())
        .collect();
    for id in repeated {
        sub = sub.mut_arg(id, |arg| arg.hide(true));
    }
    let title = sub
        .get_bin_name()
        .unwrap_or_else(|| sub.get_name())
        .replace('-', "\\-");
    let man = Man::new(sub);
    let mut out = format!(".SS \"{title}\"\n");
    out.push_str(&piece(|w| man.render_synopsis_section(w), false)?);
    out.push_str(".PP\n");
    out.push_str(&piece(|w| man.render_description_section(w), false)?);
    out.push_str(&piece(|w| man.render_options_section(w), false)?);
    Ok(out)
}

/// One piece rendered by clap_mangen, without the renderer's preamble and,
/// unless `keep_heading`, without its `.SH` heading line, so that it can sit
/// inside a subsection.
fn piece(
    render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
    keep_heading: bool,
) -> std::io::Result<String> {
    let mut roff = Vec::new();
    render(&mut roff)?;
    let text = String::from_utf8(roff).map_err(std::io::Error::other)?;
    let mut out = String::new();
    let mut heading_seen = false;
    for line in text.lines() {
        if PREAMBLE.contains(&line) {
            continue;
        }
        if line.starts_with(".SH") && !keep_heading && !heading_seen {
            heading_seen = true;
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// The page's date, YYYY-MM-DD: `SOURCE_DATE_EPOCH` when set (reproducible
/// builds; `make deb` sets it from the Debian changelog), else today (UTC).
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// hostkmsd(8)'s DESCRIPTION (the daemon's doc comment is one line).
const HOSTKMSD_DESCRIPTION: &str = r#"\fBhostkmsd\fR seals a root key to the machine's TPM 2.0 and serves
envelope encryption to the local services of this host over a Unix socket:
wrap and unwrap data, generate data keys, rewrap, rotate, revoke. Each
key version has its own AES\-256 key\-encryption key, stored in the key store
encrypted under the root key; none ever leaves the daemon. Requests never
touch the TPM: it unseals the root key at start\-up.
.PP
Every request is checked against the peer's credentials (uid, gid,
supplementary groups, systemd unit) and the grants of the configuration.
Root and members of \fBadmin_groups\fR are admins. Each request is recorded
as an audit event in the journal, with structured fields and a message ID
explained by the catalog (\fBjournalctl \-x\fR).
.PP
Operators use \fBhostkms\fR(1); services use the \fBagent\-proto\fR client
library.
"#;

/// hostkms(1) after the generated sections.
const HOSTKMS_SECTIONS: &str = r#".SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
The daemon refused the request; its reason is printed on standard error,
e.g. \fBhostkms: permission denied: uid 65534 may not unwrap with key "app\-db"\fR.
.TP
.B 2
A usage, connection or local file error (a missing socket, or one the
caller may not open, says which and why).
.TP
.B 3
The daemon is busy: it is at a limit (connections, the connections one user
may hold, memory for requests in transit) and refused the request with
\fBhostkms: busy: \fR and the limit; the same command may succeed later.
.SH ENVIRONMENT
.TP
.B HOSTKMS_SOCKET
The daemon's socket when \fB\-\-socket\fR is not given.
.SH FILES
.TP
.I /run/hostkms/hostkms.sock
The default socket. Root and members of group \fBhostkms\fR may connect;
every request is then checked against the grants of the daemon's
configuration.
.TP
.I /etc/hostkms/config.toml
The daemon's configuration: who may do what with which key (\fB[[grant]]\fR
tables) and who is an admin (\fBadmin_groups\fR).
.SH EXAMPLES
.nf
hostkms create\-key app\-db
echo \-n 'my secret' | hostkms wrap app\-db \-\-context app=db > secret.ct
hostkms unwrap \-\-context app=db \-\-in secret.ct
hostkms datakey app\-db \-\-bytes 32
hostkms rotate app\-db
hostkms revoke app\-db \-\-version 1
.fi
.SH SEE ALSO
\fBhostkmsd\fR(8), \fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#;

/// hostkmsd(8) after the generated sections.
const HOSTKMSD_SECTIONS: &str = r#".SH SYSTEMD
The package runs the daemon as \fBhostkms.service\fR, started by
\fBhostkms.socket\fR on the first connection (socket activation: the daemon
serves the socket it is handed and binds none itself). It reports readiness
(\fBType=notify\fR) only once the root key is unsealed and the key store is
loaded, and pings the service manager's watchdog.
.PP
.nf
systemctl enable \-\-now hostkms.socket
systemctl reload hostkms      # re\-read grants and limits (SIGHUP)
journalctl \-u hostkms        # audit events, one per request
journalctl \-x MESSAGE_ID=ae4499d0098646569a7eaef5c366b9e7   # denials
.fi
.SH SIGNALS
.TP
.B SIGHUP
Reload the configuration's grants and limits without dropping connections.
An invalid configuration is refused with an error naming the file, line and
field, and the old one stays in force.
.TP
.BR SIGTERM ", " SIGINT
Stop cleanly: finish the requests in progress and write the encryption
counts.
.SH EXIT STATUS
.TP
.B 0
Stopped after SIGTERM or SIGINT.
.TP
.B 1
Could not start: TPM, root key, key store, state directory or socket.
.TP
.B 2
Configuration error.
.SH ENVIRONMENT
.TP
.B HOSTKMS_LOG
Filter of the ordinary log lines, in tracing's syntax (default \fBinfo\fR).
Audit events and alerts are never filtered out.
.TP
.B HOSTKMS_LOG_TARGET
\fBauto\fR (the default: journald when its socket is there, else standard
error), \fBjournal\fR or \fBstderr\fR.
.TP
.B TSS2_LOG
tpm2\-tss's own logging; off unless set.
.TP
.BR LISTEN_FDS ", " LISTEN_PID ", " NOTIFY_SOCKET ", " WATCHDOG_USEC
Set by systemd for socket activation, readiness and the watchdog.
.SH FILES
.TP
.I /etc/hostkms/config.toml
The configuration (TOML). Every field has a safe default; unknown fields are
errors. The packaged file lists every field, commented out.
.TP
.I /var/lib/hostkms
The root key sealed to the TPM (\fBroot.pub\fR, \fBroot.priv\fR) and the key
store. Only the TPM that sealed the root key can unseal it: losing this
directory, or that TPM, loses every key. Back it up; it stays in place when
the package is removed or purged.
.TP
.I /run/hostkms/hostkms.sock
The socket, owned by \fBhostkms.socket\fR (root:hostkms, mode 0660).
.TP
.I /dev/tpmrm0
The kernel's TPM resource manager, the default TCTI
(\fBdevice:/dev/tpmrm0\fR).
.SH SEE ALSO
\fBhostkms\fR(1), \fBsystemd.socket\fR(5), \fBjournalctl\fR(1),
\fBsystemd\-sysusers\fR(8)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_a_leading_generate_flag_is_taken() {
        assert!(requested_kind(&args(&[])).is_none());
        assert!(requested_kind(&args(&["status"])).is_none());
        assert!(requested_kind(&args(&["--json", "--generate", "man"])).is_none());
        assert_eq!(
            requested_kind(&args(&["--generate", "man"])),
            Some(Ok("man".into()))
        );
        assert_eq!(
            requested_kind(&args(&["--generate=complete-zsh"])),
            Some(Ok("complete-zsh".into()))
        );
    }

    #[test]
    fn bad_generate_requests_are_refused_with_the_choices() {
        for bad in [
            &["--generate"][..],
            &["--generate", "html"],
            &["--generate=", "x"],
            &["--generate", "man", "extra"],
        ] {
            let err = requested_kind(&args(bad))
                .expect("taken")
                .expect_err("refused");
            assert!(err.contains("--generate"), "{bad:?}: {err}");
        }
        let err = requested_kind(&args(&["--generate", "html"]))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("complete-bash"), "{err}");
    }

    #[test]
    fn man_page_has_commands_options_and_hand_written_sections() {
        let command = clap::Command::new("hostkms")
            .version("1.2.3")
            .about("A test CLI")
            .arg(clap::Arg::new("socket").long("socket").global(true))
            .subcommand(
                clap::Command::new("wrap").about("Encrypt data").arg(
                    clap::Arg::new("binary")
                        .long("binary")
                        .action(clap::ArgAction::SetTrue),
                ),
            );
        let page =
            String::from_utf8(man_page("hostkms", command.bin_name("hostkms")).unwrap()).unwrap();
        assert!(page.contains("\n.TH HOSTKMS 1 \""), "{page}");
        assert!(page.contains("hostkms \\- manage the keys"), "{page}");
        assert!(page.contains("hostkms 1.2.3"), "{page}");
        assert!(page.contains(".SH COMMANDS"), "{page}");
        assert!(page.contains(".SS \"hostkms wrap\""), "{page}");
        assert!(page.contains("binary"), "{page}");
        assert!(page.contains(".SH EXIT STATUS"), "{page}");
        assert_eq!(page.matches(PREAMBLE[0]).count(), 1, "{page}");
        let wrap = page.split(".SS \"hostkms wrap\"").nth(1).unwrap();
        assert!(!wrap.contains(".SH SYNOPSIS"), "{wrap}");
        let wrap = wrap.split(".SH EXIT").next().unwrap();
        assert!(
            !wrap.contains("socket"),
            "globals are described once: {wrap}"
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2026-11-28, the date of the first Debian changelog entry.
        assert_eq!(civil_from_days(1_795_896_000 / 86_400), (2026, 11, 28));
    }
}
