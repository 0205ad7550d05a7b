//! Fuzz entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, included by
//! path) and the bounded in-suite run (`tests/fuzz_bounded.rs`). Each takes arbitrary bytes,
//! must never panic, and asserts the invariants that hold for whatever the parser accepts:
//! every validated name or version is safe on a pacman command line, accepted values survive
//! a round trip, and `vercmp` is antisymmetric.
//!
//! No file system, network or process access: `pacman.conf` is parsed with `Include` refused
//! ([`pacpool::pacman_conf::PacmanConf::parse_isolated`]).
#![allow(dead_code)]

use std::cmp::Ordering;
use std::path::Path;

use pacpool::daemon::protocol::{Envelope, Reply};
use pacpool::desc::Desc;
use pacpool::names::{MAX_LEN, PkgName, PkgVersion, RepoName};
use pacpool::proto::{
    CreateJoinToken, CreateOperation, CreatePool, EndpointMsg, OperationResult, Progress,
    RegisterRequest, RevertTargetRequest, ServerMsg, SetTargetRequest, StateReport, UpdateEndpoint,
    UpdatePool,
};
use pacpool::snapshot::{Delta, PackageState, Snapshot};

/// A fuzz entry function.
pub type Target = fn(&[u8]);

/// Every target: a name for corpora and reports, and the entry function.
pub const TARGETS: &[(&str, Target)] = &[
    ("desc", desc),
    ("syncdb", syncdb),
    ("vercmp", vercmp),
    ("ws_endpoint_msg", ws_endpoint_msg),
    ("ws_server_msg", ws_server_msg),
    ("rest_bodies", rest_bodies),
    ("local_request", local_request),
    ("local_reply", local_reply),
    ("daemon_config", daemon_config),
    ("coordinator_settings", coordinator_settings),
    ("pacman_conf", pacman_conf),
];

/// Nothing a validated type holds can be taken for an option, a path, a second argument or
/// a shell word.
fn argv_safe(s: &str) {
    assert!(!s.is_empty() && s.len() <= MAX_LEN, "{s:?}");
    assert!(!s.starts_with('-'), "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/\\;&|$`'\"<>(){}*?[]!#%=,".contains(&b)),
        "{s:?}"
    );
}

fn check_name(n: &PkgName) {
    argv_safe(n.as_str());
    assert!(!n.as_str().starts_with('.'));
    assert_eq!(n.as_str().parse::<PkgName>().as_ref(), Ok(n));
}

fn check_version(v: &PkgVersion) {
    argv_safe(v.as_str());
    assert_eq!(v.as_str().parse::<PkgVersion>().as_ref(), Ok(v));
    assert_eq!(
        pacpool::version::vercmp(v.as_str(), v.as_str()),
        Ordering::Equal
    );
}

fn check_package(p: &PackageState) {
    check_name(&p.name);
    check_version(&p.version);
    argv_safe(p.arch.as_str());
    if let Some(r) = &p.repo {
        argv_safe(r.as_str());
        assert_ne!(r.as_str(), "local");
    }
}

fn check_snapshot(s: &Snapshot) {
    for p in s.packages() {
        check_package(p);
    }
    assert!(s.packages().windows(2).all(|w| w[0].name < w[1].name));
    let text = s.encode();
    let back = Snapshot::decode(&text).expect("an encoded snapshot decodes");
    assert_eq!(&back, s);
    assert_eq!(back.hash(), s.hash());
}

/// A fixed base for deltas: a few packages, one of each reason.
fn delta_base() -> Snapshot {
    let text = Snapshot::new(Vec::new()).unwrap().encode();
    let mut s = Snapshot::decode(&text).unwrap().packages().to_vec();
    for (n, v) in [("bash", "5.2-1"), ("glibc", "2.40-1"), ("zsh", "1:5.9-5")] {
        s.push(PackageState {
            name: n.parse().unwrap(),
            version: v.parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason: pacpool::localdb::Reason::Explicit,
            repo: Some("core".parse().unwrap()),
        });
    }
    Snapshot::new(s).unwrap()
}

/// A decoded delta against the fixed base (its base hash replaced so that the consistency
/// checks, not the hash check, are exercised): applied exactly or refused whole.
fn check_delta(d: &Delta) {
    for p in d.added.iter().chain(&d.changed) {
        check_package(p);
    }
    for n in d
        .removed
        .iter()
        .chain(d.reason_changed.iter().map(|(n, _)| n))
    {
        check_name(n);
    }
    let base = delta_base();
    let mut d = d.clone();
    d.base = base.hash();
    if let Ok(out) = d.apply(&base) {
        assert_eq!(out.hash(), d.target);
        check_snapshot(&out);
    }
}

fn check_report(r: &StateReport) {
    match r {
        StateReport::Full { snapshot } => check_snapshot(snapshot),
        StateReport::Delta { delta } => check_delta(delta),
    }
}

/// serde round trip: what was accepted re-encodes to something that decodes to the same.
fn round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(v).expect("accepted values serialize");
    let back: T = serde_json::from_slice(&json).expect("serialized values decode");
    assert_eq!(&back, v);
}

// ---------------------------------------------------------------------------------------------
// Targets

/// `desc` entries (local and sync databases).
pub fn desc(data: &[u8]) {
    let Ok(d) = Desc::parse_bytes(data) else {
        return;
    };
    for key in ["NAME", "VERSION", "ARCH", "DEPENDS", "REASON", "", "%"] {
        let _ = d.list(key);
        let _ = d.first(key);
        let _ = d.strings(key);
    }
    if let Ok(n) = d.name() {
        check_name(&n);
    }
    if let Ok(v) = d.version() {
        check_version(&v);
    }
    if let Ok(a) = d.arch() {
        argv_safe(a.as_str());
    }
    let _ = d.number("SIZE");
    let _ = d.number("REASON");
}

/// A sync database file (gzip, zstd or plain tar), read from memory.
pub fn syncdb(data: &[u8]) {
    let repo: RepoName = "fuzz".parse().unwrap();
    let Ok(db) = pacpool::syncdb::read_sync_db_from(&repo, Path::new("fuzz.db"), data) else {
        return;
    };
    assert!(db.packages.windows(2).all(|w| w[0].name < w[1].name));
    for p in &db.packages {
        check_name(&p.name);
        check_version(&p.version);
        argv_safe(p.arch.as_str());
        argv_safe(&p.filename);
        assert!(!p.filename.starts_with('.'));
        if let Some(h) = &p.sha256 {
            assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_eq!(db.get(p.name.as_str()), Some(p));
    }
}

/// Version comparison over two or three strings separated by NUL bytes (any bytes, made
/// UTF-8 lossily): reflexive and antisymmetric on every input, and agreeing with the
/// three-way comparisons that follow from it.
pub fn vercmp(data: &[u8]) {
    use pacpool::version::vercmp;
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let a = parts.next().unwrap_or("");
    let b = parts.next().unwrap_or("");
    let c = parts.next();
    assert_eq!(vercmp(a, a), Ordering::Equal);
    let ab = vercmp(a, b);
    assert_eq!(vercmp(b, a), ab.reverse(), "{a:?} vs {b:?}");
    if let Some(c) = c {
        let bc = vercmp(b, c);
        let ac = vercmp(a, c);
        assert_eq!(vercmp(c, a), ac.reverse(), "{a:?} vs {c:?}");
        // pacman's rpmvercmp is not transitive in general, not even on versions makepkg
        // accepts (the real `vercmp`: 0 < @P, @P < @, but 0 > @), and vercmp must match
        // pacman. Transitivity is checked on plain versions: alphanumeric segments joined by
        // single dots, with an optional epoch, and a pkgrel on all three or none (pkgrels are
        // compared only when both sides have one, so `00-10` = `0` = `0-2` but `00-10` > `0-2`).
        let rels = [a, b, c].iter().filter(|s| s.contains('-')).count();
        let valid = [a, b, c].iter().all(|s| is_plain_version(s)) && (rels == 0 || rels == 3);
        if valid && ab != Ordering::Greater && bc != Ordering::Greater {
            assert_ne!(
                ac,
                Ordering::Greater,
                "{a:?} <= {b:?} <= {c:?} but {a:?} > {c:?}"
            );
        }
        if valid && ab == Ordering::Equal && bc == Ordering::Equal {
            assert_eq!(ac, Ordering::Equal, "{a:?} == {b:?} == {c:?}");
        }
    }
}

/// `[epoch:]seg(.seg)*[-N[.N]]` with alphanumeric segments.
pub fn is_plain_version(s: &str) -> bool {
    let Ok(v) = s.parse::<PkgVersion>() else {
        return false;
    };
    let rest = s.split_once(':').map_or(s, |(_, r)| r);
    let pkgver = rest.rsplit_once('-').map_or(rest, |(v, _)| v);
    v.as_str().len() == s.len()
        && pkgver
            .split('.')
            .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The coordinator's decode path for endpoint WebSocket messages, reports included.
pub fn ws_endpoint_msg(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = serde_json::from_str::<EndpointMsg>(text) else {
        return;
    };
    if let EndpointMsg::Report { report, .. } = &msg {
        check_report(report);
    }
    round_trip(&msg);
}

/// The daemon's decode path for coordinator WebSocket messages.
pub fn ws_server_msg(data: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<ServerMsg>(data) else {
        return;
    };
    round_trip(&msg);
}

/// The REST request bodies the coordinator decodes, chosen by the first byte.
pub fn rest_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    fn one<T>(body: &[u8]) -> Option<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let v = serde_json::from_slice::<T>(body).ok()?;
        round_trip(&v);
        Some(v)
    }
    match which % 11 {
        0 => {
            if let Some(r) = one::<StateReport>(body) {
                check_report(&r);
            }
        }
        1 => drop(one::<CreatePool>(body)),
        2 => drop(one::<UpdatePool>(body)),
        3 => drop(one::<CreateJoinToken>(body)),
        4 => drop(one::<RegisterRequest>(body)),
        5 => drop(one::<SetTargetRequest>(body)),
        6 => drop(one::<RevertTargetRequest>(body)),
        7 => drop(one::<CreateOperation>(body)),
        8 => drop(one::<Progress>(body)),
        9 => drop(one::<OperationResult>(body)),
        _ => drop(one::<UpdateEndpoint>(body)),
    }
}

/// pacpoold's decode path for a local socket request line.
pub fn local_request(data: &[u8]) {
    let Ok(env) = serde_json::from_slice::<Envelope>(data) else {
        return;
    };
    let _ = env.request.is_action();
    round_trip(&env);
}

/// The CLI's and the tray's decode path for a daemon reply line.
pub fn local_reply(data: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<Reply>(data) else {
        return;
    };
    round_trip(&reply);
}

/// `pacpoold.toml`.
pub fn daemon_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pacpool::daemon::DaemonConfig::parse(text, Path::new("fuzz.toml"));
}

/// The coordinator's `coordinator.toml`.
pub fn coordinator_settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pacpool::coordinator::Settings::from_toml(text, Path::new("fuzz.toml"));
}

/// `pacman.conf` (without following `Include`).
pub fn pacman_conf(data: &[u8]) {
    let Ok(conf) = pacpool::pacman_conf::PacmanConf::parse_isolated(data, Path::new("pacman.conf"))
    else {
        return;
    };
    let _ = (conf.db_path(), conf.cache_dirs(), conf.log_file());
    let names = conf.repo_names();
    for (i, n) in names.iter().enumerate() {
        argv_safe(n.as_str());
        assert!(!names[..i].contains(n), "repository {n} twice");
        assert!(conf.repo(n.as_str()).is_some());
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// Hand-written seeds per target: valid inputs and the hostile shapes each parser must
/// refuse. Deterministic; the bounded run mutates these, and `cargo fuzz` starts from them
/// (`fuzz/seed.sh` writes them to `fuzz/corpus/<target>/`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = match target {
        "desc" => vec![
            desc_text("foo", "1.0-1").into_bytes(),
            b"%NAME%\n-Syu\n\n%VERSION%\n../x\n\n".to_vec(),
            b"%NAME%\nfoo\n%NAME%\n%%\n\n%SIZE%\n99999999999999999999999\n".to_vec(),
            b"x\n%NAME%\n".to_vec(),
            b"%NAME%\n\xff\xfe\n".to_vec(),
            b"%%%\n\r\n%NAME%\r\nfoo\r\n".to_vec(),
        ],
        "syncdb" => syncdb_seeds(),
        "vercmp" => vec![
            b"1.0-1\x001.0\x001:0.1".to_vec(),
            b"1.0a\x001.0b\x001.0.1".to_vec(),
            b"10\x000:alpha1\x00".to_vec(),
            b"1..0\x001.0\x001_0".to_vec(),
            b"\x00\x00".to_vec(),
            b"-\x00:\x00--".to_vec(),
            b"1.0~rc1-1\x001.0-1\x001.0+1-1".to_vec(),
        ],
        "ws_endpoint_msg" => vec![
            br#"{"type":"hello","protocol":1,"agent":"pacpoold/0.1","acked_state":null}"#
                .to_vec(),
            br#"{"type":"heartbeat"}"#.to_vec(),
            format!(
                r#"{{"type":"report","report":{{"kind":"full","snapshot":{}}}}}"#,
                serde_json::to_string(&delta_base()).unwrap()
            )
            .into_bytes(),
            delta_report_seed().into_bytes(),
            br#"{"type":"progress","operation":1,"progress":{"stage":"download","percent":50}}"#
                .to_vec(),
            br#"{"type":"result","operation":-1,"result":{"state":"failed","message":"x","failures":[{"name":"a","reason":"b"}]}}"#.to_vec(),
            br#"{"type":"report","report":{"kind":"full","snapshot":{"packages":[{"name":"-Syu","version":"1-1","arch":"any","reason":"explicit"}]}}}"#.to_vec(),
        ],
        "ws_server_msg" => vec![
            br#"{"type":"welcome","protocol":1,"endpoint_id":1,"pool_id":1,"target":null,"known_state":null}"#.to_vec(),
            br#"{"type":"cancel_requested","operation":3}"#.to_vec(),
            br#"{"type":"error","error":{"code":"x","message":"y","detail":[1,{"a":null}]}}"#
                .to_vec(),
            br#"{"type":"policy_changed","policy":{"plan":{"scope":"explicit-only","ignore":["*-git"]},"auto_sync":"apply","auto_sync_window":"22:00-06:00"}}"#.to_vec(),
        ],
        "rest_bodies" => vec![
            [&[0u8][..], delta_report_seed().as_bytes()].concat(),
            b"\x01{\"name\":\"lab\",\"policy\":{\"plan\":{\"removal_cap\":3}}}".to_vec(),
            b"\x02{\"name\":\"x\"}".to_vec(),
            b"\x03{\"expires_in\":18446744073709551615,\"max_uses\":4294967295}".to_vec(),
            b"\x04{\"join_token\":\"t\",\"name\":\"host\"}".to_vec(),
            format!(
                "\x05{{\"expected_revision\":0,\"snapshot\":\"{}\"}}",
                delta_base().hash()
            )
            .into_bytes(),
            b"\x06{\"to_revision\":1,\"expected_revision\":2}".to_vec(),
            b"\x07{\"kind\":\"sync\",\"idempotency_key\":\"k\"}".to_vec(),
            b"\x08{\"stage\":\"x\",\"percent\":255}".to_vec(),
            b"\x09{\"state\":\"completed\",\"message\":\"\\u0000\"}".to_vec(),
            b"\x0a{\"name\":\"n\",\"pool_id\":2}".to_vec(),
        ],
        "local_request" => vec![
            br#"{"v":1,"cmd":"status"}"#.to_vec(),
            br#"{"v":1,"cmd":"revert","to":"--config=/x","confirm_removals":true}"#.to_vec(),
            br#"{"v":1,"cmd":"history","limit":18446744073709551615}"#.to_vec(),
            br#"{"v":1,"cmd":"pause-auto-sync","paused":true}"#.to_vec(),
            br#"{"v":1,"cmd":"sync","cmd":"status"}"#.to_vec(),
            br#"{"v":99,"cmd":"rm -rf /"}"#.to_vec(),
        ],
        "local_reply" => vec![
            br#"{"type":"ok"}"#.to_vec(),
            br#"{"type":"error","code":"refused","message":"no"}"#.to_vec(),
            br#"{"type":"progress","progress":{"stage":"pacman","percent":10}}"#.to_vec(),
        ],
        "daemon_config" => vec![
            pacpool::daemon::config::EXAMPLE.as_bytes().to_vec(),
            b"coordinator_url = \"http://x\"\ncheck_interval = -1\n[pacman]\nlock_wait = 1e400\n"
                .to_vec(),
            b"[policy]\nignore = [\"[unclosed\"]\nremoval_cap = 18446744073709551616\n".to_vec(),
        ],
        "coordinator_settings" => vec![
            pacpool::coordinator::EXAMPLE_CONFIG.as_bytes().to_vec(),
            b"listen = \"0.0.0.0:99999\"\nbody_limit = 0\ntrusted_proxies = [\"::/0\", \"x\"]\n"
                .to_vec(),
        ],
        "pacman_conf" => vec![
            b"[options]\nArchitecture = auto\nSigLevel = Never\nCacheDir = /a /b\n[core]\nServer = file:///x/$repo\n[extra]\nServer = https://m/$repo/os/$arch\n".to_vec(),
            b"[local]\n".to_vec(),
            b"[core]\n[core]\n".to_vec(),
            b"Include = /dev/zero\n".to_vec(),
            b"[options]\nDBPath =\nRootDir\n[-Syu]\n".to_vec(),
            b"[options]\n\xff\n# \xff comment\n".to_vec(),
        ],
        other => panic!("no target {other}"),
    };
    // Shapes every parser must survive: deep nesting, long runs, NULs, invalid UTF-8.
    v.push(vec![b'['; 100_000]);
    v.push(vec![b'{'; 10_000]);
    v.push([&b"a = "[..], &vec![b'['; 50_000]].concat());
    v.push(b"\0\n\0".to_vec());
    v.push(vec![0xff; 64]);
    v.push(Vec::new());
    v
}

/// A `desc` entry as repo-add writes it.
pub fn desc_text(name: &str, version: &str) -> String {
    format!(
        "%FILENAME%\n{name}-{version}-x86_64.pkg.tar.zst\n\n%NAME%\n{name}\n\n%BASE%\n{name}\n\n\
         %VERSION%\n{version}\n\n%DESC%\nthe {name} package\n\n%CSIZE%\n1234\n\n%ISIZE%\n5678\n\n\
         %SHA256SUM%\n{}\n\n%ARCH%\nx86_64\n\n%DEPENDS%\nglibc\nbar>=1.0\n\n%PROVIDES%\nlib{name}.so=1-64\n\n",
        "ab".repeat(32)
    )
}

fn delta_report_seed() -> String {
    let base = delta_base();
    let mut pkgs = base.packages().to_vec();
    pkgs[0].version = "5.3-1".parse().unwrap();
    pkgs.pop();
    let target = Snapshot::new(pkgs).unwrap();
    let delta = base.diff(&target);
    serde_json::to_string(&EndpointMsg::Report {
        report: StateReport::Delta { delta },
        source: None,
    })
    .unwrap()
}

/// An uncompressed tar of `(path, contents)` entries.
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        // The name is written raw: hostile names (`../x`) are what these archives are for.
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn syncdb_seeds() -> Vec<Vec<u8>> {
    let first = desc_text("foo", "1.0-1");
    let bar = desc_text("bar", "1:2.0-3");
    let plain = tar_of(&[
        ("foo-1.0-1/desc", first.as_bytes()),
        ("foo-1.0-1/files", b"%FILES%\nusr/bin/foo\n"),
        ("bar-1:2.0-3/desc", bar.as_bytes()),
    ]);
    let hostile = tar_of(&[
        ("-Syu-1-1/desc", desc_text("-Syu", "1-1").as_bytes()),
        ("../x/desc", first.as_bytes()),
        ("foo-1.0-1/desc", first.as_bytes()),
        ("./foo-1.0-1/desc", first.as_bytes()),
    ]);
    let zstd =
        ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    vec![
        gzip(&plain),
        zstd,
        plain.clone(),
        hostile,
        plain[..plain.len() - 1024].to_vec(),
        b"\xfd7zXZ\x00\x00".to_vec(),
        // A small gzip of 16 MiB of zeros: a tar of nothing but end-of-archive blocks.
        gzip(&vec![0u8; 16 * 1024 * 1024]),
    ]
}
