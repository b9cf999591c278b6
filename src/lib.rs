//! stevedore: a gRPC event broker for warehouse and commerce webhooks.
//!
//! Internal services publish typed protobuf events; the broker appends them
//! to a durable, embedded segment log (group-committed and fsync'd before the
//! publish is acknowledged) and fans them out to streaming gRPC subscribers
//! and durable consumers.
//!
//! # Layout
//!
//! - `main.rs` — thin: parse config, init tracing, bind, call [`run`].
//! - `server.rs` — [`serve`]: the broker assembled (store, delivery,
//!   retention, metrics, console, the gRPC server and its layers) and its
//!   shutdown in order.
//! - [`config`] — typed configuration, every default in one place.
//! - [`error`] — the crate error and its one mapping to `tonic::Status`.
//! - [`pb`] — generated protobuf and gRPC code only.
//! - [`convert`] — the edge between protobuf and the domain: validation of
//!   wire input into domain types (events, endpoints, UpdateEndpoint's
//!   field mask) and domain types as the API shows them.
//! - [`model`] — domain types: the newtypes `Offset`, `EventId` and
//!   `EndpointId` (made from the wire's numbers and strings at the edge),
//!   event types, stored events, the webhook endpoint, delivery and audit
//!   records, the broker's own events, and the rule that gives an event its
//!   tenant.
//! - [`store`] — events in the segment log (`store/log`) with its id
//!   index; beside it, sled keeps only state, behind typed stores
//!   (endpoints, deliveries, consumers, audit); the writer
//!   threads that group-commit and fsync; erasure of events' payloads
//!   (tombstones written by rewriting sealed segments). With `backend =
//!   "jetstream"` the events live on a NATS JetStream cluster instead
//!   (`store/jetstream`), behind the same `Store`.
//! - [`consumer`] — durable consumers: cursors, leases, redelivery.
//! - [`endpoints`] — webhook endpoints: create, update, delete, rotate,
//!   replay, test over the typed state; admin queries over their
//!   deliveries; acting on their workers' reports; tenant erasure.
//! - [`delivery`] — webhook delivery: the supervisor that runs one worker
//!   per enabled endpoint on top of its durable consumer; the tower stack
//!   that signs, times out and retries; classification of outcomes; the
//!   durable retry schedule; the SSRF guard on egress; endpoint settings
//!   and their secrets sealed at rest.
//! - [`webhook`] — webhook JSON bodies, one file per event type behind one
//!   dispatch point ([`webhook::render_body`]).
//! - [`filter`] — custom webhooks: filters and field selection on JSON bodies.
//! - [`retention`] — removes old events; expires what was never delivered;
//!   erases listed tenants' payloads sooner (`tenant_retention`).
//! - [`metrics`] — Prometheus counters, histograms and scrape-time gauges.
//! - [`api`] — one file per gRPC service; the Subscribe server generated
//!   with its own codec, which writes stored event bytes into responses.
//! - [`auth`] — bearer tokens and roles: one interceptor per service.
//! - [`tenant`] — tenants: an event's, endpoint's and consumer's tenant,
//!   and the one `Scope` (from the caller's token) every lookup goes through.
//! - [`audit`] — the audit trail of admin changes.
//! - [`tls`] — the gRPC listener's rustls configuration.
//! - [`console`] — the webhook maintenance page: axum + askama on its own
//!   listener, calling the Admin service in-process.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod consumer;
pub mod convert;
pub mod delivery;
pub mod endpoints;
pub mod error;
pub mod filter;
pub mod metrics;
pub mod model;
pub mod pb;
pub mod retention;
mod server;
pub mod store;
pub mod suggest;
pub mod tenant;
pub mod tls;
pub mod token_bucket;
pub mod webhook;

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
pub use crate::server::{serve, Listeners, Started};

/// Runs the broker on `listener` until `shutdown` completes, then shuts down
/// gracefully: health goes NOT_SERVING, new calls are refused, streams end,
/// in-flight commits finish, and the store is closed before returning.
///
/// Metrics are served on `config.metrics_listen` when it is set; use
/// [`run_with_metrics`] to pass a bound metrics listener instead.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?,
        ),
        None => None,
    };
    run_with_metrics(config, listener, metrics_listener, shutdown).await
}

/// Makes every file and directory the process creates from now on private
/// to its user (umask 077): the data directory holds endpoint secrets, in
/// the clear without a master key. Process-wide, and set before the store
/// is opened, so the state store's files and the log's segments are all covered.
pub fn private_files() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Offline (the broker stopped): seals every endpoint secret still stored
/// in the clear with the configured master key, and rewrites the state
/// store into fresh files, so that no file under the data directory keeps
/// an old plaintext copy (see `store::rewrite_endpoints`). Returns how many
/// records were sealed and how many entries were copied.
pub fn reseal(config: &Config) -> anyhow::Result<(u64, u64)> {
    private_files();
    let key = config.master_key.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "config key `master_key_file`: reseal needs the master key (master_key_file or \
             STEVEDORE_MASTER_KEY)"
        )
    })?;
    if !config.data_dir.join("db").exists() {
        anyhow::bail!(
            "config key `data_dir`: {} holds no state store",
            config.data_dir.display()
        );
    }
    let done = store::rewrite_endpoints(&config.data_dir, config.state_cache_bytes, |value| {
        delivery::endpoint::reseal_value(value, key)
    })
    .with_context(|| {
        format!(
            "resealing the state in {} (the broker must be stopped)",
            config.data_dir.display()
        )
    })?;
    Ok((done.changed, done.entries))
}

/// Offline (the embedded broker stopped): copies the data directory into
/// the empty cluster installation the config names, keeping offsets (see
/// `store::migrate`). `stevedore migrate` prints what it returns.
pub async fn migrate(config: &Config) -> anyhow::Result<store::Migrated> {
    private_files();
    let options = store::jetstream::ClusterOptions::from_config(config).ok_or_else(|| {
        anyhow::anyhow!(
            "config key `backend`: migrate copies into a cluster: set backend = \"jetstream\" \
             and nats_url (STEVEDORE_BACKEND, STEVEDORE_NATS_URL) as for the cluster's brokers"
        )
    })?;
    let store_config = store::StoreConfig::from_config(config, Default::default());
    store::migrate(&store_config, &options)
        .await
        .with_context(|| {
            format!(
                "migrating {} into the NATS cluster (nats_prefix {:?})",
                config.data_dir.display(),
                options.prefix
            )
        })
}

/// [`run`] with the metrics listener (if any) already bound.
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_and_report(config, listener, metrics_listener, shutdown, || {}).await
}

/// [`run_with_metrics`], calling `ready` once the data directory is open,
/// the TLS files and master key are loaded and the services are about to
/// serve: the binary prints its `listening on` line there, so nothing is
/// announced that then fails to start. The console listens on
/// `config.console_listen` when set; [`serve`] takes it bound.
pub async fn run_and_report(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let console = bind_console(&config).await?;
    let listeners = Listeners {
        grpc: listener,
        metrics: metrics_listener,
        console,
    };
    serve(config, listeners, shutdown, |_| ready()).await
}

/// Binds `config.console_listen`, if set.
pub async fn bind_console(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    match config.console_listen {
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("binding console_listen {addr}")
            })?))
        }
        None => Ok(None),
    }
}
