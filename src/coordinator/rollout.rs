//! Rollout rules, pure: which ring an endpoint is in, whether a ring's maintenance window is
//! open (and when it opens next), what a ring's health gate needs, and the one-line texts
//! endpoints and admins see. The stored state is in `rollout_db`, the periodic step that
//! applies these rules in `rollout_run`.

use globset::{Glob, GlobSet, GlobSetBuilder};
use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;

use crate::proto::{Gate, Ring, RolloutPolicy, Window};

/// Most rings a pool may have, and most name patterns per ring.
pub const MAX_RINGS: usize = 16;
pub const MAX_RING_PATTERNS: usize = 1000;
pub const MAX_WINDOWS: usize = 32;

/// Matches endpoint names to rings: the first ring whose names or globs match; otherwise
/// the last ring.
pub struct RingMatcher {
    sets: Vec<GlobSet>,
}

impl RingMatcher {
    pub fn new(policy: &RolloutPolicy) -> Result<Self, String> {
        let mut sets = Vec::with_capacity(policy.rings.len());
        for ring in &policy.rings {
            let mut b = GlobSetBuilder::new();
            for p in &ring.endpoints {
                let g = Glob::new(p)
                    .map_err(|e| format!("ring {:?}: endpoint pattern {p:?}: {e}", ring.name))?;
                b.add(g);
            }
            sets.push(
                b.build()
                    .map_err(|e| format!("ring {:?}: {e}", ring.name))?,
            );
        }
        Ok(Self { sets })
    }

    /// The ring (0-based) of endpoint `name`; `None` when the policy has no rings.
    pub fn ring_of(&self, name: &str) -> Option<usize> {
        if self.sets.is_empty() {
            return None;
        }
        let last = self.sets.len() - 1;
        Some(
            self.sets
                .iter()
                .position(|s| s.is_match(name))
                .unwrap_or(last),
        )
    }
}

/// Checks a rollout policy; the message says what to fix.
pub fn check(policy: &RolloutPolicy) -> Result<(), String> {
    if policy.rings.len() > MAX_RINGS {
        return Err(format!("a rollout has at most {MAX_RINGS} rings"));
    }
    let mut names = std::collections::HashSet::new();
    for ring in &policy.rings {
        if ring.name.is_empty()
            || ring.name.len() > 64
            || !ring
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "ring name {:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.'",
                ring.name
            ));
        }
        if !names.insert(ring.name.as_str()) {
            return Err(format!(
                "ring name {:?} is used twice: give each ring its own name",
                ring.name
            ));
        }
        if ring.endpoints.len() > MAX_RING_PATTERNS || ring.endpoints.iter().any(|p| p.len() > 255)
        {
            return Err(format!(
                "ring {:?}: use at most {MAX_RING_PATTERNS} endpoint patterns of at most 255 bytes",
                ring.name
            ));
        }
        if ring.gate.min_success_percent > 100 {
            return Err(format!(
                "ring {:?}: min_success_percent must be 0 to 100",
                ring.name
            ));
        }
        if ring.max_concurrent == Some(0) {
            return Err(format!(
                "ring {:?}: max_concurrent 0 would never sync: leave it out for no limit",
                ring.name
            ));
        }
        if ring.windows.len() > MAX_WINDOWS {
            return Err(format!(
                "ring {:?}: at most {MAX_WINDOWS} windows",
                ring.name
            ));
        }
        zone(ring).map_err(|e| format!("ring {:?}: {e}", ring.name))?;
        for w in &ring.windows {
            parse_window(w).map_err(|e| format!("ring {:?}: {e}", ring.name))?;
        }
    }
    RingMatcher::new(policy)?;
    Ok(())
}

fn zone(ring: &Ring) -> Result<TimeZone, String> {
    match ring.timezone.as_deref() {
        None | Some("UTC") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| {
            format!("time zone {name:?} is unknown ({e}): use an IANA name such as Europe/Berlin")
        }),
    }
}

/// A window as (days as Monday-zero offsets, from and to in minutes of the day).
struct Parsed {
    days: Vec<i8>,
    from: i32,
    to: i32,
}

fn hhmm(s: &str) -> Result<i32, String> {
    let bad = || format!("{s:?} is not a time of day HH:MM");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_window(w: &Window) -> Result<Parsed, String> {
    let mut days = Vec::new();
    for d in &w.days {
        let lower = d.to_ascii_lowercase();
        let i = DAYS
            .iter()
            .position(|x| lower.starts_with(x) && lower.len() <= 9)
            .ok_or_else(|| {
                format!("{d:?} is not a weekday: use mon, tue, wed, thu, fri, sat, sun")
            })?;
        days.push(i as i8);
    }
    if days.is_empty() {
        days = (0..7).collect();
    }
    Ok(Parsed {
        days,
        from: hhmm(&w.from)?,
        to: hhmm(&w.to)?,
    })
}

/// Whether `now` (Unix seconds) is inside one of the ring's windows (no windows: always).
/// A window whose `to` is not after `from` runs past midnight into the next day (equal: 24 h).
pub fn in_window(ring: &Ring, now: i64) -> bool {
    if ring.windows.is_empty() {
        return true;
    }
    let (Ok(tz), Ok(ts)) = (zone(ring), Timestamp::from_second(now)) else {
        return false;
    };
    let z = ts.to_zoned_datetime(tz);
    let day = z.weekday().to_monday_zero_offset();
    let minute = i32::from(z.hour()) * 60 + i32::from(z.minute());
    ring.windows
        .iter()
        .filter_map(|w| parse_window(w).ok())
        .any(|w| {
            if w.from < w.to {
                w.days.contains(&day) && (w.from..w.to).contains(&minute)
            } else {
                (w.days.contains(&day) && minute >= w.from)
                    || (w.days.contains(&((day + 6) % 7)) && minute < w.to)
            }
        })
}

/// The first moment at or after `at` when one of the ring's windows is open (`at` itself
/// when no windows or inside one); `None` when nothing opens within 8 days.
pub fn next_open(ring: &Ring, at: i64) -> Option<i64> {
    if in_window(ring, at) {
        return Some(at);
    }
    let tz = zone(ring).ok()?;
    let start = Timestamp::from_second(at)
        .ok()?
        .to_zoned_datetime(tz.clone());
    let mut date: Date = start.date();
    let mut best: Option<i64> = None;
    for _ in 0..9 {
        let day = date.weekday().to_monday_zero_offset();
        for w in ring.windows.iter().filter_map(|w| parse_window(w).ok()) {
            if !w.days.contains(&day) {
                continue;
            }
            let dt = date.at((w.from / 60) as i8, (w.from % 60) as i8, 0, 0);
            if let Ok(z) = dt.to_zoned_datetime(tz.clone()) {
                let t = z.timestamp().as_second();
                if t > at && best.is_none_or(|b| t < b) {
                    best = Some(t);
                }
            }
        }
        if best.is_some() {
            return best;
        }
        date = date.tomorrow().ok()?;
    }
    best
}

/// "Saturday 02:00 UTC" (or the ring's zone's abbreviation) for `t`.
pub fn when(ring: &Ring, t: i64) -> String {
    let tz = zone(ring).unwrap_or(TimeZone::UTC);
    match Timestamp::from_second(t) {
        Ok(ts) => {
            let z = ts.to_zoned_datetime(tz);
            let day = match z.weekday() {
                Weekday::Monday => "Monday",
                Weekday::Tuesday => "Tuesday",
                Weekday::Wednesday => "Wednesday",
                Weekday::Thursday => "Thursday",
                Weekday::Friday => "Friday",
                Weekday::Saturday => "Saturday",
                Weekday::Sunday => "Sunday",
            };
            format!(
                "{day} {} {:02}:{:02} {}",
                z.date(),
                z.hour(),
                z.minute(),
                ring.timezone.as_deref().unwrap_or("UTC")
            )
        }
        Err(_) => t.to_string(),
    }
}

/// A UTC date for hold texts (`2026-12-20`).
pub fn date_utc(t: i64) -> String {
    Timestamp::from_second(t)
        .map(|ts| ts.to_zoned_datetime(TimeZone::UTC).date().to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// What a ring's gate sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounts {
    /// Online endpoints of the ring that have something to sync (an endpoint already at the
    /// revision without a sync is left out).
    pub online: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// Successes the gate needs: at least `min_success`, and at least `min_success_percent` % of
/// the online endpoints (rounded up). `min_success` is never lowered to what the ring has: a
/// ring of 2 with `min_success = 3` does not pass (membership changes, so the policy check
/// cannot refuse it; `rollouts show` shows what is needed).
pub fn required(gate: &Gate, online: u64) -> u64 {
    let pct = (online * u64::from(gate.min_success_percent)).div_ceil(100);
    pct.max(u64::from(gate.min_success))
}

/// Whether failures passed the gate (the rollout halts); `accepted` failures were accepted
/// by an admin's resume.
pub fn failed_over(gate: &Gate, c: GateCounts, accepted: u64) -> bool {
    c.failed.saturating_sub(accepted) > u64::from(gate.max_failures)
}

/// Whether the ring passed its gate.
pub fn gate_holds(gate: &Gate, c: GateCounts, accepted: u64) -> bool {
    !failed_over(gate, c, accepted) && c.succeeded >= required(gate, c.online)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(windows: Vec<Window>, tz: Option<&str>) -> Ring {
        Ring {
            name: "r".into(),
            windows,
            timezone: tz.map(str::to_owned),
            ..Ring::default()
        }
    }

    fn w(days: &[&str], from: &str, to: &str) -> Window {
        Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            to: to.into(),
        }
    }

    // 2026-12-05 is a Saturday.
    const SAT_0000: i64 = 1_796_428_800;

    #[test]
    fn rings_match_names_then_globs_and_default_to_the_last() {
        let policy = RolloutPolicy {
            rings: vec![
                Ring {
                    name: "canary".into(),
                    endpoints: vec!["c-*".into(), "alice".into()],
                    ..Ring::default()
                },
                Ring {
                    name: "rest".into(),
                    ..Ring::default()
                },
            ],
            ..RolloutPolicy::default()
        };
        let m = RingMatcher::new(&policy).unwrap();
        assert_eq!(m.ring_of("c-1"), Some(0));
        assert_eq!(m.ring_of("alice"), Some(0));
        assert_eq!(m.ring_of("bob"), Some(1));
        assert_eq!(
            RingMatcher::new(&RolloutPolicy::default())
                .unwrap()
                .ring_of("x"),
            None
        );
    }

    #[test]
    fn windows_by_weekday_and_zone() {
        assert_eq!(date_utc(SAT_0000), "2026-12-05");
        let r = ring(vec![w(&["sat"], "02:00", "05:00")], None);
        assert!(!in_window(&r, SAT_0000 + 3600));
        assert!(in_window(&r, SAT_0000 + 2 * 3600));
        assert!(!in_window(&r, SAT_0000 + 5 * 3600));
        assert!(!in_window(&r, SAT_0000 + 86_400 + 3 * 3600));
        assert_eq!(next_open(&r, SAT_0000), Some(SAT_0000 + 2 * 3600));
        assert_eq!(
            next_open(&r, SAT_0000 + 6 * 3600),
            Some(SAT_0000 + 7 * 86_400 + 2 * 3600)
        );
        assert!(when(&r, SAT_0000 + 2 * 3600).starts_with("Saturday 2026-12-05 02:00 UTC"));
        // Wraps past midnight: Friday 22:00 to Saturday 06:00.
        let r = ring(vec![w(&["fri"], "22:00", "06:00")], None);
        assert!(in_window(&r, SAT_0000 + 3600));
        assert!(in_window(&r, SAT_0000 - 3600));
        assert!(!in_window(&r, SAT_0000 + 7 * 3600));
        // Berlin is UTC+1 in December: 02:00 local is 01:00 UTC.
        let r = ring(vec![w(&["sat"], "02:00", "03:00")], Some("Europe/Berlin"));
        assert!(in_window(&r, SAT_0000 + 3600));
        assert!(!in_window(&r, SAT_0000 + 2 * 3600));
        assert!(
            check(&RolloutPolicy {
                rings: vec![ring(vec![w(&["someday"], "02:00", "03:00")], None)],
                ..RolloutPolicy::default()
            })
            .is_err()
        );
        assert!(
            check(&RolloutPolicy {
                rings: vec![ring(vec![], Some("Mars/Olympus"))],
                ..RolloutPolicy::default()
            })
            .is_err()
        );
    }

    #[test]
    fn gate_arithmetic() {
        let g = Gate {
            min_success: 2,
            min_success_percent: 50,
            max_failures: 1,
        };
        assert_eq!(required(&g, 10), 5);
        assert_eq!(required(&g, 3), 2);
        assert_eq!(required(&g, 9), 5);
        let c = |s, f| GateCounts {
            online: 10,
            succeeded: s,
            failed: f,
        };
        assert!(!gate_holds(&g, c(4, 0), 0));
        assert!(gate_holds(&g, c(5, 1), 0));
        assert!(failed_over(&g, c(5, 2), 0));
        assert!(!failed_over(&g, c(5, 2), 1));
    }
}
