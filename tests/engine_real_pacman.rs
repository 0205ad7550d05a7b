//! The engine end to end on a real pacman sandbox: snapshots taken from databases the real
//! pacman wrote, plans whose sources are real files, applied by hand with pacman, and the
//! `pacpool` CLI on the same sandbox.

mod support;

use std::process::Command;

use pacpool::machine::PacmanPaths;
use pacpool::plan::{Action, Conflict, Policy, Source, SyncStatus, plan, status};
use pacpool::snapshot::Snapshot;
use support::{PkgSpec, REPO, Sandbox, host_arch};

fn paths(sb: &Sandbox) -> PacmanPaths {
    PacmanPaths {
        config: Some(sb.config()),
        ..PacmanPaths::default()
    }
}

fn pkg(sb: &Sandbox, name: &str, version: &str, deps: &[&str]) -> std::path::PathBuf {
    sb.build_package(&PkgSpec::new(name, version).arch(&host_arch()).depends(deps))
}

#[test]
fn plan_sources_are_real_and_applying_them_reaches_the_target() {
    let sb = Sandbox::new();
    let v1 = [
        pkg(&sb, "app", "1.0-1", &["libcore"]),
        pkg(&sb, "libcore", "1.0-1", &[]),
        pkg(&sb, "tool", "1.0-1", &[]),
    ];
    sb.publish(&v1);
    sb.pacman_ok(&["-Sy", "app", "tool"]);

    let before = paths(&sb).read().expect("read the sandbox state");
    assert_eq!(before.snapshot.len(), 2 + 1);
    let libcore = before.snapshot.get("libcore").unwrap();
    assert_eq!(libcore.reason, pacpool::localdb::Reason::Dependency);
    assert_eq!(libcore.repo.as_ref().unwrap().as_str(), REPO);

    // Unchanged sync databases and caches are not read again; changed ones are.
    let again = paths(&sb)
        .read_reusing(Some((&before.sources, &before.availability)))
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &again.availability,
        &before.availability
    ));
    assert_eq!(again.snapshot, before.snapshot);

    // Upgrade everything and add a package: the machine is now ahead of `before`.
    sb.publish(&[
        pkg(&sb, "app", "2.0-1", &["libcore>=1"]),
        pkg(&sb, "extra", "1:0.5-1", &[]),
    ]);
    sb.pacman_ok(&["-Syu"]);
    sb.pacman_ok(&["-S", "extra"]);
    let after = paths(&sb)
        .read_reusing(Some((&before.sources, &before.availability)))
        .unwrap();
    assert!(!std::sync::Arc::ptr_eq(
        &after.availability,
        &before.availability
    ));
    let policy = Policy::default().compile().unwrap();
    assert_eq!(
        status(&after.snapshot, &before.snapshot, &policy).0,
        SyncStatus::Ahead
    );
    assert_eq!(
        status(&before.snapshot, &after.snapshot, &policy).0,
        SyncStatus::Behind
    );

    // Going back: app 1.0 is no longer in the repo, but pacman's cache has it.
    let p = plan(
        &after.snapshot,
        &before.snapshot,
        &after.local,
        &after.availability,
        &policy,
    );
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    let mut files = Vec::new();
    let mut removals = Vec::new();
    for a in &p.actions {
        match a {
            Action::Downgrade {
                name,
                source: Source::Cache { path },
                ..
            } => {
                assert_eq!(name.as_str(), "app");
                assert!(path.is_file(), "{} exists", path.display());
                files.push(path.to_str().unwrap().to_owned());
            }
            Action::Remove { name, .. } => removals.push(name.as_str().to_owned()),
            other => panic!("unexpected action {other:?}"),
        }
    }
    assert_eq!(removals, ["extra"]);
    // Apply the plan by hand with the real pacman, then the state must equal the target.
    let mut args = vec!["-U"];
    args.extend(files.iter().map(String::as_str));
    sb.pacman_ok(&args);
    sb.pacman_ok(&["-R", "extra"]);
    let reverted = paths(&sb).read().unwrap();
    assert_eq!(reverted.snapshot.hash(), before.snapshot.hash());

    // A version nobody has is a typed conflict naming what is offered.
    std::fs::remove_file(&files[0]).unwrap();
    let p = plan(
        &reverted.snapshot,
        &after.snapshot,
        &reverted.local,
        &paths(&sb).read().unwrap().availability,
        &policy,
    );
    assert!(
        p.conflicts.is_empty(),
        "app 2.0 is in the repo: {:?}",
        p.conflicts
    );
    let mut older = before.snapshot.packages().to_vec();
    older
        .iter_mut()
        .find(|p| p.name.as_str() == "tool")
        .unwrap()
        .version = "0.9-1".parse().unwrap();
    let older = Snapshot::new(older).unwrap();
    let p = plan(
        &reverted.snapshot,
        &older,
        &reverted.local,
        &reverted.availability,
        &policy,
    );
    assert!(
        matches!(&p.conflicts[..], [Conflict::VersionUnavailable { name, offered, .. }]
        if name.as_str() == "tool" && offered == &[format!("{REPO}/1.0-1")]),
        "{:?}",
        p.conflicts
    );
}

#[test]
fn cli_snapshot_diff_and_plan_on_a_sandbox() {
    let sb = Sandbox::new();
    sb.publish(&[
        pkg(&sb, "alpha", "1.0-1", &[]),
        pkg(&sb, "beta", "2.0-1", &[]),
    ]);
    sb.pacman_ok(&["-Sy", "alpha", "beta"]);
    let cli = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pacpool"));
        c.env("LC_ALL", "C");
        c
    };
    let out = cli()
        .args(["snapshot", "--pacman-conf"])
        .arg(sb.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let snap = Snapshot::decode(&text).expect("the CLI prints a canonical snapshot");
    assert_eq!(snap, paths(&sb).read().unwrap().snapshot);
    let a = sb.base().join("a.snapshot");
    std::fs::write(&a, &text).unwrap();

    let out = cli()
        .args(["snapshot", "--hash", "--pacman-conf"])
        .arg(sb.config())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{} 2\n", snap.hash())
    );

    sb.pacman_ok(&["-R", "beta"]);
    let out = cli()
        .args(["snapshot", "--json", "--pacman-conf"])
        .arg(sb.config())
        .output()
        .unwrap();
    let b = sb.base().join("b.json");
    std::fs::write(&b, &out.stdout).unwrap();
    let out = cli().arg("diff").arg(&a).arg(&b).output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "- beta\n1 change(s)\n"
    );

    // Planning back to `a` installs beta from the repository.
    let out = cli()
        .args(["plan", "--json"])
        .arg(&a)
        .arg("--pacman-conf")
        .arg(sb.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["actions"][0]["action"], "install");
    assert_eq!(plan["actions"][0]["name"], "beta");
    assert_eq!(plan["actions"][0]["source"]["repo"], REPO);

    // Bad input: a clear error, non-zero exit, nothing printed on stdout.
    std::fs::write(&b, "pacpool-snapshot 1\n--config=x 1-1 any e -\n").unwrap();
    let out = cli()
        .args(["plan"])
        .arg(&b)
        .arg("--pacman-conf")
        .arg(sb.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("not a pacpool snapshot") && err.contains("package name"),
        "{err}"
    );

    let out = cli()
        .args(["snapshot", "--dbpath"])
        .arg(sb.base().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no local pacman database"));

    let out = cli().args(["vercmp", "1.0-1", "1:0.1-1"]).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "-1\n");
}
