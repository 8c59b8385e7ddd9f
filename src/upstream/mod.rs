//! The clusters of data nodes writes are forwarded to, over the keep-alive connections of
//! `pool` (queries: hyper-util's client, `read`). A write tries the best node of its cluster
//! (`node::pick`), and on a retriable failure (`retry::classify`) backs off and tries
//! another, within `max_retries` and the cluster's retry budget. The last answer becomes the
//! proxy's: 2xx → `Ok`, an error status → `ProxyError::Upstream` with InfluxDB's own
//! message; retries used up → 503, or 504 when every try timed out or `request_timeout`
//! ended the tries; not HTTP → 502.

mod health;
pub mod node;
mod pool;
mod read;
pub mod retry;
mod spaced;

pub use read::{Answer, QueryForward};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use futures_util::FutureExt;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::retry::budget::{Budget, TpsBudget};

use crate::body::Chunks;
use crate::config::{ClusterConfig, Config, Secret};
use crate::error::{BoxError, ProxyError};
use crate::headers::{X_INFLUXDB_ERROR, X_INFLUXDB_VERSION, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::rewrite::WriteParams;
use node::{Node, Transition};
use retry::{Decision, Reason};
use spaced::Spacing;

/// Longest upstream error body read to pass its message on: InfluxDB lists every bad line,
/// so a large batch's error runs to hundreds of kilobytes.
const MAX_ERROR_BODY: usize = 1024 * 1024;

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const OWN_USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("influx-write-proxy/", env!("CARGO_PKG_VERSION")));

type QueryClient = Client<HttpsConnector<HttpConnector>, Chunks>;

/// Finds a cluster of the running configuration by name.
pub type ClusterLookup = Arc<dyn Fn(&str) -> Option<Arc<Cluster>> + Send + Sync>;

/// Every configured cluster.
pub struct Upstreams {
    clusters: HashMap<String, Arc<Cluster>>,
}

impl Upstreams {
    /// Builds the clusters and starts their health checks (which end when the clusters are
    /// dropped). A cluster configured exactly as in `previous` is taken over as it is, with
    /// its health state and pooled connections. Must be called within a Tokio runtime.
    pub fn new(config: &Config, metrics: &Arc<Metrics>, previous: Option<&Upstreams>) -> Self {
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let kept = previous
                    .and_then(|p| p.get(&c.name))
                    .filter(|old| old.config == *c);
                let cluster = match kept {
                    Some(old) => old.clone(),
                    None => {
                        let cluster = Arc::new(Cluster::new(c, metrics));
                        health::spawn(&cluster);
                        cluster
                    }
                };
                (c.name.clone(), cluster)
            })
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

/// A cluster's keep-alive connections, speaking TLS to `https://` nodes: for writes and
/// pings (reading control bytes as spaces, see `spaced`) the pools of `pool`, and for
/// queries (whose answers pass byte for byte) hyper-util's client.
fn clients(config: &ClusterConfig) -> (pool::Pools, QueryClient) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(crate::tls::ClientTls {
            https: config.nodes.iter().any(|n| n.scheme_str() == Some("https")),
            extra_roots: &config.tls_ca,
            skip_verify: config.tls_insecure_skip_verify,
        }))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024);
    // InfluxDB's error header may carry any byte of a point; see `spaced`.
    let writes = pool::Pools::new(Spacing(connector.clone()), &config.nodes);
    (writes, builder.build(connector))
}

/// One cluster: its nodes, credentials, retry policy and retry budget.
pub struct Cluster {
    pub name: String,
    /// What it was built from: a reload keeps the cluster when this is unchanged.
    config: ClusterConfig,
    metrics: Arc<Metrics>,
    retries: prometheus::IntCounter,
    /// `write_bytes_total` and `write_points_total` of this cluster.
    pub written: (prometheus::IntCounter, prometheus::IntCounter),
    /// Swapped whole on reload; health lives in the nodes.
    nodes: ArcSwap<Vec<Node>>,
    credentials: Option<HeaderValue>,
    timeout: Duration,
    max_retries: u32,
    retry_backoff: Duration,
    health_check_interval: Duration,
    /// Retries may add at most 20 % to recent requests (3 a second at least), so a sick
    /// cluster is not hit by a retry storm.
    budget: TpsBudget,
    /// Connections for writes and pings.
    writes: pool::Pools,
    query_client: QueryClient,
}

/// A write ready to go upstream. Cheap to clone (the body is shared).
#[derive(Clone)]
pub struct Forward {
    pub params: WriteParams,
    pub body: Chunks,
    /// The body is gzip-compressed (forwarded as the client sent it).
    pub gzip: bool,
    pub request_id: HeaderValue,
    pub credentials: Credentials,
}

/// Whose credentials go upstream.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// The cluster's own `username`/`password`, if it has them (auth modes none and proxy).
    Cluster,
    /// The client's, as they came (mode passthrough); `None` sends none.
    Client(Option<HeaderValue>),
}

impl Credentials {
    /// What mode `passthrough` sends upstream: `u`/`p` as Basic, `Token user:password` as
    /// Basic (1.x reads `Token` only that way), any other `Authorization` as it came.
    pub fn of_client(user: Option<&(String, Secret)>, header: Option<&HeaderValue>) -> Self {
        if let Some((user, password)) = user {
            return Credentials::Client(Some(basic(user, password.expose())));
        }
        let Some(header) = header else {
            return Credentials::Client(None);
        };
        let text = std::str::from_utf8(header.as_bytes()).ok();
        if let Some(pair) = text.and_then(|h| h.strip_prefix("Token ")) {
            if let Some((user, password)) = pair.split_once(':') {
                return Credentials::Client(Some(basic(user, password)));
            }
        }
        let mut value = header.clone();
        value.set_sensitive(true);
        Credentials::Client(Some(value))
    }

    #[cfg(test)]
    fn header(&self) -> Option<&HeaderValue> {
        match self {
            Credentials::Client(client) => client.as_ref(),
            Credentials::Cluster => None,
        }
    }
}

/// What a successful upstream answer carries back to the client.
#[derive(Debug)]
pub struct Accepted {
    pub version: Option<HeaderValue>,
    pub node: String,
    pub tries: u32,
}

impl Accepted {
    /// The write went to the spool, not to a node.
    pub fn spooled() -> Accepted {
        Accepted {
            version: None,
            node: "spool".to_string(),
            tries: 0,
        }
    }
}

impl Cluster {
    fn new(config: &ClusterConfig, metrics: &Arc<Metrics>) -> Self {
        let (writes, query_client) = clients(config);
        let nodes = config
            .nodes
            .iter()
            .map(|uri| {
                let name = uri
                    .authority()
                    .map_or_else(|| uri.to_string(), |a| a.to_string());
                Node::new(name, base_url(uri))
            })
            .collect();
        let credentials = config
            .username
            .as_deref()
            .map(|user| basic(user, config.password.as_ref().map_or("", |p| p.expose())));
        Self {
            name: config.name.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            retries: metrics
                .upstream_retries
                .with_label_values(&[config.name.as_str()]),
            written: (
                metrics
                    .write_bytes
                    .with_label_values(&[config.name.as_str()]),
                metrics
                    .write_points
                    .with_label_values(&[config.name.as_str()]),
            ),
            nodes: ArcSwap::from_pointee(nodes),
            credentials,
            timeout: config.timeout,
            max_retries: config.max_retries,
            retry_backoff: config.retry_backoff,
            health_check_interval: config.health_check_interval,
            budget: TpsBudget::new(Duration::from_secs(10), 3, 0.2),
            writes,
            query_client,
        }
    }

    /// Whether any node is healthy.
    pub fn is_healthy(&self) -> bool {
        self.nodes.load().iter().any(Node::is_healthy)
    }

    /// Each node's name and health.
    pub fn node_health(&self) -> Vec<(String, bool)> {
        self.nodes
            .load()
            .iter()
            .map(|n| (n.name.clone(), n.is_healthy()))
            .collect()
    }

    /// Counts and times one try of a write.
    fn observe(
        &self,
        node: &Node,
        outcome: &Result<Option<HeaderValue>, ProxyError>,
        took: Duration,
    ) {
        match outcome {
            Ok(_) => self.record(node, "2xx", took),
            Err(error) => self.record(node, &error_code(error), took),
        }
    }

    /// One try bounded by the cluster's per-try `timeout`. A combinator, not an `async fn`:
    /// that would hold `attempt` twice (as its argument and inside the timeout), and every
    /// byte of a request's future is copied each time it is moved into the next one.
    fn per_try<'a, T>(
        &'a self,
        attempt: impl std::future::Future<Output = Result<T, ProxyError>> + 'a,
    ) -> impl std::future::Future<Output = Result<T, ProxyError>> + 'a {
        tokio::time::timeout(self.timeout, attempt).map(move |outcome| {
            outcome.unwrap_or_else(|_| {
                Err(ProxyError::UpstreamTimeout {
                    cluster: self.name.clone(),
                })
            })
        })
    }

    /// A try on `node` failed for a retriable reason: counted towards ejecting it.
    fn try_failed(&self, node: &Node) {
        if node.request_failed() == Some(Transition::BecameUnhealthy) {
            tracing::warn!(cluster = %self.name, node = %node.name, "node unhealthy: 5 retriable failures in a row");
        }
    }

    /// Counts and times one try: `code` is the status, `timeout` or `error`.
    fn record(&self, node: &Node, code: &str, took: Duration) {
        let m = &self.metrics;
        let requests = |code| {
            move || {
                m.upstream_requests.with_label_values(&[
                    self.name.as_str(),
                    node.name.as_str(),
                    code,
                ])
            }
        };
        if code == "2xx" {
            node.succeeded.get_or_init(requests("2xx")).inc();
        } else {
            requests(code)().inc();
        }
        node.duration
            .get_or_init(|| {
                m.upstream_duration
                    .with_label_values(&[self.name.as_str(), node.name.as_str()])
            })
            .observe(took.as_secs_f64());
    }

    /// `write` within `timeout` for all its tries together (the request's `request_timeout`):
    /// past it, `RequestTimeout` (504).
    pub async fn write_within(
        &self,
        timeout: Duration,
        forward: Forward,
    ) -> Result<Accepted, ProxyError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.write_until(Some(deadline), forward).await
    }

    /// Delivers the write, retrying as `retry::classify` allows, with no deadline of its own.
    pub async fn write(&self, forward: Forward) -> Result<Accepted, ProxyError> {
        self.write_until(None, forward).await
    }

    /// `write`, given up with `RequestTimeout` at `deadline`. One timer runs per try, until
    /// the per-try `timeout` or the deadline, whichever comes first: a timer costs as much
    /// to arm and poll as a 10-line body costs to check.
    async fn write_until(
        &self,
        deadline: Option<tokio::time::Instant>,
        forward: Forward,
    ) -> Result<Accepted, ProxyError> {
        self.budget.deposit();
        let nodes = self.nodes.load_full();
        let uri_tail = forward.params.upstream_query();
        let mut tried: Vec<usize> = Vec::with_capacity(self.max_retries as usize + 1);
        let mut all_timed_out = true;
        loop {
            let index = node::pick(&nodes, &tried);
            tried.push(index);
            let node = &nodes[index];
            let outcome = {
                let _inflight = node.start();
                let request = self.request(index, &uri_tail, &forward)?;
                let started = tokio::time::Instant::now();
                let (until, last) = first_of(started + self.timeout, deadline);
                let outcome =
                    match tokio::time::timeout_at(until, self.exchange(index, request)).await {
                        Ok(outcome) => outcome,
                        Err(_) if last => return Err(ProxyError::RequestTimeout),
                        Err(_) => Err(ProxyError::UpstreamTimeout {
                            cluster: self.name.clone(),
                        }),
                    };
                self.observe(node, &outcome, started.elapsed());
                outcome
            };
            let reason = match retry::classify(&outcome) {
                Decision::Final => {
                    node.request_succeeded();
                    return outcome.map(|version| Accepted {
                        version,
                        node: node.name.clone(),
                        tries: tried.len() as u32,
                    });
                }
                Decision::Retry(reason) => reason,
            };
            all_timed_out &= reason == Reason::Timeout;
            self.try_failed(node);
            let retries = tried.len() as u32 - 1;
            let error = outcome.expect_err("retriable outcomes are errors");
            if retries >= self.max_retries || !self.budget.withdraw() {
                tracing::debug!(cluster = %self.name, tries = tried.len(), error = %error, "giving up");
                return Err(if all_timed_out {
                    ProxyError::UpstreamTimeout {
                        cluster: self.name.clone(),
                    }
                } else {
                    ProxyError::UpstreamUnavailable {
                        cluster: self.name.clone(),
                        source: Box::new(error),
                    }
                });
            }
            tracing::debug!(cluster = %self.name, node = %node.name, reason = reason.as_str(), retry = retries + 1, "retrying");
            self.retries.inc();
            let backoff = retry::backoff(self.retry_backoff, retries);
            let (resume, last) = first_of(tokio::time::Instant::now() + backoff, deadline);
            tokio::time::sleep_until(resume).await;
            if last {
                return Err(ProxyError::RequestTimeout);
            }
        }
    }

    fn request(
        &self,
        node: usize,
        query: &str,
        forward: &Forward,
    ) -> Result<Request<Chunks>, ProxyError> {
        let uri =
            self.writes
                .uri(node, "write", query)
                .map_err(|e| ProxyError::UpstreamUnavailable {
                    cluster: self.name.clone(),
                    source: Box::new(e),
                })?;
        // Built in place (a `Request::builder` moves its parts through every `header` call).
        let mut request = Request::new(forward.body.clone());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(6);
        headers.insert(CONTENT_TYPE, TEXT_PLAIN.clone());
        headers.insert(USER_AGENT, OWN_USER_AGENT.clone());
        headers.insert(X_REQUEST_ID, forward.request_id.clone());
        if forward.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let authorization = match &forward.credentials {
            Credentials::Cluster => self.credentials.as_ref(),
            Credentials::Client(client) => client.as_ref(),
        };
        if let Some(authorization) = authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        Ok(request)
    }

    /// One try of `request` on node `index`: its status, and InfluxDB's version header.
    async fn exchange(
        &self,
        index: usize,
        request: Request<Chunks>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let (response, lease) = self
            .writes
            .send(index, request)
            .await
            .map_err(|e| self.send_error(e))?;
        let (parts, body) = response.into_parts();
        let version = parts.headers.get(X_INFLUXDB_VERSION).cloned();
        if parts.status.is_success() {
            // Read the (normally empty) body to the end so the connection can carry another.
            body.collect()
                .await
                .map_err(|e| self.send_error(e.into()))?;
            lease.release();
            return Ok(version);
        }
        let bytes = match Limited::new(body, MAX_ERROR_BODY).collect().await {
            Ok(bytes) => {
                lease.release();
                bytes.to_bytes()
            }
            Err(_) => Default::default(),
        };
        let message = upstream_message(parts.status, &parts.headers, &bytes);
        Err(ProxyError::Upstream {
            status: parts.status,
            message,
            version,
            header: parts.headers.get(X_INFLUXDB_ERROR).cloned(),
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

    /// Counts and logs a failed mirror delivery; the client never hears of it.
    pub fn mirror_failed(&self, error: &ProxyError) {
        self.metrics
            .mirror_failures
            .with_label_values(&[self.name.as_str()])
            .inc();
        tracing::warn!(cluster = %self.name, status = error.status().as_u16(), error = %error, "mirror delivery failed");
    }
}

/// `at`, or `deadline` when that comes no later, with whether it was the deadline.
fn first_of(
    at: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
) -> (tokio::time::Instant, bool) {
    match deadline {
        Some(deadline) if deadline <= at => (deadline, true),
        _ => (at, false),
    }
}

/// The `code` label of a try that failed: the upstream's status, `timeout` or `error`.
fn error_code(error: &ProxyError) -> String {
    match error {
        ProxyError::Upstream { status, .. } => status.as_u16().to_string(),
        ProxyError::UpstreamTimeout { .. } => "timeout".to_string(),
        _ => "error".to_string(),
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
    if let Some(message) = headers.get(X_INFLUXDB_ERROR).and_then(|v| v.to_str().ok()) {
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
    fn passthrough_turns_token_user_password_into_basic() {
        let client = |user: Option<(&str, &str)>, header: Option<&'static str>| {
            let user = user.map(|(u, p)| (u.to_string(), Secret::new(p.to_string())));
            let header = header.map(HeaderValue::from_static);
            Credentials::of_client(user.as_ref(), header.as_ref())
                .header()
                .cloned()
        };
        assert_eq!(client(None, Some("Token bob:pw")), Some(basic("bob", "pw")));
        assert_eq!(
            client(None, Some("Bearer xyz")),
            Some(HeaderValue::from_static("Bearer xyz"))
        );
        assert_eq!(
            client(Some(("al", "s")), Some("Bearer xyz")),
            Some(basic("al", "s"))
        );
        assert_eq!(client(None, None), None);
    }

    #[test]
    fn basic_credentials_are_sensitive() {
        let value = basic("admin", "pw");
        assert!(value.is_sensitive());
        assert_eq!(value, "Basic YWRtaW46cHc=");
    }
}
