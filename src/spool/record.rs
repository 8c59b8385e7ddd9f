//! One spooled write on disk. A record is a 12-byte header — `IWP1`, the payload's length
//! (u32 LE) and its CRC-32 (u32 LE) — then the payload: when it was spooled (ms since the
//! epoch, u64 LE), a flags byte (bit 0: the body is gzip), the upstream query's length (u16
//! LE), the query (`db=…&rp=…&precision=…&consistency=…`) and the body as it would have gone
//! upstream (timestamps already stamped). A record is only ever read back whole and with a
//! matching checksum; anything else at its place is a torn or damaged tail.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

const MAGIC: [u8; 4] = *b"IWP1";
pub const HEADER: u64 = 12;
/// Spooled-at, flags, query length.
const META: usize = 8 + 1 + 2;
const GZIP: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub spooled_at_ms: u64,
    pub gzip: bool,
    /// The 1.x `/write` query the write goes upstream with.
    pub query: String,
    pub body: Bytes,
}

/// Why the bytes at an offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than the header or the payload needs: a write cut short.
    Truncated,
    BadMagic,
    BadChecksum,
    /// The checksum matched but the payload does not parse: written by something else.
    BadPayload,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::Truncated => "truncated record",
            Damage::BadMagic => "bad record marker",
            Damage::BadChecksum => "checksum mismatch",
            Damage::BadPayload => "unreadable payload",
        }
    }
}

impl Record {
    /// Whether `next` can be sent upstream in one write with this record: both plain (not
    /// gzip) and for the same query (db, rp, precision, consistency).
    pub fn merges_with(&self, next: &Record) -> bool {
        !self.gzip && !next.gzip && self.query == next.query
    }

    /// Bytes the record takes on disk.
    pub fn encoded_len(&self) -> u64 {
        HEADER + (META + self.query.len() + self.body.len()) as u64
    }

    /// The header and everything before the body; the body follows it on disk as it is.
    /// Queries longer than 64 KiB cannot occur (`upstream_query` of validated parameters).
    pub fn encode_head(&self) -> Vec<u8> {
        let query_len = u16::try_from(self.query.len()).expect("upstream queries are short");
        let payload_len = META + self.query.len() + self.body.len();
        let mut meta = Vec::with_capacity(HEADER as usize + META + self.query.len());
        meta.extend_from_slice(&MAGIC);
        meta.extend_from_slice(&(payload_len as u32).to_le_bytes());
        meta.extend_from_slice(&[0; 4]); // checksum, below
        meta.extend_from_slice(&self.spooled_at_ms.to_le_bytes());
        meta.push(if self.gzip { GZIP } else { 0 });
        meta.extend_from_slice(&query_len.to_le_bytes());
        meta.extend_from_slice(self.query.as_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&meta[HEADER as usize..]);
        crc.update(&self.body);
        meta[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
        meta
    }

    fn decode(payload: Vec<u8>) -> Option<Record> {
        let spooled_at_ms = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
        let flags = *payload.get(8)?;
        let query_len = u16::from_le_bytes(payload.get(9..11)?.try_into().ok()?) as usize;
        let query = std::str::from_utf8(payload.get(META..META + query_len)?)
            .ok()?
            .to_string();
        let body = Bytes::from(payload).slice(META + query_len..);
        Some(Record {
            spooled_at_ms,
            gzip: flags & GZIP != 0,
            query,
            body,
        })
    }
}

/// Reads the record at `offset` of a segment whose valid data ends at `end`. `Ok(None)` at
/// `end`; `Err(Ok(damage))` when the bytes there are not a whole, intact record.
pub fn read_at(file: &File, offset: u64, end: u64) -> io::Result<Result<Option<Record>, Damage>> {
    if offset >= end {
        return Ok(Ok(None));
    }
    if end - offset < HEADER {
        return Ok(Err(Damage::Truncated));
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, offset)?;
    if header[..4] != MAGIC {
        return Ok(Err(Damage::BadMagic));
    }
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as u64;
    let checksum = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if end - offset - HEADER < len {
        return Ok(Err(Damage::Truncated));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, offset + HEADER)?;
    if crc32fast::hash(&payload) != checksum {
        return Ok(Err(Damage::BadChecksum));
    }
    Ok(Record::decode(payload).ok_or(Damage::BadPayload)).map(|r| r.map(Some))
}

/// Bytes read at a time while looking for the next record after damage.
const SCAN_CHUNK: usize = 1 << 20;

/// Where the first intact record after `from` starts (before `end`): the next `IWP1` whose
/// length and checksum hold. `None` when there is none, so the damage runs to the end (a
/// torn tail). Reads the file a chunk at a time, never the whole segment at once.
pub fn next_intact(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let mut at = from;
    while at < end {
        let len = (end - at).min(SCAN_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..len], at)?;
        for found in memchr::memmem::find_iter(&chunk[..len], &MAGIC) {
            let candidate = at + found as u64;
            if let Ok(Some(_)) = read_at(file, candidate, end)? {
                return Ok(Some(candidate));
            }
        }
        if at + (len as u64) >= end {
            break;
        }
        // Step back so a marker across the chunk boundary is not missed.
        at += (len - (MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(body: &'static [u8]) -> Record {
        Record {
            spooled_at_ms: 1_700_000_000_123,
            gzip: false,
            query: "db=telegraf&precision=ns&consistency=any".into(),
            body: Bytes::from_static(body),
        }
    }

    fn write(records: &[Record]) -> (tempfile::NamedTempFile, u64) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for r in records {
            file.write_all(&r.encode_head()).unwrap();
            file.write_all(&r.body).unwrap();
        }
        let len = file.as_file().metadata().unwrap().len();
        (file, len)
    }

    #[test]
    fn records_read_back_as_written() {
        let (a, b) = (record(b"cpu v=1 1\n"), record(b""));
        let b = Record { gzip: true, ..b };
        let (file, end) = write(&[a.clone(), b.clone()]);
        assert_eq!(end, a.encoded_len() + b.encoded_len());
        let f = file.as_file();
        assert_eq!(read_at(f, 0, end).unwrap(), Ok(Some(a.clone())));
        assert_eq!(read_at(f, a.encoded_len(), end).unwrap(), Ok(Some(b)));
        assert_eq!(read_at(f, end, end).unwrap(), Ok(None));
    }

    #[test]
    fn every_truncation_of_a_record_is_detected() {
        let r = record(b"cpu v=1 1\nmem v=2 2\n");
        let (file, end) = write(&[r]);
        for cut in 1..end {
            let damage = read_at(file.as_file(), 0, cut).unwrap();
            assert_eq!(damage, Err(Damage::Truncated), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let r = record(b"cpu v=1 1\n");
        let (file, end) = write(&[r]);
        let original = std::fs::read(file.path()).unwrap();
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0x10;
            std::fs::write(file.path(), &bytes).unwrap();
            let f = File::open(file.path()).unwrap();
            let read = read_at(&f, 0, end).unwrap();
            assert!(read.is_err(), "flip at byte {i} went unnoticed: {read:?}");
        }
    }

    #[test]
    fn the_next_intact_record_is_found_after_damage_and_none_after_a_torn_tail() {
        let records: Vec<Record> = (0..5)
            .map(|_| record(b"cpu v=1 1\nIWP1 in a body\n"))
            .collect();
        let (file, end) = write(&records);
        let len = records[0].encoded_len();
        let mut bytes = std::fs::read(file.path()).unwrap();
        // A flipped bit in the payload of the third record.
        bytes[(2 * len + HEADER + 3) as usize] ^= 0x01;
        std::fs::write(file.path(), &bytes).unwrap();
        let f = File::open(file.path()).unwrap();
        assert_eq!(read_at(&f, 2 * len, end).unwrap(), Err(Damage::BadChecksum));
        assert_eq!(next_intact(&f, 2 * len + 1, end).unwrap(), Some(3 * len));
        // Damage in the last record: nothing intact follows.
        assert_eq!(next_intact(&f, 4 * len + 1, end).unwrap(), None);
        assert_eq!(next_intact(&f, 4 * len + 1, end - 5).unwrap(), None);
    }

    #[test]
    fn a_record_across_a_scan_chunk_boundary_is_found() {
        // Sized so that, scanning from byte 1, the next marker starts two bytes before the
        // end of the first chunk.
        let overhead = record(b"").encoded_len() as usize;
        let big = Record {
            body: Bytes::from(vec![b'x'; SCAN_CHUNK - 1 - overhead]),
            ..record(b"")
        };
        assert_eq!(big.encoded_len() as usize, SCAN_CHUNK - 1);
        let small = record(b"cpu v=1 1\n");
        let (file, end) = write(&[big.clone(), small]);
        let f = file.as_file();
        assert_eq!(next_intact(f, 1, end).unwrap(), Some(big.encoded_len()));
    }
}
