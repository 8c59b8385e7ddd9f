//! One task per cluster delivers its spooled writes in order once the cluster has a healthy
//! node. A record leaves the queue only after a 2xx, or into `rejected/` (a `.lp` file with
//! the body and a `.json` file saying where it was going and why it was set aside) when the
//! cluster refuses it for good or it is older than `max_age`.
//!
//! Consecutive plain records for the same database, retention policy, precision and
//! consistency are sent as one write of up to `MERGE_BYTES` (InfluxDB takes a few large
//! writes far faster than many small ones, and a backlog of small writes would otherwise
//! drain more slowly than it grew). If the cluster refuses a merged write for good, its
//! records are sent again one by one, so only the bad ones are set aside.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

use super::queue::{Done, Position, Queue};
use super::segment::{keep_damaged, segment_path, write_synced};
use super::{now_ms, Damage, Record};
use crate::body::Chunks;
use crate::error::ProxyError;
use crate::rewrite::WriteParams;
use crate::upstream::retry::{self, Decision};
use crate::upstream::{ClusterLookup, Credentials, Forward};

/// Longest pause between replay attempts of one write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a waiting replay looks at the cluster's health (and at `max_age`).
const HEALTH_POLL: Duration = Duration::from_millis(500);
/// Largest body of a merged replay write.
const MERGE_BYTES: u64 = 1 << 20;

pub async fn run(queue: Arc<Queue>, lookup: ClusterLookup) {
    // Retriable failures in a row: the pause before reading and trying again grows with them.
    let mut failures: u32 = 0;
    loop {
        let at = queue.next().await;
        match queue.read_batch(at, MERGE_BYTES).await {
            Ok(Ok(records)) => match replay(&queue, &lookup, at, records).await {
                Ok(()) => failures = 0,
                // Read again once a node is healthy, with whatever was spooled meanwhile.
                Err(Stalled::NoHealthyNode) => tokio::time::sleep(HEALTH_POLL).await,
                Err(Stalled::Failed(error)) => {
                    if failures == 0 {
                        tracing::warn!(cluster = %queue.cluster, error = %error, "spool replay failed; backing off");
                    }
                    failures += 1;
                    let ceiling = Duration::from_millis(100)
                        .saturating_mul(1 << failures.min(10))
                        .min(MAX_BACKOFF);
                    tokio::time::sleep(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                }
            },
            Ok(Err(damage)) => set_aside_damaged(&queue, at, damage).await,
            Err(e) => {
                tracing::error!(cluster = %queue.cluster, segment = at.seq, offset = at.offset, error = %e, "cannot read the spool; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Replays `records` (read from `at`, each mergeable with the first): as one write when
/// there are several, else the one alone. `Err` when the cluster could not be tried or a try
/// failed retriably: nothing was advanced past that record, and the records are read again
/// next time (with whatever was spooled meanwhile).
async fn replay(
    queue: &Queue,
    lookup: &ClusterLookup,
    at: Position,
    records: Vec<Record>,
) -> Result<(), Stalled> {
    let first = &records[0];
    let merge = records.len();
    if merge > 1 {
        let len: u64 = records.iter().map(Record::encoded_len).sum();
        let body = join_lines(&records);
        let outcome = match WriteParams::from_v1(Some(&first.query)) {
            Ok(params) => {
                attempt(queue, lookup, at, &params, body, false, first.spooled_at_ms).await
            }
            Err(e) => Outcome::Refused(None, format!("unreadable spooled query: {e}")),
        };
        match outcome {
            Outcome::Delivered => {
                tracing::debug!(cluster = %queue.cluster, writes = merge, "spooled writes replayed as one");
                queue.advance(at, len, merge as u64, Done::Replayed).await;
                return Ok(());
            }
            Outcome::Stalled(why) => return Err(why),
            Outcome::Refused(..) | Outcome::Expired => {
                tracing::debug!(cluster = %queue.cluster, writes = merge, "merged replay not taken; replaying its writes one by one");
            }
        }
    }
    let mut offset = at.offset;
    for record in records {
        let len = record.encoded_len();
        replay_one(queue, lookup, Position { offset, ..at }, record).await?;
        offset += len;
    }
    Ok(())
}

/// The bodies one after another, each ending in a newline.
fn join_lines(records: &[Record]) -> Bytes {
    let size = records.iter().map(|r| r.body.len() + 1).sum();
    let mut body = BytesMut::with_capacity(size);
    for record in records {
        body.extend_from_slice(&record.body);
        if !record.body.ends_with(b"\n") {
            body.extend_from_slice(b"\n");
        }
    }
    body.freeze()
}

/// Replays one record: delivered, or set aside when refused for good or expired.
async fn replay_one(
    queue: &Queue,
    lookup: &ClusterLookup,
    at: Position,
    record: Record,
) -> Result<(), Stalled> {
    let outcome = match WriteParams::from_v1(Some(&record.query)) {
        Ok(params) => {
            let body = record.body.clone();
            attempt(
                queue,
                lookup,
                at,
                &params,
                body,
                record.gzip,
                record.spooled_at_ms,
            )
            .await
        }
        Err(e) => Outcome::Refused(None, format!("unreadable spooled query: {e}")),
    };
    match outcome {
        Outcome::Delivered => {
            tracing::debug!(cluster = %queue.cluster, segment = at.seq, offset = at.offset, "spooled write replayed");
            queue
                .advance(at, record.encoded_len(), 1, Done::Replayed)
                .await
        }
        Outcome::Stalled(why) => return Err(why),
        Outcome::Refused(status, why) => {
            reject(queue, at, &record, Done::Rejected, status, &why).await
        }
        Outcome::Expired => {
            let why = format!("older than spool.max_age ({:?})", queue.max_age);
            reject(queue, at, &record, Done::Expired, None, &why).await
        }
    }
    Ok(())
}

enum Outcome {
    Delivered,
    /// Not delivered, for now: try again later.
    Stalled(Stalled),
    /// A final answer other than 2xx: the upstream's status (if any) and message.
    Refused(Option<u16>, String),
    /// Spooled longer ago than `max_age`.
    Expired,
}

/// Why replay paused.
enum Stalled {
    /// The cluster has no healthy node (or is no longer configured).
    NoHealthyNode,
    /// A retriable failure.
    Failed(ProxyError),
}

/// One try of one write, if it has not expired and the cluster has a healthy node.
async fn attempt(
    queue: &Queue,
    lookup: &ClusterLookup,
    at: Position,
    params: &WriteParams,
    body: Bytes,
    gzip: bool,
    spooled_at_ms: u64,
) -> Outcome {
    if queue.expired(spooled_at_ms) {
        return Outcome::Expired;
    }
    // The cluster as configured now: a reload may have changed or removed it.
    let Some(cluster) = lookup(&queue.cluster).filter(|c| c.is_healthy()) else {
        return Outcome::Stalled(Stalled::NoHealthyNode);
    };
    let forward = Forward {
        params: params.clone(),
        body: Chunks::from(body),
        gzip,
        request_id: HeaderValue::from_str(&format!("spool-{}-{}", at.seq, at.offset))
            .expect("digits and dashes are a valid header"),
        credentials: Credentials::Cluster,
    };
    match cluster.write(forward).await {
        Ok(_) => Outcome::Delivered,
        Err(error) if matches!(retry::classify_error(&error), Decision::Retry(_)) => {
            Outcome::Stalled(Stalled::Failed(error))
        }
        Err(error) => Outcome::Refused(Some(error.status().as_u16()), upstream_says(&error)),
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
    queue.advance(at, record.encoded_len(), 1, done).await;
}

/// Committed bytes that do not read back as a record: the disk changed under us. Keep them
/// in `rejected/`, say so, count them, and go on at the next intact record (or the end of
/// what was committed, when none follows).
async fn set_aside_damaged(queue: &Queue, at: Position, damage: Damage) {
    let dir = queue.dir.clone();
    let kept = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(segment_path(&dir, at.seq))?;
        let next = super::record::next_intact(&file, at.offset + 1, at.end)?;
        let end = next.unwrap_or(at.end);
        let path = keep_damaged(&dir, &file, at.seq, at.offset, end)?;
        Ok::<_, std::io::Error>((end, next.is_some(), path))
    })
    .await
    .expect("copying bytes does not panic");
    let (end, more, path) = match kept {
        Ok(kept) => kept,
        Err(e) => {
            tracing::error!(cluster = %queue.cluster, error = %e, "cannot keep damaged spool bytes; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    tracing::error!(
        cluster = %queue.cluster,
        segment = at.seq,
        offset = at.offset,
        bytes = end - at.offset,
        damage = damage.as_str(),
        kept_as = %path.display(),
        intact_records_follow = more,
        "damaged spool record (a disk fault?): set aside in rejected/, replay goes on after it"
    );
    queue.advance(at, end - at.offset, 1, Done::Damaged).await;
}
