//! Reading request bodies within bounds: `max_body_bytes` (413, from `Content-Length` before
//! reading and while reading chunked bodies), `body_read_timeout` between frames (408),
//! `max_inflight_bytes` across all requests (503), and gunzip within `max_decoded_body_bytes`.

use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ProxyError;

/// Bytes of request bodies held in memory by all requests together.
#[derive(Debug)]
pub struct Inflight {
    used: AtomicU64,
    limit: u64,
}

impl Inflight {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            limit,
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An empty reservation, grown as bytes arrive and released when dropped.
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
    /// Takes `n` more bytes, or refuses when that would pass the limit.
    pub fn grow(&mut self, n: u64) -> Result<(), ProxyError> {
        let limit = self.inflight.limit;
        self.inflight
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .map_err(|_| ProxyError::Overloaded)?;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inflight.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A body held as the frames it was read in, so it can be scanned and forwarded without
/// being copied into one buffer. It is also the body type sent upstream: its exact size
/// makes hyper send `Content-Length`, and each chunk goes out as read (vectored writes).
#[derive(Debug, Default, Clone)]
pub struct Chunks {
    chunks: Vec<Bytes>,
    /// The first chunk not yet sent (when used as a body).
    sent: usize,
    len: u64,
}

impl Chunks {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks not yet sent.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks[self.sent..]
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    /// The body in one buffer: free when it is one chunk, one copy otherwise.
    pub fn join(&self) -> Bytes {
        match self.chunks() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut buf = BytesMut::with_capacity(self.len as usize);
                for chunk in many {
                    buf.extend_from_slice(chunk);
                }
                buf.freeze()
            }
        }
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        let mut chunks = Chunks::default();
        if !bytes.is_empty() {
            chunks.push(bytes);
        }
        chunks
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(slot) = this.chunks.get_mut(this.sent) else {
            return Poll::Ready(None);
        };
        // Hand the chunk over, so its memory goes as soon as hyper has written it.
        let chunk = std::mem::take(slot);
        this.sent += 1;
        this.len -= chunk.len() as u64;
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.chunks.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// Reads a whole body, keeping the frames as hyper produced them and handing each to
/// `inspect` as it arrives.
pub async fn read(
    mut body: Incoming,
    content_length: Option<u64>,
    limit: u64,
    stall: Duration,
    reservation: &mut Reservation,
    mut inspect: impl FnMut(&[u8]),
) -> Result<Chunks, ProxyError> {
    if content_length.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let mut chunks = Chunks::default();
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout(stall)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::BodyRead(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunks.len() + data.len() as u64 > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        reservation.grow(data.len() as u64)?;
        inspect(&data);
        chunks.push(data);
    }
    Ok(chunks)
}

/// Decompresses a gzip body (concatenated members too, as Go's reader does), refusing to
/// produce more than `limit` bytes so a small bomb cannot take the memory.
pub fn gunzip(compressed: &[u8], limit: u64) -> Result<Bytes, ProxyError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed).take(limit + 1);
    let mut out = Vec::with_capacity((compressed.len() * 4).min(limit as usize + 1));
    decoder.read_to_end(&mut out).map_err(ProxyError::BadGzip)?;
    if out.len() as u64 > limit {
        return Err(ProxyError::DecodedBodyTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trips_and_accepts_concatenated_members() {
        let mut two = gzip(b"a v=1\n");
        two.extend(gzip(b"b v=2\n"));
        assert_eq!(&gunzip(&two, 100).unwrap()[..], b"a v=1\nb v=2\n");
    }

    #[test]
    fn rejects_gzip_bomb_at_decoded_limit() {
        let bomb = gzip(&vec![b'a'; 10_000_000]);
        assert!(bomb.len() < 50_000, "{}", bomb.len());
        assert!(matches!(
            gunzip(&bomb, 1_000_000),
            Err(ProxyError::DecodedBodyTooLarge { limit: 1_000_000 })
        ));
        assert_eq!(gunzip(&bomb, 10_000_000).unwrap().len(), 10_000_000);
    }

    #[test]
    fn unreadable_gzip_is_a_bad_request() {
        let err = gunzip(b"plain text", 100).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[tokio::test]
    async fn chunks_forward_every_byte_with_an_exact_length() {
        use http_body::Body;
        let mut chunks = Chunks::default();
        chunks.push(Bytes::from_static(b"a v=1 1\nb "));
        chunks.push(Bytes::from_static(b"v=2 2\n"));
        assert_eq!(chunks.size_hint().exact(), Some(16));
        assert_eq!(&chunks.join()[..], b"a v=1 1\nb v=2 2\n");
        let collected = chunks.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"a v=1 1\nb v=2 2\n");
    }

    #[test]
    fn inflight_reservations_are_bounded_and_released() {
        let inflight = Inflight::new(100);
        let mut a = inflight.reserve();
        a.grow(60).unwrap();
        let mut b = inflight.reserve();
        assert!(matches!(b.grow(50), Err(ProxyError::Overloaded)));
        b.grow(40).unwrap();
        drop(a);
        assert_eq!(inflight.used(), 40);
        drop(b);
        assert_eq!(inflight.used(), 0);
    }
}
