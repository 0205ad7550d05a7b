//! This machine's package state, read from pacman's files: the local database, the sync
//! databases and the cache, located through pacman.conf or explicit paths.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, scan_cache_dirs};
use crate::localdb::{LocalDbError, LocalPackage, read_local_db};
use crate::pacman_conf::{PacmanConf, PacmanConfError};
use crate::plan::Availability;
use crate::snapshot::Snapshot;
use crate::syncdb::read_sync_dbs;

/// Where pacman keeps its state. Unset fields come from pacman.conf, then pacman's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacmanPaths {
    /// pacman.conf to read repositories (and unset paths) from.
    pub config: Option<PathBuf>,
    pub dbpath: Option<PathBuf>,
    pub cache_dirs: Vec<PathBuf>,
    /// Arch Linux Archive style base URL for versions no repository or cache has.
    pub archive_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Conf(#[from] PacmanConfError),
    #[error(transparent)]
    LocalDb(#[from] LocalDbError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Everything planning needs to know about this machine.
#[derive(Debug, Clone)]
pub struct MachineState {
    pub local: Vec<LocalPackage>,
    /// Shared, so a re-read whose sources did not change reuses it.
    pub availability: Arc<Availability>,
    /// What `availability` was read from.
    pub sources: SourcesFingerprint,
    pub snapshot: Snapshot,
    pub dbpath: PathBuf,
}

/// Modification times and sizes of the sync databases and cache directories (and
/// pacman.conf): when none moved, what they offer has not changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourcesFingerprint(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

impl SourcesFingerprint {
    fn of(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Self(
            paths
                .into_iter()
                .map(|p| {
                    let stamp = std::fs::metadata(&p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (p, stamp)
                })
                .collect(),
        )
    }
}

impl PacmanPaths {
    fn conf(&self) -> Result<Option<PacmanConf>, PacmanConfError> {
        self.config.as_deref().map(PacmanConf::load).transpose()
    }

    fn dbpath_with(&self, conf: Option<&PacmanConf>) -> PathBuf {
        match (&self.dbpath, conf) {
            (Some(p), _) => p.clone(),
            (None, Some(conf)) => conf.db_path(),
            (None, None) => PathBuf::from("/var/lib/pacman/"),
        }
    }

    /// Reads the local database, sync databases and caches.
    pub fn read(&self) -> Result<MachineState, MachineError> {
        self.read_reusing(None)
    }

    /// Like [`PacmanPaths::read`], but reuses `previous`'s availability when the sync
    /// databases, cache directories and pacman.conf are unchanged (a large sync database
    /// costs far more to read than the local one).
    pub fn read_reusing(
        &self,
        previous: Option<(&SourcesFingerprint, &Arc<Availability>)>,
    ) -> Result<MachineState, MachineError> {
        let conf = self.conf()?;
        let dbpath = self.dbpath_with(conf.as_ref());
        let local = read_local_db(&dbpath)?;
        let repos = conf
            .as_ref()
            .map(PacmanConf::repo_names)
            .unwrap_or_default();
        let cache_dirs = if !self.cache_dirs.is_empty() {
            self.cache_dirs.clone()
        } else if let Some(conf) = &conf {
            conf.cache_dirs()
        } else {
            vec![PathBuf::from("/var/cache/pacman/pkg/")]
        };
        let sources = SourcesFingerprint::of(
            repos
                .iter()
                .map(|r| crate::syncdb::sync_db_path(&dbpath, r))
                .chain(cache_dirs.iter().cloned())
                .chain(self.config.iter().cloned()),
        );
        let availability = match previous {
            Some((fp, avail)) if *fp == sources => avail.clone(),
            _ => {
                let sync = read_sync_dbs(&dbpath, &repos);
                let cache = scan_cache_dirs(&cache_dirs)?;
                Arc::new(Availability::new(sync, cache, self.archive_url.clone()))
            }
        };
        let snapshot = Snapshot::from_local(&local, |n| availability.repo_of(n));
        Ok(MachineState {
            local,
            availability,
            sources,
            snapshot,
            dbpath,
        })
    }
}
