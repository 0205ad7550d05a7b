//! Reader for pacman's local database (`DBPath/local/NAME-VERSION/desc`), without libalpm.
//!
//! Entries are read in parallel (one scoped thread per core): on a 2,000-package database the
//! cost is almost all `open`/`read` system calls, and those scale with cores.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::desc::{Desc, DescError};
use crate::names::{Arch, PkgName, PkgVersion};

/// The local database format this reader understands (`local/ALPM_DB_VERSION`).
pub const SUPPORTED_DB_VERSION: u32 = 9;

/// Why a package was installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Explicit,
    Dependency,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Explicit => "explicit",
            Reason::Dependency => "dependency",
        }
    }
}

/// One installed package as recorded in its `desc` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPackage {
    pub name: PkgName,
    pub version: PkgVersion,
    pub arch: Arch,
    pub reason: Reason,
    pub install_date: Option<u64>,
    pub size: Option<u64>,
    pub validation: Vec<String>,
    pub depends: Vec<String>,
    pub provides: Vec<String>,
    pub conflicts: Vec<String>,
    pub replaces: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalDbError {
    #[error(
        "no local pacman database at {0}: check the dbpath setting (pacman's DBPath, usually /var/lib/pacman)"
    )]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} says database version {found:?}, this build reads version {SUPPORTED_DB_VERSION}: upgrade pacpool or run `pacman-db-upgrade`"
    )]
    UnsupportedVersion { path: PathBuf, found: String },
    #[error("corrupt package entry {path}: {source}")]
    Entry {
        path: PathBuf,
        #[source]
        source: DescError,
    },
    #[error(
        "corrupt package entry {path}: the directory name does not match %NAME%-%VERSION% ({expected})"
    )]
    NameMismatch { path: PathBuf, expected: String },
    #[error("corrupt package entry {path}: %REASON% is {found:?}, expected 0 or 1")]
    BadReason { path: PathBuf, found: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalDbError + '_ {
    move |source| LocalDbError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads every package of the local database under `dbpath`, sorted by name.
pub fn read_local_db(dbpath: &Path) -> Result<Vec<LocalPackage>, LocalDbError> {
    let dirs = list_entries(dbpath)?;
    // Entries are opened relative to `local/`, so the kernel resolves two path components
    // per file instead of the whole absolute path.
    let local_path = dbpath.join("local");
    let local = File::open(&local_path).map_err(io_err(&local_path))?;
    let local = &local;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8);
    let chunk = dirs.len().div_ceil(threads).max(64);
    let mut packages = Vec::with_capacity(dirs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    part.iter()
                        .map(|dir| read_entry(local, dir, &mut buf))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        for h in handles {
            packages.extend(h.join().expect("local db reader thread panicked")?);
        }
        Ok::<_, LocalDbError>(())
    })?;
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

/// Lists the package directories of `dbpath/local`, after checking `ALPM_DB_VERSION`.
fn list_entries(dbpath: &Path) -> Result<Vec<PathBuf>, LocalDbError> {
    let local = dbpath.join("local");
    let rd = match std::fs::read_dir(&local) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LocalDbError::Missing(local));
        }
        Err(e) => return Err(io_err(&local)(e)),
    };
    let mut dirs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(&local))?;
        if entry.file_type().map_err(io_err(&entry.path()))?.is_dir() {
            dirs.push(entry.path());
        }
    }
    let version_file = local.join("ALPM_DB_VERSION");
    match std::fs::read_to_string(&version_file) {
        Ok(v) if v.trim() == SUPPORTED_DB_VERSION.to_string() => {}
        Ok(v) => {
            return Err(LocalDbError::UnsupportedVersion {
                path: version_file,
                found: v.trim().chars().take(20).collect(),
            });
        }
        // pacman writes the file on its first transaction; an empty database may lack it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dirs.is_empty() => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LocalDbError::UnsupportedVersion {
                path: version_file,
                found: "(missing)".into(),
            });
        }
        Err(e) => return Err(io_err(&version_file)(e)),
    }
    Ok(dirs)
}

/// Reads a whole small file into `buf` (grown as needed) and returns its length.
///
/// `desc` files are about 1 KiB, so one `read` usually gets everything: open, read, close,
/// where `std::fs::read` adds a `statx` and a second `read`. A short read from a regular file
/// means end of file.
fn read_small_file(dir: &File, relative: &Path, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use rustix::fs::{Mode, OFlags, openat};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
    let mut f = File::from(openat(dir, relative, flags, Mode::empty())?);
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize((buf.len() * 2).max(4096), 0);
        }
        let n = f.read(&mut buf[len..])?;
        len += n;
        if n == 0 || len < buf.len() {
            return Ok(len);
        }
    }
}

fn read_entry(local: &File, dir: &Path, buf: &mut Vec<u8>) -> Result<LocalPackage, LocalDbError> {
    let path = dir.join("desc");
    let relative = Path::new(dir.file_name().unwrap_or_default()).join("desc");
    let len = read_small_file(local, &relative, buf).map_err(io_err(&path))?;
    let entry_err = |source| LocalDbError::Entry {
        path: path.clone(),
        source,
    };
    let desc = Desc::parse_bytes(&buf[..len]).map_err(entry_err)?;
    let name = desc.name().map_err(entry_err)?;
    let version = desc.version().map_err(entry_err)?;
    let expected = format!("{name}-{version}");
    if dir.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(LocalDbError::NameMismatch { path, expected });
    }
    let reason = match desc.first("REASON") {
        None | Some("0") => Reason::Explicit,
        Some("1") => Reason::Dependency,
        Some(other) => {
            return Err(LocalDbError::BadReason {
                found: other.chars().take(20).collect(),
                path,
            });
        }
    };
    Ok(LocalPackage {
        arch: desc.arch().map_err(entry_err)?,
        install_date: desc.number("INSTALLDATE").map_err(entry_err)?,
        size: desc.number("SIZE").map_err(entry_err)?,
        validation: desc.strings("VALIDATION"),
        depends: desc.strings("DEPENDS"),
        provides: desc.strings("PROVIDES"),
        conflicts: desc.strings("CONFLICTS"),
        replaces: desc.strings("REPLACES"),
        groups: desc.strings("GROUPS"),
        name,
        version,
        reason,
    })
}

/// A cheap summary of the database's on-disk state, for "has anything changed?" checks.
///
/// Every pacman write (a transaction, `-D --asdeps`, `-Sy`) creates and removes `DBPath/db.lck`,
/// which moves `DBPath`'s modification time; installs, upgrades and removals also rename
/// directories in `local/`. Two `stat` calls therefore tell whether a re-read is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dbpath_mtime: Option<SystemTime>,
    local_mtime: Option<SystemTime>,
}

impl Fingerprint {
    pub fn of(dbpath: &Path) -> Result<Self, LocalDbError> {
        let mtime = |p: &Path| -> Result<Option<SystemTime>, LocalDbError> {
            match std::fs::metadata(p) {
                Ok(m) => Ok(Some(m.modified().map_err(io_err(p))?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(p)(e)),
            }
        };
        Ok(Self {
            dbpath_mtime: mtime(dbpath)?,
            local_mtime: mtime(&dbpath.join("local"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_entry(db: &Path, dir: &str, desc: &str) {
        let d = db.join("local").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("desc"), desc).unwrap();
    }

    fn db_with_version() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("local")).unwrap();
        std::fs::write(t.path().join("local/ALPM_DB_VERSION"), "9\n").unwrap();
        t
    }

    #[test]
    fn reads_fields_and_ignores_unknown_keys() {
        let t = db_with_version();
        write_entry(
            t.path(),
            "foo-1:2.0-3",
            "%NAME%\nfoo\n\n%VERSION%\n1:2.0-3\n\n%ARCH%\nx86_64\n\n%INSTALLDATE%\n1700000000\n\n\
             %SIZE%\n42\n\n%REASON%\n1\n\n%VALIDATION%\nsha256\npgp\n\n%DEPENDS%\nbar>=1\n\n\
             %PROVIDES%\nlibfoo.so=1-64\n\n%CONFLICTS%\nfoo-git\n\n%REPLACES%\noldfoo\n\n\
             %GROUPS%\nbase-devel\n\n%XDATA%\npkgtype=pkg\n\n%FUTUREKEY%\nwhatever\n\n",
        );
        write_entry(
            t.path(),
            "bar-1.0-1",
            "%NAME%\nbar\n\n%VERSION%\n1.0-1\n\n%ARCH%\nany\n\n",
        );
        let pkgs = read_local_db(t.path()).unwrap();
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[0].name.as_str(), "bar");
        assert_eq!(pkgs[0].reason, Reason::Explicit);
        let foo = &pkgs[1];
        assert_eq!(foo.version.as_str(), "1:2.0-3");
        assert_eq!(foo.reason, Reason::Dependency);
        assert_eq!(foo.install_date, Some(1_700_000_000));
        assert_eq!(foo.size, Some(42));
        assert_eq!(foo.validation, ["sha256", "pgp"]);
        assert_eq!(foo.depends, ["bar>=1"]);
        assert_eq!(foo.provides, ["libfoo.so=1-64"]);
        assert_eq!(foo.conflicts, ["foo-git"]);
        assert_eq!(foo.replaces, ["oldfoo"]);
        assert_eq!(foo.groups, ["base-devel"]);
    }

    #[test]
    fn corrupt_entries_name_the_file() {
        let cases = [
            (
                "foo-1.0-1",
                "%VERSION%\n1.0-1\n\n%ARCH%\nany\n",
                "missing %NAME%",
            ),
            ("foo-1.0-1", "garbage\n", "outside any"),
            (
                "foo-1.0-1",
                "%NAME%\nfoo\n\n%VERSION%\n1.0-2\n\n%ARCH%\nany\n",
                "does not match",
            ),
            (
                "foo-1.0-1",
                "%NAME%\nfoo\n\n%VERSION%\n1.0-1\n\n%ARCH%\nany\n\n%REASON%\n7\n",
                "REASON",
            ),
            (
                "-Syu-1.0-1",
                "%NAME%\n-Syu\n\n%VERSION%\n1.0-1\n\n%ARCH%\nany\n",
                "package name",
            ),
        ];
        for (dir, desc, needle) in cases {
            let t = db_with_version();
            write_entry(t.path(), dir, desc);
            let err = read_local_db(t.path()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(dir), "{msg} names the entry");
            let full = format!(
                "{msg}: {}",
                std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(full.contains(needle), "{full} mentions {needle}");
        }
        // A directory without desc (a partial entry).
        let t = db_with_version();
        std::fs::create_dir_all(t.path().join("local/foo-1.0-1")).unwrap();
        assert!(
            read_local_db(t.path())
                .unwrap_err()
                .to_string()
                .contains("foo-1.0-1/desc")
        );
    }

    #[test]
    fn db_version_is_checked() {
        let t = db_with_version();
        std::fs::write(t.path().join("local/ALPM_DB_VERSION"), "8\n").unwrap();
        assert!(matches!(
            read_local_db(t.path()),
            Err(LocalDbError::UnsupportedVersion { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_local_db(empty.path()),
            Err(LocalDbError::Missing(_))
        ));
        std::fs::create_dir(empty.path().join("local")).unwrap();
        assert!(read_local_db(empty.path()).unwrap().is_empty());
    }
}
