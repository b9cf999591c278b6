//! The registry of durable consumers: opened, created, loaded from the
//! store on first use, listed and removed.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;

use super::{state, Consumer, ConsumerSummary, CreateSpec, Ordering, State};
use crate::{
    error::{Error, Result},
    model::{EventFilter, EventType, Offset},
    store::Store,
    tenant::Scope,
};

/// All consumers known to this broker.
pub struct Consumers {
    store: Store,
    active: Mutex<HashMap<String, Arc<Consumer>>>,
    creating: tokio::sync::Mutex<()>,
    /// While this broker serves named consumers: the token that ends its
    /// term (always, in embedded mode; in cluster mode while it is the
    /// primary, see [`Consumers::set_serving`]).
    term: Mutex<Option<CancellationToken>>,
}

/// Where a call on a named consumer runs.
pub enum Route {
    /// On this broker, until the token is cancelled (it stopped being the
    /// primary): streams end then.
    Here(CancellationToken),
    /// On the primary broker, at this gRPC address.
    Primary(String),
}

impl Consumers {
    /// An empty registry; consumers are loaded from the store on first use.
    /// In cluster mode named consumers are served here only once
    /// [`Consumers::set_serving`] says so.
    pub fn new(store: Store) -> Self {
        let term = (!store.is_cluster()).then(CancellationToken::new);
        Self {
            store,
            active: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
            term: Mutex::new(term),
        }
    }

    /// Where a call on a named consumer runs: here, or (in cluster mode,
    /// on any broker but the primary) on the primary.
    pub async fn route(&self) -> Result<Route> {
        if let Some(term) = self.term_lock().clone() {
            return Ok(Route::Here(term));
        }
        match self.store.primary().await? {
            Some(addr) => Ok(Route::Primary(addr)),
            None => Err(Error::Unavailable(
                "no broker serves named durable consumers at the moment (another is taking \
                 over from the primary): try again in a few seconds"
                    .into(),
            )),
        }
    }

    /// Begins (`true`) or ends this broker's term of serving named
    /// consumers (cluster mode: while it holds the primary lease). Ending
    /// it ends their streams here. Either way every loaded named consumer
    /// is forgotten: another broker may have moved them, so the next use
    /// loads them from the state again. (Endpoints' consumers stay: the
    /// workers delivering here hold them.)
    pub fn set_serving(&self, serving: bool) {
        let mut term = self.term_lock();
        if let Some(old) = term.take() {
            old.cancel();
        }
        if serving {
            *term = Some(CancellationToken::new());
        }
        self.lock().retain(|name, _| name.starts_with('@'));
    }

    /// Whether named consumers are served here: always in embedded mode;
    /// in cluster mode while this broker is the primary.
    pub fn is_serving(&self) -> bool {
        self.term_lock().is_some()
    }

    fn term_lock(&self) -> std::sync::MutexGuard<'_, Option<CancellationToken>> {
        self.term.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The named consumer, created durably from `spec` if it does not exist.
    /// An existing consumer keeps its position; a different non-empty filter
    /// is an error.
    pub async fn open(&self, name: &str, spec: CreateSpec) -> Result<Arc<Consumer>> {
        self.open_ordered(name, spec, None).await
    }

    /// Like [`Consumers::open`], with the ordering a new consumer is
    /// created with (`None`: [`Ordering::None`]). An existing consumer
    /// keeps its ordering; asking for a different one is an error.
    pub async fn open_ordered(
        &self,
        name: &str,
        spec: CreateSpec,
        ordering: Option<Ordering>,
    ) -> Result<Arc<Consumer>> {
        // Serialises creation so two streams cannot create one name twice.
        let _creating = self.creating.lock().await;
        if let Some(c) = self.load(name)? {
            let current = c.filter();
            if let Some(t) = spec.filter.tenant() {
                if current.tenant() != Some(t) {
                    // Names are one namespace: say only that it is taken,
                    // not whose it is.
                    return Err(Error::invalid(
                        "consumer",
                        format!("the name {name:?} is not available; use another consumer name"),
                    ));
                }
            }
            let max = c.lock().max_deliveries;
            if spec.max_deliveries != 0 && spec.max_deliveries != max {
                return Err(Error::invalid(
                    "max_deliveries",
                    format!(
                        "consumer {name:?} was created with max_deliveries {max}; send that, \
                         or 0, or use another consumer name"
                    ),
                ));
            }
            if !spec.filter.types().is_empty() && spec.filter.types() != current.types() {
                return Err(Error::invalid(
                    "event_types",
                    format!(
                        "consumer {name:?} was created with event_types {:?}; \
                         send those, or none, or use another consumer name",
                        current.types()
                    ),
                ));
            }
            let current = c.ordering();
            if ordering.is_some_and(|o| o != current) {
                return Err(Error::invalid(
                    "ordering",
                    format!(
                        "consumer {name:?} was created with ordering {}; send that, \
                         or ORDERING_UNSPECIFIED, or use another consumer name",
                        current.name()
                    ),
                ));
            }
            return Ok(c);
        }
        let consumer = Arc::new(Consumer::new(
            name.to_owned(),
            spec.filter,
            self.store.clone(),
            {
                let mut st = State::new(spec.start, BTreeSet::new(), BTreeSet::new());
                st.max_deliveries = spec.max_deliveries;
                st.ordering = ordering.unwrap_or_default();
                st
            },
        ));
        consumer.persist().await?;
        self.lock().insert(name.to_owned(), consumer.clone());
        tracing::info!(
            consumer = name,
            start = spec.start.get(),
            "consumer created"
        );
        Ok(consumer)
    }

    /// The named consumer if it exists.
    pub fn get(&self, name: &str) -> Result<Arc<Consumer>> {
        self.get_in(&Scope::Global, name)
    }

    /// The named consumer if it exists and `scope` sees it: another
    /// tenant's is `NOT_FOUND`, like one that does not exist.
    pub fn get_in(&self, scope: &Scope, name: &str) -> Result<Arc<Consumer>> {
        let not_found = || Error::NotFound(format!("consumer {name:?} does not exist"));
        let c = self.load(name)?.ok_or_else(not_found)?;
        scope.check(c.filter().tenant().unwrap_or(""), not_found)?;
        Ok(c)
    }

    fn load(&self, name: &str) -> Result<Option<Arc<Consumer>>> {
        if let Some(c) = self.lock().get(name) {
            return Ok(Some(c.clone()));
        }
        let Some(consumer) = self.snapshot(name)? else {
            return Ok(None);
        };
        // Another task may have loaded it meanwhile; keep the first.
        Ok(Some(
            self.lock()
                .entry(name.to_owned())
                .or_insert(Arc::new(consumer))
                .clone(),
        ))
    }

    /// The named consumer as the state has it now, neither taken from nor
    /// kept in the loaded ones: in cluster mode, for a look at a consumer
    /// another broker moves (an endpoint it delivers).
    pub fn snapshot(&self, name: &str) -> Result<Option<Consumer>> {
        let Some(record) = self.store.consumers().get(name)? else {
            return Ok(None);
        };
        let filter = EventFilter::types_only(
            record
                .event_types
                .iter()
                .map(|t| EventType::parse(t).map_err(Error::Corrupt))
                .collect::<Result<_>>()?,
        );
        let filter = if record.tenant.is_empty() {
            filter
        } else {
            filter.with_tenant(record.tenant.clone())
        };
        let done = state::ranges_to_set(&record.done_ranges)
            .map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))?;
        Ok(Some(Consumer::new(
            name.to_owned(),
            filter,
            self.store.clone(),
            {
                let mut st = State::new(
                    Offset::new(record.floor),
                    done,
                    record.reopened.iter().copied().map(Offset::new).collect(),
                );
                st.max_deliveries = record.max_deliveries;
                st.ordering = Ordering::from_record(record.ordering).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "consumer {name:?}: unknown ordering {}",
                        record.ordering
                    ))
                })?;
                st.dead = state::ranges_to_set(&record.dead_ranges)
                    .map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))?;
                st
            },
        )))
    }

    /// Forgets the named consumer and deletes its persisted state. Streams
    /// still attached keep their handle but their acks no longer persist.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let _creating = self.creating.lock().await;
        if let Some(c) = self.lock().remove(name) {
            c.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.store.consumers().delete(name).await
    }

    /// Every durable gRPC consumer (not endpoints), in name order.
    pub fn list(&self) -> Result<Vec<ConsumerSummary>> {
        let mut out = Vec::new();
        for kv in self.store.consumers().list(|name| name.starts_with('@')) {
            let (name, record) = kv?;
            // The live state of a loaded consumer; the stored one otherwise
            // (listing loads nothing).
            let live = self.lock().get(&name).cloned();
            let (floor, max_deliveries, dead) = match live {
                Some(c) => {
                    let st = c.lock();
                    (
                        st.floor,
                        st.max_deliveries,
                        st.dead.iter().copied().collect(),
                    )
                }
                None => (
                    Offset::new(record.floor),
                    record.max_deliveries,
                    state::ranges_to_set(&record.dead_ranges)
                        .map_err(|e| Error::Corrupt(format!("consumer {name:?}: {e}")))?
                        .into_iter()
                        .collect(),
                ),
            };
            out.push(ConsumerSummary {
                name,
                event_types: record.event_types,
                floor,
                max_deliveries,
                dead,
                tenant: record.tenant,
            });
        }
        Ok(out)
    }

    /// Every durable gRPC consumer (not endpoints) with its lag behind
    /// `head`, for metrics.
    pub fn lags(&self, head: Offset) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|c| (c.name, head.distance_from(c.floor)))
            .collect())
    }

    /// Drops the in-memory state of consumer `name` (not its record): the
    /// next use loads it from the state tables again. In cluster mode the
    /// broker that takes over delivery does this, since another broker may
    /// have moved the consumer meanwhile.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Consumer>>> {
        // A panic while holding this lock leaves the map itself consistent
        // (single inserts), so poisoning is safe to ignore.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}
