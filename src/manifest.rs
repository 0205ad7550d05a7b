//! A target's manifest: for each package of a target state, where its file came from and what
//! the file is (repository, file name, size, SHA-256, detached signature).
//!
//! The endpoint that sets a target records it from its own sync databases and cache
//! ([`Manifest::record`]); the coordinator keeps it beside the target's snapshot. It is not
//! part of the snapshot's identity: two machines with the same versions still hash equal.
//!
//! Architecture Invariant: a manifest is a hint, never trust. It comes from another machine,
//! so it can only make the installing machine stricter (a size bound, a digest the file must
//! have) or hand it signature bytes that [`crate::trust`] then checks against pacman's own
//! keyring under pacman's own `SigLevel`. Nothing in it can make a file acceptable that the
//! local rule would refuse.

use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::names::{PkgName, PkgVersion, RepoName};
use crate::plan::Availability;
use crate::snapshot::Snapshot;

/// Largest detached signature accepted, in bytes (an RSA-4096 signature is about 560).
pub const MAX_SIGNATURE_BYTES: usize = 8 * 1024;

/// Most entries a manifest may hold (far above any real machine; a target state is bounded
/// more tightly elsewhere).
pub const MAX_ENTRIES: usize = 100_000;

/// What one package's file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub name: PkgName,
    pub version: PkgVersion,
    /// The repository that offered this version on the recording machine; `None` for a
    /// foreign package (AUR, local builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoName>,
    /// The package file's name (`%FILENAME%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The package file's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the package file, 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The detached signature, base64 (as `%PGPSIG%` carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The entries of one target, sorted by name (unique).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest has {0} entries, more than the {MAX_ENTRIES} accepted")]
    TooLarge(usize),
    #[error("manifest entry {name}: {why}")]
    Entry { name: String, why: String },
    #[error("the manifest is not sorted by package name, or names a package twice ({0})")]
    Order(String),
}

impl ManifestEntry {
    /// The signature's bytes, if it has one that decodes.
    pub fn signature_bytes(&self) -> Option<Vec<u8>> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.signature.as_deref()?)
            .ok()?;
        (b.len() <= MAX_SIGNATURE_BYTES).then_some(b)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(f) = &self.filename {
            crate::syncdb::check_filename(f).map_err(|why| format!("file name {f:?} {why}"))?;
        }
        if let Some(h) = &self.sha256
            && !(h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err("sha256 is not 64 lowercase hex digits".into());
        }
        if let Some(s) = &self.signature
            && (s.len() > MAX_SIGNATURE_BYTES * 4 / 3 + 4 || self.signature_bytes().is_none())
        {
            return Err(format!(
                "the signature is not base64 of at most {MAX_SIGNATURE_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

impl Manifest {
    /// Checks bounds, field formats and order; call on anything received.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooLarge(self.entries.len()));
        }
        for e in &self.entries {
            e.check().map_err(|why| ManifestError::Entry {
                name: e.name.to_string(),
                why,
            })?;
        }
        if let Some(w) = self.entries.windows(2).find(|w| w[0].name >= w[1].name) {
            return Err(ManifestError::Order(w[1].name.to_string()));
        }
        Ok(())
    }

    /// The entry for exactly `name` `version`.
    pub fn get(&self, name: &PkgName, version: &PkgVersion) -> Option<&ManifestEntry> {
        let i = self.entries.binary_search_by(|e| e.name.cmp(name)).ok()?;
        let e = &self.entries[i];
        (e.version == *version).then_some(e)
    }

    /// Records the manifest of `snapshot` (this machine's state) from what this machine's
    /// sync databases and cache say about each package. Reads and hashes cache files only
    /// for versions that no sync database lists with a digest (old versions, foreign
    /// packages), so it is cheap on an up-to-date machine.
    pub fn record(snapshot: &Snapshot, availability: &Availability) -> Manifest {
        let mut entries = Vec::with_capacity(snapshot.packages().len());
        for p in snapshot.packages() {
            let mut e = ManifestEntry {
                name: p.name.clone(),
                version: p.version.clone(),
                repo: availability.repo_of(&p.name),
                filename: None,
                size: None,
                sha256: None,
                signature: None,
            };
            if let Some(offer) = availability.exact_file(&p.name, &p.version) {
                e.repo = Some(offer.repo);
                e.filename = Some(offer.filename);
                e.size = offer.csize;
                e.sha256 = offer.sha256;
                e.signature = offer.pgpsig;
            }
            if let Some(path) = availability.cached(&p.name, &p.version) {
                if e.sha256.is_none()
                    && let Ok((size, sha)) = file_digest(path)
                {
                    e.size = Some(size);
                    e.sha256 = Some(sha);
                }
                if e.filename.is_none() {
                    e.filename = path
                        .file_name()
                        .and_then(|f| f.to_str())
                        .filter(|f| crate::syncdb::check_filename(f).is_ok())
                        .map(str::to_owned);
                }
                if e.signature.is_none() {
                    e.signature = read_signature(&sig_path(path))
                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b));
                }
            }
            entries.push(e);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        Manifest { entries }
    }
}

/// `FILE.sig`, where pacman keeps a package's detached signature.
pub fn sig_path(file: &Path) -> std::path::PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    s.into()
}

/// A detached signature file's bytes, if it exists and is not larger than a signature can be.
pub fn read_signature(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_SIGNATURE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (!bytes.is_empty() && bytes.len() <= MAX_SIGNATURE_BYTES).then_some(bytes)
}

/// Size and SHA-256 (lowercase hex) of a file, read in 256 KiB blocks.
pub fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ManifestEntry {
        ManifestEntry {
            name: name.parse().unwrap(),
            version: "1.0-1".parse().unwrap(),
            repo: None,
            filename: Some(format!("{name}-1.0-1-any.pkg.tar.zst")),
            size: Some(10),
            sha256: Some("ab".repeat(32)),
            signature: Some(base64::engine::general_purpose::STANDARD.encode([1u8; 100])),
        }
    }

    #[test]
    fn validation() {
        let ok = Manifest {
            entries: vec![entry("a"), entry("b")],
        };
        assert_eq!(ok.validate(), Ok(()));
        assert!(
            ok.get(&"b".parse().unwrap(), &"1.0-1".parse().unwrap())
                .is_some()
        );
        assert!(
            ok.get(&"b".parse().unwrap(), &"1.0-2".parse().unwrap())
                .is_none()
        );
        let unsorted = Manifest {
            entries: vec![entry("b"), entry("a")],
        };
        assert!(matches!(unsorted.validate(), Err(ManifestError::Order(_))));
        for (field, bad) in [
            ("file name", {
                let mut e = entry("a");
                e.filename = Some("../x.pkg.tar.zst".into());
                e
            }),
            ("sha256", {
                let mut e = entry("a");
                e.sha256 = Some("AB".repeat(32));
                e
            }),
            ("signature", {
                let mut e = entry("a");
                e.signature = Some("!!".into());
                e
            }),
            ("signature", {
                let mut e = entry("a");
                e.signature = Some(base64::engine::general_purpose::STANDARD.encode(vec![
                    0u8;
                    MAX_SIGNATURE_BYTES
                        + 1
                ]));
                e
            }),
        ] {
            let m = Manifest { entries: vec![bad] };
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
