//! gRPC services, one file each, and `frame.rs`: how Subscribe writes its
//! responses around stored event bytes. Only this module and `convert.rs`
//! see request and response types. In front of the services: `intake.rs`
//! bounds request memory before anything is decoded, `conn.rs` caps
//! connections and closes silent and idle ones.

mod admin;
pub mod conn;
pub(crate) mod forward;
mod frame;
pub mod intake;
mod publish;
mod subscribe;

pub use admin::AdminService;
pub use frame::{FrameEncoder, StoredFrame, SubscribeCodec, SubscribeFrame};
pub use publish::PublisherService;
pub use subscribe::{SubscriberServer, SubscriberService};

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Config, consumer::Consumers, error::Error, metrics::Metrics, store::Store};

/// What every gRPC service shares: the store, the consumers, the
/// configuration, shutdown, metrics and the stream budgets.
#[derive(Clone)]
pub struct ServiceContext {
    /// The log.
    pub store: Store,
    /// Durable consumers.
    pub consumers: Arc<Consumers>,
    /// The broker's configuration.
    pub config: Arc<Config>,
    /// Cancelled when shutdown starts: streams end, new work is refused.
    pub shutdown: CancellationToken,
    /// Tracks stream tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// One permit per open Subscribe stream (`max_subscribe_streams`).
    pub subscribe_streams: Arc<Semaphore>,
    /// One permit per open PublishStream stream (`max_publish_streams`).
    pub publish_streams: Arc<Semaphore>,
    /// `tenant_publish_rate`'s buckets.
    pub tenant_rates: Arc<crate::tenant::PublishRates>,
}

/// Which budget a long-lived stream takes its slot from: each role has its
/// own, so subscribers cannot starve publishers (or the reverse).
#[derive(Debug, Clone, Copy)]
pub enum StreamKind {
    /// `Subscribe`.
    Subscribe,
    /// `PublishStream`.
    Publish,
}

impl ServiceContext {
    /// A slot for one long-lived stream of `kind`, held until the stream's
    /// tasks end; `RESOURCE_EXHAUSTED` naming the budget's key when all are
    /// taken.
    pub fn stream_slot(&self, kind: StreamKind) -> Result<OwnedSemaphorePermit, Error> {
        let (budget, key, max, what) = match kind {
            StreamKind::Subscribe => (
                &self.subscribe_streams,
                "max_subscribe_streams",
                self.config.max_subscribe_streams,
                "Subscribe",
            ),
            StreamKind::Publish => (
                &self.publish_streams,
                "max_publish_streams",
                self.config.max_publish_streams,
                "PublishStream",
            ),
        };
        budget.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "the broker already serves {key} ({max}) {what} streams; retry later"
            ))
        })
    }
}
