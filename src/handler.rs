//! The innermost service: dispatches a request by path and method to its endpoint, and turns
//! an endpoint's `ProxyError` into the response through `error.rs`. Paths match exactly
//! (`//write` or `/write/` are 404), so nothing odd is ever forwarded as a write.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::Service;

use crate::auth::{Authenticator, Principal};
use crate::body::{self, Chunks, Inflight};
use crate::config::{AuthMode, Config};
use crate::error::{json_response, Api, BoxError, ProxyError};
use crate::lineproto::{self, TimestampCheck};
use crate::metrics::{Metrics, WriteDetails};
use crate::request_id::{RequestIdValue, OWN_VERSION};
use crate::rewrite::{Query, WriteParams};
use crate::spool::{self, Spool};
use crate::upstream::{self, Accepted, Credentials, Forward, Upstreams};
use tokio_util::task::TaskTracker;

/// Everything a SIGHUP replaces, built from one `proxy.toml`. A request keeps the generation
/// it started with until it is answered.
pub struct Generation {
    pub config: Config,
    /// Mode `proxy` only.
    pub auth: Option<Arc<Authenticator>>,
    pub upstreams: Upstreams,
}

impl Generation {
    /// Clusters whose settings did not change are taken over from `previous` with their
    /// health state and connection pools.
    fn new(config: Config, metrics: &Arc<Metrics>, previous: Option<&Upstreams>) -> Self {
        Self {
            upstreams: Upstreams::new(&config, metrics, previous),
            auth: (config.auth.mode == AuthMode::Proxy)
                .then(|| Arc::new(Authenticator::new(&config.auth))),
            config,
        }
    }
}

/// State shared by every request, built once.
pub struct Shared {
    pub current: Arc<ArcSwap<Generation>>,
    pub inflight: Arc<Inflight>,
    /// Set when shutdown starts: `/ready` answers 503 from then on.
    pub draining: AtomicBool,
    /// Mirror deliveries, which outlive the request that started them; the drain waits for
    /// them.
    pub background: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// `[spool] enabled` only.
    pub spool: Option<Spool>,
}

impl Shared {
    /// Builds the shared state; opens (and recovers) the spool and starts its replay. Must be
    /// called within a Tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Self>, BoxError> {
        let metrics = Arc::new(Metrics::new());
        let inflight = Inflight::new(config.server.max_inflight_bytes);
        let spool_config = config.spool.clone();
        let names: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        let current = Arc::new(ArcSwap::from_pointee(Generation::new(
            config, &metrics, None,
        )));
        let spool = match spool_config {
            Some(spool_config) => {
                let spool = Spool::open(&spool_config, &metrics)?;
                spool.add_clusters(&names, lookup(&current))?;
                Some(spool)
            }
            None => None,
        };
        Ok(Arc::new(Self {
            current,
            inflight,
            draining: AtomicBool::new(false),
            background: TaskTracker::new(),
            metrics,
            spool,
        }))
    }

    /// The configuration new requests use.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Makes `config` the one new requests use; requests in flight finish on theirs. Returns
    /// the changed keys that only a restart applies (listeners, TLS, spool, …).
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, BoxError> {
        let old = self.current.load_full();
        let needs_restart = old.config.needs_restart(&config);
        let names: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        // New clusters get their spool queue first: once the generation is live, writes may
        // need it.
        if let Some(spool) = &self.spool {
            spool.add_clusters(&names, lookup(&self.current))?;
        }
        let generation = Generation::new(config, &self.metrics, Some(&old.upstreams));
        self.current.store(Arc::new(generation));
        Ok(needs_restart)
    }
}

/// Finds a cluster of the current generation by name (spool replay follows reloads).
fn lookup(current: &Arc<ArcSwap<Generation>>) -> upstream::ClusterLookup {
    let current = current.clone();
    Arc::new(move |name: &str| current.load().upstreams.get(name).cloned())
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes, `/ping`, `/health`, `/query`; plus the admin endpoints when `with_admin`.
    Main { with_admin: bool },
    /// `/live`, `/ready`.
    Admin,
}

#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
    role: Role,
}

impl Router {
    pub fn new(shared: Arc<Shared>, role: Role) -> Self {
        Self { shared, role }
    }
}

type Resp = Response<Full<Bytes>>;

// === impl Router ===

impl Service<Request<Incoming>> for Router {
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        let role = self.role;
        Box::pin(async move { Ok(route(shared, role, request).await) })
    }
}

async fn route(shared: Arc<Shared>, role: Role, request: Request<Incoming>) -> Resp {
    let main = matches!(role, Role::Main { .. });
    let admin = matches!(role, Role::Admin | Role::Main { with_admin: true });
    // The auth layer pins the generation for guarded paths; the rest take the current one.
    let generation = request
        .extensions()
        .get::<Arc<Generation>>()
        .cloned()
        .unwrap_or_else(|| shared.generation());
    let method = request.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let api = if request.uri().path() == "/api/v2/write" {
        Api::V2
    } else {
        Api::V1
    };
    let path = request.uri().path();
    let known = match path {
        "/write" | "/api/v2/write" | "/ping" | "/health" | "/query" => main,
        "/live" | "/ready" | "/metrics" => admin,
        _ => false,
    };
    let mut details = WriteDetails::default();
    let result = match (path, &method) {
        _ if !known => Err(ProxyError::NotFound),
        ("/write" | "/api/v2/write", &Method::POST) => {
            write(&shared, &generation, api, request, &mut details).await
        }
        ("/query", &Method::GET | &Method::POST) => query(&shared, &generation, request).await,
        ("/ping", _) if get => Ok(ping(&request)),
        ("/health", _) if get => Ok(health(&generation)),
        ("/live", _) if get => Ok(json(StatusCode::OK, serde_json::json!({"status": "live"}))),
        ("/ready", _) if get => Ok(ready(&shared, &generation)),
        ("/metrics", _) if get => Ok(metrics(&shared, &generation)),
        _ => Err(ProxyError::MethodNotAllowed),
    };
    let mut response = result.unwrap_or_else(|e| {
        shared.metrics.count_refusal(&e);
        e.into_response(api, &generation.config.server.realm)
    });
    if !details.db.is_empty() {
        response.extensions_mut().insert(details);
    }
    response
}

// === writes ===

async fn write(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    api: Api,
    request: Request<Incoming>,
    details: &mut WriteDetails,
) -> Result<Resp, ProxyError> {
    let config = &generation.config;
    let received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let query = request.uri().query();
    let params = match api {
        Api::V1 => WriteParams::from_v1(query)?,
        Api::V2 => WriteParams::from_v2(query)?,
    };
    let principal = request.extensions().get::<Arc<Principal>>().cloned();
    details.db.clone_from(&params.db);
    details.rp = params.rp.clone().unwrap_or_default();
    details.principal = principal
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    // Authorization before a byte of the body is read.
    if let Some(principal) = &principal {
        if !principal.may_write(&params.db, params.rp.as_deref()) {
            tracing::info!(principal = %principal.name, db = %params.db, "write refused: database not allowed");
            return Err(ProxyError::Forbidden {
                principal: principal.name.clone(),
                db: params.db,
            });
        }
    }
    let (parts, incoming) = request.into_parts();
    let gzip = match parts
        .headers
        .get(CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"identity") | Some(b"") => false,
        Some(b"gzip") => true,
        Some(other) => {
            return Err(ProxyError::UnsupportedEncoding(
                String::from_utf8_lossy(other).into(),
            ));
        }
    };
    let (primary, mirrors) = config.clusters_for(&params.db);
    details.cluster = primary.to_string();
    let cluster = |name: &str| {
        generation
            .upstreams
            .get(name)
            .cloned()
            .expect("validated routes name existing clusters")
    };
    let credentials = match config.auth.mode {
        AuthMode::None | AuthMode::Proxy => Credentials::Cluster,
        AuthMode::Passthrough => Credentials::Client(client_credentials(
            &params,
            parts.headers.get(AUTHORIZATION),
        )),
    };
    let server = &config.server;
    let content_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut reservation = shared.inflight.reserve();
    // Plain bodies are checked for timestamps frame by frame, while each is in cache.
    let mut check = (!gzip).then(TimestampCheck::default);
    let wire = body::read(
        incoming,
        content_length,
        server.max_body_bytes,
        server.body_read_timeout,
        &mut reservation,
        |frame| {
            if let Some(check) = &mut check {
                check.feed(frame);
            }
        },
    )
    .await?;
    let timestamp = params.precision.timestamp(received.as_nanos());
    let (body, gzip, points) = if gzip {
        let limit = server.max_decoded_body_bytes;
        let compressed = wire.join();
        let input = compressed.clone();
        let decoded = tokio::task::spawn_blocking(move || body::gunzip(&input, limit))
            .await
            .expect("gunzip does not panic")?;
        reservation.grow(decoded.len() as u64)?;
        check_bytes(principal.as_deref(), decoded.len())?;
        let (stamped, summary) = lineproto::stamp(decoded, timestamp);
        // A gzip body that needed no change goes upstream still compressed.
        if summary.untimed == 0 && summary.crlf == 0 {
            (Chunks::from(compressed), true, summary.points)
        } else {
            (Chunks::from(stamped), false, summary.points)
        }
    } else {
        check_bytes(principal.as_deref(), wire.len() as usize)?;
        match check.and_then(TimestampCheck::finish) {
            Some(points) => (wire, false, points),
            None => {
                let (stamped, summary) = lineproto::stamp(wire.join(), timestamp);
                (Chunks::from(stamped), false, summary.points)
            }
        }
    };
    let request_id = parts
        .extensions
        .get::<RequestIdValue>()
        .map(|id| id.0.clone())
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    details.bytes = body.len();
    details.points = points;
    let forward = Forward {
        params,
        body,
        gzip,
        request_id,
        credentials,
    };
    // Mirrors get their copy in the background: their answers never reach the client and
    // never delay it.
    for mirror in mirrors.iter().map(|name| cluster(name)) {
        let (forward, timeout) = (forward.clone(), server.request_timeout);
        let shared = shared.clone();
        shared.clone().background.spawn(async move {
            if let Err(error) = mirror.write_within(timeout, forward.clone()).await {
                mirror.mirror_failed(&error);
                // A mirror's copy is spooled whatever the client asked for: the client was
                // answered by the primary.
                if let Some(spool) = shared.spool.as_ref().filter(|_| spool::may_spool(&error)) {
                    match spool.append(&mirror.name, &forward).await {
                        Ok(()) => tracing::info!(cluster = %mirror.name, "mirror write spooled"),
                        Err(e) => {
                            tracing::error!(error = %e, "mirror write lost: it could not be spooled")
                        }
                    }
                }
            }
        });
    }
    let primary = cluster(primary);
    let accepted = deliver(shared, server.request_timeout, &primary, forward).await?;
    details.node = accepted.node;
    details.tries = accepted.tries;
    shared
        .metrics
        .write_bytes
        .with_label_values(&[primary.name.as_str()])
        .inc_by(details.bytes);
    shared
        .metrics
        .write_points
        .with_label_values(&[primary.name.as_str()])
        .inc_by(details.points);
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Some(version) = accepted.version {
        response.headers_mut().insert("x-influxdb-version", version);
    }
    Ok(response)
}

/// Delivers a write to its primary cluster; when the cluster cannot take it and the spool
/// applies, spools it instead (SPEC §7).
async fn deliver(
    shared: &Arc<Shared>,
    timeout: Duration,
    cluster: &upstream::Cluster,
    forward: Forward,
) -> Result<Accepted, ProxyError> {
    let spool = shared
        .spool
        .as_ref()
        .filter(|s| s.acknowledges(&forward.params));
    let Some(spool) = spool else {
        return cluster.write_within(timeout, forward).await;
    };
    // While the cluster is down and writes already wait in the spool, newer writes queue
    // behind them rather than overtake them.
    let waiting = spool.queue(&cluster.name).is_some_and(|q| q.entries() > 0);
    if waiting && !cluster.is_healthy() {
        spool.append(&cluster.name, &forward).await?;
        return Ok(Accepted::spooled());
    }
    match cluster.write_within(timeout, forward.clone()).await {
        Err(error) if spool::may_spool(&error) => {
            tracing::debug!(cluster = %cluster.name, error = %error, "cluster could not take the write; spooling it");
            spool.append(&cluster.name, &forward).await?;
            Ok(Accepted::spooled())
        }
        other => other,
    }
}

/// The principal's decoded-bytes rate limit.
fn check_bytes(principal: Option<&Principal>, bytes: usize) -> Result<(), ProxyError> {
    match principal {
        Some(p) => p.limits.check_bytes(&p.name, bytes as u64),
        None => Ok(()),
    }
}

/// What mode `passthrough` sends upstream: `u`/`p` as Basic, `Token user:password` as Basic
/// (1.x reads `Token` only that way), any other `Authorization` as it came.
fn client_credentials(params: &WriteParams, header: Option<&HeaderValue>) -> Option<HeaderValue> {
    if let Some((user, password)) = &params.user {
        return Some(upstream::basic(user, password.expose()));
    }
    let header = header?;
    let text = std::str::from_utf8(header.as_bytes()).ok();
    if let Some(pair) = text.and_then(|h| h.strip_prefix("Token ")) {
        if let Some((user, password)) = pair.split_once(':') {
            return Some(upstream::basic(user, password));
        }
    }
    let mut value = header.clone();
    value.set_sensitive(true);
    Some(value)
}

// === small endpoints ===

fn ping(request: &Request<Incoming>) -> Resp {
    let verbose = Query::parse(request.uri().query())
        .ok()
        .and_then(|q| q.get("verbose").map(|v| v.into_owned()))
        .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "t" | "T" | "TRUE" | "True"));
    if verbose {
        json(
            StatusCode::OK,
            serde_json::json!({ "version": OWN_VERSION }),
        )
    } else {
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    }
}

fn health(generation: &Generation) -> Resp {
    let mut clusters: Vec<(&str, bool)> = generation
        .upstreams
        .iter()
        .map(|c| (c.name.as_str(), c.is_healthy()))
        .collect();
    clusters.sort_unstable();
    let checks: Vec<_> = clusters
        .iter()
        .map(|(name, healthy)| {
            let status = if *healthy { "pass" } else { "fail" };
            serde_json::json!({ "name": format!("cluster {name}"), "status": status })
        })
        .collect();
    let failing: Vec<&str> = clusters
        .iter()
        .filter(|(_, healthy)| !healthy)
        .map(|(name, _)| *name)
        .collect();
    let (status, message) = if failing.is_empty() {
        ("pass", "ready for writes".to_string())
    } else {
        (
            "fail",
            format!("no healthy node in cluster {}", failing.join(", ")),
        )
    };
    json(
        StatusCode::OK,
        serde_json::json!({
            "name": "influx-write-proxy",
            "status": status,
            "message": message,
            "version": env!("CARGO_PKG_VERSION"),
            "checks": checks,
        }),
    )
}

fn ready(shared: &Shared, generation: &Generation) -> Resp {
    if shared.draining.load(Ordering::Relaxed) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "draining"}),
        );
    }
    // A cluster without a healthy node is fine while its spool can take the writes.
    let spool_has_room = |cluster: &str| {
        shared
            .spool
            .as_ref()
            .and_then(|s| s.queue(cluster))
            .is_some_and(|q| q.has_room())
    };
    let mut down: Vec<&str> = generation
        .upstreams
        .iter()
        .filter(|c| !c.is_healthy() && !spool_has_room(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    if down.is_empty() {
        return json(StatusCode::OK, serde_json::json!({"status": "ready"}));
    }
    down.sort_unstable();
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"status": "not ready", "clusters_without_healthy_node": down}),
    )
}

fn metrics(shared: &Shared, generation: &Generation) -> Resp {
    let metrics = &shared.metrics;
    // Gauges read off the live state at scrape time. Nodes no longer configured drop out.
    metrics.upstream_healthy.reset();
    for cluster in generation.upstreams.iter() {
        for (node, healthy) in cluster.node_health() {
            metrics
                .upstream_healthy
                .with_label_values(&[cluster.name.as_str(), node.as_str()])
                .set(healthy as i64);
        }
    }
    metrics.inflight_bytes.set(shared.inflight.used() as i64);
    metrics
        .inflight_bytes_limit
        .set(shared.inflight.limit() as i64);
    let spool = generation.config.spool.as_ref();
    metrics
        .spool_bytes_limit
        .set(spool.map_or(0, |s| s.max_bytes as i64));
    let (body, content_type) = metrics.render();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// Telegraf and others send `CREATE DATABASE` at start; the proxy says yes without touching
/// the cluster (databases are an operator's business). Any other query is refused.
async fn query(
    shared: &Shared,
    generation: &Generation,
    request: Request<Incoming>,
) -> Result<Resp, ProxyError> {
    let principal = request.extensions().get::<Arc<Principal>>().cloned();
    let mut q = Query::parse(request.uri().query())?
        .get("q")
        .map(|q| q.into_owned());
    let form = request.headers().get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    if form {
        let mut reservation = shared.inflight.reserve();
        let server = &generation.config.server;
        let body = body::read(
            request.into_body(),
            None,
            64 * 1024,
            server.body_read_timeout,
            &mut reservation,
            |_| {},
        )
        .await?;
        let body = body.join();
        let text = std::str::from_utf8(&body).map_err(|_| ProxyError::InvalidParameter("q"))?;
        // As Go's FormValue: a value in the body wins over the URL's.
        if let Some(body_q) = Query::parse(Some(text))?.get("q") {
            q = Some(body_q.into_owned());
        }
    }
    match q.as_deref().and_then(create_database_target) {
        Some(db) if principal.as_ref().is_some_and(|p| !p.may_use_database(&db)) => {
            Err(ProxyError::Forbidden {
                principal: principal.map(|p| p.name.clone()).unwrap_or_default(),
                db,
            })
        }
        Some(_) => Ok(json(
            StatusCode::OK,
            serde_json::json!({"results": [{"statement_id": 0}]}),
        )),
        None => Err(ProxyError::QueryNotSupported),
    }
}

/// The database of `CREATE DATABASE <name>` (name bare or double-quoted, optional `;`).
fn create_database_target(q: &str) -> Option<String> {
    let q = q.trim().trim_end_matches(';').trim_end();
    let mut words = q.splitn(3, char::is_whitespace).filter(|w| !w.is_empty());
    let (create, database) = (words.next()?, words.next()?);
    if !create.eq_ignore_ascii_case("create") || !database.eq_ignore_ascii_case("database") {
        return None;
    }
    let name = q[q.find(database)? + database.len()..].trim();
    if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        let unescaped = quoted.replace("\\\"", "\"");
        return (!unescaped.is_empty()).then_some(unescaped);
    }
    let bare = name.chars().all(|c| c.is_alphanumeric() || c == '_') && !name.is_empty();
    bare.then(|| name.to_string())
}

fn json(status: StatusCode, value: serde_json::Value) -> Resp {
    json_response(status, &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_create_database_statements() {
        assert_eq!(
            create_database_target("CREATE DATABASE telegraf").as_deref(),
            Some("telegraf")
        );
        assert_eq!(
            create_database_target(" create database \"my db\";").as_deref(),
            Some("my db")
        );
        assert_eq!(create_database_target("CREATE DATABASE"), None);
        assert_eq!(create_database_target("DROP DATABASE x"), None);
        assert_eq!(
            create_database_target("CREATE DATABASE x; DROP DATABASE y"),
            None
        );
        assert_eq!(create_database_target("SELECT * FROM cpu"), None);
    }

    #[test]
    fn passthrough_turns_token_user_password_into_basic() {
        let params = WriteParams::from_v1(Some("db=a")).unwrap();
        let token = HeaderValue::from_static("Token bob:pw");
        assert_eq!(
            client_credentials(&params, Some(&token)).unwrap(),
            upstream::basic("bob", "pw")
        );
        let bearer = HeaderValue::from_static("Bearer xyz");
        assert_eq!(
            client_credentials(&params, Some(&bearer)).unwrap(),
            "Bearer xyz"
        );
        let with_up = WriteParams::from_v1(Some("db=a&u=al&p=s")).unwrap();
        assert_eq!(
            client_credentials(&with_up, Some(&bearer)).unwrap(),
            upstream::basic("al", "s")
        );
        assert!(client_credentials(&params, None).is_none());
    }
}
