//! Webhook delivery shared between the brokers in cluster mode.
//!
//! The endpoints fall into [`DELIVERY_SHARDS`] shards by a fixed hash of
//! their id ([`delivery_shard`]). A shard is delivered by the holder of its
//! lease (`delivery-<n>`, in the leases bucket, lasting
//! [`LEASE_TTL`](crate::store::LEASE_TTL) past its last renewal), so each
//! endpoint is delivered by one broker at a time. Every broker also holds a
//! member lease of its own, so the brokers can count each other.
//!
//! Every [`TICK`] each broker lists the leases and takes its share: free
//! shards up to `ceil(shards / members)`, and any shard that stayed free
//! for [`FREE_GRACE`] (its holder died, nobody else took it); a broker
//! holding more than its share while none is free gives the excess up, so
//! a broker that joins gets its share within a few ticks. Holders renew
//! every [`RENEW_EVERY`], stop a shard's workers as soon as a renewal says
//! its lease is lost or its validity on their own clock is about to run
//! out, and give their leases up at shutdown. When a broker dies, the
//! others take its shards once the leases expired on the cluster: within
//! about `LEASE_TTL` plus a few seconds.
//!
//! Every [`TICK`] each broker also looks at the endpoint records
//! (`super::following`) and starts, restarts or stops the workers of its
//! shards' endpoints. A worker that starts (after a takeover, or a
//! change) reads its consumer's position and its delivery records from the
//! state, as a worker does at a broker's start: what was in flight on a
//! holder that died is sent again, with the same `webhook-id`. A holder
//! that gives shards up lets its workers' attempts on the wire finish and
//! be recorded first (`Supervisor::hand_over`), and a broker that takes
//! shards waits until its copy of the state holds every write stored so
//! far (`Store::state_caught_up`) before it starts their workers: a shard
//! that moves between live brokers sends nothing twice.
//!
//! Calls that move an endpoint's consumer (replay, retry, recover, resend)
//! run on the endpoint's deliverer only; another broker forwards them
//! (`crate::api::admin`) or answers `FAILED_PRECONDITION` naming it
//! (`Endpoints::require_delivering`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use super::Endpoints;
use crate::{
    model::EndpointId,
    store::{
        delivery_lease, delivery_shard, is_member_lease,
        jetstream::{Lease, Leases, Renewal},
        member_lease, shard_of_lease, DELIVERY_SHARDS,
    },
};

/// How often a broker looks at the leases and the endpoint records.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// How often a holder renews its leases.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long a shard stays free before a broker takes it beyond its share.
const FREE_GRACE: Duration = Duration::from_secs(3);

/// What a broker does with the shards at one look at the leases.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Held beyond the share while none is free: give these up.
    release: Vec<u32>,
    /// Free: ask for these.
    acquire: Vec<u32>,
}

/// The plan of a broker holding `held`, when the leases name `taken`
/// shards held (by anyone) and `members` brokers; `stale` are the free
/// shards that have been free for [`FREE_GRACE`]. Free shards are looked
/// at from `start` on, so brokers joining together ask for different ones.
fn plan(
    held: &BTreeSet<u32>,
    taken: &BTreeSet<u32>,
    stale: &BTreeSet<u32>,
    members: usize,
    start: u32,
) -> Plan {
    let share = DELIVERY_SHARDS.div_ceil(members.max(1) as u32) as usize;
    let free: Vec<u32> = (0..DELIVERY_SHARDS)
        .map(|i| (start + i) % DELIVERY_SHARDS)
        .filter(|s| !taken.contains(s) && !held.contains(s))
        .collect();
    if free.is_empty() {
        return Plan {
            release: held
                .iter()
                .rev()
                .take(held.len().saturating_sub(share))
                .copied()
                .collect(),
            acquire: Vec::new(),
        };
    }
    let room = share.saturating_sub(held.len());
    let mut acquire: Vec<u32> = free.iter().take(room).copied().collect();
    acquire.extend(free.iter().skip(room).filter(|s| stale.contains(s)));
    Plan {
        release: Vec::new(),
        acquire,
    }
}

/// This broker's part in delivery: its member lease and its shards' leases.
struct Share<'a> {
    leases: &'a Leases,
    holder: String,
    member_name: String,
    member: Option<Lease>,
    shards: BTreeMap<u32, Lease>,
    /// When each shard was first seen free, since.
    free_since: BTreeMap<u32, Instant>,
    renew_at: Instant,
}

/// Takes part in delivery until shutdown: holds this broker's share of the
/// delivery shards and runs their endpoints' workers.
pub(super) async fn share_delivery(this: Arc<Endpoints>) {
    let shutdown = this.supervisor.shutdown().clone();
    let Some(leases) = this.store.leases() else {
        return;
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut share = Share {
        leases,
        holder: this.broker.clone(),
        member_name: member_lease(&this.broker, started),
        member: None,
        shards: BTreeMap::new(),
        free_since: BTreeMap::new(),
        renew_at: Instant::now(),
    };
    loop {
        share.fence(&this).await;
        share.renew(&this).await;
        share.rebalance(&this).await;
        if let Err(e) = this.follow_records(false).await {
            tracing::warn!(error = %e, "starting webhook workers from the endpoint records");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    share.leave(&this).await;
}

impl Share<'_> {
    /// Tells the supervisor which shards are this broker's and stops the
    /// workers of those that are not any more: with `hand_over` (shards
    /// given up, their leases still this broker's) after their attempts on
    /// the wire finished, else (leases lost) at once.
    async fn apply(&self, endpoints: &Endpoints, hand_over: bool) {
        let mask = self.shards.keys().fold(0u64, |m, s| m | 1 << s);
        endpoints.supervisor.set_shards(mask);
        if let Err(e) = endpoints.follow_records(hand_over).await {
            tracing::warn!(error = %e, "stopping the workers of shards given up");
        }
    }

    /// Drops the shards whose lease may be another's within a tick, on
    /// this clock.
    async fn fence(&mut self, endpoints: &Endpoints) {
        let soon = Instant::now() + TICK;
        let before = self.shards.len();
        self.shards.retain(|_, lease| lease.valid_until > soon);
        if self.shards.len() < before {
            tracing::warn!(
                lost = before - self.shards.len(),
                "delivery shard leases not renewed in time: their webhook workers stopped"
            );
            self.apply(endpoints, false).await;
        }
    }

    /// Renews the member lease and every shard's, every [`RENEW_EVERY`].
    async fn renew(&mut self, endpoints: &Endpoints) {
        if Instant::now() < self.renew_at {
            return;
        }
        self.renew_at = Instant::now() + RENEW_EVERY;
        self.member = match self.member.take() {
            Some(mut lease) => match self.leases.renew(&mut lease).await {
                Ok(Renewal::Kept) => Some(lease),
                Ok(Renewal::Lost) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the member lease failed");
                    Some(lease)
                }
            },
            None => self
                .leases
                .try_acquire(&self.member_name, &self.holder)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "taking the member lease failed");
                    None
                }),
        };
        let leases = self.leases;
        let renewals = self
            .shards
            .iter_mut()
            .map(|(&shard, lease)| async move { (shard, leases.renew(lease).await) });
        let mut lost = Vec::new();
        for (shard, outcome) in futures_util::future::join_all(renewals).await {
            match outcome {
                Ok(Renewal::Kept) => {}
                Ok(Renewal::Lost) => lost.push(shard),
                Err(e) => {
                    tracing::warn!(shard, error = %e, "renewing a delivery shard lease failed; trying again")
                }
            }
        }
        if !lost.is_empty() {
            tracing::warn!(
                ?lost,
                "delivery shard leases lost: their webhook workers stopped"
            );
            for shard in &lost {
                self.shards.remove(shard);
            }
            self.apply(endpoints, false).await;
        }
    }

    /// Looks at the leases and takes this broker's share of the shards, or
    /// gives the excess up.
    async fn rebalance(&mut self, endpoints: &Endpoints) {
        let names = match self.leases.names().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing the delivery leases failed");
                return;
            }
        };
        let members = names.iter().filter(|n| is_member_lease(n)).count();
        let taken: BTreeSet<u32> = names.iter().filter_map(|n| shard_of_lease(n)).collect();
        let now = Instant::now();
        self.free_since
            .retain(|s, _| !taken.contains(s) && !self.shards.contains_key(s));
        for s in (0..DELIVERY_SHARDS).filter(|s| !taken.contains(s)) {
            self.free_since.entry(s).or_insert(now);
        }
        let stale = self
            .free_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= FREE_GRACE)
            .map(|(s, _)| *s)
            .collect();
        let held = self.shards.keys().copied().collect();
        let start = delivery_shard(&EndpointId::new(&self.member_name));
        let plan = plan(&held, &taken, &stale, members, start);
        if !plan.release.is_empty() {
            let released: Vec<Lease> = plan
                .release
                .iter()
                .filter_map(|s| self.shards.remove(s))
                .collect();
            // The workers stop before another broker may start them,
            // letting what they have on the wire finish first.
            self.apply(endpoints, true).await;
            for lease in released {
                if let Err(e) = self.leases.release(lease).await {
                    tracing::warn!(error = %e, "giving a delivery shard up failed; it expires on its own");
                }
            }
            tracing::info!(released = ?plan.release, members, "gave delivery shards up to another broker");
        }
        if !plan.acquire.is_empty() {
            // The broker that gave these shards up (or lost them) wrote
            // what it delivered last before they were free: read the
            // positions and delivery records after that. Caught up before
            // the leases are taken, so that a shard this broker holds is
            // delivered by it at once (a call forwarded here meanwhile
            // would find no deliverer).
            if let Err(e) = endpoints.store.state_caught_up().await {
                tracing::warn!(error = %e, "catching up with the state before taking delivery shards; taking them anyway");
            }
        }
        let mut acquired = Vec::new();
        for shard in plan.acquire {
            match self
                .leases
                .try_acquire(&delivery_lease(shard), &self.holder)
                .await
            {
                Ok(Some(lease)) => {
                    self.shards.insert(shard, lease);
                    acquired.push(shard);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(shard, error = %e, "asking for a delivery shard failed"),
            }
        }
        if !acquired.is_empty() {
            self.free_since.retain(|s, _| !self.shards.contains_key(s));
            tracing::info!(
                ?acquired,
                held = self.shards.len(),
                members,
                "took delivery shards"
            );
            self.apply(endpoints, false).await;
        }
    }

    /// At shutdown: stops every worker and gives every lease up, so the
    /// other brokers take the shards at once.
    async fn leave(mut self, endpoints: &Endpoints) {
        let shards = std::mem::take(&mut self.shards);
        endpoints.supervisor.set_shards(0);
        endpoints.supervisor.stop_all().await;
        for lease in shards.into_values().chain(self.member.take()) {
            if let Err(e) = self.leases.release(lease).await {
                tracing::warn!(error = %e, "could not give a lease up; it expires on its own");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
        r.into_iter().collect()
    }

    #[test]
    fn a_lone_broker_takes_every_shard() {
        let none = BTreeSet::new();
        let p = plan(&none, &none, &none, 1, 5);
        assert_eq!(p.acquire.len(), DELIVERY_SHARDS as usize);
        assert_eq!(p.acquire[0], 5, "from its own start");
        assert!(p.release.is_empty());
    }

    #[test]
    fn a_joining_broker_gets_half_from_the_one_holding_all() {
        let all = set(0..DELIVERY_SHARDS);
        // The old holder sees two members and nothing free: it gives half up.
        let old = plan(&all, &all, &BTreeSet::new(), 2, 0);
        assert_eq!(
            old.release,
            set(32..64).into_iter().rev().collect::<Vec<_>>()
        );
        assert!(old.acquire.is_empty());
        // The newcomer takes what is free, up to its share.
        let taken = set(0..32);
        let new = plan(&BTreeSet::new(), &taken, &BTreeSet::new(), 2, 40);
        assert_eq!(new.acquire.len(), 32);
        assert!(new.acquire.iter().all(|s| *s >= 32));
        // Meanwhile the old holder, at its share, leaves the free ones alone.
        let at_share = plan(&taken, &taken, &BTreeSet::new(), 2, 0);
        assert_eq!(
            at_share,
            Plan {
                release: vec![],
                acquire: vec![]
            }
        );
    }

    #[test]
    fn a_dead_brokers_shards_go_to_the_survivor_after_the_grace() {
        // The dead broker's member lease may outlive its shards a moment:
        // the survivor counts two members, so it is at its share...
        let mine = set(0..32);
        let fresh = plan(&mine, &mine, &BTreeSet::new(), 2, 0);
        assert!(fresh.acquire.is_empty() && fresh.release.is_empty());
        // ...until the free shards have been free for the grace.
        let stale = set(32..64);
        let later = plan(&mine, &mine, &stale, 2, 0);
        assert_eq!(set(later.acquire), stale);
    }

    #[test]
    fn three_brokers_settle_without_giving_up_to_nobody() {
        // 64 shards, 3 members: a share is 22. With 22 + 22 + 20 held,
        // nothing is free and nobody holds more than the share.
        let a = set(0..22);
        let taken = set(0..DELIVERY_SHARDS);
        assert_eq!(
            plan(&a, &taken, &BTreeSet::new(), 3, 0),
            Plan {
                release: vec![],
                acquire: vec![]
            }
        );
        let c = set(44..64);
        assert_eq!(
            plan(&c, &taken, &BTreeSet::new(), 3, 0),
            Plan {
                release: vec![],
                acquire: vec![]
            }
        );
    }
}
