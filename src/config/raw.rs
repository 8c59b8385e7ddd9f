//! `proxy.toml` as written: serde structs that refuse unknown keys, and `${VAR}` /
//! `${VAR:-default}` expansion of every string before they are read.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Replaces `${VAR}` and `${VAR:-default}` in every string value. Only `${` starts a
/// variable, so a lone `$` (as in argon2 PHC strings) stays literal.
pub(super) fn expand_env(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default)]
    pub(super) rate_limit: RawRateLimit,
    #[serde(default)]
    pub(super) clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    pub(super) spool: Option<RawSpool>,
    pub(super) query: Option<RawQuery>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuery {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) dir: Option<String>,
    pub(super) max_bytes: Option<RawSize>,
    pub(super) max_age: Option<String>,
    pub(super) ack: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) max_body_bytes: Option<RawSize>,
    pub(super) max_decoded_body_bytes: Option<RawSize>,
    pub(super) max_inflight_bytes: Option<RawSize>,
    pub(super) inflight_wait: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) keepalive_timeout: Option<String>,
    pub(super) body_read_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) realm: Option<String>,
    pub(super) worker_threads: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_streams_per_connection: Option<u32>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: String,
    pub(super) key_file: String,
    pub(super) client_ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) mode: Option<String>,
    #[serde(default)]
    pub(super) tokens: Vec<RawToken>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    pub(super) jwt: Option<RawJwt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) name: String,
    pub(super) token: String,
    #[serde(default)]
    pub(super) databases: Vec<String>,
    #[serde(default)]
    pub(super) read_databases: Vec<String>,
    #[serde(default)]
    pub(super) admin: bool,
    pub(super) rate_limit: Option<RawRateOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) username: String,
    pub(super) password: String,
    #[serde(default)]
    pub(super) databases: Vec<String>,
    #[serde(default)]
    pub(super) read_databases: Vec<String>,
    #[serde(default)]
    pub(super) admin: bool,
    pub(super) rate_limit: Option<RawRateOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub(super) shared_secret: String,
    pub(super) leeway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_second: Option<u32>,
    pub(super) bytes_per_second: Option<RawSize>,
    pub(super) burst_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateOverride {
    pub(super) requests_per_second: Option<u32>,
    pub(super) bytes_per_second: Option<RawSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) nodes: Vec<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) max_retries: Option<u32>,
    pub(super) retry_backoff: Option<String>,
    pub(super) health_check_interval: Option<String>,
    pub(super) tls_ca_file: Option<String>,
    #[serde(default)]
    pub(super) tls_insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) database: String,
    pub(super) cluster: String,
    #[serde(default)]
    pub(super) mirror: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}
