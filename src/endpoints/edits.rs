//! What UpdateEndpoint changes besides the fields its mask names (those
//! are merged at the edge, `convert::endpoint::mask`): the custom header
//! edits by name.

use std::collections::HashMap;

use crate::error::{Error, Result};

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
