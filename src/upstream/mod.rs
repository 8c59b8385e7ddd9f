//! The clusters of data nodes writes are forwarded to, and the pooled keep-alive client that
//! carries them. A write goes to one node of its cluster (round-robin for now); the node's
//! answer becomes the proxy's: 2xx → `Ok`, an error status → `ProxyError::Upstream` with the
//! upstream's own message, no answer → 503, not HTTP → 502, too slow → 504.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Chunks;
use crate::config::{ClusterConfig, Config};
use crate::error::{BoxError, ProxyError};
use crate::rewrite::WriteParams;

/// Longest upstream error body read to pass its message on.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Every configured cluster, and the client they share.
pub struct Upstreams {
    clusters: HashMap<String, Arc<Cluster>>,
}

impl Upstreams {
    pub fn new(config: &Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let clusters = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Cluster::new(c, client.clone()))))
            .collect();
        Self { clusters }
    }

    /// The cluster named `name`; validation guarantees routes only name existing clusters.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }
}

/// One cluster: its nodes, its credentials and its per-try timeout.
pub struct Cluster {
    pub name: String,
    nodes: Vec<Node>,
    next: AtomicUsize,
    credentials: Option<HeaderValue>,
    timeout: Duration,
    client: Client<HttpConnector, Chunks>,
}

struct Node {
    /// `http://host:port[/prefix]/write?`, to which the write's query is appended.
    write_url: String,
}

/// A write ready to go upstream.
pub struct Forward<'a> {
    pub params: &'a WriteParams,
    pub body: Chunks,
    /// The body is gzip-compressed (forwarded as the client sent it).
    pub gzip: bool,
    pub request_id: &'a HeaderValue,
    /// The `Authorization` to send; `None` sends none.
    pub authorization: Option<HeaderValue>,
}

/// What a successful upstream answer carries back to the client.
pub struct Accepted {
    pub version: Option<HeaderValue>,
}

impl Cluster {
    fn new(config: &ClusterConfig, client: Client<HttpConnector, Chunks>) -> Self {
        let nodes = config
            .nodes
            .iter()
            .map(|uri| Node {
                write_url: format!("{}write?", base_url(uri)),
            })
            .collect();
        let credentials = config
            .username
            .as_deref()
            .map(|user| basic(user, config.password.as_ref().map_or("", |p| p.expose())));
        Self {
            name: config.name.clone(),
            nodes,
            next: AtomicUsize::new(0),
            credentials,
            timeout: config.timeout,
            client,
        }
    }

    /// The `Authorization` the proxy itself sends to this cluster, if it has credentials.
    pub fn credentials(&self) -> Option<HeaderValue> {
        self.credentials.clone()
    }

    /// Sends the write to the next node and maps its answer.
    pub async fn write(&self, forward: Forward<'_>) -> Result<Accepted, ProxyError> {
        let node = &self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len()];
        let uri: Uri = format!("{}{}", node.write_url, forward.params.upstream_query())
            .parse()
            .map_err(|e| ProxyError::UpstreamUnavailable {
                cluster: self.name.clone(),
                source: Box::new(e),
            })?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(
                USER_AGENT,
                concat!("influx-write-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-request-id", forward.request_id)
            .body(forward.body)
            .expect("request parts are valid");
        if forward.gzip {
            request
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Some(authorization) = forward.authorization {
            request.headers_mut().insert(AUTHORIZATION, authorization);
        }
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout {
                cluster: self.name.clone(),
            }),
        }
    }

    async fn exchange(&self, request: Request<Chunks>) -> Result<Accepted, ProxyError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.send_error(e.into()))?;
        let (parts, body) = response.into_parts();
        let version = parts.headers.get("x-influxdb-version").cloned();
        if parts.status.is_success() {
            // Read the (normally empty) body to the end so the connection goes back to the pool.
            body.collect()
                .await
                .map_err(|e| self.send_error(e.into()))?;
            return Ok(Accepted { version });
        }
        let bytes = Limited::new(body, MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = upstream_message(parts.status, &parts.headers, &bytes);
        Err(ProxyError::Upstream {
            status: parts.status,
            message,
            version,
        })
    }

    fn send_error(&self, error: BoxError) -> ProxyError {
        let cluster = self.name.clone();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        while let Some(e) = source {
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse)
            {
                return ProxyError::UpstreamBadResponse {
                    cluster,
                    source: error,
                };
            }
            source = e.source();
        }
        ProxyError::UpstreamUnavailable {
            cluster,
            source: error,
        }
    }
}

/// The message of an upstream error: InfluxDB's JSON `error`, else its `X-Influxdb-Error`,
/// else the body's text, else the status's reason.
fn upstream_message(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct InfluxError {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<InfluxError>(body) {
        return parsed.error;
    }
    if let Some(message) = headers
        .get("x-influxdb-error")
        .and_then(|v| v.to_str().ok())
    {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    if !text.is_empty() {
        return text;
    }
    status
        .canonical_reason()
        .unwrap_or("upstream error")
        .to_string()
}

/// `http://host:port/prefix` → `http://host:port/prefix/`.
fn base_url(uri: &Uri) -> String {
    let s = uri.to_string();
    if s.ends_with('/') {
        s
    } else {
        s + "/"
    }
}

/// A `Basic` authorization value, marked sensitive so hyper never logs it.
pub fn basic(user: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_message_prefers_influx_json_error() {
        let headers = http::HeaderMap::new();
        assert_eq!(
            upstream_message(
                StatusCode::BAD_REQUEST,
                &headers,
                br#"{"error":"unable to parse 'x': missing fields"}"#
            ),
            "unable to parse 'x': missing fields"
        );
        assert_eq!(
            upstream_message(StatusCode::BAD_GATEWAY, &headers, b"<html>oops</html>\n"),
            "<html>oops</html>"
        );
        assert_eq!(
            upstream_message(StatusCode::SERVICE_UNAVAILABLE, &headers, b""),
            "Service Unavailable"
        );
    }

    #[test]
    fn node_urls_keep_their_path_prefix() {
        assert_eq!(
            base_url(&"http://a:8086/".parse().unwrap()),
            "http://a:8086/"
        );
        assert_eq!(
            base_url(&"http://a:8086/influx".parse().unwrap()),
            "http://a:8086/influx/"
        );
    }

    #[test]
    fn basic_credentials_are_sensitive() {
        let value = basic("admin", "pw");
        assert!(value.is_sensitive());
        assert_eq!(value, "Basic YWRtaW46cHc=");
    }
}
