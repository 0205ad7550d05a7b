//! Engine benchmark: prints our figures next to a baseline measured in the same run.
//!
//! `cargo bench --bench engine` (needs pacman's `pacman` binary for the baseline).
//! Builds a synthetic 2,000-package local database and measures:
//! 1. a full snapshot (`pacpool snapshot`, whole process) vs `pacman -Q` on the same database;
//! 2. the unchanged re-check (`Fingerprint::of`);
//! 3. diff + plan for 2,000 vs 2,000 packages with 100 differences;
//! 4. reading a 15,000-entry gzip sync database (about the size of Arch's extra.db).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pacpool::localdb::{Fingerprint, Reason, read_local_db};
use pacpool::plan::{Availability, Policy, plan, status};
use pacpool::snapshot::{PackageState, Snapshot};
use pacpool::syncdb::{SyncDb, SyncPackage, read_sync_db};

const PACKAGES: usize = 2000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_n(n: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn run_quiet(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
}

fn write_db(db: &Path) {
    let local = db.join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(db.join("sync")).unwrap();
    std::fs::write(local.join("ALPM_DB_VERSION"), "9\n").unwrap();
    for i in 0..PACKAGES {
        let (name, version) = (format!("pkg{i:04}"), format!("1.{i}-1"));
        let dir = local.join(format!("{name}-{version}"));
        std::fs::create_dir(&dir).unwrap();
        let reason = if i % 3 == 0 { "" } else { "%REASON%\n1\n\n" };
        let desc = format!(
            "%NAME%\n{name}\n\n%VERSION%\n{version}\n\n%BASE%\n{name}\n\n%DESC%\nSynthetic package {i}\n\n\
             %URL%\nhttps://example.org/{name}\n\n%ARCH%\nx86_64\n\n%BUILDDATE%\n1700000000\n\n\
             %INSTALLDATE%\n1700000100\n\n%PACKAGER%\nBench <bench@example.org>\n\n%SIZE%\n123456\n\n\
             {reason}%LICENSE%\nMIT\n\n%VALIDATION%\nsha256\n\n%DEPENDS%\npkg0002\npkg0003>=1.0\n\n\
             %PROVIDES%\nlib{name}.so=1-64\n\n%XDATA%\npkgtype=pkg\n\n"
        );
        std::fs::write(dir.join("desc"), desc).unwrap();
        std::fs::write(dir.join("files"), "%FILES%\nusr/\n").unwrap();
    }
}

/// The target for the plan figure: 100 differences from `current`.
fn target_with_100_changes(current: &Snapshot) -> Snapshot {
    let mut pkgs: Vec<PackageState> = current.packages().to_vec();
    for (i, p) in pkgs.iter_mut().enumerate().take(60) {
        match i % 3 {
            0 => p.version = format!("2.{i}-1").parse().unwrap(), // upgrade
            1 => p.version = format!("0.{i}-1").parse().unwrap(), // downgrade
            _ => {
                p.reason = match p.reason {
                    Reason::Explicit => Reason::Dependency,
                    Reason::Dependency => Reason::Explicit,
                }
            }
        }
    }
    pkgs.drain(100..120); // 20 removals
    for i in 0..20 {
        pkgs.push(PackageState {
            name: format!("newpkg{i}").parse().unwrap(),
            version: "1.0-1".parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason: Reason::Explicit,
            repo: Some("core".parse().unwrap()),
        });
    }
    Snapshot::new(pkgs).unwrap()
}

/// A gzip sync database of `n` entries, as repo-add writes them.
fn write_sync_db(path: &Path, n: usize) -> usize {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        let (name, ver) = (format!("package-number-{i}"), "1.2.3-1");
        let desc = format!(
            "%FILENAME%\n{name}-{ver}-x86_64.pkg.tar.zst\n\n%NAME%\n{name}\n\n%BASE%\n{name}\n\n\
             %VERSION%\n{ver}\n\n%DESC%\nA package\n\n%CSIZE%\n1000\n\n%ISIZE%\n4000\n\n\
             %SHA256SUM%\n{}\n\n%PGPSIG%\n{}\n\n%URL%\nhttps://example.org\n\n%LICENSE%\nGPL\n\n\
             %ARCH%\nx86_64\n\n%BUILDDATE%\n1700000000\n\n%PACKAGER%\nBench <b@example.org>\n\n\
             %DEPENDS%\nglibc\nbash\n\n",
            "ab".repeat(32),
            "QUJD".repeat(150)
        );
        let mut h = tar::Header::new_ustar();
        h.set_size(desc.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{name}-{ver}/desc"), desc.as_bytes())
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(path, &gz).unwrap();
    gz.len()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    write_db(&db);
    let conf = tmp.path().join("pacman.conf");
    std::fs::write(
        &conf,
        format!(
            "[options]\nDBPath = {}\nArchitecture = auto\n",
            db.display()
        ),
    )
    .unwrap();
    let pacpool = env!("CARGO_BIN_EXE_pacpool");
    let runs = 40;

    // 1. Whole process: pacman -Q vs pacpool snapshot, alternating to share any noise.
    let (mut pac, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        run_quiet(
            Command::new("pacman")
                .args(["-Q", "--dbpath"])
                .arg(&db)
                .arg("--config")
                .arg(&conf),
        );
        pac.push(t.elapsed());
        let t = Instant::now();
        run_quiet(
            Command::new(pacpool)
                .args(["snapshot", "--dbpath"])
                .arg(&db)
                .arg("--pacman-conf")
                .arg(&conf),
        );
        ours.push(t.elapsed());
    }
    let (pac, ours) = (median(pac), median(ours));
    let in_process = time_n(runs, || {
        let local = read_local_db(&db).unwrap();
        let snap = Snapshot::from_local(&local, |_| None);
        std::hint::black_box(snap.hash());
    });

    // 2. Unchanged re-check.
    let before = Fingerprint::of(&db).unwrap();
    let iters = 2000;
    let t = Instant::now();
    for _ in 0..iters {
        assert_eq!(std::hint::black_box(Fingerprint::of(&db).unwrap()), before);
    }
    let recheck = t.elapsed() / iters;

    // 3. Diff + plan, 2,000 vs 2,000 with 100 differences.
    let local = read_local_db(&db).unwrap();
    let current = Snapshot::from_local(&local, |_| Some("core".parse().unwrap()));
    let target = target_with_100_changes(&current);
    let offers = target
        .packages()
        .iter()
        .map(|p| SyncPackage {
            repo: "core".parse().unwrap(),
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch.clone(),
            filename: format!("{}-{}-{}.pkg.tar.zst", p.name, p.version, p.arch),
            sha256: None,
            csize: None,
            isize: None,
            pgpsig: None,
            depends: vec!["pkg0000".into()],
            provides: vec![],
            conflicts: vec![],
            replaces: vec![],
        })
        .collect();
    let db_entry = SyncDb {
        repo: "core".parse().unwrap(),
        path: "/synthetic/core.db".into(),
        packages: offers,
    };
    let avail = Availability::new(vec![("core".parse().unwrap(), Ok(db_entry))], vec![], None);
    let policy = Policy::default().compile().unwrap();
    let mut last = None;
    let plan_time = time_n(200, || {
        let d = current.diff(&target);
        let p = plan(&current, &target, &local, &avail, &policy);
        let s = status(&current, &target, &policy);
        last = Some((d.len(), p.actions.len(), s));
    });
    let (delta_len, actions, (st, _)) = last.unwrap();
    let conflicts = plan(&current, &target, &local, &avail, &policy)
        .conflicts
        .len();
    let diff_only = time_n(200, || {
        std::hint::black_box(current.diff(&target));
    });
    let plan_only = time_n(
        if std::env::var_os("PLAN_PROFILE").is_some() {
            3000
        } else {
            200
        },
        || {
            std::hint::black_box(plan(&current, &target, &local, &avail, &policy));
        },
    );

    // 4. A large sync database.
    let sync_path = tmp.path().join("extra.db");
    let sync_entries = 15_000;
    let gz_len = write_sync_db(&sync_path, sync_entries);
    let extra = "extra".parse().unwrap();
    let sync_time = time_n(10, || {
        let db = read_sync_db(&extra, &sync_path).unwrap();
        assert_eq!(db.packages.len(), sync_entries);
    });

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("pacpool engine benchmark: {PACKAGES} packages, median of {runs} runs");
    println!(
        "  pacman -Q (whole process)          {:8.3} ms  (baseline)",
        ms(pac)
    );
    println!(
        "  pacpool snapshot (whole process)   {:8.3} ms  ratio {:.2}x faster than pacman -Q (goal >= 5x)",
        ms(ours),
        ms(pac) / ms(ours)
    );
    println!(
        "  snapshot in-process (read + hash)  {:8.3} ms",
        ms(in_process)
    );
    println!(
        "  unchanged re-check                 {:8.3} ms  (goal < 1 ms; {:.1}x under pacman -Q)",
        ms(recheck),
        ms(pac) / ms(recheck)
    );
    println!(
        "  diff + plan + status, 100 changes  {:8.3} ms  (goal < 1 ms; delta {delta_len}, {actions} actions, {conflicts} conflicts, {st:?})",
        ms(plan_time)
    );
    println!(
        "    of which diff {:.3} ms, plan {:.3} ms",
        ms(diff_only),
        ms(plan_only)
    );
    println!(
        "  sync db read, {sync_entries} entries ({} KiB gz) {:6.3} ms",
        gz_len / 1024,
        ms(sync_time)
    );
}
