//! Retention: events older than `retention_age`, or the oldest tenth of the
//! log while the data directory is over `retention_max_bytes`, are removed;
//! the log deletes each segment file once every event in it is gone. In
//! cluster mode the primary broker does it (the stream is purged, and every
//! broker's copy follows); `retention_max_bytes` counts the stream's bytes.
//!
//! Nothing pending is dropped silently: before events go, every endpoint
//! that has not delivered them records them as dead with the reason
//! `expired` (events an endpoint's worker holds are recorded by the worker
//! when their turn comes). Delivered and superseded records of removed
//! events are pruned with them.
//!
//! Per tenant (`tenant_retention`, ages shorter than `retention_age`): the
//! tenant's events older than its age lose their payload the way
//! EraseTenant's do (a tombstone keeps id, type, tenant and publish time;
//! in cluster mode the primary does it, and the events' messages leave the
//! stream), after every endpoint that has not delivered
//! them recorded them as dead, `expired`. Other tenants' events of the
//! same age stay. Each tenant's pass scans only the offsets past its last
//! cutoff (kept in memory: the first pass after a start scans from the
//! log's first offset).

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    delivery::endpoint::consumer_name,
    endpoints::Endpoints,
    error::Result,
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        EventId, Offset,
    },
    store::{Removal, StateWrites, Store},
};

/// Runs retention every `retention_interval` until `shutdown`.
pub async fn run(
    store: Store,
    endpoints: Arc<Endpoints>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watermarks = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // In cluster mode the primary broker alone removes events; every
        // broker's copy follows.
        if !endpoints.is_primary() {
            continue;
        }
        match pass(&store, &endpoints, &config).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                first = store.first_offset().unwrap_or(Offset::ZERO).get(),
                "retention removed events"
            ),
            Err(e) => tracing::error!(error = %e, "retention failed"),
        }
        // An erasure cut short (a crash of the primary) is finished here.
        match store.finish_erasures().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(messages = n, "finished an earlier erasure"),
            Err(e) => tracing::error!(error = %e, "finishing an earlier erasure failed"),
        }
        match tenant_pass(&store, &endpoints, &config, &mut watermarks).await {
            Ok(0) => {}
            Ok(erased) => tracing::info!(erased, "tenant retention erased event payloads"),
            Err(e) => tracing::error!(error = %e, "tenant retention failed"),
        }
    }
}

/// One pass of per-tenant retention; returns how many events lost their
/// payload. `watermarks`: per tenant, the cutoff of its last pass (every
/// event of the tenant below it is erased already).
pub async fn tenant_pass(
    store: &Store,
    endpoints: &Endpoints,
    config: &Config,
    watermarks: &mut HashMap<String, Offset>,
) -> Result<u64> {
    let mut erased = 0;
    for (tenant, age) in &config.tenant_retention {
        let Some(t) = SystemTime::now().checked_sub(*age) else {
            continue;
        };
        let cutoff = store.local()?.offset_at_time(t)?;
        let from = watermarks
            .get(tenant)
            .copied()
            .unwrap_or(Offset::ZERO)
            .max(store.first_offset()?);
        if cutoff <= from {
            continue;
        }
        erased += endpoints
            .erase_events(tenant, from, cutoff, Removal::Expired)
            .await?;
        watermarks.insert(tenant.clone(), cutoff);
    }
    Ok(erased)
}

/// One retention pass; returns how many events were removed.
pub async fn pass(store: &Store, endpoints: &Endpoints, config: &Config) -> Result<usize> {
    let cutoff = cutoff(store, config)?;
    if cutoff <= store.first_offset()? {
        return Ok(0);
    }
    expire_before(store, endpoints, cutoff).await?;
    let removed = store.truncate(cutoff).await?;
    prune_records(store, endpoints, store.first_offset()?).await?;
    Ok(removed)
}

/// The first offset to keep.
fn cutoff(store: &Store, config: &Config) -> Result<Offset> {
    let by_age = match SystemTime::now().checked_sub(config.retention_age) {
        Some(t) => store.local()?.offset_at_time(t)?,
        None => Offset::ZERO,
    };
    let by_size =
        if config.retention_max_bytes > 0 && store.size_on_disk()? > config.retention_max_bytes {
            let (first, head) = (store.first_offset()?, store.head());
            first + (head - first).div_ceil(10)
        } else {
            Offset::ZERO
        };
    Ok(by_age.max(by_size))
}

/// Records every undelivered event below `cutoff` as dead (`expired`)
/// for each endpoint that has not delivered it, before retention
/// removes them. Events a worker holds are left to the worker.
pub async fn expire_before(store: &Store, endpoints: &Endpoints, cutoff: Offset) -> Result<()> {
    for id in endpoints.ids()? {
        let Ok(consumer) = endpoints.consumers().get(&consumer_name(&id)) else {
            continue;
        };
        if consumer.floor() >= cutoff {
            continue;
        }
        let filter = consumer.filter();
        let expired = consumer.expire_below(cutoff);
        for chunk in expired.chunks(4096) {
            let mut writes = StateWrites::new();
            for &offset in chunk {
                let Some(event) = store.local()?.get(offset)? else {
                    continue;
                };
                if !filter.matches(&event) {
                    continue;
                }
                let record = DeliveryRecord {
                    event_id: EventId::new(event.event.id.clone()),
                    event_type: event.event_type.to_string(),
                    state: DeliveryState::Dead,
                    last_error: "expired".into(),
                    ..Default::default()
                };
                writes.put_delivery(&id, offset, &record);
            }
            if !writes.is_empty() {
                let n = writes.len();
                store.write_state(writes).await?;
                endpoints.metrics().dead.add(id.as_str(), n as i64);
                endpoints
                    .metrics()
                    .deliveries
                    .add(&[id.as_str(), "expired"], n as u64);
                tracing::warn!(endpoint = %id, expired = n, "undelivered events expired");
            }
        }
        consumer.save().await?;
    }
    Ok(())
}

/// Deletes delivered and superseded records (with their attempts) of
/// events below `first`, the oldest event still in the log.
pub async fn prune_records(store: &Store, endpoints: &Endpoints, first: Offset) -> Result<()> {
    for id in endpoints.ids()? {
        store.deliveries().prune(&id, first).await?;
    }
    Ok(())
}
