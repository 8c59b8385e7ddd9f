//! Keep-alive HTTP/1.1 connections to a cluster's nodes for writes and pings, pooled per
//! serving thread: a try takes its node's newest idle connection from its own thread's pool
//! (or opens one), sends on it, and gives it back once the answer has been read to the end.
//! A connection idle for 60 s is closed (on the next checkout, or by the health checks'
//! [`Pools::reap`]), and a pool keeps at most 1,024 idle connections per node.
//!
//! This is what hyper-util's legacy `Client` did for this path, minus what a proxy with one
//! fixed set of nodes and one thread per connection does not need: a pool keyed by a hashed
//! `(scheme, authority)` behind one lock shared by every thread, a race between checkout and
//! connect per request, a boxed response future of 3.4 kB moved per request, and a clone of
//! the connector per request (together ≈ 5 % of the proxy's CPU on 10-line writes, `perf`).

use std::sync::Mutex;
use std::time::Duration;

use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::ServiceExt;

use super::spaced::Spacing;
use crate::body::Chunks;
use crate::error::BoxError;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections one pool keeps to one node.
const MAX_IDLE_PER_NODE: usize = 1024;

pub(super) type Connector = Spacing<HttpsConnector<HttpConnector>>;

/// An unused connection and when it was last given back.
struct Idle {
    sender: SendRequest<Chunks>,
    since: Instant,
}

/// Where one node is reached, worked out once rather than per request.
struct Target {
    /// `scheme://authority/`, what the connector opens.
    address: Uri,
    /// The `Host` header of every request to it.
    host: HeaderValue,
    /// The node's path prefix with its trailing `/` (`/` when it has none).
    prefix: String,
}

/// The write pools of one cluster: the first for threads that do not serve connections,
/// then one per serving thread; each holds, per node index, idle connections newest last.
pub(super) struct Pools {
    connector: Connector,
    targets: Box<[Target]>,
    pools: Box<[Mutex<Vec<Vec<Idle>>>]>,
}

/// A connection in use; [`Lease::release`] gives it back, dropping it closes it.
pub(super) struct Lease<'p> {
    pools: &'p Pools,
    pool: usize,
    node: usize,
    sender: SendRequest<Chunks>,
}

impl Lease<'_> {
    /// Back to its pool: the answer it carried was read to the end.
    pub(super) fn release(self) {
        let mut pool = self.pools.pools[self.pool].lock().expect("pool lock");
        let idle = &mut pool[self.node];
        if idle.len() < MAX_IDLE_PER_NODE {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

impl Pools {
    /// Pools for `nodes` (absolute URIs, validated by the configuration).
    pub(super) fn new(connector: Connector, nodes: &[Uri]) -> Self {
        let targets = nodes.iter().map(target).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pools = (0..=threads)
            .map(|_| Mutex::new((0..nodes.len()).map(|_| Vec::new()).collect()))
            .collect();
        Self {
            connector,
            targets,
            pools,
        }
    }

    /// The origin-form URI of `path` (relative, e.g. `write`) and `query` on node `node`.
    pub(super) fn uri(
        &self,
        node: usize,
        path: &str,
        query: &str,
    ) -> Result<Uri, http::uri::InvalidUri> {
        let prefix = &self.targets[node].prefix;
        let mut text = String::with_capacity(prefix.len() + path.len() + 1 + query.len());
        text.push_str(prefix);
        text.push_str(path);
        if !query.is_empty() {
            text.push('?');
            text.push_str(query);
        }
        Ok(Uri::from(PathAndQuery::try_from(text)?))
    }

    /// The pool of this thread: a serving thread's own, so its upstream connections are
    /// driven on the thread whose requests they carry (one pool for all would wake another
    /// thread on every request); other threads share the first.
    fn current(&self) -> usize {
        crate::workers::current().map_or(0, |i| 1 + i % (self.pools.len() - 1))
    }

    /// Sends `request` (its URI from [`Pools::uri`]) to node `node` on a pooled connection,
    /// or a new one. A request that a reused connection closed before taking is sent again
    /// on a new connection, as it never left.
    pub(super) async fn send(
        &self,
        node: usize,
        mut request: Request<Chunks>,
    ) -> Result<(Response<Incoming>, Lease<'_>), BoxError> {
        let target = &self.targets[node];
        request.headers_mut().insert(HOST, target.host.clone());
        let pool = self.current();
        if let Some(mut sender) = self.checkout(pool, node).await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(pool, node, sender))),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is a large future that most tries never
        // need, and every byte of it would be moved with each request's future.
        let mut sender = Box::pin(self.connect(target.address.clone())).await?;
        let response = sender.send_request(request).await?;
        Ok((response, self.lease(pool, node, sender)))
    }

    fn lease(&self, pool: usize, node: usize, sender: SendRequest<Chunks>) -> Lease<'_> {
        Lease {
            pools: self,
            pool,
            node,
            sender,
        }
    }

    /// The newest idle connection to `node` that is still open and ready. Idle ones are
    /// kept oldest first, so when the newest is past the idle timeout all are, and go.
    async fn checkout(&self, pool: usize, node: usize) -> Option<SendRequest<Chunks>> {
        loop {
            let mut idle = {
                let mut pool = self.pools[pool].lock().expect("pool lock");
                let idle = &mut pool[node];
                let newest = idle.pop()?;
                if newest.since.elapsed() >= IDLE_TIMEOUT {
                    idle.clear();
                    return None;
                }
                newest
            };
            if !idle.sender.is_closed() && idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
    }

    /// A new connection to `address` (`scheme://authority`), driven on this thread.
    async fn connect(&self, address: Uri) -> Result<SendRequest<Chunks>, BoxError> {
        let io = self.connector.clone().oneshot(address).await?;
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Closes every connection idle past the timeout, in every pool.
    pub(super) fn reap(&self) {
        self.reap_at(Instant::now());
    }

    /// `reap` as of `now`.
    fn reap_at(&self, now: Instant) {
        for pool in self.pools.iter() {
            let mut pool = pool.lock().expect("pool lock");
            for idle in pool.iter_mut() {
                idle.retain(|i| {
                    now.duration_since(i.since) < IDLE_TIMEOUT && !i.sender.is_closed()
                });
            }
        }
    }

    /// Idle connections held, over all pools and nodes.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.pools
            .iter()
            .map(|p| p.lock().unwrap().iter().map(Vec::len).sum::<usize>())
            .sum()
    }
}

/// Where `node` is reached: its address, `Host` and path prefix.
fn target(node: &Uri) -> Target {
    let authority = node.authority().map_or("", |a| a.as_str());
    let address = Uri::builder()
        .scheme(node.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query("/")
        .build()
        .expect("node URIs are validated by the configuration");
    let host = HeaderValue::from_str(authority).expect("an authority is a valid header");
    let path = node.path().trim_end_matches('/');
    Target {
        address,
        host,
        prefix: format!("{path}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn connector() -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(crate::tls::ClientTls {
                https: false,
                extra_roots: &[],
                skip_verify: false,
            }))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Spacing(https)
    }

    /// Pools for the one node at `address`, under the path prefix `/influx`.
    fn pools_for(address: std::net::SocketAddr) -> Pools {
        let node: Uri = format!("http://{address}/influx").parse().unwrap();
        Pools::new(connector(), &[node])
    }

    fn get(pools: &Pools) -> Request<Chunks> {
        Request::builder()
            .method(Method::GET)
            .uri(pools.uri(0, "ping", "x=1").unwrap())
            .body(Chunks::default())
            .unwrap()
    }

    /// One `get` answered 204, read to the end and its connection given back.
    async fn round_trip(pools: &Pools) {
        let (response, lease) = pools.send(0, get(pools)).await.unwrap();
        assert_eq!(response.status(), 204);
        response.into_body().collect().await.unwrap();
        lease.release();
    }

    /// A server that answers every request on a connection with 204, counts connections,
    /// and closes each connection after `per_connection` answers (`usize::MAX`: never).
    async fn server(
        per_connection: usize,
    ) -> (
        std::net::SocketAddr,
        Arc<AtomicUsize>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    while answered < per_connection {
                        let mut chunk = [0u8; 4096];
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            seen.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            socket
                                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                                .await
                                .unwrap();
                            answered += 1;
                        }
                    }
                });
            }
        });
        (address, connections, heads)
    }

    #[tokio::test]
    async fn a_connection_given_back_carries_the_next_request_in_origin_form() {
        let (address, connections, heads) = server(usize::MAX).await;
        let pools = pools_for(address);
        for _ in 0..3 {
            round_trip(&pools).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(pools.idle(), 1);
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 3);
        let first = heads[0].to_ascii_lowercase();
        assert!(
            first.starts_with("get /influx/ping?x=1 http/1.1\r\n"),
            "{first}"
        );
        assert!(first.contains(&format!("host: {address}\r\n")), "{first}");
    }

    #[tokio::test]
    async fn a_connection_not_given_back_is_not_reused() {
        let (address, connections, _) = server(usize::MAX).await;
        let pools = pools_for(address);
        for _ in 0..2 {
            let (response, lease) = pools.send(0, get(&pools)).await.unwrap();
            assert_eq!(response.status(), 204);
            drop(lease);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(pools.idle(), 0);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
        let (address, connections, _) = server(1).await;
        let pools = pools_for(address);
        for _ in 0..3 {
            round_trip(&pools).await;
            // Let the connection see the upstream's close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_timeout_is_not_reused() {
        let (address, connections, _) = server(usize::MAX).await;
        let pools = pools_for(address);
        for wait in [
            Duration::from_secs(59),
            IDLE_TIMEOUT + Duration::from_secs(1),
        ] {
            round_trip(&pools).await;
            tokio::time::advance(wait).await;
        }
        let (response, _lease) = pools.send(0, get(&pools)).await.unwrap();
        assert_eq!(response.status(), 204);
        // The first connection carried two requests, 59 s apart; the third found it expired.
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (address, _, _) = server(usize::MAX).await;
        let pools = pools_for(address);
        round_trip(&pools).await;
        let given_back = Instant::now();
        pools.reap_at(given_back + IDLE_TIMEOUT - Duration::from_secs(1));
        assert_eq!(pools.idle(), 1);
        pools.reap_at(given_back + IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(pools.idle(), 0);
    }
}
