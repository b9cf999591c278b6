//! Webhook delivery: turning an endpoint's events into signed HTTP attempts.
//!
//! A webhook endpoint is a durable consumer (`crate::consumer`) whose client
//! is the delivery stack: the consumer keeps the endpoint's position and
//! hands events out and back; [`worker`] turns them into signed HTTP
//! attempts with per-key ordering and a durable retry schedule, sent
//! through the tower [`stack`]. The [`supervisor`] starts, restarts and
//! stops one worker per enabled endpoint; what to start and when is decided
//! by the endpoint manager, `crate::endpoints`. [`endpoint`] validates an
//! endpoint's settings and holds its stored record.

pub mod classify;
pub mod client_auth;
pub mod egress;
pub mod endpoint;
pub mod envelope;
pub mod event_cache;
pub mod limit;
pub mod oauth;
pub(crate) mod ops;
pub mod proxy;
pub mod request;
pub mod sealing;
pub mod signing;
pub mod stack;
pub mod stats;
pub mod supervisor;
pub mod worker;

pub use endpoint::endpoint_body;
pub use supervisor::{Control, DeliveryDeps};

pub use crate::model::endpoint::REDACTED;
