//! The one service stack, layers listed in the order a request meets them.

use std::sync::Arc;

use tower::ServiceBuilder;
use tower_http::catch_panic::{CatchPanic, CatchPanicLayer};

use crate::error::panic_response;
use crate::http::auth::{Auth, AuthLayer};
use crate::http::observe::{Observe, ObserveLayer};
use crate::http::request_id::{RequestId, RequestIdLayer};
use crate::http::router::Router;
use crate::http::Role;
use crate::state::Shared;

/// Turns a handler's panic into the 500 of `error::panic_response`.
#[derive(Clone, Copy, Debug)]
pub struct PanicHandler;

impl tower_http::catch_panic::ResponseForPanic for PanicHandler {
    type ResponseBody = http_body_util::Full<bytes::Bytes>;

    fn response_for_panic(
        &mut self,
        panic: Box<dyn std::any::Any + Send + 'static>,
    ) -> http::Response<Self::ResponseBody> {
        panic_response(panic)
    }
}

/// The service one listener runs, cloned for every request by hyper-util's glue.
pub type Stack = Observe<RequestId<CatchPanic<Auth<Router>, PanicHandler>>>;

pub fn build(shared: Arc<Shared>, role: Role) -> Stack {
    ServiceBuilder::new()
        // Counts and times every answer, requests in flight; one access-log line each.
        .layer(ObserveLayer::new(shared.metrics.clone()))
        // Never fails: request id in, X-Request-Id / Request-Id / X-Influxdb-Version out.
        .layer(RequestIdLayer)
        // 500: a bug in a handler answers the request instead of dropping the connection.
        .layer(CatchPanicLayer::custom(PanicHandler))
        // Pins the request's configuration generation. Mode proxy, on /write,
        // /api/v2/write and /query: 401 for any bad or missing credentials, 429 for an
        // address with too many failed logins or a principal over its request rate.
        .layer(AuthLayer::new(
            shared.current.clone(),
            shared.metrics.clone(),
        ))
        // Dispatch by path: 404 unknown path, 405 wrong method; the write path answers
        // 400 (parameters, gzip), 403 (database not allowed, before the body is read), 413
        // (body limits), 408 (stalled body), 429 (principal's bytes rate), 503 (in-flight
        // bytes, retries used up), 502/504 (upstream), and passes upstream errors through.
        .service(Router::new(shared, role))
}
