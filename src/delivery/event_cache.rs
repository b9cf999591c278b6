//! Events read for delivery, shared by every endpoint's worker.
//!
//! With several endpoints, every worker reads the same new events at about
//! the same time. Each used to read, decode (protobuf) and render (JSON)
//! every event on its own: ten endpoints, ten times the work. [`EventCache`]
//! keeps the most recently read events, decoded and with their rendered
//! body, in a small ring indexed by offset, and hands out `Arc`s to them.
//!
//! A miss reads the record asked for and up to [`READ_AHEAD`] after it in
//! one read of the log, and keeps the others undecoded in their slots:
//! workers read the log in order, so the next ones are asked for next,
//! and each is decoded and rendered only then.
//!
//! What is shared is only what is the same for every endpoint: the stored
//! event and its full body. An endpoint's condition (`filter`) and field
//! selection (`fields`) are applied by its worker to that body, never
//! cached, so one endpoint's shape cannot reach another.
//!
//! Bounded: at most `capacity` entries (the ring), plus whatever workers
//! still hold; a slot is overwritten by the offset `capacity` later. An
//! event's stored bytes change only when it is erased (tenant erasure or
//! retention), so an entry is kept with the store's count of finished
//! erasures at its read, and is served only while that count has not
//! moved; events retention removes can still be in the ring, so the consumer asks for them only as new reads (which
//! never reach below retention's cutoff, see `Consumer::expire_below`),
//! while redeliveries check the log (see the worker).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::{
    error::Result,
    model::{Offset, StoredEvent},
    store::{RawRecord, Store},
    webhook,
};

/// One event as every endpoint sees it before its own filter and fields.
#[derive(Debug)]
pub struct SharedEvent {
    /// The stored event.
    pub event: StoredEvent,
    /// Its full rendered body, or why it has none (validated events always
    /// render).
    pub body: std::result::Result<Bytes, String>,
}

impl SharedEvent {
    /// Reads nothing: decodes and renders `event`.
    pub fn new(event: StoredEvent) -> Self {
        let body = webhook::render_body(&event.event)
            .map(Bytes::from)
            .map_err(|e| e.to_string());
        Self { event, body }
    }
}

/// What a ring slot holds for its offset: the record as read (read ahead
/// of the worker that asked), or the event decoded with its body.
#[derive(Clone)]
enum Entry {
    Read(RawRecord),
    Ready(Arc<SharedEvent>),
}

impl Entry {
    fn offset(&self) -> Offset {
        match self {
            Entry::Read(r) => r.offset,
            Entry::Ready(s) => s.event.offset,
        }
    }
}

/// A ring slot: [`Store::erasures`] before the read, and the entry.
type Slot = Option<(u64, Entry)>;

/// Records read at once on a miss: the one asked for and the next ones,
/// which workers ask for next (one read instead of one per event); they
/// are decoded and rendered only when asked for.
const READ_AHEAD: usize = 32;

/// The ring of recently read events; one per broker.
pub struct EventCache {
    slots: Mutex<Vec<Slot>>,
}

impl EventCache {
    /// Keeps up to `capacity` events; 0 keeps none (every read decodes and
    /// renders).
    pub fn new(capacity: u32) -> Self {
        Self {
            slots: Mutex::new(vec![None; capacity as usize]),
        }
    }

    /// The event at `offset` with its body, from the ring or read from
    /// `store` (and then kept). `None`: not in the log.
    pub fn get(&self, store: &Store, offset: Offset) -> Result<Option<Arc<SharedEvent>>> {
        // Read before the event: an erasure finishing after this read of
        // the count makes the entry unusable, even if it read the old bytes.
        let erasures = store.erasures();
        let record = match self.lookup(offset, erasures) {
            Some(Entry::Ready(hit)) => return Ok(Some(hit)),
            Some(Entry::Read(record)) => record,
            None => {
                // Read and render outside the lock. Two workers missing the
                // same offset at once both do the work; the results are
                // identical.
                let ahead = if self.capacity() > 1 { READ_AHEAD } else { 1 };
                let mut records = store.local()?.read_records(offset, ahead)?.into_iter();
                // Erased events are left out: the first record is another
                // offset's when this one is not in the log.
                let Some(record) = records.next().filter(|r| r.offset == offset) else {
                    return Ok(None);
                };
                let mut slots = self.lock();
                for next in records {
                    if let Some(slot) = slot_of(&mut slots, next.offset) {
                        if !slot
                            .as_ref()
                            .is_some_and(|(e, s)| *e == erasures && s.offset() == next.offset)
                        {
                            *slot = Some((erasures, Entry::Read(next)));
                        }
                    }
                }
                record
            }
        };
        let shared = Arc::new(SharedEvent::new(record.decode()?));
        let mut slots = self.lock();
        if let Some(slot) = slot_of(&mut slots, offset) {
            *slot = Some((erasures, Entry::Ready(shared.clone())));
        }
        Ok(Some(shared))
    }

    fn lookup(&self, offset: Offset, erasures: u64) -> Option<Entry> {
        let mut slots = self.lock();
        slot_of(&mut slots, offset)?
            .as_ref()
            .filter(|(e, s)| *e == erasures && s.offset() == offset)
            .map(|(_, s)| s.clone())
    }

    fn capacity(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // Slots are replaced whole; a panic cannot leave one half-written.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn slot_of(slots: &mut [Slot], offset: Offset) -> Option<&mut Slot> {
    if slots.is_empty() {
        return None;
    }
    let i = (offset.get() % slots.len() as u64) as usize;
    slots.get_mut(i)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        convert::{validate_event, EventLimits},
        pb,
    };

    fn event(i: u64) -> crate::model::NewEvent {
        let e = pb::Event {
            id: format!("e{i}"),
            payload: Some(pb::event::Payload::Custom(pb::CustomEvent {
                r#type: "a.b".into(),
                data: Some(prost_types::Struct {
                    fields: [(
                        "n".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(i as f64)),
                        },
                    )]
                    .into(),
                }),
            })),
            ..Default::default()
        };
        let limits = EventLimits {
            max_event_bytes: 4096,
        };
        validate_event(e, &"event", SystemTime::now(), limits).unwrap()
    }

    /// Offsets that share a slot never get each other's event, hits are
    /// the same `Arc`, and offsets beyond the log are not invented.
    #[tokio::test]
    async fn serves_each_offset_its_own_event() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = crate::store::open_for_test(dir.path());
        let offsets: Vec<Offset> = store
            .append((0..10).map(event).collect())
            .await
            .unwrap()
            .iter()
            .map(|a| a.offset)
            .collect();
        for capacity in [0, 1, 4, 64] {
            let shared = EventCache::new(capacity);
            for round in 0..2 {
                for (i, &o) in offsets.iter().enumerate() {
                    let s = shared.get(&store, o).unwrap().unwrap();
                    assert_eq!(s.event.offset, o);
                    assert_eq!(s.event.event.id, format!("e{i}"));
                    let body = s.body.as_ref().unwrap();
                    assert_eq!(&body[..], format!(r#"{{"n":{i}}}"#).as_bytes(), "{round}");
                }
            }
            let last = *offsets.last().unwrap();
            let a = shared.get(&store, last).unwrap().unwrap();
            let b = shared.get(&store, last).unwrap().unwrap();
            assert_eq!(Arc::ptr_eq(&a, &b), capacity > 0);
            assert!(shared.get(&store, last + 1).unwrap().is_none());
        }
        drop(store);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap();
    }
}
