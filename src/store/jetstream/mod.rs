//! The cluster backend of the store's seams, on a NATS JetStream cluster
//! (DESIGN.md "Cluster mode"; issue #15).
//!
//! The durability check a broker makes before it trusts the cluster
//! ([`preflight`]), the event log on one replicated stream ([`log`], read
//! back by [`read`]), each event the claim of its id ([`ids`]), and
//! [`ClusterLog`], which the store runs on with `backend = "jetstream"`:
//! it connects ([`ClusterOptions`]), checks, opens, follows the head and
//! orders queued appends. The state tables live in one bucket that every
//! broker copies ([`StateMirror`]); work one broker at a time does holds a
//! lease ([`Leases`]). Erasing an event deletes its message, overwritten
//! on every replica (`erase`); its tombstone lives in the state bucket
//! (`crate::store::cluster_erase`), and a copy of it on the id's subject
//! keeps the id claimed.
//!
//! Layout on the server:
//! - one stream per installation (`StreamConfig::stream`), R3 by default,
//!   file storage, atomic batch publish and direct gets allowed;
//! - one subject per event id under a prefix (`<subject_prefix>.<key>`,
//!   the id made subject-safe by [`encode_key`]), each event published
//!   only if its subject holds no message ([`ids`]);
//! - the offset of an event is its stream sequence (the first is 1, as
//!   [`crate::model::FIRST_OFFSET`]);
//! - each message carries the ordering key in [`wire::ORDERING_KEY`]; the
//!   payload is the same `EventRecord` bytes the embedded log stores, so one
//!   decoder reads both.
//! - key-value buckets beside it, named `<PREFIX>_<WHAT>` like the stream
//!   (R3, file storage, one revision per key); keys are the ids or names
//!   made key-safe by [`encode_key`].
//!
//! What each piece guarantees, and what it does not:
//! - [`EventStream`]: an event id gets one offset for as long as its
//!   message (or, once erased, its tombstone's copy) is kept, not only
//!   within a deduplication window; of concurrent appends of one id on any
//!   brokers, exactly one answers `duplicate = false`. The check is the
//!   stream leader's, at the write (`Nats-Expected-Last-Subject-Sequence`),
//!   for a single append and for each event of an atomic batch alike, so
//!   an append costs one replicated write whatever its size. Retention's
//!   purge frees the ids of the events it removes.
//! - [`Leases`] (bucket `<PREFIX>_LEASES`): at most one holder acquires a
//!   free lease; a holder that stops renewing loses it once the bucket's
//!   `max_age` (the TTL) removed its entry, and its next renewal says
//!   [`Renewal::Lost`]; every write's revision is a fencing token that
//!   grows. Not guaranteed: that a holder knows of its loss before another
//!   takes over: it must stop the guarded work at [`Lease::valid_until`]
//!   (its own clock) unless a renewal succeeded, and whatever the work
//!   writes should carry the revision where a store can check it.
//! - [`StateMirror`] (bucket `<PREFIX>_STATE`): every state table's
//!   records under `<table>.k<hex key>`; the mutations written together
//!   are one atomic batch, answered once stored and applied to this
//!   broker's copy (so a broker reads its own writes). Not guaranteed:
//!   that another broker's copy already holds a write answered a moment
//!   ago, or that a reader never sees half of a batch applied.
//! - Reads of buckets are direct gets that any replica answers, so a read
//!   may lag a write acknowledged a moment before; the decisions above are
//!   all taken by CAS writes at the stream's leader, never by a read.

mod bucket;
mod cluster;
mod connect;
mod erase;
mod error;
mod follow;
mod ids;
mod import;
pub mod lease;
pub mod log;
mod mirror;
pub mod preflight;
mod publish;
pub mod read;
mod wire;

pub use bucket::{decode_key, encode_key};
pub(super) use cluster::until_answered;
pub use cluster::{ClusterLog, Extent, Opened};
pub use connect::ClusterOptions;
pub use error::JetStreamError;
pub use import::prepare_import;
pub use lease::{Lease, LeaseConfig, Leases, Renewal};
pub use log::{EventStream, StreamConfig};
pub use mirror::MirrorConfig;
pub(super) use mirror::StateMirror;
pub use preflight::{check_durability, Durability, NodeDurability, PreflightError};
pub use wire::{decode_header, ORDERING_KEY};
