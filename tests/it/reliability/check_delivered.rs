//! The wait until every acknowledged event has reached every endpoint whose
//! filter matches it and is listed as delivered there; broker stops, by
//! which a copy re-sent after a 2xx answer is judged.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use stevedore::pb::{self, admin_client::AdminClient, DeliveryState};
use tonic::transport::Channel;

use super::{
    answers::Mixer,
    endpoints::{Ep, EpSpec},
    events::parse_id,
    DRAIN_TIMEOUT,
};
use crate::support::{attempts_within, connect, count_by_state, list_deliveries, Recorded};

/// A broker stop: when it was signalled, and when the next broker had
/// printed its address (nothing it sends can arrive before that; it starts
/// `RESTART_PAUSE` after the stop, which leaves the stopped broker's last
/// requests time to arrive).
#[derive(Clone, Copy)]
pub(super) struct Stop {
    pub(super) at: Instant,
    pub(super) next_ready: Instant,
}

impl Stop {
    /// Whether this stop lies between two copies of a request: the first
    /// arrived before the next broker existed, the second after the stop.
    pub(super) fn between(&self, first: &Recorded, second: &Recorded) -> bool {
        first.received_at <= self.next_ready && second.received_at >= self.at
    }
}

/// Waits until every acknowledged event has reached, with a 2xx answer,
/// every endpoint whose filter matches it, then until `ListDeliveries`
/// lists it as delivered there. Returns the time it took.
pub(super) async fn wait_delivered(
    addr: &str,
    eps: &[Ep],
    healthy: &Mixer,
    flaky: &Mixer,
    acked: &HashMap<String, u64>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + DRAIN_TIMEOUT;
    let expected = |spec: &EpSpec| -> HashMap<&str, u64> {
        acked
            .iter()
            .filter(|(id, _)| parse_id(id).is_some_and(|(_, seq)| spec.matches(seq)))
            .map(|(id, &o)| (id.as_str(), o))
            .collect()
    };
    let mut admin = AdminClient::new(connect(addr).await?);
    // 1. The receivers saw them, answered with success.
    loop {
        let mut missing = Vec::new();
        for m in [healthy, flaky] {
            let requests = m.rx.requests();
            let answers = m.answers();
            for ep in eps.iter().filter(|e| e.spec.flaky == m.flaky) {
                let path = ep.spec.path();
                let got: HashSet<&str> = requests
                    .iter()
                    .zip(&answers)
                    .filter(|(r, a)| r.path == path && a.is_none_or(|a| a.success()))
                    .filter_map(|(r, _)| r.header("webhook-id"))
                    .collect();
                let mut lost: Vec<(u64, &str)> = expected(ep.spec)
                    .into_iter()
                    .filter(|(id, _)| !got.contains(id))
                    .map(|(id, o)| (o, id))
                    .collect();
                if !lost.is_empty() {
                    lost.sort();
                    missing.push(format!(
                        "endpoint {} ({}): {} missing, lowest {:?}\n{}",
                        ep.spec.name,
                        ep.id,
                        lost.len(),
                        &lost[..lost.len().min(10)],
                        explain(&mut admin, ep, &lost).await
                    ));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "LOST DELIVERIES: {DRAIN_TIMEOUT:?} after the load stopped, acknowledged events \
                 had not reached a matching endpoint ({} acknowledged):\n{}",
                acked.len(),
                missing.join("")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 2. The broker says so too.
    for ep in eps {
        let want = expected(ep.spec);
        loop {
            let delivered = list_deliveries(&mut admin, &ep.id, DeliveryState::Delivered).await?;
            let listed: HashMap<u64, &str> = delivered
                .iter()
                .map(|d| (d.offset, d.event_id.as_str()))
                .collect();
            let mut missing: Vec<(u64, &str)> = want
                .iter()
                .filter(|(_, o)| !listed.contains_key(o))
                .map(|(id, &o)| (o, *id))
                .collect();
            if let Some((o, id)) = want
                .iter()
                .map(|(id, &o)| (o, *id))
                .find(|(o, id)| listed.get(o).is_some_and(|l| l != id))
            {
                return Err(format!(
                    "endpoint {}: ListDeliveries lists offset {o} as {:?}, acknowledged as {id:?}",
                    ep.spec.name, listed[&o]
                ));
            }
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                missing.sort();
                return Err(format!(
                    "endpoint {} ({}): the receiver answered every acknowledged event with a 2xx, \
                     but ListDeliveries(DELIVERED) still lacks {} of them, lowest {:?}\n{}",
                    ep.spec.name,
                    ep.id,
                    missing.len(),
                    &missing[..missing.len().min(10)],
                    explain(&mut admin, ep, &missing).await
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(started.elapsed())
}

/// What the broker says about some deliveries (for a failure message).
pub(super) async fn explain(
    admin: &mut AdminClient<Channel>,
    ep: &Ep,
    missing: &[(u64, &str)],
) -> String {
    let all = match list_deliveries(admin, &ep.id, DeliveryState::Unspecified).await {
        Ok(d) => d,
        Err(e) => return format!("    (ListDeliveries failed: {e})\n"),
    };
    let by_offset: HashMap<u64, &pb::Delivery> = all.iter().map(|d| (d.offset, d)).collect();
    let states = count_by_state(&all);
    let mut out = format!("    delivery records by state: {states:?}\n");
    for (offset, id) in missing.iter().take(3) {
        let attempts = attempts_within(admin, &ep.id, *offset).await;
        out.push_str(&format!(
            "    offset {offset} ({id}): record {:?}; attempts {attempts:?}\n",
            by_offset.get(offset)
        ));
    }
    out
}
