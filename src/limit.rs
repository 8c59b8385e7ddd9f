//! Rate limits: each principal's requests per second and decoded body bytes per second, with
//! governor (429 with `Retry-After`), and the login throttle per client address that makes
//! password guessing slow and cheap (429 without checking anything).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::RateConfig;
use crate::error::ProxyError;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One principal's limits. `C` is a fake clock in tests.
pub struct Limits<C: Clock = DefaultClock> {
    requests: Option<Direct<C>>,
    bytes: Option<Direct<C>>,
    burst_bytes: u64,
    /// Bytes one cell of the bytes limiter stands for.
    byte_unit: u64,
    clock: C,
}

/// Cells a limiter refills per second at most (one every 10 ns).
const MAX_CELLS_PER_SECOND: u64 = 100_000_000;

impl Limits<DefaultClock> {
    pub fn new(rate: RateConfig) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(rate: RateConfig, clock: C) -> Self {
        let quota = |per_second: u64| {
            let per_second = NonZeroU32::new(per_second.min(u64::from(u32::MAX)) as u32)?;
            let burst = u64::from(per_second.get()) * u64::from(rate.burst_seconds.max(1));
            let burst = NonZeroU32::new(burst.min(u64::from(u32::MAX)) as u32)?;
            Some(Quota::per_second(per_second).allow_burst(burst))
        };
        let limiter =
            |q: Option<Quota>| q.map(|q| RateLimiter::direct_with_clock(q, clock.clone()));
        // governor refills one cell at a time, at least a nanosecond apart: above 10^8
        // bytes a second, one cell stands for several bytes.
        let byte_unit = rate.bytes_per_second.div_ceil(MAX_CELLS_PER_SECOND).max(1);
        let bytes_quota = quota(rate.bytes_per_second / byte_unit);
        Self {
            requests: limiter(quota(u64::from(rate.requests_per_second))),
            burst_bytes: bytes_quota.map_or(0, |q| u64::from(q.burst_size().get()) * byte_unit),
            bytes: limiter(bytes_quota),
            byte_unit,
            clock,
        }
    }

    /// Takes one request from the principal's budget.
    pub fn check_request(&self, principal: &str) -> Result<(), ProxyError> {
        let Some(limiter) = &self.requests else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| ProxyError::RateLimited {
                principal: principal.to_string(),
                what: "requests",
                retry_after: retry_after(not_until.wait_time_from(self.clock.now())),
            })
    }

    /// Takes `n` decoded body bytes from the principal's budget.
    pub fn check_bytes(&self, principal: &str, n: u64) -> Result<(), ProxyError> {
        let Some(limiter) = &self.bytes else {
            return Ok(());
        };
        let cells = n.div_ceil(self.byte_unit).min(u64::from(u32::MAX)) as u32;
        let Some(cells) = NonZeroU32::new(cells) else {
            return Ok(());
        };
        match limiter.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ProxyError::RateLimited {
                principal: principal.to_string(),
                what: "bytes",
                retry_after: retry_after(not_until.wait_time_from(self.clock.now())),
            }),
            // Larger than the whole bucket: it would never pass, so say why.
            Err(_) => Err(ProxyError::LargerThanBurst {
                principal: principal.to_string(),
                bytes: n,
                burst: self.burst_bytes,
            }),
        }
    }
}

/// `Retry-After` in whole seconds, at least 1.
fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

/// Failed logins allowed from one address before it is throttled, and how fast that
/// allowance comes back.
pub const FAILED_LOGIN_BURST: u32 = 10;
pub const FAILED_LOGIN_REFILL: Duration = Duration::from_secs(6);
/// Password hashes one address may have under way (or waiting) at once: the rest of its
/// attempts get 429 without a hash, so no client can queue up the hashes of everyone else.
pub const HASHES_PER_ADDRESS: u32 = 2;
/// Addresses tracked before entries with nothing outstanding are pruned.
const MAX_TRACKED: usize = 100_000;

/// Counts failed and pending logins per client address. A check counts against its address
/// from the moment it starts, so concurrent guesses cannot outrun the allowance: once
/// failures and checks under way reach [`FAILED_LOGIN_BURST`], the address gets 429 before
/// any credential is looked at. IPv6 clients are counted per /64, the block one host gets.
#[derive(Default)]
pub struct LoginThrottle {
    addresses: Arc<Mutex<HashMap<IpAddr, Address>>>,
}

#[derive(Debug, Clone, Copy)]
struct Address {
    /// When the failure allowance is whole again: each failure pushes it one refill period
    /// further (a GCRA-style bucket).
    whole_at: Instant,
    /// Checks started and not yet finished.
    pending: u32,
}

impl Address {
    /// Failures not yet refilled.
    fn failures(&self, now: Instant) -> u32 {
        let debt = self.whole_at.saturating_duration_since(now);
        debt.as_nanos().div_ceil(FAILED_LOGIN_REFILL.as_nanos()) as u32
    }

    /// The 429 for an address whose failures and pending checks use up the allowance.
    fn refusal(&self, now: Instant) -> Option<ProxyError> {
        if self.failures(now) + self.pending < FAILED_LOGIN_BURST {
            return None;
        }
        // Room comes back when enough failures have refilled for one more check; a check
        // under way frees its place within a second.
        let room = FAILED_LOGIN_BURST.saturating_sub(self.pending + 1);
        let wait = self
            .whole_at
            .saturating_duration_since(now + FAILED_LOGIN_REFILL * room);
        Some(ProxyError::LoginThrottled {
            retry_after: retry_after(wait),
        })
    }
}

/// A password check under way for an address, counted until dropped. It is `'static` so the
/// hash can own it: a client that disconnects mid-check keeps its place until the hash ends.
pub struct Pending {
    addresses: Arc<Mutex<HashMap<IpAddr, Address>>>,
    key: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut addresses = lock(&self.addresses);
        if let Some(address) = addresses.get_mut(&self.key) {
            address.pending = address.pending.saturating_sub(1);
        }
    }
}

impl LoginThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Address>> {
        lock(&self.addresses)
    }

    /// Refuses an address whose failures and checks under way use up its allowance.
    pub fn check(&self, ip: IpAddr) -> Result<(), ProxyError> {
        let now = Instant::now();
        match self.lock().get(&key(ip)).and_then(|a| a.refusal(now)) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// Starts a costly check (a password hash) for `ip`: refused when the address is
    /// throttled or already has [`HASHES_PER_ADDRESS`] under way.
    pub fn begin(&self, ip: IpAddr) -> Result<Pending, ProxyError> {
        let now = Instant::now();
        let key = key(ip);
        let mut addresses = self.lock();
        if addresses.len() >= MAX_TRACKED && !addresses.contains_key(&key) {
            addresses.retain(|_, a| a.pending > 0 || a.whole_at > now);
        }
        let address = addresses.entry(key).or_insert(Address {
            whole_at: now,
            pending: 0,
        });
        if let Some(refusal) = address.refusal(now) {
            return Err(refusal);
        }
        if address.pending >= HASHES_PER_ADDRESS {
            return Err(ProxyError::LoginsPending { retry_after: 1 });
        }
        address.pending += 1;
        Ok(Pending {
            addresses: self.addresses.clone(),
            key,
        })
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut addresses = self.lock();
        if addresses.len() >= MAX_TRACKED {
            addresses.retain(|_, a| a.pending > 0 || a.whole_at > now);
        }
        let address = addresses.entry(key(ip)).or_insert(Address {
            whole_at: now,
            pending: 0,
        });
        address.whole_at = address.whole_at.max(now) + FAILED_LOGIN_REFILL;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an address is counted as: IPv4 addresses alone, IPv6 by /64 (IPv4-mapped ones as
/// IPv4).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(requests: u32, bytes: u64) -> RateConfig {
        RateConfig {
            requests_per_second: requests,
            bytes_per_second: bytes,
            burst_seconds: 2,
        }
    }

    #[test]
    fn requests_over_the_rate_get_429_with_retry_after_until_refilled() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::with_clock(rate(5, 0), clock.clone());
        for _ in 0..10 {
            limits.check_request("t").unwrap();
        }
        let err = limits.check_request("t").unwrap_err();
        assert_eq!(err.status(), 429);
        assert!(
            matches!(err, ProxyError::RateLimited { retry_after: 1, .. }),
            "{err:?}"
        );
        clock.advance(Duration::from_millis(200));
        limits.check_request("t").unwrap();
        assert!(limits.check_request("t").is_err());
    }

    #[test]
    fn bytes_are_limited_and_a_body_larger_than_the_bucket_is_explained() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::with_clock(rate(0, 1000), clock.clone());
        limits.check_bytes("t", 1500).unwrap();
        let err = limits.check_bytes("t", 1000).unwrap_err();
        assert!(
            matches!(
                err,
                ProxyError::RateLimited {
                    what: "bytes",
                    retry_after: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        clock.advance(Duration::from_secs(1));
        limits.check_bytes("t", 1000).unwrap();
        let err = limits.check_bytes("t", 5000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"t\" sent a 5000-byte write, larger than its burst of 2000 bytes: raise its bytes_per_second or burst_seconds"
        );
    }

    #[test]
    fn byte_rates_above_a_cell_per_nanosecond_still_work() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::with_clock(rate(0, 100_000_000_000), clock.clone());
        for _ in 0..100 {
            limits.check_bytes("t", 800_000).unwrap();
        }
        let limits = Limits::with_clock(rate(0, 300_000_000), clock.clone());
        limits.check_bytes("t", 600_000_000).unwrap();
        assert!(limits.check_bytes("t", 3_000).is_err());
        clock.advance(Duration::from_millis(10));
        limits.check_bytes("t", 3_000_000).unwrap();
    }

    #[test]
    fn zero_means_unlimited() {
        let limits = Limits::new(rate(0, 0));
        for _ in 0..10_000 {
            limits.check_request("t").unwrap();
            limits.check_bytes("t", 1 << 30).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failed_logins_throttle_the_address_not_others() {
        let throttle = LoginThrottle::new();
        let (guesser, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FAILED_LOGIN_BURST {
            throttle.check(guesser).unwrap();
            drop(throttle.begin(guesser).unwrap());
            throttle.failed(guesser);
        }
        let err = throttle.check(guesser).expect_err("allowance used up");
        assert!(
            matches!(err, ProxyError::LoginThrottled { retry_after: 6 }),
            "{err:?}"
        );
        assert!(throttle.begin(guesser).is_err());
        throttle.check(other).unwrap();
        tokio::time::advance(FAILED_LOGIN_REFILL).await;
        throttle.check(guesser).unwrap();
        throttle.failed(guesser);
        assert!(
            throttle.check(guesser).is_err(),
            "one more guess per refill period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checks_under_way_count_against_the_address_before_they_finish() {
        let throttle = LoginThrottle::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..8 {
            throttle.failed(ip);
        }
        let first = throttle.begin(ip).unwrap();
        // 8 failures and 1 check under way leave room for one more check...
        let second = throttle.begin(ip).unwrap();
        // ...and none after it, before either has finished.
        let err = throttle.begin(ip).err().expect("no third check");
        assert!(matches!(err, ProxyError::LoginThrottled { .. }), "{err:?}");
        assert!(throttle.check(ip).is_err());
        // A check that succeeds gives its place back.
        drop(first);
        throttle.check(ip).unwrap();
        drop(second);
        throttle.failed(ip);
        throttle.failed(ip);
        assert!(throttle.check(ip).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_hashes_at_most_a_few_passwords_at_once() {
        let throttle = LoginThrottle::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let under_way: Vec<_> = (0..HASHES_PER_ADDRESS)
            .map(|_| throttle.begin(ip).unwrap())
            .collect();
        let err = throttle.begin(ip).err().expect("past the per-address cap");
        assert!(
            matches!(err, ProxyError::LoginsPending { retry_after: 1 }),
            "{err:?}"
        );
        throttle.begin("10.0.0.2".parse().unwrap()).unwrap();
        drop(under_way);
        throttle.begin(ip).unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
