//! Applying a [`Plan`] with the real pacman, through [`crate::exec`].
//!
//! # Refusals (nothing runs)
//! A plan with conflicts, or one whose removals exceed the policy's cap without
//! [`ApplyOptions::confirm_removals`], is refused before anything is fetched or run.
//! Protected packages are not checked here: the planner never puts them in a plan's removals
//! (it reports them as skipped) and owns the policy; this module does not get it.
//!
//! # Transactions
//! The plan's actions become as few pacman transactions as pacman allows, in the plan's
//! order (see [`transactions`]):
//! 1. the removals at the start of the plan (those an install conflicts with): one `-R`;
//! 2. packages a sync repository offers in exactly the wanted version: one
//!    `-S --needed -- repo/name=version…` (pinned, see [`SyncTarget`]) for upgrades,
//!    downgrades and new explicit packages (pacman keeps an upgraded package's install
//!    reason), then one `-S --needed --asdeps` for new dependencies (often a no-op: pacman
//!    already pulled them in as dependencies of the first);
//! 3. package files (cache, or fetched from the archive): `-U -- file…`, then
//!    `-U --asdeps -- file…` for new dependencies;
//! 4. the other removals: one `-R`;
//! 5. install reasons: `-D --asdeps -- …`, `-D --asexplicit -- …`.
//!
//! Archive packages are fetched first, before any transaction, into
//! [`ApplyOptions::archive_dir`] as `FILE.part`, checked (the file name names the planned
//! package and version; the content starts with the zstd or xz magic its extension promises),
//! then renamed into place; `URL.sig` is fetched next to it when the archive has one, so
//! pacman verifies the signature under its `LocalFileSigLevel`. `http://` and `file://`
//! (absolute paths, no percent-decoding) URLs are supported; `https://` needs a TLS backend
//! this build does not have. Before anything runs, every cache file the plan names must still
//! exist.
//!
//! # Cancellation and failure
//! Cancellation is honoured until the first pacman transaction starts (while fetching and
//! while waiting for pacman's lock): then nothing has changed. From then on the remaining
//! transactions run to the end: stopping between them would leave a state nobody asked for.
//! When a transaction fails, the ones after it are not run, and the error carries an
//! [`ApplyReport`] listing every package that did not reach its target. A failed transaction
//! has usually changed nothing (pacman checks dependencies, files and package integrity
//! before it commits), but a failure during the commit can leave part of it done: the caller
//! re-snapshots and compares with the target rather than trusting any report.
//!
//! Known limit: a leading removal (one an install conflicts with) that another installed
//! package depends on fails, since pacman checks dependencies per transaction; replacing a
//! package in one step needs pacman's interactive conflict question, which `--noconfirm`
//! answers "no".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cache::parse_package_filename;
use crate::exec::{self, ExecError, PacmanEvent, PacmanOp, PacmanSettings, SyncTarget};
use crate::localdb::Reason;
use crate::names::{PkgName, PkgVersion};
use crate::plan::{Action, Conflict, Plan, RemovalCapExceeded, Source};

/// Where downloaded archive packages go when [`ApplyOptions::archive_dir`] and
/// [`PacmanSettings::cachedir`] are unset: pacman's default cache.
pub const DEFAULT_ARCHIVE_DIR: &str = "/var/cache/pacman/pkg/";

/// Choices made by whoever asked for the apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplyOptions {
    /// The user confirmed removals above the policy's cap.
    pub confirm_removals: bool,
    /// Where packages fetched from the archive are stored before `pacman -U`: unset means
    /// [`PacmanSettings::cachedir`], else [`DEFAULT_ARCHIVE_DIR`].
    pub archive_dir: Option<PathBuf>,
}

impl ApplyOptions {
    fn resolved_archive_dir(&self, settings: &PacmanSettings) -> PathBuf {
        self.archive_dir
            .clone()
            .or_else(|| settings.cachedir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ARCHIVE_DIR))
    }
}

/// What [`apply`] reports while it works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ApplyEvent {
    /// Fetching `name` from the archive.
    Fetching { name: PkgName, url: String },
    /// Transaction `index` (0-based) of `total` starts.
    Transaction {
        index: usize,
        total: usize,
        command: String,
    },
    /// pacman's progress within transaction `index`.
    Pacman { index: usize, event: PacmanEvent },
}

/// One pacman transaction of an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub op: PacmanOp,
    /// The plan's packages this transaction brings to their target.
    pub packages: Vec<PkgName>,
}

/// How one transaction went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum TransactionOutcome {
    Succeeded,
    Failed {
        error: String,
    },
    /// An earlier transaction failed.
    NotRun,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionReport {
    /// The pacman command line.
    pub command: String,
    pub packages: Vec<PkgName>,
    #[serde(flatten)]
    pub outcome: TransactionOutcome,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub transactions: Vec<TransactionReport>,
    /// Packages that did not reach their target, with why (empty on success).
    pub failures: Vec<(PkgName, String)>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "the plan has {} conflict(s), nothing was changed: {}",
        .0.len(),
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Conflicts(Vec<Conflict>),
    #[error(
        "the plan removes {} packages, more than the removal cap of {}: confirm the removals to go ahead; nothing was changed",
        .0.removals, .0.cap
    )]
    NeedsConfirmation(RemovalCapExceeded),
    #[error("the plan cannot be applied, nothing was changed: {why}")]
    InvalidPlan { why: String },
    #[error("cannot fetch {name} from {url}: {why}; nothing was changed")]
    Fetch {
        name: PkgName,
        url: String,
        why: String,
    },
    /// pacman was never started (busy lock, cancelled, program missing): nothing changed.
    #[error("{source}; nothing was changed")]
    NotStarted {
        #[source]
        source: ExecError,
    },
    /// A transaction failed after pacman had started; later ones were not run.
    #[error("{}", failed_message(report))]
    Failed { report: Box<ApplyReport> },
}

fn failed_message(report: &ApplyReport) -> String {
    let failed = report
        .transactions
        .iter()
        .enumerate()
        .find_map(|(i, t)| match &t.outcome {
            TransactionOutcome::Failed { error } => Some((i, error.as_str())),
            _ => None,
        });
    let names: Vec<&str> = report.failures.iter().map(|(n, _)| n.as_str()).collect();
    match failed {
        Some((i, error)) => format!(
            "pacman transaction {} of {} failed ({error}); not at their target: {}",
            i + 1,
            report.transactions.len(),
            names.join(", ")
        ),
        None => format!("not at their target: {}", names.join(", ")),
    }
}

/// A file to fetch from the archive before the transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetch {
    name: PkgName,
    url: String,
    dest: PathBuf,
}

/// Where an archive URL's file goes, after checking that its file name is the package and
/// version the plan wants.
fn archive_dest(
    name: &PkgName,
    version: &PkgVersion,
    url: &str,
    dir: &Path,
) -> Result<PathBuf, ApplyError> {
    let file = url.rsplit('/').next().unwrap_or_default();
    match parse_package_filename(file) {
        Some((n, v, _)) if n == *name && v == *version => Ok(dir.join(file)),
        _ => Err(ApplyError::InvalidPlan {
            why: format!("archive URL {url} does not name package {name} {version}"),
        }),
    }
}

/// A plan cut into transactions, with what must be fetched or present before they run.
#[derive(Debug)]
struct Grouped {
    fetches: Vec<Fetch>,
    /// Cache files the transactions install, checked before anything runs.
    cached: Vec<(PkgName, PathBuf)>,
    transactions: Vec<Transaction>,
}

fn group(plan: &Plan, archive_dir: &Path) -> Result<Grouped, ApplyError> {
    let mut fetches = Vec::new();
    let mut cached = Vec::new();
    let mut leading: Vec<PkgName> = Vec::new();
    let mut trailing: Vec<PkgName> = Vec::new();
    // [plain, asdeps] each.
    let mut repo: [Vec<SyncTarget>; 2] = Default::default();
    let mut files: [Vec<(PathBuf, PkgName)>; 2] = Default::default();
    let mut marks: [Vec<PkgName>; 2] = Default::default();
    let mut seen_other = false;
    for a in &plan.actions {
        let (name, version, source, new_dep) = match a {
            Action::Remove { name, .. } => {
                if seen_other {
                    trailing.push(name.clone());
                } else {
                    leading.push(name.clone());
                }
                continue;
            }
            Action::MarkDependency { name } => {
                seen_other = true;
                marks[0].push(name.clone());
                continue;
            }
            Action::MarkExplicit { name } => {
                seen_other = true;
                marks[1].push(name.clone());
                continue;
            }
            Action::Install {
                name,
                version,
                reason,
                source,
                ..
            } => (name, version, source, *reason == Reason::Dependency),
            Action::Upgrade {
                name, to, source, ..
            }
            | Action::Downgrade {
                name, to, source, ..
            } => (name, to, source, false),
        };
        seen_other = true;
        let slot = usize::from(new_dep);
        match source {
            Source::Repo { repo: r } => repo[slot].push(SyncTarget {
                repo: r.clone(),
                name: name.clone(),
                version: version.clone(),
            }),
            Source::Cache { path } => {
                cached.push((name.clone(), path.clone()));
                files[slot].push((path.clone(), name.clone()));
            }
            Source::Archive { url } => {
                let dest = archive_dest(name, version, url, archive_dir)?;
                fetches.push(Fetch {
                    name: name.clone(),
                    url: url.clone(),
                    dest: dest.clone(),
                });
                files[slot].push((dest, name.clone()));
            }
        }
    }
    let reason_of = |slot: usize| (slot == 1).then_some(Reason::Dependency);
    let mut out = Vec::new();
    let mut push = |op: PacmanOp, packages: Vec<PkgName>| {
        if !packages.is_empty() {
            out.push(Transaction { op, packages });
        }
    };
    push(
        PacmanOp::Remove {
            names: leading.clone(),
        },
        leading,
    );
    for (slot, targets) in repo.into_iter().enumerate() {
        let packages = targets.iter().map(|t| t.name.clone()).collect();
        push(
            PacmanOp::SyncInstall {
                targets,
                reason: reason_of(slot),
            },
            packages,
        );
    }
    for (slot, targets) in files.into_iter().enumerate() {
        let (files, packages) = targets.into_iter().unzip();
        push(
            PacmanOp::InstallFiles {
                files,
                reason: reason_of(slot),
            },
            packages,
        );
    }
    push(
        PacmanOp::Remove {
            names: trailing.clone(),
        },
        trailing,
    );
    for (names, reason) in marks
        .into_iter()
        .zip([Reason::Dependency, Reason::Explicit])
    {
        push(
            PacmanOp::MarkReason {
                names: names.clone(),
                reason,
            },
            names,
        );
    }
    for t in &out {
        t.op.validate()
            .map_err(|e| ApplyError::InvalidPlan { why: e.to_string() })?;
    }
    Ok(Grouped {
        fetches,
        cached,
        transactions: out,
    })
}

/// The pacman transactions that would apply `plan`, in order (archive files named by where
/// they will be stored in `archive_dir`). For previews; [`apply`] runs exactly these.
pub fn transactions(plan: &Plan, archive_dir: &Path) -> Result<Vec<Transaction>, ApplyError> {
    group(plan, archive_dir).map(|g| g.transactions)
}

fn refuse(plan: &Plan, opts: &ApplyOptions) -> Result<(), ApplyError> {
    if !plan.conflicts.is_empty() {
        return Err(ApplyError::Conflicts(plan.conflicts.clone()));
    }
    if let Some(cap) = &plan.needs_confirmation
        && !opts.confirm_removals
    {
        return Err(ApplyError::NeedsConfirmation(cap.clone()));
    }
    Ok(())
}

/// Applies `plan` with pacman. See the module docs for the refusals, the transactions, and
/// what cancellation means.
pub async fn apply(
    plan: &Plan,
    settings: &PacmanSettings,
    opts: &ApplyOptions,
    progress: &mut (impl FnMut(ApplyEvent) + Send),
    cancel: &watch::Receiver<bool>,
) -> Result<ApplyReport, ApplyError> {
    refuse(plan, opts)?;
    let Grouped {
        fetches,
        cached,
        transactions,
    } = group(plan, &opts.resolved_archive_dir(settings))?;
    // A cache cleaned since planning would otherwise fail halfway through the transactions.
    for (name, path) in &cached {
        if !tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file()) {
            return Err(ApplyError::InvalidPlan {
                why: format!(
                    "the cache file {} for {name} is gone (cache cleaned since planning?): plan again",
                    path.display()
                ),
            });
        }
    }
    for f in &fetches {
        progress(ApplyEvent::Fetching {
            name: f.name.clone(),
            url: f.url.clone(),
        });
        match fetch(&f.url, &f.dest, cancel).await {
            Ok(()) => {}
            Err(FetchError::Cancelled) => {
                return Err(ApplyError::NotStarted {
                    source: ExecError::Cancelled,
                });
            }
            Err(FetchError::Failed(why)) => {
                return Err(ApplyError::Fetch {
                    name: f.name.clone(),
                    url: f.url.clone(),
                    why,
                });
            }
        }
    }
    let mut report = ApplyReport {
        transactions: transactions
            .iter()
            .map(|t| TransactionReport {
                command: t.op.display(settings),
                packages: t.packages.clone(),
                outcome: TransactionOutcome::NotRun,
            })
            .collect(),
        failures: Vec::new(),
    };
    // After the first transaction has started, the rest run to the end (see module docs).
    let (_never_tx, never) = watch::channel(false);
    let total = transactions.len();
    for (index, t) in transactions.iter().enumerate() {
        progress(ApplyEvent::Transaction {
            index,
            total,
            command: report.transactions[index].command.clone(),
        });
        let cancel = if index == 0 { cancel } else { &never };
        let mut forward = |event| progress(ApplyEvent::Pacman { index, event });
        match exec::run(&t.op, settings, &mut forward, cancel).await {
            Ok(_) => report.transactions[index].outcome = TransactionOutcome::Succeeded,
            Err(
                source @ (ExecError::Busy { .. }
                | ExecError::Cancelled
                | ExecError::Spawn { .. }
                | ExecError::Invalid { .. }),
            ) if index == 0 => return Err(ApplyError::NotStarted { source }),
            Err(e) => {
                let error = e.to_string();
                report.transactions[index].outcome = TransactionOutcome::Failed {
                    error: error.clone(),
                };
                let mut seen = std::collections::BTreeSet::new();
                for (i, later) in transactions.iter().enumerate().skip(index) {
                    let why = if i == index {
                        error.clone()
                    } else {
                        "not attempted: an earlier pacman transaction failed".to_owned()
                    };
                    for p in &later.packages {
                        if seen.insert(p.clone()) {
                            report.failures.push((p.clone(), why.clone()));
                        }
                    }
                }
                return Err(ApplyError::Failed {
                    report: Box::new(report),
                });
            }
        }
    }
    Ok(report)
}

enum FetchError {
    Cancelled,
    Failed(String),
}

/// Magic bytes of the compressions archive packages use, by file extension.
const MAGIC: &[(&str, &[u8])] = &[
    (".pkg.tar.zst", &[0x28, 0xB5, 0x2F, 0xFD]),
    (".pkg.tar.xz", &[0xFD, b'7', b'z', b'X', b'Z', 0x00]),
];

async fn fetch(url: &str, dest: &Path, cancel: &watch::Receiver<bool>) -> Result<(), FetchError> {
    if *cancel.borrow() {
        return Err(FetchError::Cancelled);
    }
    let file_name = dest
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let Some(magic) = MAGIC
        .iter()
        .find(|(ext, _)| file_name.ends_with(ext))
        .map(|(_, m)| *m)
    else {
        return Err(FetchError::Failed(
            "only .pkg.tar.zst and .pkg.tar.xz packages are fetched".into(),
        ));
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| FetchError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let part = dir.join(format!("{file_name}.part"));
    let mut cancel = cancel.clone();
    let download = async {
        download(url, &part).await?;
        check_magic(&part, magic).await?;
        fetch_signature(url, dest).await;
        Ok(())
    };
    let result = tokio::select! {
        r = download => r.map_err(FetchError::Failed),
        _ = cancelled(&mut cancel) => Err(FetchError::Cancelled),
    };
    let result = match result {
        Ok(()) => tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| FetchError::Failed(format!("cannot move it to {}: {e}", dest.display()))),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

/// Fetches `URL.sig` to `DEST.sig` when the archive has it, so that pacman checks the
/// package's signature under its `LocalFileSigLevel` (the Arch Linux Archive signs every
/// package). Best effort: without a signature file pacman's SigLevel decides alone.
async fn fetch_signature(url: &str, dest: &Path) {
    let with = |suffix: &str| {
        let mut s = dest.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let (sig, part) = (with(".sig"), with(".sig.part"));
    // A stale signature next to a new download would make pacman refuse it.
    let _ = tokio::fs::remove_file(&sig).await;
    match download(&format!("{url}.sig"), &part).await {
        Ok(()) => {
            if let Err(e) = tokio::fs::rename(&part, &sig).await {
                tracing::warn!("cannot move {} into place: {e}", part.display());
            }
        }
        Err(e) => tracing::debug!("no signature for {url}: {e}"),
    }
    let _ = tokio::fs::remove_file(&part).await;
}

/// Resolves when a cancel is requested; never if the sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn download(url: &str, part: &Path) -> Result<(), String> {
    let write_err = |e: std::io::Error| format!("cannot write {}: {e}", part.display());
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err("a file:// URL needs an absolute path".into());
        }
        tokio::fs::copy(path, part)
            .await
            .map_err(|e| format!("cannot copy {path}: {e}"))?;
        return Ok(());
    }
    if url.starts_with("https://") {
        return Err(
            "https:// needs TLS support, which this build does not include: use an http:// or file:// archive"
                .into(),
        );
    }
    if !url.starts_with("http://") {
        return Err("only http:// and file:// archive URLs are supported".into());
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?;
    let mut out = tokio::fs::File::create(part).await.map_err(write_err)?;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        out.write_all(&chunk).await.map_err(write_err)?;
    }
    out.flush().await.map_err(write_err)?;
    out.sync_all().await.map_err(write_err)?;
    Ok(())
}

async fn check_magic(path: &Path, magic: &[u8]) -> Result<(), String> {
    let mut head = vec![0u8; magic.len()];
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let n = f.read(&mut head).await.unwrap_or(0);
    if n < magic.len() || head != magic {
        return Err("the download is not a compressed package (wrong magic bytes)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PkgName {
        s.parse().unwrap()
    }
    fn v(s: &str) -> PkgVersion {
        s.parse().unwrap()
    }
    fn repo() -> Source {
        Source::Repo {
            repo: "core".parse().unwrap(),
        }
    }

    fn plan(actions: Vec<Action>) -> Plan {
        Plan {
            actions,
            conflicts: vec![],
            skipped: vec![],
            needs_confirmation: None,
        }
    }

    fn show(ts: &[Transaction]) -> Vec<String> {
        let s = PacmanSettings::default();
        ts.iter()
            .map(|t| {
                t.op.display(&s)
                    .replace("pacman ", "")
                    .replace(" --noconfirm --color never", "")
                    .replace(" --noprogressbar", "")
            })
            .collect()
    }

    #[test]
    fn groups_in_plan_order() {
        let arch = || "any".parse().unwrap();
        let p = plan(vec![
            Action::Remove {
                name: n("old"),
                version: v("1-1"),
            },
            Action::Downgrade {
                name: n("down"),
                from: v("2-1"),
                to: v("1-1"),
                arch: arch(),
                source: Source::Cache {
                    path: "/c/down-1-1-any.pkg.tar.zst".into(),
                },
            },
            Action::Install {
                name: n("dep"),
                version: v("1-1"),
                arch: arch(),
                reason: Reason::Dependency,
                source: repo(),
            },
            Action::Install {
                name: n("new"),
                version: v("1-1"),
                arch: arch(),
                reason: Reason::Explicit,
                source: repo(),
            },
            Action::Install {
                name: n("olddep"),
                version: v("0.5-1"),
                arch: arch(),
                reason: Reason::Dependency,
                source: Source::Archive {
                    url: "http://a/o/olddep/olddep-0.5-1-any.pkg.tar.zst".into(),
                },
            },
            Action::Upgrade {
                name: n("up"),
                from: v("1-1"),
                to: v("2-1"),
                arch: arch(),
                source: repo(),
            },
            Action::Remove {
                name: n("gone"),
                version: v("1-1"),
            },
            Action::Remove {
                name: n("gone2"),
                version: v("1-1"),
            },
            Action::MarkDependency { name: n("a") },
            Action::MarkExplicit { name: n("b") },
            Action::MarkDependency { name: n("c") },
        ]);
        let Grouped {
            fetches,
            cached,
            transactions: ts,
        } = group(&p, Path::new("/arch")).unwrap();
        assert_eq!(
            cached,
            [(n("down"), PathBuf::from("/c/down-1-1-any.pkg.tar.zst"))]
        );
        assert_eq!(
            show(&ts),
            [
                "-R -- old",
                "-S --needed -- core/new=1-1 core/up=2-1",
                "-S --needed --asdeps -- core/dep=1-1",
                "-U -- /c/down-1-1-any.pkg.tar.zst",
                "-U --asdeps -- /arch/olddep-0.5-1-any.pkg.tar.zst",
                "-R -- gone gone2",
                "-D --asdeps -- a c",
                "-D --asexplicit -- b",
            ]
        );
        assert_eq!(
            fetches,
            [Fetch {
                name: n("olddep"),
                url: "http://a/o/olddep/olddep-0.5-1-any.pkg.tar.zst".into(),
                dest: "/arch/olddep-0.5-1-any.pkg.tar.zst".into()
            }]
        );
        // Only removals: one transaction.
        let only = plan(vec![
            Action::Remove {
                name: n("x"),
                version: v("1-1"),
            },
            Action::Remove {
                name: n("y"),
                version: v("1-1"),
            },
        ]);
        assert_eq!(
            show(&transactions(&only, Path::new("/a")).unwrap()),
            ["-R -- x y"]
        );
        assert!(
            transactions(&plan(vec![]), Path::new("/a"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn archive_urls_must_name_the_package() {
        let p = plan(vec![Action::Install {
            name: n("foo"),
            version: v("1-1"),
            arch: "any".parse().unwrap(),
            reason: Reason::Explicit,
            source: Source::Archive {
                url: "http://a/f/foo/evil-1-1-any.pkg.tar.zst".into(),
            },
        }]);
        let err = transactions(&p, Path::new("/a")).unwrap_err();
        assert!(
            err.to_string().contains("does not name package foo 1-1"),
            "{err}"
        );
    }
}
