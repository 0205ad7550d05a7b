//! `pacpool::localdb` against databases written by the real pacman (run as root: pacman
//! refuses transactions otherwise, even inside the sandbox).

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pacpool::localdb::{Fingerprint, LocalPackage, Reason, read_local_db};
use support::{PkgSpec, Sandbox};

/// The packages of the scenario below, with the host's arch for one of them so that
/// `Architecture = auto` accepts it.
fn specs() -> Vec<PkgSpec> {
    vec![
        PkgSpec::new("libfoo", "1.0-1").provides(&["libfoo.so=1-64"]),
        PkgSpec::new("foo", "2.0-1")
            .arch(&support::host_arch())
            .depends(&["libfoo>=1.0", "sh-virtual"])
            .conflicts(&["foo-git"])
            .replaces(&["oldfoo"]),
        PkgSpec::new("shim", "1:0.5-2").provides(&["sh-virtual=1"]),
        PkgSpec::new("baz", "3.1-1.1"),
        PkgSpec::new("quux", "0.9-1"),
        PkgSpec::new("unused", "1.0-1"),
    ]
}

/// A sandbox with `specs()` published and installed: libfoo and shim pulled in as
/// dependencies of foo, baz `-S --asdeps`, quux explicit and then `-D --asdeps`; unused stays
/// in the repository. qux is not published: it is installed with `-U` from its file.
fn installed_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    let pkgs: Vec<PathBuf> = specs().iter().map(|s| sb.build_package(s)).collect();
    sb.publish(&pkgs);
    let qux = sb.build_package(&PkgSpec::new("qux", "1.0-1").depends(&["baz"]));
    sb.pacman_ok(&["-Sy"]);
    sb.pacman_ok(&["-S", "--", "foo"]);
    sb.pacman_ok(&["-S", "--asdeps", "--", "baz"]);
    sb.pacman_ok(&["-U", "--", qux.to_str().expect("UTF-8 temp path")]);
    sb.pacman_ok(&["-S", "--", "quux"]);
    sb.pacman_ok(&["-D", "--asdeps", "--", "quux"]);
    sb
}

/// `pacman -Qi` parsed into package name -> field -> value (`None` becomes empty).
fn pacman_qi(sb: &Sandbox) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = sb.pacman_ok(&["-Qi"]);
    let mut all = BTreeMap::new();
    for block in out.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut fields = BTreeMap::new();
        for line in block.lines() {
            let (key, value) = line
                .split_once(" : ")
                .unwrap_or_else(|| panic!("unexpected -Qi line {line:?}"));
            let value = value.trim();
            let value = if value == "None" { "" } else { value };
            fields.insert(key.trim().to_owned(), value.to_owned());
        }
        let name = fields["Name"].clone();
        all.insert(name, fields);
    }
    all
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Names printed by `pacman -Qq` with extra flags (e.g. `-d`); exit code 1 means "none".
fn query_names(sb: &Sandbox, flags: &str) -> Vec<String> {
    let out = sb.pacman(&[&format!("-Qq{flags}")]);
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "pacman -Qq{flags}: {out:?}"
    );
    words(&String::from_utf8(out.stdout).expect("UTF-8"))
}

/// Asserts that `read_local_db` reports exactly what the real pacman reports.
fn assert_matches_pacman(sb: &Sandbox, ours: &[LocalPackage]) {
    let q: Vec<(String, String)> = sb
        .pacman_ok(&["-Q"])
        .lines()
        .map(|l| {
            let (n, v) = l.split_once(' ').expect("`pacman -Q` prints NAME VERSION");
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let ours_q: Vec<(String, String)> = ours
        .iter()
        .map(|p| (p.name.to_string(), p.version.to_string()))
        .collect();
    assert_eq!(ours_q, q, "names and versions vs `pacman -Q`");

    let with_reason = |r| -> Vec<String> {
        ours.iter()
            .filter(|p| p.reason == r)
            .map(|p| p.name.to_string())
            .collect()
    };
    assert_eq!(
        with_reason(Reason::Dependency),
        query_names(sb, "d"),
        "vs -Qd"
    );
    assert_eq!(
        with_reason(Reason::Explicit),
        query_names(sb, "e"),
        "vs -Qe"
    );

    let qi = pacman_qi(sb);
    for p in ours {
        let f = &qi[p.name.as_str()];
        let name = &p.name;
        assert_eq!(p.version.as_str(), f["Version"], "{name} version vs -Qi");
        assert_eq!(p.arch.as_str(), f["Architecture"], "{name} arch vs -Qi");
        assert_eq!(p.depends, words(&f["Depends On"]), "{name} depends vs -Qi");
        assert_eq!(p.provides, words(&f["Provides"]), "{name} provides vs -Qi");
        assert_eq!(p.conflicts, words(&f["Conflicts With"]), "{name} conflicts");
        assert_eq!(p.replaces, words(&f["Replaces"]), "{name} replaces vs -Qi");
        let reason = match p.reason {
            Reason::Explicit => "Explicitly installed",
            Reason::Dependency => "Installed as a dependency for another package",
        };
        assert_eq!(reason, f["Install Reason"], "{name} reason vs -Qi");
        assert!(p.install_date.is_some(), "{name} has an install date");
    }
}

#[test]
fn local_db_matches_real_pacman() {
    let sb = installed_sandbox();
    let pkgs = read_local_db(&sb.dbpath()).expect("read the sandbox's local db");
    assert_matches_pacman(&sb, &pkgs);

    // And against what was built, so that a pacman/pacpool agreement on nothing fails too.
    let by_name: BTreeMap<&str, &LocalPackage> =
        pkgs.iter().map(|p| (p.name.as_str(), p)).collect();
    let names: Vec<&str> = by_name.keys().copied().collect();
    assert_eq!(names, ["baz", "foo", "libfoo", "quux", "qux", "shim"]);
    let reason = |n: &str| by_name[n].reason;
    assert_eq!(reason("foo"), Reason::Explicit);
    assert_eq!(reason("qux"), Reason::Explicit);
    assert_eq!(reason("libfoo"), Reason::Dependency);
    assert_eq!(reason("shim"), Reason::Dependency);
    assert_eq!(reason("baz"), Reason::Dependency);
    assert_eq!(reason("quux"), Reason::Dependency, "after -D --asdeps");
    assert_eq!(by_name["shim"].version.as_str(), "1:0.5-2");
    assert_eq!(by_name["baz"].version.as_str(), "3.1-1.1");
    assert_eq!(by_name["foo"].arch.as_str(), support::host_arch());
    assert_eq!(by_name["libfoo"].arch.as_str(), "any");
    assert_eq!(by_name["foo"].depends, ["libfoo>=1.0", "sh-virtual"]);
    assert_eq!(by_name["foo"].conflicts, ["foo-git"]);
    assert_eq!(by_name["foo"].replaces, ["oldfoo"]);
    assert_eq!(by_name["libfoo"].provides, ["libfoo.so=1-64"]);
    assert_eq!(by_name["qux"].depends, ["baz"]);

    // An upgrade through the repository.
    let foo2 = PkgSpec::new("foo", "2.0-2")
        .arch(&support::host_arch())
        .depends(&["libfoo>=1.0"]);
    sb.publish(&[sb.build_package(&foo2)]);
    sb.pacman_ok(&["-Syu"]);
    let pkgs = read_local_db(&sb.dbpath()).expect("read after -Syu");
    assert_matches_pacman(&sb, &pkgs);
    let foo = pkgs.iter().find(|p| p.name.as_str() == "foo").expect("foo");
    assert_eq!(
        (foo.version.as_str(), foo.reason),
        ("2.0-2", Reason::Explicit)
    );
    assert_eq!(foo.depends, ["libfoo>=1.0"]);

    // A removal: the entry is gone, the rest unchanged.
    sb.pacman_ok(&["-R", "--", "qux"]);
    let after = read_local_db(&sb.dbpath()).expect("read after -R");
    assert_matches_pacman(&sb, &after);
    assert!(after.iter().all(|p| p.name.as_str() != "qux"), "{after:?}");
    let without_qux: Vec<&LocalPackage> =
        pkgs.iter().filter(|p| p.name.as_str() != "qux").collect();
    assert_eq!(after.iter().collect::<Vec<_>>(), without_qux);
}

/// Sets the modification time of `dbpath` and `dbpath/local` an hour back, so that the next
/// write is seen whatever the file system's timestamp granularity: the test then does not
/// depend on how fast pacman runs.
fn age(dbpath: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    for dir in [dbpath.to_owned(), dbpath.join("local")] {
        File::open(&dir)
            .and_then(|f| f.set_modified(past))
            .unwrap_or_else(|e| panic!("set the mtime of {}: {e}", dir.display()));
    }
}

#[test]
fn fingerprint_follows_pacman_writes() {
    let sb = installed_sandbox();
    let db = sb.dbpath();
    let fp = || Fingerprint::of(&db).expect("fingerprint");

    age(&db);
    let before = fp();
    sb.pacman_ok(&["-Q"]);
    sb.pacman_ok(&["-Qi", "--", "foo"]);
    read_local_db(&db).expect("read");
    assert_eq!(
        fp(),
        before,
        "reads (pacman -Q, read_local_db) change nothing"
    );

    // -D takes db.lck (created and deleted in DBPath) and rewrites desc in place.
    sb.pacman_ok(&["-D", "--asdeps", "--", "foo"]);
    let after_d = fp();
    assert_ne!(
        after_d, before,
        "pacman -D --asdeps changes the fingerprint"
    );
    assert_eq!(fp(), after_d, "stable while nothing runs");

    age(&db);
    let before = fp();
    sb.pacman_ok(&["-S", "--", "unused"]);
    assert_ne!(fp(), before, "an install changes the fingerprint");

    age(&db);
    let before = fp();
    sb.pacman_ok(&["-R", "--", "unused"]);
    assert_ne!(fp(), before, "a removal changes the fingerprint");
}
