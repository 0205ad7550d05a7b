//! Legitimate request latency while hostile connections are held (loopback only, bounded in
//! count and time): the measurement behind the slowloris and TLS-handshake rows of
//! RELIABILITY.md.
//!
//! ```sh
//! cargo build --bin pacpool-coordinator --example slowloris
//! target/debug/examples/slowloris [--coordinator PATH] [--hostile 2000] [--sources 1]
//!     [--seconds 10] [--tls]
//! ```
//!
//! Starts `PATH` (default `target/debug/pacpool-coordinator`; give an earlier build for the
//! "before" figure) on 127.0.0.1 with a fresh database and the soft open-file limit a
//! systemd service gets by default (1,024), then:
//! 1. probes `GET /api/v1/pools` (admin token) from 127.0.0.1 one request after another, each
//!    on a new connection (a new TLS handshake with `--tls`), for `--seconds`, each bounded
//!    by 5 s: the baseline;
//! 2. opens `--hostile` connections (at most 5,000) from 127.0.0.2 … (spread over `--sources`
//!    addresses), each sending a partial request head (or, with `--tls`, nothing at all) and
//!    one more header byte every 2 s, and probes again while they are held;
//! 3. prints p50 / p99 / max latency and the probes that failed or took 5 s, and how many
//!    hostile connections the coordinator had closed by the end.
//!
//! With `--rate R` the hostile connections are opened at R per second *while* probing (a
//! flood of new silent connections, as in the TLS-handshake finding) instead of before it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

const ADMIN: &str = "slowloris-admin-token-0123456789abcdef";
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Writes a CA and a certificate for 127.0.0.1 into `dir`: (cert, key, ca).
fn certificates(dir: &std::path::Path) -> (String, String, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (c, k, a) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&a, ca_cert.pem()).unwrap();
    (c.display().to_string(), k.display().to_string(), a)
}

struct Probe {
    latencies: Vec<Duration>,
    failed: usize,
}

impl Probe {
    fn line(&mut self) -> String {
        self.latencies.sort();
        let p = |q: f64| {
            self.latencies
                .get(((self.latencies.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        format!(
            "{} probes ok, {} failed or over 5 s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latencies.len(),
            self.failed,
            p(0.5),
            p(0.99),
            p(1.0)
        )
    }
}

async fn probe(client: &reqwest::Client, url: &str, seconds: f64) -> Probe {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut out = Probe {
        latencies: Vec::new(),
        failed: 0,
    };
    while Instant::now() < end {
        let t = Instant::now();
        let r =
            tokio::time::timeout(PROBE_TIMEOUT, client.get(url).bearer_auth(ADMIN).send()).await;
        match r {
            Ok(Ok(resp)) if resp.status().is_success() => out.latencies.push(t.elapsed()),
            _ => out.failed += 1,
        }
    }
    out
}

async fn hostile(to: SocketAddr, from: String, tls: bool) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(format!("{from}:0").parse().ok()?).ok()?;
    let mut c = tokio::time::timeout(PROBE_TIMEOUT, sock.connect(to))
        .await
        .ok()?
        .ok()?;
    if !tls {
        let _ = c
            .write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\nX-a: ")
            .await;
    }
    Some(c)
}

/// `--rate`: hostile connections opened at `rate` per second while probing.
#[allow(clippy::too_many_arguments)]
async fn flood(
    client: &reqwest::Client,
    url: &str,
    to: SocketAddr,
    n: usize,
    sources: usize,
    rate: f64,
    seconds: f64,
    tls: bool,
) {
    let opener = tokio::spawn(async move {
        let start = Instant::now();
        let mut held = Vec::new();
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            if start.elapsed() > Duration::from_secs(60) {
                break;
            }
            let from = format!("127.0.0.{}", 2 + i % sources);
            if let Some(c) = hostile(to, from, tls).await {
                held.push(c);
            }
        }
        (held, start.elapsed())
    });
    let mut during = probe(client, url, seconds).await;
    let (held, took) = opener.await.unwrap();
    let mut buf = [0u8; 64];
    let closed = held
        .iter()
        .filter(|c| !matches!(c.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count();
    println!(
        "  during a flood:  {} ({} hostile connections opened at up to {rate}/s in {:.1} s; at the end {closed} closed by the coordinator, {} still open)",
        during.line(),
        held.len(),
        took.as_secs_f64(),
        held.len() - closed
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin: String = arg(
        &args,
        "--coordinator",
        "target/debug/pacpool-coordinator".to_owned(),
    );
    let n: usize = arg(&args, "--hostile", 2000usize).min(5000);
    let sources: usize = arg(&args, "--sources", 1usize).clamp(1, 200);
    let seconds: f64 = arg(&args, "--seconds", 10.0f64).clamp(1.0, 60.0);
    let tls = args.iter().any(|a| a == "--tls");
    let rate: f64 = arg(&args, "--rate", 0.0f64).clamp(0.0, 5000.0);
    let nofile = raise_nofile();

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = format!(
        // Probes are many: no rate limit (a key every version knows).
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\nadmin_token_file = \"{}\"\nrate_limit_per_minute = 0\n",
        dir.path().join("c.db").display(),
        token_file.display()
    );
    // A new connection per probe: what a hostile crowd blocks is accepting new ones.
    let mut client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0);
    if tls {
        let (cert, key, ca) = certificates(dir.path());
        config.push_str(&format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"));
        let cfg = pacpool::tls::client_config(Some(&ca)).unwrap();
        client = client.tls_backend_preconfigured(rustls::ClientConfig::clone(&cfg));
    }
    let client = client.build().unwrap();
    let config_path = dir.path().join("c.toml");
    std::fs::write(&config_path, config).unwrap();
    // The soft open-file limit of a systemd service without LimitNOFILE.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 1024; exec \"$0\" serve --config \"$1\"")
        .arg(&bin)
        .arg(&config_path)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the coordinator");
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/api/v1/pools");
    let ready = Instant::now();
    while client.get(&url).bearer_auth(ADMIN).send().await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "coordinator did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "coordinator {bin} ({scheme}), client open-file limit {nofile}; {n} hostile connections from {sources} address(es), {}",
        if tls {
            "silent (no TLS handshake)"
        } else {
            "partial request heads, one more byte every 2 s"
        }
    );
    let mut base = probe(&client, &url, seconds).await;
    println!("  baseline:        {}", base.line());

    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    if rate > 0.0 {
        flood(&client, &url, to, n, sources, rate, seconds, tls).await;
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut held = Vec::new();
    let opened = Instant::now();
    for i in 0..n {
        // Bounded in time too: a coordinator that stopped accepting leaves connects waiting.
        if opened.elapsed() > Duration::from_secs(30) {
            break;
        }
        let from = format!("127.0.0.{}", 2 + i % sources);
        if let Some(c) = hostile(to, from, tls).await {
            held.push(c);
        }
    }
    let opened_in = opened.elapsed();
    // Keep them alive like a slowloris client: one more header byte every 2 s.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let trickle = tokio::spawn(async move {
        let mut closed = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut conns: Vec<Option<tokio::net::TcpStream>> = held.into_iter().map(Some).collect();
        while !*stop_rx.borrow() {
            tick.tick().await;
            for slot in conns.iter_mut() {
                let Some(c) = slot else { continue };
                let mut buf = [0u8; 256];
                let gone = match c.try_read(&mut buf) {
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        !tls && c.write_all(b"a").await.is_err()
                    }
                    Err(_) => true,
                };
                if gone {
                    *slot = None;
                    closed += 1;
                }
            }
        }
        let open = conns.iter().filter(|c| c.is_some()).count();
        drop(conns);
        (closed, open)
    });
    let mut during = probe(&client, &url, seconds).await;
    let _ = stop_tx.send(true);
    let (closed, open) = trickle.await.unwrap();
    println!(
        "  while held:      {} ({} hostile connections opened in {:.1} s; at the end {closed} closed by the coordinator, {open} still open)",
        during.line(),
        closed + open,
        opened_in.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}
