//! The partner's side of the OAuth2 tests (tests/it/oauth.rs): a token
//! endpoint and a webhook receiver on one local hyper server.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use stevedore::pb::{self, Endpoint};
use tokio::net::TcpListener;

use super::{endpoint, Recorded};

pub(crate) const CLIENT_ID: &str = "stevedore-client";
/// With `:`, `+` and `/`, which client_secret_basic form-urlencodes.
pub(crate) const CLIENT_SECRET: &str = "oauth-s3cret-4e9a:+/x";
pub(crate) const SCOPES: [&str; 2] = ["orders:write", "inventory"];
/// Every issued token ends with this, to search for tokens in outputs.
pub(crate) const TOKEN_SUFFIX: &str = "tk-7d21c9";

/// The partner's side: `POST /token` issues tokens to the right client
/// (anything else is 401 `invalid_client` and noted as a problem), and
/// `/hook` accepts only tokens issued and not revoked (else 401).
pub(crate) struct Partner {
    pub(crate) base: String,
    pub(crate) s: Arc<PartnerState>,
}

#[derive(Default)]
pub(crate) struct PartnerState {
    pub(crate) token_requests: AtomicUsize,
    /// Status the token endpoint answers instead of a token (0: a token).
    pub(crate) token_failure: AtomicU16,
    pub(crate) expires_in: AtomicU64,
    /// Delay before each token answer.
    pub(crate) token_delay_ms: AtomicU64,
    pub(crate) valid: Mutex<HashSet<String>>,
    /// The receiver answers 401 to everything.
    pub(crate) refuse_all: AtomicBool,
    /// What the token endpoint found wrong with a request.
    pub(crate) problems: Mutex<Vec<String>>,
    /// Each webhook: the bearer token (without `Bearer `), the status
    /// answered, the request.
    pub(crate) hooks: Mutex<Vec<(String, u16, Recorded)>>,
}

impl Partner {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let s = Arc::new(PartnerState {
            expires_in: AtomicU64::new(3600),
            ..Default::default()
        });
        let state = s.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { base, s }
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    pub(crate) fn oauth2(&self) -> pb::OAuth2 {
        pb::OAuth2 {
            token_url: self.token_url(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: SCOPES.map(String::from).to_vec(),
            ..Default::default()
        }
    }

    /// An endpoint to the partner's hook with OAuth2.
    pub(crate) fn endpoint(&self) -> Endpoint {
        let mut e = endpoint(&format!("{}/hook", self.base));
        e.oauth2 = Some(self.oauth2());
        e
    }

    pub(crate) fn token_requests(&self) -> usize {
        self.s.token_requests.load(Ordering::SeqCst)
    }

    pub(crate) fn hooks(&self) -> Vec<(String, u16, Recorded)> {
        self.s.hooks.lock().unwrap().clone()
    }

    pub(crate) fn revoke_all(&self) {
        self.s.valid.lock().unwrap().clear();
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        self.s.problems.lock().unwrap().clone()
    }
}

type Answer = Result<Response<Full<Bytes>>, std::convert::Infallible>;

fn answer(status: u16, body: String) -> Answer {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

async fn handle(s: Arc<PartnerState>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    if parts.uri.path() == "/token" {
        return token(&s, &parts.headers, &body).await;
    }
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let ok = !s.refuse_all.load(Ordering::SeqCst) && s.valid.lock().unwrap().contains(&bearer);
    let status = if ok { 200 } else { 401 };
    let recorded = Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
        received_at: Instant::now(),
        version: parts.version,
        connection: 0,
    };
    s.hooks.lock().unwrap().push((bearer, status, recorded));
    answer(status, String::new())
}

/// The token endpoint, checking what RFC 6749 §4.4.2 and §2.3.1 ask.
async fn token(s: &PartnerState, headers: &HeaderMap, body: &[u8]) -> Answer {
    let n = s.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = s.token_delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut problems = Vec::new();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| BASE64.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    match basic.split_once(':') {
        Some((id, secret)) if decode(id) == CLIENT_ID && decode(secret) == CLIENT_SECRET => {}
        _ => problems.push("client authentication".to_owned()),
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        problems.push("content-type".into());
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let param = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if param("grant_type") != Some("client_credentials") {
        problems.push("grant_type".into());
    }
    if param("scope") != Some(&SCOPES.join(" ")) {
        problems.push(format!("scope {:?}", param("scope")));
    }
    if !problems.is_empty() {
        s.problems.lock().unwrap().extend(problems);
        return answer(401, r#"{"error":"invalid_client"}"#.into());
    }
    let failure = s.token_failure.load(Ordering::SeqCst);
    if failure != 0 {
        return answer(failure, r#"{"error":"temporarily_unavailable"}"#.into());
    }
    let token = format!("at-{n}-{TOKEN_SUFFIX}");
    s.valid.lock().unwrap().insert(token.clone());
    let expires_in = s.expires_in.load(Ordering::SeqCst);
    answer(
        200,
        format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#),
    )
}
