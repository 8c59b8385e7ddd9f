//! The durable spool (SPEC §7): writes a cluster could not take are appended to segment
//! files under `<dir>/<cluster>/` and fsynced before they are acknowledged, then replayed in
//! order once the cluster has a healthy node.
//!
//! Per cluster there is one writer thread and one replay task. Writers hand their records to
//! the thread, which writes everything that queued up meanwhile and fsyncs once for the lot
//! (group commit), then answers each. The replay task reads records only up to what has been
//! fsynced, delivers them in order (consecutive small writes for the same destination merged
//! into one, see `replay.rs`), and records its progress in `cursor` (`<segment>
//! <offset>`, replaced by rename, not fsynced: after a crash a few records may be delivered
//! twice, which is harmless because every point was stamped with a timestamp before it was
//! spooled, so a second delivery overwrites the same point with the same values). Segments
//! are removed once replayed past. On start every segment is checked record by record; a torn
//! tail (a crash mid-append) is copied to `rejected/` for inspection, cut off, and reported;
//! a damaged record with intact ones after it (a disk fault) costs only itself: replay sets
//! its bytes aside in `rejected/`, finds the next record whose header and checksum hold, and
//! goes on from there.

mod queue;
mod record;
mod replay;
mod segment;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;

use crate::config::{SpoolAck, SpoolConfig};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::rewrite::WriteParams;
use crate::upstream::retry::{self, Decision};
use crate::upstream::{ClusterLookup, Forward};
pub use queue::Queue;
pub use record::{Damage, Record};

/// A new segment is started once the current one reaches this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// A group commit stops gathering records at this many bytes.
const BATCH_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cluster {cluster:?} could not take the write and its spool is full (max_bytes = {max_bytes})")]
    Full { cluster: String, max_bytes: u64 },
    #[error("cluster {cluster:?} could not take the write and it could not be spooled: {source}")]
    Io {
        cluster: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cluster {cluster:?} could not take the write and the spool is closed (shutting down)"
    )]
    Closed { cluster: String },
}

impl From<SpoolError> for ProxyError {
    fn from(error: SpoolError) -> Self {
        ProxyError::Spool(Box::new(error))
    }
}

/// Every cluster's queue.
pub struct Spool {
    config: SpoolConfig,
    metrics: Arc<Metrics>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    replays: Mutex<Vec<AbortHandle>>,
}

impl Spool {
    /// `max_bytes` as the spool was opened with (a reload does not change it).
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    pub fn open(config: &SpoolConfig, metrics: &Arc<Metrics>) -> io::Result<Spool> {
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create spool dir {}: {e}", config.dir.display()),
            )
        })?;
        Ok(Spool {
            config: config.clone(),
            metrics: metrics.clone(),
            queues: Mutex::new(HashMap::new()),
            replays: Mutex::new(vec![]),
        })
    }

    /// Opens (and recovers) a queue, with its writer thread and replay task, for each named
    /// cluster that has none yet. A cluster dropped from the config keeps its queue; its
    /// writes wait until it is configured again. Must be called within a Tokio runtime.
    pub fn add_clusters(&self, names: &[String], lookup: ClusterLookup) -> io::Result<()> {
        let mut queues = lock(&self.queues);
        for name in names {
            if queues.contains_key(name) {
                continue;
            }
            let queue = Queue::open(name, &self.config, &self.metrics).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open spool {}: {e}",
                        self.config.dir.join(name).display()
                    ),
                )
            })?;
            let replay = tokio::spawn(replay::run(queue.clone(), lookup.clone()));
            lock(&self.replays).push(replay.abort_handle());
            queues.insert(name.clone(), queue);
        }
        Ok(())
    }

    pub fn queue(&self, cluster: &str) -> Option<Arc<Queue>> {
        lock(&self.queues).get(cluster).cloned()
    }

    /// Whether a write with these parameters is answered 204 once spooled (`spool.ack`).
    pub fn acknowledges(&self, params: &WriteParams) -> bool {
        self.config.ack == SpoolAck::Always || params.consistency.as_deref() == Some("any")
    }

    /// Spools `forward` for `cluster`; `Ok` once it is on disk.
    pub async fn append(&self, cluster: &str, forward: &Forward) -> Result<(), SpoolError> {
        let Some(queue) = self.queue(cluster) else {
            return Err(SpoolError::Closed {
                cluster: cluster.to_string(),
            });
        };
        let record = Record {
            spooled_at_ms: now_ms(),
            gzip: forward.gzip,
            query: forward.params.upstream_query(),
            body: forward.body.join(),
        };
        queue.append(record).await
    }

    /// Stops replaying and closes the segments; every acknowledged record is already synced.
    pub async fn close(&self) {
        for replay in lock(&self.replays).drain(..) {
            replay.abort();
        }
        let queues: Vec<_> = lock(&self.queues).values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for queue in queues {
                queue.close();
            }
        })
        .await;
    }
}

/// Whether a failed write may be spooled: only failures that say nothing about the write
/// itself (the same that are retried), never a rejection.
pub fn may_spool(error: &ProxyError) -> bool {
    matches!(error, ProxyError::RequestTimeout)
        || matches!(retry::classify_error(error), Decision::Retry(_))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
