//! A throwaway PostgreSQL server per test.
//!
//! [`PgCluster::start`] makes a new cluster in its own temporary directory under `/tmp`
//! (`/tmp/ppgXXXXXX`: the data directory `data/`, the server's `log` and its Unix socket),
//! listening on that socket only (no TCP), with `trust` authentication for the `postgres`
//! superuser and durability switched off (`fsync`, `synchronous_commit`, `full_page_writes`)
//! for speed. Dropping it stops the server (`pg_ctl -m immediate stop`) and removes the
//! directory.
//!
//! The server binaries come from `$PACPOOL_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian), else `PATH`. When the tests run as root (initdb and
//! postgres refuse to), initdb and pg_ctl run as the `postgres` user through `runuser`, and the
//! temporary directories belong to that user; psql always runs as the caller.
//!
//! initdb runs once per test process, into a template data directory (removed at exit), that
//! each cluster copies: a copy takes about 0.2 s where initdb takes about 0.9 s on an idle
//! machine, and far more with tests running beside it.
//!
//! Include it with `#[path = "support/pg.rs"] mod pg;` (or `"../tests/support/pg.rs"` from a
//! bench). Needs only std, `tempfile` and `libc`.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The port in the socket's name (`.s.PGSQL.5432`); every cluster has its own socket
/// directory, so they all use the default port.
const PORT: &str = "5432";

/// The superuser, who connects without a password (`-A trust`).
const SUPERUSER: &str = "postgres";

/// Environment variables that would point libpq or the server elsewhere than we say.
const PG_ENV: [&str; 10] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGOPTIONS",
    "PGDATA",
];

/// A throwaway PostgreSQL cluster: a server of its own on a Unix socket in a temporary
/// directory, stopped and deleted on drop.
pub struct PgCluster {
    /// `/tmp/ppgXXXXXX`: `data/`, `log` and the socket. Removed when dropped (after `drop`).
    dir: tempfile::TempDir,
    data: PathBuf,
    env: &'static PgEnv,
    /// The port (in the socket's name, and on 127.0.0.1 once [`PgCluster::serve_tls`] ran).
    port: u16,
    /// Extra server options ([`PgCluster::serve_tls`]).
    extra: String,
}

/// Where the binaries are and whom they run as.
struct PgEnv {
    /// initdb, pg_ctl, postgres.
    bin: PathBuf,
    /// psql (usually in `bin` too).
    psql: PathBuf,
    /// Some when we are root: initdb and pg_ctl run as the `postgres` user through this
    /// `runuser`, and their directories belong to that user.
    as_postgres: Option<(PathBuf, Owner)>,
}

#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

static ENV: OnceLock<Result<PgEnv, String>> = OnceLock::new();
static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
/// The template's temporary directory, removed by `remove_template` at process exit.
static TEMPLATE_DIR: OnceLock<PathBuf> = OnceLock::new();

impl PgCluster {
    /// Starts a new cluster. Returns `Err(reason)` only when this machine cannot run one: no
    /// PostgreSQL server binaries (or, as root, no `postgres` user or `runuser`); the caller
    /// prints `SKIPPED: <reason>`. Any other failure (initdb, copy, start) panics with what
    /// failed and the tail of its log.
    pub fn start() -> Result<Self, String> {
        let env = match ENV.get_or_init(PgEnv::find) {
            Ok(env) => env,
            Err(reason) => return Err(reason.clone()),
        };
        let template = match TEMPLATE.get_or_init(|| make_template(env)) {
            Ok(template) => template,
            Err(e) => panic!("{e}"),
        };
        let dir = env.temp_dir("ppg").unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path().join("data");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&data)
            .stdin(Stdio::null())
            .output();
        check(
            cp,
            &format!("cp -a {} {}", template.display(), data.display()),
        )
        .unwrap_or_else(|e| panic!("copying the template data directory: {e}"));
        let cluster = PgCluster {
            dir,
            data,
            env,
            port: PORT.parse().unwrap(),
            extra: String::new(),
        };
        cluster.pg_ctl_start();
        Ok(cluster)
    }

    /// Creates a new empty database `name` (letters, digits, `_` and `-` only) and returns its
    /// URL: `postgresql:///NAME?host=SOCKETDIR&user=postgres`.
    pub fn database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name.len() < 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "database name {name:?}: use letters, digits, '_' and '-' (at most 63)"
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// The URL of database `name` (which must exist, e.g. `postgres`), as `database` returns.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql:///{name}?host={}&port={}&user={SUPERUSER}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs one SQL statement with psql in database `db` and returns psql's unaligned,
    /// tuples-only output, trimmed. Panics with psql's messages when it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(&self.env.psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null());
        clear_pg_env(&mut cmd);
        match check(cmd.output(), &format!("psql -d {db} -c {sql:?}")) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            Err(e) => panic!("{e}\nserver log (last lines):\n{}", self.log_tail()),
        }
    }

    /// The directory of the server's Unix socket (the `host` of a libpq URL).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`initdb -D`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("log"), 40)
    }

    /// Restarts the server listening on 127.0.0.1 too, with TLS from `cert_pem` (the chain)
    /// and `key_pem`; returns the port (the Unix socket moves to it as well).
    pub fn serve_tls(&mut self, cert_pem: &[u8], key_pem: &[u8]) -> u16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut stop = self.env.tool("pg_ctl", self.dir.path());
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        check(stop.output(), "pg_ctl stop").unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = (
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        );
        fs::write(&cert, cert_pem).unwrap();
        fs::write(&key, key_pem).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((_, owner)) = &self.env.as_postgres {
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(owner.uid), Some(owner.gid)).unwrap();
            }
        }
        self.port = port;
        self.extra = format!(
            "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        self.pg_ctl_start();
        port
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses='' -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB {}",
            self.port,
            self.socket_dir().display(),
            self.extra
        );
        let mut cmd = self.env.tool("pg_ctl", self.dir.path());
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        if let Err(e) = check(cmd.output(), "pg_ctl start") {
            panic!(
                "starting PostgreSQL in {}: {e}\nserver log (last lines):\n{}",
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut cmd = self.env.tool("pg_ctl", self.dir.path());
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        if let Err(e) = check(cmd.output(), "pg_ctl stop") {
            // Never leave a server behind: kill the postmaster named in its pid file (its
            // children exit when they see it gone).
            eprintln!("pg.rs: {e}; killing the postmaster");
            if let Some(pid) = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            {
                // SAFETY: kill(2) with a pid read from the server's own pid file.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                // SAFETY: signal 0 only checks that the process exists.
                while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // `self.dir` (TempDir) removes the directory when it is dropped, right after this.
    }
}

impl PgEnv {
    fn find() -> Result<PgEnv, String> {
        let bin = find_bin()?;
        let psql = if bin.join("psql").is_file() {
            bin.join("psql")
        } else {
            search_path("psql").ok_or_else(|| {
                format!(
                    "psql not found in {} nor PATH (Debian: postgresql-client)",
                    bin.display()
                )
            })?
        };
        // SAFETY: geteuid has no preconditions.
        let as_postgres = if unsafe { libc::geteuid() } == 0 {
            let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .or_else(|| search_path("runuser"))
                .ok_or(
                    "running as root, and runuser (util-linux) is not installed to run \
                        PostgreSQL as the postgres user",
                )?;
            Some((runuser, postgres_owner()?))
        } else {
            None
        };
        Ok(PgEnv {
            bin,
            psql,
            as_postgres,
        })
    }

    /// A command running server tool `name`, as the postgres user when we are root, in `cwd`
    /// (the postgres user may not be able to enter our working directory, e.g. /root).
    fn tool(&self, name: &str, cwd: &Path) -> Command {
        let mut cmd = match &self.as_postgres {
            Some((runuser, _)) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
                cmd
            }
            None => Command::new(self.bin.join(name)),
        };
        cmd.current_dir(cwd).stdin(Stdio::null());
        clear_pg_env(&mut cmd);
        cmd
    }

    /// A new directory `/tmp/PREFIXXXXXXX` (short: the socket path must stay under 108
    /// bytes) that the server's user owns and everyone may enter.
    fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, String> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .map_err(|e| format!("creating a temporary directory in /tmp: {e}"))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
        if let Some((_, owner)) = &self.as_postgres {
            chown(dir.path(), *owner)?;
        }
        Ok(dir)
    }
}

/// Runs initdb once, into a directory removed at process exit; returns its data directory.
fn make_template(env: &PgEnv) -> Result<PathBuf, String> {
    let dir = env.temp_dir("ppgt")?.keep();
    let _ = TEMPLATE_DIR.set(dir.clone());
    // SAFETY: registers a plain function; it only removes a directory.
    unsafe {
        libc::atexit(remove_template);
    }
    let data = dir.join("data");
    let mut errors = Vec::new();
    // C.UTF-8 is on every Debian 12; plain C where a system lacks it.
    for locale in ["C.UTF-8", "C"] {
        let mut cmd = env.tool("initdb", &dir);
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8"])
            .arg(format!("--locale={locale}"))
            .args(["--no-sync", "--no-instructions"]);
        match check(cmd.output(), &format!("initdb --locale={locale}")) {
            Ok(_) => return Ok(data),
            Err(e) => {
                errors.push(e);
                let _ = fs::remove_dir_all(&data);
            }
        }
    }
    Err(format!(
        "initdb (from {}) failed:\n{}",
        env.bin.display(),
        errors.join("\n")
    ))
}

extern "C" fn remove_template() {
    if let Some(dir) = TEMPLATE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// `$PACPOOL_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else the directory of
/// `initdb` on PATH.
fn find_bin() -> Result<PathBuf, String> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Some(dir) = std::env::var_os("PACPOOL_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "PACPOOL_PG_BIN={} has no initdb, pg_ctl and postgres",
                dir.display()
            ))
        };
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Option<Vec<u32>> =
                name.to_str()?.split('.').map(|n| n.parse().ok()).collect();
            Some((version?, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(initdb) = search_path("initdb") {
        let dir = initdb.parent().unwrap_or(Path::new("/")).to_path_buf();
        if complete(&dir) {
            return Ok(dir);
        }
    }
    Err(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in $PACPOOL_PG_BIN, \
         /usr/lib/postgresql/*/bin or PATH; on Debian 12 `apt-get install postgresql` \
         (`bash tests/run.sh` installs it)"
            .to_string(),
    )
}

fn search_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_owner() -> Result<Owner, String> {
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| {
            Some(Owner {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .ok_or_else(|| {
            "running as root, and there is no postgres user in /etc/passwd to run \
             PostgreSQL as (Debian's postgresql package creates it)"
                .to_string()
        })
}

fn chown(path: &Path, owner: Owner) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL in path", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::chown(c.as_ptr(), owner.uid, owner.gid) } != 0 {
        return Err(format!(
            "chown {}:{} {}: {}",
            owner.uid,
            owner.gid,
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn clear_pg_env(cmd: &mut Command) {
    for var in PG_ENV {
        cmd.env_remove(OsStr::new(var));
    }
}

/// `Ok(output)` when the command ran and exited 0; else an error naming `what`, with its
/// exit status and output.
fn check(result: std::io::Result<Output>, what: &str) -> Result<Output, String> {
    let out = result.map_err(|e| format!("{what}: could not run: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
