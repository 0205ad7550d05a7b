//! snapper snapshots around a sync or revert: when snapper is installed and has a
//! configuration for pacman's root, a `pre` snapshot before the first pacman transaction and
//! a `post` snapshot after the last, both described with the pacpool operation (as snap-pac
//! does per pacman transaction). Skipped when snap-pac's hooks are installed (they take a
//! pair for every transaction already) and never fatal: an operation whose snapshot failed
//! goes on, and the log says why.
//!
//! snapper runs without D-Bus (`--no-dbus`): pacpoold is root, and `snapperd` need not run.
//! Its configuration is found as snapper finds it (`/etc/snapper/configs/NAME`); its
//! `SUBVOLUME` must be pacman's root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest one snapper call may take (a snapshot of a busy file system can take seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// `[snapper]` in `pacpoold.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapperSettings {
    /// Take snapshots when snapper is there and configured (false: never).
    pub enabled: bool,
    /// The snapper program (looked up in `PATH` unless it contains a `/`).
    pub program: PathBuf,
    /// The snapper configuration for pacman's root.
    pub config: String,
    /// Where snapper keeps its configurations.
    pub configs_dir: PathBuf,
}

impl Default for SnapperSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            program: PathBuf::from("snapper"),
            config: "root".into(),
            configs_dir: PathBuf::from("/etc/snapper/configs"),
        }
    }
}

/// A snapper snapshot: its configuration and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapperRef {
    pub config: String,
    pub number: u64,
}

impl std::fmt::Display for SnapperRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapper snapshot {} (config {})",
            self.number, self.config
        )
    }
}

/// The pair taken around one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapperPair {
    pub config: String,
    pub pre: u64,
    /// None when the post snapshot failed (the log says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapperError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`snapper {args}` took longer than {} s", CALL_TIMEOUT.as_secs())]
    Timeout { args: String },
    #[error("`snapper {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("`snapper {args}` printed no snapshot number: {stdout:?}")]
    NoNumber { args: String, stdout: String },
}

/// snapper, ready to take snapshots of pacman's root.
#[derive(Debug, Clone)]
pub struct Snapper {
    program: PathBuf,
    config: String,
}

/// Why no snapshots are taken (logged once at debug level per operation).
pub type Skip = String;

/// The `.hook` files of snap-pac (`05-snap-pac-pre.hook`, `zz-snap-pac-post.hook`; older
/// versions `10_snapper-pre.hook`) in `dirs`.
pub fn snap_pac_hook(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(".hook") && (n.contains("snap-pac") || n.contains("snapper-pre"))
            })
        })
}

/// `program` as a file to run: itself when it names a path, else the first executable of
/// that name in `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_owned());
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| runnable(p))
}

/// `SUBVOLUME` of a snapper configuration file (`KEY="value"` lines).
fn subvolume(config_text: &str) -> Option<PathBuf> {
    config_text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("SUBVOLUME=")?;
        Some(PathBuf::from(v.trim().trim_matches('"')))
    })
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Snapper {
    /// snapper for pacman's `root`, or why not: turned off, not installed, no configuration
    /// for the root, or snap-pac's hooks in one of pacman's `hook_dirs`.
    pub fn detect(
        settings: &SnapperSettings,
        root: &Path,
        hook_dirs: &[PathBuf],
    ) -> Result<Self, Skip> {
        if !settings.enabled {
            return Err("turned off ([snapper] enabled = false)".into());
        }
        let program = find_program(&settings.program)
            .ok_or_else(|| format!("{} is not installed", settings.program.display()))?;
        let conf = settings.configs_dir.join(&settings.config);
        let text = std::fs::read_to_string(&conf)
            .map_err(|e| format!("no snapper configuration {}: {e}", conf.display()))?;
        let sub = subvolume(&text).ok_or_else(|| format!("{} has no SUBVOLUME", conf.display()))?;
        if !same_path(&sub, root) {
            return Err(format!(
                "snapper configuration {} is for {}, not pacman's root {}",
                settings.config,
                sub.display(),
                root.display()
            ));
        }
        if let Some(hook) = snap_pac_hook(hook_dirs) {
            return Err(format!(
                "snap-pac takes snapshots around every pacman transaction ({})",
                hook.display()
            ));
        }
        Ok(Self {
            program,
            config: settings.config.clone(),
        })
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    /// A `pre` snapshot described with `description`; its number.
    pub async fn pre(&self, description: &str) -> Result<u64, SnapperError> {
        self.create(&["--type", "pre"], description).await
    }

    /// The `post` snapshot of `pre`; its number.
    pub async fn post(&self, pre: u64, description: &str) -> Result<u64, SnapperError> {
        let pre = pre.to_string();
        self.create(&["--type", "post", "--pre-number", &pre], description)
            .await
    }

    async fn create(&self, kind: &[&str], description: &str) -> Result<u64, SnapperError> {
        let mut args: Vec<String> = ["--no-dbus", "-c", &self.config, "create"]
            .iter()
            .chain(kind)
            .map(|s| s.to_string())
            .collect();
        args.extend(
            [
                "--print-number",
                "--cleanup-algorithm",
                "number",
                "--description",
                description,
            ]
            .map(String::from),
        );
        let shown = args.join(" ");
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&args)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CALL_TIMEOUT, cmd.output()).await {
            Err(_) => return Err(SnapperError::Timeout { args: shown }),
            Ok(r) => r.map_err(|source| SnapperError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?,
        };
        if !out.status.success() {
            return Err(SnapperError::Failed {
                args: shown,
                status: out.status.to_string(),
                stderr: crate::display::clean(String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.trim().parse().map_err(|_| SnapperError::NoNumber {
            args: shown,
            stdout: crate::display::clean(stdout.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_configuration_and_snap_pac() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let configs = dir.path().join("configs");
        let hooks = dir.path().join("hooks");
        for d in [&root, &configs, &hooks] {
            std::fs::create_dir_all(d).unwrap();
        }
        let settings = SnapperSettings {
            // Any program that exists: detection does not run it.
            program: PathBuf::from("/bin/sh"),
            configs_dir: configs.clone(),
            ..Default::default()
        };
        let skip = Snapper::detect(&settings, &root, std::slice::from_ref(&hooks)).unwrap_err();
        assert!(skip.starts_with("no snapper configuration"), "{skip}");
        std::fs::write(configs.join("root"), "# x\nSUBVOLUME=\"/elsewhere\"\n").unwrap();
        let skip = Snapper::detect(&settings, &root, std::slice::from_ref(&hooks)).unwrap_err();
        assert!(
            skip.contains("is for /elsewhere, not pacman's root"),
            "{skip}"
        );
        std::fs::write(
            configs.join("root"),
            format!("SUBVOLUME=\"{}\"\nFSTYPE=\"btrfs\"\n", root.display()),
        )
        .unwrap();
        let s = Snapper::detect(&settings, &root, std::slice::from_ref(&hooks)).unwrap();
        assert_eq!(s.config(), "root");
        std::fs::write(hooks.join("05-snap-pac-pre.hook"), "").unwrap();
        let skip = Snapper::detect(&settings, &root, std::slice::from_ref(&hooks)).unwrap_err();
        assert!(skip.starts_with("snap-pac takes snapshots"), "{skip}");
        let off = SnapperSettings {
            enabled: false,
            ..settings.clone()
        };
        assert!(Snapper::detect(&off, &root, &[]).is_err());
        let missing = SnapperSettings {
            program: PathBuf::from("/nonexistent/snapper"),
            ..settings
        };
        assert!(
            Snapper::detect(&missing, &root, &[])
                .unwrap_err()
                .ends_with("is not installed")
        );
    }
}
