//! `/query`. Without `[query]`, only `CREATE DATABASE` is answered (SPEC §3). With it, the
//! read path (SPEC §10): the parameters are read as
//! InfluxDB reads them, the statements classified (`influxql`) and, in mode `proxy`,
//! authorized one by one before anything is sent; then the query goes to one node of the
//! cluster its databases route to, and the answer streams back as it comes, cut at
//! `[query] timeout`. Only a `SHOW DATABASES` answer for a principal that may not read every
//! database is held, to be filtered (`show_databases`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::{full, principal_of, request_id_of, show_databases, Resp, WriteDetails};
use crate::auth::Principal;
use crate::body::{self, RequestBody};
use crate::config::{AuthMode, QueryConfig};
use crate::error::{json_response, BoxError, ProxyError};
use crate::headers::{X_INFLUXDB_BUILD, X_INFLUXDB_ERROR, X_INFLUXDB_VERSION, X_REQUEST_ID};
use crate::influxql::{self, Class, Statement};
use crate::rewrite::Query;
use crate::state::{Generation, Shared};
use crate::upstream::{Credentials, QueryForward};

/// The parameters InfluxDB's `/query` reads, forwarded in this order when present.
const FORWARDED: [&str; 8] = [
    "q",
    "db",
    "rp",
    "epoch",
    "chunked",
    "chunk_size",
    "pretty",
    "params",
];

/// Headers of the request that say what answer the client wants.
const REQUEST_HEADERS: [HeaderName; 2] = [ACCEPT, ACCEPT_ENCODING];

/// Headers of the answer that describe its body, passed back as they came.
const ANSWER_HEADERS: [HeaderName; 5] = [
    CONTENT_TYPE,
    CONTENT_ENCODING,
    X_INFLUXDB_VERSION,
    X_INFLUXDB_BUILD,
    X_INFLUXDB_ERROR,
];

/// Longest form body read for its `q` on the read path.
const MAX_FORM_BYTES: u64 = 1024 * 1024;
/// The same without `[query]`, where only `CREATE DATABASE` is answered.
const MAX_CREATE_FORM_BYTES: u64 = 64 * 1024;

/// Largest `SHOW DATABASES` answer held to be filtered.
const MAX_FILTERED_ANSWER: usize = 16 * 1024 * 1024;

/// The request's parameters as Go's `FormValue` reads them: a form body's value first,
/// then the URL's.
struct Params {
    values: Vec<(&'static str, String)>,
    user: Option<(String, crate::config::Secret)>,
}

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form-encoded parameters for the upstream (never `u`/`p`).
    fn encoded(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &self.values {
            out.append_pair(key, value);
        }
        out.finish()
    }
}

/// `/query`: the read path with `[query]`, only `CREATE DATABASE` without it.
pub(super) async fn query(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    request: Request<RequestBody>,
    details: &mut WriteDetails,
) -> Result<Resp, ProxyError> {
    match &generation.config.query {
        Some(config) => read(shared, generation, config, request, details).await,
        None => create_database_only(shared, generation, request).await,
    }
}

/// Without `[query]`: Telegraf and others send `CREATE DATABASE` at start; the proxy says
/// yes without touching the cluster (databases are an operator's business). Any other query
/// is refused.
async fn create_database_only(
    shared: &Shared,
    generation: &Generation,
    request: Request<RequestBody>,
) -> Result<Resp, ProxyError> {
    let (parts, incoming) = request.into_parts();
    let principal = principal_of(&parts);
    let url_q = Query::parse(parts.uri.query())?
        .get("q")
        .map(|q| q.into_owned());
    let text = form_text(shared, generation, &parts, incoming, MAX_CREATE_FORM_BYTES).await?;
    // As Go's FormValue: a value in the body wins over the URL's.
    let body_q = match text.as_deref() {
        Some(text) => Query::parse(Some(text))?.get("q").map(|q| q.into_owned()),
        None => None,
    };
    match body_q.or(url_q).as_deref().and_then(create_database_target) {
        Some(db) if principal.as_ref().is_some_and(|p| !p.may_use_database(&db)) => {
            Err(ProxyError::Forbidden {
                principal: principal.map(|p| p.name.clone()).unwrap_or_default(),
                db,
            })
        }
        Some(_) => Ok(created(1)),
        None => Err(ProxyError::QueryNotSupported),
    }
}

/// SPEC §3's answer to `statements` `CREATE DATABASE` statements.
fn created(statements: usize) -> Resp {
    let results: Vec<_> = (0..statements)
        .map(|i| serde_json::json!({ "statement_id": i }))
        .collect();
    full(json_response(
        StatusCode::OK,
        &serde_json::json!({ "results": results }),
    ))
}

/// The database of `CREATE DATABASE <name>` (name bare or double-quoted, optional `;`).
fn create_database_target(q: &str) -> Option<String> {
    let q = q.trim().trim_end_matches(';').trim_end();
    let mut words = q.splitn(3, char::is_whitespace).filter(|w| !w.is_empty());
    let (create, database) = (words.next()?, words.next()?);
    if !create.eq_ignore_ascii_case("create") || !database.eq_ignore_ascii_case("database") {
        return None;
    }
    let name = q[q.find(database)? + database.len()..].trim();
    if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        let unescaped = quoted.replace("\\\"", "\"");
        return (!unescaped.is_empty()).then_some(unescaped);
    }
    let bare = name.chars().all(|c| c.is_alphanumeric() || c == '_') && !name.is_empty();
    bare.then(|| name.to_string())
}

/// A read-path query, from the parameters to the streamed answer.
async fn read(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    config: &QueryConfig,
    request: Request<RequestBody>,
    details: &mut WriteDetails,
) -> Result<Resp, ProxyError> {
    let deadline = Instant::now() + config.timeout;
    let (parts, incoming) = request.into_parts();
    let params = params(shared, generation, &parts, incoming).await?;
    let q = params
        .get("q")
        .filter(|q| !q.is_empty())
        .ok_or(ProxyError::MissingQuery)?;
    let db = params.get("db").unwrap_or("");
    let principal = principal_of(&parts);
    details.db = db.to_string();
    details.principal = principal
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let mode = generation.config.auth.mode;
    let statements = match influxql::classify(q, db) {
        Ok(statements) => Some(statements),
        // influxd refuses what cannot be read; only mode proxy must understand it first.
        Err(error) if mode == AuthMode::Proxy => {
            tracing::info!(principal = %details.principal, %error, "query refused: not classified");
            return Err(ProxyError::Unclassifiable(error.to_string()));
        }
        Err(_) => None,
    };
    if let Some(statements) = &statements {
        details.statements = kinds(statements);
        if let Some(principal) = &principal {
            authorize(principal, statements)?;
        }
        if !statements.is_empty()
            && statements
                .iter()
                .all(|s| matches!(s.class, Class::CreateDatabase(_)))
        {
            // SPEC §3: Telegraf's start-up statement is answered here.
            return Ok(created(statements.len()));
        }
    }
    let cluster_name = route(generation, statements.as_deref(), db)?;
    details.cluster = cluster_name.clone();
    let cluster = generation.cluster(&cluster_name);
    // Which statements' answers list databases this principal may not all see.
    let filter: Vec<usize> = match (&principal, &statements) {
        (Some(p), Some(statements)) if !p.reads_everything() => statements
            .iter()
            .enumerate()
            .filter(|(_, s)| s.class == Class::ShowDatabases)
            .map(|(i, _)| i)
            .collect(),
        _ => vec![],
    };
    let mut headers = HeaderMap::new();
    for name in REQUEST_HEADERS {
        // A filtered answer is rewritten: ask for it uncompressed.
        if name == ACCEPT_ENCODING && !filter.is_empty() {
            continue;
        }
        for value in parts.headers.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(id) = request_id_of(&parts) {
        headers.insert(X_REQUEST_ID, id);
    }
    let credentials = match mode {
        AuthMode::None | AuthMode::Proxy => Credentials::Cluster,
        AuthMode::Passthrough => {
            Credentials::of_client(params.user.as_ref(), parts.headers.get(AUTHORIZATION))
        }
    };
    let forward = QueryForward {
        method: parts.method.clone(),
        params: params.encoded(),
        headers,
        credentials,
        retriable: statements.as_ref().is_some_and(|s| {
            s.iter()
                .all(|s| matches!(s.class, Class::Read | Class::ShowDatabases))
        }),
    };
    let answer = tokio::time::timeout_at(deadline, cluster.query(&forward))
        .await
        .map_err(|_| ProxyError::RequestTimeout)??;
    details.node = answer.node;
    details.tries = answer.tries;
    let (upstream, body) = answer.response.into_parts();
    let mut response = Response::new(Either::Left(Full::default()));
    *response.status_mut() = upstream.status;
    for name in ANSWER_HEADERS {
        for value in upstream.headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    if filter.is_empty() || !upstream.status.is_success() {
        *response.body_mut() = Either::Right(Deadlined::new(body, deadline).boxed_unsync());
        return Ok(response);
    }
    let principal = principal.expect("filters are for principals");
    // The held answer counts against max_inflight_bytes while it is filtered.
    let mut reservation = shared.inflight.reserve();
    let held = tokio::time::timeout_at(
        deadline,
        http_body_util::Limited::new(body, MAX_FILTERED_ANSWER).collect(),
    )
    .await
    .map_err(|_| ProxyError::RequestTimeout)?
    .map_err(|_| ProxyError::Unfilterable("the answer was cut or too large"))?
    .to_bytes();
    reservation.grow(held.len() as u64)?;
    let content_type = upstream
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let pretty = params.get("pretty") == Some("true");
    let filtered = show_databases::filter(
        &held,
        content_type,
        &filter,
        |db| principal.may_see_database(db),
        pretty,
    )?;
    *response.body_mut() = Either::Left(Full::new(Bytes::from(filtered)));
    Ok(response)
}

/// Reads the parameters from the URL and, for a form `POST`, the body.
async fn params(
    shared: &Shared,
    generation: &Generation,
    parts: &http::request::Parts,
    incoming: RequestBody,
) -> Result<Params, ProxyError> {
    let url = Query::parse(parts.uri.query())?;
    let text = if parts.method == Method::POST {
        form_text(shared, generation, parts, incoming, MAX_FORM_BYTES).await?
    } else {
        None
    };
    let body = text.as_deref().map(|t| Query::parse(Some(t))).transpose()?;
    let mut values = vec![];
    for name in FORWARDED {
        let value = body
            .as_ref()
            .and_then(|b| b.get(name))
            .or_else(|| url.get(name));
        if let Some(value) = value {
            values.push((name, value.into_owned()));
        }
    }
    Ok(Params {
        values,
        user: url.user(),
    })
}

/// A form body (`application/x-www-form-urlencoded`) as text, read within `limit`; `None`
/// for any other body, which is not read.
async fn form_text(
    shared: &Shared,
    generation: &Generation,
    parts: &http::request::Parts,
    incoming: RequestBody,
    limit: u64,
) -> Result<Option<String>, ProxyError> {
    let form = parts.headers.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    if !form {
        return Ok(None);
    }
    let mut reservation = shared.inflight.reserve();
    let body = body::read(
        incoming,
        limit,
        generation.config.server.body_read_timeout,
        &mut reservation,
        |_| {},
    )
    .await?
    .join();
    let text = String::from_utf8(body.to_vec()).map_err(|_| ProxyError::InvalidParameter("q"))?;
    Ok(Some(text))
}

/// Mode `proxy`: every statement must be allowed, or nothing runs.
fn authorize(principal: &Principal, statements: &[Statement]) -> Result<(), ProxyError> {
    for statement in statements {
        let allowed = match &statement.class {
            Class::Read | Class::ShowDatabases => true,
            Class::CreateDatabase(db) => {
                if !principal.admin && !principal.may_use_database(db) {
                    tracing::info!(principal = %principal.name, %db, "query refused: database not allowed");
                    return Err(ProxyError::Forbidden {
                        principal: principal.name.clone(),
                        db: db.clone(),
                    });
                }
                true
            }
            Class::Admin => principal.admin,
        };
        if !allowed {
            tracing::info!(principal = %principal.name, kind = statement.kind, "query refused: needs admin");
            return Err(ProxyError::RunForbidden {
                principal: principal.name.clone(),
                kind: statement.kind,
            });
        }
        if let Some(source) = statement
            .reads
            .iter()
            .find(|s| !principal.may_read(&s.db, s.rp.as_deref()))
        {
            tracing::info!(principal = %principal.name, db = %source.db, kind = statement.kind, "query refused: database not readable");
            return Err(ProxyError::ReadForbidden {
                principal: principal.name.clone(),
                db: source.db.clone(),
            });
        }
    }
    Ok(())
}

/// The one cluster the query's databases route to: those its statements name, and `db`
/// where a statement relies on it; none → `default`.
fn route(
    generation: &Generation,
    statements: Option<&[Statement]>,
    db: &str,
) -> Result<String, ProxyError> {
    let config = &generation.config;
    let mut databases: Vec<&str> = vec![];
    match statements {
        Some(statements) => {
            for s in statements {
                databases.extend(s.databases.iter().map(String::as_str));
                if s.uses_default && !db.is_empty() {
                    databases.push(db);
                }
            }
        }
        None if !db.is_empty() => databases.push(db),
        None => {}
    }
    let mut clusters: Vec<&str> = databases.iter().map(|d| config.clusters_for(d).0).collect();
    clusters.sort_unstable();
    clusters.dedup();
    match clusters.as_slice() {
        [] => Ok("default".to_string()),
        [one] => Ok(one.to_string()),
        [init @ .., last] => Err(ProxyError::SpansClusters(format!(
            "{} and {last}",
            init.join(", ")
        ))),
    }
}

/// The statement kinds, for the access log.
fn kinds(statements: &[Statement]) -> String {
    let kinds: Vec<&str> = statements.iter().map(|s| s.kind).collect();
    kinds.join(",")
}

/// An upstream answer passed on as it arrives, until the query's deadline: past it the
/// stream ends with an error, which cuts the client's connection (an HTTP/1.1 chunked
/// answer without its last chunk, an HTTP/2 reset).
struct Deadlined {
    inner: Incoming,
    sleep: Pin<Box<Sleep>>,
}

impl Deadlined {
    fn new(inner: Incoming, deadline: Instant) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl http_body::Body for Deadlined {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            tracing::info!("query answer cut: [query] timeout passed");
            return Poll::Ready(Some(Err("the query's timeout passed".into())));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_create_database_statements() {
        assert_eq!(
            create_database_target("CREATE DATABASE telegraf").as_deref(),
            Some("telegraf")
        );
        assert_eq!(
            create_database_target(" create database \"my db\";").as_deref(),
            Some("my db")
        );
        assert_eq!(create_database_target("CREATE DATABASE"), None);
        assert_eq!(create_database_target("DROP DATABASE x"), None);
        assert_eq!(
            create_database_target("CREATE DATABASE x; DROP DATABASE y"),
            None
        );
        assert_eq!(create_database_target("SELECT * FROM cpu"), None);
    }
}
