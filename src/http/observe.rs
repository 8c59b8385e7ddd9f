//! The outermost layer: counts every answer in the metrics (by endpoint label and code, with
//! its duration) and writes the access log line, whatever happened inside.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use prometheus::{Histogram, IntCounter, IntGauge};
use tower::{Layer, Service};

use super::{Endpoint, Listener, RequestContext, WriteDetails, ENDPOINTS};
use crate::metrics::Metrics;

/// Outermost layer: request counts and durations, requests in flight, 413s, and one access
/// line per request (`info`; the admin endpoints at `debug`).
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    labelled: Arc<[Labelled]>,
}

/// One `endpoint` label's duration histogram and its 200 and 204 counters, each looked up
/// on first use and then kept, rather than hashed and locked on every request. (Looked up
/// lazily so that, as before, a series appears only once it has counted something.)
struct Labelled {
    endpoint: &'static str,
    duration: OnceLock<Histogram>,
    ok: OnceLock<IntCounter>,
    no_content: OnceLock<IntCounter>,
}

impl Labelled {
    fn count(&self, metrics: &Metrics, status: u16) {
        let code = |status| {
            move || {
                metrics
                    .http_requests
                    .with_label_values(&[self.endpoint, status])
            }
        };
        match status {
            200 => self.ok.get_or_init(code("200")).inc(),
            204 => self.no_content.get_or_init(code("204")).inc(),
            _ => {
                let mut code = itoa::Buffer::new();
                metrics
                    .http_requests
                    .with_label_values(&[self.endpoint, code.format(status)])
                    .inc();
            }
        }
    }

    fn time(&self, metrics: &Metrics, elapsed: std::time::Duration) {
        self.duration
            .get_or_init(|| metrics.http_duration.with_label_values(&[self.endpoint]))
            .observe(elapsed.as_secs_f64());
    }
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let mut labels: Vec<&'static str> = ENDPOINTS.iter().map(|e| e.label).collect();
        labels.push("other");
        labels.dedup();
        let labelled = labels
            .into_iter()
            .map(|endpoint| Labelled {
                endpoint,
                duration: OnceLock::new(),
                ok: OnceLock::new(),
                no_content: OnceLock::new(),
            })
            .collect();
        Self { metrics, labelled }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            labelled: self.labelled.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    labelled: Arc<[Labelled]>,
}

/// Decrements the in-flight gauge however the request ends (answered or dropped).
struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<S, B, RB> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let known = Endpoint::of(request.uri().path());
        let endpoint = known.map_or("other", |e| e.label);
        // Probes and scrapes: logged at `debug`, not `info`.
        let admin = known.is_some_and(|e| e.listener == Listener::Admin);
        let method = request.method().clone();
        let peer = RequestContext::of(&request).and_then(|c| c.peer);
        self.metrics.inflight_requests.inc();
        let guard = InflightGuard(self.metrics.inflight_requests.clone());
        Observed {
            inner: self.inner.call(request),
            request: Seen {
                started,
                endpoint,
                admin,
                method,
                peer,
            },
            metrics: self.metrics.clone(),
            labelled: self.labelled.clone(),
            guard: Some(guard),
        }
    }
}

/// What [`Observe`] notes of a request before it is served.
struct Seen {
    started: Instant,
    endpoint: &'static str,
    admin: bool,
    method: http::Method,
    peer: Option<std::net::SocketAddr>,
}

pin_project_lite::pin_project! {
    /// The inner service's answer, counted, timed and logged when it comes. A named future
    /// rather than a boxed `async` block: one allocation less per request.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        request: Seen,
        metrics: Arc<Metrics>,
        labelled: Arc<[Labelled]>,
        guard: Option<InflightGuard>,
    }
}

impl<F, RB, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        drop(this.guard.take());
        if let Ok(response) = &result {
            let seen = &*this.request;
            let status = response.status().as_u16();
            let elapsed = seen.started.elapsed();
            let labelled = this
                .labelled
                .iter()
                .find(|l| l.endpoint == seen.endpoint)
                .expect("every endpoint label is in the table");
            labelled.count(this.metrics, status);
            labelled.time(this.metrics, elapsed);
            if status == 413 {
                this.metrics.body_too_large.inc();
            }
            access_log(
                seen.endpoint,
                seen.admin,
                &seen.method,
                seen.peer,
                response,
                elapsed,
            );
        }
        Poll::Ready(result)
    }
}

fn access_log<RB>(
    endpoint: &'static str,
    admin: bool,
    method: &http::Method,
    peer: Option<std::net::SocketAddr>,
    response: &Response<RB>,
    elapsed: std::time::Duration,
) {
    let request_id = response
        .headers()
        .get(crate::headers::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let status = response.status().as_u16();
    let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    let ip = peer.map(|p| IpText::of(p.ip()));
    let client = ip.as_ref().map_or("", IpText::as_str);
    let empty = WriteDetails::default();
    let w = response
        .extensions()
        .get::<WriteDetails>()
        .unwrap_or(&empty);
    if let Some(sink) = crate::log_fields::direct_sink() {
        // `enabled!` wants its level as a constant.
        let (level, enabled) = if admin {
            use tracing::Level;
            (
                Level::DEBUG,
                tracing::enabled!(target: "access", Level::DEBUG),
            )
        } else {
            use tracing::Level;
            (
                Level::INFO,
                tracing::enabled!(target: "access", Level::INFO),
            )
        };
        if enabled {
            use crate::log_fields::Value::{Display, Str, F64, U64};
            let fields = [
                ("request_id", Str(request_id)),
                ("method", Display(method.as_str())),
                ("endpoint", Str(endpoint)),
                ("status", U64(status.into())),
                ("client", Str(client)),
                ("db", Display(&w.db)),
                ("rp", Display(&w.rp)),
                ("principal", Display(&w.principal)),
                ("cluster", Display(&w.cluster)),
                ("node", Display(&w.node)),
                ("tries", U64(w.tries.into())),
                ("bytes", U64(w.bytes)),
                ("points", U64(w.points)),
                ("statements", Display(&w.statements)),
                ("duration_ms", F64(duration_ms)),
            ];
            write_direct(sink, level, &fields);
        }
        return;
    }
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "access",
                $level,
                request_id,
                %method,
                endpoint,
                status,
                client,
                db = %w.db,
                rp = %w.rp,
                principal = %w.principal,
                cluster = %w.cluster,
                node = %w.node,
                tries = w.tries,
                bytes = w.bytes,
                points = w.points,
                statements = %w.statements,
                duration_ms,
                "request"
            )
        };
    }
    if admin {
        line!(tracing::Level::DEBUG);
    } else {
        line!(tracing::Level::INFO);
    }
}

/// One access line to the log writer (see [`crate::log_fields::write_direct`]).
fn write_direct(
    sink: &tracing_appender::non_blocking::NonBlocking,
    level: tracing::Level,
    fields: &[(&str, crate::log_fields::Value<'_>)],
) {
    let timer = crate::log_time::Rfc3339Micros;
    crate::log_fields::write_direct(sink, |line| {
        crate::log_fields::write_line(line, &timer, level, "access", "request", fields)
    });
}

/// An address as `Display` writes it, put together on the stack: `to_string` was an
/// allocation and a `write!` per octet for every access-log line.
struct IpText {
    bytes: [u8; 45],
    len: usize,
}

impl IpText {
    fn of(ip: std::net::IpAddr) -> Self {
        let mut text = IpText {
            bytes: [0; 45],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut cursor = std::io::Cursor::new(&mut text.bytes[..]);
                let _ = write!(cursor, "{v6}");
                text.len = cursor.position() as usize;
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("an address is ASCII")
    }
}

#[cfg(test)]
mod ip_text_tests {
    use super::IpText;
    use std::net::IpAddr;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for text in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.168.1.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string(), "{text}");
        }
    }
}
