//! pacpool keeps pools of Arch Linux machines on the same package versions.
//!
//! # Layout
//! The library holds everything; the binaries in `src/bin/` only parse arguments, set up
//! logging and call into it.
//!
//! Package-state engine (no I/O beyond reading pacman's files):
//! - [`version`]: `vercmp`, a port of libalpm's version comparison.
//! - [`names`]: validated package names, versions, repository names and architectures.
//! - [`desc`]: the `%KEY%` format of local and sync database entries.
//! - [`localdb`]: reads `DBPath/local`.
//! - [`syncdb`]: reads `DBPath/sync/*.db` (gzip, zstd or plain tar).
//! - [`cache`]: lists package files in the cache directories.
//! - [`pacman_conf`]: reads `pacman.conf` (with `Include`) for repositories and paths.
//! - [`snapshot`]: canonical package sets with a content hash, and deltas between them.
//! - [`plan`]: current vs target state into ordered actions, conflicts and a status.
//! - [`preflight`]: sizes, free space, reboot rules, held-back packages and `.pacnew` files of a plan.
//! - [`drift`]: where a state change came from (a pacpool operation, or pacman runs read
//!   from pacman.log).
//! - [`machine`]: this machine's state from pacman's files, located via pacman.conf.
//! - [`manifest`]: what each package file of a target is (repository, size, digest,
//!   signature), recorded by the endpoint that sets the target.
//! - [`trust`]: the rule every file passes before `pacman -U`: pacman's own `SigLevel` and
//!   keyring for the repository the package comes from.
//!
//! Wire types:
//! - [`proto`]: coordinator REST bodies and WebSocket messages (shared by all programs).
//!
//! Programs (library-first; `src/bin/` only parses arguments):
//! - [`daemon`]: pacpoold, the endpoint daemon, and the client side of its socket.
//! - [`coordinator`]: the coordinator server.
//!
//! Transport:
//! - [`tls`]: rustls configurations for the coordinator (server) and its clients.
//!
//! Output:
//! - [`display`]: error chains on one line, UTC timestamps, terminal-safe text, and output
//!   that ends quietly on a closed pipe, for every program.
//! - [`logging`]: log lines coloured only on a terminal, with syslog priorities for journald.
//! - [`words`]: counted nouns ("1 package", "2 packages"), for every program.
//!
//! Local state:
//! - [`store`]: the SQLite snapshot history.
//! - [`snapper`]: snapper pre/post snapshots of the file system around an operation.

pub mod apply;
pub mod cache;
pub mod coordinator;
pub mod daemon;
pub mod desc;
pub mod display;
pub mod drift;
pub mod exec;
pub mod localdb;
pub mod logging;
pub mod machine;
pub mod manifest;
pub mod names;
pub mod pacman_conf;
pub mod plan;
pub mod preflight;
pub mod proto;
pub mod snapper;
pub mod snapshot;
pub mod store;
pub mod syncdb;
pub mod tls;
#[cfg(feature = "tray")]
pub mod tray;
pub mod trust;
pub mod version;
pub mod words;
