//! End to end against a real `influxd` (auth on): every write is verified by querying
//! InfluxDB, never by trusting the proxy's answer.

mod support;

use std::time::Duration;

use support::{
    client, expect_error, gzip, now_ns, raw_exchange, Influxd, Proxy, ADMIN, ADMIN_PASSWORD,
};

/// A proxy in mode `none` that writes to the shared influxd with the admin's credentials.
async fn proxy() -> Proxy {
    let influxd = Influxd::shared();
    Proxy::start(&format!(
        "[clusters.default]\nnodes = [\"{}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\n",
        influxd.url
    ))
    .await
}

async fn post(url: String, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client().post(url).body(body).send().await.unwrap()
}

fn times(rows: &[serde_json::Map<String, serde_json::Value>]) -> Vec<i64> {
    rows.iter().map(|r| r["time"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn v1_writes_land_in_every_precision() {
    let influxd = Influxd::shared();
    let db = influxd.database("v1_precisions");
    let proxy = proxy().await;
    let cases = [
        ("n", 1_700_000_000_123_456_789i64, 1i64),
        ("u", 1_700_000_001_123_456, 1_000),
        ("ms", 1_700_000_002_123, 1_000_000),
        ("s", 1_700_000_003, 1_000_000_000),
        ("m", 28_333_334, 60_000_000_000),
        ("h", 472_223, 3_600_000_000_000),
    ];
    for (precision, ts, factor) in cases {
        let url = proxy.url(&format!("/write?db={db}&precision={precision}"));
        let response = post(url, format!("p,precision={precision} v=1 {ts}\n")).await;
        assert_eq!(response.status(), 204, "precision {precision}");
        assert!(response.text().await.unwrap().is_empty());
        let rows = influxd
            .select(&db, &format!("p WHERE \"precision\" = '{precision}'"))
            .await;
        assert_eq!(times(&rows), vec![ts * factor], "precision {precision}");
    }
}

#[tokio::test]
async fn points_without_timestamp_get_the_receive_time_in_the_request_precision() {
    let influxd = Influxd::shared();
    let db = influxd.database("stamping");
    let proxy = proxy().await;
    let before = now_ns();
    let body = "untimed,k=a v=1\n# a comment\n\ntimed,k=b v=2 1000\nuntimed,k=c v=3\n";
    let response = post(proxy.url(&format!("/write?db={db}&precision=s")), body).await;
    assert_eq!(response.status(), 204);
    let after = now_ns();
    let rows = influxd.select(&db, "untimed").await;
    assert_eq!(rows.len(), 2);
    let stamped = times(&rows);
    // One receive time for the whole request, truncated to seconds.
    assert_eq!(stamped[0], stamped[1]);
    assert_eq!(stamped[0] % 1_000_000_000, 0);
    assert!(
        stamped[0] >= before / 1_000_000_000 * 1_000_000_000 && stamped[0] <= after,
        "{stamped:?}"
    );
    assert_eq!(
        times(&influxd.select(&db, "timed").await),
        vec![1000 * 1_000_000_000]
    );
}

#[tokio::test]
async fn v2_buckets_map_to_database_and_retention_policy() {
    let influxd = Influxd::shared();
    let db = influxd.database("v2_buckets");
    influxd.blocking_query(
        &format!("CREATE RETENTION POLICY short ON {db} DURATION 2h REPLICATION 1"),
        None,
        true,
    );
    let proxy = proxy().await;
    // Recent timestamps, so the 2h policy keeps them.
    let ms = now_ns() / 1_000_000;
    let cases = [
        (
            format!("bucket={db}&org=ignored&precision=ns"),
            format!("m1 v=1 {}", ms * 1_000_000 + 1),
            "autogen",
            ms * 1_000_000 + 1,
        ),
        (
            format!("bucket={db}/&precision=us"),
            format!("m2 v=1 {}", ms * 1000 + 1),
            "autogen",
            (ms * 1000 + 1) * 1000,
        ),
        (
            format!("bucket={db}%2Fshort&precision=ms"),
            format!("m3 v=1 {ms}"),
            "short",
            ms * 1_000_000,
        ),
        (
            format!("bucket={db}/autogen&precision=s"),
            format!("m4 v=1 {}", ms / 1000),
            "autogen",
            ms / 1000 * 1_000_000_000,
        ),
    ];
    for (query, line, rp, expected) in cases {
        let response = post(proxy.url(&format!("/api/v2/write?{query}")), line.clone()).await;
        assert_eq!(response.status(), 204, "{query}");
        let measurement = &line[..2];
        let now = times(
            &influxd
                .select(&db, &format!("\"{rp}\".{measurement}"))
                .await,
        );
        assert_eq!(now, vec![expected], "{query}");
    }
    // Not in the default RP, so the rp really was forwarded.
    assert!(influxd.select(&db, "m3").await.is_empty());
}

#[tokio::test]
async fn rp_and_consistency_are_forwarded() {
    let influxd = Influxd::shared();
    let db = influxd.database("rp_consistency");
    influxd.blocking_query(
        &format!("CREATE RETENTION POLICY week ON {db} DURATION 7d REPLICATION 1"),
        None,
        true,
    );
    let proxy = proxy().await;
    let url = proxy.url(&format!("/write?db={db}&rp=week&consistency=ONE"));
    assert_eq!(post(url, format!("c v=1 {}", now_ns())).await.status(), 204);
    assert_eq!(influxd.select(&db, "week.c").await.len(), 1);
    let response = post(proxy.url(&format!("/write?db={db}&rp=nope")), "c v=1 1").await;
    let message = expect_error(response, 500).await;
    assert!(message.contains("retention policy not found"), "{message}");
}

#[tokio::test]
async fn gzip_and_chunked_bodies_are_written() {
    let influxd = Influxd::shared();
    let db = influxd.database("encodings");
    let proxy = proxy().await;
    // Timestamped gzip goes upstream still compressed; untimed gzip is decoded and stamped.
    for (i, body) in [
        "gz,kind=timed v=1 1700000000000000000\n",
        "gz,kind=untimed v=2\n",
    ]
    .iter()
    .enumerate()
    {
        let response = client()
            .post(proxy.url(&format!("/write?db={db}")))
            .header("Content-Encoding", "gzip")
            .body(gzip(body.as_bytes()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "body {i}");
    }
    assert_eq!(influxd.select(&db, "gz").await.len(), 2);

    // A chunked request, written by hand in three chunks with pauses between them.
    let head = format!("POST /write?db={db}&precision=s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let pause = Duration::from_millis(50);
    let answer = raw_exchange(
        proxy.addr,
        &[
            (head.as_bytes(), pause),
            (b"9\r\nch v=1 1\n\r\n", pause),
            (b"9\r\nch v=2 10\r\n", pause),
            (b"1\r\n\n\r\n0\r\n\r\n", Duration::ZERO),
        ],
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert_eq!(
        times(&influxd.select(&db, "ch").await),
        vec![1_000_000_000, 10_000_000_000]
    );
}

#[tokio::test]
async fn crlf_line_endings_are_normalised() {
    let influxd = Influxd::shared();
    let db = influxd.database("crlf");
    let proxy = proxy().await;
    let response = post(
        proxy.url(&format!("/write?db={db}&precision=s")),
        "w,k=a v=1 1\r\nw,k=b v=2 2\r\nw,k=c v=3\r\n",
    )
    .await;
    assert_eq!(response.status(), 204);
    let rows = influxd.select(&db, "w").await;
    assert_eq!(rows.len(), 3);
    assert_eq!(&times(&rows)[..2], &[1_000_000_000, 2_000_000_000]);
}

#[tokio::test]
async fn strings_with_newlines_quotes_and_escapes_survive() {
    let influxd = Influxd::shared();
    let db = influxd.database("strings");
    let proxy = proxy().await;
    let body = "s,t=a\\ b msg=\"line one\nline \\\"two\\\" 42\"\ns,t=c msg=\"x\\\\\" 5\n";
    let response = post(proxy.url(&format!("/write?db={db}")), body).await;
    assert_eq!(response.status(), 204);
    let rows = influxd.select(&db, "s").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let untimed = rows
        .iter()
        .find(|r| r["t"] == "a b")
        .expect("stamped point");
    assert_eq!(untimed["msg"], "line one\nline \"two\" 42");
    assert!(untimed["time"].as_i64().unwrap() > 1_600_000_000_000_000_000);
    let timed = rows.iter().find(|r| r["t"] == "c").unwrap();
    assert_eq!(
        (
            timed["msg"].as_str().unwrap(),
            timed["time"].as_i64().unwrap()
        ),
        ("x\\", 5)
    );
}

#[tokio::test]
async fn influxdb_errors_are_passed_through() {
    let influxd = Influxd::shared();
    let db = influxd.database("errors");
    let proxy = proxy().await;
    let response = post(proxy.url("/write?db=does_not_exist"), "m v=1 1").await;
    assert_eq!(
        expect_error(response, 404).await,
        "database not found: \"does_not_exist\""
    );

    let response = post(
        proxy.url(&format!("/write?db={db}")),
        "good v=1 1\nbad v=\n",
    )
    .await;
    let message = expect_error(response, 400).await;
    assert!(
        message.starts_with("partial write: unable to parse 'bad v="),
        "{message}"
    );
    assert_eq!(
        influxd.select(&db, "good").await.len(),
        1,
        "the good line of a partial write lands"
    );

    // v2 clients get the same error with code and message.
    let response = post(proxy.url("/api/v2/write?bucket=does_not_exist"), "m v=1 1").await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not found");
    assert_eq!(body["message"], "database not found: \"does_not_exist\"");
}

#[tokio::test]
async fn passthrough_forwards_client_credentials_in_every_form() {
    let influxd = Influxd::shared();
    let db = influxd.database("passthrough");
    let proxy = Proxy::start(&format!(
        "[auth]\nmode = \"passthrough\"\n[clusters.default]\nnodes = [\"{}\"]\n",
        influxd.url
    ))
    .await;
    let url = proxy.url(&format!("/write?db={db}&precision=s"));
    let ok = [
        client().post(format!("{url}&u={ADMIN}&p={ADMIN_PASSWORD}")),
        client().post(&url).basic_auth(ADMIN, Some(ADMIN_PASSWORD)),
        client()
            .post(&url)
            .header("Authorization", format!("Token {ADMIN}:{ADMIN_PASSWORD}")),
    ];
    for (i, request) in ok.into_iter().enumerate() {
        let response = request.body(format!("pt v={i} {i}")).send().await.unwrap();
        assert_eq!(response.status(), 204, "form {i}");
    }
    assert_eq!(influxd.select(&db, "pt").await.len(), 3);

    let response = client()
        .post(&url)
        .basic_auth(ADMIN, Some("wrong"))
        .body("pt v=9 9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client().post(&url).body("pt v=9 9").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(influxd.select(&db, "pt").await.len(), 3);
}

#[tokio::test]
async fn telegraf_startup_sequence_works() {
    let influxd = Influxd::shared();
    let db = influxd.database("telegraf_like");
    let proxy = proxy().await;
    // Telegraf pings, creates its database, then writes gzip batches with precision.
    let ping = client().get(proxy.url("/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 204);
    let create = client()
        .post(proxy.url("/query"))
        .form(&[("q", format!("CREATE DATABASE \"{db}\""))])
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 200);
    assert_eq!(
        create.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"results": [{"statement_id": 0}]})
    );
    let batch: String = (0..1000)
        .map(|i| format!("cpu,host=h{} usage={i}.5 {}\n", i % 7, 1_700_000_000 + i))
        .collect();
    let response = client()
        .post(proxy.url(&format!("/write?db={db}&precision=s&consistency=any")))
        .header("Content-Encoding", "gzip")
        .header("User-Agent", "Telegraf/1.30")
        .body(gzip(batch.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(influxd.select(&db, "cpu").await.len(), 1000);
}
