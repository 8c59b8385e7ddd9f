//! `max_inflight_bytes`: one account of the body bytes all requests hold — wire bytes while
//! reading, decoded bytes while decoding and scanning, bodies kept for retries. A request
//! reserves what it will hold before it reads its body, waiting for room in arrival order
//! (`grow_within`, bounded by `inflight_wait`); bytes it finds it needs on the way are taken
//! without waiting (`grow`); 503 when there is no room. The budget is a FIFO semaphore of
//! bytes, so waiters are served first come, first served.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::ProxyError;

/// The budget, shared by every request.
#[derive(Debug)]
pub struct Inflight {
    limit: u64,
    /// One permit per byte of the limit; those taken are the bytes held.
    permits: Semaphore,
}

impl Inflight {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            permits: Semaphore::new(Self::permits(limit)),
        })
    }

    fn permits(limit: u64) -> usize {
        limit.min(Semaphore::MAX_PERMITS as u64) as usize
    }

    /// Bytes held, for the `inflight_bytes` gauge.
    pub fn used(&self) -> u64 {
        (Self::permits(self.limit) - self.permits.available_permits()) as u64
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An empty reservation, grown as the request needs and released when dropped.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            inflight: self.clone(),
            bytes: 0,
        }
    }
}

/// This request's share of [`Inflight`].
#[derive(Debug)]
pub struct Reservation {
    inflight: Arc<Inflight>,
    bytes: u64,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `n` more bytes now, or 503 when there is no room.
    pub fn grow(&mut self, n: u64) -> Result<(), ProxyError> {
        let need = self.permits_for(n)?;
        if need > 0 {
            let permit = self
                .inflight
                .permits
                .try_acquire_many(need)
                .map_err(|_| ProxyError::Overloaded)?;
            permit.forget();
        }
        self.bytes += n;
        Ok(())
    }

    /// Takes `n` more bytes, waiting up to `wait` (behind earlier waiters) for room; 503
    /// after that, or at once when `n` could never fit.
    pub async fn grow_within(&mut self, n: u64, wait: Duration) -> Result<(), ProxyError> {
        let need = self.permits_for(n)?;
        if need > 0 {
            let acquire = self.inflight.permits.acquire_many(need);
            let permit = tokio::time::timeout(wait, acquire)
                .await
                .map_err(|_| ProxyError::Overloaded)?
                .map_err(|_| ProxyError::Overloaded)?;
            permit.forget();
        }
        self.bytes += n;
        Ok(())
    }

    /// Holds at least `bytes` in all, taking what is missing now (`grow`).
    pub fn ensure(&mut self, bytes: u64) -> Result<(), ProxyError> {
        match bytes.checked_sub(self.bytes) {
            Some(more) if more > 0 => self.grow(more),
            _ => Ok(()),
        }
    }

    /// Gives back what is held beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            return;
        }
        let release = self.bytes - bytes;
        self.inflight.permits.add_permits(release as usize);
        self.bytes = bytes;
    }

    /// `n` as permits; 503 when the request would hold more than the whole budget.
    fn permits_for(&self, n: u64) -> Result<u32, ProxyError> {
        if self.bytes.saturating_add(n) > self.inflight.limit {
            return Err(ProxyError::Overloaded);
        }
        u32::try_from(n).map_err(|_| ProxyError::Overloaded)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_released() {
        let inflight = Inflight::new(100);
        let mut a = inflight.reserve();
        a.grow(60).unwrap();
        let mut b = inflight.reserve();
        assert!(matches!(b.grow(50), Err(ProxyError::Overloaded)));
        b.grow(40).unwrap();
        assert!(b.grow(1).is_err(), "not one byte more");
        drop(a);
        assert_eq!(inflight.used(), 40);
        b.shrink_to(10);
        assert_eq!(inflight.used(), 10);
        let mut c = inflight.reserve();
        c.grow(90).unwrap();
        drop((b, c));
        assert_eq!(inflight.used(), 0);
        assert_eq!(inflight.permits.available_permits(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_room_in_arrival_order_or_503_after_the_wait() {
        let inflight = Inflight::new(10);
        let mut held = inflight.reserve();
        held.grow(10).unwrap();
        let order = Arc::new(std::sync::Mutex::new(vec![]));
        let mut waiters = vec![];
        for i in 0..3u64 {
            let (inflight, order) = (inflight.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let mut r = inflight.reserve();
                let got = r.grow_within(5, Duration::from_secs(2)).await;
                order.lock().unwrap().push((i, got.is_ok()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(r);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![(0, true), (1, true), (2, true)],
            "first come, first served"
        );
        let mut full = inflight.reserve();
        full.grow(10).unwrap();
        let mut late = inflight.reserve();
        let started = tokio::time::Instant::now();
        assert!(late.grow_within(1, Duration::from_secs(2)).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(
            late.grow_within(11, Duration::from_secs(2)).await.is_err(),
            "more than the whole budget is refused at once"
        );
    }
}
