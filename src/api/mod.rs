//! gRPC services, one file each, and `frame.rs`: how Subscribe writes its
//! responses around stored event bytes. Only this module and `convert.rs`
//! see request and response types.

mod admin;
mod frame;
mod publish;
mod subscribe;

pub use admin::AdminService;
pub use frame::{FrameEncoder, StoredFrame, SubscribeCodec, SubscribeFrame};
pub use publish::PublisherService;
pub use subscribe::SubscriberService;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Config, consumer::Consumers, error::Error, metrics::Metrics, store::Store};

/// What every service shares.
#[derive(Clone)]
pub struct Shared {
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
    /// One permit per open Subscribe or PublishStream stream
    /// (`max_streams`).
    pub streams: Arc<Semaphore>,
}

impl Shared {
    /// A slot for one long-lived stream, held until the stream's tasks end;
    /// `RESOURCE_EXHAUSTED` naming `max_streams` when all are taken.
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "the broker already serves max_streams ({}) Subscribe and PublishStream \
                 streams; retry later",
                self.config.max_streams
            ))
        })
    }
}
