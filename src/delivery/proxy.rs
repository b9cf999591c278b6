//! Egress through an HTTP proxy (#19): receivers that allow-list source IPs
//! are reached through a fixed egress.
//!
//! - `http://` targets are sent to the proxy in absolute form
//!   (`POST http://host/path HTTP/1.1`); `https://` targets through a
//!   `CONNECT host:port` tunnel, with TLS end to end inside it.
//! - Which proxy: the endpoint's `proxy_url` (`none`: direct), else the
//!   `http_proxy`/`https_proxy` config keys (else the `HTTP_PROXY`/
//!   `HTTPS_PROXY` environment variables), except for hosts in `no_proxy`.
//! - Credentials: the broker's proxy settings may carry `user:password@`
//!   (percent-encoded); they are sent as `Proxy-Authorization: Basic` on
//!   CONNECT and on forwarded plain-HTTP requests, and are never logged or
//!   repeated in errors. An endpoint's `proxy_url` may not carry them: it
//!   is returned by GetEndpoint, so they would not stay secret.
//! - The SSRF guard: the proxy's address is the operator's choice and is
//!   not checked. The target's host is resolved here and checked before the
//!   proxy is asked to connect: when every address it resolves to is
//!   blocked, nothing is sent (the attempt fails with the guard's message).
//!   The proxy resolves the name again itself; operators who need the
//!   guard to hold against DNS changes between the two lookups enforce it
//!   on the proxy too.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Uri};
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tower::Service;

use super::egress::{self, Guard, GuardedConnector};
use crate::config::proxy::{bypass, Bypass, ProxyAuth};
pub use crate::config::proxy::{parse_no_proxy, parse_proxy, Proxy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use super::request::BoxFuture;

/// The endpoint field value that means "no proxy, connect directly".
pub const NO_PROXY_VALUE: &str = "none";
/// Longest CONNECT response head read.
const MAX_CONNECT_RESPONSE: usize = 8192;
/// Connecting to the proxy and its CONNECT answer, together.
const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How an endpoint's requests leave: per scheme, a proxy or none, and the
/// hosts that bypass them.
#[derive(Clone, Debug, Default)]
pub struct Route {
    http: Option<Proxy>,
    https: Option<Proxy>,
    bypass: Vec<Bypass>,
}

impl Route {
    /// Direct connections only.
    pub fn direct() -> Self {
        Self::default()
    }

    /// From the broker's settings (already validated: see `Config`).
    pub fn from_settings(http: Option<&str>, https: Option<&str>, no_proxy: &[String]) -> Self {
        let proxy = |v: Option<&str>| {
            v.filter(|v| !v.is_empty())
                .and_then(|v| parse_proxy(v).ok())
        };
        Self {
            http: proxy(http),
            https: proxy(https),
            bypass: no_proxy.iter().filter_map(|e| bypass(e).ok()).collect(),
        }
    }

    /// The endpoint's `proxy_url` over the broker's route: empty keeps
    /// `self`; `none` is direct; a URL is used for both schemes, for every
    /// host (the endpoint named it, so `no_proxy` does not apply).
    pub fn for_endpoint(&self, proxy_url: &str) -> Result<Self, String> {
        match proxy_url {
            "" => Ok(self.clone()),
            NO_PROXY_VALUE => Ok(Self::direct()),
            url => {
                let p = parse_proxy(url)?;
                if p.auth.is_some() {
                    return Err(
                        "proxy credentials are not supported in an endpoint's proxy_url \
                                (it is shown by GetEndpoint); set them in the broker's \
                                http_proxy/https_proxy"
                            .into(),
                    );
                }
                Ok(Self {
                    http: Some(p.clone()),
                    https: Some(p),
                    bypass: Vec::new(),
                })
            }
        }
    }

    /// The `Proxy-Authorization` a plain-HTTP request to `uri` carries: its
    /// proxy's credentials, when it goes through one that has them.
    /// (`https://` requests go through a CONNECT tunnel, which carries
    /// them instead.)
    pub fn forwarding_auth(&self, uri: &Uri) -> Option<&HeaderValue> {
        if uri.scheme_str() == Some("https") {
            return None;
        }
        self.proxy_for(uri)?.auth.as_ref().map(ProxyAuth::header)
    }

    /// The proxy for `uri`, if any.
    fn proxy_for(&self, uri: &Uri) -> Option<&Proxy> {
        let proxy = match uri.scheme_str() {
            Some("https") => self.https.as_ref(),
            _ => self.http.as_ref(),
        }?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let literal = egress::literal_ip(uri);
        let bypassed = self.bypass.iter().any(|b| match b {
            Bypass::All => true,
            Bypass::Domain(d) => host == *d || host.ends_with(&format!(".{d}")),
            Bypass::Net(n) => literal.is_some_and(|ip| n.contains(ip)),
        });
        (!bypassed).then_some(proxy)
    }
}

/// A connection, direct or to a proxy. For a plain-HTTP target through a
/// proxy it tells hyper so, which then writes absolute-form request
/// targets.
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<TcpStream>,
    absolute_form: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.absolute_form)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The guarded TCP connector (`D`), or a proxy when the route says so.
#[derive(Clone)]
pub struct ProxyConnector<D = GuardedConnector> {
    direct: D,
    route: Arc<Route>,
    guard: Guard,
}

impl<D> ProxyConnector<D> {
    /// Connects as `route` says, checking targets with `guard`.
    pub fn new(direct: D, route: Route, guard: Guard) -> Self {
        Self {
            direct,
            route: Arc::new(route),
            guard,
        }
    }
}

impl<D> Service<Uri> for ProxyConnector<D>
where
    D: Service<Uri, Response = TokioIo<TcpStream>, Error = BoxError>,
    D::Future: Send + 'static,
{
    type Response = Conn;
    type Error = BoxError;
    type Future = BoxFuture<Result<Conn, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Some(proxy) = self.route.proxy_for(&uri).cloned() else {
            let connecting = self.direct.call(uri);
            return Box::pin(async move {
                Ok(Conn {
                    io: connecting.await?,
                    absolute_form: false,
                })
            });
        };
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("URL without a host")?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
                .to_owned();
            let tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            check_target(&guard, &uri, &host, port).await?;
            tokio::time::timeout(PROXY_CONNECT_TIMEOUT, async {
                let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
                    .await
                    .map_err(|e| format!("connecting to the proxy: {e}"))?;
                tcp.set_nodelay(true)?;
                if tls {
                    connect_tunnel(&mut tcp, &host, port, proxy.auth.as_ref()).await?;
                }
                Ok::<_, BoxError>(Conn {
                    io: TokioIo::new(tcp),
                    absolute_form: !tls,
                })
            })
            .await
            .map_err(|_| "the proxy did not answer in time")?
        })
    }
}

/// The SSRF guard on a proxied target: its literal address, or every
/// address its name resolves to here, must not all be blocked.
async fn check_target(guard: &Guard, uri: &Uri, host: &str, port: u16) -> Result<(), BoxError> {
    if let Some(ip) = egress::literal_ip(uri) {
        return match guard.check(ip) {
            Some(block) => Err(egress::Blocked {
                addr: ip,
                host: None,
                block,
            }
            .into()),
            None => Ok(()),
        };
    }
    let mut first_blocked = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match guard.check(addr.ip()) {
            None => return Ok(()),
            Some(block) => {
                first_blocked.get_or_insert(egress::Blocked {
                    addr: addr.ip(),
                    host: Some(host.to_owned()),
                    block,
                });
            }
        }
    }
    Err(match first_blocked {
        Some(b) => b.into(),
        None => format!("{host} resolved to no address").into(),
    })
}

/// Asks the proxy for a tunnel to `host:port` (with its credentials, if
/// any) and reads its answer; any status but 2xx is an error naming it.
async fn connect_tunnel(
    tcp: &mut TcpStream,
    host: &str,
    port: u16,
    auth: Option<&ProxyAuth>,
) -> Result<(), BoxError> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(auth) = auth {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(auth.header().as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    tcp.write_all(&request).await?;
    // Read byte by byte up to the end of the head: nothing of the tunnel's
    // own bytes may be consumed here.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_RESPONSE {
            return Err("the proxy's CONNECT answer is too long".into());
        }
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await? == 0 {
            return Err("the proxy closed the connection during CONNECT".into());
        }
        head.push(byte[0]);
    }
    let status_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.len() == 3 && code.starts_with('2'));
    if ok {
        Ok(())
    } else {
        Err(format!("the proxy refused CONNECT {authority}: {status_line}").into())
    }
}

#[cfg(test)]
mod tests;
