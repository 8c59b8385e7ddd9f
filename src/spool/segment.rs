//! A cluster's files: numbered segments of records, the `cursor` file (`<segment> <offset>`,
//! replaced by rename), recovery at start (every record checked; a torn tail cut off and
//! kept in `rejected/`), and the set-aside copies of damaged records.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::record;

#[derive(Debug, Default)]
pub(super) struct State {
    /// Oldest first; the writer appends to the last when it is `active`.
    pub(super) segments: VecDeque<Segment>,
    /// Replay position in the first segment.
    pub(super) head: u64,
    /// Records not yet replayed.
    pub(super) bytes: u64,
    pub(super) entries: u64,
    /// Bytes handed to the writer, not yet committed or refused.
    pub(super) reserved: u64,
    /// A write was refused for want of room, and nothing has left the queue since.
    pub(super) full: bool,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) seq: u64,
    /// Bytes fsynced (or, for a recovered segment, checked) — never past a torn record.
    pub(super) len: u64,
    /// The writer's current segment: more may come.
    pub(super) active: bool,
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

pub(super) fn write_cursor(dir: &Path, seq: u64, offset: u64) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    std::fs::write(&tmp, format!("{seq} {offset}\n"))?;
    std::fs::rename(tmp, dir.join("cursor"))
}

pub(super) fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("cursor")).ok()?;
    let (seq, offset) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, offset.parse().ok()?))
}

/// What recovery found and set aside.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    pub(super) state: State,
    pub(super) next_seq: u64,
    /// Damaged tails cut off (what a crash mid-append leaves).
    pub(super) torn: u64,
}

/// Rebuilds a queue's state from its directory: checks every record after the cursor. A
/// damaged tail (nothing intact after it: a crash mid-append) is kept in `rejected/` and cut
/// off. Damage with intact records after it is a disk fault: it stays where it is, counted
/// as one entry, for replay to set aside when it gets there (`replay::set_aside_damaged`),
/// and the records after it are replayed.
pub(super) fn recover(dir: &Path) -> io::Result<Recovered> {
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
pub(super) fn keep_damaged(
    dir: &Path,
    file: &File,
    seq: u64,
    offset: u64,
    end: u64,
) -> io::Result<PathBuf> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; (end - offset) as usize];
    file.read_exact_at(&mut bytes, offset)?;
    let path = dir
        .join("rejected")
        .join(format!("damaged-{seq:020}-{offset}.bin"));
    write_synced(&path, &bytes)?;
    Ok(path)
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Record;
    use bytes::Bytes;

    fn record(body: &'static [u8]) -> Record {
        Record {
            spooled_at_ms: 1_700_000_000_000,
            gzip: false,
            query: "db=telegraf&precision=n".into(),
            body: Bytes::from_static(body),
        }
    }

    fn segment(dir: &Path, seq: u64, records: &[Record], tail: &[u8]) -> u64 {
        let mut file = File::create(segment_path(dir, seq)).unwrap();
        for r in records {
            file.write_all(&r.encode_head()).unwrap();
            file.write_all(&r.body).unwrap();
        }
        file.write_all(tail).unwrap();
        records.iter().map(Record::encoded_len).sum()
    }

    fn spool_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rejected")).unwrap();
        dir
    }

    #[test]
    fn cursor_reads_back_what_was_written_and_garbage_reads_as_none() {
        let dir = spool_dir();
        assert_eq!(read_cursor(dir.path()), None);
        write_cursor(dir.path(), 7, 1234).unwrap();
        assert_eq!(read_cursor(dir.path()), Some((7, 1234)));
        std::fs::write(dir.path().join("cursor"), "seven\n").unwrap();
        assert_eq!(read_cursor(dir.path()), None);
    }

    #[test]
    fn recovery_cuts_a_torn_tail_and_keeps_a_copy() {
        let dir = spool_dir();
        let good = segment(
            dir.path(),
            1,
            &[record(b"a v=1 1\n"), record(b"b v=2 2\n")],
            b"IWP1\x40\0",
        );
        let found = recover(dir.path()).unwrap();
        assert_eq!((found.state.entries, found.state.bytes), (2, good));
        assert_eq!(found.torn, 1);
        assert_eq!(found.next_seq, 2);
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len(),
            good
        );
        let kept: Vec<_> = std::fs::read_dir(dir.path().join("rejected"))
            .unwrap()
            .collect();
        assert_eq!(kept.len(), 1);
        // A second recovery finds the same records and nothing torn.
        let again = recover(dir.path()).unwrap();
        assert_eq!((again.state.entries, again.torn), (2, 0));
    }

    #[test]
    fn recovery_starts_at_the_cursor_and_removes_segments_replayed_past() {
        let dir = spool_dir();
        segment(dir.path(), 1, &[record(b"old v=1 1\n")], b"");
        let first = record(b"a v=1 1\n");
        let second = record(b"b v=2 2\n");
        segment(dir.path(), 2, &[first.clone(), second.clone()], b"");
        write_cursor(dir.path(), 2, first.encoded_len()).unwrap();
        let found = recover(dir.path()).unwrap();
        assert!(!segment_path(dir.path(), 1).exists());
        assert_eq!(found.state.head, first.encoded_len());
        assert_eq!(
            (found.state.entries, found.state.bytes),
            (1, second.encoded_len())
        );
        assert_eq!(found.state.segments.len(), 1);
        assert_eq!(found.next_seq, 3);
    }

    #[test]
    fn a_damaged_record_before_intact_ones_is_one_entry_not_a_torn_tail() {
        let dir = spool_dir();
        let a = record(b"a v=1 1\n");
        let c = record(b"c v=3 3\n");
        let mut damaged = a.encode_head();
        damaged.extend_from_slice(&a.body);
        let flip = damaged.len() - 2;
        damaged[flip] ^= 0xff;
        let mut file = File::create(segment_path(dir.path(), 1)).unwrap();
        file.write_all(&damaged).unwrap();
        file.write_all(&c.encode_head()).unwrap();
        file.write_all(&c.body).unwrap();
        drop(file);
        let found = recover(dir.path()).unwrap();
        assert_eq!(found.torn, 0);
        assert_eq!(found.state.entries, 2);
        assert_eq!(found.state.bytes, a.encoded_len() + c.encoded_len());
    }
}
