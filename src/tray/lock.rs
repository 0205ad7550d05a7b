//! One tray per session: an exclusive `flock` on `$XDG_RUNTIME_DIR/pacpool-tray.lock`
//! (`/tmp/pacpool-tray-UID.lock` without a runtime directory), held for the process's life.
//! The kernel drops the lock when the process dies, so a crash never leaves a stale lock.

use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another pacpool-tray already runs in this session (it holds {0}); quit it first")]
    Held(PathBuf),
    #[error("cannot open the instance lock {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct InstanceLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

/// The lock file for this session.
pub fn default_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("pacpool-tray.lock"),
        _ => std::env::temp_dir().join(format!(
            "pacpool-tray-{}.lock",
            rustix::process::getuid().as_raw()
        )),
    }
}

pub fn acquire(path: &Path) -> Result<InstanceLock, LockError> {
    let open_err = |source| LockError::Open {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(open_err)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(LockError::Held(path.to_owned())),
        Err(e) => return Err(open_err(e.into())),
    }
    // The pid is for people looking; the lock itself is the flock.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(InstanceLock {
        _file: file,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_instance_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pacpool-tray.lock");
        let first = acquire(&p).unwrap();
        let err = acquire(&p).unwrap_err();
        assert!(matches!(err, LockError::Held(_)), "{err}");
        assert!(err.to_string().contains("already runs"));
        drop(first);
        acquire(&p).unwrap();
    }
}
