//! The innermost service: dispatches a request by path and method to its endpoint (the
//! `ENDPOINTS` table decides which listener serves what), and turns an endpoint's
//! `ProxyError` into the response through `error.rs`. Paths match exactly (`//write` or
//! `/write/` are 404), so nothing odd is ever forwarded as a write. The small endpoints live
//! here; the write path is `write.rs`, `/query` is `query.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Service;

use super::request_id::OWN_VERSION;
use super::{full, Endpoint, RequestContext, Resp, Role, WriteDetails};
use crate::body::RequestBody;
use crate::error::{json_response, Api, ProxyError};
use crate::rewrite::Query;
use crate::state::{Generation, Shared};

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

// === impl Router ===

impl Service<Request<RequestBody>> for Router {
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let shared = self.shared.clone();
        let role = self.role;
        Box::pin(async move { Ok(route(shared, role, request).await) })
    }
}

async fn route(shared: Arc<Shared>, role: Role, request: Request<RequestBody>) -> Resp {
    // The auth layer pins the generation for guarded paths; the rest take the current one.
    let generation = RequestContext::of(&request)
        .and_then(|c| c.generation.clone())
        .unwrap_or_else(|| shared.generation());
    let method = request.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let path = request.uri().path();
    let endpoint = Endpoint::of(path);
    let api = endpoint.map_or(Api::V1, |e| e.api);
    let known = endpoint.is_some_and(|e| role.serves(e));
    let mut details = WriteDetails::default();
    let result = match (path, &method) {
        _ if !known => Err(ProxyError::NotFound),
        ("/write" | "/api/v2/write", &Method::POST) => {
            super::write::write(&shared, &generation, api, request, &mut details).await
        }
        ("/query", &Method::GET | &Method::POST) => {
            super::query::query(&shared, &generation, request, &mut details).await
        }
        ("/ping", _) if get => Ok(ping(&request)),
        ("/health", _) if get => Ok(health(&generation)),
        ("/live", _) if get => Ok(json(StatusCode::OK, serde_json::json!({"status": "live"}))),
        ("/ready", _) if get => Ok(ready(&shared, &generation)),
        ("/metrics", _) if get => Ok(metrics(&shared, &generation)),
        _ => Err(ProxyError::MethodNotAllowed),
    };
    let mut response = result.unwrap_or_else(|e| {
        shared.metrics.count_refusal(&e);
        full(e.into_response(api, &generation.config.server.realm))
    });
    if !(details.db.is_empty() && details.cluster.is_empty() && details.principal.is_empty()) {
        response.extensions_mut().insert(details);
    }
    response
}

// === small endpoints ===

fn ping(request: &Request<RequestBody>) -> Resp {
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
        full(response)
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
    // The running spool's limit: `[spool]` changes wait for a restart.
    let spool = shared.spool.as_ref();
    metrics
        .spool_bytes_limit
        .set(spool.map_or(0, |s| s.max_bytes() as i64));
    let (body, content_type) = metrics.render();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    full(response)
}

fn json(status: StatusCode, value: serde_json::Value) -> Resp {
    full(json_response(status, &value))
}
