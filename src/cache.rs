//! Package files in pacman's cache directories (`CacheDir`, default `/var/cache/pacman/pkg/`).
//!
//! A cached package is recognised by its file name alone, `NAME-PKGVER-PKGREL-ARCH.pkg.tar[.EXT]`,
//! the name makepkg and repo-add give it; the file itself is never opened here. Signatures
//! (`.sig`), partial downloads (`.part`) and anything whose parts fail validation are skipped.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::names::{Arch, PkgName, PkgVersion};
use crate::version::vercmp;

/// One package file found in a cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    pub name: PkgName,
    pub version: PkgVersion,
    pub arch: Arch,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cannot list the package cache directory {path}: {source}: check CacheDir in pacman.conf and that this user may read the directory"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Compression suffixes makepkg can give a package (`PKGEXT`), after `.pkg.tar`.
pub const PACKAGE_EXTENSIONS: &[&str] = &["zst", "xz", "gz", "bz2", "lz4", "lzo", "lrz", "lz", "Z"];

/// The part of a package file name before `.pkg.tar[.EXT]`, EXT one of
/// [`PACKAGE_EXTENSIONS`]. `None` for anything else, including `.sig` and `.part` files.
pub(crate) fn strip_package_suffix(file_name: &str) -> Option<&str> {
    const MARK: &str = ".pkg.tar";
    let at = file_name.rfind(MARK)?;
    let rest = &file_name[at + MARK.len()..];
    let ext_ok = match rest.strip_prefix('.') {
        None => rest.is_empty(),
        Some(ext) => PACKAGE_EXTENSIONS.contains(&ext),
    };
    (ext_ok && at > 0).then(|| &file_name[..at])
}

/// Parses `name-pkgver-pkgrel-arch.pkg.tar[.zst|.xz|.gz|.bz2|...]`, splitting at the last three
/// hyphens (names may contain hyphens, versions and architectures may not).
///
/// Returns `None` for `.sig` and `.part` files and for anything malformed or failing
/// validation of the name, the version (`[epoch:]pkgver-pkgrel`, pkgrel required) or the
/// architecture.
pub fn parse_package_filename(file_name: &str) -> Option<(PkgName, PkgVersion, Arch)> {
    let stem = strip_package_suffix(file_name)?;
    let (rest, arch) = stem.rsplit_once('-')?;
    let (rest, _pkgrel) = rest.rsplit_once('-')?;
    let (name, _pkgver) = rest.rsplit_once('-')?;
    let version = &stem[name.len() + 1..stem.len() - arch.len() - 1];
    Some((
        PkgName::new(name).ok()?,
        PkgVersion::new(version).ok()?,
        Arch::new(arch).ok()?,
    ))
}

/// Lists the package files in each of `dirs` (not recursing into subdirectories).
///
/// A directory that does not exist is skipped (pacman creates cache directories lazily); any
/// other I/O error is an error naming the directory. Symbolic links to regular files count as
/// package files; directories, broken links and files with names that are not package file
/// names are skipped. A directory listed twice is read once.
///
/// The result is sorted by name, then version (pacman's [`vercmp`]), then path.
pub fn scan_cache_dirs(dirs: &[PathBuf]) -> Result<Vec<CachedFile>, CacheError> {
    let mut files = Vec::new();
    let mut seen: Vec<&Path> = Vec::new();
    for dir in dirs {
        if seen.contains(&dir.as_path()) {
            continue;
        }
        seen.push(dir);
        scan_dir(dir, &mut files)?;
    }
    sort_files(&mut files);
    Ok(files)
}

fn scan_dir(dir: &Path, out: &mut Vec<CachedFile>) -> Result<(), CacheError> {
    let io_err = |source| CacheError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "package cache directory does not exist; skipped");
            return Ok(());
        }
        Err(e) => return Err(io_err(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err)?;
        let file_name = entry.file_name();
        let Some((name, version, arch)) = file_name.to_str().and_then(parse_package_filename)
        else {
            continue;
        };
        let path = entry.path();
        let is_file = match entry.file_type() {
            Ok(t) if t.is_file() => true,
            // Follow the link; a broken one is not a package.
            Ok(t) if t.is_symlink() => std::fs::metadata(&path).is_ok_and(|m| m.is_file()),
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot stat cache entry; skipped");
                false
            }
        };
        if is_file {
            out.push(CachedFile {
                name,
                version,
                arch,
                path,
            });
        }
    }
    Ok(())
}

/// Sorts by (name, vercmp(version), path).
///
/// Names and paths are totally ordered; `vercmp` is pacman's comparison, which is not
/// guaranteed to be a total order on arbitrary strings, and `sort_by` may panic on an
/// inconsistent comparator. So: sort by (name, path), then order each name's run by binary
/// insertion, which cannot panic whatever the comparator does.
fn sort_files(files: &mut Vec<CachedFile>) {
    files.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.path.cmp(&b.path)));
    let by_version = |a: &CachedFile, b: &CachedFile| {
        vercmp(a.version.as_str(), b.version.as_str()).then_with(|| a.path.cmp(&b.path))
    };
    let mut sorted = Vec::with_capacity(files.len());
    let mut run: Vec<CachedFile> = Vec::new();
    for f in files.drain(..) {
        if run.first().is_some_and(|r| r.name != f.name) {
            sorted.append(&mut run);
        }
        let at = run.partition_point(|x| by_version(x, &f) != Ordering::Greater);
        run.insert(at, f);
    }
    sorted.append(&mut run);
    *files = sorted;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Option<(String, String, String)> {
        parse_package_filename(s).map(|(n, v, a)| (n.into(), v.into(), a.into()))
    }

    fn triple(n: &str, v: &str, a: &str) -> Option<(String, String, String)> {
        Some((n.into(), v.into(), a.into()))
    }

    #[test]
    fn parses_good_names() {
        assert_eq!(
            parsed("bash-5.2.026-2-x86_64.pkg.tar.zst"),
            triple("bash", "5.2.026-2", "x86_64")
        );
        assert_eq!(
            parsed("linux-firmware-20240409.1addd7dc-1-any.pkg.tar.zst"),
            triple("linux-firmware", "20240409.1addd7dc-1", "any")
        );
        assert_eq!(
            parsed("lib32-gcc-libs-13.2.1-5-x86_64.pkg.tar.xz"),
            triple("lib32-gcc-libs", "13.2.1-5", "x86_64")
        );
        assert_eq!(
            parsed("foo-1.0-1.1-any.pkg.tar.gz"),
            triple("foo", "1.0-1.1", "any")
        );
        assert_eq!(
            parsed("foo-1.0-1-any.pkg.tar"),
            triple("foo", "1.0-1", "any")
        );
        assert_eq!(
            parsed("foo-1.0-1-any.pkg.tar.bz2"),
            triple("foo", "1.0-1", "any")
        );
        assert_eq!(
            parsed("libstdc++5-3.3.6-9-x86_64.pkg.tar.Z"),
            triple("libstdc++5", "3.3.6-9", "x86_64")
        );
        for ext in PACKAGE_EXTENSIONS {
            assert!(
                parsed(&format!("a-1-1-any.pkg.tar.{ext}")).is_some(),
                "{ext}"
            );
        }
    }

    #[test]
    fn parses_epoch() {
        assert_eq!(
            parsed("foo-1:2.0-1-x86_64.pkg.tar.zst"),
            triple("foo", "1:2.0-1", "x86_64")
        );
        assert_eq!(
            parsed("python-foo-bar-12:0.1_beta+git3-10-any.pkg.tar.zst"),
            triple("python-foo-bar", "12:0.1_beta+git3-10", "any")
        );
    }

    #[test]
    fn skips_signatures_partials_and_malformed() {
        for s in [
            "foo-1.0-1-any.pkg.tar.zst.sig",
            "foo-1.0-1-any.pkg.tar.sig",
            "foo-1.0-1-any.pkg.tar.zst.part",
            "foo-1.0-1-any.pkg.tar.",
            "foo-1.0-1-any.pkg.tar.z-t",
            "foo-1.0-1-any.pkg.tar.exe",
            "foo-1.0-1-any.tar.zst",
            "foo-1.0-1-any.zst",
            ".pkg.tar.zst",
            "foo-1.0-any.pkg.tar.zst",
            "foo-1.0-1.pkg.tar.zst",
            "foo.pkg.tar.zst",
            "-1.0-1-any.pkg.tar.zst",
            "foo--1-any.pkg.tar.zst",
            "foo-1.0--any.pkg.tar.zst",
            "foo-1.0-1-.pkg.tar.zst",
            "foo-1.0-x-any.pkg.tar.zst",
            "foo-1.0-1-x86-64.pkg.tar.zst",
            "",
            "download-abc123",
        ] {
            assert_eq!(parsed(s), None, "{s:?} must not parse");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        let long = format!("{}-1.0-1-any.pkg.tar.zst", "a".repeat(300));
        for s in [
            "-Syu-1.0-1-any.pkg.tar.zst",
            "--config=x-1.0-1-any.pkg.tar.zst",
            ".hidden-1.0-1-any.pkg.tar.zst",
            "a b-1.0-1-any.pkg.tar.zst",
            "a;rm-1.0-1-any.pkg.tar.zst",
            "foo-1.0-1;id-any.pkg.tar.zst",
            "foo-1.0-1-any;id.pkg.tar.zst",
            "foo-1.0-1-any\n.pkg.tar.zst",
            "foo-1.0-1-$(id).pkg.tar.zst",
            "../foo-1.0-1-any.pkg.tar.zst",
            "dir/foo-1.0-1-any.pkg.tar.zst",
            "foo-a:1.0-1-any.pkg.tar.zst",
            "naïve-1.0-1-any.pkg.tar.zst",
            long.as_str(),
        ] {
            assert_eq!(parsed(s), None, "{s:?} must be rejected");
        }
    }

    #[test]
    fn suffix_helper() {
        assert_eq!(strip_package_suffix("a.pkg.tar.zst"), Some("a"));
        assert_eq!(strip_package_suffix("a.pkg.tar"), Some("a"));
        assert_eq!(
            strip_package_suffix("a.pkg.tar.pkg.tar.xz"),
            Some("a.pkg.tar")
        );
        assert_eq!(strip_package_suffix(".pkg.tar"), None);
        assert_eq!(strip_package_suffix("a.pkg.tar.zst.sig"), None);
    }

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"x").unwrap();
    }

    #[test]
    fn scans_sorts_and_skips() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for n in [
            "foo-1.10-1-x86_64.pkg.tar.zst",
            "foo-1.9-1-x86_64.pkg.tar.zst",
            "foo-1.9-1-x86_64.pkg.tar.zst.sig",
            "foo-2.0-1-x86_64.pkg.tar.zst.part",
            "bar-1:0.1-1-any.pkg.tar.zst",
            "bar-3.0-1-any.pkg.tar.zst",
            "notes.txt",
            "-Syu-1.0-1-any.pkg.tar.zst",
        ] {
            touch(a.path(), n);
        }
        // A directory with a package-like name is not a package.
        std::fs::create_dir(a.path().join("baz-1.0-1-any.pkg.tar.zst")).unwrap();
        // The same version in a second directory: both listed, ordered by path.
        touch(b.path(), "foo-1.9-1-x86_64.pkg.tar.xz");
        touch(b.path(), "foo-1.0rc1-1-x86_64.pkg.tar.xz");
        // A link to a file counts, a broken link does not.
        std::os::unix::fs::symlink(
            b.path().join("foo-1.0rc1-1-x86_64.pkg.tar.xz"),
            b.path().join("foo-1.1-1-x86_64.pkg.tar.xz"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            b.path().join("nowhere"),
            b.path().join("foo-7-1-x86_64.pkg.tar.xz"),
        )
        .unwrap();
        let missing = a.path().join("does-not-exist");
        let dirs = vec![
            a.path().to_owned(),
            missing,
            b.path().to_owned(),
            a.path().to_owned(),
        ];
        let files = scan_cache_dirs(&dirs).unwrap();
        let got: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.name.to_string(), f.version.to_string()))
            .collect();
        let want = [
            ("bar", "3.0-1"),
            ("bar", "1:0.1-1"),
            ("foo", "1.0rc1-1"),
            ("foo", "1.1-1"),
            ("foo", "1.9-1"),
            ("foo", "1.9-1"),
            ("foo", "1.10-1"),
        ];
        assert_eq!(
            got,
            want.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
        );
        assert!(
            files[4].path < files[5].path,
            "equal versions ordered by path"
        );
        assert_eq!(files[0].arch.as_str(), "any");
        assert_eq!(
            files[6].path,
            a.path().join("foo-1.10-1-x86_64.pkg.tar.zst")
        );
    }

    #[test]
    fn missing_dirs_are_empty_and_unreadable_paths_are_errors() {
        let t = tempfile::tempdir().unwrap();
        assert!(
            scan_cache_dirs(&[t.path().join("nope")])
                .unwrap()
                .is_empty()
        );
        assert!(scan_cache_dirs(&[]).unwrap().is_empty());
        // A file where a directory is expected is an error naming it.
        let file = t.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = scan_cache_dirs(std::slice::from_ref(&file)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("CacheDir"), "{msg}");
    }

    #[test]
    fn sort_survives_any_versions() {
        // Many versions of one package, including ones vercmp finds equal.
        let mut files: Vec<CachedFile> = [
            "1.0-1",
            "1.0-01",
            "1.0.a-1",
            "1.0a-1",
            "1.0-2",
            "1:0-1",
            "0:1.0-1",
            "1.0_1-1",
            "1.0+1-1",
            "1..0-1",
            "2-1",
            "10-1",
            "1.0beta-1",
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| CachedFile {
            name: "foo".parse().unwrap(),
            version: v.parse().unwrap(),
            arch: "any".parse().unwrap(),
            path: PathBuf::from(format!("/c/{i}")),
        })
        .collect();
        sort_files(&mut files);
        for w in files.windows(2) {
            assert_ne!(
                vercmp(w[0].version.as_str(), w[1].version.as_str()),
                Ordering::Greater,
                "{} before {}",
                w[0].version,
                w[1].version
            );
        }
    }
}
