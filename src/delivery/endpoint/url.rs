//! An endpoint's URL: its validation, what logs show of it, and the SSRF
//! guard's check of an IP literal in it at create or update.

use http::Uri;

use super::MAX_URL_BYTES;
use crate::{
    delivery::egress::{self, Guard},
    error::{Error, Result},
};

pub(super) fn validate_url(url: &str, allow_http: bool) -> std::result::Result<Uri, String> {
    if url.is_empty() {
        return Err("required".into());
    }
    if url.len() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    let uri: Uri = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => {
            return Err("must be https:// (http:// needs the broker's allow_http setting)".into())
        }
        _ => return Err("must be an absolute https:// URL".into()),
    }
    let authority = uri.authority().ok_or("must name a host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials; use a custom header instead".into());
    }
    if authority.host().is_empty() {
        return Err("must name a host".into());
    }
    Ok(uri)
}

/// What logs show of an endpoint URL: its scheme, host and port. Webhook
/// URLs often carry a secret in their path or query (a per-endpoint token
/// the receiver checks), and logs go wherever operators collect them; the
/// full URL is for `GetEndpoint` (admin role).
pub fn url_origin(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("?");
    let host = url.host().unwrap_or("?");
    match url.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// [`url_origin`] of a stored URL. Operational events carry only this:
/// subscriber tokens read them, and the full URL is for the Admin service.
pub fn origin_of(url: &str) -> String {
    url.parse::<Uri>()
        .map(|u| url_origin(&u))
        .unwrap_or_else(|_| "?".into())
}

/// Rejects, at create or update, a URL whose host is an IP literal in a
/// range the SSRF guard blocks. Host names are checked when connecting
/// (their addresses can change); so is every literal, again.
pub fn check_egress(url: &Uri, guard: &Guard) -> Result<()> {
    check_egress_of("endpoint.url", url, guard)
}

/// [`check_egress`] of the URL in `field` (the endpoint's, or its OAuth2
/// token URL: a token request goes through the same guard).
pub fn check_egress_of(field: &str, url: &Uri, guard: &Guard) -> Result<()> {
    match egress::literal_ip(url).and_then(|ip| guard.check(ip).map(|b| (ip, b))) {
        None => Ok(()),
        // Exempting a cloud metadata address would hand out the host's
        // credentials: that is never the advice.
        Some((ip, block)) if block.category.contains("metadata") => Err(Error::invalid(
            field,
            format!(
                "{ip} is {}, which the SSRF guard blocks: webhooks never go to a cloud \
                 metadata service",
                egress::describe(&block)
            ),
        )),
        Some((ip, block)) => Err(Error::invalid(
            field,
            format!(
                "{ip} is {}, which the SSRF guard blocks; to deliver there, add the range to the broker's allow_networks setting",
                egress::describe(&block)
            ),
        )),
    }
}
