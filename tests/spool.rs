//! The durable spool (SPEC §7): a 204 means the points will reach the cluster, across
//! cluster outages, proxy crashes and restarts. Fault-injecting upstreams for ordering,
//! rejection and expiry; a real influxd, verified by query, for the crash tests.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{
    client, free_port, metric_value, wait_until, OwnInfluxd, Proxy, ProxyProcess, Reply, Upstream,
};

/// An upstream that answers 503 to everything until `up` is set, then 204 — except bodies
/// containing `bad`, which get InfluxDB's 400. Bodies it accepted are kept in order.
struct Switchable {
    upstream: Upstream,
    up: Arc<AtomicBool>,
    /// URI and body of each write it accepted.
    delivered: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Switchable {
    async fn start() -> Switchable {
        let up = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(vec![]));
        let (is_up, accepted) = (up.clone(), delivered.clone());
        let upstream = Upstream::start(move |request| {
            if !is_up.load(Ordering::SeqCst) {
                return Reply::status(503, "");
            }
            if !request.uri.starts_with("/write") {
                return Reply::ok();
            }
            if request.body.windows(3).any(|w| w == b"bad") {
                return Reply::status(400, r#"{"error":"unable to parse 'bad': missing fields"}"#);
            }
            accepted
                .lock()
                .unwrap()
                .push((request.uri.clone(), request.body.clone()));
            Reply::ok()
        })
        .await;
        Switchable {
            upstream,
            up,
            delivered,
        }
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// The lines the node accepted, in order (replay may merge writes into one request).
    fn delivered(&self) -> Vec<String> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| {
                String::from_utf8_lossy(b)
                    .split_inclusive('\n')
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many write requests the node accepted.
    fn accepted_requests(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// Each accepted write's query and number of lines.
    fn accepted_shapes(&self) -> Vec<(String, usize)> {
        let delivered = self.delivered.lock().unwrap();
        delivered
            .iter()
            .map(|(uri, body)| {
                let query = uri.split_once('?').map_or("", |(_, q)| q).to_string();
                (query, body.iter().filter(|&&b| b == b'\n').count())
            })
            .collect()
    }
}

fn spool_toml(node: &str, dir: &Path, spool_extra: &str) -> String {
    format!(
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n\
         [spool]\nenabled = true\ndir = \"{}\"\n{spool_extra}\n\
         [clusters.default]\nnodes = [\"{node}\"]\ntimeout = \"2s\"\nmax_retries = 1\n\
         retry_backoff = \"10ms\"\nhealth_check_interval = \"100ms\"\n",
        dir.display()
    )
}

/// A spooling proxy in front of a `Switchable` node (down at first), spooling into a
/// fresh directory.
async fn spooling_proxy(spool_extra: &str) -> (Switchable, tempfile::TempDir, Proxy) {
    let node = Switchable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&spool_toml(&node.upstream.url(), dir.path(), spool_extra)).await;
    (node, dir, proxy)
}

async fn write(proxy_url: &str, query: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = client()
        .post(format!("{proxy_url}/write?{query}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Writes `body(0)`, `body(1)`, … until one is refused with 503 (at most 10). Returns the
/// bodies answered 204 and the refusal's text.
async fn fill_until_refused(
    proxy: &Proxy,
    query: &str,
    body: impl Fn(usize) -> String,
) -> (Vec<String>, Option<String>) {
    let mut acknowledged = vec![];
    for i in 0..10 {
        let (status, text) = write(&proxy.url(""), query, body(i)).await;
        match status {
            204 => acknowledged.push(body(i)),
            503 => return (acknowledged, Some(text)),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    (acknowledged, None)
}

/// The labels of the default cluster's spool series.
const DEFAULT: &[(&str, &str)] = &[("cluster", "default")];

/// `spool_writes_total{cluster="default",result}`.
async fn spool_writes(admin_url: &str, result: &str) -> f64 {
    let labels = [("cluster", "default"), ("result", result)];
    metric(admin_url, "spool_writes_total", &labels).await
}

/// The value of the sample `name` (without the prefix) with exactly these labels.
async fn metric(admin_url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = support::scrape(admin_url).await;
    metric_value(&samples, &format!("influx_write_proxy_{name}"), labels)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    wait_until(what, async || done()).await;
}

fn files_in(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.to_string_lossy().ends_with(suffix));
    files.sort();
    files
}

#[tokio::test]
async fn consistency_any_writes_are_spooled_while_down_and_replayed_in_order() {
    let (node, _dir, proxy) = spooling_proxy("").await;
    let metrics = proxy.admin_url("/metrics");

    let bodies: Vec<String> = (0..20).map(|i| format!("m,i={i} v={i} {i}\n")).collect();
    for body in &bodies {
        let (status, text) = write(&proxy.url(""), "db=d&consistency=any", body.clone()).await;
        assert_eq!(status, 204, "{text}");
    }
    // Without consistency=any (ack = "consistency-any"), the client hears the truth.
    let (status, text) = write(&proxy.url(""), "db=d", "m,i=refused v=0 99\n").await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(metric(&metrics, "spool_entries", DEFAULT).await, 20.0);
    assert_eq!(spool_writes(&metrics, "spooled").await, 20.0);
    assert!(metric(&metrics, "spool_bytes", DEFAULT).await > 20.0 * 16.0);
    // The cluster is down but the spool takes writes: still ready.
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    node.set_up();
    eventually("all 20 replayed", || node.delivered().len() >= 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.delivered(), bodies, "replayed once each, in order");
    assert!(
        node.accepted_requests() < bodies.len(),
        "small spooled writes for the same db are merged on replay"
    );
    assert_eq!(metric(&metrics, "spool_entries", DEFAULT).await, 0.0);
    assert_eq!(metric(&metrics, "spool_bytes", DEFAULT).await, 0.0);
    assert_eq!(spool_writes(&metrics, "replayed").await, 20.0);
    // Replayed writes went with the original query.
    let replayed = node.upstream.forwarded();
    let last = replayed
        .iter()
        .rev()
        .find(|r| r.uri.starts_with("/write"))
        .unwrap();
    assert!(
        last.uri.contains("db=d") && last.uri.contains("consistency=any"),
        "{}",
        last.uri
    );
    proxy.stop().await;
}

#[tokio::test]
async fn replay_merges_consecutive_writes_only_for_the_same_destination() {
    let (node, _dir, proxy) = spooling_proxy("").await;
    // With the node marked down, replay waits for it rather than trying (and reading) early.
    let metrics = proxy.admin_url("/metrics");
    wait_until("the node is marked unhealthy", async || {
        metric(&metrics, "upstream_healthy", &[("cluster", "default")]).await == 0.0
    })
    .await;
    let writes = [
        ("db=a", "a v=1 1"), // no trailing newline: merging must not glue lines together
        ("db=a", "a v=2 2\n"),
        ("db=a&rp=week", "a v=3 3\n"),
        ("db=b", "b v=4 4\n"),
        ("db=b", "b v=5 5\n"),
        ("db=a", "a v=6 6\n"),
    ];
    for (query, body) in writes {
        let (status, text) = write(&proxy.url(""), &format!("{query}&consistency=any"), body).await;
        assert_eq!(status, 204, "{text}");
    }
    node.set_up();
    eventually("all replayed", || node.delivered().len() >= 6).await;
    let lines = [
        "a v=1 1\n",
        "a v=2 2\n",
        "a v=3 3\n",
        "b v=4 4\n",
        "b v=5 5\n",
        "a v=6 6\n",
    ];
    assert_eq!(node.delivered(), lines);
    let shapes = node.accepted_shapes();
    let expected = [
        ("db=a&precision=n&consistency=any", 2),
        ("db=a&rp=week&precision=n&consistency=any", 1),
        ("db=b&precision=n&consistency=any", 2),
        ("db=a&precision=n&consistency=any", 1),
    ];
    let expected: Vec<(String, usize)> =
        expected.iter().map(|(q, n)| (q.to_string(), *n)).collect();
    assert_eq!(shapes, expected);
    proxy.stop().await;
}

#[tokio::test]
async fn ack_always_spools_unavailability_but_never_a_rejection() {
    let node = Switchable::start().await;
    node.set_up();
    let dir = tempfile::tempdir().unwrap();
    let toml = spool_toml(&node.upstream.url(), dir.path(), "ack = \"always\"");
    let proxy = Proxy::start(&toml).await;
    // The cluster judged this write: its answer stands and nothing is spooled.
    let (status, text) = write(&proxy.url(""), "db=d", "bad v=1 1\n").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("unable to parse"), "{text}");
    node.up.store(false, Ordering::SeqCst);
    let (status, text) = write(&proxy.url(""), "db=d", "m v=1 1\n").await;
    assert_eq!(status, 204, "ack = always: {text}");
    let metrics = proxy.admin_url("/metrics");
    assert_eq!(metric(&metrics, "spool_entries", DEFAULT).await, 1.0);
    node.set_up();
    eventually("replayed", || node.delivered() == ["m v=1 1\n"]).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_full_spool_answers_503_and_never_acknowledges_without_durability() {
    let (node, _dir, proxy) = spooling_proxy("max_bytes = 1000").await;
    let body = |i: usize| format!("m,i={i} v=\"{}\" {i}\n", "x".repeat(200));
    let (acknowledged, refusal) = fill_until_refused(&proxy, "db=d&consistency=any", body).await;
    assert!(
        (2..=4).contains(&acknowledged.len()),
        "about 1000 / 280 writes fit: {}",
        acknowledged.len()
    );
    let refusal = refusal.expect("the spool filled up");
    assert!(
        refusal.contains("spool is full (max_bytes = 1000)"),
        "{refusal}"
    );
    let metrics = proxy.admin_url("/metrics");
    assert!(spool_writes(&metrics, "refused").await >= 1.0);
    // Down and unable to spool: not ready.
    eventually_status(&proxy.admin_url("/ready"), 503).await;

    node.set_up();
    eventually("acknowledged writes replayed", || {
        node.delivered() == acknowledged
    })
    .await;
    eventually_status(&proxy.admin_url("/ready"), 200).await;
    proxy.stop().await;
}

async fn eventually_status(url: &str, status: u16) {
    wait_until(&format!("{url} answers {status}"), async || {
        client().get(url).send().await.unwrap().status() == status
    })
    .await;
}

#[tokio::test]
async fn replay_sets_permanent_rejections_aside_and_goes_on() {
    let (node, dir, proxy) = spooling_proxy("").await;
    for body in ["m v=1 1\n", "bad v=2 2\n", "m v=3 3\n"] {
        let (status, text) = write(&proxy.url(""), "db=d&rp=week&consistency=any", body).await;
        assert_eq!(status, 204, "{text}");
    }
    node.set_up();
    eventually("the good writes replayed", || {
        node.delivered() == ["m v=1 1\n", "m v=3 3\n"]
    })
    .await;
    let rejected = dir.path().join("default/rejected");
    let lp = files_in(&rejected, ".lp");
    assert_eq!(lp.len(), 1, "{lp:?}");
    assert_eq!(std::fs::read_to_string(&lp[0]).unwrap(), "bad v=2 2\n");
    let about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lp[0].with_extension("json")).unwrap()).unwrap();
    assert_eq!(about["reason"], "rejected");
    assert_eq!(about["status"], 400);
    assert_eq!(about["error"], "unable to parse 'bad': missing fields");
    assert_eq!(about["db"], "d");
    assert_eq!(about["rp"], "week");
    assert!(about["query"].as_str().unwrap().contains("consistency=any"));
    let metrics = proxy.admin_url("/metrics");
    assert_eq!(spool_writes(&metrics, "rejected").await, 1.0);
    assert_eq!(metric(&metrics, "spool_entries", DEFAULT).await, 0.0);
    proxy.stop().await;
}

#[tokio::test]
async fn entries_past_max_age_move_to_rejected_and_are_counted() {
    let (node, dir, proxy) = spooling_proxy("max_age = \"300ms\"").await;
    let (status, _) = write(&proxy.url(""), "db=d&consistency=any", "old v=1 1\n").await;
    assert_eq!(status, 204);
    let metrics = proxy.admin_url("/metrics");
    let expired = &[("cluster", "default"), ("result", "expired")];
    wait_until("the entry expired", async || {
        metric(&metrics, "spool_writes_total", expired).await >= 1.0
    })
    .await;
    let lp = files_in(&dir.path().join("default/rejected"), ".lp");
    assert_eq!(lp.len(), 1);
    let about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lp[0].with_extension("json")).unwrap()).unwrap();
    assert_eq!(about["reason"], "expired");
    node.set_up();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        node.delivered().is_empty(),
        "an expired write is not replayed"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_torn_last_record_is_reported_kept_and_not_replayed() {
    let node = Switchable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = spool_toml(&node.upstream.url(), dir.path(), "");
    let proxy = Proxy::start(&toml).await;
    let bodies = ["m v=1 1\n", "m v=2 2\n", "m v=3 3\n"];
    for body in bodies {
        let (status, _) = write(&proxy.url(""), "db=d&consistency=any", body).await;
        assert_eq!(status, 204);
    }
    proxy.stop().await;

    // A crash mid-append: the last record lost its last 5 bytes.
    let segments = files_in(&dir.path().join("default"), ".seg");
    assert_eq!(segments.len(), 1, "{segments:?}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0])
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 5).unwrap();
    drop(file);

    node.set_up();
    let proxy = Proxy::start(&toml).await;
    eventually("the intact records replayed", || {
        node.delivered().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.delivered(), bodies[..2], "never the torn one");
    let damaged = files_in(&dir.path().join("default/rejected"), ".bin");
    assert_eq!(damaged.len(), 1, "the torn bytes are kept: {damaged:?}");
    let kept = std::fs::read(&damaged[0]).unwrap();
    assert!(kept.ends_with(b"m v"), "{kept:?}");
    let admin = proxy.admin_url("/metrics");
    assert_eq!(spool_writes(&admin, "torn").await, 1.0);
    assert_eq!(spool_writes(&admin, "damaged").await, 0.0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_flipped_bit_costs_only_its_own_record_and_the_intact_ones_after_it_are_replayed() {
    let node = Switchable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = spool_toml(&node.upstream.url(), dir.path(), "");
    let proxy = Proxy::start(&toml).await;
    let bodies: Vec<String> = (1..=20).map(|i| format!("m v={i} {i}\n")).collect();
    for body in &bodies {
        let (status, _) = write(&proxy.url(""), "db=d&consistency=any", body.clone()).await;
        assert_eq!(status, 204);
    }
    proxy.stop().await;

    // A bad sector: one bit flipped in the body of record 3 and one in record 10.
    let segments = files_in(&dir.path().join("default"), ".seg");
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let starts: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter_map(|(i, w)| (w == b"IWP1").then_some(i))
        .collect();
    assert_eq!(starts.len(), 20);
    for record in [3, 10] {
        // The last byte of the record is its body's final newline.
        bytes[starts[record] - 1] ^= 0x04;
    }
    std::fs::write(&segments[0], &bytes).unwrap();

    node.set_up();
    let proxy = Proxy::start(&toml).await;
    let expected: Vec<String> = bodies
        .iter()
        .enumerate()
        .filter(|(i, _)| ![2, 9].contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    eventually("the 18 intact records replayed", || {
        node.delivered().len() >= expected.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.delivered(),
        expected,
        "in order, all but the two damaged"
    );
    let damaged = files_in(&dir.path().join("default/rejected"), ".bin");
    let names: Vec<String> = damaged
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            format!("damaged-{:020}-{}.bin", 1, starts[2]),
            format!("damaged-{:020}-{}.bin", 1, starts[9]),
        ],
        "each damaged record kept alone, named by its offset"
    );
    assert_eq!(
        std::fs::read(&damaged[0]).unwrap(),
        &bytes[starts[2]..starts[3]]
    );
    let admin = proxy.admin_url("/metrics");
    assert_eq!(spool_writes(&admin, "damaged").await, 2.0);
    assert_eq!(spool_writes(&admin, "torn").await, 0.0);
    assert_eq!(spool_writes(&admin, "replayed").await, 18.0);
    assert_eq!(metric(&admin, "spool_entries", DEFAULT).await, 0.0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_mirror_copy_is_spooled_whatever_the_client_asked() {
    let primary = Switchable::start().await;
    primary.set_up();
    let backup = Switchable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}[clusters.backup]\nnodes = [\"{}\"]\ntimeout = \"2s\"\nmax_retries = 0\n\
         health_check_interval = \"100ms\"\n\
         [[routes]]\ndatabase = \"*\"\ncluster = \"default\"\nmirror = [\"backup\"]\n",
        spool_toml(&primary.upstream.url(), dir.path(), ""),
        backup.upstream.url()
    );
    let proxy = Proxy::start(&toml).await;
    // No consistency=any: the primary took it, so the client gets 204 either way.
    let (status, text) = write(&proxy.url(""), "db=d", "m v=1 1\n").await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(primary.delivered(), ["m v=1 1\n"]);
    let metrics = proxy.admin_url("/metrics");
    wait_until("the mirror copy is spooled", async || {
        metric(&metrics, "spool_entries", &[("cluster", "backup")]).await >= 1.0
    })
    .await;
    assert_eq!(metric(&metrics, "spool_entries", DEFAULT).await, 0.0);
    backup.set_up();
    eventually("the mirror copy replayed", || {
        backup.delivered() == ["m v=1 1\n"]
    })
    .await;
    proxy.stop().await;
}

/// A 256 KiB tmpfs, unmounted on drop; `None` where this process may not mount.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_503_not_a_crash_and_the_spool_goes_on() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); ENOSPC untested");
        return;
    };
    let node = Switchable::start().await;
    let toml = spool_toml(&node.upstream.url(), disk.0.path(), "ack = \"always\"");
    let proxy = Proxy::start(&toml).await;
    let big = |i: usize| format!("m,i={i} v=\"{}\" {i}\n", "x".repeat(100_000));
    let (mut acknowledged, refusal) = fill_until_refused(&proxy, "db=d", big).await;
    let refusal = refusal.expect("a 256 KiB disk fills up");
    assert!(
        refusal.contains("could not be spooled: No space left on device"),
        "{refusal}"
    );
    assert!(!acknowledged.is_empty());
    // The failed batch was cut back out: a small write still fits, and nothing torn remains.
    let (status, text) = write(&proxy.url(""), "db=d", "small v=1 1\n").await;
    assert_eq!(status, 204, "{text}");
    acknowledged.push("small v=1 1\n".to_string());
    node.set_up();
    eventually("everything acknowledged replayed", || {
        node.delivered() == acknowledged
    })
    .await;
    proxy.stop().await;
}

// === real influxd, real crashes ===

fn influx_spool_toml(port: u16, node: &str, dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [spool]\nenabled = true\ndir = \"{}\"\n\
         [clusters.default]\nnodes = [\"{node}\"]\ntimeout = \"1s\"\nmax_retries = 1\n\
         retry_backoff = \"10ms\"\nhealth_check_interval = \"200ms\"\n",
        dir.join("spool").display()
    )
}

/// A real influxd with database `spooltest`, killed (the cluster is down), and the config
/// of a spooling proxy in front of it: its directory, port and `proxy.toml`.
fn down_cluster() -> (OwnInfluxd, tempfile::TempDir, u16, String) {
    let mut node = OwnInfluxd::start();
    node.query(None, "CREATE DATABASE spooltest");
    node.kill();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = influx_spool_toml(port, &node.url(), dir.path());
    (node, dir, port, toml)
}

fn count(node: &OwnInfluxd, q: &str) -> u64 {
    node.query(Some("spooltest"), q)["results"][0]["series"][0]["values"][0][1]
        .as_u64()
        .unwrap_or(0)
}

async fn wait_until_replayed(node: &OwnInfluxd, q: &str, expected: u64) {
    let started = Instant::now();
    loop {
        let got = count(node, q);
        if got >= expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {got} of {expected} points arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_cluster_outage_and_a_proxy_sigkill() {
    let (mut node, dir, port, toml) = down_cluster();
    let mut proxy = ProxyProcess::start(dir.path(), port, &toml);

    // Four writers, 25 writes of 10 points each, all while the cluster is down.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = proxy.url("/write?db=spooltest&consistency=any");
            tokio::spawn(async move {
                for n in 0..25 {
                    let body: String = (0..10)
                        .map(|p| {
                            format!(
                                "m,w={w} v={n}i {}\n",
                                1_600_000_000_000_000_000i64 + n * 10 + p
                            )
                        })
                        .collect();
                    let response = client().post(&url).body(body).send().await.unwrap();
                    assert_eq!(response.status(), 204);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let (status, _) = write(&proxy.url(""), "db=spooltest", "lost v=1\n").await;
    assert_eq!(
        status, 503,
        "without consistency=any: not acknowledged, not spooled"
    );

    proxy.kill();
    node.restart();
    let _proxy = ProxyProcess::start(dir.path(), port, &toml);
    wait_until_replayed(&node, "SELECT count(v) FROM m", 1000).await;
    assert_eq!(count(&node, "SELECT count(v) FROM m"), 1000);
    assert_eq!(count(&node, "SELECT count(v) FROM lost"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_implies_delivered_when_the_proxy_is_killed_at_random_moments() {
    let (mut node, dir, port, toml) = down_cluster();
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let ids = Arc::new(AtomicU64::new(0));
    let mut attempted = 0;

    for round in 0..6 {
        let mut proxy = ProxyProcess::start(dir.path(), port, &toml);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (url, stop, ids, acknowledged) = (
                    proxy.url("/write?db=spooltest&consistency=any"),
                    stop.clone(),
                    ids.clone(),
                    acknowledged.clone(),
                );
                tokio::spawn(async move {
                    let mut sent = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let first = ids.fetch_add(20, Ordering::SeqCst);
                        let body: String = (first..first + 20)
                            .map(|id| format!("c id={id}i {}\n", 1_600_000_000_000_000_000u64 + id))
                            .collect();
                        sent += 1;
                        match client().post(&url).body(body).send().await {
                            Ok(r) if r.status() == 204 => {
                                acknowledged.lock().unwrap().extend(first..first + 20);
                            }
                            Ok(r) => panic!("unexpected {}", r.status()),
                            Err(_) => break, // the proxy died under us
                        }
                    }
                    sent
                })
            })
            .collect();
        let pause = 100 + fastrand::u64(..500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        proxy.kill();
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            attempted += writer.await.unwrap();
        }
        eprintln!(
            "round {round}: killed after {pause} ms, {} points acknowledged so far",
            acknowledged.lock().unwrap().len()
        );
    }

    node.restart();
    let proxy = ProxyProcess::start(dir.path(), port, &toml);
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 100,
        "the test must acknowledge something"
    );
    wait_until_replayed(&node, "SELECT count(id) FROM c", acknowledged.len() as u64).await;
    let answer = node.query(Some("spooltest"), "SELECT id FROM c");
    let stored: HashSet<u64> = answer["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_u64().unwrap())
        .collect();
    let missing: Vec<_> = acknowledged.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered (first 10): {missing:?}"
    );
    eprintln!(
        "{} requests, {} points acknowledged, {} stored (unacknowledged ones may land too)",
        attempted,
        acknowledged.len(),
        stored.len()
    );
    drop(proxy);
}
