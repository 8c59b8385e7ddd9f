//! influx-write-proxy: a reverse proxy that routes InfluxDB 1.x line-protocol writes
//! (`/write`, `/api/v2/write`) to clusters of InfluxDB Enterprise data nodes or OSS servers.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod config;
pub mod deadline;
pub mod error;
pub mod gzip;
pub mod headers;
pub mod http;
pub mod inflight;
pub mod influxql;
pub mod limit;
pub mod lineproto;
pub mod log_fields;
pub mod log_time;
pub mod metrics;
pub mod rewrite;
pub mod server;
pub mod spool;
pub mod stack;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use config::Config;
pub use server::Bound;
