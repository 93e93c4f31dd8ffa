//! Abuse limits: the origin allowlist, rate limiters (new connections, messages per connection,
//! management calls) and concurrent-connection counts per source IP and per principal.
//!
//! Everything here is checked on hot paths, so nothing allocates or holds a lock across an
//! `.await`: rate limiters are one atomic word, and connection counts are a `DashMap` entry updated
//! under its shard lock for the length of one increment.

use crate::config::LimitsConfig;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A token bucket, kept as the generic cell rate algorithm: one atomic "theoretical arrival time"
/// instead of a token count and a refill timestamp, so taking a token is a single compare-and-swap
/// with no lock, shared or not.
///
/// Admits `burst` requests at once, then one every `1 / rate`; unused capacity builds up again at
/// the same rate, up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds between two admissions at the sustained rate; 0 means unlimited.
    interval: u64,
    /// How far the theoretical arrival time may run ahead of now: `burst - 1` intervals.
    tolerance: u64,
    /// When the next admission would be due at the sustained rate, in nanoseconds since `origin`.
    tat: AtomicU64,
    /// The clock's zero; tokio's, so tests can run on a paused clock.
    origin: Instant,
}

impl RateLimiter {
    /// `per_second` admissions a second, bursts of up to `burst` (at least 1); 0 means unlimited.
    pub fn per_second(per_second: u32, burst: u32) -> Self {
        if per_second == 0 {
            return Self::unlimited();
        }
        Self::per_window(per_second, Duration::from_secs(1), burst)
    }

    /// `count` admissions per `window`, bursts of up to `burst` (at least 1); a zero `count`
    /// means unlimited.
    pub fn per_window(count: u32, window: Duration, burst: u32) -> Self {
        if count == 0 {
            return Self::unlimited();
        }
        let interval = (window.as_nanos() / u128::from(count)).max(1) as u64;
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
            tat: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// `rate` admissions a second, which may be fractional (`0.5`: one every 2 s), bursts of up to
    /// `burst` (at least 1). The rate must be positive and finite; an interval longer than a year
    /// is held at a year, so the arithmetic cannot overflow.
    pub fn per_second_fractional(rate: f64, burst: u32) -> Self {
        const MAX_INTERVAL: f64 = 365.0 * 24.0 * 3600.0 * 1e9;
        let interval = (1e9 / rate).clamp(1.0, MAX_INTERVAL) as u64;
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
            tat: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// A limiter that admits everything.
    pub fn unlimited() -> Self {
        Self {
            interval: 0,
            tolerance: 0,
            tat: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// Takes a token now; false when the limit is reached.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    /// Takes a token at `now` (times before the limiter was made count as its creation).
    pub fn try_acquire_at(&self, now: Instant) -> bool {
        if self.interval == 0 {
            return true;
        }
        let now = now.saturating_duration_since(self.origin).as_nanos() as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let due = tat.max(now);
            if due - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                // Saturating: a route's fractional rate may be slow and its burst large.
                due.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

/// Concurrent connections per key (source IP, principal), each held by a [`Slot`].
#[derive(Debug)]
pub struct ConcurrencyLimit<K: Eq + Hash> {
    /// Most connections per key; 0 means unlimited (and nothing is counted).
    max: u32,
    counts: DashMap<K, u32>,
}

impl<K: Eq + Hash + Clone> ConcurrencyLimit<K> {
    /// At most `max` connections per key; 0 means unlimited.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: DashMap::new(),
        })
    }

    /// A slot for one more connection of `key`, or `None` when `key` already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        if self.max == 0 {
            return Some(Slot {
                limit: self.clone(),
                key: None,
            });
        }
        let mut count = self.counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(Slot {
            limit: self.clone(),
            key: Some(key),
        })
    }

    /// Connections currently counted for `key`.
    #[cfg(test)]
    pub fn count(&self, key: &K) -> u32 {
        self.counts.get(key).map_or(0, |c| *c)
    }

    /// Keys with at least one connection (entries are removed when their count reaches 0).
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.counts.len()
    }
}

/// One connection counted against a [`ConcurrencyLimit`]; dropping it gives the place back, so a
/// handshake that fails or a task that is cancelled can never leak a count.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash> {
    limit: Arc<ConcurrencyLimit<K>>,
    /// `None` when the limit is off and nothing was counted.
    key: Option<K>,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        if let Entry::Occupied(mut count) = self.limit.counts.entry(key) {
            *count.get_mut() -= 1;
            // Removed at zero, so the map only ever holds keys with live connections.
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// Which browser origins may open WebSockets (`limits.allowed_origins`).
#[derive(Debug, Clone, Default)]
pub struct OriginAllowlist {
    /// Exact origins and `scheme://*.domain[:port]` patterns; empty allows every origin.
    patterns: Vec<OriginPattern>,
}

#[derive(Debug, Clone)]
enum OriginPattern {
    Exact(String),
    /// `https://*.example.com` as prefix `https://` and suffix `.example.com`.
    Subdomains {
        prefix: String,
        suffix: String,
    },
}

/// An entry of `limits.allowed_origins` that is not an origin or an origin pattern.
#[derive(Debug, thiserror::Error)]
#[error(
    "\"{0}\" is not an origin: expected scheme://host[:port], optionally with \"*.\" starting the host (https://*.example.com)"
)]
pub struct InvalidOrigin(pub String);

impl OriginAllowlist {
    /// Parses `limits.allowed_origins`.
    pub fn parse(origins: &[String]) -> Result<Self, InvalidOrigin> {
        let patterns = origins
            .iter()
            .map(|o| parse_pattern(o).ok_or_else(|| InvalidOrigin(o.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether a request with this `Origin` header may connect. Requests without one are allowed:
    /// browsers always send it, and other clients (SDKs, servers, wscat) usually do not, so its
    /// absence says nothing about the page the request came from.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin.map(str::trim) else {
            return true;
        };
        self.patterns.is_empty()
            || self.patterns.iter().any(|p| match p {
                // Scheme and host are case-insensitive; a browser sends them in lower case anyway.
                OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
                OriginPattern::Subdomains { prefix, suffix } => {
                    origin.len() > prefix.len() + suffix.len()
                        && origin
                            .get(..prefix.len())
                            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
                        && origin
                            .get(origin.len() - suffix.len()..)
                            .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
                        && origin[prefix.len()..origin.len() - suffix.len()]
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                }
            })
    }
}

fn parse_pattern(origin: &str) -> Option<OriginPattern> {
    let (scheme, rest) = origin.split_once("://")?;
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
    };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    match rest.strip_prefix("*.") {
        Some(domain) if host_ok(domain) => Some(OriginPattern::Subdomains {
            prefix: format!("{scheme}://"),
            suffix: format!(".{domain}"),
        }),
        None if host_ok(rest) => Some(OriginPattern::Exact(origin.to_string())),
        _ => None,
    }
}

/// Throttled messages are counted over this window to decide when a connection is abusive.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with an inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageVerdict {
    /// Within the rate: invoke the route.
    Accept,
    /// Over the rate: drop it and tell the client.
    Throttle,
    /// Over the rate for too long: close the connection (1008).
    Close,
}

/// The per-connection message rate (`limits.messages_per_second`, `message_burst`) and the
/// tolerance for throttled messages (`limits.max_throttled_messages` per [`THROTTLE_WINDOW`]).
#[derive(Debug)]
pub struct MessageLimiter {
    rate: RateLimiter,
    /// One token per throttled message; running out means the client keeps flooding.
    strikes: RateLimiter,
}

impl MessageLimiter {
    /// The limiter for one connection.
    pub fn new(limits: &LimitsConfig) -> Self {
        let strikes = match limits.max_throttled_messages {
            // Never close: the strike bucket never runs out.
            0 => RateLimiter::unlimited(),
            n => RateLimiter::per_window(n, THROTTLE_WINDOW, n),
        };
        Self {
            rate: RateLimiter::per_second(limits.messages_per_second, limits.message_burst),
            strikes,
        }
    }

    /// Judges one inbound message arriving now.
    pub fn check(&self) -> MessageVerdict {
        self.check_at(Instant::now())
    }

    /// Judges one inbound message arriving at `now`.
    pub fn check_at(&self, now: Instant) -> MessageVerdict {
        if self.rate.try_acquire_at(now) {
            MessageVerdict::Accept
        } else if self.strikes.try_acquire_at(now) {
            MessageVerdict::Throttle
        } else {
            MessageVerdict::Close
        }
    }
}

/// API Gateway's account-level steady-state rate per Region: a route that sets only a burst
/// limit gets it, as a route on API Gateway would.
pub const ACCOUNT_RATE_LIMIT: f64 = 10_000.0;
/// API Gateway's account-level burst per Region: a route that sets only a rate limit gets it.
pub const ACCOUNT_BURST_LIMIT: u32 = 5_000;

/// One route's throttling (API Gateway's `ThrottlingRateLimit` and `ThrottlingBurstLimit`): a token
/// bucket shared by every connection of this host, so the limit holds per route over the stage as
/// this host serves it (a cluster of N hosts admits N times the rate).
#[derive(Debug)]
pub enum RouteThrottle {
    /// Neither limit is set: nothing is throttled.
    Unlimited,
    /// A bucket of `burst` tokens refilled at `rate` a second.
    Bucket(RateLimiter),
    /// A zero rate or burst: every request is throttled, which is how API Gateway switches a
    /// route off.
    Closed,
}

impl RouteThrottle {
    /// The throttle for a route's effective settings; a limit left unset while the other is set
    /// takes API Gateway's account-level value ([`ACCOUNT_RATE_LIMIT`], [`ACCOUNT_BURST_LIMIT`]).
    pub fn new(rate: Option<f64>, burst: Option<u32>) -> Self {
        if rate.is_none() && burst.is_none() {
            return Self::Unlimited;
        }
        let rate = rate.unwrap_or(ACCOUNT_RATE_LIMIT);
        let burst = burst.unwrap_or(ACCOUNT_BURST_LIMIT);
        if rate <= 0.0 || burst == 0 {
            return Self::Closed;
        }
        Self::Bucket(RateLimiter::per_second_fractional(rate, burst))
    }

    /// Takes a token for one request (a message routed to the route, or a `$connect`); false when
    /// the request is throttled.
    pub fn try_acquire(&self) -> bool {
        match self {
            Self::Unlimited => true,
            Self::Bucket(bucket) => bucket.try_acquire(),
            Self::Closed => false,
        }
    }
}

/// The host-wide limits, built once from `[limits]`.
#[derive(Debug)]
pub struct HostLimits {
    /// `limits.allowed_origins`.
    pub origins: OriginAllowlist,
    /// `limits.connections_per_second` over every upgrade this host answers.
    pub new_connections: RateLimiter,
    /// `limits.connections_per_ip`, keyed by the TCP peer address.
    pub per_ip: Arc<ConcurrencyLimit<IpAddr>>,
    /// `limits.connections_per_principal`, keyed by the authorizer's `principalId`.
    pub per_principal: Arc<ConcurrencyLimit<String>>,
    /// `limits.management_requests_per_second` over every `@connections` and `@groups` call.
    pub management: RateLimiter,
    /// `limits.max_connections`: one permit per TCP connection on the public listener; `None`
    /// when unlimited.
    connections: Option<Arc<Semaphore>>,
    /// `limits.max_connections` as configured (0 = unlimited), for `/health`.
    max_connections: usize,
}

impl HostLimits {
    /// Builds the limits; an origin pattern that does not parse is refused.
    pub fn from_config(config: &LimitsConfig) -> Result<Self, InvalidOrigin> {
        Ok(Self {
            origins: OriginAllowlist::parse(&config.allowed_origins)?,
            new_connections: RateLimiter::per_second(
                config.connections_per_second,
                config.connections_per_second,
            ),
            per_ip: ConcurrencyLimit::new(config.connections_per_ip),
            per_principal: ConcurrencyLimit::new(config.connections_per_principal),
            management: RateLimiter::per_second(
                config.management_requests_per_second,
                config.management_burst,
            ),
            connections: (config.max_connections > 0).then(|| {
                Arc::new(Semaphore::new(
                    config.max_connections.min(Semaphore::MAX_PERMITS),
                ))
            }),
            max_connections: config.max_connections,
        })
    }

    /// `limits.max_connections` (0 = unlimited) and how many of its places are taken now (0 when
    /// unlimited: nothing is counted then).
    pub fn connection_places(&self) -> (usize, usize) {
        let taken = self.connections.as_ref().map_or(0, |cap| {
            self.max_connections
                .min(Semaphore::MAX_PERMITS)
                .saturating_sub(cap.available_permits())
        });
        (self.max_connections, taken)
    }

    /// A place for one more TCP connection under `limits.max_connections`, held until the
    /// connection ends; `None` when the host already holds that many. Without a cap, a permit
    /// that counts nothing.
    pub fn try_admit_connection(&self) -> Option<ConnectionPermit> {
        match &self.connections {
            None => Some(ConnectionPermit { _permit: None }),
            Some(cap) => cap
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| ConnectionPermit { _permit: Some(p) }),
        }
    }
}

/// One TCP connection counted against `limits.max_connections`; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    /// Held for its `Drop`, which returns the place.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Each group's fan-out allowance (`extensions.groups.fanout_rate` and `fanout_burst`): a token
/// bucket per group, in deliveries, kept as the time at which the group's bucket is full again.
///
/// A broadcast asks [`admit`](Self::admit) before it sends anything and pays with
/// [`spend`](Self::spend) for the deliveries it made, which may take the bucket below empty: a
/// broadcast is either refused whole or sent whole, and the group's next broadcasts wait until
/// the debt is paid back at the rate. Concurrent broadcasts to one group may each be admitted
/// before either pays.
#[derive(Debug)]
pub struct FanoutLimit {
    /// Deliveries per second; 0 means unlimited.
    rate: u64,
    /// How far a group's full-again time may run ahead of now for a broadcast to be admitted
    /// (`burst` deliveries' worth, less one), in nanoseconds.
    tolerance: u64,
    /// Each group's full-again time, in nanoseconds since `origin`; a group that is full is not
    /// kept.
    groups: DashMap<String, u64>,
    /// Groups kept before the full ones are swept out.
    sweep_at: AtomicU64,
    /// The clock's zero; tokio's, so tests can run on a paused clock.
    origin: Instant,
}

/// Groups kept at least before a sweep.
const FANOUT_SWEEP_MIN: u64 = 4096;

impl FanoutLimit {
    /// `rate` deliveries a second per group, up to `burst` at once; a zero `rate` is unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        let rate = u64::from(rate);
        let tolerance = if rate == 0 {
            0
        } else {
            Self::cost_for(rate, u64::from(burst.max(1)) - 1)
        };
        Self {
            rate,
            tolerance,
            groups: DashMap::new(),
            sweep_at: AtomicU64::new(FANOUT_SWEEP_MIN),
            origin: Instant::now(),
        }
    }

    fn cost_for(rate: u64, deliveries: u64) -> u64 {
        u64::try_from(u128::from(deliveries) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX)
    }

    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos() as u64
    }

    /// Whether `group` may broadcast now; when it may not, how long until it may.
    pub fn admit(&self, group: &str) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let now = self.now();
        let due = self.groups.get(group).map_or(0, |tat| *tat);
        let ahead = due.saturating_sub(now);
        if ahead <= self.tolerance {
            Ok(())
        } else {
            Err(Duration::from_nanos(ahead - self.tolerance))
        }
    }

    /// Charges `group` for `deliveries` made.
    pub fn spend(&self, group: &str, deliveries: usize) {
        if self.rate == 0 || deliveries == 0 {
            return;
        }
        let now = self.now();
        let cost = Self::cost_for(self.rate, deliveries as u64);
        {
            let mut tat = self.groups.entry(group.to_string()).or_insert(0);
            *tat = (*tat).max(now).saturating_add(cost);
        }
        let kept = self.groups.len() as u64;
        if kept >= self.sweep_at.load(Ordering::Relaxed) {
            // A group whose bucket is full again is the same as one never seen.
            self.groups.retain(|_, tat| *tat > now);
            let left = self.groups.len() as u64;
            self.sweep_at
                .store((left * 2).max(FANOUT_SWEEP_MIN), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_group_broadcasts_whole_within_its_burst_then_waits_for_the_rate() {
        // 1,000 deliveries a second, 1,500 at once.
        let limit = FanoutLimit::new(1_000, 1_500);
        assert_eq!(limit.admit("g"), Ok(()));
        limit.spend("g", 1_000);
        // Within the burst: admitted, and sent whole even though it overdraws.
        assert_eq!(limit.admit("g"), Ok(()));
        limit.spend("g", 1_000);
        // 2,000 spent against 1,500: the group waits until the debt is back within the burst.
        let wait = limit.admit("g").unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(501),
            "{wait:?}"
        );
        // Other groups have their own allowance.
        assert_eq!(limit.admit("other"), Ok(()));
        tokio::time::advance(wait).await;
        assert_eq!(limit.admit("g"), Ok(()));
        // Unlimited admits anything.
        let open = FanoutLimit::new(0, 0);
        open.spend("g", usize::MAX);
        assert_eq!(open.admit("g"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_admits_a_burst_then_the_rate() {
        let limiter = RateLimiter::per_second(10, 5);
        let start = Instant::now();
        assert_eq!((0..20).filter(|_| limiter.try_acquire()).count(), 5);
        // One token every 100 ms from then on.
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        // Idle time refills up to the burst, no further.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.try_acquire_at(later)).count(), 5);
        // Sustained: 10 a second over 10 seconds, plus the initial burst.
        let limiter = RateLimiter::per_second(10, 5);
        let start = Instant::now();
        let admitted = (0..10_000)
            .filter(|i| limiter.try_acquire_at(start + Duration::from_millis(*i)))
            .count();
        // The burst at once, then one every 100 ms: at 100, 200, …, 9900 ms.
        assert_eq!(admitted, 5 + 99);
    }

    #[tokio::test(start_paused = true)]
    async fn route_throttles_take_fractional_rates_and_fill_in_the_account_limits() {
        let half = RouteThrottle::new(Some(0.5), Some(2));
        assert_eq!((0..10).filter(|_| half.try_acquire()).count(), 2);
        // One token every 2 s.
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!half.try_acquire());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(half.try_acquire());
        assert!(!half.try_acquire());

        assert!(matches!(
            RouteThrottle::new(None, None),
            RouteThrottle::Unlimited
        ));
        assert!((0..100_000).all(|_| RouteThrottle::Unlimited.try_acquire()));
        // Zero in either limit refuses everything, as API Gateway does.
        for closed in [
            RouteThrottle::new(Some(0.0), Some(10)),
            RouteThrottle::new(Some(10.0), Some(0)),
        ] {
            assert!(matches!(closed, RouteThrottle::Closed));
            assert!(!closed.try_acquire());
        }
        // Only a rate: the account's burst of 5,000. Only a burst: the account's 10,000 a second.
        let rate_only = RouteThrottle::new(Some(1.0), None);
        assert_eq!(
            (0..6_000).filter(|_| rate_only.try_acquire()).count(),
            5_000
        );
        let burst_only = RouteThrottle::new(None, Some(3));
        assert_eq!((0..10).filter(|_| burst_only.try_acquire()).count(), 3);
        tokio::time::advance(Duration::from_micros(100)).await;
        assert!(burst_only.try_acquire(), "a token every 100 µs");
        // A vanishing rate with a huge burst does not overflow.
        let tiny = RouteThrottle::new(Some(1e-300), Some(u32::MAX));
        assert!((0..2_000).all(|_| tiny.try_acquire()));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited_and_burst_one_is_strict() {
        let unlimited = RateLimiter::per_second(0, 0);
        assert!((0..100_000).all(|_| unlimited.try_acquire()));
        let strict = RateLimiter::per_second(1, 0);
        assert!(strict.try_acquire());
        assert!(!strict.try_acquire());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(strict.try_acquire());
    }

    #[test]
    fn rate_limiter_is_shared_across_threads() {
        let limiter = Arc::new(RateLimiter::per_window(1, Duration::from_secs(3600), 1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || (0..1000).filter(|_| l.try_acquire()).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(
            total, 1000,
            "exactly the burst, however the threads interleave"
        );
    }

    #[test]
    fn slots_count_per_key_and_give_back_on_drop() {
        let limit = ConcurrencyLimit::new(2);
        let a1 = limit.try_acquire("a".to_string()).unwrap();
        let a2 = limit.try_acquire("a".to_string()).unwrap();
        assert!(limit.try_acquire("a".to_string()).is_none());
        let b = limit.try_acquire("b".to_string()).unwrap();
        assert_eq!(limit.count(&"a".to_string()), 2);
        drop(a1);
        let a3 = limit.try_acquire("a".to_string()).unwrap();
        drop((a2, a3, b));
        assert_eq!(limit.keys(), 0, "no entry outlives its last connection");

        let off = ConcurrencyLimit::new(0);
        let held: Vec<_> = (0..100).map(|_| off.try_acquire(1u8).unwrap()).collect();
        assert_eq!(off.keys(), 0, "nothing is counted when the limit is off");
        drop(held);
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let list = OriginAllowlist::parse(&[
            "https://app.example.com".into(),
            "https://*.example.org".into(),
            "http://localhost:3000".into(),
        ])
        .unwrap();
        assert!(list.allows(None), "no Origin header: not a browser");
        assert!(list.allows(Some("https://app.example.com")));
        assert!(list.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(list.allows(Some("http://localhost:3000")));
        assert!(list.allows(Some("https://a.example.org")));
        assert!(list.allows(Some("https://a.b.example.org")));
        for refused in [
            "https://evil.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://example.org",
            "https://evil.com/.example.org",
            "https://evil.com:1.example.org",
            "http://a.example.org",
            "http://localhost:3001",
            "null",
        ] {
            assert!(!list.allows(Some(refused)), "{refused}");
        }
        assert!(OriginAllowlist::default().allows(Some("https://any.where")));
        for bad in [
            "example.com",
            "https://",
            "https://a.com/path",
            "https://a.*.com",
            "*",
        ] {
            assert!(OriginAllowlist::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_throttled_then_closed() {
        let limits = LimitsConfig {
            messages_per_second: 10,
            message_burst: 20,
            max_throttled_messages: 5,
            ..LimitsConfig::default()
        };
        let limiter = MessageLimiter::new(&limits);
        let verdicts: Vec<_> = (0..30).map(|_| limiter.check()).collect();
        assert!(verdicts[..20].iter().all(|v| *v == MessageVerdict::Accept));
        assert!(
            verdicts[20..25]
                .iter()
                .all(|v| *v == MessageVerdict::Throttle)
        );
        assert!(verdicts[25..].iter().all(|v| *v == MessageVerdict::Close));

        // A client that slightly exceeds now and then is throttled but never closed: a throttled
        // message every 2 s, with 5 allowed per 10 s.
        let limiter = MessageLimiter::new(&limits);
        for _ in 0..20 {
            assert!((0..20).all(|_| limiter.check() == MessageVerdict::Accept));
            assert_eq!(limiter.check(), MessageVerdict::Throttle);
            tokio::time::advance(Duration::from_secs(2)).await;
        }

        let off = MessageLimiter::new(&LimitsConfig {
            messages_per_second: 0,
            ..LimitsConfig::default()
        });
        assert!((0..10_000).all(|_| off.check() == MessageVerdict::Accept));
    }
}
