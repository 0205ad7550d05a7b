//! This machine's package state, read from pacman's files: the local database, the sync
//! databases and the cache, located through pacman.conf or explicit paths.

use std::path::PathBuf;

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
    pub availability: Availability,
    pub snapshot: Snapshot,
    pub dbpath: PathBuf,
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
        let conf = self.conf()?;
        let dbpath = self.dbpath_with(conf.as_ref());
        let local = read_local_db(&dbpath)?;
        let repos = conf
            .as_ref()
            .map(PacmanConf::repo_names)
            .unwrap_or_default();
        let sync = read_sync_dbs(&dbpath, &repos);
        let cache_dirs = if !self.cache_dirs.is_empty() {
            self.cache_dirs.clone()
        } else if let Some(conf) = &conf {
            conf.cache_dirs()
        } else {
            vec![PathBuf::from("/var/cache/pacman/pkg/")]
        };
        let cache = scan_cache_dirs(&cache_dirs)?;
        let availability = Availability::new(sync, cache, self.archive_url.clone());
        let snapshot = Snapshot::from_local(&local, |n| availability.repo_of(n));
        Ok(MachineState {
            local,
            availability,
            snapshot,
            dbpath,
        })
    }
}
