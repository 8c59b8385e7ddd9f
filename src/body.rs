//! Request bodies: [`RequestBody`], which lingers (a body the proxy answered before reading
//! is read and discarded, up to 1 MiB or 1 s, so an HTTP/1.1 client still sending gets the
//! answer instead of a reset, as nginx does), and reading them within bounds:
//! `max_body_bytes` (413, from `Content-Length` before reading and while reading chunked
//! bodies), `body_read_timeout` between frames (408), and the request's share of
//! `max_inflight_bytes` (`inflight`): bytes beyond what it reserved are taken as they arrive
//! (503 when there is no room).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::inflight::Reservation;

/// The most an HTTP/1.1 connection's read buffer holds (hyper's `max_buf_size`).
pub const READ_BUFFER: usize = 64 * 1024;

/// What a body of `length` bytes holds beyond its own bytes while its frames are kept: the
/// frames are slices of the connection's read buffer, so a body that spans more than one
/// buffer keeps the last, partly filled one alive too. A body that fits in one read is
/// charged nothing more (small budgets stay exact).
pub fn read_buffer_held(length: u64) -> u64 {
    match length > READ_BUFFER as u64 {
        true => READ_BUFFER as u64,
        false => 0,
    }
}

/// Most of a body read and discarded after an early answer.
const LINGER_BYTES: usize = 1024 * 1024;
/// Longest wait for the rest of a body after an early answer.
const LINGER_TIME: Duration = Duration::from_secs(1);

/// A request's body as hyper hands it over. Dropped before its end (the proxy answered
/// early: 401, 403, 413, 429, 503, 404…), the rest is read and discarded in the background,
/// up to [`LINGER_BYTES`] or [`LINGER_TIME`]; then the connection is free to close.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take() else {
            return;
        };
        if http_body::Body::is_end_stream(&rest) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut discarded = 0;
            let deadline = tokio::time::sleep(LINGER_TIME);
            tokio::pin!(deadline);
            while discarded < LINGER_BYTES {
                tokio::select! {
                    frame = rest.frame() => match frame {
                        Some(Ok(frame)) => {
                            discarded += frame.data_ref().map_or(0, |d| d.len());
                        }
                        _ => return,
                    },
                    _ = &mut deadline => return,
                }
            }
        });
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

    /// Appends the frames copied into `copies` so far (see [`read`]), if any; the rest of
    /// its buffer stays with `copies` for the next ones.
    fn push_copies(&mut self, copies: &mut BytesMut) {
        if !copies.is_empty() {
            self.push(copies.split().freeze());
        }
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

/// 413 for a body whose `Content-Length` is over `limit`, before a byte of it is read (or
/// room reserved for it).
pub fn declared_within(content_length: Option<u64>, limit: u64) -> Result<(), ProxyError> {
    match content_length {
        Some(n) if n > limit => Err(ProxyError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// A frame shorter than this is copied out of the read buffer it is a slice of (see
/// [`read`]); a longer one is kept as it is, using at least three quarters of its buffer,
/// so a body holds at most a third more than its size, one partly filled buffer of copies
/// and the read buffer of [`read_buffer_held`]. Fast clients fill nearly every read (62 kB
/// on average on the rig), so few frames are copied.
const SHORT_FRAME: usize = READ_BUFFER / 4 * 3;

/// Reads a whole body, handing each frame to `inspect` as it arrives. Bytes beyond what
/// `reservation` already holds are added to it.
///
/// Frames are kept as hyper produced them, slices of the connection's read buffer, with one
/// exception: each read takes a fresh buffer, so a short frame (a read that found little
/// data waiting, as when many clients connect at once) would keep a whole buffer alive for
/// a few bytes, beyond what the request is charged. Short frames are copied, one after the
/// other, into buffers that grow with the copies up to a read buffer's size, each filled
/// before the next is taken.
pub async fn read(
    mut body: RequestBody,
    limit: u64,
    stall: Duration,
    reservation: &mut Reservation,
    mut inspect: impl FnMut(&[u8]),
) -> Result<Chunks, ProxyError> {
    // A body that fits in one read buffer holds one buffer at most: kept as read.
    let copy_short = http_body::Body::size_hint(&body)
        .exact()
        .is_none_or(|n| n > READ_BUFFER as u64);
    let mut chunks = Chunks::default();
    let mut short = BytesMut::new();
    let mut read = 0u64;
    let mut copied = 0;
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
        read += data.len() as u64;
        if read > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let beyond = read.saturating_sub(reservation.bytes());
        if beyond > 0 {
            reservation.grow(beyond)?;
        }
        inspect(&data);
        if copy_short && data.len() < SHORT_FRAME {
            if short.capacity() - short.len() < data.len() {
                chunks.push_copies(&mut short);
                // Grown as the copies are: a body with one short frame (its last, say)
                // takes only that frame's size.
                short.reserve((copied + data.len()).clamp(data.len(), READ_BUFFER));
            }
            copied += data.len();
            short.extend_from_slice(&data);
        } else {
            chunks.push_copies(&mut short);
            chunks.push(data);
        }
    }
    chunks.push_copies(&mut short);
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_longer_than_one_read_buffer_is_charged_one_buffer_more() {
        let buffer = READ_BUFFER as u64;
        assert_eq!(read_buffer_held(0), 0);
        assert_eq!(read_buffer_held(908), 0);
        assert_eq!(read_buffer_held(buffer), 0);
        assert_eq!(read_buffer_held(buffer + 1), buffer);
        assert_eq!(read_buffer_held(785_681), buffer);
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
}
