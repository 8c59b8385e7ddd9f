//! `proxy.toml`: raw serde structs (unknown keys are errors) → `${VAR}` expansion →
//! `validate()` → the typed [`Config`] the proxy runs on. `check` runs the same code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

/// A whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    /// Every cluster, `default` among them.
    pub clusters: Vec<ClusterConfig>,
    pub routes: Vec<Route>,
    /// `None` unless `[spool] enabled = true`.
    pub spool: Option<SpoolConfig>,
}

/// The durable queue for writes a cluster could not take (`[spool]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Relative paths are relative to the working directory.
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub ack: SpoolAck,
}

/// Which spooled writes are answered 204.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolAck {
    /// Only writes that asked for `consistency=any`; others get 503 and are not spooled.
    ConsistencyAny,
    /// Every write the spool takes.
    Always,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub max_body_bytes: u64,
    pub max_decoded_body_bytes: u64,
    pub max_inflight_bytes: u64,
    /// From a request head's first byte (or the connection's start) to its end.
    pub header_read_timeout: Duration,
    /// How long an HTTP/1.1 connection may sit idle between requests.
    pub keepalive_timeout: Duration,
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub realm: String,
    /// Threads serving requests; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// Client connections open at once on `listen`; `None`: from the open-file limit.
    pub max_connections: Option<usize>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No client credentials are checked or forwarded; the cluster's own are sent upstream.
    None,
    /// Client credentials are forwarded upstream and checked there.
    Passthrough,
    /// Clients authenticate to the proxy (tokens, users, JWT); the cluster's credentials go
    /// upstream.
    Proxy,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Mode `proxy` only.
    pub tokens: Vec<TokenConfig>,
    pub users: Vec<UserConfig>,
    pub jwt_secret: Option<Secret>,
    /// Clock skew allowed on a JWT's `exp`, `nbf` and `iat` (`auth.jwt.leeway`).
    pub jwt_leeway: Duration,
}

/// A `[[auth.tokens]]` entry: a principal that presents a token.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    /// SHA-256 of the token: the token itself is never kept.
    pub digest: [u8; 32],
    pub databases: Vec<String>,
    pub rate: RateConfig,
}

/// A `[[auth.users]]` entry: a principal that presents a username and password.
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub username: String,
    pub password: PasswordCheck,
    pub databases: Vec<String>,
    pub rate: RateConfig,
}

/// How a user's password is verified.
#[derive(Clone)]
pub enum PasswordCheck {
    /// An argon2 PHC string (`$argon2id$v=19$…`).
    Argon2(String),
    /// SHA-256 of a plain password given through the environment.
    Plain([u8; 32]),
}

impl fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PasswordCheck::Argon2(_) => "Argon2(***)",
            PasswordCheck::Plain(_) => "Plain(***)",
        })
    }
}

/// A principal's limits; 0 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    pub requests_per_second: u32,
    /// Decoded body bytes.
    pub bytes_per_second: u64,
    /// Bucket depth, in seconds of the rate.
    pub burst_seconds: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub nodes: Vec<Uri>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Per try.
    pub timeout: Duration,
    /// Extra tries after the first, on another node where there is one.
    pub max_retries: u32,
    /// Base of the full-jitter exponential backoff between tries.
    pub retry_backoff: Duration,
    pub health_check_interval: Duration,
    /// Extra roots for `https://` nodes (`tls_ca_file`, read at load), beside the system's.
    pub tls_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub tls_insecure_skip_verify: bool,
}

/// `[server.tls]`: HTTPS on `listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Require client certificates signed by these CAs (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// A `[[routes]]` entry: writes to a database matching `database` go to `cluster`.
#[derive(Debug, Clone)]
pub struct Route {
    pub database: String,
    pub cluster: String,
    /// Clusters that also get every write of this route.
    pub mirror: Vec<String>,
}

/// A string that never shows itself in `Debug` output (and so in no log line).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Every problem found in a configuration, each naming its key path (or the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, expands and validates the file at `path` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parses `text`, looking `${VAR}`s up with `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![e.message().to_string() + &location(text, e.span())]))?;
        let mut errors = vec![];
        expand_env(&mut value, &mut String::new(), env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            // toml appends "in `table`" on further lines; the path already says where.
            let message = e.into_inner().to_string();
            let first_line = message.lines().next().unwrap_or_default();
            ConfigErrors(vec![format!("{path}: {first_line}")])
        })?;
        raw.validate()
    }

    /// The keys that differ in `new` but only take effect after a restart (they shape the
    /// listeners, the runtime or the spool, which a reload keeps).
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.server, &new.server);
        [
            ("server.listen", a.listen != b.listen),
            ("server.admin_listen", a.admin_listen != b.admin_listen),
            (
                "server.header_read_timeout",
                a.header_read_timeout != b.header_read_timeout,
            ),
            (
                "server.keepalive_timeout",
                a.keepalive_timeout != b.keepalive_timeout,
            ),
            (
                "server.max_inflight_bytes",
                a.max_inflight_bytes != b.max_inflight_bytes,
            ),
            (
                "server.max_connections",
                a.max_connections != b.max_connections,
            ),
            (
                "server.worker_threads",
                a.worker_threads != b.worker_threads,
            ),
            // The files themselves are re-read when they change; their paths are not.
            ("server.tls", a.tls != b.tls),
            ("spool", self.spool != new.spool),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// The cluster a write to `database` goes to, and its mirrors: the first matching
    /// route, else `default` without mirrors.
    pub fn clusters_for(&self, database: &str) -> (&str, &[String]) {
        self.routes
            .iter()
            .find(|r| glob_match::glob_match(&r.database, database))
            .map_or(("default", &[][..]), |r| (&r.cluster, &r.mirror))
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string value. Only `${` starts a
/// variable, so a lone `$` (as in argon2 PHC strings) stays literal.
fn expand_env(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(e) => errors.push(format!("{path}: {e}")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path, env, errors);
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                expand_env(item, path, env, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated \"${{\" in {s:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?}"));
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// === raw structs ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    spool: Option<RawSpool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    #[serde(default)]
    enabled: bool,
    dir: Option<String>,
    max_bytes: Option<RawSize>,
    max_age: Option<String>,
    ack: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    max_body_bytes: Option<RawSize>,
    max_decoded_body_bytes: Option<RawSize>,
    max_inflight_bytes: Option<RawSize>,
    header_read_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    body_read_timeout: Option<String>,
    request_timeout: Option<String>,
    shutdown_grace: Option<String>,
    realm: Option<String>,
    worker_threads: Option<usize>,
    max_connections: Option<usize>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
    client_ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    mode: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    users: Vec<RawUser>,
    jwt: Option<RawJwt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token: String,
    #[serde(default)]
    databases: Vec<String>,
    rate_limit: Option<RawRateOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: String,
    #[serde(default)]
    databases: Vec<String>,
    rate_limit: Option<RawRateOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    shared_secret: String,
    leeway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_second: Option<u32>,
    bytes_per_second: Option<RawSize>,
    burst_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateOverride {
    requests_per_second: Option<u32>,
    bytes_per_second: Option<RawSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nodes: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    timeout: Option<String>,
    max_retries: Option<u32>,
    retry_backoff: Option<String>,
    health_check_interval: Option<String>,
    tls_ca_file: Option<String>,
    #[serde(default)]
    tls_insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    database: String,
    cluster: String,
    #[serde(default)]
    mirror: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

// === validation ===

/// Collects errors so `check` can print every one of them, not just the first.
struct Checker(Vec<String>);

impl Checker {
    fn error(&mut self, path: &str, message: impl fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }

    fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.error(
                path,
                format!("invalid address {text:?} (use host:port, e.g. \"127.0.0.1:8087\")"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.error(path, format!("duration {text:?} must be greater than zero"));
                    default
                }
                Err(_) => {
                    self.error(
                        path,
                        format!(
                            "invalid duration {text:?} (use e.g. \"250ms\", \"10s\", \"168h\")"
                        ),
                    );
                    default
                }
            },
        }
    }

    fn size(&mut self, path: &str, value: Option<&RawSize>, default: u64) -> u64 {
        match value {
            None => default,
            Some(RawSize::Bytes(0)) => {
                self.error(path, "size must be greater than zero");
                default
            }
            Some(RawSize::Bytes(n)) => *n,
            Some(RawSize::Text(text)) => match parse_size(text) {
                Some(n) if n > 0 => n,
                _ => {
                    self.error(
                        path,
                        format!("invalid size {text:?} (use bytes, or e.g. \"25MB\", \"512MiB\")"),
                    );
                    default
                }
            },
        }
    }
}

/// `"25MB"` = 25 000 000, `"1GiB"` = 2^30; a bare number is bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigErrors> {
        let mut c = Checker(vec![]);
        let s = &self.server;
        let server = ServerConfig {
            listen: c.addr("server.listen", s.listen.as_deref(), "127.0.0.1:8087"),
            admin_listen: s
                .admin_listen
                .as_deref()
                .map(|a| c.addr("server.admin_listen", Some(a), "")),
            max_body_bytes: c.size(
                "server.max_body_bytes",
                s.max_body_bytes.as_ref(),
                25_000_000,
            ),
            max_decoded_body_bytes: c.size(
                "server.max_decoded_body_bytes",
                s.max_decoded_body_bytes.as_ref(),
                100_000_000,
            ),
            max_inflight_bytes: c.size(
                "server.max_inflight_bytes",
                s.max_inflight_bytes.as_ref(),
                512 << 20,
            ),
            header_read_timeout: c.duration(
                "server.header_read_timeout",
                s.header_read_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            keepalive_timeout: c.duration(
                "server.keepalive_timeout",
                s.keepalive_timeout.as_deref(),
                Duration::from_secs(75),
            ),
            body_read_timeout: c.duration(
                "server.body_read_timeout",
                s.body_read_timeout.as_deref(),
                Duration::from_secs(30),
            ),
            request_timeout: c.duration(
                "server.request_timeout",
                s.request_timeout.as_deref(),
                Duration::from_secs(60),
            ),
            shutdown_grace: c.duration(
                "server.shutdown_grace",
                s.shutdown_grace.as_deref(),
                Duration::from_secs(25),
            ),
            realm: s.realm.clone().unwrap_or_else(|| "InfluxDB".to_string()),
            worker_threads: s.worker_threads.filter(|&n| n > 0),
            max_connections: s.max_connections.filter(|&n| n > 0),
            tls: s.tls.as_ref().map(|t| validate_tls(t, &mut c)),
        };
        if s.worker_threads.is_some_and(|n| n > 1024) {
            c.error(
                "server.worker_threads",
                "at most 1024 (0 or unset: one per CPU)",
            );
        }
        if server.admin_listen == Some(server.listen) {
            c.error(
                "server.admin_listen",
                "must differ from server.listen (omit it to serve admin endpoints on listen)",
            );
        }
        if server.max_decoded_body_bytes < server.max_body_bytes {
            c.error(
                "server.max_decoded_body_bytes",
                "must be at least server.max_body_bytes",
            );
        }

        let mode = match self.auth.mode.as_deref() {
            None | Some("none") => AuthMode::None,
            Some("passthrough") => AuthMode::Passthrough,
            Some("proxy") => AuthMode::Proxy,
            Some(other) => {
                c.error(
                    "auth.mode",
                    format!("unknown mode {other:?} (use \"none\", \"passthrough\" or \"proxy\")"),
                );
                AuthMode::None
            }
        };
        let auth = validate_auth(mode, &self.auth, &self.rate_limit, &mut c);
        let spool = self
            .spool
            .as_ref()
            .filter(|s| s.enabled)
            .map(|s| validate_spool(s, mode, &mut c));

        if !self.clusters.contains_key("default") {
            c.error(
                "clusters.default",
                "missing: writes that match no route go to the cluster named \"default\"",
            );
        }
        let mut clusters = vec![];
        for (name, raw) in &self.clusters {
            let path = format!("clusters.{name}");
            if raw.nodes.is_empty() {
                c.error(&format!("{path}.nodes"), "needs at least one node URL");
            }
            let nodes = raw
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, url)| match parse_node(url) {
                    Ok(uri) => Some(uri),
                    Err(why) => {
                        c.error(
                            &format!("{path}.nodes[{i}]"),
                            format!("invalid URL {:?}: {why}", without_userinfo(url)),
                        );
                        None
                    }
                })
                .collect();
            let tls_ca = match raw.tls_ca_file.as_deref().filter(|f| !f.is_empty()) {
                None => vec![],
                Some(file) => crate::tls::read_certs(Path::new(file)).unwrap_or_else(|e| {
                    c.error(&format!("{path}.tls_ca_file"), e);
                    vec![]
                }),
            };
            let username = raw.username.clone().filter(|u| !u.is_empty());
            let password = raw.password.clone().filter(|p| !p.is_empty()).map(Secret);
            if password.is_some() && username.is_none() {
                c.error(
                    &format!("{path}.username"),
                    "is empty but a password is set",
                );
            }
            clusters.push(ClusterConfig {
                name: name.clone(),
                nodes,
                username,
                password,
                timeout: c.duration(
                    &format!("{path}.timeout"),
                    raw.timeout.as_deref(),
                    Duration::from_secs(10),
                ),
                max_retries: raw.max_retries.unwrap_or(2),
                retry_backoff: c.duration(
                    &format!("{path}.retry_backoff"),
                    raw.retry_backoff.as_deref(),
                    Duration::from_millis(50),
                ),
                health_check_interval: c.duration(
                    &format!("{path}.health_check_interval"),
                    raw.health_check_interval.as_deref(),
                    Duration::from_secs(5),
                ),
                tls_ca,
                tls_insecure_skip_verify: raw.tls_insecure_skip_verify,
            });
        }

        let mut routes = vec![];
        for (i, raw) in self.routes.iter().enumerate() {
            if raw.database.is_empty() {
                c.error(&format!("routes[{i}].database"), "must not be empty");
            }
            if !self.clusters.contains_key(&raw.cluster) {
                c.error(
                    &format!("routes[{i}].cluster"),
                    format!("unknown cluster {:?}", raw.cluster),
                );
            }
            for (j, mirror) in raw.mirror.iter().enumerate() {
                let path = format!("routes[{i}].mirror[{j}]");
                if !self.clusters.contains_key(mirror) {
                    c.error(&path, format!("unknown cluster {mirror:?}"));
                } else if *mirror == raw.cluster {
                    c.error(&path, format!("{mirror:?} is already the route's cluster"));
                }
            }
            routes.push(Route {
                database: raw.database.clone(),
                cluster: raw.cluster.clone(),
                mirror: raw.mirror.clone(),
            });
        }

        if !c.0.is_empty() {
            return Err(ConfigErrors(c.0));
        }
        Ok(Config {
            server,
            auth,
            clusters,
            routes,
            spool,
        })
    }
}

fn validate_tls(raw: &RawTls, c: &mut Checker) -> TlsConfig {
    let tls = TlsConfig {
        cert_file: PathBuf::from(&raw.cert_file),
        key_file: PathBuf::from(&raw.key_file),
        client_ca_file: raw
            .client_ca_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from),
    };
    // Load now, so `check` and a reload catch a bad certificate before it is needed.
    if let Err(e) = crate::tls::ServerTls::load(&tls) {
        c.error(e.key, e.message);
    }
    tls
}

fn validate_spool(raw: &RawSpool, mode: AuthMode, c: &mut Checker) -> SpoolConfig {
    let dir = PathBuf::from(raw.dir.as_deref().unwrap_or("spool"));
    if dir.as_os_str().is_empty() {
        c.error("spool.dir", "must not be empty");
    }
    let ack = match raw.ack.as_deref() {
        None | Some("consistency-any") => SpoolAck::ConsistencyAny,
        Some("always") => SpoolAck::Always,
        Some(other) => {
            c.error(
                "spool.ack",
                format!("unknown value {other:?} (use \"consistency-any\" or \"always\")"),
            );
            SpoolAck::ConsistencyAny
        }
    };
    if mode == AuthMode::Passthrough {
        // Replaying needs credentials: the client's would have to be stored on disk, and
        // the cluster's would let an unauthenticated client write during an outage.
        c.error(
            "spool.enabled",
            "cannot be used with auth.mode = \"passthrough\" (the proxy would have to store \
             client credentials on disk to replay); use mode \"proxy\" or \"none\"",
        );
    }
    SpoolConfig {
        dir,
        max_bytes: c.size("spool.max_bytes", raw.max_bytes.as_ref(), 1 << 30),
        max_age: c.duration(
            "spool.max_age",
            raw.max_age.as_deref(),
            Duration::from_secs(168 * 3600),
        ),
        ack,
    }
}

fn validate_auth(
    mode: AuthMode,
    raw: &RawAuth,
    limits: &RawRateLimit,
    c: &mut Checker,
) -> AuthConfig {
    let global = RateConfig {
        requests_per_second: limits.requests_per_second.unwrap_or(0),
        bytes_per_second: match &limits.bytes_per_second {
            Some(RawSize::Bytes(n)) => *n,
            other => c.size("rate_limit.bytes_per_second", other.as_ref(), 0),
        },
        burst_seconds: limits.burst_seconds.unwrap_or(2),
    };
    if global.burst_seconds == 0 {
        c.error("rate_limit.burst_seconds", "must be at least 1");
    }
    let rate = |c: &mut Checker, path: &str, o: &Option<RawRateOverride>| match o {
        None => global,
        Some(o) => RateConfig {
            requests_per_second: o.requests_per_second.unwrap_or(global.requests_per_second),
            bytes_per_second: match &o.bytes_per_second {
                None => global.bytes_per_second,
                Some(RawSize::Bytes(n)) => *n,
                Some(size) => c.size(
                    &format!("{path}.rate_limit.bytes_per_second"),
                    Some(size),
                    0,
                ),
            },
            burst_seconds: global.burst_seconds,
        },
    };
    let mut names = std::collections::HashSet::new();
    let mut databases = |c: &mut Checker, path: &str, name: &str, patterns: &[String]| {
        if name.is_empty() {
            c.error(path, "needs a name");
        } else if !names.insert(name.to_string()) {
            c.error(path, format!("{name:?} is used by another token or user"));
        }
        if patterns.is_empty() {
            c.error(
                &format!("{path}.databases"),
                "needs at least one pattern (\"*\" for all)",
            );
        }
        if patterns.iter().any(|p| p.is_empty() || p.starts_with('/')) {
            c.error(
                &format!("{path}.databases"),
                "patterns are \"db\" or \"db/rp\" globs",
            );
        }
        patterns.to_vec()
    };
    let mut tokens = vec![];
    for (i, t) in raw.tokens.iter().enumerate() {
        let path = format!("auth.tokens[{i}]");
        let digest = match t.token.strip_prefix("sha256:") {
            Some(hex) => parse_digest(hex).unwrap_or_else(|| {
                c.error(
                    &format!("{path}.token"),
                    "a sha256: token needs 64 hex digits (see `hash-secret --token`)",
                );
                [0; 32]
            }),
            None if t.token.len() < 16 => {
                c.error(
                    &format!("{path}.token"),
                    "plain tokens must be at least 16 characters",
                );
                [0; 32]
            }
            None => sha256(t.token.as_bytes()),
        };
        tokens.push(TokenConfig {
            databases: databases(c, &path, &t.name, &t.databases),
            name: t.name.clone(),
            digest,
            rate: rate(c, &path, &t.rate_limit),
        });
    }
    let mut users = vec![];
    for (i, u) in raw.users.iter().enumerate() {
        let path = format!("auth.users[{i}]");
        let password = if u.password.starts_with("$argon2") {
            let valid = argon2::PasswordHash::new(&u.password).is_ok_and(|h| {
                h.hash.is_some()
                    && h.salt.is_some()
                    && argon2::Algorithm::try_from(h.algorithm).is_ok()
            });
            if !valid {
                c.error(
                    &format!("{path}.password"),
                    "not a valid argon2 PHC string (see `hash-secret`)",
                );
            }
            PasswordCheck::Argon2(u.password.clone())
        } else if u.password.is_empty() {
            c.error(&format!("{path}.password"), "must not be empty");
            PasswordCheck::Plain([0; 32])
        } else {
            PasswordCheck::Plain(sha256(u.password.as_bytes()))
        };
        users.push(UserConfig {
            databases: databases(c, &path, &u.username, &u.databases),
            username: u.username.clone(),
            password,
            rate: rate(c, &path, &u.rate_limit),
        });
    }
    let jwt_secret = raw.jwt.as_ref().map(|j| {
        if j.shared_secret.len() < 32 {
            c.error("auth.jwt.shared_secret", "must be at least 32 bytes");
        }
        if raw.users.is_empty() {
            c.error(
                "auth.jwt",
                "needs [[auth.users]]: a token's username must be one of them",
            );
        }
        Secret(j.shared_secret.clone())
    });
    let jwt_leeway = match raw.jwt.as_ref().and_then(|j| j.leeway.as_deref()) {
        None => Duration::ZERO,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d <= MAX_JWT_LEEWAY => d,
            Ok(_) => {
                c.error(
                    "auth.jwt.leeway",
                    format!("{text:?} is more than 5m: a leeway is for clock skew"),
                );
                Duration::ZERO
            }
            Err(_) => {
                c.error(
                    "auth.jwt.leeway",
                    format!("invalid duration {text:?} (use e.g. \"0s\", \"30s\")"),
                );
                Duration::ZERO
            }
        },
    };
    match mode {
        AuthMode::Proxy if tokens.is_empty() && users.is_empty() => {
            c.error(
                "auth.mode",
                "\"proxy\" needs [[auth.tokens]] or [[auth.users]]: nobody could write",
            );
        }
        AuthMode::Proxy => {}
        _ => {
            for (key, present) in [
                ("auth.tokens", !tokens.is_empty()),
                ("auth.users", !users.is_empty()),
                ("auth.jwt", jwt_secret.is_some()),
            ] {
                if present {
                    c.error(key, "is only used with auth.mode = \"proxy\"");
                }
            }
        }
    }
    AuthConfig {
        mode,
        tokens,
        users,
        jwt_secret,
        jwt_leeway,
    }
}

/// Largest `auth.jwt.leeway`: enough for clock skew, too little to revive old tokens.
const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A node is `http://host:port` with an optional path prefix (for nodes behind a path-routing
/// gateway); `/write` is appended to it.
/// `url` with any `user:password@` replaced by `***@`, for error messages: a password put
/// in a node URL must not reach `check`'s output or the log.
fn without_userinfo(url: &str) -> String {
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[rest_at..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_at + i);
    match url[rest_at..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_at], &url[rest_at + at..]),
        None => url.to_string(),
    }
}

fn parse_node(url: &str) -> Result<Uri, &'static str> {
    let scheme = if url.starts_with("https://") {
        "https"
    } else if url.starts_with("http://") {
        "http"
    } else {
        return Err("the scheme must be http:// or https://");
    };
    let uri: Uri = url.parse().map_err(|_| "not a URL")?;
    let authority = uri.authority().ok_or("no host")?;
    if authority.host().is_empty() {
        return Err("no host");
    }
    if authority.as_str().contains('@') {
        return Err("credentials belong in username/password, not in the URL");
    }
    if uri.query().is_some() {
        return Err("a node URL takes no query");
    }
    let path = uri.path().trim_end_matches('/');
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(if path.is_empty() { "/" } else { path })
        .build()
        .map_err(|_| "not a URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, &|name| match name {
            "SET" => Some("value".to_string()),
            _ => None,
        })
    }

    const MINIMAL: &str = "[clusters.default]\nnodes = [\"http://127.0.0.1:8086\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8087");
        assert_eq!(config.server.max_body_bytes, 25_000_000);
        assert_eq!(config.server.max_inflight_bytes, 512 << 20);
        assert_eq!(config.server.body_read_timeout, Duration::from_secs(30));
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.server.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(config.auth.mode, AuthMode::None);
        assert_eq!(config.clusters[0].timeout, Duration::from_secs(10));
        assert_eq!(config.server.worker_threads, None);
        let one = parse(&format!("[server]\nworker_threads = 1\n{MINIMAL}")).unwrap();
        assert_eq!(one.server.worker_threads, Some(1));
    }

    #[test]
    fn every_error_names_its_key_path() {
        let errors = parse(
            "[server]\nlisten = \"nowhere\"\nbody_read_timeout = \"soon\"\nmax_body_bytes = \"12 parsecs\"\n\
             [clusters.default]\nnodes = [\"http://ok:8086\", \"htp:/x\"]\n\
             [[routes]]\ndatabase = \"m_*\"\ncluster = \"eu\"\n",
        )
        .unwrap_err()
        .0;
        assert_eq!(
            errors,
            vec![
                "server.listen: invalid address \"nowhere\" (use host:port, e.g. \"127.0.0.1:8087\")",
                "server.max_body_bytes: invalid size \"12 parsecs\" (use bytes, or e.g. \"25MB\", \"512MiB\")",
                "server.body_read_timeout: invalid duration \"soon\" (use e.g. \"250ms\", \"10s\", \"168h\")",
                "clusters.default.nodes[1]: invalid URL \"htp:/x\": the scheme must be http:// or https://",
                "routes[0].cluster: unknown cluster \"eu\"",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let errors = parse(&format!("{MINIMAL}timeuot = \"1s\"\n"))
            .unwrap_err()
            .0;
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(
                "clusters.default.timeuot: unknown field `timeuot`, expected one of `nodes`"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn spool_is_off_unless_enabled_and_reads_its_bounds() {
        assert!(parse(MINIMAL).unwrap().spool.is_none());
        assert!(parse(&format!("[spool]\ndir = \"x\"\n{MINIMAL}"))
            .unwrap()
            .spool
            .is_none());
        let on = parse(&format!(
            "[spool]\nenabled = true\nmax_bytes = \"2MiB\"\nmax_age = \"1h\"\nack = \"always\"\n{MINIMAL}"
        ))
        .unwrap()
        .spool
        .unwrap();
        assert_eq!(on.dir, PathBuf::from("spool"));
        assert_eq!(on.max_bytes, 2 << 20);
        assert_eq!(on.max_age, Duration::from_secs(3600));
        assert_eq!(on.ack, SpoolAck::Always);
        let defaults = parse(&format!("[spool]\nenabled = true\n{MINIMAL}"))
            .unwrap()
            .spool
            .unwrap();
        assert_eq!(defaults.max_bytes, 1 << 30);
        assert_eq!(defaults.max_age, Duration::from_secs(168 * 3600));
        assert_eq!(defaults.ack, SpoolAck::ConsistencyAny);
    }

    #[test]
    fn spool_errors_name_their_keys_and_passthrough_is_refused() {
        let errors = parse(&format!(
            "[auth]\nmode = \"passthrough\"\n[spool]\nenabled = true\nack = \"sometimes\"\nmax_age = \"soon\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .0;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("spool.ack: unknown value \"sometimes\""));
        assert!(errors[1].starts_with("spool.enabled: cannot be used with auth.mode"));
        assert!(errors[2].starts_with("spool.max_age: invalid duration"));
    }

    #[test]
    fn node_url_errors_never_show_credentials_put_in_the_url() {
        let errors = parse("[clusters.default]\nnodes = [\"http://admin:hunter2@db:8086/x\"]\n")
            .unwrap_err()
            .0;
        assert_eq!(
            errors,
            ["clusters.default.nodes[0]: invalid URL \"http://***@db:8086/x\": credentials belong in username/password, not in the URL"]
        );
        assert_eq!(without_userinfo("htp:/x"), "htp:/x");
        assert_eq!(without_userinfo("https://u@h/p@q"), "https://***@h/p@q");
    }

    #[test]
    fn tls_files_are_checked_at_load_and_errors_name_their_keys() {
        let errors = parse(&format!(
            "[server.tls]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"k\"\n{MINIMAL}tls_ca_file = \"/nonexistent/ca.pem\"\n"
        ))
        .unwrap_err()
        .0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("server.tls.cert_file: cannot read \"/nonexistent/tls.crt\""),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("clusters.default.tls_ca_file: cannot read"),
            "{errors:?}"
        );
        let https = parse("[clusters.default]\nnodes = [\"https://db.example:8086\"]\ntls_insecure_skip_verify = true\n")
            .unwrap();
        assert_eq!(https.clusters[0].nodes[0].scheme_str(), Some("https"));
        assert!(https.clusters[0].tls_insecure_skip_verify);
    }

    #[test]
    fn auth_proxy_reads_tokens_users_jwt_and_limits() {
        let config = parse(&format!(
            "[auth]\nmode = \"proxy\"\n\
             [[auth.tokens]]\nname = \"telegraf\"\ntoken = \"sha256:{}\"\ndatabases = [\"telegraf\"]\n\
             rate_limit = {{ requests_per_second = 50, bytes_per_second = \"20MB\" }}\n\
             [[auth.tokens]]\nname = \"ci\"\ntoken = \"plain-token-from-env-1234\"\ndatabases = [\"*\"]\n\
             [[auth.users]]\nusername = \"alice\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$kf0mCpoGn7/bz2LyTAr8LQ$tAdrMh/5M3/lQes+UnApBwZQhOWLGeNS4xKhd/7H1fY\"\ndatabases = [\"app_*\"]\n\
             [auth.jwt]\nshared_secret = \"0123456789abcdef0123456789abcdef\"\n\
             [rate_limit]\nrequests_per_second = 10\nburst_seconds = 3\n{MINIMAL}",
            "9f".repeat(32)
        ))
        .unwrap();
        let auth = &config.auth;
        assert_eq!(auth.mode, AuthMode::Proxy);
        assert_eq!(auth.tokens[0].digest, [0x9f; 32]);
        assert_eq!(
            auth.tokens[0].rate,
            RateConfig {
                requests_per_second: 50,
                bytes_per_second: 20_000_000,
                burst_seconds: 3
            }
        );
        assert_eq!(auth.tokens[1].digest, sha256(b"plain-token-from-env-1234"));
        assert_eq!(
            auth.tokens[1].rate.requests_per_second, 10,
            "the global limit applies"
        );
        assert!(matches!(auth.users[0].password, PasswordCheck::Argon2(_)));
        assert!(auth.jwt_secret.is_some());
        assert!(!format!("{config:?}").contains("argon2id$v=19$m=19456"));
    }

    #[test]
    fn unsafe_or_pointless_auth_settings_are_errors() {
        let errors = parse(&format!(
            "[auth]\nmode = \"proxy\"\n\
             [[auth.tokens]]\nname = \"a\"\ntoken = \"short\"\n\
             [[auth.tokens]]\nname = \"a\"\ntoken = \"sha256:xyz\"\ndatabases = [\"db\"]\n\
             [[auth.users]]\nusername = \"u\"\npassword = \"$argon2id$broken\"\ndatabases = [\"db\"]\n\
             [auth.jwt]\nshared_secret = \"too-short\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .0;
        assert_eq!(
            errors,
            vec![
                "auth.tokens[0].token: plain tokens must be at least 16 characters",
                "auth.tokens[0].databases: needs at least one pattern (\"*\" for all)",
                "auth.tokens[1].token: a sha256: token needs 64 hex digits (see `hash-secret --token`)",
                "auth.tokens[1]: \"a\" is used by another token or user",
                "auth.users[0].password: not a valid argon2 PHC string (see `hash-secret`)",
                "auth.jwt.shared_secret: must be at least 32 bytes",
            ]
        );
        let errors = parse(&format!("[auth]\nmode = \"proxy\"\n{MINIMAL}"))
            .unwrap_err()
            .0;
        assert_eq!(
            errors,
            vec![
                "auth.mode: \"proxy\" needs [[auth.tokens]] or [[auth.users]]: nobody could write"
            ]
        );
        let errors = parse(&format!(
            "[[auth.tokens]]\nname = \"a\"\ntoken = \"long-enough-token-123\"\ndatabases = [\"*\"]\n{MINIMAL}"
        ))
        .unwrap_err()
        .0;
        assert_eq!(
            errors,
            vec!["auth.tokens: is only used with auth.mode = \"proxy\""]
        );
    }

    #[test]
    fn expands_environment_variables_but_not_lone_dollars() {
        let config = parse(
            "[server]\nrealm = \"${SET}-${UNSET:-fallback}-$argon2id$v=19\"\n\
             [clusters.default]\nnodes = [\"http://127.0.0.1:8086\"]\nusername = \"${UNSET:-}\"\n",
        )
        .unwrap();
        assert_eq!(config.server.realm, "value-fallback-$argon2id$v=19");
        assert_eq!(config.clusters[0].username, None);
        let errors = parse(&format!("{MINIMAL}password = \"${{NOPE}}\"\n"))
            .unwrap_err()
            .0;
        assert_eq!(
            errors,
            vec!["clusters.default.password: environment variable NOPE is not set (use ${NOPE:-default} for a default)"]
        );
    }

    #[test]
    fn sizes_accept_decimal_and_binary_units() {
        assert_eq!(parse_size("25MB"), Some(25_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1 TB"), None);
    }

    #[test]
    fn routes_pick_first_matching_glob_else_default() {
        let config = parse(&format!(
            "{MINIMAL}[clusters.eu]\nnodes = [\"http://eu:8086\"]\n\
             [[routes]]\ndatabase = \"metrics_*\"\ncluster = \"eu\"\n\
             [[routes]]\ndatabase = \"metrics_x\"\ncluster = \"default\"\n"
        ))
        .unwrap();
        assert_eq!(config.clusters_for("metrics_x"), ("eu", &[][..]));
        assert_eq!(config.clusters_for("logs"), ("default", &[][..]));
    }

    #[test]
    fn mirrors_must_name_other_existing_clusters() {
        let config = parse(&format!(
            "{MINIMAL}[clusters.backup]\nnodes = [\"http://b:8086\"]\nmax_retries = 0\nretry_backoff = \"10ms\"\n\
             [[routes]]\ndatabase = \"*\"\ncluster = \"default\"\nmirror = [\"backup\"]\n"
        ))
        .unwrap();
        assert_eq!(
            config.clusters_for("x"),
            ("default", &["backup".to_string()][..])
        );
        assert_eq!(config.clusters[0].max_retries, 0);
        assert_eq!(config.clusters[0].retry_backoff, Duration::from_millis(10));
        let errors = parse(&format!(
            "{MINIMAL}[[routes]]\ndatabase = \"*\"\ncluster = \"default\"\nmirror = [\"default\", \"nope\"]\n"
        ))
        .unwrap_err()
        .0;
        assert_eq!(
            errors,
            vec![
                "routes[0].mirror[0]: \"default\" is already the route's cluster",
                "routes[0].mirror[1]: unknown cluster \"nope\"",
            ]
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(&format!(
            "{MINIMAL}username = \"admin\"\npassword = \"hunter2\"\n"
        ))
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn shipped_quick_start_config_is_valid() {
        let text = include_str!("../proxy.toml");
        parse(text).unwrap();
    }
}
