//! The guard on the socket: a resolver that drops blocked addresses and a
//! connector that checks IP literals and the connected peer (see the
//! parent module for why the check is made there).

use std::{
    net::SocketAddr,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{dns::Name, HttpConnector},
    rt::TokioIo,
};
use tokio::net::TcpStream;
use tower::Service;

use super::{literal_ip, BoxError, Guard};
use crate::delivery::request::BoxFuture;

/// A DNS resolver for `HttpConnector` that returns only the addresses the
/// guard allows.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    guard: Guard,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: HttpConnector puts the URL's port on every address.
            let resolved = tokio::net::lookup_host((host, 0)).await?;
            let mut allowed = Vec::new();
            let mut first_blocked = None;
            for addr in resolved {
                match guard.blocked(addr.ip(), Some(host)) {
                    None => allowed.push(addr),
                    Some(b) => {
                        tracing::debug!(%host, addr = %addr.ip(), "SSRF guard dropped a resolved address");
                        first_blocked.get_or_insert(b);
                    }
                }
            }
            match (allowed.is_empty(), first_blocked) {
                (true, Some(b)) => Err(b.into()),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The TCP connector of the delivery client: `HttpConnector` over
/// [`GuardedResolver`], with IP literals and the connected peer checked too.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Guard,
}

impl GuardedConnector {
    /// Wraps `configure(HttpConnector)` (for socket options) with `guard`.
    pub fn new(guard: Guard, configure: impl FnOnce(&mut HttpConnector<GuardedResolver>)) -> Self {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            guard: guard.clone(),
        });
        configure(&mut inner);
        Self { inner, guard }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(b) = literal_ip(&uri).and_then(|ip| self.guard.blocked(ip, None)) {
            return Box::pin(std::future::ready(Err(b.into())));
        }
        let guard = self.guard.clone();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            // Every path above already checked the address; this makes the
            // rule hold for whatever a future HttpConnector might do.
            let peer = io.inner().peer_addr()?;
            match guard.blocked(peer.ip(), None) {
                Some(b) => Err(b.into()),
                None => Ok(io),
            }
        })
    }
}
