//! Whether an attempt succeeded, should be retried, or tells us to stop —
//! kept apart from *when* the next attempt happens (the schedule).

use std::time::{Duration, SystemTime};

use http::{header::RETRY_AFTER, StatusCode};

use super::stack::{SendError, WebhookResponse};

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// Retry on schedule, or after `retry_after` when the receiver asked.
    Retry {
        /// The receiver's `Retry-After` (429/502/503/504), clamped.
        retry_after: Option<Duration>,
    },
    /// 410 Gone: the receiver wants no more; disable the endpoint.
    Gone,
}

/// Statuses that say the receiver (or the gateway in front of it) is
/// overloaded: 429, 502, 503 and 504. The Standard Webhooks spec asks
/// senders to back off on all of them; the adaptive limit shrinks on them
/// and their `Retry-After` is honoured.
pub fn is_throttle(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Classifies an attempt's result. `max_retry_after` clamps `Retry-After`.
pub fn classify(result: &Result<WebhookResponse, SendError>, max_retry_after: Duration) -> Verdict {
    let resp = match result {
        Ok(r) => r,
        // Timeouts, resets and refused connections: retry on schedule.
        Err(_) => return Verdict::Retry { retry_after: None },
    };
    match resp.status {
        s if s.is_success() => Verdict::Delivered,
        StatusCode::GONE => Verdict::Gone,
        s if is_throttle(s) => Verdict::Retry {
            retry_after: resp
                .headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                .map(|d| d.min(max_retry_after)),
        },
        // 3xx (never followed), 4xx, 5xx.
        _ => Verdict::Retry { retry_after: None },
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn resp(status: u16, retry_after: Option<&str>) -> Result<WebhookResponse, SendError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        Ok(WebhookResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body_excerpt: String::new(),
        })
    }

    #[test]
    fn verdicts() {
        let max = Duration::from_secs(3600);
        assert_eq!(classify(&resp(200, None), max), Verdict::Delivered);
        assert_eq!(classify(&resp(204, None), max), Verdict::Delivered);
        assert_eq!(classify(&resp(410, None), max), Verdict::Gone);
        for s in [302, 400, 404, 500, 501, 502, 504] {
            assert_eq!(
                classify(&resp(s, None), max),
                Verdict::Retry { retry_after: None }
            );
        }
        assert_eq!(
            classify(&resp(429, Some("7")), max),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(&resp(502, Some("5")), max),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(5))
            },
            "a gateway's Retry-After is honoured"
        );
        assert_eq!(
            classify(&resp(504, Some("Sun, 06 Nov 1994 08:49:37 GMT")), max),
            Verdict::Retry {
                retry_after: Some(Duration::ZERO)
            },
        );
        assert_eq!(
            classify(&resp(503, Some("99999")), max),
            Verdict::Retry {
                retry_after: Some(max)
            },
            "clamped"
        );
        assert_eq!(
            classify(&Err(SendError::Timeout(Duration::from_secs(1))), max),
            Verdict::Retry { retry_after: None }
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
