//! The scanner on arbitrary bodies: no panic, the fast timestamp check never lets through a
//! body the full scan would change, the answer does not depend on how the body was split
//! into frames, and stamping leaves every byte of a timestamped point where it was.
#![no_main]

use bytes::Bytes;
use influx_write_proxy::lineproto::{all_timestamped, stamp, summarize, Lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = summarize(data);
    let fast = all_timestamped(&[data]);
    if fast.is_some() {
        assert_eq!((full.untimed, full.crlf), (0, 0));
    }
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    assert_eq!(all_timestamped(&[&data[..cut], &data[cut..]]), fast);

    let (out, summary) = stamp(Bytes::copy_from_slice(data), 1_700_000_000);
    assert_eq!(summary, full);
    if summary.untimed == 0 && summary.crlf == 0 {
        assert_eq!(&out[..], data);
    }
    assert!(Lines::new(&out).filter(|l| l.point).count() as u64 <= full.points);
});
