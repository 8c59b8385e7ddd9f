//! The proxy's Prometheus metrics (SPEC §9), in a registry the proxy owns (never the
//! process-global default), served as text on `/metrics`. Label values come only from the
//! config (cluster names) or fixed sets (`result`), never from what a client sends.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub const PREFIX: &str = "influx_write_proxy";

pub struct Metrics {
    registry: Registry,
    pub spool_bytes: IntGaugeVec,
    pub spool_entries: IntGaugeVec,
    /// `result`: spooled, replayed, rejected, expired, refused.
    pub spool_writes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some(PREFIX.to_string()), None)
            .expect("the prefix is a valid metric name");
        let spool_bytes = IntGaugeVec::new(
            Opts::new(
                "spool_bytes",
                "Bytes of spooled writes not yet delivered, per cluster.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let spool_entries = IntGaugeVec::new(
            Opts::new(
                "spool_entries",
                "Spooled writes not yet delivered, per cluster.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let spool_writes = IntCounterVec::new(
            Opts::new(
                "spool_writes_total",
                "Spool events per cluster: spooled, replayed, rejected (moved to rejected/), \
                 expired (past max_age, moved to rejected/), refused (full or disk error: 503).",
            ),
            &["cluster", "result"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(spool_bytes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(spool_entries.clone()),
            Box::new(spool_writes.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            spool_bytes,
            spool_entries,
            spool_writes,
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
