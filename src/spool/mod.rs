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

mod record;
mod replay;

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::config::{SpoolAck, SpoolConfig};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::rewrite::WriteParams;
use crate::upstream::retry::{self, Decision};
use crate::upstream::{ClusterLookup, Forward};
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

/// One cluster's spool.
pub struct Queue {
    pub cluster: String,
    dir: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    state: Mutex<State>,
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Wakes the replay task when records are committed.
    committed: Notify,
    bytes_gauge: IntGauge,
    entries_gauge: IntGauge,
    spooled: IntCounter,
    replayed: IntCounter,
    rejected: IntCounter,
    expired: IntCounter,
    refused: IntCounter,
    /// Damaged records with intact ones after them (disk faults), set aside by replay.
    damaged: IntCounter,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first; the writer appends to the last when it is `active`.
    segments: VecDeque<Segment>,
    /// Replay position in the first segment.
    head: u64,
    /// Records not yet replayed.
    bytes: u64,
    entries: u64,
    /// Bytes handed to the writer, not yet committed or refused.
    reserved: u64,
    /// A write was refused for want of room, and nothing has left the queue since.
    full: bool,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Bytes fsynced (or, for a recovered segment, checked) — never past a torn record.
    len: u64,
    /// The writer's current segment: more may come.
    active: bool,
}

/// Where the next record to replay starts, and where committed data ends.
#[derive(Debug, Clone, Copy)]
struct Position {
    seq: u64,
    offset: u64,
    end: u64,
}

struct Append {
    head: Vec<u8>,
    record: Record,
    len: u64,
    done: oneshot::Sender<io::Result<()>>,
}

impl Queue {
    fn open(cluster: &str, config: &SpoolConfig, metrics: &Metrics) -> io::Result<Arc<Queue>> {
        let dir = config.dir.join(cluster);
        std::fs::create_dir_all(dir.join("rejected"))?;
        let Recovered {
            state,
            next_seq,
            torn,
        } = recover(&dir)?;
        let counter = |result: &str| metrics.spool_writes.with_label_values(&[cluster, result]);
        counter("torn").inc_by(torn);
        let queue = Arc::new(Queue {
            cluster: cluster.to_string(),
            max_bytes: config.max_bytes,
            max_age: config.max_age,
            bytes_gauge: metrics.spool_bytes.with_label_values(&[cluster]),
            entries_gauge: metrics.spool_entries.with_label_values(&[cluster]),
            spooled: counter("spooled"),
            replayed: counter("replayed"),
            rejected: counter("rejected"),
            expired: counter("expired"),
            refused: counter("refused"),
            damaged: counter("damaged"),
            state: Mutex::new(state),
            appends: Mutex::new(None),
            writer: Mutex::new(None),
            committed: Notify::new(),
            dir,
        });
        {
            let state = lock(&queue.state);
            queue.publish(&state);
            if state.entries > 0 {
                tracing::info!(
                    cluster,
                    entries = state.entries,
                    bytes = state.bytes,
                    "spool holds writes from before the restart; they will be replayed"
                );
            }
        }
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            queue: queue.clone(),
            file: None,
            seq: 0,
            len: 0,
            next_seq,
        };
        let thread = std::thread::Builder::new()
            .name(format!("spool-{cluster}"))
            .spawn(move || writer.run(receiver))?;
        *lock(&queue.appends) = Some(sender);
        *lock(&queue.writer) = Some(thread);
        Ok(queue)
    }

    /// Whether the queue takes writes: it is open and has not refused one for want of room
    /// since it last shrank (`/ready` uses this).
    pub fn has_room(&self) -> bool {
        let full = lock(&self.state).full;
        !full && lock(&self.appends).is_some()
    }

    /// Records waiting to be replayed.
    pub fn entries(&self) -> u64 {
        lock(&self.state).entries
    }

    async fn append(&self, record: Record) -> Result<(), SpoolError> {
        let len = record.encoded_len();
        {
            let mut state = lock(&self.state);
            if state.bytes + state.reserved + len > self.max_bytes {
                state.full = true;
                self.refused.inc();
                return Err(SpoolError::Full {
                    cluster: self.cluster.clone(),
                    max_bytes: self.max_bytes,
                });
            }
            state.reserved += len;
        }
        let (done, answer) = oneshot::channel();
        let append = Append {
            head: record.encode_head(),
            record,
            len,
            done,
        };
        let sent = lock(&self.appends)
            .as_ref()
            .is_some_and(|s| s.send(append).is_ok());
        let closed = || SpoolError::Closed {
            cluster: self.cluster.clone(),
        };
        if !sent {
            lock(&self.state).reserved -= len;
            return Err(closed());
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SpoolError::Io {
                cluster: self.cluster.clone(),
                source,
            }),
            Err(_) => Err(closed()),
        }
    }

    /// Called by the writer after each group commit.
    fn committed(&self, outcome: &io::Result<()>, batch: &[Append], seq: u64, len: u64) {
        let bytes: u64 = batch.iter().map(|a| a.len).sum();
        let mut state = lock(&self.state);
        state.reserved -= bytes;
        match outcome {
            Ok(()) => {
                state.bytes += bytes;
                state.entries += batch.len() as u64;
                if let Some(segment) = state.segments.back_mut().filter(|s| s.seq == seq) {
                    segment.len = len;
                }
                self.spooled.inc_by(batch.len() as u64);
            }
            Err(_) => self.refused.inc_by(batch.len() as u64),
        }
        self.publish(&state);
        drop(state);
        self.committed.notify_one();
    }

    /// Whether replay has reached `len` in segment `seq`.
    fn replayed_to(&self, seq: u64, len: u64) -> bool {
        let state = lock(&self.state);
        state.segments.front().is_some_and(|s| s.seq == seq) && state.head >= len
    }

    fn started_segment(&self, seq: u64) {
        let mut state = lock(&self.state);
        if let Some(last) = state.segments.back_mut() {
            last.active = false;
        }
        state.segments.push_back(Segment {
            seq,
            len: 0,
            active: true,
        });
        drop(state);
        // A replay waiting at the end of the old segment may now move on.
        self.committed.notify_one();
    }

    fn publish(&self, state: &State) {
        self.bytes_gauge.set(state.bytes as i64);
        self.entries_gauge.set(state.entries as i64);
    }

    /// Waits for the next record to replay; removes segments replayed past.
    async fn next(&self) -> Position {
        loop {
            let finished = {
                let mut state = lock(&self.state);
                match state.segments.front() {
                    Some(s) if state.head < s.len => {
                        return Position {
                            seq: s.seq,
                            offset: state.head,
                            end: s.len,
                        }
                    }
                    Some(s) if !s.active => {
                        let seq = s.seq;
                        state.segments.pop_front();
                        state.head = 0;
                        Some(seq)
                    }
                    _ => None,
                }
            };
            match finished {
                Some(seq) => {
                    let dir = self.dir.clone();
                    let removed = tokio::task::spawn_blocking(move || {
                        std::fs::remove_file(segment_path(&dir, seq))?;
                        write_cursor(&dir, seq + 1, 0)
                    })
                    .await
                    .expect("file removal does not panic");
                    if let Err(e) = removed {
                        tracing::warn!(cluster = %self.cluster, segment = seq, error = %e, "could not remove a replayed spool segment");
                    }
                }
                None => self.committed.notified().await,
            }
        }
    }

    /// Reads the records from `at` on that can go upstream as one write with the first
    /// (`Record::merges_with`), until their bodies pass `max_body_bytes` (at least one), the
    /// committed end, or damage (blocking IO, off the async threads). `Err(damage)` only when
    /// the first record is damaged; later damage ends the batch before it, to be met first
    /// next time.
    async fn read_batch(
        &self,
        at: Position,
        max_body_bytes: u64,
    ) -> io::Result<Result<Vec<Record>, Damage>> {
        let path = segment_path(&self.dir, at.seq);
        tokio::task::spawn_blocking(move || {
            let file = File::open(path)?;
            let mut records: Vec<Record> = vec![];
            let (mut offset, mut body_bytes) = (at.offset, 0);
            while body_bytes < max_body_bytes {
                match record::read_at(&file, offset, at.end)? {
                    Ok(Some(record))
                        if records.first().is_some_and(|f| !f.merges_with(&record)) =>
                    {
                        break
                    }
                    Ok(Some(record)) => {
                        offset += record.encoded_len();
                        body_bytes += record.body.len() as u64;
                        records.push(record);
                    }
                    Ok(None) => break,
                    Err(damage) if records.is_empty() => return Ok(Err(damage)),
                    Err(_) => break,
                }
            }
            Ok(Ok(records))
        })
        .await
        .expect("reading records does not panic")
    }

    /// `records` records taking `len` bytes from `at` were delivered (`Done::Replayed`) or
    /// set aside in `rejected/`.
    async fn advance(&self, at: Position, len: u64, records: u64, done: Done) {
        {
            let mut state = lock(&self.state);
            state.head = at.offset + len;
            state.bytes = state.bytes.saturating_sub(len);
            state.entries = state.entries.saturating_sub(records);
            state.full = false;
            self.publish(&state);
        }
        match done {
            Done::Replayed => self.replayed.inc_by(records),
            Done::Rejected => self.rejected.inc_by(records),
            Done::Expired => self.expired.inc_by(records),
            Done::Damaged => self.damaged.inc_by(records),
        }
        let dir = self.dir.clone();
        let saved =
            tokio::task::spawn_blocking(move || write_cursor(&dir, at.seq, at.offset + len))
                .await
                .expect("writing the cursor does not panic");
        if let Err(e) = saved {
            // Only costs a duplicate delivery after a restart.
            tracing::warn!(cluster = %self.cluster, error = %e, "could not save the spool cursor");
        }
    }

    /// Whether a write spooled at `spooled_at_ms` is past `max_age`.
    fn expired(&self, spooled_at_ms: u64) -> bool {
        now_ms().saturating_sub(spooled_at_ms) > self.max_age.as_millis() as u64
    }

    /// Stops taking writes and waits for the writer to commit what it has.
    fn close(&self) {
        lock(&self.appends).take();
        if let Some(thread) = lock(&self.writer).take() {
            let _ = thread.join();
        }
    }
}

enum Done {
    Replayed,
    Rejected,
    Expired,
    /// Damaged bytes set aside in `rejected/`.
    Damaged,
}

/// The writer thread's side: the open segment and its length.
struct Writer {
    queue: Arc<Queue>,
    file: Option<File>,
    seq: u64,
    len: u64,
    next_seq: u64,
}

impl Writer {
    fn run(mut self, appends: mpsc::Receiver<Append>) {
        while let Ok(first) = appends.recv() {
            let mut size = first.len;
            let mut batch = vec![first];
            while size < BATCH_BYTES {
                match appends.try_recv() {
                    Ok(more) => {
                        size += more.len;
                        batch.push(more);
                    }
                    Err(_) => break,
                }
            }
            let outcome = self.write(&batch);
            if let Err(e) = &outcome {
                tracing::error!(cluster = %self.queue.cluster, error = %e, writes = batch.len(), "spool append failed; the writes were refused (503)");
            }
            self.queue.committed(&outcome, &batch, self.seq, self.len);
            for append in batch {
                let answer = match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                let _ = append.done.send(answer);
            }
        }
        if let Some(file) = self.file.take() {
            let _ = file.sync_all();
        }
    }

    /// Appends the batch and fsyncs it. On failure the segment is cut back to where the batch
    /// began, so no segment holds a partial record before intact ones.
    fn write(&mut self, batch: &[Append]) -> io::Result<()> {
        // A full segment, or one replay has emptied (so its file can go now rather than
        // when it fills up), is followed by a new one.
        if self.file.is_none()
            || self.len >= SEGMENT_BYTES
            || (self.len > 0 && self.queue.replayed_to(self.seq, self.len))
        {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("a segment is open");
        let start = self.len;
        let written = batch
            .iter()
            .try_for_each(|a| {
                file.write_all(&a.head)?;
                file.write_all(&a.record.body)
            })
            .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.len = start + batch.iter().map(|a| a.len).sum::<u64>();
                Ok(())
            }
            Err(e) => {
                if file.set_len(start).and_then(|()| file.sync_data()).is_err() {
                    // Start afresh; recovery will find and report this segment's torn tail.
                    self.file = None;
                }
                Err(e)
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        let path = segment_path(&self.queue.dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // The new name must survive a crash as surely as the records in it.
        File::open(&self.queue.dir)?.sync_all()?;
        self.next_seq += 1;
        self.file = Some(file);
        self.seq = seq;
        self.len = 0;
        self.queue.started_segment(seq);
        Ok(())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn write_cursor(dir: &Path, seq: u64, offset: u64) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    std::fs::write(&tmp, format!("{seq} {offset}\n"))?;
    std::fs::rename(tmp, dir.join("cursor"))
}

fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("cursor")).ok()?;
    let (seq, offset) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, offset.parse().ok()?))
}

/// What recovery found and set aside.
#[derive(Debug, Default)]
struct Recovered {
    state: State,
    next_seq: u64,
    /// Damaged tails cut off (what a crash mid-append leaves).
    torn: u64,
}

/// Rebuilds a queue's state from its directory: checks every record after the cursor. A
/// damaged tail (nothing intact after it: a crash mid-append) is kept in `rejected/` and cut
/// off. Damage with intact records after it is a disk fault: it stays where it is, counted
/// as one entry, for replay to set aside when it gets there (`replay::set_aside_damaged`),
/// and the records after it are replayed.
fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let stem = name.to_str()?.strip_suffix(".seg")?;
            (stem.len() == 20).then(|| stem.parse().ok())?
        })
        .collect();
    seqs.sort_unstable();
    let cursor = read_cursor(dir);
    let mut found = Recovered::default();
    let state = &mut found.state;
    for &seq in &seqs {
        let path = segment_path(dir, seq);
        let start = match cursor {
            Some((at, _)) if seq < at => {
                // Replayed past before a crash kept it from being removed.
                std::fs::remove_file(&path)?;
                continue;
            }
            Some((at, offset)) if seq == at => offset,
            _ => 0,
        };
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let end = file.metadata()?.len();
        let mut offset = start.min(end);
        if state.segments.is_empty() {
            state.head = offset;
        }
        loop {
            match record::read_at(&file, offset, end)? {
                Ok(Some(record)) => {
                    offset += record.encoded_len();
                    state.bytes += record.encoded_len();
                    state.entries += 1;
                }
                Ok(None) => break,
                Err(damage) => match record::next_intact(&file, offset + 1, end)? {
                    Some(next) => {
                        tracing::warn!(
                            spool = %dir.display(),
                            segment = seq,
                            offset,
                            bytes = next - offset,
                            damage = damage.as_str(),
                            "spool segment has a damaged record with intact ones after it (a disk fault?): \
                             it will be set aside in rejected/ and the records after it replayed"
                        );
                        state.bytes += next - offset;
                        state.entries += 1;
                        offset = next;
                    }
                    None => {
                        let kept = keep_damaged(dir, &file, seq, offset, end)?;
                        tracing::warn!(
                            spool = %dir.display(),
                            segment = seq,
                            offset,
                            bytes = end - offset,
                            damage = damage.as_str(),
                            kept_as = %kept.display(),
                            "spool segment ends in a damaged record (a crash mid-append?): not replayed, kept in rejected/"
                        );
                        file.set_len(offset)?;
                        file.sync_all()?;
                        found.torn += 1;
                        break;
                    }
                },
            }
        }
        state.segments.push_back(Segment {
            seq,
            len: offset,
            active: false,
        });
    }
    found.next_seq = seqs.last().map_or(1, |s| s + 1);
    Ok(found)
}

/// Copies the damaged bytes `offset..end` of a segment into `rejected/`, fsynced; returns
/// the copy's path.
fn keep_damaged(dir: &Path, file: &File, seq: u64, offset: u64, end: u64) -> io::Result<PathBuf> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; (end - offset) as usize];
    file.read_exact_at(&mut bytes, offset)?;
    let path = dir
        .join("rejected")
        .join(format!("damaged-{seq:020}-{offset}.bin"));
    write_synced(&path, &bytes)?;
    Ok(path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}
