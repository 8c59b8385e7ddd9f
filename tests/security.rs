//! Auth mode `proxy` and hostile input (SPEC §4 401/403/413/429, §5): every principal
//! reaches exactly its databases, every rejection has its documented answer with nothing
//! forwarded, and no secret reaches the upstream, an error body or a log line.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use influx_write_proxy::auth::hash_password;
use influx_write_proxy::config::sha256;
use support::{client, expect_error, free_port, raw_exchange, Proxy, Reply, Upstream};

const TELEGRAF_TOKEN: &str = "telegraf-token-canary-4f1e9a";
const CI_TOKEN: &str = "ci-token-canary-77d2c0b1e5";
const ALICE_PASSWORD: &str = "alice-password-canary-93ab";
const JWT_SECRET: &str = "jwt-secret-canary-0123456789abcdef";
const CLUSTER_PASSWORD: &str = "cluster-password-canary-5e6f";

fn hex(digest: [u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A mode-proxy config: a token for `telegraf` (2 requests/s), a token for everything, a
/// user for `app_*` and `metrics/short`, JWTs.
fn config(node: &str, listen: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\n\
         [auth]\nmode = \"proxy\"\n\
         [[auth.tokens]]\nname = \"telegraf\"\ntoken = \"sha256:{}\"\ndatabases = [\"telegraf\"]\n\
         rate_limit = {{ requests_per_second = 2, bytes_per_second = 1000 }}\n\
         [[auth.tokens]]\nname = \"ci\"\ntoken = \"{CI_TOKEN}\"\ndatabases = [\"*\"]\n\
         [[auth.users]]\nusername = \"alice\"\npassword = \"{}\"\ndatabases = [\"app_*\", \"metrics/short\"]\n\
         [auth.jwt]\nshared_secret = \"{JWT_SECRET}\"\n\
         [rate_limit]\nburst_seconds = 2\n\
         [clusters.default]\nnodes = [\"{node}\"]\nusername = \"writer\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        hex(sha256(TELEGRAF_TOKEN.as_bytes())),
        hash_password(ALICE_PASSWORD)
    )
}

async fn setup() -> (Upstream, Proxy) {
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let proxy = Proxy::start(&config(&upstream.url(), "127.0.0.1:0")).await;
    (upstream, proxy)
}

fn jwt(claims: &str, secret: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing = format!(
        "{}.{}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(claims)
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn every_credential_form_reaches_its_databases_and_upstream_sees_only_cluster_credentials() {
    let (upstream, proxy) = setup().await;
    let future = "99999999999";
    let alice_jwt = jwt(
        &format!(r#"{{"username":"alice","exp":{future}}}"#),
        JWT_SECRET,
    );
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "telegraf",
            client()
                .post(proxy.url("/write?db=telegraf"))
                .bearer_auth(TELEGRAF_TOKEN),
        ),
        (
            "telegraf",
            client()
                .post(proxy.url("/write?db=telegraf"))
                .header("Authorization", format!("Token {TELEGRAF_TOKEN}")),
        ),
        (
            "anything",
            client()
                .post(proxy.url("/api/v2/write?bucket=anything"))
                .header("Authorization", format!("Token {CI_TOKEN}")),
        ),
        (
            "app_web",
            client().post(proxy.url(&format!("/write?db=app_web&u=alice&p={ALICE_PASSWORD}"))),
        ),
        (
            "app_web",
            client()
                .post(proxy.url("/write?db=app_web"))
                .basic_auth("alice", Some(ALICE_PASSWORD)),
        ),
        (
            "app_web",
            client()
                .post(proxy.url("/write?db=app_web"))
                .header("Authorization", format!("Token alice:{ALICE_PASSWORD}")),
        ),
        (
            "metrics",
            client()
                .post(proxy.url("/write?db=metrics&rp=short"))
                .basic_auth("alice", Some(ALICE_PASSWORD)),
        ),
        (
            "app_jwt",
            client()
                .post(proxy.url("/write?db=app_jwt"))
                .bearer_auth(&alice_jwt),
        ),
    ];
    for (i, (db, request)) in cases.into_iter().enumerate() {
        let response = request.body(format!("m v={i} {i}")).send().await.unwrap();
        assert_eq!(response.status(), 204, "case {i} ({db})");
    }
    let received = upstream.forwarded();
    assert_eq!(received.len(), 8);
    for got in &received {
        assert_eq!(
            got.headers["authorization"],
            "Basic d3JpdGVyOmNsdXN0ZXItcGFzc3dvcmQtY2FuYXJ5LTVlNmY="
        );
        assert!(
            !got.uri.contains("u=alice") && !got.uri.contains(ALICE_PASSWORD),
            "{}",
            got.uri
        );
    }
}

#[tokio::test]
async fn every_kind_of_credential_failure_gets_the_same_401_and_nothing_is_forwarded() {
    let (upstream, proxy) = setup().await;
    let url = proxy.url("/write?db=telegraf");
    let expired = jwt(r#"{"username":"alice","exp":1}"#, JWT_SECRET);
    let forged = jwt(
        r#"{"username":"alice","exp":99999999999}"#,
        "another-secret-0123456789abcdef-xx",
    );
    let unknown_user_jwt = jwt(r#"{"username":"mallory","exp":99999999999}"#, JWT_SECRET);
    let none_alg = {
        use base64::Engine;
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(r#"{"username":"alice","exp":99999999999}"#)
        )
    };
    let failures: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("missing", client().post(&url)),
        (
            "unknown token",
            client().post(&url).bearer_auth("not-a-token-at-all-123"),
        ),
        (
            "wrong password",
            client().post(&url).basic_auth("alice", Some("wrong")),
        ),
        (
            "unknown user",
            client()
                .post(&url)
                .basic_auth("mallory", Some(ALICE_PASSWORD)),
        ),
        (
            "u without p",
            client().post(proxy.url("/write?db=telegraf&u=alice")),
        ),
        ("expired jwt", client().post(&url).bearer_auth(&expired)),
        ("forged jwt", client().post(&url).bearer_auth(&forged)),
        (
            "jwt for unknown user",
            client().post(&url).bearer_auth(&unknown_user_jwt),
        ),
        ("alg none", client().post(&url).bearer_auth(&none_alg)),
        (
            "malformed header",
            client().post(&url).header("Authorization", "Basic %%%"),
        ),
    ];
    let mut bodies = vec![];
    for (kind, request) in failures {
        let response = request.body("m v=1 1").send().await.unwrap();
        assert_eq!(response.status(), 401, "{kind}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"InfluxDB\"",
            "{kind}"
        );
        assert!(
            response.headers().get("x-influxdb-error").is_none(),
            "{kind}"
        );
        bodies.push(response.text().await.unwrap());
    }
    assert!(
        bodies
            .iter()
            .all(|b| b == "{\"error\":\"authorization failed\"}\n"),
        "{bodies:?}"
    );
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn every_guarded_endpoint_refuses_a_request_without_credentials() {
    // Walks the endpoint table itself: an endpoint added to it as guarded is covered here,
    // and one whose guard is lost (in the table or in the auth layer) fails.
    use influx_write_proxy::http::{Listener, ENDPOINTS};
    let (upstream, proxy) = setup().await;
    let guarded: Vec<_> = ENDPOINTS.iter().filter(|e| e.guarded).collect();
    assert!(guarded.iter().any(|e| e.path == "/write"));
    assert!(guarded.iter().any(|e| e.path == "/api/v2/write"));
    assert!(guarded.iter().any(|e| e.path == "/query"));
    for endpoint in &guarded {
        assert_eq!(endpoint.listener, Listener::Main, "{}", endpoint.path);
        for method in [reqwest::Method::POST, reqwest::Method::GET] {
            let response = client()
                .request(
                    method.clone(),
                    proxy.url(&format!(
                        "{}?db=telegraf&bucket=telegraf&q=SHOW+DATABASES",
                        endpoint.path
                    )),
                )
                .body("m v=1 1")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {}", endpoint.path);
        }
    }
    // The others answer without credentials.
    for endpoint in ENDPOINTS.iter().filter(|e| !e.guarded) {
        let response = client().get(proxy.url(endpoint.path)).send().await.unwrap();
        assert_ne!(response.status(), 401, "{}", endpoint.path);
    }
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn principals_get_403_outside_their_databases_before_the_body_is_read() {
    let (upstream, proxy) = setup().await;
    let cases = [
        (
            proxy.url("/write?db=other"),
            "\"telegraf\" is not authorized to write to database \"other\"",
        ),
        (
            proxy.url("/api/v2/write?bucket=secrets"),
            "\"telegraf\" is not authorized to write to database \"secrets\"",
        ),
    ];
    for (url, message) in cases {
        let response = client()
            .post(url)
            .bearer_auth(TELEGRAF_TOKEN)
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(expect_error(response, 403).await, message);
    }
    // db/rp patterns: alice may write metrics only with rp=short.
    for url in [
        proxy.url("/write?db=metrics"),
        proxy.url("/write?db=metrics&rp=long"),
    ] {
        let response = client()
            .post(url)
            .basic_auth("alice", Some(ALICE_PASSWORD))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    // A 403 does not wait for a body that never comes.
    let head = format!(
        "POST /write?db=other HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TELEGRAF_TOKEN}\r\nContent-Length: 100000\r\n\r\n"
    );
    let answer = raw_exchange(
        proxy.addr,
        &[(head.as_bytes(), Duration::ZERO)],
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(upstream.forwarded().is_empty());

    // CREATE DATABASE is answered only for databases the principal may write (after a pause:
    // this token may send 2 requests a second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let create = |db: &str| {
        client()
            .post(proxy.url("/query"))
            .bearer_auth(TELEGRAF_TOKEN)
            .form(&[("q", format!("CREATE DATABASE {db}"))])
            .send()
    };
    assert_eq!(create("telegraf").await.unwrap().status(), 200);
    assert_eq!(create("other").await.unwrap().status(), 403);
    let anonymous = client()
        .get(proxy.url("/query?q=CREATE+DATABASE+telegraf"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn principal_over_its_rate_gets_429_and_others_do_not() {
    let (upstream, proxy) = setup().await;
    let send = |token: &'static str, body: String| {
        client()
            .post(proxy.url("/write?db=telegraf"))
            .bearer_auth(token)
            .body(body)
            .send()
    };
    // 2 requests a second with a 2-second burst: four pass at once, the fifth waits.
    for _ in 0..4 {
        assert_eq!(
            send(TELEGRAF_TOKEN, "m v=1 1".into())
                .await
                .unwrap()
                .status(),
            204
        );
    }
    let limited = send(TELEGRAF_TOKEN, "m v=1 1".into()).await.unwrap();
    assert_eq!(limited.headers()["retry-after"], "1");
    let message = expect_error(limited, 429).await;
    assert_eq!(
        message,
        "\"telegraf\" is over its rate limit of requests per second; retry in 1 s"
    );
    assert_eq!(
        send(CI_TOKEN, "m v=1 1".into()).await.unwrap().status(),
        204,
        "others are not limited"
    );
    assert_eq!(upstream.forwarded().len(), 5);

    // Bytes: 1000/s with a 2 s burst; one write larger than the burst can never pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let big = format!("m v=1 1\n{}", "#".repeat(2500));
    let response = send(TELEGRAF_TOKEN, big).await.unwrap();
    assert!(expect_error(response, 413)
        .await
        .contains("larger than its burst of 2000 bytes"));
}

#[tokio::test]
async fn repeated_failed_logins_from_one_address_are_throttled() {
    let (upstream, proxy) = setup().await;
    let url = proxy.url("/write?db=app_web");
    for _ in 0..10 {
        let response = client()
            .post(&url)
            .basic_auth("alice", Some("guess"))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let started = Instant::now();
    let response = client()
        .post(&url)
        .basic_auth("alice", Some("guess"))
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "6");
    assert_eq!(
        expect_error(response, 429).await,
        "too many failed logins from this address; retry in 6 s"
    );
    // Even the right password waits now, and no hash is spent on a throttled address.
    let response = client()
        .post(&url)
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(upstream.forwarded().is_empty());
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_never_smuggle_a_request() {
    // Mode none, so only the framing, not authentication, can stop the second request.
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let proxy = Proxy::with_nodes(&[upstream.url()], "").await;
    let smuggled = "POST /write?db=anything HTTP/1.1\r\nHost: x\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nPOST /write?db=smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nm v=1 1\r\n";
    let answer = raw_exchange(
        proxy.addr,
        &[(smuggled.as_bytes(), Duration::ZERO)],
        Duration::from_secs(2),
    )
    .await;
    // RFC 9112 §6.3: Transfer-Encoding wins, and the connection closes after the answer, so
    // the bytes after the chunked body are never read as a request.
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(upstream.forwarded().len(), 1);
    assert!(
        upstream
            .forwarded()
            .iter()
            .all(|r| !r.uri.contains("smuggled")),
        "{:?}",
        upstream.forwarded()
    );
    for got in upstream.forwarded() {
        assert!(
            !String::from_utf8_lossy(&got.body).contains("POST"),
            "a request inside a body was forwarded"
        );
    }
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (upstream, proxy) = setup().await;
    let many: String = (0..150).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let request =
        format!("POST /write?db=a HTTP/1.1\r\nHost: x\r\n{many}Content-Length: 0\r\n\r\n");
    let answer = raw_exchange(
        proxy.addr,
        &[(request.as_bytes(), Duration::ZERO)],
        Duration::from_secs(2),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "{answer}"
    );
    let huge = format!(
        "POST /write?db=a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(400_000)
    );
    let answer = raw_exchange(
        proxy.addr,
        &[(huge.as_bytes(), Duration::ZERO)],
        Duration::from_secs(2),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(upstream.forwarded().is_empty());
}

/// The real binary at trace level, JSON logs: no secret a client or the config holds shows
/// up in any line, whatever happened to the request.
#[tokio::test]
async fn no_secret_reaches_a_log_line_even_at_trace_level() {
    let upstream = Upstream::start(|r| {
        if r.uri.contains("db=telegraf") {
            Reply::ok()
        } else {
            Reply::status(500, "{\"error\":\"write failed\"}")
        }
    })
    .await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&upstream.url(), &format!("127.0.0.1:{port}"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_influx-write-proxy"))
        .args(["--config", path.to_str().unwrap(), "--log-format", "json"])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client().get(format!("{base}/ping")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice_jwt = jwt(r#"{"username":"alice","exp":99999999999}"#, JWT_SECRET);
    let requests = vec![
        client()
            .post(format!("{base}/write?db=telegraf"))
            .bearer_auth(TELEGRAF_TOKEN),
        client()
            .post(format!("{base}/write?db=other"))
            .bearer_auth(TELEGRAF_TOKEN),
        client().post(format!("{base}/write?db=app_x&u=alice&p={ALICE_PASSWORD}")),
        client().post(format!("{base}/write?db=app_x&u=alice&p={ALICE_PASSWORD}x")),
        client()
            .post(format!("{base}/write?db=app_x"))
            .bearer_auth(&alice_jwt),
        client()
            .post(format!("{base}/write?db=app_x"))
            .header("Authorization", format!("Token alice:{ALICE_PASSWORD}")),
        client()
            .post(format!(
                "{base}/write?db=app_x&precision=bad&p={ALICE_PASSWORD}"
            ))
            .bearer_auth(CI_TOKEN),
        client()
            .post(format!(
                "{base}/query?q=CREATE+DATABASE+x&p={ALICE_PASSWORD}"
            ))
            .bearer_auth(CI_TOKEN),
        client()
            .post(format!("{base}/api/v2/write?bucket=telegraf"))
            .header("Authorization", format!("Token {TELEGRAF_TOKEN}")),
    ];
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for request in requests {
        let response = request.body("m v=1 1").send().await.unwrap();
        let body = response.text().await.unwrap();
        for secret in [
            TELEGRAF_TOKEN,
            CI_TOKEN,
            ALICE_PASSWORD,
            JWT_SECRET,
            CLUSTER_PASSWORD,
        ] {
            assert!(!body.contains(secret), "error body leaks a secret: {body}");
        }
    }
    let response = h2
        .post(format!("{base}/write?db=telegraf"))
        .bearer_auth(TELEGRAF_TOKEN)
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // Read the log off the runtime, so the clients' connections can answer the drain.
    let (_, log) = support::exit_and_log(child).await;
    assert!(log.lines().count() > 20, "trace logging ran: {log}");
    let digest = hex(sha256(TELEGRAF_TOKEN.as_bytes()));
    let basic_cluster = "d3JpdGVyOmNsdXN0ZXItcGFzc3dvcmQtY2FuYXJ5LTVlNmY";
    for secret in [
        TELEGRAF_TOKEN,
        CI_TOKEN,
        ALICE_PASSWORD,
        JWT_SECRET,
        CLUSTER_PASSWORD,
        &alice_jwt,
        &digest,
        basic_cluster,
    ] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).take(3).collect();
        assert!(leaks.is_empty(), "secret {secret:?} in the log: {leaks:#?}");
    }
}

/// A client whose connections come from `127.0.0.<n>` (loopback takes any of them), so the
/// login throttle counts it as an address of its own.
fn client_from(n: u32) -> reqwest::Client {
    let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 1, 0, 0)) + n);
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .local_address(std::net::IpAddr::V4(ip))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_from_one_address_cannot_outrun_the_login_throttle() {
    let (upstream, proxy) = setup().await;
    let url = proxy.url("/write?db=app_web");
    let guesser = client_from(1);
    // 100 guesses at once; the right password is the 80th.
    let guesses = (0..100).map(|i| {
        let password = if i == 79 {
            ALICE_PASSWORD.to_string()
        } else {
            format!("guess-{i}")
        };
        let request = guesser
            .post(&url)
            .basic_auth("alice", Some(password))
            .body("m v=1 1");
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| matches!(s, 204 | 401)).count();
    assert!(
        checked <= 10,
        "at most the allowance of 10 credentials is looked at, got {checked}: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 204 | 401 | 429)),
        "{statuses:?}"
    );
    assert_eq!(
        upstream.forwarded().len(),
        statuses.iter().filter(|&&s| s == 204).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_users_from_one_address_does_not_hold_up_another_login() {
    let (_upstream, proxy) = setup().await;
    let url = proxy.url("/write?db=app_web");
    // What one login costs on this machine right now: the slowest of three, each one hash,
    // from an address of its own with nothing else under way.
    let mut alone = Duration::ZERO;
    for n in 4..7 {
        let started = Instant::now();
        let response = client_from(n)
            .post(&url)
            .basic_auth(format!("stranger-{n}"), Some("x"))
            .body("m v=1 1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        alone = alone.max(started.elapsed());
    }
    let flooder = client_from(2);
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let request = flooder
                .post(&url)
                .basic_auth(format!("nobody-{i}"), Some("x"))
                .body("m v=1 1");
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let response = client_from(3)
        .post(&url)
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 204);
    let mut hashed = 0;
    for request in flood {
        if request.await.unwrap().unwrap() == 401 {
            hashed += 1;
        }
    }
    assert!(hashed <= 10, "{hashed} hashes spent on one address's flood");
    // Queued behind the flood's hashes it would wait for ~150 of them (300 at two at a time),
    // some 75 times a login alone; with the flood held to its own two, it waits for at most
    // one hash before its own (1.5-2 times a login alone, here). The bound scales with the
    // machine's speed and leaves room for the other tests of this file, which hash at the
    // same time (in CI, once, 1.09 s against a 1 s bound with a login alone at 94 ms).
    let bound = Duration::from_secs(2).max(alone * 15);
    assert!(
        waited < bound,
        "a first login from elsewhere waited {waited:?} behind the flood \
         (one login alone: {alone:?}, bound {bound:?})"
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_takes_as_long_for_an_unknown_user_as_for_argon2_and_plain_password_users() {
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let proxy = Proxy::start(&format!(
        "[auth]\nmode = \"proxy\"\n\
         [[auth.users]]\nusername = \"alice\"\npassword = \"{}\"\ndatabases = [\"*\"]\n\
         [[auth.users]]\nusername = \"bob\"\npassword = \"bob-plain-password\"\ndatabases = [\"*\"]\n\
         [clusters.default]\nnodes = [\"{}\"]\n",
        hash_password(ALICE_PASSWORD),
        upstream.url()
    ))
    .await;
    let url = proxy.url("/write?db=d");
    let users = ["alice", "bob", "mallory"];
    let mut samples = vec![vec![]; users.len()];
    // Interleaved, each request from an address of its own (no throttle, no cache).
    for round in 0..21 {
        for (k, user) in users.iter().enumerate() {
            let client = client_from(100 + (round * users.len() + k) as u32);
            let started = Instant::now();
            let response = client
                .post(&url)
                .basic_auth(user, Some("wrong-password"))
                .body("m v=1 1")
                .send()
                .await
                .unwrap();
            samples[k].push(started.elapsed());
            assert_eq!(response.status(), 401, "{user}");
        }
    }
    let medians: Vec<Duration> = samples.into_iter().map(median).collect();
    let unknown = medians[2];
    for (user, m) in users.iter().zip(&medians) {
        let ratio = m.as_secs_f64() / unknown.as_secs_f64();
        assert!(
            (0.5..2.0).contains(&ratio),
            "{user}: median {m:?} against {unknown:?} for an unknown user (medians {medians:?})"
        );
    }
    assert!(upstream.forwarded().is_empty());
}

/// The status of a write to `url` with a JWT of `claims` signed with the configured secret.
async fn write_with_jwt(url: &str, claims: &str) -> u16 {
    let response = client_from(200)
        .post(url)
        .bearer_auth(jwt(claims, JWT_SECRET))
        .body("m v=1 1")
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn jwts_not_yet_valid_or_issued_in_the_future_are_refused() {
    let (upstream, proxy) = setup().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = proxy.url("/write?db=app_web");
    let exp = now + 3600;
    let claims =
        |claim: &str, at: u64| format!(r#"{{"username":"alice","exp":{exp},"{claim}":{at}}}"#);
    let cases = [
        (claims("nbf", now - 5), 204),
        (claims("iat", now - 5), 204),
        (claims("nbf", now + 600), 401),
        (claims("iat", now + 600), 401),
    ];
    for (claims, status) in &cases {
        assert_eq!(write_with_jwt(&url, claims).await, *status, "{claims}");
    }
    assert_eq!(upstream.forwarded().len(), 2);

    // A leeway allows that much clock skew, and no more.
    let upstream = Upstream::start(|_| Reply::ok()).await;
    let toml = config(&upstream.url(), "127.0.0.1:0")
        .replace("[auth.jwt]\n", "[auth.jwt]\nleeway = \"30s\"\n");
    let proxy = Proxy::start(&toml).await;
    let url = proxy.url("/write?db=app_web");
    for (ahead, status) in [(20, 204), (60, 401)] {
        let status_seen = write_with_jwt(&url, &claims("iat", now + ahead)).await;
        assert_eq!(status_seen, status, "issued {ahead} s ahead");
    }
}
