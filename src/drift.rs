//! Drift attribution: where a change of this machine's package state came from. pacman writes
//! `[TIME] [PACMAN] Running 'COMMAND'` to its log before each transaction it runs as root;
//! the lines the log gained since the previous recorded state name who changed it when no
//! pacpool operation did ([`pacman_runs`]).
//!
//! The daemon keeps the log's length at its last read ([`read_since`]) and attributes each new
//! state: to the running pacpool operation while one applies, else to the pacman runs the log
//! gained, else [`ChangeSource::Unknown`].

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::proto::{ChangeSource, MAX_PACMAN_COMMAND, MAX_PACMAN_RUNS, PacmanRun};

/// The most of the log read at once; a longer stretch is read from its end (older runs are
/// counted out of [`ChangeSource::Pacman`] anyway).
pub const MAX_LOG_READ: u64 = 4 << 20;

/// The text `log` gained after byte `offset`, and its length now. A log shorter than `offset`
/// was rotated or truncated: it is read from its start. At most [`MAX_LOG_READ`] bytes, from
/// a line start. A missing log reads as empty.
pub fn read_since(log: &Path, offset: u64) -> std::io::Result<(String, u64)> {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = if offset > len { 0 } else { offset };
    let from = start.max(len.saturating_sub(MAX_LOG_READ));
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.take(len - from).read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if from > start {
        // Cut in the middle of a line: start at the next one.
        let next = text.find('\n').map_or(text.len(), |i| i + 1);
        text.drain(..next);
    }
    Ok((text, len))
}

/// The pacman runs in `log` (a stretch of pacman.log) that changed packages: those followed by
/// an `[ALPM] installed|upgraded|downgraded|reinstalled|removed` line before the next run.
/// When none did (an install reason changed with `pacman -D`, which logs nothing else), every
/// run. `None` when the stretch has no run at all.
pub fn pacman_runs(log: &str) -> Option<ChangeSource> {
    let mut runs: Vec<(PacmanRun, bool)> = Vec::new();
    for line in log.lines() {
        let Some((at, rest)) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .filter(|(at, _)| at.len() <= 40)
        else {
            continue;
        };
        if let Some(cmd) = rest.strip_prefix("[PACMAN] Running ") {
            let cmd = cmd
                .strip_prefix('\'')
                .and_then(|c| c.strip_suffix('\''))
                .unwrap_or(cmd);
            runs.push((
                PacmanRun {
                    at: crate::display::clean(at),
                    command: bounded(cmd),
                },
                false,
            ));
        } else if let Some(what) = rest.strip_prefix("[ALPM] ")
            && [
                "installed ",
                "upgraded ",
                "downgraded ",
                "reinstalled ",
                "removed ",
            ]
            .iter()
            .any(|p| what.starts_with(p))
            && let Some(last) = runs.last_mut()
        {
            last.1 = true;
        }
    }
    if runs.is_empty() {
        return None;
    }
    let changing = runs.iter().any(|(_, changed)| *changed);
    let mut kept: Vec<PacmanRun> = runs
        .into_iter()
        .filter(|(_, changed)| *changed || !changing)
        .map(|(r, _)| r)
        .collect();
    let more = kept.len().saturating_sub(MAX_PACMAN_RUNS);
    kept.drain(..more);
    Some(ChangeSource::Pacman { runs: kept, more })
}

fn bounded(cmd: &str) -> String {
    let mut end = cmd.len().min(MAX_PACMAN_COMMAND);
    while !cmd.is_char_boundary(end) {
        end -= 1;
    }
    crate::display::clean(&cmd[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[2026-12-05T03:00:00+0000] [PACMAN] Running 'pacman -Sy'
[2026-12-05T03:00:01+0000] [PACMAN] synchronizing package lists
[2026-12-05T03:01:00+0000] [PACMAN] Running 'pacman -S foo'
[2026-12-05T03:01:00+0000] [ALPM] transaction started
[2026-12-05T03:01:00+0000] [ALPM] installed foo (1.0-1)
[2026-12-05T03:01:00+0000] [ALPM] transaction completed
";

    fn runs(src: Option<ChangeSource>) -> Vec<String> {
        match src {
            Some(ChangeSource::Pacman { runs, .. }) => runs
                .into_iter()
                .map(|r| format!("{} {}", r.at, r.command))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_that_changed_packages() {
        assert_eq!(
            runs(pacman_runs(LOG)),
            ["2026-12-05T03:01:00+0000 pacman -S foo"]
        );
        // pacman -D logs only its command line: then every run is named.
        let d = "[2026-12-05T03:02:00+0000] [PACMAN] Running 'pacman -D --asdeps foo'\n";
        assert_eq!(
            runs(pacman_runs(d)),
            ["2026-12-05T03:02:00+0000 pacman -D --asdeps foo"]
        );
        assert_eq!(pacman_runs("[x] [ALPM] installed foo (1)\nnoise\n"), None);
        // Hostile bytes are escaped, long runs bounded and counted.
        let many: String = (0..20)
            .map(|i| {
                format!(
                    "[t{i}] [PACMAN] Running 'pacman -S x\u{1b}[2J'\n[t{i}] [ALPM] removed x (1)\n"
                )
            })
            .collect();
        match pacman_runs(&many) {
            Some(ChangeSource::Pacman { runs, more }) => {
                assert_eq!((runs.len(), more), (MAX_PACMAN_RUNS, 20 - MAX_PACMAN_RUNS));
                assert_eq!(runs.last().unwrap().at, "t19");
                assert!(!runs[0].command.contains('\u{1b}'), "{:?}", runs[0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_what_the_log_gained() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("pacman.log");
        assert_eq!(read_since(&log, 7).unwrap(), (String::new(), 0));
        std::fs::write(&log, "one\n").unwrap();
        let (text, len) = read_since(&log, 0).unwrap();
        assert_eq!((text.as_str(), len), ("one\n", 4));
        std::fs::write(&log, "one\ntwo\n").unwrap();
        assert_eq!(read_since(&log, len).unwrap().0, "two\n");
        // Rotated: shorter than the offset, read from the start.
        std::fs::write(&log, "x\n").unwrap();
        assert_eq!(read_since(&log, 8).unwrap(), ("x\n".to_string(), 2));
    }

    #[test]
    fn sources_read_and_display() {
        let s = ChangeSource::Pacpool {
            operation: "sync".into(),
            local_id: Some(4),
            requested: Some(12),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"by":"pacpool","operation":"sync","local_id":4,"requested":12}"#
        );
        assert_eq!(
            s.to_string(),
            "pacpool sync (operation 4, coordinator operation 12)"
        );
        assert_eq!(
            runs(pacman_runs(LOG)).len(),
            1,
            "{}",
            pacman_runs(LOG).unwrap()
        );
        assert_eq!(
            pacman_runs(LOG).unwrap().to_string(),
            "pacman: 'pacman -S foo' at 2026-12-05T03:01:00+0000"
        );
        // A kind this version does not know reads as unknown.
        let future: ChangeSource = serde_json::from_str(r#"{"by":"ansible","play":"x"}"#).unwrap();
        assert_eq!(future, ChangeSource::Unknown);
    }
}
