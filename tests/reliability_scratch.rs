//! Scratch harness for tests/it/reliability.rs and tests/it/faults.rs (deleted when done).
#![allow(dead_code)]

#[path = "it/crash.rs"]
mod crash;
#[path = "it/crash_delivery.rs"]
mod crash_delivery;
#[path = "it/receiver.rs"]
mod receiver;
#[path = "it/reliability.rs"]
mod reliability;


use std::{path::PathBuf, sync::Arc, time::Duration};

use stevedore::{
    config::Config,
    pb::{
        self, admin_client::AdminClient, event::Payload, publisher_client::PublisherClient,
        subscriber_client::SubscriberClient,
    },
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A broker running in this process.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A broker on a fresh data directory with test-friendly defaults.
    pub async fn start() -> Self {
        Self::start_with(Arc::new(tempfile::tempdir().unwrap()), |_| {}).await
    }

    /// A broker on `dir`, with `tweak` applied to its config.
    pub async fn start_with(dir: Arc<tempfile::TempDir>, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: dir.path().join("data"),
            sled_cache_bytes: 8 * 1024 * 1024,
            // Receivers are local http:// servers, on loopback, which the
            // SSRF guard blocks unless allowed (tests/it/egress.rs turns
            // this off).
            allow_http: true,
            // Tests run many brokers at once; the metrics test binds its own.
            metrics_listen: None,
            allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(stevedore::run(config.clone(), listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            dir,
            config,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops gracefully and waits until the database is closed.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.shutdown().await;
        self.dir.clone()
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("graceful shutdown finished in time")
                .unwrap()
                .unwrap();
        }
    }

    /// Stops and starts again on the same data directory and config.
    pub async fn restart(self) -> Self {
        let config = self.config.clone();
        let dir = self.stop().await;
        Self::start_with(dir, |c| *c = config).await
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn publisher(&self) -> PublisherClient<Channel> {
        PublisherClient::new(self.channel().await)
    }

    pub async fn subscriber(&self) -> SubscriberClient<Channel> {
        SubscriberClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A pick confirmation with the given id (empty: broker-assigned).
pub fn pick(id: &str, order: &str) -> pb::Event {
    pb::Event {
        id: id.into(),
        payload: Some(Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "TENANT001".into(),
            sales_order_id: order.into(),
            status: pb::PickStatus::Complete as i32,
            total_qty: Some(5.0),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An inventory update with the given id.
pub fn inventory(id: &str, product: &str, available: f64) -> pb::Event {
    pb::Event {
        id: id.into(),
        payload: Some(Payload::InventoryUpdated(pb::InventoryUpdated {
            tenant_id: "TENANT001".into(),
            fulfillment_center_id: "FC1".into(),
            product: product.into(),
            quantity_available: Some(available),
            reason: pb::InventoryReason::Adjustment as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Publishes one event and returns its offset.
pub async fn publish(client: &mut PublisherClient<Channel>, event: pb::Event) -> u64 {
    client
        .publish(pb::PublishRequest { event: Some(event) })
        .await
        .unwrap()
        .into_inner()
        .offset
}

/// The next message of a stream, failing the test after `secs`.
pub async fn next_within(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    secs: u64,
) -> pb::SubscribeResponse {
    tokio::time::timeout(Duration::from_secs(secs), stream.message())
        .await
        .expect("a message in time")
        .expect("stream ok")
        .expect("stream not ended")
}

/// Asserts that no message arrives for `ms` milliseconds.
pub async fn assert_quiet(stream: &mut tonic::Streaming<pb::SubscribeResponse>, ms: u64) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(ms), stream.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// Asserts a status code and that the message names `field`.
pub fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(field),
        "message {:?} should name {field}",
        status.message()
    );
}

pub fn data_path(server: &TestServer) -> PathBuf {
    server.config.data_dir.clone()
}
