//! Real servers on loopback for the integration tests: the proxy itself (in-process, on
//! port 0), a real `influxd` (Debian's `influxdb` package, one per test binary, auth on),
//! recording hyper upstreams that can be told what to answer, and raw TCP peers for what
//! no HTTP server does on purpose (garbage, stalls).
#![allow(dead_code)]

pub mod pki;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use influx_write_proxy::{Bound, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// === the proxy ===

/// The proxy running in this process on 127.0.0.1 ports the OS picked.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy from a `proxy.toml` text (its `listen` is replaced by port 0).
    pub async fn start(toml: &str) -> Proxy {
        let mut config = Config::parse(toml, &|_| None).expect("test config is valid");
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        if config.server.admin_listen.is_some() {
            config.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        }
        let bound = Bound::bind(config).await.expect("proxy binds");
        let (addr, admin) = (bound.local_addr(), bound.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .expect("proxy serves");
        });
        Proxy {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A proxy with one cluster of the given nodes and extra TOML.
    pub async fn with_nodes(nodes: &[String], extra: &str) -> Proxy {
        let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
        Proxy::start(&format!(
            "{extra}\n[clusters.default]\nnodes = [{}]\ntimeout = \"2s\"\n",
            nodes.join(", ")
        ))
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    /// Starts the drain and waits for it to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Asserts the JSON error shape of SPEC §4 and returns the message.
pub async fn expect_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert!(
        text.ends_with('\n'),
        "error body ends with a newline: {text:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let message = body["error"].as_str().expect("error field").to_string();
    if status != 401 {
        assert_eq!(headers["x-influxdb-error"], message.as_str());
    }
    message
}

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

    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
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

// === a real influxd ===

/// One `influxd` per test binary, with auth on and an admin user; stopped (and its
/// directory removed) by a watchdog when the test process exits.
pub struct Influxd {
    pub url: String,
    pub user: &'static str,
    pub password: &'static str,
}

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-secret-pw";

impl Influxd {
    pub fn shared() -> &'static Influxd {
        static INFLUXD: OnceLock<Influxd> = OnceLock::new();
        INFLUXD.get_or_init(Influxd::launch)
    }

    // The watchdog shell runs for the life of the test process and reaps influxd itself.
    #[allow(clippy::zombie_processes)]
    fn launch() -> Influxd {
        let binary = which("influxd").expect(
            "influxd not found: install Debian's `influxdb` package (apt-get install -y influxdb); .ci/run does",
        );
        let dir = tempfile::Builder::new()
            .prefix("iwp-influxd-")
            .tempdir()
            .unwrap()
            .keep();
        let (http_port, rpc_port) = (free_port(), free_port());
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  auth-enabled = true\n  log-enabled = false\n\
             [logging]\n  level = \"warn\"\n[monitor]\n  store-enabled = false\n\
             [continuous_queries]\n  enabled = false\n[subscriber]\n  enabled = false\n",
            d = dir.display()
        );
        let config_path = dir.join("influxd.conf");
        std::fs::write(&config_path, config).unwrap();
        // The watchdog outlives nothing: when this test process is gone, influxd goes too.
        Command::new("sh")
            .arg("-c")
            .arg(
                "\"$1\" -config \"$2\" >\"$3/influxd.log\" 2>&1 & child=$!; \
                 while kill -0 \"$4\" 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.5; done; \
                 kill -9 $child 2>/dev/null; rm -rf \"$3\"",
            )
            .args(["sh", &binary.display().to_string(), &config_path.display().to_string()])
            .arg(dir.display().to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("start influxd");
        let url = format!("http://127.0.0.1:{http_port}");
        assert!(
            wait_for_ping(&url),
            "influxd did not answer /ping within 30 s; see {}/influxd.log",
            dir.display()
        );
        let influxd = Influxd {
            url,
            user: ADMIN,
            password: ADMIN_PASSWORD,
        };
        // With auth on and no users, the first admin user may be created without credentials.
        influxd.blocking_query(
            &format!("CREATE USER {ADMIN} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES"),
            None,
            false,
        );
        influxd
    }

    /// Runs an InfluxQL statement as the admin and returns the JSON answer.
    pub fn blocking_query(&self, q: &str, db: Option<&str>, auth: bool) -> serde_json::Value {
        influxql(&self.url, auth.then_some((self.user, self.password)), db, q)
    }

    /// A new, empty database named after the test.
    pub fn database(&self, name: &str) -> String {
        self.blocking_query(&format!("CREATE DATABASE \"{name}\""), None, true);
        name.to_string()
    }

    /// `SELECT * FROM <measurement>` as (time ns, row) pairs, rows as JSON objects.
    pub async fn select(
        &self,
        db: &str,
        from: &str,
    ) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let answer = client()
            .get(format!("{}/query", self.url))
            .basic_auth(self.user, Some(self.password))
            .query(&[
                ("db", db),
                ("epoch", "ns"),
                ("q", &format!("SELECT * FROM {from}")),
            ])
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        let series = &answer["results"][0]["series"][0];
        let Some(columns) = series["columns"].as_array() else {
            return vec![];
        };
        series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .zip(row.as_array().unwrap())
                    .map(|(c, v)| (c.as_str().unwrap().to_string(), v.clone()))
                    .collect()
            })
            .collect()
    }
}

fn wait_for_ping(url: &str) -> bool {
    for _ in 0..300 {
        let ok = Command::new("curl")
            .args(["-fs", "-o", "/dev/null", &format!("{url}/ping")])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}

/// Waits for a child started with piped stderr and returns its exit status and log. It runs
/// off the runtime, so the test's own client connections can still answer a drain; the log is
/// read first, so a chatty child cannot block on a full pipe.
pub async fn exit_and_log(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr is piped"), &mut log)
            .unwrap();
        (child.wait().unwrap(), log)
    })
    .await
    .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

// === influxd nodes a test owns ===

/// An `influxd` (auth off) that a test can kill with SIGKILL and start again on the same data
/// and port, as a data node dying and coming back.
pub struct OwnInfluxd {
    dir: tempfile::TempDir,
    http_port: u16,
    child: Option<std::process::Child>,
}

impl OwnInfluxd {
    pub fn start() -> OwnInfluxd {
        let dir = tempfile::Builder::new()
            .prefix("iwp-node-")
            .tempdir()
            .unwrap();
        let (http_port, rpc_port) = (free_port(), free_port());
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  log-enabled = false\n\
             [logging]\n  level = \"warn\"\n[monitor]\n  store-enabled = false\n\
             [continuous_queries]\n  enabled = false\n[subscriber]\n  enabled = false\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("influxd.conf"), config).unwrap();
        let mut node = OwnInfluxd {
            dir,
            http_port,
            child: None,
        };
        node.restart();
        node
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// Starts (again) on the same data directory and port; waits for `/ping`.
    pub fn restart(&mut self) {
        let binary = which("influxd").expect("influxd not found: apt-get install -y influxdb");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("influxd.log"))
            .unwrap();
        let child = Command::new(binary)
            .arg("-config")
            .arg(self.dir.path().join("influxd.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start influxd");
        self.child = Some(child);
        assert!(wait_for_ping(&self.url()), "influxd did not start");
    }

    /// SIGKILL: no shutdown, no flush beyond what influxd already fsynced.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn query(&self, db: Option<&str>, q: &str) -> serde_json::Value {
        influxql(&self.url(), None, db, q)
    }
}

/// Runs an InfluxQL statement with curl (usable outside a runtime) and returns the JSON.
fn influxql(url: &str, user: Option<(&str, &str)>, db: Option<&str>, q: &str) -> serde_json::Value {
    let mut args = vec![
        "-sS".to_string(),
        "-XPOST".into(),
        format!("{url}/query?epoch=ns"),
    ];
    if let Some((user, password)) = user {
        args.extend(["-u".into(), format!("{user}:{password}")]);
    }
    if let Some(db) = db {
        args.extend(["--data-urlencode".into(), format!("db={db}")]);
    }
    args.extend(["--data-urlencode".into(), format!("q={q}")]);
    let output = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl is installed");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "influxd answered {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

impl Drop for OwnInfluxd {
    fn drop(&mut self) {
        self.kill();
    }
}

// === the proxy as its own process ===

/// The proxy binary running from a `proxy.toml` in `dir`, to be SIGKILLed like a crashing
/// process (the in-process `Proxy` cannot die that way). Its log goes to `dir/proxy-<n>.log`.
pub struct ProxyProcess {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl ProxyProcess {
    /// Writes `toml` (which must listen on `port`) to `dir/proxy.toml`, starts the binary and
    /// waits for `/ping`.
    pub fn start(dir: &std::path::Path, port: u16, toml: &str) -> ProxyProcess {
        ProxyProcess::start_with_env(dir, port, toml, &[])
    }

    /// `start`, with extra environment variables for the process.
    pub fn start_with_env(
        dir: &std::path::Path,
        port: u16,
        toml: &str,
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        std::fs::write(dir.join("proxy.toml"), toml).unwrap();
        let n = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("proxy-"))
            })
            .count();
        let log = std::fs::File::create(dir.join(format!("proxy-{n}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_influx-write-proxy"))
            .arg("--config")
            .arg(dir.join("proxy.toml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the proxy binary");
        let proxy = ProxyProcess {
            port,
            child: Some(child),
        };
        assert!(
            wait_for_ping(&proxy.url("")),
            "proxy did not start: see {}",
            dir.display()
        );
        proxy
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// === Prometheus text ===

/// One sample of a scrape: its name, labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format (enough of it for the proxy's own output).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                None => (series, Default::default()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label pair");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include every pair of `labels`.
pub fn metric_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrapes `url` and parses the samples.
pub async fn scrape(url: &str) -> Vec<Sample> {
    let text = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_metrics(&text)
}

/// Polls `check` every 50 ms until it holds; fails the test after 30 s, naming `what`.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
