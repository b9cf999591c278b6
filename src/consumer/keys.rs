//! Ordering by key: at most one message of each ordering key is *out*
//! (leased to a stream, or waiting for its redelivery); the others of that
//! key, read from the log meanwhile, wait *behind* it in log order and are
//! handed out one at a time as the one before them is done.
//!
//! A message that *supersedes* (see [`Keyed::supersedes`](super::Keyed))
//! takes the place of those of its key that wait: whatever waited behind
//! the one out is folded into it, so at most one superseding message waits
//! behind, and it is the first there.

use std::collections::{BTreeMap, HashMap};

use crate::model::Offset;

/// How a consumer orders the messages it hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// No ordering: as many messages at once as the streams take.
    #[default]
    None,
    /// Messages with the same ordering key one at a time, in log order;
    /// different keys at once.
    Key,
    /// One message at a time, in log order (every event has one key).
    Strict,
}

impl Ordering {
    /// The key `ordering_key` orders under, or `None` without ordering.
    pub fn key(self, ordering_key: &str) -> Option<&str> {
        match self {
            Ordering::None => None,
            Ordering::Key => Some(ordering_key),
            Ordering::Strict => Some(""),
        }
    }

    /// Its name in the public API.
    pub fn name(self) -> &'static str {
        match self {
            Ordering::None => "ORDERING_NONE",
            Ordering::Key => "ORDERING_KEY",
            Ordering::Strict => "ORDERING_STRICT",
        }
    }

    /// The persisted form (the consumer record's own numbering).
    pub(super) fn to_record(self) -> u32 {
        match self {
            Ordering::None => 0,
            Ordering::Key => 1,
            Ordering::Strict => 2,
        }
    }

    /// The inverse of [`Ordering::to_record`].
    pub(super) fn from_record(n: u32) -> Option<Self> {
        match n {
            0 => Some(Ordering::None),
            1 => Some(Ordering::Key),
            2 => Some(Ordering::Strict),
            _ => None,
        }
    }
}

/// A message waiting behind the one out of its key.
#[derive(Debug, Clone, Copy)]
struct Behind {
    /// Deliveries it has had so far.
    attempts: u32,
    /// Whether it supersedes the messages of its key before it.
    supersedes: bool,
}

/// One key's messages.
#[derive(Debug, Default)]
struct Queue {
    /// The message that is out, if any.
    out: Option<Offset>,
    /// Messages read behind it, in log order.
    behind: BTreeMap<Offset, Behind>,
}

/// Every key with a message out or waiting behind one.
#[derive(Debug, Default)]
pub(super) struct KeyQueues {
    queues: HashMap<String, Queue>,
    /// The key of every offset in `queues`.
    key_of: HashMap<Offset, String>,
    /// How many offsets wait behind another of their key.
    behind: usize,
}

impl KeyQueues {
    /// Whether `offset` is out or waits behind another of its key.
    pub fn contains(&self, offset: Offset) -> bool {
        self.key_of.contains_key(&offset)
    }

    /// How many offsets wait behind another of their key.
    pub fn behind(&self) -> usize {
        self.behind
    }

    /// Makes `offset` the one of `key` that is out, unless another is: then
    /// returns false, and the caller puts it behind that one with
    /// [`KeyQueues::wait`].
    pub fn claim(&mut self, offset: Offset, key: &str) -> bool {
        if let Some(k) = self.key_of.get(&offset) {
            // Already keyed: out (a redelivery), never behind (those are
            // not handed out).
            return self.queues.get(k).is_some_and(|q| q.out == Some(offset));
        }
        let q = self.queues.entry(key.to_owned()).or_default();
        if q.out.is_some() {
            return false;
        }
        q.out = Some(offset);
        self.key_of.insert(offset, key.to_owned());
        true
    }

    /// Puts `offset`, which has had `attempts` deliveries, behind the
    /// message of `key` that is out; `supersedes`: it replaces the messages
    /// of its key before it (the caller has taken those behind with
    /// [`KeyQueues::take_behind`]).
    pub fn wait(&mut self, offset: Offset, key: &str, attempts: u32, supersedes: bool) {
        let q = self.queues.entry(key.to_owned()).or_default();
        let entry = Behind {
            attempts,
            supersedes,
        };
        if q.behind.insert(offset, entry).is_none() {
            self.behind += 1;
        }
        self.key_of.insert(offset, key.to_owned());
    }

    /// The message of `key` that is out, if any.
    pub fn out(&self, key: &str) -> Option<Offset> {
        self.queues.get(key).and_then(|q| q.out)
    }

    /// Forgets every message waiting behind the one of `key` that is out
    /// and returns them, in log order.
    pub fn take_behind(&mut self, key: &str) -> Vec<Offset> {
        let Some(q) = self.queues.get_mut(key) else {
            return Vec::new();
        };
        let taken: Vec<Offset> = std::mem::take(&mut q.behind).into_keys().collect();
        self.behind -= taken.len();
        for o in &taken {
            self.key_of.remove(o);
        }
        taken
    }

    /// `out`, the message of its key that is out, is superseded by `by`:
    /// `out` is forgotten and `by` is out in its place.
    pub fn replace_out(&mut self, out: Offset, by: Offset) {
        let Some(key) = self.key_of.remove(&out) else {
            return;
        };
        if let Some(q) = self.queues.get_mut(&key) {
            q.out = Some(by);
        }
        self.key_of.insert(by, key);
    }

    /// If `offset` is out and the first message behind it supersedes it:
    /// that one is out in its place (and `offset` forgotten); returns it
    /// with its deliveries so far.
    pub fn superseded_out(&mut self, offset: Offset) -> Option<(Offset, u32)> {
        let key = self.key_of.get(&offset)?;
        let q = self.queues.get_mut(key)?;
        if q.out != Some(offset) {
            return None;
        }
        let (&next, b) = q.behind.first_key_value()?;
        if !b.supersedes {
            return None;
        }
        let attempts = b.attempts;
        q.behind.remove(&next);
        q.out = Some(next);
        self.behind -= 1;
        self.key_of.remove(&offset);
        Some((next, attempts))
    }

    /// `offset` is done (or no longer ordered): forgets it. If it was out,
    /// the first message behind it is out now and returned, with its
    /// deliveries so far, to be handed out next.
    pub fn remove(&mut self, offset: Offset) -> Option<(Offset, u32)> {
        let key = self.key_of.remove(&offset)?;
        let q = self.queues.get_mut(&key)?;
        let mut next = None;
        if q.out == Some(offset) {
            q.out = None;
            if let Some((o, b)) = q.behind.pop_first() {
                self.behind -= 1;
                q.out = Some(o);
                next = Some((o, b.attempts));
            }
        } else if q.behind.remove(&offset).is_some() {
            self.behind -= 1;
        }
        if q.out.is_none() && q.behind.is_empty() {
            self.queues.remove(&key);
        }
        next
    }

    /// Forgets every key; returns the messages that waited behind one,
    /// with their deliveries so far.
    pub fn clear(&mut self) -> Vec<(Offset, u32)> {
        let waiting = self
            .queues
            .drain()
            .flat_map(|(_, q)| q.behind.into_iter().map(|(o, b)| (o, b.attempts)))
            .collect();
        self.key_of.clear();
        self.behind = 0;
        waiting
    }
}
