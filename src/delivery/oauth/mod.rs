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
//! `client_secret_set` instead), redacted in every `Debug`.

pub mod layer;
pub mod token;

use std::fmt;

use http::Uri;

use crate::{
    error::{Error, Result},
    pb,
};

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

/// The generated message's `Debug` (its derive is skipped in `build.rs`):
/// everything but the secret.
impl fmt::Debug for pb::OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.client_secret.is_empty() {
            ""
        } else {
            super::REDACTED
        };
        f.debug_struct("OAuth2")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &secret)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("client_secret_set", &self.client_secret_set)
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
    o: Option<&pb::OAuth2>,
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

/// The `oauth2` part of an UpdateEndpoint, applied path by path, then
/// [`OAuth2Update::finish`]ed.
#[derive(Default)]
pub struct OAuth2Update {
    before: Option<Option<pb::OAuth2>>,
    secret_given: bool,
}

impl OAuth2Update {
    /// Applies one update-mask path: `oauth2` (the whole message; an empty
    /// `client_secret` keeps the stored one) or `oauth2.<field>`. Returns
    /// `false` for any other path.
    pub fn apply(
        &mut self,
        path: &str,
        into: &mut Option<pb::OAuth2>,
        from: Option<&pb::OAuth2>,
        index: usize,
    ) -> Result<bool> {
        let sub = match path.strip_prefix("oauth2") {
            Some("") => None,
            Some(rest) => match rest.strip_prefix('.') {
                Some(sub) => Some(sub),
                None => return Ok(false),
            },
            None => return Ok(false),
        };
        self.before.get_or_insert_with(|| into.clone());
        let Some(sub) = sub else {
            let kept = into.as_ref().map(|o| o.client_secret.clone());
            *into = from.cloned();
            if let Some(o) = into.as_mut() {
                if o.client_secret.is_empty() {
                    o.client_secret = kept.unwrap_or_default();
                } else {
                    self.secret_given = true;
                }
            }
            return Ok(true);
        };
        let from = from.cloned().unwrap_or_default();
        let o = into.get_or_insert_with(Default::default);
        match sub {
            "token_url" => o.token_url = from.token_url,
            "client_id" => o.client_id = from.client_id,
            "client_secret" => {
                o.client_secret = from.client_secret;
                self.secret_given = true;
            }
            "scopes" => o.scopes = from.scopes,
            "audience" => o.audience = from.audience,
            other => {
                return Err(Error::invalid(
                    format!("update_mask.paths[{index}]"),
                    format!(
                        "oauth2.{other:?} cannot be updated (oauth2 fields: token_url, \
                         client_id, client_secret, scopes, audience)"
                    ),
                ))
            }
        }
        Ok(true)
    }

    /// Refuses sending the stored secret to a token URL it was not given
    /// for: changing `token_url` needs the secret again.
    pub fn finish(self, after: &Option<pb::OAuth2>) -> Result<()> {
        let (Some(before), Some(after)) = (self.before, after) else {
            return Ok(());
        };
        let moved = before
            .as_ref()
            .is_some_and(|b| b.token_url != after.token_url);
        if moved && !self.secret_given {
            return Err(Error::invalid(
                "endpoint.oauth2.client_secret",
                "required when token_url changes (the stored secret is never sent to another \
                 token endpoint)",
            ));
        }
        Ok(())
    }
}

/// What responses show: the settings without the secret, and whether one
/// is stored.
pub fn redact(o: &mut pb::OAuth2) {
    o.client_secret_set = !o.client_secret.is_empty();
    o.client_secret.clear();
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

    fn settings() -> pb::OAuth2 {
        pb::OAuth2 {
            token_url: "https://auth.example.com/token".into(),
            client_id: "stevedore".into(),
            client_secret: "s3cr3t-value".into(),
            scopes: vec!["orders:write".into(), "inventory".into()],
            audience: String::new(),
            client_secret_set: false,
        }
    }

    #[test]
    fn validates_each_field_without_echoing_the_secret() {
        let ok = parse(Some(&settings()), https).unwrap().unwrap();
        assert_eq!(ok.client_id, "stevedore");
        assert_eq!(ok.audience, None);
        assert!(parse(None, https).unwrap().is_none());
        type Change = fn(&mut pb::OAuth2);
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
        let mut shown = o.clone();
        redact(&mut shown);
        assert!(shown.client_secret.is_empty() && shown.client_secret_set);
    }

    #[test]
    fn updates_keep_the_secret_only_for_the_same_token_url() {
        let stored = Some(settings());
        // The whole message without a secret: the stored one stays.
        let mut into = stored.clone();
        let mut new = settings();
        new.client_secret.clear();
        new.scopes = vec!["one".into()];
        let mut u = OAuth2Update::default();
        assert!(u.apply("oauth2", &mut into, Some(&new), 0).unwrap());
        u.finish(&into).unwrap();
        let got = into.unwrap();
        assert_eq!(got.client_secret, "s3cr3t-value");
        assert_eq!(got.scopes, ["one"]);

        // A new token URL without the secret again is refused...
        let mut into = stored.clone();
        let mut new = settings();
        new.token_url = "https://elsewhere.example/token".into();
        let mut u = OAuth2Update::default();
        u.apply("oauth2.token_url", &mut into, Some(&new), 0)
            .unwrap();
        let err = u.finish(&into).unwrap_err().to_string();
        assert!(err.starts_with("endpoint.oauth2.client_secret"), "{err}");
        // ...and accepted with it.
        let mut into = stored.clone();
        new.client_secret = "other".into();
        let mut u = OAuth2Update::default();
        u.apply("oauth2.token_url", &mut into, Some(&new), 0)
            .unwrap();
        u.apply("oauth2.client_secret", &mut into, Some(&new), 1)
            .unwrap();
        u.finish(&into).unwrap();
        assert_eq!(into.unwrap().client_secret, "other");

        // Removing OAuth2, and paths that are not ours.
        let mut into = stored.clone();
        let mut u = OAuth2Update::default();
        u.apply("oauth2", &mut into, None, 0).unwrap();
        u.finish(&into).unwrap();
        assert!(into.is_none());
        let mut into = stored;
        let mut u = OAuth2Update::default();
        assert!(!u.apply("oauth2x", &mut into, None, 0).unwrap());
        assert!(!u.apply("url", &mut into, None, 0).unwrap());
        assert!(u.apply("oauth2.nope", &mut into, None, 3).is_err());
    }
}
