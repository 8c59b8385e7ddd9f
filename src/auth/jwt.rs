//! JWTs as InfluxDB 1.x accepts them: HS256 only, signed with the shared secret, an
//! `username`, `exp` in the future; `nbf` and `iat` checked as jwt-go checks them.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Verifies an InfluxDB-style JWT: HS256 only (`alg: none` and every other algorithm are
/// refused), a valid signature and a `username`; then the time claims as InfluxDB 1.x checks
/// them (jwt-go's `MapClaims.Valid`, whole seconds): `exp` is required and must not have
/// passed, `nbf` and `iat`, when they are numbers, must not be in the future. `leeway`
/// seconds of clock skew are allowed on each.
pub fn verify_jwt(token: &str, secret: &[u8], now: i64, leeway: i64) -> Option<String> {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
    }
    let header: Header = serde_json::from_slice(&b64.decode(header).ok()?).ok()?;
    if header.alg != "HS256" {
        return None;
    }
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(&token.as_bytes()[..token.rfind('.')?]);
    mac.verify_slice(&b64.decode(signature).ok()?).ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        username: String,
        exp: f64,
        nbf: Option<serde_json::Value>,
        iat: Option<serde_json::Value>,
    }
    let claims: Claims = serde_json::from_slice(&b64.decode(claims).ok()?).ok()?;
    // jwt-go reads numeric claims as float64 and compares them truncated to int64; a claim
    // of another type is not checked.
    let seconds = |claim: &Option<serde_json::Value>| claim.as_ref()?.as_f64().map(|f| f as i64);
    let in_time = claims.exp > 0.0
        && now <= (claims.exp as i64).saturating_add(leeway)
        && seconds(&claims.nbf).is_none_or(|nbf| nbf <= now.saturating_add(leeway))
        && seconds(&claims.iat).is_none_or(|iat| iat <= now.saturating_add(leeway));
    (in_time && !claims.username.is_empty()).then_some(claims.username)
}

/// A signed HS256 token, for tests.
#[cfg(test)]
pub(super) fn signed(header: &str, claims: &str, secret: &[u8]) -> String {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let mut mac = HmacSha256::new_from_slice(secret).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_accepts_only_signed_unexpired_hs256() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
        let good = signed(hs256, r#"{"username":"alice","exp":2000}"#, secret);
        assert_eq!(verify_jwt(&good, secret, 1000, 0).as_deref(), Some("alice"));
        assert_eq!(
            verify_jwt(&good, secret, 2000, 0).as_deref(),
            Some("alice"),
            "valid through its exp second, as jwt-go has it"
        );
        assert_eq!(verify_jwt(&good, secret, 2001, 0), None, "expired");
        assert_eq!(
            verify_jwt(&good, b"another-secret-of-32-bytes-long!", 1000, 0),
            None,
            "wrong key"
        );
        let none = signed(
            r#"{"alg":"none"}"#,
            r#"{"username":"alice","exp":2000}"#,
            secret,
        );
        assert_eq!(verify_jwt(&none, secret, 1000, 0), None, "alg none");
        let unsigned = format!("{}.", &good[..good.rfind('.').unwrap()]);
        assert_eq!(
            verify_jwt(&unsigned, secret, 1000, 0),
            None,
            "empty signature"
        );
        let hs512 = signed(
            r#"{"alg":"HS512"}"#,
            r#"{"username":"alice","exp":2000}"#,
            secret,
        );
        assert_eq!(verify_jwt(&hs512, secret, 1000, 0), None, "other algorithm");
        let no_exp = signed(hs256, r#"{"username":"alice"}"#, secret);
        assert_eq!(
            verify_jwt(&no_exp, secret, 1000, 0),
            None,
            "exp is required"
        );
    }

    #[test]
    fn jwt_not_yet_valid_or_issued_in_the_future_is_refused_as_influxdb_does() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let hs256 = r#"{"alg":"HS256"}"#;
        let token = |claims: &str| signed(hs256, claims, secret);
        let cases = [
            // (claims, now, leeway, accepted)
            (r#"{"username":"a","exp":5000,"nbf":1000}"#, 1000, 0, true),
            (r#"{"username":"a","exp":5000,"nbf":1001}"#, 1000, 0, false),
            (
                r#"{"username":"a","exp":5000,"nbf":1001.9}"#,
                1000,
                0,
                false,
            ),
            (r#"{"username":"a","exp":5000,"iat":1000}"#, 1000, 0, true),
            (r#"{"username":"a","exp":5000,"iat":1001}"#, 1000, 0, false),
            (
                r#"{"username":"a","exp":5000,"iat":1030,"nbf":1030}"#,
                1000,
                30,
                true,
            ),
            (r#"{"username":"a","exp":5000,"iat":1031}"#, 1000, 30, false),
            (r#"{"username":"a","exp":970}"#, 1000, 30, true),
            (r#"{"username":"a","exp":969}"#, 1000, 30, false),
            // jwt-go checks only numeric time claims.
            (
                r#"{"username":"a","exp":5000,"nbf":"tomorrow"}"#,
                1000,
                0,
                true,
            ),
        ];
        for (claims, now, leeway, accepted) in cases {
            assert_eq!(
                verify_jwt(&token(claims), secret, now, leeway).is_some(),
                accepted,
                "{claims} at {now} with leeway {leeway}"
            );
        }
    }
}
