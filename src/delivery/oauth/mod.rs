//! OAuth2 client credentials per endpoint (#19, RFC 6749 §4.4): receivers
//! behind gateways that want `Authorization: Bearer <token>` from a token
//! endpoint of theirs.
//!
//! - [`parse`]: the endpoint's `oauth2` settings, validated (field errors
//!   never repeat the secret).
//! - [`token`]: fetching a token (`grant_type=client_credentials`, HTTP
//!   Basic client authentication) through the endpoint's guarded egress,
//!   and caching it until shortly before it expires, one fetch at a time.
//! - [`layer`]: the delivery stack's layer that adds the token and, after
//!   a 401 from the receiver, fetches a new one and retries once.
//!
//! The client secret is a secret like the signing secrets: sealed at rest
//! (`EndpointRecord::to_stored`), never returned (responses carry
//! `client_secret_set` instead, `convert::endpoint`), redacted in every
//! `Debug`. How UpdateEndpoint's mask changes the settings is wire
//! semantics, in `convert::endpoint::oauth2`.

pub mod layer;
pub mod token;

use std::fmt;

use http::Uri;

use crate::model::endpoint::OAuth2;

pub use layer::BearerLayer;
pub use token::Tokens;

/// Longest client id, secret and audience accepted.
const MAX_VALUE_BYTES: usize = 1024;
/// Most scopes, and the longest one.
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_BYTES: usize = 256;

/// Validated client credentials of one endpoint. `Debug` shows no secret.
#[derive(Clone)]
pub struct ClientCredentials {
    /// Where tokens are fetched.
    pub token_url: Uri,
    /// `client_id`.
    pub client_id: String,
    client_secret: String,
    /// `scope`, space-joined; empty: not sent.
    pub scopes: Vec<String>,
    /// `audience`, when set.
    pub audience: Option<String>,
}

impl ClientCredentials {
    /// The secret, for the token request's Basic authentication only.
    fn secret(&self) -> &str {
        &self.client_secret
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &super::endpoint::url_origin(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &super::REDACTED)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Which field is wrong (under `oauth2.`), and why — never the value.
pub type FieldError = (String, String);

fn field(name: &str) -> String {
    format!("oauth2.{name}")
}

/// `VSCHAR` (RFC 6749 Appendix A): visible ASCII and space.
fn vschar(s: &str) -> bool {
    s.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// `NQCHAR`: a scope token's characters (visible ASCII but `"` and `\`).
fn nqchar(s: &str) -> bool {
    s.bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

/// Validates an endpoint's `oauth2` (`None`: no OAuth2). `check_url` is
/// the endpoint URL rule (https://, http:// only with `allow_http`).
pub fn parse(
    o: Option<&OAuth2>,
    check_url: impl Fn(&str) -> std::result::Result<Uri, String>,
) -> std::result::Result<Option<ClientCredentials>, FieldError> {
    let Some(o) = o else { return Ok(None) };
    let token_url = check_url(&o.token_url).map_err(|m| (field("token_url"), m))?;
    let text = |name: &str, v: &str, required: bool| {
        if required && v.is_empty() {
            return Err((field(name), "required".to_owned()));
        }
        if v.len() > MAX_VALUE_BYTES {
            return Err((
                field(name),
                format!("must be at most {MAX_VALUE_BYTES} bytes"),
            ));
        }
        if !vschar(v) {
            return Err((
                field(name),
                "must be visible ASCII or spaces (RFC 6749 VSCHAR)".to_owned(),
            ));
        }
        Ok(())
    };
    text("client_id", &o.client_id, true)?;
    text("client_secret", &o.client_secret, true)?;
    text("audience", &o.audience, false)?;
    if o.scopes.len() > MAX_SCOPES {
        return Err((field("scopes"), format!("at most {MAX_SCOPES} scopes")));
    }
    for (i, s) in o.scopes.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_SCOPE_BYTES || !nqchar(s) {
            return Err((
                field(&format!("scopes[{i}]")),
                format!(
                    "must be 1-{MAX_SCOPE_BYTES} visible ASCII characters without spaces, \
                     quotes or backslashes (one scope per entry)"
                ),
            ));
        }
    }
    Ok(Some(ClientCredentials {
        token_url,
        client_id: o.client_id.clone(),
        client_secret: o.client_secret.clone(),
        scopes: o.scopes.clone(),
        audience: (!o.audience.is_empty()).then(|| o.audience.clone()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(url: &str) -> std::result::Result<Uri, String> {
        if url.is_empty() {
            return Err("required".into());
        }
        url.parse::<Uri>()
            .ok()
            .filter(|u| u.scheme_str() == Some("https"))
            .ok_or_else(|| "must be https://".into())
    }

    fn settings() -> OAuth2 {
        OAuth2 {
            token_url: "https://auth.example.com/token".into(),
            client_id: "stevedore".into(),
            client_secret: "s3cr3t-value".into(),
            scopes: vec!["orders:write".into(), "inventory".into()],
            audience: String::new(),
        }
    }

    #[test]
    fn validates_each_field_without_echoing_the_secret() {
        let ok = parse(Some(&settings()), https).unwrap().unwrap();
        assert_eq!(ok.client_id, "stevedore");
        assert_eq!(ok.audience, None);
        assert!(parse(None, https).unwrap().is_none());
        type Change = fn(&mut OAuth2);
        let cases: [(Change, &str); 7] = [
            (|o| o.token_url.clear(), "oauth2.token_url"),
            (|o| o.token_url = "http://a/t".into(), "oauth2.token_url"),
            (|o| o.client_id.clear(), "oauth2.client_id"),
            (|o| o.client_secret.clear(), "oauth2.client_secret"),
            (
                |o| o.client_secret = "s3cr3t-value\n".into(),
                "oauth2.client_secret",
            ),
            (|o| o.scopes.push("two words".into()), "oauth2.scopes[2]"),
            (|o| o.scopes.push(String::new()), "oauth2.scopes[2]"),
        ];
        for (change, name) in cases {
            let mut o = settings();
            change(&mut o);
            let (f, m) = parse(Some(&o), https).unwrap_err();
            assert_eq!(f, name, "{m}");
            assert!(!m.contains("s3cr3t"), "{m}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let o = settings();
        let creds = parse(Some(&o), https).unwrap().unwrap();
        let shown = format!("{o:?} {creds:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("stevedore") && shown.contains("<redacted>"));
    }
}
