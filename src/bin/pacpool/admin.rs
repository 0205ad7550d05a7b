//! `pacpool admin …`: the coordinator's admin API (`/api/v1`) from the command line.
//!
//! Each command is one REST call (two when a pool is given by name, a few for
//! `endpoints show --diff`). Output is an aligned table or a few `key: value` lines; `--json`
//! prints the API's JSON as it came, for scripts. Failures carry the API's error code and
//! message and map to the CLI's exit codes ([`crate::remote::exit`]). The admin token is
//! sent only in the `Authorization` header and never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use pacpool::display::clean;
use pacpool::localdb::Reason;
use pacpool::plan::Scope;
use pacpool::proto::{
    API_PREFIX, ApiError, AuditEntry, CreateJoinToken, CreatePool, EndpointState, EndpointStatus,
    JoinToken, Operation, OperationState, Page, Pool, PoolPolicy, RevertTargetRequest, StateChange,
    TargetInfo, UpdateEndpoint, UpdatePool,
};
use pacpool::snapshot::{PackageState, Snapshot, SnapshotHash};

use crate::remote::{Failure, counts_line, exit, utc};

const DEFAULT_URL: &str = "http://127.0.0.1:7300";
const DEFAULT_TOKEN_FILE: &str = "/var/lib/pacpool-coordinator/admin-token";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the coordinator's default request timeout (30 s), so its own answer wins.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// No `Debug`: the token must not end up in a log line.
#[derive(Args)]
#[command(
    after_help = "A POOL is a pool id or a pool name (a number is taken as an id).\n\
                  Exit codes: 0 done, 1 failed, 4 refused (token), 5 conflict, 7 coordinator unreachable."
)]
pub struct AdminArgs {
    /// The coordinator's base URL: https://HOST:PORT across a network (its certificate is
    /// checked against the system's trust store and --ca-file); http:// only on its own host
    #[arg(long, global = true, env = "PACPOOL_ADMIN_URL", default_value = DEFAULT_URL, value_name = "URL", help_heading = "Coordinator options")]
    url: String,
    /// A PEM file with the CA certificate(s) that signed the coordinator's certificate,
    /// trusted besides the system's (for a private CA or a self-signed certificate)
    #[arg(
        long,
        global = true,
        env = "PACPOOL_CA_FILE",
        value_name = "FILE",
        help_heading = "Coordinator options"
    )]
    ca_file: Option<PathBuf>,
    /// The admin token (visible to other local users in the process list: prefer
    /// --token-file or the environment variable)
    #[arg(
        long,
        global = true,
        env = "PACPOOL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Coordinator options"
    )]
    token: Option<String>,
    /// A file holding the admin token [default without --token:
    /// /var/lib/pacpool-coordinator/admin-token]
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Coordinator options"
    )]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Pools and their policies
    #[command(subcommand)]
    Pools(PoolsCmd),
    /// Join tokens: the secret an endpoint registers into a pool with
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
    /// Endpoints (registered machines) and their computed status
    #[command(subcommand)]
    Endpoints(EndpointsCmd),
    /// A pool's target revisions
    #[command(subcommand)]
    Targets(TargetsCmd),
    /// Syncs, set-as-latests and reverts on endpoints
    #[command(subcommand)]
    Operations(OperationsCmd),
    /// A pool's rollout: which waves (rings) have the newest target, their health gates
    #[command(subcommand)]
    Rollouts(RolloutsCmd),
    /// The audit log of state-changing requests, newest first
    Audit {
        /// Entries per page (1 to 1000) [default: the coordinator's, 100]
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
        /// Continue after this entry id (printed after a full page)
        #[arg(long)]
        cursor: Option<i64>,
    },
}

#[derive(Subcommand)]
enum PoolsCmd {
    /// List every pool
    List,
    /// Create a pool
    Create {
        name: String,
        /// The pool policy as TOML (see `pools show`) [default: the default policy]
        #[arg(long, value_name = "FILE")]
        policy_file: Option<PathBuf>,
    },
    /// Show a pool: target, endpoint count and policy
    Show { pool: String },
    /// Replace a pool's policy with one from a TOML file
    SetPolicy {
        pool: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Rename a pool
    Rename { pool: String, name: String },
    /// Delete an empty pool
    Delete { pool: String },
}

#[derive(Subcommand)]
enum JoinTokenCmd {
    /// Create a join token; it is printed once (stdout) and the coordinator keeps only its hash
    Create {
        pool: String,
        /// Seconds until it expires [default: 7 days]
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
        /// How many endpoints may register with it [default: unlimited until it expires]
        #[arg(long, value_name = "N")]
        max_uses: Option<u32>,
    },
}

#[derive(Subcommand)]
enum EndpointsCmd {
    /// List a pool's endpoints with their computed status
    List { pool: String },
    /// Show one endpoint
    Show {
        id: i64,
        /// Also list the package differences between its state and the pool target
        #[arg(long)]
        diff: bool,
    },
    /// Rename an endpoint
    Rename { id: i64, name: String },
    /// Move an endpoint to another pool (refused while it runs an operation)
    Move { id: i64, pool: String },
    /// Delete an endpoint and its token
    Remove { id: i64 },
    /// Revoke an endpoint's token; it must register again with a join token
    Revoke { id: i64 },
    /// An endpoint's state changes, newest first, and where each came from (a pacpool
    /// operation, or pacman run on the machine with its command line)
    History {
        id: i64,
        /// At most this many (1-1000, default 100)
        #[arg(long)]
        limit: Option<u16>,
        /// Continue after this change id (printed after a full page)
        #[arg(long, value_name = "ID")]
        cursor: Option<i64>,
    },
    /// Put an endpoint on hold: it is offered no newer target until the hold ends
    Hold {
        id: i64,
        /// When the hold ends: a UTC date (2026-12-20), a UTC time (2026-12-20T08:00:00Z) or
        /// Unix seconds
        #[arg(long, value_name = "WHEN")]
        until: String,
        /// Why (shown on the machine: "on hold until 2026-12-20: REASON")
        #[arg(long)]
        reason: String,
    },
    /// Lift an endpoint's hold now
    Unhold { id: i64 },
}

#[derive(Subcommand)]
enum RolloutsCmd {
    /// The newest rollout: its state and every wave's gate, computed from stored results
    Show { pool: String },
    /// Stop offering further waves and starting automatic syncs until resumed
    Pause { pool: String },
    /// Continue a paused rollout; for a halted one, accept its failures so far and let the
    /// next wave follow once the halted wave's soak time has passed
    Resume { pool: String },
    /// Halt it now (as failures over a gate would)
    Halt { pool: String },
}

#[derive(Subcommand)]
enum TargetsCmd {
    /// A pool's target revisions, newest first
    History { pool: String },
    /// Make an earlier revision's state the pool target again (as a new revision)
    Revert {
        pool: String,
        /// The revision to copy
        #[arg(long, value_name = "REVISION")]
        to: u64,
        /// The pool's current revision (0 when it has none); refused if the target moved
        #[arg(long, value_name = "REVISION")]
        expected: u64,
    },
}

#[derive(Subcommand)]
enum OperationsCmd {
    /// List the operations requested through the coordinator, newest first (syncs and
    /// reverts run on a machine itself are in its `pacpool history`)
    List {
        /// Only this pool's (as `endpoints list POOL` takes it)
        pool: Option<String>,
        /// Only this endpoint's
        #[arg(long, value_name = "ID")]
        endpoint: Option<i64>,
        /// Continue after this operation id (printed after a full page)
        #[arg(long, value_name = "ID")]
        cursor: Option<i64>,
        /// Operations per page (1 to 1000) [default: the coordinator's, 100]
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
    },
    /// Show one operation with its progress and result
    Show { id: i64 },
    /// Cancel an operation (at once when pending; a running one is asked to stop)
    Cancel { id: i64 },
}

pub async fn run(args: &AdminArgs) -> Result<u8, Failure> {
    let api = Api::new(args)?;
    match &args.command {
        AdminCommand::Pools(cmd) => pools(&api, cmd).await,
        AdminCommand::JoinToken(JoinTokenCmd::Create {
            pool,
            expires_in,
            max_uses,
        }) => join_token(&api, pool, *expires_in, *max_uses).await,
        AdminCommand::Endpoints(cmd) => endpoints(&api, cmd).await,
        AdminCommand::Targets(cmd) => targets(&api, cmd).await,
        AdminCommand::Operations(cmd) => operations(&api, cmd).await,
        AdminCommand::Rollouts(cmd) => rollouts(&api, cmd).await,
        AdminCommand::Audit { limit, cursor } => audit(&api, *limit, *cursor).await,
    }?;
    Ok(exit::SUCCESS)
}

fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP side

/// Where the token came from, for error messages (never the token itself).
enum TokenSource {
    Argument,
    File(PathBuf),
}

struct Api {
    client: reqwest::Client,
    /// The URL as given, without a trailing `/`.
    base: String,
    token: String,
    source: TokenSource,
    json: bool,
}

impl Api {
    fn new(args: &AdminArgs) -> Result<Self, Failure> {
        let (token, source) = match (&args.token, &args.token_file) {
            (Some(_), Some(_)) => {
                return Err(failure(
                    exit::FAILURE,
                    "give the admin token one way: --token (or PACPOOL_ADMIN_TOKEN) or --token-file, not both",
                ));
            }
            (Some(t), None) => (t.trim().to_owned(), TokenSource::Argument),
            (None, file) => {
                let path = file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
                (read_token(&path)?, TokenSource::File(path))
            }
        };
        let what = match &source {
            TokenSource::Argument => {
                "the admin token given by --token or PACPOOL_ADMIN_TOKEN".to_owned()
            }
            TokenSource::File(p) => format!("the admin token file {}", p.display()),
        };
        if token.is_empty() {
            return Err(failure(exit::FAILURE, format!("{what} is empty")));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(failure(
                exit::FAILURE,
                format!("{what} holds spaces or control characters: a token is one word"),
            ));
        }
        let base = args.url.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|e| {
            failure(
                exit::FAILURE,
                format!("--url {base:?} is not a URL ({e}): use e.g. {DEFAULT_URL}"),
            )
        })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A coordinator never redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pacpool-admin/", env!("CARGO_PKG_VERSION")));
        match url.scheme() {
            "http" => {}
            "https" => {
                let tls = pacpool::tls::client_config(args.ca_file.as_deref())
                    .map_err(|e| failure(exit::FAILURE, pacpool::display::std_error_line(&e)))?;
                builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&tls));
            }
            other => {
                return Err(failure(
                    exit::FAILURE,
                    format!(
                        "--url {base}: scheme {other:?} is not supported: use https://HOST:PORT (or http:// on the coordinator's host)"
                    ),
                ));
            }
        }
        let client = builder.build().map_err(|e| {
            failure(
                exit::FAILURE,
                format!(
                    "cannot set up the HTTP client: {}",
                    pacpool::display::std_error_line(&e)
                ),
            )
        })?;
        Ok(Self {
            client,
            base,
            token,
            source,
            json: args.json,
        })
    }

    /// Sends one request; a non-2xx answer becomes a [`Failure`] with the API's code and message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<reqwest::Response, Failure> {
        let mut url = reqwest::Url::parse(&format!("{}{API_PREFIX}{path}", self.base))
            .map_err(|e| failure(exit::FAILURE, format!("bad request URL: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.map_err(|e| self.transport(&e))?;
        Err(self.refusal(status, &text))
    }

    /// A request whose answer is JSON (or nothing, for `204 No Content`).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let resp = self.send(method, path, query, body).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            failure(
                exit::FAILURE,
                format!("{} answered {path} with something that is not JSON ({e}): is --url a pacpool coordinator?", self.base),
            )
        })
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, &[], None).await
    }

    /// Prints `value` as JSON when `--json` was given; returns whether it did.
    fn printed_json(&self, value: &Value) -> bool {
        if self.json {
            pacpool::outln!(
                "{}",
                serde_json::to_string_pretty(value).expect("a JSON value serializes")
            );
        }
        self.json
    }

    fn transport(&self, e: &reqwest::Error) -> Failure {
        if let Some(hint) = pacpool::tls::certificate_hint(e, "--ca-file FILE (or PACPOOL_CA_FILE)")
        {
            return failure(
                exit::FAILURE,
                format!("cannot connect to {}: {hint}", self.base),
            );
        }
        if e.is_connect() || e.is_timeout() {
            let what = if e.is_timeout() {
                "did not answer in time"
            } else {
                "cannot be reached"
            };
            failure(
                exit::UNREACHABLE,
                format!(
                    "the coordinator at {} {what} ({}): check --url (or PACPOOL_ADMIN_URL) and that pacpool-coordinator runs there",
                    self.base,
                    root_cause(e)
                ),
            )
        } else {
            failure(
                exit::FAILURE,
                format!(
                    "request to the coordinator at {} failed: {}",
                    self.base,
                    pacpool::display::std_error_line(e)
                ),
            )
        }
    }

    fn refusal(&self, status: StatusCode, text: &str) -> Failure {
        let code = match status.as_u16() {
            401 | 403 => exit::REFUSED,
            409 => exit::CONFLICT,
            _ => exit::FAILURE,
        };
        let Ok(err) = serde_json::from_str::<ApiError>(text) else {
            let excerpt: String = text.chars().take(200).collect();
            return failure(
                code,
                format!(
                    "the server at {} answered {status} without a pacpool error body ({:?}): is --url a pacpool coordinator?",
                    self.base,
                    excerpt.trim()
                ),
            );
        };
        // The coordinator's wording for an unknown token speaks to endpoints (register
        // again); an admin needs to hear about the admin token alone.
        if status == StatusCode::UNAUTHORIZED {
            let from = match &self.source {
                TokenSource::Argument => "--token / PACPOOL_ADMIN_TOKEN".to_owned(),
                TokenSource::File(p) => format!("the token file {}", p.display()),
            };
            return failure(
                code,
                format!(
                    "the coordinator at {} did not accept the admin token from {from}: pass the one in {DEFAULT_TOKEN_FILE} on the coordinator host with --token-file FILE (or --token / PACPOOL_ADMIN_TOKEN)",
                    self.base
                ),
            );
        }
        let mut message = format!("{}: {}", err.code, clean(&err.message));
        if let Some(hint) = cli_hint(&err.code) {
            message.push_str(&format!("\n{hint}"));
        }
        failure(code, message)
    }

    /// A pool given by id or by name.
    async fn pool_id(&self, pool: &str) -> Result<i64, Failure> {
        if let Ok(id) = pool.parse::<i64>() {
            return Ok(id);
        }
        let pools: Vec<Pool> = typed(self.get("/pools").await?, "pool list")?;
        pools
            .iter()
            .find(|p| p.name == pool)
            .map(|p| p.id)
            .ok_or_else(|| {
                failure(
                    exit::FAILURE,
                    format!(
                        "no pool named {:?}: list them with `pacpool admin pools list`",
                        clean(pool)
                    ),
                )
            })
    }
}

/// The CLI way to do what some API messages describe in HTTP terms.
fn cli_hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "pool_not_empty" => {
            "see them with `pacpool admin endpoints list POOL`; `endpoints move ID OTHER-POOL` or `endpoints remove ID` each first"
        }
        "revision_conflict" => {
            "see the revisions with `pacpool admin targets history POOL` and pass the current one as --expected"
        }
        "operation_active" => {
            "see it with `pacpool admin operations show ID`, or stop it with `pacpool admin operations cancel ID`"
        }
        _ => return None,
    })
}

fn read_token(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| {
            failure(
                exit::FAILURE,
                format!(
                    "cannot read the admin token from {}: {e}; pass --token-file FILE (or --token / PACPOOL_ADMIN_TOKEN), or run on the coordinator host",
                    path.display()
                ),
            )
        })
}

/// The innermost cause, e.g. `Connection refused (os error 111)`.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn typed<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|e| {
        failure(
            exit::FAILURE,
            format!("the coordinator sent a {what} this pacpool cannot read ({e}): are both the same version?"),
        )
    })
}

fn read_policy(path: &Path) -> Result<PoolPolicy, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        failure(
            exit::FAILURE,
            format!("cannot read policy file {}: {e}", path.display()),
        )
    })?;
    let policy = parse_pool_policy(&text).map_err(|e| {
        failure(
            exit::FAILURE,
            format!(
                "policy file {} is not a pool policy: {}\n(see `pacpool admin pools show POOL` for the form)",
                path.display(),
                e.trim_end()
            ),
        )
    })?;
    let dropped: Vec<&str> = pacpool::plan::DEFAULT_PROTECTED
        .iter()
        .copied()
        .filter(|d| !policy.plan.protected.iter().any(|p| p == d))
        .collect();
    if !dropped.is_empty() {
        pacpool::errln!(
            "pacpool: warning: the policy's `protected` leaves out {} of the default protections; \
             a machine still keeps what its own pacpoold.toml [policy] protects (those defaults \
             unless it says otherwise)",
            dropped.join(", ")
        );
    }
    Ok(policy)
}

/// A pool policy from TOML in either shape: the pool's own (`[plan]` with `scope`, `ignore`,
/// `protected`, `removal_cap`, plus `auto_sync`, `auto_sync_window`, `conflict_strategy`), or
/// with the `[plan]` keys at the top, as in `pacpoold.toml`'s `[policy]`, so that one example
/// works in both places.
fn parse_pool_policy(text: &str) -> Result<PoolPolicy, String> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut plan = match table.remove("plan") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err("`plan` must be a table: [plan]".into()),
        None => toml::Table::new(),
    };
    for key in ["scope", "ignore", "protected", "removal_cap"] {
        if let Some(v) = table.remove(key) {
            if plan.contains_key(key) {
                return Err(format!(
                    "`{key}` is given twice, at the top and in [plan]: keep one"
                ));
            }
            plan.insert(key.to_owned(), v);
        }
    }
    table.insert("plan".to_owned(), toml::Value::Table(plan));
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Output helpers

fn when(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".to_owned(), utc)
}

/// The serde (wire) name of a unit enum value, e.g. `in-sync`, `sync-to-latest`.
fn word<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".to_owned(),
    }
}

/// Columns aligned to the widest cell; a header starting with `>` is right-aligned.
struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&'static str]) -> Self {
        Self {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    fn render(&self) -> String {
        let head: Vec<String> = self
            .head
            .iter()
            .map(|h| h.trim_start_matches('>').to_owned())
            .collect();
        let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&head).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if self.head[i].starts_with('>') {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn print(&self) {
        pacpool::out!("{}", self.render());
    }
}

/// `key: value` lines with the values aligned.
fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in fields {
        pacpool::outln!("{:<width$} {}", format!("{k}:"), clean(v));
    }
}

fn next_page(next: Option<i64>) {
    if let Some(n) = next {
        pacpool::errln!("more: repeat with --cursor {n}");
    }
}

fn target_line(t: &TargetInfo) -> String {
    let mut s = format!(
        "revision {}, {} packages, set by {} at {} UTC (snapshot {})",
        t.revision,
        t.package_count,
        t.set_by,
        utc(t.set_at),
        t.snapshot.short()
    );
    if let Some(from) = t.reverted_from {
        s.push_str(&format!(", a copy of revision {from}"));
    }
    s
}

fn changes(s: &EndpointStatus) -> String {
    if s.current.is_none() || s.target_revision.is_none() || s.state == EndpointState::Unknown {
        "-".to_owned()
    } else {
        counts_line(&s.counts)
    }
}

// ---------------------------------------------------------------------------------------------
// Pools

async fn pools(api: &Api, cmd: &PoolsCmd) -> Result<(), Failure> {
    match cmd {
        PoolsCmd::List => {
            let v = api.get("/pools").await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let pools: Vec<Pool> = typed(v, "pool list")?;
            if pools.is_empty() {
                pacpool::outln!("no pools yet: create one with `pacpool admin pools create NAME`");
                return Ok(());
            }
            let mut t = Table::new(&[
                ">ID",
                "NAME",
                ">ENDPOINTS",
                ">TARGET",
                ">PACKAGES",
                "SET BY",
                "CREATED (UTC)",
            ]);
            for p in pools {
                let (rev, pkgs, by) = match &p.target {
                    Some(t) => (
                        format!("r{}", t.revision),
                        t.package_count.to_string(),
                        t.set_by.clone(),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                t.row(vec![
                    p.id.to_string(),
                    p.name,
                    p.endpoint_count.to_string(),
                    rev,
                    pkgs,
                    by,
                    utc(p.created_at),
                ]);
            }
            t.print();
        }
        PoolsCmd::Create { name, policy_file } => {
            let policy = match policy_file {
                Some(f) => read_policy(f)?,
                None => PoolPolicy::default(),
            };
            let body = serde_json::to_value(CreatePool {
                name: name.clone(),
                policy,
            })
            .expect("a request serializes");
            let v = api.call(Method::POST, "/pools", &[], Some(body)).await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let p: Pool = typed(v, "pool")?;
            pacpool::outln!(
                "created pool {} ({}); let machines join with `pacpool admin join-token create {}`",
                clean(&p.name),
                p.id,
                p.id
            );
        }
        PoolsCmd::Show { pool } => {
            let id = api.pool_id(pool).await?;
            let v = api.get(&format!("/pools/{id}")).await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let p: Pool = typed(v, "pool")?;
            print_fields(&[
                ("pool", format!("{} ({})", p.name, p.id)),
                ("created", format!("{} UTC", utc(p.created_at))),
                ("endpoints", p.endpoint_count.to_string()),
                (
                    "target",
                    p.target
                        .as_ref()
                        .map_or_else(|| "none yet".to_owned(), target_line),
                ),
            ]);
            let toml = toml::to_string(&p.policy).map_err(|e| {
                failure(
                    exit::FAILURE,
                    format!("cannot show the policy as TOML: {e}"),
                )
            })?;
            pacpool::outln!("policy (TOML, as `pools set-policy --file` takes it):");
            for line in toml.lines() {
                if line.is_empty() {
                    pacpool::outln!();
                } else {
                    pacpool::outln!("    {}", clean(line));
                }
            }
        }
        PoolsCmd::SetPolicy { pool, file } => {
            let policy = read_policy(file)?;
            let id = api.pool_id(pool).await?;
            let body = UpdatePool {
                name: None,
                policy: Some(policy),
            };
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/pools/{id}"),
                    &[],
                    Some(to_json(&body)),
                )
                .await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let p: Pool = typed(v, "pool")?;
            pacpool::outln!(
                "set the policy of pool {} ({}) from {}",
                clean(&p.name),
                p.id,
                file.display()
            );
        }
        PoolsCmd::Rename { pool, name } => {
            let id = api.pool_id(pool).await?;
            let body = UpdatePool {
                name: Some(name.clone()),
                policy: None,
            };
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/pools/{id}"),
                    &[],
                    Some(to_json(&body)),
                )
                .await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let p: Pool = typed(v, "pool")?;
            pacpool::outln!("pool {} is now named {}", p.id, clean(&p.name));
        }
        PoolsCmd::Delete { pool } => {
            let id = api.pool_id(pool).await?;
            let v = api
                .call(Method::DELETE, &format!("/pools/{id}"), &[], None)
                .await?;
            if !api.printed_json(&v) {
                pacpool::outln!("deleted pool {id}");
            }
        }
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("a request serializes")
}

// ---------------------------------------------------------------------------------------------
// Join tokens

async fn join_token(
    api: &Api,
    pool: &str,
    expires_in: Option<u64>,
    max_uses: Option<u32>,
) -> Result<(), Failure> {
    let id = api.pool_id(pool).await?;
    let body = CreateJoinToken {
        expires_in,
        max_uses,
    };
    let v = api
        .call(
            Method::POST,
            &format!("/pools/{id}/join-tokens"),
            &[],
            Some(to_json(&body)),
        )
        .await?;
    if api.printed_json(&v) {
        return Ok(());
    }
    let t: JoinToken = typed(v, "join token")?;
    // The token alone on stdout (`TOKEN=$(pacpool admin join-token create lab)`), the rest on
    // stderr.
    let uses = t
        .max_uses
        .map_or_else(|| "any number of".to_owned(), |n| format!("up to {n}"));
    pacpool::errln!(
        "join token {} for pool {}: {uses} registrations until {} UTC. It is shown only now; the coordinator keeps only its hash.",
        t.id,
        t.pool_id,
        utc(t.expires_at)
    );
    pacpool::outln!("{}", clean(&t.token));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Endpoints

async fn endpoints(api: &Api, cmd: &EndpointsCmd) -> Result<(), Failure> {
    match cmd {
        EndpointsCmd::List { pool } => {
            let id = api.pool_id(pool).await?;
            let v = api.get(&format!("/pools/{id}/endpoints")).await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let list: Vec<EndpointStatus> = typed(v, "endpoint list")?;
            if list.is_empty() {
                pacpool::outln!(
                    "pool {id} has no endpoints: give a machine a token from `pacpool admin join-token create {id}`"
                );
                return Ok(());
            }
            // A pool with rollout rings also shows each endpoint's wave and offered revision.
            let rings = list.iter().any(|e| e.rollout.is_some());
            let mut head = vec![
                ">ID",
                "NAME",
                "STATE",
                "CHANGES",
                "LAST SEEN (UTC)",
                ">TARGET",
                ">ACTIVE OP",
            ];
            if rings {
                head.extend([">WAVE", ">OFFERED"]);
            }
            let mut t = Table::new(&head);
            for e in &list {
                let mut row = vec![
                    e.id.to_string(),
                    e.name.clone(),
                    word(&e.state),
                    changes(e),
                    when(e.last_seen),
                    e.target_revision
                        .map_or_else(|| "-".into(), |r| format!("r{r}")),
                    e.active_operation
                        .map_or_else(|| "-".into(), |o| o.to_string()),
                ];
                if rings {
                    let (wave, offered) = match &e.rollout {
                        Some(r) => (
                            format!("{}/{}", r.wave, r.waves),
                            r.offered_revision
                                .map_or_else(|| "-".into(), |o| format!("r{o}")),
                        ),
                        None => ("-".into(), "-".into()),
                    };
                    row.extend([wave, offered]);
                }
                t.row(row);
            }
            t.print();
        }
        EndpointsCmd::Show { id, diff } => show_endpoint(api, *id, *diff).await?,
        EndpointsCmd::Rename { id, name } => {
            let body = UpdateEndpoint {
                name: Some(name.clone()),
                pool_id: None,
            };
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/endpoints/{id}"),
                    &[],
                    Some(to_json(&body)),
                )
                .await?;
            if !api.printed_json(&v) {
                let e: EndpointStatus = typed(v, "endpoint")?;
                pacpool::outln!("endpoint {} is now named {}", e.id, clean(&e.name));
            }
        }
        EndpointsCmd::Move { id, pool } => {
            let pool_id = api.pool_id(pool).await?;
            let body = UpdateEndpoint {
                name: None,
                pool_id: Some(pool_id),
            };
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/endpoints/{id}"),
                    &[],
                    Some(to_json(&body)),
                )
                .await?;
            if !api.printed_json(&v) {
                let e: EndpointStatus = typed(v, "endpoint")?;
                pacpool::outln!(
                    "endpoint {} ({}) is now in pool {}: {}",
                    e.id,
                    clean(&e.name),
                    e.pool_id,
                    word(&e.state)
                );
            }
        }
        EndpointsCmd::Remove { id } => {
            let v = api
                .call(Method::DELETE, &format!("/endpoints/{id}"), &[], None)
                .await?;
            if !api.printed_json(&v) {
                pacpool::outln!("removed endpoint {id}; its token no longer works");
            }
        }
        EndpointsCmd::History { id, limit, cursor } => {
            endpoint_history(api, *id, *limit, *cursor).await?
        }
        EndpointsCmd::Hold { id, until, reason } => {
            let body = pacpool::proto::SetHold {
                reason: reason.clone(),
                until: parse_until(until)?,
            };
            let v = api
                .call(
                    Method::POST,
                    &format!("/endpoints/{id}/hold"),
                    &[],
                    Some(to_json(&body)),
                )
                .await?;
            if !api.printed_json(&v) {
                let h: pacpool::proto::Hold = typed(v, "hold")?;
                pacpool::outln!(
                    "endpoint {id} is on hold until {} UTC{}: {}",
                    when(Some(h.until)),
                    h.revision
                        .map_or_else(String::new, |r| format!(" at revision {r}")),
                    clean(&h.reason)
                );
            }
        }
        EndpointsCmd::Unhold { id } => {
            let v = api
                .call(Method::DELETE, &format!("/endpoints/{id}/hold"), &[], None)
                .await?;
            if !api.printed_json(&v) {
                pacpool::outln!("endpoint {id} is no longer on hold");
            }
        }
        EndpointsCmd::Revoke { id } => {
            let v = api
                .call(Method::POST, &format!("/endpoints/{id}/revoke"), &[], None)
                .await?;
            if !api.printed_json(&v) {
                pacpool::outln!(
                    "revoked the token of endpoint {id}; it must register again with a join token"
                );
            }
        }
    }
    Ok(())
}

/// `2026-12-20` (UTC midnight), `2026-12-20T08:00:00Z` or Unix seconds.
pub fn parse_until(text: &str) -> Result<i64, Failure> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_second());
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>()
        && let Ok(z) = date.to_zoned_datetime(jiff::tz::TimeZone::UTC)
    {
        return Ok(z.timestamp().as_second());
    }
    Err(failure(
        exit::FAILURE,
        format!(
            "--until {text:?} is not a date: use 2026-12-20, 2026-12-20T08:00:00Z or Unix seconds"
        ),
    ))
}

fn print_rollout(r: &pacpool::proto::Rollout) {
    pacpool::outln!(
        "rollout of revision {}: {} ({} of {} waves offered)",
        r.revision,
        word(&r.state),
        r.rings_offered,
        r.waves.len()
    );
    if let Some(why) = &r.reason {
        pacpool::outln!("reason: {}", clean(why));
    }
    let mut t = Table::new(&[
        ">WAVE",
        "RING",
        "OFFERED (UTC)",
        "SOAK UNTIL (UTC)",
        ">ENDPOINTS",
        ">ONLINE",
        ">OK",
        ">FAILED",
        ">SYNCING",
        ">NEEDS",
        "GATE",
    ]);
    for (i, w) in r.waves.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            clean(&w.ring),
            when(w.offered_at),
            when(w.soak_until),
            w.endpoints.to_string(),
            w.online.to_string(),
            w.succeeded.to_string(),
            format!("{}/{}", w.failed, w.max_failures),
            w.syncing.to_string(),
            w.required.to_string(),
            match (w.gate_holds, w.waived) {
                (true, true) => "waived (resumed)",
                (true, false) => "passes",
                (false, _) => "not yet",
            }
            .to_owned(),
        ]);
    }
    t.print();
}

async fn rollouts(api: &Api, cmd: &RolloutsCmd) -> Result<(), Failure> {
    let (pool, action) = match cmd {
        RolloutsCmd::Show { pool } => (pool, None),
        RolloutsCmd::Pause { pool } => (pool, Some("pause")),
        RolloutsCmd::Resume { pool } => (pool, Some("resume")),
        RolloutsCmd::Halt { pool } => (pool, Some("halt")),
    };
    let id = api.pool_id(pool).await?;
    let v = match action {
        None => api.get(&format!("/pools/{id}/rollout")).await?,
        Some(a) => {
            api.call(Method::POST, &format!("/pools/{id}/rollout/{a}"), &[], None)
                .await?
        }
    };
    if api.printed_json(&v) {
        return Ok(());
    }
    let r: Option<pacpool::proto::Rollout> = typed(v, "rollout")?;
    match r {
        Some(r) => print_rollout(&r),
        None => pacpool::outln!(
            "pool {id} has no rollout: one starts when a target is set while the pool policy has [[rollout.rings]]"
        ),
    }
    Ok(())
}

async fn show_endpoint(api: &Api, id: i64, diff: bool) -> Result<(), Failure> {
    let v = api.get(&format!("/endpoints/{id}")).await?;
    if api.json && !diff {
        api.printed_json(&v);
        return Ok(());
    }
    let e: EndpointStatus = typed(v.clone(), "endpoint")?;
    let pool: Pool = typed(api.get(&format!("/pools/{}", e.pool_id)).await?, "pool")?;
    let delta = match (diff, e.current, &pool.target) {
        (true, Some(current), Some(target)) => {
            let cur = snapshot(api, &current).await?;
            let tgt = snapshot(api, &target.snapshot).await?;
            Some((cur, tgt))
        }
        _ => None,
    };
    if api.json {
        let value = json!({
            "endpoint": v,
            "target": pool.target,
            "delta": delta.as_ref().map(|(c, t)| c.diff(t)),
        });
        api.printed_json(&value);
        return Ok(());
    }
    // Who made the endpoint's current state (its newest recorded change).
    let last: Option<StateChange> = api
        .call(
            Method::GET,
            &format!("/endpoints/{id}/changes"),
            &[("limit", "1".to_owned())],
            None,
        )
        .await
        .ok()
        .and_then(|v| typed::<Page<StateChange>>(v, "state changes").ok())
        .and_then(|p| p.items.into_iter().next())
        .filter(|c| Some(c.state) == e.current);
    print_fields(&[
        ("endpoint", format!("{} ({})", e.name, e.id)),
        ("pool", format!("{} ({})", pool.name, pool.id)),
        ("state", word(&e.state)),
        ("changes", changes(&e)),
        (
            "current",
            e.current
                .map_or_else(|| "never reported".to_owned(), |h| h.short()),
        ),
        (
            "target",
            pool.target
                .as_ref()
                .map_or_else(|| "none yet".to_owned(), target_line),
        ),
        (
            "last seen",
            e.last_seen
                .map_or_else(|| "never".to_owned(), |s| format!("{} UTC", utc(s))),
        ),
        (
            "active op",
            e.active_operation
                .map_or_else(|| "none".to_owned(), |o| o.to_string()),
        ),
        (
            "changed by",
            last.map_or_else(
                || "not reported".to_owned(),
                |c| match c.source {
                    Some(s) => format!("{s} ({} UTC)", utc(c.at)),
                    None => format!("not said by the endpoint ({} UTC)", utc(c.at)),
                },
            ),
        ),
    ]);
    if let Some(r) = &e.rollout {
        print_fields(&[("rollout", clean(&r.message))]);
    }
    if !diff {
        return Ok(());
    }
    match delta {
        Some((cur, tgt)) => print_diff(&cur, &tgt, &pool.policy),
        None if e.current.is_none() => {
            pacpool::outln!("no diff: the endpoint has not reported its state yet")
        }
        None => pacpool::outln!("no diff: the pool has no target yet"),
    }
    Ok(())
}

async fn snapshot(api: &Api, hash: &SnapshotHash) -> Result<Snapshot, Failure> {
    let resp = api
        .send(
            Method::GET,
            &format!("/snapshots/{}", hash.to_hex()),
            &[],
            None,
        )
        .await?;
    let text = resp.text().await.map_err(|e| api.transport(&e))?;
    let snap = Snapshot::decode(&text).map_err(|e| {
        failure(
            exit::FAILURE,
            format!(
                "the coordinator sent an unreadable snapshot {}: {e}",
                hash.short()
            ),
        )
    })?;
    if snap.hash() != *hash {
        return Err(failure(
            exit::FAILURE,
            format!(
                "the coordinator sent snapshot {} for {}",
                snap.hash().short(),
                hash.short()
            ),
        ));
    }
    Ok(snap)
}

/// What a sync would change on the endpoint, under the pool's policy (ignore globs, scope,
/// protected packages); the coordinator's counts stay authoritative.
fn print_diff(current: &Snapshot, target: &Snapshot, policy: &PoolPolicy) {
    let compiled = policy.plan.compile().ok();
    let mut pairs: BTreeMap<&str, (Option<&PackageState>, Option<&PackageState>)> = BTreeMap::new();
    for p in current.packages() {
        pairs.entry(p.name.as_str()).or_default().0 = Some(p);
    }
    for p in target.packages() {
        pairs.entry(p.name.as_str()).or_default().1 = Some(p);
    }
    let explicit_only = policy.plan.scope == Scope::ExplicitOnly;
    let mut t = Table::new(&["CHANGE", "PACKAGE", "FROM", "TO"]);
    let mut ignored = Vec::new();
    for (name, (cur, tgt)) in pairs {
        if compiled.as_ref().is_some_and(|c| c.is_ignored(name)) {
            if cur != tgt {
                ignored.push(name);
            }
            continue;
        }
        let is_explicit =
            |p: Option<&PackageState>| p.is_some_and(|p| p.reason == Reason::Explicit);
        if explicit_only && !is_explicit(cur) && !is_explicit(tgt) {
            continue;
        }
        let (change, from, to) = match (cur, tgt) {
            (None, Some(t)) => ("install", "-".to_owned(), t.version.as_str().to_owned()),
            (Some(c), None) => {
                let kept = compiled.as_ref().is_some_and(|p| p.is_protected(name));
                (
                    if kept { "keep (protected)" } else { "remove" },
                    c.version.as_str().to_owned(),
                    "-".to_owned(),
                )
            }
            (Some(c), Some(t)) => {
                match pacpool::version::vercmp(c.version.as_str(), t.version.as_str()) {
                    std::cmp::Ordering::Less => (
                        "upgrade",
                        c.version.as_str().to_owned(),
                        t.version.as_str().to_owned(),
                    ),
                    std::cmp::Ordering::Greater => (
                        "downgrade",
                        c.version.as_str().to_owned(),
                        t.version.as_str().to_owned(),
                    ),
                    std::cmp::Ordering::Equal if c.reason != t.reason => (
                        "reason",
                        c.reason.as_str().to_owned(),
                        t.reason.as_str().to_owned(),
                    ),
                    std::cmp::Ordering::Equal => continue,
                }
            }
            (None, None) => continue,
        };
        t.row(vec![change.to_owned(), name.to_owned(), from, to]);
    }
    if t.rows.is_empty() {
        pacpool::outln!("no package differences from the target under the pool policy");
    } else {
        pacpool::outln!("a sync would change:");
        t.print();
    }
    if !ignored.is_empty() {
        pacpool::outln!("ignored by the pool policy: {}", clean(&ignored.join(" ")));
    }
}

// ---------------------------------------------------------------------------------------------
// Targets

async fn targets(api: &Api, cmd: &TargetsCmd) -> Result<(), Failure> {
    match cmd {
        TargetsCmd::History { pool } => {
            let id = api.pool_id(pool).await?;
            let v = api.get(&format!("/pools/{id}/targets")).await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let list: Vec<TargetInfo> = typed(v, "target list")?;
            if list.is_empty() {
                pacpool::outln!(
                    "pool {id} has no target yet: it gets one when an endpoint runs `pacpool set-latest`"
                );
                return Ok(());
            }
            let mut t = Table::new(&[
                ">REVISION",
                "SNAPSHOT",
                ">PACKAGES",
                "SET BY",
                "SET AT (UTC)",
                "NOTE",
            ]);
            for (i, r) in list.iter().enumerate() {
                let mut note = Vec::new();
                if i == 0 {
                    note.push("current".to_owned());
                }
                if let Some(from) = r.reverted_from {
                    note.push(format!("copy of r{from}"));
                }
                t.row(vec![
                    r.revision.to_string(),
                    r.snapshot.short(),
                    r.package_count.to_string(),
                    r.set_by.clone(),
                    utc(r.set_at),
                    note.join(", "),
                ]);
            }
            t.print();
        }
        TargetsCmd::Revert { pool, to, expected } => {
            let id = api.pool_id(pool).await?;
            let body = RevertTargetRequest {
                to_revision: *to,
                expected_revision: *expected,
            };
            let v = api
                .call(
                    Method::POST,
                    &format!("/pools/{id}/target/revert"),
                    &[],
                    Some(to_json(&body)),
                )
                .await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let t: TargetInfo = typed(v, "target")?;
            pacpool::outln!("pool {id} target is now {}", target_line(&t));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Operations

fn op_detail(o: &Operation) -> String {
    if let Some(r) = &o.result {
        let first = r.message.lines().next().unwrap_or("");
        let mut s: String = first.chars().take(60).collect();
        if first.chars().count() > 60 {
            s.push('…');
        }
        if !r.failures.is_empty() {
            s.push_str(&format!(" ({} package failures)", r.failures.len()));
        }
        s
    } else if let Some(p) = &o.progress {
        format!("{} {}%", p.stage, p.percent)
    } else {
        String::new()
    }
}

async fn operations(api: &Api, cmd: &OperationsCmd) -> Result<(), Failure> {
    match cmd {
        OperationsCmd::List {
            pool,
            endpoint,
            cursor,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(p) = pool {
                query.push(("pool", api.pool_id(p).await?.to_string()));
            }
            if let Some(e) = endpoint {
                query.push(("endpoint", e.to_string()));
            }
            if let Some(c) = cursor {
                query.push(("cursor", c.to_string()));
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            let v = api.call(Method::GET, "/operations", &query, None).await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let page: Page<Operation> = typed(v, "operation list")?;
            if page.items.is_empty() {
                pacpool::outln!(
                    "no operations requested through the coordinator (syncs and reverts run on a machine itself are in its `pacpool history`)"
                );
                return Ok(());
            }
            let mut t = Table::new(&[
                ">ID",
                ">ENDPOINT",
                ">POOL",
                "KIND",
                "STATE",
                "CREATED (UTC)",
                "UPDATED (UTC)",
                "DETAIL",
            ]);
            for o in &page.items {
                t.row(vec![
                    o.id.to_string(),
                    o.endpoint_id.to_string(),
                    o.pool_id.to_string(),
                    word(&o.kind),
                    word(&o.state),
                    utc(o.created_at),
                    utc(o.updated_at),
                    op_detail(o),
                ]);
            }
            t.print();
            next_page(page.next);
        }
        OperationsCmd::Show { id } => {
            let v = api.get(&format!("/operations/{id}")).await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let o: Operation = typed(v, "operation")?;
            print_operation(&o);
        }
        OperationsCmd::Cancel { id } => {
            let v = api
                .call(Method::POST, &format!("/operations/{id}/cancel"), &[], None)
                .await?;
            if api.printed_json(&v) {
                return Ok(());
            }
            let o: Operation = typed(v, "operation")?;
            if o.state == OperationState::Cancelled {
                pacpool::outln!("cancelled operation {}", o.id);
            } else {
                pacpool::outln!(
                    "asked endpoint {} to stop operation {} (now {}); it stops before pacman starts, or finishes",
                    o.endpoint_id,
                    o.id,
                    word(&o.state)
                );
            }
        }
    }
    Ok(())
}

fn print_operation(o: &Operation) {
    let mut fields = vec![
        ("operation", o.id.to_string()),
        ("kind", word(&o.kind)),
        ("state", word(&o.state)),
        ("endpoint", o.endpoint_id.to_string()),
        ("pool", o.pool_id.to_string()),
        ("created", format!("{} UTC", utc(o.created_at))),
        ("updated", format!("{} UTC", utc(o.updated_at))),
    ];
    if let Some(h) = &o.to_snapshot {
        fields.push(("revert to", h.short()));
    }
    if let Some(key) = &o.idempotency_key {
        fields.push(("key", key.clone()));
    }
    if let Some(p) = &o.progress {
        let mut s = format!("{} {}%", p.stage, p.percent);
        if let Some(c) = &p.current {
            s.push_str(&format!(" ({c})"));
        }
        fields.push(("progress", s));
    }
    if let Some(r) = &o.result {
        fields.push(("result", format!("{}: {}", word(&r.state), r.message)));
        if let Some(h) = &r.snapshot {
            fields.push(("state after", h.short()));
        }
    }
    print_fields(&fields);
    if let Some(r) = &o.result
        && !r.failures.is_empty()
    {
        pacpool::outln!("package failures:");
        let mut t = Table::new(&["PACKAGE", "REASON"]);
        for f in &r.failures {
            t.row(vec![f.name.clone(), f.reason.clone()]);
        }
        t.print();
    }
}

async fn endpoint_history(
    api: &Api,
    id: i64,
    limit: Option<u16>,
    cursor: Option<i64>,
) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(l) = limit {
        query.push(("limit", l.to_string()));
    }
    if let Some(c) = cursor {
        query.push(("cursor", c.to_string()));
    }
    let v = api
        .call(
            Method::GET,
            &format!("/endpoints/{id}/changes"),
            &query,
            None,
        )
        .await?;
    if api.printed_json(&v) {
        return Ok(());
    }
    let page: Page<StateChange> = typed(v, "state changes")?;
    if page.items.is_empty() {
        pacpool::outln!("endpoint {id} has reported no state change yet");
        return Ok(());
    }
    let mut t = Table::new(&[">ID", "AT (UTC)", "STATE", ">PACKAGES", "CHANGED BY"]);
    for c in page.items {
        t.row(vec![
            c.id.to_string(),
            utc(c.at),
            c.state.short(),
            c.package_count.to_string(),
            c.source.map_or_else(|| "-".into(), |s| s.to_string()),
        ]);
    }
    t.print();
    next_page(page.next);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Audit

async fn audit(api: &Api, limit: Option<u16>, cursor: Option<i64>) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(l) = limit {
        query.push(("limit", l.to_string()));
    }
    if let Some(c) = cursor {
        query.push(("cursor", c.to_string()));
    }
    let v = api.call(Method::GET, "/audit", &query, None).await?;
    if api.printed_json(&v) {
        return Ok(());
    }
    let page: Page<AuditEntry> = typed(v, "audit page")?;
    if page.items.is_empty() {
        pacpool::outln!("the audit log is empty");
        return Ok(());
    }
    let mut t = Table::new(&[
        ">ID", "AT (UTC)", "ACTOR", "ACTION", "SUBJECT", "PEER", "DETAIL",
    ]);
    for e in page.items {
        t.row(vec![
            e.id.to_string(),
            utc(e.at),
            e.actor,
            e.action,
            e.subject.unwrap_or_else(|| "-".into()),
            e.peer.unwrap_or_else(|| "-".into()),
            e.detail.unwrap_or_default(),
        ]);
    }
    t.print();
    next_page(page.next);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_cleans() {
        let mut t = Table::new(&[">ID", "NAME", "NOTE"]);
        t.row(vec!["7".into(), "a\u{1b}[31m".into(), "x".into()]);
        t.row(vec!["12".into(), "bb".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID  NAME         NOTE\n 7  a\\u{1b}[31m  x\n12  bb\n"
        );
    }

    #[test]
    fn default_policy_round_trips_through_toml() {
        let policy = PoolPolicy::default();
        let text = toml::to_string(&policy).unwrap();
        assert_eq!(toml::from_str::<PoolPolicy>(&text).unwrap(), policy);
    }
}
