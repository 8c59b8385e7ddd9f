//! The operators' kit, checked against the real tools: the alert rules pass their unit tests
//! (`promtool test rules`), and every query of the Grafana dashboard returns data from a real
//! Prometheus (Debian's `prometheus`) that scraped a proxy through a scripted workload, so a
//! misspelt metric, label or function fails here rather than on an operator's screen.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::pki::Ca;
use support::{free_port, refused_url, which, Influxd, ADMIN, ADMIN_PASSWORD};

const APP_TOKEN: &str = "app-token-0123456789abcdef";
const FLOOD_TOKEN: &str = "flood-token-0123456789abcdef";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not found: install Debian's `prometheus` package (scripts/test.sh does)")
    })
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    for args in [
        vec!["check", "rules", "deploy/prometheus/alerts.yaml"],
        vec!["test", "rules", "deploy/prometheus/alerts.test.yaml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(repo(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus of its own, scraping `target` every second; killed when dropped.
struct Prometheus {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: iwp\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    /// The instant vector `expr` evaluates to now (an error's text when it does not parse).
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let answer = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json::<serde_json::Value>()
            .await
            .map_err(|e| e.to_string())?;
        if answer["status"] != "success" {
            return Err(answer["error"].to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the dashboard: panel targets (rows included) and the queries
/// behind its template variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((panel["title"].as_str().unwrap_or("?").into(), expr.into()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(metric, label): the metric must have the label.
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .expect("label_values(metric, label)");
            let (metric, label) = inner.split_once(',').unwrap();
            out.push((
                format!("variable {}", variable["name"]),
                format!("count by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
    }
    out
}

/// Grafana's variables as a test of "all" would set them.
fn as_grafana_would(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$instance", ".*")
        .replace("$cluster", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_scraped_proxy() {
    let influxd = Influxd::shared();
    influxd.database("kit");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("kit CA");
    let leaf = ca.leaf("proxy", 2031);
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key).unwrap();
    let down = refused_url().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nkeepalive_timeout = \"1s\"\n\
         [server.tls]\ncert_file = \"{d}/tls.crt\"\nkey_file = \"{d}/tls.key\"\n\
         [auth]\nmode = \"proxy\"\n\
         [[auth.tokens]]\nname = \"app\"\ntoken = \"{APP_TOKEN}\"\ndatabases = [\"*\"]\n\
         [[auth.tokens]]\nname = \"flood\"\ntoken = \"{FLOOD_TOKEN}\"\ndatabases = [\"*\"]\n\
         rate_limit = {{ requests_per_second = 1 }}\n\
         [rate_limit]\nburst_seconds = 1\n\
         [clusters.default]\nnodes = [\"{influx}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\n\
         [clusters.down]\nnodes = [\"{down}\"]\ntimeout = \"1s\"\nmax_retries = 1\nretry_backoff = \"10ms\"\n\
         health_check_interval = \"1s\"\n\
         [[routes]]\ndatabase = \"down_*\"\ncluster = \"down\"\n\
         [[routes]]\ndatabase = \"kit\"\ncluster = \"default\"\nmirror = [\"down\"]\n\
         [spool]\nenabled = true\ndir = \"{d}/spool\"\nack = \"always\"\n",
        d = dir.path().display(),
        influx = influxd.url,
        listen = free_port(),
        admin = free_port(),
    );
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let config = influx_write_proxy::Config::parse(&toml, &|_| None).unwrap();
    let bound = influx_write_proxy::Bound::bind(config).await.unwrap();
    let (addr, admin) = (bound.local_addr(), bound.admin_addr().unwrap());
    let reloader = bound.reloader(config_path.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        bound
            .serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let prometheus = Prometheus::start(&admin.to_string());

    // A reload that fails and one that succeeds; a rotated certificate.
    std::fs::write(&config_path, "[server\n").unwrap();
    assert!(!tokio::task::spawn_blocking({
        let reloader = reloader.clone();
        move || reloader.reload()
    })
    .await
    .unwrap());
    // The good reload also changes spool.max_bytes, which waits for a restart: the gauge
    // must keep showing the limit the running spool enforces (the default, 1 GiB).
    std::fs::write(&config_path, format!("{toml}max_bytes = \"2MiB\"\n")).unwrap();
    assert!(tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .unwrap());
    let rotated = ca.leaf("proxy", 2032);
    std::fs::write(dir.path().join("tls.crt"), &rotated.cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &rotated.key).unwrap();

    // The workload, for 12 seconds: good writes (mirrored to the dead cluster), writes the
    // spool takes, a bad line, a principal over its rate, and a few without a token.
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());
    let started = std::time::Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(12) {
        round += 1;
        let post = |path: String, token: &str, body: String| {
            client.post(url(&path)).bearer_auth(token).body(body).send()
        };
        let ok = post(
            "/write?db=kit".into(),
            APP_TOKEN,
            format!("m,host=h{} v={round}", round % 3),
        )
        .await
        .unwrap();
        assert_eq!(ok.status(), 204, "{:?}", ok.text().await);
        post("/api/v2/write?bucket=kit".into(), APP_TOKEN, "m v=1".into())
            .await
            .unwrap();
        post("/write?db=down_x".into(), APP_TOKEN, format!("m v={round}"))
            .await
            .unwrap();
        post("/write?db=kit".into(), APP_TOKEN, "bad line".into())
            .await
            .unwrap();
        post("/write?db=kit".into(), FLOOD_TOKEN, "m v=1".into())
            .await
            .unwrap();
        if round <= 3 {
            // A few only: failures from one address soon trip the login throttle.
            client
                .post(url("/write?db=kit"))
                .body("m v=1")
                .send()
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Idle keep-alive connections have been closed by keepalive_timeout by now; let two more
    // scrapes see the last of it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/influx-write-proxy.json")).unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 20, "{} queries found", queries.len());
    let mut failures = vec![];
    for (panel, expr) in &queries {
        match prometheus.query(&as_grafana_would(expr)).await {
            Ok(result) if !result.is_empty() => {}
            Ok(_) => failures.push(format!("{panel}: no data for {expr}")),
            Err(error) => failures.push(format!("{panel}: {error} in {expr}")),
        }
    }
    let limit = prometheus
        .query("influx_write_proxy_spool_bytes_limit")
        .await
        .unwrap();
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(limit[0]["value"][1], "1073741824", "{limit:?}");
    let _ = stop.send(());
    let _ = serving.await;
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries fail:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
}
