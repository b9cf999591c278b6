//! The `OAuth2` message at the edge: its `Debug`, and how UpdateEndpoint's
//! mask paths (`oauth2`, `oauth2.<field>`) change an endpoint's settings.

use std::fmt;

use super::oauth2_from_pb;
use crate::{
    error::{Error, Result},
    model::endpoint::OAuth2,
    pb,
};

/// The generated message's `Debug` (its derive is skipped in `build.rs`):
/// the domain settings' (no secret), and whether a secret is set.
impl fmt::Debug for pb::OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OAuth2")
            .field(&oauth2_from_pb(self.clone()))
            .field(&format_args!(
                "client_secret_set: {}",
                self.client_secret_set
            ))
            .finish()
    }
}

/// The `oauth2` part of an UpdateEndpoint, applied path by path, then
/// [`OAuth2Update::finish`]ed.
#[derive(Default)]
pub struct OAuth2Update {
    before: Option<Option<OAuth2>>,
    secret_given: bool,
}

impl OAuth2Update {
    /// Applies one update-mask path: `oauth2` (the whole message; an empty
    /// `client_secret` keeps the stored one) or `oauth2.<field>`. Returns
    /// `false` for any other path.
    pub fn apply(
        &mut self,
        path: &str,
        into: &mut Option<OAuth2>,
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
        let from = from.cloned().map(oauth2_from_pb);
        let Some(sub) = sub else {
            let kept = into.as_ref().map(|o| o.client_secret.clone());
            *into = from;
            if let Some(o) = into.as_mut() {
                if o.client_secret.is_empty() {
                    o.client_secret = kept.unwrap_or_default();
                } else {
                    self.secret_given = true;
                }
            }
            return Ok(true);
        };
        let from = from.unwrap_or_default();
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
    pub fn finish(self, after: &Option<OAuth2>) -> Result<()> {
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
