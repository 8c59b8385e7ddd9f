//! Rate limits with governor: each principal's requests per second and decoded body bytes
//! per second (429 with `Retry-After`), and the failed-login throttle per client address
//! that makes password guessing slow and cheap (429 without checking anything).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

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

/// Counts failed logins per client address; past the allowance the address gets 429 for a
/// while, before any credential is looked at.
pub struct LoginThrottle<C: Clock = DefaultClock> {
    failures: RateLimiter<
        IpAddr,
        governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
        C,
        NoOpMiddleware<C::Instant>,
    >,
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
    clock: C,
}

impl LoginThrottle<DefaultClock> {
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for LoginThrottle<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

/// Addresses tracked before old entries are pruned.
const MAX_TRACKED: usize = 100_000;

impl<C: Clock + Clone> LoginThrottle<C> {
    pub fn with_clock(clock: C) -> Self {
        let quota = Quota::with_period(FAILED_LOGIN_REFILL)
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(FAILED_LOGIN_BURST).expect("non-zero burst"));
        Self {
            failures: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            blocked: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Refuses an address that is throttled.
    pub fn check(&self, ip: IpAddr) -> Result<(), ProxyError> {
        let blocked = self.blocked.lock().expect("throttle lock");
        match blocked.get(&ip) {
            Some(until) if *until > self.clock.now() => Err(ProxyError::LoginThrottled {
                retry_after: retry_after(until.duration_since(self.clock.now()).into()),
            }),
            _ => Ok(()),
        }
    }

    /// Records a failed login; returns the 429 when this one used up the allowance.
    pub fn failed(&self, ip: IpAddr) -> Option<ProxyError> {
        let not_until = self.failures.check_key(&ip).err()?;
        let now = self.clock.now();
        let wait = not_until.wait_time_from(now);
        let mut blocked = self.blocked.lock().expect("throttle lock");
        if blocked.len() >= MAX_TRACKED {
            blocked.retain(|_, until| *until > now);
            self.failures.retain_recent();
        }
        blocked.insert(ip, now + wait.into());
        Some(ProxyError::LoginThrottled {
            retry_after: retry_after(wait),
        })
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

    #[test]
    fn repeated_failed_logins_throttle_the_address_not_others() {
        let clock = FakeRelativeClock::default();
        let throttle = LoginThrottle::with_clock(clock.clone());
        let (guesser, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FAILED_LOGIN_BURST {
            throttle.check(guesser).unwrap();
            assert!(throttle.failed(guesser).is_none());
        }
        let err = throttle.failed(guesser).expect("allowance used up");
        assert!(
            matches!(err, ProxyError::LoginThrottled { retry_after: 6 }),
            "{err:?}"
        );
        assert!(throttle.check(guesser).is_err());
        throttle.check(other).unwrap();
        clock.advance(FAILED_LOGIN_REFILL);
        throttle.check(guesser).unwrap();
        assert!(
            throttle.failed(guesser).is_none(),
            "one more guess per refill period"
        );
        assert!(throttle.failed(guesser).is_some());
    }
}
