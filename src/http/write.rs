//! The write path, top to bottom: parameters and authorization, the body (read within its
//! limits, decoded, stamped), mirrors, then delivery to the cluster or the spool.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use super::{full, principal_of, request_id_of, Resp, WriteDetails};
use crate::auth::Principal;
use crate::body::{self, Chunks, RequestBody};
use crate::config::AuthMode;
use crate::error::{Api, ProxyError};
use crate::gzip;
use crate::headers::X_INFLUXDB_VERSION;
use crate::inflight::Reservation;
use crate::lineproto::{self, TimestampCheck};
use crate::rewrite::WriteParams;
use crate::spool::{self};
use crate::state::{Generation, Shared};
use crate::upstream::{self, Accepted, Credentials, Forward};

/// A write, step by step: its head, its body, the stamp, the mirrors, the delivery, the answer.
pub(super) async fn write(
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    api: Api,
    request: Request<RequestBody>,
    details: &mut WriteDetails,
) -> Result<Resp, ProxyError> {
    let received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (parts, incoming) = request.into_parts();
    let target = prepare(generation, api, &parts, details)?;
    let content_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // The body's bytes count against max_inflight_bytes until the write is answered.
    let mut reservation = reserve(shared, generation, &target, content_length).await?;
    let (wire, quick) = read_body(generation, &target, incoming, &mut reservation).await?;
    let timestamp = target.params.precision.timestamp(received.as_nanos());
    let (body, gzip, points) = stamped(
        shared,
        generation,
        &target,
        (wire, quick),
        timestamp,
        &mut reservation,
    )
    .await?;
    details.bytes = body.len();
    details.points = points;
    let request_id = request_id_of(&parts).unwrap_or_else(|| HeaderValue::from_static("-"));
    let forward = Forward {
        params: target.params,
        body,
        gzip,
        request_id,
        credentials: target.credentials,
    };
    let timeout = generation.config.server.request_timeout;
    mirror(shared, generation, target.mirrors, &forward);
    let primary = generation.cluster(target.primary);
    let accepted = deliver(shared, timeout, &primary, forward).await?;
    Ok(acknowledge(&primary, accepted, details))
}

/// What the head of a write says: where it goes, as whom, and how its body is encoded.
struct Target<'g> {
    params: WriteParams,
    principal: Option<Arc<Principal>>,
    gzip: bool,
    primary: &'g str,
    mirrors: &'g [String],
    credentials: Credentials,
}

/// The head: parameters, authorization (before a byte of the body is read), the encoding,
/// the route and the credentials to send upstream.
fn prepare<'g>(
    generation: &'g Generation,
    api: Api,
    parts: &http::request::Parts,
    details: &mut WriteDetails,
) -> Result<Target<'g>, ProxyError> {
    let config = &generation.config;
    let query = parts.uri.query();
    let params = match api {
        Api::V1 => WriteParams::from_v1(query)?,
        Api::V2 => WriteParams::from_v2(query)?,
    };
    let principal = principal_of(parts);
    details.db.clone_from(&params.db);
    details.rp = params.rp.clone().unwrap_or_default();
    details.principal = principal
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    if let Some(principal) = &principal {
        if !principal.may_write(&params.db, params.rp.as_deref()) {
            tracing::info!(principal = %principal.name, db = %params.db, "write refused: database not allowed");
            return Err(ProxyError::Forbidden {
                principal: principal.name.clone(),
                db: params.db,
            });
        }
    }
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
    let credentials = match config.auth.mode {
        AuthMode::None | AuthMode::Proxy => Credentials::Cluster,
        AuthMode::Passthrough => {
            Credentials::of_client(params.user.as_ref(), parts.headers.get(AUTHORIZATION))
        }
    };
    Ok(Target {
        params,
        principal,
        gzip,
        primary,
        mirrors,
        credentials,
    })
}

/// How many times its compressed size a gzip body is first given room to decode into (the
/// rig's 5,000-line body decodes to 4.5 times); its trailer then says exactly.
const GZIP_ROOM: u64 = 6;

/// Room in max_inflight_bytes for what the body will need, before a byte of it is read:
/// its `Content-Length` and the read buffer its frames keep alive, and for gzip room to
/// decode into. Waits for it up to `inflight_wait`, in arrival order (SPEC §4.1); a
/// chunked body takes its room as it comes.
async fn reserve(
    shared: &Shared,
    generation: &Generation,
    target: &Target<'_>,
    content_length: Option<u64>,
) -> Result<Reservation, ProxyError> {
    let server = &generation.config.server;
    body::declared_within(content_length, server.max_body_bytes)?;
    let upfront = content_length.map_or(0, |n| {
        let decoded = match target.gzip {
            true => n
                .saturating_mul(GZIP_ROOM)
                .min(server.max_decoded_body_bytes),
            false => 0,
        };
        n + body::read_buffer_held(n) + decoded
    });
    let mut reservation = shared.inflight.reserve();
    reservation
        .grow_within(upfront, server.inflight_wait)
        .await?;
    Ok(reservation)
}

/// The body as it arrived, within max_body_bytes, body_read_timeout and the in-flight
/// budget. A plain body is checked for timestamps frame by frame, while each is in cache:
/// the second value is its point count when every point has one.
async fn read_body(
    generation: &Generation,
    target: &Target<'_>,
    incoming: RequestBody,
    reservation: &mut Reservation,
) -> Result<(Chunks, Option<u64>), ProxyError> {
    let server = &generation.config.server;
    let mut check = (!target.gzip).then(TimestampCheck::default);
    let wire = body::read(
        incoming,
        server.max_body_bytes,
        server.body_read_timeout,
        reservation,
        |frame| {
            if let Some(check) = &mut check {
                check.feed(frame);
            }
        },
    )
    .await?;
    Ok((wire, check.and_then(TimestampCheck::finish)))
}

/// The body to forward, whether it is still gzip, and its points: decoded (within
/// max_decoded_body_bytes), held to the principal's byte rate, and stamped where a point
/// lacks a timestamp. A body that needed no change goes as it came (gzip still compressed).
async fn stamped(
    shared: &Shared,
    generation: &Generation,
    target: &Target<'_>,
    (wire, quick): (Chunks, Option<u64>),
    timestamp: i64,
    reservation: &mut Reservation,
) -> Result<(Chunks, bool, u64), ProxyError> {
    let principal = target.principal.as_deref();
    if !target.gzip {
        check_bytes(principal, wire.len() as usize)?;
        return Ok(match quick {
            Some(points) => (wire, false, points),
            None => {
                let (stamped, summary) = lineproto::stamp_lines(wire.join(), timestamp);
                (Chunks::from(stamped), false, summary.points)
            }
        });
    }
    let server = &generation.config.server;
    let limit = server.max_decoded_body_bytes;
    let compressed = wire.join();
    // A body of several frames was copied into one buffer: let the frames (and the read
    // buffers they are slices of) go, so what is held is what `held` says.
    drop(wire);
    let held = compressed.len() as u64;
    // The trailer says what the body decodes to. When that is more room than the head got,
    // give back the guess and wait for the room, holding only the compressed bytes: waiting
    // while holding the guess could leave every request waiting on the others' guesses.
    if let Some(size) = gzip::stated_size(&compressed).filter(|&s| s <= limit) {
        if held + size > reservation.bytes() {
            reservation.shrink_to(held);
            reservation.grow_within(size, server.inflight_wait).await?;
        }
    }
    // On the decoder threads, one per core: more at once would only hold more memory.
    let input = compressed.clone();
    let mut room = std::mem::replace(reservation, shared.inflight.reserve());
    let (decoded, room) = shared
        .decoders
        .run(move || {
            let decoded = gzip::gunzip(&input, limit, &mut room, held);
            (decoded, room)
        })
        .await;
    *reservation = room;
    let decoded = decoded?;
    check_bytes(principal, decoded.len())?;
    let (stamped, summary) = lineproto::stamp(decoded, timestamp);
    Ok(if summary.untimed == 0 && summary.crlf == 0 {
        // Forwarded as it came: the decoded copy is gone, and so is its room.
        drop(stamped);
        reservation.shrink_to(held);
        (Chunks::from(compressed), true, summary.points)
    } else {
        reservation.shrink_to(stamped.len() as u64);
        (Chunks::from(stamped), false, summary.points)
    })
}

/// Mirrors get their copy in the background: their answers never reach the client and never
/// delay it. A mirror's failed copy is spooled (when the spool is on) whatever the client
/// asked for: the client was answered by the primary.
fn mirror(shared: &Arc<Shared>, generation: &Generation, mirrors: &[String], forward: &Forward) {
    let timeout = generation.config.server.request_timeout;
    for mirror in mirrors.iter().map(|name| generation.cluster(name)) {
        let forward = forward.clone();
        let shared = shared.clone();
        shared.clone().background.spawn(async move {
            if let Err(error) = mirror.write_within(timeout, forward.clone()).await {
                mirror.mirror_failed(&error);
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
}

/// The answer to a write the cluster (or the spool) took: counted, then an empty 204.
fn acknowledge(
    primary: &upstream::Cluster,
    accepted: Accepted,
    details: &mut WriteDetails,
) -> Resp {
    details.node = accepted.node;
    details.tries = accepted.tries;
    let (bytes, points) = &primary.written;
    bytes.inc_by(details.bytes);
    points.inc_by(details.points);
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Some(version) = accepted.version {
        response.headers_mut().insert(X_INFLUXDB_VERSION, version);
    }
    full(response)
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
