//! Plans: how to turn the current package state into a target state, what blocks it, and how
//! far apart the two are.
//!
//! Architecture Invariant: planning is pure. It reads snapshots, an [`Availability`] and a
//! [`Policy`], and returns data; only the daemon's exec module acts on a plan.
//!
//! Order of a plan's actions: removals that make room for a conflicting install, then
//! installs / upgrades / downgrades (one pacman transaction per source kind), then the other
//! removals, then install-reason changes. Within a group, by name.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::cache::CachedFile;
use crate::localdb::{LocalPackage, Reason};
use crate::names::{Arch, PkgName, PkgVersion, RepoName};
use crate::snapshot::{PackageState, Pair, Snapshot, pair_up};
use crate::syncdb::{SyncDb, SyncDbError, SyncPackage};
use crate::version::vercmp;

/// Packages that are never removed unless the policy says otherwise.
pub const DEFAULT_PROTECTED: &[&str] = &["base", "linux*", "pacman", "glibc", "systemd"];
/// Removals above this count need explicit confirmation.
pub const DEFAULT_REMOVAL_CAP: usize = 20;

/// Which packages a pool manages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every installed package, with its version and install reason.
    #[default]
    Full,
    /// Explicitly installed packages only; dependencies are left to pacman.
    ExplicitOnly,
}

/// Policy inputs of a plan. Patterns are shell globs (`linux*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub ignore: Vec<String>,
    pub scope: Scope,
    pub protected: Vec<String>,
    pub removal_cap: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            ignore: Vec::new(),
            scope: Scope::Full,
            protected: DEFAULT_PROTECTED.iter().map(|s| s.to_string()).collect(),
            removal_cap: DEFAULT_REMOVAL_CAP,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid package pattern {pattern:?} in the policy: {source}")]
pub struct PolicyError {
    pattern: String,
    #[source]
    source: globset::Error,
}

/// A [`Policy`] with its globs compiled.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    ignore: GlobSet,
    protected: GlobSet,
    scope: Scope,
    removal_cap: usize,
}

fn globset(patterns: &[String]) -> Result<GlobSet, PolicyError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|source| PolicyError {
            pattern: p.clone(),
            source,
        })?);
    }
    b.build().map_err(|source| PolicyError {
        pattern: patterns.join(" "),
        source,
    })
}

impl Policy {
    /// The policy a machine plans with when its pool sends `self`: the machine's own
    /// `local` policy (its `pacpoold.toml [policy]`, defaults included) can only add to it.
    /// Its `protected` and `ignore` globs join the pool's, and its `removal_cap` is a ceiling
    /// the pool cannot raise. The pool alone chooses the scope.
    pub fn with_local(&self, local: &Policy) -> Policy {
        let union = |pool: &[String], local: &[String]| {
            let mut all = pool.to_vec();
            for p in local {
                if !all.contains(p) {
                    all.push(p.clone());
                }
            }
            all
        };
        Policy {
            ignore: union(&self.ignore, &local.ignore),
            scope: self.scope,
            protected: union(&self.protected, &local.protected),
            removal_cap: self.removal_cap.min(local.removal_cap),
        }
    }

    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        Ok(CompiledPolicy {
            ignore: globset(&self.ignore)?,
            protected: globset(&self.protected)?,
            scope: self.scope,
            removal_cap: self.removal_cap,
        })
    }
}

impl CompiledPolicy {
    // `GlobSet::is_match` builds a path candidate per call: skip it for empty sets.
    pub fn is_ignored(&self, name: &str) -> bool {
        !self.ignore.is_empty() && self.ignore.is_match(name)
    }
    pub fn is_protected(&self, name: &str) -> bool {
        !self.protected.is_empty() && self.protected.is_match(name)
    }
}

/// Where a package file for an exact version comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// The sync repository offers exactly this version: `pacman -S repo/name`.
    Repo { repo: RepoName },
    /// A package file in a cache directory: `pacman -U path`.
    Cache { path: PathBuf },
    /// To be fetched from the configured archive (Arch Linux Archive layout) into the cache.
    Archive { url: String },
    /// To be fetched from the pool's repository on the coordinator (`url`, with this
    /// endpoint's token), else from the archive (`archive`), into the cache.
    Pool {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archive: Option<String>,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Install {
        name: PkgName,
        version: PkgVersion,
        arch: Arch,
        reason: Reason,
        source: Source,
    },
    Upgrade {
        name: PkgName,
        from: PkgVersion,
        to: PkgVersion,
        arch: Arch,
        source: Source,
    },
    Downgrade {
        name: PkgName,
        from: PkgVersion,
        to: PkgVersion,
        arch: Arch,
        source: Source,
    },
    Remove {
        name: PkgName,
        version: PkgVersion,
    },
    MarkDependency {
        name: PkgName,
    },
    MarkExplicit {
        name: PkgName,
    },
}

impl Action {
    /// The action as one line, as `pacpool preview` and the dashboard show it:
    /// `upgrade   foo 1.0-1 -> 1.1-1`.
    pub fn describe(&self) -> String {
        match self {
            Action::Install { name, version, .. } => format!("install   {name} {version}"),
            Action::Upgrade { name, from, to, .. } => format!("upgrade   {name} {from} -> {to}"),
            Action::Downgrade { name, from, to, .. } => {
                format!("downgrade {name} {from} -> {to}")
            }
            Action::Remove { name, version } => format!("remove    {name} {version}"),
            Action::MarkDependency { name } => format!("mark      {name} as a dependency"),
            Action::MarkExplicit { name } => format!("mark      {name} as explicitly installed"),
        }
    }

    pub fn name(&self) -> &PkgName {
        match self {
            Action::Install { name, .. }
            | Action::Upgrade { name, .. }
            | Action::Downgrade { name, .. }
            | Action::Remove { name, .. }
            | Action::MarkDependency { name }
            | Action::MarkExplicit { name } => name,
        }
    }
}

/// Something that stops a plan from reaching the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "conflict", rename_all = "kebab-case")]
pub enum Conflict {
    #[error(
        "{name} {wanted} is not available: no repository, cache file or archive has it (repositories offer: {})",
        if offered.is_empty() { "nothing".to_string() } else { offered.join(", ") }
    )]
    VersionUnavailable {
        name: PkgName,
        wanted: PkgVersion,
        offered: Vec<String>,
    },
    #[error(
        "{name} is not in any configured repository or cache: add its repository or the archive URL"
    )]
    MissingPackage { name: PkgName },
    #[error(
        "{name} comes from repository {repo}, which is unavailable ({why}): run `pacman -Sy` or fix pacman.conf"
    )]
    RepositoryUnavailable {
        name: PkgName,
        repo: RepoName,
        why: String,
    },
    #[error("{name} needs {needs}, which the resulting state would not have")]
    DependencyConflict { name: PkgName, needs: String },
}

/// Why a difference was left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum Skipped {
    Ignored { name: PkgName },
    Protected { name: PkgName },
}

impl Skipped {
    pub fn name(&self) -> &PkgName {
        match self {
            Skipped::Ignored { name } | Skipped::Protected { name } => name,
        }
    }
}

/// `delta (protected)`, `firefox (ignored)`.
impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::Ignored { name } => write!(f, "{name} (ignored)"),
            Skipped::Protected { name } => write!(f, "{name} (protected)"),
        }
    }
}

/// Removals above the policy's cap need explicit confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalCapExceeded {
    pub removals: usize,
    pub cap: usize,
}

/// Counts of pending changes, for status lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub install: usize,
    pub upgrade: usize,
    pub downgrade: usize,
    pub remove: usize,
    pub reason: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.install + self.upgrade + self.downgrade + self.remove + self.reason
    }

    /// "3 upgrades, 1 downgrade, 1 removal", or "no changes".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (n, one, many) in [
            (self.install, "install", "installs"),
            (self.upgrade, "upgrade", "upgrades"),
            (self.downgrade, "downgrade", "downgrades"),
            (self.remove, "removal", "removals"),
            (self.reason, "reason change", "reason changes"),
        ] {
            if n > 0 {
                parts.push(crate::words::count(n, one, many));
            }
        }
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(", ")
        }
    }
}

/// How the current state relates to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncStatus {
    InSync,
    /// Only the target is newer: it has packages this machine lacks, newer versions, or
    /// different install reasons.
    Behind,
    /// Only this machine is newer: extra packages or newer versions.
    Ahead,
    /// Both.
    Diverged,
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
    pub skipped: Vec<Skipped>,
    pub needs_confirmation: Option<RemovalCapExceeded>,
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for a in &self.actions {
            match a {
                Action::Install { .. } => c.install += 1,
                Action::Upgrade { .. } => c.upgrade += 1,
                Action::Downgrade { .. } => c.downgrade += 1,
                Action::Remove { .. } => c.remove += 1,
                Action::MarkDependency { .. } | Action::MarkExplicit { .. } => c.reason += 1,
            }
        }
        c
    }

    pub fn is_noop(&self) -> bool {
        self.actions.is_empty() && self.conflicts.is_empty()
    }
}

/// A sync repository's offer of one package.
#[derive(Debug, Clone)]
struct Offer {
    repo: RepoName,
    version: PkgVersion,
    /// `%FILENAME%`, `%CSIZE%`, `%SHA256SUM%` and `%PGPSIG%` of the package file.
    filename: String,
    csize: Option<u64>,
    isize: Option<u64>,
    sha256: Option<String>,
    pgpsig: Option<String>,
    depends: Vec<String>,
    provides: Vec<String>,
    conflicts: Vec<String>,
}

/// A sync database's description of one package file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFile {
    pub repo: RepoName,
    pub filename: String,
    pub csize: Option<u64>,
    /// `%ISIZE%`: the installed size.
    pub isize: Option<u64>,
    pub sha256: Option<String>,
    pub pgpsig: Option<String>,
}

/// What package files can be had: sync repositories (in pacman.conf order), cache files, the
/// pool's repository and an optional archive base URL, tried in that order.
///
/// Cloning is cheap (the tables are shared), so a plan may use a copy that names the pool's
/// repository ([`Availability::with_pool_repo`]).
#[derive(Debug, Clone, Default)]
pub struct Availability {
    offers: Arc<BTreeMap<PkgName, Vec<Offer>>>,
    cache: Arc<BTreeMap<(PkgName, PkgVersion), PathBuf>>,
    unavailable: Arc<BTreeMap<RepoName, String>>,
    archive_base: Option<String>,
    /// Base URL of the pool target's repository on the coordinator: `BASE/FILE`.
    pool_repo: Option<String>,
}

impl Availability {
    /// `sync` in pacman.conf order, as [`crate::syncdb::read_sync_dbs`] returns it.
    pub fn new(
        sync: Vec<(RepoName, Result<SyncDb, SyncDbError>)>,
        cache: Vec<CachedFile>,
        archive_base: Option<String>,
    ) -> Self {
        let mut offers = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        let mut cached = BTreeMap::new();
        for (repo, db) in sync {
            match db {
                Ok(db) => db
                    .packages
                    .into_iter()
                    .for_each(|p| Self::add_offer(&mut offers, p)),
                Err(e) => {
                    unavailable.insert(repo, e.to_string());
                }
            }
        }
        for f in cache {
            cached.entry((f.name, f.version)).or_insert(f.path);
        }
        Self {
            offers: Arc::new(offers),
            cache: Arc::new(cached),
            unavailable: Arc::new(unavailable),
            archive_base: archive_base.map(|u| u.trim_end_matches('/').to_owned()),
            pool_repo: None,
        }
    }

    /// A copy that also fetches from the pool target's repository at `base` (`BASE/FILE`),
    /// after the caches and before the archive.
    pub fn with_pool_repo(&self, base: Option<String>) -> Self {
        Self {
            pool_repo: base.map(|u| u.trim_end_matches('/').to_owned()),
            ..self.clone()
        }
    }

    fn add_offer(offers: &mut BTreeMap<PkgName, Vec<Offer>>, p: SyncPackage) {
        offers.entry(p.name).or_default().push(Offer {
            repo: p.repo,
            version: p.version,
            filename: p.filename,
            csize: p.csize,
            isize: p.isize,
            sha256: p.sha256,
            pgpsig: p.pgpsig,
            depends: p.depends,
            provides: p.provides,
            conflicts: p.conflicts,
        });
    }

    /// The first repository (in pacman.conf order) that offers `name`.
    pub fn repo_of(&self, name: &PkgName) -> Option<RepoName> {
        self.offers
            .get(name)
            .and_then(|o| o.first())
            .map(|o| o.repo.clone())
    }

    /// What the first repository (in pacman.conf order) that offers exactly `name`
    /// `version` says about its file.
    pub fn exact_file(&self, name: &PkgName, version: &PkgVersion) -> Option<OfferedFile> {
        self.offer_exact(name, version).map(|o| OfferedFile {
            repo: o.repo.clone(),
            filename: o.filename.clone(),
            csize: o.csize,
            isize: o.isize,
            sha256: o.sha256.clone(),
            pgpsig: o.pgpsig.clone(),
        })
    }

    /// The cache file for exactly `name` `version`, if a cache directory has one.
    pub fn cached(&self, name: &PkgName, version: &PkgVersion) -> Option<&Path> {
        self.cache
            .get(&(name.clone(), version.clone()))
            .map(PathBuf::as_path)
    }

    fn offer_exact(&self, name: &PkgName, version: &PkgVersion) -> Option<&Offer> {
        self.offers
            .get(name)?
            .iter()
            .find(|o| o.version == *version)
    }

    /// Where the exact `want` version can come from, or why it cannot.
    fn source_for(&self, want: &PackageState) -> Result<Source, Conflict> {
        if let Some(o) = self.offer_exact(&want.name, &want.version) {
            return Ok(Source::Repo {
                repo: o.repo.clone(),
            });
        }
        if let Some(path) = self.cache.get(&(want.name.clone(), want.version.clone())) {
            return Ok(Source::Cache { path: path.clone() });
        }
        let archive = self.archive_base.as_deref().map(|b| archive_url(b, want));
        if let Some(base) = &self.pool_repo {
            return Ok(Source::Pool {
                url: format!("{base}/{}", package_file_name(want)),
                archive,
            });
        }
        if let Some(url) = archive {
            return Ok(Source::Archive { url });
        }
        if let Some(repo) = &want.repo
            && let Some(why) = self.unavailable.get(repo)
        {
            return Err(Conflict::RepositoryUnavailable {
                name: want.name.clone(),
                repo: repo.clone(),
                why: why.clone(),
            });
        }
        match self.offers.get(&want.name) {
            Some(offers) => Err(Conflict::VersionUnavailable {
                name: want.name.clone(),
                wanted: want.version.clone(),
                offered: offers
                    .iter()
                    .map(|o| format!("{}/{}", o.repo, o.version))
                    .collect(),
            }),
            None => Err(Conflict::MissingPackage {
                name: want.name.clone(),
            }),
        }
    }
}

/// `<name>-<version>-<arch>.pkg.tar.zst`, the file name packages have had since 2020.
pub fn package_file_name(p: &PackageState) -> String {
    format!("{}-{}-{}.pkg.tar.zst", p.name, p.version, p.arch)
}

/// The Arch Linux Archive layout: `BASE/<first letter>/<name>/<name>-<version>-<arch>.pkg.tar.zst`.
pub fn archive_url(base: &str, p: &PackageState) -> String {
    let first = &p.name.as_str()[..1];
    format!("{base}/{first}/{}/{}", p.name, package_file_name(p))
}

/// Restricts both sides to what the policy manages: ignored packages are dropped, and in
/// explicit-only scope so are dependencies that neither side installed explicitly.
fn managed<'a>(
    current: &'a Snapshot,
    target: &'a Snapshot,
    policy: &CompiledPolicy,
) -> (Vec<Pair<'a>>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut out = Vec::new();
    for (name, pair) in pair_up(current.packages(), target.packages()) {
        if policy.is_ignored(name.as_str()) {
            if pair.0 != pair.1 {
                skipped.push(Skipped::Ignored { name: name.clone() });
            }
            continue;
        }
        if policy.scope == Scope::ExplicitOnly {
            let explicit =
                |p: Option<&PackageState>| p.is_some_and(|p| p.reason == Reason::Explicit);
            if !explicit(pair.0) && !explicit(pair.1) {
                continue;
            }
        }
        out.push((name, pair));
    }
    (out, skipped)
}

/// Counts and classifies the difference between `current` and `target` under `policy`.
pub fn status(
    current: &Snapshot,
    target: &Snapshot,
    policy: &CompiledPolicy,
) -> (SyncStatus, Counts) {
    let (pairs, _) = managed(current, target, policy);
    let (mut behind, mut ahead) = (false, false);
    let mut c = Counts::default();
    for (_, pair) in pairs {
        match pair {
            (None, Some(_)) => {
                c.install += 1;
                behind = true;
            }
            (Some(cur), None) => {
                // Explicit-only scope keeps dependencies that the target merely lacks, and
                // protected packages are never removed: neither is a difference a sync acts on.
                if (policy.scope == Scope::ExplicitOnly && cur.reason == Reason::Dependency)
                    || policy.is_protected(cur.name.as_str())
                {
                    continue;
                }
                c.remove += 1;
                ahead = true;
            }
            (Some(cur), Some(tgt)) => match vercmp(cur.version.as_str(), tgt.version.as_str()) {
                std::cmp::Ordering::Less => {
                    c.upgrade += 1;
                    behind = true;
                }
                std::cmp::Ordering::Greater => {
                    c.downgrade += 1;
                    ahead = true;
                }
                std::cmp::Ordering::Equal => {
                    if cur.reason != tgt.reason {
                        c.reason += 1;
                        behind = true;
                    }
                }
            },
            (None, None) => {}
        }
    }
    let s = match (behind, ahead) {
        (false, false) => SyncStatus::InSync,
        (true, false) => SyncStatus::Behind,
        (false, true) => SyncStatus::Ahead,
        (true, true) => SyncStatus::Diverged,
    };
    (s, c)
}

/// The differences the policy leaves alone, as [`plan`] reports them in `skipped`: ignored
/// packages that differ, and protected packages the target lacks (kept, never removed).
pub fn kept_by_policy(
    current: &Snapshot,
    target: &Snapshot,
    policy: &CompiledPolicy,
) -> Vec<Skipped> {
    let (pairs, mut skipped) = managed(current, target, policy);
    for (name, pair) in pairs {
        if let (Some(cur), None) = pair
            && !(policy.scope == Scope::ExplicitOnly && cur.reason == Reason::Dependency)
            && policy.is_protected(name.as_str())
        {
            skipped.push(Skipped::Protected { name: name.clone() });
        }
    }
    skipped
}

/// Plans the way from `current` to `target`.
///
/// `local` (the current local database sorted by name, as [`crate::localdb::read_local_db`]
/// returns it; for dependency checks of packages that stay) may be empty; then only the sync
/// repositories' dependency data is checked.
pub fn plan(
    current: &Snapshot,
    target: &Snapshot,
    local: &[LocalPackage],
    avail: &Availability,
    policy: &CompiledPolicy,
) -> Plan {
    let (pairs, mut skipped) = managed(current, target, policy);
    let mut installs = Vec::new();
    let mut removals = Vec::new();
    let mut marks = Vec::new();
    let mut conflicts = Vec::new();
    let mut resolve = |want: &PackageState| match avail.source_for(want) {
        Ok(s) => Some(s),
        Err(c) => {
            conflicts.push(c);
            None
        }
    };
    for (name, pair) in pairs {
        match pair {
            (None, Some(tgt)) => {
                if let Some(source) = resolve(tgt) {
                    installs.push(Action::Install {
                        name: name.clone(),
                        version: tgt.version.clone(),
                        arch: tgt.arch.clone(),
                        reason: tgt.reason,
                        source,
                    });
                }
            }
            (Some(cur), None) => {
                if policy.scope == Scope::ExplicitOnly && cur.reason == Reason::Dependency {
                    continue;
                }
                if policy.is_protected(name.as_str()) {
                    skipped.push(Skipped::Protected { name: name.clone() });
                } else {
                    removals.push(Action::Remove {
                        name: name.clone(),
                        version: cur.version.clone(),
                    });
                }
            }
            (Some(cur), Some(tgt)) => {
                let order = vercmp(cur.version.as_str(), tgt.version.as_str());
                // Versions that compare equal but are spelled differently ("1.0-1" vs "1.0-01")
                // stay as they are: pacman itself treats them as the same version.
                if !order.is_eq() {
                    let Some(source) = resolve(tgt) else { continue };
                    let (name, from, to, arch) = (
                        name.clone(),
                        cur.version.clone(),
                        tgt.version.clone(),
                        tgt.arch.clone(),
                    );
                    installs.push(if order.is_lt() {
                        Action::Upgrade {
                            name,
                            from,
                            to,
                            arch,
                            source,
                        }
                    } else {
                        Action::Downgrade {
                            name,
                            from,
                            to,
                            arch,
                            source,
                        }
                    });
                }
                if cur.reason != tgt.reason {
                    marks.push(match tgt.reason {
                        Reason::Dependency => Action::MarkDependency { name: name.clone() },
                        Reason::Explicit => Action::MarkExplicit { name: name.clone() },
                    });
                }
            }
            (None, None) => {}
        }
    }
    conflicts.extend(dependency_conflicts(
        current, target, &installs, &removals, local, avail,
    ));

    // Removals that an install conflicts with must happen first, or pacman asks (and
    // --noconfirm answers no).
    let conflicting: BTreeSet<&str> = installs
        .iter()
        .filter_map(|a| avail.offers.get(a.name()))
        .flatten()
        .flat_map(|o| o.conflicts.iter().map(|c| dep_name(c)))
        .collect();
    let (early, late): (Vec<Action>, Vec<Action>) = removals
        .into_iter()
        .partition(|a| conflicting.contains(a.name().as_str()));
    let removal_count = early.len() + late.len();
    let needs_confirmation = (removal_count > policy.removal_cap).then_some(RemovalCapExceeded {
        removals: removal_count,
        cap: policy.removal_cap,
    });
    let mut actions = early;
    actions.extend(installs);
    actions.extend(late);
    actions.extend(marks);
    Plan {
        actions,
        conflicts,
        skipped,
        needs_confirmation,
    }
}

/// The package name of a dependency string such as `glibc>=2.38` or `libfoo.so=1-64`.
fn dep_name(dep: &str) -> &str {
    dep.split(['<', '>', '=']).next().unwrap_or(dep)
}

/// Splits `name[op version]`.
fn dep_constraint(dep: &str) -> Option<(&str, &str)> {
    let at = dep.find(['<', '>', '='])?;
    let rest = &dep[at..];
    let op_len = if rest.starts_with(">=") || rest.starts_with("<=") {
        2
    } else {
        1
    };
    Some((&rest[..op_len], &rest[op_len..]))
}

fn satisfies(version: &str, op: &str, want: &str) -> bool {
    let o = vercmp(version, want);
    match op {
        "=" => o.is_eq(),
        ">=" => o.is_ge(),
        "<=" => o.is_le(),
        ">" => o.is_gt(),
        "<" => o.is_lt(),
        _ => true,
    }
}

/// Checks that every package of the resulting state has its dependencies, using the
/// dependency data we have: the sync repositories' for packages being installed, the local
/// database's for packages that stay.
fn dependency_conflicts(
    current: &Snapshot,
    target: &Snapshot,
    installs: &[Action],
    removals: &[Action],
    local: &[LocalPackage],
    avail: &Availability,
) -> Vec<Conflict> {
    let removed: HashSet<&str> = removals.iter().map(|a| a.name().as_str()).collect();
    // The resulting state, each package with the dependency data we have for it: the sync
    // repository's for packages being installed, the local database's for those that stay.
    let mut result: Vec<(&str, &str, &[String], &[String])> = Vec::with_capacity(current.len());
    let mut installing = HashSet::with_capacity_and_hasher(installs.len(), Default::default());
    for a in installs {
        let Some(t) = target.get(a.name().as_str()) else {
            continue;
        };
        installing.insert(t.name.as_str());
        let offer = avail
            .offers
            .get(&t.name)
            .and_then(|os| os.iter().find(|o| o.version == t.version));
        let (depends, provides) =
            offer.map_or((&[][..], &[][..]), |o| (&o.depends[..], &o.provides[..]));
        result.push((t.name.as_str(), t.version.as_str(), depends, provides));
    }
    // Both `current` and `local` are sorted by name: walk them together.
    let mut local = local.iter().peekable();
    for p in current.packages() {
        let name = p.name.as_str();
        while local.next_if(|lp| lp.name.as_str() < name).is_some() {}
        let lp = local.next_if(|lp| lp.name == p.name && lp.version == p.version);
        if removed.contains(name) || installing.contains(name) {
            continue;
        }
        let (depends, provides) =
            lp.map_or((&[][..], &[][..]), |lp| (&lp.depends[..], &lp.provides[..]));
        result.push((name, p.version.as_str(), depends, provides));
    }
    // Everything the result provides: name -> versions, as chains in one arena (no
    // allocation per name; a name usually has one provider).
    let mut head: HashMap<&str, usize> =
        HashMap::with_capacity_and_hasher(result.len() * 2, Default::default());
    let mut arena: Vec<(Option<&str>, usize)> = Vec::with_capacity(result.len() * 2);
    let mut provide = |name, version| {
        let next = head.get(name).copied().unwrap_or(usize::MAX);
        head.insert(name, arena.len());
        arena.push((version, next));
    };
    for (name, version, _, provides) in &result {
        provide(name, Some(*version));
        for p in *provides {
            provide(dep_name(p), p.split_once('=').map(|(_, v)| v));
        }
    }
    let (head, arena) = (&head, &arena);
    let versions_of = |name: &str| {
        let mut at = head.get(name).copied().unwrap_or(usize::MAX);
        std::iter::from_fn(move || {
            let (version, next) = *arena.get(at)?;
            at = next;
            Some(version)
        })
    };
    let mut out = Vec::new();
    for (owner, _, depends, _) in &result {
        for dep in *depends {
            let mut candidates = versions_of(dep_name(dep));
            let ok = match dep_constraint(dep) {
                None => candidates.next().is_some(),
                Some((op, want)) => candidates.any(|v| v.is_none_or(|v| satisfies(v, op, want))),
            };
            if !ok && let Ok(owner) = owner.parse() {
                out.push(Conflict::DependencyConflict {
                    name: owner,
                    needs: dep.clone(),
                });
            }
        }
    }
    out.sort_by_cached_key(|c| c.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(name: &str, version: &str, reason: Reason) -> PackageState {
        PackageState {
            name: name.parse().unwrap(),
            version: version.parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason,
            repo: Some("core".parse().unwrap()),
        }
    }
    use Reason::{Dependency as D, Explicit as E};

    fn snap(p: &[(&str, &str, Reason)]) -> Snapshot {
        Snapshot::new(p.iter().map(|(n, v, r)| ps(n, v, *r)).collect()).unwrap()
    }

    fn sync_pkg(name: &str, version: &str, depends: &[&str], conflicts: &[&str]) -> SyncPackage {
        SyncPackage {
            repo: "core".parse().unwrap(),
            name: name.parse().unwrap(),
            version: version.parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            filename: format!("{name}-{version}-x86_64.pkg.tar.zst"),
            sha256: None,
            csize: None,
            isize: None,
            pgpsig: None,
            depends: depends.iter().map(|s| s.to_string()).collect(),
            provides: vec![],
            conflicts: conflicts.iter().map(|s| s.to_string()).collect(),
            replaces: vec![],
        }
    }

    fn avail(
        pkgs: Vec<SyncPackage>,
        cache: &[(&str, &str)],
        archive: Option<&str>,
    ) -> Availability {
        let db = SyncDb {
            repo: "core".parse().unwrap(),
            path: "/nonexistent/core.db".into(),
            packages: pkgs,
        };
        let cache = cache
            .iter()
            .map(|(n, v)| CachedFile {
                name: n.parse().unwrap(),
                version: v.parse().unwrap(),
                arch: "x86_64".parse().unwrap(),
                path: format!("/cache/{n}-{v}-x86_64.pkg.tar.zst").into(),
            })
            .collect();
        Availability::new(
            vec![("core".parse().unwrap(), Ok(db))],
            cache,
            archive.map(str::to_owned),
        )
    }

    fn policy() -> CompiledPolicy {
        Policy::default().compile().unwrap()
    }

    #[test]
    fn status_classification() {
        let p = policy();
        let base = snap(&[("a", "1-1", E), ("b", "1-1", E)]);
        assert_eq!(status(&base, &base, &p).0, SyncStatus::InSync);
        let newer = snap(&[("a", "2-1", E), ("b", "1-1", E), ("c", "1-1", D)]);
        let (s, c) = status(&base, &newer, &p);
        assert_eq!(s, SyncStatus::Behind);
        assert_eq!((c.upgrade, c.install), (1, 1));
        assert_eq!(status(&newer, &base, &p).0, SyncStatus::Ahead);
        let other = snap(&[("a", "2-1", E)]);
        let mixed = snap(&[("a", "1-1", E), ("b", "1-1", E), ("z", "1-1", E)]);
        assert_eq!(status(&mixed, &other, &p).0, SyncStatus::Diverged);
        // Reason-only differences are something a sync would change.
        let why = snap(&[("a", "1-1", D), ("b", "1-1", E)]);
        assert_eq!(
            status(&base, &why, &p),
            (
                SyncStatus::Behind,
                Counts {
                    reason: 1,
                    ..Counts::default()
                }
            )
        );
        // 1.5-1 == 1.5 per vercmp, so spelled-differently equal versions are in sync.
        let a = snap(&[("a", "1.0-1", E)]);
        let b = snap(&[("a", "1.00-1", E)]);
        assert_eq!(status(&a, &b, &p).0, SyncStatus::InSync);
    }

    #[test]
    fn plans_every_action_kind_with_sources() {
        let current = snap(&[
            ("up", "1-1", E),
            ("down", "3-1", E),
            ("gone", "1-1", E),
            ("why", "1-1", E),
            ("same", "1-1", E),
        ]);
        let target = snap(&[
            ("up", "2-1", E),
            ("down", "2-1", E),
            ("new", "1-1", D),
            ("why", "1-1", D),
            ("same", "1-1", E),
        ]);
        let av = avail(
            vec![
                sync_pkg("up", "2-1", &[], &[]),
                sync_pkg("down", "3-1", &[], &[]),
                sync_pkg("new", "1-1", &[], &[]),
            ],
            &[("down", "2-1")],
            None,
        );
        let plan = plan(&current, &target, &[], &av, &policy());
        assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
        let kinds: Vec<String> = plan
            .actions
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    serde_json::to_value(a).unwrap()["action"].as_str().unwrap(),
                    a.name()
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "downgrade down",
                "install new",
                "upgrade up",
                "remove gone",
                "mark-dependency why"
            ]
        );
        assert!(
            matches!(&plan.actions[0], Action::Downgrade { source: Source::Cache { path }, .. } if path.ends_with("down-2-1-x86_64.pkg.tar.zst"))
        );
        assert!(matches!(
            &plan.actions[1],
            Action::Install {
                reason: D,
                source: Source::Repo { .. },
                ..
            }
        ));
        assert_eq!(
            plan.counts(),
            Counts {
                install: 1,
                upgrade: 1,
                downgrade: 1,
                remove: 1,
                reason: 1
            }
        );
        assert!(plan.needs_confirmation.is_none());
    }

    #[test]
    fn unavailable_versions_and_archive() {
        let current = snap(&[]);
        let target = snap(&[("old", "1-1", E), ("ghost", "1-1", E)]);
        let av = avail(vec![sync_pkg("old", "2-1", &[], &[])], &[], None);
        let plan1 = plan(&current, &target, &[], &av, &policy());
        assert_eq!(plan1.actions, vec![]);
        assert!(
            matches!(&plan1.conflicts[0], Conflict::MissingPackage { name } if name.as_str() == "ghost")
        );
        assert!(
            matches!(&plan1.conflicts[1], Conflict::VersionUnavailable { offered, .. } if offered == &["core/2-1"])
        );
        assert!(
            plan1.conflicts[1]
                .to_string()
                .contains("old 1-1 is not available")
        );
        let av = avail(
            vec![sync_pkg("old", "2-1", &[], &[])],
            &[],
            Some("https://archive.example/packages/"),
        );
        let plan2 = plan(&current, &target, &[], &av, &policy());
        assert!(plan2.conflicts.is_empty());
        assert!(
            matches!(&plan2.actions[1], Action::Install { source: Source::Archive { url }, .. }
            if url == "https://archive.example/packages/o/old/old-1-1-x86_64.pkg.tar.zst")
        );
    }

    #[test]
    fn unavailable_repository() {
        let av = Availability::new(
            vec![(
                "core".parse().unwrap(),
                Err(SyncDbError::Missing {
                    path: "/x/core.db".into(),
                }),
            )],
            vec![],
            None,
        );
        let plan = plan(&snap(&[]), &snap(&[("a", "1-1", E)]), &[], &av, &policy());
        assert!(
            matches!(&plan.conflicts[0], Conflict::RepositoryUnavailable { repo, .. } if repo.as_str() == "core")
        );
    }

    #[test]
    fn protected_ignored_and_cap() {
        let current = snap(&[
            ("linux-lts", "1-1", E),
            ("glibc", "1-1", D),
            ("vim", "1-1", E),
            ("a", "1-1", E),
            ("b", "1-1", E),
            ("c", "1-1", E),
        ]);
        let target = snap(&[]);
        let mut pol = Policy {
            ignore: vec!["vim".into()],
            removal_cap: 2,
            ..Policy::default()
        };
        let plan1 = plan(
            &current,
            &target,
            &[],
            &Availability::default(),
            &pol.compile().unwrap(),
        );
        let removed: Vec<&str> = plan1.actions.iter().map(|a| a.name().as_str()).collect();
        assert_eq!(removed, ["a", "b", "c"]);
        // The status counts what the plan does: protected and ignored packages stay.
        let (st, counts) = status(&current, &target, &pol.compile().unwrap());
        assert_eq!((st, counts.remove), (SyncStatus::Ahead, 3));
        assert_eq!(
            plan1.needs_confirmation,
            Some(RemovalCapExceeded {
                removals: 3,
                cap: 2
            })
        );
        assert!(plan1.skipped.contains(&Skipped::Protected {
            name: "linux-lts".parse().unwrap()
        }));
        assert!(plan1.skipped.contains(&Skipped::Protected {
            name: "glibc".parse().unwrap()
        }));
        assert!(plan1.skipped.contains(&Skipped::Ignored {
            name: "vim".parse().unwrap()
        }));
        let mut kept = kept_by_policy(&current, &target, &pol.compile().unwrap());
        let mut skipped = plan1.skipped.clone();
        let key = |s: &Skipped| format!("{s:?}");
        kept.sort_by_key(key);
        skipped.sort_by_key(key);
        assert_eq!(kept, skipped, "the status names what the plan keeps");
        pol.ignore = vec!["[".into()];
        assert!(pol.compile().unwrap_err().to_string().contains("\"[\""));
    }

    #[test]
    fn a_local_policy_only_adds_to_the_pool_policy() {
        let pool = Policy {
            ignore: vec!["*-git".into()],
            protected: vec![],
            removal_cap: 100,
            scope: Scope::ExplicitOnly,
        };
        let local = Policy {
            ignore: vec!["*-git".into(), "firefox".into()],
            protected: vec!["keepme-*".into()],
            removal_cap: 0,
            scope: Scope::Full,
        };
        let merged = pool.with_local(&local);
        assert_eq!(merged.ignore, ["*-git", "firefox"]);
        assert_eq!(merged.protected, ["keepme-*"]);
        assert_eq!(merged.removal_cap, 0, "the pool cannot raise the local cap");
        assert_eq!(
            merged.scope,
            Scope::ExplicitOnly,
            "the pool chooses the scope"
        );
        // The untouched defaults on both sides change nothing.
        assert_eq!(
            Policy::default().with_local(&Policy::default()),
            Policy::default()
        );
        // A pool that empties `protected` does not remove what the machine protects.
        let c = merged.compile().unwrap();
        let current = snap(&[("keepme-sshd", "1-1", E), ("stray", "1-1", E)]);
        let p = plan(&current, &snap(&[]), &[], &Availability::default(), &c);
        assert_eq!(
            p.skipped,
            [Skipped::Protected {
                name: "keepme-sshd".parse().unwrap()
            }]
        );
        assert_eq!(
            p.needs_confirmation,
            Some(RemovalCapExceeded {
                removals: 1,
                cap: 0
            })
        );
    }

    #[test]
    fn explicit_only_scope() {
        let pol = Policy {
            scope: Scope::ExplicitOnly,
            ..Policy::default()
        }
        .compile()
        .unwrap();
        let current = snap(&[
            ("app", "1-1", E),
            ("libdep", "1-1", D),
            ("tool", "1-1", E),
            ("olddep", "1-1", D),
        ]);
        let target = snap(&[("app", "1-1", E), ("libdep", "2-1", D), ("tool", "1-1", D)]);
        let p = plan(&current, &target, &[], &Availability::default(), &pol);
        assert_eq!(
            p.actions,
            vec![Action::MarkDependency {
                name: "tool".parse().unwrap()
            }]
        );
        let (_, c) = status(&current, &target, &pol);
        assert_eq!(
            c,
            Counts {
                reason: 1,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn dependency_and_conflict_ordering() {
        // "new" conflicts with "old": old must go before new comes.
        let current = snap(&[("old", "1-1", E), ("keep", "1-1", E)]);
        let target = snap(&[("new", "1-1", E), ("keep", "1-1", E)]);
        let av = avail(
            vec![sync_pkg("new", "1-1", &["keep>=1"], &["old"])],
            &[],
            None,
        );
        let p = plan(&current, &target, &[], &av, &policy());
        assert_eq!(
            p.actions
                .iter()
                .map(|a| a.name().as_str())
                .collect::<Vec<_>>(),
            ["old", "new"]
        );
        assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
        // A dependency the result lacks is a conflict; versioned constraints are checked.
        let av = avail(
            vec![sync_pkg("new", "1-1", &["keep>=2", "missing"], &[])],
            &[],
            None,
        );
        let p = plan(&current, &target, &[], &av, &policy());
        let needs: Vec<&str> = p
            .conflicts
            .iter()
            .map(|c| match c {
                Conflict::DependencyConflict { needs, .. } => needs.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(needs, ["keep>=2", "missing"]);
    }

    #[test]
    fn dep_parsing() {
        assert_eq!(dep_name("glibc>=2.38"), "glibc");
        assert_eq!(dep_constraint("glibc>=2.38"), Some((">=", "2.38")));
        assert_eq!(dep_constraint("libfoo.so=1-64"), Some(("=", "1-64")));
        assert_eq!(dep_constraint("bash"), None);
        assert!(satisfies("2.39-1", ">=", "2.38"));
        assert!(!satisfies("2.37-1", ">=", "2.38"));
    }
}
