//! TLS end to end: a CA and a server certificate for 127.0.0.1 and localhost generated at
//! test time (rcgen), the real `pacpool-coordinator` binary serving https/wss with them, the
//! real `pacpool admin` CLI and a real pacpoold (sandbox pacman root) as clients.
//!
//! - `pacpool admin` over https with `--ca-file` (and `PACPOOL_CA_FILE`) creates and lists
//!   pools; without the CA it is refused with a certificate message that names the fix.
//! - pacpoold registers over https, connects its WebSocket over wss, reports its state and
//!   sets it as the pool target; the coordinator shows it in sync. A pacpoold without the CA
//!   never registers and logs why. SIGTERM stops the coordinator cleanly, and the connected
//!   daemon receives the close frame over TLS.
//! - A missing certificate, a key file without a key, a key of another certificate, or a
//!   certificate without a key: the coordinator does not start and says which file and why.
//! - The coordinator on a real PostgreSQL serving TLS with that CA's certificate: over TCP it
//!   requires TLS, refuses to start without the CA (`database_ca_file`), and with it connects
//!   over TLS only (checked in `pg_stat_ssl`).

mod support;

#[path = "support/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::daemon::{Daemon, write_config};
use support::{PkgSpec, Sandbox, host_arch};

const ADMIN: &str = "tls-test-admin-token-0123456789abcdef";

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, and decoys.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pacpool test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "pacpool test coordinator");
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        let other_key = KeyPair::generate().unwrap();

        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca_cert.pem());
        write("server.pem", &server_cert.pem());
        write("server.key", &server_key.serialize_pem());
        write("other.key", &other_key.serialize_pem());
        write("admin-token", ADMIN);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running `pacpool-coordinator serve`, its log (stdout) collected by a thread.
struct Server {
    child: Option<Child>,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Removes terminal colour sequences from a log line.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes a coordinator configuration in `pki`'s directory: `tls` is (cert, key) or none.
fn coordinator_config(pki: &Pki, db: &str, tls: Option<(&Path, &Path)>) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\ndatabase = \"{}\"\nadmin_token_file = \"{}\"\n",
        pki.path(db).display(),
        pki.path("admin-token").display()
    );
    if let Some((cert, key)) = tls {
        text.push_str(&format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    let path = pki.path(&format!("{db}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn coordinator_command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("PACPOOL_COORDINATOR_LISTEN")
        .env_remove("PACPOOL_COORDINATOR_DATABASE")
        .env_remove("PACPOOL_COORDINATOR_TLS_CERT")
        .env_remove("PACPOOL_COORDINATOR_TLS_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Server {
    /// Starts the coordinator and waits for its "listening" line (the log goes to stdout).
    fn start(config: &Path) -> Self {
        let mut child = coordinator_command(config, &[])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pacpool-coordinator");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "pacpool-coordinator exited before listening:\n{}",
                    seen.join("\n")
                );
            };
            let line = plain(&line);
            let addr = line
                .contains("coordinator listening")
                .then(|| line.split_once("addr=").map(|(_, rest)| rest.to_owned()))
                .flatten()
                .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned());
            seen.push(line);
            if let Some(addr) = addr {
                break addr;
            }
        };
        assert!(
            seen.last().unwrap().contains("https"),
            "the coordinator should say it serves https: {seen:?}"
        );
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(plain(&line));
            }
        });
        let port = addr.rsplit(':').next().unwrap().to_owned();
        Self {
            child: Some(child),
            url: format!("https://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits; returns the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("coordinator running");
        let status = Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `pacpool admin --url URL ARGS` with the admin token file and a clean environment plus
/// `env`.
fn admin(url: &str, args: &[&str], env: &[(&str, &str)], token_file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pacpool"));
    cmd.arg("admin")
        .arg("--url")
        .arg(url)
        .arg("--token-file")
        .arg(token_file)
        .args(args);
    for var in [
        "PACPOOL_ADMIN_URL",
        "PACPOOL_ADMIN_TOKEN",
        "PACPOOL_CA_FILE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null())
        .output()
        .expect("run pacpool admin")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Polls `check` (every 50 ms, at most 20 s) until it returns `Ok`; panics with `what` and
/// the last `Err` otherwise. A bound for a condition, not a timing assertion.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..400 {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("never happened: {what}\n{last}");
}

fn when(cond: bool, context: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(context()) }
}

/// A pacpoold config for `sb` that talks to `url`, trusting `ca` when given.
fn daemon_config(sb: &Sandbox, name: &str, url: &str, join: &str, ca: Option<&Path>) -> PathBuf {
    let path = write_config(sb, name, Some((url, join)));
    if let Some(ca) = ca {
        // Top-level keys must come before the first [table].
        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!("coordinator_ca_file = \"{}\"\n{text}", ca.display());
        std::fs::write(&path, text).unwrap();
    }
    path
}

#[test]
fn https_and_wss_with_a_private_ca() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let token = pki.path("admin-token");
    let config = coordinator_config(
        &pki,
        "coordinator.db",
        Some((&pki.path("server.pem"), &pki.path("server.key"))),
    );
    let mut server = Server::start(&config);
    let url = server.url.clone();
    let ca_arg = ca.to_str().unwrap();

    // (a) The admin CLI over https, trusting the CA by flag, then by environment and with
    // the certificate's DNS name.
    ok(
        &admin(
            &url,
            &["--ca-file", ca_arg, "pools", "create", "lab"],
            &[],
            &token,
        ),
        "pools create over https",
    );
    let localhost = url.replace("127.0.0.1", "localhost");
    let list = ok(
        &admin(
            &localhost,
            &["pools", "list"],
            &[("PACPOOL_CA_FILE", ca_arg)],
            &token,
        ),
        "pools list over https (localhost, PACPOOL_CA_FILE)",
    );
    assert!(list.contains("lab"), "{list}");

    // (c) Without the CA: refused, with a certificate message that says what to do.
    let refused = admin(&url, &["pools", "list"], &[], &token);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not signed by a CA this machine trusts") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());
    // An unreadable CA file is named.
    let missing = admin(
        &url,
        &["--ca-file", "/nonexistent/ca.pem", "pools", "list"],
        &[],
        &token,
    );
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
    // Plain HTTP to the TLS port gets no answer a client could mistake for the API.
    let plain_http = admin(
        &url.replace("https://", "http://"),
        &["pools", "list"],
        &[],
        &token,
    );
    assert_ne!(plain_http.status.code(), Some(0));

    // (b) A real pacpoold: registers over https, WebSocket over wss, reports, sets latest.
    let sb = Sandbox::new();
    let pkg = sb.build_package(&PkgSpec::new("tlsdemo", "1.0-1").arch(&host_arch()));
    sb.publish(std::slice::from_ref(&pkg));
    sb.pacman_ok(&["-Sy", "tlsdemo"]);
    let join = ok(
        &admin(
            &url,
            &["--ca-file", ca_arg, "join-token", "create", "lab"],
            &[],
            &token,
        ),
        "join-token create",
    );
    let join = join.trim();
    let d = Daemon::start(&daemon_config(&sb, "secure", &url, join, Some(&ca)));
    d.wait_status("connected over wss", |s| s["link"] == "connected");
    d.cli_code(&["set-latest", "--yes"], 0);
    let local = sb.pacman_paths().read().unwrap().snapshot.hash().to_hex();
    let endpoints: Value = eventually(
        "the coordinator shows the endpoint in sync at its reported state",
        || {
            let out = admin(
                &url,
                &["--ca-file", ca_arg, "--json", "endpoints", "list", "lab"],
                &[],
                &token,
            );
            let e: Value = serde_json::from_str(&ok(&out, "endpoints list")).unwrap();
            let done = e[0]["state"] == "in-sync"
                && e[0]["current"] == local.as_str()
                && e[0]["target_revision"] == 1;
            when(done, || {
                format!("endpoints: {e}\n--- daemon log\n{}", d.log())
            })?;
            Ok(e)
        },
    );
    assert_eq!(endpoints[0]["name"], "secure");

    // (c) A pacpoold without the CA never registers, and its log says why and what to do.
    let sb2 = Sandbox::new();
    sb2.publish(&[pkg]);
    sb2.pacman_ok(&["-Sy", "tlsdemo"]);
    let untrusting = Daemon::start(&daemon_config(&sb2, "untrusting", &url, join, None));
    eventually("the daemon without the CA logs a certificate error", || {
        let log = untrusting.log();
        when(
            log.contains("not signed by a CA this machine trusts"),
            || log,
        )
    });
    assert!(untrusting.log().contains("coordinator_ca_file"));
    assert_eq!(untrusting.status()["link"], "unregistered");
    drop(untrusting);

    // Graceful shutdown over TLS: the coordinator exits cleanly, and the daemon's WebSocket
    // receives the close frame (not a broken connection).
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());
    d.wait_status("offline after the coordinator stopped", |s| {
        s["link"] == "offline"
    });
    eventually("the daemon saw the coordinator close the WebSocket", || {
        let log = d.log();
        when(
            log.contains("the coordinator closed the connection"),
            || log,
        )
    });
}

#[test]
fn bad_certificate_or_key_stops_the_start_with_the_file_named() {
    let pki = Pki::new();
    let cert = pki.path("server.pem");
    let run = |config: &Path, args: &[&str]| -> (Option<i32>, String) {
        let out = coordinator_command(config, args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        // The error goes to stderr, the log (which must not say "listening") to stdout.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code(), plain(&text))
    };
    let cases: [(&str, PathBuf, PathBuf, &[&str]); 4] = [
        (
            "missing certificate",
            pki.path("missing.pem"),
            pki.path("server.key"),
            &["TLS certificate file", "missing.pem", "cannot read"],
        ),
        (
            "a key file holding a certificate",
            cert.clone(),
            cert.clone(),
            &["TLS private key file", "server.pem", "no private key"],
        ),
        (
            "the key of another certificate",
            cert.clone(),
            pki.path("other.key"),
            &["server.pem", "other.key", "cannot be used together"],
        ),
        (
            "a private key in the certificate's place",
            pki.path("server.key"),
            pki.path("server.key"),
            &["TLS certificate file", "server.key", "no certificate"],
        ),
    ];
    for (i, (what, c, k, expect)) in cases.iter().enumerate() {
        let config = coordinator_config(&pki, &format!("bad{i}.db"), Some((c, k)));
        let (code, stderr) = run(&config, &[]);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        for e in *expect {
            assert!(stderr.contains(e), "{what}: expected {e:?} in:\n{stderr}");
        }
        assert!(stderr.contains("to fix"), "{what}: {stderr}");
        assert!(
            !stderr.contains("coordinator listening"),
            "{what}: {stderr}"
        );
    }
    // A certificate without a key (flags over a file without [tls]).
    let config = coordinator_config(&pki, "nokey.db", None);
    let (code, stderr) = run(&config, &["--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("without its key"), "{stderr}");
}

#[test]
fn postgresql_over_tls_with_the_same_trust_rules() {
    let mut cluster = match pg::PgCluster::start() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    cluster.database("pacpool");
    let pki = Pki::new();
    let port = cluster.serve_tls(
        &std::fs::read(pki.path("server.pem")).unwrap(),
        &std::fs::read(pki.path("server.key")).unwrap(),
    );
    let config = |name: &str, ca: Option<&Path>| -> PathBuf {
        // No sslmode in the URL: over TCP the coordinator requires TLS by itself.
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"postgres://postgres@localhost:{port}/pacpool\"\n\
             admin_token_file = \"{}\"\n",
            pki.path("admin-token").display()
        );
        if let Some(ca) = ca {
            text.push_str(&format!("database_ca_file = \"{}\"\n", ca.display()));
        }
        text.push_str(&format!(
            "\n[repo]\ndir = \"{}\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.path("packages").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ));
        let path = pki.path(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // Without the CA the database's certificate is not trusted: no start, and why.
    let out = coordinator_command(&config("pg-no-ca.toml", None), &[])
        .output()
        .unwrap();
    let text = plain(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    ));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the database's TLS certificate is not signed by a CA")
            && text.contains("database_ca_file"),
        "{text}"
    );
    assert!(!text.contains("coordinator listening"), "{text}");
    // With it: the coordinator starts, and every connection it holds is TLS.
    let server = Server::start(&config("pg-ca.toml", Some(&pki.path("ca.pem"))));
    let sessions = cluster.psql(
        "postgres",
        "SELECT count(*) || '/' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'pacpool-coordinator %'",
    );
    let (all, tls) = sessions.split_once('/').unwrap();
    assert!(
        all != "0" && all == tls,
        "coordinator sessions / over TLS: {sessions}\n{}",
        server.log()
    );
}
