//! What an Arch user checks by hand before and after an upgrade, computed for a [`Plan`]:
//! how much is downloaded, how the installed size changes, whether the file systems pacman
//! writes to have room ([`check_space`], refusing with [`NotEnoughSpace`]), which packages
//! need a reboot afterwards ([`RebootRules`]), which packages pacman's own `IgnorePkg` /
//! `IgnoreGroup` hold back ([`held_back`]), and after an apply, the `.pacnew` / `.pacsave`
//! files pacman's log says this run created ([`config_files_in_log`]), the processes that
//! still run replaced files ([`stale_processes`]) and whether the running kernel lost its
//! modules ([`kernel_mismatch`]).
//!
//! Everything here but [`free_space`], [`stale_processes`], [`kernel_mismatch`] and
//! [`running_kernel`] is pure: it reads data and returns data.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::localdb::LocalPackage;
use crate::manifest::Manifest;
use crate::names::PkgName;
use crate::plan::{Action, Availability, Plan, Source};

/// Packages whose upgrade needs a reboot to take effect: kernels and their out-of-tree
/// modules, firmware and microcode, the init system, the C library, initramfs generators.
/// `reboot_packages` in `pacpoold.toml` replaces the list.
pub const DEFAULT_REBOOT_PACKAGES: &[&str] = &[
    "linux",
    "linux-lts",
    "linux-zen",
    "linux-hardened",
    "linux-rt",
    "linux-rt-lts",
    "linux-firmware",
    "linux-firmware-*",
    "*-dkms",
    "nvidia",
    "nvidia-lts",
    "nvidia-open",
    "nvidia-utils",
    "amd-ucode",
    "intel-ucode",
    "systemd",
    "systemd-libs",
    "glibc",
    "mkinitcpio",
    "dracut",
    "booster",
];

/// Sizes a plan moves, from the sync databases (`%CSIZE%`, `%ISIZE%`), the caches and the
/// target's manifest, against the local database (`%SIZE%`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// Bytes to download: `%CSIZE%` of files no cache has, the manifest's size for files
    /// from the pool repository or the archive.
    pub download: u64,
    /// Packages whose download size nobody states (counted as 0 in `download`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub download_unknown: Vec<PkgName>,
    /// Installed size afterwards minus before, in bytes (negative: space is freed).
    pub installed_change: i64,
    /// Packages whose new installed size no sync database states (counted as unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed_unknown: Vec<PkgName>,
}

/// The download size and installed-size change of `plan`.
pub fn sizes(
    plan: &Plan,
    availability: &Availability,
    local: &[LocalPackage],
    manifest: Option<&Manifest>,
) -> Sizes {
    let local_size = |name: &PkgName| {
        local
            .iter()
            .find(|p| p.name == *name)
            .and_then(|p| p.size)
            .unwrap_or(0)
    };
    let mut s = Sizes::default();
    for a in &plan.actions {
        let (name, version, source, old) = match a {
            Action::Install {
                name,
                version,
                source,
                ..
            } => (name, version, source, 0),
            Action::Upgrade {
                name, to, source, ..
            }
            | Action::Downgrade {
                name, to, source, ..
            } => (name, to, source, local_size(name)),
            Action::Remove { name, .. } => {
                s.installed_change -= clamp(local_size(name));
                continue;
            }
            Action::MarkDependency { .. } | Action::MarkExplicit { .. } => continue,
        };
        let offered = availability.exact_file(name, version);
        let download = match source {
            Source::Cache { .. } => Some(0),
            _ if availability.cached(name, version).is_some() => Some(0),
            Source::Repo { .. } => offered.as_ref().and_then(|o| o.csize),
            Source::Archive { .. } | Source::Pool { .. } => manifest
                .and_then(|m| m.get(name, version))
                .and_then(|e| e.size)
                .or_else(|| offered.as_ref().and_then(|o| o.csize)),
        };
        match download {
            Some(n) => s.download = s.download.saturating_add(n),
            None => s.download_unknown.push(name.clone()),
        }
        match offered.and_then(|o| o.isize) {
            Some(new) => s.installed_change += clamp(new) - clamp(old),
            None => s.installed_unknown.push(name.clone()),
        }
    }
    s
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 4)
}

/// One file system pacman writes to, with what the plan needs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// What pacman writes there: `package cache`, `root`, or both (`package cache, root`).
    pub role: String,
    pub path: PathBuf,
    /// Bytes available to pacman (`f_bavail`, root's reserve excluded).
    pub free: u64,
    /// Bytes this plan needs there (downloads, growth of installed files).
    pub needed: u64,
    /// What pacman keeps free besides (`CheckSpace`: 5 % of the file system, at most 20 MiB).
    pub reserve: u64,
}

impl Space {
    pub fn enough(&self) -> bool {
        self.needed == 0 || self.free >= self.needed.saturating_add(self.reserve)
    }
}

/// The free space on one file system, from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsFree {
    /// The file system's device (`st_dev`), to tell when two paths share one.
    pub dev: u64,
    /// Bytes available to unprivileged writers... and pacman (`f_bavail × f_frsize`).
    pub free: u64,
    /// Size of the file system (`f_blocks × f_frsize`).
    pub total: u64,
}

/// `statvfs` and `stat` of `path`, or of its nearest existing ancestor (a cache directory
/// pacman has not created yet lives on its parent's file system).
pub fn free_space(path: &Path) -> std::io::Result<FsFree> {
    let mut at = path;
    loop {
        match rustix::fs::statvfs(at) {
            Ok(v) => {
                let st = rustix::fs::stat(at)?;
                return Ok(FsFree {
                    dev: st.st_dev,
                    free: v.f_bavail.saturating_mul(v.f_frsize),
                    total: v.f_blocks.saturating_mul(v.f_frsize),
                });
            }
            Err(rustix::io::Errno::NOENT) if at.parent().is_some() => {
                at = at.parent().expect("checked");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What pacman's `CheckSpace` keeps free on a file system of `total` bytes: 5 %, at most
/// 20 MiB (libalpm's `diskspace.c` cushion).
pub fn reserve(total: u64) -> u64 {
    (total / 20).min(20 << 20)
}

/// The space the plan's `sizes` need on the package cache (downloads) and the root
/// (installed files), added up where both are one file system.
pub fn spaces(sizes: &Sizes, cache: (&Path, FsFree), root: (&Path, FsFree)) -> Vec<Space> {
    let grow = u64::try_from(sizes.installed_change.max(0)).unwrap_or(0);
    let space = |role: &str, path: &Path, fs: FsFree, needed: u64| Space {
        role: role.to_owned(),
        path: path.to_owned(),
        free: fs.free,
        needed,
        reserve: reserve(fs.total),
    };
    if cache.1.dev == root.1.dev {
        vec![space(
            "package cache, root",
            root.0,
            root.1,
            sizes.download.saturating_add(grow),
        )]
    } else {
        vec![
            space("package cache", cache.0, cache.1, sizes.download),
            space("root", root.0, root.1, grow),
        ]
    }
}

/// A file system would run out of space during the apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough free space on {} ({}): the transaction needs {} there and pacman keeps {} in reserve, but only {} is free; free some space (for the package cache: `paccache -rk1`), then try again; nothing was changed",
    .0.path.display(), .0.role, bytes(.0.needed), bytes(.0.reserve), bytes(.0.free)
)]
pub struct NotEnoughSpace(pub Space);

/// The first file system of `spaces` without room, as an error.
pub fn check_space(spaces: &[Space]) -> Result<(), NotEnoughSpace> {
    match spaces.iter().find(|s| !s.enough()) {
        Some(s) => Err(NotEnoughSpace(s.clone())),
        None => Ok(()),
    }
}

/// `1.2 MiB`, `512 B`: sizes as pacman prints them (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `+1.2 MiB`, `-300 B`.
pub fn signed_bytes(n: i64) -> String {
    let sign = if n < 0 { '-' } else { '+' };
    format!("{sign}{}", bytes(n.unsigned_abs()))
}

#[derive(Debug, thiserror::Error)]
#[error("invalid package pattern {pattern:?} in reboot_packages: {source}")]
pub struct RebootRulesError {
    pattern: String,
    #[source]
    source: globset::Error,
}

/// Which packages need a reboot after they change: shell globs on package names, the one
/// list every client's "reboot needed" comes from.
#[derive(Debug, Clone)]
pub struct RebootRules {
    set: GlobSet,
}

impl Default for RebootRules {
    fn default() -> Self {
        let list: Vec<String> = DEFAULT_REBOOT_PACKAGES
            .iter()
            .map(|s| s.to_string())
            .collect();
        Self::new(&list).expect("the default reboot rules are valid globs")
    }
}

impl RebootRules {
    pub fn new(patterns: &[String]) -> Result<Self, RebootRulesError> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).map_err(|source| RebootRulesError {
                pattern: p.clone(),
                source,
            })?);
        }
        b.build()
            .map(|set| Self { set })
            .map_err(|source| RebootRulesError {
                pattern: patterns.join(" "),
                source,
            })
    }

    /// The packages of `plan` whose install, upgrade, downgrade or removal needs a reboot.
    pub fn needs_reboot(&self, plan: &Plan) -> Vec<PkgName> {
        plan.actions
            .iter()
            .filter(|a| {
                !matches!(
                    a,
                    Action::MarkDependency { .. } | Action::MarkExplicit { .. }
                )
            })
            .map(Action::name)
            .filter(|n| self.set.is_match(n.as_str()))
            .cloned()
            .collect()
    }
}

/// Whether `name` is a keyring package (`archlinux-keyring`, `*-keyring`): it goes into its
/// own first transaction, so the rest is checked with the new keys.
pub fn is_keyring(name: &str) -> bool {
    name.ends_with("-keyring")
}

/// A package pacman's own configuration holds back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    pub name: PkgName,
    /// `IgnorePkg = linux*` or `IgnoreGroup = gnome`: the pacman.conf line that holds it.
    pub by: String,
}

impl std::fmt::Display for HeldBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} in pacman.conf)", self.name, self.by)
    }
}

/// Which of `names` pacman's `IgnorePkg` (globs, as pacman matches them) and `IgnoreGroup`
/// (groups of the installed package, from the local database) hold back.
pub fn held_back<'a>(
    names: impl IntoIterator<Item = &'a PkgName>,
    ignore_pkg: &[String],
    ignore_group: &[String],
    local: &[LocalPackage],
) -> Vec<HeldBack> {
    let globs: Vec<(String, globset::GlobMatcher)> = ignore_pkg
        .iter()
        .filter_map(|p| Glob::new(p).ok().map(|g| (p.clone(), g.compile_matcher())))
        .collect();
    let mut out = Vec::new();
    for name in names {
        if let Some((p, _)) = globs.iter().find(|(_, g)| g.is_match(name.as_str())) {
            out.push(HeldBack {
                name: name.clone(),
                by: format!("IgnorePkg = {p}"),
            });
            continue;
        }
        let groups = local
            .iter()
            .find(|p| p.name == *name)
            .map(|p| p.groups.as_slice())
            .unwrap_or_default();
        if let Some(g) = ignore_group.iter().find(|g| groups.contains(g)) {
            out.push(HeldBack {
                name: name.clone(),
                by: format!("IgnoreGroup = {g}"),
            });
        }
    }
    out
}

/// A configuration file pacman did not overwrite (`.pacnew`) or kept when removing its
/// package (`.pacsave`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The file pacman left in place, as pacman logs it (under its root).
    pub path: String,
    /// The new or saved copy (`….pacnew`, `….pacsave`).
    pub saved_as: String,
}

/// The `.pacnew` / `.pacsave` files named in `log`, the part of pacman's log written by this
/// run: `[ALPM] warning: /etc/x installed as /etc/x.pacnew`, `… saved as /etc/x.pacsave`.
pub fn config_files_in_log(log: &str) -> Vec<ConfigFile> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("[ALPM] warning: ") else {
            continue;
        };
        for sep in [" installed as ", " saved as "] {
            if let Some((path, saved)) = rest.split_once(sep)
                && (saved.ends_with(".pacnew") || saved.ends_with(".pacsave"))
            {
                out.push(ConfigFile {
                    path: crate::display::clean(path),
                    saved_as: crate::display::clean(saved.trim_end()),
                });
            }
        }
    }
    out
}

/// A running process that still maps files a transaction replaced or removed (shown as
/// `PATH (deleted)` in `/proc/PID/maps`, as `checkservices` and `needrestart` read them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleProcess {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub command: String,
    /// The systemd unit it runs in (`sshd.service`), from `/proc/PID/cgroup`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The deleted files it maps (binaries, libraries), under pacman's root.
    pub files: Vec<String>,
}

/// The deleted files under `ROOT/usr/` that `maps` (a `/proc/PID/maps` text) maps, sorted.
pub fn deleted_mappings(maps: &str, root: &Path) -> Vec<String> {
    let usr = root.join("usr");
    let mut out: Vec<String> = maps
        .lines()
        .filter_map(|l| l.strip_suffix(" (deleted)"))
        // The path is the sixth field and may contain spaces: it starts at the first '/'.
        .filter_map(|l| l.find('/').map(|i| &l[i..]))
        .filter(|p| Path::new(p).starts_with(&usr))
        .map(crate::display::clean)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The systemd service a `/proc/PID/cgroup` text names (`0::/system.slice/sshd.service`).
pub fn unit_in_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|u| u.ends_with(".service"))
        .map(crate::display::clean)
}

/// Running processes that map deleted files under `ROOT/usr/` (they run replaced binaries or
/// libraries until restarted). Processes whose files cannot be read are skipped.
pub fn stale_processes(root: &Path) -> Vec<StaleProcess> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = e.path();
        let Ok(maps) = std::fs::read_to_string(base.join("maps")) else {
            continue;
        };
        let files = deleted_mappings(&maps, root);
        if files.is_empty() {
            continue;
        }
        out.push(StaleProcess {
            pid,
            command: std::fs::read_to_string(base.join("comm"))
                .map(|c| crate::display::clean(c.trim_end()))
                .unwrap_or_default(),
            unit: std::fs::read_to_string(base.join("cgroup"))
                .ok()
                .and_then(|c| unit_in_cgroup(&c)),
            files,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// The running kernel has no modules directory under the root any more: a kernel package
/// replaced it, and modules the running kernel loads later would not be found. Reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMismatch {
    /// The running kernel's release (`uname -r`).
    pub running: String,
    /// The releases `ROOT/usr/lib/modules/` has now.
    pub installed: Vec<String>,
}

impl std::fmt::Display for KernelMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the running kernel {} has no modules installed any more (installed: {}): reboot",
            self.running,
            self.installed.join(", ")
        )
    }
}

/// Whether the running kernel (`release`, as `uname -r` prints it) still has its modules
/// directory `ROOT/usr/lib/modules/RELEASE`. `None` when it has, or when the root has no
/// kernel modules at all (a container, a chroot without a kernel): nothing to compare.
pub fn kernel_mismatch(root: &Path, release: &str) -> Option<KernelMismatch> {
    let release = release.trim();
    if release.is_empty() || release.contains('/') || release.starts_with('.') {
        return None;
    }
    // A kernel's directory has its modules (`kernel/`, `modules.dep`); what a removed kernel
    // leaves behind (out-of-tree modules a DKMS package still owns) does not count.
    let has_modules = |dir: &Path| dir.join("modules.dep").exists() || dir.join("kernel").is_dir();
    let modules = root.join("usr/lib/modules");
    let mut installed: Vec<String> = std::fs::read_dir(&modules)
        .ok()?
        .flatten()
        .filter(|e| has_modules(&e.path()))
        .filter_map(|e| e.file_name().to_str().map(crate::display::clean))
        .collect();
    if installed.is_empty() || has_modules(&modules.join(release)) {
        return None;
    }
    installed.sort();
    Some(KernelMismatch {
        running: crate::display::clean(release),
        installed,
    })
}

/// The running kernel's release, from `file` (`/proc/sys/kernel/osrelease`, what `uname -r`
/// prints; configurable so tests can name another).
pub fn running_kernel(file: &Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PkgName {
        s.parse().unwrap()
    }

    #[test]
    fn space_runs_out_counting_pacmans_reserve() {
        let gib = 1u64 << 30;
        let fs = |dev, free| FsFree {
            dev,
            free,
            total: 10 * gib,
        };
        let sizes = Sizes {
            download: 300 << 20,
            installed_change: 700 << 20,
            ..Default::default()
        };
        // One file system: download and growth add up (1000 MiB + 20 MiB reserve).
        let one = spaces(
            &sizes,
            (Path::new("/c"), fs(1, 1010 << 20)),
            (Path::new("/"), fs(1, 1010 << 20)),
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].needed, 1000 << 20);
        assert_eq!(one[0].reserve, 20 << 20);
        let err = check_space(&one).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not enough free space on / (package cache, root): the transaction needs 1000.0 MiB there and pacman keeps 20.0 MiB in reserve, but only 1010.0 MiB is free; free some space (for the package cache: `paccache -rk1`), then try again; nothing was changed"
        );
        assert!(
            check_space(&spaces(
                &sizes,
                (Path::new("/c"), fs(1, 2 * gib)),
                (Path::new("/"), fs(1, 2 * gib))
            ))
            .is_ok()
        );
        // Two file systems: each needs only its part.
        let two = spaces(
            &sizes,
            (Path::new("/c"), fs(1, 400 << 20)),
            (Path::new("/"), fs(2, 800 << 20)),
        );
        assert_eq!(
            two.iter().map(|s| s.needed).collect::<Vec<_>>(),
            [300 << 20, 700 << 20]
        );
        assert!(check_space(&two).is_ok());
        let short = spaces(
            &sizes,
            (Path::new("/c"), fs(1, 310 << 20)),
            (Path::new("/"), fs(2, 800 << 20)),
        );
        assert_eq!(check_space(&short).unwrap_err().0.role, "package cache");
        // Shrinking needs nothing, even on a full disk.
        let shrink = Sizes {
            installed_change: -5,
            ..Default::default()
        };
        assert!(
            check_space(&spaces(
                &shrink,
                (Path::new("/c"), fs(1, 0)),
                (Path::new("/"), fs(1, 0))
            ))
            .is_ok()
        );
    }

    #[test]
    fn free_space_of_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let here = free_space(dir.path()).unwrap();
        assert!(here.total > 0 && here.free <= here.total);
        // A directory not created yet is on its parent's file system.
        let later = free_space(&dir.path().join("not/yet")).unwrap();
        assert_eq!(later.dev, here.dev);
    }

    #[test]
    fn reboot_rules_name_kernels_and_the_init_system() {
        let plan = Plan {
            actions: [
                "linux",
                "linux-headers",
                "systemd",
                "nvidia-dkms",
                "firefox",
                "intel-ucode",
            ]
            .iter()
            .map(|name| Action::Remove {
                name: n(name),
                version: "1-1".parse().unwrap(),
            })
            .collect(),
            conflicts: vec![],
            skipped: vec![],
            needs_confirmation: None,
        };
        let names = |v: Vec<PkgName>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(RebootRules::default().needs_reboot(&plan)),
            ["linux", "systemd", "nvidia-dkms", "intel-ucode"]
        );
        let own = RebootRules::new(&["firefox".to_string()]).unwrap();
        assert_eq!(names(own.needs_reboot(&plan)), ["firefox"]);
        assert!(RebootRules::new(&["[".to_string()]).is_err());
    }

    #[test]
    fn held_back_names_the_pacman_conf_line() {
        let mut gnome = crate::localdb::LocalPackage {
            name: n("nautilus"),
            version: "1-1".parse().unwrap(),
            arch: "any".parse().unwrap(),
            reason: crate::localdb::Reason::Explicit,
            install_date: None,
            size: None,
            validation: vec![],
            depends: vec![],
            provides: vec![],
            conflicts: vec![],
            replaces: vec![],
            groups: vec![],
        };
        gnome.groups = vec!["gnome".into()];
        let held = held_back(
            &[n("linux-lts"), n("nautilus"), n("vim")],
            &["linux*".into()],
            &["gnome".into()],
            &[gnome],
        );
        assert_eq!(
            held.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "linux-lts (IgnorePkg = linux* in pacman.conf)",
                "nautilus (IgnoreGroup = gnome in pacman.conf)"
            ]
        );
    }

    #[test]
    fn pacnew_and_pacsave_from_pacmans_log() {
        let log = "[2026-12-05T01:00:00+0000] [ALPM] upgraded foo (1-1 -> 2-1)\n\
                   [2026-12-05T01:00:00+0000] [ALPM] warning: /etc/foo.conf installed as /etc/foo.conf.pacnew\n\
                   [2026-12-05T01:00:01+0000] [ALPM] warning: /etc/bar.conf saved as /etc/bar.conf.pacsave\n\
                   [2026-12-05T01:00:01+0000] [ALPM] warning: something else\n";
        assert_eq!(
            config_files_in_log(log),
            [
                ConfigFile {
                    path: "/etc/foo.conf".into(),
                    saved_as: "/etc/foo.conf.pacnew".into()
                },
                ConfigFile {
                    path: "/etc/bar.conf".into(),
                    saved_as: "/etc/bar.conf.pacsave".into()
                },
            ]
        );
    }

    #[test]
    fn deleted_mappings_under_usr() {
        let maps = "55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 131 /usr/bin/sshd (deleted)\n\
                    7f00-7f01 r-xp 00000000 08:01 140 /usr/lib/libssl.so.3 (deleted)\n\
                    7f01-7f02 r-xp 00000000 08:01 141 /usr/lib/libc.so.6\n\
                    7f02-7f03 rw-s 00000000 00:01 142 /memfd:wayland (deleted)\n\
                    7f03-7f04 r-xp 00000000 08:01 140 /usr/lib/libssl.so.3 (deleted)\n";
        assert_eq!(
            deleted_mappings(maps, Path::new("/")),
            ["/usr/bin/sshd", "/usr/lib/libssl.so.3"]
        );
        assert!(deleted_mappings(maps, Path::new("/sandbox")).is_empty());
        assert_eq!(
            unit_in_cgroup("0::/system.slice/sshd.service\n").as_deref(),
            Some("sshd.service")
        );
        assert_eq!(
            unit_in_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
    }

    #[test]
    fn running_kernel_against_installed_modules() {
        let root = tempfile::tempdir().unwrap();
        // No modules at all: nothing to compare.
        assert_eq!(kernel_mismatch(root.path(), "6.1.0-1"), None);
        let modules = root.path().join("usr/lib/modules");
        std::fs::create_dir_all(modules.join("6.1.0-1/kernel")).unwrap();
        assert_eq!(kernel_mismatch(root.path(), "6.1.0-1"), None);
        // The upgrade replaced 6.1 by 6.2: the running 6.1 needs a reboot.
        std::fs::rename(modules.join("6.1.0-1"), modules.join("6.2.0-1")).unwrap();
        let m = kernel_mismatch(root.path(), "6.1.0-1\n").unwrap();
        assert_eq!(m.installed, ["6.2.0-1"]);
        assert_eq!(
            m.to_string(),
            "the running kernel 6.1.0-1 has no modules installed any more (installed: 6.2.0-1): reboot"
        );
        assert_eq!(kernel_mismatch(root.path(), "../etc"), None);
        let f = root.path().join("osrelease");
        std::fs::write(&f, "6.2.0-1\n").unwrap();
        assert_eq!(running_kernel(&f).as_deref(), Some("6.2.0-1"));
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(signed_bytes(-(3 << 20)), "-3.0 MiB");
        assert_eq!(signed_bytes(0), "+0 B");
    }
}
