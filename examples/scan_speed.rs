//! Measures the line-protocol scanner alone, in ns per line:
//! `cargo run --release --example scan_speed -- BODY_FILE`. Rows: memchr's newline iterator
//! (the floor), the quick check fed 16 KiB frames as the handler feeds it, `stamp` on the
//! body as it is, and `stamp` on the body with its timestamps cut off (the full judgement on
//! every line).
use std::time::Instant;

use influx_write_proxy::lineproto::{stamp, TimestampCheck};

fn per_line(name: &str, lines: usize, mut round: impl FnMut() -> u64) {
    let rounds = 400;
    let started = Instant::now();
    let mut total = 0;
    for _ in 0..rounds {
        total += std::hint::black_box(round());
    }
    let ns = started.elapsed().as_nanos() as f64 / (rounds * lines) as f64;
    println!(
        "{name:<34} {ns:6.2} ns/line  ({} a round)",
        total / rounds as u64
    );
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: scan_speed BODY_FILE");
    let body = bytes::Bytes::from(std::fs::read(&path).expect("readable body file"));
    let lines = memchr::memchr_iter(b'\n', &body).count().max(1);
    println!("{} bytes, {lines} lines", body.len());
    per_line("memchr newline iterator", lines, || {
        memchr::memchr_iter(b'\n', &body).count() as u64
    });
    per_line("memchr iterator, each newline", lines, || {
        let mut last = 0;
        for nl in memchr::memchr_iter(b'\n', &body) {
            last ^= nl;
        }
        last as u64
    });
    per_line("quick check, 16 KiB frames", lines, || {
        let mut check = TimestampCheck::default();
        for frame in body.chunks(16 * 1024) {
            check.feed(frame);
        }
        check.finish().unwrap_or(0)
    });
    per_line("stamp, body as it is", lines, || {
        stamp(body.clone(), 1).1.points
    });
    let untimed: Vec<u8> = body
        .split(|&b| b == b'\n')
        .flat_map(|line| {
            let cut = line.iter().rposition(|&b| b == b' ').unwrap_or(line.len());
            line[..cut].iter().copied().chain([b'\n'])
        })
        .collect();
    let untimed = bytes::Bytes::from(untimed);
    per_line("stamp, timestamps cut off", lines, || {
        stamp(untimed.clone(), 1).1.untimed
    });
}
