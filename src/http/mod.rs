//! The HTTP floor: the one table of endpoints (path, listener, whether credentials guard it,
//! the error shape it answers in, its metrics label), and the services a request passes
//! through, outermost first: `observe` (metrics and access log), `request_id`, the panic
//! catcher (`stack.rs`), `auth`, then `router`, which hands writes to `write`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Either, Full};

use crate::auth::Principal;
use crate::error::{Api, BoxError};
use crate::state::Generation;

pub mod auth;
pub mod observe;
mod query;
pub mod request_id;
pub mod router;
mod show_databases;
mod write;

/// A response body: whole (the proxy's own answers), or streamed from an upstream (reads).
pub type Body = Either<Full<Bytes>, UnsyncBoxBody<Bytes, BoxError>>;

pub(crate) type Resp = Response<Body>;

/// A whole response as a `Resp`.
pub(crate) fn full(response: Response<Full<Bytes>>) -> Resp {
    response.map(Either::Left)
}

/// Which listener serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `listen`: writes and what clients call.
    Main,
    /// `admin_listen` (or `listen` when there is none): probes and scrapes.
    Admin,
}

/// One endpoint of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub path: &'static str,
    pub listener: Listener,
    /// In auth mode `proxy`, credentials are checked before it runs.
    pub guarded: bool,
    /// The error shape its answers take.
    pub api: Api,
    /// The `endpoint` label of the metrics and the access log (SPEC §9's fixed set: the
    /// admin endpoints, like unknown paths, are `other`).
    pub label: &'static str,
}

/// Every endpoint: the router dispatches by it, the auth layer guards by it, the metrics
/// label by it. A path not here is a 404.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("/write", Listener::Main, true, Api::V1, "write"),
    endpoint("/api/v2/write", Listener::Main, true, Api::V2, "v2_write"),
    endpoint("/query", Listener::Main, true, Api::V1, "query"),
    endpoint("/ping", Listener::Main, false, Api::V1, "ping"),
    endpoint("/health", Listener::Main, false, Api::V1, "health"),
    endpoint("/live", Listener::Admin, false, Api::V1, "other"),
    endpoint("/ready", Listener::Admin, false, Api::V1, "other"),
    endpoint("/metrics", Listener::Admin, false, Api::V1, "other"),
];

const fn endpoint(
    path: &'static str,
    listener: Listener,
    guarded: bool,
    api: Api,
    label: &'static str,
) -> Endpoint {
    Endpoint {
        path,
        listener,
        guarded,
        api,
        label,
    }
}

impl Endpoint {
    /// The endpoint at exactly `path`.
    pub fn of(path: &str) -> Option<&'static Endpoint> {
        ENDPOINTS.iter().find(|e| e.path == path)
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes, `/ping`, `/health`, `/query`; plus the admin endpoints when `with_admin`.
    Main { with_admin: bool },
    /// `/live`, `/ready`, `/metrics`.
    Admin,
}

impl Role {
    /// Whether a listener of this role serves `endpoint`.
    pub fn serves(self, endpoint: &Endpoint) -> bool {
        match endpoint.listener {
            Listener::Main => matches!(self, Role::Main { .. }),
            Listener::Admin => matches!(self, Role::Admin | Role::Main { with_admin: true }),
        }
    }
}

/// What the server and the layers learn of a request on its way in, for the layers and
/// handlers after them: one value in the request's extensions, filled in as it passes (one
/// extension each was four boxed values and a regrown map per request).
#[derive(Clone, Default)]
pub struct RequestContext {
    /// The client's address, set by the server.
    pub peer: Option<SocketAddr>,
    /// The request's id, set by `request_id`.
    pub request_id: Option<HeaderValue>,
    /// The configuration generation the request is served under, pinned by `auth`.
    pub generation: Option<Arc<Generation>>,
    /// Who sent it, once `auth` has authenticated it.
    pub principal: Option<Arc<Principal>>,
}

impl RequestContext {
    /// The request's context, if anything has set one.
    pub fn of<B>(request: &Request<B>) -> Option<&RequestContext> {
        request.extensions().get()
    }

    /// The request's context, made empty if nothing has set one yet.
    pub fn of_mut<B>(request: &mut Request<B>) -> &mut RequestContext {
        request.extensions_mut().get_or_insert_default()
    }

    /// The context of the request these parts were split from.
    fn in_parts(parts: &http::request::Parts) -> Option<&RequestContext> {
        parts.extensions.get()
    }
}

/// Who sent the request whose parts these are, if `auth` authenticated it.
pub(crate) fn principal_of(parts: &http::request::Parts) -> Option<Arc<Principal>> {
    RequestContext::in_parts(parts).and_then(|c| c.principal.clone())
}

/// The id `request_id` gave the request whose parts these are.
pub(crate) fn request_id_of(parts: &http::request::Parts) -> Option<HeaderValue> {
    RequestContext::in_parts(parts).and_then(|c| c.request_id.clone())
}

/// What the write path tells the access log, carried out in the response's extensions.
#[derive(Debug, Clone, Default)]
pub struct WriteDetails {
    pub db: String,
    pub rp: String,
    pub principal: String,
    pub cluster: String,
    pub node: String,
    pub tries: u32,
    pub bytes: u64,
    pub points: u64,
    /// A query's statement kinds, comma-separated (never its text).
    pub statements: String,
}
