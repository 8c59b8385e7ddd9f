//! The scanner on arbitrary bodies: no panic, the quick timestamp check never clears a line
//! the full judgement (InfluxDB's `parsePoint`) would stamp, nor a body the full scan would
//! change, the answer does not depend on how the body was split into frames, and stamping
//! changes nothing but appending to untimed points and dropping a CRLF's `\r`.
#![no_main]

use bytes::Bytes;
use influx_write_proxy::lineproto::{all_timestamped, parse_point, stamp, summarize, Lines, Time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = summarize(data);
    let fast = all_timestamped(&[data]);
    if fast.is_some() {
        assert_eq!((full.untimed, full.crlf), (0, 0));
    }
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    assert_eq!(all_timestamped(&[&data[..cut], &data[cut..]]), fast);

    let mut expected = vec![];
    let mut copied = 0;
    for line in Lines::new(data) {
        let text = &data[line.start..line.end];
        let first = text.iter().position(|&b| !matches!(b, b' ' | b'\t' | 0));
        if let (true, Some(first)) = (line.point, first) {
            if all_timestamped(&[text]).is_some() && !text.contains(&b'\n') {
                assert_ne!(parse_point(&text[first..]), Ok(Time::Missing));
            }
        }
        expected.extend_from_slice(&data[copied..line.end]);
        if line.untimed {
            expected.extend_from_slice(b" 1700000000");
        }
        copied = line.end + usize::from(line.crlf);
    }
    expected.extend_from_slice(&data[copied..]);
    let (out, summary) = stamp(Bytes::copy_from_slice(data), 1_700_000_000);
    assert_eq!((summary.untimed, summary.crlf), (full.untimed, full.crlf));
    assert_eq!(&out[..], &expected[..]);
});
