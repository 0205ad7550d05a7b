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
//! 0. keyring packages (`archlinux-keyring`, any `*-keyring`) that change, alone and first
//!    (`-S`, then `-U`), so the other packages are checked with the new keys;
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
//! [`ApplyOptions::archive_dir`] as `FILE.part` (at most the size the target's manifest states,
//! else [`ApplyOptions::max_download_size`]), checked (the file name names the planned package
//! and version; the content starts with the zstd or xz magic its extension promises), with
//! `URL.sig` fetched beside it when the archive has one. `https://` (the system's trust store
//! plus [`ApplyOptions::ca_file`]), `http://` and `file://` (absolute paths, no
//! percent-decoding) URLs are supported. Before anything runs, every cache file the plan names
//! must still exist.
//!
//! # Trust
//! Every file that `pacman -U` will install, fetched or cached, passes the
//! [`crate::trust::TrustRule`] first: digest, size and signature as pacman would check them
//! for the repository the package comes from, whatever `LocalFileSigLevel` says. A fetched
//! file that fails is deleted; any failure refuses the whole apply before pacman runs
//! ([`ApplyError::Untrusted`]). Only then is a download renamed into place.
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
use crate::manifest::sig_path;
use crate::names::{PkgName, PkgVersion};
use crate::plan::{Action, Conflict, Plan, RemovalCapExceeded, Source};
use crate::trust::{TrustCheck, TrustRule, Untrusted};

/// Largest package download when the target's manifest states no size (4 GiB: above the
/// largest package in Arch's repositories).
pub const DEFAULT_MAX_DOWNLOAD_SIZE: u64 = 4 << 30;

/// Largest `.sig` download.
const MAX_SIGNATURE_DOWNLOAD: u64 = crate::manifest::MAX_SIGNATURE_BYTES as u64;

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
    /// Largest download when the manifest states no size: unset means
    /// [`DEFAULT_MAX_DOWNLOAD_SIZE`].
    pub max_download_size: Option<u64>,
    /// A CA certificate (PEM) trusted for `https://` downloads besides the system's store.
    pub ca_file: Option<PathBuf>,
    /// This endpoint's token, sent to the pool's repository (never to an archive).
    #[serde(skip)]
    pub pool_token: Option<String>,
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
    /// Files pacman would not trust from where they come; nothing was installed.
    #[error(
        "untrusted-package: {}; nothing was changed",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Untrusted(Vec<Untrusted>),
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
    version: PkgVersion,
    /// Tried in order (the next only when one cannot be fetched): the URL, and whether it is
    /// the pool's repository (which gets [`ApplyOptions::pool_token`]).
    urls: Vec<(String, bool)>,
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
    cached: Vec<(PkgName, PkgVersion, PathBuf)>,
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
    // Keyring packages (`archlinux-keyring`, `*-keyring`), the same way, run first.
    let mut keyring_repo: [Vec<SyncTarget>; 2] = Default::default();
    let mut keyring_files: [Vec<(PathBuf, PkgName)>; 2] = Default::default();
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
        let keyring = crate::preflight::is_keyring(name.as_str());
        let (repo, files) = if keyring {
            (&mut keyring_repo, &mut keyring_files)
        } else {
            (&mut repo, &mut files)
        };
        match source {
            Source::Repo { repo: r } => repo[slot].push(SyncTarget {
                repo: r.clone(),
                name: name.clone(),
                version: version.clone(),
            }),
            Source::Cache { path } => {
                cached.push((name.clone(), version.clone(), path.clone()));
                files[slot].push((path.clone(), name.clone()));
            }
            Source::Archive { url } => {
                let dest = archive_dest(name, version, url, archive_dir)?;
                fetches.push(Fetch {
                    name: name.clone(),
                    version: version.clone(),
                    urls: vec![(url.clone(), false)],
                    dest: dest.clone(),
                });
                files[slot].push((dest, name.clone()));
            }
            Source::Pool { url, archive } => {
                let dest = archive_dest(name, version, url, archive_dir)?;
                let mut urls = vec![(url.clone(), true)];
                if let Some(a) = archive {
                    archive_dest(name, version, a, archive_dir)?;
                    urls.push((a.clone(), false));
                }
                fetches.push(Fetch {
                    name: name.clone(),
                    version: version.clone(),
                    urls,
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
    let sync_installs = |repo: [Vec<SyncTarget>; 2]| {
        repo.into_iter().enumerate().map(|(slot, targets)| {
            let packages = targets.iter().map(|t| t.name.clone()).collect();
            (
                PacmanOp::SyncInstall {
                    targets,
                    reason: reason_of(slot),
                },
                packages,
            )
        })
    };
    let file_installs = |files: [Vec<(PathBuf, PkgName)>; 2]| {
        files.into_iter().enumerate().map(|(slot, targets)| {
            let (files, packages) = targets.into_iter().unzip();
            (
                PacmanOp::InstallFiles {
                    files,
                    reason: reason_of(slot),
                },
                packages,
            )
        })
    };
    // Keyrings first, alone: the other packages' signatures may need their new keys (as
    // archinstall and the Arch wiki do it).
    for (op, packages) in sync_installs(keyring_repo).chain(file_installs(keyring_files)) {
        push(op, packages);
    }
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

/// Applies `plan` with pacman. See the module docs for the refusals, the transactions, the
/// trust rule, and what cancellation means.
pub async fn apply(
    plan: &Plan,
    settings: &PacmanSettings,
    opts: &ApplyOptions,
    trust: &TrustRule,
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
    for (name, _, path) in &cached {
        if !tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file()) {
            return Err(ApplyError::InvalidPlan {
                why: format!(
                    "the cache file {} for {name} is gone (cache cleaned since planning?): plan again",
                    path.display()
                ),
            });
        }
    }
    let client = if fetches
        .iter()
        .any(|f| f.urls.iter().any(|(u, _)| u.starts_with("http")))
    {
        Some(
            download_client(opts.ca_file.as_deref()).map_err(|why| ApplyError::Fetch {
                name: fetches[0].name.clone(),
                url: fetches[0].urls[0].0.clone(),
                why,
            })?,
        )
    } else {
        None
    };
    let mut untrusted = Vec::new();
    // Downloads wait as `.part` files until every file has passed the trust rule.
    let mut staged = Vec::new();
    // (name, version, file to check, file name to show) of each download.
    let mut fetched_ids = Vec::new();
    let discard = |staged: &[(PathBuf, PathBuf)]| {
        for (part, _) in staged {
            let _ = std::fs::remove_file(part);
            let _ = std::fs::remove_file(sig_path(part));
        }
    };
    for f in &fetches {
        match fetch_checked(client.as_ref(), f, opts, trust, progress, cancel, ".part").await {
            Ok(part) => {
                fetched_ids.push((
                    f.name.clone(),
                    f.version.clone(),
                    part.clone(),
                    f.dest.clone(),
                ));
                staged.push((part, f.dest.clone()));
            }
            Err(FetchFailure::Untrusted(u)) => untrusted.push(u),
            Err(FetchFailure::Fatal(e)) => {
                discard(&staged);
                return Err(e);
            }
        }
    }
    for (name, version, path) in &cached {
        if let Err(u) = trust
            .check(name, version, path, crate::trust::FileOrigin::Cache)
            .await
        {
            untrusted.push(u);
        }
    }
    // A valid signature proves who made the bytes, not that they are the planned package: a
    // signed old `openssl` renamed to `foo-1-1-any.pkg.tar.zst` would pass it, and `pacman -U`
    // installs what `.PKGINFO` says. pacman itself says what each file holds.
    let planned = fetched_ids.into_iter().chain(
        cached
            .iter()
            .map(|(n, v, p)| (n.clone(), v.clone(), p.clone(), p.clone())),
    );
    for (name, version, file, shown) in planned {
        let wrong = |why: String| Untrusted {
            name: name.clone(),
            version: version.clone(),
            file: file_name(&shown),
            check: TrustCheck::WrongPackage,
            why,
        };
        match exec::package_file_identity(settings, &file).await {
            Ok((n, v)) if n == name.as_str() && v == version.as_str() => {}
            Ok((n, v)) => untrusted.push(wrong(format!(
                "the file holds {n} {v}, not {name} {version}: delete it and sync again"
            ))),
            // This is the only check that the bytes are the planned package: a file pacman
            // cannot describe is not installed either.
            Err(why) => untrusted.push(wrong(format!(
                "pacman cannot tell which package the file holds ({why}): delete it and sync again"
            ))),
        }
    }
    if !untrusted.is_empty() {
        discard(&staged);
        for u in &untrusted {
            tracing::warn!(package = %u.name, version = %u.version, check = ?u.check, "refused an untrusted package file: {}", u.why);
        }
        return Err(ApplyError::Untrusted(untrusted));
    }
    for (part, dest) in &staged {
        if let Err(e) = keep(part, dest).await {
            discard(&staged);
            return Err(ApplyError::InvalidPlan {
                why: format!("cannot move {} into place: {e}", dest.display()),
            });
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

/// Why one file could not be fetched and checked.
enum FetchFailure {
    /// It was fetched and failed the trust rule (its download is deleted).
    Untrusted(Untrusted),
    /// Nothing usable: cancelled, too large, or no source had it.
    Fatal(ApplyError),
}

/// Fetches `f` from its sources in order into `DEST{suffix}` and checks it with the trust
/// rule; returns the checked file, which the caller renames into place.
async fn fetch_checked(
    client: Option<&reqwest::Client>,
    f: &Fetch,
    opts: &ApplyOptions,
    trust: &TrustRule,
    progress: &mut (impl FnMut(ApplyEvent) + Send),
    cancel: &watch::Receiver<bool>,
    suffix: &str,
) -> Result<PathBuf, FetchFailure> {
    // The manifest's size tightens this machine's own bound; it never widens it.
    let own = opts.max_download_size.unwrap_or(DEFAULT_MAX_DOWNLOAD_SIZE);
    let limit = trust
        .manifest_entry(&f.name, &f.version)
        .and_then(|e| e.size)
        .map_or(own, |size| size.min(own));
    let mut failures = Vec::new();
    let mut refused: Option<Untrusted> = None;
    for (url, is_pool) in &f.urls {
        progress(ApplyEvent::Fetching {
            name: f.name.clone(),
            url: url.clone(),
        });
        let token = if *is_pool {
            opts.pool_token.as_deref()
        } else {
            None
        };
        let part = match fetch(client, url, token, &f.dest, suffix, limit, cancel).await {
            Ok(part) => part,
            Err(FetchError::Failed(why)) => {
                tracing::debug!(package = %f.name, url, "cannot fetch: {why}");
                failures.push(format!("{url}: {why}"));
                continue;
            }
            Err(FetchError::TooLarge(why)) => {
                return Err(FetchFailure::Fatal(ApplyError::Untrusted(vec![
                    Untrusted {
                        name: f.name.clone(),
                        version: f.version.clone(),
                        file: file_name(&f.dest),
                        check: TrustCheck::Size,
                        why,
                    },
                ])));
            }
            Err(FetchError::Cancelled) => {
                return Err(FetchFailure::Fatal(ApplyError::NotStarted {
                    source: ExecError::Cancelled,
                }));
            }
        };
        match trust
            .check(
                &f.name,
                &f.version,
                &part,
                crate::trust::FileOrigin::Download,
            )
            .await
        {
            Ok(()) => return Ok(part),
            Err(mut u) => {
                let _ = tokio::fs::remove_file(&part).await;
                let _ = tokio::fs::remove_file(sig_path(&part)).await;
                u.file = file_name(&f.dest);
                // Another source (the archive after the pool repository) may serve a copy
                // that passes, e.g. with its `.sig`; the first refusal is what is reported.
                tracing::info!(package = %f.name, url, "refused a download, trying the next source: {}", u.why);
                refused.get_or_insert(u);
                continue;
            }
        };
    }
    if let Some(u) = refused {
        return Err(FetchFailure::Untrusted(u));
    }
    Err(FetchFailure::Fatal(ApplyError::Fetch {
        name: f.name.clone(),
        url: f.urls.last().map(|(u, _)| u.clone()).unwrap_or_default(),
        why: failures.join("; "),
    }))
}

/// Moves a checked download and its signature into place.
async fn keep(part: &Path, dest: &Path) -> std::io::Result<()> {
    tokio::fs::rename(part, dest).await?;
    let sig = sig_path(part);
    if tokio::fs::metadata(&sig).await.is_ok() {
        let _ = tokio::fs::rename(&sig, sig_path(dest)).await;
    }
    Ok(())
}

/// What [`prefetch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Files fetched, checked and now in the cache.
    pub fetched: Vec<PkgName>,
    /// Files already in the cache.
    pub present: usize,
    /// Files that could not be fetched or failed the trust rule, with why.
    pub failed: Vec<(PkgName, String)>,
}

/// Fetches the files `plan` would download (pool repository, archive) into the cache ahead
/// of the apply, one at a time, each checked with the trust rule before it is kept (as
/// `FILE.prefetch.part` until then, so a sync running meanwhile never sees it half-written).
/// Runs no pacman transaction; a failed file does not stop the others.
pub async fn prefetch(
    plan: &Plan,
    settings: &PacmanSettings,
    opts: &ApplyOptions,
    trust: &TrustRule,
    cancel: &watch::Receiver<bool>,
) -> Result<PrefetchReport, ApplyError> {
    let Grouped { fetches, .. } = group(plan, &opts.resolved_archive_dir(settings))?;
    let mut report = PrefetchReport::default();
    let mut todo = Vec::new();
    for f in fetches {
        if tokio::fs::metadata(&f.dest).await.is_ok() {
            report.present += 1;
        } else {
            todo.push(f);
        }
    }
    if todo.is_empty() {
        return Ok(report);
    }
    let client = download_client(opts.ca_file.as_deref()).map_err(|why| ApplyError::Fetch {
        name: todo[0].name.clone(),
        url: todo[0].urls[0].0.clone(),
        why,
    })?;
    for f in &todo {
        match fetch_checked(
            Some(&client),
            f,
            opts,
            trust,
            &mut |_| {},
            cancel,
            ".prefetch.part",
        )
        .await
        {
            Ok(part) => match keep(&part, &f.dest).await {
                Ok(()) => report.fetched.push(f.name.clone()),
                Err(e) => report.failed.push((f.name.clone(), e.to_string())),
            },
            Err(FetchFailure::Untrusted(u)) => report.failed.push((f.name.clone(), u.to_string())),
            Err(FetchFailure::Fatal(ApplyError::NotStarted { .. })) => break,
            Err(FetchFailure::Fatal(e)) => report.failed.push((f.name.clone(), e.to_string())),
        }
    }
    Ok(report)
}

enum FetchError {
    Cancelled,
    /// Larger than its bound.
    TooLarge(String),
    Failed(String),
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Magic bytes of the compressions archive packages use, by file extension.
const MAGIC: &[(&str, &[u8])] = &[
    (".pkg.tar.zst", &[0x28, 0xB5, 0x2F, 0xFD]),
    (".pkg.tar.xz", &[0xFD, b'7', b'z', b'X', b'Z', 0x00]),
];

/// The HTTP client for archive downloads: https with the system's store plus `ca_file`.
fn download_client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let tls = crate::tls::client_config(ca_file).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("pacpoold/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

/// Downloads `url` to `DEST.part` (at most `limit` bytes), checks its magic bytes and fetches
/// `URL.sig` to `DEST.part.sig` when there is one. Returns the `.part` path; the caller checks
/// trust and renames.
async fn fetch(
    client: Option<&reqwest::Client>,
    url: &str,
    token: Option<&str>,
    dest: &Path,
    suffix: &str,
    limit: u64,
    cancel: &watch::Receiver<bool>,
) -> Result<PathBuf, FetchError> {
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
    let part = dir.join(format!("{file_name}{suffix}"));
    let part_sig = sig_path(&part);
    // A stale signature next to a new download would be taken for its own.
    let _ = tokio::fs::remove_file(&part_sig).await;
    let mut cancel = cancel.clone();
    let download = async {
        download(client, url, token, &part, limit).await?;
        check_magic(&part, magic)
            .await
            .map_err(FetchError::Failed)?;
        match download(
            client,
            &format!("{url}.sig"),
            token,
            &part_sig,
            MAX_SIGNATURE_DOWNLOAD,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                let why = match e {
                    FetchError::TooLarge(w) | FetchError::Failed(w) => w,
                    FetchError::Cancelled => "cancelled".into(),
                };
                tracing::debug!("no signature for {url}: {why}");
                let _ = tokio::fs::remove_file(&part_sig).await;
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        r = download => r,
        _ = cancelled(&mut cancel) => Err(FetchError::Cancelled),
    };
    match result {
        Ok(()) => Ok(part),
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            let _ = tokio::fs::remove_file(&part_sig).await;
            Err(e)
        }
    }
}

/// Resolves when a cancel is requested; never if the sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn too_large(url: &str, limit: u64) -> FetchError {
    FetchError::TooLarge(format!(
        "{url} is larger than {limit} bytes, the size the target's manifest states (or the download ceiling `max_download_size`); the download was stopped and deleted"
    ))
}

/// Copies or downloads `url` to `part`, refusing more than `limit` bytes.
async fn download(
    client: Option<&reqwest::Client>,
    url: &str,
    token: Option<&str>,
    part: &Path,
    limit: u64,
) -> Result<(), FetchError> {
    let write_err =
        |e: std::io::Error| FetchError::Failed(format!("cannot write {}: {e}", part.display()));
    let mut out = tokio::fs::File::create(part).await.map_err(write_err)?;
    let mut written = 0u64;
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(FetchError::Failed(
                "a file:// URL needs an absolute path".into(),
            ));
        }
        let src = tokio::fs::File::open(path)
            .await
            .map_err(|e| FetchError::Failed(format!("cannot read {path}: {e}")))?;
        let mut src = src.take(limit + 1);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|e| FetchError::Failed(format!("cannot read {path}: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > limit {
                return Err(too_large(url, limit));
            }
            out.write_all(&buf[..n]).await.map_err(write_err)?;
        }
    } else {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FetchError::Failed(
                "only https://, http:// and file:// archive URLs are supported".into(),
            ));
        }
        let client = client.ok_or_else(|| FetchError::Failed("no HTTP client".into()))?;
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| FetchError::Failed(crate::display::std_error_line(&e)))?;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large(url, limit));
        }
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Failed(crate::display::std_error_line(&e)))?
        {
            written += chunk.len() as u64;
            if written > limit {
                return Err(too_large(url, limit));
            }
            out.write_all(&chunk).await.map_err(write_err)?;
        }
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
            [(
                n("down"),
                v("1-1"),
                PathBuf::from("/c/down-1-1-any.pkg.tar.zst")
            )]
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
                version: v("0.5-1"),
                urls: vec![(
                    "http://a/o/olddep/olddep-0.5-1-any.pkg.tar.zst".into(),
                    false
                )],
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
    fn keyrings_go_first_alone() {
        let arch = || "any".parse().unwrap();
        let up = |name: &str| Action::Upgrade {
            name: n(name),
            from: v("1-1"),
            to: v("2-1"),
            arch: arch(),
            source: repo(),
        };
        let p = plan(vec![
            Action::Remove {
                name: n("old"),
                version: v("1-1"),
            },
            up("a"),
            up("archlinux-keyring"),
            up("z"),
            Action::Downgrade {
                name: n("extra-keyring"),
                from: v("2-1"),
                to: v("1-1"),
                arch: arch(),
                source: Source::Cache {
                    path: "/c/extra-keyring-1-1-any.pkg.tar.zst".into(),
                },
            },
        ]);
        assert_eq!(
            show(&transactions(&p, Path::new("/arch")).unwrap()),
            [
                "-S --needed -- core/archlinux-keyring=2-1",
                "-U -- /c/extra-keyring-1-1-any.pkg.tar.zst",
                "-R -- old",
                "-S --needed -- core/a=2-1 core/z=2-1",
            ]
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
