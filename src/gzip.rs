//! Gunzip within `max_decoded_body_bytes` and within the request's in-flight reservation.
//! A single-member body whose trailer states its size (nearly every client's) is decoded by
//! libdeflate into a buffer of exactly that size, reserved first; anything else — several
//! members, a trailer that lies, a size over the limit — goes through flate2's streaming
//! decoder, which grows the output (and the reservation) step by step and stops at the
//! limit. Either way no more than the limit is ever allocated. Measured on the rig's
//! 5,000-line body, one core (issue 11): libdeflate 0.65 s per decoded GB, zlib-rs 1.47,
//! zlib 1.88.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::inflight::Reservation;

/// What the streaming path reads at a time.
const STEP: usize = 64 * 1024;

/// The size a gzip body's trailer states (its last member's, modulo 2^32).
pub fn stated_size(compressed: &[u8]) -> Option<u64> {
    let tail: [u8; 4] = compressed
        .get(compressed.len().checked_sub(4)?..)?
        .try_into()
        .ok()?;
    (compressed.len() >= 18).then(|| u32::from_le_bytes(tail) as u64)
}

/// Decompresses `compressed` (concatenated members too, as Go's reader does), refusing to
/// produce more than `limit` bytes. The decoded bytes are held in `reservation` beyond its
/// first `base` bytes (what the request holds besides), taken before they are written (503
/// when they do not fit); on success it holds `base` + the decoded length.
pub fn gunzip(
    compressed: &[u8],
    limit: u64,
    reservation: &mut Reservation,
    base: u64,
) -> Result<Bytes, ProxyError> {
    if let Some(size) = stated_size(compressed).filter(|&s| s <= limit) {
        if let Some(decoded) = whole(compressed, size as usize, reservation, base)? {
            return Ok(decoded);
        }
    }
    streaming(compressed, limit, reservation, base)
}

/// libdeflate into a buffer of the stated size: `None` unless that is exactly the body.
fn whole(
    compressed: &[u8],
    size: usize,
    reservation: &mut Reservation,
    base: u64,
) -> Result<Option<Bytes>, ProxyError> {
    reservation.ensure(base + size as u64)?;
    let mut out = vec![0u8; size];
    let decoded = libdeflater::Decompressor::new().gzip_decompress(compressed, &mut out);
    if decoded.is_ok_and(|n| n == size) {
        // libdeflate decodes the first member only. Its trailer (CRC-32, size) follows its
        // data; if that pattern is found only at the very end, the first member is the body.
        let mut trailer = libdeflater::crc32(&out).to_le_bytes().to_vec();
        trailer.extend_from_slice(&(size as u32).to_le_bytes());
        let mut found = memchr::memmem::find_iter(compressed, &trailer);
        if found.next() == Some(compressed.len() - 8) && found.next().is_none() {
            reservation.shrink_to(base + size as u64);
            return Ok(Some(Bytes::from(out)));
        }
    }
    Ok(None)
}

/// flate2's multi-member decoder; the output doubles as it fills, never past `limit`, each
/// size reserved before it is allocated.
fn streaming(
    compressed: &[u8],
    limit: u64,
    reservation: &mut Reservation,
    base: u64,
) -> Result<Bytes, ProxyError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    reservation.ensure(base + STEP as u64)?;
    let mut scratch = vec![0u8; STEP];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = decoder.read(&mut scratch).map_err(ProxyError::BadGzip)?;
        if n == 0 {
            break;
        }
        if (out.len() + n) as u64 > limit {
            return Err(ProxyError::DecodedBodyTooLarge { limit });
        }
        if out.len() + n > out.capacity() {
            let capacity = (out.capacity() * 2)
                .max(out.len() + n)
                .max(STEP)
                .min(limit as usize);
            reservation.ensure(base + (STEP + capacity) as u64)?;
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&scratch[..n]);
    }
    reservation.shrink_to(base + out.len() as u64);
    Ok(Bytes::from(out))
}

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle decoder thread waits for work before it exits.
const IDLE: Duration = Duration::from_secs(1);

/// The threads gzip bodies are decoded on: at most one per core, started when work comes
/// and ended after a second without any (idle threads wait on the queue one at a time, so
/// they leave a second apart). That bounds the decodes at once, and it gives
/// their memory back: the allocator (mimalloc) returns a thread's freed pages lazily, when
/// that thread allocates again or exits, so a thread that sits idle keeps what it decoded
/// last. Measured with ten concurrent 16 MiB bombs: on tokio's blocking pool 149 MiB stayed
/// held afterwards; on threads that exit when idle, RSS is back near idle within ~1 s.
pub struct Decoders {
    jobs: Mutex<mpsc::Sender<Job>>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    alive: Arc<AtomicUsize>,
    max: usize,
}

impl Decoders {
    pub fn new(max: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        Self {
            jobs: Mutex::new(jobs),
            queue: Arc::new(Mutex::new(queue)),
            alive: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// Runs `work` on a decoder thread, in arrival order.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .expect("the queue lives as long as the decoders");
        self.spawn_if_short();
        result.await.expect("decoding does not panic")
    }

    fn spawn_if_short(&self) {
        let mut alive = self.alive.load(Ordering::Acquire);
        while alive < self.max {
            match self
                .alive
                .compare_exchange(alive, alive + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let (queue, count) = (self.queue.clone(), self.alive.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("gunzip".into())
                            .spawn(move || {
                                let next = |wait| {
                                    let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                                    match wait {
                                        Some(wait) => queue.recv_timeout(wait).ok(),
                                        None => queue.try_recv().ok(),
                                    }
                                };
                                loop {
                                    if let Some(job) = next(Some(IDLE)) {
                                        job();
                                        continue;
                                    }
                                    // Leaving: a job sent before this count drops finds no
                                    // thread to start, so look once more after it drops.
                                    count.fetch_sub(1, Ordering::AcqRel);
                                    match next(None) {
                                        Some(job) => {
                                            count.fetch_add(1, Ordering::AcqRel);
                                            job();
                                        }
                                        None => return,
                                    }
                                }
                            });
                    if spawned.is_err() {
                        self.alive.fetch_sub(1, Ordering::AcqRel);
                    }
                    return;
                }
                Err(now) => alive = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inflight::Inflight;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode(compressed: &[u8], limit: u64) -> (Result<Bytes, ProxyError>, u64) {
        let inflight = Inflight::new(1 << 30);
        let mut reservation = inflight.reserve();
        let out = gunzip(compressed, limit, &mut reservation, 0);
        (out, reservation.bytes())
    }

    #[test]
    fn round_trips_and_reserves_exactly_what_it_holds() {
        let body = b"cpu,host=a v=1 1\n".repeat(1000);
        let (out, reserved) = decode(&gzip(&body), 1 << 20);
        assert_eq!(&out.unwrap()[..], &body[..]);
        assert_eq!(reserved, body.len() as u64);
    }

    #[test]
    fn concatenated_members_are_all_decoded_even_when_alike() {
        let mut two = gzip(b"a v=1\n");
        two.extend(gzip(b"b v=2\n"));
        assert_eq!(&decode(&two, 100).0.unwrap()[..], b"a v=1\nb v=2\n");
        // Two identical members end with the same trailer as the first: still both.
        let mut same = gzip(b"a v=1\n");
        same.extend(gzip(b"a v=1\n"));
        let (out, reserved) = decode(&same, 100);
        assert_eq!(&out.unwrap()[..], b"a v=1\na v=1\n");
        assert_eq!(reserved, 12);
    }

    #[test]
    fn bombs_stop_at_the_limit_whatever_the_trailer_says() {
        let bomb = gzip(&vec![b'a'; 10_000_000]);
        assert!(bomb.len() < 50_000, "{}", bomb.len());
        let (out, reserved) = decode(&bomb, 1_000_000);
        assert!(matches!(
            out,
            Err(ProxyError::DecodedBodyTooLarge { limit: 1_000_000 })
        ));
        assert!(reserved <= 1_000_000 + 2 * STEP as u64, "{reserved}");
        assert_eq!(decode(&bomb, 10_000_000).0.unwrap().len(), 10_000_000);
        // A trailer that claims little: libdeflate runs out of room, the stream decoder stops.
        let mut liar = bomb.clone();
        let n = liar.len();
        liar[n - 4..].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            decode(&liar, 1_000_000).0,
            Err(ProxyError::DecodedBodyTooLarge { .. } | ProxyError::BadGzip(_))
        ));
    }

    #[test]
    fn decoded_bytes_come_from_the_reservation() {
        let body = vec![b'x'; 200_000];
        let inflight = Inflight::new(100_000);
        let mut reservation = inflight.reserve();
        let out = gunzip(&gzip(&body), 1 << 20, &mut reservation, 0);
        assert!(matches!(out, Err(ProxyError::Overloaded)), "{out:?}");
    }

    #[tokio::test]
    async fn decoders_run_work_on_their_own_threads() {
        let decoders = Decoders::new(2);
        let names: Vec<String> = futures_util::future::join_all(
            (0..8)
                .map(|_| decoders.run(|| std::thread::current().name().unwrap_or("").to_string())),
        )
        .await;
        assert!(names.iter().all(|n| n == "gunzip"), "{names:?}");
        assert!(decoders.alive.load(Ordering::Acquire) <= 2);
        // Idle threads wait for work one at a time (the queue is behind a lock), so the
        // last of two leaves about two IDLEs after the last job.
        tokio::time::sleep(IDLE * 3).await;
        assert_eq!(
            decoders.alive.load(Ordering::Acquire),
            0,
            "idle threads exit"
        );
        assert_eq!(decoders.run(|| 7).await, 7, "and come back for new work");
    }

    #[test]
    fn unreadable_gzip_is_a_bad_request() {
        assert_eq!(decode(b"plain text", 100).0.unwrap_err().status(), 400);
        let mut cut = gzip(&b"a v=1\n".repeat(100));
        cut.truncate(cut.len() - 3);
        assert_eq!(decode(&cut, 10_000).0.unwrap_err().status(), 400);
    }
}
