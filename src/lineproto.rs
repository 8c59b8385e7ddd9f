//! A line-protocol scanner that splits a body into points exactly as InfluxDB 1.x does, and
//! the one edit the proxy makes to a body: stamping points that carry no timestamp.
//!
//! The scanner mirrors `scanLine` in InfluxDB's `models/points.go`: a newline ends a point
//! unless it is escaped or inside a quoted string field value; a double quote only opens a
//! string after the first unescaped space and when more `=` than `,` have been seen in the
//! field set (quotes in measurements, tag keys and tag values are literal). It jumps between
//! the few bytes that matter with `memchr`, so a body of points that need no change is
//! scanned at memory speed and forwarded without a copy.

use bytes::{Bytes, BytesMut};
use memchr::{memchr2, memchr3};

/// Timestamp precision of a write, as InfluxDB 1.x names it in `precision=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// Parses a 1.x `precision` value (`n`, `ns`, `u`, `ms`, `s`, `m`, `h`).
    pub fn from_v1(value: &str) -> Option<Self> {
        Some(match value {
            "n" | "ns" => Self::Nanoseconds,
            "u" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            "m" => Self::Minutes,
            "h" => Self::Hours,
            _ => return None,
        })
    }

    /// Parses a 2.x `precision` value (`ns`, `us`, `ms`, `s`).
    pub fn from_v2(value: &str) -> Option<Self> {
        Some(match value {
            "ns" => Self::Nanoseconds,
            "us" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            _ => return None,
        })
    }

    /// The value InfluxDB 1.x expects in `precision=`.
    pub fn as_v1(self) -> &'static str {
        match self {
            Self::Nanoseconds => "n",
            Self::Microseconds => "u",
            Self::Milliseconds => "ms",
            Self::Seconds => "s",
            Self::Minutes => "m",
            Self::Hours => "h",
        }
    }

    fn nanos_per_unit(self) -> u128 {
        match self {
            Self::Nanoseconds => 1,
            Self::Microseconds => 1_000,
            Self::Milliseconds => 1_000_000,
            Self::Seconds => 1_000_000_000,
            Self::Minutes => 60_000_000_000,
            Self::Hours => 3_600_000_000_000,
        }
    }

    /// `unix_nanos` truncated to this precision, as InfluxDB would read it back.
    pub fn timestamp(self, unix_nanos: u128) -> i64 {
        (unix_nanos / self.nanos_per_unit()) as i64
    }
}

/// One point of a body: `start..end` excludes the terminating newline (and a `\r` before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub start: usize,
    pub end: usize,
    /// The line ended with `\r\n` or with a `\r` at the end of the body (the `\r` is not
    /// part of `start..end`).
    pub crlf: bool,
    /// The line is a point: neither blank nor a `#` comment.
    pub point: bool,
    /// The point has a timestamp field (an integer after the field set).
    pub has_timestamp: bool,
}

/// What the scanner found in a body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Points (lines that are neither blank nor comments).
    pub points: u64,
    /// Points without a timestamp.
    pub untimed: u64,
    /// Lines terminated by `\r\n`.
    pub crlf: u64,
}

/// Iterates the lines of a body; blank lines and `#` comments are not points, as in InfluxDB.
///
/// Lines without a quote or a backslash (most of them) take a fast path: one `memchr3` pass
/// over the body finds their newline, and their end is checked for a timestamp. Only a line
/// with a quote or a backslash is scanned again with the full `scanLine` rules.
pub struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Newlines, quotes and backslashes from `hits_from` on.
    hits: memchr::Memchr3<'a>,
    hits_from: usize,
}

impl<'a> Lines<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            hits: memchr::memchr3_iter(b'\n', b'"', b'\\', buf),
            hits_from: 0,
        }
    }
}

impl Iterator for Lines<'_> {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let hit = self.hits.next().map(|off| self.hits_from + off);
        let end = match hit {
            Some(nl) if self.buf[nl] == b'\n' => nl,
            None => self.buf.len(),
            Some(_) => {
                let end = scan_line(self.buf, start);
                // Resume the fast path after this line.
                self.hits_from = (end + 1).min(self.buf.len());
                self.hits = memchr::memchr3_iter(b'\n', b'"', b'\\', &self.buf[self.hits_from..]);
                end
            }
        };
        self.pos = end + 1;
        // `\r\n`, or a `\r` that ends the body: either way the `\r` is not data.
        let crlf = end > start && self.buf[end - 1] == b'\r';
        let end = end - usize::from(crlf);
        let line = &self.buf[start..end];
        let point = match line.iter().position(|&b| !is_whitespace(b)) {
            None => false,
            Some(i) => line[i] != b'#',
        };
        let has_timestamp = point && has_timestamp(&self.buf[start..end]);
        Some(Line {
            start,
            end,
            crlf,
            point,
            has_timestamp,
        })
    }
}

/// Scans a body without changing it.
pub fn summarize(buf: &[u8]) -> Summary {
    let mut summary = Summary::default();
    for line in Lines::new(buf) {
        summary.points += u64::from(line.point);
        summary.untimed += u64::from(line.point && !line.has_timestamp);
        summary.crlf += u64::from(line.crlf);
    }
    summary
}

/// Stamps every point without a timestamp with `timestamp` (already in the write's precision)
/// and turns `\r\n` line endings into `\n`. Returns the body unchanged (the same `Bytes`, no
/// copy) when no point needed either, which is the common case.
pub fn stamp(body: Bytes, timestamp: i64) -> (Bytes, Summary) {
    if let Some(points) = all_timestamped(&[&body]) {
        let summary = Summary {
            points,
            untimed: 0,
            crlf: 0,
        };
        return (body, summary);
    }
    let summary = summarize(&body);
    if summary.untimed == 0 && summary.crlf == 0 {
        return (body, summary);
    }
    let mut digits = itoa::Buffer::new();
    let ts = digits.format(timestamp).as_bytes();
    let mut out =
        BytesMut::with_capacity(body.len() + summary.untimed as usize * (ts.len() + 1) + 1);
    let mut copied = 0;
    for line in Lines::new(&body) {
        let untimed = line.point && !line.has_timestamp;
        if !untimed && !line.crlf {
            continue;
        }
        // Everything up to this point (earlier lines, comments, blank lines) goes as it was.
        out.extend_from_slice(&body[copied..line.start]);
        let mut end = line.end;
        if untimed {
            // InfluxDB skips whitespace before the timestamp; trailing blanks are dropped so
            // the stamped line has exactly one separator.
            while end > line.start
                && matches!(body[end - 1], b' ' | b'\t')
                && !escaped(&body, end - 1)
            {
                end -= 1;
            }
        }
        out.extend_from_slice(&body[line.start..end]);
        if untimed {
            out.extend_from_slice(b" ");
            out.extend_from_slice(ts);
        }
        // Skip the `\r`; the newline after it, if any, is copied with what follows.
        copied = line.end + usize::from(line.crlf);
    }
    out.extend_from_slice(&body[copied..]);
    (out.freeze(), summary)
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0)
}

/// InfluxDB's `scanLine`: the index of the newline that ends the line starting at `start`
/// (or `buf.len()`).
fn scan_line(buf: &[u8], start: usize) -> usize {
    let len = buf.len();
    let mut i = start;
    // The key: measurement and tags, up to the first unescaped space. Quotes are literal.
    let key_end = loop {
        match memchr3(b'\n', b' ', b'\\', &buf[i..]) {
            None => return len,
            Some(off) => {
                i += off;
                match buf[i] {
                    b'\n' => return i,
                    b' ' => break i,
                    // InfluxDB skips the byte after a backslash only when two more bytes follow.
                    _ if i + 2 < len => i += 2,
                    _ => i += 1,
                }
            }
        }
    };
    // The field set and timestamp. A quote toggles a string only when more `=` than `,`
    // were seen outside strings since the first space; both are counted lazily, only on
    // lines that have a quote or an escape, over the bytes not yet counted.
    let (mut equals, mut commas) = (0usize, 0usize);
    let mut counted = key_end;
    loop {
        let off = match memchr3(b'\n', b'"', b'\\', &buf[i..]) {
            None => return len,
            Some(off) => off,
        };
        i += off;
        match buf[i] {
            b'\n' => return i,
            b'\\' => {
                count_separators(&buf[counted..i], &mut equals, &mut commas);
                i += if i + 2 < len { 2 } else { 1 };
                counted = i.min(len);
            }
            _ => {
                count_separators(&buf[counted..i], &mut equals, &mut commas);
                i += 1;
                counted = i;
                if equals > commas {
                    // Inside a string: only a closing quote or an escape matters, newlines
                    // included, and `=`/`,` are not counted.
                    loop {
                        match memchr2(b'"', b'\\', &buf[i..]) {
                            None => return len,
                            Some(off) => {
                                i += off;
                                if buf[i] == b'"' {
                                    i += 1;
                                    break;
                                }
                                i += if i + 2 < len { 2 } else { 1 };
                            }
                        }
                    }
                    counted = i;
                }
            }
        }
    }
}

fn count_separators(bytes: &[u8], equals: &mut usize, commas: &mut usize) {
    for &b in bytes {
        *equals += usize::from(b == b'=');
        *commas += usize::from(b == b',');
    }
}

/// The top bit of each byte of `word` that is not an ASCII digit. After `^ b'0'` a digit is
/// 0..=9; a byte is not one when it is 128 or more or its low seven bits are 10 or more
/// (adding 118 to them sets the top bit without carrying into the next byte).
fn non_digits(word: u64) -> u64 {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const PAST_NINE: u64 = 0x7676_7676_7676_7676;
    const TOP: u64 = 0x8080_8080_8080_8080;
    let x = word ^ ZEROS;
    (((x & LOW7) + PAST_NINE) | x) & TOP
}

/// Whether `buf[i]` is preceded by an odd number of backslashes.
fn escaped(buf: &[u8], i: usize) -> bool {
    buf[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// A point has a timestamp when it ends in an unescaped space and an integer, with something
/// before that space. For a valid point that is exactly InfluxDB's rule: a field set cannot
/// end that way (a value after a space inside a string ends with the closing quote), so the
/// only lines judged otherwise are ones InfluxDB rejects whatever the proxy does to them.
fn has_timestamp(line: &[u8]) -> bool {
    let mut i = line.len();
    // Nanosecond timestamps are 19 digits: eight bytes at a time, the last non-digit of a
    // word found from its mask, so no byte loop runs on lines of eight bytes or more.
    while i >= 8 {
        let word = u64::from_le_bytes(line[i - 8..i].try_into().expect("eight bytes"));
        let mask = non_digits(word);
        if mask != 0 {
            // Little-endian: the highest set bit is the non-digit nearest the line's end.
            i = i - 8 + (7 - mask.leading_zeros() as usize / 8) + 1;
            break;
        }
        i -= 8;
    }
    if i < 8 {
        while i > 0 && line[i - 1].is_ascii_digit() {
            i -= 1;
        }
    }
    if i == line.len() {
        return false;
    }
    if i > 0 && line[i - 1] == b'-' {
        i -= 1;
    }
    i > 1
        && line[i - 1] == b' '
        && !escaped(line, i - 1)
        && line[..i - 1].iter().any(|&b| !is_whitespace(b))
}

/// The fast answer for the common body, where every point already has a timestamp: checks
/// the end of every newline-separated segment, without tracking quotes. A newline inside a
/// string only splits a point into segments whose last one still ends the point, so when
/// every non-blank segment ends in a timestamp, so does every point. Returns the number of
/// points, or `None` when some segment does not qualify (and the body needs the full scan).
///
/// The body may come in several chunks, as it was read; only a segment that straddles two
/// chunks is copied.
pub fn all_timestamped<B: AsRef<[u8]>>(chunks: &[B]) -> Option<u64> {
    let mut check = TimestampCheck::default();
    for chunk in chunks {
        check.feed(chunk.as_ref());
    }
    check.finish()
}

/// [`all_timestamped`] fed one chunk at a time, as the body arrives, so each chunk is
/// scanned while it is still in cache.
#[derive(Debug, Default)]
pub struct TimestampCheck {
    /// The unfinished segment at the end of the chunks fed so far.
    carry: Vec<u8>,
    points: u64,
    failed: bool,
}

impl TimestampCheck {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk) {
            let checked = if start == 0 && !self.carry.is_empty() {
                self.carry.extend_from_slice(&chunk[..end]);
                let checked = check_segment(&self.carry);
                self.carry.clear();
                checked
            } else {
                check_segment(&chunk[start..end])
            };
            match checked {
                Some(points) => self.points += points,
                None => {
                    self.failed = true;
                    return;
                }
            }
            start = end + 1;
        }
        self.carry.extend_from_slice(&chunk[start..]);
    }

    /// The number of points when every one had a timestamp, else `None`.
    pub fn finish(self) -> Option<u64> {
        if self.failed {
            return None;
        }
        Some(self.points + check_segment(&self.carry)?)
    }
}

/// One segment of [`all_timestamped`]: `Some(1)` for a timestamped point, `Some(0)` for a
/// blank line or a comment ending in digits, `None` for anything else.
fn check_segment(segment: &[u8]) -> Option<u64> {
    match segment.first() {
        None => return Some(0),
        Some(&b) if is_whitespace(b) && segment.iter().all(|&b| is_whitespace(b)) => {
            return Some(0)
        }
        Some(_) => {}
    }
    // A comment that happens to end in digits is still a comment; anything else that does
    // not end in a timestamp (or ends in `\r`) sends the body to the full scan.
    has_timestamp(segment).then_some(u64::from(segment[0] != b'#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(body: &str) -> Vec<(String, bool)> {
        Lines::new(body.as_bytes())
            .filter(|l| l.point)
            .map(|l| (body[l.start..l.end].to_string(), l.has_timestamp))
            .collect()
    }

    fn stamped(body: &str) -> String {
        String::from_utf8(
            stamp(Bytes::copy_from_slice(body.as_bytes()), 42)
                .0
                .to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn splits_lines_and_detects_timestamps() {
        assert_eq!(
            lines("cpu,host=a v=1 1000\nmem v=2\n\n# comment\n  \ndisk v=3i -5\n"),
            vec![
                ("cpu,host=a v=1 1000".into(), true),
                ("mem v=2".into(), false),
                ("disk v=3i -5".into(), true),
            ]
        );
    }

    #[test]
    fn newline_inside_string_field_does_not_end_the_point() {
        assert_eq!(
            lines("m s=\"a\nb 12\" 7\nm s=\"x\\\"\ny\"\n"),
            vec![
                ("m s=\"a\nb 12\" 7".into(), true),
                ("m s=\"x\\\"\ny\"".into(), false)
            ]
        );
    }

    #[test]
    fn quotes_in_measurement_and_tags_are_literal() {
        assert_eq!(
            lines("m\"x,t=\"a v=1\nn v=2 3\n"),
            vec![("m\"x,t=\"a v=1".into(), false), ("n v=2 3".into(), true)]
        );
    }

    #[test]
    fn quote_in_field_key_does_not_open_a_string() {
        // `equals > commas` is false at a quote in the second field's key.
        assert_eq!(
            lines("m a=1,\"b=2 5\nn c=1\n"),
            vec![("m a=1,\"b=2 5".into(), true), ("n c=1".into(), false)]
        );
    }

    #[test]
    fn escaped_space_and_newline_stay_in_the_key() {
        assert_eq!(
            lines("my\\ m,t=a\\ 1 v=1\nm\\\nx v=2 9\n"),
            vec![
                ("my\\ m,t=a\\ 1 v=1".into(), false),
                ("m\\\nx v=2 9".into(), true)
            ]
        );
    }

    #[test]
    fn string_value_ending_in_digits_is_not_a_timestamp() {
        assert_eq!(
            lines("m s=\"a 123\"\n"),
            vec![("m s=\"a 123\"".into(), false)]
        );
        assert_eq!(
            lines("m s=\"a 123\" 9"),
            vec![("m s=\"a 123\" 9".into(), true)]
        );
    }

    #[test]
    fn stamps_only_untimed_points_and_keeps_comments() {
        assert_eq!(
            stamped("a v=1\n# c\nb v=2 7\nc v=3   \nd v=4"),
            "a v=1 42\n# c\nb v=2 7\nc v=3 42\nd v=4 42"
        );
    }

    #[test]
    fn normalises_crlf_line_endings() {
        assert_eq!(stamped("a v=1 1\r\nb v=2\r\n"), "a v=1 1\nb v=2 42\n");
        assert_eq!(stamped("a v=1 1\r"), "a v=1 1");
        assert_eq!(
            stamped("a v=1\r\n\r\n# c\r\nb v=2 5\r\n"),
            "a v=1 42\n\n# c\nb v=2 5\n"
        );
    }

    #[test]
    fn body_that_needs_nothing_is_returned_without_a_copy() {
        let body = Bytes::from_static(b"a v=1 1\nb v=2 2\n");
        let (out, summary) = stamp(body.clone(), 42);
        assert_eq!(out.as_ptr(), body.as_ptr());
        assert_eq!(
            summary,
            Summary {
                points: 2,
                untimed: 0,
                crlf: 0
            }
        );
    }

    #[test]
    fn timestamp_check_matches_a_bytewise_reading() {
        fn reference(line: &[u8]) -> bool {
            let mut i = line.len();
            while i > 0 && line[i - 1].is_ascii_digit() {
                i -= 1;
            }
            if i == line.len() {
                return false;
            }
            if i > 0 && line[i - 1] == b'-' {
                i -= 1;
            }
            i > 1
                && line[i - 1] == b' '
                && !escaped(line, i - 1)
                && line[..i - 1].iter().any(|&b| !is_whitespace(b))
        }
        let alphabet = b"0123456789 -\\x=";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 58) as usize;
            let line: Vec<u8> = (0..len)
                .map(|k| {
                    let r = seed.rotate_left(k as u32 * 5) as usize;
                    // Digit runs are common, so the eight-byte path is exercised.
                    if r % 4 != 0 {
                        b'0' + (r % 10) as u8
                    } else {
                        alphabet[r / 4 % alphabet.len()]
                    }
                })
                .collect();
            assert_eq!(
                has_timestamp(&line),
                reference(&line),
                "{:?}",
                String::from_utf8_lossy(&line)
            );
        }
    }

    #[test]
    fn eight_byte_digit_mask_matches_bytewise_test() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly digits, with every byte value showing up.
            let probe: [u8; 8] = std::array::from_fn(|k| {
                let r = (seed >> (k * 8)) as u8;
                if r % 3 == 0 {
                    r
                } else {
                    b'0' + r % 10
                }
            });
            let mask = non_digits(u64::from_le_bytes(probe));
            for (k, b) in probe.iter().enumerate() {
                assert_eq!(
                    mask >> (8 * k + 7) & 1 == 1,
                    !b.is_ascii_digit(),
                    "{probe:?}"
                );
            }
        }
    }

    #[test]
    fn precision_truncates_receive_time() {
        let t = 1_700_000_123_456_789_012u128;
        assert_eq!(
            Precision::Nanoseconds.timestamp(t),
            1_700_000_123_456_789_012
        );
        assert_eq!(Precision::Microseconds.timestamp(t), 1_700_000_123_456_789);
        assert_eq!(Precision::Milliseconds.timestamp(t), 1_700_000_123_456);
        assert_eq!(Precision::Seconds.timestamp(t), 1_700_000_123);
        assert_eq!(Precision::Minutes.timestamp(t), 28_333_335);
        assert_eq!(Precision::Hours.timestamp(t), 472_222);
    }

    /// A byte-at-a-time transcription of InfluxDB's `scanLine`, to compare against.
    fn reference_line_ends(buf: &[u8]) -> Vec<usize> {
        let mut ends = vec![];
        let mut i = 0;
        while i < buf.len() {
            let (mut quoted, mut fields, mut equals, mut commas) = (false, false, 0, 0);
            loop {
                if i >= buf.len() {
                    break;
                }
                if buf[i] == b'\\' && i + 2 < buf.len() {
                    i += 2;
                    continue;
                }
                if buf[i] == b' ' {
                    fields = true;
                }
                if fields {
                    if !quoted && buf[i] == b'=' {
                        i += 1;
                        equals += 1;
                        continue;
                    } else if !quoted && buf[i] == b',' {
                        i += 1;
                        commas += 1;
                        continue;
                    } else if buf[i] == b'"' && equals > commas {
                        i += 1;
                        quoted = !quoted;
                        continue;
                    }
                }
                if buf[i] == b'\n' && !quoted {
                    break;
                }
                i += 1;
            }
            ends.push(i.min(buf.len()));
            i += 1;
        }
        ends
    }

    #[test]
    fn fast_check_never_skips_a_point_the_full_scan_would_stamp() {
        let tricky = [
            "m s=\"a\n# x\"\n",
            "m s=\"a 1\n2\" 3\n",
            "m s=\"a\n 12\"\n",
            "m v=1 12\r\n",
            "m v=1\\ 12\n",
            "# only a comment 12\n",
        ];
        for body in tricky {
            let fast = all_timestamped(&[body]).is_some();
            let full = summarize(body.as_bytes());
            assert!(
                !fast || (full.untimed == 0 && full.crlf == 0),
                "{body:?}: {full:?}"
            );
        }
        assert_eq!(all_timestamped(&[b"a v=1 1\n\n# c 5\nb v=2 -2"]), Some(2));
        // Split anywhere, the answer is the same.
        let body = b"a v=1 1\nb s=\"x\n\" 2\nc v=3\n";
        for cut in 0..body.len() {
            for cut2 in cut..body.len() {
                let chunks = [&body[..cut], &body[cut..cut2], &body[cut2..]];
                assert_eq!(all_timestamped(&chunks), None, "{cut} {cut2}");
                let timed = b"a v=1 1\nb v=2 2\n";
                let (x, y) = (cut.min(timed.len()), cut2.min(timed.len()));
                assert_eq!(
                    all_timestamped(&[&timed[..x], &timed[x..y], &timed[y..]]),
                    Some(2)
                );
            }
        }
    }

    #[test]
    fn line_ends_match_influxdb_scanline_on_tricky_inputs() {
        let alphabet = b"ab =,\"\\\n 1#\r-";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            let mut buf = vec![];
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut s = seed;
            for _ in 0..len {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                buf.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            let mut ours = vec![];
            let mut pos = 0;
            while pos < buf.len() {
                let end = scan_line(&buf, pos);
                ours.push(end);
                pos = end + 1;
            }
            assert_eq!(
                ours,
                reference_line_ends(&buf),
                "body {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}
