//! Proxy credentials (#19): the `user:password@` of the broker's
//! `http_proxy`/`https_proxy`, as the `Proxy-Authorization: Basic` value
//! sent on CONNECT and on forwarded plain-HTTP requests (see
//! [`super::proxy`]). Secret: marked sensitive, redacted in `Debug`, never
//! repeated in errors.

use http::HeaderValue;

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
    pub(super) fn from_userinfo(userinfo: &str) -> Result<Self, String> {
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
