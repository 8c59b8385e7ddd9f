//! `RequestId<S>`: gives every request an id (the client's `X-Request-Id` or `Request-Id`
//! when it is sane, else a new UUID), puts it in the request's
//! [`RequestContext`], and puts `X-Request-Id`, `Request-Id` and a default `X-Influxdb-Version` on
//! every response. It never fails.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response};
use tower::{Layer, Service};

use super::RequestContext;
use crate::headers::{REQUEST_ID, X_INFLUXDB_VERSION, X_REQUEST_ID};

/// `X-Influxdb-Version` when the answer did not come from an upstream.
pub const OWN_VERSION: &str = concat!("influx-write-proxy-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

// === impl RequestId ===

impl<S, B, R> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Identified<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = [&X_REQUEST_ID, &REQUEST_ID]
            .into_iter()
            .filter_map(|name| request.headers().get(name))
            .find(|value| acceptable(value))
            .cloned()
            .unwrap_or_else(new_id);
        RequestContext::of_mut(&mut request).request_id = Some(id.clone());
        Identified {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, given the id's headers. A named future rather than a
    /// boxed `async` block: one allocation less per request.
    pub struct Identified<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for Identified<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let id = this.id.take().expect("polled after it answered");
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID, id.clone());
        headers.insert(REQUEST_ID, id);
        headers
            .entry(X_INFLUXDB_VERSION)
            .or_insert(HeaderValue::from_static(OWN_VERSION));
        Poll::Ready(Ok(response))
    }
}

/// Client ids are echoed and forwarded: keep them short and printable.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A v4 UUID from a per-thread generator seeded once by the OS: an ID only has to be
/// unique, and a `getrandom` call per request costs a system call on the hot path.
pub(crate) fn new_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let bytes = fastrand::u128(..).to_le_bytes();
    let id = uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    async fn echo(request: Request<()>) -> Result<Response<String>, Infallible> {
        let id = RequestContext::of(&request)
            .and_then(|c| c.request_id.clone())
            .unwrap();
        Ok(Response::new(id.to_str().unwrap().to_string()))
    }

    #[tokio::test]
    async fn keeps_a_sane_client_id_and_echoes_it_twice() {
        let svc = RequestIdLayer.layer(service_fn(echo));
        let request = Request::builder()
            .header("Request-Id", "abc-123")
            .body(())
            .unwrap();
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "abc-123");
        assert_eq!(response.headers()["request-id"], "abc-123");
        assert_eq!(response.headers()["x-influxdb-version"], OWN_VERSION);
        assert_eq!(response.body(), "abc-123");
    }

    #[tokio::test]
    async fn replaces_an_unprintable_or_huge_client_id() {
        let svc = RequestIdLayer.layer(service_fn(echo));
        let request = Request::builder()
            .header("X-Request-Id", "a".repeat(500))
            .body(())
            .unwrap();
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.body().len(), 36);
        assert_eq!(response.headers()["x-request-id"], response.body().as_str());
    }
}
