//! The Arch package (packaging/arch/PKGBUILD) and the systemd units (systemd/).
//!
//! - Every unit in `systemd/` passes `systemd-analyze verify`, and `systemd-analyze security
//!   --offline=yes` scores are printed and held under a ceiling. verify wants each ExecStart
//!   binary to exist, so it checks a copy of the unit whose `/usr/bin/NAME` points at the
//!   binary cargo built (or at a stub for a binary this build lacks, e.g. the tray without
//!   `--features tray`). It runs without systemd as PID 1; user units (installed for the
//!   graphical session) get `--user` and a temporary `XDG_RUNTIME_DIR`.
//! - The real `makepkg` builds the package as the unprivileged user `nobody` (makepkg refuses
//!   root) the way a user without this checkout would: the PKGBUILD alone in an empty
//!   directory, its git source pointed at a clone of HEAD (`PACPOOL_GIT=git+file://…`),
//!   `makepkg --source`, then a full release build from that source package, offline, with
//!   `options=(debug)`. One build per run (several minutes on 2 cores). The version must name
//!   the commit; the real `pacman -U` installs the packages into a sandbox root, and the
//!   installed file list, modes, `backup=`, dependencies, licenses and configuration examples
//!   are checked, as well as the debug package's sources and the absence of build-machine
//!   paths in every binary. The checkout's `git status` must not change.
//! - namcap runs on the PKGBUILD and the packages when it is installed. It is not packaged for
//!   Debian 12 (nor on PyPI), so the test says it skipped that part.
//!
//! Needs root (`setpriv` to `nobody`, pacman transactions) plus makepkg, fakeroot, pacman,
//! git, debugedit and systemd-analyze: `bash tests/run.sh` installs the Debian packages.

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

/// Runs `cmd` as `nobody` with only the environment given (`env -i`).
/// The Arch package that ships the shared library `soname` (the ones pacpool's programs can
/// link; `None` for any other, so a new one is noticed).
fn elf_provider(soname: &str) -> Option<&'static str> {
    let table: &[(&str, &str)] = &[
        ("libc.so", "glibc"),
        ("libm.so", "glibc"),
        ("libdl.so", "glibc"),
        ("libpthread.so", "glibc"),
        ("librt.so", "glibc"),
        ("libutil.so", "glibc"),
        ("ld-linux", "glibc"),
        ("libgcc_s.so", "gcc-libs"),
        ("libgtk-3.so", "gtk3"),
        ("libgdk-3.so", "gtk3"),
        ("libglib-2.0.so", "glib2"),
        ("libgobject-2.0.so", "glib2"),
        ("libgio-2.0.so", "glib2"),
        ("libcairo.so", "cairo"),
        ("libgdk_pixbuf-2.0.so", "gdk-pixbuf2"),
        ("libpango", "pango"),
        ("libdbus-1.so", "dbus"),
    ];
    table
        .iter()
        .find(|(prefix, _)| soname.starts_with(prefix))
        .map(|(_, pkg)| *pkg)
}

fn as_nobody(dir: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "env",
        "-i",
    ]);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    run(cmd.args(args).current_dir(dir))
}

fn git(dir: &Path, args: &[&str]) -> String {
    // The clone is owned by nobody: root's git would refuse it as "dubious ownership".
    let out = run(Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(dir)
        .args(args));
    assert!(out.status.success(), "git {args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn chown_nobody(path: &Path) {
    let out = run(Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(path));
    assert!(
        out.status.success(),
        "chown {}: {}",
        path.display(),
        text(&out)
    );
}

/// One full build, the way someone without this checkout builds: a clone of HEAD stands in
/// for the upstream repository (`PACPOOL_GIT=git+file://…`: the tests have no network), the
/// PKGBUILD is copied alone into an empty directory, `makepkg --source` makes the source
/// package, and makepkg builds from that, extracted into another empty directory, as
/// `nobody`, with `options=(debug)`, offline (cargo's registry cache is copied in), with its
/// own toolchain copy (rustup's lives under /root). Then: the version names the commit,
/// pacman installs the packages into a sandbox root, the debug package holds the sources and
/// no binary names a build-machine path. Only committed changes are built.
#[test]
fn makepkg_builds_the_package_and_pacman_installs_it() {
    for (tool, package) in [
        ("makepkg", "makepkg"),
        ("fakeroot", "fakeroot"),
        ("setpriv", "util-linux"),
        ("zstd", "zstd"),
        ("git", "git"),
        ("debugedit", "debugedit"),
        ("bsdtar", "libarchive-tools"),
    ] {
        require(tool, package);
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: makepkg runs as `nobody` through setpriv, and pacman installs \
         only as root (even into a sandbox)"
    );
    let status_before = git(tree(), &["status", "--porcelain"]);
    if !status_before.is_empty() {
        println!(
            "NOTE: the checkout has uncommitted changes; the package is built from HEAD:\n\
             {status_before}"
        );
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let work = dir.path();
    fs::set_permissions(work, fs::Permissions::from_mode(0o755)).expect("chmod");
    let tray = cfg!(feature = "tray");
    if !tray {
        println!("NOTE: built without cargo feature `tray`: packaging without pacpool-tray");
    }

    // The toolchain this test was built with, hard-linked (copied across file systems).
    let sysroot = run(Command::new("rustc").args(["--print", "sysroot"]));
    assert!(
        sysroot.status.success(),
        "rustc --print sysroot: {}",
        text(&sysroot)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let toolchain = work.join("toolchain");
    let linked = run(Command::new("cp").arg("-al").arg(&sysroot).arg(&toolchain));
    if !linked.status.success() {
        let _ = fs::remove_dir_all(&toolchain);
        let copied = run(Command::new("cp").arg("-a").arg(&sysroot).arg(&toolchain));
        assert!(
            copied.status.success(),
            "copy the toolchain: {}",
            text(&copied)
        );
    }
    // cargo's registry (index and .crate files) for an offline `cargo fetch --locked`.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = work.join("cargo/registry");
    fs::create_dir_all(&registry).expect("create cargo/registry");
    for part in ["index", "cache"] {
        let out = run(Command::new("cp")
            .arg("-a")
            .arg(cargo_home.join("registry").join(part))
            .arg(&registry));
        assert!(
            out.status.success(),
            "copy cargo's registry {part} from {} (run `cargo fetch --locked` once with \
             network): {}",
            cargo_home.display(),
            text(&out)
        );
    }

    // The upstream repository: a clone of this checkout's HEAD.
    let clone = work.join("clone");
    let out = run(Command::new("git")
        .args(["clone", "--quiet", "--no-local"])
        .arg(tree())
        .arg(&clone));
    assert!(out.status.success(), "git clone: {}", text(&out));
    let head = git(tree(), &["rev-parse", "HEAD"]);
    assert_eq!(
        git(&clone, &["rev-parse", "HEAD"]),
        head,
        "the clone's HEAD"
    );
    let count = git(&clone, &["rev-list", "--count", "HEAD"]);

    // .gitignore covers what makepkg leaves in packaging/arch when run there.
    let arch = clone.join("packaging/arch");
    for d in ["src/pacpool", "pkg/pacpool/usr", "pacpool/objects"] {
        fs::create_dir_all(arch.join(d)).expect("create a makepkg directory");
        fs::write(arch.join(d).join("f"), "x").expect("write");
    }
    for f in [
        "pacpool-0.1.0.r1.g1234567-1-x86_64.pkg.tar.zst",
        "pacpool-debug-0.1.0.r1.g1234567-1-x86_64.pkg.tar.zst",
        "pacpool-0.1.0.r1.g1234567-1.src.tar.gz",
        "pacpool-0.1.0.r1.g1234567-1-x86_64-build.log",
    ] {
        fs::write(arch.join(f), "x").expect("write");
    }
    assert_eq!(
        git(&clone, &["status", "--porcelain", "--untracked-files=all"]),
        "",
        "makepkg's output in packaging/arch is not ignored"
    );
    fs::remove_dir_all(&clone).expect("remove the clone");
    let out = run(Command::new("git")
        .args(["clone", "--quiet", "--no-local"])
        .arg(tree())
        .arg(&clone));
    assert!(out.status.success(), "git clone: {}", text(&out));

    // makepkg's directories, and a makepkg.conf with options=(debug).
    let (source_dir, build_dir, pkgdest) = (work.join("a"), work.join("b"), work.join("pkgdest"));
    for d in [
        &source_dir,
        &build_dir,
        &pkgdest,
        &work.join("build"),
        &work.join("srcdest"),
    ] {
        fs::create_dir_all(d).expect("create a makepkg directory");
    }
    fs::copy(
        tree().join("packaging/arch/PKGBUILD"),
        source_dir.join("PKGBUILD"),
    )
    .expect("copy the PKGBUILD");
    let conf: String = fs::read_to_string("/etc/makepkg.conf")
        .expect("read /etc/makepkg.conf")
        .lines()
        .filter(|l| !l.starts_with("OPTIONS="))
        .map(|l| format!("{l}\n"))
        .collect();
    let conf_path = work.join("makepkg.conf");
    fs::write(
        &conf_path,
        format!(
            "{conf}OPTIONS=(strip docs !libtool !staticlibs emptydirs zipman purge debug !lto)\n"
        ),
    )
    .expect("write makepkg.conf");
    chown_nobody(work);

    let version = env!("CARGO_PKG_VERSION");
    let path = |p: &Path| p.display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), path(work)),
        (
            "PATH".into(),
            format!("{}:/usr/bin:/bin", path(&toolchain.join("bin"))),
        ),
        ("CARGO_HOME".into(), path(&work.join("cargo"))),
        ("CARGO_NET_OFFLINE".into(), "true".into()),
        ("BUILDDIR".into(), path(&work.join("build"))),
        ("SRCDEST".into(), path(&work.join("srcdest"))),
        ("PKGDEST".into(), path(&pkgdest)),
        ("PKGEXT".into(), ".pkg.tar.zst".into()),
        ("SRCEXT".into(), ".src.tar.gz".into()),
        ("PACPOOL_GIT".into(), format!("git+file://{}", path(&clone))),
    ];
    if !tray {
        env.push(("PACPOOL_NO_TRAY".into(), "1".into()));
    }
    let makepkg = |dir: &Path, env: &[(String, String)], extra: &[&str]| {
        let conf = path(&conf_path);
        let mut args = vec![
            "makepkg",
            "--config",
            &conf,
            "--nodeps",
            "--noconfirm",
            "--nocolor",
        ];
        args.extend(extra);
        let out = as_nobody(dir, env, &args);
        assert!(
            out.status.success(),
            "makepkg {extra:?} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        out
    };

    // The release variant: release.sh makes the version's tarball (git archive) and its
    // PKGBUILD; makepkg checks the checksum, extracts and runs prepare() (cargo fetch). Its
    // build() is the git variant's, which the full build below runs.
    let release = work.join("release");
    let out = run(Command::new(tree().join("packaging/arch/release.sh"))
        .arg(&release)
        .arg(&head));
    assert!(out.status.success(), "release.sh failed:\n{}", text(&out));
    chown_nobody(&release);
    let mut release_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "PACPOOL_GIT" && k != "BUILDDIR")
        .cloned()
        .collect();
    release_env.push(("BUILDDIR".into(), path(&release.join("build"))));
    let out = makepkg(&release, &release_env, &["--nobuild"]);
    let log = text(&out);
    assert!(
        log.contains(&format!("pacpool-{version}.tar.gz ... Passed"))
            && log.contains("Starting prepare()"),
        "the release variant's makepkg --nobuild:\n{log}"
    );
    let out = makepkg(&release, &release_env, &["--printsrcinfo"]);
    let srcinfo = String::from_utf8_lossy(&out.stdout);
    assert!(
        srcinfo
            .lines()
            .any(|l| l.trim() == format!("pkgver = {version}")),
        "the release variant's .SRCINFO:\n{srcinfo}"
    );
    fs::remove_dir_all(release.join("build")).expect("remove the release variant's build");

    // The source package holds the PKGBUILD (and .SRCINFO) only, and is all a build needs.
    makepkg(&source_dir, &env, &["--source"]);
    let srcpkg = fs::read_dir(&source_dir)
        .expect("read the source directory")
        .map(|e| e.expect("read the source directory").path())
        .find(|p| p.to_string_lossy().ends_with(".src.tar.gz"))
        .expect("makepkg --source made no .src.tar.gz");
    let listing = run(Command::new("bsdtar").arg("-tf").arg(&srcpkg));
    let mut entries: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["pacpool/", "pacpool/.SRCINFO", "pacpool/PKGBUILD"],
        "the source package's contents"
    );
    let out = run(Command::new("bsdtar")
        .args(["-xf"])
        .arg(&srcpkg)
        .args(["--strip-components", "1", "-C"])
        .arg(&build_dir));
    assert!(
        out.status.success(),
        "extract the source package: {}",
        text(&out)
    );
    chown_nobody(&build_dir);

    // The build. --nocheck: the library's unit tests already ran in this test suite.
    let started = std::time::Instant::now();
    makepkg(&build_dir, &env, &["--nocheck"]);
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
    for p in &packages {
        println!(
            "{}: {:.1} MiB",
            p.file_name().unwrap().to_string_lossy(),
            fs::metadata(p).expect("stat a package").len() as f64 / 1048576.0
        );
    }
    // The version names the commit: <Cargo.toml version>.r<commits>.g<hash>.
    let pkgver = format!("{version}.r{count}.g{}", &head[..7]);
    let mut expected = vec!["pacpool", "pacpool-coordinator", "pacpool-debug"];
    if tray {
        expected.push("pacpool-tray");
    }
    assert_eq!(packages.len(), expected.len(), "packages built: {names:?}");
    let sb = Sandbox::new();
    for pkg in &expected {
        let prefix = format!("{pkg}-{pkgver}-1-");
        let file = packages
            .iter()
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".pkg.tar.zst")
            })
            .unwrap_or_else(|| panic!("no {prefix}*.pkg.tar.zst among {names:?}"));
        let info = sb.pacman_ok(&["-Qip", &path(file)]);
        assert!(
            info.lines()
                .any(|l| l.starts_with("Version") && l.ends_with(&format!(": {pkgver}-1"))),
            "pacman -Qip {}:\n{info}",
            path(file)
        );
    }
    let (debug, packages): (Vec<PathBuf>, Vec<PathBuf>) = packages
        .into_iter()
        .partition(|p| p.to_string_lossy().contains("/pacpool-debug-"));

    // The debug package: the binaries' debug info, and pacpool's sources. Their debug info
    // names /usr/src/debug/pacpool/pacpool/src/… ($srcdir/pacpool/src/… mapped); makepkg
    // since 6.1 (Arch) copies the sources there, makepkg 6.0 (Debian 12) one level up, to
    // /usr/src/debug/pacpool/src/….
    let listing = run(Command::new("bsdtar").arg("-tf").arg(&debug[0]));
    let debug_files = String::from_utf8_lossy(&listing.stdout).into_owned();
    let has = |f: &str| debug_files.lines().any(|l| l == f);
    for f in [
        "usr/lib/debug/usr/bin/pacpool.debug",
        "usr/lib/debug/usr/bin/pacpoold.debug",
        "usr/lib/debug/usr/bin/pacpool-coordinator.debug",
    ] {
        assert!(has(f), "{f} is not in the debug package:\n{debug_files}");
    }
    let sources_at = ["usr/src/debug/pacpool/pacpool/", "usr/src/debug/pacpool/"]
        .into_iter()
        .find(|dir| has(&format!("{dir}src/lib.rs")))
        .unwrap_or_else(|| {
            panic!("pacpool's sources are not in the debug package:\n{debug_files}")
        });
    for f in ["src/apply.rs", "src/bin/pacpoold.rs"] {
        assert!(
            has(&format!("{sources_at}{f}")),
            "{sources_at}{f} is not in the debug package:\n{debug_files}"
        );
    }
    let sources = debug_files
        .lines()
        .filter(|l| l.starts_with("usr/src/debug/") && l.ends_with(".rs"))
        .count();
    println!("debug package: {sources} source files under {sources_at}");
    if sources_at == "usr/src/debug/pacpool/" {
        println!(
            "NOTE: makepkg < 6.1 puts the debug sources one level above the path the debug info \
             names (/usr/src/debug/pacpool/pacpool/src/…); makepkg on Arch puts them there"
        );
    }

    // The tree was only read: nothing new or changed in the checkout.
    assert_eq!(
        git(tree(), &["status", "--porcelain"]),
        status_before,
        "the build changed the checkout"
    );

    // Install them (not the debug package) into a sandbox root. -dd: their dependencies
    // (glibc, pacman, …) are not in the sandbox. The package's own hook then runs chrooted
    // into the sandbox, where /usr/bin/pacpool cannot start without libc: pacman reports
    // that and carries on.
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
        ("pacpool", "/usr/share/licenses/pacpool/LICENSE-MIT"),
        ("pacpool", "/usr/share/licenses/pacpool/LICENSE-APACHE"),
        (
            "pacpool-coordinator",
            "/usr/share/licenses/pacpool-coordinator/LICENSE-MIT",
        ),
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
            (
                "pacpool-tray",
                "/usr/share/licenses/pacpool-tray/LICENSE-APACHE",
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

    // No build-machine path in the binaries (panic messages name source files) nor in their
    // debug info: makepkg maps $srcdir, build() cargo's registry, to /usr/src/debug/pacpool.
    let debug_root = work.join("debug-root");
    fs::create_dir_all(&debug_root).expect("create debug-root");
    let out = run(Command::new("bsdtar")
        .arg("-xf")
        .arg(&debug[0])
        .arg("-C")
        .arg(&debug_root));
    assert!(
        out.status.success(),
        "extract the debug package: {}",
        text(&out)
    );
    let checked = [root.join("usr/bin"), debug_root.join("usr/lib/debug")];
    for needle in [path(work), "/.cargo/".to_owned(), path(&cargo_home)] {
        let out = run(Command::new("grep")
            .args(["-rlaF", "--", &needle])
            .args(&checked));
        assert!(
            out.stdout.is_empty(),
            "these files name the build machine's path {needle}:\n{}",
            text(&out)
        );
    }
    let out = run(Command::new("grep")
        .args(["-qaF", "/usr/src/debug/pacpool/pacpool"])
        .arg(debug_root.join("usr/lib/debug/usr/bin/pacpoold.debug")));
    assert!(
        out.status.success(),
        "pacpoold's debug info does not name its compilation directory \
         /usr/src/debug/pacpool/pacpool ($srcdir/pacpool mapped)"
    );

    // Metadata: dependencies and backup files.
    if tray {
        let info = sb.pacman_ok(&["-Qii", "pacpool-tray"]);
        assert!(
            info.lines().any(|l| l.starts_with("UNMODIFIED\t")
                && l.ends_with("/etc/xdg/autostart/pacpool-tray.desktop")),
            "the autostart entry is not a backup file of pacpool-tray:\n{info}"
        );
        assert!(
            info.lines().any(|l| l.starts_with("Depends On")
                && [
                    "pacpool",
                    "gtk3",
                    "libayatana-appindicator",
                    "hicolor-icon-theme"
                ]
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

    // What namcap's ELF rule checks: every library a packaged program links must come from a
    // package it depends on (directly, or through gtk3 for the tray, as namcap's "implicitly
    // satisfied"), and no program links a library nobody accounted for.
    let mut linking = vec!["pacpool", "pacpool-coordinator"];
    if tray {
        linking.push("pacpool-tray");
    }
    for pkg in linking {
        let info = sb.pacman_ok(&["-Qi", pkg]);
        let depends: Vec<&str> = info
            .lines()
            .find(|l| l.starts_with("Depends On"))
            .and_then(|l| l.split_once(": "))
            .map(|(_, v)| v.split_whitespace().collect())
            .unwrap_or_default();
        for file in sb.pacman_ok(&["-Qlq", pkg]).lines() {
            let Some(rel) = file.strip_prefix('/') else {
                continue;
            };
            let path = sb.root().join(rel);
            if !path.is_file() || !fs::read(&path).unwrap().starts_with(b"\x7fELF") {
                continue;
            }
            let dynamic = text(&run(Command::new("readelf").arg("-d").arg(&path)));
            for needed in dynamic
                .lines()
                .filter(|l| l.contains("(NEEDED)"))
                .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            {
                let provider = elf_provider(needed).unwrap_or_else(|| {
                    panic!("{file} ({pkg}) links {needed}, which no known Arch package provides: add it to the package's depends and to elf_provider")
                });
                let via_gtk3 = ["glib2", "cairo", "gdk-pixbuf2", "dbus", "pango"];
                assert!(
                    depends.contains(&provider)
                        || (depends.contains(&"gtk3") && via_gtk3.contains(&provider)),
                    "{file} ({pkg}) links {needed} from {provider}, which {pkg} does not depend on (depends: {depends:?})"
                );
            }
        }
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
