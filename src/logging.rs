//! Log output for every program: tracing events on standard error (the coordinator: standard
//! output), coloured only on a terminal. Under systemd (standard error is the journal stream
//! named by `JOURNAL_STREAM`) each line starts with its syslog priority (`<3>` for errors,
//! `<4>` warnings, `<6>` info, `<7>` debug), which journald stores as the entry's `PRIORITY`
//! field, and carries no timestamp and no colour (journald adds its own).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How lines are written, from what the stream is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Terminal,
    Journal,
    Plain,
}

/// Installs the global subscriber. `env_var` holds the filter (`PACPOOL_LOG=debug`); without
/// it, `default` (`info`).
pub fn init(env_var: &str, default: &str, stream: Stream) {
    let filter = EnvFilter::try_from_env(env_var).unwrap_or_else(|_| default.into());
    let style = style(stream);
    match stream {
        Stream::Stdout => install(filter, style, std::io::stdout),
        Stream::Stderr => install(filter, style, std::io::stderr),
    }
}

fn install<W>(filter: EnvFilter, style: Style, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(style == Style::Terminal);
    match style {
        Style::Journal => builder
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .init(),
        Style::Terminal | Style::Plain => builder.init(),
    }
}

fn style(stream: Stream) -> Style {
    let (terminal, meta) = match stream {
        Stream::Stdout => (std::io::stdout().is_terminal(), fd_meta(1)),
        Stream::Stderr => (std::io::stderr().is_terminal(), fd_meta(2)),
    };
    let journal = std::env::var("JOURNAL_STREAM")
        .ok()
        .zip(meta)
        .is_some_and(|(v, (dev, ino))| is_journal_stream(&v, dev, ino));
    if journal {
        Style::Journal
    } else if terminal {
        Style::Terminal
    } else {
        Style::Plain
    }
}

/// The (device, inode) of an open descriptor.
fn fd_meta(fd: i32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd for a unit whose output goes to
/// the journal) names this stream; a child that inherited the variable but writes elsewhere
/// does not match.
fn is_journal_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Starts each line with `<N>`, the syslog priority of its level (sd-daemon(3)).
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_this_stream() {
        assert!(is_journal_stream("8:1234", 8, 1234));
        assert!(!is_journal_stream("8:1234", 8, 99));
        assert!(!is_journal_stream("junk", 8, 1234));
    }
}
