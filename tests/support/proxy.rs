//! The proxy under test: in-process on ports the OS picked, or as its own process (for
//! signals, exits and logs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use influx_write_proxy::{Bound, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::wait_for_ping;

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

// === the proxy as its own process ===

/// The log at `path` as soon as `ready` holds for it, or as it is after 5 s: a serving
/// thread hands its access lines to the log writer up to 100 ms after the answers.
pub async fn log_once(path: &std::path::Path, ready: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if ready(&log) || started.elapsed() > std::time::Duration::from_secs(5) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

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

    /// The address it listens on, for raw-socket clients.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
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

    /// Waits for the process to exit by itself (after a `TERM`, say).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
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
