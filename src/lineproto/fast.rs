//! The quick answer for the common body, where every point already carries a timestamp: one
//! pass over each frame as it arrives, looking only at the bytes before each newline. A body
//! it clears needs no change; anything else goes to the line-by-line judgement.

use super::point::is_whitespace;

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

/// Whether the byte after `before` is escaped: `before` ends in an odd number of backslashes.
pub(super) fn escaped(before: &[u8]) -> bool {
    before.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// A point has a timestamp when it ends in an unescaped space and an integer, with something
/// before that space. For a valid point that is exactly InfluxDB's rule: a field set cannot
/// end that way (a value after a space inside a string ends with the closing quote), so the
/// only lines judged otherwise are ones InfluxDB rejects whatever the proxy does to them.
pub(super) fn has_timestamp(line: &[u8]) -> bool {
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
        && !escaped(&line[..i - 1])
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
        for end in Newlines::new(chunk) {
            let segment = &chunk[start..end];
            let checked =
                if ends_in_nanosecond_timestamp(segment) && (start > 0 || self.carry.is_empty()) {
                    Some(u64::from(segment[0] != b'#'))
                } else if start == 0 && !self.carry.is_empty() {
                    self.carry.extend_from_slice(&chunk[..end]);
                    let checked = check_segment(&self.carry);
                    self.carry.clear();
                    checked
                } else {
                    check_segment(segment)
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

/// The newlines of a frame in order, found 64 bytes at a time: four 16-byte compares (SSE2
/// on x86_64, through `wide`'s safe vectors) give one bit per byte, and each set bit is a
/// newline. memchr's iterator restarts its search at every newline, which on 160-byte lines
/// costs more than the check of the line itself (`examples/scan_speed`).
struct Newlines<'a> {
    haystack: &'a [u8],
    /// Where the block of `mask` starts.
    base: usize,
    /// The newlines of that block not returned yet, one bit each.
    mask: u64,
}

impl<'a> Newlines<'a> {
    fn new(haystack: &'a [u8]) -> Self {
        Newlines {
            haystack,
            base: 0,
            mask: newline_bits(haystack, 0),
        }
    }
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 64;
            if self.base >= self.haystack.len() {
                return None;
            }
            self.mask = newline_bits(self.haystack, self.base);
        }
        let at = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// Bit `k` is set when `haystack[at + k]` is a newline, for the 64 bytes from `at` (a block
/// cut short by the end of the haystack is padded with bytes that are not newlines).
#[inline]
fn newline_bits(haystack: &[u8], at: usize) -> u64 {
    match haystack.get(at..at + 64) {
        Some(block) => block_bits(block.try_into().expect("64 bytes")),
        None => last_block_bits(&haystack[at..]),
    }
}

#[cold]
fn last_block_bits(rest: &[u8]) -> u64 {
    let mut padded = [0; 64];
    padded[..rest.len()].copy_from_slice(rest);
    block_bits(&padded)
}

#[inline]
fn block_bits(block: &[u8; 64]) -> u64 {
    let newline = wide::u8x16::splat(b'\n');
    let bits = |from: usize| {
        let vector = wide::u8x16::new(block[from..from + 16].try_into().expect("16 bytes"));
        u64::from(vector.cmp_eq(newline).move_mask() as u16)
    };
    bits(0) | bits(16) << 16 | bits(32) << 32 | bits(48) << 48
}

/// The shape of nearly every line a client sends: a space and 19 digits (a nanosecond
/// timestamp) at the end, after a byte that is neither whitespace nor a backslash. Settles
/// [`has_timestamp`] with two 16-byte loads (the last 16 bytes, and the 16 that start with
/// the byte before the space), no loop.
#[inline]
fn ends_in_nanosecond_timestamp(segment: &[u8]) -> bool {
    let n = segment.len();
    if n < 22 {
        return false;
    }
    let last: &[u8; 16] = segment[n - 16..].try_into().expect("16 bytes");
    let before: &[u8; 16] = segment[n - 21..n - 5].try_into().expect("16 bytes");
    // `before` is the byte before the space, the space, then the first 14 of the digits.
    digit_bits(last) == 0xFFFF
        && digit_bits(before) | 0b11 == 0xFFFF
        && before[1] == b' '
        && !matches!(before[0], b' ' | b'\t' | 0 | b'\\')
}

/// Bit `k` is set when `bytes[k]` is an ASCII digit: after subtracting `'0'` (wrapping) a
/// digit is 0..=9, and only then is it its own minimum with 9.
#[inline]
fn digit_bits(bytes: &[u8; 16]) -> u32 {
    let offset = wide::u8x16::new(*bytes) - wide::u8x16::splat(b'0');
    offset.min(wide::u8x16::splat(9)).cmp_eq(offset).move_mask() as u32
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
    use crate::lineproto::summarize;

    /// One step of the tests' linear congruential generator (Knuth's MMIX constants).
    fn advance(seed: &mut u64) {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
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
                && !escaped(&line[..i - 1])
                && line[..i - 1].iter().any(|&b| !is_whitespace(b))
        }
        let alphabet = b"0123456789 -\\x=";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            advance(&mut seed);
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
    fn nanosecond_shortcut_agrees_with_the_general_check() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let alphabet = b"0123456789 \\\t#=x-";
        for _ in 0..300_000 {
            advance(&mut seed);
            let len = 18 + (seed >> 59) as usize;
            let line: Vec<u8> = (0..len)
                .map(|k| {
                    let r = seed.rotate_left(k as u32 * 7) as usize;
                    // Mostly a timestamp-shaped tail, so the shortcut is taken often.
                    if k + 19 >= len && r % 8 != 0 {
                        b'0' + (r % 10) as u8
                    } else if k + 20 == len && r % 4 != 0 {
                        b' '
                    } else {
                        alphabet[r / 8 % alphabet.len()]
                    }
                })
                .collect();
            if ends_in_nanosecond_timestamp(&line) {
                assert!(has_timestamp(&line), "{:?}", String::from_utf8_lossy(&line));
            }
        }
        assert!(ends_in_nanosecond_timestamp(b"m f=1 1600000000000000000"));
        assert!(!ends_in_nanosecond_timestamp(
            b"m f=1\\ 1600000000000000000"
        ));
        assert!(!ends_in_nanosecond_timestamp(b"m f=1  1600000000000000000"));
    }

    #[test]
    fn newlines_are_found_where_memchr_finds_them() {
        let mut seed = 0x5851_f42d_4c95_7f2du64;
        for _ in 0..20_000 {
            advance(&mut seed);
            // Lengths around the 64-byte blocks, newlines dense and sparse, every byte value.
            let len = (seed >> 56) as usize;
            let density = 1 + (seed >> 40) as usize % 70;
            let haystack: Vec<u8> = (0..len)
                .map(|k| {
                    let r = seed.rotate_left(k as u32 * 11) as usize ^ k;
                    if r % density == 0 {
                        b'\n'
                    } else {
                        (r >> 8) as u8
                    }
                })
                .collect();
            let expected: Vec<usize> = memchr::memchr_iter(b'\n', &haystack).collect();
            assert_eq!(
                Newlines::new(&haystack).collect::<Vec<_>>(),
                expected,
                "{haystack:?}"
            );
        }
        assert_eq!(Newlines::new(b"").next(), None);
        assert_eq!(Newlines::new(&[b'\n'; 130]).count(), 130);
    }

    #[test]
    fn eight_and_sixteen_byte_digit_masks_match_bytewise_test() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            advance(&mut seed);
            let low = seed;
            advance(&mut seed);
            // Mostly digits, with every byte value showing up.
            let probe: [u8; 16] = std::array::from_fn(|k| {
                let r = ([low, seed][k / 8] >> (k % 8 * 8)) as u8;
                if r % 3 == 0 {
                    r
                } else {
                    b'0' + r % 10
                }
            });
            let wide = digit_bits(&probe);
            for (half, word) in probe.chunks_exact(8).enumerate() {
                let mask = non_digits(u64::from_le_bytes(word.try_into().unwrap()));
                for (k, b) in word.iter().enumerate() {
                    assert_eq!(
                        mask >> (8 * k + 7) & 1 == 1,
                        !b.is_ascii_digit(),
                        "{probe:?}"
                    );
                    assert_eq!(
                        wide >> (8 * half + k) & 1 == 1,
                        b.is_ascii_digit(),
                        "{probe:?}"
                    );
                }
            }
        }
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
}
