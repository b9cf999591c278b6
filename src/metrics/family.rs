//! The metric types the rest of the crate updates: thin handles over
//! `prometheus-client`'s counters and histograms that keep the calls the
//! callers already make (`add(&[labels], n)`, `observe_duration`,
//! `remove_first`), and a plain gauge map that is read back, not exposed.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
    time::Duration,
};

use prometheus_client::metrics::{
    counter::Counter, family::Family, histogram::Histogram as PromHistogram,
};

/// One series' labels: (name, value) pairs in the family's label order.
pub(super) type Labels = Vec<(&'static str, String)>;

/// A fixed-bucket histogram.
#[derive(Debug, Clone)]
pub struct Histogram(PromHistogram);

impl Histogram {
    /// A histogram with these upper bounds (`+Inf` is added by the crate).
    pub(super) fn new(bounds: &[f64]) -> Self {
        Self(PromHistogram::new(bounds.iter().copied()))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The crate's histogram, for registering (a shared handle).
    pub(super) fn metric(&self) -> PromHistogram {
        self.0.clone()
    }
}

/// Counters keyed by label values, created on first use.
#[derive(Debug)]
pub struct CounterVec {
    names: &'static [&'static str],
    family: Family<Labels, Counter>,
    /// Every series' labels by its first label value, so that a deleted
    /// endpoint's series can be dropped: the crate's `Family` removes only
    /// by the whole label set. Written only when a series is created or
    /// removed, never on the increment of an existing one.
    by_first: Mutex<HashMap<String, Vec<Labels>>>,
}

impl CounterVec {
    /// A family whose series carry the labels `names`, in that order.
    pub(super) fn new(names: &'static [&'static str]) -> Self {
        Self {
            names,
            family: Family::default(),
            by_first: Mutex::default(),
        }
    }

    fn labels(&self, values: &[&str]) -> Labels {
        self.names
            .iter()
            .copied()
            .zip(values.iter().map(|v| (*v).to_owned()))
            .collect()
    }

    /// Adds `n` to the counter of the label values `values` (in the order
    /// of the family's label names).
    pub fn add(&self, values: &[&str], n: u64) {
        let labels = self.labels(values);
        if let Some(counter) = self.family.get(&labels) {
            counter.inc_by(n);
            return;
        }
        // Creation and removal both hold the index, so a series is never
        // created without its index entry.
        let mut index = self.by_first.lock().unwrap_or_else(|p| p.into_inner());
        if self.family.get(&labels).is_none() {
            let first = values.first().copied().unwrap_or_default().to_owned();
            index.entry(first).or_default().push(labels.clone());
        }
        self.family.get_or_create(&labels).inc_by(n);
    }

    /// Removes every counter whose first label is `first` (a deleted
    /// endpoint's series).
    pub fn remove_first(&self, first: &str) {
        let mut index = self.by_first.lock().unwrap_or_else(|p| p.into_inner());
        for labels in index.remove(first).unwrap_or_default() {
            self.family.remove(&labels);
        }
    }

    /// The counter of `values`, if it exists.
    pub fn get(&self, values: &[&str]) -> Option<u64> {
        self.family.get(&self.labels(values)).map(|c| c.get())
    }

    /// The crate's family, for registering (a shared handle).
    pub(super) fn metric(&self) -> Family<Labels, Counter> {
        self.family.clone()
    }
}

/// Gauges keyed by one label, kept in step by the code that changes them.
/// Not exposed as such: the scrape reads them back through the
/// [`Snapshot`](super::Snapshot) (`stevedore_endpoint_dead`), which lists
/// every endpoint, including those with none.
#[derive(Debug, Default)]
pub struct GaugeVec(RwLock<HashMap<String, i64>>);

impl GaugeVec {
    /// Adds `n` (may be negative) to `label`'s gauge.
    pub fn add(&self, label: &str, n: i64) {
        *self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label.to_owned())
            .or_default() += n;
    }

    /// Sets `label`'s gauge.
    pub fn set(&self, label: &str, v: i64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_owned(), v);
    }

    /// Drops `label`.
    pub fn remove(&self, label: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label);
    }

    /// `label`'s value.
    pub fn get(&self, label: &str) -> i64 {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .copied()
            .unwrap_or(0)
    }
}
