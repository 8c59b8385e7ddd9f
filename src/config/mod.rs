//! `proxy.toml`: raw serde structs (unknown keys are errors) → `${VAR}` expansion →
//! `validate()` → the typed [`Config`] the proxy runs on. `check` runs the same code.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

mod raw;
mod validate;

use raw::{expand_env, RawConfig};
pub use validate::{parse_size, sha256};

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
    /// `None` unless `[query] enabled = true`.
    pub query: Option<QueryConfig>,
}

/// The read path (`[query]`, SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryConfig {
    /// The whole query, from the request to the last byte of the answer.
    pub timeout: Duration,
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
    /// How long a request may wait for room in `max_inflight_bytes` before its 503.
    pub inflight_wait: Duration,
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
    /// HTTP/2 streams a client may keep open at once on one connection.
    pub max_streams_per_connection: u32,
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
    /// Read grants for `/query`, patterns as `databases`.
    pub read_databases: Vec<String>,
    /// May run InfluxQL that changes schema, data or users.
    pub admin: bool,
    pub rate: RateConfig,
}

/// A `[[auth.users]]` entry: a principal that presents a username and password.
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub username: String,
    pub password: PasswordCheck,
    pub databases: Vec<String>,
    /// Read grants for `/query`, patterns as `databases`.
    pub read_databases: Vec<String>,
    /// May run InfluxQL that changes schema, data or users.
    pub admin: bool,
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

/// `[server.tls]`: HTTPS on `listen` (the files are the TLS layer's business).
pub use crate::tls::TlsConfig;

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
                "server.max_streams_per_connection",
                a.max_streams_per_connection != b.max_streams_per_connection,
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

#[cfg(test)]
mod tests {
    use super::validate::without_userinfo;
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
        assert_eq!(config.server.max_streams_per_connection, 100);
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
                "auth.tokens[0].databases: needs at least one pattern (\"*\" for all), or read_databases or admin",
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
        let text = include_str!("../../proxy.toml");
        parse(text).unwrap();
    }
}
