//! Credential parsing on arbitrary query strings and Authorization headers: no panic, and
//! nothing but the documented forms is ever read as credentials.
#![no_main]

use http::{HeaderMap, HeaderValue};
use influx_write_proxy::auth::{presented, verify_jwt, Presented};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (query, header) = data.split_at(split);
    let query = std::str::from_utf8(query).ok();
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(header.get(1..).unwrap_or_default()) {
        headers.insert("authorization", value);
    }
    for jwt in [false, true] {
        match presented(query, &headers, jwt) {
            Presented::Jwt(token) => {
                assert!(jwt);
                let _ = verify_jwt(&token, b"0123456789abcdef0123456789abcdef", 0, 0);
            }
            Presented::UserPassword { user, .. } => assert!(!user.is_empty() || headers.contains_key("authorization")),
            _ => {}
        }
    }
});
