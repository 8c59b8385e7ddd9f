//! A line-protocol scanner that splits a body into points exactly as InfluxDB 1.x does, and
//! the one edit the proxy makes to a body: stamping points that carry no timestamp.
//!
//! The scanner mirrors `scanLine` in InfluxDB's `models/points.go`: a newline ends a point
//! unless it is escaped or inside a quoted string field value; a double quote only opens a
//! string after the first unescaped space and when more `=` than `,` have been seen in the
//! field set (quotes in measurements, tag keys and tag values are literal). It jumps between
//! the few bytes that matter with `memchr`, so a body of points that need no change is
//! scanned at memory speed and forwarded without a copy.

mod fast;
mod point;

use bytes::{Bytes, BytesMut};
use memchr::{memchr2, memchr3};

pub use fast::{all_timestamped, TimestampCheck};
use fast::{escaped, has_timestamp};
use point::skip_whitespace;
pub use point::{parse_point, ParseError, Time, MAX_KEY_LENGTH};

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

/// One line of a body, as InfluxDB's line splitter cuts it: `start..end` excludes the
/// newline that ends it (and the `\r` of a `\r\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub start: usize,
    pub end: usize,
    /// The line ended with `\r\n` (the `\r` is not part of `start..end`).
    pub crlf: bool,
    /// The line is a point: neither blank nor a `#` comment (valid or not).
    pub point: bool,
    /// The line is a valid point without a timestamp, which the proxy stamps.
    pub untimed: bool,
}

/// What the scanner found in a body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Points (lines that are neither blank nor comments). When the quick check settles a
    /// body, a string value holding a newline makes its point count once per line it spans:
    /// the count is for metrics and logs, never for the body.
    pub points: u64,
    /// Valid points without a timestamp.
    pub untimed: u64,
    /// Lines terminated by `\r\n`.
    pub crlf: u64,
}

/// Iterates the lines of a body; blank lines and `#` comments are not points, as in InfluxDB.
///
/// Lines without a quote or a backslash (most of them) take a fast path: one `memchr3` pass
/// over the body finds their newline. Only a line with a quote or a backslash is scanned
/// again with the full `scanLine` rules. A point that does not end in a timestamp is then
/// judged whole ([`parse_point`]).
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
        // A `\r` before the newline is read as part of the newline (unless a backslash
        // escapes it); a `\r` anywhere else, the end of the body included, is data.
        let crlf = end < self.buf.len()
            && end > start
            && self.buf[end - 1] == b'\r'
            && !escaped(&self.buf[start..end - 1]);
        let end = end - usize::from(crlf);
        let line = &self.buf[start..end];
        let first = skip_whitespace(line, 0);
        let point = first < line.len() && line[first] != b'#';
        let untimed =
            point && !has_timestamp(line) && parse_point(&line[first..]) == Ok(Time::Missing);
        Some(Line {
            start,
            end,
            crlf,
            point,
            untimed,
        })
    }
}

/// Scans a body without changing it.
pub fn summarize(buf: &[u8]) -> Summary {
    let mut summary = Summary::default();
    for line in Lines::new(buf) {
        summary.points += u64::from(line.point);
        summary.untimed += u64::from(line.untimed);
        summary.crlf += u64::from(line.crlf);
    }
    summary
}

/// Stamps every valid point without a timestamp with `timestamp` (already in the write's
/// precision), appended after a space, and turns `\r\n` line endings into `\n`; every other
/// byte stays as the client sent it. Returns the body unchanged (the same `Bytes`, no copy)
/// when no line needed either, which is the common case.
pub fn stamp(body: Bytes, timestamp: i64) -> (Bytes, Summary) {
    if let Some(points) = all_timestamped(&[&body]) {
        let summary = Summary {
            points,
            untimed: 0,
            crlf: 0,
        };
        return (body, summary);
    }
    stamp_lines(body, timestamp)
}

/// [`stamp`] without its quick check first, for a body the quick check (fed frame by frame)
/// has already failed: every line is judged.
pub fn stamp_lines(body: Bytes, timestamp: i64) -> (Bytes, Summary) {
    let mut digits = itoa::Buffer::new();
    let ts = digits.format(timestamp).as_bytes();
    let mut summary = Summary::default();
    let mut out: Option<BytesMut> = None;
    let mut copied = 0;
    for line in Lines::new(&body) {
        summary.points += u64::from(line.point);
        summary.untimed += u64::from(line.untimed);
        summary.crlf += u64::from(line.crlf);
        if !line.untimed && !line.crlf {
            continue;
        }
        let out = out.get_or_insert_with(|| {
            // Room for a stamp on every line still to come.
            let rest = memchr::memchr_iter(b'\n', &body[line.start..]).count() + 1;
            BytesMut::with_capacity(body.len() + rest * (ts.len() + 1))
        });
        // Everything up to the end of this line goes as it was.
        out.extend_from_slice(&body[copied..line.end]);
        if line.untimed {
            out.extend_from_slice(b" ");
            out.extend_from_slice(ts);
        }
        // Skip the `\r`; the newline after it is copied with what follows.
        copied = line.end + usize::from(line.crlf);
    }
    match out {
        None => (body, summary),
        Some(mut out) => {
            out.extend_from_slice(&body[copied..]);
            (out.freeze(), summary)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The points of `body`, each with whether it is left as sent (not stamped).
    fn lines(body: &str) -> Vec<(String, bool)> {
        Lines::new(body.as_bytes())
            .filter(|l| l.point)
            .map(|l| (body[l.start..l.end].to_string(), !l.untimed))
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
            "a v=1 42\n# c\nb v=2 7\nc v=3    42\nd v=4 42"
        );
    }

    #[test]
    fn lines_influxdb_rejects_are_not_stamped() {
        // Each is a 400 at InfluxDB; a stamp would change the line its error quotes.
        for body in [
            "cpu",
            "cpu value=NaN",
            "cpu value=1 1-",
            "m f=1 +1600000000",
            "m f=1 123\\",
            "m f=1\t",
            "m,a=1,a=2 f=1",
            "m f=1u",
            "m f=1e400",
            "\r",
            "m f=1\r",
        ] {
            assert_eq!(stamped(body), body, "{body:?}");
        }
    }

    #[test]
    fn timestamps_after_any_whitespace_are_left_alone() {
        // From InfluxDB's TestParsePointWhitespace, and a tab and a NUL before the time.
        for body in [
            "cpu value=1.0 1257894000000000000   ",
            "m f=1 123 ",
            "m f=1 \t1600000000000000000",
            "m f=1 \u{0}1600000000000000000",
            "cpu    value=1.0     1257894000000000000\n",
        ] {
            assert_eq!(stamped(body), body, "{body:?}");
        }
    }

    #[test]
    fn stamp_goes_after_trailing_whitespace_untouched() {
        assert_eq!(stamped("m f=1 \t"), "m f=1 \t 42");
        // InfluxDB reads this string as `x"` plus the tab: kept, so it still does.
        assert_eq!(stamped("m s=\"x\"\t"), "m s=\"x\"\t 42");
        assert_eq!(stamped("m s=\"a\tb\" "), "m s=\"a\tb\"  42");
    }

    #[test]
    fn normalises_crlf_line_endings() {
        assert_eq!(stamped("a v=1 1\r\nb v=2\r\n"), "a v=1 1\nb v=2 42\n");
        // A `\r` that no newline follows is data (InfluxDB rejects it), as is an escaped one.
        assert_eq!(stamped("a v=1 1\r"), "a v=1 1\r");
        assert_eq!(stamped("a v=1\r\nb v=2\r"), "a v=1 42\nb v=2\r");
        assert_eq!(stamped("a s=\"x\" 1\\\r\n"), "a s=\"x\" 1\\\r\n");
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

    /// Lines near the valid ones (built from parts, then mutated), so both the shortcut and
    /// the full judgement see many of the shapes clients send and the edges between them.
    fn near_valid_body(seed: &mut u64) -> Vec<u8> {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let pick = |r: u64, options: &[&'static [u8]]| options[r as usize % options.len()];
        let mut body = vec![];
        for _ in 0..1 + next() % 4 {
            let mut line = vec![];
            line.extend_from_slice(pick(
                next(),
                &[b"cpu", b"m", b"my\\ m", b"a\\,b", b"\"q\"", b"#c", b" m"],
            ));
            for _ in 0..next() % 3 {
                line.extend_from_slice(pick(
                    next(),
                    &[b",t=a", b",t=a\\ b", b",a=1", b",b=\"x", b",z=9", b",t=a"],
                ));
            }
            line.push(b' ');
            for k in 0..1 + next() % 3 {
                if k > 0 {
                    line.push(b',');
                }
                line.extend_from_slice(pick(next(), &[b"f", b"v", b"a\\ b", b"\"k"]));
                line.push(b'=');
                line.extend_from_slice(pick(
                    next(),
                    &[
                        b"1",
                        b"-1.5",
                        b"1e3",
                        b"1e400",
                        b"2i",
                        b"3u",
                        b"t",
                        b"FALSE",
                        b"\"s\"",
                        b"\"a b 12\"",
                        b"\"x\\\"\ny\"",
                        b"NaN",
                        b"1.",
                    ],
                ));
            }
            line.extend_from_slice(pick(
                next(),
                &[
                    b"",
                    b" 1600000000000000000",
                    b" 1600000000000000001",
                    b" 1600000000000000002",
                    b" 1600000000",
                    b" -5",
                    b" 12 ",
                    b"\t",
                    b" \t",
                    b"  ",
                    b" 1-",
                    b"\r",
                    b" 1\\",
                ],
            ));
            // One mutation in three: a byte replaced, inserted or removed.
            if next() % 3 == 0 && !line.is_empty() {
                let at = next() as usize % line.len();
                let bytes = b" ,=\"\\\n\t\r\x001a#-";
                let byte = bytes[next() as usize % bytes.len()];
                match next() % 3 {
                    0 => line[at] = byte,
                    1 => line.insert(at, byte),
                    _ => {
                        line.remove(at);
                    }
                }
            }
            body.extend_from_slice(&line);
            body.extend_from_slice(pick(next(), &[b"\n", b"\n", b"\r\n", b"\n\n"]));
        }
        if next() % 4 == 0 {
            body.pop();
        }
        body
    }

    #[test]
    fn shortcut_and_full_judgement_never_disagree() {
        let mut seed = 0x0bad_5eed_cafe_f00du64;
        let (mut stamped_lines, mut quick_bodies) = (0, 0);
        for _ in 0..200_000 {
            let body = near_valid_body(&mut seed);
            let full = summarize(&body);
            let fast = all_timestamped(&[&body]);
            if fast.is_some() {
                quick_bodies += 1;
                assert_eq!(
                    (full.untimed, full.crlf),
                    (0, 0),
                    "{:?}",
                    String::from_utf8_lossy(&body)
                );
            }
            let cut = seed as usize % (body.len() + 1);
            assert_eq!(all_timestamped(&[&body[..cut], &body[cut..]]), fast);
            for line in Lines::new(&body) {
                let text = &body[line.start..line.end];
                let first = skip_whitespace(text, 0);
                if line.point && has_timestamp(text) {
                    assert_ne!(
                        parse_point(&text[first..]),
                        Ok(Time::Missing),
                        "{:?}",
                        String::from_utf8_lossy(text)
                    );
                }
                stamped_lines += u64::from(line.untimed);
            }
            // Stamping appends to untimed lines and drops CRLF's `\r`, nothing else.
            let (out, summary) = stamp(Bytes::copy_from_slice(&body), 42);
            // (Points are counted by newline on the quick path; see `Summary::points`.)
            assert_eq!((summary.untimed, summary.crlf), (full.untimed, full.crlf));
            let mut expected = vec![];
            let mut copied = 0;
            for line in Lines::new(&body) {
                expected.extend_from_slice(&body[copied..line.end]);
                if line.untimed {
                    expected.extend_from_slice(b" 42");
                }
                copied = line.end + usize::from(line.crlf);
            }
            expected.extend_from_slice(&body[copied..]);
            assert_eq!(
                &out[..],
                &expected[..],
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            // Judging every line gives the same bytes as taking the quick path when it can.
            let (judged, _) = stamp_lines(Bytes::copy_from_slice(&body), 42);
            assert_eq!(&judged[..], &out[..]);
        }
        // The generator reaches both sides of the question.
        assert!(stamped_lines > 10_000, "{stamped_lines}");
        assert!(quick_bodies > 10_000, "{quick_bodies}");
    }
}
