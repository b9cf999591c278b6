//! Bearer-token authentication and roles for the gRPC services.
//!
//! Callers send `authorization: Bearer <token>` metadata. The broker keeps
//! only the SHA-256 of each token (config key `tokens`), hashes what a
//! caller presents and compares the digests in constant time, so neither the
//! config nor a timing side channel gives a token away.
//!
//! Each service is wrapped in one interceptor, [`Auth::guard`], that names
//! the role it needs: `admin` may call everything, `publisher` the Publisher
//! service, `subscriber` the Subscriber service. Health and reflection are
//! not wrapped. With no tokens configured the guard lets everything through;
//! `Config::validate` and `run` then keep the listener on loopback.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{
    metadata::MetadataMap,
    service::{interceptor::InterceptedService, Interceptor},
    Request, Status,
};

pub use crate::config::tokens::{format_tokens, hash_token, parse_tokens, to_hex, Role, Token};

/// Who made a request; put in the request's extensions once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
    /// The tenant the token is scoped to (none: global). Everything the
    /// caller reaches goes through `crate::tenant::Scope::of`.
    pub tenant: Option<String>,
}

/// The configured tokens, shared by every service's guard.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<[Token]>,
}

impl Auth {
    /// Checks callers against `tokens`; none: authentication is off.
    pub fn new(tokens: &[Token]) -> Self {
        Self {
            tokens: tokens.into(),
        }
    }

    /// Whether callers must present a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Wraps a generated tonic server so every call needs a token granting
    /// `role`. The result is still a `NamedService` for the router.
    pub fn guard<S>(&self, role: Role, service: S) -> InterceptedService<S, RequireRole> {
        InterceptedService::new(
            service,
            RequireRole {
                auth: self.clone(),
                role,
            },
        )
    }

    /// Who `metadata` authenticates as, or `UNAUTHENTICATED`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let value = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing credentials: send `authorization: Bearer <token>` metadata",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim())
                    .filter(|t| !t.is_empty())
            })
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization: expected `Bearer <token>`")
            })?;
        let presented = hash_token(token.as_bytes());
        // Look at every token (no early exit) and compare digests in constant
        // time: the time taken does not depend on which bytes matched.
        let mut found: Option<&Token> = None;
        for t in self.tokens.iter() {
            if bool::from(t.sha256.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        let t = found.ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        Ok(Caller {
            name: t.name.clone(),
            role: t.role,
            tenant: t.tenant.clone(),
        })
    }
}

/// The interceptor [`Auth::guard`] installs: authenticate, then authorize.
#[derive(Clone)]
pub struct RequireRole {
    auth: Auth,
    role: Role,
}

impl Interceptor for RequireRole {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.auth.enabled() {
            return Ok(request);
        }
        let caller = self.auth.authenticate(request.metadata()).inspect_err(|s| {
            // debug, not info: anyone who can connect could flood the log.
            tracing::debug!(remote = ?request.remote_addr(), reason = s.message(), "unauthenticated call");
        })?;
        if !caller.role.grants(self.role) {
            tracing::info!(token = %caller.name, role = %caller.role, needed = %self.role, "call denied");
            let needed = match self.role {
                Role::Admin => "admin".to_owned(),
                role => format!("{role} or admin"),
            };
            return Err(Status::permission_denied(format!(
                "token {} has role {}; this service needs {needed}",
                caller.name, caller.role
            )));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_line(name: &str, role: &str, token: &str) -> String {
        format!("{name}:{role}:{}", to_hex(&hash_token(token.as_bytes())))
    }

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn known_hash() {
        // printf 'abc' | sha256sum
        assert_eq!(
            to_hex(&hash_token(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_and_format_round_trip() {
        let s = format!(
            "{},{}",
            token_line("ops", "admin", "t1"),
            token_line("erp-feed", "publisher", "t2")
        );
        let tokens = parse_tokens(&s).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].role, Role::Publisher);
        assert_eq!(format_tokens(&tokens), s);
        assert!(parse_tokens("").unwrap().is_empty());
        assert!(parse_tokens("  ").unwrap().is_empty());
    }

    #[test]
    fn parse_errors_do_not_echo_the_input() {
        let h = to_hex(&hash_token(b"x"));
        for (input, want) in [
            ("s3cr3t-token".to_string(), "3 fields"),
            (format!("a:root:{h}"), "unknown role"),
            ("a:admin:s3cr3t-token".into(), "64 hex digits"),
            (format!("bad name:admin:{h}"), "name"),
            (format!("a:admin:{h},a:publisher:{}", &h), "used twice"),
            (format!("a:admin:{h},b:publisher:{h}"), "configured twice"),
            (format!("a:admin:{h},"), "empty"),
        ] {
            let err = parse_tokens(&input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn authenticate() {
        let tokens = parse_tokens(&format!(
            "{},{}",
            token_line("ops", "admin", "admin-token"),
            token_line("feed", "publisher", "pub-token")
        ))
        .unwrap();
        let auth = Auth::new(&tokens);
        let c = auth.authenticate(&md("Bearer pub-token")).unwrap();
        assert_eq!((c.name.as_str(), c.role), ("feed", Role::Publisher));
        // The scheme is case-insensitive (RFC 9110).
        assert_eq!(
            auth.authenticate(&md("bearer admin-token")).unwrap().role,
            Role::Admin
        );
        for bad in ["Bearer nope", "Basic YWxhZGRpbg==", "Bearer ", "pub-token"] {
            let s = auth.authenticate(&md(bad)).unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        let s = auth.authenticate(&MetadataMap::new()).unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn roles() {
        assert!(Role::Admin.grants(Role::Publisher));
        assert!(Role::Admin.grants(Role::Admin));
        assert!(Role::Publisher.grants(Role::Publisher));
        assert!(!Role::Publisher.grants(Role::Subscriber));
        assert!(!Role::Subscriber.grants(Role::Admin));
    }

    #[test]
    fn tenant_scoped_tokens() {
        let s = format!(
            "{},{}",
            token_line("ops", "admin", "t1"),
            token_line("acme-ops", "admin@acme", "t2")
        );
        let tokens = parse_tokens(&s).unwrap();
        assert_eq!(tokens[0].tenant, None);
        assert_eq!(tokens[1].tenant.as_deref(), Some("acme"));
        assert_eq!(tokens[1].role, Role::Admin);
        assert_eq!(format_tokens(&tokens), s);
        let auth = Auth::new(&tokens);
        let c = auth.authenticate(&md("Bearer t2")).unwrap();
        assert_eq!(c.tenant.as_deref(), Some("acme"));
        let h = to_hex(&hash_token(b"x"));
        for bad in [format!("a:admin@:{h}"), format!("a:admin@b c:{h}")] {
            let err = parse_tokens(&bad).unwrap_err();
            assert!(err.contains("tenant"), "{err}");
        }
        let err = parse_tokens(&format!("a:root@acme:{h}")).unwrap_err();
        assert!(err.contains("unknown role"), "{err}");
    }

    #[test]
    fn debug_redacts_the_hash() {
        let t = &parse_tokens(&token_line("ops", "admin", "t")).unwrap()[0];
        let text = format!("{t:?}");
        assert!(!text.contains(&to_hex(&t.sha256)[..16]), "{text}");
    }
}
