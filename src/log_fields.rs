//! The fields of a text log line, `name=value` as tracing-subscriber's default writes them,
//! but without styling each name and with control characters in values escaped.
//!
//! tracing-subscriber's default visitor paints every field name through `nu_ansi_term`
//! even when colours are off (empty styles, still formatted): with the access log's
//! fifteen fields that was a tenth of the instructions of a 10-line write through the
//! proxy (callgrind, rig body). And it writes `Display` values (`db = %...`) as they are, so
//! a database name with a percent-encoded newline could start a forged log line; here every
//! C0 and C1 control character and DEL becomes `\xNN`.
//!
//! The access log's lines skip tracing altogether ([`write_line`], [`direct_sink`]): the
//! same text, written straight from the values instead of through tracing's field
//! recording and `write!` of each `Display` field, which was 15 % of a 10-line write's
//! instructions. Only for the text format without colours; JSON and a terminal go through
//! tracing. A serving thread holds its access lines and hands them to the writer together
//! every 100 ms (or at 64 KiB, and when it ends), so an access line can reach the log up to
//! 100 ms after a warning that its thread logged later.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// `FormatFields` for the text format (see the module comment).
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            out: Escaping(writer),
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    out: Escaping<Writer<'w>>,
    first: bool,
    result: fmt::Result,
}

impl<'w> Visitor<'w> {
    /// Writes the separator and `name=` (nothing for the message), then the value.
    fn field(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut Escaping<Writer<'w>>) -> fmt::Result,
    ) {
        if self.result.is_err() {
            return;
        }
        let first = std::mem::replace(&mut self.first, false);
        self.result = write_field(&mut self.out, first, field.name(), value);
    }
}

fn write_field<W: fmt::Write>(
    out: &mut Escaping<W>,
    first: bool,
    name: &str,
    value: impl FnOnce(&mut Escaping<W>) -> fmt::Result,
) -> fmt::Result {
    if !first {
        out.0.write_char(' ')?;
    }
    if name != "message" {
        out.0.write_str(name.strip_prefix("r#").unwrap_or(name))?;
        out.0.write_char('=')?;
    }
    value(out)
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.field(field, |out| out.write_str(value)),
            _ => self.field(field, |out| quoted(out, value)),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| {
            out.0.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| {
            out.0.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |out| float(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| {
            out.0.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| write!(out, "{value:?}"));
    }
}

/// A field value of a line written by [`write_line`], as tracing would record it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// A `&str` field (`name = value`): written quoted, as `Debug` writes it.
    Str(&'a str),
    /// A `Display` field (`name = %value`): written as it is.
    Display(&'a str),
    U64(u64),
    F64(f64),
}

/// Writes, newline included, the text line that the fmt subscriber with [`PlainFields`] and
/// `timer` writes for an event at `level` and `target` with `message` and `fields` (no
/// colours, no spans, which the proxy does not open).
pub fn write_line(
    out: &mut String,
    timer: &impl tracing_subscriber::fmt::time::FormatTime,
    level: tracing::Level,
    target: &str,
    message: &str,
    fields: &[(&str, Value<'_>)],
) -> fmt::Result {
    if timer.format_time(&mut Writer::new(out)).is_err() {
        out.push_str("<unknown time>");
    }
    let level = match level {
        tracing::Level::TRACE => "TRACE",
        tracing::Level::DEBUG => "DEBUG",
        tracing::Level::INFO => " INFO",
        tracing::Level::WARN => " WARN",
        tracing::Level::ERROR => "ERROR",
    };
    for part in [" ", level, " ", target, ": "] {
        out.push_str(part);
    }
    // Straight into the `String`: no `dyn Write` call per piece.
    let mut out = Escaping(out);
    write_field(&mut out, true, "message", |out| out.write_str(message))?;
    for (name, value) in fields {
        write_field(&mut out, false, name, |out| match *value {
            Value::Str(text) => quoted(out, text),
            Value::Display(text) => out.write_str(text),
            Value::U64(n) => out.0.write_str(itoa::Buffer::new().format(n)),
            Value::F64(x) => float(out, x),
        })?;
    }
    out.0.write_char('\n')
}

/// Where [`write_line`]'s lines go: the writer of the fmt subscriber, set once by the binary
/// when its logs are text without colours. `None` (tests, JSON, a terminal): use tracing.
pub fn direct_sink() -> Option<&'static tracing_appender::non_blocking::NonBlocking> {
    DIRECT.get()
}

/// Sets [`direct_sink`]; later calls change nothing.
pub fn set_direct_sink(writer: tracing_appender::non_blocking::NonBlocking) {
    let _ = DIRECT.set(writer);
}

static DIRECT: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();

/// How many bytes of lines a thread that holds them ([`hold_lines_on_this_thread`]) keeps
/// before handing them to the writer.
const HELD_BYTES: usize = 64 * 1024;

thread_local! {
    /// This thread's lines not yet handed to the writer, if it holds them.
    static HELD: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// The line being put together on a thread that does not hold lines.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// From now on this thread keeps its direct lines ([`write_direct`]) and hands them to the
/// writer 64 KiB at a time or when [`flush_held`] is called: the serving threads, which run
/// [`flush_held_periodically`]. One hand-over per line was an allocation, a channel send
/// and often a wake-up of the writer thread for every request; one whenever the thread went
/// idle was still one every three 10-line requests under load, each a futex wake-up and a
/// `write` on the writer thread, which then spun in `sched_yield` before sleeping.
pub fn hold_lines_on_this_thread() {
    HELD.with_borrow_mut(|held| *held = Some(String::with_capacity(2 * HELD_BYTES)));
}

/// How long a thread that holds its lines keeps them at most.
const HELD_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// Hands this thread's held lines to the writer every [`HELD_FOR`], for as long as it is
/// polled: a serving thread's runtime runs it beside everything else.
pub async fn flush_held_periodically() {
    let mut tick = tokio::time::interval(HELD_FOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_held();
    }
}

/// Hands the lines this thread holds to the writer.
pub fn flush_held() {
    HELD.with_borrow_mut(|held| {
        if let (Some(held), Some(sink)) = (held, direct_sink()) {
            hand_over(sink, held);
        }
    });
}

/// One line put together by `line` (which appends it, newline included) to `sink`: into
/// this thread's held lines if it holds them, else on its own.
pub fn write_direct(
    sink: &tracing_appender::non_blocking::NonBlocking,
    line: impl FnOnce(&mut String) -> fmt::Result,
) {
    HELD.with_borrow_mut(|held| match held {
        Some(held) => {
            let start = held.len();
            if line(held).is_err() {
                held.truncate(start);
            }
            if held.len() >= HELD_BYTES {
                hand_over(sink, held);
            }
        }
        None => LINE.with_borrow_mut(|one| {
            if line(one).is_ok() {
                hand_over(sink, one);
            }
            one.clear();
        }),
    });
}

/// `text` to the writer, then emptied; a buffer a huge line grew is given up.
fn hand_over(sink: &tracing_appender::non_blocking::NonBlocking, text: &mut String) {
    use std::io::Write as _;
    if !text.is_empty() {
        let _ = sink.clone().write_all(text.as_bytes());
    }
    text.clear();
    if text.capacity() > 4 * HELD_BYTES {
        *text = String::with_capacity(2 * HELD_BYTES);
    }
}

/// A `&str` field as `Debug` writes it.
fn quoted<W: fmt::Write>(out: &mut Escaping<W>, value: &str) -> fmt::Result {
    // Debug's quoting, written directly when it would change nothing inside.
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.0.write_char('"')?;
        out.0.write_str(value)?;
        out.0.write_char('"')
    } else {
        write!(out, "{value:?}")
    }
}

/// An `f64` field as `Debug` writes it.
fn float<W: fmt::Write>(out: &mut Escaping<W>, value: f64) -> fmt::Result {
    match Millis::of(value) {
        Some(millis) => millis.write(&mut out.0),
        None => write!(out, "{value:?}"),
    }
}

/// A number with at most three decimals and less than 10^12 (the access log's
/// `duration_ms`, rounded to microseconds), written as `{:?}` writes it without float
/// formatting, which was a thousand instructions a line: below 10^12 a double is less than
/// 10^-3 from its neighbours, so the three-decimal number it was made from is its shortest
/// representation.
struct Millis {
    whole: u64,
    thousandths: u64,
}

impl Millis {
    fn of(value: f64) -> Option<Millis> {
        if !(0.0..1e12).contains(&value) {
            return None;
        }
        let scaled = (value * 1000.0).round();
        if scaled / 1000.0 != value {
            return None;
        }
        let scaled = scaled as u64;
        Some(Millis {
            whole: scaled / 1000,
            thousandths: scaled % 1000,
        })
    }

    fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str(itoa::Buffer::new().format(self.whole))?;
        let digits = [
            b'0' + (self.thousandths / 100) as u8,
            b'0' + (self.thousandths / 10 % 10) as u8,
            b'0' + (self.thousandths % 10) as u8,
        ];
        let used = match self.thousandths {
            0 => 1,
            t if t % 100 == 0 => 1,
            t if t % 10 == 0 => 2,
            _ => 3,
        };
        out.write_char('.')?;
        out.write_str(std::str::from_utf8(&digits[..used]).expect("digits are ASCII"))
    }
}

/// Writes through to the line, with control characters as `\xNN`.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // 0xc2 starts every C1 character (U+0080..U+009F) in UTF-8.
        if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\0'..='\x1f' | '\x7f'..='\u{9f}' => write!(self.0, "\\x{:02x}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What one event becomes as a text line, fields formatted by `fields`.
    fn line<N>(fields: N, emit: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn access_line() {
        let method = http::Method::POST;
        let client = String::from("127.0.0.1");
        tracing::info!(
            target: "access",
            request_id = "17018337-3b76",
            %method,
            endpoint = "write",
            status = 204u16,
            client,
            db = %"bench",
            rp = %"",
            tries = 1u32,
            offset = -3i64,
            ok = true,
            duration_ms = 19.45,
            "request"
        );
    }

    #[test]
    fn lines_are_written_as_the_default_fields_write_them_without_colours() {
        let ours = line(PlainFields, access_line);
        let default = line(
            tracing_subscriber::fmt::format::DefaultFields::new(),
            access_line,
        );
        assert_eq!(ours, default);
        assert!(
            ours.ends_with(
                "access: request request_id=\"17018337-3b76\" method=POST endpoint=\"write\" \
                 status=204 client=\"127.0.0.1\" db=bench rp= tries=1 offset=-3 ok=true \
                 duration_ms=19.45\n"
            ),
            "{ours}"
        );
    }

    #[test]
    fn control_characters_in_values_cannot_start_a_line_of_their_own() {
        let forged = "x\n2026-12-01T00:00:00Z  INFO access: forged\x1b[2J\u{85}";
        let ours = line(
            PlainFields,
            || tracing::info!(target: "access", db = %forged, name = forged, "request"),
        );
        assert_eq!(ours.lines().count(), 1, "{ours}");
        assert!(
            ours.contains(r"db=x\x0a2026-12-01T00:00:00Z  INFO access: forged\x1b[2J\x85 "),
            "{ours}"
        );
        assert!(ours.contains(r#"name="x\n2026"#), "{ours}");
        let quoted = line(PlainFields, || {
            tracing::info!(name = "a \"b\" \\ é", "request")
        });
        assert!(quoted.contains(r#"name="a \"b\" \\ é""#), "{quoted}");
        assert!(!ours.contains('\x1b'), "{ours}");
    }

    #[test]
    fn milliseconds_read_as_debug_writes_them() {
        let ours = |value: f64| line(PlainFields, || tracing::info!(duration_ms = value, "x"));
        let mut values = vec![0.0, 0.001, 0.01, 0.08, 0.1, 0.5, 1.0, 1.359, 19.45, 100.0];
        values.extend([999.999, 1234.5, 60_000.0, 86_400_000.001, 999_999_999.999]);
        // As the access log makes them (`observe.rs`): every microsecond below 3 ms, and a
        // spread of larger durations.
        values.extend((0..3000).map(|us| (us as f64 / 1e6 * 1e6).round() / 1e3));
        values.extend((0..2000u64).map(|i| ((i * 7_919_993) % 100_000_000) as f64 / 1e3));
        // Not made by rounding to microseconds: written by `{:?}` itself.
        values.extend([
            0.0001,
            1e-7,
            1.0 / 3.0,
            2.5e12,
            1e17,
            f64::NAN,
            -1.5,
            f64::INFINITY,
        ]);
        for value in values {
            let line = ours(value);
            let expected = format!(" duration_ms={value:?}\n");
            assert!(line.ends_with(&expected), "{value:?}: {line}");
        }
    }

    /// A timer that always writes the same time.
    struct Fixed;

    impl tracing_subscriber::fmt::time::FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-02T14:06:20.520576Z")
        }
    }

    /// What tracing writes for an access event with these values, at `level`.
    fn through_tracing(level: tracing::Level, v: &[&str; 4], n: u64, ms: f64) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_timer(Fixed)
            .fmt_fields(PlainFields)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let [id, db, client, node] = *v;
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! event {
                ($level:expr) => {
                    tracing::event!(
                        target: "access", $level, request_id = id, db = %db, client,
                        node = %node, tries = 1u32, bytes = n, duration_ms = ms, "request"
                    )
                };
            }
            match level {
                tracing::Level::DEBUG => event!(tracing::Level::DEBUG),
                _ => event!(tracing::Level::INFO),
            }
        });
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn direct_lines_are_the_lines_tracing_writes() {
        let odd = [
            ["17018337-3b76", "bench", "127.0.0.1", "127.0.0.1:18086"],
            ["", "", "", ""],
            ["a\"b\\c", "x\ny\r\t\u{1b}[2J", "::1", "n\u{85}ode"],
            ["é ✓", "db with spaces", "\u{7f}", "%0A"],
        ];
        for (i, v) in odd.iter().enumerate() {
            for level in [tracing::Level::INFO, tracing::Level::DEBUG] {
                let (n, ms) = ([0, 1681, u64::MAX, 7][i], [0.08, 1.0 / 3.0, 0.0, 1e17][i]);
                let mut direct = String::new();
                write_line(
                    &mut direct,
                    &Fixed,
                    level,
                    "access",
                    "request",
                    &[
                        ("request_id", Value::Str(v[0])),
                        ("db", Value::Display(v[1])),
                        ("client", Value::Str(v[2])),
                        ("node", Value::Display(v[3])),
                        ("tries", Value::U64(1)),
                        ("bytes", Value::U64(n)),
                        ("duration_ms", Value::F64(ms)),
                    ],
                )
                .unwrap();
                assert_eq!(direct, through_tracing(level, v, n, ms), "{v:?} at {level}");
            }
        }
    }
}
