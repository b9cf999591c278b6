//! The broker assembled: [`serve`] opens the store, starts webhook
//! delivery, retention, metrics and the console, serves gRPC behind the
//! intake and auth layers, and shuts it all down in order.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Server;

use crate::{
    api::{
        self, AdminService, PublisherService, ServiceContext, SubscriberServer, SubscriberService,
    },
    auth::{Auth, Role},
    config::Config,
    console,
    consumer::Consumers,
    delivery::DeliveryDeps,
    endpoints::Endpoints,
    metrics,
    pb::{self, admin_server::AdminServer, publisher_server::PublisherServer},
    private_files, retention,
    store::{self, jetstream::ClusterOptions, Store, StoreConfig},
    tenant, tls,
};

/// The broker's listeners, bound by the caller (port 0 picks a port).
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Prometheus metrics, if served.
    pub metrics: Option<TcpListener>,
    /// The console, if served.
    pub console: Option<TcpListener>,
}

/// What [`serve`] tells its `ready` hook.
#[derive(Debug, Clone)]
pub struct Started {
    /// The console's URL (`http://addr` or `https://addr`), if served.
    pub console_url: Option<String>,
    /// With authentication off: the console's one-time login path
    /// (`/login/once?t=...`), to print; it works once.
    pub console_login: Option<String>,
}

/// Runs the broker on `listeners` until `shutdown` (see [`crate::run`]), calling
/// `ready` when it is about to serve.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&Started) + Send,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
        console: console_listener,
    } = listeners;
    private_files();
    let metrics = Arc::new(metrics::Metrics::default());
    let stall_on = !config.stall_threshold.is_zero();
    metrics
        .stall
        .set_threshold(stall_on.then_some(config.stall_threshold));
    let addr = listener.local_addr()?;
    // Checked here too, not only at config load: `run` may be handed any
    // listener.
    config.check_listen(addr)?;
    let auth = Auth::new(&config.tokens);
    let tls = tls::server_config(&config)?;
    crate::api::forward::configure(tls::peer_client_config(&config)?);
    if !auth.enabled() {
        tracing::warn!(%addr, "authentication is off: no tokens configured; serving loopback only");
    } else if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "TLS is off: bearer tokens cross the network in plaintext unless a proxy \
             terminates TLS in front of the broker (set tls_cert and tls_key)"
        );
    }

    log_egress_policy(&config);

    let store_config = StoreConfig::from_config(&config, metrics.clone());
    let (store, writer) = match ClusterOptions::from_config(&config) {
        Some(cluster) => Store::open_cluster(&cluster, &store_config)
            .await
            .context("opening the store on the NATS cluster (backend = \"jetstream\")")?,
        None => Store::open(&store_config)
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?,
    };
    let cluster = store.is_cluster();
    if cluster {
        tracing::info!(
            "cluster mode (backend = jetstream): webhook delivery is shared between the \
             brokers (each endpoint delivered by one); named durable consumers, retention, \
             tenant_retention and tenant erasure run on the primary broker; every other call \
             runs on any broker"
        );
    }

    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let shared = ServiceContext {
        consumers: Arc::new(Consumers::new(store.clone())),
        store,
        config: Arc::new(config.clone()),
        shutdown: token.clone(),
        tasks: tasks.clone(),
        metrics: metrics.clone(),
        subscribe_streams: Arc::new(Semaphore::new(config.max_subscribe_streams)),
        publish_streams: Arc::new(Semaphore::new(config.max_publish_streams)),
        tenant_rates: Arc::new(tenant::PublishRates::new(
            config.tenant_publish_rate,
            config.tenant_publish_burst,
        )),
    };

    let endpoints = Endpoints::start(DeliveryDeps {
        store: shared.store.clone(),
        consumers: shared.consumers.clone(),
        config: shared.config.clone(),
        tasks: tasks.clone(),
        shutdown: token.clone(),
        metrics: metrics.clone(),
        tls: Arc::new(tls::webhook_client_config(&config)?),
        broker: config.advertise_url.clone().unwrap_or_else(|| {
            format!("{}://{addr}", if tls.is_some() { "https" } else { "http" })
        }),
    })
    .await
    .context("starting webhook delivery")?;
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "serving metrics");
        let (store, consumers, endpoints) = (
            shared.store.clone(),
            shared.consumers.clone(),
            endpoints.clone(),
        );
        let snapshot = move || {
            let head = store.head();
            let (endpoints, consumers) = (endpoints.endpoint_gauges()?, consumers.lags(head)?);
            Ok(metrics::Snapshot {
                head: head.get(),
                first: store.first_offset()?.get(),

                disk_bytes: store.size_on_disk()?,
                endpoints,
                consumers,
            })
        };
        tasks.spawn(metrics::serve(
            listener,
            metrics.clone(),
            snapshot,
            token.clone(),
        ));
    }
    if stall_on {
        let stop = token.clone();
        tasks.spawn(metrics::stall::probe_runtime(metrics.clone(), async move {
            stop.cancelled().await
        }));
    }
    tasks.spawn(retention::run(
        shared.store.clone(),
        endpoints.clone(),
        shared.config.clone(),
        token.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PublisherServer<PublisherService>>()
        .await;
    health
        .set_serving::<SubscriberServer<SubscriberService>>()
        .await;
    health.set_serving::<AdminServer<AdminService>>().await;
    tasks.spawn(report_store_health(
        shared.store.watch_health(),
        health.clone(),
        token.clone(),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max = config.max_request_bytes;
    let publisher =
        PublisherServer::new(PublisherService::new(shared.clone())).max_decoding_message_size(max);
    let subscriber = SubscriberServer::new(SubscriberService::new(shared.clone()))
        .max_decoding_message_size(max);

    let admin_service = Arc::new(
        AdminService::new(
            endpoints.clone(),
            shared.consumers.clone(),
            shared.store.clone(),
        )
        .publishing_audit_events(config.audit_events),
    );
    let admin = AdminServer::from_arc(admin_service.clone()).max_decoding_message_size(max);

    let mut started = Started {
        console_url: None,
        console_login: None,
    };
    if let Some(console_listener) = console_listener {
        let console_addr = console_listener.local_addr()?;
        config.check_console_listen(console_addr)?;
        let console_tls = console::tls_config(&config)?;
        let console = Arc::new(console::Console::new(
            admin_service.clone(),
            endpoints.clone(),
            shared.store.clone(),
            auth.clone(),
            console_tls.is_some(),
            token.clone(),
            config.auto_disable_after,
        ));
        let url = console::url(console_addr, console_tls.is_some());
        tracing::info!(addr = %console_addr, tls = console_tls.is_some(), "serving the console");
        started.console_login = console.one_time_login();
        started.console_url = Some(url);
        tasks.spawn(console::serve(
            console_listener,
            console::router(console),
            console_tls,
            token.clone(),
        ));
    }

    tracing::info!(%addr, tls = tls.is_some(), auth = auth.enabled(), "serving gRPC");
    ready(&started);

    let stopping = {
        let token = token.clone();
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown started");
            health
                .set_not_serving::<PublisherServer<PublisherService>>()
                .await;
            health
                .set_not_serving::<SubscriberServer<SubscriberService>>()
                .await;
            health.set_not_serving::<AdminServer<AdminService>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            // Ends every stream, so the server's graceful drain can finish.
            token.cancel();
        }
    };

    // Every request passes the intake first: its size, the in-flight
    // budget and the decode budget are checked before tonic decodes it.
    let intake = api::intake::Intake::new(&config, metrics.clone())
        .context("reading the request schemas")?;
    let mut server = Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_max_header_list_size(config.max_metadata_bytes)
        // Counts each connection's calls, for its idle timeout.
        .layer(api::conn::ConnLayer)
        .layer(api::intake::IntakeLayer::new(intake));
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .context("config keys `tls_cert`/`tls_key`: not a usable certificate and key")?;
    }
    // Health and reflection stay open; each broker service names the role it
    // needs (admin passes everywhere).
    let served = server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth.guard(Role::Publisher, publisher))
        .add_service(auth.guard(Role::Subscriber, subscriber))
        .add_service(auth.guard(Role::Admin, admin))
        // Connections under `max_connections`, with handshake and idle
        // timeouts, and TCP_NODELAY: `serve_with_incoming` ignores the
        // builder's, and without it a small response waits for the
        // client's delayed ACK, which shows as tail latency on every unary
        // call (BENCHMARKS.md, "Notes moved from code").
        .serve_with_incoming_shutdown(
            api::conn::incoming(listener, &config, metrics.clone()),
            stopping,
        );
    // Graceful shutdown waits for every open call. The broker's own streams
    // end when `token` is cancelled, but a client's health Watch (or a
    // reflection stream) never ends by itself: after a short grace the
    // remaining connections are dropped.
    let straggler_grace = (config.shutdown_timeout / 4).min(std::time::Duration::from_secs(2));
    tokio::pin!(served);
    let served = tokio::select! {
        r = &mut served => r,
        () = async {
            token.cancelled().await;
            tokio::time::sleep(straggler_grace).await;
        } => {
            tracing::info!("closing connections still open after the shutdown grace");
            Ok(())
        }
    };
    // Also on a serve error: stop streams before waiting for them.
    token.cancel();
    tasks.close();
    tasks.wait().await;
    // Connections dropped after the grace may still hold handles: close the
    // store explicitly rather than waiting for the last handle to go.
    shared.store.close();
    drop(shared);
    // Every Store handle is gone: the writers commit what is queued, close
    // the state store and exit.
    tokio::task::spawn_blocking(move || writer.join()).await?;
    tracing::info!("shutdown complete");
    served.context("gRPC server failed")
}

/// Says at start which egress relaxations are on: both let webhooks reach
/// what the SSRF guard would otherwise refuse.
fn log_egress_policy(config: &Config) {
    if config.allow_http {
        tracing::warn!("allow_http is on: endpoints may use plaintext http:// URLs");
    }
    if config.allow_networks.is_empty() {
        tracing::info!(
            "allow_networks is empty: webhooks reach public addresses only \
             (no loopback, private, link-local or other special-purpose ranges)"
        );
    } else {
        let networks: Vec<String> = config
            .allow_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        tracing::warn!(
            networks = %networks.join(", "),
            "allow_networks is set: webhooks may reach these otherwise refused ranges"
        );
    }
}

/// Sets every service NOT_SERVING while the store cannot take writes (a
/// poisoned event log until a restart; failing state writes until one
/// succeeds), and SERVING again once it can.
async fn report_store_health(
    mut store: tokio::sync::watch::Receiver<store::StoreHealth>,
    health: tonic_health::server::HealthReporter,
    token: CancellationToken,
) {
    use tonic_health::ServingStatus;
    loop {
        let problem = store.borrow_and_update().problem().map(str::to_owned);
        // Shutdown owns the status from its start.
        if token.is_cancelled() {
            return;
        }
        let status = match &problem {
            Some(why) => {
                tracing::error!(error = %why, "storage cannot take writes: health is NOT_SERVING");
                ServingStatus::NotServing
            }
            None => ServingStatus::Serving,
        };
        for name in [
            "",
            <PublisherServer<PublisherService> as tonic::server::NamedService>::NAME,
            <SubscriberServer<SubscriberService> as tonic::server::NamedService>::NAME,
            <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
        ] {
            health.set_service_status(name, status).await;
        }
        tokio::select! {
            changed = store.changed() => if changed.is_err() { return },
            () = token.cancelled() => return,
        }
    }
}
