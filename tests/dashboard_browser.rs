//! The web dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, fantoccini), against a real coordinator with two real pacpoold endpoints
//! on sandbox pacman roots, real pacman transactions underneath.
//!
//! One browser session walks the whole scenario: log in; the pools page counts right; A sets
//! latest and B turns "behind" on the open pool page without a reload; a sync of every
//! behind endpoint is requested from the page (its confirmation names one machine) and
//! completes; a new revision shows on the open pools page (counts and revision, without a
//! reload); the target is reverted from the targets page (the confirmation names the
//! pool's machines) and a sync of one endpoint, requested from its page, is seen in progress
//! (the test holds pacman's lock, as another pacman would, until the page shows it) and then
//! completed; an endpoint named with markup is shown as text; the package view answers who
//! runs a version; the audit log filters; a join token is shown once; the pool page fits a
//! phone's width. Screenshots of each page go to `target/dashboard-shots/`.
//!
//! The refusals (dashboard off by default, a wrong token, a form without or with a foreign
//! CSRF token, no session) are plain HTTP, in their own test, and so are the `Secure`
//! cookie under TLS, the pool table's pages, filters and sorting (120 endpoints) and the audit
//! log's pages and filters, and what an
//! endpoint sends (progress, result message, failures) shown as text.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use support::coordinator::{ADMIN, Coordinator};
use support::daemon::{Daemon, write_config};
use support::{PkgSpec, Sandbox, host_arch};

/// How long the browser waits for something the scenario expects (a status change, a sync
/// of a few real pacman transactions). Not a timing assertion: the page is polled until it
/// shows the outcome, and only a stuck scenario reaches this.
const PATIENCE: Duration = Duration::from_secs(60);

const MARKUP_NAME: &str = "<img src=x onerror=alert(1)><b>evil</b>";

fn dashboard_on(db: &Path) -> Coordinator {
    Coordinator::start_with(db, None, |s| s.dashboard.enabled = true)
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP: what must be refused.

/// `k=v&...` with everything but unreserved characters percent-encoded.
fn urlencoded(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();

    // Off unless enabled.
    let off = blocking({
        let db = dir.path().join("off.db");
        move || Coordinator::start(&db, None)
    })
    .await;
    let r = http
        .get(format!("{}/dashboard/", off.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the dashboard is off by default");
    drop(off);

    let db = dir.path().join("on.db");
    let coord = std::sync::Arc::new(blocking(move || dashboard_on(&db)).await);
    let base = coord.url();
    let pool = blocking({
        let c = coord.clone();
        move || c.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})))
    })
    .await;
    let pool_id = pool["id"].as_i64().unwrap();

    // No session: pages redirect to the login form, forms are refused.
    let r = http.get(format!("{base}/dashboard/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/dashboard/login?next=")
    );
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let r = http
        .post(format!("{base}/dashboard/pools/{pool_id}/sync-behind"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("csrf", "x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A wrong token.
    let r = http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[
            ("token", "not-the-admin-token"),
            ("next", "/dashboard/"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("Wrong token"));

    // The right token gives a session cookie (HttpOnly, SameSite=Strict; not Secure over
    // plain HTTP) and no open redirect.
    let r = http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("token", ADMIN), ("next", "//evil.example/")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();

    // A logged-in page has a CSRF token in its forms.
    let page = http
        .get(format!("{base}/dashboard/pools/{pool_id}/tokens"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF field")
        .to_owned();

    // Missing and foreign CSRF tokens are refused and change nothing.
    for form in [
        vec![("days", "7")],
        vec![("csrf", "0".repeat(64).leak() as &str), ("days", "7")],
    ] {
        let r = http
            .post(format!("{base}/dashboard/pools/{pool_id}/tokens"))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(&form))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{form:?}");
    }
    let tokens = blocking({
        let c = coord.clone();
        move || c.admin("GET", &format!("/pools/{pool_id}/join-tokens"), None)
    })
    .await;
    assert_eq!(tokens.as_array().unwrap().len(), 0, "{tokens}");

    // With it, the same form works (through the same service as the API).
    let r = http
        .post(format!("{base}/dashboard/pools/{pool_id}/tokens"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("csrf", csrf.as_str()), ("days", "7")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("ppj_"));

    // An open event stream ends when the coordinator shuts down (it would hold graceful
    // shutdown up otherwise): checked at the end.
    let events = http
        .get(format!("{base}/dashboard/pools/{pool_id}/events"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let metrics = http
        .get(format!("{base}/api/v1/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\npacpool_dashboard_streams 1\n"),
        "{metrics}"
    );

    // Logged out: the session is gone.
    let r = http
        .post(format!("{base}/dashboard/logout"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{base}/dashboard/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the old cookie no longer works");
    blocking(move || drop(coord)).await;
    let rest = events.bytes().await;
    assert!(rest.is_ok(), "the stream ended cleanly: {rest:?}");
}

/// What an endpoint sends (progress text, a result message, per-package failures) is shown
/// on its page as text, with each failed package and its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_strings_are_text() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let coord = std::sync::Arc::new(blocking(move || dashboard_on(&db)).await);
    let base = coord.url();
    let api = format!("{base}/api/v1");
    let http = client();
    let admin = |path: &str, body: serde_json::Value| {
        let c = coord.clone();
        let path = path.to_owned();
        blocking(move || c.admin("POST", &path, Some(body)))
    };
    let pool = admin("/pools", serde_json::json!({"name": "lab"})).await;
    let pool_id = pool["id"].as_i64().unwrap();
    let join = admin(
        &format!("/pools/{pool_id}/join-tokens"),
        serde_json::json!({}),
    )
    .await;
    let reg: serde_json::Value = http
        .post(format!("{api}/register"))
        .json(&serde_json::json!({"join_token": join["token"], "name": "host1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, token) = (
        reg["endpoint_id"].as_i64().unwrap(),
        reg["endpoint_token"].as_str().unwrap().to_owned(),
    );
    let op = admin(
        &format!("/endpoints/{id}/operations"),
        serde_json::json!({"kind": "revert"}),
    )
    .await;
    let op_id = op["id"].as_i64().unwrap();
    let hostile = "<script>alert(1)</script>";
    let r = http
        .post(format!("{api}/endpoint/operations/{op_id}/progress"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"stage": "installing", "percent": 40, "current": hostile}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let r = http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("token", ADMIN)]))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = |path: String| {
        let (http, cookie) = (http.clone(), cookie.clone());
        async move {
            let r = http
                .get(path)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    // In progress, on the pool page and the endpoint page.
    for html in [
        page(format!("{base}/dashboard/pools/{pool_id}")).await,
        page(format!("{base}/dashboard/endpoints/{id}")).await,
    ] {
        assert!(html.contains("installing"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains(hostile), "{html}");
    }

    let r = http
        .post(format!("{api}/endpoint/operations/{op_id}/result"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "state": "failed",
            "message": format!("sync failed: {hostile}"),
            "failures": [
                {"name": "editor", "reason": "version-unavailable: no repository has 1.1-1"},
                {"name": "shell", "reason": format!("pacman said {hostile}")},
            ],
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let html = page(format!("{base}/dashboard/endpoints/{id}")).await;
    assert!(!html.contains(hostile), "{html}");
    assert!(html.contains("sync failed: &lt;script&gt;"), "{html}");
    assert!(
        html.contains("<strong>editor</strong>: version-unavailable: no repository has 1.1-1"),
        "{html}"
    );
    assert!(
        html.contains("<strong>shell</strong>: pacman said &lt;script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("data-state=\"error\""),
        "the endpoint is in error: {html}"
    );
    blocking(move || drop(coord)).await;
}

/// The pool page's table: 100 rows a page, filtered by name and status, sorted both ways;
/// links keep the other settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_table_pages_filters_and_sorts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let coord = std::sync::Arc::new(blocking(move || dashboard_on(&db)).await);
    let base = coord.url();
    let http = client();
    let (pool_id, join) = blocking({
        let c = coord.clone();
        move || {
            let pool = c.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
            let id = pool["id"].as_i64().unwrap();
            let join = c.admin("POST", &format!("/pools/{id}/join-tokens"), None);
            (id, join["token"].as_str().unwrap().to_owned())
        }
    })
    .await;
    for i in 0..120 {
        let r = http
            .post(format!("{base}/api/v1/register"))
            .json(&serde_json::json!({"join_token": join, "name": format!("host-{i:03}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("token", ADMIN)]))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The endpoint names of a page, in order.
    let rows = |query: &str| {
        let (http, cookie) = (http.clone(), cookie.clone());
        let url = format!("{base}/dashboard/pools/{pool_id}{query}");
        async move {
            let html = http
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let names: Vec<String> = html
                .split("<tr id=\"endpoint-")
                .skip(1)
                .map(|r| {
                    let a = r.split("\">host-").nth(1).unwrap();
                    format!("host-{}", &a[..3])
                })
                .collect();
            (names, html)
        }
    };
    let (page1, html) = rows("").await;
    assert_eq!(page1.len(), 100);
    assert_eq!(
        (page1[0].as_str(), page1[99].as_str()),
        ("host-000", "host-099")
    );
    assert!(html.contains("120 endpoints match. Page 1 of 2."), "{html}");
    assert!(
        html.contains("href=\"/dashboard/pools/1?page=2\""),
        "{html}"
    );
    let (page2, _) = rows("?page=2").await;
    assert_eq!(page2.len(), 20);
    assert_eq!(page2[0], "host-100");
    let (desc, html) = rows("?sort=name&desc=1").await;
    assert_eq!(desc[0], "host-119");
    assert!(
        html.contains("href=\"/dashboard/pools/1?sort=name&amp;desc=1&amp;page=2\""),
        "the next page keeps the order: {html}"
    );
    let (some, html) = rows("?q=HOST-01").await;
    assert_eq!(some.len(), 10, "name filter, case-insensitive");
    assert!(html.contains("10 endpoints match. Page 1 of 1."));
    let (unknown, _) = rows("?state=unknown&q=host-11").await;
    assert_eq!(unknown.len(), 10, "all unknown (no target yet)");
    let (none, html) = rows("?state=behind").await;
    assert!(none.is_empty() && html.contains("No endpoint matches."));

    // The audit log pages by id: 122 entries (pool, join token, 120 registrations).
    let audit = |query: String| {
        let (http, cookie) = (http.clone(), cookie.clone());
        let url = format!("{base}/dashboard/audit{query}");
        async move {
            let html = http
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let entries = html.matches("<td>endpoint.register</td>").count()
                + html.matches("<td>pool.create</td>").count()
                + html.matches("<td>join_token.create</td>").count();
            let older = html
                .split("rel=\"next\" href=\"")
                .nth(1)
                .map(|h| h.split('"').next().unwrap().replace("&amp;", "&"));
            (entries, older)
        }
    };
    let (first, older) = audit(String::new()).await;
    assert_eq!(first, 100);
    let older = older.expect("a link to older entries");
    let (rest, none) = audit(older.trim_start_matches("/dashboard/audit").to_owned()).await;
    assert_eq!((rest, none), (22, None));
    let (registrations, _) = audit("?actor=registration&action=endpoint.register".into()).await;
    assert_eq!(registrations, 100, "filtered, first page");
    let (pool_rows, _) = audit(format!("?pool={pool_id}")).await;
    assert_eq!(
        pool_rows, 2,
        "the pool's own entries: pool.create and join_token.create"
    );
    blocking(move || drop(coord)).await;
}

/// Under TLS the session cookie is also `Secure`, and the dashboard is served on the same
/// listener as the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_cookie_under_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
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
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let coord = blocking({
        let d = dir.path().to_owned();
        move || {
            Coordinator::start_with(&d.join("c.db"), None, |s| {
                s.dashboard.enabled = true;
                s.tls = Some(pacpool::coordinator::TlsSettings {
                    cert: d.join("cert.pem"),
                    key: d.join("key.pem"),
                });
            })
        }
    })
    .await;
    let tls = pacpool::tls::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", coord.addr.port());
    let r = http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(urlencoded(&[("token", ADMIN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let page = http
        .get(format!("{base}/dashboard/"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<h1>Pools</h1>"));
    blocking(move || drop(coord)).await;
}

// ---------------------------------------------------------------------------------------------
// The browser scenario.

/// chromedriver on a free port, started and awaited (it prints a line when it listens).
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("started successfully") => break,
                Some(_) => {}
                None => panic!("chromedriver exited before it listened"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> Option<PathBuf> {
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(PATIENCE)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let src = c.source().await.unwrap_or_default();
            panic!("waiting for {css}: {e}\n--- page\n{src}");
        }
    }
}

/// The rendered text of the first element matching `css`, read in one step (live parts are
/// replaced while the page is open, so a found element may be gone a moment later).
async fn text(c: &Client, css: &str) -> String {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .to_owned()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

fn publish_everywhere(boxes: &[&Sandbox], specs: &[(&str, &str)]) {
    let built: Vec<PathBuf> = specs
        .iter()
        .map(|(n, v)| boxes[0].build_package(&PkgSpec::new(n, v).arch(&host_arch())))
        .collect();
    for sb in boxes {
        sb.publish(&built);
    }
}

/// Runs a blocking step (a CLI call, a daemon wait) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let root = rustix::process::geteuid().is_root();
    let (Some(chromium), true, true) = (
        chromium_binary(),
        support::find_in_path("chromedriver").is_some(),
        root,
    ) else {
        println!(
            "SKIPPED dashboard_in_a_real_browser: needs root (pacman transactions) and Debian's \
             chromium and chromium-driver (`bash tests/run.sh` installs them)"
        );
        return;
    };
    support::require_tools();

    // Two machines: A has editor and shell, B only shell.
    let (a, b) = (Sandbox::new(), Sandbox::new());
    publish_everywhere(
        &[&a, &b],
        &[("editor", "1.0-1"), ("shell", "2.0-1"), ("tool", "1.0-1")],
    );
    a.pacman_ok(&["-Sy", "editor", "shell"]);
    b.pacman_ok(&["-Sy", "shell"]);

    let dbdir = tempfile::tempdir().unwrap();
    let db = dbdir.path().join("coordinator.db");
    let coord = std::sync::Arc::new(
        blocking({
            let db = db.clone();
            move || dashboard_on(&db)
        })
        .await,
    );
    let base = coord.url();
    let (pool_id, join) = blocking({
        let c = coord.clone();
        move || {
            let pool = c.admin("POST", "/pools", Some(serde_json::json!({"name": "lab"})));
            let id = pool["id"].as_i64().unwrap();
            let join = c.admin("POST", &format!("/pools/{id}/join-tokens"), None);
            (id, join["token"].as_str().unwrap().to_owned())
        }
    })
    .await;
    // Alice waits up to two minutes for pacman's lock (the test holds it to watch her sync
    // in progress).
    let a_config = write_config(&a, "alice", Some((&base, &join)));
    let text_a = std::fs::read_to_string(&a_config).unwrap();
    std::fs::write(
        &a_config,
        text_a.replace("lock_wait = 1\n", "lock_wait = 120\n"),
    )
    .unwrap();
    let da = Daemon::start(&a_config);
    let db_ = Daemon::start(&write_config(&b, "bob", Some((&base, &join))));
    let (da, db_) = blocking(move || {
        da.wait_status("A connected", |s| s["link"] == "connected");
        db_.wait_status("B connected", |s| s["link"] == "connected");
        (da, db_)
    })
    .await;
    let da = std::sync::Arc::new(da);
    let db_ = std::sync::Arc::new(db_);
    // An endpoint whose name is markup (the API refuses such names today; an older
    // coordinator or a hand-edited database may hold one): written straight into the
    // coordinator's SQLite file.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute(
            "INSERT INTO endpoints (pool_id, name, created_at) VALUES (?1, ?2, 0)",
            rusqlite::params![pool_id, MARKUP_NAME],
        )
        .unwrap();
    }
    let endpoints = blocking({
        let c = coord.clone();
        move || c.admin("GET", &format!("/pools/{pool_id}/endpoints"), None)
    })
    .await;
    let id_of = |name: &str| {
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (alice, bob, evil) = (id_of("alice"), id_of("bob"), id_of(MARKUP_NAME));

    let driver = Driver::start();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run"],
        }),
    );
    let c = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium");

    // Log in (the pools page redirects to the form and back).
    c.goto(&format!("{base}/dashboard/")).await.unwrap();
    wait_for(&c, "input#token").await;
    shot(&c, "login").await;
    // By keyboard: the token field has the focus; Enter submits.
    let focused = c
        .execute("return document.activeElement.id;", vec![])
        .await
        .unwrap();
    assert_eq!(focused, serde_json::json!("token"));
    c.active_element()
        .await
        .unwrap()
        .send_keys(&format!("{ADMIN}\u{E007}"))
        .await
        .unwrap();

    // Pools: three endpoints, none with a target yet, so all unknown.
    let row = format!("#pool-{pool_id}");
    wait_for(&c, &row).await;
    assert_eq!(
        text(&c, &format!("{row} td[data-state=unknown]")).await,
        "3"
    );
    assert_eq!(text(&c, &format!("{row} td[data-state=behind]")).await, "0");
    shot(&c, "pools").await;

    // The pool page, live; a marker proves later changes arrive without a reload.
    c.goto(&format!("{base}/dashboard/pools/{pool_id}"))
        .await
        .unwrap();
    wait_for(&c, "#live-status").await;
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath("//p[@id='live-status' and text()='live']"))
        .await
        .expect("the page subscribes to live updates");
    c.execute("window.__sameDocument = true;", vec![])
        .await
        .unwrap();

    // The markup name is text: no <img> in the table, the literal characters shown.
    let evil_link = text(&c, &format!("#endpoint-{evil} th a")).await;
    assert_eq!(evil_link, MARKUP_NAME);
    assert!(
        c.find_all(Locator::Css("#endpoints img, #endpoints b"))
            .await
            .unwrap()
            .is_empty()
    );

    // A sets latest: B turns behind on the open page.
    {
        let da = da.clone();
        blocking(move || da.cli_code(&["set-latest", "--yes", "--json"], 0)).await;
    }
    let since = std::time::Instant::now();
    c.wait()
        .at_most(PATIENCE)
        .every(Duration::from_millis(10))
        .for_element(Locator::Css(&format!("#endpoint-{bob}[data-state=behind]")))
        .await
        .expect("B turns behind on the open page");
    // A figure for BENCHMARKS.md, not an assertion (the coordinator has the new target
    // before the CLI returns).
    eprintln!(
        "dashboard: B shown behind {} ms after set-latest returned",
        since.elapsed().as_millis()
    );
    wait_for(&c, &format!("#endpoint-{alice}[data-state=in-sync]")).await;
    assert_eq!(text(&c, "#counts a[data-state=behind] .n").await, "1");
    assert_eq!(text(&c, "#target-revision").await, "1");
    assert!(
        text(&c, &format!("#endpoint-{bob}"))
            .await
            .contains("1 install"),
        "{}",
        text(&c, &format!("#endpoint-{bob}")).await
    );
    let same = c
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::json!(true), "updated without a reload");
    shot(&c, "pool").await;

    // Request a sync of every behind endpoint: the confirmation names one machine.
    click(
        &c,
        &format!("a[href='/dashboard/pools/{pool_id}/sync-behind']"),
    )
    .await;
    let confirm = {
        wait_for(&c, "#confirm").await;
        text(&c, "#confirm").await
    };
    assert!(confirm.contains("Ask 1 machine"), "{confirm}");
    assert!(confirm.contains("bob"), "{confirm}");
    shot(&c, "confirm-sync-behind").await;
    click(&c, "#confirm-button").await;
    wait_for(&c, "#requested").await;
    assert_eq!(text(&c, "#requested").await, "Asked 1 machine to sync.");
    // On B's page the operation shows up and completes; B is then in sync.
    c.goto(&format!("{base}/dashboard/endpoints/{bob}"))
        .await
        .unwrap();
    wait_for(&c, "#operations-table tr[data-state=completed]").await;
    wait_for(&c, "#endpoint-state[data-state=in-sync]").await;
    assert!(b.pacman_ok(&["-Q", "editor"]).contains("1.0-1"));
    wait_for(&c, "#last-change").await;
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath(
            "//dd[@id='last-change' and contains(., 'by pacpool, operation #')]",
        ))
        .await
        .expect("the last change is attributed to the operation");

    // A adds a package and sets latest again (revision 2), watched on the pools page: the
    // counts and the revision change without a reload. Then the target is reverted to
    // revision 1 from the targets page.
    c.goto(&format!("{base}/dashboard/")).await.unwrap();
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath("//p[@id='live-status' and text()='live']"))
        .await
        .expect("the pools page subscribes to live updates");
    assert_eq!(text(&c, &format!("{row} .revision")).await, "1");
    c.execute("window.__sameDocument = true;", vec![])
        .await
        .unwrap();
    a.pacman_ok(&["-S", "tool"]);
    {
        let da = da.clone();
        blocking(move || {
            da.cli_code(&["notify"], 0);
            da.cli_code(&["set-latest", "--yes", "--json"], 0)
        })
        .await;
    }
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath(&format!(
            "//tr[@id='pool-{pool_id}']//span[@class='revision' and text()='2']"
        )))
        .await
        .expect("the new revision shows on the pools page");
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath(&format!(
            "//tr[@id='pool-{pool_id}']/td[@data-state='behind' and text()='1']"
        )))
        .await
        .expect("bob counted behind on the pools page");
    let same = c
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::json!(true), "updated without a reload");
    c.goto(&format!("{base}/dashboard/pools/{pool_id}/targets"))
        .await
        .unwrap();
    wait_for(&c, "#revision-2").await;
    assert!(text(&c, "#revision-2").await.contains("1 install"));
    shot(&c, "targets").await;
    click(
        &c,
        &format!("a[href='/dashboard/pools/{pool_id}/revert?to=1']"),
    )
    .await;
    let confirm = {
        wait_for(&c, "#confirm").await;
        text(&c, "#confirm").await
    };
    assert!(
        confirm.contains("affects the pool's 3 machines"),
        "{confirm}"
    );
    assert_eq!(text(&c, "#affected").await, "3");
    shot(&c, "confirm-revert").await;
    click(&c, "#confirm-button").await;
    // Back on the pool page: revision 3 (= revision 1); alice and bob are ahead (tool).
    wait_for(&c, "#target-revision").await;
    assert_eq!(text(&c, "#target-revision").await, "3");
    wait_for(&c, &format!("#endpoint-{alice}[data-state=ahead]")).await;

    // Request a sync of alice alone from her page: it removes tool and completes, live.
    c.goto(&format!("{base}/dashboard/endpoints/{alice}"))
        .await
        .unwrap();
    // Her last change was made with pacman by hand, and her pacpoold said so (drift
    // attribution): the page shows the command line.
    wait_for(&c, "#reported-change").await;
    let said = text(&c, "#reported-change").await;
    assert!(
        said.contains("pacman: '") && said.contains("-S tool"),
        "{said}"
    );
    click(&c, &format!("a[href='/dashboard/endpoints/{alice}/sync']")).await;
    let confirm = {
        wait_for(&c, "#confirm").await;
        text(&c, "#confirm").await
    };
    assert!(
        confirm.contains("(1 machine)") && confirm.contains("1 removal"),
        "{confirm}"
    );
    // Pacman's lock is held (as another pacman would): the sync starts, waits, and the page
    // shows it in progress; then the lock goes and the page shows it completed.
    std::fs::write(a.lock_file(), "").unwrap();
    click(&c, "#confirm-button").await;
    wait_for(&c, "#operations-table tr[data-state=in_progress] progress").await;
    wait_for(&c, "#endpoint-state[data-state=syncing]").await;
    let row = text(&c, "#operations-table tr[data-state=in_progress]").await;
    assert!(row.contains("sync-to-latest"), "{row}");
    shot(&c, "endpoint-syncing").await;
    std::fs::remove_file(a.lock_file()).unwrap();
    wait_for(&c, "#operations-table tr[data-state=completed]").await;
    wait_for(&c, "#endpoint-state[data-state=in-sync]").await;
    assert!(
        !a.pacman(&["-Q", "tool"]).status.success(),
        "tool was removed"
    );
    // The state history compares the last two states.
    click(&c, "#history ~ form button[type=submit]").await;
    wait_for(&c, "#compare").await;
    let diff = text(&c, "pre.diff").await;
    assert!(
        diff.contains("remove    tool 1.0-1") || diff.contains("install   tool 1.0-1"),
        "{diff}"
    );
    // Why each state came: pacpool's operation, pacman on the machine, the first report.
    let history = text(&c, "#history ~ form table").await;
    assert!(
        history.contains("operation #")
            && history.contains("changed on the machine")
            && history.contains("first report"),
        "{history}"
    );
    shot(&c, "endpoint").await;

    // Package view: one click answers who runs a version.
    c.goto(&format!("{base}/dashboard/pools/{pool_id}/packages"))
        .await
        .unwrap();
    wait_for(&c, "#packages").await;
    shot(&c, "packages").await;
    click(
        &c,
        &format!("a[href='/dashboard/pools/{pool_id}/packages/editor?version=1.0-1']"),
    )
    .await;
    let machines = {
        wait_for(&c, "#machines").await;
        text(&c, "#machines").await
    };
    shot(&c, "package-machines").await;
    assert!(
        machines.contains("alice") && machines.contains("bob"),
        "{machines}"
    );

    // Audit log, filtered by action.
    c.goto(&format!("{base}/dashboard/audit?action=target.revert"))
        .await
        .unwrap();
    let audit = {
        wait_for(&c, "#audit").await;
        text(&c, "#audit").await
    };
    assert!(
        audit.contains("target.revert") && !audit.contains("target.set"),
        "{audit}"
    );
    shot(&c, "audit").await;

    // Join tokens: created from the page, shown once.
    c.goto(&format!("{base}/dashboard/pools/{pool_id}/tokens"))
        .await
        .unwrap();
    click(&c, "form.filters button[type=submit]").await;
    let secret = {
        wait_for(&c, "#token-secret").await;
        text(&c, "#token-secret").await
    };
    assert!(secret.starts_with("ppj_"), "{secret}");
    shot(&c, "tokens").await;
    c.refresh().await.unwrap();
    wait_for(&c, "#tokens").await;
    assert!(
        !c.source().await.unwrap().contains(&secret),
        "the secret is shown once only"
    );

    // A phone's width: the page itself does not scroll sideways (wide tables scroll inside
    // their own box).
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/dashboard/pools/{pool_id}"))
        .await
        .unwrap();
    wait_for(&c, "#endpoints").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        serde_json::json!(true),
        "no sideways scrolling at 390 px"
    );
    shot(&c, "pool-phone").await;

    // Log out.
    click(&c, "header form button[type=submit]").await;
    wait_for(&c, "input#token").await;
    c.close().await.unwrap();
    drop(driver);
    blocking(move || drop((da, db_, coord))).await;
}
