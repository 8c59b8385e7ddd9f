//! The auth layer: pins the configuration generation a request is served with, and in mode
//! `proxy` checks the credentials of every guarded endpoint (the `ENDPOINTS` table says which)
//! before the request reaches the router: 401, 429 for a throttled address or a principal over
//! its rate, else the principal goes on in the request's extensions.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::future::Either;
use http::Request;
use tower::{Layer, Service};

use super::{full, Endpoint, RequestContext, Resp};
use crate::auth::{presented, Presented};
use crate::error::{Api, ProxyError};
use crate::metrics::Metrics;
use crate::state::Generation;

/// Authenticates writes and queries in mode `proxy` (401, or 429 for a throttled address);
/// everything else passes untouched.
///
/// It also pins the configuration generation the request will be served with (a reload
/// during the request does not change it), as a request extension.
#[derive(Clone)]
pub struct AuthLayer {
    current: Arc<ArcSwap<Generation>>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(current: Arc<ArcSwap<Generation>>, metrics: Arc<Metrics>) -> Self {
        Self { current, metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            current: self.current.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    current: Arc<ArcSwap<Generation>>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    /// The inner service's own future when the endpoint is not guarded, without a box.
    type Future = Either<S::Future, Pin<Box<dyn Future<Output = Result<Resp, S::Error>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let generation = self.current.load_full();
        let endpoint = Endpoint::of(request.uri().path());
        let guarded = endpoint.is_some_and(|e| e.guarded);
        let api = endpoint.map_or(Api::V1, |e| e.api);
        let auth = generation.auth.clone().filter(|_| guarded);
        RequestContext::of_mut(&mut request).generation = Some(generation.clone());
        let Some(auth) = auth else {
            return Either::Left(self.inner.call(request));
        };
        let metrics = self.metrics.clone();
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let ip = RequestContext::of(&request)
                .and_then(|c| c.peer)
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
            let realm = &generation.config.server.realm;
            if let Err(throttled) = auth.throttle.check(ip) {
                return Ok(full(throttled.into_response(api, realm)));
            }
            let presented = presented(request.uri().query(), request.headers(), auth.jwt_enabled());
            let missing = matches!(presented, Presented::None);
            match auth.authenticate(presented, ip).await {
                Ok(principal) => {
                    if let Err(limited) = principal.limits.check_request(&principal.name) {
                        metrics.count_refusal(&limited);
                        return Ok(full(limited.into_response(api, realm)));
                    }
                    RequestContext::of_mut(&mut request).principal = Some(principal);
                    inner.call(request).await
                }
                Err(error @ ProxyError::LoginsPending { .. }) => {
                    Ok(full(error.into_response(api, realm)))
                }
                Err(error @ ProxyError::LoginThrottled { .. }) => {
                    Ok(full(error.into_response(api, realm)))
                }
                Err(error) => {
                    let reason = if missing { "missing" } else { "invalid" };
                    metrics.auth_failures.with_label_values(&[reason]).inc();
                    tracing::info!(client = %ip, reason, "authentication failed");
                    auth.throttle.failed(ip);
                    Ok(full(error.into_response(api, realm)))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tower::{service_fn, ServiceExt};

    use crate::config::Config;

    const TOKEN: &str = "layer-test-token-0123456789";

    fn generation() -> Arc<ArcSwap<Generation>> {
        let config = Config::parse(
            &format!(
                "[auth]\nmode = \"proxy\"\n\
                 [[auth.tokens]]\nname = \"app\"\ntoken = \"{TOKEN}\"\ndatabases = [\"*\"]\n\
                 rate_limit = {{ requests_per_second = 1 }}\n\
                 [rate_limit]\nburst_seconds = 1\n\
                 [clusters.default]\nnodes = [\"http://127.0.0.1:1\"]\n"
            ),
            &|_| None,
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        Arc::new(ArcSwap::from_pointee(Generation::new(
            config, &metrics, None,
        )))
    }

    /// The layer over an inner service that names the principal it was handed.
    fn layered(
        current: Arc<ArcSwap<Generation>>,
    ) -> Auth<impl Service<Request<()>, Response = Resp, Error = Infallible, Future: Send> + Clone>
    {
        AuthLayer::new(current, Arc::new(Metrics::new())).layer(service_fn(
            |request: Request<()>| async move {
                let context = RequestContext::of(&request).expect("the auth layer sets a context");
                let name = context
                    .principal
                    .as_ref()
                    .map_or("anonymous".to_string(), |p| p.name.clone());
                assert!(context.generation.is_some());
                Ok::<_, Infallible>(full(Response::new(Full::new(Bytes::from(name)))))
            },
        ))
    }

    async fn call(
        service: &mut (impl Service<Request<()>, Response = Resp, Error = Infallible> + Clone),
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Token {token}"));
        }
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request.body(()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn guarded_paths_need_credentials_and_the_principal_goes_on() {
        let mut service = layered(generation());
        let (status, body) = call(&mut service, "/write?db=a", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("authorization failed"), "{body}");
        let (status, body) = call(&mut service, "/write?db=a", Some(TOKEN)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
        let (status, _) = call(&mut service, "/api/v2/write?bucket=a", Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn unguarded_paths_pass_without_credentials() {
        let mut service = layered(generation());
        for path in ["/ping", "/health", "/metrics", "/nowhere"] {
            let (status, body) = call(&mut service, path, None).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "anonymous"),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn a_principal_over_its_rate_is_refused_before_the_inner_service() {
        let mut service = layered(generation());
        assert_eq!(
            call(&mut service, "/write?db=a", Some(TOKEN)).await.0,
            StatusCode::OK
        );
        let (status, body) = call(&mut service, "/write?db=a", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(body.contains("over its rate limit"), "{body}");
    }
}
