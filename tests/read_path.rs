//! The read path (SPEC §10) against a real `influxd`: every answer through the proxy is
//! compared with the same request sent to influxd directly; authorization is checked by
//! what influxd holds afterwards; faults (a dead node, a slow or endless answer) come from
//! small real servers.

mod support;

use std::time::Duration;

use support::{
    client, expect_error, free_port, metric_value, refused_url, rss, scrape, Influxd, OwnInfluxd,
    Proxy, ProxyProcess, Reply, Upstream, ADMIN, ADMIN_PASSWORD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READER: &str = "reader-token-0123456789";
const ROOT: &str = "root-token-0123456789abc";
const PY_USER: &str = "pyreader";
const PY_PASSWORD: &str = "pyreader-password-42";

/// A proxy in mode `proxy` with the read path on, in front of the shared influxd: `reader`
/// may read `readable` (and what matches `read_*`), `root` may do anything.
async fn proxy(readable: &str, extra: &str) -> Proxy {
    let influxd = Influxd::shared();
    Proxy::start(&format!(
        "[auth]\nmode = \"proxy\"\n\
         [[auth.tokens]]\nname = \"reader\"\ntoken = \"{READER}\"\nread_databases = [\"{readable}\", \"read_*\"]\n\
         [[auth.tokens]]\nname = \"root\"\ntoken = \"{ROOT}\"\ndatabases = [\"*\"]\nread_databases = [\"*\"]\nadmin = true\n\
         [[auth.users]]\nusername = \"{PY_USER}\"\npassword = \"{PY_PASSWORD}\"\nread_databases = [\"{readable}\"]\n\
         [query]\nenabled = true\n{extra}\n\
         [clusters.default]\nnodes = [\"{}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\n",
        influxd.url
    ))
    .await
}

/// A database with a few points, written straight to influxd.
async fn seeded(name: &str) -> String {
    let influxd = Influxd::shared();
    let db = influxd.database(name);
    let mut body = String::new();
    for i in 0..50 {
        body.push_str(&format!(
            "cpu,host=h{} usage={}.5,idle={}i {}\n",
            i % 3,
            i,
            100 - i,
            1_700_000_000_000_000_000i64 + i * 1_000_000_000
        ));
    }
    let response = client()
        .post(format!("{}/write?db={db}", influxd.url))
        .basic_auth(ADMIN, Some(ADMIN_PASSWORD))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    db
}

/// What a client can tell of an answer: status, the headers that describe the body, body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    content_encoding: Option<String>,
    body: Vec<u8>,
}

async fn answer(response: reqwest::Response) -> Answer {
    let url = response.url().clone();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    Answer {
        status: response.status().as_u16(),
        content_type: header("content-type"),
        content_encoding: header("content-encoding"),
        body: response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("body of {url}: {e:?}"))
            .to_vec(),
    }
}

/// `GET /query` with `params` in the URL, or `POST` with them as a form, to `url`.
fn ask(url: String, post: bool, params: &[(&str, &str)]) -> reqwest::RequestBuilder {
    if post {
        client().post(url).form(params)
    } else {
        client().get(url).query(params)
    }
}

/// `ask`, as the principal of `token`.
fn ask_as(
    url: String,
    token: &str,
    post: bool,
    params: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    ask(url, post, params).header("authorization", format!("Token {token}"))
}

/// The same `GET /query` (or form `POST`) to influxd as the admin and through the proxy
/// with `token`.
async fn both(
    proxy: &Proxy,
    token: &str,
    post: bool,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (Answer, Answer) {
    let influxd = Influxd::shared();
    let send = |mut request: reqwest::RequestBuilder| {
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async { answer(request.send().await.unwrap()).await }
    };
    let direct =
        ask(format!("{}/query", influxd.url), post, params).basic_auth(ADMIN, Some(ADMIN_PASSWORD));
    let direct = send(direct).await;
    let proxied = send(ask_as(proxy.url("/query"), token, post, params)).await;
    (direct, proxied)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = vec![];
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// POST or not, the parameters, the headers.
type Case<'a> = (bool, Vec<(&'a str, &'a str)>, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn answers_are_influxds_byte_for_byte_in_every_format() {
    let db = seeded("read_formats").await;
    let proxy = proxy(&db, "").await;
    let select = "SELECT * FROM cpu WHERE time >= 1700000000000000000 GROUP BY host";
    let cases: Vec<Case<'_>> =
        vec![
            (
                false,
                vec![("q", select), ("db", &db), ("epoch", "ms")],
                vec![],
            ),
            (
                true,
                vec![("q", select), ("db", &db), ("epoch", "s")],
                vec![],
            ),
            (
                false,
                vec![
                    ("q", select),
                    ("db", &db),
                    ("chunked", "true"),
                    ("chunk_size", "7"),
                ],
                vec![],
            ),
            (
                false,
                vec![("q", select), ("db", &db), ("pretty", "true")],
                vec![],
            ),
            (
                false,
                vec![("q", select), ("db", &db)],
                vec![("accept", "application/csv")],
            ),
            (
                false,
                vec![("q", select), ("db", &db)],
                vec![("accept", "application/x-msgpack")],
            ),
            (
                false,
                vec![
                (
                    "q",
                    "SELECT mean(usage) FROM cpu WHERE time >= $t AND time < $u GROUP BY time(10s)",
                ),
                ("db", &db),
                ("params", r#"{"t": 1700000000000000000, "u": 1700000060000000000}"#),
            ],
                vec![],
            ),
            (
                false,
                vec![
                    (
                        "q",
                        "SHOW TAG VALUES FROM cpu WITH KEY = host; SHOW FIELD KEYS",
                    ),
                    ("db", &db),
                ],
                vec![],
            ),
            (
                false,
                vec![("q", "SELECT * FROM nosuch"), ("db", &db)],
                vec![],
            ),
            (false, vec![("q", "SELECT * FROM"), ("db", &db)], vec![]),
            (false, vec![("q", "SELECT * FROM cpu")], vec![]),
        ];
    for (post, params, headers) in &cases {
        let (direct, proxied) = both(&proxy, READER, *post, params, headers).await;
        assert_eq!(proxied, direct, "{params:?} {headers:?}");
    }
    // gzip: the same encoding, the same decoded bytes.
    let params = [("q", select), ("db", db.as_str()), ("chunked", "true")];
    let (direct, proxied) = both(
        &proxy,
        READER,
        false,
        &params,
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(proxied.content_encoding, direct.content_encoding);
    assert_eq!(gunzip(&proxied.body), gunzip(&direct.body));
    // Missing q: influxd's own words.
    let (direct, proxied) = both(&proxy, READER, false, &[("db", &db)], &[]).await;
    assert_eq!(proxied, direct);
}

#[tokio::test]
async fn grafanas_query_shape_and_the_python_client_read_through_the_proxy() {
    let db = seeded("read_clients").await;
    let proxy = proxy(&db, "").await;
    // Grafana's InfluxQL data source: GET, epoch=ms, $timeFilter expanded to ms bounds.
    let grafana = r#"SELECT mean("usage") FROM "cpu" WHERE time >= 1700000000000ms and time <= 1700000060000ms GROUP BY time(10s) fill(null)"#;
    let params = [("q", grafana), ("db", db.as_str()), ("epoch", "ms")];
    let (direct, proxied) = both(&proxy, READER, false, &params, &[]).await;
    assert_eq!(direct.status, 200);
    assert_eq!(proxied, direct);
    let text = String::from_utf8(proxied.body).unwrap();
    assert!(text.contains("1700000010000"), "{text}");

    // The 1.x Python client (Debian's python3-influxdb) asks for MessagePack.
    let influxd_port: u16 = Influxd::shared()
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (port, name) = (proxy.addr.port(), db.clone());
    let via_proxy =
        tokio::task::spawn_blocking(move || python_query(port, PY_USER, PY_PASSWORD, &name));
    let via_proxy = via_proxy.await.unwrap();
    let from_influxd = python_query(influxd_port, ADMIN, ADMIN_PASSWORD, &db);
    assert_eq!(via_proxy.as_array().map(Vec::len), Some(17));
    assert_eq!(via_proxy, from_influxd);
}

/// `SELECT * FROM cpu WHERE host = 'h1'` with the Python client, its points as JSON.
fn python_query(port: u16, user: &str, password: &str, db: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from influxdb import InfluxDBClient
host, port, user, password, db, q = sys.argv[1:7]
c = InfluxDBClient(host=host, port=int(port), username=user, password=password, database=db)
print(json.dumps(list(c.query(q, epoch="ns").get_points())))
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            "127.0.0.1",
            &port.to_string(),
            user,
            password,
            db,
        ])
        .arg("SELECT * FROM cpu WHERE host = 'h1'")
        .output()
        .expect("Debian's python3 runs (apt-get install python3-influxdb)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn reads_need_a_read_grant_on_every_database_they_touch() {
    let db = seeded("read_grants").await;
    let other = seeded("secret_grants").await;
    let proxy = proxy(&db, "").await;
    let get = |q: String| {
        ask_as(
            proxy.url("/query"),
            READER,
            false,
            &[("q", &q), ("db", &db)],
        )
        .send()
    };
    let refused = [
        format!("SELECT * FROM {other}..cpu"),
        format!("SELECT * FROM cpu, \"{other}\".\"autogen\".cpu"),
        format!("SELECT * FROM (SELECT * FROM {other}..cpu)"),
        format!("SHOW MEASUREMENTS ON {other}"),
        format!("SHOW TAG KEYS ON {other} FROM cpu"),
        format!("SELECT * FROM cpu; SELECT * FROM {other}../c.*/"),
    ];
    for q in refused {
        let message = expect_error(get(q.clone()).await.unwrap(), 403).await;
        assert_eq!(
            message,
            format!("\"reader\" is not authorized to read database \"{other}\""),
            "{q}"
        );
    }
    for q in [
        "SELECT * FROM cpu".to_string(),
        format!("SELECT * FROM {db}..cpu"),
        "SELECT * FROM /c.*/".to_string(),
        "SHOW MEASUREMENTS".to_string(),
        format!("SHOW SERIES ON {db}"),
    ] {
        assert_eq!(get(q.clone()).await.unwrap().status(), 200, "{q}");
    }
    // Without a read grant, even on its own default database.
    let params = [("q", "SELECT * FROM cpu"), ("db", other.as_str())];
    let unknown = ask_as(proxy.url("/query"), READER, false, &params)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 403);
    let anonymous = ask(proxy.url("/query"), false, &[("q", "SHOW DATABASES")])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn statements_that_change_anything_need_admin_and_quoting_tricks_run_nothing() {
    let db = seeded("read_admin").await;
    let victim = Influxd::shared().database("read_admin_victim");
    let proxy = proxy(&db, "").await;
    let run = |token: &'static str, q: String| {
        ask_as(proxy.url("/query"), token, true, &[("q", &q), ("db", &db)]).send()
    };
    // Reads whose text holds a DROP: classified as reads, and nothing is dropped.
    for q in [
        r#"SELECT "DROP" FROM cpu"#.to_string(),
        format!("SELECT * FROM cpu WHERE host = 'x; DROP DATABASE {victim}'"),
        format!("SELECT * FROM cpu -- ; DROP DATABASE {victim}"),
        format!("SELECT * /* ; DROP DATABASE {victim} */ FROM cpu"),
        format!("SELECT * FROM /;DROP DATABASE {victim};/"),
    ] {
        assert_eq!(run(READER, q.clone()).await.unwrap().status(), 200, "{q}");
    }
    // What hides a DROP from a naive reader, but not from influxd, is refused whole.
    for (q, kind) in [
        (format!("SELECT * FROM cpu; DROP DATABASE {victim}"), "DROP DATABASE"),
        (format!("SELECT * FROM cpu /x'/; DROP DATABASE {victim}; SELECT * FROM cpu /'/"), "DROP DATABASE"),
        (format!("SELECT * FROM cpu WHERE (/* a / ' */ 1 = 1); DROP DATABASE {victim}; SELECT * FROM cpu WHERE host = 'x' -- '"), "DROP DATABASE"),
        (format!("SELECT usage INTO {victim}..copy FROM cpu"), "SELECT INTO"),
        ("CREATE USER mallory WITH PASSWORD 'pw' WITH ALL PRIVILEGES".to_string(), "CREATE USER"),
        ("DELETE FROM cpu".to_string(), "DELETE"),
        ("SHOW USERS".to_string(), "SHOW USERS"),
    ] {
        let message = expect_error(run(READER, q.clone()).await.unwrap(), 403).await;
        assert_eq!(message, format!("\"reader\" is not authorized to run {kind}"), "{q}");
    }
    let unknown = expect_error(run(READER, "FROB cpu".into()).await.unwrap(), 400).await;
    assert!(
        unknown.starts_with("cannot classify the query"),
        "{unknown}"
    );
    let databases = Influxd::shared()
        .blocking_query("SHOW DATABASES", None, true)
        .to_string();
    assert!(databases.contains(&victim), "{databases}");
    assert!(!databases.contains("copy"));
    let users = Influxd::shared()
        .blocking_query("SHOW USERS", None, true)
        .to_string();
    assert!(!users.contains("mallory"), "{users}");

    // With admin, the same statements run.
    let response = run(ROOT, format!("DROP DATABASE {victim}")).await.unwrap();
    assert_eq!(response.status(), 200);
    let databases = Influxd::shared()
        .blocking_query("SHOW DATABASES", None, true)
        .to_string();
    assert!(!databases.contains(&victim), "{databases}");
}

#[tokio::test]
async fn show_databases_lists_only_what_the_principal_may_read() {
    let db = seeded("read_listed").await;
    let hidden = Influxd::shared().database("hidden_listed");
    let proxy = proxy(&db, "").await;
    let show = |token: &'static str, accept: &'static str, q: &'static str| {
        ask_as(proxy.url("/query"), token, false, &[("q", q)])
            .header("accept", accept)
            .send()
    };
    let json: serde_json::Value = show(READER, "application/json", "SHOW DATABASES")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = json["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_str().unwrap())
        .collect();
    assert!(listed.contains(&db.as_str()), "{listed:?}");
    assert!(
        listed.iter().all(|d| *d == db || d.starts_with("read_")),
        "{listed:?}"
    );
    assert!(!listed.contains(&hidden.as_str()));
    assert_eq!(
        json["results"][0]["series"][0]["columns"],
        serde_json::json!(["name"])
    );
    let csv = show(READER, "application/csv", "SHOW DATABASES")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("name,tags,name\n"), "{csv}");
    assert!(
        csv.contains(&format!("databases,,{db}\n")) && !csv.contains(&hidden),
        "{csv}"
    );
    let packed = show(READER, "application/x-msgpack", "SHOW DATABASES")
        .await
        .unwrap();
    assert_eq!(packed.headers()["content-type"], "application/x-msgpack");
    let bytes = packed.bytes().await.unwrap();
    let decoded = rmpv::decode::read_value(&mut &bytes[..])
        .unwrap()
        .to_string();
    assert!(
        decoded.contains(&db) && !decoded.contains(&hidden),
        "{decoded}"
    );
    // Other statements of the query are untouched; root sees influxd's answer as it is.
    let mixed: serde_json::Value =
        show(READER, "application/json", "SHOW DATABASES; SHOW DATABASES")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(mixed["results"][0]["series"], mixed["results"][1]["series"]);
    // The shared influxd gains databases as other tests run: a pair that straddles one is
    // asked again.
    let mut pairs = Vec::new();
    for _ in 0..5 {
        let (direct, proxied) = both(&proxy, ROOT, false, &[("q", "SHOW DATABASES")], &[]).await;
        let (again, _) = both(&proxy, ROOT, false, &[("q", "SHOW DATABASES")], &[]).await;
        if again == direct {
            assert_eq!(proxied, direct);
            return;
        }
        pairs.push((direct, proxied));
    }
    panic!("the database list never held still over two asks: {pairs:?}");
}

#[tokio::test]
async fn queries_go_to_the_cluster_of_their_databases() {
    let default_db = seeded("read_route_home").await;
    let eu = OwnInfluxd::start();
    eu.query(None, "CREATE DATABASE eu_metrics");
    let written = client()
        .post(format!("{}/write?db=eu_metrics", eu.url()))
        .body("cpu,host=eu usage=7 1700000000000000000\n")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 204);
    let influxd = Influxd::shared();
    let proxy = Proxy::start(&format!(
        "[query]\nenabled = true\n\
         [[routes]]\ndatabase = \"eu_*\"\ncluster = \"eu\"\n\
         [clusters.default]\nnodes = [\"{}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\n\
         [clusters.eu]\nnodes = [\"{}\"]\n",
        influxd.url,
        eu.url()
    ))
    .await;
    let get = |q: &str, db: &str| {
        ask(
            proxy.url("/query"),
            false,
            &[("q", q), ("db", db), ("epoch", "ns")],
        )
        .send()
    };
    let json = async |q: &str, db: &str| -> serde_json::Value {
        get(q, db).await.unwrap().json().await.unwrap()
    };
    let answer = json("SELECT * FROM cpu", "eu_metrics").await;
    assert_eq!(answer["results"][0]["series"][0]["values"][0][1], "eu");
    let answer = json("SELECT * FROM eu_metrics..cpu", &default_db).await;
    assert_eq!(
        answer["results"][0]["series"][0]["values"][0][1], "eu",
        "the named database routes, not db"
    );
    let answer = json("SELECT count(usage) FROM cpu", &default_db).await;
    assert_eq!(answer["results"][0]["series"][0]["values"][0][1], 50);
    let spans = get(
        &format!("SELECT * FROM cpu; SELECT * FROM {default_db}..cpu"),
        "eu_metrics",
    )
    .await
    .unwrap();
    assert_eq!(
        expect_error(spans, 400).await,
        "query spans clusters default and eu"
    );
    // No database named: the default cluster.
    let answer = get("SHOW DATABASES", "")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        answer.contains(&default_db) && !answer.contains("eu_metrics"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_read_tries_another_node_but_a_change_gets_one_try() {
    let db = seeded("read_failover").await;
    let dead = refused_url().await;
    let influxd = Influxd::shared();
    let proxy = Proxy::start(&format!(
        "[query]\nenabled = true\n\
         [clusters.default]\nnodes = [\"{dead}\", \"{}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\nretry_backoff = \"1ms\"\n",
        influxd.url
    ))
    .await;
    for _ in 0..6 {
        let response = ask(
            proxy.url("/query"),
            false,
            &[("q", "SELECT count(usage) FROM cpu"), ("db", db.as_str())],
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200, "a dead node is skipped");
    }
    // Only the dead node: a read is tried 3 times (max_retries = 2), a change once.
    let proxy = Proxy::start(&format!(
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n[query]\nenabled = true\n\
         [clusters.default]\nnodes = [\"{dead}\"]\nretry_backoff = \"1ms\"\n"
    ))
    .await;
    let tries = |samples: &[support::Sample]| {
        let node = dead.trim_start_matches("http://");
        metric_value(
            samples,
            "influx_write_proxy_upstream_requests_total",
            &[("node", node), ("code", "error")],
        )
    };
    let read = ask(proxy.url("/query"), false, &[("q", "SHOW DATABASES")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_error(read, 503).await,
        "no node of cluster \"default\" could take the query"
    );
    let after_read = tries(&scrape(&proxy.admin_url("/metrics")).await);
    assert_eq!(after_read, 3.0);
    let change = ask(proxy.url("/query"), true, &[("q", "DROP DATABASE x")])
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 503);
    let after_change = tries(&scrape(&proxy.admin_url("/metrics")).await);
    assert_eq!(after_change, 4.0, "a change is never retried");
    let samples = scrape(&proxy.admin_url("/metrics")).await;
    assert_eq!(
        metric_value(
            &samples,
            "influx_write_proxy_http_requests_total",
            &[("endpoint", "query"), ("code", "503")]
        ),
        2.0
    );
}

/// A node that answers `/ping`, and answers a query with a chunked 200 whose body is
/// `chunks` chunks of `chunk` bytes, each after `pause`.
async fn streaming_node(chunks: usize, chunk: usize, pause: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = vec![0u8; 16 * 1024];
                loop {
                    let Ok(n) = stream.read(&mut head).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    if head.starts_with(b"GET /ping") {
                        if stream
                            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    let data = vec![b'x'; chunk];
                    for _ in 0..chunks {
                        let mut frame = format!("{chunk:x}\r\n").into_bytes();
                        frame.extend_from_slice(&data);
                        frame.extend_from_slice(b"\r\n");
                        if stream.write_all(&frame).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                    return;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_large_answer_streams_through_in_flat_memory() {
    const CHUNKS: usize = 512;
    const CHUNK: usize = 1024 * 1024;
    let node = streaming_node(CHUNKS, CHUNK, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proxy = ProxyProcess::start(
        dir.path(),
        port,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[query]\nenabled = true\ntimeout = \"120s\"\n[clusters.default]\nnodes = [\"{node}\"]\ntimeout = \"5s\"\n"
        ),
    );
    let pid = proxy.pid();
    let idle = rss(pid);
    let mut response = ask(
        proxy.url("/query"),
        false,
        &[("q", "SELECT * FROM big"), ("db", "big")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let (mut received, mut peak) = (0usize, 0u64);
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
        peak = peak.max(rss(pid));
    }
    assert_eq!(received, CHUNKS * CHUNK);
    assert!(
        peak < idle + 64 * 1024 * 1024,
        "RSS rose from {} KiB to {} KiB while 512 MiB streamed",
        idle / 1024,
        peak / 1024
    );
}

#[tokio::test]
async fn the_query_timeout_answers_504_before_the_first_byte_and_cuts_a_stream_after() {
    let slow = Upstream::start(|_| Reply::ok().after(Duration::from_secs(5))).await;
    let proxy = Proxy::with_nodes(
        &[slow.url()],
        "[query]\nenabled = true\ntimeout = \"300ms\"\n",
    )
    .await;
    let started = std::time::Instant::now();
    let response = ask(proxy.url("/query"), false, &[("q", "SHOW DATABASES")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));

    let node = streaming_node(100, 1000, Duration::from_millis(100)).await;
    let proxy = Proxy::with_nodes(&[node], "[query]\nenabled = true\ntimeout = \"1s\"\n").await;
    let mut response = ask(proxy.url("/query"), false, &[("q", "SHOW DATABASES")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0;
    let cut = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(cut, "the stream ends with an error, not as if complete");
    assert!(received > 0 && received < 100 * 1000, "{received}");
}

#[tokio::test]
async fn modes_none_and_passthrough_forward_every_query() {
    let db = seeded("read_passthrough").await;
    let influxd = Influxd::shared();
    let proxy = Proxy::start(&format!(
        "[auth]\nmode = \"passthrough\"\n[query]\nenabled = true\n[clusters.default]\nnodes = [\"{}\"]\n",
        influxd.url
    ))
    .await;
    let q = [("q", "SELECT count(usage) FROM cpu"), ("db", db.as_str())];
    let as_admin = client()
        .get(proxy.url("/query"))
        .basic_auth(ADMIN, Some(ADMIN_PASSWORD))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(as_admin.status(), 200);
    let unknown = client()
        .get(proxy.url("/query"))
        .query(&[
            ("q", "SELECT count(usage) FROM cpu"),
            ("db", db.as_str()),
            ("u", "nobody"),
            ("p", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401, "influxd's own refusal");
    // Unclassifiable queries reach influxd, which answers them.
    let odd = client()
        .get(proxy.url("/query"))
        .basic_auth(ADMIN, Some(ADMIN_PASSWORD))
        .query(&[("q", "FROB cpu"), ("db", db.as_str())])
        .send()
        .await
        .unwrap();
    let message = expect_error(odd, 400).await;
    assert!(message.starts_with("error parsing query"), "{message}");
}

#[tokio::test]
async fn create_database_keeps_its_answer_without_touching_the_cluster() {
    let proxy = proxy("read_*", "").await;
    let params = [("q", "CREATE DATABASE read_never_created")];
    let response = ask_as(proxy.url("/query"), ROOT, true, &params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "{\"results\":[{\"statement_id\":0}]}\n"
    );
    let databases = Influxd::shared()
        .blocking_query("SHOW DATABASES", None, true)
        .to_string();
    assert!(!databases.contains("read_never_created"));
}

#[tokio::test]
async fn query_text_never_reaches_the_log_at_info() {
    const CANARY: &str = "query-canary-pw-8c1d";
    let db = seeded("read_canary").await;
    let influxd = Influxd::shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proxy = ProxyProcess::start(
        dir.path(),
        port,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[auth]\nmode = \"proxy\"\n\
             [[auth.tokens]]\nname = \"reader\"\ntoken = \"{READER}\"\nread_databases = [\"{db}\"]\n\
             [[auth.tokens]]\nname = \"root\"\ntoken = \"{ROOT}\"\nread_databases = [\"*\"]\nadmin = true\n\
             [query]\nenabled = true\n\
             [clusters.default]\nnodes = [\"{}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\n",
            influxd.url
        ),
    );
    let send = |token: &str, q: String| {
        ask_as(proxy.url("/query"), token, true, &[("q", &q), ("db", &db)]).send()
    };
    let cases = [
        (
            ROOT,
            format!("CREATE USER canary WITH PASSWORD '{CANARY}'"),
            200,
        ),
        (READER, format!("SET PASSWORD FOR canary = '{CANARY}'"), 403),
        (
            READER,
            format!("SELECT * FROM cpu WHERE host = '{CANARY}'"),
            200,
        ),
        (
            READER,
            format!("SELECT * FROM cpu WHERE host = '{CANARY}"),
            400,
        ),
        (
            READER,
            format!("SELECT * FROM cpu WHERE h = '{CANARY}'; DROP DATABASE {db}"),
            403,
        ),
        (
            ROOT,
            format!("SELECT * FROM cpu WHERE host = ;'{CANARY}'"),
            400,
        ),
    ];
    for (token, q, status) in cases {
        let response = send(token, q.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{q}");
    }
    influxd.blocking_query("DROP USER canary", None, true);
    fn query_lines(log: &str) -> Vec<&str> {
        log.lines().filter(|l| l.contains("\"query\"")).collect()
    }
    let log = support::log_once(&dir.path().join("proxy-0.log"), |l| {
        query_lines(l).len() >= 6
    })
    .await;
    let access = query_lines(&log);
    assert_eq!(access.len(), 6, "{log}");
    assert!(
        access.iter().any(|l| l.contains("CREATE USER")),
        "kinds are logged: {log}"
    );
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(CANARY)).collect();
    assert!(leaks.is_empty(), "query text in the log: {leaks:#?}");
}
