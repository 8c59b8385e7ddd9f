//! Credentials as InfluxDB 1.x reads them from a request: `u` and `p` when both are
//! non-empty, else the `Authorization` header (`Bearer`, `Token`, `Basic`).

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::config::Secret;
use crate::rewrite::Query;

/// What a request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    None,
    Token(String),
    UserPassword {
        user: String,
        password: Secret,
    },
    Jwt(String),
    /// An `Authorization` header the proxy cannot read.
    Malformed,
}

/// Reads credentials as InfluxDB 1.x does: `u` and `p` when both are non-empty, else the
/// `Authorization` header. `Bearer` carries a JWT when JWTs are configured and it looks
/// like one (three dot-separated parts), else a token; `Token` carries `user:password` or a
/// token; `Basic` carries `user:password`.
pub fn presented(query: Option<&str>, headers: &HeaderMap, jwt: bool) -> Presented {
    if let Some((user, password)) = Query::parse(query).ok().and_then(|q| q.user()) {
        return Presented::UserPassword { user, password };
    }
    let Some(header) = headers.get(AUTHORIZATION) else {
        return Presented::None;
    };
    // UTF-8, not only visible ASCII: InfluxDB takes the header's bytes as they are, so a
    // password with non-ASCII characters works in `Token user:password` as in `Basic`.
    let Ok(header) = std::str::from_utf8(header.as_bytes()) else {
        return Presented::Malformed;
    };
    let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
    let value = value.trim();
    if value.is_empty() {
        return Presented::Malformed;
    }
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" if jwt && value.matches('.').count() == 2 => Presented::Jwt(value.to_string()),
        "bearer" => Presented::Token(value.to_string()),
        "token" => match value.split_once(':') {
            Some((user, password)) if !user.is_empty() => Presented::UserPassword {
                user: user.to_string(),
                password: Secret::new(password.to_string()),
            },
            _ => Presented::Token(value.to_string()),
        },
        "basic" => base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| {
                let (user, password) = pair.split_once(':')?;
                Some(Presented::UserPassword {
                    user: user.to_string(),
                    password: Secret::new(password.to_string()),
                })
            })
            .unwrap_or(Presented::Malformed),
        _ => Presented::Malformed,
    }
}

/// `user` and `password` as a client presents them, for tests.
#[cfg(test)]
pub(super) fn up(user: &str, password: &str) -> Presented {
    Presented::UserPassword {
        user: user.into(),
        password: Secret::new(password.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn reads_credentials_as_influxdb_does() {
        let none = HeaderMap::new();
        assert_eq!(
            presented(Some("db=a&u=al&p=pw"), &headers("Bearer x"), false),
            up("al", "pw")
        );
        assert_eq!(
            presented(Some("db=a&u=al&p="), &none, false),
            Presented::None
        );
        assert_eq!(
            presented(None, &headers("Token abc"), false),
            Presented::Token("abc".into())
        );
        assert_eq!(
            presented(None, &headers("Token al:pw:x"), false),
            up("al", "pw:x")
        );
        // A UTF-8 password reads as it does in Basic.
        let mut utf8 = HeaderMap::new();
        utf8.insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes("Token al:pässwörd".as_bytes()).unwrap(),
        );
        assert_eq!(presented(None, &utf8, false), up("al", "pässwörd"));
        assert_eq!(
            presented(None, &headers("Bearer abc"), false),
            Presented::Token("abc".into())
        );
        assert_eq!(
            presented(None, &headers("Bearer a.b.c"), true),
            Presented::Jwt("a.b.c".into())
        );
        assert_eq!(
            presented(None, &headers("Bearer a.b.c"), false),
            Presented::Token("a.b.c".into())
        );
        assert_eq!(
            presented(None, &headers("Basic YWw6cHc="), false),
            up("al", "pw")
        );
        assert_eq!(
            presented(None, &headers("Basic !!!"), false),
            Presented::Malformed
        );
        assert_eq!(
            presented(None, &headers("Digest x"), false),
            Presented::Malformed
        );
        assert_eq!(
            presented(None, &headers("Bearer"), false),
            Presented::Malformed
        );
    }
}
