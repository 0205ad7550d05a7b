//! Serving package files: the coordinator's pool repository against nginx serving the same
//! files on this machine (loopback only; bounded in count).
//!
//! `cargo bench --bench pool_repo [-- --rounds N]`
//!
//! Starts the real `pacpool-coordinator` binary on 127.0.0.1, enrolls one endpoint whose
//! target names three package files of 1, 10 and 100 MB (random bytes: the store checks only
//! size and SHA-256), uploads them, and starts nginx (Debian's package) serving the same files
//! from a directory. With the same client (reqwest, one connection per concurrent stream),
//! for each file size and c = 1 and c = 10 it downloads the file `rounds × c` times from each
//! server and prints the throughput of both and the ratio (goal: the pool repository at least
//! 0.8× nginx), then the coordinator's peak RSS. Both servers share the machine's two cores
//! with the client, so the figures include scheduling noise.

#[path = "support/api.rs"]
mod api;
#[path = "support/coordinator.rs"]
mod coordinator_proc;
use coordinator_proc::CoordinatorProc;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use pacpool::localdb::Reason;
use pacpool::manifest::{Manifest, ManifestEntry};
use pacpool::proto::{SetTargetRequest, StateReport};
use pacpool::snapshot::{PackageState, Snapshot};

const ADMIN: &str = "repo-bench-admin-token-0123456789abcdef";
const SIZES: [(&str, usize); 3] = [("one", 1 << 20), ("ten", 10 << 20), ("hundred", 100 << 20)];

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_coordinator(dir: &Path) -> (CoordinatorProc, String) {
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"{}\"\nadmin_token_file = \"{}\"\n\
             rate_limit_per_minute = 0\n",
            dir.join("c.db").display(),
            dir.join("admin-token").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("admin-token"), ADMIN).unwrap();
    let coord = CoordinatorProc::start(&config);
    let base = format!("http://127.0.0.1:{}/api/v1", coord.port);
    (coord, base)
}

fn start_nginx(dir: &Path, root: &Path) -> Option<(Proc, String)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 2;\nuser root;\npid {pid};\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
               client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
               uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            pid = dir.join("nginx.pid").display(),
            dir = dir.display(),
            root = root.display(),
        ),
    )
    .unwrap();
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((Proc(child), format!("http://127.0.0.1:{port}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Downloads `url` `total` times with `c` at once; returns MB/s.
async fn throughput(url: &str, token: Option<&str>, c: usize, total: usize, size: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let (url, token) = (url.to_owned(), token.map(str::to_owned));
        let n = total / c + usize::from(w < total % c);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            for _ in 0..n {
                let mut req = client.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let mut resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{url}: {}", resp.status());
                let mut got = 0;
                while let Some(chunk) = resp.chunk().await.unwrap() {
                    got += chunk.len();
                }
                assert_eq!(got, size);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (total * size) as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn main() {
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds" {
            rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(rounds);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut entries = Vec::new();
    let mut packages = Vec::new();
    for (name, size) in SIZES {
        let mut bytes = vec![0u8; size];
        getrandom::fill(&mut bytes).unwrap();
        let filename = format!("{name}-1.0-1-x86_64.pkg.tar.zst");
        std::fs::write(files.join(&filename), &bytes).unwrap();
        let (len, sha) = pacpool::manifest::file_digest(&files.join(&filename)).unwrap();
        entries.push(ManifestEntry {
            name: name.parse().unwrap(),
            version: "1.0-1".parse().unwrap(),
            repo: Some("extra".parse().unwrap()),
            filename: Some(filename),
            size: Some(len),
            sha256: Some(sha),
            signature: None,
        });
        packages.push(PackageState {
            name: name.parse().unwrap(),
            version: "1.0-1".parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason: Reason::Explicit,
            repo: Some("extra".parse().unwrap()),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let snapshot = Snapshot::new(packages).unwrap();
    let (coord, base) = start_coordinator(dir.path());
    let Some((_nginx, nginx_base)) = start_nginx(dir.path(), &files) else {
        println!("SKIPPED: nginx is not installed (apt-get install nginx) or did not start");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (token, pool_id) = rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let (_, join) = api::pool_with_join_token(&http, &base, ADMIN, "bench").await;
        let reg = api::register(&http, &base, &join, "bench").await;
        let t = &reg.endpoint_token;
        let r = http
            .post(format!("{base}/endpoint/report"))
            .bearer_auth(t)
            .json(&StateReport::Full {
                snapshot: snapshot.clone(),
            })
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "report: {}", r.status());
        let r = http
            .post(format!("{base}/endpoint/target"))
            .bearer_auth(t)
            .json(&SetTargetRequest {
                expected_revision: 0,
                snapshot: snapshot.hash(),
                manifest: Some(Manifest {
                    entries: entries.clone(),
                }),
            })
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "set target: {}", r.status());
        for e in &entries {
            let f = e.filename.as_ref().unwrap();
            let r = http
                .put(format!("{base}/pools/{}/repo/1/{f}", reg.pool_id))
                .bearer_auth(t)
                .body(std::fs::read(files.join(f)).unwrap())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "upload {f}: {}", r.status());
        }
        (reg.endpoint_token.clone(), reg.pool_id)
    });
    println!(
        "pool repository vs nginx {}, same files, same client, loopback; {rounds} round(s) of c downloads each",
        Command::new("nginx")
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default()
    );
    println!(
        "{:>8} {:>3} {:>12} {:>12} {:>7}",
        "size", "c", "nginx MB/s", "pool MB/s", "ratio"
    );
    let pid = coord.pid();
    for (name, size) in SIZES {
        let file = format!("{name}-1.0-1-x86_64.pkg.tar.zst");
        for c in [1usize, 10] {
            let total = rounds * c;
            let (ng, pr) = rt.block_on(async {
                let ng = throughput(&format!("{nginx_base}/{file}"), None, c, total, size).await;
                let pr = throughput(
                    &format!("{base}/pools/{pool_id}/repo/1/{file}"),
                    Some(&token),
                    c,
                    total,
                    size,
                )
                .await;
                (ng, pr)
            });
            println!(
                "{:>6}MB {c:>3} {ng:>12.0} {pr:>12.0} {:>6.2}x",
                size >> 20,
                pr / ng
            );
        }
    }
    println!(
        "coordinator RSS: {} KiB now, {} KiB peak (VmHWM)",
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:")
    );
}
