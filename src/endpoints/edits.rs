//! What UpdateEndpoint changes: the update mask (which fields of the sent
//! endpoint replace the stored one's) and the custom header edits by name.

use std::collections::HashMap;

use crate::{
    delivery::oauth,
    error::{Error, Result},
    pb,
};

/// The settable fields, by field-mask path.
const SETTABLE: &[&str] = &[
    "url",
    "description",
    "event_types",
    "attribute_filters",
    "headers",
    "timeout",
    "retry_schedule",
    "max_in_flight",
    "ordering",
    "enabled",
    "coalesce",
    "filter",
    "fields",
    "rate_limit",
    "rate_burst",
    // #19 egress
    "proxy_url",
    "client_cert_pem",
    "client_key_pem",
    "envelope",
    "oauth2",
    "oauth2.token_url",
    "oauth2.client_id",
    "oauth2.client_secret",
    "oauth2.scopes",
    "oauth2.audience",
];

/// `eventTypes` → `event_types`; snake_case stays as it is.
pub(super) fn snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Copies the `fields` of `from` into `into`.
pub(super) fn merge(into: &mut pb::Endpoint, from: pb::Endpoint, fields: &[String]) -> Result<()> {
    let mut oauth2 = oauth::OAuth2Update::default();
    for (i, f) in fields.iter().enumerate() {
        if oauth2.apply(f, &mut into.oauth2, from.oauth2.as_ref(), i)? {
            continue;
        }
        match f.as_str() {
            "url" => into.url = from.url.clone(),
            "description" => into.description = from.description.clone(),
            "event_types" => into.event_types = from.event_types.clone(),
            "attribute_filters" => into.attribute_filters = from.attribute_filters.clone(),
            "headers" => into.headers = from.headers.clone(),
            "timeout" => into.timeout = from.timeout,
            "retry_schedule" => into.retry_schedule = from.retry_schedule.clone(),
            "max_in_flight" => into.max_in_flight = from.max_in_flight,
            "ordering" => into.ordering = from.ordering,
            "enabled" => into.enabled = Some(from.enabled.unwrap_or(true)),
            "coalesce" => into.coalesce = from.coalesce,
            "filter" => into.filter = from.filter.clone(),
            "fields" => into.fields = from.fields.clone(),
            "rate_limit" => into.rate_limit = from.rate_limit,
            "rate_burst" => into.rate_burst = from.rate_burst,
            "tenant" => {
                return Err(Error::invalid(
                    "endpoint.tenant",
                    "is fixed when the endpoint is created and cannot be updated",
                ))
            }
            "proxy_url" => into.proxy_url = from.proxy_url.clone(),
            "client_cert_pem" => into.client_cert_pem = from.client_cert_pem.clone(),
            "client_key_pem" => into.client_key_pem = from.client_key_pem.clone(),
            "envelope" => into.envelope = from.envelope,
            other => {
                return Err(Error::invalid(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{other:?} cannot be updated (settable, in snake_case or camelCase: {}; \
                         to move the start, use ReplayEndpoint)",
                        SETTABLE.join(", ")
                    ),
                ))
            }
        }
    }
    oauth2.finish(&into.oauth2)
}

/// Custom header changes by name (UpdateEndpoint's `set_headers` and
/// `remove_headers`), so a client never has to send back values it was
/// only shown redacted. Names compare case-insensitively, as in HTTP.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    /// Added, or replacing the header of the same name.
    pub set: HashMap<String, String>,
    /// Removed; each must exist.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`; nothing changes on error. The
    /// result is validated with the rest of the endpoint afterwards.
    pub fn apply(&self, headers: &mut HashMap<String, String>) -> Result<()> {
        let mut out = headers.clone();
        for (i, name) in self.remove.iter().enumerate() {
            let field = format!("remove_headers[{i}]");
            if self.set.keys().any(|s| s.eq_ignore_ascii_case(name)) {
                return Err(Error::invalid(
                    field,
                    format!("{name:?} is also in set_headers"),
                ));
            }
            let Some(key) = out.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned() else {
                return Err(Error::invalid(
                    field,
                    format!("the endpoint has no header {name:?}"),
                ));
            };
            out.remove(&key);
        }
        let mut names: Vec<&String> = self.set.keys().collect();
        names.sort();
        for name in names {
            if name.is_empty() {
                return Err(Error::invalid("set_headers", "a header name is empty"));
            }
            out.retain(|k, _| !k.eq_ignore_ascii_case(name));
            out.insert(name.clone(), self.set[name].clone());
        }
        *headers = out;
        Ok(())
    }
}
