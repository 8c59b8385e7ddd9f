//! Measures the line-protocol scanner alone: `cargo run --release --example scan_speed -- BODY_FILE`.
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: scan_speed BODY_FILE");
    let body = bytes::Bytes::from(std::fs::read(&path).expect("readable body file"));
    let rounds = 2000;
    let started = Instant::now();
    let mut points = 0;
    for _ in 0..rounds {
        let (out, summary) = influx_write_proxy::lineproto::stamp(body.clone(), 1);
        points += summary.points;
        std::hint::black_box(out);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{:.0} MB/s, {:.1} M points/s ({} bytes, {} points a body)",
        body.len() as f64 * rounds as f64 / secs / 1e6,
        points as f64 / secs / 1e6,
        body.len(),
        points / rounds
    );
}
