//! SPEC §4.1 on the real binary: whatever the load, its RSS stays under `max_inflight_bytes`
//! + 64 MiB, and it returns near idle when the load ends.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{client, free_port, gzip, rss, ProxyProcess, Reply, Upstream};

const MIB: u64 = 1024 * 1024;

/// The RSS of `pid` sampled every 5 ms while `work` runs, and its peak.
async fn peak_while<F: std::future::Future>(pid: u32, work: F) -> (F::Output, u64) {
    let peak = Arc::new(AtomicU64::new(rss(pid)));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let out = work.await;
    sampler.abort();
    peak.fetch_max(rss(pid), Ordering::Relaxed);
    (out, peak.load(Ordering::Relaxed))
}

/// What each of `tasks` returned, in order.
async fn joined<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// `count` timestamped points, one per line, over 50 hosts.
fn timestamped_lines(count: i64) -> Vec<u8> {
    let mut body = String::new();
    for i in 0..count {
        body.push_str(&format!(
            "cpu,host=h{} usage={i} {}\n",
            i % 50,
            1_700_000_000_000_000_000i64 + i
        ));
    }
    body.into_bytes()
}

fn start(dir: &std::path::Path, node: &str, server: &str) -> ProxyProcess {
    let port = free_port();
    ProxyProcess::start(
        dir,
        port,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n[clusters.default]\nnodes = [\"{node}\"]\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gzip_bombs_get_413_within_the_budget_and_memory_comes_back() {
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        dir.path(),
        &upstream.url(),
        "max_inflight_bytes = \"128MiB\"\nmax_body_bytes = \"1MiB\"\nmax_decoded_body_bytes = \"16MiB\"",
    );
    let pid = proxy.pid();
    // ~200 kB that decode to 200 MB each; the trailer says so, too.
    let bomb = gzip(&vec![b'a'; 200 * MIB as usize]);
    let idle = rss(pid);
    let url = proxy.url("/write?db=a");
    let ((), peak) = peak_while(pid, async {
        let bombs: Vec<_> = (0..10)
            .map(|_| {
                tokio::spawn(
                    client()
                        .post(url.clone())
                        .header("content-encoding", "gzip")
                        .body(bomb.clone())
                        .send(),
                )
            })
            .collect();
        for bomb in bombs {
            assert_eq!(bomb.await.unwrap().unwrap().status(), 413);
        }
    })
    .await;
    assert!(
        peak < 128 * MIB + 64 * MIB,
        "peak RSS {} MiB (idle {} MiB)",
        peak / MIB,
        idle / MIB
    );
    assert!(upstream.forwarded().is_empty());
    // Back near idle once the load is over.
    let mut after = rss(pid);
    for _ in 0..50 {
        if after < idle + 48 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss(pid);
    }
    assert!(
        after < idle + 48 * MIB,
        "RSS {} MiB after the load, idle {} MiB",
        after / MIB,
        idle / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_gzip_writers_behind_a_slow_upstream_stay_inside_the_budget() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        dir.path(),
        &upstream.url(),
        "max_inflight_bytes = \"32MiB\"\ninflight_wait = \"20s\"",
    );
    let pid = proxy.pid();
    let compressed = gzip(&timestamped_lines(20_000));
    let url = proxy.url("/write?db=a");
    let idle = rss(pid);
    let (statuses, peak) = peak_while(pid, async {
        let writers: Vec<_> = (0..64)
            .map(|_| {
                tokio::spawn(
                    client()
                        .post(url.clone())
                        .header("content-encoding", "gzip")
                        .body(compressed.clone())
                        .send(),
                )
            })
            .collect();
        let replies = joined(writers).await;
        replies
            .into_iter()
            .map(|reply| reply.unwrap().status().as_u16())
            .collect::<Vec<_>>()
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    assert_eq!(upstream.forwarded().len(), 64);
    assert!(
        peak < 32 * MIB + 64 * MIB,
        "peak RSS {} MiB (idle {} MiB, compressed body {} kB)",
        peak / MIB,
        idle / MIB,
        compressed.len() / 1000
    );
}

/// One h2c connection with `SETTINGS_INITIAL_WINDOW_SIZE = 0` that opens `streams`
/// `GET /health` streams and never reads a byte of their bodies; resolves when the proxy
/// closes the connection, with how many of the streams got a response head and when the
/// last of them came.
async fn zero_window_client(
    addr: std::net::SocketAddr,
    streams: usize,
) -> (usize, std::time::Instant) {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut last_head = std::time::Instant::now();
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, last_head);
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
            .await
    else {
        return (0, last_head);
    };
    let driver = tokio::spawn(connection);
    let mut heads = vec![];
    for _ in 0..streams {
        if sender.ready().await.is_err() {
            break;
        }
        let request = http::Request::get(format!("http://{addr}/health"))
            .body(Empty::new())
            .unwrap();
        heads.push(sender.send_request(request));
    }
    let mut answered = vec![];
    for head in heads {
        if let Ok(response) = head.await {
            // Held, never read: its body cannot be sent through a zero window.
            answered.push(response);
            last_head = std::time::Instant::now();
        }
    }
    let _ = driver.await;
    (answered.len(), last_head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_with_a_zero_window_are_cut_off_at_the_deadline_inside_the_budget() {
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        dir.path(),
        &upstream.url(),
        "max_inflight_bytes = \"128MiB\"\nrequest_timeout = \"5s\"",
    );
    let pid = proxy.pid();
    let addr = proxy.addr();
    let idle = rss(pid);
    let started = std::time::Instant::now();
    // 20,000 streams are answered by a debug build on two cores: request_timeout leaves the
    // proxy time to send every head before the first connections are cut.
    let (heads, peak) = peak_while(pid, async {
        let clients: Vec<_> = (0..200)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_secs(20),
                    zero_window_client(addr, 256),
                ))
            })
            .collect();
        let clients = joined(clients).await;
        clients
            .into_iter()
            .map(|client| client.expect("the proxy closes a zero-window connection"))
            .collect::<Vec<_>>()
    })
    .await;
    let closed = started.elapsed();
    // Each client had as many streams open as the default bound lets it, no more.
    assert!(
        heads.iter().all(|&(n, _)| n == 100),
        "{:?}",
        heads.iter().map(|&(n, _)| n).collect::<Vec<_>>()
    );
    // Cut at the deadline, counted from the heads: a slow box takes a while to answer
    // 20,000 streams, and the last connections' deadlines run from their last answers.
    let last_head = heads.iter().map(|&(_, at)| at).max().expect("clients");
    let after_last_head = closed.saturating_sub(last_head.duration_since(started));
    assert!(
        closed >= Duration::from_secs(5) && after_last_head < Duration::from_secs(8),
        "closed after {closed:?}, {after_last_head:?} after the last head; request_timeout is 5s"
    );
    assert!(
        peak < 128 * MIB + 64 * MIB,
        "peak RSS {} MiB (idle {} MiB)",
        peak / MIB,
        idle / MIB
    );
    let stalled = support::metrics::metric_value(
        &support::metrics::scrape(&proxy.url("/metrics")).await,
        "influx_write_proxy_connections_timed_out_total",
        &[("reason", "stalled")],
    );
    assert_eq!(stalled, 200.0);
}

/// Sends `body` to `addr` as one HTTP/1.1 write, 1 kB at a time with a pause after each
/// piece, so the proxy reads it in many short reads; returns the status line.
fn trickle(addr: std::net::SocketAddr, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "POST /write?db=a HTTP/1.1\r\nHost: proxy\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for piece in body.chunks(1024) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let mut answer = [0; 256];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_trickled_in_short_reads_are_held_at_their_own_size() {
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        dir.path(),
        &upstream.url(),
        "max_inflight_bytes = \"32MiB\"\ninflight_wait = \"20s\"",
    );
    let pid = proxy.pid();
    let addr = proxy.addr();
    let body = Arc::new(timestamped_lines(70_000));
    let idle = rss(pid);
    // Ten bodies of ~3 MB fit the budget together. Each short read takes a fresh read
    // buffer; kept as slices of those buffers they would hold several times their size.
    let (statuses, peak) = peak_while(pid, async {
        let writers: Vec<_> = (0..10)
            .map(|_| {
                let body = body.clone();
                tokio::task::spawn_blocking(move || trickle(addr, &body))
            })
            .collect();
        joined(writers).await
    })
    .await;
    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 204 No Content"),
        "{statuses:?}"
    );
    let received = upstream.forwarded();
    assert_eq!(received.len(), 10);
    assert!(received.iter().all(|r| r.body[..] == body[..]));
    assert!(
        peak < 32 * MIB + 64 * MIB,
        "peak RSS {} MiB (idle {} MiB) for 10 bodies of {} kB",
        peak / MIB,
        idle / MIB,
        body.len() / 1000
    );
}
