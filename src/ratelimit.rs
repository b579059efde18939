//! Per-client rate limiting: a token bucket per source address.
//!
//! An infected or scripted device can send thousands of queries a second; limiting it keeps
//! everyone else answered, and the limiting itself is reported (a flooding device is a finding
//! for the coordinator). Buckets live in sharded maps so the two cores rarely meet on a lock,
//! and idle buckets are swept when a shard grows.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

const SHARDS: usize = 16;
const MAX_PER_SHARD: usize = 8192;
/// How often a limited client is reported, at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

struct Bucket {
    tokens: f64,
    last: Instant,
    limited: u64,
    reported: Option<Instant>,
}

/// The verdict for one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Pass,
    /// Over the limit.
    Limited,
    /// Over the limit, and it is time to report `n` limited queries for this client.
    Report(u64),
}

/// Token buckets by client address.
pub struct RateLimiter {
    /// Queries a second (high half) and burst (low half), one word so a reload changes both at
    /// once.
    limits: AtomicU64,
    shards: Vec<Mutex<FxHashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    /// `qps` per client with `burst`; `qps == 0` disables limiting.
    pub fn new(qps: u32, burst: u32) -> Self {
        let limiter = RateLimiter {
            limits: AtomicU64::new(0),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
        };
        limiter.set_limits(qps, burst);
        limiter
    }

    /// New limits (a reload), for every client from its next query; buckets keep their tokens.
    pub fn set_limits(&self, qps: u32, burst: u32) {
        let word = (u64::from(qps) << 32) | u64::from(burst.max(qps));
        self.limits.store(word, Ordering::Relaxed);
    }

    /// Takes one token for `ip`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        let limits = self.limits.load(Ordering::Relaxed);
        let rate = (limits >> 32) as f64;
        let burst = (limits & u64::from(u32::MAX)) as f64;
        if rate == 0.0 {
            return Verdict::Pass;
        }
        let shard = &self.shards[shard_of(&ip)];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PER_SHARD && !map.contains_key(&ip) {
            let idle = Duration::from_secs_f64(burst / rate);
            map.retain(|_, b| now.duration_since(b.last) < idle);
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
            limited: 0,
            reported: None,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Pass;
        }
        b.limited += 1;
        if b.reported
            .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY)
        {
            b.reported = Some(now);
            let n = b.limited;
            b.limited = 0;
            return Verdict::Report(n);
        }
        Verdict::Limited
    }
}

fn shard_of(ip: &IpAddr) -> usize {
    let b = match ip {
        IpAddr::V4(v4) => v4.octets()[3] as usize,
        IpAddr::V6(v6) => v6.octets()[15] as usize,
    };
    b % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_limits_apply_from_the_next_query() {
        let l = RateLimiter::new(1, 2);
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(l.check(a, now), Verdict::Pass);
        assert_eq!(l.check(a, now), Verdict::Pass);
        assert_ne!(l.check(a, now), Verdict::Pass);
        l.set_limits(0, 0);
        assert_eq!(l.check(a, now), Verdict::Pass, "0 turns limiting off");
        l.set_limits(1, 2);
        assert_ne!(l.check(a, now), Verdict::Pass, "the bucket kept its state");
        l.set_limits(1000, 1000);
        let later = now + Duration::from_millis(10);
        assert_eq!(l.check(a, later), Verdict::Pass, "refilled at the new rate");
    }

    #[test]
    fn limits_one_client_not_another() {
        let l = RateLimiter::new(10, 20);
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let passed = (0..100)
            .filter(|_| l.check(a, now) == Verdict::Pass)
            .count();
        assert_eq!(passed, 20);
        assert_eq!(l.check(b, now), Verdict::Pass);
        // Refills with time.
        assert_eq!(l.check(a, now + Duration::from_millis(200)), Verdict::Pass);
    }

    #[test]
    fn reports_once_per_window() {
        let l = RateLimiter::new(1, 1);
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(l.check(ip, now), Verdict::Pass);
        assert_eq!(l.check(ip, now), Verdict::Report(1));
        assert_eq!(l.check(ip, now), Verdict::Limited);
        let later = now + REPORT_EVERY;
        assert_eq!(l.check(ip, later), Verdict::Pass);
        assert_eq!(l.check(ip, later), Verdict::Report(2));
        assert_eq!(RateLimiter::new(0, 0).check(ip, now), Verdict::Pass);
    }
}
