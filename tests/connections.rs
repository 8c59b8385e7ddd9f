//! Connection deadlines on the real socket: a request head must arrive within
//! `header_read_timeout` (slowloris), while an idle keep-alive connection lives for
//! `keepalive_timeout` — a client writing every 10 s keeps its connection with the default
//! 10 s head timeout.

mod support;

use std::time::{Duration, Instant};

use support::{Proxy, Reply, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WRITE: &[u8] =
    b"POST /write?db=a HTTP/1.1\r\nHost: proxy\r\nContent-Length: 8\r\n\r\nm v=1 1\n";

async fn proxy(server: &str) -> (Upstream, Proxy) {
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let proxy = Proxy::start(&format!(
        "[server]\n{server}\n[clusters.default]\nnodes = [\"{}\"]\n",
        upstream.url()
    ))
    .await;
    (upstream, proxy)
}

/// Reads one response head; `None` when the connection closed (or failed) first.
async fn response_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8(head).unwrap())
}

/// How long until the proxy closes `stream` (reading and discarding anything it sends).
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut sink)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_outlive_header_read_timeout() {
    let (upstream, proxy) = proxy("header_read_timeout = \"1s\"").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        stream.write_all(WRITE).await.unwrap();
        let head = response_head(&mut stream).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.1 204"), "{head}");
        // Idle for longer than the head timeout, as a client with a 10 s flush interval
        // against the default 10 s would be.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let writes = upstream.received();
    let writes = writes
        .iter()
        .filter(|r| r.uri.starts_with("/write"))
        .count();
    assert_eq!(writes, 2, "both writes on one connection");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_keepalive_timeout() {
    let (_upstream, proxy) = proxy("keepalive_timeout = \"1s\"").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(WRITE).await.unwrap();
    assert!(response_head(&mut stream)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 204"));
    let closed = closed_after(&mut stream, Duration::from_secs(10)).await;
    let closed = closed.expect("the idle connection is closed");
    assert!(
        closed >= Duration::from_millis(800),
        "not before keepalive_timeout: {closed:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_must_arrive_within_header_read_timeout() {
    let (upstream, proxy) = proxy("header_read_timeout = \"1s\"").await;

    // Silent after connecting.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_after(&mut silent, Duration::from_secs(10))
        .await
        .is_some());

    // Half a head, then nothing.
    let mut half = TcpStream::connect(proxy.addr).await.unwrap();
    half.write_all(b"POST /write?db=a HTTP/1.1\r\nHost: proxy\r\n")
        .await
        .unwrap();
    assert!(closed_after(&mut half, Duration::from_secs(10))
        .await
        .is_some());

    // Slowloris: a byte every 100 ms, so no single pause is long, but the head never ends
    // within the timeout. The deadline runs from the head's first byte.
    let mut drip = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in WRITE.iter().cycle().take(400) {
        if drip.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), drip.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a dripping head is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        upstream.received().is_empty(),
        "nothing reached the upstream"
    );
    proxy.stop().await;
}
