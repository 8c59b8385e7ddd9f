//! One task per cluster delivers its spooled writes in order once the cluster has a healthy
//! node. A record leaves the queue only after a 2xx, or into `rejected/` (a `.lp` file with
//! the body and a `.json` file saying where it was going and why it was set aside) when the
//! cluster refuses it for good or it is older than `max_age`.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::{now_ms, write_synced, Damage, Done, Position, Queue, Record};
use crate::body::Chunks;
use crate::error::ProxyError;
use crate::rewrite::WriteParams;
use crate::upstream::retry::{self, Decision};
use crate::upstream::{ClusterLookup, Credentials, Forward};

/// Longest pause between replay attempts of one record.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a waiting replay looks at the cluster's health (and at `max_age`).
const HEALTH_POLL: Duration = Duration::from_millis(500);

pub async fn run(queue: Arc<Queue>, lookup: ClusterLookup) {
    loop {
        let at = queue.next().await;
        match queue.read(at).await {
            Ok(Ok(Some(record))) => deliver(&queue, &lookup, at, record).await,
            Ok(Ok(None)) => unreachable!("a position is before the end of its segment"),
            Ok(Err(damage)) => set_aside_damaged(&queue, at, damage).await,
            Err(e) => {
                tracing::error!(cluster = %queue.cluster, segment = at.seq, offset = at.offset, error = %e, "cannot read the spool; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Delivers one record, retrying until the cluster takes it, refuses it for good, or it
/// expires.
async fn deliver(queue: &Queue, lookup: &ClusterLookup, at: Position, record: Record) {
    let len = record.encoded_len();
    let params = match WriteParams::from_v1(Some(&record.query)) {
        Ok(params) => params,
        Err(e) => {
            let why = format!("unreadable spooled query: {e}");
            return reject(queue, at, &record, Done::Rejected, None, &why).await;
        }
    };
    let request_id = HeaderValue::from_str(&format!("spool-{}-{}", at.seq, at.offset))
        .expect("digits and dashes are a valid header");
    let mut failures: u32 = 0;
    loop {
        if queue.expired(&record) {
            let why = format!("older than spool.max_age ({:?})", queue.max_age);
            return reject(queue, at, &record, Done::Expired, None, &why).await;
        }
        // The cluster as configured now: a reload may have changed or removed it.
        let Some(cluster) = lookup(&queue.cluster).filter(|c| c.is_healthy()) else {
            tokio::time::sleep(HEALTH_POLL).await;
            continue;
        };
        let forward = Forward {
            params: params.clone(),
            body: Chunks::from(record.body.clone()),
            gzip: record.gzip,
            request_id: request_id.clone(),
            credentials: Credentials::Cluster,
        };
        match cluster.write(forward).await {
            Ok(accepted) => {
                tracing::debug!(cluster = %queue.cluster, node = %accepted.node, segment = at.seq, offset = at.offset, "spooled write replayed");
                return queue.advance(at, len, Done::Replayed).await;
            }
            Err(error) if matches!(retry::classify_error(&error), Decision::Retry(_)) => {
                if failures == 0 {
                    tracing::warn!(cluster = %queue.cluster, error = %error, "spool replay failed; backing off");
                }
                failures += 1;
                let ceiling = Duration::from_millis(100)
                    .saturating_mul(1 << failures.min(10))
                    .min(MAX_BACKOFF);
                tokio::time::sleep(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
            }
            Err(error) => {
                let status = error.status().as_u16();
                return reject(
                    queue,
                    at,
                    &record,
                    Done::Rejected,
                    Some(status),
                    &upstream_says(&error),
                )
                .await;
            }
        }
    }
}

fn upstream_says(error: &ProxyError) -> String {
    match error {
        ProxyError::Upstream { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Moves a record to `rejected/`: the body as `<stem>.lp` (`.lp.gz` when compressed) and what
/// it was for as `<stem>.json`, both fsynced before the record leaves the queue.
async fn reject(
    queue: &Queue,
    at: Position,
    record: &Record,
    done: Done,
    status: Option<u16>,
    why: &str,
) {
    let stem = format!("{}-{:020}-{}", record.spooled_at_ms, at.seq, at.offset);
    let body_name = format!("{stem}.lp{}", if record.gzip { ".gz" } else { "" });
    let params = WriteParams::from_v1(Some(&record.query)).ok();
    let reason = match done {
        Done::Expired => "expired",
        _ => "rejected",
    };
    let about = serde_json::json!({
        "cluster": queue.cluster,
        "reason": reason,
        "status": status,
        "error": why,
        "query": record.query,
        "db": params.as_ref().map(|p| p.db.clone()),
        "rp": params.as_ref().and_then(|p| p.rp.clone()),
        "body_file": body_name,
        "content_encoding": if record.gzip { "gzip" } else { "identity" },
        "spooled_at_ms": record.spooled_at_ms,
        "set_aside_at_ms": now_ms(),
    });
    let dir = queue.dir.join("rejected");
    loop {
        let (dir, body, about, body_name) = (
            dir.clone(),
            record.body.clone(),
            about.clone(),
            body_name.clone(),
        );
        let stem = stem.clone();
        let saved = tokio::task::spawn_blocking(move || {
            write_synced(&dir.join(&body_name), &body)?;
            let json = serde_json::to_vec_pretty(&about).expect("JSON values serialise");
            write_synced(&dir.join(format!("{stem}.json")), &json)
        })
        .await
        .expect("writing files does not panic");
        match saved {
            Ok(()) => break,
            Err(e) => {
                // The record stays in the queue until it is safely set aside.
                tracing::error!(cluster = %queue.cluster, error = %e, "cannot write to spool rejected/; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::warn!(
        cluster = %queue.cluster,
        reason,
        status,
        error = why,
        kept_as = %dir.join(&body_name).display(),
        "spooled write set aside in rejected/"
    );
    queue.advance(at, record.encoded_len(), done).await;
}

/// Committed bytes that do not read back as a record: the disk changed under us. Keep them,
/// say so, and go on after them.
async fn set_aside_damaged(queue: &Queue, at: Position, damage: Damage) {
    let dir = queue.dir.clone();
    let kept = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(super::segment_path(&dir, at.seq))?;
        super::set_aside_damaged(&dir, &file, at.seq, at.offset, at.end, damage)
    })
    .await
    .expect("copying bytes does not panic");
    if let Err(e) = kept {
        tracing::error!(cluster = %queue.cluster, error = %e, "cannot keep damaged spool bytes; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    }
    queue.advance(at, at.end - at.offset, Done::Rejected).await;
}
