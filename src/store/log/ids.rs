//! Event id → offset, for idempotent publishing.
//!
//! Ids are chosen by producers, so their hash is keyed: SipHash-1-3 with a
//! random key made when the log is created and kept in its `meta` file.
//! Without the key nobody can choose ids that share a hash, so a flood of
//! chosen ids cannot turn every lookup into a read of the disk.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use siphasher::sip::SipHasher13;

use crate::{error::Result, model::Offset};

/// The keyed hash of event ids.
#[derive(Clone, Copy)]
pub(super) struct IdHasher {
    key: [u8; 16],
}

impl IdHasher {
    pub(super) fn new(key: [u8; 16]) -> Self {
        Self { key }
    }

    /// A fresh random key.
    pub(super) fn random() -> Self {
        Self::new(rand::random())
    }

    pub(super) fn key(&self) -> [u8; 16] {
        self.key
    }

    pub(super) fn hash(&self, id: &str) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write(id.as_bytes());
        h.finish()
    }

    /// Names the key without revealing it: `.idx` files record it, so
    /// hashes made with another key are never trusted.
    pub(super) fn fingerprint(&self) -> u64 {
        self.hash("\0stevedore id-hash key fingerprint")
    }
}

/// Spreads a key that is already a hash over the whole word (the hash
/// table uses the top bits too) with one multiplication.
#[derive(Default)]
pub(super) struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = n as u64;
    }
}

/// The offset in `[first, first + 2^32)` whose low 32 bits are `low`.
pub(super) fn widen(first: Offset, low: u32) -> Offset {
    let o = Offset::new((first.get() & !0xffff_ffff) | low as u64);
    if o < first {
        o + (1 << 32)
    } else {
        o
    }
}

/// Event id → offset in 8 bytes an event (plus the table's slack): 32 bits
/// of the id's hash → the low 32 bits of the offset. The full offset is the
/// one with those bits in `[first, first + 2^32)`, as the log never holds
/// 2^32 events. Every hit is checked against the stored id (by the
/// caller, outside any lock), so a shared hash only costs a read; the rare
/// second id of a hash is kept by name.
pub(super) struct IdIndex {
    by_hash: HashMap<u32, u32, BuildHasherDefault<Spread>>,
    collided: HashMap<String, Offset>,
    first: Offset,
}

/// Where an id may be: confirm `candidate` by reading its stored id; if it
/// is another id, the answer is `named`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lookup {
    pub(super) candidate: Option<Offset>,
    pub(super) named: Option<Offset>,
}

impl IdIndex {
    pub(super) fn with_capacity(n: usize, first: Offset) -> Self {
        Self {
            by_hash: HashMap::with_capacity_and_hasher(n, Default::default()),
            collided: HashMap::new(),
            first,
        }
    }

    fn key(h: u64) -> u32 {
        (h ^ (h >> 32)) as u32
    }

    /// Where the id with hash `h` may be.
    pub(super) fn lookup(&self, h: u64, id: &str) -> Lookup {
        Lookup {
            candidate: self
                .by_hash
                .get(&Self::key(h))
                .map(|&low| widen(self.first, low)),
            named: self.collided.get(id).copied(),
        }
    }

    /// Indexes an id known not to be in the index, reading it only when its
    /// hash is taken.
    pub(super) fn insert(
        &mut self,
        h: u64,
        offset: Offset,
        id_of: impl FnOnce(Offset) -> Result<String>,
    ) -> Result<()> {
        match self.by_hash.entry(Self::key(h)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                // The low 32 bits; `widen` restores the rest.
                v.insert(offset.get() as u32);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(id_of(offset)?, offset);
            }
        }
        Ok(())
    }

    /// Forgets ids below `first`.
    pub(super) fn retain_from(&mut self, first: Offset) {
        let old = self.first;
        self.by_hash.retain(|_, low| widen(old, *low) >= first);
        self.collided.retain(|_, o| *o >= first);
        self.first = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids whose hashes collide are told apart by their names, and offsets
    /// past 2^32 come back whole.
    #[test]
    fn the_id_index_tells_colliding_ids_apart() {
        let first = Offset::new((1 << 32) - 5);
        let mut ids = IdIndex::with_capacity(4, first);
        let name = |o: Offset| Ok(format!("id{o}"));
        ids.insert(7, first, name).unwrap();
        ids.insert(7, first + 8, name).unwrap();
        ids.insert(9, first + 9, name).unwrap();
        let second = format!("id{}", first + 8);
        assert_eq!(ids.lookup(7, "a").candidate, Some(first));
        assert_eq!(ids.lookup(7, &second).named, Some(first + 8));
        assert_eq!(ids.lookup(7, "z").named, None);
        assert_eq!(
            ids.lookup(9, "c").candidate,
            Some(Offset::new((1 << 32) + 4))
        );
        ids.retain_from(first + 1);
        assert_eq!(ids.lookup(7, "a").candidate, None);
        assert_eq!(
            ids.lookup(7, &format!("id{}", first + 8)).named,
            Some(first + 8)
        );
        assert_eq!(ids.lookup(9, "c").candidate, Some(first + 9));
    }

    /// The hash depends on the key: ids that collide under one key do
    /// not under another, and a fingerprint tells keys apart.
    #[test]
    fn the_id_hash_is_keyed() {
        let a = IdHasher::new([1; 16]);
        let b = IdHasher::new([2; 16]);
        assert_ne!(a.hash("order-1"), b.hash("order-1"));
        assert_eq!(a.hash("order-1"), IdHasher::new([1; 16]).hash("order-1"));
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
