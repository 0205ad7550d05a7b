//! A real coordinator, in process, on 127.0.0.1: bound before it is returned (no waiting
//! for readiness), on its own runtime thread, stopped on drop or by `stop()`.

use std::net::SocketAddr;
use std::path::Path;

use pacpool::coordinator::{Secret, Settings, launch};

/// The admin token every test coordinator accepts.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

pub struct Coordinator {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Coordinator {
    /// Starts a coordinator on `db`, at `addr` (to restart on the same address) or on a
    /// free port.
    pub fn start(db: &Path, addr: Option<SocketAddr>) -> Self {
        Self::start_with(db, addr, |_| {})
    }

    /// Like [`Coordinator::start`], with `tune` changing the settings first.
    pub fn start_with(
        db: &Path,
        addr: Option<SocketAddr>,
        tune: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings {
            database: db.to_owned(),
            admin_token: Some(Secret(ADMIN.into())),
            ..Settings::default()
        };
        tune(&mut settings);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(
                addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
            ))
            .expect("bind the coordinator");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                launch(settings, listener, async {
                    let _ = rx.await;
                })
                .await
                .expect("coordinator runs");
            });
        });
        Self {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the coordinator down and waits for it.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// An admin request under /api/v1 (`GET`, or `POST` with `body` or `{}`); panics unless
    /// it succeeds; returns the JSON answer.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, v) = self.try_admin(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// An admin request that may fail: the HTTP status and the JSON answer (`null` if none).
    pub fn try_admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let url = format!("{}/api/v1{path}", self.url());
            let req = match method {
                "POST" => client
                    .post(url)
                    .json(&body.unwrap_or(serde_json::json!({}))),
                _ => client.get(url),
            };
            let resp = req.bearer_auth(ADMIN).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(serde_json::Value::Null))
        })
    }
}

/// An admin request from async code (any method, JSON body or none): the HTTP status and the
/// JSON answer (`null` if none).
pub async fn admin_async(
    base: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client
        .request(method, format!("{base}/api/v1{path}"))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}
