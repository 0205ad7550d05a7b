//! Text shared by the programs' output: error chains on one line, UTC timestamps, text from
//! elsewhere made safe for a terminal, and writing to standard output and error that ends
//! quietly when the reader has gone (`pacpool status | head -1`).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Text from elsewhere (the coordinator, a package database) made safe for a terminal or a
/// log: control characters (escape sequences, line breaks) are shown escaped (`\u{1b}`).
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Writes to standard output (see [`outln!`](crate::outln)). Once the reader has gone
/// (`EPIPE`: `pacpool status | head -1`), the rest of the output is dropped without a
/// word, and the program ends as it would have, with its own exit code; `println!` would
/// panic instead.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    write_to(&mut std::io::stdout().lock(), &STDOUT_GONE, args);
}

/// [`write_stdout`] for standard error.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    write_to(&mut std::io::stderr().lock(), &STDERR_GONE, args);
}

fn write_to(w: &mut impl Write, gone: &AtomicBool, args: std::fmt::Arguments<'_>) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    // Any other error (a full disk behind a redirect) has nowhere to be reported either.
    if w.write_fmt(args).and_then(|()| w.flush()).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// `println!` that ends quietly when standard output's reader has gone.
#[macro_export]
macro_rules! outln {
    () => { $crate::display::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::display::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends quietly when standard output's reader has gone.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::display::write_stdout(format_args!($($arg)*)) };
}

/// `eprintln!` that ends quietly when standard error's reader has gone.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::display::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that ends quietly when standard error's reader has gone.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::display::write_stderr(format_args!($($arg)*)) };
}

/// The error and its causes on one line. Library errors already name their cause in their
/// message, so a cause whose text is already there is not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    joined(e.chain().map(ToString::to_string))
}

/// [`error_line`] for a plain `std::error::Error` and its `source()` chain.
pub fn std_error_line(e: &(dyn std::error::Error + 'static)) -> String {
    joined(std::iter::successors(Some(e), |c| c.source()).map(ToString::to_string))
}

fn joined(causes: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for msg in causes {
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from Unix seconds (Howard Hinnant's civil_from_days,
/// proleptic Gregorian).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_305_600 + 3_661), "2026-11-22 01:01:01");
        assert_eq!(utc(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn clean_escapes_control_characters() {
        assert_eq!(clean("lab"), "lab");
        assert_eq!(clean("a\u{1b}]0;x\u{7}b\nc"), "a\\u{1b}]0;x\\u{7}b\\nc");
    }

    #[test]
    fn error_line_skips_repeated_causes() {
        let inner = std::io::Error::other("disk full");
        let e = anyhow::Error::new(inner).context("cannot write x: disk full");
        assert_eq!(error_line(&e), "cannot write x: disk full");
        let e = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(error_line(&e), "outer: root cause");
    }
}
