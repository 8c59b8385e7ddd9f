//! Queries forwarded to one node of a cluster, with the node choice and health of writes.
//! A query that only reads is tried on another node when no answer has begun: a connection
//! error, or no response head within the cluster's per-try `timeout`. Anything else, and
//! every query that may change something, gets one try. The answer comes back unread: the
//! caller streams it to the client.

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use tower::retry::budget::Budget;

use super::{node, retry, Cluster, Credentials};
use crate::body::Chunks;
use crate::error::ProxyError;

/// A query ready to go upstream.
pub struct QueryForward {
    /// `GET` (parameters in the URL) or `POST` (parameters as a form body), as the client
    /// sent it: InfluxDB answers a change over `GET` with a deprecation warning.
    pub method: Method,
    /// The parameters InfluxDB reads, form-encoded.
    pub params: String,
    /// `Accept`, `Accept-Encoding`, `X-Request-Id`: what describes the answer wanted.
    pub headers: HeaderMap,
    pub credentials: Credentials,
    /// Only reads: safe to try again on another node.
    pub retriable: bool,
}

/// The upstream's answer, and where it came from.
pub struct Answer {
    pub response: Response<Incoming>,
    pub node: String,
    pub tries: u32,
}

impl Cluster {
    /// Sends the query to the best node; see the module's note for when it tries again.
    pub async fn query(&self, forward: &QueryForward) -> Result<Answer, ProxyError> {
        self.budget.deposit();
        let nodes = self.nodes.load_full();
        let max_tries = if forward.retriable {
            self.max_retries + 1
        } else {
            1
        };
        let mut tried: Vec<usize> = Vec::with_capacity(max_tries as usize);
        loop {
            let index = node::pick(&nodes, &tried);
            tried.push(index);
            let node = &nodes[index];
            let request = self.query_request(node, forward)?;
            let started = std::time::Instant::now();
            let outcome = {
                let _inflight = node.start();
                let attempt = self.query_client.request(request);
                self.per_try(async { attempt.await.map_err(|e| self.send_error(e.into())) })
                    .await
            };
            let code = match &outcome {
                // As for writes: successes are `2xx`, other answers their status.
                Ok(response) if response.status().is_success() => "2xx".to_string(),
                Ok(response) => response.status().as_u16().to_string(),
                Err(error) => super::error_code(error),
            };
            self.record(node, &code, started.elapsed());
            let error = match outcome {
                Ok(response) => {
                    node.request_succeeded();
                    return Ok(Answer {
                        response,
                        node: node.name.clone(),
                        tries: tried.len() as u32,
                    });
                }
                Err(error @ ProxyError::UpstreamBadResponse { .. }) => return Err(error),
                Err(error) => error,
            };
            self.try_failed(node);
            let retries = tried.len() as u32 - 1;
            if retries + 1 >= max_tries || !self.budget.withdraw() {
                return Err(match error {
                    ProxyError::UpstreamTimeout { .. } => error,
                    other => ProxyError::QueryUnavailable {
                        cluster: self.name.clone(),
                        source: Box::new(other),
                    },
                });
            }
            tracing::debug!(cluster = %self.name, node = %node.name, error = %error, retry = retries + 1, "retrying query");
            self.retries.inc();
            tokio::time::sleep(retry::backoff(self.retry_backoff, retries)).await;
        }
    }

    fn query_request(
        &self,
        node: &node::Node,
        forward: &QueryForward,
    ) -> Result<Request<Chunks>, ProxyError> {
        let get = forward.method != Method::POST;
        let uri = if get {
            format!("{}query?{}", node.base_url, forward.params)
        } else {
            format!("{}query", node.base_url)
        };
        let uri: Uri = uri.parse().map_err(|e| ProxyError::QueryUnavailable {
            cluster: self.name.clone(),
            source: Box::new(e),
        })?;
        let body = if get {
            Chunks::default()
        } else {
            Chunks::from(bytes::Bytes::from(forward.params.clone()))
        };
        let mut request = Request::builder()
            .method(forward.method.clone())
            .uri(uri)
            .header(USER_AGENT, super::OWN_USER_AGENT)
            .body(body)
            .expect("request parts are valid");
        let headers = request.headers_mut();
        for (name, value) in &forward.headers {
            headers.append(name, value.clone());
        }
        if !get {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
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
}
