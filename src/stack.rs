//! The one service stack, layers listed in the order a request meets them.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::handler::{Role, Router, Shared};
use crate::request_id::{RequestId, RequestIdLayer};

/// The service one listener runs, cloned for every request by hyper-util's glue.
pub type Stack = RequestId<Router>;

pub fn build(shared: Arc<Shared>, role: Role) -> Stack {
    ServiceBuilder::new()
        // Never fails: request id in, X-Request-Id / Request-Id / X-Influxdb-Version out.
        .layer(RequestIdLayer)
        // Dispatch by path: 404 unknown path, 405 wrong method; the write path answers
        // 400 (parameters, gzip), 413 (body limits), 408 (stalled body), 503 (in-flight
        // bytes, no upstream), 502/504 (upstream), and passes upstream errors through.
        .service(Router::new(shared, role))
}
