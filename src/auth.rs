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

use std::{fmt, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{
    metadata::MetadataMap,
    service::{interceptor::InterceptedService, Interceptor},
    Request, Status,
};

/// What a token may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every service.
    Admin,
    /// The Publisher service.
    Publisher,
    /// The Subscriber service.
    Subscriber,
}

impl Role {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }

    /// Whether a caller with this role may call a service that needs `needed`.
    pub fn grants(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "publisher" => Ok(Role::Publisher),
            "subscriber" => Ok(Role::Subscriber),
            _ => Err(format!(
                "unknown role {s:?} (use admin, publisher or subscriber)"
            )),
        }
    }
}

/// One configured token: a name for logs, a role, optionally a tenant, and
/// the token's SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Shown in logs; 1-64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// What the token may call.
    pub role: Role,
    /// The tenant it is scoped to (none: global); see `crate::tenant`.
    pub tenant: Option<String>,
    /// SHA-256 of the token's bytes.
    pub sha256: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash of a weak token can be brute-forced: keep it out of logs.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("tenant", &self.tenant)
            .field("sha256", &"<redacted>")
            .finish()
    }
}

/// SHA-256 of a token, as stored in config.
pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses the compact form `name:role:sha256hex,name:role:sha256hex,...`
/// (what `STEVEDORE_TOKENS` holds; the TOML `[[tokens]]` tables are turned
/// into it). A role written `role@tenant` scopes the token to that tenant
/// (`shop-ops:admin@acme:…`). Empty means no tokens. Errors never repeat the input, in case
/// someone pasted a token instead of its hash.
pub fn parse_tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut tokens: Vec<Token> = Vec::new();
    for (i, entry) in s.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            if s.trim().is_empty() {
                break;
            }
            return Err(format!("entry {i} is empty"));
        }
        let parts: Vec<&str> = entry.split(':').collect();
        let [name, role, sha256] = parts[..] else {
            return Err(format!(
                "entry {i} is not name:role:sha256 (3 fields separated by ':')"
            ));
        };
        let ok_name = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok_name {
            return Err(format!(
                "entry {i}: the name must be 1-64 characters of [A-Za-z0-9._-]"
            ));
        }
        let (role, tenant) = match role.split_once('@') {
            Some((role, tenant)) => {
                crate::tenant::check_name(tenant)
                    .map_err(|e| format!("entry {i} ({name}): after `@`: {e}"))?;
                (role, Some(tenant.to_owned()))
            }
            None => (role, None),
        };
        let role: Role = role
            .parse()
            .map_err(|e| format!("entry {i} ({name}): {e}"))?;
        let sha256 = from_hex(sha256).ok_or_else(|| {
            format!(
                "entry {i} ({name}): sha256 must be 64 hex digits \
                 (the output of `stevedore hash-token`, not the token itself)"
            )
        })?;
        if tokens.iter().any(|t| t.name == name) {
            return Err(format!("entry {i}: the name {name} is used twice"));
        }
        if tokens.iter().any(|t| t.sha256 == sha256) {
            return Err(format!(
                "entry {i} ({name}): the same token is configured twice"
            ));
        }
        tokens.push(Token {
            name: name.to_string(),
            role,
            tenant,
            sha256,
        });
    }
    Ok(tokens)
}

/// Renders tokens in the compact form [`parse_tokens`] reads.
pub fn format_tokens(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| match &t.tenant {
            None => format!("{}:{}:{}", t.name, t.role, to_hex(&t.sha256)),
            Some(tenant) => format!("{}:{}@{tenant}:{}", t.name, t.role, to_hex(&t.sha256)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

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
