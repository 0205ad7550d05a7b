//! The pool repository: every retained target revision served as a real pacman repository at
//! `/api/v1/pools/{id}/repo/{revision}/`, so that each target stays installable after the
//! mirrors have moved on.
//!
//! - `NAME.db` (any `NAME`, as pacman asks for `Server/REPO.db`): a repository database built
//!   from the revision's manifest (`%FILENAME%`, `%NAME%`, `%VERSION%`, `%ARCH%`, `%CSIZE%`,
//!   `%SHA256SUM%`, `%PGPSIG%`), gzip-compressed tar like `repo-add` writes.
//! - `FILE`: a package file the manifest names, from the content store; fetched from the
//!   configured upstreams first when the store lacks it (pull-through).
//! - `FILE.sig`: the packager's detached signature from the manifest, so pacman checks the
//!   original packager's signature.
//! - `PUT FILE`: an endpoint of the pool uploads a file the store lacks (the one that set the
//!   target, from its cache).
//!
//! Architecture Invariant: the store is content-addressed by SHA-256, and a file enters it
//! only when its size and SHA-256 are the ones the manifest records. The coordinator never
//! decides trust: every endpoint checks every file against its own pacman keyring and
//! `SigLevel` ([`crate::trust`]) before installing it.
//!
//! Each file is fetched from upstream at most once however many endpoints ask at once (one
//! lock per digest); the store has a quota, and a file is dropped only when no retained
//! target revision's manifest refers to it ([`PackageStore::collect_garbage`]).
//!
//! Readers: endpoint tokens of the pool and the admin token, as `Authorization: Bearer` or
//! as the password of HTTP Basic (so a stock pacman can use
//! `Server = https://x:TOKEN@coordinator/api/v1/pools/1/repo/7`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as ApiPathRaw, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::blob::{BlobStore, DirBlobStore};
use super::error::ApiErr;
use super::{AppState, db};
use crate::manifest::{Manifest, ManifestEntry};

/// `[repo]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoSettings {
    /// Where package files are stored; default `packages/` beside the database.
    pub dir: Option<PathBuf>,
    /// Most bytes the store may hold; default 50 GiB.
    pub quota_bytes: u64,
    /// Mirrors to fetch missing files from, as pacman `Server` lines (`$repo` and `$arch`
    /// replaced): e.g. `https://geo.mirror.pkgbuild.com/$repo/os/$arch`.
    pub upstream: Vec<String>,
    /// An archive in the Arch Linux Archive layout, tried after the mirrors.
    pub archive_url: Option<String>,
    /// Largest file fetched or accepted, whatever size a manifest states; default 4 GiB.
    pub max_file_size: u64,
    /// Pools (by name) whose repositories anyone may read without a token (for machines
    /// that only use them as a pacman `Server`); default none. Uploads always need one.
    pub anonymous_pools: Vec<String>,
}

impl Default for RepoSettings {
    fn default() -> Self {
        Self {
            dir: None,
            quota_bytes: 50 << 30,
            upstream: Vec::new(),
            archive_url: None,
            max_file_size: crate::apply::DEFAULT_MAX_DOWNLOAD_SIZE,
            anonymous_pools: Vec::new(),
        }
    }
}

/// Counters for `/metrics` and `/stats`.
#[derive(Debug, Default)]
pub(crate) struct RepoCounters {
    pub hits: AtomicU64,
    pub upstream_fetches: AtomicU64,
    pub uploads: AtomicU64,
    pub bytes_served: AtomicU64,
}

/// The content-addressed package store.
pub(crate) struct PackageStore {
    /// Where the bytes are (see `blob`).
    blobs: Arc<dyn BlobStore>,
    quota: u64,
    max_file_size: u64,
    used: AtomicU64,
    /// The part of `used` that transfers in progress reserved.
    reserved: AtomicU64,
    upstream: Vec<String>,
    archive_url: Option<String>,
    client: reqwest::Client,
    /// Locks by name: `fetch SHA` while a file is fetched from upstream (one fetch per file),
    /// `SHA` while a complete transfer moves into place.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Decoded manifests by (pool, revision); a handful are enough.
    manifests: Mutex<HashMap<(i64, u64), Arc<Manifest>>>,
    pub counters: RepoCounters,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the package store {}: {source}; check repo.dir and its permissions", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl PackageStore {
    /// Opens (creating) the store and counts what it holds.
    pub fn open(settings: &RepoSettings, database: &Path) -> Result<Self, StoreError> {
        let dir = settings
            .dir
            .clone()
            .unwrap_or_else(|| database.parent().unwrap_or(Path::new(".")).join("packages"));
        let io = |source| StoreError::Io {
            dir: dir.clone(),
            source,
        };
        let blobs = DirBlobStore::open(&dir).map_err(io)?;
        // What the directory holds now (a part file is a transfer in progress, perhaps on
        // another replica: `clean_parts` removes only old ones, at each retention run).
        let mut used = 0;
        for e in std::fs::read_dir(blobs.dir()).map_err(io)? {
            let e = e.map_err(io)?;
            if is_digest(&e.file_name().to_string_lossy()) {
                used += e.metadata().map_err(io)?.len();
            }
        }
        let tls = crate::tls::client_config(None).map_err(|e| {
            io(std::io::Error::other(format!(
                "cannot set up TLS for upstream downloads: {e}"
            )))
        })?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("pacpool-coordinator/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        Ok(Self {
            blobs: Arc::new(blobs),
            quota: settings.quota_bytes,
            max_file_size: settings.max_file_size,
            used: AtomicU64::new(used),
            reserved: AtomicU64::new(0),
            upstream: settings
                .upstream
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            archive_url: settings
                .archive_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            client,
            inflight: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
            counters: RepoCounters::default(),
        })
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn lock_for(&self, sha: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(sha.to_owned()).or_default().clone()
    }

    /// Where `entry`'s file may be fetched from, in order.
    fn upstream_urls(&self, entry: &ManifestEntry, filename: &str) -> Vec<String> {
        let arch = crate::cache::parse_package_filename(filename)
            .map(|(_, _, a)| a.to_string())
            .unwrap_or_default();
        let mut urls = Vec::new();
        if let Some(repo) = &entry.repo {
            for u in &self.upstream {
                let base = u.replace("$repo", repo.as_str()).replace("$arch", &arch);
                urls.push(format!("{base}/{filename}"));
            }
        }
        if let Some(a) = &self.archive_url {
            let first = &entry.name.as_str()[..1];
            urls.push(format!("{a}/{first}/{}/{filename}", entry.name));
        }
        urls
    }

    /// Takes `bytes` of the quota for a transfer about to be written, or says the store is
    /// full. Reserved before the first byte is written, so transfers running at once never
    /// add up past the quota; [`PackageStore::release`] gives back what was not kept.
    fn reserve(&self, bytes: u64) -> Result<(), ApiErr> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.quota)
            })
            .map(|_| {
                self.reserved.fetch_add(bytes, Ordering::AcqRel);
            })
            .map_err(|used| {
                ApiErr::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "repo_full",
                    format!(
                        "the pool repository's store is full ({used} of {} bytes): raise repo.quota_bytes or keep fewer target revisions (max_target_history)",
                        self.quota
                    ),
                )
            })
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Writes `chunks` to a `.part` file of its own, at most the manifest's size and never
    /// more than `max_file_size`, within a deadline (a transfer slower than 16 KiB/s on
    /// average, after two minutes, is cut off), checking size and digest against the
    /// manifest entry, then moves it into the store. No lock is held while the bytes arrive:
    /// a slow transfer never holds up readers or other transfers of the same file.
    async fn ingest<B: AsRef<[u8]>, E: std::fmt::Display>(
        &self,
        sha: &str,
        size: Option<u64>,
        mut chunks: impl futures_util::Stream<Item = Result<B, E>> + Unpin,
    ) -> Result<(), ApiErr> {
        let limit = size.unwrap_or(self.max_file_size).min(self.max_file_size);
        if size.is_some_and(|s| s > self.max_file_size) {
            return Err(ApiErr::invalid(format!(
                "the manifest states {} bytes, more than the pool repository's max_file_size of {}: nothing was stored",
                size.unwrap_or_default(),
                self.max_file_size
            )));
        }
        self.reserve(limit)?;
        let io = |e: std::io::Error| {
            ApiErr::internal(format!("cannot store {sha} in the pool repository: {e}"))
        };
        let deadline = Duration::from_secs(120) + Duration::from_secs(limit / (16 * 1024));
        let mut written = 0u64;
        // Whatever happens below, the reservation ends with this transfer.
        struct Settle<'a>(&'a AtomicU64, u64);
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(self.1, Ordering::AcqRel);
            }
        }
        let _settle = Settle(&self.reserved, limit);
        let mut out = match self.blobs.begin(sha).await {
            Ok(w) => w,
            Err(e) => {
                self.release(limit);
                return Err(io(e));
            }
        };
        let result = async {
            let mut hasher = Sha256::new();
            let receive = async {
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(|e| {
                        ApiErr::new(StatusCode::BAD_GATEWAY, "transfer_failed", format!("the transfer broke off: {e}"))
                    })?;
                    let chunk = chunk.as_ref();
                    written += chunk.len() as u64;
                    if written > limit {
                        return Err(ApiErr::invalid(format!(
                            "the file is larger than the {limit} bytes the manifest states (or max_file_size): nothing was stored"
                        )));
                    }
                    hasher.update(chunk);
                    out.write(chunk).await.map_err(io)?;
                }
                Ok(())
            };
            tokio::time::timeout(deadline, receive).await.map_err(|_| {
                ApiErr::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "transfer_too_slow",
                    format!(
                        "the transfer took longer than {} s (16 KiB/s on average after two minutes): nothing was stored",
                        deadline.as_secs()
                    ),
                )
            })??;
            if size.is_some_and(|s| s != written) {
                return Err(ApiErr::invalid(format!(
                    "the file has {written} bytes, the manifest states {}: nothing was stored",
                    size.unwrap_or_default()
                )));
            }
            let got = hex::encode(hasher.finalize());
            if got != sha {
                return Err(ApiErr::invalid(format!(
                    "the file's SHA-256 is {got}, the manifest states {sha}: nothing was stored"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            out.abort().await;
            self.release(limit);
            return Err(e);
        }
        // Only the move into place is serialized: the first complete copy wins.
        let lock = self.lock_for(sha);
        let _held = lock.lock().await;
        match out.commit().await {
            Ok(true) => {
                self.release(limit - written);
                Ok(())
            }
            Ok(false) => {
                self.release(limit);
                Ok(())
            }
            Err(e) => {
                self.release(limit);
                Err(io(e))
            }
        }
    }

    /// The digest of `entry`'s file, stored (fetched from upstream first when missing: once,
    /// however many ask at the same time).
    async fn get_or_fetch<'e>(
        &self,
        entry: &'e ManifestEntry,
        filename: &str,
    ) -> Result<&'e str, ApiErr> {
        let sha = entry.sha256.as_deref().filter(|s| is_digest(s)).ok_or_else(|| {
            ApiErr::not_found(format!(
                "{filename}: the target's manifest records no SHA-256 for it, so the pool repository cannot serve it"
            ))
        })?;
        if self.blobs.contains(sha).await {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(sha);
        }
        // One upstream fetch per file at a time (a lock of its own: `ingest` takes the file's
        // lock for the move into place).
        let lock = self.lock_for(&format!("fetch {sha}"));
        let _held = lock.lock().await;
        if self.blobs.contains(sha).await {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(sha);
        }
        let mut tried = Vec::new();
        for url in self.upstream_urls(entry, filename) {
            let resp = match self
                .client
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
            {
                Ok(r) => r,
                Err(e) => {
                    tried.push(format!("{url}: {}", crate::display::std_error_line(&e)));
                    continue;
                }
            };
            self.counters
                .upstream_fetches
                .fetch_add(1, Ordering::Relaxed);
            match self.ingest(sha, entry.size, resp.bytes_stream()).await {
                Ok(()) => {
                    tracing::info!(
                        file = filename,
                        url,
                        "pool repository: fetched from upstream"
                    );
                    return Ok(sha);
                }
                Err(e) if e.status == StatusCode::INSUFFICIENT_STORAGE => return Err(e),
                Err(e) => tried.push(format!("{url}: {}", e.message)),
            }
        }
        Err(ApiErr::not_found(if tried.is_empty() {
            format!(
                "{filename} is not in the pool repository yet and no upstream is configured: the endpoint that set the target uploads it, or set repo.upstream / repo.archive_url"
            )
        } else {
            format!(
                "{filename} is not in the pool repository and no upstream has it: {}",
                tried.join("; ")
            )
        }))
    }

    /// Counts what the store holds again (on a replica that does not collect garbage, so
    /// that files other replicas stored or removed count here too).
    pub async fn recount(&self) {
        if let Ok(stored) = self.blobs.list().await {
            let held: u64 = stored.iter().map(|b| b.size).sum();
            let reserved = self.reserved.load(Ordering::Relaxed);
            self.used.store(held + reserved, Ordering::Relaxed);
        }
    }

    /// The digests every kept revision's manifest names.
    async fn referenced(state: &AppState) -> Result<HashSet<String>, ApiErr> {
        let bodies = state
            .db
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT body FROM target_manifests")?;
                let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let mut keep = HashSet::new();
        for b in bodies {
            if let Ok(m) = super::service::decode_manifest(&b) {
                keep.extend(m.entries.into_iter().filter_map(|e| e.sha256));
            }
        }
        Ok(keep)
    }

    /// Deletes stored files that no retained revision's manifest refers to.
    pub async fn collect_garbage(&self, state: &AppState) -> Result<u64, ApiErr> {
        let mut keep = Self::referenced(state).await?;
        let mut freed = 0;
        let _ = self.blobs.clean_parts().await;
        let stored = self
            .blobs
            .list()
            .await
            .map_err(|e| ApiErr::internal(format!("cannot list the pool repository: {e}")))?;
        // A revision set since the first read may name an old file again: read once more, just
        // before deleting (the window left is between this read and the deletes).
        keep.extend(Self::referenced(state).await?);
        let now = std::time::SystemTime::now();
        let mut kept = 0;
        for b in stored {
            // A young file may belong to a revision set after the manifests were read above
            // (on this replica or another): it waits for a later run.
            let young = now
                .duration_since(b.modified)
                .is_ok_and(|age| age < super::blob::GC_GRACE)
                || b.modified > now;
            if keep.contains(&b.sha) || young {
                kept += b.size;
                continue;
            }
            let lock = self.lock_for(&b.sha);
            let _held = lock.lock().await;
            if let Ok(n) = self.blobs.remove(&b.sha).await {
                freed += n;
            }
        }
        // Recounted from what is stored (other replicas may have stored or removed files),
        // plus what transfers in progress here reserved.
        let reserved = self.reserved.load(Ordering::Relaxed);
        self.used.store(kept + reserved, Ordering::Relaxed);
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(freed)
    }

    /// `/metrics` lines.
    pub fn metrics(&self) -> String {
        let c = &self.counters;
        format!(
            "# TYPE pacpool_repo_bytes_stored gauge\npacpool_repo_bytes_stored {}\n\
             # TYPE pacpool_repo_quota_bytes gauge\npacpool_repo_quota_bytes {}\n\
             # TYPE pacpool_repo_hits_total counter\npacpool_repo_hits_total {}\n\
             # TYPE pacpool_repo_upstream_fetches_total counter\npacpool_repo_upstream_fetches_total {}\n\
             # TYPE pacpool_repo_uploads_total counter\npacpool_repo_uploads_total {}\n\
             # TYPE pacpool_repo_bytes_served_total counter\npacpool_repo_bytes_served_total {}\n",
            self.used_bytes(),
            self.quota,
            c.hits.load(Ordering::Relaxed),
            c.upstream_fetches.load(Ordering::Relaxed),
            c.uploads.load(Ordering::Relaxed),
            c.bytes_served.load(Ordering::Relaxed),
        )
    }
}

impl PackageStore {
    pub fn stats(&self) -> crate::proto::RepoStats {
        let c = &self.counters;
        crate::proto::RepoStats {
            bytes_stored: self.used_bytes(),
            quota_bytes: self.quota,
            hits: c.hits.load(Ordering::Relaxed),
            upstream_fetches: c.upstream_fetches.load(Ordering::Relaxed),
            uploads: c.uploads.load(Ordering::Relaxed),
            bytes_served: c.bytes_served.load(Ordering::Relaxed),
        }
    }
}

/// Whether pool `pool_id` is named in `repo.anonymous_pools` (readable without a token).
async fn is_anonymous(state: &AppState, pool_id: i64) -> Result<bool, ApiErr> {
    let names = &state.settings.repo.anonymous_pools;
    if names.is_empty() {
        return Ok(false);
    }
    let name: Option<String> = state
        .db
        .read(move |conn| {
            use super::sql::OptionalExtension as _;
            Ok(conn
                .prepare_cached("SELECT name FROM pools WHERE id = ?1")?
                .query_row([pool_id], |r| r.get(0))
                .optional()?)
        })
        .await?;
    Ok(name.is_some_and(|n| names.contains(&n)))
}

/// The token of `Authorization: Bearer T` or of HTTP Basic's password.
fn token_of(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')?.1.to_owned()
    } else {
        return None;
    };
    (!token.is_empty() && token.len() <= 256).then_some(token)
}

/// Who reads or writes the repository: the admin, or an endpoint (its id) of `pool_id`.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    pool_id: i64,
    read_only: bool,
) -> Result<Option<i64>, ApiErr> {
    let Some(token) = token_of(headers) else {
        if read_only && is_anonymous(state, pool_id).await? {
            return Ok(None);
        }
        return Err(ApiErr::unauthorized(
            "the pool repository needs a token: `Authorization: Bearer <endpoint or admin token>`, or the token as the password in the Server URL (https://x:TOKEN@host/…)",
        ));
    };
    if state.is_admin_token(&token) {
        return Ok(None);
    }
    match super::auth::endpoint_by_token(state, &token).await? {
        Some(ep) if ep.pool_id == pool_id => Ok(Some(ep.id)),
        Some(_) => Err(ApiErr::not_found(format!(
            "pool {pool_id} is not this endpoint's pool"
        ))),
        None => Err(ApiErr::unauthorized(
            "unknown or revoked token: register the endpoint again with a join token",
        )),
    }
}

async fn manifest_of(
    state: &AppState,
    pool_id: i64,
    revision: u64,
) -> Result<Arc<Manifest>, ApiErr> {
    let store = &state.pool_repo;
    if let Some(m) = store
        .manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(pool_id, revision))
    {
        return Ok(m.clone());
    }
    let body = state
        .db
        .read(move |conn| {
            db::manifest_body(conn, pool_id, revision)?.ok_or_else(|| {
                ApiErr::not_found(format!(
                    "pool {pool_id} has no repository for revision {revision}: the revision does not exist, was dropped by retention, or was set by an endpoint that sent no manifest"
                ))
            })
        })
        .await?;
    let m = Arc::new(super::service::decode_manifest(&body)?);
    let mut cache = store.manifests.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 16 {
        cache.clear();
    }
    cache.insert((pool_id, revision), m.clone());
    Ok(m)
}

/// The entry whose file is `filename`.
fn entry_for<'a>(m: &'a Manifest, filename: &str) -> Option<&'a ManifestEntry> {
    let (name, version, _) = crate::cache::parse_package_filename(filename)?;
    let e = m.get(&name, &version)?;
    (e.filename.as_deref() == Some(filename)).then_some(e)
}

/// A repository database (gzip'd tar of `NAME-VERSION/desc`) for the manifest's entries that
/// have a file name and digest.
pub fn repo_database(m: &Manifest) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for e in &m.entries {
        let (Some(filename), Some(sha)) = (&e.filename, &e.sha256) else {
            continue;
        };
        let Some((_, _, arch)) = crate::cache::parse_package_filename(filename) else {
            continue;
        };
        let mut desc = format!(
            "%FILENAME%\n{filename}\n\n%NAME%\n{}\n\n%VERSION%\n{}\n\n%ARCH%\n{arch}\n\n%SHA256SUM%\n{sha}\n\n",
            e.name, e.version
        );
        if let Some(size) = e.size {
            desc.push_str(&format!("%CSIZE%\n{size}\n\n"));
        }
        if let Some(sig) = &e.signature {
            desc.push_str(&format!("%PGPSIG%\n{sig}\n\n"));
        }
        let dir = format!("{}-{}", e.name, e.version);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        let _ = tar.append_data(&mut h, format!("{dir}/"), std::io::empty());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(desc.len() as u64);
        h.set_mtime(0);
        let _ = tar.append_data(&mut h, format!("{dir}/desc"), desc.as_bytes());
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .unwrap_or_default()
}

/// An error answer; a 401 carries `WWW-Authenticate: Basic`, without which curl (pacman's
/// downloader) never sends the credentials of a `Server = https://x:TOKEN@host/…` URL.
fn answer(r: Result<Response, ApiErr>) -> Response {
    match r {
        Ok(r) => r,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let mut resp = e.into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"pacpool pool repository\""),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /pools/{id}/repo/{revision}/{file}`.
pub(crate) async fn get_file(
    state: State<AppState>,
    path: ApiPathRaw<(i64, u64, String)>,
    req: Request,
) -> Response {
    answer(get_file_inner(state, path, req).await)
}

async fn get_file_inner(
    State(state): State<AppState>,
    ApiPathRaw((pool_id, revision, file)): ApiPathRaw<(i64, u64, String)>,
    req: Request,
) -> Result<Response, ApiErr> {
    authorize(&state, req.headers(), pool_id, true).await?;
    let m = manifest_of(&state, pool_id, revision).await?;
    if file.ends_with(".db") || file.ends_with(".db.tar.gz") {
        let db = repo_database(&m);
        return Ok(([(header::CONTENT_TYPE, "application/gzip")], db).into_response());
    }
    if let Some(pkg) = file.strip_suffix(".sig") {
        let sig = entry_for(&m, pkg)
            .and_then(ManifestEntry::signature_bytes)
            .ok_or_else(|| ApiErr::not_found(format!("no signature for {pkg} in this revision")))?;
        return Ok(([(header::CONTENT_TYPE, "application/pgp-signature")], sig).into_response());
    }
    let entry = entry_for(&m, &file).ok_or_else(|| {
        ApiErr::not_found(format!(
            "{file} is not a package file of revision {revision}"
        ))
    })?;
    let sha = state.pool_repo.get_or_fetch(entry, &file).await?;
    let resp = state.pool_repo.blobs.serve(sha, req).await?;
    if resp.status() == StatusCode::OK {
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        state
            .pool_repo
            .counters
            .bytes_served
            .fetch_add(len, Ordering::Relaxed);
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// `PUT /pools/{id}/repo/{revision}/{file}`: an endpoint of the pool uploads a file the
/// revision's manifest names; stored only when size and digest match.
pub(crate) async fn put_file(
    state: State<AppState>,
    path: ApiPathRaw<(i64, u64, String)>,
    req: Request,
) -> Response {
    answer(put_file_inner(state, path, req).await)
}

async fn put_file_inner(
    State(state): State<AppState>,
    ApiPathRaw((pool_id, revision, file)): ApiPathRaw<(i64, u64, String)>,
    req: Request,
) -> Result<Response, ApiErr> {
    authorize(&state, req.headers(), pool_id, false).await?;
    let m = manifest_of(&state, pool_id, revision).await?;
    let entry = entry_for(&m, &file).ok_or_else(|| {
        ApiErr::not_found(format!(
            "{file} is not a package file of revision {revision}"
        ))
    })?;
    let sha = entry
        .sha256
        .clone()
        .filter(|s| is_digest(s))
        .ok_or_else(|| ApiErr::invalid(format!("the manifest records no SHA-256 for {file}")))?;
    let store = &state.pool_repo;
    if store.blobs.contains(&sha).await {
        return Ok(StatusCode::OK.into_response());
    }
    // No lock while the body arrives (see `ingest`): a slow upload holds up nobody.
    store
        .ingest(&sha, entry.size, req.into_body().into_data_stream())
        .await?;
    store.counters.uploads.fetch_add(1, Ordering::Relaxed);
    tracing::info!(pool_id, revision, file, "pool repository: stored an upload");
    Ok(StatusCode::CREATED.into_response())
}

/// `GET /pools/{id}/repo/{revision}` (no file): which files of the revision the store lacks
/// and cannot fetch from an upstream itself (foreign packages, or all when no upstream is
/// configured), so that the endpoint that set the target knows what to upload.
pub(crate) async fn missing(
    State(state): State<AppState>,
    ApiPathRaw((pool_id, revision)): ApiPathRaw<(i64, u64)>,
    headers: HeaderMap,
) -> Result<axum::Json<Vec<String>>, ApiErr> {
    authorize(&state, &headers, pool_id, false).await?;
    let m = manifest_of(&state, pool_id, revision).await?;
    let store = &state.pool_repo;
    let mut out = Vec::new();
    for e in &m.entries {
        let (Some(file), Some(sha)) = (&e.filename, &e.sha256) else {
            continue;
        };
        if store.blobs.contains(sha).await {
            continue;
        }
        if store.upstream_urls(e, file).is_empty() {
            out.push(file.clone());
        }
    }
    Ok(axum::Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, quota: u64, max_file_size: u64) -> PackageStore {
        PackageStore::open(
            &RepoSettings {
                dir: Some(dir.to_owned()),
                quota_bytes: quota,
                max_file_size,
                ..Default::default()
            },
            &dir.join("c.db"),
        )
        .unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn body(bytes: Vec<u8>) -> impl futures_util::Stream<Item = Result<Vec<u8>, String>> + Unpin {
        futures_util::stream::iter(
            bytes
                .chunks(64 << 10)
                .map(|c| Ok(c.to_vec()))
                .collect::<Vec<_>>(),
        )
    }

    /// What the store directory holds (names), and what it counts as used.
    fn held(s: &PackageStore, dir: &Path) -> (Vec<String>, u64) {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "c.db")
            .collect();
        names.sort();
        (names, s.used_bytes())
    }

    #[tokio::test]
    async fn a_manifest_cannot_raise_the_file_size_or_quota_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 2 << 20, 1 << 20);
        let big = vec![0u8; 5 << 20];
        // The manifest states 5 MiB (more than max_file_size): refused before a byte is
        // written.
        let e = s
            .ingest(&sha(&big), Some(big.len() as u64), body(big.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
        assert!(e.message.contains("max_file_size"), "{}", e.message);
        // No size stated: cut off at max_file_size.
        let e = s.ingest(&sha(&big), None, body(big)).await.unwrap_err();
        assert!(e.message.contains("larger than"), "{}", e.message);
        assert_eq!(
            held(&s, dir.path()),
            (vec![], 0),
            "nothing stored, nothing counted"
        );

        // Transfers at once: each reserves its size before its first byte, so together they
        // never pass the quota; a slow transfer holds up no other transfer of the same file.
        let s = store(dir.path(), (2 << 20) + (512 << 10), 1 << 20);
        let one = vec![1u8; 1 << 20];
        let (tx, rx) = futures_channel_like();
        let first = {
            let s = &s;
            let one = one.clone();
            async move { s.ingest(&sha(&one), Some(one.len() as u64), rx).await }
        };
        let others = async {
            while s.used_bytes() == 0 {
                tokio::task::yield_now().await;
            }
            // The same file again while the first copy is still arriving: stored at once.
            s.ingest(&sha(&one), Some(one.len() as u64), body(one.clone()))
                .await
                .unwrap();
            assert_eq!(s.used_bytes(), 2 << 20, "1 MiB stored + 1 MiB reserved");
            // 768 KiB more would pass the quota with the reservation: refused.
            let small = vec![3u8; 768 << 10];
            let e = s
                .ingest(&sha(&small), Some(small.len() as u64), body(small))
                .await
                .unwrap_err();
            assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE, "{}", e.message);
            tx.send(one.clone()).unwrap();
        };
        let (r, ()) = tokio::join!(first, others);
        r.unwrap();
        // The slow copy found the file in place: discarded, its reservation given back.
        let (names, used) = held(&s, dir.path());
        assert_eq!(names, vec![sha(&one)], "no part files left");
        assert_eq!(used, 1 << 20);
    }

    /// A body that sends nothing until `tx` gives it its bytes.
    fn futures_channel_like() -> (
        tokio::sync::oneshot::Sender<Vec<u8>>,
        impl futures_util::Stream<Item = Result<Vec<u8>, String>> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let stream = futures_util::stream::once(async move { rx.await.map_err(|e| e.to_string()) });
        (tx, Box::pin(stream))
    }

    #[test]
    fn tokens_from_bearer_and_basic() {
        use base64::Engine as _;
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("x:secret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(token_of(&h).as_deref(), Some("secret"));
        h.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(token_of(&h), None);
    }
}
