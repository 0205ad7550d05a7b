//! The pool repository with real parts: a real coordinator on 127.0.0.1, real pacpoold
//! processes on sandbox roots, real pacman (pacpool's own syncs, and a stock `pacman -Sy`
//! using the pool repository as a `Server`), and a real HTTP mirror whose request log counts
//! upstream fetches.

mod support;

use std::fs;
use std::path::PathBuf;

use support::coordinator::{ADMIN, Coordinator};
use support::daemon::{Daemon, write_config};
use support::http::FileServer;
use support::keyring::{Keyring, Packager};
use support::{PkgSpec, REPO, Sandbox, host_arch};

fn build(sb: &Sandbox, specs: &[(&str, &str)]) -> Vec<PathBuf> {
    specs
        .iter()
        .map(|(n, v)| sb.build_package(&PkgSpec::new(n, v).arch(&host_arch())))
        .collect()
}

/// The packages signed by a packager whose key every sandbox's keyring fully trusts (as
/// `archlinux-keyring` makes Arch's packagers trusted). The sandboxes' repository says
/// SigLevel Never, so a file its database does not list (an old version, from the pool
/// repository) is installed only with such a signature, which the target's manifest carries
/// from the setting machine's database (`%PGPSIG%`).
struct Signing {
    packager: Packager,
    _keyrings: Vec<Keyring>,
}

impl Signing {
    fn new(sbs: &[&Sandbox]) -> Self {
        let packager = Packager::new("pool");
        let keyrings = sbs
            .iter()
            .map(|sb| {
                let k = Keyring::init(sb);
                k.trust(&packager);
                k
            })
            .collect();
        Self {
            packager,
            _keyrings: keyrings,
        }
    }

    fn sign(&self, pkgs: Vec<PathBuf>) -> Vec<PathBuf> {
        for p in &pkgs {
            self.packager.sign(p);
        }
        pkgs
    }
}

fn pool(coord: &Coordinator, name: &str) -> (i64, String) {
    let pool = coord.admin("POST", "/pools", Some(serde_json::json!({ "name": name })));
    let join = coord.admin("POST", &format!("/pools/{}/join-tokens", pool["id"]), None);
    (
        pool["id"].as_i64().unwrap(),
        join["token"].as_str().unwrap().to_owned(),
    )
}

/// Waits (bounded) until the coordinator reports no missing files for the revision.
fn wait_uploaded(coord: &Coordinator, pool_id: i64, revision: u64) {
    for _ in 0..600 {
        let missing = coord.admin("GET", &format!("/pools/{pool_id}/repo/{revision}"), None);
        if missing.as_array().is_some_and(|m| m.is_empty()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the setting endpoint never uploaded the files the pool repository lacked");
}

/// Waits (bounded, 30 s) until `file` exists; panics with `what` and the daemon's log.
fn wait_for_file(file: &std::path::Path, what: &str, d: &Daemon) {
    for _ in 0..600 {
        if file.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "{what}: {} never appeared; log:\n{}",
        file.display(),
        d.log()
    );
}

#[test]
fn a_target_stays_installable_after_its_versions_leave_the_mirror() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let signing = Signing::new(&[&a, &b]);
    let v1 = signing.sign(build(
        &a,
        &[("tool", "1.0-1"), ("libthing", "1.0-1"), ("basics", "1-1")],
    ));
    a.publish(&v1);
    b.publish(&v1);
    a.pacman_ok(&["-Sy", "tool", "libthing", "basics"]);
    b.pacman_ok(&["-Sy", "basics"]);
    for f in fs::read_dir(b.cachedir()).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    let dbdir = tempfile::tempdir().unwrap();
    // Pool "lab" may be read without a token (uploads still need one).
    let coord = Coordinator::start_with(&dbdir.path().join("c.db"), None, |s| {
        s.repo.anonymous_pools = vec!["lab".into()];
    });
    let (pool_id, join) = pool(&coord, "lab");
    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    // Bob does not prefetch (the test configuration's default): this test is about syncing
    // from the pool repository itself.
    let db_ = Daemon::start(&write_config(&b, "bob", Some((&coord.url(), &join))));
    da.wait_status("A connected", |s| s["link"] == "connected");
    db_.wait_status("B connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    // No upstream is configured: alice uploads what the pool repository lacks.
    wait_uploaded(&coord, pool_id, 1);

    // The mirror moves on: both repositories now offer only 1.1-1; bob's cache is empty and
    // there is no archive.
    let v2 = signing.sign(build(&a, &[("tool", "1.1-1"), ("libthing", "1.1-1")]));
    b.publish(&v2);
    for old in &v1[..2] {
        fs::remove_file(b.repo_dir().join(old.file_name().unwrap())).unwrap();
    }
    b.pacman_ok(&["-Sy"]);
    db_.cli_code(&["notify"], 0);
    assert_eq!(fs::read_dir(b.cachedir()).unwrap().count(), 0);
    db_.wait_status("B behind", |s| s["target"]["revision"] == 1);
    let preview: serde_json::Value =
        serde_json::from_str(&db_.cli_code(&["preview", "--json"], 0)).unwrap();
    for a in preview["actions"].as_array().unwrap() {
        assert_eq!(a["source"]["kind"], "pool", "{preview}");
    }
    db_.cli_code(&["sync", "--yes"], 0);
    assert_eq!(
        b.pacman_ok(&["-Q", "tool", "libthing"]),
        "tool 1.0-1\nlibthing 1.0-1\n",
        "preview was: {preview}"
    );
    // Anonymous reads of this pool's repository work; anonymous uploads do not.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = format!("{}/api/v1/pools/{pool_id}/repo/1", coord.url());
    let (get, put) = rt.block_on(async {
        let c = reqwest::Client::new();
        let get = c
            .get(format!("{repo}/lab.db"))
            .send()
            .await
            .unwrap()
            .status();
        let put = c
            .put(format!(
                "{repo}/{}",
                v1[0].file_name().unwrap().to_string_lossy()
            ))
            .body(fs::read(&v1[0]).unwrap())
            .send()
            .await
            .unwrap()
            .status();
        (get, put)
    });
    assert_eq!((get.as_u16(), put.as_u16()), (200, 401));
    let stats = coord.admin("GET", "/stats", None);
    assert!(stats["repo"]["uploads"].as_u64() >= Some(2), "{stats}");
    assert!(stats["repo"]["bytes_served"].as_u64() > Some(0), "{stats}");
    assert!(stats["repo"]["bytes_stored"].as_u64() > Some(0), "{stats}");
}

#[test]
fn ten_endpoints_one_upstream_fetch_per_file_and_a_stock_pacman_can_use_it() {
    let a = Sandbox::new();
    let pkgs = build(&a, &[("tool", "2.0-1"), ("libthing", "2.0-1")]);
    a.publish(&pkgs);
    a.pacman_ok(&["-Sy", "tool", "libthing"]);
    // The upstream mirror: pacman's layout, `$repo/os/$arch/FILE`.
    let mirror = tempfile::tempdir().unwrap();
    let shelf = mirror.path().join(REPO).join("os").join(host_arch());
    fs::create_dir_all(&shelf).unwrap();
    for p in &pkgs {
        fs::copy(p, shelf.join(p.file_name().unwrap())).unwrap();
    }
    let server = FileServer::start(mirror.path(), true);
    let dbdir = tempfile::tempdir().unwrap();
    let upstream = format!("{}/$repo/os/$arch", server.url());
    let coord = Coordinator::start_with(&dbdir.path().join("c.db"), None, |s| {
        s.repo.upstream = vec![upstream];
    });
    let (pool_id, join) = pool(&coord, "lab");
    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    // With an upstream, nothing needs uploading.
    let missing = coord.admin("GET", &format!("/pools/{pool_id}/repo/1"), None);
    assert_eq!(missing, serde_json::json!([]));

    // Ten endpoints ask for both files at the same time.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("{}/api/v1", coord.url());
    let tokens: Vec<String> = (0..10)
        .map(|i| {
            rt.block_on(async {
                let r: serde_json::Value = reqwest::Client::new()
                    .post(format!("{base}/register"))
                    .json(&serde_json::json!({"join_token": join, "name": format!("m{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r["endpoint_token"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let files: Vec<String> = pkgs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let bodies = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in &tokens {
            for f in &files {
                let url = format!("{base}/pools/{pool_id}/repo/1/{f}");
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    let r = reqwest::Client::new()
                        .get(url)
                        .bearer_auth(t)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap()
                }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(
            body.as_ref(),
            fs::read(&pkgs[i % pkgs.len()]).unwrap(),
            "every endpoint got the exact file"
        );
    }
    let log = server.requests();
    for f in &files {
        let fetched = log.iter().filter(|r| r.ends_with(&format!("/{f}"))).count();
        assert_eq!(
            fetched, 1,
            "{f} fetched from upstream {fetched} times: {log:?}"
        );
    }
    let stats = coord.admin("GET", "/stats", None);
    assert_eq!(stats["repo"]["upstream_fetches"], 2, "{stats}");

    // A stock pacman with the pool repository as a Server (the token as the URL's password)
    // installs the target's versions; an unknown token is refused.
    let without_own_repo = |sb: &Sandbox| {
        let conf = fs::read_to_string(sb.config()).unwrap();
        conf[..conf.find(&format!("[{REPO}]")).unwrap()].to_owned()
    };
    let c = Sandbox::new();
    let conf = without_own_repo(&c);
    let server_line = format!(
        "[poolrepo]\nServer = http://pacpool:{ADMIN}@{}/api/v1/pools/{pool_id}/repo/1\n",
        coord.addr
    );
    fs::write(c.config(), format!("{conf}\n{server_line}")).unwrap();
    c.pacman_ok(&["-Sy", "poolrepo/tool", "poolrepo/libthing"]);
    assert_eq!(
        c.pacman_ok(&["-Q", "tool", "libthing"]),
        "tool 2.0-1\nlibthing 2.0-1\n"
    );
    let d = Sandbox::new();
    let conf = without_own_repo(&d);
    fs::write(
        d.config(),
        format!("{conf}\n{}", server_line.replace(ADMIN, "not-a-token")),
    )
    .unwrap();
    assert!(!d.pacman(&["-Sy"]).status.success());
}

#[test]
fn a_new_target_is_prefetched_and_syncs_without_the_coordinator() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let signing = Signing::new(&[&a, &b]);
    let v1 = signing.sign(build(&a, &[("tool", "3.0-1"), ("basics", "1-1")]));
    a.publish(&v1);
    a.pacman_ok(&["-Sy", "tool", "basics"]);
    // Bob's repository offers tool, but never had 3.0-1: a download its database does not
    // list, installed because the manifest carries the trusted packager's signature (see
    // tests/trust_real_pacman.rs for the refusals).
    let older = build(&b, &[("tool", "2.9-1")]);
    b.publish(&[v1[1].clone(), older[0].clone()]);
    b.pacman_ok(&["-Sy", "basics"]);
    let dbdir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    let (pool_id, join) = pool(&coord, "lab");
    let da = Daemon::start(&write_config(&a, "alice", Some((&coord.url(), &join))));
    da.wait_status("A connected", |s| s["link"] == "connected");
    da.cli_code(&["set-latest", "--yes"], 0);
    wait_uploaded(&coord, pool_id, 1);

    // Bob joins (prefetching, the default outside tests); he learns the target and fetches
    // its file into his cache by himself.
    let bconf = write_config(&b, "bob", Some((&coord.url(), &join)));
    let text = fs::read_to_string(&bconf).unwrap();
    fs::write(
        &bconf,
        text.replace("prefetch = false", "prefetch = true")
            .replace("check_interval = 3600", "check_interval = 1"),
    )
    .unwrap();
    let db_ = Daemon::start(&bconf);
    db_.wait_status("B behind", |s| s["target"]["revision"] == 1);
    let cached = b
        .cachedir()
        .join(format!("tool-3.0-1-{}.pkg.tar.zst", host_arch()));
    wait_for_file(&cached, "prefetched into the cache", &db_);
    assert!(
        !b.pacman(&["-Q", "tool"]).status.success(),
        "a prefetch installs nothing"
    );
    // A file that leaves the cache (cleaned by hand, or never fetched because the pool
    // repository was down) is fetched again by the timer.
    fs::remove_file(&cached).unwrap();
    wait_for_file(&cached, "fetched again by the timer", &db_);

    // The coordinator goes away; the sync needs nothing from it.
    coord.stop();
    db_.cli_code(&["notify"], 0);
    db_.cli_code(&["sync", "--yes"], 0);
    assert_eq!(b.pacman_ok(&["-Q", "tool"]).trim(), "tool 3.0-1");
}

#[test]
fn a_member_cannot_push_an_unsigned_package_through_the_pool_repository() {
    // Mallory, an enrolled endpoint, builds her own "tool 2.0-1" (its install could run
    // anything as root), installs it, and sets it as the pool's target; her daemon uploads
    // it to the pool repository. The repository says SigLevel Never, so pacman on Bob's
    // machine would install from it only what its database lists: Bob's sync and prefetch
    // refuse the file, and his machine is unchanged.
    let (m, b) = (Sandbox::new(), Sandbox::new());
    let signing = Signing::new(&[&m, &b]);
    let v1 = signing.sign(build(&m, &[("tool", "1.0-1")]));
    m.publish(&v1);
    b.publish(&v1);
    m.pacman_ok(&["-Sy", "tool"]);
    b.pacman_ok(&["-Sy", "tool"]);
    let evil = build(&m, &[("tool", "2.0-1")]).remove(0);
    fs::copy(&evil, m.cachedir().join(evil.file_name().unwrap())).unwrap();
    m.pacman_ok(&["-U", evil.to_str().unwrap()]);

    let dbdir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dbdir.path().join("c.db"), None);
    let (pool_id, join) = pool(&coord, "lab");
    let dm = Daemon::start(&write_config(&m, "mallory", Some((&coord.url(), &join))));
    dm.wait_status("M connected", |s| s["link"] == "connected");
    dm.cli_code(&["set-latest", "--yes"], 0);
    wait_uploaded(&coord, pool_id, 1);

    let bconf = write_config(&b, "bob", Some((&coord.url(), &join)));
    let text = fs::read_to_string(&bconf).unwrap();
    fs::write(&bconf, text.replace("prefetch = false", "prefetch = true")).unwrap();
    let db_ = Daemon::start(&bconf);
    db_.wait_status("B behind", |s| s["target"]["revision"] == 1);
    let before = (b.pacman_ok(&["-Q"]), b.pacman_ok(&["-Qk"]));
    let out = db_.cli(&["sync", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the sync must fail");
    assert!(
        stderr.contains("not trusted") && stderr.contains("SigLevel Never"),
        "{stderr}"
    );
    // (The sync refreshes the sync databases first; no transaction runs.)
    assert_eq!(
        (b.pacman_ok(&["-Q"]), b.pacman_ok(&["-Qk"])),
        before,
        "Bob's root changed"
    );
    assert_eq!(
        b.log_text().matches("transaction started").count(),
        1,
        "only the test's own first install ran a transaction"
    );
    assert_eq!(b.pacman_ok(&["-Q", "tool"]).trim(), "tool 1.0-1");
    let name = evil.file_name().unwrap();
    assert!(
        !b.cachedir().join(name).exists(),
        "the refused file stays out of the cache (prefetch included)"
    );
}
