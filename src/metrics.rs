//! The proxy's Prometheus metrics (SPEC §9), in a registry the proxy owns (never the
//! process-global default), served as text on `/metrics`; and the outermost layer, which
//! counts and times every request and writes its access-log line.
//!
//! Label values come only from the config (cluster, node and principal names) or fixed sets
//! (`endpoint`, `result`, `reason`, status codes), never from what a client sends: a client
//! writing to a thousand databases adds no series.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::ProxyError;

pub const PREFIX: &str = "influx_write_proxy";

/// Seconds: sub-millisecond forwards on loopback up to slow retried writes and timeouts.
const WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub write_bytes: IntCounterVec,
    pub write_points: IntCounterVec,
    /// `reason`: missing, invalid, forbidden.
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub body_too_large: IntCounter,
    /// `code`: the upstream's status, or `error` (no HTTP answer) or `timeout`.
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub mirror_failures: IntCounterVec,
    pub spool_bytes: IntGaugeVec,
    pub spool_entries: IntGaugeVec,
    /// `result`: spooled, replayed, rejected, expired, refused.
    pub spool_writes: IntCounterVec,
    pub inflight_requests: IntGauge,
    pub inflight_bytes: IntGauge,
    pub inflight_bytes_limit: IntGauge,
    pub spool_bytes_limit: IntGauge,
    /// Client connections open on `listen`.
    pub connections_open: IntGauge,
    /// Connections closed at accept because `max_connections` were open.
    pub connections_refused: IntCounter,
    /// `reason`: head (no request in time, slowloris), idle (keep-alive ran out).
    pub connections_timed_out: IntCounterVec,
    pub tls_cert_expiry: IntGauge,
    /// `result`: success, error.
    pub tls_cert_reloads: IntCounterVec,
    /// `result`: success, error.
    pub config_reloads: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(WRITE_BUCKETS.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<C>) -> C {
    let collector = made.expect("metric definitions are valid");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some(PREFIX.to_string()), None)
            .expect("the prefix is a valid metric name");
        let plain_counter =
            |name: &str, help: &str| register(&r, IntCounter::with_opts(Opts::new(name, help)));
        let plain_gauge =
            |name: &str, help: &str| register(&r, IntGauge::with_opts(Opts::new(name, help)));
        Metrics {
            http_requests: counter(
                &r,
                "http_requests_total",
                "Requests answered, by endpoint (write, v2_write, ping, health, query, other) and status code.",
                &["endpoint", "code"],
            ),
            http_duration: histogram(
                &r,
                "http_request_duration_seconds",
                "Time from request head to response head, by endpoint.",
                &["endpoint"],
            ),
            write_bytes: counter(
                &r,
                "write_bytes_total",
                "Body bytes of acknowledged writes (as forwarded), by primary cluster.",
                &["cluster"],
            ),
            write_points: counter(
                &r,
                "write_points_total",
                "Points in acknowledged writes, by primary cluster.",
                &["cluster"],
            ),
            auth_failures: counter(
                &r,
                "auth_failures_total",
                "Requests refused by auth: missing or invalid credentials (401), or a database the principal may not write (403).",
                &["reason"],
            ),
            rate_limited: counter(
                &r,
                "rate_limited_total",
                "Requests refused with 429 for a principal over its rate limit.",
                &["principal"],
            ),
            body_too_large: plain_counter(
                "body_too_large_total",
                "Requests refused with 413 (wire or decoded body over its limit).",
            ),
            upstream_requests: counter(
                &r,
                "upstream_requests_total",
                "Tries sent to data nodes, by status code, or error (no HTTP answer) or timeout.",
                &["cluster", "node", "code"],
            ),
            upstream_duration: histogram(
                &r,
                "upstream_request_duration_seconds",
                "Duration of each try against a data node.",
                &["cluster", "node"],
            ),
            upstream_retries: counter(
                &r,
                "upstream_retries_total",
                "Tries after the first, by cluster.",
                &["cluster"],
            ),
            upstream_healthy: gauge(
                &r,
                "upstream_healthy",
                "1 when the node is healthy (active checks and passive ejection), else 0.",
                &["cluster", "node"],
            ),
            mirror_failures: counter(
                &r,
                "mirror_failures_total",
                "Mirror deliveries that failed every try (spooled when the spool is enabled).",
                &["cluster"],
            ),
            spool_bytes: gauge(
                &r,
                "spool_bytes",
                "Bytes of spooled writes not yet delivered, per cluster.",
                &["cluster"],
            ),
            spool_entries: gauge(
                &r,
                "spool_entries",
                "Spooled writes not yet delivered, per cluster.",
                &["cluster"],
            ),
            spool_writes: counter(
                &r,
                "spool_writes_total",
                "Spool events per cluster: spooled, replayed, rejected (moved to rejected/), \
                 expired (past max_age, moved to rejected/), refused (full or disk error: 503).",
                &["cluster", "result"],
            ),
            inflight_requests: plain_gauge("inflight_requests", "Requests being served."),
            inflight_bytes: plain_gauge(
                "inflight_bytes",
                "Body bytes held by requests being served (bounded by max_inflight_bytes).",
            ),
            inflight_bytes_limit: plain_gauge(
                "inflight_bytes_limit",
                "server.max_inflight_bytes: the budget inflight_bytes is held under.",
            ),
            spool_bytes_limit: plain_gauge(
                "spool_bytes_limit",
                "spool.max_bytes: the bytes each cluster's spool may hold (0 with the spool off).",
            ),
            connections_open: plain_gauge(
                "connections_open",
                "Client connections open on listen (bounded by max_connections).",
            ),
            connections_refused: plain_counter(
                "connections_refused_total",
                "Connections answered 503 and closed at accept because max_connections were open.",
            ),
            connections_timed_out: counter(
                &r,
                "connections_timed_out_total",
                "Connections closed by a deadline: head (no complete request head or first HTTP/2 \
                 stream within header_read_timeout), idle (no request for keepalive_timeout), \
                 stalled (a response not sent within request_timeout, or [query] timeout, of \
                 its head: a client that stopped reading).",
                &["reason"],
            ),
            tls_cert_expiry: plain_gauge(
                "tls_cert_expiry_timestamp_seconds",
                "notAfter of the serving certificate, as a Unix timestamp (0 without TLS).",
            ),
            tls_cert_reloads: counter(
                &r,
                "tls_cert_reloads_total",
                "Certificate re-reads after a change on disk: success, or error (the previous certificate stays).",
                &["result"],
            ),
            config_reloads: counter(
                &r,
                "config_reloads_total",
                "SIGHUP reloads of proxy.toml: success, or error (the running config stays).",
                &["result"],
            ),
            registry: r,
        }
    }

    /// Counts what an error says about the client: a database it may not write
    /// (`auth_failures_total{reason="forbidden"}`), a principal over its rate
    /// (`rate_limited_total`). 401s are counted where it is known whether credentials were
    /// missing or invalid.
    pub fn count_refusal(&self, error: &ProxyError) {
        match error {
            ProxyError::Forbidden { .. } => {
                self.auth_failures.with_label_values(&["forbidden"]).inc()
            }
            ProxyError::RateLimited { principal, .. } => self
                .rate_limited
                .with_label_values(&[principal.as_str()])
                .inc(),
            _ => {}
        }
    }

    /// The text exposition format, and its content type.
    pub fn render(&self) -> (Vec<u8>, String) {
        let encoder = TextEncoder::new();
        let mut out = Vec::with_capacity(16 * 1024);
        encoder
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory does not fail");
        (out, encoder.format_type().to_string())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_registered_once_under_the_prefix_with_help() {
        let metrics = Metrics::new();
        // Labelled families appear once a label set is used.
        metrics
            .http_requests
            .with_label_values(&["write", "204"])
            .inc();
        metrics
            .http_duration
            .with_label_values(&["write"])
            .observe(0.01);
        metrics
            .upstream_healthy
            .with_label_values(&["default", "n1"])
            .set(1);
        let families = metrics.registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for family in &families {
            assert!(
                family.name().starts_with("influx_write_proxy_"),
                "{}",
                family.name()
            );
            assert!(!family.help().is_empty(), "{} has no help", family.name());
        }
        for name in [
            "influx_write_proxy_http_requests_total",
            "influx_write_proxy_http_request_duration_seconds",
            "influx_write_proxy_upstream_healthy",
            "influx_write_proxy_inflight_bytes",
            "influx_write_proxy_inflight_bytes_limit",
            "influx_write_proxy_spool_bytes_limit",
            "influx_write_proxy_connections_open",
            "influx_write_proxy_tls_cert_expiry_timestamp_seconds",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn the_exposition_is_prometheus_text() {
        let metrics = Metrics::new();
        metrics.write_points.with_label_values(&["eu"]).inc_by(5000);
        let (body, content_type) = metrics.render();
        let text = String::from_utf8(body).unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(text.contains("# TYPE influx_write_proxy_write_points_total counter\n"));
        assert!(text.contains("influx_write_proxy_write_points_total{cluster=\"eu\"} 5000\n"));
    }
}
