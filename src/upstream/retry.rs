//! What is safe to try again, and when. One `classify()` decides for the live path and for
//! spool replay: connection errors, per-try timeouts, 502/503/504, and a 500 whose error
//! is `timeout` or an exceeded cache are retried; nothing else is, because InfluxDB has
//! already judged the write (a 4xx or a permanent 500 would be rejected again, and a replay
//! of a partial write would only repeat its error). Retries are safe because points without a
//! timestamp were stamped before the first try: a second delivery overwrites, never adds.

use std::time::Duration;

use crate::error::ProxyError;

/// The verdict on one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again (another node when there is one), for this reason.
    Retry(Reason),
    /// The answer stands, success or not.
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Connection,
    Timeout,
    /// 502, 503 or 504 from the upstream.
    Unavailable,
    /// 500 `timeout` or `engine: cache-max-memory-size exceeded`: the node is overloaded.
    Overloaded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connection => "connection error",
            Reason::Timeout => "timeout",
            Reason::Unavailable => "upstream unavailable",
            Reason::Overloaded => "upstream overloaded",
        }
    }
}

/// Decides whether the outcome of one try may be retried.
pub fn classify<T>(outcome: &Result<T, ProxyError>) -> Decision {
    match outcome {
        Ok(_) => Decision::Final,
        Err(error) => classify_error(error),
    }
}

/// `classify` for a failure.
pub fn classify_error(error: &ProxyError) -> Decision {
    match error {
        ProxyError::UpstreamUnavailable { .. } => Decision::Retry(Reason::Connection),
        ProxyError::UpstreamTimeout { .. } => Decision::Retry(Reason::Timeout),
        ProxyError::Upstream { status, .. } if matches!(status.as_u16(), 502..=504) => {
            Decision::Retry(Reason::Unavailable)
        }
        ProxyError::Upstream {
            status, message, ..
        } if status.as_u16() == 500
            && (message == "timeout"
                || message.starts_with("engine: cache-max-memory-size exceeded")) =>
        {
            Decision::Retry(Reason::Overloaded)
        }
        _ => Decision::Final,
    }
}

/// Longest pause between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Full-jitter exponential backoff: a random pause in `[0, min(cap, base × 2^retry)]`, so
/// clients that failed together do not come back together.
pub fn backoff(base: Duration, retry: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(16)).min(MAX_BACKOFF);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn upstream(status: u16, message: &str) -> Result<(), ProxyError> {
        Err(ProxyError::Upstream {
            status: StatusCode::from_u16(status).unwrap(),
            message: message.into(),
            version: None,
            header: None,
        })
    }

    #[test]
    fn retries_only_what_spec_lists() {
        let cluster = || "c".to_string();
        let cases: Vec<(Result<(), ProxyError>, Decision)> = vec![
            (Ok(()), Decision::Final),
            (
                Err(ProxyError::UpstreamUnavailable {
                    cluster: cluster(),
                    source: "refused".into(),
                }),
                Decision::Retry(Reason::Connection),
            ),
            (
                Err(ProxyError::UpstreamTimeout { cluster: cluster() }),
                Decision::Retry(Reason::Timeout),
            ),
            (
                Err(ProxyError::UpstreamBadResponse {
                    cluster: cluster(),
                    source: "garbage".into(),
                }),
                Decision::Final,
            ),
            (
                upstream(502, "bad gateway"),
                Decision::Retry(Reason::Unavailable),
            ),
            (upstream(503, ""), Decision::Retry(Reason::Unavailable)),
            (upstream(504, ""), Decision::Retry(Reason::Unavailable)),
            (
                upstream(500, "timeout"),
                Decision::Retry(Reason::Overloaded),
            ),
            (
                upstream(
                    500,
                    "engine: cache-max-memory-size exceeded: (1073741824/1073741824)",
                ),
                Decision::Retry(Reason::Overloaded),
            ),
            (
                upstream(500, "retention policy not found: x"),
                Decision::Final,
            ),
            (upstream(500, "write failed"), Decision::Final),
            (upstream(400, "partial write: dropped=1"), Decision::Final),
            (upstream(404, "database not found: \"x\""), Decision::Final),
            (upstream(401, "authorization failed"), Decision::Final),
        ];
        for (outcome, expected) in cases {
            assert_eq!(classify(&outcome), expected, "{outcome:?}");
        }
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let base = Duration::from_millis(50);
        for retry in 0..10 {
            let ceiling = (base * 2u32.pow(retry)).min(MAX_BACKOFF);
            let samples: Vec<_> = (0..200).map(|_| backoff(base, retry)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Jitter: not all the same, and some near the ceiling.
            assert!(samples.iter().any(|d| *d != samples[0]));
            assert!(samples.iter().any(|d| *d >= ceiling / 2));
        }
        assert!(backoff(Duration::from_secs(10), 40) <= MAX_BACKOFF);
    }
}
