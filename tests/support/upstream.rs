//! Fake upstreams: recording hyper servers told what to answer, and raw TCP peers for what
//! no HTTP server does on purpose (garbage, stalls, resets).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// === recording upstreams ===

/// What a fake upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a fake upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Reply {
        Reply::status(204, "")
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// A real HTTP/1.1 server that records every request and answers with `reply`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start(reply: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::start_with(None, reply).await
    }

    /// The same over HTTPS with `tls`.
    pub async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        reply: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Upstream::start_with(Some(tls), reply).await
    }

    async fn start_with(
        tls: Option<Arc<rustls::ServerConfig>>,
        reply: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(reply);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (recorded, reply, tls) = (recorded.clone(), reply.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (recorded, reply) = (recorded.clone(), reply.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let request = Recorded {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let answer = reply(&request);
                            recorded.lock().unwrap().push(request);
                            tokio::time::sleep(answer.delay).await;
                            let mut response = Response::new(Full::new(Bytes::from(answer.body)));
                            *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
                            response
                                .headers_mut()
                                .insert("x-influxdb-version", "1.8.10-fake".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What reached this upstream on a client's behalf: everything but the proxy's own
    /// `GET /ping` health checks, which arrive every `health_check_interval` (5 s by
    /// default) however long a test runs.
    pub fn forwarded(&self) -> Vec<Recorded> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| !(r.method == "GET" && r.uri.starts_with("/ping")))
            .cloned()
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP peer that reads the request head, then does `behaviour`.
#[derive(Debug, Clone, Copy)]
pub enum Raw {
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Reads and never answers.
    Stall,
    /// Reads part of the request, then closes with data unread (the peer sees a reset).
    Reset,
}

pub async fn raw_upstream(behaviour: Raw) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                match behaviour {
                    Raw::Garbage => {
                        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                    }
                    Raw::Stall => while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {},
                    Raw::Reset => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        drop(stream);
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), task)
}

/// An address nothing listens on.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Sends raw bytes to `addr` and returns everything read until the peer closes or
/// `timeout` passes.
pub async fn raw_exchange(
    addr: SocketAddr,
    parts: &[(&[u8], Duration)],
    timeout: Duration,
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (bytes, pause) in parts {
        stream.write_all(bytes).await.unwrap();
        tokio::time::sleep(*pause).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
