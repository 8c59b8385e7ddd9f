//! Real servers on loopback for the integration tests: the proxy itself (in-process, on
//! port 0), a real `influxd` (Debian's `influxdb` package, one per test binary, auth on),
//! recording hyper upstreams that can be told what to answer, and raw TCP peers for what
//! no HTTP server does on purpose (garbage, stalls).
#![allow(dead_code)]

pub mod influxd;
pub mod metrics;
pub mod pki;
pub mod proxy;
pub mod upstream;

// Each test binary uses a different part; what one leaves unused is not dead.
#[allow(unused_imports)]
pub use influxd::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use upstream::*;

use std::time::Duration;

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

/// The resident set size of process `pid`, in bytes (0 once it is gone).
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
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
