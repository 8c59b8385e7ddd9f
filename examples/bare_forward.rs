//! The floor of the proxy's architecture, for the rig: a hyper 1 server that forwards every
//! request to one upstream through hyper-util's pooled client, streaming the body, with no
//! routing, checks, limits, metrics or logs. What this reaches against nginx on the same box
//! bounds what the proxy can reach without leaving hyper and tokio:
//! `cargo run --release --example bare_forward -- 127.0.0.1:18097 http://127.0.0.1:18086`,
//! then point `../shared/rig/bench.sh` at port 18097. By default one work-stealing runtime
//! serves every connection; `PER_CORE=N` runs N single-threaded runtimes instead, each with
//! its own client and its own `SO_REUSEPORT` listener.
use std::net::SocketAddr;

use http::uri::{PathAndQuery, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Incoming>;

async fn forward(
    client: Upstream,
    upstream: Uri,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let (mut parts, body) = request.into_parts();
    let mut target = upstream.into_parts();
    target.path_and_query = parts.uri.path_and_query().cloned();
    target
        .path_and_query
        .get_or_insert(PathAndQuery::from_static("/"));
    parts.uri = Uri::from_parts(target).expect("a scheme, an authority and a path make a URI");
    client.request(Request::from_parts(parts, body)).await
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:18097")
        .parse()?;
    let upstream: Uri = args
        .next()
        .as_deref()
        .unwrap_or("http://127.0.0.1:18086")
        .parse()?;
    let per_core: usize = std::env::var("PER_CORE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if per_core == 0 {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(listen, upstream, false))
            .map_err(Into::into);
    }
    let threads: Vec<_> = (0..per_core)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(serve(listen, upstream, true))
                    .unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Ok(())
}

async fn serve(listen: SocketAddr, upstream: Uri, reuse: bool) -> Result<(), std::io::Error> {
    let client: Upstream = Client::builder(TokioExecutor::new()).build_http();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if reuse {
        socket.set_reuseport(true)?;
    }
    socket.bind(listen)?;
    let listener = socket.listen(1024)?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service =
                service_fn(move |request| forward(client.clone(), upstream.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
