//! The console: the webhook maintenance page (DESIGN.md "Console").
//!
//! Server-rendered HTML (axum + askama) on its own listener
//! (`console_listen`). Every handler calls the Admin service in-process
//! with a request from [`session::Sess::request`]: the logged-in caller in
//! its extensions, exactly as the gRPC auth interceptor leaves it, so
//! validation, errors and scoping are the gRPC API's (and, in cluster
//! mode, the session's token, so a call that runs on another broker is
//! forwarded there as a gRPC call is). htmx is vendored and
//! embedded (`static/README.md`); pages work without JavaScript except the
//! live view.
//!
//! - [`session`]: login, session cookies, CSRF and the Origin/Host check,
//!   security headers.
//! - [`pages`]: one file per page.

mod pages;
mod session;
mod templates;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
    Router,
};
use tokio_util::sync::CancellationToken;

use crate::{api::AdminService, auth::Auth, endpoints::Endpoints, store::Store};

pub use session::Sessions;

/// The console's shared state.
pub struct Console {
    admin: Arc<AdminService>,
    endpoints: Arc<Endpoints>,
    store: Store,
    auth: Auth,
    sessions: Sessions,
    /// Whether the console is served over TLS (the cookie gets `Secure` and
    /// the `__Host-` prefix).
    tls: bool,
    shutdown: CancellationToken,
    /// For "auto-disables in …" (config key `auto_disable_after`).
    auto_disable_after: std::time::Duration,
}

impl Console {
    /// The console over the broker's Admin service. With authentication
    /// off, [`Console::one_time_login`] makes the link printed at start.
    pub fn new(
        admin: Arc<AdminService>,
        endpoints: Arc<Endpoints>,
        store: Store,
        auth: Auth,
        tls: bool,
        shutdown: CancellationToken,
        auto_disable_after: std::time::Duration,
    ) -> Self {
        Self {
            admin,
            endpoints,
            store,
            sessions: Sessions::new(!auth.enabled()),
            auth,
            tls,
            shutdown,
            auto_disable_after,
        }
    }

    /// With authentication off: the path (with its one-time token) that
    /// logs a browser in once. `None` when tokens are configured.
    pub fn one_time_login(&self) -> Option<String> {
        self.sessions.one_time_path()
    }

    /// The Admin service, for handlers.
    fn admin(&self) -> &AdminService {
        &self.admin
    }
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    use pages::{catalog, delivery, endpoint, endpoint_actions, form, live, overview};
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(session::login_page).post(session::login))
        .route("/login/once", get(session::login_once))
        .route("/logout", post(session::logout))
        .route("/endpoints/new", get(form::new_page).post(form::create))
        .route("/endpoints/{id}", get(endpoint::page))
        .route(
            "/endpoints/{id}/edit",
            get(form::edit_page).post(form::update),
        )
        .route("/endpoints/{id}/action", post(endpoint_actions::action))
        .route("/endpoints/{id}/deliveries/{offset}", get(delivery::page))
        .route("/catalog", get(catalog::page))
        .route("/live", get(live::page))
        .route("/live/events", get(live::events))
        .route("/static/{file}", get(static_file))
        .route(
            "/favicon.ico",
            get(|| async { axum::response::Redirect::permanent("/static/favicon.svg") }),
        )
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            session::guard,
        ))
        .with_state(console)
}

const HTMX: &[u8] = include_bytes!("static/htmx.min.js");
const CONSOLE_JS: &[u8] = include_bytes!("static/console.js");
const CONSOLE_CSS: &[u8] = include_bytes!("static/console.css");
const FAVICON: &[u8] = include_bytes!("static/favicon.svg");

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript"),
        "console.js" => (CONSOLE_JS, "text/javascript"),
        "console.css" => (CONSOLE_CSS, "text/css"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// A rendered template, or a 500 naming nothing secret.
fn render(t: impl askama::Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

/// Serves `router` on `listener` (TLS when `tls` is set) until `shutdown`;
/// open connections then finish their requests (live streams end).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto,
        service::TowerToHyperService,
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "console accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            macro_rules! drive {
                ($io:expr) => {{
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new($io), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(2), conn).await;
                        }
                    }
                }};
            }
            match acceptor {
                None => drive!(stream),
                Some(a) => {
                    let handshake =
                        tokio::time::timeout(std::time::Duration::from_secs(10), a.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => drive!(tls),
                        _ => tracing::debug!(%remote, "console TLS handshake failed"),
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The console's TLS settings: the gRPC listener's certificate and key.
pub fn tls_config(
    config: &crate::config::Config,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use anyhow::Context;
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|_| anyhow::anyhow!("config key `tls_cert`: not a PEM certificate chain"))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| anyhow::anyhow!("config key `tls_key`: not a PEM private key"))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("console TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("config keys `tls_cert`/`tls_key`: not a usable certificate and key")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

/// The address to print for a bound console listener.
pub fn url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}
