//! Reads the query of `/write` and `/api/v2/write` into one [`WriteParams`], and writes the
//! query the upstream's 1.x `/write` receives. 2.x writes become 1.x writes here: `bucket`
//! `db/rp` → `db` + `rp`, precision `ns|us|ms|s` → `n|u|ms|s`, `org`/`orgID` dropped.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use crate::config::Secret;
use crate::error::ProxyError;
use crate::lineproto::Precision;

/// What a write asks for, whichever API it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteParams {
    pub db: String,
    pub rp: Option<String>,
    pub precision: Precision,
    /// Forwarded as the client gave it (validated case-insensitively).
    pub consistency: Option<String>,
    /// `u` and `p` query parameters, when both are non-empty (InfluxDB's rule).
    pub user: Option<(String, Secret)>,
}

impl WriteParams {
    /// Parameters of a 1.x `/write`: `db`, `rp`, `precision`, `consistency`, `u`, `p`.
    pub fn from_v1(query: Option<&str>) -> Result<Self, ProxyError> {
        let q = Query::parse(query)?;
        let db = q
            .get("db")
            .filter(|db| !db.is_empty())
            .ok_or(ProxyError::DatabaseRequired)?;
        let precision = match q.get("precision").filter(|p| !p.is_empty()) {
            None => Precision::Nanoseconds,
            Some(p) => {
                Precision::from_v1(&p).ok_or_else(|| ProxyError::InvalidPrecisionV1(p.into()))?
            }
        };
        Ok(Self {
            db: db.into(),
            rp: q.get("rp").filter(|rp| !rp.is_empty()).map(Into::into),
            precision,
            consistency: consistency(q.get("consistency"))?,
            user: q.user(),
        })
    }

    /// Parameters of a 2.x `/api/v2/write`: `bucket` (`db`, `db/` or `db/rp`), `precision`.
    pub fn from_v2(query: Option<&str>) -> Result<Self, ProxyError> {
        let q = Query::parse(query)?;
        let bucket = q
            .get("bucket")
            .filter(|b| !b.is_empty())
            .ok_or(ProxyError::BucketRequired)?;
        let (db, rp) = match bucket.split_once('/') {
            Some((db, rp)) => (db, Some(rp).filter(|rp| !rp.is_empty())),
            None => (&*bucket, None),
        };
        if db.is_empty() {
            return Err(ProxyError::BucketEmptyDatabase(bucket.into()));
        }
        let precision = match q.get("precision").filter(|p| !p.is_empty()) {
            None => Precision::Nanoseconds,
            Some(p) => {
                Precision::from_v2(&p).ok_or_else(|| ProxyError::InvalidPrecisionV2(p.into()))?
            }
        };
        Ok(Self {
            db: db.into(),
            rp: rp.map(Into::into),
            precision,
            consistency: consistency(q.get("consistency"))?,
            user: q.user(),
        })
    }

    /// The query of the upstream `/write`: only the parameters the proxy understood,
    /// form-encoded.
    pub fn upstream_query(&self) -> String {
        let mut out = String::with_capacity(64);
        append_pair(&mut out, "db", &self.db);
        if let Some(rp) = &self.rp {
            append_pair(&mut out, "rp", rp);
        }
        append_pair(&mut out, "precision", self.precision.as_v1());
        if let Some(consistency) = &self.consistency {
            append_pair(&mut out, "consistency", consistency);
        }
        out
    }
}

/// `name=value` after an `&` if `out` has pairs already, exactly as `form_urlencoded`'s
/// serializer writes it; a value that needs no escaping (nearly every database name) is
/// copied, not run byte by byte through the encoder.
fn append_pair(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(name);
    out.push('=');
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_'))
    {
        out.push_str(value);
    } else {
        out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    }
}

fn consistency(value: Option<Cow<'_, str>>) -> Result<Option<String>, ProxyError> {
    match value.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c)
            if ["any", "one", "quorum", "all"]
                .iter()
                .any(|l| c.eq_ignore_ascii_case(l)) =>
        {
            Ok(Some(c.into()))
        }
        Some(c) => Err(ProxyError::InvalidConsistency(c.into())),
    }
}

/// A request query read as InfluxDB reads it, through Go's `url.ParseQuery` (Go 1.17 and
/// later, which every InfluxDB 1.x build since 1.8.10 and Debian's use): pairs split at `&`,
/// a pair containing `;` or a malformed `%` escape is dropped, `+` is a space, the first
/// value wins. Only the parameters the proxy reads are decoded, and those must be UTF-8.
pub struct Query<'a> {
    /// Each pair's name, decoded once (`None` when that is not UTF-8), and its raw value.
    pairs: Vec<(Option<Cow<'a, str>>, &'a str)>,
}

/// The parameters the proxy reads; anything else is ignored and never forwarded.
const KNOWN: [&str; 14] = [
    "db",
    "rp",
    "precision",
    "consistency",
    "u",
    "p",
    "bucket",
    "q",
    "verbose",
    "epoch",
    "chunked",
    "chunk_size",
    "pretty",
    "params",
];

impl<'a> Query<'a> {
    pub fn parse(query: Option<&'a str>) -> Result<Self, ProxyError> {
        let pairs: Vec<_> = query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty() && !pair.contains(';'))
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .filter(|(key, value)| well_escaped(key) && well_escaped(value))
            .map(|(key, value)| (decode(key), value))
            .collect();
        // Reject undecodable known parameters up front, so `get` can be infallible.
        for (key, value) in &pairs {
            if let Some(known) = key
                .as_deref()
                .and_then(|key| KNOWN.iter().find(|k| **k == key))
            {
                if decode(value).is_none() {
                    return Err(ProxyError::InvalidParameter(known));
                }
            }
        }
        Ok(Self { pairs })
    }

    /// The first value of `name`, decoded.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.pairs
            .iter()
            .find(|(key, _)| key.as_deref() == Some(name))
            .and_then(|(_, value)| decode(value))
    }

    /// `u` and `p`, when both are non-empty (InfluxDB's rule for query credentials).
    pub fn user(&self) -> Option<(String, Secret)> {
        let u = self.get("u").filter(|u| !u.is_empty())?;
        let p = self.get("p").filter(|p| !p.is_empty())?;
        Some((u.into(), Secret::new(p.into())))
    }
}

/// Every `%` is followed by two hex digits (else Go's `QueryUnescape` fails).
fn well_escaped(text: &str) -> bool {
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'%', bytes).all(|i| {
        bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()
    })
}

fn decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'+' || b == b'%') {
        return Some(Cow::Borrowed(text));
    }
    let spaced = text.replace('+', " ");
    let bytes: Vec<u8> = percent_decode(spaced.as_bytes()).collect();
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_query_is_what_form_urlencoded_writes() {
        let values = [
            "telegraf",
            "my-db_1.x*",
            "",
            "a b",
            "rp/x",
            "é",
            "%41",
            "a&b=c",
            "+",
            "~",
            "\u{0}",
        ];
        for db in values {
            for rp in [None, Some("autogen"), Some("a b/c")] {
                let params = WriteParams {
                    db: db.into(),
                    rp: rp.map(Into::into),
                    precision: Precision::Seconds,
                    consistency: Some("quorum".into()),
                    user: None,
                };
                let mut expected = form_urlencoded::Serializer::new(String::new());
                expected.append_pair("db", db);
                if let Some(rp) = rp {
                    expected.append_pair("rp", rp);
                }
                expected.append_pair("precision", "s");
                expected.append_pair("consistency", "quorum");
                assert_eq!(params.upstream_query(), expected.finish(), "{db:?} {rp:?}");
            }
        }
    }

    #[test]
    fn v1_defaults_and_forwarded_query() {
        let params = WriteParams::from_v1(Some("db=mydb&u=bob&p=secret&foo=bar")).unwrap();
        assert_eq!(params.precision, Precision::Nanoseconds);
        assert_eq!(params.rp, None);
        assert_eq!(params.user.as_ref().map(|u| u.0.as_str()), Some("bob"));
        assert_eq!(params.upstream_query(), "db=mydb&precision=n");
    }

    #[test]
    fn v1_requires_database_and_valid_precision_and_consistency() {
        assert!(matches!(
            WriteParams::from_v1(None),
            Err(ProxyError::DatabaseRequired)
        ));
        assert!(matches!(
            WriteParams::from_v1(Some("db=")),
            Err(ProxyError::DatabaseRequired)
        ));
        let err = WriteParams::from_v1(Some("db=a&precision=us")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid precision \"us\" (use n, u, ms, s, m or h)"
        );
        let err = WriteParams::from_v1(Some("db=a&consistency=most")).unwrap_err();
        assert_eq!(err.to_string(), "invalid consistency level \"most\"");
        let ok =
            WriteParams::from_v1(Some("db=a&consistency=QUORUM&rp=r%20p&precision=h")).unwrap();
        assert_eq!(
            ok.upstream_query(),
            "db=a&rp=r+p&precision=h&consistency=QUORUM"
        );
    }

    #[test]
    fn v2_bucket_splits_at_first_slash_and_maps_precision() {
        let p = WriteParams::from_v2(Some("bucket=db%2Frp%2Fx&org=acme&precision=us")).unwrap();
        assert_eq!((p.db.as_str(), p.rp.as_deref()), ("db", Some("rp/x")));
        assert_eq!(p.upstream_query(), "db=db&rp=rp%2Fx&precision=u");
        let p = WriteParams::from_v2(Some("bucket=db/")).unwrap();
        assert_eq!((p.db.as_str(), p.rp), ("db", None));
        let p = WriteParams::from_v2(Some("bucket=telegraf")).unwrap();
        assert_eq!(p.upstream_query(), "db=telegraf&precision=n");
    }

    #[test]
    fn v2_rejects_missing_or_empty_database_and_v1_precisions() {
        assert!(matches!(
            WriteParams::from_v2(Some("org=x")),
            Err(ProxyError::BucketRequired)
        ));
        let err = WriteParams::from_v2(Some("bucket=/autogen")).unwrap_err();
        assert_eq!(err.to_string(), "bucket \"/autogen\" has an empty database");
        let err = WriteParams::from_v2(Some("bucket=a&precision=n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid precision \"n\" (use ns, us, ms or s)"
        );
    }

    #[test]
    fn invalid_utf8_in_a_known_parameter_is_rejected() {
        let err = WriteParams::from_v1(Some("db=%ff")).unwrap_err();
        assert_eq!(err.to_string(), "query parameter \"db\" is not valid UTF-8");
        // Unknown parameters are not ours to judge.
        assert!(WriteParams::from_v1(Some("db=a&junk=%ff")).is_ok());
    }

    #[test]
    fn credentials_need_both_u_and_p() {
        assert!(WriteParams::from_v1(Some("db=a&u=bob&p="))
            .unwrap()
            .user
            .is_none());
        assert!(WriteParams::from_v1(Some("db=a&p=x"))
            .unwrap()
            .user
            .is_none());
    }

    #[test]
    fn pairs_go_drops_are_not_read() {
        // `;` no longer separates pairs (Go 1.17): the whole pair is dropped.
        assert!(matches!(
            WriteParams::from_v1(Some("db=x;precision=s")),
            Err(ProxyError::DatabaseRequired)
        ));
        let p = WriteParams::from_v1(Some("db=x&precision=s;rp=y&rp=r")).unwrap();
        assert_eq!(p.upstream_query(), "db=x&rp=r&precision=n");
        // A malformed escape drops its pair too.
        assert!(matches!(
            WriteParams::from_v1(Some("db=a%zz")),
            Err(ProxyError::DatabaseRequired)
        ));
        let p = WriteParams::from_v1(Some("db=a%2&db=b")).unwrap();
        assert_eq!(p.db, "b");
    }

    #[test]
    fn first_value_of_a_repeated_parameter_wins() {
        let p = WriteParams::from_v1(Some("db=first&db=second")).unwrap();
        assert_eq!(p.db, "first");
    }
}
