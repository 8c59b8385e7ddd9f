//! The read path's classifier on arbitrary queries: no panic, and no input is classified as
//! only reads when it holds a statement that changes something. Whatever comes before it, a
//! `DROP DATABASE` after a newline and a `;` is a statement of its own (a string, quoted
//! identifier or regex cannot span a newline, and an open `/*` is refused), and one at the
//! start always is.
#![no_main]

use influx_write_proxy::influxql::{classify, Class};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = classify(text, "db");
    for query in [
        format!("{text}\n;DROP DATABASE x"),
        format!("DROP DATABASE x;{text}"),
    ] {
        if let Ok(statements) = classify(&query, "db") {
            assert!(
                statements.iter().any(|s| s.class == Class::Admin),
                "{query:?} classified as {statements:?}"
            );
        }
    }
});
