//! pacpoold's configuration: `/etc/pacpool/pacpoold.toml`, then `PACPOOLD_*` environment
//! overrides, then command-line flags. Every pacman path is configurable so tests and the
//! demo run against sandboxes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::PacmanSettings;
use crate::machine::PacmanPaths;
use crate::plan::Policy;
use crate::proto::AutoSyncMode;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pacpool/pacpoold.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pacpool";
pub const DEFAULT_SOCKET: &str = "/run/pacpool/pacpoold.sock";

/// The commented example printed by `pacpoold default-config`.
pub const EXAMPLE: &str = include_str!("pacpoold.example.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Coordinator base URL, e.g. `https://coordinator.lan:7300`; unset = local-only mode.
    pub coordinator_url: Option<String>,
    /// Extra CA certificate(s) (PEM) trusted for an `https://` coordinator, besides the
    /// system's trust store.
    pub coordinator_ca_file: Option<PathBuf>,
    /// Pool join token for the first registration (not needed once registered).
    pub join_token: Option<String>,
    /// The endpoint name to register with (default: the hostname).
    pub name: Option<String>,
    /// Where the SQLite state and the endpoint token live.
    pub state_dir: PathBuf,
    /// The local socket for the CLI and the tray.
    pub socket: PathBuf,
    /// Members of this group (and root) may run actions; everyone may read status.
    pub socket_group: String,
    /// Seconds between safety-net checks of the pacman database.
    pub check_interval: u64,
    /// Seconds between heartbeats to the coordinator (1–30); a connection that brings nothing
    /// back (not even a pong) for three of them is dropped and re-established.
    pub heartbeat_interval: u64,
    /// History entries kept locally.
    pub history_keep: usize,
    /// The most packages a pool target may hold; a larger one is refused before it is
    /// decoded (real machines have a few thousand).
    pub max_packages: usize,
    /// How pacman is run.
    pub pacman: PacmanSettings,
    /// Where pacman's state is read from: pacman.conf, dbpath and cache dirs are derived
    /// from `pacman` (see [`DaemonConfig::resolve`]); the archive URL is set here.
    pub paths: PacmanPaths,
    /// Local policy, used when the coordinator has not sent the pool's.
    pub policy: Policy,
    /// Local override of the pool's auto-sync mode.
    pub auto_sync: Option<AutoSyncMode>,
    /// Install foreign packages (no configured repository offers them: AUR, local builds)
    /// without a signature. A decision of this machine's owner; the coordinator cannot make
    /// it. Default false: a foreign package needs a signature by a key pacman's keyring trusts.
    pub allow_unsigned_foreign: bool,
    /// Largest package download (bytes) when the target's manifest states no size.
    pub max_download_size: u64,
    /// Fetch a new pool target's files (pool repository, archive) into the cache in the
    /// background, so a later sync does not wait on downloads.
    pub prefetch: bool,
    /// Packages whose change needs a reboot (shell globs), shown by preview and in a sync's
    /// result; replaces [`crate::preflight::DEFAULT_REBOOT_PACKAGES`].
    pub reboot_packages: Vec<String>,
    /// Where the running kernel's release is read (what `uname -r` prints): after a sync or
    /// revert, a reboot is needed when `ROOT/usr/lib/modules/RELEASE` is gone.
    pub kernel_release_file: PathBuf,
    /// snapper snapshots around each sync and revert.
    pub snapper: crate::snapper::SnapperSettings,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            coordinator_url: None,
            coordinator_ca_file: None,
            join_token: None,
            name: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: "wheel".into(),
            check_interval: 300,
            heartbeat_interval: 30,
            history_keep: 200,
            max_packages: crate::snapshot::DEFAULT_MAX_PACKAGES,
            pacman: PacmanSettings::default(),
            // Derived from `pacman` by `resolve`.
            paths: PacmanPaths::default(),
            policy: Policy::default(),
            auto_sync: None,
            allow_unsigned_foreign: false,
            max_download_size: crate::apply::DEFAULT_MAX_DOWNLOAD_SIZE,
            prefetch: true,
            reboot_packages: crate::preflight::DEFAULT_REBOOT_PACKAGES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            kernel_release_file: PathBuf::from("/proc/sys/kernel/osrelease"),
            snapper: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error(
        "[paths] {key} = {set:?} is not what pacman is run with ({pacman:?}, from [pacman] and \
         its pacman.conf): pacpool would record another machine's packages than the one pacman \
         changes; remove [paths] {key} (it follows [pacman]) or set [pacman] to the same"
    )]
    PathsDiffer {
        key: &'static str,
        set: String,
        pacman: String,
    },
    #[error("invalid value {value:?} in environment variable {var}: {why}")]
    Env {
        var: String,
        value: String,
        why: String,
    },
}

impl DaemonConfig {
    /// Reads `path`; a missing file at the default path means "all defaults".
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(e),
        })
    }

    /// Applies `PACPOOLD_COORDINATOR_URL`, `PACPOOLD_COORDINATOR_CA_FILE`,
    /// `PACPOOLD_JOIN_TOKEN`, `PACPOOLD_STATE_DIR`, `PACPOOLD_SOCKET` from `vars` (the process
    /// environment in production).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            match var.as_str() {
                "PACPOOLD_COORDINATOR_URL" => self.coordinator_url = Some(value),
                "PACPOOLD_COORDINATOR_CA_FILE" => {
                    self.coordinator_ca_file = Some(PathBuf::from(value))
                }
                "PACPOOLD_JOIN_TOKEN" => self.join_token = Some(value),
                "PACPOOLD_STATE_DIR" => self.state_dir = PathBuf::from(value),
                "PACPOOLD_SOCKET" => self.socket = PathBuf::from(value),
                "PACPOOLD_CHECK_INTERVAL" => {
                    self.check_interval = value.parse().map_err(|_| ConfigError::Env {
                        var: var.clone(),
                        value: value.clone(),
                        why: "expected seconds".into(),
                    })?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Derives the paths pacpool reads (`[paths]` config, dbpath, cache dirs) from the ones
    /// pacman is run with (`[pacman]`, then its pacman.conf, then pacman's defaults), so that
    /// both always mean the same machine. A `[paths]` value set to something else is refused
    /// with the reason. Calling it again changes nothing.
    pub fn resolve(&mut self) -> Result<(), ConfigError> {
        let conf = self.pacman.config_path();
        let dbpath = self.pacman.dbpath();
        let cache_dirs = match &self.pacman.cachedir {
            Some(dir) => vec![dir.clone()],
            // An unreadable pacman.conf is reported by the first read of the state.
            None => crate::pacman_conf::PacmanConf::load(&conf)
                .map(|c| c.cache_dirs())
                .unwrap_or_default(),
        };
        let differ = |key, set: &dyn std::fmt::Debug, pacman: &dyn std::fmt::Debug| {
            ConfigError::PathsDiffer {
                key,
                set: format!("{set:?}"),
                pacman: format!("{pacman:?}"),
            }
        };
        if let Some(set) = &self.paths.config
            && *set != conf
        {
            return Err(differ("config", set, &conf));
        }
        if let Some(set) = &self.paths.dbpath
            && *set != dbpath
        {
            return Err(differ("dbpath", set, &dbpath));
        }
        if !self.paths.cache_dirs.is_empty() && self.paths.cache_dirs != cache_dirs {
            return Err(differ("cache_dirs", &self.paths.cache_dirs, &cache_dirs));
        }
        self.paths.config = Some(conf);
        self.paths.dbpath = Some(dbpath);
        self.paths.cache_dirs = cache_dirs;
        Ok(())
    }

    /// The configuration as `show-config` prints it: the join token masked.
    pub fn shown(&self) -> Self {
        let mut c = self.clone();
        if c.join_token.is_some() {
            c.join_token = Some("(set, not shown)".into());
        }
        c
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    pub fn token_path(&self) -> PathBuf {
        self.state_dir.join("endpoint-token")
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval.max(1))
    }

    /// At most 30 s: the coordinator drops a socket silent for its offline time (90 s by
    /// default), and three heartbeats must fit in it.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval.clamp(1, 30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_matches_defaults_where_commented() {
        let c = DaemonConfig::parse(EXAMPLE, Path::new("example")).unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.policy, Policy::default());
        let uncommented = EXAMPLE
            .replace("# coordinator_url =", "coordinator_url =")
            .replace("# coordinator_ca_file =", "coordinator_ca_file =")
            .replace("# reboot_packages =", "reboot_packages =");
        let c = DaemonConfig::parse(&uncommented, Path::new("example")).unwrap();
        assert_eq!(c.reboot_packages, DaemonConfig::default().reboot_packages);
        assert!(c.coordinator_url.unwrap().starts_with("https://"));
        assert!(c.coordinator_ca_file.is_some());
    }

    #[test]
    fn paths_follow_how_pacman_is_run() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pacman.conf");
        std::fs::write(
            &conf,
            "[options]\nDBPath = /elsewhere/db\nCacheDir = /elsewhere/cache\n",
        )
        .unwrap();
        let text = format!(
            "[pacman]\nconfig = {conf:?}\ndbpath = \"/sandbox/db\"\n\n[paths]\narchive_url = \"file:///a\"\n"
        );
        let mut c = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap();
        c.resolve().unwrap();
        // `--dbpath` wins over pacman.conf's DBPath, as in pacman itself.
        assert_eq!(c.paths.dbpath, Some(PathBuf::from("/sandbox/db")));
        assert_eq!(c.paths.config, Some(conf.clone()));
        assert_eq!(c.paths.cache_dirs, [PathBuf::from("/elsewhere/cache")]);
        assert_eq!(c.paths.archive_url.as_deref(), Some("file:///a"));
        let again = c.clone();
        c.resolve().unwrap();
        assert_eq!(c, again);
        // A [paths] value that names another database is refused, with both named.
        let mut c = DaemonConfig::parse(
            &format!("{text}dbpath = \"/var/lib/pacman\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        let e = c.resolve().unwrap_err().to_string();
        assert!(
            e.contains("[paths] dbpath")
                && e.contains("/var/lib/pacman")
                && e.contains("/sandbox/db"),
            "{e}"
        );
        // The same value, said twice, is fine (trailing slash or not).
        let mut c = DaemonConfig::parse(
            &format!("{text}dbpath = \"/sandbox/db/\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        c.resolve().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_bad_env() {
        let err = DaemonConfig::parse("coordinator = \"x\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("t.toml"), "{err}");
        let mut c = DaemonConfig::default();
        c.apply_env([("PACPOOLD_STATE_DIR".to_string(), "/tmp/x".to_string())])
            .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        assert!(
            c.apply_env([("PACPOOLD_CHECK_INTERVAL".to_string(), "soon".to_string())])
                .is_err()
        );
    }
}
