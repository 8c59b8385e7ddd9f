//! Per-connection deadlines, kept apart: a connection's first request must arrive within
//! `header_read_timeout` of its first byte (or of the connection opening), and so must every
//! later HTTP/1.1 request head, which stops slowloris clients; and a connection may sit idle
//! between requests for `keepalive_timeout`. hyper's own header timer also runs while a
//! connection is idle, so clients that reuse connections on a schedule close to it (Telegraf
//! flushes every 10 s, the SPEC's default timeout is 10 s) would have them closed just as a
//! write goes out.
//!
//! HTTP/2 is told from HTTP/1.1 by its whole 24-byte preface, as hyper-util does: until the
//! preface is complete (`PRI`, `PRIX /ping HTTP/1.1`, …) the head deadline runs. An HTTP/2
//! connection must open its first stream within the head deadline; after that, frames do not
//! count as activity (a client can always send PINGs), only open streams do: with none open
//! for `keepalive_timeout` the connection is closed.
//!
//! A response must also be sent: once its head is handed over, its body has `answer_timeout`
//! (the larger of `request_timeout` and `[query] timeout`) to reach the client. A client that
//! stops reading — an HTTP/2 stream whose flow-control window stays closed, an HTTP/1.1 client
//! that never reads its answer — holds what the response holds (hyper's send buffers, an
//! upstream query connection) only until then; hyper offers no handle on one stream, so the
//! connection is closed, which resets its streams.
//!
//! Three parts share one [`Conn`] state: the [`Watched`] IO wrapper notes when bytes of a new
//! request arrive; the [`Tracked`] service notes when a request is being served, when its
//! response body starts and when that has been sent; and [`Conn::expired`], raced against the
//! connection by the accept loop, resolves when a deadline passes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests (or before the first): waiting for one to start.
    Waiting,
    /// Part of a request head (or of the HTTP/2 preface) has arrived.
    Head,
    /// Requests are being served: body and request timeouts apply, not ours.
    Serving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Fewer bytes than tell the two apart so far.
    Unknown,
    Http1,
    Http2,
}

/// Why [`Conn::expired`] resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request started within `keepalive_timeout` after the last answer.
    Idle,
    /// A request head (or the first request) did not complete within `header_read_timeout`.
    Head,
    /// A response body was not sent within `answer_timeout` of its head.
    Stalled,
}

/// A connection's deadlines, from the configuration it was accepted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `header_read_timeout`.
    pub head: Duration,
    /// `keepalive_timeout`.
    pub idle: Duration,
    /// From a response's head to the end of its body.
    pub answer: Duration,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    protocol: Protocol,
    deadline: Instant,
    /// Requests being served (their handlers have not returned a response yet).
    serving: usize,
    /// The deadlines of the response bodies being sent.
    answering: Vec<Instant>,
    /// A request has been answered on this connection (so waiting is keep-alive idling).
    answered: bool,
    /// Bytes of the HTTP/2 preface seen so far, while the protocol is unknown.
    preface: usize,
}

/// One connection's deadlines.
#[derive(Debug)]
pub struct Conn {
    state: Mutex<State>,
    /// Arriving bytes change nothing (the protocol is known, and an HTTP/1.1 request is
    /// under way or the connection is HTTP/2): body reads skip the lock.
    quiet: AtomicBool,
    timeouts: Timeouts,
}

impl Conn {
    /// A new connection: its first request must arrive within `timeouts.head`.
    pub fn new(timeouts: Timeouts) -> Arc<Conn> {
        Arc::new(Conn {
            state: Mutex::new(State {
                phase: Phase::Waiting,
                protocol: Protocol::Unknown,
                deadline: Instant::now() + timeouts.head,
                serving: 0,
                answering: Vec::new(),
                answered: false,
                preface: 0,
            }),
            quiet: AtomicBool::new(false),
            timeouts,
        })
    }

    /// Keeps `quiet` in step with `state` (called with the lock held).
    fn settle(&self, state: &State) {
        let quiet = match state.protocol {
            Protocol::Unknown => false,
            Protocol::Http1 => state.phase != Phase::Waiting,
            Protocol::Http2 => true,
        };
        self.quiet.store(quiet, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    pub fn protocol(&self) -> Protocol {
        self.lock().protocol
    }

    /// Bytes arrived from the client.
    fn received(&self, bytes: &[u8]) {
        if self.quiet.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if state.protocol == Protocol::Unknown {
            let seen = state.preface;
            let take = bytes.len().min(H2_PREFACE.len() - seen);
            state.protocol = if bytes[..take] != H2_PREFACE[seen..seen + take] {
                Protocol::Http1
            } else if seen + take == H2_PREFACE.len() {
                Protocol::Http2
            } else {
                Protocol::Unknown
            };
            state.preface = seen + take;
        }
        // HTTP/2 frames between streams are not a request starting; only the bytes up to
        // and including the preface start the first one.
        let starts =
            state.phase == Phase::Waiting && (state.protocol != Protocol::Http2 || !state.answered);
        if starts {
            state.phase = Phase::Head;
            state.deadline = Instant::now() + self.timeouts.head;
        }
        self.settle(&state);
    }

    /// A request is being served until the returned guard is dropped (when it is answered).
    pub fn serving(self: &Arc<Self>) -> Serving {
        let mut state = self.lock();
        state.serving += 1;
        state.phase = Phase::Serving;
        self.settle(&state);
        Serving(Some(self.clone()))
    }

    /// A served request's handler has returned its response: its body is now sent, under
    /// `timeouts.answer`; returns the body's deadline for [`Conn::done`].
    fn answering(&self) -> Instant {
        let mut state = self.lock();
        state.serving -= 1;
        let by = Instant::now() + self.timeouts.answer;
        state.answering.push(by);
        by
    }

    /// A request is done (answered, its response body sent, or given up); `answer` is the
    /// response body's deadline when it had one. Bodies with the same deadline are alike to
    /// the watchdog, so any one of them is taken off.
    fn done(&self, answer: Option<Instant>) {
        let mut state = self.lock();
        match answer {
            Some(by) => {
                if let Some(at) = state.answering.iter().position(|other| *other == by) {
                    state.answering.swap_remove(at);
                }
            }
            None => state.serving -= 1,
        }
        state.answered = true;
        if state.serving == 0 && state.answering.is_empty() && state.phase == Phase::Serving {
            state.phase = Phase::Waiting;
            state.deadline = Instant::now() + self.timeouts.idle;
            self.settle(&state);
        }
    }

    /// Resolves when the connection has waited past a deadline.
    ///
    /// Nothing wakes the watchdog when the state changes (that would be a task wake-up on
    /// every request): it looks again at least every `recheck`, the shortest of the
    /// timeouts. A deadline set at time `t` is never sooner than `t + recheck`, and the
    /// watchdog's last look was at `t` or before, so it wakes by then and sleeps on to the
    /// deadline exactly.
    pub async fn expired(&self) -> Expired {
        let t = &self.timeouts;
        let recheck = t
            .head
            .min(t.idle)
            .min(t.answer)
            .max(Duration::from_millis(1));
        loop {
            let (phase, deadline, answered, answer_by) = {
                let state = self.lock();
                let answer_by = state.answering.iter().min().copied();
                (state.phase, state.deadline, state.answered, answer_by)
            };
            let now = Instant::now();
            let due = match phase {
                Phase::Waiting | Phase::Head => Some(deadline),
                Phase::Serving => answer_by,
            };
            match due {
                Some(due) if now >= due => {
                    return match phase {
                        Phase::Serving => Expired::Stalled,
                        Phase::Waiting if answered => Expired::Idle,
                        _ => Expired::Head,
                    };
                }
                Some(due) => tokio::time::sleep_until(due.min(now + recheck)).await,
                None => tokio::time::sleep_until(now + recheck).await,
            }
        }
    }
}

/// Counts one request as being served until dropped (or until its response body starts).
pub struct Serving(Option<Arc<Conn>>);

impl Serving {
    /// The handler returned its response. An empty body goes out with the head, so the
    /// request is done; any other is now that body being sent.
    fn into_answer<B: hyper::body::Body>(mut self, body: B) -> Answer<B> {
        let sending = if body.is_end_stream() {
            None
        } else {
            self.0.take().map(|conn| {
                let by = conn.answering();
                (conn, by)
            })
        };
        Answer { body, sending }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.done(None);
        }
    }
}

/// A response body that keeps its connection's answer deadline until it ends or is dropped.
pub struct Answer<B> {
    body: B,
    sending: Option<(Arc<Conn>, Instant)>,
}

impl<B> Answer<B> {
    fn finish(&mut self) {
        if let Some((conn, by)) = self.sending.take() {
            conn.done(Some(by));
        }
    }
}

impl<B> Drop for Answer<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.finish();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's IO, telling its [`Conn`] when bytes arrive.
pub struct Watched<T> {
    io: T,
    conn: Arc<Conn>,
}

impl<T> Watched<T> {
    pub fn new(io: T, conn: Arc<Conn>) -> Self {
        Self { io, conn }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > filled {
            this.conn.received(&buf.filled()[filled..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection's service, telling its [`Conn`] when requests are served and answered.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl<S, R, B> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R, Response = http::Response<B>>,
    B: hyper::body::Body + Unpin,
{
    type Response = http::Response<Answer<B>>;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let serving = Some(self.conn.serving());
        Answering {
            inner: self.inner.call(request),
            serving,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Tracked`] service, its body tied to the connection's deadlines. A
    /// named future rather than a boxed `async` block: one allocation less per request.
    pub struct Answering<F> {
        #[pin]
        inner: F,
        serving: Option<Serving>,
    }
}

impl<F, B, E> Future for Answering<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: hyper::body::Body + Unpin,
{
    type Output = Result<http::Response<Answer<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let serving = this.serving.take().expect("polled after it answered");
        Poll::Ready(Ok(response.map(|body| serving.into_answer(body))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(75);
    const ANSWER: Duration = Duration::from_secs(60);
    const TIMEOUTS: Timeouts = Timeouts {
        head: HEAD,
        idle: IDLE,
        answer: ANSWER,
    };

    async fn expires_after(conn: &Conn) -> (Expired, Duration) {
        let started = Instant::now();
        let why = conn.expired().await;
        (why, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_head_timeout() {
        let conn = Conn::new(TIMEOUTS);
        assert_eq!(expires_after(&conn).await, (Expired::Head, HEAD));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_connection_idles_for_the_keepalive_timeout_not_the_head_timeout() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"POST /write HTTP/1.1\r\n");
        drop(conn.serving());
        assert_eq!(conn.phase(), Phase::Waiting);
        assert_eq!(expires_after(&conn).await, (Expired::Idle, IDLE));
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_deadline_runs_from_the_first_byte_of_the_next_request() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"GET /ping HTTP/1.1\r\n\r\n");
        drop(conn.serving());
        tokio::time::sleep(Duration::from_secs(30)).await;
        conn.received(b"P");
        conn.received(b"O");
        assert_eq!(conn.phase(), Phase::Head);
        assert_eq!(expires_after(&conn).await, (Expired::Head, HEAD));
    }

    #[tokio::test(start_paused = true)]
    async fn serving_suspends_the_deadlines() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"POST /write HTTP/1.1\r\n");
        let serving = conn.serving();
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { expires_after(&conn).await })
        };
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(
            !waiting.is_finished(),
            "no deadline while a request is served"
        );
        drop(serving);
        assert_eq!(waiting.await.unwrap().0, Expired::Idle);
    }

    const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_must_open_a_stream_within_the_head_timeout() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"P");
        conn.received(&PREFACE_AND_SETTINGS[1..]);
        assert_eq!(conn.protocol(), Protocol::Http2);
        assert_eq!(conn.phase(), Phase::Head);
        assert_eq!(expires_after(&conn).await, (Expired::Head, HEAD));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_preface_is_a_head_under_its_deadline() {
        for start in [
            &b"PRI"[..],
            b"PRI * HTTP/2.0\r\n",
            b"PRIX /ping HTTP/1.1\r\n",
        ] {
            let conn = Conn::new(TIMEOUTS);
            conn.received(start);
            assert_eq!(conn.phase(), Phase::Head, "{start:?}");
            assert_eq!(
                expires_after(&conn).await,
                (Expired::Head, HEAD),
                "{start:?}"
            );
        }
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"PRIX /ping HTTP/1.1\r\n");
        assert_eq!(conn.protocol(), Protocol::Http1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_without_open_streams_idles_for_the_keepalive_timeout() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(PREFACE_AND_SETTINGS);
        let first = conn.serving();
        let second = conn.serving();
        drop(first);
        assert_eq!(conn.phase(), Phase::Serving, "a stream is still open");
        drop(second);
        assert_eq!(conn.phase(), Phase::Waiting);
        // Frames between streams (PING, WINDOW_UPDATE) do not keep it open.
        tokio::time::sleep(Duration::from_secs(30)).await;
        conn.received(b"\0\0\x08\x06\0\0\0\0\0pingpong");
        assert_eq!(conn.phase(), Phase::Waiting);
        let started = Instant::now();
        assert_eq!(conn.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), IDLE - Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_suspends_the_deadlines_while_it_is_served() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(PREFACE_AND_SETTINGS);
        let serving = conn.serving();
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished());
        drop(serving);
        assert_eq!(waiting.await.unwrap(), Expired::Idle);
    }

    fn body(bytes: &'static [u8]) -> http_body_util::Full<bytes::Bytes> {
        http_body_util::Full::new(bytes::Bytes::from_static(bytes))
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_response_body_ends_the_request_with_its_head() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"POST /write HTTP/1.1\r\n");
        let _answer = conn.serving().into_answer(body(b""));
        assert_eq!(conn.phase(), Phase::Waiting);
        assert_eq!(expires_after(&conn).await, (Expired::Idle, IDLE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_not_sent_within_the_answer_timeout_expires_the_connection() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(PREFACE_AND_SETTINGS);
        let serving = conn.serving();
        // The handler's own time (reading the body, waiting upstream) does not count.
        tokio::time::sleep(Duration::from_secs(300)).await;
        let _answer = serving.into_answer(body(b"{}"));
        assert_eq!(conn.phase(), Phase::Serving);
        assert_eq!(expires_after(&conn).await, (Expired::Stalled, ANSWER));
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_unsent_response_sets_the_deadline() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(PREFACE_AND_SETTINGS);
        let first = conn.serving().into_answer(body(b"{}"));
        tokio::time::sleep(Duration::from_secs(20)).await;
        let _second = conn.serving().into_answer(body(b"{}"));
        let _handler = conn.serving();
        assert_eq!(
            expires_after(&conn).await,
            (Expired::Stalled, ANSWER - Duration::from_secs(20))
        );
        drop(first);
        assert_eq!(
            expires_after(&conn).await,
            (Expired::Stalled, Duration::from_secs(20))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_response_leaves_the_connection_to_its_idle_deadline() {
        let conn = Conn::new(TIMEOUTS);
        conn.received(b"GET /health HTTP/1.1\r\n\r\n");
        let answer = conn.serving().into_answer(body(b"{}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(answer);
        assert_eq!(conn.phase(), Phase::Waiting);
        assert_eq!(expires_after(&conn).await, (Expired::Idle, IDLE));
    }

    #[tokio::test(start_paused = true)]
    async fn http1_methods_starting_with_p_are_not_taken_for_http2() {
        for method in [&b"POST"[..], b"PUT", b"PATCH"] {
            let conn = Conn::new(TIMEOUTS);
            for byte in method {
                conn.received(std::slice::from_ref(byte));
            }
            assert_eq!(conn.phase(), Phase::Head, "{method:?}");
            assert_eq!(conn.protocol(), Protocol::Http1, "{method:?}");
        }
    }
}
