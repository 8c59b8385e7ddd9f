//! The HTTP contract of SPEC §3–§4 against recording upstreams and faulty peers on loopback:
//! what goes upstream, what comes back, and every rejection with nothing forwarded.

mod support;

use std::time::Duration;

use support::{
    client, expect_error, gzip, raw_exchange, raw_upstream, refused_url, Proxy, Raw, Reply,
    Upstream,
};

async fn ok_upstream() -> Upstream {
    Upstream::start(|_| Reply::status(200, "")).await
}

#[tokio::test]
async fn success_is_an_empty_204_and_upstream_gets_only_known_parameters() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::start(&format!(
        "[clusters.default]\nnodes = [\"{}\"]\nusername = \"writer\"\npassword = \"cluster-pw\"\n",
        upstream.url()
    ))
    .await;
    let response = client()
        .post(proxy.url(
            "/write?db=tel&rp=week&precision=ms&consistency=quorum&foo=bar&u=client&p=client-pw",
        ))
        .header("Authorization", "Bearer client-token")
        .header("Connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("X-Request-Id", "req-42")
        .body("m v=1 1700000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(response.headers()["request-id"], "req-42");
    assert_eq!(response.headers()["x-influxdb-version"], "1.8.10-fake");
    assert!(response.text().await.unwrap().is_empty());

    let received = upstream.forwarded();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.method, "POST");
    assert_eq!(
        got.uri,
        "/write?db=tel&rp=week&precision=ms&consistency=quorum"
    );
    assert_eq!(got.headers["x-request-id"], "req-42");
    // The cluster's credentials, never the client's.
    assert_eq!(
        got.headers["authorization"],
        "Basic d3JpdGVyOmNsdXN0ZXItcHc="
    );
    assert!(got.headers.get("x-hop").is_none());
    assert_eq!(&got.body[..], b"m v=1 1700000000000");
}

#[tokio::test]
async fn v2_writes_become_v1_writes() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let response = client()
        .post(proxy.url("/api/v2/write?org=acme&orgID=1&bucket=metrics%2Fshort&precision=us"))
        .header("Authorization", "Token some-v2-token")
        .body("m v=1 1700000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let got = &upstream.forwarded()[0];
    assert_eq!(got.uri, "/write?db=metrics&rp=short&precision=u");
    assert!(
        got.headers.get("authorization").is_none(),
        "mode none forwards no credentials"
    );
}

#[tokio::test]
async fn bad_parameters_are_rejected_before_anything_is_forwarded() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let cases = [
        ("/write", "database is required"),
        ("/write?db=", "database is required"),
        (
            "/write?db=a&precision=us",
            "invalid precision \"us\" (use n, u, ms, s, m or h)",
        ),
        (
            "/write?db=a&consistency=some",
            "invalid consistency level \"some\"",
        ),
        (
            "/write?db=%ff%fe",
            "query parameter \"db\" is not valid UTF-8",
        ),
        ("/api/v2/write?org=x", "bucket is required"),
        (
            "/api/v2/write?bucket=%2Fautogen",
            "bucket \"/autogen\" has an empty database",
        ),
        (
            "/api/v2/write?bucket=a&precision=n",
            "invalid precision \"n\" (use ns, us, ms or s)",
        ),
    ];
    for (path, message) in cases {
        let response = client()
            .post(proxy.url(path))
            .body("m v=1")
            .send()
            .await
            .unwrap();
        assert_eq!(expect_error(response, 400).await, message, "{path}");
    }
    // The 2.x shape carries code and message too.
    let response = client()
        .post(proxy.url("/api/v2/write"))
        .body("m v=1")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"code": "invalid", "message": "bucket is required", "error": "bucket is required"})
    );
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn unknown_paths_and_methods_get_404_and_405() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    for path in ["/nope", "/write/", "/api/v2/write/x"] {
        let response = client()
            .post(proxy.url(path))
            .body("m v=1")
            .send()
            .await
            .unwrap();
        assert_eq!(expect_error(response, 404).await, "not found", "{path}");
    }
    // Paths a client library would normalise, sent as they are.
    for path in [
        "//write?db=a",
        "/write/../write?db=a",
        "/%77rite?db=a",
        "/WRITE?db=a",
    ] {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nm v=1");
        let answer = raw_exchange(
            proxy.addr,
            &[(request.as_bytes(), Duration::ZERO)],
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }
    let response = client().get(proxy.url("/write?db=a")).send().await.unwrap();
    assert_eq!(expect_error(response, 405).await, "method not allowed");
    let response = client().delete(proxy.url("/ping")).send().await.unwrap();
    assert_eq!(expect_error(response, 405).await, "method not allowed");
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn oversized_bodies_get_413_by_header_while_streaming_and_after_gunzip() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(
        &[upstream.url()],
        "[server]\nmax_body_bytes = 1000\nmax_decoded_body_bytes = 5000\n",
    )
    .await;
    let limit_message = "request body is too large: the limit is 1000 bytes";

    let response = client()
        .post(proxy.url("/write?db=a"))
        .body("x".repeat(1001))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(expect_error(response, 413).await, limit_message);

    // Chunked: no Content-Length to judge, so the count while reading decides.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'x'; 100])).collect();
    let response = client()
        .post(proxy.url("/write?db=a"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(response, 413).await, limit_message);

    // A small gzip body that inflates past the decoded limit.
    let bomb = gzip(&vec![b'm'; 6000]);
    assert!(bomb.len() < 1000);
    let response = client()
        .post(proxy.url("/write?db=a"))
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_error(response, 413).await,
        "decoded request body is too large: the limit is 5000 bytes after decompression"
    );

    let response = client()
        .post(proxy.url("/write?db=a"))
        .header("Content-Encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert!(expect_error(response, 400)
        .await
        .starts_with("unable to decode gzip body"));
    let response = client()
        .post(proxy.url("/write?db=a"))
        .header("Content-Encoding", "br")
        .body("m v=1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_error(response, 400).await,
        "unsupported Content-Encoding \"br\" (use gzip or identity)"
    );
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn stalled_body_gets_408_and_nothing_is_forwarded() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(
        &[upstream.url()],
        "[server]\nbody_read_timeout = \"300ms\"\n",
    )
    .await;
    let head = b"POST /write?db=a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nm v=1";
    let answer = raw_exchange(
        proxy.addr,
        &[(head, Duration::ZERO)],
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request body stalled"), "{answer}");
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn gzip_is_forwarded_compressed_unless_the_proxy_changed_the_body() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let timed = gzip(b"m v=1 1\n");
    let response = client()
        .post(proxy.url("/write?db=a"))
        .header("Content-Encoding", "gzip")
        .body(timed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = client()
        .post(proxy.url("/write?db=a&precision=s"))
        .header("Content-Encoding", "gzip")
        .body(gzip(b"m v=2\r\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let received = upstream.forwarded();
    assert_eq!(received[0].headers["content-encoding"], "gzip");
    assert_eq!(received[0].body, timed);
    assert!(received[1].headers.get("content-encoding").is_none());
    let stamped = std::str::from_utf8(&received[1].body).unwrap();
    let (line, ts) = stamped.trim_end_matches('\n').rsplit_once(' ').unwrap();
    assert_eq!(line, "m v=2");
    let now_s = support::now_ns() / 1_000_000_000;
    assert!((now_s - ts.parse::<i64>().unwrap()).abs() <= 5, "{stamped}");
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504() {
    let (garbage, _g) = raw_upstream(Raw::Garbage).await;
    let (stall, _s) = raw_upstream(Raw::Stall).await;
    let refused = refused_url().await;
    let cases = [
        (garbage, 502, "answered with something that is not HTTP"),
        (refused, 503, "could take the write"),
        (stall, 504, "did not answer in time"),
    ];
    for (node, status, fragment) in cases {
        let proxy = Proxy::start(&format!(
            "[clusters.default]\nnodes = [\"{node}\"]\ntimeout = \"300ms\"\n"
        ))
        .await;
        let response = client()
            .post(proxy.url("/write?db=a"))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        if status == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
        }
        let message = expect_error(response, status).await;
        assert!(message.contains(fragment), "{status}: {message}");
        assert!(
            !message.contains("127.0.0.1"),
            "5xx messages do not show internals: {message}"
        );
    }
}

#[tokio::test]
async fn upstream_errors_keep_status_and_message() {
    let upstream = Upstream::start(|r| {
        if r.uri.contains("db=missing") {
            Reply::status(404, "{\"error\":\"database not found: \\\"missing\\\"\"}")
        } else if r.uri.contains("db=rp") {
            Reply::status(500, "{\"error\":\"retention policy not found: x\"}")
        } else {
            Reply::status(
                400,
                "{\"error\":\"partial write: field type conflict dropped=1\"}",
            )
        }
    })
    .await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let cases = [
        ("missing", 404, "database not found: \"missing\""),
        ("rp", 500, "retention policy not found: x"),
        ("x", 400, "partial write: field type conflict dropped=1"),
    ];
    for (db, status, message) in cases {
        let response = client()
            .post(proxy.url(&format!("/write?db={db}")))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-influxdb-version"], "1.8.10-fake");
        assert_eq!(expect_error(response, status).await, message);
    }
}

#[tokio::test]
async fn routes_send_matching_databases_to_their_cluster() {
    let (default, eu) = (ok_upstream().await, ok_upstream().await);
    let proxy = Proxy::start(&format!(
        "[clusters.default]\nnodes = [\"{}\"]\n[clusters.eu]\nnodes = [\"{}\"]\n\
         [[routes]]\ndatabase = \"metrics_*\"\ncluster = \"eu\"\n",
        default.url(),
        eu.url()
    ))
    .await;
    for db in ["metrics_eu", "logs", "metrics_x"] {
        let response = client()
            .post(proxy.url(&format!("/write?db={db}")))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    let dbs = |u: &Upstream| {
        u.forwarded()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        dbs(&eu),
        vec![
            "/write?db=metrics_eu&precision=n",
            "/write?db=metrics_x&precision=n"
        ]
    );
    assert_eq!(dbs(&default), vec!["/write?db=logs&precision=n"]);
}

#[tokio::test]
async fn nodes_of_a_cluster_share_the_writes() {
    let (a, b) = (ok_upstream().await, ok_upstream().await);
    let proxy = Proxy::with_nodes(&[a.url(), b.url()], "").await;
    for _ in 0..40 {
        let response = client()
            .post(proxy.url("/write?db=a"))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    // Equally idle nodes are picked at random.
    let (to_a, to_b) = (a.forwarded().len(), b.forwarded().len());
    assert_eq!(to_a + to_b, 40);
    assert!(to_a >= 8 && to_b >= 8, "{to_a} / {to_b}");
}

#[tokio::test]
async fn request_ids_are_generated_and_forwarded() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let response = client()
        .post(proxy.url("/write?db=a"))
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(response.headers()["request-id"], id.as_str());
    assert_eq!(upstream.forwarded()[0].headers["x-request-id"], id.as_str());
    // Errors carry ids too, and the proxy's own version when no upstream answered.
    let response = client()
        .get(proxy.url("/nope"))
        .header("Request-Id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc");
    assert!(response.headers()["x-influxdb-version"]
        .to_str()
        .unwrap()
        .starts_with("influx-write-proxy-"));
}

#[tokio::test]
async fn ping_health_and_query_answer_without_upstreams() {
    let proxy = Proxy::with_nodes(&[refused_url().await], "").await;
    let response = client().get(proxy.url("/ping")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.headers()["x-influxdb-version"]
        .to_str()
        .unwrap()
        .starts_with("influx-write-proxy-"));
    let response = client().head(proxy.url("/ping")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let verbose: serde_json::Value = client()
        .get(proxy.url("/ping?verbose=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(verbose["version"]
        .as_str()
        .unwrap()
        .starts_with("influx-write-proxy-"));

    let health: serde_json::Value = client()
        .get(proxy.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["name"], "influx-write-proxy");
    assert_eq!(health["checks"][0]["name"], "cluster default");

    let create = client()
        .get(proxy.url("/query?q=CREATE+DATABASE+telegraf"))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 200);
    let response = client()
        .post(proxy.url("/query"))
        .form(&[("q", "SELECT * FROM cpu")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_error(response, 501).await,
        "influx-write-proxy only routes writes"
    );
}

#[tokio::test]
async fn admin_endpoints_live_on_the_admin_listener_when_it_is_set() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(
        &[upstream.url()],
        "[server]\nadmin_listen = \"127.0.0.1:1\"\n",
    )
    .await;
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(status(client().get(proxy.admin_url("/live"))).await, 200);
    assert_eq!(status(client().get(proxy.admin_url("/ready"))).await, 200);
    assert_eq!(status(client().get(proxy.url("/ready"))).await, 404);
    assert_eq!(
        status(client().post(proxy.admin_url("/write?db=a")).body("m v=1")).await,
        404
    );

    let shared = Proxy::with_nodes(&[upstream.url()], "").await;
    assert_eq!(status(client().get(shared.url("/ready"))).await, 200);
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_can_write() {
    let upstream = ok_upstream().await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(proxy.url("/write?db=a"))
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 204);
    assert_eq!(&upstream.forwarded()[0].body[..], b"m v=1 1");
}

#[tokio::test]
async fn too_many_bytes_in_flight_get_503_with_retry_after_the_wait() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(500))).await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "[server]\nmax_inflight_bytes = 1500\nmax_body_bytes = 1000\nmax_decoded_body_bytes = 1000\ninflight_wait = \"100ms\"\n").await;
    let body = format!("m v=1 1\n{}", "#".repeat(900));
    let first = tokio::spawn(
        client()
            .post(proxy.url("/write?db=a"))
            .body(body.clone())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    let second = client()
        .post(proxy.url("/write?db=a"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it waited first"
    );
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(
        expect_error(second, 503).await,
        "too many bytes in flight, retry later"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 204);
    // Released once the first write finished.
    let third = client()
        .post(proxy.url("/write?db=a"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 204);
}

#[tokio::test]
async fn writers_that_do_not_fit_wait_their_turn_and_all_get_204() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(100))).await;
    // Room for two bodies at a time; ten writers at once, each waiting up to 5 s.
    let proxy = Proxy::with_nodes(&[upstream.url()], "[server]\nmax_inflight_bytes = 2100\nmax_body_bytes = 1000\nmax_decoded_body_bytes = 1000\ninflight_wait = \"5s\"\n").await;
    let writes: Vec<_> = (0..10)
        .map(|i| {
            let body = format!("m,w={i} v=1 1\n{}", "#".repeat(900));
            tokio::spawn(client().post(proxy.url("/write?db=a")).body(body).send())
        })
        .collect();
    for write in writes {
        assert_eq!(write.await.unwrap().unwrap().status(), 204);
    }
    let mut writers: Vec<String> = upstream
        .forwarded()
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    writers.sort();
    writers.dedup();
    assert_eq!(
        writers.len(),
        10,
        "every body went upstream once: {writers:?}"
    );
}

#[tokio::test]
async fn draining_finishes_in_flight_writes_and_turns_ready_503() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(700))).await;
    let proxy = Proxy::with_nodes(
        &[upstream.url()],
        "[server]\nadmin_listen = \"127.0.0.1:1\"\n",
    )
    .await;
    let (url, admin) = (proxy.url("/write?db=a"), proxy.admin_url("/ready"));
    let write = tokio::spawn(client().post(url).body("m v=1 1").send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = tokio::spawn(proxy.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client().get(&admin).send().await.unwrap().status(), 503);
    assert_eq!(write.await.unwrap().unwrap().status(), 204);
    stop.await.unwrap();
    assert_eq!(upstream.forwarded().len(), 1);
}
