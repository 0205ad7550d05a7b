//! Rate limiting and the client address.
//!
//! A token bucket per valid bearer token (keyed by the token's SHA-256), shared by its REST
//! requests and its WebSocket messages. Requests without a token, and requests whose token is
//! not valid (unknown, revoked, malformed), are limited per client IP instead, so a random
//! token per request gets no fresh bucket. The same buckets, counted in bytes, bound what one
//! endpoint may store per hour ([`RateLimiter::take`]).
//! The client IP is the socket's peer; `X-Forwarded-For` is believed only when that peer is
//! listed in `trusted_proxies`, and then its last (nearest) address is used.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};

use super::error::ApiErr;

/// What a bucket is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Token([u8; 32]),
    Ip(IpAddr),
    Endpoint(i64),
}

/// The answer to a request over a rate limit (`429 rate_limited`, the wait in `detail`).
pub fn rate_limited(wait: Duration) -> ApiErr {
    let secs = retry_after_secs(wait);
    ApiErr::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many requests with this token (or from this address): retry after {secs} s; the limits are rate_limit_per_minute / rate_limit_burst (anonymous_* and invalid_token_* per address) in the coordinator configuration"
        ),
    )
    .with_detail(serde_json::json!({ "retry_after_secs": secs }))
}

/// A wait in whole seconds for `Retry-After` (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets above this many are pruned of full (idle) ones.
const PRUNE_ABOVE: usize = 50_000;

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl RateLimiter {
    /// `per_minute == 0` disables the limiter.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// A bucket of `burst` units refilled at `per_hour`; `per_hour <= 0` disables it.
    pub fn per_hour(per_hour: f64, burst: f64) -> Self {
        Self {
            per_sec: per_hour / 3600.0,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(wait)` when empty.
    pub fn check(&self, key: Key, now: Instant) -> Result<(), Duration> {
        self.take(key, 1.0, now)
    }

    /// Takes `cost` units from `key`'s bucket; `Err(wait)` (and nothing taken) when fewer are
    /// left. A cost above the bucket size is capped at it (it waits for a full bucket).
    pub fn take(&self, key: Key, cost: f64, now: Instant) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_sec, self.burst);
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        let cost = cost.min(self.burst);
        if b.tokens >= cost {
            b.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - b.tokens) / self.per_sec))
        }
    }
}

/// The client's address: the socket peer, or the nearest `X-Forwarded-For` entry when the
/// peer is a trusted proxy.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> SocketAddr {
    if !trusted.contains(&peer.ip()) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .next_back();
    forwarded.map_or(peer, |ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate() {
        let rl = RateLimiter::new(600, 3);
        let t0 = Instant::now();
        let k = Key::Token([1; 32]);
        for _ in 0..3 {
            rl.check(k, t0).unwrap();
        }
        let wait = rl.check(k, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        // Another key has its own bucket.
        rl.check(Key::Token([2; 32]), t0).unwrap();
        // 100 ms later one request is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        rl.check(k, t1).unwrap();
        assert!(rl.check(k, t1).is_err());
        assert!(RateLimiter::new(0, 0).check(k, t0).is_ok());
    }

    #[test]
    fn costs_are_taken_whole_or_not_at_all() {
        // 3,600 units an hour (one a second), bucket of 1,000.
        let rl = RateLimiter::new(60, 1000);
        let t0 = Instant::now();
        let k = Key::Endpoint(1);
        rl.take(k, 600.0, t0).unwrap();
        let wait = rl.take(k, 600.0, t0).unwrap_err();
        assert!(wait >= Duration::from_secs(199) && wait <= Duration::from_secs(201));
        // The refused take took nothing: 400 are still there.
        rl.take(k, 400.0, t0).unwrap();
        assert!(rl.take(k, 1.0, t0).is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let trusted = ["10.0.0.1".parse().unwrap()];
        assert_eq!(
            client_addr(proxy, &h, &trusted).ip(),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_addr(other, &h, &trusted), other);
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
