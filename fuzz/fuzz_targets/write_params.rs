//! Query parsing and the v2→v1 rewrite on arbitrary query strings: no panic, and what is
//! forwarded upstream always parses back to the same write.
#![no_main]

use influx_write_proxy::rewrite::WriteParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    for parsed in [WriteParams::from_v1(Some(query)), WriteParams::from_v2(Some(query))] {
        if let Ok(params) = parsed {
            let forwarded = params.upstream_query();
            let again = WriteParams::from_v1(Some(&forwarded)).expect("forwarded query is valid");
            assert_eq!((again.db, again.rp, again.precision), (params.db, params.rp, params.precision));
        }
    }
});
