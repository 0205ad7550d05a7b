//! Where the pool repository's package files live: [`BlobStore`], content-addressed by
//! SHA-256, and its one implementation so far, [`DirBlobStore`], a directory that every
//! coordinator replica reaches (local disk for one coordinator; shared storage such as NFS
//! or CephFS for several). An object store (S3 and the like) can implement the same trait
//! later: `begin` → a multipart upload, `commit` → complete it under the digest, `serve` → a
//! redirect to a signed URL.
//!
//! The rules above it (quota, size and digest checks, one upstream fetch at a time) stay in
//! `pool_repo::PackageStore`; a store only keeps bytes.
//!
//! Several replicas may write one directory at once: each transfer writes a part file whose
//! name is unique across replicas, and `commit` moves it into place with `rename` (atomic on
//! one file system, and two replicas storing one digest store the same bytes). Part files
//! are cleaned up only when a day old (a younger one may be another replica's transfer in
//! progress), and garbage collection leaves files younger than [`GC_GRACE`] alone (one may
//! belong to a revision set after the collector read the manifests).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::extract::Request;
use axum::response::Response;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use super::error::ApiErr;

/// Files younger than this are never collected.
pub(crate) const GC_GRACE: Duration = Duration::from_secs(3600);
/// Part files older than this are leftovers of a crashed transfer.
const PART_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// 1 MiB reads instead of 64 KiB: fewer, larger frames through hyper (see BENCHMARKS.md).
const SERVE_CHUNK: usize = 1 << 20;

/// One stored file.
#[derive(Debug, Clone)]
pub(crate) struct BlobInfo {
    pub sha: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Content-addressed storage of the pool repository's files.
#[async_trait]
pub(crate) trait BlobStore: Send + Sync + 'static {
    /// Whether a file with this digest is stored.
    async fn contains(&self, sha: &str) -> bool;
    /// A writer for an incoming file, invisible until [`BlobWriter::commit`].
    async fn begin(&self, sha: &str) -> std::io::Result<Box<dyn BlobWriter>>;
    /// Answers a GET or HEAD (ranges included) for a stored file.
    async fn serve(&self, sha: &str, req: Request) -> Result<Response, ApiErr>;
    /// Every stored file.
    async fn list(&self) -> std::io::Result<Vec<BlobInfo>>;
    /// Deletes a stored file; returns its size (0 when it was not there).
    async fn remove(&self, sha: &str) -> std::io::Result<u64>;
    /// Deletes leftovers of transfers that never finished (old enough to be nobody's).
    async fn clean_parts(&self) -> std::io::Result<()>;
}

/// An incoming file.
#[async_trait]
pub(crate) trait BlobWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    /// Makes the file readable under its digest (durably); `false` when a copy was already
    /// there (the first complete copy wins, this one is dropped).
    async fn commit(self: Box<Self>) -> std::io::Result<bool>;
    /// Drops the incoming file.
    async fn abort(self: Box<Self>);
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A directory of files named by their SHA-256.
pub(crate) struct DirBlobStore {
    dir: PathBuf,
    /// Random per process: part file names never collide across replicas.
    process: u64,
    next_part: AtomicU64,
}

impl DirBlobStore {
    /// Opens (creating) the directory.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Ok(Self {
            dir: dir.to_owned(),
            process: u64::from_le_bytes(b),
            next_part: AtomicU64::new(0),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, sha: &str) -> PathBuf {
        self.dir.join(sha)
    }
}

#[async_trait]
impl BlobStore for DirBlobStore {
    async fn contains(&self, sha: &str) -> bool {
        is_digest(sha) && tokio::fs::metadata(self.path_of(sha)).await.is_ok()
    }

    async fn begin(&self, sha: &str) -> std::io::Result<Box<dyn BlobWriter>> {
        if !is_digest(sha) {
            return Err(std::io::Error::other("not a SHA-256 digest"));
        }
        let part = self.dir.join(format!(
            "{sha}.{:016x}.{}.part",
            self.process,
            self.next_part.fetch_add(1, Ordering::Relaxed)
        ));
        let file = tokio::fs::File::create(&part).await?;
        Ok(Box::new(DirWriter {
            file,
            part,
            dest: self.path_of(sha),
        }))
    }

    async fn serve(&self, sha: &str, req: Request) -> Result<Response, ApiErr> {
        let resp = tower_http::services::ServeFile::new(self.path_of(sha))
            .with_buf_chunk_size(SERVE_CHUNK)
            .oneshot(req)
            .await
            .map_err(|e| ApiErr::internal(format!("cannot serve {sha}: {e}")))?;
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(parts, axum::body::Body::new(body)))
    }

    async fn list(&self) -> std::io::Result<Vec<BlobInfo>> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_digest(&name) {
                continue;
            }
            if let Ok(m) = e.metadata().await {
                out.push(BlobInfo {
                    sha: name,
                    size: m.len(),
                    modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }

    async fn remove(&self, sha: &str) -> std::io::Result<u64> {
        let path = self.path_of(sha);
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(_) => return Ok(0),
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn clean_parts(&self) -> std::io::Result<()> {
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        while let Some(e) = rd.next_entry().await? {
            if !e.file_name().to_string_lossy().ends_with(".part") {
                continue;
            }
            let old = e
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PART_MAX_AGE);
            if old {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
        Ok(())
    }
}

struct DirWriter {
    file: tokio::fs::File,
    part: PathBuf,
    dest: PathBuf,
}

#[async_trait]
impl BlobWriter for DirWriter {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk).await
    }

    async fn commit(self: Box<Self>) -> std::io::Result<bool> {
        self.file.sync_all().await?;
        drop(self.file);
        if tokio::fs::metadata(&self.dest).await.is_ok() {
            let _ = tokio::fs::remove_file(&self.part).await;
            return Ok(false);
        }
        if let Err(e) = tokio::fs::rename(&self.part, &self.dest).await {
            let _ = tokio::fs::remove_file(&self.part).await;
            return Err(e);
        }
        Ok(true)
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.part).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn part_files_of_others_survive_and_the_first_copy_wins() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirBlobStore::open(dir.path()).unwrap();
        let b = DirBlobStore::open(dir.path()).unwrap();
        let sha = "a".repeat(64);
        let mut wa = a.begin(&sha).await.unwrap();
        let mut wb = b.begin(&sha).await.unwrap();
        wa.write(b"same bytes").await.unwrap();
        wb.write(b"same bytes").await.unwrap();
        // Another replica starting cleans up nothing in progress.
        DirBlobStore::open(dir.path())
            .unwrap()
            .clean_parts()
            .await
            .unwrap();
        assert!(wa.commit().await.unwrap());
        assert!(!wb.commit().await.unwrap());
        assert!(a.contains(&sha).await && b.contains(&sha).await);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![sha.clone()], "no part file is left behind");
        let listed = b.list().await.unwrap();
        assert_eq!((listed.len(), listed[0].size), (1, 10));
        assert_eq!(a.remove(&sha).await.unwrap(), 10);
        assert!(!b.contains(&sha).await);
        assert!(b.begin("../x").await.is_err());
    }
}
