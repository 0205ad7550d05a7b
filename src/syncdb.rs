//! Reader for pacman's sync databases (`DBPath/sync/<repo>.db`): what each configured
//! repository offers.
//!
//! A sync database is a tar archive, compressed with gzip or zstd or not at all (told apart
//! by magic bytes, never by file name), holding one `<name>-<version>/desc` entry per package
//! in the `%KEY%` format of [`crate::desc`], as `repo-add` writes it. `.files` databases also
//! hold `<name>-<version>/files` entries; everything that is not a `desc` is skipped.
//!
//! The archive is read as a stream: one pass through the decompressor, one reused buffer for
//! the current `desc`. A real `extra.db` has about 15,000 entries.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::desc::{Desc, DescError};
use crate::names::{Arch, PkgName, PkgVersion, RepoName};

/// Largest `desc` entry accepted. Real ones are a few KiB; this only guards memory against a
/// hostile archive claiming a multi-gigabyte entry.
pub const MAX_DESC_SIZE: u64 = 8 * 1024 * 1024;

/// Most bytes a sync database may have uncompressed (Arch's `extra` is about 60 MB).
pub const MAX_DB_BYTES: u64 = 1 << 30;

/// Most packages a sync database may list (Arch's `extra` lists about 14,000).
pub const MAX_DB_PACKAGES: usize = 500_000;

/// How much decompressed data after the tar end-of-archive marker is read (to let the
/// decompressor verify its checksum) before giving up on reaching the end.
const MAX_TRAILING: u64 = 1024 * 1024;

const READ_BUFFER: usize = 64 * 1024;

/// One package a repository offers, from its `desc` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPackage {
    pub repo: RepoName,
    pub name: PkgName,
    pub version: PkgVersion,
    pub arch: Arch,
    /// `%FILENAME%`: a bare file name (`A-Z a-z 0-9 @ . _ + ~ : -`, not starting with `.` or
    /// `-`) ending in `.pkg.tar` or `.pkg.tar.EXT`.
    pub filename: String,
    /// `%SHA256SUM%`, 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// `%CSIZE%`, the size of the package file.
    pub csize: Option<u64>,
    /// `%ISIZE%`, the installed size of the package (what pacman checks free space against).
    #[serde(default)]
    pub isize: Option<u64>,
    /// `%PGPSIG%`, the package's detached signature in base64, when the database carries
    /// it (Arch's databases do not; pacman then keeps `FILE.sig` in the cache). A value that
    /// is not base64 of at most [`crate::manifest::MAX_SIGNATURE_BYTES`] bytes is dropped.
    pub pgpsig: Option<String>,
    pub depends: Vec<String>,
    pub provides: Vec<String>,
    pub conflicts: Vec<String>,
    pub replaces: Vec<String>,
}

/// A repository's sync database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDb {
    pub repo: RepoName,
    pub path: PathBuf,
    /// Sorted by name; names are unique.
    pub packages: Vec<SyncPackage>,
}

impl SyncDb {
    /// The package called `name`, if the repository offers it.
    pub fn get(&self, name: &str) -> Option<&SyncPackage> {
        self.packages
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.packages[i])
    }
}

const REFRESH_HINT: &str =
    "refresh the databases with `pacman -Syu` (`pacman -Syyu` forces a fresh download)";

#[derive(Debug, thiserror::Error)]
pub enum SyncDbError {
    #[error(
        "no sync database at {path}: the repository has not been downloaded yet; {REFRESH_HINT}, or remove the repository from pacman.conf"
    )]
    Missing { path: PathBuf },
    #[error("cannot read sync database {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "sync database {path} is compressed with {format}, which pacpool cannot read (it reads gzip, zstd and uncompressed databases): rebuild the repository with `repo-add` using a .db.tar.gz or .db.tar.zst name"
    )]
    UnsupportedCompression { path: PathBuf, format: &'static str },
    #[error("sync database {path} is corrupt or not a database: {source}; {REFRESH_HINT}")]
    Archive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "sync database {path} is truncated: the archive ends without its end-of-archive marker; {REFRESH_HINT}"
    )]
    Truncated { path: PathBuf },
    #[error("sync database {path}: corrupt entry {entry}: {source}; {REFRESH_HINT}")]
    Entry {
        path: PathBuf,
        /// The entry's name inside the archive, quoted and shortened.
        entry: String,
        #[source]
        source: Box<DescError>,
    },
    #[error("sync database {path}: corrupt entry {entry}: {why}; {REFRESH_HINT}")]
    BadEntry {
        path: PathBuf,
        entry: String,
        why: String,
    },
    #[error(
        "sync database {path} lists {name} twice ({first} and {second}); pacman would use only one: {REFRESH_HINT}, or ask the repository's maintainer to fix it"
    )]
    Duplicate {
        path: PathBuf,
        name: PkgName,
        first: PkgVersion,
        second: PkgVersion,
    },
}

/// Quotes an untrusted string for a message: shortened, control characters escaped.
fn shown(s: &str) -> String {
    let mut short: String = s.chars().take(80).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// The path of `repo`'s sync database under `dbpath`.
pub fn sync_db_path(dbpath: &Path, repo: &RepoName) -> PathBuf {
    dbpath.join("sync").join(format!("{repo}.db"))
}

/// Reads `DBPath/sync/<repo>.db` for each repository, in the order given, keeping each
/// repository's own result: a missing or broken database does not hide the others.
/// Databases are read in parallel (at most one thread per core).
pub fn read_sync_dbs(
    dbpath: &Path,
    repos: &[RepoName],
) -> Vec<(RepoName, Result<SyncDb, SyncDbError>)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, repos.len().max(1));
    let results: Mutex<Vec<Option<Result<SyncDb, SyncDbError>>>> =
        Mutex::new(repos.iter().map(|_| None).collect());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(repo) = repos.get(i) else { break };
                    let result = read_sync_db(repo, &sync_db_path(dbpath, repo));
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    repos
        .iter()
        .cloned()
        .zip(results)
        .map(|(repo, r)| {
            let r = r.expect("every repository index is taken by exactly one worker");
            (repo, r)
        })
        .collect()
}

/// Reads one sync database file. `repo` is recorded in each package.
pub fn read_sync_db(repo: &RepoName, path: &Path) -> Result<SyncDb, SyncDbError> {
    let io_err = |source| SyncDbError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SyncDbError::Missing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(e)),
    };
    read_sync_db_from(repo, path, BufReader::with_capacity(READ_BUFFER, file))
}

/// Reads a sync database from `input` (any reader; `path` only names it in messages and in
/// the result). [`read_sync_db`] is this over the opened file.
pub fn read_sync_db_from<'a>(
    repo: &RepoName,
    path: &Path,
    mut input: impl BufRead + 'a,
) -> Result<SyncDb, SyncDbError> {
    let io_err = |source| SyncDbError::Io {
        path: path.to_owned(),
        source,
    };
    // For a regular file one read fills the buffer, so this sees the first bytes.
    let head = input.fill_buf().map_err(io_err)?;
    let stream: Box<dyn Read + 'a> = match detect_compression(head) {
        Compression::Gzip => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            flate2::bufread::MultiGzDecoder::new(input),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            ZstdReader::new(input),
        )),
        Compression::None if !head.is_empty() && !is_tar_header(head) => {
            let start: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(SyncDbError::Archive {
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "not a gzip, zstd or tar file (it starts with bytes {})",
                        start.join(" ")
                    ),
                ),
            });
        }
        Compression::None => Box::new(input),
        Compression::Unsupported(format) => {
            return Err(SyncDbError::UnsupportedCompression {
                path: path.to_owned(),
                format,
            });
        }
    };
    let packages = read_archive(repo, path, stream, MAX_DB_BYTES)?;
    Ok(SyncDb {
        repo: repo.clone(),
        path: path.to_owned(),
        packages,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
    Unsupported(&'static str),
}

fn detect_compression(head: &[u8]) -> Compression {
    const UNSUPPORTED: &[(&[u8], &str)] = &[
        (b"\xfd7zXZ\x00", "xz"),
        (b"BZh", "bzip2"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"LZIP", "lzip"),
        (b"\x89LZO", "lzop"),
        (b"\x1f\x9d", "compress (.Z)"),
        (b"\x5d\x00\x00", "lzma"),
    ];
    if head.starts_with(b"\x1f\x8b") {
        return Compression::Gzip;
    }
    // A zstd frame, or a skippable frame (0x184D2A50..=0x184D2A5F, little-endian).
    if head.starts_with(b"\x28\xb5\x2f\xfd")
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == *b"\x2a\x4d\x18")
    {
        return Compression::Zstd;
    }
    for (magic, format) in UNSUPPORTED {
        if head.starts_with(magic) {
            return Compression::Unsupported(format);
        }
    }
    Compression::None
}

/// Whether `head` starts with a tar header block with a valid checksum, or with the zero
/// block that ends (or is all of) an empty archive.
fn is_tar_header(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else {
        return false;
    };
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    let field = &block[148..156];
    let digits = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .try_fold(0u32, |acc, d| {
            acc.checked_mul(8)?.checked_add(u32::from(d - b'0'))
        });
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    digits == Some(sum)
}

/// A multi-frame zstd decoder over ruzstd that verifies frame checksums and skips skippable
/// frames (ruzstd's `StreamingDecoder` reads a single frame).
struct ZstdReader<R: BufRead> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(source: R) -> Self {
        Self {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

fn zstd_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                if self.decoder.can_collect() > 0 {
                    let n = self.decoder.read(buf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                }
                if self.decoder.is_finished() {
                    if let (Some(stored), Some(computed)) = (
                        self.decoder.get_checksum_from_data(),
                        self.decoder.get_calculated_checksum(),
                    ) && stored != computed
                    {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "zstd: frame checksum mismatch (the data is corrupt)",
                        ));
                    }
                    self.in_frame = false;
                    continue;
                }
                self.decoder
                    .decode_blocks(
                        &mut self.source,
                        ruzstd::decoding::BlockDecodingStrategy::UptoBytes(buf.len()),
                    )
                    .map_err(zstd_err)?;
            } else {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped =
                            io::copy(&mut (&mut self.source).take(length.into()), &mut io::sink())?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "zstd: stream ends inside a skippable frame",
                            ));
                        }
                    }
                    Err(e) => return Err(zstd_err(e)),
                }
            }
        }
    }
}

/// Counts the bytes read through it and notes whether the end of the stream was reached, so
/// that a tar stream cut at a block boundary (which the `tar` crate takes for a normal end)
/// is told from one that ends with its end-of-archive marker.
struct Tracked<R> {
    inner: R,
    bytes: u64,
    hit_eof: bool,
    /// Reading past this many bytes is an error ([`MAX_DB_BYTES`]).
    limit: u64,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bytes >= self.limit {
            // A compression bomb (or a database no repository could have) ends here, before
            // it costs more than this much work; memory is bounded per entry and by count.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more than {} bytes uncompressed; not a real sync database",
                    self.limit
                ),
            ));
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

fn read_archive(
    repo: &RepoName,
    path: &Path,
    stream: Box<dyn Read + '_>,
    limit: u64,
) -> Result<Vec<SyncPackage>, SyncDbError> {
    let archive_err = |source| SyncDbError::Archive {
        path: path.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(Tracked {
        inner: stream,
        bytes: 0,
        hit_eof: false,
        limit,
    });
    let mut packages = Vec::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let raw_name = entry.path_bytes();
        let Some(dir) = desc_entry_dir(&raw_name) else {
            continue;
        };
        let dir_bytes = dir.to_vec();
        drop(raw_name);
        let entry_name = || shown(&String::from_utf8_lossy(&entry_path_display(&dir_bytes)));
        let bad = |why: String| SyncDbError::BadEntry {
            path: path.to_owned(),
            entry: entry_name(),
            why,
        };
        if !entry.header().entry_type().is_file() {
            return Err(bad("`desc` is not a regular file".into()));
        }
        let size = entry.size();
        if size > MAX_DESC_SIZE {
            return Err(bad(format!(
                "`desc` is {size} bytes, more than the {MAX_DESC_SIZE} accepted"
            )));
        }
        buf.clear();
        entry.read_to_end(&mut buf).map_err(archive_err)?;
        if buf.len() as u64 != size {
            return Err(SyncDbError::Truncated {
                path: path.to_owned(),
            });
        }
        let Ok(dir) = std::str::from_utf8(&dir_bytes) else {
            return Err(bad("the entry name is not UTF-8".into()));
        };
        if packages.len() >= MAX_DB_PACKAGES {
            return Err(bad(format!(
                "the database lists more than {MAX_DB_PACKAGES} packages; not a real sync database"
            )));
        }
        packages.push(parse_entry(repo, dir, &buf).map_err(|e| match e {
            EntryProblem::Desc(source) => SyncDbError::Entry {
                path: path.to_owned(),
                entry: entry_name(),
                source: Box::new(source),
            },
            EntryProblem::Other(why) => bad(why),
        })?);
    }
    let mut tracked = archive.into_inner();
    if tracked.hit_eof && tracked.bytes > 0 {
        return Err(SyncDbError::Truncated {
            path: path.to_owned(),
        });
    }
    if tracked.bytes == 0 {
        // libarchive reads an empty file as an empty archive, and so does pacman.
        tracing::debug!(path = %path.display(), "sync database is empty");
    }
    // Read what follows the end marker (block padding) so gzip and zstd verify their
    // checksums over the whole stream.
    let trailing =
        io::copy(&mut (&mut tracked).take(MAX_TRAILING), &mut io::sink()).map_err(archive_err)?;
    if trailing == MAX_TRAILING {
        tracing::debug!(path = %path.display(), "more than {MAX_TRAILING} bytes after the tar end marker; not verified");
    }

    packages.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = packages.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(SyncDbError::Duplicate {
            path: path.to_owned(),
            name: w[0].name.clone(),
            first: w[0].version.clone(),
            second: w[1].version.clone(),
        });
    }
    Ok(packages)
}

/// `dir/desc` for message display.
fn entry_path_display(dir: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    v.extend_from_slice(b"/desc");
    v
}

/// The `<name>-<version>` directory of a `<name>-<version>/desc` entry (an optional leading
/// `./` allowed); `None` for every other entry.
fn desc_entry_dir(raw: &[u8]) -> Option<&[u8]> {
    let raw = raw.strip_prefix(b"./").unwrap_or(raw);
    let dir = raw.strip_suffix(b"/desc")?;
    (!dir.is_empty() && !dir.contains(&b'/')).then_some(dir)
}

enum EntryProblem {
    Desc(DescError),
    Other(String),
}

impl From<DescError> for EntryProblem {
    fn from(e: DescError) -> Self {
        EntryProblem::Desc(e)
    }
}

fn parse_entry(repo: &RepoName, dir: &str, bytes: &[u8]) -> Result<SyncPackage, EntryProblem> {
    let desc = Desc::parse_bytes(bytes)?;
    let name = desc.name()?;
    let version = desc.version()?;
    let arch = desc.arch()?;
    // pacman takes name and version from the directory and refuses a desc that disagrees.
    let matches = dir
        .strip_prefix(name.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        == Some(version.as_str());
    if !matches {
        return Err(EntryProblem::Other(format!(
            "the entry's directory does not match %NAME%-%VERSION% ({name}-{version})"
        )));
    }
    let filename = desc.require("FILENAME")?;
    check_filename(filename)
        .map_err(|why| EntryProblem::Other(format!("%FILENAME% {} {why}", shown(filename))))?;
    let sha256 = desc
        .first("SHA256SUM")
        .map(|s| {
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(s.to_ascii_lowercase())
            } else {
                Err(EntryProblem::Other(format!(
                    "%SHA256SUM% {} is not 64 hex digits",
                    shown(s)
                )))
            }
        })
        .transpose()?;
    Ok(SyncPackage {
        repo: repo.clone(),
        filename: filename.to_owned(),
        sha256,
        csize: desc.number("CSIZE")?,
        isize: desc.number("ISIZE")?,
        pgpsig: desc
            .first("PGPSIG")
            .filter(|s| plausible_signature(s))
            .map(str::to_owned),
        depends: desc.strings("DEPENDS"),
        provides: desc.strings("PROVIDES"),
        conflicts: desc.strings("CONFLICTS"),
        replaces: desc.strings("REPLACES"),
        name,
        version,
        arch,
    })
}

/// Whether `s` can be base64 of a detached signature (bounded size, base64 alphabet).
fn plausible_signature(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= crate::manifest::MAX_SIGNATURE_BYTES * 4 / 3 + 4
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

/// A `%FILENAME%` must be a plain file name that is safe on a command line and in a URL
/// path, and name a package archive.
pub fn check_filename(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.len() > crate::names::MAX_LEN {
        return Err("is too long");
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err("must not start with '.' or '-'");
    }
    if s.contains('/') {
        return Err("must not contain '/'");
    }
    // The characters of package names, versions and architectures: nothing with a meaning
    // in a URL (`%` `?` `#` `;`) or to a shell.
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"@._+~:-".contains(&b))
    {
        return Err("may only contain A-Z a-z 0-9 @ . _ + ~ : -");
    }
    if crate::cache::strip_package_suffix(s).is_none() {
        return Err("does not end in .pkg.tar or .pkg.tar.EXT");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    fn desc_text(name: &str, version: &str) -> String {
        format!(
            "%FILENAME%\n{name}-{version}-x86_64.pkg.tar.zst\n\n%NAME%\n{name}\n\n%BASE%\n{name}\n\n\
             %VERSION%\n{version}\n\n%DESC%\nthe {name} package\n\n%CSIZE%\n1234\n\n%ISIZE%\n5678\n\n\
             %SHA256SUM%\n{}\n\n%ARCH%\nx86_64\n\n%DEPENDS%\nglibc\nbar>=1.0\n\n%PROVIDES%\nlib{name}.so=1-64\n\n\
             %CONFLICTS%\n{name}-git\n\n%REPLACES%\nold{name}\n\n",
            "ab".repeat(32)
        )
    }

    /// Builds a tar in memory: each (path, contents), directories for each `x/` prefix first.
    fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for (path, data) in entries {
            if let Some((dir, _)) = path.split_once('/')
                && dirs.insert(dir.to_owned())
            {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{dir}/"), io::empty())
                    .unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn sample_entries() -> Vec<(String, Vec<u8>)> {
        vec![
            (
                "zsh-5.9-5/desc".into(),
                desc_text("zsh", "5.9-5").into_bytes(),
            ),
            ("zsh-5.9-5/files".into(), b"%FILES%\nusr/bin/zsh\n".to_vec()),
            (
                "bash-1:5.2.026-2/desc".into(),
                desc_text("bash", "1:5.2.026-2").into_bytes(),
            ),
            (
                "acl-2.3.2-1/desc".into(),
                desc_text("acl", "2.3.2-1").into_bytes(),
            ),
        ]
    }

    fn sample_tar() -> Vec<u8> {
        let e = sample_entries();
        let refs: Vec<(&str, &[u8])> = e.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
        tar_bytes(&refs)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn run(cmd: &mut Command) -> std::process::Output {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Compresses with the real `zstd` tool (the Rust side only has a decoder).
    fn zstd(data: &[u8], args: &[&str]) -> Vec<u8> {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("in");
        std::fs::write(&src, data).unwrap();
        run(Command::new("zstd")
            .args(args)
            .arg("-q")
            .arg("-o")
            .arg(t.path().join("out"))
            .arg(&src));
        std::fs::read(t.path().join("out")).unwrap()
    }

    fn write_db(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn read_bytes(bytes: &[u8]) -> Result<SyncDb, SyncDbError> {
        let t = tempfile::tempdir().unwrap();
        let p = write_db(t.path(), "core.db", bytes);
        read_sync_db(&repo("core"), &p)
    }

    fn check_sample(db: &SyncDb) {
        let names: Vec<&str> = db.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["acl", "bash", "zsh"]);
        let bash = db.get("bash").unwrap();
        assert_eq!(bash.repo.as_str(), "core");
        assert_eq!(bash.version.as_str(), "1:5.2.026-2");
        assert_eq!(bash.arch.as_str(), "x86_64");
        assert_eq!(bash.filename, "bash-1:5.2.026-2-x86_64.pkg.tar.zst");
        assert_eq!(bash.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(bash.csize, Some(1234));
        assert_eq!(bash.depends, ["glibc", "bar>=1.0"]);
        assert_eq!(bash.provides, ["libbash.so=1-64"]);
        assert_eq!(bash.conflicts, ["bash-git"]);
        assert_eq!(bash.replaces, ["oldbash"]);
        assert!(db.get("nope").is_none());
    }

    #[test]
    fn reads_plain_gzip_and_zstd() {
        let tar = sample_tar();
        check_sample(&read_bytes(&tar).unwrap());
        check_sample(&read_bytes(&gzip(&tar)).unwrap());
        check_sample(&read_bytes(&zstd(&tar, &["-3"])).unwrap());
        // With a content checksum, and without.
        check_sample(&read_bytes(&zstd(&tar, &["-19", "--check"])).unwrap());
        check_sample(&read_bytes(&zstd(&tar, &["--no-check"])).unwrap());
    }

    #[test]
    fn reads_multi_member_gzip_and_multi_frame_zstd() {
        let tar = sample_tar();
        let (a, b) = tar.split_at(700);
        let mut gz = gzip(a);
        gz.extend(gzip(b));
        check_sample(&read_bytes(&gz).unwrap());
        let mut zs = zstd(a, &[]);
        // A skippable frame between the two data frames.
        zs.extend_from_slice(b"\x5a\x2a\x4d\x18\x03\x00\x00\x00abc");
        zs.extend(zstd(b, &[]));
        check_sample(&read_bytes(&zs).unwrap());
    }

    #[test]
    fn reads_bsdtar_archives() {
        // An archive written by libarchive, as repo-add does, in each compression.
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        for (path, data) in sample_entries() {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        for (flags, name) in [(&["--zstd"][..], "a.db"), (&["-z"], "b.db"), (&[], "c.db")] {
            let out = t.path().join(name);
            run(Command::new("bsdtar")
                .args(flags)
                .arg("-cf")
                .arg(&out)
                .arg("-C")
                .arg(&src)
                .args(["zsh-5.9-5", "bash-1:5.2.026-2", "acl-2.3.2-1"]));
            check_sample(&read_sync_db(&repo("core"), &out).unwrap());
        }
    }

    /// A real package (a tar of .PKGINFO + files) added to a repository with the real repo-add.
    #[test]
    fn reads_repo_add_output() {
        let t = tempfile::tempdir().unwrap();
        let pkgdir = t.path().join("pkg");
        std::fs::create_dir_all(pkgdir.join("usr/share/foo")).unwrap();
        std::fs::write(pkgdir.join("usr/share/foo/hello"), "hi\n").unwrap();
        let repodir = t.path().join("repo");
        std::fs::create_dir(&repodir).unwrap();
        let mut files = Vec::new();
        for (name, ver, extra) in [
            (
                "foo",
                "1:1.0-1",
                "depend = bar>=1\nprovides = libfoo.so=1-64\nconflict = foo-git\nreplaces = oldfoo\n",
            ),
            ("bar", "2.0-3", ""),
        ] {
            std::fs::write(
                pkgdir.join(".PKGINFO"),
                format!(
                    "pkgname = {name}\npkgbase = {name}\npkgver = {ver}\npkgdesc = x\nurl = https://example.org\n\
                     builddate = 1\npackager = t\nsize = 3\narch = any\nlicense = MIT\n{extra}"
                ),
            )
            .unwrap();
            let file = repodir.join(format!("{name}-{ver}-any.pkg.tar.zst"));
            run(Command::new("bsdtar")
                .arg("--zstd")
                .arg("-cf")
                .arg(&file)
                .arg("-C")
                .arg(&pkgdir)
                .args([".PKGINFO", "usr"]));
            files.push(file);
        }
        run(Command::new("repo-add")
            .arg("-q")
            .arg(repodir.join("test.db.tar.gz"))
            .args(&files));
        let db = read_sync_db(&repo("test"), &repodir.join("test.db")).unwrap();
        assert_eq!(db.packages.len(), 2);
        let foo = db.get("foo").unwrap();
        assert_eq!(foo.version.as_str(), "1:1.0-1");
        assert_eq!(foo.arch.as_str(), "any");
        assert_eq!(foo.filename, "foo-1:1.0-1-any.pkg.tar.zst");
        assert_eq!(foo.depends, ["bar>=1"]);
        assert_eq!(foo.provides, ["libfoo.so=1-64"]);
        assert_eq!(foo.conflicts, ["foo-git"]);
        assert_eq!(foo.replaces, ["oldfoo"]);
        let size = std::fs::metadata(&files[0]).unwrap().len();
        assert_eq!(foo.csize, Some(size));
        let sha = foo.sha256.as_deref().unwrap();
        assert_eq!(sha.len(), 64);
        let out = run(Command::new("sha256sum").arg(&files[0]));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(sha));
        // The .files database holds `files` entries too; they are ignored.
        let files_db = read_sync_db(&repo("test"), &repodir.join("test.files")).unwrap();
        assert_eq!(files_db.packages, db.packages);
        // Through read_sync_dbs with a zstd-compressed copy of the database.
        let dbpath = t.path().join("dbpath");
        std::fs::create_dir_all(dbpath.join("sync")).unwrap();
        let plain = run(Command::new("gzip")
            .arg("-dc")
            .arg(repodir.join("test.db.tar.gz")))
        .stdout;
        std::fs::write(dbpath.join("sync/test.db"), zstd(&plain, &[])).unwrap();
        let all = read_sync_dbs(&dbpath, &[repo("test")]);
        assert_eq!(all[0].1.as_ref().unwrap().packages, db.packages);
    }

    #[test]
    fn read_sync_dbs_keeps_each_result() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sync")).unwrap();
        std::fs::write(t.path().join("sync/core.db"), gzip(&sample_tar())).unwrap();
        std::fs::write(t.path().join("sync/broken.db"), b"\xfd7zXZ\x00 not really").unwrap();
        std::fs::write(t.path().join("sync/extra.db"), sample_tar()).unwrap();
        let repos = [repo("core"), repo("missing"), repo("broken"), repo("extra")];
        let got = read_sync_dbs(t.path(), &repos);
        let order: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(order, ["core", "missing", "broken", "extra"]);
        assert_eq!(got[0].1.as_ref().unwrap().packages.len(), 3);
        assert!(
            matches!(&got[1].1, Err(SyncDbError::Missing { path }) if path.ends_with("sync/missing.db"))
        );
        assert!(matches!(
            &got[2].1,
            Err(SyncDbError::UnsupportedCompression { format: "xz", .. })
        ));
        let extra = got[3].1.as_ref().unwrap();
        assert_eq!(extra.repo.as_str(), "extra");
        assert!(extra.packages.iter().all(|p| p.repo.as_str() == "extra"));
        assert!(read_sync_dbs(t.path(), &[]).is_empty());
    }

    #[test]
    fn empty_databases() {
        // An empty file (libarchive's "empty" format) and an empty tar, in each compression.
        for bytes in [
            Vec::new(),
            tar_bytes(&[]),
            gzip(&tar_bytes(&[])),
            zstd(&tar_bytes(&[]), &[]),
        ] {
            assert!(read_bytes(&bytes).unwrap().packages.is_empty());
        }
    }

    #[test]
    fn unsupported_compression() {
        let tar = sample_tar();
        for (tool, format) in [("xz", "xz"), ("bzip2", "bzip2")] {
            let t = tempfile::tempdir().unwrap();
            let p = write_db(t.path(), "core.db", &tar);
            run(Command::new(tool).arg("-kf").arg(&p));
            let ext = if tool == "xz" { "xz" } else { "bz2" };
            let err =
                read_sync_db(&repo("core"), &t.path().join(format!("core.db.{ext}"))).unwrap_err();
            assert!(
                matches!(err, SyncDbError::UnsupportedCompression { format: f, .. } if f == format),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(format) && msg.contains("core.db"), "{msg}");
        }
        for (magic, format) in [(&b"\x04\x22\x4d\x18xxxx"[..], "lz4"), (b"LZIPxx", "lzip")] {
            assert!(matches!(
                read_bytes(magic),
                Err(SyncDbError::UnsupportedCompression { format: f, .. }) if f == format
            ));
        }
    }

    #[test]
    fn missing_and_unreadable() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("sync/core.db");
        let err = read_sync_db(&repo("core"), &p).unwrap_err();
        assert!(matches!(err, SyncDbError::Missing { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("sync/core.db") && msg.contains("pacman -Syu"),
            "{msg}"
        );
        // A directory where the file should be.
        std::fs::create_dir_all(&p).unwrap();
        let err = read_sync_db(&repo("core"), &p).unwrap_err();
        assert!(matches!(err, SyncDbError::Io { .. }), "{err}");
        assert!(err.to_string().contains("sync/core.db"));
    }

    /// Every corrupt input gives an error naming the file, and nothing panics.
    fn assert_corrupt(bytes: &[u8], needle: &str) {
        let err = read_bytes(bytes).expect_err("corrupt input must fail");
        let mut full = err.to_string();
        let mut src = std::error::Error::source(&err);
        while let Some(s) = src {
            full.push_str(&format!(" / {s}"));
            src = s.source();
        }
        assert!(full.contains("core.db"), "{full} names the file");
        assert!(full.contains(needle), "{full} mentions {needle:?}");
    }

    #[test]
    fn truncated_archives() {
        let tar = sample_tar();
        // Cut inside an entry, inside a header, and exactly at a block boundary.
        for cut in [100, 512 + 100, 1024, 2048, tar.len() - 1024 - 512] {
            assert_corrupt(&tar[..cut], "core.db");
        }
        assert!(matches!(
            read_bytes(&tar[..1024]),
            Err(SyncDbError::Truncated { .. })
        ));
        let gz = gzip(&tar);
        for cut in [10, gz.len() / 2, gz.len() - 4] {
            assert_corrupt(&gz[..cut], "core.db");
        }
        let zs = zstd(&tar, &["--check"]);
        for cut in [5, zs.len() / 2, zs.len() - 2] {
            assert_corrupt(&zs[..cut], "core.db");
        }
    }

    #[test]
    fn checksums_are_verified() {
        let tar = sample_tar();
        // Flip a byte of the gzip CRC, and of the zstd content checksum.
        let mut gz = gzip(&tar);
        let n = gz.len();
        gz[n - 6] ^= 0xff;
        assert_corrupt(&gz, "core.db");
        let mut zs = zstd(&tar, &["--check"]);
        let n = zs.len();
        zs[n - 1] ^= 0xff;
        assert_corrupt(&zs, "checksum");
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift generator: deterministic, no extra dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let prefixes: [&[u8]; 4] = [b"", b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\x5a\x2a\x4d\x18"];
        for prefix in prefixes {
            for len in [1usize, 7, 100, 512, 513, 4096] {
                let mut bytes = prefix.to_vec();
                bytes.extend((0..len).map(|_| next() as u8));
                let _ = read_bytes(&bytes).map(|_| ()).map_err(|e| e.to_string());
            }
        }
        assert_corrupt(&[0x42; 3000], "not a gzip, zstd or tar file");
        assert_corrupt(b"hello", "not a gzip, zstd or tar file");
        assert!(is_tar_header(&sample_tar()));
        assert!(is_tar_header(&[0; 512]));
        assert!(!is_tar_header(&[0; 511]));
        // Mutations of valid archives: errors or (rarely) success, never a panic.
        let tar = sample_tar();
        let gz = gzip(&tar);
        let zs = zstd(&tar, &["--check"]);
        for base in [&tar, &gz, &zs] {
            for _ in 0..150 {
                let mut b = base.clone();
                for _ in 0..(next() % 4 + 1) {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                let _ = read_bytes(&b).map(|_| ()).map_err(|e| e.to_string());
            }
        }
    }

    #[test]
    fn decompression_is_bounded() {
        // A gzip'd tar whose one (non-desc) member is 2 MiB of zeros, read with a 1 MiB
        // bound: refused with the reason, without reading it all.
        let mut h = tar::Header::new_gnu();
        h.set_size(2 << 20);
        h.set_mode(0o644);
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, "junk", io::repeat(0).take(2 << 20))
            .unwrap();
        let gz = gzip(&b.into_inner().unwrap());
        assert!(gz.len() < 64 * 1024, "a bomb: {} bytes", gz.len());
        let stream: Box<dyn Read> = Box::new(flate2::read::MultiGzDecoder::new(&gz[..]));
        let err = read_archive(&repo("core"), Path::new("core.db"), stream, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("more than 1048576 bytes uncompressed"),
            "{err}"
        );
    }

    #[test]
    fn hostile_and_bad_entries() {
        let ok = desc_text("foo", "1.0-1");
        let cases: Vec<(String, String, &str)> = vec![
            // A name that would be an option on a command line.
            (
                "-Syu-1.0-1/desc".into(),
                desc_text("-Syu", "1.0-1"),
                "package name",
            ),
            // A directory that disagrees with the desc.
            ("-Syu/desc".into(), ok.clone(), "does not match"),
            ("foo-1.0-2/desc".into(), ok.clone(), "does not match"),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("%NAME%\nfoo\n", ""),
                "missing %NAME%",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("%ARCH%\nx86_64\n", ""),
                "missing %ARCH%",
            ),
            ("foo-1.0-1/desc".into(), ok.replace("1234", "lots"), "CSIZE"),
            (
                "foo-1.0-1/desc".into(),
                format!("junk\n{ok}"),
                "outside any",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("%VERSION%\n1.0-1", "%VERSION%\n1.0-1;x"),
                "VERSION",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("foo-1.0-1-x86_64.pkg.tar.zst", "../../etc/passwd.pkg.tar"),
                "FILENAME",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("foo-1.0-1-x86_64.pkg.tar.zst", ".pkg.tar.zst"),
                "FILENAME",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace(
                    "foo-1.0-1-x86_64.pkg.tar.zst",
                    "foo-1.0-1-x86_64.pkg.tar.zst.sig",
                ),
                "FILENAME",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("foo-1.0-1-x86_64.pkg.tar.zst", "foo 1.pkg.tar"),
                "FILENAME",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace("%FILENAME%\nfoo-1.0-1-x86_64.pkg.tar.zst\n", ""),
                "FILENAME",
            ),
            (
                "foo-1.0-1/desc".into(),
                ok.replace(&"ab".repeat(32), "xyz"),
                "SHA256SUM",
            ),
        ];
        for (path, desc, needle) in cases {
            let tar = tar_bytes(&[(path.as_str(), desc.as_bytes())]);
            let err = read_bytes(&tar).expect_err(&path);
            assert!(
                matches!(
                    err,
                    SyncDbError::Entry { .. } | SyncDbError::BadEntry { .. }
                ),
                "{err}"
            );
            let mut full = err.to_string();
            if let Some(s) = std::error::Error::source(&err) {
                full.push_str(&s.to_string());
            }
            assert!(
                full.contains(&format!("{path:?}")),
                "{full} names the entry {path}"
            );
            assert!(full.contains(needle), "{full} mentions {needle}");
        }
        // Not UTF-8.
        let tar = tar_bytes(&[("foo-1.0-1/desc", b"%NAME%\n\xff\n")]);
        assert_corrupt(&tar, "UTF-8");
        // Control characters in an entry name are escaped in the message.
        let tar = tar_bytes(&[("foo\x1b[2J-1.0-1/desc", ok.as_bytes())]);
        let msg = read_bytes(&tar).unwrap_err().to_string();
        assert!(!msg.contains('\x1b') && msg.contains("\\u{1b}"), "{msg}");
    }

    #[test]
    fn odd_entries_are_ignored_or_refused() {
        let ok = desc_text("foo", "1.0-1");
        // Anything that is not `<dir>/desc` is ignored: deeper paths, other files, `./` prefix kept.
        let tar = tar_bytes(&[
            ("./foo-1.0-1/desc", ok.as_bytes()),
            ("a/b/desc", b"garbage"),
            ("desc", b"garbage"),
            ("README", b"hello"),
            ("bar-1-1/files", b"garbage"),
            ("bar-1-1/depends", b"garbage"),
        ]);
        let db = read_bytes(&tar).unwrap();
        assert_eq!(db.packages.len(), 1);
        // Two entries for one package.
        let tar = tar_bytes(&[
            ("foo-1.0-1/desc", ok.as_bytes()),
            ("foo-2.0-1/desc", desc_text("foo", "2.0-1").as_bytes()),
        ]);
        let err = read_bytes(&tar).unwrap_err();
        assert!(matches!(err, SyncDbError::Duplicate { .. }), "{err}");
        assert!(err.to_string().contains("1.0-1") && err.to_string().contains("2.0-1"));
        // A desc that is a symlink.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "foo-1.0-1/desc", "/etc/passwd")
            .unwrap();
        let err = read_bytes(&b.into_inner().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A desc claiming to be enormous (the header alone; the size check comes first).
        let mut h = tar::Header::new_ustar();
        h.set_path("foo-1.0-1/desc").unwrap();
        h.set_size(MAX_DESC_SIZE + 1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.resize(2048, 0);
        let err = read_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn long_entry_names() {
        // Over 100 bytes: GNU long-name or pax records, both of which tar readers must follow.
        let name = "a".repeat(150);
        let version = "1.0-1";
        let path = format!("{name}-{version}/desc");
        let mut b = tar::Builder::new(Vec::new());
        let desc = desc_text(&name, version).replace(
            &format!("{name}-{version}-x86_64.pkg.tar.zst"),
            "a-1.0-1-x86_64.pkg.tar.zst",
        );
        let mut h = tar::Header::new_gnu();
        h.set_size(desc.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, &path, desc.as_bytes()).unwrap();
        let db = read_bytes(&b.into_inner().unwrap()).unwrap();
        assert_eq!(db.packages[0].name.as_str(), name);
    }

    #[test]
    fn filename_rules() {
        for ok in [
            "foo-1.0-1-x86_64.pkg.tar.zst",
            "foo-1:1.0-1-any.pkg.tar",
            "a.pkg.tar.xz",
        ] {
            assert_eq!(check_filename(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".pkg.tar.zst",
            "-x.pkg.tar",
            "a/b.pkg.tar",
            "a b.pkg.tar",
            "a.tar.zst",
            "a.pkg.tar.zst.sig",
            "a\n.pkg.tar",
        ] {
            assert!(check_filename(bad).is_err(), "{bad:?}");
        }
    }
}
