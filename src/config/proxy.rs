//! Proxies as configured (#19): `http_proxy`/`https_proxy` URLs with their
//! credentials, and the `no_proxy` list. Parsing lives here so that a bad
//! value is refused when the config loads, naming the key; routing requests
//! through a proxy is `crate::delivery::proxy`'s job.
//!
//! Credentials (`user:password@`, percent-encoded) are secret: they become
//! a sensitive `Proxy-Authorization: Basic` value, are redacted in `Debug`,
//! and no error here repeats the value.

use std::net::IpAddr;

use http::{HeaderValue, Uri};

use super::net::Cidr;

/// A proxy URL as configured. It may hold credentials
/// (`http://user:password@host:port`), so its `Debug` shows only the
/// scheme, host and port: a `Config` printed by a test or a panic repeats
/// no password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(String);

impl From<&str> for ProxyUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl From<String> for ProxyUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::ops::Deref for ProxyUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_redacted(&self.0, f)
    }
}

/// `url` for `Debug`: with credentials (`user:password@`), only the scheme,
/// `***` and the host and port; without, as it is.
pub(super) fn fmt_redacted(url: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((_, host)) => write!(f, "\"{scheme}://***@{host}\""),
        None => write!(f, "{url:?}"),
    }
}

/// A proxy's address (`http://host:port`; port 80 when left out) and its
/// credentials, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// `Proxy-Authorization` from the URL's `user:password@`, if any.
    pub auth: Option<ProxyAuth>,
}

/// Parses a proxy URL: `http://[user:password@]host[:port]` with nothing
/// after the authority. The error never repeats the value (it could hold
/// credentials).
pub fn parse_proxy(value: &str) -> Result<Proxy, String> {
    let uri: Uri = value
        .parse()
        .map_err(|_| "not a URL (expected http://host:port)".to_owned())?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// proxies are supported (expected http://host:port)".into());
    }
    let authority = uri
        .authority()
        .ok_or("no host (expected http://host:port)")?;
    let auth = match authority.as_str().rsplit_once('@') {
        Some((userinfo, _)) => Some(ProxyAuth::from_userinfo(userinfo)?),
        None => None,
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a proxy URL has no path or query (expected http://host:port)".into());
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("no host (expected http://host:port)".into());
    }
    Ok(Proxy {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(80),
        auth,
    })
}

/// One `no_proxy` entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// `*`: every host.
    All,
    /// A host name: it and its subdomains (`example.com`, `.example.com`).
    Domain(String),
    /// An address or a CIDR range, for IP-literal URLs.
    Net(Cidr),
}

/// The `no_proxy` list: comma-separated `*`, host names (each matching
/// its subdomains too; a leading `.` is ignored) and IP addresses or CIDR
/// ranges (matching IP-literal URLs). Ports are not considered.
pub fn parse_no_proxy(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, entry) in value.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        bypass(entry).map_err(|e| format!("entry {}: {e}", i + 1))?;
        out.push(entry.to_owned());
    }
    Ok(out)
}

/// One `no_proxy` entry, checked and parsed.
pub fn bypass(entry: &str) -> Result<Bypass, String> {
    if entry == "*" {
        return Ok(Bypass::All);
    }
    // An address (that one address) or a CIDR range.
    if entry.contains('/') || entry.parse::<IpAddr>().is_ok() {
        return entry
            .parse::<Cidr>()
            .map(Bypass::Net)
            .map_err(|e| e.to_string());
    }
    let name = entry.trim_start_matches('.').to_ascii_lowercase();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "{entry:?} is not *, a host name, an address or a CIDR range"
        ));
    }
    Ok(Bypass::Domain(name))
}

/// A proxy's `Proxy-Authorization: Basic ...` value (marked sensitive).
/// Its `Debug` shows no credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyAuth(HeaderValue);

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyAuth(<redacted>)")
    }
}

impl ProxyAuth {
    /// HTTP Basic of the URL's (percent-decoded) user and password.
    pub fn from_userinfo(userinfo: &str) -> Result<Self, String> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "the proxy credentials are not valid percent-encoded UTF-8".to_owned())
        };
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (user, password) = (decode(user)?, decode(password)?);
        if user.is_empty() {
            return Err(
                "proxy credentials need a user name (http://user:password@host:port)".into(),
            );
        }
        let mut value = HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ))
        .expect("base64 is a valid header value");
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The `Proxy-Authorization` value.
    pub fn header(&self) -> &HeaderValue {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoded_basic_never_shown() {
        let auth = ProxyAuth::from_userinfo("egress%40corp:p%3Ass").unwrap();
        // base64("egress@corp:p:ss")
        assert_eq!(auth.header(), "Basic ZWdyZXNzQGNvcnA6cDpzcw==");
        assert!(auth.header().is_sensitive());
        assert_eq!(format!("{auth:?}"), "ProxyAuth(<redacted>)");
        assert_eq!(
            ProxyAuth::from_userinfo("user").unwrap().header(),
            "Basic dXNlcjo="
        );
        for bad in [":pw", "user:pw%ff"] {
            let e = ProxyAuth::from_userinfo(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
    }
}
