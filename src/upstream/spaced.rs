//! Upstream connections that read control bytes (NUL and the rest of C0 but tab, CR and LF,
//! and DEL) as spaces. InfluxDB copies a rejected point's bytes into `X-Influxdb-Error` raw,
//! and no HTTP parser accepts a NUL in a header (httparse refuses it even when told to skip
//! bad headers), so a 400 for such a point would reach the client as a 502. Nothing else an
//! upstream sends this client holds such a byte: its answers to writes and pings are empty or
//! JSON, which escapes them, and it asks for no compressed answers. Requests pass unchanged.
//! Query answers, which may be MessagePack or gzip, go through a client without it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower::Service;

/// A connector whose connections read control bytes as spaces.
#[derive(Clone)]
pub struct Spacing<C>(pub C);

impl<C> Service<Uri> for Spacing<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Spaced<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(Spaced::new(connecting.await?)) })
    }
}

/// A connection of [`Spacing`].
pub struct Spaced<T> {
    inner: T,
    /// What one read lands in before it is handed on ([`SCRATCH`] bytes).
    scratch: Box<[u8]>,
}

/// The most one read of a [`Spaced`] connection takes. What a node answers writes and pings
/// is a head and at most an error's JSON, so 4 KiB takes nearly every answer in one read, and
/// every pooled connection keeps its scratch while idle (16 KiB, hyper's largest first read,
/// held 4 MiB over 256 connections, outside `max_inflight_bytes`).
const SCRATCH: usize = 4 * 1024;

impl<T> Spaced<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
        }
    }
}

impl<T: Read + Unpin> Read for Spaced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = buf.remaining().min(this.scratch.len());
        let mut scratch = ReadBuf::new(&mut this.scratch[..room]);
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, scratch.unfilled()))?;
        let read = scratch.filled().len();
        let bytes = &mut this.scratch[..read];
        for b in bytes.iter_mut() {
            if (*b < 0x20 && !matches!(*b, b'\t' | b'\r' | b'\n')) || *b == 0x7f {
                *b = b' ';
            }
        }
        buf.put_slice(bytes);
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Spaced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Spaced<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn control_bytes_read_as_spaces_and_everything_else_unchanged() {
        let (client, mut server) = tokio::io::duplex(64);
        server
            .write_all(b"a\0b\x01\x7fc\t\r\n\xc3\xa9")
            .await
            .unwrap();
        drop(server);
        let mut spaced = Spaced::new(TokioIo::new(client));
        let mut out = [0u8; 16];
        let mut read = 0;
        loop {
            let mut buf = ReadBuf::new(&mut out[read..]);
            std::future::poll_fn(|cx| Pin::new(&mut spaced).poll_read(cx, buf.unfilled()))
                .await
                .unwrap();
            let n = buf.filled().len();
            if n == 0 {
                break;
            }
            read += n;
        }
        assert_eq!(&out[..read], b"a b  c\t\r\n\xc3\xa9");
    }
}
