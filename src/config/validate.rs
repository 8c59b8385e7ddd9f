//! Every check of a configuration, each error named by its key path (`clusters.eu.nodes[1]`),
//! all of them collected so `check` prints every one: raw structs in, the typed [`Config`] out.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::raw::*;
use super::*;

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
    pub(super) fn validate(self) -> Result<Config, ConfigErrors> {
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
            inflight_wait: c.duration(
                "server.inflight_wait",
                s.inflight_wait.as_deref(),
                Duration::from_secs(2),
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
            max_streams_per_connection: s.max_streams_per_connection.unwrap_or(100),
            tls: s.tls.as_ref().map(|t| validate_tls(t, &mut c)),
        };
        if !(1..=1000).contains(&server.max_streams_per_connection) {
            c.error("server.max_streams_per_connection", "between 1 and 1000");
        }
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
        let query = self
            .query
            .as_ref()
            .filter(|q| q.enabled)
            .map(|q| QueryConfig {
                timeout: c.duration(
                    "query.timeout",
                    q.timeout.as_deref(),
                    Duration::from_secs(60),
                ),
            });

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
            query,
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

/// What a token or user is granted.
struct Grants<'a> {
    write: &'a [String],
    read: &'a [String],
    admin: bool,
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
    // A principal needs some grant; read grants and admin only matter with `[query]`.
    let mut grants = |c: &mut Checker, path: &str, name: &str, grants: Grants<'_>| {
        if name.is_empty() {
            c.error(path, "needs a name");
        } else if !names.insert(name.to_string()) {
            c.error(path, format!("{name:?} is used by another token or user"));
        }
        if grants.write.is_empty() && grants.read.is_empty() && !grants.admin {
            c.error(
                &format!("{path}.databases"),
                "needs at least one pattern (\"*\" for all), or read_databases or admin",
            );
        }
        for (key, patterns) in [("databases", grants.write), ("read_databases", grants.read)] {
            if patterns.iter().any(|p| p.is_empty() || p.starts_with('/')) {
                c.error(
                    &format!("{path}.{key}"),
                    "patterns are \"db\" or \"db/rp\" globs",
                );
            }
        }
        (grants.write.to_vec(), grants.read.to_vec())
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
        let (databases, read_databases) = grants(
            c,
            &path,
            &t.name,
            Grants {
                write: &t.databases,
                read: &t.read_databases,
                admin: t.admin,
            },
        );
        tokens.push(TokenConfig {
            databases,
            read_databases,
            admin: t.admin,
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
        let (databases, read_databases) = grants(
            c,
            &path,
            &u.username,
            Grants {
                write: &u.databases,
                read: &u.read_databases,
                admin: u.admin,
            },
        );
        users.push(UserConfig {
            databases,
            read_databases,
            admin: u.admin,
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

/// `url` with any `user:password@` replaced by `***@`, for error messages: a password put
/// in a node URL must not reach `check`'s output or the log.
pub(super) fn without_userinfo(url: &str) -> String {
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[rest_at..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_at + i);
    match url[rest_at..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_at], &url[rest_at + at..]),
        None => url.to_string(),
    }
}

/// A node is `http://host:port` or `https://host:port` with an optional path prefix (for
/// nodes behind a path-routing gateway; `/write` and `/ping` are appended to it), no
/// credentials and no query; a trailing `/` is dropped.
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
