//! How each field is read (`#[serde(deserialize_with = "de::...")]` in
//! [`super::Config`]).
//!
//! Environment variables and flags are text, so every reader takes the text
//! form; a file may also write numbers and booleans natively, and lists as
//! TOML arrays (or as the comma-separated text the environment uses). The
//! messages are the ones the hand-written setter gave: what was expected
//! and, for values that are never secret, what was got. The readers of
//! secrets (`master_key`, `tokens`, proxy URLs) never repeat their input:
//! their parsers' messages do not, and a wrong TOML type is named by its
//! type alone.

use std::{
    fmt::{self, Display},
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use serde::de::{self, value::MapAccessDeserializer, Deserializer, Error as _, Visitor};
use serde::Deserialize;

use super::{
    cluster::{
        check_prefix, parse_advertise_url, parse_monitor_urls, parse_nats_urls, NatsUrl,
        Secret as SecretValue, SecretFile,
    },
    net::parse_networks,
    parse_duration,
    proxy::{parse_no_proxy, parse_proxy, ProxyUrl},
    tenants::{check_name, parse_retention},
    tokens::{parse_tokens, Token},
    Cidr, MasterKey,
};

/// A scalar in its text form: a string as it is, a TOML number or boolean
/// as it would be written in the environment.
struct Scalar;

impl Visitor<'_> for Scalar {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// One scalar's text, as a list element.
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar).map(ScalarText)
    }
}

/// A list in its compact text form: a comma-separated string as it is, a
/// TOML array of scalars joined with commas.
struct List(&'static str);

impl<'de> Visitor<'de> for List {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a comma-separated string or an array", self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        let mut items = Vec::new();
        while let Some(ScalarText(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.join(","))
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(Scalar)
}

fn list<'de, D: Deserializer<'de>>(d: D, what: &'static str) -> Result<String, D::Error> {
    d.deserialize_any(List(what))
}

/// The setter's message for a bad value that is never secret.
fn bad<E: de::Error>(why: impl Display, value: &str) -> E {
    E::custom(format!("{why} (got {value:?})"))
}

/// Any `FromStr` value (addresses, enums), surrounding spaces ignored.
pub fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let value = text(d)?;
    value.trim().parse().map_err(|e| bad(e, &value))
}

/// A number; `_` may group digits (`1_000_000`).
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let value = text(d)?;
    value
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|e| bad(e, &value))
}

/// `true`/`false` (or `1`/`0`).
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value = text(d)?;
    match value.as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad("expected true or false", &value)),
    }
}

/// A listen address, or `off` (or empty) for none.
pub fn addr_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let value = text(d)?;
    match value.as_str() {
        "off" | "" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|e| bad(format_args!("{e} (or `off`)"), &value)),
    }
}

/// A file path; empty means none.
pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let value = text(d)?;
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

/// The data directory: any path but the empty one.
pub fn data_dir<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let value = text(d)?;
    if value.is_empty() {
        return Err(bad("must not be empty", &value));
    }
    Ok(PathBuf::from(value))
}

/// A list of durations (`retry_schedule`): `0s,5s,5m` or an array.
pub fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let value = list(d, "durations")?;
    value
        .split(',')
        .map(parse_duration)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e, &value))
}

/// Networks (`allow_networks`): `10.0.0.0/8,fd00::/8` or an array.
pub fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let value = list(d, "networks")?;
    parse_networks(&value).map_err(|e| bad(e, &value))
}

/// Tenant names (`tenants`), each checked, duplicates dropped.
pub fn tenants<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = list(d, "tenant names")?;
    let mut tenants: Vec<String> = Vec::new();
    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        check_name(t).map_err(|e| bad(e, &value))?;
        if !tenants.iter().any(|k| k == t) {
            tenants.push(t.to_owned());
        }
    }
    Ok(tenants)
}

/// The `no_proxy` list: hosts, addresses and CIDR ranges.
pub fn no_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = list(d, "hosts")?;
    parse_no_proxy(&value).map_err(D::Error::custom)
}

/// A reader that accepts only a string and hands it to `parse`, whose
/// message is the error; anything else is named by its TOML type only.
struct Secret<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for Secret<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    // Not echoed: `master_key = 12345...` may still be key material.
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
        Err(E::custom(format_args!(
            "expected {}, not a number",
            self.expecting
        )))
    }
}

/// The master key's text form (`STEVEDORE_MASTER_KEY`); never echoed.
pub fn master_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MasterKey>, D::Error> {
    d.deserialize_str(Secret {
        expecting: "the key as base64",
        parse: |v| MasterKey::from_base64(v).map(Some),
    })
}

/// A proxy URL (`http_proxy`, `https_proxy`), checked now and kept as
/// written; empty means "no proxy, whatever the environment says".
/// Never echoed: it may hold credentials.
pub fn proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProxyUrl>, D::Error> {
    d.deserialize_str(Secret {
        expecting: "a proxy URL (http://host:port)",
        parse: |v| {
            if !v.is_empty() {
                parse_proxy(v)?;
            }
            Ok(Some(ProxyUrl::from(v)))
        },
    })
}

/// A string that may be empty for "none".
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = text(d)?;
    Ok((!value.is_empty()).then_some(value))
}

/// A secret string (`nats_password`, `nats_token`); empty means none.
/// Never echoed.
pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretValue>, D::Error> {
    d.deserialize_str(Secret {
        expecting: "a string",
        parse: |v| Ok((!v.is_empty()).then(|| SecretValue::from(v))),
    })
}

/// An NKey seed file (`nats_nkey_seed_file`): the path, and the seed read
/// from it now; errors name the path, never the file's contents.
pub fn nkey_seed_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretFile>, D::Error> {
    secret_file(d, SecretFile::nkey_seed)
}

/// A NATS credentials file (`nats_creds_file`), read now like
/// [`nkey_seed_file`].
pub fn creds_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretFile>, D::Error> {
    secret_file(d, SecretFile::creds)
}

fn secret_file<'de, D: Deserializer<'de>>(
    d: D,
    read: fn(PathBuf) -> Result<SecretFile, String>,
) -> Result<Option<SecretFile>, D::Error> {
    path(d)?.map(read).transpose().map_err(D::Error::custom)
}

/// NATS seed URLs (`nats_url`): comma-separated or an array; never echoed
/// (a URL may hold credentials).
pub fn nats_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NatsUrl>, D::Error> {
    let value = list(d, "NATS URLs")?;
    parse_nats_urls(&value).map_err(D::Error::custom)
}

/// Monitoring URLs (`nats_monitor_url`): comma-separated or an array.
pub fn monitor_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = list(d, "monitoring URLs")?;
    parse_monitor_urls(&value).map_err(D::Error::custom)
}

/// Where other brokers reach this one (`advertise_url`); empty: the default.
pub fn advertise_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = text(d)?;
    if value.is_empty() {
        return Ok(None);
    }
    parse_advertise_url(&value)
        .map(Some)
        .map_err(|e| bad(e, &value))
}

/// The name prefix on the cluster (`nats_prefix`).
pub fn nats_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = text(d)?;
    check_prefix(&value).map_err(D::Error::custom)?;
    Ok(value)
}

/// One `[[tokens]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenTable {
    name: String,
    role: String,
    /// Scopes the token (the compact form's `role@tenant`).
    #[serde(default)]
    tenant: Option<String>,
    sha256: String,
}

/// A `[[tokens]]` entry: a table, never echoed when it is not one.
struct TokenEntry(TokenTable);

impl<'de> Deserialize<'de> for TokenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = TokenEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table with name, role and sha256")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<TokenEntry, A::Error> {
                TokenTable::deserialize(MapAccessDeserializer::new(map)).map(TokenEntry)
            }
            // Not echoed: it may be a pasted token.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TokenEntry, E> {
                Err(E::custom(
                    "expected a table with name, role and sha256, not a string",
                ))
            }
        }
        d.deserialize_any(Entry)
    }
}

/// Bearer tokens (`tokens`): `[[tokens]]` tables, or the compact
/// `name:role:sha256,...` of `STEVEDORE_TOKENS`. The tables are written in
/// the compact form and parsed by the one parser, whose messages name the
/// entry and never repeat a value.
pub fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Token>, D::Error> {
    struct Tokens;
    impl<'de> Visitor<'de> for Tokens {
        type Value = Vec<Token>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("[[tokens]] tables or a \"name:role:sha256,...\" string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Token>, E> {
            parse_tokens(v).map_err(E::custom)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Token>, A::Error> {
            let mut lines = Vec::new();
            while let Some(TokenEntry(t)) = seq.next_element()? {
                let role = match &t.tenant {
                    None => t.role,
                    Some(tenant) => format!("{}@{tenant}", t.role),
                };
                lines.push(format!("{}:{role}:{}", t.name, t.sha256));
            }
            parse_tokens(&lines.join(",")).map_err(A::Error::custom)
        }
    }
    d.deserialize_any(Tokens)
}

/// One `[tenant_retention]` value: a duration string.
struct AgeText(String);

impl<'de> Deserialize<'de> for AgeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Age;
        impl Visitor<'_> for Age {
            type Value = AgeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"1d\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AgeText, E> {
                Ok(AgeText(v.to_owned()))
            }
        }
        d.deserialize_str(Age)
    }
}

/// Per-tenant retention: a `[tenant_retention]` table (`acme = "1d"`) or
/// the compact `acme=1d,beta=12h`.
pub fn tenant_retention<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, Duration)>, D::Error> {
    struct Ages;
    impl<'de> Visitor<'de> for Ages {
        type Value = Vec<(String, Duration)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a [tenant_retention] table or \"tenant=duration,...\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_retention(v).map_err(|e| bad(e, v))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some((tenant, AgeText(age))) = map.next_entry::<String, AgeText>()? {
                entries.push(format!("{tenant}={age}"));
            }
            parse_retention(&entries.join(",")).map_err(A::Error::custom)
        }
    }
    d.deserialize_any(Ages)
}
