//! The coordinator's configuration: defaults, then a TOML file, then (in the binary)
//! environment variables and flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented example printed by `pacpool-coordinator default-config`; every value in it
/// is the default.
pub const EXAMPLE_CONFIG: &str = r#"# pacpool-coordinator configuration (TOML). Every value below is the default.

# Address and port to listen on. The default only accepts connections from this machine;
# use "0.0.0.0:7300" for a network, with [tls] below (tokens are bearer secrets).
listen = "127.0.0.1:7300"

# The database: a SQLite file (created on first start, WAL mode), or a PostgreSQL URL for
# several coordinator replicas on one database, e.g.
#   database = "postgres://pacpool:PASSWORD@db.example.net/pacpool?sslmode=require"
#   database = "postgresql:///pacpool?host=/run/postgresql&user=pacpool"   (Unix socket)
# With PostgreSQL, give every replica the same admin_token_sha256 (or admin token file) and a
# [repo] dir they all reach. Environment: PACPOOL_COORDINATOR_DATABASE; flag: --database.
database = "/var/lib/pacpool-coordinator/coordinator.db"

# PostgreSQL only: connections each replica keeps to the database.
database_pool_size = 16

# PostgreSQL only: a CA certificate (PEM) trusted besides the system's for sslmode=require.
# database_ca_file = "/etc/pacpool/db-ca.pem"

# File holding the admin token. If it does not exist on start, a random token is generated
# and written there (mode 0600); give it to `pacpool admin` as the bearer token.
admin_token_file = "/var/lib/pacpool-coordinator/admin-token"

# Instead of a token file: the hex SHA-256 of the admin token (`printf %s TOKEN | sha256sum`).
# When set, admin_token_file is not read or created.
# admin_token_sha256 = "..."

# An endpoint that has not reported or sent a heartbeat for this many seconds is "offline".
offline_after_secs = 90

# Largest accepted request body, in bytes (a full 1,500-package state is about 150 KiB).
body_limit = 8388608

# Largest accepted WebSocket message, in bytes.
ws_message_limit = 8388608

# The most packages one reported state may hold (full or built from deltas); a larger one is
# refused with 413 `too_many_packages`, so no pool target can be larger either. Real
# machines have a few thousand.
max_packages = 20000

# A REST request that takes longer than this many seconds is answered with 503 `timeout`.
request_timeout_secs = 30

# Retention, applied every retention_interval_secs: operations that finished (completed,
# failed, cancelled) and audit entries older than retention_days are deleted (0 keeps them
# forever); each pool keeps its newest max_target_history target revisions (0 keeps all);
# then snapshots no longer referenced by any kept target revision, endpoint state or
# operation are deleted. A snapshot still referenced is never deleted.
retention_days = 90
max_target_history = 1000
retention_interval_secs = 3600

# Rate limit per bearer token (admin or endpoint; keyed by the token's hash, so it applies
# before the token is even looked up): a bucket of rate_limit_burst requests refilled at
# rate_limit_per_minute. Requests without a bearer token (registration, health, metrics)
# share one bucket per client IP address with the anonymous_* values. Over the limit a
# request gets 429 `rate_limited` with Retry-After. A rate of 0 disables that limit.
rate_limit_per_minute = 6000
rate_limit_burst = 200
anonymous_rate_limit_per_minute = 600000
anonymous_rate_limit_burst = 20000

# A request whose bearer token is not valid (unknown, revoked, malformed) gets no bucket of
# its own: it is counted against its client IP, in the anonymous bucket and in this stricter
# one, so inventing a token per request does not get around the limits. A WebSocket message
# takes one request from its token's bucket, like a REST request.
invalid_token_rate_limit_per_minute = 600
invalid_token_rate_limit_burst = 60

# What one endpoint may store per hour, in MiB (new snapshots and deltas, operation results
# and progress, audit entries); over it, reports and results get 429 `rate_limited` and the
# daemon sends them again later. A full 1,500-package state is about 150 KiB, and a state
# already stored costs nothing. 0 = no limit.
storage_per_endpoint_mib_per_hour = 32

# Connections. A client has header_read_timeout_secs to send a request's headers (and to
# finish its TLS handshake), also between requests on a kept-alive connection. A connection
# that moves no byte either way for idle_timeout_secs is closed (WebSockets excepted: their
# liveness is offline_after_secs). At most max_connections are open at once, at most
# max_connections_per_ip from one client address (trusted_proxies are not limited per
# address), and at most max_tls_handshakes_per_ip of them still in their TLS handshake;
# a connection over a limit is closed at once. 10,000 endpoints hold 10,000 WebSockets: keep
# max_connections above the fleet size and below the file limit (LimitNOFILE in the systemd
# unit); behind one NAT address a fleet needs max_connections_per_ip above its size.
header_read_timeout_secs = 10
idle_timeout_secs = 60
max_connections = 20000
max_connections_per_ip = 1024
max_tls_handshakes_per_ip = 16

# When the write-ahead log grows past this many MiB, the writer checkpoints it completely
# (RESTART: it waits for readers to move on, so sustained reads cannot starve it), and the
# file is truncated back to this size (journal_size_limit). 0 = only the periodic passive
# checkpoints (the WAL may then grow without bound under sustained writes).
wal_checkpoint_mib = 64

# Milliseconds between rollout steps (offering the next ring, halting on failures, freeing
# slots, lifting holds, starting automatic syncs in pools with rings); results and admin
# actions also trigger a step at once.
rollout_step_ms = 5000

# Tests only: lets any admin set or advance this coordinator's clock (POST /api/v1/clock), so
# soak times and maintenance windows can be tested without waiting. Logs a warning at start.
# Never turn it on for a real pool.
test_clock = false

# The client IP address (audit log, rate limit) is the socket's peer. Only when the peer is
# one of these addresses (a reverse proxy) is the last address of X-Forwarded-For used.
trusted_proxies = []

# The pool repository: each kept target revision is served as a pacman repository at
# /api/v1/pools/ID/repo/REVISION (Server line for pacman.conf), with package files stored once
# by SHA-256 in `dir` (default: packages/ beside the database). A file the store lacks is
# fetched from `upstream` (pacman Server lines, $repo and $arch replaced) or `archive_url`
# (Arch Linux Archive layout) at most once, or uploaded by the endpoint that set the target.
# Files no kept revision refers to are dropped at each retention run. quota_bytes bounds the
# store (transfers reserve their size up front); max_file_size bounds each file, whatever a
# target's manifest states.
[repo]
# dir = "/var/lib/pacpool-coordinator/packages"
quota_bytes = 53687091200
upstream = []
# archive_url = "https://archive.archlinux.org/packages"
max_file_size = 4294967296
# Pools (by name) whose repositories anyone may read without a token, for machines that use
# them only as a pacman Server; uploads always need an endpoint token.
anonymous_pools = []

# The web dashboard at /dashboard/ on this listener (and its TLS): pools, endpoints, package
# versions, targets, the audit log and join tokens, live. Off unless enabled. Log in with the
# admin token; the browser then holds a session cookie (HttpOnly, SameSite=Strict, Secure
# under TLS) that ends after session_secs, at logout or when the coordinator restarts.
[dashboard]
enabled = false
session_secs = 43200

# TLS: serve https:// and wss:// on `listen` instead of plain HTTP. Both are PEM files: the
# certificate chain (server certificate first, then intermediates) and its private key
# (PKCS#8, RSA or EC), readable by the coordinator's user. Read once at start; restart the
# coordinator after renewing them. Environment: PACPOOL_COORDINATOR_TLS_CERT and
# PACPOOL_COORDINATOR_TLS_KEY (both together); flags: --tls-cert and --tls-key.
# [tls]
# cert = "/etc/pacpool/tls/coordinator.crt"
# key = "/etc/pacpool/tls/coordinator.key"
"#;

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Default `127.0.0.1:7300`.
    pub listen: SocketAddr,
    /// Default `/var/lib/pacpool-coordinator/coordinator.db`; a `postgres://` URL selects
    /// PostgreSQL.
    pub database: PathBuf,
    /// PostgreSQL: connections per replica. Default 16.
    pub database_pool_size: usize,
    /// PostgreSQL: a CA certificate trusted besides the system's.
    pub database_ca_file: Option<PathBuf>,
    /// Default `/var/lib/pacpool-coordinator/admin-token`; created (0600) when missing.
    pub admin_token_file: PathBuf,
    /// Hex SHA-256 of the admin token; when set, `admin_token_file` is ignored.
    pub admin_token_sha256: Option<String>,
    /// An explicit admin token (programmatic use, e.g. tests); never read from or written to
    /// a file, kept in memory only as its hash. Takes precedence over the other two.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// Default 90 seconds.
    pub offline_after_secs: u64,
    /// Default 8 MiB.
    pub body_limit: usize,
    /// Default 8 MiB.
    pub ws_message_limit: usize,
    /// Packages one reported state may hold; default 20,000.
    pub max_packages: usize,
    /// Default 30 seconds.
    pub request_timeout_secs: u64,
    /// Age in days after which finished operations and audit entries are deleted; default
    /// 90, 0 = never.
    pub retention_days: u64,
    /// Target revisions kept per pool (the newest); default 1000, 0 = all.
    pub max_target_history: u64,
    /// Seconds between retention runs; default 3600.
    pub retention_interval_secs: u64,
    /// Requests per minute refilled into each token's bucket; default 6000 (100 a second),
    /// 0 = no limit.
    pub rate_limit_per_minute: u32,
    /// Bucket size (the burst a token may send at once); default 200.
    pub rate_limit_burst: u32,
    /// The same per client IP for requests without a bearer token; default 600000 (10,000 a
    /// second: a whole fleet may register from behind one NAT address).
    pub anonymous_rate_limit_per_minute: u32,
    /// Default 20000.
    pub anonymous_rate_limit_burst: u32,
    /// Per client IP, for requests whose bearer token is not valid; default 600.
    pub invalid_token_rate_limit_per_minute: u32,
    /// Default 60.
    pub invalid_token_rate_limit_burst: u32,
    /// MiB one endpoint may store per hour; default 32, 0 = no limit.
    pub storage_per_endpoint_mib_per_hour: u32,
    /// Seconds a client has for a request's headers (and its TLS handshake); default 10.
    pub header_read_timeout_secs: u64,
    /// Seconds without a byte either way before a connection (not a WebSocket) is closed;
    /// default 60.
    pub idle_timeout_secs: u64,
    /// Open connections at once; default 20000.
    pub max_connections: usize,
    /// Open connections per client IP (trusted proxies excepted); default 1024.
    pub max_connections_per_ip: usize,
    /// Connections per client IP still in their TLS handshake; default 16.
    pub max_tls_handshakes_per_ip: usize,
    /// WAL size in MiB past which the writer checkpoints it completely; default 64, 0 = off.
    pub wal_checkpoint_mib: u64,
    /// Milliseconds between rollout steps; default 5000.
    pub rollout_step_ms: u64,
    /// Tests only: the clock may be set through the admin API; default false.
    pub test_clock: bool,
    /// Reverse proxies whose `X-Forwarded-For` is believed; default none.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve TLS with this certificate and key; default none (plain HTTP).
    pub tls: Option<TlsSettings>,
    /// `[repo]`: the pool repositories' package store and upstreams.
    pub repo: super::pool_repo::RepoSettings,
    /// `[dashboard]`: the web dashboard.
    pub dashboard: DashboardSettings,
}

/// `[dashboard]`: the web dashboard served under `/dashboard/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSettings {
    /// Serve it; default false.
    pub enabled: bool,
    /// Seconds a login session lasts; default 43200 (12 hours).
    pub session_secs: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            session_secs: 12 * 3600,
        }
    }
}

/// `[tls]`: the coordinator's certificate chain and private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            database: PathBuf::from("/var/lib/pacpool-coordinator/coordinator.db"),
            database_pool_size: 16,
            database_ca_file: None,
            admin_token_file: PathBuf::from("/var/lib/pacpool-coordinator/admin-token"),
            admin_token_sha256: None,
            admin_token: None,
            offline_after_secs: 90,
            body_limit: 8 * 1024 * 1024,
            ws_message_limit: 8 * 1024 * 1024,
            max_packages: crate::snapshot::DEFAULT_MAX_PACKAGES,
            request_timeout_secs: 30,
            retention_days: 90,
            max_target_history: 1000,
            retention_interval_secs: 3600,
            rate_limit_per_minute: 6000,
            rate_limit_burst: 200,
            anonymous_rate_limit_per_minute: 600_000,
            anonymous_rate_limit_burst: 20_000,
            invalid_token_rate_limit_per_minute: 600,
            invalid_token_rate_limit_burst: 60,
            storage_per_endpoint_mib_per_hour: 32,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 20_000,
            max_connections_per_ip: 1024,
            max_tls_handshakes_per_ip: 16,
            wal_checkpoint_mib: 64,
            rollout_step_ms: 5000,
            test_clock: false,
            trusted_proxies: Vec::new(),
            tls: None,
            repo: Default::default(),
            dashboard: DashboardSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "configuration file {path} is invalid: {source}\nto fix: compare it with `pacpool-coordinator default-config`"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

impl Settings {
    /// Parses a TOML configuration; missing keys keep their defaults, unknown keys are errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|source| SettingsError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_is_the_default() {
        let parsed = Settings::from_toml(EXAMPLE_CONFIG, Path::new("example")).unwrap();
        assert_eq!(parsed, Settings::default());
        assert!(Settings::from_toml("listne = \"x\"", Path::new("x")).is_err());
        let s = Settings {
            admin_token: Some(Secret("hunter2".into())),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn tls_section_parses_and_needs_both_files() {
        let s = Settings::from_toml(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            s.tls,
            Some(TlsSettings {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let e = Settings::from_toml("[tls]\ncert = \"/c.pem\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
        // The commented example, uncommented, is valid.
        let uncommented = EXAMPLE_CONFIG
            .replace("# [tls]", "[tls]")
            .replace("# cert =", "cert =")
            .replace("# key =", "key =");
        assert!(
            Settings::from_toml(&uncommented, Path::new("x"))
                .unwrap()
                .tls
                .is_some()
        );
    }
}
