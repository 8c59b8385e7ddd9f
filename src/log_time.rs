//! The timestamp at the start of every log line, `2026-12-02T14:06:20.520576Z` (UTC,
//! microseconds), exactly as tracing-subscriber's default timer writes it, but with its
//! digits put in place by humantime instead of a `write!` per component, and the text up to
//! the seconds kept per thread for the lines of the same second: with one access line per
//! request, the default's formatting was 3 % of a 10-line write's instructions (callgrind,
//! rig body).

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The log lines' timer (text and JSON).
#[derive(Debug, Default, Clone, Copy)]
pub struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_at(w, SystemTime::now())
    }
}

thread_local! {
    /// The second this thread last wrote, and its text up to the seconds
    /// (`2026-12-02T14:06:20`): lines come many a second, and only the microseconds change.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

fn write_at(w: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    let Some((text, mut micros)) = to_the_second(at) else {
        return write!(w, "{}", humantime::format_rfc3339_micros(at));
    };
    let mut tail = *b".000000Z";
    for digit in tail[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    w.write_str(std::str::from_utf8(&text).expect("humantime writes ASCII"))?;
    w.write_str(std::str::from_utf8(&tail).expect("digits are ASCII"))
}

/// `at`'s text up to the seconds, from [`SECOND`] when it is the second this thread last
/// wrote, and its microseconds; `None` where humantime writes no such text (before 1970,
/// after 9999), which [`write_at`] then leaves to humantime as before.
fn to_the_second(at: SystemTime) -> Option<([u8; 19], u32)> {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let (second, cached) = SECOND.get();
    if second == since.as_secs() {
        return Some((cached, since.subsec_micros()));
    }
    let mut whole = String::with_capacity(20);
    write!(whole, "{}", humantime::format_rfc3339_seconds(at)).ok()?;
    let text: [u8; 19] = whole.as_bytes().get(..19)?.try_into().ok()?;
    SECOND.set((since.as_secs(), text));
    Some((text, since.subsec_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tracing_subscriber::fmt::time::SystemTime as DefaultTimer;

    fn ours(at: SystemTime) -> String {
        let mut out = String::new();
        write_at(&mut out, at).unwrap();
        out
    }

    #[test]
    fn writes_utc_with_microseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_764_684_380, 520_576_999);
        assert_eq!(ours(at), "2025-12-02T14:06:20.520576Z");
        assert_eq!(ours(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap_day = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(ours(leap_day), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn reads_as_humantime_writes_it_across_seconds_on_one_thread() {
        // Steps of 0.37 s from just before a day's end: each second's text is reused for
        // the lines within it and replaced when the second turns.
        let start = SystemTime::UNIX_EPOCH + Duration::new(1_764_719_998, 999_999_000);
        for step in 0..40u32 {
            let at = start + Duration::from_micros(370_001) * step;
            let expected = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(ours(at), expected);
        }
    }

    #[test]
    fn a_time_humantime_cannot_write_is_an_error_not_a_panic() {
        // Past 9999 humantime's Display fails; the timer's caller then writes
        // `<unknown time>`.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert!(write_at(&mut String::new(), far).is_err());
    }

    #[test]
    fn has_the_shape_of_the_default_timer() {
        let mut default = String::new();
        DefaultTimer
            .format_time(&mut Writer::new(&mut default))
            .unwrap();
        let now = ours(SystemTime::now());
        assert_eq!(now.len(), default.len(), "{now} vs {default}");
        let shape = |s: &str| s.bytes().map(|b| b.is_ascii_digit()).collect::<Vec<_>>();
        assert_eq!(shape(&now), shape(&default), "{now} vs {default}");
        // Same date and time to the minute, unless the minute turned between the two.
        assert!(now[..17] == default[..17], "{now} vs {default}");
    }
}
