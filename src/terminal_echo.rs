//! When hostkmsd runs by hand in a terminal and its log goes to journald
//! (its socket is there), the operator would see nothing of why it did not
//! start. This echoes its warnings and errors (not audit events, not
//! informational lines) to the terminal as well, as `hostkmsd: error: ...`.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// Whether the echo is wanted: the log goes to the journal (`to_journal`)
/// and standard error is a terminal (a person is watching it; under
/// systemd it is the journal or /dev/null). hostkmsd asks this too, so it
/// does not print a fatal error a second time.
pub fn wanted(to_journal: bool) -> bool {
    to_journal && std::io::stderr().is_terminal()
}

/// The layer that writes warnings and errors of ordinary lines (those
/// `ordinary` lets through: no audit events, no alerts) to standard error.
pub fn layer<S>(
    ordinary: FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + Send + Sync + 'static>,
) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt;
    tracing_subscriber::fmt::layer()
        .event_format(Echo)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_filter(ordinary.and(LevelFilter::WARN).and(not_the_tpm_library()))
}

/// Everything but the TPM library's own lines: its expected misses look
/// like errors, and the daemon reports real TPM failures itself, in words
/// (the log's filter turns them off the same way).
fn not_the_tpm_library() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    FilterFn::new(|meta: &tracing::Metadata<'_>| !meta.target().starts_with("tss_esapi"))
}

/// `hostkmsd: error: MESSAGE field=value ...`, one line per event.
struct Echo;

impl<S, N> FormatEvent<S, N> for Echo
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            _ => "note",
        };
        write!(writer, "hostkmsd: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
