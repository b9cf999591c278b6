//! The cluster backend of the store's seams, on a NATS JetStream cluster
//! (DESIGN.md "Cluster mode"; issue #15).
//!
//! This is its foundation: the durability check a broker makes before it
//! trusts the cluster ([`preflight`]) and the event log on one replicated
//! stream ([`log`], read back by [`read`]). Nothing starts it yet: the
//! `backend` setting that selects it comes with the rest of the seams.
//!
//! Layout on the server:
//! - one stream per installation (`StreamConfig::stream`), R3 by default,
//!   file storage, atomic batch publish and direct gets allowed;
//! - one subject per event type under a prefix
//!   (`<subject_prefix>.<event type>`);
//! - the offset of an event is its stream sequence (the first is 1, as
//!   [`crate::model::FIRST_OFFSET`]);
//! - each message carries the event id in `Nats-Msg-Id` (the server's
//!   deduplication) and the ordering key in [`wire::ORDERING_KEY`]; the
//!   payload is the same `EventRecord` bytes the embedded log stores, so one
//!   decoder reads both.

mod error;
pub mod log;
pub mod preflight;
pub mod read;
mod wire;

pub use error::JetStreamError;
pub use log::{EventStream, StreamConfig};
pub use preflight::{check_durability, Durability, NodeDurability, PreflightError};
pub use wire::{decode_header, ORDERING_KEY, PROBE_SEQUENCE};
