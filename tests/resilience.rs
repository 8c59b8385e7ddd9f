//! Upstream resilience (SPEC §4 retriable list, §6): which failures are retried, how often,
//! on which node, what the client finally hears; health checks, the retry budget, mirrors;
//! and a real influxd node SIGKILLed under load without losing an acknowledged write.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    client, expect_error, metric_value, raw_upstream, refused_url, OwnInfluxd, Proxy, Raw, Reply,
    Upstream,
};

/// A cluster of `nodes` with fast retries (unless `cluster_extra` sets its own) and the
/// given extra cluster keys.
async fn proxy(nodes: &[String], cluster_extra: &str) -> Proxy {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    let mut keys = cluster_extra.to_string();
    for (key, value) in [("timeout", "\"300ms\""), ("retry_backoff", "\"5ms\"")] {
        if !keys.contains(&format!("{key} =")) {
            keys.push_str(&format!("\n{key} = {value}"));
        }
    }
    Proxy::start(&format!(
        "[clusters.default]\nnodes = [{}]\n{keys}\n",
        nodes.join(", ")
    ))
    .await
}

async fn write(proxy: &Proxy, body: &str) -> reqwest::Response {
    client()
        .post(proxy.url("/write?db=a"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn writes(upstream: &Upstream) -> usize {
    upstream
        .forwarded()
        .iter()
        .filter(|r| r.uri.starts_with("/write"))
        .count()
}

#[tokio::test]
async fn refused_node_is_skipped_and_every_write_lands_on_the_other() {
    let ok = Upstream::start(|_| Reply::ok()).await;
    let proxy = proxy(&[refused_url().await, ok.url()], "").await;
    for _ in 0..10 {
        assert_eq!(write(&proxy, "m v=1 1").await.status(), 204);
    }
    assert_eq!(writes(&ok), 10);
}

#[tokio::test]
async fn reset_mid_body_is_retried_on_another_node() {
    let (reset, _task) = raw_upstream(Raw::Reset).await;
    let ok = Upstream::start(|_| Reply::ok()).await;
    let proxy = proxy(&[reset, ok.url()], "").await;
    let body: String = (0..20_000)
        .map(|i| format!("m,host=h{} v={i} {}\n", i % 10, 1_700_000_000 + i))
        .collect();
    for _ in 0..4 {
        assert_eq!(write(&proxy, &body).await.status(), 204);
    }
    let received = ok.forwarded();
    assert_eq!(received.len(), 4);
    assert!(
        received.iter().all(|r| r.body == body.as_bytes()),
        "the retried body is whole"
    );
}

#[tokio::test]
async fn stalled_node_is_retried_elsewhere_and_504_when_every_try_times_out() {
    let (stall, _a) = raw_upstream(Raw::Stall).await;
    let ok = Upstream::start(|_| Reply::ok()).await;
    let proxy_one = proxy(&[stall.clone(), ok.url()], "").await;
    for _ in 0..4 {
        assert_eq!(write(&proxy_one, "m v=1 1").await.status(), 204);
    }
    assert_eq!(writes(&ok), 4);

    let (stall2, _b) = raw_upstream(Raw::Stall).await;
    let proxy_two = proxy(&[stall, stall2], "max_retries = 1").await;
    let started = Instant::now();
    let message = expect_error(write(&proxy_two, "m v=1 1").await, 504).await;
    assert_eq!(message, "cluster \"default\" did not answer in time");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "two tries of 300 ms each"
    );
}

#[tokio::test]
async fn request_timeout_ends_the_tries_however_many_are_left() {
    let (stall, _a) = raw_upstream(Raw::Stall).await;
    let (stall2, _b) = raw_upstream(Raw::Stall).await;
    let proxy = Proxy::start(&format!(
        "[server]\nrequest_timeout = \"700ms\"\n[clusters.default]\nnodes = [{stall:?}, {stall2:?}]\n\
         timeout = \"300ms\"\nretry_backoff = \"5ms\"\nmax_retries = 10\n"
    ))
    .await;
    let started = Instant::now();
    let message = expect_error(write(&proxy, "m v=1 1").await, 504).await;
    let took = started.elapsed();
    assert_eq!(message, "request timed out");
    // Eleven tries of 300 ms would take 3.3 s; the request's deadline comes first.
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn transient_503_is_retried_on_the_same_node_when_it_is_the_only_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let node = Upstream::start(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::status(503, "{\"error\":\"busy\"}"),
        _ => Reply::ok(),
    })
    .await;
    let proxy = proxy(&[node.url()], "").await;
    assert_eq!(write(&proxy, "m v=1 1").await.status(), 204);
    assert_eq!(writes(&node), 2);
}

#[tokio::test]
async fn overloaded_500s_are_retried_and_permanent_errors_are_not() {
    let cases: [(&str, &str, u16, usize); 4] = [
        ("{\"error\":\"timeout\"}", "", 204, 2),
        (
            "{\"error\":\"engine: cache-max-memory-size exceeded: (1/1)\"}",
            "",
            204,
            2,
        ),
        (
            "{\"error\":\"retention policy not found: x\"}",
            "retention policy not found: x",
            500,
            1,
        ),
        (
            "{\"error\":\"partial write: field type conflict dropped=1\"}",
            "partial write: field type conflict dropped=1",
            400,
            1,
        ),
    ];
    for (first_answer, message, status, expected_requests) in cases {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let first = first_answer.to_string();
        let answer_status = if first_answer.contains("partial") {
            400
        } else {
            500
        };
        let node = Upstream::start(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::status(answer_status, &first),
            _ => Reply::ok(),
        })
        .await;
        let proxy = proxy(&[node.url()], "").await;
        let response = write(&proxy, "m v=1 1").await;
        if status == 204 {
            assert_eq!(response.status(), 204, "{first_answer}");
        } else {
            assert_eq!(expect_error(response, status).await, message);
        }
        assert_eq!(writes(&node), expected_requests, "{first_answer}");
    }
}

#[tokio::test]
async fn exhausted_retries_answer_503_with_retry_after() {
    let (a, b) = (
        Upstream::start(|_| Reply::status(503, "")).await,
        Upstream::start(|_| Reply::status(502, "")).await,
    );
    let proxy = proxy(&[a.url(), b.url()], "max_retries = 3").await;
    let response = write(&proxy, "m v=1 1").await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        expect_error(response, 503).await,
        "no node of cluster \"default\" could take the write"
    );
    // Four tries, alternating: never the same node twice while another is left untried.
    assert_eq!(writes(&a) + writes(&b), 4);
    assert!(writes(&a) >= 1 && writes(&b) >= 1);
}

#[tokio::test]
async fn retry_budget_bounds_upstream_requests_when_every_node_fails() {
    let node = Upstream::start(|_| Reply::status(503, "")).await;
    let proxy = proxy(
        &[node.url()],
        "max_retries = 2\nretry_backoff = \"1ms\"\nhealth_check_interval = \"1h\"",
    )
    .await;
    let requests = 300;
    for _ in 0..requests {
        assert_eq!(write(&proxy, "m v=1 1").await.status(), 503);
    }
    let sent = writes(&node);
    // Without a budget: 3 tries each = 900. With it: the requests, plus 20 % of them, plus
    // the reserve of 3 a second over the 10 s window.
    assert!(sent > requests, "some retries happen: {sent}");
    assert!(
        sent <= requests + requests / 5 + 30 + 5,
        "retries stay within the budget: {sent}"
    );
}

#[tokio::test]
async fn node_failing_health_checks_gets_no_writes_until_it_recovers() {
    let pings_fail = Arc::new(AtomicBool::new(true));
    let flag = pings_fail.clone();
    let flaky = Upstream::start(move |r| {
        if r.uri.starts_with("/ping") && flag.load(Ordering::SeqCst) {
            Reply::status(500, "")
        } else {
            Reply::ok()
        }
    })
    .await;
    let steady = Upstream::start(|_| Reply::ok()).await;
    let proxy = proxy(
        &[flaky.url(), steady.url()],
        "health_check_interval = \"50ms\"",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..20 {
        assert_eq!(write(&proxy, "m v=1 1").await.status(), 204);
    }
    assert_eq!(
        writes(&flaky),
        0,
        "an unhealthy node gets no writes while a healthy one is left"
    );
    assert_eq!(
        client()
            .get(proxy.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    pings_fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..40 {
        assert_eq!(write(&proxy, "m v=1 1").await.status(), 204);
    }
    assert!(
        writes(&flaky) > 0,
        "after two good checks it gets writes again"
    );
}

#[tokio::test]
async fn cluster_without_healthy_node_is_not_ready_but_still_tried() {
    let node = Upstream::start(|r| {
        if r.uri.starts_with("/ping") {
            Reply::status(503, "")
        } else {
            Reply::ok()
        }
    })
    .await;
    let proxy = proxy(&[node.url()], "health_check_interval = \"50ms\"").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ready = client().get(proxy.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        ready["clusters_without_healthy_node"],
        serde_json::json!(["default"])
    );
    let health: serde_json::Value = client()
        .get(proxy.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "fail");
    assert_eq!(
        health["checks"][0],
        serde_json::json!({"name": "cluster default", "status": "fail"})
    );
    // Fail open: the write is still tried, and this node takes it.
    assert_eq!(write(&proxy, "m v=1 1").await.status(), 204);
    assert_eq!(writes(&node), 1);
}

#[tokio::test]
async fn mirrors_get_every_write_without_delaying_or_failing_the_client() {
    let primary = Upstream::start(|_| Reply::ok()).await;
    let backup = Upstream::start(|_| Reply::ok()).await;
    let broken = Upstream::start(|_| Reply::status(503, "").after(Duration::from_secs(1))).await;
    let proxy = Proxy::start(&format!(
        "[clusters.default]\nnodes = [\"{}\"]\n[clusters.backup]\nnodes = [\"{}\"]\n\
         [clusters.broken]\nnodes = [\"{}\"]\nmax_retries = 1\nretry_backoff = \"1ms\"\n\
         [[routes]]\ndatabase = \"*\"\ncluster = \"default\"\nmirror = [\"backup\", \"broken\"]\n",
        primary.url(),
        backup.url(),
        broken.url()
    ))
    .await;
    let started = Instant::now();
    assert_eq!(write(&proxy, "m v=1 1").await.status(), 204);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the broken mirror does not delay the client"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(writes(&primary), 1);
    assert_eq!(writes(&backup), 1);
    assert_eq!(
        writes(&broken),
        2,
        "the mirror retries within its own policy"
    );
    assert_eq!(backup.forwarded()[0].body, primary.forwarded()[0].body);
    let samples = support::scrape(&proxy.url("/metrics")).await;
    let failures = "influx_write_proxy_mirror_failures_total";
    assert_eq!(
        metric_value(&samples, failures, &[("cluster", "broken")]),
        1.0
    );
    assert_eq!(
        metric_value(&samples, failures, &[("cluster", "backup")]),
        0.0
    );
}

#[tokio::test]
async fn killing_an_influxd_node_under_load_loses_no_acknowledged_write() {
    let mut nodes = [OwnInfluxd::start(), OwnInfluxd::start()];
    for node in &nodes {
        node.query(None, "CREATE DATABASE load");
    }
    let urls: Vec<String> = nodes.iter().map(OwnInfluxd::url).collect();
    let proxy = proxy(
        &urls,
        "timeout = \"2s\"\nmax_retries = 3\nhealth_check_interval = \"100ms\"",
    )
    .await;
    let url = proxy.url("/write?db=load");

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..4i64 {
        let (url, stop) = (url.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut acknowledged, mut failed) = (vec![], 0);
            let mut batch = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let first = 1_700_000_000_000_000_000 + w * 1_000_000_000 + batch * 100;
                let body: String = (0..20)
                    .map(|i| format!("load,w={w} v={i} {}\n", first + i))
                    .collect();
                match client()
                    .post(&url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                {
                    Ok(204) => acknowledged.extend((0..20).map(|i| first + i)),
                    _ => failed += 1,
                }
                batch += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acknowledged, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nodes[0].kill();
    let killed = Instant::now();
    // The dead node's port now resets every connection, and tells us which requests came.
    let attempts = Arc::new(std::sync::Mutex::new(Vec::<(Duration, String)>::new()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", nodes[0].port()))
        .await
        .unwrap();
    let seen = attempts.clone();
    let dead = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = [0u8; 32];
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut head)
                .await
                .unwrap_or(0);
            let line = String::from_utf8_lossy(&head[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().push((killed.elapsed(), line));
        }
    });
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = BTreeSet::new();
    let mut failed = 0;
    for writer in writers {
        let (points, failures) = writer.await.unwrap();
        acknowledged.extend(points);
        failed += failures;
    }
    assert_eq!(failed, 0, "retries hide the dead node from writers");
    assert!(
        acknowledged.len() > 1000,
        "the load ran: {}",
        acknowledged.len()
    );
    dead.abort();
    let _ = dead.await;
    let attempts = attempts.lock().unwrap().clone();
    let writes_to_dead: Vec<Duration> = attempts
        .iter()
        .filter(|(_, line)| line.starts_with("POST /write"))
        .map(|(t, _)| *t)
        .collect();
    let pings = attempts
        .iter()
        .filter(|(_, line)| line.starts_with("GET /ping"))
        .count();
    eprintln!(
        "dead node: {} write attempts, last {:?} after the kill; {pings} health checks; {} points acknowledged",
        writes_to_dead.len(),
        writes_to_dead.last(),
        acknowledged.len()
    );
    assert!(pings >= 3, "health checks kept probing the dead node");
    assert!(
        writes_to_dead
            .iter()
            .all(|t| *t < Duration::from_millis(800)),
        "after detection no write goes to the dead node: {writes_to_dead:?}"
    );

    // The killed node comes back with what it had fsynced before its 204s.
    nodes[0].restart();
    let mut stored = BTreeSet::new();
    for node in &nodes {
        let answer = node.query(Some("load"), "SELECT v FROM load");
        if let Some(values) = answer["results"][0]["series"][0]["values"].as_array() {
            stored.extend(values.iter().map(|row| row[0].as_i64().unwrap()));
        }
    }
    let missing: Vec<_> = acknowledged.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged points missing, e.g. {missing:?}",
        acknowledged.difference(&stored).count()
    );
}
