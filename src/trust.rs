//! The trust rule: no package file reaches `pacman -U` unless pacman would accept it from the
//! repository it comes from.
//!
//! `pacman -S` from a repository applies that repository's `SigLevel` and the digest its
//! database lists. `pacman -U FILE` applies only `LocalFileSigLevel` (Arch's default
//! `pacman.conf` says `Optional`, so an unsigned file passes). pacpool installs old versions,
//! cache files and archive downloads with `-U`, so before every `-U` it checks each file itself
//! ([`TrustRule::check`]), whatever `LocalFileSigLevel` says:
//!
//! 1. **Size and digest.** When a sync database of this machine lists exactly this version,
//!    the file's SHA-256 must be the one the database lists. When the target's manifest names
//!    a size or a digest, the file must have them too (a manifest only ever adds checks).
//! 2. **Origin.** The package's repository is the first repository of *this machine's*
//!    pacman.conf that offers the package's name (what `pacman -S name` would use); a name no
//!    configured repository offers is *foreign* (AUR, local builds). What another machine's
//!    manifest says about the origin is not used for trust.
//! 3. **Signature**, under the origin repository's package `SigLevel` (its own on top of
//!    `[options]`', as pacman computes it):
//!    - `Never`: pacman checks no signature, but it installs from the repository only files
//!      whose digest the repository's database lists. So: a file the database vouches for
//!      (step 1) passes; so does a file already in pacman's own cache (root's, written by
//!      pacman); a *downloaded* file the database does not list needs a valid signature by a
//!      key pacman's keyring fully trusts, as a foreign package does.
//!    - `Optional`: a signature that is there must be valid; without one, the file is
//!      accepted only when a sync database of this machine vouches for its digest (step 1).
//!    - `Required`: a valid signature must be there.
//!
//!    Foreign packages need a valid signature by a key pacman's keyring fully trusts, unless
//!    the machine's own `pacpoold.toml` says `allow_unsigned_foreign = true` (a local choice
//!    that the coordinator cannot make). A bad signature is refused in every case.
//!
//! Signatures are checked with `gpg --verify` on pacman's own keyring (`GPGDir`), reading
//! gpg's machine-readable status lines: every signature must be good, made by a key that is
//! neither expired nor revoked, and (`TrustedOnly`, the default) fully trusted, which is what
//! `pacman-key --lsign-key` and the `archlinux-keyring` package establish. `TrustAll` also
//! accepts keys of marginal or unknown trust, as pacman does. The signature comes from
//! `FILE.sig` beside the file, else the sync database's `%PGPSIG%`, else the manifest.
//!
//! Every file is checked in place, so its directory and the file itself must be safe from
//! other users between the check and `pacman -U`: a regular file (not a symbolic link) owned
//! by root or by this process, in a directory owned by root or by this process, neither
//! writable by others or by a group other than root ([`private_file`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, ManifestEntry, file_digest, read_signature, sig_path};
use crate::names::{PkgName, PkgVersion, RepoName};
use crate::pacman_conf::{PacmanConf, SigCheck, SigLevel};
use crate::plan::Availability;

/// How long one `gpg --verify` may take.
const GPG_TIMEOUT: Duration = Duration::from_secs(120);

/// Which check a file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustCheck {
    /// Its size differs from the manifest's, or a download exceeded its bound.
    Size,
    /// Its SHA-256 differs from the sync database's or the manifest's.
    Digest,
    /// A signature was needed and there is none.
    MissingSignature,
    /// The signature does not verify, or its key is expired, revoked or unknown.
    BadSignature,
    /// The signature is good but its key is not trusted enough.
    UntrustedKey,
    /// A foreign package without a signature, and unsigned foreign packages are not allowed.
    UnsignedForeign,
    /// The file holds another package or version than its name and the plan say.
    WrongPackage,
    /// The check itself could not run (gpg missing, file unreadable).
    Unverifiable,
}

/// Where a file to be installed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// Already in pacman's cache directory (put there by pacman, or by a download of
    /// pacpool's that passed this rule).
    Cache,
    /// Downloaded just now (pool repository, archive).
    Download,
}

/// Refuses a file another user could swap between the check and `pacman -U`: it must be a
/// regular file (not a symbolic link), owned by root or by this process, and neither it nor
/// its directory writable by others or by a group other than root, the directory owned by
/// root or by this process.
pub fn private_file(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    let safe_owner = |uid: u32| uid == 0 || uid == me;
    let meta = std::fs::symlink_metadata(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a regular file (a symbolic link or other): replace it with the package file itself",
            file.display()
        ));
    }
    // Group write is fine for group root (a umask of 002 when pacman ran), not for others.
    let unsafe_mode =
        |m: &std::fs::Metadata| m.mode() & 0o002 != 0 || (m.mode() & 0o020 != 0 && m.gid() != 0);
    if !safe_owner(meta.uid()) || unsafe_mode(&meta) {
        return Err(format!(
            "{} is owned by uid {} with mode {:o}: only root (or pacpoold's user) may write a package file; fix its owner and mode (`chown root:root`, `chmod 644`)",
            file.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("/"));
    let dmeta =
        std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !safe_owner(dmeta.uid()) || unsafe_mode(&dmeta) {
        return Err(format!(
            "the cache directory {} is owned by uid {} with mode {:o}: another user could swap a package file between its check and its install; make it root's and not writable by group or others (`chown root:root`, `chmod 755`)",
            dir.display(),
            dmeta.uid(),
            dmeta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A package file that pacman would not accept from where it comes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{name} {version} ({file}) is not trusted: {why}")]
pub struct Untrusted {
    pub name: PkgName,
    pub version: PkgVersion,
    /// The file's name (no directory).
    pub file: String,
    pub check: TrustCheck,
    /// What failed and what to do.
    pub why: String,
}

/// Where a package comes from on this machine, and the level its files are checked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// `None`: foreign.
    pub repo: Option<RepoName>,
    pub level: SigLevel,
    /// The digest a sync database of this machine lists for exactly this version.
    pub vouched_sha256: Option<String>,
    /// The database's `%PGPSIG%` for exactly this version.
    pub db_signature: Option<String>,
}

/// The trust rule of one machine, for one apply.
#[derive(Debug, Clone)]
pub struct TrustRule {
    gpg_dir: PathBuf,
    gpg_program: PathBuf,
    conf: Arc<PacmanConf>,
    availability: Arc<Availability>,
    manifest: Option<Arc<Manifest>>,
    allow_unsigned_foreign: bool,
}

impl TrustRule {
    /// The rule from this machine's pacman configuration (`None`: pacman's defaults, no
    /// repositories), what its sync databases offer, and the target's manifest if any.
    pub fn new(
        conf: Option<&PacmanConf>,
        availability: Arc<Availability>,
        manifest: Option<Arc<Manifest>>,
        allow_unsigned_foreign: bool,
    ) -> Self {
        let conf = Arc::new(conf.cloned().unwrap_or_default());
        Self {
            gpg_dir: conf.gpg_dir(),
            gpg_program: PathBuf::from("gpg"),
            conf,
            availability,
            manifest,
            allow_unsigned_foreign,
        }
    }

    /// Uses another gpg program (looked up in `PATH` unless it contains a `/`).
    pub fn with_gpg_program(mut self, program: PathBuf) -> Self {
        self.gpg_program = program;
        self
    }

    /// The manifest's entry for exactly `name` `version`.
    pub fn manifest_entry(&self, name: &PkgName, version: &PkgVersion) -> Option<&ManifestEntry> {
        self.manifest.as_deref()?.get(name, version)
    }

    /// Where `name` `version` comes from here and what its file must pass.
    pub fn requirement(&self, name: &PkgName, version: &PkgVersion) -> Requirement {
        let exact = self.availability.exact_file(name, version);
        let repo = exact
            .as_ref()
            .map(|o| o.repo.clone())
            .or_else(|| self.availability.repo_of(name));
        let level = match &repo {
            Some(r) => self.conf.package_sig_level(Some(r.as_str())),
            // Foreign: a fully trusted signature, whatever LocalFileSigLevel says.
            None => SigLevel {
                check: SigCheck::Required,
                trust_all: false,
            },
        };
        Requirement {
            repo,
            level,
            vouched_sha256: exact.as_ref().and_then(|o| o.sha256.clone()),
            db_signature: exact.and_then(|o| o.pgpsig),
        }
    }

    /// Checks `file`, which is to be installed as `name` `version`. On success, a signature
    /// that came from the database or the manifest is left beside the file as `FILE.sig`, so
    /// that pacman checks it too under its `LocalFileSigLevel`.
    pub async fn check(
        &self,
        name: &PkgName,
        version: &PkgVersion,
        file: &Path,
        from: FileOrigin,
    ) -> Result<(), Untrusted> {
        let untrusted = |check: TrustCheck, why: String| Untrusted {
            name: name.clone(),
            version: version.clone(),
            file: file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            check,
            why,
        };
        private_file(file).map_err(|why| untrusted(TrustCheck::Unverifiable, why))?;
        let req = self.requirement(name, version);
        let entry = self.manifest_entry(name, version);
        let path = file.to_owned();
        let (size, sha) = tokio::task::spawn_blocking(move || file_digest(&path))
            .await
            .map_err(|e| untrusted(TrustCheck::Unverifiable, format!("hashing failed: {e}")))?
            .map_err(|e| {
                untrusted(
                    TrustCheck::Unverifiable,
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
        if let Some(want) = entry.and_then(|e| e.size)
            && want != size
        {
            return Err(untrusted(
                TrustCheck::Size,
                format!(
                    "it has {size} bytes, the target's manifest says {want}: delete it from the cache and sync again"
                ),
            ));
        }
        if let Some(want) = &req.vouched_sha256
            && *want != sha
        {
            return Err(untrusted(
                TrustCheck::Digest,
                format!(
                    "its SHA-256 {sha} differs from {want}, listed by repository {}'s database: delete it from the cache and sync again",
                    req.repo.as_ref().map_or("?", |r| r.as_str())
                ),
            ));
        }
        if let Some(want) = entry.and_then(|e| e.sha256.as_ref())
            && *want != sha
        {
            return Err(untrusted(
                TrustCheck::Digest,
                format!(
                    "its SHA-256 {sha} differs from {want}, recorded in the target's manifest: delete it from the cache and sync again"
                ),
            ));
        }
        let beside = sig_path(file);
        let (signature, from_beside) = match read_signature(&beside) {
            Some(b) => (Some(b), true),
            None => (
                req.db_signature
                    .as_deref()
                    .and_then(decode_base64)
                    .or_else(|| entry.and_then(ManifestEntry::signature_bytes)),
                false,
            ),
        };
        let origin = match &req.repo {
            Some(r) => format!("repository {r}"),
            None => "a foreign package (no configured repository offers it)".to_owned(),
        };
        // SigLevel Never: what pacman itself would install from the repository (a file its
        // database vouches for), or what pacman already keeps in its own cache.
        let never_vouched = req.repo.is_some()
            && req.level.check == SigCheck::Never
            && (req.vouched_sha256.is_some() || from == FileOrigin::Cache);
        if never_vouched {
            return Ok(());
        }
        let Some(signature) = signature else {
            return match (&req.repo, req.level.check) {
                (Some(r), SigCheck::Never) => Err(untrusted(
                    TrustCheck::MissingSignature,
                    format!(
                        "it was downloaded, repository {r} has SigLevel Never (pacman installs from it only the files its database lists), and its database does not list this version: the file needs a signature by a key pacman's keyring fully trusts, or put a copy pacman downloaded into the cache"
                    ),
                )),
                (Some(_), SigCheck::Optional) if req.vouched_sha256.is_some() => Ok(()),
                (Some(r), SigCheck::Optional) => Err(untrusted(
                    TrustCheck::MissingSignature,
                    format!(
                        "it has no signature, and no sync database of repository {r} lists this version to vouch for it: put its FILE.sig next to it, or install a signed copy"
                    ),
                )),
                (Some(r), _) => Err(untrusted(
                    TrustCheck::MissingSignature,
                    format!(
                        "repository {r} requires signed packages (SigLevel Required) and it has no signature: put its FILE.sig next to it, or install a signed copy"
                    ),
                )),
                (None, _) if self.allow_unsigned_foreign => Ok(()),
                (None, _) => Err(untrusted(
                    TrustCheck::UnsignedForeign,
                    "it is a foreign package without a signature: sign it with a key in pacman's keyring (`pacman-key --lsign-key`), or set `allow_unsigned_foreign = true` in this machine's pacpoold.toml".into(),
                )),
            };
        };
        // A downloaded file of a Never repository that its database does not list is held to
        // the foreign rule: a fully trusted key.
        let trust_all = req.level.trust_all && req.level.check != SigCheck::Never;
        let sig_file = if from_beside {
            beside.clone()
        } else {
            let tmp = temp_sig_path(file);
            tokio::fs::write(&tmp, &signature).await.map_err(|e| {
                untrusted(
                    TrustCheck::Unverifiable,
                    format!("cannot write {}: {e}", tmp.display()),
                )
            })?;
            tmp
        };
        let verdict = self.gpg_verify(&sig_file, file, trust_all).await;
        if !from_beside {
            match &verdict {
                Ok(()) => {
                    if let Err(e) = tokio::fs::rename(&sig_file, &beside).await {
                        tracing::warn!("cannot put the signature at {}: {e}", beside.display());
                        let _ = tokio::fs::remove_file(&sig_file).await;
                    }
                }
                Err(_) => {
                    let _ = tokio::fs::remove_file(&sig_file).await;
                }
            }
        }
        verdict.map_err(|(check, why)| untrusted(check, format!("{why} (origin: {origin})")))
    }

    /// `gpg --verify SIG FILE` on pacman's keyring, judged from gpg's status lines.
    async fn gpg_verify(
        &self,
        sig: &Path,
        file: &Path,
        trust_all: bool,
    ) -> Result<(), (TrustCheck, String)> {
        let mut cmd = tokio::process::Command::new(&self.gpg_program);
        cmd.arg("--homedir")
            .arg(&self.gpg_dir)
            .args([
                "--batch",
                "--no-tty",
                "--no-auto-key-retrieve",
                "--no-permission-warning",
                "--status-fd",
                "1",
                "--verify",
                "--",
            ])
            .arg(sig)
            .arg(file)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(GPG_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err((
                    TrustCheck::Unverifiable,
                    format!(
                        "gpg did not finish checking the signature within {} s",
                        GPG_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(Err(e)) => {
                return Err((
                    TrustCheck::Unverifiable,
                    format!(
                        "cannot run {} to check the signature ({e}): install gnupg",
                        self.gpg_program.display()
                    ),
                ));
            }
            Ok(Ok(out)) => out,
        };
        let status = String::from_utf8_lossy(&out.stdout);
        judge(&status, out.status.success(), trust_all).map_err(|(check, why)| {
            let gpg_dir = self.gpg_dir.display();
            let hint = match check {
                TrustCheck::UntrustedKey => format!(
                    "; if you trust this packager, run `pacman-key --gpgdir {gpg_dir} --lsign-key KEYID`"
                ),
                TrustCheck::BadSignature if why.contains("not in pacman's keyring") => format!(
                    "; add the packager's key with `pacman-key --gpgdir {gpg_dir} --recv-keys KEYID` and `--lsign-key KEYID`, or update archlinux-keyring"
                ),
                _ => String::new(),
            };
            (check, format!("{why}{hint}"))
        })
    }
}

/// `FILE.sig.pacpool-part`: where a signature from a database or manifest waits while checked.
fn temp_sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig.pacpool-part");
    s.into()
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Judges gpg's `--status-fd` output: every signature good, from a valid key, trusted enough.
fn judge(status: &str, exit_ok: bool, trust_all: bool) -> Result<(), (TrustCheck, String)> {
    let mut good = 0usize;
    let mut trusted = 0usize;
    let mut key = String::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let keyword = words.next().unwrap_or_default();
        let arg = words.next().unwrap_or_default();
        let bad = |why: &str| Err((TrustCheck::BadSignature, format!("{why} (key {arg})")));
        match keyword {
            "BADSIG" => return bad("the signature does not match the file"),
            "EXPKEYSIG" => return bad("the signing key has expired"),
            "REVKEYSIG" => return bad("the signing key has been revoked"),
            "EXPSIG" => return bad("the signature has expired"),
            "NO_PUBKEY" => return bad("the signing key is not in pacman's keyring"),
            "ERRSIG" => return bad("the signature cannot be checked"),
            "GOODSIG" => {}
            "VALIDSIG" => {
                good += 1;
                key = arg.to_owned();
            }
            "TRUST_ULTIMATE" | "TRUST_FULLY" => trusted += 1,
            "TRUST_MARGINAL" | "TRUST_UNDEFINED" if trust_all => trusted += 1,
            "TRUST_NEVER" => {
                return Err((
                    TrustCheck::UntrustedKey,
                    format!("the signing key {key} is marked as never trusted"),
                ));
            }
            _ => {}
        }
    }
    if good == 0 || !exit_ok {
        return Err((
            TrustCheck::BadSignature,
            "the signature does not verify".into(),
        ));
    }
    if trusted < good {
        return Err((
            TrustCheck::UntrustedKey,
            format!(
                "the signature is good, but its key {key} is not trusted by pacman's keyring (SigLevel TrustedOnly)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG ABCD pacpool tests\n\
                        [GNUPG:] VALIDSIG FPR 2026-12-05 1 0 4 0 22 10 00 FPR\n";

    #[test]
    fn judging_gpg_status() {
        let full = format!("{GOOD}[GNUPG:] TRUST_FULLY 0 pgp\n");
        assert_eq!(judge(&full, true, false), Ok(()));
        let undefined = format!("{GOOD}[GNUPG:] TRUST_UNDEFINED 0 pgp\n");
        assert_eq!(
            judge(&undefined, true, false).unwrap_err().0,
            TrustCheck::UntrustedKey
        );
        assert_eq!(judge(&undefined, true, true), Ok(()));
        let never = format!("{GOOD}[GNUPG:] TRUST_NEVER 0 pgp\n");
        assert_eq!(
            judge(&never, true, true).unwrap_err().0,
            TrustCheck::UntrustedKey
        );
        for bad in [
            "[GNUPG:] BADSIG ABCD x\n",
            "[GNUPG:] ERRSIG ABCD 1 8 00 1 9 -\n[GNUPG:] NO_PUBKEY ABCD\n",
            "[GNUPG:] EXPKEYSIG ABCD x\n[GNUPG:] VALIDSIG FPR\n[GNUPG:] TRUST_FULLY 0 pgp\n",
            "[GNUPG:] REVKEYSIG ABCD x\n[GNUPG:] VALIDSIG FPR\n[GNUPG:] TRUST_FULLY 0 pgp\n",
            "",
        ] {
            assert_eq!(
                judge(bad, false, true).unwrap_err().0,
                TrustCheck::BadSignature,
                "{bad}"
            );
        }
        // Two signatures, one of them from an untrusted key.
        let two = format!("{full}{GOOD}[GNUPG:] TRUST_UNDEFINED 0 pgp\n");
        assert_eq!(
            judge(&two, true, false).unwrap_err().0,
            TrustCheck::UntrustedKey
        );
        // A good exit code alone proves nothing.
        assert!(judge("", true, false).is_err());
    }
}
