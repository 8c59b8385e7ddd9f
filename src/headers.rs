//! The header names of InfluxDB's HTTP API that the proxy reads or writes, one constant each,
//! so a handler's `insert` or `get` uses a name made at compile time instead of hashing and
//! checking a string on every request.

use http::header::HeaderName;

/// The request id, read from clients, sent upstream and answered (`http::request_id`).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The other request id header: InfluxDB 1.x answers both.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
/// The version of the server that answered.
pub const X_INFLUXDB_VERSION: HeaderName = HeaderName::from_static("x-influxdb-version");
/// The build (OSS or Enterprise) of the server that answered.
pub const X_INFLUXDB_BUILD: HeaderName = HeaderName::from_static("x-influxdb-build");
/// The error message of a failed request, as InfluxDB also puts it in the header.
pub const X_INFLUXDB_ERROR: HeaderName = HeaderName::from_static("x-influxdb-error");
