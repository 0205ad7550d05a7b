//! `pacpool-tray`: the desktop tray icon (feature `tray`).
//!
//! Architecture Invariant: the tray talks only to pacpoold's socket
//! ([`crate::daemon::client`]); it never touches SQLite, pacman or the coordinator.
//!
//! - [`icons`]: the state icons (shapes rasterized here, exported as SVG/PNG to `assets/`).
//! - [`model`]: status → icon, tooltip and menu labels; events → de-duplicated notifications.
//! - [`worker`]: the background thread (tokio): the event subscription with reconnects, the
//!   menu's actions, notifications.
//! - [`app`]: the main-thread event loop (tao + tray-icon).
//! - [`lock`]: one instance per session.

pub mod app;
pub mod icons;
pub mod lock;
pub mod model;
pub mod worker;
