//! The trust rule against the real pacman, real gpg and a real `pacman-key` keyring in
//! sandboxes: a package file reaches `pacman -U` only when pacman would accept it from the
//! repository it comes from, whatever `LocalFileSigLevel` says (here Arch's default,
//! `Optional`, which alone would let an unsigned file through).
//!
//! Each refusal is checked by its outcome: the typed error names the check, the root is
//! unchanged (`pacman -Q` and `-Qk` before and after, pacman's log untouched), and a refused
//! download leaves nothing in the cache.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use pacpool::apply::{ApplyError, ApplyOptions, apply};
use pacpool::localdb::Reason;
use pacpool::machine::{MachineState, PacmanPaths};
use pacpool::manifest::{Manifest, ManifestEntry};
use pacpool::pacman_conf::PacmanConf;
use pacpool::plan::{Plan, Policy, plan};
use pacpool::snapshot::{PackageState, Snapshot};
use pacpool::trust::{TrustCheck, TrustRule, Untrusted};
use support::http::FileServer;
use support::keyring::{Keyring, Packager};
use support::{PkgSpec, REPO, Sandbox};
use tokio::sync::watch;

/// A sandbox with Arch's signature levels, a keyring that fully trusts one packager and
/// knows (without trusting) another, and `foo 1.0-1` installed from a signed repository.
struct World {
    sb: Sandbox,
    _keyring: Keyring,
    trusted: Packager,
    stranger: Packager,
}

fn world() -> World {
    world_with("Required DatabaseOptional")
}

fn world_with(sig_level: &str) -> World {
    let sb = Sandbox::new();
    sb.set_sig_levels(sig_level, "Optional");
    let keyring = Keyring::init(&sb);
    let trusted = Packager::new("trusted");
    keyring.trust(&trusted);
    let stranger = Packager::new("stranger");
    keyring.add(&stranger);
    let w = World {
        sb,
        _keyring: keyring,
        trusted,
        stranger,
    };
    let current = w.build("foo", "1.0-1");
    let sig = w.trusted.sign(&current);
    fs::copy(&sig, w.sb.repo_dir().join(sig.file_name().unwrap())).unwrap();
    w.sb.publish(&[current]);
    // pacman itself checks this one: SigLevel Required for the repository.
    w.sb.pacman_ok(&["-Sy", "foo"]);
    w
}

impl World {
    fn build(&self, name: &str, version: &str) -> PathBuf {
        self.sb.build_package(&PkgSpec::new(name, version))
    }

    /// Puts a package file into the cache (with its signature when given).
    fn cache(&self, pkg: &Path, sig: Option<&Path>) -> PathBuf {
        let dest = self.sb.cachedir().join(pkg.file_name().unwrap());
        fs::copy(pkg, &dest).unwrap();
        if let Some(sig) = sig {
            fs::copy(sig, format!("{}.sig", dest.display())).unwrap();
        }
        dest
    }

    fn paths(&self, archive: Option<&str>) -> PacmanPaths {
        PacmanPaths {
            config: Some(self.sb.config()),
            archive_url: archive.map(str::to_owned),
            ..Default::default()
        }
    }

    fn machine(&self, archive: Option<&str>) -> MachineState {
        self.paths(archive).read().unwrap()
    }

    /// The current state with `changes` applied: (name, Some(version)) sets a version (adding
    /// the package if new), (name, None) removes it.
    fn target(&self, changes: &[(&str, Option<&str>)]) -> Snapshot {
        let mut pkgs: Vec<PackageState> = self.machine(None).snapshot.packages().to_vec();
        for (name, version) in changes {
            pkgs.retain(|p| p.name.as_str() != *name);
            if let Some(v) = version {
                pkgs.push(PackageState {
                    name: name.parse().unwrap(),
                    version: v.parse().unwrap(),
                    arch: "any".parse().unwrap(),
                    reason: Reason::Explicit,
                    repo: None,
                });
            }
        }
        Snapshot::new(pkgs).unwrap()
    }

    fn plan(&self, target: &Snapshot, archive: Option<&str>) -> (Plan, MachineState) {
        let m = self.machine(archive);
        let p = plan(
            &m.snapshot,
            target,
            &m.local,
            &m.availability,
            &Policy::default().compile().unwrap(),
        );
        assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
        (p, m)
    }

    fn rule(&self, m: &MachineState, manifest: Option<Manifest>, allow_foreign: bool) -> TrustRule {
        let conf = PacmanConf::load(&self.sb.config()).unwrap();
        TrustRule::new(
            Some(&conf),
            m.availability.clone(),
            manifest.map(std::sync::Arc::new),
            allow_foreign,
        )
    }

    /// What must not move when a file is refused: installed versions, file checks, the log.
    fn fingerprint(&self) -> (String, String, String) {
        (
            self.sb.pacman_ok(&["-Q"]),
            self.sb.pacman_ok(&["-Qk"]),
            self.sb.log_text(),
        )
    }
}

async fn run(
    w: &World,
    p: &Plan,
    rule: &TrustRule,
    opts: &ApplyOptions,
) -> Result<pacpool::apply::ApplyReport, ApplyError> {
    let never = watch::channel(false).1;
    apply(p, &w.sb.pacman_settings(), opts, rule, &mut |_| {}, &never).await
}

/// Applies a plan that must be refused, and checks that nothing changed.
async fn refused(
    w: &World,
    p: &Plan,
    rule: &TrustRule,
    opts: &ApplyOptions,
    check: TrustCheck,
) -> Untrusted {
    let before = w.fingerprint();
    let err = run(w, p, rule, opts).await.unwrap_err();
    let ApplyError::Untrusted(list) = &err else {
        panic!("expected an untrusted-package refusal, got: {err}");
    };
    assert_eq!(list.len(), 1, "{err}");
    assert_eq!(list[0].check, check, "{err}");
    assert!(err.to_string().starts_with("untrusted-package: "), "{err}");
    assert_eq!(w.fingerprint(), before, "a refused apply changed the root");
    list[0].clone()
}

fn no_partial_files(dir: &Path) {
    for f in fs::read_dir(dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".part") && !name.contains("pacpool-part"),
            "left behind in {}: {name}",
            dir.display()
        );
    }
}

#[tokio::test]
async fn cache_files_need_what_their_repository_needs() {
    let w = world();
    let target = w.target(&[("foo", Some("0.9-1"))]);

    // An unsigned older foo in the cache: repository pacpooltest requires signatures.
    let old = w.build("foo", "0.9-1");
    let cached = w.cache(&old, None);
    let (p, m) = w.plan(&target, None);
    let u = refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::MissingSignature,
    )
    .await;
    assert!(u.why.contains("requires signed packages"), "{}", u.why);
    assert_eq!(u.file, "foo-0.9-1-any.pkg.tar.zst");

    // Signed, but by a key the keyring does not trust.
    let sig = w.stranger.sign(&old);
    fs::copy(&sig, format!("{}.sig", cached.display())).unwrap();
    let (p, m) = w.plan(&target, None);
    let u = refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::UntrustedKey,
    )
    .await;
    assert!(
        u.why.contains("--lsign-key"),
        "says how to trust it: {}",
        u.why
    );

    // A signature that belongs to other bytes.
    let other = w.build("other", "1-1");
    let wrong = w.trusted.sign(&other);
    fs::copy(&wrong, format!("{}.sig", cached.display())).unwrap();
    let (p, m) = w.plan(&target, None);
    refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::BadSignature,
    )
    .await;

    // A validly signed file that holds another package under foo's file name: pacman -U
    // would install what its .PKGINFO says.
    fs::copy(&other, &cached).unwrap();
    w.trusted.sign(&cached); // writes FILE.sig beside it
    let (p, m) = w.plan(&target, None);
    let u = refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::WrongPackage,
    )
    .await;
    assert!(
        u.why.contains("holds other 1-1, not foo 0.9-1"),
        "{}",
        u.why
    );
    fs::copy(&old, &cached).unwrap();

    // Properly signed, but the target's manifest recorded other bytes for this version.
    let sig = w.trusted.sign(&old);
    fs::copy(&sig, format!("{}.sig", cached.display())).unwrap();
    let (p, m) = w.plan(&target, None);
    let manifest = Manifest {
        entries: vec![ManifestEntry {
            name: "foo".parse().unwrap(),
            version: "0.9-1".parse().unwrap(),
            repo: Some(REPO.parse().unwrap()),
            filename: Some("foo-0.9-1-any.pkg.tar.zst".into()),
            size: None,
            sha256: Some("0".repeat(64)),
            signature: None,
        }],
    };
    let u = refused(
        &w,
        &p,
        &w.rule(&m, Some(manifest), false),
        &Default::default(),
        TrustCheck::Digest,
    )
    .await;
    assert!(u.why.contains("manifest"), "{}", u.why);

    // The same file with its trusted signature and no lying manifest: installed.
    let (p, m) = w.plan(&target, None);
    run(&w, &p, &w.rule(&m, None, false), &Default::default())
        .await
        .unwrap();
    assert_eq!(w.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 0.9-1");
}

#[tokio::test]
async fn foreign_packages_need_a_trusted_signature_or_the_owners_consent() {
    let w = world();
    let target = w.target(&[("aurthing", Some("1.0-1"))]);
    let pkg = w.build("aurthing", "1.0-1");
    w.cache(&pkg, None);
    let (p, m) = w.plan(&target, None);
    let u = refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::UnsignedForeign,
    )
    .await;
    assert!(
        u.why.contains("allow_unsigned_foreign = true") && u.why.contains("pacman-key"),
        "names both ways out: {}",
        u.why
    );
    // This machine's owner allows unsigned foreign packages: installed.
    run(&w, &p, &w.rule(&m, None, true), &Default::default())
        .await
        .unwrap();
    assert_eq!(w.sb.pacman_ok(&["-Q", "aurthing"]).trim(), "aurthing 1.0-1");
}

#[tokio::test]
async fn a_never_repository_vouches_only_for_what_its_database_lists() {
    // SigLevel Never: pacman checks no signature, but installs from the repository only the
    // files its database lists. A downloaded file it does not list is not what pacman would
    // install; the same file already in pacman's own cache is (as `pacman -U` from the cache).
    let w = world_with("Never");
    let archive = tempfile::tempdir().unwrap();
    let shelf = archive.path().join("f/foo");
    fs::create_dir_all(&shelf).unwrap();
    let old = w.build("foo", "0.9-1");
    let file = "foo-0.9-1-any.pkg.tar.zst";
    fs::copy(&old, shelf.join(file)).unwrap();
    let server = FileServer::start(archive.path(), true);
    let target = w.target(&[("foo", Some("0.9-1"))]);

    // Unsigned download: refused, deleted, and the manifest's own digest (which whoever set
    // the target chose) does not vouch for it.
    let (size, sha) = pacpool::manifest::file_digest(&old).unwrap();
    let manifest = |signature: Option<String>| Manifest {
        entries: vec![ManifestEntry {
            name: "foo".parse().unwrap(),
            version: "0.9-1".parse().unwrap(),
            repo: Some(REPO.parse().unwrap()),
            filename: Some(file.into()),
            size: Some(size),
            sha256: Some(sha.clone()),
            signature,
        }],
    };
    let (p, m) = w.plan(&target, Some(&server.url()));
    let u = refused(
        &w,
        &p,
        &w.rule(&m, Some(manifest(None)), false),
        &Default::default(),
        TrustCheck::MissingSignature,
    )
    .await;
    assert!(u.why.contains("SigLevel Never"), "{}", u.why);
    assert!(!w.sb.cachedir().join(file).exists());
    no_partial_files(&w.sb.cachedir());

    // Signed by a key the keyring knows but does not trust: refused (the foreign rule).
    use base64::Engine as _;
    let b64 = |p: PathBuf| base64::engine::general_purpose::STANDARD.encode(fs::read(p).unwrap());
    let (p, m) = w.plan(&target, Some(&server.url()));
    refused(
        &w,
        &p,
        &w.rule(&m, Some(manifest(Some(b64(w.stranger.sign(&old))))), false),
        &Default::default(),
        TrustCheck::UntrustedKey,
    )
    .await;
    assert!(!w.sb.cachedir().join(file).exists());

    // A cache file in a directory other users may write: refused (it could be swapped
    // between the check and pacman -U), the root unchanged.
    use std::os::unix::fs::PermissionsExt as _;
    let cached = w.cache(&old, None);
    fs::set_permissions(w.sb.cachedir(), fs::Permissions::from_mode(0o777)).unwrap();
    let (p, m) = w.plan(&target, None);
    let u = refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::Unverifiable,
    )
    .await;
    assert!(
        u.why.contains("not writable by group or others"),
        "{}",
        u.why
    );
    fs::set_permissions(w.sb.cachedir(), fs::Permissions::from_mode(0o755)).unwrap();
    // A symbolic link in the cache: refused.
    let elsewhere = w.sb.base().join(file);
    fs::rename(&cached, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &cached).unwrap();
    let (p, m) = w.plan(&target, None);
    let u = refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::Unverifiable,
    )
    .await;
    assert!(u.why.contains("not a regular file"), "{}", u.why);
    fs::remove_file(&cached).unwrap();

    // Signed by the trusted packager: downloaded, checked, installed.
    let (p, m) = w.plan(&target, Some(&server.url()));
    run(
        &w,
        &p,
        &w.rule(&m, Some(manifest(Some(b64(w.trusted.sign(&old))))), false),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(w.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 0.9-1");

    // Back to 1.0-1, then 0.9-1 again from pacman's own cache, unsigned: installed.
    w.sb.pacman_ok(&["-S", "foo"]);
    let _ = fs::remove_file(w.sb.cachedir().join(format!("{file}.sig")));
    let target = w.target(&[("foo", Some("0.9-1"))]);
    let (p, m) = w.plan(&target, None);
    run(&w, &p, &w.rule(&m, None, false), &Default::default())
        .await
        .unwrap();
    assert_eq!(w.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 0.9-1");
}

#[tokio::test]
async fn downloads_are_bounded_and_checked_before_they_are_kept() {
    let w = world();
    let archive = tempfile::tempdir().unwrap();
    let shelf = archive.path().join("f/foo");
    fs::create_dir_all(&shelf).unwrap();

    // 3 MiB "package" (zstd magic, then junk) against a 1 MiB ceiling, with and without a
    // Content-Length header: stopped, deleted, nothing installed.
    let mut big = vec![0x28, 0xB5, 0x2F, 0xFD];
    big.resize(3 << 20, 0x55);
    fs::write(shelf.join("foo-0.8-1-any.pkg.tar.zst"), &big).unwrap();
    let opts = ApplyOptions {
        max_download_size: Some(1 << 20),
        ..Default::default()
    };
    let target = w.target(&[("foo", Some("0.8-1"))]);
    for content_length in [true, false] {
        let server = FileServer::start(archive.path(), content_length);
        let (p, m) = w.plan(&target, Some(&server.url()));
        let u = refused(&w, &p, &w.rule(&m, None, false), &opts, TrustCheck::Size).await;
        assert!(u.why.contains("larger than 1048576 bytes"), "{}", u.why);
        no_partial_files(&w.sb.cachedir());
        assert!(!w.sb.cachedir().join("foo-0.8-1-any.pkg.tar.zst").exists());
    }

    // A real old foo on the archive, unsigned, behind an archive that serves no .sig:
    // refused and deleted.
    let old = w.build("foo", "0.7-1");
    fs::copy(&old, shelf.join("foo-0.7-1-any.pkg.tar.zst")).unwrap();
    let server = FileServer::start(archive.path(), true);
    let target = w.target(&[("foo", Some("0.7-1"))]);
    let (p, m) = w.plan(&target, Some(&server.url()));
    refused(
        &w,
        &p,
        &w.rule(&m, None, false),
        &Default::default(),
        TrustCheck::MissingSignature,
    )
    .await;
    no_partial_files(&w.sb.cachedir());
    assert!(!w.sb.cachedir().join("foo-0.7-1-any.pkg.tar.zst").exists());

    // The manifest states a smaller size than the file has: the download stops there.
    let (size, _) = pacpool::manifest::file_digest(&old).unwrap();
    let entry = |size: u64, signature: Option<String>| Manifest {
        entries: vec![ManifestEntry {
            name: "foo".parse().unwrap(),
            version: "0.7-1".parse().unwrap(),
            repo: Some(REPO.parse().unwrap()),
            filename: Some("foo-0.7-1-any.pkg.tar.zst".into()),
            size: Some(size),
            sha256: None,
            signature,
        }],
    };
    let (p, m) = w.plan(&target, Some(&server.url()));
    refused(
        &w,
        &p,
        &w.rule(&m, Some(entry(size - 1, None)), false),
        &Default::default(),
        TrustCheck::Size,
    )
    .await;

    // The target's manifest carries the packager's signature (the archive has no .sig):
    // checked against the keyring, installed, and the signature kept beside the file.
    use base64::Engine as _;
    let sig = fs::read(w.trusted.sign(&old)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
    let (p, m) = w.plan(&target, Some(&server.url()));
    run(
        &w,
        &p,
        &w.rule(&m, Some(entry(size, Some(b64))), false),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(w.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 0.7-1");
    assert!(
        w.sb.cachedir()
            .join("foo-0.7-1-any.pkg.tar.zst.sig")
            .is_file()
    );
    no_partial_files(&w.sb.cachedir());
}

#[test]
fn signature_levels_match_pacman_conf() {
    // Our reading of SigLevel against pacman's own `pacman-conf`, for the package half.
    let Some(pacman_conf) = support::find_in_path("pacman-conf") else {
        println!("SKIPPED: pacman-conf is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", ""),
        ("SigLevel = Required DatabaseOptional", ""),
        (
            "SigLevel = Required DatabaseOptional",
            "SigLevel = PackageOptional TrustAll",
        ),
        ("SigLevel = Never", "SigLevel = PackageRequired"),
        (
            "SigLevel = Optional TrustAll",
            "SigLevel = TrustedOnly DatabaseNever",
        ),
        (
            "SigLevel = PackageRequired PackageTrustAll",
            "SigLevel = Never",
        ),
    ];
    for (options, repo) in cases {
        let path = dir.path().join("pacman.conf");
        fs::write(
            &path,
            format!("[options]\n{options}\n[r]\n{repo}\nServer = file:///x\n"),
        )
        .unwrap();
        let ours = PacmanConf::load(&path)
            .unwrap()
            .package_sig_level(Some("r"));
        let mut tokens = Vec::new();
        for args in [vec!["-r", "r", "SigLevel"], vec!["SigLevel"]] {
            let out = std::process::Command::new(&pacman_conf)
                .arg("-c")
                .arg(&path)
                .args(&args)
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let t: Vec<String> = text
                .lines()
                .map(|l| l.trim_start_matches("SigLevel = ").to_owned())
                .collect();
            // pacman-conf prints nothing for a repository without its own SigLevel.
            if !t.is_empty() {
                tokens = t;
                break;
            }
        }
        let check = if tokens.iter().any(|t| t == "PackageNever") {
            pacpool::pacman_conf::SigCheck::Never
        } else if tokens.iter().any(|t| t == "PackageOptional") {
            pacpool::pacman_conf::SigCheck::Optional
        } else if tokens.iter().any(|t| t == "PackageRequired") {
            pacpool::pacman_conf::SigCheck::Required
        } else {
            pacpool::pacman_conf::SigCheck::Optional
        };
        // With Never the trust half means nothing, and pacman-conf leaves it out.
        let never = check == pacpool::pacman_conf::SigCheck::Never;
        let trust_all = tokens.iter().any(|t| t == "PackageTrustAll");
        assert_eq!(
            (ours.check, ours.trust_all || never),
            (check, trust_all || never),
            "options {options:?}, repo {repo:?}: pacman-conf says {tokens:?}"
        );
    }
}

/// The attack from the review: one enrolled endpoint makes a target naming a version that no
/// repository has, a hostile archive serves an unsigned file for it, and a pool member with
/// auto-sync `apply` syncs on its own. Nothing is installed; the member says why.
#[test]
fn a_made_up_target_and_a_hostile_archive_install_nothing() {
    use support::coordinator::Coordinator;
    use support::daemon::{Daemon, write_config};

    // Mallory's machine: permissive, with a locally built, unsigned foo 2.0-2 installed.
    let mallory = Sandbox::new();
    let evil = mallory.build_package(&PkgSpec::new("foo", "2.0-2"));
    mallory.pacman_ok(&["-U", evil.to_str().unwrap()]);
    // The victim: Arch's signature levels, foo 1.0-1 from its signed repository.
    let victim = world();
    // The hostile archive serves the unsigned file where the archive layout puts it.
    let archive = tempfile::tempdir().unwrap();
    let shelf = archive.path().join("f/foo");
    fs::create_dir_all(&shelf).unwrap();
    fs::copy(&evil, shelf.join("foo-2.0-2-any.pkg.tar.zst")).unwrap();
    let server = FileServer::start(archive.path(), true);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    let pool = coord.admin(
        "POST",
        "/pools",
        Some(serde_json::json!({"name": "lab", "policy": {"auto_sync": "apply"}})),
    );
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let dm = Daemon::start(&write_config(
        &mallory,
        "mallory",
        Some((&coord.url(), &join)),
    ));
    let vconf = write_config(&victim.sb, "victim", Some((&coord.url(), &join)));
    let mut text = fs::read_to_string(&vconf).unwrap();
    text = text.replace(
        "[paths]\n",
        &format!("[paths]\narchive_url = \"{}\"\n", server.url()),
    );
    fs::write(&vconf, text).unwrap();
    let dv = Daemon::start(&vconf);
    dm.wait_status("mallory connected", |s| s["link"] == "connected");
    dv.wait_status("victim connected", |s| s["link"] == "connected");
    let before = victim.fingerprint();

    dm.cli_code(&["set-latest", "--yes"], 0);
    // Whatever the outcome, the auto-sync ends: in sync (the attack worked) or with an error.
    let s = dv.wait_status("the victim's auto-sync to end", |s| {
        s["target"]["revision"] == 1
            && s["operation"].is_null()
            && (s["state"] == "in-sync" || !s["last_error"].is_null())
    });
    let err = s["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("untrusted-package"), "{s}");
    assert!(
        err.contains("foo 2.0-2") && err.contains("requires signed packages"),
        "{err}"
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r == "/f/foo/foo-2.0-2-any.pkg.tar.zst"),
        "the victim did fetch the file: {:?}",
        server.requests()
    );
    // Nothing installed; the refused download is gone. (Refreshing the sync databases
    // before planning is allowed to touch the log, so compare the package state only.)
    let after = victim.fingerprint();
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    assert_eq!(victim.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 1.0-1");
    assert!(
        !victim
            .sb
            .cachedir()
            .join("foo-2.0-2-any.pkg.tar.zst")
            .exists()
    );
    no_partial_files(&victim.sb.cachedir());
    let history: serde_json::Value =
        serde_json::from_str(&dv.cli_code(&["history", "--json"], 0)).unwrap();
    assert_eq!(history[0]["kind"], "sync", "{history}");
    assert_ne!(history[0]["state"], "completed", "{history}");
}

/// A target set by a machine whose cache keeps the packager's signature: the manifest carries
/// it through the coordinator, and a member that fetches the file from an archive without
/// `.sig` files checks it against its own keyring and installs.
#[test]
fn the_manifest_carries_signatures_through_the_coordinator() {
    use support::coordinator::Coordinator;
    use support::daemon::{Daemon, write_config};

    let alice = world();
    let bob = world();
    // Bob's keyring must trust the same packager: alice's packager key goes into bob's keyring.
    let bob_keyring = Keyring {
        dir: bob.sb.base().join("gnupg"),
    };
    bob_keyring.trust(&alice.trusted);
    std::mem::forget(bob_keyring); // bob's own World kills the agent of that directory
    // Alice runs foo 0.9-1, signed, from her cache.
    let old = alice.build("foo", "0.9-1");
    let sig = alice.trusted.sign(&old);
    let cached = alice.cache(&old, Some(&sig));
    alice.sb.pacman_ok(&["-U", cached.to_str().unwrap()]);
    // Bob's archive has the file but no signatures.
    let archive = tempfile::tempdir().unwrap();
    let shelf = archive.path().join("f/foo");
    fs::create_dir_all(&shelf).unwrap();
    fs::copy(&old, shelf.join("foo-0.9-1-any.pkg.tar.zst")).unwrap();
    let server = FileServer::start(archive.path(), false);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let da = Daemon::start(&write_config(
        &alice.sb,
        "alice",
        Some((&coord.url(), &join)),
    ));
    let bconf = write_config(&bob.sb, "bob", Some((&coord.url(), &join)));
    let text = fs::read_to_string(&bconf).unwrap().replace(
        "[paths]\n",
        &format!("[paths]\narchive_url = \"{}\"\n", server.url()),
    );
    fs::write(&bconf, text).unwrap();
    let db_ = Daemon::start(&bconf);
    da.wait_status("alice connected", |s| s["link"] == "connected");
    db_.wait_status("bob connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);

    // The coordinator kept alice's manifest for revision 1, with the signature.
    let manifest = coord.admin(
        "GET",
        &format!("/pools/{}/targets/1/manifest", pool["id"]),
        None,
    );
    let entry = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "foo")
        .unwrap_or_else(|| panic!("{manifest}"))
        .clone();
    assert_eq!(entry["version"], "0.9-1");
    assert!(
        entry["signature"].as_str().is_some_and(|s| s.len() > 40),
        "{entry}"
    );
    assert_eq!(entry["sha256"].as_str().map(str::len), Some(64), "{entry}");

    db_.wait_status("bob behind", |s| s["target"]["revision"] == 1);
    db_.cli_code(&["sync", "--yes"], 0);
    assert_eq!(bob.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 0.9-1");
    // Neither bob's repository nor the archive has the signature: it came from alice's
    // manifest (through the pool repository, which serves FILE.sig from it), and bob checked
    // it against his own keyring before installing.
    assert_eq!(
        fs::read(bob.sb.cachedir().join("foo-0.9-1-any.pkg.tar.zst.sig")).unwrap(),
        fs::read(&sig).unwrap()
    );
}

/// https archives (the README's own example is https://archive.archlinux.org/packages) work
/// with the system's store plus `coordinator_ca_file`; without the CA the download is refused
/// with a certificate error, and nothing is installed.
#[tokio::test]
async fn https_archives_use_the_configured_ca() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let w = world();
    let pki = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pacpool test archive CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    fs::write(pki.path().join("ca.pem"), ca_cert.pem()).unwrap();
    fs::write(pki.path().join("server.pem"), server.pem()).unwrap();
    fs::write(pki.path().join("server.key"), server_key.serialize_pem()).unwrap();

    let archive = tempfile::tempdir().unwrap();
    let shelf = archive.path().join("f/foo");
    fs::create_dir_all(&shelf).unwrap();
    let old = w.build("foo", "0.6-1");
    fs::copy(&old, shelf.join("foo-0.6-1-any.pkg.tar.zst")).unwrap();
    let sig = w.trusted.sign(&old);
    fs::copy(&sig, shelf.join("foo-0.6-1-any.pkg.tar.zst.sig")).unwrap();
    let server = FileServer::start_tls(
        archive.path(),
        &pki.path().join("server.pem"),
        &pki.path().join("server.key"),
    );
    assert!(server.url().starts_with("https://"));
    let target = w.target(&[("foo", Some("0.6-1"))]);

    // Without the CA: refused before anything is installed.
    let before = w.fingerprint();
    let (p, m) = w.plan(&target, Some(&server.url()));
    let err = run(&w, &p, &w.rule(&m, None, false), &Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(w.fingerprint(), before);

    // With it: fetched over https (package and signature), checked, installed.
    let opts = ApplyOptions {
        ca_file: Some(pki.path().join("ca.pem")),
        ..Default::default()
    };
    let (p, m) = w.plan(&target, Some(&server.url()));
    run(&w, &p, &w.rule(&m, None, false), &opts).await.unwrap();
    assert_eq!(w.sb.pacman_ok(&["-Q", "foo"]).trim(), "foo 0.6-1");
    assert!(
        server
            .requests()
            .contains(&"/f/foo/foo-0.6-1-any.pkg.tar.zst.sig".to_owned())
    );
}
