//! Fetching and caching an endpoint's OAuth2 access token.
//!
//! The request (RFC 6749 §4.4.2): `POST token_url` with
//! `grant_type=client_credentials` (plus `scope`, space-joined, and
//! `audience` when set) as `application/x-www-form-urlencoded`, the client
//! authenticated with HTTP Basic (`client_secret_basic`, §2.3.1: id and
//! secret form-urlencoded, then base64). It goes out through the endpoint's
//! egress — the SSRF guard, its proxy route, its TLS settings — on a client
//! of its own, so a token fetch never waits for a connection slot held by
//! the receiver's pooled connections.
//!
//! The token is kept until shortly before it expires ([`cache_for`]); one
//! fetch runs at a time, and deliveries waiting for it share its outcome,
//! a failure included, so a down token endpoint is asked once per wave of
//! deliveries, not once per delivery.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::{sync::Mutex, time::Instant};

use super::{vschar, ClientCredentials};
use crate::delivery::stack::{self, HttpClient};

/// Largest token response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// A token's lifetime when the response has no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest lifetime believed (a 401 still refreshes earlier).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A token is refreshed at least this long before it expires...
const MIN_MARGIN: Duration = Duration::from_secs(30);
/// ...or a tenth of its lifetime if longer, but never more than half.
const MARGIN_DIVISOR: u32 = 10;

/// How long a token with `expires_in` seconds is used: its lifetime less a
/// margin of a tenth of it, at least 30 s, at most half of it (so a
/// one-minute token is used for 30 s, an hour's for 54 min, a 2-second
/// one for 1 s). No `expires_in`: [`DEFAULT_LIFETIME`].
pub fn cache_for(expires_in: Option<u64>) -> Duration {
    let lifetime = expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs)
        .min(MAX_LIFETIME);
    let margin = (lifetime / MARGIN_DIVISOR)
        .max(MIN_MARGIN)
        .min(lifetime / 2);
    lifetime - margin
}

/// A token as the token endpoint issued it.
pub struct Fetched {
    /// `Bearer <access_token>`, marked sensitive.
    pub bearer: HeaderValue,
    /// Seconds, if given.
    pub expires_in: Option<u64>,
}

/// One endpoint's token: cached, fetched one at a time.
#[derive(Default)]
pub struct TokenCache {
    state: Mutex<State>,
    /// Fetches finished, counted under `state`'s lock: a caller that saw
    /// a different count before it waited knows one ended meanwhile.
    fetches: AtomicU64,
}

#[derive(Default)]
struct State {
    token: Option<(HeaderValue, Instant)>,
    /// The last fetch's error, while no token has been fetched since.
    failure: Option<String>,
}

impl TokenCache {
    /// The cached `Authorization` value while fresh; else the outcome of
    /// the fetch that was running when this call began waiting, if one
    /// ended meanwhile; else `fetch`'s.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<HeaderValue, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, String>>,
    {
        let seen = self.fetches.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some((bearer, until)) = &state.token {
            if Instant::now() < *until {
                return Ok(bearer.clone());
            }
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
        }
        let result = fetch().await;
        self.fetches.fetch_add(1, Ordering::Release);
        match result {
            Ok(f) => {
                let until = Instant::now() + cache_for(f.expires_in);
                state.token = Some((f.bearer.clone(), until));
                state.failure = None;
                Ok(f.bearer)
            }
            Err(e) => {
                state.token = None;
                state.failure = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Forgets `used` (the receiver refused it) unless a newer token has
    /// replaced it already.
    pub async fn invalidate(&self, used: &HeaderValue) {
        let mut state = self.state.lock().await;
        if state.token.as_ref().is_some_and(|(b, _)| b == used) {
            state.token = None;
        }
    }
}

use crate::delivery::request::BoxFuture;
/// Fetches one token.
type Fetch = Box<dyn Fn() -> BoxFuture<Result<Fetched, String>> + Send + Sync>;

/// An endpoint's token source (its credentials and token client) and its
/// cache.
pub struct Tokens {
    fetch: Fetch,
    cache: TokenCache,
}

impl Tokens {
    /// Tokens for `creds`, fetched through `client`.
    pub fn new(creds: ClientCredentials, client: HttpClient) -> Self {
        let source = std::sync::Arc::new((creds, client));
        Self::with_fetch(move || {
            let source = source.clone();
            Box::pin(async move { fetch(&source.1, &source.0).await })
        })
    }

    /// Tokens from `fetch` (tests drive the layer with this).
    pub(crate) fn with_fetch(
        fetch: impl Fn() -> BoxFuture<Result<Fetched, String>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            fetch: Box::new(fetch),
            cache: TokenCache::default(),
        }
    }

    /// The `Authorization` value to send; a fetch takes at most `timeout`.
    pub async fn bearer(&self, timeout: Duration) -> Result<HeaderValue, String> {
        self.cache
            .get(|| async {
                tokio::time::timeout(timeout, (self.fetch)())
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "the token endpoint did not answer within {timeout:?}"
                        ))
                    })
            })
            .await
    }

    /// See [`TokenCache::invalidate`].
    pub async fn invalidate(&self, used: &HeaderValue) {
        self.cache.invalidate(used).await;
    }
}

/// One token request. Errors say what went wrong with the token endpoint,
/// never the secret or a token.
async fn fetch(client: &HttpClient, creds: &ClientCredentials) -> Result<Fetched, String> {
    let response = client
        .request(token_request(creds))
        .await
        .map_err(|e| stack::send_error(e).to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|_| {
            format!(
                "the token endpoint's response ({status}) could not be read or is over \
                 {MAX_RESPONSE_BYTES} bytes"
            )
        })?
        .to_bytes();
    parse_response(status, &body)
}

/// The token request of `creds`.
fn token_request(creds: &ClientCredentials) -> Request<Full<Bytes>> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !creds.scopes.is_empty() {
        form.append_pair("scope", &creds.scopes.join(" "));
    }
    if let Some(audience) = &creds.audience {
        form.append_pair("audience", audience);
    }
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = STANDARD.encode(format!(
        "{}:{}",
        encode(&creds.client_id),
        encode(creds.secret())
    ));
    let mut authorization =
        HeaderValue::from_str(&format!("Basic {basic}")).expect("base64 is a valid header value");
    authorization.set_sensitive(true);
    Request::post(creds.token_url.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, stack::USER_AGENT)
        .header(header::AUTHORIZATION, authorization)
        .body(Full::new(Bytes::from(form.finish())))
        .expect("a POST to a validated URL with valid headers is a valid request")
}

/// Reads a token response (RFC 6749 §5.1, §5.2).
pub fn parse_response(status: StatusCode, body: &[u8]) -> Result<Fetched, String> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        // The error code is a registered token (`invalid_client`, ...);
        // the description is not repeated.
        let code = json
            .as_ref()
            .and_then(|v| v.get("error")?.as_str())
            .filter(|c| {
                (1..=64).contains(&c.len())
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            });
        return Err(match code {
            Some(code) => format!("{status} from the token endpoint ({code})"),
            None => format!("{status} from the token endpoint"),
        });
    }
    let json = json.ok_or("the token endpoint's response is not JSON")?;
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("the token endpoint's response has no access_token")?;
    if let Some(kind) = json.get("token_type") {
        let kind = kind.as_str().unwrap_or_default();
        if !kind.eq_ignore_ascii_case("bearer") {
            let shown = if kind.len() <= 32 && vschar(kind) {
                format!("{kind:?}")
            } else {
                "(unreadable)".to_owned()
            };
            return Err(format!("token_type {shown} is not supported (only Bearer)"));
        }
    }
    if !vschar(token) {
        return Err("the access_token is not a valid header value".into());
    }
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the access_token is not a valid header value")?;
    bearer.set_sensitive(true);
    let expires_in = json.get("expires_in").and_then(|v| match v {
        serde_json::Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Ok(Fetched { bearer, expires_in })
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicUsize, Arc};

    use super::*;

    fn fetched(n: usize, expires_in: Option<u64>) -> Result<Fetched, String> {
        Ok(Fetched {
            bearer: HeaderValue::from_str(&format!("Bearer tok-{n}")).unwrap(),
            expires_in,
        })
    }

    #[test]
    fn lifetimes() {
        assert_eq!(cache_for(Some(3600)), Duration::from_secs(3240));
        assert_eq!(cache_for(Some(60)), Duration::from_secs(30));
        assert_eq!(cache_for(Some(2)), Duration::from_secs(1));
        assert_eq!(cache_for(Some(0)), Duration::ZERO);
        assert_eq!(cache_for(None), Duration::from_secs(270));
        assert_eq!(cache_for(Some(u64::MAX)), Duration::from_secs(77_760));
    }

    #[test]
    fn responses() {
        let ok = parse_response(
            StatusCode::OK,
            br#"{"access_token":"abc.def","token_type":"bearer","expires_in":"120"}"#,
        )
        .unwrap();
        assert_eq!(ok.bearer, "Bearer abc.def");
        assert!(ok.bearer.is_sensitive());
        assert_eq!(ok.expires_in, Some(120));
        let ok = parse_response(StatusCode::OK, br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(ok.expires_in, None);
        for (status, body, expected) in [
            (
                401,
                &br#"{"error":"invalid_client","error_description":"bad secret s3cr3t"}"#[..],
                "401 Unauthorized from the token endpoint (invalid_client)",
            ),
            (
                503,
                b"<html>down</html>",
                "503 Service Unavailable from the token endpoint",
            ),
            (200, b"<html>", "the token endpoint's response is not JSON"),
            (
                200,
                br#"{"token_type":"Bearer"}"#,
                "the token endpoint's response has no access_token",
            ),
            (
                200,
                br#"{"access_token":"t","token_type":"mac"}"#,
                "token_type \"mac\" is not supported (only Bearer)",
            ),
            (
                200,
                b"{\"access_token\":\"a\\nb\"}",
                "the access_token is not a valid header value",
            ),
        ] {
            let err = parse_response(StatusCode::from_u16(status).unwrap(), body)
                .err()
                .unwrap();
            assert_eq!(err, expected);
        }
    }

    /// Concurrent callers share one fetch; the token is reused until its
    /// refresh time, then fetched again; a refused token is dropped, a
    /// newer one is not.
    #[tokio::test(start_paused = true)]
    async fn one_fetch_at_a_time_cached_until_shortly_before_expiry() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let get = |cache: Arc<TokenCache>, fetches: Arc<AtomicUsize>| async move {
            cache
                .get(|| async {
                    let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    fetched(n, Some(60))
                })
                .await
        };
        let all = futures::future::join_all(
            (0..8).map(|_| tokio::spawn(get(cache.clone(), fetches.clone()))),
        )
        .await;
        for r in all {
            assert_eq!(r.unwrap().unwrap(), "Bearer tok-1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        tokio::time::advance(Duration::from_secs(29)).await;
        let t = get(cache.clone(), fetches.clone()).await.unwrap();
        assert_eq!(
            (t.to_str().unwrap(), fetches.load(Ordering::SeqCst)),
            ("Bearer tok-1", 1)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let t = get(cache.clone(), fetches.clone()).await.unwrap();
        assert_eq!(
            t, "Bearer tok-2",
            "refreshed 30 s before a 60 s token expires"
        );

        cache
            .invalidate(&HeaderValue::from_static("Bearer tok-1"))
            .await;
        assert_eq!(
            get(cache.clone(), fetches.clone()).await.unwrap(),
            "Bearer tok-2"
        );
        cache.invalidate(&t).await;
        assert_eq!(
            get(cache.clone(), fetches.clone()).await.unwrap(),
            "Bearer tok-3"
        );
    }

    /// Callers that waited on a failing fetch get its error instead of
    /// each asking the token endpoint again; a later call asks again.
    #[tokio::test(start_paused = true)]
    async fn waiters_share_a_failure() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = |cache: Arc<TokenCache>, fetches: Arc<AtomicUsize>| async move {
            cache
                .get(|| async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<Fetched, _>("503 Service Unavailable from the token endpoint".into())
                })
                .await
        };
        let all = futures::future::join_all(
            (0..5).map(|_| tokio::spawn(failing(cache.clone(), fetches.clone()))),
        )
        .await;
        for r in all {
            assert!(r.unwrap().unwrap_err().starts_with("503"));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let _ = failing(cache.clone(), fetches.clone()).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
