//! Man pages rendered from a clap definition: clap_mangen's NAME, SYNOPSIS,
//! DESCRIPTION and OPTIONS, one COMMANDS section with a subsection per
//! subcommand, then the hand-written roff of packaging/man/ (compiled in,
//! so a page can never be rendered without it).

use jiff::civil::DateTime;

use crate::XtaskError;

/// What differs between the two man pages.
pub struct Page {
    /// The installed program: names the page and its commands.
    pub program: &'static str,
    /// The manual section: 1 for the CLI, 8 for the daemon.
    pub section: &'static str,
    /// The one-line summary of the NAME section.
    summary: &'static str,
    /// A DESCRIPTION in roff replacing clap's, when the doc comment is too
    /// short for a manual.
    description: Option<&'static str>,
    /// Hand-written roff sections after the generated ones.
    extra: &'static str,
    /// The heading of the section rendered from the program's
    /// `after_long_help`, if it has one (default `NOTES`).
    epilogue_title: Option<&'static str>,
}

/// hostkms(1), the CLI's page.
pub const HOSTKMS: Page = Page {
    program: "hostkms",
    section: "1",
    summary: "manage the keys of a hostkms daemon, wrap and unwrap data",
    description: None,
    extra: include_str!("../../packaging/man/hostkms.1.sections.roff"),
    epilogue_title: Some("JSON OUTPUT AND ERRORS"),
};

/// hostkmsd(8), the daemon's page (its doc comment is one line, so the
/// DESCRIPTION is hand-written too).
pub const HOSTKMSD: Page = Page {
    program: "hostkmsd",
    section: "8",
    summary: "TPM-backed key-management daemon of hostkms",
    description: Some(include_str!(
        "../../packaging/man/hostkmsd.8.description.roff"
    )),
    extra: include_str!("../../packaging/man/hostkmsd.8.sections.roff"),
    epilogue_title: Some("LOGS"),
};

impl Page {
    /// The page's file name, e.g. `hostkms.1`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.program, self.section)
    }
}

/// The roff preamble clap_mangen's renderer puts before every piece it
/// renders; written once at the top of the page and dropped from the pieces.
const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// The man page `page` for `command` (the program's clap definition), dated
/// `date` (YYYY-MM-DD).
pub fn render(page: &Page, command: clap::Command, date: &str) -> std::io::Result<Vec<u8>> {
    let mut command = command
        .name(page.program)
        .bin_name(page.program)
        .about(page.summary);
    command.build();
    let version = command.get_version().unwrap_or_default().to_string();
    let man = clap_mangen::Man::new(command.clone());
    let mut out = String::new();
    for line in PREAMBLE {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        ".TH {} {} \"{date}\" \"hostkms {version}\" \"hostkms manual\"\n",
        page.program.to_uppercase(),
        page.section,
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
    if command.get_after_long_help().is_some() || command.get_after_help().is_some() {
        // The program's own --help epilogue (the CLI's: its --json errors).
        out.push_str(&format!(
            ".SH \"{}\"\n",
            page.epilogue_title.unwrap_or("NOTES")
        ));
        out.push_str(&piece(|w| man.render_extra_section(w), false)?);
    }
    let subcommands: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .collect();
    if !subcommands.is_empty() {
        out.push_str(".SH COMMANDS\n");
        let globals: Vec<String> = command
            .get_arguments()
            .filter(|arg| arg.is_global_set() && !arg.is_hide_set())
            .filter_map(|arg| arg.get_long())
            .map(|long| format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-")))
            .collect();
        out.push_str(&format!(
            "Every command also takes the global options above ({}).\n",
            globals.join(", ")
        ));
        for sub in subcommands {
            out.push_str(&subcommand(sub)?);
            // A command with commands of its own (`credential encrypt`):
            // each gets its subsection too, titled with its full name.
            let parent = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
            for nested in sub
                .get_subcommands()
                .filter(|nested| !nested.is_hide_set() && nested.get_name() != "help")
            {
                let full = format!("{parent} {}", nested.get_name());
                out.push_str(&subcommand(&nested.clone().bin_name(full))?);
            }
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
    let epilogue = sub.get_after_long_help().is_some() || sub.get_after_help().is_some();
    let man = clap_mangen::Man::new(sub);
    let mut out = format!(".SS \"{title}\"\n");
    out.push_str(&piece(|w| man.render_synopsis_section(w), false)?);
    out.push_str(".PP\n");
    out.push_str(&piece(|w| man.render_description_section(w), false)?);
    out.push_str(&piece(|w| man.render_options_section(w), false)?);
    if epilogue {
        // The command's --help epilogue: its --json fields.
        out.push_str(".PP\n");
        out.push_str(&piece(|w| man.render_extra_section(w), false)?);
    }
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

/// The pages' date, YYYY-MM-DD (UTC): that of `source_date_epoch` (the
/// value of `SOURCE_DATE_EPOCH`, Unix seconds, for reproducible builds;
/// `make deb` sets it from the Debian changelog) when given, else of
/// `now_secs`. A malformed value is refused rather than silently replaced
/// by today.
pub fn build_date(source_date_epoch: Option<&str>, now_secs: i64) -> Result<String, XtaskError> {
    // Unix time has no leap seconds: the UTC calendar time is the epoch's
    // plus the seconds.
    const EPOCH: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);
    let secs = match source_date_epoch {
        None => Some(now_secs),
        Some(value) => value
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|secs| i64::try_from(secs).ok()),
    };
    let when = secs
        .and_then(|secs| {
            EPOCH
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .ok()
        })
        .ok_or_else(|| XtaskError::SourceDateEpoch(source_date_epoch.unwrap_or("").to_string()))?;
    jiff::fmt::strtime::format("%Y-%m-%d", when).map_err(XtaskError::Date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_cli() -> clap::Command {
        clap::Command::new("hostkms")
            .version("1.2.3")
            .about("A test CLI")
            .arg(clap::Arg::new("socket").long("socket").global(true))
            .subcommand(
                clap::Command::new("wrap").about("Encrypt data").arg(
                    clap::Arg::new("binary")
                        .long("binary")
                        .action(clap::ArgAction::SetTrue),
                ),
            )
    }

    fn text(page: &Page, command: clap::Command) -> String {
        String::from_utf8(render(page, command, "2026-11-28").expect("render")).expect("UTF-8")
    }

    #[test]
    fn man_page_has_commands_options_and_hand_written_sections() {
        let page = text(&HOSTKMS, test_cli());
        assert!(page.contains("\n.TH HOSTKMS 1 \"2026-11-28\""), "{page}");
        assert!(page.contains("hostkms \\- manage the keys"), "{page}");
        assert!(page.contains("hostkms 1.2.3"), "{page}");
        assert!(page.contains(".SH COMMANDS"), "{page}");
        assert!(page.contains(".SS \"hostkms wrap\""), "{page}");
        assert!(page.contains("binary"), "{page}");
        assert!(page.contains(".SH EXIT STATUS"), "{page}");
        assert_eq!(page.matches(PREAMBLE[0]).count(), 1, "{page}");
        assert!(
            page.contains("global options above (\\fB\\-\\-socket\\fR).\n"),
            "{page}"
        );
        let wrap = page.split(".SS \"hostkms wrap\"").nth(1).unwrap();
        assert!(!wrap.contains(".SH SYNOPSIS"), "{wrap}");
        let wrap = wrap.split(".SH EXIT").next().unwrap();
        assert!(
            !wrap.contains("socket"),
            "globals are described once: {wrap}"
        );
    }

    #[test]
    fn the_real_pages_document_every_command_and_their_files() {
        let cli = text(&HOSTKMS, hostkms_cli::command());
        let commands = hostkms_cli::command();
        for sub in commands
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
        {
            let title = format!(".SS \"hostkms {}\"", sub.get_name().replace('-', "\\-"));
            assert!(cli.contains(&title), "no {title} in hostkms.1");
            for nested in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                let title = format!(
                    ".SS \"hostkms {} {}\"",
                    sub.get_name().replace('-', "\\-"),
                    nested.get_name().replace('-', "\\-")
                );
                assert!(cli.contains(&title), "no {title} in hostkms.1");
            }
        }
        assert!(
            cli.ends_with(
                "\\fBhostkmsd\\fR(8), \\fBage\\-plugin\\-hostkms\\fR(1), \\fBage\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)\n"
            )
        );
        // Every global option of the real CLI is named once, in words.
        assert!(
            cli.contains(
                "global options above (\\fB\\-\\-socket\\fR, \\fB\\-\\-json\\fR, \\fB\\-\\-max\\-frame\\fR).\n"
            ),
            "{cli}"
        );
        let daemon = text(&HOSTKMSD, hostkms::cli_args::command());
        assert!(daemon.starts_with(&format!(
            "{}\n{}\n.TH HOSTKMSD 8 ",
            PREAMBLE[0], PREAMBLE[1]
        )));
        assert!(daemon.contains(".SH DESCRIPTION\n\\fBhostkmsd\\fR seals a root key"));
        assert!(daemon.contains("\\-\\-state\\-dir"), "{daemon}");
        assert!(daemon.contains(".SH SIGNALS") && daemon.contains(".I /var/lib/hostkms"));
        // The daemon's offline tasks are its commands.
        assert!(daemon.contains(".SH COMMANDS"), "{daemon}");
        assert!(
            daemon.contains(".SS \"hostkmsd accept\\-rollback\""),
            "{daemon}"
        );
        // The offline tasks (restore, ...) are documented like the CLI's commands.
        for sub in hostkms::cli_args::command()
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
        {
            let title = format!(".SS \"hostkmsd {}\"", sub.get_name().replace('-', "\\-"));
            assert!(
                daemon.contains(&title),
                "no {title} in hostkmsd.8: {daemon}"
            );
        }
        assert_eq!(HOSTKMSD.file_name(), "hostkmsd.8");
        // groff (and so `make deb`) refuses characters outside ASCII, such
        // as an ellipsis in a help text: caught here, in `make check`.
        for (name, page) in [("hostkms.1", &cli), ("hostkmsd.8", &daemon)] {
            let odd: Vec<(usize, &str)> = page
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.is_ascii())
                .collect();
            assert!(odd.is_empty(), "{name} has non-ASCII lines: {odd:?}");
        }
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let now = 86_400 * 59;
        assert_eq!(build_date(None, now).unwrap(), "1970-03-01");
        assert_eq!(build_date(Some("0"), now).unwrap(), "1970-01-01");
        // The leap day of a year divisible by 400, just before midnight.
        assert_eq!(build_date(Some("951868799"), now).unwrap(), "2000-02-29");
        // 2026-11-28, the date of the first Debian changelog entry.
        assert_eq!(build_date(Some("1795896000\n"), now).unwrap(), "2026-11-28");
        assert_eq!(build_date(Some("253402300799"), now).unwrap(), "9999-12-31");
    }

    #[test]
    fn a_malformed_source_date_epoch_is_refused() {
        for bad in [
            "",
            "yesterday",
            "-1",
            "1e9",
            "253402300800",
            "99999999999999999999",
        ] {
            let err = build_date(Some(bad), 0).expect_err(bad);
            assert!(err.to_string().contains("SOURCE_DATE_EPOCH"), "{err}");
        }
    }
}
