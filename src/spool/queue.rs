//! One cluster's spool: its segments and replay position in memory, the byte and entry
//! accounting against `max_bytes`, and the writer thread that appends records and fsyncs once
//! for all that queued up meanwhile (group commit) before answering each.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{oneshot, Notify};

use crate::config::SpoolConfig;
use crate::metrics::Metrics;

use super::record::{self, Damage, Record};
use super::segment::*;
use super::{lock, now_ms, SpoolError, BATCH_BYTES, SEGMENT_BYTES};

/// One cluster's spool.
pub struct Queue {
    pub cluster: String,
    pub(super) dir: PathBuf,
    pub(super) max_bytes: u64,
    pub(super) max_age: Duration,
    pub(super) state: Mutex<State>,
    pub(super) appends: Mutex<Option<mpsc::Sender<Append>>>,
    pub(super) writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Wakes the replay task when records are committed.
    pub(super) committed: Notify,
    pub(super) bytes_gauge: IntGauge,
    pub(super) entries_gauge: IntGauge,
    pub(super) spooled: IntCounter,
    pub(super) replayed: IntCounter,
    pub(super) rejected: IntCounter,
    pub(super) expired: IntCounter,
    pub(super) refused: IntCounter,
    /// Damaged records with intact ones after them (disk faults), set aside by replay.
    pub(super) damaged: IntCounter,
}

/// Where the next record to replay starts, and where committed data ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) end: u64,
}

pub(super) struct Append {
    pub(super) head: Vec<u8>,
    pub(super) record: Record,
    pub(super) len: u64,
    pub(super) done: oneshot::Sender<io::Result<()>>,
}

impl Queue {
    pub(super) fn open(
        cluster: &str,
        config: &SpoolConfig,
        metrics: &Metrics,
    ) -> io::Result<Arc<Queue>> {
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

    pub(super) async fn append(&self, record: Record) -> Result<(), SpoolError> {
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
    pub(super) fn committed(&self, outcome: &io::Result<()>, batch: &[Append], seq: u64, len: u64) {
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
    pub(super) fn replayed_to(&self, seq: u64, len: u64) -> bool {
        let state = lock(&self.state);
        state.segments.front().is_some_and(|s| s.seq == seq) && state.head >= len
    }

    pub(super) fn started_segment(&self, seq: u64) {
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

    pub(super) fn publish(&self, state: &State) {
        self.bytes_gauge.set(state.bytes as i64);
        self.entries_gauge.set(state.entries as i64);
    }

    /// Waits for the next record to replay; removes segments replayed past.
    pub(super) async fn next(&self) -> Position {
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
    pub(super) async fn read_batch(
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
    pub(super) async fn advance(&self, at: Position, len: u64, records: u64, done: Done) {
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
    pub(super) fn expired(&self, spooled_at_ms: u64) -> bool {
        now_ms().saturating_sub(spooled_at_ms) > self.max_age.as_millis() as u64
    }

    /// Stops taking writes and waits for the writer to commit what it has.
    pub(super) fn close(&self) {
        lock(&self.appends).take();
        if let Some(thread) = lock(&self.writer).take() {
            let _ = thread.join();
        }
    }
}

pub(super) enum Done {
    Replayed,
    Rejected,
    Expired,
    /// Damaged bytes set aside in `rejected/`.
    Damaged,
}

/// The writer thread's side: the open segment and its length.
pub(super) struct Writer {
    pub(super) queue: Arc<Queue>,
    pub(super) file: Option<File>,
    pub(super) seq: u64,
    pub(super) len: u64,
    pub(super) next_seq: u64,
}

impl Writer {
    pub(super) fn run(mut self, appends: mpsc::Receiver<Append>) {
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
    pub(super) fn write(&mut self, batch: &[Append]) -> io::Result<()> {
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

    pub(super) fn rotate(&mut self) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SpoolAck;
    use bytes::Bytes;

    fn record(body: &'static [u8]) -> Record {
        Record {
            spooled_at_ms: now_ms(),
            gzip: false,
            query: "db=telegraf&precision=n".into(),
            body: Bytes::from_static(body),
        }
    }

    fn config(dir: &std::path::Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            max_age: Duration::from_secs(3600),
            ack: SpoolAck::Always,
        }
    }

    #[tokio::test]
    async fn appended_records_are_counted_survive_a_reopen_and_refuse_past_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let one = record(b"m v=1 1\n");
        let room = 3 * one.encoded_len();
        let queue = Queue::open("eu", &config(dir.path(), room), &metrics).unwrap();
        for _ in 0..3 {
            queue.append(one.clone()).await.unwrap();
        }
        assert_eq!(queue.entries(), 3);
        assert!(matches!(
            queue.append(one.clone()).await,
            Err(SpoolError::Full { .. })
        ));
        assert!(!queue.has_room(), "a refusal marks the queue full");
        let gauge = metrics.spool_entries.with_label_values(&["eu"]).get();
        assert_eq!(gauge, 3);
        // The first record to replay is at the start of the first segment.
        let at = queue.next().await;
        assert_eq!(at.offset, 0);
        assert_eq!(at.end, room);
        queue.close();
        drop(queue);
        let reopened = Queue::open("eu", &config(dir.path(), room), &Metrics::new()).unwrap();
        assert_eq!(reopened.entries(), 3);
        reopened.close();
    }

    #[tokio::test]
    async fn a_replayed_batch_frees_its_room_and_moves_the_position_on() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let one = record(b"m v=1 1\n");
        let queue = Queue::open("eu", &config(dir.path(), 1 << 20), &metrics).unwrap();
        queue.append(one.clone()).await.unwrap();
        queue.append(one.clone()).await.unwrap();
        let at = queue.next().await;
        let batch = queue.read_batch(at, 1 << 20).await.unwrap().unwrap();
        assert_eq!(
            batch.len(),
            2,
            "consecutive writes with the same query merge"
        );
        assert_eq!(batch[0].body, one.body);
        let len = batch.iter().map(Record::encoded_len).sum();
        queue.advance(at, len, 2, Done::Replayed).await;
        assert_eq!(queue.entries(), 0);
        assert_eq!(metrics.spool_bytes.with_label_values(&["eu"]).get(), 0);
        assert_eq!(
            metrics
                .spool_writes
                .with_label_values(&["eu", "replayed"])
                .get(),
            2
        );
        queue.close();
    }
}
