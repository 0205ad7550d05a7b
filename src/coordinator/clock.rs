//! The coordinator's one clock: every time the coordinator stores or compares (last seen,
//! operations, targets, rollouts, holds, windows) comes from [`Clock::now`].
//!
//! In test mode (`test_clock = true` in the settings, refused unless set explicitly, with a
//! warning at start) an admin may set or advance it (`POST /api/v1/clock`), so tests of soak
//! times and maintenance windows never sleep. Otherwise it is the system time.

use std::sync::atomic::{AtomicI64, Ordering};

pub struct Clock {
    /// Seconds added to the system time (test mode only; always 0 otherwise).
    offset: AtomicI64,
    adjustable: bool,
}

impl Clock {
    pub fn new(adjustable: bool) -> Self {
        if adjustable {
            tracing::warn!(
                "test_clock is on: any admin may move this coordinator's clock; never use it outside tests"
            );
        }
        Self {
            offset: AtomicI64::new(0),
            adjustable,
        }
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        super::db::now() + self.offset.load(Ordering::Relaxed)
    }

    pub fn adjustable(&self) -> bool {
        self.adjustable
    }

    /// Sets (`set`) or moves forward (`advance`) the clock; `false` when not in test mode.
    /// The clock never goes backwards: a `set` to the past is ignored.
    pub fn change(&self, set: Option<i64>, advance: Option<i64>) -> bool {
        if !self.adjustable {
            return false;
        }
        if let Some(t) = set {
            let wanted = t - super::db::now();
            self.offset.fetch_max(wanted, Ordering::Relaxed);
        }
        if let Some(d) = advance {
            self.offset.fetch_add(d.max(0), Ordering::Relaxed);
        }
        true
    }
}
