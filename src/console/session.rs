//! Login, sessions, CSRF, the Origin/Host check and security headers.
//!
//! - The admin token is POSTed in a form (never in a URL) and checked by
//!   [`Auth::authenticate`], like gRPC metadata; only the admin role logs in.
//! - The session cookie is a random 256-bit id: HttpOnly, SameSite=Strict,
//!   Path=/, and under TLS `Secure` with the `__Host-` prefix. A session
//!   ends after [`IDLE`] without a request, [`ABSOLUTE`] after login, or on
//!   logout.
//! - Every POST carries the session's CSRF token (checked by the handler
//!   through [`Sess::check`]) and, checked here for every non-GET request,
//!   an `Origin` (or `Referer`) equal to the request's own host.
//! - With authentication off, a one-time login path is made at start; its
//!   token works once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRequestParts, Query, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::{pages::FormData, render, templates::Login, Console};
use tonic::metadata::AsciiMetadataValue;

use crate::auth::{Caller, Role};

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, however active.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 1000;

/// The strict policy: scripts and styles from the console only (no inline
/// script or style), no framing, forms post only to the console.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

#[derive(Clone)]
struct Session {
    /// `None` with authentication off (as gRPC leaves no caller then).
    caller: Option<Caller>,
    /// The `authorization` the session logged in with, kept in memory
    /// only: in cluster mode a call that runs on another broker is
    /// forwarded there with it, as a gRPC call's own is.
    bearer: Option<AsciiMetadataValue>,
    csrf: String,
    created: Instant,
    seen: Instant,
}

/// The live sessions and the one-time login token.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    once: Mutex<Option<String>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// Sessions; with `one_time` (authentication off) a one-time token.
    pub fn new(one_time: bool) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            once: Mutex::new(one_time.then(random_token)),
        }
    }

    pub(super) fn one_time_path(&self) -> Option<String> {
        let once = self.once.lock().unwrap();
        once.as_ref().map(|t| format!("/login/once?t={t}"))
    }

    fn create(&self, caller: Option<Caller>, bearer: Option<AsciiMetadataValue>) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        map.retain(|_, s| alive(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let session = Session {
            caller,
            bearer,
            csrf: random_token(),
            created: now,
            seen: now,
        };
        map.insert(id.clone(), session);
        id
    }

    fn touch(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        let s = map.get_mut(id)?;
        if !alive(s, now) {
            map.remove(id);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

fn cookie_name(console: &Console) -> &'static str {
    if console.tls {
        "__Host-stevedore_session"
    } else {
        "stevedore_session"
    }
}

fn cookie_value(console: &Console, id: &str, max_age: u64) -> HeaderValue {
    let secure = if console.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        cookie_name(console)
    ))
    .expect("cookie is ASCII")
}

fn session_id(console: &Console, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(console);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A logged-in session: the extractor every page but login uses.
pub struct Sess {
    /// The Admin caller.
    pub caller: Option<Caller>,
    bearer: Option<AsciiMetadataValue>,
    /// The session's CSRF token, for forms.
    pub csrf: String,
    id: String,
}

impl Sess {
    /// An Admin request as the gRPC interceptor leaves it: the caller (if
    /// authentication is on) in the extensions, and the session's
    /// `authorization`, for a call that runs on another broker.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(c) = &self.caller {
            request.extensions_mut().insert(c.clone());
        }
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    /// Who is logged in, for pages and the change log.
    pub fn who(&self) -> String {
        match &self.caller {
            Some(c) => c.name.clone(),
            None => "local (authentication off)".into(),
        }
    }

    /// Checks a form's CSRF token: the refusal if it is missing or wrong.
    pub fn refused(&self, form: &FormData) -> Option<Response> {
        let sent = form.get("csrf");
        if bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) && !sent.is_empty() {
            None
        } else {
            Some(
                (
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: reload the page",
                )
                    .into_response(),
            )
        }
    }
}

impl FromRequestParts<Arc<Console>> for Sess {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let id = session_id(console, &parts.headers);
        match id.as_deref().and_then(|id| console.sessions.touch(id)) {
            Some(s) => Ok(Sess {
                caller: s.caller,
                bearer: s.bearer,
                csrf: s.csrf,
                id: id.unwrap_or_default(),
            }),
            None if parts.uri.path() == "/live/events" => {
                Err((StatusCode::UNAUTHORIZED, "log in").into_response())
            }
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// Every response gets the security headers; every non-GET request must
/// come from a page of this console (`Origin`, else `Referer`, naming the
/// request's `Host`).
pub async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    if !safe {
        if let Err(why) = same_origin(console.tls, request.headers()) {
            tracing::info!(reason = why, "console request refused");
            return secure_headers(
                (StatusCode::FORBIDDEN, format!("refused: {why}")).into_response(),
                false,
            );
        }
    }
    let is_static = request.uri().path().starts_with("/static/");
    secure_headers(next.run(request).await, !is_static)
}

fn same_origin(tls: bool, headers: &HeaderMap) -> Result<(), &'static str> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or("no Host header")?;
    let expected = format!("{}://{host}", if tls { "https" } else { "http" });
    if let Some(origin) = headers.get(header::ORIGIN) {
        return if origin.as_bytes() == expected.as_bytes() {
            Ok(())
        } else {
            Err("the Origin header is not this console")
        };
    }
    match headers.get(header::REFERER).and_then(|r| r.to_str().ok()) {
        Some(r) if r == expected || r.starts_with(&format!("{expected}/")) => Ok(()),
        Some(_) => Err("the Referer header is not this console"),
        None => Err("no Origin or Referer header"),
    }
}

fn secure_headers(mut response: Response, no_store: bool) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if no_store {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

pub async fn login_page(State(console): State<Arc<Console>>) -> Response {
    render(Login {
        error: String::new(),
        auth_off: !console.auth.enabled(),
    })
}

/// POST /login: `token=<admin token>`.
pub async fn login(State(console): State<Arc<Console>>, body: axum::body::Bytes) -> Response {
    let form = FormData::parse(&body);
    let fail = |status: StatusCode, error: String| {
        let mut r = render(Login {
            error,
            auth_off: !console.auth.enabled(),
        });
        *r.status_mut() = status;
        r
    };
    if !console.auth.enabled() {
        return fail(
            StatusCode::FORBIDDEN,
            "authentication is off: use the one-time login link printed at start".into(),
        );
    }
    let mut metadata = tonic::metadata::MetadataMap::new();
    let Ok(mut value) =
        format!("Bearer {}", form.get("token").trim()).parse::<AsciiMetadataValue>()
    else {
        return fail(StatusCode::UNAUTHORIZED, "unknown or revoked token".into());
    };
    value.set_sensitive(true);
    metadata.insert("authorization", value.clone());
    let caller = match console.auth.authenticate(&metadata) {
        Ok(c) => c,
        Err(status) => return fail(StatusCode::UNAUTHORIZED, status.message().to_owned()),
    };
    if !caller.role.grants(Role::Admin) {
        tracing::info!(token = %caller.name, role = %caller.role, "console login denied");
        return fail(
            StatusCode::FORBIDDEN,
            format!(
                "token {} has role {}; the console needs admin",
                caller.name, caller.role
            ),
        );
    }
    tracing::info!(token = %caller.name, "console login");
    let id = console.sessions.create(Some(caller), Some(value));
    logged_in(&console, &id)
}

fn logged_in(console: &Console, id: &str) -> Response {
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie_value(console, id, ABSOLUTE.as_secs()),
    );
    r
}

#[derive(serde::Deserialize)]
pub struct Once {
    t: String,
}

/// GET /login/once?t=…: the one-time link (authentication off only).
pub async fn login_once(State(console): State<Arc<Console>>, Query(q): Query<Once>) -> Response {
    let taken = {
        let mut once = console.sessions.once.lock().unwrap();
        let ok = once
            .as_ref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(q.t.as_bytes())));
        if ok {
            once.take();
        }
        ok
    };
    if !taken {
        return (
            StatusCode::FORBIDDEN,
            "this one-time login link was used already or is wrong; restart the broker for a new one",
        )
            .into_response();
    }
    tracing::info!("console login with the one-time link");
    let id = console.sessions.create(None, None);
    logged_in(&console, &id)
}

/// POST /logout.
pub async fn logout(
    State(console): State<Arc<Console>>,
    sess: Sess,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = sess.refused(&FormData::parse(&body)) {
        return r;
    }
    console.sessions.map.lock().unwrap().remove(&sess.id);
    tracing::info!(token = %sess.who(), "console logout");
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_value(&console, "", 0));
    r
}
