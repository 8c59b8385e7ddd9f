//! `ProxyError`, and the one place that turns an error into an HTTP response: status, JSON
//! body (`{"error":…}`, plus `code` and `message` on `/api/v2/write`), `X-Influxdb-Error`,
//! `Retry-After`. 5xx answers never show the cause to the client; it is logged here.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::headers::{X_INFLUXDB_ERROR, X_INFLUXDB_VERSION};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which API shape the client speaks, for the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("database is required")]
    DatabaseRequired,
    #[error("bucket is required")]
    BucketRequired,
    #[error("bucket {0:?} has an empty database")]
    BucketEmptyDatabase(String),
    #[error("invalid precision {0:?} (use n, u, ms, s, m or h)")]
    InvalidPrecisionV1(String),
    #[error("invalid precision {0:?} (use ns, us, ms or s)")]
    InvalidPrecisionV2(String),
    #[error("invalid consistency level {0:?}")]
    InvalidConsistency(String),
    #[error("query parameter {0:?} is not valid UTF-8")]
    InvalidParameter(&'static str),
    #[error("unable to decode gzip body: {0}")]
    BadGzip(#[source] std::io::Error),
    #[error("unsupported Content-Encoding {0:?} (use gzip or identity)")]
    UnsupportedEncoding(String),
    #[error("request body is too large: the limit is {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("decoded request body is too large: the limit is {limit} bytes after decompression")]
    DecodedBodyTooLarge { limit: u64 },
    #[error("request body stalled: no data for {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("error reading request body: {0}")]
    BodyRead(#[source] hyper::Error),
    /// Missing, unknown or wrong credentials: one answer for every kind of failure.
    #[error("authorization failed")]
    Unauthorized,
    #[error("{principal:?} is not authorized to write to database {db:?}")]
    Forbidden { principal: String, db: String },
    #[error("{principal:?} is over its rate limit of {what} per second; retry in {retry_after} s")]
    RateLimited {
        principal: String,
        what: &'static str,
        retry_after: u64,
    },
    #[error("{principal:?} sent a {bytes}-byte write, larger than its burst of {burst} bytes: raise its bytes_per_second or burst_seconds")]
    LargerThanBurst {
        principal: String,
        bytes: u64,
        burst: u64,
    },
    #[error("too many failed logins from this address; retry in {retry_after} s")]
    LoginThrottled { retry_after: u64 },
    #[error("too many logins under way from this address; retry in {retry_after} s")]
    LoginsPending { retry_after: u64 },
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("influx-write-proxy only routes writes")]
    QueryNotSupported,
    /// The upstream answered with an error: passed through as it was said.
    #[error("{message}")]
    Upstream {
        status: StatusCode,
        message: String,
        version: Option<HeaderValue>,
        /// The upstream's own `X-Influxdb-Error`, passed on as it came when it was a legal
        /// header value.
        header: Option<HeaderValue>,
    },
    #[error("no node of cluster {cluster:?} could take the write")]
    UpstreamUnavailable {
        cluster: String,
        #[source]
        source: BoxError,
    },
    #[error("no node of cluster {cluster:?} could take the query")]
    QueryUnavailable {
        cluster: String,
        #[source]
        source: BoxError,
    },
    #[error("missing required parameter \"q\"")]
    MissingQuery,
    #[error("cannot classify the query: {0}")]
    Unclassifiable(String),
    #[error("{principal:?} is not authorized to read database {db:?}")]
    ReadForbidden { principal: String, db: String },
    #[error("{principal:?} is not authorized to run {kind}")]
    RunForbidden {
        principal: String,
        kind: &'static str,
    },
    #[error("query spans clusters {0}")]
    SpansClusters(String),
    #[error("the SHOW DATABASES answer could not be filtered: {0}")]
    Unfilterable(&'static str),
    #[error("cluster {cluster:?} answered with something that is not HTTP")]
    UpstreamBadResponse {
        cluster: String,
        #[source]
        source: BoxError,
    },
    #[error("cluster {cluster:?} did not answer in time")]
    UpstreamTimeout { cluster: String },
    #[error("request timed out")]
    RequestTimeout,
    #[error("too many bytes in flight, retry later")]
    Overloaded,
    /// The cluster could not take the write and the spool could not either (a
    /// `spool::SpoolError`, converted where it is defined).
    #[error(transparent)]
    Spool(BoxError),
    /// A bug: a handler panicked. The client gets a 500, the connection stays usable.
    #[error("internal error")]
    Panic,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            DatabaseRequired
            | BucketRequired
            | BucketEmptyDatabase(_)
            | InvalidPrecisionV1(_)
            | InvalidPrecisionV2(_)
            | InvalidConsistency(_)
            | InvalidParameter(_)
            | BadGzip(_)
            | UnsupportedEncoding(_)
            | BodyRead(_)
            | MissingQuery
            | Unclassifiable(_)
            | SpansClusters(_) => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } | DecodedBodyTooLarge { .. } | LargerThanBurst { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden { .. } | ReadForbidden { .. } | RunForbidden { .. } => StatusCode::FORBIDDEN,
            RateLimited { .. } | LoginThrottled { .. } | LoginsPending { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            QueryNotSupported => StatusCode::NOT_IMPLEMENTED,
            Upstream { status, .. } => *status,
            UpstreamUnavailable { .. } | QueryUnavailable { .. } | Overloaded | Spool(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamBadResponse { .. } | Unfilterable(_) => StatusCode::BAD_GATEWAY,
            Panic => StatusCode::INTERNAL_SERVER_ERROR,
            UpstreamTimeout { .. } | RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The 2.x error `code` for a status.
    fn v2_code(status: StatusCode) -> &'static str {
        match status.as_u16() {
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not found",
            413 => "request too large",
            429 => "too many requests",
            503 => "unavailable",
            400..=499 => "invalid",
            _ => "internal error",
        }
    }

    /// Turns the error into the response the client sees. `realm` is for 401's challenge.
    pub fn into_response(self, api: Api, realm: &str) -> Response<Full<Bytes>> {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() && !matches!(self, ProxyError::Upstream { .. }) {
            match std::error::Error::source(&self) {
                Some(source) => {
                    tracing::warn!(status = status.as_u16(), error = %message, cause = %source, "request failed")
                }
                None => {
                    tracing::warn!(status = status.as_u16(), error = %message, "request failed")
                }
            }
        }
        let body = match api {
            Api::V1 => serde_json::json!({ "error": message }),
            Api::V2 => serde_json::json!({
                "code": Self::v2_code(status),
                "message": message,
                "error": message,
            }),
        };
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = format!("Basic realm=\"{}\"", realm.replace('"', ""));
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        } else if let ProxyError::Upstream {
            header: Some(header),
            ..
        } = &self
        {
            headers.insert(X_INFLUXDB_ERROR, header.clone());
        } else if let Ok(value) = HeaderValue::from_bytes(&header_safe(&message)) {
            headers.insert(X_INFLUXDB_ERROR, value);
        }
        if matches!(status.as_u16(), 429 | 503) {
            let seconds = match &self {
                ProxyError::RateLimited { retry_after, .. }
                | ProxyError::LoginThrottled { retry_after }
                | ProxyError::LoginsPending { retry_after } => *retry_after,
                _ => 1,
            };
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(
            self,
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyTimeout(_)
        ) {
            // The rest of the body was not read: the connection cannot carry another request.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::Upstream {
            version: Some(version),
            ..
        } = self
        {
            headers.insert(X_INFLUXDB_VERSION, version);
        }
        response
    }
}

/// A JSON body followed by a newline, as InfluxDB answers, with its content type.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer when a handler panicked (tower-http's `CatchPanic` calls this). The panic
/// message is logged, never sent.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "request handler panicked");
    ProxyError::Panic.into_response(Api::V1, "")
}

/// `X-Influxdb-Error` as InfluxDB writes it: the message's first 1,024 bytes, newlines as
/// spaces (Go's header writer does that). Other control characters, which InfluxDB sends raw
/// but HTTP does not allow, become spaces too; tabs and non-ASCII bytes stay.
fn header_safe(message: &str) -> Vec<u8> {
    message.as_bytes()[..message.len().min(1024)]
        .iter()
        .map(|&b| {
            if b < 0x20 && b != b'\t' || b == 0x7f {
                b' '
            } else {
                b
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn v1_errors_have_error_field_and_header() {
        let response = ProxyError::DatabaseRequired.into_response(Api::V1, "InfluxDB");
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["x-influxdb-error"],
            "database is required"
        );
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            body_of(response).await,
            serde_json::json!({"error": "database is required"})
        );
    }

    #[tokio::test]
    async fn v2_errors_also_have_code_and_message() {
        let response = ProxyError::BodyTooLarge { limit: 10 }.into_response(Api::V2, "InfluxDB");
        assert_eq!(response.status(), 413);
        assert_eq!(response.headers()["connection"], "close");
        let body = body_of(response).await;
        assert_eq!(body["code"], "request too large");
        assert_eq!(body["message"], body["error"]);
    }

    #[tokio::test]
    async fn unavailable_hides_cause_and_asks_to_retry() {
        let source: BoxError = "connection refused to 10.0.0.1 with password hunter2".into();
        let response = ProxyError::UpstreamUnavailable {
            cluster: "default".into(),
            source,
        }
        .into_response(Api::V1, "InfluxDB");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body = body_of(response).await;
        assert_eq!(
            body["error"],
            "no node of cluster \"default\" could take the write"
        );
    }

    #[tokio::test]
    async fn panics_become_a_500_without_their_message() {
        let response = panic_response(Box::new("secret token abc in a panic".to_string()));
        assert_eq!(response.status(), 500);
        assert_eq!(
            body_of(response).await,
            serde_json::json!({"error": "internal error"})
        );
    }

    #[test]
    fn upstream_messages_are_made_header_safe_as_influxdb_does() {
        // Newlines and other control characters become spaces; tabs and UTF-8 stay.
        assert_eq!(
            header_safe("partial write:\nbad ünit\t\u{0}x"),
            "partial write: bad ünit\t x".as_bytes()
        );
        // Cut at 1,024 bytes, as InfluxDB cuts it.
        assert_eq!(header_safe(&"é".repeat(1000)).len(), 1024);
        assert!(HeaderValue::from_bytes(&header_safe(&"é".repeat(1000))).is_ok());
    }
}
