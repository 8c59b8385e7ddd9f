//! The command line of SPEC §1, and SIGTERM on the real binary (SPEC §8).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{client, free_port, Reply, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_influx-write-proxy");

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("INFLUX_WRITE_PROXY_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_the_shipped_quick_start_config() {
    let (code, out) = run(&[
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"),
    ]);
    assert_eq!((code, out.trim()), (0, "config OK"));
}

#[test]
fn check_prints_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"x\"\n[clusters.eu]\nnodes = [\"http://a:1\", \"htp:/x\"]\n",
    )
    .unwrap();
    let (code, out) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("server.listen: invalid address \"x\""),
        "{out}"
    );
    assert!(
        out.contains("clusters.eu.nodes[1]: invalid URL \"htp:/x\""),
        "{out}"
    );
    assert!(out.contains("clusters.default: missing"), "{out}");

    let (code, out) = run(&["check", "--config", "/nonexistent/proxy.toml"]);
    assert_eq!(code, 1);
    assert!(out.contains("/nonexistent/proxy.toml"), "{out}");
}

#[test]
fn version_names_the_program() {
    let (code, out) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        concat!("influx-write-proxy ", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_writes_and_exits_zero() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(800))).await;
    let (port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             [clusters.default]\nnodes = [\"{}\"]\n",
            upstream.url()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{admin_port}/ready");
    let started = Instant::now();
    while client().get(&ready).send().await.map(|r| r.status()).ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let write = tokio::spawn(
        client()
            .post(format!("http://127.0.0.1:{port}/write?db=a"))
            .body("m v=1 1")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        client().get(&ready).send().await.unwrap().status(),
        503,
        "ready turns 503 at once"
    );
    assert_eq!(
        write.await.unwrap().unwrap().status(),
        204,
        "the in-flight write finishes"
    );

    let (status, log) = support::exit_and_log(child).await;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("drained"), "{log}");
    // New connections are refused once draining started.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(upstream.forwarded().len(), 1);
}

#[test]
fn hash_secret_prints_what_proxy_toml_takes() {
    let run_with = |args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    let (code, out) = run_with(&["hash-secret", "--token"], "s3cret\n");
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        "sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
    );

    let (code, out) = run_with(&["hash-secret"], "hunter2\n");
    assert_eq!(code, Some(0));
    let phc = out.trim();
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    use argon2::PasswordVerifier;
    let hash = argon2::PasswordHash::new(phc).unwrap();
    assert!(argon2::Argon2::default()
        .verify_password(b"hunter2", &hash)
        .is_ok());
    assert!(argon2::Argon2::default()
        .verify_password(b"hunter2\n", &hash)
        .is_err());

    let (code, _) = run_with(&["hash-secret"], "");
    assert_eq!(code, Some(1));
}

/// The running proxy has `MIMALLOC_PURGE_DELAY` in its environment, as the binary sets it
/// when the operator has not, and keeps the operator's value when there is one.
#[test]
fn the_running_proxy_purges_freed_memory_after_50ms_unless_told_otherwise() {
    let environ = |value: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["--config", "/nonexistent/proxy.toml"])
            .env_remove("INFLUX_WRITE_PROXY_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match value {
            Some(v) => command.env("MIMALLOC_PURGE_DELAY", v),
            None => command.env_remove("MIMALLOC_PURGE_DELAY"),
        };
        let mut child = command.spawn().unwrap();
        // The process replaces itself (so does every test that starts the server, the
        // SIGTERM test above among them); read its environment until the new image has
        // the variable or it has exited.
        let path = format!("/proc/{}/environ", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while Instant::now() < deadline {
            if let Ok(bytes) = std::fs::read(&path) {
                found = bytes
                    .split(|&b| b == 0)
                    .find_map(|kv| kv.strip_prefix(b"MIMALLOC_PURGE_DELAY="))
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                if found.is_some() {
                    break;
                }
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        found
    };
    assert_eq!(environ(None).as_deref(), Some("50"));
    assert_eq!(environ(Some("1000")).as_deref(), Some("1000"));
}
