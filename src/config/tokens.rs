//! Bearer tokens as configured (`tokens`): names, roles, tenants and the
//! SHA-256 of each token, parsed from the compact form
//! `name:role:sha256,...` (what `STEVEDORE_TOKENS` holds and the TOML
//! `[[tokens]]` tables are turned into). Checking a caller's token is
//! `crate::auth`'s job; this is only what the config says.

use std::fmt;

use sha2::{Digest, Sha256};

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
                super::tenants::check_name(tenant)
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
