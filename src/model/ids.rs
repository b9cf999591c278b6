//! [`EndpointId`] and [`EventId`]: the string ids of the domain as their
//! own types, so that one cannot be passed where the other (or another
//! string: a tenant, a consumer name) is meant.
//!
//! They are made from the wire's or the store's `String` at the edge
//! (`api/`, `convert/`, `console/`, `store/`), after the edge validated it,
//! and print as the bare string. The event id inside a `pb::Event` (the
//! domain event is the prost message, see `model.rs`) stays a `String`;
//! it becomes an [`EventId`] where it is recorded or looked up.

use std::{borrow::Borrow, fmt};

/// A string id newtype: `new`, `as_str`, `into_string`, `Display` as the
/// bare string, and `Borrow<str>` so that maps keyed by it are looked up
/// with a `&str`.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(String);

        /// As the string: messages that show an id with `{:?}` read as
        /// they did when it was a `String`.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            /// The id `id` (validated where it came in).
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as text (for keys, headers and the wire).
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned `String` (for the wire).
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// An endpoint's id, as the broker gave it out at creation.
    EndpointId
);

string_id!(
    /// An event's id, as its producer set it (the key of idempotent
    /// publishing).
    EventId
);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{EndpointId, EventId};

    #[test]
    fn prints_and_converts_as_the_bare_string() {
        let id = EndpointId::new("ep_01J");
        assert_eq!(id.to_string(), "ep_01J");
        assert_eq!(format!("{id:>8}"), "  ep_01J");
        assert_eq!(id.as_str(), "ep_01J");
        assert_eq!(format!("{id:?}"), "\"ep_01J\"");
        assert_eq!(EventId::new("e-1".to_owned()).into_string(), "e-1");
        assert_eq!(format!("{:?}", EventId::new("café")), "\"café\"");
        assert!(id == *"ep_01J" && id == "ep_01J");
    }

    #[test]
    fn orders_like_the_strings_and_looks_up_by_str() {
        let mut ids = [
            EndpointId::new("b"),
            EndpointId::new("a"),
            EndpointId::new("ab"),
        ];
        ids.sort();
        assert_eq!(ids.map(EndpointId::into_string), ["a", "ab", "b"]);
        let map: HashMap<EndpointId, u32> = [(EndpointId::new("x"), 1)].into();
        assert_eq!(map.get("x"), Some(&1));
        assert_eq!(map.get("y"), None);
    }
}
