//! The Arch package (packaging/arch/PKGBUILD) and the systemd units (systemd/).
//!
//! - Every unit in `systemd/` passes `systemd-analyze verify`, and `systemd-analyze security
//!   --offline=yes` scores are printed and held under a ceiling. verify wants each ExecStart
//!   binary to exist, so it checks a copy of the unit whose `/usr/bin/NAME` points at the
//!   binary cargo built (or at a stub for a binary this build lacks, e.g. the tray without
//!   `--features tray`). It runs without systemd as PID 1; user units (installed for the
//!   graphical session) get `--user` and a temporary `XDG_RUNTIME_DIR`.
//! - The real `makepkg` builds the package as the unprivileged user `nobody` (makepkg refuses
//!   root), packaging the binaries cargo already built (`PACPOOL_PREBUILT_DIR`: no second
//!   compile), and the real `pacman -U` installs it into a sandbox root; the installed file
//!   list, modes, `backup=`, dependencies and the configuration examples are checked.
//! - namcap runs on the PKGBUILD and the packages when it is installed. It is not packaged for
//!   Debian 12 (nor on PyPI), so the test says it skipped that part.
//!
//! Needs root (`setpriv` to `nobody`, pacman transactions) plus makepkg, fakeroot, pacman
//! and systemd-analyze: `bash tests/run.sh` installs the Debian packages.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{Sandbox, find_in_path};

/// Most that `systemd-analyze security` may rate each unit (0 = locked down, 10 = exposed).
/// pacpoold runs pacman as root, which installs anywhere and runs hooks: see the unit's
/// comments for every permission it keeps.
const MAX_EXPOSURE: [(&str, f64); 2] = [
    ("pacpool-coordinator.service", 2.0),
    ("pacpoold.service", 7.0),
];

fn tree() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory cargo built this test's binaries into (target/debug or target/release).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pacpool"))
        .parent()
        .expect("the binary has a directory")
        .to_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn require(tool: &str, debian_package: &str) {
    assert!(
        find_in_path(tool).is_some(),
        "the packaging tests need {tool} on PATH; on Debian 12 install it with \
         `apt-get install -y --no-install-recommends {debian_package}` (or run `bash tests/run.sh`)"
    );
}

/// The units in systemd/, sorted.
fn units() -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = fs::read_dir(tree().join("systemd"))
        .expect("read systemd/")
        .map(|e| e.expect("read systemd/").path())
        .filter(|p| {
            p.extension().is_some_and(|e| {
                ["service", "socket", "timer", "path"].contains(&e.to_str().unwrap_or(""))
            })
        })
        .collect();
    units.sort();
    units
}

/// The value of `Key=` in a unit file (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().to_owned())
}

/// A user unit belongs to the graphical session or the user's default target.
fn is_user_unit(unit: &str) -> bool {
    unit_value(unit, "WantedBy")
        .is_some_and(|w| w.contains("graphical-session.target") || w.contains("default.target"))
}

#[test]
fn systemd_units_verify_and_their_security_scores_stay_low() {
    require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = dir.path().join("xdg-runtime");
    let stubs = dir.path().join("stubs");
    fs::create_dir_all(&stubs).expect("create stubs/");
    fs::create_dir_all(&runtime).expect("create the runtime directory");
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).expect("chmod");
    let units = units();
    assert!(
        units.iter().any(|u| u.ends_with("pacpoold.service"))
            && units
                .iter()
                .any(|u| u.ends_with("pacpool-coordinator.service")),
        "systemd/ lacks a unit: {units:?}"
    );
    let mut scores = Vec::new();
    for unit in &units {
        let name = unit.file_name().unwrap().to_str().unwrap().to_owned();
        let original = fs::read_to_string(unit).expect("read the unit");
        // ExecStart=/usr/bin/NAME … → the built binary, or a stub when this build lacks it.
        let mut copy = String::new();
        for line in original.lines() {
            let mut line = line.to_owned();
            if let Some(rest) = line.strip_prefix("ExecStart=/usr/bin/") {
                let bin = rest.split_whitespace().next().expect("a binary name");
                let built = bin_dir().join(bin);
                let path = if built.is_file() {
                    built
                } else {
                    let stub = stubs.join(bin);
                    fs::write(&stub, "#!/bin/sh\nexit 0\n").expect("write a stub");
                    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).expect("chmod");
                    stub
                };
                line = format!("ExecStart={}{}", path.display(), &rest[bin.len()..]);
            }
            copy.push_str(&line);
            copy.push('\n');
        }
        let checked = dir.path().join(&name);
        fs::write(&checked, copy).expect("write the unit's copy");
        let user = is_user_unit(&original);
        let analyze = |args: &[&str]| {
            let mut cmd = Command::new("systemd-analyze");
            if user {
                cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
            }
            run(cmd.args(args).arg(&checked))
        };
        // --man=no: the man pages ship in the package, not on this host.
        let out = analyze(&["verify", "--man=no", "--generators=no"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains(&name),
            "systemd-analyze verify {name} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        let out = analyze(&["security", "--offline=yes"]);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let score: f64 = report
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {name}:\n{}", text(&out)));
        // "→ Overall exposure level for NAME: 1.1 OK 🙂": the word after the number.
        let verdict = report
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .unwrap_or("?");
        println!("systemd-analyze security --offline=yes {name}: {score:.1} {verdict}");
        scores.push((name, score));
    }
    for (name, max) in MAX_EXPOSURE {
        let (_, score) = scores
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no score for {name}"));
        assert!(
            *score <= max,
            "{name} is rated {score:.1} by systemd-analyze security; at most {max:.1} expected"
        );
    }
}

/// The units, the sysusers.d/tmpfiles.d entries and the programs' defaults agree on users and
/// directories.
#[test]
fn units_and_packaging_files_match_the_programs_defaults() {
    let read =
        |p: &str| fs::read_to_string(tree().join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let coordinator = read("systemd/pacpool-coordinator.service");
    let daemon = read("systemd/pacpoold.service");

    // The coordinator's database and admin token land in its StateDirectory.
    let state = Path::new("/var/lib").join(unit_value(&coordinator, "StateDirectory").unwrap());
    let settings = pacpool::coordinator::Settings::default();
    assert!(
        settings.database.starts_with(&state),
        "{settings:?} vs {state:?}"
    );
    assert!(
        settings.admin_token_file.starts_with(&state),
        "{settings:?} vs {state:?}"
    );
    // It runs as the user sysusers.d creates, who owns the tmpfiles.d directory.
    let user = unit_value(&coordinator, "User").expect("the coordinator has a User=");
    let sysusers = read("packaging/arch/pacpool-coordinator.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user.as_str()])),
        "sysusers.d does not create {user}:\n{sysusers}"
    );
    let tmpfiles = read("packaging/arch/pacpool-coordinator.tmpfiles");
    assert!(
        tmpfiles.contains(&format!("d {} 0700 {user} {user}", state.display())),
        "{tmpfiles}"
    );
    assert!(
        unit_value(&coordinator, "ExecStart")
            .unwrap()
            .contains("/etc/pacpool/coordinator.toml")
    );

    // pacpoold: state and socket directories as the unit and tmpfiles.d create them.
    let config = pacpool::daemon::DaemonConfig::default();
    let state = Path::new("/var/lib").join(unit_value(&daemon, "StateDirectory").unwrap());
    let runtime = Path::new("/run").join(unit_value(&daemon, "RuntimeDirectory").unwrap());
    assert_eq!(config.state_dir, state);
    assert_eq!(config.socket.parent(), Some(runtime.as_path()));
    let tmpfiles = read("packaging/arch/pacpool.tmpfiles");
    assert!(
        tmpfiles.contains(&format!("d {} 0755 root root", runtime.display())),
        "{tmpfiles}"
    );
    assert!(
        tmpfiles.contains(&format!("d {} 0700 root root", state.display())),
        "{tmpfiles}"
    );
    assert!(
        unit_value(&daemon, "ExecStart")
            .unwrap()
            .contains(pacpool::daemon::config::DEFAULT_CONFIG_PATH)
    );
    // pacman and its hooks inherit the umask: files they create must stay world-readable.
    assert_eq!(unit_value(&daemon, "UMask").as_deref(), Some("0022"));
    assert_eq!(
        unit_value(&daemon, "User"),
        None,
        "pacpoold must run as root"
    );

    // The package version is the crate's.
    let pkgbuild = read("packaging/arch/PKGBUILD");
    let pkgver = pkgbuild
        .lines()
        .find_map(|l| l.strip_prefix("pkgver="))
        .expect("PKGBUILD sets pkgver");
    assert_eq!(
        pkgver,
        env!("CARGO_PKG_VERSION"),
        "PKGBUILD's pkgver vs Cargo.toml"
    );
}

#[test]
fn makepkg_builds_the_package_and_pacman_installs_it() {
    for (tool, package) in [
        ("makepkg", "makepkg"),
        ("fakeroot", "fakeroot"),
        ("setpriv", "util-linux"),
        ("zstd", "zstd"),
    ] {
        require(tool, package);
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: makepkg runs as `nobody` through setpriv, and pacman installs \
         only as root (even into a sandbox)"
    );
    let bins = bin_dir();
    let gen_docs = bins.join("examples/gen-docs");
    assert!(
        gen_docs.is_file(),
        "{} is missing: `cargo test` builds it; with `cargo test --test packaging`, run \
         `cargo build --examples` first",
        gen_docs.display()
    );

    // makepkg's directories, owned by nobody; the checkout is only read.
    let dir = tempfile::tempdir().expect("temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let work = dir.path().join("makepkg");
    let pkgdest = work.join("pkg");
    for d in [&work, &pkgdest, &work.join("build"), &work.join("src")] {
        fs::create_dir_all(d).expect("create a makepkg directory");
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).expect("chown to nobody");
    }
    // The tray is built only with `--features tray` (tests/run.sh builds all features).
    let tray = bins.join("pacpool-tray").is_file();
    if !tray {
        println!(
            "NOTE: {} was not built (cargo feature `tray`): packaging without pacpool-tray",
            bins.join("pacpool-tray").display()
        );
    }
    let started = std::time::Instant::now();
    let out = run(Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "env",
            "-i",
        ])
        .arg(format!("HOME={}", work.display()))
        .arg("PATH=/usr/bin:/bin")
        .arg(format!("BUILDDIR={}", work.join("build").display()))
        .arg(format!("SRCDEST={}", work.join("src").display()))
        .arg(format!("PKGDEST={}", pkgdest.display()))
        .arg("PKGEXT=.pkg.tar.zst")
        .arg(format!("PACPOOL_PREBUILT_DIR={}", bins.display()))
        .args((!tray).then_some("PACPOOL_NO_TRAY=1"))
        .args(["makepkg", "--nodeps", "--noconfirm", "--nocolor"])
        .current_dir(tree().join("packaging/arch")));
    assert!(
        out.status.success(),
        "makepkg failed ({}):\n{}",
        out.status,
        text(&out)
    );
    println!("makepkg: {:.1} s", started.elapsed().as_secs_f64());
    let mut packages: Vec<PathBuf> = fs::read_dir(&pkgdest)
        .expect("read PKGDEST")
        .map(|e| e.expect("read PKGDEST").path())
        .collect();
    packages.sort();
    let names: Vec<String> = packages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    let expected: &[&str] = if tray {
        &["pacpool", "pacpool-coordinator", "pacpool-tray"]
    } else {
        &["pacpool", "pacpool-coordinator"]
    };
    assert_eq!(packages.len(), expected.len(), "packages built: {names:?}");
    for pkg in expected {
        let prefix = format!("{pkg}-{version}-1-");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&prefix) && n.ends_with(".pkg.tar.zst")),
            "no {prefix}*.pkg.tar.zst among {names:?}"
        );
    }

    // Install both into a sandbox root. -dd: their dependencies (glibc, pacman, …) are not
    // in the sandbox. The package's own hook then runs chrooted into the sandbox, where
    // /usr/bin/pacpool cannot start without libc: pacman reports that and carries on.
    let sb = Sandbox::new();
    let mut args = vec!["-Udd".to_owned()];
    args.extend(packages.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sb.pacman_ok(&args);
    assert!(
        out.contains("Recording the new package state for pacpool"),
        "the hook did not run:\n{out}"
    );

    let root = sb.root();
    let listing = sb.pacman_ok(&["-Ql"]);
    let files: Vec<(String, String)> = listing
        .lines()
        .filter_map(|l| {
            let (pkg, path) = l.split_once(' ')?;
            let path = path.strip_prefix(root.to_str()?)?;
            (!path.ends_with('/')).then(|| (pkg.to_owned(), path.to_owned()))
        })
        .collect();
    let owner = |path: &str| {
        files
            .iter()
            .find(|(_, p)| p == path)
            .map(|(pkg, _)| pkg.as_str())
            .unwrap_or_else(|| panic!("{path} is not installed; pacman -Ql:\n{listing}"))
    };
    let mut expected_files = vec![
        ("pacpool", "/usr/bin/pacpool"),
        ("pacpool", "/usr/bin/pacpoold"),
        ("pacpool", "/usr/lib/systemd/system/pacpoold.service"),
        ("pacpool", "/usr/share/libalpm/hooks/pacpool.hook"),
        ("pacpool", "/etc/pacpool/pacpoold.toml"),
        ("pacpool", "/usr/lib/tmpfiles.d/pacpool.conf"),
        ("pacpool", "/usr/share/bash-completion/completions/pacpool"),
        ("pacpool", "/usr/share/zsh/site-functions/_pacpool"),
        (
            "pacpool",
            "/usr/share/fish/vendor_completions.d/pacpool.fish",
        ),
        ("pacpool", "/usr/share/man/man1/pacpool.1.gz"),
        ("pacpool", "/usr/share/man/man1/pacpool-sync.1.gz"),
        (
            "pacpool",
            "/usr/share/man/man1/pacpool-admin-pools-create.1.gz",
        ),
        ("pacpool", "/usr/share/man/man8/pacpoold.8.gz"),
        ("pacpool", "/usr/share/bash-completion/completions/pacpoold"),
        ("pacpool-coordinator", "/usr/bin/pacpool-coordinator"),
        (
            "pacpool-coordinator",
            "/usr/lib/systemd/system/pacpool-coordinator.service",
        ),
        ("pacpool-coordinator", "/etc/pacpool/coordinator.toml"),
        (
            "pacpool-coordinator",
            "/usr/lib/sysusers.d/pacpool-coordinator.conf",
        ),
        (
            "pacpool-coordinator",
            "/usr/lib/tmpfiles.d/pacpool-coordinator.conf",
        ),
        (
            "pacpool-coordinator",
            "/usr/share/man/man8/pacpool-coordinator.8.gz",
        ),
        (
            "pacpool-coordinator",
            "/usr/share/zsh/site-functions/_pacpool-coordinator",
        ),
    ];
    if tray {
        expected_files.extend([
            ("pacpool-tray", "/usr/bin/pacpool-tray"),
            ("pacpool-tray", "/usr/lib/systemd/user/pacpool-tray.service"),
            ("pacpool-tray", "/etc/xdg/autostart/pacpool-tray.desktop"),
            (
                "pacpool-tray",
                "/usr/share/icons/hicolor/scalable/apps/pacpool-in-sync.svg",
            ),
            (
                "pacpool-tray",
                "/usr/share/icons/hicolor/32x32/apps/pacpool-in-sync.png",
            ),
            ("pacpool-tray", "/usr/share/man/man1/pacpool-tray.1.gz"),
            (
                "pacpool-tray",
                "/usr/share/bash-completion/completions/pacpool-tray",
            ),
        ]);
    }
    for (pkg, path) in expected_files {
        assert_eq!(owner(path), pkg, "{path} belongs to the wrong package");
    }
    // Nothing outside the usual places (and nothing under /usr/local, /var/run, …).
    for (_, path) in &files {
        assert!(
            [
                "/usr/bin/",
                "/usr/lib/",
                "/usr/share/",
                "/etc/pacpool/",
                "/etc/xdg/autostart/"
            ]
            .iter()
            .any(|p| path.starts_with(p)),
            "unexpected file {path}"
        );
    }

    // Installed files are the tree's, root-owned, with the intended modes.
    let same = |installed: &str, source: &str| {
        let a = fs::read(root.join(&installed[1..])).expect("read the installed file");
        let b = fs::read(tree().join(source)).expect("read the source file");
        assert!(a == b, "{installed} differs from {source}");
    };
    same(
        "/usr/lib/systemd/system/pacpoold.service",
        "systemd/pacpoold.service",
    );
    same(
        "/usr/lib/systemd/system/pacpool-coordinator.service",
        "systemd/pacpool-coordinator.service",
    );
    same(
        "/usr/share/libalpm/hooks/pacpool.hook",
        "packaging/pacpool.hook",
    );
    same(
        "/usr/lib/sysusers.d/pacpool-coordinator.conf",
        "packaging/arch/pacpool-coordinator.sysusers",
    );
    same(
        "/usr/lib/tmpfiles.d/pacpool.conf",
        "packaging/arch/pacpool.tmpfiles",
    );
    if tray {
        same(
            "/usr/lib/systemd/user/pacpool-tray.service",
            "systemd/pacpool-tray.service",
        );
        same(
            "/etc/xdg/autostart/pacpool-tray.desktop",
            "packaging/pacpool-tray.desktop",
        );
    }
    let installed = |p: &str| fs::read_to_string(root.join(p)).expect("read an installed file");
    assert_eq!(
        installed("etc/pacpool/pacpoold.toml"),
        pacpool::daemon::config::EXAMPLE
    );
    assert_eq!(
        installed("etc/pacpool/coordinator.toml"),
        pacpool::coordinator::EXAMPLE_CONFIG
    );
    for (path, mode) in [
        ("usr/bin/pacpool", 0o755),
        ("usr/bin/pacpoold", 0o755),
        ("usr/bin/pacpool-coordinator", 0o755),
        ("etc/pacpool/pacpoold.toml", 0o600),
        ("etc/pacpool/coordinator.toml", 0o644),
        ("usr/share/libalpm/hooks/pacpool.hook", 0o644),
    ] {
        let m = fs::metadata(root.join(path)).expect("stat an installed file");
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (mode, 0, 0),
            "{path}: mode, uid, gid"
        );
    }
    // The stripped binaries still run; the hook and the units start installed binaries.
    let out = run(Command::new(root.join("usr/bin/pacpool")).arg("--version"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pacpool {version}")
    );
    let hook = installed("usr/share/libalpm/hooks/pacpool.hook");
    let exec = hook
        .lines()
        .find_map(|l| l.strip_prefix("Exec = "))
        .expect("the hook's Exec");
    assert!(
        root.join(&exec.split_whitespace().next().unwrap()[1..])
            .is_file(),
        "{exec}"
    );
    for unit in ["pacpoold.service", "pacpool-coordinator.service"] {
        let text = installed(&format!("usr/lib/systemd/system/{unit}"));
        let exec = unit_value(&text, "ExecStart").unwrap();
        let bin = exec.split_whitespace().next().unwrap();
        assert!(
            root.join(&bin[1..]).is_file(),
            "{unit}: {bin} is not installed"
        );
    }

    // Metadata: dependencies and backup files.
    if tray {
        let info = sb.pacman_ok(&["-Qi", "pacpool-tray"]);
        assert!(
            info.lines().any(|l| l.starts_with("Depends On")
                && ["pacpool", "gtk3", "libayatana-appindicator"]
                    .iter()
                    .all(|d| l.split_whitespace().any(|w| w == *d))),
            "pacpool-tray's dependencies:\n{info}"
        );
    }
    for (pkg, depends, backup) in [
        (
            "pacpool",
            "glibc  gcc-libs  pacman",
            "/etc/pacpool/pacpoold.toml",
        ),
        (
            "pacpool-coordinator",
            "glibc  gcc-libs",
            "/etc/pacpool/coordinator.toml",
        ),
    ] {
        let info = sb.pacman_ok(&["-Qii", pkg]);
        let line = |key: &str| {
            info.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(": "))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {key} for {pkg}:\n{info}"))
        };
        assert_eq!(line("Depends On"), depends, "{pkg}'s dependencies");
        assert!(
            info.lines()
                .any(|l| l.starts_with("UNMODIFIED\t") && l.ends_with(backup)),
            "{backup} is not a backup file of {pkg}:\n{info}"
        );
    }

    // namcap, Arch's package linter, when it can be had.
    match find_in_path("namcap") {
        Some(namcap) => {
            let mut targets = vec![tree().join("packaging/arch/PKGBUILD")];
            targets.extend(packages.iter().cloned());
            for target in targets {
                let out = run(Command::new(&namcap).arg(&target));
                let report = String::from_utf8_lossy(&out.stdout);
                println!("namcap {}:\n{report}", target.display());
                let errors: Vec<&str> = report.lines().filter(|l| l.contains(" E: ")).collect();
                assert!(
                    errors.is_empty(),
                    "namcap errors for {}:\n{report}",
                    target.display()
                );
            }
        }
        None => println!(
            "SKIPPED namcap: it is not installed (Debian 12 does not package it and it is not on \
             PyPI); run `namcap packaging/arch/PKGBUILD` and `namcap *.pkg.tar.zst` on Arch"
        ),
    }
}
