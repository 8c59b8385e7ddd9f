//! The write path, top to bottom: parameters and authorization, the body (read within its
//! limits, decoded, stamped), mirrors, then delivery to the cluster or the spool.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::request_id::RequestIdValue;
use super::{Resp, WriteDetails};
use crate::auth::Principal;
use crate::body::{self, Chunks};
use crate::config::AuthMode;
use crate::error::{Api, ProxyError};
use crate::lineproto::{self, TimestampCheck};
use crate::rewrite::WriteParams;
use crate::spool::{self};
use crate::state::{Generation, Shared};
use crate::upstream::{self, Accepted, Credentials, Forward};

pub(super) async fn write(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    api: Api,
    request: Request<Incoming>,
    details: &mut WriteDetails,
) -> Result<Resp, ProxyError> {
    let config = &generation.config;
    let received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let query = request.uri().query();
    let params = match api {
        Api::V1 => WriteParams::from_v1(query)?,
        Api::V2 => WriteParams::from_v2(query)?,
    };
    let principal = request.extensions().get::<Arc<Principal>>().cloned();
    details.db.clone_from(&params.db);
    details.rp = params.rp.clone().unwrap_or_default();
    details.principal = principal
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    // Authorization before a byte of the body is read.
    if let Some(principal) = &principal {
        if !principal.may_write(&params.db, params.rp.as_deref()) {
            tracing::info!(principal = %principal.name, db = %params.db, "write refused: database not allowed");
            return Err(ProxyError::Forbidden {
                principal: principal.name.clone(),
                db: params.db,
            });
        }
    }
    let (parts, incoming) = request.into_parts();
    let gzip = match parts
        .headers
        .get(CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"identity") | Some(b"") => false,
        Some(b"gzip") => true,
        Some(other) => {
            return Err(ProxyError::UnsupportedEncoding(
                String::from_utf8_lossy(other).into(),
            ));
        }
    };
    let (primary, mirrors) = config.clusters_for(&params.db);
    details.cluster = primary.to_string();
    let cluster = |name: &str| {
        generation
            .upstreams
            .get(name)
            .cloned()
            .expect("validated routes name existing clusters")
    };
    let credentials = match config.auth.mode {
        AuthMode::None | AuthMode::Proxy => Credentials::Cluster,
        AuthMode::Passthrough => Credentials::Client(client_credentials(
            &params,
            parts.headers.get(AUTHORIZATION),
        )),
    };
    let server = &config.server;
    let content_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut reservation = shared.inflight.reserve();
    // Plain bodies are checked for timestamps frame by frame, while each is in cache.
    let mut check = (!gzip).then(TimestampCheck::default);
    let wire = body::read(
        incoming,
        content_length,
        server.max_body_bytes,
        server.body_read_timeout,
        &mut reservation,
        |frame| {
            if let Some(check) = &mut check {
                check.feed(frame);
            }
        },
    )
    .await?;
    let timestamp = params.precision.timestamp(received.as_nanos());
    let (body, gzip, points) = if gzip {
        let limit = server.max_decoded_body_bytes;
        let compressed = wire.join();
        let input = compressed.clone();
        let decoded = tokio::task::spawn_blocking(move || body::gunzip(&input, limit))
            .await
            .expect("gunzip does not panic")?;
        reservation.grow(decoded.len() as u64)?;
        check_bytes(principal.as_deref(), decoded.len())?;
        let (stamped, summary) = lineproto::stamp(decoded, timestamp);
        // A gzip body that needed no change goes upstream still compressed.
        if summary.untimed == 0 && summary.crlf == 0 {
            (Chunks::from(compressed), true, summary.points)
        } else {
            (Chunks::from(stamped), false, summary.points)
        }
    } else {
        check_bytes(principal.as_deref(), wire.len() as usize)?;
        match check.and_then(TimestampCheck::finish) {
            Some(points) => (wire, false, points),
            None => {
                let (stamped, summary) = lineproto::stamp(wire.join(), timestamp);
                (Chunks::from(stamped), false, summary.points)
            }
        }
    };
    let request_id = parts
        .extensions
        .get::<RequestIdValue>()
        .map(|id| id.0.clone())
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    details.bytes = body.len();
    details.points = points;
    let forward = Forward {
        params,
        body,
        gzip,
        request_id,
        credentials,
    };
    // Mirrors get their copy in the background: their answers never reach the client and
    // never delay it.
    for mirror in mirrors.iter().map(|name| cluster(name)) {
        let (forward, timeout) = (forward.clone(), server.request_timeout);
        let shared = shared.clone();
        shared.clone().background.spawn(async move {
            if let Err(error) = mirror.write_within(timeout, forward.clone()).await {
                mirror.mirror_failed(&error);
                // A mirror's copy is spooled whatever the client asked for: the client was
                // answered by the primary.
                if let Some(spool) = shared.spool.as_ref().filter(|_| spool::may_spool(&error)) {
                    match spool.append(&mirror.name, &forward).await {
                        Ok(()) => tracing::info!(cluster = %mirror.name, "mirror write spooled"),
                        Err(e) => {
                            tracing::error!(error = %e, "mirror write lost: it could not be spooled")
                        }
                    }
                }
            }
        });
    }
    let primary = cluster(primary);
    let accepted = deliver(shared, server.request_timeout, &primary, forward).await?;
    details.node = accepted.node;
    details.tries = accepted.tries;
    shared
        .metrics
        .write_bytes
        .with_label_values(&[primary.name.as_str()])
        .inc_by(details.bytes);
    shared
        .metrics
        .write_points
        .with_label_values(&[primary.name.as_str()])
        .inc_by(details.points);
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Some(version) = accepted.version {
        response.headers_mut().insert("x-influxdb-version", version);
    }
    Ok(response)
}

/// Delivers a write to its primary cluster; when the cluster cannot take it and the spool
/// applies, spools it instead (SPEC §7).
async fn deliver(
    shared: &Arc<Shared>,
    timeout: Duration,
    cluster: &upstream::Cluster,
    forward: Forward,
) -> Result<Accepted, ProxyError> {
    let spool = shared
        .spool
        .as_ref()
        .filter(|s| s.acknowledges(&forward.params));
    let Some(spool) = spool else {
        return cluster.write_within(timeout, forward).await;
    };
    // While the cluster is down and writes already wait in the spool, newer writes queue
    // behind them rather than overtake them.
    let waiting = spool.queue(&cluster.name).is_some_and(|q| q.entries() > 0);
    if waiting && !cluster.is_healthy() {
        spool.append(&cluster.name, &forward).await?;
        return Ok(Accepted::spooled());
    }
    match cluster.write_within(timeout, forward.clone()).await {
        Err(error) if spool::may_spool(&error) => {
            tracing::debug!(cluster = %cluster.name, error = %error, "cluster could not take the write; spooling it");
            spool.append(&cluster.name, &forward).await?;
            Ok(Accepted::spooled())
        }
        other => other,
    }
}

/// The principal's decoded-bytes rate limit.
fn check_bytes(principal: Option<&Principal>, bytes: usize) -> Result<(), ProxyError> {
    match principal {
        Some(p) => p.limits.check_bytes(&p.name, bytes as u64),
        None => Ok(()),
    }
}

/// What mode `passthrough` sends upstream: `u`/`p` as Basic, `Token user:password` as Basic
/// (1.x reads `Token` only that way), any other `Authorization` as it came.
fn client_credentials(params: &WriteParams, header: Option<&HeaderValue>) -> Option<HeaderValue> {
    if let Some((user, password)) = &params.user {
        return Some(upstream::basic(user, password.expose()));
    }
    let header = header?;
    let text = std::str::from_utf8(header.as_bytes()).ok();
    if let Some(pair) = text.and_then(|h| h.strip_prefix("Token ")) {
        if let Some((user, password)) = pair.split_once(':') {
            return Some(upstream::basic(user, password));
        }
    }
    let mut value = header.clone();
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_turns_token_user_password_into_basic() {
        let params = WriteParams::from_v1(Some("db=a")).unwrap();
        let token = HeaderValue::from_static("Token bob:pw");
        assert_eq!(
            client_credentials(&params, Some(&token)).unwrap(),
            upstream::basic("bob", "pw")
        );
        let bearer = HeaderValue::from_static("Bearer xyz");
        assert_eq!(
            client_credentials(&params, Some(&bearer)).unwrap(),
            "Bearer xyz"
        );
        let with_up = WriteParams::from_v1(Some("db=a&u=al&p=s")).unwrap();
        assert_eq!(
            client_credentials(&with_up, Some(&bearer)).unwrap(),
            upstream::basic("al", "s")
        );
        assert!(client_credentials(&params, None).is_none());
    }
}
