//! UpdateEndpoint's field mask: which fields of the sent `Endpoint` message
//! replace the stored endpoint's. The mask names the message's fields (in
//! snake_case, or camelCase from JSON clients), so this is wire semantics
//! and lives at the edge; the endpoint manager gets the change as a
//! function over the domain endpoint.

use super::{oauth2::OAuth2Update, ordering, retry_schedule, timeout};
use crate::{
    error::{Error, Result},
    model::endpoint::Endpoint,
    pb,
};

/// The settable fields, by field-mask path.
pub(super) const SETTABLE: &[&str] = &[
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

/// A mask's paths as field names: `eventTypes` → `event_types`;
/// snake_case stays as it is.
pub fn mask_paths(paths: &[String]) -> Vec<String> {
    paths.iter().map(|p| snake_case(p)).collect()
}

fn snake_case(path: &str) -> String {
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

/// Copies the `fields` (snake_case paths, [`mask_paths`]) of `from` into
/// `into`. Only those fields of `from` are read (and converted: a negative
/// `timeout` is refused only when `timeout` is in the mask).
pub fn merge(into: &mut Endpoint, from: &pb::Endpoint, fields: &[String]) -> Result<()> {
    let mut oauth2 = OAuth2Update::default();
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
            "timeout" => into.timeout = timeout(from.timeout.as_ref())?,
            "retry_schedule" => into.retry_schedule = retry_schedule(&from.retry_schedule)?,
            "max_in_flight" => into.max_in_flight = from.max_in_flight,
            "ordering" => into.ordering = ordering(from.ordering)?,
            "enabled" => into.enabled = from.enabled.unwrap_or(true),
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
