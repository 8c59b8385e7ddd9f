//! Real influxd (Debian's `influxdb`): one shared per test binary with auth on, and nodes a
//! test owns (to stop, restart or kill).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{client, free_port};

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

pub(crate) fn wait_for_ping(url: &str) -> bool {
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

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
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
