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

/// Sends `bytes` one at a time, `pause_ms` apart, until the proxy closes the connection;
/// returns how long that took, or `None` if every byte went out.
async fn drip_until_closed<'a>(
    stream: &mut TcpStream,
    bytes: impl Iterator<Item = &'a u8>,
    pause_ms: u64,
) -> Option<Duration> {
    let started = Instant::now();
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        let mut probe = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(pause_ms), stream.read(&mut probe)).await
        {
            return Some(started.elapsed());
        }
    }
    None
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
    let writes = upstream.forwarded();
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
    let closed = drip_until_closed(&mut drip, WRITE.iter().cycle().take(400), 100).await;
    let closed = closed.expect("a dripping head is cut off");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    assert!(
        upstream.forwarded().is_empty(),
        "nothing reached the upstream"
    );
    proxy.stop().await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame, as a client opens with.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_start_like_http2_get_the_head_deadline_too() {
    let (upstream, proxy) = proxy("header_read_timeout = \"1s\"").await;

    // `PRI` and then nothing; a whole preface and SETTINGS, but never a stream.
    for start in [&b"PRI"[..], H2_PREFACE_AND_SETTINGS] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(start).await.unwrap();
        let closed = closed_after(&mut stream, Duration::from_secs(10)).await;
        let closed = closed.unwrap_or_else(|| panic!("{start:?} held open"));
        assert!(closed < Duration::from_secs(4), "{start:?}: {closed:?}");
    }

    // Not the preface after all (`PRIX …`): an HTTP/1.1 head, dripped a byte every 200 ms.
    let mut drip = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    drip.write_all(b"PRIX /ping HTTP/1.1\r\n").await.unwrap();
    let closed = drip_until_closed(&mut drip, std::iter::repeat_n(&b'X', 50), 200).await;
    assert!(closed.is_some(), "a dripping PRIX head is cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(upstream.forwarded().is_empty());
    proxy.stop().await;
}

/// Opens an h2c connection, sends one `GET /ping` on it and returns the status, the sender
/// (the client keeps the connection while it holds it) and the task driving the connection,
/// which ends when the proxy closes it.
async fn h2c_ping(
    addr: std::net::SocketAddr,
) -> (
    http::StatusCode,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(format!("http://{addr}/ping"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (response.status(), sender, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_close_after_keepalive_timeout() {
    let (_upstream, proxy) = proxy("keepalive_timeout = \"1s\"").await;
    let started = Instant::now();
    let (status, _sender, driver) = h2c_ping(proxy.addr).await;
    assert_eq!(status, 204);
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the idle h2 connection is closed")
        .unwrap();
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(900),
        "not before keepalive_timeout: {closed:?}"
    );
    proxy.stop().await;
}

/// Sends `WRITE` on `stream`; whether it was answered 204.
async fn write_answered_204(stream: &mut TcpStream) -> bool {
    stream.write_all(WRITE).await.unwrap();
    response_head(stream)
        .await
        .is_some_and(|head| head.starts_with("HTTP/1.1 204"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_get_a_503_and_the_others_keep_working() {
    let (upstream, proxy) = proxy("max_connections = 3").await;
    let mut open = vec![];
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(write_answered_204(&mut stream).await);
        open.push(stream);
    }
    // The fourth is answered, not reset, and told when to come back.
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    refused.write_all(WRITE).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), refused.read_to_string(&mut answer))
        .await
        .expect("answered and closed")
        .expect("no reset");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\r\nRetry-After: 1\r\n"), "{answer}");
    assert!(
        answer.ends_with(
            "{\"error\":\"too many open connections (server.max_connections = 3); retry later\"}\n"
        ),
        "{answer}"
    );
    // The open ones still work, and a closed one makes room.
    assert!(write_answered_204(&mut open[0]).await);
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(write_answered_204(&mut again).await);
    let writes = upstream.forwarded().len();
    assert_eq!(writes, 5, "the refused write never reached the upstream");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    // A slow upstream, so the client's EOF arrives while the write is being forwarded.
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(50))).await;
    let proxy = Proxy::start(&format!(
        "[clusters.default]\nnodes = [\"{}\"]\n",
        upstream.url()
    ))
    .await;
    for i in 0..20 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(WRITE).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
        assert!(answer.starts_with("HTTP/1.1 204"), "write {i}: {answer:?}");
    }
    assert_eq!(upstream.forwarded().len(), 20, "each write forwarded once");
    proxy.stop().await;
}

/// Sends `head` and `body_len` bytes of body in 16 KiB pieces, waits a moment, then reads
/// the answer: what a client busy sending sees. Its status line, or the first error.
async fn answer_after_sending(
    addr: std::net::SocketAddr,
    head: &str,
    body_len: usize,
) -> Result<String, std::io::Error> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b'#'; 16 * 1024];
    let mut sent = 0;
    while sent < body_len {
        let n = chunk.len().min(body_len - sent);
        stream.write_all(&chunk[..n]).await?;
        sent += n;
        // A client on a slower link: the body is still coming well after the answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Long enough for a proxy that closes without reading to have closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[tokio::test]
async fn early_answers_reach_a_client_that_keeps_sending() {
    const TOKEN: &str = "linger-token-0123456789";
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let proxy = Proxy::start(&format!(
        "[auth]\nmode = \"proxy\"\n[[auth.tokens]]\nname = \"t\"\ntoken = \"{TOKEN}\"\ndatabases = [\"telegraf\"]\n\
         [clusters.default]\nnodes = [\"{}\"]\n",
        upstream.url()
    ))
    .await;
    let head = |path: &str, auth: Option<&str>, length: usize| {
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Token {t}\r\n"));
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n\r\n")
    };
    let cases = [
        (head("/write?db=telegraf", None, 600_000), "401"),
        (head("/write?db=secret", Some(TOKEN), 600_000), "403"),
        (head("/write?db=telegraf", Some(TOKEN), 30_000_000), "413"),
        (head("/nowhere", None, 600_000), "404"),
    ];
    for (head, status) in cases {
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // A body within the 1 MiB the proxy reads after answering.
        let send = length.min(700_000);
        let line = answer_after_sending(proxy.addr, &head, send).await;
        assert!(
            line.as_ref()
                .is_ok_and(|l| l.starts_with(&format!("HTTP/1.1 {status}"))),
            "{head}: {line:?}"
        );
    }
}
